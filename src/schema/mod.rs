//! The one complaint schema: a [`Case`] with its customer and [`Message`]s, versioned JSON.
//!
//! Every channel's message becomes this shape; every downstream event carries it. The JSON Schema
//! published at `GET /v1/schema/case.json` (and kept in `schema/case.json`) is generated from these types.

use std::collections::BTreeMap;

use earshot_channel::{AttachmentMeta, AutoKind, ChannelKind, Identity, Lang};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use earshot_channel::{CaseRef, CaseRefError};

/// Bumped on any change a consumer could notice.
pub const SCHEMA_VERSION: u32 = 2;

macro_rules! id_type {
    ($name:ident, $prefix:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(
            Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema, sqlx::Type,
        )]
        #[serde(transparent)]
        #[sqlx(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// A new time-ordered id.
            pub fn generate() -> Self {
                $name(format!(concat!($prefix, "_{}"), uuid::Uuid::now_v7().simple()))
            }
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_owned())
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(CaseId, "case", "A case's id, e.g. `case_0192…`.");
id_type!(MessageId, "msgin", "A stored message's id.");
id_type!(CustomerId, "cus", "A customer's id.");
id_type!(EventId, "msg", "An outbox job's id; the `webhook-id` of its deliveries (Standard Webhooks style `msg_…`).");

impl CustomerId {
    /// The id a customer first seen with this identity gets. Deterministic, so that two gateway
    /// instances meeting a new customer at once agree on one id.
    pub fn for_identity(identity: &Identity) -> CustomerId {
        let hex = earshot_channel::sha256_hex(format!("{}:{}", identity.kind.as_str(), identity.value).as_bytes());
        CustomerId(format!("cus_{}", &hex[..24]))
    }
}

/// Where a case stands: `new → acknowledged → in_progress ⇄ awaiting_customer → resolved → closed`,
/// `resolved → reopened → in_progress` (the whole table is in the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CaseStatus {
    /// Stored; the acknowledgement is not yet delivered.
    New,
    /// The customer has been told we have it (the acknowledgement was delivered or answered).
    Acknowledged,
    InProgress,
    /// Waiting for the customer: the SLA clocks stop.
    AwaitingCustomer,
    Resolved,
    /// Resolved, then found not solved (by the ticket store or the customer's survey answer).
    Reopened,
    Closed,
}

impl CaseStatus {
    pub const ALL: [CaseStatus; 7] = [
        CaseStatus::New,
        CaseStatus::Acknowledged,
        CaseStatus::InProgress,
        CaseStatus::AwaitingCustomer,
        CaseStatus::Resolved,
        CaseStatus::Reopened,
        CaseStatus::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CaseStatus::New => "new",
            CaseStatus::Acknowledged => "acknowledged",
            CaseStatus::InProgress => "in_progress",
            CaseStatus::AwaitingCustomer => "awaiting_customer",
            CaseStatus::Resolved => "resolved",
            CaseStatus::Reopened => "reopened",
            CaseStatus::Closed => "closed",
        }
    }

    pub fn parse(s: &str) -> Option<CaseStatus> {
        CaseStatus::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for CaseStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The customer as known when the case was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Customer {
    pub id: CustomerId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// The language the customer asked for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<Lang>,
    /// How to recognise and reach the customer; never empty.
    pub identities: Vec<Identity>,
}

/// Whether a message came from the customer or went to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
}

/// One message of a case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Message {
    pub id: MessageId,
    pub direction: Direction,
    pub channel: ChannelKind,
    /// The configured source, mailbox or bot the message came through.
    pub source: String,
    /// The channel's own id of the message (webhook-id, Message-ID, …), unique per channel.
    pub external_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub text: String,
    /// The whole body, when `text` is shorter: quoted history or a signature was cut from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_text: Option<String>,
    pub lang: Lang,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<AttachmentMeta>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automatic: Option<AutoKind>,
    /// What the channel knows of this message (Telegram file ids, `edited: true` on an edit, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, serde_json::Value>,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub received_at: OffsetDateTime,
}

/// Service-level targets: their due times (moved on by the time spent awaiting the customer) and
/// when each was met or breached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Sla {
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub first_response_due: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub resolution_due: OffsetDateTime,
    /// When the first response came (an agent's public reply, or `in_progress`).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub first_response_at: Option<OffsetDateTime>,
    /// When the case was (first) resolved.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub resolved_at: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub first_response_breached_at: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub resolution_breached_at: Option<OffsetDateTime>,
    /// Since when the clocks are stopped (the case awaits the customer).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub paused_since: Option<OffsetDateTime>,
}

/// The customer's answer to the satisfaction survey.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Feedback {
    /// 1 (poor) to 5 (excellent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 5))]
    pub rating: Option<u8>,
    /// Whether the customer says the problem was solved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solved: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// How it came: `link`, `reply`, `callback`.
    pub via: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub answered_at: OffsetDateTime,
}

/// A normalized complaint case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "Earshot case", description = "A normalized complaint case, as carried by every Earshot event.")]
pub struct Case {
    /// Version of this schema; consumers should refuse versions they do not know.
    pub schema_version: u32,
    pub id: CaseId,
    pub case_ref: CaseRef,
    pub status: CaseStatus,
    /// The channel of the first message; answers go back through it.
    pub channel: ChannelKind,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The language to answer in.
    pub lang: Lang,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    pub customer: Customer,
    /// The ticket store's id for this case, once it has answered with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_id: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, serde_json::Value>,
    pub sla: Sla,
    /// Why the customer cannot be reached on the case's channel, once a send has said so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable: Option<String>,
    /// The survey answer, once given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<Feedback>,
    pub messages: Vec<Message>,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub updated_at: OffsetDateTime,
}

/// The types of downstream events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum EventType {
    #[serde(rename = "case.created")]
    CaseCreated,
    #[serde(rename = "case.message_added")]
    CaseMessageAdded,
    #[serde(rename = "case.duplicate_received")]
    CaseDuplicateReceived,
    #[serde(rename = "case.updated")]
    CaseUpdated,
    #[serde(rename = "case.feedback")]
    CaseFeedback,
    #[serde(rename = "case.sla_breached")]
    CaseSlaBreached,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::CaseCreated => "case.created",
            EventType::CaseMessageAdded => "case.message_added",
            EventType::CaseDuplicateReceived => "case.duplicate_received",
            EventType::CaseUpdated => "case.updated",
            EventType::CaseFeedback => "case.feedback",
            EventType::CaseSlaBreached => "case.sla_breached",
        }
    }
}

/// `data` of a case event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CaseEventData {
    pub case: Case,
    /// `case.updated`: the status before the change (the case carries the new one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_status: Option<CaseStatus>,
    /// `case.updated`: whether the customer can still be reached on the case's channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachable: Option<bool>,
    /// Why (with `reachable: false`), or the note of a status change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `case.sla_breached`: `first_response` or `resolution`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `case.sla_breached`: the due time that passed.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub due_at: Option<OffsetDateTime>,
    /// `case.feedback`: the rating, 1 to 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 5))]
    pub rating: Option<u8>,
    /// `case.feedback`: whether the problem was solved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solved: Option<bool>,
    /// `case.feedback`: the customer's comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

impl CaseEventData {
    pub fn of(case: Case) -> CaseEventData {
        CaseEventData {
            case,
            previous_status: None,
            reachable: None,
            reason: None,
            target: None,
            due_at: None,
            rating: None,
            solved: None,
            comment: None,
        }
    }
}

/// The body of every downstream webhook: `{type, timestamp, data}` (Standard Webhooks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "Earshot case event")]
pub struct CaseEvent {
    #[serde(rename = "type")]
    pub kind: EventType,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub timestamp: OffsetDateTime,
    pub data: CaseEventData,
}

/// The JSON Schema of [`Case`], as served at `/v1/schema/case.json` and committed in `schema/`.
pub fn case_json_schema() -> serde_json::Value {
    with_id(serde_json::to_value(schemars::schema_for!(Case)), "case")
}

/// The JSON Schema of the event envelope [`CaseEvent`], served at `/v1/schema/event.json`.
pub fn event_json_schema() -> serde_json::Value {
    with_id(serde_json::to_value(schemars::schema_for!(CaseEvent)), "event")
}

fn with_id(schema: Result<serde_json::Value, serde_json::Error>, name: &str) -> serde_json::Value {
    let mut schema = schema.unwrap_or_default();
    if let Some(obj) = schema.as_object_mut() {
        obj.insert("$id".into(), format!("https://earshot.invalid/schema/{name}.json").into());
    }
    schema
}

#[cfg(test)]
mod tests {
    /// The committed schema files are what the types generate; regenerate them with
    /// `cargo run -- schema case > schema/case.json` (and `event`) after changing a type.
    #[test]
    fn committed_schemas_are_current() {
        for (file, text, generated) in [
            ("case", include_str!("../../schema/case.json"), super::case_json_schema()),
            ("event", include_str!("../../schema/event.json"), super::event_json_schema()),
        ] {
            let committed: serde_json::Value = serde_json::from_str(text).expect("schema file is JSON");
            assert_eq!(
                committed, generated,
                "schema/{file}.json is stale: run `cargo run -- schema {file} > schema/{file}.json`"
            );
        }
    }
}
