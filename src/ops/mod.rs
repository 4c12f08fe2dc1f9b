//! Operating the daemon (SPEC §7): the admin listener, metrics, logs, signals and sd_notify.

pub mod admin;
pub mod logging;
pub mod metrics;
pub mod sd_notify;
pub mod signals;
