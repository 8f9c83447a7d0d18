//! The friends grammar (VK's friend-engine idioms): [`GetKey`], [`SetKey`], [`DeleteKey`] and
//! [`IncrKey`]. The client-facing description, with values and replies, is
//! `docs/protocol/friends.md`.
//!
//! Keys follow VK's idioms: `name<owner>_<id>` addressing, `#limit` / `#from,to` slices,
//! `viewer~owner:key1,key2` privacy checks, inline id lists or per-connection temp lists named
//! `-<tag>`. An optional `N@` routing prefix is stripped. Parsing checks syntax and ranges only
//! (ids, folders, slice bounds, list sizes); shard ownership and limits that depend on stored
//! data are the engine's.
//!
//! # Layout
//! * this file — the limits the grammar enforces, [`Mode`], [`ListRef`] and the helpers both
//!   key families use;
//! * `get.rs` — [`GetKey`];
//! * `write.rs` — [`SetKey`], [`DeleteKey`], [`IncrKey`].
//!
//! # Canonical spellings
//! A folder `_0` (all friends) is left out of `friends…`/`friendcnt…`; everything else has one
//! spelling (besides the `N@` prefix, which is dropped).

mod get;
mod write;

pub use get::{GetKey, PrivacyKeys};
pub use write::{parse_incr_key, DeleteKey, IncrKey, SetKey};

use crate::idiom::{self, push_uint, Cursor, Dialect};
use crate::{KeyError, Result};

/// Highest folder number; folders are bits 1..=30 of a mask, bit 0 is "all friends" and bit 31
/// is never used (VK's layout). Larger folder numbers fail with `CLIENT_ERROR`.
pub const FOLDER_MAX: u8 = 30;

/// Largest user id: VK ids are positive 32-bit signed integers. Zero, negative and larger ids
/// fail with `CLIENT_ERROR`.
// NOTE: ID_MAX is i32::MAX, which fits u32.
pub const USER_ID_MAX: u32 = idiom::ID_MAX as u32;

/// Longest privacy key in bytes (`album17`, `priv_phone`); longer keys fail with
/// `CLIENT_ERROR`. Fits the one-byte length in records and snapshots.
pub const PRIVACY_KEY_LEN_MAX: usize = 64;

/// Most privacy keys in one batch check `viewer~owner:k1,k2,…`; more fail with
/// `CLIENT_ERROR`. The reply is one byte per key.
pub const PRIVACY_CHECK_KEYS_MAX: usize = 256;

/// Most ids in one id list (bulk folder set, inline lists, temp lists), as VK's ≤ 10 000 temp
/// lists; longer lists fail with `CLIENT_ERROR`.
pub const USER_LIST_MAX: usize = 10_000;

/// Longest temp list tag (`set temp<tag>`); longer fails with `CLIENT_ERROR`.
pub const TEMP_TAG_LEN_MAX: usize = 32;

/// Which fields a friend list reply carries per friend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `id` (`friends…`)
    Ids,
    /// `id,mask` (`friends_masks…`)
    Masks,
    /// `id,mask,date` (`friends_full…`)
    Full,
    /// The ids in binary (`friends_packed…`): the total and then each id as a 4-byte
    /// little-endian unsigned integer, no separators. The form for programs that read whole
    /// lists (the proxy intersecting two users' friends): nothing to format or parse.
    Packed,
}

/// A list of user ids given in a key: inline or the name of a temp list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListRef {
    /// `id,id,…` (may be empty).
    Inline(Vec<u32>),
    /// `-tag`: the list stored by `set temp<tag>` on this connection.
    Temp(String),
}

impl ListRef {
    /// Appends `id,id,…` or `-tag`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Inline(ids) => idiom::encode_id_list(out, ids),
            Self::Temp(tag) => {
                out.push(b'-');
                out.extend_from_slice(tag.as_bytes());
            }
        }
    }
}

/// Checks a privacy key: a latin stem followed by a decimal number or `_suffix`
/// (`album17`, `priv_phone`), at most [`PRIVACY_KEY_LEN_MAX`] bytes.
///
/// # Errors
/// [`KeyError::Malformed`] saying what is wrong.
pub fn check_privacy_key(key: &[u8]) -> Result<()> {
    idiom::check_privacy_key(key, PRIVACY_KEY_LEN_MAX)
}

/// Parses a comma-separated id list (`17,239,666`; empty = no ids; surrounding ASCII
/// whitespace ignored), at most [`USER_LIST_MAX`] ids, in the given order.
///
/// # Errors
/// [`KeyError::Malformed`] for a bad id or a list that is too long.
pub fn parse_id_list(text: &[u8]) -> Result<Vec<u32>> {
    idiom::parse_id_list(text, USER_LIST_MAX)
}

/// Checks a temp list tag: 1..=[`TEMP_TAG_LEN_MAX`] ASCII letters, digits or `_`.
///
/// # Errors
/// [`KeyError::Malformed`] saying what a tag may hold.
pub fn check_temp_tag(tag: &[u8]) -> Result<String> {
    idiom::check_temp_tag(tag, TEMP_TAG_LEN_MAX)
}

fn unknown(name: &[u8], command: &str) -> KeyError {
    KeyError::unknown(format!(
        "unknown friends key {:?} for {command}",
        String::from_utf8_lossy(name)
    ))
}

/// Splits a friends key into its name and a cursor.
fn start(key: &[u8]) -> (&[u8], Cursor<'_>) {
    idiom::split(key, Dialect::Friends)
}

/// A user id, `1..=USER_ID_MAX`.
fn user(c: &mut Cursor<'_>, what: &str) -> Result<u32> {
    let id = c.id(what)?;
    // NOTE: id is within 1..=ID_MAX.
    Ok(u32::try_from(id).unwrap_or(USER_ID_MAX))
}

fn underscore(c: &mut Cursor<'_>, what: &str) -> Result<()> {
    if c.eat(b'_') {
        Ok(())
    } else {
        Err(KeyError::malformed(format!(
            "expected _ before {what} at offset {}",
            c.at()
        )))
    }
}

/// A folder number, `1..=FOLDER_MAX` (`0..=` when `allow_all`).
fn folder(c: &mut Cursor<'_>, allow_all: bool) -> Result<u8> {
    let n = c.number("folder")?;
    let low = u64::from(!allow_all);
    match u8::try_from(n) {
        Ok(folder) if n >= low && folder <= FOLDER_MAX => Ok(folder),
        _ => Err(KeyError::malformed(format!(
            "folder {n} outside {low}..={FOLDER_MAX}"
        ))),
    }
}

/// A privacy key running to the end of the key, after `_`, borrowed from the key.
fn privacy_key_ref<'a>(c: &mut Cursor<'a>) -> Result<&'a str> {
    underscore(c, "privacy key")?;
    let key = c.take_rest();
    check_privacy_key(key)?;
    // A valid privacy key is ASCII (checked just above).
    std::str::from_utf8(key).map_err(|_| KeyError::malformed("privacy key is not ASCII"))
}

/// A privacy key running to the end of the key, after `_`.
fn privacy_key(c: &mut Cursor<'_>) -> Result<String> {
    privacy_key_ref(c).map(str::to_owned)
}

/// Appends `name<user>`.
fn push_name(out: &mut Vec<u8>, name: &[u8], user: u32) {
    out.extend_from_slice(name);
    push_uint(out, u64::from(user));
}

/// Appends `name<user>_<second>`.
fn push_pair(out: &mut Vec<u8>, name: &[u8], user: u32, second: u32) {
    push_name(out, name, user);
    out.push(b'_');
    push_uint(out, u64::from(second));
}

/// Appends `privacy<user>_<key>`.
fn push_privacy(out: &mut Vec<u8>, user: u32, key: &str) {
    push_name(out, b"privacy", user);
    out.push(b'_');
    out.extend_from_slice(key.as_bytes());
}
