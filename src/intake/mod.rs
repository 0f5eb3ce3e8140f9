//! Intake: the one way a message becomes a stored case.
//!
//! Channels call [`Intake::submit`]; submissions queue to one writer task per gateway, which commits
//! whatever has queued as one batch — one transaction and one fsync for all of it — and then answers
//! every waiter. Nothing is answered before its batch has committed. See [`writer`].

mod build;
mod writer;

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use earshot_channel::{
    AutoKind, ChannelEvent, ChannelKind, Inbound, Intake, IntakeError, Outbound, Receipt, ReplyRoute,
};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

pub use build::Builder;

use crate::store::Store;

struct Submission {
    inbound: Inbound,
    reply: oneshot::Sender<Result<Receipt, IntakeError>>,
    enqueued: Instant,
}

/// The gateway's [`Intake`]: a queue in front of the group-commit writer.
pub struct IntakeService {
    queue: RwLock<Option<mpsc::Sender<Submission>>>,
    store: Arc<dyn Store>,
    /// How long an address that bounced one of our messages gets nothing more from us.
    suppress_for: Duration,
}

/// What the writer needs.
pub struct WriterContext {
    pub store: Arc<dyn Store>,
    pub builder: Builder,
    pub max_batch: usize,
    /// Writer tasks, each committing its own batch (1 on SQLite).
    pub writers: usize,
    /// Woken after every commit that created outbox jobs.
    pub outbox_wake: Arc<Notify>,
    pub suppress_for: Duration,
}

impl IntakeService {
    /// Starts the writer task; the handle ends after [`IntakeService::close`] once the queue is drained.
    pub fn start(ctx: WriterContext) -> (Arc<IntakeService>, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(ctx.max_batch * 4);
        let (store, suppress_for) = (ctx.store.clone(), ctx.suppress_for);
        let handle = tokio::spawn(writer::run_all(rx, ctx));
        (Arc::new(IntakeService { queue: RwLock::new(Some(tx)), store, suppress_for }), handle)
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
        let (reply, answer) = oneshot::channel();
        queue
            .send(Submission { inbound, reply, enqueued: Instant::now() })
            .await
            .map_err(|_| IntakeError::ShuttingDown)?;
        // The writer always answers; a dropped sender means it died, and nothing was committed.
        answer.await.unwrap_or_else(|_| Err(IntakeError::Unavailable("the intake writer stopped".into())))
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

fn unavailable(e: crate::store::StoreError) -> IntakeError {
    IntakeError::Unavailable(e.to_string())
}

impl IntakeService {
    /// A bounce of one of our own messages (found by the Message-ID it reports, `<{event id}@…>`)
    /// suppresses that message's recipient; failed recipients we have acknowledged before are
    /// suppressed too. Sending on to a dead address only earns more bounces.
    async fn suppress_bounced(&self, ev: &ChannelEvent, now: i64) -> Result<(), IntakeError> {
        let mut addresses: Vec<String> = Vec::new();
        for id in &ev.related_ids {
            let Some((local, _)) = id.split_once('@') else { continue };
            if !local.starts_with("msg_") {
                continue;
            }
            if let Some(job) = self.store.job_by_event_id(local).await.map_err(unavailable)?
                && let Ok(Outbound { reply_route: ReplyRoute::Email { to, .. }, .. }) =
                    serde_json::from_str(&job.payload)
            {
                addresses.push(to);
            }
        }
        let failed: Vec<String> = ev.failed_recipients.iter().map(|a| a.to_lowercase()).collect();
        addresses.extend(self.store.acked_since(&failed, 0).await.map_err(unavailable)?);
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
