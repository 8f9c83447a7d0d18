//! In-process cost of two-word searches over one shard of 1 M items / 8 shards (125 000
//! whole Russian fortunes, capped at 150 characters), without the network: each query is run
//! 5 times and its fastest run kept, so the machine's other load does not count. Ignored by
//! default (a measurement, not a test):
//!
//! ```text
//! cargo test --release -p koshka-search --test latency -- --ignored --nocapture
//! ```
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use koshka_engine::{Direct, Engine, MemoryJournal, Session};
use koshka_search::SearchEngine;

const ITEMS: u64 = 125_000;
const QUERIES: usize = 3000;

#[test]
#[ignore = "a measurement; run with --ignored --nocapture in release"]
fn two_word_search_latency() {
    let mut texts = Vec::new();
    for entry in std::fs::read_dir("/usr/share/games/fortunes/ru").expect("fortunes-ru") {
        let path = entry.unwrap().path();
        if path.extension().is_some() {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for fortune in text.split("\n%\n") {
            let fortune = fortune.split_whitespace().collect::<Vec<_>>().join(" ");
            if !fortune.is_empty() {
                texts.push(fortune.chars().take(150).collect::<String>());
            }
        }
    }
    let engine = SearchEngine::default();
    let journal = MemoryJournal::default();
    let mut session = Session::default();
    let started = Instant::now();
    for i in 0..ITEMS {
        let text = &texts[(i * 7919 % texts.len() as u64) as usize];
        let value = format!("1,{i},{}\t{text}", i % 1000);
        let key = format!("item{}_{}", i % 10_000 + 1, i + 1);
        engine
            .set(key.as_bytes(), 0, value.as_bytes(), &mut session, &journal)
            .unwrap();
    }
    println!("indexed {ITEMS} items in {:?}", started.elapsed());
    let stats: std::collections::HashMap<_, _> = engine.stats().into_iter().collect();
    println!("search_bytes_per_item {}", stats["search_bytes_per_item"]);
    let mut times: Vec<(Duration, String)> = Vec::new();
    let mut seed = 1u64;
    while times.len() < QUERIES {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let text = &texts[(seed >> 33) as usize % texts.len()];
        let words: Vec<&str> = text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| w.len() >= 3)
            .collect();
        if words.len() < 2 {
            continue;
        }
        let (a, b) = (
            words[(seed >> 20) as usize % words.len()],
            words[(seed >> 40) as usize % words.len()],
        );
        let mut key = b"search#R15(".to_vec();
        koshka_keys::idiom::encode_words(&mut key, format!("{a} {b}").as_bytes());
        key.push(b')');
        let mut best = Duration::MAX;
        let mut total = String::new();
        for _ in 0..5 {
            let started = Instant::now();
            let value = engine.get(&key, &mut session).unwrap().unwrap();
            best = best.min(started.elapsed());
            total = String::from_utf8_lossy(&value.data)
                .split(',')
                .next()
                .unwrap()
                .into();
        }
        times.push((best, format!("{a} {b}: {total} matches")));
    }
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)].0;
    println!(
        "two-word searches: p50 {:?} p99 {:?} p99.9 {:?} max {:?}",
        at(0.5),
        at(0.99),
        at(0.999),
        times[times.len() - 1].0
    );
    for (time, query) in &times[times.len() - 5..] {
        println!("  {time:?} {query}");
    }
}
