//! `hookrelay retry` (docs/operations.md): an event waiting an hour for its retry is delivered
//! right after `retry --instance`, and not before; `--id` takes only the events it names, keeps
//! their attempt counts and reports unknown ids; with the daemon stopped, the store is changed
//! directly and the event goes out right after the next start.

use std::time::Duration;

use serde_json::Value;

use crate::support::dropbox::{account_id, notify_each};
use crate::support::http::{client, get, send};
use crate::support::store::{dead, pending};
use crate::support::{Action, App, Daemon, FakeCallback, InstanceConfig, TestConfig, wait_until};

const WAIT: Duration = Duration::from_secs(20);
/// An id no event has.
const UNKNOWN_ID: &str = "01JDQ8ZZZZZZZZZZZZZZZZZZZZ";

/// An instance whose retries wait an hour: nothing but `retry` makes them due in a test.
fn waiting_instance(app: &App, cb: &FakeCallback) -> InstanceConfig {
    InstanceConfig::new("acme", 1, app)
        .callback(&cb.url())
        .coalesce(false)
        .delivery("retry_initial", "1h")
        .delivery("retry_max_interval", "2h")
}

/// `in_retry` and `dead_lettered` of instance `acme`, from the admin API.
async fn figures(d: &Daemon) -> (u64, u64) {
    let reply = get(&format!("{}/admin/status", d.admin_url())).await;
    let all: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    let acme = all
        .as_array()
        .and_then(|a| a.iter().find(|s| s["instance"] == "acme"))
        .cloned()
        .unwrap_or(Value::Null);
    (
        acme["in_retry"].as_u64().unwrap_or(0),
        acme["dead_lettered"].as_u64().unwrap_or(0),
    )
}

async fn wait_in_retry(d: &Daemon, n: u64) {
    wait_until(WAIT, &format!("{n} event(s) in retry"), || async {
        figures(d).await.0 == n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_by_instance_delivers_an_event_waiting_an_hour_at_once() {
    let app = App::new("app-retry");
    let cb = FakeCallback::start([Action::Status(500)], Action::Status(200)).await;
    let d = Daemon::start(&TestConfig::new().instance(waiting_instance(&app, &cb))).await;
    notify_each(&d.ingest_url(), &app, &[account_id()]).await;
    cb.wait_for(1, WAIT).await;
    wait_in_retry(&d, 1).await;
    // Waiting for its retry an hour from now: not delivered before `retry`.
    assert_eq!(cb.count(), 1);

    let out = d.cli(&["retry", "--instance", "acme"]).await;
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("1 waiting event(s) due now"), "{out:?}");
    let reqs = cb.wait_for(2, WAIT).await;
    assert_eq!(reqs[1].answered, Some(200));
    assert_eq!(reqs[1].event_id(), reqs[0].event_id());
    wait_in_retry(&d, 0).await;
    assert_eq!(cb.count(), 2, "{}", d.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_by_id_takes_only_that_event_keeps_its_attempts_and_reports_unknown_ids() {
    let app = App::new("app-retry-id");
    // Every attempt fails; two attempts at most: a retried event whose count was kept is
    // dead-lettered by its second failure (one whose count restarted would wait again).
    let cb = FakeCallback::start([], Action::Status(500)).await;
    let instance = waiting_instance(&app, &cb).delivery("max_attempts", 2_i64);
    let d = Daemon::start(&TestConfig::new().instance(instance)).await;
    notify_each(&d.ingest_url(), &app, &[account_id(), account_id()]).await;
    let reqs = cb.wait_for(2, WAIT).await;
    wait_in_retry(&d, 2).await;
    let (chosen, other) = (reqs[0].event_id(), reqs[1].event_id());

    let out = d.cli(&["retry", "--id", &chosen, UNKNOWN_ID]).await;
    assert_eq!(
        out.code(),
        Some(1),
        "an unknown id fails the command: {out:?}"
    );
    assert!(out.stdout.contains("1 waiting event(s) due now"), "{out:?}");
    assert!(out.stderr.contains(UNKNOWN_ID), "{out:?}");

    wait_until(WAIT, "the retried event dead-lettered", || async {
        figures(&d).await == (1, 1)
    })
    .await;
    let attempts = |id: &str| cb.requests().iter().filter(|r| r.event_id() == id).count();
    assert_eq!((attempts(&chosen), attempts(&other)), (2, 1));

    // The admin API answers the same, naming the unknown id.
    let reply = send(
        client()
            .post(format!("{}/admin/retry", d.admin_url()))
            .header("content-type", "application/json")
            .body(format!(r#"{{"ids": ["{UNKNOWN_ID}"]}}"#)),
    )
    .await
    .unwrap_or_else(|e| panic!("POST /admin/retry: {e}"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    assert_eq!(answer["count"], 0, "{answer}");
    assert_eq!(
        answer["not_found"],
        serde_json::json!([UNKNOWN_ID]),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_with_the_daemon_stopped_makes_the_event_due_at_the_next_start() {
    let app = App::new("app-retry-offline");
    let cb = FakeCallback::start([Action::Status(500)], Action::Status(200)).await;
    let mut d = Daemon::start(&TestConfig::new().instance(waiting_instance(&app, &cb))).await;
    notify_each(&d.ingest_url(), &app, &[account_id()]).await;
    cb.wait_for(1, WAIT).await;
    wait_in_retry(&d, 1).await;
    d.stop().await;
    let before = pending(&d.store_path());
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].attempts, 1);

    let out = d.cli(&["retry", "--all"]).await;
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(
        out.stdout
            .contains("1 waiting event(s) due now; they are delivered when the daemon starts"),
        "{out:?}"
    );
    let after = pending(&d.store_path());
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].attempts, 1, "the attempt count is kept");
    assert_eq!(cb.count(), 1);

    d.restart().await;
    let reqs = cb.wait_for(2, WAIT).await;
    assert_eq!(reqs[1].answered, Some(200));
    assert_eq!(reqs[1].event_id(), reqs[0].event_id());
    d.stop().await;
    assert!(pending(&d.store_path()).is_empty());
    assert!(dead(&d.store_path()).is_empty());
}
