//! A brute-force model of the search engine, shared by the model and corpus tests: items in
//! a map, every search answered by scanning all of them with the documented rules.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};

use koshka_engine::{Direct, Journal, ShardSpec};
use koshka_keys::search::{By, Found, Hit, Query, Search};
use koshka_keys::Encode;
use koshka_search::{content_hash, SearchEngine};

/// One item as the model keeps it.
#[derive(Debug, Clone)]
pub struct ModelItem {
    pub kind: u8,
    pub date: u32,
    pub rating: u32,
    pub text: Vec<u8>,
    /// The text's stem counts and word count, computed once.
    pub stems: (Vec<(String, u32)>, u32),
}

impl ModelItem {
    pub fn new(kind: u8, date: u32, rating: u32, text: Vec<u8>) -> Self {
        let stems = koshka_text::stem_counts(&text);
        Self {
            kind,
            date,
            rating,
            text,
            stems,
        }
    }
}

/// The model: `(owner, id)` → item.
#[derive(Debug, Default, Clone)]
pub struct Model {
    pub items: BTreeMap<(i64, u32), ModelItem>,
}

impl Model {
    /// The reply the engine must give to `search` over every item of the model.
    pub fn search(&self, search: &Search) -> Found {
        let query: Vec<String> = koshka_text::stems(&search.words);
        let mut hits = Vec::new();
        for (&(owner, id), item) in &self.items {
            let f = &search.filter;
            if f.kind.is_some_and(|k| k != item.kind)
                || f.owner.is_some_and(|o| o != owner)
                || f.dates.is_some_and(|(a, b)| item.date < a || item.date > b)
            {
                continue;
            }
            let (counts, words) = (&item.stems.0, item.stems.1);
            if !query.iter().all(|q| counts.iter().any(|(s, _)| s == q)) {
                continue;
            }
            let matched: u64 = counts
                .iter()
                .filter(|(s, _)| query.contains(s))
                .map(|&(_, c)| u64::from(c))
                .sum();
            let value = match search.order.by {
                By::Rating => item.rating,
                By::Date => item.date,
                By::Relevance => {
                    u32::try_from(matched * 1_000_000 / (u64::from(words) + 8)).unwrap()
                }
            };
            hits.push(Hit {
                owner,
                id,
                value,
                hash: content_hash(&item.text),
            });
        }
        let total = hits.len() as u64;
        hits.sort_by(|a, b| search.order.compare(a, b));
        let mut seen = HashSet::new();
        let hits = hits
            .into_iter()
            .filter(|h| seen.insert(h.hash))
            .skip(search.offset as usize)
            .take(search.limit as usize)
            .collect();
        Found { total, hits }
    }
}

/// Asks `engine` for `search` with a real `get` of its encoded key.
pub fn ask(engine: &SearchEngine, search: &Search) -> Found {
    let key = Query::Search(search.clone()).to_bytes();
    let mut session = koshka_engine::Session::default();
    let value = engine.get(&key, &mut session).unwrap().unwrap();
    Found::parse(&value.data).unwrap()
}

/// Runs `search` over `shards` as a router does: the per-shard key with the split estimate,
/// the merge, and a second round for the shards the merge calls unsure.
pub fn scatter(shards: &[SearchEngine], search: &Search) -> Found {
    let count = u32::try_from(shards.len()).unwrap();
    let per_shard = search.per_shard(count);
    let mut parts: Vec<Found> = shards.iter().map(|s| ask(s, &per_shard)).collect();
    let mut asked = vec![per_shard.limit; shards.len()];
    let merged = koshka_keys::search::merge(search, &parts, &asked);
    if merged.unsure.is_empty() {
        return merged.found;
    }
    let whole = Search {
        offset: 0,
        limit: search.window(),
        ..search.clone()
    };
    for i in merged.unsure {
        parts[i] = ask(&shards[i], &whole);
        asked[i] = whole.limit;
    }
    let merged = koshka_keys::search::merge(search, &parts, &asked);
    assert!(
        merged.unsure.is_empty(),
        "a whole-window answer is never unsure"
    );
    merged.found
}

/// `count` empty shard engines.
pub fn shards(count: u32) -> Vec<SearchEngine> {
    (0..count)
        .map(|index| SearchEngine::new(ShardSpec { index, count }))
        .collect()
}

/// Sets an item with a real `set`.
pub fn set_item(
    engine: &SearchEngine,
    journal: &dyn Journal,
    (owner, id): (i64, u32),
    item: &ModelItem,
) {
    let mut value = format!("{},{},{}\t", item.kind, item.date, item.rating).into_bytes();
    value.extend_from_slice(&item.text);
    let mut session = koshka_engine::Session::default();
    let key = format!("item{owner}_{id}");
    let stored = engine
        .set(key.as_bytes(), 0, &value, &mut session, journal)
        .unwrap();
    assert_eq!(stored, koshka_engine::StoreOutcome::Stored);
}
