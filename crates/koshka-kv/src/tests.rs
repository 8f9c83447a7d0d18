use std::sync::Mutex as StdMutex;

use koshka_engine::StoreMode as M;
use koshka_engine::{Appended, Journal, MemoryJournal};
use proptest::prelude::*;

use super::*;

/// A journal that keeps every record so tests can replay them.
#[derive(Default)]
struct Recording {
    records: StdMutex<Vec<(u16, Vec<u8>, Appended)>>,
}

impl Journal for Recording {
    fn append(&self, record_type: u16, payload: &[u8]) -> Result<Appended> {
        let mut records = self.records.lock().unwrap();
        let pos = records.last().map_or(0, |r| r.2.pos) + payload.len() as u64 + 8;
        let appended = Appended {
            pos,
            time: koshka_engine::unix_now(),
        };
        records.push((record_type, payload.to_vec(), appended));
        Ok(appended)
    }
}

fn kv() -> Kv {
    Kv::new(KvConfig::default())
}

fn value_of(kv: &Kv, key: &[u8]) -> Option<Vec<u8>> {
    kv.read(key, |item| item.map(|i| i.value().to_vec()))
}

#[test]
fn store_modes() {
    let kv = kv();
    let j = MemoryJournal::default();
    let st = |mode, key: &[u8], data: &[u8], cas| {
        kv.store(mode, key, 0, 0, cas, data, &j)
            .unwrap()
            .outcome
            .outcome
    };
    assert_eq!(st(M::Add, b"a", b"1", 0), StoreOutcome::Stored);
    assert_eq!(st(M::Add, b"a", b"2", 0), StoreOutcome::NotStored);
    assert_eq!(st(M::Replace, b"b", b"2", 0), StoreOutcome::NotStored);
    assert_eq!(st(M::Replace, b"a", b"3", 0), StoreOutcome::Stored);
    assert_eq!(st(M::Append, b"a", b"4", 0), StoreOutcome::Stored);
    assert_eq!(st(M::Prepend, b"a", b"0", 0), StoreOutcome::Stored);
    assert_eq!(value_of(&kv, b"a").unwrap(), b"034");
    assert_eq!(st(M::Append, b"zz", b"4", 0), StoreOutcome::NotStored);
    let cas = kv.read(b"a", |i| i.unwrap().meta().cas);
    assert_eq!(st(M::Cas, b"a", b"x", cas + 1), StoreOutcome::Exists);
    assert_eq!(st(M::Cas, b"a", b"x", cas), StoreOutcome::Stored);
    assert_eq!(st(M::Cas, b"nope", b"x", cas), StoreOutcome::NotFound);
}

#[test]
fn arith_follows_memcached() {
    let kv = kv();
    let j = MemoryJournal::default();
    kv.store(M::Set, b"n", 5, 0, 0, b"10", &j).unwrap();
    let op = |incr, delta| {
        kv.arith(b"n", incr, delta, ArithOptions::default(), &j)
            .unwrap()
            .outcome
    };
    assert!(matches!(
        op(true, u64::MAX),
        ArithOutcome::Value { value: 9, .. }
    ));
    assert!(matches!(
        op(false, 100),
        ArithOutcome::Value { value: 0, .. }
    ));
    assert_eq!(kv.read(b"n", |i| i.unwrap().meta().flags), 5);
    kv.store(M::Set, b"s", 0, 0, 0, b"abc", &j).unwrap();
    assert_eq!(
        kv.arith(b"s", true, 1, ArithOptions::default(), &j)
            .unwrap()
            .outcome,
        ArithOutcome::NonNumeric
    );
    assert_eq!(
        kv.arith(b"x", true, 1, ArithOptions::default(), &j)
            .unwrap()
            .outcome,
        ArithOutcome::NotFound
    );
    let vivify = ArithOptions {
        vivify: Some(0),
        initial: 7,
        ..ArithOptions::default()
    };
    assert!(matches!(
        kv.arith(b"x", true, 1, vivify, &j).unwrap().outcome,
        ArithOutcome::Value { value: 7, .. }
    ));
}

#[test]
fn expiry_rules() {
    let now = 1_700_000_000;
    assert_eq!(absolute_exptime(0, now), 0);
    assert_eq!(absolute_exptime(-1, now), 1);
    assert_eq!(absolute_exptime(100, now), now + 100);
    assert_eq!(absolute_exptime(i64::from(now) + 5, now), now + 5);
    let kv = kv();
    let j = MemoryJournal::default();
    kv.store(M::Set, b"gone", 0, -1, 0, b"v", &j).unwrap();
    assert_eq!(value_of(&kv, b"gone"), None);
    kv.store(M::Set, b"t", 0, 0, 0, b"v", &j).unwrap();
    assert!(kv.touch(b"t", -1, &j).unwrap().outcome);
    assert_eq!(value_of(&kv, b"t"), None);
}

#[test]
fn flush_all_now_and_later() {
    let kv = kv();
    let j = MemoryJournal::default();
    kv.store(M::Set, b"a", 0, 0, 0, b"v", &j).unwrap();
    kv.flush_all(0, &j).unwrap();
    assert_eq!(value_of(&kv, b"a"), None);
    kv.store(M::Set, b"a", 0, 0, 0, b"v", &j).unwrap();
    kv.flush_all(100, &j).unwrap();
    assert!(
        value_of(&kv, b"a").is_some(),
        "a delayed flush leaves items until the deadline"
    );
}

#[test]
fn persistent_mode_refuses_when_full_and_cache_mode_evicts() {
    let small = KvConfig {
        memory_limit: PARTITIONS * 1024,
        ..KvConfig::default()
    };
    let j = MemoryJournal::default();
    let persistent = Kv::new(small);
    let mut refused = false;
    for i in 0..10_000 {
        if let Err(Error::OutOfMemory) =
            persistent.store(M::Set, format!("k{i}").as_bytes(), 0, 0, 0, &[0; 100], &j)
        {
            refused = true;
            break;
        }
    }
    assert!(refused);
    let cache = Kv::new(KvConfig {
        mode: Mode::Cache,
        ..small
    });
    for i in 0..10_000 {
        cache
            .store(M::Set, format!("k{i}").as_bytes(), 0, 0, 0, &[0; 100], &j)
            .unwrap();
    }
    assert!(cache.evictions.load(Ordering::Relaxed) > 0);
    assert!(cache.usage().1 <= small.memory_limit as u64);
    assert!(
        value_of(&cache, b"k9999").is_some(),
        "the newest item survives"
    );
}

#[test]
fn prefix_scan_lists_matching_keys() {
    let kv = kv();
    let j = MemoryJournal::default();
    for key in ["user:1", "user:2", "other"] {
        kv.store(M::Set, key.as_bytes(), 0, 0, 0, b"v", &j).unwrap();
    }
    let keys: Vec<_> = kv
        .prefix_scan(b"user:", koshka_engine::unix_now())
        .into_iter()
        .map(|(k, _, _)| k)
        .collect();
    assert_eq!(keys, vec![b"user:1".to_vec(), b"user:2".to_vec()]);
}

fn dump(kv: &Kv) -> Vec<(Vec<u8>, u32, Vec<u8>)> {
    kv.prefix_scan(b"", koshka_engine::unix_now())
}

#[derive(Debug, Clone)]
enum Op {
    Store(u8, u8, u32, Vec<u8>),
    Delete(u8),
    Arith(u8, bool, u64),
    Touch(u8),
    Flush,
    Snapshot,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..5, 0u8..20, any::<u32>(), proptest::collection::vec(b'0'..=b'9', 0..6))
            .prop_map(|(m, k, f, v)| Op::Store(m, k, f, v)),
        2 => (0u8..20).prop_map(Op::Delete),
        2 => (0u8..20, any::<bool>(), 0u64..1000).prop_map(|(k, i, d)| Op::Arith(k, i, d)),
        1 => (0u8..20).prop_map(Op::Touch),
        1 => Just(Op::Flush),
        1 => Just(Op::Snapshot),
    ]
}

proptest! {
    /// Replaying the log from zero, or a snapshot plus the records after the position it was
    /// started at, rebuilds exactly the live state.
    #[test]
    fn snapshot_plus_replay_equals_state(ops in proptest::collection::vec(op(), 1..120)) {
        let live = kv();
        let journal = Recording::default();
        let mut snapshot: Option<(Vec<u8>, usize)> = None;
        for op in ops {
            let key = |k: u8| format!("key{k}").into_bytes();
            match op {
                Op::Store(mode, k, flags, value) => {
                    let mode = [M::Set, M::Add, M::Replace, M::Append, M::Prepend][mode as usize];
                    live.store(mode, &key(k), flags, 0, 0, &value, &journal).unwrap();
                }
                Op::Delete(k) => { live.delete(&key(k), None, &journal).unwrap(); }
                Op::Arith(k, incr, d) => {
                    live.arith(&key(k), incr, d, ArithOptions::default(), &journal).unwrap();
                }
                Op::Touch(k) => { live.touch(&key(k), 1000, &journal).unwrap(); }
                Op::Flush => { live.flush_all(0, &journal).unwrap(); }
                Op::Snapshot => {
                    let start = journal.records.lock().unwrap().len();
                    let mut bytes = Vec::new();
                    live.write_snapshot(&mut bytes).unwrap();
                    snapshot = Some((bytes, start));
                }
            }
        }
        let records = journal.records.lock().unwrap().clone();
        let from_zero = kv();
        for (t, payload, a) in &records {
            from_zero.apply(*t, payload, ApplyCtx { pos: a.pos, time: a.time }).unwrap();
        }
        prop_assert_eq!(dump(&from_zero), dump(&live));
        check_accounting(&live);
        check_accounting(&from_zero);
        prop_assert_eq!(from_zero.used_bytes(), live.used_bytes());
        if let Some((bytes, start)) = snapshot {
            let restored = kv();
            restored.load_snapshot(&mut bytes.as_slice()).unwrap();
            // Replay from the record at which the snapshot began (fuzzy snapshot contract).
            for (t, payload, a) in &records[start..] {
                restored.apply(*t, payload, ApplyCtx { pos: a.pos, time: a.time }).unwrap();
            }
            prop_assert_eq!(dump(&restored), dump(&live));
            check_accounting(&restored);
            prop_assert_eq!(restored.used_bytes(), live.used_bytes());
        }
    }
}

#[test]
fn corrupt_snapshot_is_refused() {
    let kv = kv();
    assert!(kv.load_snapshot(&mut &b"XXXX"[..]).is_err());
    assert!(kv.load_snapshot(&mut &b"KVS2\x01\x00\x00\x00"[..]).is_err());
}

#[test]
fn delayed_flush_invalidates_items_written_before_the_deadline() {
    // Replay with chosen log times: k1 and k2 are written before the deadline (200), k3 after.
    let kv = kv();
    let mut payload = Vec::new();
    let records = [
        (
            Record::Set {
                key: b"k1",
                flags: 0,
                exptime: 0,
                value: b"1",
            },
            100,
        ),
        (Record::Flush { at: 200 }, 150),
        (
            Record::Set {
                key: b"k2",
                flags: 0,
                exptime: 0,
                value: b"2",
            },
            190,
        ),
        (
            Record::Set {
                key: b"k3",
                flags: 0,
                exptime: 0,
                value: b"3",
            },
            250,
        ),
    ];
    for (pos, (record, time)) in records.iter().enumerate() {
        record.encode(&mut payload);
        let ctx = ApplyCtx {
            pos: pos as u64 + 1,
            time: *time,
        };
        kv.apply(record.record_type(), &payload, ctx).unwrap();
    }
    assert_eq!(value_of(&kv, b"k1"), None);
    assert_eq!(value_of(&kv, b"k2"), None);
    assert_eq!(value_of(&kv, b"k3"), Some(b"3".to_vec()));
}

#[test]
fn snapshot_with_a_duplicate_key_is_refused() {
    // Found by the kv_snapshot fuzz target: a key twice used to load as two items.
    let item = Item::new(
        b"k",
        &[b"v"],
        ItemMeta {
            flags: 0,
            exptime: 0,
            cas: 1,
        },
    );
    let mut bytes = b"KVS2".to_vec();
    bytes.extend_from_slice(&(PARTITIONS as u32).to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    for index in 0..PARTITIONS {
        bytes.extend_from_slice(&[0; 8 + 8 + 8 + 4]);
        let copies: u64 = if index == Kv::partition_of(b"k") {
            2
        } else {
            0
        };
        bytes.extend_from_slice(&copies.to_le_bytes());
        for _ in 0..copies {
            bytes.extend_from_slice(&(item.raw().len() as u32).to_le_bytes());
            bytes.extend_from_slice(item.raw());
        }
    }
    let err = kv().load_snapshot(&mut bytes.as_slice()).unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
}

/// The engine-wide byte count, each partition's usage and its class counts all agree with
/// the items actually stored.
fn check_accounting(kv: &Kv) {
    let mut total = 0;
    for part in kv.partitions.iter() {
        let part = part.lock();
        let mut classes = [ClassCounts::ZERO; classes::CLASSES];
        let mut bytes = 0;
        for item in &part.table {
            let footprint = item.footprint();
            let counts = &mut classes[classes::class_index(footprint)];
            counts.items += 1;
            counts.bytes += footprint as u64;
            counts.chunks += classes::chunks_of(footprint);
            bytes += footprint;
        }
        assert_eq!(part.usage.bytes, bytes);
        for (counted, walked) in part.usage.classes.iter().zip(&classes) {
            assert_eq!(
                (counted.items, counted.bytes, counted.chunks),
                (walked.items, walked.bytes, walked.chunks)
            );
        }
        total += bytes;
    }
    assert_eq!(kv.used_bytes(), total);
}

const MIB: usize = 1024 * 1024;

fn limited(mode: Mode, memory_limit: usize) -> Kv {
    Kv::new(KvConfig {
        mode,
        memory_limit,
        value_size_max: MIB,
    })
}

#[test]
fn a_large_value_fits_an_empty_engine_in_both_modes() {
    // The limit is the engine's, not split into per-partition budgets: a 1 MiB value at a
    // 64 MiB limit (1/64 of it, four times a 1/256 share) is stored.
    let j = MemoryJournal::default();
    for mode in [Mode::Persistent, Mode::Cache] {
        let kv = limited(mode, 64 * MIB);
        let value = vec![b'v'; MIB];
        let outcome = kv.store(M::Set, b"big", 0, 0, 0, &value, &j).unwrap();
        assert_eq!(outcome.outcome.outcome, StoreOutcome::Stored, "{mode:?}");
        assert_eq!(value_of(&kv, b"big").map(|v| v.len()), Some(MIB));
        check_accounting(&kv);
    }
}

#[test]
fn persistent_mode_fills_the_whole_limit_then_refuses() {
    let j = MemoryJournal::default();
    let kv = limited(Mode::Persistent, 16 * MIB);
    let value = vec![b'v'; 256 * 1024];
    let mut stored = 0;
    for i in 0..100 {
        match kv.store(M::Set, format!("k{i}").as_bytes(), 0, 0, 0, &value, &j) {
            Ok(_) => stored += 1,
            Err(Error::OutOfMemory) => break,
            Err(e) => panic!("{e}"),
        }
    }
    // 16 MiB holds 63 such items with their overhead; a per-partition split held 0.
    assert_eq!(stored, 63);
    assert!(kv.used_bytes() <= 16 * MIB);
    // Room freed in any partition serves a write to any other.
    kv.delete(b"k0", None, &j).unwrap();
    let stored = kv.store(M::Set, b"elsewhere", 0, 0, 0, &value, &j).unwrap();
    assert_eq!(stored.outcome.outcome, StoreOutcome::Stored);
    // Overwriting a key with a value of the same size needs no new room.
    let stored = kv.store(M::Set, b"k1", 0, 0, 0, &value, &j).unwrap();
    assert_eq!(stored.outcome.outcome, StoreOutcome::Stored);
    let refused = kv.store(M::Set, b"more", 0, 0, 0, &value, &j);
    assert!(matches!(refused, Err(Error::OutOfMemory)));
    let outofmemory: u64 = kv.class_stats().iter().map(|c| c.counts.outofmemory).sum();
    assert!(outofmemory >= 1);
    check_accounting(&kv);
}

#[test]
fn cache_mode_keeps_storing_large_values() {
    // Sustained writes of large values: each one evicts across partitions as needed.
    let j = MemoryJournal::default();
    let kv = limited(Mode::Cache, 64 * MIB);
    let value = vec![b'v'; MIB - 100];
    for i in 0..1000 {
        let key = format!("big{i}");
        let outcome = kv.store(M::Set, key.as_bytes(), 0, 0, 0, &value, &j);
        assert!(outcome.is_ok(), "write {i}: {outcome:?}");
        assert!(kv.used_bytes() <= 64 * MIB, "write {i}");
        assert!(
            value_of(&kv, key.as_bytes()).is_some(),
            "write {i} was evicted"
        );
    }
    assert!(kv.evictions.load(Ordering::Relaxed) >= 900);
    assert!(kv.usage().0 >= 50, "the cache stays nearly full");
    check_accounting(&kv);
    // A value larger than the whole limit is refused without emptying the cache.
    let huge = limited(Mode::Cache, MIB / 2);
    huge.store(M::Set, b"small", 0, 0, 0, b"v", &j).unwrap();
    assert!(matches!(
        huge.store(M::Set, b"huge", 0, 0, 0, &vec![0; MIB - 100], &j),
        Err(Error::OutOfMemory)
    ));
    assert!(value_of(&huge, b"small").is_some());
}

#[test]
fn eviction_spares_the_item_being_appended_to() {
    let j = MemoryJournal::default();
    let kv = limited(Mode::Cache, 4 * MIB);
    let value = vec![b'a'; 512 * 1024];
    kv.store(M::Set, b"base", 0, 0, 0, &value, &j).unwrap();
    for i in 0..6 {
        kv.store(M::Set, format!("k{i}").as_bytes(), 0, 0, 0, &value, &j)
            .unwrap();
    }
    // Appending needs room for the whole new value: others go, "base" grows.
    let outcome = kv.store(M::Append, b"base", 0, 0, 0, &value, &j).unwrap();
    assert_eq!(outcome.outcome.outcome, StoreOutcome::Stored);
    assert_eq!(
        value_of(&kv, b"base").map(|v| v.len()),
        Some(2 * value.len())
    );
    check_accounting(&kv);
}

#[test]
fn the_sweep_frees_expired_items() {
    let j = MemoryJournal::default();
    let kv = kv();
    let now = koshka_engine::unix_now();
    for i in 0..50 {
        kv.store(M::Set, format!("short{i}").as_bytes(), 0, 100, 0, b"v", &j)
            .unwrap();
        kv.store(M::Set, format!("long{i}").as_bytes(), 0, 1000, 0, b"v", &j)
            .unwrap();
        kv.store(M::Set, format!("never{i}").as_bytes(), 0, 0, 0, b"v", &j)
            .unwrap();
    }
    let before = kv.used_bytes();
    assert_eq!(kv.reclaim_expired(now), 0, "nothing has expired yet");
    assert_eq!(kv.reclaim_expired(now + 500), 50);
    assert_eq!(kv.usage().0, 100);
    assert!(kv.used_bytes() < before);
    assert_eq!(kv.reclaim_expired(now + 500), 0, "already swept");
    assert_eq!(kv.reclaim_expired(now + 5000), 50);
    assert_eq!(kv.usage().0, 50);
    let reclaimed: u64 = kv.class_stats().iter().map(|c| c.counts.reclaimed).sum();
    let swept: u64 = kv
        .class_stats()
        .iter()
        .map(|c| c.counts.crawler_reclaimed)
        .sum();
    assert_eq!((reclaimed, swept), (100, 100));
    check_accounting(&kv);
    kv.reset_stats();
    assert!(kv.class_stats().iter().all(|c| c.counts.reclaimed == 0));
    assert_eq!(kv.usage().0, 50, "reset keeps what is stored");
}

#[test]
fn a_delayed_flush_is_swept_once_due() {
    let j = MemoryJournal::default();
    let kv = kv();
    kv.store(M::Set, b"a", 0, 0, 0, b"v", &j).unwrap();
    kv.flush_all(100, &j).unwrap();
    let now = koshka_engine::unix_now();
    assert_eq!(kv.reclaim_expired(now), 0);
    assert_eq!(kv.reclaim_expired(now + 200), 1);
    assert_eq!(kv.usage(), (0, 0));
}

#[test]
fn items_are_counted_in_memcached_size_classes() {
    // memcached's issue_29.t and issue_42.t, against the engine.
    let j = MemoryJournal::default();
    let kv = kv();
    kv.store(M::Set, b"issue29", 0, 0, 0, b"", &j).unwrap();
    assert_eq!(kv.class_stats()[0].counts.chunks, 1);
    kv.store(M::Set, b"issue29_b", 0, 0, 0, b"", &j).unwrap();
    assert_eq!(kv.class_stats()[0].counts.chunks, 2);
    let kv = self::kv();
    for i in 0..10 {
        kv.store(
            M::Set,
            format!("key{i}").as_bytes(),
            0,
            0,
            0,
            &[b'B'; 10],
            &j,
        )
        .unwrap();
    }
    let first = kv.class_stats()[0];
    assert_eq!(first.counts.items, 10);
    assert!(first.counts.bytes > 500 && first.counts.bytes < 10 * first.chunk_size as u64);
    // A chained large item takes one largest chunk per 512 KiB.
    kv.store(M::Set, b"large", 0, 0, 0, &vec![0; 600 * 1024], &j)
        .unwrap();
    let largest = kv.class_stats()[classes::CLASSES - 1];
    assert_eq!((largest.counts.items, largest.counts.chunks), (1, 2));
    let histogram = kv.size_histogram(32);
    assert_eq!(histogram.iter().map(|(_, n)| n).sum::<u64>(), 11);
    assert!(histogram.iter().all(|(size, _)| size % 32 == 0));
}
