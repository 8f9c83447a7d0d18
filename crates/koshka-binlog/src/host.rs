//! [`Host`]: one engine's persistence — start-up (snapshot + replay), the journal, background
//! snapshots, retention, shutdown and statistics.
//!
//! Start-up errors name the file and the offset: a damaged segment (offset of the record), a
//! record the engine cannot apply (segment file and offset of the record), a snapshot the
//! engine cannot load (how far it read), a snapshot whose position the log does not reach
//! (the snapshot, and where the log ends).
//!
//! Snapshots never poison the log: one is skipped when the file system has less free space
//! than the previous snapshot's size plus a margin ([`SNAPSHOT_SPACE_PERCENT`],
//! [`SNAPSHOT_SPACE_SLACK`]), and a snapshot that fails (ENOSPC included) removes its temp
//! file and leaves the log as it was. The log's own disk space is reserved ahead
//! ([`crate::space`]), so a snapshot filling the disk cannot take it.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use koshka_engine::lanes::{replay_threads, Failed};
use koshka_engine::{Appended, ApplyCtx, Clock, Engine, Journal, Lanes, ShardSpec, SystemClock};
use koshka_limits::Limits;
use parking_lot::{Condvar, Mutex};

use crate::clock::LogClock;
use crate::error::{Error, IoContext, Result};
use crate::follow::ReplicaLog;
use crate::format::{
    check_engine_name, is_reserved, snapshot_file_name, FileHeader, RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE, SNAPSHOT_HEADER_SIZE,
};
use crate::fsutil::{list, sync_dir};
use crate::reader::{ReadOptions, Record};
use crate::recover::{replay_to, ReplayOutcome, Sink};
use crate::repl::Acks;
use crate::snapshot::{list_snapshots, open_body, remove_leftover_temps, validate, SnapshotInfo};
use crate::writer::{Binlog, BinlogConfig, Durability};

/// How often the log clock is recorded in an otherwise idle log, so that a restart resumes
/// time from no earlier than this before the stop.
pub const TIME_MARK_INTERVAL: Duration = Duration::from_secs(1);

/// How often the snapshot thread checks whether the log grew past the snapshot threshold.
pub const SNAPSHOT_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// How long the snapshot thread waits after an automatic snapshot failed or was skipped for
/// lack of space before it tries again (a requested snapshot is tried at once). Long enough
/// that a persistent failure does not rewrite a large snapshot over and over.
pub const SNAPSHOT_RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// Free space a snapshot needs, in percent of the previous snapshot's size (state grows
/// between snapshots).
pub const SNAPSHOT_SPACE_PERCENT: u64 = 120;

/// Free space a snapshot needs beyond [`SNAPSHOT_SPACE_PERCENT`] of the previous one (and
/// all a first snapshot needs): file-system metadata and some room left for everything else.
pub const SNAPSHOT_SPACE_SLACK: u64 = 1024 * 1024;

pub use koshka_limits::{SNAPSHOT_NICE_DEFAULT, SNAPSHOT_RATE_DEFAULT};

/// A paced snapshot sleeps only when it is at least this far ahead of its pace: shorter
/// sleeps cost more in wake-ups than they save.
pub const SNAPSHOT_PACE_SLEEP_MIN: Duration = Duration::from_millis(1);

/// Which old files to delete after a snapshot. The default keeps everything: replication and
/// backups need old segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Snapshots to keep, newest first; 0 keeps all.
    pub snapshots_keep: usize,
    /// Delete segments that end at or before the oldest kept snapshot's position.
    pub delete_covered_segments: bool,
}

/// Persistence settings of one hosted engine.
#[derive(Debug, Clone)]
pub struct PersistConfig {
    /// Directory of this engine's segments and snapshots (may be shared with other engines:
    /// file names start with the engine name).
    pub dir: PathBuf,
    /// Engine name used in file names and headers (`[a-z0-9_-]`, at most 16 bytes).
    pub engine: String,
    /// Shard held by this node.
    pub shard: ShardSpec,
    /// When appends are acknowledged.
    pub durability: Durability,
    /// Segment size that triggers rotation.
    pub segment_size: u64,
    /// Log bytes since the last snapshot that trigger an automatic one; 0 disables.
    pub snapshot_log_bytes: u64,
    /// Write a snapshot on [`Host::shutdown`].
    pub snapshot_on_shutdown: bool,
    /// What to delete after a snapshot.
    pub retention: Retention,
    /// How much the background snapshot thread lowers its CPU priority (nice value,
    /// [`SNAPSHOT_NICE_DEFAULT`]); 0 leaves it at the process's priority.
    pub snapshot_nice: i32,
    /// Pace of background snapshots in bytes per second ([`SNAPSHOT_RATE_DEFAULT`]; 0 = as
    /// fast as they go). The snapshot thread sleeps between the engine's writes (engines
    /// write each partition after releasing its lock) when it is ahead of the pace. A
    /// snapshot on shutdown or by [`Host::snapshot_now`] is never paced, nor is the rest of
    /// one running when the host shuts down.
    pub snapshot_rate: u64,
    /// Truncate the log at mid-log corruption instead of refusing to start.
    pub repair: bool,
    /// Print replay progress to stderr on long start-ups.
    pub progress: bool,
    /// Apply threads for the start-up replay of an engine that says which partition each
    /// record touches ([`koshka_engine::Engine::replay_partition`]); 0 = one per core, 1 =
    /// serial (see [`koshka_engine::lanes`]). Engines that do not opt in replay serially.
    pub replay_threads: usize,
    /// Wall-clock and monotonic time source of the log clock ([`LogClock`]); tests inject a
    /// [`koshka_engine::ManualClock`].
    pub clock: Arc<dyn Clock>,
    /// Follow the primary at this replication address instead of writing a log of one's own
    /// (a read-only replica until [`Host::promote`]); see [`crate::repl`].
    pub replica_of: Option<String>,
}

impl PersistConfig {
    /// Settings from `limits` with durability `everysec`, shard 0 of 1, snapshot on shutdown,
    /// keep everything, no repair, the system clock.
    #[must_use]
    pub fn new(dir: impl Into<PathBuf>, engine: &str, limits: &Limits) -> Self {
        Self {
            dir: dir.into(),
            engine: engine.to_string(),
            shard: ShardSpec::default(),
            durability: Durability::EverySec,
            segment_size: limits.binlog_segment_size,
            snapshot_log_bytes: limits.snapshot_log_bytes,
            snapshot_on_shutdown: true,
            retention: Retention::default(),
            snapshot_nice: SNAPSHOT_NICE_DEFAULT,
            snapshot_rate: SNAPSHOT_RATE_DEFAULT,
            repair: false,
            progress: true,
            replay_threads: 0,
            clock: Arc::new(SystemClock),
            replica_of: None,
        }
    }
}

enum JournalImpl {
    Log(Binlog),
    Memory(MemoryLog),
    Replica(Box<ReplicaLog>),
}

/// The journal of durability `none`: keeps nothing; positions count bytes as a log would,
/// time comes from a [`LogClock`] (so it never goes backwards while the process runs).
#[derive(Debug)]
struct MemoryLog {
    pos: AtomicU64,
    clock: LogClock,
}

impl Journal for MemoryLog {
    fn append(&self, _record_type: u16, payload: &[u8]) -> koshka_engine::Result<Appended> {
        let len = (RECORD_HEADER_SIZE + payload.len()) as u64;
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

#[derive(Default)]
struct SnapSignal {
    requested: bool,
    stop: bool,
}

struct Inner {
    engine: Arc<dyn Engine>,
    cfg: PersistConfig,
    journal: JournalImpl,
    snapshot_lock: Mutex<()>,
    signal: Mutex<SnapSignal>,
    signal_cv: Condvar,
    last_snapshot_pos: AtomicU64,
    last_snapshot_ms: AtomicU64,
    snapshots_written: AtomicU64,
    snapshot_errors: AtomicU64,
    snapshot_skipped_no_space: AtomicU64,
    /// The last snapshot attempt was skipped for lack of space (log a line on changes only).
    snapshot_space_short: AtomicBool,
    loaded_snapshot_pos: Option<u64>,
    replay_records: u64,
    replay_bytes: u64,
    replay_seconds: f64,
    closed: AtomicBool,
    /// Positions the replicas of this (primary) log confirmed.
    acks: Arc<Acks>,
    /// Writes are refused: this node lost its primary lease ([`Host::fence`]).
    fenced: AtomicBool,
}

/// Every append goes through the fence.
impl Journal for Inner {
    fn append(&self, record_type: u16, payload: &[u8]) -> koshka_engine::Result<Appended> {
        if self.fenced.load(Ordering::Acquire) {
            return Err(koshka_engine::Error::Server(
                "fenced: this node is no longer the primary of its shard (its lease \
                 expired); send writes to the new primary"
                    .into(),
            ));
        }
        match &self.journal {
            JournalImpl::Log(b) => b.append(record_type, payload),
            JournalImpl::Memory(m) => m.append(record_type, payload),
            JournalImpl::Replica(r) => r.append(record_type, payload),
        }
    }

    fn now(&self) -> u32 {
        match &self.journal {
            JournalImpl::Log(b) => b.now(),
            JournalImpl::Memory(m) => m.now(),
            JournalImpl::Replica(r) => r.now(),
        }
    }
}

impl Inner {
    /// The log writer: a primary's, or a promoted replica's.
    fn binlog(&self) -> Option<&Binlog> {
        match &self.journal {
            JournalImpl::Log(b) => Some(b),
            JournalImpl::Memory(_) => None,
            JournalImpl::Replica(r) => r.promoted.get(),
        }
    }
}

/// Persistence host of one engine. See the crate docs.
pub struct Host {
    inner: Arc<Inner>,
    snapshot_thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("engine", &self.inner.cfg.engine)
            .finish_non_exhaustive()
    }
}

impl Host {
    /// Starts an engine: removes leftover snapshot temp files, loads the newest valid
    /// snapshot (falling back to older ones when one fails validation), replays the log from
    /// the snapshot's position, cuts a torn tail, and opens the writer, whose log clock
    /// continues from the last time in the log. With durability `none` nothing is read or
    /// written.
    ///
    /// The node must hold the data directory's [`crate::DirLock`] while a host is open.
    ///
    /// # Errors
    /// Each names the file and, where there is one, the offset: corruption in the log (unless
    /// `repair`), a broken segment chain, a snapshot that validates but does not load or
    /// names a position the log does not reach ([`Error::Snapshot`]), a record the engine
    /// cannot apply ([`Error::Replay`]), I/O errors.
    pub fn open(engine: Arc<dyn Engine>, config: PersistConfig) -> Result<Self> {
        check_engine_name(&config.engine).map_err(Error::Config)?;
        if config.durability == Durability::None {
            let journal = MemoryLog {
                pos: AtomicU64::new(0),
                clock: LogClock::new(Arc::clone(&config.clock), 0),
            };
            return Ok(Self::start(
                engine,
                config,
                JournalImpl::Memory(journal),
                None,
                (0, 0, 0.0),
            ));
        }
        std::fs::create_dir_all(&config.dir).ctx(&config.dir)?;
        remove_leftover_temps(&config.dir, &config.engine)?;
        if let Some(primary) = &config.replica_of {
            match crate::repl::reconcile(&config.dir, &config.engine, primary) {
                Ok(None) => {}
                Ok(Some(cut)) => eprintln!(
                    "koshka {}: this log went past what the primary {primary} has; everything \
                     after position {cut} moved aside (*.{}*) to rejoin as its replica",
                    config.engine,
                    crate::repl::DIVERGED_SUFFIX
                ),
                Err(e) => tracing::warn!(
                    "{}: cannot check the local log against the primary now ({e}); the \
                     handshake will",
                    config.engine
                ),
            }
        }
        let snapshot = newest_valid_snapshot(&config)?;
        if let Some(info) = &snapshot {
            load_snapshot(engine.as_ref(), info)?;
        }
        let outcome = replay_log(&engine, &config, snapshot.as_ref())?;
        let mut end = outcome.end.clone();
        if let Some(info) = &snapshot {
            // An empty log starting at the snapshot does not know the time there.
            end.time = end.time.max(info.header.time);
        }
        let writer_cfg = BinlogConfig {
            dir: config.dir.clone(),
            engine: config.engine.clone(),
            shard: config.shard,
            durability: config.durability,
            segment_size: config.segment_size,
            clock: Arc::clone(&config.clock),
        };
        let journal = match &config.replica_of {
            Some(primary) => JournalImpl::Replica(Box::new(ReplicaLog::start(
                Arc::clone(&engine),
                writer_cfg,
                primary,
                &end,
            )?)),
            None => JournalImpl::Log(Binlog::open_at(writer_cfg, end)?),
        };
        let loaded = snapshot.map(|s| s.header.pos);
        Ok(Self::start(
            engine,
            config,
            journal,
            loaded,
            (outcome.records, outcome.bytes, outcome.seconds),
        ))
    }

    fn start(
        engine: Arc<dyn Engine>,
        cfg: PersistConfig,
        journal: JournalImpl,
        loaded: Option<u64>,
        (records, bytes, seconds): (u64, u64, f64),
    ) -> Self {
        let persistent = !matches!(journal, JournalImpl::Memory(_));
        let inner = Arc::new(Inner {
            engine,
            cfg,
            journal,
            snapshot_lock: Mutex::new(()),
            signal: Mutex::new(SnapSignal::default()),
            signal_cv: Condvar::new(),
            last_snapshot_pos: AtomicU64::new(loaded.unwrap_or(0)),
            last_snapshot_ms: AtomicU64::new(0),
            snapshots_written: AtomicU64::new(0),
            snapshot_errors: AtomicU64::new(0),
            snapshot_skipped_no_space: AtomicU64::new(0),
            snapshot_space_short: AtomicBool::new(false),
            loaded_snapshot_pos: loaded,
            replay_records: records,
            replay_bytes: bytes,
            replay_seconds: seconds,
            closed: AtomicBool::new(false),
            acks: Arc::new(Acks::default()),
            fenced: AtomicBool::new(false),
        });
        let thread = if persistent {
            let i = Arc::clone(&inner);
            std::thread::Builder::new()
                .name(format!("snapshot-{}", inner.cfg.engine))
                .spawn(move || snapshot_loop(&i))
                .map_err(|e| tracing::error!("cannot start the snapshot thread: {e}"))
                .ok()
        } else {
            None
        };
        Self {
            inner,
            snapshot_thread: Mutex::new(thread),
        }
    }

    /// The journal engines append to.
    #[must_use]
    pub fn journal(&self) -> &dyn Journal {
        match &self.inner.journal {
            // Nothing to fence without a log.
            JournalImpl::Memory(m) => m,
            _ => &*self.inner,
        }
    }

    /// The binlog writer, unless durability is `none`.
    #[must_use]
    pub fn binlog(&self) -> Option<&Binlog> {
        self.inner.binlog()
    }

    /// The hosted engine.
    #[must_use]
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.inner.engine
    }

    /// Resolves once `pos` (from [`koshka_engine::Appended::pos`]) is acknowledged under the
    /// configured durability; immediately for `none`.
    ///
    /// # Errors
    /// [`koshka_engine::Error::Journal`] if the log is poisoned.
    pub async fn wait_acked(&self, pos: u64) -> koshka_engine::Result<()> {
        match self.inner.binlog() {
            Some(b) => b.wait_acked(pos).await,
            None => Ok(()),
        }
    }

    /// Blocking form of [`Host::wait_acked`].
    ///
    /// # Errors
    /// As [`Host::wait_acked`].
    pub fn wait_acked_blocking(&self, pos: u64) -> koshka_engine::Result<()> {
        match self.inner.binlog() {
            Some(b) => b.wait_acked_blocking(pos),
            None => Ok(()),
        }
    }

    /// Whether this host follows a primary (and was not promoted).
    #[must_use]
    pub fn is_replica(&self) -> bool {
        matches!(&self.inner.journal, JournalImpl::Replica(r) if r.promoted.get().is_none())
    }

    /// Turns a replica into a primary: stops following, cuts a torn record at the end of
    /// what it received, and opens a writer of its own there. Returns the position writes
    /// continue from. Idempotent.
    ///
    /// # Errors
    /// [`Error::Replication`] on a host that is no replica, or whose log failed to apply.
    pub fn promote(&self) -> Result<u64> {
        match &self.inner.journal {
            JournalImpl::Replica(r) => r.promote(),
            _ => Err(Error::Replication("this node is not a replica".into())),
        }
    }

    /// Refuses (`true`) or allows again (`false`) every append: a primary that cannot renew
    /// its lease fences itself before another node may take over.
    pub fn fence(&self, fenced: bool) {
        if self.inner.fenced.swap(fenced, Ordering::AcqRel) != fenced {
            tracing::warn!(
                "{}: writes {}",
                self.inner.cfg.engine,
                if fenced {
                    "fenced off"
                } else {
                    "accepted again"
                }
            );
        }
    }

    /// Points a replica at another primary (after a failover); it reconnects there.
    pub fn retarget(&self, primary: &str) {
        if let JournalImpl::Replica(r) = &self.inner.journal {
            r.retarget(primary);
        }
    }

    /// The replication address this replica follows, if it is one.
    #[must_use]
    pub fn following(&self) -> Option<String> {
        match &self.inner.journal {
            JournalImpl::Replica(r) if r.promoted.get().is_none() => Some(r.primary()),
            _ => None,
        }
    }

    /// Position up to which a replica applied its primary's log (a primary: its own end).
    #[must_use]
    pub fn applied_pos(&self) -> u64 {
        match &self.inner.journal {
            JournalImpl::Replica(r) if r.promoted.get().is_none() => r.applied_pos(),
            _ => self.binlog().map_or(0, |b| b.mark().0),
        }
    }

    /// Positions the replicas of this log confirmed (semi-synchronous acknowledgement).
    #[must_use]
    pub fn acks(&self) -> &Arc<Acks> {
        &self.inner.acks
    }

    /// The settings this host was opened with.
    #[must_use]
    pub fn config(&self) -> &PersistConfig {
        &self.inner.cfg
    }

    /// Asks the background thread for a snapshot (the admin command). Returns at once.
    pub fn request_snapshot(&self) {
        self.inner.signal.lock().requested = true;
        self.inner.signal_cv.notify_all();
    }

    /// Writes a snapshot on the calling thread (writers are not blocked; see the crate docs).
    /// `Ok(None)` with durability `none`.
    ///
    /// # Errors
    /// [`Error::NoSpace`] when the file system has too little free space (nothing written);
    /// I/O (ENOSPC included) and engine errors: the temp file is removed, the previous
    /// snapshots stay, and the log is unaffected.
    pub fn snapshot_now(&self) -> Result<Option<PathBuf>> {
        snapshot_now(&self.inner, Pace::Full)
    }

    /// Clean shutdown: stops the snapshot thread, writes a snapshot if configured, writes and
    /// fdatasyncs the log and closes it. Idempotent. The server stops taking updates first.
    ///
    /// # Errors
    /// [`Error::Poisoned`] if the log failed; snapshot errors.
    pub fn shutdown(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.stop_thread();
        if let JournalImpl::Replica(r) = &self.inner.journal {
            r.stop();
        }
        let mut result = Ok(());
        if self.inner.cfg.snapshot_on_shutdown && self.binlog().is_some_and(|b| !b.is_poisoned()) {
            if let Err(e) = self.snapshot_now() {
                tracing::error!("snapshot on shutdown failed: {e}");
                result = Err(e);
            }
        }
        if let Some(b) = self.binlog() {
            b.close()?;
        }
        result
    }

    fn stop_thread(&self) {
        self.inner.signal.lock().stop = true;
        self.inner.signal_cv.notify_all();
        if let Some(t) = self.snapshot_thread.lock().take() {
            if t.join().is_err() {
                tracing::error!("snapshot thread panicked");
            }
        }
    }

    /// Statistics for the `stats` command, names prefixed `binlog_`, `snapshot_`, `replay_`.
    #[must_use]
    pub fn stats(&self) -> Vec<(String, String)> {
        let i = &*self.inner;
        let b = self.binlog().map(Binlog::stats).unwrap_or_default();
        let durability = match i.cfg.durability {
            Durability::Always => "always",
            Durability::EverySec => "everysec",
            Durability::None => "none",
        };
        let mut out = vec![
            ("binlog_durability", durability.to_string()),
            ("binlog_position", b.position.to_string()),
            ("binlog_written", b.written.to_string()),
            ("binlog_durable", b.durable.to_string()),
            ("binlog_fsyncs", b.fsyncs.to_string()),
            ("binlog_poisoned", u8::from(b.poisoned).to_string()),
            ("binlog_disk_full", u8::from(b.disk_full).to_string()),
            (
                "binlog_disk_full_refusals",
                b.disk_full_refusals.to_string(),
            ),
            (
                "snapshot_last_pos",
                i.last_snapshot_pos.load(Ordering::Relaxed).to_string(),
            ),
            (
                "snapshot_last_duration_ms",
                i.last_snapshot_ms.load(Ordering::Relaxed).to_string(),
            ),
            (
                "snapshots_written",
                i.snapshots_written.load(Ordering::Relaxed).to_string(),
            ),
            (
                "snapshot_errors",
                i.snapshot_errors.load(Ordering::Relaxed).to_string(),
            ),
            (
                "snapshot_skipped_no_space",
                i.snapshot_skipped_no_space
                    .load(Ordering::Relaxed)
                    .to_string(),
            ),
            (
                "snapshot_loaded_pos",
                i.loaded_snapshot_pos
                    .map_or_else(|| "-1".to_string(), |p| p.to_string()),
            ),
            ("replay_records", i.replay_records.to_string()),
            ("replay_bytes", i.replay_bytes.to_string()),
            ("replay_seconds", format!("{:.3}", i.replay_seconds)),
        ];
        out.push((
            "repl_fenced",
            u8::from(i.fenced.load(Ordering::Acquire)).to_string(),
        ));
        match &i.journal {
            JournalImpl::Replica(r) => out.extend(r.stats()),
            _ => {
                out.push(("repl_role", "primary".to_string()));
                out.push(("repl_replicas", i.acks.connected().to_string()));
                let positions: Vec<String> =
                    i.acks.positions().iter().map(u64::to_string).collect();
                out.push(("repl_replica_positions", positions.join(",")));
            }
        }
        out.sort_by_key(|(k, _)| *k);
        out.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

impl Drop for Host {
    /// Dropping without [`Host::shutdown`] stops the snapshot thread and closes the log
    /// (everything appended is written and fdatasynced) but writes no snapshot.
    fn drop(&mut self) {
        if !self.inner.closed.swap(true, Ordering::AcqRel) {
            self.stop_thread();
            if let JournalImpl::Replica(r) = &self.inner.journal {
                r.stop();
            }
            if let Some(b) = self.binlog() {
                if let Err(e) = b.close() {
                    tracing::error!("binlog close on drop: {e}");
                }
            }
        }
    }
}

fn newest_valid_snapshot(cfg: &PersistConfig) -> Result<Option<SnapshotInfo>> {
    for named in list_snapshots(&cfg.dir, &cfg.engine)?.iter().rev() {
        match validate(&named.path) {
            Ok(info) if info.header.shard != cfg.shard => {
                return Err(Error::Snapshot {
                    path: info.path,
                    reason: format!(
                        "shard {}/{} differs from the configured {}/{}",
                        info.header.shard.index,
                        info.header.shard.count,
                        cfg.shard.index,
                        cfg.shard.count
                    ),
                });
            }
            Ok(info) => return Ok(Some(info)),
            Err(e) => {
                tracing::warn!("{e}; falling back to an older snapshot (longer replay)");
                eprintln!(
                    "koshka {}: {e}; falling back to an older snapshot",
                    cfg.engine
                );
            }
        }
    }
    Ok(None)
}

/// Loads a validated snapshot into the empty engine. A failure names the snapshot and how far
/// into the file the engine had read.
pub(crate) fn load_snapshot(engine: &dyn Engine, info: &SnapshotInfo) -> Result<()> {
    let mut body = Counting {
        inner: open_body(info)?,
        read: 0,
    };
    engine
        .load_snapshot(&mut body)
        .map_err(|e| Error::Snapshot {
            path: info.path.clone(),
            reason: format!(
                "engine failed to load it (having read up to offset {}): {e}",
                SNAPSHOT_HEADER_SIZE as u64 + body.read
            ),
        })
}

/// A reader that counts the bytes it hands out.
struct Counting<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Replays the log into the engine from the snapshot's position (or the start), cutting a
/// torn tail with a warning on stderr.
fn replay_log(
    engine: &Arc<dyn Engine>,
    config: &PersistConfig,
    snapshot: Option<&SnapshotInfo>,
) -> Result<ReplayOutcome> {
    let opts = ReadOptions {
        repair: config.repair,
        shard: Some(config.shard),
        ..Default::default()
    };
    let label = format!("koshka {}", config.engine);
    let from = snapshot.map(|s| (s.header.pos, s.header.chain));
    let mut sink = ApplySink {
        lanes: Lanes::new(Arc::clone(engine), replay_threads(config.replay_threads)),
        config,
    };
    let outcome = replay_to(
        &config.dir,
        &config.engine,
        from,
        opts,
        &mut sink,
        config.progress.then_some(label.as_str()),
    )
    .map_err(|e| match (e, snapshot) {
        // The log cannot be opened at the snapshot's position: the snapshot is unusable.
        (Error::Position { pos, reason }, Some(info)) => Error::Snapshot {
            path: info.path.clone(),
            reason: format!(
                "names log position {pos}, which the log cannot start from: {reason}; move \
                 it aside to start from an older snapshot"
            ),
        },
        (e, _) => e,
    })?;
    if let Some(cut) = &outcome.cut {
        eprintln!(
            "koshka {}: binlog {} in {} at offset {} (log position {}): {}; truncated there",
            config.engine,
            if cut.corrupt {
                "corruption (repair)"
            } else {
                "torn tail"
            },
            cut.path.display(),
            cut.offset,
            cut.pos,
            cut.reason
        );
    }
    Ok(outcome)
}

/// Hands replayed engine records to [`Lanes`] (apply threads by partition, or this thread).
struct ApplySink<'a> {
    lanes: Lanes,
    config: &'a PersistConfig,
}

impl Sink for ApplySink<'_> {
    fn record(&mut self, rec: &Record<'_>) -> Result<()> {
        if is_reserved(rec.record_type) {
            return Ok(());
        }
        let ctx = ApplyCtx {
            pos: rec.pos,
            time: rec.time,
        };
        self.lanes
            .apply(rec.record_type, rec.payload, ctx)
            .map_err(|failed| self.locate(failed))
    }

    fn finish(&mut self) -> Result<()> {
        self.lanes.finish().map_err(|failed| self.locate(failed))
    }
}

impl ApplySink<'_> {
    /// [`Error::Replay`] naming the segment and offset of the record that failed (with apply
    /// threads, not necessarily the record the reader is at).
    fn locate(&self, failed: Failed) -> Error {
        let start = failed.ctx.pos - (RECORD_HEADER_SIZE + failed.payload_len) as u64;
        let segment = list(&self.config.dir, Some(&self.config.engine), "bin")
            .ok()
            .and_then(|segments| segments.into_iter().rev().find(|s| s.pos <= start));
        let (path, offset) = segment.map_or_else(
            || (PathBuf::new(), 0),
            |s| (s.path, SEGMENT_HEADER_SIZE as u64 + (start - s.pos)),
        );
        Error::Replay {
            path,
            offset,
            pos: failed.ctx.pos,
            record_type: failed.record_type,
            source: failed.error,
        }
    }
}

fn snapshot_loop(inner: &Inner) {
    // A replica snapshots nothing until it is promoted.
    let binlog = loop {
        if let Some(b) = inner.binlog() {
            break b;
        }
        let mut signal = inner.signal.lock();
        if signal.stop || matches!(inner.journal, JournalImpl::Memory(_)) {
            return;
        }
        inner
            .signal_cv
            .wait_for(&mut signal, SNAPSHOT_CHECK_INTERVAL);
    };
    lower_priority(inner.cfg.snapshot_nice);
    let mut retry_at: Option<Instant> = None;
    let mut signal = inner.signal.lock();
    let mut time_marked = Instant::now();
    loop {
        if signal.stop {
            return;
        }
        if time_marked.elapsed() >= TIME_MARK_INTERVAL {
            binlog.mark_time();
            time_marked = Instant::now();
        }
        let since = binlog
            .mark()
            .0
            .saturating_sub(inner.last_snapshot_pos.load(Ordering::Relaxed));
        let automatic = inner.cfg.snapshot_log_bytes > 0
            && since >= inner.cfg.snapshot_log_bytes
            && retry_at.is_none_or(|t| Instant::now() >= t);
        if (signal.requested || automatic) && !binlog.is_poisoned() {
            signal.requested = false;
            drop(signal);
            retry_at = None;
            if let Err(e) = snapshot_now(inner, Pace::Configured) {
                if !matches!(e, Error::NoSpace { .. }) {
                    tracing::error!("snapshot of {} failed: {e}", inner.cfg.engine);
                    inner.snapshot_errors.fetch_add(1, Ordering::Relaxed);
                }
                // Do not retry in a tight loop.
                retry_at = Some(Instant::now() + SNAPSHOT_RETRY_INTERVAL);
            }
            signal = inner.signal.lock();
            continue;
        }
        inner
            .signal_cv
            .wait_for(&mut signal, SNAPSHOT_CHECK_INTERVAL);
    }
}

/// Lowers the calling thread's CPU priority by `nice` (see [`SNAPSHOT_NICE_DEFAULT`]); a
/// failure is logged and ignored (the snapshot still runs, at full priority).
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    // On Linux, PRIO_PROCESS with "this process" sets the calling thread's nice value only.
    let current = rustix::process::getpriority_process(None).unwrap_or(0);
    if let Err(e) = rustix::process::setpriority_process(None, current.saturating_add(nice)) {
        tracing::warn!("cannot lower the snapshot thread's priority by {nice}: {e}");
    }
}

/// Refuses to start a snapshot when the file system holding the directory has less free
/// space than the previous snapshot's size × [`SNAPSHOT_SPACE_PERCENT`] % plus
/// [`SNAPSHOT_SPACE_SLACK`]. Logs a line when snapshots start and stop being skipped.
fn check_snapshot_space(inner: &Inner) -> Result<()> {
    let cfg = &inner.cfg;
    let previous = list_snapshots(&cfg.dir, &cfg.engine)?
        .last()
        .map_or(0, |s| s.len);
    let needed = previous
        .saturating_mul(SNAPSHOT_SPACE_PERCENT)
        .div_ceil(100)
        .saturating_add(SNAPSHOT_SPACE_SLACK);
    let available = crate::space::available(&cfg.dir).ctx(&cfg.dir)?;
    if available >= needed {
        if inner.snapshot_space_short.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                "snapshots of {}: enough free space again ({available} bytes)",
                cfg.engine
            );
        }
        return Ok(());
    }
    inner
        .snapshot_skipped_no_space
        .fetch_add(1, Ordering::Relaxed);
    let err = Error::NoSpace {
        dir: cfg.dir.clone(),
        needed,
        available,
    };
    if !inner.snapshot_space_short.swap(true, Ordering::AcqRel) {
        tracing::error!("snapshots of {}: {err} (the log is unaffected)", cfg.engine);
    }
    Err(err)
}

/// How fast a snapshot is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    /// As fast as it goes (on request of the caller, on shutdown).
    Full,
    /// At [`PersistConfig::snapshot_rate`] (the background thread).
    Configured,
}

/// A snapshot body writer that sleeps after a write that put it ahead of `rate` bytes per
/// second since `started`, until the host closes. Engines write a partition after releasing
/// its lock, so the sleeps fall between partitions.
struct Paced<'a> {
    inner: &'a mut dyn Write,
    rate: u64,
    started: Instant,
    written: u64,
    closed: &'a AtomicBool,
}

impl Write for Paced<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        #[expect(clippy::cast_precision_loss)]
        // NOTE: a pace needs no more than f64 precision.
        let due = Duration::from_secs_f64(self.written as f64 / self.rate as f64);
        let ahead = due.saturating_sub(self.started.elapsed());
        if ahead >= SNAPSHOT_PACE_SLEEP_MIN && !self.closed.load(Ordering::Relaxed) {
            std::thread::sleep(ahead);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn snapshot_now(inner: &Inner, pace: Pace) -> Result<Option<PathBuf>> {
    let Some(binlog) = inner.binlog() else {
        return Ok(None);
    };
    let _one_at_a_time = inner.snapshot_lock.lock();
    let started = Instant::now();
    // The position is taken before the engine writes anything: every partition's image is
    // at or past it, so replay from here reaches every record any partition lacks.
    let (pos, chain, time) = binlog.mark();
    let existing = inner
        .cfg
        .dir
        .join(snapshot_file_name(&inner.cfg.engine, pos));
    if existing.exists() && validate(&existing).is_ok() {
        return Ok(Some(existing));
    }
    check_snapshot_space(inner)?;
    let header = FileHeader {
        engine: inner.cfg.engine.clone(),
        shard: inner.cfg.shard,
        pos,
        chain,
        time,
        created: inner.cfg.clock.now(),
    };
    let engine = &inner.engine;
    let rate = match pace {
        Pace::Full => 0,
        Pace::Configured => inner.cfg.snapshot_rate,
    };
    let path = crate::snapshot::write(
        &inner.cfg.dir,
        &header,
        &mut |w| {
            let written = if rate == 0 {
                engine.write_snapshot(w)
            } else {
                engine.write_snapshot(&mut Paced {
                    inner: w,
                    rate,
                    started: Instant::now(),
                    written: 0,
                    closed: &inner.closed,
                })
            };
            written.map_err(Error::Engine)
        },
        // Partitions may hold records appended while the body was written: make the log
        // durable past them before the snapshot can be loaded, or a crash could leave a
        // snapshot ahead of the log.
        &mut || binlog.sync().map(|_| ()),
    )?;
    inner.last_snapshot_pos.store(pos, Ordering::Relaxed);
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    inner.last_snapshot_ms.store(ms, Ordering::Relaxed);
    inner.snapshots_written.fetch_add(1, Ordering::Relaxed);
    tracing::info!("snapshot {} written in {ms} ms", path.display());
    apply_retention(&inner.cfg)?;
    Ok(Some(path))
}

fn apply_retention(cfg: &PersistConfig) -> Result<()> {
    let r = cfg.retention;
    if r.snapshots_keep == 0 && !r.delete_covered_segments {
        return Ok(());
    }
    let snaps = list_snapshots(&cfg.dir, &cfg.engine)?;
    let keep_from = if r.snapshots_keep == 0 {
        0
    } else {
        snaps.len().saturating_sub(r.snapshots_keep)
    };
    for old in &snaps[..keep_from] {
        std::fs::remove_file(&old.path).ctx(&old.path)?;
        tracing::info!("retention: removed snapshot {}", old.path.display());
    }
    if r.delete_covered_segments {
        if let Some(oldest_kept) = snaps.get(keep_from) {
            let segments = list(&cfg.dir, Some(&cfg.engine), "bin")?;
            for pair in segments.windows(2) {
                if pair[1].pos <= oldest_kept.pos {
                    std::fs::remove_file(&pair[0].path).ctx(&pair[0].path)?;
                    tracing::info!("retention: removed segment {}", pair[0].path.display());
                }
            }
        }
    }
    sync_dir(&cfg.dir)
}
