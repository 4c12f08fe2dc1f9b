//! Read-only views of a store: what tests, `status` and `dead list` need. The path functions
//! open a stopped daemon's store without changing anything in it.

use std::path::Path;

use serde::{Deserialize, Serialize};
use ulid::Ulid;

use super::keys;
use super::record::{DeadRecord, EventRecord, EventV1, NotificationRecord};
use super::run;
use super::{Error, sled_error};

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
    super::open_sled(path, 16 * 1024 * 1024).map_err(|message| Error::Open {
        path: path.to_path_buf(),
        message,
    })
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
            out.push(summary(db, &key, family, id, &event)?);
        }
    }
    for entry in db.scan_prefix(prefix(keys::RUN)) {
        let (key, value) = entry.map_err(sled_error)?;
        for member in run::members(&value) {
            let (id, record) = member?;
            let event = EventRecord::decode(record)?;
            out.push(summary(db, &key, keys::RUN, id, &event)?);
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
        let mut summary = summary(db, &key, keys::DEAD, id, &dead.event)?;
        summary.dead_at_ms = Some(dead.dead_at_ms);
        summary.reason = Some(dead.reason);
        out.push(summary);
    }
    Ok(out)
}

/// The summary of event `id`, whose record (or run) is at `key` in `family`.
fn summary(
    db: &sled::Db,
    key: &[u8],
    family: &[u8],
    id: Ulid,
    event: &EventV1,
) -> Result<EventSummary, Error> {
    let raw = match (&event.raw, &event.notification) {
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
