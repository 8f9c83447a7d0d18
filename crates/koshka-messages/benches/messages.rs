//! Criterion benches of the messages engine: send, page read, dialogs list and a two-word
//! search in a 10 000-message mailbox.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use koshka_engine::{Direct, MemoryJournal, Session, ShardSpec};
use koshka_messages::{Flavour, MessagesEngine};

const MAILBOX: usize = 10_000;
const VOCABULARY: [&str; 16] = [
    "привет",
    "сообщение",
    "встреча",
    "завтра",
    "hello",
    "world",
    "running",
    "meeting",
    "проект",
    "отчёт",
    "deadline",
    "release",
    "кошка",
    "база",
    "данных",
    "search",
];

/// An engine whose user 1 has a 10 000-message mailbox with 100 peers.
fn filled() -> (MessagesEngine, MemoryJournal) {
    let engine = MessagesEngine::new(Flavour::Messages, ShardSpec::default());
    let journal = MemoryJournal::default();
    let mut session = Session::default();
    for i in 0..MAILBOX {
        let peer = 2 + (i % 100);
        let words: Vec<&str> = (0..8)
            .map(|k| VOCABULARY[(i * 7 + k * 13 + i / 3) % 16])
            .collect();
        let value = format!("0\nТема {i}\t{}", words.join(" "));
        let key = if i % 2 == 0 {
            format!("sendmsg1_{peer}")
        } else {
            format!("sendmsg{peer}_1")
        };
        engine
            .set(key.as_bytes(), 0, value.as_bytes(), &mut session, &journal)
            .unwrap();
    }
    (engine, journal)
}

fn benches(c: &mut Criterion) {
    let (engine, journal) = filled();
    let mut session = Session::default();
    let mut group = c.benchmark_group("messages");
    group.throughput(Throughput::Elements(1));
    let mut n = 0u64;
    group.bench_function("send", |b| {
        b.iter(|| {
            n += 1;
            let key = format!("sendmsg{}_{}#t", 1000 + n % 500, 2000 + n % 700);
            engine
                .set(
                    key.as_bytes(),
                    0,
                    b"0\nsubject\thello world message",
                    &mut session,
                    &journal,
                )
                .unwrap()
        });
    });
    group.bench_function("page_read_sublist_20", |b| {
        b.iter(|| {
            engine
                .get(black_box(b"sublist1_130:0#-1,-20"), &mut session)
                .unwrap()
        });
    });
    group.bench_function("dialogs_20", |b| {
        b.iter(|| {
            engine
                .get(black_box(b"topmsglist1#-1,-20"), &mut session)
                .unwrap()
        });
    });
    group.bench_function("message_read", |b| {
        b.iter(|| {
            engine
                .get(black_box(b"message1_5000#0,200"), &mut session)
                .unwrap()
        });
    });
    let query = format!("search(1,20,{}+{})", pct("сообщение"), "meeting");
    group.bench_function("search_two_words_10k", |b| {
        b.iter(|| {
            engine
                .get(black_box(query.as_bytes()), &mut session)
                .unwrap()
        });
    });
    group.finish();
    // The target is a p99, which criterion does not report: time single queries directly.
    let mut samples: Vec<u128> = (0..2000)
        .map(|_| {
            let started = std::time::Instant::now();
            black_box(engine.get(query.as_bytes(), &mut session).unwrap());
            started.elapsed().as_nanos()
        })
        .collect();
    samples.sort_unstable();
    println!(
        "search_two_words_10k latency: p50 {} us, p99 {} us (target p99 <= 1000 us)",
        samples[samples.len() / 2] / 1000,
        samples[samples.len() * 99 / 100] / 1000
    );
}

fn pct(word: &str) -> String {
    word.bytes().map(|b| format!("%{b:02X}")).collect()
}

criterion_group!(group, benches);
criterion_main!(group);
