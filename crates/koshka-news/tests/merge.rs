//! The raw feed query merges exactly across shards: events of random authors written to two
//! shard nodes (and, as the reference, to one node holding every author), then for random
//! author lists, date ranges, type masks, limits and cursors, a k-way merge of the shards'
//! replies by `(date, author, id)` descending, cut at the limit, equals the reference reply.
//! This is the merge the proxy's feed key performs (docs/protocol/news.md).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use koshka_client::Client;
use koshka_node::config::Config;
use koshka_node::registry;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn config(dir: &std::path::Path, index: u32, count: u32) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.server.threads = 1;
    config.storage.data_dir = dir.to_path_buf();
    config.engines.enabled = vec!["news".into()];
    config.engines.shard_index = index;
    config.engines.shard_count = count;
    config
}

type Event = (u32, i32, u32, Vec<i64>);

fn parse(reply: &str) -> Vec<Event> {
    let nums: Vec<i64> = reply.split(',').map(|s| s.parse().unwrap()).collect();
    nums[1..]
        .chunks(9)
        .map(|c| {
            (
                u32::try_from(c[0]).unwrap(),
                i32::try_from(c[1]).unwrap(),
                u32::try_from(c[2]).unwrap(),
                c[3..].to_vec(),
            )
        })
        .collect()
}

/// A k-way heap merge of per-shard replies (each sorted newest first), cut at `limit`.
fn merge(replies: &[Vec<Event>], limit: usize) -> Vec<Event> {
    let mut heap = BinaryHeap::new();
    for (shard, events) in replies.iter().enumerate() {
        if let Some(e) = events.first() {
            heap.push(((e.0, e.1, e.2), Reverse(shard), 0usize));
        }
    }
    let mut out = Vec::new();
    while let Some((_, Reverse(shard), at)) = heap.pop() {
        if out.len() == limit {
            break;
        }
        out.push(replies[shard][at].clone());
        if let Some(e) = replies[shard].get(at + 1) {
            heap.push(((e.0, e.1, e.2), Reverse(shard), at + 1));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_shard_replies_heap_merge_to_the_single_node_reply() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // One manual clock for the three nodes: an event written to the reference and to its
    // shard gets the same date even when a second would have ticked between the two writes.
    let manual = Arc::new(koshka_engine::ManualClock::new(1_796_000_000));
    let clock: Arc<dyn koshka_engine::Clock> = manual.clone();
    let start = |config| koshka_node::start_with_clock(config, &registry::builtin(), clock.clone());
    let reference = start(config(dirs[0].path(), 0, 1)).unwrap();
    let shards: Vec<_> = (0..2)
        .map(|i| start(config(dirs[i + 1].path(), i as u32, 2)))
        .collect::<Result<_, _>>()
        .unwrap();
    let mut one = Client::connect(reference.addr("news").unwrap())
        .await
        .unwrap();
    let mut parts = Vec::new();
    for node in &shards {
        parts.push(Client::connect(node.addr("news").unwrap()).await.unwrap());
    }
    let mut rng = StdRng::seed_from_u64(11);
    let authors: Vec<i32> = (1..=12).chain((1..=6).map(|g| -g)).collect();
    // Writes spread over a few seconds, so dates differ and also tie.
    for _ in 0..4 {
        for _ in 0..60 {
            let author = authors[rng.gen_range(0..authors.len())];
            let value = format!(
                "{},{},0,{author},{},{}",
                rng.gen_range(1..=6),
                author.abs(),
                rng.gen_range(0..3),
                rng.gen_range(1..1000)
            );
            let key = format!("update{author}");
            one.set(&key, &value, 0, 0).await.unwrap();
            let shard = (author.unsigned_abs() % 2) as usize;
            parts[shard].set(&key, &value, 0, 0).await.unwrap();
        }
        manual.advance(1);
    }
    let mut compared = 0;
    for _ in 0..200 {
        let list: Vec<i32> = authors
            .iter()
            .copied()
            .filter(|_| rng.gen_bool(0.5))
            .collect();
        let ids: Vec<String> = list.iter().map(ToString::to_string).collect();
        let types: u32 = if rng.gen_bool(0.5) {
            u32::MAX
        } else {
            rng.gen()
        };
        let limit = rng.gen_range(1..40);
        let all = format!("raw_updates{types}_0,4294967295#1000:{}", ids.join(","));
        let everything =
            parse(&String::from_utf8(one.get(&all).await.unwrap().unwrap().data).unwrap());
        // Half the queries continue after a cursor taken from the reference's events.
        let (to, cursor) = match everything.get(rng.gen_range(0..everything.len().max(1))) {
            Some(e) if rng.gen_bool(0.5) => (e.0, format!(",{},{}", e.1, e.2)),
            _ => (u32::MAX, String::new()),
        };
        let key = format!(
            "raw_updates{types}_0,{to}{cursor}#{limit}:{}",
            ids.join(",")
        );
        let want = parse(&String::from_utf8(one.get(&key).await.unwrap().unwrap().data).unwrap());
        let mut replies = Vec::new();
        for (shard, c) in parts.iter_mut().enumerate() {
            // Each shard gets only its own authors, as the proxy sends them.
            let mine: Vec<String> = list
                .iter()
                .filter(|a| (a.unsigned_abs() % 2) as usize == shard)
                .map(ToString::to_string)
                .collect();
            let key = format!(
                "raw_updates{types}_0,{to}{cursor}#{limit}:{}",
                mine.join(",")
            );
            let reply = c.get(&key).await.unwrap().unwrap();
            replies.push(parse(&String::from_utf8(reply.data).unwrap()));
        }
        let got = merge(&replies, limit);
        assert_eq!(got, want, "{key}");
        compared += usize::from(!want.is_empty());
    }
    assert!(compared > 100, "{compared}");
    drop((one, parts));
    reference.stop().unwrap();
    for node in shards {
        node.stop().unwrap();
    }
}
