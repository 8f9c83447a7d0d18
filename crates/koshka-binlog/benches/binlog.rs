//! Append throughput and replay speed of 100-byte records.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use koshka_binlog::{replay, Binlog, BinlogConfig, Durability, ReadOptions};
use koshka_engine::{Journal, ShardSpec};

const PAYLOAD: usize = 100;
const REPLAY_RECORDS: u64 = 500_000;

fn cfg(dir: &std::path::Path, durability: Durability) -> BinlogConfig {
    BinlogConfig {
        dir: dir.to_path_buf(),
        engine: "bench".into(),
        shard: ShardSpec::default(),
        durability,
        segment_size: 64 * 1024 * 1024,
        clock: std::sync::Arc::new(koshka_engine::SystemClock),
    }
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("append_100b");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(1));
    let dir = tempfile::tempdir().unwrap();
    let log = Binlog::open(cfg(dir.path(), Durability::EverySec)).unwrap();
    let payload = [7u8; PAYLOAD];
    g.bench_function("everysec_1_thread", |b| {
        b.iter(|| log.append(1, &payload).unwrap())
    });
    drop(log);
    for (name, durability, threads) in [
        ("everysec_8_threads_wait_acked", Durability::EverySec, 8u64),
        ("always_8_threads_wait_acked", Durability::Always, 8),
        ("always_64_threads_wait_acked", Durability::Always, 64),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Binlog::open(cfg(dir.path(), durability)).unwrap());
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(threads);
                let start = Instant::now();
                std::thread::scope(|s| {
                    for _ in 0..threads {
                        let log = &log;
                        s.spawn(move || {
                            for _ in 0..per {
                                let a = log.append(1, &payload).unwrap();
                                log.wait_acked_blocking(a.pos).unwrap();
                            }
                        });
                    }
                });
                start.elapsed()
            });
        });
    }
    g.finish();
}

fn replay_bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Binlog::open(cfg(dir.path(), Durability::EverySec)).unwrap();
        let payload = [7u8; PAYLOAD];
        for _ in 0..REPLAY_RECORDS {
            log.append(1, &payload).unwrap();
        }
        log.close().unwrap();
    }
    let mut g = c.benchmark_group("replay_100b");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(REPLAY_RECORDS));
    g.bench_function("records", |b| {
        b.iter_batched(
            || (),
            |()| {
                let mut n = 0u64;
                replay(
                    dir.path(),
                    "bench",
                    None,
                    ReadOptions::default(),
                    &mut |r| {
                        n += r.payload.len() as u64;
                        Ok(())
                    },
                    None,
                )
                .unwrap();
                n
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

criterion_group!(benches, append, replay_bench);
criterion_main!(benches);
