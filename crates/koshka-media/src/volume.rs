//! One volume: an append-only file of needles kept in one or two data directories, with its RAM
//! index.
//!
//! * **Appends** write the same bytes at the same offset of every copy, then publish the index
//!   entry; nothing already written is rewritten, except a repair (which writes back the bytes
//!   the other copy proved right) and compaction (which writes a new file and renames it over).
//! * **Reads** take the entry and the file handles under one read lock and `pread` outside it.
//!   The first read of a file checks both checksums; a mismatch is read from the other copy,
//!   written back over the bad one, and logged. After one good check the entry is marked
//!   verified in RAM and later reads (Range included) are one `pread` of the requested bytes.
//! * **Opening** scans every copy, keeps the highest generation and then the longest valid
//!   prefix, cuts a torn tail with a warning and rebuilds a shorter or older copy from it.
//! * **Compaction** copies live needles into a new generation of the file in every directory,
//!   syncs, renames over the old ones and swaps handles and index under the write lock; readers
//!   holding the old handles finish on the old (unlinked) inode.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use crate::needle::{
    self, encode_record, record_len, ContentType, Header, Kind, FLAGS_STORED, FLAG_DELETED,
    FLAG_HIDDEN, HEADER_LEN,
};

/// Largest file a volume stores: 64 MiB - 1 (26 bits of the index entry). The upload limit
/// ([`crate::limits::UPLOAD_BYTES_MAX`]) is below it.
pub const FILE_SIZE_MAX: u32 = (1 << SIZE_BITS) - 1;
/// Largest volume: offsets are stored in 8-byte units in 32 bits.
pub const VOLUME_SIZE_MAX: u64 = (u32::MAX as u64) * needle::ALIGN;

const SIZE_BITS: u32 = 26;
const SIZE_MASK: u32 = (1 << SIZE_BITS) - 1;
/// RAM-only flag: both checksums of this entry were checked since the process started.
const FLAG_VERIFIED: u8 = 4;
const CTYPE_SHIFT: u32 = 3;

/// One index entry: 16 bytes per file (secret, offset / 8, size + flags + content type).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Entry {
    secret: u64,
    off8: u32,
    /// Low 26 bits: size; bits 26..29: HIDDEN, DELETED, VERIFIED; bits 29..32: content type.
    size_flags: u32,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 16);
const _: () = assert!(crate::limits::UPLOAD_BYTES_MAX <= FILE_SIZE_MAX as u64);

impl Entry {
    fn new(secret: u64, offset: u64, size: u32, flags: u8, ctype: u8) -> Entry {
        let mut e = Entry {
            secret,
            off8: u32::try_from(offset / needle::ALIGN).unwrap_or(u32::MAX),
            size_flags: size & SIZE_MASK,
        };
        e.set_flags(flags);
        e.size_flags |= u32::from(ctype & 7) << (SIZE_BITS + CTYPE_SHIFT);
        e
    }
    fn present(&self) -> bool {
        self.off8 != 0
    }
    /// Offset of the record in the volume file.
    #[must_use]
    pub fn offset(&self) -> u64 {
        u64::from(self.off8) * needle::ALIGN
    }
    /// Data bytes.
    #[must_use]
    pub fn size(&self) -> u32 {
        self.size_flags & SIZE_MASK
    }
    /// HIDDEN / DELETED / VERIFIED bits.
    #[must_use]
    pub fn flags(&self) -> u8 {
        ((self.size_flags >> SIZE_BITS) & 7) as u8
    }
    fn set_flags(&mut self, flags: u8) {
        self.size_flags =
            (self.size_flags & !(7 << SIZE_BITS)) | (u32::from(flags & 7) << SIZE_BITS);
    }
    /// The stored content type.
    #[must_use]
    pub fn ctype(&self) -> ContentType {
        ContentType::from_code(((self.size_flags >> (SIZE_BITS + CTYPE_SHIFT)) & 7) as u8)
    }
    /// The secret.
    #[must_use]
    pub fn secret(&self) -> u64 {
        self.secret
    }
    /// Hidden (served as a 1×1 PNG).
    #[must_use]
    pub fn hidden(&self) -> bool {
        self.flags() & FLAG_HIDDEN != 0
    }
    /// Deleted (404).
    #[must_use]
    pub fn deleted(&self) -> bool {
        self.flags() & FLAG_DELETED != 0
    }
}

/// One copy of a volume file.
#[derive(Debug)]
pub struct Copy {
    /// Index of its data directory.
    pub dir: usize,
    /// Its path.
    pub path: PathBuf,
    file: File,
    /// Opened for writing (false: its directory refused write access at open).
    writable: bool,
}

/// Whether an error opening a file for writing means the directory (or file) refuses writes:
/// a read-only file system, permissions, an immutable file.
fn refuses_writes(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == rustix::io::Errno::ROFS.raw_os_error()
            || code == rustix::io::Errno::ACCESS.raw_os_error()
            || code == rustix::io::Errno::PERM.raw_os_error()
    )
}

/// Errors of volume operations.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The volume cannot take this many more bytes.
    #[error("volume {0} is full")]
    Full(u32),
    /// The volume is read-only.
    #[error("volume {0} is read-only")]
    ReadOnly(u32),
    /// No such file (or deleted).
    #[error("no such file")]
    Missing,
    /// A write to one copy failed; every copy was cut back to its previous length.
    #[error("volume {vol}: write to {path} failed: {err}")]
    Write {
        /// Volume id.
        vol: u32,
        /// The copy that failed.
        path: PathBuf,
        /// The error.
        err: std::io::Error,
    },
    /// Both copies of a record fail their checksums.
    #[error("volume {vol} offset {offset}: {detail} in every copy")]
    Corrupt {
        /// Volume id.
        vol: u32,
        /// Record offset.
        offset: u64,
        /// What was wrong.
        detail: String,
    },
    /// Other I/O.
    #[error("volume {vol}: {err}")]
    Io {
        /// Volume id.
        vol: u32,
        /// The error.
        err: std::io::Error,
    },
    /// Compaction refused to start.
    #[error(
        "volume {vol}: not enough free space in {dir} to compact: need {need} bytes, have {have}"
    )]
    NoSpace {
        /// Volume id.
        vol: u32,
        /// The directory.
        dir: PathBuf,
        /// Bytes needed.
        need: u64,
        /// Bytes available.
        have: u64,
    },
    /// A compaction of this volume is already running.
    #[error("volume {0}: compaction already running")]
    Busy(u32),
}

struct State {
    copies: Arc<Vec<Copy>>,
    index: Vec<Entry>,
    len: u64,
    generation: u64,
    live_files: u64,
    live_bytes: u64,
    dead_bytes: u64,
    read_only: bool,
}

/// Counters of one volume.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VolumeStats {
    /// Volume id.
    pub vol: u32,
    /// File length (every copy).
    pub size: u64,
    /// Bytes of live needles (what compaction keeps).
    pub live_bytes: u64,
    /// Bytes compaction would reclaim (deleted needles, flag records).
    pub dead_bytes: u64,
    /// Live files.
    pub live_files: u64,
    /// Local ids handed out.
    pub lids: u64,
    /// Generation (compactions since creation).
    pub generation: u64,
    /// No more appends.
    pub read_only: bool,
    /// Compaction running.
    pub compacting: bool,
    /// RAM index bytes (capacity × 16).
    pub index_bytes: u64,
    /// Copies (data directories).
    pub copies: usize,
}

/// One volume.
pub struct Volume {
    /// Volume id.
    pub id: u32,
    max_size: u64,
    state: RwLock<State>,
    append: Mutex<()>,
    compacting: AtomicBool,
    dirty: AtomicBool,
    unwritable: Vec<String>,
}

/// A file read: bytes (the whole file or the requested range), its total size and type.
#[derive(Debug)]
pub struct ReadOut {
    /// The bytes.
    pub data: Bytes,
    /// Total file size.
    pub size: u32,
    /// Content type.
    pub ctype: ContentType,
}

/// The name of volume `id`'s file in a data directory.
#[must_use]
pub fn file_name(id: u32) -> String {
    format!("vol_{id:06}.dat")
}

fn now() -> u32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    u32::try_from(secs).unwrap_or(u32::MAX)
}

struct Scan {
    generation: u64,
    valid_len: u64,
    file_len: u64,
    records: Vec<(u64, Header)>,
}

/// Walks `file` record by record: the valid prefix ends at the first header that does not
/// decode or a record running past the end; a last file record whose data fails its checksum
/// is a torn write and is dropped too.
fn scan(file: &File, id: u32) -> std::io::Result<Scan> {
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 16, file);
    reader.seek(SeekFrom::Start(0))?;
    let mut records = Vec::new();
    let mut pos = 0u64;
    let mut generation = 0;
    let mut buf = [0u8; HEADER_LEN];
    while pos + HEADER_LEN as u64 <= file_len {
        if reader.read_exact(&mut buf).is_err() {
            break;
        }
        let Ok(h) = Header::decode(&buf) else { break };
        let len = record_len(h.size);
        if pos + len > file_len {
            break;
        }
        if pos == 0 {
            if h.kind != Kind::VolumeHeader || h.lid != id {
                break;
            }
            generation = h.secret;
        } else if h.kind == Kind::VolumeHeader {
            break;
        }
        records.push((pos, h));
        reader.seek_relative(i64::try_from(len).unwrap_or(i64::MAX) - HEADER_LEN as i64)?;
        pos += len;
    }
    // A torn last record: header written, data not (or not all).
    if let Some(&(offset, h)) = records.last() {
        if h.kind == Kind::File {
            let mut data = vec![0u8; h.size as usize];
            file.read_exact_at(&mut data, offset + HEADER_LEN as u64)?;
            if crc32c::crc32c(&data) != h.crc {
                records.pop();
                pos = offset;
            }
        }
    }
    if records.is_empty() {
        pos = 0;
    }
    Ok(Scan {
        generation,
        valid_len: pos,
        file_len,
        records,
    })
}

fn open_rw(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

fn copy_range(from: &File, to: &File, start: u64, end: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = start;
    while pos < end {
        let n = usize::try_from((end - pos).min(buf.len() as u64)).unwrap_or(buf.len());
        from.read_exact_at(&mut buf[..n], pos)?;
        to.write_all_at(&buf[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

impl Volume {
    /// Opens (or creates) volume `id` with one copy per path in `paths` (`(dir index, path)`),
    /// recovering as described in the module comment.
    ///
    /// # Errors
    /// I/O errors, or no copy holding a valid volume header when `create` is false.
    pub fn open(
        id: u32,
        paths: &[(usize, PathBuf)],
        max_size: u64,
        read_only: bool,
    ) -> Result<Volume, VolumeError> {
        let io = |err| VolumeError::Io { vol: id, err };
        let mut copies = Vec::new();
        let mut scans = Vec::new();
        // Copies whose directory refuses writes (read-only file system, permissions): opened
        // read-only if the file exists, so reads go on; the store stops writes.
        let mut unwritable = Vec::new();
        let mut last_err = None;
        for (dir, path) in paths {
            let _ = std::fs::remove_file(path.with_extension("compact"));
            let (file, writable) = match open_rw(path) {
                Ok(f) => (f, true),
                Err(e) if refuses_writes(&e) => {
                    tracing::error!(vol = id, path = %path.display(), %e,
                        "copy is not writable; reads only, writes stop");
                    unwritable.push(format!("{} is not writable: {e}", path.display()));
                    match File::open(path) {
                        Ok(f) => (f, false),
                        Err(e2) => {
                            tracing::error!(vol = id, path = %path.display(), %e2,
                                "copy cannot be read either; left out until restart");
                            last_err = Some(e);
                            continue;
                        }
                    }
                }
                Err(e) => return Err(io(e)),
            };
            scans.push(scan(&file, id).map_err(io)?);
            copies.push(Copy {
                dir: *dir,
                path: path.clone(),
                file,
                writable,
            });
        }
        if copies.is_empty() {
            return Err(io(last_err.unwrap_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "no data directory")
            })));
        }
        let auth = (0..scans.len())
            .max_by_key(|&i| (scans[i].generation, scans[i].valid_len))
            .unwrap_or(0);
        if scans[auth].valid_len == 0 {
            // A new volume (or nothing valid anywhere): start every writable copy with a
            // header (a read-only one is left out until a restart rebuilds it).
            for (c, s) in copies.iter().zip(&scans) {
                if s.file_len > 0 {
                    tracing::warn!(vol = id, path = %c.path.display(), bytes = s.file_len,
                        "volume holds no valid record; starting it empty");
                }
            }
            copies.retain(|c| c.writable);
            if copies.is_empty() {
                return Err(VolumeError::Io {
                    vol: id,
                    err: std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        unwritable.join("; "),
                    ),
                });
            }
            let header = Header {
                kind: Kind::VolumeHeader,
                flags: 0,
                ctype: 0,
                lid: id,
                size: 0,
                secret: 0,
                time: now(),
                crc: crc32c::crc32c(&[]),
            }
            .encode();
            for c in &copies {
                c.file.set_len(0).map_err(io)?;
                c.file.write_all_at(&header, 0).map_err(io)?;
                c.file.sync_all().map_err(io)?;
                sync_dir(&c.path);
            }
            let mut v = Volume::from_parts(
                id,
                max_size,
                copies,
                &[(
                    0,
                    Header::decode(&header).map_err(|_| VolumeError::Missing)?,
                )],
                HEADER_LEN as u64,
                0,
                read_only,
            );
            v.unwritable = unwritable;
            return Ok(v);
        }
        let valid_len = scans[auth].valid_len;
        let generation = scans[auth].generation;
        // A read-only authoritative copy keeps its tail (nothing past the valid prefix is ever
        // read); the cut happens at the next start with the directory writable.
        if scans[auth].file_len > valid_len {
            tracing::warn!(
                vol = id,
                path = %copies[auth].path.display(),
                offset = valid_len,
                bytes = scans[auth].file_len - valid_len,
                "{}",
                if copies[auth].writable {
                    "cutting torn tail"
                } else {
                    "torn tail in a read-only copy; ignored until a restart can cut it"
                }
            );
        }
        if copies[auth].writable {
            copies[auth].file.set_len(valid_len).map_err(io)?;
        }
        let mut keep = vec![true; copies.len()];
        for i in 0..copies.len() {
            if i == auth {
                continue;
            }
            let s = &scans[i];
            let start = if s.generation == generation {
                s.valid_len.min(valid_len)
            } else {
                0
            };
            if !copies[i].writable {
                if start < valid_len {
                    // Behind and not repairable now: not read until a restart rebuilds it.
                    tracing::error!(vol = id, path = %copies[i].path.display(), have = start,
                        need = valid_len, "read-only copy is behind; reads use the other copy");
                    keep[i] = false;
                }
                continue;
            }
            if start < valid_len || s.file_len != valid_len {
                tracing::warn!(
                    vol = id,
                    path = %copies[i].path.display(),
                    from = start,
                    to = valid_len,
                    "rebuilding copy from {}",
                    copies[auth].path.display()
                );
                copies[i].file.set_len(start).map_err(io)?;
                copy_range(&copies[auth].file, &copies[i].file, start, valid_len).map_err(io)?;
                copies[i].file.sync_all().map_err(io)?;
            }
        }
        let records = std::mem::take(&mut scans[auth].records);
        let copies: Vec<Copy> = copies
            .into_iter()
            .zip(keep)
            .filter_map(|(c, k)| k.then_some(c))
            .collect();
        let mut v = Volume::from_parts(
            id, max_size, copies, &records, valid_len, generation, read_only,
        );
        v.unwritable = unwritable;
        Ok(v)
    }

    /// Why copies of this volume could not be opened for writing at open (empty: all could).
    /// Appends must not be attempted while this is non-empty: the store stops writes.
    #[must_use]
    pub fn unwritable(&self) -> &[String] {
        &self.unwritable
    }

    fn from_parts(
        id: u32,
        max_size: u64,
        copies: Vec<Copy>,
        records: &[(u64, Header)],
        len: u64,
        generation: u64,
        read_only: bool,
    ) -> Volume {
        let mut index: Vec<Entry> = Vec::new();
        let (mut live_files, mut live_bytes, mut dead_bytes) = (0u64, 0u64, 0u64);
        for &(offset, h) in records {
            match h.kind {
                Kind::VolumeHeader => {}
                Kind::File => {
                    let slot = h.lid as usize;
                    if slot == 0 {
                        continue;
                    }
                    if index.len() < slot {
                        index.resize(slot, Entry::default());
                    }
                    let e = Entry::new(h.secret, offset, h.size, h.flags & FLAGS_STORED, h.ctype);
                    if e.deleted() {
                        dead_bytes += record_len(h.size);
                    } else {
                        live_files += 1;
                        live_bytes += record_len(h.size);
                    }
                    index[slot - 1] = e;
                }
                Kind::SetFlags => {
                    dead_bytes += HEADER_LEN as u64;
                    if let Some(e) = index.get_mut((h.lid as usize).wrapping_sub(1)) {
                        if e.present() && !e.deleted() && h.flags & FLAG_DELETED != 0 {
                            live_files -= 1;
                            live_bytes -= record_len(e.size());
                            dead_bytes += record_len(e.size());
                        }
                        if e.present() && !e.deleted() {
                            e.set_flags(h.flags & FLAGS_STORED);
                        }
                    }
                }
            }
        }
        index.shrink_to_fit();
        Volume {
            id,
            max_size,
            state: RwLock::new(State {
                copies: Arc::new(copies),
                index,
                len,
                generation,
                live_files,
                live_bytes,
                dead_bytes,
                read_only,
            }),
            append: Mutex::new(()),
            compacting: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            unwritable: Vec::new(),
        }
    }

    /// Appends files (all with `secret`) as one batch; returns their local ids. Either all are
    /// written to every copy or none is visible.
    ///
    /// # Errors
    /// [`VolumeError::Full`] when the batch does not fit, [`VolumeError::ReadOnly`], or a failed
    /// write (every copy cut back).
    pub fn append(
        &self,
        files: &[(&[u8], ContentType)],
        secret: u64,
    ) -> Result<Vec<u32>, VolumeError> {
        let _guard = self.append.lock();
        self.append_locked(files, secret)
    }

    /// As [`Volume::append`], but `None` instead of waiting when another append, a flag change
    /// or a compaction holds the volume (for callers that must not block).
    pub fn try_append(
        &self,
        files: &[(&[u8], ContentType)],
        secret: u64,
    ) -> Option<Result<Vec<u32>, VolumeError>> {
        let _guard = self.append.try_lock()?;
        Some(self.append_locked(files, secret))
    }

    fn append_locked(
        &self,
        files: &[(&[u8], ContentType)],
        secret: u64,
    ) -> Result<Vec<u32>, VolumeError> {
        let (copies, len, first_lid) = {
            let st = self.state.read();
            if st.read_only {
                return Err(VolumeError::ReadOnly(self.id));
            }
            (st.copies.clone(), st.len, st.index.len() as u64 + 1)
        };
        let total: u64 = files
            .iter()
            .map(|(d, _)| record_len(u32::try_from(d.len()).unwrap_or(u32::MAX)))
            .sum();
        if len + total > self.max_size || first_lid + files.len() as u64 > u64::from(u32::MAX) {
            return Err(VolumeError::Full(self.id));
        }
        let mut buf = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        let time = now();
        let mut entries = Vec::with_capacity(files.len());
        for (i, (data, ctype)) in files.iter().enumerate() {
            let size = u32::try_from(data.len()).unwrap_or(u32::MAX);
            let lid = u32::try_from(first_lid + i as u64).unwrap_or(u32::MAX);
            let h = Header {
                kind: Kind::File,
                flags: 0,
                ctype: *ctype as u8,
                lid,
                size,
                secret,
                time,
                crc: crc32c::crc32c(data),
            };
            entries.push(Entry::new(secret, len + buf.len() as u64, size, 0, h.ctype));
            buf.extend_from_slice(&encode_record(&h, data));
        }
        self.write_all_copies(&copies, &buf, len)?;
        let mut st = self.state.write();
        st.index.extend_from_slice(&entries);
        st.len = len + total;
        st.live_files += files.len() as u64;
        st.live_bytes += total;
        Ok((0..files.len())
            .map(|i| u32::try_from(first_lid + i as u64).unwrap_or(u32::MAX))
            .collect())
    }

    fn write_all_copies(&self, copies: &[Copy], buf: &[u8], at: u64) -> Result<(), VolumeError> {
        for c in copies {
            if let Err(err) = c.file.write_all_at(buf, at) {
                for c in copies {
                    let _ = c.file.set_len(at);
                }
                tracing::error!(vol = self.id, path = %c.path.display(), %err,
                    "write failed; every copy cut back, writes stop");
                return Err(VolumeError::Write {
                    vol: self.id,
                    path: c.path.clone(),
                    err,
                });
            }
        }
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Sets or clears flags of `lid` by appending a flag record. Returns `false` when the file
    /// is missing or deleted.
    ///
    /// # Errors
    /// A failed write.
    pub fn set_flags(&self, lid: u32, set: u8, clear: u8) -> Result<bool, VolumeError> {
        let _guard = self.append.lock();
        let (copies, len, entry) = {
            let st = self.state.read();
            let Some(e) = st.index.get((lid as usize).wrapping_sub(1)).copied() else {
                return Ok(false);
            };
            if !e.present() || e.deleted() {
                return Ok(false);
            }
            (st.copies.clone(), st.len, e)
        };
        let flags = ((entry.flags() | set) & !clear) & FLAGS_STORED;
        let h = Header {
            kind: Kind::SetFlags,
            flags,
            ctype: 0,
            lid,
            size: 0,
            secret: 0,
            time: now(),
            crc: crc32c::crc32c(&[]),
        };
        self.write_all_copies(&copies, &h.encode(), len)?;
        let mut st = self.state.write();
        st.len = len + HEADER_LEN as u64;
        st.dead_bytes += HEADER_LEN as u64;
        if let Some(e) = st.index.get_mut(lid as usize - 1) {
            let keep = e.flags() & FLAG_VERIFIED;
            e.set_flags(flags | keep);
        }
        if flags & FLAG_DELETED != 0 {
            let n = record_len(entry.size());
            st.live_files -= 1;
            st.live_bytes -= n;
            st.dead_bytes += n;
        }
        Ok(true)
    }

    /// The index entry of `lid`, if present.
    #[must_use]
    pub fn entry(&self, lid: u32) -> Option<Entry> {
        let st = self.state.read();
        st.index
            .get((lid as usize).wrapping_sub(1))
            .copied()
            .filter(Entry::present)
    }

    /// Reads `lid`'s data, or `range` of it (end exclusive, clamped by the caller).
    ///
    /// # Errors
    /// Missing/deleted, both copies corrupt, or I/O.
    pub fn read(&self, lid: u32, range: Option<(u64, u64)>) -> Result<ReadOut, VolumeError> {
        let (entry, copies) = {
            let st = self.state.read();
            let e = st
                .index
                .get((lid as usize).wrapping_sub(1))
                .copied()
                .filter(|e| e.present() && !e.deleted())
                .ok_or(VolumeError::Missing)?;
            (e, st.copies.clone())
        };
        let size = entry.size();
        let (start, end) = range.unwrap_or((0, u64::from(size)));
        let primary = self.id as usize % copies.len();
        if entry.flags() & FLAG_VERIFIED != 0 {
            let mut data = vec![0u8; usize::try_from(end - start).unwrap_or(0)];
            let at = entry.offset() + HEADER_LEN as u64 + start;
            if copies[primary].file.read_exact_at(&mut data, at).is_ok() {
                return Ok(ReadOut {
                    data: Bytes::from(data),
                    size,
                    ctype: entry.ctype(),
                });
            }
        }
        let record = self.read_verified(&copies, lid, &entry)?;
        {
            let mut st = self.state.write();
            if let Some(e) = st.index.get_mut(lid as usize - 1) {
                if e.off8 == entry.off8 {
                    let f = e.flags() | FLAG_VERIFIED;
                    e.set_flags(f);
                }
            }
        }
        let data = Bytes::from(record).slice(
            HEADER_LEN + usize::try_from(start).unwrap_or(0)
                ..HEADER_LEN + usize::try_from(end).unwrap_or(0),
        );
        Ok(ReadOut {
            data,
            size,
            ctype: entry.ctype(),
        })
    }

    /// Reads the whole record (header + data, no padding) of `entry`, checking both checksums;
    /// a bad copy is repaired from a good one.
    fn read_verified(
        &self,
        copies: &[Copy],
        lid: u32,
        entry: &Entry,
    ) -> Result<Vec<u8>, VolumeError> {
        let n = HEADER_LEN + entry.size() as usize;
        let primary = self.id as usize % copies.len();
        let order: Vec<usize> = (0..copies.len())
            .map(|i| (primary + i) % copies.len())
            .collect();
        let mut bad: Vec<usize> = Vec::new();
        let mut detail = String::new();
        for &i in &order {
            let mut buf = vec![0u8; n];
            if let Err(e) = copies[i].file.read_exact_at(&mut buf, entry.offset()) {
                detail = format!("read error: {e}");
                bad.push(i);
                continue;
            }
            match check_record(&buf, lid, entry) {
                Ok(()) => {
                    for &b in &bad {
                        tracing::warn!(vol = self.id, lid, offset = entry.offset(),
                            bad = %copies[b].path.display(), good = %copies[i].path.display(),
                            "checksum mismatch; served from the other copy and repaired");
                        let _ = copies[b].file.write_all_at(&buf, entry.offset());
                        let _ = copies[b].file.sync_data();
                    }
                    return Ok(buf);
                }
                Err(d) => {
                    detail = d;
                    bad.push(i);
                }
            }
        }
        tracing::error!(vol = self.id, lid, offset = entry.offset(), %detail, "file damaged in every copy");
        Err(VolumeError::Corrupt {
            vol: self.id,
            offset: entry.offset(),
            detail,
        })
    }

    /// fdatasyncs every copy if anything was written since the last call.
    ///
    /// # Errors
    /// The first failing sync (its message names the copy).
    pub fn sync(&self) -> std::io::Result<()> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let copies = self.state.read().copies.clone();
        for c in copies.iter() {
            c.file
                .sync_data()
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", c.path.display())))?;
        }
        Ok(())
    }

    /// Stops appends (the store moves on to the next volume).
    pub fn set_read_only(&self) {
        self.state.write().read_only = true;
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> VolumeStats {
        let st = self.state.read();
        VolumeStats {
            vol: self.id,
            size: st.len,
            live_bytes: st.live_bytes,
            dead_bytes: st.dead_bytes,
            live_files: st.live_files,
            lids: st.index.len() as u64,
            generation: st.generation,
            read_only: st.read_only,
            compacting: self.compacting.load(Ordering::Acquire),
            index_bytes: (st.index.capacity() * std::mem::size_of::<Entry>()) as u64,
            copies: st.copies.len(),
        }
    }

    /// Whether `size` more data bytes fit.
    #[must_use]
    pub fn fits(&self, size: u64) -> bool {
        let st = self.state.read();
        !st.read_only
            && st.len + record_len(u32::try_from(size).unwrap_or(u32::MAX)) <= self.max_size
    }

    /// Compacts: copies live needles into a new generation, renames it over every copy, swaps.
    /// Appends and flag changes to this volume wait; reads go on. `free` reports the bytes
    /// available in a directory.
    ///
    /// # Errors
    /// Already running, not enough free space, corruption in every copy, I/O.
    pub fn compact(&self, free: &dyn Fn(&Path) -> u64) -> Result<(u64, u64), VolumeError> {
        if self.compacting.swap(true, Ordering::AcqRel) {
            return Err(VolumeError::Busy(self.id));
        }
        let result = self.compact_locked(free);
        self.compacting.store(false, Ordering::Release);
        result
    }

    fn compact_locked(&self, free: &dyn Fn(&Path) -> u64) -> Result<(u64, u64), VolumeError> {
        let io = |err| VolumeError::Io { vol: self.id, err };
        let _guard = self.append.lock();
        let (copies, index, generation, live_bytes, before) = {
            let st = self.state.read();
            (
                st.copies.clone(),
                st.index.clone(),
                st.generation,
                st.live_bytes,
                st.len,
            )
        };
        let need = live_bytes + HEADER_LEN as u64;
        for c in copies.iter() {
            let dir = c.path.parent().unwrap_or(Path::new("."));
            let have = free(dir);
            if have < need {
                return Err(VolumeError::NoSpace {
                    vol: self.id,
                    dir: dir.to_path_buf(),
                    need,
                    have,
                });
            }
        }
        let tmp_paths: Vec<PathBuf> = copies
            .iter()
            .map(|c| c.path.with_extension("compact"))
            .collect();
        let mut writers = Vec::new();
        for p in &tmp_paths {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(p)
                .map_err(io)?;
            writers.push(BufWriter::with_capacity(1 << 20, f));
        }
        let header = Header {
            kind: Kind::VolumeHeader,
            flags: 0,
            ctype: 0,
            lid: self.id,
            size: 0,
            secret: generation + 1,
            time: now(),
            crc: crc32c::crc32c(&[]),
        }
        .encode();
        for w in &mut writers {
            w.write_all(&header).map_err(io)?;
        }
        let mut pos = HEADER_LEN as u64;
        let mut new_index = index.clone();
        let mut live_files = 0u64;
        for (i, e) in index.iter().enumerate() {
            let lid = u32::try_from(i + 1).unwrap_or(u32::MAX);
            if !e.present() || e.deleted() {
                new_index[i] = Entry::default();
                continue;
            }
            let mut record = self.read_verified(&copies, lid, e)?;
            // Bake the current flags (hidden) into the copied header.
            let mut h = Header::decode(&record).map_err(|_| VolumeError::Missing)?;
            h.flags = e.flags() & FLAGS_STORED;
            record[..HEADER_LEN].copy_from_slice(&h.encode());
            record.resize(usize::try_from(record_len(h.size)).unwrap_or(0), 0);
            for w in &mut writers {
                w.write_all(&record).map_err(io)?;
            }
            new_index[i] = Entry::new(
                e.secret,
                pos,
                e.size(),
                e.flags() | FLAG_VERIFIED,
                e.ctype() as u8,
            );
            pos += record.len() as u64;
            live_files += 1;
        }
        let mut files = Vec::new();
        for w in writers {
            let f = w.into_inner().map_err(|e| io(e.into_error()))?;
            f.sync_all().map_err(io)?;
            files.push(f);
        }
        let mut new_copies = Vec::new();
        for ((c, tmp), file) in copies.iter().zip(&tmp_paths).zip(files) {
            std::fs::rename(tmp, &c.path).map_err(io)?;
            sync_dir(&c.path);
            new_copies.push(Copy {
                dir: c.dir,
                path: c.path.clone(),
                file,
                writable: true,
            });
        }
        {
            let mut st = self.state.write();
            st.copies = Arc::new(new_copies);
            st.index = new_index;
            st.len = pos;
            st.generation = generation + 1;
            st.live_files = live_files;
            st.live_bytes = pos - HEADER_LEN as u64;
            st.dead_bytes = 0;
        }
        tracing::info!(vol = self.id, before, after = pos, "compacted");
        Ok((before, pos))
    }
}

fn check_record(buf: &[u8], lid: u32, entry: &Entry) -> Result<(), String> {
    let h = Header::decode(buf).map_err(|e| e.to_string())?;
    if h.kind != Kind::File || h.lid != lid || h.size != entry.size() || h.secret != entry.secret {
        return Err("header does not match the index".into());
    }
    if crc32c::crc32c(&buf[HEADER_LEN..]) != h.crc {
        return Err("data checksum mismatch".into());
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn paths(dirs: &[&Path], id: u32) -> Vec<(usize, PathBuf)> {
        dirs.iter()
            .enumerate()
            .map(|(i, d)| (i, d.join(file_name(id))))
            .collect()
    }

    #[test]
    fn append_read_reopen() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let p = paths(&[a.path(), b.path()], 1);
        let v = Volume::open(1, &p, 1 << 30, false).unwrap();
        let lids = v
            .append(
                &[(b"hello", ContentType::Text), (b"", ContentType::Octet)],
                77,
            )
            .unwrap();
        assert_eq!(lids, vec![1, 2]);
        assert_eq!(&v.read(1, None).unwrap().data[..], b"hello");
        assert_eq!(&v.read(1, Some((1, 3))).unwrap().data[..], b"el");
        assert!(v.set_flags(2, FLAG_DELETED, 0).unwrap());
        assert!(matches!(v.read(2, None), Err(VolumeError::Missing)));
        drop(v);
        let v = Volume::open(1, &p, 1 << 30, false).unwrap();
        assert_eq!(&v.read(1, None).unwrap().data[..], b"hello");
        assert!(matches!(v.read(2, None), Err(VolumeError::Missing)));
        assert_eq!(v.entry(1).unwrap().secret(), 77);
        let s = v.stats();
        assert_eq!(s.live_files, 1);
        assert_eq!(s.size, s.live_bytes + s.dead_bytes + HEADER_LEN as u64);
    }

    #[test]
    fn torn_tail_is_cut_and_other_copy_rebuilt() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let p = paths(&[a.path(), b.path()], 2);
        let v = Volume::open(2, &p, 1 << 30, false).unwrap();
        v.append(&[(b"one", ContentType::Text)], 1).unwrap();
        v.append(&[(&[7u8; 1000], ContentType::Octet)], 2).unwrap();
        let full = v.stats().size;
        drop(v);
        // Copy A torn in the middle of the last record; copy B torn harder.
        let fa = OpenOptions::new().write(true).open(&p[0].1).unwrap();
        fa.set_len(full - 500).unwrap();
        let fb = OpenOptions::new().write(true).open(&p[1].1).unwrap();
        fb.set_len(HEADER_LEN as u64 + 20).unwrap();
        let v = Volume::open(2, &p, 1 << 30, false).unwrap();
        assert_eq!(&v.read(1, None).unwrap().data[..], b"one");
        assert!(v.entry(2).is_none());
        let len = v.stats().size;
        assert_eq!(std::fs::metadata(&p[0].1).unwrap().len(), len);
        assert_eq!(std::fs::metadata(&p[1].1).unwrap().len(), len);
    }

    #[test]
    fn corrupt_copy_is_served_from_the_other_and_repaired() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let p = paths(&[a.path(), b.path()], 3);
        let v = Volume::open(3, &p, 1 << 30, false).unwrap();
        v.append(&[(b"precious data", ContentType::Text)], 5)
            .unwrap();
        // Not the last record (a damaged last record is a torn write and is cut on open).
        v.append(&[(b"later", ContentType::Text)], 6).unwrap();
        let off = v.entry(1).unwrap().offset();
        drop(v);
        // Volume 3 reads from copy 1 first: damage that one.
        let f = OpenOptions::new().write(true).open(&p[1].1).unwrap();
        f.write_all_at(b"X", off + HEADER_LEN as u64 + 2).unwrap();
        let v = Volume::open(3, &p, 1 << 30, false).unwrap();
        assert_eq!(&v.read(1, None).unwrap().data[..], b"precious data");
        assert_eq!(
            std::fs::read(&p[0].1).unwrap(),
            std::fs::read(&p[1].1).unwrap()
        );
        // Both damaged: a clear error naming volume and offset.
        drop(v);
        for (_, path) in &p {
            let f = OpenOptions::new().write(true).open(path).unwrap();
            f.write_all_at(b"Y", off + HEADER_LEN as u64 + 2).unwrap();
        }
        let v = Volume::open(3, &p, 1 << 30, false).unwrap();
        let err = v.read(1, None).unwrap_err().to_string();
        assert!(
            err.contains("volume 3") && err.contains(&format!("offset {off}")),
            "{err}"
        );
        assert_eq!(&v.read(2, None).unwrap().data[..], b"later");
    }

    #[test]
    fn compaction_keeps_live_files_and_frees_dead_bytes() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let p = paths(&[a.path(), b.path()], 4);
        let v = Volume::open(4, &p, 1 << 30, false).unwrap();
        for i in 0..100u32 {
            v.append(&[(&vec![i as u8; 1000], ContentType::Octet)], u64::from(i))
                .unwrap();
        }
        for lid in (1..=100).step_by(2) {
            assert!(v.set_flags(lid, FLAG_DELETED, 0).unwrap());
        }
        assert!(v.set_flags(2, FLAG_HIDDEN, 0).unwrap());
        let (before, after) = v.compact(&|_| u64::MAX).unwrap();
        assert!(after < before / 2 + 1000, "{before} -> {after}");
        let s = v.stats();
        assert_eq!(s.dead_bytes, 0);
        assert_eq!(s.size, s.live_bytes + HEADER_LEN as u64);
        assert_eq!(std::fs::metadata(&p[0].1).unwrap().len(), after);
        for lid in 1..=100u32 {
            let r = v.read(lid, None);
            if lid % 2 == 1 {
                assert!(r.is_err());
            } else {
                assert_eq!(&r.unwrap().data[..], &vec![(lid - 1) as u8; 1000][..]);
            }
        }
        assert!(v.entry(2).unwrap().hidden());
        // Appends go on after compaction; a reopen sees the new generation.
        assert_eq!(
            v.append(&[(b"new", ContentType::Text)], 9).unwrap(),
            vec![101]
        );
        drop(v);
        let v = Volume::open(4, &p, 1 << 30, false).unwrap();
        assert_eq!(v.stats().generation, 1);
        assert!(v.entry(2).unwrap().hidden());
        assert_eq!(&v.read(101, None).unwrap().data[..], b"new");
        assert!(matches!(
            v.compact(&|_| 10),
            Err(VolumeError::NoSpace { .. })
        ));
    }

    #[test]
    fn a_half_finished_compaction_is_resolved_by_generation() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let p = paths(&[a.path(), b.path()], 5);
        let v = Volume::open(5, &p, 1 << 30, false).unwrap();
        v.append(&[(b"a", ContentType::Text), (b"b", ContentType::Text)], 1)
            .unwrap();
        v.set_flags(1, FLAG_DELETED, 0).unwrap();
        let old_b = std::fs::read(&p[1].1).unwrap();
        v.compact(&|_| u64::MAX).unwrap();
        drop(v);
        // Crash between the two renames: copy B still holds the old generation.
        std::fs::write(&p[1].1, &old_b).unwrap();
        let v = Volume::open(5, &p, 1 << 30, false).unwrap();
        assert_eq!(v.stats().generation, 1);
        assert_eq!(&v.read(2, None).unwrap().data[..], b"b");
        assert_eq!(
            std::fs::read(&p[0].1).unwrap(),
            std::fs::read(&p[1].1).unwrap()
        );
    }

    #[test]
    fn index_is_16_bytes_per_file() {
        let a = tempfile::tempdir().unwrap();
        let p = paths(&[a.path()], 6);
        let v = Volume::open(6, &p, 1 << 30, false).unwrap();
        for _ in 0..10_000 {
            v.append(&[(b"x", ContentType::Octet)], 1).unwrap();
        }
        drop(v);
        let v = Volume::open(6, &p, 1 << 30, false).unwrap();
        let s = v.stats();
        // After a reopen the index is exactly 16 B per file; while growing, at most 2x that.
        assert_eq!(s.index_bytes / s.lids, 16);
    }

    /// Makes `path` refuse writes, even to root (`chattr +i`; a mode of 0444 for other users).
    /// False where neither works (the caller skips its test).
    pub(crate) fn make_unwritable(path: &Path) -> bool {
        let immutable = std::process::Command::new("chattr")
            .arg("+i")
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !immutable {
            use std::os::unix::fs::PermissionsExt;
            let mode = if path.is_dir() { 0o555 } else { 0o444 };
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
        }
        let probe = if path.is_dir() {
            std::fs::write(path.join(".probe"), b"x").is_err()
        } else {
            OpenOptions::new().write(true).open(path).is_err()
        };
        if !probe {
            make_writable(path);
        }
        probe
    }

    /// Undoes [`make_unwritable`].
    pub(crate) fn make_writable(path: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status();
        let mode = if path.is_dir() { 0o755 } else { 0o644 };
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    }

    #[test]
    fn an_unwritable_copy_at_open_is_read_and_reported_a_behind_one_left_out() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let p = paths(&[a.path(), b.path()], 7);
        let v = Volume::open(7, &p, 1 << 30, false).unwrap();
        v.append(&[(b"one", ContentType::Text)], 1).unwrap();
        v.append(&[(&[9u8; 3000], ContentType::Octet)], 2).unwrap();
        let full = v.stats().size;
        drop(v);
        if !make_unwritable(&p[1].1) {
            eprintln!("SKIPPED: cannot make a file unwritable here (chattr +i or chmod)");
            return;
        }
        // Equal copies, one read-only: opened, both read (odd volume: the second copy first).
        let v = Volume::open(7, &p, 1 << 30, false);
        make_writable(&p[1].1);
        let v = v.unwrap();
        assert_eq!(v.unwritable().len(), 1);
        assert!(v.unwritable()[0].contains(&p[1].1.display().to_string()));
        assert_eq!(v.stats().copies, 2);
        assert_eq!(&v.read(1, None).unwrap().data[..], b"one");
        assert_eq!(&v.read(2, None).unwrap().data[..], &[9u8; 3000][..]);
        drop(v);
        // The read-only copy is behind (its last record never reached the disk): left out,
        // every file is read from the other copy, nothing is written to either.
        let f = OpenOptions::new().write(true).open(&p[1].1).unwrap();
        f.set_len(full - 100).unwrap();
        drop(f);
        assert!(make_unwritable(&p[1].1));
        let v = Volume::open(7, &p, 1 << 30, false);
        make_writable(&p[1].1);
        let v = v.unwrap();
        assert_eq!(v.unwritable().len(), 1);
        assert_eq!(v.stats().copies, 1);
        assert_eq!(&v.read(2, None).unwrap().data[..], &[9u8; 3000][..]);
        assert_eq!(std::fs::metadata(&p[1].1).unwrap().len(), full - 100);
        drop(v);
        // Writable again: rebuilt, the copies agree.
        let v = Volume::open(7, &p, 1 << 30, false).unwrap();
        assert!(v.unwritable().is_empty());
        assert_eq!(v.stats().copies, 2);
        assert_eq!(
            std::fs::read(&p[0].1).unwrap(),
            std::fs::read(&p[1].1).unwrap()
        );
    }

    #[test]
    fn a_new_volume_in_an_unwritable_directory_has_one_copy_until_restart() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let p = paths(&[a.path(), b.path()], 8);
        if !make_unwritable(b.path()) {
            eprintln!("SKIPPED: cannot make a directory unwritable here (chattr +i or chmod)");
            return;
        }
        let v = Volume::open(8, &p, 1 << 30, false);
        make_writable(b.path());
        let v = v.unwrap();
        assert_eq!(v.unwritable().len(), 1);
        assert_eq!(v.stats().copies, 1);
        v.append(&[(b"solo", ContentType::Text)], 3).unwrap();
        drop(v);
        assert!(!p[1].1.exists());
        let v = Volume::open(8, &p, 1 << 30, false).unwrap();
        assert!(v.unwritable().is_empty());
        assert_eq!(&v.read(1, None).unwrap().data[..], b"solo");
        assert_eq!(
            std::fs::read(&p[0].1).unwrap(),
            std::fs::read(&p[1].1).unwrap()
        );
    }
}
