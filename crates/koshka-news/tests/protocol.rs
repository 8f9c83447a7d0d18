//! The news engine served by a real node over real sockets: events, masks, the raw feed
//! query (inline and temp author lists), notifications with grouping and hiding, bad input as
//! `CLIENT_ERROR`, a snapshot and a restart.
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
    config.engines.enabled = vec!["news".into()];
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
    c.stats(Some("snapshot")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while written(c.stats(None).await.unwrap()) == before {
        assert!(Instant::now() < deadline, "snapshot never completed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Splits a raw reply into its events: `(date, author, id, [type, user, group, owner, place,
/// item])`.
fn events(reply: &str) -> Vec<(u32, i32, u32, Vec<i64>)> {
    let nums: Vec<i64> = reply.split(',').map(|s| s.parse().unwrap()).collect();
    let n = usize::try_from(nums[0]).unwrap();
    assert_eq!(nums.len(), 1 + 9 * n, "{reply}");
    nums[1..]
        .chunks(9)
        .map(|c| {
            (
                u32::try_from(c[0]).unwrap(),
                i32::try_from(c[1]).unwrap(),
                u32::try_from(c[2]).unwrap(),
                c[3..].to_vec(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn news_over_the_protocol_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let node = koshka_node::start(config(dir.path()), &registry::builtin()).unwrap();
    let addr = node.addr("news").unwrap();
    let mut c = Client::connect(addr).await.unwrap();
    // Author 10 posts a status and a photo; group -20 a wall post; 30 a new friend.
    for (author, value) in [
        (10, "1,10,0,10,0,100"),
        (-20, "2,0,-20,-20,0,7"),
        (10, "3,10,0,10,5,200"),
        (30, "6,30,0,30,0,10"),
    ] {
        c.set(format!("update{author}"), value, 0, 0).await.unwrap();
    }
    let all = get(&mut c, "raw_updates4294967295_0,4294967295:10,-20,30,31")
        .await
        .unwrap();
    let evs = events(&all);
    assert_eq!(evs.len(), 4);
    let keys: Vec<(u32, i32, u32)> = evs.iter().map(|e| (e.0, e.1, e.2)).collect();
    let mut sorted = keys.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(keys, sorted, "newest first by (date, author, id)");
    let photo = evs.iter().find(|e| e.3[0] == 3).unwrap();
    assert_eq!(
        (photo.1, photo.2, photo.3.clone()),
        (10, 2, vec![3, 10, 0, 10, 5, 200])
    );
    // Author 10 hides photos from friends; types select; a temp list names the authors.
    c.set("mask10", "8", 0, 0).await.unwrap();
    assert_eq!(get(&mut c, "mask10").await.unwrap(), "9");
    assert_eq!(
        raw(&mut c, "set tempfr 0 0 5\r\n10,30\r\n").await,
        "STORED\r\n"
    );
    let mine = get(&mut c, "raw_updates4294967295_0,4294967295:-fr")
        .await
        .unwrap();
    let kinds: Vec<i64> = events(&mine).iter().map(|e| e.3[0]).collect();
    assert_eq!(kinds, vec![6, 1]);
    let limited = get(&mut c, "raw_updates64_0,4294967295#1:10,-20,30")
        .await
        .unwrap();
    assert_eq!(events(&limited)[0].3[0], 6);
    // Notifications: three likes of one post group into one block.
    for from in [5, 6, 5] {
        c.set("notify77", format!("5,{from},77,1,900"), 0, 0)
            .await
            .unwrap();
    }
    c.set("notify77", "3,8,77,0,0", 0, 0).await.unwrap();
    let grouped: serde_json::Value =
        serde_json::from_str(&get(&mut c, "notify77,2").await.unwrap()).unwrap();
    assert_eq!(grouped.as_array().unwrap().len(), 2);
    let likes = &grouped[1];
    assert_eq!(likes["type"], 5);
    assert_eq!(likes["count"], 3);
    assert_eq!(likes["users_total"], 2);
    assert_eq!(likes["users"], serde_json::json!([5, 6]));
    assert_eq!(likes["id"], 1);
    assert_eq!(get(&mut c, "notify_count77").await.unwrap(), "4");
    assert!(c.delete("notify77_4").await.unwrap());
    assert!(!c.delete("notify77_4").await.unwrap());
    assert!(c.delete("notify_user77_5").await.unwrap());
    assert_eq!(get(&mut c, "notify_count77").await.unwrap(), "1");
    let flat: serde_json::Value =
        serde_json::from_str(&get(&mut c, "notify77").await.unwrap()).unwrap();
    assert_eq!(flat[0]["user"], 6);
    assert!(c.delete("undelete_notify77_4").await.unwrap());
    // Bad input is refused with a reason.
    for (request, reply) in [
        (
            "set update0 0 0 11\r\n1,0,0,0,0,0\r\n",
            "CLIENT_ERROR author id 0 must be",
        ),
        (
            "set update5 0 0 11\r\n0,0,0,0,0,0\r\n",
            "CLIENT_ERROR type 0 outside 1..=31",
        ),
        (
            "set update5 0 0 3\r\n1,2\r\n",
            "CLIENT_ERROR value must be type,user,group",
        ),
        (
            "set notify5 0 0 1\r\n1\r\n",
            "CLIENT_ERROR value must be type,user,owner",
        ),
        (
            "get raw_updates1_0,1#10001:1\r\n",
            "CLIENT_ERROR limit 10001 exceeds 10000",
        ),
        (
            "get raw_updates1_0,1:-nope\r\n",
            "CLIENT_ERROR no temp list nope",
        ),
        (
            "get notify5,101\r\n",
            "CLIENT_ERROR grouping 101 exceeds 100",
        ),
        ("get feed5\r\n", "CLIENT_ERROR unknown news key"),
        (
            "incr update5 1\r\n",
            "CLIENT_ERROR command not supported by the news engine",
        ),
    ] {
        let got = raw(&mut c, request).await;
        assert!(got.starts_with(reply), "{request:?} → {got:?}");
    }
    snapshot(&mut c).await;
    assert!(c.delete("updates30").await.unwrap());
    c.set("update-20", "2,0,-20,-20,0,8", 0, 0).await.unwrap();
    drop(c);
    node.stop().unwrap();

    let node = koshka_node::start(config(dir.path()), &registry::builtin()).unwrap();
    let mut c = Client::connect(node.addr("news").unwrap()).await.unwrap();
    let after = get(&mut c, "raw_updates4294967295_0,4294967295:10,-20,30")
        .await
        .unwrap();
    let kinds: Vec<(i32, i64)> = events(&after).iter().map(|e| (e.1, e.3[5])).collect();
    assert_eq!(kinds.len(), 3, "{after}");
    assert!(kinds.contains(&(-20, 8)) && kinds.contains(&(-20, 7)) && kinds.contains(&(10, 100)));
    assert_eq!(get(&mut c, "mask10").await.unwrap(), "9");
    assert_eq!(get(&mut c, "notify_count77").await.unwrap(), "2");
    node.stop().unwrap();
}
