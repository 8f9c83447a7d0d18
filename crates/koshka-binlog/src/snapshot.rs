//! The snapshot container: `<engine>.<pos>.snap`.
//!
//! ```text
//! +----------------------+------------------------------+---------------------------------+
//! | header, 64 B         | body (engine-defined,         | trailer, 16 B                   |
//! | (see FileHeader,     |  Engine::write_snapshot)      | body_len u64 | body crc32c u32  |
//! |  magic "KSHKSNAP")   |                               | magic "SEND"                    |
//! +----------------------+------------------------------+---------------------------------+
//! ```
//! The header's `pos`/`chain`/`time` say where replay must start and what the log looks like
//! there. A snapshot is written to `<name>.tmp`, fdatasynced, renamed, and the directory
//! fsynced, so a crash leaves either the old set of snapshots or the new one, never a partial
//! file under a final name.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::format::{
    snapshot_file_name, FileHeader, SNAPSHOT_HEADER_SIZE, SNAPSHOT_MAGIC, SNAPSHOT_TRAILER_MAGIC,
    SNAPSHOT_TRAILER_SIZE,
};
use crate::fsutil::{list, sync_dir, NamedFile};

/// Suffix of a snapshot being written: `<engine>.<pos>.snap.tmp`.
pub const SNAPSHOT_TMP_SUFFIX: &str = ".tmp";

/// Buffer size for writing and reading snapshot bodies.
pub const SNAPSHOT_IO_BUFFER: usize = 1024 * 1024;

/// A snapshot file that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The file.
    pub path: PathBuf,
    /// Its header.
    pub header: FileHeader,
    /// Length of the body in bytes.
    pub body_len: u64,
}

/// Lists `engine`'s snapshot files in `dir`, oldest first (unvalidated).
///
/// # Errors
/// I/O errors.
pub fn list_snapshots(dir: &Path, engine: &str) -> Result<Vec<NamedFile>> {
    list(dir, Some(engine), "snap")
}

/// Reads and checks a whole snapshot file: header CRC, trailer, body length and CRC, and that
/// the name matches the header.
///
/// # Errors
/// [`Error::Snapshot`] naming the defect; I/O errors.
pub fn validate(path: &Path) -> Result<SnapshotInfo> {
    let bad = |reason: String| Error::Snapshot {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = File::open(path).ctx(path)?;
    let len = file.metadata().ctx(path)?.len();
    let min = (SNAPSHOT_HEADER_SIZE + SNAPSHOT_TRAILER_SIZE) as u64;
    if len < min {
        return Err(bad(format!(
            "{len} bytes, shorter than header and trailer ({min})"
        )));
    }
    let mut hb = [0u8; SNAPSHOT_HEADER_SIZE];
    file.read_exact(&mut hb).ctx(path)?;
    let header =
        FileHeader::decode(&hb, SNAPSHOT_MAGIC).map_err(|r| bad(format!("header: {r}")))?;
    if let Some((engine, pos)) = crate::format::parse_file_name(path, "snap") {
        if engine != header.engine || pos != header.pos {
            return Err(bad(format!(
                "name says {engine} at {pos}, header says {} at {}",
                header.engine, header.pos
            )));
        }
    }
    let body_len = len - min;
    let mut reader = BufReader::with_capacity(SNAPSHOT_IO_BUFFER, (&mut file).take(body_len));
    let mut crc = 0u32;
    loop {
        let chunk = reader.fill_buf_len().ctx(path)?;
        if chunk.is_empty() {
            break;
        }
        crc = crc32c::crc32c_append(crc, chunk);
        let n = chunk.len();
        reader.consume_len(n);
    }
    drop(reader);
    let mut tb = [0u8; SNAPSHOT_TRAILER_SIZE];
    file.read_exact(&mut tb).ctx(path)?;
    let mut u64b = [0u8; 8];
    u64b.copy_from_slice(&tb[0..8]);
    let stored_len = u64::from_le_bytes(u64b);
    let stored_crc = u32::from_le_bytes([tb[8], tb[9], tb[10], tb[11]]);
    if tb[12..16] != SNAPSHOT_TRAILER_MAGIC {
        return Err(bad("trailer magic missing (incomplete file)".into()));
    }
    if stored_len != body_len {
        return Err(bad(format!(
            "trailer says {stored_len} body bytes, file holds {body_len}"
        )));
    }
    if stored_crc != crc {
        return Err(bad(format!(
            "body CRC {crc:08x} does not match the trailer's {stored_crc:08x}"
        )));
    }
    Ok(SnapshotInfo {
        path: path.to_path_buf(),
        header,
        body_len,
    })
}

/// Small helpers over `BufRead` with clearer names at the call site.
trait FillLen {
    fn fill_buf_len(&mut self) -> std::io::Result<&[u8]>;
    fn consume_len(&mut self, n: usize);
}

impl<R: Read> FillLen for BufReader<R> {
    fn fill_buf_len(&mut self) -> std::io::Result<&[u8]> {
        std::io::BufRead::fill_buf(self)
    }
    fn consume_len(&mut self, n: usize) {
        std::io::BufRead::consume(self, n);
    }
}

/// Deletes `engine`'s snapshot temp files in `dir` (`<engine>.<pos>.snap.tmp`, left by a
/// crash while a snapshot was written; never loaded), logging a line for each. Returns the
/// paths removed.
///
/// # Errors
/// I/O errors listing the directory or removing a file.
pub fn remove_leftover_temps(dir: &Path, engine: &str) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir).ctx(dir)? {
        let path = entry.ctx(dir)?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(final_name) = name.strip_suffix(SNAPSHOT_TMP_SUFFIX) else {
            continue;
        };
        let is_ours = crate::format::parse_file_name(Path::new(final_name), "snap")
            .is_some_and(|(e, _)| e == engine);
        if !is_ours {
            continue;
        }
        std::fs::remove_file(&path).ctx(&path)?;
        tracing::warn!(
            "removed {}: a snapshot interrupted by a crash (never loaded)",
            path.display()
        );
        removed.push(path);
    }
    if !removed.is_empty() {
        sync_dir(dir)?;
    }
    Ok(removed)
}

/// Opens the body of a validated snapshot for [`koshka_engine::Engine::load_snapshot`].
///
/// # Errors
/// I/O errors.
pub fn open_body(info: &SnapshotInfo) -> Result<impl Read> {
    let mut file = File::open(&info.path).ctx(&info.path)?;
    file.seek(SeekFrom::Start(SNAPSHOT_HEADER_SIZE as u64))
        .ctx(&info.path)?;
    Ok(BufReader::with_capacity(
        SNAPSHOT_IO_BUFFER,
        file.take(info.body_len),
    ))
}

/// A writer that counts and checksums what passes through it.
struct CrcWriter<W: Write> {
    inner: W,
    crc: u32,
    len: u64,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes a snapshot with `header` into `dir`: the body comes from `body`; `before_publish`
/// runs after the body is complete and before the file is renamed into place (the host
/// makes the log durable there). Returns the final path.
///
/// # Errors
/// I/O errors, errors from `body` or `before_publish`; the temp file is removed on error.
pub fn write(
    dir: &Path,
    header: &FileHeader,
    body: &mut dyn FnMut(&mut dyn Write) -> Result<()>,
    before_publish: &mut dyn FnMut() -> Result<()>,
) -> Result<PathBuf> {
    let path = dir.join(snapshot_file_name(&header.engine, header.pos));
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(SNAPSHOT_TMP_SUFFIX);
    let tmp = PathBuf::from(tmp_name);
    let result = write_tmp(&tmp, header, body)
        .and_then(|()| before_publish())
        .and_then(|()| std::fs::rename(&tmp, &path).ctx(&path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)?;
    Ok(path)
}

fn write_tmp(
    tmp: &Path,
    header: &FileHeader,
    body: &mut dyn FnMut(&mut dyn Write) -> Result<()>,
) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)
        .ctx(tmp)?;
    let mut out = BufWriter::with_capacity(SNAPSHOT_IO_BUFFER, file);
    out.write_all(&header.encode(SNAPSHOT_MAGIC)).ctx(tmp)?;
    let mut w = CrcWriter {
        inner: out,
        crc: 0,
        len: 0,
    };
    body(&mut w)?;
    let (mut out, crc, len) = (w.inner, w.crc, w.len);
    let mut trailer = [0u8; SNAPSHOT_TRAILER_SIZE];
    trailer[0..8].copy_from_slice(&len.to_le_bytes());
    trailer[8..12].copy_from_slice(&crc.to_le_bytes());
    trailer[12..16].copy_from_slice(&SNAPSHOT_TRAILER_MAGIC);
    out.write_all(&trailer).ctx(tmp)?;
    let file = out
        .into_inner()
        .map_err(|e| Error::io(tmp, e.into_error()))?;
    file.sync_all().ctx(tmp)?;
    Ok(())
}
