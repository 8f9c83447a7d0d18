//! In-process micro-benchmarks of the kv engine: the cost of a get hit and a set, without
//! sockets, to judge changes below the noise of loopback benchmarks.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use koshka_engine::MemoryJournal;
use koshka_engine::StoreMode;
use koshka_kv::{Kv, KvConfig};

fn bench(c: &mut Criterion) {
    let kv = Kv::new(KvConfig::default());
    let journal = MemoryJournal::default();
    let value = [b'x'; 100];
    let keys: Vec<String> = (0..100_000).map(|i| format!("key:{i:028}")).collect();
    for key in &keys {
        kv.store(StoreMode::Set, key.as_bytes(), 0, 0, 0, &value, &journal)
            .unwrap();
    }
    let mut group = c.benchmark_group("kv");
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("get_hit_100B", |b| {
        let mut out = Vec::with_capacity(4096);
        b.iter(|| {
            i = (i + 7919) % keys.len();
            out.clear();
            kv.read(keys[i].as_bytes(), |item| {
                if let Some(item) = item {
                    out.extend_from_slice(item.value());
                }
            });
        });
    });
    group.bench_function("set_100B", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            kv.store(
                StoreMode::Set,
                keys[i].as_bytes(),
                0,
                0,
                0,
                &value,
                &journal,
            )
            .unwrap();
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
