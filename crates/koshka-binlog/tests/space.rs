//! A full disk on a real (small) file system: appends are refused before they are applied,
//! reads go on, nothing written is lost, writes resume by themselves once space is freed, and
//! snapshots that run out of space fail alone without poisoning the log.
//!
//! Each test mounts its own 4 MiB tmpfs (`mount -t tmpfs`, needs root). Where that is not
//! possible the test prints `SKIPPED: cannot mount tmpfs` and passes.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{CounterEngine, REC_ADD};
use koshka_binlog::format::RECORD_TYPE_TIME;
use koshka_binlog::{verify, Durability, Error, Host, PersistConfig, ReadOptions, Reader};
use koshka_engine::{ApplyCtx, Cx, Engine, Outcome, Request, Stat};
use koshka_limits::Limits;

/// A tmpfs mounted on a temp dir for the life of the value.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("SKIPPED: cannot mount tmpfs (this test needs root)");
            return None;
        }
        Some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

fn config(dir: &Path) -> PersistConfig {
    let mut c = PersistConfig::new(dir, "counter", &Limits::test_min());
    c.durability = Durability::EverySec;
    c.segment_size = 64 * 1024;
    c.snapshot_log_bytes = 0;
    c.snapshot_on_shutdown = false;
    c.progress = false;
    c
}

fn stat(host: &Host, name: &str) -> u64 {
    host.stats()
        .into_iter()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("no stat {name}"))
        .1
        .parse()
        .unwrap()
}

/// Writes a file of `bytes` bytes (to take disk space).
fn fill(path: &Path, bytes: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5a_u8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    f.sync_all().unwrap();
}

fn available(dir: &Path) -> u64 {
    koshka_binlog::space::available(dir).unwrap()
}

/// Sums the counter records of the log in `dir` as the engine would (read-only). The log
/// must end on a whole record (a closed log, or a live one the writer is not writing to).
fn log_state(dir: &Path) -> BTreeMap<u64, i64> {
    log_state_inner(dir, false)
}

/// As [`log_state`] for a live log: the writer may be writing the host's once-a-second time
/// record while it is read, so a torn last record is allowed (it carries no counter).
fn live_log_state(dir: &Path) -> BTreeMap<u64, i64> {
    log_state_inner(dir, true)
}

fn log_state_inner(dir: &Path, live: bool) -> BTreeMap<u64, i64> {
    let mut reader = Reader::open(dir, "counter", ReadOptions::default()).unwrap();
    let mut state = BTreeMap::new();
    while let Some(r) = reader.next_record().unwrap() {
        if r.record_type == RECORD_TYPE_TIME {
            continue;
        }
        assert_eq!(r.record_type, REC_ADD);
        let key = u64::from_le_bytes(r.payload[..8].try_into().unwrap());
        let delta = i64::from_le_bytes(r.payload[8..].try_into().unwrap());
        *state.entry(key).or_insert(0) += delta;
    }
    if !live {
        assert!(reader.cut().is_none(), "{:?}", reader.cut());
    }
    state
}

fn snapshot_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".snap"))
        .collect()
}

/// Fills the disk through the log until appends are refused, checks that nothing refused
/// was applied and nothing accepted is lost, frees the space and checks that appends resume.
/// `leave`: free bytes left for the log after the host opened.
fn fill_refuse_and_resume(fs: &Tmpfs, segment_size: u64, leave: u64) {
    let data = fs.path().join("data");
    let mut cfg = config(&data);
    cfg.segment_size = segment_size;
    let engine = Arc::new(CounterEngine::default());
    let host = Host::open(engine.clone(), cfg.clone()).unwrap();
    let filler = fs.path().join("filler");
    fill(&filler, available(fs.path()) - leave);

    let mut model: BTreeMap<u64, i64> = BTreeMap::new();
    let mut last_pos = 0;
    let mut accepted = 0u64;
    let refusal = loop {
        assert!(accepted < 10_000_000, "appends were never refused");
        let key = accepted % 1000;
        match engine.add(key, 1, host.journal()) {
            Ok(pos) => {
                *model.entry(key).or_insert(0) += 1;
                last_pos = pos;
                accepted += 1;
            }
            Err(e) => break e,
        }
    };
    let text = refusal.to_string();
    assert!(
        matches!(refusal, koshka_engine::Error::Journal(_)) && text.contains("disk full"),
        "{text}"
    );
    assert!(
        accepted > 1000,
        "only {accepted} appends before the disk was full"
    );
    // The disk is used up (reservations shrink near the end), not refused with room left.
    let left = available(fs.path());
    assert!(left < 256 * 1024, "refused with {left} bytes free");
    // Refused before apply: the engine holds exactly the accepted appends, and reads go on.
    assert_eq!(engine.state(), model);
    // Everything accepted gets written: nothing acknowledged can be lost.
    host.wait_acked_blocking(last_pos).unwrap();
    assert_eq!(stat(&host, "binlog_disk_full"), 1);
    assert_eq!(stat(&host, "binlog_poisoned"), 0);
    // Further appends keep being refused (and counted), and still change nothing.
    for i in 0..5 {
        assert!(engine.add(i, 1, host.journal()).is_err());
    }
    assert_eq!(stat(&host, "binlog_disk_full_refusals"), 6);
    assert_eq!(engine.state(), model);
    // A snapshot is skipped for lack of space, without touching the log.
    let err = host.snapshot_now().unwrap_err();
    assert!(matches!(err, Error::NoSpace { .. }), "{err}");
    assert_eq!(stat(&host, "snapshot_skipped_no_space"), 1);
    assert!(snapshot_files(&data).is_empty());
    assert!(!host.binlog().unwrap().is_poisoned());
    // What the log holds is exactly what was accepted.
    assert_eq!(live_log_state(&data), model);

    // Free the space: the very next append goes through.
    std::fs::remove_file(&filler).unwrap();
    engine.add(7, 100, host.journal()).unwrap();
    *model.entry(7).or_insert(0) += 100;
    assert_eq!(stat(&host, "binlog_disk_full"), 0);
    for i in 0..3000u64 {
        last_pos = engine.add(i % 97, 2, host.journal()).unwrap();
        *model.entry(i % 97).or_insert(0) += 2;
    }
    host.wait_acked_blocking(last_pos).unwrap();
    assert_eq!(engine.state(), model);
    host.shutdown().unwrap();
    drop(host);

    assert_eq!(log_state(&data), model);
    let report = verify(&data).unwrap();
    assert!(report.is_ok(), "{report}");
    let engine = Arc::new(CounterEngine::default());
    let _host = Host::open(engine.clone(), cfg).unwrap();
    assert_eq!(engine.state(), model);
}

/// Small segments: the space comes from the spare file at each rotation.
#[test]
fn disk_full_refuses_before_apply_and_writes_resume_when_space_is_freed() {
    let Some(fs) = Tmpfs::mount("4m") else {
        return;
    };
    fill_refuse_and_resume(&fs, 64 * 1024, 300 * 1024);
}

/// A segment larger than the reservation chunk: the space comes from extending the
/// reservation inside the segment, in smaller steps as the disk fills.
#[test]
fn disk_full_inside_a_large_segment() {
    let Some(fs) = Tmpfs::mount("40m") else {
        return;
    };
    let segment = 2 * koshka_binlog::space::SPACE_RESERVE_CHUNK;
    fill_refuse_and_resume(&fs, segment, 2 * 1024 * 1024);
}

#[test]
fn a_full_disk_at_start_up_refuses_writes_but_serves_reads() {
    let Some(fs) = Tmpfs::mount("4m") else {
        return;
    };
    let data = fs.path().join("data");
    let cfg = config(&data);
    let engine = Arc::new(CounterEngine::default());
    let host = Host::open(engine.clone(), cfg.clone()).unwrap();
    for i in 0..500u64 {
        engine.add(i % 10, 1, host.journal()).unwrap();
    }
    let state = engine.state();
    drop(host);
    // Everything else is taken while the process is down.
    let filler = fs.path().join("filler");
    fill(&filler, available(fs.path()).saturating_sub(16 * 1024));

    let engine = Arc::new(CounterEngine::default());
    let host = Host::open(engine.clone(), cfg.clone()).unwrap();
    assert_eq!(engine.state(), state);
    // The space reserved past the end of the last segment before the restart is still
    // allocated (at most one chunk): appends use it, then are refused.
    let mut state = state;
    let mut accepted = 0;
    let err = loop {
        match engine.add(1, 1, host.journal()) {
            Ok(_) => {
                *state.entry(1).or_insert(0) += 1;
                accepted += 1;
                assert!(accepted <= 64 * 1024 / 32, "more than the old reservation");
            }
            Err(e) => break e,
        }
    };
    assert!(err.to_string().contains("disk full"), "{err}");
    assert_eq!(engine.state(), state);
    std::fs::remove_file(&filler).unwrap();
    let pos = engine.add(1, 1, host.journal()).unwrap();
    host.wait_acked_blocking(pos).unwrap();
    drop(host);
    let engine2 = Arc::new(CounterEngine::default());
    let _host = Host::open(engine2.clone(), cfg).unwrap();
    assert_eq!(engine2.state(), engine.state());
}

/// The counter engine with a large snapshot: `PADDING` extra bytes after the counters.
#[derive(Default)]
struct PaddedEngine {
    inner: CounterEngine,
}

const PADDING: usize = 2 * 1024 * 1024;

impl Engine for PaddedEngine {
    fn name(&self) -> &'static str {
        "counter"
    }
    fn execute(&self, request: &Request<'_>, cx: &mut Cx<'_>) -> koshka_engine::Result<Outcome> {
        self.inner.execute(request, cx)
    }
    fn apply(&self, record_type: u16, payload: &[u8], ctx: ApplyCtx) -> koshka_engine::Result<()> {
        self.inner.apply(record_type, payload, ctx)
    }
    fn write_snapshot(&self, out: &mut dyn Write) -> koshka_engine::Result<()> {
        self.inner.write_snapshot(out)?;
        let chunk = vec![0xa5_u8; 64 * 1024];
        for _ in 0..PADDING / chunk.len() {
            out.write_all(&chunk)?;
        }
        Ok(())
    }
    fn load_snapshot(&self, input: &mut dyn Read) -> koshka_engine::Result<()> {
        self.inner.load_snapshot(input)?;
        let skipped = std::io::copy(input, &mut std::io::sink())?;
        assert_eq!(skipped, PADDING as u64);
        Ok(())
    }
    fn stats(&self) -> Vec<Stat> {
        Vec::new()
    }
}

#[test]
fn a_snapshot_that_runs_out_of_space_fails_alone() {
    let Some(fs) = Tmpfs::mount("4m") else {
        return;
    };
    let data = fs.path().join("data");
    let cfg = config(&data);
    let engine = Arc::new(PaddedEngine::default());
    let host = Host::open(engine.clone(), cfg.clone()).unwrap();
    let mut last = 0;
    for i in 0..500u64 {
        last = engine.inner.add(i % 50, 1, host.journal()).unwrap();
    }
    host.wait_acked_blocking(last).unwrap();
    // Enough free space to start (no previous snapshot: the slack), not enough to finish.
    let filler = fs.path().join("filler");
    fill(&filler, available(fs.path()) - 1536 * 1024);
    let err = host.snapshot_now().unwrap_err();
    assert!(!matches!(err, Error::NoSpace { .. }), "{err}");
    assert!(err.to_string().contains("No space left on device"), "{err}");
    assert!(snapshot_files(&data).is_empty(), "temp file left behind");
    assert!(!host.binlog().unwrap().is_poisoned());
    // The log's space was reserved ahead: appends go on.
    for i in 0..500u64 {
        last = engine.inner.add(i % 50, 1, host.journal()).unwrap();
    }
    host.wait_acked_blocking(last).unwrap();
    // With space again, the snapshot succeeds and a restart starts from it.
    std::fs::remove_file(&filler).unwrap();
    let snap = host.snapshot_now().unwrap().unwrap();
    let state = engine.inner.state();
    drop(host);
    let engine = Arc::new(PaddedEngine::default());
    let host = Host::open(engine.clone(), cfg).unwrap();
    assert_eq!(engine.inner.state(), state);
    let pos = koshka_binlog::format::parse_file_name(&snap, "snap")
        .unwrap()
        .1;
    assert_eq!(stat(&host, "snapshot_loaded_pos"), pos);
}
