//! Where a log ends: what recovery finds and the writer continues from.
//!
//! This module exists so that the dependency between recovery and the writer is one-way:
//! [`crate::recover`] produces a [`LogEnd`], [`crate::writer`] consumes it (and calls
//! recovery in [`crate::Binlog::open`]); neither needs the other's types.

use std::path::PathBuf;

/// Where an existing log ends: the state a writer continues from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogEnd {
    /// Position just past the last record.
    pub pos: u64,
    /// Chain value at `pos`.
    pub chain: u32,
    /// Time in force at `pos` (the last time found in the log; 0 for an empty log).
    pub time: u32,
    /// The last segment and its start position (`None`: the writer creates one at `pos`).
    pub segment: Option<(PathBuf, u64)>,
}
