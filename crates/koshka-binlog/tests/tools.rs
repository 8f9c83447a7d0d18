//! `verify`, `dump` and `stat` over real directories.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{segments, CounterEngine};
use koshka_binlog::{dump, stat, verify, Durability, Host, PersistConfig};
use koshka_limits::Limits;

fn make(dir: &std::path::Path) {
    let mut cfg = PersistConfig::new(dir, "counter", &Limits::test_min());
    cfg.segment_size = 4096;
    cfg.durability = Durability::EverySec;
    cfg.progress = false;
    let engine = Arc::new(CounterEngine::default());
    let host = Host::open(engine.clone(), cfg).unwrap();
    for i in 0..500u64 {
        engine.add(i, 1, host.journal()).unwrap();
        if i == 250 {
            host.snapshot_now().unwrap();
        }
    }
    host.shutdown().unwrap();
}

#[test]
fn verify_stat_dump() {
    let dir = tempfile::tempdir().unwrap();
    make(dir.path());
    let report = verify(dir.path()).unwrap();
    assert!(report.is_ok(), "{report}");
    let e = &report.engines[0];
    assert_eq!(e.engine, "counter");
    assert!(e.records >= 500);
    assert_eq!(e.segments.iter().map(|s| s.records).sum::<u64>(), e.records);
    assert_eq!(e.snapshots.len(), 2);
    assert!(e.snapshots.iter().all(|s| s.error.is_none()));
    let text = report.to_string();
    assert!(
        text.contains("segment") && text.contains("snapshot"),
        "{text}"
    );

    let s = stat(dir.path()).unwrap();
    assert_eq!(s.engines[0].records, e.records);

    let mut out = Vec::new();
    dump(dir.path(), 0, &mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert_eq!(out.lines().count() as u64, e.records + 1);
    assert!(out.contains("TIME"));
    // From the middle: a record boundary.
    let mut out2 = Vec::new();
    let mid = e.segments[2].start;
    dump(dir.path(), mid, &mut out2).unwrap();
    assert!(out2.len() < out.len());
}

#[test]
fn verify_reports_corruption_and_bad_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    make(dir.path());
    let seg = &segments(dir.path())[1];
    let mut bytes = std::fs::read(seg).unwrap();
    bytes[100] ^= 1;
    std::fs::write(seg, bytes).unwrap();
    let snap = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "snap"))
        .unwrap();
    let mut bytes = std::fs::read(&snap).unwrap();
    bytes[70] ^= 1;
    std::fs::write(&snap, bytes).unwrap();
    let report = verify(dir.path()).unwrap();
    assert!(!report.is_ok());
    let e = &report.engines[0];
    let err = e.error.as_deref().unwrap();
    assert!(
        err.contains(&seg.display().to_string()) && err.contains("offset"),
        "{err}"
    );
    assert!(e.snapshots.iter().any(|s| s.error.is_some()));
}
