//! The outbox's tasks: one delivery loop per destination, the outcome recorder, the retention
//! sweep, and the fan-out of "new jobs" wake-ups that name no destination to every loop.

use std::sync::Arc;

use earshot_channel::{ChannelKind, Outbound, SendError};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Destination;
use super::destination::{self, Shared, Spec};
use crate::channels::Channels;
use crate::config::{Endpoint, OutboxSettings};
use crate::downstream;
use crate::store::{Job, Store};

/// Sends one job to where it goes: a downstream endpoint or a channel.
pub struct Deliverer {
    /// Swapped on SIGHUP (new secrets, URLs and timeouts of the endpoints configured at start).
    pub endpoints: Arc<crate::live::Live<Vec<Endpoint>>>,
    pub channels: Arc<Channels>,
    /// Where downstream deliveries go out.
    pub client: earshot_channel::webhooks::WebhookClient,
    /// Told when a channel says a customer cannot be reached.
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
}

/// What a delivery answered with.
#[derive(Debug, Default)]
pub struct Delivered {
    /// A downstream endpoint's ticket id for the case.
    pub ticket_id: Option<String>,
    /// A channel's own id of the message it sent.
    pub provider_id: Option<String>,
    /// The billed parts of the message (SMS segments).
    pub segments: Option<u32>,
}

impl Deliverer {
    /// Delivers one job.
    pub async fn deliver(&self, job: &Job) -> Result<Delivered, SendError> {
        match &job.destination {
            Destination::Downstream(name) => {
                let endpoints = self.endpoints.get();
                let ep = endpoints.iter().find(|e| &e.name == name).ok_or_else(|| SendError::Permanent {
                    reason: format!("downstream {name:?} is no longer configured"),
                })?;
                let ticket_id = downstream::deliver(&self.client, ep, &job.event_id, job.payload.clone()).await?;
                Ok(Delivered { ticket_id, provider_id: None, segments: None })
            }
            Destination::Channel { kind, .. } => {
                let channel = ChannelKind::parse(kind)
                    .and_then(|k| self.channels.get(k))
                    .ok_or_else(|| SendError::Permanent { reason: format!("channel {kind:?} is not enabled") })?;
                let outbound: Outbound = serde_json::from_str(&job.payload).map_err(|e| SendError::Permanent {
                    reason: format!("stored job is not an outbound message: {e}"),
                })?;
                let sent = channel.send(&outbound).await?;
                Ok(Delivered { ticket_id: None, provider_id: sent.provider_id, segments: sent.segments })
            }
        }
    }

    /// The destinations the config names, with their limits.
    fn configured(&self, settings: &OutboxSettings) -> Vec<Spec> {
        let mut specs: Vec<Spec> = self
            .endpoints
            .get()
            .iter()
            .map(|ep| Spec {
                destination: Destination::downstream(&ep.name),
                deadline: ep.timeout,
                max_in_flight: ep.max_in_flight,
                breaker_failures: ep.breaker_failures,
            })
            .collect();
        // check-config keeps configured deadlines within the lease; a channel plugged in from
        // outside the config is held to it here.
        let cap = settings.lease.mul_f64(0.8);
        for (kind, channel) in self.channels.all() {
            for sender in channel.senders() {
                let mut deadline = channel.send_deadline(&sender);
                if deadline > cap {
                    tracing::warn!(channel = %kind, sender = %sender, deadline_ms = deadline.as_millis() as u64, lease_ms = settings.lease.as_millis() as u64,
                        "A channel's send deadline is not within outbox.lease; cut to four fifths of the lease.");
                    deadline = cap;
                }
                specs.push(Spec {
                    destination: Destination::channel(kind, &sender),
                    deadline,
                    max_in_flight: settings.max_in_flight,
                    breaker_failures: settings.breaker_failures,
                });
            }
        }
        specs.sort_by(|a, b| a.destination.cmp(&b.destination));
        specs
    }

    /// Limits for a destination found in the store but not in the config (an endpoint removed
    /// since, or a job stored before channel senders were named).
    fn unconfigured(&self, destination: &Destination, settings: &OutboxSettings) -> Spec {
        let deadline = match destination {
            Destination::Channel { kind, sender } => ChannelKind::parse(kind)
                .and_then(|k| self.channels.get(k))
                .map(|c| c.send_deadline(sender.as_deref().unwrap_or_default())),
            _ => None,
        };
        // Within the lease whatever happens (config only checks the deadlines it knows).
        let cap = settings.lease.mul_f64(0.8);
        Spec {
            destination: destination.clone(),
            deadline: deadline.unwrap_or(cap).min(cap),
            max_in_flight: settings.max_in_flight,
            breaker_failures: settings.breaker_failures,
        }
    }
}

/// Runs the outbox until `shutdown`: each destination's loop finishes the sends it has started and
/// hands back what it had queued, and every outcome is recorded before this returns.
pub async fn run_workers(
    store: Arc<dyn Store>,
    deliverer: Arc<Deliverer>,
    settings: OutboxSettings,
    wake: Arc<Notify>,
    dispatch: Arc<super::Dispatch>,
    shutdown: CancellationToken,
) {
    if settings.workers_set {
        tracing::warn!(
            "outbox.workers is no longer used: each destination has its own delivery loop and in-flight \
             budget (outbox.max_in_flight, downstream.max_in_flight); remove the key."
        );
    }
    let mut specs = deliverer.configured(&settings);
    match store.job_destinations().await {
        Ok(stored) => {
            for d in stored {
                if !specs.iter().any(|s| s.destination == d) {
                    tracing::info!(destination = %d, "Jobs for a destination the config does not name; delivering what can be.");
                    specs.push(deliverer.unconfigured(&d, &settings));
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "Could not list the outbox's destinations; serving those configured."),
    }

    let (tx, rx) = mpsc::unbounded_channel();
    let recorder = tokio::spawn(super::recorder::run(store.clone(), rx, settings.record_window));
    let retention = tokio::spawn(super::retention::run(store.clone(), settings.keep_done, shutdown.clone()));
    let shared = Arc::new(Shared { store, deliverer, settings, recorder: tx, dispatch: dispatch.clone() });

    let mut loops = JoinSet::new();
    for spec in specs {
        tracing::debug!(destination = %spec.destination, max_in_flight = spec.max_in_flight, deadline_ms = spec.deadline.as_millis() as u64, "Outbox destination.");
        loops.spawn(destination::run(spec, shared.clone(), shutdown.clone()));
    }
    // The intake wakes the loops of the destinations it wrote pending jobs for through `dispatch`;
    // this one Notify is for the rest (a replay, a release, a destination with no loop yet): every
    // loop has to look. (A loop not registered yet misses it, and needs not: it leases on its first turn.)
    let fan_out = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = wake.notified() => dispatch.wake_all(),
                    _ = shutdown.cancelled() => return,
                }
            }
        })
    };
    while loops.join_next().await.is_some() {}
    // The loops held the only other senders: the recorder drains what is queued, then ends.
    drop(shared);
    let _ = recorder.await;
    let _ = fan_out.await;
    let _ = retention.await;
}

/// The recipient of a channel job when it has been suppressed since the job was queued (a bounce, an
/// unsubscribe): sending on would only earn another bounce (and could feed a mail loop).
pub(super) async fn suppressed_recipient(store: &dyn Store, job: &Job) -> Option<String> {
    if !job.destination.is_channel() {
        return None;
    }
    let recipient = serde_json::from_str::<Outbound>(&job.payload).ok()?.reply_route.recipient()?;
    match store.suppressed(&[recipient.key()], crate::now_ms()).await {
        Ok(hit) if !hit.is_empty() => Some(recipient.address),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(job = %job.id, error = %e, "Could not check the suppression list; sending anyway.");
            None
        }
    }
}
