//! The seam between the koshka server and its engines.
//!
//! An engine is an in-memory data structure with a fixed list of updates and queries, reached
//! through memcached keys. Every update follows one order, owned by the engine but enforced by
//! this contract:
//!
//! 1. validate the request (parse the key, check the shard, check limits);
//! 2. encode the update as one record and [`Journal::append`] it, which returns the record's
//!    log position and the log time;
//! 3. apply the record to memory with [`Engine::apply`]'s code path, using that time, never
//!    the wall clock, so replay is deterministic;
//! 4. return; the server acknowledges once the journal says the position is durable enough.
//!
//! # Snapshots without fork
//! Engines keep their state in partitions (by owner id or key hash), each remembering the log
//! position of the last record applied to it. A snapshot serialises one partition at a time
//! under that partition's lock, so writers elsewhere never wait and memory never doubles.
//! The snapshot is therefore "fuzzy": each partition is exact at its own position. The host
//! replays the log from the position at which the snapshot began, and an engine skips, per
//! partition, every record whose position is not greater than the partition's position. See
//! [`ApplyCtx`].
//!
//! # Layout
//! * [`Engine`] — what every engine implements;
//! * [`Journal`] — where an engine appends its records ([`MemoryJournal`] for no persistence);
//! * [`Session`] — per-connection scratch state (temp lists, handshake tags);
//! * [`Error`] — engine errors, mapped to memcached replies by the server.
//!
//! This crate does no networking and knows no key grammar.

pub mod clock;

use std::sync::atomic::{AtomicU64, Ordering};

pub use clock::{unix_now, Clock, ManualClock, SystemClock};

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

/// Where a record landed in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Log position just past the record. Positions strictly increase; the server waits until
    /// the journal is durable up to this position before acknowledging.
    pub pos: u64,
    /// The log time (unix seconds) in force for this record; apply must use it as "now".
    pub time: u32,
}

/// The append side of an engine's binlog.
pub trait Journal: Send + Sync {
    /// Appends one record of an engine-defined type. The caller must hold the locks of every
    /// partition the record touches, so the log order of records for one partition equals
    /// their apply order.
    ///
    /// # Errors
    /// [`Error::Journal`] if the log is poisoned or the record is too large.
    fn append(&self, record_type: u16, payload: &[u8]) -> Result<Appended>;

    /// The log's "now" for reads (expiry checks), in unix seconds: never behind the time of
    /// a record already appended, so what a write saw as expired stays expired.
    fn now(&self) -> u32 {
        unix_now()
    }
}

/// A journal that keeps nothing: positions count bytes, time is the wall clock. Used with
/// durability `none` and in engine unit tests.
#[derive(Debug, Default)]
pub struct MemoryJournal {
    pos: AtomicU64,
}

impl Journal for MemoryJournal {
    fn append(&self, _record_type: u16, payload: &[u8]) -> Result<Appended> {
        let len = payload.len() as u64 + 16;
        let pos = self.pos.fetch_add(len, Ordering::Relaxed) + len;
        Ok(Appended {
            pos,
            time: unix_now(),
        })
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

/// A value returned by a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// memcached client flags (1 = PHP-serialised, 0 = plain text/JSON).
    pub flags: u32,
    /// The bytes of the value.
    pub data: Vec<u8>,
}

impl Value {
    /// A value with flags 0.
    #[must_use]
    pub fn text(data: impl Into<Vec<u8>>) -> Self {
        Self {
            flags: 0,
            data: data.into(),
        }
    }
}

/// The answer to a store command (`set`, `add`, …) as memcached spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// `STORED`
    Stored,
    /// `NOT_STORED`
    NotStored,
    /// `EXISTS`
    Exists,
    /// `NOT_FOUND`
    NotFound,
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

/// An engine hosted by a node.
///
/// The generic memcached commands map onto these methods; commands an engine does not
/// implement answer [`Error::NotSupported`]. `get` never mutates durable state; every other
/// method that changes state appends to the journal first (see the crate docs).
pub trait Engine: Send + Sync + 'static {
    /// The engine's name (`kv`, `messages`, `wall`, `friends`). Also recorded in binlog headers.
    fn name(&self) -> &'static str;

    /// Answers `get <key>`: `Ok(None)` is a miss.
    ///
    /// # Errors
    /// [`Error::Client`] for a malformed compiled key; [`Error::WrongShard`].
    fn get(&self, key: &[u8], session: &mut Session) -> Result<Option<Value>>;

    /// Answers `set <key> <flags> <exptime> <bytes>` and its data block.
    ///
    /// # Errors
    /// As [`Engine::get`], plus [`Error::Journal`] and [`Error::OutOfMemory`].
    fn set(
        &self,
        key: &[u8],
        flags: u32,
        value: &[u8],
        session: &mut Session,
        journal: &dyn Journal,
    ) -> Result<StoreOutcome>;

    /// Answers `delete <key>`: `Ok(true)` is `DELETED`, `Ok(false)` is `NOT_FOUND`.
    ///
    /// # Errors
    /// As [`Engine::set`].
    fn delete(&self, key: &[u8], session: &mut Session, journal: &dyn Journal) -> Result<bool>;

    /// Answers `incr`/`decr <key> <delta>` (`delta` negative for decr): `Ok(None)` is
    /// `NOT_FOUND`.
    ///
    /// # Errors
    /// As [`Engine::set`]; the default answers [`Error::NotSupported`].
    fn incr(
        &self,
        key: &[u8],
        delta: i64,
        session: &mut Session,
        journal: &dyn Journal,
    ) -> Result<Option<u64>> {
        let _ = (key, delta, session, journal);
        Err(Error::NotSupported {
            engine: self.name(),
        })
    }

    /// Applies one record read back from the log (replay, replication). Must skip records
    /// already contained in a partition's snapshot image (`ctx.pos` not above the partition's
    /// position) and must be deterministic: time comes from `ctx.time` only.
    ///
    /// # Errors
    /// [`Error::Corrupt`] for a record the engine cannot decode. Fatal at start-up.
    fn apply(&self, record_type: u16, payload: &[u8], ctx: ApplyCtx) -> Result<()>;

    /// Writes the whole in-memory state, one partition at a time (see the crate docs).
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

    #[test]
    fn memory_journal_positions_increase() {
        let journal = MemoryJournal::default();
        let a = journal.append(1, b"abc").unwrap();
        let b = journal.append(1, b"").unwrap();
        assert!(b.pos > a.pos);
    }
}
