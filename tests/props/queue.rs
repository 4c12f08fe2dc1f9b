//! Model-based test of the durable queue: `hookrelay::store::Store` driven by random sequences of
//! `ingest` (alone, or several at once, which the committer takes into one batch and one run
//! record), `claim`, `delivered`, `reschedule`, `dead_letter`, `replay_dead`, the maintenance
//! requests (`purge_dead` of some letters, `purge_pending` of an instance, `expire_dead` with
//! per-instance cutoffs that split the letters by death time), `catch_up` (one `UNKNOWN` event per
//! pair the store has seen), `commit_walk_page` (a change walk's page: cursor, object-map writes
//! and envelopes, which queue per pair in FIFO order, only the head due), `set_outage` (an
//! instance's outage beginning or ending) and a reopen (after a
//! clean close, after dropping the handle, of a crash image: the store's files copied while it
//! runs, sled's before the journal's, or of a power-loss image: the store lives on `powerfs`, and
//! the files are as a power cut would leave them, with only what was synced, or in half of them
//! also a random part of what was written since, the last page torn), against a plain model (maps
//! of pending and dead events, merge targets, seen pairs, change queues, cursors and objects,
//! outage states, counters). The journal is 16 KiB, so that cases go through its checkpoints and batches too large
//! for it. A power cut may undo what was answered before its sync (a delivered event's removal,
//! with the promotion of the next envelope of its queue; a claim) since the last batch that was
//! synced; the model takes back the ones the store shows undone. After every step:
//!
//! - **at least once**: every acknowledged notification × target is covered by a pending event
//!   of that pair holding it or a later notification of the pair, by a delivered event that did,
//!   or by a dead letter (unless an operator's purge or an expiry deleted it);
//! - the store's pending events (with their due times: a change queue's head due, the others
//!   waiting without a due entry), dead letters (with their death time), due index, counters,
//!   cursors, object maps and outage states equal the model's;
//! - the delivered history holds exactly the deliveries not undone (a cut undoes a removal and
//!   its history record together), each found by its id and under its account, its pages in
//!   order and compressed, every event's account marker there, and its counters equal the sum
//!   of its records;
//! - every pending event and dead letter still has its notification body.
//!
//! CI: 64 cases × ≤ 40 steps; `HOOKRELAY_LONG_TESTS=1`: 1,000 cases.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use hookrelay::store::{
    self, Cutoffs, DeadLetter, DeliveredOutcome, EventKind, EventQuery, EventState, IngestTarget,
    MapWrite, NewEnvelope, OpenMode, OutageV1, Placed, Retry, Store, StoreOptions, WalkPage,
    record::ObjectV1,
};
use hookrelay::time;
use powerfs::{Loss, PowerFs};
use proptest::prelude::*;
use ulid::Ulid;

const INSTANCES: [&str; 2] = ["alpha", "beta"];
const ACCOUNTS: [&str; 3] = ["dbid:zero", "dbid:one", "dbid:two"];
/// What the store charges an event beyond its body (store/commit.rs).
const OVERHEAD: u64 = 256;
/// A small per-instance quota, so that some ingests run over it and park their events.
const SMALL_QUOTA: u64 = 900;

#[derive(Debug, Clone)]
enum Op {
    /// One notification for these (instance, account) targets.
    Ingest {
        targets: BTreeSet<(usize, usize)>,
        coalesce: [bool; 2],
        small_quota: bool,
        pad: usize,
    },
    /// Several one-target notifications for one instance at once (`coalesce = false`, no quota):
    /// each is a new event, and those the committer takes together share a run.
    Burst {
        instance: usize,
        accounts: Vec<usize>,
        pad: usize,
    },
    Claim(prop::sample::Index),
    Delivered(prop::sample::Index),
    Reschedule {
        pick: prop::sample::Index,
        definite_refusal: bool,
    },
    DeadLetter(prop::sample::Index),
    ReplayDead(prop::sample::Index),
    /// An outcome for an id the store does not hold: nothing changes.
    Unknown(u8),
    /// Deletes the picked dead letters (with an unknown id, and one of them also named under
    /// the other instance, which must not delete it twice).
    PurgeDead {
        picks: Vec<prop::sample::Index>,
        wrong_instance: bool,
    },
    /// Deletes every pending event of an instance; with `forget`, also its dead letters and
    /// then everything else of it (`forget_instance`: seen pairs, cursors, object maps, change
    /// queues), as for an instance no longer configured.
    PurgePending {
        instance: usize,
        forget: bool,
    },
    /// Deletes the dead letters that died before their instance's cutoff (`None`: the instance
    /// is not listed, `Cutoffs::otherwise` applies).
    ExpireDead {
        by_instance: [Option<Cut>; 2],
        otherwise: Cut,
    },
    /// One `UNKNOWN` event for every seen pair of these instances (and of one never seen).
    CatchUp {
        instances: [bool; 2],
        stranger: bool,
    },
    /// A page of a change walk of one pair.
    Walk {
        instance: usize,
        account: usize,
        envelopes: usize,
        cursor: bool,
        map: Vec<MapOp>,
    },
    /// An instance's outage begins (or, if it is in one, ends), as its lane stores it.
    Outage {
        instance: usize,
    },
    Reopen(Reopening),
}

/// A dead-letter cutoff, in terms of the letters the model holds.
#[derive(Debug, Clone, Copy)]
enum Cut {
    Zero,
    Max,
    /// A letter's death time (`past`: one ms after it, so that it expires too).
    At {
        pick: prop::sample::Index,
        past: bool,
    },
}

/// An object-map write of a walk page: objects `id:<0..3>` at paths `/f<0..3>`.
#[derive(Debug, Clone, Copy)]
enum MapOp {
    Put { id: u8, path: u8 },
    RemovePath(u8),
    RemoveId(u8),
}

#[derive(Debug, Clone, Copy)]
enum Reopening {
    /// After `close`.
    Clean,
    /// After dropping the handle (the committer still checkpoints).
    Dropped,
    /// A copy of the files as they are: what a `kill -9` leaves; the journal must supply what
    /// sled did not write yet.
    Crashed,
    /// What a power cut leaves: only what was synced, or also (with a seed) a random part of
    /// what was written since, the last page of each file torn.
    PowerCut { torn: Option<u64> },
}

/// A notification's padding: mostly a few bytes, one in six 16–90 KiB (so that sled writes
/// some tree nodes as blob files).
fn pad() -> impl Strategy<Value = usize> {
    prop_oneof![5 => 0usize..200, 1 => 16_384usize..92_160]
}

fn op() -> impl Strategy<Value = Op> {
    let index = any::<prop::sample::Index>();
    prop_oneof![
        12 => (
            proptest::collection::btree_set((0..INSTANCES.len(), 0..ACCOUNTS.len()), 0..=4),
            any::<[bool; 2]>(),
            prop::bool::weighted(0.25),
            pad(),
        )
            .prop_map(|(targets, coalesce, small_quota, pad)| Op::Ingest {
                targets,
                coalesce,
                small_quota,
                pad,
            }),
        4 => (
            0..INSTANCES.len(),
            proptest::collection::vec(0..ACCOUNTS.len(), 2..=8),
            pad(),
        )
            .prop_map(|(instance, accounts, pad)| Op::Burst {
                instance,
                accounts,
                pad,
            }),
        6 => index.clone().prop_map(Op::Claim),
        6 => index.clone().prop_map(Op::Delivered),
        8 => (index.clone(), any::<bool>()).prop_map(|(pick, definite_refusal)| Op::Reschedule {
            pick,
            definite_refusal,
        }),
        4 => index.clone().prop_map(Op::DeadLetter),
        4 => index.clone().prop_map(Op::ReplayDead),
        2 => (0u8..4).prop_map(Op::Unknown),
        2 => (
            proptest::collection::vec(index, 1..=3),
            any::<bool>()
        )
            .prop_map(|(picks, wrong_instance)| Op::PurgeDead {
                picks,
                wrong_instance
            }),
        1 => (0..INSTANCES.len(), any::<bool>())
            .prop_map(|(instance, forget)| Op::PurgePending { instance, forget }),
        3 => (
            [
                proptest::option::of(cut()),
                proptest::option::of(cut())
            ],
            cut()
        )
            .prop_map(|(by_instance, otherwise)| Op::ExpireDead {
                by_instance,
                otherwise
            }),
        2 => (any::<[bool; 2]>(), prop::bool::weighted(0.2))
            .prop_map(|(instances, stranger)| Op::CatchUp {
                instances,
                stranger
            }),
        5 => (
            0..INSTANCES.len(),
            0..ACCOUNTS.len(),
            0usize..=4,
            any::<bool>(),
            proptest::collection::vec(map_op(), 0..=2),
        )
            .prop_map(|(instance, account, envelopes, cursor, map)| Op::Walk {
                instance,
                account,
                envelopes,
                cursor,
                map,
            }),
        6 => prop_oneof![
            Just(Reopening::Clean),
            Just(Reopening::Dropped),
            Just(Reopening::Crashed),
            Just(Reopening::PowerCut { torn: None }),
            any::<u64>().prop_map(|seed| Reopening::PowerCut { torn: Some(seed) }),
        ]
        .prop_map(Op::Reopen),
        2 => (0..INSTANCES.len()).prop_map(|instance| Op::Outage { instance }),
    ]
}

fn cut() -> impl Strategy<Value = Cut> {
    prop_oneof![
        1 => Just(Cut::Zero),
        1 => Just(Cut::Max),
        4 => (any::<prop::sample::Index>(), any::<bool>())
            .prop_map(|(pick, past)| Cut::At { pick, past }),
    ]
}

fn map_op() -> impl Strategy<Value = MapOp> {
    prop_oneof![
        3 => (0u8..3, 0u8..3).prop_map(|(id, path)| MapOp::Put { id, path }),
        1 => (0u8..3).prop_map(MapOp::RemovePath),
        1 => (0u8..3).prop_map(MapOp::RemoveId),
    ]
}

#[derive(Debug, Clone, PartialEq)]
struct MEvent {
    instance: String,
    account: String,
    kind: EventKind,
    /// Notify: the newest notification merged into it (its marker); changes: the envelope's
    /// marker (in its `raw`); unknown: 0.
    marker: u64,
    attempts: u32,
    refused_only: bool,
    bytes: u64,
    /// Known due time, when the test chose it or the store answered it (`u64::MAX`: a change
    /// envelope waiting behind its queue's head).
    due_ms: Option<u64>,
}

impl MEvent {
    /// A new event of `target` holding notification `marker`, never attempted.
    fn new(target: &IngestTarget, marker: u64, bytes: u64, accepted_ms: u64) -> MEvent {
        MEvent {
            instance: target.instance.clone(),
            account: target.account.clone(),
            kind: EventKind::Notify,
            marker,
            attempts: 0,
            refused_only: true,
            bytes,
            due_ms: Some(accepted_ms),
        }
    }

    fn pair(&self) -> (String, String) {
        (self.instance.clone(), self.account.clone())
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct MCounters {
    pending_events: u64,
    pending_bytes: u64,
    dead_events: u64,
    dead_bytes: u64,
}

/// A claim or a delivered event's removal, answered before its sync: a power cut may undo it.
#[derive(Debug, Clone)]
struct Unsynced {
    id: Ulid,
    /// The event as it was when delivered (`None`: a claim).
    delivered: Option<MEvent>,
    /// Whether it was its pair's merge target (the claim or removal unlinked it).
    was_target: bool,
    /// A delivered change envelope: its pair's queue as it was (the removal, and the promotion
    /// of the next one if it was the head, are undone together).
    queue: Option<Vec<Ulid>>,
}

/// What one pair's object maps hold (by id, by lower-case path).
#[derive(Debug, Default, Clone, PartialEq)]
struct MObjects {
    by_id: BTreeMap<String, ObjectV1>,
    by_path: BTreeMap<String, ObjectV1>,
}

#[derive(Debug, Default)]
struct Model {
    pending: BTreeMap<Ulid, MEvent>,
    dead: BTreeMap<Ulid, MEvent>,
    /// Dead letter → when it died (the store's stamp, checked to lie within the call).
    dead_at: BTreeMap<Ulid, u64>,
    /// (instance, account) → the waiting event a notification may merge into.
    pairs: BTreeMap<(String, String), Ulid>,
    /// Pairs an ingest has named (catch-up gives each one `UNKNOWN` event).
    seen: BTreeSet<(String, String)>,
    /// Change envelopes of each pair in queue order: the first is the head, the only one due.
    queues: BTreeMap<(String, String), Vec<Ulid>>,
    cursors: BTreeMap<(String, String), String>,
    /// Instance → its stored outage state (`u/`).
    outages: BTreeMap<String, OutageV1>,
    /// Pairs whose queue has a next-seq key (an envelope was ever queued).
    sequenced: BTreeSet<(String, String)>,
    objects: BTreeMap<(String, String), MObjects>,
    /// Instances with a tally of dead letters not alerted yet (one record each, until forgotten).
    tallied: BTreeSet<String>,
    counters: BTreeMap<String, MCounters>,
    /// Acked notification × target → the event that took it.
    covered: Vec<(u64, String, String, Ulid)>,
    /// Delivered event → the marker it carried when delivered.
    delivered: BTreeMap<Ulid, u64>,
    /// Delivered events the history keeps → their instance.
    history: BTreeMap<Ulid, String>,
    /// Claims and deliveries since the last batch that was synced.
    unsynced: Vec<Unsynced>,
    next_marker: u64,
    pages: u64,
}

impl Model {
    fn counter(&mut self, instance: &str) -> &mut MCounters {
        self.counters.entry(instance.to_owned()).or_default()
    }

    /// An ingest named `pair`: it is seen (after a `forget_instance` too: the committer
    /// forgets its memory of the instance's pairs with their records).
    fn see(&mut self, pair: (String, String)) {
        self.seen.insert(pair);
    }

    fn unlink(&mut self, event: &MEvent, id: Ulid) {
        let key = event.pair();
        if self.pairs.get(&key) == Some(&id) {
            self.pairs.remove(&key);
        }
    }

    /// Whether pending event `id` is a change envelope waiting behind its queue's head (not
    /// due, no due entry; delivery never holds it, so never reschedules it).
    fn behind_head(&self, id: Ulid) -> bool {
        let event = &self.pending[&id];
        event.kind == EventKind::Changes
            && self
                .queues
                .get(&event.pair())
                .is_some_and(|queue| queue.contains(&id) && queue[0] != id)
    }

    /// Removes a pending event; returns it, and the envelope promoted to its queue's head if
    /// it was the head of one (its due time is the caller's to set).
    fn remove_pending(&mut self, id: Ulid) -> (MEvent, Option<Ulid>) {
        let event = self.pending.remove(&id).expect("a pending event");
        self.unlink(&event, id);
        let c = self.counter(&event.instance);
        c.pending_events -= 1;
        c.pending_bytes -= event.bytes;
        let mut promoted = None;
        if let Some(queue) = self.queues.get_mut(&event.pair())
            && let Some(at) = queue.iter().position(|q| *q == id)
        {
            queue.remove(at);
            if at == 0 {
                promoted = queue.first().copied();
            }
        }
        (event, promoted)
    }

    /// Checks the store's answer to a removal (delivered, dead-lettered) against the model's
    /// expected promotion, and takes the promoted envelope's due time from it.
    fn promote(
        &mut self,
        expected: Option<Ulid>,
        answered: Option<u64>,
        (lo, hi): (u64, u64),
    ) -> Result<(), TestCaseError> {
        match (expected, answered) {
            (None, None) => Ok(()),
            (Some(next), Some(due)) => {
                prop_assert!(
                    (lo..=hi).contains(&due),
                    "promoted due time {} outside the call [{}, {}]",
                    due,
                    lo,
                    hi
                );
                self.pending.get_mut(&next).expect("promoted").due_ms = Some(due);
                count(&STATS.promoted);
                Ok(())
            }
            (expected, answered) => Err(TestCaseError::fail(format!(
                "expected the promotion of {expected:?}, the store answered {answered:?}"
            ))),
        }
    }

    fn add_pending(&mut self, id: Ulid, event: MEvent) {
        let c = self.counter(&event.instance);
        c.pending_events += 1;
        c.pending_bytes += event.bytes;
        self.pending.insert(id, event);
    }

    fn add_dead(&mut self, id: Ulid, event: MEvent, dead_at: u64) {
        let c = self.counter(&event.instance);
        c.dead_events += 1;
        c.dead_bytes += event.bytes;
        self.tallied.insert(event.instance.clone());
        self.dead.insert(id, event);
        self.dead_at.insert(id, dead_at);
    }

    fn remove_dead(&mut self, id: Ulid) -> MEvent {
        let event = self.dead.remove(&id).expect("a dead letter");
        self.dead_at.remove(&id);
        let c = self.counter(&event.instance);
        c.dead_events -= 1;
        c.dead_bytes -= event.bytes;
        event
    }

    /// An event an operator (or the retention) deleted: what it covered is gone on purpose.
    fn forget(&mut self, id: Ulid) {
        self.covered.retain(|(_, _, _, by)| *by != id);
    }

    /// Records a claim or delivery of pending event `id` that a power cut may undo.
    fn answered_unsynced(&mut self, id: Ulid, delivered: bool) {
        let event = self.pending[&id].clone();
        let pair = event.pair();
        let queue = self
            .queues
            .get(&pair)
            .filter(|queue| delivered && queue.contains(&id))
            .cloned();
        self.unsynced.push(Unsynced {
            id,
            was_target: self.pairs.get(&pair) == Some(&id),
            delivered: delivered.then_some(event),
            queue,
        });
    }

    /// After a power cut: the claims and deliveries the store shows undone are undone in the
    /// model too (a delivered event is pending again, a merge target is one again, a change
    /// queue has its head back and the envelope it promoted waits again).
    fn undo_unsynced(&mut self, store: &Store) -> Result<(), TestCaseError> {
        let pending: BTreeSet<Ulid> = store
            .pending_events(None)
            .map_err(|e| TestCaseError::fail(format!("pending_events: {e}")))?
            .iter()
            .map(|e| e.id.parse().expect("a ULID"))
            .collect();
        for undone in std::mem::take(&mut self.unsynced).into_iter().rev() {
            if let Some(event) = &undone.delivered
                && pending.contains(&undone.id)
                && !self.pending.contains_key(&undone.id)
            {
                self.delivered.remove(&undone.id);
                self.history.remove(&undone.id);
                self.add_pending(undone.id, event.clone());
                if let Some(queue) = &undone.queue {
                    if queue[0] == undone.id
                        && let Some(next) = queue.get(1)
                    {
                        let Some(next) = self.pending.get_mut(next) else {
                            return Err(TestCaseError::fail(format!(
                                "a cut undid the delivery of head {} but not of the envelope \
                                 it promoted, {next}",
                                undone.id
                            )));
                        };
                        next.due_ms = Some(u64::MAX);
                    }
                    self.queues.insert(event.pair(), queue.clone());
                }
                count(&STATS.undone);
            }
            let Some(event) = self.pending.get(&undone.id) else {
                continue;
            };
            let pair = event.pair();
            if undone.was_target && !self.pairs.contains_key(&pair) {
                let target = store
                    .merge_target(&pair.0, &pair.1)
                    .map_err(|e| TestCaseError::fail(format!("merge_target: {e}")))?;
                if target == Some(undone.id) {
                    self.pairs.insert(pair, undone.id);
                }
            }
        }
        Ok(())
    }
}

fn body(marker: u64, accounts: &[&str], pad: usize) -> Bytes {
    let accounts: Vec<String> = accounts.iter().map(|a| format!("\"{a}\"")).collect();
    Bytes::from(format!(
        "{{\"list_folder\": {{\"accounts\": [{}]}}, \"delta\": {{\"users\": [{marker}]}}, \"pad\": \"{}\"}}",
        accounts.join(", "),
        "p".repeat(pad)
    ))
}

fn marker_of(raw: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(raw).ok()?;
    v["delta"]["users"][0].as_u64()
}

/// A journal this small fills in a few steps: checkpoints, and batches that do not fit.
const JOURNAL_BYTES: u64 = 16 * 1024;

fn open(path: &Path) -> Store {
    let options = StoreOptions {
        path: path.to_path_buf(),
        cache_bytes: 4 << 20,
        mode: OpenMode::Daemon,
        journal_bytes: JOURNAL_BYTES,
    };
    // A dropped handle's committer thread lets go of sled's lock shortly after.
    let mut last = None;
    for _ in 0..200 {
        match Store::open(&options, store::fdatasync()) {
            Ok((store, _)) => return store,
            Err(err) => last = Some(err),
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("reopening the store: {last:?}")
}

fn pick(ids: impl Iterator<Item = Ulid>, index: &prop::sample::Index) -> Option<Ulid> {
    let ids: Vec<Ulid> = ids.collect();
    (!ids.is_empty()).then(|| ids[index.index(ids.len())])
}

async fn step(store: &Store, model: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    match op {
        Op::Ingest {
            targets,
            coalesce,
            small_quota,
            pad,
        } => {
            model.next_marker += 1;
            let marker = model.next_marker;
            let accounts: Vec<&str> = targets.iter().map(|(_, a)| ACCOUNTS[*a]).collect();
            let body = body(marker, &accounts, *pad);
            let quota = if *small_quota { SMALL_QUOTA } else { u64::MAX };
            let new_bytes = body.len() as u64 + OVERHEAD;
            let accepted_ms = time::now_ms();
            let ingest_targets: Vec<IngestTarget> = targets
                .iter()
                .map(|(i, a)| IngestTarget {
                    instance: INSTANCES[*i].to_owned(),
                    account: ACCOUNTS[*a].to_owned(),
                    coalesce: coalesce[*i],
                    quota_bytes: quota,
                    changes: false,
                })
                .collect();
            let placed = store
                .ingest(body, accepted_ms, ingest_targets.clone())
                .await
                .map_err(|e| TestCaseError::fail(format!("ingest: {e}")))?;
            prop_assert_eq!(placed.len(), ingest_targets.len());
            for (target, placed) in ingest_targets.iter().zip(placed) {
                let key = (target.instance.clone(), target.account.clone());
                model.see(key.clone());
                let over_quota = model.counter(&target.instance).pending_bytes >= quota;
                let mut merge_into = None;
                if (target.coalesce || over_quota)
                    && let Some(id) = model.pairs.get(&key).copied()
                {
                    match model.pending.get(&id) {
                        Some(e) if e.refused_only => merge_into = Some(id),
                        _ => {
                            model.pairs.remove(&key);
                        }
                    }
                }
                let id = match (merge_into, placed) {
                    (Some(expected), Placed::Merged { id }) => {
                        prop_assert_eq!(id, expected, "merged into another event");
                        count(&STATS.merged);
                        let old_bytes = model.pending[&id].bytes;
                        let c = model.counter(&target.instance);
                        c.pending_bytes = c.pending_bytes - old_bytes + new_bytes;
                        let e = model.pending.get_mut(&id).expect("merge target");
                        e.marker = marker;
                        e.bytes = new_bytes;
                        id
                    }
                    (None, Placed::Created(event)) if !over_quota => {
                        count(&STATS.created);
                        prop_assert_eq!(&event.account, &target.account);
                        prop_assert_eq!(event.attempts, 0);
                        prop_assert_eq!(event.raw.as_deref().and_then(marker_of), Some(marker));
                        event.id
                    }
                    (None, Placed::Parked { id }) if over_quota => {
                        count(&STATS.parked);
                        model.pairs.insert(key.clone(), id);
                        id
                    }
                    (expected, got) => {
                        return Err(TestCaseError::fail(format!(
                            "{key:?}: model expected merge into {expected:?} (over quota: \
                             {over_quota}), store placed {got:?}"
                        )));
                    }
                };
                if merge_into.is_none() {
                    model.add_pending(id, MEvent::new(target, marker, new_bytes, accepted_ms));
                }
                model
                    .covered
                    .push((marker, target.instance.clone(), target.account.clone(), id));
            }
        }
        Op::Burst {
            instance,
            accounts,
            pad,
        } => burst(store, model, *instance, accounts, *pad).await?,
        Op::Claim(index) => {
            let Some(id) = pick(model.pending.keys().copied(), index) else {
                return Ok(());
            };
            let m = model.pending[&id].clone();
            let events = store
                .claim(&m.instance, vec![id, Ulid::generate()])
                .await
                .map_err(|e| TestCaseError::fail(format!("claim: {e}")))?;
            prop_assert_eq!(events.len(), 1, "claim of one held and one unknown id");
            let e = &events[0];
            prop_assert_eq!(e.id, id);
            prop_assert_eq!(&e.account, &m.account);
            prop_assert_eq!(e.attempts, m.attempts);
            prop_assert_eq!(e.refused_only, m.refused_only);
            prop_assert_eq!(e.kind, m.kind);
            match m.kind {
                EventKind::Notify | EventKind::Changes => prop_assert_eq!(
                    e.raw.as_deref().and_then(marker_of),
                    Some(m.marker),
                    "claimed raw"
                ),
                EventKind::Unknown => prop_assert_eq!(&e.raw, &None),
            }
            let objects = (m.kind == EventKind::Changes).then(|| envelope(m.marker).events);
            prop_assert_eq!(
                e.objects.as_deref(),
                objects.as_ref().map(String::as_bytes),
                "claimed objects"
            );
            model.answered_unsynced(id, false);
            model.unlink(&m, id);
            count(&STATS.claimed);
        }
        Op::Delivered(index) => {
            let Some(id) = pick(model.pending.keys().copied(), index) else {
                return Ok(());
            };
            let instance = model.pending[&id].instance.clone();
            let lo = time::now_ms();
            let outcome = DeliveredOutcome {
                delivered_ms: lo,
                attempt: None,
                envelope: Some(Bytes::from_static(br#"{"message":{"raw":{},"events":[]}}"#)),
                keep: Some(1 << 40),
            };
            let promoted = store
                .delivered_with(&instance, id, outcome)
                .await
                .map_err(|e| TestCaseError::fail(format!("delivered: {e}")))?;
            let hi = time::now_ms();
            model.answered_unsynced(id, true);
            model.history.insert(id, instance.clone());
            let (event, next) = model.remove_pending(id);
            model.promote(next, promoted, (lo, hi))?;
            model.delivered.insert(id, event.marker);
            count(&STATS.delivered);
        }
        Op::Reschedule {
            pick: index,
            definite_refusal,
        } => {
            // Delivery reschedules only what it claimed, which was due: never an envelope
            // behind its queue's head.
            let due: Vec<Ulid> = model
                .pending
                .keys()
                .copied()
                .filter(|id| !model.behind_head(*id))
                .collect();
            let Some(id) = pick(due.into_iter(), index) else {
                return Ok(());
            };
            let m = model.pending[&id].clone();
            let due_ms = time::now_ms() + 3_600_000;
            let retry = Retry {
                attempts: m.attempts + 1,
                due_ms,
                definite_refusal: *definite_refusal,
                last_status: definite_refusal.then_some(500),
                last_error: Some("model".into()),
            };
            store
                .reschedule(&m.instance, id, retry)
                .await
                .map_err(|e| TestCaseError::fail(format!("reschedule: {e}")))?;
            count(&STATS.rescheduled);
            let e = model.pending.get_mut(&id).expect("pending");
            e.attempts += 1;
            e.due_ms = Some(due_ms);
            e.refused_only &= *definite_refusal;
            let (refused_only, key) = (e.refused_only, m.pair());
            // Only a notify event is a merge target.
            if refused_only && m.kind == EventKind::Notify {
                model.pairs.insert(key, id);
            } else {
                model.unlink(&m, id);
            }
        }
        Op::DeadLetter(index) => {
            let Some(id) = pick(model.pending.keys().copied(), index) else {
                return Ok(());
            };
            let instance = model.pending[&id].instance.clone();
            let attempts = model.pending[&id].attempts + 1;
            let lo = time::now_ms();
            let promoted = store
                .dead_letter(
                    &instance,
                    id,
                    DeadLetter {
                        attempts,
                        reason: "model".into(),
                        last_status: Some(500),
                        last_error: None,
                    },
                )
                .await
                .map_err(|e| TestCaseError::fail(format!("dead_letter: {e}")))?;
            let hi = time::now_ms();
            let (mut event, next) = model.remove_pending(id);
            model.promote(next, promoted, (lo, hi))?;
            event.attempts = attempts;
            // The store stamps the death with the wall clock: the model takes the stamp, once
            // it is known to lie within the call (the expiry's cutoffs are chosen from these).
            let letters = store
                .dead_letters(Some(&instance))
                .map_err(|e| TestCaseError::fail(format!("dead_letters: {e}")))?;
            let dead_at = letters
                .iter()
                .find(|l| l.id == id.to_string())
                .and_then(|l| l.dead_at_ms);
            let Some(dead_at) = dead_at.filter(|at| (lo..=hi).contains(at)) else {
                return Err(TestCaseError::fail(format!(
                    "dead letter {id}: died at {dead_at:?}, outside the call [{lo}, {hi}]"
                )));
            };
            model.add_dead(id, event, dead_at);
            count(&STATS.dead);
        }
        Op::ReplayDead(index) => {
            let Some(id) = pick(model.dead.keys().copied(), index) else {
                return Ok(());
            };
            let instance = model.dead[&id].instance.clone();
            let replayed = store
                .replay_dead(vec![
                    (instance.clone(), id),
                    (instance.clone(), Ulid::generate()),
                ])
                .await
                .map_err(|e| TestCaseError::fail(format!("replay_dead: {e}")))?;
            prop_assert_eq!(replayed, 1);
            // A replayed change envelope is delivered on its own, outside its pair's queue.
            let mut event = model.remove_dead(id);
            event.attempts = 0;
            event.due_ms = None;
            model.add_pending(id, event);
            count(&STATS.replayed);
        }
        Op::Unknown(kind) => {
            let (instance, id) = (INSTANCES[0], Ulid::generate());
            let result = match kind {
                0 => store.delivered(instance, id).await.map(drop),
                1 => {
                    let retry = Retry {
                        attempts: 1,
                        due_ms: 0,
                        definite_refusal: true,
                        last_status: None,
                        last_error: None,
                    };
                    store.reschedule(instance, id, retry).await
                }
                2 => {
                    let dead = DeadLetter {
                        attempts: 1,
                        reason: "x".into(),
                        last_status: None,
                        last_error: None,
                    };
                    store.dead_letter(instance, id, dead).await.map(drop)
                }
                _ => store
                    .replay_dead(vec![(instance.to_owned(), id)])
                    .await
                    .map(|n| assert_eq!(n, 0)),
            };
            result.map_err(|e| TestCaseError::fail(format!("an unknown id: {e}")))?;
        }
        Op::PurgeDead {
            picks,
            wrong_instance,
        } => {
            let ids: BTreeSet<Ulid> = picks
                .iter()
                .filter_map(|index| pick(model.dead.keys().copied(), index))
                .collect();
            let mut letters: Vec<(String, Ulid)> = Vec::new();
            for id in &ids {
                let instance = model.dead[id].instance.clone();
                if *wrong_instance && letters.is_empty() {
                    // Named under the other instance first: no letter of that name there.
                    let other = INSTANCES.iter().find(|i| **i != instance).expect("two");
                    letters.push(((*other).to_owned(), *id));
                }
                letters.push((instance, *id));
            }
            letters.push((INSTANCES[0].to_owned(), Ulid::generate()));
            let purged = store
                .purge_dead(letters)
                .await
                .map_err(|e| TestCaseError::fail(format!("purge_dead: {e}")))?;
            prop_assert_eq!(purged, ids.len() as u64, "letters purged");
            for id in ids {
                model.remove_dead(id);
                model.forget(id);
                count(&STATS.purged_dead);
            }
        }
        Op::Outage { instance } => {
            let instance = INSTANCES[*instance];
            let mut outage = model.outages.get(instance).cloned().unwrap_or_default();
            let now = time::now_ms();
            if outage.end(now).is_none() {
                outage.since_ms = Some(now);
                outage.last_error = Some("HTTP 503 Service Unavailable".into());
            }
            store
                .set_outage(instance, outage.clone())
                .await
                .map_err(|e| TestCaseError::fail(format!("set_outage: {e}")))?;
            model.outages.insert(instance.to_owned(), outage);
            count(&STATS.outages);
        }
        Op::PurgePending { instance, forget } => {
            let instance = INSTANCES[*instance];
            let ids: Vec<Ulid> = model
                .pending
                .iter()
                .filter(|(_, e)| e.instance == instance)
                .map(|(id, _)| *id)
                .collect();
            let purged = store
                .purge_pending(instance)
                .await
                .map_err(|e| TestCaseError::fail(format!("purge_pending: {e}")))?;
            prop_assert_eq!(purged, ids.len() as u64, "pending events purged");
            for id in ids {
                // A promoted envelope goes too: its due time does not matter.
                model.remove_pending(id);
                model.forget(id);
                count(&STATS.purged_pending);
            }
            if *forget {
                forget_instance(store, model, instance).await?;
            }
        }
        Op::ExpireDead {
            by_instance,
            otherwise,
        } => {
            let mut times: Vec<u64> = model.dead_at.values().copied().collect();
            times.sort_unstable();
            let resolve = |cut: &Cut| match cut {
                Cut::Zero => 0,
                Cut::Max => u64::MAX,
                Cut::At { pick, past } => match times.is_empty() {
                    true => 0,
                    false => times[pick.index(times.len())] + u64::from(*past),
                },
            };
            let cutoffs = Cutoffs {
                by_instance: INSTANCES
                    .iter()
                    .zip(by_instance)
                    .filter_map(|(name, cut)| {
                        cut.as_ref().map(|c| ((*name).to_owned(), resolve(c)))
                    })
                    .collect(),
                otherwise: resolve(otherwise),
            };
            let expired: Vec<Ulid> = model
                .dead
                .iter()
                .filter(|(id, e)| {
                    let cutoff = cutoffs
                        .by_instance
                        .get(&e.instance)
                        .copied()
                        .unwrap_or(cutoffs.otherwise);
                    model.dead_at[*id] < cutoff
                })
                .map(|(id, _)| *id)
                .collect();
            let kept = model.dead.len() - expired.len();
            let count_expired = store
                .expire_dead(cutoffs.clone())
                .await
                .map_err(|e| TestCaseError::fail(format!("expire_dead: {e}")))?;
            prop_assert_eq!(
                count_expired,
                expired.len() as u64,
                "letters expired by {:?}",
                cutoffs
            );
            for id in expired {
                model.remove_dead(id);
                model.forget(id);
                count(&STATS.expired);
            }
            STATS.expiry_kept.fetch_add(kept as u64, Ordering::Relaxed);
        }
        Op::CatchUp {
            instances,
            stranger,
        } => {
            let mut names: Vec<String> = INSTANCES
                .iter()
                .zip(instances)
                .filter(|(_, on)| **on)
                .map(|(name, _)| (*name).to_owned())
                .collect();
            if *stranger {
                names.push("gamma".to_owned());
            }
            // Per instance in the order asked, its seen accounts in key order.
            let expected: Vec<(String, String)> = names
                .iter()
                .flat_map(|name| model.seen.iter().filter(move |(i, _)| i == name))
                .cloned()
                .collect();
            let lo = time::now_ms();
            let events = store
                .catch_up(names.clone())
                .await
                .map_err(|e| TestCaseError::fail(format!("catch_up: {e}")))?;
            let hi = time::now_ms();
            let got: Vec<(String, String)> = events
                .iter()
                .map(|e| (e.instance.clone(), e.account.clone()))
                .collect();
            prop_assert_eq!(&got, &expected, "catch-up events of {:?}", names);
            for e in events {
                prop_assert_eq!(e.kind, EventKind::Unknown);
                prop_assert_eq!(e.attempts, 0);
                prop_assert!(e.raw.is_none() && e.objects.is_none());
                prop_assert!((lo..=hi).contains(&e.due_ms), "catch-up due time");
                prop_assert!(!model.pending.contains_key(&e.id), "a new id");
                let event = MEvent {
                    instance: e.instance.clone(),
                    account: e.account.clone(),
                    kind: EventKind::Unknown,
                    marker: 0,
                    attempts: 0,
                    refused_only: true,
                    bytes: OVERHEAD,
                    due_ms: Some(e.due_ms),
                };
                model.add_pending(e.id, event);
                count(&STATS.caught_up);
            }
        }
        Op::Walk {
            instance,
            account,
            envelopes,
            cursor,
            map,
        } => {
            walk(
                store,
                model,
                (*instance, *account),
                *envelopes,
                *cursor,
                map,
            )
            .await?
        }
        // Handled by the caller, which owns the handle.
        Op::Reopen(_) => {}
    }
    Ok(())
}

/// Sends one notification per account at once, then checks that each became a new event.
async fn burst(
    store: &Store,
    model: &mut Model,
    instance: usize,
    accounts: &[usize],
    pad: usize,
) -> Result<(), TestCaseError> {
    let accepted_ms = time::now_ms();
    let mut ingests = Vec::with_capacity(accounts.len());
    for account in accounts {
        model.next_marker += 1;
        let marker = model.next_marker;
        let body = body(marker, &[ACCOUNTS[*account]], pad);
        let bytes = body.len() as u64 + OVERHEAD;
        let target = IngestTarget {
            instance: INSTANCES[instance].to_owned(),
            account: ACCOUNTS[*account].to_owned(),
            coalesce: false,
            quota_bytes: u64::MAX,
            changes: false,
        };
        let (store, sent) = (store.clone(), target.clone());
        let ingest = tokio::spawn(async move { store.ingest(body, accepted_ms, vec![sent]).await });
        ingests.push((marker, target, bytes, ingest));
    }
    for (marker, target, bytes, ingest) in ingests {
        let placed = ingest
            .await
            .map_err(|e| TestCaseError::fail(format!("ingest task: {e}")))?
            .map_err(|e| TestCaseError::fail(format!("ingest: {e}")))?;
        let [Placed::Created(event)] = placed.as_slice() else {
            return Err(TestCaseError::fail(format!(
                "a burst's notification must be a new event, got {placed:?}"
            )));
        };
        count(&STATS.created);
        prop_assert_eq!(event.raw.as_deref().and_then(marker_of), Some(marker));
        model.see((target.instance.clone(), target.account.clone()));
        model.add_pending(event.id, MEvent::new(&target, marker, bytes, accepted_ms));
        model
            .covered
            .push((marker, target.instance, target.account, event.id));
    }
    Ok(())
}

/// Purges an instance's dead letters (its events are gone), then forgets everything else of it.
async fn forget_instance(
    store: &Store,
    model: &mut Model,
    instance: &str,
) -> Result<(), TestCaseError> {
    let letters: Vec<(String, Ulid)> = model
        .dead
        .iter()
        .filter(|(_, e)| e.instance == instance)
        .map(|(id, _)| (instance.to_owned(), *id))
        .collect();
    let purged = store
        .purge_dead(letters.clone())
        .await
        .map_err(|e| TestCaseError::fail(format!("purge_dead: {e}")))?;
    prop_assert_eq!(purged, letters.len() as u64, "letters purged");
    for (_, id) in letters {
        model.remove_dead(id);
        model.forget(id);
        count(&STATS.purged_dead);
    }
    // Its records: seen pairs, cursors, both object maps, each queue's next-seq key (its
    // envelopes are gone) and merge targets (none is left once its events are gone).
    let mine = |pair: &(String, String)| pair.0 == instance;
    let records = model.seen.iter().filter(|p| mine(p)).count()
        + model.cursors.keys().filter(|p| mine(p)).count()
        + model
            .objects
            .iter()
            .filter(|(p, _)| mine(p))
            .map(|(_, o)| o.by_id.len() + o.by_path.len())
            .sum::<usize>()
        + model.sequenced.iter().filter(|p| mine(p)).count()
        + model.pairs.keys().filter(|p| mine(p)).count()
        + model.history.values().filter(|i| *i == instance).count()
        + usize::from(model.outages.contains_key(instance))
        + usize::from(model.tallied.contains(instance));
    // The history's account markers are an index the model does not keep: the audit counts
    // them (and checks elsewhere that every kept event has one).
    let markers: u64 = store
        .history_audit()
        .map_err(|e| TestCaseError::fail(format!("history_audit: {e}")))?
        .iter()
        .filter(|audit| audit.instance == instance)
        .map(|audit| audit.markers)
        .sum();
    let records = records as u64 + markers;
    let forgotten = store
        .forget_instance(instance)
        .await
        .map_err(|e| TestCaseError::fail(format!("forget_instance: {e}")))?;
    prop_assert_eq!(forgotten, records, "records of {} forgotten", instance);
    model.seen.retain(|p| !mine(p));
    model.history.retain(|_, i| i != instance);
    model.cursors.retain(|p, _| !mine(p));
    model.objects.retain(|p, _| !mine(p));
    model.sequenced.retain(|p| !mine(p));
    model.queues.retain(|p, _| !mine(p));
    model.pairs.retain(|p, _| !mine(p));
    model.outages.remove(instance);
    model.tallied.remove(instance);
    // Nothing of it is left to count against `storage.max_bytes`.
    let left = store.counters().get(instance).map(|c| c.total_bytes());
    prop_assert!(
        left.unwrap_or(0) == 0,
        "{} still counts {:?} bytes",
        instance,
        left
    );
    STATS.forgotten.fetch_add(forgotten, Ordering::Relaxed);
    Ok(())
}

/// Envelope `marker` of a walk page: its per-object events, and a `raw` that carries the
/// marker where a notification body does.
fn envelope(marker: u64) -> NewEnvelope {
    NewEnvelope {
        events: format!("[{{\"marker\": {marker}}}]"),
        raw: format!("{{\"entries\": [], \"delta\": {{\"users\": [{marker}]}}}}"),
    }
}

/// Object `id:<id>` of the walk pages, at `/f<path>`.
fn object(id: u8, path: u8, page: u64) -> ObjectV1 {
    ObjectV1 {
        id: format!("id:{id}"),
        path_lower: format!("/f{path}"),
        path: format!("/F{path}-{page}"),
        object_type: "file".to_owned(),
    }
}

/// Commits one page of a walk of `(instance, account)`: its envelopes join the pair's queue
/// (the first one is due only if the queue was empty), the cursor and the object maps change.
async fn walk(
    store: &Store,
    model: &mut Model,
    (instance, account): (usize, usize),
    envelopes: usize,
    cursor: bool,
    map: &[MapOp],
) -> Result<(), TestCaseError> {
    let pair = (INSTANCES[instance].to_owned(), ACCOUNTS[account].to_owned());
    model.pages += 1;
    let page_no = model.pages;
    let markers: Vec<u64> = (0..envelopes)
        .map(|_| {
            model.next_marker += 1;
            model.next_marker
        })
        .collect();
    let cursor = cursor.then(|| format!("cursor-{page_no}"));
    let writes: Vec<MapWrite> = map
        .iter()
        .map(|op| match *op {
            MapOp::Put { id, path } => MapWrite::Put(object(id, path, page_no)),
            MapOp::RemovePath(path) => MapWrite::RemovePath(format!("/f{path}")),
            MapOp::RemoveId(id) => MapWrite::RemoveId(format!("id:{id}")),
        })
        .collect();
    let page = WalkPage {
        instance: pair.0.clone(),
        account: pair.1.clone(),
        cursor: cursor.clone(),
        envelopes: markers.iter().map(|m| envelope(*m)).collect(),
        map: writes.clone(),
        clear_marker: None,
        date_ms: time::now_ms(),
    };
    let lo = time::now_ms();
    let heads = store
        .commit_walk_page(page)
        .await
        .map_err(|e| TestCaseError::fail(format!("commit_walk_page: {e}")))?;
    let hi = time::now_ms();

    // The new envelopes' ids: the store's pending events the model does not know, in id order
    // (the committer's ids grow), which is queue order.
    let mut new: Vec<Ulid> = store
        .pending_events(Some(&pair.0))
        .map_err(|e| TestCaseError::fail(format!("pending_events: {e}")))?
        .iter()
        .map(|e| e.id.parse().expect("a ULID"))
        .filter(|id| !model.pending.contains_key(id))
        .collect();
    new.sort_unstable();
    prop_assert_eq!(new.len(), envelopes, "new envelopes of the page");
    let queue = model.queues.entry(pair.clone()).or_default();
    let head = (queue.is_empty() && envelopes > 0).then(|| new[0]);
    prop_assert_eq!(
        heads.iter().map(|e| e.id).collect::<Vec<_>>(),
        head.into_iter().collect::<Vec<_>>(),
        "the page's envelope that became its queue's head"
    );
    queue.extend(new.iter().copied());
    if envelopes > 0 {
        model.sequenced.insert(pair.clone());
    }
    for (n, (id, marker)) in new.iter().zip(&markers).enumerate() {
        let sent = envelope(*marker);
        let due_ms = match heads.first() {
            Some(e) if n == 0 => {
                prop_assert_eq!(e.kind, EventKind::Changes);
                prop_assert_eq!(&e.account, &pair.1);
                prop_assert_eq!(e.objects.as_deref(), Some(sent.events.as_bytes()));
                prop_assert_eq!(e.raw.as_deref(), Some(sent.raw.as_bytes()));
                prop_assert!((lo..=hi).contains(&e.due_ms), "the head's due time");
                e.due_ms
            }
            _ => u64::MAX,
        };
        let event = MEvent {
            instance: pair.0.clone(),
            account: pair.1.clone(),
            kind: EventKind::Changes,
            marker: *marker,
            attempts: 0,
            refused_only: true,
            bytes: (sent.events.len() + sent.raw.len()) as u64 + OVERHEAD,
            due_ms: Some(due_ms),
        };
        model.add_pending(*id, event);
        count(&STATS.envelopes);
    }
    if let Some(cursor) = cursor {
        model.cursors.insert(pair.clone(), cursor);
        count(&STATS.cursors);
    }
    let objects = model.objects.entry(pair).or_default();
    for write in writes {
        match write {
            MapWrite::Put(object) => {
                objects.by_id.insert(object.id.clone(), object.clone());
                objects.by_path.insert(object.path_lower.clone(), object);
            }
            MapWrite::RemovePath(path) => drop(objects.by_path.remove(&path)),
            MapWrite::RemoveId(id) => drop(objects.by_id.remove(&id)),
            MapWrite::RemoveTree(_) => unreachable!("not generated"),
        }
        count(&STATS.map_writes);
    }
    Ok(())
}

fn check(store: &Store, model: &Model) -> Result<(), TestCaseError> {
    let pending = store
        .pending_events(None)
        .map_err(|e| TestCaseError::fail(format!("pending_events: {e}")))?;
    let dead = store
        .dead_letters(None)
        .map_err(|e| TestCaseError::fail(format!("dead_letters: {e}")))?;
    let mut stored_markers = BTreeMap::new();
    let pending_ids: BTreeSet<Ulid> = pending
        .iter()
        .map(|e| e.id.parse::<Ulid>().expect("a ULID"))
        .collect();
    prop_assert_eq!(pending.len(), pending_ids.len(), "duplicate pending ids");
    prop_assert_eq!(
        &pending_ids,
        &model.pending.keys().copied().collect::<BTreeSet<_>>(),
        "pending events"
    );
    for e in &pending {
        let id: Ulid = e.id.parse().expect("a ULID");
        let m = &model.pending[&id];
        prop_assert_eq!(&e.instance, &m.instance);
        prop_assert_eq!(&e.account, &m.account);
        prop_assert_eq!(e.attempts, m.attempts, "attempts of {}", id);
        if let Some(due) = m.due_ms {
            prop_assert_eq!(e.due_ms, due, "due time of {}", id);
        }
        match m.kind {
            EventKind::Notify => prop_assert_eq!(
                marker_of(&e.raw),
                Some(m.marker),
                "the body of pending {} (lost or stale)",
                id
            ),
            // No notification body: a change envelope's is in its record (a claim shows it).
            EventKind::Unknown | EventKind::Changes => prop_assert!(e.raw.is_empty()),
        }
        stored_markers.insert(id, m.marker);
    }
    let dead_ids: BTreeSet<Ulid> = dead.iter().map(|e| e.id.parse().expect("a ULID")).collect();
    prop_assert_eq!(
        &dead_ids,
        &model.dead.keys().copied().collect::<BTreeSet<_>>(),
        "dead letters"
    );
    for e in &dead {
        let id: Ulid = e.id.parse().expect("a ULID");
        let m = &model.dead[&id];
        prop_assert_eq!(e.attempts, m.attempts);
        prop_assert_eq!(&e.account, &m.account);
        prop_assert_eq!(e.dead_at_ms, Some(model.dead_at[&id]), "death of {}", id);
        match m.kind {
            EventKind::Notify => prop_assert_eq!(
                marker_of(&e.raw),
                Some(m.marker),
                "the body of dead letter {}",
                id
            ),
            EventKind::Unknown | EventKind::Changes => prop_assert!(e.raw.is_empty()),
        }
    }

    // The due index holds exactly one entry per pending event, except change envelopes behind
    // their queue's head.
    for instance in INSTANCES {
        let due = store
            .due_ids(instance, u64::MAX - 1, 100_000, |_| false)
            .map_err(|e| TestCaseError::fail(format!("due_ids: {e}")))?;
        let wanted: Vec<Ulid> = model
            .pending
            .iter()
            .filter(|(id, e)| e.instance == instance && !model.behind_head(**id))
            .map(|(id, _)| *id)
            .collect();
        prop_assert_eq!(due.len(), wanted.len(), "due entries of {}", instance);
        prop_assert_eq!(
            due.iter().copied().collect::<BTreeSet<_>>(),
            wanted.into_iter().collect::<BTreeSet<_>>()
        );
    }

    // The delivered history: exactly the deliveries not undone, counted exactly.
    for instance in INSTANCES {
        let query = EventQuery {
            instances: vec![instance.to_owned()],
            account: None,
            states: vec![EventState::Delivered],
            since_ms: None,
            until_ms: None,
            before: None,
            limit: 1 << 20,
            budget: 1 << 20,
        };
        let page = store
            .events_page(&query)
            .map_err(|e| TestCaseError::fail(format!("events_page: {e}")))?;
        let kept: BTreeSet<Ulid> = page.events.iter().map(|e| e.id).collect();
        let wanted: BTreeSet<Ulid> = model
            .history
            .iter()
            .filter(|(_, i)| *i == instance)
            .map(|(id, _)| *id)
            .collect();
        prop_assert_eq!(kept, wanted, "history of {}", instance);
        // Each kept event is found by its id, and by its account through the markers.
        let mut by_account: BTreeMap<String, BTreeSet<Ulid>> = BTreeMap::new();
        for event in &page.events {
            by_account
                .entry(event.account.clone())
                .or_default()
                .insert(event.id);
            let shown = store
                .event(event.id)
                .map_err(|e| TestCaseError::fail(format!("event: {e}")))?;
            prop_assert_eq!(
                shown.map(|e| (e.state, e.account)),
                Some((EventState::Delivered, event.account.clone())),
                "{} shown by id",
                event.id
            );
        }
        for (account, ids) in by_account {
            let query = EventQuery {
                account: Some(account.clone()),
                ..query.clone()
            };
            let page = store
                .events_page(&query)
                .map_err(|e| TestCaseError::fail(format!("events_page: {e}")))?;
            let found: Vec<Ulid> = page.events.iter().map(|e| e.id).collect();
            let newest_first: Vec<Ulid> = ids.iter().rev().copied().collect();
            prop_assert_eq!(found, newest_first, "history of {} by account", account);
        }
    }
    let audits = store
        .history_audit()
        .map_err(|e| TestCaseError::fail(format!("history_audit: {e}")))?;
    for audit in audits {
        prop_assert!(audit.is_sound(), "{:?}", audit);
    }

    // Counters.
    let counters = store.counters();
    // What the counters hold beyond events and dead letters (an instance's other records, where
    // the store counts them) is the store's own; the rest is the model's.
    let mut total: u64 = counters
        .values()
        .map(|c| c.total_bytes() - c.pending_bytes - c.dead_bytes)
        .sum();
    for instance in INSTANCES {
        let got = counters.get(instance).copied().unwrap_or_default();
        let want = model.counters.get(instance).copied().unwrap_or_default();
        let got = MCounters {
            pending_events: got.pending_events,
            pending_bytes: got.pending_bytes,
            dead_events: got.dead_events,
            dead_bytes: got.dead_bytes,
        };
        prop_assert_eq!(got, want, "counters of {}", instance);
        total += want.pending_bytes + want.dead_bytes;
    }
    prop_assert_eq!(store.total_bytes(), total);

    // Outage states: what was stored last (each is synced before it is answered).
    for instance in INSTANCES {
        let outage = store
            .outage(instance)
            .map_err(|e| TestCaseError::fail(format!("outage: {e}")))?;
        prop_assert_eq!(
            outage.as_ref(),
            model.outages.get(instance),
            "outage of {}",
            instance
        );
    }
    // Cursors and object maps of every pair.
    for instance in INSTANCES {
        for account in ACCOUNTS {
            let pair = (instance.to_owned(), account.to_owned());
            let cursor = store
                .cursor(instance, account)
                .map_err(|e| TestCaseError::fail(format!("cursor: {e}")))?;
            prop_assert_eq!(
                cursor.as_ref(),
                model.cursors.get(&pair),
                "cursor of {:?}",
                pair
            );
            let objects = model.objects.get(&pair).cloned().unwrap_or_default();
            for n in 0..3 {
                let (id, path) = (format!("id:{n}"), format!("/f{n}"));
                let by_id = store
                    .object_by_id(instance, account, &id)
                    .map_err(|e| TestCaseError::fail(format!("object_by_id: {e}")))?;
                prop_assert_eq!(by_id.as_ref(), objects.by_id.get(&id), "{:?} {}", pair, id);
                let by_path = store
                    .object_by_path(instance, account, &path)
                    .map_err(|e| TestCaseError::fail(format!("object_by_path: {e}")))?;
                prop_assert_eq!(
                    by_path.as_ref(),
                    objects.by_path.get(&path),
                    "{:?} {}",
                    pair,
                    path
                );
            }
        }
    }

    // At least once: every acked notification × target is covered.
    for (marker, instance, account, id) in &model.covered {
        let covered = if let Some(m) = model.pending.get(id) {
            &m.instance == instance && &m.account == account && stored_markers[id] >= *marker
        } else if let Some(delivered) = model.delivered.get(id) {
            delivered >= marker
        } else {
            model.dead.contains_key(id)
        };
        prop_assert!(
            covered,
            "notification {} for ({}, {}) is not covered (its event {} is gone)",
            marker,
            instance,
            account,
            id
        );
    }
    Ok(())
}

fn scratch_dir() -> tempfile::TempDir {
    // tmpfs makes the fdatasync of each step free where it exists.
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::Builder::new()
            .prefix("hookrelay-props-")
            .tempdir_in(shm)
    {
        return dir;
    }
    tempfile::Builder::new()
        .prefix("hookrelay-props-")
        .tempdir()
        .expect("a temp dir")
}

/// How often each path was taken over a whole run (so a run that never merges, parks or
/// reopens is noticed, not taken for a pass).
struct Stats {
    cases: AtomicU64,
    steps: AtomicU64,
    created: AtomicU64,
    parked: AtomicU64,
    merged: AtomicU64,
    claimed: AtomicU64,
    delivered: AtomicU64,
    rescheduled: AtomicU64,
    dead: AtomicU64,
    replayed: AtomicU64,
    reopened: AtomicU64,
    crashed: AtomicU64,
    power_cuts: AtomicU64,
    torn: AtomicU64,
    /// Deliveries a power cut undid (the event pending again).
    undone: AtomicU64,
    /// sled's blob files in the power-cut images (tree nodes too large for its log).
    blobs: AtomicU64,
    purged_dead: AtomicU64,
    purged_pending: AtomicU64,
    expired: AtomicU64,
    /// Dead letters an expiry kept (they died at or after their cutoff).
    expiry_kept: AtomicU64,
    /// `UNKNOWN` events catch-up created.
    caught_up: AtomicU64,
    envelopes: AtomicU64,
    /// Envelopes that became their queue's head when the head was delivered or dead-lettered.
    promoted: AtomicU64,
    cursors: AtomicU64,
    outages: AtomicU64,
    map_writes: AtomicU64,
    /// Records `forget_instance` deleted.
    forgotten: AtomicU64,
}

static STATS: Stats = Stats {
    cases: AtomicU64::new(0),
    steps: AtomicU64::new(0),
    created: AtomicU64::new(0),
    parked: AtomicU64::new(0),
    merged: AtomicU64::new(0),
    claimed: AtomicU64::new(0),
    delivered: AtomicU64::new(0),
    rescheduled: AtomicU64::new(0),
    dead: AtomicU64::new(0),
    replayed: AtomicU64::new(0),
    reopened: AtomicU64::new(0),
    crashed: AtomicU64::new(0),
    power_cuts: AtomicU64::new(0),
    torn: AtomicU64::new(0),
    undone: AtomicU64::new(0),
    blobs: AtomicU64::new(0),
    purged_dead: AtomicU64::new(0),
    purged_pending: AtomicU64::new(0),
    expired: AtomicU64::new(0),
    expiry_kept: AtomicU64::new(0),
    caught_up: AtomicU64::new(0),
    envelopes: AtomicU64::new(0),
    promoted: AtomicU64::new(0),
    cursors: AtomicU64::new(0),
    outages: AtomicU64::new(0),
    map_writes: AtomicU64::new(0),
    forgotten: AtomicU64::new(0),
};

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A power-loss file system (tests/powerfs) on a mount point of its own.
struct Disk {
    mountpoint: tempfile::TempDir,
    fs: PowerFs,
}

impl Disk {
    /// Mounts one holding a copy of `seed` (empty without).
    fn mount(seed: Option<&Path>) -> Result<Disk, TestCaseError> {
        let mountpoint = tempfile::tempdir().expect("a temp dir");
        let fs = PowerFs::mount(mountpoint.path(), seed)
            .map_err(|e| TestCaseError::fail(format!("powerfs (FUSE): {e}")))?;
        Ok(Disk { mountpoint, fs })
    }

    fn store(&self) -> PathBuf {
        self.mountpoint.path().join("store")
    }
}

/// Whether a step wrote a batch that is synced before its answer (which makes every claim and
/// delivery before it durable too): an ingest with targets, a burst, an outcome, replay or
/// dead letter that changed something, or any maintenance request, catch-up or walk page (the
/// step always sends these, and only delivered and claim may defer their sync:
/// `Op::may_defer_sync` in store/commit.rs).
fn synced(op: &Op, changed: bool) -> bool {
    match op {
        Op::Ingest { targets, .. } => !targets.is_empty(),
        Op::Burst { .. }
        | Op::PurgeDead { .. }
        | Op::PurgePending { .. }
        | Op::ExpireDead { .. }
        | Op::CatchUp { .. }
        | Op::Walk { .. }
        | Op::Outage { .. } => true,
        Op::Reschedule { .. } | Op::DeadLetter(_) | Op::ReplayDead(_) => changed,
        Op::Claim(_) | Op::Delivered(_) | Op::Unknown(_) | Op::Reopen(_) => false,
    }
}

/// One case: a fresh store on a power-loss file system, the ops, a check after each, a final
/// close and reopen.
fn run_case(ops: &[Op]) -> Result<(), TestCaseError> {
    count(&STATS.cases);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    // Crash images and power-cut file systems are new directories and mounts; every one lives
    // until the case ends (a dropped handle's committer may still be closing the old one).
    let mut dirs = vec![scratch_dir()];
    let mut disks = vec![Disk::mount(None)?];
    let mut path = disks[0].store();
    runtime.block_on(async {
        let mut store = open(&path);
        let mut model = Model::default();
        check(&store, &model)?;
        for (n, op) in ops.iter().enumerate() {
            if let Op::Reopen(how) = op {
                let mut power_cut = false;
                match how {
                    Reopening::Clean => store
                        .close()
                        .await
                        .map_err(|e| TestCaseError::fail(format!("close: {e}")))?,
                    Reopening::Dropped => {}
                    Reopening::Crashed => {
                        // The copy goes on a power-loss file system of its own, all of it durable.
                        dirs.push(scratch_dir());
                        let image = dirs[dirs.len() - 1].path();
                        store::testing::crash_image(&path, &image.join("store"))
                            .map_err(|e| TestCaseError::fail(format!("crash image: {e}")))?;
                        disks.push(Disk::mount(Some(image))?);
                        path = disks[disks.len() - 1].store();
                        count(&STATS.crashed);
                    }
                    Reopening::PowerCut { torn } => {
                        let loss = match torn {
                            Some(seed) => {
                                count(&STATS.torn);
                                Loss::Torn { seed: *seed }
                            }
                            None => Loss::Unsynced,
                        };
                        dirs.push(scratch_dir());
                        let image = dirs[dirs.len() - 1].path().join("cut");
                        let disk = disks.last().expect("a disk");
                        disk.fs
                            .power_loss_image(&image, loss)
                            .map_err(|e| TestCaseError::fail(format!("power-loss image: {e}")))?;
                        let blobs = std::fs::read_dir(image.join("store/blobs"))
                            .map_or(0, |entries| entries.count());
                        STATS.blobs.fetch_add(blobs as u64, Ordering::Relaxed);
                        disks.push(Disk::mount(Some(&image))?);
                        path = disks[disks.len() - 1].store();
                        power_cut = true;
                        count(&STATS.power_cuts);
                    }
                }
                drop(store);
                store = open(&path);
                if power_cut {
                    model.undo_unsynced(&store)?;
                }
                // The open made everything it found durable.
                model.unsynced.clear();
                count(&STATS.reopened);
            }
            count(&STATS.steps);
            let before = (model.pending.clone(), model.dead.clone());
            step(&store, &mut model, op)
                .await
                .map_err(|e| TestCaseError::fail(format!("step {n} {op:?}: {e}")))?;
            if synced(op, before != (model.pending.clone(), model.dead.clone())) {
                model.unsynced.clear();
            }
            check(&store, &model)
                .map_err(|e| TestCaseError::fail(format!("after step {n} {op:?}: {e}")))?;
        }
        store
            .close()
            .await
            .map_err(|e| TestCaseError::fail(format!("close: {e}")))?;
        drop(store);
        // Once more after a final reopen: the state is durable as committed.
        let store = open(&path);
        check(&store, &model)?;
        store
            .close()
            .await
            .map_err(|e| TestCaseError::fail(format!("close: {e}")))
    })
}

/// Every path the run must take at least once, with how often it did.
fn reach(stats: &Stats) -> Vec<(&'static str, u64)> {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    vec![
        ("created", get(&stats.created)),
        ("parked", get(&stats.parked)),
        ("merged", get(&stats.merged)),
        ("delivered", get(&stats.delivered)),
        ("rescheduled", get(&stats.rescheduled)),
        ("dead-lettered", get(&stats.dead)),
        ("replayed", get(&stats.replayed)),
        ("purged (dead)", get(&stats.purged_dead)),
        ("purged (pending)", get(&stats.purged_pending)),
        ("expired", get(&stats.expired)),
        ("kept at an expiry", get(&stats.expiry_kept)),
        ("caught up", get(&stats.caught_up)),
        ("enqueued (walk page)", get(&stats.envelopes)),
        ("promoted to a queue's head", get(&stats.promoted)),
        ("set a cursor for", get(&stats.cursors)),
        ("stored an outage state for", get(&stats.outages)),
        ("wrote an object map for", get(&stats.map_writes)),
        ("forgot the records of", get(&stats.forgotten)),
        ("reopened", get(&stats.reopened)),
        ("crash-imaged", get(&stats.crashed)),
        ("power-cut", get(&stats.power_cuts)),
        ("torn", get(&stats.torn)),
        ("blob-filed", get(&stats.blobs)),
    ]
}

/// Rounds of cases the test runs at most to take every path of [`reach`].
const REACH_ROUNDS: u32 = 4;

#[test]
fn the_queue_keeps_every_acked_notification_covered() {
    let config = crate::cases(64, 1_000);
    let cases = config.cases;
    let started = std::time::Instant::now();
    // Rounds of `cases` until every path was taken (a rare one, such as a blob file in a cut's
    // image, can miss 64 random cases), at most REACH_ROUNDS.
    let mut rounds = 0;
    loop {
        rounds += 1;
        let mut runner = proptest::test_runner::TestRunner::new(config.clone());
        if let Err(failure) = runner.run(&proptest::collection::vec(op(), 1..=40), |ops| {
            run_case(&ops)
        }) {
            panic!("{failure}");
        }
        if rounds >= REACH_ROUNDS || reach(&STATS).iter().all(|(_, n)| *n > 0) {
            break;
        }
    }
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let s = &STATS;
    eprintln!(
        "queue model: {rounds} round(s) of {cases} cases ({} run), {} steps in {:?}; events created {}, \
         parked {}, merged {}; claims {}, delivered {}, rescheduled {}, dead-lettered {}, \
         replayed {}; purged {} dead and {} pending, expired {} (kept {}); catch-up events {}; \
         envelopes {} (promoted {}), cursors {}, object-map writes {}; records forgotten {}; reopens {} ({} of a \
         crash image, {} after a power cut, {} of them torn; {} deliveries undone by a cut; {} \
         blob files in the cuts' images)",
        get(&s.cases),
        get(&s.steps),
        started.elapsed(),
        get(&s.created),
        get(&s.parked),
        get(&s.merged),
        get(&s.claimed),
        get(&s.delivered),
        get(&s.rescheduled),
        get(&s.dead),
        get(&s.replayed),
        get(&s.purged_dead),
        get(&s.purged_pending),
        get(&s.expired),
        get(&s.expiry_kept),
        get(&s.caught_up),
        get(&s.envelopes),
        get(&s.promoted),
        get(&s.cursors),
        get(&s.map_writes),
        get(&s.forgotten),
        get(&s.reopened),
        get(&s.crashed),
        get(&s.power_cuts),
        get(&s.torn),
        get(&s.undone),
        get(&s.blobs),
    );
    for (path, n) in reach(s) {
        assert!(
            n > 0,
            "the run never {path} an event in {rounds} round(s): the generator lost its reach"
        );
    }
}
