//! Opening the store: sled's files and the journal opened and made durable, the journal's
//! batches that sled lacks applied (recovery), the previous run's markers read, and a
//! checkpoint, before the committer starts; and the offline openers of the command line.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use ulid::Ulid;

use super::commit::Opened;
use super::disk::{self, Disk};
use super::durable::{self, SyncFn, fdatasync};
use super::error::{Error, sled_error};
use super::journal::{self, Journal};
use super::record::Counters;
use super::schema::{SCHEMA, check_schema, schema_value};
use super::types::{OpenMode, PreviousRun, StoreOptions};
use super::{DEFAULT_JOURNAL_BYTES, Store, keys, run};

/// sled's files in the store directory (beside the journal).
const SLED_FILES: [&str; 4] = ["db", "conf", "snap.*", "blobs/"];
/// What an operator can do when the store does not open (docs/durability.md says more).
const OPEN_FAILED_HINT: &str = "if the disk itself is sound, stop hookrelay, move the store \
     directory aside (keep it for inspection) and start again with an empty store: see \
     docs/durability.md, \"When the store does not open\"";
/// How sled's open begins its error when another process holds its lock on the store's files.
const SLED_LOCKED: &str = "could not acquire lock";
/// `m/<OTHER_COUNTED>`: present once the counters count every instance's other records.
const OTHER_COUNTED: &str = "other_counted";

/// Opens (or creates) the store's files at `options.path` and recovers them: what the committer
/// starts from, and what the previous run left. Everything the journal held is in sled and
/// durable (a checkpoint, with `sync`) before the journal starts again.
pub(super) fn recover(
    options: &StoreOptions,
    sync: SyncFn,
) -> Result<(Opened, PreviousRun), Error> {
    let open_error = |message: String| Error::Open {
        path: options.path.clone(),
        message,
    };
    durable::create_dir(&options.path).map_err(|e| open_error(e.to_string()))?;
    let db = open_sled(&options.path, options.cache_bytes)?;
    let db_file = File::open(options.path.join("db")).map_err(|e| open_error(e.to_string()))?;
    check_schema(&db).map_err(open_error)?;
    let journal = Journal::open(&options.path, options.journal_bytes)
        .map_err(|e| open_error(format!("journal: {e}")))?;
    // sled's files and the journal, and their names, durable before anything relies on them.
    durable::sync_files(&options.path).map_err(|e| open_error(e.to_string()))?;
    let last_seq = apply_journal(&db, &journal).map_err(open_error)?;
    let previous = read_previous_run(&db, options.mode).map_err(|e| open_error(e.to_string()))?;
    count_other_records(&db).map_err(|e| open_error(e.to_string()))?;
    // What the journal held, and the markers, durable in sled before the journal starts again
    // (and before a record may rely on `m/schema` saying 4).
    let mut disk = Disk {
        db,
        db_file,
        journal,
        sync,
    };
    disk.checkpoint().map_err(open_error)?;
    let counters = read_counters(&disk.db).map_err(open_error)?;
    let last_id = last_run_id(&disk.db).map_err(|e| open_error(e.to_string()))?;
    let opened = Opened {
        disk,
        last_seq,
        counters,
        last_id,
    };
    Ok((opened, previous))
}

/// Opens sled's files at `path`: [`Error::Locked`] if another process has them open. sled may
/// panic on files it cannot make sense of (damage it does not check for); that is reported like
/// any other error, naming the store, rather than ending the process.
pub(super) fn open_sled(path: &Path, cache_bytes: u64) -> Result<sled::Db, Error> {
    let config = sled::Config::new()
        .path(path)
        .cache_capacity(cache_bytes)
        // The committer flushes at its checkpoints; sled's own periodic flush would only
        // contend with the journal for the device (and add a sync_all of its own).
        .flush_every_ms(None);
    let (failed, locked) =
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open())) {
            Ok(Ok(db)) => return Ok(db),
            Ok(Err(sled::Error::Io(err))) if err.to_string().starts_with(SLED_LOCKED) => {
                (err.to_string(), true)
            }
            Ok(Err(err)) => (err.to_string(), false),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("no message");
                (message.to_owned(), false)
            }
        };
    let path = path.to_path_buf();
    Err(match locked {
        // Nothing is wrong with the files: the store must not be moved aside.
        true => Error::Locked {
            path,
            message: format!(
                "{failed}: another process has it open (hookrelay running, or a command using \
                 its store); stop that one first, e.g. `systemctl stop hookrelay`"
            ),
        },
        false => Error::Open {
            path,
            message: format!(
                "sled could not open its files ({}): {failed}; {OPEN_FAILED_HINT}",
                SLED_FILES.join(", ")
            ),
        },
    })
}

/// Applies the journal's batches that sled does not hold (see [`journal`]); the sequence number
/// of the last batch sled then holds.
pub(super) fn apply_journal(db: &sled::Db, journal: &Journal) -> Result<u64, String> {
    let held = match db
        .get(keys::meta(journal::SEQ_KEY))
        .map_err(|e| e.to_string())?
    {
        Some(value) => {
            let bytes: [u8; 8] = value.as_ref().try_into().map_err(|_| {
                format!(
                    "the store's journal record (m/{}) is unreadable",
                    journal::SEQ_KEY
                )
            })?;
            u64::from_be_bytes(bytes)
        }
        None => 0,
    };
    let chain = journal
        .records_after(held)
        .map_err(|e| format!("journal: {e}"))?;
    if let journal::ChainEnd::Unreadable {
        offset,
        damage: Some(damage),
    } = &chain.end
    {
        tracing::error!(
            offset,
            first_lost_batch = damage.first_lost,
            found_batch = damage.found,
            found_at = damage.found_at,
            "the journal's record of a batch is damaged (a later batch follows it): the \
             batches from first_lost_batch on are not applied, and any of them that was \
             acknowledged is lost"
        );
    }
    let mut last = held;
    for (seq, writes) in chain.records {
        disk::apply_atomically(db, seq, writes).map_err(|e| e.to_string())?;
        last = seq;
    }
    if last > held {
        tracing::info!(
            batches = last - held,
            "applied the journal's batches after a crash"
        );
    }
    Ok(last)
}

/// Reads the previous run's markers and marks the store [`SCHEMA`] (4): this build journals
/// batches from now on.
fn read_previous_run(db: &sled::Db, mode: OpenMode) -> Result<PreviousRun, sled::Error> {
    let clean_stop = db.get(keys::meta("clean"))?.is_some();
    let last_alive_ms = db.get(keys::meta("alive"))?.and_then(|v| {
        let bytes: [u8; 8] = v.as_ref().try_into().ok()?;
        Some(u64::from_be_bytes(bytes))
    });
    // This run is not clean until it says so at close.
    if clean_stop && mode == OpenMode::Daemon {
        db.remove(keys::meta("clean"))?;
    }
    // Written whatever it says (a journaled `Close` may just have set it back to 3 or 2).
    db.insert(keys::meta("schema"), schema_value(SCHEMA))?;
    Ok(PreviousRun {
        clean_stop,
        last_alive_ms,
    })
}

/// The greatest event id in any run: the committer's ids continue after it, whatever the clock
/// says now (see [`run`]). Reads the last run of each instance.
pub(super) fn last_run_id(db: &sled::Db) -> Result<Ulid, Error> {
    let mut last = Ulid::nil();
    let mut end = keys::family_end(keys::RUN);
    while let Some(entry) = db.range(keys::RUN.to_vec()..end).next_back() {
        let (key, value) = entry.map_err(sled_error)?;
        for member in run::members(&value) {
            last = last.max(member?.0);
        }
        let Some(instance) = keys::instance_of(keys::RUN, &key) else {
            return Err(Error::Corrupt("run key without an instance".into()));
        };
        end = keys::instance_prefix(keys::RUN, &instance);
    }
    Ok(last)
}

/// Counts, once, each instance's records that are neither events nor dead letters
/// ([`keys::OTHER_FAMILIES`]) into its counters' `other_bytes`: a store written before they
/// were counted. Reads those families once, holding one sum per instance.
fn count_other_records(db: &sled::Db) -> Result<(), Error> {
    if db
        .contains_key(keys::meta(OTHER_COUNTED))
        .map_err(sled_error)?
    {
        return Ok(());
    }
    let mut bytes: BTreeMap<String, u64> = BTreeMap::new();
    for family in keys::OTHER_FAMILIES {
        for entry in db.scan_prefix(family) {
            let (key, value) = entry.map_err(sled_error)?;
            if let Some(instance) = keys::instance_of(family, &key) {
                *bytes.entry(instance).or_default() += (key.len() + value.len()) as u64;
            }
        }
    }
    for (instance, other) in bytes {
        let key = keys::counters(&instance);
        let mut counters = match db.get(&key).map_err(sled_error)? {
            Some(value) => Counters::decode(&value)?,
            None => Counters::default(),
        };
        counters.other_bytes = other;
        db.insert(key, counters.encode()).map_err(sled_error)?;
    }
    db.insert(keys::meta(OTHER_COUNTED), vec![1])
        .map_err(sled_error)?;
    Ok(())
}

/// Every instance's counters, as sled holds them.
fn read_counters(db: &sled::Db) -> Result<BTreeMap<String, Counters>, String> {
    let mut counters = BTreeMap::new();
    for entry in db.scan_prefix(keys::COUNTERS) {
        let (key, value) = entry.map_err(|e| e.to_string())?;
        let name = String::from_utf8_lossy(&key[keys::COUNTERS.len()..]).into_owned();
        let value = Counters::decode(&value).map_err(|e| e.to_string())?;
        counters.insert(name, value);
    }
    Ok(counters)
}

/// Opens a store directory for inspection or offline administration (the daemon must not run).
pub fn open_offline(path: &Path) -> Result<Store, Error> {
    if !path.join("db").exists() {
        return Err(Error::Open {
            path: path.to_path_buf(),
            message: "no store here".into(),
        });
    }
    create_offline(path)
}

/// Opens a store directory offline, creating the store if there is none (`authorize` before
/// the daemon's first start).
pub fn create_offline(path: &Path) -> Result<Store, Error> {
    let options = StoreOptions {
        path: path.to_path_buf(),
        cache_bytes: 32 * 1024 * 1024,
        mode: OpenMode::Offline,
        journal_bytes: DEFAULT_JOURNAL_BYTES,
    };
    Store::open(&options, fdatasync()).map(|(store, _)| store)
}
