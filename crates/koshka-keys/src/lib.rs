//! koshka-keys: the "compiled keys" of koshka's engines as plain values.
//!
//! VK's engines answer queries through memcached keys such as `message2_17`,
//! `sublist5_131:1#-1,-20` or `30~10:album17,priv_phone`. This crate holds their grammars as
//! typed values that can be **parsed** from key bytes and **encoded** back, and that say, without
//! any engine state, **which owners** a key names, whether it **reads or writes**, and **how the
//! answers of several shards merge**. Engines parse with it; the proxy parses, routes, rewrites
//! (by building a modified value: every field is public) and re-encodes with it; the bench and
//! the client spell keys with it instead of `format!`.
//!
//! ```
//! use koshka_keys::friends::GetKey;
//! use koshka_keys::messages::Query;
//! use koshka_keys::{Access, Encode, Merge, Owners, Route};
//!
//! let query = Query::parse(b"98@post5_17").unwrap();
//! assert_eq!(query.to_bytes(), b"message5_17"); // the canonical spelling
//! assert_eq!(query.owners(), Owners::One(5));
//! assert_eq!((query.access(), query.merge()), (Access::Read, Merge::Single));
//!
//! let common = GetKey::parse(b"common_friends10,40").unwrap();
//! assert_eq!(common.owners(), Owners::Two(10, 40));
//! assert_eq!(common.merge(), Merge::IntersectIds);
//! ```
//!
//! # Layout
//! * [`idiom`] — the VK idioms every grammar shares, each written once with parse and encode:
//!   integers and owner ids, `#from,to` / `#limit` slices ([`Slice`]), `and:xor` masks,
//!   count-prefixed comma lists, id lists, temp-list tags, handshake tags, the `N@` routing
//!   prefix, `viewer~owner:key,key` privacy checks, `word+word` query payloads;
//! * [`route`] — the routing vocabulary: [`Owners`], [`Access`], [`Merge`] and the [`Route`]
//!   trait every grammar type implements;
//! * [`messages`] — the messages/wall grammar: [`messages::Query`] (gets) and
//!   [`messages::Update`] (sets, deletes, incr/decr, with their values);
//! * [`friends`] — the friends grammar: [`friends::GetKey`], [`friends::SetKey`],
//!   [`friends::DeleteKey`], [`friends::IncrKey`];
//! * [`lists`] — the lists grammar: [`lists::GetKey`], [`lists::SetKey`],
//!   [`lists::DeleteKey`], [`lists::IncrKey`];
//! * [`news`] — the news grammar: [`news::GetKey`] (with the raw per-shard feed query
//!   [`news::RawQuery`]), [`news::SetKey`], [`news::DeleteKey`].
//! * [`search`] — the global search grammar: [`search::Query`], [`search::Update`], the reply
//!   [`search::Found`] and the scatter/gather merge ([`search::merge`],
//!   [`search::split_limit`]).
//!
//! # Canonical form
//! Several spellings may parse to one value (`post5_1` and `message5_1`, `topmsglist5` and
//! `topmsglist5#-1,-100`, `98@friends5` and `friends5`, `friends5_0` and `friends5`). Encoding
//! always writes the one canonical spelling, so for every value `k` a parser produces,
//! `parse(encode(k)) == k`, and `encode(parse(b))` is `b` whenever `b` is canonical. The rules
//! are listed in `docs/protocol/README.md`.
//!
//! # Plain kv keys
//! The `kv` engine's keys are opaque memcached keys: there is no grammar here for them. A
//! router sends a kv key to the shard chosen by a hash of the whole key (memcached style), not
//! by an owner id.
//!
//! # What this crate is not
//! It holds no engine state, does no I/O and knows nothing of the memcached framing around a
//! key (that is `koshka-proto`). It checks syntax and ranges only: whether an owner is on this
//! shard, whether a sublist is supported, whether a temp list exists are the engine's checks.
//! It depends on nothing but `thiserror`.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod friends;
pub mod idiom;
pub mod lists;
pub mod messages;
pub mod news;
pub mod route;
pub mod search;

pub use idiom::Slice;
pub use route::{Access, Merge, Owners, Route};

/// Why a key (or the value of an update) was refused. Engines answer
/// `CLIENT_ERROR <Display of this error>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key is longer than its grammar accepts.
    #[error("key longer than {max} bytes")]
    TooLong {
        /// The key's length.
        len: usize,
        /// The grammar's limit.
        max: usize,
    },
    /// No key of this name exists for this command (a router may treat it as a miss).
    #[error("{reason}")]
    Unknown {
        /// What was not recognised, for the client.
        reason: String,
    },
    /// The key names a known form but is malformed or breaks a limit.
    #[error("{reason}")]
    Malformed {
        /// What is wrong, for the client.
        reason: String,
    },
}

impl KeyError {
    /// A [`KeyError::Malformed`] with `reason`.
    pub fn malformed(reason: impl Into<String>) -> Self {
        Self::Malformed {
            reason: reason.into(),
        }
    }

    /// A [`KeyError::Unknown`] with `reason`.
    pub fn unknown(reason: impl Into<String>) -> Self {
        Self::Unknown {
            reason: reason.into(),
        }
    }
}

/// The result of parsing a key.
pub type Result<T> = std::result::Result<T, KeyError>;

/// The memcached command a key travels with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// `get` (and `gets`, `mg`).
    Get,
    /// `set` (and `add`, `replace`, `ms`).
    Set,
    /// `delete`.
    Delete,
    /// `incr`.
    Incr,
    /// `decr`.
    Decr,
}

impl Verb {
    /// The command word, as sent on the wire.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Set => "set",
            Self::Delete => "delete",
            Self::Incr => "incr",
            Self::Decr => "decr",
        }
    }
}

/// A key that can be written back as bytes.
pub trait Encode {
    /// Appends the key's canonical spelling to `out`.
    fn encode(&self, out: &mut Vec<u8>);

    /// The key's canonical spelling.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        self.encode(&mut out);
        out
    }
}

/// The shard of owner `id` among `count` shards: `|id| mod count` (VK's "firstint"; the same
/// rule `koshka_engine::ShardSpec` enforces on a node). A `count` of 0 is taken as 1.
#[must_use]
pub fn shard_of(id: i64, count: u32) -> u32 {
    let shard = id.unsigned_abs() % u64::from(count.max(1));
    // NOTE: shard < count, which is a u32.
    u32::try_from(shard).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_ignore_the_sign() {
        assert_eq!(shard_of(7, 4), 3);
        assert_eq!(shard_of(-7, 4), 3);
        assert_eq!(shard_of(7, 0), 0);
        assert_eq!(shard_of(i64::MIN, 3), 2, "2^63 mod 3");
    }

    #[test]
    fn errors_show_their_reason() {
        assert_eq!(KeyError::malformed("bad").to_string(), "bad");
        assert_eq!(
            KeyError::TooLong { len: 9, max: 4 }.to_string(),
            "key longer than 4 bytes"
        );
    }
}
