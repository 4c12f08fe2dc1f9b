//! Housekeeping a page at a time (held events purged, dead letters expired, a removed
//! instance's other records forgotten), catch-up after downtime, the heartbeat, and the close.

use ulid::Ulid;

use super::pending::EVENT_OVERHEAD_BYTES;
use super::view::BatchView;
use super::{Committer, Operation};
use crate::store::error::Error;
use crate::store::keys;
use crate::store::record::{EventKind, EventV1};
use crate::store::run;
use crate::store::schema::{SCHEMA_RUNS, SCHEMA_WITHOUT_RUNS, schema_value};
use crate::store::types::{Cutoffs, Event, to_event};

/// Deletes at most `limit` of the instance's pending events. Answers how many.
pub(in crate::store) struct PurgePending {
    pub instance: String,
    pub limit: usize,
}

impl Operation for PurgePending {
    type Reply = u64;

    fn apply(self, committer: &mut Committer, view: &mut BatchView<'_>) -> Result<u64, Error> {
        committer.purge_pending(view, &self.instance, self.limit)
    }
}

/// Deletes at most `limit` of the dead letters past their cutoff. Answers how many.
pub(in crate::store) struct ExpireDead {
    pub cutoffs: Cutoffs,
    pub limit: usize,
}

impl Operation for ExpireDead {
    type Reply = u64;

    fn apply(self, committer: &mut Committer, view: &mut BatchView<'_>) -> Result<u64, Error> {
        committer.expire_dead(view, &self.cutoffs, self.limit)
    }
}

/// Deletes at most `limit` of a removed instance's other records: its delivered history first,
/// then seen pairs, walk markers, cursors, object maps, change queues, kept attempts, merge
/// targets and credentials. Answers how many.
pub(in crate::store) struct ForgetInstance {
    pub instance: String,
    pub limit: usize,
}

impl Operation for ForgetInstance {
    type Reply = u64;

    fn apply(self, committer: &mut Committer, view: &mut BatchView<'_>) -> Result<u64, Error> {
        committer.forget_instance(view, &self.instance, self.limit)
    }
}

/// Gives every pair seen before of `instances` one `UNKNOWN` event. Answers the new events.
pub(in crate::store) struct CatchUp {
    pub instances: Vec<String>,
    pub now_ms: u64,
}

impl Operation for CatchUp {
    type Reply = Vec<Event>;

    fn apply(
        self,
        committer: &mut Committer,
        view: &mut BatchView<'_>,
    ) -> Result<Vec<Event>, Error> {
        committer.catch_up(view, &self.instances, self.now_ms)
    }
}

/// Records that the daemon is alive at `now_ms` (`m/alive`).
pub(in crate::store) struct Heartbeat {
    pub now_ms: u64,
}

impl Operation for Heartbeat {
    type Reply = ();

    fn apply(self, _: &mut Committer, view: &mut BatchView<'_>) -> Result<(), Error> {
        view.insert(keys::meta("alive"), self.now_ms.to_be_bytes().to_vec());
        Ok(())
    }
}

/// The last request: marks the layout a stopped store has (and, for the daemon, a clean
/// stop); the committer stops once it is committed.
pub(in crate::store) struct Close {
    pub mark_clean: bool,
    pub now_ms: u64,
}

impl Operation for Close {
    type Reply = ();

    fn apply(self, _: &mut Committer, view: &mut BatchView<'_>) -> Result<(), Error> {
        // The checkpoint after the last batch leaves the journal with nothing to apply: the
        // store says the oldest layout that reads it, so that an older build can open it again
        // (a rollback).
        let layout = match view.first_with_prefix(keys::RUN)? {
            Some(_) => SCHEMA_RUNS,
            None => SCHEMA_WITHOUT_RUNS,
        };
        view.insert(keys::meta("schema"), schema_value(layout));
        if self.mark_clean {
            let now = self.now_ms.to_be_bytes().to_vec();
            view.insert(keys::meta("alive"), now.clone());
            view.insert(keys::meta("clean"), now);
        }
        Ok(())
    }

    fn closes(&self) -> bool {
        true
    }
}

impl Committer {
    /// Removes up to `limit` of `instance`'s pending events, so that one request holds the
    /// writer for a bounded time; the caller asks again until fewer come back.
    fn purge_pending(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        limit: usize,
    ) -> Result<u64, Error> {
        let mut ids: Vec<Ulid> = instance_keys(view, [keys::READY, keys::EVENT], instance, limit)?
            .iter()
            .filter_map(|key| keys::trailing_id(key))
            .collect();
        let mut runs = view.scan_prefix(&keys::instance_prefix(keys::RUN, instance));
        while ids.len() < limit {
            let Some(entry) = runs.next() else { break };
            let (_, members) = entry?;
            for member in run::members(&members) {
                if ids.len() >= limit {
                    break;
                }
                ids.push(member?.0);
            }
        }
        drop(runs);
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
        for entry in view.range(keys::DEAD_BY_TIME.to_vec(), end) {
            if expired.len() >= limit {
                break;
            }
            let (key, _) = entry?;
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

    /// Removes up to `limit` of `instance`'s records that are neither events nor dead letters
    /// (called once those are gone: a removed instance's purge), so that nothing of it is
    /// left to take space.
    fn forget_instance(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        limit: usize,
    ) -> Result<u64, Error> {
        let history = self.forget_history(view, instance, limit)?;
        let limit = limit.saturating_sub(history as usize);
        let families = keys::OTHER_FAMILIES.into_iter().chain([keys::PAIR]);
        let mut doomed = instance_keys(view, families, instance, limit)?;
        for single in [keys::authorization(instance), keys::outage(instance)] {
            if doomed.len() < limit && view.get(&single)?.is_some() {
                doomed.push(single);
            }
        }
        let count = history + doomed.len() as u64;
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
            let mut accounts = Vec::new();
            for entry in view.scan_prefix(&prefix) {
                let (key, _) = entry?;
                accounts.push(String::from_utf8_lossy(&key[prefix.len()..]).into_owned());
            }
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
}

/// Up to `limit` of `instance`'s keys in `families`, in that order, as the batch would leave
/// them.
fn instance_keys<'f>(
    view: &BatchView<'_>,
    families: impl IntoIterator<Item = &'f [u8]>,
    instance: &str,
    limit: usize,
) -> Result<Vec<Vec<u8>>, Error> {
    let mut found = Vec::new();
    for family in families {
        for entry in view.scan_prefix(&keys::instance_prefix(family, instance)) {
            if found.len() >= limit {
                return Ok(found);
            }
            found.push(entry?.0);
        }
    }
    Ok(found)
}
