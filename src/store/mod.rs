//! The durable queue: the only module that touches sled.
//!
//! # Design constraints
//! - **A write is acknowledged only when it is on stable storage**, power cuts included. Every
//!   batch is first a record of the store's [`journal`] (`<path>/journal`), and the committer
//!   answers only after an `fdatasync` of it; sled gets the batch after that, and is made
//!   durable (its `flush`, then an `fdatasync` of its log `<path>/db`) at checkpoints, after
//!   which the journal starts again. Opening the store applies the journal's records sled lacks.
//!   sled is built from `vendor/sled` (its `PATCHES.md`): there its log writes end in an
//!   `fdatasync` instead of `sync_file_range`, and its blob files and snapshot names are synced
//!   before anything relies on them, so that what a checkpoint made durable stays durable until
//!   the next one; [`durable`] syncs the names sled creates without syncing.
//!   One exception: a batch of nothing but removals of *delivered* events and claims is answered
//!   once applied, and made durable by the next batch that must be (usually an ingest), or after
//!   `commit::OUTCOME_SYNC_DELAY` (100 ms) or `commit::OUTCOME_SYNC_AFTER` (64) removals without
//!   one. A crash can only undo such batches, which
//!   repeats those deliveries (at least once allows it); it saves a device wait per delivery.
//! - **Group commit.** All writes go through one committer thread. It takes every request that
//!   is waiting (up to [`MAX_BATCH`]), journals them as one record, syncs once, applies them to
//!   sled and answers them all. Concurrent ingests share one sync.
//! - **One writer.** Because only the committer writes, it can read-modify-write records
//!   (reference counts, counters, merges) without locks; within a batch it reads through an
//!   overlay of the batch's own writes.
//! - **Fail-stop.** The first write or sync error is sticky: every later request fails, and
//!   [`Store::failure`] says why. A failed sync is never retried and then acknowledged.
//! - **Large values are fine.** A tree node over a quarter of sled's 512 KiB segment (a leaf
//!   of a few large records) becomes a blob file of its own, which the patched sled syncs; a
//!   run still takes members only up to 16 KiB ([`run::MAX_RUN_BYTES`]), and a larger event
//!   gets a record of its own, so that one large body is not rewritten with its run.
//! - **Few keys per event.** sled 0.34 pays per key: it rewrites whole tree nodes as they fill
//!   and split, keeps metadata in memory for every page, and allocates for every key it adds in
//!   `apply_batch`. So the events one batch creates for an instance share one key, a run
//!   ([`run`]: binary records carrying their own bodies), and only an event that waits (a retry)
//!   has keys of its own, its record and a due-index key.
//!
//! # Layout (one tree; see [`keys`])
//! | key | value |
//! |---|---|
//! | `m/schema`, `m/clean`, `m/alive` | schema version ([`SCHEMA`]); present after a clean stop; heartbeat ms |
//! | `n/<notification>` | [`record::NotificationRecord`]: raw body, acceptance time, reference count; only for a body several events share |
//! | `z/<instance>\0<first event>` | a run ([`run`]): the events due now that one batch created for the instance, each an [`record::EventRecord`] (binary) with its body when no other event shares it; ULID order is arrival order |
//! | `r/<instance>\0<event>` | [`record::EventRecord`]: a pending event due now outside a run: parked over quota, catch-up, replayed, a change envelope at its queue's head, or too large for a run |
//! | `e/<instance>\0<event>` | [`record::EventRecord`]: a pending event that waits — for its retry time, or behind its change queue's head |
//! | `d/<instance>\0<due ms><event>` | due-time index of the waiting `e/` events with a due time |
//! | `p/<instance>\0<account>` | the event a new notification of that pair may merge into |
//! | `x/<instance>\0<event>` | [`record::DeadRecord`]: a dead letter |
//! | `t/<dead at ms><instance>\0<event>` | dead letters by age, for `dead_letter_ttl` |
//! | `c/<instance>` | [`record::Counters`]: pending and dead events and bytes, the history's |
//! | `y/<instance>\0<event>` | [`history`]: the last 20 attempts of a waiting event or dead letter |
//! | `h/<instance>\0<event>` | a page of [`history::HistoryV1`] records, delivered events kept for `events` (attempts, envelope as sent), keyed at or below its first |
//! | `g/<instance>\0<account>\0<second>` | the history has events of the account accepted in that second (empty) |
//! | `s/<instance>\0<account>` | first time a pair was seen, for catch-up |
//! | `w/<instance>\0<account>` | change events: a walk is owed; value a token replaced by each new request |
//! | `k/<instance>\0<account>` | change events: the pair's `list_folder` cursor |
//! | `o/<instance>\0<account>\0i<id>`, `…\0p<path_lower>` | change events: [`record::ObjectV1`] by id and by path |
//! | `q/<instance>\0<account>\0<seq u64>` | change events: the pair's FIFO of envelopes (value: event id); `q/<instance>\0<account>` holds the next seq |
//! | `a/<instance>` | change events: [`record::AuthorizationV1`], the credentials `authorize` obtained |
//! | `u/<instance>` | [`outage::OutageV1`]: the outage the instance is in, if any, and its past outages (written only when one begins or ends) |
//! | `l/…`, `v/<instance>\0` | operator alerts: the alert queue, and dead letters not alerted yet ([`alerts`]) |
//!
//! An event moves only in the committer, and never into a run: a retry moves it from its run or
//! `r/` record to `e/` with a `d/` entry; a promotion to its queue's head moves it to `r/`. What is
//! due at a time `t` is every run member and `r/` event plus the `d/` entries up to `t`
//! ([`Store::due_ids`]).
//!
//! Change envelopes are events of kind [`EventKind::Changes`] whose record carries the events
//! and raw entries ([`record::ChangesV1`]); only the head of each pair's `q/` queue is due (in
//! `r/`, or `e/` + `d/` while it waits for a retry), the others wait in `e/` without a `d/`
//! entry, and delivering or dead-lettering the head promotes the next one in the same batch.
//! Events of an instance that is no longer configured stay under its name ("held").
//!
//! # Recovery
//! Nothing is leased on disk: an event being delivered keeps its place (or its due entry)
//! until its outcome is committed, so after a crash every event whose due time has passed is due
//! at once. A schema 1 store has no `r/` records: its events are all `e/` + `d/`, which reads
//! the same way. The delivery lanes keep the ids they hold in memory and skip them when they
//! scan for due events.
//!
//! # Files
//! | file | its job |
//! |---|---|
//! | `mod.rs` | the [`Store`] handle: its write requests and the re-exports |
//! | `types.rs` | the public types requests take and answer |
//! | `reads.rs` | the reads, from any thread |
//! | `open.rs` | opening and recovery: the journal applied, the previous run read, a checkpoint; the offline openers |
//! | `schema.rs` | the layout version (`m/schema`) |
//! | `commit/` | the committer: its loop and sync policy (`mod.rs`), the batch view, and the operations by concern |
//! | `disk.rs` | sled and the journal together: a batch given to sled, the checkpoint |
//! | `journal.rs` | the journal's file format and recovery rule |
//! | `durable.rs` | the replaceable sync, and the folder entries and modes made durable at open |
//! | `keys.rs`, `record.rs`, `run.rs` | the key layout, the records, the runs |
//! | `history.rs` | the records of attempts and of delivered events |
//! | `events.rs` | reads of events in any state: one by id, pages by time, account and state |
//! | `outage.rs` | an instance's outage state: its record, read and write |
//! | `alerts.rs` | the alert queue's and dead-letter tallies' keys, records and reads |
//! | `inspect.rs` | read-only views for `status` and `dead list` |
//! | `retry.rs` | `retry`: waiting events made due now, found a page at a time in the due index |
//! | `error.rs` | the store's error |
//! | `testing.rs`, `tests.rs` | support for the tests, and the unit tests |

pub mod alerts;
mod commit;
mod disk;
mod durable;
mod error;
mod events;
pub mod history;
pub mod inspect;
mod journal;
mod keys;
mod open;
pub mod outage;
mod reads;
pub mod record;
mod retry;
mod run;
mod schema;
mod types;

/// Support for the tests (the unit tests here and the model test in `tests/props`).
#[doc(hidden)]
pub mod testing;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use tokio::sync::mpsc;
use ulid::Ulid;

use crate::time::now_ms;

use commit::{Committer, Operation, Request, Shared};

pub use alerts::{DeadTallies, NewAlert, NextAlert, QueuedAlert};
pub use commit::MAX_BATCH;
pub use durable::{SyncFn, fdatasync};
pub use error::Error;
pub use events::{EventQuery, EventState, HistoryAudit, Page, StoredEvent, audit_history};
pub use history::Attempt;
pub use journal::{JOURNAL_BYTES as DEFAULT_JOURNAL_BYTES, JOURNAL_FILE};
pub use open::{create_offline, open_offline};
pub use outage::OutageV1;
pub use record::{AuthorizationV1, Counters, EventKind};
pub use retry::{Retried, RetryTarget};
pub use types::{
    Claimed, Cutoffs, DeadLetter, DeliveredOutcome, Event, IngestTarget, MapWrite, NewEnvelope,
    OpenMode, Placed, PreviousRun, Retry, StoreOptions, WalkPage,
};

/// Records one maintenance request (a purge, an expiry, a page of a replay) changes at most:
/// a few milliseconds of the committer.
pub const MAINTENANCE_PAGE: usize = 256;

/// A handle on the open store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    requests: mpsc::Sender<Box<dyn Request>>,
    shared: Arc<Shared>,
    committer: Arc<Mutex<Option<JoinHandle<()>>>>,
    mode: OpenMode,
    /// The journal's size (allocated when it is created, constant after).
    journal_bytes: u64,
}

impl Store {
    /// Opens (or creates) the store and starts its committer thread.
    pub fn open(options: &StoreOptions, sync: SyncFn) -> Result<(Store, PreviousRun), Error> {
        let (opened, previous) = open::recover(options, sync)?;
        let db = opened.disk.db.clone();
        let journal_bytes = opened.disk.journal.capacity();
        let alert_queue = alerts::read_queue(&db)?;
        let shared = Arc::new(Shared::new(opened.counters.clone(), alert_queue));
        let (requests, receiver) = mpsc::channel(MAX_BATCH * 4);
        let committer = Committer::new(opened, shared.clone(), alert_queue);
        let handle = std::thread::Builder::new()
            .name("store-committer".into())
            .spawn(move || committer.run(receiver))
            .map_err(|e| Error::Open {
                path: options.path.clone(),
                message: e.to_string(),
            })?;
        let store = Store {
            db,
            requests,
            shared,
            committer: Arc::new(Mutex::new(Some(handle))),
            mode: options.mode,
            journal_bytes,
        };
        Ok((store, previous))
    }

    /// Why the store stopped accepting writes, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.shared.failure.get().map(String::as_str)
    }

    /// Live bytes of pending events and dead letters, as counted by hookrelay.
    pub fn total_bytes(&self) -> u64 {
        self.shared.total_bytes.load(Ordering::Relaxed)
    }

    /// Per-instance counters as of the last committed batch.
    pub fn counters(&self) -> Arc<BTreeMap<String, Counters>> {
        self.shared.counters.load_full()
    }

    /// Bytes the store's files take on disk: sled's and the journal.
    pub fn disk_bytes(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0) + self.journal_bytes
    }

    /// Sends `op` to the committer; its answer, once the batch it went into is durable (or
    /// applied, for an operation that may defer its sync).
    async fn request<O: Operation>(&self, op: O) -> Result<O::Reply, Error> {
        if let Some(failure) = self.shared.failure.get() {
            return Err(Error::Failed(failure.clone()));
        }
        let (request, answer) = commit::call(op);
        self.requests
            .send(request)
            .await
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Stores a notification for its targets durably; answers only after fdatasync.
    pub async fn ingest(
        &self,
        body: Bytes,
        accepted_ms: u64,
        targets: Vec<IngestTarget>,
    ) -> Result<Vec<Placed>, Error> {
        self.request(commit::Ingest {
            id: Ulid::generate(),
            body,
            accepted_ms,
            targets,
        })
        .await
    }

    /// Removes a delivered event. For a change envelope, the next one of its pair becomes due
    /// now: the answer is that due time, so that the lane looks for it.
    pub async fn delivered(&self, instance: &str, id: Ulid) -> Result<Option<u64>, Error> {
        self.delivered_with(instance, id, DeliveredOutcome::default())
            .await
    }

    /// [`Store::delivered`], keeping the event in the instance's history (`h/`) when
    /// `outcome.keep` says so, with its attempts and the envelope as sent, in the same batch
    /// that removes it; the oldest records past `history_max_bytes` go in that batch too.
    pub async fn delivered_with(
        &self,
        instance: &str,
        id: Ulid,
        outcome: DeliveredOutcome,
    ) -> Result<Option<u64>, Error> {
        self.request(commit::Delivered {
            instance: instance.to_owned(),
            id,
            outcome,
        })
        .await
    }

    /// Marks pairs as owing a walk (polling, catch-up), with a fresh token each.
    pub async fn mark_walk(&self, pairs: Vec<(String, String)>) -> Result<(), Error> {
        self.request(commit::MarkWalk { pairs }).await
    }

    /// Stores a pair's cursor; with `only_if_absent`, an existing cursor is kept.
    pub async fn set_cursor(
        &self,
        instance: &str,
        account: &str,
        cursor: &str,
        only_if_absent: bool,
    ) -> Result<(), Error> {
        self.request(commit::SetCursor {
            instance: instance.to_owned(),
            account: account.to_owned(),
            cursor: cursor.to_owned(),
            only_if_absent,
        })
        .await
    }

    /// Keeps the credentials `authorize` obtained and, if the account has no cursor yet,
    /// `cursor` as its first, in one durable batch. True when `cursor` was taken; an account
    /// authorized again keeps its cursor, so changes made meanwhile are still reported.
    pub async fn authorize(
        &self,
        instance: &str,
        authorization: AuthorizationV1,
        cursor: &str,
    ) -> Result<bool, Error> {
        self.request(commit::Authorize {
            instance: instance.to_owned(),
            authorization,
            cursor: cursor.to_owned(),
        })
        .await
    }

    /// Commits one page of a walk: cursor, object maps and envelopes in one batch. Returns the
    /// envelopes that became the head of their pair's queue (due now), for hand-off.
    pub async fn commit_walk_page(&self, page: WalkPage) -> Result<Vec<Event>, Error> {
        self.request(commit::CommitWalkPage(Box::new(page))).await
    }

    /// Records a failed attempt and when to try again.
    pub async fn reschedule(&self, instance: &str, id: Ulid, retry: Retry) -> Result<(), Error> {
        self.request(commit::Reschedule {
            instance: instance.to_owned(),
            id,
            retry,
            attempt: None,
        })
        .await
    }

    /// [`Store::reschedule`], keeping the failed attempt with the event in the same batch.
    pub async fn reschedule_after(
        &self,
        instance: &str,
        id: Ulid,
        retry: Retry,
        attempt: Attempt,
    ) -> Result<(), Error> {
        self.request(commit::Reschedule {
            instance: instance.to_owned(),
            id,
            retry,
            attempt: Some(attempt),
        })
        .await
    }

    /// Moves an event to the dead letters.
    pub async fn dead_letter(
        &self,
        instance: &str,
        id: Ulid,
        dead: DeadLetter,
    ) -> Result<Option<u64>, Error> {
        self.dead_letter_after(instance, id, dead, None).await
    }

    /// [`Store::dead_letter`], keeping the last attempt (if there was one) with the letter.
    pub async fn dead_letter_after(
        &self,
        instance: &str,
        id: Ulid,
        dead: DeadLetter,
        attempt: Option<Attempt>,
    ) -> Result<Option<u64>, Error> {
        self.request(commit::MoveToDead {
            instance: instance.to_owned(),
            id,
            dead,
            now_ms: now_ms(),
            attempt,
        })
        .await
    }

    /// Takes events out of the store for delivery: they stop being merge targets, and their
    /// current records (with raw bodies) are returned. Missing ids are skipped; an event that
    /// cannot be read fails the claim (delivery uses [`Store::claim_readable`]).
    pub async fn claim(&self, instance: &str, ids: Vec<Ulid>) -> Result<Vec<Event>, Error> {
        let claimed = self.claim_readable(instance, ids).await?;
        match claimed.unreadable.into_iter().next() {
            Some((id, problem)) => Err(Error::Corrupt(format!("event {id}: {problem}"))),
            None => Ok(claimed.events),
        }
    }

    /// [`Store::claim`], except that the events whose record or notification body cannot be
    /// read are listed apart (for [`Store::quarantine`]) instead of failing the claim.
    pub async fn claim_readable(&self, instance: &str, ids: Vec<Ulid>) -> Result<Claimed, Error> {
        self.request(commit::Claim {
            instance: instance.to_owned(),
            ids,
        })
        .await
    }

    /// Dead-letters a pending event that cannot be read, with reason `corrupt` and its
    /// unreadable bytes kept in the letter ([`record::DeadV1::quarantined`]); `problem` says
    /// what could not be read. False if the event is no longer pending.
    pub async fn quarantine(&self, instance: &str, id: Ulid, problem: &str) -> Result<bool, Error> {
        self.request(commit::Quarantine {
            instance: instance.to_owned(),
            id,
            problem: problem.to_owned(),
            now_ms: now_ms(),
        })
        .await
    }

    /// Puts dead letters back on the queue with a fresh attempt count and age. Returns how many.
    pub async fn replay_dead(&self, letters: Vec<(String, Ulid)>) -> Result<u64, Error> {
        self.request(commit::ReplayDead {
            letters,
            now_ms: now_ms(),
        })
        .await
    }

    /// Puts delivered events back on the queue from the history, with their ids, a fresh
    /// attempt count and age (they leave the history until delivered again). Returns how many.
    pub async fn replay_history(&self, events: Vec<(String, Ulid)>) -> Result<u64, Error> {
        self.request(commit::ReplayHistory {
            events,
            now_ms: now_ms(),
        })
        .await
    }

    /// Deletes the history records of `instances` accepted before their cutoff, a page of
    /// [`MAINTENANCE_PAGE`] per batch. Returns how many.
    pub async fn expire_history(
        &self,
        cutoffs: Cutoffs,
        instances: Vec<String>,
    ) -> Result<u64, Error> {
        self.paged(|limit| commit::ExpireHistory {
            cutoffs: cutoffs.clone(),
            instances: instances.clone(),
            limit,
        })
        .await
    }

    /// Deletes dead letters. Returns how many.
    pub async fn purge_dead(&self, letters: Vec<(String, Ulid)>) -> Result<u64, Error> {
        self.request(commit::PurgeDead { letters }).await
    }

    /// Deletes pending events of an instance (held events of a removed instance), a page of
    /// [`MAINTENANCE_PAGE`] per batch. Returns how many.
    pub async fn purge_pending(&self, instance: &str) -> Result<u64, Error> {
        self.paged(|limit| commit::PurgePending {
            instance: instance.to_owned(),
            limit,
        })
        .await
    }

    /// Deletes the records of `instance` that are neither events nor dead letters (seen pairs,
    /// walk markers, cursors, object maps, change queues, merge targets, credentials, outage
    /// state), a page of [`MAINTENANCE_PAGE`] per batch: for an instance no longer configured
    /// whose events and dead letters are gone. Returns how many.
    pub async fn forget_instance(&self, instance: &str) -> Result<u64, Error> {
        self.paged(|limit| commit::ForgetInstance {
            instance: instance.to_owned(),
            limit,
        })
        .await
    }

    /// Deletes dead letters that died before their instance's cutoff, a page of
    /// [`MAINTENANCE_PAGE`] per batch. Returns how many.
    pub async fn expire_dead(&self, cutoffs: Cutoffs) -> Result<u64, Error> {
        self.paged(|limit| commit::ExpireDead {
            cutoffs: cutoffs.clone(),
            limit,
        })
        .await
    }

    /// Sends `op` for pages of [`MAINTENANCE_PAGE`] until a page comes back short: each page is
    /// one request, so the writer is held a few milliseconds at a time and ingests in between
    /// are not kept waiting.
    async fn paged<O: Operation<Reply = u64>>(
        &self,
        op: impl Fn(usize) -> O,
    ) -> Result<u64, Error> {
        let mut total = 0;
        loop {
            let count = self.request(op(MAINTENANCE_PAGE)).await?;
            total += count;
            if count < MAINTENANCE_PAGE as u64 {
                return Ok(total);
            }
        }
    }

    /// Gives every (instance, account) seen before one `UNKNOWN` event. Returns the new events.
    pub async fn catch_up(&self, instances: Vec<String>) -> Result<Vec<Event>, Error> {
        self.request(commit::CatchUp {
            instances,
            now_ms: now_ms(),
        })
        .await
    }

    /// Records that the daemon is alive now (for "down since" after an unclean stop).
    pub async fn heartbeat(&self) -> Result<(), Error> {
        self.request(commit::Heartbeat { now_ms: now_ms() }).await
    }

    /// Marks a clean stop, flushes, and stops the committer. Later requests fail with `Closed`.
    pub async fn close(&self) -> Result<(), Error> {
        // Sent even after a failure (unlike other requests): the committer must still stop.
        let (request, answer) = commit::call(commit::Close {
            mark_clean: self.mode == OpenMode::Daemon,
            now_ms: now_ms(),
        });
        let result = match self.requests.send(request).await {
            Ok(()) => answer.await.map_err(|_| Error::Closed).and_then(|r| r),
            Err(_) => Err(Error::Closed),
        };
        let handle = self.committer.lock().map_err(|_| Error::Closed)?.take();
        if let Some(handle) = handle {
            let _joined = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        result
    }
}

#[cfg(test)]
mod history_tests;
#[cfg(test)]
mod tests;
