//! The store's error type, and how a sled error becomes one.

use std::path::PathBuf;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("cannot open the store at {path}: {message}")]
    Open { path: PathBuf, message: String },
    /// The store is open in another process (sled holds an exclusive lock on its files): the
    /// daemon, or another CLI command. `message` is sled's, with what to do.
    #[error("cannot open the store at {path}: {message}")]
    Locked { path: PathBuf, message: String },
    #[error("store write failed, refusing further writes: {0}")]
    Failed(String),
    #[error("the store is closed")]
    Closed,
    #[error("corrupt {0}")]
    Corrupt(String),
}

impl Error {
    /// The store is open in another process ([`Error::Locked`]).
    pub fn is_locked(&self) -> bool {
        matches!(self, Error::Locked { .. })
    }
}

/// A sled read or write that failed: an I/O failure, which fails the store (not a refusal).
pub(super) fn sled_error(err: sled::Error) -> Error {
    Error::Failed(err.to_string())
}
