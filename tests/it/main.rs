//! hookrelay's integration tests: the real binary against loopback fakes (a fake Dropbox sender,
//! fake consumer callbacks), one test binary. See `support/` for the harness.

// The harness is an API for tests: not every helper is used by every test file.
#[allow(dead_code)]
mod support;

mod abuse;
mod alerts;
mod changes;
mod cli_config;
mod crash;
mod dashboard;
mod dead_scale;
mod delivery;
mod faults;
mod first_hour;
mod generate;
mod ingest;
mod journal;
mod lifecycle;
mod metrics_names;
mod policy;
mod powerfs;
mod proxy;
mod reload_load;
mod secrets;
mod storage_faults;
mod store_modes;
mod tls;
