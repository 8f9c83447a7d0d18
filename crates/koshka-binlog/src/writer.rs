//! The append side: [`Binlog`], a [`Journal`] backed by segment files.
//!
//! # Threads
//! ```text
//!  engine threads ──append──► [ Pending: buf, end, chain, time ]  (short mutex, no syscall)
//!                                   │ swap buffers
//!                                   ▼
//!                        writer thread: write(2) (+ rotation) ; Always: fdatasync
//!                                   │ publishes written / durable
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
//! writer: the old segment is fdatasynced, the new one is created with its header, fdatasynced
//! and the directory fsynced, before any record goes into it.
//!
//! After a failed write or fsync the log is *poisoned*: every later append fails with
//! [`koshka_engine::Error::Journal`], waiters are woken with an error, and an error line is
//! logged. Nothing is retried: the state of the file after a failed fsync is unknown.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use koshka_engine::{unix_now, Appended, Journal, ShardSpec};
use parking_lot::{Condvar, Mutex};

use crate::error::{Error, IoContext, Result};
use crate::format::{
    chain_next, check_engine_name, is_reserved, segment_file_name, FileHeader, RecordHeader,
    RECORD_HEADER_SIZE, RECORD_PAYLOAD_MAX, RECORD_TYPE_TIME, SEGMENT_HEADER_SIZE, SEGMENT_MAGIC,
    TIME_RECORD_SIZE,
};
use crate::fsutil::sync_dir;

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

const _: () = assert!(BUFFER_BYTES_TYPICAL * 4 <= BUFFER_BYTES_MAX);
const _: () = assert!(WRITE_EAGER_BYTES < BUFFER_BYTES_MAX);
const _: () = assert!(SEGMENT_SIZE_MIN > SEGMENT_HEADER_SIZE as u64);

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

/// Where an existing log ends: the state a writer continues from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogEnd {
    /// Position just past the last record.
    pub pos: u64,
    /// Chain value at `pos`.
    pub chain: u32,
    /// Time in force at `pos`.
    pub time: u32,
    /// The last segment and its start position (`None`: the writer creates one at `pos`).
    pub segment: Option<(PathBuf, u64)>,
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
}

struct Rotation {
    pos: u64,
    chain: u32,
    time: u32,
}

struct Pending {
    buf: Vec<u8>,
    end: u64,
    chain: u32,
    time: u32,
    seg_start: u64,
    rotations: Vec<Rotation>,
    closing: bool,
}

struct SyncTarget {
    file: Arc<File>,
    path: PathBuf,
    written: u64,
}

struct Shared {
    cfg: BinlogConfig,
    pending: Mutex<Pending>,
    wake: Condvar,
    space: Condvar,
    /// Highest position some waiter needs written; the writer writes at once below it.
    flush_to: AtomicU64,
    /// The writer is parked on `wake` (set and cleared under the `pending` mutex).
    writer_parked: AtomicBool,
    written: AtomicU64,
    durable: AtomicU64,
    fsyncs: AtomicU64,
    poisoned: AtomicBool,
    poison_reason: Mutex<Option<String>>,
    acked_tx: tokio::sync::watch::Sender<u64>,
    progress_lock: Mutex<()>,
    progress: Condvar,
    sync_target: Mutex<SyncTarget>,
    /// The buffer being written, and the lock that orders writes: whoever holds it (the
    /// writer thread, or a waiter writing inline) swaps `pending.buf` out and writes it.
    spare: Mutex<Vec<u8>>,
    stop_lock: Mutex<bool>,
    stop: Condvar,
}

/// An engine's binlog writer. Implements [`Journal`]; see the module docs.
pub struct Binlog {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
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
    /// Whether the log refuses writes.
    pub poisoned: bool,
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

    /// Opens a writer that continues the log at `end` (as returned by recovery).
    ///
    /// # Errors
    /// I/O errors, invalid configuration.
    pub fn open_at(cfg: BinlogConfig, end: LogEnd) -> Result<Self> {
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
        let (file, path, seg_start) = match &end.segment {
            Some((path, start)) => {
                let file = OpenOptions::new().append(true).open(path).ctx(path)?;
                (file, path.clone(), *start)
            }
            None => {
                let (file, path) = create_segment(&cfg, end.pos, end.chain, end.time)?;
                (file, path, end.pos)
            }
        };
        let (acked_tx, _) = tokio::sync::watch::channel(end.pos);
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                buf: Vec::with_capacity(BUFFER_BYTES_TYPICAL),
                end: end.pos,
                chain: end.chain,
                time: end.time,
                seg_start,
                rotations: Vec::new(),
                closing: false,
            }),
            wake: Condvar::new(),
            space: Condvar::new(),
            flush_to: AtomicU64::new(0),
            writer_parked: AtomicBool::new(false),
            written: AtomicU64::new(end.pos),
            durable: AtomicU64::new(end.pos),
            fsyncs: AtomicU64::new(0),
            poisoned: AtomicBool::new(false),
            poison_reason: Mutex::new(None),
            acked_tx,
            progress_lock: Mutex::new(()),
            progress: Condvar::new(),
            sync_target: Mutex::new(SyncTarget {
                file: Arc::new(file),
                path,
                written: end.pos,
            }),
            spare: Mutex::new(Vec::with_capacity(BUFFER_BYTES_TYPICAL)),
            stop_lock: Mutex::new(false),
            stop: Condvar::new(),
            cfg,
        });
        let mut threads = Vec::new();
        let name = format!("binlog-w-{}", shared.cfg.engine);
        let s = Arc::clone(&shared);
        threads.push(
            std::thread::Builder::new()
                .name(name)
                .spawn(move || writer_loop(&s))
                .map_err(|e| Error::io("<thread>", e))?,
        );
        if shared.cfg.durability == Durability::EverySec {
            let s = Arc::clone(&shared);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("binlog-s-{}", shared.cfg.engine))
                    .spawn(move || syncer_loop(&s))
                    .map_err(|e| Error::io("<thread>", e))?,
            );
        }
        Ok(Self {
            shared,
            threads: Mutex::new(threads),
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
        self.shared.poisoned.load(Ordering::Acquire)
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
            if self.is_poisoned() {
                return Err(koshka_engine::Error::Journal(self.poison_reason()));
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

    /// Stops accepting appends, writes and fdatasyncs the rest, stops the threads. Idempotent.
    ///
    /// # Errors
    /// [`Error::Poisoned`] if a write or fsync failed at any time.
    pub fn close(&self) -> Result<()> {
        {
            let mut p = self.shared.pending.lock();
            p.closing = true;
        }
        {
            let _p = self.shared.pending.lock();
            self.shared.wake.notify_all();
        }
        self.shared.space.notify_all();
        *self.shared.stop_lock.lock() = true;
        self.shared.stop.notify_all();
        let threads: Vec<_> = std::mem::take(&mut *self.threads.lock());
        for t in threads {
            if t.join().is_err() {
                poison(&self.shared, "binlog thread panicked".into());
            }
        }
        if self.is_poisoned() {
            return Err(Error::Poisoned(self.poison_reason()));
        }
        Ok(())
    }

    fn poison_reason(&self) -> String {
        self.shared
            .poison_reason
            .lock()
            .clone()
            .unwrap_or_else(|| "poisoned".into())
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
        let now = unix_now();
        let shared = &*self.shared;
        let mut p = shared.pending.lock();
        loop {
            if shared.poisoned.load(Ordering::Acquire) {
                drop(p);
                return Err(koshka_engine::Error::Journal(self.poison_reason()));
            }
            if p.closing {
                return Err(koshka_engine::Error::Journal("binlog closed".into()));
            }
            if p.buf.len() < BUFFER_BYTES_MAX {
                break;
            }
            shared.space.wait(&mut p);
        }
        let needs_time = now > p.time;
        let len = (RECORD_HEADER_SIZE + payload.len()) as u64;
        let total = len
            + if needs_time {
                TIME_RECORD_SIZE as u64
            } else {
                0
            };
        if p.end > p.seg_start && p.end - p.seg_start + total > shared.cfg.segment_size {
            let rotation = Rotation {
                pos: p.end,
                chain: p.chain,
                time: p.time,
            };
            p.seg_start = p.end;
            p.rotations.push(rotation);
        }
        if needs_time {
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
        p.end += len;
        p.chain = chain_next(p.chain, header.crc);
        let appended = Appended {
            pos: p.end,
            time: p.time,
        };
        // Wake the writer once, when the buffer crosses the eager threshold.
        let eager = p.buf.len() >= WRITE_EAGER_BYTES
            && p.buf.len() - (len as usize + if needs_time { TIME_RECORD_SIZE } else { 0 })
                < WRITE_EAGER_BYTES;
        drop(p);
        if eager && shared.writer_parked.load(Ordering::SeqCst) {
            shared.wake.notify_one();
        }
        Ok(appended)
    }
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
    let mut guard = shared.progress_lock.lock();
    loop {
        if value() >= pos {
            return Ok(());
        }
        if shared.poisoned.load(Ordering::Acquire) {
            let reason = shared.poison_reason.lock().clone().unwrap_or_default();
            return Err(koshka_engine::Error::Journal(format!(
                "binlog poisoned: {reason}"
            )));
        }
        shared
            .progress
            .wait_for(&mut guard, Duration::from_millis(100));
    }
}

fn publish(shared: &Shared) {
    shared.acked_tx.send_replace(acked(shared));
    let _guard = shared.progress_lock.lock();
    shared.progress.notify_all();
}

fn poison(shared: &Shared, reason: String) {
    tracing::error!(
        engine = %shared.cfg.engine,
        "binlog poisoned, refusing all further writes: {reason}"
    );
    {
        let mut r = shared.poison_reason.lock();
        if r.is_none() {
            *r = Some(reason);
        }
    }
    shared.poisoned.store(true, Ordering::Release);
    {
        // Taking the lock orders the flag before any appender's wait.
        let _p = shared.pending.lock();
    }
    shared.space.notify_all();
    publish(shared);
}

fn create_segment(cfg: &BinlogConfig, pos: u64, chain: u32, time: u32) -> Result<(File, PathBuf)> {
    let path = cfg.dir.join(segment_file_name(&cfg.engine, pos));
    let header = FileHeader {
        engine: cfg.engine.clone(),
        shard: cfg.shard,
        pos,
        chain,
        time,
        created: unix_now(),
    };
    let mut file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&path)
        .ctx(&path)?;
    file.write_all(&header.encode(SEGMENT_MAGIC)).ctx(&path)?;
    file.sync_data().ctx(&path)?;
    sync_dir(&cfg.dir)?;
    Ok((file, path))
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
    let mut stop = shared.stop_lock.lock();
    loop {
        let deadline = Instant::now() + FSYNC_INTERVAL;
        while !*stop && Instant::now() < deadline {
            shared.stop.wait_until(&mut stop, deadline);
        }
        let stopping = *stop;
        drop(stop);
        if shared.poisoned.load(Ordering::Acquire) || sync_once(shared).is_err() || stopping {
            return;
        }
        stop = shared.stop_lock.lock();
    }
}

fn writer_loop(shared: &Shared) {
    let mut rotations: Vec<Rotation> = Vec::new();
    let mut file = Arc::clone(&shared.sync_target.lock().file);
    loop {
        wait_for_work(shared);
        // Lock order: spare, then pending. A waiter may have written inline meanwhile, in
        // which case the buffer is empty and there is nothing to do.
        let mut spare = shared.spare.lock();
        let (batch_start, batch_end, closing) = {
            let mut p = shared.pending.lock();
            std::mem::swap(&mut p.buf, &mut *spare);
            std::mem::swap(&mut p.rotations, &mut rotations);
            (p.end - spare.len() as u64, p.end, p.closing)
        };
        shared.space.notify_all();
        if shared.poisoned.load(Ordering::Acquire) {
            return;
        }
        if !spare.is_empty() || !rotations.is_empty() {
            if let Err(e) = write_batch(
                shared,
                &mut file,
                &spare,
                &rotations,
                batch_start,
                batch_end,
            ) {
                poison(shared, format!("write failed: {e}"));
                return;
            }
        }
        spare.clear();
        rotations.clear();
        if spare.capacity() > 4 * BUFFER_BYTES_TYPICAL {
            spare.shrink_to(BUFFER_BYTES_TYPICAL);
        }
        drop(spare);
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
                    shared.wake.wait_until(&mut p, d);
                }
                None => shared.wake.wait(&mut p),
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
    if shared.cfg.durability != Durability::EverySec || shared.poisoned.load(Ordering::Acquire) {
        return false;
    }
    let Some(mut spare) = shared.spare.try_lock() else {
        return false;
    };
    if shared.written.load(Ordering::Acquire) >= pos {
        return true;
    }
    let (start, end) = {
        let mut p = shared.pending.lock();
        if !p.rotations.is_empty() || p.closing || !spare.is_empty() {
            return false;
        }
        std::mem::swap(&mut p.buf, &mut *spare);
        (p.end - spare.len() as u64, p.end)
    };
    shared.space.notify_all();
    let mut file = Arc::clone(&shared.sync_target.lock().file);
    let result = write_batch(shared, &mut file, &spare, &[], start, end);
    spare.clear();
    if spare.capacity() > 4 * BUFFER_BYTES_TYPICAL {
        spare.shrink_to(BUFFER_BYTES_TYPICAL);
    }
    drop(spare);
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
        let (new_file, new_path) = create_segment(&shared.cfg, r.pos, r.chain, r.time)?;
        *file = Arc::new(new_file);
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
