//! The lists family through the proxy: a random workload of entry, flag and value writes,
//! list and object deletions, temp lists and every read key, through the proxy over 8 shards
//! and to one node holding everything (same clock, so the same dates): every reply is the same
//! byte for byte. Plus the proxy's own rules: `object_lists` through the proxy, a dead shard,
//! and the cache tier refused for lists.
//!
//! Run: `cargo test --release -p koshka-proxy --test lists`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::sync::Arc;

use koshka_client::Client;
use koshka_engine::{Clock, ManualClock};
use koshka_proxy::config::{Config, Family};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SHARDS: u32 = 8;
/// Lists `-LISTS..=-1` (groups' member lists) and `1..=LISTS` (users' follows).
const LISTS: i32 = 12;
const OBJECTS: i32 = 30;
const STEPS: usize = 4000;

fn node(
    dir: &std::path::Path,
    index: u32,
    count: u32,
    clock: &Arc<dyn Clock>,
) -> koshka_node::Running {
    let mut config = common::node_config(dir, index, count);
    config.engines.enabled = vec!["lists".into()];
    let registry = koshka_node::registry::builtin();
    koshka_node::start_with_clock(config, &registry, clock.clone()).unwrap()
}

fn set(key: &str, value: &str) -> Vec<u8> {
    format!("set {key} 0 0 {}\r\n{value}\r\n", value.len()).into_bytes()
}

fn id(rng: &mut StdRng, max: i32) -> i32 {
    let n = rng.gen_range(1..=max);
    if rng.gen_bool(0.5) {
        -n
    } else {
        n
    }
}

fn ids(rng: &mut StdRng) -> String {
    let n = rng.gen_range(0..12);
    (0..n)
        .map(|_| id(rng, OBJECTS).to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// `_and:xor`, `,mode`, `#limit[,offset]`, each sometimes.
fn select(rng: &mut StdRng) -> String {
    let mut key = String::new();
    if rng.gen_bool(0.3) {
        key.push_str(&format!("_{}:{}", rng.gen_range(0..8), rng.gen_range(0..8)));
    }
    if rng.gen_bool(0.5) {
        let fields = [0, 8, 16, 32, 56][rng.gen_range(0..5)];
        key.push_str(&format!(",{}", rng.gen_range(0..6) + fields));
    }
    key
}

fn slice(rng: &mut StdRng) -> String {
    match rng.gen_range(0..4) {
        0 => String::new(),
        1 => format!("#{}", rng.gen_range(0..6)),
        _ => format!("#{},{}", rng.gen_range(0..8), rng.gen_range(0..6)),
    }
}

/// A random read key of the lists grammar.
fn read_key(rng: &mut StdRng) -> String {
    let (list, object) = (id(rng, LISTS), id(rng, OBJECTS));
    match rng.gen_range(0..10) {
        0 => format!("entry{list}_{object}"),
        1 => format!("flags{list}_{object}"),
        2 => format!("value{list}_{object}"),
        3 => format!("list{list}{}{}", select(rng), slice(rng)),
        4 => {
            let filter = if rng.gen_bool(0.4) {
                format!("_{}:{}", rng.gen_range(0..8), rng.gen_range(0..8))
            } else {
                String::new()
            };
            format!("count{list}{filter}")
        }
        5 | 6 => {
            let name = if rng.gen_bool(0.5) {
                "intersect"
            } else {
                "subtract"
            };
            let given = if rng.gen_bool(0.5) {
                format!("-{}", ["a", "b"][rng.gen_range(0..2)])
            } else {
                ids(rng)
            };
            format!("{name}{list}{}:{given}{}", select(rng), slice(rng))
        }
        _ => format!("object_lists{object}{}", slice(rng)),
    }
}

/// A reply with its `VALUE` blocks sorted: the proxy streams a multi-get's values as the
/// shards answer, a node in key order.
fn blocks(reply: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(reply);
    let lines: Vec<&str> = text.split_terminator("\r\n").collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].starts_with("VALUE ") && i + 1 < lines.len() {
            out.push(format!("{}\n{}", lines[i], lines[i + 1]));
            i += 2;
        } else {
            out.push(lines[i].to_string());
            i += 1;
        }
    }
    let values = out.iter().take_while(|b| b.starts_with("VALUE ")).count();
    out[..values].sort();
    out
}

/// Sends `request` to both; their replies must match. Returns how many of its values are not
/// empty lists (`0`).
async fn same(via: &mut Client, one: &mut Client, request: &[u8], seen: &mut usize) -> usize {
    let a = via.send_raw(request).await.unwrap();
    let b = one.send_raw(request).await.unwrap();
    assert_eq!(
        blocks(&a),
        blocks(&b),
        "request {:?}",
        String::from_utf8_lossy(request)
    );
    *seen += 1;
    blocks(&a)
        .iter()
        .filter(|b| b.starts_with("VALUE ") && !b.ends_with("\n0"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_through_the_proxy_answer_as_one_node() {
    let clock = Arc::new(ManualClock::new(1_700_000_000));
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let dirs: Vec<_> = (0..=SHARDS).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes: Vec<_> = (0..SHARDS)
        .map(|i| node(dirs[i as usize].path(), i, SHARDS, &dyn_clock))
        .collect();
    let single = node(dirs[SHARDS as usize].path(), 0, 1, &dyn_clock);
    let mut config = Config::default();
    config.clusters.push(common::cluster(
        Family::Lists,
        nodes
            .iter()
            .map(|n| n.addr("lists").unwrap().to_string())
            .collect(),
    ));
    let proxy = koshka_proxy::start(config).unwrap();
    let mut via = Client::connect(proxy.addr("lists").unwrap()).await.unwrap();
    let mut one = Client::connect(single.addr("lists").unwrap())
        .await
        .unwrap();
    let mut rng = StdRng::seed_from_u64(0x11575);
    let (mut reads, mut writes, mut values) = (0usize, 0usize, 0usize);
    // Both temp lists exist from the start: a multi-get naming a missing one fails whole on
    // a node but key by key through the proxy (docs/proxy.md), which is not what this compares.
    for tag in ["a", "b"] {
        same(
            &mut via,
            &mut one,
            &set(&format!("temp{tag}"), "1,-2,3"),
            &mut writes,
        )
        .await;
    }
    for step in 0..STEPS {
        if step % 7 == 0 {
            clock.set(clock.now() + rng.gen_range(0..3));
        }
        let (list, object) = (id(&mut rng, LISTS), id(&mut rng, OBJECTS));
        let request: Vec<u8> = match rng.gen_range(0..100) {
            0..=29 => {
                let value = if rng.gen_bool(0.5) {
                    format!("{},{}", rng.gen_range(0..8), rng.gen_range(-50..50))
                } else {
                    rng.gen_range(0..8).to_string()
                };
                set(&format!("entry{list}_{object}"), &value)
            }
            30..=33 => set(
                &format!("flags{list}_{object}"),
                &rng.gen_range(0..8).to_string(),
            ),
            34..=36 => set(
                &format!("value{list}_{object}"),
                &rng.gen_range(-100..100).to_string(),
            ),
            37..=40 => {
                let verb = if rng.gen_bool(0.5) { "incr" } else { "decr" };
                let name = if rng.gen_bool(0.5) { "flags" } else { "value" };
                format!("{verb} {name}{list}_{object} {}\r\n", rng.gen_range(0..8)).into_bytes()
            }
            41..=44 => format!("delete entry{list}_{object}\r\n").into_bytes(),
            45 => format!("delete list{list}\r\n").into_bytes(),
            46 => format!("delete object{object}\r\n").into_bytes(),
            47..=49 => set(
                &format!("temp{}", ["a", "b"][rng.gen_range(0..2)]),
                &ids(&mut rng),
            ),
            50..=89 => format!("get {}\r\n", read_key(&mut rng)).into_bytes(),
            // A multi-get spanning shards.
            _ => {
                let keys: Vec<String> = (0..rng.gen_range(2..7))
                    .map(|_| read_key(&mut rng))
                    .collect();
                format!("get {}\r\n", keys.join(" ")).into_bytes()
            }
        };
        if request.starts_with(b"get ") {
            values += same(&mut via, &mut one, &request, &mut reads).await;
        } else {
            same(&mut via, &mut one, &request, &mut writes).await;
        }
    }
    // Every list read once more at the end, with all fields.
    for list in (-LISTS..=LISTS).filter(|l| *l != 0) {
        same(
            &mut via,
            &mut one,
            format!("get list{list},59\r\n").as_bytes(),
            &mut reads,
        )
        .await;
    }
    let mut probe = Client::connect(single.addr("lists").unwrap())
        .await
        .unwrap();
    let stats = probe.stats(None).await.unwrap();
    let entries: u64 = stats
        .iter()
        .find(|(k, _)| k == "lists_entries")
        .unwrap()
        .1
        .parse()
        .unwrap();
    eprintln!(
        "lists through the proxy: {writes} writes, {reads} gets with {values} non-empty values, \
         {entries} entries at the end"
    );
    assert!(
        entries > 100,
        "the lists were mostly empty: the test proves little"
    );
    assert!(writes > STEPS / 3 && reads > STEPS / 3);
    assert!(
        values > reads / 2,
        "most reads found nothing: {values} of {reads}"
    );
}

/// `object_lists` past the proxy's window, temp lists of another connection, and a lists
/// cluster with a cache tier: clear errors. A dead shard: `object_lists` answers from the
/// others and says so (`#last_complete_count`), `delete object…` answers `SERVER_ERROR`, and
/// keys of lists on live shards are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_edges_through_the_proxy() {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(1_700_000_000));
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes: Vec<_> = (0..4u32)
        .map(|i| Some(node(dirs[i as usize].path(), i, 4, &clock)))
        .collect();
    let mut config = Config::default();
    config.proxy.get_timeout_ms = 500;
    config.proxy.set_timeout_ms = 500;
    let mut lists = common::cluster(
        Family::Lists,
        nodes
            .iter()
            .map(|n| n.as_ref().unwrap().addr("lists").unwrap().to_string())
            .collect(),
    );
    let mut cached = config.clone();
    lists.cache = vec!["list".into()];
    cached.clusters.push(lists.clone());
    cached.cache.servers = vec!["127.0.0.1:1".into()];
    let Err(refused) = koshka_proxy::start(cached) else {
        panic!("a lists cluster with a cache tier started");
    };
    assert!(
        refused.to_string().contains("does not front lists"),
        "{refused}"
    );
    lists.cache.clear();
    config.clusters.push(lists);
    let proxy = koshka_proxy::start(config).unwrap();
    let addr = proxy.addr("lists").unwrap();
    let mut c = Client::connect(addr).await.unwrap();
    // Object 5 in lists 1..=8 (two per shard).
    for list in 1..=8 {
        let reply = c
            .send_raw(&set(&format!("entry{list}_5"), "1"))
            .await
            .unwrap();
        assert_eq!(reply, b"STORED\r\n");
    }
    let get = |key: &str| format!("get {key}\r\n").into_bytes();
    let value = |reply: Vec<u8>| {
        let text = String::from_utf8(reply).unwrap();
        text.lines().nth(1).unwrap_or_default().to_string()
    };
    assert_eq!(
        value(c.send_raw(&get("object_lists5")).await.unwrap()),
        "8,1,2,3,4,5,6,7,8"
    );
    assert_eq!(
        value(c.send_raw(&get("object_lists5#3,4")).await.unwrap()),
        "8,5,6,7"
    );
    let limit = koshka_proxy::OBJECT_LISTS_WINDOW_MAX;
    let reply = c
        .send_raw(&get(&format!("object_lists5#{limit},1")))
        .await
        .unwrap();
    assert!(
        reply.starts_with(b"CLIENT_ERROR object_lists through the proxy: offset + limit"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    let reply = c
        .send_raw(&get(&format!("object_lists5#{limit}")))
        .await
        .unwrap();
    assert!(reply.starts_with(b"VALUE"));
    // A temp list belongs to its connection, on the proxy as on a node.
    assert_eq!(
        c.send_raw(&set("tempmine", "5,6")).await.unwrap(),
        b"STORED\r\n"
    );
    assert_eq!(
        value(c.send_raw(&get("intersect3:-mine")).await.unwrap()),
        "1,5"
    );
    let mut other = Client::connect(addr).await.unwrap();
    assert_eq!(
        other.send_raw(&get("intersect3:-mine")).await.unwrap(),
        b"CLIENT_ERROR no temp list mine on this connection\r\n"
    );
    // Shard 1 (lists 1 and 5) dies.
    nodes[1].take().unwrap().stop().unwrap();
    let reply = c.send_raw(&get("object_lists5")).await.unwrap();
    assert_eq!(value(reply), "6,2,3,4,6,7,8");
    assert_eq!(
        value(c.send_raw(&get("#last_complete_count")).await.unwrap()),
        "3"
    );
    assert_eq!(value(c.send_raw(&get("list2")).await.unwrap()), "1,5");
    let reply = c.send_raw(b"delete object5\r\n").await.unwrap();
    assert!(
        reply.starts_with(b"SERVER_ERROR"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    // The live shards deleted theirs.
    assert_eq!(value(c.send_raw(&get("list2")).await.unwrap()), "0");
    let reply = c.send_raw(&set("entry5_9", "1")).await.unwrap();
    assert!(reply.starts_with(b"SERVER_ERROR"));
    drop(proxy);
}
