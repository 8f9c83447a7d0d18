//! Shared driver of the `keys_<engine>` targets.
//!
//! An input is a sequence of operations separated by NUL bytes (so a corpus file reads as
//! text and dictionary words land inside keys and values):
//!
//! ```text
//! <op><key>[ <value>]\0<op><key>[ <value>]\0…
//! ```
//!
//! `<op>` is one byte: `s` set, `d` delete, `i` incr, `r` decr (reduce), `g` or anything else
//! get. The key runs to the first space (memcached keys never hold one, but the engine is
//! also handed whatever bytes come), the value is the rest. `incr`/`decr` take their delta
//! from the value as a decimal number (else its length). Every key is also read back with
//! `get` after an update.
//!
//! Invariants checked beyond "never panics, answers `Ok` or `Err`":
//! * **replay**: every record appended to the journal, applied in order to a fresh engine,
//!   yields a state whose snapshot equals the live engine's snapshot (after the engine's
//!   `normalize`);
//! * **snapshot round trip**: loading the live engine's snapshot into a fresh engine
//!   succeeds and writes the same snapshot again.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use koshka_engine::{Appended, ApplyCtx, Direct, Engine, Journal, MemoryJournal, Session};

/// Most operations run per input, to keep executions fast.
pub const OPS_MAX: usize = 48;

/// Base of the log time handed out by [`RecordingJournal`].
const TIME_BASE: u32 = 1_700_000_000;

/// A [`MemoryJournal`] that also keeps every record, with a deterministic log time, so the
/// run can be replayed into a fresh engine.
#[derive(Default)]
pub struct RecordingJournal {
    inner: MemoryJournal,
    appends: AtomicU32,
    records: Mutex<Vec<(u16, Vec<u8>, Appended)>>,
}

impl Journal for RecordingJournal {
    fn append(&self, record_type: u16, payload: &[u8]) -> koshka_engine::Result<Appended> {
        let mut appended = self.inner.append(record_type, payload)?;
        // Time advances every few records, so same-second and later-second paths both run.
        let n = self.appends.fetch_add(1, Ordering::Relaxed);
        appended.time = TIME_BASE + n / 3;
        self.records
            .lock()
            .expect("journal lock")
            .push((record_type, payload.to_vec(), appended));
        Ok(appended)
    }
}

/// One decoded operation.
pub enum Op<'a> {
    Get(&'a [u8]),
    Set(&'a [u8], &'a [u8]),
    Delete(&'a [u8]),
    Incr(&'a [u8], i64),
}

/// Splits the fuzz input into operations.
pub fn decode(data: &[u8]) -> Vec<Op<'_>> {
    data.split(|&b| b == 0)
        .filter(|r| !r.is_empty())
        .take(OPS_MAX)
        .map(|r| {
            let (op, rest) = (r[0], &r[1..]);
            let (key, value) = match rest.iter().position(|&b| b == b' ') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            match op {
                b's' => Op::Set(key, value),
                b'd' => Op::Delete(key),
                b'i' | b'r' => {
                    let delta = std::str::from_utf8(value)
                        .ok()
                        .and_then(|s| s.trim().parse::<i64>().ok())
                        .unwrap_or(value.len() as i64);
                    Op::Incr(key, if op == b'r' { delta.wrapping_neg() } else { delta })
                }
                _ => Op::Get(key),
            }
        })
        .collect()
}

/// Runs `data` against `make()`'s engine and checks the invariants above. `normalize` rewrites
/// a snapshot so that replay may differ from the live engine where the engine's contract
/// allows it (see `keys_friends`: partition positions).
pub fn run<E: Engine>(data: &[u8], make: impl Fn() -> E, normalize: fn(&mut Vec<u8>)) {
    let ops = decode(data);
    if ops.is_empty() {
        return;
    }
    let engine = make();
    let journal = RecordingJournal::default();
    let mut session = Session::default();
    for op in &ops {
        // Results are Ok or Err; either is fine, a panic is the bug.
        match *op {
            Op::Get(key) => {
                let _ = engine.get(key, &mut session);
            }
            Op::Set(key, value) => {
                let _ = engine.set(key, 0, value, &mut session, &journal);
                let _ = engine.get(key, &mut session);
            }
            Op::Delete(key) => {
                let _ = engine.delete(key, &mut session, &journal);
                let _ = engine.get(key, &mut session);
            }
            Op::Incr(key, delta) => {
                let _ = engine.incr(key, delta, &mut session, &journal);
                let _ = engine.get(key, &mut session);
            }
        }
    }
    let _ = engine.stats();

    let mut live = Vec::new();
    engine
        .write_snapshot(&mut live)
        .expect("write_snapshot into a Vec");

    // Replay: the log alone rebuilds the same state.
    let replayed = make();
    let records = journal.records.lock().expect("journal lock");
    for (record_type, payload, appended) in records.iter() {
        let ctx = ApplyCtx {
            pos: appended.pos,
            time: appended.time,
        };
        if let Err(e) = replayed.apply(*record_type, payload, ctx) {
            panic!("replay of record type {record_type:#06x} {payload:?} failed: {e}");
        }
    }
    let mut from_log = Vec::new();
    replayed
        .write_snapshot(&mut from_log)
        .expect("write_snapshot into a Vec");
    let (mut live_n, mut log_n) = (live.clone(), from_log.clone());
    normalize(&mut live_n);
    normalize(&mut log_n);
    assert!(
        live_n == log_n,
        "replaying the {} records gives another state than the live engine: {}",
        records.len(),
        diff(&live_n, &log_n)
    );

    // Snapshot round trip.
    let loaded = make();
    if let Err(e) = loaded.load_snapshot(&mut live.as_slice()) {
        panic!("the engine's own snapshot does not load: {e}");
    }
    let mut again = Vec::new();
    loaded
        .write_snapshot(&mut again)
        .expect("write_snapshot into a Vec");
    assert!(
        live == again,
        "snapshot -> load -> snapshot changed the bytes: {}",
        diff(&live, &again)
    );
}

/// Where two snapshots first differ, with a few bytes of each around it.
fn diff(a: &[u8], b: &[u8]) -> String {
    let at = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
    let lo = at.saturating_sub(8);
    format!(
        "lengths {} vs {}, first difference at byte {at}: {:02x?} vs {:02x?}",
        a.len(),
        b.len(),
        &a[lo..(at + 16).min(a.len())],
        &b[lo..(at + 16).min(b.len())]
    )
}
