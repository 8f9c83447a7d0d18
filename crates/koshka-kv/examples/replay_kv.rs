//! Start-up replay rate of the real kv engine through the persistence host, in-process.
//!
//! ```text
//! cargo run --release -p koshka-kv --example replay_kv -- \
//!     [--dir DIR] [--records 5000000] [--keys 1000000] [--runs 5] [--threads 1,2]
//! ```
//! Builds (once; kept in `DIR` when given, else in a temp dir) a binlog of `--records` kv
//! SETs of 32-byte keys drawn uniformly at random (fixed seed) from `--keys` keys and 100-byte
//! values, as `koshka bench` draws them (a round-robin order would walk memory sequentially
//! and flatter the replay), written
//! through `Kv::store` and `Host` (durability everysec, no snapshots). Then, `--runs` times,
//! starts a fresh `Kv` from that log with `Host::open` for each `--threads` setting (the
//! order rotates per round so no setting always runs first) and prints the host's own
//! `replay_records` / `replay_seconds`, and the median per setting. `--threads 1` is the
//! serial replay (no apply threads); `0` means one apply thread per core.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use koshka_binlog::{Durability, Host, PersistConfig};
use koshka_engine::StoreMode;
use koshka_kv::{Kv, KvConfig};
use koshka_limits::Limits;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

struct Args {
    dir: Option<PathBuf>,
    records: u64,
    keys: u64,
    runs: usize,
    threads: Vec<usize>,
}

fn parse_args() -> Args {
    let mut args = Args {
        dir: None,
        records: 5_000_000,
        keys: 1_000_000,
        runs: 5,
        threads: vec![1],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => args.dir = Some(PathBuf::from(value)),
            "--records" => args.records = value.parse().expect("--records"),
            "--keys" => args.keys = value.parse().expect("--keys"),
            "--runs" => args.runs = value.parse().expect("--runs"),
            "--threads" => {
                args.threads = value
                    .split(',')
                    .map(|t| t.parse().expect("--threads"))
                    .collect();
            }
            _ => panic!("unknown flag {flag}"),
        }
    }
    args
}

fn kv() -> Arc<Kv> {
    Arc::new(Kv::new(KvConfig {
        memory_limit: usize::MAX / 2,
        ..KvConfig::default()
    }))
}

fn config(dir: &Path, threads: usize) -> PersistConfig {
    let mut c = PersistConfig::new(dir, "kv", &Limits::production());
    c.durability = Durability::EverySec;
    c.snapshot_log_bytes = 0;
    c.snapshot_on_shutdown = false;
    c.progress = false;
    c.replay_threads = threads;
    c
}

fn build_log(dir: &Path, records: u64, keys: u64) {
    let kv = kv();
    let host = Host::open(kv.clone(), config(dir, 1)).expect("open");
    let started = Instant::now();
    let value = [b'v'; 100];
    let mut rng = SmallRng::seed_from_u64(1);
    for _ in 0..records {
        let key = format!("key:{:028}", rng.gen_range(0..keys));
        kv.store(
            StoreMode::Set,
            key.as_bytes(),
            0,
            0,
            0,
            &value,
            host.journal(),
        )
        .expect("store");
    }
    host.shutdown().expect("shutdown");
    eprintln!(
        "built {records} sets over {keys} keys in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn stat(host: &Host, name: &str) -> String {
    host.stats()
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .unwrap_or_default()
}

/// CPU seconds (user + system) this process has used, all threads (from /proc/self/stat,
/// in clock ticks of 10 ms).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of stat(5) (utime, stime) are 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args = parse_args();
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir).expect("create dir");
    let has_log = std::fs::read_dir(&dir).expect("read dir").any(|e| {
        e.expect("entry")
            .path()
            .extension()
            .is_some_and(|x| x == "bin")
    });
    if !has_log {
        build_log(&dir, args.records, args.keys);
    }
    println!("threads\trun\trecords\tseconds\trecords_per_s\tcpu_s\tcpu_ns_per_record\titems");
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); args.threads.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); args.threads.len()];
    for run in 0..args.runs {
        for k in 0..args.threads.len() {
            let slot = (k + run) % args.threads.len();
            let threads = args.threads[slot];
            let kv = kv();
            let cpu_before = cpu_seconds();
            let host = Host::open(kv.clone(), config(&dir, threads)).expect("open");
            let cpu_used = cpu_seconds() - cpu_before;
            let records: f64 = stat(&host, "replay_records").parse().unwrap();
            let seconds: f64 = stat(&host, "replay_seconds").parse().unwrap();
            let items = kv.usage().0;
            drop(host);
            drop(kv);
            let rate = records / seconds;
            let ns = cpu_used * 1e9 / records;
            println!(
                "{threads}\t{run}\t{records}\t{seconds:.3}\t{rate:.0}\t{cpu_used:.2}\t{ns:.0}\t{items}"
            );
            rates[slot].push(rate);
            cpu[slot].push(ns);
        }
    }
    for ((threads, rates), cpu) in args.threads.iter().zip(rates).zip(cpu) {
        println!(
            "median\tthreads={threads}\truns={}\t{:.0} records/s\t{:.0} CPU ns/record",
            rates.len(),
            median(rates),
            median(cpu)
        );
    }
}
