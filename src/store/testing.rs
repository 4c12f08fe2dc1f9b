//! Support for the tests (the unit tests here and the model test in `tests/props`).

use std::io;
use std::path::Path;

use super::JOURNAL_FILE;

/// Writes `value` under `key` in the store at `path` (the daemon must not run), bypassing
/// the committer and every record format: for tests of damaged records. The key is made
/// of `family` (such as `b"r/"`), the instance, a NUL and `id`'s 16 bytes.
pub fn write_raw_event_key(
    path: &Path,
    family: &[u8],
    instance: &str,
    id: ulid::Ulid,
    value: &[u8],
) -> Result<(), String> {
    let db = super::open::open_sled(path, 16 * 1024 * 1024).map_err(|e| e.to_string())?;
    let mut key = super::keys::instance_prefix(family, instance);
    key.extend_from_slice(&id.to_bytes());
    db.insert(key, value).map_err(|e| e.to_string())?;
    db.flush().map_err(|e| e.to_string())?;
    Ok(())
}

/// Copies the store's files at `from` to `to` as they are now, sled's first and the journal
/// last, so that the copy's journal is at least as new as its sled files: what a crash at
/// this moment would leave on disk (sled's unwritten buffers are not in it). Not a backup:
/// sled may write while its files are copied.
pub fn crash_image(from: &Path, to: &Path) -> io::Result<()> {
    copy_tree(from, to, Some(JOURNAL_FILE))?;
    std::fs::copy(from.join(JOURNAL_FILE), to.join(JOURNAL_FILE)).map(drop)
}

fn copy_tree(from: &Path, to: &Path, skip: Option<&str>) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if skip.is_some_and(|skip| name == skip) {
            continue;
        }
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &to.join(&name), None)?;
        } else {
            std::fs::copy(entry.path(), to.join(&name))?;
        }
    }
    Ok(())
}
