//! Log shipping: a primary sends its binlog files byte for byte, a replica writes them under
//! the same names, so a replica's log is always a prefix of its primary's
//! (`docs/replication.md`).
//!
//! # Protocol (one TCP connection per engine and replica)
//! The replica opens with one line:
//!
//! ```text
//! KREPL 1 <engine> <shard index> <shard count> <last segment start|-> <its length> <end pos> <end chain>
//! ```
//!
//! naming where its log ends: the start position and byte length of its last segment file,
//! and the position and chain value at the end of its last whole record. The primary answers
//! one line — `OK`, `ERR <reason>` or `DIVERGED <reason>` (the replica's log is not a prefix
//! of the primary's) — and then streams frames `[kind u8][len u32 LE][payload]`:
//!
//! | kind | payload | replica does |
//! |---|---|---|
//! | `S` | a segment header (64 bytes) | creates the segment file it names, writes the header |
//! | `D` | bytes of the current segment | appends them |
//! | `P` | u64 position + snapshot file bytes | (empty replicas only) writes the snapshot file |
//! | `H` | u64 written position, u64 unix ms | notes how far the primary is |
//!
//! The replica answers with `A` frames (u64: position of its log handed to write(2)), which
//! semi-synchronous acknowledgement counts ([`Acks`]).
//!
//! A replica with an empty log whose primary no longer has the segment at position 0 (old
//! segments deleted after a snapshot) gets the newest snapshot first (`P`), then every segment
//! from the one that holds the snapshot's position.
//!
//! The primary ships every byte handed to write(2), also bytes not yet fdatasynced: a replica
//! can hold records its primary loses in a crash. Such a replica's log is then no prefix of the
//! restarted primary's; the handshake says `DIVERGED` and [`reconcile`] moves the extra tail
//! aside at the replica's next start.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use koshka_engine::ShardSpec;
use parking_lot::Mutex;

use crate::error::{Error, IoContext, Result};
use crate::format::{
    segment_file_name, snapshot_file_name, FileHeader, SEGMENT_HEADER_SIZE, SEGMENT_MAGIC,
};
use crate::fsutil::{list, sync_dir, NamedFile};
use crate::reader::{ReadMode, ReadOptions, Reader};
use crate::snapshot::list_snapshots;
use crate::writer::Binlog;

/// Protocol version in the handshake line.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest `D` frame the primary sends.
pub const CHUNK_SIZE: usize = 1024 * 1024;

/// Largest frame a replica accepts (a chunk, or a snapshot piece, plus slack).
pub const FRAME_SIZE_MAX: usize = CHUNK_SIZE + 4096;

/// Longest handshake line either side accepts.
pub const HANDSHAKE_LINE_MAX: usize = 512;

/// New log bytes below this are gathered for up to [`BATCH_WAIT`] before they are shipped.
pub const BATCH_BYTES: u64 = 64 * 1024;

/// How long the primary gathers a trickle of new bytes before shipping them (adds at most
/// this to the replica's lag).
pub const BATCH_WAIT: Duration = Duration::from_micros(300);

/// How often an idle primary tells its replicas how far its log is written.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);

/// A connection with nothing heard for this long is dead (heartbeats and acks keep a live
/// one busy).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a replica waits to connect to its primary.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// First and last pause between a replica's reconnection attempts (doubling, with jitter).
pub const RECONNECT_MIN: Duration = Duration::from_millis(50);
/// See [`RECONNECT_MIN`].
pub const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// How often a replica fdatasyncs what it received (its own `everysec`).
pub const REPLICA_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Suffix of files a replica moves aside because its primary never had them.
pub const DIVERGED_SUFFIX: &str = "diverged";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn proto(reason: impl Into<String>) -> Error {
    Error::Replication(reason.into())
}

fn write_frame(w: &mut impl Write, kind: u8, payload: &[&[u8]]) -> std::io::Result<()> {
    let len: usize = payload.iter().map(|p| p.len()).sum();
    let len = u32::try_from(len).map_err(|_| std::io::Error::other("frame too large"))?;
    w.write_all(&[kind])?;
    w.write_all(&len.to_le_bytes())?;
    for p in payload {
        w.write_all(p)?;
    }
    Ok(())
}

fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>) -> Result<u8> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head)
        .map_err(|e| proto(format!("connection: {e}")))?;
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > FRAME_SIZE_MAX {
        return Err(proto(format!(
            "frame of {len} bytes is over {FRAME_SIZE_MAX}"
        )));
    }
    buf.resize(len, 0);
    r.read_exact(buf)
        .map_err(|e| proto(format!("connection: {e}")))?;
    Ok(head[0])
}

fn read_line(r: &mut impl BufRead) -> Result<String> {
    let mut line = Vec::new();
    r.by_ref()
        .take(HANDSHAKE_LINE_MAX as u64)
        .read_until(b'\n', &mut line)
        .map_err(|e| proto(format!("handshake: {e}")))?;
    if line.last() != Some(&b'\n') {
        return Err(proto("handshake line missing or too long"));
    }
    line.pop();
    String::from_utf8(line).map_err(|_| proto("handshake line is not UTF-8"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Where a replica's log ends, as it tells its primary.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplicaEnd {
    /// Start position and byte length of the last segment file.
    pub last_segment: Option<(u64, u64)>,
    /// Position and chain value just past the last whole record.
    pub pos: u64,
    /// See `pos`.
    pub chain: u32,
}

/// Positions confirmed by the replicas of one engine, for semi-synchronous acknowledgement.
#[derive(Debug)]
pub struct Acks {
    replicas: Mutex<Vec<(u64, u64)>>,
    next_id: AtomicU64,
    /// The `k`-th highest confirmed position for each `k` in `1..=K_MAX`, republished on
    /// every ack.
    kth: tokio::sync::watch::Sender<[u64; Self::K_MAX]>,
}

impl Default for Acks {
    fn default() -> Self {
        Self {
            replicas: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            kth: tokio::sync::watch::channel([0; Self::K_MAX]).0,
        }
    }
}

impl Acks {
    /// Most replicas a write can wait for.
    pub const K_MAX: usize = 8;

    fn register(&self) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.replicas.lock().push((id, 0));
        id
    }

    fn update(&self, id: u64, pos: u64) {
        let mut all = self.replicas.lock();
        if let Some(r) = all.iter_mut().find(|r| r.0 == id) {
            r.1 = r.1.max(pos);
        }
        self.publish(&all);
    }

    fn remove(&self, id: u64) {
        let mut all = self.replicas.lock();
        all.retain(|r| r.0 != id);
        self.publish(&all);
    }

    fn publish(&self, all: &[(u64, u64)]) {
        let mut positions: Vec<u64> = all.iter().map(|r| r.1).collect();
        positions.sort_unstable_by(|a, b| b.cmp(a));
        let mut kth = [0u64; Self::K_MAX];
        for (k, slot) in kth.iter_mut().enumerate() {
            *slot = positions.get(k).copied().unwrap_or(0);
        }
        self.kth.send_replace(kth);
    }

    /// Replicas connected now.
    #[must_use]
    pub fn connected(&self) -> usize {
        self.replicas.lock().len()
    }

    /// The position at least `k` replicas (1..=[`Acks::K_MAX`]) have written.
    #[must_use]
    pub fn confirmed(&self, k: usize) -> u64 {
        if k == 0 {
            return u64::MAX;
        }
        self.kth.borrow()[k.min(Self::K_MAX) - 1]
    }

    /// Positions written by each connected replica.
    #[must_use]
    pub fn positions(&self) -> Vec<u64> {
        self.replicas.lock().iter().map(|r| r.1).collect()
    }

    /// Resolves once at least `k` replicas have written `pos`; `false` after `timeout`.
    pub async fn wait(&self, k: usize, pos: u64, timeout: Duration) -> bool {
        let mut rx = self.kth.subscribe();
        let wait = async {
            loop {
                if rx.borrow_and_update()[k.clamp(1, Self::K_MAX) - 1] >= pos {
                    return;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

/// What a primary ships: one engine's log directory and its writer.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The engine's data directory.
    pub dir: &'a Path,
    /// Engine name.
    pub engine: &'a str,
    /// The shard this node holds.
    pub shard: ShardSpec,
    /// The writer (how far the files are written).
    pub binlog: &'a Binlog,
}

/// Parsed handshake of a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Engine it replicates.
    pub engine: String,
    /// Shard it holds.
    pub shard: ShardSpec,
    /// Where its log ends.
    pub end: ReplicaEnd,
}

/// The handshake line for `engine`.
#[must_use]
pub fn hello_line(engine: &str, shard: ShardSpec, end: &ReplicaEnd) -> String {
    let last = end
        .last_segment
        .map_or_else(|| "- 0".to_string(), |(s, l)| format!("{s} {l}"));
    format!(
        "KREPL {PROTOCOL_VERSION} {engine} {} {} {last} {} {}\n",
        shard.index, shard.count, end.pos, end.chain
    )
}

/// Parses a handshake line (without its newline).
///
/// # Errors
/// [`Error::Replication`] naming what is wrong.
pub fn parse_hello(line: &str) -> Result<Hello> {
    let words: Vec<&str> = line.split(' ').collect();
    let bad = || proto(format!("bad handshake {line:?}"));
    if words.len() != 9 || words[0] != "KREPL" {
        return Err(bad());
    }
    if words[1] != PROTOCOL_VERSION.to_string() {
        return Err(proto(format!(
            "protocol version {} (this node speaks {PROTOCOL_VERSION})",
            words[1]
        )));
    }
    let num = |w: &str| w.parse::<u64>().map_err(|_| bad());
    let index = u32::try_from(num(words[3])?).map_err(|_| bad())?;
    let count = u32::try_from(num(words[4])?).map_err(|_| bad())?;
    let last_segment = if words[5] == "-" {
        None
    } else {
        Some((num(words[5])?, num(words[6])?))
    };
    Ok(Hello {
        engine: words[2].to_string(),
        shard: ShardSpec { index, count },
        end: ReplicaEnd {
            last_segment,
            pos: num(words[7])?,
            chain: u32::try_from(num(words[8])?).map_err(|_| bad())?,
        },
    })
}

/// The chain value at `pos` in the log of `dir`, `None` when `pos` is not a record boundary
/// of it.
fn chain_at(dir: &Path, engine: &str, pos: u64) -> Option<u32> {
    let opts = ReadOptions {
        mode: ReadMode::Tail,
        ..Default::default()
    };
    let reader = Reader::open_at(dir, engine, pos, opts).ok()?;
    reader
        .start_known()
        .then(|| reader.chain())
        .or((pos == 0).then_some(0))
}

/// Where shipping to a replica starts: a segment and an offset in its file.
enum Start {
    /// At file offset `off` of the segment starting at `seg` (0: send its header first).
    Segment { seg: u64, off: u64 },
    /// Send this snapshot first, then every segment from the one holding its position.
    Snapshot(NamedFile),
}

/// Decides where to start shipping to `hello`'s replica, or why not.
fn plan_start(src: &Source<'_>, hello: &Hello) -> std::result::Result<Start, (bool, String)> {
    let segments = list(src.dir, Some(src.engine), "bin").map_err(|e| (false, e.to_string()))?;
    let Some((seg_start, seg_len)) = hello.end.last_segment else {
        return match segments.first() {
            None => Ok(Start::Segment { seg: 0, off: 0 }),
            Some(first) if first.pos == 0 => Ok(Start::Segment { seg: 0, off: 0 }),
            Some(first) => {
                let snapshots =
                    list_snapshots(src.dir, src.engine).map_err(|e| (false, e.to_string()))?;
                snapshots
                    .into_iter()
                    .rev()
                    .find(|s| s.pos >= first.pos)
                    .map(Start::Snapshot)
                    .ok_or_else(|| {
                        (
                            false,
                            format!(
                                "the log starts at {} and no snapshot covers what is missing",
                                first.pos
                            ),
                        )
                    })
            }
        };
    };
    let Some(seg) = segments.iter().find(|s| s.pos == seg_start) else {
        // The replica's log ends exactly where one of ours starts (its own segment file
        // there, if any, holds no record): ship that segment from its header.
        if let Some(next) = segments.iter().find(|s| s.pos == hello.end.pos) {
            if chain_at(src.dir, src.engine, next.pos) == Some(hello.end.chain) {
                return Ok(Start::Segment {
                    seg: next.pos,
                    off: 0,
                });
            }
        }
        return Err((
            true,
            format!("the primary has no segment starting at {seg_start}"),
        ));
    };
    if seg_len < SEGMENT_HEADER_SIZE as u64 {
        return Ok(Start::Segment {
            seg: seg.pos,
            off: 0,
        });
    }
    match chain_at(src.dir, src.engine, hello.end.pos) {
        Some(chain) if chain == hello.end.chain => {}
        Some(_) => {
            return Err((
                true,
                format!("chain value at position {} differs", hello.end.pos),
            ))
        }
        None => {
            return Err((
                true,
                format!(
                    "position {} is not a record boundary of the primary's log",
                    hello.end.pos
                ),
            ))
        }
    }
    // The replica's file may end in a torn record (it cut it at its start, or holds it):
    // ship from the end of its last whole record.
    let Some(into) = hello.end.pos.checked_sub(seg.pos) else {
        return Err((
            false,
            format!(
                "the replica's position {} is before its last segment {seg_start}",
                hello.end.pos
            ),
        ));
    };
    let off = SEGMENT_HEADER_SIZE as u64 + into;
    Ok(Start::Segment { seg: seg.pos, off })
}

/// Serves one replica connection until it closes or `stop` is set: handshake, then frames.
/// Confirmed positions go to `acks`.
///
/// # Errors
/// Handshake and connection errors (the replica reconnects).
pub fn serve(
    stream: TcpStream,
    hello: &Hello,
    src: &Source<'_>,
    acks: &Arc<Acks>,
    stop: &AtomicBool,
) -> Result<()> {
    let ctx = |e: std::io::Error| proto(format!("sending to a replica: {e}"));
    let mut out = BufWriter::with_capacity(256 * 1024, stream.try_clone().map_err(ctx)?);
    if hello.shard != src.shard {
        let reason = format!(
            "shard {}/{} differs from the primary's {}/{}",
            hello.shard.index, hello.shard.count, src.shard.index, src.shard.count
        );
        let _ = writeln!(out, "ERR {reason}").and_then(|()| out.flush());
        return Err(proto(reason));
    }
    let start = match plan_start(src, hello) {
        Ok(start) => start,
        Err((diverged, reason)) => {
            let word = if diverged { "DIVERGED" } else { "ERR" };
            let _ = writeln!(out, "{word} {reason}").and_then(|()| out.flush());
            return Err(proto(reason));
        }
    };
    out.write_all(b"OK\n").map_err(ctx)?;
    let id = acks.register();
    let reader_stream = stream.try_clone().map_err(ctx)?;
    let acks_in = Arc::clone(acks);
    let done = Arc::new(AtomicBool::new(false));
    let done_in = Arc::clone(&done);
    let ack_thread = std::thread::Builder::new()
        .name("repl-acks".into())
        .spawn(move || {
            read_acks(reader_stream, &acks_in, id);
            done_in.store(true, Ordering::Release);
        })
        .map_err(ctx)?;
    let result = ship(&mut out, src, start, stop, &done);
    let _ = stream.shutdown(Shutdown::Both);
    let _ = ack_thread.join();
    acks.remove(id);
    result
}

fn read_acks(stream: TcpStream, acks: &Acks, id: u64) {
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let mut r = BufReader::new(stream);
    let mut buf = Vec::new();
    while let Ok(kind) = read_frame(&mut r, &mut buf) {
        if kind == b'A' && buf.len() == 8 {
            acks.update(id, u64_at(&buf, 0));
        }
    }
}

/// Streams the log from `start` until the connection fails or `stop` is set.
fn ship(
    out: &mut BufWriter<TcpStream>,
    src: &Source<'_>,
    start: Start,
    stop: &AtomicBool,
    peer_gone: &AtomicBool,
) -> Result<()> {
    let ctx = |e: std::io::Error| proto(format!("sending to a replica: {e}"));
    let (mut seg, mut off) = match start {
        Start::Segment { seg, off } => (seg, off),
        Start::Snapshot(snap) => {
            send_snapshot(out, &snap)?;
            let segments = list(src.dir, Some(src.engine), "bin")?;
            let holder = segments
                .iter()
                .rev()
                .find(|s| s.pos <= snap.pos)
                .ok_or_else(|| proto("no segment holds the snapshot's position"))?;
            (holder.pos, 0)
        }
    };
    let mut file: Option<(u64, File)> = None;
    let mut buf = vec![0u8; CHUNK_SIZE];
    // When the last heartbeat went out (one is sent at once).
    let mut last_sent = Instant::now() - HEARTBEAT_INTERVAL;
    while !stop.load(Ordering::Acquire) && !peer_gone.load(Ordering::Acquire) {
        let written = src.binlog.written();
        let path = src.dir.join(segment_file_name(src.engine, seg));
        if file.as_ref().is_none_or(|(s, _)| *s != seg) {
            match File::open(&path) {
                Ok(f) => file = Some((seg, f)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && seg == 0 && off == 0 => {
                    // An empty primary: nothing to send yet.
                    let now = src.binlog.wait_written_past(written, HEARTBEAT_INTERVAL);
                    heartbeat(out, now, &mut last_sent)?;
                    continue;
                }
                Err(e) => return Err(e).ctx(&path),
            }
        }
        let Some((_, f)) = file.as_ref() else {
            continue;
        };
        let file_len = f.metadata().ctx(&path)?.len();
        if off == 0 {
            if file_len < SEGMENT_HEADER_SIZE as u64 {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let mut header = [0u8; SEGMENT_HEADER_SIZE];
            f.read_exact_at(&mut header, 0).ctx(&path)?;
            write_frame(out, b'S', &[&header]).map_err(ctx)?;
            off = SEGMENT_HEADER_SIZE as u64;
            continue;
        }
        // Bytes of the file that hold whole writes: up to the written position. Once the next
        // segment exists, this one ends where that one starts (its name says where); the
        // writer may create the next segment before it wrote the end of this one, so the
        // bytes up to there are waited for, not assumed.
        let mut valid = file_len.min(SEGMENT_HEADER_SIZE as u64 + written.saturating_sub(seg));
        let mut next = None;
        if off >= valid {
            next = next_segment(src, seg)?;
            if let Some(n) = next {
                let file_len = f.metadata().ctx(&path)?.len();
                valid = file_len.min(SEGMENT_HEADER_SIZE as u64 + (n - seg));
            }
        }
        if off < valid {
            let n = usize::try_from(valid - off)
                .unwrap_or(CHUNK_SIZE)
                .min(CHUNK_SIZE);
            f.read_exact_at(&mut buf[..n], off).ctx(&path)?;
            write_frame(out, b'D', &[&buf[..n]]).map_err(ctx)?;
            off += n as u64;
            heartbeat(out, written, &mut last_sent)?;
            continue;
        }
        if let Some(n) = next {
            if off == SEGMENT_HEADER_SIZE as u64 + (n - seg) {
                seg = n;
                off = 0;
            } else {
                // The end of this segment is not written yet.
                out.flush().map_err(ctx)?;
                std::thread::sleep(Duration::from_millis(1));
            }
            continue;
        }
        out.flush().map_err(ctx)?;
        let now = src.binlog.wait_written_past(written, HEARTBEAT_INTERVAL);
        if now > written && now - written < BATCH_BYTES {
            // A trickle of small writes: gather a little more before the next frame, so a
            // busy primary pays a few system calls per millisecond, not per write.
            std::thread::sleep(BATCH_WAIT);
        }
        heartbeat(out, now, &mut last_sent)?;
    }
    out.flush().map_err(ctx)
}

fn heartbeat(out: &mut BufWriter<TcpStream>, written: u64, last: &mut Instant) -> Result<()> {
    if last.elapsed() < HEARTBEAT_INTERVAL {
        return Ok(());
    }
    let ctx = |e: std::io::Error| proto(format!("sending to a replica: {e}"));
    let mut p = [0u8; 16];
    p[..8].copy_from_slice(&written.to_le_bytes());
    p[8..].copy_from_slice(&now_ms().to_le_bytes());
    write_frame(out, b'H', &[&p]).map_err(ctx)?;
    out.flush().map_err(ctx)?;
    *last = Instant::now();
    Ok(())
}

/// The start of the segment after the one starting at `seg`, if one exists yet.
fn next_segment(src: &Source<'_>, seg: u64) -> Result<Option<u64>> {
    Ok(list(src.dir, Some(src.engine), "bin")?
        .iter()
        .map(|s| s.pos)
        .find(|&p| p > seg))
}

fn send_snapshot(out: &mut BufWriter<TcpStream>, snap: &NamedFile) -> Result<()> {
    let ctx = |e: std::io::Error| proto(format!("sending to a replica: {e}"));
    let bytes = std::fs::read(&snap.path).ctx(&snap.path)?;
    // Header frame: position and total length; the bytes follow in `D`-sized `p` frames.
    let mut head = [0u8; 16];
    head[..8].copy_from_slice(&snap.pos.to_le_bytes());
    head[8..].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    write_frame(out, b'P', &[&head]).map_err(ctx)?;
    for chunk in bytes.chunks(CHUNK_SIZE) {
        write_frame(out, b'p', &[chunk]).map_err(ctx)?;
    }
    out.flush().map_err(ctx)
}

// ----------------------------------------------------------------------------------------
// Replica side
// ----------------------------------------------------------------------------------------

/// A record parsed from the shipped stream.
#[derive(Debug, Clone, Copy)]
pub struct Shipped<'a> {
    /// Position just past the record.
    pub pos: u64,
    /// Chain value at `pos`.
    pub chain: u32,
    /// Time in force for the record.
    pub time: u32,
    /// Record type (reserved types included: the sink skips them).
    pub record_type: u16,
    /// Payload.
    pub payload: &'a [u8],
}

/// Where received records go: the replica's engine.
pub trait ShipSink {
    /// Applies one record (called in log order, each record once).
    ///
    /// # Errors
    /// A record that does not apply: following stops.
    fn record(&mut self, rec: &Shipped<'_>) -> Result<()>;

    /// Loads a snapshot the primary sent to this empty replica; records up to its position
    /// are then written to the files but not applied.
    ///
    /// # Errors
    /// A snapshot that does not validate or load.
    fn snapshot(&mut self, path: &Path) -> Result<()>;

    /// Everything received so far is applied (before the acknowledgement goes out).
    fn burst_done(&mut self) {}
}

/// Splits the shipped bytes into records, checking every CRC and the chain across segments.
#[derive(Debug, Default)]
struct StreamParser {
    pos: u64,
    chain: u32,
    time: u32,
    /// `pos`, `chain`, `time` are known (else the next segment header sets them).
    known: bool,
    /// Records ending at or before this are written but not applied (already in the state).
    applied: u64,
    buf: Vec<u8>,
}

impl StreamParser {
    fn segment(&mut self, header: &FileHeader) -> Result<()> {
        if !self.buf.is_empty() {
            return Err(proto("a segment header arrived inside a record"));
        }
        if self.known && (header.pos != self.pos || header.chain != self.chain) {
            return Err(proto(format!(
                "segment at {} (chain {:08x}) does not continue the log at {} (chain {:08x})",
                header.pos, header.chain, self.pos, self.chain
            )));
        }
        self.pos = header.pos;
        self.chain = header.chain;
        self.time = header.time;
        self.known = true;
        Ok(())
    }

    fn feed(&mut self, data: &[u8], sink: &mut dyn ShipSink) -> Result<()> {
        use crate::format::{chain_next, RecordHeader, RECORD_HEADER_SIZE, RECORD_TYPE_TIME};
        if !self.known {
            return Err(proto("data before any segment header"));
        }
        self.buf.extend_from_slice(data);
        let mut at = 0usize;
        while self.buf.len() - at >= RECORD_HEADER_SIZE {
            let mut hb = [0u8; RECORD_HEADER_SIZE];
            hb.copy_from_slice(&self.buf[at..at + RECORD_HEADER_SIZE]);
            let header = RecordHeader::decode(&hb)
                .map_err(|e| proto(format!("at log position {}: {e}", self.pos)))?;
            let total = RECORD_HEADER_SIZE + header.len as usize;
            if self.buf.len() - at < total {
                break;
            }
            let payload = &self.buf[at + RECORD_HEADER_SIZE..at + total];
            if !header.check_payload(payload) {
                return Err(proto(format!(
                    "record CRC mismatch at log position {}",
                    self.pos
                )));
            }
            if header.record_type == RECORD_TYPE_TIME {
                if let Ok(t) = <[u8; 4]>::try_from(payload) {
                    self.time = u32::from_le_bytes(t);
                }
            }
            self.pos += total as u64;
            self.chain = chain_next(self.chain, header.crc);
            if self.pos > self.applied {
                sink.record(&Shipped {
                    pos: self.pos,
                    chain: self.chain,
                    time: self.time,
                    record_type: header.record_type,
                    payload,
                })?;
                self.applied = self.pos;
            }
            at += total;
        }
        self.buf.drain(..at);
        Ok(())
    }
}

/// What the replica's receiver reports and the host reads.
#[derive(Debug, Default)]
pub struct FollowerState {
    /// Position up to which received bytes are in the replica's files.
    pub received: AtomicU64,
    /// The primary's written position, as last heard.
    pub primary_pos: AtomicU64,
    /// Connected to the primary now.
    pub connected: AtomicBool,
    /// Connections made (1 + reconnections).
    pub connections: AtomicU64,
    /// Last error or refusal, for `stats`.
    pub last_error: Mutex<String>,
    /// The primary said this log is not a prefix of its own.
    pub diverged: AtomicBool,
    /// The primary's address changed: drop the connection and reconnect there.
    pub retarget: AtomicBool,
}

/// Receives one engine's log from its primary into `dir`, byte for byte.
#[derive(Debug)]
pub struct Receiver {
    dir: PathBuf,
    engine: String,
    shard: ShardSpec,
    primary: Arc<Mutex<String>>,
    state: Arc<FollowerState>,
    /// Current segment file and its start position and length.
    file: Option<(File, PathBuf, u64, u64)>,
    last_sync: Instant,
    /// A background fdatasync is running.
    syncing: Arc<AtomicBool>,
}

impl Receiver {
    /// A receiver for `engine`'s log in `dir` from the replication address `primary`.
    ///
    /// # Errors
    /// I/O errors listing `dir`.
    pub fn new(
        dir: &Path,
        engine: &str,
        shard: ShardSpec,
        primary: &str,
        state: Arc<FollowerState>,
    ) -> Result<Self> {
        Ok(Self {
            dir: dir.to_path_buf(),
            engine: engine.to_string(),
            shard,
            primary: Arc::new(Mutex::new(primary.to_string())),
            state,
            file: None,
            last_sync: Instant::now(),
            syncing: Arc::new(AtomicBool::new(false)),
        })
    }

    /// One connection: handshake from `end` (where the replica's whole records end), then
    /// receive until the connection fails or `stop` is set. `applied` is called after each
    /// batch of received bytes so the caller applies the new records.
    ///
    /// # Errors
    /// Connection, refusal (`DIVERGED`, `ERR`) and I/O errors.
    pub fn run_once(
        &mut self,
        end: &ReplicaEnd,
        time: u32,
        stop: &AtomicBool,
        sink: &mut dyn ShipSink,
    ) -> Result<()> {
        // The file may hold a torn record past the last whole one: cut it, the primary sends
        // it again.
        self.cut_to(end)?;
        self.state.retarget.store(false, Ordering::Release);
        let primary = self.primary.lock().clone();
        let addr = primary
            .to_socket_addrs()
            .map_err(|e| proto(format!("primary address {primary}: {e}")))?
            .next()
            .ok_or_else(|| proto(format!("primary address {primary} resolves to nothing")))?;
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .map_err(|e| proto(format!("connecting to the primary {primary}: {e}")))?;
        let _ = stream.set_nodelay(true);
        stream
            .set_read_timeout(Some(IDLE_TIMEOUT))
            .map_err(|e| proto(e.to_string()))?;
        let mut ack = stream.try_clone().map_err(|e| proto(e.to_string()))?;
        let mut r = BufReader::with_capacity(256 * 1024, stream);
        ack.write_all(hello_line(&self.engine, self.shard, end).as_bytes())
            .map_err(|e| proto(format!("handshake: {e}")))?;
        let answer = read_line(&mut r)?;
        if let Some(reason) = answer.strip_prefix("DIVERGED ") {
            self.state.diverged.store(true, Ordering::Release);
            return Err(proto(format!(
                "this replica's log is not a prefix of the primary's ({reason}); restart it \
                 to move the extra tail aside and rejoin"
            )));
        }
        if answer != "OK" {
            return Err(proto(format!("the primary refused: {answer}")));
        }
        self.state.connected.store(true, Ordering::Release);
        self.state.connections.fetch_add(1, Ordering::Relaxed);
        let mut parser = StreamParser {
            pos: end.pos,
            chain: end.chain,
            time,
            known: end.last_segment.is_some() || end.pos > 0,
            applied: end.pos,
            buf: Vec::new(),
        };
        let result = self.receive(&mut r, &mut ack, stop, &mut parser, sink);
        self.state.connected.store(false, Ordering::Release);
        result
    }

    /// Makes the files end where the applied log ends (`end`, from [`replica_end`]): later
    /// segment files are removed and the one holding `end.pos` is cut there. What goes was
    /// received but not applied; the primary sends it again.
    fn cut_to(&mut self, end: &ReplicaEnd) -> Result<()> {
        self.file = None;
        let Some((holder, _)) = end.last_segment else {
            return Ok(());
        };
        for seg in list(&self.dir, Some(&self.engine), "bin")? {
            if seg.pos > holder {
                std::fs::remove_file(&seg.path).ctx(&seg.path)?;
            } else if seg.pos == holder && seg.len >= SEGMENT_HEADER_SIZE as u64 {
                let keep = SEGMENT_HEADER_SIZE as u64 + end.pos.saturating_sub(holder);
                let file = OpenOptions::new()
                    .append(true)
                    .open(&seg.path)
                    .ctx(&seg.path)?;
                if keep < seg.len {
                    file.set_len(keep).ctx(&seg.path)?;
                }
                let len = keep.min(seg.len);
                self.file = Some((file, seg.path, seg.pos, len));
            }
        }
        sync_dir(&self.dir)
    }

    fn receive(
        &mut self,
        r: &mut BufReader<TcpStream>,
        ack: &mut TcpStream,
        stop: &AtomicBool,
        parser: &mut StreamParser,
        sink: &mut dyn ShipSink,
    ) -> Result<()> {
        let mut buf = Vec::with_capacity(CHUNK_SIZE);
        let mut snapshot: Option<(u64, u64, File, PathBuf)> = None;
        while !stop.load(Ordering::Acquire) {
            if self.state.retarget.load(Ordering::Acquire) {
                return Err(proto("the primary moved; reconnecting"));
            }
            let kind = read_frame(r, &mut buf)?;
            match kind {
                b'S' => {
                    let header = self.start_segment(&buf)?;
                    parser.segment(&header)?;
                }
                b'D' => {
                    let Some((file, path, start, len)) = self.file.as_mut() else {
                        return Err(proto("data before any segment header"));
                    };
                    file.write_all(&buf).ctx(path)?;
                    *len += buf.len() as u64;
                    let pos = *start + *len - SEGMENT_HEADER_SIZE as u64;
                    self.state.received.store(pos, Ordering::Release);
                    parser.feed(&buf, sink)?;
                }
                b'H' if buf.len() == 16 => {
                    self.state
                        .primary_pos
                        .store(u64_at(&buf, 0), Ordering::Release);
                }
                b'P' if buf.len() == 16 => {
                    let (pos, total) = (u64_at(&buf, 0), u64_at(&buf, 8));
                    let path = self
                        .dir
                        .join(format!("{}.tmp", snapshot_file_name(&self.engine, pos)));
                    let file = File::create(&path).ctx(&path)?;
                    snapshot = Some((pos, total, file, path));
                }
                b'p' => {
                    let Some((pos, total, file, path)) = snapshot.as_mut() else {
                        return Err(proto("snapshot data without a snapshot header"));
                    };
                    file.write_all(&buf).ctx(path)?;
                    *total = total.saturating_sub(buf.len() as u64);
                    if *total == 0 {
                        file.sync_all().ctx(path)?;
                        let done = self.dir.join(snapshot_file_name(&self.engine, *pos));
                        std::fs::rename(&*path, &done).ctx(&done)?;
                        sync_dir(&self.dir)?;
                        sink.snapshot(&done)?;
                        // The segment holding the snapshot's position comes next, from its
                        // start: its records up to the snapshot are written, not applied.
                        parser.known = false;
                        parser.applied = *pos;
                        snapshot = None;
                    }
                }
                other => {
                    return Err(proto(format!("unknown frame kind {other:#04x}")));
                }
            }
            // Confirm when nothing more is buffered: one ack per burst.
            if r.buffer().is_empty() {
                if self.last_sync.elapsed() >= REPLICA_SYNC_INTERVAL {
                    self.sync_in_background();
                }
                sink.burst_done();
                let pos = self.state.received.load(Ordering::Acquire);
                write_frame(ack, b'A', &[&pos.to_le_bytes()])
                    .map_err(|e| proto(format!("ack: {e}")))?;
            }
        }
        Ok(())
    }

    fn start_segment(&mut self, header: &[u8]) -> Result<FileHeader> {
        let Ok(bytes) = <[u8; SEGMENT_HEADER_SIZE]>::try_from(header) else {
            return Err(proto("segment header frame of the wrong size"));
        };
        let decoded = FileHeader::decode(&bytes, SEGMENT_MAGIC).map_err(proto)?;
        if decoded.engine != self.engine {
            return Err(proto(format!(
                "the primary sent a segment of engine {:?}",
                decoded.engine
            )));
        }
        if let Some((file, path, _, _)) = self.file.take() {
            file.sync_data().ctx(&path)?;
        }
        let path = self.dir.join(segment_file_name(&self.engine, decoded.pos));
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .ctx(&path)?;
        // A file left by a cut handshake (header only, or nothing) is rewritten from the start.
        file.set_len(0).ctx(&path)?;
        file.write_all(&bytes).ctx(&path)?;
        file.sync_data().ctx(&path)?;
        sync_dir(&self.dir)?;
        self.file = Some((file, path, decoded.pos, SEGMENT_HEADER_SIZE as u64));
        self.state.received.store(decoded.pos, Ordering::Release);
        Ok(decoded)
    }

    /// fdatasyncs the current segment on another thread, so applying never waits for the
    /// disk (one sync at a time; a failure is logged and shown in `stats`).
    fn sync_in_background(&mut self) {
        self.last_sync = Instant::now();
        if self.syncing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(file) = self
            .file
            .as_ref()
            .and_then(|(f, p, _, _)| Some((f.try_clone().ok()?, p.clone())))
        else {
            self.syncing.store(false, Ordering::Release);
            return;
        };
        let (syncing, state) = (Arc::clone(&self.syncing), Arc::clone(&self.state));
        let spawned = std::thread::Builder::new()
            .name("replica-sync".into())
            .spawn(move || {
                if let Err(e) = file.0.sync_data() {
                    let msg = format!("fdatasync {}: {e}", file.1.display());
                    tracing::error!("replica: {msg}");
                    *state.last_error.lock() = msg;
                }
                syncing.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.syncing.store(false, Ordering::Release);
        }
    }

    /// fdatasyncs the current segment.
    ///
    /// # Errors
    /// The fdatasync failure.
    pub fn sync(&mut self) -> Result<()> {
        if let Some((file, path, _, _)) = &self.file {
            file.sync_data().ctx(path)?;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// The shared replication address of the primary (changed by a retarget).
    #[must_use]
    pub fn primary_handle(&self) -> Arc<Mutex<String>> {
        Arc::clone(&self.primary)
    }
}

/// Where a replica's applied log ends, for the handshake: the segment file holding `pos`
/// (the last one starting at or before it) and the position and chain value there.
///
/// # Errors
/// I/O errors listing `dir`.
pub fn replica_end(dir: &Path, engine: &str, pos: u64, chain: u32) -> Result<ReplicaEnd> {
    let segments = list(dir, Some(engine), "bin")?;
    let mut holders = segments.iter().rev().filter(|s| s.pos <= pos);
    let mut holder = holders.next();
    if let (Some(last), Some(before)) = (holder, holders.next()) {
        // A segment that starts at `pos` holds no applied record: the primary it came from
        // may have died right after creating it, and the next primary may have gone on in
        // the segment before. Name that one; the handshake's cut removes the empty file, and
        // a primary that has a segment starting at `pos` sends it again.
        if last.pos == pos
            && before.pos + before.len.saturating_sub(SEGMENT_HEADER_SIZE as u64) >= pos
        {
            holder = Some(before);
        }
    }
    Ok(ReplicaEnd {
        last_segment: holder.map(|s| (s.pos, s.len)),
        pos,
        chain,
    })
}

/// Before a replica starts: asks the primary whether the local log is a prefix of its own,
/// and if not, moves aside everything past the longest common prefix (whole segments renamed
/// `*.bin.diverged`, the tail of a cut segment copied to `<segment>.diverged-tail` and cut
/// off, snapshots past the cut renamed `*.snap.diverged`), so the replica can rejoin. Returns
/// the position cut at, `None` when nothing had to move. A primary that cannot be reached is
/// an error: a replica does not guess.
///
/// # Errors
/// Connection errors, I/O errors, corruption in the local log.
pub fn reconcile(dir: &Path, engine: &str, primary: &str) -> Result<Option<u64>> {
    if list(dir, Some(engine), "bin")?.is_empty() {
        return Ok(None);
    }
    let opts = ReadOptions::default();
    let mut reader = Reader::open(dir, engine, opts)?;
    let mut boundaries: Vec<(u64, u32)> = vec![(reader.pos(), reader.chain())];
    while reader.next_record()?.is_some() {
        boundaries.push((reader.pos(), reader.chain()));
    }
    let end = boundaries[boundaries.len() - 1];
    let mut ask = ChainQuery::connect(primary, engine)?;
    if ask.chain(end.0)? == Some(end.1) {
        return Ok(None);
    }
    // Prefixes agree up to some boundary and never again: binary search for the last one.
    let (mut lo, mut hi) = (0usize, boundaries.len() - 1);
    if ask.chain(boundaries[0].0)? != Some(boundaries[0].1) {
        return Err(proto(format!(
            "the primary {primary} does not share even the first position {} of the local \
             log of {engine}; move the directory aside to start this replica afresh",
            boundaries[0].0
        )));
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if ask.chain(boundaries[mid].0)? == Some(boundaries[mid].1) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let cut = boundaries[lo].0;
    move_aside_after(dir, engine, cut)?;
    Ok(Some(cut))
}

fn move_aside_after(dir: &Path, engine: &str, cut: u64) -> Result<()> {
    for seg in list(dir, Some(engine), "bin")? {
        let end = seg.pos + seg.len.saturating_sub(SEGMENT_HEADER_SIZE as u64);
        if seg.pos > cut || (seg.pos == cut && seg.pos != 0 && end > cut) {
            crate::fsutil::move_aside(&seg.path, DIVERGED_SUFFIX)?;
        } else if end > cut {
            let keep = SEGMENT_HEADER_SIZE as u64 + (cut - seg.pos);
            let bytes = std::fs::read(&seg.path).ctx(&seg.path)?;
            let tail_path = PathBuf::from(format!(
                "{}.{DIVERGED_SUFFIX}-tail-at-{cut}",
                seg.path.display()
            ));
            let mut tail = File::create(&tail_path).ctx(&tail_path)?;
            tail.write_all(&bytes[usize::try_from(keep).unwrap_or(bytes.len())..])
                .ctx(&tail_path)?;
            tail.sync_all().ctx(&tail_path)?;
            let file = OpenOptions::new()
                .write(true)
                .open(&seg.path)
                .ctx(&seg.path)?;
            file.set_len(keep).ctx(&seg.path)?;
            file.sync_all().ctx(&seg.path)?;
        }
    }
    for snap in list_snapshots(dir, engine)? {
        if snap.pos > cut {
            crate::fsutil::move_aside(&snap.path, DIVERGED_SUFFIX)?;
        }
    }
    sync_dir(dir)
}

/// `KCHAIN` queries on a replication connection: the chain value at a position.
struct ChainQuery {
    r: BufReader<TcpStream>,
    w: TcpStream,
    engine: String,
}

impl ChainQuery {
    fn connect(primary: &str, engine: &str) -> Result<Self> {
        let addr = primary
            .to_socket_addrs()
            .map_err(|e| proto(format!("primary address {primary}: {e}")))?
            .next()
            .ok_or_else(|| proto(format!("primary address {primary} resolves to nothing")))?;
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .map_err(|e| proto(format!("connecting to the primary {primary}: {e}")))?;
        stream
            .set_read_timeout(Some(IDLE_TIMEOUT))
            .map_err(|e| proto(e.to_string()))?;
        Ok(Self {
            w: stream.try_clone().map_err(|e| proto(e.to_string()))?,
            r: BufReader::new(stream),
            engine: engine.to_string(),
        })
    }

    fn chain(&mut self, pos: u64) -> Result<Option<u32>> {
        writeln!(self.w, "KCHAIN {} {pos}", self.engine).map_err(|e| proto(e.to_string()))?;
        let line = read_line(&mut self.r)?;
        match line.strip_prefix("CHAIN ") {
            Some(v) => Ok(Some(
                v.parse()
                    .map_err(|_| proto(format!("bad answer {line:?}")))?,
            )),
            None if line == "NONE" => Ok(None),
            None => Err(proto(format!("the primary answered {line:?}"))),
        }
    }
}

/// Answers `KCHAIN <engine> <pos>` lines on `stream` until it closes: `CHAIN <value>` or
/// `NONE`. `dir_of` finds an engine's directory.
///
/// # Errors
/// Connection errors.
pub fn serve_chain_queries(
    first: &str,
    r: &mut BufReader<TcpStream>,
    w: &mut TcpStream,
    dir_of: &dyn Fn(&str) -> Option<PathBuf>,
) -> Result<()> {
    let mut line = first.to_string();
    loop {
        let words: Vec<&str> = line.split(' ').collect();
        let answer = match (
            words.as_slice(),
            words.get(2).and_then(|p| p.parse::<u64>().ok()),
        ) {
            (["KCHAIN", engine, _], Some(pos)) => dir_of(engine)
                .and_then(|dir| chain_at(&dir, engine, pos))
                .map_or_else(|| "NONE".to_string(), |c| format!("CHAIN {c}")),
            _ => format!("ERR bad query {line:?}"),
        };
        writeln!(w, "{answer}").map_err(|e| proto(e.to_string()))?;
        line = match read_line(r) {
            Ok(l) => l,
            Err(_) => return Ok(()),
        };
    }
}

/// Reads the handshake line of a new replication connection.
///
/// # Errors
/// A missing or overlong line.
pub fn read_first_line(r: &mut BufReader<TcpStream>) -> Result<String> {
    read_line(r)
}
