//! [`Host`]: one engine's persistence — start-up (snapshot + replay), the journal, background
//! snapshots, retention, shutdown and statistics.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use koshka_engine::{unix_now, ApplyCtx, Engine, Journal, MemoryJournal, ShardSpec};
use koshka_limits::Limits;
use parking_lot::{Condvar, Mutex};

use crate::error::{Error, IoContext, Result};
use crate::format::{check_engine_name, is_reserved, snapshot_file_name, FileHeader};
use crate::fsutil::{list, sync_dir};
use crate::reader::ReadOptions;
use crate::recover::replay;
use crate::snapshot::{list_snapshots, open_body, validate, SnapshotInfo};
use crate::writer::{Binlog, BinlogConfig, Durability};

/// How often the snapshot thread checks whether the log grew past the snapshot threshold.
pub const SNAPSHOT_CHECK_INTERVAL: Duration = Duration::from_millis(200);

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
    /// Truncate the log at mid-log corruption instead of refusing to start.
    pub repair: bool,
    /// Print replay progress to stderr on long start-ups.
    pub progress: bool,
}

impl PersistConfig {
    /// Settings from `limits` with durability `everysec`, shard 0 of 1, snapshot on shutdown,
    /// keep everything, no repair.
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
            repair: false,
            progress: true,
        }
    }
}

enum JournalImpl {
    Log(Binlog),
    Memory(MemoryJournal),
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
    loaded_snapshot_pos: Option<u64>,
    replay_records: u64,
    replay_bytes: u64,
    replay_seconds: f64,
    closed: AtomicBool,
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
    /// Starts an engine: loads the newest valid snapshot (falling back to older ones when one
    /// fails validation), replays the log from the snapshot's position, cuts a torn tail, and
    /// opens the writer. With durability `none` nothing is read or written.
    ///
    /// # Errors
    /// Corruption in the log (unless `repair`), a broken segment chain, a snapshot that
    /// validates but does not load or does not match the log, engine apply errors, I/O errors.
    pub fn open(engine: Arc<dyn Engine>, config: PersistConfig) -> Result<Self> {
        check_engine_name(&config.engine).map_err(Error::Config)?;
        if config.durability == Durability::None {
            return Ok(Self::start(
                engine,
                config,
                JournalImpl::Memory(MemoryJournal::default()),
                None,
                (0, 0, 0.0),
            ));
        }
        std::fs::create_dir_all(&config.dir).ctx(&config.dir)?;
        let snapshot = newest_valid_snapshot(&config)?;
        let from = match &snapshot {
            Some(info) => {
                let mut body = open_body(info)?;
                engine
                    .load_snapshot(&mut body)
                    .map_err(|e| Error::Snapshot {
                        path: info.path.clone(),
                        reason: format!("engine failed to load it: {e}"),
                    })?;
                Some((info.header.pos, info.header.chain))
            }
            None => None,
        };
        let opts = ReadOptions {
            repair: config.repair,
            shard: Some(config.shard),
            ..Default::default()
        };
        let label = format!("koshka {}", config.engine);
        let eng = Arc::clone(&engine);
        let outcome = replay(
            &config.dir,
            &config.engine,
            from,
            opts,
            &mut |rec| {
                if is_reserved(rec.record_type) {
                    return Ok(());
                }
                eng.apply(
                    rec.record_type,
                    rec.payload,
                    ApplyCtx {
                        pos: rec.pos,
                        time: rec.time,
                    },
                )
                .map_err(|source| Error::Replay {
                    pos: rec.pos,
                    record_type: rec.record_type,
                    source,
                })
            },
            config.progress.then_some(label.as_str()),
        )?;
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
        let binlog = Binlog::open_at(
            BinlogConfig {
                dir: config.dir.clone(),
                engine: config.engine.clone(),
                shard: config.shard,
                durability: config.durability,
                segment_size: config.segment_size,
            },
            outcome.end.clone(),
        )?;
        let loaded = snapshot.map(|s| s.header.pos);
        Ok(Self::start(
            engine,
            config,
            JournalImpl::Log(binlog),
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
        let persistent = matches!(journal, JournalImpl::Log(_));
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
            loaded_snapshot_pos: loaded,
            replay_records: records,
            replay_bytes: bytes,
            replay_seconds: seconds,
            closed: AtomicBool::new(false),
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
            JournalImpl::Log(b) => b,
            JournalImpl::Memory(m) => m,
        }
    }

    /// The binlog writer, unless durability is `none`.
    #[must_use]
    pub fn binlog(&self) -> Option<&Binlog> {
        match &self.inner.journal {
            JournalImpl::Log(b) => Some(b),
            JournalImpl::Memory(_) => None,
        }
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
        match &self.inner.journal {
            JournalImpl::Log(b) => b.wait_acked(pos).await,
            JournalImpl::Memory(_) => Ok(()),
        }
    }

    /// Blocking form of [`Host::wait_acked`].
    ///
    /// # Errors
    /// As [`Host::wait_acked`].
    pub fn wait_acked_blocking(&self, pos: u64) -> koshka_engine::Result<()> {
        match &self.inner.journal {
            JournalImpl::Log(b) => b.wait_acked_blocking(pos),
            JournalImpl::Memory(_) => Ok(()),
        }
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
    /// I/O and engine errors; the previous snapshots stay.
    pub fn snapshot_now(&self) -> Result<Option<PathBuf>> {
        snapshot_now(&self.inner)
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
                "snapshot_loaded_pos",
                i.loaded_snapshot_pos
                    .map_or_else(|| "-1".to_string(), |p| p.to_string()),
            ),
            ("replay_records", i.replay_records.to_string()),
            ("replay_bytes", i.replay_bytes.to_string()),
            ("replay_seconds", format!("{:.3}", i.replay_seconds)),
        ];
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

fn snapshot_loop(inner: &Inner) {
    let JournalImpl::Log(binlog) = &inner.journal else {
        return;
    };
    let mut signal = inner.signal.lock();
    loop {
        if signal.stop {
            return;
        }
        let since = binlog
            .mark()
            .0
            .saturating_sub(inner.last_snapshot_pos.load(Ordering::Relaxed));
        let due = signal.requested
            || (inner.cfg.snapshot_log_bytes > 0 && since >= inner.cfg.snapshot_log_bytes);
        if due && !binlog.is_poisoned() {
            signal.requested = false;
            drop(signal);
            if let Err(e) = snapshot_now(inner) {
                tracing::error!("snapshot of {} failed: {e}", inner.cfg.engine);
                inner.snapshot_errors.fetch_add(1, Ordering::Relaxed);
                // Do not retry in a tight loop: wait for the next interval.
                std::thread::sleep(SNAPSHOT_CHECK_INTERVAL);
            }
            signal = inner.signal.lock();
            continue;
        }
        inner
            .signal_cv
            .wait_for(&mut signal, SNAPSHOT_CHECK_INTERVAL);
    }
}

fn snapshot_now(inner: &Inner) -> Result<Option<PathBuf>> {
    let JournalImpl::Log(binlog) = &inner.journal else {
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
    let header = FileHeader {
        engine: inner.cfg.engine.clone(),
        shard: inner.cfg.shard,
        pos,
        chain,
        time,
        created: unix_now(),
    };
    let engine = &inner.engine;
    let path = crate::snapshot::write(
        &inner.cfg.dir,
        &header,
        &mut |w| engine.write_snapshot(w).map_err(Error::Engine),
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
