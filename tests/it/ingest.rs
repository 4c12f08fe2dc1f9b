//! The Dropbox-facing listener (docs/protocol.md): the challenge, signature checks, size and shape
//! checks, fan-out to instances, and "200 only once durable" across `kill -9`.
//!
//! Instances here are paused (`paused = true`) so events stay in the store for inspection
//! once the daemon has stopped.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::dropbox::{
    account_id, notification_body, post_notification, post_raw, sign, try_post_notification,
};
use crate::support::http::{client, get, send};
use crate::support::store::{count_by_instance_account, pending};
use crate::support::{App, Daemon, InstanceConfig, TestConfig, wait_until};

/// A callback URL nothing listens on (instances here are paused anyway).
const NOWHERE: &str = "http://127.0.0.1:9/hooks";

fn paused(name: &str, id: u64, app: &App) -> InstanceConfig {
    InstanceConfig::new(name, id, app)
        .callback(NOWHERE)
        .paused(true)
        .coalesce(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenge_is_echoed_as_plain_text() {
    let d = Daemon::start(&TestConfig::new().instance(paused("a", 1, &App::new("k")))).await;
    let r = get(&format!("{}?challenge=abc", d.ingest_url())).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "abc");
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("text/plain"), "Content-Type {ct:?}");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));

    // Exactly 1 KiB is still answered.
    let long = "x".repeat(1024);
    let r = get(&format!("{}?challenge={long}", d.ingest_url())).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), long);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenge_missing_or_too_long_is_400() {
    let d = Daemon::start(&TestConfig::new().instance(paused("a", 1, &App::new("k")))).await;
    for query in [
        String::new(),
        "?other=1".into(),
        format!("?challenge={}", "y".repeat(1025)),
    ] {
        let r = get(&format!("{}{query}", d.ingest_url())).await;
        assert_eq!(r.status, 400, "GET …{}", &query[..query.len().min(40)]);
        assert!(
            !r.text().contains("yyyy"),
            "an over-long challenge was reflected"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_notification_is_acknowledged_and_stored() {
    let app = App::new("app-key");
    let mut d = Daemon::start(&TestConfig::new().instance(paused("acme", 1, &app))).await;
    let (a1, a2) = (account_id(), account_id());
    let body1 = notification_body(&[&a1]);
    let r = post_raw(
        &d.ingest_url(),
        &[
            ("Content-Type", "application/json"),
            ("X-Dropbox-Signature", &sign(&app.secret, body1.as_bytes())),
        ],
        body1.clone().into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty(), "200 with a body: {:?}", r.text());

    // Either case of hex is accepted.
    let body2 = notification_body(&[&a2]);
    let upper = sign(&app.secret, body2.as_bytes()).to_uppercase();
    let r = post_raw(
        &d.ingest_url(),
        &[("X-Dropbox-Signature", &upper)],
        body2.clone().into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "upper-case hex signature refused");

    d.stop().await;
    let mut events = pending(&d.store_path());
    events.sort_by_key(|e| e.account != a1);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].instance, "acme");
    assert_eq!(events[0].account, a1);
    assert_eq!(
        events[0].raw_str(),
        body1,
        "raw is not the notification verbatim"
    );
    assert_eq!(events[0].attempts, 0);
    assert_eq!(events[1].account, a2);
    assert_eq!(events[1].raw_str(), body2);
    assert_ne!(events[0].id, events[1].id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_store_nothing() {
    let app = App::new("app-key");
    let other = App::new("other-app");
    let cfg = TestConfig::new()
        .max_body_bytes("1KiB")
        .instance(paused("acme", 1, &app));
    let mut d = Daemon::start(&cfg).await;
    let url = d.ingest_url();

    let body = notification_body(&[&account_id()]);
    let good_sig = sign(&app.secret, body.as_bytes());
    let many: Vec<String> = (0..40).map(|_| account_id()).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let oversize = notification_body(&many);
    assert!(oversize.len() > 1024);
    let no_accounts = r#"{"delta": {"users": [12345]}}"#.to_owned();
    let not_strings =
        r#"{"list_folder": {"accounts": [1, 2]}, "delta": {"users": [12345]}}"#.to_owned();
    let accounts_not_array = r#"{"list_folder": {"accounts": "dbid:x"}}"#.to_owned();
    let not_json = "list_folder=accounts".to_owned();

    let good = |b: &str| Some(sign(&app.secret, b.as_bytes()));
    let reserialised = body.replace(": ", ":").replace(", ", ",");
    // (what, X-Dropbox-Signature, body, expected status)
    let cases: [(&str, Option<String>, &str, u16); 12] = [
        ("no signature", None, &body, 403),
        (
            "wrong secret",
            Some(sign(&other.secret, body.as_bytes())),
            &body,
            403,
        ),
        ("signature of another body", good("{}"), &body, 403),
        ("not hex", Some("zz".repeat(32)), &body, 403),
        ("empty signature", Some(String::new()), &body, 403),
        (
            "truncated signature",
            Some(good_sig[..62].to_owned()),
            &body,
            403,
        ),
        (
            "body re-serialised after signing",
            Some(good_sig.clone()),
            &reserialised,
            403,
        ),
        ("oversize", good(&oversize), &oversize, 413),
        ("not JSON", good(&not_json), &not_json, 400),
        (
            "no list_folder.accounts",
            good(&no_accounts),
            &no_accounts,
            400,
        ),
        (
            "accounts not strings",
            good(&not_strings),
            &not_strings,
            400,
        ),
        (
            "accounts not an array",
            good(&accounts_not_array),
            &accounts_not_array,
            400,
        ),
    ];
    for (what, signature, body, want) in cases {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(sig) = &signature {
            headers.push(("X-Dropbox-Signature", sig));
        }
        let r = post_raw(&url, &headers, body.as_bytes().to_vec())
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(r.status, want, "{what}: got {} {:?}", r.status, r.text());
    }

    d.stop().await;
    let events = pending(&d.store_path());
    assert!(
        events.is_empty(),
        "refused requests stored events: {events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_fan_out_by_app_and_account_filter() {
    let app_a = App::new("app-a");
    let app_b = App::new("app-b");
    let (x, y, z) = (account_id(), account_id(), account_id());
    let cfg = TestConfig::new()
        .instance(paused("a-all", 1, &app_a))
        .instance(paused("a-only-x", 2, &app_a).accounts(&[&x]))
        .instance(paused("b-all", 3, &app_b));
    let mut d = Daemon::start(&cfg).await;
    let url = d.ingest_url();

    let sent = [
        (&app_a, notification_body(&[&x, &y])),
        (&app_a, notification_body(&[&y])),
        (&app_b, notification_body(&[&z])),
        (&app_b, notification_body(&[&x])),
    ];
    for (app, body) in &sent {
        assert_eq!(
            post_notification(&url, &app.secret, body).await,
            200,
            "{body}"
        );
    }

    d.stop().await;
    let events = pending(&d.store_path());
    let counts = count_by_instance_account(&events);
    let key = |i: &str, a: &str| (i.to_owned(), a.to_owned());
    let expected: BTreeMap<(String, String), usize> = [
        (key("a-all", &x), 1),
        (key("a-all", &y), 2),
        (key("a-only-x", &x), 1),
        (key("b-all", &z), 1),
        (key("b-all", &x), 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(counts, expected, "events: {events:?}");
    // Every event carries the whole notification it came from.
    for e in &events {
        assert!(
            sent.iter().any(|(_, b)| b.as_bytes() == e.raw.as_slice()),
            "raw of {e:?} is none of the notifications"
        );
        assert!(e.raw_str().contains(&e.account));
    }
    let ids: HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), events.len(), "event ids repeat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrouted_notifications_are_acknowledged_and_not_stored() {
    let app = App::new("app-key");
    let known = account_id();
    let cfg = TestConfig::new()
        .instance(paused("filtered", 1, &app).accounts(&[&known]))
        // A disabled instance of the same app for every account: not a destination.
        .instance(InstanceConfig::new("disabled", 2, &app).enabled(false));
    let mut d = Daemon::start(&cfg).await;
    let url = d.ingest_url();

    let stranger = notification_body(&[&account_id()]);
    assert_eq!(post_notification(&url, &app.secret, &stranger).await, 200);
    let none = notification_body(&[]);
    assert_eq!(post_notification(&url, &app.secret, &none).await, 200);
    let team = r#"{"list_folder": {"teams": {"dbtid:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA": ["dbmid:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"]}}, "delta": {"teams": {"dbtid:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA": ["dbmid:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"]}}}"#;
    assert_eq!(
        post_notification(&url, &app.secret, team).await,
        200,
        "a team-shaped notification is acknowledged"
    );

    d.stop().await;
    let events = pending(&d.store_path());
    assert!(
        events.is_empty(),
        "unrouted notifications stored: {events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_post_elsewhere_are_not_accepted() {
    let app = App::new("app-key");
    let d = Daemon::start(&TestConfig::new().instance(paused("acme", 1, &app))).await;
    let body = notification_body(&[&account_id()]);
    let base = format!("http://{}", d.config().server_listen);
    let r = send(
        client()
            .post(format!("{base}/events/other"))
            .header("X-Dropbox-Signature", sign(&app.secret, body.as_bytes()))
            .body(body),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404);
    let r = send(client().put(d.ingest_url()).body("x")).await.unwrap();
    assert!(
        r.status == 405 || r.status == 404,
        "PUT answered {}",
        r.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_notification_survives_kill_9() {
    const SENDERS: usize = 8;
    const PER_SENDER: usize = 60;
    const KILL_AFTER: usize = 200;

    let app = App::new("app-key");
    let mut d = Daemon::start(&TestConfig::new().instance(paused("acme", 1, &app))).await;
    let url = d.ingest_url();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let acked_count = Arc::new(AtomicUsize::new(0));
    let refused: Arc<Mutex<Vec<u16>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));

    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..SENDERS {
        let (url, secret) = (url.clone(), app.secret.clone());
        let (acked, acked_count, refused, stop) = (
            acked.clone(),
            acked_count.clone(),
            refused.clone(),
            stop.clone(),
        );
        senders.spawn(async move {
            for _ in 0..PER_SENDER {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let body = notification_body(&[&account_id()]);
                match try_post_notification(&url, &secret, &body).await {
                    Ok(200) => {
                        acked.lock().unwrap().push(body);
                        acked_count.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(other) => refused.lock().unwrap().push(other),
                    // The daemon is gone.
                    Err(_) => break,
                }
            }
        });
    }

    wait_until(
        Duration::from_secs(60),
        "200 acknowledged notifications",
        || async { acked_count.load(Ordering::SeqCst) >= KILL_AFTER },
    )
    .await;
    // Killed while the senders are still sending: requests in flight are not acknowledged.
    d.kill9();
    stop.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(30), async {
        while senders.join_next().await.is_some() {}
    })
    .await
    .expect("senders finish once the daemon is gone");
    assert!(
        refused.lock().unwrap().is_empty(),
        "notifications refused before the kill: {:?}",
        refused.lock().unwrap()
    );

    // Recover (the daemon's own restart), stop cleanly, inspect.
    d.restart().await;
    d.stop().await;
    let events = pending(&d.store_path());
    let stored: HashSet<&[u8]> = events.iter().map(|e| e.raw.as_slice()).collect();
    let acked = acked.lock().unwrap();
    let missing: Vec<&String> = acked
        .iter()
        .filter(|b| !stored.contains(b.as_bytes()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged notifications lost after kill -9, e.g. {}",
        missing.len(),
        acked.len(),
        missing[0]
    );
}
