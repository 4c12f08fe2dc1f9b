//! `retry`: events waiting for their next attempt made due now, chosen by id, by instance or
//! all, a page at a time. The waiting events are found in the due index (`d/`), read on a
//! blocking thread a page of [`MAINTENANCE_PAGE`] entries at a time, and each page is one
//! request to the committer, so that neither memory nor the writer's time grows with the
//! backlog.

use std::collections::BTreeSet;

use ulid::Ulid;

use super::commit::{RetriedPage, RetryWaiting};
use super::error::{Error, sled_error};
use super::{MAINTENANCE_PAGE, Store, keys};
use crate::time::now_ms;

/// Which waiting events a retry makes due now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryTarget {
    Ids(Vec<Ulid>),
    Instance(String),
    All,
}

/// What a retry did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retried {
    /// Events made due now.
    pub count: u64,
    /// The instances they belong to: their lanes should look at the store.
    pub instances: BTreeSet<String>,
    /// Ids asked for that are not pending events (unknown, delivered or dead-lettered).
    pub not_found: Vec<Ulid>,
}

impl Retried {
    fn add(&mut self, page: RetriedPage) {
        self.count += page.count;
        self.instances.extend(page.instances);
        self.not_found.extend(page.not_pending);
    }
}

impl Store {
    /// Makes the waiting events `target` names due now, attempt counts unchanged. Events that
    /// are due already, or wait behind their change queue's head, are left as they are; ids
    /// that name no pending event are answered in [`Retried::not_found`]. An event that fails
    /// again while this runs and waits for a retry due later may be made due once more.
    ///
    /// # Errors
    /// A store error.
    pub async fn retry_waiting(&self, target: &RetryTarget) -> Result<Retried, Error> {
        let began = now_ms();
        let mut retried = Retried::default();
        let instances: Vec<String> = match target {
            RetryTarget::Ids(ids) => {
                for page in ids.chunks(MAINTENANCE_PAGE) {
                    let events = page.iter().map(|id| (None, *id)).collect();
                    retried.add(self.retry_page(events, began).await?);
                }
                return Ok(retried);
            }
            RetryTarget::Instance(name) => vec![name.clone()],
            RetryTarget::All => self.counters().keys().cloned().collect(),
        };
        for instance in instances {
            let mut from = keys::due_from(&instance, began.saturating_add(1));
            loop {
                let (store, name, start) = (self.clone(), instance.clone(), from.clone());
                let waiting = tokio::task::spawn_blocking(move || store.waiting_page(&name, start))
                    .await
                    .map_err(|e| Error::Failed(format!("a store read did not finish: {e}")))??;
                let Some((last_key, _)) = waiting.last() else {
                    break;
                };
                // The page's entries move to `began`, before `from`: no page sees them again.
                from = [last_key.as_slice(), &[0]].concat();
                let full = waiting.len() >= MAINTENANCE_PAGE;
                let events = waiting
                    .into_iter()
                    .map(|(_, id)| (Some(instance.clone()), id))
                    .collect();
                retried.add(self.retry_page(events, began).await?);
                if !full {
                    break;
                }
            }
        }
        Ok(retried)
    }

    async fn retry_page(
        &self,
        events: Vec<(Option<String>, Ulid)>,
        now_ms: u64,
    ) -> Result<RetriedPage, Error> {
        self.request(RetryWaiting { events, now_ms }).await
    }

    /// Up to [`MAINTENANCE_PAGE`] due-index entries of `instance` from key `from` on: (key,
    /// event id).
    fn waiting_page(&self, instance: &str, from: Vec<u8>) -> Result<Vec<(Vec<u8>, Ulid)>, Error> {
        let prefix_len = keys::instance_prefix(keys::DUE, instance).len();
        let mut end = keys::instance_prefix(keys::DUE, instance);
        if let Some(last) = end.last_mut() {
            // `<family><instance>\1`: the first key after the instance's entries.
            *last = 1;
        }
        let mut page = Vec::new();
        for key in self.db.range(from..end).keys().take(MAINTENANCE_PAGE) {
            let key = key.map_err(sled_error)?;
            if let Some((_, id)) = keys::parse_due(prefix_len, &key) {
                page.push((key.to_vec(), id));
            }
        }
        Ok(page)
    }
}

#[cfg(test)]
mod tests;
