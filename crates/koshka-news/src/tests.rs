//! The model test (random operations, clock jumps past the retention window and restarts
//! against a plain model) and unit tests of replies, limits and snapshots.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use koshka_engine::{
    Clock, Collect, Cx, Direct, Engine, ManualClock, RecordingJournal, Request, Session, ShardSpec,
    StoreOutcome,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::*;
use crate::records::What;

/// A read at log time `now` (the engine's reads use `cx.now`).
fn get_at(engine: &NewsEngine, key: &str, session: &mut Session, now: u32) -> Option<String> {
    let journal = koshka_engine::MemoryJournal::default();
    let mut reply = Collect::default();
    let mut cx = Cx {
        session,
        journal: &journal,
        reply: &mut reply,
        now,
    };
    engine
        .execute(
            &Request::Get {
                key: key.as_bytes(),
            },
            &mut cx,
        )
        .unwrap_or_else(|e| panic!("{key}: {e}"));
    reply
        .values
        .pop()
        .map(|(_, _, v)| String::from_utf8(v).unwrap())
}

#[derive(Debug, Clone)]
struct MAuthor {
    events: Vec<(u32, u32, What)>,
    mask: u32,
    next_id: u32,
}

impl Default for MAuthor {
    fn default() -> Self {
        Self {
            events: Vec::new(),
            mask: 1,
            next_id: 1,
        }
    }
}

#[derive(Debug, Clone)]
struct MInbox {
    items: Vec<(u32, u32, bool, What)>,
    hidden_users: BTreeSet<i32>,
    next_id: u32,
}

impl Default for MInbox {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            hidden_users: BTreeSet::new(),
            next_id: 1,
        }
    }
}

#[derive(Default)]
struct Model {
    authors: BTreeMap<i32, MAuthor>,
    inboxes: BTreeMap<i32, MInbox>,
}

const SETTINGS: Settings = Settings {
    retention_days: 1,
    events_per_author_max: 6,
    notifications_per_user_max: 8,
};

fn keep<T>(items: &mut Vec<T>, date: impl Fn(&T) -> u32, cutoff: u32, max: usize) {
    items.retain(|i| date(i) >= cutoff);
    let over = items.len().saturating_sub(max);
    items.drain(..over);
}

impl Model {
    fn add_event(&mut self, author: i32, what: What, now: u32) {
        let a = self.authors.entry(author).or_default();
        a.events.push((now, a.next_id, what));
        a.next_id += 1;
        keep(
            &mut a.events,
            |e| e.0,
            now - DAY,
            SETTINGS.events_per_author_max,
        );
    }

    fn add_notification(&mut self, user: i32, what: What, now: u32) {
        let i = self.inboxes.entry(user).or_default();
        i.items.push((now, i.next_id, false, what));
        i.next_id += 1;
        keep(
            &mut i.items,
            |n| n.0,
            now - DAY,
            SETTINGS.notifications_per_user_max,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn raw(
        &self,
        authors: &[i32],
        types: u32,
        from: u32,
        to: u32,
        before: Option<(i32, u32)>,
        limit: usize,
        now: u32,
    ) -> String {
        let mut hits = Vec::new();
        let authors: BTreeSet<i32> = authors.iter().copied().collect();
        for author in authors {
            let Some(a) = self.authors.get(&author) else {
                continue;
            };
            for &(date, id, w) in &a.events {
                let bit = 1u32 << w.kind;
                let in_range = date >= from.max(now - DAY)
                    && match before {
                        None => date <= to,
                        Some((ba, bi)) => (date, author, id) < (to, ba, bi),
                    };
                if in_range && types & bit != 0 && a.mask & bit == 0 {
                    hits.push((date, author, id, w));
                }
            }
        }
        hits.sort_by_key(|h| std::cmp::Reverse((h.0, h.1, h.2)));
        hits.truncate(limit);
        let mut out = hits.len().to_string();
        for (d, a, i, w) in hits {
            out += &format!(
                ",{d},{a},{i},{},{},{},{},{},{}",
                w.kind, w.user, w.group, w.owner, w.place, w.item
            );
        }
        out
    }

    fn visible(&self, user: i32, types: u32, now: u32) -> Vec<(u32, u32, What)> {
        let Some(inbox) = self.inboxes.get(&user) else {
            return Vec::new();
        };
        let mut v: Vec<(u32, u32, What)> = inbox
            .items
            .iter()
            .filter(|(d, _, hidden, w)| {
                !hidden
                    && *d >= now - DAY
                    && types & (1 << w.kind) != 0
                    && !inbox.hidden_users.contains(&w.user)
            })
            .map(|(d, i, _, w)| (*d, *i, *w))
            .collect();
        v.sort_by_key(|n| std::cmp::Reverse((n.0, n.1)));
        v
    }

    fn notify(&self, user: i32, types: u32, grouping: usize, limit: usize, now: u32) -> Value {
        let visible = self.visible(user, types, now);
        if grouping == 0 {
            return Value::Array(
                visible
                    .iter()
                    .take(limit)
                    .map(|(d, i, w)| {
                        json!({"id": i, "type": w.kind, "date": d, "user": w.user,
                               "owner": w.owner, "place": w.place, "item": w.item})
                    })
                    .collect(),
            );
        }
        // Groups in the order of their newest notification.
        let mut order: Vec<(u8, i32, i32, u32)> = Vec::new();
        type GroupKey = (u8, i32, i32, u32);
        let mut members: BTreeMap<GroupKey, Vec<(u32, u32, What)>> = BTreeMap::new();
        for &(d, i, w) in &visible {
            let k = (w.kind, w.owner, w.place, d / DAY);
            if !order.contains(&k) {
                order.push(k);
            }
            members.entry(k).or_default().push((d, i, w));
        }
        let distinct = |vals: Vec<i32>| -> Vec<i32> {
            let mut seen = Vec::new();
            for v in vals {
                if !seen.contains(&v) {
                    seen.push(v);
                }
            }
            seen
        };
        Value::Array(
            order
                .iter()
                .take(limit)
                .map(|k| {
                    let m = &members[k];
                    let users = distinct(m.iter().map(|e| e.2.user).collect());
                    let items = distinct(m.iter().map(|e| e.2.item).collect());
                    json!({
                        "id": m.iter().map(|e| e.1).min().unwrap(),
                        "type": k.0, "owner": k.1, "place": k.2,
                        "date": m[0].0, "count": m.len(),
                        "users_total": users.len(),
                        "users": users.iter().take(grouping).collect::<Vec<_>>(),
                        "items_total": items.len(),
                        "items": items.iter().take(grouping).collect::<Vec<_>>(),
                    })
                })
                .collect(),
        )
    }
}

fn restart(engine: &NewsEngine, snapshot: &[u8], journal: &RecordingJournal) -> NewsEngine {
    let fresh = NewsEngine::with_settings(ShardSpec::default(), SETTINGS);
    fresh.load_snapshot(&mut &snapshot[..]).unwrap();
    journal.replay_into(&fresh).unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    engine.write_snapshot(&mut a).unwrap();
    fresh.write_snapshot(&mut b).unwrap();
    assert!(a == b, "replayed state differs from the live one");
    fresh
}

/// Replays every record of `journal` serially and on 3 apply threads ([`koshka_engine::Lanes`]):
/// both end in the same state.
fn lanes_match_serial(journal: &RecordingJournal, make: impl Fn() -> NewsEngine) {
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

fn run_model(seed: u64, steps: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let clock = Arc::new(ManualClock::new(1_700_000_000));
    let journal = RecordingJournal::with_clock(clock.clone());
    let mut engine = NewsEngine::with_settings(ShardSpec::default(), SETTINGS);
    let mut snapshot = Vec::new();
    engine.write_snapshot(&mut snapshot).unwrap();
    let mut session = Session::default();
    let mut model = Model::default();
    let ids = [1, 2, 3, 65, -4, -129, 2_147_483_647];
    // Evidence that the reads compared something: non-empty raw replies, merged groups.
    let (mut raw_hits, mut merged_groups) = (0, 0);
    for step in 0..steps {
        match rng.gen_range(0..100) {
            0..=9 => clock.advance(rng.gen_range(0..600)),
            10 => clock.advance(rng.gen_range(DAY / 2..DAY * 2)),
            _ => {}
        }
        let now = clock.now();
        let who = ids[rng.gen_range(0..ids.len())];
        let what = What {
            kind: rng.gen_range(1..=5),
            user: rng.gen_range(1..6),
            group: -rng.gen_range(0..3),
            owner: rng.gen_range(1..4),
            place: rng.gen_range(0..3),
            item: rng.gen_range(1..5),
        };
        match rng.gen_range(0..100) {
            0..=29 => {
                let v = format!(
                    "{},{},{},{},{},{}",
                    what.kind, what.user, what.group, what.owner, what.place, what.item
                );
                let key = format!("update{who}");
                let r = engine.set(key.as_bytes(), 0, v.as_bytes(), &mut session, &journal);
                assert_eq!(r.unwrap(), StoreOutcome::Stored);
                model.add_event(who, what, now);
            }
            30..=34 => {
                let mask: u32 = rng.gen_range(0..64);
                let key = format!("mask{who}");
                engine
                    .set(
                        key.as_bytes(),
                        0,
                        mask.to_string().as_bytes(),
                        &mut session,
                        &journal,
                    )
                    .unwrap();
                model.authors.entry(who).or_default().mask = mask | 1;
            }
            35..=36 => {
                let found = engine
                    .delete(format!("updates{who}").as_bytes(), &mut session, &journal)
                    .unwrap();
                assert_eq!(found, model.authors.remove(&who).is_some());
            }
            37..=56 => {
                // Few (type, owner, place) combinations, so groups merge.
                let what = What {
                    group: 0,
                    kind: rng.gen_range(1..=2),
                    owner: 1,
                    place: rng.gen_range(0..2),
                    ..what
                };
                let v = format!(
                    "{},{},{},{},{}",
                    what.kind, what.user, what.owner, what.place, what.item
                );
                let key = format!("notify{who}");
                engine
                    .set(key.as_bytes(), 0, v.as_bytes(), &mut session, &journal)
                    .unwrap();
                model.add_notification(who, what, now);
            }
            57..=62 => {
                let id = rng.gen_range(0..12u32);
                let show = rng.gen_bool(0.4);
                let name = if show { "undelete_notify" } else { "notify" };
                let key = format!("{name}{who}_{id}");
                let changed = engine
                    .delete(key.as_bytes(), &mut session, &journal)
                    .unwrap();
                let want = model
                    .inboxes
                    .get_mut(&who)
                    .and_then(|i| i.items.iter_mut().find(|n| n.1 == id && n.0 >= now - DAY))
                    .is_some_and(|n| {
                        let changed = n.2 == show;
                        n.2 = !show;
                        changed
                    });
                assert_eq!(changed, want, "{key}");
            }
            63..=65 => {
                let from = rng.gen_range(1..6);
                let show = rng.gen_bool(0.4);
                let name = if show {
                    "undelete_notify_user"
                } else {
                    "notify_user"
                };
                let key = format!("{name}{who}_{from}");
                let changed = engine
                    .delete(key.as_bytes(), &mut session, &journal)
                    .unwrap();
                let inbox = model.inboxes.get(&who);
                let hidden = inbox.is_some_and(|i| i.hidden_users.contains(&from));
                assert_eq!(changed, hidden == show, "{key}");
                if changed {
                    let inbox = model.inboxes.entry(who).or_default();
                    if show {
                        inbox.hidden_users.remove(&from);
                    } else {
                        inbox.hidden_users.insert(from);
                    }
                }
            }
            66 => {
                let found = engine
                    .delete(
                        format!("notifications{who}").as_bytes(),
                        &mut session,
                        &journal,
                    )
                    .unwrap();
                assert_eq!(found, model.inboxes.remove(&who).is_some());
            }
            67..=68 => {
                engine = restart(&engine, &snapshot, &journal);
                session = Session::default();
            }
            69 => {
                snapshot.clear();
                engine.write_snapshot(&mut snapshot).unwrap();
            }
            _ => {
                let types: u32 = if rng.gen_bool(0.5) {
                    u32::MAX
                } else {
                    rng.gen()
                };
                let authors: Vec<i32> = ids.iter().copied().filter(|_| rng.gen_bool(0.6)).collect();
                let from = now - rng.gen_range(0..DAY * 2);
                let to = now - rng.gen_range(0..1200);
                let before = rng
                    .gen_bool(0.3)
                    .then(|| (ids[rng.gen_range(0..ids.len())], rng.gen_range(1..20)));
                let limit = rng.gen_range(0..15);
                let list: Vec<String> = authors.iter().map(ToString::to_string).collect();
                let cursor = before.map_or(String::new(), |(a, i)| format!(",{a},{i}"));
                let inline = rng.gen_bool(0.5);
                let target = if inline {
                    list.join(",")
                } else {
                    engine
                        .set(
                            b"tempf",
                            0,
                            list.join(",").as_bytes(),
                            &mut session,
                            &journal,
                        )
                        .unwrap();
                    "-f".to_string()
                };
                let key = format!("raw_updates{types}_{from},{to}{cursor}#{limit}:{target}");
                let got = get_at(&engine, &key, &mut session, now).unwrap();
                let want = model.raw(&authors, types, from, to, before, limit, now);
                assert_eq!(got, want, "seed {seed} step {step}: {key}");
                raw_hits += usize::from(!got.starts_with("0"));

                let grouping = if rng.gen_bool(0.5) {
                    0
                } else {
                    rng.gen_range(1..4)
                };
                let limit = rng.gen_range(0..10);
                let types: u32 = if rng.gen_bool(0.5) {
                    u32::MAX
                } else {
                    rng.gen()
                };
                let key = format!("notify{who}_{types},{grouping}#{limit}");
                let got: Value =
                    serde_json::from_str(&get_at(&engine, &key, &mut session, now).unwrap())
                        .unwrap();
                let want = model.notify(who, types, grouping as usize, limit, now);
                assert_eq!(got, want, "seed {seed} step {step}: {key}");
                merged_groups += got
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|g| g.get("count").is_some_and(|c| c.as_u64() > Some(1)))
                    .count();
                let count = get_at(&engine, &format!("notify_count{who}"), &mut session, now);
                assert_eq!(
                    count.unwrap(),
                    model.visible(who, u32::MAX, now).len().to_string()
                );
                let mask = get_at(&engine, &format!("mask{who}"), &mut session, now).unwrap();
                let want = model.authors.get(&who).map_or(1, |a| a.mask);
                assert_eq!(mask, want.to_string());
            }
        }
    }
    assert!(
        raw_hits > 50 && merged_groups > 20,
        "{raw_hits} {merged_groups}"
    );
    lanes_match_serial(&journal, || {
        NewsEngine::with_settings(ShardSpec::default(), SETTINGS)
    });
}

fn engine_and_journal() -> (NewsEngine, RecordingJournal, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(1_700_000_000));
    let journal = RecordingJournal::with_clock(clock.clone());
    (NewsEngine::new(ShardSpec::default()), journal, clock)
}

#[test]
fn raw_replies_merge_exactly_and_respect_masks() {
    let (engine, journal, clock) = engine_and_journal();
    let mut s = Session::default();
    for (author, v) in [
        (10, "1,10,0,10,0,1"),
        (-20, "2,0,-20,-20,5,2"),
        (10, "3,10,0,10,7,3"),
        (30, "6,30,0,30,0,31"),
    ] {
        engine
            .set(
                format!("update{author}").as_bytes(),
                0,
                v.as_bytes(),
                &mut s,
                &journal,
            )
            .unwrap();
        clock.advance(10);
    }
    let now = clock.now();
    let t = 1_700_000_000;
    let got = get_at(
        &engine,
        &format!("raw_updates4294967295_0,{now}:10,-20,30,99"),
        &mut s,
        now,
    );
    assert_eq!(
        got.unwrap(),
        format!(
            "4,{},30,1,6,30,0,30,0,31,{},10,2,3,10,0,10,7,3,{},-20,1,2,0,-20,-20,5,2,{t},10,1,1,10,0,10,0,1",
            t + 30,
            t + 20,
            t + 10
        )
    );
    // Author 10 hides photos (type 3) from friends.
    engine.set(b"mask10", 0, b"8", &mut s, &journal).unwrap();
    assert_eq!(get_at(&engine, "mask10", &mut s, now).unwrap(), "9");
    let got = get_at(
        &engine,
        &format!("raw_updates4294967295_0,{now}#2:10"),
        &mut s,
        now,
    );
    assert_eq!(got.unwrap(), format!("1,{t},10,1,1,10,0,10,0,1"));
    // A cursor continues strictly after the last event of a page.
    let key = format!("raw_updates4294967295_0,{},-20,1:10,-20,30", t + 10);
    assert_eq!(
        get_at(&engine, &key, &mut s, now).unwrap(),
        format!("1,{t},10,1,1,10,0,10,0,1")
    );
    // Types select.
    let key = format!("raw_updates64_0,{now}:10,-20,30");
    assert!(get_at(&engine, &key, &mut s, now)
        .unwrap()
        .starts_with("1,"));
    // Authors of other shards are skipped.
    let sharded = NewsEngine::new(ShardSpec { index: 1, count: 2 });
    sharded
        .set(b"update1", 0, b"1,0,0,0,0,0", &mut s, &journal)
        .unwrap();
    assert!(sharded
        .set(b"update2", 0, b"1,0,0,0,0,0", &mut s, &journal)
        .is_err());
    let key = format!("raw_updates4294967295_0,{now}:1,2");
    assert!(get_at(&sharded, &key, &mut s, now)
        .unwrap()
        .starts_with("1,"));
}

#[test]
fn bad_values_are_refused() {
    let (engine, journal, _) = engine_and_journal();
    let mut s = Session::default();
    for (key, value) in [
        ("update1", "0,1,1,1,1,1"),
        ("update1", "32,1,1,1,1,1"),
        ("update1", "1,1,1,1,1"),
        ("update1", "1,1,1,1,1,1,1"),
        ("update1", "1,x,1,1,1,1"),
        ("update1", "1,1,1,1,1,2147483648"),
        ("notify1", "1,1,1,1"),
        ("mask1", "-1"),
        ("mask1", "4294967296"),
        ("update0", "1,1,1,1,1,1"),
        ("feed1", "1"),
    ] {
        let r = engine.set(key.as_bytes(), 0, value.as_bytes(), &mut s, &journal);
        assert!(
            matches!(r, Err(koshka_engine::Error::Client(_))),
            "{key} {value}: {r:?}"
        );
    }
    assert!(journal.records().is_empty());
    assert!(engine.get(b"raw_updates1_0,1:-nope", &mut s).is_err());
    assert!(engine.get(b"raw_updates1_0,1#10001:1", &mut s).is_err());
    assert!(engine.get(b"notify1,101", &mut s).is_err());
}

#[test]
fn hidden_senders_are_capped() {
    let (engine, journal, _) = engine_and_journal();
    let mut s = Session::default();
    for from in 1..=HIDDEN_USERS_MAX {
        let key = format!("notify_user5_{from}");
        assert!(engine.delete(key.as_bytes(), &mut s, &journal).unwrap());
    }
    let err = engine
        .delete(b"notify_user5_999999", &mut s, &journal)
        .unwrap_err();
    assert!(err.to_string().contains("already hides"), "{err}");
    assert!(engine
        .delete(b"undelete_notify_user5_1", &mut s, &journal)
        .unwrap());
}

#[test]
fn caps_and_window_apply_to_authors_and_inboxes() {
    let settings = Settings {
        retention_days: 1,
        events_per_author_max: 2,
        notifications_per_user_max: 3,
    };
    let clock = Arc::new(ManualClock::new(1_700_000_000));
    let journal = RecordingJournal::with_clock(clock.clone());
    let engine = NewsEngine::with_settings(ShardSpec::default(), settings);
    let mut s = Session::default();
    for _ in 0..5 {
        engine
            .set(b"update7", 0, b"1,0,0,0,0,0", &mut s, &journal)
            .unwrap();
        engine
            .set(b"notify7", 0, b"1,0,0,0,0", &mut s, &journal)
            .unwrap();
    }
    let now = clock.now();
    let raw = get_at(
        &engine,
        &format!("raw_updates4294967295_0,{now}:7"),
        &mut s,
        now,
    )
    .unwrap();
    assert!(raw.starts_with("2,"), "{raw}");
    assert_eq!(get_at(&engine, "notify_count7", &mut s, now).unwrap(), "3");
    // Past the window nothing is shown, and the next write drops it from memory.
    let later = now + DAY + 1;
    assert_eq!(
        get_at(&engine, "notify_count7", &mut s, later).unwrap(),
        "0"
    );
    clock.set(later);
    // Author 71 shares author 7's partition, whose writes sweep it.
    engine
        .set(b"update71", 0, b"1,0,0,0,0,0", &mut s, &journal)
        .unwrap();
    engine
        .set(b"update71", 0, b"1,0,0,0,0,0", &mut s, &journal)
        .unwrap();
    let stats: BTreeMap<String, String> = engine.stats().into_iter().collect();
    assert_eq!(stats["news_events"], "2");
    assert_eq!(stats["news_notifications"], "0");
    // Defaults are VK's.
    let d = Settings::default();
    assert_eq!((d.retention_days, d.events_per_author_max), (30, 5000));
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
    setup.settings.insert("retention_days".into(), 7i64.into());
    setup
        .settings
        .insert("events_per_author_max".into(), 10i64.into());
    let engine = NewsEngine::from_setup(&setup).unwrap();
    assert_eq!(engine.settings().retention_days, 7);
    assert_eq!(engine.settings().events_per_author_max, 10);
    setup
        .settings
        .insert("retention_days".into(), 3651i64.into());
    assert!(NewsEngine::from_setup(&setup).is_err());
    setup.settings.insert("retention_days".into(), 0i64.into());
    assert!(NewsEngine::from_setup(&setup).is_err());
    setup.settings.remove("retention_days");
    setup.settings.insert("bogus".into(), 1i64.into());
    assert!(NewsEngine::from_setup(&setup).is_err());
}

#[test]
fn corrupt_snapshots_and_records_are_refused() {
    let (engine, journal, _) = engine_and_journal();
    let mut s = Session::default();
    engine
        .set(b"update1", 0, b"1,0,0,0,0,0", &mut s, &journal)
        .unwrap();
    engine
        .set(b"notify1", 0, b"1,0,0,0,0", &mut s, &journal)
        .unwrap();
    let mut snap = Vec::new();
    engine.write_snapshot(&mut snap).unwrap();
    for cut in [0, 3, 12, 30, snap.len() - 1] {
        let fresh = NewsEngine::new(ShardSpec::default());
        assert!(fresh.load_snapshot(&mut &snap[..cut]).is_err(), "cut {cut}");
    }
    let fresh = NewsEngine::new(ShardSpec::default());
    fresh.load_snapshot(&mut &snap[..]).unwrap();
    let ctx = koshka_engine::ApplyCtx { pos: 1, time: 1 };
    assert!(fresh.apply(99, &[], ctx).is_err());
    assert!(fresh.apply(1, &[1, 0, 0, 0, 0], ctx).is_err(), "type 0");
    assert!(fresh.apply(2, &[0, 0, 0, 0], ctx).is_err(), "author 0");
}

/// The examples of docs/protocol/news.md answer what the document says.
#[test]
fn protocol_doc_examples() {
    let (engine, journal, clock) = engine_and_journal();
    let t = clock.now();
    let mut s = Session::default();
    let get = |key: &str, s: &mut Session| get_at(&engine, key, s, t).unwrap();
    let set = |key: &str, value: &str, s: &mut Session| {
        engine
            .set(key.as_bytes(), 0, value.as_bytes(), s, &journal)
            .unwrap();
    };
    set("update10", "1,10,0,10,0,100", &mut s);
    set("update-20", "2,0,-20,-20,0,7", &mut s);
    set("update10", "3,10,0,10,5,200", &mut s);
    let all = "raw_updates4294967295_0,4294967295:10,-20,30";
    assert_eq!(
        get(all, &mut s),
        format!("3,{t},10,2,3,10,0,10,5,200,{t},10,1,1,10,0,10,0,100,{t},-20,1,2,0,-20,-20,0,7")
    );
    set("mask10", "8", &mut s);
    assert_eq!(get("mask10", &mut s), "9");
    assert_eq!(
        get(all, &mut s),
        format!("2,{t},10,1,1,10,0,10,0,100,{t},-20,1,2,0,-20,-20,0,7")
    );
    let page = format!("1,{t},10,1,1,10,0,10,0,100");
    assert_eq!(
        get("raw_updates4294967295_0,4294967295#1:10,-20", &mut s),
        page
    );
    assert_eq!(
        get(&format!("raw_updates4294967295_0,{t},10,1:10,-20"), &mut s),
        format!("1,{t},-20,1,2,0,-20,-20,0,7")
    );
    assert_eq!(get("raw_updates2_0,4294967295:10,-20", &mut s), page);
    set("tempfr", "10,30", &mut s);
    assert_eq!(get("raw_updates4294967295_0,4294967295:-fr", &mut s), page);

    for v in ["5,5,77,1,900", "5,6,77,1,900", "5,5,77,1,900", "3,8,77,0,0"] {
        set("notify77", v, &mut s);
    }
    let grouped: Value = serde_json::from_str(&get("notify77,2", &mut s)).unwrap();
    assert_eq!(
        grouped,
        json!([
            {"id":4,"type":3,"owner":77,"place":0,"date":t,"count":1,"users_total":1,
             "users":[8],"items_total":1,"items":[0]},
            {"id":1,"type":5,"owner":77,"place":1,"date":t,"count":3,"users_total":2,
             "users":[5,6],"items_total":1,"items":[900]}
        ])
    );
    let flat: Value = serde_json::from_str(&get("notify77#1", &mut s)).unwrap();
    assert_eq!(
        flat,
        json!([{"id":4,"type":3,"date":t,"user":8,"owner":77,"place":0,"item":0}])
    );
    assert_eq!(get("notify_count77", &mut s), "4");
    let mut del = |key: &str| engine.delete(key.as_bytes(), &mut s, &journal).unwrap();
    assert!(del("notify77_4"));
    assert!(del("notify_user77_5"));
    assert!(del("undelete_notify77_4"));
    assert!(del("notifications77"));
    assert!(del("updates-20"));
    assert_eq!(size_of::<crate::state::Notification>(), 36);
}
