//! Operations tests: the real `hookrelay` binary's admin API and its auth, `status` and
//! `dead …` through the daemon and on a stopped store, exit codes 69/77/78,
//! `import-instance` round-tripping through `check`, and the sd_notify sequence.
//! A separate test target from `tests/it`, with its own small harness (`support`).

// The harness serves several files; not every helper is used by each.
#[allow(dead_code)]
mod support;

mod admin_api;
mod cli;
mod notify;
