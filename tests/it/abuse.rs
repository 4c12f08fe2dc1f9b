//! Receiver abuse: signature variants judged on the raw bytes, oversize bodies refused without
//! being read, a body slower than the body timeout, hundreds of slowloris connections beside
//! legitimate traffic, an over-long challenge. Rejected requests change nothing in the store
//! (instances are paused, so accepted events stay inspectable).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::dropbox::{account_id, notification_body, post_notification, post_raw, sign};
use crate::support::http::get;
use crate::support::store::{dead, pending};
use crate::support::{App, Daemon, InstanceConfig, TestConfig, tier};

/// Instances are paused: what is accepted stays in the store for inspection.
fn paused_config(app: &App) -> TestConfig {
    TestConfig::new().instance(
        InstanceConfig::new("acme", 1, app)
            .callback("http://127.0.0.1:9/hooks")
            .paused(true)
            .coalesce(false),
    )
}

async fn counter(d: &Daemon, selector: &str) -> f64 {
    d.metric(selector).await.unwrap_or(0.0)
}

fn ingest_addr(d: &Daemon) -> SocketAddr {
    d.config().server_listen
}

/// Reads an HTTP/1 response head from `stream` (bounded); its status, or `None` when the
/// connection ended first.
async fn read_status(stream: &mut (impl AsyncReadExt + Unpin), within: Duration) -> Option<u16> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
            if buffer.windows(4).any(|w| w == b"\r\n\r\n") {
                return;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer within {within:?}");
    let text = String::from_utf8_lossy(&buffer);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
}

/// Pending events of the stopped daemon, by account.
fn pending_accounts(d: &Daemon) -> BTreeSet<String> {
    pending(&d.store_path())
        .into_iter()
        .map(|e| e.account)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_variants_are_judged_on_the_raw_bytes() {
    let app = App::new("app-key");
    let wrong = App::new("app-key");
    let mut d = Daemon::start(&paused_config(&app)).await;
    let url = d.ingest_url();

    // (what, signature for a body, expected status)
    type Signer = fn(&App, &App, &str) -> String;
    let cases: [(&str, Signer, u16); 12] = [
        ("empty", |_, _, _| String::new(), 403),
        (
            "odd length (63 hex digits)",
            |a, _, b| sign(&a.secret, b.as_bytes())[..63].to_owned(),
            403,
        ),
        (
            "65 hex digits",
            |a, _, b| format!("{}0", sign(&a.secret, b.as_bytes())),
            403,
        ),
        (
            "128 hex digits (the right one twice)",
            |a, _, b| sign(&a.secret, b.as_bytes()).repeat(2),
            403,
        ),
        (
            "valid hex of the wrong key",
            |_, w, b| sign(&w.secret, b.as_bytes()),
            403,
        ),
        ("64 non-hex characters", |_, _, _| "g".repeat(64), 403),
        (
            "sha256= prefix",
            |a, _, b| format!("sha256={}", sign(&a.secret, b.as_bytes())),
            403,
        ),
        (
            "base64 instead of hex",
            |a, _, b| {
                use base64::Engine as _;
                let raw = hex::decode(sign(&a.secret, b.as_bytes())).unwrap();
                base64::engine::general_purpose::STANDARD.encode(raw)
            },
            403,
        ),
        (
            "signature of the body re-serialised",
            |a, _, b| {
                let v: serde_json::Value = serde_json::from_str(b).unwrap();
                sign(&a.secret, serde_json::to_string(&v).unwrap().as_bytes())
            },
            403,
        ),
        (
            "the right one, upper case",
            |a, _, b| sign(&a.secret, b.as_bytes()).to_uppercase(),
            200,
        ),
        (
            "the right one, mixed case",
            |a, _, b| {
                sign(&a.secret, b.as_bytes())
                    .char_indices()
                    .map(|(i, c)| {
                        if i % 2 == 0 {
                            c.to_ascii_uppercase()
                        } else {
                            c
                        }
                    })
                    .collect()
            },
            200,
        ),
        (
            "the right one, lower case",
            |a, _, b| sign(&a.secret, b.as_bytes()),
            200,
        ),
    ];
    let mut accepted = BTreeSet::new();
    let mut refused = 0;
    for (what, signer, want) in cases {
        let account = account_id();
        let body = notification_body(&[&account]);
        let signature = signer(&app, &wrong, &body);
        let r = post_raw(
            &url,
            &[
                ("Content-Type", "application/json"),
                ("X-Dropbox-Signature", &signature),
            ],
            body.into_bytes(),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(r.status, want, "{what}: {signature:?}");
        if want == 200 {
            accepted.insert(account);
        } else {
            refused += 1;
        }
    }
    // A header that is not even valid UTF-8 (raw bytes over TCP).
    let account = account_id();
    let body = notification_body(&[&account]);
    let mut stream = TcpStream::connect(ingest_addr(&d)).await.unwrap();
    let mut request = format!(
        "POST /events/dropbox HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nX-Dropbox-Signature: ",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&[0xff; 64]);
    request.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    request.extend_from_slice(body.as_bytes());
    stream.write_all(&request).await.unwrap();
    let status = read_status(&mut stream, Duration::from_secs(5)).await;
    assert!(
        status.is_none_or(|s| (400..500).contains(&s)),
        "non-UTF-8 signature answered {status:?}"
    );
    refused += 1;

    assert_eq!(
        counter(&d, r#"hookrelay_ingest_requests_total{result="accepted"}"#).await,
        accepted.len() as f64
    );
    assert!(
        counter(
            &d,
            r#"hookrelay_ingest_requests_total{result="bad_signature"}"#
        )
        .await
            >= (refused - 1) as f64
    );
    d.stop().await;
    assert_eq!(
        pending_accounts(&d),
        accepted,
        "stored events are not exactly the accepted ones"
    );
}

/// Sends `head`, then 16 KiB chunks until an answer arrives, writes stall for 2 s, the
/// connection breaks, or `within` passes. Returns the body bytes written before any of these
/// and the answer's status. The client's send buffer is 32 KiB (no autotuning).
async fn endless_chunked(addr: SocketAddr, head: &str, within: Duration) -> (usize, Option<u16>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(32 * 1024).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let answered = Arc::new(AtomicBool::new(false));
    let writing = tokio::spawn({
        let answered = answered.clone();
        async move {
            let chunk = format!("{:x}\r\n{}\r\n", 16 * 1024, "y".repeat(16 * 1024));
            let mut written = 0usize;
            let deadline = Instant::now() + Duration::from_secs(20);
            while !answered.load(Ordering::SeqCst) && Instant::now() < deadline {
                let write = writer.write_all(chunk.as_bytes());
                match tokio::time::timeout(Duration::from_secs(2), write).await {
                    Ok(Ok(())) => written += 16 * 1024,
                    _ => break,
                }
            }
            (written, writer)
        }
    });
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let _ = tokio::time::timeout(within, async {
        while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    answered.store(true, Ordering::SeqCst);
    let (written, _writer) = tokio::time::timeout(Duration::from_secs(30), writing)
        .await
        .expect("the chunked writer stops")
        .unwrap();
    let text = String::from_utf8_lossy(&buffer);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    (written, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_bodies_are_refused_without_being_read() {
    const LIMIT: usize = 64 * 1024;
    let app = App::new("app-key");
    let mut d = Daemon::start(&paused_config(&app).max_body_bytes("64KiB")).await;
    let addr = ingest_addr(&d);

    // A declared Content-Length over the limit is refused before any body byte is sent.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /events/dropbox HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nX-Dropbox-Signature: {}\r\n\r\n",
        1u64 << 30,
        "0".repeat(64)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    assert_eq!(
        read_status(&mut stream, Duration::from_secs(5)).await,
        Some(413)
    );
    let declared_answer = started.elapsed();

    // One byte over the limit, signed and sent whole.
    let padding = "x".repeat(LIMIT);
    let body = format!(
        "{{\"list_folder\": {{\"accounts\": [\"{}\"]}}, \"pad\": \"{padding}\"}}",
        account_id()
    );
    let body = &body[..LIMIT + 1];
    let r = post_raw(
        &d.ingest_url(),
        &[("X-Dropbox-Signature", &sign(&app.secret, body.as_bytes()))],
        body.as_bytes().to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 413);

    // Chunked, without a length, endless: refused once past the limit. The client's send
    // buffer is fixed small, so what it manages to write before the answer is the body the
    // server took in plus what the kernel buffers; the baseline is the same client against a
    // listener that never reads.
    let head = format!(
        "POST /events/dropbox HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nX-Dropbox-Signature: {}\r\n\r\n",
        "0".repeat(64)
    );
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let _held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = sink.accept().await {
            held.push(socket);
        }
    });
    let (baseline, _) = endless_chunked(sink_addr, &head, Duration::from_secs(1)).await;
    let (written, status) = endless_chunked(addr, &head, Duration::from_secs(10)).await;
    assert_eq!(status, Some(413), "an endless chunked body");
    assert!(
        written <= LIMIT + baseline + (256 << 10),
        "{written} body bytes went out before the 413 (limit {LIMIT}, kernel buffers {baseline})"
    );

    // Chunked, signed, one byte over the limit in two chunks.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let (first, second) = body.split_at(LIMIT / 2);
    let request = format!(
        "POST /events/dropbox HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nX-Dropbox-Signature: {}\r\nConnection: close\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
        sign(&app.secret, body.as_bytes()),
        first.len(),
        second.len()
    );
    let _ = stream.write_all(request.as_bytes()).await;
    assert_eq!(
        read_status(&mut stream, Duration::from_secs(5)).await,
        Some(413)
    );

    assert!(counter(&d, r#"hookrelay_ingest_requests_total{result="too_large"}"#).await >= 4.0);
    assert_eq!(
        counter(&d, r#"hookrelay_ingest_requests_total{result="accepted"}"#).await,
        0.0
    );
    eprintln!(
        "abuse oversize: declared 1 GiB answered 413 in {declared_answer:?}; endless chunked body: \
         {written} bytes written before the 413 (limit {LIMIT}; a listener that never reads \
         takes {baseline})"
    );
    d.stop().await;
    assert!(pending(&d.store_path()).is_empty());
    assert!(dead(&d.store_path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_slower_than_the_body_timeout_fails_and_stores_nothing() {
    /// The daemon's time for a whole body once the headers are in (src/ingest: BODY_TIMEOUT).
    const BODY_TIMEOUT: Duration = Duration::from_secs(10);
    let app = App::new("app-key");
    let mut d = Daemon::start(&paused_config(&app)).await;
    let body = notification_body(&[&account_id()]);
    let mut stream = TcpStream::connect(ingest_addr(&d)).await.unwrap();
    let head = format!(
        "POST /events/dropbox HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Dropbox-Signature: {}\r\n\r\n",
        body.len(),
        sign(&app.secret, body.as_bytes())
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    // 2 bytes per second: the whole body would take ~50 s, five times the body timeout.
    let body_bytes = body.into_bytes();
    let drip = tokio::spawn(async move {
        for byte in body_bytes {
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let status = read_status(&mut reader, BODY_TIMEOUT + Duration::from_secs(10)).await;
    let took = started.elapsed();
    drip.abort();
    assert!(
        status.is_none_or(|s| (400..500).contains(&s)),
        "a body dripped past the timeout answered {status:?}"
    );
    assert!(
        took >= BODY_TIMEOUT - Duration::from_millis(500)
            && took <= BODY_TIMEOUT + Duration::from_secs(5),
        "the slow body was cut after {took:?} (body timeout {BODY_TIMEOUT:?})"
    );
    assert_eq!(
        counter(&d, r#"hookrelay_ingest_requests_total{result="accepted"}"#).await,
        0.0
    );
    eprintln!("abuse slow body: answered {status:?} after {took:?}");
    d.stop().await;
    assert!(
        pending(&d.store_path()).is_empty(),
        "a cut-off body was stored"
    );
}

/// Open file descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_neither_starve_signed_requests_nor_stay_open() {
    /// The daemon's header-read timeout (src/daemon.rs INGEST_LIMITS).
    const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
    let slow = tier(300, 900);
    let app = App::new("app-key");
    let mut d = Daemon::start(&paused_config(&app)).await;
    let addr = ingest_addr(&d);
    let baseline_fds = open_fds(d.pid());

    // Each slowloris connection sends a request line, then one header byte per second.
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..slow {
        clients.spawn(async move {
            let opened = Instant::now();
            let Ok(Ok(stream)) =
                tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await
            else {
                return Err("connect failed".to_owned());
            };
            let (mut reader, mut writer) = stream.into_split();
            let dripping = async move {
                let _ = writer
                    .write_all(b"POST /events/dropbox HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                    .await;
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if writer.write_all(b"a").await.is_err() {
                        break;
                    }
                }
                std::future::pending::<()>().await;
            };
            let mut buffer = [0u8; 1024];
            let closed = async {
                loop {
                    match reader.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            };
            let bound = HEADER_TIMEOUT + Duration::from_secs(10);
            tokio::select! {
                _ = closed => Ok(opened.elapsed()),
                _ = dripping => unreachable!(),
                _ = tokio::time::sleep(bound) => Err(format!("still open after {bound:?}")),
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let peak_fds = open_fds(d.pid());

    // Meanwhile, signed notifications keep getting 200, promptly.
    let mut latencies = Vec::new();
    let mut accounts = BTreeSet::new();
    let legit_until = Instant::now() + HEADER_TIMEOUT;
    while Instant::now() < legit_until {
        let account = account_id();
        let started = Instant::now();
        let status = post_notification(
            &d.ingest_url(),
            &app.secret,
            &notification_body(&[&account]),
        )
        .await;
        latencies.push(started.elapsed());
        assert_eq!(status, 200, "a signed notification during the slowloris");
        accounts.insert(account);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99).div_ceil(100) - 1];
    let max = *latencies.last().unwrap();
    assert!(
        max < Duration::from_secs(3),
        "a signed notification took {max:?} beside {slow} slowloris connections"
    );

    // Every slowloris connection is closed by the header-read timeout.
    let mut closed_after = Vec::new();
    let all = tokio::time::timeout(Duration::from_secs(40), async {
        while let Some(r) = clients.join_next().await {
            closed_after.push(r.expect("a slowloris task panicked"));
        }
    })
    .await;
    assert!(all.is_ok(), "slowloris tasks did not end");
    let failures: Vec<&String> = closed_after
        .iter()
        .filter_map(|r| r.as_ref().err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} slowloris connections: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    let mut times: Vec<Duration> = closed_after.into_iter().filter_map(Result::ok).collect();
    times.sort();
    let (first, last) = (times[0], times[times.len() - 1]);
    assert!(
        first >= HEADER_TIMEOUT - Duration::from_millis(500),
        "a slowloris connection was closed after {first:?}, before the header timeout"
    );
    assert!(
        last <= HEADER_TIMEOUT + Duration::from_secs(3),
        "a slowloris connection stayed open {last:?} (header timeout {HEADER_TIMEOUT:?})"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_fds = open_fds(d.pid());
    assert!(
        after_fds <= baseline_fds + 16,
        "the daemon holds {after_fds} fds after the slowloris ({baseline_fds} before)"
    );
    assert_eq!(d.readyz().await.0, 200);
    eprintln!(
        "abuse slowloris: {slow} connections closed after {first:?}..{last:?}; {} signed \
         requests meanwhile, p50 {:?} p99 {p99:?} max {max:?}; daemon fds {baseline_fds} → \
         {peak_fds} (peak) → {after_fds}",
        latencies.len(),
        latencies[latencies.len() / 2]
    );
    d.stop().await;
    assert_eq!(pending_accounts(&d), accounts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_long_challenge_is_refused_and_not_reflected() {
    let app = App::new("app-key");
    let mut d = Daemon::start(&paused_config(&app)).await;
    let url = d.ingest_url();
    let long = "z".repeat(10 * 1024);
    let r = get(&format!("{url}?challenge={long}")).await;
    assert_eq!(r.status, 400);
    assert!(
        !r.text().contains("zzzz"),
        "an over-long challenge was reflected"
    );
    // 1 KiB once decoded, spelled as 3 KiB of percent escapes: the limit is on the value.
    let r = get(&format!("{url}?challenge={}", "%41".repeat(1024))).await;
    assert_eq!((r.status, r.text()), (200, "A".repeat(1024)));
    let r = get(&format!("{url}?challenge={}", "%41".repeat(1025))).await;
    assert_eq!(r.status, 400);
    // A markup challenge is echoed only as inert text.
    let r = get(&format!("{url}?challenge=%3Cscript%3E")).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .starts_with("text/plain")
    );
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    d.stop().await;
    assert!(pending(&d.store_path()).is_empty());
}

/// A signed body without a `list_folder.accounts` array of strings is 400 and stores nothing
/// (docs/protocol.md). serde reads a struct from a JSON array as well, so these shapes are
/// accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn array_shaped_bodies_are_400() {
    let app = App::new("app-key");
    let mut d = Daemon::start(&paused_config(&app)).await;
    let account = account_id();
    let mut answers = Vec::new();
    for body in [
        format!(r#"[{{"accounts": ["{account}"]}}]"#),
        format!(r#"{{"list_folder": [["{account}"], null]}}"#),
    ] {
        let status = post_notification(&d.ingest_url(), &app.secret, &body).await;
        answers.push((body, status));
    }
    d.stop().await;
    let stored = pending_accounts(&d);
    assert!(
        answers.iter().all(|(_, s)| *s == 400) && stored.is_empty(),
        "answers {answers:?}; stored events for {stored:?}"
    );
}
