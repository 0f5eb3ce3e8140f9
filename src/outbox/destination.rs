//! One destination's delivery loop: its own leases, its own in-flight budget, its own breaker.
//!
//! A destination is a downstream endpoint or a channel's sender (a mailbox, a web source's
//! callback). Its loop leases only its own due jobs, and only as many as it has room for (its free
//! slots and half a budget queued, so the next sends start as soon as others end), and takes new
//! cases' jobs handed straight from the intake while it has nothing else due (`dispatch.rs`); it
//! starts a send whenever one ends, never waiting for a batch to finish. A hung or failing
//! destination fills only its own budget or opens only its own breaker: every other destination's
//! loop goes on untouched. Every send is cut off at the destination's deadline, which config
//! checks is shorter than the lease, so a job is never sent while another worker may own it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use earshot_channel::SendError;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Destination;
use super::breaker::{Admit, Breaker, Change};
use super::recorder::Recorded;
use super::worker::Deliverer;
use crate::config::OutboxSettings;
use crate::store::{Job, JobOutcome, OutcomeKind, Store};

/// One destination and its limits.
#[derive(Debug, Clone)]
pub struct Spec {
    pub destination: Destination,
    /// The longest one send may take.
    pub deadline: Duration,
    pub max_in_flight: usize,
    pub breaker_failures: u32,
}

/// What a destination loop shares with the others.
pub struct Shared {
    pub store: Arc<dyn Store>,
    pub deliverer: Arc<Deliverer>,
    pub settings: OutboxSettings,
    pub recorder: mpsc::UnboundedSender<Recorded>,
    /// Where the intake hands new cases' first jobs.
    pub dispatch: Arc<super::Dispatch>,
}

/// One destination's metric handles, registered once: looking a labelled metric up costs a hash and a
/// lock per call, which at thousands of deliveries a second is worth saving.
struct Meters {
    delivered: metrics::Counter,
    transient: metrics::Counter,
    unreachable: metrics::Counter,
    permanent: metrics::Counter,
    dead: metrics::Counter,
    dead_letters: metrics::Counter,
    latency: metrics::Histogram,
    /// Jobs this loop took by a lease, and straight from the intake.
    leased: metrics::Counter,
    handed: metrics::Counter,
}

impl Meters {
    fn new(dest: &str) -> Meters {
        let outcome = |o: &'static str| metrics::counter!("earshot_deliveries_total", "destination" => dest.to_owned(), "outcome" => o);
        Meters {
            delivered: outcome("delivered"),
            transient: outcome("transient"),
            unreachable: outcome("unreachable"),
            permanent: outcome("permanent"),
            dead: outcome("dead"),
            dead_letters: metrics::counter!("earshot_dead_letters_total", "destination" => dest.to_owned()),
            latency: metrics::histogram!("earshot_delivery_latency_seconds", "destination" => dest.to_owned()),
            leased: metrics::counter!("earshot_outbox_taken_total", "destination" => dest.to_owned(), "via" => "lease"),
            handed: metrics::counter!("earshot_outbox_taken_total", "destination" => dest.to_owned(), "via" => "intake"),
        }
    }
}

/// How much of a lease must be left to start a queued job: its whole deadline and a margin of up to
/// a second (half of what the lease has over the deadline, so a job just leased always starts).
fn start_margin(lease: Duration, deadline: Duration) -> Duration {
    (lease.saturating_sub(deadline) / 2).min(Duration::from_secs(1))
}

/// Runs until `shutdown`, then hands its queued jobs back and waits for its sends to end.
pub async fn run(spec: Spec, shared: Arc<Shared>, shutdown: CancellationToken) {
    // The metrics' label and the logs' field.
    let dest = spec.destination.to_string();
    let lease_ms = shared.settings.lease.as_millis() as i64;
    let max = spec.max_in_flight.max(1);
    let must_be_left = spec.deadline + start_margin(shared.settings.lease, spec.deadline);
    let mut breaker = Breaker::new(spec.breaker_failures, shared.settings.breaker_cooldown);
    let mut queue: VecDeque<Job> = VecDeque::new();
    let mut sends: JoinSet<(bool, bool)> = JoinSet::new();
    let mut probe_out = false;
    // The last lease found fewer jobs than it asked for: none is due until a wake-up or the poll.
    let mut drained = false;
    let mut lease_failures = 0u32;
    set_breaker_gauge(&dest, false);
    let meters = Arc::new(Meters::new(&dest));
    let in_flight = metrics::gauge!("earshot_outbox_in_flight", "destination" => dest.clone());
    // Woken by the intake (through `dispatch`) and by the recorder after a delivered job.
    let wake = Arc::new(Notify::new());
    let mut inbox = shared.dispatch.register(&spec.destination, wake.clone());
    // A steady clock, not a sleep restarted on every turn: a loop kept busy by handed jobs still
    // looks for retries that have come due.
    let mut poll = tokio::time::interval(shared.settings.poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A wake-up (jobs written pending, or, from the recorder, a job recorded done that may have held
    // others) asks for a lease as soon as there is room for one, without stopping the jobs handed
    // from the intake: the lease says whether anything is due, and one that comes back full stops
    // them until the backlog is through. Only the poll stops them first, so that a loop kept full by
    // handed jobs still looks for due ones once per poll.
    let mut recheck = false;

    while !shutdown.is_cancelled() {
        let now = Instant::now();
        let admit = breaker.admit(now, probe_out);
        // Start what may start.
        while sends.len() < max {
            let probe = match breaker.admit(now, probe_out) {
                Admit::Any => false,
                Admit::Probe => true,
                Admit::Nothing(_) => break,
            };
            let Some(job) = queue.pop_front() else { break };
            if lease_left(&job) < must_be_left {
                release(&shared, job);
                continue;
            }
            probe_out |= probe;
            let (shared, deadline, wake, meters) = (shared.clone(), spec.deadline, wake.clone(), meters.clone());
            sends.spawn(async move { (probe, send(&shared, &meters, job, deadline, wake).await) });
        }
        // A paused destination keeps nothing leased that it will not send soon.
        if matches!(admit, Admit::Nothing(Some(_))) {
            while let Some(job) = queue.pop_front() {
                release(&shared, job);
            }
        }
        in_flight.set(sends.len() as f64);

        // Lease when a quarter of the budget is free: enough for the free slots and half a budget
        // more, queued so the next sends start the moment others end. With every slot taken (a
        // destination that hangs) nothing more is leased, so no job waits out its lease unsent.
        let free = max - sends.len().min(max);
        let idle = sends.is_empty() && queue.is_empty();
        let room = (free + max / 2).saturating_sub(queue.len());
        // Something may be due: the last lease was full, the poll came, or a wake-up asked.
        let look = !drained || recheck;
        let want = match breaker.admit(now, probe_out) {
            Admit::Any if look && (free >= max.div_ceil(4) || idle) => room,
            Admit::Probe if look && queue.is_empty() => 1,
            _ => 0,
        };
        if want > 0 {
            let now_ms = crate::now_ms();
            match shared.store.lease_jobs(Some(&spec.destination), now_ms, now_ms + lease_ms, want as i64).await {
                Ok(jobs) => {
                    lease_failures = 0;
                    recheck = false;
                    drained = jobs.len() < want;
                    meters.leased.increment(jobs.len() as u64);
                    let got = !jobs.is_empty();
                    queue.extend(jobs);
                    if got {
                        continue;
                    }
                }
                Err(e) => {
                    lease_failures += 1;
                    let pause = Duration::from_millis(200 * 2u64.pow(lease_failures.min(6)));
                    tracing::warn!(destination = %dest, error = %e, retry_in_ms = pause.as_millis() as u64, "Outbox lease failed.");
                    tokio::select! { _ = tokio::time::sleep(pause) => {}, _ = shutdown.cancelled() => {} }
                    continue;
                }
            }
        }

        let reopen_at = match breaker.admit(now, probe_out) {
            Admit::Nothing(Some(until)) => Some(until),
            _ => None,
        };
        // New cases' jobs come straight from the intake only while nothing else is due here (the
        // last lease came back short; the poll stops the flow until the next lease says so again),
        // so they do not overtake a backlog for longer than a poll, and only as many as a lease
        // would take (less those on their way).
        let open = matches!(breaker.admit(now, probe_out), Admit::Any);
        inbox.offer(if open && drained { room } else { 0 });
        tokio::select! {
            Some(done) = sends.join_next(), if !sends.is_empty() => {
                let (probe, ok) = done.unwrap_or((false, false));
                if probe {
                    probe_out = false;
                }
                on_result(&mut breaker, &spec, &dest, ok, probe);
            }
            n = inbox.receive(&mut queue) => meters.handed.increment(n as u64),
            _ = wake.notified() => recheck = true,
            _ = poll.tick() => {
                drained = false;
                inbox.offer(0);
            }
            _ = sleep_until(reopen_at), if reopen_at.is_some() => {}
            _ = shutdown.cancelled() => {}
        }
    }

    // Jobs handed meanwhile go back with the queue.
    shared.dispatch.unregister(&spec.destination);
    inbox.close(&mut queue);
    for job in queue.drain(..) {
        release(&shared, job);
    }
    // Each send ends by its deadline; its outcome is recorded before the loop returns.
    while sends.join_next().await.is_some() {}
    in_flight.set(0.0);
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

fn set_breaker_gauge(dest: &str, open: bool) {
    metrics::gauge!("earshot_outbox_breaker_open", "destination" => dest.to_owned()).set(if open { 1.0 } else { 0.0 });
}

/// `dest` is the destination as text, made once per loop: this runs after every send.
fn on_result(breaker: &mut Breaker, spec: &Spec, dest: &str, ok: bool, probe: bool) {
    match breaker.record(ok, probe, Instant::now()) {
        Some(Change::Opened { cooldown }) => {
            set_breaker_gauge(dest, true);
            metrics::counter!("earshot_outbox_breaker_opened_total", "destination" => dest.to_owned()).increment(1);
            tracing::warn!(
                destination = %dest, failures = spec.breaker_failures, cooldown_ms = cooldown.as_millis() as u64,
                "Destination paused: breaker open after consecutive failures; other destinations go on."
            );
        }
        Some(Change::Reopened { cooldown }) => {
            tracing::debug!(destination = %dest, cooldown_ms = cooldown.as_millis() as u64, "Probe failed; destination paused again.");
        }
        Some(Change::Closed) => {
            set_breaker_gauge(dest, false);
            tracing::info!(destination = %dest, "Destination answers again: breaker closed.");
        }
        None => {}
    }
}

/// Time left on a job's lease (a leased job keeps its lease end in `next_attempt_at`).
fn lease_left(job: &Job) -> Duration {
    Duration::from_millis(u64::try_from(job.next_attempt_at - crate::now_ms()).unwrap_or(0))
}

/// Hands a leased job back unsent: pending again at once, its attempt not counted.
fn release(shared: &Shared, job: Job) {
    let outcome = JobOutcome { id: job.id, attempts: job.attempts, kind: OutcomeKind::Released };
    let _ = shared.recorder.send(Recorded { outcome, wake: None });
}

/// Sends one job within `deadline` and reports its outcome; returns whether the destination
/// answered (a permanent refusal is an answer; a timeout or a transient failure is not).
async fn send(shared: &Shared, meters: &Meters, job: Job, deadline: Duration, wake: Arc<Notify>) -> bool {
    let settings = &shared.settings;
    let result = match super::worker::suppressed_recipient(&*shared.store, &job).await {
        Some(address) => Err(SendError::Unreachable {
            reason: format!("{address} is suppressed (it bounced one of our messages, or opted out)"),
        }),
        None => match tokio::time::timeout(deadline, shared.deliverer.deliver(&job)).await {
            Ok(r) => r,
            Err(_) => Err(SendError::Transient {
                reason: format!("no answer within the deadline of {} s", deadline.as_secs_f32()),
                retry_after: None,
            }),
        },
    };
    let now = crate::now_ms();
    let dest = job.destination.clone();
    let (kind, answered) = match result {
        Ok(delivered) => {
            meters.delivered.increment(1);
            meters.latency.record((now - job.created_at).max(0) as f64 / 1000.0);
            tracing::debug!(job = %job.id, event_id = %job.event_id, destination = %dest, "Delivered.");
            let done = OutcomeKind::Done {
                case_id: job.case_id.clone(),
                ticket_id: delivered.ticket_id,
                provider_id: delivered.provider_id,
                segments: delivered.segments.map(i64::from),
                acknowledges: job.kind == "ack",
            };
            (done, true)
        }
        Err(e) => {
            let (counter, retry_after) = match &e {
                SendError::Transient { retry_after, .. } => (&meters.transient, *retry_after),
                SendError::Unreachable { .. } => (&meters.unreachable, None),
                SendError::Permanent { .. } => (&meters.permanent, None),
            };
            let give_up = !e.is_transient() || job.attempts >= job.max_attempts;
            if give_up { &meters.dead } else { counter }.increment(1);
            let error = e.to_string();
            let kind = if give_up {
                meters.dead_letters.increment(1);
                tracing::warn!(
                    job = %job.id, event_id = %job.event_id, destination = %dest, attempts = job.attempts,
                    error = %e, "Job dead-lettered; replay it with `earshot outbox replay` or give it up with `earshot outbox discard`."
                );
                OutcomeKind::Dead { error }
            } else {
                let delay =
                    super::next_delay(&settings.retry_schedule, job.attempts, retry_after, settings.max_retry_after);
                tracing::info!(
                    job = %job.id, destination = %dest, attempts = job.attempts, error = %e,
                    retry_in_ms = delay.as_millis() as u64, "Delivery failed; will retry."
                );
                OutcomeKind::Retry { at_ms: now + delay.as_millis() as i64, error }
            };
            if let SendError::Unreachable { reason } = &e {
                // Recorded on the case and told downstream; the job itself is dead (replay it
                // once the customer can be reached again).
                if let Err(err) = shared.deliverer.lifecycle.unreachable(&job.case_id, reason).await {
                    tracing::warn!(job = %job.id, error = %err, "Could not record an unreachable customer on the case.");
                }
            }
            (kind, !e.is_transient())
        }
    };
    let wake = matches!(kind, OutcomeKind::Done { .. }).then_some(wake);
    let outcome = JobOutcome { id: job.id, attempts: job.attempts, kind };
    if shared.recorder.send(Recorded { outcome, wake }).is_err() {
        tracing::error!(job = %job.id, "The outcome recorder is gone; the job will be sent again when its lease ends.");
    }
    answered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_just_leased_always_has_enough_lease_left_to_start() {
        let s = Duration::from_secs;
        for (lease, deadline) in [(s(60), s(15)), (s(5), s(2)), (s(5), Duration::from_millis(4_900)), (s(31), s(30))] {
            let m = start_margin(lease, deadline);
            assert!(deadline + m < lease, "lease {lease:?}, deadline {deadline:?}, margin {m:?}");
        }
        assert_eq!(start_margin(s(60), s(15)), s(1));
    }
}
