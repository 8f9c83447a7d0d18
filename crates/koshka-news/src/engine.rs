//! [`NewsEngine`]: keys, the one commit path, reads and snapshots.

use std::cell::RefCell;
use std::io::{Read, Write};

use koshka_engine::codec::{put_u32, put_u64, put_u8, Reader};
use koshka_engine::commit::{self, Locked, Partitions};
use koshka_engine::{
    ApplyCtx, Cx, Engine, EngineSetup, Error, Outcome, Request, Result, ShardSpec, Stat, StoreMode,
};
use koshka_keys::lists::{check_temp_tag, parse_ids, ListRef};
use koshka_keys::news::{DeleteKey, GetKey, RawQuery, SetKey, TYPE_MAX};

use crate::records::{Record, What};
use crate::state::{Author, Event, Inbox, Limits, Notification, Partition};
use crate::{
    DAY, EVENTS_PER_AUTHOR_MAX, HIDDEN_USERS_MAX, NOTIFICATIONS_PER_USER_MAX, PARTITIONS,
    RETENTION_DAYS_DEFAULT, RETENTION_DAYS_MAX,
};

const SNAPSHOT_MAGIC: &[u8; 4] = b"KNWS";
const SNAPSHOT_VERSION: u32 = 1;
const SCRATCH_KEEP_MAX: usize = 16_384;

/// The engine's settings (`[engine.news]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Retention window in days (`retention_days`, `1..=3650`, default 30).
    pub retention_days: u32,
    /// Events kept per author (`events_per_author_max`, default 5000).
    pub events_per_author_max: usize,
    /// Notifications kept per recipient (`notifications_per_user_max`, default 1000).
    pub notifications_per_user_max: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            retention_days: RETENTION_DAYS_DEFAULT,
            events_per_author_max: EVENTS_PER_AUTHOR_MAX,
            notifications_per_user_max: NOTIFICATIONS_PER_USER_MAX,
        }
    }
}

impl Settings {
    fn limits(self) -> Limits {
        Limits {
            window: self.retention_days * DAY,
            events_max: self.events_per_author_max,
            notifications_max: self.notifications_per_user_max,
        }
    }
}

/// A raw query hit: `(date, author, id)` and the event.
type Hit = (u32, i32, u32, What);

#[derive(Default)]
struct Scratch {
    ids: Vec<i32>,
    hits: Vec<Hit>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut s = cell.borrow_mut();
        let r = f(&mut s);
        s.ids.clear();
        s.hits.clear();
        if s.ids.capacity() > SCRATCH_KEEP_MAX {
            s.ids = Vec::new();
        }
        if s.hits.capacity() > SCRATCH_KEEP_MAX {
            s.hits = Vec::new();
        }
        r
    })
}

/// The news engine. Construct with [`NewsEngine::new`] and host as `Arc<dyn Engine>`.
#[derive(Debug)]
pub struct NewsEngine {
    shard: ShardSpec,
    settings: Settings,
    partitions: Partitions<Partition>,
}

fn push_int(out: &mut Vec<u8>, v: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Parses `n` comma-separated 32-bit integers; the first is a type `1..=31`.
fn parse_what(data: &[u8], fields: usize, spelled: &str) -> Result<[i32; 6]> {
    let text = data.trim_ascii();
    let bad = || {
        Error::client(format!(
            "value must be {spelled} (32-bit integers), got {:?}",
            String::from_utf8_lossy(text)
        ))
    };
    let mut out = [0i32; 6];
    let mut n = 0;
    for part in text.split(|&b| b == b',') {
        if n == fields {
            return Err(bad());
        }
        out[n] = std::str::from_utf8(part.trim_ascii())
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        n += 1;
    }
    if n != fields {
        return Err(bad());
    }
    if out[0] < 1 || out[0] > TYPE_MAX as i32 {
        return Err(Error::client(format!(
            "type {} outside 1..={TYPE_MAX}",
            out[0]
        )));
    }
    Ok(out)
}

fn parse_mask(data: &[u8]) -> Result<u32> {
    let text = data.trim_ascii();
    std::str::from_utf8(text)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            Error::client(format!(
                "mask must be a number 0..=4294967295, got {:?}",
                String::from_utf8_lossy(text)
            ))
        })
}

fn kind_bit(kind: u8) -> u32 {
    1u32 << (u32::from(kind) & 31)
}

impl NewsEngine {
    /// An empty engine holding shard `shard`, with default settings.
    #[must_use]
    pub fn new(shard: ShardSpec) -> Self {
        Self::with_settings(shard, Settings::default())
    }

    /// An empty engine with `settings`.
    #[must_use]
    pub fn with_settings(shard: ShardSpec, settings: Settings) -> Self {
        Self {
            shard,
            settings,
            partitions: Partitions::new(PARTITIONS, Partition::default),
        }
    }

    /// An engine configured by a node's `[engine.news]` section.
    ///
    /// # Errors
    /// [`Error::Client`] for an unknown setting or a bad value.
    pub fn from_setup(setup: &EngineSetup) -> Result<Self> {
        let mut settings = Settings::default();
        for (name, value) in &setup.settings {
            let n = value
                .as_integer()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n > 0)
                .ok_or_else(|| Error::client(format!("news: {name} must be a positive integer")))?;
            match name.as_str() {
                "retention_days" => {
                    settings.retention_days = u32::try_from(n)
                        .ok()
                        .filter(|&d| d <= RETENTION_DAYS_MAX)
                        .ok_or_else(|| {
                            Error::client(format!(
                                "news: retention_days must be 1..={RETENTION_DAYS_MAX}"
                            ))
                        })?;
                }
                "events_per_author_max" => settings.events_per_author_max = n,
                "notifications_per_user_max" => settings.notifications_per_user_max = n,
                other => return Err(Error::client(format!("news: unknown setting {other:?}"))),
            }
        }
        Ok(Self::with_settings(setup.shard, settings))
    }

    /// The engine's settings.
    #[must_use]
    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// The partition of author or recipient `id`.
    #[must_use]
    pub fn partition_of(&self, id: i32) -> usize {
        (id.unsigned_abs() / self.shard.count.max(1)) as usize % PARTITIONS
    }

    fn apply_record(&self, record: &Record, locked: &mut Locked<'_, Partition>, time: u32) {
        let Some(p) = locked.fresh(self.partition_of(record.owner())) else {
            return;
        };
        let limits = self.settings.limits();
        match *record {
            Record::EventAdd { author, what } => p.add_event(author, what, time, limits),
            Record::AuthorDel { author } => {
                p.authors.remove(&author);
            }
            Record::MaskSet { author, mask } => p.set_mask(author, mask),
            Record::NotifyAdd { user, what } => p.add_notification(user, what, time, limits),
            Record::NotifyHide { user, id, show } => {
                p.hide(user, id, show);
            }
            Record::NotifyUserHide { user, from, show } => {
                p.hide_user(user, from, show);
            }
            Record::NotifyClear { user } => {
                p.inboxes.remove(&user);
            }
        }
    }

    fn lock(&self, id: i32) -> Locked<'_, Partition> {
        self.partitions.lock_one(self.partition_of(id))
    }

    fn commit(
        &self,
        cx: &Cx<'_>,
        locked: &mut Locked<'_, Partition>,
        record: &Record,
    ) -> Result<()> {
        commit::commit(cx.journal, locked, record, |r, l, t| {
            self.apply_record(r, l, t)
        })?;
        Ok(())
    }

    /// Commits `record` if `changes` says the locked state would change.
    fn commit_if(
        &self,
        cx: &Cx<'_>,
        record: &Record,
        changes: impl FnOnce(&Partition) -> Result<bool>,
    ) -> Result<Outcome> {
        let mut locked = self.lock(record.owner());
        if !changes(locked.only())? {
            return Ok(Outcome::Miss);
        }
        self.commit(cx, &mut locked, record)?;
        Ok(Outcome::Deleted)
    }

    fn store(&self, key: &[u8], data: &[u8], cx: &mut Cx<'_>) -> Result<Outcome> {
        let record = match SetKey::parse(key)? {
            SetKey::Temp { tag } => {
                cx.session.put_temp_ids(&tag, &parse_ids(data)?)?;
                return Ok(Outcome::Stored { cas: 0 });
            }
            SetKey::Update { author } => {
                let v = parse_what(data, 6, "type,user,group,owner,place,item")?;
                Record::EventAdd {
                    author,
                    what: What {
                        kind: v[0] as u8,
                        user: v[1],
                        group: v[2],
                        owner: v[3],
                        place: v[4],
                        item: v[5],
                    },
                }
            }
            SetKey::Mask { author } => Record::MaskSet {
                author,
                mask: parse_mask(data)? | 1,
            },
            SetKey::Notify { user } => {
                let v = parse_what(data, 5, "type,user,owner,place,item")?;
                Record::NotifyAdd {
                    user,
                    what: What {
                        kind: v[0] as u8,
                        user: v[1],
                        group: 0,
                        owner: v[2],
                        place: v[3],
                        item: v[4],
                    },
                }
            }
        };
        self.shard.check(i64::from(record.owner()))?;
        let mut locked = self.lock(record.owner());
        self.commit(cx, &mut locked, &record)?;
        Ok(Outcome::Stored { cas: 0 })
    }

    fn delete(&self, key: &[u8], cx: &mut Cx<'_>) -> Result<Outcome> {
        let key = DeleteKey::parse(key)?;
        match key {
            DeleteKey::Updates { author } => {
                self.shard.check(i64::from(author))?;
                self.commit_if(cx, &Record::AuthorDel { author }, |p| {
                    Ok(p.authors.contains_key(&author))
                })
            }
            DeleteKey::Notifications { user } => {
                self.shard.check(i64::from(user))?;
                self.commit_if(cx, &Record::NotifyClear { user }, |p| {
                    Ok(p.inboxes.contains_key(&user))
                })
            }
            DeleteKey::Notify { user, id, show } => {
                self.shard.check(i64::from(user))?;
                // Only notifications within the window (an expired one may already be gone).
                let cutoff = self.cutoff(cx.now);
                self.commit_if(cx, &Record::NotifyHide { user, id, show }, |p| {
                    Ok(p.inboxes
                        .get(&user)
                        .and_then(|i| i.items.iter().find(|n| n.id == id))
                        .is_some_and(|n| n.hidden == show && n.date >= cutoff))
                })
            }
            DeleteKey::NotifyUser { user, from, show } => {
                self.shard.check(i64::from(user))?;
                self.commit_if(cx, &Record::NotifyUserHide { user, from, show }, |p| {
                    let hidden = p.inboxes.get(&user).map_or(&[][..], |i| &i.hidden_users);
                    let is_hidden = hidden.binary_search(&from).is_ok();
                    if !show && !is_hidden && hidden.len() >= HIDDEN_USERS_MAX {
                        return Err(Error::client(format!(
                            "user {user} already hides {HIDDEN_USERS_MAX} senders"
                        )));
                    }
                    Ok(is_hidden == show)
                })
            }
        }
    }

    fn cutoff(&self, now: u32) -> u32 {
        now.saturating_sub(self.settings.limits().window)
    }

    fn read(&self, key: &[u8], cx: &mut Cx<'_>) -> Result<Outcome> {
        let parsed = GetKey::parse(key)?;
        let found = match parsed {
            GetKey::Mask { author } => {
                self.shard.check(i64::from(author))?;
                let part = self.partitions.lock(self.partition_of(author));
                let mask = part.authors.get(&author).map_or(1, |a| a.mask);
                cx.reply.value(key, 0, &mut |out| {
                    push_int(out, mask);
                    true
                })
            }
            GetKey::Raw(query) => {
                let cutoff = self.cutoff(cx.now);
                with_scratch(|s| -> Result<bool> {
                    match &query.authors {
                        ListRef::Inline(ids) => s.ids.extend_from_slice(ids),
                        ListRef::Temp(tag) => cx
                            .session
                            .temp_ids(&check_temp_tag(tag.as_bytes())?, &mut s.ids)?,
                    }
                    s.ids.sort_unstable();
                    s.ids.dedup();
                    for &author in &s.ids {
                        if self.shard.check(i64::from(author)).is_err() {
                            continue;
                        }
                        let part = self.partitions.lock(self.partition_of(author));
                        if let Some(a) = part.authors.get(&author) {
                            raw_hits(a, author, &query, cutoff, &mut s.hits);
                        }
                    }
                    s.hits
                        .sort_unstable_by_key(|h| std::cmp::Reverse((h.0, h.1, h.2)));
                    s.hits.truncate(query.limit as usize);
                    Ok(cx.reply.value(key, 0, &mut |out| {
                        render_raw(&s.hits, out);
                        true
                    }))
                })?
            }
            GetKey::Notify {
                user,
                types,
                grouping,
                limit,
            } => {
                self.shard.check(i64::from(user))?;
                let cutoff = self.cutoff(cx.now);
                let part = self.partitions.lock(self.partition_of(user));
                let inbox = part.inboxes.get(&user);
                cx.reply.value(key, 0, &mut |out| {
                    match inbox {
                        Some(inbox) => {
                            let visible = visible(inbox, types, cutoff);
                            render_notifications(visible, grouping, limit as usize, out);
                        }
                        None => out.extend_from_slice(b"[]"),
                    }
                    true
                })
            }
            GetKey::NotifyCount { user } => {
                self.shard.check(i64::from(user))?;
                let cutoff = self.cutoff(cx.now);
                let part = self.partitions.lock(self.partition_of(user));
                let count = part
                    .inboxes
                    .get(&user)
                    .map_or(0, |i| visible(i, u32::MAX, cutoff).count());
                cx.reply.value(key, 0, &mut |out| {
                    push_int(out, count);
                    true
                })
            }
        };
        Ok(if found { Outcome::Hit } else { Outcome::Miss })
    }
}

/// Appends the author's events the query selects, newest first, at most `limit`.
fn raw_hits(a: &Author, author: i32, q: &RawQuery, cutoff: u32, out: &mut Vec<Hit>) {
    let from = q.from.max(cutoff);
    // Events ascending by (date, id): skip past everything newer than the bound.
    let end = a.events.partition_point(|e| match q.before {
        None => e.date <= q.to,
        Some((b_author, b_id)) => (e.date, author, e.id) < (q.to, b_author, b_id),
    });
    let mut taken = 0;
    for e in a.events[..end].iter().rev() {
        if e.date < from || taken == q.limit {
            break;
        }
        let bit = kind_bit(e.what.kind);
        if q.types & bit == 0 || a.mask & bit != 0 {
            continue;
        }
        out.push((e.date, author, e.id, e.what));
        taken += 1;
    }
}

/// `n,date,author,id,type,user,group,owner,place,item,…`.
fn render_raw(hits: &[Hit], out: &mut Vec<u8>) {
    push_int(out, hits.len());
    for &(date, author, id, w) in hits {
        for v in [i64::from(date), i64::from(author), i64::from(id)] {
            out.push(b',');
            push_int(out, v);
        }
        out.push(b',');
        push_int(out, w.kind);
        for v in [w.user, w.group, w.owner, w.place, w.item] {
            out.push(b',');
            push_int(out, v);
        }
    }
}

/// The visible notifications of `inbox`, newest first.
fn visible(inbox: &Inbox, types: u32, cutoff: u32) -> impl Iterator<Item = &Notification> {
    inbox.items.iter().rev().filter(move |n| {
        !n.hidden
            && n.date >= cutoff
            && types & kind_bit(n.what.kind) != 0
            && inbox.hidden_users.binary_search(&n.what.user).is_err()
    })
}

fn json_field(out: &mut Vec<u8>, name: &str, v: impl itoa::Integer) {
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    push_int(out, v);
}

/// One group of notifications: same type, owner, place and day.
struct Group {
    kind: u8,
    owner: i32,
    place: i32,
    day: u32,
    /// Newest date.
    date: u32,
    /// Oldest id (stable while newer ones arrive).
    id: u32,
    count: u32,
    users: Vec<i32>,
    items: Vec<i32>,
}

fn render_notifications<'a>(
    visible: impl Iterator<Item = &'a Notification>,
    grouping: u32,
    limit: usize,
    out: &mut Vec<u8>,
) {
    out.push(b'[');
    if grouping == 0 {
        for (i, n) in visible.take(limit).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'{');
            json_field(out, "id", n.id);
            out.push(b',');
            json_field(out, "type", n.what.kind);
            out.push(b',');
            json_field(out, "date", n.date);
            for (name, v) in [
                ("user", n.what.user),
                ("owner", n.what.owner),
                ("place", n.what.place),
                ("item", n.what.item),
            ] {
                out.push(b',');
                json_field(out, name, v);
            }
            out.push(b'}');
        }
        out.push(b']');
        return;
    }
    let mut groups: Vec<Group> = Vec::new();
    for n in visible {
        let day = n.date / DAY;
        let w = n.what;
        let found = groups
            .iter()
            .position(|g| (g.kind, g.owner, g.place, g.day) == (w.kind, w.owner, w.place, day));
        let at = match found {
            Some(at) => at,
            None if groups.len() < limit => {
                groups.push(Group {
                    kind: w.kind,
                    owner: w.owner,
                    place: w.place,
                    day,
                    date: n.date,
                    id: n.id,
                    count: 0,
                    users: Vec::new(),
                    items: Vec::new(),
                });
                groups.len() - 1
            }
            None => continue,
        };
        let g = &mut groups[at];
        g.count += 1;
        g.id = g.id.min(n.id);
        if !g.users.contains(&w.user) {
            g.users.push(w.user);
        }
        if !g.items.contains(&w.item) {
            g.items.push(w.item);
        }
    }
    for (i, g) in groups.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'{');
        json_field(out, "id", g.id);
        out.push(b',');
        json_field(out, "type", g.kind);
        out.push(b',');
        json_field(out, "owner", g.owner);
        out.push(b',');
        json_field(out, "place", g.place);
        out.push(b',');
        json_field(out, "date", g.date);
        out.push(b',');
        json_field(out, "count", g.count);
        for (name, values) in [("users", &g.users), ("items", &g.items)] {
            out.push(b',');
            json_field(out, &format!("{name}_total"), values.len());
            out.extend_from_slice(format!(",\"{name}\":[").as_bytes());
            for (j, v) in values.iter().take(grouping as usize).enumerate() {
                if j > 0 {
                    out.push(b',');
                }
                push_int(out, *v);
            }
            out.push(b']');
        }
        out.push(b'}');
    }
    out.push(b']');
}

fn put_i32(out: &mut Vec<u8>, v: i32) {
    put_u32(out, v as u32);
}

fn put_what(out: &mut Vec<u8>, w: &What, group: bool) {
    put_u8(out, w.kind);
    put_i32(out, w.user);
    if group {
        put_i32(out, w.group);
    }
    for v in [w.owner, w.place, w.item] {
        put_i32(out, v);
    }
}

fn read_what(r: &mut Reader<'_>, group: bool) -> Result<What> {
    let kind = r.u8()?;
    if kind == 0 || u32::from(kind) > TYPE_MAX {
        return Err(Error::Corrupt {
            what: "news snapshot",
            reason: format!("type {kind}"),
        });
    }
    let mut i = || -> Result<i32> { Ok(r.u32()? as i32) };
    Ok(What {
        kind,
        user: i()?,
        group: if group { i()? } else { 0 },
        owner: i()?,
        place: i()?,
        item: i()?,
    })
}

impl Engine for NewsEngine {
    fn name(&self) -> &'static str {
        "news"
    }

    fn execute(&self, request: &Request<'_>, cx: &mut Cx<'_>) -> Result<Outcome> {
        match *request {
            Request::Get { key } => self.read(key, cx),
            Request::Store {
                mode: StoreMode::Set,
                key,
                data,
                ..
            } => self.store(key, data, cx),
            Request::Delete { key, cas: None } => self.delete(key, cx),
            _ => Err(Error::NotSupported { engine: "news" }),
        }
    }

    fn apply(&self, record_type: u16, payload: &[u8], ctx: ApplyCtx) -> Result<()> {
        let record = Record::decode(record_type, payload)?;
        self.shard
            .check(i64::from(record.owner()))
            .map_err(|e| Error::Corrupt {
                what: "news record",
                reason: e.to_string(),
            })?;
        let mut locked = self.lock(record.owner());
        commit::replay(&mut locked, &record, ctx, |r, l, t| {
            self.apply_record(r, l, t)
        });
        Ok(())
    }

    fn replay_partition(&self, record_type: u16, payload: &[u8]) -> Option<usize> {
        Record::decode(record_type, payload)
            .ok()
            .map(|r| self.partition_of(r.owner()))
    }

    fn write_snapshot(&self, out: &mut dyn Write) -> Result<()> {
        let mut head = Vec::new();
        head.extend_from_slice(SNAPSHOT_MAGIC);
        put_u32(&mut head, SNAPSHOT_VERSION);
        put_u32(&mut head, PARTITIONS as u32);
        out.write_all(&head)?;
        let mut buf = Vec::new();
        for part in self.partitions.iter() {
            buf.clear();
            let p = part.lock();
            put_u64(&mut buf, p.pos);
            put_i32(&mut buf, p.sweep_author);
            put_i32(&mut buf, p.sweep_inbox);
            put_u32(&mut buf, p.authors.len() as u32);
            for (id, a) in &p.authors {
                put_i32(&mut buf, *id);
                put_u32(&mut buf, a.mask);
                put_u32(&mut buf, a.next_id);
                put_u32(&mut buf, a.events.len() as u32);
                for e in &a.events {
                    put_u32(&mut buf, e.date);
                    put_u32(&mut buf, e.id);
                    put_what(&mut buf, &e.what, true);
                }
            }
            put_u32(&mut buf, p.inboxes.len() as u32);
            for (id, inbox) in &p.inboxes {
                put_i32(&mut buf, *id);
                put_u32(&mut buf, inbox.next_id);
                put_u32(&mut buf, inbox.hidden_users.len() as u32);
                for u in &inbox.hidden_users {
                    put_i32(&mut buf, *u);
                }
                put_u32(&mut buf, inbox.items.len() as u32);
                for n in &inbox.items {
                    put_u32(&mut buf, n.date);
                    put_u32(&mut buf, n.id);
                    put_u8(&mut buf, u8::from(n.hidden));
                    put_what(&mut buf, &n.what, false);
                }
            }
            drop(p);
            out.write_all(&buf)?;
        }
        Ok(())
    }

    fn load_snapshot(&self, input: &mut dyn Read) -> Result<()> {
        let corrupt = |reason: String| Error::Corrupt {
            what: "news snapshot",
            reason,
        };
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        let mut r = Reader::new(&bytes, "news snapshot");
        if r.bytes(4)? != SNAPSHOT_MAGIC {
            return Err(corrupt("bad magic".into()));
        }
        let (version, partitions) = (r.u32()?, r.u32()?);
        if version != SNAPSHOT_VERSION || partitions as usize != PARTITIONS {
            return Err(corrupt(format!(
                "version {version}, {partitions} partitions"
            )));
        }
        for (index, part) in self.partitions.iter().enumerate() {
            let mut p = part.lock();
            p.pos = r.u64()?;
            p.sweep_author = r.u32()? as i32;
            p.sweep_inbox = r.u32()? as i32;
            let owner = |id: i32| -> Result<i32> {
                let ok = id != 0
                    && id != i32::MIN
                    && self.partition_of(id) == index
                    && self.shard.check(i64::from(id)).is_ok();
                if ok {
                    Ok(id)
                } else {
                    Err(corrupt(format!("id {id} in partition {index}")))
                }
            };
            for _ in 0..r.u32()? {
                let id = owner(r.u32()? as i32)?;
                let mut a = Author {
                    mask: r.u32()? | 1,
                    next_id: r.u32()?,
                    events: Vec::new(),
                };
                let n = r.u32()? as usize;
                if r.remaining() < n * 29 {
                    return Err(corrupt(format!("author {id}: {n} events truncated")));
                }
                for _ in 0..n {
                    let (date, eid) = (r.u32()?, r.u32()?);
                    let e = Event {
                        date,
                        id: eid,
                        what: read_what(&mut r, true)?,
                    };
                    if a.events
                        .last()
                        .is_some_and(|l| (l.date, l.id) >= (date, eid))
                    {
                        return Err(corrupt(format!("author {id}: events out of order")));
                    }
                    a.events.push(e);
                }
                if p.authors.insert(id, a).is_some() {
                    return Err(corrupt(format!("author {id} twice")));
                }
            }
            for _ in 0..r.u32()? {
                let id = owner(r.u32()? as i32)?;
                let mut inbox = Inbox {
                    next_id: r.u32()?,
                    ..Inbox::default()
                };
                let hidden = r.u32()? as usize;
                if r.remaining() < hidden * 4 {
                    return Err(corrupt(format!("inbox {id}: truncated")));
                }
                for _ in 0..hidden {
                    inbox.hidden_users.push(r.u32()? as i32);
                }
                if !inbox.hidden_users.is_sorted_by(|a, b| a < b) {
                    return Err(corrupt(format!("inbox {id}: hidden users out of order")));
                }
                let n = r.u32()? as usize;
                if r.remaining() < n * 26 {
                    return Err(corrupt(format!("inbox {id}: {n} notifications truncated")));
                }
                for _ in 0..n {
                    let (date, nid, hidden) = (r.u32()?, r.u32()?, r.u8()? != 0);
                    let item = Notification {
                        date,
                        id: nid,
                        hidden,
                        what: read_what(&mut r, false)?,
                    };
                    if inbox
                        .items
                        .last()
                        .is_some_and(|l| (l.date, l.id) >= (date, nid))
                    {
                        return Err(corrupt(format!("inbox {id}: out of order")));
                    }
                    inbox.items.push(item);
                }
                if p.inboxes.insert(id, inbox).is_some() {
                    return Err(corrupt(format!("inbox {id} twice")));
                }
            }
        }
        r.finish()
    }

    fn stats(&self) -> Vec<Stat> {
        let (mut authors, mut events, mut inboxes, mut notes, mut bytes) = (0, 0, 0, 0, 0);
        for part in self.partitions.iter() {
            let p = part.lock();
            authors += p.authors.len();
            events += p.authors.values().map(|a| a.events.len()).sum::<usize>();
            inboxes += p.inboxes.len();
            notes += p.inboxes.values().map(|i| i.items.len()).sum::<usize>();
            bytes += p.heap_bytes();
        }
        vec![
            ("news_authors".into(), authors.to_string()),
            ("news_events".into(), events.to_string()),
            ("news_inboxes".into(), inboxes.to_string()),
            ("news_notifications".into(), notes.to_string()),
            ("news_heap_bytes".into(), bytes.to_string()),
        ]
    }
}
