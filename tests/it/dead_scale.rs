//! Dead-letter administration at scale: a store holding 200,000 dead letters (1,000,000 in the
//! long tier), made offline through the store's own API, then the daemon on it while signed
//! notifications keep arriving, and `dead replay --all` through the CLI.
//!
//! Asserted: the replay puts every letter back (its count, then `status`: nothing dead, all of
//! them queued on the paused instance); every notification sent meanwhile is acknowledged
//! within Dropbox's 10-second deadline (a replay that held the committer for the whole set
//! would keep them waiting, and the watchdog would restart the daemon); the daemon's resident
//! memory grows during the replay by less than 64 MiB beyond sled's cache (`storage.cache_bytes`,
//! which the replayed records fill; a replay that loaded the whole set would grow by its size); `dead list` pages through the set (its first page through the API is one
//! page, and the CLI prints every letter). The ack latencies are printed as figures, not judged.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hookrelay::store::{self, DeadLetter, IngestTarget, OpenMode, Placed, Store, StoreOptions};
use hookrelay::time;
use tokio::sync::Mutex;

use crate::support::dropbox::{account_id, try_post_notification};
use crate::support::http::{client, send};
use crate::support::rng;
use crate::support::{App, Daemon, InstanceConfig, TestConfig};

/// Dropbox's deadline for an answer: a notification not acknowledged by then is retried.
const DROPBOX_DEADLINE: Duration = Duration::from_secs(10);
/// `storage.cache_bytes` (the default): the replayed events are new records, which sled keeps
/// in its cache up to this size. The replay's own share of the growth must stay under 64 MiB
/// on top (one that loaded the whole set would take hundreds: 200,000 records, their journal
/// record and the batch's overlay at once).
const SLED_CACHE_MIB: f64 = 32.0;
/// The bound of a CLI command that pages through the whole set.
const CLI_BOUND: Duration = Duration::from_secs(600);
/// Events one fill request creates (one notification for that many accounts).
const FILL_TARGETS: usize = 500;

/// Fills the store at `path` with `count` dead letters of `instance`, through the store's API
/// (the daemon stopped).
async fn fill_dead_letters(path: &std::path::Path, instance: &str, count: usize) {
    let options = StoreOptions {
        path: path.to_path_buf(),
        cache_bytes: 64 << 20,
        mode: OpenMode::Offline,
        journal_bytes: store::DEFAULT_JOURNAL_BYTES,
    };
    let (store, _) = Store::open(&options, store::fdatasync()).expect("open the store to fill");
    let mut made = 0;
    while made < count {
        let n = FILL_TARGETS.min(count - made);
        let targets = (0..n)
            .map(|i| IngestTarget {
                instance: instance.to_owned(),
                account: format!("dbid:filler{:07}", made + i),
                coalesce: false,
                quota_bytes: u64::MAX,
                changes: false,
            })
            .collect();
        let body =
            Bytes::from_static(br#"{"list_folder": {"accounts": []}, "delta": {"users": [1]}}"#);
        let placed = store
            .ingest(body, time::now_ms(), targets)
            .await
            .expect("ingest");
        let mut deaths = tokio::task::JoinSet::new();
        for placed in placed {
            let Placed::Created(event) = placed else {
                panic!("a fill event was not created: {placed:?}");
            };
            let (store, instance) = (store.clone(), instance.to_owned());
            deaths.spawn(async move {
                let dead = DeadLetter {
                    attempts: 1,
                    reason: "callback answered 410 Gone".into(),
                    last_status: Some(410),
                    last_error: None,
                };
                store.dead_letter(&instance, event.id, dead).await
            });
        }
        while let Some(result) = deaths.join_next().await {
            result.expect("task").expect("dead_letter");
        }
        made += n;
    }
    store.close().await.expect("close the filled store");
}

/// The daemon's resident memory, from `/proc`.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_every_dead_letter_is_paged_and_keeps_ingest_answering() {
    let count = if rng::long_tests() {
        1_000_000
    } else {
        200_000
    };
    let started = Instant::now();
    let app = App::new("app-key");
    let cfg = TestConfig::new().instance(
        InstanceConfig::new("acme", 1, &app)
            .callback("http://127.0.0.1:9/hooks")
            .paused(true)
            .coalesce(false),
    );
    let mut d = Daemon::prepare(&cfg);
    // As the systemd unit runs it: without, glibc gives each of the blocking threads that read
    // the pages an arena of its own, and the figure measures the allocator, not hookrelay.
    d.set_env("MALLOC_ARENA_MAX", "2");
    fill_dead_letters(&d.store_path(), "acme", count).await;
    let filled = started.elapsed();
    d.restart().await;
    let pid = d.pid();
    let rss_started = rss_kib(pid);

    // A listing through the API is a page, not the set; the CLI pages through all of it.
    let page = send(client().get(format!("{}/admin/dead?instance=acme", d.admin_url())))
        .await
        .expect("GET /admin/dead");
    assert_eq!(page.status, 200);
    let page: Vec<serde_json::Value> = serde_json::from_slice(&page.body).expect("a JSON page");
    assert_eq!(page.len(), 1_000, "the first page of {count} dead letters");
    let listed = d
        .cli_within(&["dead", "list", "--instance", "acme", "--json"], CLI_BOUND)
        .await;
    assert_eq!(listed.code(), Some(0), "{listed:?}");
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&listed.stdout).expect("one JSON array");
    let distinct: std::collections::HashSet<&str> =
        listed.iter().filter_map(|l| l["id"].as_str()).collect();
    assert_eq!(
        (listed.len(), distinct.len()),
        (count, count),
        "dead list printed {} letters ({} distinct) of {count}",
        listed.len(),
        distinct.len()
    );

    // Load while the replay runs: one sender, a notification every 10 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let refused = Arc::new(AtomicU64::new(0));
    let sender = {
        let (url, secret, stop, latencies, refused) = (
            d.ingest_url(),
            app.secret.clone(),
            stop.clone(),
            latencies.clone(),
            refused.clone(),
        );
        tokio::spawn(async move {
            let account = account_id();
            let body = format!(
                "{{\"list_folder\": {{\"accounts\": [\"{account}\"]}}, \"delta\": {{\"users\": [7]}}}}"
            );
            while !stop.load(Ordering::SeqCst) {
                let sent = Instant::now();
                match try_post_notification(&url, &secret, &body).await {
                    Ok(200) => latencies.lock().await.push(sent.elapsed()),
                    _ => {
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_kib(pid);
    let mut rss_peak = rss_before;
    let replay_started = Instant::now();
    let replay = {
        let d = &d;
        let watch = async {
            loop {
                rss_peak = rss_peak.max(rss_kib(pid));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::select! {
            out = d.cli_within(&["dead", "replay", "--all"], CLI_BOUND) => out,
            () = watch => unreachable!("the watch loop never ends"),
        }
    };
    let replay_time = replay_started.elapsed();
    rss_peak = rss_peak.max(rss_kib(pid));
    stop.store(true, Ordering::SeqCst);
    sender.await.expect("the sender");
    assert_eq!(replay.code(), Some(0), "{replay:?}\n{}", d.logs());
    assert!(
        replay
            .stdout
            .contains(&format!("replayed {count} dead letter")),
        "{replay:?}"
    );

    let status = d.cli(&["status", "--json"]).await;
    let status: serde_json::Value = serde_json::from_str(&status.stdout).expect("status JSON");
    let acme = &status["instances"][0];
    assert_eq!(acme["dead_lettered"], 0, "{acme}");
    assert!(
        acme["queued"].as_u64().unwrap_or(0) + acme["held"].as_u64().unwrap_or(0) >= count as u64,
        "{acme}"
    );
    d.stop().await;

    let mut latencies = latencies.lock().await.clone();
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let growth_mib = rss_peak.saturating_sub(rss_before) as f64 / 1024.0;
    println!(
        "dead letters at scale figures: letters={count} fill={filled:.1?} replay={replay_time:.1?} \
         acks_during_replay={} refused={} ack_p50={:?} ack_p99={:?} ack_max={:?} \
         rss_at_start={} MiB rss_before={} MiB rss_peak={} MiB growth={growth_mib:.1} MiB",
        latencies.len(),
        refused.load(Ordering::SeqCst),
        at(0.5),
        at(0.99),
        at(1.0),
        rss_started / 1024,
        rss_before / 1024,
        rss_peak / 1024,
    );
    assert!(!latencies.is_empty(), "no notification was acknowledged");
    assert_eq!(refused.load(Ordering::SeqCst), 0, "notifications refused");
    assert!(
        at(1.0) < DROPBOX_DEADLINE,
        "a notification waited {:?} for its 200 during the replay",
        at(1.0)
    );
    assert!(
        growth_mib < 64.0 + SLED_CACHE_MIB,
        "the daemon grew by {growth_mib:.1} MiB while replaying {count} dead letters"
    );
}
