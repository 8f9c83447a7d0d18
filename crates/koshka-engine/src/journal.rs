//! Where engines append their records: the [`Journal`] trait, a [`MemoryJournal`] that keeps
//! nothing (durability `none`), and a [`RecordingJournal`] that keeps everything in memory so
//! tests can replay it into a second engine and compare.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::{ApplyCtx, Clock, Engine, Result, SystemClock};

/// Where a record landed in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Log position just past the record. Positions strictly increase; the server waits until
    /// the journal is durable up to this position before acknowledging.
    pub pos: u64,
    /// The log time (unix seconds) in force for this record; apply must use it as "now".
    pub time: u32,
}

/// The append side of an engine's binlog.
pub trait Journal: Send + Sync {
    /// Appends one record of an engine-defined type. The caller must hold the locks of every
    /// partition the record touches, so the log order of records for one partition equals
    /// their apply order.
    ///
    /// # Errors
    /// [`crate::Error::Journal`] if the log is poisoned, the disk is full or the record is
    /// too large. Nothing was logged then, and the caller must not apply the record.
    fn append(&self, record_type: u16, payload: &[u8]) -> Result<Appended>;

    /// The log's "now" for reads (expiry checks), in unix seconds: never behind the time of
    /// a record already appended, so what a write saw as expired stays expired.
    fn now(&self) -> u32 {
        crate::unix_now()
    }
}

/// Bytes of framing a [`MemoryJournal`] counts per record, so positions look like a log's.
const MEMORY_RECORD_OVERHEAD: u64 = 16;

/// A journal that keeps nothing: positions count bytes, time comes from a [`Clock`]. Used
/// with durability `none` and in engine unit tests.
#[derive(Debug)]
pub struct MemoryJournal {
    /// Bumped by every append on every core: kept off the line of `clock`, which every
    /// batch reads.
    pos: crate::Padded<AtomicU64>,
    clock: Arc<dyn Clock>,
}

impl Default for MemoryJournal {
    fn default() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }
}

impl MemoryJournal {
    /// A journal whose time comes from `clock`.
    #[must_use]
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            pos: crate::Padded(AtomicU64::new(0)),
            clock,
        }
    }
}

impl Journal for MemoryJournal {
    fn append(&self, _record_type: u16, payload: &[u8]) -> Result<Appended> {
        let len = payload.len() as u64 + MEMORY_RECORD_OVERHEAD;
        let pos = self.pos.fetch_add(len, Ordering::Relaxed) + len;
        Ok(Appended {
            pos,
            time: self.clock.now(),
        })
    }

    fn now(&self) -> u32 {
        self.clock.now()
    }
}

/// One record kept by a [`RecordingJournal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Engine-defined type.
    pub record_type: u16,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Where it landed.
    pub appended: Appended,
}

/// A journal that keeps every record in memory, for tests: replay them into a fresh engine
/// ([`RecordingJournal::replay_into`]) and compare the two.
#[derive(Debug)]
pub struct RecordingJournal {
    inner: MemoryJournal,
    records: Mutex<Vec<Recorded>>,
}

impl Default for RecordingJournal {
    fn default() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }
}

impl RecordingJournal {
    /// A recording journal whose time comes from `clock`.
    #[must_use]
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: MemoryJournal::with_clock(clock),
            records: Mutex::new(Vec::new()),
        }
    }

    /// A copy of every record so far, in log order.
    #[must_use]
    pub fn records(&self) -> Vec<Recorded> {
        self.records.lock().clone()
    }

    /// Applies every recorded record to `engine` through [`Engine::apply`].
    ///
    /// # Errors
    /// The first error `apply` returns.
    pub fn replay_into(&self, engine: &dyn Engine) -> Result<()> {
        for record in self.records.lock().iter() {
            let ctx = ApplyCtx {
                pos: record.appended.pos,
                time: record.appended.time,
            };
            engine.apply(record.record_type, &record.payload, ctx)?;
        }
        Ok(())
    }
}

impl Journal for RecordingJournal {
    fn append(&self, record_type: u16, payload: &[u8]) -> Result<Appended> {
        // Appends are ordered under the list's lock, so positions follow log order.
        let mut records = self.records.lock();
        let appended = self.inner.append(record_type, payload)?;
        records.push(Recorded {
            record_type,
            payload: payload.to_vec(),
            appended,
        });
        Ok(appended)
    }

    fn now(&self) -> u32 {
        self.inner.now()
    }
}

/// A journal wrapper that remembers the highest position appended through it, so the server
/// knows what to wait for before acknowledging a batch: an engine cannot forget to report a
/// write.
#[derive(Debug)]
pub struct Tracking<'a, J: ?Sized> {
    inner: &'a J,
    max: AtomicU64,
}

impl<'a, J: Journal + ?Sized> Tracking<'a, J> {
    /// Tracks appends to `inner`.
    pub fn new(inner: &'a J) -> Self {
        Self {
            inner,
            max: AtomicU64::new(0),
        }
    }

    /// Highest position appended so far (0 = none).
    #[must_use]
    pub fn written(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }
}

impl<J: Journal + ?Sized> Journal for Tracking<'_, J> {
    fn append(&self, record_type: u16, payload: &[u8]) -> Result<Appended> {
        let appended = self.inner.append(record_type, payload)?;
        self.max.fetch_max(appended.pos, Ordering::Relaxed);
        Ok(appended)
    }

    fn now(&self) -> u32 {
        self.inner.now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;

    #[test]
    fn memory_journal_positions_increase_and_time_comes_from_the_clock() {
        let clock = Arc::new(ManualClock::new(1000));
        let journal = MemoryJournal::with_clock(clock.clone());
        let a = journal.append(1, b"abc").unwrap();
        clock.advance(10);
        let b = journal.append(1, b"").unwrap();
        assert!(b.pos > a.pos);
        assert_eq!((a.time, b.time), (1000, 1010));
        assert_eq!(journal.now(), 1010);
    }

    #[test]
    fn recording_and_tracking() {
        let journal = RecordingJournal::default();
        let tracking = Tracking::new(&journal);
        assert_eq!(tracking.written(), 0);
        let a = tracking.append(3, b"x").unwrap();
        let b = tracking.append(4, b"yz").unwrap();
        assert_eq!(tracking.written(), b.pos);
        let records = journal.records();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].appended, a);
        assert_eq!(records[1].payload, b"yz");
    }
}
