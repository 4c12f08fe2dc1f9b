//! hookrelay: a self-hosted relay for Dropbox webhooks (see ARCHITECTURE.md).
//!
//! Modules, in data-flow order (ARCHITECTURE.md, "Levels", gives which may import which):
//! - [`config`]: the TOML file → validated [`config::Config`].
//! - [`tls`]: the Dropbox listener's certificate and key → a rustls server config.
//! - [`ingest`]: the Dropbox-facing listener: challenge, verification, fan-out, durable commit.
//! - [`store`]: the durable queue (the only module that touches sled).
//! - [`changes`]: change events: cursor walks against the Dropbox API, per-object events.
//! - [`deliver`]: per-instance lanes that sign, rate-limit, send and retry.
//! - [`alerts`]: operator alerts, queued in the store and sent to `[alerts] url`.
//! - [`sign`]: inbound Dropbox signature checks and outbound callback signatures (no IO).
//! - [`ops`]: the admin side: the admin listener, status figures, dead-letter administration.
//! - [`daemon`]: wiring of the stages for `run`, signals, sd_notify and the watchdog check;
//!   [`cli`]: the command line.
//!
//! Leaves that the modules above share: [`time`] (the clock, RFC 3339), [`retry`] (the retry
//! schedule), [`telemetry`] (metrics and logs), and the private `http` (the accept loop).

pub mod alerts;
pub mod changes;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod deliver;
mod http;
pub mod ingest;
#[cfg(test)]
mod layers;
pub mod ops;
pub mod retry;
pub mod sign;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod tls;
