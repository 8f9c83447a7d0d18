//! The search engine against a brute-force model: random sets, re-sets, deletes, rating
//! changes and searches (every filter, order, offset and limit), with restarts by replaying
//! the log into a fresh engine and by snapshot + load; and the same over four shards merged as
//! the proxy merges them.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ask, scatter, set_item, shards, Model, ModelItem};
use koshka_engine::{Direct, Engine, RecordingJournal, Session};
use koshka_keys::search::{By, Filter, Order, Search};
use koshka_search::SearchEngine;

/// A small deterministic generator (the test needs no statistical quality).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n.max(1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Words with inflections that stem together, in both languages, so searches hit.
const WORDS: &[&str] = &[
    "кошка",
    "кошки",
    "кошку",
    "собака",
    "собаки",
    "дом",
    "дома",
    "молоко",
    "ёлка",
    "елки",
    "cat",
    "cats",
    "dog",
    "dogs",
    "running",
    "run",
    "house",
    "milk",
    "the",
    "and",
];

/// A few fixed texts, so duplicates are common.
const FIXED: &[&str] = &["кошка и собака", "the cat and the dog", "молоко"];

fn text(rng: &mut Rng) -> Vec<u8> {
    if rng.below(4) == 0 {
        return rng.pick(FIXED).as_bytes().to_vec();
    }
    let words = 1 + rng.below(6);
    let mut out = Vec::new();
    for i in 0..words {
        if i > 0 {
            out.extend_from_slice(if rng.below(3) == 0 { b", " } else { b" " });
        }
        out.extend_from_slice(rng.pick(WORDS).as_bytes());
    }
    out
}

fn random_item(rng: &mut Rng) -> ModelItem {
    let kind = 1 + rng.below(3) as u8;
    let date = rng.below(50) as u32;
    let rating = rng.below(20) as u32;
    ModelItem::new(kind, date, rating, text(rng))
}

fn random_search(rng: &mut Rng, owners: &[i64]) -> Search {
    let words = (0..rng.below(3))
        .map(|_| *rng.pick(WORDS))
        .collect::<Vec<_>>()
        .join(" ");
    let from = rng.below(50) as u32;
    Search {
        order: Order {
            by: *rng.pick(&[By::Rating, By::Date, By::Relevance]),
            descending: rng.below(2) == 0,
        },
        limit: rng.below(12) as u32,
        offset: if rng.below(3) == 0 {
            rng.below(8) as u32
        } else {
            0
        },
        filter: Filter {
            kind: (rng.below(4) == 0).then(|| 1 + rng.below(3) as u8),
            owner: (rng.below(6) == 0).then(|| *rng.pick(owners)),
            dates: (rng.below(4) == 0).then(|| (from, from + rng.below(30) as u32)),
        },
        words: words.into_bytes(),
    }
}

/// One random update applied to the engine and the model.
fn update(
    rng: &mut Rng,
    engine: &SearchEngine,
    journal: &RecordingJournal,
    model: &mut Model,
    owners: &[i64],
) {
    let owner = *rng.pick(owners);
    let id = 1 + rng.below(30) as u32;
    let key = (owner, id);
    let mut session = Session::default();
    match rng.below(10) {
        0..=5 => {
            let item = random_item(rng);
            set_item(engine, journal, key, &item);
            model.items.insert(key, item);
        }
        6 | 7 => {
            let deleted = engine
                .delete(
                    format!("item{owner}_{id}").as_bytes(),
                    &mut session,
                    journal,
                )
                .unwrap();
            assert_eq!(deleted, model.items.remove(&key).is_some());
        }
        8 => {
            let rating = rng.below(20) as u32;
            let outcome = engine
                .set(
                    format!("rate{owner}_{id}").as_bytes(),
                    0,
                    rating.to_string().as_bytes(),
                    &mut session,
                    journal,
                )
                .unwrap();
            let exists = model.items.get_mut(&key).map(|item| item.rating = rating);
            let stored = outcome == koshka_engine::StoreOutcome::Stored;
            assert_eq!(stored, exists.is_some());
        }
        _ => {
            let delta = rng.below(11) as i64 - 5;
            let got = engine
                .incr(
                    format!("rate{owner}_{id}").as_bytes(),
                    delta,
                    &mut session,
                    journal,
                )
                .unwrap();
            let want = model.items.get_mut(&key).map(|item| {
                item.rating = (i64::from(item.rating) + delta).max(0) as u32;
                u64::from(item.rating)
            });
            assert_eq!(got, want);
        }
    }
}

fn restart(engine: &SearchEngine, journal: &RecordingJournal, rng: &mut Rng) -> SearchEngine {
    let fresh = SearchEngine::default();
    if rng.below(2) == 0 {
        journal.replay_into(&fresh).unwrap();
    } else {
        let mut image = Vec::new();
        engine.write_snapshot(&mut image).unwrap();
        fresh.load_snapshot(&mut image.as_slice()).unwrap();
        // The log replayed over the snapshot changes nothing: every record is in it.
        journal.replay_into(&fresh).unwrap();
        let mut again = Vec::new();
        fresh.write_snapshot(&mut again).unwrap();
        assert_eq!(again, image, "snapshot → load → snapshot is stable");
    }
    fresh
}

#[test]
fn one_shard_matches_the_model_across_restarts() {
    let owners = [1i64, 2, -3, 17, -40];
    for seed in 1..=6u64 {
        let mut rng = Rng(seed);
        let journal = RecordingJournal::default();
        let mut engine = SearchEngine::default();
        let mut model = Model::default();
        let (mut searches, mut with_hits, mut deduplicated) = (0, 0, 0);
        for step in 0..1500 {
            update(&mut rng, &engine, &journal, &mut model, &owners);
            if step % 7 == 0 {
                let search = random_search(&mut rng, &owners);
                let found = ask(&engine, &search);
                assert_eq!(
                    found,
                    model.search(&search),
                    "seed {seed} step {step}: {search:?}"
                );
                searches += 1;
                with_hits += usize::from(!found.hits.is_empty());
                deduplicated += usize::from(
                    found.hits.len() < found.total.min(u64::from(search.limit)) as usize,
                );
            }
            if step % 400 == 399 {
                engine = restart(&engine, &journal, &mut rng);
            }
            if step % 100 == 0 {
                let mut session = Session::default();
                for (&(owner, id), item) in &model.items {
                    let value = engine
                        .get(format!("item{owner}_{id}").as_bytes(), &mut session)
                        .unwrap()
                        .unwrap();
                    let hash = koshka_search::content_hash(&item.text);
                    let want = format!("{},{},{},{hash}", item.kind, item.date, item.rating);
                    assert_eq!(value.data, want.as_bytes());
                }
            }
        }
        assert_eq!(engine.len(), model.items.len());
        assert!(
            with_hits * 2 > searches,
            "{with_hits} of {searches} searches found something"
        );
        assert!(
            deduplicated > 5,
            "only {deduplicated} searches hid duplicates"
        );
    }
}

#[test]
fn four_shards_merged_match_the_model() {
    let owners: Vec<i64> = (1..=12).chain(-6..=-1).collect();
    let mut rng = Rng(99);
    let engines = shards(4);
    let journals: Vec<RecordingJournal> = (0..4).map(|_| RecordingJournal::default()).collect();
    let mut model = Model::default();
    for step in 0..3000 {
        let owner = *rng.pick(&owners);
        let shard = koshka_keys::shard_of(owner, 4) as usize;
        let item = random_item(&mut rng);
        let id = 1 + rng.below(40) as u32;
        set_item(&engines[shard], &journals[shard], (owner, id), &item);
        model.items.insert((owner, id), item);
        if step % 5 == 0 {
            let mut search = random_search(&mut rng, &owners);
            search.filter.owner = None;
            assert_eq!(
                scatter(&engines, &search),
                model.search(&search),
                "step {step}: {search:?}"
            );
        }
    }
    // A wrong-shard item is refused before anything is logged.
    let mut session = Session::default();
    let refused = engines[0].set(b"item1_1", 0, b"1,1,1\tx", &mut session, &journals[0]);
    assert!(matches!(
        refused,
        Err(koshka_engine::Error::WrongShard { .. })
    ));
}

#[test]
fn bad_values_are_refused_before_the_log() {
    let engine = SearchEngine::default();
    let journal = RecordingJournal::default();
    let mut session = Session::default();
    for (key, value) in [
        (&b"item1_1"[..], &b"1,1,1"[..]),
        (b"item1_1", b"16,1,1\tx"),
        (b"item0_1", b"1,1,1\tx"),
        (b"rate1_1", b"-1"),
        (b"search#R1(a)", b"1"),
    ] {
        assert!(
            engine.set(key, 0, value, &mut session, &journal).is_err(),
            "{key:?}"
        );
    }
    assert!(engine.get(b"search#R1001(a)", &mut session).is_err());
    assert!(engine.get(b"search#x1(a)", &mut session).is_err());
    assert!(engine.delete(b"rate1_1", &mut session, &journal).is_err());
    assert!(journal.records().is_empty());
    // Rating changes of a missing item change nothing.
    assert_eq!(
        engine
            .set(b"rate1_1", 0, b"5", &mut session, &journal)
            .unwrap(),
        koshka_engine::StoreOutcome::NotStored
    );
    assert_eq!(
        engine.incr(b"rate1_1", 5, &mut session, &journal).unwrap(),
        None
    );
    assert!(!engine.delete(b"item1_1", &mut session, &journal).unwrap());
    assert!(journal.records().is_empty());
}

#[test]
fn stats_report_bytes_per_item() {
    let engine = SearchEngine::default();
    let journal = RecordingJournal::default();
    let mut rng = Rng(5);
    for id in 1..=2000u32 {
        set_item(
            &engine,
            &journal,
            (i64::from(id % 50 + 1), id),
            &random_item(&mut rng),
        );
    }
    let stats: std::collections::HashMap<String, String> = engine.stats().into_iter().collect();
    assert_eq!(stats["search_items"], "2000");
    let per_item: usize = stats["search_bytes_per_item"].parse().unwrap();
    assert!((48..400).contains(&per_item), "{per_item} bytes per item");
}
