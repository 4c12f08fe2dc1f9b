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
//! - [`rng`]: a seeded xorshift for fault schedules; the long-tier switch.
//!
//! Every wait here is bounded; on failure the daemon's logs are printed.

pub mod callback;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dropbox;
pub mod fake_api;
pub mod http;
pub mod metrics;
pub mod rng;
pub mod signatures;
pub mod store;

pub use callback::{Action, FakeCallback, Recorded};
pub use config::{InstanceConfig, TestConfig};
pub use daemon::Daemon;
pub use dropbox::App;
pub use http::wait_until;
