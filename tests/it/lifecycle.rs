//! The running daemon's lifecycle (docs/operations.md): health endpoints, SIGHUP reloads
//! (valid, invalid, a forbidden `server.listen` change), SIGTERM/SIGINT.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::support::config::free_addr;
use crate::support::daemon::ConfigArg;
use crate::support::dropbox::{account_id, notification_body, post_notification};
use crate::support::http::{get, is_listening};
use crate::support::store::pending;
use crate::support::{Action, App, Daemon, FakeCallback, InstanceConfig, TestConfig, wait_until};

const OK_RELOADS: &str = r#"hookrelay_config_reloads_total{result="ok"}"#;
const FAILED_RELOADS: &str = r#"hookrelay_config_reloads_total{result="error"}"#;

fn config(callback: &str) -> TestConfig {
    TestConfig::new().instance(
        InstanceConfig::new("acme", 1, &App::new("app-key"))
            .callback(callback)
            .coalesce(false),
    )
}

/// Answers the Dropbox challenge on the ingest listener.
async fn ingest_answers(d: &Daemon) -> bool {
    let r = get(&format!("{}?challenge=ping", d.ingest_url())).await;
    r.status == 200 && r.text() == "ping"
}

async fn counter(d: &Daemon, selector: &str) -> f64 {
    // A labelled counter never incremented may be absent from the exposition.
    d.metric(selector).await.unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_health_readiness_and_metrics() {
    let cb = FakeCallback::ok().await;
    let d = Daemon::start(&config(&cb.url())).await;
    assert_eq!(d.healthz().await, 200);
    let (status, body) = d.readyz().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ready"], true, "{body}");
    assert_eq!(body["config_generation"], 1, "{body}");
    assert_eq!(d.metric("hookrelay_config_generation").await, Some(1.0));
    assert_eq!(counter(&d, OK_RELOADS).await, 0.0);
    assert!(ingest_answers(&d).await);
    // stderr is a file here, as it is a pipe to the journal under systemd: no colour codes.
    let logs = d.logs();
    assert!(logs.contains("INFO"), "{logs}");
    assert!(!logs.contains('\u{1b}'), "escape codes in the log\n{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_accepts_config_before_the_command() {
    let cb = FakeCallback::ok().await;
    let d = Daemon::start_with(&config(&cb.url()), ConfigArg::BeforeCommand).await;
    assert_eq!(d.healthz().await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_valid_change_bumps_the_generation() {
    let cb = FakeCallback::ok().await;
    let cfg = config(&cb.url());
    let mut d = Daemon::start(&cfg).await;

    let mut changed = cfg.clone();
    changed.instance_mut("acme").tags = vec!["reloaded".into()];
    let changed = changed
        .instance(InstanceConfig::new("second", 2, &App::new("other-app")).callback(&cb.url()));
    d.rewrite_config(&changed);
    d.sighup();

    wait_until(Duration::from_secs(10), "config_generation 2", || async {
        d.generation().await == Some(2)
    })
    .await;
    let (status, body) = d.readyz().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(d.metric("hookrelay_config_generation").await, Some(2.0));
    assert_eq!(counter(&d, OK_RELOADS).await, 1.0);
    assert_eq!(counter(&d, FAILED_RELOADS).await, 0.0);
    assert!(d.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_an_invalid_file_keeps_the_old_config() {
    let cb = FakeCallback::ok().await;
    let cfg = config(&cb.url());
    let mut d = Daemon::start(&cfg).await;

    // A bad value first, then a file that is not TOML at all.
    let bad = cfg.clone().delivery("timeout", "eventually");
    d.rewrite_config(&bad);
    d.sighup();
    wait_until(Duration::from_secs(10), "one failed reload", || async {
        counter(&d, FAILED_RELOADS).await == 1.0
    })
    .await;
    assert!(d.is_running(), "a bad reload stopped the daemon");
    assert_eq!(d.generation().await, Some(1));
    assert_eq!(d.readyz().await.0, 200);
    assert!(ingest_answers(&d).await);

    d.write_config_text("[server\nthis is not toml");
    d.sighup();
    wait_until(Duration::from_secs(10), "two failed reloads", || async {
        counter(&d, FAILED_RELOADS).await == 2.0
    })
    .await;
    assert!(d.is_running());
    assert_eq!(d.generation().await, Some(1));
    assert_eq!(counter(&d, OK_RELOADS).await, 0.0);
    assert_eq!(d.healthz().await, 200);

    // A good file afterwards is taken.
    d.rewrite_config(&cfg.clone().delivery("timeout", "3s"));
    d.sighup();
    wait_until(Duration::from_secs(10), "config_generation 2", || async {
        d.generation().await == Some(2)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_changing_server_listen_is_rejected() {
    let cb = FakeCallback::ok().await;
    let cfg = config(&cb.url());
    let mut d = Daemon::start(&cfg).await;
    let old_url = d.ingest_url();
    let old_addr = cfg.server_listen;

    let mut moved = cfg.clone();
    moved.server_listen = free_addr();
    let new_addr = moved.server_listen;
    d.rewrite_config(&moved);
    d.sighup();
    wait_until(Duration::from_secs(10), "one failed reload", || async {
        counter(&d, FAILED_RELOADS).await == 1.0
    })
    .await;

    assert!(d.is_running());
    assert_eq!(d.generation().await, Some(1));
    let r = get(&format!("{old_url}?challenge=still")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "still"));
    assert!(is_listening(old_addr).await);
    assert!(
        !is_listening(new_addr).await,
        "the rejected new address is listening"
    );
    // The rejection names the key.
    wait_until(
        Duration::from_secs(5),
        "a log line naming server.listen",
        || async { d.logs().contains("server.listen") },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_0_within_the_shutdown_timeout() {
    let cb = FakeCallback::ok().await;
    let cfg = config(&cb.url()).shutdown_timeout("3s");
    let mut d = Daemon::start(&cfg).await;
    d.sigterm();
    let status = d.wait_exit(Duration::from_secs(3 + 10)).await;
    assert!(status.success(), "SIGTERM exit: {status}\n{}", d.logs());
    assert!(!is_listening(cfg.server_listen).await);
    assert!(!is_listening(cfg.admin_listen).await);
}

/// SIGTERM while a client sends a notification body slowly and a delivery waits for a slow
/// consumer: the stop ends within `shutdown_timeout` (plus the store's close) with exit 0, the
/// slow request is ended at the deadline, and the delivery in flight completes: no attempt the
/// consumer saw is cut short or sent again after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_slow_client_completes_the_delivery_in_flight() {
    const SHUTDOWN: Duration = Duration::from_secs(3);
    // Each attempt takes 1.2 s, so attempts started while stopping would straddle the deadline.
    let cb = FakeCallback::start([], Action::Delayed(Duration::from_millis(1200), 200)).await;
    let app = App::new("app-key");
    let cfg = TestConfig::new().shutdown_timeout("3s").instance(
        InstanceConfig::new("acme", 1, &app)
            .callback(&cb.url())
            .coalesce(false)
            .delivery("concurrency", 1_u32),
    );
    let mut d = Daemon::start(&cfg).await;

    // A client that sends its headers and part of its body, then a byte every 200 ms.
    let mut slow = tokio::net::TcpStream::connect(cfg.server_listen)
        .await
        .expect("connect to the ingest listener");
    let head = format!(
        "POST /events/dropbox HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
         content-length: 1000\r\nx-dropbox-signature: {}\r\n\r\n{{\"list_folder\": ",
        cfg.server_listen,
        "0".repeat(64)
    );
    slow.write_all(head.as_bytes())
        .await
        .expect("send the head");
    let trickle = tokio::spawn(async move {
        for _ in 0..150 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if slow.write_all(b" ").await.is_err() {
                break;
            }
        }
    });

    let accounts: Vec<String> = (0..5).map(|_| account_id()).collect();
    let names: Vec<&str> = accounts.iter().map(String::as_str).collect();
    let body = notification_body(&names);
    assert_eq!(
        post_notification(&d.ingest_url(), &app.secret, &body).await,
        200
    );
    cb.wait_for(1, Duration::from_secs(15)).await;
    let stopping = Instant::now();
    d.sigterm();
    let status = d.wait_exit(SHUTDOWN + Duration::from_secs(10)).await;
    let took = stopping.elapsed();
    trickle.abort();
    assert!(status.success(), "SIGTERM exit: {status}\n{}", d.logs());
    assert!(
        took <= SHUTDOWN + Duration::from_secs(1),
        "the stop took {took:?} with shutdown_timeout = {SHUTDOWN:?}\n{}",
        d.logs()
    );

    // Every attempt the consumer saw before the stop was answered and committed.
    let seen: BTreeSet<String> = cb.requests().iter().map(|r| r.event_id()).collect();
    let left: Vec<String> = pending(&d.store_path())
        .into_iter()
        .map(|e| e.id)
        .filter(|id| seen.contains(id))
        .collect();
    assert!(
        left.is_empty(),
        "deliveries cut short by the stop: {left:?}"
    );

    // The rest are delivered after the restart, and none of those seen before again.
    let before = cb.count();
    d.restart().await;
    let got = cb
        .wait_until(Duration::from_secs(30), "every account delivered", |r| {
            let delivered: BTreeSet<String> = r.iter().map(|r| r.account()).collect();
            accounts.iter().all(|a| delivered.contains(a))
        })
        .await;
    let again: Vec<String> = got[before..]
        .iter()
        .map(|r| r.event_id())
        .filter(|id| seen.contains(id))
        .collect();
    assert!(
        again.is_empty(),
        "delivered again after the restart: {again:?}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_0() {
    let cb = FakeCallback::ok().await;
    let cfg = config(&cb.url()).shutdown_timeout("3s");
    let mut d = Daemon::start(&cfg).await;
    d.sigint();
    let status = d.wait_exit(Duration::from_secs(3 + 10)).await;
    assert!(status.success(), "SIGINT exit: {status}\n{}", d.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_on_the_same_store_and_ports_becomes_ready() {
    let cb = FakeCallback::ok().await;
    let mut d = Daemon::start(&config(&cb.url())).await;
    d.stop().await;
    d.restart().await;
    assert_eq!(d.readyz().await.0, 200);
    d.kill9();
    d.restart().await;
    assert_eq!(d.readyz().await.0, 200);
    d.stop().await;
}
