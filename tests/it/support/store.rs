//! Reads the store of a **stopped** daemon (sled allows one process) through the library's
//! `hookrelay::store::inspect`. The one place that names that API, so it is easy to adapt.

use std::collections::BTreeMap;
use std::path::Path;

/// One stored event, as the tests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub id: String,
    pub instance: String,
    pub account: String,
    pub attempts: u32,
    /// The Dropbox notification body of the event.
    pub raw: Vec<u8>,
}

impl StoredEvent {
    pub fn raw_str(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }
}

fn convert(events: Vec<hookrelay::store::inspect::EventSummary>) -> Vec<StoredEvent> {
    events
        .into_iter()
        .map(|e| StoredEvent {
            id: e.id,
            instance: e.instance,
            account: e.account,
            attempts: e.attempts,
            raw: e.raw,
        })
        .collect()
}

/// Events waiting for delivery (queued, in retry or held).
pub fn pending(path: &Path) -> Vec<StoredEvent> {
    match hookrelay::store::inspect::pending_events(path) {
        Ok(events) => convert(events),
        Err(e) => panic!("reading pending events from {}: {e}", path.display()),
    }
}

/// Dead-lettered events.
pub fn dead(path: &Path) -> Vec<StoredEvent> {
    match hookrelay::store::inspect::dead_letters(path) {
        Ok(events) => convert(events),
        Err(e) => panic!("reading dead letters from {}: {e}", path.display()),
    }
}

/// How many events there are per (instance, account).
pub fn count_by_instance_account(events: &[StoredEvent]) -> BTreeMap<(String, String), usize> {
    let mut counts = BTreeMap::new();
    for e in events {
        *counts
            .entry((e.instance.clone(), e.account.clone()))
            .or_insert(0) += 1;
    }
    counts
}
