//! The search engine over the memcached protocol against the real `koshka serve`: items in
//! Russian and English, stemmed searches with every order and filter, duplicates hidden,
//! rating changes, deletes, bad input answered with `CLIENT_ERROR`, wrong-shard writes
//! refused, `stats`, and every acknowledged update surviving SIGKILL (and a snapshot) on the
//! same data directory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Node;
use koshka_client::{Client, Error, Status};

const ARGS: &[&str] = &["--engines", "search", "--threads", "1"];

async fn connect(node: &Node) -> Client {
    Client::connect(node.addr("search")).await.expect("connect")
}

async fn hit(client: &mut Client, key: &str) -> String {
    let item = client
        .get(key)
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e}"))
        .unwrap_or_else(|| panic!("get {key}: miss"));
    String::from_utf8(item.data).unwrap()
}

async fn store(client: &mut Client, key: &str, value: &str) {
    let status = client.set(key, value, 0, 0).await.unwrap();
    assert_eq!(status, Status::Stored, "set {key}");
}

/// `(owner, id)` of each hit of a search reply, in order, and the total.
fn hits(reply: &str) -> (u64, Vec<(i64, u32)>) {
    let found = koshka_keys::search::Found::parse(reply.as_bytes()).unwrap();
    (
        found.total,
        found.hits.iter().map(|h| (h.owner, h.id)).collect(),
    )
}

#[tokio::test]
async fn search_over_the_protocol() {
    let node = Node::start(ARGS);
    let mut c = connect(&node).await;
    store(&mut c, "item1_1", "1,100,5\tКошки любят молоко").await;
    store(
        &mut c,
        "item2_1",
        "1,200,9\tМоя кошка пьёт молоко каждый день",
    )
    .await;
    store(&mut c, "item-3_7", "3,300,1\tCats love milk").await;
    store(&mut c, "item4_2", "2,400,7\tthe cat drinks milk").await;
    // The same text again under another owner: shown once.
    store(&mut c, "item5_1", "1,500,3\tКошки любят молоко").await;

    assert_eq!(
        hits(&hit(&mut c, "search#R10(кошка+молоко)").await),
        (3, vec![(2, 1), (1, 1)])
    );
    assert_eq!(
        hits(&hit(&mut c, "search#r10(кошка+молоко)").await),
        (3, vec![(5, 1), (2, 1)])
    );
    assert_eq!(
        hits(&hit(&mut c, "search#D10(cat+milk)").await),
        (2, vec![(4, 2), (-3, 7)])
    );
    assert_eq!(
        hits(&hit(&mut c, "search#D10[t3](cat)").await),
        (1, vec![(-3, 7)])
    );
    assert_eq!(
        hits(&hit(&mut c, "search#D10[o-3](cat)").await),
        (1, vec![(-3, 7)])
    );
    assert_eq!(
        hits(&hit(&mut c, "search#d10[d150,450](молоко)").await),
        (1, vec![(2, 1)])
    );
    assert_eq!(
        hits(&hit(&mut c, "search#d1,1(молоко)").await),
        (3, vec![(2, 1)])
    );
    assert_eq!(hits(&hit(&mut c, "search#D0(milk)").await), (2, vec![]));
    // Relevance: the short text that says "cat" once in three words beats the longer one.
    assert_eq!(
        hits(&hit(&mut c, "search#P10(cats)").await),
        (2, vec![(-3, 7), (4, 2)])
    );
    assert_eq!(hits(&hit(&mut c, "search#R10(nothing)").await), (0, vec![]));

    assert_eq!(c.incr("rate1_1", 10).await.unwrap(), Some(15));
    assert_eq!(c.decr("rate1_1", 100).await.unwrap(), Some(0));
    store(&mut c, "rate-3_7", "50").await;
    assert_eq!(hit(&mut c, "item-3_7").await.split(',').nth(2), Some("50"));
    assert_eq!(
        c.set("rate9_9", "1", 0, 0).await.unwrap(),
        Status::NotStored
    );
    assert_eq!(c.incr("rate9_9", 1).await.unwrap(), None);
    assert!(c.delete("item5_1").await.unwrap());
    assert!(!c.delete("item5_1").await.unwrap());
    assert_eq!(
        hits(&hit(&mut c, "search#R10(кошка+молоко)").await),
        (2, vec![(2, 1), (1, 1)])
    );
    assert_eq!(c.get("item5_1").await.unwrap(), None);

    for bad in [
        "search#R1001(a)",
        "search#R10,9991(a)",
        "search#Q10(a)",
        "search#R10[t99](a)",
        "search#R10(a",
        "item0_1",
        "nothing",
    ] {
        assert!(
            matches!(c.get(bad).await, Err(Error::ClientError(_))),
            "get {bad}"
        );
    }
    for (key, value) in [
        ("item1_1", "1,1,1"),
        ("item1_1", "0,1,1\tx"),
        ("rate1_1", "x"),
    ] {
        assert!(
            matches!(c.set(key, value, 0, 0).await, Err(Error::ClientError(_))),
            "set {key}"
        );
    }
    let long = format!(
        "1,1,1\t{}",
        "a".repeat(koshka_keys::search::ITEM_TEXT_BYTES_MAX + 1)
    );
    assert!(matches!(
        c.set("item1_1", long, 0, 0).await,
        Err(Error::ClientError(_))
    ));
    // The connection is still usable.
    assert_eq!(hit(&mut c, "item1_1").await.split(',').next(), Some("1"));

    let stats: std::collections::HashMap<String, String> =
        c.stats(None).await.unwrap().into_iter().collect();
    assert_eq!(stats["search_items"], "4");
    assert!(stats["search_bytes_per_item"].parse::<u64>().unwrap() > 48);
}

#[tokio::test]
async fn a_shard_refuses_other_shards_items() {
    let (_config_dir, config) = common::config_file(
        "[server]\nthreads = 1\n[engines]\nenabled = [\"search\"]\nshard_index = 1\nshard_count = 4\n",
    );
    let node = Node::start_expecting(
        tempfile::tempdir().unwrap(),
        &["--config", &config],
        &["search"],
    );
    let mut c = connect(&node).await;
    store(&mut c, "item5_1", "1,1,1\tfive").await;
    store(&mut c, "item-5_1", "1,1,1\tminus five").await;
    let refused = c.set("item6_1", "1,1,1\tsix", 0, 0).await;
    assert!(matches!(refused, Err(Error::ClientError(m)) if m.contains("wrong shard")));
    assert_eq!(hits(&hit(&mut c, "search#R10(five)").await).0, 2);
}

/// Starts a snapshot and waits (bounded) until it is written.
async fn snapshot(c: &mut Client) {
    let written = |stats: Vec<(String, String)>| -> u64 {
        stats
            .into_iter()
            .find(|(k, _)| k == "snapshots_written")
            .map_or(0, |(_, v)| v.parse().unwrap())
    };
    let before = written(c.stats(None).await.unwrap());
    let reply = c.stats(Some("snapshot")).await.unwrap();
    assert!(
        reply.iter().any(|(k, v)| k == "snapshot" && v == "started"),
        "{reply:?}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while written(c.stats(None).await.unwrap()) <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "snapshot never completed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Acknowledged updates survive SIGKILL: from the log alone, and from a snapshot plus the
/// log written after it.
#[tokio::test]
async fn acknowledged_updates_survive_sigkill() {
    let mut node = Node::start(ARGS);
    let mut c = connect(&node).await;
    for id in 1..=300u32 {
        let text = if id % 2 == 0 {
            "Собаки бегают быстро"
        } else {
            "dogs run fast"
        };
        store(
            &mut c,
            &format!("item{}_{id}", id % 17 + 1),
            &format!("1,{id},{id}\t{text} {id}"),
        )
        .await;
    }
    snapshot(&mut c).await;
    for id in 1..=100u32 {
        assert!(c.delete(format!("item{}_{id}", id % 17 + 1)).await.unwrap());
    }
    assert_eq!(c.incr("rate17_288", 1000).await.unwrap(), Some(1288));
    let before = hit(&mut c, "search#R20(собака)").await;
    let before_en = hit(&mut c, "search#d20,5(dog)").await;
    drop(c);
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    let dir = std::mem::replace(&mut node.dir, tempfile::tempdir().unwrap());
    drop(node);
    let node = Node::start_in(dir, ARGS);
    let mut c = connect(&node).await;
    assert_eq!(hit(&mut c, "search#R20(собака)").await, before);
    assert_eq!(hit(&mut c, "search#d20,5(dog)").await, before_en);
    assert_eq!(hits(&before).0, 100);
    assert_eq!(hits(&before).1[0], (17, 288));
}
