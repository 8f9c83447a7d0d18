//! The lists engine served by a real node over real sockets: every key family, bad input as
//! `CLIENT_ERROR`, temp lists on one connection, a snapshot and restarts.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use koshka_client::Client;
use koshka_node::config::Config;
use koshka_node::registry;

fn config(dir: &std::path::Path) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.server.threads = 1;
    config.storage.data_dir = dir.to_path_buf();
    config.engines.enabled = vec!["lists".into()];
    config
}

async fn get(c: &mut Client, key: &str) -> Option<String> {
    c.get(key)
        .await
        .unwrap()
        .map(|item| String::from_utf8(item.data).unwrap())
}

async fn raw(c: &mut Client, text: &str) -> String {
    String::from_utf8(c.send_raw(text.as_bytes()).await.unwrap()).unwrap()
}

async fn snapshot(c: &mut Client) {
    let written = |stats: Vec<(String, String)>| -> u64 {
        stats
            .iter()
            .find(|(k, _)| k == "snapshots_written")
            .map_or(0, |(_, v)| v.parse().unwrap())
    };
    let before = written(c.stats(None).await.unwrap());
    let reply = c.stats(Some("snapshot")).await.unwrap();
    assert!(
        reply.iter().any(|(k, v)| k == "snapshot" && v == "started"),
        "{reply:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while written(c.stats(None).await.unwrap()) == before {
        assert!(Instant::now() < deadline, "snapshot never completed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_over_the_protocol_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let node = koshka_node::start(config(dir.path()), &registry::builtin()).unwrap();
    let addr = node.addr("lists").unwrap();
    assert_ne!(addr.port(), 0);
    let mut c = Client::connect(addr).await.unwrap();
    for (obj, fv) in [(10, "3,100"), (-20, "1,-5"), (30, "3"), (40, "0,7")] {
        assert!(c.set(format!("entry77_{obj}"), fv, 0, 0).await.is_ok());
    }
    c.set("entry78_10", "1,1", 0, 0).await.unwrap();
    assert_eq!(get(&mut c, "list77").await.unwrap(), "4,-20,10,30,40");
    assert_eq!(get(&mut c, "list77_3:3,8").await.unwrap(), "2,10,3,30,3");
    assert_eq!(
        get(&mut c, "list77,45#2").await.unwrap(),
        "4,10,3,100,40,0,7"
    );
    assert_eq!(get(&mut c, "count77_1:1").await.unwrap(), "3");
    assert_eq!(get(&mut c, "object_lists10").await.unwrap(), "2,77,78");
    assert_eq!(get(&mut c, "flags77_10").await.unwrap(), "3");
    assert_eq!(c.incr("value77_10", 5).await.unwrap(), Some(105));
    assert_eq!(c.decr("flags77_10", 2).await.unwrap(), Some(1));
    assert_eq!(c.incr("flags77_99", 2).await.unwrap(), None);
    assert_eq!(
        raw(&mut c, "set flags77_99 0 0 1\r\n4\r\n").await,
        "NOT_STORED\r\n"
    );
    // A temp list lives on its connection only.
    assert_eq!(
        raw(&mut c, "set tempmine 0 0 7\r\n40,10,5\r\n").await,
        "STORED\r\n"
    );
    assert_eq!(get(&mut c, "intersect77:-mine").await.unwrap(), "2,10,40");
    assert_eq!(get(&mut c, "subtract77:-mine").await.unwrap(), "2,-20,30");
    assert_eq!(
        get(&mut c, "intersect77:30,-20,7").await.unwrap(),
        "2,-20,30"
    );
    let mut other = Client::connect(addr).await.unwrap();
    assert!(raw(&mut other, "get intersect77:-mine\r\n")
        .await
        .starts_with("CLIENT_ERROR no temp list mine"));
    // Bad input is refused with a reason.
    for (request, reply) in [
        ("get list0\r\n", "CLIENT_ERROR list id 0 must be"),
        (
            "get list5#10001\r\n",
            "CLIENT_ERROR limit 10001 exceeds 10000",
        ),
        ("get nosuch5\r\n", "CLIENT_ERROR unknown lists key"),
        (
            "set entry5_1 0 0 3\r\n256\r\n",
            "CLIENT_ERROR flags 256 outside 0..=255",
        ),
        (
            "set entry5_1 0 0 3\r\n1,x\r\n",
            "CLIENT_ERROR value must be",
        ),
        ("incr flags5_1 300\r\n", "CLIENT_ERROR"),
        (
            "gets list5\r\n",
            "CLIENT_ERROR command not supported by the lists engine",
        ),
        (
            "add entry5_1 0 0 1\r\n1\r\n",
            "CLIENT_ERROR command not supported",
        ),
    ] {
        let got = raw(&mut c, request).await;
        assert!(got.starts_with(reply), "{request:?} → {got:?}");
    }
    assert!(c.delete("entry77_40").await.unwrap());
    assert!(!c.delete("entry77_40").await.unwrap());
    snapshot(&mut c).await;
    assert!(c.delete("object10").await.unwrap());
    c.set("entry79_1", "0", 0, 0).await.unwrap();
    assert!(c.delete("list79").await.unwrap());
    drop((c, other));
    node.stop().unwrap();

    // Snapshot + the log after it rebuild the same lists.
    let node = koshka_node::start(config(dir.path()), &registry::builtin()).unwrap();
    let mut c = Client::connect(node.addr("lists").unwrap()).await.unwrap();
    assert_eq!(get(&mut c, "list77,8").await.unwrap(), "2,-20,1,30,3");
    assert_eq!(get(&mut c, "object_lists10").await.unwrap(), "0");
    assert_eq!(get(&mut c, "list79").await.unwrap(), "0");
    assert_eq!(
        get(&mut c, "entry77_-20").await.unwrap().split(',').count(),
        3
    );
    node.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_list_limit_is_a_setting() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config
        .engine
        .entry("lists".into())
        .or_default()
        .insert("entries_per_list_max".into(), 2.into());
    let node = koshka_node::start(config, &registry::builtin()).unwrap();
    let mut c = Client::connect(node.addr("lists").unwrap()).await.unwrap();
    c.set("entry1_1", "0", 0, 0).await.unwrap();
    c.set("entry1_2", "0", 0, 0).await.unwrap();
    let got = raw(&mut c, "set entry1_3 0 0 1\r\n0\r\n").await;
    assert!(
        got.starts_with("CLIENT_ERROR list 1 holds 2 entries"),
        "{got}"
    );
    node.stop().unwrap();
}
