//! Global search through the proxy: real nodes running the `search` engine, a real proxy in
//! front, real sockets. Results over 8 shards equal a brute-force scan of every item (order,
//! totals, duplicates hidden) on Debian's Russian and English fortunes; item writes land on
//! their owner's shard; bad input answers `CLIENT_ERROR`; a dead shard gives a partial
//! answer in time, not a hang.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

// The brute-force reference is the search engine's own test model (one copy of the rules).
#[path = "../../koshka-search/tests/common/mod.rs"]
mod model;

use std::time::{Duration, Instant};

use common::{cluster, Relay, Shards};
use koshka_client::Client;
use koshka_keys::search::{By, Filter, Found, Order, Query, Search};
use koshka_keys::Encode;
use koshka_proxy::config::{Config, Family};
use model::{Model, ModelItem};

const FORTUNES_DIR: &str = "/usr/share/games/fortunes";
const FORTUNES_RU_DIR: &str = "/usr/share/games/fortunes/ru";
/// Sentences taken from each language.
const PER_LANGUAGE: usize = 1500;
/// Searches compared with the reference.
const QUERIES: usize = 300;
/// Writes pipelined per round trip while loading.
const WRITE_BATCH: usize = 200;

/// `count` nodes that also run the search engine.
fn search_shards(count: u32) -> Shards {
    Shards::start_configured(count, |config| {
        config.engines.enabled.push("search".into());
    })
}

fn proxy_over(addrs: Vec<String>, get_timeout_ms: u64) -> koshka_proxy::Running {
    let mut config = Config::default();
    config.proxy.get_timeout_ms = get_timeout_ms;
    config.proxy.set_timeout_ms = 3000;
    config.proxy.reconnect_min_ms = 50;
    config.proxy.reconnect_max_ms = 200;
    config.clusters.push(cluster(Family::Search, addrs));
    koshka_proxy::start(config).unwrap()
}

fn node_addrs(shards: &Shards) -> Vec<String> {
    (0..shards.nodes.len())
        .map(|i| shards.addr(i, Family::Search).to_string())
        .collect()
}

/// The fortunes of every plain file in `dir`, whitespace collapsed.
fn fortunes(dir: &str) -> Vec<String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| {
            panic!("{dir}: {e}; install the Debian packages fortunes and fortunes-ru")
        })
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_none())
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for fortune in text.split("\n%\n") {
            let fortune = fortune.split_whitespace().collect::<Vec<_>>().join(" ");
            if !fortune.is_empty() && fortune.len() <= 1000 {
                out.push(fortune);
            }
        }
    }
    out
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n.max(1)
    }
}

fn set_request(out: &mut Vec<u8>, (owner, id): (i64, u32), item: &ModelItem) {
    let mut value = format!("{},{},{}\t", item.kind, item.date, item.rating).into_bytes();
    value.extend_from_slice(&item.text);
    out.extend_from_slice(format!("set item{owner}_{id} 0 0 {}\r\n", value.len()).as_bytes());
    out.extend_from_slice(&value);
    out.extend_from_slice(b"\r\n");
}

/// `get <key>` through `client`: the value, `None` on a miss; panics on an error line.
async fn get_value(client: &mut Client, key: &[u8]) -> Option<Vec<u8>> {
    let mut request = b"get ".to_vec();
    request.extend_from_slice(key);
    request.extend_from_slice(b"\r\n");
    let reply = client.send_raw(&request).await.unwrap();
    if reply == b"END\r\n" {
        return None;
    }
    assert!(
        reply.starts_with(b"VALUE "),
        "{:?} -> {:?}",
        String::from_utf8_lossy(key),
        String::from_utf8_lossy(&reply)
    );
    let header_end = reply.windows(2).position(|w| w == b"\r\n").unwrap();
    let len: usize = std::str::from_utf8(&reply[..header_end])
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    Some(reply[header_end + 2..header_end + 2 + len].to_vec())
}

async fn search_via(client: &mut Client, search: &Search) -> Found {
    let key = Query::Search(search.clone()).to_bytes();
    let value = get_value(client, &key)
        .await
        .expect("a search always answers");
    Found::parse(&value).unwrap()
}

async fn proxy_stat(client: &mut Client, name: &str) -> u64 {
    client
        .stats(Some("proxy"))
        .await
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no stat {name}"))
        .1
        .parse()
        .unwrap()
}

async fn last_complete(client: &mut Client) -> u32 {
    let value = get_value(client, b"#last_complete_count").await.unwrap();
    String::from_utf8(value).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fortunes_through_the_proxy_equal_a_brute_force_scan() {
    let ru = fortunes(FORTUNES_RU_DIR);
    let en = fortunes(FORTUNES_DIR);
    assert!(
        ru.len() >= PER_LANGUAGE && en.len() >= PER_LANGUAGE,
        "{} ru, {} en",
        ru.len(),
        en.len()
    );
    let mut sentences: Vec<&String> = Vec::new();
    for pool in [&ru, &en] {
        let step = pool.len() / PER_LANGUAGE;
        sentences.extend(pool.iter().step_by(step).take(PER_LANGUAGE));
    }
    let shards = search_shards(8);
    let proxy = proxy_over(node_addrs(&shards), 3000);
    let mut client = Client::connect(proxy.addr("search").unwrap())
        .await
        .unwrap();
    let mut rng = Rng(1111);
    let mut model = Model::default();
    let mut batch = Vec::new();
    let mut pending = 0;
    for (i, sentence) in sentences.iter().enumerate() {
        // One sentence in ten is posted again by another owner: a duplicate to hide.
        let copies = if i % 10 == 0 { 2 } else { 1 };
        for copy in 0..copies {
            // Skewed placement: about half the items live on shard 0, so the split estimate
            // is too small there and the proxy must re-ask.
            let base = 1 + rng.below(400) as i64;
            let base = if rng.below(2) == 0 { base * 8 } else { base };
            let owner = base * if rng.below(5) == 0 { -1 } else { 1 };
            let id = u32::try_from(i * 2 + copy + 1).unwrap();
            let item = ModelItem::new(
                1 + rng.below(3) as u8,
                1_600_000_000 + rng.below(1000) as u32,
                rng.below(100) as u32,
                sentence.as_bytes().to_vec(),
            );
            set_request(&mut batch, (owner, id), &item);
            pending += 1;
            model.items.insert((owner, id), item);
            if pending == WRITE_BATCH {
                let replies = client.send_raw_multi(&batch, pending).await.unwrap();
                assert!(replies.iter().all(|r| r == b"STORED\r\n"), "{replies:?}");
                batch.clear();
                pending = 0;
            }
        }
    }
    if pending > 0 {
        let replies = client.send_raw_multi(&batch, pending).await.unwrap();
        assert!(replies.iter().all(|r| r == b"STORED\r\n"), "{replies:?}");
    }
    // Queries: none, one or two words of a random sentence, as written (inflected, any case).
    let (mut nonempty, mut hidden) = (0, 0);
    let mut searches = 0u64;
    for q in 0..QUERIES {
        let sentence = sentences[rng.below(sentences.len() as u64) as usize];
        let words: Vec<&str> = sentence
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| w.chars().count() >= 3)
            .collect();
        if words.is_empty() {
            continue;
        }
        let mut text = String::new();
        if q % 13 != 0 {
            text.push_str(words[rng.below(words.len() as u64) as usize]);
            if q % 3 != 0 {
                text.push(' ');
                text.push_str(words[rng.below(words.len() as u64) as usize]);
            }
        }
        let (limit, offset) = match q % 10 {
            // Deep windows over many hits: the split estimate meets the skew.
            0 => (100 + rng.below(200) as u32, rng.below(300) as u32),
            1 => (0, 0),
            _ => (
                1 + rng.below(30) as u32,
                if q % 5 == 2 { rng.below(10) as u32 } else { 0 },
            ),
        };
        let search = Search {
            order: Order {
                by: [By::Rating, By::Date, By::Relevance][q % 3],
                descending: q % 2 == 0,
            },
            limit,
            offset,
            filter: Filter {
                kind: (q % 7 == 0).then_some(2),
                owner: None,
                dates: (q % 4 == 0).then_some((1_600_000_100, 1_600_000_800)),
            },
            words: text.into_bytes(),
        };
        let want = model.search(&search);
        let got = search_via(&mut client, &search).await;
        assert_eq!(got, want, "through the proxy: {search:?}");
        assert_eq!(
            last_complete(&mut client).await,
            8,
            "every shard answered: {search:?}"
        );
        searches += 1;
        nonempty += usize::from(want.total > 0);
        hidden += usize::from(
            want.total > want.hits.len() as u64 && want.hits.len() < search.limit as usize,
        );
    }
    assert!(
        nonempty * 10 > searches as usize * 7,
        "{nonempty} of {searches} queries found something"
    );
    assert!(hidden > 0, "no query hid a duplicate");
    // A multi-get mixing two searches and an item key: one reply, every key in order.
    let a = Search {
        order: Order {
            by: By::Rating,
            descending: true,
        },
        limit: 5,
        offset: 0,
        filter: Filter::default(),
        words: Vec::new(),
    };
    let b = Search {
        limit: 7,
        offset: 3,
        ..a.clone()
    };
    let (&(owner, id), _) = model.items.iter().next().unwrap();
    let request = format!(
        "get {} item{owner}_{id} {}\r\n",
        String::from_utf8(Query::Search(a.clone()).to_bytes()).unwrap(),
        String::from_utf8(Query::Search(b.clone()).to_bytes()).unwrap()
    );
    let reply = String::from_utf8(client.send_raw(request.as_bytes()).await.unwrap()).unwrap();
    assert_eq!(reply.matches("VALUE ").count(), 3, "{reply}");
    assert!(reply.ends_with("END\r\n"));
    for (search, n) in [(&a, 5), (&b, 7)] {
        let mut text = Vec::new();
        let want = model.search(search);
        assert_eq!(want.hits.len(), n);
        want.encode(&mut text);
        assert!(reply.contains(&String::from_utf8(text).unwrap()), "{reply}");
    }
    // Each search asked all 8 shards once, and the skew made the proxy re-ask some.
    let scatters = proxy_stat(&mut client, "proxy_search_scatters").await;
    let reasks = proxy_stat(&mut client, "proxy_search_reasks").await;
    let requests = proxy_stat(&mut client, "proxy_search_shard_requests").await;
    assert_eq!(scatters, searches + 2);
    assert_eq!(requests, scatters * 8 + reasks);
    assert!(reasks > 0, "no search needed a second round");
    assert_eq!(proxy_stat(&mut client, "proxy_partial_answers").await, 0);
    eprintln!("{searches} searches through the proxy, {reasks} shard re-asks");
    proxy.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_writes_land_on_the_owners_shard() {
    let shards = search_shards(4);
    let proxy = proxy_over(node_addrs(&shards), 2000);
    let mut client = Client::connect(proxy.addr("search").unwrap())
        .await
        .unwrap();
    let mut direct = Vec::new();
    for i in 0..4 {
        direct.push(
            Client::connect(shards.addr(i, Family::Search))
                .await
                .unwrap(),
        );
    }
    for owner in [1i64, 2, 3, 4, -5, -6, 7, 1001] {
        let value = format!("1,1700000000,{}\tкошка ловит мышь {owner}", owner.abs());
        let request = format!("set item{owner}_9 0 0 {}\r\n{value}\r\n", value.len());
        assert_eq!(
            client.send_raw(request.as_bytes()).await.unwrap(),
            b"STORED\r\n"
        );
        let home = koshka_keys::shard_of(owner, 4) as usize;
        let key = format!("item{owner}_9");
        let via = get_value(&mut client, key.as_bytes()).await.unwrap();
        let there = get_value(&mut direct[home], key.as_bytes()).await.unwrap();
        assert_eq!(via, there, "{key}");
        let text = String::from_utf8(via).unwrap();
        assert!(text.starts_with("1,1700000000,"), "{text}");
        // Rating updates route by owner too.
        let incr = format!("incr rate{owner}_9 5\r\n");
        let reply = client.send_raw(incr.as_bytes()).await.unwrap();
        assert!(!reply.starts_with(b"CLIENT_ERROR"), "{reply:?}");
    }
    // A search with an owner filter goes to that owner's shard alone, without a scatter.
    let before = proxy_stat(&mut client, "proxy_search_scatters").await;
    let found = Found::parse(
        &get_value(
            &mut client,
            b"search#R10[o-5](%D0%BA%D0%BE%D1%88%D0%BA%D0%B0)",
        )
        .await
        .unwrap(),
    )
    .unwrap();
    assert_eq!((found.total, found.hits.len()), (1, 1));
    assert_eq!((found.hits[0].owner, found.hits[0].id), (-5, 9));
    assert_eq!(
        proxy_stat(&mut client, "proxy_search_scatters").await,
        before
    );
    // A global search sees every owner's item, ordered by rating (|owner| + 5).
    let found = Found::parse(
        &get_value(&mut client, b"search#R100(%D0%BC%D1%8B%D1%88%D1%8C)")
            .await
            .unwrap(),
    )
    .unwrap();
    // Every text differs (the owner is part of it): no duplicates.
    assert_eq!(found.total, 8);
    let owners: Vec<i64> = found.hits.iter().map(|h| h.owner).collect();
    assert_eq!(owners, [1001, 7, -6, -5, 4, 3, 2, 1]);
    assert!(found
        .hits
        .iter()
        .all(|h| h.value == h.owner.unsigned_abs() as u32 + 5));
    // An `N@` prefix sends a search to shard N alone, unchanged: owners 3 and 7 live on 3.
    let found = Found::parse(
        &get_value(&mut client, b"3@search#R100(%D0%BC%D1%8B%D1%88%D1%8C)")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(found.total, 2);
    let owners: Vec<i64> = found.hits.iter().map(|h| h.owner).collect();
    assert_eq!(owners, [7, 3]);
    // Deleting through the proxy removes the item everywhere.
    assert_eq!(
        client.send_raw(b"delete item7_9\r\n").await.unwrap(),
        b"DELETED\r\n"
    );
    assert_eq!(get_value(&mut client, b"item7_9").await, None);
    assert_eq!(
        proxy_stat(&mut client, "proxy_search_scatters").await,
        before + 1
    );
    proxy.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_through_the_proxy_gets_client_errors() {
    let shards = search_shards(4);
    let proxy = proxy_over(node_addrs(&shards), 2000);
    let mut client = Client::connect(proxy.addr("search").unwrap())
        .await
        .unwrap();
    let long_words = "a+".repeat(koshka_keys::search::KEY_BYTES_MAX / 2);
    let too_long = format!("search#R5({long_words}b)");
    let too_many_words = format!(
        "search#R5({})",
        vec!["w"; koshka_keys::search::SEARCH_WORDS_MAX + 1].join("+")
    );
    let limit = format!("search#R{}(a)", koshka_keys::search::SEARCH_LIMIT_MAX + 1);
    let window = format!(
        "search#R{},{}(a)",
        koshka_keys::search::SEARCH_LIMIT_MAX,
        koshka_keys::search::SEARCH_WINDOW_MAX
    );
    for key in [
        "search#x5(a)",
        "search#R5(a",
        "search#R5[o1][t1](a)",
        "search#R5[t0](a)",
        "search#R5[d5,4](a)",
        "item0_1",
        "item1_0",
        "nothing7",
        limit.as_str(),
        window.as_str(),
        too_many_words.as_str(),
        too_long.as_str(),
    ] {
        let reply = client
            .send_raw(format!("get {key}\r\n").as_bytes())
            .await
            .unwrap();
        assert!(
            reply.starts_with(b"CLIENT_ERROR"),
            "{key:.60}: {:?}",
            String::from_utf8_lossy(&reply)
        );
    }
    for (key, value) in [
        ("item5_7", "3,100,42"),
        ("item5_7", "0,1,1\tx"),
        ("item5_7", "1,1\tx"),
        ("rate5_7", "x"),
        ("item0_7", "1,1,1\tx"),
    ] {
        let request = format!("set {key} 0 0 {}\r\n{value}\r\n", value.len());
        let reply = client.send_raw(request.as_bytes()).await.unwrap();
        assert!(
            reply.starts_with(b"CLIENT_ERROR"),
            "{key} {value:?}: {:?}",
            String::from_utf8_lossy(&reply)
        );
    }
    // The connection is still good.
    assert_eq!(
        get_value(&mut client, b"search#R5(a)").await.unwrap(),
        b"0,0"
    );
    proxy.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_shard_gives_a_partial_answer_in_time() {
    const DEADLINE_MS: u64 = 1000;
    let shards = search_shards(4);
    let mut relays = Vec::new();
    for i in 0..4 {
        relays.push(Relay::start(shards.addr(i, Family::Search)).await);
    }
    let addrs = relays.iter().map(|r| r.addr.to_string()).collect();
    let proxy = tokio::task::spawn_blocking(move || proxy_over(addrs, DEADLINE_MS))
        .await
        .unwrap();
    let mut client = Client::connect(proxy.addr("search").unwrap())
        .await
        .unwrap();
    // One item per owner 1..=8: two on each shard, every text different.
    for owner in 1..=8i64 {
        let value = format!("1,{},{owner}\tкот номер {owner}", 1_700_000_000 + owner);
        let request = format!("set item{owner}_1 0 0 {}\r\n{value}\r\n", value.len());
        assert_eq!(
            client.send_raw(request.as_bytes()).await.unwrap(),
            b"STORED\r\n"
        );
    }
    let key = b"search#R10(%D0%BA%D0%BE%D1%82)";
    let all = Found::parse(&get_value(&mut client, key).await.unwrap()).unwrap();
    assert_eq!(all.total, 8);
    assert_eq!(last_complete(&mut client).await, 4);
    // Shard 3 hangs (its replies are held far past the deadline).
    relays[3].set_delay(5_000);
    let started = Instant::now();
    let partial = Found::parse(&get_value(&mut client, key).await.unwrap()).unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(DEADLINE_MS + 1000),
        "took {took:?}"
    );
    assert_eq!(partial.total, 6);
    let owners: Vec<i64> = partial.hits.iter().map(|h| h.owner).collect();
    assert_eq!(owners, [8, 6, 5, 4, 2, 1]);
    assert_eq!(last_complete(&mut client).await, 3);
    assert!(proxy_stat(&mut client, "proxy_partial_answers").await >= 1);
    assert!(proxy_stat(&mut client, "proxy_shard_timeouts").await >= 1);
    // Cut entirely: still a partial answer, quickly.
    relays[3].set_delay(0);
    relays[3].set_down(true);
    let started = Instant::now();
    let partial = Found::parse(&get_value(&mut client, key).await.unwrap()).unwrap();
    assert!(started.elapsed() < Duration::from_millis(DEADLINE_MS + 1000));
    assert_eq!(partial.total, 6);
    assert_eq!(last_complete(&mut client).await, 3);
    // Back: complete again once the proxy has reconnected.
    relays[3].set_down(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = Found::parse(&get_value(&mut client, key).await.unwrap()).unwrap();
        if found == all {
            break;
        }
        assert!(Instant::now() < deadline, "shard 3 never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last_complete(&mut client).await, 4);
    tokio::task::spawn_blocking(move || proxy.stop().unwrap())
        .await
        .unwrap();
}
