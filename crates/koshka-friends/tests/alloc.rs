//! Reads allocate nothing per reply: a counting global allocator watches `Engine::execute` of
//! the typical friends keys (a friend list page, recent friends, one friendship, a 20-key
//! privacy check, common friends) answered into a pre-reserved output buffer, as the server
//! does.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, unsafe_code)]

#[path = "../../koshka-engine/tests/support/alloc_count.rs"]
mod alloc_count;

use alloc_count::allocations_per_get;
use koshka_engine::{Direct, MemoryJournal, Session, ShardSpec};
use koshka_friends::FriendsEngine;

fn set(engine: &FriendsEngine, journal: &MemoryJournal, key: &str, value: &str) {
    let mut session = Session::default();
    engine
        .set(key.as_bytes(), 0, value.as_bytes(), &mut session, journal)
        .unwrap();
}

#[test]
fn friend_reads_allocate_nothing() {
    let engine = FriendsEngine::new(ShardSpec::default());
    let journal = MemoryJournal::default();
    // Users 1 and 2 share friends 100..150; 1 also has 200..250; 3 is a friend of 1.
    for f in 100..150 {
        set(&engine, &journal, &format!("friend1_{f}"), "1");
        set(&engine, &journal, &format!("friend2_{f}"), "1");
    }
    for f in 200..250 {
        set(&engine, &journal, &format!("friend1_{f}"), "3");
    }
    set(&engine, &journal, "friend1_3", "1");
    let rules = ["*0", "*A", "*G", "/G*A", "-3*0", "+3*0", "*0+3", "/0*A"];
    for album in 1..=20 {
        let rule = rules[album % rules.len()];
        set(&engine, &journal, &format!("privacy1_album{album}"), rule);
    }
    let check: Vec<String> = (1..=20).map(|a| format!("album{a}")).collect();
    let check_key = format!("3~1:{}", check.join(","));
    let stranger_key = format!("7~1:{}", check.join(","));
    let keys = [
        "friends1",
        "friends1#1,20",
        "friends_full1#1,20",
        "recent_friends1#1,20",
        "recent_friends1#21,40",
        "friend1_3",
        "friendcnt1",
        "privacy1_album4",
        check_key.as_str(),
        stranger_key.as_str(),
        "common_friends1,2",
    ];
    let counts = allocations_per_get(&engine, &keys, 1000);
    for (key, per_get) in &counts {
        println!("{key:<28} {per_get:.3} allocations per get");
    }
    let allocating: Vec<_> = counts.iter().filter(|(_, n)| *n > 0.0).collect();
    assert!(allocating.is_empty(), "reads that allocate: {allocating:?}");

    // An inline id list (`common_friends<u>:<id,id,…>`, `common_friends_num<u>:<…>`) costs
    // exactly one allocation: the grammar's `ListRef` owns its ids (clients build lists with
    // it too), and the parser sizes that vector once.
    let lists = [
        "common_friends1:3,100,101,200,999",
        "common_friends_num1:2,3",
    ];
    for (key, per_get) in allocations_per_get(&engine, &lists, 1000) {
        println!("{key:<28} {per_get:.3} allocations per get");
        assert!((per_get - 1.0).abs() < f64::EPSILON, "{key}: {per_get}");
    }
}
