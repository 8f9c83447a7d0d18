//! koshka-lists: generic membership lists in VK's lists-engine idioms.
//!
//! Many lists of integer objects: group members, a user's groups, followers, subscriptions.
//! An entry of a list is `(object, flags, value, date)`; the pair (list, object) is unique.
//! Lists and objects are VK ids (users positive, groups negative). A node holds the lists
//! whose id is on its shard (`|list| mod shards`), split into [`PARTITIONS`] partitions behind
//! their own locks.
//!
//! # Memory
//! A list is two parallel sorted vectors: object ids (4 bytes each, so membership checks
//! binary-search a dense array) and their fields (16 bytes: value, date, flags). A reverse
//! index (object → lists, one packed `u64` per entry in a B-tree set) answers
//! `object_lists<obj>` and `delete object<obj>`. About 20 bytes per entry plus the index.
//!
//! # Layout
//! * the key grammar is [`koshka_keys::lists`] (shared with the proxy, client and bench);
//! * [`records`] — binlog records;
//! * [`state`] — lists and partitions;
//! * [`engine`] — [`ListsEngine`], the [`koshka_engine::Engine`] implementation and its
//!   snapshots.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod engine;
pub mod records;
pub mod state;

#[cfg(test)]
mod tests;

pub use engine::ListsEngine;
pub use koshka_keys::lists::{FLAGS_MAX, REPLY_ITEMS_MAX, TEMP_LIST_MAX, TEMP_TAG_LEN_MAX};

/// The lists engine's registration.
pub const SPEC: koshka_engine::EngineSpec = koshka_engine::EngineSpec {
    name: "lists",
    default_port: 11216,
    key_len_max: koshka_limits::COMPILED_KEY_LEN_MAX,
    summary: "membership lists (list, object, flags, value, date), sublists, intersections",
    build: |setup| {
        Ok(koshka_engine::Built {
            engine: std::sync::Arc::new(ListsEngine::from_setup(setup)?),
            logged: true,
        })
    },
};

/// Default for the most entries one list may hold (`[engine.lists] entries_per_list_max`):
/// adding one more fails with `CLIENT_ERROR`; updates of existing entries still work.
pub const ENTRIES_PER_LIST_MAX: usize = 10_000_000;

/// Number of partitions, each behind its own lock.
pub const PARTITIONS: usize = 64;
