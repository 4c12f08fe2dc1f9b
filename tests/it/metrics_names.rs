//! The metrics' names and labels (docs/metrics.md): every per-instance series labelled
//! `instance_name` (never `instance`, Prometheus's target label), present at 0 on a fresh daemon
//! for every configured instance and every known `result`/`outcome`, gone when a reload removes
//! the instance, created when a reload adds one; `process_*` and `hookrelay_build_info`.

use std::time::Duration;

use crate::support::metrics::{Sample, samples};
use crate::support::{App, Daemon, FakeCallback, InstanceConfig, TestConfig, wait_until};

const INGEST_RESULTS: &[&str] = &[
    "accepted",
    "unrouted",
    "challenge",
    "bad_signature",
    "too_large",
    "bad_body",
    "bad_challenge",
    "bad_method",
    "not_found",
    "store_full",
    "store_failed",
];
const OUTCOMES: &[&str] = &[
    "delivered",
    "gone",
    "redirect",
    "failed",
    "refused",
    "error",
];
const RELOAD_RESULTS: &[&str] = &["ok", "error"];

/// The single-sample series each instance has (the histogram and the outcomes apart).
const PER_INSTANCE: &[&str] = &[
    "hookrelay_events_accepted_total",
    "hookrelay_queue_depth",
    "hookrelay_dead_letters",
    "hookrelay_oldest_pending_age_seconds",
    "hookrelay_outage",
    "hookrelay_quarantined_total",
    "hookrelay_delivery_duration_seconds_count",
    "hookrelay_delivery_duration_seconds_sum",
];

const PROCESS: &[&str] = &[
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
];

fn instance(name: &str, id: u64, callback: &str) -> InstanceConfig {
    InstanceConfig::new(name, id, &App::new(&format!("key-{name}"))).callback(callback)
}

async fn scrape(d: &Daemon) -> Vec<Sample> {
    let all = samples(&d.metrics().await);
    assert!(!all.is_empty(), "no samples\n{}", d.logs());
    all
}

/// The samples named `name` whose `instance_name` is `instance`.
fn of<'a>(all: &'a [Sample], name: &str, instance: &str) -> Vec<&'a Sample> {
    all.iter()
        .filter(|s| s.name == name && s.label("instance_name") == Some(instance))
        .collect()
}

fn assert_no_instance_label(all: &[Sample]) {
    for s in all {
        assert!(
            s.labels.iter().all(|(k, _)| k != "instance"),
            "a label named `instance`: {s:?}"
        );
    }
}

/// Every series of `name`, at 0.
fn assert_zero_series(all: &[Sample], name: &str) {
    for series in PER_INSTANCE {
        let found = of(all, series, name);
        assert_eq!(
            found.len(),
            1,
            "{series}{{instance_name={name:?}}}: {found:?}"
        );
        assert_eq!(found[0].value, 0.0, "{found:?}");
    }
    let buckets = of(all, "hookrelay_delivery_duration_seconds_bucket", name);
    assert!(buckets.len() > 1, "no buckets for {name}");
    assert!(buckets.iter().all(|b| b.value == 0.0), "{buckets:?}");
    assert!(
        buckets.iter().any(|b| b.label("le") == Some("+Inf")),
        "{buckets:?}"
    );
    for outcome in OUTCOMES {
        let found: Vec<_> = of(all, "hookrelay_deliveries_total", name)
            .into_iter()
            .filter(|s| s.label("outcome") == Some(outcome))
            .collect();
        assert_eq!(found.len(), 1, "outcome {outcome} of {name}: {found:?}");
        assert_eq!(found[0].value, 0.0);
    }
}

/// No sample names `name` as its instance.
fn assert_gone(all: &[Sample], name: &str) {
    let left: Vec<_> = all
        .iter()
        .filter(|s| s.label("instance_name") == Some(name))
        .collect();
    assert!(left.is_empty(), "{name}'s series stayed: {left:?}");
}

fn value(all: &[Sample], name: &str, label: (&str, &str)) -> Option<f64> {
    all.iter()
        .find(|s| s.name == name && s.label(label.0) == Some(label.1))
        .map(|s| s.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_daemon_has_every_series_at_zero_labelled_instance_name() {
    let cb = FakeCallback::ok().await;
    let cfg = TestConfig::new()
        .instance(instance("alpha", 1, &cb.url()))
        .instance(instance("beta", 2, &cb.url()));
    let mut d = Daemon::start(&cfg).await;

    let all = scrape(&d).await;
    assert_no_instance_label(&all);
    assert_zero_series(&all, "alpha");
    assert_zero_series(&all, "beta");
    for result in INGEST_RESULTS {
        // Only the harness's readiness probes may have counted (as challenges).
        let v = value(&all, "hookrelay_ingest_requests_total", ("result", result));
        assert!(v.is_some(), "ingest result {result} missing");
        if *result != "challenge" {
            assert_eq!(v, Some(0.0), "ingest result {result}");
        }
    }
    for result in RELOAD_RESULTS {
        assert_eq!(
            value(&all, "hookrelay_config_reloads_total", ("result", result)),
            Some(0.0),
            "reload result {result}"
        );
    }
    for name in PROCESS {
        let found: Vec<_> = all.iter().filter(|s| s.name == *name).collect();
        assert_eq!(found.len(), 1, "{name}: {found:?}");
        assert!(found[0].value >= 0.0, "{found:?}");
    }
    let figure = |name: &str| all.iter().find(|s| s.name == name).map(|s| s.value);
    assert!(figure("process_resident_memory_bytes") > Some(0.0));
    assert!(figure("process_open_fds") > Some(2.0));
    assert!(figure("process_start_time_seconds") > Some(1.6e9));
    let build: Vec<_> = all
        .iter()
        .filter(|s| s.name == "hookrelay_build_info")
        .collect();
    assert_eq!(build.len(), 1, "{build:?}");
    assert_eq!(build[0].value, 1.0);
    assert_eq!(build[0].label("version"), Some(env!("CARGO_PKG_VERSION")));
    let commit = build[0].label("commit").unwrap_or_default().to_owned();
    assert!(!commit.is_empty(), "{build:?}");

    // `--version` names the same build.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .arg("--version")
        .output()
        .expect("running hookrelay --version");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("hookrelay {} ({commit})", env!("CARGO_PKG_VERSION"))
    );

    // A reload that removes beta and adds gamma.
    let changed = TestConfig {
        instances: Vec::new(),
        ..cfg.clone()
    }
    .instance(instance("alpha", 1, &cb.url()))
    .instance(instance("gamma", 3, &cb.url()));
    d.rewrite_config(&changed);
    d.sighup();
    wait_until(Duration::from_secs(10), "config_generation 2", || async {
        d.generation().await == Some(2)
    })
    .await;
    let all = scrape(&d).await;
    assert_no_instance_label(&all);
    assert_gone(&all, "beta");
    assert_zero_series(&all, "alpha");
    assert_zero_series(&all, "gamma");
    assert_eq!(
        value(&all, "hookrelay_config_reloads_total", ("result", "ok")),
        Some(1.0)
    );
    assert_eq!(
        value(&all, "hookrelay_config_reloads_total", ("result", "error")),
        Some(0.0)
    );
}
