//! A lane: one instance's delivery loop. It owns the instance's in-memory queue (events handed
//! over by ingest, or claimed from the store when due), its rate limiter and its concurrency
//! cap, so one instance's callback never holds up another's.
//!
//! The lane is a single task and the only one that claims its instance's events, so the set of
//! ids it holds (queued or in flight) is plain local state. An id leaves that set only after
//! its outcome is committed, so a later scan of the due index never picks up an event that is
//! still being delivered, or one that was delivered. The concurrency cap counts attempts
//! waiting for the consumer's answer: an attempt frees its slot when the answer is in, and the
//! lane stops (at shutdown) only when every outcome is committed. Its attempts are tasks it
//! owns: when the shutdown deadline ends the lane, it ends them with it.
//!
//! The lane also follows what its attempts hear ([`Heard`]): a `Retry-After` holds the whole
//! instance until then, and an instance with no 2xx for `outage_after` while attempts were made
//! enters an outage ([`outage`](super::outage)): one attempt, a probe with the oldest due
//! event, per `probe_interval`, until the first 2xx. The outage state lives in the lane, is
//! published to [`LaneStats::outage`](super::LaneStats) and stored (`u/`) only when an outage
//! begins or ends ([`Lane::outage_began`], [`Lane::outage_ended`]).

use std::collections::{HashSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};
use ulid::Ulid;

use super::attempt::{self, Done, Heard, Progress, Slot};
use super::outage::{Change, Tracker};
use super::{Context, LaneHandle, OutageNotice};
use crate::config::{Delivery, Instance, Rate};
use crate::retry;
use crate::store::{self, Event};
use crate::time;

/// Events a lane keeps in memory, queued and not yet sent.
pub const READY_CAPACITY: usize = 256;
/// Below this many queued events the lane looks in the store for more.
const REFILL_BELOW: usize = READY_CAPACITY / 2;
/// How often an idle lane looks at the store anyway (a safety net; wake-ups do the real work).
const IDLE_SCAN: Duration = Duration::from_secs(10);

pub struct Lane {
    name: String,
    ctx: Arc<Context>,
    handle: Arc<LaneHandle>,
    handoff: mpsc::Receiver<Event>,
    done_tx: mpsc::UnboundedSender<Progress>,
    done_rx: mpsc::UnboundedReceiver<Progress>,
    /// Ids queued here or in flight.
    held: HashSet<Ulid>,
    ready: VecDeque<Event>,
    flights: Flights,
    /// The attempt tasks, so that a lane ended at the shutdown deadline ends them too.
    attempts: JoinSet<()>,
    /// The earliest known due time of an event in the store that this lane does not hold.
    next_due_ms: Option<u64>,
    limiter: Option<(Rate, NonZeroU32, Arc<DefaultDirectRateLimiter>)>,
    shutdown: watch::Receiver<bool>,
    /// Outage mode's state (lane-local; published when it changes).
    outage: Tracker,
    /// In an outage: when the next probe may go (`None`: at once).
    next_probe: Option<Instant>,
    /// A `Retry-After` holds every attempt of the instance until then.
    hold_until: Option<Instant>,
}

impl Lane {
    pub fn new(
        name: String,
        ctx: Arc<Context>,
        handle: Arc<LaneHandle>,
        handoff: mpsc::Receiver<Event>,
        shutdown: watch::Receiver<bool>,
    ) -> Lane {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        handle.backlog.store(true, Ordering::Release);
        Lane {
            name,
            ctx,
            handle,
            handoff,
            done_tx,
            done_rx,
            held: HashSet::new(),
            ready: VecDeque::new(),
            flights: Flights::default(),
            attempts: JoinSet::new(),
            next_due_ms: None,
            limiter: None,
            shutdown,
            outage: Tracker::default(),
            next_probe: None,
            hold_until: None,
        }
    }

    /// Runs until shutdown, then until its in-flight attempts have committed their outcomes.
    pub async fn run(mut self) {
        self.restore_outage();
        loop {
            let stopping = *self.shutdown.borrow();
            if stopping && self.flights.unsettled == 0 {
                break;
            }
            let live = self.ctx.live.load_full();
            let instance = live.config.instance(&self.name).filter(|i| is_active(i));
            let mut wake_at = None;
            if let (Some(instance), false) = (instance, stopping) {
                if instance.delivery.outage_after.is_zero() && self.outage.in_outage() {
                    let change = self.outage.switched_off(time::now_ms());
                    self.outage_changed(change).await;
                }
                if let Err(err) = self.refill().await {
                    self.refill_failed(&err);
                }
                wake_at = self.dispatch(instance);
                // A due retry matters only when there is room to take it (no busy wake-ups).
                if let Some(due) = self.next_due_ms.filter(|_| self.ready.len() < REFILL_BELOW) {
                    let due_at = instant_at(due);
                    wake_at = Some(wake_at.map_or(due_at, |w| w.min(due_at)));
                }
            }
            let wake_at = wake_at.unwrap_or_else(|| Instant::now() + IDLE_SCAN);
            tokio::select! {
                Some(event) = self.handoff.recv(), if self.ready.len() < READY_CAPACITY && !stopping => {
                    self.accept(event);
                }
                Some(progress) = self.done_rx.recv() => self.progress(progress).await,
                Some(ended) = self.attempts.join_next(), if !self.attempts.is_empty() => {
                    if let Err(err) = ended {
                        error!(instance = %self.name, error = %err, "a delivery attempt ended abnormally");
                    }
                }
                _ = self.handle.wake.notified() => {}
                _ = self.shutdown.changed(), if !stopping => {}
                _ = tokio::time::sleep_until(wake_at) => {
                    if self.next_due_ms.is_none() {
                        self.handle.backlog.store(true, Ordering::Release);
                    }
                }
            }
        }
        // Every outcome is committed; the tasks are at their end.
        while self.attempts.join_next().await.is_some() {}
        debug!(instance = %self.name, "lane stopped");
    }

    fn accept(&mut self, event: Event) {
        if self.held.insert(event.id) {
            self.ready.push_back(event);
        }
    }

    async fn progress(&mut self, progress: Progress) {
        match progress {
            Progress::Answered(heard) => {
                self.flights.answered();
                self.heard(heard).await;
            }
            Progress::Settled(done) => {
                self.flights.settled();
                self.held.remove(&done.id);
                if let Some(due) = done.next_due_ms {
                    self.next_due_ms = Some(self.next_due_ms.map_or(due, |d| d.min(due)));
                }
            }
        }
    }

    /// What an attempt's answer says about the instance: a `Retry-After` hold, and outage
    /// mode's state. The happy path (a 2xx outside an outage) touches lane-local state only.
    async fn heard(&mut self, heard: Heard) {
        let now_ms = time::now_ms();
        let change = match heard {
            Heard::Nothing => return,
            Heard::Success => self.outage.succeeded(now_ms),
            Heard::Failure {
                error,
                hold_until_ms,
            } => {
                if let Some(until) = hold_until_ms {
                    let at = instant_at(until);
                    self.hold_until = Some(self.hold_until.map_or(at, |held| held.max(at)));
                }
                let live = self.ctx.live.load();
                let outage_after = live
                    .config
                    .instance(&self.name)
                    .map_or(Duration::ZERO, |i| i.delivery.outage_after);
                self.outage.failed(now_ms, &error, outage_after)
            }
        };
        self.outage_changed(change).await;
    }

    async fn outage_changed(&mut self, change: Change) {
        match change {
            Change::Unchanged => {}
            Change::Began => self.outage_began().await,
            Change::Ended { lasted_ms } => self.outage_ended(lasted_ms).await,
        }
    }

    /// The instance entered an outage (its consumer is treated as down): published, stored,
    /// logged, counted, and told to the outage listener (operator alerts).
    async fn outage_began(&mut self) {
        let state = self.outage.state().clone();
        let since = state.since_ms.map(time::rfc3339).unwrap_or_default();
        let last_error = state.last_error.clone().unwrap_or_default();
        warn!(
            instance = %self.name,
            %since,
            %last_error,
            "outage: no 2xx from the consumer for outage_after; one probe per probe_interval, attempts and age not counted until a 2xx"
        );
        // The first probe goes one interval from now.
        let probe_interval = self.delivery_setting(|d| d.probe_interval);
        self.next_probe = probe_interval.map(|every| retry::instant_after(Instant::now(), every));
        (self.ctx.on_outage)(OutageNotice::Began {
            instance: self.name.clone(),
            since_ms: state.since_ms.unwrap_or_else(time::now_ms),
            last_error: state.last_error.clone(),
        });
        self.publish_outage(state).await;
    }

    /// The instance's outage ended (a 2xx, or outage mode turned off) after `lasted_ms`:
    /// published, stored, logged, counted, and told to the outage listener (operator alerts);
    /// the backlog drains at the rate limit.
    async fn outage_ended(&mut self, lasted_ms: u64) {
        info!(
            instance = %self.name,
            duration = %humantime::format_duration(Duration::from_secs(lasted_ms / 1000)),
            "outage over: the consumer answered 2xx; the backlog drains at the rate limit"
        );
        self.next_probe = None;
        // Events the outage held wait in the store: look there.
        self.handle.backlog.store(true, Ordering::Release);
        (self.ctx.on_outage)(OutageNotice::Ended {
            instance: self.name.clone(),
            since_ms: time::now_ms().saturating_sub(lasted_ms),
            last_error: self
                .handle
                .stats
                .last_error
                .load_full()
                .map(|e| e.1.clone()),
        });
        let state = self.outage.state().clone();
        self.publish_outage(state).await;
    }

    /// Makes `state` what attempts, `status` and `/metrics` see, and stores it.
    async fn publish_outage(&mut self, state: store::OutageV1) {
        let active = state.active();
        self.handle.stats.outage.store(Arc::new(state.clone()));
        self.ctx.metrics.set_outage(&self.name, active);
        if let Err(err) = self.ctx.store.set_outage(&self.name, state).await {
            error!(instance = %self.name, error = %err, "cannot store the outage state; it holds until a restart");
        }
    }

    /// Takes up the outage state stored for the instance: an outage goes on across restarts.
    fn restore_outage(&mut self) {
        match self.ctx.store.outage(&self.name) {
            Ok(Some(state)) => {
                if let Some(since) = state.since_ms {
                    warn!(instance = %self.name, since = %time::rfc3339(since), "still in an outage; probing");
                }
                self.ctx.metrics.set_outage(&self.name, state.active());
                self.handle.stats.outage.store(Arc::new(state.clone()));
                self.outage = Tracker::new(state);
            }
            Ok(None) => {}
            Err(err) => {
                error!(instance = %self.name, error = %err, "cannot read the stored outage state; starting without it");
            }
        }
    }

    /// A `[delivery]` setting of the instance, if it is still configured.
    fn delivery_setting<T>(&self, setting: impl FnOnce(&Delivery) -> T) -> Option<T> {
        let live = self.ctx.live.load();
        live.config
            .instance(&self.name)
            .map(|i| setting(&i.delivery))
    }

    /// Claims due events from the store when the in-memory queue runs low and there may be some.
    /// In an outage, the events due first are claimed even before they are due: the probe takes
    /// the oldest, and the first 2xx sends the rest at once.
    async fn refill(&mut self) -> Result<(), store::Error> {
        if self.ready.len() >= REFILL_BELOW {
            return Ok(());
        }
        let now = match self.outage.in_outage() {
            true => u64::MAX,
            false => time::now_ms(),
        };
        let due = self.next_due_ms.is_some_and(|d| d <= now);
        let hinted = self.handle.backlog.swap(false, Ordering::AcqRel);
        if !due && !hinted {
            return Ok(());
        }
        // Take what ingest already handed over first, so the scan below does not claim those
        // events a second time from the store.
        while self.ready.len() < READY_CAPACITY {
            match self.handoff.try_recv() {
                Ok(event) => self.accept(event),
                Err(_) => break,
            }
        }
        let room = READY_CAPACITY - self.ready.len();
        if room == 0 {
            self.handle.backlog.store(true, Ordering::Release);
            return Ok(());
        }
        let held = &self.held;
        let ids = self
            .ctx
            .store
            .due_ids(&self.name, now, room, |id| held.contains(id))?;
        if ids.len() == room {
            self.handle.backlog.store(true, Ordering::Release);
        }
        if !ids.is_empty() {
            let claimed = self.ctx.store.claim_readable(&self.name, ids).await?;
            for event in claimed.events {
                self.accept(event);
            }
            for (id, problem) in claimed.unreadable {
                self.quarantine(id, &problem).await?;
            }
        }
        let held = &self.held;
        self.next_due_ms = self
            .ctx
            .store
            .next_due_after(&self.name, now, |id| held.contains(id))?;
        Ok(())
    }

    /// A record the store cannot read goes to the dead letters (reason `corrupt`, its bytes
    /// kept), so that the rest of the queue is delivered.
    async fn quarantine(&mut self, id: Ulid, problem: &str) -> Result<(), store::Error> {
        if self.ctx.store.quarantine(&self.name, id, problem).await? {
            error!(instance = %self.name, event = %id, problem, "an unreadable event was quarantined: dead-lettered as corrupt, its bytes kept");
            self.ctx.metrics.quarantined(&self.name);
            self.handle
                .stats
                .quarantined
                .fetch_add(1, Ordering::Relaxed);
            self.handle
                .stats
                .record_error(&format!("event {id} quarantined: {problem}"));
        }
        Ok(())
    }

    /// A refill failed. A failed store stops the daemon (its failure is sticky); anything else
    /// (a record the claim could not even list) is logged and tried again after
    /// [`IDLE_SCAN`] or the next wake-up, while the lane goes on with what it holds.
    fn refill_failed(&mut self, err: &store::Error) {
        match err {
            store::Error::Failed(_) | store::Error::Closed => {
                debug!(instance = %self.name, error = %err, "the store failed; not reading the queue");
            }
            _ => {
                error!(instance = %self.name, error = %err, "cannot read the queue; trying again");
                self.handle.stats.record_error(&err.to_string());
            }
        }
        // No busy loop on a due time the failed scan could not move on.
        self.next_due_ms = None;
    }

    /// Starts attempts while the concurrency cap and the rate limiter allow: none while a
    /// `Retry-After` holds the instance, and in an outage one probe at a time, one per
    /// `probe_interval`. Returns when to try again, if a wait is what stopped us.
    fn dispatch(&mut self, instance: &Instance) -> Option<Instant> {
        let now = Instant::now();
        if let Some(until) = self.hold_until {
            if now < until {
                return Some(until);
            }
            self.hold_until = None;
        }
        let probing = self.outage.in_outage();
        if self.handle.probe_now.swap(false, Ordering::AcqRel) {
            self.next_probe = None;
        }
        if probing {
            if let Some(at) = self.next_probe.filter(|at| now < *at) {
                return Some(at);
            }
            if self.flights.sending > 0 {
                // The answer wakes the lane.
                return None;
            }
        }
        let limiter = self.limiter(&instance.delivery);
        let concurrency = instance.delivery.concurrency.get() as usize;
        while self.flights.has_room(concurrency) && !self.ready.is_empty() {
            if let Err(not_until) = limiter.check() {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                return Some(Instant::now() + wait);
            }
            let Some(event) = self.ready.pop_front() else {
                break;
            };
            self.flights.start();
            let ctx = self.ctx.clone();
            let handle = self.handle.clone();
            let mut slot = Slot::new(self.done_tx.clone());
            let live = self.ctx.live.load_full();
            self.attempts.spawn(async move {
                let next_due_ms = match live.config.instance(&event.instance) {
                    Some(instance) => {
                        attempt::run(&ctx, &handle.stats, instance, &event, &mut slot).await
                    }
                    None => None,
                };
                slot.settle(Done {
                    id: event.id,
                    next_due_ms,
                });
            });
            if probing {
                let next = retry::instant_after(now, instance.delivery.probe_interval);
                self.next_probe = Some(next);
                return Some(next);
            }
        }
        None
    }

    /// The instance's limiter, kept across reloads unless its rate or burst changed.
    fn limiter(&mut self, delivery: &Delivery) -> Arc<DefaultDirectRateLimiter> {
        match &self.limiter {
            Some((rate, burst, limiter))
                if *rate == delivery.rate_limit && *burst == delivery.rate_limit_burst =>
            {
                limiter.clone()
            }
            _ => {
                let limiter = Arc::new(RateLimiter::direct(quota(
                    delivery.rate_limit,
                    delivery.rate_limit_burst,
                )));
                self.limiter = Some((
                    delivery.rate_limit,
                    delivery.rate_limit_burst,
                    limiter.clone(),
                ));
                limiter
            }
        }
    }
}

/// A lane's attempts: those holding a delivery slot (waiting for the consumer's answer) and
/// those whose outcome is not committed yet. A slot is free again as soon as the answer is in,
/// so committing outcomes does not hold up the next sends; the id stays held until settled.
#[derive(Debug, Default)]
struct Flights {
    /// Attempts waiting for the consumer's answer (the concurrency cap counts these).
    sending: usize,
    /// Attempts whose outcome is not committed yet (sending or committing).
    unsettled: usize,
}

impl Flights {
    fn start(&mut self) {
        self.sending += 1;
        self.unsettled += 1;
    }

    /// Whether another attempt may start: a free slot, and at most one outcome being committed
    /// per slot besides (so a slow store bounds the attempts a lane holds).
    fn has_room(&self, concurrency: usize) -> bool {
        self.sending < concurrency && self.unsettled < concurrency.saturating_mul(2)
    }

    fn answered(&mut self) {
        self.sending = self.sending.saturating_sub(1);
    }

    fn settled(&mut self) {
        self.unsettled = self.unsettled.saturating_sub(1);
    }
}

/// Whether an instance's events are being delivered (not paused, not disabled).
pub fn is_active(instance: &Instance) -> bool {
    instance.enabled && !instance.delivery.paused && instance.callback_url.is_some()
}

fn quota(rate: Rate, burst: NonZeroU32) -> Quota {
    let period = rate.per / rate.count.get();
    Quota::with_period(period.max(Duration::from_nanos(1)))
        .unwrap_or_else(|| Quota::per_second(rate.count))
        .allow_burst(burst)
}

fn instant_at(due_ms: u64) -> Instant {
    let now_ms = time::now_ms();
    let wait = Duration::from_millis(due_ms.saturating_sub(now_ms));
    retry::instant_after(Instant::now(), wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_frees_at_the_answer_and_the_id_is_settled_at_the_commit() {
        let mut flights = Flights::default();
        flights.start();
        assert!(!flights.has_room(1));
        flights.answered();
        // The first outcome is being committed: the next send may start, the lane may not stop.
        assert!(flights.has_room(1));
        assert_eq!((flights.sending, flights.unsettled), (0, 1));
        flights.start();
        flights.answered();
        assert!(
            !flights.has_room(1),
            "one outcome committing per slot at most"
        );
        flights.settled();
        assert!(flights.has_room(1));
        flights.settled();
        assert_eq!((flights.sending, flights.unsettled), (0, 0));
    }

    #[test]
    fn quota_spreads_the_rate_and_keeps_the_burst() {
        let rate = Rate {
            count: NonZeroU32::new(100).unwrap_or(NonZeroU32::MIN),
            per: Duration::from_secs(1),
        };
        let burst = NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN);
        let quota = quota(rate, burst);
        assert_eq!(quota.replenish_interval(), Duration::from_millis(10));
        assert_eq!(quota.burst_size(), burst);
    }
}
