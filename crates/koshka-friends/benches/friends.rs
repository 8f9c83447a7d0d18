//! Criterion benches of the friends engine, through the `Engine` trait:
//! common friends of two 1 000-friend users (sorted merge), a friend list page, add + remove
//! of a two-sided friendship, and a batch privacy check of 20 keys (with its p50/p99 printed
//! from individually timed calls), plus the memory per edge of a 1 M-edge image.

// criterion_group! and criterion_main! generate undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use koshka_engine::{Direct, Engine, MemoryJournal, Session, ShardSpec};
use koshka_friends::FriendsEngine;

/// Deterministic pseudo-random ids (xorshift), so runs are comparable.
fn ids(seed: u64, n: usize, max: u32) -> Vec<u32> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // NOTE: the value is reduced modulo a u32.
            #[expect(clippy::cast_possible_truncation)]
            let id = (x % u64::from(max)) as u32;
            id + 1
        })
        .collect()
}

fn set(engine: &FriendsEngine, journal: &MemoryJournal, key: &str, value: &str) {
    let _ = engine.set(
        key.as_bytes(),
        0,
        value.as_bytes(),
        &mut Session::default(),
        journal,
    );
}

/// One journal per process so log positions keep growing across the engines' setups.
fn big_journal() -> &'static MemoryJournal {
    static JOURNAL: std::sync::OnceLock<MemoryJournal> = std::sync::OnceLock::new();
    JOURNAL.get_or_init(MemoryJournal::default)
}

/// Users 1 and 2 with 1 000 friends each, about half of them shared.
fn two_big_users() -> FriendsEngine {
    let engine = FriendsEngine::new(ShardSpec::default());
    let journal = big_journal();
    for (i, f) in ids(7, 1000, 1_000_000).into_iter().enumerate() {
        let f = f + 10;
        set(&engine, journal, &format!("friend_half1_{f}"), "0");
        let other = if i % 2 == 0 { f } else { f + 1_000_000 };
        set(&engine, journal, &format!("friend_half2_{other}"), "0");
    }
    engine
}

fn bench_common(c: &mut Criterion) {
    let engine = two_big_users();
    let mut session = Session::default();
    let mut group = c.benchmark_group("friends");
    group.throughput(Throughput::Elements(1));
    group.bench_function("common_friends_1000x1000", |b| {
        b.iter(|| engine.get(black_box(b"common_friends1,2"), &mut session));
    });
    group.bench_function("friend_list_page_100_full", |b| {
        b.iter(|| engine.get(black_box(b"friends_full1#101,200"), &mut session));
    });
    let journal = big_journal();
    group.bench_function("add_remove_pair", |b| {
        b.iter(|| {
            let _ = engine.set(b"friend3_4", 0, b"6", &mut session, journal);
            let _ = engine.delete(b"friend3_4", &mut session, journal);
        });
    });
    group.finish();
}

/// Owner 1 with 20 privacy keys of mixed rules; viewer 2 is local and not a friend, so the
/// `G` rules need the friend-of-friend merge of two 1 000-friend lists.
fn privacy_engine() -> (FriendsEngine, Vec<u8>) {
    let engine = two_big_users();
    let journal = big_journal();
    let rules = ["*G", "/3*0", "-5+7*G", "*2*4/G*A", "+9+11+13/0*A"];
    let mut keys = Vec::new();
    for i in 0..20 {
        let key = format!("album{i}");
        set(
            &engine,
            journal,
            &format!("privacy1_{key}"),
            rules[i % rules.len()],
        );
        keys.push(key);
    }
    (engine, format!("2~1:{}", keys.join(",")).into_bytes())
}

fn bench_privacy(c: &mut Criterion) {
    let (engine, key) = privacy_engine();
    let mut session = Session::default();
    let mut group = c.benchmark_group("friends");
    group.throughput(Throughput::Elements(1));
    group.bench_function("privacy_check_batch_20", |b| {
        b.iter(|| engine.get(black_box(&key), &mut session));
    });
    group.finish();
    let mut samples: Vec<u128> = (0..20_000)
        .map(|_| {
            let start = Instant::now();
            let _ = black_box(engine.get(&key, &mut session));
            start.elapsed().as_nanos()
        })
        .collect();
    samples.sort_unstable();
    let at = |q: f64| {
        // NOTE: an index into a 20 000-sample array.
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((samples.len() - 1) as f64 * q) as usize;
        samples[i]
    };
    println!(
        "privacy_check_batch_20 latency: p50 {} ns, p99 {} ns, max {} ns",
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

/// Prints bytes per edge for 2 000 users with 500 two-sided adds each (about 2 M edges).
fn report_memory(_c: &mut Criterion) {
    let engine = FriendsEngine::new(ShardSpec::default());
    let journal = &MemoryJournal::default();
    let mut session = Session::default();
    let others = ids(11, 1_000_000, 2000);
    for (i, f) in others.into_iter().enumerate() {
        // NOTE: i / 500 < 2000.
        #[expect(clippy::cast_possible_truncation)]
        let user = (i / 500) as u32 + 1;
        if user != f {
            let key = format!("friend{user}_{f}");
            let _ = engine.set(key.as_bytes(), 0, b"0", &mut session, journal);
        }
    }
    let stats = engine.stats();
    let stat = |name: &str| {
        stats
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    println!(
        "memory: {:?} edges, {:?} bytes, {:?} bytes per edge",
        stat("friends_edges"),
        stat("friends_memory_bytes"),
        stat("friends_bytes_per_edge")
    );
}

criterion_group!(benches, report_memory, bench_common, bench_privacy);
criterion_main!(benches);
