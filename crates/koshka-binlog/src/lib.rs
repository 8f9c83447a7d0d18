//! The persistence layer of koshka: append-only binlog segments, snapshots, and the [`Host`]
//! that starts an engine from them and keeps them up to date.
//!
//! # What it guarantees
//! * Every record is framed with length, type and CRC32C; every segment names its engine,
//!   shard, start position and the chain value it continues, so a missing, reordered or
//!   foreign segment is detected, never skipped.
//! * Time is carried in the log (TIME records), so replay hands each record the time that
//!   was in force when it was appended ([`koshka_engine::ApplyCtx::time`]).
//! * A torn final record is cut with a warning; any other corruption stops start-up with the
//!   file and offset, unless the repair flag truncates there.
//! * Snapshots are fuzzy (see [`koshka_engine`]): the host records the log position before
//!   the engine writes its partitions, replays from there, and engines skip per partition.
//!
//! # Layout
//! * [`format`] — byte layouts (segment header, record framing, snapshot header), names;
//! * [`writer`] — [`Binlog`], the [`koshka_engine::Journal`] with durability modes;
//! * [`reader`] — [`Reader`]: records across segments, recovery rules, tail mode;
//! * [`recover`] — [`replay`]: read to the end, cut a torn tail;
//! * [`snapshot`] — the snapshot container;
//! * [`host`] — [`Host`], [`PersistConfig`];
//! * [`tools`] — [`verify`], [`dump`], [`stat`] for `koshka binlog …`.
//!
//! `docs/binlog.md` specifies the on-disk formats.
//!
//! This crate is not an engine: it never interprets payloads, and it does no replication
//! (whose tailer will build on [`ReadMode::Tail`]).

pub mod error;
pub mod format;
pub mod fsutil;
pub mod host;
pub mod reader;
pub mod recover;
pub mod snapshot;
pub mod tools;
pub mod writer;

pub use error::{Error, Result};
pub use host::{Host, PersistConfig, Retention};
pub use reader::{Cut, ReadMode, ReadOptions, Reader, Record};
pub use recover::{replay, ReplayOutcome};
pub use tools::{dump, dump_engine, stat, verify, Report};
pub use writer::{Binlog, BinlogConfig, BinlogStats, Durability, LogEnd};
