//! The compiled-key engines (messages, wall, friends) over the memcached protocol, driven with
//! koshka's Rust client against the real `koshka serve`: the tag handshake, dialogs, sublists,
//! Russian and English search, flags, the history cursor, wall posts and statuses, friends,
//! common friends and privacy checks, wrong-shard errors, unsupported commands, and state
//! surviving a SIGTERM restart on the same data directory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{config_file, Node};
use koshka_client::{Client, Error, Response, Status};
use serde_json::Value;

async fn connect(node: &Node, engine: &str) -> Client {
    Client::connect(node.addr(engine)).await.expect("connect")
}

/// `get key` as text; `None` on a miss.
async fn text(client: &mut Client, key: &str) -> Option<String> {
    client
        .get(key)
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e}"))
        .map(|item| String::from_utf8(item.data).expect("utf-8 value"))
}

/// `get key` that must hit.
async fn hit(client: &mut Client, key: &str) -> String {
    text(client, key)
        .await
        .unwrap_or_else(|| panic!("get {key}: miss"))
}

/// `get key` as JSON.
async fn json(client: &mut Client, key: &str) -> Value {
    serde_json::from_str(&hit(client, key).await).expect("JSON value")
}

/// `set key value` that must be stored.
async fn store(client: &mut Client, key: &str, value: &str) {
    let status = client
        .set(key, value, 0, 0)
        .await
        .unwrap_or_else(|e| panic!("set {key}: {e}"));
    assert_eq!(status, Status::Stored, "set {key}");
}

/// The `CLIENT_ERROR` message a `get` provokes.
async fn client_error(client: &mut Client, key: &str) -> String {
    match client.get(key).await {
        Err(Error::ClientError(message)) => message,
        other => panic!("get {key}: expected CLIENT_ERROR, got {other:?}"),
    }
}

/// Sends `set <key>#<tag>` and `get <id_key>#<tag>` in one write (the tag handshake) and
/// returns the id allocated.
async fn create_tagged(
    client: &mut Client,
    key: &str,
    id_key: &str,
    tag: &str,
    value: &str,
) -> u64 {
    let mut pipeline = client.pipeline();
    pipeline.set(format!("{key}#{tag}"), value, 0, 0).unwrap();
    pipeline.get(format!("{id_key}#{tag}")).unwrap();
    let replies = pipeline.execute().await.expect("pipeline");
    assert_eq!(
        replies[0],
        Response::Status(Status::Stored),
        "set {key}#{tag}"
    );
    let Response::Values(items) = &replies[1] else {
        panic!("get {id_key}#{tag}: {:?}", replies[1]);
    };
    assert_eq!(items.len(), 1, "get {id_key}#{tag}: {items:?}");
    std::str::from_utf8(&items[0].data)
        .unwrap()
        .parse()
        .expect("numeric id")
}

/// Sends a message and returns (sender's lid, recipient's lid).
async fn send(client: &mut Client, from: u32, to: u32, tag: &str, value: &str) -> (u64, u64) {
    let mut pipeline = client.pipeline();
    pipeline
        .set(format!("sendmsg{from}_{to}#{tag}"), value, 0, 0)
        .unwrap();
    pipeline.get(format!("newmsgid{from}#{tag}")).unwrap();
    pipeline.get(format!("newmsgid{to}#{tag}")).unwrap();
    let replies = pipeline.execute().await.expect("pipeline");
    assert_eq!(replies[0], Response::Status(Status::Stored));
    let id = |reply: &Response| match reply {
        Response::Values(items) if items.len() == 1 => std::str::from_utf8(&items[0].data)
            .unwrap()
            .parse::<u64>()
            .unwrap(),
        other => panic!("newmsgid: {other:?}"),
    };
    (id(&replies[1]), id(&replies[2]))
}

#[tokio::test]
async fn messages_send_read_dialogs_flags_search_history() {
    let node = Node::start(&["--engines", "messages", "--threads", "1"]);
    let mut c = connect(&node, "messages").await;

    assert_eq!(
        send(&mut c, 1000, 2002, "7f3a", "8\nHi\tHello Bob").await,
        (1, 1)
    );
    let inbox = json(&mut c, "message2002_1").await;
    assert_eq!(inbox["peer"], 1000);
    assert_eq!(inbox["flags"], 9, "UNREAD | IMPORTANT");
    assert_eq!(inbox["subject"], "Hi");
    assert_eq!(inbox["text"], "Hello Bob");
    assert_eq!(inbox["peer_msg_id"], 1);
    let outbox = json(&mut c, "message1000_1").await;
    assert_eq!(outbox["flags"], 10, "OUTBOX | IMPORTANT");
    assert_eq!(outbox["peer"], 2002);
    // The same tag on another connection knows nothing.
    let mut other = connect(&node, "messages").await;
    assert_eq!(text(&mut other, "newmsgid1000#7f3a").await, None);

    assert_eq!(
        send(
            &mut c,
            3003,
            2002,
            "t2",
            "0\nПривет! Сообщения о погоде на завтра"
        )
        .await,
        (1, 2)
    );
    assert_eq!(
        send(&mut c, 2002, 1000, "t3", "0\nI was running home").await,
        (3, 2)
    );

    // Dialogs: newest first, (lid, peer, unread) each.
    assert_eq!(hit(&mut c, "topmsglist2002").await, "2,3,1000,1,2,3003,1");
    // Sublists.
    assert_eq!(hit(&mut c, "sublist2002_131:1").await, "2,2,1");
    assert_eq!(hit(&mut c, "sublist2002_130:2").await, "1,3");
    assert_eq!(hit(&mut c, "sublist2002_0:0#1,2").await, "3,1,2");
    assert_eq!(hit(&mut c, "sublist2002_0:0#0,0").await, "3");
    assert_eq!(hit(&mut c, "sublistpos2002_131:1,2").await, "2");
    assert!(hit(&mut c, "sublists_types")
        .await
        .starts_with("0:0,128:0,130:0"));
    assert!(client_error(&mut c, "sublist2002_3:5")
        .await
        .starts_with("unsupported sublist 3:5"));
    assert_eq!(hit(&mut c, "peermsglist2002_1000").await, "2,3,1");
    assert_eq!(hit(&mut c, "unreadcount2002").await, "2");
    assert_eq!(hit(&mut c, "unreadcount2002_1000").await, "1");

    // History cursor: events after a timestamp, then an empty tail.
    let ts: u64 = hit(&mut c, "timestamp2002").await.parse().unwrap();
    assert!(ts > 0);
    assert_eq!(
        hit(&mut c, &format!("history2002#{ts}")).await,
        ts.to_string()
    );

    // Reading and flags.
    store(&mut c, "readall2002_1000", "").await;
    assert_eq!(hit(&mut c, "unreadcount2002").await, "1");
    assert_eq!(c.incr("flags2002_2", 8).await.unwrap(), Some(9));
    assert_eq!(c.decr("flags2002_2", 1).await.unwrap(), Some(8));
    assert_eq!(hit(&mut c, "flags2002_2").await, "8");
    assert_eq!(hit(&mut c, "sublist2002_136:8").await, "2,2,1");
    assert_eq!(c.incr("flags2002_99", 8).await.unwrap(), None);
    let events = hit(&mut c, &format!("history2002#{ts}")).await;
    let fields: Vec<u64> = events.split(',').map(|f| f.parse().unwrap()).collect();
    assert!(fields[0] > ts, "{events}");
    // read up to (the dialog's newest lid 3, peer 1000), flags added (2, 8), flags cleared (2, 1).
    assert_eq!(&fields[1..], &[6, 3, 1000, 2, 2, 8, 3, 2, 1], "{events}");
    let ts2 = fields[0];
    assert_eq!(
        hit(&mut c, &format!("history2002#{ts2}")).await,
        ts2.to_string()
    );
    assert_eq!(
        hit(&mut c, &format!("history2002#{ts},1")).await,
        format!("{},6,3,1000", ts + 1)
    );

    // Search: Russian stems, English stems, escapes, AND, filters.
    assert_eq!(hit(&mut c, "search(2002,10,сообщение)").await, "1,2");
    assert_eq!(hit(&mut c, "search(2002,10,ПОГОДА)").await, "1,2");
    assert_eq!(
        hit(
            &mut c,
            "search(2002,10,%D0%BF%D0%BE%D0%B3%D0%BE%D0%B4%D1%8B)"
        )
        .await,
        "1,2"
    );
    assert_eq!(hit(&mut c, "search(2002,10,run)").await, "1,3");
    assert_eq!(hit(&mut c, "search(2002,10,hello+bob)").await, "1,1");
    assert_eq!(hit(&mut c, "search(2002,10,hello+погода)").await, "0");
    assert_eq!(hit(&mut c, "search(2002,10,nothing)").await, "0");
    assert_eq!(hit(&mut c, "search(1000,10,hello)").await, "1,1");
    assert_eq!(
        hit(&mut c, "xsearch(2002,0:0,3003,0,0,10,сообщения)").await,
        "1,2"
    );
    assert_eq!(
        hit(&mut c, "xsearch(2002,0:0,1000,0,0,10,сообщения)").await,
        "0"
    );

    // Editing and deleting.
    store(&mut c, "message_text2002_2", "Новая\tтема без слов").await;
    assert_eq!(hit(&mut c, "search(2002,10,погода)").await, "0");
    assert_eq!(json(&mut c, "message2002_2").await["subject"], "Новая");
    assert!(c.delete("message2002_3").await.unwrap());
    assert!(!c.delete("message2002_3").await.unwrap());
    assert_eq!(text(&mut c, "message2002_3").await, None);
    assert_eq!(hit(&mut c, "peermsglist2002_1000").await, "1,1");

    // Bad keys.
    assert!(client_error(&mut c, "message0_1").await.len() > 3);
    assert!(client_error(&mut c, "bogus2002").await.len() > 3);
    assert_eq!(
        client_error(&mut c, "status2002").await,
        "command not supported by the messages engine"
    );
}

#[tokio::test]
async fn wall_posts_replies_reposts_statuses() {
    let node = Node::start(&["--engines", "wall", "--threads", "1"]);
    let mut c = connect(&node, "wall").await;

    assert_eq!(
        create_tagged(
            &mut c,
            "newpost500",
            "newpostid500",
            "p",
            "0,500\nFirst\tHello wall"
        )
        .await,
        1
    );
    let post = json(&mut c, "post500_1").await;
    assert_eq!(post["author"], 500);
    assert_eq!(post["subject"], "First");
    assert_eq!(post["text"], "Hello wall");
    assert_eq!(post["flags"], 0);

    assert_eq!(
        create_tagged(
            &mut c,
            "newpost500",
            "newpostid500",
            "r",
            "0,600,1\nnice post"
        )
        .await,
        2
    );
    let reply = json(&mut c, "post500_2").await;
    assert_eq!(reply["reply_to"], 1);
    assert_eq!(reply["flags"], 1, "REPLY is set automatically");
    assert_eq!(hit(&mut c, "replies500_1").await, "1,2");
    // A reply to a missing post is refused.
    assert_eq!(
        c.set("newpost500#x", "0,600,99\nlost", 0, 0).await.unwrap(),
        Status::NotFound
    );

    // Statuses: the newest non-deleted one is current.
    store(&mut c, "status500", "feeling good").await;
    store(&mut c, "status500", "even better").await;
    assert_eq!(json(&mut c, "status500").await["text"], "even better");
    let statuses = json(&mut c, "statuses500").await;
    assert_eq!(statuses["total"], 2);
    let status_id = json(&mut c, "status500").await["id"].as_u64().unwrap();
    c.incr(&format!("flags500_{status_id}"), 128).await.unwrap();
    assert_eq!(json(&mut c, "status500").await["text"], "feeling good");
    assert_eq!(text(&mut c, "status501").await, None);

    // Reposts copy the text and mark the original.
    assert_eq!(
        create_tagged(&mut c, "repost700", "newpostid700", "c", "500,1,700").await,
        1
    );
    let copy = json(&mut c, "post700_1").await;
    assert_eq!(copy["origin"]["owner"], 500);
    assert_eq!(copy["origin"]["id"], 1);
    assert_eq!(copy["text"], "Hello wall");
    let original = json(&mut c, "post500_1").await;
    assert_eq!(original["flags"].as_u64().unwrap() & 256, 256, "COPIED");
    assert_eq!(
        c.set("repost700", "500,99,700", 0, 0).await.unwrap(),
        Status::NotFound
    );

    // Sublists: top-level posts (statuses included, the deleted one not), replies, statuses.
    assert_eq!(hit(&mut c, "sublist500_129:0").await, "2,3,1");
    assert_eq!(hit(&mut c, "sublist500_136:8").await, "1,3");
    assert_eq!(hit(&mut c, "sublist500_128:128").await, "1,4");
    assert_eq!(hit(&mut c, "sublist500_129:1").await, "1,2");
    assert_eq!(hit(&mut c, "search(500,10,hello)").await, "1,1");
    assert_eq!(
        client_error(&mut c, "topmsglist500").await,
        "command not supported by the wall engine"
    );
}

#[tokio::test]
async fn friends_lists_common_privacy_requests() {
    let node = Node::start(&["--engines", "friends", "--threads", "1"]);
    let mut c = connect(&node, "friends").await;

    store(&mut c, "friend10_20", "6").await;
    assert_eq!(hit(&mut c, "friend10_20").await, "7");
    assert_eq!(hit(&mut c, "friend20_10").await, "1", "the other half");
    store(&mut c, "friend10_30", "0").await;
    assert_eq!(c.incr("friend10_30", 8).await.unwrap(), Some(9));
    assert_eq!(
        c.decr("friend10_30", 1).await.unwrap(),
        Some(9),
        "bit 0 stays"
    );
    assert_eq!(hit(&mut c, "friends10").await, "2,20,30");
    assert_eq!(hit(&mut c, "friends_masks10").await, "2,20,7,30,9");
    assert_eq!(hit(&mut c, "friends10_3").await, "1,30");
    assert_eq!(hit(&mut c, "friendcnt10").await, "2");
    assert_eq!(hit(&mut c, "friends10#1").await, "2,20");
    assert_eq!(text(&mut c, "friend10_40").await, None);

    // Common friends: both local, inline lists, temp lists, counts.
    store(&mut c, "friend40_20", "0").await;
    assert_eq!(hit(&mut c, "common_friends10,40").await, "1,20");
    assert_eq!(hit(&mut c, "common_friends10:20,40,50").await, "1,20");
    store(&mut c, "temp7", "20,30").await;
    assert_eq!(hit(&mut c, "common_friends40:-7").await, "1,20");
    assert_eq!(hit(&mut c, "common_friends_num10:40,30").await, "2,1,0");
    // Temp lists belong to their connection.
    let mut other = connect(&node, "friends").await;
    assert!(client_error(&mut other, "common_friends40:-7").await.len() > 3);

    // Privacy: canonical rules, batch check, friends of friends.
    store(&mut c, "privacy10_album17", "-1+2*3/4*0/G*A").await;
    assert_eq!(hit(&mut c, "privacy10_album17").await, "-1*3+2/4*0/G*A");
    store(&mut c, "privacy10_priv_phone", "*2").await;
    assert_eq!(hit(&mut c, "30~10:album17,priv_phone,note5").await, "30?");
    assert_eq!(
        hit(&mut c, "40~10:album17").await,
        "0",
        "friend of a friend: /G"
    );
    assert_eq!(hit(&mut c, "10~10:note5").await, "3", "the owner");
    assert_eq!(
        text(&mut c, "30~10:note5").await,
        None,
        "single-key ? is a miss"
    );
    assert_eq!(hit(&mut c, "0~10:album17").await, "3", "anonymous: *A");

    // Requests.
    store(&mut c, "friendreq10_50", "4").await;
    assert_eq!(hit(&mut c, "friendreq10_50").await, "5", "bit 0 is implied");
    let requests = hit(&mut c, "requests10").await;
    assert!(requests.starts_with("1,50,5,"), "{requests}");

    // Removing a friendship removes both halves; a folder delete rewrites rules.
    assert!(c.delete("friend_cat10_2").await.unwrap());
    assert_eq!(hit(&mut c, "friend10_20").await, "3");
    assert_eq!(hit(&mut c, "privacy10_priv_phone").await, "");
    assert!(c.delete("friend10_30").await.unwrap());
    assert_eq!(text(&mut c, "friend30_10").await, None);
    assert_eq!(hit(&mut c, "friends10").await, "1,20");

    // Errors.
    match c.set("friend10_10", "0", 0, 0).await {
        Err(Error::ClientError(message)) => {
            assert_eq!(message, "user 10 cannot befriend themselves");
        }
        other => panic!("self-friendship: {other:?}"),
    }
    assert!(client_error(&mut c, "friends0").await.len() > 3);
    assert!(client_error(&mut c, "friends10_31").await.len() > 3);
}

#[tokio::test]
async fn wrong_shard_is_refused() {
    let (config_dir, config) = config_file(
        "[server]\nthreads = 1\n[engines]\nenabled = [\"messages\", \"wall\", \"friends\"]\n\
         shard_index = 0\nshard_count = 2\n",
    );
    let node = Node::start_expecting(
        tempfile::tempdir().unwrap(),
        &["--config", &config],
        &["messages", "wall", "friends"],
    );
    let mut messages = connect(&node, "messages").await;
    assert_eq!(
        client_error(&mut messages, "message1001_1").await,
        "wrong shard: id 1001 belongs to shard 1 of 2, this is shard 0"
    );
    assert_eq!(hit(&mut messages, "unreadcount1000").await, "0");
    // Both owners of a send must be local.
    assert!(matches!(
        messages.set("sendmsg1000_1001", "0\nhi", 0, 0).await,
        Err(Error::ClientError(m)) if m.starts_with("wrong shard")
    ));
    let mut wall = connect(&node, "wall").await;
    assert!(client_error(&mut wall, "post11_1")
        .await
        .starts_with("wrong shard: id 11"));
    let mut friends = connect(&node, "friends").await;
    assert!(client_error(&mut friends, "friends11")
        .await
        .starts_with("wrong shard: id 11"));
    // A friend on the other shard: only the local half is stored.
    store(&mut friends, "friend10_11", "0").await;
    assert_eq!(hit(&mut friends, "friends10").await, "1,11");
    drop(config_dir);
}

#[tokio::test]
async fn unsupported_commands_on_engine_ports() {
    let node = Node::start(&["--engines", "messages,wall,friends", "--threads", "1"]);
    for engine in ["messages", "wall", "friends"] {
        let mut c = connect(&node, engine).await;
        let expected = format!("CLIENT_ERROR command not supported by the {engine} engine\r\n");
        for request in [
            &b"gets friends10\r\n"[..],
            b"gat 0 friends10\r\n",
            b"add friend10_20 0 0 1\r\n0\r\n",
            b"replace friend10_20 0 0 1\r\n0\r\n",
            b"append friend10_20 0 0 1\r\n0\r\n",
            b"prepend friend10_20 0 0 1\r\n0\r\n",
            b"cas friend10_20 0 0 1 1\r\n0\r\n",
            b"touch friend10_20 10\r\n",
            b"flush_all\r\n",
            b"mg friend10_20 v\r\n",
            b"ms friend10_20 1\r\n0\r\n",
            b"md friend10_20\r\n",
            b"ma friend10_20\r\n",
        ] {
            let reply = c.send_raw(request).await.expect("reply");
            assert_eq!(
                String::from_utf8_lossy(&reply),
                expected,
                "{engine}: {}",
                String::from_utf8_lossy(request)
            );
        }
        // Generic commands still work there.
        assert!(c.version().await.unwrap().contains("koshka"));
        assert!(!c.stats(None).await.unwrap().is_empty());
    }
}

/// Every engine's state survives SIGTERM and a start on the same data directory.
#[tokio::test]
async fn state_survives_restart() {
    let node = Node::start(&["--threads", "1"]);
    let history_ts;
    {
        let mut kv = connect(&node, "kv").await;
        assert_eq!(kv.set("k", "v", 3, 0).await.unwrap(), Status::Stored);
        assert_eq!(kv.set("n", "41", 0, 0).await.unwrap(), Status::Stored);
        assert_eq!(kv.incr("n", 1).await.unwrap(), Some(42));
        assert_eq!(kv.set("gone", "x", 0, 0).await.unwrap(), Status::Stored);
        assert!(kv.delete("gone").await.unwrap());

        let mut m = connect(&node, "messages").await;
        send(&mut m, 1, 2, "a", "0\nПривет, мир").await;
        send(&mut m, 2, 1, "b", "8\nhello world").await;
        assert_eq!(m.incr("flags1_2", 256).await.unwrap(), Some(265));
        history_ts = hit(&mut m, "timestamp1").await;

        let mut w = connect(&node, "wall").await;
        create_tagged(&mut w, "newpost7", "newpostid7", "p", "0,7\nwall text").await;
        store(&mut w, "status7", "persisted status").await;

        let mut f = connect(&node, "friends").await;
        store(&mut f, "friend1_2", "4").await;
        store(&mut f, "privacy1_album5", "*2/A").await;
        store(&mut f, "friendreq1_3", "1").await;
    }
    let dir = node.terminate();
    let node = Node::start_in(dir, &["--threads", "1"]);

    let mut kv = connect(&node, "kv").await;
    let item = kv.get("k").await.unwrap().expect("k survived");
    assert_eq!((item.flags, item.data.as_slice()), (3, &b"v"[..]));
    assert_eq!(kv.get("n").await.unwrap().unwrap().data, b"42");
    assert_eq!(kv.get("gone").await.unwrap(), None);

    let mut m = connect(&node, "messages").await;
    assert_eq!(json(&mut m, "message2_1").await["text"], "Привет, мир");
    assert_eq!(hit(&mut m, "flags1_2").await, "265");
    assert_eq!(hit(&mut m, "topmsglist1").await, "1,2,2,1");
    assert_eq!(hit(&mut m, "search(2,10,мир)").await, "1,1");
    assert_eq!(hit(&mut m, "timestamp1").await, history_ts);
    assert_eq!(
        hit(&mut m, &format!("history1#{history_ts}")).await,
        history_ts
    );
    // Ids continue after the restart.
    assert_eq!(send(&mut m, 1, 2, "c", "0\nagain").await, (3, 3));

    let mut w = connect(&node, "wall").await;
    assert_eq!(json(&mut w, "post7_1").await["text"], "wall text");
    assert_eq!(json(&mut w, "status7").await["text"], "persisted status");

    let mut f = connect(&node, "friends").await;
    assert_eq!(hit(&mut f, "friend1_2").await, "5");
    assert_eq!(hit(&mut f, "friend2_1").await, "1");
    assert_eq!(hit(&mut f, "privacy1_album5").await, "*2", "canonical");
    assert_eq!(hit(&mut f, "friendreq1_3").await, "1");
    assert_eq!(hit(&mut f, "2~1:album5").await, "3");
}
