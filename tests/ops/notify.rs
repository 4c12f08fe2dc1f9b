//! sd_notify as systemd sees it, on a `NOTIFY_SOCKET` the test owns: READY after start,
//! WATCHDOG while alive, RELOADING + MONOTONIC_USEC then READY around a valid and an invalid
//! reload, STOPPING on SIGTERM.

use tokio::net::UnixDatagram;

use crate::support::{Callback, Relay, Setup, WAIT};

/// Every datagram received so far, and the socket.
struct Manager {
    socket: UnixDatagram,
    seen: Vec<String>,
}

impl Manager {
    /// Receives until a datagram satisfies `wanted`; returns it (bounded).
    async fn until(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut buffer = vec![0u8; 4096];
        loop {
            let received = tokio::time::timeout_at(deadline, self.socket.recv(&mut buffer)).await;
            let Ok(Ok(length)) = received else {
                panic!("no {what}; received {:?}", self.seen);
            };
            let datagram = String::from_utf8_lossy(&buffer[..length]).into_owned();
            self.seen.push(datagram.clone());
            if wanted(&datagram) {
                return datagram;
            }
        }
    }
}

fn monotonic_usec() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(now.tv_nsec / 1_000).unwrap_or(0)
}

/// A reload's first datagram: `RELOADING=1` and `MONOTONIC_USEC` within [before, now].
fn assert_reloading(datagram: &str, before: u64) {
    let after = monotonic_usec();
    let mut lines = datagram.lines();
    assert_eq!(lines.next(), Some("RELOADING=1"), "{datagram}");
    let usec: u64 = lines
        .next()
        .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {datagram:?}"));
    assert!(
        before <= usec && usec <= after,
        "{before} <= {usec} <= {after}"
    );
}

async fn generation(relay: &Relay) -> u64 {
    let (_, body) = relay.admin("GET", "/readyz", None).await;
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    json["config_generation"].as_u64().expect("a generation")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_watchdog_reloads_and_stopping_are_announced() {
    let callback = Callback::start(200).await;
    let setup = Setup::new(&callback.url);
    let mut relay = Relay::new(setup.clone());
    let path = relay.dir.path().join("notify.sock");
    let mut manager = Manager {
        socket: UnixDatagram::bind(&path).expect("bind the notify socket"),
        seen: Vec::new(),
    };
    relay.env("NOTIFY_SOCKET", path.to_str().expect("utf-8 path"));
    relay.env("WATCHDOG_USEC", "2000000");
    relay.spawn().await;

    let first = manager
        .until("READY=1", |d| {
            !d.starts_with("STATUS=") && d != "WATCHDOG=1"
        })
        .await;
    assert_eq!(
        first, "READY=1",
        "the first state change is READY: {:?}",
        manager.seen
    );
    manager
        .until("a STATUS line", |d| {
            d.starts_with("STATUS=ready") && d.contains("0 queued")
        })
        .await;
    manager.until("WATCHDOG=1", |d| d == "WATCHDOG=1").await;

    // A valid reload: RELOADING + MONOTONIC_USEC, then READY; generation 2.
    let mut changed = setup.clone();
    changed.tags = r#"["ops", "reloaded"]"#.into();
    relay.write_config(&changed.text());
    let before = monotonic_usec();
    relay.signal("HUP");
    let reloading = manager
        .until("RELOADING=1", |d| d.starts_with("RELOADING=1"))
        .await;
    assert_reloading(&reloading, before);
    manager
        .until("READY=1 after the reload", |d| d == "READY=1")
        .await;
    assert_eq!(generation(&relay).await, 2);

    // An invalid reload: the same sequence, and the old config keeps running.
    relay.write_config(&format!("{}\n[colour]\nhue = 1\n", changed.text()));
    let before = monotonic_usec();
    relay.signal("HUP");
    let reloading = manager
        .until("RELOADING=1", |d| d.starts_with("RELOADING=1"))
        .await;
    assert_reloading(&reloading, before);
    manager
        .until("READY=1 after the rejected reload", |d| d == "READY=1")
        .await;
    manager
        .until("a STATUS saying the reload was rejected", |d| {
            d.starts_with("STATUS=") && d.contains("rejected")
        })
        .await;
    assert_eq!(generation(&relay).await, 2);

    // Still pinging the watchdog after the reloads.
    manager.until("WATCHDOG=1", |d| d == "WATCHDOG=1").await;

    let stop = relay.stop();
    let (status, stopping) = tokio::join!(stop, manager.until("STOPPING=1", |d| d == "STOPPING=1"));
    assert!(status.success(), "exit {status}\n{}", relay.logs());
    assert_eq!(stopping, "STOPPING=1");
    let reloads = manager
        .seen
        .iter()
        .filter(|d| d.starts_with("RELOADING=1"))
        .count();
    assert_eq!(reloads, 2, "{:?}", manager.seen);
}
