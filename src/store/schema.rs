//! The store's layout version (`m/schema`): which this build writes, and which it refuses.

use super::keys;

/// The newest store layout this build reads and writes (`m/schema`). 2: event records are binary
/// and carry a body no other event shares, and events due now are `r/` records without a
/// due-index entry. 3: the events one batch creates for an instance share a run record (`z/`).
/// 4: the journal may hold batches sled does not ([`super::journal`]). Older stores are read as
/// they are.
///
/// An open store says 4; a clean stop leaves the journal with nothing to apply and says the
/// oldest layout that reads the store: 3 if a run is left, 2 if not. So a build of either can
/// open a store this one stopped cleanly (a rollback), and neither opens one whose journal may
/// still hold batches.
pub(super) const SCHEMA: u32 = 4;
/// The layout of a stopped store that holds runs.
pub(super) const SCHEMA_RUNS: u32 = 3;
/// The layout of a stopped store that holds no run.
pub(super) const SCHEMA_WITHOUT_RUNS: u32 = 2;

/// Refuses a store written by a newer hookrelay, whose records (or journal) this build may
/// misread.
pub(super) fn check_schema(db: &sled::Db) -> Result<(), String> {
    let stored = db.get(keys::meta("schema")).map_err(|e| e.to_string())?;
    let Some(stored) = stored else {
        return Ok(());
    };
    match std::str::from_utf8(&stored)
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
    {
        Some(version) if version <= SCHEMA => Ok(()),
        Some(version) => Err(format!(
            "the store has schema {version}, newer than this hookrelay's ({SCHEMA}); run the \
             newer hookrelay, or restore the store's backup"
        )),
        None => Err(format!(
            "the store's schema record (m/schema) is unreadable: {:?}",
            String::from_utf8_lossy(&stored)
        )),
    }
}

/// The `m/schema` value of a layout.
pub(super) fn schema_value(version: u32) -> Vec<u8> {
    version.to_string().into_bytes()
}
