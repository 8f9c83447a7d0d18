//! `keys_friends`: arbitrary compiled keys and values against the friends engine; see
//! `common/engine_ops.rs` for the input format and the invariants.

#![no_main]

use koshka_engine::ShardSpec;
use koshka_friends::FriendsEngine;
use libfuzzer_sys::fuzz_target;

#[path = "common/engine_ops.rs"]
mod engine_ops;

fuzz_target!(|data: &[u8]| {
    engine_ops::run(data, || FriendsEngine::new(ShardSpec::default()));
});
