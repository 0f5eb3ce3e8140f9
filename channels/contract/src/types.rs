//! Pure data exchanged between channels and the gateway.

use std::collections::BTreeMap;

use bytes::Bytes;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::Lang;

/// The channel a message came through, and goes back through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    Web,
    Email,
    Telegram,
    Phone,
}

impl ChannelKind {
    pub const ALL: [ChannelKind; 4] = [ChannelKind::Web, ChannelKind::Email, ChannelKind::Telegram, ChannelKind::Phone];

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Web => "web",
            ChannelKind::Email => "email",
            ChannelKind::Telegram => "telegram",
            ChannelKind::Phone => "phone",
        }
    }

    pub fn parse(s: &str) -> Option<ChannelKind> {
        match s {
            "web" => Some(ChannelKind::Web),
            "email" => Some(ChannelKind::Email),
            "telegram" => Some(ChannelKind::Telegram),
            "phone" => Some(ChannelKind::Phone),
            _ => None,
        }
    }
}

impl std::fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The id a channel gives a message (Message-ID, chat_id:message_id, MessageSid, webhook-id).
/// Unique per channel: the store never keeps two messages with one `(channel, external_id)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct ExternalId(pub String);

impl std::fmt::Display for ExternalId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What kind of address an identity is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKind {
    /// A normalized (lower-cased) email address.
    Email,
    /// A phone number in E.164 form.
    Phone,
    /// A Telegram user id.
    Telegram,
    /// A user id on the company's web site.
    WebUser,
}

impl IdentityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::Email => "email",
            IdentityKind::Phone => "phone",
            IdentityKind::Telegram => "telegram",
            IdentityKind::WebUser => "web_user",
        }
    }
}

/// One way to reach or recognise a customer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct Identity {
    pub kind: IdentityKind,
    pub value: String,
}

/// What the customer told us about themselves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Customer tier as the company names it (for example `gold`); used for priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// The language the customer asked for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<Lang>,
}

/// Everything needed to answer in the same place the message came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "channel", rename_all = "lowercase")]
#[non_exhaustive]
pub enum ReplyRoute {
    Web {
        source: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        callback_url: Option<String>,
    },
    /// A reply in the customer's email thread.
    Email {
        /// The configured mailbox the message came to (and the reply goes from).
        mailbox: String,
        /// The customer's address (Reply-To when present, else From).
        to: String,
        /// The Message-ID of the customer's message (without angle brackets).
        message_id: String,
        /// The thread's References, ending with `message_id`.
        references: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject: Option<String>,
    },
    /// A message to one recipient of a chat or phone channel: a Telegram chat, a phone number.
    Direct {
        /// The channel (`telegram`, `phone`).
        via: ChannelKind,
        /// The configured account the answer goes out from (a bot, a phone number).
        sender: String,
        /// Who it goes to: a chat id, an E.164 number.
        recipient: String,
        /// The channel's id of the customer's message to answer to (a Telegram message id), if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<String>,
    },
}

/// Who a message goes to: a channel and the recipient's address on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Recipient {
    pub channel: ChannelKind,
    /// An email address, a chat id, a phone number.
    pub address: String,
}

impl Recipient {
    pub fn new(channel: ChannelKind, address: &str) -> Recipient {
        Recipient { channel, address: address.to_lowercase() }
    }

    /// `email:li@example.com`, `telegram:123456`: the key of the core's per-recipient rules
    /// (acknowledgement window, suppression, own identities).
    pub fn key(&self) -> String {
        format!("{}:{}", self.channel.as_str(), self.address)
    }
}

impl ReplyRoute {
    /// The configured account a reply on this route goes out from (the web source, the mailbox, the
    /// bot): the outbox gives each one its own in-flight budget and breaker.
    pub fn sender(&self) -> &str {
        match self {
            ReplyRoute::Web { source, .. } => source,
            ReplyRoute::Email { mailbox, .. } => mailbox,
            ReplyRoute::Direct { sender, .. } => sender,
        }
    }

    /// The channel an answer on this route goes through.
    pub fn channel(&self) -> ChannelKind {
        match self {
            ReplyRoute::Web { .. } => ChannelKind::Web,
            ReplyRoute::Email { .. } => ChannelKind::Email,
            ReplyRoute::Direct { via, .. } => *via,
        }
    }

    /// The person an answer reaches, on which the core's loop and abuse rules work. `None` for
    /// web: answers go to the site's own backend, which is no customer's address and cannot loop.
    pub fn recipient(&self) -> Option<Recipient> {
        match self {
            ReplyRoute::Web { .. } => None,
            ReplyRoute::Email { to, .. } => Some(Recipient::new(ChannelKind::Email, to)),
            ReplyRoute::Direct { via, recipient, .. } => Some(Recipient::new(*via, recipient)),
        }
    }
}

/// References to earlier messages or cases seen in a message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ThreadHint {
    /// External ids of earlier messages (In-Reply-To, References).
    #[serde(default)]
    pub in_reply_to: Vec<ExternalId>,
    /// Case references seen in the subject or text.
    #[serde(default)]
    pub case_refs: Vec<String>,
    /// A chat's follow-up rule: with nothing else to thread on, the message joins the sender's
    /// newest case on this channel that is still open (not resolved or closed) and was last
    /// changed within this window (seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_case_within_secs: Option<u64>,
    /// The message is an edit of this earlier one (a Telegram edited message): it is added to that
    /// message's case, and the earlier message's stored text becomes its text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edits: Option<ExternalId>,
}

/// One of a customer's cases as a chat shows it (`/status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseSummary {
    pub case_ref: String,
    pub status: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The first words of the complaint.
    pub text: String,
}

impl CaseSummary {
    /// The status as a customer reads it, for the channels' own answers (`/status`, SMS `STATUS`,
    /// the phone keypad); unknown statuses as they are.
    pub fn status_label(&self, lang: Lang) -> &str {
        match (lang, self.status.as_str()) {
            (Lang::Zh, "new" | "acknowledged") => "已受理",
            (Lang::Zh, "in_progress") => "正在处理中",
            (Lang::Zh, "awaiting_customer") => "等待您补充信息",
            (Lang::Zh, "resolved") => "已解决",
            (Lang::Zh, "reopened") => "已重新打开",
            (Lang::Zh, "closed") => "已关闭",
            (Lang::En, "new" | "acknowledged") => "received",
            (Lang::En, "in_progress") => "being worked on",
            (Lang::En, "awaiting_customer") => "waiting for information from you",
            (_, other) => other,
        }
    }
}

/// An attachment's description; content is not part of the schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AttachmentMeta {
    pub name: String,
    pub media_type: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default)]
    pub truncated: bool,
    /// The content, when kept (email attachments up to the configured size); never serialized.
    #[serde(skip)]
    #[schemars(skip)]
    pub content: Option<Bytes>,
}

impl AttachmentMeta {
    /// An attachment known by reference only (a URL, a provider's file id in the message's
    /// metadata): its content is not kept, and `size` is what the sender said (0 when unknown).
    pub fn by_reference(name: String, media_type: String, size: u64, url: Option<String>) -> AttachmentMeta {
        AttachmentMeta { name, media_type, size, sha256: None, url, truncated: false, content: None }
    }
}

/// Why a message is itself automatic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AutoKind {
    AutoReply,
    Bounce,
    Report,
    Bulk,
}

/// One message as a channel produced it: pure data, no I/O behind it.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub channel: ChannelKind,
    /// The configured source, mailbox or bot name.
    pub source: String,
    pub external_id: ExternalId,
    /// How to recognise the customer; the first is the primary one. Never empty.
    pub identities: Vec<Identity>,
    pub customer: CustomerInfo,
    pub reply_route: ReplyRoute,
    pub thread: Option<ThreadHint>,
    pub subject: Option<String>,
    pub text: String,
    /// The whole body when `text` had quoted history or a signature cut from it (email).
    pub full_text: Option<String>,
    /// The language of the message, when the channel knows it better than the text does.
    pub lang: Option<Lang>,
    pub category: Option<String>,
    pub order_id: Option<String>,
    pub metadata: BTreeMap<String, serde_json::Value>,
    pub attachments: Vec<AttachmentMeta>,
    pub raw: Option<Bytes>,
    pub received_at: OffsetDateTime,
    pub automatic: Option<AutoKind>,
    /// SHA-256 of the message as its sender delivered it, where the sender chooses the external id
    /// (a web `webhook-id`): the same id again with other content is refused as a conflict, not
    /// taken for a retry. `None` where the id is the message's own (an email Message-ID).
    pub content_digest: Option<String>,
}

/// The acknowledgement text as rendered for the customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AckText {
    pub lang: Lang,
    pub text: String,
}

/// What intake answers once the message is committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub case_id: String,
    /// Empty when no case was made (an automatic message kept as an event).
    pub case_ref: String,
    pub status: String,
    /// True when this exact message was already stored; the ids are those of the original.
    pub duplicate: bool,
    /// True when the message was added to an existing case.
    pub follow_up: bool,
    pub ack: Option<AckText>,
}

/// What an outbound message is for; each channel renders it natively (a reply in the email thread,
/// a callback for web, buttons in a chat, digits by SMS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboundKind {
    /// The automatic acknowledgement of a new case.
    Ack,
    /// The case moved to `status` (one of the statuses the operator chose to tell customers).
    StatusUpdate { status: String },
    /// An agent's public reply, written in the ticket store.
    AgentReply {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        author: Option<String>,
    },
    /// The satisfaction survey of a resolved case.
    Survey(Survey),
}

/// A satisfaction survey: a rating and "was your problem solved?".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Survey {
    pub question: String,
    /// The answers a customer can pick, each with its one-click link.
    pub choices: Vec<SurveyChoice>,
    /// The survey's feedback link (`GET` with `rating`, `solved`, `comment`).
    pub link: String,
    /// The survey's token: a channel that takes answers itself (chat buttons, SMS digits) hands it
    /// back with the answer ([`crate::Intake::answer_survey`]).
    pub token: String,
    pub expires_at: i64,
}

/// One answer of a survey.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SurveyChoice {
    /// What a channel sends back: `rating=1`…`rating=5`, `solved=yes`, `solved=no`.
    pub value: String,
    pub label: String,
    pub url: String,
}

impl OutboundKind {
    /// The name of its templates and of its callbacks' type.
    pub fn name(&self) -> &'static str {
        match self {
            OutboundKind::Ack => "ack",
            OutboundKind::StatusUpdate { .. } => "status_update",
            OutboundKind::AgentReply { .. } => "agent_reply",
            OutboundKind::Survey(_) => "survey",
        }
    }
}

/// One message to a customer, rendered, with the route to send it by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outbound {
    /// Stable across retries: the idempotency key, `webhook-id` or Message-ID of this message.
    pub id: String,
    pub kind: OutboundKind,
    pub case_id: String,
    pub case_ref: crate::CaseRef,
    /// The case's status when the message was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    pub lang: Lang,
    pub subject: Option<String>,
    pub text: String,
    /// An HTML alternative of `text`, for channels that send HTML (email).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    pub reply_route: ReplyRoute,
}

/// Something a channel received that is not a customer's message: a bounce, a delivery or feedback
/// report. Stored and counted; it creates no case.
#[derive(Debug, Clone)]
pub struct ChannelEvent {
    pub channel: ChannelKind,
    pub source: String,
    pub kind: AutoKind,
    pub external_id: ExternalId,
    pub from: Option<String>,
    pub subject: Option<String>,
    /// Ids of the messages it is about (In-Reply-To, References, the reported message's Message-ID).
    pub related_ids: Vec<String>,
    /// Recipients a delivery report says failed.
    pub failed_recipients: Vec<String>,
    /// Why the channel classified it so, e.g. `Content-Type: multipart/report; report-type=delivery-status`.
    pub reason: String,
    pub raw: Option<Bytes>,
}

/// What a channel reports after a successful send.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sent {
    pub provider_id: Option<String>,
    /// The billed parts of the message, for channels that count them (SMS segments); stored with
    /// the job.
    pub segments: Option<u32>,
}
