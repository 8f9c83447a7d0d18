//! `keys_messages`: arbitrary compiled keys and values against the messages engine, in both
//! flavours (`messages`, then `wall`, each from empty); see `common/engine_ops.rs` for the
//! input format and the invariants. Before the engines run, every key (and value) is parsed
//! with the grammar (`koshka_keys::messages`) and whatever parsed must survive encode → parse
//! unchanged, with the canonical encoding stable.

#![no_main]

use koshka_engine::ShardSpec;
use koshka_keys::messages::{Query, Update};
use koshka_keys::Encode;
use koshka_messages::{Flavour, MessagesEngine};
use libfuzzer_sys::fuzz_target;

#[path = "common/engine_ops.rs"]
mod engine_ops;

use engine_ops::Op;

fuzz_target!(|data: &[u8]| {
    for op in engine_ops::decode(data) {
        check_grammar(&op);
    }
    for flavour in [Flavour::Messages, Flavour::Wall] {
        engine_ops::run(
            data,
            || MessagesEngine::new(flavour, ShardSpec::default()),
            |_| {},
        );
    }
});

/// Round trip of whatever the grammar accepts.
fn check_grammar(op: &Op<'_>) {
    let update = match *op {
        Op::Get(key) => {
            if let Ok(query) = Query::parse(key) {
                let encoded = query.to_bytes();
                let again = Query::parse(&encoded).unwrap_or_else(|e| {
                    panic!("{key:?} parsed to {query:?}, whose encoding {encoded:?} fails: {e}")
                });
                assert_eq!(again, query, "{key:?} -> {encoded:?}");
                assert_eq!(again.to_bytes(), encoded);
            }
            return;
        }
        Op::Set(key, value) => Update::parse_set(key, value),
        Op::Delete(key) => Update::parse_delete(key),
        Op::Incr(key, delta) => Update::parse_incr(key, delta),
    };
    let Ok(update) = update else { return };
    let (key, value) = (update.to_bytes(), update.value_bytes());
    let again = Update::parse(update.verb(), &key, &value).unwrap_or_else(|e| {
        panic!("{update:?} encodes to {key:?} {value:?}, which fails: {e}")
    });
    assert_eq!(again, update, "{key:?} {value:?}");
    assert_eq!(again.to_bytes(), key);
    assert_eq!(again.value_bytes(), value);
}
