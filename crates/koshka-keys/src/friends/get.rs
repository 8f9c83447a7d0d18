//! [`GetKey`]: the `get` keys of the friends grammar.

use std::borrow::Cow;

use super::PRIVACY_CHECK_KEYS_MAX;
use super::{check_privacy_key, check_temp_tag, underscore, unknown, user, ListRef, Mode};
use super::{folder, parse_id_list, privacy_key_ref, push_name, push_pair, push_privacy, start};
use crate::idiom::{self, push_uint, Cursor, Slice};
use crate::route::{Access, Merge, Owners, Route};
use crate::{Encode, KeyError, Result};

/// A key read with `get`. Parsing borrows the privacy key and the keys of a privacy check from
/// the key text (`'a`), so reading them allocates nothing; [`GetKey::into_owned`] detaches a
/// parsed key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GetKey<'a> {
    /// `friends<uid>[_<folder>][#slice]`, `friends_masks…`, `friends_full…`,
    /// `friends_packed…`.
    Friends {
        /// Owner.
        user: u32,
        /// Folder 1..=30, or 0 for all friends.
        folder: u8,
        /// Fields per friend.
        mode: Mode,
        /// Slice of the id-ordered list (bounds within `i32`).
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
        key: Cow<'a, str>,
    },
    /// `<viewer>~<owner>:<key>[,<key>…]`.
    Check {
        /// Viewer, 0 = anonymous.
        viewer: u32,
        /// Owner.
        owner: u32,
        /// Privacy keys (at least one).
        keys: PrivacyKeys<'a>,
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

/// The keys of a privacy check, `key,key,…` ([`GetKey::Check`]): 1..=[`PRIVACY_CHECK_KEYS_MAX`]
/// keys, each valid for [`check_privacy_key`], kept as the text they came in. Parsing
/// validates every key once and borrows the text, so a check allocates nothing;
/// [`PrivacyKeys::iter`] splits it again on demand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivacyKeys<'a> {
    /// `key,key,…`, already validated.
    text: Cow<'a, str>,
    /// How many keys `text` holds.
    len: usize,
}

impl<'a> PrivacyKeys<'a> {
    /// Validates `key,key,…`.
    ///
    /// # Errors
    /// [`KeyError::Malformed`] for a bad key or more than [`PRIVACY_CHECK_KEYS_MAX`] keys.
    pub fn parse(text: &'a [u8]) -> Result<Self> {
        let mut len = 0;
        for key in text.split(|b| *b == b',') {
            if len == PRIVACY_CHECK_KEYS_MAX {
                return Err(KeyError::malformed(format!(
                    "more than {PRIVACY_CHECK_KEYS_MAX} keys in one privacy check"
                )));
            }
            check_privacy_key(key)?;
            len += 1;
        }
        // Every key is ASCII (checked above), and so are the commas between them.
        let text = std::str::from_utf8(text)
            .map_err(|_| KeyError::malformed("privacy keys are not ASCII"))?;
        Ok(Self {
            text: Cow::Borrowed(text),
            len,
        })
    }

    /// The keys of a check a client builds.
    ///
    /// # Errors
    /// As [`PrivacyKeys::parse`].
    pub fn new<K: AsRef<str>>(keys: impl IntoIterator<Item = K>) -> Result<PrivacyKeys<'static>> {
        let mut text = String::new();
        for (i, key) in keys.into_iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(key.as_ref());
        }
        let len = PrivacyKeys::parse(text.as_bytes())?.len;
        Ok(PrivacyKeys {
            text: Cow::Owned(text),
            len,
        })
    }

    /// The keys, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        self.text.split(',')
    }

    /// Number of keys (at least one).
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a check names at least one key.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The keys as given, `key,key,…`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The same keys, owning their text.
    #[must_use]
    pub fn into_owned(self) -> PrivacyKeys<'static> {
        PrivacyKeys {
            text: Cow::Owned(self.text.into_owned()),
            len: self.len,
        }
    }
}

/// `:` then an inline id list or `-tag`, to the end of the key.
fn list_ref(cursor: &mut Cursor<'_>) -> Result<ListRef> {
    if !cursor.eat(b':') {
        return Err(KeyError::malformed(format!(
            "expected : before the id list at {}",
            cursor.at()
        )));
    }
    let rest = cursor.take_rest();
    match rest.strip_prefix(b"-") {
        Some(tag) => Ok(ListRef::Temp(check_temp_tag(tag)?)),
        None => Ok(ListRef::Inline(parse_id_list(rest)?)),
    }
}

fn check_key<'a>(cursor: &mut Cursor<'a>) -> Result<GetKey<'a>> {
    let (viewer, owner, keys) = idiom::parse_check(cursor)?;
    let keys = PrivacyKeys::parse(keys)?;
    // NOTE: both ids are within 0..=ID_MAX.
    let id = |id: i64| u32::try_from(id).unwrap_or(u32::MAX);
    Ok(GetKey::Check {
        viewer: id(viewer),
        owner: id(owner),
        keys,
    })
}

fn folder_suffix(c: &mut Cursor<'_>) -> Result<u8> {
    if c.eat(b'_') {
        folder(c, true)
    } else {
        Ok(0)
    }
}

impl<'a> GetKey<'a> {
    /// Parses a `get` key, borrowing from it.
    ///
    /// # Errors
    /// [`KeyError`] saying what is malformed; [`KeyError::Unknown`] for an unknown name.
    pub fn parse(key: &'a [u8]) -> Result<Self> {
        let (name, mut c) = start(key);
        if name.is_empty() {
            return check_key(&mut c);
        }
        let user = user(&mut c, "user id")?;
        let parsed = match name {
            b"friends" | b"friends_masks" | b"friends_full" | b"friends_packed" => Self::Friends {
                user,
                folder: folder_suffix(&mut c)?,
                mode: match name {
                    b"friends" => Mode::Ids,
                    b"friends_masks" => Mode::Masks,
                    b"friends_packed" => Mode::Packed,
                    _ => Mode::Full,
                },
                slice: c.slice(Slice::All)?,
            },
            b"friendcnt" => Self::FriendCount {
                user,
                folder: folder_suffix(&mut c)?,
            },
            b"recent_friends" => Self::RecentFriends {
                user,
                slice: c.slice(Slice::All)?,
            },
            b"requests" => Self::Requests {
                user,
                slice: c.slice(Slice::All)?,
            },
            b"friend" => {
                underscore(&mut c, "friend id")?;
                Self::Friend {
                    user,
                    friend: super::user(&mut c, "friend id")?,
                }
            }
            b"friendreq" => {
                underscore(&mut c, "requester id")?;
                Self::Request {
                    user,
                    from: super::user(&mut c, "requester id")?,
                }
            }
            b"privacy" => Self::Privacy {
                user,
                key: Cow::Borrowed(privacy_key_ref(&mut c)?),
            },
            b"common_friends" => {
                if c.eat(b',') {
                    Self::CommonFriends {
                        user,
                        other: super::user(&mut c, "second user id")?,
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

    /// The same key, owning whatever it borrowed from the parsed text.
    #[must_use]
    pub fn into_owned(self) -> GetKey<'static> {
        match self {
            Self::Friends {
                user,
                folder,
                mode,
                slice,
            } => GetKey::Friends {
                user,
                folder,
                mode,
                slice,
            },
            Self::FriendCount { user, folder } => GetKey::FriendCount { user, folder },
            Self::RecentFriends { user, slice } => GetKey::RecentFriends { user, slice },
            Self::Friend { user, friend } => GetKey::Friend { user, friend },
            Self::Request { user, from } => GetKey::Request { user, from },
            Self::Requests { user, slice } => GetKey::Requests { user, slice },
            Self::Privacy { user, key } => GetKey::Privacy {
                user,
                key: Cow::Owned(key.into_owned()),
            },
            Self::Check {
                viewer,
                owner,
                keys,
            } => GetKey::Check {
                viewer,
                owner,
                keys: keys.into_owned(),
            },
            Self::CommonFriends { user, other } => GetKey::CommonFriends { user, other },
            Self::FriendsAmong { user, list } => GetKey::FriendsAmong { user, list },
            Self::CommonCounts { user, list } => GetKey::CommonCounts { user, list },
        }
    }
}

impl Encode for GetKey<'_> {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Friends {
                user,
                folder,
                mode,
                slice,
            } => {
                let name: &[u8] = match mode {
                    Mode::Ids => b"friends",
                    Mode::Masks => b"friends_masks",
                    Mode::Full => b"friends_full",
                    Mode::Packed => b"friends_packed",
                };
                push_name(out, name, *user);
                push_folder(out, *folder);
                slice.encode(out);
            }
            Self::FriendCount { user, folder } => {
                push_name(out, b"friendcnt", *user);
                push_folder(out, *folder);
            }
            Self::RecentFriends { user, slice } => {
                push_name(out, b"recent_friends", *user);
                slice.encode(out);
            }
            Self::Requests { user, slice } => {
                push_name(out, b"requests", *user);
                slice.encode(out);
            }
            Self::Friend { user, friend } => push_pair(out, b"friend", *user, *friend),
            Self::Request { user, from } => push_pair(out, b"friendreq", *user, *from),
            Self::Privacy { user, key } => push_privacy(out, *user, key),
            Self::Check {
                viewer,
                owner,
                keys,
            } => idiom::encode_check(out, *viewer, *owner, keys.iter()),
            Self::CommonFriends { user, other } => {
                push_name(out, b"common_friends", *user);
                out.push(b',');
                push_uint(out, u64::from(*other));
            }
            Self::FriendsAmong { user, list } => {
                push_name(out, b"common_friends", *user);
                out.push(b':');
                list.encode(out);
            }
            Self::CommonCounts { user, list } => {
                push_name(out, b"common_friends_num", *user);
                out.push(b':');
                list.encode(out);
            }
        }
    }
}

/// Appends `_<folder>` unless it is 0 (all friends).
fn push_folder(out: &mut Vec<u8>, folder: u8) {
    if folder != 0 {
        out.push(b'_');
        push_uint(out, u64::from(folder));
    }
}

impl Route for GetKey<'_> {
    fn owners(&self) -> Owners {
        match self {
            Self::Check { viewer, owner, .. } => {
                if *viewer == 0 || viewer == owner {
                    Owners::One(i64::from(*owner))
                } else {
                    Owners::Two(i64::from(*owner), i64::from(*viewer))
                }
            }
            Self::CommonFriends { user, other } => Owners::Two(i64::from(*user), i64::from(*other)),
            Self::CommonCounts {
                user,
                list: ListRef::Inline(ids),
            } => Owners::List(
                std::iter::once(*user)
                    .chain(ids.iter().copied())
                    .map(i64::from)
                    .collect(),
            ),
            Self::Friends { user, .. }
            | Self::FriendCount { user, .. }
            | Self::RecentFriends { user, .. }
            | Self::Friend { user, .. }
            | Self::Request { user, .. }
            | Self::Requests { user, .. }
            | Self::Privacy { user, .. }
            | Self::FriendsAmong { user, .. }
            | Self::CommonCounts { user, .. } => Owners::One(i64::from(*user)),
        }
    }

    fn access(&self) -> Access {
        Access::Read
    }

    fn merge(&self) -> Merge {
        match self {
            Self::Check { .. } => Merge::PrivacyCheck,
            Self::CommonFriends { .. } => Merge::IntersectIds,
            Self::CommonCounts { .. } => Merge::SumCounts,
            _ => Merge::Single,
        }
    }
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
                slice: Slice::Range { from: -5, to: -1 }
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
                keys: PrivacyKeys::new(["album17", "priv_phone"]).unwrap()
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
            b"friends12#1,2147483648",
            b"privacy1_album",
            b"privacy1_Album1",
            b"privacy1_",
            b"nosuch1",
            b"",
            b"1~2",
            b"1~2:",
            b"1~0:album1",
            b"friends12x",
            b"common_friends3:-a-b",
        ] {
            assert!(
                matches!(
                    GetKey::parse(key),
                    Err(KeyError::Malformed { .. } | KeyError::Unknown { .. })
                ),
                "{:?}",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn encodes_canonical_spellings() {
        for (key, canonical) in [
            (&b"friends5_0"[..], &b"friends5"[..]),
            (b"98@friendcnt5_0", b"friendcnt5"),
            (b"common_friends5: 6,7 ", b"common_friends5:6,7"),
            (b"friends_masks5_2#0", b"friends_masks5_2#0"),
            (b"friends_full5#0,0", b"friends_full5#0,0"),
            (b"friends_packed5_2#3", b"friends_packed5_2#3"),
            (b"0~5:album1,priv_x_1", b"0~5:album1,priv_x_1"),
        ] {
            let parsed = GetKey::parse(key).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&parsed.to_bytes()),
                String::from_utf8_lossy(canonical)
            );
            assert_eq!(GetKey::parse(&parsed.to_bytes()).unwrap(), parsed);
        }
    }

    #[test]
    fn routes() {
        let check = GetKey::parse(b"5~12:album1").unwrap();
        assert_eq!(check.owners(), Owners::Two(12, 5));
        assert_eq!(check.merge(), Merge::PrivacyCheck);
        assert_eq!(
            GetKey::parse(b"0~12:album1").unwrap().owners(),
            Owners::One(12)
        );
        let counts = GetKey::parse(b"common_friends_num3:4,5").unwrap();
        assert_eq!(counts.owners(), Owners::List(vec![3, 4, 5]));
        assert_eq!(counts.merge(), Merge::SumCounts);
        let common = GetKey::parse(b"common_friends3,4").unwrap();
        assert_eq!(common.owners(), Owners::Two(3, 4));
        assert_eq!(common.merge(), Merge::IntersectIds);
        assert_eq!(common.access(), Access::Read);
    }
}
