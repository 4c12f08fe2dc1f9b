//! hookrelay: a self-hosted relay for Dropbox webhooks (see ARCHITECTURE.md).
//!
//! Modules, in data-flow order:
//! - [`config`]: the TOML file → validated [`config::Config`].
//! - [`sign`]: inbound Dropbox signature checks and outbound callback signatures (no IO).
//! - [`deliver`]: delivery to callback URLs (retry schedule, outcomes, destination guard).
//! - [`ops`]: running under systemd (sd_notify).

pub mod config;
pub mod deliver;
pub mod ops;
pub mod sign;
