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
    /// What does not match is in the segment's header, at offset 0.
    #[error("binlog segment {} (header, offset 0): {reason}", path.display())]
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
    /// Log shipping failed or was refused (connection, handshake, a diverged log).
    #[error("replication: {0}")]
    Replication(String),
    /// Invalid configuration.
    #[error("config: {0}")]
    Config(String),
    /// The engine failed to apply a record during replay.
    #[error(
        "replay: engine failed to apply the record of type {record_type:#06x} in {} at offset \
         {offset} (log position {pos}): {source}",
        path.display()
    )]
    Replay {
        /// The segment file holding the record.
        path: PathBuf,
        /// Byte offset of the record's first byte in that file.
        offset: u64,
        /// Position just past the record.
        pos: u64,
        /// Record type.
        record_type: u16,
        /// The engine's error.
        source: koshka_engine::Error,
    },
    /// Another process (or another [`crate::DirLock`] in this one) holds the data directory.
    #[error("data directory {} is in use by {}", dir.display(), holder(*pid))]
    DirInUse {
        /// The data directory.
        dir: PathBuf,
        /// The holder's PID, when its lock file records one.
        pid: Option<u32>,
    },
    /// A path that must be a directory exists and is something else.
    #[error("{} is not a directory", path.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// Too little free space to start a snapshot; it was skipped (the log is unaffected).
    #[error(
        "snapshot skipped: {available} bytes free in {}, about {needed} needed",
        dir.display()
    )]
    NoSpace {
        /// The directory the snapshot would be written to.
        dir: PathBuf,
        /// Estimated bytes needed.
        needed: u64,
        /// Bytes available to this process.
        available: u64,
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

fn holder(pid: Option<u32>) -> String {
    pid.map_or_else(
        || "another process (its PID is not recorded yet)".to_string(),
        |pid| format!("koshka process {pid}"),
    )
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
