//! `hookrelay-bench`: the benchmark harness (issue 8). `bench/run.sh` builds the binaries and
//! runs it; BENCHMARKS.md has the method and the figures.
//!
//! Inside this process it starts a loopback **sink** (the instance's callback: answers 204 and
//! records arrival time, `webhook-id` and the send time the generator put in the Dropbox body)
//! and three baselines for the same requests, the physical limits: a **plain hyper server**
//! (reads the body, answers 200), the same with a **group-commit `fdatasync`** of every body
//! before its 200 (the limit of a durable acknowledgement on this disk), and a **plain relay**
//! (forwards each body to the sink, answers 200 once the sink did: one request in and one out
//! per event, no storage). For each scenario it runs the real `hookrelay` binary on a temporary config and
//! store and drives it with its own load generator: keep-alive HTTP/1.1 connections, every body
//! unique and signed with the app secret, closed loop or open loop at a fixed rate, the ack
//! latency of every request recorded.
//!
//! Everything stays on 127.0.0.1, every wait is bounded, and every process started is killed
//! when the harness ends (also on errors, and by `PR_SET_PDEATHSIG` through `setpriv` if the
//! harness itself is killed).

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

const APP_KEY: &str = "bench-app-key";
const APP_SECRET: &str = "bench-app-secret";
/// A Standard Webhooks key, so every delivery carries both signatures (the realistic cost).
const SIGNATURE_KEY: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const INSTANCE: &str = "bench";
/// Distinct Dropbox accounts the notifications rotate through.
const ACCOUNTS: u64 = 64;
/// Bound on one request of the generator (hookrelay's own callback timeout is 10 s too).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on an admin request (`/readyz`, `/metrics`).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on hookrelay answering `/readyz` 200 after a start.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on hookrelay exiting after SIGTERM (its `shutdown_timeout` is 10 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// An open-loop request that starts this much after its scheduled time counts as late.
const LATE: Duration = Duration::from_millis(5);
/// Clock ticks per second of /proc/<pid>/stat (USER_HZ is 100 on Linux).
const CLOCK_TICKS: f64 = 100.0;
const MIB: f64 = 1024.0 * 1024.0;
/// Load-generator threads (like `wrk -t2` on this two-core box).
const GENERATOR_THREADS: usize = 2;

/// Benchmark harness of hookrelay: durable-ack ingest, delivery, latency, memory, restart, disk.
#[derive(Debug, Clone, Parser)]
#[command(name = "hookrelay-bench")]
struct Args {
    /// Seconds of each throughput and latency scenario
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Events queued behind a paused instance for the memory, restart and disk figures
    #[arg(long, default_value_t = 200_000)]
    queued: u64,
    /// CI mode: 3-second scenarios, 2,000 queued events, 200/s latency run, correctness
    /// checks only (no targets); overrides --duration, --queued and --latency-rate
    #[arg(long)]
    smoke: bool,
    /// Also write the results as JSON to FILE
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// The hookrelay binary [default: `hookrelay` next to this binary]
    #[arg(long, value_name = "PATH")]
    hookrelay: Option<PathBuf>,
    /// Connections of the closed-loop and sustained scenarios
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Rate of the open-loop latency scenario (d), notifications per second
    #[arg(long, default_value_t = 1000.0)]
    latency_rate: f64,
    /// Offered rate of the sustained scenario (c) [default: 90% of what (b) delivered]
    #[arg(long)]
    sustained_rate: Option<f64>,
    /// Exit with status 3 when a target of issue 8 is missed (not with --smoke)
    #[arg(long)]
    check_targets: bool,
    /// Folder for the temporary configs and stores [default: the system temp dir]
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Scenarios to run, comma-separated, of plain, a, b, c, d, efg
    #[arg(long, value_delimiter = ',', default_value = "plain,a,b,c,d,efg")]
    scenarios: Vec<String>,
    /// Profile hookrelay in every scenario with `perf record -e cpu-clock` into DIR/<scenario>.data
    #[arg(long, value_name = "DIR")]
    perf: Option<PathBuf>,
    /// `storage.cache_bytes` of the daemon's config (e.g. 16MiB) [default: hookrelay's, 32MiB]
    #[arg(long, value_name = "SIZE")]
    cache_bytes: Option<String>,
}

type Fallible<T> = Result<T, String>;

// === clock ===

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since the harness started: the one clock of send and arrival times.
fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

// === the notifications ===

fn next_seq() -> u64 {
    static SEQ: AtomicU64 = AtomicU64::new(1);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

fn account(seq: u64) -> String {
    // "dbid:" and 35 characters, like Dropbox's.
    format!("dbid:AAH4f99T0taONIb-OurWxbNQ6ywGRop{:04}", seq % ACCOUNTS)
}

/// A unique Dropbox notification, signed with the app secret; the send time rides in the body
/// (hookrelay forwards it verbatim as `message.raw`).
fn notification(seq: u64, host: &str) -> Request<Full<Bytes>> {
    let body = format!(
        r#"{{"list_folder":{{"accounts":["{}"]}},"delta":{{"users":[{}]}},"bench":{{"seq":{},"sent_ns":{}}}}}"#,
        account(seq),
        1000 + seq % ACCOUNTS,
        seq,
        now_ns()
    );
    let signature = hookrelay::sign::dropbox_signature(APP_SECRET.as_bytes(), body.as_bytes());
    Request::post("/events/dropbox")
        .header(HOST, host)
        .header(CONTENT_TYPE, "application/json")
        .header("x-dropbox-signature", signature)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

/// The digits after `key` in `body` (`"seq":` or `"sent_ns":`).
fn number_after(body: &[u8], key: &[u8]) -> Option<u64> {
    let start = body.windows(key.len()).position(|w| w == key)? + key.len();
    let digits: Vec<u8> = body[start..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

// === HTTP plumbing ===

async fn connect<B>(addr: SocketAddr) -> Fallible<SendRequest<B>>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake {addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// One request on a kept-alive connection; the whole (empty) answer is read.
async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<u16, hyper::Error> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    response.into_body().collect().await?;
    Ok(status)
}

/// A GET on a fresh connection (admin endpoints), bounded by [`ADMIN_TIMEOUT`].
async fn get(addr: SocketAddr, path: &str) -> Fallible<(u16, Bytes)> {
    let fetch = async {
        let mut sender = connect::<Empty<Bytes>>(addr).await?;
        let request = Request::get(path)
            .header(HOST, addr.to_string())
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        sender.ready().await.map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(ADMIN_TIMEOUT, fetch)
        .await
        .map_err(|_| format!("GET {addr}{path}: no answer within {ADMIN_TIMEOUT:?}"))?
}

/// Serves HTTP/1.1 on `listener` with `handler` until the runtime stops.
async fn serve<H, F>(listener: TcpListener, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
    F: Future<Output = Response<Empty<Bytes>>> + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let answer = handler(request);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The physical limit: reads the body, answers 200.
async fn plain(request: Request<Incoming>) -> Response<Empty<Bytes>> {
    let _ = request.into_body().collect().await;
    Response::new(Empty::new())
}

/// The physical limit of a *durable* acknowledgement: reads the body, appends it to a file
/// and answers 200 after an `fdatasync` that covers it. One thread group-commits whatever
/// bodies wait (as hookrelay's committer does), so concurrent requests share a sync.
#[derive(Clone)]
struct DurablePlain {
    bodies: tokio::sync::mpsc::UnboundedSender<(Bytes, tokio::sync::oneshot::Sender<bool>)>,
}

impl DurablePlain {
    /// Starts the group-commit thread on a file at `path` (truncated as it passes 64 MiB).
    fn start(path: PathBuf) -> std::io::Result<DurablePlain> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)?;
        let (bodies, mut waiting) =
            tokio::sync::mpsc::unbounded_channel::<(Bytes, tokio::sync::oneshot::Sender<bool>)>();
        std::thread::Builder::new()
            .name("bench-fsync".into())
            .spawn(move || {
                let mut written = 0u64;
                let mut batch = Vec::new();
                while let Some(first) = waiting.blocking_recv() {
                    batch.push(first);
                    while let Ok(next) = waiting.try_recv() {
                        batch.push(next);
                    }
                    let mut ok = true;
                    for (body, _) in &batch {
                        ok &= file.write_all(body).is_ok();
                        written += body.len() as u64;
                    }
                    ok &= file.sync_data().is_ok();
                    for (_, reply) in batch.drain(..) {
                        let _ = reply.send(ok);
                    }
                    if written > 64 << 20 {
                        use std::io::Seek as _;
                        ok &= file.set_len(0).is_ok() && file.rewind().is_ok();
                        written = 0;
                    }
                    if !ok {
                        break;
                    }
                }
                let _ = std::fs::remove_file(&path);
            })?;
        Ok(DurablePlain { bodies })
    }

    async fn handle(self, request: Request<Incoming>) -> Response<Empty<Bytes>> {
        let stored = match request.into_body().collect().await {
            Ok(body) => {
                let (reply, stored) = tokio::sync::oneshot::channel();
                let _ = self.bodies.send((body.to_bytes(), reply));
                stored.await.unwrap_or(false)
            }
            Err(_) => false,
        };
        let mut response = Response::new(Empty::new());
        if !stored {
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        response
    }
}

/// The physical limit of relaying: reads the body, POSTs it to the sink on a kept-alive
/// connection and answers 200 once the sink answered (no storage, no signing). One request
/// in and one out per event, as hookrelay's ingest and delivery together.
#[derive(Clone)]
struct PlainRelay {
    sink: SocketAddr,
    idle: Arc<Mutex<Vec<SendRequest<Full<Bytes>>>>>,
}

impl PlainRelay {
    async fn handle(self, request: Request<Incoming>) -> Response<Empty<Bytes>> {
        let mut response = Response::new(Empty::new());
        if self.forward(request).await.is_err() {
            *response.status_mut() = StatusCode::BAD_GATEWAY;
        }
        response
    }

    async fn forward(&self, request: Request<Incoming>) -> Fallible<()> {
        let body = request
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut sender = match pooled {
            Some(sender) => sender,
            None => connect::<Full<Bytes>>(self.sink).await?,
        };
        let outgoing = Request::post("/")
            .header(HOST, self.sink.to_string())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let status = exchange(&mut sender, outgoing)
            .await
            .map_err(|e| e.to_string())?;
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(sender);
        }
        match status {
            200..=299 => Ok(()),
            other => Err(format!("sink answered {other}")),
        }
    }
}

// === the sink ===

#[derive(Debug, Clone, Copy)]
struct Arrival {
    at_ns: u64,
    sent_ns: u64,
    seq: u64,
    /// The `webhook-id` ULID as a number (0 if missing).
    id: u128,
}

#[derive(Default)]
struct Sink {
    arrivals: Mutex<Vec<Arrival>>,
    count: AtomicU64,
}

impl Sink {
    fn record(&self, arrival: Arrival) {
        if let Ok(mut arrivals) = self.arrivals.lock() {
            arrivals.push(arrival);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Everything recorded since the last take.
    fn take(&self) -> Vec<Arrival> {
        let taken = match self.arrivals.lock() {
            Ok(mut arrivals) => std::mem::take(&mut *arrivals),
            Err(_) => Vec::new(),
        };
        self.count.store(0, Ordering::Relaxed);
        taken
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Empty<Bytes>> {
        let id = request
            .headers()
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| ulid::Ulid::from_string(v).ok())
            .map_or(0, |id| id.0);
        let body = request
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let at_ns = now_ns();
        self.record(Arrival {
            at_ns,
            sent_ns: number_after(&body, b"\"sent_ns\":").unwrap_or(at_ns),
            seq: number_after(&body, b"\"seq\":").unwrap_or(0),
            id,
        });
        let mut response = Response::new(Empty::new());
        *response.status_mut() = StatusCode::NO_CONTENT;
        response
    }
}

// === the load generator ===

#[derive(Debug, Clone, Copy)]
enum Pace {
    /// Each connection sends its next request when the last one is answered.
    Closed,
    /// Requests scheduled at a fixed total rate, spread round-robin over the connections;
    /// a connection that falls behind sends at once (and counts the request as late).
    Open(f64),
}

#[derive(Debug, Clone, Copy)]
struct Load {
    addr: SocketAddr,
    connections: usize,
    pace: Pace,
    /// How long to send (the hard bound when `budget` is set).
    duration: Duration,
    /// Stop after this many 2xx answers in all.
    budget: Option<u64>,
    /// Keep the sequence numbers of 2xx answers (to check every one was delivered).
    track: bool,
}

#[derive(Default)]
struct ConnOutcome {
    latencies_ns: Vec<u32>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
    late: u64,
    acked: Vec<u64>,
    last_error: Option<String>,
}

struct LoadResult {
    elapsed: Duration,
    ok: u64,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
    late: u64,
    /// Sorted ack latencies of every answered request.
    latencies_ns: Vec<u32>,
    acked: Vec<u64>,
    last_error: Option<String>,
    /// `now_ns()` at the start and the end of the sending window.
    window_ns: (u64, u64),
    /// CPU ticks the generator threads used.
    generator_ticks: u64,
}

impl LoadResult {
    fn ok_per_s(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn json(&self) -> Value {
        json!({
            "seconds": round(self.elapsed.as_secs_f64(), 3),
            "ok": self.ok,
            "ok_per_s": round(self.ok_per_s(), 1),
            "statuses": self.statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<Map<_, _>>(),
            "errors": self.errors,
            "last_error": self.last_error,
            "late_starts": self.late,
            "ack_latency": latency_json(&self.latencies_ns),
        })
    }
}

fn give_back(budget: Option<&AtomicU64>) {
    if let Some(budget) = budget {
        budget.fetch_add(1, Ordering::AcqRel);
    }
}

async fn connection_loop(
    load: Load,
    index: usize,
    start: tokio::time::Instant,
    budget: Option<Arc<AtomicU64>>,
) -> ConnOutcome {
    let end = start + load.duration;
    let host = load.addr.to_string();
    let budget = budget.as_deref();
    let mut out = ConnOutcome::default();
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    let mut k: u64 = 0;
    loop {
        let now = tokio::time::Instant::now();
        let scheduled = match load.pace {
            Pace::Closed => None,
            Pace::Open(rate) => {
                let slot = k * load.connections as u64 + index as u64;
                Some(start + Duration::from_secs_f64(slot as f64 / rate))
            }
        };
        if now >= end || scheduled.is_some_and(|at| at >= end) {
            break;
        }
        if let Some(budget) = budget
            && budget
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_err()
        {
            break;
        }
        k += 1;
        if let Some(at) = scheduled {
            tokio::time::sleep_until(at).await;
            if at.elapsed() > LATE {
                out.late += 1;
            }
        }
        if sender.is_none() {
            match connect(load.addr).await {
                Ok(connected) => sender = Some(connected),
                Err(err) => {
                    out.errors += 1;
                    out.last_error = Some(err);
                    give_back(budget);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let Some(connection) = sender.as_mut() else {
            continue;
        };
        let seq = next_seq();
        let request = notification(seq, &host);
        let sent = Instant::now();
        let result = tokio::time::timeout(REQUEST_TIMEOUT, exchange(connection, request)).await;
        let latency = sent.elapsed();
        match result {
            Ok(Ok(status)) => {
                out.latencies_ns
                    .push(u32::try_from(latency.as_nanos()).unwrap_or(u32::MAX));
                *out.statuses.entry(status).or_default() += 1;
                if (200..300).contains(&status) {
                    if load.track {
                        out.acked.push(seq);
                    }
                } else {
                    give_back(budget);
                }
            }
            Ok(Err(err)) => {
                out.errors += 1;
                out.last_error = Some(err.to_string());
                sender = None;
                give_back(budget);
            }
            Err(_) => {
                out.errors += 1;
                out.last_error = Some(format!("no answer within {REQUEST_TIMEOUT:?}"));
                sender = None;
                give_back(budget);
            }
        }
    }
    out
}

/// Runs `load` on [`GENERATOR_THREADS`] threads, each with its own single-threaded runtime and
/// its share of the connections (wrk's model: no cross-thread wake-ups on the hot path).
async fn run_load(load: Load) -> LoadResult {
    let start = tokio::time::Instant::now();
    let started_ns = now_ns();
    let budget = load.budget.map(|n| Arc::new(AtomicU64::new(n)));
    let threads = GENERATOR_THREADS.min(load.connections).max(1);
    let mut finished = Vec::with_capacity(threads);
    for thread in 0..threads {
        let budget = budget.clone();
        let (done, outcome) = tokio::sync::oneshot::channel::<(Vec<ConnOutcome>, u64)>();
        let spawned = std::thread::Builder::new()
            .name(format!("bench-gen-{thread}"))
            .spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                let outcomes = runtime.block_on(async move {
                    let mut tasks = JoinSet::new();
                    for index in (thread..load.connections).step_by(threads) {
                        tasks.spawn(connection_loop(load, index, start, budget.clone()));
                    }
                    let mut outcomes = Vec::new();
                    while let Some(joined) = tasks.join_next().await {
                        outcomes.push(joined.unwrap_or_else(|err| ConnOutcome {
                            errors: 1,
                            last_error: Some(err.to_string()),
                            ..ConnOutcome::default()
                        }));
                    }
                    outcomes
                });
                let _ = done.send((outcomes, own_thread_ticks()));
            });
        if spawned.is_ok() {
            finished.push(outcome);
        }
    }
    let mut result = LoadResult {
        elapsed: Duration::ZERO,
        ok: 0,
        statuses: BTreeMap::new(),
        errors: 0,
        late: 0,
        latencies_ns: Vec::new(),
        acked: Vec::new(),
        last_error: None,
        window_ns: (started_ns, 0),
        generator_ticks: 0,
    };
    let mut outcomes = Vec::new();
    for outcome in finished {
        // Each connection loop ends by its deadline (plus one request's timeout).
        match outcome.await {
            Ok((outs, ticks)) => {
                outcomes.extend(outs);
                result.generator_ticks += ticks;
            }
            Err(_) => outcomes.push(ConnOutcome {
                errors: 1,
                last_error: Some("a generator thread failed".into()),
                ..ConnOutcome::default()
            }),
        }
    }
    for out in outcomes {
        result.latencies_ns.extend(out.latencies_ns);
        for (status, count) in out.statuses {
            *result.statuses.entry(status).or_default() += count;
        }
        result.errors += out.errors;
        result.late += out.late;
        result.acked.extend(out.acked);
        if out.last_error.is_some() {
            result.last_error = out.last_error;
        }
    }
    result.elapsed = start.elapsed();
    result.window_ns.1 = now_ns();
    result.ok = result
        .statuses
        .iter()
        .filter(|(status, _)| (200..300).contains(*status))
        .map(|(_, count)| count)
        .sum();
    result.latencies_ns.sort_unstable();
    result
}

// === figures ===

fn round(value: f64, digits: i32) -> f64 {
    let factor = 10f64.powi(digits);
    (value * factor).round() / factor
}

/// Nearest-rank percentile of sorted values.
fn percentile<T: Copy + Into<u64>>(sorted: &[T], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1].into())
}

fn latency_json<T: Copy + Into<u64>>(sorted: &[T]) -> Value {
    let ms = |p: f64| percentile(sorted, p).map(|ns| round(ns as f64 / 1e6, 3));
    let mean = if sorted.is_empty() {
        None
    } else {
        let total: u128 = sorted.iter().map(|&v| u128::from(v.into())).sum();
        Some(round(total as f64 / sorted.len() as f64 / 1e6, 3))
    };
    json!({
        "n": sorted.len(),
        "p50_ms": ms(50.0),
        "p90_ms": ms(90.0),
        "p99_ms": ms(99.0),
        "p999_ms": ms(99.9),
        "max_ms": ms(100.0),
        "mean_ms": mean,
    })
}

/// What the sink got for the acknowledged notifications of one scenario.
fn delivery_json(acked: &[u64], arrivals: &[Arrival], window_ns: (u64, u64)) -> Value {
    let acked_set: HashSet<u64> = acked.iter().copied().collect();
    let mine: Vec<&Arrival> = arrivals
        .iter()
        .filter(|a| acked_set.contains(&a.seq))
        .collect();
    let arrived: HashSet<u64> = mine.iter().map(|a| a.seq).collect();
    let ids: HashSet<u128> = mine.iter().map(|a| a.id).collect();
    let mut latencies: Vec<u64> = mine
        .iter()
        .map(|a| a.at_ns.saturating_sub(a.sent_ns))
        .collect();
    latencies.sort_unstable();
    let (from, to) = window_ns;
    let in_window = mine
        .iter()
        .filter(|a| a.at_ns >= from && a.at_ns <= to)
        .count();
    let seconds = (to.saturating_sub(from)) as f64 / 1e9;
    json!({
        "acked": acked.len(),
        "arrivals": mine.len(),
        "missing": acked_set.len().saturating_sub(arrived.len()),
        "duplicates": mine.len().saturating_sub(ids.len()),
        "unexpected_arrivals": arrivals.len().saturating_sub(mine.len()),
        "delivered_in_window": in_window,
        "delivered_per_s_in_window": round(in_window as f64 / seconds.max(1e-9), 1),
        "notification_to_callback": latency_json(&latencies),
    })
}

// === /proc and the file system ===

fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .trim_start_matches(':')
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn mib_of_kib(kib: Option<u64>) -> Option<f64> {
    kib.map(|k| round(k as f64 / 1024.0, 1))
}

/// User + system clock ticks in a `/proc/.../stat` file.
fn stat_ticks(path: &Path) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // After "(comm)" comes field 3 of proc_pid_stat(5); utime and stime are fields 14 and 15.
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some((stat[open + 1..close].to_owned(), user + system))
}

/// CPU clock ticks per live thread name of a process; tokio's and sled's numbered threads are
/// summed under one name.
fn cpu_ticks(pid: u32) -> BTreeMap<String, u64> {
    let mut by_name = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for task in tasks.flatten() {
        if let Some((name, ticks)) = stat_ticks(&task.path().join("stat")) {
            let name = name
                .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '#')
                .to_owned();
            *by_name.entry(name).or_default() += ticks;
        }
    }
    by_name
}

/// CPU ticks the calling thread has used since it started.
fn own_thread_ticks() -> u64 {
    stat_ticks(Path::new("/proc/thread-self/stat")).map_or(0, |(_, ticks)| ticks)
}

struct CpuWatch {
    pids: Vec<(&'static str, u32)>,
    started: Instant,
    before: Vec<(u64, BTreeMap<String, u64>)>,
}

impl CpuWatch {
    fn start(pids: Vec<(&'static str, u32)>) -> CpuWatch {
        let before = pids
            .iter()
            .map(|(_, pid)| (process_ticks(*pid), cpu_ticks(*pid)))
            .collect();
        CpuWatch {
            pids,
            started: Instant::now(),
            before,
        }
    }

    /// Percent of one core per process and per thread name since `start`; the generator's
    /// threads (gone by now) are reported from `generator_ticks`.
    fn finish(&self, generator_ticks: u64) -> Value {
        let seconds = self.started.elapsed().as_secs_f64().max(1e-9);
        let percent = |ticks: u64| json!(round(ticks as f64 / CLOCK_TICKS / seconds * 100.0, 1));
        let mut out = Map::new();
        for ((label, pid), (total_before, before)) in self.pids.iter().zip(&self.before) {
            let mut threads = Map::new();
            for (name, ticks) in &cpu_ticks(*pid) {
                let used = ticks.saturating_sub(before.get(name).copied().unwrap_or(0));
                if used > 0 {
                    threads.insert(name.clone(), percent(used));
                }
            }
            if *pid == std::process::id() && generator_ticks > 0 {
                threads.insert("bench-gen".into(), percent(generator_ticks));
            }
            let total = process_ticks(*pid).saturating_sub(*total_before);
            out.insert(
                (*label).to_owned(),
                json!({ "total_percent_of_one_core": percent(total), "threads": threads }),
            );
        }
        Value::Object(out)
    }
}

/// Bytes a process wrote: handed to `write`-like calls (`wchar`), and sent to the block device
/// (`write_bytes`: the page-cache pages it dirtied, whole folios).
#[derive(Clone, Copy)]
struct Written {
    syscall_bytes: u64,
    device_bytes: u64,
}

impl std::ops::Sub for Written {
    type Output = Written;

    fn sub(self, before: Written) -> Written {
        Written {
            syscall_bytes: self.syscall_bytes.saturating_sub(before.syscall_bytes),
            device_bytes: self.device_bytes.saturating_sub(before.device_bytes),
        }
    }
}

impl Written {
    /// Bytes per acknowledged request, as JSON.
    fn per(self, acked: u64) -> Value {
        let per = |bytes: u64| json!((bytes as f64 / acked.max(1) as f64).round());
        json!({ "syscall_bytes": per(self.syscall_bytes), "device_bytes": per(self.device_bytes) })
    }
}

/// CPU ticks of a whole process, exited threads included.
fn process_ticks(pid: u32) -> u64 {
    stat_ticks(Path::new(&format!("/proc/{pid}/stat"))).map_or(0, |(_, ticks)| ticks)
}

/// (apparent bytes, allocated bytes) of everything under `path`, like `du -b` and `du`.
fn disk_usage(path: &Path) -> (u64, u64) {
    let mut total = (0, 0);
    let Ok(entries) = std::fs::read_dir(path) else {
        return total;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if meta.is_dir() {
            let (apparent, allocated) = disk_usage(&entry.path());
            total.0 += apparent;
            total.1 += allocated;
        } else {
            total.0 += meta.len();
            total.1 += meta.blocks() * 512;
        }
    }
    total
}

fn free_port() -> Fallible<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn signal(pid: u32, name: &str) -> Fallible<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("kill -{name} {pid}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill -{name} {pid}: {status}"))
    }
}

fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

// === hookrelay under test ===

struct Daemon {
    bin: PathBuf,
    dir: PathBuf,
    listen: SocketAddr,
    admin: SocketAddr,
    sink: SocketAddr,
    /// A `cache_bytes = …` line, or nothing.
    cache_line: String,
    child: Option<Child>,
}

impl Daemon {
    /// A fresh config and store; starts hookrelay and waits until it is ready.
    async fn start(env: &Env, name: &str, paused: bool) -> Fallible<Daemon> {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let dir = env.work_dir.join(format!(
            "hookrelay-bench-{}-{run}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut daemon = Daemon {
            bin: env.hookrelay.clone(),
            dir,
            listen,
            admin,
            sink: env.sink_addr,
            cache_line: env
                .cache_bytes
                .as_ref()
                .map(|size| format!("cache_bytes = \"{size}\""))
                .unwrap_or_default(),
            child: None,
        };
        daemon.write_config(paused)?;
        daemon.spawn()?;
        daemon.wait_ready().await?;
        Ok(daemon)
    }

    fn store_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Writes the config atomically (SIGHUP must never read half a file).
    fn write_config(&self, paused: bool) -> Fallible<()> {
        let text = format!(
            r#"# written by hookrelay-bench
[server]
listen = "{listen}"
[admin]
listen = "{admin}"
[storage]
path = "data"
max_bytes = "64GiB"
{cache_line}
[delivery]
rate_limit = "1000000/s"
rate_limit_burst = 1000000
concurrency = 64
max_queued_bytes = "64GiB"
coalesce = false
allow_private_destinations = true
paused = {paused}

[[instance]]
name = "{INSTANCE}"
id = 1
element = "dropbox"
events = "notify"
[instance.configuration]
"oauth.api.key" = "{APP_KEY}"
"oauth.api.secret" = "{APP_SECRET}"
"event.notification.enabled" = true
"event.notification.callback.url" = "http://{sink}/hooks/dropbox"
"event.notification.signature.key" = "{SIGNATURE_KEY}"
"#,
            listen = self.listen,
            admin = self.admin,
            sink = self.sink,
            cache_line = self.cache_line,
        );
        let path = self.dir.join("config.toml");
        let temp = self.dir.join("config.toml.new");
        std::fs::write(&temp, text)
            .and_then(|()| std::fs::rename(&temp, &path))
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    fn spawn(&mut self) -> Fallible<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("hookrelay.log"))
            .map_err(|e| e.to_string())?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        // setpriv --pdeathsig: the kernel kills hookrelay if this harness dies first. The
        // signal follows the spawning thread, so spawns happen on the main thread only.
        let setpriv = Path::new("/usr/bin/setpriv");
        let mut command = if setpriv.exists() {
            let mut c = Command::new(setpriv);
            c.args(["--pdeathsig", "KILL", "--"]).arg(&self.bin);
            c
        } else {
            Command::new(&self.bin)
        };
        command
            .arg("run")
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .current_dir(&self.dir)
            .env("RUST_LOG", "warn")
            // As the systemd unit runs it (systemd/hookrelay.service).
            .env("MALLOC_ARENA_MAX", "2")
            .env_remove("HOOKRELAY_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("CREDENTIALS_DIRECTORY")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let child = command
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn pid(&self) -> Fallible<u32> {
        self.child
            .as_ref()
            .map(Child::id)
            .ok_or_else(|| "hookrelay is not running".to_owned())
    }

    /// Polls `/readyz` every 5 ms; the time from now until 200.
    async fn wait_ready(&mut self) -> Fallible<Duration> {
        let started = Instant::now();
        loop {
            if let Ok((200, _)) = get(self.admin, "/readyz").await {
                return Ok(started.elapsed());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("hookrelay exited during start-up ({status})"));
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(format!("hookrelay not ready within {READY_TIMEOUT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// SIGTERM, then waits for exit 0; the time it took.
    async fn stop(&mut self) -> Fallible<Duration> {
        let Some(child) = self.child.as_mut() else {
            return Ok(Duration::ZERO);
        };
        let started = Instant::now();
        signal(child.id(), "TERM")?;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return if status.success() {
                        Ok(started.elapsed())
                    } else {
                        Err(format!("hookrelay exited with {status} after SIGTERM"))
                    };
                }
                Ok(None) => {}
                Err(err) => return Err(format!("waiting for hookrelay: {err}")),
            }
            if started.elapsed() > STOP_TIMEOUT {
                self.kill();
                return Err(format!("hookrelay did not stop within {STOP_TIMEOUT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn metrics(&self) -> Fallible<String> {
        match get(self.admin, "/metrics").await? {
            (200, body) => Ok(String::from_utf8_lossy(&body).into_owned()),
            (status, _) => Err(format!("/metrics answered {status}")),
        }
    }

    async fn queue_depth(&self) -> Option<u64> {
        let text = self.metrics().await.ok()?;
        metric_value(
            &text,
            &format!("hookrelay_queue_depth{{instance=\"{INSTANCE}\"}}"),
        )
        .map(|v| v as u64)
    }

    fn rss_mib(&self) -> Option<f64> {
        mib_of_kib(proc_status_kib(self.pid().ok()?, "VmRSS"))
    }

    fn hwm_mib(&self) -> Option<f64> {
        mib_of_kib(proc_status_kib(self.pid().ok()?, "VmHWM"))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("hookrelay.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Waits until the queue is empty and the sink has at least `expected` arrivals.
    async fn wait_drained(&self, sink: &Sink, expected: u64, limit: Duration) -> Fallible<f64> {
        let started = Instant::now();
        loop {
            let depth = self.queue_depth().await;
            if depth == Some(0) && sink.count() >= expected {
                return Ok(started.elapsed().as_secs_f64());
            }
            if started.elapsed() > limit {
                return Err(format!(
                    "backlog not delivered within {limit:?}: queue depth {depth:?}, {} of {expected} arrived",
                    sink.count()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What the daemon has written so far (`/proc/<pid>/io`).
    fn written(&self) -> Option<Written> {
        let io = std::fs::read_to_string(format!("/proc/{}/io", self.pid().ok()?)).ok()?;
        let field = |name: &str| {
            io.lines()
                .find_map(|line| line.strip_prefix(name)?.trim().parse::<u64>().ok())
        };
        Some(Written {
            syscall_bytes: field("wchar:")?,
            device_bytes: field("write_bytes:")?,
        })
    }

    fn cpu_watch(&self) -> CpuWatch {
        let mut pids = vec![("bench", std::process::id())];
        if let Ok(pid) = self.pid() {
            pids.insert(0, ("hookrelay", pid));
        }
        CpuWatch::start(pids)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `perf record` attached to hookrelay for one scenario; stopped (SIGINT) when dropped.
struct Perf(Option<Child>);

impl Perf {
    fn start(dir: &Path, name: &str, pid: u32) -> Fallible<Perf> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let child = Command::new("perf")
            .args(["record", "-e", "cpu-clock", "-F", "999", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(dir.join(format!("{name}.data")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting perf: {e}"))?;
        Ok(Perf(Some(child)))
    }
}

impl Drop for Perf {
    fn drop(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        let _ = signal(child.id(), "INT");
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Samples queue depth, RSS and sink arrivals at a fixed interval while a scenario runs.
struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Value>>,
}

impl Sampler {
    fn start(daemon: &Daemon, sink: Arc<Sink>, every: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let admin = daemon.admin;
        let pid = daemon.pid().unwrap_or(0);
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            // Bounded by the caller's stop, and by a day's worth of samples in any case.
            while !flag.load(Ordering::Acquire) && samples.len() < 200_000 {
                tick.tick().await;
                let depth = match get(admin, "/metrics").await {
                    Ok((200, body)) => metric_value(
                        &String::from_utf8_lossy(&body),
                        &format!("hookrelay_queue_depth{{instance=\"{INSTANCE}\"}}"),
                    ),
                    _ => None,
                };
                samples.push(json!({
                    "t_s": round(started.elapsed().as_secs_f64(), 2),
                    "queue_depth": depth,
                    "rss_mib": mib_of_kib(proc_status_kib(pid, "VmRSS")),
                    "sink_arrivals": sink.count(),
                }));
            }
            samples
        });
        Sampler { stop, task }
    }

    async fn finish(self) -> Vec<Value> {
        self.stop.store(true, Ordering::Release);
        match tokio::time::timeout(Duration::from_secs(10), self.task).await {
            Ok(Ok(samples)) => samples,
            _ => Vec::new(),
        }
    }
}

fn peak(samples: &[Value], key: &str) -> Option<f64> {
    samples
        .iter()
        .filter_map(|s| s.get(key).and_then(Value::as_f64))
        .reduce(f64::max)
}

/// Least-squares slope of queue depth over time (events per second), within `[from, to]` s.
fn depth_slope(samples: &[Value], from: f64, to: f64) -> Option<f64> {
    let points: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|s| {
            let t = s.get("t_s")?.as_f64()?;
            let d = s.get("queue_depth")?.as_f64()?;
            (t >= from && t <= to).then_some((t, d))
        })
        .collect();
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_d = points.iter().map(|p| p.1).sum::<f64>() / n;
    let cov: f64 = points.iter().map(|p| (p.0 - mean_t) * (p.1 - mean_d)).sum();
    let var: f64 = points.iter().map(|p| (p.0 - mean_t).powi(2)).sum();
    (var > 0.0).then(|| cov / var)
}

// === scenarios ===

struct Env {
    smoke: bool,
    duration: Duration,
    queued: u64,
    connections: usize,
    latency_rate: f64,
    sustained_rate: Option<f64>,
    hookrelay: PathBuf,
    work_dir: PathBuf,
    perf: Option<PathBuf>,
    scenarios: Vec<String>,
    cache_bytes: Option<String>,
    sink: Arc<Sink>,
    sink_addr: SocketAddr,
    plain_addr: SocketAddr,
    durable_plain_addr: SocketAddr,
    relay_addr: SocketAddr,
}

impl Env {
    fn drain_limit(&self, events: u64) -> Duration {
        // Generous: 1,000 events/s at worst, and never less than a minute.
        Duration::from_secs(60 + events / 1000)
    }

    fn sample_every(&self) -> Duration {
        Duration::from_millis(if self.smoke { 250 } else { 500 })
    }
}

fn closed(addr: SocketAddr, env: &Env) -> Load {
    Load {
        addr,
        connections: env.connections,
        pace: Pace::Closed,
        duration: env.duration,
        budget: None,
        track: false,
    }
}

/// Runs `body` against a fresh hookrelay; its log tail is added to any error.
async fn with_daemon<T, F>(env: &Env, name: &str, paused: bool, body: F) -> Fallible<T>
where
    F: AsyncFnOnce(&mut Daemon) -> Fallible<T>,
{
    env.sink.take();
    let mut daemon = Daemon::start(env, name, paused).await?;
    let perf = match &env.perf {
        Some(dir) => Some(Perf::start(dir, name, daemon.pid()?)?),
        None => None,
    };
    let result = body(&mut daemon).await;
    drop(perf);
    let stopped = daemon.stop().await;
    match (result, stopped) {
        (Ok(value), Ok(_)) => Ok(value),
        (Err(err), _) | (Ok(_), Err(err)) => Err(format!(
            "{name}: {err}\n--- hookrelay log (last lines) ---\n{}",
            daemon.log_tail()
        )),
    }
}

/// The plain server at `addr` (in this process), closed loop.
async fn scenario_plain(env: &Env, addr: SocketAddr) -> Fallible<Value> {
    let watch = CpuWatch::start(vec![("bench", std::process::id())]);
    let load = run_load(closed(addr, env)).await;
    let mut value = load.json();
    value["cpu"] = watch.finish(load.generator_ticks);
    if load.ok == 0 {
        return Err(format!(
            "plain server: no 2xx answers ({:?})",
            load.last_error
        ));
    }
    Ok(value)
}

/// (a) with `paused`, (b) without: closed loop at N connections for D seconds.
async fn scenario_ingest(env: &Env, paused: bool) -> Fallible<Value> {
    let name = if paused {
        "a-ingest-paused"
    } else {
        "b-ingest-delivering"
    };
    with_daemon(env, name, paused, async |d: &mut Daemon| {
        let sampler = Sampler::start(d, env.sink.clone(), env.sample_every());
        let watch = d.cpu_watch();
        let written_before = d.written();
        let mut load = closed(d.listen, env);
        load.track = !paused;
        let result = run_load(load).await;
        let cpu = watch.finish(result.generator_ticks);
        let written = d
            .written()
            .zip(written_before)
            .map(|(after, before)| after - before);
        let depth_at_end = d.queue_depth().await;
        let mut value = result.json();
        value["cpu"] = cpu;
        value["written_per_ack"] = written.map_or(Value::Null, |w| w.per(result.ok));
        value["queue_depth_at_end"] = json!(depth_at_end);
        value["rss_mib_at_end"] = json!(d.rss_mib());
        if !paused {
            let drain = d
                .wait_drained(&env.sink, result.ok, env.drain_limit(result.ok))
                .await;
            value["drain_after_load_s"] = json!(drain.as_ref().ok().map(|s| round(*s, 2)));
            let samples = sampler.finish().await;
            value["rss_mib_peak"] = json!(peak(&samples, "rss_mib"));
            value["samples"] = json!(samples);
            value["delivery"] = delivery_json(&result.acked, &env.sink.take(), result.window_ns);
            drain?;
        } else {
            let samples = sampler.finish().await;
            value["rss_mib_peak"] = json!(peak(&samples, "rss_mib"));
            value["samples"] = json!(samples);
        }
        check_answers(&result)?;
        Ok(value)
    })
    .await
}

/// (c) open loop at a rate delivery is expected to hold; the queue must stay flat.
async fn scenario_sustained(env: &Env, rate: f64) -> Fallible<Value> {
    with_daemon(env, "c-sustained", false, async |d: &mut Daemon| {
        let sampler = Sampler::start(d, env.sink.clone(), env.sample_every());
        let watch = d.cpu_watch();
        let load = Load {
            pace: Pace::Open(rate),
            track: true,
            ..closed(d.listen, env)
        };
        let result = run_load(load).await;
        let cpu = watch.finish(result.generator_ticks);
        let window_s = result.elapsed.as_secs_f64();
        let drain = d
            .wait_drained(&env.sink, result.ok, env.drain_limit(result.ok))
            .await;
        let samples = sampler.finish().await;
        let delivery = delivery_json(&result.acked, &env.sink.take(), result.window_ns);
        // The first second is ramp-up; the slope is taken over the rest of the window.
        let slope = depth_slope(&samples, 1.0, window_s);
        let in_window: Vec<f64> = samples
            .iter()
            .filter(|s| s["t_s"].as_f64().is_some_and(|t| t <= window_s))
            .filter_map(|s| s["queue_depth"].as_f64())
            .collect();
        let max_depth = in_window.iter().copied().reduce(f64::max);
        let flat = slope.is_some_and(|s| s.abs() <= 0.02 * rate)
            && max_depth.is_some_and(|m| m <= rate.max(1000.0));
        let mut value = result.json();
        value["offered_per_s"] = json!(round(rate, 1));
        value["cpu"] = cpu;
        value["queue_depth_max"] = json!(max_depth);
        value["queue_depth_slope_per_s"] = json!(slope.map(|s| round(s, 1)));
        value["queue_flat"] = json!(flat);
        value["drain_after_load_s"] = json!(drain.as_ref().ok().map(|s| round(*s, 2)));
        value["rss_mib_peak"] = json!(peak(&samples, "rss_mib"));
        value["delivery"] = delivery;
        value["samples"] = json!(samples);
        drain?;
        check_answers(&result)?;
        Ok(value)
    })
    .await
}

/// (d) open loop at a modest rate: ack and notification→callback latency.
async fn scenario_latency(env: &Env) -> Fallible<Value> {
    with_daemon(env, "d-latency", false, async |d: &mut Daemon| {
        let watch = d.cpu_watch();
        let load = Load {
            connections: env.connections.min(32),
            pace: Pace::Open(env.latency_rate),
            track: true,
            ..closed(d.listen, env)
        };
        let result = run_load(load).await;
        let cpu = watch.finish(result.generator_ticks);
        let drain = d
            .wait_drained(&env.sink, result.ok, env.drain_limit(result.ok))
            .await;
        let mut value = result.json();
        value["offered_per_s"] = json!(env.latency_rate);
        value["connections"] = json!(load.connections);
        value["cpu"] = cpu;
        value["rss_mib_at_end"] = json!(d.rss_mib());
        value["delivery"] = delivery_json(&result.acked, &env.sink.take(), result.window_ns);
        drain?;
        check_answers(&result)?;
        Ok(value)
    })
    .await
}

/// (e) RSS idle and with N queued, (f) restart to READY with N queued, (g) disk per event
/// queued and after the backlog is delivered (unpaused by a config rewrite and SIGHUP).
async fn scenario_backlog(env: &Env) -> Fallible<Value> {
    with_daemon(env, "efg-backlog", true, async |d: &mut Daemon| {
        let n = env.queued;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_idle = d.rss_mib();
        let disk_empty = disk_usage(&d.store_dir());

        let watch = d.cpu_watch();
        let fill = run_load(Load {
            budget: Some(n),
            duration: Duration::from_secs(600),
            track: true,
            ..closed(d.listen, env)
        })
        .await;
        let fill_cpu = watch.finish(fill.generator_ticks);
        check_answers(&fill)?;
        if fill.ok != n {
            return Err(format!("queued {} of {n} events", fill.ok));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let depth_filled = d.queue_depth().await;
        if depth_filled != Some(n) {
            return Err(format!("queue depth {depth_filled:?} after queueing {n}"));
        }
        let rss_filled = d.rss_mib();
        let hwm_filled = d.hwm_mib();
        let disk_filled = disk_usage(&d.store_dir());

        let stop_s = d.stop().await?.as_secs_f64();
        d.spawn()?;
        let ready_s = d.wait_ready().await?.as_secs_f64();
        let depth_restarted = d.queue_depth().await;
        if depth_restarted != Some(n) {
            return Err(format!(
                "queue depth {depth_restarted:?} after a restart with {n} queued"
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_restarted = d.rss_mib();

        env.sink.take();
        d.write_config(false)?;
        let sampler = Sampler::start(d, env.sink.clone(), env.sample_every());
        let watch = d.cpu_watch();
        let drain_started = now_ns();
        signal(d.pid()?, "HUP")?;
        let drain = d.wait_drained(&env.sink, n, env.drain_limit(n)).await;
        let drain_cpu = watch.finish(0);
        let drain_end = now_ns();
        let samples = sampler.finish().await;
        let delivery = delivery_json(&fill.acked, &env.sink.take(), (drain_started, drain_end));
        let drain_s = drain?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let disk_drained = disk_usage(&d.store_dir());
        let per_event = |bytes: u64| round(bytes as f64 / n.max(1) as f64, 1);
        Ok(json!({
            "queued": n,
            "fill": fill.json(),
            "fill_cpu": fill_cpu,
            "rss_mib_idle": rss_idle,
            "rss_mib_queued": rss_filled,
            "rss_mib_hwm_while_queueing": hwm_filled,
            "rss_mib_after_restart": rss_restarted,
            "rss_mib_peak_while_draining": peak(&samples, "rss_mib"),
            "rss_mib_hwm_since_restart": d.hwm_mib(),
            "stop_s": round(stop_s, 3),
            "restart_to_ready_s": round(ready_s, 3),
            "disk": {
                "empty_bytes": disk_empty.1,
                "queued_bytes_allocated": disk_filled.1,
                "queued_bytes_apparent": disk_filled.0,
                "bytes_per_queued_event": per_event(disk_filled.1.saturating_sub(disk_empty.1)),
                "drained_bytes_allocated": disk_drained.1,
                "drained_bytes_apparent": disk_drained.0,
            },
            "drain_s": round(drain_s, 2),
            "drain_per_s": round(n as f64 / drain_s.max(1e-9), 1),
            "drain_cpu": drain_cpu,
            "delivery": delivery,
            "samples": samples,
        }))
    })
    .await
}

/// Every request must have been answered 2xx: anything else is a harness or daemon fault.
fn check_answers(result: &LoadResult) -> Fallible<()> {
    let bad: u64 = result
        .statuses
        .iter()
        .filter(|(status, _)| !(200..300).contains(*status))
        .map(|(_, count)| count)
        .sum();
    if bad > 0 || result.errors > 0 {
        return Err(format!(
            "{bad} non-2xx answers {:?}, {} transport errors (last: {:?})",
            result.statuses, result.errors, result.last_error
        ));
    }
    Ok(())
}

/// Delivery checks that hold in every mode: nothing acknowledged goes missing.
fn check_delivered(name: &str, value: &Value) -> Fallible<()> {
    let missing = value
        .pointer("/delivery/missing")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if missing > 0 {
        return Err(format!(
            "{name}: {missing} acknowledged notifications never reached the callback"
        ));
    }
    Ok(())
}

// === report ===

fn num(results: &Map<String, Value>, pointer: &str) -> Option<f64> {
    Value::Object(results.clone())
        .pointer(pointer)
        .and_then(Value::as_f64)
}

fn fmt(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

struct Target {
    name: &'static str,
    wanted: String,
    value: Option<f64>,
    met: Option<bool>,
}

fn targets(results: &Map<String, Value>) -> Vec<Target> {
    let plain = num(results, "/plain/ok_per_s");
    let ingest = num(results, "/a_ingest_paused/ok_per_s");
    let ratio = ingest.zip(plain).map(|(a, p)| a / p);
    let sustained = num(results, "/c_sustained/delivery/delivered_per_s_in_window");
    let flat = results
        .get("c_sustained")
        .and_then(|c| c.get("queue_flat"))
        .and_then(Value::as_bool);
    let ack_p99 = num(results, "/d_latency/ack_latency/p99_ms");
    let callback_p99 = num(
        results,
        "/d_latency/delivery/notification_to_callback/p99_ms",
    );
    let rss = num(results, "/efg_backlog/rss_mib_queued");
    let rss_restarted = num(results, "/efg_backlog/rss_mib_after_restart");
    let rss_worst = rss.zip(rss_restarted).map(|(a, b)| a.max(b)).or(rss);
    let ready = num(results, "/efg_backlog/restart_to_ready_s");
    vec![
        Target {
            name: "ingest paused / plain",
            wanted: ">= 0.50".into(),
            value: ratio,
            met: ratio.map(|r| r >= 0.5),
        },
        Target {
            name: "sustained delivered events/s (queue flat)",
            wanted: ">= 12000".into(),
            value: sustained,
            met: sustained.map(|s| s >= 12_000.0 && flat == Some(true)),
        },
        Target {
            name: "p99 ack at the latency rate (ms)",
            wanted: "<= 3".into(),
            value: ack_p99,
            met: ack_p99.map(|v| v <= 3.0),
        },
        Target {
            name: "p99 notification->callback (ms)",
            wanted: "<= 5".into(),
            value: callback_p99,
            met: callback_p99.map(|v| v <= 5.0),
        },
        Target {
            name: "RSS with the backlog queued (MiB)",
            wanted: "<= 64".into(),
            value: rss_worst,
            met: rss_worst.map(|v| v <= 64.0),
        },
        Target {
            name: "restart to READY with the backlog (s)",
            wanted: "<= 3".into(),
            value: ready,
            met: ready.map(|v| v <= 3.0),
        },
    ]
}

fn print_table(results: &Map<String, Value>, env: &Env) {
    let n = |p: &str| num(results, p);
    let plain = n("/plain/ok_per_s");
    let durable_plain = n("/plain_durable/ok_per_s");
    let ratio = |v: Option<f64>| v.zip(plain).map(|(a, p)| a / p);
    let durable_ratio = |v: Option<f64>| v.zip(durable_plain).map(|(a, p)| a / p);
    let mut lines: Vec<(String, String, String)> = Vec::new();
    let mut row = |figure: &str, value: String, note: String| {
        lines.push((figure.to_owned(), value, note));
    };
    let lat = |base: &str| {
        format!(
            "p50 {} / p99 {} ms",
            fmt(n(&format!("{base}/p50_ms")), 2),
            fmt(n(&format!("{base}/p99_ms")), 2)
        )
    };
    row(
        "plain hyper server, closed loop",
        format!("{} req/s", fmt(plain, 0)),
        lat("/plain/ack_latency"),
    );
    row(
        "plain + group-commit fdatasync",
        format!("{} req/s", fmt(durable_plain, 0)),
        lat("/plain_durable/ack_latency"),
    );
    row(
        "plain relay (in, out to the sink, 200)",
        format!("{} req/s", fmt(n("/plain_relay/ok_per_s"), 0)),
        lat("/plain_relay/ack_latency"),
    );
    row(
        "(a) durable ingest, instance paused",
        format!("{} req/s", fmt(n("/a_ingest_paused/ok_per_s"), 0)),
        format!(
            "{}x plain, {}x durable plain; {}; written {} B/ack ({} B to the device)",
            fmt(ratio(n("/a_ingest_paused/ok_per_s")), 3),
            fmt(durable_ratio(n("/a_ingest_paused/ok_per_s")), 3),
            lat("/a_ingest_paused/ack_latency"),
            fmt(n("/a_ingest_paused/written_per_ack/syscall_bytes"), 0),
            fmt(n("/a_ingest_paused/written_per_ack/device_bytes"), 0),
        ),
    );
    row(
        "(b) durable ingest, delivering",
        format!("{} req/s", fmt(n("/b_ingest_delivering/ok_per_s"), 0)),
        format!(
            "{}x plain; {}; delivered {}/s in the window, queue {} at the end",
            fmt(ratio(n("/b_ingest_delivering/ok_per_s")), 3),
            lat("/b_ingest_delivering/ack_latency"),
            fmt(
                n("/b_ingest_delivering/delivery/delivered_per_s_in_window"),
                0
            ),
            fmt(n("/b_ingest_delivering/queue_depth_at_end"), 0),
        ),
    );
    row(
        "(c) sustained ingest -> 2xx delivered",
        format!(
            "{} events/s",
            fmt(n("/c_sustained/delivery/delivered_per_s_in_window"), 0)
        ),
        format!(
            "{}x plain relay; offered {}/s; queue max {}, slope {}/s, flat: {}",
            fmt(
                n("/c_sustained/delivery/delivered_per_s_in_window")
                    .zip(n("/plain_relay/ok_per_s"))
                    .map(|(a, p)| a / p),
                3
            ),
            fmt(n("/c_sustained/offered_per_s"), 0),
            fmt(n("/c_sustained/queue_depth_max"), 0),
            fmt(n("/c_sustained/queue_depth_slope_per_s"), 1),
            results
                .get("c_sustained")
                .and_then(|c| c.get("queue_flat"))
                .map_or("-".to_owned(), Value::to_string)
        ),
    );
    row(
        &format!("(d) ack latency at {}/s", env.latency_rate),
        lat("/d_latency/ack_latency"),
        format!("p99.9 {} ms", fmt(n("/d_latency/ack_latency/p999_ms"), 2)),
    );
    row(
        "(d) notification -> callback",
        lat("/d_latency/delivery/notification_to_callback"),
        format!(
            "p99.9 {} ms",
            fmt(n("/d_latency/delivery/notification_to_callback/p999_ms"), 2)
        ),
    );
    row(
        "(e) RSS idle",
        format!("{} MiB", fmt(n("/efg_backlog/rss_mib_idle"), 1)),
        String::new(),
    );
    row(
        &format!("(e) RSS with {} queued", env.queued),
        format!("{} MiB", fmt(n("/efg_backlog/rss_mib_queued"), 1)),
        format!(
            "HWM while queueing {} MiB; after restart {} MiB; peak draining {} MiB",
            fmt(n("/efg_backlog/rss_mib_hwm_while_queueing"), 1),
            fmt(n("/efg_backlog/rss_mib_after_restart"), 1),
            fmt(n("/efg_backlog/rss_mib_peak_while_draining"), 1)
        ),
    );
    row(
        &format!("(f) restart to READY, {} queued", env.queued),
        format!("{} s", fmt(n("/efg_backlog/restart_to_ready_s"), 3)),
        format!("SIGTERM to exit {} s", fmt(n("/efg_backlog/stop_s"), 3)),
    );
    row(
        "(g) disk per queued event",
        format!(
            "{} B",
            fmt(n("/efg_backlog/disk/bytes_per_queued_event"), 0)
        ),
        format!(
            "store {} MiB queued, {} MiB after the backlog drained",
            fmt(
                n("/efg_backlog/disk/queued_bytes_allocated").map(|b| b / MIB),
                1
            ),
            fmt(
                n("/efg_backlog/disk/drained_bytes_allocated").map(|b| b / MIB),
                1
            )
        ),
    );
    row(
        "(g) backlog drain after SIGHUP unpause",
        format!("{} events/s", fmt(n("/efg_backlog/drain_per_s"), 0)),
        format!("{} s for the backlog", fmt(n("/efg_backlog/drain_s"), 1)),
    );
    let width = lines.iter().map(|l| l.0.len()).max().unwrap_or(0);
    let value_width = lines.iter().map(|l| l.1.len()).max().unwrap_or(0);
    println!();
    for (figure, value, note) in &lines {
        println!("{figure:<width$}  {value:>value_width$}  {note}");
    }
    if !env.smoke {
        println!();
        println!("targets (issue 8):");
        for t in targets(results) {
            let verdict = match t.met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "-",
            };
            println!(
                "  {:<44} {:>8}  wanted {:<8} {verdict}",
                t.name,
                fmt(t.value, 3),
                t.wanted
            );
        }
    }
}

// === main ===

async fn bench(env: &Env, results: &mut Map<String, Value>) -> Fallible<()> {
    let step = |name: &str| {
        eprintln!("[{:>6.1} s] {name}", epoch().elapsed().as_secs_f64());
    };
    let wanted = |name: &str| env.scenarios.iter().any(|s| s == name);
    if wanted("plain") {
        step("plain hyper server, closed loop");
        results.insert("plain".into(), scenario_plain(env, env.plain_addr).await?);
        step("plain hyper server + group-commit fdatasync, closed loop");
        let durable = scenario_plain(env, env.durable_plain_addr).await?;
        results.insert("plain_durable".into(), durable);
        step("plain hyper relay to the sink, closed loop");
        let relay = scenario_plain(env, env.relay_addr).await?;
        env.sink.take();
        results.insert("plain_relay".into(), relay);
    }
    if wanted("a") {
        step("(a) durable ingest, instance paused");
        results.insert("a_ingest_paused".into(), scenario_ingest(env, true).await?);
    }
    // (c) runs at 90% of what (b) delivered unless told a rate.
    let mut rate = env.sustained_rate.unwrap_or(1000.0);
    if wanted("b") {
        step("(b) durable ingest with delivery");
        let b = scenario_ingest(env, false).await?;
        check_delivered("(b)", &b)?;
        let delivered = b
            .pointer("/delivery/delivered_per_s_in_window")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        let acked = b.get("ok_per_s").and_then(Value::as_f64).unwrap_or(0.0);
        rate = env
            .sustained_rate
            .unwrap_or(0.9 * delivered.min(acked))
            .max(50.0);
        results.insert("b_ingest_delivering".into(), b);
    }
    if wanted("c") {
        step(&format!("(c) sustained, open loop at {rate:.0}/s"));
        let c = scenario_sustained(env, rate).await?;
        check_delivered("(c)", &c)?;
        results.insert("c_sustained".into(), c);
    }
    if wanted("d") {
        step(&format!("(d) latency, open loop at {}/s", env.latency_rate));
        let d = scenario_latency(env).await?;
        check_delivered("(d)", &d)?;
        results.insert("d_latency".into(), d);
    }
    if wanted("efg") {
        step(&format!(
            "(e, f, g) {} queued: memory, restart, disk, drain",
            env.queued
        ));
        let efg = scenario_backlog(env).await?;
        check_delivered("(e, f, g)", &efg)?;
        results.insert("efg_backlog".into(), efg);
    }
    step("done");
    Ok(())
}

fn machine() -> Value {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let meminfo = read("/proc/meminfo");
    let mem_total_kib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok());
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned());
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu,
        "mem_total_mib": mem_total_kib.map(|k| k / 1024),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
    })
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    let _ = epoch();
    if args.smoke {
        args.duration = 3;
        args.queued = 2000;
        args.latency_rate = 200.0;
    }
    const SCENARIOS: [&str; 6] = ["plain", "a", "b", "c", "d", "efg"];
    if let Some(unknown) = args
        .scenarios
        .iter()
        .find(|s| !SCENARIOS.contains(&s.as_str()))
    {
        eprintln!("hookrelay-bench: unknown scenario {unknown:?} (known: {SCENARIOS:?})");
        return ExitCode::from(2);
    }
    if args.connections == 0 || args.duration == 0 || args.latency_rate <= 0.0 {
        eprintln!("hookrelay-bench: --connections, --duration and --latency-rate must be > 0");
        return ExitCode::from(2);
    }
    let hookrelay = args.hookrelay.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .map(|p| p.with_file_name("hookrelay"))
            .unwrap_or_else(|_| PathBuf::from("hookrelay"))
    });
    // Absolute: the daemon is started with its own working directory.
    let hookrelay = match std::fs::canonicalize(&hookrelay) {
        Ok(path) => path,
        Err(e) => {
            eprintln!(
                "hookrelay-bench: {}: {e} (build it first, or pass --hookrelay)",
                hookrelay.display()
            );
            return ExitCode::from(2);
        }
    };

    // The sink: one thread, a current-thread runtime, like a small real consumer.
    let sink = Arc::new(Sink::default());
    let bind = || -> std::io::Result<(std::net::TcpListener, SocketAddr)> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        Ok((listener, addr))
    };
    let (
        Ok((sink_listener, sink_addr)),
        Ok((plain_listener, plain_addr)),
        Ok((durable_listener, durable_plain_addr)),
        Ok((relay_listener, relay_addr)),
    ) = (bind(), bind(), bind(), bind())
    else {
        eprintln!("hookrelay-bench: cannot bind four listeners on 127.0.0.1");
        return ExitCode::FAILURE;
    };
    let work_dir = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let durable_file = work_dir.join(format!(
        "hookrelay-bench-{}-durable-plain.log",
        std::process::id()
    ));
    let durable_plain = match DurablePlain::start(durable_file) {
        Ok(durable_plain) => durable_plain,
        Err(e) => {
            eprintln!("hookrelay-bench: cannot start the durable plain server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let sink_for_thread = sink.clone();
    let sink_thread = std::thread::Builder::new()
        .name("bench-sink".into())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok(listener) = TcpListener::from_std(sink_listener) else {
                    return;
                };
                serve(listener, move |request| {
                    sink_for_thread.clone().handle(request)
                })
                .await;
            });
        });
    // The plain server: two workers, as hookrelay has on two cores.
    let plain_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-plain")
        .enable_all()
        .build();
    // Orchestration, admin requests and samplers; the load itself runs on its own threads.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-main")
        .enable_all()
        .build();
    let (Ok(_), Ok(plain_runtime), Ok(runtime)) = (sink_thread, plain_runtime, runtime) else {
        eprintln!("hookrelay-bench: cannot start the runtimes");
        return ExitCode::FAILURE;
    };
    plain_runtime.spawn(async move {
        if let Ok(listener) = TcpListener::from_std(plain_listener) {
            serve(listener, plain).await;
        }
    });
    let relay = PlainRelay {
        sink: sink_addr,
        idle: Arc::new(Mutex::new(Vec::new())),
    };
    plain_runtime.spawn(async move {
        if let Ok(listener) = TcpListener::from_std(relay_listener) {
            serve(listener, move |request| relay.clone().handle(request)).await;
        }
    });
    plain_runtime.spawn(async move {
        if let Ok(listener) = TcpListener::from_std(durable_listener) {
            serve(listener, move |request| {
                durable_plain.clone().handle(request)
            })
            .await;
        }
    });

    let env = Env {
        smoke: args.smoke,
        duration: Duration::from_secs(args.duration),
        queued: args.queued.max(1),
        connections: args.connections,
        latency_rate: args.latency_rate,
        sustained_rate: args.sustained_rate,
        hookrelay: hookrelay.clone(),
        work_dir,
        perf: args.perf.clone(),
        cache_bytes: args.cache_bytes.clone(),
        scenarios: args.scenarios.clone(),
        sink,
        sink_addr,
        plain_addr,
        durable_plain_addr,
        relay_addr,
    };
    let mut results = Map::new();
    let outcome = runtime.block_on(bench(&env, &mut results));
    runtime.shutdown_timeout(Duration::from_secs(2));
    plain_runtime.shutdown_background();

    print_table(&results, &env);
    let target_list = targets(&results);
    let report = json!({
        "mode": if args.smoke { "smoke" } else { "full" },
        "duration_s": args.duration,
        "queued": env.queued,
        "connections": args.connections,
        "latency_rate": args.latency_rate,
        "hookrelay": hookrelay.display().to_string(),
        "machine": machine(),
        "error": outcome.as_ref().err(),
        "targets": if args.smoke { Value::Null } else {
            target_list.iter().map(|t| json!({
                "name": t.name, "wanted": t.wanted, "value": t.value, "met": t.met,
            })).collect::<Vec<_>>().into()
        },
        "results": results,
    });
    if let Some(path) = &args.out {
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::File::create(path))
            .and_then(|mut f| {
                f.write_all(
                    serde_json::to_string_pretty(&report)
                        .unwrap_or_default()
                        .as_bytes(),
                )
            });
        match written {
            Ok(()) => eprintln!("results written to {}", path.display()),
            Err(err) => eprintln!("hookrelay-bench: cannot write {}: {err}", path.display()),
        }
    }
    match outcome {
        Err(err) => {
            eprintln!("hookrelay-bench: FAILED: {err}");
            ExitCode::FAILURE
        }
        Ok(())
            if args.check_targets
                && !args.smoke
                && target_list.iter().any(|t| t.met != Some(true)) =>
        {
            eprintln!("hookrelay-bench: some targets were missed");
            ExitCode::from(3)
        }
        Ok(()) => ExitCode::SUCCESS,
    }
}
