//! Outage mode seen from the operator's side: its beginning and end raise the `outage` and
//! `recovered` alerts (both formats), `retry` ends the wait for the next probe at once, and
//! `events list` shows the outage's waiting events as `held`.

use std::time::Duration;

use serde_json::Value;

use crate::support::dropbox::{account_id, notify_each};
use crate::support::http::get;
use crate::support::{Action, App, Daemon, FakeCallback, InstanceConfig, TestConfig, wait_until};

const WAIT: Duration = Duration::from_secs(30);
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// An instance that enters an outage after 1 s of failures and probes every `probe`.
fn instance(app: &App, callback: &FakeCallback, probe: &str) -> InstanceConfig {
    InstanceConfig::new("acme", 1, app)
        .callback(&callback.url())
        .coalesce(false)
        .delivery("retry_initial", "200ms")
        .delivery("outage_after", "1s")
        .delivery("probe_interval", probe)
}

/// The instance's `state` in `/admin/status`.
async fn state(d: &Daemon) -> String {
    let r = get(&format!("{}/admin/status", d.admin_url())).await;
    let list: Vec<Value> = serde_json::from_slice(&r.body).unwrap_or_default();
    list.iter()
        .find(|s| s["instance"] == "acme")
        .and_then(|s| s["state"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// What an alert says: the `json` alert object, or `{"summary": text}` for `slack`.
fn said(body: &[u8], format: &str) -> Value {
    let body: Value = serde_json::from_slice(body).expect("an alert body is JSON");
    match format {
        "slack" => serde_json::json!({ "summary": body["text"] }),
        _ => body["alert"].clone(),
    }
}

async fn an_outage_and_its_end_are_alerted(format: &str) {
    let app = App::new("app-outage-alerts");
    let consumer = FakeCallback::start([], Action::Status(503)).await;
    let sink = FakeCallback::ok().await;
    let cfg = TestConfig::new()
        .instance(instance(&app, &consumer, "1s"))
        .raw(&format!(
            "[alerts]\nurl = \"{}\"\nformat = \"{format}\"\nsignature_key = \"{WHSEC}\"\n\
             on = [\"outage\", \"recovered\"]\n",
            sink.url()
        ));
    let d = Daemon::start(&cfg).await;
    notify_each(&d.ingest_url(), &app, &[account_id()]).await;

    let alerts = sink.wait_for(1, WAIT).await;
    let began = said(&alerts[0].body, format);
    let summary = began["summary"].as_str().unwrap_or_default();
    assert!(summary.contains("acme"), "{began}");
    if format == "json" {
        assert_eq!(began["type"], "outage", "{began}");
        assert_eq!(began["instance"], "acme", "{began}");
        crate::support::callback::verify_signatures(&alerts[0], WHSEC)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(state(&d).await, "outage");

    consumer.set_plan([], Action::Status(200));
    let alerts = sink.wait_for(2, WAIT).await;
    let ended = said(&alerts[1].body, format);
    assert!(
        ended["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("acme"),
        "{ended}"
    );
    if format == "json" {
        assert_eq!(ended["type"], "recovered", "{ended}");
        assert_eq!(ended["instance"], "acme", "{ended}");
    }
    assert_ne!(began["summary"], ended["summary"]);
    wait_until(WAIT, "the instance active again", || async {
        state(&d).await == "active"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_and_its_end_are_alerted_in_json() {
    an_outage_and_its_end_are_alerted("json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_and_its_end_are_alerted_in_slack() {
    an_outage_and_its_end_are_alerted("slack").await;
}

/// With a probe an hour apart, a consumer back up would wait that hour; `retry` sends the probe
/// now, and its 2xx ends the outage. Meanwhile `events list` calls the waiting events `held`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_ends_the_wait_for_the_next_probe() {
    let app = App::new("app-outage-retry");
    let consumer = FakeCallback::start([], Action::Status(503)).await;
    let cfg = TestConfig::new().instance(instance(&app, &consumer, "1h"));
    let d = Daemon::start(&cfg).await;
    notify_each(&d.ingest_url(), &app, &[account_id(), account_id()]).await;
    wait_until(WAIT, "an outage", || async { state(&d).await == "outage" }).await;

    let listed = d
        .cli(&["events", "list", "--instance", "acme", "--json"])
        .await;
    assert_eq!(listed.status.code(), Some(0), "{}", listed.stderr);
    let listed: Value = serde_json::from_str(&listed.stdout).expect("events list --json");
    let states: Vec<&str> = listed["events"]
        .as_array()
        .map(|events| events.iter().filter_map(|e| e["state"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(states, ["held", "held"], "{listed}");

    consumer.set_plan([], Action::Status(200));
    let before = consumer.count();
    // The next probe is an hour away: nothing goes out by itself.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(consumer.count(), before, "a request before `retry`");

    let retried = d.cli(&["retry", "--instance", "acme"]).await;
    assert_eq!(retried.status.code(), Some(0), "{}", retried.stderr);
    wait_until(WAIT, "both events delivered after `retry`", || async {
        consumer
            .requests()
            .iter()
            .filter(|r| r.answered == Some(200))
            .count()
            == 2
    })
    .await;
    wait_until(WAIT, "the instance active again", || async {
        state(&d).await == "active"
    })
    .await;
}
