//! A tiny partitioned engine for host tests: a map of counters, partitioned by key, honouring
//! the per-partition position skip rule of fuzzy snapshots.
#![allow(dead_code, missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use koshka_engine::{ApplyCtx, Cx, Engine, Error, Journal, Outcome, Request, Result, Stat};
use parking_lot::Mutex;

pub const PARTITIONS: usize = 8;
pub const REC_ADD: u16 = 1;
/// Clears every partition: touches them all, so replay applies it as a barrier.
pub const REC_RESET: u16 = 2;

#[derive(Default)]
struct Partition {
    pos: u64,
    map: BTreeMap<u64, (i64, u32)>,
}

#[derive(Default)]
pub struct CounterEngine {
    parts: [Mutex<Partition>; PARTITIONS],
}

fn encode(key: u64, delta: i64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&key.to_le_bytes());
    b[8..].copy_from_slice(&delta.to_le_bytes());
    b
}

impl CounterEngine {
    /// The live write path: lock the partition, append, apply with the appended position.
    pub fn add(&self, key: u64, delta: i64, journal: &dyn Journal) -> Result<u64> {
        let mut part = self.parts[(key % PARTITIONS as u64) as usize].lock();
        let rec = encode(key, delta);
        let appended = journal.append(REC_ADD, &rec)?;
        Self::apply_locked(
            &mut part,
            key,
            delta,
            ApplyCtx {
                pos: appended.pos,
                time: appended.time,
            },
        );
        Ok(appended.pos)
    }

    /// Clears every counter: one record over every partition (locked in index order).
    pub fn reset(&self, journal: &dyn Journal) -> Result<u64> {
        let mut parts: Vec<_> = self.parts.iter().map(|p| p.lock()).collect();
        let appended = journal.append(REC_RESET, &[])?;
        for part in &mut parts {
            part.map.clear();
            part.pos = appended.pos;
        }
        Ok(appended.pos)
    }

    fn apply_locked(part: &mut Partition, key: u64, delta: i64, ctx: ApplyCtx) {
        if ctx.pos <= part.pos {
            return;
        }
        let e = part.map.entry(key).or_insert((0, 0));
        e.0 += delta;
        e.1 = ctx.time;
        part.pos = ctx.pos;
    }

    pub fn state(&self) -> BTreeMap<u64, i64> {
        let mut out = BTreeMap::new();
        for p in &self.parts {
            for (k, (v, _)) in &p.lock().map {
                out.insert(*k, *v);
            }
        }
        out
    }

    pub fn times(&self) -> BTreeMap<u64, u32> {
        let mut out = BTreeMap::new();
        for p in &self.parts {
            for (k, (_, t)) in &p.lock().map {
                out.insert(*k, *t);
            }
        }
        out
    }
}

impl Engine for CounterEngine {
    fn name(&self) -> &'static str {
        "counter"
    }

    fn execute(&self, _request: &Request<'_>, _cx: &mut Cx<'_>) -> Result<Outcome> {
        Err(Error::NotSupported { engine: "counter" })
    }

    fn apply(&self, record_type: u16, payload: &[u8], ctx: ApplyCtx) -> Result<()> {
        if record_type == REC_RESET && payload.is_empty() {
            for p in &self.parts {
                let mut part = p.lock();
                if part.pos < ctx.pos {
                    part.map.clear();
                    part.pos = ctx.pos;
                }
            }
            return Ok(());
        }
        if record_type != REC_ADD || payload.len() != 16 {
            return Err(Error::corrupt_record(format!(
                "type {record_type} len {}",
                payload.len()
            )));
        }
        let key = u64::from_le_bytes(payload[..8].try_into().unwrap());
        let delta = i64::from_le_bytes(payload[8..].try_into().unwrap());
        let mut part = self.parts[(key % PARTITIONS as u64) as usize].lock();
        Self::apply_locked(&mut part, key, delta, ctx);
        Ok(())
    }

    /// An ADD touches its key's partition (even one whose length apply then refuses, so
    /// tests reach a failure on an apply thread); RESET and anything else are barriers.
    fn replay_partition(&self, record_type: u16, payload: &[u8]) -> Option<usize> {
        let key = payload.get(..8)?;
        let key = u64::from_le_bytes(key.try_into().ok()?);
        (record_type == REC_ADD).then_some((key % PARTITIONS as u64) as usize)
    }

    fn write_snapshot(&self, out: &mut dyn Write) -> Result<()> {
        for p in &self.parts {
            let part = p.lock();
            out.write_all(&part.pos.to_le_bytes())?;
            out.write_all(&(part.map.len() as u64).to_le_bytes())?;
            for (k, (v, t)) in &part.map {
                out.write_all(&k.to_le_bytes())?;
                out.write_all(&v.to_le_bytes())?;
                out.write_all(&t.to_le_bytes())?;
            }
            drop(part);
            std::thread::yield_now();
        }
        Ok(())
    }

    fn load_snapshot(&self, input: &mut dyn Read) -> Result<()> {
        fn u64_of(input: &mut dyn Read) -> Result<u64> {
            let mut b = [0u8; 8];
            input.read_exact(&mut b)?;
            Ok(u64::from_le_bytes(b))
        }
        for p in &self.parts {
            let mut part = p.lock();
            part.pos = u64_of(input)?;
            let n = u64_of(input)?;
            for _ in 0..n {
                let k = u64_of(input)?;
                let v = u64_of(input)? as i64;
                let mut t = [0u8; 4];
                input.read_exact(&mut t)?;
                part.map.insert(k, (v, u32::from_le_bytes(t)));
            }
        }
        Ok(())
    }

    fn stats(&self) -> Vec<Stat> {
        Vec::new()
    }
}

/// Copies every regular file of `from` into a fresh temp dir.
pub fn copy_dir(from: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let p = dir.path().to_path_buf();
    (dir, p)
}

pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    v.sort();
    v
}
