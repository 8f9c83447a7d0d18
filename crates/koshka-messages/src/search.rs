//! Per-mailbox full-text search: tokeniser and inverted index.
//!
//! Words are split by Unicode word boundaries (UAX #29), lower-cased, `ё` folded to `е`, and
//! stemmed with the Russian stemmer when they contain Cyrillic letters, the English one
//! otherwise. The index maps each stem to the sorted local ids of the messages containing it;
//! a query intersects the lists of its words from the newest id down, so a two-word query
//! touches at most the shorter list plus a binary search per candidate in the longer one.

use std::collections::HashMap;
use std::sync::OnceLock;

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

/// Splits `text` into normalised stems (deduplicated, in first-seen order). Invalid UTF-8 is
/// decoded lossily; tokens longer than [`WORD_BYTES_MAX`] are skipped.
#[must_use]
pub fn stems(text: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(text);
    let mut out: Vec<String> = Vec::new();
    for word in text.unicode_words() {
        if word.len() > WORD_BYTES_MAX {
            continue;
        }
        let lower: String = word
            .chars()
            .flat_map(char::to_lowercase)
            .map(fold)
            .collect();
        let cyrillic = lower
            .chars()
            .any(|c| ('\u{0400}'..='\u{04FF}').contains(&c));
        let s = stemmers();
        let stem = if cyrillic {
            s.russian.stem(&lower)
        } else {
            s.english.stem(&lower)
        };
        let stem = stem.into_owned();
        if !stem.is_empty() && !out.contains(&stem) {
            out.push(stem);
        }
    }
    out
}

fn fold(c: char) -> char {
    if c == 'ё' {
        'е'
    } else {
        c
    }
}

/// The inverted index of one mailbox: stem → ascending local ids.
#[derive(Debug, Default)]
pub struct SearchIndex {
    postings: HashMap<Box<str>, Vec<u32>>,
}

impl SearchIndex {
    /// Indexes message `lid` under `stems`. `lid` is usually the newest id (O(1) append).
    pub fn add(&mut self, lid: u32, stems: &[String]) {
        for stem in stems {
            let list = self.postings.entry(stem.as_str().into()).or_default();
            match list.last() {
                Some(&last) if last >= lid => {
                    if let Err(at) = list.binary_search(&lid) {
                        list.insert(at, lid);
                    }
                }
                _ => list.push(lid),
            }
        }
    }

    /// Removes message `lid` from the lists of `stems`.
    pub fn remove(&mut self, lid: u32, stems: &[String]) {
        for stem in stems {
            if let Some(list) = self.postings.get_mut(stem.as_str()) {
                if let Ok(at) = list.binary_search(&lid) {
                    list.remove(at);
                }
                if list.is_empty() {
                    self.postings.remove(stem.as_str());
                }
            }
        }
    }

    /// Number of distinct stems.
    #[must_use]
    pub fn stems_count(&self) -> usize {
        self.postings.len()
    }

    /// Bytes held by posting lists (ids only).
    #[must_use]
    pub fn postings_bytes(&self) -> usize {
        self.postings.values().map(|l| l.capacity() * 4).sum()
    }

    /// Calls `visit` with every id containing all `query` stems, newest first, until it
    /// returns false. An empty query or an unknown stem matches nothing.
    pub fn intersect(&self, query: &[String], mut visit: impl FnMut(u32) -> bool) {
        let mut lists: Vec<&[u32]> = Vec::with_capacity(query.len());
        for stem in query {
            match self.postings.get(stem.as_str()) {
                Some(list) => lists.push(list),
                None => return,
            }
        }
        lists.sort_by_key(|l| l.len());
        let Some((first, rest)) = lists.split_first() else {
            return;
        };
        for &lid in first.iter().rev() {
            if rest.iter().all(|l| l.binary_search(&lid).is_ok()) && !visit(lid) {
                return;
            }
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
    fn intersect_newest_first() {
        let mut index = SearchIndex::default();
        index.add(1, &stems(b"red apple"));
        index.add(2, &stems(b"green apple"));
        index.add(3, &stems(b"red apples"));
        let mut got = Vec::new();
        index.intersect(&stems(b"apple red"), |lid| {
            got.push(lid);
            true
        });
        assert_eq!(got, vec![3, 1]);
        index.remove(3, &stems(b"red apples"));
        got.clear();
        index.intersect(&stems(b"red"), |lid| {
            got.push(lid);
            true
        });
        assert_eq!(got, vec![1]);
    }
}
