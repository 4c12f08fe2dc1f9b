//! `hookrelay events list|show|replay` (docs/operations.md, "Seeing and steering events"): every
//! state listed and shown, the delivered history answering "which events of account Y reached
//! instance X between T1 and T2", the attempts of an event, a replay with the same `eventId`,
//! and the history's byte bound; each through the running daemon and on the stopped store.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::support::dropbox::{account_id, notification_body, post_notification};
use crate::support::{Action, App, Daemon, FakeCallback, InstanceConfig, TestConfig, wait_until};

const LIMIT: Duration = Duration::from_secs(20);

fn instance(name: &str, id: u64, app: &App, callback: &FakeCallback) -> InstanceConfig {
    InstanceConfig::new(name, id, app)
        .callback(&callback.url())
        .coalesce(false)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs `events ARGS… --json` and parses its output; fails the test on a non-zero exit.
async fn events_json(d: &Daemon, args: &[&str]) -> Value {
    let args: Vec<&str> = ["events"]
        .iter()
        .chain(args)
        .chain(&["--json"])
        .copied()
        .collect();
    let out = d.cli(&args).await;
    assert_eq!(
        out.code(),
        Some(0),
        "{args:?}: {}\n{}\n{}",
        out.stderr,
        out.stdout,
        d.logs()
    );
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", out.stdout))
}

/// The (id, state) of every event a listing shows.
fn states(list: &Value) -> Vec<(String, String, String)> {
    list["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events array: {list}"))
        .iter()
        .map(|e| {
            (
                e["instance"].as_str().unwrap_or_default().to_owned(),
                e["id"].as_str().unwrap_or_default().to_owned(),
                e["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

async fn notify(d: &Daemon, app: &App, account: &str) {
    let body = notification_body(&[account]);
    assert_eq!(
        post_notification(&d.ingest_url(), &app.secret, &body).await,
        200
    );
}

/// One instance per state: delivered, retrying (a 500, next retry in an hour), dead (410), held
/// (paused), pending (its consumer hangs: the event is in flight, still pending in the store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_is_listed_and_shown_running_and_stopped() {
    let app = App::new("app-key");
    let ok = FakeCallback::ok().await;
    let failing = FakeCallback::start([], Action::Status(500)).await;
    let gone = FakeCallback::start([], Action::Status(410)).await;
    let hanging = FakeCallback::start([], Action::Hang).await;
    let cfg = TestConfig::new()
        .instance(instance("ok", 1, &app, &ok))
        .instance(
            instance("failing", 2, &app, &failing)
                .delivery("retry_initial", "1h")
                .delivery("retry_max_interval", "2h"),
        )
        .instance(instance("gone", 3, &app, &gone))
        .instance(instance("paused", 4, &app, &ok).paused(true))
        .instance(instance("hanging", 5, &app, &hanging).delivery("timeout", "60s"));
    let mut d = Daemon::start(&cfg).await;
    let account = account_id();
    notify(&d, &app, &account).await;
    ok.wait_for(1, LIMIT).await;
    failing.wait_for(1, LIMIT).await;
    gone.wait_for(1, LIMIT).await;
    hanging.wait_for(1, LIMIT).await;
    let expected: BTreeSet<(String, String)> = [
        ("ok", "delivered"),
        ("failing", "retrying"),
        ("gone", "dead"),
        ("paused", "held"),
        ("hanging", "pending"),
    ]
    .iter()
    .map(|(i, s)| (i.to_string(), s.to_string()))
    .collect();
    wait_until(LIMIT, "every state listed", || {
        let (d, expected) = (&d, &expected);
        async move {
            let list = events_json(d, &["list"]).await;
            let got: BTreeSet<(String, String)> = states(&list)
                .into_iter()
                .map(|(instance, _, state)| (instance, state))
                .collect();
            got == *expected
        }
    })
    .await;
    let list = events_json(&d, &["list"]).await;
    let rows = list["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 5, "{list}");
    assert_eq!(list["next"], Value::Null);
    for row in &rows {
        assert_eq!(row["account"], account.as_str(), "{row}");
    }
    let id_of = |name: &str| {
        rows.iter()
            .find(|r| r["instance"] == name)
            .and_then(|r| r["id"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let delivered_id = ok.requests()[0].event_id();
    assert_eq!(id_of("ok"), delivered_id);

    // Each state alone.
    for (name, state) in &expected {
        let only = events_json(&d, &["list", "--state", state]).await;
        let got: Vec<String> = states(&only).into_iter().map(|(i, _, _)| i).collect();
        assert_eq!(got, vec![name.clone()], "--state {state}: {only}");
    }

    let shown = events_json(&d, &["show", &id_of("failing")]).await;
    assert_eq!(shown["event"]["state"], "retrying", "{shown}");
    assert_eq!(
        shown["attempts"].as_array().map(Vec::len),
        Some(1),
        "{shown}"
    );
    assert_eq!(shown["attempts"][0]["status"], 500, "{shown}");
    assert!(shown["event"]["due_ms"].as_u64() > Some(now_ms() + 30 * 60_000));
    assert_eq!(
        shown["envelope"]["message"]["eventId"],
        id_of("failing").as_str()
    );
    let shown = events_json(&d, &["show", &id_of("gone")]).await;
    assert_eq!(shown["event"]["state"], "dead", "{shown}");
    assert_eq!(shown["attempts"][0]["status"], 410, "{shown}");
    let shown = events_json(&d, &["show", &delivered_id]).await;
    assert_eq!(shown["event"]["state"], "delivered", "{shown}");
    assert_eq!(shown["attempts"][0]["status"], 200, "{shown}");
    let sent: Value = ok.requests()[0].json();
    assert_eq!(shown["envelope"], sent, "the envelope as sent");
    let shown = events_json(&d, &["show", &id_of("paused")]).await;
    assert_eq!(shown["event"]["state"], "held", "{shown}");
    assert_eq!(shown["attempts"], serde_json::json!([]));

    // Text output: one line per event, and an unknown id fails.
    let text = d.cli(&["events", "list"]).await;
    assert_eq!(text.code(), Some(0), "{}", text.stderr);
    assert_eq!(text.stdout.lines().count(), 6, "{}", text.stdout);
    let unknown = ulid::Ulid::generate().to_string();
    let missing = d.cli(&["events", "show", &unknown]).await;
    assert_eq!(missing.code(), Some(1), "{}", missing.stdout);
    assert!(missing.stderr.contains("no event"), "{}", missing.stderr);

    // The same from the stopped store (the hanging attempt never finished: still pending).
    d.stop().await;
    let offline = events_json(&d, &["list"]).await;
    let got: BTreeSet<(String, String)> = states(&offline)
        .into_iter()
        .map(|(instance, _, state)| (instance, state))
        .collect();
    assert_eq!(got, expected, "{offline}");
    let shown = events_json(&d, &["show", &delivered_id]).await;
    assert_eq!(shown["envelope"], sent, "offline: the envelope as sent");
}

/// "Which events of account Y reached instance X between T1 and T2, with which status?"
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_history_answers_which_events_of_an_account_arrived_when() {
    let app = App::new("app-key");
    let cb = FakeCallback::ok().await;
    let other = FakeCallback::ok().await;
    let cfg = TestConfig::new()
        .instance(instance("x", 1, &app, &cb))
        .instance(instance("z", 2, &app, &other));
    let mut d = Daemon::start(&cfg).await;
    let (y, w) = (account_id(), account_id());
    let mut sent = 0;
    let mut step = async |accounts: &[&str]| {
        for account in accounts {
            notify(&d, &app, account).await;
            sent += 1;
            cb.wait_for(sent, LIMIT).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    step(&[&y, &w]).await;
    let t1 = now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    step(&[&y, &w, &y]).await;
    let t2 = now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    step(&[&y, &w]).await;
    let requests = cb.requests();
    assert_eq!(requests.len(), 7);
    // Y's events accepted in [t1, t2): the 3rd and 5th notifications, newest first.
    let wanted: Vec<String> = vec![requests[4].event_id(), requests[2].event_id()];
    let (since, until) = (t1.to_string(), t2.to_string());
    let args = [
        "list",
        "--instance",
        "x",
        "--state",
        "delivered",
        "--account",
        &y,
        "--since",
        &since,
        "--until",
        &until,
    ];
    let answer = |list: &Value| -> Vec<String> {
        for row in list["events"].as_array().cloned().unwrap_or_default() {
            assert_eq!(row["state"], "delivered", "{row}");
            assert_eq!(row["account"], y.as_str(), "{row}");
            assert_eq!(row["last_status"], 200, "{row}");
            assert!(row["delivered_ms"].as_u64() >= row["accepted_ms"].as_u64());
        }
        states(list).into_iter().map(|(_, id, _)| id).collect()
    };
    let list = events_json(&d, &args).await;
    assert_eq!(answer(&list), wanted, "{list}");
    // Without the window: all four of Y's; without the account, all seven.
    let all_y = events_json(&d, &["list", "--state", "delivered", "--account", &y]).await;
    let mut y_ids: Vec<String> = [0, 2, 4, 5]
        .iter()
        .map(|&n| requests[n].event_id())
        .collect();
    y_ids.reverse();
    let got: Vec<String> = states(&all_y)
        .into_iter()
        .filter(|(i, _, _)| i == "x")
        .map(|(_, id, _)| id)
        .collect();
    assert_eq!(got, y_ids, "{all_y}");
    // Pages of two follow each other with the cursor, newest first, nothing lost or repeated.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let mut args = vec![
            "list",
            "--instance",
            "x",
            "--state",
            "delivered",
            "--limit",
            "2",
        ];
        if let Some(c) = &cursor {
            args.extend(["--cursor", c.as_str()]);
        }
        let page = events_json(&d, &args).await;
        paged.extend(states(&page).into_iter().map(|(_, id, _)| id));
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let all: Vec<String> = requests.iter().rev().map(|r| r.event_id()).collect();
    assert_eq!(paged, all);

    d.stop().await;
    let list = events_json(&d, &args).await;
    assert_eq!(answer(&list), wanted, "offline: {list}");
}

/// Failed twice, then delivered: three attempts shown; replayed, it arrives again with the same
/// `eventId`, through the daemon and from the stopped store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_are_shown_and_a_replay_sends_the_same_event_id() {
    let app = App::new("app-key");
    let cb = FakeCallback::start(
        [Action::Status(500), Action::Status(503)],
        Action::Status(200),
    )
    .await;
    let mut d = Daemon::start(&TestConfig::new().instance(instance("x", 1, &app, &cb))).await;
    notify(&d, &app, &account_id()).await;
    let requests = cb.wait_for(3, LIMIT).await;
    let id = requests[0].event_id();
    wait_until(LIMIT, "in the history", || {
        let (d, id) = (&d, id.clone());
        async move {
            let shown = events_json(d, &["show", &id]).await;
            shown["event"]["state"] == "delivered"
        }
    })
    .await;
    let shown = events_json(&d, &["show", &id]).await;
    let statuses: Vec<Value> = shown["attempts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|a| a["status"].clone())
        .collect();
    assert_eq!(
        statuses,
        vec![Value::from(500), Value::from(503), Value::from(200)],
        "{shown}"
    );
    assert_eq!(shown["envelope"]["message"]["eventId"], id.as_str());
    let text = d.cli(&["events", "show", &id]).await;
    assert_eq!(text.code(), Some(0), "{}", text.stderr);
    assert!(
        text.stdout.contains("500") && text.stdout.contains("503"),
        "{}",
        text.stdout
    );

    let replayed = d.cli(&["events", "replay", "--id", &id]).await;
    assert_eq!(replayed.code(), Some(0), "{}", replayed.stderr);
    assert!(replayed.stdout.contains("queued 1"), "{}", replayed.stdout);
    let again = cb.wait_for(4, LIMIT).await;
    assert_eq!(again[3].event_id(), id, "the replay's eventId");
    assert_eq!(again[3].message()["raw"], requests[2].message()["raw"]);

    // Offline: queued in the stopped store, sent once the daemon is back.
    wait_until(LIMIT, "the replayed event back in the history", || {
        let (d, id) = (&d, id.clone());
        async move { events_json(d, &["show", &id]).await["event"]["state"] == "delivered" }
    })
    .await;
    d.stop().await;
    let replayed = d.cli(&["events", "replay", "--id", &id]).await;
    assert_eq!(replayed.code(), Some(0), "{}", replayed.stderr);
    assert!(replayed.stdout.contains("queued 1"), "{}", replayed.stdout);
    let shown = events_json(&d, &["show", &id]).await;
    assert_eq!(shown["event"]["state"], "pending", "{shown}");
    d.restart().await;
    let fifth = cb.wait_for(5, LIMIT).await;
    assert_eq!(fifth[4].event_id(), id);
    // An id that is not in the history fails, naming it.
    let unknown = ulid::Ulid::generate().to_string();
    let missing = d.cli(&["events", "replay", "--id", &unknown]).await;
    assert_eq!(missing.code(), Some(1));
    assert!(missing.stderr.contains(&unknown), "{}", missing.stderr);
}

/// Past `history_max_bytes` the oldest records go; the newest stay, and the counter equals the
/// records' sum, also after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_keeps_the_newest_within_its_bytes_and_counts_them_exactly() {
    let app = App::new("app-key");
    let cb = FakeCallback::ok().await;
    let cfg = TestConfig::new()
        .instance(instance("x", 1, &app, &cb).delivery("history_max_bytes", "4KiB"));
    let mut d = Daemon::start(&cfg).await;
    let total = 20;
    for n in 0..total {
        notify(&d, &app, &account_id()).await;
        cb.wait_for(n + 1, LIMIT).await;
    }
    // The last delivery's history write follows its 2xx: wait until it is listed.
    let last = cb.requests()[total - 1].event_id();
    wait_until(LIMIT, "the last delivery listed", || {
        let (d, last) = (&d, last.clone());
        async move {
            let list = events_json(d, &["list", "--state", "delivered", "--limit", "1"]).await;
            states(&list).first().map(|(_, id, _)| id.clone()) == Some(last)
        }
    })
    .await;
    let list = events_json(&d, &["list", "--state", "delivered", "--limit", "1000"]).await;
    let kept: Vec<String> = states(&list).into_iter().map(|(_, id, _)| id).collect();
    assert!(
        kept.len() > 1 && kept.len() < total,
        "{} of {total} kept",
        kept.len()
    );
    let newest: Vec<String> = cb.requests()[total - kept.len()..]
        .iter()
        .rev()
        .map(|r| r.event_id())
        .collect();
    assert_eq!(kept, newest, "the newest are kept");

    d.stop().await;
    let audit = audit_of(&d);
    assert_eq!(audit.records, kept.len() as u64);
    assert!(audit.is_sound(), "{audit:?}");
    assert!(audit.bytes <= 4096, "{audit:?}");
    println!(
        "history: {} bytes per delivered notify event",
        audit.bytes / audit.records.max(1)
    );
    d.restart().await;
    notify(&d, &app, &account_id()).await;
    cb.wait_for(total + 1, LIMIT).await;
    let newest = cb.requests()[total].event_id();
    wait_until(LIMIT, "the newest delivery listed", || {
        let (d, newest) = (&d, newest.clone());
        async move {
            let list = events_json(d, &["list", "--state", "delivered", "--limit", "1"]).await;
            states(&list).first().map(|(_, id, _)| id.clone()) == Some(newest)
        }
    })
    .await;
    d.stop().await;
    let audit = audit_of(&d);
    assert_eq!(audit.counted_events, audit.records, "{audit:?}");
    assert_eq!(
        audit.counted_bytes, audit.bytes,
        "after a restart: {audit:?}"
    );
    assert!(audit.bytes <= 4096, "{audit:?}");
}

fn audit_of(d: &Daemon) -> hookrelay::store::HistoryAudit {
    let audits = hookrelay::store::audit_history(&d.store_path()).expect("auditing the history");
    audits
        .into_iter()
        .find(|a| a.instance == "x")
        .expect("instance x")
}
