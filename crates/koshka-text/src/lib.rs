//! koshka-text: the one tokeniser and stemmer of koshka, and the word indexes built on it,
//! shared by the messages engine (per-mailbox search) and the search engine (global search).
//!
//! Words are split by Unicode word boundaries (UAX #29), lower-cased, `ё` folded to `е`, and
//! stemmed with the Russian stemmer when they contain Cyrillic letters, the English one
//! otherwise (Snowball stemmers of the `rust-stemmers` crate, wrapped here once).
//!
//! # Layout
//! * [`stems`], [`for_each_stem`] — the tokeniser;
//! * [`Lexicon`]: each distinct stem gets one `u32` id, shared by every holder and counted:
//!   a stem is held once per stored text (a message copy, a search item) that has it, and
//!   forgotten (its id reused) when the last such holder goes, so the dictionary shrinks with
//!   the data. Ids are in memory only.
//! * [`PostingIndex`]: an inverted index, stem → ascending document ids, delta-encoded
//!   variable-length integers in one byte array with a skip table, plus a small sorted tail
//!   of recent postings (fed in batches from a few unsorted newest ones) merged in when it
//!   grows; [`PostingIndex::intersect_into`] intersects the lists of several stems without
//!   decoding the longer ones into memory. Removed and edited documents leave stale
//!   postings behind, which the owner filters out (the messages engine checks a hit against
//!   the message's own stem ids; the search engine never reuses a document id before a
//!   rebuild); the index asks to be rebuilt once a quarter of it is stale.
//! * [`intersect`] — the intersection of ascending id lists, newest first;
//! * [`varint`] — LEB128 integers.
//!
//! # What this crate is not
//! It keeps no texts and knows no engine: which documents exist, which ids are stale and what
//! a query's answer looks like are its users' business. It does no I/O.

use std::sync::OnceLock;

use parking_lot::Mutex;
use rust_stemmers::{Algorithm, Stemmer};
use unicode_segmentation::UnicodeSegmentation;

pub mod varint;

use varint::{get_var, put_var};

/// Longest indexed word in bytes; longer tokens are not indexed (and are ignored in queries).
pub const WORD_BYTES_MAX: usize = 64;

struct Stemmers {
    russian: Stemmer,
    english: Stemmer,
}

fn stemmers() -> &'static Stemmers {
    static STEMMERS: OnceLock<Stemmers> = OnceLock::new();
    STEMMERS.get_or_init(|| Stemmers {
        russian: Stemmer::create(Algorithm::Russian),
        english: Stemmer::create(Algorithm::English),
    })
}

/// Calls `visit` with the normalised stem of every word of `text` (repeats included).
/// Invalid UTF-8 is decoded lossily; tokens longer than [`WORD_BYTES_MAX`] are skipped.
pub fn for_each_stem(text: &[u8], mut visit: impl FnMut(&str)) {
    let text = String::from_utf8_lossy(text);
    let s = stemmers();
    let mut lower = String::new();
    for word in text.unicode_words() {
        if word.len() > WORD_BYTES_MAX {
            continue;
        }
        lower.clear();
        lower.extend(word.chars().flat_map(char::to_lowercase).map(fold));
        let cyrillic = lower
            .chars()
            .any(|c| ('\u{0400}'..='\u{04FF}').contains(&c));
        let stem = if cyrillic {
            s.russian.stem(&lower)
        } else {
            s.english.stem(&lower)
        };
        if !stem.is_empty() {
            visit(&stem);
        }
    }
}

/// Splits `text` into normalised stems (deduplicated, in first-seen order). Invalid UTF-8 is
/// decoded lossily; tokens longer than [`WORD_BYTES_MAX`] are skipped.
#[must_use]
pub fn stems(text: &[u8]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for_each_stem(text, |stem| {
        if !out.iter().any(|s| s == stem) {
            out.push(stem.to_string());
        }
    });
    out
}

/// The distinct stems of `text` with how often each occurs, in first-seen order, and the
/// number of stemmed words (repeats included). Invalid UTF-8 is decoded lossily; tokens longer
/// than [`WORD_BYTES_MAX`] are skipped. The search engine's relevance counts these.
#[must_use]
pub fn stem_counts(text: &[u8]) -> (Vec<(String, u32)>, u32) {
    let mut out: Vec<(String, u32)> = Vec::new();
    let mut seen: hashbrown::HashMap<String, usize> = hashbrown::HashMap::new();
    let mut words = 0u32;
    for_each_stem(text, |stem| {
        words = words.saturating_add(1);
        if let Some(&at) = seen.get(stem) {
            out[at].1 = out[at].1.saturating_add(1);
        } else {
            seen.insert(stem.to_string(), out.len());
            out.push((stem.to_string(), 1));
        }
    });
    (out, words)
}

fn fold(c: char) -> char {
    if c == 'ё' {
        'е'
    } else {
        c
    }
}

/// One stem of the [`Lexicon`]: its text and how many stored copies hold it (0 = a free id).
#[derive(Debug, Default)]
struct Entry {
    stem: Box<str>,
    holders: u32,
}

#[derive(Debug, Default)]
struct Dictionary {
    /// Ids of the live entries, hashed by their stem.
    table: hashbrown::HashTable<u32>,
    entries: Vec<Entry>,
    /// Ids of free entries, for reuse.
    free: Vec<u32>,
    /// Bytes of the stems' own allocations.
    stem_bytes: usize,
    hasher: hashbrown::DefaultHashBuilder,
}

impl Dictionary {
    fn hash(&self, stem: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(stem)
    }

    fn find(&self, stem: &str) -> Option<u32> {
        let hash = self.hash(stem);
        self.table
            .find(hash, |&id| &*self.entries[id as usize].stem == stem)
            .copied()
    }

    /// The id of `stem`, interning it (with no holders yet) if new.
    fn intern(&mut self, stem: &str) -> u32 {
        if let Some(id) = self.find(stem) {
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.entries.push(Entry::default());
                u32::try_from(self.entries.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.entries[id as usize] = Entry {
            stem: stem.into(),
            holders: 0,
        };
        self.stem_bytes += stem.len();
        let hash = self.hash(stem);
        let Self {
            table,
            entries,
            hasher,
            ..
        } = self;
        table.insert_unique(hash, id, |&other| {
            use std::hash::BuildHasher;
            hasher.hash_one(&*entries[other as usize].stem)
        });
        id
    }

    fn forget(&mut self, id: u32) {
        let stem = std::mem::take(&mut self.entries[id as usize].stem);
        let hash = self.hash(&stem);
        if let Ok(found) = self.table.find_entry(hash, |&other| other == id) {
            found.remove();
        }
        self.stem_bytes -= stem.len();
        self.free.push(id);
    }
}

/// The engine-wide stem dictionary; see the module docs.
#[derive(Debug, Default)]
pub struct Lexicon {
    dictionary: Mutex<Dictionary>,
}

/// Stems of one text, gathered before the dictionary is locked.
#[derive(Debug, Default)]
struct Stems {
    text: String,
    ends: smallvec::SmallVec<[u32; 48]>,
}

impl Stems {
    fn of(parts: &[&[u8]]) -> Self {
        let mut stems = Self::default();
        for part in parts {
            for_each_stem(part, |stem| {
                stems.text.push_str(stem);
                stems
                    .ends
                    .push(u32::try_from(stems.text.len()).unwrap_or(u32::MAX));
            });
        }
        stems
    }

    fn iter(&self) -> impl Iterator<Item = &str> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let stem = &self.text[start..end as usize];
            start = end as usize;
            stem
        })
    }
}

impl Lexicon {
    /// The ids of the stems of `parts` (subject, body), ascending, no repeats; each is held
    /// `holders` more times (once per copy that will store the text).
    #[must_use]
    pub fn hold_text(&self, parts: &[&[u8]], holders: u32) -> Vec<u32> {
        let stems = Stems::of(parts);
        let mut dictionary = self.dictionary.lock();
        let mut ids: Vec<u32> = stems.iter().map(|stem| dictionary.intern(stem)).collect();
        ids.sort_unstable();
        ids.dedup();
        for &id in &ids {
            dictionary.entries[id as usize].holders += holders;
        }
        ids
    }

    /// Holds the existing ids `ids` `holders` more times (a copy that shares a stored text).
    pub fn hold(&self, ids: impl Iterator<Item = u32>, holders: u32) {
        let mut dictionary = self.dictionary.lock();
        for id in ids {
            let entry = &mut dictionary.entries[id as usize];
            assert!(entry.holders > 0, "stem {id} is not held");
            entry.holders += holders;
        }
    }

    /// Lets go of the ids `ids` once (a copy was removed or edited); a stem nobody holds any
    /// more is forgotten and its id reused.
    ///
    /// # Panics
    /// If an id is not held (a holder was released twice).
    pub fn release(&self, ids: impl Iterator<Item = u32>) {
        let mut dictionary = self.dictionary.lock();
        for id in ids {
            let entry = &mut dictionary.entries[id as usize];
            assert!(entry.holders > 0, "stem {id} released more often than held");
            entry.holders -= 1;
            if entry.holders == 0 {
                dictionary.forget(id);
            }
        }
    }

    /// The ids of the stems of a query, ascending, deduplicated; `None` when a stem is not in
    /// the dictionary (nothing can match). Never interns.
    #[must_use]
    pub fn query(&self, words: &[u8]) -> Option<smallvec::SmallVec<[u32; 16]>> {
        let stems = Stems::of(&[words]);
        let dictionary = self.dictionary.lock();
        let mut out = smallvec::SmallVec::new();
        for stem in stems.iter() {
            out.push(dictionary.find(stem)?);
        }
        out.sort_unstable();
        out.dedup();
        Some(out)
    }

    /// Holds each of `stems` (already stemmed, distinct) once more, interning new ones
    /// verbatim; their ids in the same order. For texts whose stems were computed before the
    /// dictionary was locked, and for snapshots that store stems rather than texts.
    pub fn hold_stems<'s>(&self, stems: impl Iterator<Item = &'s str>) -> Vec<u32> {
        let mut dictionary = self.dictionary.lock();
        stems
            .map(|stem| {
                let id = dictionary.intern(stem);
                dictionary.entries[id as usize].holders += 1;
                id
            })
            .collect()
    }

    /// The ids of the already-stemmed `stems`, in order; `None` when one is not in the
    /// dictionary. Never interns.
    #[must_use]
    pub fn find_stems<'s>(
        &self,
        stems: impl Iterator<Item = &'s str>,
    ) -> Option<smallvec::SmallVec<[u32; 16]>> {
        let dictionary = self.dictionary.lock();
        stems.map(|stem| dictionary.find(stem)).collect()
    }

    /// Calls `visit` with the text of each held stem of `ids` (in order), under one lock;
    /// unknown or free ids are skipped. For snapshots.
    pub fn with_stems(&self, ids: impl Iterator<Item = u32>, mut visit: impl FnMut(u32, &str)) {
        let dictionary = self.dictionary.lock();
        for id in ids {
            if let Some(entry) = dictionary.entries.get(id as usize) {
                if entry.holders > 0 {
                    visit(id, &entry.stem);
                }
            }
        }
    }

    /// Forgets everything (before a snapshot is loaded into an empty engine).
    pub fn clear(&self) {
        *self.dictionary.lock() = Dictionary::default();
    }

    /// Distinct stems held.
    #[must_use]
    pub fn len(&self) -> usize {
        let dictionary = self.dictionary.lock();
        dictionary.entries.len() - dictionary.free.len()
    }

    /// True when no stem is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many copies hold stem `id` (0 = free or unknown); for invariant checks.
    #[must_use]
    pub fn holders(&self, id: u32) -> u32 {
        let dictionary = self.dictionary.lock();
        dictionary.entries.get(id as usize).map_or(0, |e| e.holders)
    }

    /// Ids ever allocated (live and free); for invariant checks.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.dictionary.lock().entries.len()
    }

    /// Heap bytes: the table, the entries, the free list and the stems (each with 16 bytes
    /// of allocator overhead).
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        let d = self.dictionary.lock();
        let live = d.entries.len() - d.free.len();
        d.table.capacity() * 5
            + d.entries.capacity() * std::mem::size_of::<Entry>()
            + d.free.capacity() * 4
            + d.stem_bytes
            + live * 16
    }
}

/// Every [`SKIP`]-th stem of a [`PostingIndex`] starts a block: its id is stored whole and
/// the skip table points at it.
const SKIP: usize = 16;

/// A stem also starts a block when the block before it already holds this many bytes, so a
/// lookup never walks over a long run of a common stem to reach a rare one after it (with
/// short runs, as in most mailboxes, blocks are cut by [`SKIP`] alone).
const BLOCK_BYTES: usize = 256;

/// Newest postings a [`PostingIndex`] keeps unsorted before sorting them into its tail: a
/// lookup scans at most this many, an add moves the tail once per this many.
const RECENT_MAX: usize = 64;

/// The inverted index of a large mailbox; see the module docs.
///
/// ```text
/// data:  per stem, ascending:  stem var (delta from the previous stem; whole at a block
///        start) | postings var | lid var (delta from the previous lid, the first whole)…
/// skips: (first stem id, byte offset) of every SKIP-th stem
/// ```
#[derive(Debug, Default, Clone)]
pub struct PostingIndex {
    data: Vec<u8>,
    skips: Vec<(u32, u32)>,
    /// Postings in `data`.
    postings: usize,
    /// Recent postings `(stem, lid)`, sorted (a stem's are found by binary search).
    tail: Vec<(u32, u32)>,
    /// The newest postings `(stem, lid)`, unsorted, fewer than [`RECENT_MAX`]: sorted into
    /// `tail` in one batch when they reach it.
    recent: Vec<(u32, u32)>,
    /// Postings of removed or edited messages still in `data` or `tail`.
    stale: usize,
    /// Ascending ids of messages edited since the index was built: their postings may name
    /// stems their text no longer has, so a hit on them is checked against the text. (A
    /// removed message's postings need no check: its slot is empty.)
    edited: Vec<u32>,
}

impl PostingIndex {
    /// Builds an index from postings `(stem, lid)` in any order.
    #[must_use]
    pub fn build(mut postings: Vec<(u32, u32)>) -> Self {
        postings.sort_unstable();
        postings.dedup();
        let mut index = Self::default();
        index.encode(&postings);
        index
    }

    fn encode(&mut self, sorted: &[(u32, u32)]) {
        let mut data = Vec::with_capacity(sorted.len() * 2);
        let mut skips = Vec::new();
        let mut in_block = 0usize;
        let mut block_start = 0usize;
        let mut previous_stem = 0u32;
        let mut at = 0;
        while at < sorted.len() {
            let stem = sorted[at].0;
            let run = sorted[at..].partition_point(|&(s, _)| s == stem);
            if skips.is_empty() || in_block == SKIP || data.len() - block_start >= BLOCK_BYTES {
                skips.push((stem, u32::try_from(data.len()).unwrap_or(u32::MAX)));
                block_start = data.len();
                in_block = 0;
                put_var(&mut data, u64::from(stem));
            } else {
                put_var(&mut data, u64::from(stem - previous_stem));
            }
            put_var(&mut data, run as u64);
            let mut previous_lid = 0;
            for &(_, lid) in &sorted[at..at + run] {
                put_var(&mut data, u64::from(lid - previous_lid));
                previous_lid = lid;
            }
            previous_stem = stem;
            in_block += 1;
            at += run;
        }
        data.shrink_to_fit();
        skips.shrink_to_fit();
        self.data = data;
        self.skips = skips;
        self.postings = sorted.len();
    }

    /// Every posting of `data`, in order.
    fn decode(&self) -> Vec<(u32, u32)> {
        let mut out = Vec::with_capacity(self.postings);
        let mut at = 0;
        let mut next_block = 0usize;
        let mut stem = 0u64;
        while at < self.data.len() {
            let block = self
                .skips
                .get(next_block)
                .is_some_and(|&(_, o)| o as usize == at);
            let (value, used) = get_var(&self.data[at..]);
            at += used;
            stem = if block {
                next_block += 1;
                value
            } else {
                stem + value
            };
            let (count, used) = get_var(&self.data[at..]);
            at += used;
            let mut lid = 0u64;
            for _ in 0..count {
                let (delta, used) = get_var(&self.data[at..]);
                at += used;
                lid += delta;
                // NOTE: written from u32 values.
                out.push((stem as u32, lid as u32));
            }
        }
        out
    }

    /// Where stem `stem`'s ids are in `data`: the offset of its first id and how many there
    /// are.
    fn run(&self, stem: u32) -> Option<(usize, u64)> {
        let block = self.skips.partition_point(|&(first, _)| first <= stem);
        let &(first, offset) = block.checked_sub(1).map(|b| &self.skips[b])?;
        let end = self
            .skips
            .get(block)
            .map_or(self.data.len(), |&(_, next)| next as usize);
        let mut at = offset as usize;
        let mut current = u64::from(first);
        let mut start = true;
        while at < end {
            let (value, used) = get_var(&self.data[at..]);
            at += used;
            if !start {
                current += value;
            }
            start = false;
            let (count, used) = get_var(&self.data[at..]);
            at += used;
            if current == u64::from(stem) {
                return Some((at, count));
            }
            if current > u64::from(stem) {
                return None;
            }
            // Skip `count` ids: each ends with the first byte below 0x80.
            let mut left = count;
            while left > 0 && at < end {
                left -= u64::from(self.data[at] < 0x80);
                at += 1;
            }
        }
        None
    }

    /// Appends the ascending ids of stem `stem` in `data` to `out`.
    fn ids_in_data(&self, stem: u32, out: &mut Vec<u32>) {
        if let Some((at, count)) = self.run(stem) {
            out.extend(Run::new(&self.data, at, count));
        }
    }

    /// Stem `stem`'s postings in the sorted tail.
    fn tail_of(&self, stem: u32) -> &[(u32, u32)] {
        let from = self.tail.partition_point(|p| p.0 < stem);
        let len = self.tail[from..].partition_point(|p| p.0 == stem);
        &self.tail[from..from + len]
    }

    /// The ascending, deduplicated ids indexed under `stem` (stale ones included).
    #[must_use]
    pub fn ids(&self, stem: u32) -> Vec<u32> {
        let mut out = Vec::new();
        self.ids_in_data(stem, &mut out);
        let before = out.len();
        out.extend(self.tail_of(stem).iter().map(|p| p.1));
        out.extend(self.recent.iter().filter(|p| p.0 == stem).map(|p| p.1));
        if out.len() > before {
            out.sort_unstable();
            out.dedup();
        }
        out
    }

    /// Sets `out` to the ascending, deduplicated ids indexed under every stem of `stems`
    /// (stale ones included; no stems: none): the ids of [`PostingIndex::ids`] of the stem
    /// with the fewest postings, kept while every other stem's list has them. The other
    /// lists are decoded in step with those ids, never into memory, and only up to the
    /// largest id still kept.
    pub fn intersect_into(&self, stems: &[u32], out: &mut Vec<u32>) {
        out.clear();
        let mut lists: smallvec::SmallVec<[Postings<'_>; 4]> = smallvec::SmallVec::new();
        for &stem in stems {
            let list = self.postings_of(stem);
            if list.len() == 0 {
                return;
            }
            lists.push(list);
        }
        lists.sort_by_key(Postings::len);
        let Some((first, rest)) = lists.split_first() else {
            return;
        };
        if let Some((at, count)) = first.run {
            out.extend(Run::new(&self.data, at, count));
        }
        if !first.tail.is_empty() || !first.recent.is_empty() {
            out.extend(first.tail.iter().map(|p| p.1));
            out.extend_from_slice(&first.recent);
            out.sort_unstable();
            out.dedup();
        }
        for list in rest {
            if out.is_empty() {
                return;
            }
            let mut run = list.run.map(|(at, count)| Run::new(&self.data, at, count));
            let mut run_next = run.as_mut().and_then(Iterator::next);
            let (mut t, mut r) = (0, 0);
            out.retain(|&id| {
                let mut found = false;
                if let Some(run) = run.as_mut() {
                    while run_next.is_some_and(|next| next < id) {
                        run_next = run.next();
                    }
                    found = run_next == Some(id);
                }
                if !found && !list.tail.is_empty() {
                    while list.tail.get(t).is_some_and(|p| p.1 < id) {
                        t += 1;
                    }
                    found = list.tail.get(t).is_some_and(|p| p.1 == id);
                }
                if !found && !list.recent.is_empty() {
                    while list.recent.get(r).is_some_and(|&lid| lid < id) {
                        r += 1;
                    }
                    found = list.recent.get(r) == Some(&id);
                }
                found
            });
        }
    }

    /// Where stem `stem`'s postings are: its run in `data`, its tail and its newest ids.
    fn postings_of(&self, stem: u32) -> Postings<'_> {
        let mut recent: smallvec::SmallVec<[u32; 8]> = self
            .recent
            .iter()
            .filter(|p| p.0 == stem)
            .map(|p| p.1)
            .collect();
        recent.sort_unstable();
        Postings {
            run: self.run(stem),
            tail: self.tail_of(stem),
            recent,
        }
    }

    /// Indexes message `lid` under `stems`.
    pub fn add(&mut self, lid: u32, stems: impl Iterator<Item = u32>) {
        self.recent.extend(stems.map(|stem| (stem, lid)));
        if self.recent.len() >= RECENT_MAX {
            self.sort_recent();
        }
        let limit = (self.postings / 8).clamp(256, 4096);
        if self.tail.len() + self.recent.len() >= limit {
            self.merge();
        }
    }

    /// Sorts the newest postings into the tail (a merge from the back, in place).
    fn sort_recent(&mut self) {
        let mut recent = std::mem::take(&mut self.recent);
        recent.sort_unstable();
        let old = self.tail.len();
        self.tail.extend_from_slice(&recent);
        let (mut i, mut j) = (old, recent.len());
        let mut k = self.tail.len();
        while j > 0 {
            k -= 1;
            if i > 0 && self.tail[i - 1] > recent[j - 1] {
                self.tail[k] = self.tail[i - 1];
                i -= 1;
            } else {
                self.tail[k] = recent[j - 1];
                j -= 1;
            }
        }
        recent.clear();
        self.recent = recent;
    }

    /// Folds the tail and the newest postings into `data` (stale postings stay).
    fn merge(&mut self) {
        self.sort_recent();
        let tail = std::mem::take(&mut self.tail);
        let main = self.decode();
        let mut merged = Vec::with_capacity(main.len() + tail.len());
        let (mut a, mut b) = (main.into_iter().peekable(), tail.into_iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x <= y => a.next(),
                (Some(_), Some(_)) | (None, Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, None) => break,
            };
            if let Some(p) = next {
                if merged.last() != Some(&p) {
                    merged.push(p);
                }
            }
        }
        self.encode(&merged);
    }

    /// Counts `postings` postings as stale (their message was removed or edited).
    pub fn stale(&mut self, postings: usize) {
        self.stale += postings;
    }

    /// Remembers that message `lid` was edited (see `edited`).
    pub fn edit(&mut self, lid: u32) {
        if let Err(at) = self.edited.binary_search(&lid) {
            self.edited.insert(at, lid);
        }
    }

    /// True when message `lid` was edited since the index was built.
    #[must_use]
    pub fn was_edited(&self, lid: u32) -> bool {
        self.edited.binary_search(&lid).is_ok()
    }

    /// True when a quarter of the postings are stale: time to rebuild from the texts.
    #[must_use]
    pub fn needs_rebuild(&self) -> bool {
        let all = self.len();
        self.stale > 64 && self.stale * 4 > all
    }

    /// Postings held (stale ones included).
    #[must_use]
    pub fn len(&self) -> usize {
        self.postings + self.tail.len() + self.recent.len()
    }

    /// True when nothing is indexed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes (capacities plus 16 bytes of allocator overhead per allocation).
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        let vec = |bytes: usize| if bytes == 0 { 0 } else { bytes + 16 };
        vec(self.data.capacity())
            + vec(self.skips.capacity() * 8)
            + vec(self.tail.capacity() * 8)
            + vec(self.recent.capacity() * 8)
            + vec(self.edited.capacity() * 4)
    }
}

/// One stem's postings in a [`PostingIndex`] (see [`PostingIndex::intersect_into`]).
struct Postings<'a> {
    /// Offset and length of its run in `data`.
    run: Option<(usize, u64)>,
    /// Its postings in the sorted tail.
    tail: &'a [(u32, u32)],
    /// Its newest ids, ascending.
    recent: smallvec::SmallVec<[u32; 8]>,
}

impl Postings<'_> {
    /// Postings in all (an id may be counted twice).
    fn len(&self) -> u64 {
        self.run.map_or(0, |r| r.1) + self.tail.len() as u64 + self.recent.len() as u64
    }
}

/// The ascending ids of one run of `data`, decoded as they are read.
struct Run<'a> {
    data: &'a [u8],
    at: usize,
    left: u64,
    id: u64,
}

impl<'a> Run<'a> {
    fn new(data: &'a [u8], at: usize, count: u64) -> Self {
        Self {
            data,
            at,
            left: count,
            id: 0,
        }
    }
}

impl Iterator for Run<'_> {
    type Item = u32;

    #[inline]
    fn next(&mut self) -> Option<u32> {
        if self.left == 0 || self.at >= self.data.len() {
            return None;
        }
        self.left -= 1;
        let (delta, used) = get_var(&self.data[self.at..]);
        self.at += used;
        self.id += delta;
        // NOTE: written from u32 values.
        #[expect(clippy::cast_possible_truncation)]
        Some(self.id as u32)
    }
}

/// Intersects ascending id lists, newest first: calls `visit` with every id present in all
/// of them until it returns false. No lists match nothing.
pub fn intersect(mut lists: smallvec::SmallVec<[Vec<u32>; 4]>, mut visit: impl FnMut(u32) -> bool) {
    lists.sort_by_key(Vec::len);
    let Some((first, rest)) = lists.split_first() else {
        return;
    };
    // Lists of similar length are walked with a cursor each (O(sum)); much longer ones are
    // binary-searched (O(short · log long)).
    let mut cursors: smallvec::SmallVec<[usize; 4]> = rest.iter().map(Vec::len).collect();
    for &lid in first.iter().rev() {
        let mut all = true;
        for (list, cursor) in rest.iter().zip(cursors.iter_mut()) {
            let found = if list.len() > first.len() * 32 {
                list.binary_search(&lid).is_ok()
            } else {
                while *cursor > 0 && list[*cursor - 1] > lid {
                    *cursor -= 1;
                }
                *cursor > 0 && list[*cursor - 1] == lid
            };
            if !found {
                all = false;
                break;
            }
        }
        if all && !visit(lid) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_fold_case_and_inflection() {
        assert_eq!(stems("Сообщения".as_bytes()), stems("сообщение".as_bytes()));
        assert_eq!(stems(b"Running"), stems(b"run"));
        assert_eq!(stems("ёлка".as_bytes()), stems("Елка".as_bytes()));
        assert_eq!(stems(b"a, b! a").len(), 2);
    }

    #[test]
    fn lexicon_counts_holders_and_reuses_ids() {
        let lex = Lexicon::default();
        let a = lex.hold_text(&[b"red apple", b"apples"], 2);
        assert_eq!(a.len(), 2);
        assert_eq!(lex.holders(a[0]), 2);
        let b = lex.hold_text(&[b"green apple"], 1);
        assert_eq!(lex.len(), 3);
        assert_eq!(lex.query(b"APPLE red").as_deref(), Some(&a[..]));
        assert_eq!(lex.query(b"blue"), None);
        lex.release(a.iter().copied());
        lex.release(a.iter().copied());
        assert_eq!(lex.len(), 2, "red is gone, apple and green stay");
        assert_eq!(lex.query(b"red"), None);
        let c = lex.hold_text(&[b"blue"], 1);
        assert!(a.contains(&c[0]), "a freed id is reused");
        lex.release(b.iter().copied());
        lex.release(c.iter().copied());
        assert!(lex.is_empty());
        assert_eq!(lex.heap_bytes() > 0, lex.capacity() > 0);
    }

    #[test]
    fn stem_counts_count_repeats() {
        let (counts, words) = stem_counts("Cats and cat; кошки и кошка".as_bytes());
        assert_eq!(words, 6);
        let cat = &stems(b"cat")[0];
        let koshka = &stems("кошка".as_bytes())[0];
        assert!(counts.contains(&(cat.clone(), 2)), "{counts:?}");
        assert!(counts.contains(&(koshka.clone(), 2)), "{counts:?}");
        assert_eq!(counts.len(), 4);
    }

    #[test]
    fn stems_are_held_verbatim() {
        let lex = Lexicon::default();
        let ids = lex.hold_stems(["run", "кошк"].into_iter());
        assert_eq!(lex.query(b"running").as_deref(), Some(&ids[..1]));
        assert_eq!(
            lex.find_stems(["кошк", "run"].into_iter()).as_deref(),
            Some(&[ids[1], ids[0]][..])
        );
        assert_eq!(lex.find_stems(["dog"].into_iter()), None);
        let mut seen = Vec::new();
        lex.with_stems(ids.iter().copied().chain([99]), |id, s| {
            seen.push((id, s.to_string()))
        });
        assert_eq!(
            seen,
            vec![(ids[0], "run".to_string()), (ids[1], "кошк".to_string())]
        );
        lex.release(ids.into_iter());
        assert!(lex.is_empty());
    }

    /// Long runs cut blocks early; every stem is still found, and a rebuild round-trips.
    #[test]
    fn long_runs_start_new_blocks() {
        let mut postings = Vec::new();
        for stem in 0..40u32 {
            let run = if stem % 7 == 3 { 5000 } else { 2 };
            postings.extend((0..run).map(|lid| (stem, lid * 3 + stem)));
        }
        let index = PostingIndex::build(postings.clone());
        assert!(index.skips.len() > 40 / SKIP + 1, "long runs start blocks");
        for stem in 0..41u32 {
            let want: Vec<u32> = postings
                .iter()
                .filter(|p| p.0 == stem)
                .map(|p| p.1)
                .collect();
            assert_eq!(index.ids(stem), want, "stem {stem}");
        }
        assert_eq!(index.decode(), postings);
    }

    fn intersected(index: &PostingIndex, stems: &[u32]) -> Vec<u32> {
        let mut out = vec![12345];
        index.intersect_into(stems, &mut out);
        out
    }

    fn naive_intersection(index: &PostingIndex, stems: &[u32]) -> Vec<u32> {
        let Some((first, rest)) = stems.split_first() else {
            return Vec::new();
        };
        let rest: Vec<Vec<u32>> = rest.iter().map(|&s| index.ids(s)).collect();
        index
            .ids(*first)
            .into_iter()
            .filter(|id| rest.iter().all(|list| list.binary_search(id).is_ok()))
            .collect()
    }

    /// Intersections read ids from the data, the sorted tail and the newest postings alike,
    /// once each even when a document was indexed again (an edit), in any order of adds.
    #[test]
    fn intersections_cover_data_tail_and_newest_postings() {
        let mut postings = Vec::new();
        for lid in 0..3000u32 {
            postings.push((1, lid));
            if lid % 3 == 0 {
                postings.push((2, lid));
            }
            if lid % 500 == 7 {
                postings.push((3, lid));
            }
        }
        let mut index = PostingIndex::build(postings);
        assert_eq!(
            intersected(&index, &[1, 3]),
            [7, 507, 1007, 1507, 2007, 2507]
        );
        assert_eq!(intersected(&index, &[3, 2, 1]), [507, 2007]);
        assert_eq!(intersected(&index, &[1, 4]), Vec::<u32>::new());
        // Re-index old documents (an edit) and add new ones: some go to the sorted tail,
        // the last few stay among the newest.
        for lid in (0..RECENT_MAX as u32 * 2 + 5).map(|i| i * 13) {
            index.add(lid, [1, 2, 3].into_iter());
        }
        index.add(5000, [3, 1].into_iter());
        assert!(!index.tail.is_empty() && !index.recent.is_empty());
        for stems in [&[1, 3][..], &[3, 2], &[2, 3, 1], &[3], &[2, 1]] {
            let got = intersected(&index, stems);
            assert_eq!(got, naive_intersection(&index, stems), "{stems:?}");
            assert!(got.windows(2).all(|w| w[0] < w[1]), "ascending, once each");
        }
        assert!(intersected(&index, &[3]).contains(&5000));
    }

    /// Random adds, merges and rebuilds against a naive model.
    #[test]
    fn postings_match_a_model() {
        let mut index = PostingIndex::default();
        let mut model: Vec<(u32, u32)> = Vec::new();
        let mut seed = 7u64;
        let mut rand = |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        for lid in 1..6000u32 {
            let mut stems: Vec<u32> = (0..rand(12)).map(|_| rand(400) as u32).collect();
            stems.sort_unstable();
            stems.dedup();
            index.add(lid, stems.iter().copied());
            model.extend(stems.iter().map(|&s| (s, lid)));
            if rand(1500) == 0 {
                index = PostingIndex::build(model.clone());
            }
            if lid % 301 == 0 {
                for stem in [0, 1, rand(400) as u32, 399, 400, 100_000] {
                    let want: Vec<u32> =
                        model.iter().filter(|p| p.0 == stem).map(|p| p.1).collect();
                    assert_eq!(index.ids(stem), want, "stem {stem} after lid {lid}");
                }
                let query = [rand(400) as u32, rand(40) as u32, rand(400) as u32];
                for stems in [&query[..1], &query[..2], &query[..], &[]] {
                    assert_eq!(
                        intersected(&index, stems),
                        naive_intersection(&index, stems),
                        "{stems:?} after lid {lid}"
                    );
                }
                assert_eq!(index.len(), model.len());
            }
        }
        let mut got = Vec::new();
        let lists = [7u32, 9].iter().map(|&s| index.ids(s)).collect();
        intersect(lists, |lid| {
            got.push(lid);
            true
        });
        let mut want: Vec<u32> = model
            .iter()
            .filter(|p| p.0 == 7 && model.contains(&(9, p.1)))
            .map(|p| p.1)
            .collect();
        want.reverse();
        assert_eq!(got, want);
    }
}
