//! The load generator: unique signed Dropbox notifications over kept-alive HTTP/1.1
//! connections, closed loop or open loop at a fixed rate, the ack latency of every request.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use serde_json::{Map, Value, json};
use tokio::task::JoinSet;

use crate::clock::now_ns;
use crate::daemon::APP_SECRET;
use crate::figures::{latency_json, round};
use crate::http::{connect, exchange};
use crate::procfs::own_thread_ticks;

/// Distinct Dropbox accounts the notifications rotate through.
const ACCOUNTS: u64 = 64;
/// Bound on one request of the generator (hookrelay's own callback timeout is 10 s too).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// An open-loop request that starts this much after its scheduled time counts as late.
const LATE: Duration = Duration::from_millis(5);
/// Load-generator threads (like `wrk -t2` on this two-core box).
const GENERATOR_THREADS: usize = 2;

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

#[derive(Debug, Clone, Copy)]
pub(crate) enum Pace {
    /// Each connection sends its next request when the last one is answered.
    Closed,
    /// Requests scheduled at a fixed total rate, spread round-robin over the connections;
    /// a connection that falls behind sends at once (and counts the request as late).
    Open(f64),
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    pub(crate) addr: SocketAddr,
    pub(crate) connections: usize,
    pub(crate) pace: Pace,
    /// How long to send (the hard bound when `budget` is set).
    pub(crate) duration: Duration,
    /// Stop after this many 2xx answers in all.
    pub(crate) budget: Option<u64>,
    /// Keep the sequence numbers of 2xx answers (to check every one was delivered).
    pub(crate) track: bool,
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

pub(crate) struct LoadResult {
    pub(crate) elapsed: Duration,
    pub(crate) ok: u64,
    pub(crate) statuses: BTreeMap<u16, u64>,
    pub(crate) errors: u64,
    late: u64,
    /// Sorted ack latencies of every answered request.
    latencies_ns: Vec<u32>,
    pub(crate) acked: Vec<u64>,
    pub(crate) last_error: Option<String>,
    /// `now_ns()` at the start and the end of the sending window.
    pub(crate) window_ns: (u64, u64),
    /// CPU ticks the generator threads used.
    pub(crate) generator_ticks: u64,
}

impl LoadResult {
    fn ok_per_s(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub(crate) fn json(&self) -> Value {
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
pub(crate) async fn run_load(load: Load) -> LoadResult {
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
