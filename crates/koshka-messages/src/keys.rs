//! The key grammar: typed [`Query`] (get) and [`Update`] (set/delete/incr) forms with their
//! parse functions. See `docs/protocol/messages.md` for the client-facing description.
//!
//! Keys follow VK's idioms: `name<owner>_<id>` addressing, `#from,to` slices (1-based,
//! negative = from the newest), `and:xor` sublists, `(…)` query payloads and random-tag
//! handshakes (`set newmsg<uid>#<tag>` then `get newmsgid<uid>#<tag>`).

use koshka_engine::{Error, Result};

use crate::ops::{ExtraOp, FlagOp, Text};
use crate::{
    EXTRA_FIELDS, HISTORY_READ_MAX, KEY_BYTES_MAX, KLUDGES_BYTES_MAX, MESSAGE_TEXT_BYTES_MAX,
    PAGE_SIZE_DEFAULT, SEARCH_RESULTS_MAX, SEARCH_WORDS_MAX, SUBJECT_BYTES_MAX, TAG_BYTES_MAX,
};

/// A `#from,to` slice of an ascending list (1-based; negative counts from the newest;
/// `to < from` reverses; `#0,0` asks for the total only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    /// First position.
    pub from: i64,
    /// Last position.
    pub to: i64,
}

impl Default for Slice {
    /// The newest [`PAGE_SIZE_DEFAULT`] items, newest first.
    fn default() -> Self {
        Self {
            from: -1,
            to: -(PAGE_SIZE_DEFAULT as i64),
        }
    }
}

impl Slice {
    /// The positions (0-based indexes into the ascending list of `len` items) this slice
    /// selects, in reply order, truncated to `max` items.
    #[must_use]
    pub fn resolve(self, len: usize, max: usize) -> Vec<usize> {
        if self.from == 0 && self.to == 0 {
            return Vec::new();
        }
        let n = i64::try_from(len).unwrap_or(i64::MAX);
        let abs = |i: i64| if i < 0 { n + 1 + i } else { i };
        let (from, to) = (abs(self.from), abs(self.to));
        let index = |i: i64| usize::try_from(i - 1).unwrap_or(0);
        if from <= to {
            let (lo, hi) = (from.max(1), to.min(n));
            if lo > hi {
                return Vec::new();
            }
            (index(lo)..=index(hi)).take(max).collect()
        } else {
            let (hi, lo) = (from.min(n), to.max(1));
            if lo > hi {
                return Vec::new();
            }
            (index(lo)..=index(hi)).rev().take(max).collect()
        }
    }
}

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
        /// Body length cap in bytes (cut at a character boundary).
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
        /// Slice.
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
    /// `topmsglist<uid>[#from,to]`: the dialogs list.
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
        /// Cursor.
        ts: u64,
        /// Most events.
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
        /// The words, decoded.
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

/// An update, parsed from a `set`, `delete` or `incr`/`decr` key (and value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// `set newmsg<uid>[#<tag>]` = `flags,peer[,peer_lid]\n[subject\t]text`: one side.
    NewMessage {
        /// Mailbox.
        owner: i64,
        /// Handshake tag.
        tag: Vec<u8>,
        /// Flags.
        flags: u32,
        /// Peer.
        peer: i64,
        /// Twin id in the peer's mailbox (0 = unknown).
        peer_lid: u32,
        /// Text.
        text: Text,
    },
    /// `set sendmsg<from>_<to>[#<tag>]` = `flags\n[subject\t]text`: both sides, linked.
    Send {
        /// Sender.
        from: i64,
        /// Recipient.
        to: i64,
        /// Handshake tag.
        tag: Vec<u8>,
        /// Flags common to both copies.
        flags: u32,
        /// Text.
        text: Text,
    },
    /// `set flags<uid>_<lid>` = N; `incr flags… mask` (OR); `decr flags… mask` (AND-NOT).
    Flags {
        /// Mailbox.
        owner: i64,
        /// Message.
        lid: u32,
        /// Operation.
        op: FlagOp,
        /// Operand.
        value: u32,
    },
    /// `set readupto<uid>_<peer>` = lid; `set readall<uid>_<peer>` (lid 0).
    ReadUpto {
        /// Mailbox.
        owner: i64,
        /// Dialog.
        peer: i64,
        /// Last id to mark read, 0 = all.
        lid: u32,
    },
    /// `set message_text<uid>_<lid>` = `[subject\t]text`.
    Edit {
        /// Mailbox.
        owner: i64,
        /// Message.
        lid: u32,
        /// New text.
        text: Text,
    },
    /// `set peer_msg_id<uid>_<lid>` = twin id: link a one-sided copy to its twin.
    PeerLink {
        /// Mailbox.
        owner: i64,
        /// Message.
        lid: u32,
        /// Twin id in the peer's mailbox.
        peer_lid: u32,
    },
    /// `delete message<uid>_<lid>` (wall: `post…`).
    Delete {
        /// Mailbox.
        owner: i64,
        /// Message.
        lid: u32,
    },
    /// `delete dialog<uid>_<peer>`.
    DeleteDialog {
        /// Mailbox.
        owner: i64,
        /// Dialog.
        peer: i64,
    },
    /// `delete first_messages<uid>_<min_lid>`.
    Trim {
        /// Mailbox.
        owner: i64,
        /// Ids below are removed.
        min_lid: u32,
    },
    /// `set extra<uid>_<lid>:<k>` = v; `incr|decr extra… delta`.
    Extra {
        /// Mailbox.
        owner: i64,
        /// Message.
        lid: u32,
        /// Field.
        field: u8,
        /// Operation.
        op: ExtraOp,
        /// Operand.
        value: i64,
    },
    /// Wall: `set newpost<uid>[#<tag>]` = `flags,author[,parent]\n[subject\t]text`.
    NewPost {
        /// Wall.
        owner: i64,
        /// Handshake tag.
        tag: Vec<u8>,
        /// Flags.
        flags: u32,
        /// Author.
        author: i64,
        /// Parent post for a reply (0 = top level).
        parent: u32,
        /// Text.
        text: Text,
    },
    /// Wall: `set repost<uid>[#<tag>]` = `orig_owner,orig_id,author[,flags]`.
    Repost {
        /// Wall receiving the copy.
        owner: i64,
        /// Handshake tag.
        tag: Vec<u8>,
        /// Who reposts.
        author: i64,
        /// Extra flags of the copy.
        flags: u32,
        /// Original wall.
        orig_owner: i64,
        /// Original post.
        orig_id: u32,
    },
    /// Wall: `set status<uid>[#<tag>]` = text: a new current status.
    Status {
        /// Wall.
        owner: i64,
        /// Handshake tag.
        tag: Vec<u8>,
        /// Text.
        text: Text,
    },
}

fn err<T>(reason: impl Into<String>) -> Result<T> {
    Err(Error::client(reason))
}

/// A cursor over the part of a key after its name.
struct Cursor<'a> {
    key: &'a [u8],
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn show(&self) -> String {
        String::from_utf8_lossy(self.key).into_owned()
    }

    fn int(&mut self, what: &str) -> Result<i64> {
        let neg = self.rest.first() == Some(&b'-');
        let digits_start = usize::from(neg);
        let digits = self.rest[digits_start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits == 0 || digits > 19 {
            return err(format!(
                "bad {what} in key {:?}: expected an integer",
                self.show()
            ));
        }
        let end = digits_start + digits;
        let text = std::str::from_utf8(&self.rest[..end]).unwrap_or("");
        let value: i64 = text
            .parse()
            .map_err(|_| Error::client(format!("{what} out of range in key {:?}", self.show())))?;
        self.rest = &self.rest[end..];
        Ok(value)
    }

    fn id(&mut self, what: &str) -> Result<i64> {
        let value = self.int(what)?;
        if value <= 0 || value > i64::from(i32::MAX) {
            return err(format!("{what} {value} must be in 1..=2147483647"));
        }
        Ok(value)
    }

    fn lid(&mut self, what: &str) -> Result<u32> {
        let value = self.int(what)?;
        match u32::try_from(value) {
            Ok(v) if v > 0 => Ok(v),
            _ => err(format!("{what} {value} must be a positive local id")),
        }
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        let value = self.int(what)?;
        u32::try_from(value).or_else(|_| err(format!("{what} {value} must fit in 0..=2^32-1")))
    }

    fn expect(&mut self, byte: u8) -> Result<()> {
        if self.rest.first() == Some(&byte) {
            self.rest = &self.rest[1..];
            Ok(())
        } else {
            err(format!(
                "expected '{}' in key {:?}",
                char::from(byte),
                self.show()
            ))
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.rest.first() == Some(&byte) {
            self.rest = &self.rest[1..];
            true
        } else {
            false
        }
    }

    fn end(&self) -> Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            err(format!(
                "unexpected {:?} at the end of key {:?}",
                String::from_utf8_lossy(self.rest),
                self.show()
            ))
        }
    }

    /// Optional `#from,to`.
    fn slice(&mut self) -> Result<Slice> {
        if !self.eat(b'#') {
            return Ok(Slice::default());
        }
        let from = self.int("slice start")?;
        self.expect(b',')?;
        let to = self.int("slice end")?;
        if (from == 0) != (to == 0) {
            return err("slice positions are 1-based: only #0,0 may use 0");
        }
        Ok(Slice { from, to })
    }

    /// Optional `#tag`.
    fn tag(&mut self) -> Result<Vec<u8>> {
        if !self.eat(b'#') {
            return Ok(Vec::new());
        }
        let tag = std::mem::take(&mut self.rest);
        if tag.len() > TAG_BYTES_MAX {
            return err(format!("tag longer than {TAG_BYTES_MAX} bytes"));
        }
        Ok(tag.to_vec())
    }

    fn mask(&mut self) -> Result<(u32, u32)> {
        let and = self.u32("and mask")?;
        self.expect(b':')?;
        let xor = self.u32("xor mask")?;
        Ok((and, xor))
    }
}

/// Splits a key into its name (leading `[a-z_]` bytes) and a cursor over the rest. A leading
/// `N@` routing prefix is stripped.
fn split(key: &[u8]) -> Result<(&[u8], Cursor<'_>)> {
    if key.len() > KEY_BYTES_MAX {
        return err(format!("key longer than {KEY_BYTES_MAX} bytes"));
    }
    let mut body = key;
    if let Some(at) = key.iter().position(|&b| b == b'@') {
        if at > 0
            && key[..at]
                .iter()
                .enumerate()
                .all(|(i, b)| b.is_ascii_digit() || (i == 0 && *b == b'-'))
        {
            body = &key[at + 1..];
        }
    }
    let name_len = body
        .iter()
        .take_while(|b| b.is_ascii_lowercase() || **b == b'_')
        .count();
    Ok((
        &body[..name_len],
        Cursor {
            key,
            rest: &body[name_len..],
        },
    ))
}

fn owner_lid(c: &mut Cursor<'_>) -> Result<(i64, u32)> {
    let owner = c.id("owner id")?;
    c.expect(b'_')?;
    Ok((owner, c.lid("message id")?))
}

fn owner_peer(c: &mut Cursor<'_>) -> Result<(i64, i64)> {
    let owner = c.id("owner id")?;
    c.expect(b'_')?;
    Ok((owner, c.id("peer id")?))
}

impl Query {
    /// Parses a `get` key.
    ///
    /// # Errors
    /// [`Error::Client`] naming what is wrong; unknown key names too.
    pub fn parse(key: &[u8]) -> Result<Self> {
        let (name, mut c) = split(key)?;
        let query = match name {
            b"message" | b"post" => {
                let (owner, lid) = owner_lid(&mut c)?;
                let (mut mode, mut max_len) = (0, None);
                if c.eat(b'#') {
                    mode = c.u32("mode")?;
                    if mode & !mode::ALL != 0 {
                        return err(format!("unknown mode bits {:#x}", mode & !mode::ALL));
                    }
                    if c.eat(b',') {
                        max_len = Some(usize::try_from(c.u32("max_len")?).unwrap_or(usize::MAX));
                    }
                }
                Self::Message {
                    owner,
                    lid,
                    mode,
                    max_len,
                }
            }
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
                    slice: c.slice()?,
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
                    lid: c.lid("message id")?,
                }
            }
            b"peermsglist" => {
                let (owner, peer) = owner_peer(&mut c)?;
                Self::PeerList {
                    owner,
                    peer,
                    slice: c.slice()?,
                }
            }
            b"peermsglistpos" => {
                let (owner, peer) = owner_peer(&mut c)?;
                c.expect(b':')?;
                Self::PeerListPos {
                    owner,
                    peer,
                    lid: c.lid("message id")?,
                }
            }
            b"topmsglist" | b"dialogs" => {
                let owner = c.id("owner id")?;
                Self::Dialogs {
                    owner,
                    slice: c.slice()?,
                }
            }
            b"unreadcount" => {
                let owner = c.id("owner id")?;
                let peer = if c.eat(b'_') {
                    Some(c.id("peer id")?)
                } else {
                    None
                };
                Self::Unread { owner, peer }
            }
            b"newmsgid" | b"newpostid" => {
                let owner = c.id("owner id")?;
                Self::NewId {
                    owner,
                    tag: c.tag()?,
                }
            }
            b"timestamp" => Self::Timestamp {
                owner: c.id("owner id")?,
            },
            b"history" => {
                let owner = c.id("owner id")?;
                c.expect(b'#')?;
                let ts = u64::try_from(c.int("timestamp")?)
                    .or_else(|_| err("timestamp must not be negative"))?;
                let mut limit = HISTORY_READ_MAX;
                if c.eat(b',') {
                    limit = usize::try_from(c.u32("limit")?).unwrap_or(usize::MAX);
                    if limit == 0 || limit > HISTORY_READ_MAX {
                        return err(format!("history limit must be in 1..={HISTORY_READ_MAX}"));
                    }
                }
                Self::History { owner, ts, limit }
            }
            b"search" | b"xsearch" => return parse_search(name == b"xsearch", c),
            b"sublists_types" => Self::SublistTypes,
            b"replies" => {
                let (owner, post) = owner_lid(&mut c)?;
                Self::Replies {
                    owner,
                    post,
                    slice: c.slice()?,
                }
            }
            b"status" => Self::Status {
                owner: c.id("owner id")?,
            },
            b"statuses" => {
                let owner = c.id("owner id")?;
                Self::Statuses {
                    owner,
                    slice: c.slice()?,
                }
            }
            _ => return err(format!("unknown key {:?}", c.show())),
        };
        c.end()?;
        Ok(query)
    }

    /// The owner ids this query names (for the shard check).
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

fn field(c: &mut Cursor<'_>) -> Result<u8> {
    let k = c.int("field")?;
    match u8::try_from(k) {
        Ok(k) if k < EXTRA_FIELDS => Ok(k),
        _ => err(format!("extra field {k} must be in 0..{EXTRA_FIELDS}")),
    }
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
            return err("peer filter must be 0 (any) or a positive id");
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
            return err(format!(
                "search limit {limit} must be in 1..={SEARCH_RESULTS_MAX}"
            ))
        }
    };
    c.expect(b',')?;
    let Some(close) = c.rest.iter().rposition(|&b| b == b')') else {
        return err("search query must end with ')'");
    };
    if close + 1 != c.rest.len() {
        return err("unexpected bytes after the search query");
    }
    let words = decode_words(&c.rest[..close])?;
    let count = words
        .split(|&b| b == b' ')
        .filter(|w| !w.is_empty())
        .count();
    if count == 0 {
        return err("empty search query");
    }
    if count > SEARCH_WORDS_MAX {
        return err(format!(
            "search query has more than {SEARCH_WORDS_MAX} words"
        ));
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

/// Decodes `words+joined+by+plus` with `%XX` escapes into space-separated UTF-8.
fn decode_words(raw: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = raw
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) else {
                    return err("bad %XX escape in search query");
                };
                out.push(byte);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    if std::str::from_utf8(&out).is_err() {
        return err("search query is not UTF-8");
    }
    Ok(out)
}

/// Splits a stored text value into kludges, subject and body, and checks the limits:
/// leading `\x01…\t` runs are kludges, then everything before the first TAB (if any) is the
/// subject.
///
/// # Errors
/// [`Error::Client`] for non-UTF-8 text or text over a limit.
pub fn parse_text(raw: &[u8], with_subject: bool) -> Result<Text> {
    if raw.len() > MESSAGE_TEXT_BYTES_MAX {
        return err(format!(
            "text of {} bytes exceeds {MESSAGE_TEXT_BYTES_MAX}",
            raw.len()
        ));
    }
    if std::str::from_utf8(raw).is_err() {
        return err("text is not UTF-8");
    }
    let mut kludges_end = 0;
    while raw.get(kludges_end) == Some(&0x01) {
        match raw[kludges_end..].iter().position(|&b| b == b'\t') {
            Some(tab) => kludges_end += tab + 1,
            None => return err("kludge without a terminating TAB"),
        }
    }
    if kludges_end > KLUDGES_BYTES_MAX {
        return err(format!("kludges exceed {KLUDGES_BYTES_MAX} bytes"));
    }
    let rest = &raw[kludges_end..];
    let (subject, body) = match rest.iter().position(|&b| b == b'\t') {
        Some(tab) if with_subject => (&rest[..tab], &rest[tab + 1..]),
        _ => (&rest[..0], rest),
    };
    if subject.len() > SUBJECT_BYTES_MAX {
        return err(format!("subject exceeds {SUBJECT_BYTES_MAX} bytes"));
    }
    Ok(Text {
        kludges: raw[..kludges_end].to_vec(),
        subject: subject.to_vec(),
        body: body.to_vec(),
    })
}

/// Splits `header\ntext` and parses the header as comma-separated integers.
fn header(value: &[u8], min: usize, max: usize) -> Result<(Vec<i64>, &[u8])> {
    let (head, text) = match value.iter().position(|&b| b == b'\n') {
        Some(nl) => (&value[..nl], &value[nl + 1..]),
        None => (value, &value[..0]),
    };
    let head = std::str::from_utf8(head).or_else(|_| err("value header is not ASCII"))?;
    let head = head.trim_end_matches('\r');
    let numbers: Vec<i64> = head
        .split(',')
        .map(|s| s.trim().parse::<i64>())
        .collect::<Result<_, _>>()
        .or_else(|_| err(format!("bad value header {head:?}: expected integers")))?;
    if numbers.len() < min || numbers.len() > max {
        return err(format!(
            "value header {head:?} must have {min}..={max} numbers"
        ));
    }
    Ok((numbers, text))
}

fn user_flags(value: i64) -> Result<u32> {
    match u32::try_from(value) {
        Ok(f) if f & !crate::flags::USER_MASK == 0 => Ok(f),
        _ => err(format!("flags {value} must be in 0..=65535")),
    }
}

fn positive_id(value: i64, what: &str) -> Result<i64> {
    if value <= 0 || value > i64::from(i32::MAX) {
        return err(format!("{what} {value} must be in 1..=2147483647"));
    }
    Ok(value)
}

fn optional_lid(value: i64, what: &str) -> Result<u32> {
    u32::try_from(value).or_else(|_| err(format!("{what} {value} must be a local id or 0")))
}

impl Update {
    /// Parses a `set` key and its value.
    ///
    /// # Errors
    /// [`Error::Client`] naming what is wrong.
    pub fn parse_set(key: &[u8], value: &[u8]) -> Result<Self> {
        let (name, mut c) = split(key)?;
        let update = match name {
            b"newmsg" => {
                let owner = c.id("owner id")?;
                let tag = c.tag()?;
                let (h, text) = header(value, 2, 3)?;
                Self::NewMessage {
                    owner,
                    tag,
                    flags: user_flags(h[0])?,
                    peer: positive_id(h[1], "peer id")?,
                    peer_lid: optional_lid(h.get(2).copied().unwrap_or(0), "peer message id")?,
                    text: parse_text(text, true)?,
                }
            }
            b"sendmsg" => {
                let (from, to) = owner_peer(&mut c)?;
                if from == to {
                    return err("sendmsg to oneself: use newmsg");
                }
                let tag = c.tag()?;
                let (h, text) = header(value, 1, 1)?;
                Self::Send {
                    from,
                    to,
                    tag,
                    flags: user_flags(h[0])?,
                    text: parse_text(text, true)?,
                }
            }
            b"flags" => {
                let (owner, lid) = owner_lid(&mut c)?;
                Self::Flags {
                    owner,
                    lid,
                    op: FlagOp::Set,
                    value: user_flags(number(value)?)?,
                }
            }
            b"readupto" | b"readall" => {
                let (owner, peer) = owner_peer(&mut c)?;
                let lid = if name == b"readall" {
                    0
                } else {
                    match u32::try_from(number(value)?) {
                        Ok(l) if l > 0 => l,
                        _ => return err("readupto value must be a positive local id"),
                    }
                };
                Self::ReadUpto { owner, peer, lid }
            }
            b"peer_msg_id" => {
                let (owner, lid) = owner_lid(&mut c)?;
                let peer_lid = match u32::try_from(number(value)?) {
                    Ok(l) if l > 0 => l,
                    _ => return err("peer_msg_id value must be a positive local id"),
                };
                Self::PeerLink {
                    owner,
                    lid,
                    peer_lid,
                }
            }
            b"message_text" | b"post_text" => {
                let (owner, lid) = owner_lid(&mut c)?;
                Self::Edit {
                    owner,
                    lid,
                    text: parse_text(value, true)?,
                }
            }
            b"extra" => {
                let (owner, lid) = owner_lid(&mut c)?;
                c.expect(b':')?;
                let field = field(&mut c)?;
                Self::Extra {
                    owner,
                    lid,
                    field,
                    op: ExtraOp::Set,
                    value: number(value)?,
                }
            }
            b"newpost" => {
                let owner = c.id("owner id")?;
                let tag = c.tag()?;
                let (h, text) = header(value, 2, 3)?;
                Self::NewPost {
                    owner,
                    tag,
                    flags: user_flags(h[0])?,
                    author: positive_id(h[1], "author id")?,
                    parent: optional_lid(h.get(2).copied().unwrap_or(0), "parent post id")?,
                    text: parse_text(text, true)?,
                }
            }
            b"repost" => {
                let owner = c.id("owner id")?;
                let tag = c.tag()?;
                let (h, _) = header(value, 3, 4)?;
                let orig_id = match u32::try_from(h[1]) {
                    Ok(id) if id > 0 => id,
                    _ => return err("original post id must be a positive local id"),
                };
                Self::Repost {
                    owner,
                    tag,
                    orig_owner: positive_id(h[0], "original owner id")?,
                    orig_id,
                    author: positive_id(h[2], "author id")?,
                    flags: user_flags(h.get(3).copied().unwrap_or(0))?,
                }
            }
            b"status" => {
                let owner = c.id("owner id")?;
                let tag = c.tag()?;
                Self::Status {
                    owner,
                    tag,
                    text: parse_text(value, false)?,
                }
            }
            _ => return err(format!("unknown key for set {:?}", c.show())),
        };
        c.end()?;
        Ok(update)
    }

    /// Parses a `delete` key.
    ///
    /// # Errors
    /// [`Error::Client`] naming what is wrong.
    pub fn parse_delete(key: &[u8]) -> Result<Self> {
        let (name, mut c) = split(key)?;
        let update = match name {
            b"message" | b"post" => {
                let (owner, lid) = owner_lid(&mut c)?;
                Self::Delete { owner, lid }
            }
            b"dialog" => {
                let (owner, peer) = owner_peer(&mut c)?;
                Self::DeleteDialog { owner, peer }
            }
            b"first_messages" => {
                let (owner, min_lid) = owner_lid(&mut c)?;
                Self::Trim { owner, min_lid }
            }
            _ => return err(format!("unknown key for delete {:?}", c.show())),
        };
        c.end()?;
        Ok(update)
    }

    /// Parses an `incr`/`decr` key (`delta` negative for decr).
    ///
    /// # Errors
    /// [`Error::Client`] naming what is wrong.
    pub fn parse_incr(key: &[u8], delta: i64) -> Result<Self> {
        let (name, mut c) = split(key)?;
        let update = match name {
            b"flags" => {
                let (owner, lid) = owner_lid(&mut c)?;
                let op = if delta >= 0 {
                    FlagOp::Or
                } else {
                    FlagOp::AndNot
                };
                let mask = user_flags(i64::try_from(delta.unsigned_abs()).unwrap_or(i64::MAX))?;
                Self::Flags {
                    owner,
                    lid,
                    op,
                    value: mask,
                }
            }
            b"extra" => {
                let (owner, lid) = owner_lid(&mut c)?;
                c.expect(b':')?;
                let field = field(&mut c)?;
                Self::Extra {
                    owner,
                    lid,
                    field,
                    op: ExtraOp::Add,
                    value: delta,
                }
            }
            _ => return err(format!("unknown key for incr/decr {:?}", c.show())),
        };
        c.end()?;
        Ok(update)
    }

    /// The mailboxes this update names (for the shard check).
    #[must_use]
    pub fn owners(&self) -> (i64, Option<i64>) {
        match *self {
            Self::Send { from, to, .. } => (from, Some(to)),
            Self::Repost {
                owner, orig_owner, ..
            } => (owner, Some(orig_owner)),
            Self::NewMessage { owner, .. }
            | Self::Flags { owner, .. }
            | Self::ReadUpto { owner, .. }
            | Self::Edit { owner, .. }
            | Self::Delete { owner, .. }
            | Self::DeleteDialog { owner, .. }
            | Self::Trim { owner, .. }
            | Self::PeerLink { owner, .. }
            | Self::Extra { owner, .. }
            | Self::NewPost { owner, .. }
            | Self::Status { owner, .. } => (owner, None),
        }
    }
}

fn number(value: &[u8]) -> Result<i64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| Error::client("value must be a decimal integer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices() {
        let s = |from, to| Slice { from, to };
        assert_eq!(s(1, 3).resolve(5, 100), vec![0, 1, 2]);
        assert_eq!(s(-1, -2).resolve(5, 100), vec![4, 3]);
        assert_eq!(s(-1, 1).resolve(3, 100), vec![2, 1, 0]);
        assert_eq!(s(1, -1).resolve(3, 2), vec![0, 1]);
        assert_eq!(s(0, 0).resolve(3, 100), Vec::<usize>::new());
        assert_eq!(s(4, 9).resolve(3, 100), Vec::<usize>::new());
        assert_eq!(s(-1, -10).resolve(0, 100), Vec::<usize>::new());
    }

    #[test]
    fn parses_keys() {
        assert_eq!(
            Query::parse(b"sublist1000_131:1#-1,-20").unwrap(),
            Query::Sublist {
                owner: 1000,
                and: 131,
                xor: 1,
                slice: Slice { from: -1, to: -20 }
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
        assert!(Query::parse(b"nothing5").is_err());
        let set = Update::parse_set(b"newmsg5#ab", b"1,7\nsubj\tbody").unwrap();
        assert!(matches!(
            set,
            Update::NewMessage {
                owner: 5,
                peer: 7,
                flags: 1,
                ..
            }
        ));
        let text = parse_text(b"\x01from x\tsubj\tbody\twith tab", true).unwrap();
        assert_eq!(text.kludges, b"\x01from x\t");
        assert_eq!(text.subject, b"subj");
        assert_eq!(text.body, b"body\twith tab");
    }
}
