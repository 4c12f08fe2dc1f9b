//! Outage mode and instance-wide `Retry-After` (docs/operations.md, docs/protocol.md): a
//! consumer down for longer than `max_age` loses nothing to dead letters and gets one probe per
//! `probe_interval`; the outage shows in `status` and `/metrics`, survives `kill -9`, and ends
//! at the first 2xx; a 410 still dead-letters; a `Retry-After` holds the whole instance and
//! does not use up an attempt.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::dropbox::{account_id, notify_each};
use crate::support::http::get;
use crate::support::store::{dead, pending};
use crate::support::{Action, App, Daemon, FakeCallback, InstanceConfig, Recorded, TestConfig};

/// How long a test waits for anything at most.
const BOUND: Duration = Duration::from_secs(30);
/// How long the consumer stays down once the outage began: longer than `max_age` (5 s).
const DOWN: Duration = Duration::from_secs(7);

/// An instance delivering to `callback` with outage mode quick enough to test: `max_age` 5 s,
/// an outage after 1 s of failures, a probe a second.
fn instance(app: &App, callback: &FakeCallback) -> InstanceConfig {
    InstanceConfig::new("acme", 1, app)
        .callback(&callback.url())
        .coalesce(false)
        .delivery("max_age", "5s")
        .delivery("max_attempts", 6_u32)
        .delivery("outage_after", "1s")
        .delivery("probe_interval", "1s")
}

fn accounts(n: usize) -> Vec<String> {
    (0..n).map(|_| account_id()).collect()
}

/// The instance's `/admin/status` entry.
async fn status(d: &Daemon) -> serde_json::Value {
    let r = get(&format!("{}/admin/status", d.admin_url())).await;
    assert_eq!(r.status, 200, "GET /admin/status\n{}", d.logs());
    let list: Vec<serde_json::Value> = serde_json::from_slice(&r.body).expect("a JSON array");
    list.into_iter()
        .find(|s| s["instance"] == "acme")
        .unwrap_or_else(|| panic!("no status for acme: {}", r.text()))
}

/// Waits until the instance's state is `state` ("outage" or "active"); returns its status.
async fn wait_for_state(d: &Daemon, state: &str) -> serde_json::Value {
    let deadline = Instant::now() + BOUND;
    loop {
        let s = status(d).await;
        if s["state"] == state {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "state never became {state}: {s}\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ids of the events the consumer took (answered 2xx).
fn delivered(requests: &[Recorded]) -> BTreeSet<String> {
    requests
        .iter()
        .filter(|r| r.answered.is_some_and(|s| (200..300).contains(&s)))
        .map(Recorded::event_id)
        .collect()
}

/// The ids of every event sent, whatever the answer.
fn sent(requests: &[Recorded]) -> BTreeSet<String> {
    requests.iter().map(Recorded::event_id).collect()
}

/// Asserts that at most one request per `probe` arrived between `from` and `to` (with one of
/// slack for a window's edges), and returns how many did.
fn assert_probe_pace(requests: &[Recorded], from: Instant, to: Instant, probe: Duration) -> usize {
    let during: Vec<Instant> = requests
        .iter()
        .map(|r| r.at)
        .filter(|at| *at >= from && *at < to)
        .collect();
    let windows = (to - from).as_secs_f64() / probe.as_secs_f64();
    let bound = windows.ceil() as usize + 1;
    assert!(
        during.len() <= bound,
        "{} requests in {:?} of outage, at most {bound} allowed (one per {probe:?})",
        during.len(),
        to - from
    );
    // Window by window as well: never two probes' worth in one interval.
    for (n, at) in during.iter().enumerate() {
        let in_window = during[n..].iter().filter(|t| **t < *at + probe).count();
        assert!(
            in_window <= 2,
            "{in_window} requests within {probe:?} of one another during the outage"
        );
    }
    during.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_down_longer_than_max_age_loses_nothing_and_gets_probes() {
    let app = App::new("app-key");
    let cb = FakeCallback::start([], Action::Status(503)).await;
    let mut d = Daemon::start(&TestConfig::new().instance(instance(&app, &cb))).await;
    notify_each(&d.ingest_url(), &app, &accounts(3)).await;
    let ids = sent(&cb.wait_for(3, BOUND).await);
    assert_eq!(ids.len(), 3);

    let s = wait_for_state(&d, "outage").await;
    let began = Instant::now();
    assert_eq!(s["queued"], 3, "{s}");
    assert_eq!(s["held"], 3, "{s}");
    assert_eq!(s["dead_lettered"], 0, "{s}");
    assert!(s["outage"]["since_ms"].as_u64().is_some(), "{s}");
    let began_with = s["outage"]["last_error"].as_str().unwrap_or_default();
    assert!(began_with.contains("503"), "{s}");
    assert_eq!(
        d.metric("hookrelay_outage{instance_name=\"acme\"}").await,
        Some(1.0)
    );
    assert!(d.logs().contains("outage"), "no log line\n{}", d.logs());

    // Down for longer than max_age: attempts made before the outage may still be answered in
    // its first second; after that, one probe per second.
    tokio::time::sleep(DOWN).await;
    let down_until = Instant::now();
    let probes = assert_probe_pace(
        &cb.requests(),
        began + Duration::from_secs(1),
        down_until,
        Duration::from_secs(1),
    );
    assert!(probes >= 1, "no probe in {DOWN:?} of outage");
    let s = status(&d).await;
    assert_eq!(s["state"], "outage", "{s}");
    assert_eq!(
        s["dead_lettered"], 0,
        "dead-lettered during the outage: {s}"
    );
    assert_eq!(s["queued"], 3, "{s}");

    // The consumer is back: the next probe ends the outage, and everything is delivered.
    cb.set_plan([], Action::Status(200));
    cb.wait_until(BOUND, "every event delivered", |r| delivered(r) == ids)
        .await;
    let s = wait_for_state(&d, "active").await;
    assert_eq!(s["outage"], serde_json::Value::Null, "{s}");
    assert_eq!(s["held"], 0, "{s}");
    assert_eq!(s["dead_lettered"], 0, "{s}");
    assert_eq!(
        d.metric("hookrelay_outage{instance_name=\"acme\"}").await,
        Some(0.0)
    );
    assert!(d.logs().contains("outage over"), "{}", d.logs());
    d.stop().await;
    assert_eq!(
        dead(&d.store_path()),
        vec![],
        "nothing may be dead-lettered"
    );
    assert_eq!(pending(&d.store_path()), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_survives_kill_9_and_ends_at_the_first_2xx() {
    let app = App::new("app-key");
    let cb = FakeCallback::start([], Action::Status(500)).await;
    let mut d = Daemon::start(&TestConfig::new().instance(instance(&app, &cb))).await;
    notify_each(&d.ingest_url(), &app, &accounts(2)).await;
    let ids = sent(&cb.wait_for(2, BOUND).await);
    wait_for_state(&d, "outage").await;
    d.kill9();

    // Stopped: `status` reads the outage from the store.
    let offline = d.cli(&["status", "--json"]).await;
    assert_eq!(offline.code(), Some(0), "{offline:?}");
    let report: serde_json::Value = serde_json::from_str(&offline.stdout).expect("status JSON");
    assert_eq!(report["daemon"], "stopped", "{report}");
    let acme = &report["instances"][0];
    assert_eq!(acme["state"], "outage", "{report}");
    assert!(acme["outage"]["since_ms"].as_u64().is_some(), "{report}");
    let text = d.cli(&["status"]).await;
    assert!(text.stdout.contains("outage: acme since"), "{text:?}");

    // Still in the outage after the restart, with nothing dead-lettered while it goes on for
    // longer than max_age.
    d.restart().await;
    let s = wait_for_state(&d, "outage").await;
    assert!(
        d.logs().contains("still in an outage"),
        "the outage was not taken up from the store\n{}",
        d.logs()
    );
    assert_eq!(s["dead_lettered"], 0, "{s}");
    assert_eq!(
        d.metric("hookrelay_outage{instance_name=\"acme\"}").await,
        Some(1.0)
    );
    let restarted = Instant::now();
    tokio::time::sleep(DOWN).await;
    assert_probe_pace(
        &cb.requests(),
        restarted,
        Instant::now(),
        Duration::from_secs(1),
    );
    assert_eq!(status(&d).await["dead_lettered"], 0);

    cb.set_plan([], Action::Status(200));
    // Catch-up events after the unclean stop may come too; the two events must.
    cb.wait_until(BOUND, "both events delivered", |r| {
        ids.is_subset(&delivered(r))
    })
    .await;
    wait_for_state(&d, "active").await;
    d.stop().await;
    assert_eq!(dead(&d.store_path()), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_during_an_outage_still_dead_letters() {
    let app = App::new("app-key");
    let cb = FakeCallback::start([], Action::Status(503)).await;
    let mut d = Daemon::start(&TestConfig::new().instance(instance(&app, &cb))).await;
    notify_each(&d.ingest_url(), &app, &accounts(2)).await;
    let ids = sent(&cb.wait_for(2, BOUND).await);
    wait_for_state(&d, "outage").await;

    // The next probe is refused for good: that event is dead, the outage goes on.
    let before = cb.count();
    cb.set_plan([Action::Status(410)], Action::Status(503));
    let requests = cb
        .wait_until(BOUND, "the probe answered 410", |r| {
            r.iter().skip(before).any(|r| r.answered == Some(410))
        })
        .await;
    let gone = requests
        .iter()
        .skip(before)
        .find(|r| r.answered == Some(410))
        .map(Recorded::event_id)
        .expect("a 410");
    let deadline = Instant::now() + BOUND;
    let s = loop {
        let s = status(&d).await;
        if s["dead_lettered"] == 1 || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(s["dead_lettered"], 1, "{s}");
    assert_eq!(s["state"], "outage", "a 410 is no 2xx: {s}");

    cb.set_plan([], Action::Status(200));
    let other: BTreeSet<String> = ids.iter().filter(|id| **id != gone).cloned().collect();
    cb.wait_until(BOUND, "the other event delivered", |r| {
        other.is_subset(&delivered(r))
    })
    .await;
    d.stop().await;
    let letters = dead(&d.store_path());
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].id, gone);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_holds_the_whole_instance_and_uses_up_no_attempt() {
    let app = App::new("app-key");
    let cb = FakeCallback::start(
        [Action::StatusWithHeaders(
            429,
            vec![("Retry-After".into(), "2".into())],
        )],
        Action::Status(200),
    )
    .await;
    // One request at a time: the other events wait in the lane while the first is answered,
    // and without the hold they would follow its answer at once.
    let cfg = TestConfig::new()
        .delivery("retry_max_interval", "10s")
        .instance(
            InstanceConfig::new("acme", 1, &app)
                .callback(&cb.url())
                .coalesce(false)
                .delivery("concurrency", 1_u32)
                .delivery("max_attempts", 1_u32),
        );
    let mut d = Daemon::start(&cfg).await;
    notify_each(&d.ingest_url(), &app, &accounts(3)).await;
    let posted = Instant::now();
    let first = cb.wait_for(1, BOUND).await.remove(0);
    assert_eq!(first.answered, Some(429));
    assert!(
        posted < first.at + Duration::from_millis(1500),
        "the test could not post within the hold"
    );

    let requests = cb
        .wait_until(BOUND, "three events delivered", |r| delivered(r).len() == 3)
        .await;
    for later in &requests[1..] {
        let after = later.at - first.at;
        assert!(
            after >= Duration::from_millis(1900),
            "a request went out {after:?} after a Retry-After: 2"
        );
    }
    assert!(
        delivered(&requests).contains(&first.event_id()),
        "the held event was not delivered with max_attempts = 1"
    );
    d.stop().await;
    assert_eq!(
        dead(&d.store_path()),
        vec![],
        "a Retry-After used up the attempt"
    );
}
