//! Property, differential and model-based tests on stable Rust: the pure parsers and checkers that
//! face untrusted or operator-written input, and the durable queue driven by random operation
//! sequences against a model.
//!
//! Case counts are small in the normal `cargo test` (see [`config`]); `HOOKRELAY_LONG_TESTS=1`
//! multiplies them, and `PROPTEST_CASES` overrides them. A failing case is shrunk and written
//! to `tests/props/proptest-regressions/` (commit it: it is replayed first from then on).

mod config;
mod ingest;
mod queue;
mod records;
mod sign;
mod ssrf;

use proptest::prelude::ProptestConfig;

/// `short` cases normally, `long` under `HOOKRELAY_LONG_TESTS=1`; `PROPTEST_CASES` wins.
pub fn cases(short: u32, long: u32) -> ProptestConfig {
    let env = |name: &str| std::env::var(name).ok();
    let cases = env("PROPTEST_CASES")
        .and_then(|v| v.parse().ok())
        .unwrap_or(if env("HOOKRELAY_LONG_TESTS").as_deref() == Some("1") {
            long
        } else {
            short
        });
    ProptestConfig {
        cases,
        // Shrinking is bounded so a failure reports in seconds, not minutes.
        max_shrink_iters: 2048,
        // `prop_assume!` filters (a few percent of cases) must not abort long runs.
        max_global_rejects: cases.max(1024),
        ..ProptestConfig::default()
    }
}
