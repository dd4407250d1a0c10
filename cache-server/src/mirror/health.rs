//! What the mirror knows of an upstream's state, and what it decides from
//! it: whether to ask at all (a 429's `Retry-After`, a circuit breaker
//! open after repeated failures), and how long a tag is served before it is
//! revalidated (longer while the upstream's pull budget is low). Pure
//! logic, driven by the answers the mirror gets; time is passed in.

use kiln_common::registry::Limits;
use std::time::{Duration, Instant};

/// Consecutive failures (timeouts, refused connections, 5xx) that open the
/// breaker.
const BREAKER_AFTER: u32 = 3;
/// How long the breaker first stays open; it doubles each time it opens
/// again without a success in between, up to [`BREAKER_MAX`].
const BREAKER_OPEN: Duration = Duration::from_secs(30);
const BREAKER_MAX: Duration = Duration::from_secs(300);
/// A 429 without `Retry-After` holds the upstream this long.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Revalidation windows stretch by this factor while the budget is low.
const LOW_BUDGET_STRETCH: u32 = 4;

/// Why an upstream is not asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// It answered 429; waiting what it asked.
    RateLimited,
    /// It failed [`BREAKER_AFTER`] times in a row: the breaker is open.
    BreakerOpen,
}

impl std::fmt::Display for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Hold::RateLimited => "rate limited (429)",
            Hold::BreakerOpen => "failing (circuit breaker open)",
        })
    }
}

/// How an upstream request ended, as the breaker and budget see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer that says the upstream works (2xx, 304, 404, 401, 403).
    Answered,
    /// 429.
    RateLimited,
    /// 5xx, a timeout, a refused or broken connection.
    Failed,
}

impl Outcome {
    pub fn of_status(status: u16) -> Outcome {
        match status {
            429 => Outcome::RateLimited,
            s if s >= 500 => Outcome::Failed,
            _ => Outcome::Answered,
        }
    }
}

#[derive(Debug, Default)]
pub struct Health {
    hold: Option<(Instant, Hold)>,
    failures: u32,
    opens: u32,
    /// The last `ratelimit-limit` / `ratelimit-remaining` seen.
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
}

impl Health {
    /// Why the upstream must not be asked at `now`, and for how long more.
    pub fn held(&self, now: Instant) -> Option<(Hold, Duration)> {
        let (until, why) = self.hold?;
        (now < until).then(|| (why, until - now))
    }

    /// Records a request's outcome and what its answer said of the budget.
    pub fn record(&mut self, now: Instant, outcome: Outcome, limits: Limits) {
        if limits.limit.is_some() {
            self.limit = limits.limit;
        }
        if limits.remaining.is_some() {
            self.remaining = limits.remaining;
        }
        match outcome {
            Outcome::Answered => {
                self.failures = 0;
                self.opens = 0;
                // A success ends a half-open breaker's hold.
                if matches!(self.hold, Some((_, Hold::BreakerOpen))) {
                    self.hold = None;
                }
            }
            Outcome::RateLimited => {
                let wait = limits.retry_after.unwrap_or(DEFAULT_RETRY_AFTER);
                self.hold = Some((now + wait, Hold::RateLimited));
            }
            Outcome::Failed => {
                self.failures += 1;
                if self.failures >= BREAKER_AFTER {
                    let open = BREAKER_OPEN
                        .saturating_mul(1 << self.opens.min(8))
                        .min(BREAKER_MAX);
                    self.hold = Some((now + open, Hold::BreakerOpen));
                    self.opens += 1;
                    self.failures = 0;
                }
            }
        }
    }

    /// The revalidation window: `base`, stretched while fewer than a tenth
    /// of the upstream's pulls are left (a revalidation that finds a tag
    /// moved spends one).
    pub fn window(&self, base: Duration) -> Duration {
        match (self.limit, self.remaining) {
            (Some(l), Some(r)) if r.saturating_mul(10) < l => {
                base.saturating_mul(LOW_BUDGET_STRETCH)
            }
            (None, Some(0)) => base.saturating_mul(LOW_BUDGET_STRETCH),
            _ => base,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(retry: Option<u64>, limit: Option<u64>, remaining: Option<u64>) -> Limits {
        Limits {
            retry_after: retry.map(Duration::from_secs),
            limit,
            remaining,
        }
    }

    #[test]
    fn a_429_holds_for_what_retry_after_asks_or_a_minute() {
        let t = Instant::now();
        let mut h = Health::default();
        h.record(t, Outcome::RateLimited, limits(Some(7), None, None));
        assert_eq!(h.held(t), Some((Hold::RateLimited, Duration::from_secs(7))));
        assert_eq!(h.held(t + Duration::from_secs(7)), None);
        h.record(t, Outcome::RateLimited, Limits::default());
        assert_eq!(h.held(t), Some((Hold::RateLimited, DEFAULT_RETRY_AFTER)));
        // A success does not cut a rate limit's hold short.
        h.record(t, Outcome::Answered, Limits::default());
        assert!(h.held(t).is_some());
    }

    #[test]
    fn the_breaker_opens_after_repeated_failures_and_backs_off() {
        let t = Instant::now();
        let mut h = Health::default();
        for _ in 0..BREAKER_AFTER - 1 {
            h.record(t, Outcome::Failed, Limits::default());
        }
        assert_eq!(h.held(t), None);
        // A success in between starts the count again.
        h.record(t, Outcome::Answered, Limits::default());
        for _ in 0..BREAKER_AFTER - 1 {
            h.record(t, Outcome::Failed, Limits::default());
        }
        assert_eq!(h.held(t), None);
        h.record(t, Outcome::Failed, Limits::default());
        assert_eq!(h.held(t), Some((Hold::BreakerOpen, BREAKER_OPEN)));
        // Half open: the next failures open it for twice as long.
        let later = t + BREAKER_OPEN;
        assert_eq!(h.held(later), None);
        for _ in 0..BREAKER_AFTER {
            h.record(later, Outcome::Failed, Limits::default());
        }
        assert_eq!(h.held(later), Some((Hold::BreakerOpen, BREAKER_OPEN * 2)));
        // One answer closes it.
        h.record(later, Outcome::Answered, Limits::default());
        assert_eq!(h.held(later), None);
    }

    #[test]
    fn revalidation_backs_off_while_the_budget_is_low() {
        let base = Duration::from_secs(300);
        let mut h = Health::default();
        assert_eq!(h.window(base), base);
        let t = Instant::now();
        h.record(t, Outcome::Answered, limits(None, Some(100), Some(76)));
        assert_eq!(h.window(base), base);
        h.record(t, Outcome::Answered, limits(None, None, Some(9)));
        assert_eq!((h.limit, h.remaining), (Some(100), Some(9)));
        assert_eq!(h.window(base), base * LOW_BUDGET_STRETCH);
    }

    #[test]
    fn statuses_are_outcomes() {
        assert_eq!(Outcome::of_status(200), Outcome::Answered);
        assert_eq!(Outcome::of_status(404), Outcome::Answered);
        assert_eq!(Outcome::of_status(429), Outcome::RateLimited);
        assert_eq!(Outcome::of_status(503), Outcome::Failed);
    }
}
