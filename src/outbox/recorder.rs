//! The outcome recorder: delivery outcomes are written in batches, like intake.
//!
//! Every send reports its outcome here instead of committing it itself. The recorder takes whatever
//! has queued, and what arrives within `outbox.record_window` of the first (up to [`MAX_BATCH`]), and
//! writes it with one `Store::record_outcomes` call: one transaction and one fsync on SQLite, one
//! statement on PostgreSQL. While that commits, the next outcomes queue, so the batch grows with the
//! load. A delivered job may release the next job of its case to the same destination, so that
//! destination's loop is woken after the commit.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use crate::store::{JobOutcome, Store};

/// Most outcomes written at once.
const MAX_BATCH: usize = 1024;
/// Attempts at writing one batch before it is given up (its jobs stay leased, and are delivered
/// again once their lease ends: at least once, never lost).
const MAX_TRIES: u32 = 8;

/// One outcome, with the destination loop to wake once it is committed.
pub struct Recorded {
    pub outcome: JobOutcome,
    pub wake: Option<Arc<Notify>>,
}

/// Writes outcomes until every sender is gone and the queue is empty, each batch gathered for
/// `window` from its first outcome.
pub async fn run(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<Recorded>, window: Duration) {
    let mut batch: Vec<Recorded> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        gather(&mut rx, &mut batch, window).await;
        let outcomes: Vec<JobOutcome> = batch.iter().map(|r| r.outcome.clone()).collect();
        let started = std::time::Instant::now();
        let mut tries = 0;
        loop {
            tries += 1;
            match store.record_outcomes(outcomes.clone(), crate::now_ms()).await {
                Ok(counted) => {
                    for (o, ok) in outcomes.iter().zip(counted) {
                        if !ok {
                            tracing::warn!(
                                job = %o.id,
                                "Lease had expired; another worker owns the job, outcome not recorded."
                            );
                        }
                    }
                    break;
                }
                Err(e) if tries < MAX_TRIES => {
                    let pause = Duration::from_millis(100 * 2u64.pow(tries.min(6)));
                    tracing::warn!(error = %e, outcomes = outcomes.len(), retry_in_ms = pause.as_millis() as u64, "Could not record delivery outcomes; retrying.");
                    tokio::time::sleep(pause).await;
                }
                Err(e) => {
                    tracing::error!(
                        error = %e, outcomes = outcomes.len(),
                        "Delivery outcomes not recorded; those jobs will be sent again when their lease ends."
                    );
                    break;
                }
            }
        }
        metrics::histogram!("earshot_outbox_record_seconds").record(started.elapsed().as_secs_f64());
        let mut woken: Vec<&Arc<Notify>> = Vec::new();
        for w in batch.iter().filter_map(|r| r.wake.as_ref()) {
            if !woken.iter().any(|x| Arc::ptr_eq(x, w)) {
                w.notify_one();
                woken.push(w);
            }
        }
        batch.clear();
    }
}

/// Adds to `batch` what arrives within `window` (from now), until it holds [`MAX_BATCH`] or every
/// sender is gone. Sends end a few at a time, so without a window a busy recorder writes a handful
/// of outcomes per call; a call's fixed cost (a statement and a commit on PostgreSQL) is then most
/// of its cost.
async fn gather(rx: &mut mpsc::UnboundedReceiver<Recorded>, batch: &mut Vec<Recorded>, window: Duration) {
    if window.is_zero() {
        return;
    }
    let until = tokio::time::Instant::now() + window;
    while batch.len() < MAX_BATCH {
        // `recv_many` is cancel safe: an outcome is either in `batch` or still queued.
        match tokio::time::timeout_at(until, rx.recv_many(batch, MAX_BATCH - batch.len())).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
