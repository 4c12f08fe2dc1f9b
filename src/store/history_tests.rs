//! The delivered history's pages and account markers: where deliveries in any order land, that
//! each is found by id and by account, and that eviction, expiry and replay keep the pages
//! disjoint, the counters exact and the markers those of the events kept.

use std::collections::BTreeSet;
use std::path::Path;

use super::*;
use crate::time::now_ms;

fn open(dir: &Path) -> Store {
    let options = StoreOptions {
        path: dir.join("store"),
        cache_bytes: 4 * 1024 * 1024,
        mode: OpenMode::Daemon,
        journal_bytes: DEFAULT_JOURNAL_BYTES,
    };
    // A dropped handle's committer may hold sled's lock a moment longer.
    let mut last = None;
    for _ in 0..100 {
        match Store::open(&options, fdatasync()) {
            Ok((store, _)) => return store,
            Err(err) => last = Some(err),
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("open: {last:?}")
}

fn account(n: usize) -> String {
    format!("dbid:{}", n % 3)
}

/// Ingests `count` events for accounts `dbid:0..2` in turn; their ids, oldest first.
async fn ingest(store: &Store, count: usize) -> Vec<(Ulid, String)> {
    let mut ids = Vec::new();
    for n in 0..count {
        let target = IngestTarget {
            instance: "acme".into(),
            account: account(n),
            coalesce: false,
            quota_bytes: u64::MAX,
            changes: false,
        };
        let body = Bytes::from(format!(r#"{{"delta": {{"users": [{n}]}}}}"#));
        let placed = store
            .ingest(body, now_ms(), vec![target])
            .await
            .unwrap_or_else(|e| panic!("ingest: {e}"));
        match placed.into_iter().next() {
            Some(Placed::Created(event)) => ids.push((event.id, account(n))),
            other => panic!("expected a new event, got {other:?}"),
        }
    }
    ids
}

/// An envelope of about 300 bytes naming `id`, as delivery would keep it.
fn outcome(id: Ulid, keep: u64) -> DeliveredOutcome {
    let padding = "x".repeat(240);
    DeliveredOutcome {
        delivered_ms: now_ms(),
        attempt: None,
        envelope: Some(Bytes::from(format!(
            r#"{{"message":{{"eventId":"{id}","raw":{{"p":"{padding}"}},"events":[]}}}}"#
        ))),
        keep: Some(keep),
    }
}

/// Delivers `ids` all at once (so that batches group them), in the order given.
async fn deliver_all(store: &Store, ids: &[(Ulid, String)], keep: u64) {
    let mut tasks = tokio::task::JoinSet::new();
    for (id, _) in ids {
        let (store, id) = (store.clone(), *id);
        tasks.spawn(async move { store.delivered_with("acme", id, outcome(id, keep)).await });
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(err) = joined.unwrap_or_else(|e| panic!("{e}")) {
            panic!("delivered: {err}");
        }
    }
}

fn query(account: Option<&str>) -> EventQuery {
    EventQuery {
        instances: vec!["acme".into()],
        account: account.map(str::to_owned),
        states: vec![EventState::Delivered],
        since_ms: None,
        until_ms: None,
        before: None,
        limit: 1 << 20,
        budget: 1 << 20,
    }
}

fn listed(store: &Store, account: Option<&str>) -> Vec<Ulid> {
    match store.events_page(&query(account)) {
        Ok(page) => page.events.iter().map(|e| e.id).collect(),
        Err(err) => panic!("events_page: {err}"),
    }
}

/// The audit of `acme`, which must find its history sound ([`HistoryAudit::is_sound`]).
fn audit(store: &Store) -> HistoryAudit {
    let audits = store.history_audit().unwrap_or_else(|e| panic!("{e}"));
    let audit = audits
        .into_iter()
        .find(|a| a.instance == "acme")
        .unwrap_or_default();
    assert!(audit.is_sound(), "{audit:?}");
    audit
}

fn pages(store: &Store) -> usize {
    store
        .db
        .scan_prefix(keys::instance_prefix(keys::HISTORY, "acme"))
        .count()
}

/// Every id kept is listed newest first, found by id, and listed under its account.
fn assert_found(store: &Store, kept: &[(Ulid, String)]) {
    let mut newest_first: Vec<Ulid> = kept.iter().map(|(id, _)| *id).collect();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(listed(store, None), newest_first);
    for n in 0..3 {
        let mine: Vec<Ulid> = newest_first
            .iter()
            .filter(|id| kept.iter().any(|(k, a)| k == *id && *a == account(n)))
            .copied()
            .collect();
        assert_eq!(listed(store, Some(&account(n))), mine, "{}", account(n));
    }
    for (id, account) in kept {
        let event = store.event(*id).unwrap_or_else(|e| panic!("{e}"));
        let event = event.unwrap_or_else(|| panic!("{id} not found"));
        assert_eq!(
            (event.state, &event.account),
            (EventState::Delivered, account)
        );
        let envelope = String::from_utf8(event.envelope.unwrap_or_default()).unwrap_or_default();
        assert!(envelope.contains(&id.to_string()), "{id}: {envelope}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_in_any_order_share_pages_and_each_is_found_by_id_and_account() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = open(dir.path());
    let ids = ingest(&store, 240).await;
    // In order, then out of order: the late ones fall inside pages already written, which
    // take them or split at them once full (240 × ~330 bytes is several pages).
    let (first, rest) = ids.split_at(120);
    deliver_all(&store, first, u64::MAX).await;
    let mut shuffled = rest.to_vec();
    shuffled.sort_by_key(|(id, _)| id.0.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let (even, odd): (Vec<_>, Vec<_>) = shuffled.iter().cloned().partition(|(id, _)| id.0 % 2 == 0);
    deliver_all(&store, &odd, u64::MAX).await;
    deliver_all(&store, &even, u64::MAX).await;

    let audited = audit(&store);
    assert_eq!(audited.records, 240);
    assert!(
        pages(&store) < 240 / 4,
        "{} pages for 240 events",
        pages(&store)
    );
    assert_found(&store, &ids);

    // The same after a restart.
    drop(store);
    let store = open(dir.path());
    audit(&store);
    assert_found(&store, &ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_and_expiry_take_the_oldest_with_their_seconds_markers() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = open(dir.path());
    let old = ingest(&store, 30).await;
    // The next events are accepted in a later second.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let middle = ingest(&store, 30).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let new = ingest(&store, 30).await;
    deliver_all(&store, &old, u64::MAX).await;
    deliver_all(&store, &middle, u64::MAX).await;
    let before = audit(&store);
    assert_eq!(before.records, 60);
    assert!(
        before.markers >= 12,
        "two seconds of three accounts, twice: {before:?}"
    );

    // A bound of about 40 events' bytes: delivering 30 more evicts the oldest pages.
    let per_event = before.bytes / before.records;
    deliver_all(&store, &new, 40 * per_event).await;
    let after = audit(&store);
    assert!(after.bytes <= 40 * per_event, "{after:?}");
    let kept: Vec<(Ulid, String)> = [&old[..], &middle[..], &new[..]]
        .concat()
        .into_iter()
        .filter(|(id, _)| listed(&store, None).contains(id))
        .collect();
    assert_eq!(kept.len() as u64, after.records);
    let oldest_kept = kept.iter().map(|(id, _)| *id).min();
    assert!(oldest_kept > Some(old[29].0), "the oldest went first");
    assert!(kept.iter().any(|(id, _)| *id == new[29].0));
    assert_found(&store, &kept);
    // No marker is left for the first second, all of whose events went.
    let first_second = history::marker_second(old[0].0);
    let markers: BTreeSet<Ulid> = store
        .db
        .scan_prefix(keys::instance_prefix(keys::HISTORY_BY_ACCOUNT, "acme"))
        .keys()
        .filter_map(|key| key.ok().and_then(|key| keys::trailing_id(&key)))
        .collect();
    assert!(!markers.contains(&first_second), "{markers:?}");

    // Expiry before the newest second takes everything older, and their markers.
    let cutoff = history::marker_second(new[0].0).timestamp_ms();
    let cutoffs = Cutoffs {
        by_instance: [("acme".to_owned(), cutoff)].into(),
        otherwise: 0,
    };
    let markers_before = audit(&store).markers;
    let expired = store
        .expire_history(cutoffs, vec!["acme".into()])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let left: Vec<(Ulid, String)> = kept
        .iter()
        .filter(|(id, _)| id.timestamp_ms() >= cutoff)
        .cloned()
        .collect();
    let expired_audit = audit(&store);
    // Events and marker pairs.
    let pairs = (markers_before - expired_audit.markers) / 2;
    assert_eq!(expired, (kept.len() - left.len()) as u64 + pairs);
    assert_eq!(expired_audit.records as usize, left.len());
    let seconds: BTreeSet<(String, Ulid)> = left
        .iter()
        .map(|(id, account)| (account.clone(), history::marker_second(*id)))
        .collect();
    assert_eq!(
        expired_audit.markers as usize,
        2 * seconds.len(),
        "the seconds left, twice"
    );
    assert_found(&store, &left);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_takes_one_event_out_of_its_page() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = open(dir.path());
    let ids = ingest(&store, 12).await;
    deliver_all(&store, &ids, u64::MAX).await;
    let middle = ids[5].clone();
    let replayed = store
        .replay_history(vec![("acme".into(), middle.0)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(replayed, 1);
    let left: Vec<(Ulid, String)> = ids.iter().filter(|e| **e != middle).cloned().collect();
    assert_eq!(audit(&store).records, 11);
    assert_found(&store, &left);
    let pending = store.event(middle.0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pending.map(|e| e.state), Some(EventState::Pending));

    // Delivered again, it is back in its page.
    deliver_all(&store, std::slice::from_ref(&middle), u64::MAX).await;
    assert_eq!(audit(&store).records, 12);
    assert_found(&store, &ids);
}
