//! Routing over 8 in-process shards: plain kv by ketama, compiled keys by owner, multi-get
//! split with `#last_complete_count`, admin keys, stats, memccapable through the proxy.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{raw, Shards};
use koshka_client::Client;
use koshka_proxy::config::Family;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_keys_spread_by_ketama_and_multi_gets_split() {
    let shards = Shards::start(8);
    let proxy = koshka_proxy::start(shards.proxy_config()).unwrap();
    let addr = proxy.addr("kv").unwrap();
    let mut client = Client::connect(addr).await.unwrap();
    let keys: Vec<String> = (0..200).map(|i| format!("key:{i}")).collect();
    for key in &keys {
        client.set(key, format!("v-{key}"), 7, 0).await.unwrap();
    }
    for key in keys.iter().take(20) {
        let item = client.get(key).await.unwrap().unwrap();
        assert_eq!(item.data, format!("v-{key}").into_bytes());
        assert_eq!(item.flags, 7);
    }
    let items = client.get_multi(&keys).await.unwrap();
    assert_eq!(items.len(), keys.len());
    for item in &items {
        assert_eq!(
            item.data,
            format!("v-{}", String::from_utf8_lossy(&item.key)).into_bytes()
        );
    }
    let complete = client.get("#last_complete_count").await.unwrap().unwrap();
    assert_eq!(complete.data, b"8");
    let fanout = client.get("#last_fanout").await.unwrap().unwrap();
    assert_eq!(fanout.data, b"8");
    // Every key is on the shard #calc# names, and on no other.
    let mut per_shard = [0usize; 8];
    for key in &keys {
        let calc = client.get(format!("#calc#{key}")).await.unwrap().unwrap();
        let text = String::from_utf8(calc.data).unwrap();
        let shard: usize = text.split(' ').nth(1).unwrap().parse().unwrap();
        per_shard[shard] += 1;
        for other in 0..8 {
            let mut direct = Client::connect(shards.addr(other, Family::Kv))
                .await
                .unwrap();
            let found = direct.get(key).await.unwrap().is_some();
            assert_eq!(found, other == shard, "{key} on shard {other}: {text}");
        }
    }
    assert!(per_shard.iter().all(|n| *n > 5), "{per_shard:?}");
    // Stats sum the shards and add the proxy's counters.
    let stats = client.stats(None).await.unwrap();
    let get = |name: &str| {
        stats
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(get("curr_items").unwrap(), "200");
    assert_eq!(get("pid").unwrap(), std::process::id().to_string());
    assert!(
        get("proxy_fanout_requests")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(get("proxy_shards").unwrap(), "8");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noreply_and_pipelines_keep_order() {
    let shards = Shards::start(3);
    let proxy = koshka_proxy::start(shards.proxy_config()).unwrap();
    let addr = proxy.addr("kv").unwrap();
    let mut request = Vec::new();
    for i in 0..50 {
        request.extend_from_slice(format!("set k{i} 0 0 1 noreply\r\n{}\r\n", i % 10).as_bytes());
    }
    for i in 0..50 {
        request.extend_from_slice(format!("incr k{i} 1\r\n").as_bytes());
    }
    request.extend_from_slice(b"get k0 k1 k2 k3 k4 k5 k6 k7 k8 k9\r\nmn\r\nversion\r\n");
    let reply = raw(addr, &request, b"\r\nVERSION 1.6.21-koshka-0.1.0\r\n").await;
    let text = String::from_utf8_lossy(&reply);
    let lines: Vec<&str> = text.split("\r\n").collect();
    for (i, line) in lines.iter().take(50).enumerate() {
        assert_eq!(*line, ((i % 10) + 1).to_string(), "{text}");
    }
    let values = lines.iter().filter(|l| l.starts_with("VALUE")).count();
    assert_eq!(values, 10, "{text}");
    assert!(text.contains("END\r\nMN\r\nVERSION"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_keys_go_to_their_owners_shard() {
    let shards = Shards::start(4);
    let proxy = koshka_proxy::start(shards.proxy_config()).unwrap();
    let mut friends = Client::connect(proxy.addr("friends").unwrap())
        .await
        .unwrap();
    // Same-shard friendships (4 and 8 are both on shard 0): one write stores both halves.
    friends.set("friend4_8", "6", 0, 0).await.unwrap();
    friends.set("privacy5_album1", "*0", 0, 0).await.unwrap();
    assert_eq!(friends.get("friends4").await.unwrap().unwrap().data, b"1,8");
    assert_eq!(friends.get("friend8_4").await.unwrap().unwrap().data, b"1");
    assert_eq!(
        friends.get("privacy5_album1").await.unwrap().unwrap().data,
        b"*0"
    );
    // The shards hold what the placement says.
    let mut direct = Client::connect(shards.addr(1, Family::Friends))
        .await
        .unwrap();
    assert_eq!(
        direct.get("privacy5_album1").await.unwrap().unwrap().data,
        b"*0"
    );
    // A malformed key is refused by a node with the node's words.
    let reply = raw(proxy.addr("friends").unwrap(), b"get friends0\r\n", b"\r\n").await;
    assert!(
        reply.starts_with(b"CLIENT_ERROR"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    // A multi-get of many owners' lists splits per shard.
    let keys: Vec<String> = (1..=40).map(|u| format!("friendcnt{u}")).collect();
    let items = friends.get_multi(&keys).await.unwrap();
    assert_eq!(items.len(), 40);
    let calc = friends.get("#calc#98@friends17").await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&calc.data).starts_with("shard 2 "));
}

/// libmemcached's ASCII conformance checker through the proxy, over 4 kv shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memccapable_passes_through_the_proxy() {
    if std::process::Command::new("memccapable")
        .arg("--help")
        .output()
        .is_err()
    {
        eprintln!("memccapable not installed (scripts/test.sh installs it); skipped");
        return;
    }
    let shards = Shards::start(4);
    let proxy = koshka_proxy::start(shards.proxy_config()).unwrap();
    let port = proxy.addr("kv").unwrap().port().to_string();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("timeout")
            .args(["120", "memccapable", "-h", "127.0.0.1", "-p", &port, "-a"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let passed = text.matches("[pass]").count();
    assert!(
        text.contains("All tests passed"),
        "{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(passed, 27, "{text}");
}
