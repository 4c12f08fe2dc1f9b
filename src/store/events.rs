//! Events in any state, for `events list|show`: one event by id, and pages of events newest
//! first, by instance, account, state and acceptance time.
//!
//! An event's id is a ULID whose time is when it was accepted, and every family of an
//! instance's events (runs, `r/`, `e/`, `x/`, `h/`) is keyed by id: a time window is a key
//! range, read backwards. A page reads at most `limit` matches per family and instance, and
//! looks at most [`EventQuery::budget`] records per family and instance to find them (a filter
//! on account or state may skip many); where a family stopped at its budget, the page ends
//! there and its continuation starts below it. Runs and history pages hold many events under
//! one key, keyed at or below their first; the history's account markers (`g/`, see
//! [`super::history`]) let a page by account read only the seconds that account has events in.

use std::ops::Bound;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use ulid::Ulid;

use super::error::{Error, sled_error};
use super::history::{self, Attempt, HistoryV1};
use super::record::{DeadRecord, DeadV1, EventKind, EventRecord, EventV1, NotificationRecord};
use super::types::Event;
use super::{Store, keys, run};

/// Where an event is, as the store sees it (`held` is the configuration's view, in `ops`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventState {
    /// Due, or waiting for its first attempt.
    Pending,
    /// Failed at least once, waiting for its next attempt.
    Retrying,
    Dead,
    Delivered,
}

/// An event in any state, with what the store knows of it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub id: Ulid,
    pub instance: String,
    pub account: String,
    pub state: EventState,
    pub kind: EventKind,
    /// The envelope's `date`.
    pub date_ms: u64,
    /// When it is due (pending, retrying).
    pub due_ms: Option<u64>,
    /// Attempts so far (since the last replay).
    pub attempt_count: u32,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub dead_at_ms: Option<u64>,
    pub reason: Option<String>,
    pub delivered_ms: Option<u64>,
    /// The attempts kept (the last 20); filled by [`Store::event`] only.
    pub attempts: Vec<Attempt>,
    /// The stored body, to build the envelope from (pending, dead); [`Store::event`] only.
    pub raw: Option<Bytes>,
    /// Change events: the envelope's events (pending, dead); [`Store::event`] only.
    pub objects: Option<Bytes>,
    /// The envelope as sent (delivered); [`Store::event`] only.
    pub envelope: Option<Vec<u8>>,
}

impl StoredEvent {
    /// When it was accepted: its id's time.
    pub fn accepted_ms(&self) -> u64 {
        self.id.timestamp_ms()
    }

    /// The event as delivery would send it now (for its envelope).
    pub fn to_event(&self) -> Event {
        Event {
            id: self.id,
            instance: self.instance.clone(),
            account: self.account.clone(),
            kind: self.kind,
            raw: self.raw.clone(),
            objects: self.objects.clone(),
            date_ms: self.date_ms,
            age_base_ms: self.accepted_ms(),
            attempts: self.attempt_count,
            due_ms: self.due_ms.unwrap_or(0),
            refused_only: false,
        }
    }
}

/// What a page of events asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventQuery {
    /// The instances to read (the caller knows which exist: [`Store::instances`]).
    pub instances: Vec<String>,
    pub account: Option<String>,
    /// The states wanted; empty: all.
    pub states: Vec<EventState>,
    /// Accepted at or after, Unix ms.
    pub since_ms: Option<u64>,
    /// Accepted before, Unix ms.
    pub until_ms: Option<u64>,
    /// Ids below this one only: where the previous page ended.
    pub before: Option<Ulid>,
    pub limit: usize,
    /// Records one family of one instance may look at for this page.
    pub budget: usize,
}

/// A page of events, newest first, and where the next one starts (`None`: this was the last).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Page {
    pub events: Vec<StoredEvent>,
    pub next: Option<Ulid>,
}

impl Store {
    /// The instances the store holds anything for.
    pub fn instances(&self) -> Vec<String> {
        self.counters().keys().cloned().collect()
    }

    /// One event in any state, with its attempts and its body or envelope; looked up by key
    /// under each instance the store counts, never by a scan.
    pub fn event(&self, id: Ulid) -> Result<Option<StoredEvent>, Error> {
        for instance in self.instances() {
            if let Some(event) = self.event_of(&instance, id)? {
                return Ok(Some(event));
            }
        }
        Ok(None)
    }

    fn event_of(&self, instance: &str, id: Ulid) -> Result<Option<StoredEvent>, Error> {
        let db = &self.db;
        let mut found = match pending_record(db, instance, id)? {
            Some(record) => Some((from_pending(instance, id, &record), record)),
            None => match db.get(keys::dead(instance, id)).map_err(sled_error)? {
                Some(value) => {
                    let dead = DeadRecord::decode(&value)?;
                    let found = from_dead(instance, id, &dead);
                    Some((found, dead.event))
                }
                None => None,
            },
        };
        if let Some((mut event, record)) = found.take() {
            event.raw = body(db, &record)?;
            event.objects = record
                .changes
                .as_ref()
                .map(|c| Bytes::from(c.events.clone()));
            if let Some(value) = db.get(keys::attempts(instance, id)).map_err(sled_error)? {
                event.attempts = history::decode_attempts(&value)?;
            }
            return Ok(Some(event));
        }
        let prefix = keys::instance_prefix(keys::HISTORY, instance);
        let Some(page) = db.range(prefix..=keys::history(instance, id)).next_back() else {
            return Ok(None);
        };
        let (_, value) = page.map_err(sled_error)?;
        let value = history::open_page(&value)?;
        match run::find(&value, id)? {
            Some(record) => {
                let kept = HistoryV1::decode(record)?;
                let mut event = from_history(instance, id, &kept);
                event.attempts = kept.attempts;
                event.envelope = Some(kept.envelope);
                Ok(Some(event))
            }
            None => Ok(None),
        }
    }

    /// A page of events newest first (see the module's documentation for what it reads).
    pub fn events_page(&self, query: &EventQuery) -> Result<Page, Error> {
        let wants = |state: EventState| query.states.is_empty() || query.states.contains(&state);
        let lo = query.since_ms.map(|ms| Ulid::from_parts(ms, 0));
        let hi = match (
            query.before,
            query.until_ms.map(|ms| Ulid::from_parts(ms, 0)),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut scan = Scan {
            query,
            lo,
            hi,
            found: Vec::new(),
            floor: None,
        };
        for instance in &query.instances {
            if wants(EventState::Pending) || wants(EventState::Retrying) {
                let window = (scan.lo, scan.hi);
                scan.pages(&self.db, instance, keys::RUN, window, &mut Tally::default())?;
                for family in [keys::READY, keys::EVENT] {
                    scan.records(&self.db, instance, family)?;
                }
            }
            if wants(EventState::Dead) {
                scan.records(&self.db, instance, keys::DEAD)?;
            }
            if wants(EventState::Delivered) {
                match &query.account {
                    Some(account) => scan.history_by_account(&self.db, instance, account)?,
                    None => {
                        let window = (scan.lo, scan.hi);
                        let tally = &mut Tally::default();
                        scan.pages(&self.db, instance, keys::HISTORY, window, tally)?;
                    }
                }
            }
        }
        let Scan {
            mut found, floor, ..
        } = scan;
        found.retain(|e| floor.is_none_or(|floor| e.id >= floor));
        found.sort_by_key(|e| std::cmp::Reverse(e.id));
        found.truncate(query.limit);
        let next = match found.last() {
            Some(last) if found.len() >= query.limit => Some(last.id),
            _ => floor,
        };
        Ok(Page {
            events: found,
            next,
        })
    }
}

/// One page being read: the matches so far, and the lowest id a family stopped at for its
/// budget (the page is complete only above it).
struct Scan<'q> {
    query: &'q EventQuery,
    lo: Option<Ulid>,
    hi: Option<Ulid>,
    found: Vec<StoredEvent>,
    floor: Option<Ulid>,
}

impl Scan<'_> {
    fn bounds(&self, family: &[u8], instance: &str) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
        let key = |id: Ulid| {
            let mut key = keys::instance_prefix(family, instance);
            key.extend_from_slice(&id.to_bytes());
            key
        };
        let prefix = keys::instance_prefix(family, instance);
        let start = Bound::Included(self.lo.map_or_else(|| prefix.clone(), key));
        let end = Bound::Excluded(self.hi.map_or_else(|| keys::family_end(&prefix), key));
        (start, end)
    }

    fn matches(&self, event: &StoredEvent) -> bool {
        (self.query.states.is_empty() || self.query.states.contains(&event.state))
            && self
                .query
                .account
                .as_ref()
                .is_none_or(|a| *a == event.account)
    }

    /// The budget of a family ran out at `id`: nothing below it is known.
    fn stop_at(&mut self, id: Ulid) {
        self.floor = Some(self.floor.map_or(id, |floor| floor.max(id)));
    }

    fn records(&mut self, db: &sled::Db, instance: &str, family: &[u8]) -> Result<(), Error> {
        let (mut taken, mut looked) = (0, 0);
        for entry in db.range(self.bounds(family, instance)).rev() {
            let (key, value) = entry.map_err(sled_error)?;
            let Some(id) = keys::trailing_id(&key) else {
                continue;
            };
            if looked >= self.query.budget {
                self.stop_at(id);
                break;
            }
            looked += 1;
            let event = match family {
                f if f == keys::DEAD => from_dead(instance, id, &DeadRecord::decode(&value)?),
                _ => from_pending(instance, id, &EventRecord::decode(&value)?),
            };
            if self.matches(&event) {
                self.found.push(event);
                taken += 1;
                if taken >= self.query.limit {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Reads the members of a family of pages (runs, or the history's pages) accepted in
    /// `window` (from, before), newest first. `tally` counts across calls for one family and
    /// instance; answers whether the family is done for this page (its limit or budget met).
    fn pages(
        &mut self,
        db: &sled::Db,
        instance: &str,
        family: &[u8],
        (lo, hi): (Option<Ulid>, Option<Ulid>),
        tally: &mut Tally,
    ) -> Result<bool, Error> {
        let prefix = keys::instance_prefix(family, instance);
        let end = match hi {
            Some(hi) => Bound::Excluded([prefix.as_slice(), &hi.to_bytes()].concat()),
            None => Bound::Excluded(keys::family_end(&prefix)),
        };
        // A page keyed before the window may hold members inside it: start at the instance.
        for entry in db.range((Bound::Included(prefix.clone()), end)).rev() {
            let (key, value) = entry.map_err(sled_error)?;
            let value = match family == keys::HISTORY {
                true => history::open_page(&value)?,
                false => std::borrow::Cow::Borrowed(&value[..]),
            };
            let members: Vec<(Ulid, &[u8])> = run::members(&value).collect::<Result<_, _>>()?;
            for (id, record) in members.into_iter().rev() {
                if hi.is_some_and(|hi| id >= hi) {
                    continue;
                }
                if lo.is_some_and(|lo| id < lo) {
                    return Ok(false);
                }
                if tally.looked >= self.query.budget {
                    self.stop_at(id);
                    return Ok(true);
                }
                tally.looked += 1;
                let event = match family {
                    f if f == keys::HISTORY => {
                        from_history(instance, id, &HistoryV1::decode(record)?)
                    }
                    _ => from_pending(instance, id, &EventRecord::decode(record)?),
                };
                if self.matches(&event) {
                    self.found.push(event);
                    tally.taken += 1;
                    if tally.taken >= self.query.limit {
                        return Ok(true);
                    }
                }
            }
            let first = keys::trailing_id(&key);
            if let (Some(lo), Some(first)) = (lo, first)
                && first < lo
            {
                return Ok(false);
            }
        }
        Ok(false)
    }

    /// The history of one account: the pages of each second its markers name, newest first.
    fn history_by_account(
        &mut self,
        db: &sled::Db,
        instance: &str,
        account: &str,
    ) -> Result<(), Error> {
        let prefix = keys::history_account_prefix(instance, account);
        let key = |id: Ulid| [prefix.as_slice(), &id.to_bytes()].concat();
        let start = Bound::Included(
            self.lo
                .map_or_else(|| prefix.clone(), |lo| key(history::marker_second(lo))),
        );
        let end = Bound::Excluded(self.hi.map_or_else(|| keys::family_end(&prefix), key));
        let seconds: Vec<Ulid> = db
            .range::<Vec<u8>, _>((start, end))
            .keys()
            .rev()
            .map(|entry| entry.map(|key| keys::trailing_id(&key)))
            .filter_map(Result::transpose)
            .take(self.query.budget)
            .collect::<Result<_, _>>()
            .map_err(sled_error)?;
        let mut tally = Tally::default();
        for second in seconds {
            let next = Ulid::from_parts(second.timestamp_ms().saturating_add(1000), 0);
            let window = (
                Some(self.lo.map_or(second, |lo| lo.max(second))),
                Some(self.hi.map_or(next, |hi| hi.min(next))),
            );
            if self.pages(db, instance, keys::HISTORY, window, &mut tally)? {
                break;
            }
        }
        Ok(())
    }
}

/// Matches taken and records looked at, for one family of one instance.
#[derive(Default)]
struct Tally {
    taken: usize,
    looked: usize,
}

/// A pending event's record: a run member, or an `r/` or `e/` record.
fn pending_record(db: &sled::Db, instance: &str, id: Ulid) -> Result<Option<EventV1>, Error> {
    let prefix = keys::instance_prefix(keys::RUN, instance);
    if let Some(entry) = db.range(prefix..=keys::run(instance, id)).next_back() {
        let (_, value) = entry.map_err(sled_error)?;
        if let Some(record) = run::find(&value, id)? {
            return EventRecord::decode(record).map(Some);
        }
    }
    for key in [keys::ready(instance, id), keys::event(instance, id)] {
        if let Some(value) = db.get(key).map_err(sled_error)? {
            return EventRecord::decode(&value).map(Some);
        }
    }
    Ok(None)
}

/// The body an event's envelope carries: its own, or its notification's.
fn body(db: &sled::Db, event: &EventV1) -> Result<Option<Bytes>, Error> {
    if let Some(changes) = &event.changes {
        return Ok(Some(Bytes::from(changes.raw.clone())));
    }
    if let Some(raw) = &event.raw {
        return Ok(Some(Bytes::from(raw.clone())));
    }
    let Some(id) = event.notification.as_deref().and_then(|n| n.parse().ok()) else {
        return Ok(None);
    };
    match db.get(keys::notification(id)).map_err(sled_error)? {
        Some(value) => Ok(Some(Bytes::from(NotificationRecord::decode(&value)?.body))),
        None => Ok(None),
    }
}

fn from_pending(instance: &str, id: Ulid, event: &EventV1) -> StoredEvent {
    StoredEvent {
        id,
        instance: instance.to_owned(),
        account: event.account.clone(),
        state: if event.attempts > 0 {
            EventState::Retrying
        } else {
            EventState::Pending
        },
        kind: event.kind,
        date_ms: event.date_ms,
        due_ms: Some(event.due_ms),
        attempt_count: event.attempts,
        last_status: event.last_status,
        last_error: event.last_error.clone(),
        dead_at_ms: None,
        reason: None,
        delivered_ms: None,
        attempts: Vec::new(),
        raw: None,
        objects: None,
        envelope: None,
    }
}

fn from_dead(instance: &str, id: Ulid, dead: &DeadV1) -> StoredEvent {
    let mut event = from_pending(instance, id, &dead.event);
    event.state = EventState::Dead;
    event.due_ms = None;
    event.dead_at_ms = Some(dead.dead_at_ms);
    event.reason = Some(dead.reason.clone());
    event
}

fn from_history(instance: &str, id: Ulid, kept: &HistoryV1) -> StoredEvent {
    let last = kept.attempts.last();
    StoredEvent {
        id,
        instance: instance.to_owned(),
        account: kept.account.clone(),
        state: EventState::Delivered,
        kind: kept.kind,
        date_ms: kept.date_ms,
        due_ms: None,
        attempt_count: kept.attempts.len() as u32,
        last_status: last.and_then(|a| a.status),
        last_error: last.and_then(|a| a.error.clone()),
        dead_at_ms: None,
        reason: None,
        delivered_ms: Some(kept.delivered_ms),
        attempts: Vec::new(),
        raw: None,
        objects: None,
        envelope: None,
    }
}

/// What an instance's history holds, against what its counters say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryAudit {
    pub instance: String,
    pub counted_events: u64,
    pub counted_bytes: u64,
    /// Events in the history's pages and the bytes they are charged, summed from the pages.
    pub records: u64,
    pub bytes: u64,
    /// Pages keyed above their first member, or whose interval reaches into the next page's.
    pub misplaced_pages: u64,
    /// Events whose account has no marker for the second they were accepted in.
    pub unmarked: u64,
    /// Account markers (`g/` and their twins `f/`), including those a replay left without
    /// events.
    pub markers: u64,
    /// Markers without their twin.
    pub unpaired_markers: u64,
    /// Pages stored uncompressed (every page is sealed when its batch ends).
    pub unsealed_pages: u64,
}

impl HistoryAudit {
    /// Whether the history is as it must be: its counters equal its pages' sums, its pages are
    /// in order and compressed, and its markers paired, one for every event's account and
    /// second.
    pub fn is_sound(&self) -> bool {
        self.counted_events == self.records
            && self.counted_bytes == self.bytes
            && self.misplaced_pages == 0
            && self.unmarked == 0
            && self.unpaired_markers == 0
            && self.unsealed_pages == 0
    }
}

/// Sums every instance's history of a stopped daemon's store, against its counters, and
/// checks the pages' order and the account markers: for the tests after crashes and power
/// cuts (reads the whole history).
pub fn audit_history(path: &std::path::Path) -> Result<Vec<HistoryAudit>, Error> {
    audit(&super::open::open_sled(path, 16 * 1024 * 1024)?)
}

impl Store {
    /// [`audit_history`] of the open store, as of the last committed batch (for the model
    /// tests).
    #[doc(hidden)]
    pub fn history_audit(&self) -> Result<Vec<HistoryAudit>, Error> {
        audit(&self.db)
    }
}

fn audit(db: &sled::Db) -> Result<Vec<HistoryAudit>, Error> {
    let mut audits = Vec::new();
    for entry in db.scan_prefix(keys::COUNTERS) {
        let (key, value) = entry.map_err(sled_error)?;
        let instance = String::from_utf8_lossy(&key[keys::COUNTERS.len()..]).into_owned();
        let counters = super::record::Counters::decode(&value)?;
        let mut audit = HistoryAudit {
            instance: instance.clone(),
            counted_events: counters.history_events,
            counted_bytes: counters.history_bytes,
            ..HistoryAudit::default()
        };
        let mut previous_last: Option<Ulid> = None;
        for entry in db.scan_prefix(keys::instance_prefix(keys::HISTORY, &instance)) {
            let (key, value) = entry.map_err(sled_error)?;
            let page_key = keys::trailing_id(&key).unwrap_or_default();
            audit.unsealed_pages += u64::from(!history::is_sealed(&value));
            let page = history::open_page(&value)?;
            let members: Vec<(Ulid, &[u8])> = run::members(&page).collect::<Result<_, _>>()?;
            let first = members.first().map(|m| m.0);
            if first.is_none_or(|first| first < page_key)
                || previous_last.is_some_and(|last| last >= page_key)
            {
                audit.misplaced_pages += 1;
            }
            previous_last = members.last().map(|m| m.0);
            for (id, record) in members {
                let kept = HistoryV1::decode(record)?;
                audit.records += 1;
                audit.bytes += history::charged_bytes(record.len());
                let marker = history::marker(&instance, &kept.account, id);
                if db.get(marker).map_err(sled_error)?.is_none() {
                    audit.unmarked += 1;
                }
            }
        }
        let prefix = keys::instance_prefix(keys::HISTORY_BY_ACCOUNT, &instance);
        let (mut markers, mut paired) = (0u64, 0u64);
        for key in db.scan_prefix(&prefix).keys() {
            let key = key.map_err(sled_error)?;
            markers += 1;
            // `<account>\0<second>` after the prefix.
            let rest = &key[prefix.len()..];
            let account = rest
                .len()
                .checked_sub(17)
                .and_then(|end| std::str::from_utf8(&rest[..end]).ok());
            if let (Some(account), Some(second)) = (account, keys::trailing_id(&key)) {
                let twin = keys::history_by_second(&instance, second, account);
                paired += u64::from(db.get(twin).map_err(sled_error)?.is_some());
            }
        }
        let twins = keys::instance_prefix(keys::HISTORY_BY_SECOND, &instance);
        let twins = db.scan_prefix(twins).count() as u64;
        audit.markers = markers + twins;
        audit.unpaired_markers = (markers - paired) + twins.saturating_sub(paired);
        audits.push(audit);
    }
    Ok(audits)
}
