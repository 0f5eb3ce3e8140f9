//! The outbox: every side effect (acknowledgements, downstream events) is a stored job delivered here.
//!
//! Each destination (a downstream endpoint, a mailbox, a web source's callback) has a loop of its own
//! (`destination.rs`) that leases its due jobs, sends them within the destination's deadline and
//! in-flight budget, and pauses the destination when its breaker opens, so one slow or broken
//! destination never holds up another. No database lock is held while a job is sent. Outcomes are
//! recorded in batches (`recorder.rs`), one transaction per batch, fenced by the attempt number.
//! Failures are retried on the configured schedule with ±20% jitter, honouring `Retry-After` up to
//! `max_retry_after`; after `max_attempts`, or at once for a permanent failure (410 Gone, a refused
//! recipient), a job is dead and waits for a replay or a discard. Jobs of one case to one
//! destination go out in creation order: the lease never hands out a job while an earlier one of its
//! case and destination is pending, leased or dead. The first job of a new case may skip the lease:
//! the intake writes it leased and hands it to its destination's loop (`dispatch.rs`). Delivered
//! jobs are deleted after `outbox.keep_done` (`retention.rs`).

mod breaker;
mod dest;
mod destination;
mod dispatch;
mod recorder;
mod retention;
mod retry;
mod worker;

pub use dest::Destination;
pub use dispatch::Dispatch;
pub use retention::sweep as retention_sweep;
pub use retry::next_delay;
pub use worker::{Deliverer, run_workers};
