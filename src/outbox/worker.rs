//! Worker loops: lease, deliver, record.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use earshot_channel::{ChannelKind, Outbound, SendError};
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::channels::Channels;
use crate::config::{Endpoint, OutboxSettings};
use crate::downstream;
use crate::store::{Job, Store};

/// Sends one job to where it goes: a downstream endpoint or a channel.
pub struct Deliverer {
    pub endpoints: HashMap<String, Endpoint>,
    pub channels: Arc<Channels>,
    pub client: reqwest::Client,
}

/// What a successful delivery learned.
#[derive(Debug, Default)]
struct Outcome {
    ticket_id: Option<String>,
}

impl Deliverer {
    async fn deliver(&self, job: &Job) -> Result<Outcome, SendError> {
        if let Some(name) = job.destination.strip_prefix("downstream:") {
            let ep = self.endpoints.get(name).ok_or_else(|| SendError::Permanent {
                reason: format!("downstream {name:?} is no longer configured"),
            })?;
            let ticket_id = downstream::deliver(&self.client, ep, &job.event_id, job.payload.clone()).await?;
            return Ok(Outcome { ticket_id });
        }
        if let Some(kind) = job.destination.strip_prefix("channel:") {
            let channel = ChannelKind::parse(kind)
                .and_then(|k| self.channels.get(k))
                .ok_or_else(|| SendError::Permanent { reason: format!("channel {kind:?} is not enabled") })?;
            let outbound: Outbound = serde_json::from_str(&job.payload)
                .map_err(|e| SendError::Permanent { reason: format!("stored job is not an outbound message: {e}") })?;
            channel.send(&outbound).await?;
            return Ok(Outcome::default());
        }
        Err(SendError::Permanent { reason: format!("unknown destination {:?}", job.destination) })
    }
}

fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Runs `settings.workers` loops until `shutdown`; each finishes the deliveries it has started
/// and records their outcome before returning, so a clean stop leaves no job to be done twice.
pub async fn run_workers(
    store: Arc<dyn Store>,
    deliverer: Arc<Deliverer>,
    settings: OutboxSettings,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut set = JoinSet::new();
    for n in 0..settings.workers {
        set.spawn(worker(n, store.clone(), deliverer.clone(), settings.clone(), wake.clone(), shutdown.clone()));
    }
    while set.join_next().await.is_some() {}
}

/// Jobs one worker leases at a time.
const LEASE_BATCH: i64 = 32;

async fn worker(
    n: usize,
    store: Arc<dyn Store>,
    deliverer: Arc<Deliverer>,
    settings: OutboxSettings,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let lease_ms = settings.lease.as_millis() as i64;
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
        let now = now_ms();
        let jobs = match store.lease_jobs(now, now + lease_ms, LEASE_BATCH).await {
            Ok(jobs) => {
                failures = 0;
                jobs
            }
            Err(e) => {
                failures += 1;
                let pause = Duration::from_millis(200 * 2u64.pow(failures.min(6)));
                tracing::warn!(worker = n, error = %e, retry_in_ms = pause.as_millis() as u64, "Outbox lease failed.");
                tokio::select! { _ = tokio::time::sleep(pause) => {}, _ = shutdown.cancelled() => {} }
                continue;
            }
        };
        if jobs.is_empty() {
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(settings.poll_interval) => {}
                _ = shutdown.cancelled() => {}
            }
            continue;
        }
        // More may be due: let another worker look while this one delivers.
        wake.notify_one();
        let mut set = JoinSet::new();
        for job in jobs {
            let (store, deliverer, settings) = (store.clone(), deliverer.clone(), settings.clone());
            set.spawn(async move { deliver_and_record(&*store, &deliverer, &settings, job).await });
        }
        while set.join_next().await.is_some() {}
    }
}

/// The recipient of an email job when a bounce has suppressed that address since the job was
/// queued: sending on would only earn another bounce (and could feed a mail loop).
async fn suppressed_recipient(store: &dyn Store, job: &Job) -> Option<String> {
    if job.destination != "channel:email" {
        return None;
    }
    let Ok(Outbound { reply_route: earshot_channel::ReplyRoute::Email { to, .. }, .. }) =
        serde_json::from_str::<Outbound>(&job.payload)
    else {
        return None;
    };
    match store.suppressed(std::slice::from_ref(&to), now_ms()).await {
        Ok(hit) if !hit.is_empty() => Some(to),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(job = job.id, error = %e, "Could not check the suppression list; sending anyway.");
            None
        }
    }
}

async fn deliver_and_record(store: &dyn Store, deliverer: &Deliverer, settings: &OutboxSettings, job: Job) {
    let dest_kind = if job.destination.starts_with("downstream:") { "downstream" } else { "channel" };
    let result = match suppressed_recipient(store, &job).await {
        Some(address) => Err(SendError::Permanent {
            reason: format!("not sent: {address} bounced one of our messages and is suppressed for now"),
        }),
        None => deliverer.deliver(&job).await,
    };
    let now = now_ms();
    let recorded = match &result {
        Ok(outcome) => {
            metrics::counter!("earshot_delivery_attempts_total", "destination" => dest_kind, "outcome" => "success")
                .increment(1);
            if let Some(ticket) = &outcome.ticket_id
                && let Err(e) = store.set_ticket_id(&job.case_id, ticket, now).await
            {
                tracing::warn!(case_id = %job.case_id, error = %e, "Could not store the ticket id.");
            }
            tracing::debug!(job = job.id, event_id = %job.event_id, destination = %job.destination, "Delivered.");
            store.complete_job(job.id, job.attempts, now).await
        }
        Err(e) => {
            let (outcome, retry_after) = match e {
                SendError::Transient { retry_after, .. } => ("transient", *retry_after),
                SendError::Unreachable { .. } => ("unreachable", None),
                SendError::Permanent { .. } => ("permanent", None),
            };
            metrics::counter!("earshot_delivery_attempts_total", "destination" => dest_kind, "outcome" => outcome)
                .increment(1);
            let give_up = !e.is_transient() || job.attempts >= job.max_attempts;
            let next = (!give_up).then(|| {
                let d =
                    super::next_delay(&settings.retry_schedule, job.attempts, retry_after, settings.max_retry_after);
                now + d.as_millis() as i64
            });
            if give_up {
                metrics::counter!("earshot_dead_letters_total", "destination" => dest_kind).increment(1);
                tracing::warn!(
                    job = job.id, event_id = %job.event_id, destination = %job.destination, attempts = job.attempts,
                    error = %e, "Job dead-lettered; replay it with `earshot outbox replay`."
                );
            } else {
                tracing::info!(
                    job = job.id, destination = %job.destination, attempts = job.attempts, error = %e,
                    retry_in_ms = next.map(|t| t - now), "Delivery failed; will retry."
                );
            }
            store.fail_job(job.id, job.attempts, next, &e.to_string(), now).await
        }
    };
    match recorded {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(job = job.id, "Lease had expired; another worker owns the job, outcome not recorded.")
        }
        Err(e) => {
            tracing::error!(job = job.id, error = %e, "Could not record a delivery outcome; the job will be retried.")
        }
    }
}
