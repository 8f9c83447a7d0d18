//! Faults: a shard cut mid-load, a slow shard, a dead primary with a replica, a node that
//! stops and comes back on its port. Shards are in-process nodes behind a test relay that can
//! delay or cut traffic (the kernel here has no netem).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::{cluster, Relay, Shards};
use koshka_client::Client;
use koshka_proxy::config::{Config, Family, ShardConfig};

/// 8 kv shards, each behind a relay; a proxy with a short deadline.
async fn relayed(get_timeout_ms: u64) -> (Shards, Vec<Relay>, koshka_proxy::Running) {
    let shards = Shards::start(8);
    let mut relays = Vec::new();
    for i in 0..8 {
        relays.push(Relay::start(shards.addr(i, Family::Kv)).await);
    }
    let mut config = Config::default();
    config.proxy.get_timeout_ms = get_timeout_ms;
    config.proxy.set_timeout_ms = get_timeout_ms;
    config.proxy.reconnect_min_ms = 50;
    config.proxy.reconnect_max_ms = 200;
    config.proxy.ping_interval_ms = 200;
    config.clusters.push(cluster(
        Family::Kv,
        relays.iter().map(|r| r.addr.to_string()).collect(),
    ));
    let proxy = tokio::task::spawn_blocking(move || koshka_proxy::start(config).unwrap())
        .await
        .unwrap();
    (shards, relays, proxy)
}

async fn shard_of(client: &mut Client, key: &str) -> usize {
    let calc = client.get(format!("#calc#{key}")).await.unwrap().unwrap();
    let text = String::from_utf8(calc.data).unwrap();
    text.split(' ').nth(1).unwrap().parse().unwrap()
}

async fn last_complete(client: &mut Client) -> u32 {
    let item = client.get("#last_complete_count").await.unwrap().unwrap();
    String::from_utf8(item.data).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_shard_gives_partial_answers_in_time_and_recovers() {
    let (_shards, relays, proxy) = relayed(400).await;
    let mut client = Client::connect(proxy.addr("kv").unwrap()).await.unwrap();
    let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
    for key in &keys {
        client.set(key, key, 0, 0).await.unwrap();
    }
    let mut on_three = Vec::new();
    for key in &keys {
        if shard_of(&mut client, key).await == 3 {
            on_three.push(key.clone());
        }
    }
    assert!(!on_three.is_empty());
    // Load from a second client while the shard dies.
    let addr = proxy.addr("kv").unwrap();
    let load_keys = keys.clone();
    let load = tokio::spawn(async move {
        let mut c = Client::connect(addr).await.unwrap();
        let mut worst = Duration::ZERO;
        for _ in 0..40 {
            let start = Instant::now();
            let items = c.get_multi(&load_keys).await.unwrap();
            worst = worst.max(start.elapsed());
            assert!(items.len() >= 100 - 40, "{} values", items.len());
        }
        worst
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    relays[3].set_down(true);
    let start = Instant::now();
    let items = client.get_multi(&keys).await.unwrap();
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(items.len(), 100 - on_three.len());
    assert_eq!(last_complete(&mut client).await, 7);
    // The other shards are unaffected: single keys elsewhere answer, and fast.
    for key in keys.iter().filter(|k| !on_three.contains(k)).take(20) {
        let start = Instant::now();
        assert!(client.get(key).await.unwrap().is_some());
        assert!(start.elapsed() < Duration::from_millis(300));
    }
    // A key of the dead shard: a miss at once, never a hang; a write says why it failed.
    let start = Instant::now();
    assert!(client.get(&on_three[0]).await.unwrap().is_none());
    assert!(start.elapsed() < Duration::from_millis(1000));
    let reply = client
        .send_raw(format!("set {} 0 0 1\r\nx\r\n", on_three[0]).as_bytes())
        .await
        .unwrap();
    assert!(
        reply.starts_with(b"SERVER_ERROR"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    let worst = load.await.unwrap();
    assert!(
        worst < Duration::from_millis(1500),
        "worst multi-get under the fault: {worst:?}"
    );
    let stats = client.stats(Some("proxy")).await.unwrap();
    let stat = |n: &str| {
        stats
            .iter()
            .find(|(k, _)| k == n)
            .unwrap()
            .1
            .parse::<u64>()
            .unwrap()
    };
    assert!(stat("proxy_partial_answers") >= 1);
    let targets = client.get("#targets").await.unwrap().unwrap();
    assert_eq!(
        stat("proxy_backends_failed"),
        1,
        "{}",
        String::from_utf8_lossy(&targets.data)
    );
    // Recovery: the shard comes back, the proxy reconnects, answers are whole again.
    relays[3].set_down(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let items = client.get_multi(&keys).await.unwrap();
        if items.len() == 100 {
            assert_eq!(last_complete(&mut client).await, 8);
            break;
        }
        assert!(Instant::now() < deadline, "shard 3 did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Multi-get rounds the slow-shard test may use to see three whole answers from the fast
/// shards (a loaded machine can make a fast shard miss the deadline once in a while).
const SLOW_SHARD_ROUNDS_MAX: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_shard_does_not_slow_the_others() {
    let (_shards, relays, proxy) = relayed(300).await;
    let mut client = Client::connect(proxy.addr("kv").unwrap()).await.unwrap();
    let keys: Vec<String> = (0..64).map(|i| format!("s{i}")).collect();
    for key in &keys {
        client.set(key, "v", 0, 0).await.unwrap();
    }
    let mut fast = Vec::new();
    for key in &keys {
        if shard_of(&mut client, key).await != 5 {
            fast.push(key.clone());
        }
    }
    relays[5].set_delay(1000);
    // Multi-gets end at the deadline with the slow shard's part missing: never waiting for the
    // slow shard, never answering for it. On a loaded machine a fast shard may itself miss a
    // 300 ms deadline now and then, so every round is checked for what must always hold and
    // the rounds must include whole answers from the seven fast shards.
    let mut whole_rounds = 0;
    for _ in 0..SLOW_SHARD_ROUNDS_MAX {
        let start = Instant::now();
        let items = client.get_multi(&keys).await.unwrap();
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_millis(900),
            "{took:?}"
        );
        let complete = last_complete(&mut client).await;
        assert!(complete <= 7, "the slow shard answered within the deadline");
        assert!(
            items
                .iter()
                .all(|item| fast.iter().any(|k| k.as_bytes() == item.key.as_slice())),
            "a slow shard's key was answered"
        );
        if complete == 7 {
            assert_eq!(items.len(), fast.len());
            whole_rounds += 1;
            if whole_rounds == 3 {
                break;
            }
        }
    }
    assert_eq!(
        whole_rounds, 3,
        "fewer than 3 of {SLOW_SHARD_ROUNDS_MAX} rounds were whole"
    );
    // Single keys of the other shards, from another connection, stay fast meanwhile.
    let mut other = Client::connect(proxy.addr("kv").unwrap()).await.unwrap();
    let mut slowest = Duration::ZERO;
    for key in fast.iter().take(30) {
        let start = Instant::now();
        assert!(other.get(key).await.unwrap().is_some());
        slowest = slowest.max(start.elapsed());
    }
    // Half the slow shard's delay: a get that waited for it would take at least 1 s; the
    // margin is for a loaded machine, not for the proxy.
    assert!(slowest < Duration::from_millis(500), "{slowest:?}");
    relays[5].set_delay(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_move_to_a_replica_and_writes_to_a_dead_primary_fail_clearly() {
    // Shard 0 of 2 has a primary (behind a relay) and a replica; replication is another
    // issue, so the test writes the replica's copy itself.
    let primaries = Shards::start(2);
    let replica_dir = tempfile::tempdir().unwrap();
    let replica = koshka_node::start(
        common::node_config(replica_dir.path(), 0, 2),
        &koshka_node::registry::builtin(),
    )
    .unwrap();
    let replica_addr = replica.addr("friends").unwrap();
    let relay = Relay::start(primaries.addr(0, Family::Friends)).await;
    let mut config = Config::default();
    config.proxy.get_timeout_ms = 500;
    config.proxy.set_timeout_ms = 500;
    config.proxy.reconnect_min_ms = 50;
    let mut friends = cluster(
        Family::Friends,
        vec![
            String::new(),
            primaries.addr(1, Family::Friends).to_string(),
        ],
    );
    friends.shards[0] = ShardConfig::Full {
        primary: relay.addr.to_string(),
        replicas: vec![replica_addr.to_string()],
        name: None,
    };
    config.clusters.push(friends);
    let proxy = tokio::task::spawn_blocking(move || koshka_proxy::start(config).unwrap())
        .await
        .unwrap();
    let mut client = Client::connect(proxy.addr("friends").unwrap())
        .await
        .unwrap();
    client.set("privacy2_album1", "*0", 0, 0).await.unwrap();
    let mut direct = Client::connect(replica_addr).await.unwrap();
    direct.set("privacy2_album1", "*A", 0, 0).await.unwrap();
    assert_eq!(
        client.get("privacy2_album1").await.unwrap().unwrap().data,
        b"*0"
    );
    relay.set_down(true);
    // Reads go to the replica as soon as the primary is seen dead.
    let start = Instant::now();
    loop {
        if let Some(item) = client.get("privacy2_album1").await.unwrap() {
            if item.data == b"*A" {
                break;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(5));
    }
    // Writes to the dead primary fail at once with a clear SERVER_ERROR.
    let start = Instant::now();
    let reply = client
        .send_raw(b"set privacy2_album1 0 0 2\r\n*0\r\n")
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("SERVER_ERROR shard 0 primary"), "{text}");
    assert!(start.elapsed() < Duration::from_millis(600));
    // The other shard is untouched.
    client.set("privacy1_album1", "*0", 0, 0).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_is_reconnected_when_it_returns() {
    let mut shards = Shards::start(2);
    let mut config = shards.proxy_config();
    config.proxy.get_timeout_ms = 300;
    config.proxy.reconnect_min_ms = 50;
    config.proxy.reconnect_max_ms = 200;
    let port = shards.addr(1, Family::Kv).port();
    let proxy = tokio::task::spawn_blocking(move || koshka_proxy::start(config).unwrap())
        .await
        .unwrap();
    let mut client = Client::connect(proxy.addr("kv").unwrap()).await.unwrap();
    let keys: Vec<String> = (0..40).map(|i| format!("r{i}")).collect();
    for key in &keys {
        client.set(key, "v", 0, 0).await.unwrap();
    }
    shards.nodes[1].take().unwrap().stop().unwrap();
    let items = client.get_multi(&keys).await.unwrap();
    assert!(items.len() < 40);
    assert_eq!(last_complete(&mut client).await, 1);
    // The node restarts on the same port (persistence off: its keys are gone).
    let mut node_config = common::node_config(shards.dirs[1].path(), 1, 2);
    node_config.server.listen = format!("127.0.0.1:{port}");
    node_config
        .engine
        .entry("kv".into())
        .or_default()
        .insert("port".into(), i64::from(port).into());
    shards.nodes[1] =
        Some(koshka_node::start(node_config, &koshka_node::registry::builtin()).unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = client.get_multi(&keys).await.unwrap();
        if last_complete(&mut client).await == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the node did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
