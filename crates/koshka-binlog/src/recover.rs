//! Start-up recovery: read the log from a position to its end, hand every record to a
//! callback, cut a torn tail (or, when repairing, corruption) and report where the log ends.

use std::fs::OpenOptions;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::end::LogEnd;
use crate::error::{Error, IoContext, Result};
use crate::format::SEGMENT_HEADER_SIZE;
use crate::fsutil::{list, move_aside, sync_dir};
use crate::reader::{Cut, ReadOptions, Reader, Record};

/// Start-ups shorter than this print no progress.
pub const PROGRESS_AFTER: Duration = Duration::from_secs(1);

/// Shortest time between two progress lines.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// What a replay found.
#[derive(Debug, Clone, Default)]
pub struct ReplayOutcome {
    /// Where the (possibly cut) log ends.
    pub end: LogEnd,
    /// Records read (TIME records included).
    pub records: u64,
    /// Log bytes read.
    pub bytes: u64,
    /// Where the log was cut, if it was.
    pub cut: Option<Cut>,
    /// Wall time spent.
    pub seconds: f64,
}

/// Replays `engine`'s log in `dir` from `from` = (position, chain value there), or from the
/// beginning (which must be position 0), calling `on_record` for every record, TIME records
/// included. Afterwards a torn tail is truncated (an unusable segment is renamed `*.torn`);
/// with `opts.repair`, corruption is truncated too and later segments are renamed
/// `*.orphaned`. `progress`: a label for progress lines on stderr.
///
/// When the log holds nothing at `from` but an empty start there (no segment, or the only
/// segment's header is torn), the log is empty and starts at `from` with its chain value;
/// the time at the end is then 0 (the caller knows the time at `from`).
///
/// # Errors
/// Corruption (without repair), broken segment chains, a start position the log does not
/// hold or whose chain value differs, errors from `on_record`, I/O errors. An
/// [`Error::Engine`] returned by `on_record` is reported as [`Error::Replay`], naming the
/// segment file and the offset of the record.
pub fn replay(
    dir: &Path,
    engine: &str,
    from: Option<(u64, u32)>,
    opts: ReadOptions,
    on_record: &mut dyn FnMut(&Record<'_>) -> Result<()>,
    progress: Option<&str>,
) -> Result<ReplayOutcome> {
    replay_to(
        dir,
        engine,
        from,
        opts,
        &mut EachRecord(on_record),
        progress,
    )
}

/// Where [`replay_to`] hands the records it reads.
pub trait Sink {
    /// One record, TIME records included, in log order.
    ///
    /// # Errors
    /// Any error stops the replay; an [`Error::Engine`] is reported as [`Error::Replay`]
    /// naming this record's segment and offset.
    fn record(&mut self, record: &Record<'_>) -> Result<()>;

    /// Every record has been handed over: finish what is still being applied (apply threads
    /// drain here). Runs before a torn tail is cut, so a start-up that fails here has
    /// changed no file.
    ///
    /// # Errors
    /// Any error stops the replay and is returned as it is.
    fn finish(&mut self) -> Result<()>;
}

/// A closure as a [`Sink`] that has nothing to finish.
struct EachRecord<'a>(&'a mut dyn FnMut(&Record<'_>) -> Result<()>);

impl Sink for EachRecord<'_> {
    fn record(&mut self, record: &Record<'_>) -> Result<()> {
        (self.0)(record)
    }

    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// [`replay`] into a [`Sink`], whose [`Sink::finish`] runs after the last record and before
/// the torn tail (if any) is cut.
///
/// # Errors
/// As [`replay`], and errors from [`Sink::finish`].
pub fn replay_to(
    dir: &Path,
    engine: &str,
    from: Option<(u64, u32)>,
    opts: ReadOptions,
    sink: &mut dyn Sink,
    progress: Option<&str>,
) -> Result<ReplayOutcome> {
    let started = Instant::now();
    let mut reader = match from {
        Some((pos, chain)) => {
            let reader = Reader::open_at(dir, engine, pos, opts)?;
            if reader.start_known() && reader.chain() != chain {
                let (path, offset) = reader.location();
                return Err(Error::Position {
                    pos,
                    reason: format!(
                        "chain value {:08x} in the log (offset {offset} of {}) differs from \
                         {chain:08x} in the snapshot (the snapshot belongs to another log)",
                        reader.chain(),
                        path.display()
                    ),
                });
            }
            reader
        }
        None => {
            let reader = Reader::open(dir, engine, opts)?;
            if let Some(first) = reader.segments().first() {
                if first.pos != 0 {
                    return Err(Error::Position {
                        pos: 0,
                        reason: format!(
                            "the log starts at {} ({}) and no snapshot covers the part before",
                            first.pos,
                            first.path.display()
                        ),
                    });
                }
            }
            reader
        }
    };
    let start_pos = reader.pos();
    let total = reader.segments().last().map_or(0, |s| {
        s.pos
            .saturating_add(s.len.saturating_sub(SEGMENT_HEADER_SIZE as u64))
            .saturating_sub(start_pos)
    });
    let mut records = 0u64;
    let mut last_report = started;
    while let Some(record) = reader.next_record()? {
        let (start, end, record_type) = (record.start, record.pos, record.record_type);
        if let Err(e) = sink.record(&record) {
            return Err(locate(&reader, (start, end), record_type, e));
        }
        records += 1;
        if records & 0xfff == 0 {
            if let Some(label) = progress {
                let now = Instant::now();
                if now.duration_since(started) >= PROGRESS_AFTER
                    && now.duration_since(last_report) >= PROGRESS_INTERVAL
                {
                    last_report = now;
                    report(
                        label,
                        record.pos - start_pos,
                        total,
                        records,
                        started.elapsed(),
                    );
                }
            }
        }
    }
    sink.finish()?;
    let bytes = reader.pos() - start_pos;
    if let (Some(label), true) = (progress, started.elapsed() >= PROGRESS_AFTER) {
        report(label, bytes, total.max(bytes), records, started.elapsed());
    }
    let cut = reader.cut().cloned();
    if let Some(cut) = &cut {
        apply_cut(dir, engine, cut)?;
    }
    let segment = list(dir, Some(engine), "bin")?
        .pop()
        .map(|s| (s.path, s.pos));
    let chain = match from {
        Some((_, chain)) if !reader.start_known() => chain,
        _ => reader.chain(),
    };
    Ok(ReplayOutcome {
        end: LogEnd {
            pos: reader.pos(),
            chain,
            time: reader.time(),
            segment,
        },
        records,
        bytes,
        cut,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Turns an engine's failure to apply the record at log positions `start..end` into
/// [`Error::Replay`] with the segment file and offset of the record.
fn locate(reader: &Reader, (start, end): (u64, u64), record_type: u16, err: Error) -> Error {
    let Error::Engine(source) = err else {
        return err;
    };
    let (path, offset) = reader.current_segment().map_or_else(
        || (std::path::PathBuf::new(), 0),
        |seg| {
            (
                seg.path.clone(),
                SEGMENT_HEADER_SIZE as u64 + (start - seg.pos),
            )
        },
    );
    Error::Replay {
        path,
        offset,
        pos: end,
        record_type,
        source,
    }
}

fn report(label: &str, done: u64, total: u64, records: u64, elapsed: Duration) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    #[expect(clippy::cast_precision_loss)]
    // NOTE: progress figures need no more than f64 precision.
    let (pct, mbs, rps) = (
        if total == 0 {
            100.0
        } else {
            done as f64 * 100.0 / total as f64
        },
        done as f64 / secs / 1e6,
        records as f64 / secs,
    );
    eprintln!("{label}: replaying binlog {pct:5.1}%  {mbs:8.1} MB/s  {rps:10.0} records/s");
}

/// Makes the cut permanent: truncates the segment (or renames an unusable one aside) and,
/// for corruption, renames every later segment aside.
fn apply_cut(dir: &Path, engine: &str, cut: &Cut) -> Result<()> {
    if cut.offset < SEGMENT_HEADER_SIZE as u64 {
        let to = move_aside(&cut.path, ".torn")?;
        tracing::warn!(
            "binlog: renamed unusable segment {} to {}",
            cut.path.display(),
            to.display()
        );
    } else {
        let file = OpenOptions::new()
            .write(true)
            .open(&cut.path)
            .ctx(&cut.path)?;
        file.set_len(cut.offset).ctx(&cut.path)?;
        file.sync_all().ctx(&cut.path)?;
        tracing::warn!(
            "binlog: truncated {} at offset {} (log position {}): {}",
            cut.path.display(),
            cut.offset,
            cut.pos,
            cut.reason
        );
    }
    if cut.corrupt {
        for seg in list(dir, Some(engine), "bin")? {
            if seg.pos > cut.pos {
                let to = move_aside(&seg.path, ".orphaned")?;
                tracing::warn!(
                    "binlog repair: moved {} aside to {}",
                    seg.path.display(),
                    to.display()
                );
            }
        }
    }
    sync_dir(dir)
}
