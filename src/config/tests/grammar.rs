//! The duration, size and rate grammars, valid and invalid.

use std::num::NonZeroU32;
use std::time::Duration;

use crate::config::{Rate, parse_duration, parse_rate, parse_size};

#[test]
fn durations_in_every_unit_and_combined() {
    let cases = [
        ("250ms", Duration::from_millis(250)),
        ("10s", Duration::from_secs(10)),
        ("5m", Duration::from_secs(300)),
        ("73h", Duration::from_secs(73 * 3600)),
        ("30d", Duration::from_secs(30 * 86_400)),
        ("1h30m", Duration::from_secs(5400)),
        ("1d2h3m4s5ms", Duration::from_millis(93_784_005)),
        ("0s", Duration::ZERO),
    ];
    for (text, expected) in cases {
        assert_eq!(parse_duration(text), Ok(expected), "{text}");
    }
}

#[test]
fn malformed_durations_say_what_is_expected() {
    for text in [
        "", "5", "5x", "1.5h", "h", "1h 30m", "-5s", " 5s", "5S", "5sec", "1h30",
    ] {
        let err = parse_duration(text).expect_err(text);
        assert!(
            err.starts_with("expected a duration: digits followed by a unit (ms, s, m, h or d)"),
            "{text}: {err}"
        );
        assert!(err.contains("\"1h30m\""), "{text}: {err}");
    }
}

#[test]
fn overflowing_durations_are_too_large() {
    for text in [
        "99999999999999999999s",
        "18446744073709551615d",
        "18446744073709551615s1s",
    ] {
        let err = parse_duration(text).expect_err(text);
        assert!(
            err.starts_with("too large; expected a duration"),
            "{text}: {err}"
        );
    }
}

#[test]
fn sizes_in_bytes_and_every_unit() {
    let cases = [
        ("0", 0),
        ("65536", 65_536),
        ("512B", 512),
        ("64KB", 64_000),
        ("2MB", 2_000_000),
        ("1GB", 1_000_000_000),
        ("64KiB", 65_536),
        ("32MiB", 32 << 20),
        ("10GiB", 10 << 30),
    ];
    for (text, expected) in cases {
        assert_eq!(parse_size(text), Ok(expected), "{text}");
    }
}

#[test]
fn malformed_sizes_say_what_is_expected() {
    for text in [
        "", "KiB", "64kib", "64kb", "1.5MiB", "64 KiB", "-1", "64TiB", "0x10",
    ] {
        let err = parse_size(text).expect_err(text);
        assert!(
            err.starts_with("expected a size: a number of bytes, optionally followed by B, KB"),
            "{text}: {err}"
        );
    }
    for text in ["18446744073709551616", "17179869184GiB"] {
        let err = parse_size(text).expect_err(text);
        assert!(
            err.starts_with("too large; expected a size"),
            "{text}: {err}"
        );
    }
}

#[test]
fn rates_per_second_minute_and_hour() {
    let rate = |count: u32, seconds: u64| Rate {
        count: NonZeroU32::new(count).expect("non-zero test count"),
        per: Duration::from_secs(seconds),
    };
    assert_eq!(parse_rate("100/s"), Ok(rate(100, 1)));
    assert_eq!(parse_rate("600/m"), Ok(rate(600, 60)));
    assert_eq!(parse_rate("1/h"), Ok(rate(1, 3600)));
}

#[test]
fn malformed_rates_say_what_is_expected() {
    for text in [
        "", "100", "/s", "100/d", "100 /s", "100/ s", "1.5/s", "100/S", "-1/s", "100/sec",
    ] {
        let err = parse_rate(text).expect_err(text);
        assert!(
            err.starts_with("expected a rate: a count, \"/\" and a period (s, m or h)"),
            "{text}: {err}"
        );
    }
}

#[test]
fn zero_and_huge_rate_counts_are_rejected() {
    let zero = parse_rate("0/s").expect_err("0/s");
    assert!(
        zero.starts_with("count must be at least 1; expected a rate"),
        "{zero}"
    );
    let huge = parse_rate("4294967296/s").expect_err("4294967296/s");
    assert!(
        huge.starts_with("count too large; expected a rate"),
        "{huge}"
    );
}
