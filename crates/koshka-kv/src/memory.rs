//! Memory: one limit for the whole engine, what each partition holds, and the ways memory is
//! freed (expired items swept, least recently used items evicted in cache mode).
//!
//! Every byte an item accounts for ([`Item::footprint`]) is counted twice: in its partition's
//! [`Usage`] (under the partition lock, by size class for `stats slabs`/`stats items`) and in
//! the engine-wide `used` atomic, which the memory limit is checked against. So any value
//! that fits the node's limit can be stored, whichever partition its key falls in. The limit
//! is soft by at most one item per worker thread: two writers may both see room for their
//! item before either is counted.
//!
//! Making room ([`Kv::reserve`]): expired items go first (the written partition, then the
//! others); then, in cache mode only, CLOCK eviction in the written partition and, if that
//! partition has nothing left to evict, in the others in turn. Partitions other than the
//! written one are only `try_lock`ed, so two writers evicting for each other never deadlock.
//!
//! A background thread ([`Kv::spawn_sweeper`]) frees expired items every
//! [`SWEEP_INTERVAL`], as memcached's LRU crawler does, so their memory does not wait for an
//! access to the key.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use koshka_engine::{unix_now, Error, Result};

use crate::classes::{self, ClassCounts, ClassStats, CLASSES};
use crate::item::Item;
use crate::{is_live_at, Kv, Mode, Partition, PARTITIONS};

/// How often the background sweep frees expired items. memcached's LRU crawler does the same
/// job; one second keeps expired items from holding memory long, and a tick costs one lock per
/// partition plus one walk of each partition whose earliest expiry has passed.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The eviction clock of a partition is rebuilt from its table once it holds this many more
/// entries than twice the item count: deleted and replaced items leave their hash behind.
const CLOCK_SLACK: usize = 64;

/// What one partition holds: bytes in total and counts per size class.
#[derive(Debug, Clone)]
pub(crate) struct Usage {
    /// Footprint of every item in the partition.
    pub(crate) bytes: usize,
    /// Counts per memcached size class.
    pub(crate) classes: [ClassCounts; CLASSES],
}

impl Default for Usage {
    fn default() -> Self {
        Self {
            bytes: 0,
            classes: [ClassCounts::ZERO; CLASSES],
        }
    }
}

/// Why an item leaves a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Removal {
    /// Deleted, or replaced by a newer version of the same key.
    Deleted,
    /// Found expired (or flushed) by an access, or while making room.
    Expired,
    /// Found expired (or flushed) by the background sweep.
    Swept,
    /// Evicted to make room (cache mode).
    Evicted,
}

impl Usage {
    /// Counts an item in; returns its footprint.
    fn add(&mut self, item: &Item) -> usize {
        let footprint = item.footprint();
        let counts = &mut self.classes[classes::class_index(footprint)];
        counts.items += 1;
        counts.bytes += footprint as u64;
        counts.chunks += classes::chunks_of(footprint);
        self.bytes += footprint;
        footprint
    }

    /// Counts an item out; returns its footprint.
    fn remove(&mut self, item: &Item, removal: Removal) -> usize {
        let footprint = item.footprint();
        let counts = &mut self.classes[classes::class_index(footprint)];
        counts.items -= 1;
        counts.bytes -= footprint as u64;
        counts.chunks -= classes::chunks_of(footprint);
        match removal {
            Removal::Deleted => {}
            Removal::Expired => counts.reclaimed += 1,
            Removal::Swept => {
                counts.reclaimed += 1;
                counts.crawler_reclaimed += 1;
            }
            Removal::Evicted => {
                counts.evicted += 1;
                if item.meta().exptime != 0 {
                    counts.evicted_nonzero += 1;
                }
            }
        }
        self.bytes -= footprint;
        footprint
    }

    /// Forgets every item (`flush_all`), keeping the event counters.
    fn clear(&mut self) {
        for counts in &mut self.classes {
            *counts = ClassCounts {
                items: 0,
                bytes: 0,
                chunks: 0,
                ..*counts
            };
        }
        self.bytes = 0;
    }
}

/// Lowers a partition's earliest expiry to `exptime` (0 = never expires).
pub(crate) fn note_expiry(part: &mut Partition, exptime: u32) {
    if exptime != 0 && (part.next_expiry == 0 || exptime < part.next_expiry) {
        part.next_expiry = exptime;
    }
}

impl Kv {
    /// Accounts for an item entering `part`.
    pub(crate) fn account_in(&self, part: &mut Partition, item: &Item) {
        let footprint = part.usage.add(item);
        self.used.fetch_add(footprint, Ordering::Relaxed);
        note_expiry(part, item.meta().exptime);
    }

    /// Accounts for an item leaving a partition with this usage (the caller drops it).
    pub(crate) fn account_out(&self, usage: &mut Usage, item: &Item, removal: Removal) {
        let footprint = usage.remove(item, removal);
        self.used.fetch_sub(footprint, Ordering::Relaxed);
        match removal {
            Removal::Expired | Removal::Swept => {
                self.expired.fetch_add(1, Ordering::Relaxed);
            }
            Removal::Evicted => {
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
            Removal::Deleted => {}
        }
    }

    /// Empties a partition (`flush_all`).
    pub(crate) fn clear(&self, part: &mut Partition) {
        self.used.fetch_sub(part.usage.bytes, Ordering::Relaxed);
        part.usage.clear();
        part.table.clear();
        part.clock.clear();
        part.next_expiry = 0;
    }

    /// Makes room for an item of `needed` bytes that replaces `freed` bytes in `part` (whose
    /// lock the caller holds); `keep` is the hash of the key being written, whose old item must
    /// survive until it is replaced (append and prepend build on it).
    ///
    /// # Errors
    /// [`Error::OutOfMemory`]: persistent mode and no expired items to free, or cache mode and
    /// nothing left to evict, or an item larger than the whole limit.
    pub(crate) fn reserve(
        &self,
        part: &mut Partition,
        keep: u64,
        needed: usize,
        freed: usize,
    ) -> Result<()> {
        let limit = self.config.memory_limit;
        let fits = || self.used.load(Ordering::Relaxed).saturating_sub(freed) + needed <= limit;
        if fits() {
            return Ok(());
        }
        if needed <= limit {
            let now = unix_now();
            self.sweep(part, now, Removal::Expired);
            if fits() {
                return Ok(());
            }
            let evict = self.config.mode == Mode::Cache;
            if evict {
                self.evict(part, Some(keep), &fits);
                if fits() {
                    return Ok(());
                }
            }
            if self.free_elsewhere(now, evict, &fits) {
                return Ok(());
            }
        }
        part.usage.classes[classes::class_index(needed)].outofmemory += 1;
        Err(Error::OutOfMemory)
    }

    /// CLOCK eviction in one partition until `fits()` or its clock is exhausted; each queued
    /// hash gets a second chance if its item was referenced.
    fn evict(&self, part: &mut Partition, keep: Option<u64>, fits: &impl Fn() -> bool) {
        let mut budget = part.clock.len() * 2 + 2;
        while !fits() && budget > 0 {
            budget -= 1;
            let Some(hash) = part.clock.pop_front() else {
                break;
            };
            if keep == Some(hash) {
                part.clock.push_back(hash);
                continue;
            }
            let hasher = &self.hasher;
            let Ok(mut entry) = part
                .table
                .find_entry(hash, |item| hasher.hash_one(item.key()) == hash)
            else {
                continue; // Stale: the item was deleted or replaced.
            };
            if entry.get_mut().take_referenced() {
                part.clock.push_back(hash);
                continue;
            }
            let (item, _) = entry.remove();
            self.account_out(&mut part.usage, &item, Removal::Evicted);
        }
    }

    /// Frees memory in the other partitions, in turn from a shared cursor so the load spreads:
    /// expired items, and (`evict`) least recently used ones. A partition another thread holds,
    /// including the caller's own, is skipped rather than waited for.
    fn free_elsewhere(&self, now: u32, evict: bool, fits: &impl Fn() -> bool) -> bool {
        for _ in 0..PARTITIONS {
            let index = self.evict_cursor.fetch_add(1, Ordering::Relaxed) % PARTITIONS;
            let Some(mut other) = self.partitions.try_lock(index) else {
                continue;
            };
            self.sweep(&mut other, now, Removal::Expired);
            if evict && !fits() {
                self.evict(&mut other, None, fits);
            }
            if fits() {
                return true;
            }
        }
        false
    }

    /// Frees every expired or flushed item of a partition whose earliest expiry has passed,
    /// and recomputes that earliest expiry. Returns how many items were freed.
    fn sweep(&self, part: &mut Partition, now: u32, removal: Removal) -> usize {
        self.due_flush(part, now);
        if part.next_expiry == 0 || part.next_expiry > now {
            return 0;
        }
        let flush_cas = part.flush_cas;
        let mut next_expiry = 0;
        let mut freed_items = 0;
        let mut freed_bytes = 0;
        let usage = &mut part.usage;
        part.table.retain(|item| {
            let meta = item.meta();
            if is_live_at(&meta, flush_cas, now) {
                if meta.exptime != 0 && (next_expiry == 0 || meta.exptime < next_expiry) {
                    next_expiry = meta.exptime;
                }
                return true;
            }
            freed_bytes += usage.remove(item, removal);
            freed_items += 1;
            false
        });
        part.next_expiry = next_expiry;
        self.used.fetch_sub(freed_bytes, Ordering::Relaxed);
        self.expired
            .fetch_add(freed_items as u64, Ordering::Relaxed);
        freed_items
    }

    /// Rebuilds the eviction clock of a partition from its table when stale hashes of deleted
    /// and replaced items have piled up (the order is lost; CLOCK only approximates LRU).
    fn compact_clock(&self, part: &mut Partition) {
        if part.clock.len() <= 2 * part.table.len() + CLOCK_SLACK {
            return;
        }
        let hasher = &self.hasher;
        let clock = part
            .table
            .iter()
            .map(|item| hasher.hash_one(item.key()))
            .collect();
        part.clock = clock;
    }

    /// One pass of the background sweep at `now`: frees expired items in every partition whose
    /// earliest expiry has passed and compacts eviction clocks. Returns how many items were
    /// freed.
    pub fn reclaim_expired(&self, now: u32) -> usize {
        let mut freed = 0;
        for part in self.partitions.iter() {
            let mut part = part.lock();
            freed += self.sweep(&mut part, now, Removal::Swept);
            self.compact_clock(&mut part);
        }
        freed
    }

    /// Starts the background sweep: a thread that calls [`Kv::reclaim_expired`] every
    /// [`SWEEP_INTERVAL`] and ends once the engine is dropped.
    ///
    /// # Errors
    /// The thread could not be started.
    pub fn spawn_sweeper(kv: &Arc<Kv>) -> std::io::Result<()> {
        let kv = Arc::downgrade(kv);
        std::thread::Builder::new()
            .name("koshka-kv-sweep".into())
            .spawn(move || loop {
                std::thread::sleep(SWEEP_INTERVAL);
                let Some(kv) = kv.upgrade() else {
                    return;
                };
                kv.reclaim_expired(unix_now());
            })?;
        Ok(())
    }

    /// Bytes accounted to items across the engine: what the memory limit is checked against.
    #[must_use]
    pub fn used_bytes(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Every size class with its counts summed over the partitions.
    #[must_use]
    pub fn class_stats(&self) -> Vec<ClassStats> {
        let mut totals = [ClassCounts::ZERO; CLASSES];
        for part in self.partitions.iter() {
            let part = part.lock();
            for (total, counts) in totals.iter_mut().zip(&part.usage.classes) {
                total.add(counts);
            }
        }
        totals
            .iter()
            .enumerate()
            .map(|(index, counts)| ClassStats {
                id: index + 1,
                chunk_size: classes::CHUNK_SIZES[index],
                chunks_per_page: classes::chunks_per_page(index),
                counts: *counts,
            })
            .collect()
    }

    /// Items by footprint rounded up to a multiple of `bucket` bytes, as `(size, count)` sorted
    /// by size (`stats sizes`). Walks every item, one partition lock at a time.
    #[must_use]
    pub fn size_histogram(&self, bucket: usize) -> Vec<(usize, u64)> {
        let bucket = bucket.max(1);
        let mut sizes = std::collections::BTreeMap::new();
        for part in self.partitions.iter() {
            let part = part.lock();
            for item in &part.table {
                *sizes
                    .entry(item.footprint().next_multiple_of(bucket))
                    .or_insert(0) += 1;
            }
        }
        sizes.into_iter().collect()
    }

    /// Zeroes the event counters (`stats reset`): items stored, evictions, reclaims, refusals.
    /// What is stored now is kept.
    pub fn reset_stats(&self) {
        for part in self.partitions.iter() {
            let mut part = part.lock();
            part.stored = 0;
            for counts in &mut part.usage.classes {
                counts.reset_events();
            }
        }
        self.evictions.store(0, Ordering::Relaxed);
        self.expired.store(0, Ordering::Relaxed);
    }
}
