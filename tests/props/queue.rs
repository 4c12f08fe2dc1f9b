//! Model-based test of the durable queue (reliability.md T9): `hookrelay::store::Store` driven
//! by random sequences of `ingest` (alone, or several at once, which the committer takes into one
//! batch and one run record), `claim`, `delivered`, `reschedule`, `dead_letter`, `replay_dead`
//! and a reopen (after a clean close, after dropping the handle, of a crash image: the store's
//! files copied while it runs, sled's before the journal's, or of a power-loss image: the store
//! lives on `powerfs`, and the files are as a power cut would leave them, with only what was
//! synced, or in half of them also a random part of what was written since, the last page torn),
//! against a plain model (maps of pending and dead events, merge targets, counters). The journal
//! is 16 KiB, so that cases go through its checkpoints and batches too large for it. A power
//! cut may undo what was answered before its sync (a delivered event's removal, a claim) since
//! the last batch that was synced; the model takes back the ones the store shows undone. After
//! every step:
//!
//! - **at least once**: every acknowledged notification × target is covered by a pending event
//!   of that pair holding it or a later notification of the pair, by a delivered event that did,
//!   or by a dead letter;
//! - the store's pending events, dead letters, due index and counters equal the model's;
//! - every pending event and dead letter still has its notification body.
//!
//! CI: 64 cases × ≤ 40 steps; `HOOKRELAY_LONG_TESTS=1`: 1,000 cases.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use hookrelay::store::{
    self, DeadLetter, IngestTarget, OpenMode, Placed, Retry, Store, StoreOptions,
};
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
    Reopen(Reopening),
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

/// A notification's padding: mostly a few bytes, one in ten 16–90 KiB (so that sled writes
/// some tree nodes as blob files).
fn pad() -> impl Strategy<Value = usize> {
    prop_oneof![9 => 0usize..200, 1 => 16_384usize..92_160]
}

fn op() -> impl Strategy<Value = Op> {
    let index = any::<prop::sample::Index>();
    prop_oneof![
        6 => (
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
        2 => (
            0..INSTANCES.len(),
            proptest::collection::vec(0..ACCOUNTS.len(), 2..=8),
            pad(),
        )
            .prop_map(|(instance, accounts, pad)| Op::Burst {
                instance,
                accounts,
                pad,
            }),
        3 => index.clone().prop_map(Op::Claim),
        3 => index.clone().prop_map(Op::Delivered),
        4 => (index.clone(), any::<bool>()).prop_map(|(pick, definite_refusal)| Op::Reschedule {
            pick,
            definite_refusal,
        }),
        2 => index.clone().prop_map(Op::DeadLetter),
        2 => index.prop_map(Op::ReplayDead),
        1 => (0u8..4).prop_map(Op::Unknown),
        3 => prop_oneof![
            Just(Reopening::Clean),
            Just(Reopening::Dropped),
            Just(Reopening::Crashed),
            Just(Reopening::PowerCut { torn: None }),
            any::<u64>().prop_map(|seed| Reopening::PowerCut { torn: Some(seed) }),
        ]
        .prop_map(Op::Reopen),
    ]
}

#[derive(Debug, Clone, PartialEq)]
struct MEvent {
    instance: String,
    account: String,
    /// The newest notification merged into it (its marker).
    marker: u64,
    attempts: u32,
    refused_only: bool,
    bytes: u64,
    /// Known due time, when the test chose it.
    due_ms: Option<u64>,
}

impl MEvent {
    /// A new event of `target` holding notification `marker`, never attempted.
    fn new(target: &IngestTarget, marker: u64, bytes: u64, accepted_ms: u64) -> MEvent {
        MEvent {
            instance: target.instance.clone(),
            account: target.account.clone(),
            marker,
            attempts: 0,
            refused_only: true,
            bytes,
            due_ms: Some(accepted_ms),
        }
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
}

#[derive(Debug, Default)]
struct Model {
    pending: BTreeMap<Ulid, MEvent>,
    dead: BTreeMap<Ulid, MEvent>,
    /// (instance, account) → the waiting event a notification may merge into.
    pairs: BTreeMap<(String, String), Ulid>,
    counters: BTreeMap<String, MCounters>,
    /// Acked notification × target → the event that took it.
    covered: Vec<(u64, String, String, Ulid)>,
    /// Delivered event → the marker it carried when delivered.
    delivered: BTreeMap<Ulid, u64>,
    /// Claims and deliveries since the last batch that was synced.
    unsynced: Vec<Unsynced>,
    next_marker: u64,
}

impl Model {
    fn counter(&mut self, instance: &str) -> &mut MCounters {
        self.counters.entry(instance.to_owned()).or_default()
    }

    fn unlink(&mut self, event: &MEvent, id: Ulid) {
        let key = (event.instance.clone(), event.account.clone());
        if self.pairs.get(&key) == Some(&id) {
            self.pairs.remove(&key);
        }
    }

    fn remove_pending(&mut self, id: Ulid) -> MEvent {
        let event = self.pending.remove(&id).expect("a pending event");
        self.unlink(&event, id);
        let c = self.counter(&event.instance);
        c.pending_events -= 1;
        c.pending_bytes -= event.bytes;
        event
    }

    fn add_pending(&mut self, id: Ulid, event: MEvent) {
        let c = self.counter(&event.instance);
        c.pending_events += 1;
        c.pending_bytes += event.bytes;
        self.pending.insert(id, event);
    }

    /// Records a claim or delivery of pending event `id` that a power cut may undo.
    fn answered_unsynced(&mut self, id: Ulid, delivered: bool) {
        let event = self.pending[&id].clone();
        let pair = (event.instance.clone(), event.account.clone());
        self.unsynced.push(Unsynced {
            id,
            was_target: self.pairs.get(&pair) == Some(&id),
            delivered: delivered.then_some(event),
        });
    }

    /// After a power cut: the claims and deliveries the store shows undone are undone in the
    /// model too (a delivered event is pending again, a merge target is one again).
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
                self.add_pending(undone.id, event.clone());
                count(&STATS.undone);
            }
            let Some(event) = self.pending.get(&undone.id) else {
                continue;
            };
            let pair = (event.instance.clone(), event.account.clone());
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
            let accepted_ms = store::now_ms();
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
            prop_assert_eq!(
                e.raw.as_deref().and_then(marker_of),
                Some(m.marker),
                "claimed raw"
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
            store
                .delivered(&instance, id)
                .await
                .map_err(|e| TestCaseError::fail(format!("delivered: {e}")))?;
            model.answered_unsynced(id, true);
            let event = model.remove_pending(id);
            model.delivered.insert(id, event.marker);
            count(&STATS.delivered);
        }
        Op::Reschedule {
            pick: index,
            definite_refusal,
        } => {
            let Some(id) = pick(model.pending.keys().copied(), index) else {
                return Ok(());
            };
            let m = model.pending[&id].clone();
            let due_ms = store::now_ms() + 3_600_000;
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
            let (refused_only, key) = (e.refused_only, (m.instance.clone(), m.account.clone()));
            if refused_only {
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
            store
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
            let mut event = model.remove_pending(id);
            event.attempts = attempts;
            let c = model.counter(&instance);
            c.dead_events += 1;
            c.dead_bytes += event.bytes;
            model.dead.insert(id, event);
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
            let mut event = model.dead.remove(&id).expect("dead");
            let c = model.counter(&instance);
            c.dead_events -= 1;
            c.dead_bytes -= event.bytes;
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
    let accepted_ms = store::now_ms();
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
        model.add_pending(event.id, MEvent::new(&target, marker, bytes, accepted_ms));
        model
            .covered
            .push((marker, target.instance, target.account, event.id));
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
        let marker = marker_of(&e.raw);
        prop_assert_eq!(
            marker,
            Some(m.marker),
            "the body of pending {} (lost or stale)",
            id
        );
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
        prop_assert_eq!(
            marker_of(&e.raw),
            Some(m.marker),
            "the body of dead letter {}",
            id
        );
    }

    // The due index holds exactly one entry per pending event.
    for instance in INSTANCES {
        let due = store
            .due_ids(instance, u64::MAX - 1, 100_000, |_| false)
            .map_err(|e| TestCaseError::fail(format!("due_ids: {e}")))?;
        let wanted: Vec<Ulid> = model
            .pending
            .iter()
            .filter(|(_, e)| e.instance == instance)
            .map(|(id, _)| *id)
            .collect();
        prop_assert_eq!(due.len(), wanted.len(), "due entries of {}", instance);
        prop_assert_eq!(
            due.iter().copied().collect::<BTreeSet<_>>(),
            wanted.into_iter().collect::<BTreeSet<_>>()
        );
    }

    // Counters.
    let counters = store.counters();
    let mut total = 0;
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
/// delivery before it durable too): an ingest with targets, a burst, or an outcome, replay or
/// dead letter that changed something.
fn synced(op: &Op, changed: bool) -> bool {
    match op {
        Op::Ingest { targets, .. } => !targets.is_empty(),
        Op::Burst { .. } => true,
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

#[test]
fn the_queue_keeps_every_acked_notification_covered() {
    let config = crate::cases(64, 1_000);
    let cases = config.cases;
    let started = std::time::Instant::now();
    let mut runner = proptest::test_runner::TestRunner::new(config);
    if let Err(failure) = runner.run(&proptest::collection::vec(op(), 1..=40), |ops| {
        run_case(&ops)
    }) {
        panic!("{failure}");
    }
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let s = &STATS;
    eprintln!(
        "queue model: {cases} cases (+ shrinking: {} run), {} steps in {:?}; events created {}, \
         parked {}, merged {}; claims {}, delivered {}, rescheduled {}, dead-lettered {}, \
         replayed {}; reopens {} ({} of a crash image, {} after a power cut, {} of them torn; \
         {} deliveries undone by a cut; {} blob files in the cuts' images)",
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
        get(&s.reopened),
        get(&s.crashed),
        get(&s.power_cuts),
        get(&s.torn),
        get(&s.undone),
        get(&s.blobs),
    );
    for (path, n) in [
        ("created", get(&s.created)),
        ("parked", get(&s.parked)),
        ("merged", get(&s.merged)),
        ("delivered", get(&s.delivered)),
        ("rescheduled", get(&s.rescheduled)),
        ("dead-lettered", get(&s.dead)),
        ("replayed", get(&s.replayed)),
        ("reopened", get(&s.reopened)),
        ("crash-imaged", get(&s.crashed)),
        ("power-cut", get(&s.power_cuts)),
        ("torn", get(&s.torn)),
        ("blob-filed", get(&s.blobs)),
    ] {
        assert!(
            n > 0,
            "the run never {path} an event: the generator lost its reach"
        );
    }
}
