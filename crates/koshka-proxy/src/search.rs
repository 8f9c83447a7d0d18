//! Global search through the proxy: a `search#…` key without an owner filter is asked of
//! every shard of a `search` cluster and the answers are merged, so the client gets in one
//! round trip the reply one node holding every item would give.
//!
//! 1. Every shard gets the per-shard key (`Search::per_shard`): offset 0 and the whole
//!    window when it is small (`SEARCH_WHOLE_WINDOW_MAX`), else VK's split estimate of it
//!    (`split_limit(offset + limit, N)`), all in parallel under the retrieval deadline
//!    (`get_timeout_ms`).
//! 2. The answers are merged by `koshka_keys::search::merge`: a heap by the order, the best
//!    hit of each content hash kept, totals summed, the offset skipped, the limit kept.
//! 3. Every shard the merge calls *unsure* (it sent all it was asked for and its last hit
//!    still ranks inside the window) is asked again for the whole window, in parallel, under
//!    the same deadline, and the answers are merged again: the result is exact.
//!
//! A shard that misses the deadline or has no usable member contributes nothing: the reply
//! is merged from the shards that answered (a re-ask that misses leaves that shard's first
//! answer in the merge), the retrieval counts as partial (`proxy_partial_answers`) and
//! `#last_complete_count` reports the shards that answered every request in time.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use koshka_keys::search::{merge, Found, Query, Search};
use koshka_keys::Encode;
use koshka_proto::encode;
use tokio::time::Instant;

use crate::backend::CallError;
use crate::cluster::Cluster;
use crate::conn::Part;
use crate::scatter::first_value;
use crate::stats::{add, bump};

/// One shard's answer to one request.
enum Answer {
    /// A parsed search reply.
    Found(Found),
    /// An error line from the shard: it becomes the client's reply.
    Error(Bytes),
    /// No answer in time (or no usable member, or an unreadable reply).
    Missed,
}

/// Answers `search` (the client's key `key`) from every shard of `cluster`.
pub fn scatter(
    cluster: Arc<Cluster>,
    key: Vec<u8>,
    search: Search,
    affinity: usize,
) -> crate::conn::PartFuture {
    Box::pin(async move {
        let stats = &cluster.stats;
        let deadline = Instant::now() + Duration::from_millis(cluster.settings.get_timeout_ms);
        let shards = cluster.count();
        bump(&stats.scatter_gathers);
        bump(&stats.search_scatters);
        if shards > 1 {
            bump(&stats.fanout_requests);
        }
        add(&stats.fanout_shards, u64::from(shards));
        add(&stats.search_shard_requests, u64::from(shards));
        let per_shard = search.per_shard(shards);
        let first = ask_all(&cluster, &per_shard, 0..shards, affinity, deadline).await;
        let mut parts: Vec<Option<Found>> = Vec::with_capacity(first.len());
        for answer in first {
            match answer {
                Answer::Found(found) => parts.push(Some(found)),
                Answer::Error(line) => return Part::Error(line),
                Answer::Missed => parts.push(None),
            }
        }
        let mut complete: Vec<bool> = parts.iter().map(Option::is_some).collect();
        let mut asked = vec![per_shard.limit; parts.len()];
        let (mut found, unsure) = merged(&search, &parts, &asked);
        if !unsure.is_empty() {
            let whole = Search {
                offset: 0,
                limit: search.window(),
                ..search.clone()
            };
            add(&stats.search_reasks, unsure.len() as u64);
            add(&stats.search_shard_requests, unsure.len() as u64);
            let again = unsure.iter().map(|&i| u32::try_from(i).unwrap_or(u32::MAX));
            let answers = ask_all(&cluster, &whole, again, affinity, deadline).await;
            for (&i, answer) in unsure.iter().zip(answers) {
                match answer {
                    Answer::Found(better) => {
                        parts[i] = Some(better);
                        asked[i] = whole.limit;
                    }
                    Answer::Error(line) => return Part::Error(line),
                    // Its first answer stays in the merge; the window may lack its hits.
                    Answer::Missed => complete[i] = false,
                }
            }
            found = merged(&search, &parts, &asked).0;
        }
        let done = u32::try_from(complete.iter().filter(|c| **c).count()).unwrap_or(u32::MAX);
        if parts.iter().all(Option::is_none) {
            return Part::Merged {
                values: Bytes::new(),
                count: 0,
                done,
                total: shards,
            };
        }
        let mut text = Vec::new();
        found.encode(&mut text);
        let mut out = Vec::with_capacity(text.len() + key.len() + 32);
        koshka_proto::reply::value(&mut out, &key, 0, &text, None);
        Part::Merged {
            values: out.into(),
            count: 1,
            done,
            total: shards,
        }
    })
}

/// Merges the parts that answered; the unsure ones are indexes into `parts`.
fn merged(search: &Search, parts: &[Option<Found>], asked: &[u32]) -> (Found, Vec<usize>) {
    let mut present = Vec::with_capacity(parts.len());
    let mut index = Vec::with_capacity(parts.len());
    let mut limits = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        if let Some(found) = part {
            present.push(found.clone());
            index.push(i);
            limits.push(asked[i]);
        }
    }
    let result = merge(search, &present, &limits);
    let unsure = result.unsure.into_iter().map(|j| index[j]).collect();
    (result.found, unsure)
}

/// Sends `search` to each of `shards` in parallel; their answers in the same order.
async fn ask_all(
    cluster: &Cluster,
    search: &Search,
    shards: impl Iterator<Item = u32>,
    affinity: usize,
    deadline: Instant,
) -> Vec<Answer> {
    let mut bytes = Vec::new();
    encode::get(&mut bytes, [Query::Search(search.clone()).to_bytes()]);
    let bytes = Bytes::from(bytes);
    let calls = shards.map(|shard| {
        let bytes = bytes.clone();
        async move { ask(cluster, shard, bytes, affinity, deadline).await }
    });
    join_all(calls).await
}

async fn ask(
    cluster: &Cluster,
    shard: u32,
    bytes: Bytes,
    affinity: usize,
    deadline: Instant,
) -> Answer {
    let stats = &cluster.stats;
    let result = match cluster.reader(shard) {
        Ok(member) => member.call(bytes, 1, affinity, deadline).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(frames) => match frames.first().map(first_value) {
            Some(Ok(Some(value))) => match Found::parse(&value) {
                Ok(found) => Answer::Found(found),
                Err(_) => {
                    bump(&stats.shard_unavailable);
                    Answer::Missed
                }
            },
            Some(Err(line)) => Answer::Error(line),
            _ => {
                bump(&stats.shard_unavailable);
                Answer::Missed
            }
        },
        Err(CallError::Timeout { .. }) => {
            bump(&stats.shard_timeouts);
            Answer::Missed
        }
        Err(_) => {
            bump(&stats.shard_unavailable);
            Answer::Missed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(key: &[u8]) -> Search {
        match Query::parse(key).unwrap() {
            Query::Search(search) => search,
            Query::Item { .. } => unreachable!(),
        }
    }

    #[test]
    fn the_documented_example_rewrites_as_documented() {
        // docs/proxy.md and docs/protocol/search.md: `search#R20,40(кот)` over 8 shards.
        let search = parse("search#R20,40(кот)".as_bytes());
        let per_shard = search.per_shard(8);
        assert_eq!(per_shard.limit, 27);
        // A top 20 is asked whole.
        let small = parse("search#R20(кот)".as_bytes()).per_shard(8);
        assert_eq!(small.limit, 20);
        assert_eq!(
            Query::Search(per_shard).to_bytes(),
            b"search#R27(%D0%BA%D0%BE%D1%82)"
        );
    }

    #[test]
    fn merges_skip_shards_that_did_not_answer() {
        let search = parse(b"search#R2(a)");
        let hit = |owner, value, hash| koshka_keys::search::Hit {
            owner,
            id: 1,
            value,
            hash,
        };
        let a = Found {
            total: 5,
            hits: vec![hit(1, 9, 1), hit(3, 8, 2)],
        };
        let c = Found {
            total: 1,
            hits: vec![hit(2, 10, 3)],
        };
        let (found, unsure) = merged(&search, &[Some(a), None, Some(c)], &[2, 2, 2]);
        assert_eq!(found.total, 6);
        assert_eq!(found.hits, vec![hit(2, 10, 3), hit(1, 9, 1)]);
        // Part 0 sent all it was asked for and its last hit is below the window: sure.
        assert!(unsure.is_empty());
        let (_, unsure) = merged(
            &search,
            &[
                None,
                Some(Found {
                    total: 9,
                    hits: vec![hit(1, 9, 1)],
                }),
            ],
            &[1, 1],
        );
        // Indexes are the caller's, not the answered parts'.
        assert_eq!(unsure, vec![1]);
    }
}
