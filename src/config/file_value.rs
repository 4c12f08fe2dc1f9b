//! `{ file = "PATH" }` values: where PATH resolves, how the file is read, and the warning for a
//! secret file that other users can read.
//!
//! A relative PATH resolves in the credentials directory (systemd `LoadCredential=`) when the
//! file exists there, else in the config file's folder. One trailing newline is trimmed.

use std::path::{Path, PathBuf};

use super::LoadContext;

/// A value read from a file, and the warning it draws, if any.
#[derive(Debug)]
pub(crate) struct FileValue {
    pub text: String,
    pub warning: Option<String>,
}

/// Reads the value of `key` from `path`; `secret` decides whether a world-readable file draws
/// a warning.
///
/// # Errors
/// The rule the value broke (the file cannot be read), naming the resolved path.
pub(crate) fn read(
    ctx: &LoadContext,
    key: &str,
    path: &str,
    secret: bool,
) -> Result<FileValue, String> {
    if path.is_empty() {
        return Err("file reference with an empty path".to_owned());
    }
    let resolved = resolve(ctx, Path::new(path));
    let text = std::fs::read_to_string(&resolved)
        .map_err(|err| format!("cannot read file {}: {err}", resolved.display()))?;
    let warning = if secret {
        world_readable_warning(key, &resolved)
    } else {
        None
    };
    Ok(FileValue {
        text: trim_one_newline(text),
        warning,
    })
}

fn resolve(ctx: &LoadContext, path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_owned();
    }
    if let Some(credentials) = &ctx.credentials_dir {
        let candidate = credentials.join(path);
        if candidate.exists() {
            return candidate;
        }
    }
    ctx.base_dir.join(path)
}

fn trim_one_newline(mut text: String) -> String {
    if text.ends_with("\r\n") {
        text.truncate(text.len() - 2);
    } else if text.ends_with('\n') {
        text.truncate(text.len() - 1);
    }
    text
}

/// A warning when the secret file at `path` (the value of `key`) is readable by every user.
#[cfg(unix)]
pub(crate) fn world_readable_warning(key: &str, path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o004 != 0).then(|| {
        format!(
            "{key}: secret file {} is readable by every user (mode {:o}); restrict it, e.g. chmod o-r",
            path.display(),
            mode & 0o7777
        )
    })
}

#[cfg(not(unix))]
pub(crate) fn world_readable_warning(_key: &str, _path: &Path) -> Option<String> {
    None
}
