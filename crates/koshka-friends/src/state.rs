//! In-memory image: partitions of users, each user a few sorted vectors.
//!
//! Per user the engine keeps three vectors sorted by id (binary search for point lookups,
//! sorted merge for intersections):
//!
//! ```text
//! friends:  [ Friend { id u32 | mask u32 | date u32 } ... ]   12 bytes per edge
//! requests: [ Request { from u32 | mask u32 | date u32 } ... ] 12 bytes per request
//! privacy:  [ PrivacyEntry { key, canonical rules } ... ]      sorted by key
//! ```
//!
//! A user with nothing left is removed from its partition, so an image is equal to another
//! exactly when they hold the same data. Every mutation here is a pure function of its
//! arguments (the date comes from the record's log time), which keeps replay deterministic.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::privacy::{canonicalize, Rule, Target};
use crate::{mask_bit, ALL_FRIENDS_BIT};

/// One friendship edge as seen from its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Friend {
    /// The friend's user id.
    pub id: u32,
    /// Folder mask: bit 0 (all friends) always set, bits 1..=30 for folders.
    pub mask: u32,
    /// Log time at which the friendship was added.
    pub date: u32,
}

/// One incoming friend request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The requester.
    pub from: u32,
    /// Folders the requester asks to be put in (bit 0 always set).
    pub mask: u32,
    /// Log time of the request (of its latest replacement).
    pub date: u32,
}

/// The privacy rules stored under one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivacyEntry {
    /// The privacy key, e.g. `album17` or `priv_phone`.
    pub key: Box<str>,
    /// Rules in canonical form.
    pub rules: Box<[Rule]>,
}

/// Everything stored for one user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    /// Friends sorted by id.
    pub friends: Vec<Friend>,
    /// Incoming requests sorted by requester id.
    pub requests: Vec<Request>,
    /// Privacy entries sorted by key.
    pub privacy: Vec<PrivacyEntry>,
}

impl User {
    /// Nothing is stored for this user.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.friends.is_empty() && self.requests.is_empty() && self.privacy.is_empty()
    }

    /// The friend entry for `id`.
    #[must_use]
    pub fn friend(&self, id: u32) -> Option<&Friend> {
        self.friends
            .binary_search_by_key(&id, |f| f.id)
            .ok()
            .map(|i| &self.friends[i])
    }

    /// The folder mask of `id` (0 if not a friend).
    #[must_use]
    pub fn mask_of(&self, id: u32) -> u32 {
        self.friend(id).map_or(0, |f| f.mask)
    }

    /// The privacy rules under `key`.
    #[must_use]
    pub fn privacy(&self, key: &str) -> Option<&[Rule]> {
        self.privacy
            .binary_search_by(|e| (*e.key).cmp(key))
            .ok()
            .map(|i| &*self.privacy[i].rules)
    }

    /// Adds `id` with `mask`, or replaces the mask of an existing friend (keeping its date).
    pub fn set_friend(&mut self, id: u32, mask: u32, date: u32) {
        let mask = mask | ALL_FRIENDS_BIT;
        match self.friends.binary_search_by_key(&id, |f| f.id) {
            Ok(i) => self.friends[i].mask = mask,
            Err(i) => self.friends.insert(i, Friend { id, mask, date }),
        }
    }

    /// Adds `id` to no folder unless already a friend.
    pub fn ensure_friend(&mut self, id: u32, date: u32) {
        if let Err(i) = self.friends.binary_search_by_key(&id, |f| f.id) {
            self.friends.insert(
                i,
                Friend {
                    id,
                    mask: ALL_FRIENDS_BIT,
                    date,
                },
            );
        }
    }

    /// Replaces the mask of an existing friend with `f(mask)` (bit 0 kept).
    pub fn update_mask(&mut self, id: u32, f: impl FnOnce(u32) -> u32) {
        if let Ok(i) = self.friends.binary_search_by_key(&id, |f| f.id) {
            self.friends[i].mask = f(self.friends[i].mask) | ALL_FRIENDS_BIT;
        }
    }

    /// Removes friend `id`; `true` if it was one.
    pub fn remove_friend(&mut self, id: u32) -> bool {
        match self.friends.binary_search_by_key(&id, |f| f.id) {
            Ok(i) => {
                self.friends.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    /// Makes folder `folder` hold exactly the friends among `ids` (sorted, deduplicated).
    pub fn set_folder(&mut self, folder: u8, ids: &[u32]) {
        let bit = mask_bit(folder);
        for friend in &mut self.friends {
            if ids.binary_search(&friend.id).is_ok() {
                friend.mask |= bit;
            } else {
                friend.mask &= !bit;
            }
        }
    }

    /// Deletes folder `folder`: no friend stays in it and rules naming it are dropped.
    pub fn delete_folder(&mut self, owner: u32, folder: u8) {
        let bit = mask_bit(folder);
        for friend in &mut self.friends {
            friend.mask &= !bit;
        }
        for entry in &mut self.privacy {
            if entry
                .rules
                .iter()
                .any(|r| r.target == Target::Folder(folder))
            {
                let kept: Vec<Rule> = entry
                    .rules
                    .iter()
                    .copied()
                    .filter(|r| r.target != Target::Folder(folder))
                    .collect();
                entry.rules = canonicalize(&kept, owner).into_boxed_slice();
            }
        }
    }

    /// Adds or replaces the request from `from`.
    pub fn set_request(&mut self, from: u32, mask: u32, date: u32) {
        let request = Request {
            from,
            mask: mask | ALL_FRIENDS_BIT,
            date,
        };
        match self.requests.binary_search_by_key(&from, |r| r.from) {
            Ok(i) => self.requests[i] = request,
            Err(i) => self.requests.insert(i, request),
        }
    }

    /// Removes the request from `from`; `true` if there was one.
    pub fn remove_request(&mut self, from: u32) -> bool {
        match self.requests.binary_search_by_key(&from, |r| r.from) {
            Ok(i) => {
                self.requests.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    /// Stores canonical `rules` under `key`.
    pub fn set_privacy(&mut self, key: &str, rules: Box<[Rule]>) {
        match self.privacy.binary_search_by(|e| (*e.key).cmp(key)) {
            Ok(i) => self.privacy[i].rules = rules,
            Err(i) => self.privacy.insert(
                i,
                PrivacyEntry {
                    key: key.into(),
                    rules,
                },
            ),
        }
    }

    /// Removes the rules under `key`; `true` if there were some.
    pub fn remove_privacy(&mut self, key: &str) -> bool {
        match self.privacy.binary_search_by(|e| (*e.key).cmp(key)) {
            Ok(i) => {
                self.privacy.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    /// Heap and inline bytes held by this user (capacity, not length).
    #[must_use]
    pub fn memory_bytes(&self) -> usize {
        let privacy: usize = self
            .privacy
            .iter()
            .map(|e| e.key.len() + std::mem::size_of_val(&*e.rules))
            .sum();
        std::mem::size_of::<Self>()
            + self.friends.capacity() * std::mem::size_of::<Friend>()
            + self.requests.capacity() * std::mem::size_of::<Request>()
            + self.privacy.capacity() * std::mem::size_of::<PrivacyEntry>()
            + privacy
    }
}

/// A hasher for `u32` user ids: one multiply, good enough for ids that are not adversarial
/// in their low bits after the partition split, and much cheaper than SipHash.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The users of one partition, by id.
pub type Users = HashMap<u32, User, BuildHasherDefault<IdHasher>>;

/// One partition of the image, behind its own lock in the engine.
#[derive(Debug, Default)]
pub struct Partition {
    /// Log position of the last record applied to this partition (0 = none).
    pub pos: u64,
    /// Users stored in this partition.
    pub users: Users,
}

impl Partition {
    /// The user `id`, if anything is stored for it.
    #[must_use]
    pub fn user(&self, id: u32) -> Option<&User> {
        self.users.get(&id)
    }

    /// Runs `f` on user `id` (created if missing) and drops the user if it ends up empty.
    pub fn with_user<R>(&mut self, id: u32, f: impl FnOnce(&mut User) -> R) -> R {
        let user = self.users.entry(id).or_default();
        let result = f(user);
        if user.is_empty() {
            self.users.remove(&id);
        }
        result
    }

    /// Runs `f` on user `id` only if it exists, dropping it if it ends up empty.
    pub fn with_existing<R>(&mut self, id: u32, f: impl FnOnce(&mut User) -> R) -> Option<R> {
        let user = self.users.get_mut(&id)?;
        let result = f(user);
        if user.is_empty() {
            self.users.remove(&id);
        }
        Some(result)
    }
}

/// Counts of what a partition holds, for `stats`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Census {
    /// Users with any data.
    pub users: u64,
    /// Friendship edges (each side counted once).
    pub edges: u64,
    /// Pending friend requests.
    pub requests: u64,
    /// Privacy entries.
    pub privacy_keys: u64,
    /// Bytes held (see [`User::memory_bytes`]) plus map overhead.
    pub memory_bytes: u64,
}

impl Census {
    /// Adds the counts of `partition`.
    pub fn add(&mut self, partition: &Partition) {
        self.users += partition.users.len() as u64;
        // hashbrown keeps one control byte plus the (key, value) slot per bucket.
        let slot = std::mem::size_of::<(u32, User)>() + 1;
        self.memory_bytes += (partition.users.capacity() * slot) as u64;
        for user in partition.users.values() {
            self.edges += user.friends.len() as u64;
            self.requests += user.requests.len() as u64;
            self.privacy_keys += user.privacy.len() as u64;
            self.memory_bytes += (user.memory_bytes() - std::mem::size_of::<User>()) as u64;
        }
    }
}

/// Intersects two id-sorted friend lists, calling `f` for each common id.
pub fn intersect(a: &[Friend], b: &[Friend], mut f: impl FnMut(u32)) {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (x, y) = (a[i].id, b[j].id);
        match x.cmp(&y) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                f(x);
                i += 1;
                j += 1;
            }
        }
    }
}

/// Intersects an id-sorted friend list with a sorted id list, calling `f` for each common id.
pub fn intersect_ids(a: &[Friend], ids: &[u32], mut f: impl FnMut(u32)) {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < ids.len() {
        match a[i].id.cmp(&ids[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                f(ids[j]);
                i += 1;
                j += 1;
            }
        }
    }
}
