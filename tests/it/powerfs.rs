//! powerfs (tests/powerfs), the FUSE file system that models power loss, checked through ordinary
//! `std::fs` calls on a mount: an image holds only what fsync (files) and fsyncdir (names) made
//! durable; the torn mode mixes in whole pages and one torn page; flock works on the mount; the
//! counters count. These tests fail, not skip, where FUSE cannot mount (`/dev/fuse`, root or
//! `fusermount3` from `apt-get install fuse3`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use powerfs::{Loss, PowerFs};
use tempfile::TempDir;

const PAGE: usize = 4096;
const SECTOR: usize = 512;

/// A mount in a temporary directory. Fields drop in order: the file system before its directory.
struct Mounted {
    fs: PowerFs,
    _dir: TempDir,
}

fn mount(seed: Option<&Path>) -> Mounted {
    let dir = tempfile::tempdir().expect("tempdir");
    let at = dir.path().join("mnt");
    fs::create_dir(&at).expect("mount point");
    let fs = PowerFs::mount(&at, seed)
        .unwrap_or_else(|e| panic!("powerfs must mount here (these tests fail, not skip): {e}"));
    Mounted { fs, _dir: dir }
}

impl Mounted {
    fn path(&self, name: &str) -> PathBuf {
        self.fs.path().join(name)
    }

    fn image(&self, loss: Loss) -> Image {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("image");
        self.fs
            .power_loss_image(&root, loss)
            .expect("power_loss_image");
        Image { _dir: dir, root }
    }

    /// Unmounts, which must succeed and leave the mount point empty (the model was in memory).
    fn unmount(self) {
        let Mounted { fs, _dir } = self;
        let at = fs.path().to_owned();
        fs.unmount().expect("unmount");
        assert_eq!(
            fs::read_dir(&at).expect("mount point").count(),
            0,
            "still mounted"
        );
    }
}

struct Image {
    _dir: TempDir,
    root: PathBuf,
}

impl Image {
    fn read(&self, name: &str) -> Option<Vec<u8>> {
        fs::read(self.root.join(name)).ok()
    }

    fn tree(&self) -> Tree {
        tree(&self.root)
    }
}

/// Relative path to a file's contents and permission bits (None for a directory).
type Tree = BTreeMap<PathBuf, (Option<Vec<u8>>, u32)>;

fn tree(root: &Path) -> Tree {
    let mut out = Tree::new();
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let meta = fs::symlink_metadata(&path).expect("metadata");
            let rel = path.strip_prefix(root).expect("under root").to_owned();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                todo.push(path);
                out.insert(rel, (None, mode));
            } else {
                out.insert(rel, (Some(fs::read(&path).expect("read")), mode));
            }
        }
    }
    out
}

fn sync_dir(path: &Path) {
    File::open(path)
        .expect("open directory")
        .sync_all()
        .expect("fsync directory");
}

/// Writes `bytes` to a new file at `path`, fdatasyncs it, fsyncs its directory; returns it open.
fn durable_file(path: &Path, bytes: &[u8]) -> File {
    let mut file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .expect("create");
    file.write_all(bytes).expect("write");
    file.sync_data().expect("fdatasync");
    sync_dir(path.parent().expect("parent"));
    file
}

#[test]
fn only_synced_bytes_and_size_survive() {
    let m = mount(None);
    let path = m.path("log");
    let synced: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let file = durable_file(&path, &synced);
    // Overwrite the middle and grow past the end, no sync.
    file.write_all_at(&[0xEE; 9_000], 5_000).expect("write");
    assert_eq!(
        fs::metadata(&path).expect("stat").len(),
        14_000,
        "live size"
    );
    assert_eq!(
        fs::read(&path).expect("read")[5_000..14_000],
        [0xEE; 9_000],
        "live contents"
    );

    assert_eq!(m.image(Loss::Unsynced).read("log"), Some(synced.clone()));

    file.sync_data().expect("fdatasync");
    let mut expected = synced[..5_000].to_vec();
    expected.extend([0xEE; 9_000]);
    assert_eq!(m.image(Loss::Unsynced).read("log"), Some(expected));

    // A file never synced is empty after the cut, though its name was made durable.
    let mut fresh = File::create(m.path("fresh")).expect("create");
    fresh.write_all(b"not synced").expect("write");
    sync_dir(m.fs.path());
    assert_eq!(m.image(Loss::Unsynced).read("fresh"), Some(Vec::new()));
    drop((file, fresh));
    m.unmount();
}

#[test]
fn names_need_a_directory_fsync() {
    let m = mount(None);
    let root = m.fs.path().to_owned();
    let mut file = File::create(m.path("a")).expect("create");
    file.write_all(b"one").expect("write");
    file.sync_all().expect("fsync");
    drop(file);
    assert_eq!(
        m.image(Loss::Unsynced).read("a"),
        None,
        "created, directory not synced"
    );
    sync_dir(&root);
    assert_eq!(m.image(Loss::Unsynced).read("a"), Some(b"one".to_vec()));

    fs::rename(m.path("a"), m.path("b")).expect("rename");
    let image = m.image(Loss::Unsynced);
    assert_eq!(
        (image.read("a"), image.read("b")),
        (Some(b"one".to_vec()), None),
        "rename undone"
    );
    sync_dir(&root);
    let image = m.image(Loss::Unsynced);
    assert_eq!(
        (image.read("a"), image.read("b")),
        (None, Some(b"one".to_vec())),
        "rename kept"
    );

    // Replacing an existing name: undone as a whole, then kept.
    durable_file(&m.path("c"), b"old c");
    fs::rename(m.path("b"), m.path("c")).expect("rename over c");
    let image = m.image(Loss::Unsynced);
    assert_eq!(
        (image.read("b"), image.read("c")),
        (Some(b"one".to_vec()), Some(b"old c".to_vec()))
    );
    sync_dir(&root);
    let image = m.image(Loss::Unsynced);
    assert_eq!(
        (image.read("b"), image.read("c")),
        (None, Some(b"one".to_vec()))
    );

    fs::remove_file(m.path("c")).expect("unlink");
    assert!(!m.path("c").exists(), "unlinked live");
    assert_eq!(
        m.image(Loss::Unsynced).read("c"),
        Some(b"one".to_vec()),
        "unlink undone"
    );
    sync_dir(&root);
    assert_eq!(m.image(Loss::Unsynced).read("c"), None, "unlink kept");

    // A subdirectory needs its parent's fsync; a file in it, the subdirectory's.
    fs::create_dir(m.path("sub")).expect("mkdir");
    durable_file(&m.path("sub/x"), b"x");
    assert!(
        !m.image(Loss::Unsynced).root.join("sub").exists(),
        "mkdir undone"
    );
    sync_dir(&root);
    assert_eq!(m.image(Loss::Unsynced).read("sub/x"), Some(b"x".to_vec()));
    fs::create_dir(m.path("sub/deeper")).expect("mkdir");
    sync_dir(&root);
    assert!(
        !m.image(Loss::Unsynced).root.join("sub/deeper").exists(),
        "synced the wrong directory"
    );
    m.unmount();
}

/// The synced contents (A) and the overwrite (B) of the torn test: every 512-byte sector has its
/// own value, and A's and B's differ everywhere.
fn a_byte(at: usize) -> u8 {
    (at / SECTOR % 251) as u8
}

fn b_byte(at: usize) -> u8 {
    a_byte(at).wrapping_add(100)
}

#[test]
fn torn_images_mix_whole_pages_and_tear_the_last_one() {
    let m = mount(None);
    let path = m.path("journal");
    let a: Vec<u8> = (0..16 * PAGE).map(a_byte).collect();
    let file = durable_file(&path, &a);
    let written = 2..10;
    for page in written.clone() {
        let b: Vec<u8> = (page * PAGE..(page + 1) * PAGE).map(b_byte).collect();
        file.write_all_at(&b, (page * PAGE) as u64).expect("write");
    }
    assert_eq!(m.image(Loss::Unsynced).read("journal"), Some(a.clone()));

    let mut images = BTreeSet::new();
    let (mut b_pages, mut tears) = (0, 0);
    for seed in 0..8 {
        let image = m
            .image(Loss::Torn { seed })
            .read("journal")
            .expect("in the image");
        assert_eq!(
            image,
            m.image(Loss::Torn { seed }).read("journal").unwrap(),
            "seed {seed}"
        );
        assert_eq!(image.len(), a.len(), "the synced size");
        let mut torn = Vec::new();
        for (page, bytes) in image.chunks(PAGE).enumerate() {
            let sectors: Vec<bool> = bytes
                .chunks(SECTOR)
                .enumerate()
                .map(|(s, sector)| {
                    let at = page * PAGE + s * SECTOR;
                    let is_b = sector.iter().all(|&x| x == b_byte(at));
                    assert!(
                        is_b || sector.iter().all(|&x| x == a_byte(at)),
                        "seed {seed} @{at}"
                    );
                    is_b
                })
                .collect();
            let b_count = sectors.iter().filter(|&&b| b).count();
            assert!(
                b_count == 0 || written.contains(&page),
                "seed {seed}: page {page} never written"
            );
            assert!(
                sectors[..b_count].iter().all(|&b| b),
                "seed {seed}: B only as a prefix"
            );
            match b_count {
                0 => {}
                8 if page != 9 => b_pages += 1,
                8 => {}
                _ => torn.push(page),
            }
        }
        assert!(
            torn.len() <= 1 && torn.iter().all(|&p| p == 9),
            "seed {seed}: torn {torn:?}"
        );
        tears += torn.len();
        images.insert(image);
    }
    assert!(images.len() > 1, "different seeds, different images");
    assert!(
        b_pages > 0,
        "some unsynced pages before the last reach the disk"
    );
    // Each seed tears page 9 unless it keeps 0 or all 8 of its sectors (2 chances in 9).
    assert!(tears > 0, "the last page written is torn for some seed");
    drop(file);
    m.unmount();
}

#[test]
fn truncation_is_undone_unless_synced() {
    let m = mount(None);
    let path = m.path("t");
    let c: Vec<u8> = (0..3 * PAGE + 100).map(|i| (i % 13 + 1) as u8).collect();
    let file = durable_file(&path, &c);
    file.set_len(5_000).expect("shrink");
    assert_eq!(
        m.image(Loss::Unsynced).read("t"),
        Some(c.clone()),
        "shrink undone"
    );
    file.set_len(50_000).expect("grow");
    assert_eq!(
        fs::read(&path).expect("read")[5_000..],
        [0; 45_000],
        "live: zeros"
    );
    assert_eq!(
        m.image(Loss::Unsynced).read("t"),
        Some(c.clone()),
        "grow undone"
    );
    file.sync_all().expect("fsync");
    let mut expected = c[..5_000].to_vec();
    expected.resize(50_000, 0);
    assert_eq!(
        m.image(Loss::Unsynced).read("t"),
        Some(expected.clone()),
        "kept"
    );
    file.set_len(100).expect("shrink");
    assert_eq!(
        m.image(Loss::Unsynced).read("t"),
        Some(expected),
        "shrink undone"
    );
    file.sync_data().expect("fdatasync");
    assert_eq!(
        m.image(Loss::Unsynced).read("t"),
        Some(c[..100].to_vec()),
        "kept"
    );
    drop(file);
    m.unmount();
}

#[test]
fn flock_works_on_the_mount() {
    let m = mount(None);
    let path = m.path("lock");
    let first = File::create(&path).expect("create");
    let second = File::open(&path).expect("open");
    first.try_lock().expect("the first exclusive lock");
    assert!(
        matches!(second.try_lock(), Err(fs::TryLockError::WouldBlock)),
        "a second open file description must not get the lock"
    );
    // Another process sees the lock too (flock(1) from util-linux).
    let other = Command::new("flock")
        .arg("-n")
        .arg(&path)
        .arg("true")
        .status()
        .expect("flock(1)");
    assert!(!other.success(), "flock(1) got a held lock");
    first.unlock().expect("unlock");
    second.try_lock().expect("free again");
    drop((first, second));
    m.unmount();
}

#[test]
fn stats_count_fsyncs_fsyncdirs_and_writes() {
    let m = mount(None);
    let before = m.fs.stats();
    let mut file = File::create(m.path("s")).expect("create");
    file.write_all(&[7; 100]).expect("write");
    // Direct I/O: the write reached the file system before write() returned.
    assert_eq!(
        m.fs.stats().writes - before.writes,
        1,
        "write not seen at once"
    );
    file.sync_data().expect("fdatasync");
    for _ in 0..2 {
        file.write_all(&[7; 100]).expect("write");
        file.sync_data().expect("fdatasync");
    }
    sync_dir(m.fs.path());
    let after = m.fs.stats();
    assert_eq!(after.fsyncs - before.fsyncs, 3);
    assert_eq!(after.fsyncdirs - before.fsyncdirs, 1);
    assert_eq!(after.writes - before.writes, 3);
    drop(file);
    m.unmount();
}

#[test]
fn other_processes_use_it_and_removed_files_are_freed() {
    let m = mount(None);
    let path = m.path("child");
    // `sync FILE` fsyncs that file (coreutils).
    let script = format!(
        "printf hello > '{0}' && sync '{0}' && sync '{1}'",
        path.display(),
        m.fs.path().display()
    );
    let before = m.fs.stats();
    let status = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .status()
        .expect("sh");
    assert!(status.success(), "child process on the mount");
    assert_eq!(fs::read(&path).expect("read"), b"hello");
    assert!(
        m.fs.stats().fsyncs > before.fsyncs,
        "the child's fsync reached the model"
    );
    assert_eq!(
        m.image(Loss::Unsynced).read("child"),
        Some(b"hello".to_vec())
    );

    // Files created and removed without a directory fsync (as sled's temporary files) are freed.
    let baseline = m.fs.stats().inodes;
    for i in 0..200 {
        let name = m.path(&format!("tmp{i}"));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&name)
            .expect("create")
            .write_all(&[1; 8192])
            .expect("write");
        fs::remove_file(&name).expect("unlink");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while m.fs.stats().inodes > baseline && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20)); // the kernel's forgets may trail the unlinks
    }
    assert_eq!(
        m.fs.stats().inodes,
        baseline,
        "removed, unsynced files still held"
    );
    m.unmount();
}

#[test]
fn a_seeded_mount_holds_the_seed_all_durable() {
    let seed = tempfile::tempdir().expect("tempdir");
    let s = seed.path();
    fs::write(s.join("top.txt"), b"top").expect("write");
    fs::create_dir_all(s.join("sub/deeper/empty")).expect("mkdir");
    fs::write(
        s.join("sub/data.bin"),
        (0..20_000u32)
            .map(|i| (i * 7 % 256) as u8)
            .collect::<Vec<_>>(),
    )
    .expect("write");
    fs::write(s.join("sub/deeper/empty.file"), b"").expect("write");
    fs::write(s.join("secret"), b"s").expect("write");
    fs::set_permissions(s.join("secret"), fs::Permissions::from_mode(0o600)).expect("chmod");
    let m = mount(Some(s));
    let seed_tree = tree(s);
    assert_eq!(tree(m.fs.path()), seed_tree, "visible through the mount");
    assert_eq!(
        m.image(Loss::Unsynced).tree(),
        seed_tree,
        "all of it durable"
    );
    assert_eq!(
        m.image(Loss::Torn { seed: 1 }).tree(),
        seed_tree,
        "nothing unsynced to tear"
    );
    // The mount is a copy: writing to it leaves the seed alone.
    fs::write(m.path("top.txt"), b"changed").expect("write");
    assert_eq!(fs::read(s.join("top.txt")).expect("read"), b"top");
    assert_eq!(
        m.image(Loss::Unsynced).read("top.txt"),
        Some(b"top".to_vec()),
        "truncate + write unsynced"
    );
    m.unmount();
}
