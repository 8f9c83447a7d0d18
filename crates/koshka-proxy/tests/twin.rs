//! Twin writes: cross-shard sends and friendships through the proxy look like one node's;
//! the second half lands after its shard's outage, after a proxy restart (durable queue), and
//! exactly once when the first attempt landed unseen.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::{cluster, Relay, Shards};
use koshka_client::Client;
use koshka_proxy::config::{Config, Family};

/// 4 shards; shard 2's messages and friends ports behind relays.
struct Rig {
    shards: Shards,
    messages: Relay,
    friends: Relay,
}

impl Rig {
    async fn start() -> Rig {
        let shards = Shards::start(4);
        let messages = Relay::start(shards.addr(2, Family::Messages)).await;
        let friends = Relay::start(shards.addr(2, Family::Friends)).await;
        Rig {
            shards,
            messages,
            friends,
        }
    }

    fn config(&self, queue: Option<std::path::PathBuf>) -> Config {
        let mut config = Config::default();
        config.proxy.get_timeout_ms = 500;
        config.proxy.set_timeout_ms = 500;
        config.proxy.reconnect_min_ms = 50;
        config.proxy.reconnect_max_ms = 200;
        config.twin.queue = queue;
        config.twin.retry_min_ms = 50;
        config.twin.retry_max_ms = 200;
        for (family, relay) in [
            (Family::Messages, &self.messages),
            (Family::Friends, &self.friends),
        ] {
            let addrs = (0..4)
                .map(|i| {
                    if i == 2 {
                        relay.addr.to_string()
                    } else {
                        self.shards.addr(i, family).to_string()
                    }
                })
                .collect();
            config.clusters.push(cluster(family, addrs));
        }
        config
    }

    async fn direct(&self, shard: usize, family: Family) -> Client {
        Client::connect(self.shards.addr(shard, family))
            .await
            .unwrap()
    }
}

async fn start(config: Config) -> koshka_proxy::Running {
    tokio::task::spawn_blocking(move || koshka_proxy::start(config).unwrap())
        .await
        .unwrap()
}

fn without_date(json: &[u8]) -> String {
    let text = String::from_utf8_lossy(json).into_owned();
    let start = text.find("\"date\":").unwrap();
    let end = start + text[start..].find(',').unwrap();
    format!("{}{}", &text[..start], &text[end + 1..])
}

async fn value(client: &mut Client, key: &str) -> Option<String> {
    client
        .get(key)
        .await
        .unwrap()
        .map(|item| String::from_utf8(item.data).unwrap())
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not happen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_shard_writes_look_like_one_node() {
    let rig = Rig::start().await;
    let proxy = start(rig.config(None)).await;
    let single_dir = tempfile::tempdir().unwrap();
    let single = common::single_node(single_dir.path());
    let mut via = Client::connect(proxy.addr("messages").unwrap())
        .await
        .unwrap();
    let mut one = Client::connect(single.addr("messages").unwrap())
        .await
        .unwrap();
    // 1001 (shard 1) writes to 1002 (shard 2), twice, tagged and pipelined with newmsgid.
    for client in [&mut via, &mut one] {
        client
            .set("sendmsg1001_1002#t1", "8\nHi\tfirst", 0, 0)
            .await
            .unwrap();
        client
            .set("sendmsg1002_1001", "0\nsecond", 0, 0)
            .await
            .unwrap();
        client.set("newmsg1001#n", "0,7\nnote", 0, 0).await.unwrap();
    }
    for key in [
        "newmsgid1001#t1",
        "newmsgid1002#t1",
        "newmsgid1001#n",
        "newmsgid1001",
        "newmsgid1002",
    ] {
        assert_eq!(
            value(&mut via, key).await,
            value(&mut one, key).await,
            "{key}"
        );
    }
    for key in [
        "message1001_1",
        "message1002_1",
        "message1001_2",
        "message1002_2",
        "message1001_3",
    ] {
        let a = via.get(key).await.unwrap().unwrap();
        let b = one.get(key).await.unwrap().unwrap();
        assert_eq!(without_date(&a.data), without_date(&b.data), "{key}");
    }
    for key in [
        "topmsglist1001",
        "topmsglist1002",
        "history1002#0",
        "unreadcount1002",
        "peermsglist1001_1002",
    ] {
        assert_eq!(
            value(&mut via, key).await,
            value(&mut one, key).await,
            "{key}"
        );
    }
    // Friendships: 5 (shard 1) and 6 (shard 2).
    let mut via = Client::connect(proxy.addr("friends").unwrap())
        .await
        .unwrap();
    let mut one = Client::connect(single.addr("friends").unwrap())
        .await
        .unwrap();
    for client in [&mut via, &mut one] {
        client.set("friend6_9", "4", 0, 0).await.unwrap(); // 6 already friends 9 (shard 1)
        client.set("friend5_6", "6", 0, 0).await.unwrap();
        client.set("friend9_6", "0", 0, 0).await.unwrap(); // 9's half exists: 6's mask stays
    }
    for key in [
        "friend5_6",
        "friend6_5",
        "friends5",
        "friends6",
        "friend6_9",
        "friends_masks9",
    ] {
        assert_eq!(
            value(&mut via, key).await,
            value(&mut one, key).await,
            "{key}"
        );
    }
    let a = via.send_raw(b"delete friend6_5\r\n").await.unwrap();
    let b = one.send_raw(b"delete friend6_5\r\n").await.unwrap();
    assert_eq!(a, b);
    let a = via.send_raw(b"delete friend6_5\r\n").await.unwrap();
    let b = one.send_raw(b"delete friend6_5\r\n").await.unwrap();
    assert_eq!(a, b);
    for key in ["friends5", "friends6"] {
        assert_eq!(
            value(&mut via, key).await,
            value(&mut one, key).await,
            "{key}"
        );
    }
    // delete user removes its halves on the other shards too.
    for client in [&mut via, &mut one] {
        assert_eq!(
            client.send_raw(b"delete user6\r\n").await.unwrap(),
            b"DELETED\r\n"
        );
    }
    for key in ["friends9", "friends6"] {
        assert_eq!(
            value(&mut via, key).await,
            value(&mut one, key).await,
            "{key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_halves_land_after_the_shard_returns() {
    let rig = Rig::start().await;
    let proxy = start(rig.config(None)).await;
    let mut messages = Client::connect(proxy.addr("messages").unwrap())
        .await
        .unwrap();
    let mut friends = Client::connect(proxy.addr("friends").unwrap())
        .await
        .unwrap();
    rig.messages.set_down(true);
    rig.friends.set_down(true);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The recipient's shard is down: the write is acknowledged, the first half is there.
    let reply = messages
        .send_raw(b"set sendmsg1001_1002#x 0 0 7\r\n0\nhello\r\n")
        .await
        .unwrap();
    assert_eq!(reply, b"STORED\r\n");
    assert_eq!(
        value(&mut messages, "newmsgid1001#x").await.as_deref(),
        Some("1")
    );
    let mut sender = rig.direct(1, Family::Messages).await;
    let copy = value(&mut sender, "message1001_1").await.unwrap();
    assert!(copy.contains("\"peer_msg_id\":0"), "{copy}");
    assert_eq!(
        friends
            .send_raw(b"set friend5_6 0 0 1\r\n2\r\n")
            .await
            .unwrap(),
        b"STORED\r\n"
    );
    let stats = messages.stats(Some("proxy")).await.unwrap();
    assert!(
        stats
            .iter()
            .any(|(n, v)| n == "proxy_twin_queued" && v == "1"),
        "{stats:?}"
    );
    // The shard returns; the queue lands both halves, once.
    rig.messages.set_down(false);
    rig.friends.set_down(false);
    let mut recipient = rig.direct(2, Family::Messages).await;
    eventually("the recipient's copy", async || {
        value(&mut sender, "message1001_1")
            .await
            .unwrap()
            .contains("\"peer_msg_id\":1,")
    })
    .await;
    let inbox = value(&mut recipient, "message1002_1").await.unwrap();
    assert!(
        inbox.contains("\"peer\":1001,\"peer_msg_id\":1,"),
        "{inbox}"
    );
    assert!(inbox.contains("\"flags\":1,"), "{inbox}");
    assert_eq!(
        value(&mut recipient, "peermsglist1002_1001")
            .await
            .as_deref(),
        Some("1,1")
    );
    let mut friend_shard = rig.direct(2, Family::Friends).await;
    eventually("the friend half", async || {
        value(&mut friend_shard, "friend6_5").await.as_deref() == Some("1")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_proxy_lands_the_queued_halves() {
    let rig = Rig::start().await;
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("twin.queue");
    let proxy = start(rig.config(Some(queue.clone()))).await;
    let mut messages = Client::connect(proxy.addr("messages").unwrap())
        .await
        .unwrap();
    let mut friends = Client::connect(proxy.addr("friends").unwrap())
        .await
        .unwrap();
    rig.messages.set_down(true);
    rig.friends.set_down(true);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..5 {
        let request = format!("set sendmsg1001_1002 0 0 6\r\n0\nmsg{i}\r\n");
        assert_eq!(
            messages.send_raw(request.as_bytes()).await.unwrap(),
            b"STORED\r\n"
        );
    }
    assert_eq!(
        friends
            .send_raw(b"set friend5_6 0 0 1\r\n0\r\n")
            .await
            .unwrap(),
        b"STORED\r\n"
    );
    assert_eq!(
        friends
            .send_raw(b"set friend9_10 0 0 1\r\n0\r\n")
            .await
            .unwrap(),
        b"STORED\r\n"
    );
    // The proxy dies between the halves.
    drop(messages);
    drop(friends);
    tokio::task::spawn_blocking(move || proxy.stop().unwrap())
        .await
        .unwrap();
    rig.messages.set_down(false);
    rig.friends.set_down(false);
    let mut recipient = rig.direct(2, Family::Messages).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        value(&mut recipient, "peermsglist1002_1001")
            .await
            .as_deref(),
        Some("0")
    );
    // A new proxy on the same queue file lands them.
    let proxy = start(rig.config(Some(queue.clone()))).await;
    eventually("the five recipient copies", async || {
        value(&mut recipient, "peermsglist1002_1001#1,-1")
            .await
            .as_deref()
            == Some("5,1,2,3,4,5")
    })
    .await;
    let mut sender = rig.direct(1, Family::Messages).await;
    eventually("the links", async || {
        value(&mut sender, "message1001_5")
            .await
            .unwrap()
            .contains("\"peer_msg_id\":")
            && !value(&mut sender, "message1001_5")
                .await
                .unwrap()
                .contains("\"peer_msg_id\":0")
    })
    .await;
    let mut friend_shard = rig.direct(2, Family::Friends).await;
    eventually("the friend halves", async || {
        value(&mut friend_shard, "friends6").await.as_deref() == Some("1,5")
            && value(&mut friend_shard, "friends10").await.as_deref() == Some("1,9")
    })
    .await;
    drop(proxy);
    let text = std::fs::read_to_string(&queue).unwrap();
    let added = text.matches("\"add\"").count();
    let done = text.matches("\"done\"").count();
    assert_eq!(added, done, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_that_landed_unseen_is_not_written_twice() {
    let rig = Rig::start().await;
    let proxy = start(rig.config(None)).await;
    let mut messages = Client::connect(proxy.addr("messages").unwrap())
        .await
        .unwrap();
    // The recipient's shard answers after the proxy gave up: the copy lands, unseen.
    rig.messages.set_delay(800);
    let reply = messages
        .send_raw(b"set sendmsg1001_1002 0 0 7\r\n0\nslow!\r\n")
        .await
        .unwrap();
    assert_eq!(reply, b"STORED\r\n");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    rig.messages.set_delay(0);
    let mut sender = rig.direct(1, Family::Messages).await;
    eventually("the link", async || {
        value(&mut sender, "message1001_1")
            .await
            .unwrap()
            .contains("\"peer_msg_id\":1,")
    })
    .await;
    let mut recipient = rig.direct(2, Family::Messages).await;
    assert_eq!(
        value(&mut recipient, "peermsglist1002_1001")
            .await
            .as_deref(),
        Some("1,1")
    );
    assert_eq!(
        value(&mut recipient, "sublist1002_0:0").await.as_deref(),
        Some("1,1")
    );
}

/// A repost of a post on another shard's wall: the copy (with the original's kludges, subject
/// and text) on the reposting wall and COPIED on the original, as on one node; a deleted or
/// missing original is `NOT_FOUND` with nothing written. A COPIED flag still in the durable
/// queue (the proxy died between the halves) lands when a proxy starts on the queue file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_shard_reposts_look_like_one_node() {
    let clock: std::sync::Arc<dyn koshka_engine::Clock> =
        std::sync::Arc::new(koshka_engine::ManualClock::new(1_800_000_000));
    let shards = Shards::start_with(4, Some(&clock));
    let single_dir = tempfile::tempdir().unwrap();
    let single = common::single_node_with(single_dir.path(), Some(&clock));
    let wall_map = |queue: Option<std::path::PathBuf>| {
        let mut config = Config::default();
        config.twin.queue = queue;
        config.twin.retry_min_ms = 50;
        config.clusters.push(cluster(
            Family::Wall,
            (0..4)
                .map(|i| shards.addr(i, Family::Wall).to_string())
                .collect(),
        ));
        config
    };
    let proxy = start(wall_map(None)).await;
    let mut via = Client::connect(proxy.addr("wall").unwrap()).await.unwrap();
    let mut one = Client::connect(single.addr("wall").unwrap()).await.unwrap();
    // Walls 1001 and 1005 on shard 1, 1002 on shard 2, 1003 on shard 3.
    for request in [
        &b"set newpost1001 0 0 38\r\n0,1001\n\x01src web\tGreetings\tthe original\r\n"[..],
        b"set newpost1001 0 0 13\r\n0,1001\ndoomed\r\n",
        b"incr flags1001_2 128\r\n",
        b"set repost1002#r 0 0 11\r\n1001,1,1002\r\n",
        b"set repost1003 0 0 13\r\n1001,1,1003,4\r\n",
        b"set repost1002 0 0 11\r\n1001,2,1002\r\n",
        b"set repost1002 0 0 12\r\n1001,99,1002\r\n",
        b"set repost1005 0 0 11\r\n1002,1,1005\r\n",
        b"set repost1005 0 0 11\r\n1001,1,1005\r\n",
        b"get newpostid1002#r\r\n",
        b"get post1001_1#2\r\n",
        b"get post1002_1#2\r\n",
        b"get post1003_1#2\r\n",
        b"get post1005_1#2\r\n",
        b"get post1005_2#2\r\n",
        b"get sublist1002_130:2\r\n",
        b"get sublist1001_129:0\r\n",
        b"get post1001_2\r\n",
    ] {
        let a = via.send_raw(request).await.unwrap();
        let b = one.send_raw(request).await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&a),
            String::from_utf8_lossy(&b),
            "{}",
            String::from_utf8_lossy(request)
        );
        assert!(
            !a.starts_with(b"SERVER_ERROR") && !a.starts_with(b"CLIENT_ERROR"),
            "{}: {}",
            String::from_utf8_lossy(request),
            String::from_utf8_lossy(&a)
        );
    }
    // The copies really are there, with the original's parts and their origin.
    let copy = value(&mut via, "post1002_1#2").await.unwrap();
    assert!(copy.contains(r#""kludges":"\u0001src web\t""#), "{copy}");
    assert!(copy.contains(r#""origin":{"id":1,"owner":1001}"#), "{copy}");
    assert!(copy.contains(r#""subject":"Greetings""#), "{copy}");
    let original = value(&mut via, "post1001_1").await.unwrap();
    assert!(original.contains(r#""flags":256"#), "{original}");
    drop(proxy);

    // A COPIED flag left in the queue file by a proxy that died after the copy: post 3 on
    // wall 1001, written on its shard directly, not yet marked.
    let mut node = Client::connect(shards.addr(1, Family::Wall)).await.unwrap();
    let third = b"set newpost1001 0 0 12\r\n0,1001\nthird\r\n";
    assert_eq!(node.send_raw(third).await.unwrap(), b"STORED\r\n");
    // `repost_half` of an original that lives on the node itself is refused (`repost` is
    // the key for that).
    let local = node
        .send_raw(b"set repost_half1005 0 0 13\r\n1001,1,1005\nx\r\n")
        .await
        .unwrap();
    assert!(local.starts_with(b"CLIENT_ERROR repost_half"), "{local:?}");
    let unmarked = value(&mut node, "post1001_3").await.unwrap();
    assert!(unmarked.contains(r#""flags":0"#), "{unmarked}");
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("twin.queue");
    std::fs::write(
        &queue,
        "{\"add\":{\"id\":1,\"half\":{\"copied\":{\"cluster\":\"wall\",\"owner\":1001,\"id\":3}}}}\n",
    )
    .unwrap();
    let _proxy = start(wall_map(Some(queue))).await;
    eventually("the queued COPIED flag", async || {
        value(&mut node, "post1001_3")
            .await
            .is_some_and(|post| post.contains(r#""flags":256"#))
    })
    .await;
}
