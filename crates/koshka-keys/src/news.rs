//! The news grammar (VK's news-engine idioms): events per author, type masks, the raw
//! per-shard feed query and notifications. [`GetKey`], [`SetKey`], [`DeleteKey`]; the
//! client-facing description, with values and replies, is `docs/protocol/news.md`.
//!
//! Authors are VK ids: users positive, groups negative. Event keys route by their author,
//! notification keys by their recipient. The raw query `raw_updates…:<authors>` names many
//! authors: a router sends each shard only its own authors (or the whole list: a node skips
//! authors of other shards) and heap-merges the replies by `(date, author, id)` descending.
//!
//! # Canonical spellings
//! `#100` (the default raw limit), `#20` (the default notification limit), a full type mask
//! (`_4294967295` for notifications) and a `,0` grouping are left out. An `N@` prefix is
//! dropped.

use crate::idiom::{self, push_int, push_uint, Cursor, Dialect, ID_MAX};
use crate::lists::{check_temp_tag, parse_ids, ListRef};
use crate::{Access, Encode, KeyError, Merge, Owners, Result, Route};

/// Default number of events a raw query returns.
pub const RAW_LIMIT_DEFAULT: u32 = 100;
/// Most events one raw query may ask for (`#limit` above it fails with `CLIENT_ERROR`).
pub const RAW_LIMIT_MAX: u32 = 10_000;
/// Default number of notifications (or groups) a notification read returns.
pub const NOTIFY_LIMIT_DEFAULT: u32 = 20;
/// Most notifications (or groups) one read may ask for.
pub const NOTIFY_LIMIT_MAX: u32 = 1000;
/// Most values a group lists per field (`,grouping`).
pub const GROUPING_MAX: u32 = 100;
/// Event and notification types are `1..=TYPE_MAX` (one bit each in a 32-bit mask).
pub const TYPE_MAX: u32 = 31;
/// A mask of every type.
pub const ALL_TYPES: u32 = u32::MAX;

/// The raw per-shard feed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawQuery {
    /// Types wanted: bit `t` for type `t`.
    pub types: u32,
    /// Oldest date wanted (inclusive).
    pub from: u32,
    /// Newest date wanted (inclusive), unless `before` is set.
    pub to: u32,
    /// A cursor: only events strictly older than `(to, author, id)` in the feed order.
    pub before: Option<(i32, u32)>,
    /// Most events returned.
    pub limit: u32,
    /// The authors.
    pub authors: ListRef,
}

/// A retrieval key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GetKey {
    /// `mask<author>` → the types the author hides from friends.
    Mask {
        /// The author.
        author: i32,
    },
    /// `raw_updates<types>_<from>,<to>[,<author>,<id>][#<limit>]:<ids|-tag>`.
    Raw(RawQuery),
    /// `notify<uid>[_<types>][,<grouping>][#<limit>]` → JSON, newest first.
    Notify {
        /// The recipient.
        user: i32,
        /// Types wanted.
        types: u32,
        /// 0: one object per notification; `g`: grouped, up to `g` values per field.
        grouping: u32,
        /// Most notifications (groups) returned.
        limit: u32,
    },
    /// `notify_count<uid>` → the number of visible notifications.
    NotifyCount {
        /// The recipient.
        user: i32,
    },
}

/// A `set` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetKey {
    /// `update<author>` with value `type,user,group,owner,place,item`: a new event.
    Update {
        /// The author.
        author: i32,
    },
    /// `mask<author>` with a type mask: the types hidden from friends.
    Mask {
        /// The author.
        author: i32,
    },
    /// `notify<uid>` with value `type,user,owner,place,item`: a new notification.
    Notify {
        /// The recipient.
        user: i32,
    },
    /// `temp<tag>` with value `id,id,…`: a per-connection author list.
    Temp {
        /// The tag.
        tag: String,
    },
}

/// A `delete` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteKey {
    /// `updates<author>`: every event and the mask of the author.
    Updates {
        /// The author.
        author: i32,
    },
    /// `notify<uid>_<id>` hides one notification; `undelete_notify<uid>_<id>` shows it again.
    Notify {
        /// The recipient.
        user: i32,
        /// The notification id.
        id: u32,
        /// `undelete_…`.
        show: bool,
    },
    /// `notify_user<uid>_<user>` hides every notification from `user` (present and future);
    /// `undelete_notify_user<uid>_<user>` shows them again.
    NotifyUser {
        /// The recipient.
        user: i32,
        /// The user hidden.
        from: i32,
        /// `undelete_…`.
        show: bool,
    },
    /// `notifications<uid>`: every notification of the recipient.
    Notifications {
        /// The recipient.
        user: i32,
    },
}

fn unknown(name: &[u8], command: &str) -> KeyError {
    KeyError::unknown(format!(
        "unknown news key {:?} for {command}",
        String::from_utf8_lossy(name)
    ))
}

fn id(c: &mut Cursor<'_>, what: &str) -> Result<i32> {
    let value = c.int(what)?;
    if value == 0 || value.unsigned_abs() > ID_MAX.unsigned_abs() {
        return Err(KeyError::malformed(format!(
            "{what} {value} must be in 1..={ID_MAX} or -{ID_MAX}..=-1"
        )));
    }
    // NOTE: |value| <= i32::MAX.
    Ok(i32::try_from(value).unwrap_or(i32::MAX))
}

fn limit(c: &mut Cursor<'_>, default: u32, max: u32) -> Result<u32> {
    if !c.eat(b'#') {
        return Ok(default);
    }
    let limit = c.u32("limit")?;
    if limit > max {
        return Err(KeyError::malformed(format!("limit {limit} exceeds {max}")));
    }
    Ok(limit)
}

fn id_pair(c: &mut Cursor<'_>, second: &str) -> Result<(i32, i64)> {
    let user = id(c, "user id")?;
    c.expect(b'_')?;
    let other = c.int(second)?;
    c.end()?;
    Ok((user, other))
}

impl GetKey {
    /// Parses a retrieval key.
    ///
    /// # Errors
    /// [`KeyError::Unknown`] for a name the grammar lacks, else [`KeyError::Malformed`].
    pub fn parse(key: &[u8]) -> Result<Self> {
        let (name, mut c) = idiom::split(key, Dialect::Messages);
        let key = match name {
            b"mask" => Self::Mask {
                author: id(&mut c, "author id")?,
            },
            b"raw_updates" => {
                let types = c.u32("type mask")?;
                c.expect(b'_')?;
                let from = c.u32("start date")?;
                c.expect(b',')?;
                let to = c.u32("end date")?;
                let before = if c.eat(b',') {
                    let author = id(&mut c, "cursor author")?;
                    c.expect(b',')?;
                    Some((author, c.u32("cursor id")?))
                } else {
                    None
                };
                let limit = limit(&mut c, RAW_LIMIT_DEFAULT, RAW_LIMIT_MAX)?;
                c.expect(b':')?;
                let list = c.take_rest();
                let authors = match list.strip_prefix(b"-") {
                    Some(tag) if !tag.first().is_some_and(u8::is_ascii_digit) => {
                        ListRef::Temp(check_temp_tag(tag)?)
                    }
                    _ => ListRef::Inline(parse_ids(list)?),
                };
                return Ok(Self::Raw(RawQuery {
                    types,
                    from,
                    to,
                    before,
                    limit,
                    authors,
                }));
            }
            b"notify" => {
                let user = id(&mut c, "user id")?;
                let types = if c.eat(b'_') {
                    c.u32("type mask")?
                } else {
                    ALL_TYPES
                };
                let grouping = if c.eat(b',') {
                    let g = c.u32("grouping")?;
                    if g > GROUPING_MAX {
                        return Err(KeyError::malformed(format!(
                            "grouping {g} exceeds {GROUPING_MAX}"
                        )));
                    }
                    g
                } else {
                    0
                };
                let limit = limit(&mut c, NOTIFY_LIMIT_DEFAULT, NOTIFY_LIMIT_MAX)?;
                Self::Notify {
                    user,
                    types,
                    grouping,
                    limit,
                }
            }
            b"notify_count" => Self::NotifyCount {
                user: id(&mut c, "user id")?,
            },
            _ => return Err(unknown(name, "get")),
        };
        c.end()?;
        Ok(key)
    }
}

impl SetKey {
    /// Parses a `set` key (values are the engine's: see `docs/protocol/news.md`).
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
        let key = match name {
            b"update" => Self::Update {
                author: id(&mut c, "author id")?,
            },
            b"mask" => Self::Mask {
                author: id(&mut c, "author id")?,
            },
            b"notify" => Self::Notify {
                user: id(&mut c, "user id")?,
            },
            _ => return Err(unknown(name, "set")),
        };
        c.end()?;
        Ok(key)
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
            b"updates" => Self::Updates {
                author: id(&mut c, "author id")?,
            },
            b"notifications" => Self::Notifications {
                user: id(&mut c, "user id")?,
            },
            b"notify" | b"undelete_notify" => {
                let (user, n) = id_pair(&mut c, "notification id")?;
                let id = u32::try_from(n).map_err(|_| {
                    KeyError::malformed(format!("notification id {n} must fit in 0..=2^32-1"))
                })?;
                return Ok(Self::Notify {
                    user,
                    id,
                    show: name == b"undelete_notify",
                });
            }
            b"notify_user" | b"undelete_notify_user" => {
                let user = id(&mut c, "user id")?;
                c.expect(b'_')?;
                let from = id(&mut c, "hidden user id")?;
                c.end()?;
                return Ok(Self::NotifyUser {
                    user,
                    from,
                    show: name == b"undelete_notify_user",
                });
            }
            _ => return Err(unknown(name, "delete")),
        };
        c.end()?;
        Ok(key)
    }
}

fn push_name(out: &mut Vec<u8>, name: &[u8], id: i32) {
    out.extend_from_slice(name);
    push_int(out, i64::from(id));
}

fn push_limit(out: &mut Vec<u8>, limit: u32, default: u32) {
    if limit != default {
        out.push(b'#');
        push_uint(out, u64::from(limit));
    }
}

impl Encode for GetKey {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Mask { author } => push_name(out, b"mask", *author),
            Self::Raw(q) => {
                out.extend_from_slice(b"raw_updates");
                push_uint(out, u64::from(q.types));
                out.push(b'_');
                push_uint(out, u64::from(q.from));
                out.push(b',');
                push_uint(out, u64::from(q.to));
                if let Some((author, id)) = q.before {
                    out.push(b',');
                    push_int(out, i64::from(author));
                    out.push(b',');
                    push_uint(out, u64::from(id));
                }
                push_limit(out, q.limit, RAW_LIMIT_DEFAULT);
                out.push(b':');
                match &q.authors {
                    ListRef::Inline(ids) => {
                        for (i, id) in ids.iter().enumerate() {
                            if i > 0 {
                                out.push(b',');
                            }
                            push_int(out, i64::from(*id));
                        }
                    }
                    ListRef::Temp(tag) => {
                        out.push(b'-');
                        out.extend_from_slice(tag.as_bytes());
                    }
                }
            }
            Self::Notify {
                user,
                types,
                grouping,
                limit,
            } => {
                push_name(out, b"notify", *user);
                if *types != ALL_TYPES {
                    out.push(b'_');
                    push_uint(out, u64::from(*types));
                }
                if *grouping != 0 {
                    out.push(b',');
                    push_uint(out, u64::from(*grouping));
                }
                push_limit(out, *limit, NOTIFY_LIMIT_DEFAULT);
            }
            Self::NotifyCount { user } => push_name(out, b"notify_count", *user),
        }
    }
}

impl Encode for SetKey {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Update { author } => push_name(out, b"update", *author),
            Self::Mask { author } => push_name(out, b"mask", *author),
            Self::Notify { user } => push_name(out, b"notify", *user),
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
            Self::Updates { author } => push_name(out, b"updates", *author),
            Self::Notifications { user } => push_name(out, b"notifications", *user),
            Self::Notify { user, id, show } => {
                let name: &[u8] = if *show { b"undelete_notify" } else { b"notify" };
                push_name(out, name, *user);
                out.push(b'_');
                push_uint(out, u64::from(*id));
            }
            Self::NotifyUser { user, from, show } => {
                let name: &[u8] = if *show {
                    b"undelete_notify_user"
                } else {
                    b"notify_user"
                };
                push_name(out, name, *user);
                out.push(b'_');
                push_int(out, i64::from(*from));
            }
        }
    }
}

impl Route for GetKey {
    fn owners(&self) -> Owners {
        match self {
            Self::Mask { author } => Owners::One(i64::from(*author)),
            Self::Notify { user, .. } | Self::NotifyCount { user } => Owners::One(i64::from(*user)),
            Self::Raw(q) => match &q.authors {
                ListRef::Inline(ids) => Owners::List(ids.iter().map(|&id| i64::from(id)).collect()),
                ListRef::Temp(_) => Owners::None,
            },
        }
    }

    fn access(&self) -> Access {
        Access::Read
    }

    fn merge(&self) -> Merge {
        // The raw query is per shard: a node answers for its own authors and skips the rest.
        // Merging the shards (heap merge by (date, author, id) descending) is the feed key's
        // work in the proxy; see docs/protocol/news.md.
        Merge::Single
    }
}

impl Route for SetKey {
    fn owners(&self) -> Owners {
        match self {
            Self::Update { author } | Self::Mask { author } => Owners::One(i64::from(*author)),
            Self::Notify { user } => Owners::One(i64::from(*user)),
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
            Self::Updates { author } => Owners::One(i64::from(*author)),
            Self::Notifications { user }
            | Self::Notify { user, .. }
            | Self::NotifyUser { user, .. } => Owners::One(i64::from(*user)),
        }
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

    #[test]
    fn keys_parse_and_encode() {
        let raw = GetKey::parse(b"7@raw_updates6_100,200#5:1,-2,3").unwrap();
        assert_eq!(
            raw,
            GetKey::Raw(RawQuery {
                types: 6,
                from: 100,
                to: 200,
                before: None,
                limit: 5,
                authors: ListRef::Inline(vec![1, -2, 3]),
            })
        );
        assert_eq!(raw.to_bytes(), b"raw_updates6_100,200#5:1,-2,3");
        assert_eq!(raw.owners(), Owners::List(vec![1, -2, 3]));
        let cursor = GetKey::parse(b"raw_updates4294967295_0,200,-2,17#100:-fr").unwrap();
        assert_eq!(cursor.to_bytes(), b"raw_updates4294967295_0,200,-2,17:-fr");
        assert_eq!(
            GetKey::parse(b"notify5_4294967295,0#20")
                .unwrap()
                .to_bytes(),
            b"notify5"
        );
        assert_eq!(
            GetKey::parse(b"notify5_8,3#7").unwrap().to_bytes(),
            b"notify5_8,3#7"
        );
        assert_eq!(
            DeleteKey::parse(b"undelete_notify_user5_-9").unwrap(),
            DeleteKey::NotifyUser {
                user: 5,
                from: -9,
                show: true
            }
        );
        assert_eq!(
            DeleteKey::parse(b"notify5_0").unwrap().to_bytes(),
            b"notify5_0"
        );
        assert_eq!(
            SetKey::parse(b"update-20").unwrap(),
            SetKey::Update { author: -20 }
        );
        assert_eq!(SetKey::parse(b"tempab").unwrap().access(), Access::Session);
    }

    #[test]
    fn bad_keys_are_refused() {
        for key in [
            &b"raw_updates1_2:1"[..],
            b"raw_updates1_2,3#10001:1",
            b"raw_updates1_2,3,0,1:1",
            b"raw_updates1_2,3:1,0",
            b"raw_updates1_2,3",
            b"notify0",
            b"notify5,101",
            b"notify5#1001",
            b"mask1x",
            b"feed1",
        ] {
            assert!(GetKey::parse(key).is_err(), "{key:?}");
        }
        assert!(DeleteKey::parse(b"notify5_-1").is_err());
        assert!(DeleteKey::parse(b"notify5").is_err());
        assert!(SetKey::parse(b"update0").is_err());
        assert!(SetKey::parse(b"temp9a").is_err());
    }

    proptest! {
        #[test]
        fn parse_encode_round_trip(key in proptest::collection::vec(
            prop_oneof![
                Just(b'_'), Just(b':'), Just(b','), Just(b'#'), Just(b'-'), Just(b'1'),
                Just(b'0'), Just(b'9'), Just(b'a'),
            ], 0..24),
            name in 0usize..5) {
            let names: [&[u8]; 5] =
                [b"raw_updates", b"notify", b"mask", b"notify_count", b"raw_updates1_"];
            let key = [names[name], &key].concat();
            if let Ok(parsed) = GetKey::parse(&key) {
                let encoded = parsed.to_bytes();
                prop_assert_eq!(GetKey::parse(&encoded).unwrap(), parsed);
            }
            if let Ok(parsed) = DeleteKey::parse(&key) {
                prop_assert_eq!(DeleteKey::parse(&parsed.to_bytes()).unwrap(), parsed);
            }
        }
    }
}
