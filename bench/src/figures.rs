//! The statistics of the measurements: rounding, percentiles, latency and delivery summaries,
//! and the peak and slope of sampled series.

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::sink::Arrival;

pub(crate) fn round(value: f64, digits: i32) -> f64 {
    let factor = 10f64.powi(digits);
    (value * factor).round() / factor
}

/// Nearest-rank percentile of sorted values.
fn percentile<T: Copy + Into<u64>>(sorted: &[T], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1].into())
}

pub(crate) fn latency_json<T: Copy + Into<u64>>(sorted: &[T]) -> Value {
    let ms = |p: f64| percentile(sorted, p).map(|ns| round(ns as f64 / 1e6, 3));
    let mean = if sorted.is_empty() {
        None
    } else {
        let total: u128 = sorted.iter().map(|&v| u128::from(v.into())).sum();
        Some(round(total as f64 / sorted.len() as f64 / 1e6, 3))
    };
    json!({
        "n": sorted.len(),
        "p50_ms": ms(50.0),
        "p90_ms": ms(90.0),
        "p99_ms": ms(99.0),
        "p999_ms": ms(99.9),
        "max_ms": ms(100.0),
        "mean_ms": mean,
    })
}

/// What the sink got for the acknowledged notifications of one scenario.
pub(crate) fn delivery_json(acked: &[u64], arrivals: &[Arrival], window_ns: (u64, u64)) -> Value {
    let acked_set: HashSet<u64> = acked.iter().copied().collect();
    let mine: Vec<&Arrival> = arrivals
        .iter()
        .filter(|a| acked_set.contains(&a.seq))
        .collect();
    let arrived: HashSet<u64> = mine.iter().map(|a| a.seq).collect();
    let ids: HashSet<u128> = mine.iter().map(|a| a.id).collect();
    let mut latencies: Vec<u64> = mine
        .iter()
        .map(|a| a.at_ns.saturating_sub(a.sent_ns))
        .collect();
    latencies.sort_unstable();
    let (from, to) = window_ns;
    let in_window = mine
        .iter()
        .filter(|a| a.at_ns >= from && a.at_ns <= to)
        .count();
    let seconds = (to.saturating_sub(from)) as f64 / 1e9;
    json!({
        "acked": acked.len(),
        "arrivals": mine.len(),
        "missing": acked_set.len().saturating_sub(arrived.len()),
        "duplicates": mine.len().saturating_sub(ids.len()),
        "unexpected_arrivals": arrivals.len().saturating_sub(mine.len()),
        "delivered_in_window": in_window,
        "delivered_per_s_in_window": round(in_window as f64 / seconds.max(1e-9), 1),
        "notification_to_callback": latency_json(&latencies),
    })
}

pub(crate) fn peak(samples: &[Value], key: &str) -> Option<f64> {
    samples
        .iter()
        .filter_map(|s| s.get(key).and_then(Value::as_f64))
        .reduce(f64::max)
}

/// Least-squares slope of queue depth over time (events per second), within `[from, to]` s.
pub(crate) fn depth_slope(samples: &[Value], from: f64, to: f64) -> Option<f64> {
    let points: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|s| {
            let t = s.get("t_s")?.as_f64()?;
            let d = s.get("queue_depth")?.as_f64()?;
            (t >= from && t <= to).then_some((t, d))
        })
        .collect();
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_d = points.iter().map(|p| p.1).sum::<f64>() / n;
    let cov: f64 = points.iter().map(|p| (p.0 - mean_t) * (p.1 - mean_d)).sum();
    let var: f64 = points.iter().map(|p| (p.0 - mean_t).powi(2)).sum();
    (var > 0.0).then(|| cov / var)
}
