//! Rendering a submission into the rows of a new case: case, message, outbox jobs, acknowledgement.
//! Pure apart from reading the clock and generating ids.

use std::sync::Arc;
use std::time::Duration;

use earshot_channel::{AckText, Inbound, Lang, Outbound, OutboundKind, ReplyRoute};
use time::OffsetDateTime;

use crate::config::Endpoint;
use crate::notify::{AckContext, Templates, spell_duration};
use crate::outbox::Destination;
use crate::schema::{
    Case, CaseEvent, CaseEventData, CaseId, CaseRef, CaseStatus, Customer, CustomerId, Direction, EventId, EventType,
    Message, MessageId, SCHEMA_VERSION, Sla,
};
use crate::store::{NewCase, NewJob};

/// Everything needed to turn an [`Inbound`] into a [`NewCase`].
pub struct Builder {
    /// Swapped on SIGHUP.
    pub templates: Arc<crate::live::Live<Templates>>,
    /// The gateway's own identities, as recipient keys (`Recipient::key`), that every channel
    /// names (its mailboxes, its bot): never acknowledged.
    pub own_identities: std::collections::HashSet<String>,
    /// At most one acknowledgement per recipient within this window.
    pub ack_window: Duration,
    /// Channels on which no loop with another automatic responder can form (`Channel::loop_free`):
    /// every new case there is acknowledged, without the window.
    pub loop_free: std::collections::HashSet<earshot_channel::ChannelKind>,
    pub downstream: Arc<[Endpoint]>,
    pub channel_max_attempts: i64,
    pub sla_first_response: Duration,
    pub sla_resolution: Duration,
}

fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// The `case.created` event of a new case, put together from the case's JSON (with no messages)
/// and its first message's JSON, both already serialized for the store: the same text as
/// serializing a [`CaseEvent`] holding the case with that message, without serializing either a
/// second time (each web complaint is serialized three times otherwise, on the request workers).
/// `None` if the case's JSON does not end with the empty `messages` array before its two
/// timestamps, as [`Case`] writes it.
fn created_event(case_json: &str, message_json: &str, now: OffsetDateTime) -> Option<String> {
    const EMPTY: &str = "\"messages\":[]";
    // The last one: only the two timestamps follow `messages` in a case, so no text of the
    // customer's (the metadata, which may have such a key) can come after it.
    let at = case_json.rfind(EMPTY)?;
    if !case_json[at + EMPTY.len()..].starts_with(",\"created_at\":") {
        return None;
    }
    let timestamp = now.format(&time::format_description::well_known::Rfc3339).ok()?;
    let mut out = String::with_capacity(case_json.len() + message_json.len() + 80);
    out.push_str("{\"type\":\"case.created\",\"timestamp\":\"");
    out.push_str(&timestamp);
    out.push_str("\",\"data\":{\"case\":");
    out.push_str(&case_json[..at]);
    out.push_str("\"messages\":[");
    out.push_str(message_json);
    out.push(']');
    out.push_str(&case_json[at + EMPTY.len()..]);
    out.push_str("}}");
    Some(out)
}

/// Whether an acknowledgement has to be sent (and so needs an outbox job) for this route. A web
/// source without a `callback_url` gets its acknowledgement in the HTTP answer only.
fn ack_needs_send(route: &ReplyRoute) -> bool {
    match route {
        ReplyRoute::Web { callback_url, .. } => callback_url.is_some(),
        // Every other route answers through its channel.
        _ => true,
    }
}

impl Builder {
    /// The language to answer in: what the customer or channel said, else what the text is written in.
    pub fn lang_of(inbound: &Inbound) -> Lang {
        inbound.lang.or(inbound.customer.language).unwrap_or_else(|| Lang::detect(&inbound.text))
    }

    fn ack_context<'a>(&self, inbound: &'a Inbound, case_ref: &'a str) -> (Lang, AckContext<'a>) {
        let lang = Self::lang_of(inbound);
        let ctx = AckContext {
            case_ref,
            customer_name: inbound.customer.name.as_deref(),
            subject: inbound.subject.as_deref(),
            first_response: spell_duration(self.sla_first_response, lang),
        };
        (lang, ctx)
    }

    fn ack_html(&self, inbound: &Inbound, case_ref: &str) -> Option<String> {
        let (lang, ctx) = self.ack_context(inbound, case_ref);
        self.templates.get().ack_html(inbound.channel, lang, &ctx)
    }

    pub fn ack_text(&self, inbound: &Inbound, case_ref: &str) -> Option<AckText> {
        let (lang, ctx) = self.ack_context(inbound, case_ref);
        match self.templates.get().ack(inbound.channel, lang, &ctx) {
            Ok(text) => Some(AckText { lang, text }),
            Err(e) => {
                // Templates are test-rendered at start, so this is a value the template cannot take;
                // the case is still stored, without an acknowledgement text.
                tracing::error!(error = %e, "Acknowledgement template failed.");
                None
            }
        }
    }

    /// The key (`Recipient::key`) of whom an acknowledgement would reach, for the per-recipient
    /// rules (window, suppression, own identities); `None` where the route reaches no customer's
    /// address (web: the site's backend).
    pub fn recipient_key(inbound: &Inbound) -> Option<String> {
        inbound.reply_route.recipient().map(|r| r.key())
    }

    /// Whether the gateway must stay silent towards this sender whatever else holds: it is one of
    /// the gateway's own identities, on any channel.
    pub fn is_own_address(&self, inbound: &Inbound) -> bool {
        Self::recipient_key(inbound).is_some_and(|k| self.own_identities.contains(&k))
    }

    /// Renders a follow-up: the message joins `case`, which downstream hears as `case.message_added`.
    pub fn build_follow_up(
        &self,
        inbound: &Inbound,
        mut case: Case,
        now: OffsetDateTime,
    ) -> Result<NewCase, serde_json::Error> {
        let message = self.message(inbound, case.lang);
        let message_json = serde_json::to_string(&message)?;
        // An edit: the earlier message shows the new text from now on (also in this event).
        let mut edit = None;
        if let Some(edits) = inbound.thread.as_ref().and_then(|t| t.edits.as_ref())
            && let Some(earlier) = case.messages.iter_mut().find(|m| m.external_id == edits.0)
        {
            earlier.text = inbound.text.clone();
            edit = Some((edits.0.clone(), inbound.text.clone()));
        }
        // The customer wrote (not a robot, not the provider's transcription of a call): they may
        // be reachable again if a send to them had failed.
        let reachable_again = (case.unreachable.is_some()
            && inbound.automatic.is_none()
            && inbound.thread.as_ref().is_none_or(|t| t.edits.is_none()))
        .then(|| Self::recipient_key(inbound))
        .flatten();
        case.messages.push(message.clone());
        case.updated_at = now;
        let mut jobs = Vec::new();
        if !self.downstream.is_empty() {
            let event =
                CaseEvent { kind: EventType::CaseMessageAdded, timestamp: now, data: CaseEventData::of(case.clone()) };
            let payload = serde_json::to_string(&event)?;
            for ep in self.downstream.iter() {
                jobs.push(NewJob {
                    event_id: EventId::generate().0,
                    kind: "case.message_added",
                    destination: Destination::downstream(&ep.name),
                    payload: payload.clone(),
                    max_attempts: i64::from(ep.max_attempts),
                    lease_until: None,
                });
            }
        }
        Ok(NewCase {
            channel: inbound.channel.as_str(),
            external_id: inbound.external_id.0.clone(),
            case_id: case.id.clone(),
            seq: 0,
            case_ref: case.case_ref.clone(),
            status: "",
            source: inbound.source.clone(),
            customer_id: case.customer.id.0.clone(),
            identities: inbound.identities.clone(),
            message_id: message.id.0,
            message_json,
            case_json: String::new(),
            now_ms: ms(now),
            jobs,
            follow_up: true,
            edit,
            reachable_again,
            raw: inbound.raw.clone(),
            attachments: inbound.attachments.clone(),
            ack_address: None,
            check_customer: false,
            digest: inbound.content_digest.clone(),
            reply_route: None,
            sla_due: None,
        })
    }

    fn message(&self, inbound: &Inbound, lang: Lang) -> Message {
        Message {
            id: MessageId::generate(),
            direction: Direction::Inbound,
            channel: inbound.channel,
            source: inbound.source.clone(),
            external_id: inbound.external_id.0.clone(),
            subject: inbound.subject.clone(),
            text: inbound.text.clone(),
            full_text: inbound.full_text.clone(),
            lang,
            attachments: inbound.attachments.clone(),
            automatic: inbound.automatic,
            metadata: inbound.metadata.clone(),
            received_at: inbound.received_at,
        }
    }

    /// Renders every row of a new case. `customer_id` is the known customer of one of its identities,
    /// or `None` for a new customer; `send_ack` is false when the acknowledgement must not be sent
    /// (automatic message, own address, suppressed or recently acknowledged recipient).
    pub fn build(
        &self,
        inbound: &Inbound,
        seq: i64,
        customer_id: Option<String>,
        now: OffsetDateTime,
        send_ack: bool,
    ) -> Result<(NewCase, Option<AckText>), serde_json::Error> {
        let case_id = CaseId::generate();
        let case_ref = CaseRef::from_seq(seq as u64);
        let lang = Self::lang_of(inbound);
        let customer_id = match customer_id {
            Some(id) => CustomerId(id),
            None => CustomerId::for_identity(&inbound.identities[0]),
        };
        let message = self.message(inbound, lang);
        let mut case = Case {
            schema_version: SCHEMA_VERSION,
            id: case_id.clone(),
            case_ref: case_ref.clone(),
            status: CaseStatus::New,
            channel: inbound.channel,
            source: inbound.source.clone(),
            subject: inbound.subject.clone(),
            lang,
            category: inbound.category.clone(),
            order_id: inbound.order_id.clone(),
            customer: Customer {
                id: customer_id.clone(),
                name: inbound.customer.name.clone(),
                tier: inbound.customer.tier.clone(),
                language: inbound.customer.language,
                identities: inbound.identities.clone(),
            },
            ticket_id: None,
            metadata: inbound.metadata.clone(),
            sla: Sla {
                first_response_due: now + self.sla_first_response,
                resolution_due: now + self.sla_resolution,
                first_response_at: None,
                resolved_at: None,
                first_response_breached_at: None,
                resolution_breached_at: None,
                paused_since: None,
            },
            unreachable: None,
            feedback: None,
            messages: vec![],
            created_at: now,
            updated_at: now,
        };
        let case_json = serde_json::to_string(&case)?;
        let message_json = serde_json::to_string(&message)?;

        let ack = self.ack_text(inbound, case_ref.as_str());
        let mut jobs = Vec::with_capacity(self.downstream.len() + 1);
        let mut ack_address = None;
        if let Some(ack) = ack.as_ref().filter(|_| send_ack && ack_needs_send(&inbound.reply_route)) {
            ack_address = Self::recipient_key(inbound);
            let id = EventId::generate();
            let outbound = Outbound {
                id: id.0.clone(),
                kind: OutboundKind::Ack,
                case_id: case_id.0.clone(),
                case_ref: case_ref.clone(),
                status: Some(CaseStatus::New.as_str().to_owned()),
                lang: ack.lang,
                subject: inbound.subject.clone(),
                text: ack.text.clone(),
                html: self.ack_html(inbound, case_ref.as_str()),
                reply_route: inbound.reply_route.clone(),
            };
            jobs.push(NewJob {
                event_id: id.0,
                kind: "ack",
                destination: Destination::channel(inbound.reply_route.channel(), inbound.reply_route.sender()),
                payload: serde_json::to_string(&outbound)?,
                max_attempts: self.channel_max_attempts,
                lease_until: None,
            });
        }
        if !self.downstream.is_empty() {
            let payload = match created_event(&case_json, &message_json, now) {
                Some(payload) => payload,
                None => {
                    case.messages.push(message.clone());
                    let data = CaseEventData::of(case);
                    serde_json::to_string(&CaseEvent { kind: EventType::CaseCreated, timestamp: now, data })?
                }
            };
            for ep in self.downstream.iter() {
                jobs.push(NewJob {
                    event_id: EventId::generate().0,
                    kind: "case.created",
                    destination: Destination::downstream(&ep.name),
                    payload: payload.clone(),
                    max_attempts: i64::from(ep.max_attempts),
                    lease_until: None,
                });
            }
        }

        let new = NewCase {
            channel: inbound.channel.as_str(),
            external_id: inbound.external_id.0.clone(),
            case_id,
            seq,
            case_ref: case_ref.clone(),
            status: CaseStatus::New.as_str(),
            source: inbound.source.clone(),
            customer_id: customer_id.0,
            identities: inbound.identities.clone(),
            message_id: message.id.0,
            message_json,
            case_json,
            now_ms: ms(now),
            jobs,
            follow_up: false,
            raw: inbound.raw.clone(),
            attachments: inbound.attachments.clone(),
            ack_address,
            check_customer: false,
            digest: inbound.content_digest.clone(),
            reply_route: Some(serde_json::to_string(&inbound.reply_route)?),
            sla_due: Some(ms(now + self.sla_first_response.min(self.sla_resolution))),
            edit: None,
            reachable_again: None,
        };
        Ok((new, ack))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The event put together from the two stored JSON texts is the event serialized whole, also
    /// when the customer's metadata and text hold the very key it looks for.
    #[test]
    fn the_created_event_is_the_serialized_event() {
        let now = time::macros::datetime!(2026-12-05 21:47:46.024852538 UTC);
        let case: Case = serde_json::from_str(
            r#"{"schema_version":2,"id":"case_01a2482d6be876339307f4515dee4c9c","case_ref":"7968-7863-1","status":"new",
                "channel":"web","source":"bench","subject":"\"messages\":[] 订单延误","lang":"zh",
                "customer":{"id":"cus_25a489cbfdcd2d3828f581c1","language":"zh","identities":[{"kind":"email","value":"u@example.com"}]},
                "metadata":{"messages":[],"z":{"messages":[]}},
                "sla":{"first_response_due":"2026-12-05T22:47:46.024852538Z","resolution_due":"2026-12-06T21:47:46Z"},
                "messages":[],"created_at":"2026-12-05T21:47:46.024852538Z","updated_at":"2026-12-05T21:47:46.024852538Z"}"#,
        )
        .expect("case");
        let message: Message = serde_json::from_str(
            r#"{"id":"msgin_01a2482d6be876339307f45259af293d","direction":"inbound","channel":"web","source":"bench",
                "external_id":"bench:msg_1","text":"\"messages\":[] 我的订单0还没有到","lang":"zh",
                "metadata":{"messages":[]},"received_at":"2026-12-05T21:47:46.023604628Z"}"#,
        )
        .expect("message");
        for (case, timestamp) in
            [(case.clone(), now), (Case { metadata: Default::default(), ..case }, now + Duration::from_secs(1))]
        {
            let case_json = serde_json::to_string(&case).expect("case json");
            let message_json = serde_json::to_string(&message).expect("message json");
            let mut whole = case.clone();
            whole.messages.push(message.clone());
            let event = CaseEvent { kind: EventType::CaseCreated, timestamp, data: CaseEventData::of(whole) };
            assert_eq!(
                created_event(&case_json, &message_json, timestamp).as_deref(),
                Some(serde_json::to_string(&event).expect("event").as_str())
            );
        }
        // Not the shape it expects: the caller serializes the event whole instead.
        assert_eq!(created_event(r#"{"messages":[1]}"#, "{}", now), None);
        assert_eq!(created_event(r#"{"messages":[],"x":1}"#, "{}", now), None);
    }
}
