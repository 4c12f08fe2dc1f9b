//! Reload under load: signed notifications at a modest rate from 4 senders while the daemon gets
//! SIGHUP again and again, alternating valid changes (tags, rate limit) with invalid files (bad
//! TOML, an unknown key, a changed `server.listen`, an unreadable secret file — a directory in its
//! place, since the tests run as root).
//!
//! Every ingest request is answered 200, every acknowledged notification is delivered, each
//! invalid reload leaves the generation alone and counts one error, each valid one bumps the
//! generation, and each SIGHUP shows `RELOADING=1` + `MONOTONIC_USEC` then `READY=1` on a
//! `NOTIFY_SOCKET` the test owns. CI: 30 SIGHUPs; long tier: 100.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::callback::verify_signatures;
use crate::support::config::free_addr;
use crate::support::daemon::ConfigArg;
use crate::support::dropbox::{account_id, notification_body, try_post_notification};
use crate::support::notify::{NotifySocket, monotonic_usec};
use crate::support::store::pending;
use crate::support::{App, Daemon, FakeCallback, InstanceConfig, Recorded, TestConfig, tier};

const WHSEC: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const GENERATION: &str = "hookrelay_config_generation";
const OK_RELOADS: &str = r#"hookrelay_config_reloads_total{result="ok"}"#;
const FAILED_RELOADS: &str = r#"hookrelay_config_reloads_total{result="error"}"#;
const SECRET_FILE: &str = "app-secret";
/// A directory where a secret file should be: reading it fails even for root.
const SECRET_DIR: &str = "secret-is-a-directory";

fn base(app: &App, callback: &FakeCallback, tags: &[&str], rate: &str) -> TestConfig {
    variant(&TestConfig::new(), app, callback, tags, rate)
}

/// `cfg` (its ports) with the one instance having these tags and this rate limit.
fn variant(
    cfg: &TestConfig,
    app: &App,
    callback: &FakeCallback,
    tags: &[&str],
    rate: &str,
) -> TestConfig {
    let mut cfg = cfg.clone();
    cfg.instances.clear();
    cfg.instance(
        InstanceConfig::new("acme", 1, app)
            .callback(&callback.url())
            .signature_key(WHSEC)
            .coalesce(false)
            .tags(tags)
            .delivery("rate_limit", rate)
            .delivery("rate_limit_burst", 200_u32),
    )
}

/// The file's text with the app secret as `{ file = "<secret_file>" }`.
fn render(cfg: &TestConfig, app: &App, secret_file: &str) -> String {
    let text = cfg.to_toml();
    let inline = format!(
        "\"oauth.api.secret\" = {}",
        serde_json::to_string(&app.secret).expect("JSON string")
    );
    assert!(text.contains(&inline), "{text}");
    text.replace(
        &inline,
        &format!("\"oauth.api.secret\" = {{ file = \"{secret_file}\" }}"),
    )
}

async fn counter(d: &Daemon, selector: &str) -> f64 {
    d.metric(selector).await.unwrap_or(0.0)
}

/// One SIGHUP's file.
#[derive(Debug, Clone, Copy)]
enum Change {
    Tags,
    Rate,
    BadToml,
    UnknownKey,
    ServerListen,
    UnreadableSecret,
}

impl Change {
    fn valid(self) -> bool {
        matches!(self, Change::Tags | Change::Rate)
    }

    /// The i-th SIGHUP: valid and invalid alternate, each kind in turn.
    fn nth(i: usize) -> Change {
        const INVALID: [Change; 4] = [
            Change::BadToml,
            Change::UnknownKey,
            Change::ServerListen,
            Change::UnreadableSecret,
        ];
        if i.is_multiple_of(2) {
            if i.is_multiple_of(4) {
                Change::Tags
            } else {
                Change::Rate
            }
        } else {
            INVALID[(i / 2) % INVALID.len()]
        }
    }
}

/// What the load generator saw.
#[derive(Default)]
struct Load {
    acked: Vec<String>,
    failures: Vec<String>,
    latencies: Vec<Duration>,
}

/// 4 senders, each starting a request every `4 / rate` seconds (not waiting for the previous
/// answer, so the rate holds whatever the latency), until `stop`.
fn spawn_load(
    url: String,
    secret: String,
    rate: u32,
    stop: Arc<AtomicBool>,
    load: Arc<Mutex<Load>>,
) -> tokio::task::JoinSet<()> {
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (url, secret, stop, load) = (url.clone(), secret.clone(), stop.clone(), load.clone());
        senders.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(4.0 / f64::from(rate)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let deadline = Instant::now() + Duration::from_secs(300);
            let mut requests = tokio::task::JoinSet::new();
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                tick.tick().await;
                let (url, secret, load) = (url.clone(), secret.clone(), load.clone());
                requests.spawn(async move {
                    let account = account_id();
                    let started = Instant::now();
                    let result =
                        try_post_notification(&url, &secret, &notification_body(&[&account])).await;
                    let took = started.elapsed();
                    let mut load = load.lock().unwrap();
                    load.latencies.push(took);
                    match result {
                        Ok(200) => load.acked.push(account),
                        Ok(status) => load.failures.push(format!("{account}: {status}")),
                        Err(e) => load.failures.push(format!("{account}: {e}")),
                    }
                });
                while requests.try_join_next().is_some() {}
            }
            while let Some(r) = requests.join_next().await {
                r.expect("a request task panicked");
            }
        });
    }
    senders
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_under_load_keeps_every_request_and_event() {
    let reloads = tier(30, 100);
    let rate = 150;
    let app = App::new("app-key");
    let cb = FakeCallback::ok().await;
    let cfg = base(&app, &cb, &["gen1"], "2000/s");
    let mut notify = NotifySocket::bind();
    let first_text = render(&cfg, &app, SECRET_FILE);
    let secret = app.secret.clone();
    let d = Daemon::start_full(
        &cfg,
        ConfigArg::AfterCommand,
        &[("NOTIFY_SOCKET", notify.path())],
        |dir| {
            let path = dir.join(SECRET_FILE);
            std::fs::write(&path, format!("{secret}\n")).expect("writing the secret file");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .expect("chmod 600");
            std::fs::create_dir(dir.join(SECRET_DIR)).expect("a directory for a secret");
            std::fs::write(dir.join("config.toml"), &first_text).expect("writing config.toml");
        },
    )
    .await;
    notify
        .until(Duration::from_secs(20), "READY=1 at start", |m| {
            m == "READY=1"
        })
        .await;
    assert_eq!(counter(&d, GENERATION).await, 1.0);

    let stop = Arc::new(AtomicBool::new(false));
    let load = Arc::new(Mutex::new(Load::default()));
    let mut senders = spawn_load(
        d.ingest_url(),
        app.secret.clone(),
        rate,
        stop.clone(),
        load.clone(),
    );
    let load_started = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut generation = 1.0;
    let (mut ok, mut errors) = (0.0, 0.0);
    let mut reload_times = Vec::new();
    for i in 0..reloads {
        let change = Change::nth(i);
        let text = match change {
            Change::Tags => render(
                &variant(
                    &cfg,
                    &app,
                    &cb,
                    &[&format!("gen{}", generation as u64 + 1)],
                    "2000/s",
                ),
                &app,
                SECRET_FILE,
            ),
            Change::Rate => render(
                &variant(
                    &cfg,
                    &app,
                    &cb,
                    &[&format!("gen{}", generation as u64 + 1)],
                    "1500/s",
                ),
                &app,
                SECRET_FILE,
            ),
            Change::BadToml => format!("{first_text}\n[[instance]\nname = \"broken"),
            Change::UnknownKey => {
                render(&cfg.clone().delivery("colour", "blue"), &app, SECRET_FILE)
            }
            Change::ServerListen => {
                let mut moved = cfg.clone();
                moved.server_listen = free_addr();
                render(&moved, &app, SECRET_FILE)
            }
            Change::UnreadableSecret => render(&cfg, &app, SECRET_DIR),
        };
        d.write_config_text(&text);
        let before = monotonic_usec();
        let sent = Instant::now();
        d.sighup();
        let reloading = notify
            .until(
                Duration::from_secs(10),
                &format!("RELOADING=1 for SIGHUP {i}"),
                |m| m.starts_with("RELOADING=1"),
            )
            .await;
        let usec: u64 = reloading
            .lines()
            .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("SIGHUP {i}: no MONOTONIC_USEC in {reloading:?}"));
        let after = monotonic_usec();
        assert!(
            before <= usec && usec <= after,
            "SIGHUP {i}: MONOTONIC_USEC {usec} not in [{before}, {after}]"
        );
        notify
            .until(
                Duration::from_secs(10),
                &format!("READY=1 after SIGHUP {i}"),
                |m| m == "READY=1",
            )
            .await;
        reload_times.push(sent.elapsed());
        if change.valid() {
            generation += 1.0;
            ok += 1.0;
        } else {
            errors += 1.0;
        }
        let metrics = d.metrics().await;
        let value = |s: &str| crate::support::metrics::metric_value(&metrics, s).unwrap_or(0.0);
        assert_eq!(
            (value(GENERATION), value(OK_RELOADS), value(FAILED_RELOADS)),
            (generation, ok, errors),
            "after SIGHUP {i} ({change:?}): (generation, ok, error)"
        );
        assert_eq!(
            d.readyz().await.0,
            200,
            "not ready after SIGHUP {i} ({change:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A last valid change is in force once READY=1 is seen: new events carry its tag.
    let last_tag = "final";
    d.write_config_text(&render(
        &variant(&cfg, &app, &cb, &[last_tag], "2000/s"),
        &app,
        SECRET_FILE,
    ));
    d.sighup();
    notify
        .until(Duration::from_secs(10), "RELOADING=1 (last)", |m| {
            m.starts_with("RELOADING=1")
        })
        .await;
    notify
        .until(Duration::from_secs(10), "READY=1 (last)", |m| {
            m == "READY=1"
        })
        .await;
    let final_mark = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;

    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(r) = senders.join_next().await {
            r.expect("a sender panicked");
        }
    })
    .await
    .expect("the senders stop");
    let load_time = load_started.elapsed();
    let (acked, failures, mut latencies) = {
        let load = load.lock().unwrap();
        (
            load.acked.clone(),
            load.failures.clone(),
            load.latencies.clone(),
        )
    };
    assert!(
        failures.is_empty(),
        "{} of {} ingest requests failed during reloads, e.g. {:?}",
        failures.len(),
        failures.len() + acked.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        acked.len() >= 100,
        "only {} notifications sent",
        acked.len()
    );

    // Every acknowledged notification is delivered, with valid signatures.
    let wanted: BTreeSet<String> = acked.iter().cloned().collect();
    let reqs = cb
        .wait_until(
            Duration::from_secs(60),
            "every acked notification delivered",
            |reqs| {
                let got: BTreeSet<String> = reqs.iter().map(Recorded::account).collect();
                wanted.is_subset(&got)
            },
        )
        .await;
    for r in &reqs {
        verify_signatures(r, WHSEC).unwrap_or_else(|e| panic!("a corrupted delivery: {e}"));
    }
    // Deliveries of notifications sent after the last READY=1 carry the last tag.
    let late: Vec<&Recorded> = reqs
        .iter()
        .filter(|r| r.at > final_mark + Duration::from_millis(200))
        .collect();
    assert!(!late.is_empty(), "nothing delivered after the last reload");
    for r in late {
        assert_eq!(r.message()["instanceTags"], serde_json::json!([last_tag]));
    }

    latencies.sort();
    let sighups = reload_times.len();
    reload_times.sort();
    eprintln!(
        "reload under load: {sighups} SIGHUPs (+1 final) in {load_time:?}; {} notifications \
         acked at ~{:.0}/s, 0 failed; ingest latency p50 {:?} p99 {:?} max {:?}; SIGHUP → READY=1 \
         p50 {:?} max {:?}; {} deliveries for {} acked",
        acked.len(),
        acked.len() as f64 / load_time.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
        percentile(&reload_times, 0.5),
        reload_times.last().copied().unwrap_or_default(),
        reqs.len(),
        acked.len()
    );

    let mut d = d;
    d.stop().await;
    assert!(pending(&d.store_path()).is_empty(), "events left pending");
}
