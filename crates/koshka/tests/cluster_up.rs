//! `koshka cluster up`: the real binary starts nodes and the proxy on loopback, prints every
//! proxy port, serves every engine family through them (kv, a cross-shard friendship, a
//! follow on the lists port and the feed assembled from it), and stops on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use koshka_client::Client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_up_serves_every_family_through_the_proxy_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_koshka"))
        .args(["cluster", "up", "--shards", "3", "--base-port", "0"])
        .args(["--cache-servers", "0", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut ports: HashMap<String, std::net::SocketAddr> = HashMap::new();
    let started = Instant::now();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("cluster up printed nothing for 30 s");
        if let Some(rest) = line.strip_prefix("proxy ") {
            let (family, addr) = rest.split_once(": ").unwrap();
            ports.insert(family.to_string(), addr.parse().unwrap());
        }
        if line.starts_with("ready") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30));
    }
    for family in [
        "kv", "messages", "wall", "friends", "news", "lists", "search",
    ] {
        assert!(
            ports.contains_key(family),
            "no proxy port for {family}: {ports:?}"
        );
    }
    assert!(dir.path().join("proxy.toml").exists());
    let mut kv = Client::connect(ports["kv"]).await.unwrap();
    kv.set("hello", b"world", 0, 0).await.unwrap();
    assert_eq!(kv.get("hello").await.unwrap().unwrap().data, b"world");
    // Users 1 and 2 live on different shards of 3: a twin write.
    let mut friends = Client::connect(ports["friends"]).await.unwrap();
    let set = |key: &str, value: &str| format!("set {key} 0 0 {}\r\n{value}\r\n", value.len());
    let reply = friends
        .send_raw(set("friend1_2", "1").as_bytes())
        .await
        .unwrap();
    assert_eq!(reply, b"STORED\r\n");
    // User 1 follows group 7; group 7 and friend 2 post.
    let mut lists = Client::connect(ports["lists"]).await.unwrap();
    let reply = lists
        .send_raw(set("entry1_-7", "0").as_bytes())
        .await
        .unwrap();
    assert_eq!(reply, b"STORED\r\n");
    let mut news = Client::connect(ports["news"]).await.unwrap();
    for author in ["-7", "2"] {
        let reply = news
            .send_raw(set(&format!("update{author}"), "1,0,0,0,0,5").as_bytes())
            .await
            .unwrap();
        assert_eq!(reply, b"STORED\r\n");
    }
    let feed = news.get("feed1").await.unwrap().expect("a feed");
    let feed: serde_json::Value = serde_json::from_slice(&feed.data).unwrap();
    let mut authors: Vec<i64> = feed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["author"].as_i64().unwrap())
        .collect();
    authors.sort_unstable();
    assert_eq!(authors, [-7, 2], "{feed}");
    // SIGTERM stops everything.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "cluster up did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        Client::connect(ports["kv"]).await.is_err(),
        "the proxy still listens"
    );
}
