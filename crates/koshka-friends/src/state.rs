//! In-memory image: partitions of users, friend lists packed in segments per partition.
//!
//! Friend lists dominate memory, so a partition keeps every user's list as a block in
//! fixed-size segments instead of a `Vec` per user, and a small index maps a user id to its
//! block:
//!
//! ```text
//! index:  user id u32 -> Slot { off u32 | len u16 | cap u14 + width code u2 }   12 B + ctrl
//! block:  base date u32 | ids u32 × cap (sorted) | dates, (date − base) packed
//!         in 1, 2 or 4 bytes each (the narrowest width that fits the list), cap of them
//! ```
//!
//! so a friend costs 4 B of id plus 1–4 B of date. Folder masks are stored only when they are
//! not the default "all friends" mask, as sorted `(friend, mask)` pairs in the user's
//! [`Extra`], which also holds requests and privacy rules (one packed blob per user); users
//! that have none of those have no `Extra` at all.
//!
//! A list that outgrows its block moves (with 1/32 spare) into the smallest hole that fits
//! (left by another list), or to the tail; lists of more than `BIG_WORDS` (1024) words get a
//! box of their own. Holes are counted and the segments are compacted in place (a stable slide) once
//! they exceed 1/32 of them, so an add or remove costs O(degree) amortised. Segments all have
//! one size so the allocator recycles them exactly (one growing `Vec` per partition
//! fragmented glibc's heap by a quarter).
//!
//! A user with nothing left is removed from its partition, so an image is equal to another
//! exactly when they hold the same data. Every mutation here is a pure function of its
//! arguments (the date comes from the record's log time), which keeps replay deterministic.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::ops::{put_rules, rule_from_bytes};
use crate::privacy::{canonicalize, Rule, Target};
use crate::{mask_bit, ALL_FRIENDS_BIT, FRIENDS_PER_USER_MAX};

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

/// Everything stored for one user, materialised (snapshot loading and tests).
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
}

/// Per-user data most users do not have: non-default folder masks, requests, privacy rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extra {
    /// `(friend, mask)` for friends whose mask is not [`ALL_FRIENDS_BIT`], sorted by friend.
    masks: Vec<(u32, u32)>,
    /// Incoming requests sorted by requester id.
    requests: Vec<Request>,
    /// Privacy entries sorted by key, packed.
    privacy: PrivacyBlob,
}

/// A user's privacy entries, sorted by key, packed in one allocation (20 keys of a few rules
/// each take ~400 B instead of ~2 KB as boxed entries):
///
/// ```text
/// keys u16 | offsets u32 × keys | entries: key_len u8 | key | rules u16 | rules × (tag u8 | value u32)
/// ```
///
/// Rules use the record encoding ([`rule_bytes`]). Writes rebuild the blob (O(size)); reads
/// binary-search the offsets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrivacyBlob(Box<[u8]>);

impl PrivacyBlob {
    fn encode(entries: &[PrivacyEntry]) -> Self {
        if entries.is_empty() {
            return Self::default();
        }
        let head = 2 + 4 * entries.len();
        let mut out = vec![0u8; head];
        // NOTE: at most PRIVACY_KEYS_PER_USER_MAX (< 65536) keys.
        #[expect(clippy::cast_possible_truncation)]
        out[..2].copy_from_slice(&(entries.len() as u16).to_le_bytes());
        for (i, e) in entries.iter().enumerate() {
            // NOTE: a blob is far below 4 GiB (keys × (key + rules) limits).
            #[expect(clippy::cast_possible_truncation)]
            let at = out.len() as u32;
            out[2 + 4 * i..6 + 4 * i].copy_from_slice(&at.to_le_bytes());
            // NOTE: keys are at most PRIVACY_KEY_LEN_MAX bytes.
            #[expect(clippy::cast_possible_truncation)]
            out.push(e.key.len() as u8);
            out.extend_from_slice(e.key.as_bytes());
            put_rules(&mut out, &e.rules);
        }
        Self(out.into_boxed_slice())
    }

    /// Number of keys.
    #[must_use]
    pub fn len(&self) -> usize {
        match *self.0 {
            [a, b, ..] => usize::from(u16::from_le_bytes([a, b])),
            _ => 0,
        }
    }

    /// No keys.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn entry(&self, i: usize) -> (&[u8], &[u8]) {
        let o = &self.0[2 + 4 * i..6 + 4 * i];
        let at = u32::from_le_bytes([o[0], o[1], o[2], o[3]]) as usize;
        let klen = usize::from(self.0[at]);
        let key = &self.0[at + 1..at + 1 + klen];
        let r = at + 1 + klen;
        let n = usize::from(u16::from_le_bytes([self.0[r], self.0[r + 1]]));
        (key, &self.0[r + 2..r + 2 + 5 * n])
    }

    fn find(&self, key: &str) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.entry(mid).0.cmp(key.as_bytes()) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    fn decode_rules(bytes: &[u8], out: &mut Vec<Rule>) {
        out.clear();
        out.extend(bytes.chunks_exact(5).filter_map(|c| {
            rule_from_bytes(c[0], u32::from_le_bytes([c[1], c[2], c[3], c[4]])).ok()
        }));
    }

    /// Decodes the rules under `key` into `out`; `false` if there are none.
    pub fn rules_into(&self, key: &str, out: &mut Vec<Rule>) -> bool {
        match self.find(key) {
            Some(i) => {
                Self::decode_rules(self.entry(i).1, out);
                true
            }
            None => false,
        }
    }

    /// Every entry, decoded, sorted by key.
    #[must_use]
    pub fn entries(&self) -> Vec<PrivacyEntry> {
        (0..self.len())
            .map(|i| {
                let (key, rules) = self.entry(i);
                let mut out = Vec::new();
                Self::decode_rules(rules, &mut out);
                PrivacyEntry {
                    key: String::from_utf8_lossy(key).into(),
                    rules: out.into_boxed_slice(),
                }
            })
            .collect()
    }
}

impl Extra {
    fn is_empty(&self) -> bool {
        self.masks.is_empty() && self.requests.is_empty() && self.privacy.is_empty()
    }

    fn memory_bytes(&self) -> usize {
        self.masks.capacity() * 8
            + self.requests.capacity() * std::mem::size_of::<Request>()
            + self.privacy.0.len()
    }

    fn set_mask(&mut self, id: u32, mask: u32) {
        match self.masks.binary_search_by_key(&id, |m| m.0) {
            Ok(i) if mask == ALL_FRIENDS_BIT => {
                self.masks.remove(i);
            }
            Ok(i) => self.masks[i].1 = mask,
            Err(_) if mask == ALL_FRIENDS_BIT => {}
            Err(i) => self.masks.insert(i, (id, mask)),
        }
        shrink(&mut self.masks);
    }
}

/// Releases a vector's slack once it is mostly unused (after removals).
fn shrink<T>(v: &mut Vec<T>) {
    if v.capacity() > 2 * v.len() + 4 {
        v.shrink_to_fit();
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

type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

/// Largest block capacity (14 bits of [`Slot::meta`]).
const CAP_MAX: usize = (1 << 14) - 1;

const _: () = assert!(FRIENDS_PER_USER_MAX + FRIENDS_PER_USER_MAX / 16 < CAP_MAX);

/// Where a user's friend list lives in the arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    /// First word of the block.
    off: u32,
    /// Friends stored.
    len: u16,
    /// Capacity (bits 0..14) and date width code (bits 14..16: 1, 2 or 4 bytes).
    meta: u16,
}

impl Slot {
    fn cap(self) -> usize {
        usize::from(self.meta & 0x3FFF)
    }

    fn width(self) -> usize {
        1 << (self.meta >> 14)
    }

    fn len(self) -> usize {
        usize::from(self.len)
    }

    fn off(self) -> usize {
        self.off as usize
    }

    fn words(self) -> usize {
        block_words(self.cap(), self.width())
    }
}

/// Words of a block with `cap` friends and `width`-byte dates.
fn block_words(cap: usize, width: usize) -> usize {
    1 + cap + (cap * width).div_ceil(4)
}

/// The narrowest date width (bytes) holding `delta`.
fn width_for(delta: u32) -> usize {
    if delta <= 0xFF {
        1
    } else if delta <= 0xFFFF {
        2
    } else {
        4
    }
}

fn get_packed(words: &[u32], width: usize, i: usize) -> u32 {
    match width {
        1 => (words[i >> 2] >> ((i & 3) * 8)) & 0xFF,
        2 => (words[i >> 1] >> ((i & 1) * 16)) & 0xFFFF,
        _ => words[i],
    }
}

fn set_packed(words: &mut [u32], width: usize, i: usize, value: u32) {
    match width {
        1 => {
            let shift = (i & 3) * 8;
            let w = &mut words[i >> 2];
            *w = (*w & !(0xFF << shift)) | (value << shift);
        }
        2 => {
            let shift = (i & 1) * 16;
            let w = &mut words[i >> 1];
            *w = (*w & !(0xFFFF << shift)) | (value << shift);
        }
        _ => words[i] = value,
    }
}

/// A read-only view of one user's friends.
#[derive(Debug, Clone, Copy)]
pub struct Friends<'a> {
    ids: &'a [u32],
    dates: &'a [u32],
    base: u32,
    width: usize,
    masks: &'a [(u32, u32)],
}

impl<'a> Friends<'a> {
    const EMPTY: Friends<'static> = Friends {
        ids: &[],
        dates: &[],
        base: 0,
        width: 4,
        masks: &[],
    };

    /// Number of friends.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// No friends.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Friend ids, ascending.
    #[must_use]
    pub fn ids(&self) -> &'a [u32] {
        self.ids
    }

    /// The `(friend, mask)` pairs whose mask is not [`ALL_FRIENDS_BIT`], by friend id.
    #[must_use]
    pub fn special_masks(&self) -> &'a [(u32, u32)] {
        self.masks
    }

    /// Index of friend `id`.
    #[must_use]
    pub fn position(&self, id: u32) -> Option<usize> {
        self.ids.binary_search(&id).ok()
    }

    fn mask_of_friend(&self, id: u32) -> u32 {
        self.masks
            .binary_search_by_key(&id, |m| m.0)
            .map_or(ALL_FRIENDS_BIT, |i| self.masks[i].1)
    }

    /// The friend at index `i` (`i < len`).
    #[must_use]
    pub fn at(&self, i: usize) -> Friend {
        let id = self.ids[i];
        Friend {
            id,
            mask: self.mask_of_friend(id),
            date: self
                .base
                .wrapping_add(get_packed(self.dates, self.width, i)),
        }
    }

    /// The friend entry for `id`.
    #[must_use]
    pub fn get(&self, id: u32) -> Option<Friend> {
        self.position(id).map(|i| self.at(i))
    }

    /// The folder mask of `id` (0 if not a friend).
    #[must_use]
    pub fn mask_of(&self, id: u32) -> u32 {
        self.position(id).map_or(0, |_| self.mask_of_friend(id))
    }

    /// Every friend, ascending by id.
    pub fn iter(&self) -> impl Iterator<Item = Friend> + 'a {
        let this = *self;
        let mut m = 0;
        (0..this.ids.len()).map(move |i| {
            let id = this.ids[i];
            while m < this.masks.len() && this.masks[m].0 < id {
                m += 1;
            }
            let mask = match this.masks.get(m) {
                Some(&(f, mask)) if f == id => mask,
                _ => ALL_FRIENDS_BIT,
            };
            Friend {
                id,
                mask,
                date: this
                    .base
                    .wrapping_add(get_packed(this.dates, this.width, i)),
            }
        })
    }

    /// Number of friends whose mask has `bit`.
    #[must_use]
    pub fn count_with(&self, bit: u32) -> usize {
        if bit & ALL_FRIENDS_BIT != 0 {
            self.len()
        } else {
            self.masks.iter().filter(|m| m.1 & bit != 0).count()
        }
    }
}

/// A read-only view of everything stored for one user.
#[derive(Debug, Clone, Copy)]
pub struct UserRef<'a> {
    /// The friend list.
    pub friends: Friends<'a>,
    extra: Option<&'a Extra>,
}

impl<'a> UserRef<'a> {
    /// The friend entry for `id`.
    #[must_use]
    pub fn friend(&self, id: u32) -> Option<Friend> {
        self.friends.get(id)
    }

    /// The folder mask of `id` (0 if not a friend).
    #[must_use]
    pub fn mask_of(&self, id: u32) -> u32 {
        self.friends.mask_of(id)
    }

    /// Incoming requests sorted by requester.
    #[must_use]
    pub fn requests(&self) -> &'a [Request] {
        self.extra.map_or(&[], |e| &e.requests)
    }

    /// The request from `from`.
    #[must_use]
    pub fn request(&self, from: u32) -> Option<Request> {
        let requests = self.requests();
        requests
            .binary_search_by_key(&from, |r| r.from)
            .ok()
            .map(|i| requests[i])
    }

    /// Privacy entries sorted by key (decoded).
    #[must_use]
    pub fn privacy_entries(&self) -> Vec<PrivacyEntry> {
        self.extra.map_or_else(Vec::new, |e| e.privacy.entries())
    }

    /// Number of privacy keys.
    #[must_use]
    pub fn privacy_count(&self) -> usize {
        self.extra.map_or(0, |e| e.privacy.len())
    }

    /// Whether rules are stored under `key`.
    #[must_use]
    pub fn has_privacy(&self, key: &str) -> bool {
        self.extra.is_some_and(|e| e.privacy.find(key).is_some())
    }

    /// Decodes the rules under `key` into `out`; `false` if there are none.
    pub fn privacy_into(&self, key: &str, out: &mut Vec<Rule>) -> bool {
        self.extra.is_some_and(|e| e.privacy.rules_into(key, out))
    }

    /// The privacy rules under `key`.
    #[must_use]
    pub fn privacy(&self, key: &str) -> Option<Vec<Rule>> {
        let mut out = Vec::new();
        self.privacy_into(key, &mut out).then_some(out)
    }

    /// Materialises the user.
    #[must_use]
    pub fn to_user(&self) -> User {
        User {
            friends: self.friends.iter().collect(),
            requests: self.requests().to_vec(),
            privacy: self.privacy_entries(),
        }
    }
}

/// Words per arena segment (8 KiB). Every segment has this size, so a freed segment is
/// reused as is by the allocator; growing one big `Vec` instead leaves the heap fragmented
/// (measured: ~5 MB of 20 MB RSS at 1 M edges).
const SEG_WORDS: usize = 2048;

/// Blocks larger than this (lists of ~800+ friends) get an allocation of their own.
const BIG_WORDS: usize = SEG_WORDS / 2;

/// Smallest block (base, one id, one word of dates): shorter holes are left to compaction.
const HOLE_MIN: u32 = 3;

/// [`Slot::off`] of a block stored in [`Lists::big`].
const BIG: u32 = u32::MAX;

/// The friend lists of one partition: blocks in fixed-size segments (big lists apart) and an
/// index of slots.
#[derive(Debug, Default)]
struct Lists {
    index: IdMap<Slot>,
    /// Segments of [`SEG_WORDS`] words; a block never straddles two.
    segs: Vec<Box<[u32]>>,
    /// Words used in the last segment.
    used: usize,
    /// Blocks of more than [`BIG_WORDS`] words, by user.
    big: IdMap<Box<[u32]>>,
    /// Words of the segments in no block.
    garbage: usize,
    /// Holes left by freed blocks, as `(words, address)`: a block takes the smallest hole
    /// that fits before the tail grows, so lists growing one friend at a time recycle each
    /// other's old blocks instead of waiting for compaction.
    holes: std::collections::BTreeSet<(u32, u32)>,
    /// Reused buffers of [`Lists::rebuild`] (kept only while small).
    scratch: (Vec<u32>, Vec<u32>),
}

/// Largest scratch buffer kept between rebuilds.
const SCRATCH_KEEP: usize = 256;

impl Lists {
    fn block(&self, user: u32, slot: Slot) -> &[u32] {
        if slot.off == BIG {
            return self.big.get(&user).map_or(&[], |b| &b[..]);
        }
        let (s, w) = (slot.off() / SEG_WORDS, slot.off() % SEG_WORDS);
        &self.segs[s][w..w + slot.words()]
    }

    fn block_mut(&mut self, user: u32, slot: Slot) -> &mut [u32] {
        if slot.off == BIG {
            return self.big.get_mut(&user).map_or(&mut [], |b| &mut b[..]);
        }
        let (s, w) = (slot.off() / SEG_WORDS, slot.off() % SEG_WORDS);
        &mut self.segs[s][w..w + slot.words()]
    }

    fn view(&self, user: u32, slot: Slot) -> (&[u32], &[u32], u32, usize) {
        let block = self.block(user, slot);
        let cap = slot.cap();
        (
            &block[1..=slot.len()],
            &block[1 + cap..],
            block[0],
            slot.width(),
        )
    }

    /// Address of the first free word (the end of the last segment's blocks).
    fn tail(&self) -> usize {
        (self.segs.len().max(1) - 1) * SEG_WORDS + self.used
    }

    /// Reserves `words` (≤ [`SEG_WORDS`]) at the start of the smallest hole that fits (the
    /// rest stays a hole if a block fits in it), else at the tail, opening a segment if
    /// needed.
    fn place(&mut self, words: usize) -> usize {
        // NOTE: block sizes are at most SEG_WORDS.
        #[expect(clippy::cast_possible_truncation)]
        let w = words as u32;
        if let Some(&hole) = self.holes.range((w, 0)..).next() {
            self.holes.remove(&hole);
            self.garbage -= words;
            let rest = hole.0 - w;
            if rest >= HOLE_MIN {
                self.holes.insert((rest, hole.1 + w));
            }
            return hole.1 as usize;
        }
        self.place_tail(words)
    }

    /// Reserves `words` (≤ [`SEG_WORDS`]) at the tail, opening a segment if needed.
    fn place_tail(&mut self, words: usize) -> usize {
        if self.segs.is_empty() || self.used + words > SEG_WORDS {
            if !self.segs.is_empty() {
                let rest = SEG_WORDS - self.used;
                self.garbage += rest;
                // NOTE: rest < SEG_WORDS and addresses fit u32 (see push_block).
                #[expect(clippy::cast_possible_truncation)]
                if rest as u32 >= HOLE_MIN {
                    self.holes.insert((rest as u32, self.tail() as u32));
                }
            }
            self.segs.push(vec![0; SEG_WORDS].into_boxed_slice());
            self.used = 0;
        }
        let off = self.tail();
        self.used += words;
        off
    }

    /// Frees the block of `slot`: pulls the tail back if it is the last block, else leaves a
    /// hole.
    fn free(&mut self, user: u32, slot: Slot) {
        if slot.off == BIG {
            self.big.remove(&user);
        } else if slot.off() + slot.words() == self.tail() {
            self.used -= slot.words();
        } else {
            self.garbage += slot.words();
            // NOTE: block sizes are at most SEG_WORDS.
            #[expect(clippy::cast_possible_truncation)]
            self.holes.insert((slot.words() as u32, slot.off));
        }
    }

    /// Stores a block for `ids`/`dates` (same length, ids ascending) with capacity `cap`.
    fn push_block(&mut self, user: u32, ids: &[u32], dates: &[u32], cap: usize) -> Slot {
        let cap = cap.clamp(ids.len(), CAP_MAX);
        let base = dates.iter().copied().min().unwrap_or(0);
        let top = dates.iter().copied().max().unwrap_or(0);
        let width = width_for(top - base);
        let words = block_words(cap, width);
        let mut own = Vec::new();
        let (off, block) = if words > BIG_WORDS {
            own = vec![0; words];
            (BIG as usize, &mut own[..])
        } else {
            let off = self.place(words);
            let (s, w) = (off / SEG_WORDS, off % SEG_WORDS);
            (off, &mut self.segs[s][w..w + words])
        };
        block[0] = base;
        block[1..=ids.len()].copy_from_slice(ids);
        let packed = &mut block[1 + cap..];
        for (i, &d) in dates.iter().enumerate() {
            set_packed(packed, width, i, d - base);
        }
        if !own.is_empty() {
            self.big.insert(user, own.into_boxed_slice());
        }
        // NOTE: cap <= CAP_MAX (14 bits), width code <= 2, len <= cap, and the segments of
        // one partition stay far below 2^32 words (16 GiB).
        #[expect(clippy::cast_possible_truncation)]
        Slot {
            off: off as u32,
            len: ids.len() as u16,
            meta: cap as u16 | ((width.trailing_zeros() as u16) << 14),
        }
    }

    /// Rewrites `user`'s list through `edit` into a new block (with 1/32 spare capacity if
    /// `grow`), or drops the user's list if it ends up empty.
    fn rebuild(&mut self, user: u32, edit: impl FnOnce(&mut Vec<u32>, &mut Vec<u32>), grow: bool) {
        let (mut ids, mut dates) = std::mem::take(&mut self.scratch);
        ids.clear();
        dates.clear();
        if let Some(&slot) = self.index.get(&user) {
            let (old, packed, base, width) = self.view(user, slot);
            ids.extend_from_slice(old);
            dates.extend((0..old.len()).map(|i| base.wrapping_add(get_packed(packed, width, i))));
            self.free(user, slot);
        }
        edit(&mut ids, &mut dates);
        if ids.is_empty() {
            self.index.remove(&user);
        } else {
            let spare = if grow { ids.len() / 32 } else { 0 };
            let slot = self.push_block(user, &ids, &dates, ids.len() + spare);
            self.index.insert(user, slot);
        }
        if ids.capacity() <= SCRATCH_KEEP && dates.capacity() <= SCRATCH_KEEP {
            self.scratch = (ids, dates);
        }
        self.maybe_compact();
    }

    /// Inserts friend `id` with `date` into `user`'s list (no-op if present).
    fn insert(&mut self, user: u32, id: u32, date: u32) {
        let Some(&slot) = self.index.get(&user) else {
            self.rebuild(
                user,
                |ids, dates| {
                    ids.push(id);
                    dates.push(date);
                },
                false,
            );
            return;
        };
        let (ids, _, base, width) = self.view(user, slot);
        let Err(pos) = ids.binary_search(&id) else {
            return;
        };
        let len = slot.len();
        let fits = date >= base && width_for(date - base) <= width;
        if len >= CAP_MAX {
            debug_assert!(false, "friend list over {CAP_MAX}");
            return;
        }
        if len == slot.cap() || !fits {
            self.rebuild(
                user,
                |ids, dates| {
                    ids.insert(pos, id);
                    dates.insert(pos, date);
                },
                true,
            );
            return;
        }
        let cap = slot.cap();
        let block = self.block_mut(user, slot);
        block.copy_within(1 + pos..=len, 2 + pos);
        block[1 + pos] = id;
        let packed = &mut block[1 + cap..];
        for i in (pos..len).rev() {
            let v = get_packed(packed, width, i);
            set_packed(packed, width, i + 1, v);
        }
        set_packed(packed, width, pos, date - base);
        if let Some(s) = self.index.get_mut(&user) {
            s.len += 1;
        }
    }

    /// Removes friend `id` from `user`'s list; `true` if it was there.
    fn remove(&mut self, user: u32, id: u32) -> bool {
        let Some(&slot) = self.index.get(&user) else {
            return false;
        };
        let (ids, _, _, width) = self.view(user, slot);
        let Ok(pos) = ids.binary_search(&id) else {
            return false;
        };
        let len = slot.len();
        if len == 1 || slot.cap() - len > len / 8 + 4 {
            self.rebuild(
                user,
                |ids, dates| {
                    ids.remove(pos);
                    dates.remove(pos);
                },
                false,
            );
            return true;
        }
        let cap = slot.cap();
        let block = self.block_mut(user, slot);
        block.copy_within(2 + pos..=len, 1 + pos);
        let packed = &mut block[1 + cap..];
        for i in pos + 1..len {
            let v = get_packed(packed, width, i);
            set_packed(packed, width, i - 1, v);
        }
        set_packed(packed, width, len - 1, 0);
        if let Some(s) = self.index.get_mut(&user) {
            s.len -= 1;
        }
        true
    }

    /// Drops `user`'s whole list.
    fn remove_all(&mut self, user: u32) {
        if let Some(slot) = self.index.remove(&user) {
            self.free(user, slot);
            self.maybe_compact();
        }
    }

    /// Compacts once holes exceed 1/32 of the segments.
    fn maybe_compact(&mut self) {
        if self.garbage > 64 && self.garbage * 32 > self.segs.len() * SEG_WORDS {
            self.compact();
        }
    }

    /// Slides every block, in address order, down over the holes (first fit, never across a
    /// segment boundary), then releases the segments left empty. A block's new address is
    /// never above its old one: greedy packing of the same sequence places each block at the
    /// earliest position, and its old position was a valid one.
    fn compact(&mut self) {
        let mut order: Vec<(u32, u32)> = self
            .index
            .iter()
            .filter(|(_, s)| s.off != BIG)
            .map(|(&u, s)| (s.off, u))
            .collect();
        order.sort_unstable();
        let (mut ds, mut dw) = (0, 0);
        for &(off, user) in &order {
            let Some(slot) = self.index.get_mut(&user) else {
                continue;
            };
            let words = slot.words();
            if dw + words > SEG_WORDS {
                ds += 1;
                dw = 0;
            }
            let (s, w) = (off as usize / SEG_WORDS, off as usize % SEG_WORDS);
            if s == ds {
                self.segs[s].copy_within(w..w + words, dw);
            } else {
                let (low, high) = self.segs.split_at_mut(s);
                low[ds][dw..dw + words].copy_from_slice(&high[0][w..w + words]);
            }
            // NOTE: addresses fit u32 (see push_block).
            #[expect(clippy::cast_possible_truncation)]
            {
                slot.off = (ds * SEG_WORDS + dw) as u32;
            }
            dw += words;
        }
        self.segs
            .truncate(if order.is_empty() { 0 } else { ds + 1 });
        self.segs.shrink_to_fit();
        self.used = dw;
        self.garbage = 0;
        self.holes.clear();
    }

    fn memory_bytes(&self) -> usize {
        self.segs.len() * SEG_WORDS * 4
            + self.segs.capacity() * std::mem::size_of::<Box<[u32]>>()
            + self.big.values().map(|b| b.len() * 4).sum::<usize>()
            + table_bytes(
                self.big.capacity(),
                std::mem::size_of::<(u32, Box<[u32]>)>(),
            )
            + table_bytes(self.index.capacity(), 12)
            + (self.scratch.0.capacity() + self.scratch.1.capacity()) * 4
            + self.holes.len() * 16
    }
}

/// Bytes of a hashbrown table able to hold `capacity` entries of `slot` bytes: buckets are a
/// power of two loaded to at most 7/8, each with one control byte.
fn table_bytes(capacity: usize, slot: usize) -> usize {
    let buckets = if capacity == 0 {
        0
    } else if capacity < 8 {
        (capacity + 1).next_power_of_two()
    } else {
        (capacity * 8 / 7).next_power_of_two()
    };
    buckets * (slot + 1)
}

/// One partition of the image, behind its own lock in the engine.
#[derive(Debug, Default)]
pub struct Partition {
    /// Log position of the last record applied to this partition (0 = none).
    pub pos: u64,
    lists: Lists,
    extra: IdMap<Extra>,
}

impl Partition {
    /// The user `id`, if anything is stored for it.
    #[must_use]
    pub fn user(&self, id: u32) -> Option<UserRef<'_>> {
        let extra = self.extra.get(&id);
        let friends = match self.lists.index.get(&id) {
            Some(&slot) => {
                let (ids, dates, base, width) = self.lists.view(id, slot);
                Friends {
                    ids,
                    dates,
                    base,
                    width,
                    masks: extra.map_or(&[], |e| &e.masks),
                }
            }
            None if extra.is_some() => Friends::EMPTY,
            None => return None,
        };
        Some(UserRef { friends, extra })
    }

    /// Ids of every stored user, ascending.
    #[must_use]
    pub fn user_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.lists.index.keys().copied().collect();
        ids.extend(
            self.extra
                .keys()
                .copied()
                .filter(|id| !self.lists.index.contains_key(id)),
        );
        ids.sort_unstable();
        ids
    }

    /// Number of stored users.
    #[must_use]
    pub fn user_count(&self) -> usize {
        self.lists.index.len()
            + self
                .extra
                .keys()
                .filter(|id| !self.lists.index.contains_key(id))
                .count()
    }

    /// Stores `user` as `id` (replacing anything there), lists at exact capacity.
    /// `user.friends` must be sorted by id without duplicates.
    pub fn insert_user(&mut self, id: u32, user: User) {
        self.remove_user(id);
        if !user.friends.is_empty() {
            let ids: Vec<u32> = user.friends.iter().map(|f| f.id).collect();
            let dates: Vec<u32> = user.friends.iter().map(|f| f.date).collect();
            let slot = self.lists.push_block(id, &ids, &dates, ids.len());
            self.lists.index.insert(id, slot);
        }
        let masks: Vec<(u32, u32)> = user
            .friends
            .iter()
            .filter(|f| f.mask != ALL_FRIENDS_BIT)
            .map(|f| (f.id, f.mask))
            .collect();
        let extra = Extra {
            masks,
            requests: user.requests,
            privacy: PrivacyBlob::encode(&user.privacy),
        };
        if !extra.is_empty() {
            self.extra.insert(id, extra);
        }
    }

    /// Removes everything stored for `id`.
    pub fn remove_user(&mut self, id: u32) {
        self.lists.remove_all(id);
        self.extra.remove(&id);
    }

    /// Runs `f` on `id`'s extra data (created if missing), dropping it if it ends up empty.
    fn with_extra<R>(&mut self, id: u32, f: impl FnOnce(&mut Extra) -> R) -> R {
        let extra = self.extra.entry(id).or_default();
        let result = f(extra);
        if extra.is_empty() {
            self.extra.remove(&id);
        }
        result
    }

    fn has_friend(&self, user: u32, id: u32) -> bool {
        self.lists
            .index
            .get(&user)
            .is_some_and(|&s| self.lists.view(user, s).0.binary_search(&id).is_ok())
    }

    /// Adds `id` with `mask`, or replaces the mask of an existing friend (keeping its date).
    pub fn set_friend(&mut self, user: u32, id: u32, mask: u32, date: u32) {
        let mask = mask | ALL_FRIENDS_BIT;
        self.lists.insert(user, id, date);
        if mask != ALL_FRIENDS_BIT || self.extra.contains_key(&user) {
            self.with_extra(user, |e| e.set_mask(id, mask));
        }
    }

    /// Adds `id` to no folder unless already a friend.
    pub fn ensure_friend(&mut self, user: u32, id: u32, date: u32) {
        self.lists.insert(user, id, date);
    }

    /// Replaces the mask of an existing friend with `f(mask)` (bit 0 kept).
    pub fn update_mask(&mut self, user: u32, id: u32, f: impl FnOnce(u32) -> u32) {
        let Some(old) = self.user(user).and_then(|u| u.friend(id)).map(|x| x.mask) else {
            return;
        };
        let mask = f(old) | ALL_FRIENDS_BIT;
        if mask != old {
            self.with_extra(user, |e| e.set_mask(id, mask));
        }
    }

    /// Removes friend `id`; `true` if it was one.
    pub fn remove_friend(&mut self, user: u32, id: u32) -> bool {
        let removed = self.lists.remove(user, id);
        if removed && self.extra.contains_key(&user) {
            self.with_extra(user, |e| e.set_mask(id, ALL_FRIENDS_BIT));
        }
        removed
    }

    /// Makes folder `folder` hold exactly the friends among `ids` (sorted, deduplicated).
    pub fn set_folder(&mut self, user: u32, folder: u8, ids: &[u32]) {
        let bit = mask_bit(folder);
        let Some(u) = self.user(user) else {
            return;
        };
        let masks: Vec<(u32, u32)> = u
            .friends
            .iter()
            .filter_map(|f| {
                let mask = if ids.binary_search(&f.id).is_ok() {
                    f.mask | bit
                } else {
                    f.mask & !bit
                };
                (mask != ALL_FRIENDS_BIT).then_some((f.id, mask))
            })
            .collect();
        self.with_extra(user, |e| e.masks = masks);
    }

    /// Deletes folder `folder`: no friend stays in it and rules naming it are dropped.
    pub fn delete_folder(&mut self, user: u32, folder: u8) {
        if !self.extra.contains_key(&user) {
            return;
        }
        let bit = mask_bit(folder);
        self.with_extra(user, |e| {
            for m in &mut e.masks {
                m.1 &= !bit;
            }
            e.masks.retain(|m| m.1 != ALL_FRIENDS_BIT);
            shrink(&mut e.masks);
            let mut entries = e.privacy.entries();
            let mut changed = false;
            for entry in &mut entries {
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
                    entry.rules = canonicalize(&kept, user).into_boxed_slice();
                    changed = true;
                }
            }
            if changed {
                e.privacy = PrivacyBlob::encode(&entries);
            }
        });
    }

    /// Adds or replaces the request from `from`.
    pub fn set_request(&mut self, user: u32, from: u32, mask: u32, date: u32) {
        let request = Request {
            from,
            mask: mask | ALL_FRIENDS_BIT,
            date,
        };
        self.with_extra(user, |e| {
            match e.requests.binary_search_by_key(&from, |r| r.from) {
                Ok(i) => e.requests[i] = request,
                Err(i) => e.requests.insert(i, request),
            }
        });
    }

    /// Removes the request from `from`; `true` if there was one.
    pub fn remove_request(&mut self, user: u32, from: u32) -> bool {
        if !self.extra.contains_key(&user) {
            return false;
        }
        self.with_extra(user, |e| {
            match e.requests.binary_search_by_key(&from, |r| r.from) {
                Ok(i) => {
                    e.requests.remove(i);
                    shrink(&mut e.requests);
                    true
                }
                Err(_) => false,
            }
        })
    }

    /// Removes every request of `user`.
    pub fn clear_requests(&mut self, user: u32) {
        if self.extra.contains_key(&user) {
            self.with_extra(user, |e| e.requests = Vec::new());
        }
    }

    /// Stores canonical `rules` under `key`.
    pub fn set_privacy(&mut self, user: u32, key: &str, rules: Box<[Rule]>) {
        self.with_extra(user, |e| {
            let mut entries = e.privacy.entries();
            match entries.binary_search_by(|x| (*x.key).cmp(key)) {
                Ok(i) => entries[i].rules = rules,
                Err(i) => entries.insert(
                    i,
                    PrivacyEntry {
                        key: key.into(),
                        rules,
                    },
                ),
            }
            e.privacy = PrivacyBlob::encode(&entries);
        });
    }

    /// Removes the rules under `key`; `true` if there were some.
    pub fn remove_privacy(&mut self, user: u32, key: &str) -> bool {
        if !self.extra.contains_key(&user) {
            return false;
        }
        self.with_extra(user, |e| {
            let mut entries = e.privacy.entries();
            match entries.binary_search_by(|x| (*x.key).cmp(key)) {
                Ok(i) => {
                    entries.remove(i);
                    e.privacy = PrivacyBlob::encode(&entries);
                    true
                }
                Err(_) => false,
            }
        })
    }

    /// Whether `user` has friend `id` (test helper and limit checks).
    #[must_use]
    pub fn is_friend(&self, user: u32, id: u32) -> bool {
        self.has_friend(user, id)
    }

    /// Bytes held by this partition: arena and table capacity included.
    #[must_use]
    pub fn memory_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(u32, Extra)>();
        self.lists.memory_bytes()
            + table_bytes(self.extra.capacity(), slot)
            + self.extra.values().map(Extra::memory_bytes).sum::<usize>()
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
    /// Bytes held (see [`Partition::memory_bytes`]).
    pub memory_bytes: u64,
}

impl Census {
    /// Adds the counts of `partition`.
    pub fn add(&mut self, partition: &Partition) {
        self.users += partition.user_count() as u64;
        self.memory_bytes += partition.memory_bytes() as u64;
        for slot in partition.lists.index.values() {
            self.edges += slot.len() as u64;
        }
        for extra in partition.extra.values() {
            self.requests += extra.requests.len() as u64;
            self.privacy_keys += extra.privacy.len() as u64;
        }
    }
}

/// Intersects two ascending id lists, calling `f` for each common id.
pub fn intersect(a: &[u32], b: &[u32], mut f: impl FnMut(u32)) {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (x, y) = (a[i], b[j]);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u32, step: u32) -> impl Iterator<Item = u32> {
        (1..=n).map(move |i| i * step)
    }

    #[test]
    fn lists_survive_adds_removes_and_compaction() {
        let mut p = Partition::default();
        let mut model: std::collections::BTreeMap<u32, std::collections::BTreeMap<u32, u32>> =
            Default::default();
        let mut x = 12345u64;
        for step in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let user = (x % 40) as u32 + 1;
            let friend = ((x >> 8) % 300) as u32 + 1;
            // Dates mostly close, sometimes far apart, to exercise every width.
            let date = 1_000_000 + step + if x.is_multiple_of(97) { 100_000 } else { 0 };
            if x.is_multiple_of(3) {
                let had = model
                    .get_mut(&user)
                    .and_then(|m| m.remove(&friend))
                    .is_some();
                assert_eq!(p.remove_friend(user, friend), had);
            } else {
                p.ensure_friend(user, friend, date);
                model.entry(user).or_default().entry(friend).or_insert(date);
            }
            model.retain(|_, m| !m.is_empty());
        }
        for (user, friends) in &model {
            let got: Vec<(u32, u32)> = p
                .user(*user)
                .unwrap()
                .friends
                .iter()
                .map(|f| (f.id, f.date))
                .collect();
            let want: Vec<(u32, u32)> = friends.iter().map(|(a, b)| (*a, *b)).collect();
            assert_eq!(got, want, "user {user}");
        }
        assert_eq!(p.user_count(), model.len());
    }

    #[test]
    fn big_lists_grow_shrink_and_move_between_layouts() {
        let mut p = Partition::default();
        for user in 1..=30u32 {
            p.ensure_friend(user, 5, 100);
        }
        for k in 0..3_000u32 {
            let f = (k * 7919) % 100_000 + 1;
            p.ensure_friend(1_000, f, 1_000 + k * 40);
            if k % 5 == 0 {
                p.remove_friend(user_of(k), 5);
            }
        }
        let u = p.user(1_000).unwrap();
        assert_eq!(u.friends.len(), 3_000);
        let ids = u.friends.ids();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        for k in (0..3_000u32).step_by(3) {
            let f = (k * 7919) % 100_000 + 1;
            assert_eq!(u.friend(f).map(|x| x.date), Some(1_000 + k * 40));
        }
        for k in 0..2_990u32 {
            let f = (k * 7919) % 100_000 + 1;
            assert!(p.remove_friend(1_000, f));
        }
        let u = p.user(1_000).unwrap();
        assert_eq!(u.friends.len(), 10);
        for k in 2_990..3_000u32 {
            let f = (k * 7919) % 100_000 + 1;
            assert_eq!(u.friend(f).map(|x| x.date), Some(1_000 + k * 40));
        }
        assert!(p.lists.big.is_empty());
    }

    fn user_of(k: u32) -> u32 {
        k % 30 + 1
    }

    /// The in-process estimate counts capacity and per-user overhead, and stays within the
    /// budget the layout is designed for: ~4 B of id + 1 B of date per half-edge, plus the
    /// index and the block header per user.
    #[test]
    fn bytes_per_edge_is_bounded() {
        let mut p = Partition::default();
        let users = 2_000u32;
        let mut halves = 0usize;
        for user in 1..=users {
            let degree = 10 + user % 11;
            for (k, friend) in ids(degree, 7).enumerate() {
                let friend = friend + user;
                p.ensure_friend(user, friend, 1_700_000_000 + k as u32);
                halves += 1;
            }
        }
        let mut census = Census::default();
        census.add(&p);
        assert_eq!(census.edges as usize, halves);
        let bytes = census.memory_bytes as f64;
        // Half-edges of the bench: ~5 B each plus ~20 B of index and header per user.
        let floor = (halves * 5) as f64;
        assert!(bytes >= floor, "estimate {bytes} below the payload {floor}");
        let per_half = bytes / halves as f64;
        assert!(per_half <= 8.0, "{per_half:.2} B per half-edge");
    }
}
