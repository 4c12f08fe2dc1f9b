//! hookrelay: a self-hosted relay for Dropbox webhooks (see ARCHITECTURE.md).
//!
//! Modules, in data-flow order:
//! - [`config`]: the TOML file → validated [`config::Config`].

pub mod config;
pub mod store;
