//! koshka-news: what people and groups did, for feeds, and notifications for a recipient, in
//! VK's news-engine idioms.
//!
//! * **Events** are stored per author (users positive, groups negative): a type (status, wall
//!   post, photo, new friend, joined group, …), the people and objects involved
//!   (`user, group, owner, place, item`) and the log time. Each author has a **type mask**:
//!   the types it hides from friends. Only recent events are kept: a **retention window**
//!   and a **per-author cap**, enforced by garbage collection on every write (the author
//!   written, plus a sweep over a few other authors of the partition).
//! * The **raw query** `raw_updates…:<authors>` returns, for the authors of this shard, their
//!   events in a date range newest first, in `(date, author, id)` order, so a proxy asking
//!   every shard can heap-merge the answers exactly (the feed key).
//! * **Notifications** (mentions, replies, new followers, friend requests, likes, …) per
//!   recipient, newest first, optionally grouped by (type, owner, place, day), with hide and
//!   unhide per notification and per sending user.
//!
//! # Layout
//! * the key grammar is [`koshka_keys::news`];
//! * [`records`] — binlog records;
//! * [`state`] — authors, inboxes, partitions and garbage collection;
//! * [`engine`] — [`NewsEngine`], the [`koshka_engine::Engine`] implementation and snapshots.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod engine;
pub mod records;
pub mod state;

#[cfg(test)]
mod tests;

pub use engine::{NewsEngine, Settings};
pub use koshka_keys::news::{
    GROUPING_MAX, NOTIFY_LIMIT_MAX, RAW_LIMIT_DEFAULT, RAW_LIMIT_MAX, TYPE_MAX,
};

/// The news engine's registration.
pub const SPEC: koshka_engine::EngineSpec = koshka_engine::EngineSpec {
    name: "news",
    default_port: 11215,
    key_len_max: koshka_limits::COMPILED_KEY_LEN_MAX,
    summary: "events per author with type masks and retention, raw feed queries, notifications",
    build: |setup| {
        Ok(koshka_engine::Built {
            engine: std::sync::Arc::new(NewsEngine::from_setup(setup)?),
            logged: true,
        })
    },
};

/// Default retention window in days (`[engine.news] retention_days`), VK's 30.
pub const RETENTION_DAYS_DEFAULT: u32 = 30;
/// Longest retention window a setting may ask for.
pub const RETENTION_DAYS_MAX: u32 = 3650;
/// Default cap of events kept per author (`events_per_author_max`), VK's 5000: a new event
/// beyond it drops the author's oldest.
pub const EVENTS_PER_AUTHOR_MAX: usize = 5000;
/// Default cap of notifications kept per recipient (`notifications_per_user_max`).
pub const NOTIFICATIONS_PER_USER_MAX: usize = 1000;
/// Most hidden senders one recipient may keep; hiding one more fails with `CLIENT_ERROR`.
pub const HIDDEN_USERS_MAX: usize = 1000;
/// Other authors (and inboxes) of a partition swept for expired events by every write.
pub const SWEEP_PER_WRITE: usize = 2;
/// Number of partitions, each behind its own lock.
pub const PARTITIONS: usize = 64;
/// Seconds per day (grouping by day, retention).
pub const DAY: u32 = 86_400;

/// Well-known event types (any type `1..=31` may be stored).
pub mod types {
    /// A status update.
    pub const STATUS: u8 = 1;
    /// A wall post.
    pub const WALL_POST: u8 = 2;
    /// A photo added.
    pub const PHOTO: u8 = 3;
    /// A video added.
    pub const VIDEO: u8 = 4;
    /// A note.
    pub const NOTE: u8 = 5;
    /// A new friend.
    pub const NEW_FRIEND: u8 = 6;
    /// Joined a group.
    pub const JOINED_GROUP: u8 = 7;
    /// Left a group.
    pub const LEFT_GROUP: u8 = 8;
    /// Tagged on a photo.
    pub const PHOTO_TAG: u8 = 9;
    /// A gift.
    pub const GIFT: u8 = 10;
    /// Notification: mentioned in a post.
    pub const N_MENTION: u8 = 1;
    /// Notification: a reply to a post or comment.
    pub const N_REPLY: u8 = 2;
    /// Notification: a new follower.
    pub const N_FOLLOWER: u8 = 3;
    /// Notification: a friend request.
    pub const N_FRIEND_REQUEST: u8 = 4;
    /// Notification: a like.
    pub const N_LIKE: u8 = 5;
    /// Notification: a repost.
    pub const N_REPOST: u8 = 6;
}
