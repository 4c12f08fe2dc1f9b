//! Delivery to consumers' callback URLs (docs/protocol.md).
//!
//! Ingest hands each newly committed event to its instance's [`lane`] in memory (no store read
//! on the happy path); a lane whose queue is full is told to look in the store instead, and
//! while it has such a backlog, newer events wait in the store behind the older ones, so that
//! the lane delivers them in time order instead of starving the spilled ones. Each
//! lane claims due retries from the store itself, limits its rate and concurrency, and runs
//! [`attempt`]s, each of which commits its outcome before the lane forgets the event. The store
//! stays the source of truth: whatever is not committed as delivered is delivered again.

mod attempt;
pub mod client;
pub mod envelope;
mod lane;
pub mod outage;
pub mod outcome;
pub mod ssrf;

pub use attempt::signed_headers;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tracing::warn;

pub use client::Clients;
pub use lane::is_active;

use crate::config::{Config, LiveConfig};
use crate::store::{Event, OutageV1, Store};
use crate::telemetry::metrics::Metrics;
use crate::time;

/// What lanes and attempts share.
pub struct Context {
    pub store: Store,
    pub live: LiveConfig,
    pub clients: ArcSwap<Clients>,
    pub metrics: Arc<Metrics>,
    /// Told when an instance's outage begins or ends (the daemon raises operator alerts).
    pub on_outage: OutageListener,
}

/// An instance's outage began or ended, as its lane tells the [`OutageListener`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutageNotice {
    /// No 2xx for `outage_after` while attempts were made, since `since_ms`.
    Began {
        instance: String,
        since_ms: u64,
        last_error: Option<String>,
    },
    /// The outage that began at `since_ms` ended (a 2xx, or outage mode turned off);
    /// `last_error` is the last failure before it ended.
    Ended {
        instance: String,
        since_ms: u64,
        last_error: Option<String>,
    },
}

/// Who hears of outages: called on the lane's task, so it must not block.
pub type OutageListener = Arc<dyn Fn(OutageNotice) + Send + Sync>;

/// Per-instance facts for `status`, kept without locks.
#[derive(Default)]
pub struct LaneStats {
    pub last_success_ms: AtomicU64,
    pub last_error: ArcSwapOption<(u64, String)>,
    /// Change events: Dropbox refused the instance's refresh token; it needs `authorize`.
    pub needs_authorize: AtomicBool,
    /// Events whose stored record could not be read, dead-lettered as `corrupt` since start.
    pub quarantined: AtomicU64,
    /// The instance's outage state as its lane last changed it (read by attempts for the age
    /// of events and whether an attempt counts, and by `status`); replaced only when an
    /// outage begins or ends.
    pub outage: ArcSwap<OutageV1>,
}

impl LaneStats {
    fn record_success(&self) {
        self.last_success_ms
            .store(time::now_ms(), Ordering::Relaxed);
    }

    pub fn record_error(&self, error: &str) {
        self.last_error
            .store(Some(Arc::new((time::now_ms(), error.to_owned()))));
    }
}

/// The ingest side's view of a lane.
pub struct LaneHandle {
    handoff: mpsc::Sender<Event>,
    /// Set when the store may hold due events the lane has not seen (a full hand-off queue).
    backlog: AtomicBool,
    wake: Notify,
    /// Set by [`LaneHandle::probe_now`]: the lane sends its next probe without waiting.
    probe_now: AtomicBool,
    pub stats: LaneStats,
}

/// What became of an event offered to a lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HandOff {
    /// Queued in memory for the lane.
    Queued,
    /// Left in the store; the lane was told to look there.
    Spilled,
}

impl LaneHandle {
    fn new(handoff: mpsc::Sender<Event>) -> LaneHandle {
        LaneHandle {
            handoff,
            backlog: AtomicBool::new(true),
            wake: Notify::new(),
            probe_now: AtomicBool::new(false),
            stats: LaneStats::default(),
        }
    }

    /// Ends the wait for the next probe of an instance in an outage at once and wakes its
    /// lane, which then probes with the oldest due event (`retry`). Outside an outage it only
    /// wakes the lane.
    pub fn probe_now(&self) {
        self.probe_now.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Whether the instance is in an outage.
    pub fn in_outage(&self) -> bool {
        self.stats.outage.load().active()
    }

    /// Hands `event` (already committed) to the lane in memory, unless the lane has a backlog
    /// in the store: then the event waits there behind the older ones, so that the lane, which
    /// drains the due index in time order, does not starve them with newer hand-offs.
    fn offer(&self, event: Event) -> HandOff {
        if self.backlog.load(Ordering::Acquire) {
            self.wake.notify_one();
            return HandOff::Spilled;
        }
        match self.handoff.try_send(event) {
            Ok(()) => HandOff::Queued,
            Err(_) => {
                self.backlog.store(true, Ordering::Release);
                self.wake.notify_one();
                HandOff::Spilled
            }
        }
    }
}

/// Owns the lanes: creates them as instances appear, hands events to them, stops them.
pub struct Dispatcher {
    ctx: Arc<Context>,
    lanes: ArcSwap<HashMap<String, Arc<LaneHandle>>>,
    tasks: std::sync::Mutex<JoinSet<()>>,
    shutdown: watch::Sender<bool>,
}

impl Dispatcher {
    pub fn new(
        store: Store,
        live: LiveConfig,
        metrics: Arc<Metrics>,
        on_outage: OutageListener,
    ) -> Result<Dispatcher, reqwest::Error> {
        let clients = Clients::for_config(&live.load().config, None)?;
        let ctx = Arc::new(Context {
            store,
            live,
            clients: ArcSwap::from_pointee(clients),
            metrics,
            on_outage,
        });
        let (shutdown, _) = watch::channel(false);
        let dispatcher = Dispatcher {
            ctx,
            lanes: ArcSwap::from_pointee(HashMap::new()),
            tasks: std::sync::Mutex::new(JoinSet::new()),
            shutdown,
        };
        dispatcher.sync_lanes(&dispatcher.ctx.live.load().config);
        Ok(dispatcher)
    }

    /// Builds the clients a new configuration needs, reusing unchanged ones (and their pools).
    pub fn prepare(&self, config: &Config) -> Result<Clients, reqwest::Error> {
        Clients::for_config(config, Some(&self.ctx.clients.load()))
    }

    /// Takes a new configuration into use (after the live config was swapped): its clients,
    /// lanes for new instances, and every lane re-reads its settings.
    pub fn apply_config(&self, config: &Config, clients: Clients) {
        self.ctx.clients.store(Arc::new(clients));
        self.sync_lanes(config);
        for lane in self.lanes.load().values() {
            lane.wake.notify_one();
        }
    }

    /// Hands a committed event to its lane. If the lane's queue is full, or the lane already has
    /// a backlog in the store, the event simply waits in the store and the lane is told to look
    /// there.
    pub fn offer(&self, event: Event) {
        let lanes = self.lanes.load();
        if let Some(lane) = lanes.get(&event.instance) {
            lane.offer(event);
        }
    }

    /// Tells the lane of `instance` to look in the store (e.g. after a replay).
    pub fn poke(&self, instance: &str) {
        if let Some(lane) = self.lanes.load().get(instance) {
            lane.backlog.store(true, Ordering::Release);
            lane.wake.notify_one();
        }
    }

    /// Lane statistics of an instance, if it has a lane.
    pub fn stats(&self, instance: &str) -> Option<Arc<LaneHandle>> {
        self.lanes.load().get(instance).cloned()
    }

    /// Stops starting attempts and waits up to `timeout` for those in flight to finish.
    /// Returns false if some were still running at the deadline (their events stay due).
    pub async fn drain(&self, timeout: Duration) -> bool {
        let _ = self.shutdown.send(true);
        let mut tasks = match self.tasks.lock() {
            Ok(mut tasks) => std::mem::take(&mut *tasks),
            Err(_) => return false,
        };
        let drained = tokio::time::timeout(timeout, async {
            while tasks.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        if !drained {
            warn!(
                "in-flight deliveries did not finish within shutdown_timeout; they will be retried after restart"
            );
            // A lane ends its attempt tasks with it (their events stay due).
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        drained
    }

    fn sync_lanes(&self, config: &Config) {
        let current = self.lanes.load();
        let missing: Vec<&str> = config
            .instances
            .iter()
            .map(|i| i.name.as_str())
            .filter(|name| !current.contains_key(*name))
            .collect();
        if missing.is_empty() {
            return;
        }
        let mut lanes = HashMap::clone(&current);
        let Ok(mut tasks) = self.tasks.lock() else {
            return;
        };
        for name in missing {
            let (handoff, receiver) = mpsc::channel(lane::READY_CAPACITY);
            let handle = Arc::new(LaneHandle::new(handoff));
            let lane = lane::Lane::new(
                name.to_owned(),
                self.ctx.clone(),
                handle.clone(),
                receiver,
                self.shutdown.subscribe(),
            );
            tasks.spawn(lane.run());
            lanes.insert(name.to_owned(), handle);
        }
        self.lanes.store(Arc::new(lanes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EventKind;

    fn event(n: u64) -> Event {
        Event {
            id: ulid::Ulid::from_parts(n, 0),
            instance: "acme".into(),
            account: "dbid:a".into(),
            kind: EventKind::Notify,
            raw: None,
            objects: None,
            date_ms: n,
            age_base_ms: n,
            attempts: 0,
            due_ms: n,
            refused_only: true,
        }
    }

    #[tokio::test]
    async fn once_events_spill_to_the_store_newer_ones_follow_them_there() {
        let (sender, mut receiver) = mpsc::channel(2);
        let handle = LaneHandle::new(sender);
        // The lane's first refill clears the start-up hint.
        handle.backlog.store(false, Ordering::Release);
        assert_eq!(handle.offer(event(1)), HandOff::Queued);
        assert_eq!(handle.offer(event(2)), HandOff::Queued);
        assert_eq!(
            handle.offer(event(3)),
            HandOff::Spilled,
            "the queue is full"
        );
        assert!(handle.backlog.load(Ordering::Acquire));

        // The lane takes one: there is room in memory again, but event 3 waits in the store,
        // so event 4 must queue behind it there rather than overtake it in memory.
        assert_eq!(receiver.recv().await.map(|e| e.id), Some(event(1).id));
        assert_eq!(handle.offer(event(4)), HandOff::Spilled);
        assert_eq!(receiver.try_recv().map(|e| e.id).ok(), Some(event(2).id));
        assert!(receiver.try_recv().is_err(), "event 4 overtook the backlog");

        // Once a refill finds the store drained, hand-offs resume.
        handle.backlog.store(false, Ordering::Release);
        assert_eq!(handle.offer(event(5)), HandOff::Queued);
    }
}
