//! Full-text search: tokeniser, the engine-wide stem dictionary and per-mailbox postings.
//!
//! Words are split by Unicode word boundaries (UAX #29), lower-cased, `ё` folded to `е`, and
//! stemmed with the Russian stemmer when they contain Cyrillic letters, the English one
//! otherwise.
//!
//! Each distinct stem gets one `u32` id from the engine-wide [`Lexicon`] (interned once, never
//! freed until restart; queries never intern). A mailbox's [`SearchIndex`] stores one `u64`
//! posting `term << 32 | lid` per (message, stem): a sorted `main` array plus a small unsorted
//! `tail` of recent postings that is merged into `main` when it reaches about 1/8 of it, so
//! appends are amortised O(1) and a posting costs 8 bytes. Removals turn a posting of `main`
//! into a tombstone in place (a copy of its predecessor, or `term << 32` with local id 0), so
//! `main` stays sorted; tombstones are dropped by the next merge. A query collects each
//! stem's ids (binary search in `main`, a scan of `tail`) and intersects them from the newest
//! id down.

use std::collections::HashMap;
use std::sync::OnceLock;

use parking_lot::RwLock;
use rust_stemmers::{Algorithm, Stemmer};
use unicode_segmentation::UnicodeSegmentation;

use crate::WORD_BYTES_MAX;

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
fn for_each_stem(text: &[u8], mut visit: impl FnMut(&str)) {
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

fn fold(c: char) -> char {
    if c == 'ё' {
        'е'
    } else {
        c
    }
}

/// The engine-wide stem dictionary: stem → dense `u32` id. Ids are in-memory only (indexes
/// are rebuilt from texts on load), so they need not be stable across restarts.
#[derive(Debug, Default)]
pub struct Lexicon {
    ids: RwLock<HashMap<Box<str>, u32>>,
}

impl Lexicon {
    /// The ids of the stems of `parts` (subject, body), interning new ones; ascending, no
    /// repeats.
    #[must_use]
    pub fn terms(&self, parts: &[&[u8]]) -> Vec<u32> {
        let mut words: Vec<String> = Vec::new();
        let mut out = Vec::new();
        {
            let ids = self.ids.read();
            for part in parts {
                for_each_stem(part, |stem| match ids.get(stem) {
                    Some(&id) => out.push(id),
                    None => words.push(stem.to_string()),
                });
            }
        }
        if !words.is_empty() {
            let mut ids = self.ids.write();
            for word in words {
                let next = u32::try_from(ids.len()).unwrap_or(u32::MAX);
                out.push(*ids.entry(word.into_boxed_str()).or_insert(next));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The ids of the stems of a query, deduplicated; `None` when a stem was never indexed
    /// (nothing can match). Never interns.
    #[must_use]
    pub fn query(&self, words: &[u8]) -> Option<Vec<u32>> {
        let ids = self.ids.read();
        let mut out = Vec::new();
        let mut known = true;
        for_each_stem(words, |stem| match ids.get(stem) {
            Some(&id) => out.push(id),
            None => known = false,
        });
        out.sort_unstable();
        out.dedup();
        known.then_some(out)
    }

    /// Distinct stems interned so far.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ids.read().len()
    }

    /// True when nothing was interned.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Approximate heap bytes (table slots plus one allocation per stem).
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        let ids = self.ids.read();
        ids.capacity() * 25 + ids.keys().map(|k| k.len().max(8) + 16).sum::<usize>()
    }
}

const LID_MASK: u64 = 0xFFFF_FFFF;

fn key(term: u32, lid: u32) -> u64 {
    (u64::from(term) << 32) | u64::from(lid)
}

fn lid_of(posting: u64) -> u32 {
    (posting & LID_MASK) as u32
}

/// The postings of one mailbox; see the module docs for the layout.
#[derive(Debug, Default)]
pub struct SearchIndex {
    /// Sorted (non-decreasing) postings and tombstones.
    main: Vec<u64>,
    /// Recent postings, unsorted.
    tail: Vec<u64>,
    /// Tombstones in `main`.
    dead: usize,
}

impl SearchIndex {
    /// Builds an index from unsorted postings `(term, lid)`.
    #[must_use]
    pub fn from_postings(mut postings: Vec<u64>) -> Self {
        postings.sort_unstable();
        postings.dedup();
        postings.shrink_to_fit();
        Self {
            main: postings,
            tail: Vec::new(),
            dead: 0,
        }
    }

    /// The posting key of `(term, lid)`.
    #[must_use]
    pub fn posting(term: u32, lid: u32) -> u64 {
        key(term, lid)
    }

    /// Indexes message `lid` under `terms` (each at most once per message).
    pub fn add(&mut self, lid: u32, terms: &[u32]) {
        if self.tail.capacity() - self.tail.len() < terms.len() {
            let want = self.tail_limit().max(self.tail.len() + terms.len());
            self.tail.reserve_exact(want - self.tail.len());
        }
        self.tail.extend(terms.iter().map(|&t| key(t, lid)));
        if self.tail.len() >= self.tail_limit() {
            self.merge(|_| true);
        }
    }

    fn tail_limit(&self) -> usize {
        // NOTE: every query scans the tail once per word, so it stays small (≤ 4 096
        // postings, 32 KiB); a merge rewrites `main`, so it grows with √main.
        let root = (self.main.len() as f64).sqrt() as usize;
        (root * 2).clamp(16, 4096)
    }

    /// Removes message `lid` from the lists of `terms`.
    pub fn remove(&mut self, lid: u32, terms: &[u32]) {
        for &term in terms {
            let k = key(term, lid);
            if let Some(at) = self.tail.iter().position(|&p| p == k) {
                self.tail.swap_remove(at);
                continue;
            }
            let lo = self.main.partition_point(|&p| p < k);
            let hi = self.main.partition_point(|&p| p <= k);
            if lo == hi {
                continue;
            }
            let before = match lo.checked_sub(1).map(|i| self.main[i]) {
                Some(p) if p >> 32 == u64::from(term) => p,
                _ => key(term, 0),
            };
            for p in &mut self.main[lo..hi] {
                *p = before;
            }
            self.dead += 1;
        }
        if self.dead > 16 && self.dead * 4 > self.main.len() {
            self.merge(|_| true);
        }
    }

    /// Drops every posting whose id fails `keep` (bulk removals; O(postings)).
    pub fn retain(&mut self, keep: impl Fn(u32) -> bool) {
        self.merge(keep);
    }

    /// Folds `tail` into `main`, dropping tombstones and ids failing `keep`; `main` gets an
    /// exact-size allocation.
    fn merge(&mut self, keep: impl Fn(u32) -> bool) {
        self.tail.sort_unstable();
        let live = self.main.len() - self.dead + self.tail.len();
        let mut out = Vec::with_capacity(live);
        let (mut a, mut b) = (self.main.iter().peekable(), self.tail.iter().peekable());
        let mut last = 0u64;
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(&&x), Some(&&y)) => {
                    if x <= y {
                        a.next();
                        x
                    } else {
                        b.next();
                        y
                    }
                }
                (Some(&&x), None) => {
                    a.next();
                    x
                }
                (None, Some(&&y)) => {
                    b.next();
                    y
                }
                (None, None) => break,
            };
            let lid = lid_of(next);
            if lid != 0 && next != last && keep(lid) {
                out.push(next);
                last = next;
            }
        }
        out.shrink_to_fit();
        self.main = out;
        self.tail.clear();
        if self.tail.capacity() > self.tail_limit() {
            self.tail = Vec::new();
        }
        self.dead = 0;
    }

    /// Live postings.
    #[must_use]
    pub fn len(&self) -> usize {
        self.main.len() - self.dead + self.tail.len()
    }

    /// True when nothing is indexed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes held by postings.
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        let vec = |len: usize| if len == 0 { 0 } else { len * 8 + 16 };
        vec(self.main.capacity()) + vec(self.tail.capacity())
    }

    /// The ascending ids indexed under `term`.
    fn ids(&self, term: u32) -> Vec<u32> {
        let lo = self.main.partition_point(|&p| p < key(term, 0));
        let hi = self.main.partition_point(|&p| p >> 32 <= u64::from(term));
        let mut out: Vec<u32> = Vec::with_capacity(hi - lo);
        for &p in &self.main[lo..hi] {
            let lid = lid_of(p);
            if lid != 0 && out.last() != Some(&lid) {
                out.push(lid);
            }
        }
        let mut recent: Vec<u32> = self
            .tail
            .iter()
            .filter(|&&p| p >> 32 == u64::from(term))
            .map(|&p| lid_of(p))
            .collect();
        if !recent.is_empty() {
            out.append(&mut recent);
            out.sort_unstable();
        }
        out
    }

    /// Calls `visit` with every id indexed under all `terms`, newest first, until it returns
    /// false. An empty query matches nothing.
    pub fn intersect(&self, terms: &[u32], mut visit: impl FnMut(u32) -> bool) {
        let mut lists: Vec<Vec<u32>> = Vec::with_capacity(terms.len());
        for &term in terms {
            let list = self.ids(term);
            if list.is_empty() {
                return;
            }
            lists.push(list);
        }
        lists.sort_by_key(Vec::len);
        let Some((first, rest)) = lists.split_first() else {
            return;
        };
        // Lists of similar length are walked with a cursor each (O(sum)); much longer ones
        // are binary-searched (O(short · log long)).
        let mut cursors: Vec<usize> = rest.iter().map(Vec::len).collect();
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(index: &SearchIndex, lex: &Lexicon, q: &str) -> Vec<u32> {
        let mut got = Vec::new();
        if let Some(terms) = lex.query(q.as_bytes()) {
            index.intersect(&terms, |lid| {
                got.push(lid);
                true
            });
        }
        got
    }

    #[test]
    fn stems_fold_case_and_inflection() {
        assert_eq!(stems("Сообщения".as_bytes()), stems("сообщение".as_bytes()));
        assert_eq!(stems(b"Running"), stems(b"run"));
        assert_eq!(stems("ёлка".as_bytes()), stems("Елка".as_bytes()));
        assert_eq!(stems(b"a, b! a").len(), 2);
    }

    #[test]
    fn intersect_newest_first() {
        let lex = Lexicon::default();
        let mut index = SearchIndex::default();
        index.add(1, &lex.terms(&[b"red apple"]));
        index.add(2, &lex.terms(&[b"green apple"]));
        index.add(3, &lex.terms(&[b"red apples"]));
        assert_eq!(collect(&index, &lex, "apple red"), vec![3, 1]);
        index.remove(3, &lex.terms(&[b"red apples"]));
        assert_eq!(collect(&index, &lex, "red"), vec![1]);
        assert!(collect(&index, &lex, "red blue").is_empty());
        assert_eq!(lex.query(b"blue"), None);
    }

    /// Random adds and removes, with merges and tombstones, against a naive model.
    #[test]
    fn postings_match_a_model() {
        let mut index = SearchIndex::default();
        let mut model: Vec<(u32, Vec<u32>)> = Vec::new();
        let mut seed = 7u64;
        let mut rand = |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        for lid in 1..3000u32 {
            let mut terms: Vec<u32> = (0..rand(6)).map(|_| rand(40) as u32).collect();
            terms.sort_unstable();
            terms.dedup();
            index.add(lid, &terms);
            model.push((lid, terms));
            if rand(3) == 0 {
                let at = rand(model.len() as u64) as usize;
                let (gone, terms) = model.swap_remove(at);
                index.remove(gone, &terms);
            }
            if rand(500) == 0 {
                let cut = lid / 2;
                index.retain(|l| l >= cut);
                model.retain(|(l, _)| *l >= cut);
            }
            if lid % 97 == 0 {
                for q in [
                    vec![rand(40) as u32],
                    vec![rand(40) as u32, rand(40) as u32],
                ] {
                    let mut want: Vec<u32> = model
                        .iter()
                        .filter(|(_, t)| q.iter().all(|x| t.contains(x)))
                        .map(|(l, _)| *l)
                        .collect();
                    want.sort_unstable_by(|a, b| b.cmp(a));
                    let mut q = q;
                    q.sort_unstable();
                    q.dedup();
                    let mut got = Vec::new();
                    index.intersect(&q, |l| {
                        got.push(l);
                        true
                    });
                    assert_eq!(got, want, "query {q:?} after lid {lid}");
                }
                let total: usize = model.iter().map(|(_, t)| t.len()).sum();
                assert_eq!(index.len(), total);
            }
        }
    }
}
