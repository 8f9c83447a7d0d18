//! Binlog records of the friends engine: one `u16` type and a little-endian payload each.
//!
//! Every update the engine accepts becomes exactly one record, and [`Record::decode`] of
//! [`Record::encode`] gives the record back. A record carries everything its apply needs (the
//! ids a user deletion must also touch, canonical privacy rules), so applying it never
//! depends on state in another partition; that is what lets the fuzzy snapshot skip it per
//! partition.
//!
//! ```text
//! type    name              payload (all integers little-endian)
//! 0x4601  FRIEND_ADD_PAIR   user u32 | friend u32 | mask u32      both halves
//! 0x4602  FRIEND_SET_HALF   user u32 | friend u32 | mask u32      user's half only
//! 0x4603  FRIEND_OR         user u32 | friend u32 | mask u32
//! 0x4604  FRIEND_AND_NOT    user u32 | friend u32 | mask u32
//! 0x4605  FRIEND_DEL_PAIR   user u32 | friend u32                 both halves
//! 0x4606  FRIEND_DEL_HALF   user u32 | friend u32                 user's half only
//! 0x4607  FOLDER_SET        user u32 | folder u8 | n u32 | n × id u32 (sorted, unique)
//! 0x4608  FOLDER_DEL        user u32 | folder u8
//! 0x4609  USER_DEL          user u32 | n u32 | n × friend u32 (friends on this node whose
//!                           half naming the user is removed too)
//! 0x4611  REQUEST_SET       user u32 | from u32 | mask u32
//! 0x4612  REQUEST_DEL       user u32 | from u32
//! 0x4613  REQUEST_DEL_ALL   user u32
//! 0x4621  PRIVACY_SET       user u32 | key_len u8 | key | n u16 | n × rule (tag u8 | value u32)
//! 0x4622  PRIVACY_DEL       user u32 | key_len u8 | key
//! ```
//!
//! Rule tags: 0 user, 1 folder, 2 all friends, 3 friends of friends, 4 everybody; +8 = deny.

use koshka_engine::{codec, Error, Result};

use crate::privacy::{Rule, Target};
use crate::{FOLDER_MAX, PRIVACY_KEY_LEN_MAX, PRIVACY_RULES_MAX, USER_LIST_MAX};

/// Record type: add or update a friendship, both halves.
pub const FRIEND_ADD_PAIR: u16 = 0x4601;
/// Record type: add or update one half of a friendship.
pub const FRIEND_SET_HALF: u16 = 0x4602;
/// Record type: OR folders into a friend's mask.
pub const FRIEND_OR: u16 = 0x4603;
/// Record type: clear folders from a friend's mask.
pub const FRIEND_AND_NOT: u16 = 0x4604;
/// Record type: remove a friendship, both halves.
pub const FRIEND_DEL_PAIR: u16 = 0x4605;
/// Record type: remove one half of a friendship.
pub const FRIEND_DEL_HALF: u16 = 0x4606;
/// Record type: set a folder's membership in bulk.
pub const FOLDER_SET: u16 = 0x4607;
/// Record type: delete a folder.
pub const FOLDER_DEL: u16 = 0x4608;
/// Record type: delete a user.
pub const USER_DEL: u16 = 0x4609;
/// Record type: add or replace a friend request.
pub const REQUEST_SET: u16 = 0x4611;
/// Record type: delete one friend request.
pub const REQUEST_DEL: u16 = 0x4612;
/// Record type: delete all friend requests of a user.
pub const REQUEST_DEL_ALL: u16 = 0x4613;
/// Record type: set privacy rules.
pub const PRIVACY_SET: u16 = 0x4621;
/// Record type: delete privacy rules.
pub const PRIVACY_DEL: u16 = 0x4622;

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// `user` sets `friend` with `mask`; `friend` gets `user` (no folders) if missing.
    FriendAddPair {
        /// Owner of the mask.
        user: u32,
        /// The other side.
        friend: u32,
        /// New mask of `friend` in `user`'s list.
        mask: u32,
    },
    /// `user` sets `friend` with `mask`, one side only.
    FriendSetHalf {
        /// Owner.
        user: u32,
        /// Friend.
        friend: u32,
        /// New mask.
        mask: u32,
    },
    /// `mask |= bits` for an existing friend.
    FriendOr {
        /// Owner.
        user: u32,
        /// Friend.
        friend: u32,
        /// Bits to set.
        bits: u32,
    },
    /// `mask &= !bits` for an existing friend (bit 0 stays).
    FriendAndNot {
        /// Owner.
        user: u32,
        /// Friend.
        friend: u32,
        /// Bits to clear.
        bits: u32,
    },
    /// Remove the friendship on both sides.
    FriendDelPair {
        /// One side.
        user: u32,
        /// Other side.
        friend: u32,
    },
    /// Remove `friend` from `user`'s list only.
    FriendDelHalf {
        /// Owner.
        user: u32,
        /// Friend.
        friend: u32,
    },
    /// Folder `folder` of `user` holds exactly the friends among `ids`.
    FolderSet {
        /// Owner.
        user: u32,
        /// Folder, 1..=30.
        folder: u8,
        /// Sorted unique ids.
        ids: Vec<u32>,
    },
    /// Delete folder `folder` of `user`.
    FolderDel {
        /// Owner.
        user: u32,
        /// Folder, 1..=30.
        folder: u8,
    },
    /// Delete everything of `user` and `user` from the lists of `mirrored`.
    UserDel {
        /// The deleted user.
        user: u32,
        /// Friends on this node whose half naming `user` is removed.
        mirrored: Vec<u32>,
    },
    /// Add or replace the request from `from` to `user`.
    RequestSet {
        /// Receiver.
        user: u32,
        /// Requester.
        from: u32,
        /// Requested folders.
        mask: u32,
    },
    /// Delete the request from `from` to `user`.
    RequestDel {
        /// Receiver.
        user: u32,
        /// Requester.
        from: u32,
    },
    /// Delete all requests to `user`.
    RequestDelAll {
        /// Receiver.
        user: u32,
    },
    /// Store canonical `rules` under `key`.
    PrivacySet {
        /// Owner.
        user: u32,
        /// Privacy key.
        key: String,
        /// Canonical rules.
        rules: Vec<Rule>,
    },
    /// Delete the rules under `key`.
    PrivacyDel {
        /// Owner.
        user: u32,
        /// Privacy key.
        key: String,
    },
}

impl Record {
    /// The record type.
    #[must_use]
    pub fn record_type(&self) -> u16 {
        match self {
            Self::FriendAddPair { .. } => FRIEND_ADD_PAIR,
            Self::FriendSetHalf { .. } => FRIEND_SET_HALF,
            Self::FriendOr { .. } => FRIEND_OR,
            Self::FriendAndNot { .. } => FRIEND_AND_NOT,
            Self::FriendDelPair { .. } => FRIEND_DEL_PAIR,
            Self::FriendDelHalf { .. } => FRIEND_DEL_HALF,
            Self::FolderSet { .. } => FOLDER_SET,
            Self::FolderDel { .. } => FOLDER_DEL,
            Self::UserDel { .. } => USER_DEL,
            Self::RequestSet { .. } => REQUEST_SET,
            Self::RequestDel { .. } => REQUEST_DEL,
            Self::RequestDelAll { .. } => REQUEST_DEL_ALL,
            Self::PrivacySet { .. } => PRIVACY_SET,
            Self::PrivacyDel { .. } => PRIVACY_DEL,
        }
    }

    /// The payload bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        self.encode_into(&mut out);
        out
    }

    /// Appends the payload bytes to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Self::FriendAddPair { user, friend, mask }
            | Self::FriendSetHalf { user, friend, mask }
            | Self::FriendOr {
                user,
                friend,
                bits: mask,
            }
            | Self::FriendAndNot {
                user,
                friend,
                bits: mask,
            }
            | Self::RequestSet {
                user,
                from: friend,
                mask,
            } => {
                put_u32s(out, &[*user, *friend, *mask]);
            }
            Self::FriendDelPair { user, friend }
            | Self::FriendDelHalf { user, friend }
            | Self::RequestDel { user, from: friend } => put_u32s(out, &[*user, *friend]),
            Self::FolderSet { user, folder, ids } => {
                put_u32s(out, &[*user]);
                out.push(*folder);
                put_list(out, ids);
            }
            Self::FolderDel { user, folder } => {
                put_u32s(out, &[*user]);
                out.push(*folder);
            }
            Self::UserDel { user, mirrored } => {
                put_u32s(out, &[*user]);
                put_list(out, mirrored);
            }
            Self::RequestDelAll { user } => put_u32s(out, &[*user]),
            Self::PrivacySet { user, key, rules } => {
                put_u32s(out, &[*user]);
                put_key(out, key);
                put_rules(out, rules);
            }
            Self::PrivacyDel { user, key } => {
                put_u32s(out, &[*user]);
                put_key(out, key);
            }
        }
    }

    /// Decodes a record of type `record_type`.
    ///
    /// # Errors
    /// [`Error::Corrupt`] for an unknown type, a short or over-long payload, or a value that
    /// the engine never writes (zero id, bad folder, unsorted list, bad rule tag).
    pub fn decode(record_type: u16, payload: &[u8]) -> Result<Self> {
        let mut r = Reader::new(payload);
        let record = match record_type {
            FRIEND_ADD_PAIR | FRIEND_SET_HALF | FRIEND_OR | FRIEND_AND_NOT | REQUEST_SET => {
                let (user, friend, mask) = (r.id()?, r.id()?, r.u32()?);
                match record_type {
                    FRIEND_ADD_PAIR => Self::FriendAddPair { user, friend, mask },
                    FRIEND_SET_HALF => Self::FriendSetHalf { user, friend, mask },
                    FRIEND_OR => Self::FriendOr {
                        user,
                        friend,
                        bits: mask,
                    },
                    FRIEND_AND_NOT => Self::FriendAndNot {
                        user,
                        friend,
                        bits: mask,
                    },
                    _ => Self::RequestSet {
                        user,
                        from: friend,
                        mask,
                    },
                }
            }
            FRIEND_DEL_PAIR | FRIEND_DEL_HALF | REQUEST_DEL => {
                let (user, friend) = (r.id()?, r.id()?);
                match record_type {
                    FRIEND_DEL_PAIR => Self::FriendDelPair { user, friend },
                    FRIEND_DEL_HALF => Self::FriendDelHalf { user, friend },
                    _ => Self::RequestDel { user, from: friend },
                }
            }
            FOLDER_SET => Self::FolderSet {
                user: r.id()?,
                folder: r.folder()?,
                ids: r.list()?,
            },
            FOLDER_DEL => Self::FolderDel {
                user: r.id()?,
                folder: r.folder()?,
            },
            USER_DEL => Self::UserDel {
                user: r.id()?,
                mirrored: r.list()?,
            },
            REQUEST_DEL_ALL => Self::RequestDelAll { user: r.id()? },
            PRIVACY_SET => Self::PrivacySet {
                user: r.id()?,
                key: r.key()?,
                rules: r.rules()?,
            },
            PRIVACY_DEL => Self::PrivacyDel {
                user: r.id()?,
                key: r.key()?,
            },
            other => {
                return Err(Error::corrupt_record(format!(
                    "unknown record type {other:#x}"
                )))
            }
        };
        if !r.is_empty() {
            return Err(Error::corrupt_record(format!(
                "{} trailing bytes in record type {record_type:#x}",
                r.remaining()
            )));
        }
        Ok(record)
    }
}

fn put_u32s(out: &mut Vec<u8>, values: &[u32]) {
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn put_list(out: &mut Vec<u8>, ids: &[u32]) {
    // NOTE: lists are bounded by USER_LIST_MAX / FRIENDS_PER_USER_MAX, far below u32::MAX.
    #[expect(clippy::cast_possible_truncation)]
    put_u32s(out, &[ids.len() as u32]);
    put_u32s(out, ids);
}

fn put_key(out: &mut Vec<u8>, key: &str) {
    // NOTE: keys are validated to at most PRIVACY_KEY_LEN_MAX (< 256) bytes.
    #[expect(clippy::cast_possible_truncation)]
    out.push(key.len() as u8);
    out.extend_from_slice(key.as_bytes());
}

/// Encodes one rule as its tag byte and value.
#[must_use]
pub fn rule_bytes(rule: Rule) -> (u8, u32) {
    let (tag, value) = match rule.target {
        Target::User(id) => (0, id),
        Target::Folder(f) => (1, u32::from(f)),
        Target::Friends => (2, 0),
        Target::FriendsOfFriends => (3, 0),
        Target::Everybody => (4, 0),
    };
    (if rule.allow { tag } else { tag + 8 }, value)
}

/// Decodes one rule from its tag byte and value.
///
/// # Errors
/// [`Error::Corrupt`] for an unknown tag or an out-of-range value.
pub fn rule_from_bytes(tag: u8, value: u32) -> Result<Rule> {
    let allow = tag < 8;
    let target = match (tag & 7, value) {
        (0, id) if id != 0 => Target::User(id),
        (1, f) if (1..=u32::from(FOLDER_MAX)).contains(&f) => {
            Target::Folder(u8::try_from(f).unwrap_or(0))
        }
        (2, 0) => Target::Friends,
        (3, 0) => Target::FriendsOfFriends,
        (4, 0) => Target::Everybody,
        _ => {
            return Err(Error::corrupt_record(format!(
                "bad rule tag {tag} value {value}"
            )))
        }
    };
    if tag >= 16 {
        return Err(Error::corrupt_record(format!("bad rule tag {tag}")));
    }
    Ok(Rule { allow, target })
}

/// Appends a rule count and the rules.
pub fn put_rules(out: &mut Vec<u8>, rules: &[Rule]) {
    // NOTE: at most PRIVACY_RULES_MAX (< 65536) rules.
    #[expect(clippy::cast_possible_truncation)]
    out.extend_from_slice(&(rules.len() as u16).to_le_bytes());
    for rule in rules {
        let (tag, value) = rule_bytes(*rule);
        out.push(tag);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

/// A cursor over a friends record or snapshot: the shared byte codec
/// ([`koshka_engine::codec::Reader`], reached through `Deref`) plus the engine's own fields
/// (ids, folders, id lists, privacy keys and rules), each validated as it is read.
pub struct Reader<'a>(codec::Reader<'a>);

impl<'a> std::ops::Deref for Reader<'a> {
    type Target = codec::Reader<'a>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Reader<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    #[must_use]
    pub fn new(buf: &'a [u8]) -> Self {
        Self(codec::Reader::new(buf, "friends record"))
    }

    /// Takes `n` bytes.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if fewer remain.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        self.0.bytes(n)
    }

    /// Reads a non-zero user id.
    ///
    /// # Errors
    /// [`Error::Corrupt`] on a short buffer or an invalid id.
    pub fn id(&mut self) -> Result<u32> {
        let id = self.u32()?;
        if id == 0 || id > crate::USER_ID_MAX {
            return Err(Error::corrupt_record(format!("invalid user id {id}")));
        }
        Ok(id)
    }

    fn folder(&mut self) -> Result<u8> {
        let folder = self.u8()?;
        if folder == 0 || folder > FOLDER_MAX {
            return Err(Error::corrupt_record(format!("invalid folder {folder}")));
        }
        Ok(folder)
    }

    /// Reads a count-prefixed sorted unique id list.
    ///
    /// # Errors
    /// [`Error::Corrupt`] on a short buffer, a list over [`USER_LIST_MAX`] or an unsorted list.
    pub fn list(&mut self) -> Result<Vec<u32>> {
        let n = self.u32()? as usize;
        if n > USER_LIST_MAX.max(crate::FRIENDS_PER_USER_MAX) {
            return Err(Error::corrupt_record(format!("id list of {n} entries")));
        }
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            ids.push(self.id()?);
        }
        if ids.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::corrupt_record("id list not sorted"));
        }
        Ok(ids)
    }

    /// Reads a length-prefixed privacy key.
    ///
    /// # Errors
    /// [`Error::Corrupt`] on a short buffer or an invalid key.
    pub fn key(&mut self) -> Result<String> {
        let n = usize::from(self.u8()?);
        let bytes = self.take(n)?;
        if n > PRIVACY_KEY_LEN_MAX || koshka_keys::friends::check_privacy_key(bytes).is_err() {
            return Err(Error::corrupt_record("invalid privacy key"));
        }
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    /// Reads a count-prefixed rule list.
    ///
    /// # Errors
    /// [`Error::Corrupt`] on a short buffer, too many rules or a bad rule.
    pub fn rules(&mut self) -> Result<Vec<Rule>> {
        let n = usize::from(self.u16()?);
        if n > PRIVACY_RULES_MAX {
            return Err(Error::corrupt_record(format!("{n} privacy rules")));
        }
        let mut rules = Vec::with_capacity(n);
        for _ in 0..n {
            let tag = self.u8()?;
            rules.push(rule_from_bytes(tag, self.u32()?)?);
        }
        Ok(rules)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let records = vec![
            Record::FriendAddPair {
                user: 1,
                friend: 2,
                mask: 7,
            },
            Record::FriendSetHalf {
                user: 1,
                friend: 2,
                mask: 1,
            },
            Record::FriendOr {
                user: 1,
                friend: 2,
                bits: 4,
            },
            Record::FriendAndNot {
                user: 1,
                friend: 2,
                bits: 4,
            },
            Record::FriendDelPair { user: 1, friend: 2 },
            Record::FriendDelHalf { user: 1, friend: 2 },
            Record::FolderSet {
                user: 1,
                folder: 3,
                ids: vec![2, 5, 9],
            },
            Record::FolderDel {
                user: 1,
                folder: 30,
            },
            Record::UserDel {
                user: 1,
                mirrored: vec![2, 3],
            },
            Record::RequestSet {
                user: 1,
                from: 2,
                mask: 3,
            },
            Record::RequestDel { user: 1, from: 2 },
            Record::RequestDelAll { user: 1 },
            Record::PrivacySet {
                user: 1,
                key: "album17".into(),
                rules: vec![
                    Rule {
                        allow: false,
                        target: Target::User(5),
                    },
                    Rule {
                        allow: true,
                        target: Target::Folder(3),
                    },
                    Rule {
                        allow: true,
                        target: Target::FriendsOfFriends,
                    },
                ],
            },
            Record::PrivacyDel {
                user: 1,
                key: "priv_phone".into(),
            },
        ];
        for record in records {
            let bytes = record.encode();
            let back = Record::decode(record.record_type(), &bytes).unwrap();
            assert_eq!(back, record);
            // Every truncation fails cleanly.
            for cut in 0..bytes.len() {
                assert!(Record::decode(record.record_type(), &bytes[..cut]).is_err());
            }
        }
        assert!(Record::decode(0x9999, &[]).is_err());
    }
}
