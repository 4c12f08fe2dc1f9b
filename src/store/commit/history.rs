//! What the store keeps of an event's past: its attempts (`y/`), written with each failed
//! attempt's outcome, and the delivered history (`h/` + `g/`), written in the batch that
//! removes the delivered event; the history's bounds (bytes per instance, evicted oldest first
//! a few at a time; age, expired a page at a time), and its replay onto the queue.

use serde::Deserialize;
use serde_json::value::RawValue;
use ulid::Ulid;

use super::pending::EVENT_OVERHEAD_BYTES;
use super::view::BatchView;
use super::{Committer, Operation};
use crate::store::error::Error;
use crate::store::history::{self, Attempt, HistoryV1};
use crate::store::keys;
use crate::store::record::{ChangesV1, EventKind, EventV1};
use crate::store::types::{Cutoffs, DeliveredOutcome};

/// History records one delivered event may evict when its instance is over
/// `history_max_bytes`: more than one, so that the history shrinks back after a lower limit,
/// and few, so that no batch grows with the history.
pub(in crate::store) const EVICT_PER_DELIVERY: usize = 4;

/// Puts delivered events back on the queue from the history, with their ids, a fresh attempt
/// count and age. Answers how many.
pub(in crate::store) struct ReplayHistory {
    pub events: Vec<(String, Ulid)>,
    pub now_ms: u64,
}

impl Operation for ReplayHistory {
    type Reply = u64;

    fn apply(self, committer: &mut Committer, view: &mut BatchView<'_>) -> Result<u64, Error> {
        let mut count = 0;
        for (instance, id) in self.events {
            count += u64::from(committer.replay_history(view, &instance, id, self.now_ms)?);
        }
        Ok(count)
    }
}

/// Deletes at most `limit` history records accepted before their instance's cutoff. Answers
/// how many.
pub(in crate::store) struct ExpireHistory {
    pub cutoffs: Cutoffs,
    pub instances: Vec<String>,
    pub limit: usize,
}

impl Operation for ExpireHistory {
    type Reply = u64;

    fn apply(self, committer: &mut Committer, view: &mut BatchView<'_>) -> Result<u64, Error> {
        let mut doomed = Vec::new();
        for instance in &self.instances {
            let cutoff = Ulid::from_parts(self.cutoffs.for_instance(instance), 0);
            let start = keys::instance_prefix(keys::HISTORY, instance);
            for entry in view.range(start, keys::history(instance, cutoff)) {
                if doomed.len() >= self.limit {
                    break;
                }
                let (key, _) = entry?;
                if let Some(id) = keys::trailing_id(&key) {
                    doomed.push((instance.clone(), id));
                }
            }
        }
        let mut count = 0;
        for (instance, id) in doomed {
            count += u64::from(committer.take_history(view, &instance, id)?.is_some());
        }
        Ok(count)
    }
}

impl Committer {
    /// Adds `attempt` to the event's kept attempts (`y/`).
    pub(super) fn record_attempt(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        id: Ulid,
        attempt: Attempt,
    ) -> Result<(), Error> {
        let key = keys::attempts(instance, id);
        let mut attempts = match view.get(&key)? {
            Some(value) => history::decode_attempts(&value).unwrap_or_default(),
            None => Vec::new(),
        };
        history::push_attempt(&mut attempts, attempt);
        view.insert(key, history::encode_attempts(&attempts));
        Ok(())
    }

    /// Removes a delivered event and, when its instance keeps a history, keeps it there with
    /// its attempts and envelope, then evicts the oldest records past the instance's byte
    /// bound. The kept attempts are read only if earlier attempts failed.
    pub(super) fn deliver_into_history(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        id: Ulid,
        outcome: DeliveredOutcome,
    ) -> Result<(), Error> {
        let Some(event) = self.take_pending(view, instance, id)? else {
            return Ok(());
        };
        self.release_notification_of(view, &event)?;
        let attempts_key = keys::attempts(instance, id);
        let mut attempts = Vec::new();
        if event.attempts > 0 {
            if let (Some(_), Some(value)) = (&outcome.keep, view.get(&attempts_key)?) {
                attempts = history::decode_attempts(&value).unwrap_or_default();
            }
            view.remove(attempts_key);
        }
        let (Some(max_bytes), Some(envelope)) = (outcome.keep, outcome.envelope) else {
            return Ok(());
        };
        if let Some(attempt) = outcome.attempt {
            history::push_attempt(&mut attempts, attempt);
        }
        let record = HistoryV1 {
            account: event.account.clone(),
            kind: event.kind,
            date_ms: event.date_ms,
            delivered_ms: outcome.delivered_ms,
            attempts,
            envelope: envelope.to_vec(),
        }
        .encode();
        // A replayed event delivered again replaces its earlier record.
        self.take_history(view, instance, id)?;
        let charged = history::charged_bytes(instance, &event.account, id, record.len());
        view.insert(keys::history(instance, id), record);
        view.insert(
            keys::history_by_account(instance, &event.account, id),
            Vec::new(),
        );
        let counter = self.counter_mut(instance);
        counter.history_events += 1;
        counter.history_bytes += charged;
        self.evict_history(view, instance, max_bytes)
    }

    /// Evicts the instance's oldest history records while it is over `max_bytes`, at most
    /// [`EVICT_PER_DELIVERY`].
    fn evict_history(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        max_bytes: u64,
    ) -> Result<(), Error> {
        let prefix = keys::instance_prefix(keys::HISTORY, instance);
        for _ in 0..EVICT_PER_DELIVERY {
            if self.counter(instance).history_bytes <= max_bytes {
                break;
            }
            let Some((key, _)) = view.first_with_prefix(&prefix)? else {
                break;
            };
            let Some(id) = keys::trailing_id(&key) else {
                break;
            };
            self.take_history(view, instance, id)?;
        }
        Ok(())
    }

    /// Removes a history record and its index entry, and its share of the counters; returns
    /// it. A record that does not decode is removed all the same (its index entry cannot be
    /// named, and stays until the instance is forgotten).
    pub(super) fn take_history(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        id: Ulid,
    ) -> Result<Option<HistoryV1>, Error> {
        let key = keys::history(instance, id);
        let Some(value) = view.get(&key)?.map(|v| v.to_vec()) else {
            return Ok(None);
        };
        view.remove(key);
        let decoded = HistoryV1::decode(&value).ok();
        let account = decoded.as_ref().map_or("", |h| h.account.as_str());
        if decoded.is_some() {
            view.remove(keys::history_by_account(instance, account, id));
        }
        let charged = history::charged_bytes(instance, account, id, value.len());
        let counter = self.counter_mut(instance);
        counter.history_events = counter.history_events.saturating_sub(1);
        counter.history_bytes = counter.history_bytes.saturating_sub(charged);
        Ok(decoded)
    }

    /// Removes up to `limit` of a forgotten instance's history records (and their index
    /// entries). Answers how many records went.
    pub(super) fn forget_history(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        limit: usize,
    ) -> Result<u64, Error> {
        let mut ids = Vec::new();
        for entry in view.scan_prefix(&keys::instance_prefix(keys::HISTORY, instance)) {
            if ids.len() >= limit {
                break;
            }
            if let Some(id) = keys::trailing_id(&entry?.0) {
                ids.push(id);
            }
        }
        let mut count = 0;
        for id in ids {
            count += u64::from(self.take_history(view, instance, id)?.is_some());
        }
        if count < limit as u64 {
            // Index entries left by records that did not decode.
            let left = limit - count as usize;
            let prefix = keys::instance_prefix(keys::HISTORY_BY_ACCOUNT, instance);
            let stale: Vec<Vec<u8>> = view
                .scan_prefix(&prefix)
                .take(left)
                .map(|entry| entry.map(|(key, _)| key))
                .collect::<Result<_, _>>()?;
            count += stale.len() as u64;
            for key in stale {
                view.remove(key);
            }
        }
        Ok(count)
    }

    fn replay_history(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        id: Ulid,
        now_ms: u64,
    ) -> Result<bool, Error> {
        let Some(value) = view.get(&keys::history(instance, id))?.map(|v| v.to_vec()) else {
            return Ok(false);
        };
        let Some(event) = HistoryV1::decode(&value)
            .ok()
            .and_then(|h| queued_again(&h, now_ms))
        else {
            return Ok(false);
        };
        self.take_history(view, instance, id)?;
        self.insert_pending(view, instance, id, &event);
        Ok(true)
    }
}

/// The envelope's parts that came from the stored event, verbatim.
#[derive(Deserialize)]
struct Sent<'a> {
    #[serde(borrow)]
    message: SentMessage<'a>,
}

#[derive(Deserialize)]
struct SentMessage<'a> {
    #[serde(borrow)]
    raw: &'a RawValue,
    #[serde(borrow)]
    events: &'a RawValue,
}

/// The pending event that sends `history`'s envelope again: the same account, kind, date and
/// body, a fresh attempt count and age. `None` if the envelope cannot be read back.
fn queued_again(history: &HistoryV1, now_ms: u64) -> Option<EventV1> {
    let sent: Sent<'_> = serde_json::from_slice(&history.envelope).ok()?;
    let (raw, changes) = match history.kind {
        EventKind::Notify => (Some(sent.message.raw.get().to_owned()), None),
        EventKind::Unknown => (None, None),
        EventKind::Changes => (
            None,
            Some(ChangesV1 {
                events: sent.message.events.get().to_owned(),
                raw: sent.message.raw.get().to_owned(),
                seq: None,
            }),
        ),
    };
    Some(EventV1 {
        account: history.account.clone(),
        kind: history.kind,
        notification: None,
        date_ms: history.date_ms,
        age_base_ms: now_ms,
        attempts: 0,
        due_ms: now_ms,
        refused_only: true,
        last_status: None,
        last_error: None,
        bytes: history.envelope.len() as u64 + EVENT_OVERHEAD_BYTES,
        changes,
        raw,
    })
}
