//! The retry schedule (docs/protocol.md), as pure functions of their inputs: when retry n is due,
//! how a `Retry-After` header raises it, and when an event is out of attempts or time (its age
//! less the time its instance spent in outages).
//!
//! Randomness stays at the edge: [`random_jitter`] draws the factor, [`retry_delay`] only uses it.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// The smallest and largest jitter factor (the schedule's × U(0.8, 1.2)).
pub const JITTER_RANGE: std::ops::RangeInclusive<f64> = 0.8..=1.2;

/// How far apart retries are: `[delivery] retry_initial`, `retry_multiplier`, `retry_max_interval`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub multiplier: f64,
    pub max_interval: Duration,
}

/// The delay before retry n, `attempts_made` being n (the attempts so far, at least 1):
/// `min(initial × multiplier^(n−1), max_interval) × jitter`, where `jitter` (clamped into
/// [`JITTER_RANGE`]) comes from the caller. With a `Retry-After` delay the result is at least
/// `min(retry_after, max_interval)`.
///
/// Never panics: huge `attempts_made` or multipliers saturate at `max_interval`, and a
/// non-finite jitter counts as 1.0. `attempts_made` 0 is treated as 1.
pub fn retry_delay(
    policy: &RetryPolicy,
    attempts_made: u32,
    jitter: f64,
    retry_after: Option<Duration>,
) -> Duration {
    let jittered = scale(backoff_secs(policy, attempts_made), clamp_jitter(jitter));
    let floor = retry_after.map_or(Duration::ZERO, |wait| wait.min(policy.max_interval));
    jittered.max(floor)
}

/// `min(initial × multiplier^(n−1), max_interval)` in seconds, before jitter.
fn backoff_secs(policy: &RetryPolicy, attempts_made: u32) -> f64 {
    let max_secs = policy.max_interval.as_secs_f64();
    let exponent = f64::from(attempts_made.saturating_sub(1));
    let uncapped = policy.initial.as_secs_f64() * policy.multiplier.powf(exponent);
    if uncapped.is_finite() && uncapped < max_secs {
        uncapped.max(0.0)
    } else {
        max_secs
    }
}

fn clamp_jitter(jitter: f64) -> f64 {
    if jitter.is_finite() {
        jitter.clamp(*JITTER_RANGE.start(), *JITTER_RANGE.end())
    } else {
        1.0
    }
}

/// `secs × factor` as a `Duration`, saturating at `Duration::MAX`.
fn scale(secs: f64, factor: f64) -> Duration {
    Duration::try_from_secs_f64(secs * factor).unwrap_or(Duration::MAX)
}

/// A random jitter factor in [`JITTER_RANGE`].
pub fn random_jitter() -> f64 {
    rand::random_range(JITTER_RANGE)
}

/// Parses a `Retry-After` value: delay-seconds (`120`), or an HTTP-date taken relative to `now`
/// (a date in the past gives zero). `None` when it is neither. A number of seconds too large for
/// a `u64` saturates; the caller caps the result anyway.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_digit()) {
        let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `now + wait`, never a panic: a sum past what an `Instant` can hold gives a year from `now`
/// (configured durations are at most a year, and waits from the network are capped before
/// they get here, so only a stored or computed value gone wrong can reach that).
pub fn instant_after(now: Instant, wait: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 86_400);
    now.checked_add(wait)
        .or_else(|| now.checked_add(YEAR))
        .unwrap_or(now)
}

/// A duration in whole milliseconds for a due time, saturating at `u64::MAX` (never truncated).
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Whether an event goes to the dead letters instead of being retried: it has had
/// `max_attempts` attempts, or it is `max_age` old (from acceptance or its last replay).
pub fn exhausted(attempts_made: u32, max_attempts: u32, age: Duration, max_age: Duration) -> bool {
    attempts_made >= max_attempts || age >= max_age
}

/// An event's age for `max_age`: the time since `age_base_ms` (acceptance or the last replay)
/// up to `now_ms`, less the time its instance spent in outages (`[start, end)` Unix ms
/// intervals, disjoint): an event that waited through an outage is as old as before it.
pub fn effective_age(
    age_base_ms: u64,
    now_ms: u64,
    outages: impl IntoIterator<Item = (u64, u64)>,
) -> Duration {
    let wall = now_ms.saturating_sub(age_base_ms);
    let credit: u64 = outages
        .into_iter()
        .map(|(start, end)| end.min(now_ms).saturating_sub(start.max(age_base_ms)))
        .fold(0, u64::saturating_add);
    Duration::from_millis(wall.saturating_sub(credit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    const HOUR: Duration = Duration::from_secs(3600);

    /// The configuration's defaults.
    fn default_policy() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_secs(4),
            multiplier: 4.0,
            max_interval: 24 * HOUR,
        }
    }

    #[test]
    fn default_policy_give_powers_of_four_capped_at_a_day() {
        let policy = default_policy();
        let delays: Vec<u64> = (1..=10)
            .map(|n| retry_delay(&policy, n, 1.0, None).as_secs())
            .collect();
        assert_eq!(
            delays,
            [4, 16, 64, 256, 1024, 4096, 16384, 65536, 86400, 86400]
        );
    }

    #[test]
    fn zero_attempts_counts_as_the_first() {
        let policy = default_policy();
        assert_eq!(retry_delay(&policy, 0, 1.0, None), Duration::from_secs(4));
    }

    #[test]
    fn jitter_scales_and_is_clamped() {
        let policy = default_policy();
        assert_eq!(
            retry_delay(&policy, 1, 0.8, None),
            Duration::from_secs_f64(3.2)
        );
        assert_eq!(
            retry_delay(&policy, 1, 1.2, None),
            Duration::from_secs_f64(4.8)
        );
        assert_eq!(
            retry_delay(&policy, 1, 0.1, None),
            Duration::from_secs_f64(3.2)
        );
        assert_eq!(
            retry_delay(&policy, 1, 7.0, None),
            Duration::from_secs_f64(4.8)
        );
        assert_eq!(
            retry_delay(&policy, 1, f64::NAN, None),
            Duration::from_secs(4)
        );
        // At the cap the jitter still applies, as in the documented formula.
        assert_eq!(
            retry_delay(&policy, 20, 1.2, None),
            Duration::from_secs_f64(86400.0 * 1.2)
        );
    }

    #[test]
    fn retry_after_raises_the_delay_up_to_max_interval() {
        let policy = default_policy();
        let ten_minutes = Duration::from_secs(600);
        assert_eq!(retry_delay(&policy, 1, 1.0, Some(ten_minutes)), ten_minutes);
        assert_eq!(
            retry_delay(&policy, 1, 1.0, Some(Duration::from_secs(1))),
            Duration::from_secs(4),
            "a shorter Retry-After does not shorten the backoff"
        );
        assert_eq!(
            retry_delay(&policy, 1, 1.0, Some(1000 * HOUR)),
            24 * HOUR,
            "capped at max_interval"
        );
        assert_eq!(retry_delay(&policy, 1, 1.0, Some(Duration::MAX)), 24 * HOUR);
    }

    #[test]
    fn huge_attempts_and_multipliers_saturate() {
        let policy = default_policy();
        assert_eq!(retry_delay(&policy, u32::MAX, 1.0, None), 24 * HOUR);
        let wild = RetryPolicy {
            multiplier: f64::MAX,
            ..policy
        };
        assert_eq!(retry_delay(&wild, 3, 1.0, None), 24 * HOUR);
        let infinite = RetryPolicy {
            multiplier: f64::INFINITY,
            ..policy
        };
        assert_eq!(retry_delay(&infinite, 2, 1.0, None), 24 * HOUR);
        let unbounded = RetryPolicy {
            max_interval: Duration::MAX,
            ..policy
        };
        assert_eq!(retry_delay(&unbounded, u32::MAX, 1.2, None), Duration::MAX);
    }

    #[test]
    fn odd_policies_do_not_panic() {
        let nan = RetryPolicy {
            multiplier: f64::NAN,
            ..default_policy()
        };
        assert_eq!(retry_delay(&nan, 2, 1.0, None), 24 * HOUR);
        let zero = RetryPolicy {
            initial: Duration::ZERO,
            multiplier: 0.0,
            max_interval: Duration::ZERO,
        };
        assert_eq!(retry_delay(&zero, 5, 1.2, None), Duration::ZERO);
    }

    #[test]
    fn delays_stay_within_jittered_bounds_for_many_inputs() {
        let policy = default_policy();
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let max = policy.max_interval.as_secs_f64();
        for _ in 0..10_000 {
            let attempts = rng.random_range(1..=64u32);
            let jitter = rng.random_range(JITTER_RANGE);
            let delay = retry_delay(&policy, attempts, jitter, None).as_secs_f64();
            let base = (4.0 * 4f64.powi(attempts as i32 - 1)).min(max);
            assert!(
                delay >= base * 0.8 - 1e-6,
                "n={attempts} j={jitter}: {delay}"
            );
            assert!(
                delay <= base * 1.2 + 1e-6,
                "n={attempts} j={jitter}: {delay}"
            );
            assert!(delay <= max * 1.2 + 1e-6);
        }
    }

    #[test]
    fn delays_grow_with_attempts_at_fixed_jitter() {
        let policy = default_policy();
        for jitter in [0.8, 1.0, 1.2] {
            let delays: Vec<Duration> = (1..40)
                .map(|n| retry_delay(&policy, n, jitter, None))
                .collect();
            assert!(delays.windows(2).all(|pair| pair[0] <= pair[1]));
        }
    }

    #[test]
    fn random_jitter_is_in_range() {
        for _ in 0..1000 {
            assert!(JITTER_RANGE.contains(&random_jitter()));
        }
    }

    #[test]
    fn parse_retry_after_seconds() {
        let now = SystemTime::now();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn parse_retry_after_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
    }

    #[test]
    fn parse_retry_after_rejects_garbage() {
        let now = SystemTime::now();
        for value in [
            "",
            "  ",
            "-5",
            "1.5",
            "soon",
            "12s",
            "Tue, 99 Foo 2024 00:00:00 GMT",
        ] {
            assert_eq!(parse_retry_after(value, now), None, "{value:?}");
        }
    }

    #[test]
    fn clock_arithmetic_saturates_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(instant_after(now, HOUR), now + HOUR);
        let far = instant_after(now, Duration::MAX);
        assert!(far > now + HOUR, "{far:?}");
        assert_eq!(millis(Duration::from_secs(2)), 2000);
        assert_eq!(millis(Duration::MAX), u64::MAX);
        // `as u64` would have kept the low 64 bits of 2^64 ms: 0.
        assert_eq!(millis(Duration::from_millis(u64::MAX) * 2), u64::MAX);
    }

    #[test]
    fn a_retry_after_is_capped_at_max_interval() {
        let policy = default_policy();
        let forever = parse_retry_after(&u64::MAX.to_string(), SystemTime::now());
        let delay = retry_delay(&policy, 1, 1.0, forever);
        assert_eq!(delay, policy.max_interval);
    }

    #[test]
    fn outage_time_does_not_count_toward_the_age() {
        let ms = |d: Duration| millis(d);
        let accepted = 1_800_000_000_000;
        let now = accepted + ms(80 * HOUR);
        // No outage: the wall age.
        assert_eq!(effective_age(accepted, now, []), 80 * HOUR);
        // A 3-day outage inside its life: 8 hours old.
        let outage = (accepted + ms(HOUR), accepted + ms(73 * HOUR));
        assert_eq!(effective_age(accepted, now, [outage]), 8 * HOUR);
        // An outage that began before it was accepted counts from its acceptance only.
        let before = (accepted - ms(HOUR), accepted + ms(2 * HOUR));
        assert_eq!(effective_age(accepted, now, [before]), 78 * HOUR);
        // One still going (ends at `now`), and one entirely before it: only the overlap.
        let going = (accepted + ms(79 * HOUR), now);
        let earlier = (0, accepted - 1);
        assert_eq!(
            effective_age(accepted, now, [earlier, outage, going]),
            7 * HOUR
        );
        // Accepted during the outage that still goes on: no age at all.
        assert_eq!(
            effective_age(now - 5, now, [(accepted, now)]),
            Duration::ZERO
        );
        // Odd inputs saturate: a clock behind the base, intervals past `now`, overlaps.
        assert_eq!(effective_age(now, accepted, [outage]), Duration::ZERO);
        assert_eq!(
            effective_age(accepted, now, [(0, u64::MAX), (0, u64::MAX)]),
            Duration::ZERO
        );
    }

    #[test]
    fn exhausted_by_attempts_or_age() {
        let max_age = 73 * HOUR;
        assert!(!exhausted(9, 10, HOUR, max_age));
        assert!(exhausted(10, 10, HOUR, max_age));
        assert!(exhausted(11, 10, HOUR, max_age));
        assert!(!exhausted(1, 10, max_age - Duration::from_secs(1), max_age));
        assert!(exhausted(1, 10, max_age, max_age));
    }
}
