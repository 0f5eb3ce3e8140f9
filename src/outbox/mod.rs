//! The outbox: every side effect (acknowledgements, downstream events) is a stored job delivered here.
//!
//! Workers lease due jobs (the lease is a row update; no database lock is held while a job is sent),
//! deliver them, and record the outcome fenced by the attempt number. Failures are retried on the
//! configured schedule with ±20% jitter, honouring `Retry-After` up to `max_retry_after`; after
//! `max_attempts`, or at once for a permanent failure (410 Gone, a refused recipient), a job is dead
//! and waits for a replay. Jobs of one case to one destination go out in creation order: the lease
//! query never hands out a job while an earlier one of its case and destination is unfinished.

mod retry;
mod worker;

pub use retry::next_delay;
pub use worker::{Deliverer, run_workers};
