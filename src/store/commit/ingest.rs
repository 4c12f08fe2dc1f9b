//! Ingest: a notification becomes events (or merges into a waiting one, or owes a walk), and
//! the pairs it names are remembered as seen, for catch-up.

use std::collections::HashSet;

use bytes::Bytes;
use ulid::Ulid;

use super::pending::{EVENT_OVERHEAD_BYTES, find_pending, pair_key, put_event, ulid_from};
use super::view::BatchView;
use super::{Committer, Operation};
use crate::store::error::Error;
use crate::store::keys;
use crate::store::record::{EventKind, EventV1, NotificationRecord};
use crate::store::types::{IngestTarget, Placed, to_event};

/// Seen pairs the committer remembers, so that ingest need not read `s/` for them; past this
/// many, further pairs are looked up in the store each time (memory stays bounded).
const SEEN_REMEMBERED: usize = 65_536;

/// Stores a notification (`id`, its body) for its targets; answers where it went for each.
pub(in crate::store) struct Ingest {
    pub id: Ulid,
    pub body: Bytes,
    pub accepted_ms: u64,
    pub targets: Vec<IngestTarget>,
}

impl Operation for Ingest {
    type Reply = Vec<Placed>;

    fn apply(
        self,
        committer: &mut Committer,
        view: &mut BatchView<'_>,
    ) -> Result<Vec<Placed>, Error> {
        committer.ingest(view, self.id, self.body, self.accepted_ms, self.targets)
    }
}

impl Committer {
    fn ingest(
        &mut self,
        view: &mut BatchView<'_>,
        notification: Ulid,
        body: Bytes,
        accepted_ms: u64,
        targets: Vec<IngestTarget>,
    ) -> Result<Vec<Placed>, Error> {
        let mut placed = Vec::with_capacity(targets.len());
        let body_bytes = body.len() as u64;
        // Each target that is not a change-events walk takes one reference to the body. With a
        // single one, the body goes into that event's record: no `n/` record to write now and
        // to read and remove at delivery.
        let references = targets.iter().filter(|t| !t.changes).count();
        let inline_raw = match references {
            1 => std::str::from_utf8(&body).ok().map(str::to_owned),
            _ => None,
        };
        let notification_ref = match inline_raw {
            Some(_) => None,
            None => Some(notification.to_string()),
        };
        for target in targets {
            self.mark_seen(view, &target.instance, &target.account, accepted_ms)?;
            if target.changes {
                // A fresh token: a walk already running clears the marker only if nothing
                // asked for a walk after it started.
                view.insert(
                    keys::pair(keys::WALK, &target.instance, &target.account),
                    notification.to_bytes().to_vec(),
                );
                placed.push(Placed::WalkPending {
                    instance: target.instance,
                    account: target.account,
                });
                continue;
            }
            let over_quota = self.counter(&target.instance).pending_bytes >= target.quota_bytes;
            if (target.coalesce || over_quota)
                && let Some(id) = self.merge(
                    view,
                    &target,
                    (notification_ref.clone(), inline_raw.clone()),
                    accepted_ms,
                    body_bytes,
                )?
            {
                placed.push(Placed::Merged { id });
                continue;
            }
            let event = EventV1 {
                account: target.account.clone(),
                kind: EventKind::Notify,
                notification: notification_ref.clone(),
                date_ms: accepted_ms,
                age_base_ms: accepted_ms,
                attempts: 0,
                due_ms: accepted_ms,
                refused_only: true,
                last_status: None,
                last_error: None,
                bytes: body_bytes + EVENT_OVERHEAD_BYTES,
                changes: None,
                raw: inline_raw.clone(),
            };
            let id = self.next_id();
            if over_quota {
                // Over its quota, the event waits in the store where later notifications merge
                // into it; otherwise it goes to delivery at once and is no merge target.
                self.insert_pending(view, &target.instance, id, &event);
                view.insert(
                    pair_key(&target.instance, &target.account),
                    id.to_bytes().to_vec(),
                );
                placed.push(Placed::Parked { id });
            } else {
                self.insert_created(view, &target.instance, id, &event);
                placed.push(Placed::Created(to_event(
                    id,
                    &target.instance,
                    &event,
                    Some(body.clone()),
                )));
            }
        }
        if notification_ref.is_some() && references > 0 {
            let record = NotificationRecord {
                accepted_ms,
                refs: references as u32,
                body: body.to_vec(),
            };
            view.insert(keys::notification(notification), record.encode());
        }
        Ok(placed)
    }

    fn mark_seen(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        account: &str,
        now_ms: u64,
    ) -> Result<(), Error> {
        let known = self.seen.get(instance);
        if known.is_some_and(|accounts| accounts.contains(account)) {
            return Ok(());
        }
        let key = keys::pair(keys::SEEN, instance, account);
        if view.get(&key)?.is_none() {
            view.insert(key, now_ms.to_be_bytes().to_vec());
        }
        // Only for a pair not known yet, so counting here costs nothing on the common path.
        if self.seen.values().map(HashSet::len).sum::<usize>() < SEEN_REMEMBERED {
            let accounts = self.seen.entry(instance.to_owned()).or_default();
            accounts.insert(account.to_owned());
        }
        Ok(())
    }

    /// Merges a notification (its `n/` id or its inline body) into the pair's waiting event, if
    /// there is one that may take it.
    fn merge(
        &mut self,
        view: &mut BatchView<'_>,
        target: &IngestTarget,
        (notification, raw): (Option<String>, Option<String>),
        accepted_ms: u64,
        body_bytes: u64,
    ) -> Result<Option<Ulid>, Error> {
        let pair_key = keys::pair(keys::PAIR, &target.instance, &target.account);
        let Some(id) = view.get(&pair_key)?.and_then(|v| ulid_from(&v)) else {
            return Ok(None);
        };
        let Some((location, mut event)) = find_pending(view, &target.instance, id)? else {
            view.remove(pair_key);
            return Ok(None);
        };
        if !event.refused_only {
            view.remove(pair_key);
            return Ok(None);
        }
        self.release_notification_of(view, &event)?;
        let new_bytes = body_bytes + EVENT_OVERHEAD_BYTES;
        let counter = self.counter_mut(&target.instance);
        counter.pending_bytes = counter
            .pending_bytes
            .saturating_sub(event.bytes)
            .saturating_add(new_bytes);
        event.notification = notification;
        event.raw = raw;
        event.date_ms = accepted_ms;
        event.bytes = new_bytes;
        put_event(view, &location, id, &event)?;
        Ok(Some(id))
    }
}
