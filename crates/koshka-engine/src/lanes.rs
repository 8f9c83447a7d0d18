//! [`Lanes`]: replay on several threads, for engines whose records each touch one partition.
//!
//! Replay applies the log one record at a time, and for an in-memory engine most of a
//! record's cost is waiting for memory (a hash probe, the item it finds), which one core
//! cannot overlap. Records of different partitions are independent, so an engine that says
//! which partition each record touches ([`crate::Engine::replay_partition`]) can be replayed
//! on several apply threads ("lanes"):
//!
//! ```text
//!                       replay_partition(record) = Some(p)
//!   log reader ──────►  lane p % N  ──► batch ──► apply thread p % N ──► Engine::apply
//!   (one thread,                          (64 KiB, in log order)
//!    decodes, CRCs)     replay_partition(record) = None: a barrier
//!                       ──► wait until every lane is idle ──► Engine::apply on this thread
//! ```
//!
//! Exactness: every partition sees its records in log order (one partition → one lane, and
//! a lane applies its batches in order); a record that touches several partitions or none
//! (a flush, an engine-wide setting) runs only when every record before it has been applied
//! and before any record after it, exactly as in a serial replay. Records of different
//! partitions commute as long as the engine keeps the promise of `replay_partition`: such a
//! record reads and writes only its partition's state, plus engine-wide state that only
//! barriers write and counters whose order does not matter. The final state therefore equals
//! the serial replay's, byte for byte (tested per engine against serial replay).
//!
//! A record that fails to apply stops the replay: the error names the earliest failing record
//! in log order, as a serial replay would (every record before it has been applied or has
//! failed by the time the error is reported). What was applied after it on other lanes does
//! not matter: a failed replay is fatal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{ApplyCtx, Engine, Error};

/// Most apply threads a replay uses, whatever the core count: beyond this the log reader
/// (one thread, ~6 M records/s) is the limit anyway.
pub const REPLAY_THREADS_MAX: usize = 16;

/// Record bytes gathered for one lane before the batch is handed to its thread. Large enough
/// that the hand-off (a channel send, a wake-up) is amortised over hundreds of records, small
/// enough that a lane starts within a fraction of a millisecond.
pub const LANE_BATCH_BYTES: usize = 64 * 1024;

/// Batches in flight per lane (queued or being applied). Bounds the memory a replay holds
/// (`threads × LANE_DEPTH × LANE_BATCH_BYTES`, 1 MiB for 4 threads) and lets the reader run
/// ahead of a lane by this much.
pub const LANE_DEPTH: usize = 4;

/// How long the reader waits for a lane before it checks that the lane's thread still runs.
const LANE_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// A batch buffer that grew past this (one huge record) is dropped after use, not reused.
const LANE_BUFFER_KEEP_BYTES_MAX: usize = 4 * LANE_BATCH_BYTES;

/// Bytes in front of each record in a batch: pos u64, time u32, type u16, payload len u32.
const ENTRY_HEADER_SIZE: usize = 18;

/// The record a replay stopped at.
#[derive(Debug)]
pub struct Failed {
    /// Its type.
    pub record_type: u16,
    /// Its position and time ([`ApplyCtx`]).
    pub ctx: ApplyCtx,
    /// Its payload length (with the position, where the record starts in the log).
    pub payload_len: usize,
    /// Why [`Engine::apply`] refused it.
    pub error: Error,
}

/// A batch handed back by an apply thread.
struct Done {
    lane: usize,
    buf: Vec<u8>,
    failed: Option<Failed>,
}

struct Lane {
    /// Records gathered for the next batch.
    buf: Vec<u8>,
    /// Batches sent and not yet handed back.
    in_flight: usize,
    send: Option<SyncSender<Vec<u8>>>,
    thread: Option<JoinHandle<()>>,
}

/// Applies replayed records to an engine, on apply threads when the engine says which
/// partition each record touches, else on the calling thread. See the module docs.
///
/// Hand records in log order to [`Lanes::apply`], then call [`Lanes::finish`]; only after
/// `finish` returns is every record applied. Dropping a `Lanes` without `finish` stops the
/// threads after they applied what they were given.
pub struct Lanes {
    engine: Arc<dyn Engine>,
    lanes: Vec<Lane>,
    /// Apply threads to start with the first record of a partition (0 once started).
    wanted: usize,
    done_send: Sender<Done>,
    done_recv: Receiver<Done>,
    /// Set by an apply thread whose record failed, so the reader stops early.
    stop: Arc<AtomicBool>,
    /// The earliest failure reported so far.
    failed: Option<Failed>,
    /// Empty batch buffers to reuse.
    spare: Vec<Vec<u8>>,
    /// Records applied on the calling thread because they touch several partitions or none.
    barriers: u64,
    /// A failure was reported: the replay is over.
    over: bool,
}

impl std::fmt::Debug for Lanes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lanes")
            .field("threads", &self.lanes.len())
            .field("barriers", &self.barriers)
            .finish_non_exhaustive()
    }
}

/// The number of apply threads for `requested` (0 = one per core), at most
/// [`REPLAY_THREADS_MAX`]. 1 means a serial replay on the calling thread.
#[must_use]
pub fn replay_threads(requested: usize) -> usize {
    let threads = if requested == 0 {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    } else {
        requested
    };
    threads.clamp(1, REPLAY_THREADS_MAX)
}

impl Lanes {
    /// Applies records to `engine` on up to `threads` apply threads (see [`replay_threads`]).
    /// The threads start with the first record of a partition, so an engine that does not
    /// opt in ([`Engine::replay_partition`]) never gets any; 1, or fewer than two threads
    /// that could be started, means every record is applied on the calling thread.
    #[must_use]
    pub fn new(engine: Arc<dyn Engine>, threads: usize) -> Self {
        let (done_send, done_recv) = mpsc::channel();
        Self {
            engine,
            lanes: Vec::new(),
            wanted: threads.min(REPLAY_THREADS_MAX),
            done_send,
            done_recv,
            stop: Arc::new(AtomicBool::new(false)),
            failed: None,
            spare: Vec::new(),
            barriers: 0,
            over: false,
        }
    }

    /// Starts the apply threads (once).
    fn start(&mut self) {
        let wanted = std::mem::take(&mut self.wanted);
        if wanted < 2 {
            return;
        }
        for index in 0..wanted {
            let (send, recv) = mpsc::sync_channel::<Vec<u8>>(LANE_DEPTH);
            let engine = Arc::clone(&self.engine);
            let (done, stop) = (self.done_send.clone(), Arc::clone(&self.stop));
            let spawned = std::thread::Builder::new()
                .name(format!("replay-{index}"))
                .spawn(move || lane_loop(index, engine.as_ref(), &recv, &done, &stop));
            match spawned {
                Ok(thread) => self.lanes.push(Lane {
                    buf: Vec::new(),
                    in_flight: 0,
                    send: Some(send),
                    thread: Some(thread),
                }),
                // Fewer threads (the caller sees how many in `threads()`): slower, not wrong.
                Err(_) => break,
            }
        }
        if self.lanes.len() < 2 {
            // One lane is a serial replay with an extra hand-off: apply here instead. Its
            // thread ends when its channel closes.
            self.lanes.clear();
        }
    }

    /// Apply threads in use (0: every record so far was applied on the calling thread).
    #[must_use]
    pub fn threads(&self) -> usize {
        self.lanes.len()
    }

    /// Records so far that were applied on the calling thread between two drains of every
    /// lane (they touch several partitions or none) while apply threads ran.
    #[must_use]
    pub fn barriers(&self) -> u64 {
        self.barriers
    }

    /// Applies one record, or queues it for the apply thread of its partition.
    ///
    /// # Errors
    /// The earliest record in log order that failed to apply, this one or one queued before
    /// it. The replay must stop then.
    ///
    /// # Panics
    /// If called again after an error; if an apply thread panicked (with its message).
    pub fn apply(&mut self, record_type: u16, payload: &[u8], ctx: ApplyCtx) -> Result<(), Failed> {
        assert!(!self.over, "Lanes::apply after a failure");
        if self.lanes.is_empty() && self.wanted < 2 {
            // A serial replay (asked for, or the threads could not start).
            return self.apply_here(record_type, payload, ctx);
        }
        if self.stop.load(Ordering::Relaxed) {
            return self.drain();
        }
        let Some(partition) = self.engine.replay_partition(record_type, payload) else {
            if !self.lanes.is_empty() {
                self.barriers += 1;
                self.drain()?;
            }
            return self.apply_here(record_type, payload, ctx);
        };
        if self.wanted > 0 {
            self.start();
            if self.lanes.is_empty() {
                return self.apply_here(record_type, payload, ctx);
            }
        }
        let lane = partition % self.lanes.len();
        push_entry(&mut self.lanes[lane].buf, record_type, payload, ctx);
        if self.lanes[lane].buf.len() >= LANE_BATCH_BYTES {
            self.send(lane);
        }
        Ok(())
    }

    /// Waits until every record handed to [`Lanes::apply`] has been applied.
    ///
    /// # Errors
    /// The earliest record in log order that failed to apply.
    ///
    /// # Panics
    /// If called again after an error; if an apply thread panicked (with its message).
    pub fn finish(&mut self) -> Result<(), Failed> {
        assert!(!self.over, "Lanes::finish after a failure");
        self.drain()
    }

    fn apply_here(
        &mut self,
        record_type: u16,
        payload: &[u8],
        ctx: ApplyCtx,
    ) -> Result<(), Failed> {
        let result = self.engine.apply(record_type, payload, ctx);
        result.map_err(|error| {
            self.over = true;
            Failed {
                record_type,
                ctx,
                payload_len: payload.len(),
                error,
            }
        })
    }

    /// Sends every partial batch and waits until every lane is idle.
    fn drain(&mut self) -> Result<(), Failed> {
        for lane in 0..self.lanes.len() {
            if !self.lanes[lane].buf.is_empty() {
                self.send(lane);
            }
        }
        while self.lanes.iter().any(|lane| lane.in_flight > 0) {
            self.receive();
        }
        match self.failed.take() {
            Some(failed) => {
                self.over = true;
                Err(failed)
            }
            None => Ok(()),
        }
    }

    /// Hands the lane's gathered records to its thread, waiting for a free buffer if every
    /// buffer is in flight.
    fn send(&mut self, lane: usize) {
        while self.lanes[lane].in_flight >= LANE_DEPTH {
            self.receive();
        }
        let fresh = self.spare.pop().unwrap_or_default();
        let batch = std::mem::replace(&mut self.lanes[lane].buf, fresh);
        let Some(send) = &self.lanes[lane].send else {
            unreachable!("lane {lane} sends until dropped")
        };
        if send.send(batch).is_err() {
            self.lane_died(lane);
        }
        self.lanes[lane].in_flight += 1;
    }

    /// Takes one batch back from any lane, keeping the earliest failure.
    fn receive(&mut self) {
        let done = loop {
            match self.done_recv.recv_timeout(LANE_CHECK_INTERVAL) {
                Ok(done) => break done,
                Err(RecvTimeoutError::Timeout) => {
                    // A thread that panicked never hands its batches back.
                    let ended = self
                        .lanes
                        .iter()
                        .position(|lane| lane.thread.as_ref().is_none_or(JoinHandle::is_finished));
                    if let Some(lane) = ended {
                        self.lane_died(lane);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    unreachable!("Lanes holds a sender of its own channel")
                }
            }
        };
        let lane = &mut self.lanes[done.lane];
        lane.in_flight -= 1;
        if let Some(failed) = done.failed {
            if self
                .failed
                .as_ref()
                .is_none_or(|earliest| failed.ctx.pos < earliest.ctx.pos)
            {
                self.failed = Some(failed);
            }
        }
        let mut buf = done.buf;
        if buf.capacity() <= LANE_BUFFER_KEEP_BYTES_MAX {
            buf.clear();
            self.spare.push(buf);
        }
    }

    /// An apply thread ended while it still had work: it panicked (a broken engine
    /// invariant). Panics here with its message.
    fn lane_died(&mut self, lane: usize) -> ! {
        self.lanes[lane].send = None;
        match self.lanes[lane].thread.take().map(JoinHandle::join) {
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            _ => panic!("replay apply thread {lane} ended early"),
        }
    }
}

impl Drop for Lanes {
    fn drop(&mut self) {
        for lane in &mut self.lanes {
            lane.send = None;
        }
        // Keep the channel alive until every thread is gone (they may still hand back).
        let _keep = &self.done_send;
        for lane in &mut self.lanes {
            if let Some(thread) = lane.thread.take() {
                if let Err(panic) = thread.join() {
                    if !std::thread::panicking() {
                        std::panic::resume_unwind(panic);
                    }
                }
            }
        }
    }
}

fn push_entry(buf: &mut Vec<u8>, record_type: u16, payload: &[u8], ctx: ApplyCtx) {
    buf.reserve(ENTRY_HEADER_SIZE + payload.len());
    buf.extend_from_slice(&ctx.pos.to_le_bytes());
    buf.extend_from_slice(&ctx.time.to_le_bytes());
    buf.extend_from_slice(&record_type.to_le_bytes());
    // NOTE: a record payload is at most BINLOG_RECORD_SIZE_MAX (128 MiB), far below u32::MAX.
    #[expect(clippy::cast_possible_truncation)]
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(payload);
}

/// One record of a batch: (type, payload, ctx) and the rest of the batch.
fn next_entry(batch: &[u8]) -> Option<(u16, &[u8], ApplyCtx, &[u8])> {
    let (header, rest) = batch.split_at_checked(ENTRY_HEADER_SIZE)?;
    let u32_at = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let mut pos = [0u8; 8];
    pos.copy_from_slice(&header[..8]);
    let ctx = ApplyCtx {
        pos: u64::from_le_bytes(pos),
        time: u32_at(8),
    };
    let record_type = u16::from_le_bytes([header[12], header[13]]);
    let (payload, rest) = rest.split_at(u32_at(14) as usize);
    Some((record_type, payload, ctx, rest))
}

/// An apply thread: applies each batch in order and hands the buffer back. After a failure
/// it applies nothing more (the replay is stopping) but still hands buffers back.
fn lane_loop(
    lane: usize,
    engine: &dyn Engine,
    recv: &Receiver<Vec<u8>>,
    done: &Sender<Done>,
    stop: &AtomicBool,
) {
    let mut stopped = false;
    while let Ok(buf) = recv.recv() {
        let mut failed = None;
        let mut rest = buf.as_slice();
        while let (false, Some((record_type, payload, ctx, tail))) = (stopped, next_entry(rest)) {
            rest = tail;
            if let Err(error) = engine.apply(record_type, payload, ctx) {
                failed = Some(Failed {
                    record_type,
                    ctx,
                    payload_len: payload.len(),
                    error,
                });
                stopped = true;
                stop.store(true, Ordering::Relaxed);
            }
        }
        if done.send(Done { lane, buf, failed }).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
