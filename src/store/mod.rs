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
//! | `c/<instance>` | [`record::Counters`]: pending and dead events and bytes |
//! | `s/<instance>\0<account>` | first time a pair was seen, for catch-up |
//! | `w/<instance>\0<account>` | change events: a walk is owed; value a token replaced by each new request |
//! | `k/<instance>\0<account>` | change events: the pair's `list_folder` cursor |
//! | `o/<instance>\0<account>\0i<id>`, `…\0p<path_lower>` | change events: [`record::ObjectV1`] by id and by path |
//! | `q/<instance>\0<account>\0<seq u64>` | change events: the pair's FIFO of envelopes (value: event id); `q/<instance>\0<account>` holds the next seq |
//! | `a/<instance>` | change events: [`record::AuthorizationV1`], the credentials `authorize` obtained |
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

mod commit;
mod durable;
pub mod inspect;
mod journal;
mod keys;
pub mod record;
mod run;

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use ulid::Ulid;

pub use record::{AuthorizationV1, Counters, EventKind};

use record::AuthorizationRecord;

use commit::{Committer, Op, Opened, Reply, Request};
use journal::Journal;
pub use journal::{JOURNAL_BYTES as DEFAULT_JOURNAL_BYTES, JOURNAL_FILE};

/// Requests one batch takes at most.
pub const MAX_BATCH: usize = 512;
/// Records one maintenance request (a purge, an expiry, a page of a replay) changes at most:
/// a few milliseconds of the committer.
pub const MAINTENANCE_PAGE: usize = 256;

/// How the committer makes a file durable (the journal after a batch, sled's log at a
/// checkpoint); replaceable so tests can fail it.
pub type SyncFn = Box<dyn FnMut(&File) -> io::Result<()> + Send>;

/// The default sync: `fdatasync`.
pub fn fdatasync() -> SyncFn {
    Box::new(|file: &File| file.sync_data())
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("cannot open the store at {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("store write failed, refusing further writes: {0}")]
    Failed(String),
    #[error("the store is closed")]
    Closed,
    #[error("corrupt {0}")]
    Corrupt(String),
}

impl Error {
    /// The store is open in another process (sled holds an exclusive lock on its files): the
    /// daemon, or another CLI command.
    pub fn is_locked(&self) -> bool {
        matches!(self, Error::Open { message, .. } if message.contains("could not acquire lock"))
    }
}

/// Where and how to open the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub path: PathBuf,
    pub cache_bytes: u64,
    pub mode: OpenMode,
    /// The journal's size when it is created ([`DEFAULT_JOURNAL_BYTES`]; tests use less, to
    /// checkpoint often). An existing journal keeps its size if larger.
    pub journal_bytes: u64,
}

/// Who opens the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// The daemon: this run is unclean until [`Store::close`] marks it clean.
    Daemon,
    /// A CLI command while the daemon is stopped: the previous run's markers are left alone.
    Offline,
}

/// What the store knew about the previous run when it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreviousRun {
    /// The last run stopped cleanly (`Store::close` completed).
    pub clean_stop: bool,
    /// The last heartbeat the previous run wrote, if any.
    pub last_alive_ms: Option<u64>,
}

/// A pending event, as delivery sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: Ulid,
    pub instance: String,
    pub account: String,
    pub kind: EventKind,
    /// The Dropbox notification body (notify mode), verbatim; change events: `{"entries": [...]}`.
    pub raw: Option<Bytes>,
    /// Change events only: the JSON array of the envelope's per-object events.
    pub objects: Option<Bytes>,
    pub date_ms: u64,
    pub age_base_ms: u64,
    pub attempts: u32,
    pub due_ms: u64,
    /// Every attempt so far was definitely refused (see [`record::EventV1::refused_only`]).
    pub refused_only: bool,
}

/// One (instance, account) a notification fans out to.
#[derive(Debug, Clone)]
pub struct IngestTarget {
    pub instance: String,
    pub account: String,
    /// `coalesce = true`: the notification may merge into a waiting, refused event of the pair.
    pub coalesce: bool,
    /// The instance's `max_queued_bytes`: past it, the notification merges whatever `coalesce` says.
    pub quota_bytes: u64,
    /// `events = "changes"`: the notification becomes a durable "walk pending" marker
    /// (`w/`) instead of an event.
    pub changes: bool,
}

/// What a claim took: the events to deliver, and those that cannot be read, with why.
#[derive(Debug, Clone, Default)]
pub struct Claimed {
    pub events: Vec<Event>,
    pub unreadable: Vec<(Ulid, String)>,
}

/// Where a notification went for one target.
#[derive(Debug, Clone, PartialEq)]
pub enum Placed {
    /// A new event, to be handed to delivery now.
    Created(Event),
    /// A new event over the instance's quota: it waits in the store, mergeable, for its lane.
    Parked { id: Ulid },
    /// Merged into an existing event, which keeps its id.
    Merged { id: Ulid },
    /// A change-events pair: a walk of its cursor is now owed (durably).
    WalkPending { instance: String, account: String },
}

/// One change-events envelope to store (see [`record::ChangesV1`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEnvelope {
    /// JSON array of the per-object events.
    pub events: String,
    /// The envelope's `raw` JSON.
    pub raw: String,
}

/// A change to a pair's object maps (`o/`).
#[derive(Debug, Clone, PartialEq)]
pub enum MapWrite {
    /// The object now lives at `path_lower` (both maps).
    Put(record::ObjectV1),
    /// Nothing is known at this path any more.
    RemovePath(String),
    /// Nothing is known of this id any more.
    RemoveId(String),
    /// Nothing is known under this folder (`path_lower`) any more: Dropbox reports a deleted
    /// folder with one entry, which removes its children too.
    RemoveTree(String),
}

/// One page of a cursor walk, committed in one batch (SPEC §8: a crash repeats, never skips).
#[derive(Debug, Clone)]
pub struct WalkPage {
    pub instance: String,
    pub account: String,
    /// The cursor after this page (`None`: keep the stored one).
    pub cursor: Option<String>,
    pub envelopes: Vec<NewEnvelope>,
    pub map: Vec<MapWrite>,
    /// The walk is complete: clear the pair's `w/` marker if it still holds this token.
    pub clear_marker: Option<Vec<u8>>,
    pub date_ms: u64,
}

/// The result of a failed attempt that will be retried.
#[derive(Debug, Clone)]
pub struct Retry {
    pub attempts: u32,
    pub due_ms: u64,
    /// This attempt ended in a definite refusal (a status, a refused connection), so the
    /// consumer did not take the event.
    pub definite_refusal: bool,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
}

/// Why an event is given up.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub attempts: u32,
    pub reason: String,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
}

/// Dead-letter retention: letters that died before these times are deleted.
#[derive(Debug, Clone, Default)]
pub struct Cutoffs {
    /// Per configured instance (now − its `dead_letter_ttl`), in ms.
    pub by_instance: BTreeMap<String, u64>,
    /// For instances no longer configured (held).
    pub otherwise: u64,
}

impl Cutoffs {
    fn for_instance(&self, instance: &str) -> u64 {
        self.by_instance
            .get(instance)
            .copied()
            .unwrap_or(self.otherwise)
    }

    fn latest(&self) -> u64 {
        self.by_instance
            .values()
            .copied()
            .chain([self.otherwise])
            .max()
            .unwrap_or(0)
    }
}

/// State shared between the handle and the committer.
struct Shared {
    failure: OnceLock<String>,
    total_bytes: AtomicU64,
    counters: ArcSwap<BTreeMap<String, Counters>>,
}

/// A handle on the open store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    requests: mpsc::Sender<Request>,
    shared: Arc<Shared>,
    committer: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
    mode: OpenMode,
    /// The journal's size (allocated when it is created, constant after).
    journal_bytes: u64,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn sled_error(err: sled::Error) -> Error {
    Error::Failed(err.to_string())
}

// === impl Store ===

impl Store {
    /// Opens (or creates) the store and starts its committer thread.
    pub fn open(options: &StoreOptions, sync: SyncFn) -> Result<(Store, PreviousRun), Error> {
        let open_error = |message: String| Error::Open {
            path: options.path.clone(),
            message,
        };
        durable::create_dir(&options.path).map_err(|e| open_error(e.to_string()))?;
        let db = open_sled(&options.path, options.cache_bytes).map_err(open_error)?;
        let db_file = File::open(options.path.join("db")).map_err(|e| open_error(e.to_string()))?;
        check_schema(&db).map_err(open_error)?;
        let mut journal = Journal::open(&options.path, options.journal_bytes)
            .map_err(|e| open_error(format!("journal: {e}")))?;
        // sled's files and the journal, and their names, durable before anything relies on them.
        durable::sync_files(&options.path).map_err(|e| open_error(e.to_string()))?;
        let last_seq = apply_journal(&db, &journal).map_err(open_error)?;
        let previous =
            read_previous_run(&db, options.mode).map_err(|e| open_error(e.to_string()))?;
        count_other_records(&db).map_err(|e| open_error(e.to_string()))?;
        // What the journal held, and the markers, durable in sled before the journal starts
        // again (and before a record may rely on `m/schema` saying 4).
        db.flush().map_err(|e| open_error(format!("flush: {e}")))?;
        db_file
            .sync_data()
            .map_err(|e| open_error(format!("fdatasync of sled's log: {e}")))?;
        journal
            .restart()
            .map_err(|e| open_error(format!("journal: {e}")))?;
        let counters = read_counters(&db).map_err(|e| open_error(e.to_string()))?;
        let total: u64 = counters.values().map(Counters::total_bytes).sum();
        let shared = Arc::new(Shared {
            failure: OnceLock::new(),
            total_bytes: AtomicU64::new(total),
            counters: ArcSwap::from_pointee(counters.clone()),
        });
        let (requests, receiver) = mpsc::channel(MAX_BATCH * 4);
        let last_id = last_run_id(&db).map_err(|e| open_error(e.to_string()))?;
        let journal_bytes = journal.capacity();
        let opened = Opened {
            db: db.clone(),
            db_file,
            journal,
            last_seq,
            counters,
            last_id,
        };
        let committer = Committer::new(opened, sync, shared.clone());
        let handle = std::thread::Builder::new()
            .name("store-committer".into())
            .spawn(move || committer.run(receiver))
            .map_err(|e| open_error(e.to_string()))?;
        let store = Store {
            db,
            requests,
            shared,
            committer: Arc::new(std::sync::Mutex::new(Some(handle))),
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

    async fn request(&self, op: Op) -> Result<Reply, Error> {
        if let Some(failure) = self.shared.failure.get() {
            return Err(Error::Failed(failure.clone()));
        }
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request { op, reply })
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
        let op = Op::Ingest {
            id: Ulid::generate(),
            body,
            accepted_ms,
            targets,
        };
        match self.request(op).await? {
            Reply::Placed(placed) => Ok(placed),
            other => Err(unexpected(other)),
        }
    }

    /// Removes a delivered event. For a change envelope, the next one of its pair becomes due
    /// now: the answer is that due time, so that the lane looks for it.
    pub async fn delivered(&self, instance: &str, id: Ulid) -> Result<Option<u64>, Error> {
        match self
            .request(Op::Delivered {
                instance: instance.to_owned(),
                id,
            })
            .await?
        {
            Reply::Promoted(due) => Ok(due),
            other => Err(unexpected(other)),
        }
    }

    /// Marks pairs as owing a walk (polling, catch-up), with a fresh token each.
    pub async fn mark_walk(&self, pairs: Vec<(String, String)>) -> Result<(), Error> {
        self.request(Op::MarkWalk { pairs }).await.map(drop)
    }

    /// Stores a pair's cursor; with `only_if_absent`, an existing cursor is kept.
    pub async fn set_cursor(
        &self,
        instance: &str,
        account: &str,
        cursor: &str,
        only_if_absent: bool,
    ) -> Result<(), Error> {
        self.request(Op::SetCursor {
            instance: instance.to_owned(),
            account: account.to_owned(),
            cursor: cursor.to_owned(),
            only_if_absent,
        })
        .await
        .map(drop)
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
        match self
            .request(Op::Authorize {
                instance: instance.to_owned(),
                authorization,
                cursor: cursor.to_owned(),
            })
            .await?
        {
            Reply::Count(taken) => Ok(taken == 1),
            other => Err(unexpected(other)),
        }
    }

    /// Commits one page of a walk: cursor, object maps and envelopes in one batch. Returns the
    /// envelopes that became the head of their pair's queue (due now), for hand-off.
    pub async fn commit_walk_page(&self, page: WalkPage) -> Result<Vec<Event>, Error> {
        match self.request(Op::CommitWalkPage(Box::new(page))).await? {
            Reply::Events(events) => Ok(events),
            other => Err(unexpected(other)),
        }
    }

    /// Records a failed attempt and when to try again.
    pub async fn reschedule(&self, instance: &str, id: Ulid, retry: Retry) -> Result<(), Error> {
        self.request(Op::Reschedule {
            instance: instance.to_owned(),
            id,
            retry,
        })
        .await
        .map(drop)
    }

    /// Moves an event to the dead letters.
    pub async fn dead_letter(
        &self,
        instance: &str,
        id: Ulid,
        dead: DeadLetter,
    ) -> Result<Option<u64>, Error> {
        match self
            .request(Op::DeadLetter {
                instance: instance.to_owned(),
                id,
                dead,
                now_ms: now_ms(),
            })
            .await?
        {
            Reply::Promoted(due) => Ok(due),
            other => Err(unexpected(other)),
        }
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
        match self
            .request(Op::Claim {
                instance: instance.to_owned(),
                ids,
            })
            .await?
        {
            Reply::Claimed(claimed) => Ok(claimed),
            other => Err(unexpected(other)),
        }
    }

    /// Dead-letters a pending event that cannot be read, with reason `corrupt` and its
    /// unreadable bytes kept in the letter ([`record::DeadV1::quarantined`]); `problem` says
    /// what could not be read. False if the event is no longer pending.
    pub async fn quarantine(&self, instance: &str, id: Ulid, problem: &str) -> Result<bool, Error> {
        let op = Op::Quarantine {
            instance: instance.to_owned(),
            id,
            problem: problem.to_owned(),
            now_ms: now_ms(),
        };
        match self.request(op).await? {
            Reply::Count(count) => Ok(count == 1),
            other => Err(unexpected(other)),
        }
    }

    /// Puts dead letters back on the queue with a fresh attempt count and age. Returns how many.
    pub async fn replay_dead(&self, letters: Vec<(String, Ulid)>) -> Result<u64, Error> {
        self.count_request(Op::ReplayDead {
            letters,
            now_ms: now_ms(),
        })
        .await
    }

    /// Deletes dead letters. Returns how many.
    pub async fn purge_dead(&self, letters: Vec<(String, Ulid)>) -> Result<u64, Error> {
        self.count_request(Op::PurgeDead { letters }).await
    }

    /// Deletes pending events of an instance (held events of a removed instance), a page of
    /// [`MAINTENANCE_PAGE`] per batch. Returns how many.
    pub async fn purge_pending(&self, instance: &str) -> Result<u64, Error> {
        self.paged(|limit| Op::PurgePending {
            instance: instance.to_owned(),
            limit,
        })
        .await
    }

    /// Deletes the records of `instance` that are neither events nor dead letters (seen pairs,
    /// walk markers, cursors, object maps, change queues, merge targets, credentials), a page
    /// of [`MAINTENANCE_PAGE`] per batch: for an instance no longer configured whose events and
    /// dead letters are gone. Returns how many.
    pub async fn forget_instance(&self, instance: &str) -> Result<u64, Error> {
        self.paged(|limit| Op::ForgetInstance {
            instance: instance.to_owned(),
            limit,
        })
        .await
    }

    /// Deletes dead letters that died before their instance's cutoff, a page of
    /// [`MAINTENANCE_PAGE`] per batch. Returns how many.
    pub async fn expire_dead(&self, cutoffs: Cutoffs) -> Result<u64, Error> {
        self.paged(|limit| Op::ExpireDead {
            cutoffs: cutoffs.clone(),
            limit,
        })
        .await
    }

    /// Sends `op` for pages of [`MAINTENANCE_PAGE`] until a page comes back short: each page is
    /// one request, so the writer is held a few milliseconds at a time and ingests in between
    /// are not kept waiting.
    async fn paged(&self, op: impl Fn(usize) -> Op) -> Result<u64, Error> {
        let mut total = 0;
        loop {
            let count = self.count_request(op(MAINTENANCE_PAGE)).await?;
            total += count;
            if count < MAINTENANCE_PAGE as u64 {
                return Ok(total);
            }
        }
    }

    /// Gives every (instance, account) seen before one `UNKNOWN` event. Returns the new events.
    pub async fn catch_up(&self, instances: Vec<String>) -> Result<Vec<Event>, Error> {
        match self
            .request(Op::CatchUp {
                instances,
                now_ms: now_ms(),
            })
            .await?
        {
            Reply::Events(events) => Ok(events),
            other => Err(unexpected(other)),
        }
    }

    /// Records that the daemon is alive now (for "down since" after an unclean stop).
    pub async fn heartbeat(&self) -> Result<(), Error> {
        self.request(Op::Heartbeat { now_ms: now_ms() })
            .await
            .map(drop)
    }

    async fn count_request(&self, op: Op) -> Result<u64, Error> {
        match self.request(op).await? {
            Reply::Count(count) => Ok(count),
            other => Err(unexpected(other)),
        }
    }

    /// Marks a clean stop, flushes, and stops the committer. Later requests fail with `Closed`.
    pub async fn close(&self) -> Result<(), Error> {
        // Sent even after a failure (unlike other requests): the committer must still stop.
        let op = Op::Close {
            mark_clean: self.mode == OpenMode::Daemon,
            now_ms: now_ms(),
        };
        let (reply, answer) = oneshot::channel();
        let result = match self.requests.send(Request { op, reply }).await {
            Ok(()) => answer
                .await
                .map_err(|_| Error::Closed)
                .and_then(|r| r.map(drop)),
            Err(_) => Err(Error::Closed),
        };
        let handle = self.committer.lock().map_err(|_| Error::Closed)?.take();
        if let Some(handle) = handle {
            let _joined = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        result
    }

    // === reads (any thread; they see committed batches) ===

    /// The event a new notification of (`instance`, `account`) may merge into, as the store
    /// holds it. For the queue model test, which must learn it after a power cut that undid a
    /// claim (claims are answered before their sync).
    #[doc(hidden)]
    pub fn merge_target(&self, instance: &str, account: &str) -> Result<Option<Ulid>, Error> {
        let value = self
            .db
            .get(keys::pair(keys::PAIR, instance, account))
            .map_err(sled_error)?;
        Ok(value.and_then(|v| <[u8; 16]>::try_from(v.as_ref()).ok().map(Ulid::from_bytes)))
    }

    /// Ids of `instance`'s events due at or before `now_ms`, earliest first, skipping `held`:
    /// the events due now (runs and `r/` records, each in arrival order) merged with the waiting
    /// ones whose time has come (`d/`, by due time).
    pub fn due_ids(
        &self,
        instance: &str,
        now_ms: u64,
        limit: usize,
        held: impl Fn(&Ulid) -> bool,
    ) -> Result<Vec<Ulid>, Error> {
        let mut due: Vec<(u64, Ulid)> = Vec::new();
        let mut take = |id: Ulid, at: u64, taken: &mut usize| {
            if !held(&id) {
                due.push((at, id));
                *taken += 1;
            }
        };
        let mut in_runs = 0;
        for id in run_member_ids(&self.db, instance) {
            if in_runs >= limit {
                break;
            }
            let id = id?;
            take(id, id.timestamp_ms(), &mut in_runs);
        }
        let mut ready = 0;
        for key in self
            .db
            .scan_prefix(keys::instance_prefix(keys::READY, instance))
            .keys()
        {
            if ready >= limit {
                break;
            }
            if let Some(id) = keys::trailing_id(&key.map_err(sled_error)?) {
                take(id, id.timestamp_ms(), &mut ready);
            }
        }
        let prefix_len = keys::instance_prefix(keys::DUE, instance).len();
        let range = keys::due_from(instance, 0)..keys::due_from(instance, now_ms.saturating_add(1));
        let mut waited = 0;
        for entry in self.db.range(range).keys() {
            if waited >= limit {
                break;
            }
            if let Some((at, id)) = keys::parse_due(prefix_len, &entry.map_err(sled_error)?) {
                take(id, at, &mut waited);
            }
        }
        due.sort_unstable();
        Ok(due.into_iter().take(limit).map(|(_, id)| id).collect())
    }

    /// The earliest due time of `instance`'s events after `after_ms`, skipping `held`.
    pub fn next_due_after(
        &self,
        instance: &str,
        after_ms: u64,
        held: impl Fn(&Ulid) -> bool,
    ) -> Result<Option<u64>, Error> {
        let prefix = keys::instance_prefix(keys::DUE, instance);
        let start = keys::due_from(instance, after_ms.saturating_add(1));
        for entry in self.db.range(start..) {
            let (key, _) = entry.map_err(sled_error)?;
            if !key.starts_with(&prefix) {
                break;
            }
            if let Some((due, id)) = keys::parse_due(prefix.len(), &key)
                && !held(&id)
            {
                return Ok(Some(due));
            }
        }
        Ok(None)
    }

    /// How many of `instance`'s events wait for a later attempt (due after `now_ms`: a retry or a
    /// `Retry-After`), for `status`. Scans the due index's keys from `now_ms` on.
    pub fn waiting_retry(&self, instance: &str, now_ms: u64) -> Result<u64, Error> {
        let prefix = keys::instance_prefix(keys::DUE, instance);
        let start = keys::due_from(instance, now_ms.saturating_add(1));
        let mut count = 0;
        for entry in self.db.range(start..).keys() {
            if !entry.map_err(sled_error)?.starts_with(&prefix) {
                break;
            }
            count += 1;
        }
        Ok(count)
    }

    /// The oldest pending event's id time (ULIDs sort by creation), for "oldest pending age".
    pub fn oldest_pending_ms(&self, instance: &str) -> Result<Option<u64>, Error> {
        let mut oldest: Option<u64> = None;
        if let Some(first) = run_member_ids(&self.db, instance).next() {
            oldest = Some(first?.timestamp_ms());
        }
        for family in [keys::READY, keys::EVENT] {
            let prefix = keys::instance_prefix(family, instance);
            if let Some(key) = self.db.scan_prefix(&prefix).keys().next() {
                let created =
                    keys::trailing_id(&key.map_err(sled_error)?).map(|id| id.timestamp_ms());
                oldest = oldest.into_iter().chain(created).min();
            }
        }
        Ok(oldest)
    }

    /// The credentials `authorize` stored for an instance.
    pub fn authorization(&self, instance: &str) -> Result<Option<AuthorizationV1>, Error> {
        self.db
            .get(keys::authorization(instance))
            .map_err(sled_error)?
            .map(|v| AuthorizationRecord::decode(&v))
            .transpose()
    }

    /// A pair's cursor (change events).
    pub fn cursor(&self, instance: &str, account: &str) -> Result<Option<String>, Error> {
        let value = self
            .db
            .get(keys::pair(keys::CURSOR, instance, account))
            .map_err(sled_error)?;
        Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Accounts of `instance` that have a cursor.
    pub fn cursor_accounts(&self, instance: &str) -> Result<Vec<String>, Error> {
        let prefix = keys::instance_prefix(keys::CURSOR, instance);
        let mut accounts = Vec::new();
        for key in self.db.scan_prefix(&prefix).keys() {
            let key = key.map_err(sled_error)?;
            accounts.push(String::from_utf8_lossy(&key[prefix.len()..]).into_owned());
        }
        Ok(accounts)
    }

    /// Every pair owing a walk, with its marker token.
    pub fn walk_markers(&self) -> Result<Vec<(String, String, Vec<u8>)>, Error> {
        let mut markers = Vec::new();
        for entry in self.db.scan_prefix(keys::WALK) {
            let (key, value) = entry.map_err(sled_error)?;
            if let Some((instance, account)) = keys::parse_pair(keys::WALK, &key) {
                markers.push((instance, account, value.to_vec()));
            }
        }
        Ok(markers)
    }

    /// The marker token of a pair owing a walk.
    pub fn walk_marker(&self, instance: &str, account: &str) -> Result<Option<Vec<u8>>, Error> {
        let value = self
            .db
            .get(keys::pair(keys::WALK, instance, account))
            .map_err(sled_error)?;
        Ok(value.map(|v| v.to_vec()))
    }

    /// What the object maps know of an id.
    pub fn object_by_id(
        &self,
        instance: &str,
        account: &str,
        id: &str,
    ) -> Result<Option<record::ObjectV1>, Error> {
        let key = keys::object_id(instance, account, id);
        self.db
            .get(key)
            .map_err(sled_error)?
            .map(|v| record::ObjectV1::decode(&v))
            .transpose()
    }

    /// What the object maps know of a lower-case path.
    pub fn object_by_path(
        &self,
        instance: &str,
        account: &str,
        path_lower: &str,
    ) -> Result<Option<record::ObjectV1>, Error> {
        let key = keys::object_path(instance, account, path_lower);
        self.db
            .get(key)
            .map_err(sled_error)?
            .map(|v| record::ObjectV1::decode(&v))
            .transpose()
    }

    /// Dead letters, optionally of one instance, oldest death first is not guaranteed.
    pub fn dead_letters(
        &self,
        instance: Option<&str>,
    ) -> Result<Vec<inspect::EventSummary>, Error> {
        inspect::dead_in(&self.db, instance)
    }

    /// A page of dead letters in the order they died: up to `limit`, of `instance` (or all),
    /// that died in `[since_ms, until_ms)`, after `after` (the last of the previous page).
    /// Reads only the index; memory is bounded by `limit`, whatever the number of letters.
    pub fn dead_page(
        &self,
        instance: Option<&str>,
        window: (Option<u64>, Option<u64>),
        after: Option<&inspect::DeadRef>,
        limit: usize,
    ) -> Result<Vec<inspect::DeadRef>, Error> {
        inspect::dead_refs(&self.db, instance, window, after, limit)
    }

    /// The dead letters `letters` names, as summaries without bodies (those gone meanwhile
    /// are left out).
    pub fn dead_summaries(
        &self,
        letters: &[inspect::DeadRef],
    ) -> Result<Vec<inspect::EventSummary>, Error> {
        let mut out = Vec::with_capacity(letters.len());
        for letter in letters {
            out.extend(inspect::dead_summary(&self.db, letter)?);
        }
        Ok(out)
    }

    /// Which of `ids` are dead letters, and of which instance: each looked up directly under
    /// every instance the store counts events for, never by reading the whole set.
    pub fn find_dead(&self, ids: &[Ulid]) -> Result<Vec<(String, Ulid)>, Error> {
        let counters = self.counters();
        let mut found = Vec::new();
        for &id in ids {
            for instance in counters.keys() {
                if self
                    .db
                    .contains_key(keys::dead(instance, id))
                    .map_err(sled_error)?
                {
                    found.push((instance.clone(), id));
                    break;
                }
            }
        }
        Ok(found)
    }

    /// Pending events of one instance or all (for status and tests; scans, so not on a hot path).
    pub fn pending_events(
        &self,
        instance: Option<&str>,
    ) -> Result<Vec<inspect::EventSummary>, Error> {
        inspect::pending_in(&self.db, instance)
    }
}

fn unexpected(reply: Reply) -> Error {
    Error::Corrupt(format!("unexpected committer reply {reply:?}"))
}

/// The newest store layout this build reads and writes (`m/schema`). 2: event records are binary
/// and carry a body no other event shares, and events due now are `r/` records without a
/// due-index entry. 3: the events one batch creates for an instance share a run record (`z/`).
/// 4: the journal may hold batches sled does not ([`journal`]). Older stores are read as they
/// are.
///
/// An open store says 4; a clean stop leaves the journal with nothing to apply and says the
/// oldest layout that reads the store: 3 if a run is left, 2 if not. So a build of either can
/// open a store this one stopped cleanly (a rollback), and neither opens one whose journal may
/// still hold batches.
const SCHEMA: u32 = 4;
/// The layout of a stopped store that holds runs.
const SCHEMA_RUNS: u32 = 3;
/// The layout of a stopped store that holds no run.
const SCHEMA_WITHOUT_RUNS: u32 = 2;

/// Refuses a store written by a newer hookrelay, whose records (or journal) this build may
/// misread.
fn check_schema(db: &sled::Db) -> Result<(), String> {
    let stored = db.get(keys::meta("schema")).map_err(|e| e.to_string())?;
    let Some(stored) = stored else {
        return Ok(());
    };
    match std::str::from_utf8(&stored)
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
    {
        Some(version) if version <= SCHEMA => Ok(()),
        Some(version) => Err(format!(
            "the store has schema {version}, newer than this hookrelay's ({SCHEMA}); run the \
             newer hookrelay, or restore the store's backup"
        )),
        None => Err(format!(
            "the store's schema record (m/schema) is unreadable: {:?}",
            String::from_utf8_lossy(&stored)
        )),
    }
}

/// The `m/schema` value of a layout.
fn schema_value(version: u32) -> Vec<u8> {
    version.to_string().into_bytes()
}

/// Reads the previous run's markers and marks the store [`SCHEMA`] (4): this build journals
/// batches from now on.
fn read_previous_run(db: &sled::Db, mode: OpenMode) -> Result<PreviousRun, sled::Error> {
    let clean_stop = db.get(keys::meta("clean"))?.is_some();
    let last_alive_ms = db.get(keys::meta("alive"))?.and_then(|v| {
        let bytes: [u8; 8] = v.as_ref().try_into().ok()?;
        Some(u64::from_be_bytes(bytes))
    });
    // This run is not clean until it says so at close.
    if clean_stop && mode == OpenMode::Daemon {
        db.remove(keys::meta("clean"))?;
    }
    // Written whatever it says (a journaled `Close` may just have set it back to 3 or 2).
    db.insert(keys::meta("schema"), schema_value(SCHEMA))?;
    Ok(PreviousRun {
        clean_stop,
        last_alive_ms,
    })
}

/// Applies the journal's batches that sled does not hold (see [`journal`]); the sequence number
/// of the last batch sled then holds.
/// sled's files in the store directory (beside the journal).
const SLED_FILES: [&str; 4] = ["db", "conf", "snap.*", "blobs/"];
/// What an operator can do when the store does not open (docs/durability.md says more).
const OPEN_FAILED_HINT: &str = "if the disk itself is sound, stop hookrelay, move the store \
     directory aside (keep it for inspection) and start again with an empty store: see \
     docs/durability.md, \"When the store does not open\"";

/// Opens sled's files at `path`. sled may panic on files it cannot make sense of (damage it
/// does not check for); that is reported like any other error, naming the store, rather than
/// ending the process.
fn open_sled(path: &Path, cache_bytes: u64) -> Result<sled::Db, String> {
    let config = sled::Config::new()
        .path(path)
        .cache_capacity(cache_bytes)
        // The committer flushes at its checkpoints; sled's own periodic flush would only
        // contend with the journal for the device (and add a sync_all of its own).
        .flush_every_ms(None);
    let failed = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open())) {
        Ok(Ok(db)) => return Ok(db),
        Ok(Err(err)) => err.to_string(),
        Err(panic) => panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("no message")
            .to_owned(),
    };
    Err(format!(
        "sled could not open its files ({}): {failed}; {OPEN_FAILED_HINT}",
        SLED_FILES.join(", ")
    ))
}

fn apply_journal(db: &sled::Db, journal: &Journal) -> Result<u64, String> {
    let held = match db
        .get(keys::meta(journal::SEQ_KEY))
        .map_err(|e| e.to_string())?
    {
        Some(value) => {
            let bytes: [u8; 8] = value.as_ref().try_into().map_err(|_| {
                format!(
                    "the store's journal record (m/{}) is unreadable",
                    journal::SEQ_KEY
                )
            })?;
            u64::from_be_bytes(bytes)
        }
        None => 0,
    };
    let chain = journal
        .records_after(held)
        .map_err(|e| format!("journal: {e}"))?;
    if let journal::ChainEnd::Unreadable {
        offset,
        damage: Some(damage),
    } = &chain.end
    {
        tracing::error!(
            offset,
            first_lost_batch = damage.first_lost,
            found_batch = damage.found,
            found_at = damage.found_at,
            "the journal's record of a batch is damaged (a later batch follows it): the \
             batches from first_lost_batch on are not applied, and any of them that was \
             acknowledged is lost"
        );
    }
    let mut last = held;
    for (seq, writes) in chain.records {
        commit::apply_atomically(db, seq, writes).map_err(|e| e.to_string())?;
        last = seq;
    }
    if last > held {
        tracing::info!(
            batches = last - held,
            "applied the journal's batches after a crash"
        );
    }
    Ok(last)
}

/// The ids of `instance`'s run members, in arrival order.
fn run_member_ids(db: &sled::Db, instance: &str) -> impl Iterator<Item = Result<Ulid, Error>> {
    let runs = db.scan_prefix(keys::instance_prefix(keys::RUN, instance));
    runs.values().flat_map(|run| match run {
        Ok(run) => run::members(&run)
            .map(|member| member.map(|(id, _)| id))
            .collect(),
        Err(err) => vec![Err(sled_error(err))],
    })
}

/// The greatest event id in any run: the committer's ids continue after it, whatever the clock
/// says now (see [`run`]). Reads the last run of each instance.
fn last_run_id(db: &sled::Db) -> Result<Ulid, Error> {
    let mut last = Ulid::nil();
    let mut end = keys::family_end(keys::RUN);
    while let Some(entry) = db.range(keys::RUN.to_vec()..end).next_back() {
        let (key, value) = entry.map_err(sled_error)?;
        for member in run::members(&value) {
            last = last.max(member?.0);
        }
        let Some(instance) = keys::instance_of(keys::RUN, &key) else {
            return Err(Error::Corrupt("run key without an instance".into()));
        };
        end = keys::instance_prefix(keys::RUN, &instance);
    }
    Ok(last)
}

/// `m/<OTHER_COUNTED>`: present once the counters count every instance's other records.
const OTHER_COUNTED: &str = "other_counted";

/// Counts, once, each instance's records that are neither events nor dead letters
/// (`commit::OTHER_FAMILIES`) into its counters' `other_bytes`: a store written before they
/// were counted. Reads those families once, holding one sum per instance.
fn count_other_records(db: &sled::Db) -> Result<(), Error> {
    if db
        .contains_key(keys::meta(OTHER_COUNTED))
        .map_err(sled_error)?
    {
        return Ok(());
    }
    let mut bytes: BTreeMap<String, u64> = BTreeMap::new();
    for family in commit::OTHER_FAMILIES {
        for entry in db.scan_prefix(family) {
            let (key, value) = entry.map_err(sled_error)?;
            if let Some(instance) = keys::instance_of(family, &key) {
                *bytes.entry(instance).or_default() += (key.len() + value.len()) as u64;
            }
        }
    }
    for (instance, other) in bytes {
        let key = keys::counters(&instance);
        let mut counters = match db.get(&key).map_err(sled_error)? {
            Some(value) => Counters::decode(&value)?,
            None => Counters::default(),
        };
        counters.other_bytes = other;
        db.insert(key, counters.encode()).map_err(sled_error)?;
    }
    db.insert(keys::meta(OTHER_COUNTED), vec![1])
        .map_err(sled_error)?;
    Ok(())
}

fn read_counters(db: &sled::Db) -> Result<BTreeMap<String, Counters>, String> {
    let mut counters = BTreeMap::new();
    for entry in db.scan_prefix(keys::COUNTERS) {
        let (key, value) = entry.map_err(|e| e.to_string())?;
        let name = String::from_utf8_lossy(&key[keys::COUNTERS.len()..]).into_owned();
        let value = Counters::decode(&value).map_err(|e| e.to_string())?;
        counters.insert(name, value);
    }
    Ok(counters)
}

/// Opens a store directory for inspection or offline administration (the daemon must not run).
pub fn open_offline(path: &Path) -> Result<Store, Error> {
    if !path.join("db").exists() {
        return Err(Error::Open {
            path: path.to_path_buf(),
            message: "no store here".into(),
        });
    }
    create_offline(path)
}

/// Opens a store directory offline, creating the store if there is none (`authorize` before
/// the daemon's first start).
pub fn create_offline(path: &Path) -> Result<Store, Error> {
    let options = StoreOptions {
        path: path.to_path_buf(),
        cache_bytes: 32 * 1024 * 1024,
        mode: OpenMode::Offline,
        journal_bytes: DEFAULT_JOURNAL_BYTES,
    };
    Store::open(&options, fdatasync()).map(|(store, _)| store)
}

/// Support for the tests (the unit tests here and the model test in `tests/props`).
#[doc(hidden)]
pub mod testing {
    use std::io;
    use std::path::Path;

    use super::JOURNAL_FILE;

    /// Writes `value` under `key` in the store at `path` (the daemon must not run), bypassing
    /// the committer and every record format: for tests of damaged records. The key is made
    /// of `family` (such as `b"r/"`), the instance, a NUL and `id`'s 16 bytes.
    pub fn write_raw_event_key(
        path: &Path,
        family: &[u8],
        instance: &str,
        id: ulid::Ulid,
        value: &[u8],
    ) -> Result<(), String> {
        let db = super::open_sled(path, 16 * 1024 * 1024)?;
        let mut key = super::keys::instance_prefix(family, instance);
        key.extend_from_slice(&id.to_bytes());
        db.insert(key, value).map_err(|e| e.to_string())?;
        db.flush().map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Copies the store's files at `from` to `to` as they are now, sled's first and the journal
    /// last, so that the copy's journal is at least as new as its sled files: what a crash at
    /// this moment would leave on disk (sled's unwritten buffers are not in it). Not a backup:
    /// sled may write while its files are copied.
    pub fn crash_image(from: &Path, to: &Path) -> io::Result<()> {
        copy_tree(from, to, Some(JOURNAL_FILE))?;
        std::fs::copy(from.join(JOURNAL_FILE), to.join(JOURNAL_FILE)).map(drop)
    }

    fn copy_tree(from: &Path, to: &Path, skip: Option<&str>) -> io::Result<()> {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            let name = entry.file_name();
            if skip.is_some_and(|skip| name == skip) {
                continue;
            }
            if entry.path().is_dir() {
                copy_tree(&entry.path(), &to.join(&name), None)?;
            } else {
                std::fs::copy(entry.path(), to.join(&name))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
