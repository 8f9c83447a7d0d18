//! The read-through memcached cache tier.
//!
//! A cluster names key families (`cache = ["status", "statuses"]`: the key's name, the
//! letters before its first id). A `get` of such a key asks the memcached pool first (a
//! ketama ring over `cache.servers`); on a miss it reads the shard and stores the value in the
//! pool with `cache.ttl_seconds`.
//!
//! Invalidation is by generation, so that every key of an owner (any slice, any mode) goes
//! stale at once: the pool key is `kp:<epoch>:<cluster>:<generation>:<md5 of the key>`, where
//! the generation is a counter of the key's primary owner (one of 65 536 counters, chosen by
//! the owner id; a collision only invalidates more) and the epoch is random per proxy start.
//! A write through the proxy bumps the generation of every owner it changes *after* the
//! shard acknowledged it and *before* the client gets the reply; a read takes the generation
//! *before* it asks the shard. So a read that starts after an acknowledged write can only
//! find entries filled after that write reached its shard: no stale read through the same
//! proxy. Writes that bypass this proxy (directly to a node, or through another proxy) are
//! seen when their entries expire (the TTL bounds the staleness).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use koshka_keys::friends::{DeleteKey, GetKey, IncrKey, SetKey};
use koshka_keys::messages::Query;
use koshka_keys::Route;
use koshka_proto::encode::{self, Retrieval, Store};
use koshka_proto::{parse_reply, ParsedReply, Reply as Parsed, StoreMode};
use md5::{Digest, Md5};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backend::{Member, Reply};
use crate::cluster::{first_int, Cluster};
use crate::config::{CacheSection, Family, ProxySection, ShardConfig};
use crate::conn::{values_part, Effect, Outcome, Part, PartFuture};
use crate::ring::Ring;
use crate::stats::bump;
use crate::Shared;

/// Owner generation counters (a power of two; owners share them by `id mod GENERATIONS`).
pub const GENERATIONS: usize = 65_536;

/// The memcached pool.
pub struct Pool {
    members: Vec<Arc<Member>>,
    ring: Ring,
    ttl_seconds: u32,
    timeout: Duration,
    epoch: u64,
    generations: Box<[AtomicU64]>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Connects the pool's servers.
    pub async fn start(config: &CacheSection, settings: &ProxySection) -> Pool {
        let mut members = Vec::new();
        for addr in &config.servers {
            members.push(Member::start(addr, settings).await);
        }
        let names: Vec<String> = config
            .servers
            .iter()
            .map(|s| ShardConfig::Addr(s.clone()).ring_name())
            .collect();
        Pool {
            members,
            ring: Ring::new(&names),
            ttl_seconds: config.ttl_seconds,
            timeout: Duration::from_millis(config.timeout_ms),
            epoch: rand::random::<u64>() >> 16,
            generations: (0..GENERATIONS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn generation(&self, owner: i64) -> &AtomicU64 {
        // NOTE: the remainder is below GENERATIONS.
        let slot = (owner.unsigned_abs() % GENERATIONS as u64) as usize;
        &self.generations[slot]
    }

    fn key(&self, cluster: &str, owner: i64, key: &[u8]) -> Vec<u8> {
        let generation = self.generation(owner).load(Ordering::Acquire);
        let digest = Md5::digest(key);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("kp:{}:{cluster}:{generation}:{hex}", self.epoch).into_bytes()
    }

    fn member(&self, key: &[u8]) -> &Arc<Member> {
        &self.members[self.ring.lookup(key) as usize]
    }

    /// Makes every cached key of `owners` unreachable.
    pub fn invalidate(&self, owners: &[i64]) {
        for owner in owners {
            self.generation(*owner).fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// The key's name: the letters and `_` before its first digit (after an `N@` prefix).
fn family_of(key: &[u8]) -> &[u8] {
    let (_, rest) = koshka_keys::idiom::split_route(key);
    let end = rest
        .iter()
        .position(|b| !(b.is_ascii_lowercase() || *b == b'_'))
        .unwrap_or(rest.len());
    &rest[..end]
}

/// Whether `key`'s family is cached in `cluster`.
#[must_use]
pub fn family_cached(cluster: &Cluster, key: &[u8]) -> bool {
    let family = family_of(key);
    !family.is_empty() && cluster.config.cache.iter().any(|f| f.as_bytes() == family)
}

/// The primary owner a read names (for its generation).
fn read_owner(cluster: &Cluster, key: &[u8]) -> i64 {
    let owner = match cluster.family() {
        Family::Messages | Family::Wall => Query::parse(key).ok().and_then(|q| q.owner()),
        Family::Friends => GetKey::parse(key)
            .ok()
            .and_then(|k| Route::owners(&k).primary()),
        Family::Search => koshka_keys::search::Query::parse(key)
            .ok()
            .and_then(|q| Route::owners(&q).primary()),
        // A lists cluster takes no cache tier (config.rs): `delete object…` changes lists it
        // does not name.
        Family::Kv | Family::News | Family::Lists => None,
    };
    owner.or_else(|| first_int(key)).unwrap_or(0)
}

/// Reads `key` (planned for `shard`) through the cache.
pub fn read(
    cluster: &Arc<Cluster>,
    shared: &Arc<Shared>,
    key: &[u8],
    shard: u32,
    kind: Retrieval,
    affinity: usize,
) -> PartFuture {
    let (cluster, shared, key) = (cluster.clone(), shared.clone(), key.to_vec());
    Box::pin(async move {
        let Some(pool) = shared.cache.clone() else {
            return Part::Missed;
        };
        let stats = &cluster.stats;
        // The generation is read before the shard is asked (see the module docs).
        let cache_key = pool.key(&cluster.config.name, read_owner(&cluster, &key), &key);
        let member = pool.member(&cache_key).clone();
        if kind == Retrieval::Get {
            let mut request = Vec::new();
            encode::get(&mut request, [&cache_key]);
            let deadline = Instant::now() + pool.timeout;
            if let Ok(frames) = member.call(request.into(), 1, affinity, deadline).await {
                if let Some((flags, data)) = first_value(&frames[0]) {
                    bump(&stats.cache_hits);
                    let mut out = Vec::new();
                    koshka_proto::reply::value(&mut out, &key, flags, &data, None);
                    return Part::Values(out.into(), 1);
                }
            }
            bump(&stats.cache_misses);
        }
        let deadline = Instant::now() + Duration::from_millis(cluster.settings.get_timeout_ms);
        let Ok(reader) = cluster.reader(shard) else {
            bump(&stats.shard_unavailable);
            return Part::Missed;
        };
        let mut request = Vec::new();
        encode::retrieval(&mut request, kind, [&key]);
        let frames = match reader.call(request.into(), 1, affinity, deadline).await {
            Ok(frames) => frames,
            Err(_) => {
                bump(&stats.shard_timeouts);
                return Part::Missed;
            }
        };
        let frame = frames.into_iter().next().unwrap_or_default();
        if kind == Retrieval::Get {
            if let Some((flags, data)) = first_value(&frame) {
                let mut fill = Vec::new();
                let store = Store {
                    flags,
                    exptime: i64::from(pool.ttl_seconds),
                    noreply: false,
                    ..Store::new(StoreMode::Set)
                };
                encode::store(&mut fill, &store, &cache_key, &data);
                // Fire and forget: the reply is read (the stream stays in step) and dropped.
                if member.submit(Bytes::from(fill), 1, affinity).is_ok() {
                    bump(&stats.cache_fills);
                }
            }
        }
        values_part(frame)
    })
}

fn first_value(frame: &[u8]) -> Option<(u32, Vec<u8>)> {
    match parse_reply(frame, &koshka_proto::ReplyConfig::DEFAULT) {
        ParsedReply::Done {
            reply: Parsed::Values(values),
            ..
        } => values.iter().next().map(|v| (v.flags, v.data.to_vec())),
        _ => None,
    }
}

/// The owners whose cached keys a write of `key` changes.
#[must_use]
pub fn owners_of_write(cluster: &Cluster, key: &[u8]) -> Vec<i64> {
    let owners = match cluster.family() {
        Family::Friends => SetKey::parse(key)
            .map(|k| Route::owners(&k).to_vec())
            .or_else(|_| DeleteKey::parse(key).map(|k| Route::owners(&k).to_vec()))
            .or_else(|_| IncrKey::parse(key).map(|k| Route::owners(&k).to_vec()))
            .ok(),
        Family::Lists => {
            use koshka_keys::lists;
            lists::SetKey::parse(key)
                .map(|k| Route::owners(&k).to_vec())
                .or_else(|_| lists::DeleteKey::parse(key).map(|k| Route::owners(&k).to_vec()))
                .or_else(|_| lists::IncrKey::parse(key).map(|k| Route::owners(&k).to_vec()))
                .ok()
        }
        _ => None,
    };
    owners.unwrap_or_else(|| first_int(key).into_iter().collect())
}

/// Waits for a write, invalidates its owners, then replies (so no read through this proxy
/// that starts after the reply can see what the write replaced).
pub fn write_then_invalidate(
    cluster: Arc<Cluster>,
    shared: Arc<Shared>,
    member: Arc<Member>,
    reply: Reply,
    deadline: Instant,
    owners: Vec<i64>,
    silent: bool,
) -> JoinHandle<Outcome> {
    tokio::spawn(async move {
        let reply = match member.wait(reply, deadline).await {
            Ok(frames) => frames.concat(),
            Err(e) => crate::conn::server_error(&e),
        };
        // Invalidate whatever the outcome: a timed-out write may still have landed.
        if let Some(pool) = &shared.cache {
            pool.invalidate(&owners);
            bump(&cluster.stats.cache_invalidations);
        }
        invalidate_feed(&cluster, &shared, &owners);
        Outcome::reply(if silent { Vec::new() } else { reply })
    })
}

/// Invalidates the owners a multi-step write's outcome names, before its reply goes out.
pub async fn invalidate_after(cluster: &Cluster, shared: &Shared, outcome: &Outcome) {
    for effect in &outcome.effects {
        if let Effect::Invalidate(owners) = effect {
            if let Some(pool) = &shared.cache {
                pool.invalidate(owners);
                bump(&cluster.stats.cache_invalidations);
            }
            invalidate_feed(cluster, shared, owners);
        }
    }
}

/// Whether a write to `cluster` must wait for its reply to invalidate cached entries (the
/// cache tier's families, or the feed cache's friends and news) before the client's reply.
#[must_use]
pub fn invalidates(cluster: &Cluster, shared: &Shared) -> bool {
    (shared.cache.is_some() && !cluster.config.cache.is_empty())
        || shared.feed_cache.watches(cluster.family())
}

/// Invalidates the feed cache's entries of `owners` in `cluster`'s family.
fn invalidate_feed(cluster: &Cluster, shared: &Shared, owners: &[i64]) {
    if shared.feed_cache.watches(cluster.family()) {
        shared.feed_cache.invalidate(cluster.family(), owners);
        crate::stats::add(&cluster.stats.feed_cache_invalidations, owners.len() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_the_key_names() {
        assert_eq!(family_of(b"status5"), b"status");
        assert_eq!(family_of(b"98@statuses5#1,2"), b"statuses");
        assert_eq!(family_of(b"30~10:album1"), b"");
        assert_eq!(family_of(b"friends_masks7"), b"friends_masks");
    }
}
