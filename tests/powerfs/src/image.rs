//! The tree a power cut would leave: taken from the model under its lock, written out after.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::Loss;
use crate::state::{Body, File, PAGE, ROOT, State};

/// A 512-byte sector: how much of the last page written a torn image keeps, in whole sectors.
const SECTOR: usize = 512;

/// One node of an image, parents before their children.
#[derive(Debug)]
pub(crate) enum Node {
    Dir {
        path: PathBuf,
        perm: u16,
    },
    File {
        path: PathBuf,
        perm: u16,
        bytes: Vec<u8>,
    },
}

/// Walks the durable names from the root. A directory reachable through a durable name of one
/// of its own descendants (renames fsynced in one directory but not the other) is cut there.
pub(crate) fn snapshot(state: &State, loss: Loss) -> Vec<Node> {
    let mut nodes = Vec::new();
    // (directory, its path, the directories above it and itself)
    let mut stack: Vec<(u64, PathBuf, Vec<u64>)> = vec![(ROOT, PathBuf::new(), vec![ROOT])];
    while let Some((ino, path, above)) = stack.pop() {
        let Some(Body::Dir(dir)) = state.inodes.get(&ino).map(|node| &node.body) else {
            continue;
        };
        // Reversed so that the stack pops them in name order.
        for (name, &child) in dir.durable.iter().rev() {
            let Some(node) = state.inodes.get(&child) else {
                continue;
            };
            let child_path = path.join(name);
            match &node.body {
                Body::File(file) => nodes.push(Node::File {
                    path: child_path,
                    perm: node.perm,
                    bytes: contents(file, child, loss),
                }),
                Body::Dir(_) if above.contains(&child) => {}
                Body::Dir(_) => {
                    nodes.push(Node::Dir {
                        path: child_path.clone(),
                        perm: node.perm,
                    });
                    let mut below = above.clone();
                    below.push(child);
                    stack.push((child, child_path, below));
                }
            }
        }
    }
    // Files were pushed as their directory was read; put every node after its parent directory.
    nodes.sort_by(|a, b| node_path(a).cmp(node_path(b)));
    nodes
}

fn node_path(node: &Node) -> &Path {
    match node {
        Node::Dir { path, .. } | Node::File { path, .. } => path,
    }
}

/// A file's contents after the cut: its durable bytes; under `Torn`, with a random half of the
/// pages written since its last sync, and a random number of leading sectors of the last one.
fn contents(file: &File, ino: u64, loss: Loss) -> Vec<u8> {
    let mut bytes = file.durable.clone();
    let Loss::Torn { seed } = loss else {
        return bytes;
    };
    if file.dirty.is_empty() {
        return bytes;
    }
    // One stream per inode: the same seed and state give the same image, whatever the walk.
    let mut rng = StdRng::seed_from_u64(seed ^ ino.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    for &page in &file.dirty {
        let keep = if file.last_page == Some(page) {
            rng.random_range(0..=PAGE / SECTOR) * SECTOR
        } else if rng.random_bool(0.5) {
            PAGE
        } else {
            0
        };
        let start = usize::try_from(page)
            .unwrap_or(usize::MAX)
            .saturating_mul(PAGE);
        if start >= bytes.len() {
            break;
        }
        // Only within the synced length: the size is metadata that only fsync makes durable.
        let end = (start + keep).min(bytes.len());
        for (at, byte) in bytes[start..end].iter_mut().enumerate() {
            // Past the live end (a truncation), the page's new contents are zeros.
            *byte = file.data.get(start + at).copied().unwrap_or(0);
        }
    }
    bytes
}

/// Writes `nodes` under `to`, which must be absent or an empty directory.
pub(crate) fn write(to: &Path, nodes: &[Node]) -> io::Result<()> {
    match fs::read_dir(to) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("powerfs: the image directory {} is not empty", to.display()),
                ));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir_all(to)?,
        Err(e) => return Err(e),
    }
    for node in nodes {
        match node {
            Node::Dir { path, .. } => {
                fs::create_dir(to.join(path))?;
            }
            Node::File { path, perm, bytes } => {
                let at = to.join(path);
                fs::write(&at, bytes)?;
                fs::set_permissions(&at, fs::Permissions::from_mode(u32::from(*perm)))?;
            }
        }
    }
    // Directory modes last (deepest first), so that none keeps its children from being written.
    for node in nodes.iter().rev() {
        if let Node::Dir { path, perm } = node {
            fs::set_permissions(to.join(path), fs::Permissions::from_mode(u32::from(*perm)))?;
        }
    }
    Ok(())
}
