//! Passes the commit being built to the crate as `HOOKRELAY_COMMIT` (`hookrelay_build_info`,
//! `--version`): `git rev-parse --short=12 HEAD`, or `unknown` outside a git tree or without
//! git. It never fails the build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit()))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=HOOKRELAY_COMMIT={commit}");
    println!("cargo:rerun-if-changed=build.rs");
    // A new commit moves HEAD's branch (or HEAD itself when detached).
    if let Some(git_dir) = git_dir() {
        let head = git_dir.join("HEAD");
        if head.exists() {
            println!("cargo:rerun-if-changed={}", head.display());
        }
        if let Some(reference) = std::fs::read_to_string(&head)
            .ok()
            .and_then(|text| text.strip_prefix("ref: ").map(|r| r.trim().to_owned()))
        {
            // In a worktree, branches live in the common directory.
            for dir in [Some(git_dir.clone()), common_dir(&git_dir)]
                .into_iter()
                .flatten()
            {
                let path = dir.join(&reference);
                if path.exists() {
                    println!("cargo:rerun-if-changed={}", path.display());
                }
            }
            // A packed ref moves in packed-refs.
            for dir in [Some(git_dir.clone()), common_dir(&git_dir)]
                .into_iter()
                .flatten()
            {
                let packed = dir.join("packed-refs");
                if packed.exists() {
                    println!("cargo:rerun-if-changed={}", packed.display());
                }
            }
        }
    }
}

/// The git directory of the tree being built, asked of git (a worktree's is not `.git`).
fn git_dir() -> Option<PathBuf> {
    let out = Command::new("git")
        .args(["rev-parse", "--absolute-git-dir"])
        .output()
        .ok()
        .filter(|out| out.status.success())?;
    let text = String::from_utf8(out.stdout).ok()?;
    let dir = PathBuf::from(text.trim());
    dir.is_dir().then_some(dir)
}

/// A worktree's `commondir`, where the branches are.
fn common_dir(git_dir: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(git_dir.join("commondir")).ok()?;
    let dir = git_dir.join(text.trim());
    dir.is_dir().then_some(dir)
}
