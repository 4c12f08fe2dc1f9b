//! What the store keeps of an event's past: its attempts (`y/`), written with each failed
//! attempt's outcome, and the delivered history (pages `h/` and account markers `g/`, see
//! [`crate::store::history`]), written in the batch that removes the delivered event; the
//! history's bounds (bytes per instance, the oldest pages evicted first; age, expired a page
//! at a time), and its replay onto the queue.

use serde::Deserialize;
use serde_json::value::RawValue;
use ulid::Ulid;

use super::pending::EVENT_OVERHEAD_BYTES;
use super::view::{BatchView, KeyValue};
use super::{Committer, Operation};
use crate::store::error::Error;
use crate::store::history::{self, Attempt, HistoryV1, MAX_PAGE_BYTES};
use crate::store::keys;
use crate::store::record::{ChangesV1, EventKind, EventV1};
use crate::store::run;
use crate::store::types::{Cutoffs, DeliveredOutcome};

/// Marker pairs one removal of old pages takes at most (the rest go with the next).
const MARKERS_PER_REMOVAL: usize = 256;

/// Pages one delivered event may evict when its instance is over `history_max_bytes`: more
/// than one, so that the history shrinks back after a lower limit, and few, so that no batch
/// grows with the history.
pub(in crate::store) const EVICT_PER_DELIVERY: usize = 2;

/// Marker keys the committer remembers writing or finding, at most (then it forgets them all).
const KNOWN_MARKERS: usize = 4096;

/// Where an instance's events go in one batch, in id order (see
/// [`Committer::keep_in_history`]).
#[derive(Default)]
pub(super) struct Placement {
    /// The last event id of the instance's greatest page when the placement began.
    frontier: Option<Ulid>,
    /// The page the last event past `frontier` went to.
    open: Option<Vec<u8>>,
}

impl Placement {
    fn start(view: &BatchView<'_>, instance: &str) -> Result<Placement, Error> {
        let prefix = keys::instance_prefix(keys::HISTORY, instance);
        let last = keys::history(instance, Ulid(u128::MAX));
        // Every event is looked up when the greatest page does not decode (its error is
        // logged then), or when this batch removed it (the view does not say what is before).
        let everything = Some(Ulid(u128::MAX));
        let frontier = match view.last_at_or_before(&prefix, &last)? {
            Some((_, value)) => match history::open_page(&value).and_then(|p| run::last_id(&p)) {
                Ok(last) => last,
                Err(_) => everything,
            },
            None => match view.scan_prefix(&prefix).next().transpose()? {
                Some(_) => everything,
                None => None,
            },
        };
        Ok(Placement {
            frontier,
            open: None,
        })
    }
}

/// A delivered event the current batch keeps: put in its page once the batch's requests are
/// applied.
pub(super) struct KeptDelivery {
    instance: String,
    id: Ulid,
    account: String,
    record: Vec<u8>,
    /// The instance's `history_max_bytes`.
    max_bytes: u64,
}

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

/// Deletes the history's events accepted before their instance's cutoff, oldest pages first,
/// stopping once `limit` are gone, and the account markers of the seconds passed. Answers how
/// many records (events and marker pairs).
pub(in crate::store) struct ExpireHistory {
    pub cutoffs: Cutoffs,
    pub instances: Vec<String>,
    pub limit: usize,
}

impl Operation for ExpireHistory {
    type Reply = u64;

    fn apply(self, committer: &mut Committer, view: &mut BatchView<'_>) -> Result<u64, Error> {
        let mut count = 0;
        for instance in &self.instances {
            let cutoff = Ulid::from_parts(self.cutoffs.for_instance(instance), 0);
            while count < self.limit as u64 {
                let Some((key, value)) = first_expired_page(view, instance, cutoff)? else {
                    break;
                };
                count += committer.remove_members(view, instance, key, &value, Some(cutoff))?;
            }
            // Marker pairs count as one record each, so that a backlog of them takes more pages.
            count += committer.remove_passed_markers(view, instance)? / 2;
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
    /// its attempts and envelope, then evicts the oldest pages past the instance's byte bound.
    /// The kept attempts are read only if earlier attempts failed.
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
        self.delivered.push(KeptDelivery {
            instance: instance.to_owned(),
            id,
            account: event.account,
            record,
            max_bytes,
        });
        Ok(())
    }

    /// Puts the batch's delivered events in their pages, in id order per instance (deliveries
    /// finish in any order; in order, a batch's events share pages), then evicts the oldest
    /// pages past each instance's byte bound.
    pub(super) fn keep_delivered(&mut self, view: &mut BatchView<'_>) -> Result<(), Error> {
        let mut delivered = std::mem::take(&mut self.delivered);
        delivered.sort_by(|a, b| (&a.instance, a.id).cmp(&(&b.instance, b.id)));
        let result = delivered
            .chunk_by(|a, b| a.instance == b.instance)
            .try_for_each(|group| self.keep_instance_delivered(view, group));
        delivered.clear();
        self.delivered = delivered;
        let sealed = self.seal_placed_pages(view);
        result.and(sealed)
    }

    /// Places one instance's kept deliveries (in id order), then evicts what is past its bound.
    fn keep_instance_delivered(
        &mut self,
        view: &mut BatchView<'_>,
        group: &[KeptDelivery],
    ) -> Result<(), Error> {
        let Some(first) = group.first() else {
            return Ok(());
        };
        let instance = first.instance.as_str();
        let mut place = Placement::start(view, instance)?;
        for kept in group {
            let placed = self.keep_in_history(
                view,
                &mut place,
                instance,
                kept.id,
                &kept.account,
                &kept.record,
            );
            match placed {
                // A page that does not decode: this event is not kept, nothing else is lost.
                Err(Error::Corrupt(message)) => {
                    tracing::warn!(instance, id = %kept.id, error = %message, "a delivered event is not kept in the history");
                }
                other => other?,
            }
        }
        let pages = EVICT_PER_DELIVERY * group.len();
        self.evict_history(view, instance, first.max_bytes, pages)
    }

    /// Stores the pages this batch placed events in compressed (see [`history::seal_page`]).
    fn seal_placed_pages(&mut self, view: &mut BatchView<'_>) -> Result<(), Error> {
        for key in std::mem::take(&mut self.placed_pages) {
            let page = match view.get(&key)? {
                Some(page) if !history::is_sealed(&page) => history::seal_page(&page),
                _ => continue,
            };
            view.insert(key, page);
        }
        Ok(())
    }

    /// Puts a history record in its page (see [`crate::store::history`] for which), with its
    /// account's marker. A record the page held for the same id (an event replayed and
    /// delivered again) is replaced. Called in id order per instance; `place` saves looking
    /// the page up for events past every page the batch started with.
    fn keep_in_history(
        &mut self,
        view: &mut BatchView<'_>,
        place: &mut Placement,
        instance: &str,
        id: Ulid,
        account: &str,
        record: &[u8],
    ) -> Result<(), Error> {
        let beyond = place.frontier.is_none_or(|frontier| id > frontier);
        let (placed_in, last) = match (beyond, place.open.take()) {
            // The greatest page key at or before `id` is that of the page the last event went
            // to, and `id` comes after all of it: every page the batch started with ends
            // before `id`, and no other was made.
            (true, Some(open)) => {
                if view.written_len(&open) + run::MEMBER_BYTES + record.len() <= MAX_PAGE_BYTES {
                    run::append(view.written_mut(&open), id, record);
                    (open, true)
                } else {
                    (self.new_page(view, instance, id, record), true)
                }
            }
            _ => self.place_in_history(view, instance, id, record)?,
        };
        // Only a page `id` ended can take the next events at its end.
        if beyond && last {
            place.open = Some(placed_in);
        }
        self.count_kept(instance, record.len());
        self.mark(view, instance, account, id)
    }

    /// Starts a page of its own for `id`; answers its key.
    fn new_page(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        id: Ulid,
        record: &[u8],
    ) -> Vec<u8> {
        let own_key = keys::history(instance, id);
        let mut fresh = Vec::with_capacity(1 + run::MEMBER_BYTES + record.len());
        run::append(&mut fresh, id, record);
        self.placed_pages.insert(own_key.clone());
        view.insert(own_key.clone(), fresh);
        own_key
    }

    fn count_kept(&mut self, instance: &str, record_len: usize) {
        let counter = self.counter_mut(instance);
        counter.history_events += 1;
        counter.history_bytes += history::charged_bytes(record_len);
    }

    /// Writes the marker of `id`'s account and second unless it is known to be there.
    fn mark(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        account: &str,
        id: Ulid,
    ) -> Result<(), Error> {
        let marker = history::marker(instance, account, id);
        if self.known_markers.contains(&marker) {
            return Ok(());
        }
        if view.get(&marker)?.is_none() {
            view.insert(marker.clone(), Vec::new());
            view.insert(history::marker_by_second(instance, account, id), Vec::new());
        }
        if self.known_markers.len() >= KNOWN_MARKERS {
            self.known_markers.clear();
        }
        self.known_markers.insert(marker);
        Ok(())
    }

    /// Puts a record in the page the greatest key at or before its id names, or in a page of
    /// its own; answers the key of the page it went to, and whether it is that page's last.
    fn place_in_history(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        id: Ulid,
        record: &[u8],
    ) -> Result<(Vec<u8>, bool), Error> {
        let prefix = keys::instance_prefix(keys::HISTORY, instance);
        let own_key = keys::history(instance, id);
        // A page that does not open or decode: its interval cannot be known, and the event
        // is not kept rather than risk a page that overlaps it (the error says so).
        let page = match view.last_at_or_before(&prefix, &own_key)? {
            Some((key, value)) => {
                let page = history::open_page(&value)?;
                Some((key, run::last_id(&page)?, page.len()))
            }
            None => None,
        };
        Ok(match page {
            Some((key, Some(last), _)) if last >= id => {
                let value = match view.get(&key)? {
                    Some(value) => history::open_page(&value)?.into_owned(),
                    None => Vec::new(),
                };
                let (joined, old) = run::insert(&value, id, record)?;
                if let Some(old) = old {
                    // A record replaced: it is counted again by the caller.
                    let counter = self.counter_mut(instance);
                    counter.history_events = counter.history_events.saturating_sub(1);
                    counter.history_bytes = counter
                        .history_bytes
                        .saturating_sub(history::charged_bytes(old.len()));
                }
                let (left, right) = match joined.len() > MAX_PAGE_BYTES {
                    true => split_at(&joined, id)?,
                    false => (joined, Vec::new()),
                };
                self.placed_pages.insert(key.clone());
                view.insert(key.clone(), left);
                if !right.is_empty() {
                    self.placed_pages.insert(own_key.clone());
                    view.insert(own_key.clone(), right);
                }
                // Inside the page: never its last.
                (key, false)
            }
            // A page this batch placed events in is still open (not sealed) in the view.
            Some((key, _, len))
                if self.placed_pages.contains(&key)
                    && len + run::MEMBER_BYTES + record.len() <= MAX_PAGE_BYTES =>
            {
                run::append(view.written_mut(&key), id, record);
                (key, true)
            }
            _ => (self.new_page(view, instance, id, record), true),
        })
    }

    /// Evicts the instance's oldest pages while it is over `max_bytes`, at most `pages`.
    fn evict_history(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        max_bytes: u64,
        pages: usize,
    ) -> Result<(), Error> {
        let prefix = keys::instance_prefix(keys::HISTORY, instance);
        let mut evicted = false;
        for _ in 0..pages {
            if self.counter(instance).history_bytes <= max_bytes {
                break;
            }
            let Some((key, value)) = view.first_with_prefix(&prefix)? else {
                break;
            };
            self.remove_members(view, instance, key, &value, None)?;
            evicted = true;
        }
        if evicted {
            self.remove_passed_markers(view, instance)?;
        }
        Ok(())
    }

    /// Removes the members of page `key` (`value`) accepted before `below` (all of them:
    /// `None`), with their share of the counters (their markers are the caller's, see
    /// [`Committer::remove_passed_markers`]). Answers how many went. A page that does not
    /// decode goes whole.
    fn remove_members(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        key: Vec<u8>,
        value: &[u8],
        below: Option<Ulid>,
    ) -> Result<u64, Error> {
        let mut kept = Vec::new();
        let (mut gone, mut bytes) = (0u64, 0u64);
        let page = history::open_page(value).unwrap_or_default();
        for member in run::members(&page) {
            let Ok((id, record)) = member else { break };
            if below.is_some_and(|below| id >= below) {
                run::append(&mut kept, id, record);
                continue;
            }
            gone += 1;
            bytes += history::charged_bytes(record.len());
        }
        match kept.is_empty() {
            true => view.remove(key),
            false => {
                self.placed_pages.remove(&key);
                view.insert(key, history::seal_page(&kept));
            }
        }
        let counter = self.counter_mut(instance);
        counter.history_events = counter.history_events.saturating_sub(gone);
        counter.history_bytes = counter.history_bytes.saturating_sub(bytes);
        Ok(gone)
    }

    /// Removes the markers of the seconds before the instance's first page (the first event
    /// left is at or after its key), or all of them when no page is left; at most
    /// [`MARKERS_PER_REMOVAL`] pairs. Answers how many keys went.
    fn remove_passed_markers(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
    ) -> Result<u64, Error> {
        let prefix = keys::instance_prefix(keys::HISTORY, instance);
        let first = view.scan_prefix(&prefix).next().transpose()?;
        let first_left = first.and_then(|(key, _)| keys::trailing_id(&key));
        self.remove_markers_before(view, instance, first_left)
    }

    /// Removes the account markers of the seconds before `first_left`'s (all: `None`), at
    /// most [`MARKERS_PER_REMOVAL`] pairs. Answers how many keys went.
    fn remove_markers_before(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        first_left: Option<Ulid>,
    ) -> Result<u64, Error> {
        let start = keys::instance_prefix(keys::HISTORY_BY_SECOND, instance);
        let end = match first_left {
            Some(id) => keys::history_second_prefix(instance, history::marker_second(id)),
            None => keys::family_end(&start),
        };
        let twins: Vec<Vec<u8>> = view
            .range(start, end)
            .take(MARKERS_PER_REMOVAL)
            .map(|entry| entry.map(|(key, _)| key))
            .collect::<Result<_, _>>()?;
        if !twins.is_empty() {
            self.known_markers.clear();
        }
        let mut count = 0;
        for twin in twins {
            if let Some((second, account)) = keys::parse_history_by_second(instance, &twin) {
                view.remove(keys::history_by_account(instance, account, second));
                count += 1;
            }
            view.remove(twin);
            count += 1;
        }
        Ok(count)
    }

    /// Removes up to about `limit` of a forgotten instance's history events and markers
    /// (whole pages). Answers how many went.
    pub(super) fn forget_history(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        limit: usize,
    ) -> Result<u64, Error> {
        let prefix = keys::instance_prefix(keys::HISTORY, instance);
        let mut count = 0;
        while count < limit as u64 {
            let Some((key, value)) = view.first_with_prefix(&prefix)? else {
                break;
            };
            // At least one, so that a page that does not decode still goes.
            count += self
                .remove_members(view, instance, key, &value, None)?
                .max(1);
        }
        if count < limit as u64 {
            count += self.remove_markers_before(view, instance, None)?;
        }
        Ok(count)
    }

    /// Takes delivered event `id` out of the history and queues it again. Its account's marker
    /// stays (a look at that second finds nothing).
    fn replay_history(
        &mut self,
        view: &mut BatchView<'_>,
        instance: &str,
        id: Ulid,
        now_ms: u64,
    ) -> Result<bool, Error> {
        let prefix = keys::instance_prefix(keys::HISTORY, instance);
        let Some((key, value)) = view.last_at_or_before(&prefix, &keys::history(instance, id))?
        else {
            return Ok(false);
        };
        let value = history::open_page(&value)?.into_owned();
        let Some(record) = run::find(&value, id)? else {
            return Ok(false);
        };
        let Some(event) = HistoryV1::decode(record)
            .ok()
            .and_then(|h| queued_again(&h, now_ms))
        else {
            return Ok(false);
        };
        let charged = history::charged_bytes(record.len());
        match run::replace(&value, id, None)? {
            Some(rest) => view.insert(key, history::seal_page(&rest)),
            None => view.remove(key),
        }
        let counter = self.counter_mut(instance);
        counter.history_events = counter.history_events.saturating_sub(1);
        counter.history_bytes = counter.history_bytes.saturating_sub(charged);
        self.insert_pending(view, instance, id, &event);
        Ok(true)
    }
}

/// The first of an instance's pages holding an event accepted before `cutoff` (a page that
/// does not decode counts as one), with its value. Every page keyed before the cutoff holds
/// such an event, or only later ones once an expiry has passed it.
fn first_expired_page(
    view: &BatchView<'_>,
    instance: &str,
    cutoff: Ulid,
) -> Result<Option<KeyValue>, Error> {
    let start = keys::instance_prefix(keys::HISTORY, instance);
    for entry in view.range(start, keys::history(instance, cutoff)) {
        let (key, value) = entry?;
        let page = history::open_page(&value).unwrap_or_default();
        let first = run::members(&page).next().and_then(Result::ok);
        if first.is_none_or(|(first, _)| first < cutoff) {
            return Ok(Some((key, value.to_vec())));
        }
    }
    Ok(None)
}

/// A page split before member `id`: the members below it, and the rest (starting with `id`).
fn split_at(page: &[u8], id: Ulid) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let (mut left, mut right) = (Vec::new(), Vec::new());
    for member in run::members(page) {
        let (member_id, record) = member?;
        let side = if member_id < id {
            &mut left
        } else {
            &mut right
        };
        run::append(side, member_id, record);
    }
    Ok(match left.is_empty() {
        // `id` is the first member: nothing to split off.
        true => (right, Vec::new()),
        false => (left, right),
    })
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
