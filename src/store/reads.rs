//! The store's reads: any thread, straight from sled, seeing the batches committed so far
//! (never the committer's batch in progress).

use ulid::Ulid;

use super::error::{Error, sled_error};
use super::record::{self, AuthorizationRecord, AuthorizationV1};
use super::{Store, inspect, keys, run};

impl Store {
    /// The event a new notification of (`instance`, `account`) may merge into, as the store
    /// holds it. For the queue model test, which must learn it after a power cut that undid a
    /// claim (claims are answered before their sync).
    #[doc(hidden)]
    pub fn merge_target(&self, instance: &str, account: &str) -> Result<Option<Ulid>, Error> {
        let value = self
            .db
            .get(keys::pair(keys::PAIR, instance, account))
            .map_err(sled_error)?;
        Ok(value.and_then(|v| <[u8; 16]>::try_from(v.as_ref()).ok().map(Ulid::from_bytes)))
    }

    /// Ids of `instance`'s events due at or before `now_ms`, earliest first, skipping `held`:
    /// the events due now (runs and `r/` records, each in arrival order) merged with the waiting
    /// ones whose time has come (`d/`, by due time).
    pub fn due_ids(
        &self,
        instance: &str,
        now_ms: u64,
        limit: usize,
        held: impl Fn(&Ulid) -> bool,
    ) -> Result<Vec<Ulid>, Error> {
        let mut due: Vec<(u64, Ulid)> = Vec::new();
        let mut take = |id: Ulid, at: u64, taken: &mut usize| {
            if !held(&id) {
                due.push((at, id));
                *taken += 1;
            }
        };
        let mut in_runs = 0;
        for id in run_member_ids(&self.db, instance) {
            if in_runs >= limit {
                break;
            }
            let id = id?;
            take(id, id.timestamp_ms(), &mut in_runs);
        }
        let mut ready = 0;
        for key in self
            .db
            .scan_prefix(keys::instance_prefix(keys::READY, instance))
            .keys()
        {
            if ready >= limit {
                break;
            }
            if let Some(id) = keys::trailing_id(&key.map_err(sled_error)?) {
                take(id, id.timestamp_ms(), &mut ready);
            }
        }
        let prefix_len = keys::instance_prefix(keys::DUE, instance).len();
        let range = keys::due_from(instance, 0)..keys::due_from(instance, now_ms.saturating_add(1));
        let mut waited = 0;
        for entry in self.db.range(range).keys() {
            if waited >= limit {
                break;
            }
            if let Some((at, id)) = keys::parse_due(prefix_len, &entry.map_err(sled_error)?) {
                take(id, at, &mut waited);
            }
        }
        due.sort_unstable();
        Ok(due.into_iter().take(limit).map(|(_, id)| id).collect())
    }

    /// The earliest due time of `instance`'s events after `after_ms`, skipping `held`.
    pub fn next_due_after(
        &self,
        instance: &str,
        after_ms: u64,
        held: impl Fn(&Ulid) -> bool,
    ) -> Result<Option<u64>, Error> {
        let prefix = keys::instance_prefix(keys::DUE, instance);
        let start = keys::due_from(instance, after_ms.saturating_add(1));
        for entry in self.db.range(start..) {
            let (key, _) = entry.map_err(sled_error)?;
            if !key.starts_with(&prefix) {
                break;
            }
            if let Some((due, id)) = keys::parse_due(prefix.len(), &key)
                && !held(&id)
            {
                return Ok(Some(due));
            }
        }
        Ok(None)
    }

    /// How many of `instance`'s events wait for a later attempt (due after `now_ms`: a retry or a
    /// `Retry-After`), for `status`. Scans the due index's keys from `now_ms` on.
    pub fn waiting_retry(&self, instance: &str, now_ms: u64) -> Result<u64, Error> {
        let prefix = keys::instance_prefix(keys::DUE, instance);
        let start = keys::due_from(instance, now_ms.saturating_add(1));
        let mut count = 0;
        for entry in self.db.range(start..).keys() {
            if !entry.map_err(sled_error)?.starts_with(&prefix) {
                break;
            }
            count += 1;
        }
        Ok(count)
    }

    /// The oldest pending event's id time (ULIDs sort by creation), for "oldest pending age".
    pub fn oldest_pending_ms(&self, instance: &str) -> Result<Option<u64>, Error> {
        let mut oldest: Option<u64> = None;
        if let Some(first) = run_member_ids(&self.db, instance).next() {
            oldest = Some(first?.timestamp_ms());
        }
        for family in [keys::READY, keys::EVENT] {
            let prefix = keys::instance_prefix(family, instance);
            if let Some(key) = self.db.scan_prefix(&prefix).keys().next() {
                let created =
                    keys::trailing_id(&key.map_err(sled_error)?).map(|id| id.timestamp_ms());
                oldest = oldest.into_iter().chain(created).min();
            }
        }
        Ok(oldest)
    }

    /// The credentials `authorize` stored for an instance.
    pub fn authorization(&self, instance: &str) -> Result<Option<AuthorizationV1>, Error> {
        self.db
            .get(keys::authorization(instance))
            .map_err(sled_error)?
            .map(|v| AuthorizationRecord::decode(&v))
            .transpose()
    }

    /// A pair's cursor (change events).
    pub fn cursor(&self, instance: &str, account: &str) -> Result<Option<String>, Error> {
        let value = self
            .db
            .get(keys::pair(keys::CURSOR, instance, account))
            .map_err(sled_error)?;
        Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Accounts of `instance` that have a cursor.
    pub fn cursor_accounts(&self, instance: &str) -> Result<Vec<String>, Error> {
        let prefix = keys::instance_prefix(keys::CURSOR, instance);
        let mut accounts = Vec::new();
        for key in self.db.scan_prefix(&prefix).keys() {
            let key = key.map_err(sled_error)?;
            accounts.push(String::from_utf8_lossy(&key[prefix.len()..]).into_owned());
        }
        Ok(accounts)
    }

    /// Every pair owing a walk, with its marker token.
    pub fn walk_markers(&self) -> Result<Vec<(String, String, Vec<u8>)>, Error> {
        let mut markers = Vec::new();
        for entry in self.db.scan_prefix(keys::WALK) {
            let (key, value) = entry.map_err(sled_error)?;
            if let Some((instance, account)) = keys::parse_pair(keys::WALK, &key) {
                markers.push((instance, account, value.to_vec()));
            }
        }
        Ok(markers)
    }

    /// The marker token of a pair owing a walk.
    pub fn walk_marker(&self, instance: &str, account: &str) -> Result<Option<Vec<u8>>, Error> {
        let value = self
            .db
            .get(keys::pair(keys::WALK, instance, account))
            .map_err(sled_error)?;
        Ok(value.map(|v| v.to_vec()))
    }

    /// What the object maps know of an id.
    pub fn object_by_id(
        &self,
        instance: &str,
        account: &str,
        id: &str,
    ) -> Result<Option<record::ObjectV1>, Error> {
        let key = keys::object_id(instance, account, id);
        self.db
            .get(key)
            .map_err(sled_error)?
            .map(|v| record::ObjectV1::decode(&v))
            .transpose()
    }

    /// What the object maps know of a lower-case path.
    pub fn object_by_path(
        &self,
        instance: &str,
        account: &str,
        path_lower: &str,
    ) -> Result<Option<record::ObjectV1>, Error> {
        let key = keys::object_path(instance, account, path_lower);
        self.db
            .get(key)
            .map_err(sled_error)?
            .map(|v| record::ObjectV1::decode(&v))
            .transpose()
    }

    /// Dead letters, optionally of one instance, oldest death first is not guaranteed.
    pub fn dead_letters(
        &self,
        instance: Option<&str>,
    ) -> Result<Vec<inspect::EventSummary>, Error> {
        inspect::dead_in(&self.db, instance)
    }

    /// A page of dead letters in the order they died: up to `limit`, of `instance` (or all),
    /// that died in `[since_ms, until_ms)`, after `after` (the last of the previous page).
    /// Reads only the index; memory is bounded by `limit`, whatever the number of letters.
    pub fn dead_page(
        &self,
        instance: Option<&str>,
        window: (Option<u64>, Option<u64>),
        after: Option<&inspect::DeadRef>,
        limit: usize,
    ) -> Result<Vec<inspect::DeadRef>, Error> {
        inspect::dead_refs(&self.db, instance, window, after, limit)
    }

    /// The dead letters `letters` names, as summaries without bodies (those gone meanwhile
    /// are left out).
    pub fn dead_summaries(
        &self,
        letters: &[inspect::DeadRef],
    ) -> Result<Vec<inspect::EventSummary>, Error> {
        let mut out = Vec::with_capacity(letters.len());
        for letter in letters {
            out.extend(inspect::dead_summary(&self.db, letter)?);
        }
        Ok(out)
    }

    /// Which of `ids` are dead letters, and of which instance: each looked up directly under
    /// every instance the store counts events for, never by reading the whole set.
    pub fn find_dead(&self, ids: &[Ulid]) -> Result<Vec<(String, Ulid)>, Error> {
        let counters = self.counters();
        let mut found = Vec::new();
        for &id in ids {
            for instance in counters.keys() {
                if self
                    .db
                    .contains_key(keys::dead(instance, id))
                    .map_err(sled_error)?
                {
                    found.push((instance.clone(), id));
                    break;
                }
            }
        }
        Ok(found)
    }

    /// Pending events of one instance or all (for status and tests; scans, so not on a hot path).
    pub fn pending_events(
        &self,
        instance: Option<&str>,
    ) -> Result<Vec<inspect::EventSummary>, Error> {
        inspect::pending_in(&self.db, instance)
    }
}

/// The ids of `instance`'s run members, in arrival order.
fn run_member_ids(db: &sled::Db, instance: &str) -> impl Iterator<Item = Result<Ulid, Error>> {
    let runs = db.scan_prefix(keys::instance_prefix(keys::RUN, instance));
    runs.values().flat_map(|run| match run {
        Ok(run) => run::members(&run)
            .map(|member| member.map(|(id, _)| id))
            .collect(),
        Err(err) => vec![Err(sled_error(err))],
    })
}
