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
    // The target is a p99, which criterion does not report: time single queries directly,
    // by the wall clock and by the thread's CPU clock (which a busy machine's preemptions
    // do not inflate).
    let mut wall: Vec<u64> = Vec::with_capacity(2000);
    let mut cpu: Vec<u64> = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let (started, started_cpu) = (std::time::Instant::now(), thread_cpu_ns());
        black_box(engine.get(query.as_bytes(), &mut session).unwrap());
        cpu.push(thread_cpu_ns() - started_cpu);
        wall.push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
    let percentile = |samples: &mut Vec<u64>, q: usize| {
        samples.sort_unstable();
        samples[samples.len() * q / 100] / 1000
    };
    println!(
        "search_two_words_10k latency: wall p50 {} us, p99 {} us; thread CPU p50 {} us, p99 {} \
         us (target p99 <= 1000 us)",
        percentile(&mut wall, 50),
        percentile(&mut wall, 99),
        percentile(&mut cpu, 50),
        percentile(&mut cpu, 99),
    );
}

/// This thread's CPU time in nanoseconds.
#[allow(unsafe_code)]
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(ok, 0, "clock_gettime");
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

fn pct(word: &str) -> String {
    word.bytes().map(|b| format!("%{b:02X}")).collect()
}

criterion_group!(group, benches);
criterion_main!(group);
