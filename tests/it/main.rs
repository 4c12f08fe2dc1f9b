//! hookrelay's integration tests: the real binary against loopback fakes (a fake Dropbox sender,
//! fake consumer callbacks), one test binary. See `support/` for the harness.

// The harness is an API for tests: not every helper is used by every test file.
#[allow(dead_code)]
mod support;

mod abuse;
mod alerts;
mod change_filters;
mod changes;
mod cli_config;
mod consumer_tls;
mod crash;
mod dashboard;
mod dead_scale;
mod delivery;
mod events;
mod faults;
mod first_hour;
mod generate;
mod ingest;
mod journal;
mod lifecycle;
mod metrics_names;
mod outage;
mod outage_wiring;
mod policy;
mod powerfs;
mod proxy;
mod reload_load;
mod retry_command;
mod secrets;
mod storage_faults;
mod store_modes;
mod tls;
