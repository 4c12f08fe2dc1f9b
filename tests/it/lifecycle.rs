//! The running daemon's lifecycle (SPEC §3 reload rules, §7): health endpoints, SIGHUP reloads
//! (valid, invalid, a forbidden `server.listen` change), SIGTERM/SIGINT.

use std::time::Duration;

use crate::support::config::free_addr;
use crate::support::daemon::ConfigArg;
use crate::support::http::{get, is_listening};
use crate::support::{App, Daemon, FakeCallback, InstanceConfig, TestConfig, wait_until};

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
    // The rejection names the key (SPEC §3).
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
