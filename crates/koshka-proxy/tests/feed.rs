//! The feed key through the proxy: a random social graph (skewed degrees), follow lists
//! (groups and people, on 8 lists shards), random events, type masks and privacy rules over 8
//! friends shards and 8 news shards; every feed page
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
    /// Whom each user follows (`list<user>` of the lists cluster).
    follows: HashMap<u32, BTreeSet<i32>>,
}

impl World {
    fn friends_of(&self, u: u32) -> &BTreeSet<u32> {
        static EMPTY: BTreeSet<u32> = BTreeSet::new();
        self.friends.get(&u).unwrap_or(&EMPTY)
    }

    /// The authors of `viewer`'s feed when the key lists none: friends and follows.
    fn authors_of(&self, viewer: u32) -> BTreeSet<i32> {
        self.friends_of(viewer)
            .iter()
            .map(|&f| i32::try_from(f).unwrap())
            .chain(self.follows.get(&viewer).into_iter().flatten().copied())
            .collect()
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
    config.engines.enabled = vec!["friends".into(), "news".into(), "lists".into()];
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
    for family in [Family::Friends, Family::News, Family::Lists] {
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
    // Follows: most users follow a few groups, some also people who are not their friends.
    let mut follow_writes = Vec::new();
    for u in 1..=USERS {
        for _ in 0..rng.gen_range(0..4) {
            let object = if rng.gen_bool(0.7) {
                -rng.gen_range(1..=GROUPS)
            } else {
                i32::try_from(rng.gen_range(1..=USERS)).unwrap()
            };
            if world.follows.entry(u).or_default().insert(object) {
                follow_writes.push(set(&format!("entry{u}_{object}"), "0"));
            }
        }
    }
    let mut lists_client = Client::connect(proxy.addr("lists").unwrap()).await.unwrap();
    pipeline(&mut lists_client, &follow_writes, b"STORED\r\n").await;

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
                    world.authors_of(viewer)
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

/// Everything a small world needs: nodes, a proxy, the reference and its clients.
struct Small {
    clock: Arc<ManualClock>,
    proxy: koshka_proxy::Running,
    nodes: Vec<koshka_node::Running>,
    _dirs: Vec<tempfile::TempDir>,
    world: World,
    next_id: HashMap<i32, u32>,
    friends: Client,
    news: Client,
    lists: Client,
}

/// A group (often) or a person to follow.
fn random_followed(rng: &mut StdRng, users: u32) -> i32 {
    if rng.gen_bool(0.7) {
        -rng.gen_range(1..=5)
    } else {
        i32::try_from(rng.gen_range(1..=users)).unwrap()
    }
}

/// A small random world (`users` users, 8 shards), written through the proxy with the feed
/// cache TTL `ttl_ms`. Users `1..=heavy` write more events than an author head holds (so
/// feeds are also assembled shard by shard, and from heads that are not whole).
async fn small_world(users: u32, heavy: u32, ttl_ms: u64, seed: u64) -> Small {
    let mut rng = StdRng::seed_from_u64(seed);
    let clock = Arc::new(ManualClock::new(NOW - 20 * DAY));
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let registry = koshka_node::registry::builtin();
    let dirs: Vec<_> = (0..SHARDS).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes: Vec<_> = (0..SHARDS)
        .zip(&dirs)
        .map(|(i, dir)| {
            koshka_node::start_with_clock(node_config(dir.path(), i), &registry, dyn_clock.clone())
                .unwrap()
        })
        .collect();
    let mut config = Config::default();
    config.proxy.get_timeout_ms = 5000;
    config.proxy.set_timeout_ms = 5000;
    config.feed.cache_ttl_ms = ttl_ms;
    for family in [Family::Friends, Family::News, Family::Lists] {
        config.clusters.push(common::cluster(
            family,
            nodes
                .iter()
                .map(|n| n.addr(family.name()).unwrap().to_string())
                .collect(),
        ));
    }
    let proxy = koshka_proxy::start(config).unwrap();
    let mut friends = Client::connect(proxy.addr("friends").unwrap())
        .await
        .unwrap();
    let news = Client::connect(proxy.addr("news").unwrap()).await.unwrap();
    let mut lists = Client::connect(proxy.addr("lists").unwrap()).await.unwrap();
    let mut world = World::default();
    let mut writes = Vec::new();
    for u in 1..=users {
        for _ in 0..rng.gen_range(2..8) {
            let f = rng.gen_range(1..=users);
            if f != u && world.friends.entry(u).or_default().insert(f) {
                world.friends.entry(f).or_default().insert(u);
                writes.push(set(&format!("friend{u}_{f}"), "1"));
            }
        }
    }
    pipeline(&mut friends, &writes, b"STORED\r\n").await;
    let mut follows = Vec::new();
    for u in 1..=users {
        if rng.gen_bool(0.5) {
            let object = random_followed(&mut rng, users);
            if world.follows.entry(u).or_default().insert(object) {
                follows.push(set(&format!("entry{u}_{object}"), "0"));
            }
        }
    }
    pipeline(&mut lists, &follows, b"STORED\r\n").await;
    let mut small = Small {
        clock,
        proxy,
        nodes,
        _dirs: dirs,
        world,
        next_id: HashMap::new(),
        friends,
        news,
        lists,
    };
    for u in 1..=users {
        for kind in 1..=TYPES {
            if rng.gen_bool(0.3) {
                let rules = random_rules(&mut rng, &small.world, u, users);
                small.rule(u, kind, &rules).await;
            }
        }
    }
    let mut date = NOW - 5 * DAY;
    for _ in 0..users * 6 + heavy * 60 {
        date += rng.gen_range(0..300);
        let author = if rng.gen_bool(0.1) {
            -rng.gen_range(1..=5)
        } else if heavy > 0
            && rng.gen_bool(f64::from(heavy * 60) / f64::from(users * 6 + heavy * 60))
        {
            i32::try_from(rng.gen_range(1..=heavy)).unwrap()
        } else {
            i32::try_from(rng.gen_range(1..=users)).unwrap()
        };
        small.event(author, rng.gen_range(1..=TYPES), date).await;
    }
    small.clock.set(date + 1);
    small
}

fn random_rules(rng: &mut StdRng, world: &World, u: u32, users: u32) -> String {
    let friends: Vec<u32> = world.friends_of(u).iter().copied().collect();
    let someone = friends.choose(rng).copied().unwrap_or(users + 1);
    match rng.gen_range(0..8) {
        0 => "*A".to_string(),
        1 => "*0".to_string(),
        2 => "/0*A".to_string(),
        3 => "*G".to_string(),
        4 => "/G*A".to_string(),
        5 => format!("+{someone}"),
        6 => format!("-{someone}*0"),
        _ => String::new(),
    }
}

impl Small {
    async fn rule(&mut self, u: u32, kind: u32, rules: &str) {
        let reply = self
            .friends
            .send_raw(&set(&format!("privacy{u}_news{kind}"), rules))
            .await
            .unwrap();
        assert_eq!(reply, b"STORED\r\n");
        self.world.rules.insert((u, kind), rules.to_string());
    }

    async fn event(&mut self, author: i32, kind: u32, date: u32) {
        self.clock.set(date);
        let fields = [i64::from(date % 1000), 0, i64::from(author), 1, 7];
        let reply = self
            .news
            .send_raw(&set(
                &format!("update{author}"),
                &format!("{kind},{},0,{author},1,7", fields[0]),
            ))
            .await
            .unwrap();
        assert_eq!(reply, b"STORED\r\n");
        let id = self.next_id.entry(author).or_insert(0);
        *id += 1;
        self.world.events.entry(author).or_default().push(Ev {
            date,
            author,
            id: *id,
            kind,
            fields,
        });
    }

    /// Follows (or, `follow` false, unfollows) `object` for `viewer` through the proxy.
    async fn follow(&mut self, viewer: u32, object: i32, follow: bool) {
        let (request, expect): (Vec<u8>, &[u8]) = if follow {
            (set(&format!("entry{viewer}_{object}"), "0"), b"STORED\r\n")
        } else {
            (
                format!("delete entry{viewer}_{object}\r\n").into_bytes(),
                b"DELETED\r\n",
            )
        };
        assert_eq!(self.lists.send_raw(&request).await.unwrap(), expect);
        let list = self.world.follows.entry(viewer).or_default();
        if follow {
            list.insert(object);
        } else {
            list.remove(&object);
        }
    }

    /// Reads `viewer`'s first 4 pages (his friends' and follows' feed, `limit` per page) through the proxy
    /// and checks them against the reference; returns the number of feed reads.
    async fn check(&self, client: &mut Client, viewer: u32, limit: usize, leaks: &mut u64) -> u64 {
        let authors = self.world.authors_of(viewer);
        let visible = self.world.feed(viewer, &authors, u32::MAX);
        let mut cursor: Option<(u32, i32, u32)> = None;
        let mut reads = 0;
        for _ in 0..4 {
            let mut key = format!("feed{viewer}#{limit}");
            if let Some((d, a, id)) = cursor {
                key.push_str(&format!(",{d},{a},{id}"));
            }
            let item = client.get(&key).await.unwrap().expect(&key);
            reads += 1;
            let got: Value = serde_json::from_slice(&item.data).unwrap();
            for it in got["items"].as_array().unwrap() {
                let author = i32::try_from(it["author"].as_i64().unwrap()).unwrap();
                let kind = u32::try_from(it["type"].as_u64().unwrap()).unwrap();
                if !authors.contains(&author)
                    || self.world.masked(author, kind)
                    || !self.world.may_see(viewer, author, kind)
                {
                    *leaks += 1;
                }
            }
            assert_eq!(
                got,
                expected_page(&visible, cursor, limit),
                "viewer {viewer} key {key}"
            );
            let Some(next) = got["next"].as_str() else {
                break;
            };
            let p: Vec<&str> = next.split(',').collect();
            cursor = Some((
                p[0].parse().unwrap(),
                p[1].parse().unwrap(),
                p[2].parse().unwrap(),
            ));
        }
        reads
    }
}

impl Small {
    /// The viewer's first page equals the reference (no assertion).
    async fn check_soft(
        &self,
        client: &mut Client,
        viewer: u32,
        limit: usize,
        _n: &mut u64,
    ) -> bool {
        let authors = self.world.authors_of(viewer);
        let visible = self.world.feed(viewer, &authors, u32::MAX);
        let key = format!("feed{viewer}#{limit}");
        let item = client.get(&key).await.unwrap().expect(&key);
        let got: Value = serde_json::from_slice(&item.data).unwrap();
        got == expected_page(&visible, None, limit)
    }
}

async fn proxy_stat(addr: std::net::SocketAddr, name: &str) -> u64 {
    let mut c = Client::connect(addr).await.unwrap();
    let stats = c.stats(Some("proxy")).await.unwrap();
    stats
        .iter()
        .find(|(k, _)| k == name)
        .unwrap()
        .1
        .parse()
        .unwrap()
}

/// With the feed cache on (a TTL far longer than the test), privacy rule changes,
/// unfriendings, befriendings, new events and type masks written through the proxy are
/// interleaved with feed reads: after every write the feeds of the viewers it concerns
/// (read before the write too, so their entries are cached) equal the reference, and nothing
/// is shown that may not be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_cache_follows_every_write_through_the_proxy() {
    const USERS_SMALL: u32 = 300;
    const WRITES: usize = 600;
    let mut s = small_world(USERS_SMALL, 15, 60_000, 0xCAC4E).await;
    let news_addr = s.proxy.addr("news").unwrap();
    let mut client = Client::connect(news_addr).await.unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let (mut reads, mut leaks) = (0u64, 0u64);
    let mut date = s.clock.now();
    for _ in 0..WRITES {
        // Whom the write concerns: an author (often a heavy one) and a few viewers who read
        // his events.
        let author = if rng.gen_bool(0.3) {
            rng.gen_range(1..=15)
        } else {
            rng.gen_range(1..=USERS_SMALL)
        };
        let mut viewers: Vec<u32> = s.world.friends_of(author).iter().copied().collect();
        viewers.shuffle(&mut rng);
        viewers.truncate(3);
        viewers.push(rng.gen_range(1..=USERS_SMALL));
        let limit = rng.gen_range(1..=12);
        for &v in &viewers {
            reads += s.check(&mut client, v, limit, &mut leaks).await;
        }
        match rng.gen_range(0..8) {
            6 => {
                // The viewer follows someone, or stops following.
                let v = viewers[0];
                let followed: Vec<i32> = s
                    .world
                    .follows
                    .get(&v)
                    .into_iter()
                    .flatten()
                    .copied()
                    .collect();
                match followed.choose(&mut rng) {
                    Some(&o) if rng.gen_bool(0.5) => s.follow(v, o, false).await,
                    _ => {
                        let o = random_followed(&mut rng, USERS_SMALL);
                        s.follow(v, o, true).await;
                    }
                }
            }
            7 if rng.gen_bool(0.1) => {
                // A group is gone: `delete object…` on every lists shard.
                let group = -rng.gen_range(1..=5);
                let followers: Vec<u32> = s
                    .world
                    .follows
                    .iter()
                    .filter(|(_, l)| l.contains(&group))
                    .map(|(&v, _)| v)
                    .collect();
                let reply = s
                    .lists
                    .send_raw(format!("delete object{group}\r\n").as_bytes())
                    .await
                    .unwrap();
                let expect: &[u8] = if followers.is_empty() {
                    b"NOT_FOUND\r\n"
                } else {
                    b"DELETED\r\n"
                };
                assert_eq!(reply, expect);
                for list in s.world.follows.values_mut() {
                    list.remove(&group);
                }
                viewers.extend(followers.into_iter().take(3));
            }
            0 | 1 => {
                let kind = rng.gen_range(1..=TYPES);
                let rules = random_rules(&mut rng, &s.world, author, USERS_SMALL);
                s.rule(author, kind, &rules).await;
            }
            2 => {
                let friends: Vec<u32> = s.world.friends_of(author).iter().copied().collect();
                if let Some(&f) = friends.choose(&mut rng) {
                    let reply = s
                        .friends
                        .send_raw(format!("delete friend{author}_{f}\r\n").as_bytes())
                        .await
                        .unwrap();
                    assert_eq!(reply, b"DELETED\r\n");
                    s.world.friends.get_mut(&author).unwrap().remove(&f);
                    s.world.friends.get_mut(&f).unwrap().remove(&author);
                    viewers.push(f);
                }
            }
            3 => {
                let f = rng.gen_range(1..=USERS_SMALL);
                if f != author && !s.world.friends_of(author).contains(&f) {
                    let reply = s
                        .friends
                        .send_raw(&set(&format!("friend{author}_{f}"), "1"))
                        .await
                        .unwrap();
                    assert_eq!(reply, b"STORED\r\n");
                    s.world.friends.entry(author).or_default().insert(f);
                    s.world.friends.entry(f).or_default().insert(author);
                    viewers.push(f);
                }
            }
            4 => {
                date += 1;
                let kind = rng.gen_range(1..=TYPES);
                s.event(i32::try_from(author).unwrap(), kind, date).await;
            }
            _ => {
                let a = i32::try_from(author).unwrap();
                let mask = 1 | (1u32 << rng.gen_range(1..=TYPES));
                let reply = s
                    .news
                    .send_raw(&set(&format!("mask{a}"), &mask.to_string()))
                    .await
                    .unwrap();
                assert_eq!(reply, b"STORED\r\n");
                s.world.masks.insert(a, mask);
            }
        }
        for &v in &viewers {
            reads += s.check(&mut client, v, limit, &mut leaks).await;
        }
    }
    // A feed read pipelined behind a new event on the same connection sees it (the write is
    // a barrier), though the viewer's feed was cached just before.
    let (viewer, f, kind) = (1..=USERS_SMALL)
        .find_map(|v| {
            let f = *s.world.friends_of(v).iter().next()?;
            let a = i32::try_from(f).unwrap();
            (1..=TYPES)
                .find(|&k| !s.world.masked(a, k) && s.world.may_see(v, a, k))
                .map(|k| (v, f, k))
        })
        .unwrap();
    s.check(&mut client, viewer, 5, &mut leaks).await;
    date += 1;
    s.clock.set(date);
    let mut bytes = set(&format!("update{f}"), &format!("{kind},5,0,5,1,7"));
    bytes.extend_from_slice(format!("get feed{viewer}#5\r\n").as_bytes());
    let replies = s.news.send_raw_multi(&bytes, 2).await.unwrap();
    assert_eq!(replies[0], b"STORED\r\n");
    let text = String::from_utf8_lossy(&replies[1]).into_owned();
    let id = s
        .next_id
        .get(&i32::try_from(f).unwrap())
        .copied()
        .unwrap_or(0)
        + 1;
    let event = format!("{{\"id\":{id},\"date\":{date},\"user\":5,\"group\":0,\"owner\":5,");
    assert!(text.contains(&event), "{event} not in {text}");
    let a = i32::try_from(f).unwrap();
    s.next_id.insert(a, id);
    s.world.events.entry(a).or_default().push(Ev {
        date,
        author: a,
        id,
        kind,
        fields: [5, 0, 5, 1, 7],
    });
    // Pages of HEAD_EVENTS events or more never come from the heads (and are still right).
    let before = proxy_stat(news_addr, "proxy_feed_cache_pages").await;
    let limit = koshka_proxy::feed_cache::HEAD_EVENTS as usize;
    reads += s.check(&mut client, viewer, limit, &mut leaks).await;
    assert_eq!(
        proxy_stat(news_addr, "proxy_feed_cache_pages").await,
        before
    );
    let stat = |n: &'static str| proxy_stat(news_addr, n);
    let (pages, hits, invalidations) = (
        stat("proxy_feed_cache_pages").await,
        stat("proxy_feed_cache_hits").await,
        proxy_stat(
            s.proxy.addr("friends").unwrap(),
            "proxy_feed_cache_invalidations",
        )
        .await
            + proxy_stat(
                s.proxy.addr("lists").unwrap(),
                "proxy_feed_cache_invalidations",
            )
            .await
            + stat("proxy_feed_cache_invalidations").await,
    );
    eprintln!(
        "feed cache test: {WRITES} writes, {reads} feed reads, {leaks} leaks, {pages} pages from \
         cached heads, {hits} cache hits, {invalidations} owners invalidated"
    );
    assert_eq!(leaks, 0);
    assert!(reads >= 4 * WRITES as u64);
    assert!(
        pages > reads / 4,
        "the cache was hardly used: {pages} of {reads}"
    );
    assert!(
        pages < reads,
        "every page came from cached heads: the shard path went untested"
    );
    assert!(hits > reads);
    assert!(invalidations >= WRITES as u64);
    drop(s);
}

/// Writes straight to a node bypass the proxy: the feed shows them at the latest once the
/// entries read before them are older than `cache_ttl_ms` (here 400 ms) — a hidden type, an
/// unfriending and a new event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_cache_sees_writes_straight_to_a_node_within_the_ttl() {
    const TTL_MS: u64 = 400;
    let mut s = small_world(60, 0, TTL_MS, 0x77_11).await;
    let news_addr = s.proxy.addr("news").unwrap();
    let mut client = Client::connect(news_addr).await.unwrap();
    let mut leaks = 0;
    let mut stale = 0;
    // A viewer with a friend whose events he sees.
    let (viewer, author, kind) = (1..=60u32)
        .find_map(|v| {
            let authors: BTreeSet<i32> = s.world.friends_of(v).iter().map(|&f| f as i32).collect();
            let feed = s.world.feed(v, &authors, u32::MAX);
            feed.first().map(|e| (v, e.author, e.kind))
        })
        .unwrap();
    let owner = u32::try_from(author).unwrap();
    let shard = (owner % SHARDS) as usize;
    let mut node_friends = Client::connect(s.nodes[shard].addr("friends").unwrap())
        .await
        .unwrap();
    // Each bypassing write, after the feed was read (and cached).
    for step in 0..3 {
        s.check(&mut client, viewer, 5, &mut leaks).await;
        let written = std::time::Instant::now();
        match step {
            0 => {
                // Only the owner may see `kind` now.
                let reply = node_friends
                    .send_raw(&set(&format!("privacy{owner}_news{kind}"), ""))
                    .await
                    .unwrap();
                assert_eq!(reply, b"STORED\r\n");
                s.world.rules.insert((owner, kind), String::new());
            }
            1 => {
                // The author unfriends the viewer (both halves, straight to their nodes).
                for (a, b) in [(owner, viewer), (viewer, owner)] {
                    let mut c =
                        Client::connect(s.nodes[(a % SHARDS) as usize].addr("friends").unwrap())
                            .await
                            .unwrap();
                    let reply = c
                        .send_raw(format!("delete friend_half{a}_{b}\r\n").as_bytes())
                        .await
                        .unwrap();
                    assert_eq!(reply, b"DELETED\r\n");
                }
                s.world.friends.get_mut(&owner).unwrap().remove(&viewer);
                s.world.friends.get_mut(&viewer).unwrap().remove(&owner);
            }
            _ => {
                // A new event of another friend, straight to his news node.
                let Some(&f) = s.world.friends_of(viewer).iter().next() else {
                    break;
                };
                let date = s.clock.now() + 100;
                s.clock.set(date);
                let mut c = Client::connect(s.nodes[(f % SHARDS) as usize].addr("news").unwrap())
                    .await
                    .unwrap();
                let reply = c
                    .send_raw(&set(
                        &format!("update{f}"),
                        &format!("1,{},0,{f},1,7", date % 1000),
                    ))
                    .await
                    .unwrap();
                assert_eq!(reply, b"STORED\r\n");
                let a = i32::try_from(f).unwrap();
                let id = s.next_id.entry(a).or_insert(0);
                *id += 1;
                s.world.events.entry(a).or_default().push(Ev {
                    date,
                    author: a,
                    id: *id,
                    kind: 1,
                    fields: [i64::from(date % 1000), 0, i64::from(f), 1, 7],
                });
            }
        }
        // Before the TTL the old page may still be served (and is, unless this machine
        // stalled); past it (measured from the write: every entry was read before it) the
        // reference holds.
        let mut peek = 0;
        let early = s.check_soft(&mut client, viewer, 5, &mut peek).await;
        if !early && written.elapsed() < std::time::Duration::from_millis(TTL_MS / 2) {
            stale += 1;
        }
        let wait = std::time::Duration::from_millis(TTL_MS + 20).saturating_sub(written.elapsed());
        tokio::time::sleep(wait).await;
        s.check(&mut client, viewer, 5, &mut leaks).await;
    }
    assert_eq!(leaks, 0);
    assert!(
        stale > 0,
        "no read before the TTL was stale: the cache was not exercised"
    );
    drop(s);
}
