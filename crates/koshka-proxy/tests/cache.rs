//! The cache tier in front of 4 shards: hits come from a real memcached, a write through the
//! proxy invalidates before it is acknowledged, other families are not cached.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{Memcached, Shards};
use koshka_client::Client;
use koshka_proxy::config::Family;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_through_the_pool_and_never_stale_after_a_write() {
    let Some(memcached) = Memcached::start() else {
        eprintln!("memcached not installed (scripts/test.sh installs it); skipped");
        return;
    };
    let shards = Shards::start(4);
    let mut config = shards.proxy_config();
    config.cache.servers = vec![memcached.addr.to_string()];
    config.cache.timeout_ms = 500;
    for cluster in &mut config.clusters {
        if cluster.engine == Family::Wall {
            cluster.cache = vec!["status".into(), "statuses".into()];
        }
    }
    let proxy = koshka_proxy::start(config).unwrap();
    let mut wall = Client::connect(proxy.addr("wall").unwrap()).await.unwrap();
    let stat = async |c: &mut Client, name: &str| -> u64 {
        let stats = c.stats(Some("proxy")).await.unwrap();
        stats
            .iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1
            .parse()
            .unwrap()
    };
    wall.set("status5", "first", 0, 0).await.unwrap();
    assert!(wall.get("status5").await.unwrap().unwrap().data.len() > 5);
    let first = wall.get("status5").await.unwrap().unwrap().data;
    assert!(String::from_utf8_lossy(&first).contains("first"));
    assert!(stat(&mut wall, "proxy_cache_hits").await >= 1);
    // The cached value is what the proxy serves: a write that bypasses the proxy is not
    // seen until the TTL (here: never within the test).
    let mut direct = Client::connect(shards.addr(1, Family::Wall)).await.unwrap();
    direct.set("status5", "bypass", 0, 0).await.unwrap();
    let cached = wall.get("status5").await.unwrap().unwrap().data;
    assert!(String::from_utf8_lossy(&cached).contains("first"));
    // A write through the proxy invalidates every key of the owner before its reply.
    for round in 0..20 {
        let text = format!("round {round}");
        let request = format!(
            "set status5 0 0 {}\r\n{text}\r\nget status5 statuses5\r\n",
            text.len()
        );
        let reply = wall.send_raw_multi(request.as_bytes(), 2).await.unwrap();
        assert_eq!(reply[0], b"STORED\r\n");
        let read = String::from_utf8_lossy(&reply[1]).into_owned();
        assert!(read.contains(&text), "round {round}: {read}");
        let status = wall.get("status5").await.unwrap().unwrap().data;
        assert!(String::from_utf8_lossy(&status).contains(&text));
    }
    assert!(stat(&mut wall, "proxy_cache_invalidations").await >= 20);
    // Another family of the cluster is not cached.
    let before = stat(&mut wall, "proxy_cache_misses").await;
    let _ = wall.get("sublist5_0:0").await.unwrap();
    assert_eq!(stat(&mut wall, "proxy_cache_misses").await, before);
}
