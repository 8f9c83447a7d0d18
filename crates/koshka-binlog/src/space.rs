//! Disk space reserved ahead of appends, so that a full disk refuses writes *before* the
//! engine applies them, instead of failing write(2) after they are visible.
//!
//! ```text
//!  current segment                                    spare file <engine>.spare
//! +--------+------------------+~~~~~~~~~~~~~~~~~~+   +--------+~~~~~~~~~~~~~~~~~~~~~~+
//! | header | records written  | reserved, unused |   | (size 0; header + one chunk   |
//! |        | (or buffered)    | fallocate(KEEP_  |   |  reserved with fallocate)     |
//! |        |                  |  SIZE), past EOF |   +--------+~~~~~~~~~~~~~~~~~~~~~~+
//! +--------+------------------+~~~~~~~~~~~~~~~~~~+         │ becomes the next segment at
//!          seg_start ...   end          reserved_end       │ rotation (hard link + unlink)
//! ```
//! An append is admitted only when its bytes fit below `reserved_end` (a compare under the
//! append mutex). When they do not, the appender extends the reservation by a chunk
//! ([`SPACE_RESERVE_CHUNK`], clamped to the segment size; halved on ENOSPC down to the bytes
//! the append needs, so a nearly full disk is used up) with `fallocate(KEEP_SIZE)`; a
//! rotation claims the spare file, whose first chunk is reserved already. Either call can
//! fail with ENOSPC: the append is then refused with `disk full` before anything is applied,
//! nothing is poisoned, and the next append simply tries again, so writes resume by
//! themselves once space is freed. The writer replaces a consumed spare after each rotation.
//!
//! Only one rotation ahead of the writer can hold the spare; an appender that runs a second
//! segment ahead, or past the reservation of a segment the writer has not created yet, waits
//! for the writer to catch up (back-pressure that only tiny segments or a stalled disk see).
//!
//! Where `fallocate` is not supported (the file system says EOPNOTSUPP, or the segment is
//! not a regular file), reservations fall back to checking free space with `statvfs`
//! ([`SPACE_CHECK_SLACK`] above what is needed). That check is a promise, not a reservation:
//! another process may take the space before the writer uses it, and a write(2) that then
//! fails still poisons the log.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rustix::io::Errno;

use crate::format::SEGMENT_HEADER_SIZE;

/// Bytes reserved at a time past the written end of a segment (and in the spare file).
/// Large enough that an extension (one `fallocate`, a few milliseconds at worst) happens
/// once per 16 MiB of log; small enough that a data directory idles with at most two chunks
/// per engine reserved. Clamped to the segment size.
pub const SPACE_RESERVE_CHUNK: u64 = 16 * 1024 * 1024;

/// Free space required beyond the bytes themselves when reservations fall back to `statvfs`
/// (file systems without `fallocate`): room for the metadata blocks a segment needs.
pub const SPACE_CHECK_SLACK: u64 = 64 * 1024;

const HEADER: u64 = SEGMENT_HEADER_SIZE as u64;

/// What an appender needs reserved before its bytes are admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// Log positions `from..end` of the segment starting at `seg`.
    Extend { seg: u64, from: u64, end: u64 },
    /// Room for the next segment; the appender's current segment starts at `after`.
    Rotation { after: u64 },
}

/// Space granted for the next segment's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NextGrant {
    /// Record bytes reserved (or checked, when not `spare`).
    pub(crate) len: u64,
    /// The bytes are reserved in the spare file, which the rotation must use.
    pub(crate) spare: bool,
}

/// The answer to a [`Need`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The segment starting at `seg` has space up to log position `end`.
    Extended { seg: u64, end: u64 },
    /// Space for the next segment.
    Next(NextGrant),
    /// Wait until the writer has written up to this position (it creates the segment the
    /// need is about, or releases the spare), then ask again.
    WaitFor(u64),
    /// Refused: the append fails with this reason.
    Refused(Refusal),
}

/// Why space could not be reserved.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// ENOSPC or EDQUOT (rather than another I/O error).
    pub(crate) full: bool,
    /// Human-readable reason, naming the file.
    pub(crate) reason: String,
}

/// The spare file: the next segment, with its first chunk reserved.
#[derive(Debug)]
pub(crate) struct Spare {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
    /// Record bytes reserved after the header.
    pub(crate) len: u64,
}

/// The reservation ledger of one log. Lives in the writer's `ledger` mutex.
#[derive(Debug)]
pub(crate) struct Ledger {
    dir: PathBuf,
    spare_path: PathBuf,
    segment_size: u64,
    chunk: u64,
    /// Start of the segment the writer writes (the newest one it created).
    seg_start: u64,
    file: Arc<File>,
    /// Log position up to which that segment's space is allocated.
    reserved_end: u64,
    spare: Option<Spare>,
    /// A rotation holds the spare (granted, possibly not yet carried out by the writer).
    spare_claimed: bool,
    /// `fallocate` works on this directory's file system.
    fallocate: bool,
}

enum Alloc {
    Done,
    Full(std::io::Error),
    Unsupported,
    Failed(std::io::Error),
}

fn allocate(file: &File, offset: u64, len: u64) -> Alloc {
    if len == 0 {
        return Alloc::Done;
    }
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::KEEP_SIZE, offset, len) {
        Ok(()) => Alloc::Done,
        Err(Errno::NOSPC | Errno::DQUOT) => Alloc::Full(std::io::Error::from_raw_os_error(
            Errno::NOSPC.raw_os_error(),
        )),
        Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::NODEV | Errno::INVAL | Errno::SPIPE) => {
            Alloc::Unsupported
        }
        Err(e) => Alloc::Failed(e.into()),
    }
}

/// Bytes available to unprivileged users in the file system holding `dir`.
///
/// # Errors
/// The `statvfs` failure.
pub fn available(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

impl Ledger {
    /// A ledger for a log whose current segment starts at `seg_start` and ends at `end`:
    /// reserves the first chunk past `end` and creates the spare, both on a best-effort
    /// basis (a full disk at start-up refuses appends later, it does not stop the open).
    pub(crate) fn new(
        dir: &Path,
        engine: &str,
        segment_size: u64,
        seg_start: u64,
        file: Arc<File>,
        end: u64,
    ) -> Self {
        let mut ledger = Self {
            dir: dir.to_path_buf(),
            spare_path: spare_path(dir, engine),
            segment_size,
            chunk: SPACE_RESERVE_CHUNK.min(segment_size),
            seg_start,
            file,
            reserved_end: end,
            spare: None,
            spare_claimed: false,
            fallocate: true,
        };
        ledger.remove_spare();
        let target = ledger.target(seg_start, end, end);
        match allocate(&ledger.file, HEADER + end - seg_start, target - end) {
            Alloc::Done => ledger.reserved_end = target,
            Alloc::Unsupported => ledger.unsupported(),
            Alloc::Full(e) | Alloc::Failed(e) => {
                tracing::warn!("binlog: cannot reserve space in {}: {e}", dir.display());
            }
        }
        ledger.replenish();
        ledger
    }

    /// Log position up to which the writer's current segment has space.
    pub(crate) fn reserved_end(&self) -> u64 {
        self.reserved_end
    }

    /// Where a reservation from `from` covering `end` should reach: a chunk ahead, within the
    /// segment (or exactly `end` for a record larger than the segment).
    fn target(&self, seg: u64, from: u64, end: u64) -> u64 {
        let cap = seg.saturating_add(self.segment_size);
        from.saturating_add(self.chunk).max(end).min(cap).max(end)
    }

    fn unsupported(&mut self) {
        if self.fallocate {
            tracing::info!(
                "binlog: fallocate is not supported in {}; disk space is checked with statvfs \
                 instead of reserved",
                self.dir.display()
            );
        }
        self.fallocate = false;
        self.remove_spare();
    }

    /// Answers an appender's need. Called with the ledger mutex held; may call `fallocate`,
    /// `statvfs` or create the spare file.
    pub(crate) fn answer(&mut self, need: Need) -> Answer {
        match need {
            Need::Extend { seg, from, end } => self.extend(seg, from, end),
            Need::Rotation { after } => self.rotation(after),
        }
    }

    fn extend(&mut self, seg: u64, from: u64, end: u64) -> Answer {
        if seg < self.seg_start {
            // The appender's view is stale (the writer moved past that segment): no-op.
            return Answer::Extended { seg, end: from };
        }
        let target = self.target(seg, from, end);
        if self.fallocate && seg > self.seg_start {
            return Answer::WaitFor(seg);
        }
        if self.fallocate {
            if self.reserved_end >= end {
                return Answer::Extended {
                    seg,
                    end: self.reserved_end,
                };
            }
            let start = self.reserved_end;
            // A whole chunk first; on ENOSPC halve it, down to the bytes needed, so a nearly
            // full disk is used to its last block before appends are refused.
            let mut len = target.max(end) - start;
            loop {
                match allocate(&self.file, HEADER + start - seg, len) {
                    Alloc::Done => {
                        self.reserved_end = start + len;
                        return Answer::Extended {
                            seg,
                            end: start + len,
                        };
                    }
                    Alloc::Full(_) if len > end - start => len = (len / 2).max(end - start),
                    Alloc::Full(e) => return self.refuse(true, &e, len),
                    Alloc::Failed(e) => return self.refuse(false, &e, len),
                    Alloc::Unsupported => {
                        self.unsupported();
                        break;
                    }
                }
            }
        }
        match self.check_free(target.saturating_sub(from)) {
            Ok(()) => Answer::Extended { seg, end: target },
            Err(r) => Answer::Refused(r),
        }
    }

    fn rotation(&mut self, after: u64) -> Answer {
        if self.fallocate {
            if self.spare_claimed {
                return Answer::WaitFor(after);
            }
            if self.spare.is_none() {
                if let Err(r) = self.create_spare() {
                    if self.fallocate {
                        return Answer::Refused(r);
                    }
                }
            }
            if let Some(spare) = &self.spare {
                self.spare_claimed = true;
                return Answer::Next(NextGrant {
                    len: spare.len,
                    spare: true,
                });
            }
        }
        match self.check_free(HEADER + self.chunk) {
            Ok(()) => Answer::Next(NextGrant {
                len: self.chunk,
                spare: false,
            }),
            Err(r) => Answer::Refused(r),
        }
    }

    fn refuse(&self, full: bool, e: &std::io::Error, bytes: u64) -> Answer {
        Answer::Refused(Refusal {
            full,
            reason: format!(
                "cannot reserve {bytes} bytes in {}: {e}",
                self.dir.display()
            ),
        })
    }

    fn check_free(&self, bytes: u64) -> Result<(), Refusal> {
        let need = bytes.saturating_add(SPACE_CHECK_SLACK);
        match available(&self.dir) {
            Ok(free) if free >= need => Ok(()),
            Ok(free) => Err(Refusal {
                full: true,
                reason: format!("{free} bytes free in {}, {need} needed", self.dir.display()),
            }),
            Err(e) => Err(Refusal {
                full: false,
                reason: format!("statvfs {}: {e}", self.dir.display()),
            }),
        }
    }

    /// Creates the spare file with header + one chunk reserved. On failure no file is left.
    fn create_spare(&mut self) -> Result<(), Refusal> {
        let path = &self.spare_path;
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Refusal {
                full: e.raw_os_error() == Some(Errno::NOSPC.raw_os_error()),
                reason: format!("cannot create {}: {e}", path.display()),
            })?;
        let outcome = allocate(&file, 0, HEADER + self.chunk);
        let unsupported = matches!(outcome, Alloc::Unsupported);
        let refusal = match outcome {
            Alloc::Done => {
                self.spare = Some(Spare {
                    file,
                    path: path.clone(),
                    len: self.chunk,
                });
                return Ok(());
            }
            Alloc::Full(e) => Refusal {
                full: true,
                reason: format!(
                    "cannot reserve {} bytes in {}: {e}",
                    HEADER + self.chunk,
                    path.display()
                ),
            },
            Alloc::Failed(e) => Refusal {
                full: false,
                reason: format!("fallocate {}: {e}", path.display()),
            },
            Alloc::Unsupported => Refusal {
                full: false,
                reason: "fallocate not supported".into(),
            },
        };
        drop(file);
        let _ = std::fs::remove_file(path);
        if unsupported {
            self.unsupported();
        }
        Err(refusal)
    }

    /// Creates the spare if there is none (writer, after a rotation; best effort).
    pub(crate) fn replenish(&mut self) {
        if self.fallocate && self.spare.is_none() && !self.spare_claimed {
            if let Err(r) = self.create_spare() {
                tracing::debug!("binlog: no spare segment yet: {}", r.reason);
            }
        }
    }

    /// The writer carries out a rotation granted the spare.
    ///
    /// # Panics
    /// If there is no spare: a rotation was granted one that does not exist (a bug).
    pub(crate) fn take_spare(&mut self) -> Spare {
        assert!(self.spare_claimed, "spare taken without a claim");
        self.spare_claimed = false;
        let Some(spare) = self.spare.take() else {
            unreachable!("a rotation was granted the spare, but there is none")
        };
        spare
    }

    /// Reserves the first chunk of a segment the writer created without the spare; returns
    /// the record bytes reserved (0 when that failed: appends will extend or be refused).
    pub(crate) fn preallocate(&mut self, file: &File) -> u64 {
        if !self.fallocate {
            return 0;
        }
        match allocate(file, 0, HEADER + self.chunk) {
            Alloc::Done => self.chunk,
            Alloc::Unsupported => {
                self.unsupported();
                0
            }
            Alloc::Full(_) | Alloc::Failed(_) => 0,
        }
    }

    /// The writer now writes the segment starting at `seg_start`, with space up to
    /// `reserved_end`.
    pub(crate) fn created(&mut self, seg_start: u64, file: Arc<File>, reserved_end: u64) {
        assert!(seg_start > self.seg_start, "segments go forward");
        self.seg_start = seg_start;
        self.file = file;
        self.reserved_end = reserved_end;
    }

    /// Deletes the spare file (at open: a leftover of a crash; at close).
    pub(crate) fn remove_spare(&mut self) {
        self.spare = None;
        self.spare_claimed = false;
        match std::fs::remove_file(&self.spare_path) {
            Ok(()) => tracing::debug!("binlog: removed {}", self.spare_path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("binlog: cannot remove {}: {e}", self.spare_path.display()),
        }
    }
}

/// Path of an engine's spare file: `<engine>.spare` (not a segment name, so readers and
/// tools ignore it).
#[must_use]
pub fn spare_path(dir: &Path, engine: &str) -> PathBuf {
    dir.join(format!("{engine}.spare"))
}

/// The disk-full state of one log: counts refusals and logs a line when writes start and
/// stop being refused (not one per write).
#[derive(Debug, Default)]
pub(crate) struct DiskFull {
    refusing: AtomicBool,
    refusals: AtomicU64,
}

impl DiskFull {
    /// An append was refused.
    pub(crate) fn refused(&self, engine: &str, reason: &str) {
        self.refusals.fetch_add(1, Ordering::Relaxed);
        if !self.refusing.swap(true, Ordering::AcqRel) {
            tracing::error!(
                "binlog {engine}: refusing writes until disk space is freed (reads go on): \
                 {reason}"
            );
        }
    }

    /// An append was admitted.
    pub(crate) fn admitted(&self, engine: &str) {
        if self.refusing.load(Ordering::Relaxed) && self.refusing.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                "binlog {engine}: disk space available again, writes resume ({} refused so far)",
                self.refusals()
            );
        }
    }

    /// Whether the last append was refused.
    pub(crate) fn refusing(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }

    /// Appends refused since open.
    pub(crate) fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Relaxed)
    }
}
