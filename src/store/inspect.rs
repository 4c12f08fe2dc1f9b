//! Read-only views of a store: what tests, `status` and `dead list` need. The path functions
//! open a stopped daemon's store without changing anything in it.

use std::path::Path;

use serde::{Deserialize, Serialize};
use ulid::Ulid;

use super::error::{Error, sled_error};
use super::keys;
use super::record::{DeadRecord, EventRecord, EventV1, NotificationRecord};
use super::run;

/// One pending event or dead letter (also the admin API's JSON for it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventSummary {
    pub id: String,
    pub instance: String,
    pub account: String,
    pub attempts: u32,
    /// The Dropbox notification body of the event (empty for catch-up events).
    #[serde(skip)]
    pub raw: Vec<u8>,
    pub accepted_ms: u64,
    pub due_ms: u64,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    /// Dead letters only: when and why.
    pub dead_at_ms: Option<u64>,
    pub reason: Option<String>,
}

/// Pending events of a stopped daemon's store.
pub fn pending_events(path: &Path) -> Result<Vec<EventSummary>, Error> {
    pending_in(&open_read(path)?, None)
}

/// Dead letters of a stopped daemon's store.
pub fn dead_letters(path: &Path) -> Result<Vec<EventSummary>, Error> {
    dead_in(&open_read(path)?, None)
}

fn open_read(path: &Path) -> Result<sled::Db, Error> {
    if !path.join("db").exists() {
        return Err(Error::Open {
            path: path.to_path_buf(),
            message: "no store here".into(),
        });
    }
    super::open::open_sled(path, 16 * 1024 * 1024)
}

/// Pending events (due now and waiting), by instance, then by id.
pub(super) fn pending_in(
    db: &sled::Db,
    instance: Option<&str>,
) -> Result<Vec<EventSummary>, Error> {
    let prefix = |family: &[u8]| match instance {
        Some(name) => keys::instance_prefix(family, name),
        None => family.to_vec(),
    };
    let mut out = Vec::new();
    for family in [keys::READY, keys::EVENT] {
        for entry in db.scan_prefix(prefix(family)) {
            let (key, value) = entry.map_err(sled_error)?;
            let event = EventRecord::decode(&value)?;
            let id = keys::trailing_id(&key).unwrap_or(Ulid::nil());
            out.push(summary(db, &key, family, id, &event, Body::Read)?);
        }
    }
    for entry in db.scan_prefix(prefix(keys::RUN)) {
        let (key, value) = entry.map_err(sled_error)?;
        for member in run::members(&value) {
            let (id, record) = member?;
            let event = EventRecord::decode(record)?;
            out.push(summary(db, &key, keys::RUN, id, &event, Body::Read)?);
        }
    }
    out.sort_by(|a, b| (&a.instance, &a.id).cmp(&(&b.instance, &b.id)));
    Ok(out)
}

pub(super) fn dead_in(db: &sled::Db, instance: Option<&str>) -> Result<Vec<EventSummary>, Error> {
    let prefix = match instance {
        Some(name) => keys::instance_prefix(keys::DEAD, name),
        None => keys::DEAD.to_vec(),
    };
    let mut out = Vec::new();
    for entry in db.scan_prefix(&prefix) {
        let (key, value) = entry.map_err(sled_error)?;
        let dead = DeadRecord::decode(&value)?;
        let id = keys::trailing_id(&key).unwrap_or(Ulid::nil());
        let mut summary = summary(db, &key, keys::DEAD, id, &dead.event, Body::Read)?;
        summary.dead_at_ms = Some(dead.dead_at_ms);
        summary.reason = Some(dead.reason);
        out.push(summary);
    }
    Ok(out)
}

/// Where a dead letter stands in the index by age (`t/`): the position a page of dead letters
/// continues from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadRef {
    pub dead_at_ms: u64,
    pub instance: String,
    pub id: Ulid,
}

/// Up to `limit` dead letters in the order they died, of `instance` (or all), that died in
/// `[since_ms, until_ms)`, after `after`: a page, read without their records.
pub(super) fn dead_refs(
    db: &sled::Db,
    instance: Option<&str>,
    (since_ms, until_ms): (Option<u64>, Option<u64>),
    after: Option<&DeadRef>,
    limit: usize,
) -> Result<Vec<DeadRef>, Error> {
    use std::ops::Bound;
    let at = |ms: u64| [keys::DEAD_BY_TIME, &ms.to_be_bytes()[..]].concat();
    let start = match after {
        Some(after) => Bound::Excluded(keys::dead_by_time(
            after.dead_at_ms,
            &after.instance,
            after.id,
        )),
        None => Bound::Included(at(since_ms.unwrap_or(0))),
    };
    let end = Bound::Excluded(until_ms.map_or_else(|| keys::family_end(keys::DEAD_BY_TIME), at));
    let mut refs = Vec::new();
    for key in db.range::<Vec<u8>, _>((start, end)).keys() {
        if refs.len() >= limit {
            break;
        }
        let key = key.map_err(sled_error)?;
        let Some((dead_at_ms, name, id)) = keys::parse_dead_by_time(&key) else {
            return Err(Error::Corrupt(format!("dead-letter index key {key:?}")));
        };
        if since_ms.is_some_and(|since| dead_at_ms < since)
            || instance.is_some_and(|wanted| wanted != name)
        {
            continue;
        }
        refs.push(DeadRef {
            dead_at_ms,
            instance: name,
            id,
        });
    }
    Ok(refs)
}

/// The dead letter `letter` names, without its body (`raw` empty); `None` if it is gone.
pub(super) fn dead_summary(db: &sled::Db, letter: &DeadRef) -> Result<Option<EventSummary>, Error> {
    let key = keys::dead(&letter.instance, letter.id);
    let Some(value) = db.get(&key).map_err(sled_error)? else {
        return Ok(None);
    };
    let dead = DeadRecord::decode(&value)?;
    let mut summary = summary(db, &key, keys::DEAD, letter.id, &dead.event, Body::Skip)?;
    summary.dead_at_ms = Some(dead.dead_at_ms);
    summary.reason = Some(dead.reason);
    Ok(Some(summary))
}

/// Whether a summary carries the notification body (which the admin API never shows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Read,
    Skip,
}

/// The summary of event `id`, whose record (or run) is at `key` in `family`.
fn summary(
    db: &sled::Db,
    key: &[u8],
    family: &[u8],
    id: Ulid,
    event: &EventV1,
    body: Body,
) -> Result<EventSummary, Error> {
    let raw = match (&event.raw, &event.notification) {
        _ if body == Body::Skip => Vec::new(),
        (Some(raw), _) => raw.clone().into_bytes(),
        (None, Some(notification)) => match notification.parse::<Ulid>() {
            Ok(notification) => match db
                .get(keys::notification(notification))
                .map_err(sled_error)?
            {
                Some(bytes) => NotificationRecord::decode(&bytes)?.body,
                None => Vec::new(),
            },
            Err(_) => Vec::new(),
        },
        (None, None) => Vec::new(),
    };
    Ok(EventSummary {
        id: id.to_string(),
        instance: keys::instance_of(family, key).unwrap_or_default(),
        account: event.account.clone(),
        attempts: event.attempts,
        raw,
        accepted_ms: event.age_base_ms,
        due_ms: event.due_ms,
        last_status: event.last_status,
        last_error: event.last_error.clone(),
        dead_at_ms: None,
        reason: None,
    })
}
