//! Committed fixtures of the on-disk formats: a snapshot and the binlog records of a small
//! messages engine and a small wall, written by the engine before the compact in-memory
//! layout (commit c7eff91 with its replies-after-reload fix; snapshot format `KMSGSNP1`),
//! and the read answers that engine gave for them. Today's engine must load the old snapshot and replay the old
//! records into exactly the same answers, byte for byte.
//!
//! `KOSHKA_WRITE_FIXTURES=1 cargo test -p koshka-messages --test fixtures` rewrites the
//! fixtures from the current engine; do that only for a new format version, keeping the old
//! files (a format change gets new files next to the old ones, never replaces them).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use common::{get, Recorder};
use koshka_engine::{ApplyCtx, Direct, Engine, Session, ShardSpec};
use koshka_messages::{Flavour, MessagesEngine, MESSAGE_SUBLISTS, WALL_SUBLISTS};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A small deterministic generator (the fixtures must not depend on a crate's RNG).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

const TEXTS: [&str; 10] = [
    "Привет! Как дела? Давно не виделись, пиши.",
    "hello world, running late again",
    "Тема письма\tТело письма с темой и \"кавычками\" и обратной \\ чертой",
    "\u{1}ua web\t\u{1}geo msk\tКлуджи\tи текст после них",
    "строка один\nстрока два\r\nтри\u{2}управляющий",
    "Ёлка и ёжик: сообщения важные, сообщение друга",
    "mixed русский and English words: сообщения messages",
    "emoji 😀 and ünïcödé, 日本語のテキスト",
    "Win98 ошибка 001: Неожиданное условие: загрузка выполнена без ошибок. Win98 ошибка 002: \
     Недостаточно дискового пространства. Вам нужно по крайней мере 300 Гб свободной памяти.",
    "x",
];

const USERS: [i64; 6] = [1, 2, 3, 4, 65, 129];

/// The updates of the messages fixture, issued through the memcached-level API.
fn build_messages(e: &MessagesEngine, j: &Recorder) {
    let mut s = Session::default();
    let mut rng = Lcg(42);
    for i in 0..450u64 {
        // User 1 gets the most traffic (its history ring overflows); others a handful.
        let from = if i % 3 == 0 {
            1
        } else {
            USERS[rng.next(6) as usize]
        };
        let mut to = USERS[rng.next(6) as usize];
        if to == from {
            to = if from == 2 { 3 } else { 2 };
        }
        let flags = [0u32, 8, 16, 32, 64, 1024][rng.next(6) as usize];
        let text = TEXTS[rng.next(TEXTS.len() as u64) as usize];
        let value = format!("{flags}\n{text}");
        e.set(
            format!("sendmsg{from}_{to}").as_bytes(),
            0,
            value.as_bytes(),
            &mut s,
            j,
        )
        .unwrap();
        match rng.next(12) {
            0 => {
                let owner = USERS[rng.next(6) as usize];
                let peer = USERS[rng.next(6) as usize];
                let value = format!("1,{peer}\n{}", TEXTS[rng.next(10) as usize]);
                e.set(
                    format!("newmsg{owner}").as_bytes(),
                    0,
                    value.as_bytes(),
                    &mut s,
                    j,
                )
                .unwrap();
            }
            1 => {
                let key = format!("readall{to}_{from}");
                e.set(key.as_bytes(), 0, b"", &mut s, j).unwrap();
            }
            2 => {
                let key = format!("readupto{to}_{from}");
                let upto = rng.next(40) + 1;
                e.set(key.as_bytes(), 0, upto.to_string().as_bytes(), &mut s, j)
                    .unwrap();
            }
            3 => {
                let key = format!("flags{from}_{}", rng.next(60) + 1);
                let bits = [128i64, 8, 64, 4][rng.next(4) as usize];
                e.incr(key.as_bytes(), bits, &mut s, j).unwrap();
            }
            4 => {
                let key = format!("flags{to}_{}", rng.next(60) + 1);
                e.incr(key.as_bytes(), -128, &mut s, j).unwrap();
            }
            5 => {
                let key = format!("message_text{from}_{}", rng.next(60) + 1);
                let text = TEXTS[rng.next(10) as usize];
                e.set(key.as_bytes(), 0, text.as_bytes(), &mut s, j)
                    .unwrap();
            }
            6 => {
                let key = format!("message{to}_{}", rng.next(60) + 1);
                e.delete(key.as_bytes(), &mut s, j).unwrap();
            }
            7 => {
                let key = format!("extra{from}_{}:{}", rng.next(60) + 1, rng.next(8));
                e.set(key.as_bytes(), 0, b"-17", &mut s, j).unwrap();
                e.incr(key.as_bytes(), 5, &mut s, j).unwrap();
            }
            8 if i % 50 == 8 => {
                let key = format!("dialog{to}_{from}");
                e.delete(key.as_bytes(), &mut s, j).unwrap();
            }
            9 if i == 297 => {
                e.delete(b"first_messages3_5", &mut s, j).unwrap();
            }
            _ => {}
        }
    }
    e.set(b"flags2_1", 0, b"777", &mut s, j).unwrap();
    e.set(b"peer_msg_id4_1", 0, b"99", &mut s, j).unwrap();
}

/// The updates of the wall fixture.
fn build_wall(e: &MessagesEngine, j: &Recorder) {
    let mut s = Session::default();
    let mut rng = Lcg(7);
    for i in 0..120u64 {
        let owner = USERS[rng.next(6) as usize];
        let author = USERS[rng.next(6) as usize];
        let text = TEXTS[rng.next(10) as usize];
        let value = match rng.next(5) {
            0 if i > 3 => format!("0,{author},{}\n{text}", rng.next(5) + 1),
            1 => format!("4,{author}\n{text}"),
            _ => format!("0,{author}\n{text}"),
        };
        e.set(
            format!("newpost{owner}").as_bytes(),
            0,
            value.as_bytes(),
            &mut s,
            j,
        )
        .unwrap();
        match rng.next(8) {
            0 => {
                let orig = USERS[rng.next(6) as usize];
                let value = format!("{orig},{},{author}", rng.next(10) + 1);
                e.set(
                    format!("repost{owner}").as_bytes(),
                    0,
                    value.as_bytes(),
                    &mut s,
                    j,
                )
                .unwrap();
            }
            1 => {
                e.set(
                    format!("status{owner}").as_bytes(),
                    0,
                    text.as_bytes(),
                    &mut s,
                    j,
                )
                .unwrap();
            }
            2 => {
                let key = format!("flags{owner}_{}", rng.next(20) + 1);
                e.incr(key.as_bytes(), 128, &mut s, j).unwrap();
            }
            3 => {
                let key = format!("post{owner}_{}", rng.next(20) + 1);
                e.delete(key.as_bytes(), &mut s, j).unwrap();
            }
            _ => {}
        }
    }
}

/// Every read key the fixtures check, per flavour.
fn keys(flavour: Flavour) -> Vec<String> {
    let mut keys = Vec::new();
    let (item, sublists) = match flavour {
        Flavour::Messages => ("message", MESSAGE_SUBLISTS),
        Flavour::Wall => ("post", WALL_SUBLISTS),
    };
    let words = [
        "привет",
        "сообщения",
        "hello",
        "running+late",
        "ошибка+памяти",
        "ёлка",
        "текст",
        "messages+сообщение",
        "日本語のテキスト",
    ];
    for &u in &USERS {
        for lid in 1..=160 {
            keys.push(format!("flags{u}_{lid}"));
            if lid % 3 == 1 || u == 4 {
                keys.push(format!("{item}{u}_{lid}"));
            }
            if lid <= 12 {
                for mode in ["#1", "#2", "#4", "#6,12", "#0,0", "#0,7"] {
                    keys.push(format!("{item}{u}_{lid}{mode}"));
                }
                for field in 0..8 {
                    keys.push(format!("extra{u}_{lid}:{field}"));
                }
            }
        }
        for (and, xor) in sublists {
            for slice in ["", "#1,-1", "#-1,-20", "#3,7", "#-5,-2", "#0,0", "#-3,1"] {
                keys.push(format!("sublist{u}_{and}:{xor}{slice}"));
            }
            for lid in [1, 2, 17, 40, 77] {
                keys.push(format!("sublistpos{u}_{and}:{xor},{lid}"));
            }
        }
        for &p in &USERS {
            for slice in ["", "#1,-1", "#-1,-20", "#2,3", "#0,0"] {
                keys.push(format!("peermsglist{u}_{p}{slice}"));
            }
            for lid in [1, 5, 30] {
                keys.push(format!("peermsglistpos{u}_{p}:{lid}"));
            }
            if flavour == Flavour::Messages {
                keys.push(format!("unreadcount{u}_{p}"));
            }
        }
        keys.push(format!("timestamp{u}"));
        for ts in [0, 1, 5, 100, 300, 600, 1000] {
            keys.push(format!("history{u}#{ts}"));
            keys.push(format!("history{u}#{ts},3"));
        }
        for w in words {
            keys.push(format!("search({u},20,{w})"));
            keys.push(format!("search({u},1,{w})"));
            keys.push(format!("xsearch({u},130:0,0,0,0,5,{w})"));
            keys.push(format!("xsearch({u},0:0,2,0,0,5,{w})"));
        }
        match flavour {
            Flavour::Messages => {
                for slice in ["", "#1,-1", "#-1,-20", "#2,3", "#0,0", "#-2,-1"] {
                    keys.push(format!("topmsglist{u}{slice}"));
                }
                keys.push(format!("unreadcount{u}"));
            }
            Flavour::Wall => {
                for post in 1..=30 {
                    keys.push(format!("replies{u}_{post}"));
                }
                keys.push(format!("status{u}"));
                keys.push(format!("statuses{u}"));
                keys.push(format!("statuses{u}#1,2"));
            }
        }
    }
    keys.push("sublists_types".into());
    keys
}

/// `key<TAB>answer` lines (`-` for a miss; answers never hold a TAB or a newline, JSON
/// escapes them).
fn answers(e: &MessagesEngine, flavour: Flavour) -> String {
    let mut out = String::new();
    for key in keys(flavour) {
        let answer = get(e, &key).unwrap_or_else(|| "-".into());
        assert!(!answer.contains(['\t', '\n']), "{key}: {answer:?}");
        out.push_str(&key);
        out.push('\t');
        out.push_str(&answer);
        out.push('\n');
    }
    out
}

/// Records as `kind u16, pos u64, time u32, len u32, payload`, little-endian.
fn encode_records(j: &Recorder) -> Vec<u8> {
    let mut out = Vec::new();
    for l in j.log.lock().iter() {
        out.extend_from_slice(&l.kind.to_le_bytes());
        out.extend_from_slice(&l.ctx.pos.to_le_bytes());
        out.extend_from_slice(&l.ctx.time.to_le_bytes());
        out.extend_from_slice(&u32::try_from(l.payload.len()).unwrap().to_le_bytes());
        out.extend_from_slice(&l.payload);
    }
    out
}

fn replay_records(e: &MessagesEngine, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let kind = u16::from_le_bytes(bytes[..2].try_into().unwrap());
        let pos = u64::from_le_bytes(bytes[2..10].try_into().unwrap());
        let time = u32::from_le_bytes(bytes[10..14].try_into().unwrap());
        let len = u32::from_le_bytes(bytes[14..18].try_into().unwrap()) as usize;
        e.apply(kind, &bytes[18..18 + len], ApplyCtx { pos, time })
            .unwrap();
        bytes = &bytes[18 + len..];
    }
}

fn check(flavour: Flavour, name: &str, build: fn(&MessagesEngine, &Recorder)) {
    let snapshot_path = dir().join(format!("{name}-v1.snapshot"));
    let records_path = dir().join(format!("{name}-v1.records"));
    let answers_path = dir().join(format!("{name}-v1.answers"));
    if std::env::var_os("KOSHKA_WRITE_FIXTURES").is_some() {
        let e = MessagesEngine::new(flavour, ShardSpec::default());
        let j = Recorder::default();
        build(&e, &j);
        let mut snapshot = Vec::new();
        e.write_snapshot(&mut snapshot).unwrap();
        std::fs::create_dir_all(dir()).unwrap();
        std::fs::write(&snapshot_path, snapshot).unwrap();
        std::fs::write(&records_path, encode_records(&j)).unwrap();
        std::fs::write(&answers_path, answers(&e, flavour)).unwrap();
    }
    let want = std::fs::read_to_string(&answers_path).unwrap();
    let from_snapshot = MessagesEngine::new(flavour, ShardSpec::default());
    let snapshot = std::fs::read(&snapshot_path).unwrap();
    from_snapshot
        .load_snapshot(&mut snapshot.as_slice())
        .unwrap();
    let from_records = MessagesEngine::new(flavour, ShardSpec::default());
    replay_records(&from_records, &std::fs::read(&records_path).unwrap());
    for (how, e) in [("snapshot", &from_snapshot), ("records", &from_records)] {
        let got = answers(e, flavour);
        for (want, got) in want.lines().zip(got.lines()) {
            assert_eq!(got, want, "{name} from the old {how}");
        }
        assert_eq!(got.lines().count(), want.lines().count());
    }
}

#[test]
fn old_messages_snapshot_and_records_load() {
    check(Flavour::Messages, "messages", build_messages);
}

#[test]
fn old_wall_snapshot_and_records_load() {
    check(Flavour::Wall, "wall", build_wall);
}
