//! `keys_search`: arbitrary compiled keys and values against the search engine; see
//! `common/engine_ops.rs` for the input format and the invariants. Before the engine runs,
//! every key is parsed with the grammar (`koshka_keys::search`) and whatever parsed must
//! survive encode → parse unchanged, with the canonical encoding stable; every search reply
//! the engine gives must parse as a `Found` whose hits are in the search's order, one per
//! content hash, no more than the limit and no more than the total.

#![no_main]

use std::fmt::Debug;

use koshka_engine::{Direct, Session, ShardSpec};
use koshka_keys::search::{Found, Query, Update};
use koshka_keys::{Encode, KeyError};
use koshka_search::SearchEngine;
use libfuzzer_sys::fuzz_target;

#[path = "common/engine_ops.rs"]
mod engine_ops;

use engine_ops::Op;

fuzz_target!(|data: &[u8]| {
    let ops = engine_ops::decode(data);
    for op in &ops {
        match *op {
            Op::Get(key) => round_trip(key, Query::parse),
            Op::Set(key, value) => round_trip_set(key, value),
            Op::Delete(key) => round_trip(key, Update::parse_delete),
            Op::Incr(key, delta) => {
                if let Ok(update) = Update::parse_incr(key, delta) {
                    assert_eq!(Update::parse_incr(&update.to_bytes(), delta).unwrap(), update);
                }
            }
        }
    }
    engine_ops::run(data, || SearchEngine::new(ShardSpec::default()), |_| {});
    check_replies(&ops);
});

/// Whatever `parse` accepts encodes to bytes that parse to the same value and encode again
/// to the same bytes.
fn round_trip<K: Encode + PartialEq + Debug>(key: &[u8], parse: fn(&[u8]) -> Result<K, KeyError>) {
    let Ok(parsed) = parse(key) else { return };
    let encoded = parsed.to_bytes();
    let again = parse(&encoded).unwrap_or_else(|e| {
        panic!("{key:?} parsed to {parsed:?}, whose encoding {encoded:?} fails: {e}")
    });
    assert_eq!(again, parsed, "{key:?} -> {encoded:?}");
    assert_eq!(again.to_bytes(), encoded);
}

fn round_trip_set(key: &[u8], value: &[u8]) {
    let Ok(parsed) = Update::parse_set(key, value) else { return };
    let mut encoded_value = Vec::new();
    parsed.encode_value(&mut encoded_value);
    let again = Update::parse_set(&parsed.to_bytes(), &encoded_value).unwrap();
    assert_eq!(again, parsed, "{key:?} {value:?}");
}

/// Runs the operations on a fresh engine and checks every search reply's invariants.
fn check_replies(ops: &[Op<'_>]) {
    let engine = SearchEngine::new(ShardSpec::default());
    let journal = koshka_engine::MemoryJournal::default();
    let mut session = Session::default();
    for op in ops {
        match *op {
            Op::Set(key, value) => {
                let _ = engine.set(key, 0, value, &mut session, &journal);
            }
            Op::Delete(key) => {
                let _ = engine.delete(key, &mut session, &journal);
            }
            Op::Incr(key, delta) => {
                let _ = engine.incr(key, delta, &mut session, &journal);
            }
            Op::Get(key) => {
                let Ok(Query::Search(search)) = Query::parse(key) else { continue };
                let value = engine.get(key, &mut session).unwrap().unwrap();
                let found = Found::parse(&value.data).unwrap();
                assert!(found.hits.len() <= search.limit as usize);
                assert!(found.hits.len() as u64 <= found.total);
                let mut hashes = std::collections::HashSet::new();
                for pair in found.hits.windows(2) {
                    assert_eq!(search.order.compare(&pair[0], &pair[1]), std::cmp::Ordering::Less);
                }
                for hit in &found.hits {
                    assert!(hashes.insert(hit.hash), "a content hash shown twice");
                }
            }
        }
    }
}
