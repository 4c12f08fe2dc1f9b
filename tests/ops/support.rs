//! A small self-contained harness for the operations tests: a temp-dir config with free
//! loopback ports, the real `hookrelay` binary (daemon and one-shot CLI runs), signed Dropbox
//! notifications, and a scripted callback. Every wait is bounded; none sleeps where a
//! condition can be polled.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::sync::Notify;

pub const APP_SECRET: &str = "ops-test-app-secret";
pub const ACCOUNT: &str = "dbid:AAH4f99T0taONIb-OurWxbNQ6ywGRopQngc";
pub const OTHER_ACCOUNT: &str = "dbid:AAB0000000000000000000000000000000Z";
/// Bound on one daemon start, one CLI run, one condition.
pub const WAIT: Duration = Duration::from_secs(20);

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `check` every 25 ms until it gives `Some`, at most `WAIT`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// === config ===

/// What the test config says; `text()` renders it.
#[derive(Debug, Clone)]
pub struct Setup {
    pub ingest: SocketAddr,
    pub admin: SocketAddr,
    pub token: Option<String>,
    pub instance: String,
    pub callback: String,
    pub tags: String,
    pub retry_initial: &'static str,
    pub max_attempts: u32,
}

impl Setup {
    pub fn new(callback: &str) -> Setup {
        Setup {
            ingest: SocketAddr::from(([127, 0, 0, 1], free_port())),
            admin: SocketAddr::from(([127, 0, 0, 1], free_port())),
            token: None,
            instance: "acme".into(),
            callback: callback.into(),
            tags: r#"["ops"]"#.into(),
            retry_initial: "100ms",
            max_attempts: 3,
        }
    }

    pub fn text(&self) -> String {
        let token = self
            .token
            .as_ref()
            .map(|t| format!("token = \"{t}\"\n"))
            .unwrap_or_default();
        format!(
            r#"[server]
listen = "{ingest}"
shutdown_timeout = "5s"

[admin]
listen = "{admin}"
{token}
[storage]
path = "./data"
cache_bytes = "4MiB"

[delivery]
timeout = "2s"
retry_initial = "{retry}"
retry_max_interval = "1h"
max_attempts = {attempts}
allow_private_destinations = true

[[instance]]
name = "{name}"
id = 4567
element = "dropbox"
tags = {tags}

[instance.configuration]
"oauth.api.key" = "ops-app-key"
"oauth.api.secret" = "{APP_SECRET}"
"event.notification.enabled" = true
"event.notification.callback.url" = "{callback}"
"event.notification.signature.key" = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
"#,
            ingest = self.ingest,
            admin = self.admin,
            retry = self.retry_initial,
            attempts = self.max_attempts,
            name = self.instance,
            tags = self.tags,
            callback = self.callback,
        )
    }
}

// === the daemon ===

/// The daemon in its own temp dir (`config.toml`, `data/`, logs). Dropping it kills it.
pub struct Relay {
    pub dir: tempfile::TempDir,
    pub setup: Setup,
    child: Option<Child>,
    env: Vec<(String, String)>,
    http: reqwest::Client,
}

impl Relay {
    /// Writes the config; does not start anything.
    pub fn new(setup: Setup) -> Relay {
        // reqwest is built without a default TLS provider (as in the daemon).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::Builder::new()
            .prefix("hookrelay-ops-")
            .tempdir()
            .expect("temp dir");
        let relay = Relay {
            dir,
            setup,
            child: None,
            env: Vec::new(),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
        };
        relay.write_config(&relay.setup.text());
        relay
    }

    /// Writes the config and starts the daemon, waiting for `/readyz`.
    pub async fn start(setup: Setup) -> Relay {
        let mut relay = Relay::new(setup);
        relay.spawn().await;
        relay
    }

    /// Adds an environment variable for the next spawn.
    pub fn env(&mut self, key: &str, value: &str) {
        self.env.push((key.into(), value.into()));
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(self.config_path(), text).expect("writing the config");
    }

    pub async fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.path().join(name))
                .expect("log file")
        };
        let mut command = Command::new(env!("CARGO_BIN_EXE_hookrelay"));
        command
            .args(["--config", "config.toml", "run"])
            .current_dir(self.dir.path())
            .env("RUST_LOG", "hookrelay=debug")
            .env_remove("HOOKRELAY_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("CREDENTIALS_DIRECTORY")
            .stdin(Stdio::null())
            .stdout(log("daemon.stdout"))
            .stderr(log("daemon.stderr"));
        for (key, value) in &self.env {
            command.env(key, value);
        }
        self.child = Some(command.spawn().expect("spawning hookrelay"));
        let url = format!("http://{}/readyz", self.setup.admin);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("hookrelay exited with {status}\n{}", self.logs());
            }
            if let Ok(response) = self.http.get(&url).send().await
                && response.status() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "not ready\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends `SIG<name>` with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name}");
    }

    /// SIGTERM, then the exit status (bounded).
    pub async fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("did not stop\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn logs(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!(
            "--- stderr\n{}--- stdout\n{}",
            read("daemon.stderr"),
            read("daemon.stdout")
        )
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.setup.admin)
    }

    /// An admin request with the configured token (if any) → (status, body).
    pub async fn admin(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        self.admin_as(method, path, body, self.setup.token.as_deref())
            .await
    }

    /// An admin request with `token` (or none) → (status, body).
    pub async fn admin_as(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (u16, String) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.http.request(method, self.admin_url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let response = request.send().await.expect("admin request");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// Dead letters as the admin API lists them.
    pub async fn dead(&self) -> Vec<serde_json::Value> {
        let (status, body) = self.admin("GET", "/admin/dead", None).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("a JSON list")
    }

    /// POSTs a notification for `account` signed with the app secret; expects 200.
    pub async fn notify(&self, account: &str) {
        let body = format!(
            r#"{{"list_folder": {{"accounts": ["{account}"]}}, "delta": {{"users": [1]}}}}"#
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(APP_SECRET.as_bytes()).expect("key");
        mac.update(body.as_bytes());
        let signature = hex::encode(mac.finalize().into_bytes());
        let response = self
            .http
            .post(format!("http://{}/events/dropbox", self.setup.ingest))
            .header("X-Dropbox-Signature", signature)
            .body(body)
            .send()
            .await
            .expect("notify");
        assert_eq!(response.status(), 200, "notification refused");
    }

    /// Runs `hookrelay --config config.toml ARGS…` (bounded).
    pub async fn cli(&self, args: &[&str]) -> CliRun {
        cli_in(self.dir.path(), "config.toml", args).await
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// === one-shot CLI runs ===

#[derive(Debug)]
pub struct CliRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "{self:#?}");
        self
    }
}

/// Runs `hookrelay --config CONFIG ARGS…` in `dir`, output through files, at most `WAIT`.
pub async fn cli_in(dir: &Path, config: &str, args: &[&str]) -> CliRun {
    let dir = dir.to_path_buf();
    let mut all = vec!["--config".to_owned(), config.to_owned()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    tokio::task::spawn_blocking(move || {
        let tag = ulid::Ulid::generate();
        let out = dir.join(format!("cli-{tag}.out"));
        let err = dir.join(format!("cli-{tag}.err"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_hookrelay"))
            .args(&all)
            .current_dir(&dir)
            .env_remove("HOOKRELAY_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("CREDENTIALS_DIRECTORY")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("stdout"))
            .stderr(std::fs::File::create(&err).expect("stderr"))
            .spawn()
            .expect("spawning the CLI");
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`hookrelay {}` did not finish", all.join(" "));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        CliRun {
            code: status.code(),
            stdout: std::fs::read_to_string(&out).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err).unwrap_or_default(),
        }
    })
    .await
    .expect("the CLI task")
}

// === the consumer ===

/// One delivery as received.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event_id: String,
    pub body: serde_json::Value,
    pub answered: u16,
}

/// A callback on 127.0.0.1 answering `status` (changeable) and recording every request.
pub struct Callback {
    pub url: String,
    status: Arc<AtomicU16>,
    received: Arc<Mutex<Vec<Delivery>>>,
    arrived: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Callback {
    pub async fn start(status: u16) -> Callback {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("callback bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let answer = Arc::new(AtomicU16::new(status));
        let received = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let (a, r, n) = (answer.clone(), received.clone(), arrived.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (a, r, n) = (a.clone(), r.clone(), n.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (a, r, n) = (a.clone(), r.clone(), n.clone());
                        async move {
                            let event_id = request
                                .headers()
                                .get("webhook-id")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            let bytes = request
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let status = a.load(Ordering::SeqCst);
                            if let Ok(mut all) = r.lock() {
                                all.push(Delivery {
                                    event_id,
                                    body: serde_json::from_slice(&bytes).unwrap_or_default(),
                                    answered: status,
                                });
                            }
                            n.notify_waiters();
                            let mut response = Response::new(Full::new(Bytes::new()));
                            *response.status_mut() =
                                hyper::StatusCode::from_u16(status).expect("status");
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Callback {
            url,
            status: answer,
            received,
            arrived,
            task,
        }
    }

    pub fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    pub fn received(&self) -> Vec<Delivery> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Waits for a delivery of `event_id` answered with `status`.
    pub async fn wait_for(&self, event_id: &str, status: u16) -> Delivery {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let arrived = self.arrived.notified();
            if let Some(hit) = self
                .received()
                .into_iter()
                .find(|d| d.event_id == event_id && d.answered == status)
            {
                return hit;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!(
                    "no delivery of {event_id} answered {status}: {:?}",
                    self.received()
                );
            }
        }
    }
}

impl Drop for Callback {
    fn drop(&mut self) {
        self.task.abort();
    }
}
