//! The read-through memcached cache tier (not yet wired: every key reads through the shards).

use std::sync::Arc;

use koshka_proto::encode::Retrieval;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backend::{Member, Reply};
use crate::cluster::Cluster;
use crate::conn::{Outcome, PartFuture};
use crate::Shared;

/// The memcached pool.
#[derive(Debug)]
pub struct Pool;

/// Whether `key`'s family is cached in `cluster`.
#[must_use]
pub fn family_cached(_cluster: &Cluster, _key: &[u8]) -> bool {
    false
}

/// Reads `key` through the cache.
pub fn read(
    _cluster: &Arc<Cluster>,
    _shared: &Arc<Shared>,
    _key: &[u8],
    _shard: u32,
    _kind: Retrieval,
    _affinity: usize,
) -> PartFuture {
    Box::pin(std::future::ready(crate::conn::Part::Missed))
}

/// The owners whose cached keys a write of `key` affects.
#[must_use]
pub fn owners_of_write(_cluster: &Cluster, _key: &[u8]) -> Vec<i64> {
    Vec::new()
}

/// Waits for a write, invalidates, then replies.
pub fn write_then_invalidate(
    _cluster: Arc<Cluster>,
    _shared: Arc<Shared>,
    member: Arc<Member>,
    reply: Reply,
    deadline: Instant,
    _owners: Vec<i64>,
    silent: bool,
) -> JoinHandle<Outcome> {
    tokio::spawn(async move {
        let reply = match member.wait(reply, deadline).await {
            Ok(frames) => frames.concat(),
            Err(e) => crate::conn::server_error(&e),
        };
        Outcome::reply(if silent { Vec::new() } else { reply })
    })
}

impl Pool {
    /// Connects the pool.
    pub async fn start(
        _config: &crate::config::CacheSection,
        _settings: &crate::config::ProxySection,
    ) -> Pool {
        Pool
    }
}

/// Invalidates the owners a multi-step write's outcome names, before its reply goes out.
pub async fn invalidate_after(_cluster: &Cluster, _shared: &Shared, _outcome: &Outcome) {}
