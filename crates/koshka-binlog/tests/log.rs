//! Writer, reader and recovery on real files.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{copy_dir, segments};
use koshka_binlog::format::{RECORD_HEADER_SIZE, RECORD_TYPE_TIME, SEGMENT_HEADER_SIZE};
use koshka_binlog::{replay, Binlog, BinlogConfig, Durability, Error, LogEnd, ReadOptions, Reader};
use koshka_engine::{Journal, ShardSpec};

fn cfg(dir: &Path, durability: Durability, segment_size: u64) -> BinlogConfig {
    BinlogConfig {
        dir: dir.to_path_buf(),
        engine: "kv".into(),
        shard: ShardSpec { index: 1, count: 4 },
        durability,
        segment_size,
        clock: std::sync::Arc::new(koshka_engine::SystemClock),
    }
}

fn payload(i: usize) -> Vec<u8> {
    let len = (i * 37) % 200;
    (0..len).map(|j| (i + j) as u8).collect()
}

/// (record type, payload, appended pos) of every engine record.
type Written = Vec<(u16, Vec<u8>, u64)>;

fn write_log(dir: &Path, n: usize, segment_size: u64) -> Written {
    let log = Binlog::open(cfg(dir, Durability::EverySec, segment_size)).unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let p = payload(i);
        let t = (i % 50) as u16;
        let a = log.append(t, &p).unwrap();
        out.push((t, p, a.pos));
    }
    log.close().unwrap();
    out
}

fn read_all(dir: &Path, opts: ReadOptions) -> koshka_binlog::Result<(Written, Reader)> {
    let mut reader = Reader::open(dir, "kv", opts)?;
    let mut out = Vec::new();
    while let Some(r) = reader.next_record()? {
        if r.record_type != RECORD_TYPE_TIME {
            out.push((r.record_type, r.payload.to_vec(), r.pos));
        }
    }
    Ok((out, reader))
}

#[test]
fn round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_log(dir.path(), 1000, 1 << 30);
    let (read, reader) = read_all(dir.path(), ReadOptions::default()).unwrap();
    assert_eq!(read, written);
    assert!(reader.cut().is_none());
    assert_eq!(segments(dir.path()).len(), 1);
    assert!(reader.time() > 1_600_000_000);
}

#[test]
fn positions_are_absolute_and_reopen_continues() {
    let dir = tempfile::tempdir().unwrap();
    let mut written = write_log(dir.path(), 300, 4096);
    let log = Binlog::open(cfg(dir.path(), Durability::Always, 4096)).unwrap();
    let last = written.last().unwrap().2;
    for i in 0..300 {
        let a = log.append(3, &payload(i)).unwrap();
        assert!(a.pos > last);
        written.push((3, payload(i), a.pos));
    }
    log.close().unwrap();
    let (read, _) = read_all(dir.path(), ReadOptions::default()).unwrap();
    assert_eq!(read, written);
}

#[test]
fn rotation_at_tiny_size() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_log(dir.path(), 2000, 4096);
    let segs = segments(dir.path());
    assert!(segs.len() > 20, "{} segments", segs.len());
    for s in &segs {
        let len = std::fs::metadata(s).unwrap().len();
        // Rotation happens before a record that would cross the size; a record larger than
        // the remainder starts a new segment.
        assert!(
            len <= 4096 + SEGMENT_HEADER_SIZE as u64,
            "{} is {len} bytes",
            s.display()
        );
    }
    let (read, _) = read_all(dir.path(), ReadOptions::default()).unwrap();
    assert_eq!(read, written);
    // Reading from any record boundary yields the rest.
    let mid = written[1234].2;
    let mut reader = Reader::open_at(dir.path(), "kv", mid, ReadOptions::default()).unwrap();
    let mut rest = Vec::new();
    while let Some(r) = reader.next_record().unwrap() {
        if r.record_type != RECORD_TYPE_TIME {
            rest.push((r.record_type, r.payload.to_vec(), r.pos));
        }
    }
    assert_eq!(rest, written[1235..]);
    assert!(matches!(
        Reader::open_at(dir.path(), "kv", mid + 1, ReadOptions::default()),
        Err(Error::Position { .. })
    ));
}

/// Truncating the last segment at every byte offset within its final records recovers
/// exactly the whole records before the cut, with a cut reported, and the log stays usable.
#[test]
fn torn_tail_at_every_offset() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_log(dir.path(), 400, 8192);
    let last_seg = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&last_seg).unwrap().len();
    let seg_start = koshka_binlog::format::parse_file_name(&last_seg, "bin")
        .unwrap()
        .1;
    let tail_bytes = 4 * (RECORD_HEADER_SIZE as u64 + 200);
    let from = len
        .saturating_sub(tail_bytes)
        .max(SEGMENT_HEADER_SIZE as u64);
    for cut_at in from..len {
        let (_tmp, copy) = copy_dir(dir.path());
        let seg = copy.join(last_seg.file_name().unwrap());
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(cut_at).unwrap();
        drop(f);
        let (read, reader) = read_all(&copy, ReadOptions::default()).unwrap();
        let cut_pos = seg_start + cut_at - SEGMENT_HEADER_SIZE as u64;
        let expect: Written = written.iter().filter(|w| w.2 <= cut_pos).cloned().collect();
        assert_eq!(read, expect, "cut at {cut_at}");
        let on_boundary = reader.cut().is_none();
        if !on_boundary {
            let c = reader.cut().unwrap();
            assert_eq!(c.path, seg);
            assert!(!c.corrupt);
        }
        // Recovery truncates and appending continues.
        let log = Binlog::open(cfg(&copy, Durability::EverySec, 8192)).unwrap();
        let a = log.append(9, b"after").unwrap();
        log.close().unwrap();
        let (read2, reader2) = read_all(&copy, ReadOptions::default()).unwrap();
        assert!(
            reader2.cut().is_none(),
            "cut at {cut_at}: {:?}",
            reader2.cut()
        );
        assert_eq!(read2.len(), read.len() + 1);
        assert_eq!(read2.last().unwrap(), &(9, b"after".to_vec(), a.pos));
    }
}

#[test]
fn zero_filled_tail_is_torn() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_log(dir.path(), 50, 1 << 20);
    let seg = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len + 4096).unwrap();
    drop(f);
    let (read, reader) = read_all(dir.path(), ReadOptions::default()).unwrap();
    assert_eq!(read, written);
    assert_eq!(reader.cut().unwrap().offset, len);
}

fn flip(path: &Path, offset: u64, bit: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 1 << bit;
    std::fs::write(path, bytes).unwrap();
}

/// Offsets (in the file) of every record of a segment, from its start.
fn record_offsets(dir: &Path, seg_start: u64, seg_end: u64) -> Vec<(u64, u64)> {
    let mut reader = Reader::open_at(dir, "kv", seg_start, ReadOptions::default()).unwrap();
    let mut out = Vec::new();
    while let Some(r) = reader.next_record().unwrap() {
        if r.pos <= seg_end {
            out.push((r.start, r.pos));
        }
    }
    out
}

#[test]
fn bit_flips_are_detected_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_log(dir.path(), 600, 8192);
    let segs = segments(dir.path());
    assert!(segs.len() >= 3);
    let victim = &segs[1];
    let (_, seg_start) = koshka_binlog::format::parse_file_name(victim, "bin")
        .map(|(e, p)| (e.to_string(), p))
        .unwrap();
    let seg_end = koshka_binlog::format::parse_file_name(&segs[2], "bin")
        .unwrap()
        .1;
    let records = record_offsets(dir.path(), seg_start, seg_end);
    let (rec_start, rec_end) = records[records.len() / 2];
    let file_off = SEGMENT_HEADER_SIZE as u64 + rec_start - seg_start;
    let rec_len = rec_end - rec_start;
    for byte in 0..rec_len {
        let (_tmp, copy) = copy_dir(dir.path());
        let target = copy.join(victim.file_name().unwrap());
        flip(&target, file_off + byte, (byte % 8) as u8);
        let err = read_all(&copy, ReadOptions::default()).unwrap_err();
        match err {
            Error::Corrupt { path, offset, .. } => {
                assert_eq!(path, target);
                assert_eq!(offset, file_off, "flip at byte {byte}");
            }
            other => panic!("byte {byte}: {other}"),
        }
        assert!(err_names_file(&copy, &target));
        // Repair truncates there and moves later segments aside.
        let opts = ReadOptions {
            repair: true,
            ..Default::default()
        };
        let outcome = replay(&copy, "kv", None, opts, &mut |_| Ok(()), None).unwrap();
        assert_eq!(outcome.end.pos, rec_start);
        assert!(outcome.cut.unwrap().corrupt);
        let (read, reader) = read_all(&copy, ReadOptions::default()).unwrap();
        assert!(reader.cut().is_none());
        let expect: Written = written
            .iter()
            .filter(|w| w.2 <= rec_start)
            .cloned()
            .collect();
        assert_eq!(read, expect);
        assert!(std::fs::read_dir(&copy).unwrap().any(|e| e
            .unwrap()
            .path()
            .to_string_lossy()
            .ends_with(".orphaned")));
    }
}

fn err_names_file(dir: &Path, target: &Path) -> bool {
    let msg = read_all(dir, ReadOptions::default())
        .unwrap_err()
        .to_string();
    msg.contains(&target.display().to_string()) && msg.contains("offset")
}

#[test]
fn segment_header_flip_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 600, 8192);
    let segs = segments(dir.path());
    for byte in 0..SEGMENT_HEADER_SIZE as u64 {
        let (_tmp, copy) = copy_dir(dir.path());
        let target = copy.join(segs[1].file_name().unwrap());
        flip(&target, byte, 3);
        let err = read_all(&copy, ReadOptions::default()).unwrap_err();
        assert!(
            matches!(err, Error::Corrupt { offset: 0, .. }),
            "byte {byte}: {err}"
        );
    }
}

#[test]
fn missing_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 600, 8192);
    let segs = segments(dir.path());
    std::fs::remove_file(&segs[1]).unwrap();
    let err = read_all(dir.path(), ReadOptions::default()).unwrap_err();
    assert!(
        matches!(&err, Error::Chain { path, .. } if *path == segs[2]),
        "{err}"
    );
    assert!(err.to_string().contains("missing"), "{err}");
    // The writer refuses to open over it as well.
    assert!(Binlog::open(cfg(dir.path(), Durability::EverySec, 8192)).is_err());
}

#[test]
fn reordered_segments_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 600, 8192);
    let segs = segments(dir.path());
    let tmp = dir.path().join("swap");
    std::fs::rename(&segs[1], &tmp).unwrap();
    std::fs::rename(&segs[2], &segs[1]).unwrap();
    std::fs::rename(&tmp, &segs[2]).unwrap();
    let err = read_all(dir.path(), ReadOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Chain { .. }), "{err}");
}

#[test]
fn foreign_segment_is_an_error() {
    // Two logs with identical positions but different content: splicing a segment of one
    // into the other breaks the chain.
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    write_log(a.path(), 600, 8192);
    let log = Binlog::open(cfg(b.path(), Durability::EverySec, 8192)).unwrap();
    for i in 0..600 {
        let mut p = payload(i);
        if let Some(x) = p.first_mut() {
            *x ^= 0xff;
        }
        log.append((i % 50) as u16, &p).unwrap();
    }
    log.close().unwrap();
    let sa = segments(a.path());
    let sb = segments(b.path());
    assert_eq!(sa[2].file_name(), sb[2].file_name());
    std::fs::copy(&sb[2], &sa[2]).unwrap();
    let err = read_all(a.path(), ReadOptions::default()).unwrap_err();
    assert!(
        matches!(&err, Error::Chain { reason, .. } if reason.contains("chain")),
        "{err}"
    );
}

#[test]
fn torn_segment_header_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_log(dir.path(), 600, 8192);
    let (read_before, reader) = read_all(dir.path(), ReadOptions::default()).unwrap();
    let end = reader.pos();
    // A crash while creating the next segment leaves a short header.
    let next = dir
        .path()
        .join(koshka_binlog::format::segment_file_name("kv", end));
    std::fs::write(&next, [0u8; 10]).unwrap();
    let (read, reader) = read_all(dir.path(), ReadOptions::default()).unwrap();
    assert_eq!(read, read_before);
    assert_eq!(reader.cut().unwrap().offset, 0);
    let log = Binlog::open(cfg(dir.path(), Durability::EverySec, 8192)).unwrap();
    let a = log.append(1, b"x").unwrap();
    log.close().unwrap();
    let (read, _) = read_all(dir.path(), ReadOptions::default()).unwrap();
    assert_eq!(read.len(), written.len() + 1);
    assert_eq!(read.last().unwrap().2, a.pos);
}

#[test]
fn reserved_and_oversized_records_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = Binlog::open(cfg(dir.path(), Durability::EverySec, 1 << 20)).unwrap();
    assert!(log.append(RECORD_TYPE_TIME, b"").is_err());
    assert!(log.append(0xff00, b"").is_err());
    assert!(log.append(0xfeff, b"").is_ok());
}

#[test]
fn time_is_carried_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = Binlog::open(cfg(dir.path(), Durability::EverySec, 1 << 20)).unwrap();
    let mut appended = Vec::new();
    for i in 0..3u8 {
        appended.push(log.append(1, &[i]).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    log.close().unwrap();
    let mut reader = Reader::open(dir.path(), "kv", ReadOptions::default()).unwrap();
    let mut seen = Vec::new();
    let mut times = 0;
    while let Some(r) = reader.next_record().unwrap() {
        if r.record_type == RECORD_TYPE_TIME {
            times += 1;
        } else {
            seen.push((r.pos, r.time));
        }
    }
    assert_eq!(times, 3);
    assert_eq!(
        seen,
        appended.iter().map(|a| (a.pos, a.time)).collect::<Vec<_>>()
    );
    assert!(seen.windows(2).all(|w| w[0].1 < w[1].1));
}

#[test]
fn always_mode_group_commits_concurrent_writers() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Binlog::open(cfg(dir.path(), Durability::Always, 1 << 20)).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for i in 0..200 {
                    let a = log.append(t, &payload(i)).unwrap();
                    log.wait_acked_blocking(a.pos).unwrap();
                    assert!(log.durable() >= a.pos);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = log.stats();
    assert_eq!(stats.durable, stats.position);
    assert!(
        stats.fsyncs < 1600,
        "fsyncs {} for 1600 appends",
        stats.fsyncs
    );
    log.close().unwrap();
    let (read, _) = read_all(dir.path(), ReadOptions::default()).unwrap();
    assert_eq!(read.len(), 1600);
}

#[test]
fn everysec_syncs_within_a_second_and_async_wait() {
    let dir = tempfile::tempdir().unwrap();
    let log = Binlog::open(cfg(dir.path(), Durability::EverySec, 1 << 20)).unwrap();
    let a = log.append(1, b"hello").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(log.wait_acked(a.pos)).unwrap();
    assert!(log.written() >= a.pos);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(log.durable() >= a.pos);
    log.close().unwrap();
}

#[test]
fn failed_write_poisons_the_log() {
    let dir = tempfile::tempdir().unwrap();
    // /dev/full fails every write with ENOSPC.
    let end = LogEnd {
        pos: 0,
        chain: 0,
        time: 0,
        segment: Some((PathBuf::from("/dev/full"), 0)),
    };
    let log = Binlog::open_at(cfg(dir.path(), Durability::EverySec, 1 << 20), end).unwrap();
    let a = log.append(1, b"doomed").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert!(rt.block_on(log.wait_acked(a.pos)).is_err());
    assert!(log.is_poisoned());
    assert!(matches!(
        log.append(1, b"x"),
        Err(koshka_engine::Error::Journal(_))
    ));
    assert!(log.wait_acked_blocking(a.pos).is_err());
    assert!(matches!(log.close(), Err(Error::Poisoned(_))));
}

#[test]
fn tail_mode_follows_a_growing_log_across_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let log = Binlog::open(cfg(dir.path(), Durability::EverySec, 4096)).unwrap();
    let opts = ReadOptions {
        mode: koshka_binlog::ReadMode::Tail,
        ..Default::default()
    };
    let mut reader = Reader::open(dir.path(), "kv", opts).unwrap();
    let mut seen = Vec::new();
    for round in 0..20 {
        let mut last = 0;
        for i in 0..30 {
            last = log.append(2, &payload(round * 30 + i)).unwrap().pos;
        }
        log.wait_acked_blocking(last).unwrap();
        while let Some(r) = reader.next_record().unwrap() {
            if r.record_type != RECORD_TYPE_TIME {
                seen.push((r.payload.to_vec(), r.pos));
            }
        }
        assert_eq!(reader.pos(), last, "round {round}");
    }
    assert_eq!(seen.len(), 600);
    assert!(segments(dir.path()).len() > 5);
    log.close().unwrap();
}
