//! koshka-search: global full-text search over items (posts, people, groups) — the Rust
//! re-creation of VK's search-engine, sharded by item owner.
//!
//! An item is `(owner, id)` with a type, a date, a rating and a text. Its text is split into
//! words and stemmed (Russian and English) by `koshka-text`, the tokeniser the messages engine
//! uses too; the item keeps only its stems with their counts, never the text. A search names
//! words (all must match, after stemming), optional restrictions (type, owner, date range),
//! an order (rating, date or relevance, either direction), an offset and a limit, and answers
//! the exact number of matching items and the hits of its window, one per content hash (the
//! FNV-1a hash of the text: the same text is shown once). Updates are searchable as soon as
//! they are acknowledged: the index changes under the partition lock before the reply.
//!
//! The grammar of the keys and of the reply lives in `koshka-keys`
//! ([`koshka_keys::search`], shared with the proxy, which merges the shards' replies with
//! [`koshka_keys::search::merge`]) and is documented for clients in
//! `docs/protocol/search.md`.
//!
//! # Layout
//! * [`record`] — binlog records and their encodings;
//! * [`state`] — a partition: items in slots, the item map, the posting index; compaction;
//! * `engine` — [`SearchEngine`]: requests, the one commit path, queries, snapshots, stats.
//!
//! # Memory
//! Per item: 48 bytes of fields, its stems as LEB128 `(stem id delta, count)` pairs in one
//! boxed slice, 13 bytes of map entry, and one LEB128 delta per stem in the partition's
//! posting index (`koshka_text::PostingIndex`, the same structure as large mailboxes use).
//! `stats` reports `search_bytes_per_item`.
//!
//! # What this crate is not
//! It stores no texts (it cannot show a snippet) and knows nothing of other shards: merging
//! the shards' answers is the proxy's job, with the merge in `koshka-keys`.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod engine;
pub mod record;
pub mod state;

pub use engine::SearchEngine;
/// The limits the key grammar enforces (defined with it in `koshka-keys`).
pub use koshka_keys::search::{
    ITEM_TEXT_BYTES_MAX, ITEM_TYPE_MAX, SEARCH_LIMIT_MAX, SEARCH_WINDOW_MAX, SEARCH_WORDS_MAX,
};

/// The search engine's registration.
pub const SPEC: koshka_engine::EngineSpec = koshka_engine::EngineSpec {
    name: "search",
    default_port: 11217,
    key_len_max: koshka_limits::COMPILED_KEY_LEN_MAX,
    summary: "global full-text search over items with ratings, filters and orders",
    build: |setup| {
        Ok(koshka_engine::Built {
            engine: std::sync::Arc::new(SearchEngine::new(setup.shard)),
            logged: true,
        })
    },
};

/// Partitions of one shard's items (by owner), each behind its own lock: updates of
/// different owners proceed in parallel, and a search holds one partition at a time.
pub const PARTITIONS: usize = 8;

/// The content hash of an item's text: FNV-1a, 64 bits, over the text's bytes. Stable across
/// versions and machines (it is part of the reply and of snapshots).
#[must_use]
pub fn content_hash(text: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for &byte in text {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hash_is_fnv1a() {
        assert_eq!(content_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(content_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
