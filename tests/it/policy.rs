//! Delivery policies: coalescing behind a refusing callback and never into an event the consumer
//! may have taken, `coalesce = false`, catch-up after an unclean stop or a long outage, the
//! destination (SSRF) guard, signing-key rotation, per-instance back-pressure past
//! `max_queued_bytes`, and dead-letter retention.
//!
//! Notifications here carry a unique marker in `delta.users[0]`, so that a delivery or a stored
//! event tells which notification it holds.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::support::callback::{verify_signatures, verify_standard};
use crate::support::config::free_addr;
use crate::support::dropbox::{account_id, notification_body, post_notification};
use crate::support::http::get;
use crate::support::store::{StoredEvent, dead, pending};
use crate::support::{
    Action, App, Daemon, FakeCallback, InstanceConfig, Recorded, TestConfig, wait_until,
};

/// A notification for `account` whose `delta.users` is `[marker]` (Dropbox's spacing).
fn marked_body(account: &str, marker: u64) -> String {
    format!(
        "{{\"list_folder\": {{\"accounts\": [\"{account}\"]}}, \"delta\": {{\"users\": [{marker}]}}}}"
    )
}

/// The marker of a notification body (`delta.users[0]`).
fn marker_of(raw: &serde_json::Value) -> Option<u64> {
    raw["delta"]["users"][0].as_u64()
}

/// The marker of a delivery's `raw`.
fn delivered_marker(r: &Recorded) -> Option<u64> {
    marker_of(&r.message()["raw"])
}

/// The marker of a stored event's raw body.
fn stored_marker(e: &StoredEvent) -> Option<u64> {
    serde_json::from_slice(&e.raw)
        .ok()
        .as_ref()
        .and_then(marker_of)
}

/// Posts the notifications `markers` for `account`, one after another, each answered 200.
async fn notify_marked(d: &Daemon, app: &App, account: &str, markers: std::ops::Range<u64>) {
    for marker in markers {
        let status =
            post_notification(&d.ingest_url(), &app.secret, &marked_body(account, marker)).await;
        assert_eq!(status, 200, "notification {marker} answered {status}");
    }
}

/// `GET /admin/status`: one JSON object per instance, by instance name.
async fn admin_status(d: &Daemon) -> BTreeMap<String, serde_json::Value> {
    let r = get(&format!("{}/admin/status", d.admin_url())).await;
    assert_eq!(r.status, 200, "GET /admin/status\n{}", d.logs());
    let list: Vec<serde_json::Value> = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("/admin/status is not a JSON array ({e}): {}", r.text()));
    list.into_iter()
        .map(|s| (s["instance"].as_str().unwrap_or_default().to_owned(), s))
        .collect()
}

/// One instance's `/admin/status` entry (panics if it has none).
async fn instance_status(d: &Daemon, name: &str) -> serde_json::Value {
    admin_status(d)
        .await
        .remove(name)
        .unwrap_or_else(|| panic!("no /admin/status entry for {name}"))
}

/// Deliveries (200s) of `UNKNOWN` events, counted per account.
fn unknown_per_account(reqs: &[Recorded]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in reqs.iter().filter(|r| r.answered == Some(200)) {
        if r.message()["events"][0]["eventType"] == "UNKNOWN" {
            *counts.entry(r.account()).or_insert(0) += 1;
        }
    }
    counts
}

// === coalescing ===

/// 40 notifications for one account behind callbacks that refuse (a 500, or a closed port):
/// they merge into a handful of waiting, refused events of the pair, and once the consumer is
/// back the newest notification is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_coalesce_behind_a_refusing_callback() {
    const N: u64 = 40;
    let app = App::new("app-key");
    let cb = FakeCallback::start([], Action::Status(500)).await;
    let closed = format!("http://{}/hooks/dropbox", free_addr());
    let refusing = |name: &str, id: u64, url: &str| {
        InstanceConfig::new(name, id, &app)
            .callback(url)
            .coalesce(true)
            .delivery("retry_initial", "300ms")
            .delivery("retry_multiplier", 1.0)
            .delivery("max_attempts", 1000_u32)
    };
    let cfg = TestConfig::new()
        .instance(refusing("status500", 1, &cb.url()))
        .instance(refusing("closed", 2, &closed));
    let mut d = Daemon::start(&cfg).await;
    let account = account_id();
    notify_marked(&d, &app, &account, 0..N).await;

    // A notification only gets an event of its own when the pair has no waiting, refused event
    // (at first, and while that event is being claimed and retried): a handful, not 40.
    for name in ["status500", "closed"] {
        let queued = instance_status(&d, name).await["queued"]
            .as_u64()
            .expect("queued is a number");
        assert!(
            (1..=10).contains(&queued),
            "{name}: {queued} events pending for 40 notifications of one account\n{}",
            d.logs()
        );
    }
    let refused_ids: BTreeSet<String> = cb.requests().iter().map(Recorded::event_id).collect();
    assert!(
        refused_ids.len() <= 10,
        "{} events attempted",
        refused_ids.len()
    );

    // The consumer comes back: everything waiting is delivered, the newest notification with it.
    cb.set_plan([], Action::Status(200));
    wait_until(
        Duration::from_secs(20),
        "status500's queue to empty",
        || async { instance_status(&d, "status500").await["queued"].as_u64() == Some(0) },
    )
    .await;
    let reqs = cb.requests();
    let delivered: Vec<&Recorded> = reqs.iter().filter(|r| r.answered == Some(200)).collect();
    for r in &delivered {
        assert_eq!(r.account(), account);
        assert_eq!(r.message()["events"][0]["eventType"], "UPDATED");
    }
    assert!(
        delivered.iter().any(|r| delivered_marker(r) == Some(N - 1)),
        "the newest notification ({}) was never delivered; delivered markers: {:?}",
        N - 1,
        delivered
            .iter()
            .map(|r| delivered_marker(r))
            .collect::<Vec<_>>()
    );
    let delivered_ids: BTreeSet<String> = delivered.iter().map(|r| r.event_id()).collect();
    assert!(
        refused_ids.is_subset(&delivered_ids),
        "events refused earlier were not delivered: {:?}",
        refused_ids.difference(&delivered_ids).collect::<Vec<_>>()
    );

    // The closed port never answers: its events still cover the newest notification.
    d.stop().await;
    let left: Vec<StoredEvent> = pending(&d.store_path())
        .into_iter()
        .filter(|e| e.instance == "closed")
        .collect();
    assert!((1..=10).contains(&left.len()), "{left:?}");
    assert!(left.iter().all(|e| e.account == account));
    assert!(
        left.iter().any(|e| stored_marker(e) == Some(N - 1)),
        "no pending event of the closed port holds the newest notification: {:?}",
        left.iter().map(stored_marker).collect::<Vec<_>>()
    );
}

/// An attempt that timed out may have been taken by the consumer, so later notifications of
/// the pair never merge into its event: they get events of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_merge_into_an_event_whose_attempt_timed_out() {
    let app = App::new("app-key");
    let cb = FakeCallback::start([], Action::Hang).await;
    let cfg = TestConfig::new().instance(
        InstanceConfig::new("acme", 1, &app)
            .callback(&cb.url())
            .coalesce(true)
            .delivery("timeout", "1s")
            // A's retry stays far away: A waits in the store, not in flight, when B and C come.
            .delivery("retry_initial", "60s")
            .delivery("retry_max_interval", "60s"),
    );
    let mut d = Daemon::start(&cfg).await;
    let account = account_id();
    notify_marked(&d, &app, &account, 0..1).await;
    let first = cb.wait_for(1, Duration::from_secs(15)).await[0].clone();
    let a_id = first.event_id();
    assert_eq!(delivered_marker(&first), Some(0));

    // A's attempt times out and is rescheduled.
    wait_until(
        Duration::from_secs(15),
        "A's attempt to time out",
        || async { !instance_status(&d, "acme").await["last_error"].is_null() },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    notify_marked(&d, &app, &account, 1..3).await;
    // B and C should be attempted as events of their own (those attempts hang, then time out).
    // Merged into A they would not be attempted before A's retry: the store tells below.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while cb.count() < 3 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    d.stop().await;

    let events = pending(&d.store_path());
    let by_id: BTreeMap<&str, Option<u64>> = events
        .iter()
        .map(|e| (e.id.as_str(), stored_marker(e)))
        .collect();
    assert_eq!(
        by_id.get(a_id.as_str()),
        Some(&Some(0)),
        "A's event {a_id} is gone or took a later notification: {by_id:?}"
    );
    assert_eq!(events.len(), 3, "expected A, B and C apart: {by_id:?}");
    let markers: BTreeSet<Option<u64>> = by_id.values().copied().collect();
    assert_eq!(markers, BTreeSet::from([Some(0), Some(1), Some(2)]));
    assert!(events.iter().all(|e| e.account == account));
    let attempted: BTreeSet<(String, Option<u64>)> = cb
        .requests()
        .iter()
        .map(|r| (r.event_id(), delivered_marker(r)))
        .collect();
    assert_eq!(attempted.len(), 3, "{attempted:?}");
}

/// `coalesce = false`: every notification keeps an event of its own behind a refusing callback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_coalescing_every_notification_keeps_its_event() {
    const N: u64 = 40;
    let app = App::new("app-key");
    let closed = format!("http://{}/hooks/dropbox", free_addr());
    let cfg = TestConfig::new().instance(
        InstanceConfig::new("acme", 1, &app)
            .callback(&closed)
            .coalesce(false)
            .delivery("max_attempts", 1000_u32),
    );
    let mut d = Daemon::start(&cfg).await;
    let account = account_id();
    notify_marked(&d, &app, &account, 0..N).await;
    d.stop().await;

    let events = pending(&d.store_path());
    assert_eq!(events.len(), N as usize, "pending events");
    let markers: BTreeSet<Option<u64>> = events.iter().map(stored_marker).collect();
    assert_eq!(markers, (0..N).map(Some).collect::<BTreeSet<_>>());
    assert!(events.iter().all(|e| e.account == account));
}

// === catch-up ===

/// After `kill -9` every (instance, account) seen gets one `UNKNOWN` event; after a clean stop
/// and a quick restart none; after a clean stop and a long outage (the test-only threshold
/// override makes one second long) one again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_after_an_unclean_stop_or_a_long_outage() {
    let app = App::new("app-key");
    let cb = FakeCallback::ok().await;
    let cfg = TestConfig::new().instance(InstanceConfig::new("acme", 1, &app).callback(&cb.url()));
    let mut d = Daemon::start(&cfg).await;
    let accounts: Vec<String> = (0..3).map(|_| account_id()).collect();
    for account in &accounts {
        let body = notification_body(&[account]);
        assert_eq!(
            post_notification(&d.ingest_url(), &app.secret, &body).await,
            200
        );
    }
    cb.wait_for(3, Duration::from_secs(15)).await;
    assert!(unknown_per_account(&cb.requests()).is_empty());

    let each =
        |n: usize| -> BTreeMap<String, usize> { accounts.iter().map(|a| (a.clone(), n)).collect() };
    let settle = Duration::from_millis(1500);

    // 1. kill -9, plain restart: the stop was unclean.
    d.kill9();
    d.restart().await;
    cb.wait_until(Duration::from_secs(15), "3 UNKNOWN deliveries", |r| {
        unknown_per_account(r).values().sum::<usize>() >= 3
    })
    .await;
    tokio::time::sleep(settle).await;
    let reqs = cb.requests();
    assert_eq!(unknown_per_account(&reqs), each(1), "after kill -9");
    for r in reqs
        .iter()
        .filter(|r| r.message()["events"][0]["eventType"] == "UNKNOWN")
    {
        let m = r.message();
        let e = &m["events"][0];
        assert_eq!(e["objectType"], "account", "{m}");
        assert_eq!(e["objectId"], m["accountId"], "{m}");
        assert_eq!(m["instanceName"], "acme", "{m}");
    }

    // 2. A clean stop and an immediate restart: nothing was missed.
    d.stop().await;
    d.restart().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        unknown_per_account(&cb.requests()),
        each(1),
        "catch-up events after a clean stop and a quick restart"
    );

    // 3. A clean stop, then down for longer than the (overridden) threshold.
    d.stop().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    d.set_env(hookrelay::daemon::CATCH_UP_AFTER_ENV, "1s");
    d.restart().await;
    cb.wait_until(Duration::from_secs(15), "3 more UNKNOWN deliveries", |r| {
        unknown_per_account(r).values().sum::<usize>() >= 6
    })
    .await;
    tokio::time::sleep(settle).await;
    assert_eq!(
        unknown_per_account(&cb.requests()),
        each(2),
        "after a long outage"
    );
}

// === destination guard ===

/// With `allow_private_destinations = false` a loopback callback is refused in every spelling
/// (an IP literal, a name resolving to loopback, an IPv4-mapped IPv6 literal, a decimal IPv4);
/// with `true` the same callback is delivered to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_destinations_are_refused_unless_allowed() {
    let app = App::new("app-key");
    let allowed = FakeCallback::ok().await;
    let mut refused = Vec::new();
    for (name, host) in [
        ("literal", "127.0.0.1"),
        ("name", "localhost"),
        ("mapped", "[::ffff:127.0.0.1]"),
        ("decimal", "2130706433"),
    ] {
        let cb = FakeCallback::ok().await;
        let url = format!("http://{host}:{}/hooks/dropbox", cb.addr().port());
        refused.push((name, url, cb));
    }
    let mut cfg = TestConfig::new().instance(
        InstanceConfig::new("allowed", 1, &app)
            .callback(&allowed.url())
            .delivery("allow_private_destinations", true),
    );
    for (n, (name, url, _)) in refused.iter().enumerate() {
        cfg = cfg.instance(
            InstanceConfig::new(name, 10 + n as u64, &app)
                .callback(url)
                .delivery("allow_private_destinations", false),
        );
    }
    let d = Daemon::start(&cfg).await;
    let account = account_id();
    let body = notification_body(&[&account]);
    assert_eq!(
        post_notification(&d.ingest_url(), &app.secret, &body).await,
        200
    );

    assert_eq!(
        allowed.wait_for(1, Duration::from_secs(15)).await[0].account(),
        account
    );
    for (name, url, _) in &refused {
        wait_until(
            Duration::from_secs(15),
            &format!("{name} ({url}) to report a refused destination"),
            || async {
                instance_status(&d, name).await["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("not allowed"))
            },
        )
        .await;
    }
    // Each has had an attempt refused by now; give the retries (200 ms on) a second more.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = admin_status(&d).await;
    for (name, url, cb) in &refused {
        assert_eq!(cb.count(), 0, "{name}: {url} received a delivery");
        assert!(
            status[*name]["queued"].as_u64() >= Some(1),
            "{name}: the refused event is not kept: {}",
            status[*name]
        );
    }
}

// === signing-key rotation ===

const KEY: &str = "whsec_aG9va3JlbGF5LXBvbGljeS1jdXJyZW50";
const PREVIOUS_KEY: &str = "whsec_aG9va3JlbGF5LXBvbGljeS1wcmV2aW91";
const OTHER_KEY: &str = "whsec_aG9va3JlbGF5LXBvbGljeS11bnJlbGF0";

/// During a key rotation `webhook-signature` carries one `v1,` entry per key, and the
/// `standardwebhooks` crate verifies the delivery with either key (each entry with its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_signs_with_both_keys() {
    let app = App::new("app-key");
    let cb = FakeCallback::ok().await;
    let cfg = TestConfig::new().instance(
        InstanceConfig::new("acme", 1, &app)
            .callback(&cb.url())
            .signature_key(KEY)
            .previous_signature_key(PREVIOUS_KEY),
    );
    let d = Daemon::start(&cfg).await;
    let body = notification_body(&[&account_id()]);
    assert_eq!(
        post_notification(&d.ingest_url(), &app.secret, &body).await,
        200
    );
    let r = cb.wait_for(1, Duration::from_secs(15)).await[0].clone();

    // Elements-Webhook-Signature with the current key, and webhook-signature verifying with it.
    verify_signatures(&r, KEY).unwrap();
    verify_standard(&r, PREVIOUS_KEY).unwrap();
    assert!(
        verify_standard(&r, OTHER_KEY).is_err(),
        "verifies with an unrelated key"
    );

    let header = r.header("webhook-signature").expect("webhook-signature");
    let entries: Vec<&str> = header.split(' ').collect();
    assert_eq!(entries.len(), 2, "{header}");
    assert!(entries.iter().all(|e| e.starts_with("v1,")), "{header}");
    // Each entry alone verifies with exactly one of the keys, and not the same one.
    let mut signers = BTreeSet::new();
    for entry in &entries {
        let mut alone = r.clone();
        alone
            .headers
            .insert("webhook-signature", entry.parse().expect("a header value"));
        let keys: Vec<&str> = [KEY, PREVIOUS_KEY]
            .into_iter()
            .filter(|k| verify_standard(&alone, k).is_ok())
            .collect();
        assert_eq!(keys.len(), 1, "entry {entry} verifies with {keys:?}");
        signers.insert(keys[0]);
    }
    assert_eq!(signers, BTreeSet::from([KEY, PREVIOUS_KEY]));
}

// === back-pressure ===

/// A refusing instance past its `max_queued_bytes` stops growing (its new notifications merge,
/// although `coalesce = false`), while Dropbox keeps getting 200s and a healthy instance of the
/// same app gets every notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_pressure_is_per_instance() {
    const N: u64 = 100;
    let app = App::new("app-key");
    let failing = FakeCallback::start([], Action::Status(500)).await;
    let healthy = FakeCallback::ok().await;
    let cfg = TestConfig::new()
        .instance(
            InstanceConfig::new("failing", 1, &app)
                .callback(&failing.url())
                .coalesce(false)
                .delivery("max_queued_bytes", "2KiB")
                .delivery("max_attempts", 1000_u32),
        )
        .instance(
            InstanceConfig::new("healthy", 2, &app)
                .callback(&healthy.url())
                .coalesce(false),
        );
    let mut d = Daemon::start(&cfg).await;
    let account = account_id();
    notify_marked(&d, &app, &account, 0..N).await;

    let got = healthy
        .wait_until(Duration::from_secs(30), "100 deliveries to healthy", |r| {
            r.iter().filter(|r| r.answered == Some(200)).count() >= N as usize
        })
        .await;
    let markers: BTreeSet<Option<u64>> = got.iter().map(delivered_marker).collect();
    assert_eq!(markers, (0..N).map(Some).collect::<BTreeSet<_>>());
    d.stop().await;

    // Each event is charged its body (~90 bytes) + 256, so 2 KiB holds 6 events before the
    // quota bites (about 6 are seen). Past it a notification makes a new event only when the
    // pair has no waiting merge target, i.e. while that target is claimed for a retry: at most
    // one new (parked) event per such window, a few during the burst. 20 leaves room for that
    // on a loaded machine and is far below the 100 events there would be without the quota.
    let events = pending(&d.store_path());
    let failing_events: Vec<&StoredEvent> =
        events.iter().filter(|e| e.instance == "failing").collect();
    assert!(
        (1..=20).contains(&failing_events.len()),
        "{} events pending for the failing instance",
        failing_events.len()
    );
    assert!(
        failing_events
            .iter()
            .any(|e| stored_marker(e) == Some(N - 1)),
        "the newest notification is not covered: {:?}",
        failing_events
            .iter()
            .map(|e| stored_marker(e))
            .collect::<Vec<_>>()
    );
    assert!(events.iter().all(|e| e.instance == "failing"), "{events:?}");
}

/// An event parked past `max_queued_bytes` goes to its lane at once: the lane is not left to
/// find it at the instance's next scheduled retry (an hour away here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_event_is_delivered_before_the_next_retry() {
    let app = App::new("app-key");
    // The first event is refused and waits an hour for its retry, keeping the instance past
    // its quota; the consumer takes everything after that.
    let callback = FakeCallback::start([Action::Status(503)], Action::Status(200)).await;
    let cfg = TestConfig::new().instance(
        InstanceConfig::new("small", 1, &app)
            .callback(&callback.url())
            .delivery("max_queued_bytes", "1B")
            .delivery("retry_initial", "1h")
            .delivery("retry_max_interval", "1h"),
    );
    let mut d = Daemon::start(&cfg).await;
    let (first, second) = (account_id(), account_id());
    let body = notification_body(&[&first]);
    assert_eq!(
        post_notification(&d.ingest_url(), &app.secret, &body).await,
        200
    );
    wait_until(
        Duration::from_secs(15),
        "the first event to wait for its retry",
        || async { instance_status(&d, "small").await["in_retry"] == 1 },
    )
    .await;

    // Past the quota: the second account's event is parked in the store.
    let body = notification_body(&[&second]);
    assert_eq!(
        post_notification(&d.ingest_url(), &app.secret, &body).await,
        200
    );
    let got = callback
        .wait_until(Duration::from_secs(10), "the parked event delivered", |r| {
            r.iter()
                .any(|r| r.answered == Some(200) && r.account() == second)
        })
        .await;
    assert!(
        got.iter()
            .all(|r| r.account() != first || r.answered == Some(503)),
        "the first event was retried early: {got:?}"
    );
    d.stop().await;
}

// === dead-letter retention ===

/// Dead letters older than their instance's `dead_letter_ttl` are deleted, others kept.
/// Retention runs when the daemon starts and every 60 s after; a restart makes it observable
/// without waiting a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_expire_after_their_ttl() {
    let app = App::new("app-key");
    let (short, long) = (
        FakeCallback::start([], Action::Status(410)).await,
        FakeCallback::start([], Action::Status(410)).await,
    );
    let cfg = TestConfig::new()
        .instance(
            InstanceConfig::new("short", 1, &app)
                .callback(&short.url())
                .delivery("dead_letter_ttl", "1s"),
        )
        .instance(InstanceConfig::new("long", 2, &app).callback(&long.url()));
    let mut d = Daemon::start(&cfg).await;
    let body = notification_body(&[&account_id()]);
    assert_eq!(
        post_notification(&d.ingest_url(), &app.secret, &body).await,
        200
    );
    wait_until(Duration::from_secs(15), "both dead letters", || async {
        let s = admin_status(&d).await;
        s["short"]["dead_lettered"] == 1 && s["long"]["dead_lettered"] == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    d.stop().await;
    d.restart().await;
    wait_until(
        Duration::from_secs(15),
        "short's dead letter to expire",
        || async { instance_status(&d, "short").await["dead_lettered"] == 0 },
    )
    .await;
    assert_eq!(instance_status(&d, "long").await["dead_lettered"], 1);
    d.stop().await;
    let left = dead(&d.store_path());
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].instance, "long");
}
