//! One partition of a shard's items.
//!
//! Items live in slots (`Vec<Item>`), found by `(owner, id)` through a hash map. The
//! partition's [`PostingIndex`] maps each stem id to the ascending slots whose item has it.
//! A removed or re-indexed item's slot dies (its fields stay, its stems are released) and is
//! never reused before the next compaction, so a posting that names a dead slot is simply
//! skipped; a live slot's postings are always exact. Compaction (when a quarter of the slots
//! or of the postings is dead) renumbers the live items and rebuilds the index from their
//! stems. It depends only on the sequence of records applied to the partition, so replay
//! repeats it exactly.

use hashbrown::HashMap;
use koshka_keys::search::{By, Filter, Hit};
use koshka_text::varint::{get_var, put_var};
use koshka_text::{Lexicon, PostingIndex};

/// Dead slots (and stale postings) below which a partition never compacts.
const COMPACT_MIN: usize = 64;

/// One item's fields. 48 bytes.
///
/// ```text
/// owner i32 | id u32 | kind u8 (0 = dead slot) | date u32 | rating u32 | words u32 |
/// hash u64 | stems: LEB128 pairs (stem id − previous stem id, count), ascending stem ids
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Owner (negative: a group).
    pub owner: i32,
    /// Item id.
    pub id: u32,
    /// Type; 0 marks a dead slot.
    pub kind: u8,
    /// Date.
    pub date: u32,
    /// Rating.
    pub rating: u32,
    /// Stemmed words of the text, repeats included (the relevance denominator).
    pub words: u32,
    /// Content hash of the text.
    pub hash: u64,
    stems: Box<[u8]>,
}

/// The map key of an item.
#[must_use]
pub fn item_key(owner: i64, id: u32) -> u64 {
    // NOTE: owners are within ±i32::MAX (the grammar and the record decoder check it).
    #[expect(clippy::cast_possible_truncation)]
    let owner = owner as i32;
    (u64::from(owner.cast_unsigned()) << 32) | u64::from(id)
}

impl Item {
    /// A live item with stems `pairs` (`(stem id, count)`, any order, distinct ids).
    #[must_use]
    pub fn new(
        (owner, id): (i64, u32),
        (kind, date, rating): (u8, u32, u32),
        words: u32,
        hash: u64,
        pairs: &mut [(u32, u32)],
    ) -> Self {
        assert!(kind != 0, "a live item has a type");
        pairs.sort_unstable();
        let mut stems = Vec::with_capacity(pairs.len() * 3);
        let mut previous = 0;
        for &(stem, count) in pairs.iter() {
            put_var(&mut stems, u64::from(stem - previous));
            put_var(&mut stems, u64::from(count));
            previous = stem;
        }
        // NOTE: owners are within ±i32::MAX.
        #[expect(clippy::cast_possible_truncation)]
        let owner = owner as i32;
        Self {
            owner,
            id,
            kind,
            date,
            rating,
            words,
            hash,
            stems: stems.into_boxed_slice(),
        }
    }

    /// Whether the slot holds a live item.
    #[must_use]
    pub fn live(&self) -> bool {
        self.kind != 0
    }

    /// The item's `(stem id, count)` pairs, ascending by stem id.
    pub fn stems(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        let mut at = 0;
        let mut stem = 0u64;
        std::iter::from_fn(move || {
            if at >= self.stems.len() {
                return None;
            }
            let (delta, used) = get_var(&self.stems[at..]);
            at += used;
            let (count, used) = get_var(&self.stems[at..]);
            at += used;
            stem += delta;
            // NOTE: written from u32 values.
            #[expect(clippy::cast_possible_truncation)]
            Some((stem as u32, count as u32))
        })
    }

    /// Relevance to a query of ascending stem ids `query`: the occurrences of query stems
    /// per million stemmed words of the text, with 8 words added to the length so that very
    /// short texts do not win by length alone. Computed from the item alone, so every shard
    /// ranks its items on one scale.
    #[must_use]
    pub fn relevance(&self, query: &[u32]) -> u32 {
        let mut matched = 0u64;
        let mut q = query.iter().peekable();
        for (stem, count) in self.stems() {
            while q.next_if(|&&s| s < stem).is_some() {}
            if q.peek() == Some(&&stem) {
                matched += u64::from(count);
            }
        }
        let score = matched * 1_000_000 / (u64::from(self.words) + 8);
        u32::try_from(score).unwrap_or(u32::MAX)
    }

    /// The value a search ordered `by` ranks this item by.
    #[must_use]
    pub fn value(&self, by: By, query: &[u32]) -> u32 {
        match by {
            By::Rating => self.rating,
            By::Date => self.date,
            By::Relevance => self.relevance(query),
        }
    }

    /// Whether `filter` admits the item.
    #[must_use]
    pub fn admits(&self, filter: &Filter) -> bool {
        filter.kind.is_none_or(|k| k == self.kind)
            && filter.owner.is_none_or(|o| o == i64::from(self.owner))
            && filter
                .dates
                .is_none_or(|(from, to)| (from..=to).contains(&self.date))
    }

    fn heap_bytes(&self) -> usize {
        if self.stems.is_empty() {
            0
        } else {
            self.stems.len() + 16
        }
    }
}

/// A partition of a shard's items; see the module docs.
#[derive(Debug, Default)]
pub struct Partition {
    /// Log position of the last record applied here.
    pub pos: u64,
    items: Vec<Item>,
    slots: HashMap<u64, u32>,
    index: PostingIndex,
    dead: usize,
}

impl koshka_engine::Positioned for Partition {
    fn pos(&self) -> u64 {
        self.pos
    }

    fn set_pos(&mut self, pos: u64) {
        self.pos = pos;
    }
}

impl Partition {
    /// The live item `(owner, id)`.
    #[must_use]
    pub fn get(&self, owner: i64, id: u32) -> Option<&Item> {
        let slot = *self.slots.get(&item_key(owner, id))?;
        Some(&self.items[slot as usize])
    }

    /// The live item `(owner, id)`, mutable.
    pub fn get_mut(&mut self, owner: i64, id: u32) -> Option<&mut Item> {
        let slot = *self.slots.get(&item_key(owner, id))?;
        Some(&mut self.items[slot as usize])
    }

    /// Live items.
    #[must_use]
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when no item is live.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Every live item.
    pub fn items(&self) -> impl Iterator<Item = &Item> {
        self.items.iter().filter(|item| item.live())
    }

    /// Postings held (stale ones included).
    #[must_use]
    pub fn postings(&self) -> usize {
        self.index.len()
    }

    /// Stores `item` (whose stems `lexicon` already holds), replacing a live item of the same
    /// address.
    pub fn insert(&mut self, item: Item, lexicon: &Lexicon) {
        let key = item_key(i64::from(item.owner), item.id);
        if let Some(old) = self.slots.remove(&key) {
            self.kill(old, lexicon);
        }
        let slot = u32::try_from(self.items.len()).unwrap_or(u32::MAX);
        assert!(slot < u32::MAX, "a partition holds fewer than 2^32 slots");
        self.index.add(slot, item.stems().map(|(stem, _)| stem));
        self.items.push(item);
        self.slots.insert(key, slot);
        self.maybe_compact();
    }

    /// Removes the live item `(owner, id)`; false if there is none.
    pub fn remove(&mut self, owner: i64, id: u32, lexicon: &Lexicon) -> bool {
        let Some(slot) = self.slots.remove(&item_key(owner, id)) else {
            return false;
        };
        self.kill(slot, lexicon);
        self.maybe_compact();
        true
    }

    fn kill(&mut self, slot: u32, lexicon: &Lexicon) {
        let item = &mut self.items[slot as usize];
        assert!(item.live(), "slot {slot} killed twice");
        let stems: Vec<u32> = item.stems().map(|(stem, _)| stem).collect();
        self.index.stale(stems.len());
        lexicon.release(stems.into_iter());
        item.kind = 0;
        item.stems = Box::default();
        self.dead += 1;
    }

    fn maybe_compact(&mut self) {
        let slots_dead = self.dead > COMPACT_MIN && self.dead * 4 > self.items.len();
        if slots_dead || self.index.needs_rebuild() {
            self.compact();
        }
    }

    /// Renumbers the live items and rebuilds the index from their stems.
    fn compact(&mut self) {
        self.items.retain(Item::live);
        self.items.shrink_to_fit();
        self.slots.clear();
        let mut postings = Vec::new();
        for (slot, item) in self.items.iter().enumerate() {
            let slot = u32::try_from(slot).unwrap_or(u32::MAX);
            self.slots
                .insert(item_key(i64::from(item.owner), item.id), slot);
            postings.extend(item.stems().map(|(stem, _)| (stem, slot)));
        }
        self.slots.shrink_to_fit();
        self.index = PostingIndex::build(postings);
        self.dead = 0;
    }

    /// Fills an empty partition with `items` (distinct, live, their stems held) at once: one
    /// index build instead of one posting merge per few hundred items. For snapshot loads.
    ///
    /// # Panics
    /// If the partition is not empty.
    pub fn fill(&mut self, items: Vec<Item>) {
        assert!(self.items.is_empty(), "fill an empty partition");
        self.items = items;
        self.compact();
    }

    /// Releases every item's stems from `lexicon` and empties the partition.
    pub fn clear(&mut self, lexicon: &Lexicon) {
        for item in self.items.iter().filter(|i| i.live()) {
            lexicon.release(item.stems().map(|(stem, _)| stem));
        }
        *self = Self::default();
    }

    /// Adds the hits of live items that have every stem of `stems` (ascending; empty: every
    /// item) and pass `filter` to `hits`, valued `by`; returns how many there were. `slots`
    /// is working space (a search reuses it across partitions).
    pub fn gather(
        &self,
        stems: &[u32],
        filter: &Filter,
        by: By,
        hits: &mut Vec<Hit>,
        slots: &mut Vec<u32>,
    ) -> u64 {
        let mut total = 0u64;
        let mut visit = |item: &Item| {
            if item.live() && item.admits(filter) {
                total += 1;
                hits.push(Hit {
                    owner: i64::from(item.owner),
                    id: item.id,
                    value: item.value(by, stems),
                    hash: item.hash,
                });
            }
        };
        if stems.is_empty() {
            self.items.iter().for_each(visit);
        } else {
            self.index.intersect_into(stems, slots);
            for &slot in slots.iter() {
                visit(&self.items[slot as usize]);
            }
        }
        total
    }

    /// Heap bytes: slots, item stems, the map and the posting index (allocator overhead
    /// included as 16 bytes per allocation).
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        self.items.capacity() * std::mem::size_of::<Item>()
            + self.items.iter().map(Item::heap_bytes).sum::<usize>()
            + self.slots.capacity() * (std::mem::size_of::<(u64, u32)>() + 1)
            + self.index.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_48_bytes_and_keep_their_stems() {
        assert_eq!(std::mem::size_of::<Item>(), 48);
        let mut pairs = vec![(900, 1), (5, 3), (70_000, 2)];
        let item = Item::new((-3, 9), (1, 10, 20), 6, 7, &mut pairs);
        assert_eq!(
            item.stems().collect::<Vec<_>>(),
            [(5, 3), (900, 1), (70_000, 2)]
        );
        assert_eq!(item.relevance(&[5, 70_000]), 5 * 1_000_000 / 14);
        assert_eq!(item.relevance(&[6]), 0);
        assert_ne!(item_key(-3, 9), item_key(3, 9));
    }

    #[test]
    fn dead_slots_are_skipped_then_compacted() {
        let lexicon = Lexicon::default();
        let mut part = Partition::default();
        let filter = Filter::default();
        for round in 0..3u32 {
            for id in 1..=200u32 {
                let stems =
                    lexicon.hold_stems(["a", if id % 2 == 0 { "even" } else { "odd" }].into_iter());
                let mut pairs: Vec<(u32, u32)> = stems.iter().map(|&s| (s, 1)).collect();
                part.insert(
                    Item::new((1, id), (1, round, id), 2, u64::from(id), &mut pairs),
                    &lexicon,
                );
            }
        }
        assert_eq!(part.len(), 200);
        let even = lexicon.find_stems(["even"].into_iter()).unwrap();
        let mut hits = Vec::new();
        assert_eq!(
            part.gather(&even, &filter, By::Date, &mut hits, &mut Vec::new()),
            100
        );
        assert!(hits.iter().all(|h| h.value == 2 && h.id % 2 == 0));
        for id in 1..=150 {
            assert!(part.remove(1, id, &lexicon));
        }
        assert!(!part.remove(1, 1, &lexicon));
        hits.clear();
        assert_eq!(
            part.gather(&even, &filter, By::Rating, &mut hits, &mut Vec::new()),
            25
        );
        assert!(part.items.len() < 600, "compacted");
        part.clear(&lexicon);
        assert!(lexicon.is_empty());
    }
}
