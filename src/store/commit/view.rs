//! The batch view: sled as the current batch would leave it. The committer reads only through
//! it, so that a request sees the writes of the requests before it in the same batch.

use std::collections::BTreeMap;
use std::collections::btree_map;
use std::iter::Peekable;
use std::ops::Bound;

use crate::store::error::{Error, sled_error};
use crate::store::journal::Writes;
use crate::store::record::{DeadRecord, DeadV1, EventRecord, EventV1};

/// A key and its value.
pub(super) type KeyValue = (Vec<u8>, Vec<u8>);

/// A value read through a [`BatchView`]: the batch's own write, or sled's shared buffer.
pub(super) enum Value<'v> {
    Written(&'v [u8]),
    Stored(sled::IVec),
}

impl std::ops::Deref for Value<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Value::Written(bytes) => bytes,
            Value::Stored(bytes) => bytes,
        }
    }
}

/// The writes of one batch, readable before they are applied.
pub(in crate::store) struct BatchView<'a> {
    db: &'a sled::Db,
    writes: Writes,
}

impl<'a> BatchView<'a> {
    pub(super) fn new(db: &'a sled::Db) -> Self {
        BatchView {
            db,
            writes: BTreeMap::new(),
        }
    }

    /// The batch's writes (`None`: a removal), in key order.
    pub(super) fn writes(&self) -> &Writes {
        &self.writes
    }

    /// The batch's writes, for the journal and sled.
    pub(super) fn into_writes(self) -> Writes {
        self.writes
    }

    /// The value of `key` as the batch would leave it, without copying it.
    pub(super) fn get(&self, key: &[u8]) -> Result<Option<Value<'_>>, Error> {
        match self.writes.get(key) {
            Some(value) => Ok(value.as_deref().map(Value::Written)),
            None => self.get_before(key),
        }
    }

    /// The value of `key` before this batch, whatever the batch writes to it.
    pub(super) fn get_before(&self, key: &[u8]) -> Result<Option<Value<'_>>, Error> {
        Ok(self.db.get(key).map_err(sled_error)?.map(Value::Stored))
    }

    pub(super) fn get_event(&self, key: &[u8]) -> Result<Option<EventV1>, Error> {
        self.get(key)?.map(|v| EventRecord::decode(&v)).transpose()
    }

    pub(super) fn get_dead(&self, key: &[u8]) -> Result<Option<DeadV1>, Error> {
        self.get(key)?.map(|v| DeadRecord::decode(&v)).transpose()
    }

    pub(super) fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    pub(super) fn remove(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    /// The length of the value this batch writes to `key` (0 if none).
    pub(super) fn written_len(&self, key: &[u8]) -> usize {
        self.writes
            .get(key)
            .and_then(Option::as_ref)
            .map_or(0, Vec::len)
    }

    /// The value this batch writes to `key`, to extend in place; starts empty (a key this batch
    /// has not written yet is taken as new).
    pub(super) fn written_mut(&mut self, key: &[u8]) -> &mut Vec<u8> {
        let value = self.writes.entry(key.to_vec()).or_insert(None);
        value.get_or_insert_with(Vec::new)
    }

    /// The greatest key under `prefix` at or before `key`, with its value, as the batch would
    /// leave it; `None` also when that key is one this batch removes (see [`crate::store::run`]
    /// for why the keys before it need not be looked at).
    pub(super) fn last_at_or_before(
        &self,
        prefix: &[u8],
        key: &[u8],
    ) -> Result<Option<(Vec<u8>, Value<'_>)>, Error> {
        let stored = match self.db.range(prefix.to_vec()..=key.to_vec()).next_back() {
            Some(entry) => Some(entry.map_err(sled_error)?),
            None => None,
        };
        let written = self
            .writes
            .range(prefix.to_vec()..=key.to_vec())
            .next_back();
        fn from_writes<'v>(
            (key, value): (&'v Vec<u8>, &'v Option<Vec<u8>>),
        ) -> Option<(Vec<u8>, Value<'v>)> {
            value.as_deref().map(|v| (key.clone(), Value::Written(v)))
        }
        Ok(match (stored, written) {
            // The batch's own write of a key at least as late wins (the same key: it overrides).
            (Some((stored_key, _)), Some(written)) if **written.0 >= *stored_key => {
                from_writes(written)
            }
            (Some((stored_key, value)), _) => Some((stored_key.to_vec(), Value::Stored(value))),
            (None, Some(written)) => from_writes(written),
            (None, None) => None,
        })
    }

    /// The keys under `prefix` and their values, in key order, as the batch would leave them;
    /// read as the caller goes, so that taking a few holds no more than those.
    pub(super) fn scan_prefix(&self, prefix: &[u8]) -> Entries<'_> {
        let end = match prefix_end(prefix) {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        self.entries((Bound::Included(prefix.to_vec()), end))
    }

    /// The keys from `start` up to `end` (not included) and their values, in key order, as the
    /// batch would leave them; read as the caller goes.
    pub(super) fn range(&self, start: Vec<u8>, end: Vec<u8>) -> Entries<'_> {
        self.entries((Bound::Included(start), Bound::Excluded(end)))
    }

    fn entries(&self, bounds: (Bound<Vec<u8>>, Bound<Vec<u8>>)) -> Entries<'_> {
        Entries {
            stored: self.db.range(bounds.clone()).peekable(),
            written: self.writes.range(bounds).peekable(),
        }
    }

    /// The first key (and its value) under `prefix`, as the batch would leave it.
    pub(super) fn first_with_prefix(&self, prefix: &[u8]) -> Result<Option<KeyValue>, Error> {
        let first = self.scan_prefix(prefix).next().transpose()?;
        Ok(first.map(|(key, value)| (key, value.to_vec())))
    }

    /// Every key (and its value) under `prefix`, as the batch would leave them.
    pub(super) fn all_with_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, Error> {
        self.scan_prefix(prefix)
            .map(|entry| entry.map(|(key, value)| (key, value.to_vec())))
            .collect()
    }
}

/// The first key after every key that starts with `prefix` (`None`: there is none).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The entries of a key range as the batch would leave them ([`BatchView::scan_prefix`],
/// [`BatchView::range`]): sled's, merged in key order with the batch's writes, which override
/// sled's value of the same key and hide the keys the batch removes.
pub(super) struct Entries<'v> {
    stored: Peekable<sled::Iter>,
    written: Peekable<btree_map::Range<'v, Vec<u8>, Option<Vec<u8>>>>,
}

impl<'v> Iterator for Entries<'v> {
    type Item = Result<(Vec<u8>, Value<'v>), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let stored_first = match (self.stored.peek(), self.written.peek()) {
                (None, None) => return None,
                (Some(Err(_)), _) | (Some(Ok(_)), None) => true,
                (None, Some(_)) => false,
                (Some(Ok((stored, _))), Some((written, _))) => stored.as_ref() < written.as_slice(),
            };
            if stored_first {
                return Some(match self.stored.next()? {
                    Ok((key, value)) => Ok((key.to_vec(), Value::Stored(value))),
                    Err(err) => Err(sled_error(err)),
                });
            }
            let (key, value) = self.written.next()?;
            let same_key = matches!(
                self.stored.peek(),
                Some(Ok((stored, _))) if stored.as_ref() == key.as_slice()
            );
            if same_key {
                self.stored.next();
            }
            if let Some(value) = value {
                return Some(Ok((key.clone(), Value::Written(value))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, sled::Db) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let db = sled::Config::new()
            .path(dir.path())
            .open()
            .unwrap_or_else(|e| panic!("{e}"));
        (dir, db)
    }

    fn read(entries: Entries<'_>) -> Vec<(String, String)> {
        entries
            .map(|entry| {
                let (key, value) = entry.unwrap_or_else(|e| panic!("{e}"));
                let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                (text(&key), text(&value))
            })
            .collect()
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_scan_sees_the_batch_over_sled_in_key_order() {
        let (_dir, db) = db();
        for key in ["a/1", "a/2", "a/4", "b/1"] {
            db.insert(key, "stored").unwrap_or_else(|e| panic!("{e}"));
        }
        let mut view = BatchView::new(&db);
        view.insert(b"a/0".to_vec(), b"written".to_vec());
        view.insert(b"a/2".to_vec(), b"written".to_vec());
        view.remove(b"a/4".to_vec());
        view.insert(b"a/3".to_vec(), b"written".to_vec());
        view.remove(b"a/5".to_vec());
        view.insert(b"b/0".to_vec(), b"written".to_vec());
        assert_eq!(
            read(view.scan_prefix(b"a/")),
            pairs(&[
                ("a/0", "written"),
                ("a/1", "stored"),
                ("a/2", "written"),
                ("a/3", "written"),
            ])
        );
        assert_eq!(
            read(view.range(b"a/2".to_vec(), b"b/1".to_vec())),
            pairs(&[("a/2", "written"), ("a/3", "written"), ("b/0", "written")])
        );
        let first = view
            .first_with_prefix(b"a/")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first, Some((b"a/0".to_vec(), b"written".to_vec())));
        view.remove(b"a/0".to_vec());
        view.remove(b"a/1".to_vec());
        let first = view
            .first_with_prefix(b"a/")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first, Some((b"a/2".to_vec(), b"written".to_vec())));
        let before = view.get_before(b"a/2").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(before.as_deref(), Some(&b"stored"[..]));
    }

    #[test]
    fn the_end_of_a_prefix_is_the_first_key_after_it() {
        assert_eq!(prefix_end(b"a/"), Some(b"a0".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }
}
