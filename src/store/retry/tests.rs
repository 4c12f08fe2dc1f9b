//! `retry` on the store: more waiting events than one page, all made due now with their
//! attempt counts, nothing else touched; ids that name no pending event reported.

use bytes::Bytes;

use super::*;
use crate::store::{IngestTarget, OpenMode, Placed, Retry, StoreOptions, fdatasync};

/// More than two pages.
const WAITING: usize = 2 * MAINTENANCE_PAGE + 10;

fn target(instance: &str, n: usize) -> IngestTarget {
    IngestTarget {
        instance: instance.into(),
        account: format!("dbid:{n}"),
        coalesce: false,
        quota_bytes: u64::MAX,
        changes: false,
    }
}

/// Creates `count` events of `instance` in one ingest and makes each wait an hour for its
/// second attempt.
async fn waiting(store: &Store, instance: &str, count: usize) -> Vec<Ulid> {
    let body = Bytes::from_static(br#"{"list_folder": {"accounts": []}}"#);
    let targets = (0..count).map(|n| target(instance, n)).collect();
    let placed = store
        .ingest(body, now_ms(), targets)
        .await
        .unwrap_or_else(|e| panic!("ingest: {e}"));
    let ids: Vec<Ulid> = placed
        .into_iter()
        .map(|p| match p {
            Placed::Created(event) => event.id,
            other => panic!("expected a new event, got {other:?}"),
        })
        .collect();
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let (store, instance, id) = (store.clone(), instance.to_owned(), *id);
            tokio::spawn(async move {
                let retry = Retry {
                    attempts: 1,
                    due_ms: now_ms() + 3_600_000,
                    definite_refusal: false,
                    last_status: Some(503),
                    last_error: Some("503".into()),
                };
                store.reschedule(&instance, id, retry).await
            })
        })
        .collect();
    for task in tasks {
        task.await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("reschedule: {e}"));
    }
    ids
}

fn due_now(store: &Store, instance: &str) -> usize {
    store
        .due_ids(instance, now_ms(), 10 * WAITING, |_| false)
        .unwrap_or_else(|e| panic!("{e}"))
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_waiting_event_of_an_instance_becomes_due_with_its_attempts() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let options = StoreOptions {
        path: dir.path().join("store"),
        cache_bytes: 4 * 1024 * 1024,
        mode: OpenMode::Daemon,
        journal_bytes: crate::store::DEFAULT_JOURNAL_BYTES,
    };
    let (store, _) = Store::open(&options, fdatasync()).unwrap_or_else(|e| panic!("{e}"));
    let ids = waiting(&store, "acme", WAITING).await;
    let others = waiting(&store, "other", 3).await;
    assert_eq!((due_now(&store, "acme"), due_now(&store, "other")), (0, 0));

    let retried = store
        .retry_waiting(&RetryTarget::Instance("acme".into()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(retried.count, WAITING as u64);
    assert_eq!(retried.instances, BTreeSet::from(["acme".to_owned()]));
    assert!(retried.not_found.is_empty());
    assert_eq!(due_now(&store, "acme"), WAITING);
    assert_eq!(due_now(&store, "other"), 0, "another instance waits on");
    // Moved, not copied: one due entry per waiting event.
    assert_eq!(store.db.scan_prefix(keys::DUE).count(), WAITING + 3);
    let pending = store.pending_events(Some("acme")).unwrap_or_default();
    assert_eq!(pending.len(), WAITING);
    assert!(pending.iter().all(|e| e.attempts == 1));

    // Due already: nothing to do, and found all the same.
    let unknown = Ulid::from_parts(1, 1);
    let again = store
        .retry_waiting(&RetryTarget::Ids(vec![ids[0], unknown]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((again.count, again.not_found), (0, vec![unknown]));

    let one = store
        .retry_waiting(&RetryTarget::Ids(vec![others[1]]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(one.count, 1);
    assert_eq!(due_now(&store, "other"), 1);
    let all = store
        .retry_waiting(&RetryTarget::All)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(all.count, 2);
    assert_eq!(due_now(&store, "other"), 3);
    store.close().await.unwrap_or_else(|e| panic!("{e}"));
}
