//! Reading the log: records across segments, recovery classification, tailing.
//!
//! The reader checks every record's header CRC and payload CRC, the continuity of segments
//! (each header names the position and chain value it continues from), and tracks the TIME
//! records so each record comes with the time in force. How it treats a defect:
//!
//! * in the **last** segment, a record cut short by the end of the file, a final record whose
//!   payload CRC fails and that ends exactly at the end of the file, or an invalid header
//!   followed by nothing but zero bytes is a *torn tail* (a write that never completed): the
//!   reader stops there and reports a [`Cut`]; the host truncates it with a warning;
//! * anything else is corruption: [`Error::Corrupt`] naming the file and offset, unless
//!   [`ReadOptions::repair`] is set, in which case the reader stops there and reports a
//!   [`Cut`] with `corrupt = true` (the host truncates there and moves later segments aside);
//! * a segment that does not continue its predecessor (missing, reordered, foreign) is always
//!   [`Error::Chain`].
//!
//! In [`ReadMode::Tail`] an incomplete record at the end of the last segment means "not yet
//! written": [`Reader::next`] returns `Ok(None)` and the caller retries later; new segments
//! are picked up when they appear.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use koshka_engine::ShardSpec;

use crate::error::{Error, IoContext, Result};
use crate::format::{
    chain_next, FileHeader, RecordHeader, RECORD_HEADER_SIZE, RECORD_TYPE_TIME,
    SEGMENT_HEADER_SIZE, SEGMENT_MAGIC, TIME_PAYLOAD_SIZE,
};
use crate::fsutil::{list, NamedFile};

/// Bytes the reader asks the kernel for at a time. Large enough that replay is bound by CRC
/// and apply, not by syscalls; records larger than this grow the buffer to fit.
pub const READ_BUFFER_SIZE: usize = 1024 * 1024;

/// How the reader treats the end of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadMode {
    /// Start-up and tools: the log is not growing; a torn tail is reported as a [`Cut`].
    #[default]
    Recover,
    /// Follow a growing log: an incomplete tail means "retry later".
    Tail,
}

/// Options of a [`Reader`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    /// End-of-log behaviour.
    pub mode: ReadMode,
    /// Stop at mid-log corruption and report a [`Cut`] instead of failing.
    pub repair: bool,
    /// Shard every segment must name; `None` accepts the first segment's and requires the
    /// rest to match it.
    pub shard: Option<ShardSpec>,
}

/// Where the reader stopped early: a torn tail, or corruption when repairing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// The segment file.
    pub path: PathBuf,
    /// Byte offset in the file where the valid log ends (below the header size: the whole
    /// file is unusable).
    pub offset: u64,
    /// Log position where the valid log ends.
    pub pos: u64,
    /// What was found there.
    pub reason: String,
    /// `false` for a torn tail, `true` for corruption cut by the repair flag.
    pub corrupt: bool,
}

/// One record read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Position of the first byte of the record.
    pub start: u64,
    /// Position just past the record ([`koshka_engine::ApplyCtx::pos`]).
    pub pos: u64,
    /// Time in force for the record (for a TIME record: the new time).
    pub time: u32,
    /// Record type.
    pub record_type: u16,
    /// Payload.
    pub payload: &'a [u8],
}

enum Defect {
    /// The record (or its header) is cut short by the end of the file.
    Incomplete,
    /// The header is invalid.
    Header,
    /// The payload fails its CRC; `at_eof`: the record ends exactly at the end of the file.
    Payload { at_eof: bool },
}

/// Iterates the records of one engine's log.
#[derive(Debug)]
pub struct Reader {
    dir: PathBuf,
    engine: String,
    opts: ReadOptions,
    segments: Vec<NamedFile>,
    seg: usize,
    file: Option<File>,
    seg_len: u64,
    buf: Vec<u8>,
    lo: usize,
    hi: usize,
    file_off: u64,
    pos: u64,
    chain: u32,
    time: u32,
    cut: Option<Cut>,
    done: bool,
    /// Whether `chain` and `time` at the start position come from a segment header (false:
    /// an empty log opened at a position, or the only segment's header is torn).
    start_known: bool,
}

impl Reader {
    /// Opens `engine`'s log in `dir` at its first record.
    ///
    /// # Errors
    /// I/O errors; an invalid first segment header.
    pub fn open(dir: &Path, engine: &str, opts: ReadOptions) -> Result<Self> {
        let segments = list(dir, Some(engine), "bin")?;
        let mut reader = Self {
            dir: dir.to_path_buf(),
            engine: engine.to_string(),
            opts,
            segments,
            seg: 0,
            file: None,
            seg_len: 0,
            buf: Vec::new(),
            lo: 0,
            hi: 0,
            file_off: 0,
            pos: 0,
            chain: 0,
            time: 0,
            cut: None,
            done: false,
            start_known: true,
        };
        if !reader.segments.is_empty() {
            reader.open_segment(0, true)?;
        }
        Ok(reader)
    }

    /// Opens `engine`'s log positioned at `pos`, which must be a record boundary. The reader
    /// scans from the start of the segment holding `pos`, so chain and time are exact there.
    /// A log with no segment at all, or whose only segment starts at `pos` with a torn header,
    /// is an empty log starting at `pos`: chain and time there are unknown
    /// ([`Reader::start_known`]), the caller has them (from a snapshot).
    ///
    /// # Errors
    /// [`Error::Position`] if the log does not hold `pos` as a record boundary; corruption met
    /// on the way.
    pub fn open_at(dir: &Path, engine: &str, pos: u64, opts: ReadOptions) -> Result<Self> {
        let mut reader = Self::open(dir, engine, opts)?;
        if reader.segments.is_empty() {
            reader.pos = pos;
            reader.start_known = false;
            return Ok(reader);
        }
        let Some(idx) = reader.segments.iter().rposition(|s| s.pos <= pos) else {
            let first = reader.segments[0].pos;
            return Err(Error::Position {
                pos,
                reason: format!("before the start of the log (first segment starts at {first})"),
            });
        };
        if idx != 0 {
            reader.open_segment(idx, true)?;
        }
        while reader.pos < pos {
            if reader.next_record()?.is_none() {
                break;
            }
        }
        if reader.pos != pos {
            let at = reader.pos;
            return Err(Error::Position {
                pos,
                reason: if at > pos {
                    format!(
                        "not a record boundary (next boundary at {at}, offset {} of {})",
                        reader.offset(),
                        reader.path().display()
                    )
                } else {
                    format!(
                        "past the end of the log (the log ends at {at}, offset {} of {})",
                        reader.offset(),
                        reader.path().display()
                    )
                },
            });
        }
        Ok(reader)
    }

    /// Position just past the last record read (the next record's start).
    #[must_use]
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Chain value at [`Reader::pos`].
    #[must_use]
    pub fn chain(&self) -> u32 {
        self.chain
    }

    /// Time in force at [`Reader::pos`].
    #[must_use]
    pub fn time(&self) -> u32 {
        self.time
    }

    /// Whether [`Reader::chain`] and [`Reader::time`] at the start position come from a
    /// segment header. False only for a log with no segment opened at a position, or one
    /// whose only segment has a torn header (see [`Reader::open_at`]).
    #[must_use]
    pub fn start_known(&self) -> bool {
        self.start_known
    }

    /// Where the reader stopped early, if it did.
    #[must_use]
    pub fn cut(&self) -> Option<&Cut> {
        self.cut.as_ref()
    }

    /// The shard named by the segments read so far.
    #[must_use]
    pub fn shard(&self) -> Option<ShardSpec> {
        self.opts.shard
    }

    /// The segments known to the reader.
    #[must_use]
    pub fn segments(&self) -> &[NamedFile] {
        &self.segments
    }

    /// Where the reader is: the segment file and the byte offset in it of the next unread
    /// byte (the directory and 0 when no segment is open).
    #[must_use]
    pub fn location(&self) -> (&Path, u64) {
        (
            self.path(),
            if self.file.is_some() {
                self.offset()
            } else {
                0
            },
        )
    }

    /// The segment being read, if any.
    #[must_use]
    pub fn current_segment(&self) -> Option<&NamedFile> {
        self.file.as_ref().and(self.segments.get(self.seg))
    }

    /// Reads the next record, or `Ok(None)` at the end of the log (or at a [`Cut`]).
    ///
    /// # Errors
    /// [`Error::Corrupt`], [`Error::Chain`], I/O errors.
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>> {
        loop {
            if self.done {
                return Ok(None);
            }
            if self.file.is_none()
                && (self.opts.mode != ReadMode::Tail || !self.tail_reopen()? || self.file.is_none())
            {
                return Ok(None);
            }
            if !self.fill(RECORD_HEADER_SIZE)? {
                if self.hi == self.lo && self.at_file_end()? {
                    if self.advance_segment()? {
                        continue;
                    }
                    return Ok(None);
                }
                return self.defect(
                    "record header cut short by the end of the file",
                    &Defect::Incomplete,
                );
            }
            let mut hb = [0u8; RECORD_HEADER_SIZE];
            hb.copy_from_slice(&self.buf[self.lo..self.lo + RECORD_HEADER_SIZE]);
            let header = match RecordHeader::decode(&hb) {
                Ok(h) => h,
                Err(reason) => return self.defect(reason, &Defect::Header),
            };
            let total = RECORD_HEADER_SIZE + header.len as usize;
            if self.offset() + total as u64 > self.seg_len && self.opts.mode == ReadMode::Recover
                || !self.fill(total)?
            {
                return self.defect(
                    "record cut short by the end of the file",
                    &Defect::Incomplete,
                );
            }
            let start = self.lo;
            let payload = &self.buf[start + RECORD_HEADER_SIZE..start + total];
            if !header.check_payload(payload) {
                let at_eof = self.offset() + total as u64 == self.seg_len;
                return self.defect("record CRC mismatch", &Defect::Payload { at_eof });
            }
            if header.record_type == RECORD_TYPE_TIME {
                let Ok(t) = <[u8; TIME_PAYLOAD_SIZE]>::try_from(payload) else {
                    return Err(self.corrupt("TIME record with a payload that is not 4 bytes"));
                };
                self.time = u32::from_le_bytes(t);
            }
            let record_start = self.pos;
            let Some(next_pos) = self.pos.checked_add(total as u64) else {
                return Err(self.corrupt("record position overflows 64 bits"));
            };
            self.lo += total;
            self.pos = next_pos;
            self.chain = chain_next(self.chain, header.crc);
            return Ok(Some(Record {
                start: record_start,
                pos: self.pos,
                time: self.time,
                record_type: header.record_type,
                payload: &self.buf[start + RECORD_HEADER_SIZE..start + total],
            }));
        }
    }

    /// File offset of the next unread byte.
    fn offset(&self) -> u64 {
        self.file_off - (self.hi - self.lo) as u64
    }

    fn path(&self) -> &Path {
        self.segments
            .get(self.seg)
            .map_or(self.dir.as_path(), |s| s.path.as_path())
    }

    fn corrupt(&self, reason: &str) -> Error {
        Error::Corrupt {
            path: self.path().to_path_buf(),
            offset: self.offset(),
            reason: reason.into(),
        }
    }

    fn is_last(&self) -> bool {
        self.seg + 1 >= self.segments.len()
    }

    /// Whether everything of the current file has been read. Refreshes the length in tail
    /// mode.
    fn at_file_end(&mut self) -> Result<bool> {
        if self.opts.mode == ReadMode::Tail {
            if let Some(file) = &self.file {
                self.seg_len = file.metadata().ctx(&self.segments[self.seg].path)?.len();
            }
        }
        Ok(self.offset() >= self.seg_len)
    }

    /// Makes at least `need` unread bytes available; `false` at the end of the file.
    fn fill(&mut self, need: usize) -> Result<bool> {
        while self.hi - self.lo < need {
            if self.buf.len() - self.lo < need || self.hi == self.buf.len() {
                self.buf.copy_within(self.lo..self.hi, 0);
                self.hi -= self.lo;
                self.lo = 0;
            }
            if self.buf.len() < need.max(READ_BUFFER_SIZE) {
                self.buf.resize(need.max(READ_BUFFER_SIZE), 0);
            }
            let Some(file) = self.file.as_mut() else {
                return Ok(false);
            };
            let n = file
                .read(&mut self.buf[self.hi..])
                .ctx(&self.segments[self.seg].path)?;
            if n == 0 {
                return Ok(false);
            }
            self.hi += n;
            self.file_off += n as u64;
        }
        Ok(true)
    }

    /// Classifies a defect at the current offset: torn tail, tail still being written, or
    /// corruption (cut when repairing).
    fn defect<T>(&mut self, reason: &str, defect: &Defect) -> Result<Option<T>> {
        if self.opts.mode == ReadMode::Tail {
            let reaches_end = match defect {
                Defect::Incomplete => true,
                Defect::Payload { at_eof } => *at_eof,
                Defect::Header => self.rest_is_zero()?,
            };
            if reaches_end && self.is_last() {
                return Ok(None);
            }
            return Err(self.corrupt(reason));
        }
        let torn = self.is_last()
            && match defect {
                Defect::Incomplete => true,
                Defect::Payload { at_eof } => *at_eof,
                Defect::Header => self.rest_is_zero()?,
            };
        if !torn && !self.opts.repair {
            return Err(self.corrupt(reason));
        }
        let cut = Cut {
            path: self.path().to_path_buf(),
            offset: self.offset(),
            pos: self.pos,
            reason: reason.to_string(),
            corrupt: !torn,
        };
        tracing::warn!(
            file = %cut.path.display(),
            offset = cut.offset,
            pos = cut.pos,
            "binlog {}: {reason}; the log ends here",
            if torn { "torn tail" } else { "corruption (repair)" }
        );
        self.cut = Some(cut);
        self.done = true;
        Ok(None)
    }

    /// Whether every byte from the current offset to the end of the file is zero (space the
    /// file system allocated for a write that never reached the disk).
    fn rest_is_zero(&self) -> Result<bool> {
        let path = self.path();
        let mut file = File::open(path).ctx(path)?;
        file.seek(SeekFrom::Start(self.offset())).ctx(path)?;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut chunk).ctx(path)?;
            if n == 0 {
                return Ok(true);
            }
            if chunk[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
        }
    }

    /// Moves to the next segment at a clean end of file. `false` at the end of the log.
    fn advance_segment(&mut self) -> Result<bool> {
        if self.is_last() {
            if self.opts.mode != ReadMode::Tail {
                return Ok(false);
            }
            self.segments = list(&self.dir, Some(&self.engine), "bin")?;
            match self.segments.iter().position(|s| s.pos == self.pos) {
                Some(idx) if idx > self.seg => return self.open_segment(idx, false),
                _ => {
                    // The current segment may still be growing (or the list changed under
                    // us): stay on it.
                    if let Some(idx) = self.segments.iter().rposition(|s| s.pos < self.pos) {
                        self.seg = idx;
                    }
                    return Ok(false);
                }
            }
        }
        self.open_segment(self.seg + 1, false)
    }

    /// Opens segment `idx`, checking its header; `first`: adopt its position, chain and time
    /// instead of checking continuity. `false` when a tailed segment's header is not yet
    /// complete (nothing changed).
    fn open_segment(&mut self, idx: usize, first: bool) -> Result<bool> {
        let named = self.segments[idx].clone();
        let path = &named.path;
        let mut file = File::open(path).ctx(path)?;
        let len = file.metadata().ctx(path)?.len();
        let mut hb = [0u8; SEGMENT_HEADER_SIZE];
        let mut got = 0;
        while got < SEGMENT_HEADER_SIZE {
            let n = file.read(&mut hb[got..]).ctx(path)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        let last = idx + 1 >= self.segments.len();
        let torn_header = got < SEGMENT_HEADER_SIZE || hb.iter().all(|&b| b == 0);
        if torn_header && last && self.opts.mode == ReadMode::Tail {
            // Being created right now: retry later.
            return Ok(false);
        }
        if torn_header && last {
            let reason = "segment header incomplete (torn rotation)".to_string();
            tracing::warn!(file = %path.display(), "binlog torn tail: {reason}");
            if first {
                // The only segment: the log is empty and starts where its name says.
                self.pos = named.pos;
                self.start_known = false;
            }
            self.seg = idx;
            self.file = None;
            self.cut = Some(Cut {
                path: path.clone(),
                offset: 0,
                pos: named.pos,
                reason,
                corrupt: false,
            });
            self.done = true;
            return Ok(true);
        }
        if got < SEGMENT_HEADER_SIZE {
            return Err(Error::Corrupt {
                path: path.clone(),
                offset: 0,
                reason: "segment header incomplete".into(),
            });
        }
        let header = FileHeader::decode(&hb, SEGMENT_MAGIC).map_err(|reason| Error::Corrupt {
            path: path.clone(),
            offset: 0,
            reason: format!("segment header: {reason}"),
        })?;
        self.check_header(&named, &header, first)?;
        if first {
            self.pos = header.pos;
            self.chain = header.chain;
            self.time = header.time;
        }
        self.opts.shard = Some(header.shard);
        self.seg = idx;
        self.file = Some(file);
        self.seg_len = len;
        self.lo = 0;
        self.hi = 0;
        self.file_off = SEGMENT_HEADER_SIZE as u64;
        Ok(true)
    }

    /// Tail mode with no open segment (empty log, or a segment still being created): looks
    /// for the segment that starts at the current position.
    fn tail_reopen(&mut self) -> Result<bool> {
        self.segments = list(&self.dir, Some(&self.engine), "bin")?;
        let first = self.pos == 0 && self.chain == 0;
        let idx = if first {
            (!self.segments.is_empty()).then_some(0)
        } else {
            self.segments.iter().position(|s| s.pos == self.pos)
        };
        match idx {
            Some(idx) => self.open_segment(idx, first),
            None => Ok(false),
        }
    }

    fn check_header(&self, named: &NamedFile, header: &FileHeader, first: bool) -> Result<()> {
        let chain_err = |reason: String| Error::Chain {
            path: named.path.clone(),
            reason,
        };
        if header.engine != self.engine {
            return Err(chain_err(format!(
                "belongs to engine {:?}, not {:?}",
                header.engine, self.engine
            )));
        }
        if header.pos != named.pos {
            return Err(chain_err(format!(
                "file name says position {}, header says {} (renamed or reordered segment)",
                named.pos, header.pos
            )));
        }
        if let Some(shard) = self.opts.shard {
            if shard != header.shard {
                return Err(chain_err(format!(
                    "shard {}/{} does not match {}/{}",
                    header.shard.index, header.shard.count, shard.index, shard.count
                )));
            }
        }
        if first {
            return Ok(());
        }
        if header.pos != self.pos {
            return Err(chain_err(format!(
                "starts at {}, but the previous segment ends at {} (missing or reordered segment)",
                header.pos, self.pos
            )));
        }
        if header.chain != self.chain || header.time != self.time {
            return Err(chain_err(format!(
                "chain {:08x}/time {} does not continue the previous segment ({:08x}/{})",
                header.chain, header.time, self.chain, self.time
            )));
        }
        Ok(())
    }
}
