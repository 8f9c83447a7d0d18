//! The koshka node: listens on one loopback port per hosted engine, speaks the memcached text
//! and meta protocol, and hands each command to the engine behind the port.
//!
//! # Layout
//! * [`config`] — TOML configuration with defaults from named constants;
//! * [`stats`] — counters declared once;
//! * `net` — worker threads, listeners, connection placement, connection limit;
//! * `conn` — one connection: read batch → parse → execute → one write per batch;
//! * `exec` — a parsed command becomes one engine request per key, run through the
//!   [`koshka_engine::Engine`] seam; replies are encoded in the form the client used;
//! * `stats_cmd` — the `stats` command;
//! * [`stats_groups`] — `stats slabs|items|sizes|conns|detail`, `stats reset`, `slabs …`,
//!   in memcached's format;
//! * [`reply_error`] — the one place engine errors become memcached reply lines.
//!
//! # Threads
//! `threads` OS threads each run a single-threaded tokio runtime. Worker 0 accepts on every
//! port and places each connection on the worker with the fewest open connections, where it
//! stays. Engines are shared and internally partitioned, so the threads never contend on one
//! global lock.
//!
//! This crate knows no engine (it depends on `koshka-proto`, `koshka-engine` and
//! `koshka-limits` only) and does not open binlogs itself: it receives ready engines, each
//! with a [`Persistence`] that owns its journal.

mod budget;
pub mod config;
mod conn;
mod exec;
mod net;
pub mod stats;
mod stats_cmd;
pub mod stats_groups;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use koshka_engine::{Engine, Journal, MemoryJournal, Stat};

pub use budget::{OutputBudget, OUTPUT_BUDGET_DEFAULT};
pub use config::Config;
pub use net::{bind, run, serve};

/// Default for how long a connection may stall with a full reply buffer before it is dropped
/// (`[server] write_stall_timeout_ms`).
pub const WRITE_STALL_TIMEOUT_MS: u64 = 30_000;

/// The acknowledgement side of an engine's log.
pub trait Persistence: Send + Sync {
    /// The journal engines append to.
    fn journal(&self) -> &dyn Journal;

    /// Highest position already acknowledged (written or fsynced, per durability mode).
    fn acked_pos(&self) -> u64;

    /// Resolves once `pos` is acknowledged.
    fn wait_acked(&self, pos: u64)
        -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;

    /// Starts a background snapshot (admin request). Returns a human-readable status.
    fn request_snapshot(&self) -> String;

    /// Persistence statistics.
    fn stats(&self) -> Vec<Stat>;

    /// Flushes and syncs the log (and writes a snapshot if configured) before exit.
    ///
    /// # Errors
    /// A description of the failure.
    fn shutdown(&self) -> Result<(), String>;

    /// Turns a read-only replica into a primary (`stats promote`). Returns a status line.
    ///
    /// # Errors
    /// Why not (not a replica, a failed log).
    fn promote(&self) -> Result<String, String> {
        Err("this engine follows no primary".into())
    }
}

/// No persistence: durability `none`.
#[derive(Debug, Default)]
pub struct NoPersistence {
    journal: MemoryJournal,
}

impl NoPersistence {
    /// Durability `none` with log time from `clock` instead of the system clock (tests that
    /// compare several nodes share one [`koshka_engine::ManualClock`]).
    #[must_use]
    pub fn with_clock(clock: Arc<dyn koshka_engine::Clock>) -> Self {
        Self {
            journal: MemoryJournal::with_clock(clock),
        }
    }
}

impl Persistence for NoPersistence {
    fn journal(&self) -> &dyn Journal {
        &self.journal
    }

    fn acked_pos(&self) -> u64 {
        u64::MAX
    }

    fn wait_acked(
        &self,
        _pos: u64,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn request_snapshot(&self) -> String {
        "durability none: nothing to snapshot".into()
    }

    fn stats(&self) -> Vec<Stat> {
        vec![("durability".into(), "none".into())]
    }

    fn shutdown(&self) -> Result<(), String> {
        Ok(())
    }
}

/// One hosted engine with its port and persistence.
pub struct EngineSlot {
    /// Engine name (`kv`, `messages`, …).
    pub name: String,
    /// Requested listen address (port 0 = ephemeral).
    pub listen: SocketAddr,
    /// The engine.
    pub engine: Arc<dyn Engine>,
    /// Its journal and acknowledgement.
    pub persistence: Arc<dyn Persistence>,
    /// Longest key accepted on this port.
    pub key_len_max: usize,
}

/// State shared by every thread of a node.
pub struct Node {
    /// Hosted engines, one port each.
    pub slots: Vec<Arc<EngineSlot>>,
    /// The effective configuration.
    pub config: Config,
    /// Per-thread counters, registered by each worker.
    pub counters: parking_lot_free::Registry,
    /// Open connections.
    pub connections: AtomicUsize,
    /// Start time.
    pub started: Instant,
    /// Unix time at start.
    pub started_unix: u32,
    /// Verbosity level set by `verbosity`.
    pub verbosity: AtomicU32,
    /// Set when the node is shutting down.
    pub stopping: AtomicBool,
    /// Replies held by clients that do not read, bounded node-wide.
    pub output_budget: OutputBudget,
    /// Per-prefix counters of `stats detail`.
    pub detail: stats_groups::Detail,
    /// Open connections and listeners, for `stats conns`.
    pub conns: stats_groups::Connections,
}

impl Node {
    /// Builds the node state.
    #[must_use]
    pub fn new(config: Config, slots: Vec<Arc<EngineSlot>>) -> Self {
        let budget = usize::try_from(config.server.output_budget.0).unwrap_or(usize::MAX);
        Self {
            output_budget: OutputBudget::new(budget),
            slots,
            config,
            counters: parking_lot_free::Registry::default(),
            connections: AtomicUsize::new(0),
            started: Instant::now(),
            started_unix: koshka_engine::unix_now(),
            verbosity: AtomicU32::new(0),
            stopping: AtomicBool::new(false),
            detail: stats_groups::Detail::default(),
            conns: stats_groups::Connections::default(),
        }
    }

    /// Open connection count.
    #[must_use]
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

/// A tiny registry of per-thread counters (a mutex-protected list; touched only at thread
/// start and by `stats`).
pub mod parking_lot_free {
    use std::sync::{Arc, Mutex};

    use crate::stats::Counters;

    /// The registry.
    #[derive(Debug, Default)]
    pub struct Registry {
        all: Mutex<Vec<Arc<Counters>>>,
    }

    impl Registry {
        /// Registers and returns a new per-thread counter set.
        pub fn register(&self) -> Arc<Counters> {
            let counters = Arc::new(Counters::default());
            if let Ok(mut all) = self.all.lock() {
                all.push(counters.clone());
            }
            counters
        }

        /// Every registered counter set.
        #[must_use]
        pub fn snapshot(&self) -> Vec<Arc<Counters>> {
            self.all.lock().map(|all| all.clone()).unwrap_or_default()
        }
    }
}

/// Renders an engine error as the memcached reply line it is answered with.
#[must_use]
pub fn reply_error(error: &koshka_engine::Error) -> String {
    use koshka_engine::Error as E;
    match error {
        E::Client(reason) => format!("CLIENT_ERROR {reason}\r\n"),
        E::WrongShard { .. } | E::NotSupported { .. } => format!("CLIENT_ERROR {error}\r\n"),
        E::OutOfMemory => "SERVER_ERROR out of memory storing object\r\n".into(),
        E::Server(reason) => format!("SERVER_ERROR {reason}\r\n"),
        E::Journal(reason) => format!("SERVER_ERROR binlog: {reason}\r\n"),
        E::Corrupt { .. } | E::Io(_) => format!("SERVER_ERROR {error}\r\n"),
        _ => format!("SERVER_ERROR {error}\r\n"),
    }
}

#[cfg(test)]
mod tests {
    use koshka_engine::Error;

    use super::*;

    #[test]
    fn error_replies_table() {
        let table: Vec<(Error, &str)> = vec![
            (Error::client("bad key"), "CLIENT_ERROR bad key\r\n"),
            (
                Error::OutOfMemory,
                "SERVER_ERROR out of memory storing object\r\n",
            ),
            (
                Error::Server("object too large for cache".into()),
                "SERVER_ERROR object too large for cache\r\n",
            ),
            (
                Error::Journal("poisoned".into()),
                "SERVER_ERROR binlog: poisoned\r\n",
            ),
            (
                Error::NotSupported { engine: "friends" },
                "CLIENT_ERROR command not supported by the friends engine\r\n",
            ),
            (
                Error::WrongShard {
                    id: 5,
                    expected: 1,
                    actual: 0,
                    count: 2,
                },
                "CLIENT_ERROR wrong shard: id 5 belongs to shard 1 of 2, this is shard 0\r\n",
            ),
        ];
        for (error, reply) in table {
            assert_eq!(reply_error(&error), reply);
        }
    }
}
