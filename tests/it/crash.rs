//! Crash and power-loss loops (the at-least-once guarantee across `kill -9` and power loss):
//! signed load from concurrent senders, two instances delivering to callbacks that are up but
//! answer some 500s, a third whose callback refuses every event for good (410: dead letters,
//! replayed and purged through the admin API during the loop), a fourth that turns the first
//! account's notifications into change events (`events = "changes"`: walks of a fake Dropbox
//! API, seven entries a page, while the loop adds files there), and at a random moment
//! U(0.2 s, 1.5 s) after every (re)start (once `/readyz` answers 200) a fault:
//! - **kill -9**: the process dies, the page cache keeps every write;
//! - **power cut**: the store lives on `powerfs` (tests/powerfs), a FUSE file system that keeps
//!   what each `fsync`/`fdatasync` made durable; after the kill, every file is put back to its
//!   last synced contents and names not made durable by a sync of their folder are dropped, or,
//!   in half the cuts (seeded), also keeps a random subset of the pages written since the last
//!   sync, the last one torn. The daemon then starts on that image.
//!
//! After every fault the daemon must start (the store opens, `/readyz` answers 200). A history
//! verifier then checks that every (notification acknowledged 200, instance) of the first two
//! instances was delivered (a 2xx from its callback) or dead-lettered, and that every file added
//! to the fake Dropbox was delivered as a change event.
//!
//! Each notification carries a unique marker (`delta.users[0]`, which hookrelay forwards
//! verbatim in `message.raw`); one in five also carries padding that takes it to 16–90 KiB
//! (`server.max_body_bytes` is 96 KiB), so that sled writes some tree nodes as blob files.
//! Accounts come from a small fixed set so the catch-up `UNKNOWN` events queued after every
//! unclean stop stay few. The verifier ignores those.
//!
//! The figures count the starts that applied the store's journal (batches acknowledged but not
//! yet written by sled); a loop fails if none did, since it would then not test that path.
//!
//! Short tier: 30 kill cycles, 20 power cuts. Long tier (`HOOKRELAY_LONG_TESTS=1`): 300 of
//! each. The seed is printed; `HOOKRELAY_SEED=<seed>` replays the same fault schedule, account
//! choice, body sizes and 500 pattern (timing still differs from run to run). Figures are
//! printed with `--nocapture`.

use std::collections::{HashMap, HashSet};

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use hyper::{Request, Response};

use std::path::PathBuf;

use powerfs::{Loss, PowerFs};

use crate::support::dropbox::{account_id, try_post_notification};
use crate::support::fake_api::{FakeDropboxApi, REFRESH_TOKEN};
use crate::support::http::{client, send, wait_until};
use crate::support::rng::{self, XorShift};
use crate::support::server::{TestResponse, TestServer};
use crate::support::store::{StoredEvent, dead, pending};
use crate::support::{App, Daemon, InstanceConfig, TestConfig};

/// Concurrent senders and the pace of each (8 × 40/s ≈ 320 notifications/s offered).
const SENDERS: usize = 8;
const SENDER_PERIOD: Duration = Duration::from_millis(25);
/// Accounts the notifications name (catch-up queues one event per instance and account).
const ACCOUNTS: usize = 4;
const KILL_AFTER_MIN: Duration = Duration::from_millis(200);
const KILL_AFTER_MAX: Duration = Duration::from_millis(1500);
/// What the daemon logs when it starts by applying journal records sled had not written: each
/// such start is a recovery that sled alone would have got wrong.
const JOURNAL_APPLIED: &str = "applied the journal's batches after a crash";
/// The two instances, their callbacks' share of 500 answers during the loop.
const STEADY: (&str, u32) = ("steady", 5);
const FLAKY: (&str, u32) = ("flaky", 30);

/// A Dropbox notification for `account` whose `delta.users[0]` is the marker, padded to the
/// marker's size ([`padding`]).
fn marked_body(account: &str, marker: u64) -> String {
    let pad = "p".repeat(padding(marker));
    format!(
        "{{\"list_folder\": {{\"accounts\": [\"{account}\"]}}, \"delta\": {{\"users\": [{marker}]}}, \"pad\": \"{pad}\"}}"
    )
}

/// The padding a marker's notification carries: none for four markers in five, 16–90 KiB for
/// the fifth (a function of the marker, so that the callback can rebuild the body it expects).
fn padding(marker: u64) -> usize {
    if !marker.is_multiple_of(5) {
        return 0;
    }
    let spread = marker.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
    16 * 1024 + (spread % (74 * 1024)) as usize
}

/// The marker of a notification body (`delta.users[0]`), if it has one.
fn marker_of_raw(raw: &serde_json::Value) -> Option<u64> {
    raw["delta"]["users"][0].as_u64()
}

// === the consumer side: a compact recording callback ===

/// What the callbacks saw, aggregated (a full request log would not fit a 300-cycle run).
#[derive(Default)]
struct Deliveries {
    /// (marker, instance) → attempts answered 200.
    ok: HashMap<(u64, String), u32>,
    /// Event ids answered 200 per (marker, instance): more than one means a re-ingested copy.
    ids: HashMap<(u64, String), HashSet<String>>,
    /// Attempts answered 500 (UPDATED events).
    refused: u64,
    /// Catch-up events (`UNKNOWN`) answered 200 / 500.
    unknown_ok: u64,
    unknown_refused: u64,
    /// Bodies that were not an envelope with a marker.
    unparsable: u64,
    /// UPDATED events whose `raw` is not the notification that was sent (corruption).
    raw_mismatch: u64,
}

struct RecorderState {
    fail_percent: AtomicU32,
    rng: Mutex<XorShift>,
    deliveries: Mutex<Deliveries>,
}

/// A consumer endpoint that answers 200, or 500 for `fail_percent` % of requests (seeded), and
/// records per (marker, instance) how often it answered 200.
struct Recorder {
    state: Arc<RecorderState>,
    server: TestServer,
}

impl Recorder {
    async fn start(fail_percent: u32, rng: XorShift) -> Recorder {
        let state = Arc::new(RecorderState {
            fail_percent: AtomicU32::new(fail_percent),
            rng: Mutex::new(rng),
            deliveries: Mutex::default(),
        });
        let served = state.clone();
        let server = TestServer::start("the recording callback", move |req| {
            record(served.clone(), req)
        })
        .await;
        Recorder { state, server }
    }

    fn url(&self) -> String {
        format!("http://{}/hooks/dropbox", self.server.addr())
    }

    fn set_fail_percent(&self, percent: u32) {
        self.state.fail_percent.store(percent, Ordering::SeqCst);
    }

    fn delivered(&self, marker: u64, instance: &str) -> bool {
        let deliveries = self.state.deliveries.lock().unwrap();
        deliveries.ok.contains_key(&(marker, instance.to_owned()))
    }
}

async fn record(state: Arc<RecorderState>, req: Request<Incoming>) -> TestResponse {
    let body = match tokio::time::timeout(Duration::from_secs(10), req.into_body().collect()).await
    {
        Ok(Ok(collected)) => collected.to_bytes(),
        _ => Bytes::new(),
    };
    let fail = {
        let percent = state.fail_percent.load(Ordering::SeqCst);
        state.rng.lock().unwrap().percent(percent)
    };
    let status = if fail { 500 } else { 200 };
    let envelope: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let message = &envelope["message"];
    let instance = message["instanceName"].as_str().map(str::to_owned);
    let event_type = message["events"][0]["eventType"].as_str();
    let event_id = message["eventId"].as_str().unwrap_or_default().to_owned();
    {
        let mut d = state.deliveries.lock().unwrap();
        match (event_type, instance, marker_of_raw(&message["raw"])) {
            (Some("UNKNOWN"), _, _) if fail => d.unknown_refused += 1,
            (Some("UNKNOWN"), _, _) => d.unknown_ok += 1,
            (Some("UPDATED"), Some(instance), Some(marker)) => {
                let account = message["accountId"].as_str().unwrap_or_default();
                let sent: serde_json::Value =
                    serde_json::from_str(&marked_body(account, marker)).unwrap_or_default();
                if message["raw"] != sent {
                    d.raw_mismatch += 1;
                }
                if fail {
                    d.refused += 1;
                } else {
                    let key = (marker, instance);
                    *d.ok.entry(key.clone()).or_default() += 1;
                    d.ids.entry(key).or_default().insert(event_id);
                }
            }
            _ => d.unparsable += 1,
        }
    }
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
    Ok(resp)
}

// === the Dropbox side: paced, marked, signed load ===

#[derive(Default)]
struct Ledger {
    /// Markers of notifications answered 200.
    acked: Mutex<Vec<u64>>,
    sent: AtomicU64,
    /// Answers other than 200 (status, count).
    other_status: Mutex<HashMap<u16, u64>>,
    /// Transport errors (the daemon was killed or not up yet).
    errors: AtomicU64,
}

fn spawn_senders(
    url: String,
    secret: String,
    accounts: Arc<Vec<String>>,
    rng: &mut XorShift,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinSet<()> {
    let next_marker = Arc::new(AtomicU64::new(1_000_000_000));
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..SENDERS {
        let (url, secret, accounts, ledger, stop, next_marker) = (
            url.clone(),
            secret.clone(),
            accounts.clone(),
            ledger.clone(),
            stop.clone(),
            next_marker.clone(),
        );
        let mut rng = rng.fork();
        senders.spawn(async move {
            let mut pace = tokio::time::interval(SENDER_PERIOD);
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::SeqCst) {
                pace.tick().await;
                let marker = next_marker.fetch_add(1, Ordering::SeqCst);
                let account = &accounts[rng.below(accounts.len() as u64) as usize];
                let body = marked_body(account, marker);
                ledger.sent.fetch_add(1, Ordering::SeqCst);
                match try_post_notification(&url, &secret, &body).await {
                    Ok(200) => ledger.acked.lock().unwrap().push(marker),
                    Ok(status) => {
                        *ledger
                            .other_status
                            .lock()
                            .unwrap()
                            .entry(status)
                            .or_default() += 1;
                    }
                    Err(_) => {
                        ledger.errors.fetch_add(1, Ordering::SeqCst);
                        // Down between a kill and the restart: do not spin.
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                }
            }
        });
    }
    senders
}

/// (marker, instance) pairs of stored events that carry a marked notification.
fn marked_pairs(events: &[StoredEvent]) -> HashSet<(u64, String)> {
    events
        .iter()
        .filter_map(|e| {
            let raw: serde_json::Value = serde_json::from_slice(&e.raw).ok()?;
            Some((marker_of_raw(&raw)?, e.instance.clone()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_loses_no_acknowledged_notification() {
    let cycles = if rng::long_tests() { 300 } else { 30 };
    fault_loop(Fault::Kill, cycles).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_loop_loses_no_acknowledged_notification() {
    let cycles = if rng::long_tests() { 300 } else { 20 };
    fault_loop(Fault::PowerCut, cycles).await;
}

/// What happens to the daemon at each cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// `kill -9`: the page cache keeps what was written.
    Kill,
    /// `kill -9`, then the store's file system as a power cut leaves it ([`Disk::cut`]).
    PowerCut,
}

/// The power-loss file system the store lives on, and the images a cut leaves.
struct Disk {
    mountpoint: tempfile::TempDir,
    fs: Option<PowerFs>,
    images: tempfile::TempDir,
    cuts: u64,
    torn: u64,
}

impl Disk {
    fn mount() -> Disk {
        let mountpoint = tempfile::tempdir().expect("tempdir");
        let fs = PowerFs::mount(mountpoint.path(), None)
            .unwrap_or_else(|e| panic!("the power-loss loop needs powerfs (FUSE): {e}"));
        Disk {
            mountpoint,
            fs: Some(fs),
            images: tempfile::tempdir().expect("tempdir"),
            cuts: 0,
            torn: 0,
        }
    }

    /// The store's directory on the power-loss file system.
    fn store_path(&self) -> PathBuf {
        self.mountpoint.path().join("data")
    }

    /// The power cut (every process using the file system has ended): the file system comes
    /// back as the cut left it, under either loss model (seeded).
    fn cut(&mut self, rng: &mut XorShift) {
        self.cuts += 1;
        let loss = if rng.percent(50) {
            self.torn += 1;
            Loss::Torn {
                seed: rng.next_u64(),
            }
        } else {
            Loss::Unsynced
        };
        let fs = self.fs.take().expect("mounted");
        let image = self.images.path().join(format!("cut-{}", self.cuts));
        fs.power_loss_image(&image, loss)
            .unwrap_or_else(|e| panic!("power-loss image: {e}"));
        fs.unmount().unwrap_or_else(|e| panic!("unmount: {e}"));
        let fs = PowerFs::mount(self.mountpoint.path(), Some(&image))
            .unwrap_or_else(|e| panic!("mount after the cut: {e}"));
        std::fs::remove_dir_all(&image).expect("remove the image");
        self.fs = Some(fs);
    }
}

/// The doomed instance's callback answers 410 to everything: its events are dead-lettered at
/// their first attempt, and replayed or purged during the loop.
const DOOMED: &str = "doomed";

/// Files added to the fake Dropbox per cycle, and its page size (walks of several pages).
const FILES_PER_CYCLE: usize = 10;
const WALK_PAGE: usize = 7;

/// The change-events side: a fake Dropbox API whose account is the first of the load's, the
/// files added to it, and a callback that records the paths of the change events it took.
struct Walks {
    api: FakeDropboxApi,
    written: Vec<String>,
    delivered: Arc<Mutex<HashSet<String>>>,
    server: TestServer,
}

impl Walks {
    async fn start(account: &str) -> Walks {
        let api = FakeDropboxApi::start(account).await;
        api.set_page_size(WALK_PAGE);
        api.set_account_in_token(true);
        let delivered: Arc<Mutex<HashSet<String>>> = Arc::default();
        let seen = delivered.clone();
        let server = TestServer::start("the change-events callback", move |req| {
            let seen = seen.clone();
            async move {
                let body = req.into_body().collect().await.map(|b| b.to_bytes());
                let envelope: serde_json::Value = body
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default();
                if let Some(events) = envelope["message"]["events"].as_array() {
                    let mut seen = seen.lock().unwrap();
                    for event in events {
                        if let Some(path) = event["path"].as_str() {
                            seen.insert(path.to_owned());
                        }
                    }
                }
                Ok(Response::new(Full::new(Bytes::new())))
            }
        })
        .await;
        Walks {
            api,
            written: Vec::new(),
            delivered,
            server,
        }
    }

    fn instance(&self, app: &App, account: &str) -> InstanceConfig {
        InstanceConfig::new("files", 4, app)
            .raw("events = \"changes\"")
            .accounts(&[account])
            .callback(&format!("http://{}/changes", self.server.addr()))
            .configuration("oauth.refresh_token", REFRESH_TOKEN)
    }

    /// Adds the next files to the fake Dropbox.
    fn add_files(&mut self) {
        for _ in 0..FILES_PER_CYCLE {
            let path = format!("/loop/file-{:05}.txt", self.written.len());
            self.api.write_file(&path);
            self.written.push(path);
        }
    }

    /// The files added that no change event named yet.
    fn undelivered(&self) -> Vec<String> {
        let delivered = self.delivered.lock().unwrap();
        self.written
            .iter()
            .filter(|path| !delivered.contains(*path))
            .cloned()
            .collect()
    }
}

async fn fault_loop(fault: Fault, cycles: usize) {
    let long = rng::long_tests();
    let drain_bound = if long {
        Duration::from_secs(300)
    } else {
        Duration::from_secs(60)
    };
    let seed = rng::seed();
    println!(
        "{fault:?} loop: seed {seed} ({}={seed} to replay), {cycles} cycles, {} tier",
        rng::SEED_ENV,
        if long { "long" } else { "short" }
    );
    let started = Instant::now();
    let mut rng = XorShift::new(seed);

    let app = App::new("app-key");
    let steady = Recorder::start(STEADY.1, rng.fork()).await;
    let flaky = Recorder::start(FLAKY.1, rng.fork()).await;
    let gone = TestServer::start("the refusing callback", |_req| async {
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = hyper::StatusCode::GONE;
        Ok(resp)
    })
    .await;
    let instances = [(STEADY.0, &steady), (FLAKY.0, &flaky)];
    let accounts: Arc<Vec<String>> = Arc::new((0..ACCOUNTS).map(|_| account_id()).collect());
    let mut walks = Walks::start(&accounts[0]).await;
    let mut disk = (fault == Fault::PowerCut).then(Disk::mount);
    let mut cfg = TestConfig::new()
        .max_body_bytes("96KiB")
        .delivery("rate_limit", "10000/s")
        .delivery("rate_limit_burst", 1000_u32)
        .delivery("concurrency", 16_u32);
    if let Some(disk) = &disk {
        cfg = cfg.storage("path", disk.store_path().display().to_string());
    }
    for (n, (name, recorder)) in instances.iter().enumerate() {
        cfg = cfg.instance(
            InstanceConfig::new(name, n as u64 + 1, &app)
                .callback(&recorder.url())
                .coalesce(false),
        );
    }
    cfg = cfg
        .instance(
            InstanceConfig::new(DOOMED, 3, &app)
                .callback(&format!("http://{}/gone", gone.addr()))
                .coalesce(false),
        )
        .instance(walks.instance(&app, &accounts[0]))
        .raw(&walks.api.toml());
    let mut d = Daemon::start(&cfg).await;
    // Files added before the walker took its first cursor would never be reported; after it,
    // each is (the cursor is committed in the same moment).
    wait_until(Duration::from_secs(20), "the first cursor", || async {
        walks.api.calls("2/files/list_folder/get_latest_cursor") >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let store_path = disk
        .as_ref()
        .map_or_else(|| d.store_path(), Disk::store_path);

    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = spawn_senders(
        d.ingest_url(),
        app.secret.clone(),
        accounts.clone(),
        &mut rng,
        ledger.clone(),
        stop.clone(),
    );

    let mut restart_times = Vec::with_capacity(cycles);
    // The harness's share of a power cut: the image, the unmount and the mount of the image.
    let mut cut_times = Vec::new();
    let mut dead_letter_requests = 0;
    for _ in 0..cycles {
        walks.add_files();
        let before_fault = rng.duration_between(KILL_AFTER_MIN, KILL_AFTER_MAX);
        if rng.percent(50) {
            // Dead-letter administration while the load goes on, part of the way to the fault.
            tokio::time::sleep(before_fault / 2).await;
            let action = if rng.percent(50) { "replay" } else { "purge" };
            dead_letters(&d, action).await;
            dead_letter_requests += 1;
            tokio::time::sleep(before_fault / 2).await;
        } else {
            tokio::time::sleep(before_fault).await;
        }
        d.kill9();
        if let Some(disk) = &mut disk {
            let t = Instant::now();
            disk.cut(&mut rng);
            cut_times.push(t.elapsed());
        }
        let t = Instant::now();
        d.restart().await;
        restart_times.push(t.elapsed());
    }
    let loop_time = started.elapsed();
    // Starts that found acknowledged batches in the journal only (sled had not written them).
    let journal_recoveries = d.logs().matches(JOURNAL_APPLIED).count();

    // Quiesce: no more load, every callback answers 200, wait for the queue to drain.
    stop.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(30), async {
        while senders.join_next().await.is_some() {}
    })
    .await
    .expect("senders stop within 30 s");
    steady.set_fail_percent(0);
    flaky.set_fail_percent(0);
    // One more notification for the first account walks whatever files the last walks missed.
    let marker = ledger.sent.load(Ordering::SeqCst) + 1_900_000_000;
    let status = try_post_notification(
        &d.ingest_url(),
        &app.secret,
        &marked_body(&accounts[0], marker),
    )
    .await
    .unwrap_or_else(|e| panic!("the last notification: {e}\n{}", d.logs()));
    assert_eq!(status, 200, "the last notification\n{}", d.logs());
    ledger.acked.lock().unwrap().push(marker);
    let acked: Vec<u64> = ledger.acked.lock().unwrap().clone();
    let drain_started = Instant::now();
    let mut drained = false;
    while drain_started.elapsed() < drain_bound {
        let all_delivered = acked.iter().all(|&m| {
            instances
                .iter()
                .all(|(name, recorder)| recorder.delivered(m, name))
        });
        let empty = d.metric("hookrelay_queue_depth").await == Some(0.0);
        if (all_delivered || empty) && walks.undelivered().is_empty() {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drain_time = drain_started.elapsed();
    let undelivered_files = walks.undelivered();
    let walk_pages = walks.api.calls("2/files/list_folder/continue");
    d.stop().await;
    history_holds_every_delivery(&store_path, &instances).await;

    // The history check: every (acked marker, instance) delivered or dead-lettered.
    let dead_pairs = marked_pairs(&dead(&store_path));
    let pending_pairs = marked_pairs(&pending(&store_path));
    let (mut delivered, mut dead_lettered, mut still_pending, mut lost) = (0, 0, 0, Vec::new());
    for &marker in &acked {
        for (name, recorder) in &instances {
            let key = (marker, name.to_string());
            if recorder.delivered(marker, name) {
                delivered += 1;
            } else if dead_pairs.contains(&key) {
                dead_lettered += 1;
            } else if pending_pairs.contains(&key) {
                still_pending += 1;
            } else {
                lost.push(key);
            }
        }
    }
    let acked_set: HashSet<u64> = acked.iter().copied().collect();
    let (mut deliveries_ok, mut duplicates, mut reingested, mut in_doubt) = (0u64, 0u64, 0u64, 0);
    let (refused, unknown_ok, unknown_refused, unparsable, raw_mismatch) = {
        let mut totals = (0, 0, 0, 0, 0);
        for (_, recorder) in &instances {
            let r = recorder.state.deliveries.lock().unwrap();
            for ((marker, _), &count) in &r.ok {
                deliveries_ok += u64::from(count);
                duplicates += u64::from(count - 1);
                if !acked_set.contains(marker) {
                    in_doubt += 1;
                }
            }
            reingested += r.ids.values().map(|ids| ids.len() as u64 - 1).sum::<u64>();
            totals.0 += r.refused;
            totals.1 += r.unknown_ok;
            totals.2 += r.unknown_refused;
            totals.3 += r.unparsable;
            totals.4 += r.raw_mismatch;
        }
        totals
    };
    let other_status = ledger.other_status.lock().unwrap().clone();
    let max_restart = restart_times.iter().max().copied().unwrap_or_default();
    let mean_restart = restart_times.iter().sum::<Duration>() / restart_times.len().max(1) as u32;
    let pairs = acked.len() * instances.len();
    let cuts = disk.as_ref().map_or(String::new(), |disk| {
        format!(
            "power_cuts={} torn={} cut_image_and_remount mean={:?} ",
            disk.cuts,
            disk.torn,
            cut_times.iter().sum::<Duration>() / cut_times.len().max(1) as u32
        )
    });
    println!(
        "{fault:?} loop figures: cycles={cycles} {cuts}dead_letter_requests={dead_letter_requests} \
         files_added={} files_undelivered={} walk_pages={walk_pages} sent={} acked={} acked_pairs={pairs} \
         delivered={delivered} dead_lettered={dead_lettered} still_pending={still_pending} \
         lost={} duplicates={duplicates} ({:.2}% of acked pairs; {reingested} under another event id) \
         deliveries_200={deliveries_ok} answered_500={refused} in_doubt_delivered={in_doubt} \
         catch_up_unknown_200={unknown_ok} catch_up_unknown_500={unknown_refused} \
         unparsable={unparsable} raw_mismatch={raw_mismatch} transport_errors={} \
         other_status={other_status:?} \
         restart_to_ready mean={mean_restart:?} max={max_restart:?} \
         starts_applying_the_journal={journal_recoveries} loop={loop_time:.1?} \
         drain={drain_time:.1?} drained={drained} total={:.1?} seed={seed}",
        walks.written.len(),
        undelivered_files.len(),
        ledger.sent.load(Ordering::SeqCst),
        acked.len(),
        lost.len(),
        100.0 * duplicates as f64 / pairs.max(1) as f64,
        ledger.errors.load(Ordering::SeqCst),
        started.elapsed(),
    );

    assert!(
        acked.len() >= cycles,
        "too little load to mean anything: {} acknowledged in {cycles} cycles",
        acked.len()
    );
    assert!(
        journal_recoveries > 0,
        "no start after a {fault:?} applied the journal: the loop did not test recovery from it"
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged (marker, instance) pairs neither delivered nor dead-lettered nor \
         pending after {cycles} {fault:?} cycles (seed {seed}), e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(
        undelivered_files.is_empty(),
        "{} files added to the fake Dropbox were never delivered as change events after \
         {cycles} {fault:?} cycles (seed {seed}), e.g. {:?}",
        undelivered_files.len(),
        &undelivered_files[..undelivered_files.len().min(10)]
    );
    assert_eq!(
        still_pending, 0,
        "acknowledged events still queued after a {drain_bound:?} drain with every callback \
         answering 200 (seed {seed})"
    );
    assert!(
        other_status.is_empty(),
        "valid signed notifications answered other than 200: {other_status:?}"
    );
    assert_eq!(unparsable, 0, "deliveries that are not marked envelopes");
    assert_eq!(
        raw_mismatch, 0,
        "deliveries whose raw is not the notification sent"
    );
}

/// Replays or purges the doomed instance's dead letters through the admin API (the daemon is
/// up: each fault comes after such a request, never during it).
async fn dead_letters(d: &Daemon, action: &str) {
    let request = client()
        .post(format!("{}/admin/dead/{action}", d.admin_url()))
        .header("Content-Type", "application/json")
        .body(format!("{{\"instance\": \"{DOOMED}\"}}"));
    let reply = send(request)
        .await
        .unwrap_or_else(|e| panic!("POST /admin/dead/{action}: {e}"));
    assert_eq!(
        reply.status,
        200,
        "POST /admin/dead/{action}: {}",
        String::from_utf8_lossy(&reply.body)
    );
}

/// The delivered history after the faults: its counters equal the sum of its records, and every
/// event a consumer answered 2xx is in it, or (its removal undone by the fault) pending or dead
/// again, to be delivered again.
async fn history_holds_every_delivery(
    store_path: &std::path::Path,
    instances: &[(&str, &Recorder)],
) {
    let audits = hookrelay::store::audit_history(store_path).expect("auditing the history");
    for audit in &audits {
        assert!(audit.is_sound(), "{audit:?}");
    }
    let store = hookrelay::store::open_offline(store_path).expect("opening the store");
    let mut missing = Vec::new();
    for (name, recorder) in instances {
        let ids: Vec<String> = {
            let deliveries = recorder.state.deliveries.lock().unwrap();
            deliveries.ids.values().flatten().cloned().collect()
        };
        for id in ids {
            let found = store
                .event(id.parse().expect("a ULID"))
                .expect("reading an event");
            if found.is_none_or(|event| event.instance != *name) {
                missing.push((name.to_string(), id));
            }
        }
    }
    store.close().await.expect("closing the store");
    assert!(
        missing.is_empty(),
        "delivered, then neither kept nor queued again: {missing:?}"
    );
}
