//! Intake: the one way a message becomes a stored case.
//!
//! Channels call [`Intake::submit`]; submissions queue to one writer task per gateway, which commits
//! whatever has queued as one batch — one transaction and one fsync for all of it — and then answers
//! every waiter. Nothing is answered before its batch has committed. See `writer.rs`.

mod build;
mod writer;

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use earshot_channel::{AutoKind, ChannelEvent, ChannelKind, Inbound, Intake, IntakeError, Outbound, Receipt};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

pub use build::Builder;

use crate::store::Store;

struct Submission {
    inbound: Inbound,
    /// The rows of a new case, rendered before the submission queued (see [`IntakeService::prebuild`]).
    prebuilt: Option<Prebuilt>,
    reply: oneshot::Sender<Result<Receipt, IntakeError>>,
    enqueued: Instant,
}

/// A new case rendered ahead of the writer, as the first case of a new customer.
struct Prebuilt {
    row: Box<crate::store::NewCase>,
    ack: Option<earshot_channel::AckText>,
}

/// The gateway's [`Intake`]: a queue in front of the group-commit writer.
pub struct IntakeService {
    queue: RwLock<Option<mpsc::Sender<Submission>>>,
    store: Arc<dyn Store>,
    builder: Arc<Builder>,
    seqs: SeqBlocks,
    /// How long an address that bounced one of our messages gets nothing more from us.
    suppress_for: Duration,
    lifecycle: Arc<crate::lifecycle::Lifecycle>,
}

/// What the writer needs.
pub struct WriterContext {
    pub store: Arc<dyn Store>,
    pub builder: Arc<Builder>,
    pub max_batch: usize,
    /// Writer tasks, each committing its own batch (1 on SQLite).
    pub writers: usize,
    /// Woken after every commit that created outbox jobs it could not hand to their loops.
    pub outbox_wake: Arc<Notify>,
    /// Where new cases' first jobs are handed to their delivery loops.
    pub dispatch: Arc<crate::outbox::Dispatch>,
    pub suppress_for: Duration,
    /// Where survey answers in replies go.
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
}

impl IntakeService {
    /// Starts the writer task; the handle ends after [`IntakeService::close`] once the queue is drained.
    pub fn start(ctx: WriterContext) -> (Arc<IntakeService>, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(ctx.max_batch * 4);
        let (store, builder, suppress_for) = (ctx.store.clone(), ctx.builder.clone(), ctx.suppress_for);
        let lifecycle = ctx.lifecycle.clone();
        let seqs = SeqBlocks { store: store.clone(), reserved: tokio::sync::Mutex::new(Reserved::default()) };
        let handle = tokio::spawn(writer::run_all(rx, ctx));
        let service = IntakeService { queue: RwLock::new(Some(tx)), store, builder, seqs, suppress_for, lifecycle };
        (Arc::new(service), handle)
    }

    /// Renders the rows of a message that can only become a new case (no thread to join, not
    /// automatic, no acknowledgement window to check), as if its sender were a new customer.
    ///
    /// Rendering (JSON, the acknowledgement template) is most of what the writer did per item
    /// before its commit; here it runs in the request's own task, on any core, instead of on the
    /// one serial step of intake. The writer only checks that the customer is indeed new (else it
    /// renders again with the known customer) and commits. `None` leaves it all to the writer.
    async fn prebuild(&self, inbound: &Inbound) -> Option<Prebuilt> {
        if inbound.thread.is_some()
            || inbound.automatic.is_some()
            || inbound.identities.is_empty()
            || Builder::recipient_key(inbound).is_some()
        {
            return None;
        }
        let seq = self.seqs.take().await.ok()?;
        let now = time::OffsetDateTime::now_utc();
        let (row, ack) = self.builder.build(inbound, seq, None, now, true).ok()?;
        Some(Prebuilt { row: Box::new(row), ack })
    }

    /// The newest `limit` cases on `channel` of the customer `identity` names (none for an unknown
    /// contact), from case sequence number `seq` only when given.
    async fn contact_cases(
        &self,
        channel: ChannelKind,
        identity: &earshot_channel::Identity,
        seq: Option<i64>,
        limit: usize,
    ) -> Result<Vec<crate::store::CaseRow>, IntakeError> {
        let unavailable = |e: crate::store::StoreError| IntakeError::Unavailable(e.to_string());
        let known = self.store.customers_for(std::slice::from_ref(identity)).await.map_err(unavailable)?;
        let Some(customer) = known.get(identity) else { return Ok(Vec::new()) };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.store.customer_cases(customer, channel.as_str(), seq, limit).await.map_err(unavailable)
    }

    /// Stops taking submissions; those already queued are still committed and answered.
    pub fn close(&self) {
        if let Ok(mut q) = self.queue.write() {
            q.take();
        }
    }
}

#[async_trait]
impl Intake for IntakeService {
    async fn submit(&self, inbound: Inbound) -> Result<Receipt, IntakeError> {
        let queue = self.queue.read().ok().and_then(|q| q.clone()).ok_or(IntakeError::ShuttingDown)?;
        self.survey_answer(&inbound).await?;
        let prebuilt = self.prebuild(&inbound).await;
        let (reply, answer) = oneshot::channel();
        queue
            .send(Submission { inbound, prebuilt, reply, enqueued: Instant::now() })
            .await
            .map_err(|_| IntakeError::ShuttingDown)?;
        // The writer always answers; a dropped sender means it died, and nothing was committed.
        answer.await.unwrap_or_else(|_| Err(IntakeError::Unavailable("the intake writer stopped".into())))
    }
    async fn cases_of(
        &self,
        channel: ChannelKind,
        identity: &earshot_channel::Identity,
        case_ref: Option<&earshot_channel::CaseRef>,
        limit: usize,
    ) -> Result<Vec<earshot_channel::CaseSummary>, IntakeError> {
        let unavailable = |e: crate::store::StoreError| IntakeError::Unavailable(e.to_string());
        let seq = case_ref.and_then(|r| i64::try_from(r.seq()).ok());
        let rows = self.contact_cases(channel, identity, seq, limit).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let case = crate::cases::load(&*self.store, &row.id).await.map_err(unavailable)?;
            let Some(case) = case else { continue };
            // The first words of the complaint, to tell a customer's cases apart.
            let first = case.messages.first().map(|m| m.text.as_str()).unwrap_or_default();
            let mut text: String = first.chars().take(60).collect();
            if text.len() < first.len() {
                text.push('…');
            }
            out.push(earshot_channel::CaseSummary {
                case_ref: row.case_ref.to_string(),
                status: case.status.as_str().to_owned(),
                created_at: case.created_at,
                text,
            });
        }
        Ok(out)
    }

    async fn opt_out(&self, recipient: &earshot_channel::Recipient, reason: &str) -> Result<(), IntakeError> {
        // For good (a hundred years): only the customer lifts it (`opt_in`, an SMS START).
        let until = crate::now_ms().saturating_add(100 * 365 * 86_400_000);
        self.store.suppress(&recipient.key(), reason, until).await.map_err(unavailable)?;
        tracing::info!(recipient = %recipient.key(), reason, "Recipient opted out; nothing more is sent to them on this channel.");
        Ok(())
    }

    async fn opt_in(
        &self,
        recipient: &earshot_channel::Recipient,
        identity: &earshot_channel::Identity,
        reason: &str,
    ) -> Result<(), IntakeError> {
        // The row stays, ended now, with the reason: it tells why messages flow again. A recipient
        // never suppressed (a new Telegram user's /start) gets no row.
        let key = recipient.key();
        let now = crate::now_ms();
        let lifted = !self.store.suppressed(std::slice::from_ref(&key), now).await.map_err(unavailable)?.is_empty();
        if lifted {
            self.store.suppress(&key, reason, now).await.map_err(unavailable)?;
        }
        let mut cleared = 0;
        // The customer's cases on this channel that the opt-out made unreachable (the newest
        // hundred: an opt-out is rarely older than a customer's open cases).
        for row in self.contact_cases(recipient.channel, identity, None, 100).await? {
            let applied = self.lifecycle.reachable(&row.id, reason, None).await;
            if matches!(
                applied.map_err(|e| IntakeError::Unavailable(e.to_string()))?,
                crate::lifecycle::Applied::Changed { .. }
            ) {
                cleared += 1;
            }
        }
        if lifted || cleared > 0 {
            tracing::info!(recipient = %key, reason, cases = cleared, "Recipient opted in again; messages on this channel are sent again.");
        }
        Ok(())
    }

    async fn answer_survey(&self, token: &str, answer: &str) -> Result<bool, IntakeError> {
        let mut parts: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
        for pair in answer.split('&') {
            if let Some((k, v)) = pair.split_once('=') {
                parts.insert(k.trim(), v.trim());
            }
        }
        let Ok(parsed) = crate::lifecycle::survey::parse_link(
            parts.get("rating").copied(),
            parts.get("solved").copied(),
            parts.get("comment").copied(),
        ) else {
            return Ok(false);
        };
        if parsed.is_empty() {
            return Ok(false);
        }
        let case = match self.lifecycle.survey_case(token).await {
            Ok(Some((case, _))) => case,
            Ok(None) => return Ok(false),
            Err(e) => return Err(IntakeError::Unavailable(e.to_string())),
        };
        self.record_feedback(&case.id, &parsed, "channel").await
    }

    async fn record_event(&self, ev: ChannelEvent) -> Result<(), IntakeError> {
        if self.store.has_event(ev.channel.as_str(), &ev.external_id.0).await.map_err(unavailable)? {
            // Fetched again (a rescan after a UIDVALIDITY change, a crash before the cursor moved):
            // counted and acted on the first time already.
            return Ok(());
        }
        let now = crate::now_ms();
        // Acted on before it is stored: if storing fails, the message is fetched again and this
        // runs again, whereas the other way round a stored event would hide a lost suppression.
        if ev.kind == AutoKind::Bounce {
            self.suppress_bounced(&ev, now).await?;
        }
        let kind = serde_json::to_value(ev.kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        let data = serde_json::json!({
            "reason": ev.reason, "related_ids": ev.related_ids, "failed_recipients": ev.failed_recipients,
        });
        let new = self
            .store
            .record_event(&crate::store::NewEvent {
                channel: ev.channel.as_str(),
                source: ev.source.clone(),
                kind: kind.clone(),
                external_id: ev.external_id.0.clone(),
                sender: ev.from.clone(),
                subject: ev.subject.clone(),
                data: data.to_string(),
                raw: ev.raw.clone(),
                now_ms: now,
            })
            .await
            .map_err(unavailable)?;
        if new {
            metrics::counter!("earshot_channel_events_total", "channel" => ev.channel.as_str(), "kind" => kind)
                .increment(1);
        }
        Ok(())
    }

    async fn quarantine(
        &self,
        channel: ChannelKind,
        source: &str,
        raw: Bytes,
        reason: &str,
    ) -> Result<(), IntakeError> {
        let id = self
            .store
            .quarantine(channel.as_str(), source, reason, &raw, crate::now_ms())
            .await
            .map_err(unavailable)?;
        metrics::counter!("earshot_quarantined_total", "channel" => channel.as_str()).increment(1);
        tracing::warn!(quarantine_id = id, channel = %channel, source, reason, "Message quarantined; see GET /v1/quarantine.");
        Ok(())
    }

    async fn load_cursor(&self, name: &str) -> Result<Option<String>, IntakeError> {
        self.store.load_cursor(name).await.map_err(unavailable)
    }

    async fn save_cursor(&self, name: &str, value: &str) -> Result<(), IntakeError> {
        self.store.save_cursor(name, value, crate::now_ms()).await.map_err(unavailable)
    }

    async fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, IntakeError> {
        self.store.try_lease(name, holder, crate::now_ms(), ttl.as_millis() as i64).await.map_err(unavailable)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), IntakeError> {
        self.store.release_lease(name, holder).await.map_err(unavailable)
    }
}

/// Case sequence numbers reserved ahead in blocks, for [`IntakeService::prebuild`]: one database
/// round trip per block on PostgreSQL instead of one per case. Numbers reserved and never used (a
/// duplicate, a stop) leave gaps in case references, as a failed transaction already could.
struct SeqBlocks {
    store: Arc<dyn Store>,
    reserved: tokio::sync::Mutex<Reserved>,
}

#[derive(Default)]
struct Reserved {
    /// Reserved and not yet used, the next one last.
    numbers: Vec<i64>,
    /// The size of the last block, and when it was reserved.
    last: Option<(usize, std::time::Instant)>,
}

/// The first block, and the block after one that lasted longer than [`SEQ_BLOCK_FAST`].
const SEQ_BLOCK_MIN: usize = 64;
/// The largest block: at most this many numbers skipped when the gateway stops.
const SEQ_BLOCK_MAX: usize = 1024;
/// A block used up faster than this is followed by one twice its size.
const SEQ_BLOCK_FAST: std::time::Duration = std::time::Duration::from_secs(1);

/// The size of the next block, given the last one's size and how long it lasted. Blocks grow with
/// the load: at a few cases a minute each block is the smallest, so a stop skips few numbers; under
/// load, 64 numbers lasted under 10 ms, and their reservations were one statement in five that
/// PostgreSQL ran (the README has the measurements).
fn next_block_size(last: Option<(usize, std::time::Duration)>) -> usize {
    match last {
        Some((size, lasted)) if lasted < SEQ_BLOCK_FAST => (size * 2).clamp(SEQ_BLOCK_MIN, SEQ_BLOCK_MAX),
        _ => SEQ_BLOCK_MIN,
    }
}

impl SeqBlocks {
    async fn take(&self) -> crate::store::Result<i64> {
        let mut reserved = self.reserved.lock().await;
        if reserved.numbers.is_empty() {
            let size = next_block_size(reserved.last.map(|(size, at)| (size, at.elapsed())));
            let mut block = self.store.next_seqs(size).await?;
            block.reverse();
            reserved.numbers = block;
            reserved.last = Some((size, std::time::Instant::now()));
        }
        reserved
            .numbers
            .pop()
            .ok_or_else(|| crate::store::StoreError::Corrupt("no case sequence number reserved".into()))
    }
}

/// The outbox event id of one of our own messages, from a Message-ID that names it: ours are
/// `<{event id}@{domain}>`, and event ids start with `msg_`.
pub(crate) fn our_event_id(message_id: &str) -> Option<&str> {
    message_id.split_once('@').map(|(local, _)| local).filter(|local| local.starts_with("msg_"))
}

fn unavailable(e: crate::store::StoreError) -> IntakeError {
    IntakeError::Unavailable(e.to_string())
}

impl IntakeService {
    /// A reply to one of our survey messages whose first line is an answer (`5 yes`) is the
    /// customer's survey answer. It is recorded before the reply itself is stored (as a follow-up,
    /// like any reply): if storing fails, the reply comes again and the same answer changes nothing.
    /// A reply after the survey's window is only a follow-up.
    async fn survey_answer(&self, inbound: &Inbound) -> Result<(), IntakeError> {
        let Some(hint) = &inbound.thread else { return Ok(()) };
        if inbound.automatic.is_some() {
            return Ok(());
        }
        let Some(answer) = crate::lifecycle::survey::parse_reply(&inbound.text) else { return Ok(()) };
        // The survey being answered: the one a reply quotes (email), else, on a channel without
        // threads (SMS), the one of the sender's newest case on this channel.
        let mut case_id = None;
        for local in hint.in_reply_to.iter().filter_map(|id| our_event_id(&id.0)) {
            if let Some(job) = self.store.job_by_event_id(local).await.map_err(unavailable)?
                && job.kind == "survey"
            {
                case_id = Some(job.case_id);
                break;
            }
        }
        if case_id.is_none() && hint.in_reply_to.is_empty() && hint.open_case_within_secs.is_some() {
            let known = self.store.customers_for(&inbound.identities).await.map_err(unavailable)?;
            if let Some(customer) = inbound.identities.iter().find_map(|i| known.get(i)) {
                let newest = self
                    .store
                    .customer_cases(customer, inbound.channel.as_str(), None, 1)
                    .await
                    .map_err(unavailable)?;
                case_id = newest.into_iter().next().map(|row| row.id);
            }
        }
        if let Some(id) = case_id {
            self.record_feedback(&id, &answer, "reply").await?;
        }
        Ok(())
    }

    /// Records a survey answer on the case; false when its survey is closed or the case unknown.
    async fn record_feedback(
        &self,
        case_id: &crate::schema::CaseId,
        answer: &crate::lifecycle::survey::Answer,
        via: &str,
    ) -> Result<bool, IntakeError> {
        use crate::lifecycle::LifecycleError;
        match self.lifecycle.feedback(case_id, answer, via).await {
            Ok(_) => Ok(true),
            Err(LifecycleError::SurveyClosed | LifecycleError::NotFound(_)) => Ok(false),
            Err(e) => Err(IntakeError::Unavailable(e.to_string())),
        }
    }

    /// A bounce of one of our own messages (found by the Message-ID it reports, `<{event id}@…>`)
    /// suppresses the recipient of that message, and only that one: sending on to a dead address
    /// only earns more bounces. A bounce that names no message of ours, whatever recipients it says
    /// failed, changes nothing: anyone can send a `From: mailer-daemon@…` saying a customer's
    /// address failed, and that must not silence the customer.
    async fn suppress_bounced(&self, ev: &ChannelEvent, now: i64) -> Result<(), IntakeError> {
        let failed: Vec<String> = ev.failed_recipients.iter().map(|a| a.to_lowercase()).collect();
        let mut addresses: Vec<String> = Vec::new();
        for local in ev.related_ids.iter().filter_map(|id| our_event_id(id)) {
            if let Some(job) = self.store.job_by_event_id(local).await.map_err(unavailable)?
                && let Ok(Outbound { reply_route, .. }) = serde_json::from_str(&job.payload)
                && let Some(recipient) = reply_route.recipient()
                // When the report lists failed recipients, ours must be among them.
                && (failed.is_empty() || failed.contains(&recipient.address))
            {
                addresses.push(recipient.key());
            }
        }
        if addresses.is_empty() && !failed.is_empty() {
            tracing::info!(failed = ?failed, "A bounce that names no message of ours: stored, nobody suppressed.");
        }
        addresses.sort();
        addresses.dedup();
        let until = now + self.suppress_for.as_millis() as i64;
        for a in &addresses {
            self.store.suppress(a, "bounced", until).await.map_err(unavailable)?;
            tracing::warn!(address = %a, until_ms = until, "Address bounced one of our messages; no more acknowledgements to it for a while.");
        }
        Ok(())
    }
}

#[cfg(test)]
mod seq_tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn blocks_double_while_they_run_out_within_a_second_and_start_small_again_after() {
        assert_eq!(next_block_size(None), SEQ_BLOCK_MIN);
        let mut size = SEQ_BLOCK_MIN;
        let mut sizes = Vec::new();
        for _ in 0..6 {
            size = next_block_size(Some((size, Duration::from_millis(10))));
            sizes.push(size);
        }
        assert_eq!(sizes, [128, 256, 512, 1024, 1024, 1024]);
        assert_eq!(next_block_size(Some((1024, Duration::from_secs(2)))), SEQ_BLOCK_MIN);
    }
}
