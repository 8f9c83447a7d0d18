//! The `kv` engine: memcached semantics (flags, expiry, cas, append/prepend, incr/decr, touch,
//! delayed flush), persistent through the binlog, or a pure LRU cache.
//!
//! # Layout
//! * [`item`] — one allocation per item (header + key + value);
//! * [`record`] — the binlog records;
//! * `memory` — the engine-wide memory limit, per-partition usage, eviction and the
//!   background sweep of expired items;
//! * [`classes`] — memcached's size classes, to report items as memcached tools expect;
//! * `memcached_stats` — `stats slabs|items|sizes` from those classes;
//! * this file — [`Kv`]: partitions, the command methods the server calls, [`Engine`] impl
//!   (replay, snapshots, stats).
//!
//! State lives in [`PARTITIONS`] partitions, each a hash table behind its own mutex, chosen by
//! CRC32C of the key so the mapping never changes between versions (snapshots record a log
//! position per partition; see `koshka-engine`). Every mutation runs entirely under its
//! partition's lock: decide, append the record, apply, so log order equals apply order.
//!
//! This crate does not parse the protocol or talk to sockets.

pub mod classes;
pub mod item;
mod memcached_stats;
mod memory;
pub mod record;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use hashbrown::HashTable;
use koshka_engine::commit::{self, Locked, Partitions, Positioned};
use koshka_engine::{
    ApplyCtx, Cx, Engine, Error, ItemRef, Journal, Outcome, Request, Result, Stat, StoreMode,
};
use parking_lot::MutexGuard;

pub use classes::{ClassCounts, ClassStats};
pub use item::{Item, ItemMeta};
pub use memory::SWEEP_INTERVAL;
use memory::{note_expiry, Removal, Usage};
use record::Record;

/// Number of partitions. A power of two ≥ 64 so two worker threads rarely meet on one lock;
/// part of the snapshot format (changing it changes the record → partition mapping).
pub const PARTITIONS: usize = 256;

/// Most items a prefix scan (`get prefix*`) returns; the scan stops there.
pub const PREFIX_SCAN_ITEMS_MAX: usize = 10_000;

/// Default memory limit for item data ([`koshka_limits::MEMORY_LIMIT_DEFAULT`]).
// NOTE: 1 GiB fits usize on every 64-bit target koshka builds for.
#[expect(clippy::cast_possible_truncation)]
pub const MEMORY_LIMIT_DEFAULT: usize = koshka_limits::MEMORY_LIMIT_DEFAULT as usize;

/// Items [`Engine::write_snapshot`] prefetches ahead of the one it copies: enough misses in
/// flight to keep the memory system busy (a core tracks 10–20), few enough that the lines
/// are still in the cache when the copy reaches them.
const SNAPSHOT_PREFETCH_ITEMS: usize = 16;

/// Snapshot body magic ("KVS2").
const SNAPSHOT_MAGIC: &[u8; 4] = b"KVS2";

/// The kv engine's registration: memcached's port, memcached's key limit.
pub const SPEC: koshka_engine::EngineSpec = koshka_engine::EngineSpec {
    name: "kv",
    default_port: 11211,
    key_len_max: koshka_limits::KEY_LEN_MAX,
    summary: "persistent memcached (or an LRU cache with --cache)",
    build,
};

fn build(setup: &koshka_engine::EngineSetup) -> Result<koshka_engine::Built> {
    let config = KvConfig {
        mode: if setup.cache {
            Mode::Cache
        } else {
            Mode::Persistent
        },
        memory_limit: usize::try_from(setup.memory_limit).unwrap_or(usize::MAX),
        value_size_max: setup.value_size_max,
    };
    let kv = std::sync::Arc::new(Kv::new(config));
    // Frees expired items in the background, as memcached's LRU crawler does.
    Kv::spawn_sweeper(&kv)?;
    Ok(koshka_engine::Built {
        engine: kv,
        // A cache keeps no log: nothing of it survives a restart.
        logged: !setup.cache,
    })
}

/// Whether a full kv refuses writes or evicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Refuse writes past the memory limit with `SERVER_ERROR out of memory`.
    Persistent,
    /// Evict least-recently-used items (CLOCK approximation) past the memory limit.
    Cache,
}

/// Configuration of a kv engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvConfig {
    /// Full behaviour.
    pub mode: Mode,
    /// Memory limit for items, in bytes, for the whole engine (all partitions together).
    pub memory_limit: usize,
    /// Largest value.
    pub value_size_max: usize,
}

impl Default for KvConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Persistent,
            memory_limit: MEMORY_LIMIT_DEFAULT,
            value_size_max: koshka_limits::VALUE_SIZE_DEFAULT,
        }
    }
}

#[derive(Default)]
struct Partition {
    table: HashTable<Item>,
    /// Log position of the last record applied here.
    pos: u64,
    cas_counter: u64,
    /// What the partition's items take, in total and per size class.
    usage: Usage,
    /// Earliest expiry among the partition's items (0 = none); may be earlier than the true
    /// one after deletes, never later, so the sweep never misses an expired item.
    next_expiry: u32,
    /// Eviction clock (cache mode): hashes in insertion order.
    clock: VecDeque<u64>,
    /// Items with a cas at or below this were flushed by a delayed `flush_all` (0 = none).
    flush_cas: u64,
    /// The delayed-flush deadline already applied to this partition.
    flush_seen: u32,
    /// Items stored since start (`total_items`).
    stored: u64,
}

impl Positioned for Partition {
    fn pos(&self) -> u64 {
        self.pos
    }

    fn set_pos(&mut self, pos: u64) {
        self.pos = pos;
    }
}

/// The result of a mutation: what to answer, and the log position to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written<T> {
    /// The answer.
    pub outcome: T,
    /// Log position the acknowledgement must wait for (0 = nothing was logged).
    pub pos: u64,
}

impl<T> Written<T> {
    fn nothing(outcome: T) -> Self {
        Self { outcome, pos: 0 }
    }
}

/// Outcome of incr/decr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArithOutcome {
    /// The new value (and cas).
    Value {
        /// New value.
        value: u64,
        /// New cas.
        cas: u64,
    },
    /// No such item.
    NotFound,
    /// The item is not a decimal number.
    NonNumeric,
    /// The cas given to `ma C…` did not match.
    Exists,
}

/// The answer to a store command as memcached spells it.
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

/// Outcome of a store, with the item's new cas when stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The memcached answer.
    pub outcome: StoreOutcome,
    /// The new cas unique (0 when not stored).
    pub cas: u64,
}

pub use koshka_engine::ArithOptions;

/// The kv engine.
pub struct Kv {
    partitions: Partitions<Partition>,
    hasher: ahash::RandomState,
    config: KvConfig,
    /// Bytes accounted to items across all partitions, checked against the memory limit.
    /// Written by every store on every core: padded, so the fields every read uses (the
    /// hasher keys, `flush_at`) do not share its cache line.
    used: koshka_engine::Padded<AtomicUsize>,
    /// Next partition to free memory in when the written one has nothing left (cache mode).
    evict_cursor: AtomicUsize,
    flush_at: AtomicU32,
    evictions: AtomicU64,
    expired: AtomicU64,
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kv")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Converts a memcached exptime to an absolute unix time (0 = never; in the past = expired).
#[must_use]
pub fn absolute_exptime(exptime: i64, now: u32) -> u32 {
    match exptime {
        0 => 0,
        e if e < 0 => 1,
        e if e <= i64::from(koshka_limits::RELATIVE_EXPIRY_SECONDS_MAX) => {
            u32::try_from(i64::from(now) + e).unwrap_or(u32::MAX)
        }
        e => u32::try_from(e).unwrap_or(u32::MAX),
    }
}

/// The value as an unsigned decimal number (trailing whitespace allowed, as memcached).
fn parse_number(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii_end();
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

impl Kv {
    /// A new, empty engine.
    #[must_use]
    pub fn new(config: KvConfig) -> Self {
        let partitions = Partitions::new(PARTITIONS, Partition::default);
        Self {
            partitions,
            hasher: ahash::RandomState::new(),
            config,
            used: koshka_engine::Padded(AtomicUsize::new(0)),
            evict_cursor: AtomicUsize::new(0),
            flush_at: AtomicU32::new(0),
            evictions: AtomicU64::new(0),
            expired: AtomicU64::new(0),
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &KvConfig {
        &self.config
    }

    fn partition_of(key: &[u8]) -> usize {
        crc32c::crc32c(key) as usize % PARTITIONS
    }

    /// Locks the partition of `key` for a read.
    fn lock(&self, key: &[u8]) -> (MutexGuard<'_, Partition>, u64) {
        let guard = self.partitions.lock(Self::partition_of(key));
        (guard, self.hasher.hash_one(key))
    }

    /// Locks the partition of `key` for an update.
    fn lock_for_update(&self, key: &[u8]) -> (Locked<'_, Partition>, u64) {
        let locked = self.partitions.lock_one(Self::partition_of(key));
        (locked, self.hasher.hash_one(key))
    }

    fn is_live(part: &Partition, meta: &ItemMeta, now: u32) -> bool {
        is_live_at(meta, part.flush_cas, now)
    }

    /// Applies a delayed `flush_all` whose deadline has passed at `time`: every item written
    /// to this partition so far (cas at or below the counter) becomes invalid. Called before
    /// every access, with the log time for writes and replay, so live and replayed state agree.
    fn due_flush(&self, part: &mut Partition, time: u32) {
        let at = self.flush_at.load(Ordering::Relaxed);
        if at != 0 && time >= at && part.flush_seen < at {
            part.flush_cas = part.cas_counter & item::CAS_MAX;
            part.flush_seen = at;
            // Every item written so far is now dead: let the next sweep free them.
            note_expiry(part, 1);
        }
    }

    /// Finds a live item, removing it lazily if it expired.
    fn find_live<'p>(
        &self,
        part: &'p mut Partition,
        hash: u64,
        key: &[u8],
        now: u32,
    ) -> Option<&'p mut Item> {
        self.due_flush(part, now);
        let flush_cas = part.flush_cas;
        // One probe: the entry both answers and, if expired, removes.
        let entry = part.table.find_entry(hash, |item| item.key() == key).ok()?;
        let meta = entry.get().meta();
        if is_live_at(&meta, flush_cas, now) {
            return Some(entry.into_mut());
        }
        let (item, _) = entry.remove();
        self.account_out(&mut part.usage, &item, Removal::Expired);
        None
    }

    /// Reads an item under its partition lock at log time `now`: `f` receives the live item,
    /// or `None`. In cache mode a hit marks the item recently used.
    pub fn read_at<R>(&self, key: &[u8], now: u32, f: impl FnOnce(Option<&Item>) -> R) -> R {
        let (mut part, hash) = self.lock(key);
        let cache = self.config.mode == Mode::Cache;
        match self.find_live(&mut part, hash, key, now) {
            Some(item) => {
                if cache {
                    item.touch_referenced();
                }
                f(Some(item))
            }
            None => f(None),
        }
    }

    /// Reads an item under its partition lock at the wall-clock time (tests and tools; the
    /// server reads at log time through [`Engine::execute`]).
    pub fn read<R>(&self, key: &[u8], f: impl FnOnce(Option<&Item>) -> R) -> R {
        self.read_at(key, koshka_engine::unix_now(), f)
    }

    /// The one commit path ([`commit::commit`]) with kv's apply function.
    fn log_apply(
        &self,
        locked: &mut Locked<'_, Partition>,
        record: &Record<'_>,
        journal: &dyn Journal,
    ) -> Result<u64> {
        let appended = commit::commit(journal, locked, record, |r, l, time| {
            self.apply_record(r, l, time)
        })?;
        Ok(appended.pos)
    }

    /// Applies one record to the locked partitions it is new to: the apply function shared by
    /// live updates and replay. Cannot fail.
    fn apply_record(&self, record: &Record<'_>, locked: &mut Locked<'_, Partition>, time: u32) {
        match *record {
            Record::Flush { at } if at != 0 => self.flush_at.store(at, Ordering::Relaxed),
            Record::Flush { .. } => locked.fresh_all().for_each(|part| self.clear(part)),
            _ => {
                let Some(key) = record.key() else {
                    unreachable!("every record but flush names a key")
                };
                if let Some(part) = locked.fresh(Self::partition_of(key)) {
                    self.due_flush(part, time);
                    let hash = self.hasher.hash_one(key);
                    self.apply_to(part, hash, record, live_mode(self.config.mode));
                }
            }
        }
    }

    /// Applies one keyed record to a partition. `live` enables eviction bookkeeping.
    fn apply_to(&self, part: &mut Partition, hash: u64, record: &Record<'_>, live: bool) {
        match *record {
            Record::Set {
                key,
                flags,
                exptime,
                value,
            } => {
                let meta = ItemMeta {
                    flags,
                    exptime,
                    cas: 0,
                };
                self.insert(part, hash, Item::new(key, &[value], meta), live);
            }
            Record::Delete { key } => {
                if let Ok(entry) = part.table.find_entry(hash, |item| item.key() == key) {
                    let (item, _) = entry.remove();
                    self.account_out(&mut part.usage, &item, Removal::Deleted);
                }
            }
            Record::Concat { key, data, append } => {
                let Some(old) = part.table.find(hash, |item| item.key() == key) else {
                    return;
                };
                let meta = old.meta();
                let value = old.value();
                let parts: [&[u8]; 2] = if append { [value, data] } else { [data, value] };
                let item = Item::new(key, &parts, meta);
                self.insert(part, hash, item, live);
            }
            Record::Touch { key, exptime } => {
                if let Some(item) = part.table.find_mut(hash, |item| item.key() == key) {
                    item.set_exptime(exptime);
                    note_expiry(part, exptime);
                }
            }
            Record::Number { key, value } => {
                let Some(old) = part.table.find(hash, |item| item.key() == key) else {
                    return;
                };
                let mut digits = itoa::Buffer::new();
                let item = Item::new(key, &[digits.format(value).as_bytes()], old.meta());
                self.insert(part, hash, item, live);
            }
            Record::Flush { .. } => unreachable!("flush is applied across partitions"),
        }
    }

    /// Inserts or replaces an item, giving it the next cas unique.
    fn insert(&self, part: &mut Partition, hash: u64, mut item: Item, live: bool) {
        part.cas_counter += 1;
        item.set_cas(part.cas_counter);
        self.account_in(part, &item);
        let key_hasher = |i: &Item| self.hasher.hash_one(i.key());
        match part.table.find_entry(hash, |old| old.key() == item.key()) {
            Ok(mut entry) => {
                let old = std::mem::replace(entry.get_mut(), item);
                self.account_out(&mut part.usage, &old, Removal::Deleted);
            }
            Err(_) => {
                part.table.insert_unique(hash, item, key_hasher);
                if live && self.config.mode == Mode::Cache {
                    part.clock.push_back(hash);
                }
            }
        }
        // Counted per partition: a shared atomic here would bounce between the cores on
        // every set.
        part.stored += 1;
    }

    fn check_value_size(&self, len: usize) -> Result<()> {
        if len > self.config.value_size_max {
            return Err(Error::Server("object too large for cache".into()));
        }
        Ok(())
    }

    /// Runs a store command (`set`, `add`, `replace`, `append`, `prepend`, `cas`).
    ///
    /// # Errors
    /// [`Error::OutOfMemory`], [`Error::Journal`], or a too-large appended value.
    #[expect(clippy::too_many_arguments)]
    pub fn store(
        &self,
        mode: StoreMode,
        key: &[u8],
        flags: u32,
        exptime: i64,
        cas_unique: u64,
        data: &[u8],
        journal: &dyn Journal,
    ) -> Result<Written<Stored>> {
        use StoreMode as M;
        let now = journal.now();
        let (mut locked, hash) = self.lock_for_update(key);
        let part = locked.only();
        let existing = self.find_live(part, hash, key, now).map(|item| {
            let meta = item.meta();
            (meta.cas, item.value().len(), item.footprint())
        });
        let refuse = |outcome| Ok(Written::nothing(Stored { outcome, cas: 0 }));
        let record = match (mode, existing) {
            (M::Add, Some(_)) | (M::Replace | M::Append | M::Prepend, None) => {
                return refuse(StoreOutcome::NotStored)
            }
            (M::Cas, None) => return refuse(StoreOutcome::NotFound),
            (M::Cas, Some((cas, _, _))) if cas != cas_unique => {
                return refuse(StoreOutcome::Exists)
            }
            (M::Append | M::Prepend, Some((_, len, _))) => {
                self.check_value_size(len + data.len())?;
                Record::Concat {
                    key,
                    data,
                    append: mode == M::Append,
                }
            }
            _ => {
                let exptime = absolute_exptime(exptime, now);
                Record::Set {
                    key,
                    flags,
                    exptime,
                    value: data,
                }
            }
        };
        let value_len = match (&record, existing) {
            (Record::Concat { .. }, Some((_, len, _))) => len + data.len(),
            _ => data.len(),
        };
        let freed = existing.map_or(0, |(_, _, footprint)| footprint);
        let needed = item::footprint_of(key.len(), value_len);
        self.reserve(part, hash, needed, freed)?;
        let pos = self.log_apply(&mut locked, &record, journal)?;
        let cas = locked.only().cas_counter & item::CAS_MAX;
        Ok(Written {
            outcome: Stored {
                outcome: StoreOutcome::Stored,
                cas,
            },
            pos,
        })
    }

    /// Deletes an item; `cas` (meta `md C…`) must match if given.
    /// Returns `Some(true)` deleted, `Some(false)` not found, `None` cas mismatch.
    ///
    /// # Errors
    /// [`Error::Journal`].
    pub fn delete(
        &self,
        key: &[u8],
        cas: Option<u64>,
        journal: &dyn Journal,
    ) -> Result<Written<Option<bool>>> {
        let now = journal.now();
        let (mut locked, hash) = self.lock_for_update(key);
        let Some(item) = self.find_live(locked.only(), hash, key, now) else {
            return Ok(Written::nothing(Some(false)));
        };
        if cas.is_some_and(|cas| cas != item.meta().cas) {
            return Ok(Written::nothing(None));
        }
        let pos = self.log_apply(&mut locked, &Record::Delete { key }, journal)?;
        Ok(Written {
            outcome: Some(true),
            pos,
        })
    }

    /// Changes an item's expiry. Returns whether it existed.
    ///
    /// # Errors
    /// [`Error::Journal`].
    pub fn touch(&self, key: &[u8], exptime: i64, journal: &dyn Journal) -> Result<Written<bool>> {
        let now = journal.now();
        let (mut locked, hash) = self.lock_for_update(key);
        if self.find_live(locked.only(), hash, key, now).is_none() {
            return Ok(Written::nothing(false));
        }
        let record = Record::Touch {
            key,
            exptime: absolute_exptime(exptime, now),
        };
        let pos = self.log_apply(&mut locked, &record, journal)?;
        Ok(Written { outcome: true, pos })
    }

    /// Touches then reads (`gat`, `mg T…`): `f` receives the live item after the touch.
    ///
    /// # Errors
    /// [`Error::Journal`].
    pub fn touch_read<R>(
        &self,
        key: &[u8],
        exptime: i64,
        journal: &dyn Journal,
        f: impl FnOnce(Option<&Item>) -> R,
    ) -> Result<Written<R>> {
        let now = journal.now();
        let (mut locked, hash) = self.lock_for_update(key);
        if self.find_live(locked.only(), hash, key, now).is_none() {
            return Ok(Written::nothing(f(None)));
        }
        let record = Record::Touch {
            key,
            exptime: absolute_exptime(exptime, now),
        };
        let pos = self.log_apply(&mut locked, &record, journal)?;
        let item = locked.only().table.find(hash, |item| item.key() == key);
        Ok(Written {
            outcome: f(item),
            pos,
        })
    }

    /// incr/decr: incr wraps at 2^64, decr floors at 0, as memcached.
    ///
    /// # Errors
    /// [`Error::Journal`], [`Error::OutOfMemory`].
    pub fn arith(
        &self,
        key: &[u8],
        incr: bool,
        delta: u64,
        options: ArithOptions,
        journal: &dyn Journal,
    ) -> Result<Written<ArithOutcome>> {
        let now = journal.now();
        let (mut locked, hash) = self.lock_for_update(key);
        let current = self.find_live(locked.only(), hash, key, now).map(|item| {
            let meta = item.meta();
            (meta.cas, parse_number(item.value()))
        });
        let (cas, value) = match current {
            None => {
                let Some(vivify) = options.vivify else {
                    return Ok(Written::nothing(ArithOutcome::NotFound));
                };
                let mut digits = itoa::Buffer::new();
                let text = digits.format(options.initial).as_bytes().to_vec();
                let exptime = absolute_exptime(vivify, now);
                let record = Record::Set {
                    key,
                    flags: 0,
                    exptime,
                    value: &text,
                };
                let needed = item::footprint_of(key.len(), text.len());
                self.reserve(locked.only(), hash, needed, 0)?;
                let pos = self.log_apply(&mut locked, &record, journal)?;
                let cas = locked.only().cas_counter & item::CAS_MAX;
                return Ok(Written {
                    outcome: ArithOutcome::Value {
                        value: options.initial,
                        cas,
                    },
                    pos,
                });
            }
            Some((_, None)) => return Ok(Written::nothing(ArithOutcome::NonNumeric)),
            Some((cas, Some(value))) => (cas, value),
        };
        if options.cas.is_some_and(|expected| expected != cas) {
            return Ok(Written::nothing(ArithOutcome::Exists));
        }
        let value = if incr {
            value.wrapping_add(delta)
        } else {
            value.saturating_sub(delta)
        };
        let mut pos = self.log_apply(&mut locked, &Record::Number { key, value }, journal)?;
        if let Some(exptime) = options.exptime {
            let record = Record::Touch {
                key,
                exptime: absolute_exptime(exptime, now),
            };
            pos = self.log_apply(&mut locked, &record, journal)?;
        }
        let cas = locked.only().cas_counter & item::CAS_MAX;
        Ok(Written {
            outcome: ArithOutcome::Value { value, cas },
            pos,
        })
    }

    /// `flush_all [delay]`: now (`delay <= 0`) empties every partition; later invalidates
    /// every item last updated before the deadline, once the deadline passes.
    ///
    /// # Errors
    /// [`Error::Journal`].
    pub fn flush_all(&self, delay: i64, journal: &dyn Journal) -> Result<u64> {
        if delay > 0 {
            // A deadline is engine-wide state: no partition is locked.
            let at = absolute_exptime(delay, journal.now());
            let mut none = self.partitions.lock_set(&[]);
            return self.log_apply(&mut none, &Record::Flush { at }, journal);
        }
        // Lock every partition in index order so the single record is ordered against every
        // partition's other records.
        let mut all = self.partitions.lock_all();
        self.log_apply(&mut all, &Record::Flush { at: 0 }, journal)
    }

    /// Collects up to [`PREFIX_SCAN_ITEMS_MAX`] live items whose key starts with `prefix`, as
    /// `(key, flags, value)`, sorted by key.
    #[must_use]
    pub fn prefix_scan(&self, prefix: &[u8], now: u32) -> Vec<(Vec<u8>, u32, Vec<u8>)> {
        let mut found = Vec::new();
        for part in self.partitions.iter() {
            let part = part.lock();
            for item in &part.table {
                if found.len() == PREFIX_SCAN_ITEMS_MAX {
                    break;
                }
                let meta = item.meta();
                if item.key().starts_with(prefix) && Self::is_live(&part, &meta, now) {
                    found.push((item.key().to_vec(), meta.flags, item.value().to_vec()));
                }
            }
        }
        found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        found
    }

    /// Number of live-or-not-yet-reclaimed items and their bytes.
    #[must_use]
    pub fn usage(&self) -> (u64, u64) {
        self.partitions.iter().fold((0, 0), |(items, bytes), part| {
            let part = part.lock();
            (
                items + part.table.len() as u64,
                bytes + part.usage.bytes as u64,
            )
        })
    }

    fn replay(&self, record: &Record<'_>, ctx: ApplyCtx) {
        let mut locked = match (record, record.key()) {
            (Record::Flush { at: 0 }, _) => self.partitions.lock_all(),
            (_, Some(key)) => self.partitions.lock_one(Self::partition_of(key)),
            (_, None) => self.partitions.lock_set(&[]),
        };
        commit::replay(&mut locked, record, ctx, |r, l, time| {
            self.apply_record(r, l, time);
        });
    }

    /// `get`: a key ending in `*` is a prefix scan, anything else one item.
    fn get(&self, key: &[u8], cx: &mut Cx<'_>) -> Outcome {
        let now = cx.now;
        if key.len() > 1 && key.ends_with(b"*") {
            let found = self.prefix_scan(&key[..key.len() - 1], now);
            for (key, flags, value) in &found {
                cx.reply.item(&ItemRef {
                    key,
                    flags: *flags,
                    cas: 0,
                    exptime: 0,
                    value,
                });
            }
            return if found.is_empty() {
                Outcome::Miss
            } else {
                Outcome::Hit
            };
        }
        let reply = &mut *cx.reply;
        self.read_at(key, now, |item| {
            item.map_or(Outcome::Miss, |item| {
                reply.item(&item_ref(item));
                Outcome::Hit
            })
        })
    }
}

/// An item as the engine seam hands it out.
fn item_ref(item: &Item) -> ItemRef<'_> {
    let meta = item.meta();
    ItemRef {
        key: item.key(),
        flags: meta.flags,
        cas: meta.cas,
        exptime: meta.exptime,
        value: item.value(),
    }
}

impl Engine for Kv {
    fn name(&self) -> &'static str {
        "kv"
    }

    fn item_model(&self) -> bool {
        true
    }

    fn execute(&self, request: &Request<'_>, cx: &mut Cx<'_>) -> Result<Outcome> {
        let journal = cx.journal;
        Ok(match *request {
            Request::Get { key } => self.get(key, cx),
            Request::Touch {
                key,
                exptime,
                read: false,
            } => match self.touch(key, exptime, journal)?.outcome {
                true => Outcome::Touched,
                false => Outcome::Miss,
            },
            Request::Touch { key, exptime, .. } => {
                let reply = &mut *cx.reply;
                let hit = self.touch_read(key, exptime, journal, |item| {
                    item.inspect(|item| reply.item(&item_ref(item))).is_some()
                })?;
                if hit.outcome {
                    Outcome::Hit
                } else {
                    Outcome::Miss
                }
            }
            Request::Store {
                mode,
                key,
                flags,
                exptime,
                cas,
                data,
            } => {
                let stored = self.store(mode, key, flags, exptime, cas, data, journal)?;
                match stored.outcome.outcome {
                    StoreOutcome::Stored => Outcome::Stored {
                        cas: stored.outcome.cas,
                    },
                    StoreOutcome::NotStored => Outcome::NotStored,
                    StoreOutcome::Exists => Outcome::Exists,
                    StoreOutcome::NotFound => Outcome::Miss,
                }
            }
            Request::Delete { key, cas } => match Kv::delete(self, key, cas, journal)?.outcome {
                Some(true) => Outcome::Deleted,
                Some(false) => Outcome::Miss,
                None => Outcome::Exists,
            },
            Request::Arith {
                key,
                incr,
                delta,
                options,
            } => match self.arith(key, incr, delta, options, journal)?.outcome {
                ArithOutcome::Value { value, cas } => {
                    let exptime = self.read_at(key, journal.now(), |item| {
                        item.map_or(0, |i| i.meta().exptime)
                    });
                    Outcome::Number {
                        value,
                        cas,
                        exptime,
                    }
                }
                ArithOutcome::NotFound => Outcome::Miss,
                ArithOutcome::Exists => Outcome::Exists,
                ArithOutcome::NonNumeric => Outcome::NonNumeric,
            },
            Request::FlushAll { delay } => {
                self.flush_all(delay, journal)?;
                Outcome::Done
            }
        })
    }

    fn prefetch(&self, keys: &[&[u8]]) {
        // The partition tables' control bytes and slots are small and mostly cached; the miss
        // that dominates a lookup is on the item itself (comparing its key), so find each
        // key's candidate by its hash tag alone and prefetch it. The reads then find the items
        // in cache. A wrong candidate (a tag collision) only wastes a prefetch.
        for key in keys {
            if key.ends_with(b"*") {
                continue;
            }
            let (part, hash) = self.lock(key);
            if let Some(item) = part.table.iter_hash(hash).next() {
                item.prefetch();
            }
        }
    }

    fn apply(&self, record_type: u16, payload: &[u8], ctx: ApplyCtx) -> Result<()> {
        let record = Record::decode(record_type, payload)?;
        self.replay(&record, ctx);
        Ok(())
    }

    /// A keyed record touches its key's partition only: its apply reads the delayed-flush
    /// deadline (written only by FLUSH records, which are barriers) and adds to the memory
    /// and event counters (sums, whatever the order). FLUSH touches every partition or none.
    fn replay_partition(&self, record_type: u16, payload: &[u8]) -> Option<usize> {
        match Record::decode(record_type, payload).ok()? {
            Record::Flush { .. } => None,
            record => record.key().map(Self::partition_of),
        }
    }

    fn write_snapshot(&self, out: &mut dyn Write) -> Result<()> {
        out.write_all(SNAPSHOT_MAGIC)?;
        out.write_all(&(PARTITIONS as u32).to_le_bytes())?;
        out.write_all(&self.flush_at.load(Ordering::Relaxed).to_le_bytes())?;
        let mut buf = Vec::new();
        for part in self.partitions.iter() {
            // Room for a partition a quarter larger than the last one, allocated before the
            // lock is taken rather than grown while writers wait.
            let last = buf.len();
            buf.clear();
            buf.reserve(last + last / 4);
            {
                // Copy one partition under its lock; write it to disk without the lock.
                let part = part.lock();
                buf.extend_from_slice(&part.pos.to_le_bytes());
                buf.extend_from_slice(&part.cas_counter.to_le_bytes());
                buf.extend_from_slice(&part.flush_cas.to_le_bytes());
                buf.extend_from_slice(&part.flush_seen.to_le_bytes());
                buf.extend_from_slice(&(part.table.len() as u64).to_le_bytes());
                // The copy waits on memory once per item (items are scattered over the heap),
                // and writers of this partition wait for the copy: prefetch a few items ahead
                // so the misses overlap and the lock is held for less time.
                let mut ahead = part.table.iter();
                ahead
                    .by_ref()
                    .take(SNAPSHOT_PREFETCH_ITEMS)
                    .for_each(Item::prefetch);
                for item in &part.table {
                    if let Some(next) = ahead.next() {
                        next.prefetch();
                    }
                    let raw = item.raw();
                    buf.extend_from_slice(&u32::try_from(raw.len()).unwrap_or(0).to_le_bytes());
                    buf.extend_from_slice(raw);
                }
            }
            out.write_all(&buf)?;
        }
        Ok(())
    }

    fn load_snapshot(&self, input: &mut dyn Read) -> Result<()> {
        let corrupt = |reason: &str| Error::Corrupt {
            what: "kv snapshot",
            reason: reason.into(),
        };
        let mut magic = [0; 4];
        input.read_exact(&mut magic)?;
        if &magic != SNAPSHOT_MAGIC {
            return Err(corrupt("bad magic"));
        }
        if read_u32(input)? as usize != PARTITIONS {
            return Err(corrupt("partition count differs"));
        }
        self.flush_at.store(read_u32(input)?, Ordering::Relaxed);
        for (index, part) in self.partitions.iter().enumerate() {
            let mut part = part.lock();
            part.pos = read_u64(input)?;
            part.cas_counter = read_u64(input)?;
            part.flush_cas = read_u64(input)?;
            part.flush_seen = read_u32(input)?;
            let count = read_u64(input)?;
            for _ in 0..count {
                let len = read_u32(input)? as usize;
                if len > koshka_limits::VALUE_SIZE_MAX + 1024 {
                    return Err(corrupt("item too large"));
                }
                let mut raw = vec![0; len];
                input.read_exact(&mut raw)?;
                let item = Item::from_raw(&raw).ok_or_else(|| corrupt("bad item layout"))?;
                if Self::partition_of(item.key()) != index {
                    return Err(corrupt("item in the wrong partition"));
                }
                let hash = self.hasher.hash_one(item.key());
                if part
                    .table
                    .find(hash, |old| old.key() == item.key())
                    .is_some()
                {
                    return Err(corrupt("a key appears twice"));
                }
                self.account_in(&mut part, &item);
                let hasher = &self.hasher;
                part.table
                    .insert_unique(hash, item, |i| hasher.hash_one(i.key()));
            }
        }
        Ok(())
    }

    fn stats_group(&self, group: &str) -> Option<Vec<Stat>> {
        memcached_stats::group(self, group)
    }

    fn reset_stats(&self) {
        Kv::reset_stats(self);
    }

    fn stats(&self) -> Vec<Stat> {
        let (items, bytes) = self.usage();
        let (reclaimed, crawler_reclaimed) =
            self.class_stats()
                .iter()
                .fold((0, 0), |(all, swept), class| {
                    (
                        all + class.counts.reclaimed,
                        swept + class.counts.crawler_reclaimed,
                    )
                });
        vec![
            ("curr_items".into(), items.to_string()),
            ("bytes".into(), bytes.to_string()),
            (
                "total_items".into(),
                self.partitions
                    .iter()
                    .map(|p| p.lock().stored)
                    .sum::<u64>()
                    .to_string(),
            ),
            (
                "evictions".into(),
                self.evictions.load(Ordering::Relaxed).to_string(),
            ),
            (
                "expired_unfetched".into(),
                self.expired.load(Ordering::Relaxed).to_string(),
            ),
            ("reclaimed".into(), reclaimed.to_string()),
            ("crawler_reclaimed".into(), crawler_reclaimed.to_string()),
            (
                "limit_maxbytes".into(),
                self.config.memory_limit.to_string(),
            ),
            ("kv_partitions".into(), PARTITIONS.to_string()),
            (
                "kv_mode".into(),
                match self.config.mode {
                    Mode::Persistent => "persistent".into(),
                    Mode::Cache => "cache".into(),
                },
            ),
        ]
    }
}

/// Whether an item is visible at `now`: not expired and not older than a delayed flush.
fn is_live_at(meta: &ItemMeta, flush_cas: u64, now: u32) -> bool {
    !(meta.exptime != 0 && meta.exptime <= now) && meta.cas > flush_cas
}

/// Whether live applies maintain the eviction clock.
fn live_mode(mode: Mode) -> bool {
    mode == Mode::Cache
}

fn read_u32(input: &mut dyn Read) -> Result<u32> {
    let mut b = [0; 4];
    input.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(input: &mut dyn Read) -> Result<u64> {
    let mut b = [0; 8];
    input.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

#[cfg(test)]
mod tests;
