//! Operating the daemon under a service manager (SPEC §7).

pub mod sd_notify;
