//! [`SetKey`], [`DeleteKey`] and [`IncrKey`]: the keys of the friends grammar that change data.
//! Their values (masks, rule strings, id lists) are checked by the engine.

use super::{check_temp_tag, folder, privacy_key, push_name, push_pair, push_privacy};
use super::{start, underscore, unknown, user};
use crate::idiom::Cursor;
use crate::route::{Access, Merge, Owners, Route};
use crate::{Encode, Result};

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
    /// `temp<tag>`: a per-connection id list; the tag is 1..=32 letters, digits or `_`.
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

/// The key of `incr`/`decr`: `friend<uid>_<fid>` (OR / AND-NOT folder bits into the mask).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncrKey {
    /// Owner.
    pub user: u32,
    /// Friend.
    pub friend: u32,
}

/// `_<id>` after the owner.
fn second(c: &mut Cursor<'_>, what: &str) -> Result<u32> {
    underscore(c, what)?;
    user(c, what)
}

/// `_<folder>` (1..=30) after the owner.
fn folder_of(c: &mut Cursor<'_>) -> Result<u8> {
    underscore(c, "folder")?;
    folder(c, false)
}

impl SetKey {
    /// Parses a `set` key.
    ///
    /// # Errors
    /// [`crate::KeyError`] saying what is malformed.
    pub fn parse(key: &[u8]) -> Result<Self> {
        let (name, mut c) = start(key);
        // `temp<tag>`: the tag may start with a letter or `_`, which the name would swallow.
        if name.starts_with(b"temp") {
            c.seek(b"temp".len());
            return Ok(Self::Temp {
                tag: check_temp_tag(c.take_rest())?,
            });
        }
        if name.is_empty() {
            return Err(unknown(name, "set"));
        }
        let user = user(&mut c, "user id")?;
        let parsed = match name {
            b"friend" | b"friend_half" => Self::Friend {
                user,
                friend: second(&mut c, "friend id")?,
                half: name == b"friend_half",
            },
            b"friends" => Self::Folder {
                user,
                folder: folder_of(&mut c)?,
            },
            b"friendreq" => Self::Request {
                user,
                from: second(&mut c, "requester id")?,
            },
            b"privacy" => Self::Privacy {
                user,
                key: privacy_key(&mut c)?,
            },
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
    /// [`crate::KeyError`] saying what is malformed.
    pub fn parse(key: &[u8]) -> Result<Self> {
        let (name, mut c) = start(key);
        if name.is_empty() {
            return Err(unknown(name, "delete"));
        }
        let user = user(&mut c, "user id")?;
        let parsed = match name {
            b"friend" | b"friend_half" => Self::Friend {
                user,
                friend: second(&mut c, "friend id")?,
                half: name == b"friend_half",
            },
            b"friend_cat" => Self::Folder {
                user,
                folder: folder_of(&mut c)?,
            },
            b"user" => Self::User { user },
            b"friendreq" => Self::Request {
                user,
                from: second(&mut c, "requester id")?,
            },
            b"requests" => Self::Requests { user },
            b"privacy" => Self::Privacy {
                user,
                key: privacy_key(&mut c)?,
            },
            _ => return Err(unknown(name, "delete")),
        };
        c.end()?;
        Ok(parsed)
    }
}

impl IncrKey {
    /// Parses an `incr`/`decr` key.
    ///
    /// # Errors
    /// [`crate::KeyError`] saying what is malformed.
    pub fn parse(key: &[u8]) -> Result<Self> {
        let (name, mut c) = start(key);
        if name != b"friend" {
            return Err(unknown(name, "incr/decr"));
        }
        let user = user(&mut c, "user id")?;
        let friend = second(&mut c, "friend id")?;
        c.end()?;
        Ok(Self { user, friend })
    }
}

/// Parses an `incr`/`decr` key: `(user, friend)` of `friend<uid>_<fid>`.
///
/// # Errors
/// [`crate::KeyError`] saying what is malformed.
pub fn parse_incr_key(key: &[u8]) -> Result<(u32, u32)> {
    IncrKey::parse(key).map(|k| (k.user, k.friend))
}

impl Encode for SetKey {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Friend { user, friend, half } => {
                let name: &[u8] = if *half { b"friend_half" } else { b"friend" };
                push_pair(out, name, *user, *friend);
            }
            Self::Folder { user, folder } => {
                push_pair(out, b"friends", *user, u32::from(*folder));
            }
            Self::Request { user, from } => push_pair(out, b"friendreq", *user, *from),
            Self::Privacy { user, key } => push_privacy(out, *user, key),
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
            Self::Friend { user, friend, half } => {
                let name: &[u8] = if *half { b"friend_half" } else { b"friend" };
                push_pair(out, name, *user, *friend);
            }
            Self::Folder { user, folder } => {
                push_pair(out, b"friend_cat", *user, u32::from(*folder));
            }
            Self::User { user } => push_name(out, b"user", *user),
            Self::Request { user, from } => push_pair(out, b"friendreq", *user, *from),
            Self::Requests { user } => push_name(out, b"requests", *user),
            Self::Privacy { user, key } => push_privacy(out, *user, key),
        }
    }
}

impl Encode for IncrKey {
    fn encode(&self, out: &mut Vec<u8>) {
        push_pair(out, b"friend", self.user, self.friend);
    }
}

impl Route for SetKey {
    fn owners(&self) -> Owners {
        match self {
            Self::Friend {
                user,
                friend,
                half: false,
            } => Owners::Two(i64::from(*user), i64::from(*friend)),
            Self::Friend { user, .. }
            | Self::Folder { user, .. }
            | Self::Request { user, .. }
            | Self::Privacy { user, .. } => Owners::One(i64::from(*user)),
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
        match self {
            // Across shards: `friend_half` on each side; a temp list is stored on every shard
            // the next key goes to.
            Self::Friend { half: false, .. } | Self::Temp { .. } => Merge::AllOk,
            _ => Merge::Single,
        }
    }
}

impl Route for DeleteKey {
    fn owners(&self) -> Owners {
        match self {
            Self::Friend {
                user,
                friend,
                half: false,
            } => Owners::Two(i64::from(*user), i64::from(*friend)),
            Self::Friend { user, .. }
            | Self::Folder { user, .. }
            | Self::User { user }
            | Self::Request { user, .. }
            | Self::Requests { user }
            | Self::Privacy { user, .. } => Owners::One(i64::from(*user)),
        }
    }

    fn access(&self) -> Access {
        Access::Write
    }

    fn merge(&self) -> Merge {
        match self {
            Self::Friend { half: false, .. } => Merge::AnyOk,
            _ => Merge::Single,
        }
    }
}

impl Route for IncrKey {
    fn owners(&self) -> Owners {
        Owners::One(i64::from(self.user))
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
    use super::*;

    #[test]
    fn temp_tags_may_start_with_anything_allowed() {
        for (key, tag) in [
            (&b"temp7"[..], "7"),
            (b"tempab_1", "ab_1"),
            (b"temp_x", "_x"),
            (b"tempAB", "AB"),
            (b"9@temp_", "_"),
        ] {
            let parsed = SetKey::parse(key).unwrap();
            assert_eq!(parsed, SetKey::Temp { tag: tag.into() });
            assert_eq!(SetKey::parse(&parsed.to_bytes()).unwrap(), parsed);
        }
        for key in [
            &b"temp"[..],
            b"temp-1",
            b"tempa b",
            &[b't', b'e', b'm', b'p', b'a', 0xff],
        ] {
            assert!(SetKey::parse(key).is_err(), "{key:?}");
        }
        assert!(SetKey::parse(&[b"temp".as_slice(), &[b'a'; 33]].concat()).is_err());
    }

    #[test]
    fn rejects_bad_keys() {
        assert!(SetKey::parse(b"friends1_0").is_err());
        assert!(DeleteKey::parse(b"friend_cat1_31").is_err());
        assert!(SetKey::parse(b"").is_err());
        assert!(DeleteKey::parse(b"user1x").is_err());
        assert!(IncrKey::parse(b"friends1_2").is_err());
        assert!(IncrKey::parse(b"friend1_2_3").is_err());
    }

    #[test]
    fn round_trips_and_routes() {
        let set = SetKey::parse(b"friend5_8").unwrap();
        assert_eq!(set.to_bytes(), b"friend5_8");
        assert_eq!(set.owners(), Owners::Two(5, 8));
        assert_eq!(set.merge(), Merge::AllOk);
        let half = SetKey::parse(b"friend_half5_8").unwrap();
        assert_eq!(half.owners(), Owners::One(5));
        assert_eq!(half.merge(), Merge::Single);
        let delete = DeleteKey::parse(b"friend5_8").unwrap();
        assert_eq!(delete.merge(), Merge::AnyOk);
        assert_eq!(DeleteKey::parse(b"user5").unwrap().to_bytes(), b"user5");
        let temp = SetKey::parse(b"temp7").unwrap();
        assert_eq!(temp.owners(), Owners::None);
        assert_eq!(temp.access(), Access::Session);
        assert_eq!(parse_incr_key(b"friend5_8").unwrap(), (5, 8));
        assert_eq!(IncrKey { user: 5, friend: 8 }.to_bytes(), b"friend5_8");
    }
}
