//! [`GetKey`]: the `get` keys of the friends grammar.

use super::{check_temp_tag, underscore, unknown, user, ListRef, Mode};
use super::{folder, parse_id_list, privacy_key, push_name, push_pair, push_privacy, start};
use super::{PRIVACY_CHECK_KEYS_MAX, PRIVACY_KEY_LEN_MAX};
use crate::idiom::{self, push_uint, Cursor, Slice};
use crate::route::{Access, Merge, Owners, Route};
use crate::{Encode, KeyError, Result};

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
        key: String,
    },
    /// `<viewer>~<owner>:<key>[,<key>…]`.
    Check {
        /// Viewer, 0 = anonymous.
        viewer: u32,
        /// Owner.
        owner: u32,
        /// Privacy keys (at least one).
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

fn check_key(cursor: &mut Cursor<'_>) -> Result<GetKey> {
    let (viewer, owner, keys) =
        idiom::parse_check(cursor, PRIVACY_CHECK_KEYS_MAX, PRIVACY_KEY_LEN_MAX)?;
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

impl GetKey {
    /// Parses a `get` key.
    ///
    /// # Errors
    /// [`KeyError`] saying what is malformed; [`KeyError::Unknown`] for an unknown name.
    pub fn parse(key: &[u8]) -> Result<Self> {
        let (name, mut c) = start(key);
        if name.is_empty() {
            return check_key(&mut c);
        }
        let user = user(&mut c, "user id")?;
        let parsed = match name {
            b"friends" | b"friends_masks" | b"friends_full" => Self::Friends {
                user,
                folder: folder_suffix(&mut c)?,
                mode: match name {
                    b"friends" => Mode::Ids,
                    b"friends_masks" => Mode::Masks,
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
                key: privacy_key(&mut c)?,
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
}

impl Encode for GetKey {
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
            } => idiom::encode_check(out, *viewer, *owner, keys),
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

impl Route for GetKey {
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
