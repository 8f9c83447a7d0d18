//! Operator tools behind `koshka binlog verify|dump|stat <dir>`.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use koshka_engine::ShardSpec;

use crate::error::{Error, IoContext, Result};
use crate::format::{FileHeader, RECORD_TYPE_TIME, SNAPSHOT_HEADER_SIZE, SNAPSHOT_MAGIC};
use crate::fsutil::engines_in;
use crate::reader::{Cut, ReadOptions, Reader};
use crate::snapshot::{list_snapshots, validate};

/// Payload bytes shown by [`dump`] per record.
pub const DUMP_PREVIEW_BYTES: usize = 24;

/// One segment as seen by [`verify`] / [`stat`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentReport {
    /// The file.
    pub path: PathBuf,
    /// Log position of its first record.
    pub start: u64,
    /// File size in bytes.
    pub bytes: u64,
    /// Records read from it (TIME records included).
    pub records: u64,
}

/// One snapshot as seen by [`verify`] / [`stat`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotReport {
    /// The file.
    pub path: PathBuf,
    /// Replay start position named by the file.
    pub pos: u64,
    /// File size.
    pub bytes: u64,
    /// Why it is unusable, if it is: damaged, or it does not fit the log (position outside
    /// it or not a record boundary, another log's chain value, another shard).
    pub error: Option<String>,
}

/// The state of one engine's files.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EngineReport {
    /// Engine name.
    pub engine: String,
    /// Shard named by the first segment.
    pub shard: Option<ShardSpec>,
    /// Segments, oldest first.
    pub segments: Vec<SegmentReport>,
    /// Snapshots, oldest first.
    pub snapshots: Vec<SnapshotReport>,
    /// Log position of the first record.
    pub start: u64,
    /// Log position just past the last valid record.
    pub end: u64,
    /// Records read.
    pub records: u64,
    /// First and last log time seen (TIME records).
    pub times: Option<(u32, u32)>,
    /// A torn tail (a warning: start-up cuts it).
    pub cut: Option<Cut>,
    /// A defect that stops start-up.
    pub error: Option<String>,
}

/// Result of [`verify`] / [`stat`] over a directory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// One entry per engine found.
    pub engines: Vec<EngineReport>,
}

impl Report {
    /// Whether nothing is damaged: no engine has an error and no snapshot is unusable (even
    /// one that start-up would skip for a newer good one). Torn tails are warnings only:
    /// start-up cuts them.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.engines
            .iter()
            .all(|e| e.error.is_none() && e.snapshots.iter().all(|s| s.error.is_none()))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.engines {
            let shard = e
                .shard
                .map_or_else(|| "?".into(), |s| format!("{}/{}", s.index, s.count));
            writeln!(
                f,
                "engine {} shard {shard}: log {}..{} ({} bytes), {} records",
                e.engine,
                e.start,
                e.end,
                e.end - e.start,
                e.records
            )?;
            if let Some((a, b)) = e.times {
                writeln!(f, "  time {a}..{b}")?;
            }
            for s in &e.segments {
                writeln!(
                    f,
                    "  segment {} start {} size {} records {}",
                    s.path.display(),
                    s.start,
                    s.bytes,
                    s.records
                )?;
            }
            for s in &e.snapshots {
                let status = s.error.as_deref().unwrap_or("ok");
                writeln!(
                    f,
                    "  snapshot {} pos {} size {} {status}",
                    s.path.display(),
                    s.pos,
                    s.bytes
                )?;
            }
            if let Some(c) = &e.cut {
                writeln!(
                    f,
                    "  WARNING torn tail in {} at offset {} (pos {}): {}",
                    c.path.display(),
                    c.offset,
                    c.pos,
                    c.reason
                )?;
            }
            if let Some(err) = &e.error {
                writeln!(f, "  ERROR {err}")?;
            }
        }
        Ok(())
    }
}

/// Reads every record and every snapshot of every engine in `dir`, checking all CRCs and the
/// segment chain. Defects are reported in the [`Report`], not as `Err`.
///
/// # Errors
/// Only I/O errors listing `dir`.
pub fn verify(dir: &Path) -> Result<Report> {
    scan(dir, true)
}

/// Like [`verify`] but reads only snapshot headers (no body CRC): segments, sizes, record
/// counts, positions, snapshots.
///
/// # Errors
/// Only I/O errors listing `dir`.
pub fn stat(dir: &Path) -> Result<Report> {
    scan(dir, false)
}

fn scan(dir: &Path, check_snapshots: bool) -> Result<Report> {
    let mut report = Report::default();
    for engine in engines_in(dir)? {
        let mut e = EngineReport {
            engine: engine.clone(),
            ..Default::default()
        };
        let snapshots = list_snapshots(dir, &engine)?;
        let wanted: Vec<u64> = snapshots.iter().map(|s| s.pos).collect();
        let mut boundaries = BTreeMap::new();
        if let Err(err) = scan_log(dir, &engine, &mut e, &wanted, &mut boundaries) {
            e.error = Some(err.to_string());
        }
        for named in snapshots {
            let header = if check_snapshots {
                validate(&named.path).map(|info| info.header)
            } else {
                snapshot_header(&named.path)
            };
            let error = match header {
                Err(x) => Some(x.to_string()),
                Ok(header) => snapshot_misfit(&e, &header, &boundaries),
            };
            e.snapshots.push(SnapshotReport {
                path: named.path,
                pos: named.pos,
                bytes: named.len,
                error,
            });
        }
        report.engines.push(e);
    }
    Ok(report)
}

/// Why a snapshot with a good header cannot start this log, if it cannot. `boundaries`: the
/// chain value at each snapshot position that is a record boundary of the log.
fn snapshot_misfit(
    e: &EngineReport,
    header: &FileHeader,
    boundaries: &BTreeMap<u64, u32>,
) -> Option<String> {
    if let Some(shard) = e.shard.filter(|s| *s != header.shard) {
        return Some(format!(
            "shard {}/{} differs from the log's {}/{}",
            header.shard.index, header.shard.count, shard.index, shard.count
        ));
    }
    if e.segments.is_empty() {
        // No log at all: it starts at the snapshot.
        return None;
    }
    let pos = header.pos;
    if pos > e.end {
        return Some(format!(
            "position {pos} is past the end of the log ({}): start-up from it fails",
            e.end
        ));
    }
    if pos < e.start {
        return Some(format!(
            "position {pos} is before the start of the log ({})",
            e.start
        ));
    }
    match boundaries.get(&pos) {
        None if pos == e.start => None,
        None => Some(format!(
            "position {pos} is not a record boundary of the log"
        )),
        Some(&chain) if chain != header.chain => Some(format!(
            "chain value {:08x} differs from the log's {chain:08x} at position {pos} (the \
             snapshot belongs to another log)",
            header.chain
        )),
        Some(_) => None,
    }
}

fn snapshot_header(path: &Path) -> Result<FileHeader> {
    let mut f = std::fs::File::open(path).ctx(path)?;
    let mut hb = [0u8; SNAPSHOT_HEADER_SIZE];
    std::io::Read::read_exact(&mut f, &mut hb).ctx(path)?;
    FileHeader::decode(&hb, SNAPSHOT_MAGIC).map_err(|reason| Error::Snapshot {
        path: path.to_path_buf(),
        reason,
    })
}

/// Reads the whole log into `e`, recording in `boundaries` the chain value at each position
/// of `wanted` (sorted) that is a record boundary.
fn scan_log(
    dir: &Path,
    engine: &str,
    e: &mut EngineReport,
    wanted: &[u64],
    boundaries: &mut BTreeMap<u64, u32>,
) -> Result<()> {
    let mut reader = Reader::open(dir, engine, ReadOptions::default())?;
    e.segments = reader
        .segments()
        .iter()
        .map(|s| SegmentReport {
            path: s.path.clone(),
            start: s.pos,
            bytes: s.len,
            records: 0,
        })
        .collect();
    e.start = reader.pos();
    e.end = reader.pos();
    if reader.start_known() && wanted.binary_search(&e.start).is_ok() {
        boundaries.insert(e.start, reader.chain());
    }
    loop {
        let record = match reader.next_record() {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(err) => {
                e.end = reader.pos();
                return Err(err);
            }
        };
        let (pos, rtype, time) = (record.pos, record.record_type, record.time);
        e.records += 1;
        if rtype == RECORD_TYPE_TIME {
            e.times = Some(e.times.map_or((time, time), |(a, _)| (a, time)));
        }
        e.end = pos;
        if wanted.binary_search(&pos).is_ok() {
            boundaries.insert(pos, reader.chain());
        }
        if let Some(seg) = reader.current_segment() {
            let start = seg.pos;
            if let Some(s) = e.segments.iter_mut().find(|s| s.start == start) {
                s.records += 1;
            }
        }
        if e.shard.is_none() {
            e.shard = reader.shard();
        }
    }
    if e.shard.is_none() {
        e.shard = reader.shard();
    }
    e.cut = reader.cut().cloned();
    Ok(())
}

/// Prints every record from `from_pos` (a record boundary; 0 = the start of the log) of the
/// only engine in `dir`, one line each: start position, end position, time, type, length, a
/// hex and ASCII preview.
///
/// # Errors
/// [`Error::Config`] when `dir` holds several engines or none (use [`dump_engine`]); read
/// errors; write errors on `out`.
pub fn dump(dir: &Path, from_pos: u64, out: &mut dyn Write) -> Result<()> {
    let engines = engines_in(dir)?;
    match engines.as_slice() {
        [engine] => dump_engine(dir, engine, from_pos, out),
        [] => Err(Error::Config(format!("no binlog in {}", dir.display()))),
        many => Err(Error::Config(format!(
            "{} holds several engines ({}); name one",
            dir.display(),
            many.join(", ")
        ))),
    }
}

/// [`dump`] for one named engine.
///
/// # Errors
/// As [`dump`].
pub fn dump_engine(dir: &Path, engine: &str, from_pos: u64, out: &mut dyn Write) -> Result<()> {
    let opts = ReadOptions::default();
    let mut reader = Reader::open(dir, engine, opts)?;
    if from_pos > reader.pos() {
        reader = Reader::open_at(dir, engine, from_pos, opts)?;
    }
    let stdout = Path::new("<output>");
    writeln!(
        out,
        "# {engine}: start        end        time type  length preview"
    )
    .ctx(stdout)?;
    while let Some(r) = reader.next_record()? {
        let preview = &r.payload[..r.payload.len().min(DUMP_PREVIEW_BYTES)];
        let hex: String = preview.iter().map(|b| format!("{b:02x}")).collect();
        let ascii: String = preview
            .iter()
            .map(|&b| {
                if (0x20..0x7f).contains(&b) {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        let kind = if r.record_type == RECORD_TYPE_TIME {
            "TIME".to_string()
        } else {
            format!("{:#06x}", r.record_type)
        };
        writeln!(
            out,
            "{:>12} {:>12} {:>10} {kind:>6} {:>7} {hex:<48} |{ascii}|",
            r.start,
            r.pos,
            r.time,
            r.payload.len()
        )
        .ctx(stdout)?;
    }
    if let Some(c) = reader.cut() {
        writeln!(
            out,
            "# torn tail in {} at offset {} (pos {}): {}",
            c.path.display(),
            c.offset,
            c.pos,
            c.reason
        )
        .ctx(stdout)?;
    }
    Ok(())
}
