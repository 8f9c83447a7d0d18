//! The persistence host with a tiny partitioned engine: restarts, fuzzy snapshots, fallback,
//! retention, and a model-based property test.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{segments, CounterEngine};
use koshka_binlog::{Durability, Host, PersistConfig, Retention};
use koshka_limits::Limits;
use proptest::prelude::*;

fn config(dir: &Path, durability: Durability) -> PersistConfig {
    let mut c = PersistConfig::new(dir, "counter", &Limits::test_min());
    c.durability = durability;
    c.segment_size = 4096;
    c.snapshot_log_bytes = 0;
    c.snapshot_on_shutdown = false;
    c.progress = false;
    // Apply threads even on a one-core machine: the model test covers parallel replay.
    c.replay_threads = 3;
    c
}

fn open(cfg: &PersistConfig) -> (Arc<CounterEngine>, Host) {
    let engine = Arc::new(CounterEngine::default());
    let host = Host::open(engine.clone(), cfg.clone()).unwrap();
    (engine, host)
}

fn stat<'a>(stats: &'a [(String, String)], name: &str) -> &'a str {
    &stats
        .iter()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("no stat {name}"))
        .1
}

#[test]
fn restart_replays_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Durability::EverySec);
    let (engine, host) = open(&cfg);
    for i in 0..1000u64 {
        engine.add(i % 37, i as i64, host.journal()).unwrap();
    }
    let (state, times) = (engine.state(), engine.times());
    drop(host);
    let (engine, host) = open(&cfg);
    assert_eq!(engine.state(), state);
    assert_eq!(engine.times(), times);
    assert!(
        stat(&host.stats(), "replay_records")
            .parse::<u64>()
            .unwrap()
            >= 1000
    );
    assert!(segments(dir.path()).len() > 3);
}

#[test]
fn snapshot_then_tail_and_fallback_when_newest_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Durability::Always);
    let (engine, host) = open(&cfg);
    for i in 0..300u64 {
        engine.add(i % 11, 1, host.journal()).unwrap();
    }
    let first = host.snapshot_now().unwrap().unwrap();
    for i in 0..300u64 {
        engine.add(i % 13, 2, host.journal()).unwrap();
    }
    let second = host.snapshot_now().unwrap().unwrap();
    for i in 0..100u64 {
        engine.add(i % 5, 3, host.journal()).unwrap();
    }
    let state = engine.state();
    host.shutdown().unwrap();
    drop(host);

    let (engine, host) = open(&cfg);
    assert_eq!(engine.state(), state);
    let second_pos = koshka_binlog::format::parse_file_name(&second, "snap")
        .unwrap()
        .1;
    assert_eq!(
        stat(&host.stats(), "snapshot_loaded_pos"),
        second_pos.to_string()
    );
    drop(host);

    // Corrupt the newest snapshot's body: start-up falls back to the first one.
    let mut bytes = std::fs::read(&second).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&second, bytes).unwrap();
    let (engine, host) = open(&cfg);
    assert_eq!(engine.state(), state);
    let first_pos = koshka_binlog::format::parse_file_name(&first, "snap")
        .unwrap()
        .1;
    assert_eq!(
        stat(&host.stats(), "snapshot_loaded_pos"),
        first_pos.to_string()
    );
    drop(host);

    // A truncated snapshot (no trailer) is skipped the same way.
    let bytes = std::fs::read(&first).unwrap();
    std::fs::write(&first, &bytes[..bytes.len() - 3]).unwrap();
    let (engine, _host) = open(&cfg);
    assert_eq!(engine.state(), state);
}

#[test]
fn fuzzy_snapshot_under_concurrent_writes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Durability::EverySec);
    let (engine, host) = open(&cfg);
    let host = Arc::new(host);
    std::thread::scope(|s| {
        let writers: Vec<_> = (0..2u64)
            .map(|t| {
                let engine = engine.clone();
                let host = host.clone();
                s.spawn(move || {
                    for i in 0..3000u64 {
                        engine.add((i * 7 + t) % 64, 1, host.journal()).unwrap();
                    }
                })
            })
            .collect();
        for _ in 0..5 {
            host.snapshot_now().unwrap();
        }
        for w in writers {
            w.join().unwrap();
        }
    });
    let state = engine.state();
    assert_eq!(state.values().sum::<i64>(), 6000);
    let host = Arc::into_inner(host).unwrap();
    drop(host);
    let (engine, _host) = open(&cfg);
    assert_eq!(engine.state(), state);
}

#[test]
fn automatic_snapshot_and_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), Durability::EverySec);
    cfg.snapshot_log_bytes = 8192;
    cfg.retention = Retention {
        snapshots_keep: 1,
        delete_covered_segments: true,
    };
    let (engine, host) = open(&cfg);
    let deadline = Instant::now() + Duration::from_secs(20);
    let snaps = |d: &Path| {
        std::fs::read_dir(d)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "snap")
            })
            .count()
    };
    let mut i = 0u64;
    while stat(&host.stats(), "snapshots_written")
        .parse::<u64>()
        .unwrap()
        < 3
    {
        for _ in 0..100 {
            engine.add(i % 17, 1, host.journal()).unwrap();
            i += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
        assert!(Instant::now() < deadline, "no automatic snapshots");
    }
    host.request_snapshot();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(snaps(dir.path()), 1);
    let first_seg = segments(dir.path())[0].clone();
    assert!(
        !first_seg
            .to_string_lossy()
            .contains(".00000000000000000000."),
        "covered segments kept"
    );
    let state = engine.state();
    drop(host);
    let (engine, _host) = open(&cfg);
    assert_eq!(engine.state(), state);
}

#[test]
fn durability_none_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("data");
    let cfg = config(&sub, Durability::None);
    let (engine, host) = open(&cfg);
    let pos = engine.add(1, 1, host.journal()).unwrap();
    host.wait_acked_blocking(pos).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(host.wait_acked(pos)).unwrap();
    assert!(host.snapshot_now().unwrap().is_none());
    host.shutdown().unwrap();
    assert!(!sub.exists());
}

#[test]
fn shutdown_snapshot_and_stats() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), Durability::Always);
    cfg.snapshot_on_shutdown = true;
    let (engine, host) = open(&cfg);
    let pos = engine.add(5, 5, host.journal()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(host.wait_acked(pos)).unwrap();
    let stats = host.stats();
    for name in [
        "binlog_position",
        "binlog_written",
        "binlog_durable",
        "binlog_fsyncs",
        "binlog_poisoned",
        "snapshot_last_pos",
        "snapshot_last_duration_ms",
        "replay_records",
        "replay_seconds",
    ] {
        stat(&stats, name);
    }
    assert_eq!(stat(&stats, "binlog_durable"), pos.to_string());
    host.shutdown().unwrap();
    host.shutdown().unwrap();
    drop(host);
    let (engine2, host) = open(&cfg);
    assert_eq!(engine2.state(), engine.state());
    // Replay started at the shutdown snapshot: nothing left to replay but the end.
    assert_eq!(stat(&host.stats(), "snapshot_loaded_pos"), pos.to_string());
}

#[derive(Debug, Clone)]
enum Op {
    Add(u8, i8),
    Reset,
    Burst(u8),
    Snapshot,
    SnapshotDuringWrites,
    Restart { clean: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (any::<u8>(), any::<i8>()).prop_map(|(k, d)| Op::Add(k, d)),
        3 => any::<u8>().prop_map(Op::Burst),
        1 => Just(Op::Reset),
        1 => Just(Op::Snapshot),
        1 => Just(Op::SnapshotDuringWrites),
        1 => any::<bool>().prop_map(|clean| Op::Restart { clean }),
    ]
}

fn check_restart(
    cfg: &PersistConfig,
    model: &BTreeMap<u64, i64>,
    times: &BTreeMap<u64, u32>,
) -> (Arc<CounterEngine>, Host) {
    let (engine, host) = open(cfg);
    assert_eq!(&engine.state(), model);
    assert_eq!(&engine.times(), times);
    (engine, host)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn host_matches_model(
        ops in proptest::collection::vec(op(), 1..40),
        always in any::<bool>(),
        keep in 0usize..3,
        snapshot_on_shutdown in any::<bool>(),
        replay_threads in 1usize..4,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), if always { Durability::Always } else { Durability::EverySec });
        cfg.snapshot_on_shutdown = snapshot_on_shutdown;
        cfg.replay_threads = replay_threads;
        cfg.retention = Retention { snapshots_keep: keep, delete_covered_segments: keep > 0 };
        let mut model: BTreeMap<u64, i64> = BTreeMap::new();
        let (mut engine, mut host) = open(&cfg);
        for op in ops {
            match op {
                Op::Add(k, d) => {
                    engine.add(u64::from(k), i64::from(d), host.journal()).unwrap();
                    *model.entry(u64::from(k)).or_default() += i64::from(d);
                }
                Op::Reset => {
                    engine.reset(host.journal()).unwrap();
                    model.clear();
                }
                Op::Burst(n) => {
                    for i in 0..u64::from(n) {
                        engine.add(i * 31 % 97, 1, host.journal()).unwrap();
                        *model.entry(i * 31 % 97).or_default() += 1;
                    }
                }
                Op::Snapshot => {
                    host.snapshot_now().unwrap();
                }
                Op::SnapshotDuringWrites => {
                    std::thread::scope(|s| {
                        let h = s.spawn(|| host.snapshot_now().unwrap());
                        for i in 0..200u64 {
                            engine.add(i % 50, 2, host.journal()).unwrap();
                            *model.entry(i % 50).or_default() += 2;
                        }
                        h.join().unwrap();
                    });
                }
                Op::Restart { clean } => {
                    let times = engine.times();
                    if clean {
                        host.shutdown().unwrap();
                    }
                    drop(host);
                    (engine, host) = check_restart(&cfg, &model, &times);
                }
            }
            prop_assert_eq!(&engine.state(), &model);
        }
        let times = engine.times();
        drop(host);
        let _ = check_restart(&cfg, &model, &times);
    }
}

#[test]
fn torn_tail_loses_only_the_torn_record() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Durability::EverySec);
    let (engine, host) = open(&cfg);
    for i in 0..99u64 {
        engine.add(i % 7, 1, host.journal()).unwrap();
    }
    let before_last = engine.state();
    engine.add(3, 100, host.journal()).unwrap();
    drop(host);
    let seg = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let (engine, host) = open(&cfg);
    assert_eq!(engine.state(), before_last);
    engine.add(3, 100, host.journal()).unwrap();
    let state = engine.state();
    drop(host);
    let (engine, _host) = open(&cfg);
    assert_eq!(engine.state(), state);
}

/// The nice value of this process's thread named `name`, from /proc (field 19 of stat(5)).
/// The kernel keeps the first 15 bytes of a thread's name.
fn thread_nice(name: &str) -> Option<i64> {
    let name = &name[..name.len().min(15)];
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
        let rest = stat.rsplit_once(')')?.1;
        return rest.split_whitespace().nth(16)?.parse().ok();
    }
    None
}

#[test]
fn the_snapshot_thread_runs_at_lower_priority_and_the_rest_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), Durability::EverySec);
    cfg.snapshot_nice = 7;
    // A name of its own: other tests in this process run snapshot threads too.
    cfg.engine = "nicetest".into();
    let own = thread_nice("host-nice-test");
    let test = std::thread::Builder::new()
        .name("host-nice-test".into())
        .spawn(move || {
            let mine = thread_nice("host-nice-test").unwrap();
            let (engine, host) = open(&cfg);
            // The thread lowers itself when it starts: wait for it.
            let deadline = Instant::now() + Duration::from_secs(10);
            let snapshot = loop {
                match thread_nice("snapshot-nicetest") {
                    Some(nice) if nice != mine || Instant::now() > deadline => break nice,
                    None if Instant::now() > deadline => panic!("no snapshot thread"),
                    _ => std::thread::sleep(Duration::from_millis(10)),
                }
            };
            // Snapshots still work at that priority, and this thread kept its own.
            engine.add(1, 1, host.journal()).unwrap();
            host.request_snapshot();
            while stat(&host.stats(), "snapshots_written") == "0" {
                assert!(Instant::now() < deadline, "no snapshot at nice {snapshot}");
                std::thread::sleep(Duration::from_millis(10));
            }
            (mine, snapshot, thread_nice("host-nice-test").unwrap())
        })
        .unwrap();
    let (mine, snapshot, after) = test.join().unwrap();
    assert_eq!(own, None, "the test thread did not exist yet");
    assert_eq!(
        snapshot,
        (mine + 7).min(19),
        "snapshot thread at {snapshot}, caller at {mine}"
    );
    assert_eq!(after, mine, "the caller's priority changed");
}

/// Waits until `snapshots_written` reaches `n`; returns how long that took.
fn wait_snapshots(host: &Host, n: u64, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let written: u64 = stat(&host.stats(), "snapshots_written").parse().unwrap();
        if written >= n {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "snapshot {n} not written in {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn background_snapshots_are_paced_and_shutdown_cuts_the_pace_short() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), Durability::EverySec);
    // 1000 counters of 20 bytes: a body of about 20 KB, one second at 20 KB/s.
    cfg.snapshot_rate = 20_000;
    let (engine, host) = open(&cfg);
    for key in 0..1000u64 {
        engine.add(key, 1, host.journal()).unwrap();
    }
    // On request of the caller: not paced.
    let started = Instant::now();
    host.snapshot_now().unwrap();
    let full = started.elapsed();
    // In the background: paced (the lower bound is the pace itself, not a timing guess).
    engine.add(1, 1, host.journal()).unwrap();
    host.request_snapshot();
    let paced = wait_snapshots(&host, 2, Duration::from_secs(60));
    assert!(
        paced >= Duration::from_millis(900),
        "paced snapshot took {paced:?}"
    );
    assert!(full < paced, "unpaced {full:?}, paced {paced:?}");
    drop(host);

    // A snapshot paced to take 10 s is finished at full speed when the host shuts down.
    cfg.snapshot_rate = 2_000;
    let (engine, host) = open(&cfg);
    engine.add(2, 1, host.journal()).unwrap();
    let state = engine.state();
    host.request_snapshot();
    // Wait until the snapshot is being written (its temp file exists).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_dir(dir.path())
        .unwrap()
        .any(|e| e.unwrap().path().to_string_lossy().ends_with(".snap.tmp"))
    {
        assert!(Instant::now() < deadline, "the snapshot did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    let started = Instant::now();
    host.shutdown().unwrap();
    let shutdown = started.elapsed();
    assert!(
        shutdown < Duration::from_secs(5),
        "shutdown took {shutdown:?}"
    );
    drop(host);
    // The interrupted pace still wrote a whole snapshot, and the restart starts from it.
    let (engine, host) = open(&cfg);
    assert_eq!(engine.state(), state);
    assert_ne!(stat(&host.stats(), "snapshot_loaded_pos"), "-1");
}
