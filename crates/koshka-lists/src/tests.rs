//! The model test (random operations and restarts against a `BTreeMap` model) and unit
//! tests of replies, limits and snapshots.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use koshka_engine::{
    Direct, Engine, ManualClock, RecordingJournal, Session, ShardSpec, StoreOutcome,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

/// (list, object) → (flags, value, date).
type Model = BTreeMap<(i32, i32), (u8, i64, u32)>;

fn get(engine: &ListsEngine, key: &str) -> Option<String> {
    let mut session = Session::default();
    engine
        .get(key.as_bytes(), &mut session)
        .unwrap()
        .map(|v| String::from_utf8(v.data).unwrap())
}

/// What `list<list>[_and:xor],mode#limit,offset` (or an intersection) must answer.
fn expect_list(
    model: &Model,
    list: i32,
    (and, xor): (u32, u32),
    mode: u32,
    (limit, offset): (usize, usize),
    other: Option<(&BTreeSet<i32>, bool)>,
) -> String {
    let mut picks: Vec<(i32, (u8, i64, u32))> = model
        .range((list, i32::MIN)..=(list, i32::MAX))
        .filter(|(_, (f, _, _))| (u32::from(*f) ^ xor) & and == 0)
        .filter(|((_, o), _)| other.is_none_or(|(set, sub)| set.contains(o) != sub))
        .map(|((_, o), v)| (*o, *v))
        .collect();
    match mode & 7 {
        1 => picks.reverse(),
        2 => picks.sort_by_key(|(o, (_, _, d))| (*d, *o)),
        3 => picks.sort_by_key(|(o, (_, _, d))| (std::cmp::Reverse(*d), *o)),
        4 => picks.sort_by_key(|(o, (_, v, _))| (*v, *o)),
        5 => picks.sort_by_key(|(o, (_, v, _))| (std::cmp::Reverse(*v), *o)),
        _ => {}
    }
    let mut out = picks.len().to_string();
    for (o, (f, v, d)) in picks.iter().skip(offset).take(limit) {
        out += &format!(",{o}");
        if mode & 8 != 0 {
            out += &format!(",{f}");
        }
        if mode & 16 != 0 {
            out += &format!(",{d}");
        }
        if mode & 32 != 0 {
            out += &format!(",{v}");
        }
    }
    out
}

fn restart(
    engine: &ListsEngine,
    snapshot: &[u8],
    journal: &RecordingJournal,
    reverse: bool,
) -> ListsEngine {
    let fresh = ListsEngine::with_reverse_index(ShardSpec::default(), reverse);
    fresh.load_snapshot(&mut &snapshot[..]).unwrap();
    journal.replay_into(&fresh).unwrap();
    // The same state as the engine that ran: compare canonical snapshots.
    let (mut a, mut b) = (Vec::new(), Vec::new());
    engine.write_snapshot(&mut a).unwrap();
    fresh.write_snapshot(&mut b).unwrap();
    assert_eq!(strip_positions(&a), strip_positions(&b));
    fresh
}

/// A snapshot's entries without partition positions (a live `delete object…` moves every
/// partition; its replay only those it is new to).
fn strip_positions(snap: &[u8]) -> Vec<u8> {
    let mut out = snap[..12].to_vec();
    let mut at = 12;
    while at < snap.len() {
        at += 8; // pos
        let lists = u32::from_le_bytes(snap[at..at + 4].try_into().unwrap()) as usize;
        let start = at;
        at += 4;
        for _ in 0..lists {
            let len = u32::from_le_bytes(snap[at + 4..at + 8].try_into().unwrap()) as usize;
            at += 8 + len * 17;
        }
        out.extend_from_slice(&snap[start..at]);
    }
    out
}

/// Replays every record of `journal` serially and on 3 apply threads ([`koshka_engine::Lanes`]):
/// both end in the same state.
fn lanes_match_serial(journal: &RecordingJournal, make: impl Fn() -> ListsEngine) {
    let serial = make();
    journal.replay_into(&serial).unwrap();
    let parallel = Arc::new(make());
    let mut lanes = koshka_engine::Lanes::new(parallel.clone(), 3);
    for r in journal.records() {
        let ctx = koshka_engine::ApplyCtx {
            pos: r.appended.pos,
            time: r.appended.time,
        };
        lanes.apply(r.record_type, &r.payload, ctx).unwrap();
    }
    lanes.finish().unwrap();
    drop(lanes);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    serial.write_snapshot(&mut a).unwrap();
    parallel.write_snapshot(&mut b).unwrap();
    assert!(a == b, "replay on lanes differs from serial replay");
}

#[test]
fn model_random_operations_and_restarts() {
    for seed in 0..6u64 {
        run_model(seed, 1500);
    }
}

/// Even seeds run with the reverse index, odd ones without.
fn run_model(seed: u64, steps: usize) {
    let reverse = seed & 1 == 0;
    let mut rng = StdRng::seed_from_u64(seed);
    let clock = Arc::new(ManualClock::new(1_700_000_000));
    let journal = RecordingJournal::with_clock(clock.clone());
    let mut engine = ListsEngine::with_reverse_index(ShardSpec::default(), reverse);
    let mut snapshot = Vec::new();
    ListsEngine::new(ShardSpec::default())
        .write_snapshot(&mut snapshot)
        .unwrap();
    let mut session = Session::default();
    let mut model = Model::new();
    let lists = [1, 2, -3, 65, 129, -2_147_483_647];
    let id = |rng: &mut StdRng| -> i32 {
        if rng.gen_bool(0.1) {
            -rng.gen_range(1..20)
        } else {
            rng.gen_range(1..40)
        }
    };
    for step in 0..steps {
        if rng.gen_bool(0.3) {
            clock.advance(rng.gen_range(0..3));
        }
        let list = lists[rng.gen_range(0..lists.len())];
        let object = id(&mut rng);
        let now = clock.now_for_test();
        match rng.gen_range(0..100) {
            0..=34 => {
                let (flags, value) = (rng.gen::<u8>() & 0x0f, rng.gen_range(-50..50));
                let key = format!("entry{list}_{object}");
                let v = format!("{flags},{value}");
                assert_eq!(
                    engine
                        .set(key.as_bytes(), 0, v.as_bytes(), &mut session, &journal)
                        .unwrap(),
                    StoreOutcome::Stored
                );
                let date = model.get(&(list, object)).map_or(now, |e| e.2);
                model.insert((list, object), (flags, value, date));
            }
            35..=44 => {
                let key = format!("entry{list}_{object}");
                let found = engine
                    .delete(key.as_bytes(), &mut session, &journal)
                    .unwrap();
                assert_eq!(found, model.remove(&(list, object)).is_some());
            }
            45..=52 => {
                let bits: u8 = rng.gen_range(0..16);
                let incr = rng.gen_bool(0.5);
                let key = format!("flags{list}_{object}");
                let delta = if incr {
                    i64::from(bits)
                } else {
                    -i64::from(bits)
                };
                let got = engine
                    .incr(key.as_bytes(), delta, &mut session, &journal)
                    .unwrap();
                let want = model.get_mut(&(list, object)).map(|e| {
                    e.0 = if incr { e.0 | bits } else { e.0 & !bits };
                    u64::from(e.0)
                });
                assert_eq!(got, want);
            }
            53..=60 => {
                let delta = rng.gen_range(-20..20);
                let key = format!("value{list}_{object}");
                let got = engine
                    .incr(key.as_bytes(), delta, &mut session, &journal)
                    .unwrap();
                let want = model.get_mut(&(list, object)).map(|e| {
                    e.1 += delta;
                    u64::try_from(e.1).unwrap_or(0)
                });
                assert_eq!(got, want);
            }
            61..=64 => {
                let (key, value, flags) = if rng.gen_bool(0.5) {
                    let f: u8 = rng.gen_range(0..16);
                    (format!("flags{list}_{object}"), f.to_string(), Some(f))
                } else {
                    let v: i64 = rng.gen_range(-9..9);
                    (format!("value{list}_{object}"), v.to_string(), None)
                };
                let got = engine
                    .set(key.as_bytes(), 0, value.as_bytes(), &mut session, &journal)
                    .unwrap();
                let want = match model.get_mut(&(list, object)) {
                    Some(e) => {
                        match flags {
                            Some(f) => e.0 = f,
                            None => e.1 = value.parse().unwrap(),
                        }
                        StoreOutcome::Stored
                    }
                    None => StoreOutcome::NotStored,
                };
                assert_eq!(got, want);
            }
            65..=66 => {
                let found = engine
                    .delete(format!("list{list}").as_bytes(), &mut session, &journal)
                    .unwrap();
                let before = model.len();
                model.retain(|(l, _), _| *l != list);
                assert_eq!(found, model.len() != before);
            }
            67..=68 => {
                let found = engine
                    .delete(format!("object{object}").as_bytes(), &mut session, &journal)
                    .unwrap();
                let before = model.len();
                model.retain(|(_, o), _| *o != object);
                assert_eq!(found, model.len() != before);
            }
            69..=70 => {
                engine = restart(&engine, &snapshot, &journal, reverse);
                session = Session::default();
            }
            71 => {
                snapshot.clear();
                engine.write_snapshot(&mut snapshot).unwrap();
            }
            _ => {
                // Reads.
                let filter = if rng.gen_bool(0.5) {
                    (0, 0)
                } else {
                    (rng.gen_range(0..16), rng.gen_range(0..16))
                };
                let mode = rng.gen_range(0..6) | (rng.gen_range(0..8) << 3);
                let (limit, offset) = (rng.gen_range(0..12), rng.gen_range(0..4));
                let key = format!(
                    "list{list}_{}:{},{mode}#{limit},{offset}",
                    filter.0, filter.1
                );
                let want = expect_list(&model, list, filter, mode, (limit, offset), None);
                assert_eq!(
                    get(&engine, &key).unwrap(),
                    want,
                    "seed {seed} step {step} {key}"
                );
                let count = format!("count{list}_{}:{}", filter.0, filter.1);
                let want_count = expect_list(&model, list, filter, 0, (0, 0), None);
                assert_eq!(get(&engine, &count).unwrap(), want_count);

                let ids: BTreeSet<i32> = (0..rng.gen_range(0..8)).map(|_| id(&mut rng)).collect();
                let subtract = rng.gen_bool(0.3);
                let joined: Vec<String> = ids.iter().map(ToString::to_string).collect();
                let name = if subtract { "subtract" } else { "intersect" };
                let key = format!(
                    "{name}{list}_{}:{},{mode}:{}#{limit},{offset}",
                    filter.0,
                    filter.1,
                    joined.join(",")
                );
                let want = expect_list(
                    &model,
                    list,
                    filter,
                    mode,
                    (limit, offset),
                    Some((&ids, subtract)),
                );
                assert_eq!(get(&engine, &key).unwrap(), want, "{key}");
                // The same through a temp list.
                engine
                    .set(
                        b"tempt",
                        0,
                        joined.join(",").as_bytes(),
                        &mut session,
                        &journal,
                    )
                    .unwrap();
                let key = format!(
                    "{name}{list}_{}:{},{mode}:-t#{limit},{offset}",
                    filter.0, filter.1
                );
                let got = engine.get(key.as_bytes(), &mut session).unwrap().unwrap();
                assert_eq!(String::from_utf8(got.data).unwrap(), want);

                let lists_of: Vec<String> = model
                    .keys()
                    .filter(|(_, o)| *o == object)
                    .map(|(l, _)| *l)
                    .collect::<BTreeSet<i32>>()
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                let want = std::iter::once(lists_of.len().to_string())
                    .chain(lists_of)
                    .collect::<Vec<_>>()
                    .join(",");
                assert_eq!(
                    get(&engine, &format!("object_lists{object}")).unwrap(),
                    want
                );

                let entry = get(&engine, &format!("entry{list}_{object}"));
                let want = model
                    .get(&(list, object))
                    .map(|(f, v, d)| format!("{f},{v},{d}"));
                assert_eq!(entry, want);
            }
        }
    }
    let stats: BTreeMap<String, String> = engine.stats().into_iter().collect();
    assert_eq!(stats["lists_entries"], model.len().to_string());
    assert_eq!(stats["lists_reverse_index"], u8::from(reverse).to_string());
    lanes_match_serial(&journal, || {
        ListsEngine::with_reverse_index(ShardSpec::default(), reverse)
    });
}

trait NowForTest {
    fn now_for_test(&self) -> u32;
}

impl NowForTest for ManualClock {
    fn now_for_test(&self) -> u32 {
        koshka_engine::Clock::now(self)
    }
}

#[test]
fn replies_and_errors() {
    let engine = ListsEngine::new(ShardSpec::default());
    let journal = RecordingJournal::default();
    let mut s = Session::default();
    for (o, f, v) in [(5, 1, 10), (-7, 3, 30), (9, 2, 20)] {
        let value = format!("{f},{v}");
        engine
            .set(
                format!("entry100_{o}").as_bytes(),
                0,
                value.as_bytes(),
                &mut s,
                &journal,
            )
            .unwrap();
    }
    assert_eq!(get(&engine, "list100").unwrap(), "3,-7,5,9");
    assert_eq!(get(&engine, "list100,5#2").unwrap(), "3,-7,9");
    assert_eq!(get(&engine, "list100_1:1,8").unwrap(), "2,-7,3,5,1");
    assert_eq!(get(&engine, "list100#0").unwrap(), "3");
    assert_eq!(get(&engine, "list101").unwrap(), "0");
    assert_eq!(get(&engine, "count100_2:2").unwrap(), "2");
    assert_eq!(get(&engine, "intersect100:9,1,-7,9").unwrap(), "2,-7,9");
    assert_eq!(get(&engine, "subtract100:9").unwrap(), "2,-7,5");
    assert_eq!(get(&engine, "value100_9").unwrap(), "20");
    assert_eq!(get(&engine, "flags100_9").unwrap(), "2");
    assert_eq!(get(&engine, "entry100_8"), None);
    // Bad input is the client's fault, never a panic.
    for (key, value) in [
        ("entry100_1", "256"),
        ("entry100_1", "1,x"),
        ("entry100_1", "-1"),
        ("entry0_1", "1"),
        ("flags100_5", "300"),
        ("value100_5", "9223372036854775808"),
        ("temp1x", "1"),
        ("tempx", "1,0"),
        ("nope", "1"),
    ] {
        let err = engine.set(key.as_bytes(), 0, value.as_bytes(), &mut s, &journal);
        assert!(
            matches!(err, Err(koshka_engine::Error::Client(_))),
            "{key} {value}: {err:?}"
        );
    }
    assert!(engine.get(b"intersect100:-none", &mut s).is_err());
    assert!(engine.incr(b"flags100_5", 256, &mut s, &journal).is_err());
    engine
        .set(b"value100_5", 0, b"9223372036854775807", &mut s, &journal)
        .unwrap();
    assert!(engine.incr(b"value100_5", 1, &mut s, &journal).is_err());
    // A temp list holds at most TEMP_LIST_MAX ids.
    let ids: Vec<String> = (1..=TEMP_LIST_MAX + 1).map(|i| i.to_string()).collect();
    assert!(engine
        .set(b"tempbig", 0, ids.join(",").as_bytes(), &mut s, &journal)
        .is_err());
    engine
        .set(
            b"tempbig",
            0,
            ids[..TEMP_LIST_MAX].join(",").as_bytes(),
            &mut s,
            &journal,
        )
        .unwrap();
    assert_eq!(get_with(&engine, "intersect100:-big", &mut s), "2,5,9");
    // Replies are capped at REPLY_ITEMS_MAX items.
    assert!(engine
        .get(
            format!("list100#{}", REPLY_ITEMS_MAX + 1).as_bytes(),
            &mut s
        )
        .is_err());
}

fn get_with(engine: &ListsEngine, key: &str, s: &mut Session) -> String {
    String::from_utf8(engine.get(key.as_bytes(), s).unwrap().unwrap().data).unwrap()
}

#[test]
fn the_per_list_limit_refuses_new_entries_only() {
    let engine = ListsEngine::new(ShardSpec::default()).with_entries_per_list_max(3);
    let journal = RecordingJournal::default();
    let mut s = Session::default();
    for o in 1..=3 {
        engine
            .set(format!("entry1_{o}").as_bytes(), 0, b"0", &mut s, &journal)
            .unwrap();
    }
    let err = engine
        .set(b"entry1_4", 0, b"0", &mut s, &journal)
        .unwrap_err();
    assert!(err.to_string().contains("most one list may hold"), "{err}");
    engine
        .set(b"entry1_3", 0, b"1,5", &mut s, &journal)
        .unwrap();
    engine.set(b"entry2_4", 0, b"0", &mut s, &journal).unwrap();
    assert_eq!(journal.records().len(), 5);
    const { assert!(ENTRIES_PER_LIST_MAX >= 1_000_000) };
}

#[test]
fn settings_configure_the_engine() {
    let mut setup = koshka_engine::EngineSetup {
        shard: ShardSpec::default(),
        memory_limit: 1 << 30,
        value_size_max: 1 << 20,
        cache: false,
        settings: Default::default(),
    };
    setup
        .settings
        .insert("entries_per_list_max".into(), 2i64.into());
    let engine = ListsEngine::from_setup(&setup).unwrap();
    assert_eq!(engine.entries_per_list_max, 2);
    setup.settings.insert("reverse_index".into(), true.into());
    let engine = ListsEngine::from_setup(&setup).unwrap();
    let stats: BTreeMap<String, String> = engine.stats().into_iter().collect();
    assert_eq!(stats["lists_reverse_index"], "1");
    setup.settings.insert("reverse_index".into(), 1i64.into());
    assert!(ListsEngine::from_setup(&setup).is_err());
    setup.settings.insert("reverse_index".into(), false.into());
    setup.settings.insert("bogus".into(), 1i64.into());
    assert!(ListsEngine::from_setup(&setup).is_err());
}

#[test]
fn other_shards_lists_are_refused() {
    let engine = ListsEngine::new(ShardSpec { index: 1, count: 4 });
    let journal = RecordingJournal::default();
    let mut s = Session::default();
    engine.set(b"entry5_1", 0, b"0", &mut s, &journal).unwrap();
    engine.set(b"entry-5_1", 0, b"0", &mut s, &journal).unwrap();
    let err = engine
        .set(b"entry6_1", 0, b"0", &mut s, &journal)
        .unwrap_err();
    assert!(matches!(err, koshka_engine::Error::WrongShard { .. }));
    assert!(engine.get(b"list6", &mut s).is_err());
    assert_eq!(get(&engine, "object_lists1").unwrap(), "2,-5,5");
    // Partitions spread the shard's lists.
    assert_ne!(engine.partition_of(1), engine.partition_of(5));
}

#[test]
fn corrupt_snapshots_are_refused() {
    let engine = ListsEngine::new(ShardSpec::default());
    let journal = RecordingJournal::default();
    let mut s = Session::default();
    engine.set(b"entry1_1", 0, b"0", &mut s, &journal).unwrap();
    engine.set(b"entry1_2", 0, b"0", &mut s, &journal).unwrap();
    let mut snap = Vec::new();
    engine.write_snapshot(&mut snap).unwrap();
    for cut in [0, 3, 12, snap.len() - 1] {
        let fresh = ListsEngine::new(ShardSpec::default());
        assert!(fresh.load_snapshot(&mut &snap[..cut]).is_err(), "cut {cut}");
    }
    let fresh = ListsEngine::new(ShardSpec::default());
    fresh.load_snapshot(&mut &snap[..]).unwrap();
    // Records of unknown type or the wrong length are corrupt.
    assert!(fresh
        .apply(99, &[], koshka_engine::ApplyCtx { pos: 1, time: 1 })
        .is_err());
    assert!(fresh
        .apply(1, &[1, 0, 0], koshka_engine::ApplyCtx { pos: 1, time: 1 })
        .is_err());
}

/// The examples of docs/protocol/lists.md ("Lists and sublists", intersections, reverse
/// lookups) answer what the document says.
#[test]
fn protocol_doc_examples() {
    let clock = Arc::new(ManualClock::new(100));
    let journal = RecordingJournal::with_clock(clock.clone());
    let engine = ListsEngine::new(ShardSpec::default());
    let mut s = Session::default();
    for (obj, value, date) in [(5, "1,10", 100), (9, "2,30", 300), (-3, "3,20", 200)] {
        clock.set(date);
        let key = format!("entry7_{obj}");
        engine
            .set(key.as_bytes(), 0, value.as_bytes(), &mut s, &journal)
            .unwrap();
    }
    engine
        .set(b"entry-100_5", 0, b"3,10", &mut s, &journal)
        .unwrap();
    for (key, want) in [
        ("list7", "3,-3,5,9"),
        ("list7,1#2", "3,9,5"),
        ("list7_1:1", "2,-3,5"),
        ("list7,13#2", "3,9,2,-3,3"),
        ("list7,59", "3,9,2,300,30,-3,3,200,20,5,1,100,10"),
        ("list7#1,1", "3,5"),
        ("list7#0", "3"),
        ("count7_2:2", "2"),
        ("intersect7:9,4,-3", "2,-3,9"),
        ("intersect7_1:1,8:9,4,-3", "1,-3,3"),
        ("object_lists5", "2,-100,7"),
    ] {
        assert_eq!(get_with(&engine, key, &mut s), want, "{key}");
    }
    engine
        .set(b"tempfr", 0, b"5,9,11,12", &mut s, &journal)
        .unwrap();
    assert_eq!(get_with(&engine, "intersect7:-fr", &mut s), "2,5,9");
    assert_eq!(get_with(&engine, "subtract7:-fr", &mut s), "1,-3");
    assert!(engine.delete(b"object5", &mut s, &journal).unwrap());
    assert_eq!(get_with(&engine, "object_lists5", &mut s), "0");
    assert!(engine.delete(b"list7", &mut s, &journal).unwrap());
}
