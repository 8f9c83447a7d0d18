//! [`ListsEngine`]: keys, the one commit path, reads and snapshots.
//!
//! Write path: parse the key, check the list is on this shard, lock its partition (every
//! partition for `delete object…`), validate against the locked state, commit ONE record,
//! apply it with the function replay uses. Reads lock the list's partition and render into
//! the connection's buffer, with per-thread working lists.

use std::cell::RefCell;
use std::io::{Read, Write};

use koshka_engine::codec::{put_i64, put_u32, put_u64, put_u8, Reader};
use koshka_engine::commit::{self, Locked, Partitions};
use koshka_engine::{
    ApplyCtx, Cx, Engine, EngineSetup, Error, Outcome, Request, Result, ShardSpec, Stat, StoreMode,
};
use koshka_keys::lists::{
    check_temp_tag, parse_ids, DeleteKey, Filter, GetKey, IncrKey, ListRef, Select, SetKey,
    FIELD_DATE, FIELD_FLAGS, FIELD_VALUE, FLAGS_MAX, ORDER_DATE_ASC, ORDER_DATE_DESC,
    ORDER_ID_DESC, ORDER_VALUE_ASC, ORDER_VALUE_DESC,
};

use crate::records::Record;
use crate::state::{Fields, List, Partition};
use crate::{ENTRIES_PER_LIST_MAX, PARTITIONS};

/// Snapshot magic and version.
const SNAPSHOT_MAGIC: &[u8; 4] = b"KLST";
const SNAPSHOT_VERSION: u32 = 1;

/// Working lists kept between reads up to this many entries.
const SCRATCH_KEEP_MAX: usize = 16_384;

#[derive(Default)]
struct Scratch {
    /// Indexes into a list (selected entries).
    picks: Vec<u32>,
    /// Object ids (a temp or inline list, sorted; list ids of `object_lists`).
    ids: Vec<i32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut s = cell.borrow_mut();
        let r = f(&mut s);
        s.picks.clear();
        if s.picks.capacity() > SCRATCH_KEEP_MAX {
            s.picks = Vec::new();
        }
        s.ids.clear();
        if s.ids.capacity() > SCRATCH_KEEP_MAX {
            s.ids = Vec::new();
        }
        r
    })
}

/// The lists engine. Construct with [`ListsEngine::new`] and host as `Arc<dyn Engine>`.
#[derive(Debug)]
pub struct ListsEngine {
    shard: ShardSpec,
    pub(crate) entries_per_list_max: usize,
    reverse_index: bool,
    partitions: Partitions<Partition>,
}

fn parse_i64(text: &[u8], what: &str) -> Result<i64> {
    let text = text.trim_ascii();
    std::str::from_utf8(text)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            Error::client(format!(
                "{what} must be a signed 64-bit integer, got {:?}",
                String::from_utf8_lossy(text)
            ))
        })
}

fn parse_flags(text: &[u8]) -> Result<u8> {
    let n = parse_i64(text, "flags")?;
    u8::try_from(n).map_err(|_| Error::client(format!("flags {n} outside 0..={FLAGS_MAX}")))
}

/// `flags[,value]`.
fn parse_entry_value(data: &[u8]) -> Result<(u8, i64)> {
    let data = data.trim_ascii();
    match data.iter().position(|&b| b == b',') {
        Some(at) => Ok((
            parse_flags(&data[..at])?,
            parse_i64(&data[at + 1..], "value")?,
        )),
        None => Ok((parse_flags(data)?, 0)),
    }
}

fn push_int(out: &mut Vec<u8>, v: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

impl ListsEngine {
    /// An empty engine holding shard `shard`, without a reverse index (the default).
    #[must_use]
    pub fn new(shard: ShardSpec) -> Self {
        Self::with_reverse_index(shard, false)
    }

    /// An empty engine holding shard `shard`; with `reverse` it keeps an object → list
    /// index, so `object_lists<obj>` and `delete object<obj>` cost a B-tree range instead of
    /// a binary search in every list, for about 12 more bytes per entry.
    #[must_use]
    pub fn with_reverse_index(shard: ShardSpec, reverse: bool) -> Self {
        Self {
            shard,
            entries_per_list_max: ENTRIES_PER_LIST_MAX,
            reverse_index: reverse,
            partitions: Partitions::new(PARTITIONS, || Partition::new(reverse)),
        }
    }

    /// An engine configured by a node's `[engine.lists]` section: `entries_per_list_max`
    /// (a positive integer), `reverse_index` (a boolean, default false).
    ///
    /// # Errors
    /// [`Error::Client`] for an unknown setting or a bad value.
    pub fn from_setup(setup: &EngineSetup) -> Result<Self> {
        let reverse = match setup.settings.get("reverse_index") {
            None => false,
            Some(value) => value
                .as_bool()
                .ok_or_else(|| Error::client("lists: reverse_index must be true or false"))?,
        };
        let mut engine = Self::with_reverse_index(setup.shard, reverse);
        for (name, value) in &setup.settings {
            match name.as_str() {
                "reverse_index" => {}
                "entries_per_list_max" => {
                    engine.entries_per_list_max = value
                        .as_integer()
                        .and_then(|n| usize::try_from(n).ok())
                        .filter(|&n| n > 0)
                        .ok_or_else(|| {
                            Error::client("lists: entries_per_list_max must be a positive integer")
                        })?;
                }
                other => return Err(Error::client(format!("lists: unknown setting {other:?}"))),
            }
        }
        Ok(engine)
    }

    /// The same engine with another per-list entry limit (tests).
    #[must_use]
    pub fn with_entries_per_list_max(mut self, max: usize) -> Self {
        self.entries_per_list_max = max;
        self
    }

    /// The partition of list `id`: ids of one shard share `|id| mod count`, so divide first.
    #[must_use]
    pub fn partition_of(&self, id: i32) -> usize {
        let spread = id.unsigned_abs() / self.shard.count.max(1);
        spread as usize % PARTITIONS
    }

    fn apply_record(&self, record: &Record, locked: &mut Locked<'_, Partition>, time: u32) {
        match *record {
            Record::EntrySet {
                list,
                object,
                flags,
                value,
            } => {
                if let Some(p) = locked.fresh(self.partition_of(list)) {
                    p.upsert(list, object, flags, value, time);
                }
            }
            Record::EntryDel { list, object } => {
                if let Some(p) = locked.fresh(self.partition_of(list)) {
                    p.remove(list, object);
                }
            }
            Record::ListDel { list } => {
                if let Some(p) = locked.fresh(self.partition_of(list)) {
                    p.remove_list(list);
                }
            }
            Record::ObjectDel { object } => {
                for p in locked.fresh_all() {
                    p.remove_object(object);
                }
            }
        }
    }

    fn lock_for(&self, record: &Record) -> Locked<'_, Partition> {
        match record.list() {
            Some(list) => self.partitions.lock_one(self.partition_of(list)),
            None => self.partitions.lock_all(),
        }
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

    /// Upserts after checking the list's size limit.
    fn set_entry(&self, cx: &Cx<'_>, list: i32, object: i32, flags: u8, value: i64) -> Result<()> {
        let mut locked = self.partitions.lock_one(self.partition_of(list));
        let l = locked.only().list(list);
        let len = l.map_or(0, List::len);
        let exists = l.is_some_and(|l| l.find(object).is_some());
        if !exists && len >= self.entries_per_list_max {
            return Err(Error::client(format!(
                "list {list} holds {len} entries, the most one list may hold"
            )));
        }
        let record = Record::EntrySet {
            list,
            object,
            flags,
            value,
        };
        self.commit(cx, &mut locked, &record)
    }

    /// Changes an existing entry with `change`; `None` when it is missing.
    fn update_entry(
        &self,
        cx: &Cx<'_>,
        list: i32,
        object: i32,
        change: impl FnOnce(Fields) -> Result<(u8, i64)>,
    ) -> Result<Option<Fields>> {
        let mut locked = self.partitions.lock_one(self.partition_of(list));
        let Some(old) = locked.only().list(list).and_then(|l| l.get(object)) else {
            return Ok(None);
        };
        let (flags, value) = change(old)?;
        let record = Record::EntrySet {
            list,
            object,
            flags,
            value,
        };
        self.commit(cx, &mut locked, &record)?;
        Ok(Some(Fields {
            value,
            flags,
            date: old.date,
        }))
    }

    fn store(&self, key: &[u8], data: &[u8], cx: &mut Cx<'_>) -> Result<Outcome> {
        let key = SetKey::parse(key)?;
        match key {
            SetKey::Temp { tag } => {
                cx.session.put_temp_ids(&tag, &parse_ids(data)?)?;
                Ok(Outcome::Stored { cas: 0 })
            }
            SetKey::Entry { list, object } => {
                self.shard.check(i64::from(list))?;
                let (flags, value) = parse_entry_value(data)?;
                self.set_entry(cx, list, object, flags, value)?;
                Ok(Outcome::Stored { cas: 0 })
            }
            SetKey::Flags { list, object } => {
                self.shard.check(i64::from(list))?;
                let flags = parse_flags(data)?;
                let done = self.update_entry(cx, list, object, |f| Ok((flags, f.value)))?;
                Ok(done.map_or(Outcome::NotStored, |_| Outcome::Stored { cas: 0 }))
            }
            SetKey::Value { list, object } => {
                self.shard.check(i64::from(list))?;
                let value = parse_i64(data, "value")?;
                let done = self.update_entry(cx, list, object, |f| Ok((f.flags, value)))?;
                Ok(done.map_or(Outcome::NotStored, |_| Outcome::Stored { cas: 0 }))
            }
        }
    }

    fn delete(&self, key: &[u8], cx: &mut Cx<'_>) -> Result<Outcome> {
        let key = DeleteKey::parse(key)?;
        let (record, found) = match key {
            DeleteKey::Entry { list, object } => {
                self.shard.check(i64::from(list))?;
                let record = Record::EntryDel { list, object };
                let mut locked = self.lock_for(&record);
                let found = locked
                    .only()
                    .list(list)
                    .is_some_and(|l| l.find(object).is_some());
                (record, found.then_some(locked))
            }
            DeleteKey::List { list } => {
                self.shard.check(i64::from(list))?;
                let record = Record::ListDel { list };
                let mut locked = self.lock_for(&record);
                let found = locked.only().list(list).is_some();
                (record, found.then_some(locked))
            }
            DeleteKey::Object { object } => {
                let record = Record::ObjectDel { object };
                let locked = self.lock_for(&record);
                let found = locked
                    .indexes()
                    .any(|i| locked.get(i).is_some_and(|p| p.holds_object(object)));
                (record, found.then_some(locked))
            }
        };
        let Some(mut locked) = found else {
            return Ok(Outcome::Miss);
        };
        self.commit(cx, &mut locked, &record)?;
        Ok(Outcome::Deleted)
    }

    fn arith(&self, key: &[u8], incr: bool, delta: u64, cx: &mut Cx<'_>) -> Result<Outcome> {
        let key = IncrKey::parse(key)?;
        self.shard.check(i64::from(key.list))?;
        let done = if key.flags {
            let bits = u8::try_from(delta)
                .map_err(|_| Error::client(format!("flag bits {delta} outside 0..={FLAGS_MAX}")))?;
            self.update_entry(cx, key.list, key.object, |f| {
                let flags = if incr {
                    f.flags | bits
                } else {
                    f.flags & !bits
                };
                Ok((flags, f.value))
            })?
            .map(|f| u64::from(f.flags))
        } else {
            let delta = i64::try_from(delta)
                .map_err(|_| Error::client("invalid numeric delta argument"))?;
            self.update_entry(cx, key.list, key.object, |f| {
                let value = if incr {
                    f.value.checked_add(delta)
                } else {
                    f.value.checked_sub(delta)
                };
                value
                    .map(|v| (f.flags, v))
                    .ok_or_else(|| Error::client("value would overflow 64 bits"))
            })?
            .map(|f| u64::try_from(f.value).unwrap_or(0))
        };
        Ok(done.map_or(Outcome::Miss, |value| Outcome::Number {
            value,
            cas: 0,
            exptime: 0,
        }))
    }

    fn read(&self, key: &[u8], cx: &mut Cx<'_>) -> Result<Outcome> {
        let parsed = GetKey::parse(key)?;
        if let Some(list) = koshka_keys::Route::owners(&parsed).primary() {
            self.shard.check(list)?;
        }
        let found = match parsed {
            GetKey::Entry { list, object }
            | GetKey::Flags { list, object }
            | GetKey::Value { list, object } => {
                let part = self.partitions.lock(self.partition_of(list));
                let fields = part.list(list).and_then(|l| l.get(object));
                cx.reply.value(key, 0, &mut |out| {
                    let Some(f) = fields else { return false };
                    match parsed {
                        GetKey::Flags { .. } => push_int(out, f.flags),
                        GetKey::Value { .. } => push_int(out, f.value),
                        _ => {
                            push_int(out, f.flags);
                            out.push(b',');
                            push_int(out, f.value);
                            out.push(b',');
                            push_int(out, f.date);
                        }
                    }
                    true
                })
            }
            GetKey::Count { list, filter } => {
                let part = self.partitions.lock(self.partition_of(list));
                let count = part.list(list).map_or(0, |l| count(l, filter));
                cx.reply.value(key, 0, &mut |out| {
                    push_int(out, count);
                    true
                })
            }
            GetKey::List(select) => {
                let part = self.partitions.lock(self.partition_of(select.list));
                let list = part.list(select.list);
                with_scratch(|s| {
                    if let Some(list) = list {
                        pick(list, &select, None, s);
                    }
                    cx.reply.value(key, 0, &mut |out| {
                        render(list, &select, &s.picks, out);
                        true
                    })
                })
            }
            GetKey::Intersect {
                select,
                ids,
                subtract,
            } => with_scratch(|s| -> Result<bool> {
                match &ids {
                    ListRef::Inline(ids) => s.ids.extend_from_slice(ids),
                    ListRef::Temp(tag) => {
                        cx.session
                            .temp_ids(&check_temp_tag(tag.as_bytes())?, &mut s.ids)?;
                    }
                }
                s.ids.sort_unstable();
                s.ids.dedup();
                let part = self.partitions.lock(self.partition_of(select.list));
                let list = part.list(select.list);
                if let Some(list) = list {
                    let ids = std::mem::take(&mut s.ids);
                    pick(list, &select, Some((&ids, subtract)), s);
                    s.ids = ids;
                }
                Ok(cx.reply.value(key, 0, &mut |out| {
                    render(list, &select, &s.picks, out);
                    true
                }))
            })?,
            GetKey::ObjectLists {
                object,
                limit,
                offset,
            } => with_scratch(|s| {
                for part in self.partitions.iter() {
                    part.lock().lists_of(object, &mut s.ids);
                }
                s.ids.sort_unstable();
                cx.reply.value(key, 0, &mut |out| {
                    push_int(out, s.ids.len());
                    for id in s.ids.iter().skip(offset as usize).take(limit as usize) {
                        out.push(b',');
                        push_int(out, *id);
                    }
                    true
                })
            }),
        };
        Ok(if found { Outcome::Hit } else { Outcome::Miss })
    }
}

fn count(list: &List, filter: Filter) -> usize {
    if filter == Filter::default() {
        return list.len();
    }
    list.fields()
        .iter()
        .filter(|f| filter.accepts(u32::from(f.flags)))
        .count()
}

/// Fills `s.picks` with the indexes of the selected entries, in the select's order.
/// `other` is a sorted, deduplicated id list to intersect with (or subtract).
fn pick(list: &List, select: &Select, other: Option<(&[i32], bool)>, s: &mut Scratch) {
    let fields = list.fields();
    let keep = |i: usize| select.filter.accepts(u32::from(fields[i].flags));
    let index = |i: usize| u32::try_from(i).unwrap_or(u32::MAX);
    match other {
        None => s
            .picks
            .extend((0..list.len()).filter(|&i| keep(i)).map(index)),
        Some((ids, false)) => s.picks.extend(
            ids.iter()
                .filter_map(|&id| list.find(id))
                .filter(|&i| keep(i))
                .map(index),
        ),
        Some((ids, true)) => {
            let objects = list.objects();
            s.picks.extend(
                (0..list.len())
                    .filter(|&i| keep(i) && ids.binary_search(&objects[i]).is_err())
                    .map(index),
            );
        }
    }
    let order = select.mode & 7;
    // Indexes ascend with the object id, so the index breaks ties by ascending id.
    match order {
        ORDER_ID_DESC => s.picks.reverse(),
        ORDER_DATE_ASC => s
            .picks
            .sort_unstable_by_key(|&i| (fields[i as usize].date, i)),
        ORDER_DATE_DESC => s
            .picks
            .sort_unstable_by_key(|&i| (std::cmp::Reverse(fields[i as usize].date), i)),
        ORDER_VALUE_ASC => s
            .picks
            .sort_unstable_by_key(|&i| (fields[i as usize].value, i)),
        ORDER_VALUE_DESC => s
            .picks
            .sort_unstable_by_key(|&i| (std::cmp::Reverse(fields[i as usize].value), i)),
        _ => {}
    }
}

/// `total,item,…` with the fields the mode asks for.
fn render(list: Option<&List>, select: &Select, picks: &[u32], out: &mut Vec<u8>) {
    push_int(out, picks.len());
    let Some(list) = list else { return };
    let (objects, fields) = (list.objects(), list.fields());
    for &i in picks
        .iter()
        .skip(select.offset as usize)
        .take(select.limit as usize)
    {
        let i = i as usize;
        out.push(b',');
        push_int(out, objects[i]);
        let f = fields[i];
        if select.mode & FIELD_FLAGS != 0 {
            out.push(b',');
            push_int(out, f.flags);
        }
        if select.mode & FIELD_DATE != 0 {
            out.push(b',');
            push_int(out, f.date);
        }
        if select.mode & FIELD_VALUE != 0 {
            out.push(b',');
            push_int(out, f.value);
        }
    }
}

impl Engine for ListsEngine {
    fn name(&self) -> &'static str {
        "lists"
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
            Request::Arith {
                key, incr, delta, ..
            } => self.arith(key, incr, delta, cx),
            _ => Err(Error::NotSupported { engine: "lists" }),
        }
    }

    fn apply(&self, record_type: u16, payload: &[u8], ctx: ApplyCtx) -> Result<()> {
        let record = Record::decode(record_type, payload)?;
        if let Some(list) = record.list() {
            self.shard
                .check(i64::from(list))
                .map_err(|e| Error::Corrupt {
                    what: "lists record",
                    reason: e.to_string(),
                })?;
        }
        let mut locked = self.lock_for(&record);
        commit::replay(&mut locked, &record, ctx, |r, l, t| {
            self.apply_record(r, l, t)
        });
        Ok(())
    }

    fn replay_partition(&self, record_type: u16, payload: &[u8]) -> Option<usize> {
        Record::decode(record_type, payload)
            .ok()?
            .list()
            .map(|list| self.partition_of(list))
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
            let part = part.lock();
            put_u64(&mut buf, part.pos);
            let ids = part.list_ids();
            put_u32(&mut buf, ids.len() as u32);
            for id in ids {
                let Some(list) = part.list(id) else { continue };
                put_u32(&mut buf, id as u32);
                put_u32(&mut buf, list.len() as u32);
                for (object, f) in list.objects().iter().zip(list.fields()) {
                    put_u32(&mut buf, *object as u32);
                    put_u8(&mut buf, f.flags);
                    put_u32(&mut buf, f.date);
                    put_i64(&mut buf, f.value);
                }
            }
            drop(part);
            out.write_all(&buf)?;
        }
        Ok(())
    }

    fn load_snapshot(&self, input: &mut dyn Read) -> Result<()> {
        let corrupt = |reason: String| Error::Corrupt {
            what: "lists snapshot",
            reason,
        };
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        let mut r = Reader::new(&bytes, "lists snapshot");
        if r.bytes(4)? != SNAPSHOT_MAGIC {
            return Err(corrupt("bad magic".into()));
        }
        let version = r.u32()?;
        let partitions = r.u32()?;
        if version != SNAPSHOT_VERSION || partitions as usize != PARTITIONS {
            return Err(corrupt(format!(
                "version {version} with {partitions} partitions"
            )));
        }
        for (index, part) in self.partitions.iter().enumerate() {
            let mut part = part.lock();
            part.pos = r.u64()?;
            let lists = r.u32()?;
            for _ in 0..lists {
                let id = r.u32()? as i32;
                let valid = id != 0
                    && id != i32::MIN
                    && self.partition_of(id) == index
                    && self.shard.check(i64::from(id)).is_ok();
                if !valid {
                    return Err(corrupt(format!("list {id} in partition {index}")));
                }
                let len = r.u32()? as usize;
                if r.remaining() < len * 17 {
                    return Err(corrupt(format!("list {id}: {len} entries truncated")));
                }
                let mut entries = Vec::with_capacity(len);
                for _ in 0..len {
                    let object = r.u32()? as i32;
                    let flags = r.u8()?;
                    let date = r.u32()?;
                    let value = r.i64()?;
                    if object == 0 || object == i32::MIN {
                        return Err(corrupt(format!("list {id}: object {object}")));
                    }
                    entries.push((object, Fields { value, date, flags }));
                }
                if !part.load_list(id, entries.into_iter()) {
                    return Err(corrupt(format!("list {id}: empty, repeated or unsorted")));
                }
            }
        }
        r.finish()
    }

    fn stats(&self) -> Vec<Stat> {
        let (mut lists, mut entries, mut bytes) = (0usize, 0u64, 0usize);
        for part in self.partitions.iter() {
            let part = part.lock();
            lists += part.list_count();
            entries += part.entry_count();
            bytes += part.heap_bytes();
        }
        vec![
            (
                "lists_reverse_index".into(),
                u8::from(self.reverse_index).to_string(),
            ),
            ("lists_count".into(), lists.to_string()),
            ("lists_entries".into(), entries.to_string()),
            ("lists_heap_bytes".into(), bytes.to_string()),
        ]
    }
}
