//! Delivery to consumers' callback URLs (SPEC §5, §6).
//!
//! Ingest hands each newly committed event to its instance's [`lane`] in memory (no store read
//! on the happy path); a lane whose queue is full is told to look in the store instead. Each
//! lane claims due retries from the store itself, limits its rate and concurrency, and runs
//! [`attempt`]s, each of which commits its outcome before the lane forgets the event. The store
//! stays the source of truth: whatever is not committed as delivered is delivered again.

mod attempt;
pub mod client;
pub mod envelope;
mod lane;
pub mod outcome;
pub mod schedule;
pub mod ssrf;

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
use crate::ops::metrics::Metrics;
use crate::store::{self, Event, Store};

/// What lanes and attempts share.
pub struct Context {
    pub store: Store,
    pub live: LiveConfig,
    pub clients: ArcSwap<Clients>,
    pub metrics: Arc<Metrics>,
}

/// Per-instance facts for `status`, kept without locks.
#[derive(Default)]
pub struct LaneStats {
    pub last_success_ms: AtomicU64,
    pub last_error: ArcSwapOption<(u64, String)>,
    /// Change events: Dropbox refused the instance's refresh token; it needs `authorize`.
    pub needs_authorize: AtomicBool,
}

impl LaneStats {
    fn record_success(&self) {
        self.last_success_ms
            .store(store::now_ms(), Ordering::Relaxed);
    }

    pub fn record_error(&self, error: &str) {
        self.last_error
            .store(Some(Arc::new((store::now_ms(), error.to_owned()))));
    }
}

/// The ingest side's view of a lane.
pub struct LaneHandle {
    handoff: mpsc::Sender<Event>,
    /// Set when the store may hold due events the lane has not seen (a full hand-off queue).
    backlog: AtomicBool,
    wake: Notify,
    pub stats: LaneStats,
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
    ) -> Result<Dispatcher, reqwest::Error> {
        let clients = Clients::for_config(&live.load().config, None)?;
        let ctx = Arc::new(Context {
            store,
            live,
            clients: ArcSwap::from_pointee(clients),
            metrics,
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

    /// Hands a committed event to its lane. If the lane's queue is full the event simply waits
    /// in the store, and the lane is told to look there.
    pub fn offer(&self, event: Event) {
        let lanes = self.lanes.load();
        let Some(lane) = lanes.get(&event.instance) else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = lane.handoff.try_send(event) {
            lane.backlog.store(true, Ordering::Release);
            lane.wake.notify_one();
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
            tasks.abort_all();
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
            let handle = Arc::new(LaneHandle {
                handoff,
                backlog: AtomicBool::new(true),
                wake: Notify::new(),
                stats: LaneStats::default(),
            });
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
