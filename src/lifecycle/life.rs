//! A case's lifecycle state, kept as JSON with the case (`cases.lifecycle`): the SLA clocks, the
//! survey, reachability. The clock arithmetic is pure: times are Unix milliseconds.

use serde::{Deserialize, Serialize};

use crate::schema::{Case, Feedback};

/// The survey sent for a case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SurveyState {
    pub token: String,
    pub sent_at: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Life {
    pub first_response_due: i64,
    pub resolution_due: i64,
    #[serde(default)]
    pub first_response_at: Option<i64>,
    #[serde(default)]
    pub resolved_at: Option<i64>,
    #[serde(default)]
    pub first_response_breached_at: Option<i64>,
    #[serde(default)]
    pub resolution_breached_at: Option<i64>,
    #[serde(default)]
    pub paused_at: Option<i64>,
    #[serde(default)]
    pub unreachable: Option<String>,
    #[serde(default)]
    pub survey: Option<SurveyState>,
    #[serde(default)]
    pub feedback: Option<Feedback>,
}

/// The two SLA targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    FirstResponse,
    Resolution,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::FirstResponse => "first_response",
            Target::Resolution => "resolution",
        }
    }
}

fn ms(t: time::OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

pub fn at(ms: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

impl Life {
    /// The state of a case stored without one: its clocks as made.
    pub fn from_case(case: &Case) -> Life {
        Life {
            first_response_due: ms(case.sla.first_response_due),
            resolution_due: ms(case.sla.resolution_due),
            ..Life::default()
        }
    }

    /// Whether a target still runs: neither met nor breached (a paused clock still "runs" here;
    /// see [`Life::next_due`]).
    pub fn running(&self, t: Target) -> bool {
        match t {
            Target::FirstResponse => self.first_response_at.is_none() && self.first_response_breached_at.is_none(),
            Target::Resolution => self.resolved_at.is_none() && self.resolution_breached_at.is_none(),
        }
    }

    pub fn due(&self, t: Target) -> i64 {
        match t {
            Target::FirstResponse => self.first_response_due,
            Target::Resolution => self.resolution_due,
        }
    }

    /// The earliest due time of a running target, `None` when none runs or the clocks are stopped.
    pub fn next_due(&self) -> Option<i64> {
        if self.paused_at.is_some() {
            return None;
        }
        [Target::FirstResponse, Target::Resolution].into_iter().filter(|t| self.running(*t)).map(|t| self.due(t)).min()
    }

    /// Records that a target was met at `now` (if it still ran).
    pub fn meet(&mut self, t: Target, now: i64) {
        if self.running(t) {
            match t {
                Target::FirstResponse => self.first_response_at = Some(now),
                Target::Resolution => self.resolved_at = Some(now),
            }
        }
    }

    /// Stops the clocks (awaiting the customer).
    pub fn pause(&mut self, now: i64) {
        self.paused_at.get_or_insert(now);
    }

    /// Starts the clocks again, moving the running targets' due times on by the time stopped.
    pub fn resume(&mut self, now: i64) {
        if let Some(since) = self.paused_at.take() {
            let waited = (now - since).max(0);
            if self.running(Target::FirstResponse) {
                self.first_response_due += waited;
            }
            if self.running(Target::Resolution) {
                self.resolution_due += waited;
            }
        }
    }

    /// The running targets whose due time has passed at `now` (none while paused).
    pub fn overdue(&self, now: i64) -> Vec<Target> {
        if self.paused_at.is_some() {
            return Vec::new();
        }
        [Target::FirstResponse, Target::Resolution]
            .into_iter()
            .filter(|t| self.running(*t) && self.due(*t) <= now)
            .collect()
    }

    pub fn breach(&mut self, t: Target, now: i64) {
        match t {
            Target::FirstResponse => self.first_response_breached_at = Some(now),
            Target::Resolution => self.resolution_breached_at = Some(now),
        }
    }

    pub fn breached(&self) -> bool {
        self.first_response_breached_at.is_some() || self.resolution_breached_at.is_some()
    }

    /// Writes the state into the case as consumers see it.
    pub fn apply_to(&self, case: &mut Case) {
        let opt = |v: Option<i64>| v.map(at);
        case.sla.first_response_due = at(self.first_response_due);
        case.sla.resolution_due = at(self.resolution_due);
        case.sla.first_response_at = opt(self.first_response_at);
        case.sla.resolved_at = opt(self.resolved_at);
        case.sla.first_response_breached_at = opt(self.first_response_breached_at);
        case.sla.resolution_breached_at = opt(self.resolution_breached_at);
        case.sla.paused_since = opt(self.paused_at);
        case.unreachable = self.unreachable.clone();
        case.feedback = self.feedback.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn life() -> Life {
        Life { first_response_due: 1_000, resolution_due: 10_000, ..Life::default() }
    }

    #[test]
    fn clocks_run_stop_and_move_on_by_the_time_waited() {
        let mut l = life();
        assert_eq!(l.next_due(), Some(1_000));
        assert!(l.overdue(999).is_empty());
        l.pause(500);
        assert_eq!(l.next_due(), None);
        assert!(l.overdue(5_000).is_empty(), "no breach while awaiting the customer");
        l.resume(2_500);
        assert_eq!((l.first_response_due, l.resolution_due), (3_000, 12_000));
        l.meet(Target::FirstResponse, 2_600);
        assert_eq!(l.next_due(), Some(12_000));
        l.pause(3_000);
        l.resume(4_000);
        assert_eq!((l.first_response_due, l.resolution_due), (3_000, 13_000), "a met target's due time stays");
        assert_eq!(l.overdue(13_000), vec![Target::Resolution]);
        l.breach(Target::Resolution, 13_000);
        assert_eq!(l.next_due(), None);
        assert!(l.overdue(99_000).is_empty(), "a breached target is not breached again");
        assert!(l.breached());
    }

    #[test]
    fn both_targets_can_pass_at_once() {
        let l = life();
        assert_eq!(l.overdue(20_000), vec![Target::FirstResponse, Target::Resolution]);
    }
}
