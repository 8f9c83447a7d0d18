//! [`SearchEngine`]: requests, the one commit path, searches, snapshots and stats.

use hashbrown::HashSet;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use koshka_engine::codec::{put_bytes32, put_i64, put_u32, put_u64, put_u8, Reader};
use koshka_engine::commit::{self, Locked, Partitions};
use koshka_engine::{
    ApplyCtx, Cx, Engine, Error, Outcome, Request, Result, ShardSpec, Stat, StoreMode,
};
use koshka_keys::search::{Found, Hit, Query, Search, Update};
use koshka_text::{Lexicon, WORD_BYTES_MAX};

use crate::record::Record;
use crate::state::{Item, Partition};
use crate::{content_hash, PARTITIONS};

/// Snapshot magic: "KSRC".
const SNAPSHOT_MAGIC: &[u8; 4] = b"KSRC";
/// Snapshot format version.
const SNAPSHOT_VERSION: u32 = 1;

/// The stems of one text, computed before any lock is taken.
struct Prepared {
    stems: Vec<(String, u32)>,
    words: u32,
}

impl Prepared {
    fn of(text: &[u8]) -> Self {
        let (stems, words) = koshka_text::stem_counts(text);
        Self { stems, words }
    }
}

/// The search engine; see the crate docs.
#[derive(Debug)]
pub struct SearchEngine {
    shard: ShardSpec,
    partitions: Partitions<Partition>,
    lexicon: Lexicon,
    searches: AtomicU64,
}

impl Default for SearchEngine {
    fn default() -> Self {
        Self::new(ShardSpec::default())
    }
}

impl SearchEngine {
    /// An empty engine holding `shard`.
    #[must_use]
    pub fn new(shard: ShardSpec) -> Self {
        Self {
            shard,
            partitions: Partitions::new(PARTITIONS, Partition::default),
            lexicon: Lexicon::default(),
            searches: AtomicU64::new(0),
        }
    }

    fn partition_of(&self, owner: i64) -> usize {
        let spread = owner.unsigned_abs() / u64::from(self.shard.count.max(1));
        // NOTE: the remainder is below PARTITIONS.
        #[expect(clippy::cast_possible_truncation)]
        let index = (spread % PARTITIONS as u64) as usize;
        index
    }

    /// The apply function shared by live updates and replay. `prepared` holds the stems of
    /// a `SetItem`'s text when the live path computed them before locking.
    fn apply(
        &self,
        record: &Record<'_>,
        prepared: Option<Prepared>,
        locked: &mut Locked<'_, Partition>,
    ) {
        let (owner, id) = record.item();
        let Some(part) = locked.fresh(self.partition_of(owner)) else {
            return;
        };
        match *record {
            Record::SetItem {
                kind,
                date,
                rating,
                text,
                ..
            } => {
                let prepared = prepared.unwrap_or_else(|| Prepared::of(text));
                let ids = self
                    .lexicon
                    .hold_stems(prepared.stems.iter().map(|(stem, _)| stem.as_str()));
                let mut pairs: Vec<(u32, u32)> = ids
                    .into_iter()
                    .zip(prepared.stems.iter().map(|&(_, count)| count))
                    .collect();
                let item = Item::new(
                    (owner, id),
                    (kind, date, rating),
                    prepared.words,
                    content_hash(text),
                    &mut pairs,
                );
                part.insert(item, &self.lexicon);
            }
            Record::DeleteItem { .. } => {
                part.remove(owner, id, &self.lexicon);
            }
            Record::SetRate { rating, .. } => {
                if let Some(item) = part.get_mut(owner, id) {
                    item.rating = rating;
                }
            }
        }
    }

    fn commit(
        &self,
        cx: &Cx<'_>,
        locked: &mut Locked<'_, Partition>,
        record: &Record<'_>,
        prepared: Option<Prepared>,
    ) -> Result<()> {
        commit::commit(cx.journal, locked, record, |r, l, _| {
            self.apply(r, prepared, l);
        })?;
        Ok(())
    }

    fn store(&self, key: &[u8], data: &[u8], cx: &Cx<'_>) -> Result<Outcome> {
        match Update::parse_set(key, data)? {
            Update::SetItem {
                owner,
                id,
                kind,
                date,
                rating,
                ..
            } => {
                self.shard.check(owner)?;
                // The text is the value's tail after the tab; borrow it rather than the copy.
                let text = &data[data.iter().position(|&b| b == b'\t').unwrap_or(0) + 1..];
                let prepared = Prepared::of(text);
                let record = Record::SetItem {
                    owner,
                    id,
                    kind,
                    date,
                    rating,
                    text,
                };
                let mut locked = self.partitions.lock_one(self.partition_of(owner));
                self.commit(cx, &mut locked, &record, Some(prepared))?;
                Ok(Outcome::Stored { cas: 0 })
            }
            Update::SetRate { owner, id, rating } => {
                self.shard.check(owner)?;
                let mut locked = self.partitions.lock_one(self.partition_of(owner));
                if locked.only().get(owner, id).is_none() {
                    return Ok(Outcome::NotStored);
                }
                self.commit(
                    cx,
                    &mut locked,
                    &Record::SetRate { owner, id, rating },
                    None,
                )?;
                Ok(Outcome::Stored { cas: 0 })
            }
            Update::DeleteItem { .. } | Update::AddRate { .. } => {
                Err(Error::client("search keys for set are item… and rate…"))
            }
        }
    }

    fn delete(&self, key: &[u8], cx: &Cx<'_>) -> Result<Outcome> {
        let Update::DeleteItem { owner, id } = Update::parse_delete(key)? else {
            return Err(Error::client("search keys for delete are item…"));
        };
        self.shard.check(owner)?;
        let mut locked = self.partitions.lock_one(self.partition_of(owner));
        if locked.only().get(owner, id).is_none() {
            return Ok(Outcome::Miss);
        }
        self.commit(cx, &mut locked, &Record::DeleteItem { owner, id }, None)?;
        Ok(Outcome::Deleted)
    }

    fn add_rate(&self, key: &[u8], delta: i64, cx: &Cx<'_>) -> Result<Outcome> {
        let Update::AddRate { owner, id, delta } = Update::parse_incr(key, delta)? else {
            return Err(Error::client("search keys for incr/decr are rate…"));
        };
        self.shard.check(owner)?;
        let mut locked = self.partitions.lock_one(self.partition_of(owner));
        let Some(item) = locked.only().get(owner, id) else {
            return Ok(Outcome::Miss);
        };
        let rating = (i64::from(item.rating).saturating_add(delta)).clamp(0, i64::from(u32::MAX));
        // NOTE: clamped to the u32 range above.
        let rating = u32::try_from(rating).unwrap_or(u32::MAX);
        self.commit(
            cx,
            &mut locked,
            &Record::SetRate { owner, id, rating },
            None,
        )?;
        Ok(Outcome::Number {
            value: u64::from(rating),
            cas: 0,
            exptime: 0,
        })
    }

    /// Runs a search: every partition's hits (one partition when the search names an
    /// owner), then the window of the ranked, de-duplicated hits.
    ///
    /// # Errors
    /// [`Error::WrongShard`] when the search names an owner of another shard.
    pub fn search(&self, search: &Search) -> Result<Found> {
        self.searches.fetch_add(1, Ordering::Relaxed);
        let Some(stems) = self.lexicon.query(&search.words) else {
            return Ok(Found::default());
        };
        let mut hits = Vec::new();
        let mut slots = Vec::new();
        let mut total = 0;
        let (filter, by) = (&search.filter, search.order.by);
        if let Some(owner) = filter.owner {
            self.shard.check(owner)?;
            let part = self.partitions.lock(self.partition_of(owner));
            total += part.gather(&stems, filter, by, &mut hits, &mut slots);
        } else {
            for part in self.partitions.iter() {
                let part = part.lock();
                total += part.gather(&stems, filter, by, &mut hits, &mut slots);
            }
        }
        Ok(Found {
            total,
            hits: rank(search, hits),
        })
    }

    fn render(&self, query: Query, out: &mut Vec<u8>) -> Result<bool> {
        match query {
            Query::Item { owner, id } => {
                self.shard.check(owner)?;
                let part = self.partitions.lock(self.partition_of(owner));
                let Some(item) = part.get(owner, id) else {
                    return Ok(false);
                };
                let mut number = itoa::Buffer::new();
                for (i, value) in [
                    u64::from(item.kind),
                    u64::from(item.date),
                    u64::from(item.rating),
                    item.hash,
                ]
                .into_iter()
                .enumerate()
                {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(number.format(value).as_bytes());
                }
                Ok(true)
            }
            Query::Search(search) => {
                self.search(&search)?.encode(out);
                Ok(true)
            }
        }
    }

    fn items(&self) -> usize {
        self.partitions.iter().map(|p| p.lock().len()).sum()
    }

    fn load_partition(&self, r: &mut Reader<'_>, index: usize, part: &mut Partition) -> Result<()> {
        part.pos = r.u64()?;
        let count = r.u64()?;
        let mut items = Vec::with_capacity(usize::try_from(count.min(1 << 24)).unwrap_or(0));
        let mut seen = hashbrown::HashSet::with_capacity(items.capacity());
        for _ in 0..count {
            let owner = r.i64()?;
            let id = r.u32()?;
            let kind = r.u8()?;
            let (date, rating, words) = (r.u32()?, r.u32()?, r.u32()?);
            let hash = r.u64()?;
            let stems = r.u32()?;
            let valid = owner != 0
                && owner.abs() <= koshka_keys::search::ID_MAX
                && id != 0
                && (1..=crate::ITEM_TYPE_MAX).contains(&kind)
                && self.partition_of(owner) == index
                && seen.insert(crate::state::item_key(owner, id));
            if !valid {
                return Err(Error::Corrupt {
                    what: "search snapshot",
                    reason: format!("item {owner}_{id} (type {kind}) in partition {index}"),
                });
            }
            let mut texts = Vec::new();
            let mut counts = Vec::new();
            for _ in 0..stems {
                let stem = r.bytes32(WORD_BYTES_MAX * 4)?;
                let stem = std::str::from_utf8(stem).map_err(|_| Error::Corrupt {
                    what: "search snapshot",
                    reason: format!("stem of item {owner}_{id} is not UTF-8"),
                })?;
                texts.push(stem);
                counts.push(r.u32()?);
            }
            let mut sorted = texts.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.len() != texts.len() {
                return Err(Error::Corrupt {
                    what: "search snapshot",
                    reason: format!("item {owner}_{id} repeats a stem"),
                });
            }
            let ids = self.lexicon.hold_stems(texts.into_iter());
            let mut pairs: Vec<(u32, u32)> = ids.into_iter().zip(counts).collect();
            items.push(Item::new(
                (owner, id),
                (kind, date, rating),
                words,
                hash,
                &mut pairs,
            ));
        }
        part.fill(items);
        Ok(())
    }
}

/// The window of `hits`: ranked by the search's order, the first hit of each content hash
/// kept, `offset` skipped, `limit` kept.
fn rank(search: &Search, mut hits: Vec<Hit>) -> Vec<Hit> {
    let window = search.window() as usize;
    if window == 0 {
        return Vec::new();
    }
    let order = search.order;
    // Most searches need a small window of many hits: rank a prefix first (twice the window,
    // for duplicates) and sort everything only when that prefix holds too few distinct texts.
    let mut prefix = (window * 2).max(64);
    loop {
        let whole = prefix >= hits.len();
        if whole {
            hits.sort_unstable_by(|a, b| order.compare(a, b));
        } else {
            hits.select_nth_unstable_by(prefix, |a, b| order.compare(a, b));
            hits[..prefix].sort_unstable_by(|a, b| order.compare(a, b));
        }
        let considered = if whole { hits.len() } else { prefix };
        let mut seen = HashSet::with_capacity(window);
        let mut out = Vec::with_capacity(window);
        for hit in &hits[..considered] {
            if seen.insert(hit.hash) {
                out.push(*hit);
                if out.len() == window {
                    break;
                }
            }
        }
        if out.len() == window || whole {
            return out.split_off(search.offset.min(out.len() as u32) as usize);
        }
        prefix *= 4;
    }
}

impl Engine for SearchEngine {
    fn name(&self) -> &'static str {
        "search"
    }

    fn execute(&self, request: &Request<'_>, cx: &mut Cx<'_>) -> Result<Outcome> {
        match *request {
            Request::Get { key } => {
                let query = Query::parse(key)?;
                let mut failed = None;
                let mut query = Some(query);
                let found = cx.reply.value(key, 0, &mut |out| {
                    let Some(query) = query.take() else {
                        return false;
                    };
                    self.render(query, out).unwrap_or_else(|e| {
                        failed = Some(e);
                        false
                    })
                });
                match failed {
                    Some(e) => Err(e),
                    None if found => Ok(Outcome::Hit),
                    None => Ok(Outcome::Miss),
                }
            }
            Request::Store {
                mode: StoreMode::Set,
                key,
                data,
                ..
            } => self.store(key, data, cx),
            Request::Delete { key, cas: None } => self.delete(key, cx),
            Request::Arith {
                key, incr, delta, ..
            } => {
                let delta = i64::try_from(delta)
                    .map_err(|_| Error::client("invalid numeric delta argument"))?;
                self.add_rate(key, if incr { delta } else { -delta }, cx)
            }
            _ => Err(Error::NotSupported { engine: "search" }),
        }
    }

    fn apply(&self, record_type: u16, payload: &[u8], ctx: ApplyCtx) -> Result<()> {
        let record = Record::decode(record_type, payload)?;
        let mut locked = self.partitions.lock_one(self.partition_of(record.item().0));
        commit::replay(&mut locked, &record, ctx, |r, l, _| self.apply(r, None, l));
        Ok(())
    }

    fn write_snapshot(&self, out: &mut dyn Write) -> Result<()> {
        let mut buf = Vec::new();
        buf.extend_from_slice(SNAPSHOT_MAGIC);
        put_u32(&mut buf, SNAPSHOT_VERSION);
        put_u32(&mut buf, PARTITIONS as u32);
        out.write_all(&buf)?;
        for part in self.partitions.iter() {
            buf.clear();
            let part = part.lock();
            put_u64(&mut buf, part.pos);
            put_u64(&mut buf, part.len() as u64);
            for item in part.items() {
                put_i64(&mut buf, i64::from(item.owner));
                put_u32(&mut buf, item.id);
                put_u8(&mut buf, item.kind);
                put_u32(&mut buf, item.date);
                put_u32(&mut buf, item.rating);
                put_u32(&mut buf, item.words);
                put_u64(&mut buf, item.hash);
                // Stems are written sorted by their text: ids depend on the dictionary's
                // history, the text does not, so equal states write equal snapshots.
                let pairs: Vec<(u32, u32)> = item.stems().collect();
                let mut stems: Vec<(String, u32)> = Vec::with_capacity(pairs.len());
                self.lexicon
                    .with_stems(pairs.iter().map(|&(stem, _)| stem), |stem, text| {
                        let count = pairs.iter().find(|p| p.0 == stem).map_or(0, |p| p.1);
                        stems.push((text.to_string(), count));
                    });
                assert_eq!(
                    stems.len(),
                    pairs.len(),
                    "every stem of a live item is held"
                );
                stems.sort_unstable();
                put_u32(&mut buf, u32::try_from(stems.len()).unwrap_or(u32::MAX));
                for (text, count) in &stems {
                    put_bytes32(&mut buf, text.as_bytes());
                    put_u32(&mut buf, *count);
                }
            }
            drop(part);
            out.write_all(&buf)?;
        }
        Ok(())
    }

    fn load_snapshot(&self, input: &mut dyn Read) -> Result<()> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        let mut r = Reader::new(&bytes, "search snapshot");
        let corrupt = |reason: String| Error::Corrupt {
            what: "search snapshot",
            reason,
        };
        if r.bytes(4)? != SNAPSHOT_MAGIC {
            return Err(corrupt("bad magic".into()));
        }
        let version = r.u32()?;
        if version != SNAPSHOT_VERSION {
            return Err(corrupt(format!("unknown version {version}")));
        }
        let partitions = r.u32()?;
        if partitions as usize != PARTITIONS {
            return Err(corrupt(format!(
                "{partitions} partitions, expected {PARTITIONS}"
            )));
        }
        for (index, part) in self.partitions.iter().enumerate() {
            let mut part = part.lock();
            part.clear(&self.lexicon);
            self.load_partition(&mut r, index, &mut part)?;
        }
        r.finish()
    }

    fn stats(&self) -> Vec<Stat> {
        let (mut items, mut postings, mut bytes) = (0usize, 0usize, 0usize);
        for part in self.partitions.iter() {
            let part = part.lock();
            items += part.len();
            postings += part.postings();
            bytes += part.heap_bytes();
        }
        bytes += self.lexicon.heap_bytes() + std::mem::size_of::<Self>();
        let per_item = bytes.checked_div(items).unwrap_or(0);
        vec![
            ("search_items".into(), items.to_string()),
            ("search_stems".into(), self.lexicon.len().to_string()),
            ("search_postings".into(), postings.to_string()),
            ("search_bytes".into(), bytes.to_string()),
            ("search_bytes_per_item".into(), per_item.to_string()),
            (
                "search_searches".into(),
                self.searches.load(Ordering::Relaxed).to_string(),
            ),
        ]
    }

    fn reset_stats(&self) {
        self.searches.store(0, Ordering::Relaxed);
    }
}

impl SearchEngine {
    /// Live items held (for tests and tools).
    #[must_use]
    pub fn len(&self) -> usize {
        self.items()
    }

    /// True when no item is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.items() == 0
    }
}
