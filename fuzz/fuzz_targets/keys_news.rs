//! `keys_news`: arbitrary compiled keys and values against the news engine; see
//! `common/engine_ops.rs` for the input format and the invariants. Before the engine runs,
//! every key is parsed with the grammar (`koshka_keys::news`) and whatever parsed must
//! survive encode → parse unchanged, with the canonical encoding stable.

#![no_main]

use std::fmt::Debug;

use koshka_engine::ShardSpec;
use koshka_keys::news::{DeleteKey, GetKey, SetKey};
use koshka_keys::{Encode, KeyError};
use koshka_news::NewsEngine;
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
            // The news engine has no incr/decr keys: it refuses them.
            Op::Incr(..) => {}
        }
    }
    // Every record touches one partition: live and replayed snapshots are byte-identical.
    engine_ops::run(data, || NewsEngine::new(ShardSpec::default()), |_| {});
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
