//! Makes the store's directory entries durable: the names a power cut would otherwise undo.
//!
//! A file's contents are durable after an `fsync`/`fdatasync` of it, but a name created, renamed
//! or removed in a directory only after an `fsync` of that directory. sled (as patched in
//! `vendor/sled`) syncs its log, its blob files and their folder, and its snapshots; it does not
//! sync the store directory, nor its `conf` file, nor the `blobs/` folder's entry, nor the `db`
//! file's entry when it creates them, and the journal is created here. [`create_dir`] makes a
//! new store directory's own entry durable; [`sync_files`], called by every open before the
//! first batch can be acknowledged, makes the rest durable.

use std::fs::{self, File};
use std::io;
use std::path::Path;

/// The folder sled keeps its blob files in, inside the store directory.
const BLOBS: &str = "blobs";

/// Creates `path` and the folders above it that are missing, and makes each new entry durable
/// by syncing the folder that holds it.
pub(super) fn create_dir(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir(parent)?;
    }
    match fs::create_dir(path) {
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

/// Syncs every file of the store directory and of its `blobs/` folder, then those folders: after
/// it, every file the store has and its contents as written so far survive a power cut.
/// Names the file that failed.
pub(super) fn sync_files(path: &Path) -> io::Result<()> {
    let blobs = path.join(BLOBS);
    if blobs.is_dir() {
        sync_entries(&blobs)?;
        sync_dir(&blobs)?;
    }
    sync_entries(path)?;
    sync_dir(path)
}

/// Syncs each regular file directly in `dir`.
fn sync_entries(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| named(dir, e))? {
        let entry = entry.map_err(|e| named(dir, e))?;
        let file = entry.path();
        if entry.file_type().map_err(|e| named(&file, e))?.is_file() {
            File::open(&file)
                .and_then(|f| f.sync_all())
                .map_err(|e| named(&file, e))?;
        }
    }
    Ok(())
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

    #[test]
    fn syncing_names_the_file_that_failed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("gone");
        let err = sync_files(&missing).expect_err("no such folder");
        assert!(err.to_string().contains("gone"), "{err}");
    }
}
