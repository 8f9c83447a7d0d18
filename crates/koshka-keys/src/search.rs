//! The search grammar (VK's search-engine idioms): [`Query`] for `get` keys, [`Update`] for
//! `set`/`delete`/`incr`/`decr` keys with their values, and [`Found`], the reply of a search,
//! with the merge a router applies to the replies of several shards ([`merge`],
//! [`split_limit`]). The client-facing description is `docs/protocol/search.md`.
//!
//! Items are addressed `item<owner>_<id>` (a negative owner is a group, as on VK) and live on
//! the shard of their owner. A search names no owner (unless it filters by one), so a router
//! sends it to **every** shard ([`Merge::Search`]) and merges their answers.
//!
//! # Canonical spellings
//! A zero offset is left out (`search#R10(…)`, not `search#R10,0(…)`); restrictions are written
//! in the order `[t…]`, `[o…]`, `[d…]`; query words are written as [`idiom::encode_words`]
//! writes them; an `N@` prefix is dropped.
//!
//! # Merging shard answers exactly
//! Every shard answers its own top `offset + limit` hits of the query (deduplicated by content
//! hash within the shard) and the exact count of its matching items. Hits are totally ordered
//! by [`Order::compare`]: the order value in the requested direction, then owner, then id,
//! ascending. A router:
//! 1. asks each of `n` shards for `shard_limit(offset + limit, n)` hits at offset 0: the
//!    whole window when it is at most [`SEARCH_WHOLE_WINDOW_MAX`] (exact without a second
//!    round), else `split_limit(offset + limit, n)` (VK's split estimate);
//! 2. merges the answers with [`merge`]: a heap by the order, the first hit of each content
//!    hash kept, totals summed, `offset` skipped, `limit` kept;
//! 3. re-asks, with the whole window, every shard that [`merge`] lists as `unsure`: it
//!    returned as many hits as it was asked for, and its last hit does not rank after the
//!    last hit of the merged window, so hits it did not send could belong in the window.
//!
//! This is exact because the best hit of each content hash over all shards is the best hit of
//! that hash in its own shard: a shard's deduplicated list contains it, and every hit ranked
//! above it there has a different hash that also ranks above it globally.

use crate::idiom::{self, push_int, push_uint, split, Cursor, Dialect};
use crate::route::{Access, Merge, Owners, Route};
use crate::{Encode, KeyError, Result};

/// Most bytes of a search key this grammar parses; longer keys answer `CLIENT_ERROR`.
pub const KEY_BYTES_MAX: usize = 2048;

/// Most hits one search returns (`limit`); a larger limit answers `CLIENT_ERROR`.
pub const SEARCH_LIMIT_MAX: u32 = 1000;

/// Largest `offset + limit` of one search: every shard must rank that many hits, so deep
/// pages are refused with `CLIENT_ERROR` instead of sorting whole result sets.
pub const SEARCH_WINDOW_MAX: u32 = 10_000;

const _: () = assert!(SEARCH_LIMIT_MAX <= SEARCH_WINDOW_MAX);

/// Largest window a router asks of every shard whole instead of its [`split_limit`]: a
/// shard's cost is finding and counting its matches, hardly the few more hits it sends, and
/// a whole-window answer is never unsure, so such a search never takes a second round. (The
/// split estimate assumes distinct hits; when the same text sits on several shards, the
/// merge drops the copies and a small window often needs more than the estimate: two-word
/// top-20 searches over 8 shards of the 1 M-item benchmark re-asked 0.16 shards per search.)
pub const SEARCH_WHOLE_WINDOW_MAX: u32 = 32;

/// Most words in a query; more answer `CLIENT_ERROR`.
pub const SEARCH_WORDS_MAX: usize = 16;

/// Most bytes of one item's text. Larger texts answer `CLIENT_ERROR` before anything is
/// logged.
pub const ITEM_TEXT_BYTES_MAX: usize = 64 * 1024;

/// Highest item type. Types are small numbers the client chooses (`1` post, `2` person,
/// `3` group by convention); 0 and larger types answer `CLIENT_ERROR`.
pub const ITEM_TYPE_MAX: u8 = 15;

/// Largest owner magnitude and largest item id (VK ids are positive 32-bit signed integers).
pub const ID_MAX: i64 = idiom::ID_MAX;

/// What a search is ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum By {
    /// The item's rating (`r` ascending, `R` descending).
    Rating,
    /// The item's date (`d`, `D`).
    Date,
    /// Relevance to the query (`p`, `P`): see `docs/protocol/search.md`; computed from the
    /// item alone, so shards agree.
    Relevance,
}

/// The order of a search: a field and a direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Order {
    /// The field.
    pub by: By,
    /// Larger values first.
    pub descending: bool,
}

impl Order {
    /// The order letter (`r R d D p P`).
    #[must_use]
    pub fn letter(self) -> u8 {
        let letter = match self.by {
            By::Rating => b'r',
            By::Date => b'd',
            By::Relevance => b'p',
        };
        if self.descending {
            letter.to_ascii_uppercase()
        } else {
            letter
        }
    }

    fn from_letter(letter: u8) -> Option<Self> {
        let by = match letter.to_ascii_lowercase() {
            b'r' => By::Rating,
            b'd' => By::Date,
            b'p' => By::Relevance,
            _ => return None,
        };
        Some(Self {
            by,
            descending: letter.is_ascii_uppercase(),
        })
    }

    /// The total order of hits: `Less` when `a` ranks before `b`. The order value in the
    /// requested direction, then owner and id ascending (ties never depend on the shard).
    #[must_use]
    pub fn compare(self, a: &Hit, b: &Hit) -> std::cmp::Ordering {
        let value = if self.descending {
            b.value.cmp(&a.value)
        } else {
            a.value.cmp(&b.value)
        };
        value.then(a.owner.cmp(&b.owner)).then(a.id.cmp(&b.id))
    }
}

/// Which items a search considers besides its words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Filter {
    /// Only items of this type (`[t<type>]`).
    pub kind: Option<u8>,
    /// Only items of this owner (`[o<owner>]`).
    pub owner: Option<i64>,
    /// Only items dated `from..=to` (`[d<from>,<to>]`).
    pub dates: Option<(u32, u32)>,
}

/// A `get` key of the search grammar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// `item<owner>_<id>`: one item's fields, `type,date,rating,hash`.
    Item {
        /// Owner (negative: a group).
        owner: i64,
        /// Item id within the owner.
        id: u32,
    },
    /// `search#<order><limit>[,<offset>][t<type>][o<owner>][d<from>,<to>](<words>)`.
    Search(Search),
}

/// A full-text search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Search {
    /// Order of the hits.
    pub order: Order,
    /// Hits to return (0: count only), at most [`SEARCH_LIMIT_MAX`].
    pub limit: u32,
    /// Hits to skip first; `offset + limit` is at most [`SEARCH_WINDOW_MAX`].
    pub offset: u32,
    /// Restrictions.
    pub filter: Filter,
    /// The query words, space-separated UTF-8 (decoded from `word+word` with `%XX` escapes);
    /// every word must match (after stemming). No words: every item the filter admits.
    pub words: Vec<u8>,
}

impl Search {
    /// The window every shard must rank: `offset + limit`.
    #[must_use]
    pub fn window(&self) -> u32 {
        self.offset + self.limit
    }

    /// The key a router sends each of `shards` shards: offset 0 and the [`shard_limit`] of
    /// the window.
    #[must_use]
    pub fn per_shard(&self, shards: u32) -> Self {
        Self {
            offset: 0,
            limit: shard_limit(self.window(), shards),
            ..self.clone()
        }
    }
}

fn check_len(key: &[u8]) -> Result<()> {
    if key.len() > KEY_BYTES_MAX {
        return Err(KeyError::TooLong {
            len: key.len(),
            max: KEY_BYTES_MAX,
        });
    }
    Ok(())
}

/// `<owner>_<id>` after an item name.
fn item_address(cursor: &mut Cursor<'_>) -> Result<(i64, u32)> {
    let owner = cursor.int("owner")?;
    if owner == 0 || owner.abs() > ID_MAX {
        return Err(KeyError::malformed(format!(
            "owner {owner} must be in -{ID_MAX}..=-1 or 1..={ID_MAX}"
        )));
    }
    cursor.expect(b'_')?;
    let id = cursor.int("item id")?;
    if id <= 0 || id > ID_MAX {
        return Err(KeyError::malformed(format!(
            "item id {id} must be in 1..={ID_MAX}"
        )));
    }
    cursor.end()?;
    // NOTE: 1..=ID_MAX fits u32.
    Ok((owner, u32::try_from(id).unwrap_or(u32::MAX)))
}

fn encode_address(out: &mut Vec<u8>, name: &[u8], owner: i64, id: u32) {
    out.extend_from_slice(name);
    push_int(out, owner);
    out.push(b'_');
    push_uint(out, u64::from(id));
}

impl Query {
    /// Parses a `get` key.
    ///
    /// # Errors
    /// [`KeyError::Unknown`] for a name this grammar does not have, [`KeyError::Malformed`]
    /// for a malformed key or one that breaks a limit, [`KeyError::TooLong`].
    pub fn parse(key: &[u8]) -> Result<Self> {
        check_len(key)?;
        let (name, mut cursor) = split(key, Dialect::Messages);
        match name {
            b"item" => {
                let (owner, id) = item_address(&mut cursor)?;
                Ok(Self::Item { owner, id })
            }
            b"search" => parse_search(&mut cursor).map(Self::Search),
            _ => Err(KeyError::unknown(format!(
                "unknown search key {:?}",
                String::from_utf8_lossy(key)
            ))),
        }
    }
}

fn parse_search(cursor: &mut Cursor<'_>) -> Result<Search> {
    cursor.expect(b'#')?;
    let order = cursor
        .peek()
        .and_then(Order::from_letter)
        .ok_or_else(|| KeyError::malformed("search order must be one of r R d D p P"))?;
    cursor.seek(cursor.at() + 1);
    let limit = cursor.u32("limit")?;
    let offset = if cursor.eat(b',') {
        cursor.u32("offset")?
    } else {
        0
    };
    if limit > SEARCH_LIMIT_MAX {
        return Err(KeyError::malformed(format!(
            "search limit {limit} exceeds {SEARCH_LIMIT_MAX}"
        )));
    }
    if u64::from(offset) + u64::from(limit) > u64::from(SEARCH_WINDOW_MAX) {
        return Err(KeyError::malformed(format!(
            "search offset + limit exceeds {SEARCH_WINDOW_MAX}"
        )));
    }
    let filter = parse_filter(cursor)?;
    cursor.expect(b'(')?;
    let rest = cursor.take_rest();
    let Some(raw) = rest.strip_suffix(b")") else {
        return Err(KeyError::malformed("search words must end with ')'"));
    };
    let words = idiom::decode_words(raw)?;
    let count = words
        .split(|&b| b == b' ')
        .filter(|w| !w.is_empty())
        .count();
    if count > SEARCH_WORDS_MAX {
        return Err(KeyError::malformed(format!(
            "search has {count} words, at most {SEARCH_WORDS_MAX} are allowed"
        )));
    }
    Ok(Search {
        order,
        limit,
        offset,
        filter,
        words,
    })
}

fn parse_filter(cursor: &mut Cursor<'_>) -> Result<Filter> {
    let mut filter = Filter::default();
    let mut last = 0u8;
    while cursor.eat(b'[') {
        let letter = cursor.peek().unwrap_or(0);
        cursor.seek(cursor.at() + 1);
        let rank = match letter {
            b't' => 1,
            b'o' => 2,
            b'd' => 3,
            _ => {
                return Err(KeyError::malformed(
                    "search restriction must be [t…], [o…] or [d…]",
                ))
            }
        };
        if rank <= last {
            return Err(KeyError::malformed(
                "search restrictions must appear once each, in the order [t…][o…][d…]",
            ));
        }
        last = rank;
        match letter {
            b't' => {
                let kind = cursor.u32("type")?;
                if kind == 0 || kind > u32::from(ITEM_TYPE_MAX) {
                    return Err(KeyError::malformed(format!(
                        "item type {kind} must be in 1..={ITEM_TYPE_MAX}"
                    )));
                }
                // NOTE: checked above.
                filter.kind = Some(u8::try_from(kind).unwrap_or(ITEM_TYPE_MAX));
            }
            b'o' => {
                let owner = cursor.int("owner")?;
                if owner == 0 || owner.abs() > ID_MAX {
                    return Err(KeyError::malformed(format!(
                        "owner {owner} must be in -{ID_MAX}..=-1 or 1..={ID_MAX}"
                    )));
                }
                filter.owner = Some(owner);
            }
            _ => {
                let from = cursor.u32("date")?;
                cursor.expect(b',')?;
                let to = cursor.u32("date")?;
                if from > to {
                    return Err(KeyError::malformed(
                        "date range [d<from>,<to>] needs from <= to",
                    ));
                }
                filter.dates = Some((from, to));
            }
        }
        cursor.expect(b']')?;
    }
    Ok(filter)
}

impl Encode for Query {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Item { owner, id } => encode_address(out, b"item", *owner, *id),
            Self::Search(search) => search.encode(out),
        }
    }
}

impl Encode for Search {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"search#");
        out.push(self.order.letter());
        push_uint(out, u64::from(self.limit));
        if self.offset != 0 {
            out.push(b',');
            push_uint(out, u64::from(self.offset));
        }
        if let Some(kind) = self.filter.kind {
            out.extend_from_slice(b"[t");
            push_uint(out, u64::from(kind));
            out.push(b']');
        }
        if let Some(owner) = self.filter.owner {
            out.extend_from_slice(b"[o");
            push_int(out, owner);
            out.push(b']');
        }
        if let Some((from, to)) = self.filter.dates {
            out.extend_from_slice(b"[d");
            push_uint(out, u64::from(from));
            out.push(b',');
            push_uint(out, u64::from(to));
            out.push(b']');
        }
        out.push(b'(');
        idiom::encode_words(out, &self.words);
        out.push(b')');
    }
}

impl Route for Query {
    fn owners(&self) -> Owners {
        match self {
            Self::Item { owner, .. } => Owners::One(*owner),
            Self::Search(search) => search.filter.owner.map_or(Owners::None, Owners::One),
        }
    }

    fn access(&self) -> Access {
        Access::Read
    }

    fn merge(&self) -> Merge {
        match self {
            Self::Item { .. } => Merge::Single,
            Self::Search(search) if search.filter.owner.is_some() => Merge::Single,
            Self::Search(_) => Merge::Search,
        }
    }
}

/// An update of the search grammar, with its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// `set item<owner>_<id>` with `<type>,<date>,<rating>\t<text>`: index or re-index an item.
    SetItem {
        /// Owner (negative: a group).
        owner: i64,
        /// Item id.
        id: u32,
        /// Type, `1..=ITEM_TYPE_MAX`.
        kind: u8,
        /// Date (unix seconds, the client's).
        date: u32,
        /// Rating.
        rating: u32,
        /// Text, at most [`ITEM_TEXT_BYTES_MAX`] bytes.
        text: Vec<u8>,
    },
    /// `delete item<owner>_<id>`.
    DeleteItem {
        /// Owner.
        owner: i64,
        /// Item id.
        id: u32,
    },
    /// `set rate<owner>_<id>` with `<rating>`.
    SetRate {
        /// Owner.
        owner: i64,
        /// Item id.
        id: u32,
        /// New rating.
        rating: u32,
    },
    /// `incr rate<owner>_<id> <d>` (`delta` = d) or `decr …` (`delta` = -d); the rating stays
    /// within `0..=u32::MAX`.
    AddRate {
        /// Owner.
        owner: i64,
        /// Item id.
        id: u32,
        /// Change.
        delta: i64,
    },
}

fn parse_address(key: &[u8], want: &[u8]) -> Result<(i64, u32)> {
    check_len(key)?;
    let (name, mut cursor) = split(key, Dialect::Messages);
    if name != want {
        return Err(KeyError::unknown(format!(
            "unknown search key {:?} for this command",
            String::from_utf8_lossy(key)
        )));
    }
    item_address(&mut cursor)
}

fn value_u32(text: &[u8], what: &str) -> Result<u32> {
    std::str::from_utf8(text)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| KeyError::malformed(format!("{what} must be a number in 0..=4294967295")))
}

impl Update {
    /// Parses a `set` key with its value.
    ///
    /// # Errors
    /// [`KeyError::Unknown`] for another name, [`KeyError::Malformed`] for a malformed key or
    /// value or one that breaks a limit.
    pub fn parse_set(key: &[u8], value: &[u8]) -> Result<Self> {
        check_len(key)?;
        let (name, _) = split(key, Dialect::Messages);
        if name == b"rate" {
            let (owner, id) = parse_address(key, b"rate")?;
            let rating = value_u32(value.trim_ascii(), "rating")?;
            return Ok(Self::SetRate { owner, id, rating });
        }
        let (owner, id) = parse_address(key, b"item")?;
        let tab = value
            .iter()
            .position(|&b| b == b'\t')
            .ok_or_else(|| KeyError::malformed("item value is <type>,<date>,<rating>\\t<text>"))?;
        let (head, text) = (&value[..tab], &value[tab + 1..]);
        let mut fields = head.split(|&b| b == b',');
        let mut next = |what: &str| value_u32(fields.next().unwrap_or_default(), what);
        let kind = next("item type")?;
        let date = next("date")?;
        let rating = next("rating")?;
        if fields.next().is_some() {
            return Err(KeyError::malformed(
                "item value is <type>,<date>,<rating>\\t<text>",
            ));
        }
        if kind == 0 || kind > u32::from(ITEM_TYPE_MAX) {
            return Err(KeyError::malformed(format!(
                "item type {kind} must be in 1..={ITEM_TYPE_MAX}"
            )));
        }
        if text.len() > ITEM_TEXT_BYTES_MAX {
            return Err(KeyError::malformed(format!(
                "item text of {} bytes exceeds {ITEM_TEXT_BYTES_MAX}",
                text.len()
            )));
        }
        Ok(Self::SetItem {
            owner,
            id,
            // NOTE: checked above.
            kind: u8::try_from(kind).unwrap_or(ITEM_TYPE_MAX),
            date,
            rating,
            text: text.to_vec(),
        })
    }

    /// Parses a `delete` key.
    ///
    /// # Errors
    /// As [`Update::parse_set`].
    pub fn parse_delete(key: &[u8]) -> Result<Self> {
        let (owner, id) = parse_address(key, b"item")?;
        Ok(Self::DeleteItem { owner, id })
    }

    /// Parses an `incr` (`delta` ≥ 0) or `decr` (`delta` < 0) key.
    ///
    /// # Errors
    /// As [`Update::parse_set`].
    pub fn parse_incr(key: &[u8], delta: i64) -> Result<Self> {
        let (owner, id) = parse_address(key, b"rate")?;
        Ok(Self::AddRate { owner, id, delta })
    }

    /// The item the update addresses: `(owner, id)`.
    #[must_use]
    pub fn item(&self) -> (i64, u32) {
        match *self {
            Self::SetItem { owner, id, .. }
            | Self::DeleteItem { owner, id }
            | Self::SetRate { owner, id, .. }
            | Self::AddRate { owner, id, .. } => (owner, id),
        }
    }

    /// The value a `set` carries (empty for the others).
    pub fn encode_value(&self, out: &mut Vec<u8>) {
        match self {
            Self::SetItem {
                kind,
                date,
                rating,
                text,
                ..
            } => {
                push_uint(out, u64::from(*kind));
                out.push(b',');
                push_uint(out, u64::from(*date));
                out.push(b',');
                push_uint(out, u64::from(*rating));
                out.push(b'\t');
                out.extend_from_slice(text);
            }
            Self::SetRate { rating, .. } => push_uint(out, u64::from(*rating)),
            Self::DeleteItem { .. } | Self::AddRate { .. } => {}
        }
    }
}

impl Encode for Update {
    fn encode(&self, out: &mut Vec<u8>) {
        let (owner, id) = self.item();
        let name: &[u8] = match self {
            Self::SetItem { .. } | Self::DeleteItem { .. } => b"item",
            Self::SetRate { .. } | Self::AddRate { .. } => b"rate",
        };
        encode_address(out, name, owner, id);
    }
}

impl Route for Update {
    fn owners(&self) -> Owners {
        Owners::One(self.item().0)
    }

    fn access(&self) -> Access {
        Access::Write
    }

    fn merge(&self) -> Merge {
        Merge::Single
    }
}

/// One hit of a search reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hit {
    /// Owner.
    pub owner: i64,
    /// Item id.
    pub id: u32,
    /// The value the search is ordered by (rating, date or relevance).
    pub value: u32,
    /// The item's content hash (FNV-1a 64 of its text); hits with equal hashes are
    /// duplicates.
    pub hash: u64,
}

/// The reply of a search: `<total>,<n>` then `n` hits `,<owner>,<id>,<value>,<hash>`, best
/// first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Found {
    /// Matching items (duplicates included; before offset and limit).
    pub total: u64,
    /// The hits of the window, in order.
    pub hits: Vec<Hit>,
}

impl Found {
    /// Parses a reply.
    ///
    /// # Errors
    /// [`KeyError::Malformed`] when the bytes are not a search reply.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let bad = || KeyError::malformed("malformed search reply");
        let text = std::str::from_utf8(bytes).map_err(|_| bad())?;
        let mut fields = text.split(',');
        let mut next = || fields.next().ok_or_else(bad);
        let total: u64 = next()?.parse().map_err(|_| bad())?;
        let n: usize = next()?.parse().map_err(|_| bad())?;
        if n > SEARCH_WINDOW_MAX as usize {
            return Err(bad());
        }
        let mut hits = Vec::with_capacity(n);
        for _ in 0..n {
            hits.push(Hit {
                owner: next()?.parse().map_err(|_| bad())?,
                id: next()?.parse().map_err(|_| bad())?,
                value: next()?.parse().map_err(|_| bad())?,
                hash: next()?.parse().map_err(|_| bad())?,
            });
        }
        if fields.next().is_some() {
            return Err(bad());
        }
        Ok(Self { total, hits })
    }

    /// Appends the reply's bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        push_uint(out, self.total);
        out.push(b',');
        push_uint(out, self.hits.len() as u64);
        for hit in &self.hits {
            out.push(b',');
            push_int(out, hit.owner);
            out.push(b',');
            push_uint(out, u64::from(hit.id));
            out.push(b',');
            push_uint(out, u64::from(hit.value));
            out.push(b',');
            push_uint(out, hit.hash);
        }
    }
}

/// The merge of several shards' answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// The merged reply.
    pub found: Found,
    /// Indexes of the parts that may hold hits of the window they did not send (see the module
    /// docs): re-ask them for the whole window and merge again.
    pub unsure: Vec<usize>,
}

/// Merges shard answers to `search` (each asked for `asked[i]` hits at offset 0): a heap by
/// the order, the first hit of each content hash kept, totals summed, then `search.offset`
/// hits skipped and `search.limit` kept.
///
/// # Panics
/// If `parts` and `asked` differ in length.
#[must_use]
pub fn merge(search: &Search, parts: &[Found], asked: &[u32]) -> Merged {
    use std::cmp::Reverse;
    use std::collections::{BinaryHeap, HashSet};
    assert_eq!(parts.len(), asked.len(), "one asked limit per part");
    let order = search.order;
    // The heap holds one cursor per part, ranked by the order of its next hit.
    #[derive(PartialEq, Eq)]
    struct Next {
        hit: Hit,
        part: usize,
        at: usize,
        order: Order,
    }
    impl Ord for Next {
        fn cmp(&self, other: &Self) -> std::cmp::Ordering {
            self.order.compare(&self.hit, &other.hit)
        }
    }
    impl PartialOrd for Next {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    let mut heap = BinaryHeap::new();
    for (part, found) in parts.iter().enumerate() {
        if let Some(&hit) = found.hits.first() {
            heap.push(Reverse(Next {
                hit,
                part,
                at: 0,
                order,
            }));
        }
    }
    let window = search.window() as usize;
    let mut seen = HashSet::new();
    let mut ranked = Vec::with_capacity(window);
    while ranked.len() < window {
        let Some(Reverse(next)) = heap.pop() else {
            break;
        };
        if seen.insert(next.hit.hash) {
            ranked.push(next.hit);
        }
        if let Some(&hit) = parts[next.part].hits.get(next.at + 1) {
            heap.push(Reverse(Next {
                hit,
                at: next.at + 1,
                ..next
            }));
        }
    }
    let last = (window > 0 && ranked.len() == window).then(|| ranked[window - 1]);
    let unsure = parts
        .iter()
        .zip(asked)
        .enumerate()
        .filter(|(_, (found, &asked))| {
            let full = found.hits.len() >= asked as usize && asked < search.window();
            let tail = found.hits.last();
            full && match (tail, last) {
                (Some(tail), Some(last)) => {
                    order.compare(tail, &last) != std::cmp::Ordering::Greater
                }
                _ => true,
            }
        })
        .map(|(i, _)| i)
        .collect();
    let total = parts.iter().map(|p| p.total).sum();
    let hits = ranked.into_iter().skip(search.offset as usize).collect();
    Merged {
        found: Found { total, hits },
        unsure,
    }
}

/// How many hits a router asks each of `shards` shards for to rank a window of `window`:
/// the whole window up to [`SEARCH_WHOLE_WINDOW_MAX`], else the [`split_limit`].
#[must_use]
pub fn shard_limit(window: u32, shards: u32) -> u32 {
    if window <= SEARCH_WHOLE_WINDOW_MAX {
        window
    } else {
        split_limit(window, shards)
    }
}

/// VK's split estimate: the smallest `k` such that, when `window` hits are spread uniformly
/// at random over `shards` shards, no shard holds more than `k` of them with probability at
/// least `1 - 1e-9`; never more than `window`. With that many hits per shard the merged
/// window is exact unless [`merge`] reports a part as unsure.
#[must_use]
pub fn split_limit(window: u32, shards: u32) -> u32 {
    if shards <= 1 || window == 0 {
        return window;
    }
    let n = f64::from(window);
    let p = 1.0 / f64::from(shards);
    // P(X > k) for X ~ Binomial(window, p), summed downward from the top in log space.
    let ln_p = p.ln();
    let ln_q = (1.0 - p).ln();
    let mut ln_fact = vec![0.0f64; window as usize + 1];
    for i in 1..=window as usize {
        ln_fact[i] = ln_fact[i - 1] + (i as f64).ln();
    }
    let w = window as usize;
    let ln_pmf = |i: usize| {
        ln_fact[w] - ln_fact[i] - ln_fact[w - i] + i as f64 * ln_p + (n - i as f64) * ln_q
    };
    let mut tail = 0.0f64;
    let mut k = w;
    // Walk k down while the union bound over shards stays below 1e-9.
    while k > 0 {
        let next_tail = tail + ln_pmf(k).exp();
        if next_tail * f64::from(shards) >= 1e-9 {
            break;
        }
        tail = next_tail;
        k -= 1;
    }
    // NOTE: k <= window, a u32.
    u32::try_from(k).unwrap_or(window).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(key: &[u8]) -> Query {
        let query = Query::parse(key).unwrap();
        assert_eq!(Query::parse(&query.to_bytes()).unwrap(), query);
        query
    }

    #[test]
    fn search_keys_parse_and_encode() {
        let q = round_trip(b"search#R10,20[t1][o-5][d100,200](cat+%D0%BA%D0%BE%D1%82)");
        let Query::Search(s) = &q else { panic!() };
        assert_eq!(
            s.order,
            Order {
                by: By::Rating,
                descending: true
            }
        );
        assert_eq!((s.limit, s.offset), (10, 20));
        assert_eq!(s.filter.kind, Some(1));
        assert_eq!(s.filter.owner, Some(-5));
        assert_eq!(s.filter.dates, Some((100, 200)));
        assert_eq!(s.words, "cat кот".as_bytes());
        assert_eq!(q.owners(), Owners::One(-5));
        let plain = round_trip(b"7@search#d5,0()");
        assert_eq!(plain.to_bytes(), b"search#d5()");
        assert_eq!(plain.merge(), Merge::Search);
        assert_eq!(plain.owners(), Owners::None);
        assert_eq!(round_trip(b"item-3_9").owners(), Owners::One(-3));
        for bad in [
            &b"search#x5(a)"[..],
            b"search#R1001(a)",
            b"search#R1000,9001(a)",
            b"search#R5[o1][t1](a)",
            b"search#R5[t0](a)",
            b"search#R5[t16](a)",
            b"search#R5[d5,4](a)",
            b"search#R5(a",
            b"search#R5(a+b+c+d+e+f+g+h+i+j+k+l+m+n+o+p+q)",
            b"item0_1",
            b"item1_0",
            b"item2147483648_1",
            b"item1_1x",
        ] {
            assert!(
                Query::parse(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            Query::parse(b"nothing1"),
            Err(KeyError::Unknown { .. })
        ));
    }

    #[test]
    fn updates_parse_and_encode() {
        let set = Update::parse_set(b"item-5_7", b"3,100,42\ttext, with\ttabs").unwrap();
        assert_eq!(
            set,
            Update::SetItem {
                owner: -5,
                id: 7,
                kind: 3,
                date: 100,
                rating: 42,
                text: b"text, with\ttabs".to_vec()
            }
        );
        let mut value = Vec::new();
        set.encode_value(&mut value);
        assert_eq!(Update::parse_set(&set.to_bytes(), &value).unwrap(), set);
        assert_eq!(
            Update::parse_set(b"rate5_7", b"9").unwrap(),
            Update::SetRate {
                owner: 5,
                id: 7,
                rating: 9
            }
        );
        assert_eq!(
            Update::parse_incr(b"rate5_7", -2).unwrap().to_bytes(),
            b"rate5_7"
        );
        assert_eq!(
            Update::parse_delete(b"item5_7").unwrap().owners(),
            Owners::One(5)
        );
        for (key, value) in [
            (&b"item5_7"[..], &b"3,100,42"[..]),
            (b"item5_7", b"0,1,1\tx"),
            (b"item5_7", b"16,1,1\tx"),
            (b"item5_7", b"1,1\tx"),
            (b"item5_7", b"1,1,1,1\tx"),
            (b"item5_7", b"1,-1,1\tx"),
            (b"item5_7", b"1,1,4294967296\tx"),
            (b"rate5_7", b"x"),
            (b"rate5_7", b""),
        ] {
            assert!(Update::parse_set(key, value).is_err(), "{key:?} {value:?}");
        }
        let long = vec![b'a'; ITEM_TEXT_BYTES_MAX + 1];
        let mut value = b"1,1,1\t".to_vec();
        value.extend_from_slice(&long);
        assert!(Update::parse_set(b"item5_7", &value).is_err());
        value.pop();
        assert!(Update::parse_set(b"item5_7", &value).is_ok());
    }

    #[test]
    fn found_round_trips() {
        let found = Found {
            total: 9,
            hits: vec![Hit {
                owner: -3,
                id: 1,
                value: 7,
                hash: u64::MAX,
            }],
        };
        let mut out = Vec::new();
        found.encode(&mut out);
        assert_eq!(out, b"9,1,-3,1,7,18446744073709551615");
        assert_eq!(Found::parse(&out).unwrap(), found);
        assert_eq!(Found::parse(b"0,0").unwrap(), Found::default());
        for bad in [&b"1"[..], b"1,1", b"1,0,5", b"x,0", b"1,1,1,1,1"] {
            assert!(Found::parse(bad).is_err());
        }
    }

    #[test]
    fn small_windows_are_asked_whole() {
        assert_eq!(shard_limit(0, 8), 0);
        assert_eq!(shard_limit(20, 8), 20);
        assert_eq!(
            shard_limit(SEARCH_WHOLE_WINDOW_MAX, 8),
            SEARCH_WHOLE_WINDOW_MAX
        );
        let above = SEARCH_WHOLE_WINDOW_MAX + 1;
        assert_eq!(shard_limit(above, 8), split_limit(above, 8));
        assert!(shard_limit(above, 8) < above);
        assert_eq!(shard_limit(100, 1), 100);
        let search = match Query::parse(b"search#R20,12(a)").unwrap() {
            Query::Search(s) => s,
            Query::Item { .. } => unreachable!(),
        };
        assert_eq!(search.per_shard(8).limit, 32);
        // A whole-window answer is never unsure, however many hits it holds.
        let full = Found {
            total: 100,
            hits: (0..32)
                .map(|i| hit(i + 1, 1000 - i as u32, i as u64))
                .collect(),
        };
        assert!(merge(&search, &[full.clone(), full], &[32, 32])
            .unsure
            .is_empty());
    }

    #[test]
    fn split_limits_follow_the_binomial_tail() {
        assert_eq!(split_limit(100, 1), 100);
        assert_eq!(split_limit(0, 8), 0);
        assert_eq!(split_limit(1, 8), 1);
        let k = split_limit(100, 8);
        assert!(k > 12 && k < 100, "{k}");
        // Close to VK's closed form L/N + 7 sqrt(L/N) + 1 for large L.
        let l = split_limit(10_000, 8);
        let closed = 1250.0 + 7.0 * 1250f64.sqrt() + 1.0;
        assert!((f64::from(l) - closed).abs() < 80.0, "{l} vs {closed}");
    }

    fn hit(owner: i64, value: u32, hash: u64) -> Hit {
        Hit {
            owner,
            id: 1,
            value,
            hash,
        }
    }

    #[test]
    fn merge_dedups_sums_and_flags_unsure_parts() {
        let search = match Query::parse(b"search#R2,1(a)").unwrap() {
            Query::Search(s) => s,
            Query::Item { .. } => unreachable!(),
        };
        let a = Found {
            total: 10,
            hits: vec![hit(1, 9, 1), hit(3, 5, 3)],
        };
        let b = Found {
            total: 4,
            hits: vec![hit(2, 9, 1), hit(4, 7, 2)],
        };
        let merged = merge(&search, &[a.clone(), b.clone()], &[3, 3]);
        assert_eq!(merged.found.total, 14);
        assert_eq!(merged.found.hits, vec![hit(4, 7, 2), hit(3, 5, 3)]);
        assert!(merged.unsure.is_empty());
        // Asked for 2 and sent 2, the second one inside the window: unsure.
        let merged = merge(&search, &[a, b], &[2, 2]);
        assert_eq!(merged.unsure, vec![0, 1]);
    }
}
