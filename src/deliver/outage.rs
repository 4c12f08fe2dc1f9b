//! Outage mode's state machine for one lane, pure: when an instance enters an outage (no 2xx
//! for `outage_after` while attempts were made) and when it leaves it (the first 2xx, or
//! outage mode turned off). The lane owns it, so it needs no lock; it tells the lane which
//! changes to persist and announce.

use std::time::Duration;

use crate::retry;
use crate::store::OutageV1;

/// What an attempt's answer changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Unchanged,
    /// The instance entered an outage now.
    Began,
    /// Its outage ended after this many milliseconds.
    Ended {
        lasted_ms: u64,
    },
}

/// One instance's outage state: the stored part ([`OutageV1`]) and, held in memory only, when
/// the failures since the last 2xx began.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    /// Unix ms of the first failed attempt since the last 2xx (or since the start).
    failing_since_ms: Option<u64>,
    state: OutageV1,
}

impl Tracker {
    /// The tracker of an instance whose stored state is `state` (after a restart, an outage
    /// goes on: its failures began no later than it did).
    pub fn new(state: OutageV1) -> Tracker {
        Tracker {
            failing_since_ms: state.since_ms,
            state,
        }
    }

    pub fn state(&self) -> &OutageV1 {
        &self.state
    }

    pub fn in_outage(&self) -> bool {
        self.state.active()
    }

    /// A 2xx at `now_ms`: the failures are over, and so is the outage if there was one.
    pub fn succeeded(&mut self, now_ms: u64) -> Change {
        self.failing_since_ms = None;
        self.end(now_ms)
    }

    /// A failed attempt answered at `now_ms`, with `error`. The instance enters an outage once
    /// its failures have gone on for `outage_after` (zero: never).
    pub fn failed(&mut self, now_ms: u64, error: &str, outage_after: Duration) -> Change {
        let since = *self.failing_since_ms.get_or_insert(now_ms);
        if self.in_outage() || outage_after.is_zero() {
            return Change::Unchanged;
        }
        if now_ms.saturating_sub(since) < retry::millis(outage_after) {
            return Change::Unchanged;
        }
        self.state.since_ms = Some(now_ms);
        self.state.last_error = Some(error.to_owned());
        Change::Began
    }

    /// Outage mode turned off (`outage_after = "0s"`) at `now_ms`: an outage ends.
    pub fn switched_off(&mut self, now_ms: u64) -> Change {
        self.end(now_ms)
    }

    fn end(&mut self, now_ms: u64) -> Change {
        match self.state.end(now_ms) {
            Some(lasted_ms) => Change::Ended { lasted_ms },
            None => Change::Unchanged,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AFTER: Duration = Duration::from_secs(10);

    #[test]
    fn failures_for_outage_after_begin_an_outage_and_a_2xx_ends_it() {
        let mut tracker = Tracker::default();
        assert_eq!(tracker.failed(1_000, "HTTP 500", AFTER), Change::Unchanged);
        assert_eq!(tracker.failed(10_999, "HTTP 502", AFTER), Change::Unchanged);
        assert!(!tracker.in_outage());
        assert_eq!(tracker.failed(11_000, "timed out", AFTER), Change::Began);
        assert!(tracker.in_outage());
        assert_eq!(tracker.state().since_ms, Some(11_000));
        assert_eq!(tracker.state().last_error.as_deref(), Some("timed out"));
        // More failures change nothing, not even the error that began it.
        assert_eq!(tracker.failed(70_000, "HTTP 503", AFTER), Change::Unchanged);
        assert_eq!(tracker.state().last_error.as_deref(), Some("timed out"));
        assert_eq!(
            tracker.succeeded(71_000),
            Change::Ended { lasted_ms: 60_000 }
        );
        assert!(!tracker.in_outage());
        assert_eq!(tracker.state().past, [(11_000, 71_000)]);
        // The next failures count from their own start.
        assert_eq!(tracker.failed(80_000, "HTTP 500", AFTER), Change::Unchanged);
        assert_eq!(tracker.failed(89_999, "HTTP 500", AFTER), Change::Unchanged);
        assert_eq!(tracker.failed(90_000, "HTTP 500", AFTER), Change::Began);
    }

    #[test]
    fn a_2xx_between_failures_starts_the_count_again() {
        let mut tracker = Tracker::default();
        tracker.failed(0, "HTTP 500", AFTER);
        assert_eq!(tracker.succeeded(9_000), Change::Unchanged);
        assert_eq!(tracker.failed(12_000, "HTTP 500", AFTER), Change::Unchanged);
        assert_eq!(tracker.failed(21_999, "HTTP 500", AFTER), Change::Unchanged);
        assert_eq!(tracker.failed(22_000, "HTTP 500", AFTER), Change::Began);
    }

    #[test]
    fn zero_outage_after_never_begins_one_and_switching_off_ends_it() {
        let mut tracker = Tracker::default();
        tracker.failed(0, "HTTP 500", Duration::ZERO);
        assert_eq!(
            tracker.failed(1_000_000, "HTTP 500", Duration::ZERO),
            Change::Unchanged
        );
        assert_eq!(tracker.failed(1_000_000, "HTTP 500", AFTER), Change::Began);
        assert_eq!(
            tracker.switched_off(1_000_500),
            Change::Ended { lasted_ms: 500 }
        );
        assert_eq!(tracker.switched_off(1_000_600), Change::Unchanged);
    }

    #[test]
    fn a_restored_outage_goes_on_and_ends_at_the_first_2xx() {
        let stored = OutageV1 {
            since_ms: Some(5_000),
            last_error: Some("HTTP 503".into()),
            past: vec![(1_000, 2_000)],
        };
        let mut tracker = Tracker::new(stored);
        assert!(tracker.in_outage());
        assert_eq!(tracker.failed(9_000, "HTTP 500", AFTER), Change::Unchanged);
        assert_eq!(tracker.succeeded(9_500), Change::Ended { lasted_ms: 4_500 });
        assert_eq!(tracker.state().past, [(1_000, 2_000), (5_000, 9_500)]);
    }
}
