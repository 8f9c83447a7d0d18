//! Model-based test: random operations against the engine and a naive model (a `Vec` of
//! messages per mailbox), with snapshot/replay "restarts", checking every read query.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{get, Recorder};
use koshka_engine::{Direct, Engine, Session, ShardSpec, StoreOutcome};
use koshka_messages::search::stems;
use koshka_messages::{Flavour, Layout, MessagesEngine, MESSAGE_SUBLISTS};
use proptest::prelude::*;

const USERS: [i64; 4] = [1, 2, 3, 65]; // 1 and 65 share a partition
const TEXTS: [&str; 7] = [
    "hello world",
    "Сообщения важные",
    "running fast",
    "run home\tnow",
    "сообщение друга, привет",
    "привет мир",
    "Тема\tHello мир",
];
const WORDS: [&str; 6] = ["hello", "сообщение", "run", "мир", "world", "привет"];

#[derive(Debug, Clone)]
enum Op {
    Send {
        from: usize,
        to: usize,
        flags: u32,
        text: usize,
    },
    NewMsg {
        owner: usize,
        peer: usize,
        flags: u32,
        text: usize,
    },
    Flags {
        owner: usize,
        lid: u32,
        op: u8,
        value: u32,
    },
    ReadUpto {
        owner: usize,
        peer: usize,
        lid: u32,
    },
    Edit {
        owner: usize,
        lid: u32,
        text: usize,
    },
    Delete {
        owner: usize,
        lid: u32,
    },
    DeleteDialog {
        owner: usize,
        peer: usize,
    },
    Trim {
        owner: usize,
        min_lid: u32,
    },
    Extra {
        owner: usize,
        lid: u32,
        field: u8,
        add: bool,
        value: i64,
    },
    Snapshot,
    Restart {
        from_zero: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let user = 0..USERS.len();
    let text = 0..TEXTS.len();
    let flags = prop::sample::select(vec![0u32, 1, 2, 8, 64, 128, 136, 193]);
    prop_oneof![
        6 => (user.clone(), user.clone(), flags.clone(), text.clone())
            .prop_map(|(from, to, flags, text)| Op::Send { from, to, flags, text }),
        2 => (user.clone(), user.clone(), flags.clone(), text.clone())
            .prop_map(|(owner, peer, flags, text)| Op::NewMsg { owner, peer, flags, text }),
        3 => (user.clone(), 1..14u32, 0..3u8, flags)
            .prop_map(|(owner, lid, op, value)| Op::Flags { owner, lid, op, value }),
        1 => (user.clone(), user.clone(), 0..14u32)
            .prop_map(|(owner, peer, lid)| Op::ReadUpto { owner, peer, lid }),
        1 => (user.clone(), 1..14u32, text)
            .prop_map(|(owner, lid, text)| Op::Edit { owner, lid, text }),
        1 => (user.clone(), 1..14u32).prop_map(|(owner, lid)| Op::Delete { owner, lid }),
        1 => (user.clone(), user.clone())
            .prop_map(|(owner, peer)| Op::DeleteDialog { owner, peer }),
        1 => (user.clone(), 1..10u32).prop_map(|(owner, min_lid)| Op::Trim { owner, min_lid }),
        1 => (user, 1..14u32, 0..8u8, any::<bool>(), -5..5i64)
            .prop_map(|(owner, lid, field, add, value)| Op::Extra { owner, lid, field, add, value }),
        1 => Just(Op::Snapshot),
        1 => any::<bool>().prop_map(|from_zero| Op::Restart { from_zero }),
    ]
}

#[derive(Debug, Clone)]
struct MMsg {
    lid: u32,
    peer: i64,
    peer_lid: u32,
    date: u32,
    flags: u32,
    subject: String,
    body: String,
    extras: BTreeMap<u8, i64>,
}

#[derive(Debug, Clone, Default)]
struct MBox {
    first: u32,
    next: u32,
    msgs: Vec<MMsg>,
    ts: u64,
}

impl MBox {
    fn new() -> Self {
        Self {
            first: 1,
            next: 1,
            ..Self::default()
        }
    }
    fn find(&mut self, lid: u32) -> Option<&mut MMsg> {
        self.msgs.iter_mut().find(|m| m.lid == lid)
    }
    fn conversation(&self, peer: i64) -> Vec<&MMsg> {
        self.msgs
            .iter()
            .filter(|m| m.peer == peer && m.flags & 128 == 0)
            .collect()
    }
}

fn split(text: &str) -> (String, String) {
    match text.split_once('\t') {
        Some((s, b)) => (s.to_string(), b.to_string()),
        None => (String::new(), text.to_string()),
    }
}

struct World {
    layout: Layout,
    engine: Arc<MessagesEngine>,
    journal: Recorder,
    snapshot: Option<(Vec<u8>, u64)>,
    model: BTreeMap<i64, MBox>,
}

impl World {
    fn new(layout: Layout) -> Self {
        let engine = Arc::new(MessagesEngine::with_layout(
            Flavour::Messages,
            ShardSpec::default(),
            layout,
        ));
        let model = USERS.iter().map(|&u| (u, MBox::new())).collect();
        Self {
            layout,
            engine,
            journal: Recorder::default(),
            snapshot: None,
            model,
        }
    }

    fn add(&mut self, owner: i64, peer: i64, peer_lid: u32, flags: u32, text: &str) -> u32 {
        let date = self.journal.last_time();
        let mb = self.model.get_mut(&owner).unwrap();
        let lid = mb.next;
        mb.next += 1;
        mb.ts += 1;
        let (subject, body) = split(text);
        mb.msgs.push(MMsg {
            lid,
            peer,
            peer_lid,
            date,
            flags,
            subject,
            body,
            extras: BTreeMap::new(),
        });
        lid
    }

    fn remove(&mut self, owner: i64, pred: impl Fn(&MMsg) -> bool) -> usize {
        let mb = self.model.get_mut(&owner).unwrap();
        let before = mb.msgs.len();
        mb.msgs.retain(|m| !pred(m));
        let removed = before - mb.msgs.len();
        mb.ts += removed as u64;
        removed
    }

    fn run(&mut self, op: &Op) {
        let engine = Arc::clone(&self.engine);
        let e: &dyn Engine = &*engine;
        let j = &self.journal;
        let mut session = Session::default();
        let before = j.len();
        match *op {
            Op::Send {
                from,
                to,
                flags,
                text,
            } => {
                let (from, to) = (USERS[from], USERS[to]);
                let key = format!("sendmsg{from}_{to}#t");
                let res = e.set(
                    key.as_bytes(),
                    0,
                    format!("{flags}\n{}", TEXTS[text]).as_bytes(),
                    &mut session,
                    j,
                );
                if from == to {
                    assert!(res.is_err());
                    return;
                }
                assert_eq!(res.unwrap(), StoreOutcome::Stored);
                let from_next = self.model[&from].next;
                let to_next = self.model[&to].next;
                let _ = j;
                let a = self.add(from, to, to_next, (flags & !1) | 2, TEXTS[text]);
                let b = self.add(to, from, from_next, (flags & !2) | 1, TEXTS[text]);
                let got = e
                    .get(format!("newmsgid{from}#t").as_bytes(), &mut session)
                    .unwrap();
                assert_eq!(got.unwrap().data, a.to_string().into_bytes());
                let got = e
                    .get(format!("newmsgid{to}#t").as_bytes(), &mut session)
                    .unwrap();
                assert_eq!(got.unwrap().data, b.to_string().into_bytes());
            }
            Op::NewMsg {
                owner,
                peer,
                flags,
                text,
            } => {
                let (owner, peer) = (USERS[owner], USERS[peer]);
                let value = format!("{flags},{peer},0\n{}", TEXTS[text]);
                let res = e.set(
                    format!("newmsg{owner}").as_bytes(),
                    0,
                    value.as_bytes(),
                    &mut session,
                    j,
                );
                assert_eq!(res.unwrap(), StoreOutcome::Stored);
                self.add(owner, peer, 0, flags, TEXTS[text]);
            }
            Op::Flags {
                owner,
                lid,
                op,
                value,
            } => {
                let owner = USERS[owner];
                let key = format!("flags{owner}_{lid}");
                let res = match op {
                    0 => e
                        .set(
                            key.as_bytes(),
                            0,
                            value.to_string().as_bytes(),
                            &mut session,
                            j,
                        )
                        .map(|o| (o == StoreOutcome::Stored).then_some(0)),
                    1 => e.incr(key.as_bytes(), i64::from(value), &mut session, j),
                    _ => e.incr(key.as_bytes(), -i64::from(value), &mut session, j),
                };
                let res = res.unwrap();
                let mb = self.model.get_mut(&owner).unwrap();
                match mb.find(lid) {
                    None => assert_eq!(res, None),
                    Some(m) => {
                        m.flags = match op {
                            0 => value,
                            1 => m.flags | value,
                            _ => m.flags & !value,
                        };
                        if op != 0 {
                            assert_eq!(res, Some(u64::from(m.flags)));
                        }
                        mb.ts += 1;
                    }
                }
            }
            Op::ReadUpto { owner, peer, lid } => {
                let (owner, peer) = (USERS[owner], USERS[peer]);
                let res = if lid == 0 {
                    e.set(
                        format!("readall{owner}_{peer}").as_bytes(),
                        0,
                        b"",
                        &mut session,
                        j,
                    )
                } else {
                    e.set(
                        format!("readupto{owner}_{peer}").as_bytes(),
                        0,
                        lid.to_string().as_bytes(),
                        &mut session,
                        j,
                    )
                };
                let mb = self.model.get_mut(&owner).unwrap();
                if mb.conversation(peer).is_empty() {
                    assert_eq!(res.unwrap(), StoreOutcome::NotFound);
                } else {
                    assert_eq!(res.unwrap(), StoreOutcome::Stored);
                    for m in &mut mb.msgs {
                        if m.peer == peer
                            && m.flags & 128 == 0
                            && (lid == 0 || m.lid <= lid)
                            && m.flags & 3 == 1
                        {
                            m.flags &= !1;
                        }
                    }
                    mb.ts += 1;
                }
            }
            Op::Edit { owner, lid, text } => {
                let owner = USERS[owner];
                let res = e
                    .set(
                        format!("message_text{owner}_{lid}").as_bytes(),
                        0,
                        TEXTS[text].as_bytes(),
                        &mut session,
                        j,
                    )
                    .unwrap();
                let mb = self.model.get_mut(&owner).unwrap();
                match mb.find(lid) {
                    None => assert_eq!(res, StoreOutcome::NotFound),
                    Some(m) => {
                        assert_eq!(res, StoreOutcome::Stored);
                        (m.subject, m.body) = split(TEXTS[text]);
                        mb.ts += 1;
                    }
                }
            }
            Op::Delete { owner, lid } => {
                let owner = USERS[owner];
                let res = e
                    .delete(format!("message{owner}_{lid}").as_bytes(), &mut session, j)
                    .unwrap();
                assert_eq!(res, self.remove(owner, |m| m.lid == lid) == 1);
            }
            Op::DeleteDialog { owner, peer } => {
                let (owner, peer) = (USERS[owner], USERS[peer]);
                let res = e
                    .delete(format!("dialog{owner}_{peer}").as_bytes(), &mut session, j)
                    .unwrap();
                assert_eq!(res, self.remove(owner, |m| m.peer == peer) > 0);
            }
            Op::Trim { owner, min_lid } => {
                let owner = USERS[owner];
                let res = e
                    .delete(
                        format!("first_messages{owner}_{min_lid}").as_bytes(),
                        &mut session,
                        j,
                    )
                    .unwrap();
                let mb = &self.model[&owner];
                let expect = min_lid > mb.first && !mb.msgs.is_empty();
                assert_eq!(res, expect);
                if expect {
                    self.remove(owner, |m| m.lid < min_lid);
                    let mb = self.model.get_mut(&owner).unwrap();
                    mb.first = min_lid.min(mb.next);
                }
            }
            Op::Extra {
                owner,
                lid,
                field,
                add,
                value,
            } => {
                let owner = USERS[owner];
                let key = format!("extra{owner}_{lid}:{field}");
                let res = if add {
                    e.incr(key.as_bytes(), value, &mut session, j)
                        .unwrap()
                        .map(|_| ())
                } else {
                    let o = e
                        .set(
                            key.as_bytes(),
                            0,
                            value.to_string().as_bytes(),
                            &mut session,
                            j,
                        )
                        .unwrap();
                    (o == StoreOutcome::Stored).then_some(())
                };
                let mb = self.model.get_mut(&owner).unwrap();
                match mb.find(lid) {
                    None => assert_eq!(res, None),
                    Some(m) => {
                        assert_eq!(res, Some(()));
                        let slot = m.extras.entry(field).or_insert(0);
                        *slot = if add { slot.wrapping_add(value) } else { value };
                    }
                }
            }
            Op::Snapshot => {
                let mut bytes = Vec::new();
                let pos = j.pos();
                self.engine.write_snapshot(&mut bytes).unwrap();
                self.snapshot = Some((bytes, pos));
            }
            Op::Restart { from_zero } => {
                let fresh = Arc::new(MessagesEngine::with_layout(
                    Flavour::Messages,
                    ShardSpec::default(),
                    self.layout,
                ));
                match (&self.snapshot, from_zero) {
                    (Some((bytes, pos)), false) => {
                        fresh.load_snapshot(&mut bytes.as_slice()).unwrap();
                        // Replaying from zero must skip what the snapshot holds.
                        let after = if pos % 2 == 0 { *pos } else { 0 };
                        self.journal.replay(&*fresh, after);
                    }
                    _ => self.journal.replay(&*fresh, 0),
                }
                self.engine = fresh;
            }
        }
        // Each successful update appends exactly one record; failures append none.
        let _ = before;
    }

    fn check(&self) {
        if let Err(broken) = self.engine.check_invariants() {
            panic!("invariant: {broken}");
        }
        let e: &dyn Engine = &*self.engine;
        for (&owner, mb) in &self.model {
            for lid in 1..=mb.next {
                let got = get(e, &format!("message{owner}_{lid}#4"));
                match mb.msgs.iter().find(|m| m.lid == lid) {
                    None => assert_eq!(got, None, "message{owner}_{lid}"),
                    Some(m) => {
                        let v: serde_json::Value = serde_json::from_str(&got.unwrap()).unwrap();
                        assert_eq!(v["peer"], m.peer, "peer of {owner}_{lid}");
                        assert_eq!(v["peer_msg_id"], m.peer_lid);
                        assert_eq!(v["date"], m.date);
                        assert_eq!(v["flags"], m.flags, "flags of {owner}_{lid}");
                        assert_eq!(v["subject"], m.subject.as_str());
                        assert_eq!(v["text"], m.body.as_str());
                        for (k, x) in &m.extras {
                            if *x != 0 {
                                assert_eq!(v["extra"][k.to_string()], *x);
                            }
                        }
                        assert_eq!(
                            v["extra"].as_object().unwrap().len(),
                            m.extras.values().filter(|x| **x != 0).count()
                        );
                    }
                }
            }
            for &(and, xor) in MESSAGE_SUBLISTS {
                let ids: Vec<u32> = mb
                    .msgs
                    .iter()
                    .filter(|m| (m.flags ^ xor) & and == 0)
                    .map(|m| m.lid)
                    .collect();
                let expect = list(ids.len(), ids.iter().rev());
                assert_eq!(
                    get(e, &format!("sublist{owner}_{and}:{xor}#-1,1")).unwrap(),
                    expect,
                    "sublist {and}:{xor} of {owner}"
                );
                if let Some(&first) = ids.first() {
                    assert_eq!(
                        get(e, &format!("sublistpos{owner}_{and}:{xor},{first}")).unwrap(),
                        "1"
                    );
                }
                for (from, to) in [(2, 3), (-2, -3), (3, -1)] {
                    assert_eq!(
                        get(e, &format!("sublist{owner}_{and}:{xor}#{from},{to}")).unwrap(),
                        slice(&ids, from, to),
                        "sublist {and}:{xor}#{from},{to} of {owner}"
                    );
                }
            }
            let mut dialogs = Vec::new();
            let mut unread_total = 0;
            for &peer in &USERS {
                let conv = mb.conversation(peer);
                let ids: Vec<u32> = conv.iter().map(|m| m.lid).collect();
                assert_eq!(
                    get(e, &format!("peermsglist{owner}_{peer}#1,-1")).unwrap(),
                    list(ids.len(), ids.iter())
                );
                for (from, to) in [(-1, -2), (2, 3), (-3, -2), (2, -1)] {
                    assert_eq!(
                        get(e, &format!("peermsglist{owner}_{peer}#{from},{to}")).unwrap(),
                        slice(&ids, from, to),
                        "peermsglist{owner}_{peer}#{from},{to}"
                    );
                }
                for (position, lid) in ids.iter().enumerate() {
                    assert_eq!(
                        get(e, &format!("peermsglistpos{owner}_{peer}:{lid}")).unwrap(),
                        (position + 1).to_string()
                    );
                }
                let unread = conv.iter().filter(|m| m.flags & 3 == 1).count();
                unread_total += unread;
                assert_eq!(
                    get(e, &format!("unreadcount{owner}_{peer}")).unwrap(),
                    unread.to_string()
                );
                if let Some(last) = ids.last() {
                    dialogs.push((*last, peer, unread));
                }
            }
            assert_eq!(
                get(e, &format!("unreadcount{owner}")).unwrap(),
                unread_total.to_string()
            );
            dialogs.sort_unstable_by_key(|d| std::cmp::Reverse(d.0));
            let mut expect = dialogs.len().to_string();
            for (lid, peer, unread) in &dialogs {
                expect.push_str(&format!(",{lid},{peer},{unread}"));
            }
            assert_eq!(
                get(e, &format!("topmsglist{owner}#-1,1")).unwrap(),
                expect,
                "dialogs of {owner}"
            );
            dialogs.reverse();
            let triples: Vec<String> = dialogs
                .iter()
                .map(|(lid, peer, unread)| format!("{lid},{peer},{unread}"))
                .collect();
            for (from, to) in [(2, 3), (-1, -2), (-3, -2), (1, 2)] {
                let picked = slice_items(&triples, from, to);
                let mut expect = triples.len().to_string();
                for t in picked {
                    expect.push(',');
                    expect.push_str(t);
                }
                assert_eq!(
                    get(e, &format!("topmsglist{owner}#{from},{to}")).unwrap(),
                    expect,
                    "topmsglist{owner}#{from},{to}"
                );
            }
            assert_eq!(
                get(e, &format!("timestamp{owner}")).unwrap(),
                mb.ts.to_string(),
                "timestamp of {owner}"
            );
            for word in WORDS {
                let q = stems(word.as_bytes());
                let ids: Vec<u32> = mb
                    .msgs
                    .iter()
                    .rev()
                    .filter(|m| m.flags & 128 == 0)
                    .filter(|m| {
                        let mut s = stems(m.subject.as_bytes());
                        s.extend(stems(m.body.as_bytes()));
                        q.iter().all(|w| s.contains(w))
                    })
                    .map(|m| m.lid)
                    .collect();
                let encoded: String = word.bytes().map(|b| format!("%{b:02X}")).collect();
                assert_eq!(
                    get(e, &format!("search({owner},1000,{encoded})")).unwrap(),
                    list(ids.len(), ids.iter()),
                    "search {word} in {owner}"
                );
            }
        }
    }
}

/// The items a `#from,to` slice selects from an ascending list, in reply order (the rule of
/// docs/protocol/messages.md, written out naively).
fn slice_items<T>(items: &[T], from: i64, to: i64) -> Vec<&T> {
    let n = items.len() as i64;
    let absolute = |i: i64| if i < 0 { n + 1 + i } else { i };
    let (a, b) = (absolute(from), absolute(to));
    let (lo, hi) = (a.min(b).max(1), a.max(b).min(n));
    let mut picked: Vec<&T> = (lo..=hi).map(|i| &items[(i - 1) as usize]).collect();
    if a > b {
        picked.reverse();
    }
    picked
}

fn slice(ids: &[u32], from: i64, to: i64) -> String {
    list(ids.len(), slice_items(ids, from, to).into_iter())
}

fn list<'a>(total: usize, ids: impl Iterator<Item = &'a u32>) -> String {
    let mut out = total.to_string();
    for id in ids {
        out.push_str(&format!(",{id}"));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_model(ops in prop::collection::vec(op(), 1..60), small in any::<bool>()) {
        let layout = if small { Layout::test_min() } else { Layout::production() };
        let mut world = World::new(layout);
        for op in &ops {
            world.run(op);
            world.check();
        }
        // Finally both restart paths must give the same answers.
        world.run(&Op::Snapshot);
        world.run(&Op::Restart { from_zero: false });
        world.check();
        world.run(&Op::Restart { from_zero: true });
        world.check();
    }
}
