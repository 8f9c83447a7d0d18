//! Search over real Russian and English sentences (Debian's `fortunes-ru` and `fortunes`):
//! one shard and eight shards merged as the proxy merges them must both answer exactly what
//! a brute-force scan of all items answers — the same hits in the same order, the same
//! totals, the same duplicates hidden.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ask, scatter, set_item, shards, Model, ModelItem};
use koshka_engine::RecordingJournal;
use koshka_keys::search::{By, Filter, Order, Search};
use koshka_search::SearchEngine;

const FORTUNES_DIR: &str = "/usr/share/games/fortunes";
const FORTUNES_RU_DIR: &str = "/usr/share/games/fortunes/ru";

/// Sentences taken from each language.
const PER_LANGUAGE: usize = 3000;

/// The fortunes of every plain file in `dir` (not `.dat`/`.u8`), whitespace collapsed.
fn fortunes(dir: &str) -> Vec<String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| {
            panic!("{dir}: {e}; install the Debian packages fortunes and fortunes-ru")
        })
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_none())
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for fortune in text.split("\n%\n") {
            let fortune = fortune.split_whitespace().collect::<Vec<_>>().join(" ");
            if !fortune.is_empty() && fortune.len() <= 1000 {
                out.push(fortune);
            }
        }
    }
    out
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n.max(1)
    }
}

#[test]
fn fortunes_search_equals_a_brute_force_scan() {
    let ru = fortunes(FORTUNES_RU_DIR);
    let en = fortunes(FORTUNES_DIR);
    assert!(
        ru.len() >= PER_LANGUAGE && en.len() >= PER_LANGUAGE,
        "{} ru, {} en",
        ru.len(),
        en.len()
    );
    let mut rng = Rng(2026);
    let mut sentences: Vec<&String> = Vec::new();
    for pool in [&ru, &en] {
        let step = pool.len() / PER_LANGUAGE;
        sentences.extend(pool.iter().step_by(step).take(PER_LANGUAGE));
    }
    let one = SearchEngine::default();
    let one_log = RecordingJournal::default();
    let eight = shards(8);
    let logs: Vec<RecordingJournal> = (0..8).map(|_| RecordingJournal::default()).collect();
    let mut model = Model::default();
    for (i, sentence) in sentences.iter().enumerate() {
        // One sentence in ten is posted again by another owner: a duplicate to hide.
        let copies = if i % 10 == 0 { 2 } else { 1 };
        for copy in 0..copies {
            let owner = 1 + rng.below(500) as i64 * if rng.below(5) == 0 { -1 } else { 1 };
            let id = u32::try_from(i * 2 + copy + 1).unwrap();
            let item = ModelItem::new(
                1 + rng.below(3) as u8,
                1_600_000_000 + rng.below(1000) as u32,
                rng.below(100) as u32,
                sentence.as_bytes().to_vec(),
            );
            set_item(&one, &one_log, (owner, id), &item);
            let shard = koshka_keys::shard_of(owner, 8) as usize;
            set_item(&eight[shard], &logs[shard], (owner, id), &item);
            model.items.insert((owner, id), item);
        }
    }
    // Queries: one or two words of a random sentence, as written (inflected, any case).
    let (mut nonempty, mut hidden, mut queries) = (0, 0, 0);
    for q in 0..400 {
        let sentence = sentences[rng.below(sentences.len() as u64) as usize];
        let words: Vec<&str> = sentence
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| w.chars().count() >= 3)
            .collect();
        if words.is_empty() {
            continue;
        }
        let mut text = words[rng.below(words.len() as u64) as usize].to_string();
        if q % 3 != 0 {
            text.push(' ');
            text.push_str(words[rng.below(words.len() as u64) as usize]);
        }
        let search = Search {
            order: Order {
                by: [By::Rating, By::Date, By::Relevance][q % 3],
                descending: q % 2 == 0,
            },
            limit: 1 + rng.below(30) as u32,
            offset: if q % 5 == 0 { rng.below(10) as u32 } else { 0 },
            filter: Filter {
                kind: (q % 7 == 0).then_some(2),
                owner: None,
                dates: (q % 4 == 0).then_some((1_600_000_100, 1_600_000_800)),
            },
            words: text.into_bytes(),
        };
        let want = model.search(&search);
        assert_eq!(ask(&one, &search), want, "one shard: {search:?}");
        assert_eq!(scatter(&eight, &search), want, "eight shards: {search:?}");
        queries += 1;
        nonempty += usize::from(!want.hits.is_empty());
        hidden += usize::from(
            want.total > want.hits.len() as u64 && want.hits.len() < search.limit as usize,
        );
    }
    assert!(
        nonempty * 10 > queries * 8,
        "{nonempty} of {queries} queries found something"
    );
    assert!(hidden > 0, "no query hid a duplicate");
}
