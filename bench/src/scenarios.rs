//! The scenarios: the plain limits, durable ingest paused (a) and delivering (b), sustained
//! delivery (c), latency (d), and memory, restart and disk with a backlog (e, f, g), with the
//! checks every mode makes, and the order they run in.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::Fallible;
use crate::clock::{epoch, now_ns};
use crate::daemon::{Daemon, Perf, Sampler, signal};
use crate::figures::{delivery_json, depth_slope, peak, round};
use crate::load::{Load, LoadResult, Pace, run_load};
use crate::procfs::{CpuWatch, disk_usage};
use crate::sink::Sink;

pub(crate) struct Env {
    pub(crate) smoke: bool,
    pub(crate) duration: Duration,
    pub(crate) queued: u64,
    pub(crate) connections: usize,
    pub(crate) latency_rate: f64,
    pub(crate) sustained_rate: Option<f64>,
    pub(crate) hookrelay: PathBuf,
    pub(crate) work_dir: PathBuf,
    pub(crate) perf: Option<PathBuf>,
    pub(crate) scenarios: Vec<String>,
    pub(crate) cache_bytes: Option<String>,
    pub(crate) sink: Arc<Sink>,
    pub(crate) sink_addr: SocketAddr,
    pub(crate) plain_addr: SocketAddr,
    pub(crate) durable_plain_addr: SocketAddr,
    pub(crate) relay_addr: SocketAddr,
}

impl Env {
    fn drain_limit(&self, events: u64) -> Duration {
        // Generous: 1,000 events/s at worst, and never less than a minute.
        Duration::from_secs(60 + events / 1000)
    }

    fn sample_every(&self) -> Duration {
        Duration::from_millis(if self.smoke { 250 } else { 500 })
    }
}

fn closed(addr: SocketAddr, env: &Env) -> Load {
    Load {
        addr,
        connections: env.connections,
        pace: Pace::Closed,
        duration: env.duration,
        budget: None,
        track: false,
    }
}

/// Runs `body` against a fresh hookrelay; its log tail is added to any error.
async fn with_daemon<T, F>(env: &Env, name: &str, paused: bool, body: F) -> Fallible<T>
where
    F: AsyncFnOnce(&mut Daemon) -> Fallible<T>,
{
    env.sink.take();
    let mut daemon = Daemon::start(env, name, paused).await?;
    let perf = match &env.perf {
        Some(dir) => Some(Perf::start(dir, name, daemon.pid()?)?),
        None => None,
    };
    let result = body(&mut daemon).await;
    drop(perf);
    let stopped = daemon.stop().await;
    match (result, stopped) {
        (Ok(value), Ok(_)) => Ok(value),
        (Err(err), _) | (Ok(_), Err(err)) => Err(format!(
            "{name}: {err}\n--- hookrelay log (last lines) ---\n{}",
            daemon.log_tail()
        )),
    }
}

/// The plain server at `addr` (in this process), closed loop.
async fn scenario_plain(env: &Env, addr: SocketAddr) -> Fallible<Value> {
    let watch = CpuWatch::start(vec![("bench", std::process::id())]);
    let load = run_load(closed(addr, env)).await;
    let mut value = load.json();
    value["cpu"] = watch.finish(load.generator_ticks);
    if load.ok == 0 {
        return Err(format!(
            "plain server: no 2xx answers ({:?})",
            load.last_error
        ));
    }
    Ok(value)
}

/// (a) with `paused`, (b) without: closed loop at N connections for D seconds.
async fn scenario_ingest(env: &Env, paused: bool) -> Fallible<Value> {
    let name = if paused {
        "a-ingest-paused"
    } else {
        "b-ingest-delivering"
    };
    with_daemon(env, name, paused, async |d: &mut Daemon| {
        let sampler = Sampler::start(d, env.sink.clone(), env.sample_every());
        let watch = d.cpu_watch();
        let written_before = d.written();
        let mut load = closed(d.listen, env);
        load.track = !paused;
        let result = run_load(load).await;
        let cpu = watch.finish(result.generator_ticks);
        let written = d
            .written()
            .zip(written_before)
            .map(|(after, before)| after - before);
        let depth_at_end = d.queue_depth().await;
        let mut value = result.json();
        value["cpu"] = cpu;
        value["written_per_ack"] = written.map_or(Value::Null, |w| w.per(result.ok));
        value["queue_depth_at_end"] = json!(depth_at_end);
        value["rss_mib_at_end"] = json!(d.rss_mib());
        if !paused {
            let drain = d
                .wait_drained(&env.sink, result.ok, env.drain_limit(result.ok))
                .await;
            value["drain_after_load_s"] = json!(drain.as_ref().ok().map(|s| round(*s, 2)));
            let samples = sampler.finish().await;
            value["rss_mib_peak"] = json!(peak(&samples, "rss_mib"));
            value["samples"] = json!(samples);
            value["delivery"] = delivery_json(&result.acked, &env.sink.take(), result.window_ns);
            drain?;
        } else {
            let samples = sampler.finish().await;
            value["rss_mib_peak"] = json!(peak(&samples, "rss_mib"));
            value["samples"] = json!(samples);
        }
        check_answers(&result)?;
        Ok(value)
    })
    .await
}

/// (c) open loop at a rate delivery is expected to hold; the queue must stay flat.
async fn scenario_sustained(env: &Env, rate: f64) -> Fallible<Value> {
    with_daemon(env, "c-sustained", false, async |d: &mut Daemon| {
        let sampler = Sampler::start(d, env.sink.clone(), env.sample_every());
        let watch = d.cpu_watch();
        let load = Load {
            pace: Pace::Open(rate),
            track: true,
            ..closed(d.listen, env)
        };
        let result = run_load(load).await;
        let cpu = watch.finish(result.generator_ticks);
        let window_s = result.elapsed.as_secs_f64();
        let drain = d
            .wait_drained(&env.sink, result.ok, env.drain_limit(result.ok))
            .await;
        let samples = sampler.finish().await;
        let delivery = delivery_json(&result.acked, &env.sink.take(), result.window_ns);
        // The first second is ramp-up; the slope is taken over the rest of the window.
        let slope = depth_slope(&samples, 1.0, window_s);
        let in_window: Vec<f64> = samples
            .iter()
            .filter(|s| s["t_s"].as_f64().is_some_and(|t| t <= window_s))
            .filter_map(|s| s["queue_depth"].as_f64())
            .collect();
        let max_depth = in_window.iter().copied().reduce(f64::max);
        let flat = slope.is_some_and(|s| s.abs() <= 0.02 * rate)
            && max_depth.is_some_and(|m| m <= rate.max(1000.0));
        let mut value = result.json();
        value["offered_per_s"] = json!(round(rate, 1));
        value["cpu"] = cpu;
        value["queue_depth_max"] = json!(max_depth);
        value["queue_depth_slope_per_s"] = json!(slope.map(|s| round(s, 1)));
        value["queue_flat"] = json!(flat);
        value["drain_after_load_s"] = json!(drain.as_ref().ok().map(|s| round(*s, 2)));
        value["rss_mib_peak"] = json!(peak(&samples, "rss_mib"));
        value["delivery"] = delivery;
        value["samples"] = json!(samples);
        drain?;
        check_answers(&result)?;
        Ok(value)
    })
    .await
}

/// (d) open loop at a modest rate: ack and notification→callback latency.
async fn scenario_latency(env: &Env) -> Fallible<Value> {
    with_daemon(env, "d-latency", false, async |d: &mut Daemon| {
        let watch = d.cpu_watch();
        let load = Load {
            connections: env.connections.min(32),
            pace: Pace::Open(env.latency_rate),
            track: true,
            ..closed(d.listen, env)
        };
        let result = run_load(load).await;
        let cpu = watch.finish(result.generator_ticks);
        let drain = d
            .wait_drained(&env.sink, result.ok, env.drain_limit(result.ok))
            .await;
        let mut value = result.json();
        value["offered_per_s"] = json!(env.latency_rate);
        value["connections"] = json!(load.connections);
        value["cpu"] = cpu;
        value["rss_mib_at_end"] = json!(d.rss_mib());
        value["delivery"] = delivery_json(&result.acked, &env.sink.take(), result.window_ns);
        drain?;
        check_answers(&result)?;
        Ok(value)
    })
    .await
}

/// (e) RSS idle and with N queued, (f) restart to READY with N queued, (g) disk per event
/// queued and after the backlog is delivered (unpaused by a config rewrite and SIGHUP).
async fn scenario_backlog(env: &Env) -> Fallible<Value> {
    with_daemon(env, "efg-backlog", true, async |d: &mut Daemon| {
        let n = env.queued;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_idle = d.rss_mib();
        let disk_empty = disk_usage(&d.store_dir());

        let watch = d.cpu_watch();
        let fill = run_load(Load {
            budget: Some(n),
            duration: Duration::from_secs(600),
            track: true,
            ..closed(d.listen, env)
        })
        .await;
        let fill_cpu = watch.finish(fill.generator_ticks);
        check_answers(&fill)?;
        if fill.ok != n {
            return Err(format!("queued {} of {n} events", fill.ok));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let depth_filled = d.queue_depth().await;
        if depth_filled != Some(n) {
            return Err(format!("queue depth {depth_filled:?} after queueing {n}"));
        }
        let rss_filled = d.rss_mib();
        let hwm_filled = d.hwm_mib();
        let disk_filled = disk_usage(&d.store_dir());

        let stop_s = d.stop().await?.as_secs_f64();
        d.spawn()?;
        let ready_s = d.wait_ready().await?.as_secs_f64();
        let depth_restarted = d.queue_depth().await;
        if depth_restarted != Some(n) {
            return Err(format!(
                "queue depth {depth_restarted:?} after a restart with {n} queued"
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_restarted = d.rss_mib();

        env.sink.take();
        d.write_config(false)?;
        let sampler = Sampler::start(d, env.sink.clone(), env.sample_every());
        let watch = d.cpu_watch();
        let drain_started = now_ns();
        signal(d.pid()?, "HUP")?;
        let drain = d.wait_drained(&env.sink, n, env.drain_limit(n)).await;
        let drain_cpu = watch.finish(0);
        let drain_end = now_ns();
        let samples = sampler.finish().await;
        let delivery = delivery_json(&fill.acked, &env.sink.take(), (drain_started, drain_end));
        let drain_s = drain?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let disk_drained = disk_usage(&d.store_dir());
        let per_event = |bytes: u64| round(bytes as f64 / n.max(1) as f64, 1);
        Ok(json!({
            "queued": n,
            "fill": fill.json(),
            "fill_cpu": fill_cpu,
            "rss_mib_idle": rss_idle,
            "rss_mib_queued": rss_filled,
            "rss_mib_hwm_while_queueing": hwm_filled,
            "rss_mib_after_restart": rss_restarted,
            "rss_mib_peak_while_draining": peak(&samples, "rss_mib"),
            "rss_mib_hwm_since_restart": d.hwm_mib(),
            "stop_s": round(stop_s, 3),
            "restart_to_ready_s": round(ready_s, 3),
            "disk": {
                "empty_bytes": disk_empty.1,
                "queued_bytes_allocated": disk_filled.1,
                "queued_bytes_apparent": disk_filled.0,
                "bytes_per_queued_event": per_event(disk_filled.1.saturating_sub(disk_empty.1)),
                "drained_bytes_allocated": disk_drained.1,
                "drained_bytes_apparent": disk_drained.0,
            },
            "drain_s": round(drain_s, 2),
            "drain_per_s": round(n as f64 / drain_s.max(1e-9), 1),
            "drain_cpu": drain_cpu,
            "delivery": delivery,
            "samples": samples,
        }))
    })
    .await
}

/// Every request must have been answered 2xx: anything else is a harness or daemon fault.
fn check_answers(result: &LoadResult) -> Fallible<()> {
    let bad: u64 = result
        .statuses
        .iter()
        .filter(|(status, _)| !(200..300).contains(*status))
        .map(|(_, count)| count)
        .sum();
    if bad > 0 || result.errors > 0 {
        return Err(format!(
            "{bad} non-2xx answers {:?}, {} transport errors (last: {:?})",
            result.statuses, result.errors, result.last_error
        ));
    }
    Ok(())
}

/// Delivery checks that hold in every mode: nothing acknowledged goes missing.
fn check_delivered(name: &str, value: &Value) -> Fallible<()> {
    let missing = value
        .pointer("/delivery/missing")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if missing > 0 {
        return Err(format!(
            "{name}: {missing} acknowledged notifications never reached the callback"
        ));
    }
    Ok(())
}

pub(crate) async fn bench(env: &Env, results: &mut Map<String, Value>) -> Fallible<()> {
    let step = |name: &str| {
        eprintln!("[{:>6.1} s] {name}", epoch().elapsed().as_secs_f64());
    };
    let wanted = |name: &str| env.scenarios.iter().any(|s| s == name);
    if wanted("plain") {
        step("plain hyper server, closed loop");
        results.insert("plain".into(), scenario_plain(env, env.plain_addr).await?);
        step("plain hyper server + group-commit fdatasync, closed loop");
        let durable = scenario_plain(env, env.durable_plain_addr).await?;
        results.insert("plain_durable".into(), durable);
        step("plain hyper relay to the sink, closed loop");
        let relay = scenario_plain(env, env.relay_addr).await?;
        env.sink.take();
        results.insert("plain_relay".into(), relay);
    }
    if wanted("a") {
        step("(a) durable ingest, instance paused");
        results.insert("a_ingest_paused".into(), scenario_ingest(env, true).await?);
    }
    // (c) runs at 90% of what (b) delivered unless told a rate.
    let mut rate = env.sustained_rate.unwrap_or(1000.0);
    if wanted("b") {
        step("(b) durable ingest with delivery");
        let b = scenario_ingest(env, false).await?;
        check_delivered("(b)", &b)?;
        let delivered = b
            .pointer("/delivery/delivered_per_s_in_window")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        let acked = b.get("ok_per_s").and_then(Value::as_f64).unwrap_or(0.0);
        rate = env
            .sustained_rate
            .unwrap_or(0.9 * delivered.min(acked))
            .max(50.0);
        results.insert("b_ingest_delivering".into(), b);
    }
    if wanted("c") {
        step(&format!("(c) sustained, open loop at {rate:.0}/s"));
        let c = scenario_sustained(env, rate).await?;
        check_delivered("(c)", &c)?;
        results.insert("c_sustained".into(), c);
    }
    if wanted("d") {
        step(&format!("(d) latency, open loop at {}/s", env.latency_rate));
        let d = scenario_latency(env).await?;
        check_delivered("(d)", &d)?;
        results.insert("d_latency".into(), d);
    }
    if wanted("efg") {
        step(&format!(
            "(e, f, g) {} queued: memory, restart, disk, drain",
            env.queued
        ));
        let efg = scenario_backlog(env).await?;
        check_delivered("(e, f, g)", &efg)?;
        results.insert("efg_backlog".into(), efg);
    }
    step("done");
    Ok(())
}
