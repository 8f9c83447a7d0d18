//! Feed benchmark (not run by default): a viewer with 300 friends over 8 news shards, 50
//! events per author, 20 events per page. Three ways to the same page:
//!
//! * **proxy**: `get feed1#20` on the proxy's news port (one round trip), with the feed cache
//!   on (the default `[feed] cache_ttl_ms`) and off (`cache_ttl_ms = 0`, a second proxy);
//! * **client**: the client assembles it from the nodes itself, as the proxy does (friends
//!   list; `set temp` + `raw_updates` on the 8 news shards in parallel; privacy checks on the
//!   8 friends shards in parallel; merge, grouping);
//! * **redis**: Redis 7, idiomatic model: a sorted set per author (score = date), the client
//!   reads `SMEMBERS friends:<viewer>`, then pipelines `ZREVRANGEBYSCORE feed:<a> +inf 0
//!   WITHSCORES LIMIT 0 21` per friend (score = date · 10⁵ + id) and merges (no privacy rules: Redis has none).
//!
//! Run: `cargo test --release -p koshka-proxy --test feed_bench -- --ignored --nocapture`
//! (`FEED_BENCH_SECONDS`, default 5, per measurement; `FEED_BENCH_CONNECTIONS`, default 8;
//! `FEED_BENCH_TTL_MS`, the cached proxy's `[feed] cache_ttl_ms`, default the proxy's own).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use koshka_client::Client;
use koshka_proxy::config::{Config, Family};
use koshka_proxy::feed::{parse_raw, render, Event};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const SHARDS: u32 = 8;
const VIEWER: u32 = 1;
const FRIENDS: u32 = 300;
const EVENTS: u32 = 50;
const LIMIT: usize = 20;

/// Memcached commands, one per entry.
type Commands = Vec<Vec<u8>>;

fn set(key: &str, value: &str) -> Vec<u8> {
    format!("set {key} 0 0 {}\r\n{value}\r\n", value.len()).into_bytes()
}

fn friend_ids() -> Vec<u32> {
    (0..FRIENDS).map(|i| 1000 + i * 7).collect()
}

async fn load(client: &mut Client, commands: &[Vec<u8>]) {
    for chunk in commands.chunks(500) {
        let replies = client
            .send_raw_multi(&chunk.concat(), chunk.len())
            .await
            .unwrap();
        for r in replies {
            assert_eq!(r, b"STORED\r\n", "{}", String::from_utf8_lossy(&r));
        }
    }
}

fn value_of(frame: &[u8]) -> Vec<u8> {
    // VALUE <key> <flags> <bytes>\r\n<data>\r\nEND\r\n
    let Some(line_end) = frame.windows(2).position(|w| w == b"\r\n") else {
        return Vec::new();
    };
    if !frame.starts_with(b"VALUE ") {
        return Vec::new();
    }
    let header = std::str::from_utf8(&frame[..line_end]).unwrap();
    let len: usize = header.rsplit(' ').next().unwrap().parse().unwrap();
    frame[line_end + 2..line_end + 2 + len].to_vec()
}

/// The client-side assembly against the nodes.
struct Direct {
    friends: Vec<Client>,
    news: Vec<Client>,
}

impl Direct {
    async fn feed(&mut self) -> Vec<u8> {
        let home = (VIEWER % SHARDS) as usize;
        let frame = self.friends[home]
            .send_raw(format!("get friends{VIEWER}\r\n").as_bytes())
            .await
            .unwrap();
        let list = value_of(&frame);
        let ids: Vec<i64> = std::str::from_utf8(&list)
            .unwrap()
            .split(',')
            .skip(1)
            .map(|s| s.parse().unwrap())
            .collect();
        let mut by_shard: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for id in &ids {
            by_shard
                .entry((id.unsigned_abs() % u64::from(SHARDS)) as usize)
                .or_default()
                .push(id.to_string());
        }
        let asks = self.news.iter_mut().enumerate().filter_map(|(shard, c)| {
            let authors = by_shard.get(&shard)?.join(",");
            let mut bytes = set("tempb", &authors);
            bytes.extend_from_slice(
                format!(
                    "get raw_updates4294967295_0,4294967295#{}:-b\r\n",
                    LIMIT + 1
                )
                .as_bytes(),
            );
            Some(async move { c.send_raw_multi(&bytes, 2).await.unwrap() })
        });
        let replies = futures_util::future::join_all(asks).await;
        let mut events: Vec<Event> = Vec::new();
        for r in replies {
            events.extend(parse_raw(&value_of(&r[1])).unwrap());
        }
        // Privacy checks of the (author, type) pairs, per friends shard.
        let mut pairs: BTreeMap<usize, BTreeMap<i32, Vec<u32>>> = BTreeMap::new();
        for e in &events {
            let kinds = pairs
                .entry((e.author.unsigned_abs() % SHARDS) as usize)
                .or_default()
                .entry(e.author)
                .or_default();
            if !kinds.contains(&e.kind) {
                kinds.push(e.kind);
            }
        }
        let checks = self
            .friends
            .iter_mut()
            .enumerate()
            .filter_map(|(shard, c)| {
                let authors = pairs.get(&shard)?;
                let mut bytes = Vec::new();
                for (a, kinds) in authors {
                    let keys: Vec<String> = kinds.iter().map(|k| format!("news{k}")).collect();
                    bytes.extend_from_slice(
                        format!("get {VIEWER}~{a}:{}\r\n", keys.join(",")).as_bytes(),
                    );
                }
                let n = authors.len();
                Some(async move {
                    let frames = c.send_raw_multi(&bytes, n).await.unwrap();
                    (shard, frames)
                })
            });
        let answers = futures_util::future::join_all(checks).await;
        let mut visible: BTreeMap<(i32, u32), bool> = BTreeMap::new();
        for (shard, frames) in answers {
            for ((a, kinds), frame) in pairs[&shard].iter().zip(frames) {
                let v = value_of(&frame);
                for (n, k) in kinds.iter().enumerate() {
                    visible.insert((*a, *k), matches!(v.get(n), None | Some(b'3' | b'?')));
                }
            }
        }
        events.retain(|e| visible[&(e.author, e.kind)]);
        events.sort_by_key(|e| std::cmp::Reverse((e.date, e.author, e.id)));
        let next = (events.len() > LIMIT).then(|| {
            let e = &events[LIMIT - 1];
            (e.date, e.author, e.id)
        });
        events.truncate(LIMIT);
        render(&events, next)
    }
}

/// Minimal RESP client for the Redis model.
struct Redis {
    stream: BufReader<TcpStream>,
}

fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

impl Redis {
    async fn line(&mut self) -> Vec<u8> {
        let mut line = Vec::new();
        self.stream.read_until(b'\n', &mut line).await.unwrap();
        assert!(line.ends_with(b"\r\n"), "redis closed the connection");
        line.truncate(line.len() - 2);
        line
    }

    /// One reply: simple, integer or a flat array of bulk strings.
    async fn reply(&mut self) -> Vec<Vec<u8>> {
        let line = self.line().await;
        match line[0] {
            b'*' => {
                let n: usize = std::str::from_utf8(&line[1..]).unwrap().parse().unwrap();
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    let head = self.line().await;
                    let len: usize = std::str::from_utf8(&head[1..]).unwrap().parse().unwrap();
                    let mut data = vec![0; len + 2];
                    self.stream.read_exact(&mut data).await.unwrap();
                    data.truncate(len);
                    items.push(data);
                }
                items
            }
            b'-' => panic!("redis: {}", String::from_utf8_lossy(&line)),
            _ => vec![line],
        }
    }

    async fn pipeline(&mut self, commands: &[Vec<u8>]) -> Vec<Vec<Vec<u8>>> {
        self.stream
            .get_mut()
            .write_all(&commands.concat())
            .await
            .unwrap();
        let mut out = Vec::with_capacity(commands.len());
        for _ in commands {
            out.push(self.reply().await);
        }
        out
    }

    async fn feed(&mut self) -> Vec<u8> {
        let friends = self
            .pipeline(&[resp(&["SMEMBERS", &format!("friends:{VIEWER}")])])
            .await
            .remove(0);
        let limit = (LIMIT + 1).to_string();
        let commands: Vec<Vec<u8>> = friends
            .iter()
            .map(|f| {
                let key = format!("feed:{}", String::from_utf8_lossy(f));
                resp(&[
                    "ZREVRANGEBYSCORE",
                    &key,
                    "+inf",
                    "0",
                    "WITHSCORES",
                    "LIMIT",
                    "0",
                    &limit,
                ])
            })
            .collect();
        let replies = self.pipeline(&commands).await;
        let mut events = Vec::new();
        for reply in replies {
            for pair in reply.chunks_exact(2) {
                let f: Vec<i64> = std::str::from_utf8(&pair[0])
                    .unwrap()
                    .split(',')
                    .map(|s| s.parse().unwrap())
                    .collect();
                events.push(Event {
                    date: u32::try_from(
                        std::str::from_utf8(&pair[1])
                            .unwrap()
                            .parse::<u64>()
                            .unwrap()
                            / 100_000,
                    )
                    .unwrap(),
                    author: i32::try_from(f[0]).unwrap(),
                    id: u32::try_from(f[1]).unwrap(),
                    kind: u32::try_from(f[2]).unwrap(),
                    fields: [f[3], f[4], f[5], f[6], f[7]],
                });
            }
        }
        events.sort_by_key(|e| std::cmp::Reverse((e.date, e.author, e.id)));
        let next = (events.len() > LIMIT).then(|| {
            let e = &events[LIMIT - 1];
            (e.date, e.author, e.id)
        });
        events.truncate(LIMIT);
        render(&events, next)
    }
}

struct RedisServer {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    fn start() -> Option<RedisServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let dir = tempfile::tempdir().ok()?;
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(RedisServer {
                    child,
                    port,
                    _dir: dir,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill(); // by PID: the child we spawned
        let _ = self.child.wait();
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let at = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[at].as_secs_f64() * 1e6
}

/// Runs `conns` workers for `seconds`; returns (feeds per second, p50 µs, p99 µs).
async fn measure<C, F, Fut>(conns: Vec<C>, seconds: f64, run: F) -> (f64, f64, f64)
where
    C: Send + 'static,
    F: Fn(C) -> Fut,
    Fut: std::future::Future<Output = Vec<Duration>> + Send + 'static,
{
    let start = Instant::now();
    let tasks: Vec<_> = conns.into_iter().map(|c| tokio::spawn(run(c))).collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64().max(seconds);
    all.sort();
    (all.len() as f64 / elapsed, pct(&all, 0.5), pct(&all, 0.99))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn feed_300_friends_8_shards() {
    let seconds: f64 = std::env::var("FEED_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let conns: usize = std::env::var("FEED_BENCH_CONNECTIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let dirs: Vec<_> = (0..SHARDS).map(|_| tempfile::tempdir().unwrap()).collect();
    let registry = koshka_node::registry::builtin();
    let nodes: Vec<_> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut config = common::node_config(d.path(), u32::try_from(i).unwrap(), SHARDS);
            config.engines.enabled = vec!["friends".into(), "news".into()];
            koshka_node::start(config, &registry).unwrap()
        })
        .collect();
    let mut config = Config::default();
    for family in [Family::Friends, Family::News] {
        config.clusters.push(common::cluster(
            family,
            nodes
                .iter()
                .map(|n| n.addr(family.name()).unwrap().to_string())
                .collect(),
        ));
    }
    let mut uncached = config.clone();
    uncached.feed.cache_ttl_ms = 0;
    if let Some(ttl) = std::env::var("FEED_BENCH_TTL_MS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        config.feed.cache_ttl_ms = ttl;
    }
    let proxy = koshka_proxy::start(config).unwrap();
    let news_addr = proxy.addr("news").unwrap();
    let proxy_off = koshka_proxy::start(uncached).unwrap();
    let news_off = proxy_off.addr("news").unwrap();
    let friends = friend_ids();
    let mut redis = RedisServer::start();
    let mut redis_load = Vec::new();
    // Friendships (both halves) and events, straight to the nodes.
    let mut by_shard: Vec<(Commands, Commands)> = vec![Default::default(); SHARDS as usize];
    for &f in &friends {
        by_shard[(VIEWER % SHARDS) as usize]
            .0
            .push(set(&format!("friend_half{VIEWER}_{f}"), "1"));
        by_shard[(f % SHARDS) as usize]
            .0
            .push(set(&format!("friend_half{f}_{VIEWER}"), "1"));
        redis_load.push(resp(&[
            "SADD",
            &format!("friends:{VIEWER}"),
            &f.to_string(),
        ]));
        for id in 1..=EVENTS {
            let kind = 1 + (f + id) % 10;
            let value = format!("{kind},{f},0,{f},{},{}", id % 5, f * 100 + id);
            by_shard[(f % SHARDS) as usize]
                .1
                .push(set(&format!("update{f}"), &value));
        }
    }
    for (shard, (friend_writes, event_writes)) in by_shard.iter().enumerate() {
        let mut c = Client::connect(nodes[shard].addr("friends").unwrap())
            .await
            .unwrap();
        load(&mut c, friend_writes).await;
        let mut c = Client::connect(nodes[shard].addr("news").unwrap())
            .await
            .unwrap();
        load(&mut c, event_writes).await;
    }
    // The Redis scores are the dates koshka gave the events (read back through the proxy).
    let mut client = Client::connect(news_addr).await.unwrap();
    let mut dated = Vec::new();
    for &f in &friends {
        let item = client
            .get(format!("raw_updates4294967295_0,4294967295#100:{f}"))
            .await
            .unwrap()
            .unwrap();
        for e in parse_raw(&item.data).unwrap() {
            let [user, group, owner, place, item] = e.fields;
            let member = format!(
                "{f},{},{},{user},{group},{owner},{place},{item}",
                e.id, e.kind
            );
            // Score: date and id, so that an author's same-second events keep their order.
            let score = u64::from(e.date) * 100_000 + u64::from(e.id);
            dated.push(resp(&[
                "ZADD",
                &format!("feed:{f}"),
                &score.to_string(),
                &member,
            ]));
        }
    }
    assert_eq!(dated.len(), (FRIENDS * EVENTS) as usize);
    let page = client
        .get(format!("feed{VIEWER}#{LIMIT}"))
        .await
        .unwrap()
        .unwrap()
        .data;
    let mut direct = Vec::new();
    for _ in 0..conns {
        let mut d = Direct {
            friends: Vec::new(),
            news: Vec::new(),
        };
        for n in &nodes {
            d.friends
                .push(Client::connect(n.addr("friends").unwrap()).await.unwrap());
            d.news
                .push(Client::connect(n.addr("news").unwrap()).await.unwrap());
        }
        direct.push(d);
    }
    assert_eq!(
        direct[0].feed().await,
        page,
        "the client-side assembly differs"
    );
    let mut off = Client::connect(news_off).await.unwrap();
    let key = format!("feed{VIEWER}#{LIMIT}");
    assert_eq!(off.get(&key).await.unwrap().unwrap().data, page);
    assert_eq!(client.get(&key).await.unwrap().unwrap().data, page);
    let mut rows = Vec::new();
    let deadline = move || Instant::now() + Duration::from_secs_f64(seconds);
    for (name, n) in [("1 connection", 1), ("many", conns)] {
        for (path, addr) in [
            ("proxy, feed cache on", news_addr),
            ("proxy, feed cache off", news_off),
        ] {
            let proxies = futures_util::future::join_all((0..n).map(|_| Client::connect(addr)))
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
            let key = key.clone();
            let r = measure(proxies, seconds, move |mut c: Client| {
                let key = key.clone();
                let end = deadline();
                async move {
                    let mut lat = Vec::new();
                    while Instant::now() < end {
                        let t = Instant::now();
                        c.get(&key).await.unwrap().unwrap();
                        lat.push(t.elapsed());
                    }
                    lat
                }
            })
            .await;
            rows.push((path, name, n, r));
        }
        let clients: Vec<Direct> = direct.drain(..n).collect();
        let r = measure(clients, seconds, move |mut d: Direct| {
            let end = deadline();
            async move {
                let mut lat = Vec::new();
                while Instant::now() < end {
                    let t = Instant::now();
                    d.feed().await;
                    lat.push(t.elapsed());
                }
                lat
            }
        })
        .await;
        rows.push(("client over the nodes", name, n, r));
        if n == 1 {
            for _ in 0..conns {
                let mut d = Direct {
                    friends: Vec::new(),
                    news: Vec::new(),
                };
                for node in &nodes {
                    d.friends.push(
                        Client::connect(node.addr("friends").unwrap())
                            .await
                            .unwrap(),
                    );
                    d.news
                        .push(Client::connect(node.addr("news").unwrap()).await.unwrap());
                }
                direct.push(d);
            }
        }
        if let Some(server) = &redis {
            let port = server.port;
            let mut rs = Vec::new();
            for _ in 0..n {
                let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                rs.push(Redis {
                    stream: BufReader::new(s),
                });
            }
            if name == "1 connection" {
                let r0 = &mut rs[0];
                for chunk in redis_load.chunks(1000).chain(dated.chunks(1000)) {
                    r0.pipeline(chunk).await;
                }
                let got = r0.feed().await;
                assert_eq!(
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(&page),
                    "the Redis model's page differs"
                );
            }
            let r = measure(rs, seconds, move |mut r: Redis| {
                let end = deadline();
                async move {
                    let mut lat = Vec::new();
                    while Instant::now() < end {
                        let t = Instant::now();
                        r.feed().await;
                        lat.push(t.elapsed());
                    }
                    lat
                }
            })
            .await;
            rows.push(("Redis 7 (zset per author)", name, n, r));
        }
    }
    println!("| path | connections | feeds/s | p50 µs | p99 µs |");
    println!("|---|---|---|---|---|");
    for (path, _, n, (rate, p50, p99)) in &rows {
        println!("| {path} | {n} | {rate:.0} | {p50:.0} | {p99:.0} |");
    }
    for (_, name, n, _) in rows.iter().filter(|r| r.0 == "client over the nodes") {
        let rate = |path: &str| {
            rows.iter()
                .find(|r| r.0 == path && r.1 == *name)
                .map_or(0.0, |r| r.3 .0)
        };
        let client = rate("client over the nodes");
        println!(
            "{n} connection(s): proxy/client throughput: cache on {:.2}x, cache off {:.2}x",
            rate("proxy, feed cache on") / client,
            rate("proxy, feed cache off") / client
        );
    }
    let mut stats = Client::connect(news_addr).await.unwrap();
    let text = String::from_utf8_lossy(&stats.send_raw(b"stats\r\n").await.unwrap()).into_owned();
    for line in text.lines().filter(|l| l.contains("feed_cache")) {
        println!("{line}");
    }
    if redis.is_none() {
        println!("(redis-server not found: Redis rows skipped)");
    }
    redis.take();
    drop(proxy);
    drop(proxy_off);
    drop(nodes);
}
