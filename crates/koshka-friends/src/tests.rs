//! Engine-level tests through the [`Engine`] trait: a model-based proptest with snapshot and
//! replay restarts, cross-shard behaviour, temp lists and bad input.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use koshka_engine::{
    Appended, ApplyCtx, Direct, Engine, Error, Journal, MemoryJournal, Result, Session, ShardSpec,
    StoreOutcome,
};
use parking_lot::Mutex;
use proptest::prelude::*;

use crate::engine::image;
use crate::privacy::tests::{reference, Graph};
use crate::privacy::{canonicalize, parse_rules, render, Rule, Target};
use crate::FriendsEngine;

/// A journal that keeps every record, with a clock the test sets.
#[derive(Default)]
pub struct RecordingJournal {
    /// `(type, payload, ctx)` in log order.
    pub records: Mutex<Vec<(u16, Vec<u8>, ApplyCtx)>>,
    pos: AtomicU64,
    /// Log time handed to the next records.
    pub time: AtomicU32,
}

impl Journal for RecordingJournal {
    fn append(&self, record_type: u16, payload: &[u8]) -> Result<Appended> {
        let len = payload.len() as u64 + 16;
        let pos = self.pos.fetch_add(len, Ordering::Relaxed) + len;
        let time = self.time.load(Ordering::Relaxed);
        self.records
            .lock()
            .push((record_type, payload.to_vec(), ApplyCtx { pos, time }));
        Ok(Appended { pos, time })
    }
}

impl RecordingJournal {
    fn replay(&self, engine: &FriendsEngine) {
        for (record_type, payload, ctx) in self.records.lock().iter() {
            engine.apply(*record_type, payload, *ctx).unwrap();
        }
    }
}

fn get(engine: &FriendsEngine, key: &str) -> Option<String> {
    engine
        .get(key.as_bytes(), &mut Session::default())
        .unwrap()
        .map(|v| String::from_utf8(v.data).unwrap())
}

fn set(engine: &FriendsEngine, journal: &dyn Journal, key: &str, value: &str) -> StoreOutcome {
    engine
        .set(
            key.as_bytes(),
            0,
            value.as_bytes(),
            &mut Session::default(),
            journal,
        )
        .unwrap()
}

fn delete(engine: &FriendsEngine, journal: &dyn Journal, key: &str) -> bool {
    engine
        .delete(key.as_bytes(), &mut Session::default(), journal)
        .unwrap()
}

// ----- the model -----

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ModelUser {
    friends: BTreeMap<u32, (u32, u32)>,
    requests: BTreeMap<u32, (u32, u32)>,
    privacy: BTreeMap<String, Vec<Rule>>,
}

impl ModelUser {
    fn is_empty(&self) -> bool {
        self.friends.is_empty() && self.requests.is_empty() && self.privacy.is_empty()
    }
}

type Model = BTreeMap<u32, ModelUser>;

fn model_of(engine: &FriendsEngine) -> Model {
    image(engine)
        .into_iter()
        .map(|(id, user)| {
            let friends = user
                .friends
                .iter()
                .map(|f| (f.id, (f.mask, f.date)))
                .collect();
            let requests = user
                .requests
                .iter()
                .map(|r| (r.from, (r.mask, r.date)))
                .collect();
            let privacy = user
                .privacy
                .iter()
                .map(|e| (e.key.to_string(), e.rules.to_vec()))
                .collect();
            (
                id,
                ModelUser {
                    friends,
                    requests,
                    privacy,
                },
            )
        })
        .collect()
}

fn graph_of(model: &Model) -> Graph {
    model
        .iter()
        .map(|(id, u)| (*id, u.friends.iter().map(|(f, (m, _))| (*f, *m)).collect()))
        .collect()
}

const USERS: u32 = 6;
const KEYS: [&str; 3] = ["album1", "album2", "priv_phone"];

#[derive(Debug, Clone)]
enum Op {
    SetFriend {
        user: u32,
        friend: u32,
        mask: u32,
        half: bool,
    },
    Fold {
        user: u32,
        friend: u32,
        bits: u32,
        or: bool,
    },
    DelFriend {
        user: u32,
        friend: u32,
        half: bool,
    },
    SetFolder {
        user: u32,
        folder: u8,
        ids: Vec<u32>,
    },
    DelFolder {
        user: u32,
        folder: u8,
    },
    DelUser {
        user: u32,
    },
    SetRequest {
        user: u32,
        from: u32,
        mask: u32,
    },
    DelRequest {
        user: u32,
        from: u32,
    },
    DelRequests {
        user: u32,
    },
    SetPrivacy {
        user: u32,
        key: usize,
        rules: String,
    },
    DelPrivacy {
        user: u32,
        key: usize,
    },
    Snapshot,
    Restart,
}

fn rule_text() -> impl Strategy<Value = String> {
    let rule = prop_oneof![
        (any::<bool>(), 1..=USERS).prop_map(|(a, u)| format!("{}{u}", if a { '+' } else { '-' })),
        (any::<bool>(), 0..=3u8).prop_map(|(a, f)| format!("{}{f}", if a { '*' } else { '/' })),
        (any::<bool>(), prop_oneof![Just('G'), Just('A')])
            .prop_map(|(a, g)| format!("{}{g}", if a { '*' } else { '/' })),
    ];
    prop::collection::vec(rule, 0..6).prop_map(|rules| rules.concat())
}

fn op() -> impl Strategy<Value = Op> {
    let user = 1..=USERS;
    let mask = 0u32..16;
    prop_oneof![
        6 => (user.clone(), user.clone(), mask.clone(), prop::bool::weighted(0.2))
            .prop_map(|(user, friend, mask, half)| Op::SetFriend { user, friend, mask, half }),
        2 => (user.clone(), user.clone(), mask.clone(), any::<bool>())
            .prop_map(|(user, friend, bits, or)| Op::Fold { user, friend, bits, or }),
        3 => (user.clone(), user.clone(), prop::bool::weighted(0.2))
            .prop_map(|(user, friend, half)| Op::DelFriend { user, friend, half }),
        1 => (user.clone(), 1..=3u8, prop::collection::vec(1..=USERS, 0..4))
            .prop_map(|(user, folder, ids)| Op::SetFolder { user, folder, ids }),
        1 => (user.clone(), 1..=3u8).prop_map(|(user, folder)| Op::DelFolder { user, folder }),
        1 => user.clone().prop_map(|user| Op::DelUser { user }),
        2 => (user.clone(), user.clone(), mask)
            .prop_map(|(user, from, mask)| Op::SetRequest { user, from, mask }),
        1 => (user.clone(), user.clone()).prop_map(|(user, from)| Op::DelRequest { user, from }),
        1 => user.clone().prop_map(|user| Op::DelRequests { user }),
        3 => (user.clone(), 0..KEYS.len(), rule_text())
            .prop_map(|(user, key, rules)| Op::SetPrivacy { user, key, rules }),
        1 => (user.clone(), 0..KEYS.len()).prop_map(|(user, key)| Op::DelPrivacy { user, key }),
        1 => Just(Op::Snapshot),
        1 => Just(Op::Restart),
    ]
}

/// Applies `op` to the model the way the engine documents it; returns the expected outcome
/// of the engine call as a string for comparison (`err` for a client error).
fn model_apply(model: &mut Model, op: &Op, now: u32) -> String {
    let out = match op {
        Op::SetFriend {
            user,
            friend,
            mask,
            half,
        } => {
            if user == friend {
                return "err".into();
            }
            let u = model.entry(*user).or_default();
            let date = u.friends.get(friend).map_or(now, |(_, d)| *d);
            u.friends.insert(*friend, (mask | 1, date));
            if !half {
                model
                    .entry(*friend)
                    .or_default()
                    .friends
                    .entry(*user)
                    .or_insert((1, now));
            }
            "stored".into()
        }
        Op::Fold {
            user,
            friend,
            bits,
            or,
        } => {
            if user == friend {
                return "err".into();
            }
            match model.get_mut(user).and_then(|u| u.friends.get_mut(friend)) {
                Some((mask, _)) => {
                    *mask = if *or { *mask | bits } else { *mask & !bits } | 1;
                    mask.to_string()
                }
                None => "none".into(),
            }
        }
        Op::DelFriend { user, friend, half } => {
            if user == friend {
                return "err".into();
            }
            let mut found = model
                .get_mut(user)
                .is_some_and(|u| u.friends.remove(friend).is_some());
            if !half {
                found |= model
                    .get_mut(friend)
                    .is_some_and(|u| u.friends.remove(user).is_some());
            }
            found.to_string()
        }
        Op::SetFolder { user, folder, ids } => match model.get_mut(user) {
            Some(u) if !u.friends.is_empty() => {
                for (id, (mask, _)) in &mut u.friends {
                    if ids.contains(id) {
                        *mask |= 1 << folder;
                    } else {
                        *mask &= !(1 << folder);
                    }
                }
                "stored".into()
            }
            _ => "not_stored".into(),
        },
        Op::DelFolder { user, folder } => {
            let Some(u) = model.get_mut(user) else {
                return "false".into();
            };
            let found = u.friends.values().any(|(m, _)| m & (1 << folder) != 0)
                || u.privacy
                    .values()
                    .flatten()
                    .any(|r| r.target == Target::Folder(*folder));
            if found {
                for (mask, _) in u.friends.values_mut() {
                    *mask &= !(1 << folder);
                }
                for rules in u.privacy.values_mut() {
                    if rules.iter().any(|r| r.target == Target::Folder(*folder)) {
                        rules.retain(|r| r.target != Target::Folder(*folder));
                        *rules = canonicalize(rules, *user);
                    }
                }
            }
            found.to_string()
        }
        Op::DelUser { user } => match model.remove(user) {
            Some(u) => {
                for friend in u.friends.keys() {
                    if let Some(f) = model.get_mut(friend) {
                        f.friends.remove(user);
                    }
                }
                "true".into()
            }
            None => "false".into(),
        },
        Op::SetRequest { user, from, mask } => {
            if user == from {
                return "err".into();
            }
            model
                .entry(*user)
                .or_default()
                .requests
                .insert(*from, (mask | 1, now));
            "stored".into()
        }
        Op::DelRequest { user, from } => model
            .get_mut(user)
            .is_some_and(|u| u.requests.remove(from).is_some())
            .to_string(),
        Op::DelRequests { user } => model
            .get_mut(user)
            .is_some_and(|u| !std::mem::take(&mut u.requests).is_empty())
            .to_string(),
        Op::SetPrivacy { user, key, rules } => {
            let rules = canonicalize(&parse_rules(rules.as_bytes()).unwrap(), *user);
            model
                .entry(*user)
                .or_default()
                .privacy
                .insert(KEYS[*key].into(), rules);
            "stored".into()
        }
        Op::DelPrivacy { user, key } => model
            .get_mut(user)
            .is_some_and(|u| u.privacy.remove(KEYS[*key]).is_some())
            .to_string(),
        Op::Snapshot | Op::Restart => unreachable!("handled by the driver"),
    };
    model.retain(|_, u| !u.is_empty());
    out
}

fn engine_apply(engine: &FriendsEngine, journal: &RecordingJournal, op: &Op) -> String {
    let mut session = Session::default();
    let outcome = |r: Result<StoreOutcome>| match r {
        Ok(StoreOutcome::Stored) => "stored".to_string(),
        Ok(StoreOutcome::NotStored) => "not_stored".to_string(),
        Ok(other) => format!("{other:?}"),
        Err(Error::Client(_)) => "err".to_string(),
        Err(e) => panic!("unexpected error {e}"),
    };
    let deleted = |r: Result<bool>| match r {
        Ok(found) => found.to_string(),
        Err(Error::Client(_)) => "err".to_string(),
        Err(e) => panic!("unexpected error {e}"),
    };
    let mut set = |key: String, value: String| {
        outcome(engine.set(key.as_bytes(), 0, value.as_bytes(), &mut session, journal))
    };
    match op {
        Op::SetFriend {
            user,
            friend,
            mask,
            half,
        } => {
            let name = if *half { "friend_half" } else { "friend" };
            set(format!("{name}{user}_{friend}"), mask.to_string())
        }
        Op::Fold {
            user,
            friend,
            bits,
            or,
        } => {
            let delta = if *or {
                i64::from(*bits)
            } else {
                -i64::from(*bits)
            };
            match engine.incr(
                format!("friend{user}_{friend}").as_bytes(),
                delta,
                &mut Session::default(),
                journal,
            ) {
                Ok(Some(mask)) => mask.to_string(),
                Ok(None) => "none".into(),
                Err(Error::Client(_)) => "err".into(),
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        Op::SetFolder { user, folder, ids } => {
            let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
            set(format!("friends{user}_{folder}"), ids.join(","))
        }
        Op::SetRequest { user, from, mask } => {
            set(format!("friendreq{user}_{from}"), mask.to_string())
        }
        Op::SetPrivacy { user, key, rules } => {
            set(format!("privacy{user}_{}", KEYS[*key]), rules.clone())
        }
        _ => {
            let key = match op {
                Op::DelFriend { user, friend, half } => {
                    let name = if *half { "friend_half" } else { "friend" };
                    format!("{name}{user}_{friend}")
                }
                Op::DelFolder { user, folder } => format!("friend_cat{user}_{folder}"),
                Op::DelUser { user } => format!("user{user}"),
                Op::DelRequest { user, from } => format!("friendreq{user}_{from}"),
                Op::DelRequests { user } => format!("requests{user}"),
                Op::DelPrivacy { user, key } => format!("privacy{user}_{}", KEYS[*key]),
                _ => unreachable!(),
            };
            deleted(engine.delete(key.as_bytes(), &mut Session::default(), journal))
        }
    }
}

/// Checks reads of every user against the model.
fn check_reads(engine: &FriendsEngine, model: &Model) {
    let graph = graph_of(model);
    let empty = ModelUser::default();
    for owner in 1..=USERS {
        let u = model.get(&owner).unwrap_or(&empty);
        let mut full = vec![u.friends.len().to_string()];
        for (id, (mask, date)) in &u.friends {
            full.extend([id.to_string(), mask.to_string(), date.to_string()]);
        }
        assert_eq!(
            get(engine, &format!("friends_full{owner}")).unwrap(),
            full.join(",")
        );
        let mut recent: Vec<_> = u.friends.iter().map(|(id, (m, d))| (*d, *id, *m)).collect();
        recent.sort_unstable_by(|a, b| b.cmp(a));
        let mut want = vec![recent.len().to_string()];
        for (date, id, mask) in recent.iter().take(2) {
            want.extend([id.to_string(), mask.to_string(), date.to_string()]);
        }
        assert_eq!(
            get(engine, &format!("recent_friends{owner}#2")).unwrap(),
            want.join(",")
        );
        let in_folder = u.friends.values().filter(|(m, _)| m & 2 != 0).count();
        assert_eq!(
            get(engine, &format!("friendcnt{owner}_1")).unwrap(),
            in_folder.to_string()
        );
        for other in 1..=USERS {
            let theirs = model.get(&other).unwrap_or(&empty);
            let common: Vec<String> = u
                .friends
                .keys()
                .filter(|id| theirs.friends.contains_key(id))
                .map(ToString::to_string)
                .collect();
            let mut want = vec![common.len().to_string()];
            want.extend(common);
            assert_eq!(
                get(engine, &format!("common_friends{owner},{other}")).unwrap(),
                want.join(",")
            );
        }
        for viewer in 0..=USERS {
            let want: String = KEYS
                .iter()
                .map(|key| match u.privacy.get(*key) {
                    Some(rules) => char::from(reference(rules, owner, viewer, &graph, true)),
                    None if viewer == owner => '3',
                    None => '?',
                })
                .collect();
            let got = get(engine, &format!("{viewer}~{owner}:{}", KEYS.join(","))).unwrap();
            assert_eq!(got, want, "viewer {viewer} owner {owner}");
        }
        for key in KEYS {
            let want = u.privacy.get(key).map(|r| render(r));
            assert_eq!(get(engine, &format!("privacy{owner}_{key}")), want);
        }
    }
}

fn restart(snapshot: &[u8], journal: &RecordingJournal) -> FriendsEngine {
    let engine = FriendsEngine::new(ShardSpec::default());
    if !snapshot.is_empty() {
        engine.load_snapshot(&mut &snapshot[..]).unwrap();
    }
    // Replays the whole log: records already in the snapshot must be skipped per partition.
    journal.replay(&engine);
    engine
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_model(ops in prop::collection::vec(op(), 1..60)) {
        let journal = RecordingJournal::default();
        let mut engine = FriendsEngine::new(ShardSpec::default());
        let mut model = Model::new();
        let mut snapshot = Vec::new();
        for (step, op) in ops.iter().enumerate() {
            let now = 1000 + u32::try_from(step).unwrap();
            journal.time.store(now, Ordering::Relaxed);
            match op {
                Op::Snapshot => {
                    snapshot.clear();
                    engine.write_snapshot(&mut snapshot).unwrap();
                }
                Op::Restart => {
                    engine = restart(&snapshot, &journal);
                    prop_assert_eq!(model_of(&engine), model.clone());
                }
                _ => {
                    let want = model_apply(&mut model, op, now);
                    let got = engine_apply(&engine, &journal, op);
                    prop_assert_eq!(got, want, "step {} op {:?}", step, op);
                    prop_assert_eq!(model_of(&engine), model.clone(), "step {} op {:?}", step, op);
                }
            }
        }
        check_reads(&engine, &model);
        // Replaying the whole log into an empty engine gives the same image.
        let replayed = restart(&[], &journal);
        prop_assert_eq!(model_of(&replayed), model.clone());
        // Snapshot round trip of the final state.
        let mut bytes = Vec::new();
        engine.write_snapshot(&mut bytes).unwrap();
        let loaded = FriendsEngine::new(ShardSpec::default());
        loaded.load_snapshot(&mut &bytes[..]).unwrap();
        prop_assert_eq!(model_of(&loaded), model);
    }
}

/// A snapshot taken while some partitions already hold a later record than others (the fuzzy
/// case) still replays to the same state: a two-sided record is applied to the stale half
/// only.
#[test]
fn fuzzy_snapshot_applies_only_stale_halves() {
    let journal = RecordingJournal::default();
    let engine = FriendsEngine::new(ShardSpec::default());
    journal.time.store(50, Ordering::Relaxed);
    // Users 1 and 2 live in different partitions.
    assert_ne!(engine.partition_of(1), engine.partition_of(2));
    let mut before = Vec::new();
    engine.write_snapshot(&mut before).unwrap();
    set(&engine, &journal, "friend1_2", "6");
    let mut after = Vec::new();
    engine.write_snapshot(&mut after).unwrap();
    // Splice: partition of user 1 from `after`, everything else from `before`.
    let splice = |snapshot: &[u8]| -> Vec<Vec<u8>> {
        let mut blocks = Vec::new();
        let mut at = 12;
        while at + 16 <= snapshot.len() - 4 {
            let len = u32::from_le_bytes(snapshot[at + 12..at + 16].try_into().unwrap()) as usize;
            blocks.push(snapshot[at..at + 16 + len].to_vec());
            at += 16 + len;
        }
        blocks
    };
    let (old, new) = (splice(&before), splice(&after));
    let mut fuzzy = before[..12].to_vec();
    for (index, block) in old.iter().enumerate() {
        fuzzy.extend(if index == engine.partition_of(1) {
            &new[index]
        } else {
            block
        });
    }
    fuzzy.extend(b"KEND");
    let restored = restart(&fuzzy, &journal);
    assert_eq!(model_of(&restored), model_of(&engine));
    assert_eq!(get(&restored, "friends_masks2").unwrap(), "1,1,1");
    assert_eq!(get(&restored, "friends_full1").unwrap(), "1,2,7,50");
}

#[test]
fn two_sided_add_is_one_record() {
    let journal = RecordingJournal::default();
    let engine = FriendsEngine::new(ShardSpec::default());
    assert_eq!(
        set(&engine, &journal, "friend10_20", "4"),
        StoreOutcome::Stored
    );
    assert_eq!(journal.records.lock().len(), 1);
    assert_eq!(get(&engine, "friend10_20").unwrap(), "5");
    assert_eq!(get(&engine, "friend20_10").unwrap(), "1");
    assert!(delete(&engine, &journal, "friend20_10"));
    assert_eq!(journal.records.lock().len(), 2);
    assert_eq!(get(&engine, "friend10_20"), None);
    assert!(!delete(&engine, &journal, "friend20_10"));
}

#[test]
fn cross_shard_uses_one_side_and_reports_friend_of_friend() {
    let journal = MemoryJournal::default();
    let shard = ShardSpec { index: 0, count: 2 };
    let engine = FriendsEngine::new(shard);
    // 2 is local, 3 is not: the add to 3 stores only the local half.
    set(&engine, &journal, "friend2_4", "1");
    set(&engine, &journal, "friend2_3", "1");
    assert_eq!(get(&engine, "friends4").unwrap(), "1,2");
    assert!(matches!(
        engine.get(b"friends3", &mut Session::default()),
        Err(Error::WrongShard {
            id: 3,
            expected: 1,
            ..
        })
    ));
    set(&engine, &journal, "privacy2_album5", "*G");
    // Viewer 5 lives elsewhere and is not a friend: allowed only if a friend of a friend.
    assert_eq!(get(&engine, "5~2:album5").unwrap(), "1");
    // Viewer 6 is local and shares friend 4 with owner 2? No: 4's list holds 2 only.
    assert_eq!(get(&engine, "6~2:album5").unwrap(), "0");
    set(&engine, &journal, "friend6_4", "1");
    assert_eq!(get(&engine, "6~2:album5").unwrap(), "3");
    set(&engine, &journal, "privacy2_album6", "/G*A");
    assert_eq!(get(&engine, "5~2:album5,album6,priv_x").unwrap(), "12?");
    assert_eq!(get(&engine, "5~2:priv_x"), None);
    assert_eq!(get(&engine, "2~2:priv_x").unwrap(), "3");
    // Common friend counts: -1 for users on other shards.
    assert_eq!(
        get(&engine, "common_friends_num2:6,3,4").unwrap(),
        "3,1,-1,0"
    );
}

#[test]
fn temp_lists_feed_common_friend_queries() {
    let journal = MemoryJournal::default();
    let engine = FriendsEngine::new(ShardSpec::default());
    for f in [2, 3, 4, 5] {
        set(&engine, &journal, &format!("friend1_{f}"), "0");
    }
    set(&engine, &journal, "friend9_3", "0");
    set(&engine, &journal, "friend9_4", "0");
    let mut session = Session::default();
    engine
        .set(b"temp77", 0, b"9,3,8", &mut session, &journal)
        .unwrap();
    let common = engine
        .get(b"common_friends_num1:-77", &mut session)
        .unwrap()
        .unwrap();
    assert_eq!(common.data, b"3,2,0,0");
    let among = engine
        .get(b"common_friends1:-77", &mut session)
        .unwrap()
        .unwrap();
    assert_eq!(among.data, b"1,3");
    let inline = engine
        .get(b"common_friends1:5,4,4,77", &mut session)
        .unwrap()
        .unwrap();
    assert_eq!(inline.data, b"2,4,5");
    assert!(matches!(
        engine.get(b"common_friends1:-78", &mut session),
        Err(Error::Client(_))
    ));
    assert!(matches!(
        engine.set(b"temp1", 0, b"1,x", &mut session, &journal),
        Err(Error::Client(_))
    ));
}

/// Issue 9: a temp list tag is any 1..=32 letters, digits or `_` (docs/protocol/friends.md),
/// including tags that start with a letter or `_`, which the key name used to swallow.
#[test]
fn temp_list_tags_may_start_with_a_letter_or_underscore() {
    let journal = MemoryJournal::default();
    let engine = FriendsEngine::new(ShardSpec::default());
    for f in [2, 3] {
        set(&engine, &journal, &format!("friend1_{f}"), "0");
    }
    let mut session = Session::default();
    let tags = ["ab_1", "_x", "AB", "z", "a1b2_c3", &"t".repeat(32)];
    for (i, tag) in tags.into_iter().enumerate() {
        let ids = if i % 2 == 0 { "3,9" } else { "2,3" };
        let key = format!("temp{tag}");
        assert_eq!(
            engine
                .set(key.as_bytes(), 0, ids.as_bytes(), &mut session, &journal)
                .unwrap(),
            StoreOutcome::Stored,
            "set {key}"
        );
        let among = engine
            .get(format!("common_friends1:-{tag}").as_bytes(), &mut session)
            .unwrap()
            .unwrap();
        let expected: &[u8] = if i % 2 == 0 { b"1,3" } else { b"2,2,3" };
        assert_eq!(among.data, expected, "tag {tag}");
    }
    // Other sessions do not see them; bad tags stay refused.
    assert!(matches!(
        engine.get(b"common_friends1:-ab_1", &mut Session::default()),
        Err(Error::Client(_))
    ));
    for bad in [
        "temp",
        "tempa-b",
        "temp.x",
        &format!("temp{}", "t".repeat(33)),
    ] {
        assert!(
            matches!(
                engine.set(bad.as_bytes(), 0, b"1", &mut session, &journal),
                Err(Error::Client(_))
            ),
            "{bad}"
        );
    }
}

#[test]
fn folders_requests_and_slices() {
    let journal = RecordingJournal::default();
    let engine = FriendsEngine::new(ShardSpec::default());
    for (step, f) in [5u32, 3, 8, 1].into_iter().enumerate() {
        journal
            .time
            .store(100 + u32::try_from(step).unwrap(), Ordering::Relaxed);
        set(&engine, &journal, &format!("friend7_{f}"), "0");
    }
    assert_eq!(get(&engine, "friends7").unwrap(), "4,1,3,5,8");
    assert_eq!(get(&engine, "friends7#2").unwrap(), "4,1,3");
    assert_eq!(get(&engine, "friends7#-1,-2").unwrap(), "4,8,5");
    assert_eq!(get(&engine, "friends7#0,0").unwrap(), "4");
    assert_eq!(
        get(&engine, "recent_friends7#2").unwrap(),
        "4,1,1,103,8,1,102"
    );
    assert_eq!(
        set(&engine, &journal, "friends7_2", "3,8,99"),
        StoreOutcome::Stored
    );
    assert_eq!(get(&engine, "friends_masks7_2").unwrap(), "2,3,5,8,5");
    assert_eq!(
        engine
            .incr(b"friend7_3", 8, &mut Session::default(), &journal)
            .unwrap(),
        Some(13)
    );
    assert_eq!(
        engine
            .incr(b"friend7_3", -4, &mut Session::default(), &journal)
            .unwrap(),
        Some(9)
    );
    assert_eq!(
        engine
            .incr(b"friend7_4", 8, &mut Session::default(), &journal)
            .unwrap(),
        None
    );
    set(&engine, &journal, "privacy7_album1", "*2+9/3*A");
    assert_eq!(get(&engine, "privacy7_album1").unwrap(), "*2+9/3*A");
    assert!(delete(&engine, &journal, "friend_cat7_2"));
    assert_eq!(get(&engine, "friends7_2").unwrap(), "0");
    assert_eq!(get(&engine, "privacy7_album1").unwrap(), "+9/3*A");
    assert!(!delete(&engine, &journal, "friend_cat7_2"));
    set(&engine, &journal, "friendreq7_40", "6");
    journal.time.store(200, Ordering::Relaxed);
    set(&engine, &journal, "friendreq7_41", "0");
    assert_eq!(get(&engine, "requests7").unwrap(), "2,41,1,200,40,7,103");
    assert_eq!(get(&engine, "friendreq7_40").unwrap(), "7");
    assert!(delete(&engine, &journal, "requests7"));
    assert_eq!(get(&engine, "requests7").unwrap(), "0");
    assert!(delete(&engine, &journal, "user7"));
    assert_eq!(get(&engine, "friends5").unwrap(), "0");
    assert_eq!(get(&engine, "friends7").unwrap(), "0");
    let stats = engine.stats();
    assert!(stats.iter().any(|(k, _)| k == "friends_bytes_per_edge"));
}

#[test]
fn bad_input_is_a_client_error() {
    let journal = MemoryJournal::default();
    let engine = FriendsEngine::new(ShardSpec::default());
    let mut s = Session::default();
    let client = |r: Result<StoreOutcome>| assert!(matches!(r, Err(Error::Client(_))), "{r:?}");
    client(engine.set(b"friend1_1", 0, b"0", &mut s, &journal));
    client(engine.set(b"friend0_1", 0, b"0", &mut s, &journal));
    client(engine.set(b"friend-1_2", 0, b"0", &mut s, &journal));
    client(engine.set(b"friend1_2", 0, b"x", &mut s, &journal));
    client(engine.set(b"friend1_2", 0, b"2147483648", &mut s, &journal));
    client(engine.set(b"friends1_31", 0, b"2", &mut s, &journal));
    client(engine.set(b"friends1_1", 0, b"2,-3", &mut s, &journal));
    client(engine.set(b"privacy1_album1", 0, b"+1*31", &mut s, &journal));
    client(engine.set(b"privacy1_album", 0, b"*A", &mut s, &journal));
    client(engine.set(b"friendreq1_1", 0, b"0", &mut s, &journal));
    client(engine.set(b"nonsense1", 0, b"0", &mut s, &journal));
    assert!(matches!(
        engine.delete(b"friend_cat1_0", &mut s, &journal),
        Err(Error::Client(_))
    ));
    assert!(matches!(
        engine.delete(b"friend1_1", &mut s, &journal),
        Err(Error::Client(_))
    ));
    assert!(matches!(
        engine.incr(b"friend1_2", 1 << 31, &mut s, &journal),
        Err(Error::Client(_))
    ));
    assert!(matches!(
        engine.incr(b"friends1", 1, &mut s, &journal),
        Err(Error::Client(_))
    ));
    assert!(matches!(
        engine.get(b"friends1_31", &mut s),
        Err(Error::Client(_))
    ));
    assert!(matches!(engine.get(b"0~1:album1", &mut s), Ok(None)));
    let many: Vec<String> = (0..=crate::PRIVACY_CHECK_KEYS_MAX)
        .map(|i| format!("k{i}"))
        .collect();
    assert!(matches!(
        engine.get(format!("1~2:{}", many.join(",")).as_bytes(), &mut s),
        Err(Error::Client(_))
    ));
    let long: Vec<String> = (1..=crate::USER_LIST_MAX + 1)
        .map(|i| i.to_string())
        .collect();
    client(engine.set(b"temp1", 0, long.join(",").as_bytes(), &mut s, &journal));
    // Wrong shard for every owner-addressed key.
    let sharded = FriendsEngine::new(ShardSpec { index: 1, count: 2 });
    assert!(matches!(
        sharded.set(b"friend2_3", 0, b"0", &mut s, &journal),
        Err(Error::WrongShard { .. })
    ));
    assert!(matches!(
        sharded.get(b"1~2:album1", &mut s),
        Err(Error::WrongShard { .. })
    ));
    assert!(matches!(
        sharded.get(b"common_friends1,2", &mut s),
        Err(Error::WrongShard { .. })
    ));
    // Corrupt records and snapshots are errors, not panics.
    assert!(matches!(
        engine.apply(0x4601, &[1, 2], ApplyCtx { pos: 1, time: 1 }),
        Err(Error::Corrupt { .. })
    ));
    assert!(engine.load_snapshot(&mut &b"KFRS\x01\0\0\0"[..]).is_err());
}

#[test]
fn friend_limit_is_enforced_on_both_sides() {
    let journal = MemoryJournal::default();
    let engine = FriendsEngine::new(ShardSpec::default());
    let max = u32::try_from(crate::FRIENDS_PER_USER_MAX).unwrap();
    for f in 2..=max + 1 {
        set(&engine, &journal, &format!("friend_half1_{f}"), "0");
    }
    let mut s = Session::default();
    let err = engine.set(b"friend1_99999", 0, b"0", &mut s, &journal);
    assert!(
        matches!(err, Err(Error::Client(ref m)) if m.contains("10000")),
        "{err:?}"
    );
    // Updating an existing friend still works, and so does the other side hitting the limit.
    assert!(engine.set(b"friend1_5", 0, b"2", &mut s, &journal).is_ok());
    let err = engine.set(b"friend99999_1", 0, b"0", &mut s, &journal);
    assert!(matches!(err, Err(Error::Client(_))), "{err:?}");
    assert_eq!(
        get(&engine, "friendcnt1").unwrap(),
        crate::FRIENDS_PER_USER_MAX.to_string()
    );
}

/// The example session of `docs/protocol/friends.md`, step by step.
#[test]
fn documented_example_session() {
    let journal = RecordingJournal::default();
    journal.time.store(1_700_000_000, Ordering::Relaxed);
    let engine = FriendsEngine::new(ShardSpec::default());
    let mut s = Session::default();
    assert_eq!(
        set(&engine, &journal, "friend10_20", "6"),
        StoreOutcome::Stored
    );
    assert_eq!(get(&engine, "friend10_20").unwrap(), "7");
    assert_eq!(get(&engine, "friend20_10").unwrap(), "1");
    set(&engine, &journal, "friend10_30", "0");
    assert_eq!(
        engine.incr(b"friend10_30", 8, &mut s, &journal).unwrap(),
        Some(9)
    );
    assert_eq!(get(&engine, "friends_masks10").unwrap(), "2,20,7,30,9");
    assert_eq!(get(&engine, "friends10_3").unwrap(), "1,30");
    set(&engine, &journal, "privacy10_album17", "-1+2*3/4*0/G*A");
    assert_eq!(get(&engine, "privacy10_album17").unwrap(), "-1*3+2/4*0/G*A");
    set(&engine, &journal, "privacy10_priv_phone", "*2");
    assert_eq!(
        get(&engine, "30~10:album17,priv_phone,note5").unwrap(),
        "30?"
    );
    set(&engine, &journal, "friend40_20", "0");
    assert_eq!(get(&engine, "40~10:album17").unwrap(), "0");
    engine.set(b"temp7", 0, b"20,30", &mut s, &journal).unwrap();
    let v = engine.get(b"common_friends40:-7", &mut s).unwrap().unwrap();
    assert_eq!(v.data, b"1,20");
    assert_eq!(get(&engine, "common_friends_num10:40,30").unwrap(), "2,1,0");
    set(&engine, &journal, "friendreq10_50", "4");
    assert_eq!(get(&engine, "requests10").unwrap(), "1,50,5,1700000000");
    assert!(delete(&engine, &journal, "friend_cat10_2"));
    assert_eq!(get(&engine, "friend10_20").unwrap(), "3");
    assert_eq!(get(&engine, "privacy10_priv_phone").unwrap(), "");
    let err = engine.set(b"friend10_10", 0, b"0", &mut s, &journal);
    assert!(matches!(err, Err(Error::Client(ref m)) if m == "user 10 cannot befriend themselves"));
}
