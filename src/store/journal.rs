//! The journal: what makes a batch durable between two checkpoints of sled.
//!
//! Without it, every group commit waits for sled's `flush` (its buffers written out and
//! `sync_file_range`d) and then for an `fdatasync` of sled's log, and every `apply_batch` makes
//! sled write its buffer out (it rolls its I/O buffer for each batch): a write, a
//! `sync_file_range` and a wake-up of its I/O threads per commit. With it, the committer writes
//! the batch's writes (each key with its new value, or its removal) as one record to a
//! preallocated file, `fdatasync`s that file, applies the batch to sled key by key (sled then
//! writes its log a full buffer at a time), and answers. Every [`JOURNAL_BYTES`] of records, a
//! *checkpoint* flushes sled and `fdatasync`s its log, after which the journal is obsolete and is
//! written again from its start.
//!
//! # Recovery
//! Each batch carries a sequence number, which sled also stores (`m/journal`, written last).
//! sled recovers a prefix of its writes, in the order they were made; so after a crash it holds
//! every batch up to the one its `m/journal` names, and at most part of the next. The journal's
//! records after that one are applied again, in order, up to the first record that is torn,
//! fails its checksum or does not follow its predecessor (the rest of the file is what earlier
//! rounds left). A record holds whole values, so it overwrites whatever part of it sled kept.
//! A record a crash tore was never synced, so never acknowledged; but when a batch the store
//! lacks is found further on, the unreadable record was damaged after it was written, and the
//! open logs an error naming the first lost batch (the chain, and what was acknowledged in it,
//! ends there).
//!
//! That needs every batch sled may hold in part to be in the journal: a batch is applied key by
//! key only once its record is synced. The batches that are answered before their sync
//! (removals of delivered events, claims: see `commit::OUTCOME_SYNC_DELAY`) are applied as one
//! atomic sled batch instead, so that sled, if it keeps one the journal lost, keeps all of it;
//! its `m/journal` then says so, and no record is applied. Readers outside the committer may see
//! a batch half applied, never a write that is not durable (except such removals and claims).
//!
//! # Record
//! `version u8 (1) | seq u64 | payload length u32 | crc32 u32 | payload`, little-endian; the
//! checksum covers the version, seq, length and payload. The payload is the batch's writes in
//! key order, each `1 | key length u32 | key | value length u32 | value` or `0 | key length u32
//! | key` for a removal. A zero version byte (the preallocated file, or a cleared start) ends
//! the journal.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// `m/<SEQ_KEY>`: the sequence number of the last batch sled holds whole (u64, big-endian),
/// written with (and last in) every batch.
pub(super) const SEQ_KEY: &str = "journal";
/// The journal's file in the store directory.
pub const JOURNAL_FILE: &str = "journal";
/// The journal's size, allocated (written with zeros) when it is created: an `fdatasync` of
/// blocks already written needs no metadata journal commit of the file system (30–70 % more
/// syncs per second than appending, measured here). A batch that does not fit in what is left
/// triggers a checkpoint instead of a record. 16 MiB: a checkpoint about every 20,000
/// Dropbox-sized events, and at most that much to apply again after a crash.
pub const JOURNAL_BYTES: u64 = 16 * 1024 * 1024;

/// The record buffer's capacity kept between batches; a larger one (a big walk page, a purge)
/// is freed after its batch.
const KEPT_BUFFER_BYTES: usize = 1 << 20;
const VERSION: u8 = 1;
const HEADER_BYTES: usize = 1 + 8 + 4 + 4;
const REMOVE: u8 = 0;
const INSERT: u8 = 1;

/// A batch's writes: each key with its new value, or `None` for a removal.
pub(super) type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// The records a journal holds after a given batch, and how their chain ends.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Chain {
    pub records: Vec<(u64, Writes)>,
    pub end: ChainEnd,
}

/// Where the journal's chain of records ends, and why.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ChainEnd {
    /// Cleared bytes or the file's end: nothing more was written.
    Clear,
    /// A record of an earlier round (its sequence number does not follow).
    Earlier,
    /// Bytes (at `offset`) that are no record: a record torn by a crash while it was written
    /// (so never synced, nor acknowledged), or what is left of an earlier round's records, in
    /// both cases the expected end after a crash; or a record damaged after it was written,
    /// when a later batch is found further on (`damage`).
    Unreadable { offset: u64, damage: Option<Damage> },
}

/// Proof that an unreadable record was damaged after it was written: a batch the store lacks
/// that was journaled after it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Damage {
    /// The first batch that is lost: it and every batch after it.
    pub first_lost: u64,
    /// The batch found further on, and where.
    pub found: u64,
    pub found_at: u64,
}

/// What [`read_record`] found.
enum Read {
    Record {
        seq: u64,
        writes: Writes,
        bytes: u64,
    },
    /// A zero version byte, or the file's end.
    Clear,
    Unreadable,
}

/// What [`Journal::append`] did with a batch.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Appended {
    /// Written (not synced) at the journal's end.
    Written,
    /// Not written: the journal is too full for it. The batch must be made durable by a
    /// checkpoint, which then [`Journal::restart`]s the journal.
    Full,
}

pub(super) struct Journal {
    file: File,
    /// Where the next record goes.
    end: u64,
    capacity: u64,
    /// The record being built, kept for its capacity (up to [`KEPT_BUFFER_BYTES`]).
    buffer: Vec<u8>,
}

impl Journal {
    /// Opens the store's journal, creating it (or growing it) to `bytes` if it is smaller. A
    /// new file's directory entry is not synced here: the caller syncs the directory.
    pub fn open(dir: &Path, bytes: u64) -> io::Result<Journal> {
        let path = dir.join(JOURNAL_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let length = file.metadata()?.len();
        if length < bytes {
            allocate(&file, length, bytes)?;
        }
        forget_cached_pages(&file)?;
        Ok(Journal {
            file,
            end: 0,
            capacity: length.max(bytes),
            buffer: Vec::new(),
        })
    }

    /// The file's size.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The file to sync so that what was appended is durable.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The records that follow record `after` (the last batch the state holds), in order, up to
    /// the end of the journal's valid chain, and how that chain ends. A chain that starts after
    /// `after + 1` means records are missing: an error, not a silent loss.
    pub fn records_after(&self, after: u64) -> io::Result<Chain> {
        let mut file = &self.file;
        file.seek(SeekFrom::Start(0))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut records = Vec::new();
        let mut previous: Option<u64> = None;
        let mut offset = 0;
        let end = loop {
            let (seq, writes, bytes) = match read_record(&mut reader, self.capacity)? {
                Read::Record { seq, writes, bytes } => (seq, writes, bytes),
                Read::Clear => break ChainEnd::Clear,
                Read::Unreadable => break self.unreadable_at(offset, previous, after)?,
            };
            if previous.is_some_and(|p| seq != p + 1) {
                break ChainEnd::Earlier;
            }
            if previous.is_none() && seq > after + 1 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the journal starts at batch {seq} but the store holds batches up to \
                         {after} only: batches are missing"
                    ),
                ));
            }
            previous = Some(seq);
            offset += bytes;
            if seq > after {
                records.push((seq, writes));
            }
        };
        forget_cached_pages(&self.file)?;
        Ok(Chain { records, end })
    }

    /// How the chain ends at an unreadable record at `offset`, after batch `previous` of the
    /// chain, in a store that holds batches up to `after`. Every batch after those two was
    /// journaled after the unreadable record, since sequence numbers only grow; if one of the
    /// next two is found further on, the record was damaged after it was written.
    fn unreadable_at(
        &self,
        offset: u64,
        previous: Option<u64>,
        after: u64,
    ) -> io::Result<ChainEnd> {
        let held = previous.map_or(after, |previous| previous.max(after));
        let length = self.file.metadata()?.len().saturating_sub(offset);
        let mut contents = vec![0u8; length as usize];
        self.file.read_exact_at(&mut contents, offset)?;
        let found_at = |seq: u64| {
            let wanted = [&[VERSION][..], &seq.to_le_bytes()].concat();
            memchr::memmem::find_iter(&contents[1..], &wanted)
                .map(|at| at + 1)
                .find(|&at| {
                    matches!(
                        read_record(&mut &contents[at..], self.capacity),
                        Ok(Read::Record { .. })
                    )
                })
                .map(|at| offset + at as u64)
        };
        // The record at `offset` is `held + 1` (then `held + 2` follows it) or one the store
        // already holds (then `held + 1` does).
        let damage = [held + 1, held + 2].into_iter().find_map(|found| {
            found_at(found).map(|found_at| Damage {
                first_lost: held + 1,
                found,
                found_at,
            })
        });
        Ok(ChainEnd::Unreadable { offset, damage })
    }

    /// Writes batch `seq` at the journal's end, unless it does not fit.
    pub fn append(&mut self, seq: u64, writes: &Writes) -> io::Result<Appended> {
        encode(seq, writes, &mut self.buffer);
        let length = self.buffer.len() as u64;
        let appended = if self.end + length > self.capacity {
            Appended::Full
        } else {
            self.file.write_all_at(&self.buffer, self.end)?;
            self.end += length;
            Appended::Written
        };
        if self.buffer.capacity() > KEPT_BUFFER_BYTES {
            self.buffer = Vec::new();
        }
        Ok(appended)
    }

    /// Starts the journal again from its beginning, after a checkpoint made every record in it
    /// obsolete. Clears the first version byte, so that the next open reads nothing (if that
    /// write is lost in a crash, the open reads the obsolete records and skips them).
    pub fn restart(&mut self) -> io::Result<()> {
        self.end = 0;
        self.file.write_all_at(&[0], 0)
    }
}

/// Drops the file's clean pages from the page cache. Written or read in large pieces (its
/// allocation, the read at open), a file is cached in large folios (ext4 on Linux 6.x), and a
/// small record written into one dirties all of it: every `fdatasync` then wrote a whole folio,
/// up to 1 MiB, instead of the page or two the record touches (measured: 1,024 KiB against
/// 4.7 KiB per sync of a 700-byte record). Pages cached afresh by small writes stay small.
fn forget_cached_pages(file: &File) -> io::Result<()> {
    rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed).map_err(io::Error::from)
}

/// Writes zeros from `from` up to `to` and syncs them.
fn allocate(file: &File, from: u64, to: u64) -> io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let chunk = (to - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..chunk], at)?;
        at += chunk as u64;
    }
    file.sync_all()
}

fn encode(seq: u64, writes: &Writes, out: &mut Vec<u8>) {
    out.clear();
    out.resize(HEADER_BYTES, 0);
    for (key, value) in writes {
        match value {
            Some(value) => {
                out.push(INSERT);
                put_bytes(out, key);
                put_bytes(out, value);
            }
            None => {
                out.push(REMOVE);
                put_bytes(out, key);
            }
        }
    }
    let payload_bytes = (out.len() - HEADER_BYTES) as u32;
    out[0] = VERSION;
    out[1..9].copy_from_slice(&seq.to_le_bytes());
    out[9..13].copy_from_slice(&payload_bytes.to_le_bytes());
    let crc = checksum(&out[..13], &out[HEADER_BYTES..]);
    out[13..17].copy_from_slice(&crc.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header);
    hasher.update(payload);
    hasher.finalize()
}

/// The next record: `Clear` at a zero version byte or the file's end, `Unreadable` for a
/// torn or short record, a length over `limit`, a checksum that does not match or a payload
/// that does not parse.
fn read_record(reader: &mut impl io::Read, limit: u64) -> io::Result<Read> {
    let mut header = [0u8; HEADER_BYTES];
    match read_full(reader, &mut header)? {
        Filled::Empty => return Ok(Read::Clear),
        Filled::Short => return Ok(Read::Unreadable),
        Filled::Full if header[0] == 0 => return Ok(Read::Clear),
        Filled::Full if header[0] != VERSION => return Ok(Read::Unreadable),
        Filled::Full => {}
    }
    let seq = u64::from_le_bytes(header[1..9].try_into().expect("8 bytes"));
    let payload_bytes = u32::from_le_bytes(header[9..13].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(header[13..17].try_into().expect("4 bytes"));
    if u64::from(payload_bytes) > limit {
        return Ok(Read::Unreadable);
    }
    let mut payload = vec![0u8; payload_bytes as usize];
    if !matches!(read_full(reader, &mut payload)?, Filled::Full)
        || checksum(&header[..13], &payload) != crc
    {
        return Ok(Read::Unreadable);
    }
    Ok(match decode_writes(&payload) {
        Some(writes) => Read::Record {
            seq,
            writes,
            bytes: (HEADER_BYTES + payload.len()) as u64,
        },
        None => Read::Unreadable,
    })
}

/// How much of a buffer [`read_full`] filled.
enum Filled {
    Full,
    /// The file ended part of the way.
    Short,
    /// The file ended before it.
    Empty,
}

/// Fills `buffer`, or says where the file ended.
fn read_full(reader: &mut impl io::Read, buffer: &mut [u8]) -> io::Result<Filled> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) if filled == 0 => return Ok(Filled::Empty),
            Ok(0) => return Ok(Filled::Short),
            Ok(read) => filled += read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(Filled::Full)
}

fn decode_writes(mut payload: &[u8]) -> Option<Writes> {
    let mut writes = Writes::new();
    while let Some((&tag, rest)) = payload.split_first() {
        let (key, rest) = take_bytes(rest)?;
        let (value, rest) = match tag {
            INSERT => take_bytes(rest).map(|(value, rest)| (Some(value.to_vec()), rest))?,
            REMOVE => (None, rest),
            _ => return None,
        };
        writes.insert(key.to_vec(), value);
        payload = rest;
    }
    Some(writes)
}

fn take_bytes(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (length, rest) = bytes.split_first_chunk::<4>()?;
    let length = u32::from_le_bytes(*length) as usize;
    (rest.len() >= length).then(|| rest.split_at(length))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes(pairs: &[(&str, Option<&str>)]) -> Writes {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec())))
            .collect()
    }

    fn open(dir: &Path) -> Journal {
        Journal::open(dir, JOURNAL_BYTES).unwrap_or_else(|e| panic!("{e}"))
    }

    fn seqs(journal: &Journal, after: u64) -> Vec<u64> {
        chain(journal, after)
            .records
            .into_iter()
            .map(|(seq, _)| seq)
            .collect()
    }

    fn chain(journal: &Journal, after: u64) -> Chain {
        journal
            .records_after(after)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn records_read_back_as_written_and_only_those_after_the_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut journal = open(dir.path());
        let first = writes(&[("a", Some("1")), ("b", None)]);
        let second = writes(&[("a", Some("2")), ("c", Some(""))]);
        assert_eq!(journal.append(7, &first).ok(), Some(Appended::Written));
        assert_eq!(journal.append(8, &second).ok(), Some(Appended::Written));
        let reopened = open(dir.path());
        let chain = chain(&reopened, 6);
        assert_eq!(chain.records, vec![(7, first), (8, second)]);
        assert_eq!(chain.end, ChainEnd::Clear);
        assert_eq!(seqs(&reopened, 7), vec![8]);
        assert_eq!(seqs(&reopened, 8), Vec::<u64>::new());
        assert_eq!(seqs(&reopened, 20), Vec::<u64>::new());
    }

    #[test]
    fn a_journal_starting_after_a_gap_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut journal = open(dir.path());
        journal.append(7, &writes(&[("a", Some("1"))])).ok();
        let err = journal.records_after(5).err().map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("missing")),
            "{err:?}"
        );
    }

    /// A journal holding `count` equal records; returns it and a record's size.
    fn journal_of(dir: &Path, count: u64) -> (Journal, u64) {
        let mut journal = open(dir);
        for seq in 1..=count {
            journal.append(seq, &writes(&[("key", Some("value"))])).ok();
        }
        let record_bytes = journal.end / count;
        (journal, record_bytes)
    }

    /// Flips a bit of the payload of the record at `offset`.
    fn damage(journal: &Journal, offset: u64) {
        let at = offset + HEADER_BYTES as u64 + 2;
        let mut byte = [0u8];
        journal.file.read_exact_at(&mut byte, at).expect("read");
        journal
            .file
            .write_all_at(&[byte[0] ^ 1], at)
            .expect("write");
    }

    fn damaged(offset: u64, first_lost: u64, found: u64, found_at: u64) -> ChainEnd {
        ChainEnd::Unreadable {
            offset,
            damage: Some(Damage {
                first_lost,
                found,
                found_at,
            }),
        }
    }

    #[test]
    fn a_torn_or_corrupt_record_ends_the_journal() {
        // The second of three records damaged: only the first is read, and batch 3 after it
        // shows that it was damaged after it was written.
        let dir = tempfile::tempdir().expect("tempdir");
        let (journal, record_bytes) = journal_of(dir.path(), 3);
        damage(&journal, record_bytes);
        assert_eq!(seqs(&journal, 0), vec![1]);
        let end = chain(&journal, 0).end;
        assert_eq!(end, damaged(record_bytes, 2, 3, 2 * record_bytes));
        // A store that already holds batch 2 lacks only 3, which is found.
        let end = chain(&journal, 2).end;
        assert_eq!(end, damaged(record_bytes, 3, 3, 2 * record_bytes));
        // The first record damaged: batch 2 follows it.
        let dir = tempfile::tempdir().expect("tempdir");
        let (journal, record_bytes) = journal_of(dir.path(), 2);
        damage(&journal, 0);
        assert_eq!(chain(&journal, 0).end, damaged(0, 1, 2, record_bytes));
        // The second record cut short (the end of the file in its payload): torn, not damaged.
        let dir = tempfile::tempdir().expect("tempdir");
        let (journal, record_bytes) = journal_of(dir.path(), 2);
        journal.file.set_len(journal.end - 1).expect("truncate");
        assert_eq!(seqs(&journal, 0), vec![1]);
        let torn = ChainEnd::Unreadable {
            offset: record_bytes,
            damage: None,
        };
        assert_eq!(chain(&journal, 0).end, torn);
    }

    #[test]
    fn after_a_restart_the_new_records_end_where_the_old_ones_begin() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut journal = open(dir.path());
        for seq in 1..=5 {
            journal.append(seq, &writes(&[("k", Some("old"))])).ok();
        }
        journal.restart().expect("restart");
        // Nothing written since the restart: the obsolete records are not read at all.
        assert_eq!(seqs(&journal, 5), Vec::<u64>::new());
        journal.append(6, &writes(&[("k", Some("new"))])).ok();
        // Record 6 overwrote record 1; records 2..=5 follow it but do not follow on from it.
        assert_eq!(seqs(&journal, 5), vec![6]);
        assert_eq!(chain(&journal, 5).end, ChainEnd::Earlier);
        // A longer record 7 ends inside old record 3: what follows it is no record (or reads
        // as cleared bytes), and no damage either.
        journal
            .append(7, &writes(&[("k", Some("a longer value"))]))
            .ok();
        assert_eq!(seqs(&journal, 5), vec![6, 7]);
        let end = chain(&journal, 5).end;
        assert!(
            matches!(
                end,
                ChainEnd::Clear | ChainEnd::Unreadable { damage: None, .. }
            ),
            "{end:?}"
        );
        // A state that already holds 7 reads nothing.
        assert_eq!(seqs(&journal, 6), vec![7]);
        assert_eq!(seqs(&journal, 7), Vec::<u64>::new());
    }

    #[test]
    fn a_batch_that_does_not_fit_is_not_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut journal = open(dir.path());
        let big = "x".repeat(JOURNAL_BYTES as usize / 2);
        let batch = writes(&[("big", Some(big.as_str()))]);
        assert_eq!(journal.append(1, &batch).ok(), Some(Appended::Written));
        assert_eq!(journal.append(2, &batch).ok(), Some(Appended::Full));
        assert_eq!(seqs(&journal, 0), vec![1]);
        journal.restart().expect("restart");
        assert_eq!(journal.append(2, &batch).ok(), Some(Appended::Written));
        assert_eq!(seqs(&journal, 1), vec![2]);
    }
}
