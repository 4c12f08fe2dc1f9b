//! Test harness for hookrelay's integration tests.
//!
//! - [`config`]: `TestConfig`, a builder for the daemon's TOML.
//! - [`daemon`]: `Daemon`, the real `hookrelay` binary running in a temp dir.
//! - [`cli`]: one-shot CLI invocations (`check`, `--help`, …), bounded.
//! - [`dropbox`]: what Dropbox sends (signed notifications, challenges).
//! - [`fake_api`]: `FakeDropboxApi`, the Dropbox API routes of change events, scripted.
//! - [`callback`]: `FakeCallback`, a scripted consumer endpoint recording every request.
//! - [`store`]: reads the sled store of a stopped daemon.
//! - [`signatures`]: checks of a delivery's signature headers.
//! - [`metrics`]: one value out of `/metrics`.
//! - [`http`]: the shared HTTP client and polling helpers.
//! - [`server`]: `TestServer`, the loopback HTTP/1 server behind the fakes.
//! - [`rng`]: a seeded xorshift for fault schedules; the long-tier switch.
//! - [`fault_proxy`]: `FaultProxy`, a loopback TCP proxy injecting destination faults.
//! - [`notify`]: `NotifySocket`, a `NOTIFY_SOCKET` the test owns (sd_notify as systemd sees it).
//! - [`long_tests`]: whether the long tier (`HOOKRELAY_LONG_TESTS=1`) is asked for.
//!
//! Every wait here is bounded; on failure the daemon's logs are printed.

pub mod callback;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dropbox;
pub mod fake_api;
pub mod fault_proxy;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod rng;
pub mod server;
pub mod signatures;
pub mod store;

pub use callback::{Action, FakeCallback, Recorded};
pub use config::{InstanceConfig, TestConfig};
pub use daemon::Daemon;
pub use dropbox::App;
pub use http::wait_until;

/// Whether the long tier runs (`HOOKRELAY_LONG_TESTS=1`): larger counts, longer runs.
pub fn long_tests() -> bool {
    std::env::var("HOOKRELAY_LONG_TESTS").is_ok_and(|v| v == "1")
}

/// `short` in the normal run, `long` under `HOOKRELAY_LONG_TESTS=1`.
pub fn tier<T>(short: T, long: T) -> T {
    if long_tests() { long } else { short }
}
