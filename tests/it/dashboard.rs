//! The shipped monitoring files name only metrics hookrelay exports: every metric name in the
//! `expr` fields of deploy/grafana/hookrelay.json and in the `expr:` lines of
//! deploy/prometheus/alerts.yml is a sample name (`_bucket`, `_total` and all) of a fresh
//! daemon's `/metrics`, with a plain and a change-events instance configured. The dashboard is
//! valid JSON with the `datasource` and `instance_name` variables docs/metrics.md describes.
//! (The rules' PromQL and behaviour are checked by `deploy/prometheus/check.sh`, with promtool.)

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use crate::support::dropbox::account_id;
use crate::support::fake_api::{FakeDropboxApi, REFRESH_TOKEN};
use crate::support::metrics::samples;
use crate::support::{App, Daemon, FakeCallback, InstanceConfig, TestConfig};

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The metric names in `expr`: identifiers starting `hookrelay_` or `process_`, not preceded
/// by an identifier character.
fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut previous: Option<char> = None;
    let mut rest = expr;
    while let Some(c) = rest.chars().next() {
        let at_start = !previous.is_some_and(is_ident);
        if at_start && (rest.starts_with("hookrelay_") || rest.starts_with("process_")) {
            let end = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
            into.insert(rest[..end].to_owned());
            previous = rest[..end].chars().last();
            rest = &rest[end..];
        } else {
            previous = Some(c);
            rest = &rest[c.len_utf8()..];
        }
    }
}

/// Every `expr` string in a Grafana dashboard, panels nested in rows included.
fn exprs(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(e)) => into.push(e.clone()),
                    _ => exprs(v, into),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| exprs(v, into)),
        _ => {}
    }
}

fn variable<'a>(dashboard: &'a Value, name: &str) -> &'a Value {
    dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no template variable {name}"))
}

#[test]
fn the_dashboard_is_json_with_its_variables() {
    let dashboard: Value =
        serde_json::from_str(&read("deploy/grafana/hookrelay.json")).expect("valid JSON");
    assert!(dashboard["schemaVersion"].as_u64() >= Some(36));
    let ds = variable(&dashboard, "datasource");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let instance = variable(&dashboard, "instance_name");
    assert_eq!(instance["type"], "query");
    assert_eq!(
        instance["query"]["query"],
        "label_values(hookrelay_queue_depth, instance_name)"
    );
    // Every panel and target queries through the variable.
    let mut found = Vec::new();
    exprs(&dashboard, &mut found);
    assert!(found.len() >= 10, "{found:?}");
    for panel in dashboard["panels"].as_array().expect("panels") {
        if panel["type"] != "row" {
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "{panel}");
        }
    }
}

#[test]
fn metric_names_are_scanned_as_identifiers() {
    let mut names = BTreeSet::new();
    metric_names(
        "histogram_quantile(0.99, sum by (le) (rate(hookrelay_delivery_duration_seconds_bucket{job=\"hookrelay\"}[5m]))) / process_open_fds + my_process_x",
        &mut names,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "hookrelay_delivery_duration_seconds_bucket",
            "process_open_fds"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_alerts_name_only_exported_metrics() {
    let mut dashboard_names = BTreeSet::new();
    let dashboard: Value =
        serde_json::from_str(&read("deploy/grafana/hookrelay.json")).expect("valid JSON");
    let mut found = Vec::new();
    exprs(&dashboard, &mut found);
    for expr in &found {
        metric_names(expr, &mut dashboard_names);
    }
    let mut alert_names = BTreeSet::new();
    let rules = read("deploy/prometheus/alerts.yml");
    let expr_lines: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("expr:"))
        .collect();
    assert!(expr_lines.len() >= 8, "{expr_lines:?}");
    for expr in &expr_lines {
        metric_names(expr, &mut alert_names);
    }
    assert!(dashboard_names.len() >= 10, "{dashboard_names:?}");
    assert!(alert_names.len() >= 7, "{alert_names:?}");

    // A plain instance and a change-events one, which alone has hookrelay_changes_*.
    let cb = FakeCallback::ok().await;
    let account = account_id();
    let api = FakeDropboxApi::start(&account).await;
    let cfg = TestConfig::new()
        .instance(InstanceConfig::new("acme", 1, &App::new("key-acme")).callback(&cb.url()))
        .instance(
            InstanceConfig::new("files", 31, &App::new("app-changes"))
                .raw("events = \"changes\"")
                .accounts(&[&account])
                .callback(&cb.url())
                .signature_key("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
                .configuration("oauth.refresh_token", REFRESH_TOKEN),
        )
        .raw(&api.toml());
    let d = Daemon::start(&cfg).await;
    let exported: BTreeSet<String> = samples(&d.metrics().await)
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert!(!exported.is_empty(), "no samples\n{}", d.logs());

    for (file, names) in [
        ("deploy/grafana/hookrelay.json", &dashboard_names),
        ("deploy/prometheus/alerts.yml", &alert_names),
    ] {
        let missing: Vec<_> = names.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "{file} names metrics a fresh daemon does not export: {missing:?}\nexported: {exported:?}"
        );
    }
}
