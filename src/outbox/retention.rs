//! Retention: delivered and discarded jobs are deleted `outbox.keep_done` after they finished.
//!
//! The sweep walks the outbox in id order, a few hundred rows a step with a pause between steps, so
//! it never holds the writer for long; it stops at the first job created after the cut-off (no later
//! one can be old enough). Dead and pending jobs are never deleted.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// Jobs looked at per step.
const STEP: i64 = 500;
/// Pause between steps, so that intake and delivery keep the writer between them.
const PAUSE: Duration = Duration::from_millis(20);

pub async fn run(store: Arc<dyn Store>, keep_done: Duration, shutdown: CancellationToken) {
    let every = sweep_every(keep_done);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
        let cutoff = crate::now_ms() - keep_done.as_millis() as i64;
        match sweep(&*store, cutoff, &shutdown).await {
            Ok(0) => {}
            Ok(n) => {
                metrics::counter!("earshot_outbox_jobs_deleted_total").increment(n);
                tracing::info!(deleted = n, keep_done_secs = keep_done.as_secs(), "Old delivered jobs deleted.");
            }
            Err(e) => tracing::warn!(error = %e, "Outbox retention sweep failed; trying again later."),
        }
    }
}

/// How often the retention sweep runs: half of `keep_done`, between 200 ms and one minute.
fn sweep_every(keep_done: Duration) -> Duration {
    (keep_done / 2).clamp(Duration::from_millis(200), Duration::from_secs(60))
}

/// One sweep; returns how many jobs it deleted.
pub async fn sweep(store: &dyn Store, cutoff_ms: i64, shutdown: &CancellationToken) -> crate::store::Result<u64> {
    let mut after = 0;
    let mut deleted = 0;
    while !shutdown.is_cancelled() {
        let step = store.purge_done(after, cutoff_ms, STEP).await?;
        deleted += step.deleted;
        if step.finished {
            break;
        }
        after = step.next_after;
        tokio::time::sleep(PAUSE).await;
    }
    Ok(deleted)
}
