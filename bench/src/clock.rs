//! The harness's one clock: nanoseconds since it started, for send and arrival times.

use std::sync::OnceLock;
use std::time::Instant;

pub(crate) fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since the harness started: the one clock of send and arrival times.
pub(crate) fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}
