//! The bookkeeping of pending events that the operations share: where an event's record is
//! (a run member, or an `r/` or `e/` record), adding and removing events with their index
//! entries, merge targets and counters, and the notifications their bodies are shared in.

use bytes::Bytes;
use ulid::Ulid;

use super::Committer;
use super::view::BatchView;
use crate::store::error::Error;
use crate::store::keys;
use crate::store::record::{EventRecord, EventV1, NotificationRecord};
use crate::store::run;
use crate::store::types::{Event, to_event};

/// Bytes an event is charged beyond its raw body (its records and index entries).
pub(super) const EVENT_OVERHEAD_BYTES: u64 = 256;

impl Committer {
    /// A new event id, greater than every id given before (see [`run`]).
    pub(super) fn next_id(&mut self) -> Ulid {
        let fresh = Ulid::generate();
        self.last_id = match fresh > self.last_id {
            true => fresh,
            // The clock went back, or the same millisecond drew a smaller random part.
            false => Ulid(self.last_id.0.saturating_add(1)),
        };
        self.last_id
    }

    /// Adds an event that is due now (an `r/` record).
    pub(super) fn insert_pending(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        id: Ulid,
        e: &EventV1,
    ) {
        view.insert(keys::ready(instance, id), EventRecord::encode(e));
        self.count_pending(instance, e);
    }

    /// Adds an event that ingest just created (`id` from [`Committer::next_id`]) and hands to
    /// delivery: a member of the instance's run in this batch, or of a new run once that one is
    /// full; an event too large for a run gets an `r/` record of its own.
    pub(super) fn insert_created(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        id: Ulid,
        e: &EventV1,
    ) {
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
    pub(super) fn take_pending(
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
    pub(super) fn remove_pending(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        id: Ulid,
    ) -> Result<bool, Error> {
        let Some(event) = self.take_pending(view, instance, id)? else {
            return Ok(false);
        };
        self.release_notification_of(view, &event)?;
        if event.attempts > 0 {
            view.remove(keys::attempts(instance, id));
        }
        Ok(true)
    }

    /// Removes the pair entry if it still points at `id`.
    pub(super) fn unlink_pair(
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
    pub(super) fn release_notification_of(
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
    pub(super) fn release_notification(
        &mut self,
        view: &mut BatchView<'_>,
        id: Ulid,
    ) -> Result<(), Error> {
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

    pub(super) fn notification_body(
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
}

/// Where a pending event's record is.
pub(super) enum Location {
    /// A record of its own (the key): `r/` when it is due now, `e/` when it waits.
    Record(Vec<u8>),
    /// A member of the run at this key (`z/`).
    Run(Vec<u8>),
}

/// A pending event and where it is: in a run, or in an `r/` or `e/` record of its own.
pub(super) fn find_pending(
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
pub(super) fn remove_record(
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
pub(super) fn put_event(
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
pub(super) fn rewrite_run(
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

pub(super) fn u64_from(bytes: &[u8]) -> Option<u64> {
    let array: [u8; 8] = bytes.try_into().ok()?;
    Some(u64::from_be_bytes(array))
}

pub(super) fn changes_event(id: Ulid, instance: &str, event: &EventV1) -> Event {
    let raw = event.changes.as_ref().map(|c| Bytes::from(c.raw.clone()));
    to_event(id, instance, event, raw)
}

pub(super) fn ulid_from(bytes: &[u8]) -> Option<Ulid> {
    let array: [u8; 16] = bytes.try_into().ok()?;
    Some(Ulid::from_bytes(array))
}

pub(super) fn pair_key(instance: &str, account: &str) -> Vec<u8> {
    keys::pair(keys::PAIR, instance, account)
}
