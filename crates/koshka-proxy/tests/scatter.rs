//! Scatter/gather: common friends, counts, privacy checks whose friend-of-friend step needs
//! another shard, temp lists, bulk reads — through the proxy over 4 shards, against one node
//! holding the same data.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{cluster, Relay, Shards};
use koshka_client::Client;
use koshka_proxy::config::{Config, Family};

async fn both(proxy: &mut Client, one: &mut Client, request: &[u8]) -> (String, String) {
    let a = String::from_utf8(proxy.send_raw(request).await.unwrap()).unwrap();
    let b = String::from_utf8(one.send_raw(request).await.unwrap()).unwrap();
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merges_match_one_node() {
    let shards = Shards::start(4);
    let proxy = koshka_proxy::start(shards.proxy_config()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let single = common::single_node(dir.path());
    let mut via = Client::connect(proxy.addr("friends").unwrap())
        .await
        .unwrap();
    let mut one = Client::connect(single.addr("friends").unwrap())
        .await
        .unwrap();
    // A small graph over ids 1..=24 (every shard), masks with folders.
    let edges = [
        (1, 2, 3),
        (1, 3, 0),
        (1, 6, 4),
        (2, 3, 0),
        (2, 7, 0),
        (3, 8, 2),
        (6, 7, 0),
        (6, 8, 0),
        (7, 9, 0),
        (10, 1, 0),
        (10, 2, 0),
        (11, 6, 0),
        (12, 3, 0),
        (13, 14, 0),
        (21, 22, 0),
        (4, 5, 0),
        (5, 21, 0),
    ];
    for (u, f, mask) in edges {
        let request = format!("set friend{u}_{f} 0 0 1\r\n{mask}\r\n");
        let (a, b) = both(&mut via, &mut one, request.as_bytes()).await;
        assert_eq!(
            (a.as_str(), b.as_str()),
            ("STORED\r\n", "STORED\r\n"),
            "{request}"
        );
    }
    for (key, rules) in [
        ("privacy1_album1", "*G"),
        ("privacy1_phone2", "/G*A"),
        ("privacy2_note3", "*1/G*A"),
    ] {
        let request = format!("set {key} 0 0 {}\r\n{rules}\r\n", rules.len());
        both(&mut via, &mut one, request.as_bytes()).await;
    }
    let mut keys = Vec::new();
    for u in 1..=13 {
        for v in 1..=13 {
            if u != v {
                keys.push(format!("common_friends{u},{v}"));
                keys.push(format!("{v}~{u}:album1,phone2,note3,nothing4"));
                keys.push(format!("{v}~{u}:album1"));
            }
        }
        keys.push(format!(
            "common_friends_num{u}:1,2,3,4,5,6,7,8,9,10,11,12,13,21,22"
        ));
        keys.push(format!("common_friends{u}:2,3,6,7,8,9"));
        keys.push(format!("friends{u}"));
    }
    for key in &keys {
        let request = format!("get {key}\r\n");
        let (a, b) = both(&mut via, &mut one, request.as_bytes()).await;
        assert_eq!(a, b, "{key}");
    }
    // One multi-get mixing plain and merged keys answers the same set of values.
    let request = format!("get {}\r\n", keys[..60].join(" "));
    let (a, b) = both(&mut via, &mut one, request.as_bytes()).await;
    assert!(a.ends_with("END\r\n") && b.ends_with("END\r\n"));
    let mut a: Vec<&str> = a.trim_end_matches("END\r\n").split("VALUE ").collect();
    let mut b: Vec<&str> = b.trim_end_matches("END\r\n").split("VALUE ").collect();
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b);
    // Temp lists are the client's own, per connection.
    for request in [
        &b"set temp7 0 0 8\r\n2,3,6,21\r\n"[..],
        b"get common_friends1:-7\r\n",
        b"get common_friends_num1:-7\r\n",
        b"get common_friends_num5:-7\r\n",
        b"get common_friends1:-nope\r\n",
    ] {
        let (a, b) = both(&mut via, &mut one, request).await;
        assert_eq!(a, b, "{}", String::from_utf8_lossy(request));
    }
    let stats = via.stats(Some("proxy")).await.unwrap();
    let stat = |n: &str| {
        stats
            .iter()
            .find(|(k, _)| k == n)
            .unwrap()
            .1
            .parse::<u64>()
            .unwrap()
    };
    assert!(stat("proxy_scatter_gathers") > 100);
    assert!(stat("proxy_privacy_resolved") > 0);
}

/// A node older than the proxy does not know `friends_packed…` and answers `CLIENT_ERROR`:
/// common friends across shards then ask it `friends<u>` instead, with the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn common_friends_ask_older_nodes_for_text_lists() {
    let shards = Shards::start(2);
    let relay = Relay::start(shards.addr(1, Family::Friends)).await;
    relay.set_rewrite(b"friends_packed", b"friends_pucked");
    let mut config = Config::default();
    config.clusters.push(cluster(
        Family::Friends,
        vec![
            shards.addr(0, Family::Friends).to_string(),
            relay.addr.to_string(),
        ],
    ));
    let proxy = tokio::task::spawn_blocking(move || koshka_proxy::start(config).unwrap())
        .await
        .unwrap();
    let mut via = Client::connect(proxy.addr("friends").unwrap())
        .await
        .unwrap();
    // Users 1 (shard 1, behind the relay) and 2 (shard 0) share friends 10 and 13.
    for (u, f) in [(1, 10), (1, 12), (1, 13), (2, 10), (2, 13), (2, 14)] {
        let request = format!("set friend{u}_{f} 0 0 1\r\n0\r\n");
        assert_eq!(
            via.send_raw(request.as_bytes()).await.unwrap(),
            b"STORED\r\n"
        );
    }
    // The relay's node really is "older": it refuses the packed key.
    let mut old = Client::connect(relay.addr).await.unwrap();
    let refused = old.send_raw(b"get friends_packed1\r\n").await.unwrap();
    assert!(refused.starts_with(b"CLIENT_ERROR"), "{refused:?}");
    for (key, value) in [
        ("common_friends1,2", "2,10,13"),
        ("common_friends2,1", "2,10,13"),
        ("common_friends2,4", "0"),
    ] {
        let reply = via
            .send_raw(format!("get {key}\r\n").as_bytes())
            .await
            .unwrap();
        let expected = format!("VALUE {key} 0 {}\r\n{value}\r\nEND\r\n", value.len());
        assert_eq!(String::from_utf8_lossy(&reply), expected);
    }
    // Shard 0 answers the packed key: two ids, 4 bytes each after the total.
    let mut node = Client::connect(shards.addr(0, Family::Friends))
        .await
        .unwrap();
    let reply = node.send_raw(b"get friends_packed2\r\n").await.unwrap();
    let mut expected = b"VALUE friends_packed2 0 16\r\n".to_vec();
    for n in [3u32, 10, 13, 14] {
        expected.extend_from_slice(&n.to_le_bytes());
    }
    expected.extend_from_slice(b"\r\nEND\r\n");
    assert_eq!(reply, expected);
}
