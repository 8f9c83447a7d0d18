//! [`MessagesEngine`]: the [`Engine`] implementation gluing keys, records and state.

use koshka_engine::commit::{self, Locked, Partitions, Positioned};
use koshka_engine::{
    ApplyCtx, Cx, Engine, Error, Journal, Outcome, Request, Result, Session, ShardSpec, Stat,
    StoreMode,
};
use koshka_keys::messages::{Query, Update};

use crate::blob::Blob;
use crate::flags::{WALL_COPIED, WALL_COPY, WALL_REPLY, WALL_STATUS};
use crate::history::event;
use crate::ops::{ExtraOp, FlagOp, Record, Text};
use crate::render::{self, number, SearchFilter};
use crate::search::Lexicon;
use crate::state::{in_sublist, Mailbox, Partition, Usage};
use crate::{
    snapshot, Flavour, Layout, MAILBOX_TEXT_BYTES_MAX, MESSAGES_PER_MAILBOX_MAX, PAGE_SIZE_MAX,
    PARTITIONS,
};

/// The messages (or wall) engine: mailboxes partitioned by owner id into [`PARTITIONS`]
/// partitions, each behind its own lock.
pub struct MessagesEngine {
    flavour: Flavour,
    shard: ShardSpec,
    partitions: Partitions<Partition>,
    /// Stem ids shared by every mailbox's search index.
    lexicon: Lexicon,
    layout: Layout,
}

impl Positioned for Partition {
    fn pos(&self) -> u64 {
        self.pos
    }

    fn set_pos(&mut self, pos: u64) {
        self.pos = pos;
    }
}

impl koshka_engine::LogRecord for Record {
    fn record_type(&self) -> u16 {
        Record::record_type(self)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        self.encode_into(out);
    }
}

/// A partition the caller locked.
fn part<'l>(locked: &'l mut Locked<'_, Partition>, index: usize) -> &'l mut Partition {
    match locked.get_mut(index) {
        Some(part) => part,
        None => unreachable!("partition {index} is not locked"),
    }
}

/// What an update reports back: `None` = the target does not exist.
type Updated = Option<i64>;

impl MessagesEngine {
    /// An empty engine of `flavour` holding shard `shard`.
    #[must_use]
    pub fn new(flavour: Flavour, shard: ShardSpec) -> Self {
        Self::with_layout(flavour, shard, Layout::production())
    }

    /// An empty engine with the given layout thresholds ([`Layout::test_min`] makes every
    /// mailbox of a test take the large-mailbox paths).
    #[must_use]
    pub fn with_layout(flavour: Flavour, shard: ShardSpec, layout: Layout) -> Self {
        let partitions = Partitions::new(PARTITIONS, Partition::default);
        Self {
            flavour,
            shard,
            partitions,
            lexicon: Lexicon::default(),
            layout,
        }
    }

    /// Checks every mailbox's derived state against its slots, and the stem dictionary's
    /// holder counts against the stored copies (tests; O(everything)).
    ///
    /// # Errors
    /// A description of the first inconsistency.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        let mut held = vec![0u32; self.lexicon.capacity()];
        for (index, partition) in self.partitions.iter().enumerate() {
            let part = partition.lock();
            for (owner, mb) in &part.mailboxes {
                mb.check()
                    .map_err(|e| format!("partition {index}, mailbox {owner}: {e}"))?;
                for (_, slot) in mb.slots() {
                    for term in slot.blob.iter().flat_map(Blob::terms) {
                        match held.get_mut(term as usize) {
                            Some(count) => *count += 1,
                            None => return Err(format!("stem {term} is not in the lexicon")),
                        }
                    }
                }
            }
        }
        for (id, &count) in held.iter().enumerate() {
            let id = u32::try_from(id).unwrap_or(u32::MAX);
            if self.lexicon.holders(id) != count {
                return Err(format!(
                    "stem {id} held {} times, stored in {count} copies",
                    self.lexicon.holders(id)
                ));
            }
        }
        Ok(())
    }

    /// The flavour of this instance.
    #[must_use]
    pub fn flavour(&self) -> Flavour {
        self.flavour
    }

    fn partition_of(&self, owner: i64) -> usize {
        let spread = owner.unsigned_abs() / u64::from(self.shard.count.max(1));
        usize::try_from(spread % PARTITIONS as u64).unwrap_or(0)
    }

    fn lock(&self, owners: (i64, Option<i64>)) -> Locked<'_, Partition> {
        let a = self.partition_of(owners.0);
        match owners.1.map(|o| self.partition_of(o)) {
            Some(b) => self.partitions.lock_set(&[a, b]),
            None => self.partitions.lock_one(a),
        }
    }

    fn check_owners(&self, owners: (i64, Option<i64>)) -> Result<()> {
        self.shard.check(owners.0)?;
        if let Some(other) = owners.1 {
            self.shard.check(other)?;
        }
        Ok(())
    }

    fn not_supported(&self) -> Error {
        Error::NotSupported {
            engine: self.flavour.name(),
        }
    }

    /// Applies `record` to the locked partitions it is new to: the apply function shared by
    /// live updates ([`commit::commit`]) and replay ([`commit::replay`]). Cannot fail: a
    /// replayed record is checked first by [`MessagesEngine::check_replay`].
    fn apply_record(&self, record: &Record, locked: &mut Locked<'_, Partition>, time: u32) {
        let (first, second) = record.owners();
        let first_index = self.partition_of(first);
        let second_index = second.map(|o| self.partition_of(o));
        let flavour = self.flavour;
        let (lexicon, layout) = (&self.lexicon, &self.layout);
        // One stored text (and one stemming) for every copy the record creates here.
        let blob = |text: &Text, holders: u32| {
            let terms = lexicon.hold_text(&[&text.subject, &text.body], holders);
            Blob::new(time, [&text.kludges, &text.subject, &text.body], &terms)
        };
        let added = |result: std::result::Result<(), String>| {
            assert!(
                result.is_ok(),
                "apply of a checked record failed: {result:?}"
            );
        };
        match record {
            Record::Add {
                owner,
                lid,
                peer,
                peer_lid,
                flags,
                text,
            } => {
                if let Some(p) = locked.fresh(first_index) {
                    let mb = mailbox(p, *owner, flavour);
                    added(mb.add(*lid, *peer, *peer_lid, *flags, blob(text, 1), layout));
                }
            }
            Record::Send {
                from,
                from_lid,
                from_flags,
                to,
                to_lid,
                to_flags,
                text,
            } => {
                let fresh_from = locked.fresh(first_index).is_some();
                let fresh_to = second_index.and_then(|i| locked.fresh(i)).is_some();
                let holders = u32::from(fresh_from) + u32::from(fresh_to);
                if holders == 0 {
                    return;
                }
                // Stored once, shared by both copies.
                let shared = blob(text, holders);
                if let Some(p) = locked.fresh(first_index) {
                    let mb = mailbox(p, *from, flavour);
                    let copy = shared.clone();
                    added(mb.add(*from_lid, *to, *to_lid, *from_flags, copy, layout));
                }
                if let Some(p) = second_index.and_then(|i| locked.fresh(i)) {
                    let mb = mailbox(p, *to, flavour);
                    added(mb.add(*to_lid, *from, *from_lid, *to_flags, shared, layout));
                }
            }
            Record::Repost {
                owner,
                lid,
                author,
                flags,
                orig_owner,
                orig_id,
                text,
            } => {
                if let Some(p) = locked.fresh(first_index) {
                    let mb = mailbox(p, *owner, flavour);
                    added(mb.add(*lid, *author, 0, *flags, blob(text, 1), layout));
                    mb.set_origin(*lid, (*orig_owner, *orig_id));
                }
                if let Some(p) = second_index.and_then(|i| locked.fresh(i)) {
                    if let Some(mb) = p.mailboxes.get_mut(orig_owner) {
                        if let Some(flags) = mb.get(*orig_id).map(crate::state::Slot::flags) {
                            let ev = (event::FLAGS_ADDED, i64::from(WALL_COPIED));
                            mb.set_flags(*orig_id, flags | WALL_COPIED, ev);
                        }
                    }
                }
            }
            Record::Edit { lid, text, .. } => {
                if let Some(p) = locked.fresh(first_index) {
                    if let Some(mb) = p.mailboxes.get_mut(&first) {
                        // The edited copy keeps its date; its twin keeps the old text.
                        if let Some(date) = mb.get(*lid).map(crate::state::Slot::date) {
                            let terms = lexicon.hold_text(&[&text.subject, &text.body], 1);
                            let parts = [&text.kludges[..], &text.subject, &text.body];
                            let new = Blob::new(date, parts, &terms);
                            mb.edit(*lid, new, lexicon, layout);
                        }
                    }
                }
            }
            _ => {
                if let Some(p) = locked.fresh(first_index) {
                    if let Some(mb) = p.mailboxes.get_mut(&first) {
                        apply_single(mb, record, lexicon, layout);
                    }
                }
            }
        }
    }

    /// Checks a record read back from the log against the partitions it is new to, so that
    /// applying it cannot fail: a message id must be the mailbox's next one. Anything else
    /// is a damaged log.
    fn check_replay(
        &self,
        record: &Record,
        locked: &Locked<'_, Partition>,
        pos: u64,
    ) -> Result<()> {
        let new_to = |index: usize| locked.get(index).filter(|p| p.pos < pos);
        let next = |index: usize, owner: i64| {
            new_to(index).map(|p| p.mailboxes.get(&owner).map_or(1, Mailbox::next_lid))
        };
        let check = |owner: i64, lid: u32| -> Result<()> {
            match next(self.partition_of(owner), owner) {
                Some(expected) if expected != lid => Err(Error::corrupt_record(format!(
                    "message id {lid} of mailbox {owner} but the next id is {expected}"
                ))),
                _ => Ok(()),
            }
        };
        let peer = |peer: i64| -> Result<()> {
            if u32::try_from(peer).is_err() {
                return Err(Error::corrupt_record(format!("peer id {peer}")));
            }
            Ok(())
        };
        match record {
            Record::Add {
                owner,
                lid,
                peer: p,
                ..
            } => {
                peer(*p)?;
                check(*owner, *lid)
            }
            Record::Repost {
                owner, lid, author, ..
            } => {
                peer(*author)?;
                check(*owner, *lid)
            }
            Record::Send {
                from,
                from_lid,
                to,
                to_lid,
                ..
            } => {
                peer(*from)?;
                peer(*to)?;
                check(*from, *from_lid)?;
                check(*to, *to_lid)
            }
            _ => Ok(()),
        }
    }

    /// Validates `update` against the locked state and builds its record; `Ok(None)` when
    /// the message or mailbox it names does not exist.
    fn plan(&self, locked: &mut Locked<'_, Partition>, update: &Update) -> Result<Option<Record>> {
        let flavour = self.flavour;
        let record = match update {
            Update::NewMessage {
                owner,
                flags,
                peer,
                peer_lid,
                text,
                ..
            } => {
                let lid = next_lid(part(locked, self.partition_of(*owner)), *owner, text)?;
                Record::Add {
                    owner: *owner,
                    lid,
                    peer: *peer,
                    peer_lid: *peer_lid,
                    flags: *flags,
                    text: text.clone(),
                }
            }
            Update::Send {
                from,
                to,
                flags,
                text,
                ..
            } => {
                let from_lid = next_lid(part(locked, self.partition_of(*from)), *from, text)?;
                let to_lid = next_lid(part(locked, self.partition_of(*to)), *to, text)?;
                Record::Send {
                    from: *from,
                    from_lid,
                    from_flags: (flags & !crate::flags::UNREAD) | crate::flags::OUTBOX,
                    to: *to,
                    to_lid,
                    to_flags: (flags & !crate::flags::OUTBOX) | crate::flags::UNREAD,
                    text: text.clone(),
                }
            }
            Update::NewPost {
                owner,
                flags,
                author,
                parent,
                text,
                ..
            } => {
                let p = part(locked, self.partition_of(*owner));
                if *parent != 0
                    && p.mailboxes
                        .get(owner)
                        .and_then(|m| m.get(*parent))
                        .is_none()
                {
                    return Ok(None);
                }
                let lid = next_lid(p, *owner, text)?;
                let flags = if *parent == 0 {
                    flags & !WALL_REPLY
                } else {
                    flags | WALL_REPLY
                };
                Record::Add {
                    owner: *owner,
                    lid,
                    peer: *author,
                    peer_lid: *parent,
                    flags,
                    text: text.clone(),
                }
            }
            Update::Status { owner, text, .. } => {
                let lid = next_lid(part(locked, self.partition_of(*owner)), *owner, text)?;
                Record::Add {
                    owner: *owner,
                    lid,
                    peer: *owner,
                    peer_lid: 0,
                    flags: WALL_STATUS,
                    text: text.clone(),
                }
            }
            Update::Repost {
                owner,
                author,
                flags,
                orig_owner,
                orig_id,
                text,
                ..
            } => {
                let text = match text {
                    // `repost_half`: the original lives on another node, which marks it
                    // COPIED. One whose original is here would leave it unmarked (and replay
                    // would mark it): refused, as `repost` does that.
                    Some(_) if self.shard.check(*orig_owner).is_ok() => {
                        return Err(Error::client(format!(
                            "repost_half: wall {orig_owner} lives on this node: use repost"
                        )));
                    }
                    Some(text) => text.clone(),
                    None => {
                        let p = part(locked, self.partition_of(*orig_owner));
                        let Some(orig) = p.mailboxes.get(orig_owner) else {
                            return Ok(None);
                        };
                        let Some(m) = orig
                            .get(*orig_id)
                            .filter(|m| m.flags() & crate::flags::DELETED == 0)
                        else {
                            return Ok(None);
                        };
                        let Some(blob) = &m.blob else {
                            return Ok(None);
                        };
                        let [kludges, subject, body] = blob.to_parts();
                        Text {
                            kludges,
                            subject,
                            body,
                        }
                    }
                };
                let lid = next_lid(part(locked, self.partition_of(*owner)), *owner, &text)?;
                Record::Repost {
                    owner: *owner,
                    lid,
                    author: *author,
                    flags: (flags | WALL_COPY) & !WALL_REPLY,
                    orig_owner: *orig_owner,
                    orig_id: *orig_id,
                    text,
                }
            }
            _ => {
                let owner = update.owners().0;
                let p = part(locked, self.partition_of(owner));
                let Some(mb) = p.mailboxes.get(&owner) else {
                    return Ok(None);
                };
                return plan_single(mb, update, flavour);
            }
        };
        Ok(Some(record))
    }

    /// Runs one update: check, plan, log, apply, answer.
    fn update(
        &self,
        update: &Update,
        session: &mut Session,
        journal: &dyn Journal,
    ) -> Result<Updated> {
        self.check_flavour(update)?;
        let owners = update.owners();
        self.check_owners(owners)?;
        let mut locked = self.lock(owners);
        let Some(record) = self.plan(&mut locked, update)? else {
            return Ok(None);
        };
        commit::commit(journal, &mut locked, &record, |r, l, time| {
            self.apply_record(r, l, time);
        })?;
        let outcome = match (&record, update) {
            (Record::Add { owner, lid, .. } | Record::Repost { owner, lid, .. }, _) => {
                remember_id(session, *owner, update_tag(update), *lid);
                i64::from(*lid)
            }
            (
                Record::Send {
                    from,
                    from_lid,
                    to,
                    to_lid,
                    ..
                },
                _,
            ) => {
                remember_id(session, *to, update_tag(update), *to_lid);
                remember_id(session, *from, update_tag(update), *from_lid);
                i64::from(*from_lid)
            }
            (Record::Flags { owner, lid, .. }, _) => {
                let p = part(&mut locked, self.partition_of(*owner));
                let flags = p
                    .mailboxes
                    .get(owner)
                    .and_then(|m| m.get(*lid))
                    .map(crate::state::Slot::flags);
                i64::from(flags.unwrap_or(0))
            }
            (
                Record::Extra {
                    owner, lid, field, ..
                },
                _,
            ) => {
                let p = part(&mut locked, self.partition_of(*owner));
                p.mailboxes.get(owner).map_or(0, |m| m.extra(*lid, *field))
            }
            _ => 1,
        };
        Ok(Some(outcome))
    }

    fn check_flavour(&self, update: &Update) -> Result<()> {
        let wall_only = matches!(
            update,
            Update::NewPost { .. } | Update::Repost { .. } | Update::Status { .. }
        );
        let mail_only = matches!(
            update,
            Update::NewMessage { .. }
                | Update::Send { .. }
                | Update::ReadUpto { .. }
                | Update::PeerLink { .. }
                | Update::DeleteDialog { .. }
        );
        match self.flavour {
            Flavour::Messages if wall_only => Err(self.not_supported()),
            Flavour::Wall if mail_only => Err(self.not_supported()),
            _ => Ok(()),
        }
    }

    /// Refuses a read this flavour does not have, a foreign owner or an unknown sublist.
    fn check_query(&self, query: &Query) -> Result<()> {
        let wall_only = matches!(
            query,
            Query::Replies { .. } | Query::Status { .. } | Query::Statuses { .. }
        );
        let mail_only = matches!(query, Query::Dialogs { .. } | Query::Unread { .. });
        if (self.flavour == Flavour::Messages && wall_only)
            || (self.flavour == Flavour::Wall && mail_only)
        {
            return Err(self.not_supported());
        }
        if let Some(owner) = query.owner() {
            self.shard.check(owner)?;
        }
        if let Query::Sublist { and, xor, .. } | Query::SublistPos { and, xor, .. } = query {
            self.sublist_index(*and, *xor)?;
        }
        Ok(())
    }

    /// Renders the answer to a checked read into `out`; false for a miss.
    fn render_query(&self, query: &Query, session: &Session, out: &mut Vec<u8>) -> bool {
        if let Query::SublistTypes = query {
            for (i, (a, x)) in self.flavour.sublists().iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                number(out, *a);
                out.push(b':');
                number(out, *x);
            }
            return true;
        }
        let Some(owner) = query.owner() else {
            return false;
        };
        if let Query::NewId { owner, tag } = query {
            let Some(id) = session.temp(&id_tag(*owner, tag)) else {
                return false;
            };
            out.extend_from_slice(id);
            return true;
        }
        let part = self.partitions.lock(self.partition_of(owner));
        match part.mailboxes.get(&owner) {
            Some(mb) => self.render_mailbox(mb, query, out),
            None => empty_answer(query, out),
        }
    }

    fn sublist_index(&self, and: u32, xor: u32) -> Result<usize> {
        let lists = self.flavour.sublists();
        lists.iter().position(|&p| p == (and, xor)).ok_or_else(|| {
            let known: Vec<String> = lists.iter().map(|(a, x)| format!("{a}:{x}")).collect();
            Error::client(format!(
                "unsupported sublist {and}:{xor}; supported: {}",
                known.join(",")
            ))
        })
    }

    /// The statuses sublist of a wall.
    fn statuses(&self) -> (u32, u32) {
        (WALL_STATUS | crate::flags::DELETED, WALL_STATUS)
    }

    fn render_mailbox(&self, mb: &Mailbox, query: &Query, out: &mut Vec<u8>) -> bool {
        let flavour = self.flavour;
        match query {
            Query::Message {
                lid, mode, max_len, ..
            } => {
                let Some(slot) = mb.get(*lid) else {
                    return false;
                };
                render::message(out, flavour, mb, *lid, slot, *mode, *max_len);
            }
            Query::Flags { lid, .. } => {
                let Some(slot) = mb.get(*lid) else {
                    return false;
                };
                number(out, slot.flags());
            }
            Query::Extra { lid, field, .. } => {
                if mb.get(*lid).is_none() {
                    return false;
                }
                number(out, mb.extra(*lid, *field));
            }
            Query::Sublist {
                and, xor, slice, ..
            } => render::sublist(out, mb, (*and, *xor), *slice),
            Query::SublistPos { and, xor, lid, .. } => {
                return render::sublist_position(out, mb, (*and, *xor), *lid);
            }
            Query::PeerList { peer, slice, .. } => render::conversation(out, mb, *peer, *slice),
            Query::PeerListPos { peer, lid, .. } => {
                return render::conversation_position(out, mb, *peer, *lid);
            }
            Query::Replies { post, slice, .. } => {
                let replies = mb.more().and_then(|m| m.replies.get(post));
                render::page(out, replies.map_or(&[][..], |l| l), *slice);
            }
            Query::Dialogs { slice, .. } => render::dialogs(out, mb, *slice),
            Query::Unread {
                peer: Some(peer), ..
            } => number(out, mb.dialog(*peer).map_or(0, |d| d.unread)),
            Query::Unread { peer: None, .. } => number(out, mb.unread()),
            Query::Timestamp { .. } => number(out, mb.history.ts()),
            Query::History { ts, limit, .. } => render::history(out, mb, *ts, *limit),
            Query::Search {
                mask,
                peer,
                min_date,
                max_date,
                limit,
                words,
                ..
            } => {
                let filter = SearchFilter {
                    mask: *mask,
                    peer: *peer,
                    min_date: *min_date,
                    max_date: *max_date,
                };
                render::search(out, mb, &self.lexicon, &filter, *limit, words);
            }
            Query::Status { .. } => {
                let (and, xor) = self.statuses();
                let newest = mb
                    .slots()
                    .rev()
                    .find(|(_, s)| in_sublist(s.flags(), and, xor));
                let Some((lid, slot)) = newest else {
                    return false;
                };
                render::message(out, flavour, mb, lid, slot, 0, None);
            }
            Query::Statuses { slice, .. } => {
                let (and, xor) = self.statuses();
                let list: Vec<u32> = mb
                    .slots()
                    .filter(|(_, s)| in_sublist(s.flags(), and, xor))
                    .map(|(lid, _)| lid)
                    .collect();
                out.extend_from_slice(b"{\"items\":[");
                let mut first = true;
                for i in slice.positions(list.len()).take(PAGE_SIZE_MAX) {
                    let lid = list[i];
                    if let Some(slot) = mb.get(lid) {
                        if !first {
                            out.push(b',');
                        }
                        first = false;
                        render::message(out, flavour, mb, lid, slot, 0, None);
                    }
                }
                out.extend_from_slice(b"],\"total\":");
                number(out, list.len());
                out.push(b'}');
            }
            Query::NewId { .. } | Query::SublistTypes => return false,
        }
        true
    }
}

/// The session name under which a tagged update remembers the id it allocated.
fn id_tag(owner: i64, tag: &[u8]) -> Vec<u8> {
    let mut name = format!("newmsg{owner}#").into_bytes();
    name.extend_from_slice(tag);
    name
}

fn update_tag(update: &Update) -> &[u8] {
    match update {
        Update::NewMessage { tag, .. }
        | Update::Send { tag, .. }
        | Update::NewPost { tag, .. }
        | Update::Repost { tag, .. }
        | Update::Status { tag, .. } => tag,
        _ => &[],
    }
}

/// Remembers the id a tagged update allocated, for the `newmsgid` handshake. Cannot fail
/// (an id is far below the session's size limit), as it runs after the commit.
fn remember_id(session: &mut Session, owner: i64, tag: &[u8], lid: u32) {
    let mut digits = itoa::Buffer::new();
    let stored = session.put_temp(&id_tag(owner, tag), digits.format(lid).as_bytes().to_vec());
    debug_assert!(stored.is_ok());
}

fn mailbox(part: &mut Partition, owner: i64, flavour: Flavour) -> &mut Mailbox {
    part.mailboxes
        .entry(owner)
        .or_insert_with(|| Mailbox::new(flavour))
}

/// The id a new message of `owner` would get, after checking the mailbox limits.
fn next_lid(part: &Partition, owner: i64, text: &Text) -> Result<u32> {
    let Some(mb) = part.mailboxes.get(&owner) else {
        return Ok(1);
    };
    let lid = mb.next_lid();
    if lid > MESSAGES_PER_MAILBOX_MAX {
        return Err(Error::client(format!(
            "mailbox {owner} is full: {MESSAGES_PER_MAILBOX_MAX} messages were ever stored"
        )));
    }
    if mb.text_bytes() + text.len() > MAILBOX_TEXT_BYTES_MAX {
        return Err(Error::client(format!(
            "mailbox {owner} holds {MAILBOX_TEXT_BYTES_MAX} text bytes already"
        )));
    }
    Ok(lid)
}

/// Plans an update of one existing mailbox.
fn plan_single(mb: &Mailbox, update: &Update, flavour: Flavour) -> Result<Option<Record>> {
    let record = match update {
        Update::Flags {
            owner,
            lid,
            op,
            value,
        } => {
            if mb.get(*lid).is_none() {
                return Ok(None);
            }
            Record::Flags {
                owner: *owner,
                lid: *lid,
                op: *op,
                value: *value,
            }
        }
        Update::Edit { owner, lid, text } => {
            if mb.get(*lid).is_none() {
                return Ok(None);
            }
            if mb.text_bytes() + text.len() > MAILBOX_TEXT_BYTES_MAX {
                return Err(Error::client("mailbox text bytes limit reached"));
            }
            Record::Edit {
                owner: *owner,
                lid: *lid,
                text: text.clone(),
            }
        }
        Update::Delete { owner, lid } => {
            if mb.get(*lid).is_none() {
                return Ok(None);
            }
            Record::Delete {
                owner: *owner,
                lid: *lid,
            }
        }
        Update::Extra {
            owner,
            lid,
            field,
            op,
            value,
        } => {
            if mb.get(*lid).is_none() {
                return Ok(None);
            }
            Record::Extra {
                owner: *owner,
                lid: *lid,
                field: *field,
                op: *op,
                value: *value,
            }
        }
        Update::PeerLink {
            owner,
            lid,
            peer_lid,
        } => {
            if mb.get(*lid).is_none() {
                return Ok(None);
            }
            Record::PeerLink {
                owner: *owner,
                lid: *lid,
                peer_lid: *peer_lid,
            }
        }
        Update::ReadUpto { owner, peer, lid } => {
            if mb.dialog(*peer).is_none_or(|d| d.count == 0) {
                return Ok(None);
            }
            Record::ReadUpto {
                owner: *owner,
                peer: *peer,
                lid: *lid,
            }
        }
        Update::DeleteDialog { owner, peer } => {
            if !mb.slots().any(|(_, s)| s.alive() && mb.peer(s) == *peer) {
                return Ok(None);
            }
            Record::DeleteDialog {
                owner: *owner,
                peer: *peer,
            }
        }
        Update::Trim { owner, min_lid } => {
            if *min_lid <= mb.first_lid() || mb.live() == 0 {
                return Ok(None);
            }
            Record::Trim {
                owner: *owner,
                min_lid: *min_lid,
            }
        }
        Update::NewMessage { .. }
        | Update::Send { .. }
        | Update::NewPost { .. }
        | Update::Repost { .. }
        | Update::Status { .. } => {
            let _ = flavour;
            return Err(Error::client("internal: creating update planned as single"));
        }
    };
    Ok(Some(record))
}

/// Applies a one-mailbox record that creates nothing (edits are applied by the caller,
/// which makes the new text).
fn apply_single(mb: &mut Mailbox, record: &Record, lexicon: &Lexicon, layout: &Layout) {
    match record {
        Record::Flags { lid, op, value, .. } => {
            let Some(old) = mb.get(*lid).map(crate::state::Slot::flags) else {
                return;
            };
            let (new, ev) = match op {
                FlagOp::Set => (*value, (event::FLAGS_SET, i64::from(*value))),
                FlagOp::Or => (old | value, (event::FLAGS_ADDED, i64::from(*value))),
                FlagOp::AndNot => (old & !value, (event::FLAGS_CLEARED, i64::from(*value))),
            };
            mb.set_flags(*lid, new & crate::flags::USER_MASK, ev);
        }
        Record::ReadUpto { peer, lid, .. } => mb.read_upto(*peer, *lid),
        Record::Delete { lid, .. } => {
            mb.remove_logged(&[*lid], lexicon, layout);
        }
        Record::DeleteDialog { peer, .. } => {
            let lids: Vec<u32> = mb
                .slots()
                .filter(|(_, s)| s.alive() && mb.peer(s) == *peer)
                .map(|(lid, _)| lid)
                .collect();
            mb.remove_logged(&lids, lexicon, layout);
        }
        Record::Trim { min_lid, .. } => mb.trim(*min_lid, lexicon, layout),
        Record::PeerLink { lid, peer_lid, .. } => mb.set_peer_lid(*lid, *peer_lid),
        Record::Extra {
            lid,
            field,
            op,
            value,
            ..
        } => {
            if mb.get(*lid).is_some() {
                mb.change_extra(*lid, *field, *op == ExtraOp::Add, *value);
            }
        }
        Record::Add { .. } | Record::Send { .. } | Record::Repost { .. } | Record::Edit { .. } => {}
    }
}

/// What a get answers for a mailbox that does not exist: empty lists and zero counters for
/// list queries, a miss for single messages.
fn empty_answer(query: &Query, out: &mut Vec<u8>) -> bool {
    let answer: &[u8] = match query {
        Query::Sublist { .. }
        | Query::PeerList { .. }
        | Query::Dialogs { .. }
        | Query::Replies { .. }
        | Query::Unread { .. }
        | Query::Timestamp { .. }
        | Query::Search { .. }
        | Query::History { ts: 0, .. } => b"0",
        Query::History { .. } => b"resync,0",
        Query::Statuses { .. } => br#"{"items":[],"total":0}"#,
        _ => return false,
    };
    out.extend_from_slice(answer);
    true
}

impl Engine for MessagesEngine {
    fn name(&self) -> &'static str {
        self.flavour.name()
    }

    fn execute(&self, request: &Request<'_>, cx: &mut Cx<'_>) -> Result<Outcome> {
        match *request {
            Request::Get { key } => {
                let query = Query::parse(key)?;
                self.check_query(&query)?;
                let session = &*cx.session;
                let found = cx
                    .reply
                    .value(key, 0, &mut |out| self.render_query(&query, session, out));
                Ok(if found { Outcome::Hit } else { Outcome::Miss })
            }
            Request::Store {
                mode: StoreMode::Set,
                key,
                data,
                ..
            } => {
                let update = Update::parse_set(key, data)?;
                Ok(match self.update(&update, cx.session, cx.journal)? {
                    Some(_) => Outcome::Stored { cas: 0 },
                    None => Outcome::Miss,
                })
            }
            Request::Delete { key, cas: None } => {
                let update = Update::parse_delete(key)?;
                Ok(match self.update(&update, cx.session, cx.journal)? {
                    Some(_) => Outcome::Deleted,
                    None => Outcome::Miss,
                })
            }
            Request::Arith {
                key,
                incr,
                delta,
                options,
            } if options == koshka_engine::ArithOptions::default() => {
                let delta = i64::try_from(delta)
                    .map_err(|_| Error::client("invalid numeric delta argument"))?;
                let update = Update::parse_incr(key, if incr { delta } else { -delta })?;
                // NOTE: memcached replies are unsigned; a negative extra field reads back as
                // 0 here and exactly through `get extra…`.
                Ok(match self.update(&update, cx.session, cx.journal)? {
                    Some(value) => Outcome::Number {
                        value: u64::try_from(value).unwrap_or(0),
                        cas: 0,
                        exptime: 0,
                    },
                    None => Outcome::Miss,
                })
            }
            _ => Err(self.not_supported()),
        }
    }

    fn apply(&self, record_type: u16, payload: &[u8], ctx: ApplyCtx) -> Result<()> {
        let record = Record::decode(record_type, payload)?;
        let mut locked = self.lock(record.owners());
        self.check_replay(&record, &locked, ctx.pos)?;
        commit::replay(&mut locked, &record, ctx, |r, l, time| {
            self.apply_record(r, l, time);
        });
        Ok(())
    }

    fn write_snapshot(&self, out: &mut dyn std::io::Write) -> Result<()> {
        out.write_all(&snapshot::encode_header(self.flavour))?;
        let mut buf = Vec::new();
        for (index, partition) in self.partitions.iter().enumerate() {
            buf.clear();
            {
                let part = partition.lock();
                snapshot::encode_partition(u32::try_from(index).unwrap_or(0), &part, &mut buf);
            }
            out.write_all(&buf)?;
        }
        out.write_all(snapshot::trailer())?;
        Ok(())
    }

    fn load_snapshot(&self, input: &mut dyn std::io::Read) -> Result<()> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        // NOTE: snapshots are loaded into a new, empty engine: the stems it holds are
        // exactly those of the snapshot's copies.
        self.lexicon.clear();
        let partitions = snapshot::decode(&bytes, self.flavour, &self.lexicon, &self.layout)?;
        for (index, partition) in partitions {
            *self.partitions.lock(index) = partition;
        }
        Ok(())
    }

    fn stats(&self) -> Vec<Stat> {
        let (mut mailboxes, mut live, mut text) = (0usize, 0u64, 0usize);
        let mut usage = Usage::default();
        for partition in self.partitions.iter() {
            let part = partition.lock();
            mailboxes += part.mailboxes.len();
            // The table of mailboxes: a slot per capacity, a control byte each.
            usage.mailboxes += part.mailboxes.capacity() * (8 + 1);
            for mb in part.mailboxes.values() {
                live += u64::from(mb.live());
                text += mb.text_bytes();
                usage += mb.account();
            }
        }
        // NOTE: the stem dictionary is shared by all mailboxes; it counts as search.
        usage.search += self.lexicon.heap_bytes();
        let heap = usage.total();
        let per = |bytes: usize| (bytes as u64).checked_div(live).unwrap_or(0);
        let name = self.flavour.name();
        let mut stats = vec![
            (format!("{name}_mailboxes"), mailboxes.to_string()),
            (format!("{name}_messages"), live.to_string()),
            (format!("{name}_text_bytes"), text.to_string()),
            (format!("{name}_stems"), self.lexicon.len().to_string()),
            (format!("{name}_heap_bytes"), heap.to_string()),
            (format!("{name}_bytes_per_message"), per(heap).to_string()),
        ];
        for (part, bytes) in [
            ("text", usage.text),
            ("metadata", usage.metadata),
            ("dialogs", usage.dialogs),
            ("search", usage.search),
            ("history", usage.history),
            ("mailboxes", usage.mailboxes),
        ] {
            stats.push((format!("{name}_memory_{part}_bytes"), bytes.to_string()));
            stats.push((
                format!("{name}_memory_{part}_bytes_per_message"),
                per(bytes).to_string(),
            ));
        }
        stats
    }
}
