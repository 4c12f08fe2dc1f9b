//! Destination faults: a `FaultProxy` of our own between the daemon and one instance's callback —
//! latency, 1-byte slices, a slow drip, a blackhole, a reset in the middle of the answer — beside a
//! healthy instance on the same daemon. The healthy instance gets every event while the faulty one
//! still fails; failing attempts end at the configured `timeout` (plus slack), are retried on the
//! schedule, and every event is delivered once the proxy passes again: 0 lost, 0 corrupted (every
//! delivery's signatures are verified).
//!
//! Short tier: 20 events per scenario. Long tier (`HOOKRELAY_LONG_TESTS=1`): 200 events, and
//! more failed attempts per event before the proxy heals.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::support::App;
use crate::support::callback::verify_signatures;
use crate::support::dropbox::{account_id, notification_body, post_notification};
use crate::support::fault_proxy::{Conn, FaultProxy, Mode};
use crate::support::store::{dead, pending};
use crate::support::{
    Daemon, FakeCallback, InstanceConfig, Recorded, TestConfig, tier, wait_until,
};

const WHSEC: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
/// The retry schedule of `TestConfig::new()`: 200 ms × 2^(n−1), at most 2 s, × U(0.8, 1.2).
const RETRY_INITIAL: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(2);

fn delay(n: u32) -> Duration {
    (RETRY_INITIAL * 2u32.pow(n.saturating_sub(1).min(10))).min(RETRY_MAX)
}

async fn counter(d: &Daemon, selector: &str) -> f64 {
    d.metric(selector).await.unwrap_or(0.0)
}

fn delivered(name: &str) -> String {
    format!("hookrelay_deliveries_total{{instance_name=\"{name}\",outcome=\"delivered\"}}")
}

fn failed_attempts(name: &str) -> String {
    format!("hookrelay_deliveries_total{{instance_name=\"{name}\",outcome=\"error\"}}")
}

fn queue_depth(name: &str) -> String {
    format!("hookrelay_queue_depth{{instance_name=\"{name}\"}}")
}

/// Checks every delivery a callback recorded: both signatures verify, the envelope names the
/// instance, and its account is one we sent. Returns the accounts answered 200.
fn check_deliveries(
    reqs: &[Recorded],
    instance: &str,
    sent: &BTreeSet<String>,
) -> BTreeSet<String> {
    for (n, r) in reqs.iter().enumerate() {
        verify_signatures(r, WHSEC)
            .unwrap_or_else(|e| panic!("{instance}: delivery {n} is corrupted: {e}"));
        let m = r.message();
        assert_eq!(m["instanceName"], instance, "{m}");
        assert!(
            sent.contains(&r.account()),
            "{instance}: unknown account in {m}"
        );
    }
    reqs.iter()
        .filter(|r| r.answered == Some(200))
        .map(Recorded::account)
        .collect()
}

struct Setup {
    d: Daemon,
    healthy: FakeCallback,
    upstream: FakeCallback,
    proxy: FaultProxy,
    app: App,
}

/// A daemon with `healthy` (straight to a fake callback) and `faulty` (through a proxy in
/// `mode`), both signing with [`WHSEC`], without coalescing, `faulty` with `timeout`.
async fn setup(mode: Mode, timeout: &str) -> Setup {
    let app = App::new("app-key");
    let healthy = FakeCallback::ok().await;
    let upstream = FakeCallback::ok().await;
    let proxy = FaultProxy::start(upstream.addr(), mode).await;
    let cfg = TestConfig::new()
        .instance(
            InstanceConfig::new("healthy", 1, &app)
                .callback(&healthy.url())
                .signature_key(WHSEC)
                .coalesce(false)
                .delivery("rate_limit", "1000/s")
                .delivery("rate_limit_burst", 100_u32),
        )
        .instance(
            InstanceConfig::new("faulty", 2, &app)
                .callback(&proxy.url())
                .signature_key(WHSEC)
                .coalesce(false)
                .delivery("timeout", timeout)
                .delivery("max_attempts", 1000_u32)
                // Every event in flight at once, so retries wait for the schedule only, never
                // for a free slot (the long tier sends 200 events).
                .delivery("concurrency", 256_u32)
                .delivery("rate_limit", "1000/s")
                .delivery("rate_limit_burst", 100_u32),
        );
    let d = Daemon::start(&cfg).await;
    Setup {
        d,
        healthy,
        upstream,
        proxy,
        app,
    }
}

/// Posts one notification per account (4 senders), each answered 200; returns when the last
/// was acknowledged.
async fn send_all(s: &Setup, accounts: &[String]) -> Instant {
    let mut senders = tokio::task::JoinSet::new();
    for chunk in accounts.chunks(accounts.len().div_ceil(4)) {
        let (url, secret, chunk) = (s.d.ingest_url(), s.app.secret.clone(), chunk.to_vec());
        senders.spawn(async move {
            for account in chunk {
                let status =
                    post_notification(&url, &secret, &notification_body(&[&account])).await;
                assert_eq!(status, 200, "notification for {account}");
            }
        });
    }
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(r) = senders.join_next().await {
            r.expect("a sender failed");
        }
    })
    .await
    .expect("sending the notifications");
    Instant::now()
}

/// Fault-mode connections per event id, in attempt order.
fn attempts_by_event(conns: &[Conn], mode: Mode) -> BTreeMap<String, Vec<Conn>> {
    let mut by_event: BTreeMap<String, Vec<Conn>> = BTreeMap::new();
    for c in conns.iter().filter(|c| c.mode == mode) {
        if let Some(id) = &c.event_id {
            by_event.entry(id.clone()).or_default().push(c.clone());
        }
    }
    for attempts in by_event.values_mut() {
        attempts.sort_by_key(|c| c.first_byte);
    }
    by_event
}

/// Retry n+1 comes no earlier than attempt n's end + 0.8 × delay(n) (less 100 ms: the proxy
/// notices an end a little after the daemon), and not much later than its end + 1.2 × delay(n)
/// (+3 s of slack for a busy 2-core machine).
fn check_schedule(by_event: &BTreeMap<String, Vec<Conn>>) -> Duration {
    let mut worst_late = Duration::ZERO;
    for (id, attempts) in by_event {
        for (k, pair) in attempts.windows(2).enumerate() {
            let n = k as u32 + 1;
            let (this, next) = (&pair[0], &pair[1]);
            let (Some(ended), Some(next_start)) = (this.closed, next.first_byte) else {
                panic!(
                    "event {id}: attempt {n} has no end or attempt {} no start",
                    n + 1
                );
            };
            let wait = next_start.saturating_duration_since(ended);
            let earliest = delay(n)
                .mul_f64(0.8)
                .saturating_sub(Duration::from_millis(100));
            let latest = delay(n).mul_f64(1.2) + Duration::from_secs(3);
            assert!(
                wait >= earliest,
                "event {id}: retry {n} came {wait:?} after attempt {n} ended, before {earliest:?}"
            );
            assert!(
                wait <= latest,
                "event {id}: retry {n} came {wait:?} after attempt {n} ended, after {latest:?}"
            );
            worst_late = worst_late.max(wait.saturating_sub(delay(n).mul_f64(1.2)));
        }
    }
    worst_late
}

/// A failing fault: while the proxy is in `mode`, the healthy instance gets all `n` events and
/// the faulty one none; every event is attempted `min_attempts` times on schedule; then the
/// proxy passes and every event is delivered.
async fn failing_destination(mode: Mode, timeout: Duration, min_attempts: usize) {
    let n = tier(20, 200);
    let s = setup(mode, &format!("{}ms", timeout.as_millis())).await;
    let accounts: Vec<String> = (0..n).map(|_| account_id()).collect();
    let sent: BTreeSet<String> = accounts.iter().cloned().collect();
    let started = Instant::now();
    let acked = send_all(&s, &accounts).await;

    // The healthy instance gets everything, promptly, while the faulty one fails.
    s.healthy.wait_for(n, Duration::from_secs(30)).await;
    let healthy_lag = acked.elapsed();
    assert!(
        healthy_lag < Duration::from_secs(10),
        "the healthy instance took {healthy_lag:?} after the last ack"
    );
    assert_eq!(
        counter(&s.d, &delivered("faulty")).await,
        0.0,
        "the faulty instance delivered through a {mode:?} proxy"
    );

    // Each event is tried again and again, on schedule, while the fault lasts.
    s.proxy
        .wait_until(
            Duration::from_secs(20 + 3 * min_attempts as u64 * timeout.as_secs().max(1)),
            &format!("{min_attempts} attempts of each of {n} events"),
            |conns| {
                let by_event = attempts_by_event(conns, mode);
                by_event.len() == n
                    && by_event.values().all(|a| {
                        a.len() >= min_attempts
                            && a[..min_attempts].iter().all(|c| c.closed.is_some())
                    })
            },
        )
        .await;
    assert_eq!(counter(&s.d, &delivered("faulty")).await, 0.0);
    assert!(counter(&s.d, &failed_attempts("faulty")).await >= (n * min_attempts) as f64);
    s.proxy.set_mode(Mode::Pass);

    // Healed: every event is delivered, none lost, none dead.
    wait_until(
        Duration::from_secs(60),
        "every faulty event delivered",
        || async {
            counter(&s.d, &delivered("faulty")).await >= n as f64
                && counter(&s.d, &queue_depth("faulty")).await == 0.0
        },
    )
    .await;
    let healed = started.elapsed();
    // Exactly one success per event: with the store empty below, each event ended in a 2xx.
    assert_eq!(counter(&s.d, &delivered("faulty")).await, n as f64);

    let conns_at_end = s.proxy.conns();
    let by_event = attempts_by_event(&conns_at_end, mode);
    // Timeouts cut these attempts: each connection was closed by the daemon while the answer's
    // status line (17 bytes) was still incomplete, so no answer was read. How long they took
    // is printed below, not asserted (these machines are shared and noisy).
    let mut longest = Duration::ZERO;
    if matches!(mode, Mode::Blackhole | Mode::Drip(_)) {
        for c in conns_at_end.iter().filter(|c| c.mode == mode) {
            let (Some(start), Some(end)) = (c.first_byte, c.closed) else {
                continue;
            };
            longest = longest.max(end - start);
            assert!(
                c.bytes_down < "HTTP/1.1 200 OK\r\n".len(),
                "a {mode:?} attempt received {} bytes: the answer was not cut by the timeout",
                c.bytes_down
            );
        }
    }
    let worst_late = check_schedule(&by_event);
    let max_attempts = by_event.values().map(Vec::len).max().unwrap_or(0);

    let healthy_got = check_deliveries(&s.healthy.requests(), "healthy", &sent);
    assert_eq!(healthy_got, sent, "the healthy instance lost events");
    assert_eq!(s.healthy.count(), n, "the healthy instance got duplicates");
    let faulty_got = check_deliveries(&s.upstream.requests(), "faulty", &sent);
    assert_eq!(faulty_got, sent, "the faulty instance lost events");
    eprintln!(
        "faults {mode:?}: {n} events; healthy done {healthy_lag:?} after the last ack; \
         ≥{min_attempts} failed attempts each (max {max_attempts}); longest failed attempt \
         {} (timeout {timeout:?}); retries at most {worst_late:?} late; all delivered \
         {healed:?} after the first send; upstream saw {} requests",
        if longest.is_zero() {
            "n/a".to_owned()
        } else {
            format!("{longest:?}")
        },
        s.upstream.count()
    );

    let mut d = s.d;
    d.stop().await;
    assert!(pending(&d.store_path()).is_empty(), "events left pending");
    assert!(dead(&d.store_path()).is_empty(), "events dead-lettered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_destination_times_out_retries_and_delivers_once_healed() {
    failing_destination(Mode::Blackhole, Duration::from_secs(1), tier(3, 5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_dripping_1_byte_per_second_times_out_and_is_retried() {
    failing_destination(
        Mode::Drip(Duration::from_secs(1)),
        Duration::from_millis(2500),
        tier(2, 4),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_in_the_middle_of_the_answer_is_a_failure_and_is_retried() {
    failing_destination(Mode::ResetMidResponse, Duration::from_secs(5), tier(3, 6)).await;
}

/// Slow or chopped-up links that still answer within `timeout` deliver every event at the
/// first attempt, and the healthy instance is not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_sliced_links_deliver_every_event_at_the_first_attempt() {
    let n = tier(20, 200);
    for mode in [
        Mode::Latency(Duration::from_millis(300)),
        Mode::Slice,
        Mode::Drip(Duration::from_millis(15)),
    ] {
        let s = setup(mode, "5s").await;
        let accounts: Vec<String> = (0..n).map(|_| account_id()).collect();
        let sent: BTreeSet<String> = accounts.iter().cloned().collect();
        let acked = send_all(&s, &accounts).await;
        s.healthy.wait_for(n, Duration::from_secs(30)).await;
        let healthy_lag = acked.elapsed();
        wait_until(
            Duration::from_secs(60),
            "every faulty event delivered",
            || async { counter(&s.d, &delivered("faulty")).await >= n as f64 },
        )
        .await;
        let faulty_lag = acked.elapsed();
        assert_eq!(
            counter(&s.d, "hookrelay_deliveries_total{instance_name=\"faulty\"}").await,
            n as f64,
            "{mode:?}: attempts other than one success per event"
        );
        let faulty_got = check_deliveries(&s.upstream.requests(), "faulty", &sent);
        assert_eq!(faulty_got, sent, "{mode:?}: events lost");
        assert_eq!(s.upstream.count(), n, "{mode:?}: duplicates");
        assert_eq!(
            check_deliveries(&s.healthy.requests(), "healthy", &sent),
            sent
        );
        assert!(
            healthy_lag < Duration::from_secs(10),
            "{mode:?}: the healthy instance took {healthy_lag:?}"
        );
        eprintln!(
            "faults {mode:?}: {n} events, each delivered at the first attempt; healthy done \
             {healthy_lag:?}, faulty {faulty_lag:?} after the last ack; {} proxy connections",
            s.proxy.conns().len()
        );
        let mut d = s.d;
        d.stop().await;
        assert!(pending(&d.store_path()).is_empty());
    }
}
