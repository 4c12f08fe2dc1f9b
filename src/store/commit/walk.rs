//! Change events: walk markers, cursors, credentials from `authorize`, a walk's pages (object
//! maps and envelopes), and each pair's FIFO queue of envelopes, of which only the head is due.

use ulid::Ulid;

use super::pending::{
    EVENT_OVERHEAD_BYTES, changes_event, find_pending, remove_record, u64_from, ulid_from,
};
use super::view::BatchView;
use super::{Committer, Operation};
use crate::store::error::Error;
use crate::store::keys;
use crate::store::record::{
    AuthorizationRecord, AuthorizationV1, ChangesV1, EventKind, EventRecord, EventV1, ObjectV1,
};
use crate::store::types::{Event, MapWrite, NewEnvelope, WalkPage};

/// Marks pairs as owing a walk, with a fresh token each.
pub(in crate::store) struct MarkWalk {
    pub pairs: Vec<(String, String)>,
}

impl Operation for MarkWalk {
    type Reply = ();

    fn apply(self, _: &mut Committer, view: &mut BatchView<'_>) -> Result<(), Error> {
        for (instance, account) in self.pairs {
            let token = Ulid::generate().to_bytes().to_vec();
            view.insert(keys::pair(keys::WALK, &instance, &account), token);
        }
        Ok(())
    }
}

/// Stores a pair's cursor; with `only_if_absent`, an existing cursor is kept.
pub(in crate::store) struct SetCursor {
    pub instance: String,
    pub account: String,
    pub cursor: String,
    pub only_if_absent: bool,
}

impl Operation for SetCursor {
    type Reply = ();

    fn apply(self, _: &mut Committer, view: &mut BatchView<'_>) -> Result<(), Error> {
        let key = keys::pair(keys::CURSOR, &self.instance, &self.account);
        if !self.only_if_absent || view.get(&key)?.is_none() {
            view.insert(key, self.cursor.into_bytes());
        }
        Ok(())
    }
}

/// One page of a walk in one batch. Answers the envelopes that became their queue's head.
pub(in crate::store) struct CommitWalkPage(pub Box<WalkPage>);

impl Operation for CommitWalkPage {
    type Reply = Vec<Event>;

    fn apply(
        self,
        committer: &mut Committer,
        view: &mut BatchView<'_>,
    ) -> Result<Vec<Event>, Error> {
        committer.commit_walk_page(view, *self.0)
    }
}

/// `authorize`: the instance's credentials, and its account's first cursor unless the account
/// already has one. Answers whether `cursor` was taken.
pub(in crate::store) struct Authorize {
    pub instance: String,
    pub authorization: AuthorizationV1,
    pub cursor: String,
}

impl Operation for Authorize {
    type Reply = bool;

    fn apply(self, _: &mut Committer, view: &mut BatchView<'_>) -> Result<bool, Error> {
        let cursor_key = keys::pair(keys::CURSOR, &self.instance, &self.authorization.account);
        let taken = view.get(&cursor_key)?.is_none();
        if taken {
            view.insert(cursor_key, self.cursor.into_bytes());
        }
        view.insert(
            keys::authorization(&self.instance),
            AuthorizationRecord::encode(&self.authorization),
        );
        Ok(taken)
    }
}

impl Committer {
    fn commit_walk_page(
        &mut self,
        view: &mut BatchView<'_>,
        page: WalkPage,
    ) -> Result<Vec<Event>, Error> {
        let (instance, account) = (page.instance.as_str(), page.account.as_str());
        if let Some(cursor) = page.cursor {
            view.insert(
                keys::pair(keys::CURSOR, instance, account),
                cursor.into_bytes(),
            );
        }
        for write in page.map {
            match write {
                MapWrite::Put(object) => {
                    let value = object.encode();
                    view.insert(
                        keys::object_id(instance, account, &object.id),
                        value.clone(),
                    );
                    view.insert(
                        keys::object_path(instance, account, &object.path_lower),
                        value,
                    );
                }
                MapWrite::RemovePath(path) => {
                    view.remove(keys::object_path(instance, account, &path));
                }
                MapWrite::RemoveId(id) => view.remove(keys::object_id(instance, account, &id)),
                MapWrite::RemoveTree(folder) => {
                    remove_tree(view, instance, account, &folder)?;
                }
            }
        }
        let mut heads = Vec::new();
        for envelope in page.envelopes {
            if let Some(head) = self.enqueue(view, instance, account, envelope, page.date_ms)? {
                heads.push(head);
            }
        }
        if let Some(token) = page.clear_marker {
            let key = keys::pair(keys::WALK, instance, account);
            if view.get(&key)?.as_deref() == Some(token.as_slice()) {
                view.remove(key);
            }
        }
        Ok(heads)
    }

    /// Appends an envelope to its pair's queue. Only the head is in the due index; if this one
    /// is the head, it is returned for hand-off.
    fn enqueue(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        account: &str,
        envelope: NewEnvelope,
        date_ms: u64,
    ) -> Result<Option<Event>, Error> {
        let seq_key = keys::pair(keys::QUEUE, instance, account);
        let seq = match view.get(&seq_key)? {
            Some(bytes) => u64_from(&bytes).unwrap_or(0),
            None => 0,
        };
        view.insert(seq_key, (seq + 1).to_be_bytes().to_vec());
        let is_head = view
            .first_with_prefix(&keys::queue_prefix(instance, account))?
            .is_none();
        let now = crate::time::now_ms();
        let bytes = (envelope.events.len() + envelope.raw.len()) as u64 + EVENT_OVERHEAD_BYTES;
        let event = EventV1 {
            account: account.to_owned(),
            kind: EventKind::Changes,
            notification: None,
            date_ms,
            age_base_ms: now,
            attempts: 0,
            due_ms: if is_head { now } else { u64::MAX },
            refused_only: true,
            last_status: None,
            last_error: None,
            bytes,
            changes: Some(ChangesV1 {
                events: envelope.events,
                raw: envelope.raw,
                seq: Some(seq),
            }),
            raw: None,
        };
        let id = self.next_id();
        // The head is due now; the others wait behind it, outside the due index.
        let key = match is_head {
            true => keys::ready(instance, id),
            false => keys::event(instance, id),
        };
        view.insert(key, EventRecord::encode(&event));
        view.insert(keys::queue(instance, account, seq), id.to_bytes().to_vec());
        let counter = self.counter_mut(instance);
        counter.pending_events += 1;
        counter.pending_bytes += event.bytes;
        Ok(is_head.then(|| changes_event(id, instance, &event)))
    }

    /// Removes a change envelope from its pair's queue; if it was the head, the next one
    /// becomes due now (recorded in `self.promoted`).
    pub(super) fn leave_queue(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        account: &str,
        seq: u64,
    ) -> Result<(), Error> {
        let prefix = keys::queue_prefix(instance, account);
        let key = keys::queue(instance, account, seq);
        let was_head = view
            .first_with_prefix(&prefix)?
            .is_some_and(|(first, _)| first == key);
        if view.get(&key)?.is_none() {
            return Ok(());
        }
        view.remove(key);
        if !was_head {
            return Ok(());
        }
        let Some((_, value)) = view.first_with_prefix(&prefix)? else {
            return Ok(());
        };
        let Some(next) = ulid_from(&value) else {
            return Ok(());
        };
        let Some((location, mut event)) = find_pending(view, instance, next)? else {
            return Ok(());
        };
        let now = crate::time::now_ms();
        remove_record(view, instance, next, location, event.due_ms)?;
        event.due_ms = now;
        view.insert(keys::ready(instance, next), EventRecord::encode(&event));
        self.promoted.push(now);
        Ok(())
    }
}

/// Forgets every object under `folder` (not the folder itself): both maps of each child, the
/// id only while it still points at that child.
fn remove_tree(
    view: &mut BatchView<'_>,
    instance: &str,
    account: &str,
    folder: &str,
) -> Result<(), Error> {
    let children =
        view.all_with_prefix(&keys::object_path(instance, account, &format!("{folder}/")))?;
    for (path_key, value) in children {
        let child = ObjectV1::decode(&value)?;
        let id_key = keys::object_id(instance, account, &child.id);
        let same = view
            .get(&id_key)?
            .map(|v| ObjectV1::decode(&v))
            .transpose()?
            .is_some_and(|known| known.path_lower == child.path_lower);
        if same {
            view.remove(id_key);
        }
        view.remove(path_key);
    }
    Ok(())
}
