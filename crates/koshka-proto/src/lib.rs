//! The memcached text protocol and meta commands, as bytes in and bytes out.
//!
//! # Layout
//! * [`request`] — [`parse`] turns the front of a read buffer into one [`Command`] borrowing
//!   from the buffer (no allocation), or says it needs more bytes, or describes a bad request
//!   precisely enough for the caller to reply and stay in sync with the stream;
//! * [`meta`] — the flag tokens of `mg`/`ms`/`md`/`ma`;
//! * [`meta_reply`] — meta-command replies composed from flags and an item description;
//! * [`reply`] — small functions that append replies to an output buffer;
//! * [`encode`] — request bytes, one function per request form, appended to a caller-owned
//!   buffer; [`Command::encode`] is built on them (clients, the bench, tests);
//! * [`response`] — [`parse_reply`] turns the front of a client's read buffer into one
//!   [`Reply`] borrowing from the buffer, the inverse of [`reply`].
//!
//! The server parses with [`request`] and composes with [`reply`]; `koshka-client` and
//! `koshka bench` encode with [`encode`] and parse with [`response`], so both ends speak one
//! codec and the round-trip property tests (`tests/roundtrip.rs`) hold them to each other.
//!
//! This crate does no I/O and knows nothing of engines or storage: whether a key is "plain" or
//! "compiled" is only a length limit handed in through [`ParseConfig`].

pub mod encode;
pub mod meta;
pub mod meta_reply;
pub mod reply;
pub mod request;
pub mod response;

pub use meta::MetaFlags;
pub use request::{parse, BadRequest, Command, Keys, ParseConfig, Parsed, StoreMode};
pub use response::{
    parse_reply, BadReply, ErrorReply, Meta, MetaCode, ParsedReply, Reply, ReplyConfig, Stats,
    Status, Value, Values,
};

/// The version string reported by `version` and `stats`: memcached-compatible major/minor so
/// clients take their modern code paths, then koshka's own version.
pub const VERSION: &str = concat!("1.6.21-koshka-", env!("CARGO_PKG_VERSION"));
