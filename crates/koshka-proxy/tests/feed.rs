//! The feed key through the proxy: a random social graph (skewed degrees), random events,
//! type masks and privacy rules over 8 friends shards and 8 news shards; every feed page
//! through the proxy equals a brute-force reference computed from all the data written, and no
//! event is ever shown to a viewer who may not see it.
//!
//! Run: `cargo test --release -p koshka-proxy --test feed`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use koshka_client::Client;
use koshka_engine::{Clock, ManualClock};
use koshka_proxy::config::{Config, Family};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const SHARDS: u32 = 8;
const USERS: u32 = 1200;
const HUBS: u32 = 4;
const GROUPS: i32 = 40;
const TYPES: u32 = 10;
const DAY: u32 = 86_400;
/// "Now" at the end of the writes: events are dated within the 10 days before.
const NOW: u32 = 1_800_000_000;
const FEED_READS_MIN: u64 = 10_000;

#[derive(Debug, Clone, Copy)]
struct Ev {
    date: u32,
    author: i32,
    id: u32,
    kind: u32,
    fields: [i64; 5],
}

/// Everything written, for the reference.
#[derive(Default)]
struct World {
    friends: HashMap<u32, BTreeSet<u32>>,
    /// (owner, type) → rule string (absent: no rule stored).
    rules: HashMap<(u32, u32), String>,
    masks: HashMap<i32, u32>,
    events: HashMap<i32, Vec<Ev>>,
}

impl World {
    fn friends_of(&self, u: u32) -> &BTreeSet<u32> {
        static EMPTY: BTreeSet<u32> = BTreeSet::new();
        self.friends.get(&u).unwrap_or(&EMPTY)
    }

    fn common(&self, a: u32, b: u32) -> bool {
        let (fa, fb) = (self.friends_of(a), self.friends_of(b));
        fa.iter().any(|x| fb.contains(x))
    }

    /// Brute-force privacy: may `viewer` see `owner`'s events of type `kind`?
    fn may_see(&self, viewer: u32, owner: i32, kind: u32) -> bool {
        let Ok(owner) = u32::try_from(owner) else {
            return true; // groups have no privacy rules
        };
        if viewer == owner {
            return true;
        }
        let Some(rules) = self.rules.get(&(owner, kind)) else {
            return true; // no rule: the default shows
        };
        let friend = self.friends_of(owner).contains(&viewer);
        let bytes = rules.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let allow = bytes[i] == b'+' || bytes[i] == b'*';
            let what = bytes[i];
            i += 1;
            let start = i;
            while i < bytes.len()
                && bytes[i] != b'+'
                && bytes[i] != b'-'
                && bytes[i] != b'*'
                && bytes[i] != b'/'
            {
                i += 1;
            }
            let arg = &rules[start..i];
            let matches = match (what, arg) {
                (b'+' | b'-', id) => id.parse::<u32>().unwrap() == viewer,
                (_, "0") => friend,
                (_, "G") => friend || self.common(viewer, owner),
                (_, "A") => true,
                other => panic!("rule {other:?} not generated"),
            };
            if matches {
                return allow;
            }
        }
        false
    }

    fn masked(&self, author: i32, kind: u32) -> bool {
        self.masks
            .get(&author)
            .is_some_and(|m| m & (1 << kind) != 0)
    }

    /// Every event `viewer` may see from `authors`, newest first by (date, author, id).
    fn feed(&self, viewer: u32, authors: &BTreeSet<i32>, types: u32) -> Vec<Ev> {
        let mut all: Vec<Ev> = authors
            .iter()
            .flat_map(|a| self.events.get(a).into_iter().flatten())
            .filter(|e| types & (1 << e.kind) != 0 && !self.masked(e.author, e.kind))
            .filter(|e| self.may_see(viewer, e.author, e.kind))
            .copied()
            .collect();
        all.sort_by_key(|e| std::cmp::Reverse((e.date, e.author, e.id)));
        all
    }
}

/// The expected reply for one page, built independently of the proxy's code.
fn expected_page(visible: &[Ev], cursor: Option<(u32, i32, u32)>, limit: usize) -> Value {
    let after: Vec<&Ev> = visible
        .iter()
        .filter(|e| cursor.is_none_or(|c| (e.date, e.author, e.id) < c))
        .take(limit + 1)
        .collect();
    let next = (after.len() > limit).then(|| {
        let e = after[limit - 1];
        format!("{},{},{}", e.date, e.author, e.id)
    });
    let page = &after[..after.len().min(limit)];
    let mut order: Vec<(i32, u32, u32)> = Vec::new();
    let mut groups: BTreeMap<(i32, u32, u32), Vec<&Ev>> = BTreeMap::new();
    for e in page {
        let g = (e.author, e.kind, e.date / DAY);
        if !groups.contains_key(&g) {
            order.push(g);
        }
        groups.entry(g).or_default().push(e);
    }
    let items: Vec<Value> = order
        .iter()
        .map(|g| {
            let list = &groups[g];
            json!({
                "id": format!("{}_{}_{}", g.0, g.1, g.2),
                "author": g.0,
                "type": g.1,
                "date": list[0].date,
                "count": list.len(),
                "events": list.iter().map(|e| json!({
                    "id": e.id, "date": e.date, "user": e.fields[0], "group": e.fields[1],
                    "owner": e.fields[2], "place": e.fields[3], "item": e.fields[4],
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "items": items, "next": next })
}

fn node_config(dir: &std::path::Path, index: u32) -> koshka_node::config::Config {
    let mut config = common::node_config(dir, index, SHARDS);
    config.engines.enabled = vec!["friends".into(), "news".into()];
    config
}

async fn pipeline(client: &mut Client, commands: &[Vec<u8>], expect: &[u8]) {
    for chunk in commands.chunks(500) {
        let bytes: Vec<u8> = chunk.concat();
        let replies = client.send_raw_multi(&bytes, chunk.len()).await.unwrap();
        for r in replies {
            assert_eq!(r, expect, "{}", String::from_utf8_lossy(&r));
        }
    }
}

fn set(key: &str, value: &str) -> Vec<u8> {
    format!("set {key} 0 0 {}\r\n{value}\r\n", value.len()).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_pages_match_the_reference_and_never_leak() {
    let started = std::time::Instant::now();
    let mut rng = StdRng::seed_from_u64(0xFEED_2026);
    let clock = Arc::new(ManualClock::new(NOW - 20 * DAY));
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let dirs: Vec<_> = (0..SHARDS).map(|_| tempfile::tempdir().unwrap()).collect();
    let registry = koshka_node::registry::builtin();
    let nodes: Vec<_> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let config = node_config(d.path(), u32::try_from(i).unwrap());
            koshka_node::start_with_clock(config, &registry, dyn_clock.clone()).unwrap()
        })
        .collect();
    let mut config = Config::default();
    config.proxy.get_timeout_ms = 5000;
    config.proxy.set_timeout_ms = 5000;
    for family in [Family::Friends, Family::News] {
        config.clusters.push(common::cluster(
            family,
            nodes
                .iter()
                .map(|n| n.addr(family.name()).unwrap().to_string())
                .collect(),
        ));
    }
    let proxy = koshka_proxy::start(config).unwrap();
    let news_addr = proxy.addr("news").unwrap();
    let mut world = World::default();

    // The graph: most users have 5..40 friends, a few hubs hundreds.
    let mut edges: BTreeSet<(u32, u32)> = BTreeSet::new();
    for u in 1..=USERS {
        let degree = if u <= HUBS {
            rng.gen_range(300..700)
        } else {
            rng.gen_range(3..20)
        };
        for _ in 0..degree {
            let f = rng.gen_range(1..=USERS);
            if f != u {
                edges.insert((u.min(f), u.max(f)));
            }
        }
    }
    let mut halves: Vec<Vec<Vec<u8>>> = vec![Vec::new(); SHARDS as usize];
    for &(a, b) in &edges {
        world.friends.entry(a).or_default().insert(b);
        world.friends.entry(b).or_default().insert(a);
        halves[(a % SHARDS) as usize].push(set(&format!("friend_half{a}_{b}"), "1"));
        halves[(b % SHARDS) as usize].push(set(&format!("friend_half{b}_{a}"), "1"));
    }
    // Privacy rules for some (user, type): through the proxy's friends port.
    let mut friends_client = Client::connect(proxy.addr("friends").unwrap())
        .await
        .unwrap();
    let mut rule_writes = Vec::new();
    for u in 1..=USERS {
        for kind in 1..=TYPES {
            if rng.gen_bool(0.7) {
                continue;
            }
            let friends: Vec<u32> = world.friends_of(u).iter().copied().collect();
            let someone = friends.choose(&mut rng).copied().unwrap_or(USERS + 1);
            let stranger = rng.gen_range(1..=USERS);
            let rules = match rng.gen_range(0..9) {
                0 => "*A".to_string(),
                1 => "*0".to_string(),
                2 => "/0*A".to_string(),
                3 => "*G".to_string(),
                4 => "/G*A".to_string(),
                5 => format!("+{someone}"),
                6 => format!("-{someone}*0"),
                7 => format!("-{stranger}*G"),
                _ => String::new(),
            };
            rule_writes.push(set(&format!("privacy{u}_news{kind}"), &rules));
            world.rules.insert((u, kind), rules);
        }
    }
    for (shard, writes) in halves.iter().enumerate() {
        let mut c = Client::connect(nodes[shard].addr("friends").unwrap())
            .await
            .unwrap();
        pipeline(&mut c, writes, b"STORED\r\n").await;
    }
    pipeline(&mut friends_client, &rule_writes, b"STORED\r\n").await;

    // Events, written through the proxy's news port with the clock at their dates.
    let mut planned: Vec<(u32, i32, u32, [i64; 5])> = Vec::new();
    let authors: Vec<i32> = (1..=i32::try_from(USERS).unwrap())
        .chain(-GROUPS..=-1)
        .collect();
    for &a in &authors {
        let n = if rng.gen_bool(0.1) {
            0
        } else {
            rng.gen_range(1..12)
        };
        for _ in 0..n {
            // Dates bunch on a few instants per day so that same-second ties happen.
            let date = NOW - rng.gen_range(0..10) * DAY - rng.gen_range(0..40) * 97;
            let kind = rng.gen_range(1..=TYPES);
            let fields = [
                rng.gen_range(0..1000),
                rng.gen_range(-50..=0),
                i64::from(a),
                rng.gen_range(0..10),
                rng.gen_range(0..100_000),
            ];
            planned.push((date, a, kind, fields));
        }
    }
    planned.sort_by_key(|p| p.0);
    let mut news = Client::connect(news_addr).await.unwrap();
    let mut next_id: HashMap<i32, u32> = HashMap::new();
    let mut i = 0;
    while i < planned.len() {
        let date = planned[i].0;
        clock.set(date);
        let mut batch = Vec::new();
        while i < planned.len() && planned[i].0 == date {
            let (_, a, kind, f) = planned[i];
            let id = next_id.entry(a).or_insert(0);
            *id += 1;
            world.events.entry(a).or_default().push(Ev {
                date,
                author: a,
                id: *id,
                kind,
                fields: f,
            });
            batch.push(set(
                &format!("update{a}"),
                &format!("{kind},{},{},{},{},{}", f[0], f[1], f[2], f[3], f[4]),
            ));
            i += 1;
        }
        pipeline(&mut news, &batch, b"STORED\r\n").await;
    }
    clock.set(NOW + 1);
    // Type masks (hidden from friends) for some authors.
    let mut mask_writes = Vec::new();
    for &a in &authors {
        if rng.gen_bool(0.2) {
            let mask = 1 | (1u32 << rng.gen_range(1..=TYPES)) | (1u32 << rng.gen_range(1..=TYPES));
            world.masks.insert(a, mask);
            mask_writes.push(set(&format!("mask{a}"), &mask.to_string()));
        }
    }
    pipeline(&mut news, &mask_writes, b"STORED\r\n").await;
    eprintln!(
        "feed test: {} friendships, {} rules, {} events written in {:?}",
        edges.len(),
        world.rules.len(),
        planned.len(),
        started.elapsed()
    );

    // Feed reads: 4 clients in parallel, each paging through feeds of random viewers.
    let world = Arc::new(world);
    let reads = Arc::new(AtomicU64::new(0));
    let leaks = Arc::new(AtomicU64::new(0));
    let shown = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for worker in 0..4u64 {
        let (world, reads, leaks, shown) =
            (world.clone(), reads.clone(), leaks.clone(), shown.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(worker);
            let mut client = Client::connect(news_addr).await.unwrap();
            while reads.load(Ordering::Relaxed) < FEED_READS_MIN {
                let viewer = if rng.gen_bool(0.05) {
                    rng.gen_range(1..=HUBS)
                } else {
                    rng.gen_range(1..=USERS)
                };
                let explicit = rng.gen_bool(0.4);
                let authors: BTreeSet<i32> = if explicit {
                    let n = rng.gen_range(1..40);
                    (0..n)
                        .map(|_| {
                            if rng.gen_bool(0.15) {
                                -rng.gen_range(1..=GROUPS)
                            } else {
                                i32::try_from(rng.gen_range(1..=USERS)).unwrap()
                            }
                        })
                        .collect()
                } else {
                    world
                        .friends_of(viewer)
                        .iter()
                        .map(|&f| i32::try_from(f).unwrap())
                        .collect()
                };
                let types = if rng.gen_bool(0.2) {
                    (1u32 << rng.gen_range(1..=TYPES)) | (1u32 << rng.gen_range(1..=TYPES))
                } else {
                    u32::MAX
                };
                let visible = world.feed(viewer, &authors, types);
                let limit = rng.gen_range(1..=25usize);
                let mut cursor: Option<(u32, i32, u32)> = None;
                for _page in 0..6 {
                    let mut key = format!("feed{viewer}");
                    if types != u32::MAX {
                        key.push_str(&format!("_{types}"));
                    }
                    key.push_str(&format!("#{limit}"));
                    if let Some((d, a, id)) = cursor {
                        key.push_str(&format!(",{d},{a},{id}"));
                    }
                    if explicit {
                        let list: Vec<String> = authors.iter().map(i32::to_string).collect();
                        key.push_str(&format!(":{}", list.join(",")));
                    }
                    let item = client.get(&key).await.unwrap().expect(&key);
                    reads.fetch_add(1, Ordering::Relaxed);
                    let got: Value = serde_json::from_slice(&item.data).unwrap();
                    for it in got["items"].as_array().unwrap() {
                        let author = i32::try_from(it["author"].as_i64().unwrap()).unwrap();
                        let kind = u32::try_from(it["type"].as_u64().unwrap()).unwrap();
                        for _ in it["events"].as_array().unwrap() {
                            shown.fetch_add(1, Ordering::Relaxed);
                            if !authors.contains(&author)
                                || world.masked(author, kind)
                                || !world.may_see(viewer, author, kind)
                            {
                                leaks.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    let want = expected_page(&visible, cursor, limit);
                    assert_eq!(got, want, "viewer {viewer} key {key}");
                    match got["next"].as_str() {
                        None => break,
                        Some(next) => {
                            let p: Vec<&str> = next.split(',').collect();
                            cursor = Some((
                                p[0].parse().unwrap(),
                                p[1].parse().unwrap(),
                                p[2].parse().unwrap(),
                            ));
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (reads, leaks, shown) = (
        reads.load(Ordering::Relaxed),
        leaks.load(Ordering::Relaxed),
        shown.load(Ordering::Relaxed),
    );
    eprintln!(
        "feed test: {reads} feed reads, {shown} events shown, {leaks} leaks, {:?} in all",
        started.elapsed()
    );
    assert!(reads >= FEED_READS_MIN);
    assert!(
        shown > reads,
        "the feeds were mostly empty: the test proves little"
    );
    assert_eq!(leaks, 0);
    // The friend-of-a-friend step (answers 1/2 of the author's shard) was exercised.
    let mut c = Client::connect(news_addr).await.unwrap();
    let stats = c.stats(Some("proxy")).await.unwrap();
    let stat = |n: &str| -> u64 {
        stats
            .iter()
            .find(|(k, _)| k == n)
            .unwrap()
            .1
            .parse()
            .unwrap()
    };
    eprintln!(
        "feed test: {} privacy answers resolved by the friend-of-a-friend step",
        stat("proxy_privacy_resolved")
    );
    assert!(stat("proxy_privacy_resolved") > 100);
    assert!(stat("proxy_scatter_gathers") >= reads);
    drop(proxy);
    drop(nodes);
}

/// Bad feed keys answer `CLIENT_ERROR`; other news keys route by author.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_refuses_bad_keys_and_news_keys_route() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let registry = koshka_node::registry::builtin();
    let nodes: Vec<_> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut config = common::node_config(d.path(), u32::try_from(i).unwrap(), 2);
            config.engines.enabled = vec!["friends".into(), "news".into()];
            koshka_node::start(config, &registry).unwrap()
        })
        .collect();
    let mut config = Config::default();
    config.clusters.push(common::cluster(
        Family::News,
        nodes
            .iter()
            .map(|n| n.addr("news").unwrap().to_string())
            .collect(),
    ));
    let proxy = koshka_proxy::start(config.clone()).unwrap();
    let mut c = Client::connect(proxy.addr("news").unwrap()).await.unwrap();
    for key in [
        "feed0",
        "feed5#0",
        "feed5#1001",
        "feed5,1,2",
        "feed5:1,,2",
        "feed5x",
    ] {
        let reply = c
            .send_raw(format!("get {key}\r\n").as_bytes())
            .await
            .unwrap();
        assert!(
            reply.starts_with(b"CLIENT_ERROR "),
            "{key}: {}",
            String::from_utf8_lossy(&reply)
        );
    }
    // Without a friends cluster the feed says so.
    let reply = c.send_raw(b"get feed5\r\n").await.unwrap();
    assert!(
        reply.starts_with(b"CLIENT_ERROR "),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    // Events of authors on both shards, through the proxy; masks read back by author.
    for a in [1, 2, -3, -4] {
        assert_eq!(
            c.send_raw(&set(&format!("update{a}"), "1,1,0,1,0,5"))
                .await
                .unwrap(),
            b"STORED\r\n"
        );
        assert_eq!(
            c.send_raw(&set(&format!("mask{a}"), "8")).await.unwrap(),
            b"STORED\r\n"
        );
        let item = c.get(format!("mask{a}")).await.unwrap().unwrap();
        assert_eq!(item.data, b"9");
    }
    // Author 1 is a user: its privacy needs the friends cluster, which this map lacks.
    let reply = c.send_raw(b"get feed5#3:-3,-4,1\r\n").await.unwrap();
    assert!(
        reply.starts_with(b"CLIENT_ERROR "),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    // A group-only explicit feed needs no friends cluster.
    let item = c.get("feed5#1:-3,-4").await.unwrap().unwrap();
    let v: Value = serde_json::from_slice(&item.data).unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    assert!(v["next"].is_string());
    let item = c.get("feed5#2:-3,-4").await.unwrap().unwrap();
    let v: Value = serde_json::from_slice(&item.data).unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 2);
    assert!(v["next"].is_null());
    drop(proxy);
    drop(nodes);
}
