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
//! * A full disk refuses appends before the engine applies them (disk space is reserved
//!   ahead, [`space`]); writes resume by themselves once space is freed. A failed write(2) or
//!   fdatasync poisons the log.
//! * Log time never goes backwards, also across restarts ([`LogClock`]).
//!
//! # Layout
//! In dependency order (each module uses only those above it):
//! * [`format`] — byte layouts (segment header, record framing, snapshot header), names;
//! * [`fsutil`] — directory listing, fsync of directories; [`lock`] — [`DirLock`];
//! * [`reader`] — [`Reader`]: records across segments, recovery rules, tail mode;
//! * [`end`] — [`LogEnd`], where a log ends (recovery's result, the writer's start);
//! * [`recover`] — [`replay`]: read to the end, cut a torn tail;
//! * [`clock`] — [`LogClock`]; [`space`] — disk-space reservations;
//! * [`writer`] — [`Binlog`], the [`koshka_engine::Journal`] with durability modes;
//! * [`snapshot`] — the snapshot container;
//! * [`host`] — [`Host`], [`PersistConfig`];
//! * [`tools`] — [`verify`], [`dump`], [`stat`] for `koshka binlog …`.
//!
//! `docs/binlog.md` specifies the on-disk formats; `docs/durability.md` the guarantees.
//!
//! * [`repl`] — log shipping: a primary sends its files byte for byte, a replica writes them.
//!
//! This crate is not an engine: it never interprets payloads.

pub mod clock;
pub mod end;
pub mod error;
mod follow;
pub mod format;
pub mod fsutil;
pub mod host;
pub mod lock;
mod ordered;
pub mod reader;
pub mod recover;
pub mod repl;
pub mod snapshot;
pub mod space;
pub mod tools;
pub mod writer;

pub use clock::LogClock;
pub use end::LogEnd;
pub use error::{Error, Result};
pub use host::{Host, PersistConfig, Retention};
pub use lock::DirLock;
pub use reader::{Cut, ReadMode, ReadOptions, Reader, Record};
pub use recover::{replay, replay_to, ReplayOutcome, Sink};
pub use tools::{dump, dump_engine, stat, verify, Report};
pub use writer::{Binlog, BinlogConfig, BinlogStats, Durability};
