//! HTTPS on the Dropbox listener (`server.tls_cert`/`tls_key`): notifications over TLS, an
//! untrusted client, certificate swaps on SIGHUP without dropping the listener, a broken key
//! on SIGHUP keeping the old certificate, plain HTTP refused, `check`/`run` rejecting bad pairs.
//!
//! Each test makes its own CA with rcgen; certificates name `127.0.0.1` (an IP SAN), so the
//! clients connect to the loopback address directly. Clients trust only that CA.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::support::cli::{run_in, write_config};
use crate::support::dropbox::{account_id, notification_body, sign};
use crate::support::http::{Reply, client, send};
use crate::support::{App, Daemon, FakeCallback, InstanceConfig, TestConfig, wait_until};

const OK_RELOADS: &str = r#"hookrelay_config_reloads_total{result="ok"}"#;
const FAILED_RELOADS: &str = r#"hookrelay_config_reloads_total{result="error"}"#;
const HANDSHAKE_FAILURES: &str = "hookrelay_tls_handshake_failures_total";
/// Bound on every TLS connection or raw request the tests make.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A test certificate authority.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A server certificate signed by a [`TestCa`], and its key, as PEM.
struct Leaf {
    /// The leaf, then the CA: a chain as an ACME client writes `fullchain.pem`.
    chain_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A certificate for `127.0.0.1` and `localhost`, with this common name and serial.
    fn leaf(&self, common_name: &str, serial: u64) -> Leaf {
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".into()])
            .expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.issuer.pem()),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// Where the certificate and key live: a folder of the test's own, absolute paths.
struct TlsFiles {
    dir: tempfile::TempDir,
}

impl TlsFiles {
    fn new() -> TlsFiles {
        TlsFiles {
            dir: tempfile::tempdir().expect("temp dir for certificates"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `leaf` as `NAME.crt` and `NAME.key` (atomically, as certbot's symlink swap
    /// would: a reader never sees half a file).
    fn write(&self, name: &str, leaf: &Leaf) {
        write_atomically(&self.path(&format!("{name}.crt")), &leaf.chain_pem);
        write_atomically(&self.path(&format!("{name}.key")), &leaf.key_pem);
    }

    /// `config` with `tls_cert`/`tls_key` pointing at `NAME.crt`/`NAME.key`.
    fn config(&self, config: TestConfig, name: &str) -> TestConfig {
        let cert = self.path(&format!("{name}.crt"));
        let key = self.path(&format!("{name}.key"));
        config
            .server("tls_cert", path_str(&cert))
            .server("tls_key", path_str(&key))
    }
}

fn write_atomically(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("writing a PEM file");
    std::fs::rename(&tmp, path).expect("renaming a PEM file");
}

fn path_str(path: &Path) -> String {
    path.to_str().expect("UTF-8 temp path").to_owned()
}

fn base_config(callback: &str, app: &App) -> TestConfig {
    TestConfig::new().instance(
        InstanceConfig::new("acme", 1, app)
            .callback(callback)
            .coalesce(false),
    )
}

/// What most tests here start from: a test CA, its leaf `common_name` written as `server.crt`
/// and `server.key`, a callback, an app, and the config serving that pair.
async fn served(common_name: &str) -> (TestCa, Leaf, TlsFiles, FakeCallback, App, TestConfig) {
    let ca = TestCa::new("hookrelay test CA");
    let leaf = ca.leaf(common_name, 1);
    let files = TlsFiles::new();
    files.write("server", &leaf);
    let cb = FakeCallback::ok().await;
    let app = App::new("app-key");
    let cfg = files.config(base_config(&cb.url(), &app), "server");
    (ca, leaf, files, cb, app, cfg)
}

fn https_url(d: &Daemon) -> String {
    format!("https://{}/events/dropbox", d.config().server_listen)
}

/// A reqwest client trusting only `ca` (no built-in roots), no pool, bounded.
fn https_client(ca: &TestCa) -> reqwest::Client {
    install_provider();
    let root = reqwest::Certificate::from_der(ca.der().as_ref()).expect("CA as a reqwest root");
    reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([root])
        .pool_max_idle_per_host(0)
        .timeout(IO_TIMEOUT)
        .build()
        .expect("building the HTTPS test client")
}

/// A TLS connection to `addr` trusting only `ca`, for inspecting the served certificate and
/// sending requests on one connection.
async fn tls_connect(addr: SocketAddr, ca: &TestCa) -> Result<TlsStream<TcpStream>, String> {
    install_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(config));
    let server_name = ServerName::IpAddress(addr.ip().into());
    let connect = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(IO_TIMEOUT, connect)
        .await
        .map_err(|_| "TLS connect timed out".to_owned())?
}

/// The leaf certificate the server presented on `stream`.
fn served_leaf(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("the server presented a certificate")
        .clone()
        .into_owned()
}

/// The leaf a fresh connection to `addr` is served.
async fn leaf_of_new_connection(addr: SocketAddr, ca: &TestCa) -> CertificateDer<'static> {
    let stream = tls_connect(addr, ca)
        .await
        .unwrap_or_else(|e| panic!("TLS connection to {addr}: {e}"));
    served_leaf(&stream)
}

/// Sends the Dropbox challenge `word` on an open (keep-alive) connection and reads the answer;
/// `Err` on a transport error or after [`IO_TIMEOUT`].
async fn challenge_on(stream: &mut TlsStream<TcpStream>, word: &str) -> Result<String, String> {
    let exchange = async {
        let request =
            format!("GET /events/dropbox?challenge={word} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buffer = Vec::new();
        loop {
            if let Some(response) = complete_response(&buffer)? {
                return Ok(response);
            }
            let mut chunk = [0u8; 4096];
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err(format!(
                    "connection closed mid-response: {:?}",
                    String::from_utf8_lossy(&buffer)
                ));
            }
            buffer.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(IO_TIMEOUT, exchange)
        .await
        .map_err(|_| "request on the open connection timed out".to_owned())?
}

/// The body of a complete `200` response with `Content-Length` in `buffer`, `None` while
/// incomplete.
fn complete_response(buffer: &[u8]) -> Result<Option<String>, String> {
    let text = String::from_utf8_lossy(buffer);
    let Some(head_end) = text.find("\r\n\r\n") else {
        return Ok(None);
    };
    let head = &text[..head_end];
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("unexpected response: {head:?}"));
    }
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .ok_or_else(|| format!("no Content-Length: {head:?}"))?;
    let body = &buffer[head_end + 4..];
    Ok((body.len() >= length).then(|| String::from_utf8_lossy(&body[..length]).into_owned()))
}

/// `err` and its sources, joined.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(cause) = source {
        parts.push(cause.to_string());
        source = cause.source();
    }
    parts.join(": ")
}

async fn counter(d: &Daemon, selector: &str) -> f64 {
    // A labelled counter never incremented may be absent from the exposition.
    d.metric(selector).await.unwrap_or(0.0)
}

/// POSTs a signed notification over HTTPS with `http` and returns the status.
async fn post_signed(
    http: &reqwest::Client,
    url: &str,
    app: &App,
    body: &str,
) -> Result<Reply, String> {
    send(
        http.post(url)
            .header("Content-Type", "application/json")
            .header("X-Dropbox-Signature", sign(&app.secret, body.as_bytes()))
            .body(body.to_owned()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_notification_over_https_is_acked_and_delivered() {
    let (ca, leaf, _files, cb, app, cfg) = served("hookrelay.test").await;
    let d = Daemon::start(&cfg).await;
    let http = https_client(&ca);

    let challenge = send(http.get(format!("{}?challenge=tls-ok", https_url(&d))))
        .await
        .unwrap_or_else(|e| panic!("HTTPS challenge: {e}\n{}", d.logs()));
    assert_eq!(
        (challenge.status, challenge.text().as_str()),
        (200, "tls-ok")
    );

    let account = account_id();
    let body = notification_body(&[&account]);
    let reply = post_signed(&http, &https_url(&d), &app, &body)
        .await
        .unwrap_or_else(|e| panic!("HTTPS POST: {e}\n{}", d.logs()));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.body.is_empty());

    let delivered = cb.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(delivered[0].account(), account);

    // The leaf served is the configured one, and its chain carries the CA.
    let stream = tls_connect(d.config().server_listen, &ca)
        .await
        .expect("TLS");
    assert_eq!(served_leaf(&stream), leaf.der);
    let chain_len = stream.get_ref().1.peer_certificates().map_or(0, <[_]>::len);
    assert_eq!(chain_len, 2, "leaf and CA are both served");
    assert_eq!(counter(&d, HANDSHAKE_FAILURES).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_trust_the_ca_fails_the_handshake() {
    let (ca, _leaf, _files, cb, _app, cfg) = served("hookrelay.test").await;
    let d = Daemon::start(&cfg).await;

    let stranger = TestCa::new("some other CA");
    let attempt = https_client(&stranger)
        .get(format!("{}?challenge=x", https_url(&d)))
        .send();
    let err = tokio::time::timeout(IO_TIMEOUT + Duration::from_secs(1), attempt)
        .await
        .expect("the failing request is bounded")
        .expect_err("a client that does not trust the CA must fail");
    let chain = error_chain(&err);
    assert!(
        chain.contains("UnknownIssuer"),
        "expected an unknown-issuer certificate error, got: {chain}"
    );
    let direct = tls_connect(d.config().server_listen, &stranger).await;
    assert!(
        direct.is_err(),
        "handshake with an untrusting client succeeded"
    );

    // The server saw the client abort the handshake; the listener goes on serving.
    wait_until(
        Duration::from_secs(10),
        "failed handshakes counted",
        || async { counter(&d, HANDSHAKE_FAILURES).await >= 1.0 },
    )
    .await;
    let ok = send(https_client(&ca).get(format!("{}?challenge=y", https_url(&d))))
        .await
        .expect("a trusting client still gets through");
    assert_eq!(ok.status, 200);
    assert_eq!(cb.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_new_certificate_swaps_it_without_dropping_the_listener() {
    let (ca, first, files, _cb, _app, cfg) = served("first.hookrelay.test").await;
    let mut d = Daemon::start(&cfg).await;
    let addr = cfg.server_listen;

    // A keep-alive connection made before the reload.
    let mut kept = tls_connect(addr, &ca).await.expect("TLS");
    assert_eq!(served_leaf(&kept), first.der);
    assert_eq!(
        challenge_on(&mut kept, "before").await.as_deref(),
        Ok("before")
    );

    // A loop of fresh HTTPS requests running across the reload: none may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failures) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let http = https_client(&ca);
    let url = https_url(&d);
    let request_loop = tokio::spawn({
        let (stop, sent, failures) = (stop.clone(), sent.clone(), failures.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let n = sent.fetch_add(1, Ordering::Relaxed);
                match send(http.get(format!("{url}?challenge=loop{n}"))).await {
                    Ok(r) if r.status == 200 && r.text() == format!("loop{n}") => {}
                    other => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("{other:?}"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            errors
        }
    });

    // Renewal in place: same paths, new certificate (another CN and serial) and key.
    let second = ca.leaf("second.hookrelay.test", 2);
    let before_reload = sent.load(Ordering::Relaxed);
    files.write("server", &second);
    d.sighup();
    wait_until(Duration::from_secs(10), "config_generation 2", || async {
        d.generation().await == Some(2)
    })
    .await;
    assert_eq!(leaf_of_new_connection(addr, &ca).await, second.der);

    // The connection made before the reload still works, on its old certificate.
    assert_eq!(
        challenge_on(&mut kept, "after").await.as_deref(),
        Ok("after")
    );
    assert_eq!(served_leaf(&kept), first.der);

    // Other paths on reload are fine too (e.g. a new certbot lineage).
    let third = ca.leaf("third.hookrelay.test", 3);
    files.write("renewed", &third);
    d.rewrite_config(&files.config(cfg.clone(), "renewed"));
    d.sighup();
    wait_until(Duration::from_secs(10), "config_generation 3", || async {
        d.generation().await == Some(3)
    })
    .await;
    assert_eq!(leaf_of_new_connection(addr, &ca).await, third.der);

    // Let the loop run a little on the newest certificate, then stop it.
    let target = sent.load(Ordering::Relaxed) + 3;
    wait_until(Duration::from_secs(15), "more loop requests", || async {
        sent.load(Ordering::Relaxed) >= target
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let errors = tokio::time::timeout(Duration::from_secs(30), request_loop)
        .await
        .expect("the request loop stops")
        .expect("the request loop did not panic");
    assert!(
        sent.load(Ordering::Relaxed) > before_reload,
        "the loop sent nothing during the reloads"
    );
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed across the reloads: {errors:?}\n{}",
        d.logs()
    );
    assert_eq!(counter(&d, OK_RELOADS).await, 2.0);
    assert_eq!(counter(&d, FAILED_RELOADS).await, 0.0);
    assert_eq!(counter(&d, HANDSHAKE_FAILURES).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_key_on_sighup_keeps_the_old_certificate_and_config() {
    let (ca, first, files, _cb, _app, cfg) = served("first.hookrelay.test").await;
    let mut d = Daemon::start(&cfg).await;
    let addr = cfg.server_listen;
    // The reload also carries another change, which must be rejected with it (all or nothing).
    d.rewrite_config(&cfg.clone().delivery("timeout", "3s"));

    // A key file that is not a key.
    write_atomically(
        &files.path("server.key"),
        "-----BEGIN PRIVATE KEY-----\nbroken\n",
    );
    d.sighup();
    wait_until(Duration::from_secs(10), "one failed reload", || async {
        counter(&d, FAILED_RELOADS).await == 1.0
    })
    .await;
    assert!(d.is_running(), "a bad key on reload stopped the daemon");
    assert_eq!(d.generation().await, Some(1));
    assert_eq!(leaf_of_new_connection(addr, &ca).await, first.der);

    // A valid key that does not match the certificate (a renewal half written).
    let second = ca.leaf("second.hookrelay.test", 2);
    write_atomically(&files.path("server.crt"), &second.chain_pem);
    write_atomically(&files.path("server.key"), &first.key_pem);
    d.sighup();
    wait_until(Duration::from_secs(10), "two failed reloads", || async {
        counter(&d, FAILED_RELOADS).await == 2.0
    })
    .await;
    assert_eq!(d.generation().await, Some(1));
    assert_eq!(leaf_of_new_connection(addr, &ca).await, first.der);
    wait_until(
        Duration::from_secs(5),
        "a log line naming server.tls_key and the key file",
        || async {
            let logs = d.logs();
            logs.contains("server.tls_key") && logs.contains("does not match")
        },
    )
    .await;

    // Once the pair is complete, the reload goes through.
    files.write("server", &second);
    d.sighup();
    wait_until(Duration::from_secs(10), "config_generation 2", || async {
        d.generation().await == Some(2)
    })
    .await;
    assert_eq!(leaf_of_new_connection(addr, &ca).await, second.der);
    assert_eq!(counter(&d, OK_RELOADS).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_tls_port_is_refused_cleanly() {
    let (ca, _leaf, _files, cb, app, cfg) = served("hookrelay.test").await;
    let d = Daemon::start(&cfg).await;
    let addr = d.config().server_listen;

    // reqwest speaking HTTP: an error, quickly (not the 15 s request timeout).
    let started = Instant::now();
    let body = notification_body(&[&account_id()]);
    let plain = send(
        client()
            .post(format!("http://{addr}/events/dropbox"))
            .header("X-Dropbox-Signature", sign(&app.secret, body.as_bytes()))
            .body(body),
    )
    .await;
    assert!(plain.is_err(), "plain HTTP got an answer: {plain:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "plain HTTP took {:?} to be refused",
        started.elapsed()
    );

    // Raw: the server closes the connection (after at most a TLS alert), it does not hang.
    let mut tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    tcp.write_all(b"GET /events/dropbox?challenge=x HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the server kept a plain-HTTP connection open");
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP/1.1"),
        "plain HTTP was answered: {answer:?}"
    );

    wait_until(
        Duration::from_secs(10),
        "failed handshakes counted",
        || async {
            counter(&d, &format!(r#"{HANDSHAKE_FAILURES}{{reason="error"}}"#)).await >= 2.0
        },
    )
    .await;
    assert_eq!(cb.count(), 0, "a plain-HTTP notification was delivered");
    let ok = send(https_client(&ca).get(format!("{}?challenge=still", https_url(&d))))
        .await
        .expect("HTTPS still works");
    assert_eq!(ok.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_neither_stalls_the_listener_nor_stays_open() {
    let (ca, _leaf, _files, _cb, _app, cfg) = served("hookrelay.test").await;
    let d = Daemon::start(&cfg).await;
    let addr = d.config().server_listen;

    // Connections that never start a handshake…
    let mut silent = Vec::new();
    for _ in 0..3 {
        let tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        silent.push(tcp);
    }
    // …do not hold up anyone else's.
    let ok = send(https_client(&ca).get(format!("{}?challenge=meanwhile", https_url(&d))))
        .await
        .expect("HTTPS while silent connections wait");
    assert_eq!((ok.status, ok.text().as_str()), (200, "meanwhile"));

    // The handshake timeout (10 s) closes them and counts them.
    let mut buffer = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(20), silent[0].read(&mut buffer)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "a silent connection was not closed within 20 s: {closed:?}"
    );
    wait_until(
        Duration::from_secs(10),
        "timed-out handshakes counted",
        || async {
            counter(&d, &format!(r#"{HANDSHAKE_FAILURES}{{reason="timeout"}}"#)).await >= 3.0
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_run_reject_a_mismatched_pair_with_78() {
    let ca = TestCa::new("hookrelay test CA");
    let (one, two) = (ca.leaf("one", 1), ca.leaf("two", 2));
    let files = TlsFiles::new();
    write_atomically(&files.path("server.crt"), &one.chain_pem);
    write_atomically(&files.path("server.key"), &two.key_pem);
    let cfg = files.config(
        base_config("http://127.0.0.1:9/hooks", &App::new("k")),
        "server",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = path_str(&write_config(dir.path(), &cfg.to_toml()));
    let work = dir.path().to_owned();
    let (check, run) = tokio::task::spawn_blocking(move || {
        let check = run_in(
            &work,
            &["check", "--config", &path],
            &[],
            Duration::from_secs(20),
        );
        let run = run_in(
            &work,
            &["run", "--config", &path],
            &[],
            Duration::from_secs(20),
        );
        (check, run)
    })
    .await
    .expect("CLI runs");
    for out in [&check, &run] {
        assert_eq!(out.code(), Some(78), "{out:?}");
        assert!(out.stderr.contains("server.tls_key"), "{}", out.stderr);
        assert!(
            out.stderr.contains(&path_str(&files.path("server.key"))),
            "the key file is not named: {}",
            out.stderr
        );
    }
}
