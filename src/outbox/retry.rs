//! The retry schedule as data.

use std::time::Duration;

use rand::Rng;

/// The delay before the attempt after attempt number `attempts` (1-based) failed: the schedule entry
/// for it (the last entry repeats) with ±20% jitter, and at least `retry_after` (capped at `cap`).
pub fn next_delay(schedule: &[Duration], attempts: i64, retry_after: Option<Duration>, cap: Duration) -> Duration {
    let idx = usize::try_from(attempts.max(1) - 1).unwrap_or(0).min(schedule.len().saturating_sub(1));
    let base = schedule.get(idx).copied().unwrap_or(Duration::from_secs(60));
    let jitter = rand::rng().random_range(0.8..=1.2);
    let delay = base.mul_f64(jitter);
    match retry_after {
        Some(ra) => delay.max(ra.min(cap)),
        None => delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_schedule_with_jitter() {
        let s = [Duration::from_secs(5), Duration::from_secs(300)];
        for _ in 0..100 {
            let d = next_delay(&s, 1, None, Duration::from_secs(3600));
            assert!((4.0..=6.0).contains(&d.as_secs_f64()), "{d:?}");
            let d = next_delay(&s, 7, None, Duration::from_secs(3600));
            assert!((240.0..=360.0).contains(&d.as_secs_f64()), "last entry repeats: {d:?}");
        }
    }

    #[test]
    fn honours_retry_after_within_the_cap() {
        let s = [Duration::from_secs(5)];
        let d = next_delay(&s, 1, Some(Duration::from_secs(120)), Duration::from_secs(3600));
        assert_eq!(d, Duration::from_secs(120));
        let d = next_delay(&s, 1, Some(Duration::from_secs(86_400)), Duration::from_secs(3600));
        assert_eq!(d, Duration::from_secs(3600));
    }
}
