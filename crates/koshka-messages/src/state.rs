//! In-memory state: partitions of mailboxes, compact message storage and derived indexes.
//!
//! A mailbox keeps its messages as fixed-size [`Message`] structs in one `Vec` indexed by
//! `local_id - first_lid`, and all their texts in one byte arena. Derived indexes (sublists,
//! conversations, dialogs, replies, search) hold local ids only and are rebuilt from the
//! messages when a snapshot is loaded.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::flags::{DELETED, OUTBOX, UNREAD, WALL_REPLY};
use crate::ops::Text;
use crate::search::{Lexicon, SearchIndex};
use crate::{Flavour, HISTORY_EVENTS_MAX};

/// Engine-internal flag: the slot's message was removed for good (delete, trim, dialog
/// delete). Never visible to clients (they may only set [`crate::flags::USER_MASK`] bits).
pub const REMOVED: u32 = 1 << 31;

/// One message, 32 bytes; its text lives in the mailbox arena.
///
/// ```text
/// +---------+-------------+---------+----------+-------------+-------------+-------------+--------------+
/// | peer i64| peer_lid u32| date u32| flags u32| text_off u32| body_len u32| subj_len u16| kludge_len u16|
/// +---------+-------------+---------+----------+-------------+-------------+-------------+--------------+
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Message {
    /// Correspondent (mail) or author (wall).
    pub peer: i64,
    /// Twin message in the peer's mailbox (mail) or parent post (wall reply); 0 = none.
    pub peer_lid: u32,
    /// Unix seconds, from the log.
    pub date: u32,
    /// Flags; [`REMOVED`] marks an empty slot.
    pub flags: u32,
    /// Offset of the kludges in the arena; subject and body follow.
    pub text_off: u32,
    /// Body length.
    pub body_len: u32,
    /// Subject length.
    pub subject_len: u16,
    /// Kludges length.
    pub kludges_len: u16,
}

const _: () = assert!(std::mem::size_of::<Message>() == 32);

impl Message {
    /// True unless removed.
    #[must_use]
    pub fn alive(&self) -> bool {
        self.flags & REMOVED == 0
    }

    fn text_len(&self) -> usize {
        usize::from(self.kludges_len) + usize::from(self.subject_len) + self.body_len as usize
    }
}

/// Does a message with `flags` belong to sublist `(and, xor)`?
#[must_use]
pub fn in_sublist(flags: u32, and: u32, xor: u32) -> bool {
    flags & REMOVED == 0 && (flags ^ xor) & and == 0
}

/// Does a message with `flags` belong to its peer's conversation (and so to the dialogs)?
#[must_use]
pub fn in_conversation(flags: u32) -> bool {
    flags & (REMOVED | DELETED) == 0
}

fn unread_inbox(flavour: Flavour, flags: u32) -> bool {
    flavour == Flavour::Messages && in_conversation(flags) && flags & (UNREAD | OUTBOX) == UNREAD
}

fn is_reply(flavour: Flavour, flags: u32) -> bool {
    flavour == Flavour::Wall && in_conversation(flags) && flags & WALL_REPLY != 0
}

/// One history event kind (VK numbering).
pub mod event {
    /// Message removed: `(lid, 0)`.
    pub const DELETED: u8 = 0;
    /// Flags replaced: `(lid, new flags)`.
    pub const FLAGS_SET: u8 = 1;
    /// Flags ORed: `(lid, mask)`.
    pub const FLAGS_ADDED: u8 = 2;
    /// Flags cleared: `(lid, mask)`.
    pub const FLAGS_CLEARED: u8 = 3;
    /// New message: `(lid, flags)`.
    pub const NEW: u8 = 4;
    /// Text edited: `(lid, 0)`.
    pub const EDITED: u8 = 5;
    /// Incoming messages read up to: `(lid, peer)`.
    pub const READ_UPTO: u8 = 6;
}

/// One event of a mailbox's history ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Kind, see [`event`].
    pub kind: u8,
    /// Local id.
    pub lid: u32,
    /// Flags, mask or peer, by kind.
    pub value: i64,
}

/// The bounded event ring of one mailbox. Event `i` of the ring has timestamp
/// `ts - (len - 1 - i)`; `ts` only grows.
#[derive(Debug, Default, Clone)]
pub struct History {
    /// Timestamp of the newest event (0 = none yet).
    pub ts: u64,
    /// The newest [`HISTORY_EVENTS_MAX`] events, oldest first.
    pub events: VecDeque<Event>,
}

impl History {
    fn push(&mut self, kind: u8, lid: u32, value: i64) {
        if self.events.len() == HISTORY_EVENTS_MAX {
            self.events.pop_front();
        } else if self.events.len() == self.events.capacity() {
            // Grow by a quarter, not double: most rings never fill.
            let len = self.events.len();
            let want = (len + len / 4).clamp(4, HISTORY_EVENTS_MAX);
            self.events.reserve_exact(want.max(len + 1) - len);
        }
        self.events.push_back(Event { kind, lid, value });
        self.ts += 1;
    }

    /// Events after cursor `ts`, at most `limit`; `None` when the cursor fell out of the ring
    /// (or is from the future) and the client must resync.
    #[must_use]
    pub fn since(&self, ts: u64, limit: usize) -> Option<(u64, Vec<Event>)> {
        let oldest_cursor = self.ts - self.events.len() as u64;
        if ts < oldest_cursor || ts > self.ts {
            return None;
        }
        let skip = usize::try_from(ts - oldest_cursor).ok()?;
        let events: Vec<Event> = self.events.iter().skip(skip).take(limit).copied().collect();
        Some((ts + events.len() as u64, events))
    }
}

/// Ascending local ids: up to four inline (zero-padded; ids are never 0), more on the heap.
/// Most conversations of a mailbox hold one or two messages, so this saves an allocation
/// (about 40 bytes with allocator overhead) per conversation.
#[derive(Debug, Clone)]
pub enum Lids {
    /// At most four ids, then zeros.
    Inline([u32; 4]),
    /// Five or more ids.
    Heap(Vec<u32>),
}

const _: () = assert!(std::mem::size_of::<Lids>() == 24);

impl Default for Lids {
    fn default() -> Self {
        Self::Inline([0; 4])
    }
}

impl std::ops::Deref for Lids {
    type Target = [u32];

    fn deref(&self) -> &[u32] {
        match self {
            Self::Inline(ids) => &ids[..ids.iter().position(|&l| l == 0).unwrap_or(4)],
            Self::Heap(ids) => ids,
        }
    }
}

impl Lids {
    /// Inserts (`present`) or removes `lid`.
    fn toggle(&mut self, lid: u32, present: bool) {
        match self {
            Self::Heap(ids) => {
                sorted_toggle(ids, lid, present);
                if ids.len() <= 2 {
                    let mut inline = [0; 4];
                    inline[..ids.len()].copy_from_slice(ids);
                    *self = Self::Inline(inline);
                }
            }
            Self::Inline(ids) => {
                let len = ids.iter().position(|&l| l == 0).unwrap_or(4);
                let at = ids[..len].partition_point(|&l| l < lid);
                let found = at < len && ids[at] == lid;
                match (present, found) {
                    (true, false) if len < 4 => {
                        ids.copy_within(at..len, at + 1);
                        ids[at] = lid;
                    }
                    (true, false) => {
                        let mut heap = Vec::with_capacity(6);
                        heap.extend_from_slice(&ids[..at]);
                        heap.push(lid);
                        heap.extend_from_slice(&ids[at..]);
                        *self = Self::Heap(heap);
                    }
                    (false, true) => {
                        ids.copy_within(at + 1..len, at);
                        ids[len - 1] = 0;
                    }
                    _ => {}
                }
            }
        }
    }

    /// Heap bytes (allocator overhead included).
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        match self {
            Self::Inline(_) => 0,
            Self::Heap(ids) => ids.capacity() * 4 + 16,
        }
    }
}

/// A conversation with one peer: its message ids and unread inbox count.
#[derive(Debug, Default, Clone)]
pub struct Conversation {
    /// Ascending local ids of non-deleted messages with this peer.
    pub lids: Lids,
    /// Unread inbox messages among them.
    pub unread: u32,
}

/// One user's mailbox (or wall).
#[derive(Debug)]
pub struct Mailbox {
    /// Flavour of the engine.
    pub flavour: Flavour,
    /// Local id of `messages[0]`; ids below were trimmed.
    pub first_lid: u32,
    /// Slots, removed ones included, indexed by `lid - first_lid`.
    pub messages: Vec<Message>,
    /// Text bytes of all slots (removed ones' bytes count as garbage).
    pub arena: Vec<u8>,
    /// Arena bytes no live message points at.
    pub garbage: usize,
    /// Live (not removed) messages.
    pub live: u32,
    /// Ascending ids per predefined sublist, parallel to [`Flavour::sublists`].
    pub sublists: Vec<Vec<u32>>,
    /// Conversations by peer (wall: posts by author).
    pub peers: HashMap<i64, Conversation>,
    /// The dialogs list: the newest message id of each conversation → its peer.
    pub dialogs: BTreeMap<u32, i64>,
    /// Wall: ascending ids of the replies to each post.
    pub replies: HashMap<u32, Vec<u32>>,
    /// Extra integer fields `(lid, field) → value` (absent = 0).
    pub extras: BTreeMap<(u32, u8), i64>,
    /// Wall: repost id → (original wall, original id).
    pub origins: BTreeMap<u32, (i64, u32)>,
    /// Event ring.
    pub history: History,
    /// Full-text index.
    pub search: SearchIndex,
}

impl Mailbox {
    /// An empty mailbox; the first message gets local id 1.
    #[must_use]
    pub fn new(flavour: Flavour) -> Self {
        Self {
            flavour,
            first_lid: 1,
            messages: Vec::new(),
            arena: Vec::new(),
            garbage: 0,
            live: 0,
            sublists: vec![Vec::new(); flavour.sublists().len()],
            peers: HashMap::new(),
            dialogs: BTreeMap::new(),
            replies: HashMap::new(),
            extras: BTreeMap::new(),
            origins: BTreeMap::new(),
            history: History::default(),
            search: SearchIndex::default(),
        }
    }

    /// The id the next message will get.
    #[must_use]
    pub fn next_lid(&self) -> u32 {
        self.first_lid + u32::try_from(self.messages.len()).unwrap_or(u32::MAX)
    }

    fn slot(&self, lid: u32) -> Option<usize> {
        let index = usize::try_from(lid.checked_sub(self.first_lid)?).ok()?;
        (index < self.messages.len()).then_some(index)
    }

    /// The live message `lid`.
    #[must_use]
    pub fn get(&self, lid: u32) -> Option<&Message> {
        self.slot(lid)
            .map(|i| &self.messages[i])
            .filter(|m| m.alive())
    }

    /// The `(kludges, subject, body)` of a message.
    #[must_use]
    pub fn text(&self, m: &Message) -> (&[u8], &[u8], &[u8]) {
        let start = m.text_off as usize;
        let k = start + usize::from(m.kludges_len);
        let s = k + usize::from(m.subject_len);
        let b = s + m.body_len as usize;
        (&self.arena[start..k], &self.arena[k..s], &self.arena[s..b])
    }

    /// Live text bytes.
    #[must_use]
    pub fn text_bytes(&self) -> usize {
        self.arena.len() - self.garbage
    }

    /// Stem ids of a message's subject and body.
    fn terms_of(&self, m: &Message, lexicon: &Lexicon) -> Vec<u32> {
        let (_, subject, body) = self.text(m);
        lexicon.terms(&[subject, body])
    }

    #[expect(clippy::cast_possible_truncation)]
    fn store_text(&mut self, m: &mut Message, text: &Text) {
        // NOTE: the arena stays below MAILBOX_TEXT_BYTES_MAX (checked before logging and
        // kept by compaction), and part lengths are checked against their limits, so the
        // casts cannot truncate.
        m.text_off = self.arena.len() as u32;
        m.kludges_len = text.kludges.len() as u16;
        m.subject_len = text.subject.len() as u16;
        m.body_len = text.body.len() as u32;
        reserve_tight(&mut self.arena, text.len());
        self.arena.extend_from_slice(&text.kludges);
        self.arena.extend_from_slice(&text.subject);
        self.arena.extend_from_slice(&text.body);
    }

    /// Appends message `lid`, which must be [`Mailbox::next_lid`], indexed for search under
    /// `terms` (the [`Lexicon::terms`] of its subject and body, computed once per record).
    ///
    /// # Errors
    /// A description of the mismatch when `lid` is not the next id (a corrupt log).
    // NOTE: one argument per field of the record it applies; a struct would only rename them.
    #[expect(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        lid: u32,
        peer: i64,
        peer_lid: u32,
        flags: u32,
        text: &Text,
        date: u32,
        terms: &[u32],
    ) -> Result<(), String> {
        if lid != self.next_lid() {
            return Err(format!(
                "message id {lid} but the next id is {}",
                self.next_lid()
            ));
        }
        let mut m = Message {
            peer,
            peer_lid,
            date,
            flags: flags & !REMOVED,
            ..Message::default()
        };
        self.store_text(&mut m, text);
        reserve_tight(&mut self.messages, 1);
        self.messages.push(m);
        self.live += 1;
        self.search.add(lid, terms);
        self.reindex(lid, m.peer, m.peer_lid, REMOVED, m.flags);
        self.history.push(event::NEW, lid, i64::from(m.flags));
        Ok(())
    }

    /// Moves message `lid` between derived indexes for a flags change `old → new`.
    fn reindex(&mut self, lid: u32, peer: i64, parent: u32, old: u32, new: u32) {
        for (i, &(and, xor)) in self.flavour.sublists().iter().enumerate() {
            let (was, now) = (in_sublist(old, and, xor), in_sublist(new, and, xor));
            if was != now {
                sorted_toggle(&mut self.sublists[i], lid, now);
            }
        }
        let (was, now) = (in_conversation(old), in_conversation(new));
        let unread_delta =
            i64::from(unread_inbox(self.flavour, new)) - i64::from(unread_inbox(self.flavour, old));
        if was != now || unread_delta != 0 {
            let conversation = self.peers.entry(peer).or_default();
            let old_last = conversation.lids.last().copied();
            if was != now {
                conversation.lids.toggle(lid, now);
            }
            conversation.unread = conversation
                .unread
                .saturating_add_signed(i32::try_from(unread_delta).unwrap_or_default());
            let new_last = conversation.lids.last().copied();
            if conversation.lids.is_empty() {
                self.peers.remove(&peer);
            }
            if old_last != new_last {
                if let Some(l) = old_last {
                    self.dialogs.remove(&l);
                }
                if let Some(l) = new_last {
                    self.dialogs.insert(l, peer);
                }
            }
        }
        let (was, now) = (is_reply(self.flavour, old), is_reply(self.flavour, new));
        let parent_alive = self.slot(parent).is_some_and(|i| self.messages[i].alive());
        if was != now && parent != 0 && (parent_alive || !now) {
            let list = self.replies.entry(parent).or_default();
            sorted_toggle(list, lid, now);
            if list.is_empty() {
                self.replies.remove(&parent);
            }
        }
    }

    /// Changes the flags of live message `lid` (the high reserved bits are kept); returns the
    /// new flags, or `None` if there is no such message.
    pub fn set_flags(&mut self, lid: u32, new: u32, event: (u8, i64)) -> Option<u32> {
        let index = self.slot(lid)?;
        let m = self.messages[index];
        if !m.alive() {
            return None;
        }
        let new = new & !REMOVED;
        if new != m.flags {
            self.messages[index].flags = new;
            self.reindex(lid, m.peer, m.peer_lid, m.flags, new);
        }
        self.history.push(event.0, lid, event.1);
        Some(new)
    }

    /// Marks incoming messages from `peer` read up to `upto` (0 = all).
    ///
    /// One pass over the conversation's prefix plus one merge pass per changed sublist:
    /// O(conversation + sublists), however many messages become read.
    pub fn read_upto(&mut self, peer: i64, upto: u32) {
        let mut last = 0;
        let mut changes: Vec<(u32, u32, u32)> = Vec::new();
        let mut unread_delta = 0i64;
        if let Some(c) = self.peers.get(&peer) {
            let end = if upto == 0 {
                c.lids.len()
            } else {
                c.lids.partition_point(|&l| l <= upto)
            };
            for &lid in &c.lids[..end] {
                let Some(index) = lid
                    .checked_sub(self.first_lid)
                    .map(|i| i as usize)
                    .filter(|&i| i < self.messages.len())
                else {
                    continue;
                };
                let m = &mut self.messages[index];
                if m.flags & (UNREAD | OUTBOX) == UNREAD {
                    let old = m.flags;
                    m.flags &= !UNREAD;
                    changes.push((lid, old, m.flags));
                    unread_delta += i64::from(unread_inbox(self.flavour, m.flags))
                        - i64::from(unread_inbox(self.flavour, old));
                }
                last = lid;
            }
        }
        if !changes.is_empty() {
            // NOTE: reading changes neither conversation membership (DELETED and REMOVED
            // are untouched) nor wall replies (mail flavour only), so only the sublists and
            // the unread counter move.
            for (i, &(and, xor)) in self.flavour.sublists().iter().enumerate() {
                let (mut gone, mut come) = (Vec::new(), Vec::new());
                for &(lid, old, new) in &changes {
                    match (in_sublist(old, and, xor), in_sublist(new, and, xor)) {
                        (true, false) => gone.push(lid),
                        (false, true) => come.push(lid),
                        _ => {}
                    }
                }
                if !gone.is_empty() || !come.is_empty() {
                    sorted_merge(&mut self.sublists[i], &gone, &come);
                }
            }
            if let Some(c) = self.peers.get_mut(&peer) {
                c.unread = c
                    .unread
                    .saturating_add_signed(i32::try_from(unread_delta).unwrap_or_default());
            }
        }
        self.history
            .push(event::READ_UPTO, if upto == 0 { last } else { upto }, peer);
    }

    /// Replaces the text of live message `lid`; false if there is none.
    pub fn edit(&mut self, lid: u32, text: &Text, lexicon: &Lexicon) -> bool {
        let Some(index) = self.slot(lid) else {
            return false;
        };
        let mut m = self.messages[index];
        if !m.alive() {
            return false;
        }
        let old_terms = self.terms_of(&m, lexicon);
        self.search.remove(lid, &old_terms);
        self.garbage += m.text_len();
        self.store_text(&mut m, text);
        self.messages[index] = m;
        let terms = self.terms_of(&m, lexicon);
        self.search.add(lid, &terms);
        self.history.push(event::EDITED, lid, 0);
        self.maybe_compact();
        true
    }

    /// Removes the live messages among `lids` for good (ascending order not required).
    /// Returns how many were removed.
    pub fn remove(&mut self, lids: &[u32], lexicon: &Lexicon) -> usize {
        let mut removed = 0;
        for &lid in lids {
            let Some(index) = self.slot(lid) else {
                continue;
            };
            let m = self.messages[index];
            if !m.alive() {
                continue;
            }
            if lids.len() == 1 {
                let terms = self.terms_of(&m, lexicon);
                self.search.remove(lid, &terms);
                self.reindex(lid, m.peer, m.peer_lid, m.flags, REMOVED);
            }
            self.messages[index] = Message {
                flags: REMOVED,
                ..Message::default()
            };
            self.garbage += m.text_len();
            self.live -= 1;
            self.origins.remove(&lid);
            self.replies.remove(&lid);
            let extras: Vec<(u32, u8)> = self
                .extras
                .range((lid, 0)..=(lid, u8::MAX))
                .map(|(k, _)| *k)
                .collect();
            for k in extras {
                self.extras.remove(&k);
            }
            self.history.push(event::DELETED, lid, 0);
            removed += 1;
        }
        if lids.len() > 1 && removed > 0 {
            let (messages, first) = (&self.messages, self.first_lid);
            self.search.retain(|lid| {
                lid.checked_sub(first)
                    .and_then(|i| messages.get(i as usize))
                    .is_some_and(Message::alive)
            });
            self.rebuild_indexes_without_search();
        }
        self.maybe_compact();
        removed
    }

    /// Removes every message with a local id below `min_lid` and forgets their slots.
    pub fn trim(&mut self, min_lid: u32, lexicon: &Lexicon) {
        let min_lid = min_lid.min(self.next_lid());
        if min_lid <= self.first_lid {
            return;
        }
        let lids: Vec<u32> = (self.first_lid..min_lid).collect();
        self.remove(&lids, lexicon);
        let drop = (min_lid - self.first_lid) as usize;
        self.messages.drain(..drop);
        self.first_lid = min_lid;
    }

    /// Rebuilds sublists, conversations, dialogs and replies from the slots (after bulk
    /// removals and snapshot loads; O(messages)).
    pub fn rebuild_indexes_without_search(&mut self) {
        for list in &mut self.sublists {
            list.clear();
        }
        self.peers.clear();
        self.dialogs.clear();
        self.replies.clear();
        // NOTE: a reply is listed under its post only while the post is alive (`reindex`);
        // a removed post took its replies list with it.
        for i in 0..self.messages.len() {
            let m = self.messages[i];
            if m.alive() {
                let lid = self.first_lid + u32::try_from(i).unwrap_or(u32::MAX);
                self.reindex(lid, m.peer, m.peer_lid, REMOVED, m.flags);
            }
        }
    }

    /// Rebuilds every derived index, search included (after a snapshot load).
    pub fn rebuild_indexes(&mut self, lexicon: &Lexicon) {
        let mut postings = Vec::new();
        for (i, m) in self.messages.iter().enumerate() {
            if m.alive() {
                let lid = self.first_lid + u32::try_from(i).unwrap_or(u32::MAX);
                let terms = self.terms_of(m, lexicon);
                postings.extend(terms.iter().map(|&t| SearchIndex::posting(t, lid)));
            }
        }
        self.search = SearchIndex::from_postings(postings);
        self.rebuild_indexes_without_search();
    }

    /// Rewrites the arena without garbage once garbage is over half of it.
    fn maybe_compact(&mut self) {
        if self.garbage < 64 * 1024 || self.garbage * 2 < self.arena.len() {
            return;
        }
        let mut arena = Vec::with_capacity(self.arena.len() - self.garbage);
        for m in &mut self.messages {
            if m.alive() {
                let start = m.text_off as usize;
                let len = m.text_len();
                m.text_off = u32::try_from(arena.len()).unwrap_or(u32::MAX);
                arena.extend_from_slice(&self.arena[start..start + len]);
            }
        }
        self.arena = arena;
        self.garbage = 0;
    }

    /// Sets the twin id of live message `lid` (mail flavour only: on walls `peer_lid` is the
    /// parent post, which never changes).
    pub fn set_peer_lid(&mut self, lid: u32, peer_lid: u32) {
        if self.flavour != Flavour::Messages {
            return;
        }
        if let Some(index) = self.slot(lid) {
            if self.messages[index].alive() {
                self.messages[index].peer_lid = peer_lid;
            }
        }
    }

    /// Extra field `field` of message `lid` (absent = 0).
    #[must_use]
    pub fn extra(&self, lid: u32, field: u8) -> i64 {
        self.extras.get(&(lid, field)).copied().unwrap_or(0)
    }

    /// Sets or adds to an extra field; returns the new value.
    pub fn change_extra(&mut self, lid: u32, field: u8, add: bool, value: i64) -> i64 {
        let slot = self.extras.entry((lid, field)).or_insert(0);
        *slot = if add { slot.wrapping_add(value) } else { value };
        let new = *slot;
        if new == 0 {
            self.extras.remove(&(lid, field));
        }
        new
    }

    /// Approximate heap bytes held by this mailbox, itself included: capacities, hash-table
    /// slots, and 16 bytes of allocator overhead per allocation.
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        const ALLOC: usize = 16;
        let vec = |bytes: usize| if bytes == 0 { 0 } else { bytes + ALLOC };
        std::mem::size_of::<Self>()
            + vec(self.messages.capacity() * std::mem::size_of::<Message>())
            + vec(self.arena.capacity())
            + vec(self.sublists.capacity() * std::mem::size_of::<Vec<u32>>())
            + self
                .sublists
                .iter()
                .map(|l| vec(l.capacity() * 4))
                .sum::<usize>()
            + vec(self.peers.capacity() * (std::mem::size_of::<(i64, Conversation)>() + 1))
            + self
                .peers
                .values()
                .map(|c| c.lids.heap_bytes())
                .sum::<usize>()
            + self.dialogs.len() * 24
            + vec(self.replies.capacity() * (std::mem::size_of::<(u32, Vec<u32>)>() + 1))
            + self
                .replies
                .values()
                .map(|l| vec(l.capacity() * 4))
                .sum::<usize>()
            + self.extras.len() * 24
            + self.origins.len() * 24
            + vec(self.history.events.capacity() * std::mem::size_of::<Event>())
            + self.search.heap_bytes()
    }
}

/// Makes room for `extra` more items, growing by a quarter (at least 24 bytes) instead of
/// doubling: append-only per-mailbox vectors then waste about 12 % on average, not 30–50 %.
fn reserve_tight<T>(list: &mut Vec<T>, extra: usize) {
    let need = list.len() + extra;
    if need > list.capacity() {
        let min = 24 / std::mem::size_of::<T>().max(1);
        let want = need.max(list.capacity() + list.capacity() / 4).max(min);
        list.reserve_exact(want - list.len());
    }
}

/// Removes the ascending ids `gone` from and inserts the ascending ids `come` into the
/// ascending `list` in one linear pass.
fn sorted_merge(list: &mut Vec<u32>, gone: &[u32], come: &[u32]) {
    let mut out = Vec::with_capacity(list.len() - gone.len().min(list.len()) + come.len());
    let (mut g, mut c) = (gone.iter().peekable(), come.iter().peekable());
    for &lid in list.iter() {
        while let Some(&&x) = c.peek() {
            if x >= lid {
                break;
            }
            out.push(x);
            c.next();
        }
        while g.next_if(|&&x| x < lid).is_some() {}
        if g.next_if(|&&x| x == lid).is_some() {
            continue;
        }
        if c.next_if(|&&x| x == lid).is_some() {
            // already present
        }
        out.push(lid);
    }
    out.extend(c);
    *list = out;
}

/// Inserts (`present`) or removes `lid` in an ascending vector.
fn sorted_toggle(list: &mut Vec<u32>, lid: u32, present: bool) {
    if present {
        match list.last() {
            Some(&last) if last >= lid => {
                if let Err(at) = list.binary_search(&lid) {
                    reserve_tight(list, 1);
                    list.insert(at, lid);
                }
            }
            _ => {
                reserve_tight(list, 1);
                list.push(lid);
            }
        }
    } else if let Ok(at) = list.binary_search(&lid) {
        list.remove(at);
    }
}

/// One partition: the mailboxes whose owner hashes here, and the log position of the last
/// record applied to it.
#[derive(Debug, Default)]
pub struct Partition {
    /// Position just past the last record applied to this partition.
    pub pos: u64,
    /// Mailboxes by owner id.
    pub mailboxes: HashMap<i64, Mailbox>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(body: &str) -> Text {
        Text {
            body: body.as_bytes().to_vec(),
            ..Text::default()
        }
    }

    #[test]
    fn history_cursor() {
        let mut h = History::default();
        assert_eq!(h.since(0, 10), Some((0, vec![])));
        for i in 0..(HISTORY_EVENTS_MAX as u32 + 5) {
            h.push(event::NEW, i, 0);
        }
        assert!(h.since(0, 10).is_none());
        assert!(h.since(4, 10).is_none());
        let (ts, events) = h.since(5, 3).unwrap();
        assert_eq!((ts, events.len(), events[0].lid), (8, 3, 5));
        assert!(h.since(h.ts + 1, 3).is_none());
    }

    #[test]
    fn dialogs_follow_conversations() {
        let lex = Lexicon::default();
        let mut mb = Mailbox::new(Flavour::Messages);
        mb.add(1, 7, 0, UNREAD, &text("a"), 1, &[]).unwrap();
        mb.add(2, 8, 0, OUTBOX, &text("b"), 1, &[]).unwrap();
        mb.add(3, 7, 0, UNREAD, &text("c"), 1, &[]).unwrap();
        assert_eq!(
            mb.dialogs.iter().map(|(l, p)| (*l, *p)).collect::<Vec<_>>(),
            [(2, 8), (3, 7)]
        );
        assert_eq!(mb.peers[&7].unread, 2);
        mb.read_upto(7, 1);
        assert_eq!(mb.peers[&7].unread, 1);
        mb.remove(&[3], &lex);
        assert_eq!(
            mb.dialogs.iter().map(|(l, p)| (*l, *p)).collect::<Vec<_>>(),
            [(1, 7), (2, 8)]
        );
        mb.trim(2, &lex);
        assert_eq!(mb.dialogs.len(), 1);
        assert_eq!(mb.next_lid(), 4);
        assert!(mb.add(3, 1, 0, 0, &text("x"), 1, &[]).is_err());
    }

    #[test]
    fn read_upto_matches_a_rebuild() {
        let mut mb = Mailbox::new(Flavour::Messages);
        for lid in 1..=60 {
            let (peer, flags) = match lid % 3 {
                0 => (8, UNREAD),
                1 => (7, UNREAD | crate::flags::IMPORTANT),
                _ => (7, OUTBOX | UNREAD),
            };
            mb.add(lid, peer, 0, flags, &text("x"), 1, &[]).unwrap();
        }
        mb.read_upto(7, 40);
        let (sublists, unread) = (mb.sublists.clone(), mb.peers[&7].unread);
        mb.rebuild_indexes_without_search();
        assert_eq!(mb.sublists, sublists);
        assert_eq!((unread, mb.peers[&7].unread), (6, 6));
        mb.read_upto(7, 0);
        let sublists = mb.sublists.clone();
        mb.rebuild_indexes_without_search();
        assert_eq!(mb.sublists, sublists);
        assert_eq!(mb.peers[&7].unread, 0);
        assert_eq!(mb.peers[&8].unread, 20);
    }

    #[test]
    fn lids_match_a_vec() {
        let mut lids = Lids::default();
        let mut model: Vec<u32> = Vec::new();
        let mut seed = 3u64;
        for _ in 0..5000 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let lid = 1 + ((seed >> 33) % 9) as u32;
            let present = !(seed >> 20).is_multiple_of(3) || model.len() > 6;
            let present = present && model.len() < 8;
            lids.toggle(lid, present);
            sorted_toggle(&mut model, lid, present);
            assert_eq!(&*lids, &model[..]);
        }
    }
}
