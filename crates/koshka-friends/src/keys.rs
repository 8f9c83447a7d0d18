//! The friends engine's key grammar: typed keys with parse functions.
//!
//! Keys follow VK's idioms: `name<owner>_<id>` addressing, `#limit` / `#from,to` slices,
//! `viewer~owner:key1,key2` privacy checks, inline id lists or per-connection temp lists
//! named `-<tag>`. An optional `N@` routing prefix is stripped. The full grammar with reply
//! formats is in `docs/protocol/friends.md`.
//!
//! Parsing checks syntax and ranges only (ids, folders, slice bounds, list sizes); shard
//! ownership and limits that depend on stored data are checked by the engine.

use koshka_engine::{Error, Result};

use crate::{
    FOLDER_MAX, PRIVACY_CHECK_KEYS_MAX, PRIVACY_KEY_LEN_MAX, TEMP_TAG_LEN_MAX, USER_ID_MAX,
    USER_LIST_MAX,
};

/// Which fields a friend list reply carries per friend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `id`
    Ids,
    /// `id,mask`
    Masks,
    /// `id,mask,date`
    Full,
}

/// A `#…` slice of a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slice {
    /// No suffix: the whole list.
    All,
    /// `#limit`: the first `limit` items (`#0` = count only).
    Limit(u32),
    /// `#from,to`: 1-based, negative counts from the end, `to < from` reverses, `#0,0` = count
    /// only.
    Range(i32, i32),
}

impl Slice {
    /// The 0-based indexes of a list of `len` items this slice selects, in output order.
    #[must_use]
    pub fn indexes(self, len: usize) -> Box<dyn Iterator<Item = usize>> {
        let len_i = len as i64;
        match self {
            Self::All => Box::new(0..len),
            Self::Limit(limit) => Box::new(0..len.min(limit as usize)),
            Self::Range(0, 0) => Box::new(std::iter::empty()),
            Self::Range(from, to) => {
                let resolve = |i: i32| {
                    if i > 0 {
                        i64::from(i) - 1
                    } else {
                        len_i + i64::from(i)
                    }
                };
                let (a, b) = (resolve(from), resolve(to));
                let (lo, hi) = (a.min(b).max(0), a.max(b).min(len_i - 1));
                if lo > hi {
                    return Box::new(std::iter::empty());
                }
                // NOTE: lo and hi are within 0..len here.
                #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let range = lo as usize..=hi as usize;
                if a <= b {
                    Box::new(range)
                } else {
                    Box::new(range.rev())
                }
            }
        }
    }
}

/// A list of user ids given in a key: inline or the name of a temp list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListRef {
    /// `id,id,…`
    Inline(Vec<u32>),
    /// `-tag`: the list stored by `set temp<tag>` on this connection.
    Temp(String),
}

/// A key read with `get`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GetKey {
    /// `friends<uid>[_<folder>][#slice]`, `friends_masks…`, `friends_full…`.
    Friends {
        /// Owner.
        user: u32,
        /// Folder 1..=30, or 0 for all friends.
        folder: u8,
        /// Fields per friend.
        mode: Mode,
        /// Slice of the id-ordered list.
        slice: Slice,
    },
    /// `friendcnt<uid>[_<folder>]`.
    FriendCount {
        /// Owner.
        user: u32,
        /// Folder, 0 for all.
        folder: u8,
    },
    /// `recent_friends<uid>[#slice]`: newest first, `id,mask,date`.
    RecentFriends {
        /// Owner.
        user: u32,
        /// Slice of the newest-first list.
        slice: Slice,
    },
    /// `friend<uid>_<fid>`: the mask.
    Friend {
        /// Owner.
        user: u32,
        /// Friend.
        friend: u32,
    },
    /// `friendreq<uid>_<from>`: the requested mask.
    Request {
        /// Receiver.
        user: u32,
        /// Requester.
        from: u32,
    },
    /// `requests<uid>[#slice]`: newest first, `id,mask,date`.
    Requests {
        /// Receiver.
        user: u32,
        /// Slice of the newest-first list.
        slice: Slice,
    },
    /// `privacy<uid>_<key>`: the canonical rules.
    Privacy {
        /// Owner.
        user: u32,
        /// Privacy key.
        key: String,
    },
    /// `<viewer>~<owner>:<key>[,<key>…]`.
    Check {
        /// Viewer, 0 = anonymous.
        viewer: u32,
        /// Owner.
        owner: u32,
        /// Privacy keys.
        keys: Vec<String>,
    },
    /// `common_friends<u1>,<u2>`.
    CommonFriends {
        /// First user (shard owner of the key).
        user: u32,
        /// Second user.
        other: u32,
    },
    /// `common_friends<uid>:<list>`: the friends of `uid` among the list.
    FriendsAmong {
        /// Owner.
        user: u32,
        /// Candidate ids.
        list: ListRef,
    },
    /// `common_friends_num<uid>:<list>`: common friend counts with each listed user.
    CommonCounts {
        /// Owner.
        user: u32,
        /// Other users.
        list: ListRef,
    },
}

/// A key written with `set`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetKey {
    /// `friend<uid>_<fid>` (both halves when `fid` is local) or `friend_half<uid>_<fid>`.
    Friend {
        /// Owner.
        user: u32,
        /// Friend.
        friend: u32,
        /// One side only.
        half: bool,
    },
    /// `friends<uid>_<folder>`: folder membership in bulk.
    Folder {
        /// Owner.
        user: u32,
        /// Folder 1..=30.
        folder: u8,
    },
    /// `friendreq<uid>_<from>`.
    Request {
        /// Receiver.
        user: u32,
        /// Requester.
        from: u32,
    },
    /// `privacy<uid>_<key>`.
    Privacy {
        /// Owner.
        user: u32,
        /// Privacy key.
        key: String,
    },
    /// `temp<tag>`: a per-connection id list.
    Temp {
        /// The tag.
        tag: String,
    },
}

/// A key removed with `delete`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteKey {
    /// `friend<uid>_<fid>` or `friend_half<uid>_<fid>`.
    Friend {
        /// Owner.
        user: u32,
        /// Friend.
        friend: u32,
        /// One side only.
        half: bool,
    },
    /// `friend_cat<uid>_<folder>`: delete a folder.
    Folder {
        /// Owner.
        user: u32,
        /// Folder 1..=30.
        folder: u8,
    },
    /// `user<uid>`.
    User {
        /// The user.
        user: u32,
    },
    /// `friendreq<uid>_<from>`.
    Request {
        /// Receiver.
        user: u32,
        /// Requester.
        from: u32,
    },
    /// `requests<uid>`.
    Requests {
        /// Receiver.
        user: u32,
    },
    /// `privacy<uid>_<key>`.
    Privacy {
        /// Owner.
        user: u32,
        /// Privacy key.
        key: String,
    },
}

/// A cursor over key bytes.
struct Cursor<'a> {
    s: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn rest(&self) -> &'a [u8] {
        &self.s[self.at..]
    }

    fn digits(&mut self) -> &'a [u8] {
        let start = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
        &self.s[start..self.at]
    }

    fn number(&mut self, what: &str) -> Result<u64> {
        let digits = self.digits();
        if digits.is_empty() {
            return Err(Error::client(format!(
                "expected {what} at offset {}",
                self.at
            )));
        }
        if digits.len() > 10 {
            return Err(Error::client(format!("{what} is too long")));
        }
        Ok(digits
            .iter()
            .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0')))
    }

    fn id(&mut self, what: &str) -> Result<u32> {
        let negative = self.eat(b'-');
        let n = self.number(what)?;
        check_id(n, negative, what)
    }

    fn folder(&mut self, allow_all: bool) -> Result<u8> {
        let n = self.number("folder")?;
        let low = u64::from(!allow_all);
        if n < low || n > u64::from(FOLDER_MAX) {
            return Err(Error::client(format!(
                "folder {n} outside {low}..={FOLDER_MAX}"
            )));
        }
        // NOTE: n <= FOLDER_MAX.
        #[expect(clippy::cast_possible_truncation)]
        Ok(n as u8)
    }

    fn signed(&mut self) -> Result<i32> {
        let negative = self.eat(b'-');
        let n = self.number("slice bound")?;
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let n = if negative { -n } else { n };
        i32::try_from(n).map_err(|_| Error::client(format!("slice bound {n} out of range")))
    }

    fn slice(&mut self) -> Result<Slice> {
        if !self.eat(b'#') {
            return Ok(Slice::All);
        }
        let first = self.signed()?;
        if self.eat(b',') {
            let second = self.signed()?;
            if (first == 0) != (second == 0) {
                return Err(Error::client("slice #from,to: 0 is allowed only as #0,0"));
            }
            return Ok(Slice::Range(first, second));
        }
        u32::try_from(first)
            .map(Slice::Limit)
            .map_err(|_| Error::client("slice #limit must not be negative"))
    }

    fn end(&self) -> Result<()> {
        if self.at == self.s.len() {
            Ok(())
        } else {
            Err(Error::client(format!(
                "unexpected {:?} at offset {}",
                String::from_utf8_lossy(self.rest()),
                self.at
            )))
        }
    }

    fn underscore(&mut self, what: &str) -> Result<()> {
        if self.eat(b'_') {
            Ok(())
        } else {
            Err(Error::client(format!(
                "expected _ before {what} at offset {}",
                self.at
            )))
        }
    }
}

fn check_id(n: u64, negative: bool, what: &str) -> Result<u32> {
    if negative || n == 0 || n > u64::from(USER_ID_MAX) {
        let sign = if negative { "-" } else { "" };
        return Err(Error::client(format!(
            "{what} {sign}{n} outside 1..={USER_ID_MAX}"
        )));
    }
    // NOTE: n <= USER_ID_MAX.
    #[expect(clippy::cast_possible_truncation)]
    Ok(n as u32)
}

/// Strips an optional `N@` routing prefix and splits the name (`[a-z_]*`) from the rest.
fn split(key: &[u8]) -> (&[u8], Cursor<'_>) {
    let digits = key.iter().take_while(|b| b.is_ascii_digit()).count();
    let key = if digits > 0 && key.get(digits) == Some(&b'@') {
        &key[digits + 1..]
    } else {
        key
    };
    let name_len = key
        .iter()
        .take_while(|b| b.is_ascii_lowercase() || **b == b'_')
        .count();
    (
        &key[..name_len],
        Cursor {
            s: key,
            at: name_len,
        },
    )
}

fn unknown(name: &[u8], command: &str) -> Error {
    Error::client(format!(
        "unknown friends key {:?} for {command}",
        String::from_utf8_lossy(name)
    ))
}

/// Checks a privacy key: a latin stem followed by a decimal number or `_suffix`
/// (`album17`, `priv_phone`), at most [`PRIVACY_KEY_LEN_MAX`] bytes.
///
/// # Errors
/// [`Error::Client`] saying what is wrong.
pub fn check_privacy_key(key: &[u8]) -> Result<()> {
    if key.is_empty() || key.len() > PRIVACY_KEY_LEN_MAX {
        return Err(Error::client(format!(
            "privacy key must have 1..={PRIVACY_KEY_LEN_MAX} bytes, has {}",
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
        Err(Error::client(format!(
            "privacy key {:?} is not a latin stem followed by a number or _suffix",
            String::from_utf8_lossy(key)
        )))
    }
}

fn privacy_key(bytes: &[u8]) -> Result<String> {
    check_privacy_key(bytes)?;
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

fn check_tag(tag: &[u8]) -> Result<String> {
    if tag.is_empty()
        || tag.len() > TEMP_TAG_LEN_MAX
        || !tag.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')
    {
        return Err(Error::client(format!(
            "temp list tag must be 1..={TEMP_TAG_LEN_MAX} letters, digits or _"
        )));
    }
    Ok(String::from_utf8_lossy(tag).into_owned())
}

/// Parses a comma-separated id list (`17,239,666`; empty = no ids; surrounding ASCII
/// whitespace ignored), at most [`USER_LIST_MAX`] ids, in the given order.
///
/// # Errors
/// [`Error::Client`] for a bad id or a list that is too long.
pub fn parse_id_list(text: &[u8]) -> Result<Vec<u32>> {
    let text = text.trim_ascii();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids = Vec::new();
    for item in text.split(|b| *b == b',') {
        if ids.len() == USER_LIST_MAX {
            return Err(Error::client(format!(
                "id list longer than {USER_LIST_MAX}"
            )));
        }
        let mut cursor = Cursor { s: item, at: 0 };
        ids.push(cursor.id("user id in list")?);
        cursor.end()?;
    }
    Ok(ids)
}

fn list_ref(cursor: &mut Cursor<'_>) -> Result<ListRef> {
    if !cursor.eat(b':') {
        return Err(Error::client(format!(
            "expected : before the id list at {}",
            cursor.at
        )));
    }
    let rest = cursor.rest();
    cursor.at = cursor.s.len();
    match rest.strip_prefix(b"-") {
        Some(tag) => Ok(ListRef::Temp(check_tag(tag)?)),
        None => Ok(ListRef::Inline(parse_id_list(rest)?)),
    }
}

fn check_key(cursor: &mut Cursor<'_>) -> Result<GetKey> {
    let viewer = cursor.number("viewer id")?;
    let viewer = if viewer == 0 {
        0
    } else {
        check_id(viewer, false, "viewer id")?
    };
    if !cursor.eat(b'~') {
        return Err(Error::client(
            "privacy check must look like viewer~owner:key",
        ));
    }
    let owner = cursor.id("owner id")?;
    if !cursor.eat(b':') {
        return Err(Error::client(
            "privacy check must look like viewer~owner:key",
        ));
    }
    let mut keys = Vec::new();
    for key in cursor.rest().split(|b| *b == b',') {
        if keys.len() == PRIVACY_CHECK_KEYS_MAX {
            return Err(Error::client(format!(
                "more than {PRIVACY_CHECK_KEYS_MAX} keys in one privacy check"
            )));
        }
        keys.push(privacy_key(key)?);
    }
    Ok(GetKey::Check {
        viewer,
        owner,
        keys,
    })
}

impl GetKey {
    /// Parses a `get` key.
    ///
    /// # Errors
    /// [`Error::Client`] saying what is malformed.
    pub fn parse(key: &[u8]) -> Result<Self> {
        let (name, mut c) = split(key);
        if name.is_empty() {
            return check_key(&mut c);
        }
        let user = c.id("user id")?;
        let parsed = match name {
            b"friends" | b"friends_masks" | b"friends_full" => {
                let folder = if c.eat(b'_') { c.folder(true)? } else { 0 };
                let mode = match name {
                    b"friends" => Mode::Ids,
                    b"friends_masks" => Mode::Masks,
                    _ => Mode::Full,
                };
                Self::Friends {
                    user,
                    folder,
                    mode,
                    slice: c.slice()?,
                }
            }
            b"friendcnt" => Self::FriendCount {
                user,
                folder: if c.eat(b'_') { c.folder(true)? } else { 0 },
            },
            b"recent_friends" => Self::RecentFriends {
                user,
                slice: c.slice()?,
            },
            b"requests" => Self::Requests {
                user,
                slice: c.slice()?,
            },
            b"friend" => {
                c.underscore("friend id")?;
                Self::Friend {
                    user,
                    friend: c.id("friend id")?,
                }
            }
            b"friendreq" => {
                c.underscore("requester id")?;
                Self::Request {
                    user,
                    from: c.id("requester id")?,
                }
            }
            b"privacy" => {
                c.underscore("privacy key")?;
                let key = privacy_key(c.rest())?;
                c.at = c.s.len();
                Self::Privacy { user, key }
            }
            b"common_friends" => {
                if c.eat(b',') {
                    Self::CommonFriends {
                        user,
                        other: c.id("second user id")?,
                    }
                } else {
                    Self::FriendsAmong {
                        user,
                        list: list_ref(&mut c)?,
                    }
                }
            }
            b"common_friends_num" => Self::CommonCounts {
                user,
                list: list_ref(&mut c)?,
            },
            _ => return Err(unknown(name, "get")),
        };
        c.end()?;
        Ok(parsed)
    }
}

impl SetKey {
    /// Parses a `set` key.
    ///
    /// # Errors
    /// [`Error::Client`] saying what is malformed.
    pub fn parse(key: &[u8]) -> Result<Self> {
        let (name, mut c) = split(key);
        if name == b"temp" {
            return Ok(Self::Temp {
                tag: check_tag(c.rest())?,
            });
        }
        if name.is_empty() {
            return Err(unknown(name, "set"));
        }
        let user = c.id("user id")?;
        let parsed = match name {
            b"friend" | b"friend_half" => {
                c.underscore("friend id")?;
                Self::Friend {
                    user,
                    friend: c.id("friend id")?,
                    half: name == b"friend_half",
                }
            }
            b"friends" => {
                c.underscore("folder")?;
                Self::Folder {
                    user,
                    folder: c.folder(false)?,
                }
            }
            b"friendreq" => {
                c.underscore("requester id")?;
                Self::Request {
                    user,
                    from: c.id("requester id")?,
                }
            }
            b"privacy" => {
                c.underscore("privacy key")?;
                let key = privacy_key(c.rest())?;
                c.at = c.s.len();
                Self::Privacy { user, key }
            }
            _ => return Err(unknown(name, "set")),
        };
        c.end()?;
        Ok(parsed)
    }
}

impl DeleteKey {
    /// Parses a `delete` key.
    ///
    /// # Errors
    /// [`Error::Client`] saying what is malformed.
    pub fn parse(key: &[u8]) -> Result<Self> {
        let (name, mut c) = split(key);
        if name.is_empty() {
            return Err(unknown(name, "delete"));
        }
        let user = c.id("user id")?;
        let parsed = match name {
            b"friend" | b"friend_half" => {
                c.underscore("friend id")?;
                Self::Friend {
                    user,
                    friend: c.id("friend id")?,
                    half: name == b"friend_half",
                }
            }
            b"friend_cat" => {
                c.underscore("folder")?;
                Self::Folder {
                    user,
                    folder: c.folder(false)?,
                }
            }
            b"user" => Self::User { user },
            b"friendreq" => {
                c.underscore("requester id")?;
                Self::Request {
                    user,
                    from: c.id("requester id")?,
                }
            }
            b"requests" => Self::Requests { user },
            b"privacy" => {
                c.underscore("privacy key")?;
                let key = privacy_key(c.rest())?;
                c.at = c.s.len();
                Self::Privacy { user, key }
            }
            _ => return Err(unknown(name, "delete")),
        };
        c.end()?;
        Ok(parsed)
    }
}

/// Parses an `incr`/`decr` key: only `friend<uid>_<fid>`.
///
/// # Errors
/// [`Error::Client`] saying what is malformed.
pub fn parse_incr_key(key: &[u8]) -> Result<(u32, u32)> {
    let (name, mut c) = split(key);
    if name != b"friend" {
        return Err(unknown(name, "incr/decr"));
    }
    let user = c.id("user id")?;
    c.underscore("friend id")?;
    let friend = c.id("friend id")?;
    c.end()?;
    Ok((user, friend))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_get_keys() {
        assert_eq!(
            GetKey::parse(b"friends12_3#-5,-1").unwrap(),
            GetKey::Friends {
                user: 12,
                folder: 3,
                mode: Mode::Ids,
                slice: Slice::Range(-5, -1)
            }
        );
        assert_eq!(
            GetKey::parse(b"7@friends_full12#10").unwrap(),
            GetKey::Friends {
                user: 12,
                folder: 0,
                mode: Mode::Full,
                slice: Slice::Limit(10)
            }
        );
        assert_eq!(
            GetKey::parse(b"5~12:album17,priv_phone").unwrap(),
            GetKey::Check {
                viewer: 5,
                owner: 12,
                keys: vec!["album17".into(), "priv_phone".into()]
            }
        );
        assert_eq!(
            GetKey::parse(b"common_friends_num3:-ab1").unwrap(),
            GetKey::CommonCounts {
                user: 3,
                list: ListRef::Temp("ab1".into())
            }
        );
        assert_eq!(
            GetKey::parse(b"common_friends3:4,5").unwrap(),
            GetKey::FriendsAmong {
                user: 3,
                list: ListRef::Inline(vec![4, 5])
            }
        );
        assert_eq!(
            GetKey::parse(b"common_friends3,4").unwrap(),
            GetKey::CommonFriends { user: 3, other: 4 }
        );
    }

    #[test]
    fn rejects_bad_keys() {
        for key in [
            &b"friends0"[..],
            b"friends-1",
            b"friends4294967296",
            b"friends12_31",
            b"friend12",
            b"friend12_",
            b"friend12_0",
            b"friends12#-1",
            b"friends12#1,0",
            b"privacy1_album",
            b"privacy1_Album1",
            b"privacy1_",
            b"nosuch1",
            b"",
            b"1~2",
            b"1~2:",
            b"1~0:album1",
            b"friends12x",
        ] {
            assert!(
                matches!(GetKey::parse(key), Err(Error::Client(_))),
                "{:?}",
                String::from_utf8_lossy(key)
            );
        }
        assert!(SetKey::parse(b"friends1_0").is_err());
        assert!(DeleteKey::parse(b"friend_cat1_31").is_err());
        assert!(SetKey::parse(b"temp").is_err());
    }

    #[test]
    fn slices_select_indexes() {
        let pick = |s: Slice, n| s.indexes(n).collect::<Vec<_>>();
        assert_eq!(pick(Slice::All, 3), vec![0, 1, 2]);
        assert_eq!(pick(Slice::Limit(2), 3), vec![0, 1]);
        assert_eq!(pick(Slice::Range(-1, -2), 3), vec![2, 1]);
        assert_eq!(pick(Slice::Range(2, 10), 3), vec![1, 2]);
        assert_eq!(pick(Slice::Range(0, 0), 3), Vec::<usize>::new());
        assert_eq!(pick(Slice::Range(5, 9), 3), Vec::<usize>::new());
        assert_eq!(pick(Slice::Range(-1, -1), 0), Vec::<usize>::new());
    }
}
