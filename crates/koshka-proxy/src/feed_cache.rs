//! The feed's in-proxy cache: viewers' friend lists, privacy answers and authors' newest
//! events, so that a feed read usually asks no node at all.
//!
//! Three bounded tables (`[feed]` settings, sizes counted in ids, answers and events):
//!
//! * **friend lists**: `friends<viewer>` from the friends cluster, and **follow lists**:
//!   `list<viewer>` from the lists cluster (the groups and people the viewer follows);
//! * **privacy answers**: whether `viewer` may see `author`'s events of type `t` (the friends
//!   engine's check, friend-of-a-friend step resolved);
//! * **author heads**: an author's newest [`HEAD_EVENTS`] events of every type (the news
//!   engine's raw query, masks and retention applied by the node), and whether that is all of
//!   them.
//!
//! **Invalidation** is by generation, as in the cache tier (`cache.rs`): every owner id has a
//! counter per family (friends, news, lists; one of [`GENERATIONS`] each, chosen by the id; a
//! collision only invalidates more), and the lists family has one more counter for writes that
//! change lists they do not name (`delete object<obj>`), which every follow list depends on. A write through this proxy to a friends or news cluster
//! bumps the counters of every owner it changes *after* the shard acknowledged it and
//! *before* the client gets the reply. An entry remembers the counters of everything it
//! depends on as they were *before* its data was asked of the nodes (a friend list: the
//! viewer; a follow list: the viewer and that counter in the lists family; a privacy answer:
//! viewer and author in the friends family; a head: the author in the news family), and is used only while they are unchanged. So a feed read that starts
//! after a write's reply never uses an entry filled from data older than that write.
//!
//! **TTL.** Writes that do not pass through this proxy (straight to a node, through another
//! proxy, a twin half landing on a retry, meta-protocol writes, retention expiring events) do
//! not bump counters: every entry is used for at most `cache_ttl_ms` after its data was asked
//! for, never later. `cache_ttl_ms = 0` turns the cache off.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::{Family, FeedSection};
use crate::feed::Event;

/// Generation counters per family (owners share them by `|id| mod GENERATIONS`).
pub const GENERATIONS: usize = 65_536;
/// Events kept per author head (a page of up to `HEAD_EVENTS - 1` events can be served from
/// heads alone).
pub const HEAD_EVENTS: u32 = 32;

/// Most authors of a feed served from heads: a feed of more (a hub's thousands of friends)
/// goes shard by shard, as its heads would crowd the table out and a cold fill asks one raw
/// query per author.
pub const HEADS_AUTHORS_MAX: usize = 1000;

/// Whether a page of `limit` events over `authors` authors may be served from heads.
#[must_use]
pub fn heads_serve(limit: u32, authors: usize) -> bool {
    limit < HEAD_EVENTS && authors <= HEADS_AUTHORS_MAX
}

/// An author's newest events (newest first).
#[derive(Debug)]
pub struct Head {
    /// At most [`HEAD_EVENTS`] events, newest first.
    pub events: Vec<Event>,
    /// The author has no events beyond these.
    pub complete: bool,
}

/// Counters of one table (and of invalidations).
#[derive(Debug, Default)]
pub struct CacheCounters {
    /// Lookups answered.
    pub hits: AtomicU64,
    /// Lookups not answered (absent, stale generation or past the TTL).
    pub misses: AtomicU64,
    /// Entries removed to stay within the size limit.
    pub evictions: AtomicU64,
    /// Owners whose entries a write through the proxy invalidated.
    pub invalidations: AtomicU64,
}

struct Entry<V> {
    value: V,
    stamp: [u64; 2],
    born: Instant,
    weight: usize,
}

struct Table<K, V> {
    map: HashMap<K, Entry<V>>,
    weight: usize,
    max: usize,
    ttl: Duration,
}

impl<K: Hash + Eq + Copy, V: Clone> Table<K, V> {
    fn new(max: usize, ttl: Duration) -> Self {
        Table {
            map: HashMap::new(),
            weight: 0,
            max,
            ttl,
        }
    }

    fn get(&mut self, key: &K, stamp: [u64; 2], now: Instant, ttl: Duration) -> Option<V> {
        let entry = self.map.get(key)?;
        if entry.stamp == stamp && now.saturating_duration_since(entry.born) < ttl {
            return Some(entry.value.clone());
        }
        let weight = entry.weight;
        self.map.remove(key);
        self.weight -= weight;
        None
    }

    /// Inserts; returns how many entries were evicted to make room.
    fn put(&mut self, key: K, value: V, stamp: [u64; 2], born: Instant, weight: usize) -> u64 {
        if weight > self.max {
            return 0;
        }
        if let Some(old) = self.map.remove(&key) {
            self.weight -= old.weight;
        }
        let mut evicted = 0;
        if self.weight + weight > self.max {
            // Room for an eighth more at once, so that eviction is not paid on every insert:
            // expired entries go first, then arbitrary ones.
            let target = (self.max - self.max / 8).min(self.max - weight);
            let (now, ttl) = (Instant::now(), self.ttl);
            let before = self.map.len();
            let mut freed = 0;
            self.map.retain(|_, e| {
                let keep = now.saturating_duration_since(e.born) < ttl;
                if !keep {
                    freed += e.weight;
                }
                keep
            });
            self.weight -= freed;
            while self.weight > target {
                let Some(k) = self.map.keys().next().copied() else {
                    break;
                };
                if let Some(e) = self.map.remove(&k) {
                    self.weight -= e.weight;
                }
            }
            evicted = (before - self.map.len()) as u64;
        }
        self.weight += weight;
        self.map.insert(
            key,
            Entry {
                value,
                stamp,
                born,
                weight,
            },
        );
        evicted
    }
}

/// The cache (one per proxy).
pub struct FeedCache {
    ttl: Duration,
    /// Set once a news cluster is in the map (never cleared, so entries filled while it was
    /// there cannot outlive a write made while it was not): until then no feed is served and
    /// writes need not invalidate anything.
    serving: AtomicBool,
    friends_gen: Box<[AtomicU64]>,
    news_gen: Box<[AtomicU64]>,
    lists_gen: Box<[AtomicU64]>,
    /// Bumped by lists writes that name no list (`delete object…`).
    lists_epoch: AtomicU64,
    lists: Mutex<Table<u32, Arc<Vec<u32>>>>,
    follows: Mutex<Table<u32, Arc<Vec<i32>>>>,
    privacy: Mutex<Table<(u32, i32, u32), bool>>,
    heads: Mutex<Table<i32, Arc<Head>>>,
    /// Hits, misses, evictions, invalidations.
    pub counters: CacheCounters,
}

impl std::fmt::Debug for FeedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedCache")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn slot(id: i64) -> usize {
    // NOTE: the remainder is below GENERATIONS.
    (id.unsigned_abs() % GENERATIONS as u64) as usize
}

impl FeedCache {
    /// An empty cache with `settings`' TTL and sizes.
    #[must_use]
    pub fn new(settings: &FeedSection) -> FeedCache {
        let counters = || (0..GENERATIONS).map(|_| AtomicU64::new(0)).collect();
        let ttl = Duration::from_millis(settings.cache_ttl_ms);
        FeedCache {
            ttl,
            serving: AtomicBool::new(false),
            friends_gen: counters(),
            news_gen: counters(),
            lists_gen: counters(),
            lists_epoch: AtomicU64::new(0),
            lists: Mutex::new(Table::new(settings.cache_list_ids_max, ttl)),
            follows: Mutex::new(Table::new(settings.cache_list_ids_max, ttl)),
            privacy: Mutex::new(Table::new(settings.cache_privacy_max, ttl)),
            heads: Mutex::new(Table::new(settings.cache_events_max, ttl)),
            counters: CacheCounters::default(),
        }
    }

    /// Whether the cache is on (`cache_ttl_ms > 0`).
    #[must_use]
    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    /// Called when the map has a news cluster: feeds may be served from now on.
    pub fn serve(&self) {
        self.serving.store(true, Ordering::Release);
    }

    /// Whether writes to a cluster of `family` must invalidate entries (the cache is on and a
    /// news cluster serves feeds: a proxy without one does not make friends writes wait).
    #[must_use]
    pub fn watches(&self, family: Family) -> bool {
        self.enabled()
            && self.serving.load(Ordering::Acquire)
            && matches!(family, Family::Friends | Family::News | Family::Lists)
    }

    /// Makes every entry depending on `owners` (in `family`) unusable.
    pub fn invalidate(&self, family: Family, owners: &[i64]) {
        let table = match family {
            Family::Friends => &self.friends_gen,
            Family::News => &self.news_gen,
            Family::Lists => &self.lists_gen,
            _ => return,
        };
        for owner in owners {
            table[slot(*owner)].fetch_add(1, Ordering::AcqRel);
        }
        self.counters
            .invalidations
            .fetch_add(owners.len() as u64, Ordering::Relaxed);
    }

    /// Makes every entry depending on any owner of `family` unusable (a write that changes
    /// owners it does not name: `delete object<obj>` of the lists grammar).
    pub fn invalidate_every(&self, family: Family) {
        if family == Family::Lists {
            self.lists_epoch.fetch_add(1, Ordering::AcqRel);
            self.counters.invalidations.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The lists-family stamp of `viewer`'s follow list: its generation and the epoch (read
    /// before asking a node).
    #[must_use]
    pub fn follows_gen(&self, viewer: u32) -> [u64; 2] {
        [
            self.lists_gen[slot(i64::from(viewer))].load(Ordering::Acquire),
            self.lists_epoch.load(Ordering::Acquire),
        ]
    }

    /// The friends-family generation of `id` (read before asking a node).
    #[must_use]
    pub fn friends_gen(&self, id: i64) -> u64 {
        self.friends_gen[slot(id)].load(Ordering::Acquire)
    }

    /// The news-family generation of `id` (read before asking a node).
    #[must_use]
    pub fn news_gen(&self, id: i64) -> u64 {
        self.news_gen[slot(id)].load(Ordering::Acquire)
    }

    fn count(&self, hit: bool) {
        let counter = if hit {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn evicted(&self, n: u64) {
        if n > 0 {
            self.counters.evictions.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The cached friend list of `viewer`.
    #[must_use]
    pub fn list(&self, viewer: u32) -> Option<Arc<Vec<u32>>> {
        if !self.enabled() {
            return None;
        }
        let stamp = [self.friends_gen(i64::from(viewer)), 0];
        let got = self
            .lists
            .lock()
            .get(&viewer, stamp, Instant::now(), self.ttl);
        self.count(got.is_some());
        got
    }

    /// Stores `viewer`'s friend list, asked for at `born` with `viewer`'s generation `gen`.
    pub fn put_list(&self, viewer: u32, list: Arc<Vec<u32>>, gen: u64, born: Instant) {
        if !self.enabled() {
            return;
        }
        let weight = list.len() + 1;
        let n = self.lists.lock().put(viewer, list, [gen, 0], born, weight);
        self.evicted(n);
    }

    /// The cached follow list of `viewer` (`list<viewer>` of the lists cluster).
    #[must_use]
    pub fn follows(&self, viewer: u32) -> Option<Arc<Vec<i32>>> {
        if !self.enabled() {
            return None;
        }
        let stamp = self.follows_gen(viewer);
        let got = self
            .follows
            .lock()
            .get(&viewer, stamp, Instant::now(), self.ttl);
        self.count(got.is_some());
        got
    }

    /// Stores `viewer`'s follow list, asked for at `born` with the stamp `gen`
    /// ([`FeedCache::follows_gen`] read before asking).
    pub fn put_follows(&self, viewer: u32, list: Arc<Vec<i32>>, gen: [u64; 2], born: Instant) {
        if !self.enabled() {
            return;
        }
        let weight = list.len() + 1;
        let n = self.follows.lock().put(viewer, list, gen, born, weight);
        self.evicted(n);
    }

    /// The cached answers for `pairs` of (author, type) as seen by `viewer` whose
    /// friends-family generation is `viewer_gen`; unknown pairs are left out.
    pub fn privacy(
        &self,
        viewer: u32,
        viewer_gen: u64,
        pairs: &[(i32, u32)],
        out: &mut HashMap<(i32, u32), bool>,
    ) {
        if !self.enabled() || pairs.is_empty() {
            return;
        }
        let now = Instant::now();
        let (mut hits, mut misses) = (0, 0);
        let mut table = self.privacy.lock();
        for &(author, kind) in pairs {
            let stamp = [viewer_gen, self.friends_gen(i64::from(author))];
            match table.get(&(viewer, author, kind), stamp, now, self.ttl) {
                Some(v) => {
                    hits += 1;
                    out.insert((author, kind), v);
                }
                None => misses += 1,
            }
        }
        drop(table);
        self.counters.hits.fetch_add(hits, Ordering::Relaxed);
        self.counters.misses.fetch_add(misses, Ordering::Relaxed);
    }

    /// Stores answers: `(author, type, visible, author's generation)`, asked for at `born`.
    pub fn put_privacy(
        &self,
        viewer: u32,
        viewer_gen: u64,
        answers: &[(i32, u32, bool, u64)],
        born: Instant,
    ) {
        if !self.enabled() {
            return;
        }
        let mut table = self.privacy.lock();
        let mut n = 0;
        for &(author, kind, visible, gen) in answers {
            n += table.put((viewer, author, kind), visible, [viewer_gen, gen], born, 1);
        }
        drop(table);
        self.evicted(n);
    }

    /// The cached heads of `authors` (`None` where unknown), in order.
    #[must_use]
    pub fn heads(&self, authors: &[i32]) -> Vec<Option<Arc<Head>>> {
        if !self.enabled() {
            return vec![None; authors.len()];
        }
        let now = Instant::now();
        let mut table = self.heads.lock();
        let out: Vec<Option<Arc<Head>>> = authors
            .iter()
            .map(|&a| table.get(&a, [self.news_gen(i64::from(a)), 0], now, self.ttl))
            .collect();
        drop(table);
        let hits = out.iter().filter(|h| h.is_some()).count() as u64;
        self.counters.hits.fetch_add(hits, Ordering::Relaxed);
        self.counters
            .misses
            .fetch_add(out.len() as u64 - hits, Ordering::Relaxed);
        out
    }

    /// Stores `author`'s head, asked for at `born` with the author's news generation `gen`.
    pub fn put_head(&self, author: i32, head: Arc<Head>, gen: u64, born: Instant) {
        if !self.enabled() {
            return;
        }
        let weight = head.events.len() + 1;
        let n = self.heads.lock().put(author, head, [gen, 0], born, weight);
        self.evicted(n);
    }

    /// Entries held (friend and follow lists, privacy answers, heads).
    #[must_use]
    pub fn entries(&self) -> u64 {
        (self.lists.lock().map.len()
            + self.follows.lock().map.len()
            + self.privacy.lock().map.len()
            + self.heads.lock().map.len()) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(ttl: u64, max: usize) -> FeedSection {
        FeedSection {
            cache_ttl_ms: ttl,
            cache_list_ids_max: max,
            cache_privacy_max: max,
            cache_events_max: max,
        }
    }

    #[test]
    fn entries_die_on_invalidation_and_ttl() {
        let cache = FeedCache::new(&settings(200, 100));
        let gen = cache.friends_gen(7);
        cache.put_list(7, Arc::new(vec![1, 2]), gen, Instant::now());
        assert_eq!(cache.list(7).as_deref(), Some(&vec![1, 2]));
        cache.invalidate(Family::Friends, &[7]);
        assert!(cache.list(7).is_none());
        // Filled with the generation read before the write: never used.
        cache.put_list(7, Arc::new(vec![1]), gen, Instant::now());
        assert!(cache.list(7).is_none());
        let gen = cache.friends_gen(7);
        cache.put_list(
            7,
            Arc::new(vec![1]),
            gen,
            Instant::now() - Duration::from_millis(300),
        );
        assert!(cache.list(7).is_none(), "past the TTL");
        // A news write leaves friends entries alone.
        cache.put_list(7, Arc::new(vec![3]), gen, Instant::now());
        cache.invalidate(Family::News, &[7]);
        assert!(cache.list(7).is_some());
        // Privacy entries depend on both viewer and author.
        let (vg, ag) = (cache.friends_gen(7), cache.friends_gen(9));
        cache.put_privacy(7, vg, &[(9, 3, true, ag)], Instant::now());
        let mut out = HashMap::new();
        cache.privacy(7, vg, &[(9, 3), (9, 4)], &mut out);
        assert_eq!(out, HashMap::from([((9, 3), true)]));
        cache.invalidate(Family::Friends, &[9]);
        out.clear();
        cache.privacy(7, vg, &[(9, 3)], &mut out);
        assert!(out.is_empty());
        let off = FeedCache::new(&settings(0, 100));
        off.put_list(7, Arc::new(vec![1]), 0, Instant::now());
        assert!(off.list(7).is_none());
        assert!(!off.watches(Family::Friends));
        off.serve();
        assert!(
            !off.watches(Family::Friends),
            "a cache that is off never watches"
        );
        // On, but no news cluster yet: friends writes need not wait for invalidation.
        let idle = FeedCache::new(&settings(200, 100));
        assert!(!idle.watches(Family::Friends));
        idle.serve();
        assert!(idle.watches(Family::Friends) && idle.watches(Family::News));
        assert!(idle.watches(Family::Lists));
        assert!(!idle.watches(Family::Kv));
    }

    #[test]
    fn follow_lists_die_on_their_list_and_on_object_deletes() {
        let cache = FeedCache::new(&settings(10_000, 100));
        let gen = cache.follows_gen(7);
        cache.put_follows(7, Arc::new(vec![-5, 9]), gen, Instant::now());
        assert_eq!(cache.follows(7).as_deref(), Some(&vec![-5, 9]));
        // Friends and news writes leave it; a write to another list too.
        cache.invalidate(Family::Friends, &[7]);
        cache.invalidate(Family::News, &[7]);
        cache.invalidate(Family::Lists, &[8]);
        assert!(cache.follows(7).is_some());
        cache.invalidate(Family::Lists, &[7]);
        assert!(cache.follows(7).is_none());
        // Filled with the stamp read before the write: never used.
        cache.put_follows(7, Arc::new(vec![-5]), gen, Instant::now());
        assert!(cache.follows(7).is_none());
        let gen = cache.follows_gen(7);
        cache.put_follows(7, Arc::new(vec![-5]), gen, Instant::now());
        assert!(cache.follows(7).is_some());
        // `delete object…` names no list: every follow list goes.
        cache.invalidate_every(Family::Lists);
        assert!(cache.follows(7).is_none());
    }

    #[test]
    fn heads_serve_short_pages_of_not_too_many_authors() {
        assert!(heads_serve(HEAD_EVENTS - 1, HEADS_AUTHORS_MAX));
        assert!(!heads_serve(HEAD_EVENTS, 1));
        assert!(!heads_serve(1, HEADS_AUTHORS_MAX + 1));
    }

    #[test]
    fn tables_stay_within_their_size() {
        let cache = FeedCache::new(&settings(10_000, 100));
        for v in 1..=1000u32 {
            cache.put_list(v, Arc::new(vec![v; 9]), 0, Instant::now());
            assert!(cache.lists.lock().weight <= 100);
        }
        assert!(cache.counters.evictions.load(Ordering::Relaxed) >= 900);
        // Larger than the whole table: not stored.
        cache.put_list(5000, Arc::new(vec![1; 200]), 0, Instant::now());
        assert!(cache.list(5000).is_none());
    }
}
