//! Dead letters taken back: replayed onto the queue, or purged.

use ulid::Ulid;

use super::view::BatchView;
use super::{Committer, Operation};
use crate::store::error::Error;
use crate::store::keys;
use crate::store::record::{DeadRecord, DeadV1, QUARANTINED};

/// Puts dead letters back on the queue with a fresh attempt count and age. Answers how many.
pub(in crate::store) struct ReplayDead {
    pub letters: Vec<(String, Ulid)>,
    pub now_ms: u64,
}

impl Operation for ReplayDead {
    type Reply = u64;

    fn apply(self, committer: &mut Committer, view: &mut BatchView<'_>) -> Result<u64, Error> {
        let mut count = 0;
        for (instance, id) in self.letters {
            count += u64::from(committer.replay(view, &instance, id, self.now_ms)?);
        }
        Ok(count)
    }
}

/// Deletes dead letters. Answers how many.
pub(in crate::store) struct PurgeDead {
    pub letters: Vec<(String, Ulid)>,
}

impl Operation for PurgeDead {
    type Reply = u64;

    fn apply(self, committer: &mut Committer, view: &mut BatchView<'_>) -> Result<u64, Error> {
        let mut count = 0;
        for (instance, id) in self.letters {
            count += u64::from(committer.purge_dead(view, &instance, id)?);
        }
        Ok(count)
    }
}

impl Committer {
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
        // A fresh attempt count: the attempts kept go with the old one.
        view.remove(keys::attempts(instance, id));
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

    pub(super) fn purge_dead(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        id: Ulid,
    ) -> Result<bool, Error> {
        let Some(dead) = self.take_dead(view, instance, id)? else {
            return Ok(false);
        };
        self.release_notification_of(view, &dead.event)?;
        view.remove(keys::attempts(instance, id));
        Ok(true)
    }

    /// Removes a dead letter and its index entry, and its share of the counters; returns it.
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
}
