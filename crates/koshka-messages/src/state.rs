//! In-memory state: partitions of mailboxes, each a compact table of message copies with its
//! dialogs, history and (when large) a search index.
//!
//! # One mailbox
//!
//! ```text
//! slots[lid - first_lid]: Slot { blob, peer_lid, prev, dialog, flags }   32 bytes per copy
//!                          │                 │       │
//!                          │                 │       └─► dialogs[dialog]: Dialog { peer, last,
//!                          │                 │                 count, unread, newer, older }
//!                          │                 └─ the next older copy of the same conversation
//!                          └─► Blob: date, text, stem ids (shared by both copies of a send)
//! ```
//!
//! * A copy is 32 bytes here plus its share of the [`Blob`]; its peer is an index into the
//!   mailbox's dialog table, its date lives in the blob (both copies of a send have the same
//!   date and text).
//! * A conversation is a chain through `prev`, newest first from its dialog's `last`: a
//!   page of the newest messages touches only the messages it returns.
//! * The dialogs list (dialogs by their newest message) is a doubly linked list through
//!   `newer`/`older`, newest first from `newest`: new messages move their dialog to the front
//!   in O(1), and a page of the newest dialogs touches only the dialogs it returns.
//! * Sublists (`and:xor` flag filters) are not stored: a sublist read scans the flags.
//! * Rarely used parts (extra fields, repost origins, wall replies, the peer → dialog map
//!   of a mailbox with many dialogs, the search index of a large mailbox) live in [`More`],
//!   allocated on first use.

use std::collections::BTreeMap;

use hashbrown::HashMap;

use crate::blob::Blob;
use crate::flags::{DELETED, OUTBOX, UNREAD, WALL_REPLY};
use crate::history::{event, History};
use crate::search::{Lexicon, PostingIndex};
use crate::{Flavour, Layout};

/// Engine-internal flag: the slot's message was removed for good (delete, trim, dialog
/// delete). Never visible to clients (they may only set [`crate::flags::USER_MASK`] bits);
/// written to snapshots as the flags of a removed slot.
pub const REMOVED: u32 = 1 << 31;

/// One message copy; its text and date are in its [`Blob`]. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct Slot {
    /// The text, date and stems; `None` = removed.
    pub blob: Option<Blob>,
    /// Twin message in the peer's mailbox (mail) or parent post (wall reply); 0 = none.
    pub peer_lid: u32,
    /// The next older copy of the same conversation (0 = none), while in one.
    prev: u32,
    /// Index of the dialog (the peer) in [`Mailbox::dialog`].
    pub dialog: u32,
    /// Flags (the low 16 bits are all a client may set).
    pub flags: u16,
}

const _: () = assert!(std::mem::size_of::<Slot>() <= 32);
const _: () = assert!(crate::flags::USER_MASK == u16::MAX as u32);

impl Slot {
    /// True unless removed.
    #[must_use]
    pub fn alive(&self) -> bool {
        self.blob.is_some()
    }

    /// Flags as the engine reads them: [`REMOVED`] for a removed slot.
    #[must_use]
    pub fn flags(&self) -> u32 {
        if self.alive() {
            u32::from(self.flags)
        } else {
            REMOVED
        }
    }

    /// The date (0 for a removed slot).
    #[must_use]
    pub fn date(&self) -> u32 {
        self.blob.as_ref().map_or(0, Blob::date)
    }
}

/// One correspondent (wall: one author) of a mailbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dialog {
    /// The peer's id.
    pub peer: u32,
    /// The newest message of the conversation; 0 = empty.
    pub last: u32,
    /// Messages in the conversation (alive, not DELETED).
    pub count: u32,
    /// Unread inbox messages among them (mail flavour).
    pub unread: u32,
    /// The next newer non-empty dialog, index + 1 (0 = none).
    newer: u32,
    /// The next older non-empty dialog, index + 1 (0 = none).
    older: u32,
}

/// The rarely used parts of a mailbox.
#[derive(Debug, Default)]
pub struct More {
    /// Extra integer fields `(lid, field) → value` (absent = 0).
    pub extras: BTreeMap<(u32, u8), i64>,
    /// Wall: repost id → (original wall, original id).
    pub origins: BTreeMap<u32, (i64, u32)>,
    /// Wall: ascending ids of the replies to each live post.
    pub replies: HashMap<u32, Vec<u32>>,
    /// Peer → dialog index, once the mailbox has more than [`DIALOG_SCAN_MAX`] dialogs.
    by_peer: HashMap<u32, u32>,
    /// The inverted index of a mailbox with at least [`Layout::search_index_min`] messages.
    index: Option<PostingIndex>,
}

/// Dialogs found by a linear scan; past this a mailbox keeps a peer → dialog map.
pub const DIALOG_SCAN_MAX: usize = 16;

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

/// Bytes held by a mailbox, by part (see [`Mailbox::account`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Texts: each blob's text part divided among its holders.
    pub text: usize,
    /// The slots (per-copy metadata) and extra fields.
    pub metadata: usize,
    /// Dialog tables, peer maps, wall replies and origins.
    pub dialogs: usize,
    /// Stem ids in blobs (divided among holders) and posting indexes.
    pub search: usize,
    /// History rings.
    pub history: usize,
    /// The mailbox records themselves and their table slots.
    pub mailboxes: usize,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Self) {
        self.text += other.text;
        self.metadata += other.metadata;
        self.dialogs += other.dialogs;
        self.search += other.search;
        self.history += other.history;
        self.mailboxes += other.mailboxes;
    }
}

impl Usage {
    /// All parts together.
    #[must_use]
    pub fn total(&self) -> usize {
        self.text + self.metadata + self.dialogs + self.search + self.history + self.mailboxes
    }
}

/// One user's mailbox (or wall).
#[derive(Debug)]
pub struct Mailbox {
    slots: Vec<Slot>,
    dialogs: Vec<Dialog>,
    /// Event ring.
    pub history: History,
    more: Option<Box<More>>,
    first_lid: u32,
    /// Live (not removed) messages.
    live: u32,
    /// Live text bytes (original lengths).
    text_bytes: u32,
    /// Unread inbox messages in all conversations.
    unread: u32,
    /// Non-empty dialogs.
    dialogs_live: u32,
    /// Newest and oldest non-empty dialog, index + 1 (0 = none).
    newest: u32,
    oldest: u32,
    flavour: Flavour,
}

impl Mailbox {
    /// An empty mailbox; the first message gets local id 1.
    #[must_use]
    pub fn new(flavour: Flavour) -> Self {
        Self {
            slots: Vec::new(),
            dialogs: Vec::new(),
            history: History::default(),
            more: None,
            first_lid: 1,
            live: 0,
            text_bytes: 0,
            unread: 0,
            dialogs_live: 0,
            newest: 0,
            oldest: 0,
            flavour,
        }
    }

    /// The id the next message will get.
    #[must_use]
    pub fn next_lid(&self) -> u32 {
        self.first_lid + u32::try_from(self.slots.len()).unwrap_or(u32::MAX)
    }

    /// Local id of the oldest slot kept (ids below were trimmed).
    #[must_use]
    pub fn first_lid(&self) -> u32 {
        self.first_lid
    }

    /// Live (not removed) messages.
    #[must_use]
    pub fn live(&self) -> u32 {
        self.live
    }

    /// Unread inbox messages (not deleted).
    #[must_use]
    pub fn unread(&self) -> u32 {
        self.unread
    }

    /// Live text bytes (original lengths).
    #[must_use]
    pub fn text_bytes(&self) -> usize {
        self.text_bytes as usize
    }

    fn index_of(&self, lid: u32) -> Option<usize> {
        let index = usize::try_from(lid.checked_sub(self.first_lid)?).ok()?;
        (index < self.slots.len()).then_some(index)
    }

    /// Slots, removed ones included.
    #[must_use]
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Every slot with its local id, removed ones included, oldest first.
    pub fn slots(&self) -> impl DoubleEndedIterator<Item = (u32, &Slot)> + '_ {
        let first = self.first_lid;
        self.slots
            .iter()
            .enumerate()
            .map(move |(i, s)| (first + u32::try_from(i).unwrap_or(u32::MAX), s))
    }

    /// The live message `lid`.
    #[must_use]
    pub fn get(&self, lid: u32) -> Option<&Slot> {
        self.index_of(lid)
            .map(|i| &self.slots[i])
            .filter(|s| s.alive())
    }

    /// The peer of a slot.
    #[must_use]
    pub fn peer(&self, slot: &Slot) -> i64 {
        i64::from(self.dialogs[slot.dialog as usize].peer)
    }

    /// The dialog with `peer`, if the mailbox ever had one.
    #[must_use]
    pub fn dialog(&self, peer: i64) -> Option<&Dialog> {
        self.find_dialog(peer).map(|d| &self.dialogs[d as usize])
    }

    fn find_dialog(&self, peer: i64) -> Option<u32> {
        let peer = u32::try_from(peer).ok()?;
        match self.more.as_ref().filter(|m| !m.by_peer.is_empty()) {
            Some(more) => more.by_peer.get(&peer).copied(),
            None => self
                .dialogs
                .iter()
                .position(|d| d.peer == peer)
                .map(|i| u32::try_from(i).unwrap_or(u32::MAX)),
        }
    }

    /// The dialog of `peer`, created (empty) if new.
    fn dialog_for(&mut self, peer: i64) -> u32 {
        if let Some(d) = self.find_dialog(peer) {
            return d;
        }
        // NOTE: peers are checked to be u32 before anything is logged or applied
        // (`MessagesEngine::check_replay`, the key grammar, the snapshot decoder).
        let peer = u32::try_from(peer).unwrap_or_else(|_| unreachable!("peer {peer} checked"));
        let d = u32::try_from(self.dialogs.len()).unwrap_or(u32::MAX);
        reserve_tight(&mut self.dialogs, 1);
        self.dialogs.push(Dialog {
            peer,
            ..Dialog::default()
        });
        if self.dialogs.len() > DIALOG_SCAN_MAX {
            let more = self.more.get_or_insert_with(Box::default);
            if more.by_peer.is_empty() {
                more.by_peer = self
                    .dialogs
                    .iter()
                    .enumerate()
                    .map(|(i, d)| (d.peer, u32::try_from(i).unwrap_or(u32::MAX)))
                    .collect();
            } else {
                more.by_peer.insert(peer, d);
            }
        }
        d
    }

    /// Non-empty dialogs, newest first: `(dialog, its newest lid)`.
    pub fn dialogs_newest_first(&self) -> impl Iterator<Item = &Dialog> + '_ {
        let mut next = self.newest;
        std::iter::from_fn(move || {
            let d = &self.dialogs[next.checked_sub(1)? as usize];
            next = d.older;
            Some(d)
        })
    }

    /// Non-empty dialogs, oldest first.
    pub fn dialogs_oldest_first(&self) -> impl Iterator<Item = &Dialog> + '_ {
        let mut next = self.oldest;
        std::iter::from_fn(move || {
            let d = &self.dialogs[next.checked_sub(1)? as usize];
            next = d.newer;
            Some(d)
        })
    }

    /// Non-empty dialogs.
    #[must_use]
    pub fn dialogs_live(&self) -> usize {
        self.dialogs_live as usize
    }

    /// The conversation of `dialog`, newest first.
    pub fn conversation(&self, dialog: &Dialog) -> impl Iterator<Item = u32> + '_ {
        let mut next = dialog.last;
        std::iter::from_fn(move || {
            let lid = next;
            if lid == 0 {
                return None;
            }
            next = self.slots[self.index_of(lid)?].prev;
            Some(lid)
        })
    }

    /// The extras, origins and replies, if any were ever stored.
    #[must_use]
    pub fn more(&self) -> Option<&More> {
        self.more.as_deref()
    }

    fn more_mut(&mut self) -> &mut More {
        self.more.get_or_insert_with(Box::default)
    }

    /// Wall: repost `lid` copies `(owner, id)`.
    pub fn set_origin(&mut self, lid: u32, origin: (i64, u32)) {
        self.more_mut().origins.insert(lid, origin);
    }

    /// Appends message `lid`, which must be [`Mailbox::next_lid`], storing `blob` (whose
    /// stems the caller holds in the lexicon for this copy).
    ///
    /// # Errors
    /// A description of the mismatch when `lid` is not the next id (a corrupt log).
    pub fn add(
        &mut self,
        lid: u32,
        peer: i64,
        peer_lid: u32,
        flags: u32,
        blob: Blob,
        layout: &Layout,
    ) -> Result<(), String> {
        if lid != self.next_lid() {
            return Err(format!(
                "message id {lid} but the next id is {}",
                self.next_lid()
            ));
        }
        let dialog = self.dialog_for(peer);
        self.text_bytes += u32::try_from(blob.text_len()).unwrap_or(u32::MAX);
        if let Some(index) = self.more.as_mut().and_then(|m| m.index.as_mut()) {
            index.add(lid, blob.terms());
        }
        reserve_tight(&mut self.slots, 1);
        // NOTE: flags beyond the low 16 bits are refused before anything is logged.
        self.slots.push(Slot {
            blob: Some(blob),
            peer_lid,
            prev: 0,
            dialog,
            flags: (flags & crate::flags::USER_MASK) as u16,
        });
        self.live += 1;
        self.reindex(lid, REMOVED, flags & crate::flags::USER_MASK);
        self.history.push(event::NEW, lid, i64::from(flags));
        self.maybe_index(layout);
        Ok(())
    }

    /// Moves message `lid` between derived indexes for a flags change `old → new`
    /// ([`REMOVED`] for a message that is not / no longer there). The slot already holds
    /// `new` (or, for a removal, is about to be emptied).
    fn reindex(&mut self, lid: u32, old: u32, new: u32) {
        let (was, now) = (in_conversation(old), in_conversation(new));
        let unread =
            i64::from(unread_inbox(self.flavour, new)) - i64::from(unread_inbox(self.flavour, old));
        let Some(index) = self.index_of(lid) else {
            unreachable!("reindex of a missing slot {lid}");
        };
        let d = self.slots[index].dialog;
        match (was, now) {
            (false, true) => self.link(lid),
            (true, false) => self.unlink(lid),
            _ => {}
        }
        if unread != 0 {
            let dialog = &mut self.dialogs[d as usize];
            dialog.unread = dialog.unread.saturating_add_signed(unread as i32);
            self.unread = self.unread.saturating_add_signed(unread as i32);
        }
        let (was, now) = (is_reply(self.flavour, old), is_reply(self.flavour, new));
        let parent = self.slots[index].peer_lid;
        if was != now && parent != 0 {
            let parent_alive = self.get(parent).is_some();
            let replies = &mut self.more_mut().replies;
            if now && parent_alive {
                sorted_toggle(replies.entry(parent).or_default(), lid, true);
            } else if let Some(list) = replies.get_mut(&parent) {
                sorted_toggle(list, lid, false);
                if list.is_empty() {
                    replies.remove(&parent);
                }
            }
        }
    }

    /// Puts message `lid` into its conversation (in lid order) and the conversation into
    /// place in the dialogs list.
    fn link(&mut self, lid: u32) {
        let Some(index) = self.index_of(lid) else {
            unreachable!("link of a missing slot {lid}");
        };
        let d = self.slots[index].dialog as usize;
        let last = self.dialogs[d].last;
        if lid > last {
            self.slots[index].prev = last;
            self.dialogs[d].last = lid;
        } else {
            // An older message comes back (DELETED cleared): walk to its place.
            let mut newer = last;
            loop {
                let at = self
                    .index_of(newer)
                    .unwrap_or_else(|| unreachable!("chain"));
                let prev = self.slots[at].prev;
                if prev < lid {
                    self.slots[index].prev = prev;
                    self.slots[at].prev = lid;
                    break;
                }
                newer = prev;
            }
        }
        self.dialogs[d].count += 1;
        if self.dialogs[d].last != last {
            if last != 0 {
                self.list_remove(d);
            }
            self.list_insert(d);
        }
    }

    /// Takes message `lid` out of its conversation.
    fn unlink(&mut self, lid: u32) {
        let Some(index) = self.index_of(lid) else {
            unreachable!("unlink of a missing slot {lid}");
        };
        let d = self.slots[index].dialog as usize;
        let prev = self.slots[index].prev;
        let last = self.dialogs[d].last;
        if last == lid {
            self.dialogs[d].last = prev;
        } else {
            let mut newer = last;
            loop {
                let at = self
                    .index_of(newer)
                    .unwrap_or_else(|| unreachable!("chain"));
                if self.slots[at].prev == lid {
                    self.slots[at].prev = prev;
                    break;
                }
                newer = self.slots[at].prev;
            }
        }
        self.slots[index].prev = 0;
        self.dialogs[d].count -= 1;
        if self.dialogs[d].last != last {
            self.list_remove(d);
            if self.dialogs[d].last != 0 {
                self.list_insert(d);
            }
        }
    }

    /// Unlinks dialog `d` from the dialogs list.
    fn list_remove(&mut self, d: usize) {
        let Dialog { newer, older, .. } = self.dialogs[d];
        match newer.checked_sub(1) {
            Some(n) => self.dialogs[n as usize].older = older,
            None => self.newest = older,
        }
        match older.checked_sub(1) {
            Some(o) => self.dialogs[o as usize].newer = newer,
            None => self.oldest = newer,
        }
        self.dialogs[d].newer = 0;
        self.dialogs[d].older = 0;
        self.dialogs_live -= 1;
    }

    /// Links non-empty dialog `d` into the dialogs list by its newest message; from the
    /// newest end, so a dialog with a new message costs one step.
    fn list_insert(&mut self, d: usize) {
        let last = self.dialogs[d].last;
        let (mut newer, mut older) = (0, self.newest);
        while let Some(o) = older.checked_sub(1) {
            if self.dialogs[o as usize].last < last {
                break;
            }
            newer = older;
            older = self.dialogs[o as usize].older;
        }
        let me = u32::try_from(d + 1).unwrap_or(u32::MAX);
        self.dialogs[d].newer = newer;
        self.dialogs[d].older = older;
        match newer.checked_sub(1) {
            Some(n) => self.dialogs[n as usize].older = me,
            None => self.newest = me,
        }
        match older.checked_sub(1) {
            Some(o) => self.dialogs[o as usize].newer = me,
            None => self.oldest = me,
        }
        self.dialogs_live += 1;
    }

    /// Changes the flags of live message `lid` (only the low 16 bits are stored); returns
    /// the new flags, or `None` if there is no such message.
    pub fn set_flags(&mut self, lid: u32, new: u32, event: (u8, i64)) -> Option<u32> {
        let index = self.index_of(lid)?;
        let old = self.slots.get(index).filter(|s| s.alive())?.flags();
        let new = new & crate::flags::USER_MASK;
        if new != old {
            // NOTE: masked to 16 bits just above.
            self.slots[index].flags = new as u16;
            self.reindex(lid, old, new);
        }
        self.history.push(event.0, lid, event.1);
        Some(new)
    }

    /// Marks incoming messages from `peer` read up to `upto` (0 = all).
    ///
    /// Walks the conversation from its newest message and stops once no unread message is
    /// left in it: reading a dialog touches its unread messages (and the read ones newer
    /// than `upto`), not the whole conversation.
    pub fn read_upto(&mut self, peer: i64, upto: u32) {
        let mut last = 0;
        if let Some(d) = self.find_dialog(peer).map(|d| d as usize) {
            last = self.dialogs[d].last;
            let mut lid = self.dialogs[d].last;
            while lid != 0 && self.dialogs[d].unread > 0 {
                let index = self.index_of(lid).unwrap_or_else(|| unreachable!("chain"));
                let next = self.slots[index].prev;
                if upto == 0 || lid <= upto {
                    let old = u32::from(self.slots[index].flags);
                    if old & (UNREAD | OUTBOX) == UNREAD {
                        self.slots[index].flags &= !(UNREAD as u16);
                        self.reindex(lid, old, old & !UNREAD);
                    }
                }
                lid = next;
            }
        }
        self.history
            .push(event::READ_UPTO, if upto == 0 { last } else { upto }, peer);
    }

    /// Replaces the text of live message `lid` with `blob` (whose stems the caller holds
    /// for this copy); releases the old text's stems. False if there is no such message.
    pub fn edit(&mut self, lid: u32, blob: Blob, lexicon: &Lexicon, layout: &Layout) -> bool {
        let Some(index) = self.index_of(lid).filter(|&i| self.slots[i].alive()) else {
            lexicon.release(blob.terms());
            return false;
        };
        let new_len = u32::try_from(blob.text_len()).unwrap_or(u32::MAX);
        if let Some(index) = self.more.as_mut().and_then(|m| m.index.as_mut()) {
            index.add(lid, blob.terms());
            index.edit(lid);
        }
        let Some(old) = self.slots[index].blob.replace(blob) else {
            unreachable!("checked alive");
        };
        self.forget_text(&old, lexicon);
        self.text_bytes += new_len;
        self.history.push(event::EDITED, lid, 0);
        self.maybe_index(layout);
        true
    }

    /// Accounts for a text leaving the mailbox.
    fn forget_text(&mut self, blob: &Blob, lexicon: &Lexicon) {
        self.text_bytes -= u32::try_from(blob.text_len()).unwrap_or(u32::MAX);
        lexicon.release(blob.terms());
        if let Some(index) = self.more.as_mut().and_then(|m| m.index.as_mut()) {
            index.stale(blob.terms().count());
        }
    }

    /// Removes the live messages among `lids` (ascending) for good, without history events;
    /// returns how many were removed.
    fn remove(&mut self, lids: &[u32], lexicon: &Lexicon, layout: &Layout) -> usize {
        // Newest first: a conversation then loses its newest message each time, O(1).
        let mut removed = 0;
        for &lid in lids.iter().rev() {
            let Some(index) = self.index_of(lid).filter(|&i| self.slots[i].alive()) else {
                continue;
            };
            let old = self.slots[index].flags();
            self.reindex(lid, old, REMOVED);
            let Some(blob) = self.slots[index].blob.take() else {
                unreachable!("checked alive");
            };
            self.forget_text(&blob, lexicon);
            self.slots[index] = Slot::default();
            self.live -= 1;
            if let Some(more) = self.more.as_mut() {
                more.origins.remove(&lid);
                more.replies.remove(&lid);
                let keys: Vec<(u32, u8)> = more
                    .extras
                    .range((lid, 0)..=(lid, u8::MAX))
                    .map(|(k, _)| *k)
                    .collect();
                for k in keys {
                    more.extras.remove(&k);
                }
            }
            removed += 1;
        }
        self.maybe_index(layout);
        removed
    }

    /// Removes the live messages among the ascending `lids`, pushing a DELETED event for
    /// each one removed, in `lids` order; returns how many were removed.
    pub fn remove_logged(&mut self, lids: &[u32], lexicon: &Lexicon, layout: &Layout) -> usize {
        let live: Vec<u32> = lids
            .iter()
            .copied()
            .filter(|&lid| self.get(lid).is_some())
            .collect();
        let removed = self.remove(&live, lexicon, layout);
        for &lid in &live {
            self.history.push(event::DELETED, lid, 0);
        }
        removed
    }

    /// Removes every message with a local id below `min_lid` and forgets their slots.
    pub fn trim(&mut self, min_lid: u32, lexicon: &Lexicon, layout: &Layout) {
        let min_lid = min_lid.min(self.next_lid());
        if min_lid <= self.first_lid {
            return;
        }
        let lids: Vec<u32> = (self.first_lid..min_lid).collect();
        self.remove_logged(&lids, lexicon, layout);
        let drop = (min_lid - self.first_lid) as usize;
        self.slots.drain(..drop);
        self.first_lid = min_lid;
    }

    /// Builds the search index once the mailbox is large, drops it once small, rebuilds it
    /// once a quarter is stale.
    fn maybe_index(&mut self, layout: &Layout) {
        let live = self.live as usize;
        let has = self.more.as_ref().is_some_and(|m| m.index.is_some());
        let stale = self
            .more
            .as_ref()
            .and_then(|m| m.index.as_ref())
            .is_some_and(PostingIndex::needs_rebuild);
        if has && live < layout.search_index_min / 2 {
            self.more_mut().index = None;
        } else if (!has && live >= layout.search_index_min) || stale {
            let mut postings = Vec::new();
            for (lid, slot) in self.slots() {
                if let Some(blob) = &slot.blob {
                    postings.extend(blob.terms().map(|term| (term, lid)));
                }
            }
            self.more_mut().index = Some(PostingIndex::build(postings));
        }
    }

    /// Calls `visit` with every live message whose text has all the ascending `terms`,
    /// newest first, until it returns false. No terms match nothing.
    pub fn search(&self, terms: &[u32], mut visit: impl FnMut(u32, &Slot) -> bool) {
        if terms.is_empty() {
            return;
        }
        match self.more.as_ref().and_then(|m| m.index.as_ref()) {
            Some(index) => {
                // Postings of removed messages point at empty slots; only messages edited
                // since the index was built need their text checked.
                let check = |lid: u32| {
                    self.get(lid).filter(|s| {
                        !index.was_edited(lid)
                            || s.blob.as_ref().is_some_and(|b| b.has_terms(terms))
                    })
                };
                let lists = terms.iter().map(|&t| index.ids(t)).collect();
                crate::search::intersect(lists, |lid| match check(lid) {
                    Some(slot) => visit(lid, slot),
                    None => true,
                });
            }
            None => {
                for (lid, slot) in self.slots().rev() {
                    let hit = slot.blob.as_ref().is_some_and(|b| b.has_terms(terms));
                    if hit && !visit(lid, slot) {
                        return;
                    }
                }
            }
        }
    }

    /// Sets the twin id of live message `lid` (mail flavour only: on walls `peer_lid` is the
    /// parent post, which never changes).
    pub fn set_peer_lid(&mut self, lid: u32, peer_lid: u32) {
        if self.flavour != Flavour::Messages {
            return;
        }
        if let Some(index) = self.index_of(lid).filter(|&i| self.slots[i].alive()) {
            self.slots[index].peer_lid = peer_lid;
        }
    }

    /// Extra field `field` of message `lid` (absent = 0).
    #[must_use]
    pub fn extra(&self, lid: u32, field: u8) -> i64 {
        self.more
            .as_ref()
            .and_then(|m| m.extras.get(&(lid, field)).copied())
            .unwrap_or(0)
    }

    /// Sets or adds to an extra field; returns the new value.
    pub fn change_extra(&mut self, lid: u32, field: u8, add: bool, value: i64) -> i64 {
        let extras = &mut self.more_mut().extras;
        let slot = extras.entry((lid, field)).or_insert(0);
        *slot = if add { slot.wrapping_add(value) } else { value };
        let new = *slot;
        if new == 0 {
            extras.remove(&(lid, field));
        }
        new
    }

    /// Restores one slot from a snapshot: appends message `lid` (the next id) as stored, or
    /// an empty slot when `blob` is `None`. Derived indexes follow in
    /// [`Mailbox::finish_restore`].
    pub fn restore_slot(&mut self, peer: i64, peer_lid: u32, flags: u32, blob: Option<Blob>) {
        let dialog = match blob {
            Some(_) => self.dialog_for(peer),
            None => 0,
        };
        if let Some(blob) = &blob {
            self.text_bytes += u32::try_from(blob.text_len()).unwrap_or(u32::MAX);
            self.live += 1;
        }
        self.slots.push(Slot {
            blob,
            peer_lid,
            prev: 0,
            dialog,
            flags: (flags & crate::flags::USER_MASK) as u16,
        });
    }

    /// Sets where a restored mailbox starts (before its slots are restored).
    pub fn restore_first_lid(&mut self, first_lid: u32) {
        self.first_lid = first_lid;
    }

    /// Links the restored slots into conversations, dialogs and replies, and indexes a large
    /// mailbox.
    pub fn finish_restore(&mut self, layout: &Layout) {
        self.slots.shrink_to_fit();
        self.dialogs.shrink_to_fit();
        for index in 0..self.slots.len() {
            if self.slots[index].alive() {
                let lid = self.first_lid + u32::try_from(index).unwrap_or(u32::MAX);
                self.reindex(lid, REMOVED, u32::from(self.slots[index].flags));
            }
        }
        self.maybe_index(layout);
    }

    /// Bytes held, by part. A blob's bytes are divided among its holders (the copies of a
    /// send share one), so summing over mailboxes counts each blob once.
    #[must_use]
    pub fn account(&self) -> Usage {
        const ALLOC: usize = 16;
        let vec = |bytes: usize| if bytes == 0 { 0 } else { bytes + ALLOC };
        let mut usage = Usage {
            metadata: vec(self.slots.capacity() * std::mem::size_of::<Slot>()),
            dialogs: vec(self.dialogs.capacity() * std::mem::size_of::<Dialog>()),
            history: vec(self.history.capacity()),
            mailboxes: std::mem::size_of::<Self>(),
            ..Usage::default()
        };
        for blob in self.slots.iter().filter_map(|s| s.blob.as_ref()) {
            // Arc<[u8]>: two counters before the bytes, and the allocator's overhead.
            let holders = blob.holders().max(1);
            let text = blob.text_part_len() + 16 + ALLOC;
            usage.text += text / holders;
            usage.search += (blob.len() - blob.text_part_len()) / holders;
        }
        if let Some(more) = &self.more {
            usage.mailboxes += vec(std::mem::size_of::<More>());
            usage.metadata += more.extras.len() * 24;
            usage.dialogs += more.origins.len() * 24
                + vec(more.by_peer.capacity() * 9)
                + vec(more.replies.capacity() * 33)
                + more
                    .replies
                    .values()
                    .map(|l| vec(l.capacity() * 4))
                    .sum::<usize>();
            usage.search += more.index.as_ref().map_or(0, PostingIndex::heap_bytes);
        }
        usage
    }

    /// Checks the derived state against the slots (tests and `verify` builds); returns the
    /// first difference found.
    ///
    /// # Errors
    /// A description of the first inconsistency.
    pub fn check(&self) -> Result<(), String> {
        let mut count = vec![0u32; self.dialogs.len()];
        let mut unread = vec![0u32; self.dialogs.len()];
        let (mut live, mut text) = (0u32, 0usize);
        for (_, slot) in self.slots() {
            if let Some(blob) = &slot.blob {
                live += 1;
                text += blob.text_len();
                if in_conversation(slot.flags()) {
                    count[slot.dialog as usize] += 1;
                    unread[slot.dialog as usize] +=
                        u32::from(unread_inbox(self.flavour, slot.flags()));
                }
            }
        }
        if live != self.live || text != self.text_bytes as usize {
            return Err(format!("live {live}/{} text {text}", self.live));
        }
        for (d, dialog) in self.dialogs.iter().enumerate() {
            let chain: Vec<u32> = self.conversation(dialog).collect();
            let want: Vec<u32> = self
                .slots()
                .rev()
                .filter(|(_, s)| s.dialog as usize == d && in_conversation(s.flags()))
                .map(|(lid, _)| lid)
                .collect();
            if chain != want || dialog.count != count[d] || dialog.unread != unread[d] {
                return Err(format!("dialog {dialog:?}: chain {chain:?}, want {want:?}"));
            }
        }
        let listed: Vec<u32> = self.dialogs_newest_first().map(|d| d.last).collect();
        let mut want: Vec<u32> = self
            .dialogs
            .iter()
            .map(|d| d.last)
            .filter(|&l| l != 0)
            .collect();
        want.sort_unstable_by(|a, b| b.cmp(a));
        if listed != want || self.dialogs_live as usize != want.len() {
            return Err(format!("dialogs list {listed:?}, want {want:?}"));
        }
        let backwards: Vec<u32> = self.dialogs_oldest_first().map(|d| d.last).collect();
        if backwards.iter().rev().ne(listed.iter()) {
            return Err(format!("dialogs list backwards {backwards:?}"));
        }
        if self.unread != unread.iter().sum::<u32>() {
            return Err(format!("unread {}", self.unread));
        }
        Ok(())
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

/// Inserts (`present`) or removes `lid` in an ascending vector.
fn sorted_toggle(list: &mut Vec<u32>, lid: u32, present: bool) {
    match list.binary_search(&lid) {
        Err(at) if present => {
            reserve_tight(list, 1);
            list.insert(at, lid);
        }
        Ok(at) if !present => {
            list.remove(at);
        }
        _ => {}
    }
}

/// One partition: the mailboxes whose owner hashes here, and the log position of the last
/// record applied to it.
#[derive(Debug, Default)]
pub struct Partition {
    /// Position just past the last record applied to this partition.
    pub pos: u64,
    /// Mailboxes by owner id (hashed with foldhash: every request looks one up).
    pub mailboxes: HashMap<i64, Mailbox>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(lex: &Lexicon, body: &str) -> Blob {
        let terms = lex.hold_text(&[body.as_bytes()], 1);
        Blob::new(1, [b"", b"", body.as_bytes()], &terms)
    }

    fn dialogs(mb: &Mailbox) -> Vec<(u32, u32)> {
        mb.dialogs_newest_first()
            .map(|d| (d.last, d.peer))
            .collect()
    }

    #[test]
    fn dialogs_follow_conversations() {
        let lex = Lexicon::default();
        let layout = Layout::production();
        let mut mb = Mailbox::new(Flavour::Messages);
        mb.add(1, 7, 0, UNREAD, blob(&lex, "a"), &layout).unwrap();
        mb.add(2, 8, 0, OUTBOX, blob(&lex, "b"), &layout).unwrap();
        mb.add(3, 7, 0, UNREAD, blob(&lex, "c"), &layout).unwrap();
        assert_eq!(dialogs(&mb), [(3, 7), (2, 8)]);
        assert_eq!(mb.dialog(7).map(|d| d.unread), Some(2));
        mb.read_upto(7, 1);
        assert_eq!(mb.dialog(7).map(|d| d.unread), Some(1));
        mb.remove_logged(&[3], &lex, &layout);
        assert_eq!(dialogs(&mb), [(2, 8), (1, 7)]);
        mb.check().unwrap();
        mb.trim(2, &lex, &layout);
        assert_eq!(mb.dialogs_live(), 1);
        assert_eq!(mb.next_lid(), 4);
        assert!(mb.add(3, 1, 0, 0, blob(&lex, "x"), &layout).is_err());
        mb.check().unwrap();
    }

    /// Random adds, flag changes, reads and removals keep the chains and the dialogs list
    /// equal to what the slots say.
    #[test]
    fn chains_and_dialogs_match_the_slots() {
        let lex = Lexicon::default();
        let layout = Layout::test_min();
        let mut mb = Mailbox::new(Flavour::Messages);
        let mut seed = 3u64;
        let mut rand = |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        for step in 0..3000 {
            let next = mb.next_lid();
            match rand(6) {
                0 | 1 => {
                    let flags = [UNREAD, OUTBOX, 0, DELETED | UNREAD][rand(4) as usize];
                    let peer = 1 + rand(25) as i64;
                    let text = ["red", "red apple", "green"][rand(3) as usize];
                    mb.add(next, peer, 0, flags, blob(&lex, text), &layout)
                        .unwrap();
                }
                2 => {
                    let lid = 1 + rand(u64::from(next)) as u32;
                    let flags = [0, DELETED, UNREAD, OUTBOX][rand(4) as usize];
                    mb.set_flags(lid, flags, (event::FLAGS_SET, 0));
                }
                3 => mb.read_upto(1 + rand(25) as i64, rand(u64::from(next)) as u32),
                4 => {
                    let lid = 1 + rand(u64::from(next)) as u32;
                    mb.remove_logged(&[lid], &lex, &layout);
                }
                _ if step % 500 == 0 => mb.trim(next / 3, &lex, &layout),
                _ => {}
            }
            mb.check().unwrap_or_else(|e| panic!("step {step}: {e}"));
        }
    }
}
