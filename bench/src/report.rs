//! The report: the table on stdout, the targets, and the JSON results file.

use std::io::Write as _;
use std::process::ExitCode;

use serde_json::{Map, Value, json};

use crate::Args;
use crate::Fallible;
use crate::scenarios::Env;

const MIB: f64 = 1024.0 * 1024.0;

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
        println!("targets (BENCHMARKS.md):");
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

/// Prints the table, writes the JSON results when asked, and gives the exit status: failure
/// when a scenario failed, 3 when a target was missed and `--check-targets` asked for it.
pub(crate) fn finish(
    args: &Args,
    env: &Env,
    results: &Map<String, Value>,
    outcome: Fallible<()>,
) -> ExitCode {
    print_table(results, env);
    let target_list = targets(results);
    let report = json!({
        "mode": if args.smoke { "smoke" } else { "full" },
        "duration_s": args.duration,
        "queued": env.queued,
        "connections": args.connections,
        "latency_rate": args.latency_rate,
        "hookrelay": env.hookrelay.display().to_string(),
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
