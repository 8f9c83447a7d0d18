//! Reads allocate nothing per reply beyond what their key owns: `mask`, `notify_count` and an
//! ungrouped notification page allocate nothing; a raw query allocates exactly its parsed
//! author list (one vector), whatever the number of events it answers. Grouped notification
//! pages build their groups on the heap and are not listed.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, unsafe_code)]

#[path = "../../koshka-engine/tests/support/alloc_count.rs"]
mod alloc_count;

use alloc_count::allocations_per_get;
use koshka_engine::{Direct, MemoryJournal, Session, ShardSpec};
use koshka_news::NewsEngine;

#[test]
fn news_reads_allocate_only_their_key() {
    let engine = NewsEngine::new(ShardSpec::default());
    let journal = MemoryJournal::default();
    let mut session = Session::default();
    for i in 0..200 {
        let author = 1 + i % 20;
        let value = format!("{},{author},0,{author},0,{i}", 1 + i % 5);
        engine
            .set(
                format!("update{author}").as_bytes(),
                0,
                value.as_bytes(),
                &mut session,
                &journal,
            )
            .unwrap();
        let note = format!("5,{},7,1,{i}", 1 + i % 9);
        engine
            .set(b"notify7", 0, note.as_bytes(), &mut session, &journal)
            .unwrap();
    }
    let counts = allocations_per_get(&engine, &["mask3", "notify_count7", "notify7#20"], 1000);
    for (key, per_get) in &counts {
        println!("{key:<40} {per_get:.3} allocations per get");
        assert!(*per_get == 0.0, "{key}: {per_get}");
    }
    let raw = "raw_updates4294967295_0,4294967295#50:1,2,3,4,5,6,7,8,9,10";
    for (key, per_get) in allocations_per_get(&engine, &[raw], 1000) {
        println!("{key:<40} {per_get:.3} allocations per get");
        assert!((per_get - 1.0).abs() < f64::EPSILON, "{key}: {per_get}");
    }
}
