//! Waiting events made due now (`retry`): an event waiting for its next attempt gets its due
//! time, and its due-index entry, moved to the request's time; its attempt count, age and
//! everything else stay as they are.

use std::collections::BTreeSet;

use ulid::Ulid;

use super::pending::{Location, find_pending, put_event};
use super::view::BatchView;
use super::{Committer, Operation};
use crate::store::error::Error;
use crate::store::keys;

/// Makes the named events due at `now_ms` if they wait for a retry due later. An event named
/// without its instance is looked for in every instance that has pending events. Answers what
/// it did.
pub(in crate::store) struct RetryWaiting {
    pub events: Vec<(Option<String>, Ulid)>,
    pub now_ms: u64,
}

/// What a [`RetryWaiting`] did.
#[derive(Debug, Default)]
pub(in crate::store) struct RetriedPage {
    /// Events made due now.
    pub count: u64,
    /// Their instances.
    pub instances: BTreeSet<String>,
    /// Events named that are not pending (unknown, delivered, dead).
    pub not_pending: Vec<Ulid>,
}

impl Operation for RetryWaiting {
    type Reply = RetriedPage;

    fn apply(
        self,
        committer: &mut Committer,
        view: &mut BatchView<'_>,
    ) -> Result<RetriedPage, Error> {
        let mut page = RetriedPage::default();
        let with_pending: Vec<String> = committer
            .counters
            .iter()
            .filter(|(_, c)| c.pending_events > 0)
            .map(|(name, _)| name.clone())
            .collect();
        for (instance, id) in self.events {
            let candidates = match &instance {
                Some(name) => std::slice::from_ref(name),
                None => with_pending.as_slice(),
            };
            let mut pending = false;
            for name in candidates {
                if let Some(made_due) = retry_now(view, name, id, self.now_ms)? {
                    pending = true;
                    if made_due {
                        page.count += 1;
                        page.instances.insert(name.clone());
                    }
                    break;
                }
            }
            if !pending {
                page.not_pending.push(id);
            }
        }
        Ok(page)
    }
}

/// `None`: not a pending event of `instance`. `Some(true)`: it waited for a retry due after
/// `now_ms` and is due at `now_ms` now. `Some(false)`: pending, but due already, or waiting
/// behind its change queue's head (no due time of its own).
fn retry_now(
    view: &mut BatchView<'_>,
    instance: &str,
    id: Ulid,
    now_ms: u64,
) -> Result<Option<bool>, Error> {
    let Some((location, mut event)) = find_pending(view, instance, id)? else {
        return Ok(None);
    };
    let waiting = matches!(&location, Location::Record(key) if key.starts_with(keys::EVENT));
    let old_due = keys::due(instance, event.due_ms, id);
    if !waiting || event.due_ms <= now_ms || view.get(&old_due)?.is_none() {
        return Ok(Some(false));
    }
    view.remove(old_due);
    view.insert(keys::due(instance, now_ms, id), Vec::new());
    event.due_ms = now_ms;
    put_event(view, &location, id, &event)?;
    Ok(Some(true))
}
