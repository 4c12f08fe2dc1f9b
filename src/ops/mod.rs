//! Operating the daemon (SPEC §7): the admin listener and what it serves (status figures,
//! dead-letter administration, the metrics that [`crate::telemetry`] collects), logs, signals,
//! sd_notify and the watchdog check.

pub mod admin;
pub mod cross_site;
pub mod dead;
pub mod sd_notify;
pub mod signals;
pub mod status;
pub mod watchdog;
