//! `keys_messages`: arbitrary compiled keys and values against the messages engine, in both
//! flavours (`messages`, then `wall`, each from empty); see `common/engine_ops.rs` for the
//! input format and the invariants.

#![no_main]

use koshka_engine::ShardSpec;
use koshka_messages::{Flavour, MessagesEngine};
use libfuzzer_sys::fuzz_target;

#[path = "common/engine_ops.rs"]
mod engine_ops;

fuzz_target!(|data: &[u8]| {
    for flavour in [Flavour::Messages, Flavour::Wall] {
        engine_ops::run(
            data,
            || MessagesEngine::new(flavour, ShardSpec::default()),
            |_| {},
        );
    }
});
