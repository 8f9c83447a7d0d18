//! Ad-hoc timing of the append path's parts (not a benchmark; see benches/).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]
use koshka_binlog::format::RecordHeader;
use koshka_binlog::{Binlog, BinlogConfig, Durability};
use koshka_engine::{Journal, ShardSpec};
use std::time::Instant;
fn main() {
    let n = 2_000_000u32;
    let p = [7u8; 100];
    let t = Instant::now();
    let mut x = 0u32;
    for _ in 0..n {
        x ^= RecordHeader::new(1, std::hint::black_box(&p)).encode()[12] as u32;
    }
    println!("header+crc: {:?}/op ({x})", t.elapsed() / n);
    let t = Instant::now();
    for _ in 0..n {
        x ^= koshka_engine::unix_now();
    }
    println!("unix_now: {:?}/op ({x})", t.elapsed() / n);
    let dir = tempfile::tempdir().unwrap();
    let log = Binlog::open(BinlogConfig {
        dir: dir.path().into(),
        engine: "p".into(),
        shard: ShardSpec::default(),
        durability: Durability::EverySec,
        segment_size: 1 << 30,
        clock: std::sync::Arc::new(koshka_engine::SystemClock),
    })
    .unwrap();
    let t = Instant::now();
    for _ in 0..n {
        log.append(1, &p).unwrap();
    }
    println!("append: {:?}/op", t.elapsed() / n);
    log.close().unwrap();
}
