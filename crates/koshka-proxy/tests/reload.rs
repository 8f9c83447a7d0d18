//! Reloading the map (what SIGHUP does) keeps client connections and counters; a bad map is
//! refused and the old one stays.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{cluster, Shards};
use koshka_client::Client;
use koshka_proxy::config::{Config, Family};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_connections_and_moves_keys() {
    let shards = Shards::start(3);
    let map = |n: usize| {
        let mut config = Config::default();
        config.clusters.push(cluster(
            Family::Kv,
            (0..n)
                .map(|i| shards.addr(i, Family::Kv).to_string())
                .collect(),
        ));
        config
    };
    let proxy = koshka_proxy::start(map(2)).unwrap();
    let mut client = Client::connect(proxy.addr("kv").unwrap()).await.unwrap();
    client.set("before", "1", 0, 0).await.unwrap();
    let targets = client.get("#targets").await.unwrap().unwrap().data;
    assert_eq!(String::from_utf8_lossy(&targets).lines().count(), 2);
    let config_before = stat(&mut client, "proxy_config").await;
    // The same listen address (port 0 is kept as the bound one): the listener stays.
    let mut bigger = map(3);
    bigger.clusters[0].listen = "127.0.0.1:0".into();
    proxy.reload(bigger.clone()).unwrap();
    let targets = client.get("#targets").await.unwrap().unwrap().data;
    assert_eq!(
        String::from_utf8_lossy(&targets).lines().count(),
        3,
        "the same connection sees the new map"
    );
    assert_ne!(stat(&mut client, "proxy_config").await, config_before);
    assert!(
        stat(&mut client, "proxy_commands")
            .await
            .parse::<u64>()
            .unwrap()
            >= 4,
        "counters survive"
    );
    let keys: Vec<String> = (0..60).map(|i| format!("after{i}")).collect();
    for key in &keys {
        client.set(key, "v", 0, 0).await.unwrap();
    }
    let mut third = Client::connect(shards.addr(2, Family::Kv)).await.unwrap();
    let on_third = third.get_multi(&keys).await.unwrap().len();
    assert!(on_third > 5, "the new shard takes its share: {on_third}");
    // A map that cannot be applied is refused whole.
    let mut bad = bigger;
    bad.clusters[0].shards.clear();
    assert!(proxy.reload(bad).is_err());
    let targets = client.get("#targets").await.unwrap().unwrap().data;
    assert_eq!(String::from_utf8_lossy(&targets).lines().count(), 3);
}

async fn stat(client: &mut Client, name: &str) -> String {
    let stats = client.stats(Some("proxy")).await.unwrap();
    stats.into_iter().find(|(n, _)| n == name).unwrap().1
}
