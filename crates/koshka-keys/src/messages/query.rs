//! [`Query`]: the `get` keys of the messages/wall grammar.

use super::{DEFAULT_SLICE, EXTRA_FIELDS, HISTORY_READ_MAX, KEY_BYTES_MAX};
use super::{SEARCH_RESULTS_MAX, SEARCH_WORDS_MAX, TAG_BYTES_MAX};
use crate::idiom::{self, push_int, push_uint, split, Cursor, Dialect, Slice};
use crate::route::{Access, Merge, Owners, Route};
use crate::{Encode, KeyError, Result};

/// A read, parsed from a `get` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// `message<uid>_<lid>[#mode[,max_len]]` (wall: also `post<uid>_<lid>…`).
    Message {
        /// Mailbox.
        owner: i64,
        /// Message.
        lid: u32,
        /// Field selection bits (see [`mode`]).
        mode: u32,
        /// Body length cap in bytes (cut at a character boundary); at most `u32::MAX`.
        max_len: Option<usize>,
    },
    /// `flags<uid>_<lid>`.
    Flags {
        /// Mailbox.
        owner: i64,
        /// Message.
        lid: u32,
    },
    /// `extra<uid>_<lid>:<k>`.
    Extra {
        /// Mailbox.
        owner: i64,
        /// Message.
        lid: u32,
        /// Field number.
        field: u8,
    },
    /// `sublist<uid>_<and>:<xor>[#from,to]`.
    Sublist {
        /// Mailbox.
        owner: i64,
        /// AND mask.
        and: u32,
        /// XOR mask.
        xor: u32,
        /// Slice ([`DEFAULT_SLICE`] without one).
        slice: Slice,
    },
    /// `sublistpos<uid>_<and>:<xor>,<lid>`.
    SublistPos {
        /// Mailbox.
        owner: i64,
        /// AND mask.
        and: u32,
        /// XOR mask.
        xor: u32,
        /// Message.
        lid: u32,
    },
    /// `peermsglist<uid>_<peer>[#from,to]`.
    PeerList {
        /// Mailbox.
        owner: i64,
        /// Peer.
        peer: i64,
        /// Slice.
        slice: Slice,
    },
    /// `peermsglistpos<uid>_<peer>:<lid>`.
    PeerListPos {
        /// Mailbox.
        owner: i64,
        /// Peer.
        peer: i64,
        /// Message.
        lid: u32,
    },
    /// `topmsglist<uid>[#from,to]` (alias `dialogs…`): the dialogs list.
    Dialogs {
        /// Mailbox.
        owner: i64,
        /// Slice (position 1 = the oldest dialog).
        slice: Slice,
    },
    /// `unreadcount<uid>[_<peer>]`.
    Unread {
        /// Mailbox.
        owner: i64,
        /// One dialog, or all.
        peer: Option<i64>,
    },
    /// `newmsgid<uid>[#<tag>]` (and `newpostid…`): the id allocated by the tagged set.
    NewId {
        /// Mailbox.
        owner: i64,
        /// Tag.
        tag: Vec<u8>,
    },
    /// `timestamp<uid>`.
    Timestamp {
        /// Mailbox.
        owner: i64,
    },
    /// `history<uid>#<ts>[,<limit>]`.
    History {
        /// Mailbox.
        owner: i64,
        /// Cursor (at most `i64::MAX`).
        ts: u64,
        /// Most events, `1..=HISTORY_READ_MAX`.
        limit: usize,
    },
    /// `search(<uid>,<limit>,<words>)` and
    /// `xsearch(<uid>,<and>:<xor>,<peer>,<min_date>,<max_date>,<limit>,<words>)`.
    Search {
        /// Mailbox.
        owner: i64,
        /// Flag filter `(and, xor)` (any pair, `0:0` = none).
        mask: (u32, u32),
        /// Peer filter (0 = any).
        peer: i64,
        /// Earliest date (inclusive).
        min_date: u32,
        /// Latest date (inclusive, 0 = none).
        max_date: u32,
        /// Most ids returned.
        limit: usize,
        /// The words, decoded, separated by spaces.
        words: Vec<u8>,
    },
    /// `sublists_types`.
    SublistTypes,
    /// Wall: `replies<uid>_<post>[#from,to]`.
    Replies {
        /// Wall.
        owner: i64,
        /// Parent post.
        post: u32,
        /// Slice.
        slice: Slice,
    },
    /// Wall: `status<uid>`, the current status.
    Status {
        /// Wall.
        owner: i64,
    },
    /// Wall: `statuses<uid>[#from,to]`.
    Statuses {
        /// Wall.
        owner: i64,
        /// Slice.
        slice: Slice,
    },
}

/// Field-selection bits of `message<uid>_<lid>#mode`.
pub mod mode {
    /// Omit subject and text.
    pub const NO_TEXT: u32 = 1;
    /// Include kludges.
    pub const KLUDGES: u32 = 2;
    /// Include non-zero extra fields.
    pub const EXTRAS: u32 = 4;
    /// All known bits.
    pub const ALL: u32 = NO_TEXT | KLUDGES | EXTRAS;
}

/// Splits a messages key into its name and a cursor, refusing over-long keys.
pub(super) fn start(key: &[u8]) -> Result<(&[u8], Cursor<'_>)> {
    if key.len() > KEY_BYTES_MAX {
        return Err(KeyError::TooLong {
            len: key.len(),
            max: KEY_BYTES_MAX,
        });
    }
    Ok(split(key, Dialect::Messages))
}

/// A positive local id.
pub(super) fn lid(c: &mut Cursor<'_>, what: &str) -> Result<u32> {
    let value = c.int(what)?;
    match u32::try_from(value) {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(KeyError::malformed(format!(
            "{what} {value} must be a positive local id"
        ))),
    }
}

pub(super) fn owner_lid(c: &mut Cursor<'_>) -> Result<(i64, u32)> {
    let owner = c.id("owner id")?;
    c.expect(b'_')?;
    Ok((owner, lid(c, "message id")?))
}

pub(super) fn owner_peer(c: &mut Cursor<'_>) -> Result<(i64, i64)> {
    let owner = c.id("owner id")?;
    c.expect(b'_')?;
    Ok((owner, c.id("peer id")?))
}

/// An extra field number, `0..EXTRA_FIELDS`.
pub(super) fn field(c: &mut Cursor<'_>) -> Result<u8> {
    let k = c.int("field")?;
    match u8::try_from(k) {
        Ok(k) if k < EXTRA_FIELDS => Ok(k),
        _ => Err(KeyError::malformed(format!(
            "extra field {k} must be in 0..{EXTRA_FIELDS}"
        ))),
    }
}

/// Appends `name<owner>`.
pub(super) fn push_name(out: &mut Vec<u8>, name: &[u8], owner: i64) {
    out.extend_from_slice(name);
    push_int(out, owner);
}

/// Appends `_<id>`.
pub(super) fn push_sub(out: &mut Vec<u8>, id: u64) {
    out.push(b'_');
    push_uint(out, id);
}

/// Appends a slice, leaving out the default one. Messages keys know only `#from,to`, so a
/// [`Slice::All`] is written `#1,-1` and a [`Slice::Limit`] `#1,<limit>` (`#0,0` for 0).
pub(super) fn push_slice(out: &mut Vec<u8>, slice: Slice) {
    match slice {
        s if s == DEFAULT_SLICE => {}
        Slice::All => out.extend_from_slice(b"#1,-1"),
        Slice::Limit(0) => out.extend_from_slice(b"#0,0"),
        Slice::Limit(limit) => {
            out.extend_from_slice(b"#1,");
            push_uint(out, u64::from(limit));
        }
        range @ Slice::Range { .. } => range.encode(out),
    }
}

impl Query {
    /// Parses a `get` key.
    ///
    /// # Errors
    /// [`KeyError`] naming what is wrong; [`KeyError::Unknown`] for an unknown key name.
    pub fn parse(key: &[u8]) -> Result<Self> {
        let (name, mut c) = start(key)?;
        let query = match name {
            b"message" | b"post" => parse_message(&mut c)?,
            b"flags" => {
                let (owner, lid) = owner_lid(&mut c)?;
                Self::Flags { owner, lid }
            }
            b"extra" => {
                let (owner, lid) = owner_lid(&mut c)?;
                c.expect(b':')?;
                Self::Extra {
                    owner,
                    lid,
                    field: field(&mut c)?,
                }
            }
            b"sublist" => {
                let owner = c.id("owner id")?;
                c.expect(b'_')?;
                let (and, xor) = c.mask()?;
                Self::Sublist {
                    owner,
                    and,
                    xor,
                    slice: c.slice(DEFAULT_SLICE)?,
                }
            }
            b"sublistpos" => {
                let owner = c.id("owner id")?;
                c.expect(b'_')?;
                let (and, xor) = c.mask()?;
                c.expect(b',')?;
                Self::SublistPos {
                    owner,
                    and,
                    xor,
                    lid: lid(&mut c, "message id")?,
                }
            }
            b"peermsglist" => {
                let (owner, peer) = owner_peer(&mut c)?;
                Self::PeerList {
                    owner,
                    peer,
                    slice: c.slice(DEFAULT_SLICE)?,
                }
            }
            b"peermsglistpos" => {
                let (owner, peer) = owner_peer(&mut c)?;
                c.expect(b':')?;
                Self::PeerListPos {
                    owner,
                    peer,
                    lid: lid(&mut c, "message id")?,
                }
            }
            b"topmsglist" | b"dialogs" => Self::Dialogs {
                owner: c.id("owner id")?,
                slice: c.slice(DEFAULT_SLICE)?,
            },
            b"unreadcount" => {
                let owner = c.id("owner id")?;
                let peer = if c.eat(b'_') {
                    Some(c.id("peer id")?)
                } else {
                    None
                };
                Self::Unread { owner, peer }
            }
            b"newmsgid" | b"newpostid" => Self::NewId {
                owner: c.id("owner id")?,
                tag: c.tag(TAG_BYTES_MAX)?,
            },
            b"timestamp" => Self::Timestamp {
                owner: c.id("owner id")?,
            },
            b"history" => parse_history(&mut c)?,
            b"search" | b"xsearch" => return parse_search(name == b"xsearch", c),
            b"sublists_types" => Self::SublistTypes,
            b"replies" => {
                let (owner, post) = owner_lid(&mut c)?;
                Self::Replies {
                    owner,
                    post,
                    slice: c.slice(DEFAULT_SLICE)?,
                }
            }
            b"status" => Self::Status {
                owner: c.id("owner id")?,
            },
            b"statuses" => Self::Statuses {
                owner: c.id("owner id")?,
                slice: c.slice(DEFAULT_SLICE)?,
            },
            _ => return Err(KeyError::unknown(format!("unknown key {:?}", c.show()))),
        };
        c.end()?;
        Ok(query)
    }

    /// The owner id this query names (for the shard check); `None` for `sublists_types`.
    #[must_use]
    pub fn owner(&self) -> Option<i64> {
        match *self {
            Self::SublistTypes => None,
            Self::Message { owner, .. }
            | Self::Flags { owner, .. }
            | Self::Extra { owner, .. }
            | Self::Sublist { owner, .. }
            | Self::SublistPos { owner, .. }
            | Self::PeerList { owner, .. }
            | Self::PeerListPos { owner, .. }
            | Self::Dialogs { owner, .. }
            | Self::Unread { owner, .. }
            | Self::NewId { owner, .. }
            | Self::Timestamp { owner }
            | Self::History { owner, .. }
            | Self::Search { owner, .. }
            | Self::Replies { owner, .. }
            | Self::Status { owner }
            | Self::Statuses { owner, .. } => Some(owner),
        }
    }
}

fn parse_message(c: &mut Cursor<'_>) -> Result<Query> {
    let (owner, lid) = owner_lid(c)?;
    let (mut mode, mut max_len) = (0, None);
    if c.eat(b'#') {
        mode = c.u32("mode")?;
        if mode & !mode::ALL != 0 {
            return Err(KeyError::malformed(format!(
                "unknown mode bits {:#x}",
                mode & !mode::ALL
            )));
        }
        if c.eat(b',') {
            max_len = Some(usize::try_from(c.u32("max_len")?).unwrap_or(usize::MAX));
        }
    }
    Ok(Query::Message {
        owner,
        lid,
        mode,
        max_len,
    })
}

fn parse_history(c: &mut Cursor<'_>) -> Result<Query> {
    let owner = c.id("owner id")?;
    c.expect(b'#')?;
    let ts = u64::try_from(c.int("timestamp")?)
        .map_err(|_| KeyError::malformed("timestamp must not be negative"))?;
    let mut limit = HISTORY_READ_MAX;
    if c.eat(b',') {
        limit = usize::try_from(c.u32("limit")?).unwrap_or(usize::MAX);
        if limit == 0 || limit > HISTORY_READ_MAX {
            return Err(KeyError::malformed(format!(
                "history limit must be in 1..={HISTORY_READ_MAX}"
            )));
        }
    }
    Ok(Query::History { owner, ts, limit })
}

fn parse_search(extended: bool, mut c: Cursor<'_>) -> Result<Query> {
    c.expect(b'(')?;
    let owner = c.id("owner id")?;
    c.expect(b',')?;
    let (mut mask, mut peer, mut min_date, mut max_date) = ((0, 0), 0, 0, 0);
    if extended {
        mask = c.mask()?;
        c.expect(b',')?;
        peer = c.int("peer id")?;
        if peer < 0 {
            return Err(KeyError::malformed(
                "peer filter must be 0 (any) or a positive id",
            ));
        }
        c.expect(b',')?;
        min_date = c.u32("min date")?;
        c.expect(b',')?;
        max_date = c.u32("max date")?;
        c.expect(b',')?;
    }
    let limit = c.int("limit")?;
    let limit = match usize::try_from(limit) {
        Ok(l) if (1..=SEARCH_RESULTS_MAX).contains(&l) => l,
        _ => {
            return Err(KeyError::malformed(format!(
                "search limit {limit} must be in 1..={SEARCH_RESULTS_MAX}"
            )))
        }
    };
    c.expect(b',')?;
    let rest = c.take_rest();
    let Some(close) = rest.iter().rposition(|&b| b == b')') else {
        return Err(KeyError::malformed("search query must end with ')'"));
    };
    if close + 1 != rest.len() {
        return Err(KeyError::malformed(
            "unexpected bytes after the search query",
        ));
    }
    let words = idiom::decode_words(&rest[..close])?;
    let count = words
        .split(|&b| b == b' ')
        .filter(|w| !w.is_empty())
        .count();
    if count == 0 {
        return Err(KeyError::malformed("empty search query"));
    }
    if count > SEARCH_WORDS_MAX {
        return Err(KeyError::malformed(format!(
            "search query has more than {SEARCH_WORDS_MAX} words"
        )));
    }
    Ok(Query::Search {
        owner,
        mask,
        peer,
        min_date,
        max_date,
        limit,
        words,
    })
}

impl Encode for Query {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Message {
                owner,
                lid,
                mode,
                max_len,
            } => {
                push_name(out, b"message", *owner);
                push_sub(out, u64::from(*lid));
                if *mode != 0 || max_len.is_some() {
                    out.push(b'#');
                    push_uint(out, u64::from(*mode));
                }
                if let Some(max_len) = max_len {
                    out.push(b',');
                    push_uint(out, u64::try_from(*max_len).unwrap_or(u64::MAX));
                }
            }
            Self::Flags { owner, lid } => {
                push_name(out, b"flags", *owner);
                push_sub(out, u64::from(*lid));
            }
            Self::Extra { owner, lid, field } => {
                push_name(out, b"extra", *owner);
                push_sub(out, u64::from(*lid));
                out.push(b':');
                push_uint(out, u64::from(*field));
            }
            Self::Sublist {
                owner,
                and,
                xor,
                slice,
            } => {
                push_name(out, b"sublist", *owner);
                out.push(b'_');
                idiom::encode_mask(out, *and, *xor);
                push_slice(out, *slice);
            }
            Self::SublistPos {
                owner,
                and,
                xor,
                lid,
            } => {
                push_name(out, b"sublistpos", *owner);
                out.push(b'_');
                idiom::encode_mask(out, *and, *xor);
                out.push(b',');
                push_uint(out, u64::from(*lid));
            }
            Self::PeerList { owner, peer, slice } => {
                push_name(out, b"peermsglist", *owner);
                out.push(b'_');
                push_int(out, *peer);
                push_slice(out, *slice);
            }
            Self::PeerListPos { owner, peer, lid } => {
                push_name(out, b"peermsglistpos", *owner);
                out.push(b'_');
                push_int(out, *peer);
                out.push(b':');
                push_uint(out, u64::from(*lid));
            }
            Self::Dialogs { owner, slice } => {
                push_name(out, b"topmsglist", *owner);
                push_slice(out, *slice);
            }
            Self::Unread { owner, peer } => {
                push_name(out, b"unreadcount", *owner);
                if let Some(peer) = peer {
                    out.push(b'_');
                    push_int(out, *peer);
                }
            }
            Self::NewId { owner, tag } => {
                push_name(out, b"newmsgid", *owner);
                idiom::encode_tag(out, tag);
            }
            Self::Timestamp { owner } => push_name(out, b"timestamp", *owner),
            Self::History { owner, ts, limit } => {
                push_name(out, b"history", *owner);
                out.push(b'#');
                push_uint(out, *ts);
                if *limit != HISTORY_READ_MAX {
                    out.push(b',');
                    push_uint(out, u64::try_from(*limit).unwrap_or(u64::MAX));
                }
            }
            Self::Search { .. } => encode_search(self, out),
            Self::SublistTypes => out.extend_from_slice(b"sublists_types"),
            Self::Replies { owner, post, slice } => {
                push_name(out, b"replies", *owner);
                push_sub(out, u64::from(*post));
                push_slice(out, *slice);
            }
            Self::Status { owner } => push_name(out, b"status", *owner),
            Self::Statuses { owner, slice } => {
                push_name(out, b"statuses", *owner);
                push_slice(out, *slice);
            }
        }
    }
}

fn encode_search(query: &Query, out: &mut Vec<u8>) {
    let Query::Search {
        owner,
        mask,
        peer,
        min_date,
        max_date,
        limit,
        words,
    } = query
    else {
        unreachable!("encode_search is called for Query::Search only");
    };
    let extended = *mask != (0, 0) || *peer != 0 || *min_date != 0 || *max_date != 0;
    out.extend_from_slice(if extended { b"xsearch(" } else { b"search(" });
    push_int(out, *owner);
    out.push(b',');
    if extended {
        idiom::encode_mask(out, mask.0, mask.1);
        out.push(b',');
        push_int(out, *peer);
        out.push(b',');
        push_uint(out, u64::from(*min_date));
        out.push(b',');
        push_uint(out, u64::from(*max_date));
        out.push(b',');
    }
    push_uint(out, u64::try_from(*limit).unwrap_or(u64::MAX));
    out.push(b',');
    idiom::encode_words(out, words);
    out.push(b')');
}

impl Route for Query {
    fn owners(&self) -> Owners {
        self.owner().map_or(Owners::None, Owners::One)
    }

    fn access(&self) -> Access {
        match self {
            Self::NewId { .. } => Access::Session,
            _ => Access::Read,
        }
    }

    fn merge(&self) -> Merge {
        Merge::Single
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys() {
        assert_eq!(
            Query::parse(b"sublist1000_131:1#-1,-20").unwrap(),
            Query::Sublist {
                owner: 1000,
                and: 131,
                xor: 1,
                slice: Slice::Range { from: -1, to: -20 }
            }
        );
        assert_eq!(
            Query::parse(b"7@message5_17#1,200").unwrap(),
            Query::Message {
                owner: 5,
                lid: 17,
                mode: 1,
                max_len: Some(200)
            }
        );
        assert!(matches!(
            Query::parse(b"search(5,10,hello+%D0%BC%D0%B8%D1%80)").unwrap(),
            Query::Search {
                owner: 5,
                limit: 10,
                ..
            }
        ));
        assert!(Query::parse(b"message0_1").is_err());
        assert!(Query::parse(b"message-5_1").is_err());
        assert!(Query::parse(b"message5_1x").is_err());
        assert!(matches!(
            Query::parse(b"nothing5"),
            Err(KeyError::Unknown { .. })
        ));
        assert!(matches!(
            Query::parse(&[b'x'; KEY_BYTES_MAX + 1]),
            Err(KeyError::TooLong { .. })
        ));
    }

    #[test]
    fn encodes_canonical_spellings() {
        for (key, canonical) in [
            (&b"post5_1"[..], &b"message5_1"[..]),
            (b"message5_1#0", b"message5_1"),
            (b"dialogs5#-1,-100", b"topmsglist5"),
            (b"newpostid5#", b"newmsgid5"),
            (b"history5#3,256", b"history5#3"),
            (b"xsearch(5,0:0,0,0,0,10,a+b)", b"search(5,10,a+b)"),
            (b"search(5,10,%61)", b"search(5,10,a)"),
            (b"98@unreadcount5", b"unreadcount5"),
            (b"sublist5_0:0#-1,-2", b"sublist5_0:0#-1,-2"),
            (b"message5_1#4,0", b"message5_1#4,0"),
            (b"message5_1#0,9", b"message5_1#0,9"),
            (
                b"xsearch(5,130:0,7,1,2,10,a)",
                b"xsearch(5,130:0,7,1,2,10,a)",
            ),
        ] {
            let query = Query::parse(key).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&query.to_bytes()),
                String::from_utf8_lossy(canonical)
            );
            assert_eq!(Query::parse(&query.to_bytes()).unwrap(), query);
        }
    }

    #[test]
    fn messages_slices_have_no_limit_form() {
        let key = |slice| {
            Query::Dialogs { owner: 5, slice }
                .to_bytes()
                .into_iter()
                .map(char::from)
                .collect::<String>()
        };
        assert_eq!(key(Slice::All), "topmsglist5#1,-1");
        assert_eq!(key(Slice::Limit(0)), "topmsglist5#0,0");
        assert_eq!(key(Slice::Limit(9)), "topmsglist5#1,9");
        assert!(Query::parse(b"topmsglist5#9").is_err());
    }

    #[test]
    fn routes_by_owner() {
        let q = Query::parse(b"newmsgid5#t").unwrap();
        assert_eq!(q.owners(), Owners::One(5));
        assert_eq!(q.access(), Access::Session);
        assert_eq!(Query::SublistTypes.owners(), Owners::None);
        assert_eq!(Query::Status { owner: 3 }.access(), Access::Read);
    }
}
