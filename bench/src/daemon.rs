//! The hookrelay under test: its config, start, readiness, stop and metrics, the figures read
//! from its process, `perf record` on it, and the sampler that watches it during a scenario.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Fallible;
use crate::figures::round;
use crate::http::get;
use crate::procfs::{CpuWatch, Written, mib_of_kib, proc_status_kib};
use crate::scenarios::Env;
use crate::sink::Sink;

pub(crate) const APP_KEY: &str = "bench-app-key";
pub(crate) const APP_SECRET: &str = "bench-app-secret";
/// A Standard Webhooks key, so every delivery carries both signatures (the realistic cost).
const SIGNATURE_KEY: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const INSTANCE: &str = "bench";
/// Bound on hookrelay answering `/readyz` 200 after a start.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on hookrelay exiting after SIGTERM (its `shutdown_timeout` is 10 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

fn free_port() -> Fallible<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

pub(crate) fn signal(pid: u32, name: &str) -> Fallible<()> {
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

pub(crate) struct Daemon {
    bin: PathBuf,
    dir: PathBuf,
    pub(crate) listen: SocketAddr,
    admin: SocketAddr,
    sink: SocketAddr,
    /// A `cache_bytes = …` line, or nothing.
    cache_line: String,
    child: Option<Child>,
}

impl Daemon {
    /// A fresh config and store; starts hookrelay and waits until it is ready.
    pub(crate) async fn start(env: &Env, name: &str, paused: bool) -> Fallible<Daemon> {
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

    pub(crate) fn store_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Writes the config atomically (SIGHUP must never read half a file).
    pub(crate) fn write_config(&self, paused: bool) -> Fallible<()> {
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

    pub(crate) fn spawn(&mut self) -> Fallible<()> {
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

    pub(crate) fn pid(&self) -> Fallible<u32> {
        self.child
            .as_ref()
            .map(Child::id)
            .ok_or_else(|| "hookrelay is not running".to_owned())
    }

    /// Polls `/readyz` every 5 ms; the time from now until 200.
    pub(crate) async fn wait_ready(&mut self) -> Fallible<Duration> {
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
    pub(crate) async fn stop(&mut self) -> Fallible<Duration> {
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

    pub(crate) async fn queue_depth(&self) -> Option<u64> {
        let text = self.metrics().await.ok()?;
        metric_value(
            &text,
            &format!("hookrelay_queue_depth{{instance_name=\"{INSTANCE}\"}}"),
        )
        .map(|v| v as u64)
    }

    pub(crate) fn rss_mib(&self) -> Option<f64> {
        mib_of_kib(proc_status_kib(self.pid().ok()?, "VmRSS"))
    }

    pub(crate) fn hwm_mib(&self) -> Option<f64> {
        mib_of_kib(proc_status_kib(self.pid().ok()?, "VmHWM"))
    }

    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("hookrelay.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Waits until the queue is empty and the sink has at least `expected` arrivals.
    pub(crate) async fn wait_drained(
        &self,
        sink: &Sink,
        expected: u64,
        limit: Duration,
    ) -> Fallible<f64> {
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
    pub(crate) fn written(&self) -> Option<Written> {
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

    pub(crate) fn cpu_watch(&self) -> CpuWatch {
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
pub(crate) struct Perf(Option<Child>);

impl Perf {
    pub(crate) fn start(dir: &Path, name: &str, pid: u32) -> Fallible<Perf> {
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
pub(crate) struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Value>>,
}

impl Sampler {
    pub(crate) fn start(daemon: &Daemon, sink: Arc<Sink>, every: Duration) -> Sampler {
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
                        &format!("hookrelay_queue_depth{{instance_name=\"{INSTANCE}\"}}"),
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

    pub(crate) async fn finish(self) -> Vec<Value> {
        self.stop.store(true, Ordering::Release);
        match tokio::time::timeout(Duration::from_secs(10), self.task).await {
            Ok(Ok(samples)) => samples,
            _ => Vec::new(),
        }
    }
}
