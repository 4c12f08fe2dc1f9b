//! sled and the journal as one durable whole: a batch given to sled (at once, or write by write
//! after its journal record is synced), and the checkpoint that makes sled durable and starts
//! the journal again. Open and the committer checkpoint through the same [`Disk::checkpoint`].

use std::fs::File;

use super::durable::SyncFn;
use super::journal::{self, Journal, Writes};
use super::keys;

/// The store's files as the committer writes them, and the one sync they are made durable with.
pub(super) struct Disk {
    pub db: sled::Db,
    /// sled's log (`<path>/db`), synced at checkpoints.
    pub db_file: File,
    pub journal: Journal,
    /// `fdatasync`, or what a test puts in its place to fail it.
    pub sync: SyncFn,
}

impl Disk {
    /// Makes sled durable up to the last batch it took (its `flush`, then a sync of its log), and
    /// starts the journal again: nothing in it is needed any more.
    pub fn checkpoint(&mut self) -> Result<(), String> {
        self.db.flush().map_err(|e| format!("flush: {e}"))?;
        (self.sync)(&self.db_file).map_err(|e| format!("fdatasync of sled's log: {e}"))?;
        self.journal
            .restart()
            .map_err(|e| format!("journal restart: {e}"))
    }

    /// Makes the journal's records durable.
    pub fn sync_journal(&mut self) -> Result<(), String> {
        (self.sync)(self.journal.file()).map_err(|e| format!("journal fdatasync: {e}"))
    }
}

/// Applies batch `seq` to sled as one atomic batch, `m/journal` included (see [`journal`]).
pub(super) fn apply_atomically(db: &sled::Db, seq: u64, writes: Writes) -> sled::Result<()> {
    let mut batch = sled::Batch::default();
    for (key, value) in writes {
        match value {
            Some(value) => batch.insert(key, value),
            None => batch.remove(key),
        }
    }
    batch.insert(keys::meta(journal::SEQ_KEY), &seq.to_be_bytes());
    db.apply_batch(batch)
}

/// Applies batch `seq` to sled write by write, `m/journal` last; only for a batch already
/// durable in the journal (see [`journal`] for why, and for why it is worth it).
pub(super) fn apply_in_order(db: &sled::Db, seq: u64, writes: Writes) -> sled::Result<()> {
    for (key, value) in writes {
        match value {
            Some(value) => db.insert(key, value)?,
            None => db.remove(key)?,
        };
    }
    db.insert(keys::meta(journal::SEQ_KEY), &seq.to_be_bytes())?;
    Ok(())
}
