//! The configuration's value grammars: durations (`1h30m`), sizes (`64KiB`) and rates (`100/s`).
//!
//! Each parser is pure and strict: no spaces, no signs, no fractions, case as written in
//! docs/configuration.md. An error is the rule the value broke, phrased to say what is expected;
//! the caller adds the key and the value.

use std::num::NonZeroU32;
use std::time::Duration;

use super::Rate;

const DURATION_EXPECTED: &str = "expected a duration: digits followed by a unit (ms, s, m, h or d), \
     repeatable, such as \"250ms\", \"10s\" or \"1h30m\"";
const SIZE_EXPECTED: &str = "expected a size: a number of bytes, optionally followed by \
     B, KB, MB, GB, KiB, MiB or GiB, such as \"65536\", \"64KiB\" or \"10GiB\"";
const RATE_EXPECTED: &str =
    "expected a rate: a count, \"/\" and a period (s, m or h), such as \"100/s\"";

/// Parses `\d+(ms|s|m|h|d)` repeated, e.g. `"1h30m"`, `"250ms"`, `"30d"`.
///
/// # Errors
/// Empty input, a number without a unit, an unknown unit, a fraction, or a total that does not
/// fit a [`Duration`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.is_empty() {
        return Err(DURATION_EXPECTED.to_owned());
    }
    let mut rest = s;
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let (digits, after_digits) = split_digits(rest);
        let (unit, after_unit) = split_unit(after_digits);
        if digits.is_empty() || unit.is_empty() {
            return Err(DURATION_EXPECTED.to_owned());
        }
        let part = duration_part(digits, unit)?;
        total = total.checked_add(part).ok_or_else(too_large_duration)?;
        rest = after_unit;
    }
    Ok(total)
}

/// Parses `\d+` or `\d+(B|KB|MB|GB|KiB|MiB|GiB)` into bytes; KB = 1000, KiB = 1024.
///
/// # Errors
/// Anything else, or a size above `u64::MAX` bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, unit) = split_digits(s);
    if digits.is_empty() {
        return Err(SIZE_EXPECTED.to_owned());
    }
    let multiplier: u64 = match unit {
        "" | "B" => 1,
        "KB" => 1000,
        "MB" => 1000 * 1000,
        "GB" => 1000 * 1000 * 1000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(SIZE_EXPECTED.to_owned()),
    };
    let too_large = || format!("too large; {SIZE_EXPECTED}");
    let count: u64 = digits.parse().map_err(|_| too_large())?;
    count.checked_mul(multiplier).ok_or_else(too_large)
}

/// Parses `\d+/(s|m|h)` with a count of at least 1, e.g. `"100/s"`.
///
/// # Errors
/// Anything else, a count of 0, or a count above `u32::MAX`.
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let (digits, rest) = split_digits(s);
    let per = match rest {
        "/s" => Duration::from_secs(1),
        "/m" => Duration::from_secs(60),
        "/h" => Duration::from_secs(3600),
        _ => return Err(RATE_EXPECTED.to_owned()),
    };
    if digits.is_empty() {
        return Err(RATE_EXPECTED.to_owned());
    }
    let count: u32 = digits
        .parse()
        .map_err(|_| format!("count too large; {RATE_EXPECTED}"))?;
    let count = NonZeroU32::new(count)
        .ok_or_else(|| format!("count must be at least 1; {RATE_EXPECTED}"))?;
    Ok(Rate { count, per })
}

/// Splits `s` after its leading ASCII digits.
fn split_digits(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s.split_at(end)
}

/// Splits `s` after its leading ASCII letters (a duration unit).
fn split_unit(s: &str) -> (&str, &str) {
    let end = s
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(s.len());
    s.split_at(end)
}

fn duration_part(digits: &str, unit: &str) -> Result<Duration, String> {
    let count: u64 = digits.parse().map_err(|_| too_large_duration())?;
    let seconds_per_unit: u64 = match unit {
        "ms" => return Ok(Duration::from_millis(count)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(DURATION_EXPECTED.to_owned()),
    };
    count
        .checked_mul(seconds_per_unit)
        .map(Duration::from_secs)
        .ok_or_else(too_large_duration)
}

fn too_large_duration() -> String {
    format!("too large; {DURATION_EXPECTED}")
}
