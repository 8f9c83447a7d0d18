//! The VK key idioms shared by every grammar, each written once with its parse and encode.
//!
//! * `name<owner>_<id>` addressing: a lowercase name, then decimal ids (owner ids are
//!   `1..=`[`ID_MAX`]);
//! * `#from,to` and `#limit` slices of a list: [`Slice`];
//! * `and:xor` flag masks selecting a sublist (`(flags ^ xor) & and == 0`);
//! * count-prefixed comma lists `total,item,item,…` (replies): [`CountedList`]; plain comma id
//!   lists `id,id,…` (values and inline list arguments): [`parse_id_list`];
//! * per-connection temp lists `set temp<tag>` named later as `-<tag>`: [`check_temp_tag`];
//! * handshake tags `#<tag>` pairing a set with the get that reads its result;
//! * the `N@` routing prefix: [`split_route`];
//! * privacy checks `viewer~owner:key,key`: [`check_privacy_key`], [`encode_check`];
//! * `word+word` query payloads with `%XX` escapes: [`decode_words`], [`encode_words`].
//!
//! The grammars of the two first engines were written separately and word their errors
//! differently (`CLIENT_ERROR` texts that clients and tests rely on); the private `Cursor` keeps
//! each grammar's wording through its dialect, so the idioms exist once and every reply stays
//! what it was.

use crate::{KeyError, Result};

/// Largest owner or user id: VK ids are positive 32-bit signed integers.
pub const ID_MAX: i64 = i32::MAX as i64;

/// Which grammar is lexing: selects the wording of errors and the few lexical rules that
/// differ (how many digits an integer may have).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// messages/wall: integers are signed, up to 19 digits; errors quote the key.
    Messages,
    /// friends: ids up to 10 digits; errors name the byte offset.
    Friends,
}

/// A cursor over the part of a key after its name.
pub(crate) struct Cursor<'a> {
    /// The whole key as received (quoted by messages errors).
    key: &'a [u8],
    /// The key after its routing prefix.
    body: &'a [u8],
    /// Offset into `body`.
    at: usize,
    dialect: Dialect,
}

/// Splits a key into its name (leading `[a-z_]` bytes) and a cursor over the rest. A leading
/// `N@` routing prefix is stripped.
pub(crate) fn split(key: &[u8], dialect: Dialect) -> (&[u8], Cursor<'_>) {
    let (_, body) = split_route(key);
    let name_len = body
        .iter()
        .take_while(|b| b.is_ascii_lowercase() || **b == b'_')
        .count();
    (
        &body[..name_len],
        Cursor {
            key,
            body,
            at: name_len,
            dialect,
        },
    )
}

impl<'a> Cursor<'a> {
    /// A cursor over `bytes` from their start (values, list items).
    pub(crate) fn over(bytes: &'a [u8], dialect: Dialect) -> Self {
        Self {
            key: bytes,
            body: bytes,
            at: 0,
            dialect,
        }
    }

    /// The whole key, for error texts.
    pub(crate) fn show(&self) -> String {
        String::from_utf8_lossy(self.key).into_owned()
    }

    fn fail<T>(reason: String) -> Result<T> {
        Err(KeyError::malformed(reason))
    }

    pub(crate) fn at(&self) -> usize {
        self.at
    }

    /// Moves to offset `at` of the key after its routing prefix (back into the name, too).
    pub(crate) fn seek(&mut self, at: usize) {
        self.at = at.min(self.body.len());
    }

    pub(crate) fn peek(&self) -> Option<u8> {
        self.body.get(self.at).copied()
    }

    /// The unread bytes.
    pub(crate) fn rest(&self) -> &'a [u8] {
        &self.body[self.at..]
    }

    /// Consumes and returns the unread bytes.
    pub(crate) fn take_rest(&mut self) -> &'a [u8] {
        let rest = self.rest();
        self.at = self.body.len();
        rest
    }

    /// Consumes `byte` if it is next.
    pub(crate) fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    /// Consumes `byte`, which must be next.
    pub(crate) fn expect(&mut self, byte: u8) -> Result<()> {
        if self.eat(byte) {
            return Ok(());
        }
        match self.dialect {
            Dialect::Messages => Self::fail(format!(
                "expected '{}' in key {:?}",
                char::from(byte),
                self.show()
            )),
            Dialect::Friends => Self::fail(format!(
                "expected {} at offset {}",
                char::from(byte),
                self.at
            )),
        }
    }

    /// Checks that the whole key was read.
    pub(crate) fn end(&self) -> Result<()> {
        if self.at == self.body.len() {
            return Ok(());
        }
        let rest = String::from_utf8_lossy(self.rest());
        match self.dialect {
            Dialect::Messages => Self::fail(format!(
                "unexpected {rest:?} at the end of key {:?}",
                self.show()
            )),
            Dialect::Friends => Self::fail(format!("unexpected {rest:?} at offset {}", self.at)),
        }
    }

    fn digits(&mut self) -> &'a [u8] {
        let start = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
        &self.body[start..self.at]
    }

    /// A signed decimal integer (messages: `-?[0-9]{1,19}`).
    pub(crate) fn int(&mut self, what: &str) -> Result<i64> {
        let start = self.at;
        let negative = self.eat(b'-');
        let digits = self.digits().len();
        if digits == 0 || digits > 19 {
            self.at = start;
            return Self::fail(format!(
                "bad {what} in key {:?}: expected an integer",
                self.show()
            ));
        }
        let magnitude = decimal(&self.body[self.at - digits..self.at]);
        let value = if negative {
            0i64.checked_sub_unsigned(magnitude)
        } else {
            i64::try_from(magnitude).ok()
        };
        value.map_or_else(
            || Self::fail(format!("{what} out of range in key {:?}", self.show())),
            Ok,
        )
    }

    /// An unsigned decimal number (friends: `[0-9]{1,10}`).
    pub(crate) fn number(&mut self, what: &str) -> Result<u64> {
        let digits = self.digits();
        if digits.is_empty() {
            return Self::fail(format!("expected {what} at offset {}", self.at));
        }
        if digits.len() > 10 {
            return Self::fail(format!("{what} is too long"));
        }
        Ok(decimal(digits))
    }

    /// An owner or user id, `1..=ID_MAX`.
    pub(crate) fn id(&mut self, what: &str) -> Result<i64> {
        match self.dialect {
            Dialect::Messages => {
                let value = self.int(what)?;
                check_id(value, what)
            }
            Dialect::Friends => {
                let negative = self.eat(b'-');
                let n = self.number(what)?;
                check_id_unsigned(n, negative, what)
            }
        }
    }

    /// A messages `u32` operand (`and`/`xor` masks, dates, modes).
    pub(crate) fn u32(&mut self, what: &str) -> Result<u32> {
        let value = self.int(what)?;
        u32::try_from(value)
            .or_else(|_| Self::fail(format!("{what} {value} must fit in 0..=2^32-1")))
    }

    /// An `and:xor` sublist mask.
    pub(crate) fn mask(&mut self) -> Result<(u32, u32)> {
        let and = self.u32("and mask")?;
        self.expect(b':')?;
        let xor = self.u32("xor mask")?;
        Ok((and, xor))
    }

    /// An optional slice; `absent` when the key has none.
    pub(crate) fn slice(&mut self, absent: Slice) -> Result<Slice> {
        if !self.eat(b'#') {
            return Ok(absent);
        }
        match self.dialect {
            Dialect::Messages => {
                let from = self.int("slice start")?;
                self.expect(b',')?;
                let to = self.int("slice end")?;
                if (from == 0) != (to == 0) {
                    return Self::fail("slice positions are 1-based: only #0,0 may use 0".into());
                }
                Ok(Slice::Range { from, to })
            }
            Dialect::Friends => {
                let first = self.slice_bound()?;
                if self.eat(b',') {
                    let second = self.slice_bound()?;
                    if (first == 0) != (second == 0) {
                        return Self::fail("slice #from,to: 0 is allowed only as #0,0".into());
                    }
                    return Ok(Slice::Range {
                        from: i64::from(first),
                        to: i64::from(second),
                    });
                }
                u32::try_from(first)
                    .map(Slice::Limit)
                    .or_else(|_| Self::fail("slice #limit must not be negative".into()))
            }
        }
    }

    /// A friends slice bound: a signed number that fits `i32`.
    fn slice_bound(&mut self) -> Result<i32> {
        let negative = self.eat(b'-');
        let n = self.number("slice bound")?;
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let n = if negative { -n } else { n };
        i32::try_from(n).or_else(|_| Self::fail(format!("slice bound {n} out of range")))
    }

    /// An optional `#<tag>` handshake tag running to the end of the key, at most `max` bytes.
    pub(crate) fn tag(&mut self, max: usize) -> Result<Vec<u8>> {
        if !self.eat(b'#') {
            return Ok(Vec::new());
        }
        let tag = self.take_rest();
        if tag.len() > max {
            return Self::fail(format!("tag longer than {max} bytes"));
        }
        Ok(tag.to_vec())
    }
}

/// The value of ASCII digits (at most 19 or 20 of them: no overflow for the callers' bounds).
fn decimal(digits: &[u8]) -> u64 {
    digits.iter().fold(0u64, |acc, d| {
        acc.wrapping_mul(10).wrapping_add(u64::from(d - b'0'))
    })
}

/// Checks a messages-style id (`{what} {value} must be in 1..=2147483647`).
pub(crate) fn check_id(value: i64, what: &str) -> Result<i64> {
    if value <= 0 || value > ID_MAX {
        return Err(KeyError::malformed(format!(
            "{what} {value} must be in 1..={ID_MAX}"
        )));
    }
    Ok(value)
}

/// Checks a friends-style id (`{what} -{n} outside 1..=2147483647`).
fn check_id_unsigned(n: u64, negative: bool, what: &str) -> Result<i64> {
    match i64::try_from(n) {
        Ok(value) if !negative && value > 0 && value <= ID_MAX => Ok(value),
        _ => {
            let sign = if negative { "-" } else { "" };
            Err(KeyError::malformed(format!(
                "{what} {sign}{n} outside 1..={ID_MAX}"
            )))
        }
    }
}

/// Checks a friends viewer id: `0` (anonymous) or a user id.
pub(crate) fn check_viewer(n: u64) -> Result<i64> {
    if n == 0 {
        return Ok(0);
    }
    check_id_unsigned(n, false, "viewer id")
}

// ----- routing prefix -----

/// Splits a leading `N@` routing prefix (`-?[0-9]+@`, "send to the shard owning N") from a
/// key: `(Some(b"N"), rest)`, or `(None, key)` when there is none. Engines ignore the prefix;
/// a router routes by `N` instead of the key's owner.
#[must_use]
pub fn split_route(key: &[u8]) -> (Option<&[u8]>, &[u8]) {
    let sign = usize::from(key.first() == Some(&b'-'));
    let digits = key[sign..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits > 0 && key.get(sign + digits) == Some(&b'@') {
        (Some(&key[..sign + digits]), &key[sign + digits + 1..])
    } else {
        (None, key)
    }
}

/// Appends an `N@` routing prefix.
pub fn encode_route(out: &mut Vec<u8>, id: i64) {
    push_int(out, id);
    out.push(b'@');
}

// ----- integers -----

/// `"00"`, `"01"`, … `"99"`: two decimal digits at a time.
const DIGIT_PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819202122232425262728293031323334353637383940414243444546474849\
5051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899";

/// Appends the decimal digits of `value`.
///
/// The digits are written in place, two at a time, into room reserved with a fixed-size
/// copy: formatting a reply of thousands of ids then costs no call to a copy routine per id
/// (which was most of the time a node spent answering `friends<uid>`).
pub fn push_uint(out: &mut Vec<u8>, mut value: u64) {
    let len = value.checked_ilog10().map_or(1, |log| log as usize + 1);
    let start = out.len();
    out.extend_from_slice(&[0u8; 20]);
    let digits = &mut out[start..start + len];
    let mut at = len;
    while value >= 100 {
        // NOTE: value % 100 < 100, so the pair is within DIGIT_PAIRS.
        let pair = (value % 100) as usize * 2;
        value /= 100;
        at -= 2;
        digits[at..at + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    if value >= 10 {
        // NOTE: value < 100 here.
        let pair = value as usize * 2;
        digits[..2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    } else {
        // NOTE: value < 10 here.
        digits[0] = b'0' + value as u8;
    }
    out.truncate(start + len);
}

/// Appends `value` in decimal, with a `-` when negative.
pub fn push_int(out: &mut Vec<u8>, value: i64) {
    if value < 0 {
        out.push(b'-');
    }
    push_uint(out, value.unsigned_abs());
}

/// Appends an `and:xor` mask.
pub fn encode_mask(out: &mut Vec<u8>, and: u32, xor: u32) {
    push_uint(out, u64::from(and));
    out.push(b':');
    push_uint(out, u64::from(xor));
}

// ----- slices -----

/// A `#…` slice of a list: which items of it a read returns, in which order.
///
/// Positions are 1-based over the list in its natural order (ascending ids, or newest first
/// where a key says so); negative positions count from the end (`-1` = last); `to < from`
/// returns the items in reverse; `#0,0` (and `#0`) return the total only.
///
/// There is no `Default`: what a key without a slice means is the grammar's choice (the whole
/// list for friends keys, [`crate::messages::DEFAULT_SLICE`] for messages keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slice {
    /// No suffix: the whole list.
    All,
    /// `#limit`: the first `limit` items (friends keys only).
    Limit(u32),
    /// `#from,to`.
    Range {
        /// First position.
        from: i64,
        /// Last position.
        to: i64,
    },
}

impl Slice {
    /// The 0-based indexes into a list of `len` items this slice selects, in reply order.
    #[must_use]
    pub fn positions(self, len: usize) -> Positions {
        let empty = Positions {
            next: 0,
            left: 0,
            down: false,
        };
        match self {
            Self::All => Positions {
                next: 0,
                left: len,
                down: false,
            },
            Self::Limit(limit) => Positions {
                next: 0,
                left: len.min(usize::try_from(limit).unwrap_or(usize::MAX)),
                down: false,
            },
            Self::Range { from: 0, to: 0 } => empty,
            Self::Range { from, to } => {
                // 1-based positions, negative ones counted from the end; i128 cannot overflow.
                let n = i128::try_from(len).unwrap_or(i128::MAX);
                let absolute = |i: i64| {
                    let i = i128::from(i);
                    if i < 0 {
                        n + 1 + i
                    } else {
                        i
                    }
                };
                let (from, to) = (absolute(from), absolute(to));
                let (lo, hi) = (from.min(to).max(1), from.max(to).min(n));
                if lo > hi {
                    return empty;
                }
                // NOTE: 1 <= lo <= hi <= len, so both fit usize.
                let (lo, hi) = (
                    usize::try_from(lo - 1).unwrap_or(0),
                    usize::try_from(hi - 1).unwrap_or(0),
                );
                let down = from > to;
                Positions {
                    next: if down { hi } else { lo },
                    left: hi - lo + 1,
                    down,
                }
            }
        }
    }

    /// [`Slice::positions`], at most `max` of them. An iterator, so a read that pages through
    /// a list allocates nothing.
    pub fn resolve(self, len: usize, max: usize) -> std::iter::Take<Positions> {
        self.positions(len).take(max)
    }

    /// [`Slice::positions`], under the name the friends engine uses.
    #[must_use]
    pub fn indexes(self, len: usize) -> Positions {
        self.positions(len)
    }

    /// Appends the slice: nothing for [`Slice::All`], `#limit`, or `#from,to`.
    pub fn encode(self, out: &mut Vec<u8>) {
        match self {
            Self::All => {}
            Self::Limit(limit) => {
                out.push(b'#');
                push_uint(out, u64::from(limit));
            }
            Self::Range { from, to } => {
                out.push(b'#');
                push_int(out, from);
                out.push(b',');
                push_int(out, to);
            }
        }
    }
}

/// The indexes a [`Slice`] selects, in reply order.
#[derive(Debug, Clone)]
pub struct Positions {
    next: usize,
    left: usize,
    down: bool,
}

impl Iterator for Positions {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.left == 0 {
            return None;
        }
        let item = self.next;
        self.left -= 1;
        if self.left > 0 {
            self.next = if self.down { item - 1 } else { item + 1 };
        }
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Positions {}

// ----- lists -----

/// Parses a comma-separated id list (`17,239,666`; empty = no ids; surrounding ASCII
/// whitespace ignored), at most `max` ids, in the given order.
///
/// # Errors
/// [`KeyError::Malformed`] for a bad id or a list that is too long.
pub fn parse_id_list(text: &[u8], max: usize) -> Result<Vec<u32>> {
    let text = text.trim_ascii();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    // Sized once (one allocation per list, none while growing): commas + 1 ids, within max.
    let count = text.iter().filter(|b| **b == b',').count() + 1;
    let mut ids = Vec::with_capacity(count.min(max));
    for item in text.split(|b| *b == b',') {
        if ids.len() == max {
            return Err(KeyError::malformed(format!("id list longer than {max}")));
        }
        let mut cursor = Cursor::over(item, Dialect::Friends);
        let id = cursor.id("user id in list")?;
        cursor.end()?;
        // NOTE: id is within 1..=ID_MAX.
        ids.push(u32::try_from(id).unwrap_or(u32::MAX));
    }
    Ok(ids)
}

/// Appends `id,id,…` (nothing for no ids).
pub fn encode_id_list(out: &mut Vec<u8>, ids: &[u32]) {
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_uint(out, u64::from(*id));
    }
}

/// Most digits of a number [`CountedList::parse`] reads in its fast path (always an `i64`).
const PLAIN_DIGITS_MAX: usize = 18;

/// A count-prefixed comma list, the usual list reply: `total,item,item,…`. `total` counts the
/// whole list before slicing, so it may exceed the items given; items may be tuples flattened
/// (`total,(lid,peer,unread)…`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CountedList {
    /// Length of the whole list.
    pub total: u64,
    /// The items returned.
    pub items: Vec<i64>,
}

impl CountedList {
    /// Parses `total[,item…]`.
    ///
    /// # Errors
    /// [`KeyError::Malformed`] when a number is missing or out of range.
    pub fn parse(text: &[u8]) -> Result<Self> {
        // Lists of thousands of ids cross the proxy on every scatter/gather: the plain case
        // goes through one tight loop, anything else through the careful parse below, which
        // also words the error.
        if let Some(list) = Self::parse_plain(text) {
            return Ok(list);
        }
        let mut parts = text.split(|b| *b == b',');
        let mut total_cursor = Cursor::over(parts.next().unwrap_or_default(), Dialect::Messages);
        let total = total_cursor.int("list total")?;
        total_cursor.end()?;
        let total = u64::try_from(total)
            .map_err(|_| KeyError::malformed(format!("list total {total} is negative")))?;
        let mut items = Vec::new();
        for part in parts {
            let mut cursor = Cursor::over(part, Dialect::Messages);
            items.push(cursor.int("list item")?);
            cursor.end()?;
        }
        Ok(Self { total, items })
    }

    /// `total[,item…]` when every number is unsigned with at most [`PLAIN_DIGITS_MAX`]
    /// digits (so it fits an `i64`) and commas separate them one by one; `None` otherwise.
    fn parse_plain(text: &[u8]) -> Option<Self> {
        let mut total = None;
        let mut items = Vec::with_capacity(text.len() / 4);
        let (mut n, mut digits, mut bad) = (0u64, 0usize, false);
        let mut take = |n: u64, digits: usize| {
            if digits == 0 || digits > PLAIN_DIGITS_MAX {
                return false;
            }
            match total {
                None => total = Some(n),
                // NOTE: at most PLAIN_DIGITS_MAX digits: below i64::MAX.
                #[expect(clippy::cast_possible_wrap)]
                Some(_) => items.push(n as i64),
            }
            true
        };
        for &b in text {
            if b == b',' {
                if !take(n, digits) {
                    return None;
                }
                (n, digits) = (0, 0);
            } else {
                let digit = b.wrapping_sub(b'0');
                bad |= digit > 9;
                n = n.wrapping_mul(10).wrapping_add(u64::from(digit));
                digits += 1;
            }
        }
        if bad || !take(n, digits) {
            return None;
        }
        Some(Self {
            total: total?,
            items,
        })
    }

    /// Appends `total,item,…`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        push_uint(out, self.total);
        for item in &self.items {
            out.push(b',');
            push_int(out, *item);
        }
    }
}

// ----- temp lists and tags -----

/// Checks a temp list tag: 1..=`max` ASCII letters, digits or `_`.
///
/// # Errors
/// [`KeyError::Malformed`] saying what a tag may hold.
pub fn check_temp_tag(tag: &[u8], max: usize) -> Result<String> {
    if tag.is_empty()
        || tag.len() > max
        || !tag.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')
    {
        return Err(KeyError::malformed(format!(
            "temp list tag must be 1..={max} letters, digits or _"
        )));
    }
    Ok(String::from_utf8_lossy(tag).into_owned())
}

/// Appends an optional `#<tag>` handshake tag (nothing for an empty tag).
pub fn encode_tag(out: &mut Vec<u8>, tag: &[u8]) {
    if !tag.is_empty() {
        out.push(b'#');
        out.extend_from_slice(tag);
    }
}

// ----- privacy checks -----

/// Checks a privacy key: a latin lowercase stem followed by a decimal number (at most 10
/// digits) or by `_suffix` (`[a-z0-9_]+`), at most `max` bytes: `album17`, `priv_phone`.
///
/// # Errors
/// [`KeyError::Malformed`] saying what is wrong.
pub fn check_privacy_key(key: &[u8], max: usize) -> Result<()> {
    if key.is_empty() || key.len() > max {
        return Err(KeyError::malformed(format!(
            "privacy key must have 1..={max} bytes, has {}",
            key.len()
        )));
    }
    let stem = key.iter().take_while(|b| b.is_ascii_lowercase()).count();
    let rest = &key[stem..];
    let ok = stem > 0
        && match rest.first() {
            Some(b'_') => {
                rest.len() > 1
                    && rest[1..]
                        .iter()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
            }
            Some(_) => rest.len() <= 10 && rest.iter().all(u8::is_ascii_digit),
            None => false,
        };
    if ok {
        Ok(())
    } else {
        Err(KeyError::malformed(format!(
            "privacy key {:?} is not a latin stem followed by a number or _suffix",
            String::from_utf8_lossy(key)
        )))
    }
}

/// Parses the `viewer~owner:key,key…` privacy check idiom from a cursor at its start:
/// `(viewer, owner, keys)`, the keys still as the text after `:` (the grammar validates them,
/// see `friends::PrivacyKeys`); viewer 0 is the anonymous visitor.
pub(crate) fn parse_check<'a>(cursor: &mut Cursor<'a>) -> Result<(i64, i64, &'a [u8])> {
    let shape = || KeyError::malformed("privacy check must look like viewer~owner:key");
    let viewer = check_viewer(cursor.number("viewer id")?)?;
    if !cursor.eat(b'~') {
        return Err(shape());
    }
    let owner = cursor.id("owner id")?;
    if !cursor.eat(b':') {
        return Err(shape());
    }
    Ok((viewer, owner, cursor.take_rest()))
}

/// Appends `viewer~owner:key,key…`.
pub fn encode_check<K: AsRef<str>>(
    out: &mut Vec<u8>,
    viewer: u32,
    owner: u32,
    keys: impl IntoIterator<Item = K>,
) {
    push_uint(out, u64::from(viewer));
    out.push(b'~');
    push_uint(out, u64::from(owner));
    out.push(b':');
    for (i, key) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(key.as_ref().as_bytes());
    }
}

// ----- query payloads -----

/// Decodes `words+joined+by+plus` with `%XX` escapes into space-separated UTF-8.
///
/// # Errors
/// [`KeyError::Malformed`] for a bad escape or a result that is not UTF-8.
pub fn decode_words(raw: &[u8]) -> Result<Vec<u8>> {
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
                    return Err(KeyError::malformed("bad %XX escape in search query"));
                };
                out.push(byte);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    if std::str::from_utf8(&out).is_err() {
        return Err(KeyError::malformed("search query is not UTF-8"));
    }
    Ok(out)
}

/// Appends `words` (space-separated) as a query payload: spaces become `+`; ASCII letters,
/// digits and `-._~` stay; every other byte becomes `%XX` (upper-case hex), so the payload
/// never holds a byte a memcached key may not (space, control) nor one the grammar gives a
/// meaning to (`+ % , ( )`).
pub fn encode_words(out: &mut Vec<u8>, words: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in words {
        match b {
            b' ' => out.push(b'+'),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(b),
            _ => out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The careful parse alone (what `parse` did before its fast path).
    fn careful(text: &[u8]) -> Result<CountedList> {
        let mut parts = text.split(|b| *b == b',');
        let mut first = Cursor::over(parts.next().unwrap_or_default(), Dialect::Messages);
        let total = u64::try_from(first.int("list total")?)
            .map_err(|_| KeyError::malformed("negative total"))?;
        first.end()?;
        let mut items = Vec::new();
        for part in parts {
            let mut cursor = Cursor::over(part, Dialect::Messages);
            items.push(cursor.int("list item")?);
            cursor.end()?;
        }
        Ok(CountedList { total, items })
    }

    #[test]
    fn integers_print_as_decimals() {
        let mut values = vec![0, 1, 9, u64::MAX, u64::MAX - 1];
        for digits in 1..=19 {
            let p = 10u64.pow(digits);
            values.extend([p - 1, p, p + 1]);
        }
        for v in values {
            let mut out = b"x".to_vec();
            push_uint(&mut out, v);
            assert_eq!(out, format!("x{v}").as_bytes());
        }
    }

    proptest! {
        #[test]
        fn any_integer_prints_as_format_does(v in any::<u64>(), shift in 0u32..64) {
            let v = v >> shift;
            let mut out = Vec::new();
            push_uint(&mut out, v);
            prop_assert_eq!(out, v.to_string().into_bytes());
        }
    }

    proptest! {
        #[test]
        fn counted_list_fast_path_agrees_with_the_careful_parse(
            text in proptest::collection::vec(
                prop_oneof![
                    8 => proptest::sample::select(b"0123456789".to_vec()),
                    3 => Just(b','),
                    1 => proptest::sample::select(b"- x".to_vec()),
                ],
                0..60,
            ),
            big in proptest::collection::vec(any::<u64>(), 0..20),
        ) {
            prop_assert_eq!(CountedList::parse(&text).ok(), careful(&text).ok());
            let mut long = big.len().to_string().into_bytes();
            for n in &big {
                long.extend_from_slice(format!(",{n}").as_bytes());
            }
            prop_assert_eq!(CountedList::parse(&long).ok(), careful(&long).ok());
        }
    }

    fn range(from: i64, to: i64) -> Slice {
        Slice::Range { from, to }
    }

    #[test]
    fn slices_select_positions() {
        let pick = |s: Slice, n| s.positions(n).collect::<Vec<_>>();
        assert_eq!(pick(range(1, 3), 5), vec![0, 1, 2]);
        assert_eq!(pick(range(-1, -2), 5), vec![4, 3]);
        assert_eq!(pick(range(-1, 1), 3), vec![2, 1, 0]);
        assert_eq!(range(1, -1).resolve(3, 2).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(pick(range(0, 0), 3), Vec::<usize>::new());
        assert_eq!(pick(range(4, 9), 3), Vec::<usize>::new());
        assert_eq!(pick(range(-1, -10), 0), Vec::<usize>::new());
        assert_eq!(pick(range(2, 10), 3), vec![1, 2]);
        assert_eq!(pick(range(-1, -1), 0), Vec::<usize>::new());
        assert_eq!(pick(range(i64::MIN, i64::MAX), 2), vec![0, 1]);
        assert_eq!(pick(range(i64::MAX, i64::MIN), 2), vec![1, 0]);
        assert_eq!(pick(Slice::All, 3), vec![0, 1, 2]);
        assert_eq!(pick(Slice::Limit(2), 3), vec![0, 1]);
        assert_eq!(pick(Slice::Limit(0), 3), Vec::<usize>::new());
        assert_eq!(Slice::All.positions(7).len(), 7);
    }

    #[test]
    fn slices_encode() {
        let show = |s: Slice| {
            let mut out = Vec::new();
            s.encode(&mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(show(Slice::All), "");
        assert_eq!(show(Slice::Limit(7)), "#7");
        assert_eq!(show(range(-1, -20)), "#-1,-20");
    }

    #[test]
    fn routing_prefixes() {
        assert_eq!(
            split_route(b"98@friends5"),
            (Some(&b"98"[..]), &b"friends5"[..])
        );
        assert_eq!(split_route(b"-7@x"), (Some(&b"-7"[..]), &b"x"[..]));
        assert_eq!(split_route(b"-@x"), (None, &b"-@x"[..]));
        assert_eq!(split_route(b"@x"), (None, &b"@x"[..]));
        assert_eq!(split_route(b"5~7:a1"), (None, &b"5~7:a1"[..]));
        let mut out = Vec::new();
        encode_route(&mut out, -3);
        assert_eq!(out, b"-3@");
    }

    #[test]
    fn integers_round_trip() {
        for value in [0, 1, -1, 42, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            push_int(&mut out, value);
            assert_eq!(out, value.to_string().as_bytes());
            let mut cursor = Cursor::over(&out, Dialect::Messages);
            assert_eq!(cursor.int("n").unwrap(), value);
        }
        let mut cursor = Cursor::over(b"9223372036854775808", Dialect::Messages);
        assert!(cursor
            .int("n")
            .unwrap_err()
            .to_string()
            .contains("out of range"));
    }

    #[test]
    fn id_lists_and_counted_lists() {
        assert_eq!(parse_id_list(b" 17,239 ", 10).unwrap(), vec![17, 239]);
        assert_eq!(parse_id_list(b"", 10).unwrap(), Vec::<u32>::new());
        assert!(parse_id_list(b"1,2,3", 2).is_err());
        assert!(parse_id_list(b"1,,3", 5).is_err());
        assert!(parse_id_list(b"0", 5).is_err());
        let list = CountedList::parse(b"5,7,-1,3").unwrap();
        assert_eq!(list.total, 5);
        assert_eq!(list.items, vec![7, -1, 3]);
        let mut out = Vec::new();
        list.encode(&mut out);
        assert_eq!(out, b"5,7,-1,3");
        assert_eq!(CountedList::parse(b"0").unwrap(), CountedList::default());
        assert!(CountedList::parse(b"").is_err());
        assert!(CountedList::parse(b"-1").is_err());
        assert!(CountedList::parse(b"2,x").is_err());
    }

    #[test]
    fn words_round_trip() {
        let mut out = Vec::new();
        encode_words(&mut out, "hello мир a+b%".as_bytes());
        assert_eq!(out, b"hello+%D0%BC%D0%B8%D1%80+a%2Bb%25");
        assert_eq!(decode_words(&out).unwrap(), "hello мир a+b%".as_bytes());
        assert!(decode_words(b"%ZZ").is_err());
        assert!(decode_words(b"%FF").is_err());
    }

    #[test]
    fn temp_tags_and_privacy_keys() {
        assert!(check_temp_tag(b"ab_1", 32).is_ok());
        assert!(check_temp_tag(b"_", 32).is_ok());
        assert!(check_temp_tag(b"", 32).is_err());
        assert!(check_temp_tag(b"a-b", 32).is_err());
        assert!(check_temp_tag(&[b'a'; 33], 32).is_err());
        assert!(check_privacy_key(b"album17", 64).is_ok());
        assert!(check_privacy_key(b"priv_phone", 64).is_ok());
        assert!(check_privacy_key(b"album", 64).is_err());
        assert!(check_privacy_key(b"Album1", 64).is_err());
        assert!(check_privacy_key(b"a12345678901", 64).is_err());
    }
}
