//! powerfs: a test-only, in-memory FUSE file system that says what a power cut would leave on disk.
//!
//! The model: after a power cut each regular file holds what its last `fsync`/`fdatasync` made
//! durable (contents and size; a file never synced is empty), and a directory holds the names
//! its last `fsync` (FUSE `fsyncdir`) saw: a name created, renamed or removed since is undone.
//! `sync_file_range` and `fadvise` make nothing durable. [`Loss::Torn`] adds that each of the
//! 4 KiB pages written since a file's last sync may have reached the disk (odds 1/2), and that
//! the last page written is torn: only some leading 512-byte sectors of its new contents did.
//!
//! The file system runs on a fuser background session in the calling process, so other
//! processes (a daemon under test) can use it; [`PowerFs::power_loss_image`] writes the tree a
//! power cut would leave to an ordinary directory, without changing the live file system.

mod file;
mod fuse;
mod image;
mod state;

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, Config, MountOption};
use nix::errno::Errno;
use nix::mount::MntFlags;

use crate::fuse::{PowerFilesystem, Shared};
use crate::state::{ROOT, State};

/// What a power cut loses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// Everything not made durable by fsync (files) and fsyncdir (names) is lost.
    Unsynced,
    /// As [`Loss::Unsynced`], but a random subset (chosen by `seed`) of the 4 KiB pages written
    /// to each file since its last sync did reach the disk, within its synced size, and the
    /// last page written to each file is torn: a random number of its leading 512-byte sectors
    /// have the new contents, the rest the old.
    Torn {
        /// The same seed and file system state give the same image.
        seed: u64,
    },
}

/// Counts of requests since the mount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// `fsync`s and `fdatasync`s of regular files.
    pub fsyncs: u64,
    /// `fsync`s of directories (FUSE `fsyncdir`).
    pub fsyncdirs: u64,
    /// Write requests (with direct I/O, one per `write()` of up to the kernel's request size).
    pub writes: u64,
    /// Inodes the model holds now (not a count since mount): live ones, ones the kernel still
    /// refers to, and removed ones a durable name still holds. For tests that check that memory
    /// stays bounded when files come and go.
    pub inodes: u64,
}

/// A mounted powerfs; unmounted by [`PowerFs::unmount`] or on drop.
#[derive(Debug)]
pub struct PowerFs {
    shared: Arc<Shared>,
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
}

/// How long an unmount waits for the processes still using the mount to let go.
const UNMOUNT_PATIENCE: Duration = Duration::from_secs(30);
/// The same on drop (maybe while a failed test unwinds): then it detaches the mount lazily.
const DROP_PATIENCE: Duration = Duration::from_secs(5);

impl PowerFs {
    /// Mounts at `mountpoint` (an existing empty directory) a file system holding a copy of the
    /// tree at `seed` (regular files and directories), all of it durable; empty when `seed` is
    /// None.
    ///
    /// # Errors
    /// When FUSE cannot mount here (the message says what is missing: `/dev/fuse`, or
    /// `fusermount3` when not root, which `apt-get install fuse3` provides), or the seed cannot be
    /// read or holds something other than regular files and directories.
    pub fn mount(mountpoint: &Path, seed: Option<&Path>) -> io::Result<PowerFs> {
        preflight()?;
        let mountpoint = mountpoint.canonicalize().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("powerfs: mount point {}: {e}", mountpoint.display()),
            )
        })?;
        let mut state = State::new();
        if let Some(seed) = seed {
            copy_seed(&mut state, ROOT, seed)?;
        }
        let shared = Arc::new(Shared::new(state));
        let filesystem = PowerFilesystem {
            shared: Arc::clone(&shared),
        };
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("powerfs".into()), MountOption::RW];
        // fuser asserts on an odd /dev/fuse descriptor: a panic there is a failed mount too.
        let spawned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            fuser::spawn_mount(filesystem, &mountpoint, &config)
        }));
        let session = match spawned {
            Ok(Ok(session)) => session,
            Ok(Err(e)) => return Err(mount_error(&mountpoint, &e.to_string(), e.kind())),
            Err(_) => {
                return Err(mount_error(
                    &mountpoint,
                    "fuser panicked",
                    io::ErrorKind::Other,
                ));
            }
        };
        Ok(PowerFs {
            shared,
            session: Some(session),
            mountpoint,
        })
    }

    /// Writes to `to` (created; must not exist or be empty) the tree a power cut at this moment
    /// would leave, under `loss`, without changing the live file system. Safe to call while other
    /// processes write to it.
    ///
    /// # Errors
    /// When `to` is a non-empty directory, or writing under it fails.
    pub fn power_loss_image(&self, to: &Path, loss: Loss) -> io::Result<()> {
        let nodes = image::snapshot(&self.shared.lock(), loss);
        image::write(to, &nodes)
    }

    /// Counts since mount: fsyncs of files, fsyncdirs, writes (for tests that check the FS was
    /// really used); and the inodes held now.
    pub fn stats(&self) -> Stats {
        let state = self.shared.lock();
        Stats {
            inodes: state.inodes.len() as u64,
            ..state.stats
        }
    }

    /// The mount point (canonical).
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts (the caller has ended every process using it), waiting until the mount point is
    /// free.
    ///
    /// # Errors
    /// When the mount is still busy after 30 s (it is then detached lazily) or cannot be
    /// unmounted.
    pub fn unmount(mut self) -> io::Result<()> {
        self.unmount_within(UNMOUNT_PATIENCE)
    }

    /// Unmounts, retrying while the mount is busy for up to `patience`; then detaches it lazily
    /// (it goes once its last user lets go) and fails.
    fn unmount_within(&mut self, patience: Duration) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let deadline = Instant::now() + patience;
        loop {
            let result = match nix::mount::umount2(&self.mountpoint, MntFlags::empty()) {
                // Not root: the setuid helper unmounts.
                Err(Errno::EPERM) => fusermount_unmount(&self.mountpoint),
                other => other,
            };
            match result {
                // EINVAL: no longer a mount point (unmounted from outside).
                Ok(()) | Err(Errno::EINVAL) => break,
                Err(Errno::EBUSY | Errno::EINTR) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    let _ = nix::mount::umount2(&self.mountpoint, MntFlags::MNT_DETACH);
                    // The session thread ends when the last user lets go; not waited for.
                    drop(session);
                    return Err(io::Error::other(format!(
                        "powerfs: unmounting {}: {e} (after {patience:?}: still in use?); \
                         detached lazily",
                        self.mountpoint.display()
                    )));
                }
            }
        }
        // The kernel has closed the connection: the session thread ends. fuser's own unmount on
        // dropping its handle then finds nothing mounted there (EINVAL, ignored).
        session.join()
    }
}

impl Drop for PowerFs {
    fn drop(&mut self) {
        let _ = self.unmount_within(DROP_PATIENCE);
    }
}

/// Checks what a mount needs, so that a failure says what is missing.
fn preflight() -> io::Result<()> {
    if !Path::new("/dev/fuse").exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "powerfs: /dev/fuse is missing: load the fuse module (modprobe fuse) or, in a \
             container, pass the device in (--device /dev/fuse); `apt-get install fuse3` \
             provides the fuse3 tools (fusermount3)",
        ));
    }
    if !nix::unistd::geteuid().is_root() && which("fusermount3").is_none() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "powerfs: not root and no fusermount3 on PATH: `apt-get install fuse3` provides it",
        ));
    }
    Ok(())
}

fn mount_error(mountpoint: &Path, what: &str, kind: io::ErrorKind) -> io::Error {
    let helper = if which("fusermount3").is_some() {
        "installed"
    } else {
        "missing"
    };
    io::Error::new(
        kind,
        format!(
            "powerfs: mounting FUSE at {} failed: {what}. A mount needs /dev/fuse (present) and \
             either root (mount(2)) or fusermount3 ({helper}; `apt-get install fuse3` provides it)",
            mountpoint.display()
        ),
    )
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn fusermount_unmount(mountpoint: &Path) -> nix::Result<()> {
    let output = Command::new("fusermount3")
        .arg("-u")
        .arg("-q")
        .arg("--")
        .arg(mountpoint)
        .output();
    match output {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) if String::from_utf8_lossy(&output.stderr).contains("busy") => Err(Errno::EBUSY),
        Ok(output) if String::from_utf8_lossy(&output.stderr).contains("not found") => {
            Err(Errno::EINVAL)
        }
        _ => Err(Errno::EPERM),
    }
}

/// Copies the tree at `from` into directory `dir` of the model, durable.
fn copy_seed(state: &mut State, dir: u64, from: &Path) -> io::Result<()> {
    let seed_error = |path: &Path, what: &dyn std::fmt::Display| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("powerfs seed {}: {what}", path.display()),
        )
    };
    let mut entries: Vec<_> = fs::read_dir(from)?.collect::<io::Result<_>>()?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let path = entry.path();
        let meta = fs::symlink_metadata(&path)?;
        let perm = (meta.permissions().mode() & 0o7777) as u16;
        let name: &OsStr = &entry.file_name();
        let contents = if meta.is_file() {
            Some(fs::read(&path)?)
        } else if meta.is_dir() {
            None
        } else {
            return Err(seed_error(&path, &"neither a regular file nor a directory"));
        };
        let ino = state
            .add_durable(dir, name, contents, perm, meta.uid(), meta.gid())
            .map_err(|errno| seed_error(&path, &format!("{errno:?}")))?;
        if meta.is_dir() {
            copy_seed(state, ino, &path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_mount_can_be_shared_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<super::PowerFs>();
    }
}
