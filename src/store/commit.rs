//! The committer: the store's single writer. It turns a queue of requests into group commits:
//! one journal record, one `fdatasync` of the journal, the same batch applied to sled in
//! memory, then every answer (see [`journal`] for the checkpoints that keep sled durable).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use ulid::Ulid;

use super::journal::{self, Appended, Journal, Writes};
use super::keys;
use super::record::{
    AuthorizationRecord, AuthorizationV1, ChangesV1, Counters, DeadRecord, DeadV1, EventKind,
    EventRecord, EventV1, NotificationRecord, ObjectV1, QUARANTINED,
};
use super::run;
use super::{
    Claimed, Cutoffs, DeadLetter, Error, Event, IngestTarget, MAX_BATCH, MapWrite, Placed, Retry,
    SCHEMA_RUNS, SCHEMA_WITHOUT_RUNS, Shared, SyncFn, WalkPage, schema_value, sled_error,
};

/// Bytes an event is charged beyond its raw body (its records and index entries).
const EVENT_OVERHEAD_BYTES: u64 = 256;
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
/// Seen pairs the committer remembers, so that ingest need not read `s/` for them; past this
/// many, further pairs are looked up in the store each time (memory stays bounded).
const SEEN_REMEMBERED: usize = 65_536;

pub(super) struct Request {
    pub op: Op,
    pub reply: oneshot::Sender<Result<Reply, Error>>,
}

#[derive(Debug)]
pub(super) enum Op {
    Ingest {
        id: Ulid,
        body: Bytes,
        accepted_ms: u64,
        targets: Vec<IngestTarget>,
    },
    Delivered {
        instance: String,
        id: Ulid,
    },
    Reschedule {
        instance: String,
        id: Ulid,
        retry: Retry,
    },
    DeadLetter {
        instance: String,
        id: Ulid,
        dead: DeadLetter,
        now_ms: u64,
    },
    Claim {
        instance: String,
        ids: Vec<Ulid>,
    },
    ReplayDead {
        letters: Vec<(String, Ulid)>,
        now_ms: u64,
    },
    PurgeDead {
        letters: Vec<(String, Ulid)>,
    },
    /// At most `limit` of the instance's pending events.
    PurgePending {
        instance: String,
        limit: usize,
    },
    /// At most `limit` of the dead letters past their cutoff.
    ExpireDead {
        cutoffs: Cutoffs,
        limit: usize,
    },
    /// At most `limit` of a removed instance's other records: seen pairs, walk markers,
    /// cursors, object maps, change queues, merge targets and credentials.
    ForgetInstance {
        instance: String,
        limit: usize,
    },
    CatchUp {
        instances: Vec<String>,
        now_ms: u64,
    },
    Heartbeat {
        now_ms: u64,
    },
    MarkWalk {
        pairs: Vec<(String, String)>,
    },
    SetCursor {
        instance: String,
        account: String,
        cursor: String,
        only_if_absent: bool,
    },
    CommitWalkPage(Box<WalkPage>),
    /// `authorize`: the instance's credentials, and its account's first cursor unless the
    /// account already has one.
    Authorize {
        instance: String,
        authorization: AuthorizationV1,
        cursor: String,
    },
    /// A pending event the store cannot read (its record, or its notification's body) becomes
    /// a dead letter with reason `corrupt`, keeping the unreadable bytes.
    Quarantine {
        instance: String,
        id: Ulid,
        problem: String,
        now_ms: u64,
    },
    Close {
        mark_clean: bool,
        now_ms: u64,
    },
}

impl Op {
    /// Whether answering this request may wait for a later sync (see [`OUTCOME_SYNC_DELAY`]):
    /// a delivered event's removal, and a claim (it only stops in-flight events from being merge
    /// targets, which a restart undoes anyway: every event in flight is pending again).
    fn may_defer_sync(&self) -> bool {
        matches!(self, Op::Delivered { .. } | Op::Claim { .. })
    }
}

#[derive(Debug)]
pub(super) enum Reply {
    Done,
    Placed(Vec<Placed>),
    Events(Vec<Event>),
    Count(u64),
    /// The due time of a change envelope that became its queue's head, if one did.
    Promoted(Option<u64>),
    /// A claim: the events, and the ids whose stored bytes could not be read, with why.
    Claimed(Claimed),
}

/// A key and its value.
type KeyValue = (Vec<u8>, Vec<u8>);

/// A value read through a [`BatchView`]: the batch's own write, or sled's shared buffer.
enum Value<'v> {
    Written(&'v [u8]),
    Stored(sled::IVec),
}

impl std::ops::Deref for Value<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Value::Written(bytes) => bytes,
            Value::Stored(bytes) => bytes,
        }
    }
}

/// The writes of one batch, readable before they are applied.
struct BatchView<'a> {
    db: &'a sled::Db,
    writes: Writes,
}

impl<'a> BatchView<'a> {
    fn new(db: &'a sled::Db) -> Self {
        BatchView {
            db,
            writes: BTreeMap::new(),
        }
    }

    /// The value of `key` as the batch would leave it, without copying it.
    fn get(&self, key: &[u8]) -> Result<Option<Value<'_>>, Error> {
        match self.writes.get(key) {
            Some(value) => Ok(value.as_deref().map(Value::Written)),
            None => Ok(self.db.get(key).map_err(sled_error)?.map(Value::Stored)),
        }
    }

    fn get_event(&self, key: &[u8]) -> Result<Option<EventV1>, Error> {
        self.get(key)?.map(|v| EventRecord::decode(&v)).transpose()
    }

    fn get_dead(&self, key: &[u8]) -> Result<Option<DeadV1>, Error> {
        self.get(key)?.map(|v| DeadRecord::decode(&v)).transpose()
    }

    fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    /// The length of the value this batch writes to `key` (0 if none).
    fn written_len(&self, key: &[u8]) -> usize {
        self.writes
            .get(key)
            .and_then(Option::as_ref)
            .map_or(0, Vec::len)
    }

    /// The value this batch writes to `key`, to extend in place; starts empty (a key this batch
    /// has not written yet is taken as new).
    fn written_mut(&mut self, key: &[u8]) -> &mut Vec<u8> {
        let value = self.writes.entry(key.to_vec()).or_insert(None);
        value.get_or_insert_with(Vec::new)
    }

    /// The greatest key under `prefix` at or before `key`, with its value, as the batch would
    /// leave it; `None` also when that key is one this batch removes (see [`run`] for why the
    /// keys before it need not be looked at).
    fn last_at_or_before(
        &self,
        prefix: &[u8],
        key: &[u8],
    ) -> Result<Option<(Vec<u8>, Value<'_>)>, Error> {
        let stored = match self.db.range(prefix.to_vec()..=key.to_vec()).next_back() {
            Some(entry) => Some(entry.map_err(sled_error)?),
            None => None,
        };
        let written = self
            .writes
            .range(prefix.to_vec()..=key.to_vec())
            .next_back();
        fn from_writes<'v>(
            (key, value): (&'v Vec<u8>, &'v Option<Vec<u8>>),
        ) -> Option<(Vec<u8>, Value<'v>)> {
            value.as_deref().map(|v| (key.clone(), Value::Written(v)))
        }
        Ok(match (stored, written) {
            // The batch's own write of a key at least as late wins (the same key: it overrides).
            (Some((stored_key, _)), Some(written)) if **written.0 >= *stored_key => {
                from_writes(written)
            }
            (Some((stored_key, value)), _) => Some((stored_key.to_vec(), Value::Stored(value))),
            (None, Some(written)) => from_writes(written),
            (None, None) => None,
        })
    }

    fn remove(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    /// The first key (and its value) under `prefix`, as the batch would leave it.
    fn first_with_prefix(&self, prefix: &[u8]) -> Result<Option<KeyValue>, Error> {
        let mut from_db = None;
        for entry in self.db.scan_prefix(prefix) {
            let (key, value) = entry.map_err(sled_error)?;
            match self.writes.get(key.as_ref()) {
                Some(None) => continue,
                Some(Some(written)) => from_db = Some((key.to_vec(), written.clone())),
                None => from_db = Some((key.to_vec(), value.to_vec())),
            }
            break;
        }
        let from_writes = self
            .writes
            .range(prefix.to_vec()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .find_map(|(key, value)| value.as_ref().map(|v| (key.clone(), v.clone())));
        Ok(match (from_db, from_writes) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        })
    }

    /// Every key (and its value) under `prefix`, as the batch would leave them.
    fn all_with_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, Error> {
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for entry in self.db.scan_prefix(prefix) {
            let (key, value) = entry.map_err(sled_error)?;
            merged.insert(key.to_vec(), value.to_vec());
        }
        let written = self
            .writes
            .range(prefix.to_vec()..)
            .take_while(|(key, _)| key.starts_with(prefix));
        for (key, value) in written {
            match value {
                Some(value) => merged.insert(key.clone(), value.clone()),
                None => merged.remove(key),
            };
        }
        Ok(merged.into_iter().collect())
    }
}

/// Applies batch `seq` to sled as one atomic batch, `m/journal` included (see [`journal`]).
pub(super) fn apply_atomically(db: &sled::Db, seq: u64, writes: Writes) -> sled::Result<()> {
    let mut batch = sled::Batch::default();
    for (key, value) in writes {
        match value {
            Some(value) => batch.insert(key, value),
            None => batch.remove(key),
        }
    }
    batch.insert(keys::meta(journal::SEQ_KEY), &seq.to_be_bytes());
    db.apply_batch(batch)
}

/// Applies batch `seq` to sled write by write, `m/journal` last; only for a batch already
/// durable in the journal (see [`journal`] for why, and for why it is worth it).
fn apply_in_order(db: &sled::Db, seq: u64, writes: Writes) -> sled::Result<()> {
    for (key, value) in writes {
        match value {
            Some(value) => db.insert(key, value)?,
            None => db.remove(key)?,
        };
    }
    db.insert(keys::meta(journal::SEQ_KEY), &seq.to_be_bytes())?;
    Ok(())
}

pub(super) struct Committer {
    db: sled::Db,
    /// sled's log file, synced at checkpoints.
    db_file: File,
    journal: Journal,
    /// The sequence number of the last batch given to sled (see [`journal`]).
    last_seq: u64,
    sync: SyncFn,
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
    /// The greatest event id given so far: ids only grow (runs depend on it, see [`run`]).
    last_id: Ulid,
    /// The run each instance's new events join in the current batch (`z/` key).
    open_runs: HashMap<String, Vec<u8>>,
}

/// What the committer starts from: the store as [`super::Store::open`] left it.
pub(super) struct Opened {
    pub db: sled::Db,
    pub db_file: File,
    /// Restarted: everything before it is in sled, durably.
    pub journal: Journal,
    pub last_seq: u64,
    pub counters: BTreeMap<String, Counters>,
    pub last_id: Ulid,
}

impl Committer {
    pub fn new(opened: Opened, sync: SyncFn, shared: Arc<Shared>) -> Self {
        let Opened {
            db,
            db_file,
            journal,
            last_seq,
            counters,
            last_id,
        } = opened;
        Committer {
            db,
            db_file,
            journal,
            last_seq,
            sync,
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
        }
    }

    /// Runs until every handle is gone or a `Close` request is committed.
    pub fn run(mut self, mut requests: mpsc::Receiver<Request>) {
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
            let closing = batch.iter().any(|r| matches!(r.op, Op::Close { .. }));
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
    fn commit(&mut self, batch: &mut Vec<Request>) {
        if let Some(failure) = self.shared.failure.get() {
            for request in batch.drain(..) {
                let _ = request.reply.send(Err(Error::Failed(failure.clone())));
            }
            return;
        }
        let db = self.db.clone();
        let mut view = BatchView::new(&db);
        self.open_runs.clear();
        let deliveries = batch
            .iter()
            .filter(|r| matches!(r.op, Op::Delivered { .. }))
            .count();
        self.unsynced_deliveries += deliveries;
        let sync = !self.defer_syncs
            || self.unsynced_deliveries > OUTCOME_SYNC_AFTER
            || batch.iter().any(|r| !r.op.may_defer_sync());
        let mut answers = Vec::with_capacity(batch.len());
        for request in batch.drain(..) {
            let result = self.apply(&mut view, request.op);
            answers.push((request.reply, result));
        }
        let counted = self.count_other_records(&view).err();
        self.write_counters(&mut view);
        // A read failing in sled (its background flusher may have hit the error first) fails
        // the store as a failed write would: nothing of this batch is applied or acknowledged.
        let failed = counted
            .map(|err| err.to_string())
            .or_else(|| read_failure(&answers));
        let durable = match failed {
            Some(message) => Err(format!("read: {message}")),
            None => self.apply_batch(view, sync),
        };
        match durable {
            Ok(()) => {
                self.publish_counters();
                for (reply, result) in answers {
                    let _ = reply.send(result);
                }
            }
            Err(message) => {
                self.fail(message.clone());
                for (reply, _) in answers {
                    let _ = reply.send(Err(Error::Failed(message.clone())));
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
        let writes = view.writes;
        if writes.is_empty() {
            return match sync {
                true => self.make_durable(),
                false => Ok(()),
            };
        }
        let seq = self.last_seq + 1;
        let appended = self
            .journal
            .append(seq, &writes)
            .map_err(|e| format!("journal write: {e}"))?;
        self.last_seq = seq;
        let apply_error = |e: sled::Error| format!("apply: {e}");
        match appended {
            Appended::Full => {
                apply_atomically(&self.db, seq, writes).map_err(apply_error)?;
                self.checkpoint()
            }
            Appended::Written => {
                self.unsynced_since.get_or_insert_with(Instant::now);
                if sync {
                    self.make_durable()?;
                    apply_in_order(&self.db, seq, writes).map_err(apply_error)
                } else {
                    apply_atomically(&self.db, seq, writes).map_err(apply_error)
                }
            }
        }
    }

    /// fdatasyncs the journal, if anything was journaled since the last time.
    fn make_durable(&mut self) -> Result<(), String> {
        if self.unsynced_since.is_some() {
            (self.sync)(self.journal.file()).map_err(|e| format!("journal fdatasync: {e}"))?;
        }
        self.synced();
        Ok(())
    }

    /// Makes sled durable up to the last batch (its `flush`, then an fdatasync of its log), and
    /// starts the journal again: nothing in it is needed any more.
    fn checkpoint(&mut self) -> Result<(), String> {
        self.db.flush().map_err(|e| format!("flush: {e}"))?;
        (self.sync)(&self.db_file).map_err(|e| format!("fdatasync: {e}"))?;
        self.journal
            .restart()
            .map_err(|e| format!("journal restart: {e}"))?;
        self.synced();
        Ok(())
    }

    fn synced(&mut self) {
        self.unsynced_since = None;
        self.unsynced_deliveries = 0;
    }

    fn apply(&mut self, view: &mut BatchView<'_>, op: Op) -> Result<Reply, Error> {
        match op {
            Op::Ingest {
                id,
                body,
                accepted_ms,
                targets,
            } => self
                .ingest(view, id, body, accepted_ms, targets)
                .map(Reply::Placed),
            Op::Delivered { instance, id } => {
                self.promoted.clear();
                self.remove_pending(view, &instance, id)?;
                Ok(Reply::Promoted(self.promoted.drain(..).min()))
            }
            Op::Reschedule {
                instance,
                id,
                retry,
            } => self
                .reschedule(view, &instance, id, retry)
                .map(|_| Reply::Done),
            Op::DeadLetter {
                instance,
                id,
                dead,
                now_ms,
            } => {
                self.promoted.clear();
                self.dead_letter(view, &instance, id, dead, now_ms)?;
                Ok(Reply::Promoted(self.promoted.drain(..).min()))
            }
            Op::Claim { instance, ids } => self.claim(view, &instance, ids).map(Reply::Claimed),
            Op::Quarantine {
                instance,
                id,
                problem,
                now_ms,
            } => self
                .quarantine(view, &instance, id, problem, now_ms)
                .map(|done| Reply::Count(u64::from(done))),
            Op::ReplayDead { letters, now_ms } => {
                let mut count = 0;
                for (instance, id) in letters {
                    count += u64::from(self.replay(view, &instance, id, now_ms)?);
                }
                Ok(Reply::Count(count))
            }
            Op::PurgeDead { letters } => {
                let mut count = 0;
                for (instance, id) in letters {
                    count += u64::from(self.purge_dead(view, &instance, id)?);
                }
                Ok(Reply::Count(count))
            }
            Op::PurgePending { instance, limit } => {
                self.purge_pending(view, &instance, limit).map(Reply::Count)
            }
            Op::ExpireDead { cutoffs, limit } => {
                self.expire_dead(view, &cutoffs, limit).map(Reply::Count)
            }
            Op::ForgetInstance { instance, limit } => self
                .forget_instance(view, &instance, limit)
                .map(Reply::Count),
            Op::CatchUp { instances, now_ms } => {
                self.catch_up(view, &instances, now_ms).map(Reply::Events)
            }
            Op::Heartbeat { now_ms } => {
                view.insert(keys::meta("alive"), now_ms.to_be_bytes().to_vec());
                Ok(Reply::Done)
            }
            Op::MarkWalk { pairs } => {
                for (instance, account) in pairs {
                    let token = Ulid::generate().to_bytes().to_vec();
                    view.insert(keys::pair(keys::WALK, &instance, &account), token);
                }
                Ok(Reply::Done)
            }
            Op::SetCursor {
                instance,
                account,
                cursor,
                only_if_absent,
            } => {
                let key = keys::pair(keys::CURSOR, &instance, &account);
                if !only_if_absent || view.get(&key)?.is_none() {
                    view.insert(key, cursor.into_bytes());
                }
                Ok(Reply::Done)
            }
            Op::CommitWalkPage(page) => self.commit_walk_page(view, *page).map(Reply::Events),
            Op::Authorize {
                instance,
                authorization,
                cursor,
            } => {
                let cursor_key = keys::pair(keys::CURSOR, &instance, &authorization.account);
                let taken = view.get(&cursor_key)?.is_none();
                if taken {
                    view.insert(cursor_key, cursor.into_bytes());
                }
                view.insert(
                    keys::authorization(&instance),
                    AuthorizationRecord::encode(&authorization),
                );
                Ok(Reply::Count(u64::from(taken)))
            }
            Op::Close { mark_clean, now_ms } => {
                // The checkpoint after the last batch leaves the journal with nothing to apply:
                // the store says the oldest layout that reads it, so that an older build can
                // open it again (a rollback).
                let layout = match view.first_with_prefix(keys::RUN)? {
                    Some(_) => SCHEMA_RUNS,
                    None => SCHEMA_WITHOUT_RUNS,
                };
                view.insert(keys::meta("schema"), schema_value(layout));
                if mark_clean {
                    view.insert(keys::meta("alive"), now_ms.to_be_bytes().to_vec());
                    view.insert(keys::meta("clean"), now_ms.to_be_bytes().to_vec());
                }
                Ok(Reply::Done)
            }
        }
    }

    // === ingest ===

    fn ingest(
        &mut self,
        view: &mut BatchView<'_>,
        notification: Ulid,
        body: Bytes,
        accepted_ms: u64,
        targets: Vec<IngestTarget>,
    ) -> Result<Vec<Placed>, Error> {
        let mut placed = Vec::with_capacity(targets.len());
        let body_bytes = body.len() as u64;
        // Each target that is not a change-events walk takes one reference to the body. With a
        // single one, the body goes into that event's record: no `n/` record to write now and
        // to read and remove at delivery.
        let references = targets.iter().filter(|t| !t.changes).count();
        let inline_raw = match references {
            1 => std::str::from_utf8(&body).ok().map(str::to_owned),
            _ => None,
        };
        let notification_ref = match inline_raw {
            Some(_) => None,
            None => Some(notification.to_string()),
        };
        for target in targets {
            self.mark_seen(view, &target.instance, &target.account, accepted_ms)?;
            if target.changes {
                // A fresh token: a walk already running clears the marker only if nothing
                // asked for a walk after it started.
                view.insert(
                    keys::pair(keys::WALK, &target.instance, &target.account),
                    notification.to_bytes().to_vec(),
                );
                placed.push(Placed::WalkPending {
                    instance: target.instance,
                    account: target.account,
                });
                continue;
            }
            let over_quota = self.counter(&target.instance).pending_bytes >= target.quota_bytes;
            if (target.coalesce || over_quota)
                && let Some(id) = self.merge(
                    view,
                    &target,
                    (notification_ref.clone(), inline_raw.clone()),
                    accepted_ms,
                    body_bytes,
                )?
            {
                placed.push(Placed::Merged { id });
                continue;
            }
            let event = EventV1 {
                account: target.account.clone(),
                kind: EventKind::Notify,
                notification: notification_ref.clone(),
                date_ms: accepted_ms,
                age_base_ms: accepted_ms,
                attempts: 0,
                due_ms: accepted_ms,
                refused_only: true,
                last_status: None,
                last_error: None,
                bytes: body_bytes + EVENT_OVERHEAD_BYTES,
                changes: None,
                raw: inline_raw.clone(),
            };
            let id = self.next_id();
            if over_quota {
                // Over its quota, the event waits in the store where later notifications merge
                // into it; otherwise it goes to delivery at once and is no merge target.
                self.insert_pending(view, &target.instance, id, &event);
                view.insert(
                    pair_key(&target.instance, &target.account),
                    id.to_bytes().to_vec(),
                );
                placed.push(Placed::Parked { id });
            } else {
                self.insert_created(view, &target.instance, id, &event);
                placed.push(Placed::Created(to_event(
                    id,
                    &target.instance,
                    &event,
                    Some(body.clone()),
                )));
            }
        }
        if notification_ref.is_some() && references > 0 {
            let record = NotificationRecord {
                accepted_ms,
                refs: references as u32,
                body: body.to_vec(),
            };
            view.insert(keys::notification(notification), record.encode());
        }
        Ok(placed)
    }

    fn mark_seen(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        account: &str,
        now_ms: u64,
    ) -> Result<(), Error> {
        let known = self.seen.get(instance);
        if known.is_some_and(|accounts| accounts.contains(account)) {
            return Ok(());
        }
        let key = keys::pair(keys::SEEN, instance, account);
        if view.get(&key)?.is_none() {
            view.insert(key, now_ms.to_be_bytes().to_vec());
        }
        // Only for a pair not known yet, so counting here costs nothing on the common path.
        if self.seen.values().map(HashSet::len).sum::<usize>() < SEEN_REMEMBERED {
            let accounts = self.seen.entry(instance.to_owned()).or_default();
            accounts.insert(account.to_owned());
        }
        Ok(())
    }

    /// Merges a notification (its `n/` id or its inline body) into the pair's waiting event, if
    /// there is one that may take it.
    fn merge(
        &mut self,
        view: &mut BatchView<'_>,
        target: &IngestTarget,
        (notification, raw): (Option<String>, Option<String>),
        accepted_ms: u64,
        body_bytes: u64,
    ) -> Result<Option<Ulid>, Error> {
        let pair_key = keys::pair(keys::PAIR, &target.instance, &target.account);
        let Some(id) = view.get(&pair_key)?.and_then(|v| ulid_from(&v)) else {
            return Ok(None);
        };
        let Some((location, mut event)) = find_pending(view, &target.instance, id)? else {
            view.remove(pair_key);
            return Ok(None);
        };
        if !event.refused_only {
            view.remove(pair_key);
            return Ok(None);
        }
        self.release_notification_of(view, &event)?;
        let new_bytes = body_bytes + EVENT_OVERHEAD_BYTES;
        let counter = self.counter_mut(&target.instance);
        counter.pending_bytes = counter
            .pending_bytes
            .saturating_sub(event.bytes)
            .saturating_add(new_bytes);
        event.notification = notification;
        event.raw = raw;
        event.date_ms = accepted_ms;
        event.bytes = new_bytes;
        put_event(view, &location, id, &event)?;
        Ok(Some(id))
    }

    // === outcomes ===

    fn reschedule(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        id: Ulid,
        retry: Retry,
    ) -> Result<(), Error> {
        let Some((location, mut event)) = find_pending(view, instance, id)? else {
            return Ok(());
        };
        // It waits now: an `e/` record with a due-index entry.
        remove_record(view, instance, id, location, event.due_ms)?;
        let event_key = keys::event(instance, id);
        view.insert(keys::due(instance, retry.due_ms, id), Vec::new());
        let pair_key = keys::pair(keys::PAIR, instance, &event.account);
        event.refused_only &= retry.definite_refusal;
        if event.refused_only && event.kind == EventKind::Notify {
            view.insert(pair_key, id.to_bytes().to_vec());
        } else {
            self.unlink_pair(view, &pair_key, id)?;
        }
        event.attempts = retry.attempts;
        event.due_ms = retry.due_ms;
        event.last_status = retry.last_status;
        event.last_error = retry.last_error;
        view.insert(event_key, EventRecord::encode(&event));
        Ok(())
    }

    fn dead_letter(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        id: Ulid,
        dead: DeadLetter,
        now_ms: u64,
    ) -> Result<(), Error> {
        let Some(mut event) = self.take_pending(view, instance, id)? else {
            return Ok(());
        };
        event.attempts = dead.attempts;
        event.last_status = dead.last_status;
        event.last_error = dead.last_error;
        let counter = self.counter_mut(instance);
        counter.dead_events += 1;
        counter.dead_bytes += event.bytes;
        let record = DeadV1 {
            event,
            dead_at_ms: now_ms,
            reason: dead.reason,
            quarantined: None,
        };
        view.insert(keys::dead(instance, id), DeadRecord::encode(&record));
        view.insert(keys::dead_by_time(now_ms, instance, id), Vec::new());
        Ok(())
    }

    /// The events of `ids` that are still pending, and those whose record or notification body
    /// cannot be read (for [`Committer::quarantine`]): one unreadable record does not fail the
    /// claim. A read error of sled's is still an error (the store fails).
    fn claim(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        ids: Vec<Ulid>,
    ) -> Result<Claimed, Error> {
        let mut events = Vec::with_capacity(ids.len());
        let mut unreadable = Vec::new();
        for id in ids {
            let event = match find_pending(view, instance, id) {
                Ok(Some((_, event))) => event,
                Ok(None) => continue,
                Err(Error::Corrupt(problem)) => {
                    unreadable.push((id, problem));
                    continue;
                }
                Err(err) => return Err(err),
            };
            let raw = match &event.changes {
                Some(changes) => Some(Bytes::from(changes.raw.clone())),
                None => match self.notification_body(view, &event) {
                    Ok(raw) => raw,
                    Err(Error::Corrupt(problem)) => {
                        unreadable.push((id, problem));
                        continue;
                    }
                    Err(err) => return Err(err),
                },
            };
            // In flight from now on: no longer a merge target.
            self.unlink_pair(view, &pair_key(instance, &event.account), id)?;
            events.push(to_event(id, instance, &event, raw));
        }
        Ok(Claimed { events, unreadable })
    }

    /// Moves a pending event that cannot be read to the dead letters, reason
    /// [`QUARANTINED`], with the bytes that could not be read: its record's when the record
    /// itself does not decode (the letter then knows only its id), else its notification's, if
    /// that is still there. False if the event is not pending.
    fn quarantine(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        id: Ulid,
        problem: String,
        now_ms: u64,
    ) -> Result<bool, Error> {
        let (mut event, bytes) = match find_pending(view, instance, id) {
            Ok(None) => return Ok(false),
            Ok(Some(_)) => {
                // The record reads: its notification's body is what is missing or unreadable.
                let Some(mut event) = self.take_pending(view, instance, id)? else {
                    return Ok(false);
                };
                let notification = event.notification.take();
                let key = notification
                    .and_then(|n| n.parse::<Ulid>().ok())
                    .map(keys::notification);
                let mut bytes = None;
                if let Some(key) = key
                    && let Some(value) = view.get(&key)?
                    && NotificationRecord::decode(&value).is_err()
                {
                    // Not read by anyone again: a purge would trip over it.
                    bytes = Some(value.to_vec());
                    view.remove(key);
                }
                (event, bytes)
            }
            Err(Error::Corrupt(_)) => {
                let Some(bytes) = self.take_unreadable(view, instance, id)? else {
                    return Ok(false);
                };
                let event = EventV1 {
                    account: String::new(),
                    kind: EventKind::Notify,
                    notification: None,
                    date_ms: id.timestamp_ms(),
                    age_base_ms: id.timestamp_ms(),
                    attempts: 0,
                    due_ms: now_ms,
                    refused_only: false,
                    last_status: None,
                    last_error: None,
                    bytes: bytes.len() as u64 + EVENT_OVERHEAD_BYTES,
                    changes: None,
                    raw: None,
                };
                (event, Some(bytes))
            }
            Err(err) => return Err(err),
        };
        event.last_error = Some(problem);
        let counter = self.counter_mut(instance);
        counter.dead_events += 1;
        counter.dead_bytes += event.bytes;
        let record = DeadV1 {
            event,
            dead_at_ms: now_ms,
            reason: QUARANTINED.to_owned(),
            quarantined: bytes
                .map(|b| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b)),
        };
        view.insert(keys::dead(instance, id), DeadRecord::encode(&record));
        view.insert(keys::dead_by_time(now_ms, instance, id), Vec::new());
        Ok(true)
    }

    /// Removes the stored bytes of a pending event whose record does not decode (a run member,
    /// an `r/` or an `e/` record, with its due-index entry), and its share of the counters (as
    /// far as known: the record's size); returns the bytes.
    fn take_unreadable(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        id: Ulid,
    ) -> Result<Option<Vec<u8>>, Error> {
        let mut taken = None;
        let prefix = keys::instance_prefix(keys::RUN, instance);
        if let Some((key, run)) = view.last_at_or_before(&prefix, &keys::run(instance, id))?
            && let Ok(Some(record)) = run::find(&run, id)
        {
            let bytes = record.to_vec();
            rewrite_run(view, key, id, None)?;
            taken = Some(bytes);
        }
        if taken.is_none() {
            for key in [keys::ready(instance, id), keys::event(instance, id)] {
                let Some(value) = view.get(&key)?.map(|v| v.to_vec()) else {
                    continue;
                };
                if key.starts_with(keys::EVENT) {
                    // Its due time is in the record: look for the id in the instance's index.
                    let due = keys::instance_prefix(keys::DUE, instance);
                    let entry = self.db.scan_prefix(&due).keys().find_map(|k| match k {
                        Ok(k) if keys::parse_due(due.len(), &k).map(|(_, i)| i) == Some(id) => {
                            Some(Ok(k))
                        }
                        Ok(_) => None,
                        Err(err) => Some(Err(sled_error(err))),
                    });
                    if let Some(entry) = entry {
                        view.remove(entry?.to_vec());
                    }
                }
                view.remove(key);
                taken = Some(value);
                break;
            }
        }
        if let Some(bytes) = &taken {
            let counter = self.counter_mut(instance);
            counter.pending_events = counter.pending_events.saturating_sub(1);
            counter.pending_bytes = counter
                .pending_bytes
                .saturating_sub(bytes.len() as u64 + EVENT_OVERHEAD_BYTES);
        }
        Ok(taken)
    }

    // === dead letters and held events ===

    fn replay(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        id: Ulid,
        now_ms: u64,
    ) -> Result<bool, Error> {
        let Some(dead) = self.take_dead(view, instance, id)? else {
            return Ok(false);
        };
        if dead.reason == QUARANTINED {
            // Nothing deliverable: the letter stays, for inspection, until purged or expired.
            let counter = self.counter_mut(instance);
            counter.dead_events += 1;
            counter.dead_bytes += dead.event.bytes;
            view.insert(keys::dead(instance, id), DeadRecord::encode(&dead));
            view.insert(
                keys::dead_by_time(dead.dead_at_ms, instance, id),
                Vec::new(),
            );
            return Ok(false);
        }
        let mut event = dead.event;
        if let Some(changes) = event.changes.as_mut() {
            // A replayed change envelope is delivered on its own, outside its pair's queue.
            changes.seq = None;
        }
        event.attempts = 0;
        event.age_base_ms = now_ms;
        event.due_ms = now_ms;
        self.insert_pending(view, instance, id, &event);
        Ok(true)
    }

    fn purge_dead(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        id: Ulid,
    ) -> Result<bool, Error> {
        let Some(dead) = self.take_dead(view, instance, id)? else {
            return Ok(false);
        };
        self.release_notification_of(view, &dead.event)?;
        Ok(true)
    }

    /// Removes up to `limit` of `instance`'s pending events, so that one request holds the
    /// writer for a bounded time; the caller asks again until fewer come back.
    fn purge_pending(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        limit: usize,
    ) -> Result<u64, Error> {
        let mut ids: Vec<Ulid> = self
            .instance_keys([keys::READY, keys::EVENT], instance, limit)?
            .iter()
            .filter_map(|key| keys::trailing_id(key))
            .collect();
        for id in super::run_member_ids(&self.db, instance) {
            if ids.len() >= limit {
                break;
            }
            ids.push(id?);
        }
        let mut count = 0;
        for id in ids {
            count += u64::from(self.remove_pending(view, instance, id)?);
        }
        Ok(count)
    }

    /// Removes up to `limit` of the dead letters that died before their instance's cutoff,
    /// oldest first; the caller asks again until fewer come back.
    fn expire_dead(
        &mut self,
        view: &mut BatchView<'_>,
        cutoffs: &Cutoffs,
        limit: usize,
    ) -> Result<u64, Error> {
        let latest = cutoffs.latest();
        let end = [keys::DEAD_BY_TIME, &latest.to_be_bytes()[..]].concat();
        let mut expired = Vec::new();
        for key in self.db.range(keys::DEAD_BY_TIME.to_vec()..end).keys() {
            if expired.len() >= limit {
                break;
            }
            let key = key.map_err(sled_error)?;
            if let Some((dead_at, instance, id)) = keys::parse_dead_by_time(&key)
                && dead_at < cutoffs.for_instance(&instance)
            {
                expired.push((instance, id));
            }
        }
        let mut count = 0;
        for (instance, id) in expired {
            count += u64::from(self.purge_dead(view, &instance, id)?);
        }
        Ok(count)
    }

    /// Up to `limit` of `instance`'s keys in `families`, in that order, as sled holds them.
    fn instance_keys<'f>(
        &self,
        families: impl IntoIterator<Item = &'f [u8]>,
        instance: &str,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, Error> {
        let mut found = Vec::new();
        for family in families {
            for key in self
                .db
                .scan_prefix(keys::instance_prefix(family, instance))
                .keys()
            {
                if found.len() >= limit {
                    return Ok(found);
                }
                found.push(key.map_err(sled_error)?.to_vec());
            }
        }
        Ok(found)
    }

    /// Removes up to `limit` of `instance`'s records that are neither events nor dead letters
    /// (called once those are gone: a removed instance's purge), so that nothing of it is
    /// left to take space.
    fn forget_instance(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        limit: usize,
    ) -> Result<u64, Error> {
        let families = OTHER_FAMILIES.into_iter().chain([keys::PAIR]);
        let mut doomed = self.instance_keys(families, instance, limit)?;
        let credentials = keys::authorization(instance);
        if doomed.len() < limit && self.db.contains_key(&credentials).map_err(sled_error)? {
            doomed.push(credentials);
        }
        let count = doomed.len() as u64;
        for key in doomed {
            view.remove(key);
        }
        // Its seen accounts are gone from the store: an account ingested again is new again.
        self.seen.remove(instance);
        Ok(count)
    }

    fn catch_up(
        &mut self,
        view: &mut BatchView<'_>,
        instances: &[String],
        now_ms: u64,
    ) -> Result<Vec<Event>, Error> {
        let mut events = Vec::new();
        for instance in instances {
            let prefix = keys::instance_prefix(keys::SEEN, instance);
            let accounts: Vec<String> = self
                .db
                .scan_prefix(&prefix)
                .keys()
                .filter_map(|k| k.ok())
                .map(|k| String::from_utf8_lossy(&k[prefix.len()..]).into_owned())
                .collect();
            for account in accounts {
                let event = EventV1 {
                    account,
                    kind: EventKind::Unknown,
                    notification: None,
                    date_ms: now_ms,
                    age_base_ms: now_ms,
                    attempts: 0,
                    due_ms: now_ms,
                    refused_only: true,
                    last_status: None,
                    last_error: None,
                    bytes: EVENT_OVERHEAD_BYTES,
                    changes: None,
                    raw: None,
                };
                let id = self.next_id();
                self.insert_pending(view, instance, id, &event);
                events.push(to_event(id, instance, &event, None));
            }
        }
        Ok(events)
    }

    // === change events ===

    fn commit_walk_page(
        &mut self,
        view: &mut BatchView<'_>,
        page: WalkPage,
    ) -> Result<Vec<Event>, Error> {
        let (instance, account) = (page.instance.as_str(), page.account.as_str());
        if let Some(cursor) = page.cursor {
            view.insert(
                keys::pair(keys::CURSOR, instance, account),
                cursor.into_bytes(),
            );
        }
        for write in page.map {
            match write {
                MapWrite::Put(object) => {
                    let value = object.encode();
                    view.insert(
                        keys::object_id(instance, account, &object.id),
                        value.clone(),
                    );
                    view.insert(
                        keys::object_path(instance, account, &object.path_lower),
                        value,
                    );
                }
                MapWrite::RemovePath(path) => {
                    view.remove(keys::object_path(instance, account, &path));
                }
                MapWrite::RemoveId(id) => view.remove(keys::object_id(instance, account, &id)),
                MapWrite::RemoveTree(folder) => {
                    remove_tree(view, instance, account, &folder)?;
                }
            }
        }
        let mut heads = Vec::new();
        for envelope in page.envelopes {
            if let Some(head) = self.enqueue(view, instance, account, envelope, page.date_ms)? {
                heads.push(head);
            }
        }
        if let Some(token) = page.clear_marker {
            let key = keys::pair(keys::WALK, instance, account);
            if view.get(&key)?.as_deref() == Some(token.as_slice()) {
                view.remove(key);
            }
        }
        Ok(heads)
    }

    /// Appends an envelope to its pair's queue. Only the head is in the due index; if this one
    /// is the head, it is returned for hand-off.
    fn enqueue(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        account: &str,
        envelope: super::NewEnvelope,
        date_ms: u64,
    ) -> Result<Option<Event>, Error> {
        let seq_key = keys::pair(keys::QUEUE, instance, account);
        let seq = match view.get(&seq_key)? {
            Some(bytes) => u64_from(&bytes).unwrap_or(0),
            None => 0,
        };
        view.insert(seq_key, (seq + 1).to_be_bytes().to_vec());
        let is_head = view
            .first_with_prefix(&keys::queue_prefix(instance, account))?
            .is_none();
        let now = super::now_ms();
        let bytes = (envelope.events.len() + envelope.raw.len()) as u64 + EVENT_OVERHEAD_BYTES;
        let event = EventV1 {
            account: account.to_owned(),
            kind: EventKind::Changes,
            notification: None,
            date_ms,
            age_base_ms: now,
            attempts: 0,
            due_ms: if is_head { now } else { u64::MAX },
            refused_only: true,
            last_status: None,
            last_error: None,
            bytes,
            changes: Some(ChangesV1 {
                events: envelope.events,
                raw: envelope.raw,
                seq: Some(seq),
            }),
            raw: None,
        };
        let id = self.next_id();
        // The head is due now; the others wait behind it, outside the due index.
        let key = match is_head {
            true => keys::ready(instance, id),
            false => keys::event(instance, id),
        };
        view.insert(key, EventRecord::encode(&event));
        view.insert(keys::queue(instance, account, seq), id.to_bytes().to_vec());
        let counter = self.counter_mut(instance);
        counter.pending_events += 1;
        counter.pending_bytes += event.bytes;
        Ok(is_head.then(|| changes_event(id, instance, &event)))
    }

    /// Removes a change envelope from its pair's queue; if it was the head, the next one
    /// becomes due now (recorded in `self.promoted`).
    fn leave_queue(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        account: &str,
        seq: u64,
    ) -> Result<(), Error> {
        let prefix = keys::queue_prefix(instance, account);
        let key = keys::queue(instance, account, seq);
        let was_head = view
            .first_with_prefix(&prefix)?
            .is_some_and(|(first, _)| first == key);
        if view.get(&key)?.is_none() {
            return Ok(());
        }
        view.remove(key);
        if !was_head {
            return Ok(());
        }
        let Some((_, value)) = view.first_with_prefix(&prefix)? else {
            return Ok(());
        };
        let Some(next) = ulid_from(&value) else {
            return Ok(());
        };
        let Some((location, mut event)) = find_pending(view, instance, next)? else {
            return Ok(());
        };
        let now = super::now_ms();
        remove_record(view, instance, next, location, event.due_ms)?;
        event.due_ms = now;
        view.insert(keys::ready(instance, next), EventRecord::encode(&event));
        self.promoted.push(now);
        Ok(())
    }

    // === record plumbing ===

    /// A new event id, greater than every id given before (see [`run`]).
    fn next_id(&mut self) -> Ulid {
        let fresh = Ulid::generate();
        self.last_id = match fresh > self.last_id {
            true => fresh,
            // The clock went back, or the same millisecond drew a smaller random part.
            false => Ulid(self.last_id.0.saturating_add(1)),
        };
        self.last_id
    }

    /// Adds an event that is due now (an `r/` record).
    fn insert_pending(&mut self, view: &mut BatchView<'_>, instance: &str, id: Ulid, e: &EventV1) {
        view.insert(keys::ready(instance, id), EventRecord::encode(e));
        self.count_pending(instance, e);
    }

    /// Adds an event that ingest just created (`id` from [`Committer::next_id`]) and hands to
    /// delivery: a member of the instance's run in this batch, or of a new run once that one is
    /// full; an event too large for a run gets an `r/` record of its own.
    fn insert_created(&mut self, view: &mut BatchView<'_>, instance: &str, id: Ulid, e: &EventV1) {
        let record = EventRecord::encode(e);
        if record.len() > run::MAX_MEMBER_BYTES {
            view.insert(keys::ready(instance, id), record);
        } else {
            let open = self
                .open_runs
                .get(instance)
                .filter(|key| view.written_len(key) < run::MAX_RUN_BYTES);
            let key = match open {
                Some(key) => key.clone(),
                None => {
                    let key = keys::run(instance, id);
                    self.open_runs.insert(instance.to_owned(), key.clone());
                    key
                }
            };
            run::append(view.written_mut(&key), id, &record);
        }
        self.count_pending(instance, e);
    }

    fn count_pending(&mut self, instance: &str, e: &EventV1) {
        let counter = self.counter_mut(instance);
        counter.pending_events += 1;
        counter.pending_bytes += e.bytes;
    }

    /// Removes a pending event and its index entries; returns its record.
    fn take_pending(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        id: Ulid,
    ) -> Result<Option<EventV1>, Error> {
        let Some((location, event)) = find_pending(view, instance, id)? else {
            return Ok(None);
        };
        remove_record(view, instance, id, location, event.due_ms)?;
        let pair_key = keys::pair(keys::PAIR, instance, &event.account);
        self.unlink_pair(view, &pair_key, id)?;
        if let Some(seq) = event.changes.as_ref().and_then(|c| c.seq) {
            self.leave_queue(view, instance, &event.account, seq)?;
        }
        let counter = self.counter_mut(instance);
        counter.pending_events = counter.pending_events.saturating_sub(1);
        counter.pending_bytes = counter.pending_bytes.saturating_sub(event.bytes);
        Ok(Some(event))
    }

    /// Removes a pending event for good (delivered or purged), releasing its notification.
    fn remove_pending(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        id: Ulid,
    ) -> Result<bool, Error> {
        let Some(event) = self.take_pending(view, instance, id)? else {
            return Ok(false);
        };
        self.release_notification_of(view, &event)?;
        Ok(true)
    }

    fn take_dead(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        id: Ulid,
    ) -> Result<Option<DeadV1>, Error> {
        let dead_key = keys::dead(instance, id);
        let Some(dead) = view.get_dead(&dead_key)? else {
            return Ok(None);
        };
        view.remove(dead_key);
        view.remove(keys::dead_by_time(dead.dead_at_ms, instance, id));
        let counter = self.counter_mut(instance);
        counter.dead_events = counter.dead_events.saturating_sub(1);
        counter.dead_bytes = counter.dead_bytes.saturating_sub(dead.event.bytes);
        Ok(Some(dead))
    }

    /// Removes the pair entry if it still points at `id`.
    fn unlink_pair(
        &mut self,
        view: &mut BatchView<'_>,
        pair_key: &[u8],
        id: Ulid,
    ) -> Result<(), Error> {
        if view.get(pair_key)?.and_then(|v| ulid_from(&v)) == Some(id) {
            view.remove(pair_key.to_vec());
        }
        Ok(())
    }

    /// Drops the event's reference to its notification, if it has one.
    fn release_notification_of(
        &mut self,
        view: &mut BatchView<'_>,
        event: &EventV1,
    ) -> Result<(), Error> {
        match event.notification.as_deref().and_then(|s| s.parse().ok()) {
            Some(id) => self.release_notification(view, id),
            None => Ok(()),
        }
    }

    /// Drops one reference to a notification, deleting it with the last one.
    fn release_notification(&mut self, view: &mut BatchView<'_>, id: Ulid) -> Result<(), Error> {
        let key = keys::notification(id);
        let Some(mut record) = view
            .get(&key)?
            .map(|bytes| NotificationRecord::decode(&bytes))
            .transpose()?
        else {
            return Ok(());
        };
        record.refs = record.refs.saturating_sub(1);
        if record.refs == 0 {
            view.remove(key);
        } else {
            view.insert(key, record.encode());
        }
        Ok(())
    }

    fn notification_body(
        &self,
        view: &BatchView<'_>,
        event: &EventV1,
    ) -> Result<Option<Bytes>, Error> {
        if let Some(raw) = &event.raw {
            return Ok(Some(Bytes::from(raw.clone())));
        }
        let Some(id) = event
            .notification
            .as_deref()
            .and_then(|s| s.parse::<Ulid>().ok())
        else {
            return Ok(None);
        };
        match view.get(&keys::notification(id))? {
            Some(bytes) => Ok(Some(Bytes::from(NotificationRecord::decode(&bytes)?.body))),
            None => Err(Error::Corrupt(format!("notification {id} is missing"))),
        }
    }

    // === counters ===

    fn counter(&self, instance: &str) -> Counters {
        self.counters.get(instance).copied().unwrap_or_default()
    }

    fn counter_mut(&mut self, instance: &str) -> &mut Counters {
        if !self.touched.iter().any(|t| t == instance) {
            self.touched.push(instance.to_owned());
        }
        self.counters.entry(instance.to_owned()).or_default()
    }

    /// Adds what the batch changes in the instances' other records (see [`OTHER_FAMILIES`]) to
    /// their counters: each key of those families it writes or removes, against that key's
    /// size in sled before the batch.
    fn count_other_records(&mut self, view: &BatchView<'_>) -> Result<(), Error> {
        for (key, value) in &view.writes {
            let Some(family) = OTHER_FAMILIES.iter().find(|f| key.starts_with(f)) else {
                continue;
            };
            let Some(instance) = keys::instance_of(family, key) else {
                continue;
            };
            let size = |value: Option<usize>| value.map_or(0, |v| (key.len() + v) as u64);
            let before = size(self.db.get(key).map_err(sled_error)?.map(|v| v.len()));
            let after = size(value.as_ref().map(Vec::len));
            let counter = self.counter_mut(&instance);
            counter.other_bytes = counter
                .other_bytes
                .saturating_add(after)
                .saturating_sub(before);
        }
        Ok(())
    }

    fn write_counters(&mut self, view: &mut BatchView<'_>) {
        for instance in &self.touched {
            let counter = self.counter(instance);
            view.insert(keys::counters(instance), counter.encode());
        }
    }

    fn publish_counters(&mut self) {
        if self.touched.is_empty() {
            return;
        }
        self.touched.clear();
        let total = self.counters.values().map(Counters::total_bytes).sum();
        self.shared.total_bytes.store(total, Ordering::Relaxed);
        self.shared.counters.store(Arc::new(self.counters.clone()));
    }
}

/// Where a pending event's record is.
enum Location {
    /// A record of its own (the key): `r/` when it is due now, `e/` when it waits.
    Record(Vec<u8>),
    /// A member of the run at this key (`z/`).
    Run(Vec<u8>),
}

/// A pending event and where it is: in a run, or in an `r/` or `e/` record of its own.
fn find_pending(
    view: &BatchView<'_>,
    instance: &str,
    id: Ulid,
) -> Result<Option<(Location, EventV1)>, Error> {
    let prefix = keys::instance_prefix(keys::RUN, instance);
    if let Some((key, value)) = view.last_at_or_before(&prefix, &keys::run(instance, id))?
        && let Some(record) = run::find(&value, id)?
    {
        return Ok(Some((Location::Run(key), EventRecord::decode(record)?)));
    }
    for key in [keys::ready(instance, id), keys::event(instance, id)] {
        if let Some(event) = view.get_event(&key)? {
            return Ok(Some((Location::Record(key), event)));
        }
    }
    Ok(None)
}

/// Removes a pending event's record (from [`find_pending`]) and, for a waiting one, its
/// due-index entry.
fn remove_record(
    view: &mut BatchView<'_>,
    instance: &str,
    id: Ulid,
    location: Location,
    due_ms: u64,
) -> Result<(), Error> {
    match location {
        Location::Record(key) => {
            if key.starts_with(keys::EVENT) {
                view.remove(keys::due(instance, due_ms, id));
            }
            view.remove(key);
            Ok(())
        }
        Location::Run(key) => rewrite_run(view, key, id, None),
    }
}

/// Writes a changed pending event back where it is.
fn put_event(
    view: &mut BatchView<'_>,
    location: &Location,
    id: Ulid,
    event: &EventV1,
) -> Result<(), Error> {
    let record = EventRecord::encode(event);
    match location {
        Location::Record(key) => {
            view.insert(key.clone(), record);
            Ok(())
        }
        Location::Run(key) => rewrite_run(view, key.clone(), id, Some(&record)),
    }
}

/// Replaces (`Some`) or removes (`None`) a run's member; a run left empty is removed.
fn rewrite_run(
    view: &mut BatchView<'_>,
    key: Vec<u8>,
    id: Ulid,
    record: Option<&[u8]>,
) -> Result<(), Error> {
    let rewritten = match view.get(&key)? {
        Some(run) => run::replace(&run, id, record)?,
        None => return Ok(()),
    };
    match rewritten {
        Some(run) => view.insert(key, run),
        None => view.remove(key),
    }
    Ok(())
}

fn u64_from(bytes: &[u8]) -> Option<u64> {
    let array: [u8; 8] = bytes.try_into().ok()?;
    Some(u64::from_be_bytes(array))
}

fn changes_event(id: Ulid, instance: &str, event: &EventV1) -> Event {
    let raw = event.changes.as_ref().map(|c| Bytes::from(c.raw.clone()));
    to_event(id, instance, event, raw)
}

fn ulid_from(bytes: &[u8]) -> Option<Ulid> {
    let array: [u8; 16] = bytes.try_into().ok()?;
    Some(Ulid::from_bytes(array))
}

pub(super) fn to_event(id: Ulid, instance: &str, event: &EventV1, raw: Option<Bytes>) -> Event {
    Event {
        id,
        instance: instance.to_owned(),
        account: event.account.clone(),
        kind: event.kind,
        raw,
        objects: event
            .changes
            .as_ref()
            .map(|c| Bytes::from(c.events.clone())),
        date_ms: event.date_ms,
        age_base_ms: event.age_base_ms,
        attempts: event.attempts,
        due_ms: event.due_ms,
        refused_only: event.refused_only,
    }
}

fn pair_key(instance: &str, account: &str) -> Vec<u8> {
    keys::pair(keys::PAIR, instance, account)
}

/// The families of an instance's records that are neither events nor dead letters, counted as
/// its `other_bytes` against `storage.max_bytes`: seen accounts, walk markers, cursors, object
/// maps, change queues.
pub(super) const OTHER_FAMILIES: [&[u8]; 5] = [
    keys::SEEN,
    keys::WALK,
    keys::CURSOR,
    keys::OBJECT,
    keys::QUEUE,
];

/// The first sled error among a batch's results (an I/O failure, not a logical refusal).
fn read_failure<T>(answers: &[(T, Result<Reply, Error>)]) -> Option<String> {
    answers.iter().find_map(|(_, result)| match result {
        Err(Error::Failed(message)) => Some(message.clone()),
        _ => None,
    })
}

/// Forgets every object under `folder` (not the folder itself): both maps of each child, the
/// id only while it still points at that child.
fn remove_tree(
    view: &mut BatchView<'_>,
    instance: &str,
    account: &str,
    folder: &str,
) -> Result<(), Error> {
    let children =
        view.all_with_prefix(&keys::object_path(instance, account, &format!("{folder}/")))?;
    for (path_key, value) in children {
        let child = ObjectV1::decode(&value)?;
        let id_key = keys::object_id(instance, account, &child.id);
        let same = view
            .get(&id_key)?
            .map(|v| ObjectV1::decode(&v))
            .transpose()?
            .is_some_and(|known| known.path_lower == child.path_lower);
        if same {
            view.remove(id_key);
        }
        view.remove(path_key);
    }
    Ok(())
}
