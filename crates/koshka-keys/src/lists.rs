//! The lists grammar (VK's lists-engine idioms): generic membership lists of
//! `(list, object, flags, value, date)`. [`GetKey`], [`SetKey`], [`DeleteKey`] and [`IncrKey`];
//! the client-facing description, with values and replies, is `docs/protocol/lists.md`.
//!
//! Lists and objects are VK ids: users positive, groups negative, `1..=ID_MAX` in absolute
//! value. A list is routed by its id (the list owner: `|list| mod shards`). Keys that name an
//! object but no list (`object_lists<obj>`, `delete object<obj>`) are per-shard: a router
//! sends them to every shard (or to one with an `N@` prefix) and unions the answers.
//!
//! # Canonical spellings
//! A `_0:0` filter, a `,0` mode and a `#10000` limit (the defaults) are left out; `#limit,0`
//! is written `#limit`. An `N@` prefix is dropped.

use crate::idiom::{self, push_int, push_uint, Cursor, Dialect, ID_MAX};
use crate::{Access, Encode, KeyError, Merge, Owners, Result, Route};

/// Most items one list reply may carry (`#limit` above it fails with `CLIENT_ERROR`); also
/// the default limit.
pub const REPLY_ITEMS_MAX: u32 = 10_000;

/// Most ids in one temp or inline list (`set temp<tag>`, `intersect…:<ids>`); more fail with
/// `CLIENT_ERROR`.
pub const TEMP_LIST_MAX: usize = 10_000;

/// Longest temp list tag; longer fails with `CLIENT_ERROR`.
pub const TEMP_TAG_LEN_MAX: usize = 32;

/// Largest flags value: flags are 8 bits (VK's lists).
pub const FLAGS_MAX: u32 = 255;

/// Order codes of a mode (`mode & 7`).
pub const ORDER_ID_ASC: u32 = 0;
/// Descending object id.
pub const ORDER_ID_DESC: u32 = 1;
/// Oldest first (ties by ascending object id).
pub const ORDER_DATE_ASC: u32 = 2;
/// Newest first (ties by ascending object id).
pub const ORDER_DATE_DESC: u32 = 3;
/// Smallest value first (ties by ascending object id).
pub const ORDER_VALUE_ASC: u32 = 4;
/// Largest value first (ties by ascending object id).
pub const ORDER_VALUE_DESC: u32 = 5;
/// Mode bit: each item also carries its flags.
pub const FIELD_FLAGS: u32 = 8;
/// Mode bit: each item also carries its date.
pub const FIELD_DATE: u32 = 16;
/// Mode bit: each item also carries its value.
pub const FIELD_VALUE: u32 = 32;
/// Every valid mode bit.
pub const MODE_BITS: u32 = 7 | FIELD_FLAGS | FIELD_DATE | FIELD_VALUE;

/// A sublist filter: entries with `(flags ^ xor) & and == 0` (VK's `and:xor` idiom). The
/// default `0:0` selects every entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Filter {
    /// Bits that must match.
    pub and: u32,
    /// Their wanted values.
    pub xor: u32,
}

impl Filter {
    /// Whether an entry with `flags` is selected.
    #[must_use]
    pub fn accepts(self, flags: u32) -> bool {
        (flags ^ self.xor) & self.and == 0
    }
}

/// A list of object ids given in a key: inline or the name of a temp list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListRef {
    /// `id,id,…` (may be empty).
    Inline(Vec<i32>),
    /// `-tag`: the list stored by `set temp<tag>` on this connection.
    Temp(String),
}

/// Which entries of a list a read selects, and how it answers them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Select {
    /// The list.
    pub list: i32,
    /// The sublist filter.
    pub filter: Filter,
    /// Order and fields (see the `ORDER_*` and `FIELD_*` constants).
    pub mode: u32,
    /// Most items in the reply (`0` = the total only).
    pub limit: u32,
    /// Items skipped first.
    pub offset: u32,
}

/// A retrieval key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GetKey {
    /// `entry<list>_<obj>` → `flags,value,date`.
    Entry {
        /// The list.
        list: i32,
        /// The object.
        object: i32,
    },
    /// `flags<list>_<obj>` → flags.
    Flags {
        /// The list.
        list: i32,
        /// The object.
        object: i32,
    },
    /// `value<list>_<obj>` → value.
    Value {
        /// The list.
        list: i32,
        /// The object.
        object: i32,
    },
    /// `list<list>[_and:xor][,mode][#limit[,offset]]` → `total,item,…`.
    List(Select),
    /// `count<list>[_and:xor]` → the number of selected entries.
    Count {
        /// The list.
        list: i32,
        /// The sublist filter.
        filter: Filter,
    },
    /// `intersect<list>[_and:xor][,mode]:<ids|-tag>[#limit[,offset]]` (or `subtract…`):
    /// selected entries whose object is (is not) in the given list.
    Intersect {
        /// The selection.
        select: Select,
        /// The other list.
        ids: ListRef,
        /// `subtract…`: entries whose object is NOT in `ids`.
        subtract: bool,
    },
    /// `object_lists<obj>[#limit[,offset]]` → `total,list,…`: the lists of this shard that
    /// hold the object, ascending.
    ObjectLists {
        /// The object.
        object: i32,
        /// Most list ids in the reply.
        limit: u32,
        /// List ids skipped first.
        offset: u32,
    },
}

/// A `set` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetKey {
    /// `entry<list>_<obj>` with value `flags[,value]` (`set` upserts, `add` creates only,
    /// `replace` updates only).
    Entry {
        /// The list.
        list: i32,
        /// The object.
        object: i32,
    },
    /// `flags<list>_<obj>` with value `flags` (the entry must exist).
    Flags {
        /// The list.
        list: i32,
        /// The object.
        object: i32,
    },
    /// `value<list>_<obj>` with a signed 64-bit value (the entry must exist).
    Value {
        /// The list.
        list: i32,
        /// The object.
        object: i32,
    },
    /// `temp<tag>` with value `id,id,…`: a per-connection list for `intersect…:-<tag>`.
    Temp {
        /// The tag.
        tag: String,
    },
}

/// A `delete` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteKey {
    /// `entry<list>_<obj>`.
    Entry {
        /// The list.
        list: i32,
        /// The object.
        object: i32,
    },
    /// `list<list>`: the whole list.
    List {
        /// The list.
        list: i32,
    },
    /// `object<obj>`: the object from every list of this shard.
    Object {
        /// The object.
        object: i32,
    },
}

/// An `incr`/`decr` key: `flags<list>_<obj>` (incr sets bits, decr clears them) or
/// `value<list>_<obj>` (adds, subtracts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncrKey {
    /// The list.
    pub list: i32,
    /// The object.
    pub object: i32,
    /// `flags…` (else `value…`).
    pub flags: bool,
}

fn unknown(name: &[u8], command: &str) -> KeyError {
    KeyError::unknown(format!(
        "unknown lists key {:?} for {command}",
        String::from_utf8_lossy(name)
    ))
}

/// A list or object id: `1..=ID_MAX` in absolute value (negative = a group).
fn id(c: &mut Cursor<'_>, what: &str) -> Result<i32> {
    let value = c.int(what)?;
    check_id(value, what)
}

fn check_id(value: i64, what: &str) -> Result<i32> {
    if value == 0 || value.unsigned_abs() > ID_MAX.unsigned_abs() {
        return Err(KeyError::malformed(format!(
            "{what} {value} must be in 1..={ID_MAX} or -{ID_MAX}..=-1"
        )));
    }
    // NOTE: |value| <= i32::MAX.
    Ok(i32::try_from(value).unwrap_or(i32::MAX))
}

fn pair(c: &mut Cursor<'_>) -> Result<(i32, i32)> {
    let list = id(c, "list id")?;
    c.expect(b'_')?;
    let object = id(c, "object id")?;
    c.end()?;
    Ok((list, object))
}

fn filter(c: &mut Cursor<'_>) -> Result<Filter> {
    if !c.eat(b'_') {
        return Ok(Filter::default());
    }
    let (and, xor) = c.mask()?;
    Ok(Filter { and, xor })
}

fn mode(c: &mut Cursor<'_>) -> Result<u32> {
    if !c.eat(b',') {
        return Ok(0);
    }
    let mode = c.u32("mode")?;
    if mode & !MODE_BITS != 0 || mode & 7 > ORDER_VALUE_DESC {
        return Err(KeyError::malformed(format!(
            "mode {mode}: order (mode & 7) must be 0..=5, fields +8 +16 +32"
        )));
    }
    Ok(mode)
}

/// `#limit[,offset]`, or the defaults.
fn slice(c: &mut Cursor<'_>) -> Result<(u32, u32)> {
    if !c.eat(b'#') {
        return Ok((REPLY_ITEMS_MAX, 0));
    }
    let limit = c.u32("limit")?;
    if limit > REPLY_ITEMS_MAX {
        return Err(KeyError::malformed(format!(
            "limit {limit} exceeds {REPLY_ITEMS_MAX}"
        )));
    }
    let offset = if c.eat(b',') { c.u32("offset")? } else { 0 };
    Ok((limit, offset))
}

fn select(c: &mut Cursor<'_>, list: i32) -> Result<Select> {
    let filter = filter(c)?;
    let mode = mode(c)?;
    Ok(Select {
        list,
        filter,
        mode,
        limit: REPLY_ITEMS_MAX,
        offset: 0,
    })
}

/// Appends `id,id,…` (the form [`parse_ids`] reads: an inline list, a temp list's value).
pub fn encode_ids(out: &mut Vec<u8>, ids: &[i32]) {
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_int(out, i64::from(*id));
    }
}

/// Parses `id,id,…` (signed ids, empty allowed), at most [`TEMP_LIST_MAX`].
///
/// # Errors
/// [`KeyError::Malformed`] for a bad id or a list that is too long.
pub fn parse_ids(text: &[u8]) -> Result<Vec<i32>> {
    let text = text.trim_ascii();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let count = comma_count(text) + 1;
    if count > TEMP_LIST_MAX {
        return Err(KeyError::malformed(format!(
            "id list longer than {TEMP_LIST_MAX}"
        )));
    }
    let mut ids = Vec::with_capacity(count);
    for part in text.split(|&b| b == b',') {
        if ids.len() == TEMP_LIST_MAX {
            return Err(KeyError::malformed(format!(
                "id list longer than {TEMP_LIST_MAX}"
            )));
        }
        let mut c = Cursor::over(part, Dialect::Messages);
        let value = id(&mut c, "object id")?;
        c.end()?;
        ids.push(value);
    }
    Ok(ids)
}

/// The number of commas in `text`.
fn comma_count(text: &[u8]) -> usize {
    text.iter().filter(|&&b| b == b',').count()
}

/// Checks a temp list tag: 1..=[`TEMP_TAG_LEN_MAX`] ASCII letters, digits or `_`, not
/// starting with a digit (so `:-<tag>` never reads as a negative id).
///
/// # Errors
/// [`KeyError::Malformed`] saying what a tag may hold.
pub fn check_temp_tag(tag: &[u8]) -> Result<String> {
    if tag.first().is_some_and(u8::is_ascii_digit) {
        return Err(KeyError::malformed(
            "temp list tag must not start with a digit",
        ));
    }
    idiom::check_temp_tag(tag, TEMP_TAG_LEN_MAX)
}

impl GetKey {
    /// Parses a retrieval key.
    ///
    /// # Errors
    /// [`KeyError::Unknown`] for a name the grammar lacks, else [`KeyError::Malformed`].
    pub fn parse(key: &[u8]) -> Result<Self> {
        let (name, mut c) = idiom::split(key, Dialect::Messages);
        let key = match name {
            b"entry" | b"flags" | b"value" => {
                let (list, object) = pair(&mut c)?;
                return Ok(match name {
                    b"entry" => Self::Entry { list, object },
                    b"flags" => Self::Flags { list, object },
                    _ => Self::Value { list, object },
                });
            }
            b"list" => {
                let list = id(&mut c, "list id")?;
                let mut select = select(&mut c, list)?;
                (select.limit, select.offset) = slice(&mut c)?;
                Self::List(select)
            }
            b"count" => {
                let list = id(&mut c, "list id")?;
                Self::Count {
                    list,
                    filter: filter(&mut c)?,
                }
            }
            b"intersect" | b"subtract" => {
                let list = id(&mut c, "list id")?;
                let mut select = select(&mut c, list)?;
                c.expect(b':')?;
                let rest = c.take_rest();
                let (body, tail) = match rest.iter().position(|&b| b == b'#') {
                    Some(at) => (&rest[..at], &rest[at..]),
                    None => (rest, &[][..]),
                };
                let ids = match body.strip_prefix(b"-") {
                    Some(tag) if !tag.first().is_some_and(u8::is_ascii_digit) => {
                        ListRef::Temp(check_temp_tag(tag)?)
                    }
                    _ => ListRef::Inline(parse_ids(body)?),
                };
                let mut t = Cursor::over(tail, Dialect::Messages);
                (select.limit, select.offset) = slice(&mut t)?;
                t.end()?;
                return Ok(Self::Intersect {
                    select,
                    ids,
                    subtract: name == b"subtract",
                });
            }
            b"object_lists" => {
                let object = id(&mut c, "object id")?;
                let (limit, offset) = slice(&mut c)?;
                Self::ObjectLists {
                    object,
                    limit,
                    offset,
                }
            }
            _ => return Err(unknown(name, "get")),
        };
        c.end()?;
        Ok(key)
    }
}

impl SetKey {
    /// Parses a `set` key (values are the engine's: see `docs/protocol/lists.md`).
    ///
    /// # Errors
    /// [`KeyError::Unknown`] for a name the grammar lacks, else [`KeyError::Malformed`].
    pub fn parse(key: &[u8]) -> Result<Self> {
        if let Some(tag) = idiom::split_route(key).1.strip_prefix(b"temp") {
            return Ok(Self::Temp {
                tag: check_temp_tag(tag)?,
            });
        }
        let (name, mut c) = idiom::split(key, Dialect::Messages);
        match name {
            b"entry" | b"flags" | b"value" => {
                let (list, object) = pair(&mut c)?;
                Ok(match name {
                    b"entry" => Self::Entry { list, object },
                    b"flags" => Self::Flags { list, object },
                    _ => Self::Value { list, object },
                })
            }
            _ => Err(unknown(name, "set")),
        }
    }
}

impl DeleteKey {
    /// Parses a `delete` key.
    ///
    /// # Errors
    /// [`KeyError::Unknown`] for a name the grammar lacks, else [`KeyError::Malformed`].
    pub fn parse(key: &[u8]) -> Result<Self> {
        let (name, mut c) = idiom::split(key, Dialect::Messages);
        let key = match name {
            b"entry" => {
                let (list, object) = pair(&mut c)?;
                return Ok(Self::Entry { list, object });
            }
            b"list" => Self::List {
                list: id(&mut c, "list id")?,
            },
            b"object" => Self::Object {
                object: id(&mut c, "object id")?,
            },
            _ => return Err(unknown(name, "delete")),
        };
        c.end()?;
        Ok(key)
    }
}

impl IncrKey {
    /// Parses an `incr`/`decr` key.
    ///
    /// # Errors
    /// [`KeyError::Unknown`] for a name the grammar lacks, else [`KeyError::Malformed`].
    pub fn parse(key: &[u8]) -> Result<Self> {
        let (name, mut c) = idiom::split(key, Dialect::Messages);
        match name {
            b"flags" | b"value" => {
                let (list, object) = pair(&mut c)?;
                Ok(Self {
                    list,
                    object,
                    flags: name == b"flags",
                })
            }
            _ => Err(unknown(name, "incr")),
        }
    }
}

fn push_pair(out: &mut Vec<u8>, name: &[u8], list: i32, object: i32) {
    out.extend_from_slice(name);
    push_int(out, i64::from(list));
    out.push(b'_');
    push_int(out, i64::from(object));
}

fn push_filter(out: &mut Vec<u8>, filter: Filter) {
    if filter != Filter::default() {
        out.push(b'_');
        idiom::encode_mask(out, filter.and, filter.xor);
    }
}

fn push_slice(out: &mut Vec<u8>, limit: u32, offset: u32) {
    if limit == REPLY_ITEMS_MAX && offset == 0 {
        return;
    }
    out.push(b'#');
    push_uint(out, u64::from(limit));
    if offset != 0 {
        out.push(b',');
        push_uint(out, u64::from(offset));
    }
}

fn push_select_head(out: &mut Vec<u8>, name: &[u8], select: &Select) {
    out.extend_from_slice(name);
    push_int(out, i64::from(select.list));
    push_filter(out, select.filter);
    if select.mode != 0 {
        out.push(b',');
        push_uint(out, u64::from(select.mode));
    }
}

impl Encode for GetKey {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Entry { list, object } => push_pair(out, b"entry", *list, *object),
            Self::Flags { list, object } => push_pair(out, b"flags", *list, *object),
            Self::Value { list, object } => push_pair(out, b"value", *list, *object),
            Self::List(select) => {
                push_select_head(out, b"list", select);
                push_slice(out, select.limit, select.offset);
            }
            Self::Count { list, filter } => {
                out.extend_from_slice(b"count");
                push_int(out, i64::from(*list));
                push_filter(out, *filter);
            }
            Self::Intersect {
                select,
                ids,
                subtract,
            } => {
                let name: &[u8] = if *subtract { b"subtract" } else { b"intersect" };
                push_select_head(out, name, select);
                out.push(b':');
                match ids {
                    ListRef::Inline(ids) => encode_ids(out, ids),
                    ListRef::Temp(tag) => {
                        out.push(b'-');
                        out.extend_from_slice(tag.as_bytes());
                    }
                }
                push_slice(out, select.limit, select.offset);
            }
            Self::ObjectLists {
                object,
                limit,
                offset,
            } => {
                out.extend_from_slice(b"object_lists");
                push_int(out, i64::from(*object));
                push_slice(out, *limit, *offset);
            }
        }
    }
}

impl Encode for SetKey {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Entry { list, object } => push_pair(out, b"entry", *list, *object),
            Self::Flags { list, object } => push_pair(out, b"flags", *list, *object),
            Self::Value { list, object } => push_pair(out, b"value", *list, *object),
            Self::Temp { tag } => {
                out.extend_from_slice(b"temp");
                out.extend_from_slice(tag.as_bytes());
            }
        }
    }
}

impl Encode for DeleteKey {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Entry { list, object } => push_pair(out, b"entry", *list, *object),
            Self::List { list } => {
                out.extend_from_slice(b"list");
                push_int(out, i64::from(*list));
            }
            Self::Object { object } => {
                out.extend_from_slice(b"object");
                push_int(out, i64::from(*object));
            }
        }
    }
}

impl Encode for IncrKey {
    fn encode(&self, out: &mut Vec<u8>) {
        let name: &[u8] = if self.flags { b"flags" } else { b"value" };
        push_pair(out, name, self.list, self.object);
    }
}

impl Route for GetKey {
    fn owners(&self) -> Owners {
        match self {
            Self::Entry { list, .. }
            | Self::Flags { list, .. }
            | Self::Value { list, .. }
            | Self::Count { list, .. } => Owners::One(i64::from(*list)),
            Self::List(select) | Self::Intersect { select, .. } => {
                Owners::One(i64::from(select.list))
            }
            // Per shard: a router asks every shard (or one, with `N@`) and unions.
            Self::ObjectLists { .. } => Owners::None,
        }
    }

    fn access(&self) -> Access {
        Access::Read
    }

    fn merge(&self) -> Merge {
        Merge::Single
    }
}

impl Route for SetKey {
    fn owners(&self) -> Owners {
        match self {
            Self::Entry { list, .. } | Self::Flags { list, .. } | Self::Value { list, .. } => {
                Owners::One(i64::from(*list))
            }
            Self::Temp { .. } => Owners::None,
        }
    }

    fn access(&self) -> Access {
        match self {
            Self::Temp { .. } => Access::Session,
            _ => Access::Write,
        }
    }

    fn merge(&self) -> Merge {
        Merge::Single
    }
}

impl Route for DeleteKey {
    fn owners(&self) -> Owners {
        match self {
            Self::Entry { list, .. } | Self::List { list } => Owners::One(i64::from(*list)),
            // Diagonal: every shard (VK's `delete object…`).
            Self::Object { .. } => Owners::None,
        }
    }

    fn access(&self) -> Access {
        Access::Write
    }

    fn merge(&self) -> Merge {
        match self {
            Self::Object { .. } => Merge::AnyOk,
            _ => Merge::Single,
        }
    }
}

impl Route for IncrKey {
    fn owners(&self) -> Owners {
        Owners::One(i64::from(self.list))
    }

    fn access(&self) -> Access {
        Access::Write
    }

    fn merge(&self) -> Merge {
        Merge::Single
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn canonical(key: &[u8]) -> Vec<u8> {
        GetKey::parse(key).unwrap().to_bytes()
    }

    #[test]
    fn keys_parse_to_values_and_back() {
        assert_eq!(
            GetKey::parse(b"98@entry-5_7").unwrap(),
            GetKey::Entry {
                list: -5,
                object: 7
            }
        );
        assert_eq!(canonical(b"list5_0:0,0#10000,0"), b"list5");
        assert_eq!(canonical(b"list5_7:3,19#100,0"), b"list5_7:3,19#100");
        assert_eq!(canonical(b"list5#0"), b"list5#0");
        assert_eq!(
            canonical(b"intersect5,8:1,-2,3#5,1"),
            b"intersect5,8:1,-2,3#5,1"
        );
        assert_eq!(canonical(b"subtract5:-abc"), b"subtract5:-abc");
        assert_eq!(canonical(b"intersect5:"), b"intersect5:");
        assert_eq!(canonical(b"object_lists-9#3"), b"object_lists-9#3");
        assert_eq!(canonical(b"count5_1:1"), b"count5_1:1");
        assert_eq!(
            DeleteKey::parse(b"object-3").unwrap().to_bytes(),
            b"object-3"
        );
        assert_eq!(
            IncrKey::parse(b"flags1_2").unwrap(),
            IncrKey {
                list: 1,
                object: 2,
                flags: true
            }
        );
        assert_eq!(
            SetKey::parse(b"temp_a1").unwrap(),
            SetKey::Temp { tag: "_a1".into() }
        );
    }

    #[test]
    fn bad_keys_are_refused() {
        for key in [
            &b"entry0_1"[..],
            b"entry1_0",
            b"entry2147483648_1",
            b"entry1_2x",
            b"list1,6",
            b"list1,64",
            b"list1#10001",
            b"list1_1",
            b"intersect1",
            b"intersect1:1,x",
            b"intersect1:-a!",
            b"object_lists0",
            b"nope1",
        ] {
            assert!(GetKey::parse(key).is_err(), "{key:?}");
        }
        assert!(matches!(
            GetKey::parse(b"nope1"),
            Err(KeyError::Unknown { .. })
        ));
        let long: Vec<u8> = std::iter::once(&b"intersect1:"[..])
            .chain(std::iter::repeat_n(&b"1,"[..], TEMP_LIST_MAX))
            .chain(std::iter::once(&b"1"[..]))
            .flatten()
            .copied()
            .collect();
        assert!(GetKey::parse(&long).is_err());
        assert_eq!(
            parse_ids(&long[11..long.len() - 2]).unwrap().len(),
            TEMP_LIST_MAX
        );
        assert!(SetKey::parse(b"temp").is_err());
        assert!(SetKey::parse(&[b"temp".as_slice(), &[b'a'; 33]].concat()).is_err());
        assert!(DeleteKey::parse(b"list1_2").is_err());
        assert!(IncrKey::parse(b"entry1_2").is_err());
    }

    #[test]
    fn routes_follow_the_list() {
        let key = GetKey::parse(b"list-7").unwrap();
        assert_eq!(key.owners(), Owners::One(-7));
        assert_eq!(key.owners().shards(4), vec![3]);
        let obj = DeleteKey::parse(b"object5").unwrap();
        assert_eq!((obj.owners(), obj.merge()), (Owners::None, Merge::AnyOk));
        assert_eq!(SetKey::parse(b"tempx").unwrap().access(), Access::Session);
    }

    proptest! {
        #[test]
        fn parse_encode_round_trip(key in proptest::collection::vec(
            prop_oneof![
                Just(b'e'), Just(b'n'), Just(b't'), Just(b'r'), Just(b'y'), Just(b'l'),
                Just(b'i'), Just(b's'), Just(b'_'), Just(b':'), Just(b','), Just(b'#'),
                Just(b'-'), Just(b'1'), Just(b'0'), Just(b'9'), Just(b'a'),
            ], 0..24),
            name in 0usize..6) {
            let names: [&[u8]; 6] =
                [b"list", b"entry", b"intersect", b"count", b"object_lists", b"subtract"];
            let key = [names[name], &key].concat();
            if let Ok(parsed) = GetKey::parse(&key) {
                let encoded = parsed.to_bytes();
                prop_assert_eq!(GetKey::parse(&encoded).unwrap(), parsed);
            }
        }
    }
}
