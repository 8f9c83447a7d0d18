//! Snapshot encoding, one partition at a time.
//!
//! ```text
//! ┌──────────────┬─────────────┬────────────────┐
//! │ magic "KFRS" │ version u32 │ partitions u32 │   header
//! ├──────────────┴─────────────┴────────────────┤
//! │ index u32 │ pos u64 │ len u32 │ len bytes    │   one block per partition, any order
//! │ …                                            │
//! ├──────────────────────────────────────────────┤
//! │ magic "KEND"                                 │   trailer: a snapshot cut short fails
//! └──────────────────────────────────────────────┘
//!
//! block body: users u32, then per user in ascending id order:
//!   id u32 | friends u32 | friends × (id u32 | mask u32 | date u32)
//!          | requests u32 | requests × (from u32 | mask u32 | date u32)
//!          | keys u32 | keys × (key_len u8 | key | rules u16 | rules × (tag u8 | value u32))
//! ```
//!
//! All integers are little-endian. Each block is encoded under its partition's lock into a
//! buffer and written after the lock is released, so writers wait only for the encoding.
//! Decoding checks every invariant the image relies on (sorted unique ids, limits, masks),
//! so a corrupt snapshot fails at load instead of misbehaving later.

use koshka_engine::{Error, Result};

use crate::ops::{put_rules, Reader};
use crate::privacy::Rule;
use crate::state::{Friend, Partition, PrivacyEntry, Request, User};
use crate::{
    ALL_FRIENDS_BIT, FRIENDS_PER_USER_MAX, FRIEND_REQUESTS_PER_USER_MAX, MASK_BITS, PARTITIONS,
    PRIVACY_KEYS_PER_USER_MAX,
};

/// First bytes of a friends snapshot.
pub const MAGIC: [u8; 4] = *b"KFRS";
/// Last bytes of a friends snapshot.
pub const TRAILER: [u8; 4] = *b"KEND";
/// Snapshot format version.
pub const VERSION: u32 = 1;

/// Largest partition block accepted at load: every user at every limit would be far larger,
/// but a block is one partition of one node's memory, which stays well under 4 GiB.
pub const BLOCK_LEN_MAX: u32 = u32::MAX;

/// The snapshot header.
#[must_use]
pub fn header() -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    // NOTE: PARTITIONS is a small constant.
    #[expect(clippy::cast_possible_truncation)]
    out.extend_from_slice(&(PARTITIONS as u32).to_le_bytes());
    out
}

/// Checks a header read from a snapshot.
///
/// # Errors
/// [`Error::Corrupt`] for a wrong magic, version or partition count.
pub fn check_header(bytes: &[u8; 12]) -> Result<()> {
    let corrupt = |reason: String| Error::Corrupt {
        what: "snapshot",
        reason,
    };
    if bytes[..4] != MAGIC {
        return Err(corrupt("not a friends snapshot (bad magic)".into()));
    }
    let version = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if version != VERSION {
        return Err(corrupt(format!("unsupported version {version}")));
    }
    let partitions = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if partitions as usize != PARTITIONS {
        return Err(corrupt(format!(
            "{partitions} partitions, this build uses {PARTITIONS}"
        )));
    }
    Ok(())
}

/// Encodes one partition block (header fields and body) into `out`.
pub fn encode_partition(index: usize, partition: &Partition, out: &mut Vec<u8>) {
    out.clear();
    // NOTE: index < PARTITIONS.
    #[expect(clippy::cast_possible_truncation)]
    out.extend_from_slice(&(index as u32).to_le_bytes());
    out.extend_from_slice(&partition.pos.to_le_bytes());
    let len_at = out.len();
    out.extend_from_slice(&[0; 4]);
    let ids = partition.user_ids();
    put_len(out, ids.len());
    for id in ids {
        let Some(user) = partition.user(id) else {
            continue;
        };
        out.extend_from_slice(&id.to_le_bytes());
        put_len(out, user.friends.len());
        for f in user.friends.iter() {
            put3(out, f.id, f.mask, f.date);
        }
        put_len(out, user.requests().len());
        for r in user.requests() {
            put3(out, r.from, r.mask, r.date);
        }
        let privacy = user.privacy_entries();
        put_len(out, privacy.len());
        for entry in &privacy {
            // NOTE: keys are at most PRIVACY_KEY_LEN_MAX bytes.
            #[expect(clippy::cast_possible_truncation)]
            out.push(entry.key.len() as u8);
            out.extend_from_slice(entry.key.as_bytes());
            put_rules(out, &entry.rules);
        }
    }
    let body_len = out.len() - len_at - 4;
    // NOTE: a partition body over 4 GiB is outside the design (BLOCK_LEN_MAX).
    #[expect(clippy::cast_possible_truncation)]
    out[len_at..len_at + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    // NOTE: every count is bounded by a limit far below u32::MAX.
    #[expect(clippy::cast_possible_truncation)]
    out.extend_from_slice(&(n as u32).to_le_bytes());
}

fn put3(out: &mut Vec<u8>, a: u32, b: u32, c: u32) {
    out.extend_from_slice(&a.to_le_bytes());
    out.extend_from_slice(&b.to_le_bytes());
    out.extend_from_slice(&c.to_le_bytes());
}

fn corrupt(reason: impl Into<String>) -> Error {
    Error::Corrupt {
        what: "snapshot",
        reason: reason.into(),
    }
}

/// Decodes one partition body. `home` tells the partition index each user id belongs to, so
/// a snapshot written with a different shard layout is refused.
///
/// # Errors
/// [`Error::Corrupt`] for any inconsistency.
pub fn decode_partition(
    index: usize,
    pos: u64,
    body: &[u8],
    home: &dyn Fn(u32) -> usize,
) -> Result<Partition> {
    let mut r = Reader::new(body);
    let fix = |e: Error| match e {
        Error::Corrupt { reason, .. } => corrupt(format!("partition {index}: {reason}")),
        other => other,
    };
    let users = r.u32().map_err(fix)? as usize;
    let mut partition = Partition::default();
    partition.pos = pos;
    let mut last = 0;
    for _ in 0..users {
        let id = r.id().map_err(fix)?;
        if id <= last {
            return Err(corrupt(format!(
                "partition {index}: user ids not ascending at {id}"
            )));
        }
        last = id;
        if home(id) != index {
            return Err(corrupt(format!(
                "user {id} does not belong to partition {index}"
            )));
        }
        let user = decode_user(&mut r).map_err(fix)?;
        if user.is_empty() {
            return Err(corrupt(format!("partition {index}: empty user {id}")));
        }
        partition.insert_user(id, user);
    }
    if !r.is_empty() {
        return Err(corrupt(format!(
            "partition {index}: {} trailing bytes",
            r.remaining()
        )));
    }
    Ok(partition)
}

fn decode_user(r: &mut Reader<'_>) -> Result<User> {
    let n = bounded(r, FRIENDS_PER_USER_MAX, "friends")?;
    let mut friends = Vec::with_capacity(n);
    for _ in 0..n {
        let (id, mask, date) = (r.id()?, r.u32()?, r.u32()?);
        check_mask(mask)?;
        friends.push(Friend { id, mask, date });
    }
    if friends.windows(2).any(|w| w[0].id >= w[1].id) {
        return Err(Error::corrupt_record("friend ids not ascending"));
    }
    let n = bounded(r, FRIEND_REQUESTS_PER_USER_MAX, "requests")?;
    let mut requests = Vec::with_capacity(n);
    for _ in 0..n {
        let (from, mask, date) = (r.id()?, r.u32()?, r.u32()?);
        check_mask(mask)?;
        requests.push(Request { from, mask, date });
    }
    if requests.windows(2).any(|w| w[0].from >= w[1].from) {
        return Err(Error::corrupt_record("request ids not ascending"));
    }
    let n = bounded(r, PRIVACY_KEYS_PER_USER_MAX, "privacy keys")?;
    let mut privacy = Vec::with_capacity(n);
    for _ in 0..n {
        let key = r.key()?;
        let rules: Vec<Rule> = r.rules()?;
        privacy.push(PrivacyEntry {
            key: key.into(),
            rules: rules.into_boxed_slice(),
        });
    }
    if privacy.windows(2).any(|w| w[0].key >= w[1].key) {
        return Err(Error::corrupt_record("privacy keys not ascending"));
    }
    Ok(User {
        friends,
        requests,
        privacy,
    })
}

fn bounded(r: &mut Reader<'_>, max: usize, what: &str) -> Result<usize> {
    let n = r.u32()? as usize;
    if n > max {
        return Err(Error::corrupt_record(format!(
            "{n} {what}, more than {max}"
        )));
    }
    Ok(n)
}

fn check_mask(mask: u32) -> Result<()> {
    if mask & ALL_FRIENDS_BIT == 0 || mask & !MASK_BITS != 0 {
        return Err(Error::corrupt_record(format!("invalid mask {mask:#x}")));
    }
    Ok(())
}
