//! What a background snapshot costs kv writers, in-process (no network), to see where the
//! cost is: CPU the snapshot thread takes, and how long writers wait for a partition the
//! snapshot holds.
//!
//! ```text
//! cargo run --release -p koshka-kv --example snapshot_kv -- \
//!     [--items 4000000] [--writers 2] [--windows 3] [--window 5] [--nice 10] [--dir DIR]
//! ```
//! Loads `--items` items (32-byte keys, 100-byte values) through a `Host` (durability
//! everysec) in a temp dir (or `DIR`), then runs `--writers` threads of 50/50 get/set on
//! random existing keys for `--windows` pairs of `--window`-second windows: quiet, then with
//! snapshots back to back (each deleted once written). Prints per window the writers' ops/s,
//! their longest and 99.99th-percentile operation, the snapshots written and the CPU seconds
//! the snapshot thread used (from /proc/self/task/*/stat, the thread named `snapshot-kv`).
//! `--nice` is the snapshot thread's nice value (`PersistConfig::snapshot_nice`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use koshka_binlog::{Durability, Host, PersistConfig};
use koshka_engine::StoreMode;
use koshka_kv::{Kv, KvConfig};
use koshka_limits::Limits;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

struct Args {
    items: u64,
    writers: usize,
    windows: usize,
    window: f64,
    nice: i32,
    dir: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut args = Args {
        items: 4_000_000,
        writers: 2,
        windows: 3,
        window: 5.0,
        nice: koshka_limits::SNAPSHOT_NICE_DEFAULT,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--items" => args.items = value.parse().expect("--items"),
            "--writers" => args.writers = value.parse().expect("--writers"),
            "--windows" => args.windows = value.parse().expect("--windows"),
            "--window" => args.window = value.parse().expect("--window"),
            "--nice" => args.nice = value.parse().expect("--nice"),
            "--dir" => args.dir = Some(PathBuf::from(value)),
            _ => panic!("unknown flag {flag}"),
        }
    }
    args
}

fn key(i: u64) -> String {
    format!("key:{i:028}")
}

/// CPU seconds of this process's threads whose name starts with `prefix`.
fn thread_cpu_seconds(prefix: &str) -> f64 {
    let mut total = 0.0;
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        total += (ticks(11) + ticks(12)) / 100.0;
    }
    total
}

struct Window {
    ops: u64,
    max_us: u64,
    p9999_us: u64,
}

fn run_window(kv: &Kv, host: &Host, args: &Args, seed: u64) -> Window {
    let stop = AtomicBool::new(false);
    let ops = AtomicU64::new(0);
    let value = [b'w'; 100];
    let latencies: Vec<Vec<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.writers)
            .map(|w| {
                let (stop, ops) = (&stop, &ops);
                s.spawn(move || {
                    let mut rng = SmallRng::seed_from_u64(seed * 100 + w as u64);
                    let mut lat = Vec::with_capacity(1 << 20);
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let k = key(rng.gen_range(0..args.items));
                        let t = Instant::now();
                        if rng.gen_bool(0.5) {
                            kv.read(k.as_bytes(), |item| std::hint::black_box(item.is_some()));
                        } else {
                            kv.store(
                                StoreMode::Set,
                                k.as_bytes(),
                                0,
                                0,
                                0,
                                &value,
                                host.journal(),
                            )
                            .expect("store");
                        }
                        lat.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
                        n += 1;
                    }
                    ops.fetch_add(n, Ordering::Relaxed);
                    lat
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(args.window));
        stop.store(true, Ordering::Relaxed);
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<u64> = latencies.into_iter().flatten().collect();
    all.sort_unstable();
    let at = |q: f64| {
        all.get(((all.len() as f64) * q) as usize)
            .copied()
            .unwrap_or(0)
    };
    Window {
        ops: ops.load(Ordering::Relaxed),
        max_us: all.last().copied().unwrap_or(0),
        p9999_us: at(0.9999),
    }
}

fn remove_snapshots(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "snap") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn main() {
    let args = parse_args();
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let kv = Arc::new(Kv::new(KvConfig {
        memory_limit: usize::MAX / 2,
        ..KvConfig::default()
    }));
    let mut cfg = PersistConfig::new(&dir, "kv", &Limits::production());
    cfg.durability = Durability::EverySec;
    cfg.snapshot_log_bytes = 0;
    cfg.snapshot_on_shutdown = false;
    cfg.progress = false;
    cfg.snapshot_nice = args.nice;
    let host = Host::open(kv.clone(), cfg).expect("open");
    let started = Instant::now();
    let value = [b'v'; 100];
    for i in 0..args.items {
        kv.store(
            StoreMode::Set,
            key(i).as_bytes(),
            0,
            0,
            0,
            &value,
            host.journal(),
        )
        .expect("store");
    }
    eprintln!(
        "loaded {} items in {:.1} s",
        args.items,
        started.elapsed().as_secs_f64()
    );
    println!("window\tkind\tops_per_s\tmax_us\tp9999_us\tsnapshots\tsnapshot_cpu_s\tsnapshot_ms");
    let (mut quiet, mut snap) = (Vec::new(), Vec::new());
    for w in 0..args.windows {
        for kind in ["quiet", "snap"] {
            let running = AtomicBool::new(kind == "snap");
            let written = AtomicU64::new(0);
            let cpu_before = thread_cpu_seconds("snapshot-");
            let written_before = stat(&host, "snapshots_written");
            let window = std::thread::scope(|s| {
                if kind == "snap" {
                    written.store(stat(&host, "snapshots_written"), Ordering::Relaxed);
                    s.spawn(|| {
                        while running.load(Ordering::Relaxed) {
                            host.request_snapshot();
                            let before = written.load(Ordering::Relaxed);
                            // Wait for the background thread's snapshot to land.
                            loop {
                                let n: u64 = stat(&host, "snapshots_written");
                                if n > before {
                                    written.store(n, Ordering::Relaxed);
                                    break;
                                }
                                std::thread::sleep(Duration::from_millis(5));
                            }
                            remove_snapshots(&dir);
                        }
                    });
                }
                let window = run_window(&kv, &host, &args, w as u64);
                running.store(false, Ordering::Relaxed);
                window
            });
            let cpu = thread_cpu_seconds("snapshot-") - cpu_before;
            let count = stat(&host, "snapshots_written") - written_before;
            let ms: u64 = stat(&host, "snapshot_last_duration_ms");
            let rate = window.ops as f64 / args.window;
            println!(
                "{w}\t{kind}\t{rate:.0}\t{}\t{}\t{count}\t{cpu:.2}\t{ms}",
                window.max_us, window.p9999_us
            );
            if kind == "quiet" {
                quiet.push(rate);
            } else {
                snap.push(rate);
            }
        }
    }
    quiet.sort_by(f64::total_cmp);
    snap.sort_by(f64::total_cmp);
    let (q, s) = (quiet[quiet.len() / 2], snap[snap.len() / 2]);
    println!(
        "median quiet {q:.0} ops/s, snapshotting {s:.0} ops/s, loss {:.1} %",
        (1.0 - s / q) * 100.0
    );
}

fn stat(host: &Host, name: &str) -> u64 {
    host.stats()
        .into_iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}
