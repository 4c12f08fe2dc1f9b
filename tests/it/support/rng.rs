//! A tiny seeded RNG (xorshift64*) for fault schedules and load, so a run's choices can be
//! replayed from its printed seed, and the switch between the short and the long test tier.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Environment variable that selects the long tier (`1`).
pub const LONG_TESTS_ENV: &str = "HOOKRELAY_LONG_TESTS";
/// Environment variable that fixes the seed of seeded tests (a decimal u64).
pub const SEED_ENV: &str = "HOOKRELAY_SEED";

/// Whether the long tier was asked for (`HOOKRELAY_LONG_TESTS=1`).
pub fn long_tests() -> bool {
    std::env::var(LONG_TESTS_ENV).is_ok_and(|v| v == "1")
}

/// `HOOKRELAY_SEED` if set, else one drawn from the clock; print it so a run can be replayed.
pub fn seed() -> u64 {
    if let Some(seed) = std::env::var(SEED_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok())
    {
        return seed;
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}

/// xorshift64* (Vigna): small, fast, good enough for test schedules.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        // Zero is the one state xorshift never leaves; mix the seed so nearby seeds differ.
        let state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
        XorShift(if state == 0 { 1 } else { state })
    }

    /// A child generator (e.g. one per sender) that does not share this one's sequence.
    pub fn fork(&mut self) -> XorShift {
        XorShift::new(self.next_u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is irrelevant here.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `percent` / 100.
    pub fn percent(&mut self, percent: u32) -> bool {
        self.below(100) < u64::from(percent)
    }

    /// Uniform in [lo, hi).
    pub fn duration_between(&mut self, lo: Duration, hi: Duration) -> Duration {
        lo + (hi - lo).mul_f64(self.unit())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_ranges_hold() {
        let (mut a, mut b) = (XorShift::new(42), XorShift::new(42));
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(XorShift::new(1).next_u64(), XorShift::new(2).next_u64());
        let mut r = XorShift::new(0);
        let (lo, hi) = (Duration::from_millis(200), Duration::from_millis(1500));
        for _ in 0..1000 {
            assert!(r.below(7) < 7);
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
            let d = r.duration_between(lo, hi);
            assert!(d >= lo && d < hi, "{d:?}");
        }
        let hits = (0..10_000).filter(|_| r.percent(30)).count();
        assert!((2_500..3_500).contains(&hits), "{hits}");
    }
}
