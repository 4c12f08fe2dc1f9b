//! Makes the store's files durable: the one replaceable sync of their contents ([`SyncFn`]),
//! and the directory entries a power cut would otherwise undo.
//!
//! A file's contents are durable after an `fsync`/`fdatasync` of it, but a name created, renamed
//! or removed in a directory only after an `fsync` of that directory. sled (as patched in
//! `vendor/sled`) syncs its log, its blob files and their folder, and its snapshots; it does not
//! sync the store directory, nor its `conf` file, nor the `blobs/` folder's entry, nor the `db`
//! file's entry when it creates them, and the journal is created here. [`create_dir`] makes a
//! new store directory's own entry durable; [`sync_files`], called by every open before the
//! first batch can be acknowledged, makes the rest durable.
//!
//! The store holds refresh tokens and notification bodies, so it is private to the daemon's
//! user: [`create_dir`] makes the store directory 0700, and [`sync_files`] sets the directory and
//! `blobs/` to 0700 and every file in them to 0600 whatever they were (a store an earlier
//! version created under umask 022 was 0755/0644). Files sled creates later (blob files,
//! snapshots) are kept private by the process umask, which the command line sets to 0077.
//!
//! Every sync of a file's contents that a batch or a checkpoint relies on (the journal, sled's
//! log) goes through the [`SyncFn`] the store was opened with, which the fault tests replace.
//! The syncs here do not: they need `fsync` (a file's mode, a folder's entries), not
//! `fdatasync`, and they run once per open, before anything is acknowledged; a failure among
//! them fails the open.

use std::fs::{self, DirBuilder, File, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// How the store makes a file's contents durable (the journal after a batch, sled's log at a
/// checkpoint); replaceable so tests can fail it.
pub type SyncFn = Box<dyn FnMut(&File) -> io::Result<()> + Send>;

/// The default sync: `fdatasync`.
pub fn fdatasync() -> SyncFn {
    Box::new(|file: &File| file.sync_data())
}

/// The folder sled keeps its blob files in, inside the store directory.
const BLOBS: &str = "blobs";
/// The mode of the store directory and of `blobs/`: the owner only.
const DIR_MODE: u32 = 0o700;
/// The mode of every file in them.
const FILE_MODE: u32 = 0o600;

/// Creates the store directory `path` (0700) and the folders above it that are missing (as the
/// umask says), and makes each new entry durable by syncing the folder that holds it.
pub(super) fn create_dir(path: &Path) -> io::Result<()> {
    create_dir_with(path, DIR_MODE)
}

fn create_dir_with(path: &Path, mode: u32) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_with(parent, 0o777)?;
    }
    match DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => return Ok(()),
        Err(err) => return Err(err),
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    sync_dir(parent)
}

/// Makes the store directory and its `blobs/` folder 0700 and every file in them 0600, and
/// syncs every such file, then those folders: after it, every file the store has, its mode, and
/// its contents as written so far survive a power cut. Names the file that failed.
pub(super) fn sync_files(path: &Path) -> io::Result<()> {
    restrict(path, DIR_MODE)?;
    let blobs = path.join(BLOBS);
    if blobs.is_dir() {
        restrict(&blobs, DIR_MODE)?;
        sync_entries(&blobs)?;
        sync_dir(&blobs)?;
    }
    sync_entries(path)?;
    sync_dir(path)
}

/// Makes each regular file directly in `dir` 0600 and syncs it.
fn sync_entries(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| named(dir, e))? {
        let entry = entry.map_err(|e| named(dir, e))?;
        let file = entry.path();
        if entry.file_type().map_err(|e| named(&file, e))?.is_file() {
            restrict(&file, FILE_MODE)?;
            File::open(&file)
                .and_then(|f| f.sync_all())
                .map_err(|e| named(&file, e))?;
        }
    }
    Ok(())
}

/// Sets the permission bits of `path` to `mode` unless they are already that.
fn restrict(path: &Path, mode: u32) -> io::Result<()> {
    let current = fs::metadata(path).map_err(|e| named(path, e))?;
    if current.permissions().mode() & 0o7777 == mode {
        return Ok(());
    }
    fs::set_permissions(path, Permissions::from_mode(mode)).map_err(|e| named(path, e))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| named(dir, e))
}

/// The error with the path it concerns, for the open's message.
fn named(path: &Path, err: io::Error) -> io::Error {
    io::Error::new(err.kind(), format!("{}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_chain_of_folders_is_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("a/b/store");
        create_dir(&store).expect("create");
        assert!(store.is_dir());
        create_dir(&store).expect("again");
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
    }

    #[test]
    fn a_new_store_directory_is_private_and_the_folders_above_it_are_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("a/store");
        create_dir(&store).expect("create");
        assert_eq!(mode(&store), 0o700);
        // Whatever the test's umask is, the folder above is not forced private.
        assert_ne!(mode(&dir.path().join("a")) & 0o700, 0);
    }

    #[test]
    fn an_open_makes_a_readable_store_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("store");
        let blobs = store.join(BLOBS);
        fs::create_dir_all(&blobs).expect("folders");
        for file in [store.join("db"), store.join("conf"), blobs.join("1234")] {
            fs::write(&file, b"x").expect("file");
            fs::set_permissions(&file, Permissions::from_mode(0o644)).expect("chmod");
        }
        for folder in [&store, &blobs] {
            fs::set_permissions(folder, Permissions::from_mode(0o755)).expect("chmod");
        }
        sync_files(&store).expect("sync");
        assert_eq!(mode(&store), 0o700);
        assert_eq!(mode(&blobs), 0o700);
        for file in [store.join("db"), store.join("conf"), blobs.join("1234")] {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
    }

    #[test]
    fn syncing_names_the_file_that_failed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("gone");
        let err = sync_files(&missing).expect_err("no such folder");
        assert!(err.to_string().contains("gone"), "{err}");
    }
}
