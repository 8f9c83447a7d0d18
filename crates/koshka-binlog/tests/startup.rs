//! Start-up names the file and the offset of whatever stops it; `verify` reports every kind of
//! damage as not ok; leftovers of a crash during a snapshot are removed; a log whose only
//! segment starts past 0 with a torn header starts empty at its snapshot.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{segments, CounterEngine, REC_ADD};
use koshka_binlog::format::{
    parse_file_name, snapshot_file_name, FileHeader, RecordHeader, RECORD_HEADER_SIZE,
};
use koshka_binlog::{snapshot, verify, Durability, Error, Host, PersistConfig};
use koshka_engine::{ApplyCtx, Engine, ShardSpec};
use koshka_limits::Limits;

fn config(dir: &Path) -> PersistConfig {
    let mut c = PersistConfig::new(dir, "counter", &Limits::test_min());
    c.durability = Durability::EverySec;
    c.segment_size = 4096;
    c.snapshot_log_bytes = 0;
    c.snapshot_on_shutdown = false;
    c.progress = false;
    c.replay_threads = 3;
    c
}

fn open(cfg: &PersistConfig) -> Result<(Arc<CounterEngine>, Host), Error> {
    let engine = Arc::new(CounterEngine::default());
    let host = Host::open(engine.clone(), cfg.clone())?;
    Ok((engine, host))
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// A log over many segments with a snapshot in the middle. Returns the snapshot, the final
/// state and where the log ends (position, chain, time).
fn build(
    dir: &Path,
) -> (
    PathBuf,
    std::collections::BTreeMap<u64, i64>,
    (u64, u32, u32),
) {
    let (engine, host) = open(&config(dir)).unwrap();
    for i in 0..600u64 {
        engine.add(i % 23, 1, host.journal()).unwrap();
    }
    let snap = host.snapshot_now().unwrap().unwrap();
    for i in 0..600u64 {
        engine.add(i % 29, 2, host.journal()).unwrap();
    }
    let end = host.binlog().unwrap().mark();
    let state = engine.state();
    host.shutdown().unwrap();
    (snap, state, end)
}

/// Writes a snapshot with a valid container and an empty counter-engine body, but header
/// fields of our choosing.
fn craft_snapshot(dir: &Path, pos: u64, chain: u32, shard: ShardSpec) -> PathBuf {
    let header = FileHeader {
        engine: "counter".into(),
        shard,
        pos,
        chain,
        time: 1_700_000_000,
        created: 1_700_000_000,
    };
    let empty = CounterEngine::default();
    snapshot::write(
        dir,
        &header,
        &mut |w| empty.write_snapshot(w).map_err(Error::Engine),
        &mut || Ok(()),
    )
    .unwrap()
}

fn copy(from: &Path) -> (tempfile::TempDir, PathBuf) {
    common::copy_dir(from)
}

#[test]
fn leftover_snapshot_temp_files_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (_, state, _) = build(dir.path());
    let ours = dir
        .path()
        .join(format!("{}.tmp", snapshot_file_name("counter", 12345)));
    let theirs = dir
        .path()
        .join(format!("{}.tmp", snapshot_file_name("other", 12345)));
    let unrelated = dir.path().join("counter.notes.tmp");
    for p in [&ours, &theirs, &unrelated] {
        std::fs::write(p, b"half a snapshot").unwrap();
    }
    let (engine, _host) = open(&config(dir.path())).unwrap();
    assert_eq!(engine.state(), state);
    assert!(!ours.exists(), "leftover temp snapshot kept");
    assert!(theirs.exists(), "another engine's file removed");
    assert!(unrelated.exists(), "an unrelated file removed");
}

/// A log with a record apply refuses in the middle; start-up must name exactly that record
/// (with `replay_threads` apply threads: it may fail on one while the reader is further on).
fn a_record_the_engine_cannot_apply(record_type: u16, payload: &[u8], replay_threads: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.replay_threads = replay_threads;
    let (engine, host) = open(&cfg).unwrap();
    for i in 0..300u64 {
        engine.add(i % 7, 1, host.journal()).unwrap();
    }
    let bad = host.journal().append(record_type, payload).unwrap();
    for i in 0..300u64 {
        engine.add(i % 7, 1, host.journal()).unwrap();
    }
    drop(host);
    let err = open(&cfg).map(|_| ()).unwrap_err();
    let Error::Replay {
        path,
        offset,
        pos,
        record_type: named_type,
        ..
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!((*pos, *named_type), (bad.pos, record_type));
    // The named file holds that record at that offset.
    let bytes = std::fs::read(path).unwrap();
    let at = usize::try_from(*offset).unwrap();
    let header: [u8; RECORD_HEADER_SIZE] = bytes[at..at + RECORD_HEADER_SIZE].try_into().unwrap();
    let header = RecordHeader::decode(&header).unwrap();
    assert_eq!(
        (header.record_type, header.len as usize),
        (record_type, payload.len())
    );
    assert_eq!(
        &bytes[at + RECORD_HEADER_SIZE..at + RECORD_HEADER_SIZE + payload.len()],
        payload
    );
    let text = err.to_string();
    assert!(
        text.contains(&name(path)) && text.contains(&format!("offset {offset}")),
        "{text}"
    );
}

#[test]
fn a_record_the_engine_cannot_apply_is_named_by_file_and_offset() {
    // A type the engine refuses: no partition, so it fails on the reading thread.
    a_record_the_engine_cannot_apply(9, b"bad", 1);
    a_record_the_engine_cannot_apply(9, b"bad", 3);
    // An ADD with a key but a bad length: it fails on an apply thread, after the reader
    // went on; the error still names it.
    let mut payload = 5u64.to_le_bytes().to_vec();
    payload.extend_from_slice(b"too long payload");
    a_record_the_engine_cannot_apply(REC_ADD, &payload, 1);
    a_record_the_engine_cannot_apply(REC_ADD, &payload, 3);
}

#[test]
fn a_snapshot_past_the_end_of_the_log_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (snap, _, _) = build(dir.path());
    let snap_pos = parse_file_name(&snap, "snap").unwrap().1;
    // Lose the log from the segment holding the snapshot's position on.
    let segs = segments(dir.path());
    let idx = segs
        .iter()
        .rposition(|s| parse_file_name(s, "bin").unwrap().1 < snap_pos)
        .unwrap();
    assert!(idx > 0);
    for s in &segs[idx..] {
        std::fs::remove_file(s).unwrap();
    }
    let last = &segs[idx - 1];

    let report = verify(dir.path()).unwrap();
    assert!(!report.is_ok(), "{report}");
    let s = &report.engines[0].snapshots[0];
    assert!(
        s.error
            .as_deref()
            .unwrap()
            .contains("past the end of the log"),
        "{report}"
    );

    let err = open(&config(dir.path())).map(|_| ()).unwrap_err();
    assert!(
        matches!(&err, Error::Snapshot { path, .. } if *path == snap),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&name(&snap))
            && text.contains("past the end of the log")
            && text.contains(&name(last))
            && text.contains("offset"),
        "{text}"
    );
}

#[test]
fn a_snapshot_the_engine_cannot_load_is_named_with_how_far_it_read() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, (end, chain, _)) = build(dir.path());
    // A valid container at the end of the log whose body the engine cannot parse.
    let header = FileHeader {
        engine: "counter".into(),
        shard: ShardSpec::default(),
        pos: end,
        chain,
        time: 1_700_000_000,
        created: 1_700_000_000,
    };
    let path = snapshot::write(
        dir.path(),
        &header,
        &mut |w| w.write_all(&[1u8; 20]).map_err(|e| Error::io("<body>", e)),
        &mut || Ok(()),
    )
    .unwrap();
    let err = open(&config(dir.path())).map(|_| ()).unwrap_err();
    assert!(
        matches!(&err, Error::Snapshot { path: p, .. } if *p == path),
        "{err}"
    );
    // The body is 20 bytes after the 64-byte header; the engine read all of it.
    assert!(
        err.to_string().contains("having read up to offset 84"),
        "{err}"
    );
}

#[test]
fn verify_reports_every_unusable_snapshot() {
    let base = tempfile::tempdir().unwrap();
    let (snap, _, (end, chain, _)) = build(base.path());
    let report = verify(base.path()).unwrap();
    assert!(report.is_ok(), "{report}");

    // Kind, damage, and whether start-up must fail with the snapshot named.
    type Damage = fn(&Path, &Path, u64, u32) -> PathBuf;
    let cases: [(&str, Damage, bool); 5] = [
        (
            "damaged older snapshot",
            |dir, snap, end, chain| {
                craft_snapshot(dir, end, chain, ShardSpec::default());
                let old = dir.join(snap.file_name().unwrap());
                let mut bytes = std::fs::read(&old).unwrap();
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x10;
                std::fs::write(&old, bytes).unwrap();
                old
            },
            false,
        ),
        (
            "another log's chain value",
            |dir, _, end, chain| craft_snapshot(dir, end, chain ^ 1, ShardSpec::default()),
            true,
        ),
        (
            "not a record boundary",
            |dir, snap, _, chain| {
                let pos = parse_file_name(snap, "snap").unwrap().1 + 1;
                craft_snapshot(dir, pos, chain, ShardSpec::default())
            },
            true,
        ),
        (
            "another shard",
            |dir, _, end, chain| craft_snapshot(dir, end, chain, ShardSpec { index: 1, count: 2 }),
            true,
        ),
        (
            "past the end",
            |dir, _, end, chain| craft_snapshot(dir, end + 100, chain, ShardSpec::default()),
            true,
        ),
    ];
    for (kind, damage, start_fails) in cases {
        let (_tmp, dir) = copy(base.path());
        let bad = damage(&dir, &snap, end, chain);
        let report = verify(&dir).unwrap();
        assert!(!report.is_ok(), "{kind}: verify passed:\n{report}");
        let flagged = &report.engines[0]
            .snapshots
            .iter()
            .find(|s| s.path == bad)
            .unwrap();
        assert!(flagged.error.is_some(), "{kind}: {report}");
        assert!(report.to_string().contains(&name(&bad)), "{kind}: {report}");
        match open(&config(&dir)) {
            Ok(_) => assert!(!start_fails, "{kind}: start-up accepted it"),
            Err(e) => {
                assert!(start_fails, "{kind}: start-up failed: {e}");
                assert!(e.to_string().contains(&name(&bad)), "{kind}: {e}");
            }
        }
    }
}

#[test]
fn a_missing_segment_names_the_next_one_and_its_header() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let segs = segments(dir.path());
    std::fs::remove_file(&segs[1]).unwrap();
    // Without the snapshot the log must be read from the start.
    for s in std::fs::read_dir(dir.path()).unwrap() {
        let p = s.unwrap().path();
        if p.extension().is_some_and(|e| e == "snap") {
            std::fs::remove_file(p).unwrap();
        }
    }
    let err = open(&config(dir.path())).map(|_| ()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&name(&segs[2])) && text.contains("offset 0") && text.contains("missing"),
        "{text}"
    );
}

/// Fuzz finding 3 (docs/fuzzing.md): the only segment starts at P > 0 (older ones removed
/// after a snapshot at P) and its header is torn. Start-up cuts it and starts an empty log at
/// P from the snapshot, with the snapshot's time; a start-up with no segment at all does too.
#[test]
fn a_torn_header_on_the_only_segment_past_zero_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    // A log that starts at P = 4096: the state at P is in a snapshot.
    let p: u64 = 4096;
    let (chain, time) = (0x1234_5678, 1_700_000_000);
    let seed = CounterEngine::default();
    let mut payload = [0u8; 16];
    payload[..8].copy_from_slice(&5u64.to_le_bytes());
    payload[8..].copy_from_slice(&40i64.to_le_bytes());
    seed.apply(REC_ADD, &payload, ApplyCtx { pos: 100, time })
        .unwrap();
    let header = FileHeader {
        engine: "counter".into(),
        shard: ShardSpec::default(),
        pos: p,
        chain,
        time,
        created: time,
    };
    snapshot::write(
        dir.path(),
        &header,
        &mut |w| seed.write_snapshot(w).map_err(Error::Engine),
        &mut || Ok(()),
    )
    .unwrap();
    let seg = dir
        .path()
        .join(koshka_binlog::format::segment_file_name("counter", p));
    std::fs::write(&seg, [0x4b_u8; 10]).unwrap();

    let (engine, host) = open(&cfg).unwrap();
    assert_eq!(engine.state(), seed.state());
    // The torn file is kept aside, byte for byte; a fresh segment took its name.
    let aside = dir.path().join(format!("{}.torn", name(&seg)));
    assert_eq!(std::fs::read(&aside).unwrap(), [0x4b_u8; 10]);
    assert!(std::fs::read(&seg).unwrap().starts_with(b"KSHKBLOG"));
    // The log continues at P with the snapshot's chain value and time.
    let (pos, log_chain, log_time) = host.binlog().unwrap().mark();
    assert_eq!((pos, log_chain), (p, chain));
    assert!(log_time >= time);
    let appended = engine.add(5, 2, host.journal()).unwrap();
    assert!(appended > p);
    let state = engine.state();
    drop(host);
    let (engine, _host) = open(&cfg).unwrap();
    assert_eq!(engine.state(), state);
    drop(_host);

    // No segment at all (a crash between setting the torn one aside and creating the next).
    for s in segments(dir.path()) {
        std::fs::remove_file(s).unwrap();
    }
    let (engine, host) = open(&cfg).unwrap();
    assert_eq!(engine.state(), seed.state());
    assert_eq!(host.binlog().unwrap().mark().0, p);
    let report = verify(dir.path()).unwrap();
    assert!(report.is_ok(), "{report}");
}
