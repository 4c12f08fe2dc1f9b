//! The per-instance counters (pending and dead events and bytes, other records' bytes): kept
//! by the committer, written with each batch, published to the handles once it is durable.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Committer;
use super::view::BatchView;
use crate::store::error::Error;
use crate::store::keys;
use crate::store::record::Counters;

impl Committer {
    pub(super) fn counter(&self, instance: &str) -> Counters {
        self.counters.get(instance).copied().unwrap_or_default()
    }

    pub(super) fn counter_mut(&mut self, instance: &str) -> &mut Counters {
        if !self.touched.iter().any(|t| t == instance) {
            self.touched.push(instance.to_owned());
        }
        self.counters.entry(instance.to_owned()).or_default()
    }

    /// Adds what the batch changes in the instances' other records (see [`keys::OTHER_FAMILIES`]) to
    /// their counters: each key of those families it writes or removes, against that key's
    /// size in sled before the batch.
    pub(super) fn count_other_records(&mut self, view: &BatchView<'_>) -> Result<(), Error> {
        for (key, value) in view.writes() {
            let Some(family) = keys::OTHER_FAMILIES.iter().find(|f| key.starts_with(f)) else {
                continue;
            };
            let Some(instance) = keys::instance_of(family, key) else {
                continue;
            };
            let size = |value: Option<usize>| value.map_or(0, |v| (key.len() + v) as u64);
            let before = size(view.get_before(key)?.map(|v| v.len()));
            let after = size(value.as_ref().map(Vec::len));
            let counter = self.counter_mut(&instance);
            counter.other_bytes = counter
                .other_bytes
                .saturating_add(after)
                .saturating_sub(before);
        }
        Ok(())
    }

    pub(super) fn write_counters(&mut self, view: &mut BatchView<'_>) {
        for instance in &self.touched {
            let counter = self.counter(instance);
            view.insert(keys::counters(instance), counter.encode());
        }
    }

    pub(super) fn publish_counters(&mut self) {
        if self.touched.is_empty() && !self.alert_queue_changed {
            return;
        }
        self.touched.clear();
        self.alert_queue_changed = false;
        let total: u64 = self.counters.values().map(Counters::total_bytes).sum();
        let total = total.saturating_add(self.alert_queue.bytes);
        self.shared.total_bytes.store(total, Ordering::Relaxed);
        self.shared
            .alert_count
            .store(self.alert_queue.count, Ordering::Relaxed);
        self.shared.counters.store(Arc::new(self.counters.clone()));
    }
}
