//! `keys_lists`: arbitrary compiled keys and values against the lists engine; see
//! `common/engine_ops.rs` for the input format and the invariants. Before the engine runs,
//! every key is parsed with the grammar (`koshka_keys::lists`) and whatever parsed must
//! survive encode → parse unchanged, with the canonical encoding stable.

#![no_main]

use std::fmt::Debug;

use koshka_engine::ShardSpec;
use koshka_keys::lists::{DeleteKey, GetKey, IncrKey, SetKey};
use koshka_keys::{Encode, KeyError};
use koshka_lists::ListsEngine;
use libfuzzer_sys::fuzz_target;

#[path = "common/engine_ops.rs"]
mod engine_ops;

use engine_ops::Op;

fuzz_target!(|data: &[u8]| {
    for op in engine_ops::decode(data) {
        match op {
            Op::Get(key) => round_trip(key, GetKey::parse),
            Op::Set(key, _) => round_trip(key, SetKey::parse),
            Op::Delete(key) => round_trip(key, DeleteKey::parse),
            Op::Incr(key, _) => round_trip(key, IncrKey::parse),
        }
    }
    engine_ops::run(
        data,
        || ListsEngine::new(ShardSpec::default()),
        zero_positions,
    );
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

/// Zeroes the partition positions of a lists snapshot (`"KLST" | version u32 | partitions
/// u32`, then per partition `pos u64 | lists u32 | (id u32 | n u32 | n × 17 bytes)…`).
///
/// A live `delete object…` locks and moves every partition, its replay only the partitions
/// it is new to; both are valid lower bounds for replay after a fuzzy snapshot.
fn zero_positions(snap: &mut Vec<u8>) {
    let u32_at = |s: &[u8], at: usize| u32::from_le_bytes([s[at], s[at + 1], s[at + 2], s[at + 3]]);
    let mut at = 12;
    while at + 12 <= snap.len() {
        snap[at..at + 8].fill(0);
        let lists = u32_at(snap, at + 8) as usize;
        at += 12;
        for _ in 0..lists {
            let n = u32_at(snap, at + 4) as usize;
            at += 8 + n * 17;
        }
    }
}
