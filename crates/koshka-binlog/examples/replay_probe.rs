//! In-process replay rate of an existing binlog, split into its parts, to tell decode cost
//! from engine apply cost (used by `scripts/bench-durability.sh`; not a benchmark of record).
//!
//! ```text
//! cargo run --release -p koshka-binlog --example replay_probe -- DIR [ENGINE] [RUNS]
//! ```
//! `DIR` holds `<ENGINE>.<pos>.bin` segments (for `koshka serve --data-dir D`: `D/kv`);
//! `ENGINE` defaults to `kv`, `RUNS` (medians are printed) to 3. Read-only: unlike the
//! start-up path ([`koshka_binlog::replay`]) it never truncates a torn tail.
//!
//! Phases, each over the whole log:
//! * `read`: the segment files read with 1 MiB `read(2)`s, nothing else (page cache / disk);
//! * `crc`: the same plus CRC32C over every byte (the checksum floor of any replay);
//! * `reader`: [`Reader::next_record`] over every record: framing, header and payload CRCs,
//!   chain value, TIME records: everything the host does before `Engine::apply`;
//! * `reader+map`: the reader plus a stand-in apply of kv SET payloads (flags u32, exptime
//!   u32, key_len u8, key, value) into a `std` `HashMap<Box<[u8]>, Box<[u8]>>` (one
//!   allocation per record for the value, one for a new key). The real kv engine's apply
//!   (partition lock, hashbrown, item allocation) costs on the order of this.
//!
//! The server's own figure (`replay_records` / `replay_seconds` in `stats`) minus the
//! `reader` phase is what the engine's apply costs.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use koshka_binlog::{ReadOptions, Reader};

fn segments(dir: &Path, engine: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{engine}.")) && n.ends_with(".bin"))
        })
        .collect();
    out.sort();
    out
}

/// Reads every segment; `crc`: checksums every byte too. Returns bytes read.
fn read_all(files: &[PathBuf], crc: bool) -> (u64, u32) {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let mut c = 0u32;
    for path in files {
        let mut f = File::open(path).expect("open segment");
        loop {
            let n = f.read(&mut buf).expect("read segment");
            if n == 0 {
                break;
            }
            if crc {
                c = crc32c::crc32c_append(c, &buf[..n]);
            }
            total += n as u64;
        }
    }
    (total, c)
}

/// Reads every record; `map`: applies kv SETs to a HashMap. Returns (records, bytes, sets).
fn reader_pass(dir: &Path, engine: &str, map: bool) -> (u64, u64, u64) {
    let mut reader = Reader::open(dir, engine, ReadOptions::default()).expect("open log");
    let start = reader.pos();
    let mut records = 0u64;
    let mut sets = 0u64;
    let mut table: HashMap<Box<[u8]>, Box<[u8]>> = HashMap::new();
    while let Some(rec) = reader.next_record().expect("read record") {
        records += 1;
        if map && rec.record_type == 1 {
            let p = rec.payload;
            if p.len() >= 9 {
                let key_len = p[8] as usize;
                if p.len() >= 9 + key_len {
                    let (key, value) = p[9..].split_at(key_len);
                    sets += 1;
                    match table.get_mut(key) {
                        Some(v) => *v = value.into(),
                        None => {
                            table.insert(key.into(), value.into());
                        }
                    }
                }
            }
        }
    }
    if let Some(cut) = reader.cut() {
        eprintln!(
            "note: the log has a torn tail at {} offset {} (not truncated)",
            cut.path.display(),
            cut.offset
        );
    }
    std::hint::black_box(&table);
    (records, reader.pos() - start, sets)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(dir) = args.get(1).map(PathBuf::from) else {
        eprintln!("usage: replay_probe DIR [ENGINE] [RUNS]");
        std::process::exit(2);
    };
    let engine = args.get(2).map_or("kv", String::as_str);
    let runs: usize = args.get(3).map_or(3, |r| r.parse().expect("RUNS"));
    let files = segments(&dir, engine);
    if files.is_empty() {
        eprintln!("no {engine}.*.bin segments in {}", dir.display());
        std::process::exit(1);
    }
    println!(
        "log: {} segments, {:.1} MB, runs: {runs} (median)",
        files.len(),
        read_all(&files, false).0 as f64 / 1e6
    );
    println!("phase\tseconds\trecords\tbytes\trecords_per_s\tMB_per_s");
    for phase in ["read", "crc", "reader", "reader+map"] {
        let mut secs = Vec::new();
        let (mut records, mut bytes) = (0u64, 0u64);
        for _ in 0..runs {
            let t = Instant::now();
            match phase {
                "read" | "crc" => {
                    let (b, c) = read_all(&files, phase == "crc");
                    std::hint::black_box(c);
                    bytes = b;
                }
                _ => {
                    let (r, b, _sets) = reader_pass(&dir, engine, phase == "reader+map");
                    records = r;
                    bytes = b;
                }
            }
            secs.push(t.elapsed().as_secs_f64());
        }
        let s = median(secs);
        let rps = if records > 0 {
            format!("{:.0}", records as f64 / s)
        } else {
            "-".into()
        };
        println!(
            "{phase}\t{s:.3}\t{records}\t{bytes}\t{rps}\t{:.0}",
            bytes as f64 / s / 1e6
        );
    }
}
