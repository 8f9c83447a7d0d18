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
        if let Some((bytes, start)) = snapshot {
            let restored = kv();
            restored.load_snapshot(&mut bytes.as_slice()).unwrap();
            // Replay from the record at which the snapshot began (fuzzy snapshot contract).
            for (t, payload, a) in &records[start..] {
                restored.apply(*t, payload, ApplyCtx { pos: a.pos, time: a.time }).unwrap();
            }
            prop_assert_eq!(dump(&restored), dump(&live));
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
