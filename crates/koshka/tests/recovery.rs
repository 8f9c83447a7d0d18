//! Server-level recovery rules (docs/binlog.md §6–7) checked against real `koshka serve`
//! processes: torn tails are cut with a warning, mid-log corruption stops start-up with file
//! and offset (and `--repair` truncates there), a corrupt newest snapshot falls back to an
//! older one, a missing segment is an error, snapshots taken under load restore exactly the
//! acknowledged state, and `koshka binlog verify` reports damage through its exit status.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod crashkit;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crashkit::{
    binlog_tool, copy_dir, file_name, files, flip_bit, records, seed, snapshot_and_wait, truncate,
    Model, RecordAt, Server, ServerOpts, Workload, Writers, RECORD_HEADER, RECORD_TYPE_TIME,
    WORKLOAD_ENGINES,
};

/// 16 KiB segments, no automatic snapshots: many segments, replay reads all of them.
const MANY_SEGMENTS: &str = "[storage]\nsegment_size = \"16KiB\"\nsnapshot_log_bytes = \"1GiB\"\n";

fn kv_opts(dir: &Path, config: &str) -> ServerOpts {
    let mut o = ServerOpts::new(dir, "everysec", &["kv"]);
    o.config = config.to_string();
    o
}

fn value(i: usize) -> String {
    format!("value-{i:05}-{}", "x".repeat(80 + i % 37))
}

/// Writes `key{i}` = `value(i)` for `range`, each acknowledged.
fn write_keys(server: &Server, prefix: &str, range: std::ops::Range<usize>) {
    let mut c = server.connect("kv");
    for i in range {
        let r = c.set(&format!("{prefix}{i}"), value(i).as_bytes()).unwrap();
        assert_eq!(r, "STORED");
    }
}

/// Asserts `prefix{i}` holds `value(i)` exactly for `i < present` and is absent up to `total`.
fn assert_keys(server: &Server, prefix: &str, present: usize, total: usize) {
    let mut c = server.connect("kv");
    for i in 0..total {
        let got = c.get_str(&format!("{prefix}{i}")).unwrap();
        if i < present {
            assert_eq!(got.as_deref(), Some(value(i).as_str()), "{prefix}{i}");
        } else {
            assert_eq!(got, None, "{prefix}{i} should have been cut");
        }
    }
}

/// Engine records (TIME records left out) of every segment, in log order.
fn engine_records(dir: &Path) -> Vec<(PathBuf, RecordAt)> {
    files(dir, "kv", "bin")
        .into_iter()
        .flat_map(|seg| {
            records(&seg)
                .into_iter()
                .filter(|r| r.record_type != RECORD_TYPE_TIME)
                .map(move |r| (seg.clone(), r))
        })
        .collect()
}

/// A killed server's kv directory with `n` acknowledged sets `key0..key{n}`.
fn killed_kv_dir(root: &Path, config: &str, n: usize) -> PathBuf {
    let data = root.join("base");
    let server = Server::must_start(&kv_opts(&data, config));
    write_keys(&server, "key", 0..n);
    let _ = server.kill9();
    let records = engine_records(&data.join("kv"));
    assert_eq!(records.len(), n, "one kv record per set expected");
    data
}

#[test]
fn torn_tail_is_cut_at_every_offset_with_a_warning() {
    let root = tempfile::tempdir().unwrap();
    let n = 40;
    let base = killed_kv_dir(root.path(), "", n);
    let recs = engine_records(&base.join("kv"));
    let mut case = 0;
    for j in [n - 3, n - 2, n - 1] {
        let (seg, rec) = &recs[j];
        let cuts = [
            1,
            7,
            RECORD_HEADER - 1,
            RECORD_HEADER,
            RECORD_HEADER + 3,
            rec.len - 1,
        ];
        for cut in cuts {
            case += 1;
            let data = root.path().join(format!("torn{case}"));
            copy_dir(&base, &data);
            let seg = data.join("kv").join(file_name(seg));
            truncate(&seg, rec.offset + cut);
            let server = Server::must_start(&kv_opts(&data, ""));
            let warned = |stderr: &str| {
                stderr.contains(&file_name(&seg))
                    && stderr.contains(&format!("offset {}", rec.offset))
            };
            let stderr = server.stderr_when(warned);
            assert!(
                warned(&stderr),
                "cut record {j} at +{cut}: no warning naming {} and offset {}:\n{stderr}",
                seg.display(),
                rec.offset
            );
            assert_eq!(std::fs::metadata(&seg).unwrap().len(), rec.offset);
            assert_keys(&server, "key", j, n);
            // The log goes on from the cut: a new write survives the next kill.
            write_keys(&server, "after", 0..3);
            let _ = server.kill9();
            let server = Server::must_start(&kv_opts(&data, ""));
            assert_keys(&server, "key", j, n);
            assert_keys(&server, "after", 3, 3);
            assert!(
                !server.stderr().contains("truncated"),
                "second start cut again:\n{}",
                server.stderr()
            );
        }
    }
}

#[test]
fn bit_flip_mid_log_stops_start_up_and_repair_truncates_there() {
    let root = tempfile::tempdir().unwrap();
    let n = 600;
    let base = killed_kv_dir(root.path(), MANY_SEGMENTS, n);
    let segs = files(&base.join("kv"), "kv", "bin");
    assert!(segs.len() >= 4, "expected several segments, got {segs:?}");
    let recs = engine_records(&base.join("kv"));
    // A record in the middle of a middle segment, and one in the middle of the last segment
    // (a damaged record followed by good ones is corruption there too, not a torn tail).
    let middle_seg = &segs[segs.len() / 2];
    let last_seg = &segs[segs.len() - 1];
    for (label, target) in [("middle", middle_seg), ("last", last_seg)] {
        let in_seg: Vec<usize> = (0..n).filter(|&i| recs[i].0 == *target).collect();
        assert!(in_seg.len() >= 3, "{label}: too few records in {target:?}");
        let idx = in_seg[in_seg.len() / 2];
        let rec = recs[idx].1;
        let data = root.path().join(format!("flip-{label}"));
        copy_dir(&base, &data);
        let kv_dir = data.join("kv");
        let seg = kv_dir.join(file_name(target));
        flip_bit(&seg, rec.offset + RECORD_HEADER + 3);
        let before = std::fs::metadata(&seg).unwrap().len();

        let failed = Server::must_fail(&kv_opts(&data, MANY_SEGMENTS));
        assert!(
            failed.status.is_some_and(|s| !s.success()),
            "{label}: {:?}",
            failed.status
        );
        let want_offset = format!("offset {}", rec.offset);
        assert!(
            failed.stderr.contains(&file_name(&seg)) && failed.stderr.contains(&want_offset),
            "{label}: start-up error must name {} and {want_offset}:\n{}",
            seg.display(),
            failed.stderr
        );
        assert_eq!(
            std::fs::metadata(&seg).unwrap().len(),
            before,
            "{label}: a refused start-up must not modify the log"
        );
        let (ok, report) = binlog_tool(&["verify"], &kv_dir);
        assert!(!ok, "{label}: verify passed a corrupt log:\n{report}");
        assert!(report.contains(&file_name(&seg)), "{label}: {report}");

        let mut repair = kv_opts(&data, MANY_SEGMENTS);
        repair.repair = true;
        let server = Server::must_start(&repair);
        let stderr =
            server.stderr_when(|e| e.contains(&file_name(&seg)) && e.contains(&want_offset));
        assert!(
            stderr.contains(&file_name(&seg)) && stderr.contains(&want_offset),
            "{label}: repair must say where it truncated:\n{stderr}"
        );
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), rec.offset);
        let later: Vec<_> = segs
            .iter()
            .filter(|s| file_name(s) > file_name(target))
            .collect();
        for s in &later {
            let aside = kv_dir.join(format!("{}.orphaned", file_name(s)));
            assert!(
                aside.exists(),
                "{label}: {} not moved aside",
                aside.display()
            );
        }
        assert_keys(&server, "key", idx, n);
        write_keys(&server, "after", 0..5);
        drop(server);
        // Repaired logs verify clean and start without --repair.
        let (ok, report) = binlog_tool(&["verify"], &kv_dir);
        assert!(ok, "{label}: repaired log does not verify:\n{report}");
        let server = Server::must_start(&kv_opts(&data, MANY_SEGMENTS));
        assert_keys(&server, "key", idx, n);
        assert_keys(&server, "after", 5, 5);
    }
}

fn stat(server: &Server, name: &str) -> String {
    server.connect("kv").stats("").unwrap()[name].clone()
}

fn snapshot_pos(path: &Path) -> u64 {
    // kv.<pos:20>.snap
    file_name(path).split('.').nth(1).unwrap().parse().unwrap()
}

#[test]
fn corrupt_newest_snapshot_falls_back_to_the_previous_one() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("base");
    let server = Server::must_start(&kv_opts(&data, ""));
    write_keys(&server, "a", 0..200);
    snapshot_and_wait(&mut server.connect("kv"));
    write_keys(&server, "b", 0..200);
    snapshot_and_wait(&mut server.connect("kv"));
    write_keys(&server, "c", 0..200);
    let _ = server.kill9();
    let snaps = files(&data.join("kv"), "kv", "snap");
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    let (older, newer) = (snapshot_pos(&snaps[0]), snapshot_pos(&snaps[1]));
    assert!(older < newer);

    // Control: the newest snapshot loads and only the tail after it is replayed.
    let control = root.path().join("control");
    copy_dir(&data, &control);
    let server = Server::must_start(&kv_opts(&control, ""));
    assert_eq!(stat(&server, "snapshot_loaded_pos"), newer.to_string());
    let short_replay: u64 = stat(&server, "replay_bytes").parse().unwrap();
    drop(server);

    // A flipped bit in the newest snapshot's body: the older one plus a longer replay.
    let damaged = root.path().join("damaged");
    copy_dir(&data, &damaged);
    let newest = damaged.join("kv").join(file_name(&snaps[1]));
    let len = std::fs::metadata(&newest).unwrap().len();
    flip_bit(&newest, len / 2);
    let server = Server::must_start(&kv_opts(&damaged, ""));
    let stderr =
        server.stderr_when(|e| e.contains(&file_name(&newest)) && e.contains("falling back"));
    assert!(
        stderr.contains(&file_name(&newest)) && stderr.contains("falling back"),
        "no fallback warning naming {}:\n{stderr}",
        newest.display()
    );
    assert_eq!(stat(&server, "snapshot_loaded_pos"), older.to_string());
    let long_replay: u64 = stat(&server, "replay_bytes").parse().unwrap();
    assert!(
        long_replay > short_replay,
        "{long_replay} <= {short_replay}"
    );
    for p in ["a", "b", "c"] {
        assert_keys(&server, p, 200, 200);
    }
    drop(server);

    // Both snapshots damaged (the older one truncated): full replay from position 0.
    let both = root.path().join("both");
    copy_dir(&data, &both);
    let newest = both.join("kv").join(file_name(&snaps[1]));
    flip_bit(&newest, len / 2);
    let oldest = both.join("kv").join(file_name(&snaps[0]));
    let olen = std::fs::metadata(&oldest).unwrap().len();
    truncate(&oldest, olen - 3);
    let server = Server::must_start(&kv_opts(&both, ""));
    assert_eq!(stat(&server, "snapshot_loaded_pos"), "-1");
    for p in ["a", "b", "c"] {
        assert_keys(&server, p, 200, 200);
    }
}

#[test]
fn missing_middle_segment_is_an_error_never_skipped() {
    let root = tempfile::tempdir().unwrap();
    let n = 400;
    let base = killed_kv_dir(root.path(), MANY_SEGMENTS, n);
    let segs = files(&base.join("kv"), "kv", "bin");
    assert!(segs.len() >= 3, "{segs:?}");
    let gone = &segs[segs.len() / 2];
    let next = &segs[segs.len() / 2 + 1];
    std::fs::remove_file(gone).unwrap();

    let failed = Server::must_fail(&kv_opts(&base, MANY_SEGMENTS));
    assert!(failed.status.is_some_and(|s| !s.success()));
    assert!(
        failed.stderr.contains(&file_name(next)),
        "the error must name the segment after the gap ({}):\n{}",
        file_name(next),
        failed.stderr
    );
    // Not even --repair skips a gap.
    let mut repair = kv_opts(&base, MANY_SEGMENTS);
    repair.repair = true;
    let failed = Server::must_fail(&repair);
    assert!(
        failed.stderr.contains(&file_name(next)),
        "{}",
        failed.stderr
    );
    let (ok, report) = binlog_tool(&["verify"], &base.join("kv"));
    assert!(!ok, "verify passed a log with a gap:\n{report}");
    // Nothing was moved or truncated.
    assert_eq!(files(&base.join("kv"), "kv", "bin").len(), segs.len() - 1);
}

#[test]
fn snapshots_under_load_restore_exactly_the_acknowledged_state() {
    let seed = seed("snapshots_under_load");
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let opts = ServerOpts::new(&data, "everysec", WORKLOAD_ENGINES);
    let server = Server::must_start(&opts);
    let mut model = Model::default();
    model.ensure_counters(&server);
    let writers = Writers::start(
        &server,
        Workload::default(),
        seed,
        0,
        Duration::from_secs(60),
    );
    let mut admin: Vec<_> = WORKLOAD_ENGINES.iter().map(|e| server.connect(e)).collect();
    for _ in 0..4 {
        for c in &mut admin {
            snapshot_and_wait(c);
        }
    }
    writers.stop();
    for log in writers.join() {
        assert!(log.in_flight.is_none(), "{}", log.ended);
        assert_eq!(log.ended, "stopped");
        model.absorb(log);
    }
    assert!(
        model.acked_ops > 100,
        "too little load: {}",
        model.acked_ops
    );
    let _ = server.kill9();
    for engine in WORKLOAD_ENGINES {
        assert!(
            files(&data.join(engine), engine, "snap").len() >= 4,
            "{engine}"
        );
    }
    let server = Server::must_start(&opts);
    let bad = model.verify_and_resolve(&server);
    assert!(bad.is_empty(), "seed {seed}: {}", bad.join("\n"));
    for engine in WORKLOAD_ENGINES {
        let stats = server.connect(engine).stats("").unwrap();
        assert_ne!(stats["snapshot_loaded_pos"], "-1", "{engine}: {stats:?}");
    }
    println!(
        "snapshots under load: {} acked ops; {}",
        model.acked_ops,
        model.summary()
    );
}

#[test]
fn binlog_verify_exit_status() {
    let root = tempfile::tempdir().unwrap();
    let n = 300;
    let base = killed_kv_dir(root.path(), MANY_SEGMENTS, n);
    let (ok, report) = binlog_tool(&["verify"], &base.join("kv"));
    assert!(ok, "good log fails verify:\n{report}");

    // A torn tail is a warning, not damage: the server would start.
    let torn = root.path().join("torn");
    copy_dir(&base, &torn);
    let last = files(&torn.join("kv"), "kv", "bin").pop().unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    truncate(&last, len - 5);
    let (ok, report) = binlog_tool(&["verify"], &torn.join("kv"));
    assert!(ok, "torn tail fails verify:\n{report}");

    // A flipped bit in the first segment is damage.
    let bad = root.path().join("bad");
    copy_dir(&base, &bad);
    let first = files(&bad.join("kv"), "kv", "bin").remove(0);
    let rec = records(&first)[5];
    flip_bit(&first, rec.offset + RECORD_HEADER + 1);
    let (ok, report) = binlog_tool(&["verify"], &bad.join("kv"));
    assert!(!ok, "damaged log passes verify:\n{report}");
    assert!(
        report.contains(&file_name(&first)) && report.contains(&format!("offset {}", rec.offset)),
        "verify must name file and offset:\n{report}"
    );

    // A damaged header of a segment is damage too.
    let hdr = root.path().join("header");
    copy_dir(&base, &hdr);
    let second = files(&hdr.join("kv"), "kv", "bin").remove(1);
    flip_bit(&second, 30);
    let (ok, report) = binlog_tool(&["verify"], &hdr.join("kv"));
    assert!(!ok, "damaged segment header passes verify:\n{report}");
}
