//! The alert queue's operations: an alert queued (the oldest dropped past the cap), sent or
//! given up, rescheduled; a dead-letter tally turned into an alert; and the tally each dead
//! letter adds to, in its own batch.

use ulid::Ulid;

use super::view::BatchView;
use super::{Committer, Operation};
use crate::store::alerts::{
    self, AlertQueueRecord, AlertRecord, AlertV1, DeadTallyRecord, DeadTallyV1, MAX_QUEUED_ALERTS,
    NewAlert,
};
use crate::store::error::Error;
use crate::store::record::EventV1;

/// Queues an alert under a new id, greater than every id before it (so that the oldest alert
/// is the first in key order, even within a millisecond). Answers the id of the oldest alert
/// dropped to make room, if any.
pub(in crate::store) struct EnqueueAlert {
    pub alert: NewAlert,
}

impl Operation for EnqueueAlert {
    type Reply = Option<Ulid>;

    fn apply(
        self,
        committer: &mut Committer,
        view: &mut BatchView<'_>,
    ) -> Result<Option<Ulid>, Error> {
        let id = committer.next_id();
        committer.enqueue_alert(view, id, self.alert.record())
    }
}

/// Removes an alert (sent, given up or unreadable). Answers whether it was queued.
pub(in crate::store) struct FinishAlert {
    pub id: Ulid,
}

impl Operation for FinishAlert {
    type Reply = bool;

    fn apply(self, committer: &mut Committer, view: &mut BatchView<'_>) -> Result<bool, Error> {
        Ok(committer.take_alert(view, self.id)?.is_some())
    }
}

/// Records a failed attempt of an alert and its next due time.
pub(in crate::store) struct RetryAlert {
    pub id: Ulid,
    pub attempts: u32,
    pub due_ms: u64,
    pub last_error: String,
}

impl Operation for RetryAlert {
    type Reply = ();

    fn apply(self, committer: &mut Committer, view: &mut BatchView<'_>) -> Result<(), Error> {
        let Some(mut alert) = committer.take_alert(view, self.id)? else {
            return Ok(());
        };
        alert.attempts = self.attempts;
        alert.due_ms = self.due_ms;
        alert.last_error = Some(self.last_error);
        committer.put_alert(view, self.id, &alert);
        Ok(())
    }
}

/// Takes `count` dead letters off an instance's tally and queues the alert for them, in one
/// batch. Answers false (and changes nothing) if the tally holds fewer.
pub(in crate::store) struct TakeDeadTally {
    pub instance: String,
    pub count: u64,
    pub alert: Option<NewAlert>,
    pub now_ms: u64,
}

impl Operation for TakeDeadTally {
    type Reply = bool;

    fn apply(self, committer: &mut Committer, view: &mut BatchView<'_>) -> Result<bool, Error> {
        let key = alerts::tally_key(&self.instance);
        let Some(stored) = view.get(&key)?.map(|v| DeadTallyRecord::decode(&v)) else {
            return Ok(false);
        };
        let Ok(mut tally) = stored else {
            view.insert(key, DeadTallyRecord::encode(&DeadTallyV1::default()));
            return Ok(false);
        };
        if tally.count < self.count {
            return Ok(false);
        }
        tally.count -= self.count;
        if tally.count == 0 {
            tally.first_ms = 0;
        }
        if let Some(alert) = self.alert {
            // Only an alert sent starts the instance's quiet minute.
            tally.last_alert_ms = self.now_ms;
            let id = committer.next_id();
            committer.enqueue_alert(view, id, alert.record())?;
        }
        view.insert(key, DeadTallyRecord::encode(&tally));
        Ok(true)
    }
}

impl Committer {
    /// Queues `alert` under `id`, dropping the oldest alert first if the queue is full.
    fn enqueue_alert(
        &mut self,
        view: &mut BatchView<'_>,
        id: Ulid,
        alert: AlertV1,
    ) -> Result<Option<Ulid>, Error> {
        let mut dropped = None;
        if self.alert_queue.count >= MAX_QUEUED_ALERTS {
            let prefix = alerts::record_prefix();
            if let Some((key, _)) = view.first_with_prefix(prefix)?
                && let Some(oldest) = crate::store::keys::trailing_id(&key)
            {
                match self.take_alert(view, oldest) {
                    // A record that does not decode is removed all the same.
                    Ok(_) | Err(Error::Corrupt(_)) => {}
                    Err(err) => return Err(err),
                }
                dropped = Some(oldest);
            }
        }
        self.put_alert(view, id, &alert);
        Ok(dropped)
    }

    /// Writes an alert's record and due-index entry, and counts it.
    fn put_alert(&mut self, view: &mut BatchView<'_>, id: Ulid, alert: &AlertV1) {
        let record = AlertRecord::encode(alert);
        self.alert_queue.count += 1;
        self.alert_queue.bytes += alerts::alert_bytes(&record);
        view.insert(alerts::alert_key(id), record);
        view.insert(alerts::due_key(alert.due_ms, id), Vec::new());
        self.write_alert_queue(view);
    }

    /// Removes an alert's record and due-index entry, and its share of the count; returns it.
    fn take_alert(&mut self, view: &mut BatchView<'_>, id: Ulid) -> Result<Option<AlertV1>, Error> {
        let key = alerts::alert_key(id);
        let Some(bytes) = view.get(&key)?.map(|v| v.to_vec()) else {
            return Ok(None);
        };
        let alert = match AlertRecord::decode(&bytes) {
            Ok(alert) => alert,
            Err(err) => {
                // Not readable: its due entry cannot be found from it; the sender reached it
                // through that entry, and removes it by the id (see `drop_unreadable_alert`).
                self.drop_unreadable_alert(view, key);
                self.remove_due_entries_of(view, id)?;
                return Err(err);
            }
        };
        view.remove(key);
        view.remove(alerts::due_key(alert.due_ms, id));
        self.uncount_alert(view, &bytes);
        Ok(Some(alert))
    }

    /// Removes a record that does not decode, and its share of the count.
    fn drop_unreadable_alert(&mut self, view: &mut BatchView<'_>, key: Vec<u8>) {
        let len = view.get(&key).ok().flatten().map(|v| v.to_vec());
        if let Some(bytes) = len {
            self.uncount_alert(view, &bytes);
            view.remove(key);
        }
    }

    /// Removes the due-index entries of `id` (the queue is capped, so the scan is bounded).
    fn remove_due_entries_of(&mut self, view: &mut BatchView<'_>, id: Ulid) -> Result<(), Error> {
        let suffix = id.to_bytes();
        let mut found = Vec::new();
        for entry in view.scan_prefix(b"l/d") {
            let (key, _) = entry?;
            if key.ends_with(&suffix) {
                found.push(key);
            }
        }
        for key in found {
            view.remove(key);
        }
        Ok(())
    }

    fn uncount_alert(&mut self, view: &mut BatchView<'_>, record: &[u8]) {
        self.alert_queue.count = self.alert_queue.count.saturating_sub(1);
        self.alert_queue.bytes = self
            .alert_queue
            .bytes
            .saturating_sub(alerts::alert_bytes(record));
        self.write_alert_queue(view);
    }

    fn write_alert_queue(&mut self, view: &mut BatchView<'_>) {
        view.insert(
            alerts::queue_key(),
            AlertQueueRecord::encode(&self.alert_queue),
        );
        self.alert_queue_changed = true;
    }

    /// Adds a dead letter of `instance` to its tally (in the dead letter's own batch), so that
    /// the alert task alerts it, even after a crash. A tally that does not decode starts again.
    pub(super) fn tally_dead(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        id: Ulid,
        event: &EventV1,
        reason: &str,
        now_ms: u64,
    ) -> Result<(), Error> {
        let key = alerts::tally_key(instance);
        let mut tally = match view.get(&key)? {
            Some(bytes) => DeadTallyRecord::decode(&bytes).unwrap_or_default(),
            None => DeadTallyV1::default(),
        };
        if tally.count == 0 {
            tally.first_ms = now_ms;
        }
        tally.count = tally.count.saturating_add(1);
        tally.last_event = id.to_string();
        tally.account = event.account.clone();
        tally.last_status = event.last_status;
        tally.last_error = event.last_error.clone();
        tally.reason = reason.to_owned();
        view.insert(key, DeadTallyRecord::encode(&tally));
        Ok(())
    }
}
