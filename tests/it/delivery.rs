//! Consumer-facing delivery (docs/protocol.md): the envelope, headers and signatures; retries,
//! `Retry-After`, 410, redirects, dead letters; isolation between instances; rate limits;
//! pausing; and at-least-once across `kill -9`, SIGTERM and reloads.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::callback::{verify_signatures, verify_standard};
use crate::support::dropbox::{account_id, notification_body, notify_each, post_notification};
use crate::support::store::{dead, pending};
use crate::support::{
    Action, App, Daemon, FakeCallback, InstanceConfig, Recorded, TestConfig, wait_until,
};

const WHSEC: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const WHSEC_OLD: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// An instance delivering to `callback`, signed with [`WHSEC`], without coalescing.
fn instance(name: &str, id: u64, app: &App, callback: &FakeCallback) -> InstanceConfig {
    InstanceConfig::new(name, id, app)
        .callback(&callback.url())
        .signature_key(WHSEC)
        .coalesce(false)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn accounts(n: usize) -> Vec<String> {
    (0..n).map(|_| account_id()).collect()
}

/// Unix seconds of an RFC 3339 UTC-or-offset timestamp (`2026-11-28T17:00:00Z`,
/// fractions allowed); `None` if it is not one.
fn rfc3339_unix(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let o = rest[1..3].parse::<i64>().ok()? * 3600 + rest[4..6].parse::<i64>().ok()? * 60;
            if rest.starts_with('-') { -o } else { o }
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + h * 3600 + mi * 60 + sec - offset)
}

#[test]
fn rfc3339_unix_parses() {
    assert_eq!(rfc3339_unix("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(rfc3339_unix("2026-11-28T17:00:00Z"), Some(1_795_885_200));
    assert_eq!(
        rfc3339_unix("2026-11-28T18:00:00.123+01:00"),
        Some(1_795_885_200)
    );
    assert_eq!(rfc3339_unix("2026-11-28 17:00"), None);
}

/// Asserts the envelope and headers (docs/protocol.md) of one delivery of `account`'s notification.
fn assert_envelope(req: &Recorded, account: &str, body_sent: &str) {
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/hooks/dropbox");
    let ct = req.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("application/json"), "Content-Type {ct:?}");
    assert_eq!(
        req.header("user-agent"),
        Some(format!("hookrelay/{}", env!("CARGO_PKG_VERSION")).as_str())
    );

    let m = req.message();
    assert_eq!(m["elementKey"], "dropbox", "{m}");
    let event_id = m["eventId"].as_str().expect("eventId");
    assert!(
        ulid::Ulid::from_string(event_id).is_ok(),
        "eventId {event_id:?} is not a ULID"
    );
    assert_eq!(m["instanceId"], 4567, "{m}");
    assert_eq!(m["instanceName"], "acme", "{m}");
    assert_eq!(m["instanceTags"], serde_json::json!(["prod", "eu"]), "{m}");
    assert_eq!(m["accountId"], account, "{m}");
    let sent: serde_json::Value = serde_json::from_str(body_sent).unwrap();
    assert_eq!(m["raw"], sent, "raw is not the Dropbox notification");
    let events = m["events"].as_array().expect("events array");
    assert_eq!(events.len(), 1, "{m}");
    let e = &events[0];
    assert_eq!(e["elementKey"], "dropbox", "{e}");
    assert_eq!(e["eventType"], "UPDATED", "{e}");
    assert_eq!(e["objectType"], "account", "{e}");
    assert_eq!(e["objectId"], account, "{e}");
    let date = e["date"].as_str().expect("date string");
    let at = rfc3339_unix(date).unwrap_or_else(|| panic!("date {date:?} is not RFC 3339"));
    assert!(
        (at - unix_now()).abs() < 300,
        "date {date:?} is not about now"
    );

    assert_eq!(req.header("Elements-Webhook-Id"), Some(event_id));
    assert_eq!(req.header("webhook-id"), Some(event_id));
    let ts: i64 = req
        .header("webhook-timestamp")
        .expect("webhook-timestamp")
        .parse()
        .expect("webhook-timestamp is unix seconds");
    assert!(
        (ts - unix_now()).abs() < 60,
        "webhook-timestamp {ts} is not now"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_once_with_the_spec_envelope_headers_and_signatures() {
    let app = App::new("app-key");
    let cb = FakeCallback::ok().await;
    let cfg = TestConfig::new().instance(instance("acme", 4567, &app, &cb).tags(&["prod", "eu"]));
    let mut d = Daemon::start(&cfg).await;
    let account = account_id();
    let body = notification_body(&[&account]);
    assert_eq!(
        post_notification(&d.ingest_url(), &app.secret, &body).await,
        200
    );

    let reqs = cb.wait_for(1, Duration::from_secs(15)).await;
    assert_envelope(&reqs[0], &account, &body);
    verify_signatures(&reqs[0], WHSEC).unwrap();
    let entries = reqs[0]
        .header("webhook-signature")
        .unwrap()
        .split(' ')
        .count();
    assert_eq!(entries, 1, "one key, one signature");

    // Delivered once: nothing more arrives.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(cb.count(), 1, "a delivered event was sent again");
    d.stop().await;
    assert!(pending(&d.store_path()).is_empty());
    assert!(dead(&d.store_path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_headers_follow_the_key_kind() {
    let app = App::new("app-key");
    let (plain, none, rotating) = (
        FakeCallback::ok().await,
        FakeCallback::ok().await,
        FakeCallback::ok().await,
    );
    let cfg = TestConfig::new()
        .instance(
            InstanceConfig::new("plain", 1, &app)
                .callback(&plain.url())
                .signature_key("MySecretEventSignatureKey"),
        )
        .instance(InstanceConfig::new("unsigned", 2, &app).callback(&none.url()))
        .instance(
            InstanceConfig::new("rotating", 3, &app)
                .callback(&rotating.url())
                .signature_key(WHSEC)
                .previous_signature_key(WHSEC_OLD),
        );
    let d = Daemon::start(&cfg).await;
    let body = notification_body(&[&account_id()]);
    assert_eq!(
        post_notification(&d.ingest_url(), &app.secret, &body).await,
        200
    );
    let limit = Duration::from_secs(15);

    let r = &plain.wait_for(1, limit).await[0];
    verify_signatures(r, "MySecretEventSignatureKey").unwrap();
    assert!(r.header("webhook-signature").is_none());
    assert!(r.header("webhook-id").is_some());

    let r = &none.wait_for(1, limit).await[0];
    assert!(
        r.header("Elements-Webhook-Signature").is_none(),
        "signed without a key"
    );
    assert!(
        r.header("webhook-signature").is_none(),
        "signed without a key"
    );
    assert!(r.header("Elements-Webhook-Id").is_some());

    let r = &rotating.wait_for(1, limit).await[0];
    verify_signatures(r, WHSEC).unwrap();
    verify_standard(r, WHSEC_OLD).unwrap();
    let sig = r.header("webhook-signature").unwrap();
    let entries: Vec<&str> = sig.split(' ').collect();
    assert_eq!(entries.len(), 2, "{sig}");
    assert!(entries.iter().all(|e| e.starts_with("v1,")), "{sig}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_retried_with_the_same_id() {
    let app = App::new("app-key");
    let cb = FakeCallback::start(
        [
            Action::Status(500),
            Action::Status(500),
            Action::Status(500),
        ],
        Action::Status(200),
    )
    .await;
    let mut d = Daemon::start(&TestConfig::new().instance(instance("acme", 1, &app, &cb))).await;
    let account = account_id();
    notify_each(&d.ingest_url(), &app, std::slice::from_ref(&account)).await;

    let reqs = cb.wait_for(4, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let reqs_after = cb.requests();
    assert_eq!(reqs_after.len(), 4, "expected exactly 4 attempts");
    let id = reqs[0].event_id();
    for (n, r) in reqs.iter().enumerate() {
        assert_eq!(r.event_id(), id, "attempt {n}");
        assert_eq!(r.header("webhook-id"), Some(id.as_str()), "attempt {n}");
        assert_eq!(
            r.header("Elements-Webhook-Id"),
            Some(id.as_str()),
            "attempt {n}"
        );
        assert_eq!(r.account(), account);
        verify_signatures(r, WHSEC).unwrap_or_else(|e| panic!("attempt {n}: {e}"));
    }
    // Retry n is due no earlier than 200 ms × 2^(n−1) × 0.8 after attempt n (generous slack).
    for n in 1..4 {
        let gap = reqs[n].at - reqs[n - 1].at;
        let floor = Duration::from_millis(200 * (1 << (n - 1))).mul_f64(0.8 * 0.8);
        assert!(
            gap >= floor,
            "retry {n} came after {gap:?}, before {floor:?}"
        );
    }
    d.stop().await;
    assert!(pending(&d.store_path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_on_429_and_503() {
    let app = App::new("app-key");
    let seconds = FakeCallback::start(
        [Action::StatusWithHeaders(
            429,
            vec![("Retry-After".into(), "2".into())],
        )],
        Action::Status(200),
    )
    .await;
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(5));
    let dated = FakeCallback::start(
        [Action::StatusWithHeaders(
            503,
            vec![("Retry-After".into(), date)],
        )],
        Action::Status(200),
    )
    .await;
    let cfg = TestConfig::new()
        .delivery("retry_max_interval", "10s")
        .instance(instance("seconds", 1, &app, &seconds))
        .instance(instance("dated", 2, &app, &dated));
    let d = Daemon::start(&cfg).await;
    notify_each(&d.ingest_url(), &app, &accounts(1)).await;

    let reqs = seconds.wait_for(2, Duration::from_secs(20)).await;
    let gap = reqs[1].at - reqs[0].at;
    assert!(
        gap >= Duration::from_millis(1900),
        "Retry-After: 2 not honoured: {gap:?}"
    );
    assert_eq!(reqs[0].event_id(), reqs[1].event_id());

    let reqs = dated.wait_for(2, Duration::from_secs(20)).await;
    let gap = reqs[1].at - reqs[0].at;
    assert!(
        gap >= Duration::from_millis(1500),
        "Retry-After as an HTTP date not honoured: {gap:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_410_dead_letters_at_once() {
    let app = App::new("app-key");
    let cb = FakeCallback::start([Action::Status(410)], Action::Status(200)).await;
    let mut d = Daemon::start(&TestConfig::new().instance(instance("acme", 1, &app, &cb))).await;
    let account = account_id();
    notify_each(&d.ingest_url(), &app, std::slice::from_ref(&account)).await;

    let reqs = cb.wait_for(1, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(cb.count(), 1, "a 410 was retried");
    d.stop().await;
    let dead = dead(&d.store_path());
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].id, reqs[0].event_id());
    assert_eq!(dead[0].instance, "acme");
    assert_eq!(dead[0].account, account);
    assert_eq!(dead[0].attempts, 1);
    assert!(pending(&d.store_path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_attempts_then_dead_letter() {
    let app = App::new("app-key");
    let cb = FakeCallback::start([], Action::Status(500)).await;
    let cfg =
        TestConfig::new().instance(instance("acme", 1, &app, &cb).delivery("max_attempts", 3_u32));
    let mut d = Daemon::start(&cfg).await;
    notify_each(&d.ingest_url(), &app, &accounts(1)).await;

    let reqs = cb.wait_for(3, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(cb.count(), 3, "more attempts than max_attempts");
    d.stop().await;
    let dead = dead(&d.store_path());
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].id, reqs[0].event_id());
    assert_eq!(dead[0].attempts, 3);
    assert!(pending(&d.store_path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_failures_and_never_followed() {
    let app = App::new("app-key");
    let sink = FakeCallback::ok().await;
    let cb = FakeCallback::start(
        [
            Action::Redirect(307, sink.url()),
            Action::Redirect(308, sink.url()),
        ],
        Action::Redirect(301, sink.url()),
    )
    .await;
    let d = Daemon::start(&TestConfig::new().instance(instance("acme", 1, &app, &cb))).await;
    notify_each(&d.ingest_url(), &app, &accounts(1)).await;

    let reqs = cb.wait_for(3, Duration::from_secs(20)).await;
    assert_eq!(reqs[0].event_id(), reqs[2].event_id());
    assert_eq!(sink.count(), 0, "a redirect was followed");
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_callback_does_not_delay_another_instance() {
    let app = App::new("app-key");
    let hanging = FakeCallback::start([], Action::Hang).await;
    let healthy = FakeCallback::ok().await;
    let cfg = TestConfig::new()
        .instance(
            instance("hanging", 1, &app, &hanging)
                .delivery("timeout", "2s")
                .delivery("concurrency", 1_u32),
        )
        .instance(instance("healthy", 2, &app, &healthy));
    let d = Daemon::start(&cfg).await;
    let accts = accounts(20);
    let started = Instant::now();
    notify_each(&d.ingest_url(), &app, &accts).await;

    let got = healthy.wait_for(20, Duration::from_secs(15)).await;
    let delivered: BTreeSet<String> = got.iter().map(Recorded::account).collect();
    let sent: BTreeSet<String> = accts.iter().cloned().collect();
    assert_eq!(delivered, sent);
    let h = hanging.wait_for(1, Duration::from_secs(5)).await;
    assert!(h.iter().all(|r| r.answered.is_none()));
    // 20 events behind a 2 s timeout with concurrency 1 would take ≥ 40 s if they blocked B.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the healthy instance took {:?}",
        started.elapsed()
    );
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_caps_deliveries() {
    const N: usize = 60;
    let app = App::new("app-key");
    let cb = FakeCallback::ok().await;
    let cfg = TestConfig::new().instance(
        instance("acme", 1, &app, &cb)
            .delivery("rate_limit", "5/s")
            .delivery("rate_limit_burst", 2_u32),
    );
    let d = Daemon::start(&cfg).await;
    let url = d.ingest_url();
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let (url, app) = (url.clone(), app.clone());
        senders.spawn(async move { notify_each(&url, &app, &accounts(N / 6)).await });
    }
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(r) = senders.join_next().await {
            r.expect("a sender failed");
        }
    })
    .await
    .expect("sending 60 notifications");

    let reqs = cb.wait_for(N, Duration::from_secs(60)).await;
    let t0 = reqs[0].at;
    let first_5s = reqs
        .iter()
        .filter(|r| r.at - t0 < Duration::from_secs(5))
        .count();
    assert!(
        first_5s <= 5 * 5 + 2 + 1,
        "{first_5s} deliveries in the first 5 s at 5/s with a burst of 2"
    );
    let distinct: BTreeSet<String> = reqs.iter().map(Recorded::account).collect();
    assert_eq!(distinct.len(), N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_holds_deliveries_until_a_reload_resumes() {
    let app = App::new("app-key");
    let cb = FakeCallback::ok().await;
    let cfg = TestConfig::new().instance(instance("acme", 1, &app, &cb).paused(true));
    let mut d = Daemon::start(&cfg).await;
    let accts = accounts(5);
    notify_each(&d.ingest_url(), &app, &accts).await;

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cb.count(), 0, "a paused instance delivered");

    let mut resumed = cfg.clone();
    let acme = resumed.instance_mut("acme");
    *acme = acme.clone().paused(false);
    d.rewrite_config(&resumed);
    d.sighup();
    wait_until(Duration::from_secs(10), "config_generation 2", || async {
        d.generation().await == Some(2)
    })
    .await;
    let reqs = cb.wait_for(5, Duration::from_secs(20)).await;
    let got: BTreeSet<String> = reqs.iter().map(Recorded::account).collect();
    assert_eq!(got, accts.iter().cloned().collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_failing_then_restart_delivers_every_acked_event() {
    const N: usize = 20;
    let app = App::new("app-key");
    let cb = FakeCallback::start([], Action::Status(500)).await;
    let cfg = TestConfig::new().instance(
        instance("acme", 1, &app, &cb)
            .delivery("max_attempts", 1000_u32)
            .delivery("retry_max_interval", "1s"),
    );
    let mut d = Daemon::start(&cfg).await;
    let accts = accounts(N);
    let bodies = notify_each(&d.ingest_url(), &app, &accts).await;
    cb.wait_for(N, Duration::from_secs(30)).await;
    d.kill9();

    // Ids seen while failing, per account.
    let failing_ids: HashMap<String, String> = cb
        .requests()
        .iter()
        .map(|r| (r.account(), r.event_id()))
        .collect();
    cb.set_plan([], Action::Status(200));
    d.restart().await;

    // Every acknowledged notification arrives as its own UPDATED event with its raw body
    // (catch-up UNKNOWN events after the unclean stop may come too; duplicates are allowed).
    let wanted: Vec<(String, serde_json::Value)> = accts
        .iter()
        .zip(&bodies)
        .map(|(a, b)| (a.clone(), serde_json::from_str(b).unwrap()))
        .collect();
    let covered = |reqs: &[Recorded]| {
        wanted.iter().all(|(account, raw)| {
            reqs.iter().any(|r| {
                let m = r.message();
                r.answered == Some(200)
                    && m["accountId"] == account.as_str()
                    && m["events"][0]["eventType"] == "UPDATED"
                    && m["raw"] == *raw
            })
        })
    };
    let reqs = cb
        .wait_until(
            Duration::from_secs(30),
            "every acked event delivered",
            covered,
        )
        .await;
    for r in reqs.iter().filter(|r| r.answered == Some(200)) {
        verify_signatures(r, WHSEC).unwrap();
        let m = r.message();
        if m["events"][0]["eventType"] == "UPDATED"
            && let Some(id) = failing_ids.get(&r.account())
        {
            assert_eq!(&r.event_id(), id, "an event changed its id across kill -9");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_delivery_exits_in_time_and_keeps_the_event() {
    let app = App::new("app-key");
    let cb = FakeCallback::start([], Action::Hang).await;
    let cfg = TestConfig::new()
        .shutdown_timeout("2s")
        .instance(instance("acme", 1, &app, &cb).delivery("timeout", "60s"));
    let mut d = Daemon::start(&cfg).await;
    notify_each(&d.ingest_url(), &app, &accounts(1)).await;
    let first = cb.wait_for(1, Duration::from_secs(15)).await[0].clone();

    d.sigterm();
    let status = d.wait_exit(Duration::from_secs(2 + 10)).await;
    assert!(status.success(), "SIGTERM exit: {status}");

    cb.set_plan([], Action::Status(200));
    d.restart().await;
    let reqs = cb
        .wait_until(Duration::from_secs(20), "a successful redelivery", |r| {
            r.iter().any(|r| r.answered == Some(200))
        })
        .await;
    let redelivered = reqs.iter().find(|r| r.answered == Some(200)).unwrap();
    assert_eq!(redelivered.event_id(), first.event_id());
    assert_eq!(redelivered.account(), first.account());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_an_instance_to_a_new_callback() {
    let app = App::new("app-key");
    let (old, new) = (FakeCallback::ok().await, FakeCallback::ok().await);
    let cfg = TestConfig::new().instance(instance("acme", 1, &app, &old));
    let mut d = Daemon::start(&cfg).await;
    let (a1, a2) = (account_id(), account_id());
    notify_each(&d.ingest_url(), &app, std::slice::from_ref(&a1)).await;
    assert_eq!(
        old.wait_for(1, Duration::from_secs(15)).await[0].account(),
        a1
    );

    let mut moved = cfg.clone();
    moved.instance_mut("acme").callback_url = Some(new.url());
    d.rewrite_config(&moved);
    d.sighup();
    wait_until(Duration::from_secs(10), "config_generation 2", || async {
        d.generation().await == Some(2)
    })
    .await;

    notify_each(&d.ingest_url(), &app, std::slice::from_ref(&a2)).await;
    let reqs = new.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(reqs[0].account(), a2);
    verify_signatures(&reqs[0], WHSEC).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        old.count(),
        1,
        "the old callback got a delivery after the reload"
    );
}

/// A pending event whose stored record does not decode is quarantined: dead-lettered with
/// reason `corrupt` (its bytes kept), while the instance's other events are delivered and the
/// lane carries on; `status` and `/metrics` count it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_record_is_quarantined_and_the_rest_delivered() {
    let app = App::new("app-key");
    let cb = FakeCallback::ok().await;
    // Paused and past its quota after the first event, so that the next ones wait in records
    // of their own (parked), one of which the test damages while the daemon is stopped.
    let cfg = TestConfig::new().instance(
        instance("acme", 1, &app, &cb)
            .delivery("max_queued_bytes", "1B")
            .paused(true),
    );
    let mut d = Daemon::start(&cfg).await;
    let accts = accounts(3);
    notify_each(&d.ingest_url(), &app, &accts).await;
    d.stop().await;
    let stored = pending(&d.store_path());
    assert_eq!(stored.len(), 3, "{stored:?}");
    let victim = stored
        .iter()
        .find(|e| e.account == accts[1])
        .expect("the second account's event");
    let id: ulid::Ulid = victim.id.parse().expect("an event id");
    hookrelay::store::testing::write_raw_event_key(
        &d.store_path(),
        b"r/",
        "acme",
        id,
        b"\x03damaged",
    )
    .expect("damage the parked event's record");

    let mut resumed = cfg.clone();
    let acme = resumed.instance_mut("acme");
    *acme = acme.clone().paused(false);
    d.rewrite_config(&resumed);
    d.restart().await;
    let reqs = cb
        .wait_until(Duration::from_secs(20), "the two readable events", |r| {
            let got: BTreeSet<String> = r.iter().map(Recorded::account).collect();
            got.contains(&accts[0]) && got.contains(&accts[2])
        })
        .await;
    assert!(
        reqs.iter().all(|r| r.account() != accts[1]),
        "the damaged event was delivered"
    );
    wait_until(Duration::from_secs(10), "status to count it", || async {
        let out = d.cli(&["status", "--json"]).await;
        let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
        report["instances"].as_array().is_some_and(|list| {
            list.iter().any(|s| {
                s["instance"] == "acme" && s["quarantined"] == 1 && s["dead_lettered"] == 1
            })
        })
    })
    .await;
    let out = d.cli(&["status"]).await;
    assert!(out.stdout.contains("1 (1 corrupt)"), "{}", out.stdout);
    assert_eq!(
        d.metric(r#"hookrelay_quarantined_total{instance_name="acme"}"#)
            .await,
        Some(1.0),
        "{}",
        d.metrics().await
    );
    // The lane carries on: a new event is delivered too.
    let later = account_id();
    let body = notification_body(&[&later]);
    assert_eq!(
        post_notification(&d.ingest_url(), &app.secret, &body).await,
        200
    );
    cb.wait_until(Duration::from_secs(20), "a later event", |r| {
        r.iter().any(|r| r.account() == later)
    })
    .await;
    d.stop().await;

    assert!(
        pending(&d.store_path()).is_empty(),
        "{:?}",
        pending(&d.store_path())
    );
    let letters = hookrelay::store::inspect::dead_letters(&d.store_path()).expect("dead letters");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].id, victim.id);
    assert_eq!(letters[0].reason.as_deref(), Some("corrupt"));
}
