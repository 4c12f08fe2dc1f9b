//! Operator alerts (`[alerts]`, docs/operations.md): dead letters gathered into one alert with
//! their count, `needs_authorize` and `store_full` once per episode, both formats, signatures
//! checked; an alert URL that fails is retried while deliveries go on; a queued alert survives
//! `kill -9`.

use std::time::Duration;

use serde_json::Value;

use crate::support::callback::verify_signatures;
use crate::support::dropbox::{account_id, notification_body, post_notification};
use crate::support::fake_api::{FakeDropboxApi, REFRESH_TOKEN};
use crate::support::{
    Action, App, Daemon, FakeCallback, InstanceConfig, Recorded, TestConfig, wait_until,
};

const WAIT: Duration = Duration::from_secs(30);
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The `[alerts]` table sending to `sink` in `format`, signed with `key`, for `on`.
fn alerts_table(sink: &FakeCallback, format: &str, key: Option<&str>, on: &[&str]) -> String {
    let mut table = format!(
        "[alerts]\nurl = \"{}\"\nformat = \"{format}\"\non = [{}]\n",
        sink.url(),
        on.iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(key) = key {
        table.push_str(&format!("signature_key = \"{key}\"\n"));
    }
    table
}

/// The `alert` object of a `json` alert.
fn alert_of(request: &Recorded) -> Value {
    let body: Value = serde_json::from_slice(&request.body)
        .unwrap_or_else(|e| panic!("an alert body is not JSON ({e}): {:?}", request.body));
    body["alert"].clone()
}

/// Posts one notification for `accounts` and asserts it was taken.
async fn notify(d: &Daemon, app: &App, accounts: &[&str]) {
    let status =
        post_notification(&d.ingest_url(), &app.secret, &notification_body(accounts)).await;
    assert_eq!(status, 200, "{}", d.logs());
}

/// What an alert says, whatever its format: the `json` alert object, or for `slack` an object
/// with only the `summary` (its `text`), after checking that the body holds nothing else.
fn said(request: &Recorded, format: &str) -> Value {
    let body: Value = serde_json::from_slice(&request.body)
        .unwrap_or_else(|e| panic!("an alert body is not JSON ({e}): {:?}", request.body));
    match format {
        "slack" => {
            assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{body}");
            serde_json::json!({ "summary": body["text"] })
        }
        _ => body["alert"].clone(),
    }
}

/// Three events of one notification dead-letter at once (the consumer answers 410): one alert
/// carries the count, signed; a later dead letter waits for the instance's quiet minute.
async fn dead_letters_make_one_alert_with_their_count(format: &str) {
    let app = App::new("app-alerts");
    let consumer = FakeCallback::start([], Action::Status(410)).await;
    let sink = FakeCallback::ok().await;
    let cfg = TestConfig::new()
        .instance(InstanceConfig::new("acme-dropbox", 1, &app).callback(&consumer.url()))
        .raw(&alerts_table(&sink, format, Some(WHSEC), &["dead_letter"]));
    let d = Daemon::start(&cfg).await;
    let accounts = [account_id(), account_id(), account_id()];
    let accounts: Vec<&str> = accounts.iter().map(String::as_str).collect();
    notify(&d, &app, &accounts).await;
    consumer.wait_for(3, WAIT).await;

    let alerts = sink.wait_for(1, WAIT).await;
    verify_signatures(&alerts[0], WHSEC).unwrap_or_else(|e| panic!("{e}"));
    let alert = said(&alerts[0], format);
    assert_eq!(
        alert["summary"],
        "hookrelay: 3 events of acme-dropbox dead-lettered (last: HTTP 410 Gone)"
    );
    if format == "json" {
        assert_eq!(alert["type"], "dead_letter", "{alert}");
        assert_eq!(alert["instance"], "acme-dropbox");
        assert_eq!(alert["detail"]["count"], 3, "{alert}");
        assert_eq!(alert["detail"]["last_status"], 410);
        let account = alert["detail"]["account"].as_str().unwrap_or("");
        assert!(accounts.contains(&account), "{alert}");
        assert!(alert["at"].as_str().is_some_and(|at| at.ends_with('Z')));
        assert_eq!(
            alerts[0].header("webhook-id"),
            alert["id"].as_str(),
            "the alert id is its webhook id"
        );
    }

    // A later dead letter is alerted on its own, a minute after the first alert at the
    // earliest: until then nothing more arrives.
    notify(&d, &app, &accounts[..1]).await;
    consumer.wait_for(4, WAIT).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(sink.count(), 1, "{}", d.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_make_one_json_alert_with_their_count() {
    dead_letters_make_one_alert_with_their_count("json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_make_one_slack_alert_with_their_count() {
    dead_letters_make_one_alert_with_their_count("slack").await;
}

/// Dropbox refuses a change-events instance's refresh token: one alert, not one per walk.
async fn a_refused_grant_is_alerted_once(format: &str) {
    let app = App::new("app-alerts-changes");
    let account = account_id();
    let api = FakeDropboxApi::start(&account).await;
    api.set_account_in_token(true);
    let consumer = FakeCallback::ok().await;
    let sink = FakeCallback::ok().await;
    let instance = InstanceConfig::new("files", 31, &app)
        .raw("events = \"changes\"")
        .accounts(&[&account])
        .callback(&consumer.url())
        .configuration("oauth.refresh_token", REFRESH_TOKEN);
    let cfg = TestConfig::new()
        .instance(instance)
        .raw(&api.toml())
        .raw(&alerts_table(
            &sink,
            format,
            Some(WHSEC),
            &["needs_authorize"],
        ));
    let d = Daemon::start(&cfg).await;
    wait_until(WAIT, "the first cursor", || async {
        api.calls("2/files/list_folder/get_latest_cursor") >= 1
    })
    .await;
    api.revoke_refresh_token(true);
    api.expire_token();
    api.write_file("/a.txt");
    notify(&d, &app, &[&account]).await;
    let alerts = sink.wait_for(1, WAIT).await;
    verify_signatures(&alerts[0], WHSEC).unwrap_or_else(|e| panic!("{e}"));
    let alert = said(&alerts[0], format);
    let summary = alert["summary"].as_str().unwrap_or_default();
    assert!(
        summary.starts_with("hookrelay: files needs `hookrelay authorize`"),
        "{summary}"
    );
    if format == "json" {
        assert_eq!(alert["type"], "needs_authorize", "{alert}");
        assert_eq!(alert["instance"], "files");
    }

    // Refused again on the next walk: the same episode, no second alert.
    let refreshes = api.calls("oauth2/token");
    notify(&d, &app, &[&account]).await;
    wait_until(WAIT, "another refused refresh", || async {
        api.calls("oauth2/token") > refreshes
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sink.count(), 1, "{}", d.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_grant_is_alerted_once_in_json() {
    a_refused_grant_is_alerted_once("json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_grant_is_alerted_once_in_slack() {
    a_refused_grant_is_alerted_once("slack").await;
}

/// A tiny `storage.max_bytes`: the first notification is taken, the next ones refused with
/// 503, and the episode gets one alert (signed with a plain key: no Standard Webhooks header).
async fn a_full_store_is_alerted_once_per_episode(format: &str) {
    let app = App::new("app-alerts-full");
    let consumer = FakeCallback::ok().await;
    let sink = FakeCallback::ok().await;
    let key = "plain-alert-key";
    let cfg = TestConfig::new()
        .storage("max_bytes", "1B")
        .instance(
            InstanceConfig::new("acme", 1, &app)
                .callback(&consumer.url())
                .paused(true),
        )
        .raw(&alerts_table(&sink, format, Some(key), &["store_full"]));
    let d = Daemon::start(&cfg).await;
    let account = account_id();
    notify(&d, &app, &[&account]).await;
    for _ in 0..3 {
        let body = notification_body(&[&account]);
        let status = post_notification(&d.ingest_url(), &app.secret, &body).await;
        assert_eq!(status, 503, "{}", d.logs());
    }
    let alerts = sink.wait_for(1, WAIT).await;
    verify_signatures(&alerts[0], key).unwrap_or_else(|e| panic!("{e}"));
    let alert = said(&alerts[0], format);
    let summary = alert["summary"].as_str().unwrap_or_default();
    assert!(
        summary.starts_with("hookrelay: the store is full ("),
        "{summary}"
    );
    if format == "json" {
        assert_eq!(alert["type"], "store_full", "{alert}");
        assert_eq!(alert["instance"], Value::Null);
        assert_eq!(alert["detail"]["max_bytes"], 1);
        assert!(alert["detail"]["bytes"].as_u64().is_some_and(|b| b >= 1));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sink.count(), 1, "one alert for the episode: {}", d.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_is_alerted_once_per_episode_in_json() {
    a_full_store_is_alerted_once_per_episode("json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_is_alerted_once_per_episode_in_slack() {
    a_full_store_is_alerted_once_per_episode("slack").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_switched_on_by_a_reload_are_sent() {
    let app = App::new("app-alerts-reload");
    let consumer = FakeCallback::start([], Action::Status(410)).await;
    let sink = FakeCallback::ok().await;
    let off =
        TestConfig::new().instance(InstanceConfig::new("acme", 1, &app).callback(&consumer.url()));
    let mut d = Daemon::start(&off).await;
    let on = off
        .clone()
        .raw(&alerts_table(&sink, "json", None, &["dead_letter"]));
    d.rewrite_config(&on);
    d.sighup();
    wait_until(WAIT, "the reload", || async {
        d.generation().await == Some(2)
    })
    .await;
    notify(&d, &app, &[&account_id()]).await;
    let alerts = sink.wait_for(1, WAIT).await;
    let alert = alert_of(&alerts[0]);
    assert_eq!(alert["type"], "dead_letter", "{alert}");
    assert_eq!(
        alerts[0].header("Elements-Webhook-Signature"),
        None,
        "no key, no signature"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_alert_url_is_retried_while_deliveries_go_on() {
    let app = App::new("app-alerts-retry");
    let refusing = FakeCallback::start([], Action::Status(410)).await;
    let consumer = FakeCallback::ok().await;
    let sink = FakeCallback::start(
        [Action::Status(500), Action::Status(500)],
        Action::Status(200),
    )
    .await;
    let dead_account = account_id();
    let cfg = TestConfig::new()
        .instance(
            InstanceConfig::new("refusing", 1, &app)
                .accounts(&[&dead_account])
                .callback(&refusing.url()),
        )
        .instance(InstanceConfig::new("live", 2, &app).callback(&consumer.url()))
        .raw(&alerts_table(&sink, "json", Some(WHSEC), &["dead_letter"]));
    let d = Daemon::start(&cfg).await;
    notify(&d, &app, &[&dead_account]).await;
    refusing.wait_for(1, WAIT).await;
    // The first attempt of the alert fails; deliveries to the other instance go on meanwhile.
    sink.wait_for(1, WAIT).await;
    let accounts: Vec<String> = (0..5).map(|_| account_id()).collect();
    for account in &accounts {
        notify(&d, &app, &[account]).await;
    }
    let delivered = consumer
        .wait_until(WAIT, "the live instance's events", |r| {
            r.iter().filter(|r| r.answered == Some(200)).count() >= 6
        })
        .await;
    assert!(delivered.len() >= 6);

    let alerts = sink
        .wait_until(WAIT, "the alert taken", |r| {
            r.iter().any(|r| r.answered == Some(200))
        })
        .await;
    assert_eq!(alerts.len(), 3, "two 500s, then the 200: {}", d.logs());
    let ids: Vec<Option<&str>> = alerts.iter().map(|r| r.header("webhook-id")).collect();
    assert!(
        ids[0].is_some() && ids.iter().all(|id| *id == ids[0]),
        "{ids:?}"
    );
    for alert in &alerts {
        verify_signatures(alert, WHSEC).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(alert_of(alert)["detail"]["count"], 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_alert_survives_kill_9_and_is_sent_after_restart() {
    let app = App::new("app-alerts-crash");
    let consumer = FakeCallback::start([], Action::Status(410)).await;
    let sink = FakeCallback::start([], Action::Status(500)).await;
    let cfg = TestConfig::new()
        .delivery("retry_initial", "1s")
        .instance(InstanceConfig::new("acme", 1, &app).callback(&consumer.url()))
        .raw(&alerts_table(&sink, "json", Some(WHSEC), &["dead_letter"]));
    let mut d = Daemon::start(&cfg).await;
    notify(&d, &app, &[&account_id()]).await;
    let first = sink.wait_for(1, WAIT).await;
    let id = first[0].header("webhook-id").map(str::to_owned);
    assert!(id.is_some());
    d.kill9();
    sink.set_plan([], Action::Status(200));
    d.restart().await;
    let alerts = sink
        .wait_until(WAIT, "the alert after the restart", |r| {
            r.iter().any(|r| r.answered == Some(200))
        })
        .await;
    let sent: Vec<&Recorded> = alerts.iter().filter(|r| r.answered == Some(200)).collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].header("webhook-id").map(str::to_owned), id);
    assert_eq!(alert_of(sent[0])["type"], "dead_letter");
    verify_signatures(sent[0], WHSEC).unwrap_or_else(|e| panic!("{e}"));
}
