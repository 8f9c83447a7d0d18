//! Behaviour tests: bad input, search, history, wall flavour, fuzzy snapshots.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{get, set, Recorder};
use koshka_engine::{Direct, Engine, Error, MemoryJournal, Session, ShardSpec, StoreOutcome};
use koshka_messages::{
    Flavour, MessagesEngine, HISTORY_EVENTS_MAX, MESSAGE_TEXT_BYTES_MAX, PAGE_SIZE_MAX,
    SEARCH_RESULTS_MAX,
};

fn mail() -> MessagesEngine {
    MessagesEngine::new(Flavour::Messages, ShardSpec::default())
}

fn pct(words: &str) -> String {
    words
        .split(' ')
        .map(|w| w.bytes().map(|b| format!("%{b:02X}")).collect::<String>())
        .collect::<Vec<_>>()
        .join("+")
}

fn client_error(result: Result<impl std::fmt::Debug, Error>, needle: &str) {
    match result {
        Err(Error::Client(reason)) => {
            assert!(
                reason.contains(needle),
                "{reason:?} does not mention {needle:?}"
            );
        }
        other => panic!("expected a client error mentioning {needle:?}, got {other:?}"),
    }
}

#[test]
fn bad_input_is_a_clear_client_error() {
    let e = mail();
    let j = MemoryJournal::default();
    let mut s = Session::default();
    assert_eq!(set(&e, &j, "sendmsg1_2", "0\nhi"), StoreOutcome::Stored);
    client_error(e.get(b"sublist1_3:5", &mut s), "unsupported sublist 3:5");
    client_error(e.get(b"message0_1", &mut s), "owner id 0");
    client_error(e.get(b"message-4_1", &mut s), "owner id -4");
    client_error(e.get(b"message1_0", &mut s), "message id");
    client_error(e.get(b"message1_1#999", &mut s), "mode bits");
    client_error(e.get(b"message1_", &mut s), "expected an integer");
    client_error(e.get(b"message1_1zz", &mut s), "unexpected");
    client_error(e.get(b"whatever1", &mut s), "unknown key");
    client_error(e.get(b"sublist1_130:0#0,5", &mut s), "#0,0");
    client_error(e.get(b"history1#5,0", &mut s), "history limit");
    client_error(e.get(b"search(1,0,hello)", &mut s), "search limit");
    let too_many = format!("search(1,{},hello)", SEARCH_RESULTS_MAX + 1);
    client_error(e.get(too_many.as_bytes(), &mut s), "search limit");
    client_error(e.get(b"search(1,10,)", &mut s), "empty search");
    client_error(e.get(b"search(1,10,%ZZ)", &mut s), "escape");
    client_error(e.get(b"extra1_1:8", &mut s), "extra field 8");
    let big = format!("0\n{}", "x".repeat(MESSAGE_TEXT_BYTES_MAX + 1));
    client_error(
        e.set(b"sendmsg1_2", 0, big.as_bytes(), &mut s, &j),
        "exceeds",
    );
    client_error(e.set(b"sendmsg1_1", 0, b"0\nhi", &mut s, &j), "oneself");
    client_error(e.set(b"sendmsg1_2", 0, b"70000\nhi", &mut s, &j), "flags");
    client_error(e.set(b"sendmsg1_2", 0, b"x\nhi", &mut s, &j), "header");
    client_error(e.set(b"sendmsg1_2", 0, b"0\n\xff\xfe", &mut s, &j), "UTF-8");
    client_error(e.set(b"newmsg1", 0, b"0\nhi", &mut s, &j), "header");
    client_error(e.set(b"newmsg1", 0, b"0,-3\nhi", &mut s, &j), "peer id -3");
    client_error(e.set(b"flags1_1", 0, b"abc", &mut s, &j), "decimal");
    client_error(e.delete(b"dialogs1_2", &mut s, &j), "unknown key");
    client_error(e.incr(b"message1_1", 1, &mut s, &j), "unknown key");
    client_error(e.get("x".repeat(5000).as_bytes(), &mut s), "longer");
    // Wall keys on the messages flavour.
    assert!(matches!(
        e.get(b"status1", &mut s),
        Err(Error::NotSupported { .. })
    ));
    assert!(matches!(
        e.set(b"newpost1", 0, b"0,1\nhi", &mut s, &j),
        Err(Error::NotSupported { .. })
    ));
    // Missing targets are misses / NOT_FOUND, not errors.
    assert_eq!(get(&e, "message1_99"), None);
    assert_eq!(set(&e, &j, "flags1_99", "1"), StoreOutcome::NotFound);
    assert!(!e.delete(b"message1_99", &mut s, &j).unwrap());
    assert_eq!(e.incr(b"flags7_1", 1, &mut s, &j).unwrap(), None);
}

#[test]
fn wrong_shard_is_refused() {
    let e = MessagesEngine::new(Flavour::Messages, ShardSpec { index: 1, count: 4 });
    let j = MemoryJournal::default();
    let mut s = Session::default();
    assert!(matches!(
        e.get(b"message4_1", &mut s),
        Err(Error::WrongShard { expected: 0, .. })
    ));
    assert!(matches!(
        e.set(b"sendmsg5_6", 0, b"0\nhi", &mut s, &j),
        Err(Error::WrongShard { id: 6, .. })
    ));
    assert_eq!(
        e.set(b"sendmsg5_9", 0, b"0\nhi", &mut s, &j).unwrap(),
        StoreOutcome::Stored
    );
    assert_eq!(
        e.set(b"newmsg5", 0, b"1,6,0\nfrom afar", &mut s, &j)
            .unwrap(),
        StoreOutcome::Stored
    );
    assert_eq!(get(&e, "sublist5_0:0#1,-1").unwrap(), "2,1,2");
}

#[test]
fn send_handshake_and_reads() {
    let e = mail();
    let j = MemoryJournal::default();
    let mut s = Session::default();
    e.set(b"sendmsg10_20#abc", 0, b"8\nHi\tHello there", &mut s, &j)
        .unwrap();
    assert_eq!(
        e.get(b"newmsgid10#abc", &mut s).unwrap().unwrap().data,
        b"1"
    );
    e.set(b"sendmsg20_10#x", 0, b"0\nreply", &mut s, &j)
        .unwrap();
    assert_eq!(e.get(b"newmsgid20#x", &mut s).unwrap().unwrap().data, b"2");
    assert_eq!(e.get(b"newmsgid10#x", &mut s).unwrap().unwrap().data, b"2");
    let v: serde_json::Value = serde_json::from_str(&get(&e, "message20_1").unwrap()).unwrap();
    assert_eq!(v["peer"], 10);
    assert_eq!(v["peer_msg_id"], 1);
    assert_eq!(v["flags"], 9);
    assert_eq!(v["subject"], "Hi");
    assert_eq!(v["text"], "Hello there");
    let v: serde_json::Value = serde_json::from_str(&get(&e, "message20_1#1").unwrap()).unwrap();
    assert!(v.get("text").is_none());
    let v: serde_json::Value = serde_json::from_str(&get(&e, "message20_1#0,4").unwrap()).unwrap();
    assert_eq!(v["text"], "Hell");
    assert_eq!(get(&e, "unreadcount20").unwrap(), "1");
    assert_eq!(get(&e, "topmsglist10#-1,-10").unwrap(), "1,2,20,1");
    assert_eq!(get(&e, "sublist10_130:2").unwrap(), "1,1");
    assert_eq!(get(&e, "sublistpos10_130:0,2").unwrap(), "1");
    assert_eq!(get(&e, "peermsglistpos10_20:2").unwrap(), "2");
    assert_eq!(get(&e, "sublist10_130:0#0,0").unwrap(), "1");
    assert_eq!(get(&e, "sublist404_130:0").unwrap(), "0");
    // Mark the dialog read, then the unread counter drops.
    assert_eq!(set(&e, &j, "readall10_20", ""), StoreOutcome::Stored);
    assert_eq!(get(&e, "unreadcount10").unwrap(), "0");
    assert_eq!(get(&e, "sublists_types").unwrap().split(',').count(), 12);
}

#[test]
fn page_reads_are_truncated() {
    let e = mail();
    let j = MemoryJournal::default();
    for _ in 0..(PAGE_SIZE_MAX + 5) {
        set(&e, &j, "newmsg1", "0,2\nx");
    }
    let page = get(&e, "sublist1_0:0#1,-1").unwrap();
    assert_eq!(page.split(',').count(), PAGE_SIZE_MAX + 1);
    assert!(page.starts_with(&format!("{},1,2,", PAGE_SIZE_MAX + 5)));
}

#[test]
fn search_russian_and_english() {
    let e = mail();
    let j = MemoryJournal::default();
    set(&e, &j, "sendmsg1_2", "0\nВажные сообщения\tпришли вчера");
    set(&e, &j, "sendmsg1_3", "0\nI was running late today");
    set(&e, &j, "sendmsg1_2", "0\nНовое сообщение и running");
    set(&e, &j, "sendmsg2_1", "0\nЁлка run");
    let q = |words: &str| get(&e, &format!("search(1,10,{})", pct(words))).unwrap();
    assert_eq!(q("сообщение"), "2,3,1");
    assert_eq!(q("СООБЩЕНИЯ"), "2,3,1");
    assert_eq!(q("run"), "3,4,3,2");
    assert_eq!(q("runs сообщений"), "1,3");
    assert_eq!(q("елка"), "1,4");
    assert_eq!(q("nothing"), "0");
    assert_eq!(get(&e, "search(1,1,run)").unwrap(), "3,4");
    // Filters: peer, flags (outbox only), dates.
    let x = |rest: &str| get(&e, &format!("xsearch(1,{rest})")).unwrap();
    assert_eq!(x("0:0,3,0,0,10,run"), "1,2");
    assert_eq!(x("2:0,0,0,0,10,run"), "1,4");
    assert_eq!(x("0:0,0,4000000000,0,10,run"), "0");
    // Deleted messages vanish; edits re-index.
    e.incr(b"flags1_4", 128, &mut Session::default(), &j)
        .unwrap();
    assert_eq!(q("run"), "2,3,2");
    assert!(e
        .delete(b"message1_3", &mut Session::default(), &j)
        .unwrap());
    assert_eq!(q("run"), "1,2");
    set(&e, &j, "message_text1_2", "walked instead");
    assert_eq!(q("run"), "0");
    assert_eq!(q("walking"), "1,2");
}

#[test]
fn history_stream_and_resync() {
    let e = mail();
    let j = MemoryJournal::default();
    assert_eq!(get(&e, "timestamp1").unwrap(), "0");
    set(&e, &j, "sendmsg2_1", "0\nhi");
    let ts = get(&e, "timestamp1").unwrap();
    assert_eq!(ts, "1");
    set(&e, &j, "sendmsg2_1", "0\nagain");
    e.incr(b"flags1_1", 8, &mut Session::default(), &j).unwrap();
    set(&e, &j, "readupto1_2", "2");
    set(&e, &j, "message_text1_1", "edited");
    e.delete(b"message1_1", &mut Session::default(), &j)
        .unwrap();
    assert_eq!(
        get(&e, "history1#1").unwrap(),
        "6,4,2,1,2,1,8,6,2,2,5,1,0,0,1,0"
    );
    assert_eq!(get(&e, "history1#1,2").unwrap(), "3,4,2,1,2,1,8");
    assert_eq!(get(&e, "history1#6").unwrap(), "6");
    for _ in 0..HISTORY_EVENTS_MAX {
        set(&e, &j, "sendmsg2_1", "0\nflood");
    }
    assert_eq!(
        get(&e, "history1#1").unwrap(),
        format!("resync,{}", 6 + HISTORY_EVENTS_MAX)
    );
    assert_eq!(
        get(&e, "history1#999999").unwrap(),
        format!("resync,{}", 6 + HISTORY_EVENTS_MAX)
    );
}

#[test]
fn extras_and_trim() {
    let e = mail();
    let j = MemoryJournal::default();
    let mut s = Session::default();
    for _ in 0..5 {
        set(&e, &j, "sendmsg1_2", "0\nx");
    }
    assert_eq!(set(&e, &j, "extra1_3:2", "40"), StoreOutcome::Stored);
    assert_eq!(e.incr(b"extra1_3:2", 2, &mut s, &j).unwrap(), Some(42));
    assert_eq!(get(&e, "extra1_3:2").unwrap(), "42");
    assert_eq!(get(&e, "extra1_3:1").unwrap(), "0");
    assert!(e.delete(b"first_messages1_4", &mut s, &j).unwrap());
    assert_eq!(get(&e, "sublist1_0:0#1,-1").unwrap(), "2,4,5");
    assert_eq!(get(&e, "extra1_3:2"), None);
    assert!(!e.delete(b"first_messages1_4", &mut s, &j).unwrap());
    assert!(e.delete(b"dialog1_2", &mut s, &j).unwrap());
    assert_eq!(get(&e, "topmsglist1").unwrap(), "0");
    // Ids are never reused.
    e.set(b"sendmsg1_2#n", 0, b"0\ny", &mut s, &j).unwrap();
    assert_eq!(e.get(b"newmsgid1#n", &mut s).unwrap().unwrap().data, b"6");
}

#[test]
fn wall_posts_replies_reposts_statuses() {
    let e = MessagesEngine::new(Flavour::Wall, ShardSpec::default());
    let j = Recorder::default();
    let mut s = Session::default();
    assert_eq!(e.name(), "wall");
    e.set(b"newpost1#a", 0, b"0,1\nmy first post", &mut s, &j)
        .unwrap();
    e.set(
        b"newpost1#b",
        0,
        b"4,7\nfriends only, by a guest",
        &mut s,
        &j,
    )
    .unwrap();
    e.set(b"newpost1#c", 0, b"0,8,1\na reply", &mut s, &j)
        .unwrap();
    assert_eq!(e.get(b"newpostid1#c", &mut s).unwrap().unwrap().data, b"3");
    assert_eq!(
        set(&e, &j, "newpost1", "0,8,99\nreply to nothing"),
        StoreOutcome::NotFound
    );
    assert_eq!(get(&e, "replies1_1").unwrap(), "1,3");
    assert_eq!(get(&e, "sublist1_129:0#1,-1").unwrap(), "2,1,2");
    assert_eq!(get(&e, "sublist1_133:0#1,-1").unwrap(), "1,1");
    assert_eq!(get(&e, "sublist1_132:4#1,-1").unwrap(), "1,2");
    // Repost user 1's post 1 onto wall 2.
    assert_eq!(set(&e, &j, "repost2", "1,1,2"), StoreOutcome::Stored);
    let v: serde_json::Value = serde_json::from_str(&get(&e, "post2_1").unwrap()).unwrap();
    assert_eq!(v["text"], "my first post");
    assert_eq!(v["origin"]["owner"], 1);
    assert_eq!(v["flags"], 2);
    let v: serde_json::Value = serde_json::from_str(&get(&e, "post1_1").unwrap()).unwrap();
    assert_eq!(v["flags"], 256);
    assert_eq!(set(&e, &j, "repost2", "1,77,2"), StoreOutcome::NotFound);
    // Statuses.
    assert_eq!(get(&e, "status1"), None);
    set(&e, &j, "status1", "feeling good");
    set(&e, &j, "status1", "feeling great");
    let v: serde_json::Value = serde_json::from_str(&get(&e, "status1").unwrap()).unwrap();
    assert_eq!(v["text"], "feeling great");
    let v: serde_json::Value = serde_json::from_str(&get(&e, "statuses1#-1,-10").unwrap()).unwrap();
    assert_eq!(v["total"], 2);
    assert_eq!(v["items"][1]["text"], "feeling good");
    e.incr(b"flags1_5", 128, &mut s, &j).unwrap();
    let v: serde_json::Value = serde_json::from_str(&get(&e, "status1").unwrap()).unwrap();
    assert_eq!(v["text"], "feeling good");
    // Mail keys are refused on the wall.
    assert!(matches!(
        e.set(b"sendmsg1_2", 0, b"0\nx", &mut s, &j),
        Err(Error::NotSupported { .. })
    ));
    // Replay gives the same wall.
    let fresh = MessagesEngine::new(Flavour::Wall, ShardSpec::default());
    j.replay(&fresh, 0);
    for key in ["post2_1", "post1_1", "status1", "replies1_1", "statuses1"] {
        assert_eq!(get(&fresh, key), get(&e, key), "{key}");
    }
    // A messages snapshot does not load into a wall engine.
    let mut bytes = Vec::new();
    mail().write_snapshot(&mut bytes).unwrap();
    assert!(matches!(
        fresh.load_snapshot(&mut bytes.as_slice()),
        Err(Error::Corrupt { .. })
    ));
}

#[test]
fn corrupt_inputs_are_reported() {
    let e = mail();
    assert!(matches!(
        e.apply(0x4dff, &[], koshka_engine::ApplyCtx { pos: 1, time: 1 }),
        Err(Error::Corrupt { .. })
    ));
    assert!(matches!(
        e.apply(0x4d01, &[1, 2], koshka_engine::ApplyCtx { pos: 1, time: 1 }),
        Err(Error::Corrupt { .. })
    ));
    let mut bytes = Vec::new();
    e.write_snapshot(&mut bytes).unwrap();
    for cut in [0, 5, bytes.len() - 1] {
        assert!(matches!(
            mail().load_snapshot(&mut &bytes[..cut]),
            Err(Error::Corrupt { .. })
        ));
    }
}

/// A snapshot written while another thread sends is fuzzy, yet snapshot + replay from the
/// position at which it began gives exactly the final state.
#[test]
fn concurrent_snapshot_plus_replay_is_exact() {
    let e = Arc::new(mail());
    let j = Arc::new(Recorder::default());
    for i in 0..200 {
        set(
            &*e,
            &*j,
            &format!("sendmsg{}_{}", 1 + i % 70, 100 + i % 30),
            "0\nwarm up",
        );
    }
    let start = j.pos();
    let writer = {
        let (e, j) = (Arc::clone(&e), Arc::clone(&j));
        std::thread::spawn(move || {
            for i in 0..2000 {
                let key = format!("sendmsg{}_{}", 1 + i % 70, 100 + i % 30);
                set(&*e, &*j, &key, "0\nduring the snapshot");
                if i % 3 == 0 {
                    e.incr(
                        format!("flags{}_1", 1 + i % 70).as_bytes(),
                        8,
                        &mut Session::default(),
                        &*j,
                    )
                    .unwrap();
                }
            }
        })
    };
    let mut bytes = Vec::new();
    e.write_snapshot(&mut bytes).unwrap();
    writer.join().unwrap();
    let fresh = mail();
    fresh.load_snapshot(&mut bytes.as_slice()).unwrap();
    j.replay(&fresh, start);
    for user in (1..=70).chain(100..130) {
        for key in [
            format!("sublist{user}_0:0#1,-1"),
            format!("topmsglist{user}#1,-1"),
            format!("timestamp{user}"),
            format!("message{user}_1"),
            format!("unreadcount{user}"),
        ] {
            assert_eq!(get(&fresh, &key), get(&*e, &key), "{key}");
        }
    }
    let stats = e.stats();
    assert!(stats
        .iter()
        .any(|(k, v)| k == "messages_bytes_per_message" && v != "0"));
}

/// The example session of docs/protocol/messages.md, reply for reply.
#[test]
fn documented_example_session() {
    let e = mail();
    let j = Recorder::default();
    let mut s = Session::default();
    let value = b"8\nHi\tHello Bob";
    assert_eq!(value.len(), 14);
    assert_eq!(
        e.set(b"sendmsg1000_2002#7f3a", 0, value, &mut s, &j)
            .unwrap(),
        StoreOutcome::Stored
    );
    assert_eq!(
        e.get(b"newmsgid1000#7f3a", &mut s).unwrap().unwrap().data,
        b"1"
    );
    let message = get(&e, "message2002_1").unwrap();
    assert_eq!(
        message,
        r#"{"date":1700000000,"flags":9,"id":1,"peer":1000,"peer_msg_id":1,"subject":"Hi","text":"Hello Bob"}"#
    );
    assert_eq!(message.len(), 98);
    assert_eq!(get(&e, "topmsglist2002").unwrap(), "1,1,1000,1");
    assert_eq!(get(&e, "sublist2002_131:1#-1,-20").unwrap(), "1,1");
    assert_eq!(set(&e, &j, "readall2002_1000", ""), StoreOutcome::Stored);
    assert_eq!(get(&e, "history2002#0").unwrap(), "2,4,1,9,6,1,1000");
    assert_eq!(get(&e, "search(2002,10,hello)").unwrap(), "1,1");
    client_error(
        e.get(b"sublist2002_3:5", &mut s),
        "supported: 0:0,128:0,130:0,130:2,131:1,131:3,136:8,192:64,194:0,160:32,144:16,128:128",
    );
}

/// Cross-shard delivery as the proxy does it: one side per shard, then the link.
#[test]
fn one_sided_delivery_and_link() {
    let sender_shard = MessagesEngine::new(Flavour::Messages, ShardSpec { index: 0, count: 2 });
    let recipient_shard = MessagesEngine::new(Flavour::Messages, ShardSpec { index: 1, count: 2 });
    let j = MemoryJournal::default();
    let mut s = Session::default();
    sender_shard
        .set(b"newmsg2#t", 0, b"2,3\nhello", &mut s, &j)
        .unwrap();
    let a = sender_shard
        .get(b"newmsgid2#t", &mut s)
        .unwrap()
        .unwrap()
        .data;
    let value = format!("1,2,{}\nhello", String::from_utf8(a).unwrap());
    recipient_shard
        .set(b"newmsg3#t", 0, value.as_bytes(), &mut s, &j)
        .unwrap();
    let b = recipient_shard
        .get(b"newmsgid3#t", &mut s)
        .unwrap()
        .unwrap()
        .data;
    assert_eq!(
        sender_shard
            .set(b"peer_msg_id2_1", 0, &b, &mut s, &j)
            .unwrap(),
        StoreOutcome::Stored
    );
    let v: serde_json::Value =
        serde_json::from_str(&get(&sender_shard, "message2_1").unwrap()).unwrap();
    assert_eq!(v["peer_msg_id"], 1);
    let v: serde_json::Value =
        serde_json::from_str(&get(&recipient_shard, "message3_1").unwrap()).unwrap();
    assert_eq!(
        (v["peer_msg_id"].clone(), v["flags"].clone()),
        (1.into(), 1.into())
    );
    assert_eq!(
        set(&sender_shard, &j, "peer_msg_id2_9", "1"),
        StoreOutcome::NotFound
    );
}

/// Memory budget: 10 000 sends of 100-byte texts between 1 000 users (mostly one-message
/// conversations, as in the social benchmark) keep the in-process estimate per stored copy
/// (`messages_bytes_per_message`, both copies counted separately) under budget. The estimate
/// was about 690 B per copy before the compact search index, about 550 B before the compact
/// layout (shared texts, 32-byte slots, dialogs as lists), about 180 B after it.
#[test]
fn bytes_per_message_stay_in_budget() {
    let e = mail();
    let j = MemoryJournal::default();
    let mut seed = 1u64;
    let mut rand = |n: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    };
    let syllables = [
        "ka", "ro", "mi", "ten", "sol", "var", "qu", "ble", "nor", "is",
    ];
    let vocabulary: Vec<String> = (0..5000)
        .map(|i: usize| {
            (0..2 + i % 3)
                .map(|k| syllables[(i / 10usize.pow(k as u32)) % 10])
                .collect()
        })
        .collect();
    for _ in 0..10_000 {
        let from = 1 + rand(1000);
        let to = 1 + (from + 1 + rand(998)) % 1000;
        let mut text = String::new();
        while text.len() < 100 {
            // Skewed towards frequent words, as in real texts.
            let r = rand(5000);
            text.push_str(&vocabulary[(r * r / 5000) as usize]);
            text.push(' ');
        }
        text.truncate(100);
        let key = format!("sendmsg{from}_{to}");
        set(&e, &j, &key, &format!("0\n{text}"));
    }
    let stats = e.stats();
    let stat = |name: &str| -> u64 {
        stats
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.parse().unwrap())
            .unwrap()
    };
    assert_eq!(stat("messages_messages"), 20_000);
    let per_copy = stat("messages_bytes_per_message");
    eprintln!("bytes per stored copy: {per_copy}");
    assert!(per_copy <= 230, "{per_copy} B per stored copy");
    let parts = [
        "text",
        "metadata",
        "dialogs",
        "search",
        "history",
        "mailboxes",
    ];
    let sum: u64 = parts
        .iter()
        .map(|part| stat(&format!("messages_memory_{part}_bytes")))
        .sum();
    assert_eq!(sum, stat("messages_heap_bytes"));
    // The two copies of a send share their text: about 100 B each, not 200.
    let text = stat("messages_memory_text_bytes_per_message");
    assert!((50..=100).contains(&text), "{text} B of text per copy");
}
