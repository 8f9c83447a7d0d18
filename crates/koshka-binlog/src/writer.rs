//! The append side: [`Binlog`], a [`Journal`] backed by segment files.
//!
//! # Threads
//! ```text
//!  engine threads ──append──► [ Pending: buf, end, chain, time, reservation ]  (short mutex,
//!        │                          │ swap buffers                               no syscall)
//!        │ reservation used up      ▼
//!        └──► ledger: fallocate  writer thread: write(2) (+ rotation) ; Always: fdatasync
//!             (rare; see space)     │ publishes written / durable
//!                                   ▼
//!          wait_acked(pos) ◄── tokio watch + condvar      syncer thread (EverySec):
//!                                                         fdatasync once a second
//! ```
//! An append encodes the record header (CRCs) before taking the mutex, then copies header and
//! payload into the shared buffer. It wakes the writer only when the writer is parked, so a
//! busy log costs appenders no syscalls. The writer swaps the whole buffer out, so every
//! write(2) and every fdatasync covers all records appended meanwhile (group commit).
//!
//! Rotation is decided by the appender (it knows record boundaries) and carried out by the
//! writer: the old segment is fdatasynced, the new one is created with its header (from the
//! spare file, see [`crate::space`]), fdatasynced and the directory fsynced, before any record
//! goes into it.
//!
//! # Disk space
//! An append is admitted only into disk space reserved ahead of it ([`crate::space`]). When
//! the disk is full the append fails with [`koshka_engine::Error::Journal`] ("disk full: …")
//! *before* the engine applies anything; nothing is poisoned, reads go on, and the next append
//! tries again, so writes resume by themselves once space is freed. Refusals are counted
//! ([`BinlogStats::disk_full_refusals`]); a line is logged when refusing starts and stops.
//!
//! # Poisoning
//! After a failed write(2) or fdatasync the log is *poisoned*: every later append fails with
//! [`koshka_engine::Error::Journal`], waiters are woken with an error, and an error line is
//! logged. Nothing is retried: the state of the file after a failed fsync is unknown, and the
//! records a failed write(2) carried are already visible in memory. With reservations a
//! write(2) does not fail for lack of space, except on a file system without `fallocate`
//! (see [`crate::space`]).
//!
//! # Lock order
//! The shared state has five mutexes. A thread takes them only in this order (lower rank
//! first); debug builds check it on every lock ([`crate::ordered`]):
//!
//! | rank | mutex | guards | held across syscalls |
//! |---|---|---|---|
//! | 1 | `batch` | the buffer being written; whoever holds it writes (writer thread, or an EverySec waiter inline) | yes: write(2), rotation |
//! | 2 | `ledger` | disk-space reservations and the spare file | yes: fallocate, statvfs |
//! | 3 | `pending` | appended bytes, end/chain/time, rotations, the appenders' reservation, `closing`; condvars `wake` (writer parks), `drained` (appenders wait for buffer room), `stop` (syncer sleeps) | never |
//! | 4 | `sync_target` | the file fdatasync applies to, and how much of it is written | no |
//! | 5 | `progress` | nothing; condvar `progress_cv` for blocking waiters | no |
//!
//! Everything else is atomic: positions (`written`, `durable`, `flush_to`), flags
//! (`writer_parked`), counters, the poison reason (set once), the disk-full state, and the
//! tokio watch channel of the acknowledged position.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use koshka_engine::{Appended, Clock, Journal, ShardSpec, SystemClock};
use parking_lot::Condvar;

use crate::clock::LogClock;
use crate::end::LogEnd;
use crate::error::{Error, IoContext, Result};
use crate::format::{
    chain_next, check_engine_name, is_reserved, segment_file_name, FileHeader, RecordHeader,
    RECORD_HEADER_SIZE, RECORD_PAYLOAD_MAX, RECORD_TYPE_TIME, SEGMENT_HEADER_SIZE, SEGMENT_MAGIC,
    TIME_RECORD_SIZE,
};
use crate::fsutil::sync_dir;
use crate::ordered::{Ordered, OrderedGuard};
use crate::space::{Answer, DiskFull, Ledger, Need, NextGrant};

/// Most bytes appended but not yet handed to write(2). An append that finds the buffer this
/// full blocks until the writer drains it (back-pressure when the disk stalls), so memory
/// stays bounded.
pub const BUFFER_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Capacity the writer keeps for its spare buffer; a buffer grown past four times this by a
/// burst is shrunk back after it is written.
pub const BUFFER_BYTES_TYPICAL: usize = 1024 * 1024;

/// Longest time appended bytes wait in memory before the writer hands them to write(2) when
/// nobody waits for them. Waiters ([`Binlog::wait_acked`]) make the writer write at once, so
/// this bounds only the lag of unacknowledged (`noreply`) appends, and lets a stream of
/// appends cost no syscall each.
pub const WRITE_INTERVAL: Duration = Duration::from_millis(5);

/// Buffered bytes that make the writer write without waiting for [`WRITE_INTERVAL`].
pub const WRITE_EAGER_BYTES: usize = 256 * 1024;

/// Longest time between fdatasyncs in [`Durability::EverySec`] mode while data is unsynced.
pub const FSYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Smallest segment size accepted, so a segment always holds its header and some records.
pub const SEGMENT_SIZE_MIN: u64 = 4096;

/// Longest a blocking waiter sleeps before it looks at the log again even without a wake-up
/// (a safety net: every state change notifies).
const WAIT_POLL: Duration = Duration::from_millis(100);

const _: () = assert!(BUFFER_BYTES_TYPICAL * 4 <= BUFFER_BYTES_MAX);
const _: () = assert!(WRITE_EAGER_BYTES < BUFFER_BYTES_MAX);
const _: () = assert!(SEGMENT_SIZE_MIN > SEGMENT_HEADER_SIZE as u64);

const RANK_BATCH: u8 = 1;
const RANK_LEDGER: u8 = 2;
const RANK_PENDING: u8 = 3;
const RANK_SYNC_TARGET: u8 = 4;
const RANK_PROGRESS: u8 = 5;
const RANK_THREADS: u8 = 6;

/// When an append is acknowledged and what it survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Ack after fdatasync (group commit). Survives power loss.
    Always,
    /// Ack after write(2); fdatasync at least once a second. Survives `kill -9`; power loss
    /// may lose the last second.
    #[default]
    EverySec,
    /// No log at all (cache use): nothing survives a restart.
    None,
}

impl std::str::FromStr for Durability {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "always" => Ok(Self::Always),
            "everysec" => Ok(Self::EverySec),
            "none" => Ok(Self::None),
            _ => Err(Error::Config(format!(
                "durability {s:?}: expected always, everysec or none"
            ))),
        }
    }
}

/// Settings of a [`Binlog`] writer.
#[derive(Debug, Clone)]
pub struct BinlogConfig {
    /// Directory of the segment files.
    pub dir: PathBuf,
    /// Engine name (file names and headers).
    pub engine: String,
    /// Shard recorded in the headers.
    pub shard: ShardSpec,
    /// [`Durability::Always`] or [`Durability::EverySec`].
    pub durability: Durability,
    /// Segment size that triggers rotation ([`koshka_limits::Limits::binlog_segment_size`]).
    pub segment_size: u64,
    /// Wall-clock and monotonic time source of the log clock ([`LogClock`]); tests inject a
    /// [`koshka_engine::ManualClock`].
    pub clock: Arc<dyn Clock>,
}

impl BinlogConfig {
    /// Settings for `engine` in `dir`: shard 0 of 1, the system clock.
    #[must_use]
    pub fn new(
        dir: impl Into<PathBuf>,
        engine: &str,
        durability: Durability,
        segment_size: u64,
    ) -> Self {
        Self {
            dir: dir.into(),
            engine: engine.to_string(),
            shard: ShardSpec::default(),
            durability,
            segment_size,
            clock: Arc::new(SystemClock),
        }
    }
}

struct Rotation {
    pos: u64,
    chain: u32,
    time: u32,
    /// Create the segment from the spare file (its space is reserved).
    spare: bool,
}

struct Pending {
    buf: Vec<u8>,
    end: u64,
    chain: u32,
    time: u32,
    seg_start: u64,
    rotations: Vec<Rotation>,
    closing: bool,
    /// Log position up to which the segment starting at `seg_start` has space.
    reserved_end: u64,
    /// Space granted for the next segment, taken by the next rotation.
    next_segment: Option<NextGrant>,
}

struct SyncTarget {
    file: Arc<File>,
    path: PathBuf,
    written: u64,
}

struct Shared {
    cfg: BinlogConfig,
    clock: LogClock,
    /// Rank 1: the buffer being written, and the lock that orders writes: whoever holds it
    /// (the writer thread, or a waiter writing inline) swaps `pending.buf` out and writes it.
    batch: Ordered<Vec<u8>>,
    /// Rank 2: disk-space reservations.
    ledger: Ordered<Ledger>,
    /// Rank 3: the appenders' state.
    pending: Ordered<Pending>,
    /// The writer parks here (with `pending`).
    wake: Condvar,
    /// Appenders wait here for buffer room (with `pending`).
    drained: Condvar,
    /// The syncer sleeps here between fdatasyncs (with `pending`; woken by close).
    stop: Condvar,
    /// Rank 4: what fdatasync applies to.
    sync_target: Ordered<SyncTarget>,
    /// Rank 5, with `progress_cv`: blocking waiters.
    progress: Ordered<()>,
    progress_cv: Condvar,
    /// Highest position some waiter needs written; the writer writes at once below it.
    flush_to: AtomicU64,
    /// The writer is parked on `wake` (set and cleared under the `pending` mutex).
    writer_parked: AtomicBool,
    written: AtomicU64,
    durable: AtomicU64,
    fsyncs: AtomicU64,
    /// Why the log is poisoned; set once.
    poison: OnceLock<String>,
    disk_full: DiskFull,
    acked_tx: tokio::sync::watch::Sender<u64>,
}

/// An engine's binlog writer. Implements [`Journal`]; see the module docs.
pub struct Binlog {
    shared: Arc<Shared>,
    threads: Ordered<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Binlog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binlog")
            .field("engine", &self.shared.cfg.engine)
            .field("written", &self.written())
            .finish_non_exhaustive()
    }
}

/// Counters of a [`Binlog`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BinlogStats {
    /// Position just past the last appended record.
    pub position: u64,
    /// Position up to which bytes were handed to write(2).
    pub written: u64,
    /// Position up to which bytes were fdatasynced.
    pub durable: u64,
    /// fdatasync calls.
    pub fsyncs: u64,
    /// Whether the log refuses writes after an I/O failure.
    pub poisoned: bool,
    /// Whether the last append was refused for lack of disk space.
    pub disk_full: bool,
    /// Appends refused for lack of disk space since open.
    pub disk_full_refusals: u64,
}

impl Binlog {
    /// Recovers the log in `cfg.dir` (cutting a torn tail) and opens it for appending.
    /// The host uses [`crate::recover`] and [`Binlog::open_at`] instead, to replay records.
    ///
    /// # Errors
    /// Corruption, I/O errors, invalid configuration.
    pub fn open(cfg: BinlogConfig) -> Result<Self> {
        std::fs::create_dir_all(&cfg.dir).ctx(&cfg.dir)?;
        let opts = crate::ReadOptions {
            shard: Some(cfg.shard),
            ..Default::default()
        };
        let outcome =
            crate::recover::replay(&cfg.dir, &cfg.engine, None, opts, &mut |_| Ok(()), None)?;
        Self::open_at(cfg, outcome.end)
    }

    /// Opens a writer that continues the log at `end` (as returned by recovery). The log
    /// clock continues from `end.time` ([`LogClock`]). Reserves disk space ahead (best
    /// effort: a full disk refuses appends later, it does not fail the open).
    ///
    /// # Errors
    /// I/O errors, invalid configuration.
    pub fn open_at(cfg: BinlogConfig, end: LogEnd) -> Result<Self> {
        check_config(&cfg)?;
        let clock = LogClock::new(Arc::clone(&cfg.clock), end.time);
        let (file, path, seg_start) = match &end.segment {
            Some((path, start)) => {
                let file = OpenOptions::new().append(true).open(path).ctx(path)?;
                (file, path.clone(), *start)
            }
            None => {
                let header = segment_header(&cfg, end.pos, end.chain, end.time);
                let (file, path) = create_segment(&cfg, &header)?;
                (file, path, end.pos)
            }
        };
        let file = Arc::new(file);
        let ledger = Ledger::new(
            &cfg.dir,
            &cfg.engine,
            cfg.segment_size,
            seg_start,
            Arc::clone(&file),
            end.pos,
        );
        let (acked_tx, _) = tokio::sync::watch::channel(end.pos);
        let shared = Arc::new(Shared {
            pending: Ordered::new(
                RANK_PENDING,
                "pending",
                Pending {
                    buf: Vec::with_capacity(BUFFER_BYTES_TYPICAL),
                    end: end.pos,
                    chain: end.chain,
                    time: end.time,
                    seg_start,
                    rotations: Vec::new(),
                    closing: false,
                    reserved_end: ledger.reserved_end(),
                    next_segment: None,
                },
            ),
            batch: Ordered::new(
                RANK_BATCH,
                "batch",
                Vec::with_capacity(BUFFER_BYTES_TYPICAL),
            ),
            ledger: Ordered::new(RANK_LEDGER, "ledger", ledger),
            wake: Condvar::new(),
            drained: Condvar::new(),
            stop: Condvar::new(),
            sync_target: Ordered::new(
                RANK_SYNC_TARGET,
                "sync_target",
                SyncTarget {
                    file,
                    path,
                    written: end.pos,
                },
            ),
            progress: Ordered::new(RANK_PROGRESS, "progress", ()),
            progress_cv: Condvar::new(),
            flush_to: AtomicU64::new(0),
            writer_parked: AtomicBool::new(false),
            written: AtomicU64::new(end.pos),
            durable: AtomicU64::new(end.pos),
            fsyncs: AtomicU64::new(0),
            poison: OnceLock::new(),
            disk_full: DiskFull::default(),
            acked_tx,
            clock,
            cfg,
        });
        let threads = start_threads(&shared)?;
        Ok(Self {
            shared,
            threads: Ordered::new(RANK_THREADS, "threads", threads),
        })
    }

    /// Position just past the last appended record, with the chain value and time there.
    /// Every record appended later has a greater position.
    #[must_use]
    pub fn mark(&self) -> (u64, u32, u32) {
        let p = self.shared.pending.lock();
        (p.end, p.chain, p.time)
    }

    /// Position up to which the log was handed to write(2).
    #[must_use]
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Acquire)
    }

    /// Position up to which the log is fdatasynced.
    #[must_use]
    pub fn durable(&self) -> u64 {
        self.shared.durable.load(Ordering::Acquire)
    }

    /// Position up to which appends are acknowledged under the configured durability.
    #[must_use]
    pub fn acked(&self) -> u64 {
        acked(&self.shared)
    }

    /// Whether the log refuses writes after an I/O failure.
    #[must_use]
    pub fn is_poisoned(&self) -> bool {
        self.shared.poison.get().is_some()
    }

    /// The log clock (also [`Journal::now`]).
    #[must_use]
    pub fn clock(&self) -> &LogClock {
        &self.shared.clock
    }

    /// Counters for `stats`.
    #[must_use]
    pub fn stats(&self) -> BinlogStats {
        BinlogStats {
            position: self.shared.pending.lock().end,
            written: self.written(),
            durable: self.durable(),
            fsyncs: self.shared.fsyncs.load(Ordering::Relaxed),
            poisoned: self.is_poisoned(),
            disk_full: self.shared.disk_full.refusing(),
            disk_full_refusals: self.shared.disk_full.refusals(),
        }
    }

    /// Resolves once `pos` is acknowledged: written (EverySec) or fdatasynced (Always).
    ///
    /// # Errors
    /// [`koshka_engine::Error::Journal`] if the log is poisoned before `pos` is acknowledged.
    pub async fn wait_acked(&self, pos: u64) -> koshka_engine::Result<()> {
        if acked(&self.shared) >= pos {
            return Ok(());
        }
        if write_inline(&self.shared, pos) && acked(&self.shared) >= pos {
            return Ok(());
        }
        request_flush(&self.shared, pos);
        let mut rx = self.shared.acked_tx.subscribe();
        loop {
            if *rx.borrow_and_update() >= pos {
                return Ok(());
            }
            if let Some(reason) = self.shared.poison.get() {
                return Err(koshka_engine::Error::Journal(reason.clone()));
            }
            if rx.changed().await.is_err() {
                return Err(koshka_engine::Error::Journal("binlog closed".into()));
            }
        }
    }

    /// Blocking form of [`Binlog::wait_acked`], for threads outside an async runtime.
    ///
    /// # Errors
    /// As [`Binlog::wait_acked`].
    pub fn wait_acked_blocking(&self, pos: u64) -> koshka_engine::Result<()> {
        if acked(&self.shared) >= pos {
            return Ok(());
        }
        request_flush(&self.shared, pos);
        wait_until(&self.shared, pos, || acked(&self.shared))
    }

    /// Waits until more than `pos` has been handed to write(2), the log is poisoned, or
    /// `timeout` passes; returns the written position then. Replication senders use it to
    /// ship new bytes as soon as they are in the file.
    #[must_use]
    pub fn wait_written_past(&self, pos: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut guard = self.shared.progress.lock();
        loop {
            let written = self.written();
            if written > pos || self.is_poisoned() {
                return written;
            }
            let now = Instant::now();
            if now >= deadline {
                return written;
            }
            self.shared
                .progress_cv
                .wait_for(guard.inner(), (deadline - now).min(WAIT_POLL));
        }
    }

    /// Writes and fdatasyncs everything appended so far, returning the durable position.
    ///
    /// # Errors
    /// [`Error::Poisoned`] or the fsync failure.
    pub fn sync(&self) -> Result<u64> {
        let target = self.shared.pending.lock().end;
        request_flush(&self.shared, target);
        wait_until(&self.shared, target, || self.written())
            .map_err(|e| Error::Poisoned(e.to_string()))?;
        sync_once(&self.shared)?;
        Ok(self.durable())
    }

    /// Stops accepting appends, writes and fdatasyncs the rest, stops the threads, deletes
    /// the spare file. Idempotent.
    ///
    /// # Errors
    /// [`Error::Poisoned`] if a write or fsync failed at any time.
    pub fn close(&self) -> Result<()> {
        {
            let mut p = self.shared.pending.lock();
            p.closing = true;
            self.shared.wake.notify_all();
            self.shared.drained.notify_all();
            self.shared.stop.notify_all();
        }
        let threads: Vec<_> = std::mem::take(&mut *self.threads.lock());
        let joined = !threads.is_empty();
        for t in threads {
            if t.join().is_err() {
                poison(&self.shared, "binlog thread panicked".into());
            }
        }
        if joined {
            self.shared.ledger.lock().remove_spare();
        }
        if let Some(reason) = self.shared.poison.get() {
            return Err(Error::Poisoned(reason.clone()));
        }
        Ok(())
    }
}

impl Drop for Binlog {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!("binlog {}: close on drop: {e}", self.shared.cfg.engine);
        }
    }
}

impl Journal for Binlog {
    fn append(&self, record_type: u16, payload: &[u8]) -> koshka_engine::Result<Appended> {
        if is_reserved(record_type) {
            return Err(koshka_engine::Error::Journal(format!(
                "record type {record_type:#06x} is reserved for the binlog"
            )));
        }
        if payload.len() > RECORD_PAYLOAD_MAX {
            return Err(koshka_engine::Error::Journal(format!(
                "record of {} bytes exceeds {RECORD_PAYLOAD_MAX}",
                payload.len()
            )));
        }
        let header = RecordHeader::new(record_type, payload);
        let encoded = header.encode();
        let shared = &*self.shared;
        loop {
            let now = shared.clock.now();
            let mut p = shared.pending.lock();
            wait_for_room(shared, &mut p)?;
            let time_len = if now > p.time { TIME_RECORD_SIZE } else { 0 };
            let total = (RECORD_HEADER_SIZE + payload.len() + time_len) as u64;
            if let Some(need) = admit(shared, &mut p, total) {
                drop(p);
                reserve(shared, need)?;
                continue;
            }
            if time_len > 0 {
                let time_payload = now.to_le_bytes();
                let th = RecordHeader::new(RECORD_TYPE_TIME, &time_payload);
                p.buf.extend_from_slice(&th.encode());
                p.buf.extend_from_slice(&time_payload);
                p.end += TIME_RECORD_SIZE as u64;
                p.chain = chain_next(p.chain, th.crc);
                p.time = now;
            }
            p.buf.extend_from_slice(&encoded);
            p.buf.extend_from_slice(payload);
            p.end += (RECORD_HEADER_SIZE + payload.len()) as u64;
            p.chain = chain_next(p.chain, header.crc);
            debug_assert!(p.end <= p.reserved_end, "admitted past the reservation");
            let appended = Appended {
                pos: p.end,
                time: p.time,
            };
            // Wake the writer once, when the buffer crosses the eager threshold.
            let len = usize::try_from(total).unwrap_or(usize::MAX);
            let eager = p.buf.len() >= WRITE_EAGER_BYTES && p.buf.len() - len < WRITE_EAGER_BYTES;
            drop(p);
            if eager && shared.writer_parked.load(Ordering::SeqCst) {
                shared.wake.notify_one();
            }
            shared.disk_full.admitted(&shared.cfg.engine);
            return Ok(appended);
        }
    }

    fn now(&self) -> u32 {
        self.shared.clock.now()
    }
}

impl Binlog {
    /// Records the log clock in the log when it has moved past the last recorded time, even
    /// if nothing else is written: the host calls this about once a second, so a restart
    /// resumes the log clock from at most a second before the stop, however long the log was
    /// idle (an item that had expired stays expired even if the wall clock went back). Does
    /// nothing when the log is poisoned, closing, or out of reserved space (a later append
    /// records the time anyway).
    pub fn mark_time(&self) {
        let shared = &*self.shared;
        let now = shared.clock.now();
        let mut p = shared.pending.lock();
        if now <= p.time
            || p.closing
            || shared.poison.get().is_some()
            || p.buf.len() >= BUFFER_BYTES_MAX
            || admit(shared, &mut p, TIME_RECORD_SIZE as u64).is_some()
        {
            return;
        }
        let time_payload = now.to_le_bytes();
        let th = RecordHeader::new(RECORD_TYPE_TIME, &time_payload);
        p.buf.extend_from_slice(&th.encode());
        p.buf.extend_from_slice(&time_payload);
        p.end += TIME_RECORD_SIZE as u64;
        p.chain = chain_next(p.chain, th.crc);
        p.time = now;
        drop(p);
        // An idle writer parks without a deadline: wake it so the record reaches the file.
        if shared.writer_parked.load(Ordering::SeqCst) {
            shared.wake.notify_one();
        }
    }
}

/// Waits (under `pending`) until the buffer has room; fails when the log is poisoned or
/// closing.
fn wait_for_room(shared: &Shared, p: &mut OrderedGuard<'_, Pending>) -> koshka_engine::Result<()> {
    loop {
        if let Some(reason) = shared.poison.get() {
            return Err(koshka_engine::Error::Journal(reason.clone()));
        }
        if p.closing {
            return Err(koshka_engine::Error::Journal("binlog closed".into()));
        }
        if p.buf.len() < BUFFER_BYTES_MAX {
            return Ok(());
        }
        shared.drained.wait(p.inner());
    }
}

/// Decides (under `pending`) whether `total` more bytes fit: rotates first when they would
/// pass the segment size and the next segment has space granted. `Some(need)`: space must be
/// reserved first.
fn admit(shared: &Shared, p: &mut Pending, total: u64) -> Option<Need> {
    if p.end > p.seg_start && p.end - p.seg_start + total > shared.cfg.segment_size {
        let Some(grant) = p.next_segment.take() else {
            return Some(Need::Rotation { after: p.seg_start });
        };
        let rotation = Rotation {
            pos: p.end,
            chain: p.chain,
            time: p.time,
            spare: grant.spare,
        };
        p.rotations.push(rotation);
        p.seg_start = p.end;
        p.reserved_end = p.end + grant.len;
    }
    (p.end + total > p.reserved_end).then_some(Need::Extend {
        seg: p.seg_start,
        from: p.reserved_end,
        end: p.end + total,
    })
}

/// The appender's slow path: asks the ledger for space (outside `pending`), records the
/// grant, or waits for the writer, or refuses the append.
fn reserve(shared: &Shared, need: Need) -> koshka_engine::Result<()> {
    let mut ledger = shared.ledger.lock();
    match ledger.answer(need) {
        Answer::Extended { seg, end } => {
            let mut p = shared.pending.lock();
            if p.seg_start == seg {
                p.reserved_end = p.reserved_end.max(end);
            }
            Ok(())
        }
        Answer::Next(grant) => {
            let mut p = shared.pending.lock();
            match p.next_segment {
                Some(old) if old.spare => {
                    assert!(!grant.spare, "the spare was granted twice");
                }
                _ => p.next_segment = Some(grant),
            }
            Ok(())
        }
        Answer::WaitFor(pos) => {
            drop(ledger);
            request_flush(shared, pos);
            wait_until(shared, pos, || shared.written.load(Ordering::Acquire))
        }
        Answer::Refused(refusal) => {
            drop(ledger);
            let engine = &shared.cfg.engine;
            if refusal.full {
                shared.disk_full.refused(engine, &refusal.reason);
                Err(koshka_engine::Error::Journal(format!(
                    "disk full: {}",
                    refusal.reason
                )))
            } else {
                Err(koshka_engine::Error::Journal(format!(
                    "cannot reserve disk space: {}",
                    refusal.reason
                )))
            }
        }
    }
}

fn check_config(cfg: &BinlogConfig) -> Result<()> {
    check_engine_name(&cfg.engine).map_err(Error::Config)?;
    if cfg.durability == Durability::None {
        return Err(Error::Config("a Binlog cannot have durability none".into()));
    }
    if cfg.segment_size > koshka_limits::BINLOG_SEGMENT_SIZE_MAX {
        return Err(Error::Config(format!(
            "segment size {} exceeds the ceiling {}",
            cfg.segment_size,
            koshka_limits::BINLOG_SEGMENT_SIZE_MAX
        )));
    }
    if cfg.segment_size < SEGMENT_SIZE_MIN {
        return Err(Error::Config(format!(
            "segment size {} is below the minimum {SEGMENT_SIZE_MIN}",
            cfg.segment_size
        )));
    }
    Ok(())
}

fn start_threads(shared: &Arc<Shared>) -> Result<Vec<JoinHandle<()>>> {
    let mut threads = Vec::new();
    let s = Arc::clone(shared);
    threads.push(
        std::thread::Builder::new()
            .name(format!("binlog-w-{}", shared.cfg.engine))
            .spawn(move || writer_loop(&s))
            .map_err(|e| Error::io("<thread>", e))?,
    );
    if shared.cfg.durability == Durability::EverySec {
        let s = Arc::clone(shared);
        threads.push(
            std::thread::Builder::new()
                .name(format!("binlog-s-{}", shared.cfg.engine))
                .spawn(move || syncer_loop(&s))
                .map_err(|e| Error::io("<thread>", e))?,
        );
    }
    Ok(threads)
}

/// Asks the writer to write up to `pos` now. Lost-wakeup free: the writer re-checks
/// `flush_to` after setting `writer_parked` under the mutex, and this side notifies under the
/// same mutex.
fn request_flush(shared: &Shared, pos: u64) {
    shared.flush_to.fetch_max(pos, Ordering::SeqCst);
    if shared.writer_parked.load(Ordering::SeqCst) {
        let _p = shared.pending.lock();
        shared.wake.notify_one();
    }
}

fn acked(shared: &Shared) -> u64 {
    if shared.cfg.durability == Durability::Always {
        shared.durable.load(Ordering::Acquire)
    } else {
        shared.written.load(Ordering::Acquire)
    }
}

fn wait_until(shared: &Shared, pos: u64, value: impl Fn() -> u64) -> koshka_engine::Result<()> {
    let mut guard = shared.progress.lock();
    loop {
        if value() >= pos {
            return Ok(());
        }
        if let Some(reason) = shared.poison.get() {
            return Err(koshka_engine::Error::Journal(format!(
                "binlog poisoned: {reason}"
            )));
        }
        shared.progress_cv.wait_for(guard.inner(), WAIT_POLL);
    }
}

fn publish(shared: &Shared) {
    shared.acked_tx.send_replace(acked(shared));
    let _guard = shared.progress.lock();
    shared.progress_cv.notify_all();
}

fn poison(shared: &Shared, reason: String) {
    let first = shared.poison.set(reason).is_ok();
    if first {
        tracing::error!(
            engine = %shared.cfg.engine,
            "binlog poisoned, refusing all further writes: {}",
            shared.poison.get().map_or("", String::as_str)
        );
    }
    {
        // Taking the lock orders the flag before any appender's wait.
        let _p = shared.pending.lock();
    }
    shared.drained.notify_all();
    publish(shared);
}

fn segment_header(cfg: &BinlogConfig, pos: u64, chain: u32, time: u32) -> FileHeader {
    FileHeader {
        engine: cfg.engine.clone(),
        shard: cfg.shard,
        pos,
        chain,
        time,
        created: cfg.clock.now(),
    }
}

/// Creates a segment file with `header` (no spare file): create, header, fdatasync, fsync
/// of the directory.
fn create_segment(cfg: &BinlogConfig, header: &FileHeader) -> Result<(File, PathBuf)> {
    let path = cfg.dir.join(segment_file_name(&cfg.engine, header.pos));
    let file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&path)
        .ctx(&path)?;
    finish_segment(cfg, &file, &path, header)?;
    Ok((file, path))
}

/// Writes a new segment's header and makes the file and its name durable.
fn finish_segment(cfg: &BinlogConfig, file: &File, path: &Path, header: &FileHeader) -> Result<()> {
    let mut w = file;
    w.write_all(&header.encode(SEGMENT_MAGIC)).ctx(path)?;
    file.sync_data().ctx(path)?;
    sync_dir(&cfg.dir)
}

/// Carries out a rotation: the new segment comes from the spare file when the rotation was
/// granted it (a hard link to the segment name, so an existing file is never replaced, then
/// the spare name is removed), else it is created. Returns the file, its path and the log
/// position up to which it has space.
fn open_next_segment(shared: &Shared, r: &Rotation) -> Result<(File, PathBuf, u64)> {
    let cfg = &shared.cfg;
    let header = segment_header(cfg, r.pos, r.chain, r.time);
    if r.spare {
        let path = cfg.dir.join(segment_file_name(&cfg.engine, r.pos));
        let spare = {
            // The spare's name is free again only once the ledger lets go: an appender may
            // be about to create the next spare.
            let mut ledger = shared.ledger.lock();
            let spare = ledger.take_spare();
            std::fs::hard_link(&spare.path, &path).ctx(&path)?;
            std::fs::remove_file(&spare.path).ctx(&spare.path)?;
            spare
        };
        finish_segment(cfg, &spare.file, &path, &header)?;
        return Ok((spare.file, path, r.pos + spare.len));
    }
    let path = cfg.dir.join(segment_file_name(&cfg.engine, r.pos));
    let file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&path)
        .ctx(&path)?;
    let reserved = shared.ledger.lock().preallocate(&file);
    finish_segment(cfg, &file, &path, &header)?;
    Ok((file, path, r.pos + reserved))
}

/// fdatasyncs the current segment up to the written position.
fn sync_once(shared: &Shared) -> Result<()> {
    let (file, path, written) = {
        let t = shared.sync_target.lock();
        (Arc::clone(&t.file), t.path.clone(), t.written)
    };
    if written <= shared.durable.load(Ordering::Acquire) {
        return Ok(());
    }
    if let Err(e) = file.sync_data() {
        let err = Error::io(&path, e);
        poison(shared, format!("fdatasync failed: {err}"));
        return Err(err);
    }
    shared.fsyncs.fetch_add(1, Ordering::Relaxed);
    shared.durable.fetch_max(written, Ordering::AcqRel);
    publish(shared);
    Ok(())
}

fn syncer_loop(shared: &Shared) {
    loop {
        let deadline = Instant::now() + FSYNC_INTERVAL;
        let stopping = {
            let mut p = shared.pending.lock();
            while !p.closing && Instant::now() < deadline {
                shared.stop.wait_until(p.inner(), deadline);
            }
            p.closing
        };
        if shared.poison.get().is_some() || sync_once(shared).is_err() || stopping {
            return;
        }
    }
}

fn writer_loop(shared: &Shared) {
    let mut rotations: Vec<Rotation> = Vec::new();
    let mut file = Arc::clone(&shared.sync_target.lock().file);
    loop {
        wait_for_work(shared);
        // A waiter may have written inline meanwhile, in which case the buffer is empty and
        // there is nothing to do.
        let mut batch = shared.batch.lock();
        let (batch_start, batch_end, closing) = {
            let mut p = shared.pending.lock();
            std::mem::swap(&mut p.buf, &mut *batch);
            std::mem::swap(&mut p.rotations, &mut rotations);
            (p.end - batch.len() as u64, p.end, p.closing)
        };
        shared.drained.notify_all();
        if shared.poison.get().is_some() {
            return;
        }
        let rotated = !rotations.is_empty();
        if !batch.is_empty() || rotated {
            if let Err(e) = write_batch(
                shared,
                &mut file,
                &batch,
                &rotations,
                batch_start,
                batch_end,
            ) {
                poison(shared, format!("write failed: {e}"));
                return;
            }
        }
        batch.clear();
        rotations.clear();
        if batch.capacity() > 4 * BUFFER_BYTES_TYPICAL {
            batch.shrink_to(BUFFER_BYTES_TYPICAL);
        }
        drop(batch);
        if rotated && !closing {
            shared.ledger.lock().replenish();
        }
        if shared.cfg.durability == Durability::Always || closing {
            if sync_once(shared).is_err() {
                return;
            }
        } else {
            publish(shared);
        }
        if closing {
            return;
        }
    }
}

/// Parks the writer until there is something to write: a waiter, a full buffer, the write
/// interval, or closing.
fn wait_for_work(shared: &Shared) {
    let mut p = shared.pending.lock();
    let mut deadline: Option<Instant> = None;
    loop {
        let has_data = !p.buf.is_empty() || !p.rotations.is_empty();
        if p.closing
            || (has_data
                && (p.buf.len() >= WRITE_EAGER_BYTES
                    || shared.flush_to.load(Ordering::SeqCst)
                        > shared.written.load(Ordering::Acquire)
                    || deadline.is_some_and(|d| Instant::now() >= d)))
        {
            return;
        }
        if has_data && deadline.is_none() {
            deadline = Some(Instant::now() + WRITE_INTERVAL);
        }
        shared.writer_parked.store(true, Ordering::SeqCst);
        // Re-check after announcing the park: a waiter that missed the flag has already
        // raised `flush_to`.
        let flush_due =
            shared.flush_to.load(Ordering::SeqCst) > shared.written.load(Ordering::Acquire);
        if !(flush_due && has_data) {
            match deadline {
                Some(d) => {
                    shared.wake.wait_until(p.inner(), d);
                }
                None => shared.wake.wait(p.inner()),
            }
        }
        shared.writer_parked.store(false, Ordering::SeqCst);
    }
}

/// EverySec fast path: a waiter writes the pending buffer itself with one write(2) instead of
/// handing it to the writer thread and waiting to be woken (two context switches per batch).
/// Gives up (returns false) when another write is in progress, a rotation is pending, or the
/// mode needs an fsync; the caller then falls back to the writer thread.
fn write_inline(shared: &Shared, pos: u64) -> bool {
    if shared.cfg.durability != Durability::EverySec || shared.poison.get().is_some() {
        return false;
    }
    let Some(mut batch) = shared.batch.try_lock() else {
        return false;
    };
    if shared.written.load(Ordering::Acquire) >= pos {
        return true;
    }
    let (start, end) = {
        let mut p = shared.pending.lock();
        if !p.rotations.is_empty() || p.closing || !batch.is_empty() {
            return false;
        }
        std::mem::swap(&mut p.buf, &mut *batch);
        (p.end - batch.len() as u64, p.end)
    };
    shared.drained.notify_all();
    let mut file = Arc::clone(&shared.sync_target.lock().file);
    let result = write_batch(shared, &mut file, &batch, &[], start, end);
    batch.clear();
    if batch.capacity() > 4 * BUFFER_BYTES_TYPICAL {
        batch.shrink_to(BUFFER_BYTES_TYPICAL);
    }
    drop(batch);
    match result {
        Ok(()) => {
            publish(shared);
            true
        }
        Err(e) => {
            poison(shared, format!("write failed: {e}"));
            false
        }
    }
}

fn write_batch(
    shared: &Shared,
    file: &mut Arc<File>,
    buf: &[u8],
    rotations: &[Rotation],
    batch_start: u64,
    batch_end: u64,
) -> Result<()> {
    let mut done = 0usize;
    for r in rotations {
        assert!(
            r.pos >= batch_start && r.pos <= batch_end,
            "rotation outside its batch"
        );
        #[expect(clippy::cast_possible_truncation)]
        // NOTE: bounded by the batch length, which is a usize.
        let cut = (r.pos - batch_start) as usize;
        let path = shared.sync_target.lock().path.clone();
        (&**file).write_all(&buf[done..cut]).ctx(&path)?;
        done = cut;
        file.sync_data().ctx(&path)?;
        shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        let (new_file, new_path, reserved_end) = open_next_segment(shared, r)?;
        *file = Arc::new(new_file);
        shared
            .ledger
            .lock()
            .created(r.pos, Arc::clone(file), reserved_end);
        {
            let mut t = shared.sync_target.lock();
            t.file = Arc::clone(file);
            t.path = new_path;
            t.written = r.pos;
        }
        shared.written.store(r.pos, Ordering::Release);
        shared.durable.fetch_max(r.pos, Ordering::AcqRel);
    }
    let path = shared.sync_target.lock().path.clone();
    (&**file).write_all(&buf[done..]).ctx(&path)?;
    let mut t = shared.sync_target.lock();
    t.written = batch_end;
    shared.written.store(batch_end, Ordering::Release);
    Ok(())
}

/// The path of the segment that starts at `pos` in `dir`.
#[must_use]
pub fn segment_path(dir: &Path, engine: &str, pos: u64) -> PathBuf {
    dir.join(segment_file_name(engine, pos))
}
