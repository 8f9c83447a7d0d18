//! koshka-messages: per-user mailboxes of texts (private messages) and, in the `wall` flavour,
//! wall posts, replies, reposts and statuses — the Rust re-creation of VK's text-engine.
//!
//! A mailbox holds messages addressed by a dense per-mailbox local id that is never reused.
//! Every update is validated, encoded as one binlog record ([`ops`]), appended to the
//! [`Journal`], and applied with the same code path replay uses, so memory after a restart
//! equals memory before it. The grammar of the memcached keys lives in the `koshka-keys` crate
//! ([`koshka_keys::messages`], shared with the proxy, client and bench) and is documented for
//! clients in `docs/protocol/messages.md`.
//!
//! # Layout
//! * [`ops`] — binlog record types and their little-endian encodings;
//! * [`blob`] — one stored text: date, text (Russian packed to a byte per letter), stem ids;
//!   shared by the two copies of a send between two mailboxes of this node;
//! * [`state`] — partitions and mailboxes: 32 bytes of metadata per copy, conversations as
//!   chains, the dialogs list, flags scanned for sublists;
//! * [`history`] — the per-mailbox event ring, a few bytes per event;
//! * [`search`] — the tokeniser, the engine-wide reference-counted stem dictionary, and the
//!   delta-encoded postings of large mailboxes: the `koshka-text` crate (shared with the
//!   search engine), re-exported under this name;
//! * [`render`] — answers rendered straight into the output buffer (lists, JSON);
//! * [`snapshot`] — the per-partition snapshot format.
//!
//! # What this crate is not
//! It does no networking, knows nothing of other shards (a send whose recipient lives elsewhere
//! is the proxy's job, done with two one-sided `newmsg` records), and keeps no on-disk index:
//! all state is in memory and is rebuilt from a snapshot plus the binlog tail.

pub mod blob;
pub mod history;
pub mod ops;
pub mod render;
pub mod snapshot;
pub mod state;

mod engine;

pub use engine::MessagesEngine;
/// The word index of mailboxes: the `koshka-text` crate, shared with the search engine.
pub use koshka_text as search;

/// The messages engine's registration.
pub const MESSAGES_SPEC: koshka_engine::EngineSpec = koshka_engine::EngineSpec {
    name: "messages",
    default_port: 11212,
    key_len_max: koshka_limits::COMPILED_KEY_LEN_MAX,
    summary: "private messages: mailboxes, dialogs, unread counters, per-mailbox search",
    build: |setup| build(Flavour::Messages, setup),
};

/// The wall engine's registration (the same engine in wall flavour).
pub const WALL_SPEC: koshka_engine::EngineSpec = koshka_engine::EngineSpec {
    name: "wall",
    default_port: 11213,
    key_len_max: koshka_limits::COMPILED_KEY_LEN_MAX,
    summary: "walls: posts, replies, reposts, statuses",
    build: |setup| build(Flavour::Wall, setup),
};

fn build(
    flavour: Flavour,
    setup: &koshka_engine::EngineSetup,
) -> koshka_engine::Result<koshka_engine::Built> {
    Ok(koshka_engine::Built {
        engine: std::sync::Arc::new(MessagesEngine::new(flavour, setup.shard)),
        logged: true,
    })
}

/// The limits the key grammar enforces (defined with it in `koshka-keys`).
pub use koshka_keys::messages::{
    EXTRA_FIELDS, HISTORY_READ_MAX, KEY_BYTES_MAX, KLUDGES_BYTES_MAX, MESSAGE_TEXT_BYTES_MAX,
    PAGE_SIZE_DEFAULT, SEARCH_RESULTS_MAX, SEARCH_WORDS_MAX, SUBJECT_BYTES_MAX, TAG_BYTES_MAX,
};

/// Which kind of texts an engine instance stores; chosen once per instance and recorded in
/// its snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// Private messages: inbox/outbox copies linked to each other.
    Messages,
    /// Wall posts, replies, reposts and statuses.
    Wall,
}

impl Flavour {
    /// The engine name reported by [`koshka_engine::Engine::name`].
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Messages => "messages",
            Self::Wall => "wall",
        }
    }

    /// The byte recorded in snapshots.
    #[must_use]
    pub fn code(self) -> u8 {
        match self {
            Self::Messages => 1,
            Self::Wall => 2,
        }
    }

    /// The predefined sublists (`and:xor` pairs) maintained for this flavour.
    #[must_use]
    pub fn sublists(self) -> &'static [(u32, u32)] {
        match self {
            Self::Messages => MESSAGE_SUBLISTS,
            Self::Wall => WALL_SUBLISTS,
        }
    }
}

/// Message flags (mail flavour), as in VK's text-engine.
pub mod flags {
    /// Incoming message not yet read.
    pub const UNREAD: u32 = 1;
    /// The mailbox owner sent this message (outbox copy).
    pub const OUTBOX: u32 = 2;
    /// The owner replied to this message.
    pub const REPLIED: u32 = 4;
    /// Marked important.
    pub const IMPORTANT: u32 = 8;
    /// Part of a chat.
    pub const CHAT: u32 = 16;
    /// Sent by a friend.
    pub const FRIENDS: u32 = 32;
    /// Classified as spam.
    pub const SPAM: u32 = 64;
    /// Deleted by the owner (kept, but hidden from conversations, dialogs and search).
    pub const DELETED: u32 = 128;
    /// Checked by the spam filter.
    pub const FIXED: u32 = 256;
    /// Has media.
    pub const MEDIA: u32 = 512;
    /// Has attachments.
    pub const ATTACH: u32 = 1024;

    /// Wall flavour: a reply to another post of the same wall (its parent is `peer_msg_id`).
    pub const WALL_REPLY: u32 = 1;
    /// Wall flavour: a repost (copy of another wall post, linked to the original).
    pub const WALL_COPY: u32 = 2;
    /// Wall flavour: visible to friends only.
    pub const WALL_FRIENDS_ONLY: u32 = 4;
    /// Wall flavour: a status (the newest non-deleted one is the user's current status).
    pub const WALL_STATUS: u32 = 8;
    /// Wall flavour: this post was reposted by someone.
    pub const WALL_COPIED: u32 = 256;

    /// Flags a client may set: the low 16 bits. The high bits are reserved for the engine.
    pub const USER_MASK: u32 = koshka_keys::messages::USER_FLAGS_MASK;
}

/// Predefined sublists of the mail flavour, `(and, xor)`: a message belongs to a sublist when
/// `(flags ^ xor) & and == 0`. Asking for any other pair is a client error.
pub const MESSAGE_SUBLISTS: &[(u32, u32)] = &[
    (0, 0),     // everything, deleted included
    (128, 0),   // not deleted
    (130, 0),   // inbox
    (130, 2),   // outbox
    (131, 1),   // unread inbox
    (131, 3),   // outbox not yet read by the peer
    (136, 8),   // important
    (192, 64),  // spam
    (194, 0),   // inbox without spam
    (160, 32),  // from friends
    (144, 16),  // chats
    (128, 128), // deleted
];

/// Predefined sublists of the wall flavour, `(and, xor)`.
pub const WALL_SUBLISTS: &[(u32, u32)] = &[
    (0, 0),     // everything, deleted included
    (128, 0),   // not deleted
    (129, 0),   // top-level posts
    (129, 1),   // replies
    (130, 2),   // reposts
    (133, 0),   // public top-level posts (not friends-only)
    (132, 4),   // friends-only posts
    (136, 8),   // statuses
    (128, 128), // deleted
];

/// Most predefined sublists per flavour (VK's limit; one sorted id vector each per mailbox).
pub const SUBLISTS_MAX: usize = 16;
const _: () = assert!(MESSAGE_SUBLISTS.len() <= SUBLISTS_MAX);
const _: () = assert!(WALL_SUBLISTS.len() <= SUBLISTS_MAX);

/// Number of partitions (each behind its own lock, each with its own snapshot position).
/// 64 keeps lock contention low on the machines we run while keeping snapshot framing small.
pub const PARTITIONS: usize = 64;

/// Most messages a mailbox may ever allocate (local ids are dense and never reused, so this
/// bounds the id space too). A send into a full mailbox answers `CLIENT_ERROR`.
pub const MESSAGES_PER_MAILBOX_MAX: u32 = 1_000_000;

/// Most live text bytes of one mailbox (texts are kept in one arena with `u32` offsets). A
/// send that would pass it answers `CLIENT_ERROR`.
pub const MAILBOX_TEXT_BYTES_MAX: usize = 1 << 30;

/// Most items one page read returns; longer slices are truncated to this many items.
pub const PAGE_SIZE_MAX: usize = 1000;

const _: () = assert!(PAGE_SIZE_DEFAULT <= PAGE_SIZE_MAX);

/// Longest indexed word in bytes; longer tokens are not indexed (and are ignored in queries).
pub use koshka_text::WORD_BYTES_MAX;

/// Events kept per mailbox in the history ring; a cursor older than the ring answers
/// `resync,<timestamp>`.
pub const HISTORY_EVENTS_MAX: usize = 256;

const _: () = assert!(HISTORY_READ_MAX <= HISTORY_EVENTS_MAX);

/// Size thresholds of the in-memory layout: tunables within fixed ceilings, chosen once per
/// engine. [`Layout::test_min`] makes small test mailboxes take the large-mailbox paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// A mailbox with at least this many live messages keeps an inverted search index
    /// (and drops it below half of it); smaller ones are searched by scanning their
    /// messages' stem ids (256 scans take about as long as one index lookup).
    pub search_index_min: usize,
}

impl Layout {
    /// The production thresholds.
    #[must_use]
    pub const fn production() -> Self {
        Self {
            search_index_min: 256,
        }
    }

    /// Tiny thresholds, so tests reach every path.
    #[must_use]
    pub const fn test_min() -> Self {
        Self {
            search_index_min: 4,
        }
    }
}
