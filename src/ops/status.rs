//! Per-instance figures for `status` (docs/operations.md) and the queue gauges of `/metrics`, read
//! from the store's counters and, when the daemon runs, its lanes. The same code serves the admin
//! API and `status` with the daemon stopped (no lanes: no last success or last error then).

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use crate::config::{Config, EventsMode, Instance};
use crate::deliver::Dispatcher;
use crate::store::{OutageV1, Store};
use crate::time;

/// One instance's line of `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub instance: String,
    /// "active", "outage" (active, but its consumer is treated as down: see `outage`),
    /// "paused", "disabled", "held" (no longer configured; its events wait) or
    /// "needs_authorize" (change events: Dropbox refused the refresh token, or, read offline,
    /// there is none yet: `hookrelay authorize` is needed).
    pub state: String,
    /// Pending events: waiting, in flight, in retry, or held.
    pub queued: u64,
    /// Of `queued`, those waiting for a later attempt (a retry or a `Retry-After`).
    #[serde(default)]
    pub in_retry: u64,
    pub queued_bytes: u64,
    pub dead_lettered: u64,
    pub oldest_pending_age_seconds: Option<f64>,
    /// Unix ms of the last 2xx since the daemon started.
    pub last_success_ms: Option<u64>,
    /// The last failed attempt's error since the daemon started.
    pub last_error: Option<String>,
    /// Events whose stored record could not be read, dead-lettered as `corrupt` (counted in
    /// `dead_lettered` too) since the daemon started.
    #[serde(default)]
    pub quarantined: u64,
    /// Of `queued`, those an outage holds: all of them while the instance is in one (one
    /// probe per `probe_interval` goes out), else 0.
    #[serde(default)]
    pub held: u64,
    /// The outage the instance is in, if it is (also known with the daemon stopped).
    #[serde(default)]
    pub outage: Option<OutageStatus>,
}

/// An instance's current outage, for `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutageStatus {
    /// Unix ms when it began.
    pub since_ms: u64,
    /// The failed attempt's error that began it.
    pub last_error: Option<String>,
}

impl OutageStatus {
    fn of(outage: &OutageV1) -> Option<OutageStatus> {
        Some(OutageStatus {
            since_ms: outage.since_ms?,
            last_error: outage.last_error.clone(),
        })
    }
}

/// Every configured instance in file order, then held ones (pending events or dead letters
/// under a name no longer configured); `in_retry` is left at 0 (see [`instances`]).
pub fn queue_figures(
    config: &Config,
    store: &Store,
    lanes: Option<&Dispatcher>,
) -> Vec<InstanceStatus> {
    let counters = store.counters();
    let now = time::now_ms();
    let mut names: Vec<String> = config.instances.iter().map(|i| i.name.clone()).collect();
    for (name, counter) in counters.iter() {
        if counter.pending_events + counter.dead_events > 0 && !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
        .into_iter()
        .map(|name| {
            let counter = counters.get(&name).copied().unwrap_or_default();
            let instance = config.instance(&name);
            let lane = lanes.and_then(|lanes| lanes.stats(&name));
            let needs_authorize = match (lanes, &lane) {
                (Some(_), Some(l)) => l.stats.needs_authorize.load(Ordering::Relaxed),
                (Some(_), None) => false,
                (None, _) => instance.is_some_and(|i| {
                    never_authorized(i) && store.authorization(&name).ok().flatten().is_none()
                }),
            };
            let outage = match (lanes, &lane) {
                (Some(_), Some(l)) => OutageStatus::of(&l.stats.outage.load()),
                (Some(_), None) => None,
                (None, _) => store
                    .outage(&name)
                    .ok()
                    .flatten()
                    .and_then(|o| OutageStatus::of(&o)),
            };
            let state = match state(instance, needs_authorize) {
                "active" if outage.is_some() => "outage",
                state => state,
            };
            let oldest = store.oldest_pending_ms(&name).ok().flatten();
            InstanceStatus {
                state: state.to_owned(),
                queued: counter.pending_events,
                in_retry: 0,
                queued_bytes: counter.pending_bytes,
                dead_lettered: counter.dead_events,
                oldest_pending_age_seconds: oldest.map(|ms| now.saturating_sub(ms) as f64 / 1000.0),
                last_success_ms: lane
                    .as_ref()
                    .map(|l| l.stats.last_success_ms.load(Ordering::Relaxed))
                    .filter(|ms| *ms > 0),
                last_error: lane
                    .as_ref()
                    .and_then(|l| l.stats.last_error.load_full())
                    .map(|e| e.1.clone()),
                quarantined: lane
                    .as_ref()
                    .map_or(0, |l| l.stats.quarantined.load(Ordering::Relaxed)),
                held: match outage {
                    Some(_) => counter.pending_events,
                    None => 0,
                },
                outage,
                instance: name,
            }
        })
        .collect()
}

/// An instance's state for `status`; `None`: no longer configured.
pub fn state(instance: Option<&Instance>, needs_authorize: bool) -> &'static str {
    match instance {
        None => "held",
        Some(i) if !i.enabled => "disabled",
        Some(i) if i.delivery.paused => "paused",
        Some(_) if needs_authorize => "needs_authorize",
        Some(_) => "active",
    }
}

/// A change-events instance without a configured refresh token: it needs `authorize` unless
/// the store holds one (what the daemon knows better while it runs).
pub fn never_authorized(instance: &Instance) -> bool {
    instance.events == EventsMode::Changes && instance.refresh_token.is_none()
}

/// [`queue_figures`] with `in_retry` counted (a scan of each instance's future due entries).
pub fn instances(
    config: &Config,
    store: &Store,
    lanes: Option<&Dispatcher>,
) -> Vec<InstanceStatus> {
    let now = time::now_ms();
    let mut figures = queue_figures(config, store, lanes);
    for status in &mut figures {
        if status.queued > 0 {
            status.in_retry = store.waiting_retry(&status.instance, now).unwrap_or(0);
        }
    }
    figures
}
