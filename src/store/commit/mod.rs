//! The committer: the store's single writer. It turns a queue of requests into group commits:
//! one journal record, one `fdatasync` of the journal, the same batch applied to sled in
//! memory, then every answer (see [`super::journal`] for the checkpoints that keep sled durable).
//!
//! This file is the loop and its sync policy: which batches are synced before they are
//! answered, which may wait ([`OUTCOME_SYNC_DELAY`]), and that a batch is answered only once it
//! is as durable as its requests need. Each request is an [`Operation`] with its own reply type,
//! in the file of its concern: [`ingest`], [`outcome`] (what delivery reports), [`dead`]
//! (replay and purge of dead letters), [`retry`] (waiting events due now), [`walk`] (change events),
//! [`outage`] (an instance's outage state), [`maintenance`]; [`pending`]
//! and [`counters`] are the bookkeeping they share, [`view`] the batch they read and write.

mod alerts;
mod counters;
mod dead;
mod history;
mod ingest;
mod maintenance;
mod outage;
mod outcome;
mod pending;
mod retry;
mod view;
mod walk;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};
use ulid::Ulid;

use super::alerts::AlertQueueV1;
use super::disk::{self, Disk};
use super::error::Error;
use super::journal::Appended;
use super::record::Counters;

pub(super) use alerts::{EnqueueAlert, FinishAlert, RetryAlert, TakeDeadTally};
pub(super) use dead::{PurgeDead, ReplayDead};
pub(super) use history::{ExpireHistory, ReplayHistory};
pub(super) use ingest::Ingest;
pub(super) use maintenance::{CatchUp, Close, ExpireDead, ForgetInstance, Heartbeat, PurgePending};
pub(super) use outage::SetOutage;
pub(super) use outcome::{Claim, Delivered, MoveToDead, Quarantine, Reschedule};
pub(super) use retry::{RetriedPage, RetryWaiting};
pub(super) use walk::{Authorize, CommitWalkPage, MarkWalk, SetCursor};

use view::BatchView;

/// Requests one batch takes at most.
pub const MAX_BATCH: usize = 512;
/// How long a batch of delivered-event removals and claims may stay applied but not yet synced.
/// Such a batch needs no sync of its own (a removal lost in a crash only repeats a delivery, which
/// at-least-once allows; a claim only matters while the daemon runs): the next batch that must be
/// durable, usually an ingest, syncs it along with its own writes, or the committer syncs it once
/// this much time has passed without one. The journal's records are read back only up to the
/// first one missing, so a crash undoes only the last batches, never a synced batch after them.
pub(super) const OUTCOME_SYNC_DELAY: Duration = Duration::from_millis(100);
/// Delivered-event removals that may wait for a sync at most: a batch that would leave more
/// unsynced is synced at once. With [`OUTCOME_SYNC_DELAY`], it bounds the deliveries a crash can
/// repeat (beyond those in flight) when no ingest syncs them, as while a backlog drains.
pub(super) const OUTCOME_SYNC_AFTER: usize = 64;

/// One kind of request: what it carries (the implementing type), what it answers, and what it
/// does to the store, read and written through the batch view.
pub(super) trait Operation: Send + 'static {
    type Reply: Send + 'static;

    fn apply(
        self,
        committer: &mut Committer,
        view: &mut BatchView<'_>,
    ) -> Result<Self::Reply, Error>;

    /// Whether the answer may come before the batch is synced (see [`OUTCOME_SYNC_DELAY`]).
    fn may_defer_sync(&self) -> bool {
        false
    }

    /// Whether it removes a delivered event (counted against [`OUTCOME_SYNC_AFTER`]).
    fn is_delivery(&self) -> bool {
        false
    }

    /// Whether the committer stops once it is committed.
    fn closes(&self) -> bool {
        false
    }
}

/// A request as the committer holds it, whatever its operation: applied in a batch, its result
/// kept until the batch is durable, then answered (or failed with the batch).
pub(super) trait Request: Send {
    fn may_defer_sync(&self) -> bool;
    fn is_delivery(&self) -> bool;
    fn closes(&self) -> bool;
    fn apply(&mut self, committer: &mut Committer, view: &mut BatchView<'_>);
    /// The sled error the operation ran into, if it did (an I/O failure, not a refusal).
    fn read_failure(&self) -> Option<&str>;
    /// Sends the result, or `failure` if the batch failed.
    fn answer(self: Box<Self>, failure: Option<&str>);
}

/// An operation and where its answer goes: the [`Request`] of an [`Operation`].
struct Call<O: Operation> {
    /// `None` once applied.
    op: Option<O>,
    result: Option<Result<O::Reply, Error>>,
    reply: oneshot::Sender<Result<O::Reply, Error>>,
}

/// Where the answer to an operation arrives.
pub(super) type Answer<O> = oneshot::Receiver<Result<<O as Operation>::Reply, Error>>;

/// A request for `op`, and where its answer arrives.
pub(super) fn call<O: Operation>(op: O) -> (Box<dyn Request>, Answer<O>) {
    let (reply, answer) = oneshot::channel();
    let call = Call {
        op: Some(op),
        result: None,
        reply,
    };
    (Box::new(call), answer)
}

impl<O: Operation> Request for Call<O> {
    fn may_defer_sync(&self) -> bool {
        self.op.as_ref().is_some_and(O::may_defer_sync)
    }

    fn is_delivery(&self) -> bool {
        self.op.as_ref().is_some_and(O::is_delivery)
    }

    fn closes(&self) -> bool {
        self.op.as_ref().is_some_and(O::closes)
    }

    fn apply(&mut self, committer: &mut Committer, view: &mut BatchView<'_>) {
        if let Some(op) = self.op.take() {
            self.result = Some(op.apply(committer, view));
        }
    }

    fn read_failure(&self) -> Option<&str> {
        match &self.result {
            Some(Err(Error::Failed(message))) => Some(message),
            _ => None,
        }
    }

    fn answer(self: Box<Self>, failure: Option<&str>) {
        let answer = match (failure, self.result) {
            (Some(failure), _) => Err(Error::Failed(failure.to_owned())),
            (None, Some(result)) => result,
            (None, None) => Err(Error::Failed("the request was not applied".into())),
        };
        let _ = self.reply.send(answer);
    }
}

/// State shared between the handles and the committer.
pub(super) struct Shared {
    pub failure: OnceLock<String>,
    pub total_bytes: AtomicU64,
    pub counters: ArcSwap<BTreeMap<String, Counters>>,
    /// Alerts queued (see [`super::alerts`]); their bytes are part of `total_bytes`.
    pub alert_count: AtomicU64,
}

impl Shared {
    pub fn new(counters: BTreeMap<String, Counters>, alert_queue: AlertQueueV1) -> Self {
        let total: u64 = counters.values().map(Counters::total_bytes).sum();
        Shared {
            failure: OnceLock::new(),
            total_bytes: AtomicU64::new(total.saturating_add(alert_queue.bytes)),
            counters: ArcSwap::from_pointee(counters),
            alert_count: AtomicU64::new(alert_queue.count),
        }
    }
}

pub(super) struct Committer {
    /// sled, its log and the journal, with the sync that makes them durable.
    disk: Disk,
    /// The sequence number of the last batch given to sled (see [`super::journal`]).
    last_seq: u64,
    counters: BTreeMap<String, Counters>,
    shared: Arc<Shared>,
    /// Instances whose counters changed in the current batch.
    touched: Vec<String>,
    /// Due times of change envelopes promoted to their queue's head by the current request.
    promoted: Vec<u64>,
    /// Pairs (instance → accounts) whose `s/` key is known to be written (they are never
    /// removed); looked up without building the key.
    seen: HashMap<String, HashSet<String>>,
    /// When the oldest batch journaled since the last sync was; `None` when everything applied
    /// is durable. Only batches of removals and claims stay unsynced past their commit.
    unsynced_since: Option<Instant>,
    /// Delivered-event removals applied since the last sync.
    unsynced_deliveries: usize,
    /// Whether such batches may wait for a later sync (the committer has a timer to bound it).
    defer_syncs: bool,
    /// The greatest event id given so far: ids only grow (runs depend on it, see
    /// [`super::run`]).
    last_id: Ulid,
    /// The run each instance's new events join in the current batch (`z/` key).
    open_runs: HashMap<String, Vec<u8>>,
    /// The delivered events the current batch keeps in the history, put in their pages in id
    /// order once every request is applied ([`Committer::keep_delivered`]).
    delivered: Vec<history::KeptDelivery>,
    /// The history pages the current batch placed events in: still open (not compressed)
    /// until [`Committer::keep_delivered`] ends.
    placed_pages: BTreeSet<Vec<u8>>,
    /// History markers known to be stored (see [`history`]); forgotten whenever markers are
    /// removed.
    known_markers: HashSet<Vec<u8>>,
    /// The alert queue's size, as its `l/n` record holds it.
    alert_queue: AlertQueueV1,
    /// Whether the current batch changed [`Committer::alert_queue`].
    alert_queue_changed: bool,
}

/// What the committer starts from: the store as [`super::open`] left it.
pub(super) struct Opened {
    /// The journal restarted: everything before it is in sled, durably.
    pub disk: Disk,
    pub last_seq: u64,
    pub counters: BTreeMap<String, Counters>,
    pub last_id: Ulid,
}

impl Committer {
    pub fn new(opened: Opened, shared: Arc<Shared>, alert_queue: AlertQueueV1) -> Self {
        let Opened {
            disk,
            last_seq,
            counters,
            last_id,
        } = opened;
        Committer {
            disk,
            last_seq,
            counters,
            shared,
            touched: Vec::new(),
            promoted: Vec::new(),
            seen: HashMap::new(),
            unsynced_since: None,
            unsynced_deliveries: 0,
            defer_syncs: false,
            last_id,
            open_runs: HashMap::new(),
            delivered: Vec::new(),
            placed_pages: BTreeSet::new(),
            known_markers: HashSet::new(),
            alert_queue,
            alert_queue_changed: false,
        }
    }

    /// Runs until every handle is gone or a `Close` request is committed.
    pub fn run(mut self, mut requests: mpsc::Receiver<Box<dyn Request>>) {
        // Only to wait for a request with a deadline while batches are unsynced; the requests
        // come from whatever runtime the handles live on. Without it, every batch is synced.
        let waiter = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(runtime) => Some(runtime),
            Err(err) => {
                tracing::warn!(error = %err, "no timer for deferred syncs; every batch is synced");
                None
            }
        };
        self.defer_syncs = waiter.is_some();
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let first = match (self.unsynced_since, &waiter) {
                (Some(since), Some(waiter)) => {
                    let deadline = tokio::time::Instant::from_std(since + OUTCOME_SYNC_DELAY);
                    // The timer is made inside `block_on`: it needs the waiter's context.
                    let next = async { tokio::time::timeout_at(deadline, requests.recv()).await };
                    match waiter.block_on(next) {
                        Ok(request) => request,
                        Err(_elapsed) => {
                            self.sync_deferred();
                            continue;
                        }
                    }
                }
                _ => requests.blocking_recv(),
            };
            let Some(first) = first else { break };
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match requests.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            let closing = batch.iter().any(|r| r.closes());
            self.commit(&mut batch);
            if closing {
                break;
            }
        }
        // Every handle is gone (or closed): sled is made durable, so that the journal holds
        // nothing the next open must apply (and an older build may open the store).
        if self.shared.failure.get().is_none()
            && let Err(message) = self.checkpoint()
        {
            self.fail(message);
        }
    }

    /// Commits and answers every request of `batch`, leaving it empty (with its capacity).
    fn commit(&mut self, batch: &mut Vec<Box<dyn Request>>) {
        if let Some(failure) = self.shared.failure.get() {
            for request in batch.drain(..) {
                request.answer(Some(failure));
            }
            return;
        }
        let db = self.disk.db.clone();
        let mut view = BatchView::new(&db);
        self.open_runs.clear();
        let deliveries = batch.iter().filter(|r| r.is_delivery()).count();
        self.unsynced_deliveries += deliveries;
        let sync = !self.defer_syncs
            || self.unsynced_deliveries > OUTCOME_SYNC_AFTER
            || batch.iter().any(|r| !r.may_defer_sync());
        for request in batch.iter_mut() {
            request.apply(self, &mut view);
        }
        let kept = self.keep_delivered(&mut view).err();
        let counted = kept.or_else(|| self.count_other_records(&view).err());
        self.write_counters(&mut view);
        // A read failing in sled (its background flusher may have hit the error first) fails
        // the store as a failed write would: nothing of this batch is applied or acknowledged.
        let failed = counted.map(|err| err.to_string()).or_else(|| {
            batch
                .iter()
                .find_map(|r| r.read_failure().map(str::to_owned))
        });
        let durable = match failed {
            Some(message) => Err(format!("read: {message}")),
            None => self.apply_batch(view, sync),
        };
        match durable {
            Ok(()) => {
                self.publish_counters();
                for request in batch.drain(..) {
                    request.answer(None);
                }
            }
            Err(message) => {
                self.fail(message.clone());
                for request in batch.drain(..) {
                    request.answer(Some(&message));
                }
            }
        }
    }

    /// Makes the store fail-stop: every later request fails with `message`.
    fn fail(&self, message: String) {
        tracing::error!(error = %message, "store write failed; no further writes will be acknowledged");
        let _ = self.shared.failure.set(message);
    }

    /// Syncs the batches applied without a sync, if there are any.
    fn sync_deferred(&mut self) {
        if self.unsynced_since.is_none() {
            return;
        }
        if self.shared.failure.get().is_some() {
            // Nothing is synced after a failure: what was not stays so, and is not waited on.
            self.unsynced_since = None;
            return;
        }
        if let Err(message) = self.make_durable() {
            self.unsynced_since = None;
            self.fail(message);
        }
    }

    /// Journals the batch and applies it to sled. With `sync`, the journal is synced first
    /// (with every batch before it), and sled takes the batch write by write. Without, sled
    /// takes it as one atomic batch, and the journal is synced by the next batch that must be,
    /// or after [`OUTCOME_SYNC_DELAY`]. A batch the journal has no room for is applied
    /// atomically and made durable by a checkpoint at once.
    fn apply_batch(&mut self, view: BatchView<'_>, sync: bool) -> Result<(), String> {
        let writes = view.into_writes();
        if writes.is_empty() {
            return match sync {
                true => self.make_durable(),
                false => Ok(()),
            };
        }
        let seq = self.last_seq + 1;
        let appended = self
            .disk
            .journal
            .append(seq, &writes)
            .map_err(|e| format!("journal write: {e}"))?;
        self.last_seq = seq;
        let apply_error = |e: sled::Error| format!("apply: {e}");
        match appended {
            Appended::Full => {
                disk::apply_atomically(&self.disk.db, seq, writes).map_err(apply_error)?;
                self.checkpoint()
            }
            Appended::Written => {
                self.unsynced_since.get_or_insert_with(Instant::now);
                if sync {
                    self.make_durable()?;
                    disk::apply_in_order(&self.disk.db, seq, writes).map_err(apply_error)
                } else {
                    disk::apply_atomically(&self.disk.db, seq, writes).map_err(apply_error)
                }
            }
        }
    }

    /// fdatasyncs the journal, if anything was journaled since the last time.
    fn make_durable(&mut self) -> Result<(), String> {
        if self.unsynced_since.is_some() {
            self.disk.sync_journal()?;
        }
        self.synced();
        Ok(())
    }

    /// Makes sled durable up to the last batch and starts the journal again
    /// ([`Disk::checkpoint`]).
    fn checkpoint(&mut self) -> Result<(), String> {
        self.disk.checkpoint()?;
        self.synced();
        Ok(())
    }

    fn synced(&mut self) {
        self.unsynced_since = None;
        self.unsynced_deliveries = 0;
    }
}
