//! Operating the daemon (docs/operations.md), its admin side: the admin listener and what it serves
//! (status figures, dead-letter administration, `retry`, the metrics that [`crate::telemetry`]
//! collects).

pub mod admin;
pub mod cross_site;
pub mod dead;
pub mod events;
pub mod retry;
pub mod status;
