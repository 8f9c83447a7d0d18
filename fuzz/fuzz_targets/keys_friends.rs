//! `keys_friends`: arbitrary compiled keys and values against the friends engine; see
//! `common/engine_ops.rs` for the input format and the invariants. Before the engine runs,
//! every key is parsed with the grammar (`koshka_keys::friends`) and whatever parsed must
//! survive encode → parse unchanged, with the canonical encoding stable.

#![no_main]

use std::fmt::Debug;

use koshka_engine::ShardSpec;
use koshka_friends::FriendsEngine;
use koshka_keys::friends::{DeleteKey, GetKey, IncrKey, SetKey};
use koshka_keys::{Encode, KeyError};
use libfuzzer_sys::fuzz_target;

#[path = "common/engine_ops.rs"]
mod engine_ops;

use engine_ops::Op;

fuzz_target!(|data: &[u8]| {
    for op in engine_ops::decode(data) {
        match op {
            // A parsed `GetKey` borrows its key, so it cannot go through `round_trip`'s
            // `fn` pointer; the same checks, inline.
            Op::Get(key) => {
                if let Ok(parsed) = GetKey::parse(key) {
                    let encoded = parsed.to_bytes();
                    let again = GetKey::parse(&encoded).unwrap_or_else(|e| {
                        panic!("{key:?} parsed to {parsed:?}, whose encoding {encoded:?} fails: {e}")
                    });
                    assert_eq!(again, parsed, "{key:?} -> {encoded:?}");
                    assert_eq!(again.to_bytes(), encoded);
                }
            }
            Op::Set(key, _) => round_trip(key, SetKey::parse),
            Op::Delete(key) => round_trip(key, DeleteKey::parse),
            Op::Incr(key, _) => round_trip(key, IncrKey::parse),
        }
    }
    engine_ops::run(
        data,
        || FriendsEngine::new(ShardSpec::default()),
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

/// Zeroes the partition positions of a friends snapshot (`"KFRS" | version u32 |
/// partitions u32`, then blocks of `index u32 | pos u64 | len u32 | len bytes`).
///
/// A live update that locks every partition (`delete user<id>`) moves every partition to its
/// log position, while its replay moves only the partitions it touches. Both are correct: a
/// partition's position is a lower bound used to skip records during replay after a fuzzy
/// snapshot, and no record for an untouched partition can lie between the two values.
fn zero_positions(snap: &mut Vec<u8>) {
    let mut at = 12;
    while at + 16 <= snap.len() {
        snap[at + 4..at + 12].fill(0);
        let len = u32::from_le_bytes([snap[at + 12], snap[at + 13], snap[at + 14], snap[at + 15]]);
        at += 16 + len as usize;
        if snap.len() - at <= 4 {
            break; // the "KEND" trailer
        }
    }
}
