//! [`MessagesEngine`]: the [`Engine`] implementation gluing keys, records and state.

use std::fmt::Write as _;

use koshka_engine::{
    ApplyCtx, Engine, Error, Journal, Result, Session, ShardSpec, Stat, StoreOutcome, Value,
};
use koshka_keys::messages::{mode, Query, Update};
use koshka_keys::Slice;
use parking_lot::{Mutex, MutexGuard};
use serde_json::{json, Map};

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
    partitions: Box<[Mutex<Partition>]>,
    /// Stem ids shared by every mailbox's search index.
    lexicon: Lexicon,
}

/// The partitions an update holds, locked in index order.
struct Locked<'a> {
    guards: Vec<(usize, MutexGuard<'a, Partition>)>,
}

impl Locked<'_> {
    fn part(&mut self, index: usize) -> &mut Partition {
        let at = self
            .guards
            .iter()
            .position(|(i, _)| *i == index)
            .unwrap_or(0);
        &mut self.guards[at].1
    }
}

/// What an update reports back: `None` = the target does not exist.
type Outcome = Option<i64>;

impl MessagesEngine {
    /// An empty engine of `flavour` holding shard `shard`.
    #[must_use]
    pub fn new(flavour: Flavour, shard: ShardSpec) -> Self {
        let partitions = (0..PARTITIONS)
            .map(|_| Mutex::new(Partition::default()))
            .collect();
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

    fn lock(&self, owners: (i64, Option<i64>)) -> Locked<'_> {
        let a = self.partition_of(owners.0);
        let mut indexes = vec![a];
        if let Some(b) = owners.1.map(|o| self.partition_of(o)) {
            if b != a {
                indexes.push(b);
            }
        }
        indexes.sort_unstable();
        Locked {
            guards: indexes
                .into_iter()
                .map(|i| (i, self.partitions[i].lock()))
                .collect(),
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

    /// Applies `record` to the locked partitions, skipping each partition already at or past
    /// `ctx.pos` (the fuzzy-snapshot contract).
    fn apply_locked(&self, locked: &mut Locked<'_>, record: &Record, ctx: ApplyCtx) -> Result<()> {
        let (first, second) = record.owners();
        let first_index = self.partition_of(first);
        let apply_first = locked.part(first_index).pos < ctx.pos;
        let second_index = second.map(|o| self.partition_of(o));
        let apply_second = second_index.is_some_and(|i| locked.part(i).pos < ctx.pos);
        let flavour = self.flavour;
        let corrupt = |e: String| Error::corrupt_record(e);
        let lexicon = &self.lexicon;
        let terms = |text: &Text| lexicon.terms(&[&text.subject, &text.body]);
        match record {
            Record::Add {
                owner,
                lid,
                peer,
                peer_lid,
                flags,
                text,
            } => {
                if apply_first {
                    let terms = terms(text);
                    let mb = mailbox(locked.part(first_index), *owner, flavour);
                    mb.add(*lid, *peer, *peer_lid, *flags, text, ctx.time, &terms)
                        .map_err(corrupt)?;
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
                let terms = if apply_first || apply_second {
                    terms(text)
                } else {
                    Vec::new()
                };
                if apply_first {
                    let mb = mailbox(locked.part(first_index), *from, flavour);
                    mb.add(*from_lid, *to, *to_lid, *from_flags, text, ctx.time, &terms)
                        .map_err(corrupt)?;
                }
                if let (true, Some(index)) = (apply_second, second_index) {
                    let mb = mailbox(locked.part(index), *to, flavour);
                    mb.add(*to_lid, *from, *from_lid, *to_flags, text, ctx.time, &terms)
                        .map_err(corrupt)?;
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
                if apply_first {
                    let terms = terms(text);
                    let mb = mailbox(locked.part(first_index), *owner, flavour);
                    mb.add(*lid, *author, 0, *flags, text, ctx.time, &terms)
                        .map_err(corrupt)?;
                    mb.origins.insert(*lid, (*orig_owner, *orig_id));
                }
                if let (true, Some(index)) = (apply_second, second_index) {
                    if let Some(mb) = locked.part(index).mailboxes.get_mut(orig_owner) {
                        if let Some(m) = mb.get(*orig_id).copied() {
                            let ev = (event::FLAGS_ADDED, i64::from(WALL_COPIED));
                            mb.set_flags(*orig_id, m.flags | WALL_COPIED, ev);
                        }
                    }
                }
            }
            _ => {
                if apply_first {
                    if let Some(mb) = locked.part(first_index).mailboxes.get_mut(&first) {
                        apply_single(mb, record, lexicon);
                    }
                }
            }
        }
        if apply_first {
            locked.part(first_index).pos = ctx.pos;
        }
        if let (true, Some(index)) = (apply_second, second_index) {
            locked.part(index).pos = ctx.pos;
        }
        Ok(())
    }

    /// Validates `update` against the locked state and builds its record; `Ok(None)` when
    /// the message or mailbox it names does not exist.
    fn plan(&self, locked: &mut Locked<'_>, update: &Update) -> Result<Option<Record>> {
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
                let lid = next_lid(locked.part(self.partition_of(*owner)), *owner, text)?;
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
                let from_lid = next_lid(locked.part(self.partition_of(*from)), *from, text)?;
                let to_lid = next_lid(locked.part(self.partition_of(*to)), *to, text)?;
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
                let part = locked.part(self.partition_of(*owner));
                if *parent != 0
                    && part
                        .mailboxes
                        .get(owner)
                        .and_then(|m| m.get(*parent))
                        .is_none()
                {
                    return Ok(None);
                }
                let lid = next_lid(part, *owner, text)?;
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
                let lid = next_lid(locked.part(self.partition_of(*owner)), *owner, text)?;
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
                let part = locked.part(self.partition_of(*orig_owner));
                let Some(orig) = part.mailboxes.get(orig_owner) else {
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
                let lid = next_lid(locked.part(self.partition_of(*owner)), *owner, &text)?;
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
                let part = locked.part(self.partition_of(owner));
                let Some(mb) = part.mailboxes.get(&owner) else {
                    return Ok(None);
                };
                return plan_single(mb, update, flavour);
            }
        };
        Ok(Some(record))
    }

    /// Runs one update: check, plan, log, apply, answer.
    fn execute(
        &self,
        update: &Update,
        session: &mut Session,
        journal: &dyn Journal,
    ) -> Result<Outcome> {
        self.check_flavour(update)?;
        let owners = update.owners();
        self.check_owners(owners)?;
        let mut locked = self.lock(owners);
        let Some(record) = self.plan(&mut locked, update)? else {
            return Ok(None);
        };
        let (kind, payload) = record.encode();
        let appended = journal.append(kind, &payload)?;
        let ctx = ApplyCtx {
            pos: appended.pos,
            time: appended.time,
        };
        self.apply_locked(&mut locked, &record, ctx)?;
        let outcome = match (&record, update) {
            (Record::Add { owner, lid, .. } | Record::Repost { owner, lid, .. }, _) => {
                remember_id(session, *owner, update_tag(update), *lid)?;
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
                remember_id(session, *to, update_tag(update), *to_lid)?;
                remember_id(session, *from, update_tag(update), *from_lid)?;
                i64::from(*from_lid)
            }
            (Record::Flags { owner, lid, .. }, _) => {
                let part = locked.part(self.partition_of(*owner));
                let flags = part
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
                let part = locked.part(self.partition_of(*owner));
                part.mailboxes
                    .get(owner)
                    .map_or(0, |m| m.extra(*lid, *field))
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

    /// Answers one read.
    fn query(&self, query: &Query, session: &Session) -> Result<Option<Vec<u8>>> {
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
        if let Query::SublistTypes = query {
            let list: Vec<String> = self
                .flavour
                .sublists()
                .iter()
                .map(|(a, x)| format!("{a}:{x}"))
                .collect();
            return Ok(Some(list.join(",").into_bytes()));
        }
        let Some(owner) = query.owner() else {
            return Ok(None);
        };
        self.shard.check(owner)?;
        if let Query::NewId { owner, tag } = query {
            return Ok(session.temp(&id_tag(*owner, tag)).map(<[u8]>::to_vec));
        }
        if let Query::Sublist { and, xor, .. } | Query::SublistPos { and, xor, .. } = query {
            self.sublist_index(*and, *xor)?;
        }
        let part = self.partitions[self.partition_of(owner)].lock();
        let Some(mb) = part.mailboxes.get(&owner) else {
            return Ok(empty_answer(query));
        };
        Ok(self.query_mailbox(mb, query))
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

    fn query_mailbox(&self, mb: &Mailbox, query: &Query) -> Option<Vec<u8>> {
        let flavour = self.flavour;
        match query {
            Query::Message {
                lid, mode, max_len, ..
            } => {
                let m = mb.get(*lid)?;
                Some(
                    render(flavour, mb, *lid, m, *mode, *max_len)
                        .to_string()
                        .into_bytes(),
                )
            }
            Query::Flags { lid, .. } => Some(mb.get(*lid)?.flags.to_string().into_bytes()),
            Query::Extra { lid, field, .. } => {
                mb.get(*lid)?;
                Some(mb.extra(*lid, *field).to_string().into_bytes())
            }
            Query::Sublist {
                and, xor, slice, ..
            } => {
                let index = self.sublist_index(*and, *xor).ok()?;
                Some(page(&mb.sublists[index], *slice))
            }
            Query::SublistPos { and, xor, lid, .. } => {
                let index = self.sublist_index(*and, *xor).ok()?;
                position(&mb.sublists[index], *lid)
            }
            Query::PeerList { peer, slice, .. } => Some(page(
                mb.peers.get(peer).map_or(&[][..], |c| &*c.lids),
                *slice,
            )),
            Query::PeerListPos { peer, lid, .. } => position(&mb.peers.get(peer)?.lids, *lid),
            Query::Replies { post, slice, .. } => {
                Some(page(mb.replies.get(post).map_or(&[][..], |l| l), *slice))
            }
            Query::Dialogs { slice, .. } => Some(dialogs(mb, *slice)),
            Query::Unread {
                peer: Some(peer), ..
            } => Some(
                mb.peers
                    .get(peer)
                    .map_or(0, |c| c.unread)
                    .to_string()
                    .into_bytes(),
            ),
            Query::Unread { peer: None, .. } => {
                let total: u64 = mb.peers.values().map(|c| u64::from(c.unread)).sum();
                Some(total.to_string().into_bytes())
            }
            Query::Timestamp { .. } => Some(mb.history.ts.to_string().into_bytes()),
            Query::History { ts, limit, .. } => Some(history(mb, *ts, *limit)),
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
                Some(search(mb, &self.lexicon, &filter, *limit, words))
            }
            Query::Status { .. } => {
                let index = self
                    .sublist_index(WALL_STATUS | crate::flags::DELETED, WALL_STATUS)
                    .ok()?;
                let lid = *mb.sublists[index].last()?;
                let m = mb.get(lid)?;
                Some(
                    render(flavour, mb, lid, m, 0, None)
                        .to_string()
                        .into_bytes(),
                )
            }
            Query::Statuses { slice, .. } => {
                let index = self
                    .sublist_index(WALL_STATUS | crate::flags::DELETED, WALL_STATUS)
                    .ok()?;
                let list = &mb.sublists[index];
                let items: Vec<serde_json::Value> = slice
                    .resolve(list.len(), PAGE_SIZE_MAX)
                    .into_iter()
                    .filter_map(|i| {
                        let lid = list[i];
                        mb.get(lid).map(|m| render(flavour, mb, lid, m, 0, None))
                    })
                    .collect();
                Some(
                    json!({"total": list.len(), "items": items})
                        .to_string()
                        .into_bytes(),
                )
            }
            Query::NewId { .. } | Query::SublistTypes => None,
        }
    }

    fn set_or_get(
        &self,
        update: Update,
        session: &mut Session,
        journal: &dyn Journal,
    ) -> Result<Outcome> {
        self.execute(&update, session, journal)
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

fn remember_id(session: &mut Session, owner: i64, tag: &[u8], lid: u32) -> Result<()> {
    session.put_temp(&id_tag(owner, tag), lid.to_string().into_bytes())
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
fn empty_answer(query: &Query) -> Option<Vec<u8>> {
    match query {
        Query::Sublist { .. }
        | Query::PeerList { .. }
        | Query::Dialogs { .. }
        | Query::Replies { .. }
        | Query::Unread { .. }
        | Query::Timestamp { .. }
        | Query::Search { .. } => Some(b"0".to_vec()),
        Query::History { ts: 0, .. } => Some(b"0".to_vec()),
        Query::History { .. } => Some(b"resync,0".to_vec()),
        Query::Statuses { .. } => Some(br#"{"total":0,"items":[]}"#.to_vec()),
        _ => None,
    }
}

/// `total,lid,lid,…` for a slice of an ascending list.
fn page(list: &[u32], slice: Slice) -> Vec<u8> {
    let mut out = list.len().to_string();
    for i in slice.resolve(list.len(), PAGE_SIZE_MAX) {
        let _ = write!(out, ",{}", list[i]);
    }
    out.into_bytes()
}

/// The 1-based position of `lid` in an ascending list.
fn position(list: &[u32], lid: u32) -> Option<Vec<u8>> {
    list.binary_search(&lid)
        .ok()
        .map(|i| (i + 1).to_string().into_bytes())
}

/// `total,(lid,peer,unread)…` of the dialogs list (position 1 = the oldest dialog).
fn dialogs(mb: &Mailbox, slice: Slice) -> Vec<u8> {
    let total = mb.dialogs.len();
    let mut out = total.to_string();
    let positions = slice.resolve(total, PAGE_SIZE_MAX);
    let (Some(&a), Some(&b)) = (positions.first(), positions.last()) else {
        return out.into_bytes();
    };
    let (lo, hi) = (a.min(b), a.max(b));
    let mut items: Vec<(u32, i64)> = mb
        .dialogs
        .iter()
        .skip(lo)
        .take(hi - lo + 1)
        .map(|(l, p)| (*l, *p))
        .collect();
    if a > b {
        items.reverse();
    }
    for (lid, peer) in items {
        let unread = mb.peers.get(&peer).map_or(0, |c| c.unread);
        let _ = write!(out, ",{lid},{peer},{unread}");
    }
    out.into_bytes()
}

/// `new_ts,(kind,lid,value)…` or `resync,<ts>`.
fn history(mb: &Mailbox, ts: u64, limit: usize) -> Vec<u8> {
    match mb.history.since(ts, limit) {
        None => format!("resync,{}", mb.history.ts).into_bytes(),
        Some((new_ts, events)) => {
            let mut out = new_ts.to_string();
            for e in events {
                let _ = write!(out, ",{},{},{}", e.kind, e.lid, e.value);
            }
            out.into_bytes()
        }
    }
}

struct SearchFilter {
    mask: (u32, u32),
    peer: i64,
    min_date: u32,
    max_date: u32,
}

/// `total,lid…` newest first; deleted messages never match.
fn search(
    mb: &Mailbox,
    lexicon: &Lexicon,
    filter: &SearchFilter,
    limit: usize,
    words: &[u8],
) -> Vec<u8> {
    let mut total = 0usize;
    let mut ids = String::new();
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
                let _ = write!(ids, ",{lid}");
            }
        }
        true
    });
    format!("{total}{ids}").into_bytes()
}

/// Cuts `bytes` to at most `max` bytes at a UTF-8 boundary.
fn truncate(bytes: &[u8], max: Option<usize>) -> String {
    let text = String::from_utf8_lossy(bytes);
    match max {
        Some(max) if text.len() > max => {
            let mut end = max;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text[..end].to_string()
        }
        _ => text.into_owned(),
    }
}

/// The JSON form of one message.
fn render(
    flavour: Flavour,
    mb: &Mailbox,
    lid: u32,
    m: &Message,
    mode_bits: u32,
    max_len: Option<usize>,
) -> serde_json::Value {
    let mut obj = Map::new();
    obj.insert("id".into(), json!(lid));
    match flavour {
        Flavour::Messages => {
            obj.insert("peer".into(), json!(m.peer));
            obj.insert("peer_msg_id".into(), json!(m.peer_lid));
        }
        Flavour::Wall => {
            obj.insert("author".into(), json!(m.peer));
            if m.peer_lid != 0 {
                obj.insert("reply_to".into(), json!(m.peer_lid));
            }
            if let Some((owner, id)) = mb.origins.get(&lid) {
                obj.insert("origin".into(), json!({"owner": owner, "id": id}));
            }
        }
    }
    obj.insert("date".into(), json!(m.date));
    obj.insert("flags".into(), json!(m.flags));
    let (kludges, subject, body) = mb.text(m);
    if mode_bits & mode::NO_TEXT == 0 {
        obj.insert("subject".into(), json!(String::from_utf8_lossy(subject)));
        obj.insert("text".into(), json!(truncate(body, max_len)));
    }
    if mode_bits & mode::KLUDGES != 0 {
        obj.insert("kludges".into(), json!(String::from_utf8_lossy(kludges)));
    }
    if mode_bits & mode::EXTRAS != 0 {
        let extras: Map<String, serde_json::Value> = mb
            .extras
            .range((lid, 0)..=(lid, u8::MAX))
            .map(|((_, k), v)| (k.to_string(), json!(v)))
            .collect();
        obj.insert("extra".into(), serde_json::Value::Object(extras));
    }
    serde_json::Value::Object(obj)
}

impl Engine for MessagesEngine {
    fn name(&self) -> &'static str {
        self.flavour.name()
    }

    fn get(&self, key: &[u8], session: &mut Session) -> Result<Option<Value>> {
        let query = Query::parse(key)?;
        Ok(self.query(&query, session)?.map(Value::text))
    }

    fn set(
        &self,
        key: &[u8],
        _flags: u32,
        value: &[u8],
        session: &mut Session,
        journal: &dyn Journal,
    ) -> Result<StoreOutcome> {
        let update = Update::parse_set(key, value)?;
        Ok(match self.set_or_get(update, session, journal)? {
            Some(_) => StoreOutcome::Stored,
            None => StoreOutcome::NotFound,
        })
    }

    fn delete(&self, key: &[u8], session: &mut Session, journal: &dyn Journal) -> Result<bool> {
        let update = Update::parse_delete(key)?;
        Ok(self.execute(&update, session, journal)?.is_some())
    }

    fn incr(
        &self,
        key: &[u8],
        delta: i64,
        session: &mut Session,
        journal: &dyn Journal,
    ) -> Result<Option<u64>> {
        let update = Update::parse_incr(key, delta)?;
        // NOTE: memcached replies are unsigned; a negative extra field reads back as 0 here
        // and exactly through `get extra…`.
        Ok(self
            .execute(&update, session, journal)?
            .map(|v| u64::try_from(v).unwrap_or(0)))
    }

    fn apply(&self, record_type: u16, payload: &[u8], ctx: ApplyCtx) -> Result<()> {
        let record = Record::decode(record_type, payload)?;
        let mut locked = self.lock(record.owners());
        self.apply_locked(&mut locked, &record, ctx)
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
            *self.partitions[index].lock() = partition;
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
