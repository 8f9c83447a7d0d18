//! The seam between the koshka server and its engines.
//!
//! An engine is an in-memory data structure with a fixed list of updates and queries, reached
//! through memcached keys. The server parses the protocol and hands each command to the
//! engine as a wire-free [`Request`]; the engine writes what a read found straight into the
//! connection's output buffer through [`Reply`] and returns an [`Outcome`] for the rest.
//!
//! Every update follows one path, [`commit`] (see that module): lock the partitions it
//! touches, validate, encode one record, [`Journal::append`] it, apply it (infallible), advance
//! the partitions. Replay after a restart and replication use [`commit::replay`] with the same
//! apply function, so the log and memory never disagree. Time comes from the journal, never
//! the wall clock, so replay is deterministic.
//!
//! # Snapshots without fork
//! Engines keep their state in partitions (by owner id or key hash), each remembering the log
//! position of the last record applied to it. A snapshot serialises one partition at a time
//! under that partition's lock, so writers elsewhere never wait and memory never doubles.
//! The snapshot is therefore "fuzzy": each partition is exact at its own position. The host
//! replays the log from the position at which the snapshot began, and [`commit::replay`]
//! skips, per partition, every record whose position is not greater than the partition's.
//!
//! # Layout
//! * [`Engine`] — what every engine implements; [`EngineSpec`] — how it registers with a node;
//! * [`request`] — [`Request`], [`Outcome`], [`Reply`]: the vocabulary between server and engine;
//! * [`commit`] — [`Partitions`], the one commit and replay path;
//! * [`lanes`] — [`Lanes`]: replay on several apply threads, by partition;
//! * [`direct`] — [`Direct`]: owned-answer calls for tests and tools;
//! * [`journal`] — [`Journal`], [`MemoryJournal`], [`RecordingJournal`], [`Tracking`];
//! * [`codec`] — the little-endian record/snapshot byte codec;
//! * [`clock`] — [`Clock`] and test clocks;
//! * [`Session`] — per-connection scratch state (temp lists, handshake tags);
//! * [`Error`] — engine errors, mapped to memcached replies by the server.
//!
//! This crate does no networking and knows neither the wire protocol nor any key grammar: the
//! grammars live in `koshka-keys`, whose [`koshka_keys::KeyError`] converts into
//! [`Error::Client`] so engines can use `?`.

pub mod clock;
pub mod codec;
pub mod commit;
pub mod direct;
pub mod journal;
pub mod lanes;
pub mod request;
pub mod spec;

pub use clock::{unix_now, Clock, ManualClock, SystemClock};
pub use commit::{Locked, LogRecord, Partitions, Positioned};
pub use direct::{Direct, StoreOutcome, Value};
pub use journal::{Appended, Journal, MemoryJournal, Recorded, RecordingJournal, Tracking};
pub use lanes::Lanes;
pub use request::{ArithOptions, Collect, ItemRef, Outcome, Reply, Request, StoreMode};
pub use spec::{Built, EngineSetup, EngineSpec};

/// Result of engine operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An engine failure. The server maps each variant onto one memcached reply line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request is malformed or breaks a limit: `CLIENT_ERROR <reason>`.
    #[error("{0}")]
    Client(String),
    /// The id in the key belongs to another shard: `CLIENT_ERROR wrong shard …`.
    #[error("wrong shard: id {id} belongs to shard {expected} of {count}, this is shard {actual}")]
    WrongShard {
        /// The owner id found in the key.
        id: i64,
        /// The shard that owns it.
        expected: u32,
        /// The shard this node holds.
        actual: u32,
        /// Shard count.
        count: u32,
    },
    /// The command exists but this engine does not support it: `CLIENT_ERROR …`.
    #[error("command not supported by the {engine} engine")]
    NotSupported {
        /// Engine name.
        engine: &'static str,
    },
    /// The server cannot carry out a valid request: `SERVER_ERROR <reason>`.
    #[error("{0}")]
    Server(String),
    /// The engine is at its memory limit: `SERVER_ERROR out of memory`.
    #[error("out of memory")]
    OutOfMemory,
    /// The journal refused the record (disk failure, poisoned log): `SERVER_ERROR …`.
    #[error("journal: {0}")]
    Journal(String),
    /// A record or snapshot could not be decoded. Fatal at start-up.
    #[error("corrupt {what}: {reason}")]
    Corrupt {
        /// What was being decoded ("record", "snapshot").
        what: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// I/O error while writing or reading a snapshot.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Shorthand for a [`Error::Client`] error.
    pub fn client(reason: impl Into<String>) -> Self {
        Self::Client(reason.into())
    }

    /// Shorthand for a [`Error::Corrupt`] record error.
    pub fn corrupt_record(reason: impl Into<String>) -> Self {
        Self::Corrupt {
            what: "record",
            reason: reason.into(),
        }
    }
}

/// A key the grammar refuses is the client's fault: `CLIENT_ERROR <reason>`, the reason
/// unchanged.
impl From<koshka_keys::KeyError> for Error {
    fn from(error: koshka_keys::KeyError) -> Self {
        Self::Client(error.to_string())
    }
}

/// A value alone on its own cache lines (128 bytes: a line and the neighbour the adjacent-line
/// prefetcher pulls in). For a counter that one core writes often while others read the
/// fields beside it, e.g. an engine-wide byte count next to the hasher keys every lookup
/// reads: without padding every write makes the other core miss on those fields.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Padded<T>(pub T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Context of one record being applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyCtx {
    /// Log position just past the record ([`Appended::pos`]).
    pub pos: u64,
    /// Log time in force for the record ([`Appended::time`]).
    pub time: u32,
}

/// Most entries a [`Session`] keeps; storing more evicts the oldest.
pub const SESSION_TEMP_ENTRIES_MAX: usize = 16;

/// Most bytes one [`Session`] entry may hold.
pub const SESSION_TEMP_BYTES_MAX: usize = 1024 * 1024;

/// Per-connection state that engines may use between requests on one connection: VK's temp
/// lists (`set temp<tag>` followed by a get naming the tag) and similar handshakes.
#[derive(Debug, Default)]
pub struct Session {
    temp: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Session {
    /// Stores `value` under `name`, replacing an older entry of that name.
    ///
    /// # Errors
    /// [`Error::Client`] when the value exceeds [`SESSION_TEMP_BYTES_MAX`].
    pub fn put_temp(&mut self, name: &[u8], value: Vec<u8>) -> Result<()> {
        if value.len() > SESSION_TEMP_BYTES_MAX {
            return Err(Error::client(format!(
                "temp value of {} bytes exceeds {SESSION_TEMP_BYTES_MAX}",
                value.len()
            )));
        }
        self.temp.retain(|(n, _)| n != name);
        if self.temp.len() == SESSION_TEMP_ENTRIES_MAX {
            self.temp.remove(0);
        }
        self.temp.push((name.to_vec(), value));
        Ok(())
    }

    /// The entry stored under `name`, if any.
    #[must_use]
    pub fn temp(&self, name: &[u8]) -> Option<&[u8]> {
        self.temp
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Stores the id list of `set temp<tag>` (packed, 4 bytes per id) for a later key that
    /// names the tag.
    ///
    /// # Errors
    /// As [`Session::put_temp`].
    pub fn put_temp_ids(&mut self, tag: &str, ids: &[i32]) -> Result<()> {
        let bytes = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
        self.put_temp(&temp_ids_name(tag), bytes)
    }

    /// Appends the ids stored by [`Session::put_temp_ids`] under `tag` to `out`.
    ///
    /// # Errors
    /// [`Error::Client`] when this connection has no such temp list.
    pub fn temp_ids(&self, tag: &str, out: &mut Vec<i32>) -> Result<()> {
        let bytes = self
            .temp(&temp_ids_name(tag))
            .ok_or_else(|| Error::client(format!("no temp list {tag} on this connection")))?;
        out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
        Ok(())
    }
}

fn temp_ids_name(tag: &str) -> Vec<u8> {
    [b"temp".as_slice(), tag.as_bytes()].concat()
}

/// Which shard of its engine a node holds: owner ids with `id mod count == index` (by
/// absolute value) belong here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSpec {
    /// This node's shard, `0..count`.
    pub index: u32,
    /// Number of shards of this engine in the cluster, at least 1.
    pub count: u32,
}

impl Default for ShardSpec {
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

impl ShardSpec {
    /// Checks that `id` belongs to this shard.
    ///
    /// # Errors
    /// [`Error::WrongShard`] naming the shard that owns `id`.
    pub fn check(&self, id: i64) -> Result<()> {
        let count = u64::from(self.count.max(1));
        let expected = id.unsigned_abs() % count;
        if expected == u64::from(self.index) {
            Ok(())
        } else {
            Err(Error::WrongShard {
                id,
                expected: u32::try_from(expected).unwrap_or(u32::MAX),
                actual: self.index,
                count: self.count,
            })
        }
    }
}

/// One statistic: a name and its rendered value.
pub type Stat = (String, String);

/// What an engine needs to answer one request.
pub struct Cx<'a> {
    /// The connection's scratch state (temp lists, handshake tags).
    pub session: &'a mut Session,
    /// Where updates are appended (the server tracks the highest position it returns).
    pub journal: &'a dyn Journal,
    /// Where found values go.
    pub reply: &'a mut dyn Reply,
    /// The log's "now" ([`Journal::now`]) for reads: read once per batch of requests by the
    /// server, so expiry checks cost no clock reads.
    pub now: u32,
}

/// An engine hosted by a node.
///
/// Requests an engine does not implement answer [`Error::NotSupported`]. `Get` never changes
/// durable state; every update goes through [`commit::commit`] (see the crate docs).
pub trait Engine: Send + Sync + 'static {
    /// The engine's name (`kv`, `messages`, `wall`, `friends`). Also recorded in binlog headers.
    fn name(&self) -> &'static str;

    /// Whether the engine stores memcached items (values with flags, cas uniques and expiry),
    /// so the whole memcached command set applies to it: `gets`, `gat`, `touch`, `add`,
    /// `replace`, `append`, `prepend`, `cas`, `flush_all` and the meta commands. Engines of
    /// compiled keys answer `get`, `set`, `delete`, `incr` and `decr` only; the server refuses
    /// the rest for them with [`Error::NotSupported`].
    fn item_model(&self) -> bool {
        false
    }

    /// Answers one request. Found values go to `cx.reply`; the rest is the [`Outcome`].
    ///
    /// # Errors
    /// [`Error::Client`] for a malformed key or value, [`Error::WrongShard`],
    /// [`Error::NotSupported`], [`Error::OutOfMemory`], [`Error::Journal`]. An error leaves the
    /// state as it was.
    fn execute(&self, request: &Request<'_>, cx: &mut Cx<'_>) -> Result<Outcome>;

    /// Says that reads of `keys` follow, in this order (the keys of one multi-get). An engine
    /// may start loading the memory those reads will touch, so that their cache misses overlap
    /// instead of being taken one key after another; the reads themselves still come through
    /// [`Engine::execute`]. Changes no state and answers nothing. The default does nothing.
    fn prefetch(&self, keys: &[&[u8]]) {
        let _ = keys;
    }

    /// Applies one record read back from the log (replay, replication) through
    /// [`commit::replay`]: skips partitions whose image already holds it and is deterministic
    /// (time comes from `ctx.time` only).
    ///
    /// # Errors
    /// [`Error::Corrupt`] for a record the engine cannot decode. Fatal at start-up.
    fn apply(&self, record_type: u16, payload: &[u8], ctx: ApplyCtx) -> Result<()>;

    /// The one partition a logged record touches, so replay may apply records of different
    /// partitions on different threads ([`Lanes`]); `None` (the default) makes the record a
    /// barrier, applied alone after every record before it.
    ///
    /// An engine that returns `Some(i)` for a record promises that [`Engine::apply`] of it
    /// reads and writes only state that belongs to partition `i`, plus engine-wide state
    /// that only barrier records write and counters whose value does not depend on order.
    /// Two records with the same `i` are applied in log order; the number `i` only has to be
    /// the same for records of the same partition (the host takes it modulo its thread
    /// count). A record the engine cannot decode should be `None`, so its error is reported
    /// from the calling thread like any serial one. Replay in lanes must end in exactly the
    /// state a serial replay ends in; test that per engine.
    fn replay_partition(&self, record_type: u16, payload: &[u8]) -> Option<usize> {
        let _ = (record_type, payload);
        None
    }

    /// Writes the whole in-memory state, one partition at a time (see the crate docs). Copy a
    /// partition under its lock, write it to `out` after releasing the lock: the host may
    /// pause inside `out.write` to pace a background snapshot.
    ///
    /// # Errors
    /// I/O errors from `out`.
    fn write_snapshot(&self, out: &mut dyn std::io::Write) -> Result<()>;

    /// Replaces the in-memory state with one written by [`Engine::write_snapshot`]. Called on
    /// an empty engine before replay.
    ///
    /// # Errors
    /// [`Error::Corrupt`] or I/O errors.
    fn load_snapshot(&self, input: &mut dyn std::io::Read) -> Result<()>;

    /// Engine statistics for `stats` (names prefixed by the engine name by convention).
    fn stats(&self) -> Vec<Stat>;

    /// Statistics of a named group other than the general one (`stats slabs`, `stats items`,
    /// `stats sizes`), as `STAT` lines; `None` if the engine has no such group.
    fn stats_group(&self, group: &str) -> Option<Vec<Stat>> {
        let _ = group;
        None
    }

    /// Zeroes the engine's counters (`stats reset`); what is stored stays.
    fn reset_stats(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_check() {
        let shard = ShardSpec { index: 1, count: 4 };
        assert!(shard.check(5).is_ok());
        assert!(shard.check(-5).is_ok());
        assert!(matches!(
            shard.check(6),
            Err(Error::WrongShard { expected: 2, .. })
        ));
    }

    #[test]
    fn session_temp_is_bounded() {
        let mut session = Session::default();
        for i in 0..(SESSION_TEMP_ENTRIES_MAX + 3) {
            session
                .put_temp(format!("t{i}").as_bytes(), vec![1])
                .unwrap();
        }
        assert!(session.temp(b"t0").is_none());
        assert!(session
            .temp(format!("t{}", SESSION_TEMP_ENTRIES_MAX + 2).as_bytes())
            .is_some());
        assert!(session
            .put_temp(b"big", vec![0; SESSION_TEMP_BYTES_MAX + 1])
            .is_err());
    }
}
