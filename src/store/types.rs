//! The store's public types: how to open it, and what its requests take and answer.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::Bytes;
use ulid::Ulid;

use super::record::{self, EventKind, EventV1};

/// Where and how to open the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub path: PathBuf,
    pub cache_bytes: u64,
    pub mode: OpenMode,
    /// The journal's size when it is created ([`super::DEFAULT_JOURNAL_BYTES`]; tests use less, to
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

/// One page of a cursor walk, committed in one batch (a crash repeats a page, never skips one).
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
    pub(super) fn for_instance(&self, instance: &str) -> u64 {
        self.by_instance
            .get(instance)
            .copied()
            .unwrap_or(self.otherwise)
    }

    pub(super) fn latest(&self) -> u64 {
        self.by_instance
            .values()
            .copied()
            .chain([self.otherwise])
            .max()
            .unwrap_or(0)
    }
}

/// The event delivery sees, from its stored record.
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

/// What a delivery leaves behind: the attempt that delivered, and whether and how the
/// instance keeps delivered events ([`super::Store::delivered_with`]).
#[derive(Debug, Clone, Default)]
pub struct DeliveredOutcome {
    /// When the 2xx came in, Unix ms.
    pub delivered_ms: u64,
    /// The delivering attempt.
    pub attempt: Option<super::history::Attempt>,
    /// The envelope exactly as sent.
    pub envelope: Option<Bytes>,
    /// `Some(history_max_bytes)` when the instance keeps a history (`history` above 0s).
    pub keep: Option<u64>,
}
