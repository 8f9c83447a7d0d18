//! koshka-friends: friend lists, folders, friend requests and privacy rules, reached through
//! memcached keys in VK's friend-engine idioms.
//!
//! Per user the engine keeps friends (id, folder mask, date added) sorted by id,
//! incoming friend requests, and privacy rules per privacy key in VK's rule language. It
//! answers privacy checks (`viewer~owner:key1,key2`) including friends of friends, common
//! friends by sorted merge, and common friend counts against inline or temp lists.
//!
//! Users are split into [`PARTITIONS`] partitions by id, each behind its own lock and
//! remembering the log position of the last record applied to it, so snapshots are written
//! one partition at a time (see `koshka_engine`'s fuzzy snapshot contract).
//!
//! # Layout
//! * the key grammar is [`koshka_keys::friends`] (shared with the proxy, client and bench);
//! * [`ops`] — binlog records (type numbers, encode, decode);
//! * [`state`] — partitions: friend lists packed in segments, per-user side data;
//! * [`privacy`] — rule parsing, canonical form, evaluation;
//! * [`snapshot`] — partition-at-a-time snapshot encoding;
//! * [`engine`] — [`FriendsEngine`], the [`koshka_engine::Engine`] implementation.
//!
//! This crate does no networking, no routing between shards (the proxy does: see
//! `docs/protocol/friends.md`) and never reads the wall clock on the write path.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod engine;
pub mod ops;
pub mod privacy;
mod reply;
mod scratch;
pub mod snapshot;
pub mod state;

#[cfg(test)]
mod tests;

pub use engine::FriendsEngine;

/// The friends engine's registration.
pub const SPEC: koshka_engine::EngineSpec = koshka_engine::EngineSpec {
    name: "friends",
    default_port: 11214,
    key_len_max: koshka_limits::COMPILED_KEY_LEN_MAX,
    summary: "friend lists, folders, requests, privacy rules and checks",
    build: |setup| {
        Ok(koshka_engine::Built {
            engine: std::sync::Arc::new(FriendsEngine::new(setup.shard)),
            logged: true,
        })
    },
};

/// The limits the key grammar enforces (defined with it in `koshka-keys`).
pub use koshka_keys::friends::{
    FOLDER_MAX, PRIVACY_CHECK_KEYS_MAX, PRIVACY_KEY_LEN_MAX, TEMP_TAG_LEN_MAX, USER_ID_MAX,
    USER_LIST_MAX,
};

/// Most friends one user may have (VK's `MAX_FRIENDS`). Adding one more friend (on either side
/// of a two-sided add) fails with `CLIENT_ERROR`; updates of existing friends still work.
pub const FRIENDS_PER_USER_MAX: usize = 10_000;

/// Most pending friend requests one user may hold. A new request beyond it fails with
/// `CLIENT_ERROR`; replacing an existing request still works. Same bound as friends, since
/// every accepted request becomes a friend.
pub const FRIEND_REQUESTS_PER_USER_MAX: usize = 10_000;

/// The implicit "all friends" folder bit, set in every stored mask.
pub const ALL_FRIENDS_BIT: u32 = 1;

/// Every bit a mask may carry: bits 0..=30.
pub const MASK_BITS: u32 = (1 << (FOLDER_MAX as u32 + 1)) - 1;

/// Most privacy keys one user may hold; a new key beyond it fails with `CLIENT_ERROR`.
/// VK uses a few dozen per user (profile fields, albums, notes).
pub const PRIVACY_KEYS_PER_USER_MAX: usize = 4096;

/// Most rules in one rule string, before canonicalisation; more fail with `CLIENT_ERROR`.
/// Bounds the quadratic canonicaliser and the per-check evaluation cost.
pub const PRIVACY_RULES_MAX: usize = 256;

/// Longest rule string in bytes (256 rules of `+2147483647` fit); longer fails with
/// `CLIENT_ERROR` before parsing.
pub const PRIVACY_RULES_TEXT_LEN_MAX: usize = PRIVACY_RULES_MAX * 12;

/// Number of partitions, each behind its own lock. 64 keeps lock contention low on a few
/// dozen cores and makes one partition's snapshot image about 1/64 of the state.
pub const PARTITIONS: usize = 64;

const _: () = assert!(PARTITIONS >= 64);
const _: () = assert!(FOLDER_MAX <= 30, "bit 31 of masks must stay free");
const _: () = assert!(
    PRIVACY_KEY_LEN_MAX <= u8::MAX as usize,
    "one-byte key length"
);
const _: () = assert!(
    PRIVACY_RULES_MAX <= u16::MAX as usize,
    "two-byte rule count"
);
const _: () = assert!(
    FRIENDS_PER_USER_MAX <= USER_LIST_MAX,
    "a folder can hold every friend"
);
const _: () = assert!(PRIVACY_CHECK_KEYS_MAX <= 4096);

/// The mask bit of `folder` (0 = all friends).
#[must_use]
pub const fn mask_bit(folder: u8) -> u32 {
    1 << folder
}
