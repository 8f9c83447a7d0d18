//! kv replayed on apply threads ([`koshka_engine::Lanes`]) ends in exactly the state a serial
//! replay ends in: every partition's position, cas counter, delayed-flush marks and items
//! (with their cas uniques, flags, expiry), the memory accounting and the counters. Logs are
//! random mixes of every record type, delayed and immediate flushes, time passing (items
//! expire, flush deadlines pass mid-log), and fuzzy snapshots written while a writer runs;
//! replay starts from zero and from each snapshot (snapshot + tail). Through the host too.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use koshka_engine::{
    ApplyCtx, ArithOptions, Engine, Lanes, ManualClock, Recorded, RecordingJournal, StoreMode,
};
use koshka_kv::{Kv, KvConfig, PARTITIONS};
use proptest::prelude::*;

fn kv() -> Arc<Kv> {
    Arc::new(Kv::new(KvConfig::default()))
}

/// One partition of a snapshot body: (pos, cas counter, flush cas, flush seen, items sorted).
type PartImage = (u64, u64, u64, u32, Vec<Vec<u8>>);

/// The engine's whole state, independent of hash-table order: its snapshot body parsed, each
/// partition's items sorted, plus the accounting and counters `stats` reports.
#[derive(Debug, PartialEq, Eq)]
struct Image {
    flush_at: u32,
    parts: Vec<PartImage>,
    used: usize,
    stats: BTreeMap<String, String>,
}

fn image(kv: &Kv) -> Image {
    let mut body = Vec::new();
    kv.write_snapshot(&mut body).unwrap();
    let mut at = 0;
    let mut take = |n: usize| {
        at += n;
        &body[at - n..at]
    };
    assert_eq!(take(4), b"KVS2");
    let u32_of = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap());
    let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap());
    assert_eq!(u32_of(take(4)) as usize, PARTITIONS);
    let flush_at = u32_of(take(4));
    let mut parts = Vec::new();
    for _ in 0..PARTITIONS {
        let (pos, cas, flush_cas, flush_seen) = (
            u64_of(take(8)),
            u64_of(take(8)),
            u64_of(take(8)),
            u32_of(take(4)),
        );
        let count = u64_of(take(8));
        let mut items: Vec<Vec<u8>> = (0..count)
            .map(|_| {
                let len = u32_of(take(4)) as usize;
                take(len).to_vec()
            })
            .collect();
        items.sort();
        parts.push((pos, cas, flush_cas, flush_seen, items));
    }
    assert_eq!(at, body.len());
    Image {
        flush_at,
        parts,
        used: kv.used_bytes(),
        stats: kv.stats().into_iter().collect(),
    }
}

/// Replays `records` into `kv` on `threads` apply threads (1 = serial).
fn replay(kv: &Arc<Kv>, records: &[Recorded], threads: usize) {
    let mut lanes = Lanes::new(kv.clone(), threads);
    for r in records {
        let ctx = ApplyCtx {
            pos: r.appended.pos,
            time: r.appended.time,
        };
        lanes.apply(r.record_type, &r.payload, ctx).unwrap();
    }
    lanes.finish().unwrap();
    let keyed = records
        .iter()
        .any(|r| r.record_type != koshka_kv::record::FLUSH);
    let expected = if threads > 1 && keyed { threads } else { 0 };
    assert_eq!(lanes.threads(), expected);
}

/// A fresh engine from a snapshot body (or empty) plus `records` on `threads` threads.
fn restore(snapshot: Option<&[u8]>, records: &[Recorded], threads: usize) -> Arc<Kv> {
    let kv = kv();
    if let Some(mut body) = snapshot {
        kv.load_snapshot(&mut body).unwrap();
    }
    replay(&kv, records, threads);
    kv
}

#[derive(Debug, Clone)]
enum Op {
    Store(u8, u8, u32, i64, Vec<u8>),
    Delete(u8),
    Arith(u8, bool, u64),
    Touch(u8, i64),
    FlushNow,
    FlushLater(i64),
    Advance(u32),
    /// A snapshot written while another thread stores `n` items: fuzzy.
    Snapshot(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0u8..5, any::<u8>(), any::<u32>(), prop_oneof![Just(0i64), 1i64..30],
               proptest::collection::vec(b'0'..=b'9', 0..8))
            .prop_map(|(m, k, f, e, v)| Op::Store(m, k, f, e, v)),
        3 => any::<u8>().prop_map(Op::Delete),
        3 => (any::<u8>(), any::<bool>(), 0u64..1000).prop_map(|(k, i, d)| Op::Arith(k, i, d)),
        2 => (any::<u8>(), 0i64..30).prop_map(|(k, e)| Op::Touch(k, e)),
        1 => Just(Op::FlushNow),
        1 => (1i64..40).prop_map(Op::FlushLater),
        3 => (1u32..15).prop_map(Op::Advance),
        1 => any::<u8>().prop_map(Op::Snapshot),
    ]
}

fn key(k: u8) -> Vec<u8> {
    format!("key:{k}").into_bytes()
}

/// Runs `ops` on a live engine; returns the log and every snapshot with the index of the first
/// record replay must start from.
fn run(ops: &[Op]) -> (Vec<Recorded>, Vec<(Vec<u8>, usize)>) {
    let clock = Arc::new(ManualClock::new(1_700_000_000));
    let journal = RecordingJournal::with_clock(clock.clone());
    let live = kv();
    let mut snapshots = Vec::new();
    for op in ops {
        match op {
            Op::Store(mode, k, flags, exptime, value) => {
                let mode = [
                    StoreMode::Set,
                    StoreMode::Add,
                    StoreMode::Replace,
                    StoreMode::Append,
                    StoreMode::Prepend,
                ][usize::from(*mode)];
                live.store(mode, &key(*k), *flags, *exptime, 0, value, &journal)
                    .unwrap();
            }
            Op::Delete(k) => {
                live.delete(&key(*k), None, &journal).unwrap();
            }
            Op::Arith(k, incr, delta) => {
                live.arith(&key(*k), *incr, *delta, ArithOptions::default(), &journal)
                    .unwrap();
            }
            Op::Touch(k, exptime) => {
                live.touch(&key(*k), *exptime, &journal).unwrap();
            }
            Op::FlushNow => {
                live.flush_all(0, &journal).unwrap();
            }
            Op::FlushLater(delay) => {
                live.flush_all(*delay, &journal).unwrap();
            }
            Op::Advance(seconds) => clock.advance(*seconds),
            Op::Snapshot(n) => {
                // The position is taken before the body is written, as the host does.
                let start = journal.records().len();
                let mut body = Vec::new();
                std::thread::scope(|s| {
                    s.spawn(|| {
                        for i in 0..*n {
                            let k = key(i.wrapping_mul(37));
                            live.store(StoreMode::Set, &k, 0, 0, 0, b"w", &journal)
                                .unwrap();
                        }
                    });
                    live.write_snapshot(&mut body).unwrap();
                });
                snapshots.push((body, start));
            }
        }
    }
    (journal.records(), snapshots)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn replay_in_lanes_equals_serial_replay(
        ops in proptest::collection::vec(op(), 1..400),
        threads in 2usize..5,
    ) {
        let (records, snapshots) = run(&ops);
        let serial = image(&restore(None, &records, 1));
        prop_assert_eq!(&image(&restore(None, &records, threads)), &serial);
        for (body, start) in &snapshots {
            let serial = image(&restore(Some(body), &records[*start..], 1));
            let lanes = image(&restore(Some(body), &records[*start..], threads));
            prop_assert_eq!(&lanes, &serial);
        }
    }
}

/// Many records per lane, so batches fill and the reader waits for lanes; flushes in between
/// (barriers) while lanes hold full queues.
#[test]
fn a_long_log_with_barriers_replays_exactly() {
    let mut ops = Vec::new();
    for i in 0..60_000u32 {
        let k = (i.wrapping_mul(2_654_435_761) >> 24) as u8;
        let value = vec![b'a' + (i % 26) as u8; (i % 300) as usize];
        ops.push(Op::Store(0, k, i, 0, value));
        if i % 9_000 == 8_999 {
            ops.push(Op::FlushLater(5));
            ops.push(Op::Advance(6));
        }
        if i % 25_000 == 24_999 {
            ops.push(Op::FlushNow);
        }
    }
    let (records, _) = run(&ops);
    let serial = image(&restore(None, &records, 1));
    for threads in [2, 3, 4] {
        assert_eq!(
            image(&restore(None, &records, threads)),
            serial,
            "{threads}"
        );
    }
}

/// Through the host: a kv log with a snapshot in the middle, started with 1 and with 3 apply
/// threads, restores the same state.
#[test]
fn host_start_up_in_lanes_equals_serial() {
    use koshka_binlog::{Durability, Host, PersistConfig};
    let dir = tempfile::tempdir().unwrap();
    let config = |threads: usize| {
        let mut c = PersistConfig::new(dir.path(), "kv", &koshka_limits::Limits::test_min());
        c.durability = Durability::EverySec;
        c.snapshot_log_bytes = 0;
        c.snapshot_on_shutdown = false;
        c.progress = false;
        c.replay_threads = threads;
        c
    };
    {
        let live = kv();
        let host = Host::open(live.clone(), config(1)).unwrap();
        for i in 0..20_000u32 {
            let k = format!("key:{}", i % 3_000);
            live.store(
                StoreMode::Set,
                k.as_bytes(),
                i,
                0,
                0,
                &i.to_le_bytes(),
                host.journal(),
            )
            .unwrap();
            if i == 9_000 {
                host.snapshot_now().unwrap();
            }
            if i == 15_000 {
                live.flush_all(0, host.journal()).unwrap();
            }
        }
        host.shutdown().unwrap();
    }
    let start = |threads| {
        let engine = kv();
        let host = Host::open(engine.clone(), config(threads)).unwrap();
        let loaded = host
            .stats()
            .into_iter()
            .find(|(k, _)| k == "snapshot_loaded_pos")
            .unwrap()
            .1;
        drop(host);
        (image(&engine), loaded)
    };
    let (serial, loaded) = start(1);
    assert_ne!(loaded, "-1", "started from the snapshot");
    assert_eq!(start(3), (serial, loaded));
}
