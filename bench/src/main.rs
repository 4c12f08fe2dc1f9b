//! `hookrelay-bench`: the benchmark harness. `bench/run.sh` builds the binaries and
//! runs it; BENCHMARKS.md has the method and the figures.
//!
//! Inside this process it starts a loopback **sink** (the instance's callback: answers 204 and
//! records arrival time, `webhook-id` and the send time the generator put in the Dropbox body)
//! and three baselines for the same requests, the physical limits: a **plain hyper server**
//! (reads the body, answers 200), the same with a **group-commit `fdatasync`** of every body
//! before its 200 (the limit of a durable acknowledgement on this disk), and a **plain relay**
//! (forwards each body to the sink, answers 200 once the sink did: one request in and one out
//! per event, no storage). For each scenario it runs the real `hookrelay` binary on a temporary
//! config and store and drives it with its own load generator: keep-alive HTTP/1.1 connections,
//! every body unique and signed with the app secret, closed loop or open loop at a fixed rate,
//! the ack latency of every request recorded.
//!
//! Everything stays on 127.0.0.1, every wait is bounded, and every process started is killed
//! when the harness ends (also on errors, and by `PR_SET_PDEATHSIG` through `setpriv` if the
//! harness itself is killed).
//!
//! The files, one concern each: `load` (the load generator), `sink` (the instance's callback),
//! `limits` (the baselines, and the start of every in-process server), `http` (client and server
//! plumbing they share), `daemon` (the hookrelay under test), `procfs` (CPU, memory, I/O and disk
//! from /proc and the file system), `scenarios`, `figures` (percentiles and the other
//! statistics) and `report` (the table, the targets and the JSON results).

mod clock;
mod daemon;
mod figures;
mod http;
mod limits;
mod load;
mod procfs;
mod report;
mod scenarios;
mod sink;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::Map;

use crate::limits::Servers;
use crate::scenarios::Env;

/// Benchmark harness of hookrelay: durable-ack ingest, delivery, latency, memory, restart, disk.
#[derive(Debug, Clone, Parser)]
#[command(name = "hookrelay-bench")]
pub(crate) struct Args {
    /// Seconds of each throughput and latency scenario
    #[arg(long, default_value_t = 20)]
    pub(crate) duration: u64,
    /// Events queued behind a paused instance for the memory, restart and disk figures
    #[arg(long, default_value_t = 200_000)]
    pub(crate) queued: u64,
    /// CI mode: 3-second scenarios, 2,000 queued events, 200/s latency run, correctness
    /// checks only (no targets); overrides --duration, --queued and --latency-rate
    #[arg(long)]
    pub(crate) smoke: bool,
    /// Also write the results as JSON to FILE
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
    /// The hookrelay binary [default: `hookrelay` next to this binary]
    #[arg(long, value_name = "PATH")]
    pub(crate) hookrelay: Option<PathBuf>,
    /// Connections of the closed-loop and sustained scenarios
    #[arg(long, default_value_t = 64)]
    pub(crate) connections: usize,
    /// Rate of the open-loop latency scenario (d), notifications per second
    #[arg(long, default_value_t = 1000.0)]
    pub(crate) latency_rate: f64,
    /// Offered rate of the sustained scenario (c) [default: 90% of what (b) delivered]
    #[arg(long)]
    pub(crate) sustained_rate: Option<f64>,
    /// Exit with status 3 when a target (BENCHMARKS.md) is missed (not with --smoke)
    #[arg(long)]
    pub(crate) check_targets: bool,
    /// Folder for the temporary configs and stores [default: the system temp dir]
    #[arg(long, value_name = "DIR")]
    pub(crate) work_dir: Option<PathBuf>,
    /// Scenarios to run, comma-separated, of plain, a, b, c, d, efg
    #[arg(long, value_delimiter = ',', default_value = "plain,a,b,c,d,efg")]
    pub(crate) scenarios: Vec<String>,
    /// Profile hookrelay in every scenario with `perf record -e cpu-clock` into DIR/<scenario>.data
    #[arg(long, value_name = "DIR")]
    pub(crate) perf: Option<PathBuf>,
    /// `storage.cache_bytes` of the daemon's config (e.g. 16MiB) [default: hookrelay's, 32MiB]
    #[arg(long, value_name = "SIZE")]
    pub(crate) cache_bytes: Option<String>,
}

/// An error is a message for the operator.
pub(crate) type Fallible<T> = Result<T, String>;

fn main() -> ExitCode {
    let mut args = Args::parse();
    let _ = clock::epoch();
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

    let work_dir = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let servers = match Servers::start(&work_dir) {
        Ok(servers) => servers,
        Err(err) => {
            eprintln!("hookrelay-bench: {err}");
            return ExitCode::FAILURE;
        }
    };
    // Orchestration, admin requests and samplers; the load itself runs on its own threads.
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-main")
        .enable_all()
        .build()
    else {
        eprintln!("hookrelay-bench: cannot start the runtimes");
        return ExitCode::FAILURE;
    };

    let env = Env {
        smoke: args.smoke,
        duration: Duration::from_secs(args.duration),
        queued: args.queued.max(1),
        connections: args.connections,
        latency_rate: args.latency_rate,
        sustained_rate: args.sustained_rate,
        hookrelay,
        work_dir,
        perf: args.perf.clone(),
        cache_bytes: args.cache_bytes.clone(),
        scenarios: args.scenarios.clone(),
        sink: servers.sink.clone(),
        sink_addr: servers.sink_addr,
        plain_addr: servers.plain_addr,
        durable_plain_addr: servers.durable_plain_addr,
        relay_addr: servers.relay_addr,
    };
    let mut results = Map::new();
    let outcome = runtime.block_on(scenarios::bench(&env, &mut results));
    runtime.shutdown_timeout(Duration::from_secs(2));
    servers.runtime.shutdown_background();

    report::finish(&args, &env, &results, outcome)
}
