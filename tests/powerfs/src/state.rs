//! The model: every inode's live and durable state, and what each operation does to them.
//!
//! A regular file has its live `data` and the `durable` bytes its last fsync left, plus the
//! 4 KiB pages changed since (`dirty`): an fsync copies only those. A directory has its live
//! `entries` and the `durable` entries its last fsyncdir left. An inode lives while a live name,
//! a kernel reference (lookup count, open handle) or a durable name holds it.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::time::SystemTime;

use fuser::{Errno, FileAttr, FileType, INodeNo};

use crate::Stats;
pub(crate) use crate::file::{File, PAGE};

/// The root directory's inode number (FUSE's).
pub(crate) const ROOT: u64 = 1;

/// A directory's names, live and durable.
#[derive(Debug, Default)]
pub(crate) struct Dir {
    pub(crate) entries: BTreeMap<OsString, u64>,
    /// The names as of the last fsyncdir.
    pub(crate) durable: BTreeMap<OsString, u64>,
    /// The live parent (for readdir's "..").
    parent: u64,
}

#[derive(Debug)]
pub(crate) enum Body {
    File(File),
    Dir(Dir),
}

#[derive(Debug)]
pub(crate) struct Inode {
    pub(crate) body: Body,
    /// Permission bits (mode & 0o7777).
    pub(crate) perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    /// Live names (0 or 1: no hard links).
    links: u32,
    /// The kernel's references: lookup count and open handles.
    lookups: u64,
    opens: u64,
    /// Durable names (entries in some directory's `durable`).
    durable_links: u64,
}

impl Inode {
    fn new(body: Body, perm: u16, uid: u32, gid: u32) -> Inode {
        let now = SystemTime::now();
        Inode {
            body,
            perm: perm & 0o7777,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
            links: 1,
            lookups: 0,
            opens: 0,
            durable_links: 0,
        }
    }

    fn is_dir(&self) -> bool {
        matches!(self.body, Body::Dir(_))
    }
}

/// The attributes setattr may change (`None`: unchanged).
#[derive(Debug, Default)]
pub(crate) struct SetAttr {
    pub(crate) mode: Option<u32>,
    pub(crate) uid: Option<u32>,
    pub(crate) gid: Option<u32>,
    pub(crate) size: Option<u64>,
    pub(crate) atime: Option<SystemTime>,
    pub(crate) mtime: Option<SystemTime>,
    pub(crate) ctime: Option<SystemTime>,
}

/// One entry of an open directory's listing, taken at opendir.
pub(crate) type Listing = Vec<(u64, FileType, OsString)>;

/// The whole file system.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) inodes: HashMap<u64, Inode>,
    next_ino: u64,
    next_fh: u64,
    dir_handles: HashMap<u64, Listing>,
    pub(crate) stats: Stats,
}

fn check_name(name: &OsStr) -> Result<(), Errno> {
    let bytes = name.as_bytes();
    if bytes.len() > 255 {
        return Err(Errno::ENAMETOOLONG);
    }
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

impl State {
    /// An empty file system (its root directory, mode 0755, owned by root).
    pub(crate) fn new() -> State {
        let mut root = Inode::new(
            Body::Dir(Dir {
                parent: ROOT,
                ..Dir::default()
            }),
            0o755,
            0,
            0,
        );
        root.durable_links = 1; // pinned: the root is always there
        State {
            inodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
            next_fh: 1,
            dir_handles: HashMap::new(),
            stats: Stats::default(),
        }
    }

    /// Adds `name` under `parent` as a durable (synced, dir-synced) file or directory: the seed.
    pub(crate) fn add_durable(
        &mut self,
        parent: u64,
        name: &OsStr,
        contents: Option<Vec<u8>>,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<u64, Errno> {
        let ino = self.make(parent, name, contents.is_some(), perm, uid, gid)?;
        let node = self.inodes.get_mut(&ino).ok_or(Errno::EIO)?;
        node.lookups = 0; // nothing in the kernel refers to it yet
        node.durable_links = 1;
        if let (Body::File(file), Some(bytes)) = (&mut node.body, contents) {
            file.durable.clone_from(&bytes);
            file.data = bytes;
        }
        let dir = self.dir_mut(parent)?;
        dir.durable.insert(name.to_owned(), ino);
        Ok(ino)
    }

    fn node(&self, ino: u64) -> Result<&Inode, Errno> {
        self.inodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Result<&mut Inode, Errno> {
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn dir(&self, ino: u64) -> Result<&Dir, Errno> {
        match &self.node(ino)?.body {
            Body::Dir(dir) => Ok(dir),
            Body::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut Dir, Errno> {
        match &mut self.node_mut(ino)?.body {
            Body::Dir(dir) => Ok(dir),
            Body::File(_) => Err(Errno::ENOTDIR),
        }
    }

    /// A directory that still has a live name (new names can go in it).
    fn live_dir(&self, ino: u64) -> Result<&Dir, Errno> {
        let dir = self.dir(ino)?;
        if ino != ROOT && self.node(ino)?.links == 0 {
            return Err(Errno::ENOENT);
        }
        Ok(dir)
    }

    fn file_mut(&mut self, ino: u64) -> Result<&mut File, Errno> {
        match &mut self.node_mut(ino)?.body {
            Body::File(file) => Ok(file),
            Body::Dir(_) => Err(Errno::EISDIR),
        }
    }

    pub(crate) fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let node = self.node(ino)?;
        let (kind, size) = match &node.body {
            Body::File(file) => (FileType::RegularFile, file.data.len() as u64),
            Body::Dir(dir) => (FileType::Directory, 4096 + dir.entries.len() as u64),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: node.atime,
            mtime: node.mtime,
            ctime: node.ctime,
            crtime: node.ctime,
            kind,
            perm: node.perm,
            nlink: if ino == ROOT { 1 } else { node.links },
            uid: node.uid,
            gid: node.gid,
            rdev: 0,
            blksize: PAGE as u32,
            flags: 0,
        })
    }

    /// The kernel learns of `ino` (an entry reply): one more reference until forget.
    fn referenced(&mut self, ino: u64) -> Result<FileAttr, Errno> {
        let node = self.node_mut(ino)?;
        node.lookups = node.lookups.saturating_add(1);
        self.attr(ino)
    }

    pub(crate) fn lookup(&mut self, parent: u64, name: &OsStr) -> Result<FileAttr, Errno> {
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        let ino = *self.dir(parent)?.entries.get(name).ok_or(Errno::ENOENT)?;
        self.referenced(ino)
    }

    pub(crate) fn forget(&mut self, ino: u64, count: u64) {
        if let Some(node) = self.inodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(count);
            self.maybe_drop(ino);
        }
    }

    /// Creates a file (`file`) or directory named `name` in `parent`; the kernel holds a reference.
    pub(crate) fn make(
        &mut self,
        parent: u64,
        name: &OsStr,
        file: bool,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<u64, Errno> {
        check_name(name)?;
        if self.live_dir(parent)?.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let body = if file {
            Body::File(File::default())
        } else {
            Body::Dir(Dir {
                parent,
                ..Dir::default()
            })
        };
        let ino = self.next_ino;
        self.next_ino += 1;
        let mut node = Inode::new(body, perm, uid, gid);
        node.lookups = 1;
        self.inodes.insert(ino, node);
        self.dir_mut(parent)?.entries.insert(name.to_owned(), ino);
        self.touch(parent);
        Ok(ino)
    }

    /// Like [`State::make`] plus the entry reply's attributes (lookup count already taken).
    pub(crate) fn make_attr(
        &mut self,
        parent: u64,
        name: &OsStr,
        file: bool,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<FileAttr, Errno> {
        let ino = self.make(parent, name, file, perm, uid, gid)?;
        self.attr(ino)
    }

    /// For create on an existing name: the existing regular file, referenced.
    pub(crate) fn existing_file(&mut self, parent: u64, name: &OsStr) -> Result<FileAttr, Errno> {
        let ino = *self.dir(parent)?.entries.get(name).ok_or(Errno::ENOENT)?;
        if self.node(ino)?.is_dir() {
            return Err(Errno::EISDIR);
        }
        self.referenced(ino)
    }

    fn touch(&mut self, ino: u64) {
        if let Some(node) = self.inodes.get_mut(&ino) {
            let now = SystemTime::now();
            node.mtime = now;
            node.ctime = now;
        }
    }

    /// unlink (`dir` false) or rmdir (`dir` true).
    pub(crate) fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let ino = *self.dir(parent)?.entries.get(name).ok_or(Errno::ENOENT)?;
        match &self.node(ino)?.body {
            Body::File(_) if dir => return Err(Errno::ENOTDIR),
            Body::Dir(_) if !dir => return Err(Errno::EISDIR),
            Body::Dir(d) if !d.entries.is_empty() => return Err(Errno::ENOTEMPTY),
            _ => {}
        }
        self.dir_mut(parent)?.entries.remove(name);
        self.touch(parent);
        self.unlinked(ino);
        Ok(())
    }

    fn unlinked(&mut self, ino: u64) {
        if let Some(node) = self.inodes.get_mut(&ino) {
            node.links = node.links.saturating_sub(1);
            node.ctime = SystemTime::now();
        }
        self.maybe_drop(ino);
    }

    pub(crate) fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), Errno> {
        check_name(new_name)?;
        let src = *self.dir(parent)?.entries.get(name).ok_or(Errno::ENOENT)?;
        let dst = self.live_dir(new_parent)?.entries.get(new_name).copied();
        if dst == Some(src) {
            return Ok(());
        }
        let src_dir = self.node(src)?.is_dir();
        if src_dir {
            // Not into itself or its own subtree.
            let mut at = new_parent;
            for _ in 0..self.inodes.len() {
                if at == src {
                    return Err(Errno::EINVAL);
                }
                if at == ROOT {
                    break;
                }
                at = self.dir(at)?.parent;
            }
        }
        if let Some(dst) = dst {
            if no_replace {
                return Err(Errno::EEXIST);
            }
            match (&self.node(dst)?.body, src_dir) {
                (Body::File(_), true) => return Err(Errno::ENOTDIR),
                (Body::Dir(_), false) => return Err(Errno::EISDIR),
                (Body::Dir(d), true) if !d.entries.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
        }
        self.dir_mut(parent)?.entries.remove(name);
        let replaced = self
            .dir_mut(new_parent)?
            .entries
            .insert(new_name.to_owned(), src);
        if src_dir {
            self.dir_mut(src)?.parent = new_parent;
        }
        self.touch(parent);
        self.touch(new_parent);
        if let Some(node) = self.inodes.get_mut(&src) {
            node.ctime = SystemTime::now();
        }
        if let Some(old) = replaced {
            self.unlinked(old);
        }
        Ok(())
    }

    pub(crate) fn open(&mut self, ino: u64) -> Result<(), Errno> {
        self.file_mut(ino)?;
        let node = self.node_mut(ino)?;
        node.opens = node.opens.saturating_add(1);
        Ok(())
    }

    pub(crate) fn release(&mut self, ino: u64) {
        if let Some(node) = self.inodes.get_mut(&ino) {
            node.opens = node.opens.saturating_sub(1);
            self.maybe_drop(ino);
        }
    }

    pub(crate) fn read(&self, ino: u64, offset: u64, size: u32) -> Result<&[u8], Errno> {
        let data = match &self.node(ino)?.body {
            Body::File(file) => &file.data,
            Body::Dir(_) => return Err(Errno::EISDIR),
        };
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let end = start.saturating_add(size as usize).min(data.len());
        Ok(&data[start..end])
    }

    pub(crate) fn write(&mut self, ino: u64, offset: u64, bytes: &[u8]) -> Result<u32, Errno> {
        let written = u32::try_from(bytes.len()).map_err(|_| Errno::EINVAL)?;
        self.file_mut(ino)?.write(offset, bytes)?;
        self.touch(ino);
        self.stats.writes += 1;
        Ok(written)
    }

    /// fallocate mode 0: the file grows to at least `offset + length` (zeros); others unsupported.
    pub(crate) fn fallocate(
        &mut self,
        ino: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        if mode != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
        let file = self.file_mut(ino)?;
        if end > file.data.len() as u64 {
            file.set_len(end)?;
            self.touch(ino);
        }
        Ok(())
    }

    pub(crate) fn setattr(&mut self, ino: u64, change: SetAttr) -> Result<FileAttr, Errno> {
        if let Some(size) = change.size {
            self.file_mut(ino)?.set_len(size)?;
            self.touch(ino);
        }
        let node = self.node_mut(ino)?;
        if let Some(mode) = change.mode {
            node.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = change.uid {
            node.uid = uid;
        }
        if let Some(gid) = change.gid {
            node.gid = gid;
        }
        if let Some(atime) = change.atime {
            node.atime = atime;
        }
        if let Some(mtime) = change.mtime {
            node.mtime = mtime;
        }
        node.ctime = change.ctime.unwrap_or_else(SystemTime::now);
        self.attr(ino)
    }

    /// fsync or fdatasync of a file (of a directory: as fsyncdir).
    pub(crate) fn fsync(&mut self, ino: u64) -> Result<(), Errno> {
        match &mut self.node_mut(ino)?.body {
            Body::File(file) => {
                file.sync();
                self.stats.fsyncs += 1;
                Ok(())
            }
            Body::Dir(_) => self.fsyncdir(ino),
        }
    }

    /// fsyncdir: the directory's live names become its durable ones.
    pub(crate) fn fsyncdir(&mut self, ino: u64) -> Result<(), Errno> {
        self.stats.fsyncdirs += 1;
        let dir = self.dir_mut(ino)?;
        if dir.durable == dir.entries {
            return Ok(());
        }
        let old = std::mem::replace(&mut dir.durable, dir.entries.clone());
        let new: Vec<u64> = dir.durable.values().copied().collect();
        for child in new {
            if let Some(node) = self.inodes.get_mut(&child) {
                node.durable_links += 1;
            }
        }
        for child in old.into_values() {
            if let Some(node) = self.inodes.get_mut(&child) {
                node.durable_links = node.durable_links.saturating_sub(1);
                self.maybe_drop(child);
            }
        }
        Ok(())
    }

    /// opendir: a handle on the listing as it is now ("." and ".." first).
    pub(crate) fn opendir(&mut self, ino: u64) -> Result<u64, Errno> {
        let dir = self.dir(ino)?;
        let mut listing: Listing = vec![
            (ino, FileType::Directory, ".".into()),
            (dir.parent, FileType::Directory, "..".into()),
        ];
        for (name, &child) in &dir.entries {
            let kind = match self.inodes.get(&child).map(|node| &node.body) {
                Some(Body::Dir(_)) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            listing.push((child, kind, name.clone()));
        }
        let fh = self.next_fh;
        self.next_fh += 1;
        self.dir_handles.insert(fh, listing);
        Ok(fh)
    }

    pub(crate) fn listing(&self, fh: u64) -> Result<&Listing, Errno> {
        self.dir_handles.get(&fh).ok_or(Errno::EBADF)
    }

    pub(crate) fn releasedir(&mut self, fh: u64) {
        self.dir_handles.remove(&fh);
    }

    pub(crate) fn exists(&self, ino: u64) -> Result<(), Errno> {
        self.node(ino).map(|_| ())
    }

    /// Frees what nothing holds any more: an inode with no live name, no kernel reference and no
    /// durable name goes (and with a directory, the durable names it held); one that only durable
    /// names hold keeps only its durable contents.
    fn maybe_drop(&mut self, ino: u64) {
        let mut work = vec![ino];
        while let Some(ino) = work.pop() {
            if ino == ROOT {
                continue;
            }
            let Some(node) = self.inodes.get_mut(&ino) else {
                continue;
            };
            if node.links > 0 || node.lookups > 0 || node.opens > 0 {
                continue;
            }
            if node.durable_links > 0 {
                if let Body::File(file) = &mut node.body {
                    file.data = Vec::new();
                    file.dirty.clear();
                    file.last_page = None;
                }
                continue;
            }
            if let Some(Inode {
                body: Body::Dir(dir),
                ..
            }) = self.inodes.remove(&ino)
            {
                for child in dir.durable.into_values() {
                    if let Some(node) = self.inodes.get_mut(&child) {
                        node.durable_links = node.durable_links.saturating_sub(1);
                        work.push(child);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlinked_inode_lives_while_a_durable_name_holds_it() {
        let mut state = State::new();
        let ino = state
            .make(ROOT, OsStr::new("f"), true, 0o644, 0, 0)
            .unwrap();
        state.fsyncdir(ROOT).unwrap();
        state.forget(ino, 1);
        state.remove(ROOT, OsStr::new("f"), false).unwrap();
        assert!(state.inodes.contains_key(&ino));
        state.fsyncdir(ROOT).unwrap();
        assert!(!state.inodes.contains_key(&ino));
    }
}
