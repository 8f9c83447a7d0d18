//! Per-cluster counters, declared once with their descriptions so the struct, the `stats`
//! output and `--list-stats` cannot drift.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident: $description:literal,)*) => {
        /// The counters of one cluster (kept across reloads).
        #[derive(Debug, Default)]
        pub struct ClusterStats {
            $(#[doc = $description] pub $name: AtomicU64,)*
        }

        impl ClusterStats {
            /// Every counter's name and description, in output order.
            pub const DESCRIPTIONS: &'static [(&'static str, &'static str)] =
                &[$((concat!("proxy_", stringify!($name)), $description),)*];

            /// `(name, value)` of every counter, in output order.
            #[must_use]
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((concat!("proxy_", stringify!($name)), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    commands: "client commands parsed",
    retrievals: "get/gets/gat/gats commands",
    keys_requested: "keys asked for by retrievals",
    keys_found: "values returned by retrievals",
    writes: "storage, delete, incr/decr and touch commands",
    fanout_requests: "retrievals sent to more than one shard",
    fanout_shards: "shard sub-requests of retrievals (fan-out width summed)",
    shard_timeouts: "shard sub-requests that missed their deadline",
    shard_unavailable: "shard sub-requests refused because no member was usable",
    partial_answers: "retrievals answered without every shard",
    server_errors: "SERVER_ERROR replies sent to clients",
    client_errors: "CLIENT_ERROR and ERROR replies sent to clients",
    scatter_gathers: "keys answered by merging several shards",
    search_scatters: "search keys asked of every shard of a search cluster and merged",
    search_shard_requests: "shard requests of merged searches (first asks and re-asks)",
    search_reasks: "shards asked again for a search's whole window (the merge was unsure)",
    privacy_resolved: "privacy answers 1/2 resolved on the viewer's shard",
    twin_writes: "writes split over two shards",
    twin_queued: "twin halves that did not land at once and were queued",
    twin_retries: "queued twin halves retried",
    twin_landed: "queued twin halves that landed on a retry",
    cache_hits: "reads answered by the cache tier",
    cache_misses: "reads the cache tier did not have",
    cache_fills: "values stored into the cache tier after a miss",
    cache_invalidations: "owners whose cached keys a write invalidated",
    feed_cache_hits: "feed cache lookups answered (friend lists, privacy answers, author heads; on the news cluster)",
    feed_cache_misses: "feed cache lookups not answered (absent, invalidated or past the TTL)",
    feed_cache_evictions: "feed cache entries removed to stay within the feed section's sizes",
    feed_cache_invalidations: "owners whose feed cache entries a write through this cluster invalidated",
    feed_cache_entries: "feed cache entries held after the last feed read (a gauge)",
    feed_cache_pages: "feed pages merged from cached author heads alone",
    connections_accepted: "client connections accepted",
    connections_refused: "client connections refused at max_connections",
    output_stalls: "clients closed after leaving replies unread for write_stall_timeout_ms",
    stale_deletes: "old values deleted after a too-large set was refused, as a node does",
}

/// Adds one to a counter.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n` to a counter.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_described() {
        let mut names: Vec<_> = ClusterStats::DESCRIPTIONS.iter().map(|(n, _)| *n).collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count);
        assert!(ClusterStats::DESCRIPTIONS
            .iter()
            .all(|(_, d)| !d.is_empty()));
        let stats = ClusterStats::default();
        bump(&stats.writes);
        add(&stats.writes, 2);
        assert!(stats.snapshot().contains(&("proxy_writes", 3)));
    }
}
