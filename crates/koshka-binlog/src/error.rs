//! Errors of the binlog crate.

use std::path::PathBuf;

/// Result of binlog operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A binlog, snapshot or host failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a named file or directory.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Corruption in a segment before the end of the log (or in a segment header).
    #[error("corrupt binlog {} at offset {offset}: {reason}", path.display())]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset in that file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The segments do not form one continuous log (missing, reordered or foreign segment).
    #[error("binlog segment {}: {reason}", path.display())]
    Chain {
        /// The offending segment file.
        path: PathBuf,
        /// What does not match.
        reason: String,
    },
    /// A position that the log cannot serve (before its start, past its end, mid-record).
    #[error("binlog position {pos}: {reason}")]
    Position {
        /// The requested position.
        pos: u64,
        /// Why it cannot be served.
        reason: String,
    },
    /// A snapshot that cannot be used.
    #[error("snapshot {}: {reason}", path.display())]
    Snapshot {
        /// The snapshot file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The writer failed earlier and refuses further work.
    #[error("binlog poisoned: {0}")]
    Poisoned(String),
    /// Invalid configuration.
    #[error("config: {0}")]
    Config(String),
    /// The engine failed to apply a record during replay.
    #[error("replay: engine failed to apply record type {record_type:#06x} ending at log position {pos}: {source}")]
    Replay {
        /// Position just past the record.
        pos: u64,
        /// Record type.
        record_type: u16,
        /// The engine's error.
        source: koshka_engine::Error,
    },
    /// An engine failed to load or write a snapshot.
    #[error("engine: {0}")]
    Engine(#[from] koshka_engine::Error),
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Extension to attach a path to `io::Result`s.
pub(crate) trait IoContext<T> {
    fn ctx(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
