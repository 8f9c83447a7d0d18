//! The journal of a replica: refuses writes (naming its primary), receives the primary's log
//! into the local directory ([`crate::repl::Receiver`]) and applies each new record through
//! the engine's replay path on one thread, until promoted to a [`Binlog`] of its own.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use koshka_engine::{Appended, ApplyCtx, Engine, Journal};
use parking_lot::Mutex;

use crate::clock::LogClock;
use crate::end::LogEnd;
use crate::error::{Error, IoContext, Result};
use crate::format::{is_reserved, SEGMENT_HEADER_SIZE};
use crate::fsutil::list;
use crate::repl::{
    FollowerState, Receiver, ReplicaEnd, ShipSink, Shipped, RECONNECT_MAX, RECONNECT_MIN,
};
use crate::writer::{Binlog, BinlogConfig};

/// Where the applied log ends (what a promotion continues from).
#[derive(Debug, Clone, Copy, Default)]
struct Applied {
    pos: u64,
    chain: u32,
    time: u32,
}

/// Counters shared between the follower thread and `stats`.
#[derive(Debug)]
pub(crate) struct Progress {
    pub(crate) state: Arc<FollowerState>,
    applied: Mutex<Applied>,
    applied_pos: AtomicU64,
    records: AtomicU64,
    caught_up_at: Mutex<Instant>,
    failed: Mutex<Option<String>>,
}

/// A replica's journal; see the module docs.
pub(crate) struct ReplicaLog {
    primary: Arc<Mutex<String>>,
    clock: LogClock,
    pub(crate) progress: Arc<Progress>,
    pub(crate) promoted: OnceLock<Binlog>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
    writer_cfg: BinlogConfig,
}

impl std::fmt::Debug for ReplicaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaLog")
            .field("primary", &*self.primary.lock())
            .finish_non_exhaustive()
    }
}

impl ReplicaLog {
    /// Starts following `primary` from `end` (where the local log's replay ended).
    pub(crate) fn start(
        engine: Arc<dyn Engine>,
        writer_cfg: BinlogConfig,
        primary: &str,
        end: &LogEnd,
    ) -> Result<Self> {
        let state = Arc::new(FollowerState::default());
        let progress = Arc::new(Progress {
            state: Arc::clone(&state),
            applied: Mutex::new(Applied {
                pos: end.pos,
                chain: end.chain,
                time: end.time,
            }),
            applied_pos: AtomicU64::new(end.pos),
            records: AtomicU64::new(0),
            caught_up_at: Mutex::new(Instant::now()),
            failed: Mutex::new(None),
        });
        state.received.store(end.pos, Ordering::Relaxed);
        let receiver = Receiver::new(
            &writer_cfg.dir,
            &writer_cfg.engine,
            writer_cfg.shard,
            primary,
            state,
        )?;
        let primary_handle = receiver.primary_handle();
        let stop = Arc::new(AtomicBool::new(false));
        let mut follower = Follower {
            engine,
            dir: writer_cfg.dir.clone(),
            engine_name: writer_cfg.engine.clone(),
            progress: Arc::clone(&progress),
            applied: 0,
        };
        let stop_in = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("replica-{}", writer_cfg.engine))
            .spawn(move || follower.run(receiver, &stop_in))
            .ctx(&writer_cfg.dir)?;
        Ok(Self {
            primary: primary_handle,
            clock: LogClock::new(Arc::clone(&writer_cfg.clock), end.time),
            progress,
            promoted: OnceLock::new(),
            stop,
            thread: Mutex::new(Some(thread)),
            writer_cfg,
        })
    }

    /// The replication address followed now.
    pub(crate) fn primary(&self) -> String {
        self.primary.lock().clone()
    }

    /// Follows another primary from the next connection on (the current one is dropped).
    pub(crate) fn retarget(&self, primary: &str) {
        let mut p = self.primary.lock();
        if *p != primary {
            tracing::warn!("replica now follows {primary} (was {})", *p);
            *p = primary.to_string();
            self.progress.state.retarget.store(true, Ordering::Release);
        }
    }

    /// Position up to which the primary's log is applied.
    pub(crate) fn applied_pos(&self) -> u64 {
        self.progress.applied_pos.load(Ordering::Acquire)
    }

    /// Stops following (idempotent).
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }

    /// Stops following and opens a writer of its own at the end of the applied log (a torn
    /// record past it is cut). Returns the position writes continue from.
    pub(crate) fn promote(&self) -> Result<u64> {
        if let Some(b) = self.promoted.get() {
            return Ok(b.mark().0);
        }
        self.stop.store(true, Ordering::Release);
        let Some(thread) = self.thread.lock().take() else {
            return Err(Error::Replication("promotion already under way".into()));
        };
        thread
            .join()
            .map_err(|_| Error::Replication("the replica thread panicked".into()))?;
        if let Some(reason) = self.progress.failed.lock().clone() {
            return Err(Error::Replication(format!(
                "cannot promote a replica that failed to apply its log: {reason}"
            )));
        }
        let applied = *self.progress.applied.lock();
        let segment = list(&self.writer_cfg.dir, Some(&self.writer_cfg.engine), "bin")?
            .into_iter()
            .rev()
            .find(|s| s.pos <= applied.pos);
        let segment = match segment {
            Some(s) if s.len >= SEGMENT_HEADER_SIZE as u64 => {
                let keep = SEGMENT_HEADER_SIZE as u64 + (applied.pos - s.pos);
                // Later segments (a header only, the primary died before any record) go.
                for later in list(&self.writer_cfg.dir, Some(&self.writer_cfg.engine), "bin")?
                    .into_iter()
                    .filter(|l| l.pos > s.pos)
                {
                    crate::fsutil::move_aside(&later.path, "torn")?;
                }
                if s.len > keep {
                    eprintln!(
                        "koshka {}: promotion cuts a torn record at offset {keep} of {}",
                        self.writer_cfg.engine,
                        s.path.display()
                    );
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(&s.path)
                        .ctx(&s.path)?;
                    f.set_len(keep).ctx(&s.path)?;
                    f.sync_all().ctx(&s.path)?;
                }
                Some((s.path, s.pos))
            }
            _ => None,
        };
        let binlog = Binlog::open_at(
            self.writer_cfg.clone(),
            LogEnd {
                pos: applied.pos,
                chain: applied.chain,
                time: applied.time.max(self.clock.now()),
                segment,
            },
        )?;
        let pos = binlog.mark().0;
        let _ = self.promoted.set(binlog);
        Ok(pos)
    }

    /// `repl_*` statistics of a replica.
    pub(crate) fn stats(&self) -> Vec<(&'static str, String)> {
        let p = &self.progress;
        let s = &p.state;
        let applied = p.applied_pos.load(Ordering::Acquire);
        let primary = s.primary_pos.load(Ordering::Acquire).max(applied);
        let lag_seconds = if applied >= primary {
            0.0
        } else {
            p.caught_up_at.lock().elapsed().as_secs_f64()
        };
        let role = if self.promoted.get().is_some() {
            "primary (promoted)"
        } else if p.failed.lock().is_some() {
            "replica (failed)"
        } else if s.diverged.load(Ordering::Acquire) {
            "replica (diverged)"
        } else {
            "replica"
        };
        vec![
            ("repl_role", role.to_string()),
            ("repl_primary", self.primary()),
            (
                "repl_connected",
                u8::from(s.connected.load(Ordering::Acquire)).to_string(),
            ),
            (
                "repl_connections",
                s.connections.load(Ordering::Relaxed).to_string(),
            ),
            ("repl_applied_pos", applied.to_string()),
            (
                "repl_received_pos",
                s.received.load(Ordering::Acquire).to_string(),
            ),
            ("repl_primary_pos", primary.to_string()),
            ("repl_lag_bytes", (primary - applied).to_string()),
            ("repl_lag_seconds", format!("{lag_seconds:.3}")),
            (
                "repl_applied_records",
                p.records.load(Ordering::Relaxed).to_string(),
            ),
            (
                "repl_last_error",
                s.last_error.lock().replace(['\r', '\n'], " "),
            ),
        ]
    }
}

impl Journal for ReplicaLog {
    fn append(&self, record_type: u16, payload: &[u8]) -> koshka_engine::Result<Appended> {
        match self.promoted.get() {
            Some(b) => b.append(record_type, payload),
            None => Err(koshka_engine::Error::Server(format!(
                "read-only replica: this node follows the primary at replication address {}; \
                 send writes to the primary",
                self.primary.lock()
            ))),
        }
    }

    fn now(&self) -> u32 {
        match self.promoted.get() {
            Some(b) => b.now(),
            None => self.clock.now(),
        }
    }
}

/// The follower thread's state.
struct Follower {
    engine: Arc<dyn Engine>,
    dir: PathBuf,
    engine_name: String,
    progress: Arc<Progress>,
    /// Records applied in the current burst (added to the counter per burst).
    applied: u64,
}

impl Follower {
    fn run(&mut self, mut receiver: Receiver, stop: &AtomicBool) {
        let mut pause = RECONNECT_MIN;
        while !stop.load(Ordering::Acquire) {
            let (end, time) = match self.end() {
                Ok(end) => end,
                Err(e) => {
                    self.fail(&e.to_string());
                    return;
                }
            };
            let connected_before = self.progress.state.connections.load(Ordering::Relaxed);
            let result = receiver.run_once(&end, time, stop, self);
            if let Err(e) = result {
                if self.progress.failed.lock().is_some() {
                    return;
                }
                let msg = e.to_string();
                let mut last = self.progress.state.last_error.lock();
                if *last != msg {
                    tracing::warn!("{} replica: {msg}", self.engine_name);
                    *last = msg;
                }
            }
            // A connection that worked resets the back-off.
            if self.progress.state.connections.load(Ordering::Relaxed) != connected_before {
                pause = RECONNECT_MIN;
            }
            let _ = receiver.sync();
            let jitter = Duration::from_micros(u64::from(std::process::id() % 1000) * 20);
            let deadline = Instant::now() + pause + jitter;
            while Instant::now() < deadline && !stop.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(10));
            }
            pause = (pause * 2).min(RECONNECT_MAX);
        }
        let _ = receiver.sync();
    }

    fn fail(&self, reason: &str) {
        tracing::error!("{} replica stops following: {reason}", self.engine_name);
        *self.progress.failed.lock() = Some(reason.to_string());
        *self.progress.state.last_error.lock() = reason.to_string();
    }

    fn end(&self) -> Result<(ReplicaEnd, u32)> {
        let applied = *self.progress.applied.lock();
        let end =
            crate::repl::replica_end(&self.dir, &self.engine_name, applied.pos, applied.chain)?;
        Ok((end, applied.time))
    }

    fn caught_up_check(&self) {
        let primary = self.progress.state.primary_pos.load(Ordering::Acquire);
        if self.progress.applied_pos.load(Ordering::Acquire) >= primary {
            *self.progress.caught_up_at.lock() = Instant::now();
        }
    }
}

impl ShipSink for Follower {
    fn record(&mut self, rec: &Shipped<'_>) -> Result<()> {
        if !is_reserved(rec.record_type) {
            let ctx = ApplyCtx {
                pos: rec.pos,
                time: rec.time,
            };
            if let Err(e) = self.engine.apply(rec.record_type, rec.payload, ctx) {
                let reason = format!(
                    "record of type {:#06x} ending at log position {} does not apply: {e}",
                    rec.record_type, rec.pos
                );
                self.fail(&reason);
                return Err(Error::Replication(reason));
            }
            self.applied += 1;
            if self.applied >= 1024 {
                self.progress
                    .records
                    .fetch_add(std::mem::take(&mut self.applied), Ordering::Relaxed);
            }
        }
        *self.progress.applied.lock() = Applied {
            pos: rec.pos,
            chain: rec.chain,
            time: rec.time,
        };
        self.progress.applied_pos.store(rec.pos, Ordering::Release);
        Ok(())
    }

    fn snapshot(&mut self, path: &Path) -> Result<()> {
        let info = crate::snapshot::validate(path)?;
        crate::host::load_snapshot(self.engine.as_ref(), &info)?;
        *self.progress.applied.lock() = Applied {
            pos: info.header.pos,
            chain: info.header.chain,
            time: info.header.time,
        };
        self.progress
            .applied_pos
            .store(info.header.pos, Ordering::Release);
        Ok(())
    }

    fn burst_done(&mut self) {
        self.progress
            .records
            .fetch_add(std::mem::take(&mut self.applied), Ordering::Relaxed);
        self.caught_up_check();
    }
}
