//! Reads allocate nothing per reply: a counting global allocator watches `Engine::execute` of
//! the typical lists keys (an entry, a flags check, a sorted and filtered page, a count)
//! answered into a pre-reserved output buffer, as the server does. Intersections with an
//! inline list parse the list into a vector (one allocation per get) and are not listed.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, unsafe_code)]

#[path = "../../koshka-engine/tests/support/alloc_count.rs"]
mod alloc_count;

use alloc_count::allocations_per_get;
use koshka_engine::{Direct, MemoryJournal, Session, ShardSpec};
use koshka_lists::ListsEngine;

#[test]
fn list_reads_allocate_nothing() {
    let engine = ListsEngine::new(ShardSpec::default());
    let journal = MemoryJournal::default();
    let mut session = Session::default();
    for o in 1..500 {
        let value = format!("{},{}", o % 8, o * 7 % 101);
        engine
            .set(
                format!("entry5_{o}").as_bytes(),
                0,
                value.as_bytes(),
                &mut session,
                &journal,
            )
            .unwrap();
    }
    let keys = [
        "entry5_17",
        "flags5_17",
        "value5_17",
        "list5#20",
        "list5_1:1,13#20,40",
        "list5,59#50",
        "count5",
        "count5_3:2",
    ];
    let counts = allocations_per_get(&engine, &keys, 1000);
    for (key, per_get) in &counts {
        println!("{key:<24} {per_get:.3} allocations per get");
    }
    let allocating: Vec<_> = counts.iter().filter(|(_, n)| *n > 0.0).collect();
    assert!(allocating.is_empty(), "reads that allocate: {allocating:?}");

    // An inline id list costs exactly one allocation: the grammar's `ListRef` owns its ids,
    // and the parser sizes that vector once.
    for (key, per_get) in allocations_per_get(&engine, &["intersect5:3,100,101,200,999"], 1000) {
        println!("{key:<24} {per_get:.3} allocations per get");
        assert!((per_get - 1.0).abs() < f64::EPSILON, "{key}: {per_get}");
    }
}
