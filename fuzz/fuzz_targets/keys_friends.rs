//! `keys_friends`: arbitrary compiled keys and values against the friends engine; see
//! `common/engine_ops.rs` for the input format and the invariants.

#![no_main]

use koshka_engine::ShardSpec;
use koshka_friends::FriendsEngine;
use libfuzzer_sys::fuzz_target;

#[path = "common/engine_ops.rs"]
mod engine_ops;

fuzz_target!(|data: &[u8]| {
    engine_ops::run(
        data,
        || FriendsEngine::new(ShardSpec::default()),
        zero_positions,
    );
});

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
