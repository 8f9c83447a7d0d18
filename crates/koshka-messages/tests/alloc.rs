//! Reads allocate nothing per reply: a counting global allocator watches `Engine::execute` of
//! the typical messages keys (a message, a sublist page, the dialogs list, a conversation
//! page, an unread count) answered into a pre-reserved output buffer, as the server does.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, unsafe_code)]

#[path = "../../koshka-engine/tests/support/alloc_count.rs"]
mod alloc_count;

use alloc_count::allocations_per_get;
use koshka_engine::{Direct, MemoryJournal, Session, ShardSpec};
use koshka_messages::{Flavour, MessagesEngine};

fn set(engine: &MessagesEngine, journal: &MemoryJournal, key: &str, value: &str) {
    let mut session = Session::default();
    engine
        .set(key.as_bytes(), 0, value.as_bytes(), &mut session, journal)
        .unwrap();
}

#[test]
fn message_reads_allocate_nothing() {
    let engine = MessagesEngine::new(Flavour::Messages, ShardSpec::default());
    let journal = MemoryJournal::default();
    for i in 0..60 {
        let peer = 2 + i % 5;
        set(
            &engine,
            &journal,
            &format!("sendmsg1_{peer}"),
            &format!("0\nhello number {i}, how are you?"),
        );
        set(
            &engine,
            &journal,
            &format!("sendmsg{peer}_1"),
            &format!("0\nfine thanks {i}"),
        );
    }
    let keys = [
        "message1_7",
        "message1_7#1",
        "message2_3",
        "sublist1_0:0",
        "sublist1_0:0#-1,-20",
        "sublist1_0:0#1,20",
        "topmsglist1#-1,-20",
        "dialogs1#1,3",
        "peermsglist1_2#-1,-20",
        "peermsglistpos1_2:1",
        "unreadcount1",
        "unreadcount1_3",
        "timestamp1",
        "flags1_7",
    ];
    let counts = allocations_per_get(&engine, &keys, 1000);
    for (key, per_get) in &counts {
        println!("{key:<28} {per_get:.3} allocations per get");
    }
    let allocating: Vec<_> = counts.iter().filter(|(_, n)| *n > 0.0).collect();
    assert!(allocating.is_empty(), "reads that allocate: {allocating:?}");

    // Search is not allocation-free: the key's words are decoded into a vector, then
    // tokenised and stemmed (the Snowball stemmer returns owned strings) into a list of stem
    // ids: 11 allocations for two words when this was written. Bounded here so that a change
    // that multiplies them is noticed.
    for (key, per_get) in allocations_per_get(&engine, &["search(1,20,hello+number)"], 1000) {
        println!("{key:<28} {per_get:.3} allocations per get");
        assert!(per_get <= 12.0, "{key}: {per_get}");
    }
}
