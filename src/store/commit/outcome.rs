//! What delivery reports back: an event delivered, to be retried, or dead; a claim of events
//! to deliver; and the quarantine of an event that cannot be read.

use bytes::Bytes;
use ulid::Ulid;

use super::pending::{EVENT_OVERHEAD_BYTES, find_pending, pair_key, remove_record, rewrite_run};
use super::view::BatchView;
use super::{Committer, Operation};
use crate::store::error::Error;
use crate::store::history::Attempt;
use crate::store::keys;
use crate::store::record::{
    DeadRecord, DeadV1, EventKind, EventRecord, EventV1, NotificationRecord, QUARANTINED,
};
use crate::store::run;
use crate::store::types::{Claimed, DeadLetter, DeliveredOutcome, Retry, to_event};

/// Removes a delivered event. Answers, for a change envelope, the due time of the next one of
/// its pair, now its queue's head.
pub(in crate::store) struct Delivered {
    pub instance: String,
    pub id: Ulid,
    pub outcome: DeliveredOutcome,
}

impl Operation for Delivered {
    type Reply = Option<u64>;

    fn apply(
        self,
        committer: &mut Committer,
        view: &mut BatchView<'_>,
    ) -> Result<Option<u64>, Error> {
        committer.promoted.clear();
        committer.deliver_into_history(view, &self.instance, self.id, self.outcome)?;
        Ok(committer.promoted.drain(..).min())
    }

    /// A removal lost in a crash only repeats a delivery (see [`super::OUTCOME_SYNC_DELAY`]).
    fn may_defer_sync(&self) -> bool {
        true
    }

    fn is_delivery(&self) -> bool {
        true
    }
}

/// Records a failed attempt and when to try again.
pub(in crate::store) struct Reschedule {
    pub instance: String,
    pub id: Ulid,
    pub retry: Retry,
    /// The failed attempt, kept with the event (`y/`).
    pub attempt: Option<Attempt>,
}

impl Operation for Reschedule {
    type Reply = ();

    fn apply(self, committer: &mut Committer, view: &mut BatchView<'_>) -> Result<(), Error> {
        if committer.reschedule(view, &self.instance, self.id, self.retry)?
            && let Some(attempt) = self.attempt
        {
            committer.record_attempt(view, &self.instance, self.id, attempt)?;
        }
        Ok(())
    }
}

/// Moves an event to the dead letters. Answers like [`Delivered`].
pub(in crate::store) struct MoveToDead {
    pub instance: String,
    pub id: Ulid,
    pub dead: DeadLetter,
    pub now_ms: u64,
    /// The last attempt, kept with the dead letter (`y/`); none when it was not tried again.
    pub attempt: Option<Attempt>,
}

impl Operation for MoveToDead {
    type Reply = Option<u64>;

    fn apply(
        self,
        committer: &mut Committer,
        view: &mut BatchView<'_>,
    ) -> Result<Option<u64>, Error> {
        committer.promoted.clear();
        if committer.dead_letter(view, &self.instance, self.id, self.dead, self.now_ms)?
            && let Some(attempt) = self.attempt
        {
            committer.record_attempt(view, &self.instance, self.id, attempt)?;
        }
        Ok(committer.promoted.drain(..).min())
    }
}

/// Takes events for delivery: they stop being merge targets. Answers them, and apart those
/// that cannot be read.
pub(in crate::store) struct Claim {
    pub instance: String,
    pub ids: Vec<Ulid>,
}

impl Operation for Claim {
    type Reply = Claimed;

    fn apply(self, committer: &mut Committer, view: &mut BatchView<'_>) -> Result<Claimed, Error> {
        committer.claim(view, &self.instance, self.ids)
    }

    /// A claim only stops in-flight events from being merge targets, which a restart undoes
    /// anyway: every event in flight is pending again.
    fn may_defer_sync(&self) -> bool {
        true
    }
}

/// A pending event the store cannot read (its record, or its notification's body) becomes a
/// dead letter with reason `corrupt`, keeping the unreadable bytes. Answers whether it was
/// still pending.
pub(in crate::store) struct Quarantine {
    pub instance: String,
    pub id: Ulid,
    pub problem: String,
    pub now_ms: u64,
}

impl Operation for Quarantine {
    type Reply = bool;

    fn apply(self, committer: &mut Committer, view: &mut BatchView<'_>) -> Result<bool, Error> {
        committer.quarantine(view, &self.instance, self.id, self.problem, self.now_ms)
    }
}

impl Committer {
    fn reschedule(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        id: Ulid,
        retry: Retry,
    ) -> Result<bool, Error> {
        let Some((location, mut event)) = find_pending(view, instance, id)? else {
            return Ok(false);
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
        Ok(true)
    }

    fn dead_letter(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        id: Ulid,
        dead: DeadLetter,
        now_ms: u64,
    ) -> Result<bool, Error> {
        let Some(mut event) = self.take_pending(view, instance, id)? else {
            return Ok(false);
        };
        event.attempts = dead.attempts;
        event.last_status = dead.last_status;
        event.last_error = dead.last_error;
        let counter = self.counter_mut(instance);
        counter.dead_events += 1;
        counter.dead_bytes += event.bytes;
        self.tally_dead(view, instance, id, &event, &dead.reason, now_ms)?;
        let record = DeadV1 {
            event,
            dead_at_ms: now_ms,
            reason: dead.reason,
            quarantined: None,
        };
        view.insert(keys::dead(instance, id), DeadRecord::encode(&record));
        view.insert(keys::dead_by_time(now_ms, instance, id), Vec::new());
        Ok(true)
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
        self.tally_dead(view, instance, id, &event, QUARANTINED, now_ms)?;
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
                    let entry = view.scan_prefix(&due).find_map(|entry| match entry {
                        Ok((k, _))
                            if keys::parse_due(due.len(), &k).map(|(_, i)| i) == Some(id) =>
                        {
                            Some(Ok(k))
                        }
                        Ok(_) => None,
                        Err(err) => Some(Err(err)),
                    });
                    if let Some(entry) = entry {
                        view.remove(entry?);
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
}
