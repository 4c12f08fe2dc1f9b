//! A regular file's contents: live, durable (as of its last fsync), and the pages in between.

use std::collections::BTreeSet;

use fuser::Errno;

/// The unit of a torn write's choices and of the incremental fsync.
pub(crate) const PAGE: usize = 4096;
/// The largest file this in-memory model holds (a write or truncate past it fails with EFBIG).
const MAX_SIZE: u64 = 4 << 30;

/// A regular file's contents, live and durable.
#[derive(Debug, Default)]
pub(crate) struct File {
    /// What reads return now.
    pub(crate) data: Vec<u8>,
    /// What the last fsync made durable (empty if never synced).
    pub(crate) durable: Vec<u8>,
    /// Pages written, zero-filled or truncated since the last fsync. Every byte where `data`
    /// and `durable` may differ, or that one of them has and the other not, is in one.
    pub(crate) dirty: BTreeSet<u64>,
    /// The last page written since the last fsync (the one a torn image tears).
    pub(crate) last_page: Option<u64>,
}

impl File {
    fn mark(&mut self, start: u64, end: u64) {
        if start < end {
            let page = PAGE as u64;
            self.dirty.extend(start / page..=(end - 1) / page);
        }
    }

    pub(crate) fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<(), Errno> {
        let end = offset
            .checked_add(bytes.len() as u64)
            .filter(|&end| end <= MAX_SIZE)
            .ok_or(Errno::EFBIG)?;
        if bytes.is_empty() {
            return Ok(());
        }
        let old = self.data.len() as u64;
        if old < end {
            // The gap up to `offset` becomes zeros: changed too if `durable` is longer.
            self.data.resize(end as usize, 0);
            self.mark(old, offset);
        }
        self.data[offset as usize..end as usize].copy_from_slice(bytes);
        self.mark(offset, end);
        self.last_page = Some((end - 1) / PAGE as u64);
        Ok(())
    }

    pub(crate) fn set_len(&mut self, len: u64) -> Result<(), Errno> {
        if len > MAX_SIZE {
            return Err(Errno::EFBIG);
        }
        let old = self.data.len() as u64;
        self.data.resize(len as usize, 0);
        self.mark(old.min(len), old.max(len));
        Ok(())
    }

    /// fsync: copies the dirty pages into `durable` and gives it the live length.
    pub(crate) fn sync(&mut self) {
        let len = self.data.len();
        self.durable.resize(len, 0);
        for &page in &self.dirty {
            let start = (page as usize).saturating_mul(PAGE);
            if start >= len {
                break;
            }
            let end = (start + PAGE).min(len);
            self.durable[start..end].copy_from_slice(&self.data[start..end]);
        }
        self.dirty.clear();
        self.last_page = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_copies_dirty_pages_and_length() {
        let mut file = File::default();
        file.write(0, &[1; 3 * PAGE]).unwrap();
        file.sync();
        assert_eq!(file.durable, vec![1; 3 * PAGE]);
        file.write(PAGE as u64 + 10, &[2; 5]).unwrap();
        file.set_len(2 * PAGE as u64 + 7).unwrap();
        assert_eq!(file.dirty, BTreeSet::from([1, 2]));
        assert_eq!(file.durable.len(), 3 * PAGE);
        file.sync();
        assert_eq!(file.durable, file.data);
        // Shrink then grow: the grown bytes are zeros in both.
        file.set_len(10).unwrap();
        file.set_len(PAGE as u64 * 2).unwrap();
        file.sync();
        assert_eq!(file.durable, file.data);
        assert!(file.durable[10..].iter().all(|&b| b == 0));
    }
}
