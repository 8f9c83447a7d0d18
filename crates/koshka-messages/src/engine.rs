//! [`MessagesEngine`]: the [`Engine`] implementation gluing keys, records and state.

use koshka_engine::commit::{self, Locked, Partitions, Positioned};
use koshka_engine::{
    ApplyCtx, Cx, Engine, Error, Journal, Outcome, Request, Result, Session, ShardSpec, Stat,
    StoreMode,
};
use koshka_keys::messages::{mode, Query, Update};
use koshka_keys::Slice;

use crate::flags::{WALL_COPIED, WALL_COPY, WALL_REPLY, WALL_STATUS};
use crate::ops::{ExtraOp, FlagOp, Record, Text};
use crate::search::Lexicon;
use crate::state::{event, in_sublist, Mailbox, Message, Partition};
use crate::{
    snapshot, Flavour, MAILBOX_TEXT_BYTES_MAX, MESSAGES_PER_MAILBOX_MAX, PAGE_SIZE_MAX, PARTITIONS,
};

/// The messages (or wall) engine: mailboxes partitioned by owner id into [`PARTITIONS`]
/// partitions, each behind its own lock.
pub struct MessagesEngine {
    flavour: Flavour,
    shard: ShardSpec,
    partitions: Partitions<Partition>,
    /// Stem ids shared by every mailbox's search index.
    lexicon: Lexicon,
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
        let partitions = Partitions::new(PARTITIONS, Partition::default);
        Self {
            flavour,
            shard,
            partitions,
            lexicon: Lexicon::default(),
        }
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
        let lexicon = &self.lexicon;
        let terms = |text: &Text| lexicon.terms(&[&text.subject, &text.body]);
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
                    let terms = terms(text);
                    let mb = mailbox(p, *owner, flavour);
                    added(mb.add(*lid, *peer, *peer_lid, *flags, text, time, &terms));
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
                // Stemmed once for both copies.
                let terms = terms(text);
                if let Some(p) = locked.fresh(first_index) {
                    let mb = mailbox(p, *from, flavour);
                    added(mb.add(*from_lid, *to, *to_lid, *from_flags, text, time, &terms));
                }
                if let Some(p) = second_index.and_then(|i| locked.fresh(i)) {
                    let mb = mailbox(p, *to, flavour);
                    added(mb.add(*to_lid, *from, *from_lid, *to_flags, text, time, &terms));
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
                    let terms = terms(text);
                    let mb = mailbox(p, *owner, flavour);
                    added(mb.add(*lid, *author, 0, *flags, text, time, &terms));
                    mb.origins.insert(*lid, (*orig_owner, *orig_id));
                }
                if let Some(p) = second_index.and_then(|i| locked.fresh(i)) {
                    if let Some(mb) = p.mailboxes.get_mut(orig_owner) {
                        if let Some(m) = mb.get(*orig_id).copied() {
                            let ev = (event::FLAGS_ADDED, i64::from(WALL_COPIED));
                            mb.set_flags(*orig_id, m.flags | WALL_COPIED, ev);
                        }
                    }
                }
            }
            _ => {
                if let Some(p) = locked.fresh(first_index) {
                    if let Some(mb) = p.mailboxes.get_mut(&first) {
                        apply_single(mb, record, lexicon);
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
        match record {
            Record::Add { owner, lid, .. } | Record::Repost { owner, lid, .. } => {
                check(*owner, *lid)
            }
            Record::Send {
                from,
                from_lid,
                to,
                to_lid,
                ..
            } => {
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
                ..
            } => {
                let p = part(locked, self.partition_of(*orig_owner));
                let Some(orig) = p.mailboxes.get(orig_owner) else {
                    return Ok(None);
                };
                let Some(m) = orig
                    .get(*orig_id)
                    .filter(|m| m.flags & crate::flags::DELETED == 0)
                else {
                    return Ok(None);
                };
                let (kludges, subject, body) = orig.text(m);
                let text = Text {
                    kludges: kludges.to_vec(),
                    subject: subject.to_vec(),
                    body: body.to_vec(),
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
                    .map(|m| m.flags);
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

    /// The newest status of a wall, if any.
    fn statuses(&self, mb: &Mailbox) -> Option<usize> {
        self.sublist_index(WALL_STATUS | crate::flags::DELETED, WALL_STATUS)
            .ok()
            .filter(|&index| index < mb.sublists.len())
    }

    fn render_mailbox(&self, mb: &Mailbox, query: &Query, out: &mut Vec<u8>) -> bool {
        let flavour = self.flavour;
        match query {
            Query::Message {
                lid, mode, max_len, ..
            } => {
                let Some(m) = mb.get(*lid) else { return false };
                render(out, flavour, mb, *lid, m, *mode, *max_len);
            }
            Query::Flags { lid, .. } => {
                let Some(m) = mb.get(*lid) else { return false };
                number(out, m.flags);
            }
            Query::Extra { lid, field, .. } => {
                if mb.get(*lid).is_none() {
                    return false;
                }
                signed(out, mb.extra(*lid, *field));
            }
            Query::Sublist {
                and, xor, slice, ..
            } => {
                let Ok(index) = self.sublist_index(*and, *xor) else {
                    return false;
                };
                page(out, &mb.sublists[index], *slice);
            }
            Query::SublistPos { and, xor, lid, .. } => {
                let Ok(index) = self.sublist_index(*and, *xor) else {
                    return false;
                };
                return position(out, &mb.sublists[index], *lid);
            }
            Query::PeerList { peer, slice, .. } => {
                page(
                    out,
                    mb.peers.get(peer).map_or(&[][..], |c| &*c.lids),
                    *slice,
                );
            }
            Query::PeerListPos { peer, lid, .. } => {
                let Some(conversation) = mb.peers.get(peer) else {
                    return false;
                };
                return position(out, &conversation.lids, *lid);
            }
            Query::Replies { post, slice, .. } => {
                page(out, mb.replies.get(post).map_or(&[][..], |l| l), *slice);
            }
            Query::Dialogs { slice, .. } => dialogs(out, mb, *slice),
            Query::Unread {
                peer: Some(peer), ..
            } => number(out, mb.peers.get(peer).map_or(0, |c| c.unread)),
            Query::Unread { peer: None, .. } => {
                let total: u64 = mb.peers.values().map(|c| u64::from(c.unread)).sum();
                number(out, total);
            }
            Query::Timestamp { .. } => number(out, mb.history.ts),
            Query::History { ts, limit, .. } => history(out, mb, *ts, *limit),
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
                search(out, mb, &self.lexicon, &filter, *limit, words);
            }
            Query::Status { .. } => {
                let Some(index) = self.statuses(mb) else {
                    return false;
                };
                let Some(&lid) = mb.sublists[index].last() else {
                    return false;
                };
                let Some(m) = mb.get(lid) else { return false };
                render(out, flavour, mb, lid, m, 0, None);
            }
            Query::Statuses { slice, .. } => {
                let Some(index) = self.statuses(mb) else {
                    return false;
                };
                let list = &mb.sublists[index];
                out.extend_from_slice(b"{\"items\":[");
                let mut first = true;
                for i in slice.resolve(list.len(), PAGE_SIZE_MAX) {
                    let lid = list[i];
                    if let Some(m) = mb.get(lid) {
                        if !first {
                            out.push(b',');
                        }
                        first = false;
                        render(out, flavour, mb, lid, m, 0, None);
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
            if !mb.peers.contains_key(peer) {
                return Ok(None);
            }
            Record::ReadUpto {
                owner: *owner,
                peer: *peer,
                lid: *lid,
            }
        }
        Update::DeleteDialog { owner, peer } => {
            if !mb.messages.iter().any(|m| m.alive() && m.peer == *peer) {
                return Ok(None);
            }
            Record::DeleteDialog {
                owner: *owner,
                peer: *peer,
            }
        }
        Update::Trim { owner, min_lid } => {
            if *min_lid <= mb.first_lid || mb.live == 0 {
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

/// Applies a one-mailbox record that creates nothing.
fn apply_single(mb: &mut Mailbox, record: &Record, lexicon: &Lexicon) {
    match record {
        Record::Flags { lid, op, value, .. } => {
            let Some(old) = mb.get(*lid).map(|m| m.flags) else {
                return;
            };
            let (new, ev) = match op {
                FlagOp::Set => (*value, (event::FLAGS_SET, i64::from(*value))),
                FlagOp::Or => (old | value, (event::FLAGS_ADDED, i64::from(*value))),
                FlagOp::AndNot => (old & !value, (event::FLAGS_CLEARED, i64::from(*value))),
            };
            let new = (new & crate::flags::USER_MASK) | (old & !crate::flags::USER_MASK);
            mb.set_flags(*lid, new, ev);
        }
        Record::ReadUpto { peer, lid, .. } => mb.read_upto(*peer, *lid),
        Record::Edit { lid, text, .. } => {
            mb.edit(*lid, text, lexicon);
        }
        Record::Delete { lid, .. } => {
            mb.remove(&[*lid], lexicon);
        }
        Record::DeleteDialog { peer, .. } => {
            let lids: Vec<u32> = mb
                .messages
                .iter()
                .enumerate()
                .filter(|(_, m)| m.alive() && m.peer == *peer)
                .map(|(i, _)| mb.first_lid + u32::try_from(i).unwrap_or(u32::MAX))
                .collect();
            mb.remove(&lids, lexicon);
        }
        Record::Trim { min_lid, .. } => mb.trim(*min_lid, lexicon),
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
        Record::Add { .. } | Record::Send { .. } | Record::Repost { .. } => {}
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

/// Appends an unsigned decimal number.
fn number(out: &mut Vec<u8>, n: impl itoa::Integer) {
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(digits.format(n).as_bytes());
}

/// Appends a signed decimal number.
fn signed(out: &mut Vec<u8>, n: i64) {
    number(out, n);
}

/// Appends `,<n>`.
fn item(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.push(b',');
    number(out, n);
}

/// `total,lid,lid,…` for a slice of an ascending list.
fn page(out: &mut Vec<u8>, list: &[u32], slice: Slice) {
    number(out, list.len());
    for i in slice.resolve(list.len(), PAGE_SIZE_MAX) {
        item(out, list[i]);
    }
}

/// The 1-based position of `lid` in an ascending list.
fn position(out: &mut Vec<u8>, list: &[u32], lid: u32) -> bool {
    match list.binary_search(&lid) {
        Ok(i) => {
            number(out, i + 1);
            true
        }
        Err(_) => false,
    }
}

/// `total,(lid,peer,unread)…` of the dialogs list (position 1 = the oldest dialog).
fn dialogs(out: &mut Vec<u8>, mb: &Mailbox, slice: Slice) {
    let total = mb.dialogs.len();
    number(out, total);
    let mut positions = slice.resolve(total, PAGE_SIZE_MAX);
    let Some(a) = positions.next() else {
        return;
    };
    let b = positions.last().unwrap_or(a);
    let (lo, hi) = (a.min(b), a.max(b));
    let window = mb.dialogs.iter().skip(lo).take(hi - lo + 1);
    let mut write = |(lid, peer): (&u32, &i64)| {
        let unread = mb.peers.get(peer).map_or(0, |c| c.unread);
        item(out, *lid);
        item(out, *peer);
        item(out, unread);
    };
    if a > b {
        window.rev().for_each(&mut write);
    } else {
        window.for_each(&mut write);
    }
}

/// `new_ts,(kind,lid,value)…` or `resync,<ts>`.
fn history(out: &mut Vec<u8>, mb: &Mailbox, ts: u64, limit: usize) {
    match mb.history.since(ts, limit) {
        None => {
            out.extend_from_slice(b"resync,");
            number(out, mb.history.ts);
        }
        Some((new_ts, events)) => {
            number(out, new_ts);
            for e in events {
                item(out, e.kind);
                item(out, e.lid);
                item(out, e.value);
            }
        }
    }
}

struct SearchFilter {
    mask: (u32, u32),
    peer: i64,
    min_date: u32,
    max_date: u32,
}

/// `total,lid…` newest first; deleted messages never match. The total is only known at the
/// end, so the ids are collected first (at most `limit`).
fn search(
    out: &mut Vec<u8>,
    mb: &Mailbox,
    lexicon: &Lexicon,
    filter: &SearchFilter,
    limit: usize,
    words: &[u8],
) {
    let mut total = 0usize;
    let mut ids: smallvec::SmallVec<[u32; 32]> = smallvec::SmallVec::new();
    let query = lexicon.query(words).unwrap_or_default();
    mb.search.intersect(&query, |lid| {
        let Some(m) = mb.get(lid) else { return true };
        let visible = m.flags & crate::flags::DELETED == 0
            && in_sublist(m.flags, filter.mask.0, filter.mask.1)
            && (filter.peer == 0 || m.peer == filter.peer)
            && m.date >= filter.min_date
            && (filter.max_date == 0 || m.date <= filter.max_date);
        if visible {
            total += 1;
            if total <= limit {
                ids.push(lid);
            }
        }
        true
    });
    number(out, total);
    for lid in ids {
        item(out, lid);
    }
}

/// `bytes` as text, cut to at most `max` bytes at a UTF-8 boundary. Borrows unless the bytes
/// are not valid UTF-8.
fn truncated(bytes: &[u8], max: Option<usize>) -> std::borrow::Cow<'_, str> {
    let text = String::from_utf8_lossy(bytes);
    match max {
        Some(max) if text.len() > max => {
            let mut end = max;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            match text {
                std::borrow::Cow::Borrowed(t) => std::borrow::Cow::Borrowed(&t[..end]),
                std::borrow::Cow::Owned(t) => std::borrow::Cow::Owned(t[..end].to_string()),
            }
        }
        _ => text,
    }
}

/// Appends `"<name>":`.
fn key(out: &mut Vec<u8>, name: &str, first: &mut bool) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

/// Appends a JSON string.
fn string(out: &mut Vec<u8>, text: &str) {
    // NOTE: writing a str into a Vec cannot fail.
    let written = serde_json::to_writer(&mut *out, text);
    debug_assert!(written.is_ok());
}

/// The JSON form of one message, rendered straight into `out`. Keys are in sorted order, the
/// order clients have always seen.
fn render(
    out: &mut Vec<u8>,
    flavour: Flavour,
    mb: &Mailbox,
    lid: u32,
    m: &Message,
    mode_bits: u32,
    max_len: Option<usize>,
) {
    let (kludges, subject, body) = mb.text(m);
    let first = &mut true;
    out.push(b'{');
    if flavour == Flavour::Wall {
        key(out, "author", first);
        signed(out, m.peer);
    }
    key(out, "date", first);
    number(out, m.date);
    if mode_bits & mode::EXTRAS != 0 {
        key(out, "extra", first);
        extras(out, mb, lid);
    }
    key(out, "flags", first);
    number(out, m.flags);
    key(out, "id", first);
    number(out, lid);
    if mode_bits & mode::KLUDGES != 0 {
        key(out, "kludges", first);
        string(out, &String::from_utf8_lossy(kludges));
    }
    match flavour {
        Flavour::Messages => {
            key(out, "peer", first);
            signed(out, m.peer);
            key(out, "peer_msg_id", first);
            number(out, m.peer_lid);
        }
        Flavour::Wall => {
            if let Some((owner, id)) = mb.origins.get(&lid) {
                key(out, "origin", first);
                out.extend_from_slice(b"{\"id\":");
                number(out, *id);
                out.extend_from_slice(b",\"owner\":");
                signed(out, *owner);
                out.push(b'}');
            }
            if m.peer_lid != 0 {
                key(out, "reply_to", first);
                number(out, m.peer_lid);
            }
        }
    }
    if mode_bits & mode::NO_TEXT == 0 {
        key(out, "subject", first);
        string(out, &String::from_utf8_lossy(subject));
        key(out, "text", first);
        string(out, &truncated(body, max_len));
    }
    out.push(b'}');
}

/// `{"<field>":<value>,…}` of a message's extra fields, fields in text order (as JSON object
/// keys always were).
fn extras(out: &mut Vec<u8>, mb: &Mailbox, lid: u32) {
    let mut fields: smallvec::SmallVec<[(u8, i64); 8]> = mb
        .extras
        .range((lid, 0)..=(lid, u8::MAX))
        .map(|((_, k), v)| (*k, *v))
        .collect();
    let text = |k: u8| {
        let mut digits = itoa::Buffer::new();
        let s = digits.format(k);
        let mut key = [0u8; 3];
        key[..s.len()].copy_from_slice(s.as_bytes());
        (key, s.len())
    };
    fields.sort_unstable_by(|a, b| {
        let (ka, la) = text(a.0);
        let (kb, lb) = text(b.0);
        ka[..la].cmp(&kb[..lb])
    });
    out.push(b'{');
    for (i, (field, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        number(out, *field);
        out.extend_from_slice(b"\":");
        signed(out, *value);
    }
    out.push(b'}');
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
        for (index, partition) in snapshot::decode(&bytes, self.flavour, &self.lexicon)? {
            *self.partitions.lock(index) = partition;
        }
        Ok(())
    }

    fn stats(&self) -> Vec<Stat> {
        let (mut mailboxes, mut live, mut text, mut heap) = (0usize, 0u64, 0usize, 0usize);
        for partition in self.partitions.iter() {
            let part = partition.lock();
            mailboxes += part.mailboxes.len();
            for mb in part.mailboxes.values() {
                live += u64::from(mb.live);
                text += mb.text_bytes();
                heap += mb.heap_bytes();
            }
        }
        // NOTE: the stem dictionary is shared by all mailboxes; its share counts per message.
        heap += self.lexicon.heap_bytes();
        let per_message = (heap as u64).checked_div(live).unwrap_or(0);
        let name = self.flavour.name();
        vec![
            (format!("{name}_mailboxes"), mailboxes.to_string()),
            (format!("{name}_messages"), live.to_string()),
            (format!("{name}_text_bytes"), text.to_string()),
            (format!("{name}_heap_bytes"), heap.to_string()),
            (format!("{name}_bytes_per_message"), per_message.to_string()),
        ]
    }
}
