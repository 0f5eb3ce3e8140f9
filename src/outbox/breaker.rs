//! One destination's circuit breaker, as a plain state machine (the loop in `destination.rs` owns
//! one and feeds it the results of its sends).
//!
//! After `threshold` consecutive failed sends the destination is paused for a cool-down; then one job
//! is sent as a probe. A successful probe closes the breaker; a failed one pauses the destination
//! again for twice as long (up to [`MAX_COOLDOWN`]). Results of sends that were already under way
//! when the breaker opened say nothing new and are ignored.

use std::time::{Duration, Instant};

/// The longest pause of a destination.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// The cool-down is over: one probe may go.
    Probing,
}

/// What the breaker lets through now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Any number of sends, up to the in-flight budget.
    Any,
    /// One probe.
    Probe,
    /// Nothing until this time (open) or until the probe's result (probing).
    Nothing(Option<Instant>),
}

/// A change worth one log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Opened {
        cooldown: Duration,
    },
    /// A probe failed; paused again.
    Reopened {
        cooldown: Duration,
    },
    Closed,
}

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    base: Duration,
    failures: u32,
    /// Failed probes since the breaker opened.
    failed_probes: u32,
    state: State,
}

impl Breaker {
    pub fn new(threshold: u32, base: Duration) -> Breaker {
        Breaker { threshold: threshold.max(1), base, failures: 0, failed_probes: 0, state: State::Closed }
    }

    #[cfg(test)]
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// What may be sent at `now`, with `probe_in_flight` whether the probe is still out.
    pub fn admit(&mut self, now: Instant, probe_in_flight: bool) -> Admit {
        if let State::Open { until } = self.state
            && now >= until
        {
            self.state = State::Probing;
        }
        match self.state {
            State::Closed => Admit::Any,
            State::Open { until } => Admit::Nothing(Some(until)),
            State::Probing if probe_in_flight => Admit::Nothing(None),
            State::Probing => Admit::Probe,
        }
    }

    /// Feeds the result of one send; `probe` says whether it was the probe.
    pub fn record(&mut self, ok: bool, probe: bool, now: Instant) -> Option<Change> {
        match self.state {
            State::Closed if ok => {
                self.failures = 0;
                None
            }
            State::Closed => {
                self.failures += 1;
                if self.failures < self.threshold {
                    return None;
                }
                self.failed_probes = 0;
                let cooldown = self.cooldown();
                self.state = State::Open { until: now + cooldown };
                Some(Change::Opened { cooldown })
            }
            State::Probing if probe && ok => {
                self.state = State::Closed;
                self.failures = 0;
                self.failed_probes = 0;
                Some(Change::Closed)
            }
            State::Probing if probe => {
                self.failed_probes += 1;
                let cooldown = self.cooldown();
                self.state = State::Open { until: now + cooldown };
                Some(Change::Reopened { cooldown })
            }
            _ => None,
        }
    }

    fn cooldown(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failed_probes.min(16)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(MAX_COOLDOWN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn opens_after_the_threshold_of_consecutive_failures_only() {
        let t = Instant::now();
        let mut b = Breaker::new(3, S);
        assert_eq!(b.record(false, false, t), None);
        assert_eq!(b.record(false, false, t), None);
        assert_eq!(b.record(true, false, t), None, "a success resets the count");
        assert_eq!(b.record(false, false, t), None);
        assert_eq!(b.record(false, false, t), None);
        assert_eq!(b.record(false, false, t), Some(Change::Opened { cooldown: S }));
        assert_eq!(b.admit(t, false), Admit::Nothing(Some(t + S)));
        // Sends that were already out when it opened change nothing.
        assert_eq!(b.record(true, false, t), None);
        assert_eq!(b.admit(t, false), Admit::Nothing(Some(t + S)));
    }

    #[test]
    fn probes_after_the_cooldown_and_doubles_it_after_a_failed_probe() {
        let t = Instant::now();
        let mut b = Breaker::new(1, S);
        assert_eq!(b.record(false, false, t), Some(Change::Opened { cooldown: S }));
        assert_eq!(b.admit(t + S, false), Admit::Probe);
        assert_eq!(b.admit(t + S, true), Admit::Nothing(None), "one probe at a time");
        assert_eq!(b.record(false, true, t + S), Some(Change::Reopened { cooldown: 2 * S }));
        assert_eq!(b.admit(t + 2 * S, false), Admit::Nothing(Some(t + 3 * S)));
        assert_eq!(b.admit(t + 3 * S, false), Admit::Probe);
        assert_eq!(b.record(false, true, t + 3 * S), Some(Change::Reopened { cooldown: 4 * S }));
        assert_eq!(b.admit(t + 7 * S, false), Admit::Probe);
        assert_eq!(b.record(true, true, t + 7 * S), Some(Change::Closed));
        assert_eq!(b.admit(t + 7 * S, false), Admit::Any);
        assert!(b.is_closed());
        // Closed again, it takes the whole threshold (and the first cool-down) to open again.
        assert_eq!(b.record(false, false, t), Some(Change::Opened { cooldown: S }));
    }

    #[test]
    fn the_cooldown_is_capped() {
        let t = Instant::now();
        let mut b = Breaker::new(1, Duration::from_secs(100));
        b.record(false, false, t);
        let mut last = Duration::ZERO;
        for i in 0..10 {
            let at = t + Duration::from_secs(10_000 * (i + 1));
            assert_eq!(b.admit(at, false), Admit::Probe);
            if let Some(Change::Reopened { cooldown }) = b.record(false, true, at) {
                last = cooldown;
            }
        }
        assert_eq!(last, MAX_COOLDOWN);
    }
}
