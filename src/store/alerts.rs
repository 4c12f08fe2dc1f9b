//! The operator alerts' records: the alert queue (`l/`) and the per-instance tallies of dead
//! letters not yet alerted (`v/`), their keys, and the reads the alert tasks make.
//!
//! | key | value |
//! |---|---|
//! | `l/q<alert id>` | [`AlertRecord`]: one queued alert, with its attempts and due time |
//! | `l/d<due ms><alert id>` | the queue's due-time index (empty value) |
//! | `l/n` | [`AlertQueueRecord`]: how many alerts are queued and their bytes |
//! | `v/<instance>\0` | [`DeadTallyRecord`]: dead letters of the instance not alerted yet |
//!
//! The queue is capped at [`MAX_QUEUED_ALERTS`]: past it the oldest alert goes, so that an
//! alert URL that never answers cannot fill the disk. Its bytes count against
//! `storage.max_bytes` with everything else; the tallies count as their instance's other
//! records. A tally is written in the same batch as the dead letters it counts, so a dead letter
//! committed before a crash is still alerted after it.

use serde::{Deserialize, Serialize};
use ulid::Ulid;

use super::Store;
use super::error::{Error, sled_error};
use super::keys;

/// `l/…`: the alert queue.
pub const ALERTS: &[u8] = b"l/";
/// `v/<instance>\0`: dead letters not alerted yet.
pub const TALLIES: &[u8] = b"v/";

/// Alerts the queue holds at most; enqueueing past it drops the oldest.
pub const MAX_QUEUED_ALERTS: u64 = 10_000;

/// What one queued alert adds to the store's bytes beside its record (its two keys).
const ALERT_OVERHEAD_BYTES: u64 = 64;

const RECORD: &[u8] = b"l/q";
const DUE: &[u8] = b"l/d";
const QUEUE: &[u8] = b"l/n";

pub(super) fn alert_key(id: Ulid) -> Vec<u8> {
    [RECORD, &id.to_bytes()[..]].concat()
}

pub(super) fn due_key(due_ms: u64, id: Ulid) -> Vec<u8> {
    [DUE, &due_ms.to_be_bytes()[..], &id.to_bytes()[..]].concat()
}

pub(super) fn queue_key() -> Vec<u8> {
    QUEUE.to_vec()
}

/// The first key of the queue's records (the oldest alert: ids grow with time).
pub(super) fn record_prefix() -> &'static [u8] {
    RECORD
}

pub(super) fn tally_key(instance: &str) -> Vec<u8> {
    keys::instance_prefix(TALLIES, instance)
}

/// Splits a due-index key into (due ms, alert id).
fn parse_due(key: &[u8]) -> Option<(u64, Ulid)> {
    let rest = key.strip_prefix(DUE)?;
    let due: [u8; 8] = rest.get(..8)?.try_into().ok()?;
    let id: [u8; 16] = rest.get(8..24)?.try_into().ok()?;
    Some((u64::from_be_bytes(due), Ulid::from_bytes(id)))
}

/// A queued alert (`l/q` records).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "v")]
pub enum AlertRecord {
    #[serde(rename = "1")]
    V1(AlertV1),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertV1 {
    /// The alert type's name (`dead_letter`, `outage`, …).
    pub kind: String,
    /// The instance it concerns, if any (`store_full` concerns none).
    pub instance: Option<String>,
    /// When it was raised; `max_age` counts from here.
    pub at_ms: u64,
    /// One readable line.
    pub summary: String,
    /// A JSON object, as text: the type's details.
    pub detail: String,
    pub attempts: u32,
    pub due_ms: u64,
    pub last_error: Option<String>,
}

impl AlertRecord {
    pub fn encode(alert: &AlertV1) -> Vec<u8> {
        serde_json::to_vec(&AlertRecord::V1(alert.clone())).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<AlertV1, Error> {
        match serde_json::from_slice(bytes) {
            Ok(AlertRecord::V1(alert)) => Ok(alert),
            Err(err) => Err(Error::Corrupt(format!("alert record: {err}"))),
        }
    }
}

/// The alert queue's size (`l/n`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "v")]
pub enum AlertQueueRecord {
    #[serde(rename = "1")]
    V1(AlertQueueV1),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertQueueV1 {
    pub count: u64,
    pub bytes: u64,
}

impl AlertQueueRecord {
    pub fn encode(queue: &AlertQueueV1) -> Vec<u8> {
        serde_json::to_vec(&AlertQueueRecord::V1(*queue)).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<AlertQueueV1, Error> {
        match serde_json::from_slice(bytes) {
            Ok(AlertQueueRecord::V1(queue)) => Ok(queue),
            Err(err) => Err(Error::Corrupt(format!("alert queue record: {err}"))),
        }
    }
}

/// The dead letters of an instance not alerted yet (`v/` records), and when it was last alerted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "v")]
pub enum DeadTallyRecord {
    #[serde(rename = "1")]
    V1(DeadTallyV1),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadTallyV1 {
    /// Dead letters since the last alert.
    pub count: u64,
    /// When the first of them died (0 when `count` is 0).
    pub first_ms: u64,
    /// The last of them: its event id, account, last status and error.
    pub last_event: String,
    pub account: String,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    /// Why the last of them was dead-lettered (`max_attempts reached`, `corrupt`, …).
    pub reason: String,
    /// When the last alert of this instance's dead letters was queued (0: never).
    pub last_alert_ms: u64,
}

impl DeadTallyRecord {
    pub fn encode(tally: &DeadTallyV1) -> Vec<u8> {
        serde_json::to_vec(&DeadTallyRecord::V1(tally.clone())).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<DeadTallyV1, Error> {
        match serde_json::from_slice(bytes) {
            Ok(DeadTallyRecord::V1(tally)) => Ok(tally),
            Err(err) => Err(Error::Corrupt(format!("dead-letter tally: {err}"))),
        }
    }
}

/// An alert to queue: what it says; attempts and due time start afresh.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAlert {
    pub kind: String,
    pub instance: Option<String>,
    pub at_ms: u64,
    pub summary: String,
    /// A JSON object, as text.
    pub detail: String,
}

impl NewAlert {
    /// The record it is queued as, due at once.
    pub(super) fn record(self) -> AlertV1 {
        AlertV1 {
            kind: self.kind,
            instance: self.instance,
            at_ms: self.at_ms,
            summary: self.summary,
            detail: self.detail,
            attempts: 0,
            due_ms: self.at_ms,
            last_error: None,
        }
    }
}

/// A queued alert, as the sender reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedAlert {
    pub id: Ulid,
    pub alert: AlertV1,
}

/// The dead-letter tallies with dead letters to alert, as [`Store::dead_tallies`] reads them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeadTallies {
    /// Instances and their tallies.
    pub pending: Vec<(String, DeadTallyV1)>,
    /// Instances whose tally does not decode ([`Store::take_dead_tally`] starts it again).
    pub unreadable: Vec<String>,
}

/// The next alert of the queue, by due time.
#[derive(Debug, Clone, PartialEq)]
pub enum NextAlert {
    /// Nothing is queued.
    Empty,
    /// The earliest alert is due at this time (later than asked).
    At(u64),
    /// This alert is due.
    Due(QueuedAlert),
    /// The alert's record does not decode: the sender drops it.
    Unreadable { id: Ulid, problem: String },
}

/// The bytes an alert takes in the store, as counted against `storage.max_bytes`.
pub(super) fn alert_bytes(record: &[u8]) -> u64 {
    record.len() as u64 + ALERT_OVERHEAD_BYTES
}

/// The alert queue's size as stored (zero when there is none).
pub(super) fn read_queue(db: &sled::Db) -> Result<AlertQueueV1, Error> {
    match db.get(queue_key()).map_err(sled_error)? {
        Some(bytes) => AlertQueueRecord::decode(&bytes),
        None => Ok(AlertQueueV1::default()),
    }
}

impl Store {
    /// Queues `alert` durably (it survives a restart and is sent by the alert task). Answers
    /// the id of the oldest alert dropped to make room, if the queue was full.
    pub async fn enqueue_alert(&self, alert: NewAlert) -> Result<Option<Ulid>, Error> {
        self.request(super::commit::EnqueueAlert { alert }).await
    }

    /// Removes an alert: sent, given up, or unreadable.
    pub async fn finish_alert(&self, id: Ulid) -> Result<bool, Error> {
        self.request(super::commit::FinishAlert { id }).await
    }

    /// Records a failed attempt of an alert and when to try again.
    pub async fn retry_alert(
        &self,
        id: Ulid,
        attempts: u32,
        due_ms: u64,
        last_error: String,
    ) -> Result<(), Error> {
        self.request(super::commit::RetryAlert {
            id,
            attempts,
            due_ms,
            last_error,
        })
        .await
    }

    /// Takes `count` dead letters off `instance`'s tally and, in the same batch, queues `alert`
    /// for them (none: alerts of that type are off). False if the tally has fewer; a tally that
    /// does not decode starts again from zero (false).
    pub async fn take_dead_tally(
        &self,
        instance: &str,
        count: u64,
        alert: Option<NewAlert>,
    ) -> Result<bool, Error> {
        self.request(super::commit::TakeDeadTally {
            instance: instance.to_owned(),
            count,
            alert,
            now_ms: crate::time::now_ms(),
        })
        .await
    }

    /// The next alert to send: the earliest by due time, if it is due at `now_ms`.
    pub fn next_alert(&self, now_ms: u64) -> Result<NextAlert, Error> {
        let Some(entry) = self.db.scan_prefix(DUE).next() else {
            return Ok(NextAlert::Empty);
        };
        let (key, _) = entry.map_err(sled_error)?;
        let Some((due_ms, id)) = parse_due(&key) else {
            return Err(Error::Corrupt("alert due-index key".into()));
        };
        if due_ms > now_ms {
            return Ok(NextAlert::At(due_ms));
        }
        let Some(bytes) = self.db.get(alert_key(id)).map_err(sled_error)? else {
            return Ok(NextAlert::Unreadable {
                id,
                problem: "the alert's record is missing".into(),
            });
        };
        Ok(match AlertRecord::decode(&bytes) {
            Ok(alert) => NextAlert::Due(QueuedAlert { id, alert }),
            Err(err) => NextAlert::Unreadable {
                id,
                problem: err.to_string(),
            },
        })
    }

    /// The instances with dead letters not alerted yet, and their tallies (one record per
    /// instance); a tally that does not decode is named apart.
    pub fn dead_tallies(&self) -> Result<DeadTallies, Error> {
        let mut tallies = DeadTallies::default();
        for entry in self.db.scan_prefix(TALLIES) {
            let (key, value) = entry.map_err(sled_error)?;
            let Some(instance) = keys::instance_of(TALLIES, &key) else {
                continue;
            };
            match DeadTallyRecord::decode(&value) {
                Ok(tally) if tally.count > 0 => tallies.pending.push((instance, tally)),
                Ok(_) => {}
                Err(_) => tallies.unreadable.push(instance),
            }
        }
        Ok(tallies)
    }

    /// How many alerts are queued.
    pub fn queued_alerts(&self) -> u64 {
        self.shared
            .alert_count
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        DeadLetter, IngestTarget, OpenMode, Placed, PreviousRun, StoreOptions, fdatasync,
    };
    use crate::time::now_ms;

    fn open(dir: &std::path::Path) -> (Store, PreviousRun) {
        let options = StoreOptions {
            path: dir.join("store"),
            cache_bytes: 4 * 1024 * 1024,
            mode: OpenMode::Daemon,
            journal_bytes: crate::store::DEFAULT_JOURNAL_BYTES,
        };
        let mut last = None;
        for _ in 0..100 {
            match Store::open(&options, fdatasync()) {
                Ok(opened) => return opened,
                Err(err) => last = Some(err),
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("open: {last:?}")
    }

    fn alert(summary: &str) -> NewAlert {
        NewAlert {
            kind: "store_full".into(),
            instance: None,
            at_ms: now_ms(),
            summary: summary.into(),
            detail: "{}".into(),
        }
    }

    fn ok<T>(result: Result<T, Error>) -> T {
        result.unwrap_or_else(|e| panic!("{e}"))
    }

    fn due(store: &Store) -> QueuedAlert {
        match store.next_alert(u64::MAX) {
            Ok(NextAlert::Due(queued)) => queued,
            other => panic!("expected a due alert, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_alert_is_queued_retried_and_removed_and_its_bytes_counted() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (store, _) = open(dir.path());
        assert_eq!(ok(store.next_alert(now_ms())), NextAlert::Empty);
        let dropped = store.enqueue_alert(alert("one")).await;
        assert_eq!(ok(dropped), None);
        assert_eq!(store.queued_alerts(), 1);
        assert!(
            store.total_bytes() > 0,
            "the queue counts against max_bytes"
        );
        let queued = due(&store);
        assert_eq!(queued.alert.summary, "one");
        let later = now_ms() + 60_000;
        let retried = store
            .retry_alert(queued.id, 1, later, "HTTP 500".into())
            .await;
        ok(retried);
        assert_eq!(ok(store.next_alert(now_ms())), NextAlert::At(later));
        store.close().await.unwrap_or_else(|e| panic!("{e}"));
        drop(store);

        // Reopened: the alert, its attempt and the queue's size are still there.
        let (store, _) = open(dir.path());
        assert_eq!(store.queued_alerts(), 1);
        let queued = due(&store);
        assert_eq!(queued.alert.attempts, 1);
        assert_eq!(queued.alert.last_error.as_deref(), Some("HTTP 500"));
        assert!(ok(store.finish_alert(queued.id).await));
        assert_eq!(store.queued_alerts(), 0);
        assert_eq!(store.total_bytes(), 0);
        assert_eq!(ok(store.next_alert(u64::MAX)), NextAlert::Empty);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_the_cap_the_oldest_alert_goes() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (store, _) = open(dir.path());
        let first = store.enqueue_alert(alert("oldest")).await;
        assert_eq!(ok(first), None);
        let mut tasks = tokio::task::JoinSet::new();
        for n in 1..MAX_QUEUED_ALERTS {
            let store = store.clone();
            tasks.spawn(async move { store.enqueue_alert(alert(&format!("{n}"))).await });
        }
        while let Some(joined) = tasks.join_next().await {
            let dropped = joined.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(ok(dropped), None, "nothing dropped up to the cap");
        }
        assert_eq!(store.queued_alerts(), MAX_QUEUED_ALERTS);
        let oldest = due(&store);
        assert_eq!(oldest.alert.summary, "oldest");
        let dropped = store.enqueue_alert(alert("newest")).await;
        assert_eq!(ok(dropped), Some(oldest.id));
        assert_eq!(store.queued_alerts(), MAX_QUEUED_ALERTS);
        assert_ne!(due(&store).id, oldest.id);
    }

    #[tokio::test]
    async fn a_dead_letter_is_tallied_in_its_batch_and_taken_with_its_alert() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (store, _) = open(dir.path());
        let target = IngestTarget {
            instance: "acme".into(),
            account: "dbid:a".into(),
            coalesce: false,
            quota_bytes: u64::MAX,
            changes: false,
        };
        let body = bytes::Bytes::from_static(br#"{"list_folder": {"accounts": ["dbid:a"]}}"#);
        let placed = store
            .ingest(body, now_ms(), vec![target])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let Some(Placed::Created(event)) = placed.into_iter().next() else {
            panic!("no event created");
        };
        let dead = DeadLetter {
            attempts: 3,
            reason: "max_attempts reached".into(),
            last_status: Some(500),
            last_error: Some("callback answered 500".into()),
        };
        store
            .dead_letter("acme", event.id, dead)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        store.close().await.unwrap_or_else(|e| panic!("{e}"));
        drop(store);

        let (store, _) = open(dir.path());
        let tallies = store.dead_tallies().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tallies.pending.len(), 1, "{tallies:?}");
        let (instance, tally) = &tallies.pending[0];
        assert_eq!(instance, "acme");
        assert_eq!(tally.count, 1);
        assert_eq!(tally.last_event, event.id.to_string());
        assert_eq!(tally.last_status, Some(500));
        assert_eq!(tally.account, "dbid:a");
        assert!(!ok(store.take_dead_tally("acme", 2, None).await));
        let taken = store.take_dead_tally("acme", 1, Some(alert("dead"))).await;
        assert!(ok(taken));
        let tallies = store.dead_tallies().unwrap_or_else(|e| panic!("{e}"));
        assert!(tallies.pending.is_empty(), "{tallies:?}");
        assert_eq!(due(&store).alert.summary, "dead");
    }

    #[test]
    fn due_keys_sort_by_time_and_round_trip() {
        let a = due_key(5, Ulid::from_parts(9, 9));
        let b = due_key(6, Ulid::from_parts(1, 1));
        assert!(a < b);
        assert_eq!(parse_due(&b), Some((6, Ulid::from_parts(1, 1))));
        assert!(alert_key(Ulid::nil()).starts_with(record_prefix()));
        assert!(!due_key(1, Ulid::nil()).starts_with(record_prefix()));
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        for bytes in [&b""[..], b"{", b"{\"v\":\"9\"}", b"\xff\xfe"] {
            assert!(AlertRecord::decode(bytes).is_err());
            assert!(AlertQueueRecord::decode(bytes).is_err());
            assert!(DeadTallyRecord::decode(bytes).is_err());
        }
    }
}
