//! `Daemon`: the real `hookrelay` binary running `run --config <tmp>/config.toml` in its own
//! temp dir (config, `data/` store, logs), with signals, restarts and admin-endpoint helpers.
//! Dropping it kills the process; a test that panics prints the daemon's logs.
//!
//! A daemon may run under a wrapper command (e.g. `strace -f -o LOG`), see [`Daemon::launch`]:
//! then signals and `kill9` go to the hookrelay process itself, the wrapper's child.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::cli::{CliOutput, run_in};
use super::config::TestConfig;
use super::http::{client, get, send};
use super::metrics::metric_value;

/// Bound for the daemon to answer `/readyz` 200 after a start.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The daemon's stderr, in its temp dir.
const STDERR_LOG: &str = "daemon.stderr.log";

/// Where `--config` goes on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigArg {
    /// `hookrelay run --config PATH`
    AfterCommand,
    /// `hookrelay --config PATH run`
    BeforeCommand,
}

pub struct Daemon {
    dir: tempfile::TempDir,
    config: TestConfig,
    order: ConfigArg,
    child: Option<Child>,
    starts: u32,
    /// Extra environment variables for every later start (see [`Daemon::set_env`]).
    env: Vec<(String, String)>,
    /// Extra arguments after `run --config PATH` for every later start (see
    /// [`Daemon::set_run_args`]).
    run_args: Vec<String>,
    /// A command line the binary runs under (empty: none).
    wrapper: Vec<String>,
    /// The running child is the wrapper, not hookrelay itself.
    wrapped: bool,
}

impl Daemon {
    /// Writes `config`, starts the daemon and waits until `/readyz` answers 200.
    pub async fn start(config: &TestConfig) -> Daemon {
        Self::start_with(config, ConfigArg::AfterCommand).await
    }

    /// Like [`Daemon::start`], with extra environment variables from the first start on.
    pub async fn start_with_env(config: &TestConfig, env: &[(&str, &str)]) -> Daemon {
        let mut d = Daemon::create(config, ConfigArg::AfterCommand, &[]);
        for (key, value) in env {
            d.set_env(key, value);
        }
        d.spawn();
        d.wait_ready().await;
        d
    }

    /// Like [`Daemon::start`], with extra environment variables from the first start on (see
    /// [`Daemon::set_env`]), e.g. `RUST_LOG` or a `NOTIFY_SOCKET` the test owns.
    pub async fn start_env(config: &TestConfig, env: &[(&str, &str)]) -> Daemon {
        Self::start_full(config, ConfigArg::AfterCommand, env, |_| {}).await
    }

    /// The general start: `env` as in [`Daemon::start_env`], and `prepare` called with the temp
    /// dir after the config is written and before the process starts (secret files, sockets).
    pub async fn start_full(
        config: &TestConfig,
        order: ConfigArg,
        env: &[(&str, &str)],
        prepare: impl FnOnce(&Path),
    ) -> Daemon {
        let mut d = Daemon::create(config, order, &[]);
        for (key, value) in env {
            d.set_env(key, value);
        }
        prepare(d.dir.path());
        d.spawn();
        d.wait_ready().await;
        d
    }

    pub async fn start_with(config: &TestConfig, order: ConfigArg) -> Daemon {
        let mut d = Daemon::create(config, order, &[]);
        d.spawn();
        d.wait_ready().await;
        d
    }

    /// Writes `config` and starts the daemon under `wrapper` (a command line the binary's own
    /// command line is appended to, e.g. `["strace", "-f", "-o", "log"]`; empty: none) without
    /// waiting for readiness: see [`Daemon::wait_ready_or_exit`].
    pub fn launch(config: &TestConfig, wrapper: &[String]) -> Daemon {
        let mut d = Daemon::create(config, ConfigArg::AfterCommand, wrapper);
        d.spawn();
        d
    }

    /// Writes `config` in a fresh temp dir without starting anything: for commands run before
    /// the daemon's first start ([`Daemon::cli`]); [`Daemon::restart`] starts it.
    pub fn prepare(config: &TestConfig) -> Daemon {
        Daemon::create(config, ConfigArg::AfterCommand, &[])
    }

    /// Runs `hookrelay --config <this config> ARGS…` in the daemon's dir (30 s bound), off the
    /// async workers so the test's fake servers keep answering.
    pub async fn cli(&self, args: &[&str]) -> CliOutput {
        self.cli_within(args, Duration::from_secs(30)).await
    }

    /// [`Daemon::cli`] with another bound, for commands whose work grows with the store.
    pub async fn cli_within(&self, args: &[&str], bound: Duration) -> CliOutput {
        let dir = self.dir.path().to_path_buf();
        let config = self.config_path().display().to_string();
        let args: Vec<String> = ["--config", config.as_str()]
            .into_iter()
            .chain(args.iter().copied())
            .map(str::to_owned)
            .collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_in(&dir, &args, &[], bound)
        })
        .await
        .expect("the CLI thread")
    }

    /// A fresh temp dir with `config` written, nothing started.
    fn create(config: &TestConfig, order: ConfigArg, wrapper: &[String]) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("hookrelay-it-")
            .tempdir()
            .expect("creating a temp dir");
        let mut d = Daemon {
            dir,
            config: config.clone(),
            order,
            child: None,
            starts: 0,
            env: Vec::new(),
            run_args: Vec::new(),
            wrapper: wrapper.to_vec(),
            wrapped: false,
        };
        d.rewrite_config(config);
        d
    }

    /// The wrapper for the next (re)start; empty: run the binary directly.
    pub fn set_wrapper(&mut self, wrapper: &[String]) {
        self.wrapper = wrapper.to_vec();
    }

    /// Waits until `/readyz` answers 200 (`Ok`) or the process exits (`Err` with its status);
    /// panics (with logs) after [`READY_TIMEOUT`].
    pub async fn wait_ready_or_exit(&mut self) -> Result<(), ExitStatus> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.try_wait() {
                return Err(status);
            }
            if let Some((200, _)) = self.try_readyz().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                panic!(
                    "hookrelay not ready after {READY_TIMEOUT:?}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "the daemon is already running");
        self.starts += 1;
        let marker = format!("===== start #{} =====\n", self.starts);
        let out = self.log_file("daemon.stdout.log", &marker);
        let err = self.log_file(STDERR_LOG, &marker);
        let config = self.config_path();
        let binary = env!("CARGO_BIN_EXE_hookrelay");
        let mut cmd = match self.wrapper.split_first() {
            None => Command::new(binary),
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(binary);
                cmd
            }
        };
        match self.order {
            ConfigArg::AfterCommand => cmd.arg("run").arg("--config").arg(&config),
            ConfigArg::BeforeCommand => cmd.arg("--config").arg(&config).arg("run"),
        };
        cmd.args(&self.run_args);
        cmd.current_dir(self.dir.path())
            .env("RUST_LOG", "hookrelay=debug")
            .env_remove("HOOKRELAY_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("WATCHDOG_USEC")
            .env_remove(hookrelay::daemon::CATCH_UP_AFTER_ENV)
            .env_remove(hookrelay::changes::POLL_INTERVAL_ENV)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        self.child = Some(cmd.spawn().expect("spawning hookrelay"));
        self.wrapped = !self.wrapper.is_empty();
    }

    fn log_file(&self, name: &str, marker: &str) -> File {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(name))
            .expect("opening a log file");
        f.write_all(marker.as_bytes())
            .expect("writing a log marker");
        f
    }

    async fn wait_ready(&mut self) {
        if let Err(status) = self.wait_ready_or_exit().await {
            panic!(
                "hookrelay exited with {status} before becoming ready\n{}",
                self.logs()
            );
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// The config last written.
    pub fn config(&self) -> &TestConfig {
        &self.config
    }

    /// The sled directory (`storage.path = "./data"` next to the config).
    pub fn store_path(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `http://ADDR/events/dropbox` of the config last written.
    pub fn ingest_url(&self) -> String {
        format!("http://{}/events/dropbox", self.config.server_listen)
    }

    /// `http://ADDR` of the admin listener.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.config.admin_listen)
    }

    /// The pid of the hookrelay process (under a wrapper: the wrapper's hookrelay child).
    pub fn pid(&self) -> u32 {
        let child = self.child.as_ref().expect("the daemon is not running").id();
        if !self.wrapped {
            return child;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(pid) = hookrelay_child_of(child) {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "no hookrelay process under the wrapper (pid {child})\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal by name (`HUP`, `TERM`, `INT`, …) with `kill(1)`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{name} failed: {status}");
    }

    pub fn sighup(&self) {
        self.signal("HUP");
    }

    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    pub fn sigint(&self) {
        self.signal("INT");
    }

    /// SIGKILL, and reap the process (under a wrapper: hookrelay first, then the wrapper).
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("the daemon is not running");
        kill_wrapped(&mut child, self.wrapped);
    }

    /// The exit status if the process has exited (then it is reaped and forgotten).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait().expect("try_wait") {
            Some(status) => {
                self.child = None;
                Some(status)
            }
            None => None,
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_wait().is_none()
    }

    /// Waits for the process to exit; panics (with logs) after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.wait_exit_within(timeout).await {
            Some(status) => status,
            None => panic!(
                "hookrelay still running {timeout:?} after being asked to exit\n{}",
                self.logs()
            ),
        }
    }

    /// Waits up to `timeout` for the process to exit: its status, or `None` if it still runs.
    pub async fn wait_exit_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        assert!(self.child.is_some(), "the daemon is not running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then asserts exit 0 within 30 s.
    pub async fn stop(&mut self) {
        self.sigterm();
        let status = self.wait_exit(Duration::from_secs(30)).await;
        assert!(
            status.success(),
            "hookrelay exited with {status} on SIGTERM\n{}",
            self.logs()
        );
    }

    /// Writes `config` as the config file (used by the next reload or restart).
    pub fn rewrite_config(&mut self, config: &TestConfig) {
        self.config = config.clone();
        std::fs::write(self.config_path(), config.to_toml()).expect("writing config.toml");
    }

    /// Writes arbitrary text as the config file (the remembered `TestConfig` is kept).
    pub fn write_config_text(&self, text: &str) {
        std::fs::write(self.config_path(), text).expect("writing config.toml");
    }

    /// Sets an environment variable for the daemon's later starts (`restart()`), replacing an
    /// earlier value of the same variable.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Extra arguments after `run --config PATH` for the daemon's later starts (e.g.
    /// `--log-format json`), replacing earlier ones.
    pub fn set_run_args(&mut self, args: &[&str]) {
        self.run_args = args.iter().map(|&a| a.to_owned()).collect();
    }

    /// The file the daemon's stderr is appended to (every start; each begins with a
    /// `===== start #N =====` line the harness writes). It exists once the daemon was started,
    /// and a test may create it before, e.g. to know its device and inode.
    pub fn stderr_path(&self) -> PathBuf {
        self.dir.path().join(STDERR_LOG)
    }

    /// Undoes [`Daemon::set_env`] for `key` (later starts run without it).
    pub fn remove_env(&mut self, key: &str) {
        self.env.retain(|(k, _)| k != key);
    }

    /// Starts the stopped daemon again without waiting: [`Daemon::wait_ready_or_exit`] tells
    /// whether it became ready.
    pub fn relaunch(&mut self) {
        assert!(!self.is_running(), "relaunch() needs a stopped daemon");
        self.spawn();
    }

    /// Starts the stopped daemon again (same dir, config file, store and ports); waits for ready.
    pub async fn restart(&mut self) {
        assert!(
            !self.is_running(),
            "restart() needs a stopped daemon (stop(), kill9() or wait_exit() first)"
        );
        self.spawn();
        self.wait_ready().await;
    }

    async fn try_readyz(&self) -> Option<(u16, serde_json::Value)> {
        let r = send(client().get(format!("{}/readyz", self.admin_url())))
            .await
            .ok()?;
        let json = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
        Some((r.status, json))
    }

    /// `GET /readyz`: status and JSON body (`Null` if the body is not JSON).
    pub async fn readyz(&self) -> (u16, serde_json::Value) {
        match self.try_readyz().await {
            Some(r) => r,
            None => panic!("GET /readyz failed\n{}", self.logs()),
        }
    }

    /// `config_generation` from `/readyz`.
    pub async fn generation(&self) -> Option<u64> {
        self.readyz().await.1["config_generation"].as_u64()
    }

    /// `GET /healthz` status.
    pub async fn healthz(&self) -> u16 {
        get(&format!("{}/healthz", self.admin_url())).await.status
    }

    /// `GET /metrics` body.
    pub async fn metrics(&self) -> String {
        let r = get(&format!("{}/metrics", self.admin_url())).await;
        assert_eq!(r.status, 200, "GET /metrics\n{}", self.logs());
        r.text()
    }

    /// The value of a metric: `name` or `name{label="v",…}`. Sums every series of that name
    /// carrying (at least) these labels; `None` when there is none.
    pub async fn metric(&self, selector: &str) -> Option<f64> {
        metric_value(&self.metrics().await, selector)
    }

    /// stdout and stderr of every start so far.
    pub fn logs(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!(
            "----- hookrelay stdout -----\n{}\n----- hookrelay stderr -----\n{}\n----- end -----",
            read("daemon.stdout.log"),
            read(STDERR_LOG)
        )
    }
}

/// The `hookrelay` process whose parent is `parent`, if any (found through `/proc`).
fn hookrelay_child_of(parent: u32) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid …": comm may contain spaces, so split after the last ')'.
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map(|(_, c)| c).unwrap_or_default();
        let ppid = tail
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) && comm.starts_with("hookrelay") {
            return Some(pid);
        }
    }
    None
}

/// SIGKILL to hookrelay (the wrapper's child when `wrapped`), then to `child`; reaps `child`.
fn kill_wrapped(child: &mut Child, wrapped: bool) {
    if wrapped && let Some(pid) = hookrelay_child_of(child.id()) {
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status();
        // The wrapper (strace) exits once its tracee is gone; bounded, then forced.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_wrapped(&mut child, self.wrapped);
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}
