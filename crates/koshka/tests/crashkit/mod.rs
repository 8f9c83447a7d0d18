//! Shared kit of the crash and recovery tests: a `koshka serve` process that is killed by PID,
//! a blocking memcached text client, a seeded workload over kv, messages, friends, lists, news
//! and search with a model of every acknowledged write, and helpers that read segment files
//! record by record.
//!
//! Each test binary uses part of it, hence `dead_code` is allowed here.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Longest a server may take to recover and start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Socket read/write timeout: a reply slower than this fails the test instead of hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);
/// Segment header size (docs/binlog.md §3).
pub const SEGMENT_HEADER: u64 = 64;
/// Record header size (docs/binlog.md §4).
pub const RECORD_HEADER: u64 = 16;
/// The binlog's TIME record type.
pub const RECORD_TYPE_TIME: u16 = 0xFF01;

/// Small sizes so rotation and background snapshots happen many times a second.
pub const SMALL_STORAGE: &str =
    "[storage]\nsegment_size = \"64KiB\"\nsnapshot_log_bytes = \"256KiB\"\n";
/// Tiny sizes (the smallest segment the writer accepts is 4 KiB).
pub const TINY_STORAGE: &str =
    "[storage]\nsegment_size = \"16KiB\"\nsnapshot_log_bytes = \"64KiB\"\n";

/// The seed of a randomised test: `KOSHKA_SEED` if set, else fresh. Printed so a failure can
/// be rerun.
#[must_use]
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("KOSHKA_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            #[allow(clippy::cast_possible_truncation)]
            let s = (nanos as u64) ^ u64::from(std::process::id()).rotate_left(32);
            s
        });
    println!("{test}: seed {seed} (rerun with KOSHKA_SEED={seed})");
    seed
}

/// Integer from the environment, or `default`.
#[must_use]
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// server process

/// How to start a server.
#[derive(Debug, Clone)]
pub struct ServerOpts {
    /// Data directory (one sub-directory per engine).
    pub data_dir: PathBuf,
    /// `always` | `everysec` | `none`.
    pub durability: &'static str,
    /// Engines to host.
    pub engines: Vec<&'static str>,
    /// Extra TOML for `--config` (empty: none).
    pub config: String,
    /// Pass `--repair`.
    pub repair: bool,
    /// More `koshka serve` arguments.
    pub extra_args: Vec<String>,
    /// More environment variables.
    pub env: Vec<(String, String)>,
    /// Shell commands run before the server in the same process (`ulimit -n 256`): the
    /// server is started by `sh -c '<prefix> && exec koshka serve …'`.
    pub shell_prefix: Option<String>,
}

impl ServerOpts {
    /// `engines` in `dir` with `durability` and default sizes.
    #[must_use]
    pub fn new(dir: &Path, durability: &'static str, engines: &[&'static str]) -> Self {
        Self {
            data_dir: dir.to_path_buf(),
            durability,
            engines: engines.to_vec(),
            config: String::new(),
            repair: false,
            extra_args: Vec::new(),
            env: Vec::new(),
            shell_prefix: None,
        }
    }

    fn command(&self) -> Command {
        let mut cmd = match &self.shell_prefix {
            None => Command::new(env!("CARGO_BIN_EXE_koshka")),
            Some(prefix) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("{prefix} && exec \"$0\" \"$@\""))
                    .arg(env!("CARGO_BIN_EXE_koshka"));
                sh
            }
        };
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--durability")
            .arg(self.durability)
            .arg("--engines")
            .arg(self.engines.join(","))
            .arg("--threads")
            .arg("2")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        if !self.config.is_empty() {
            let path = self.data_dir.with_extension("toml");
            std::fs::write(&path, &self.config).expect("write config");
            cmd.arg("--config").arg(path);
        }
        if self.repair {
            cmd.arg("--repair");
        }
        cmd.args(&self.extra_args);
        for (name, value) in &self.env {
            cmd.env(name, value);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }
}

/// A server that did not come up.
#[derive(Debug)]
pub struct StartFailure {
    /// Exit status, if it exited.
    pub status: Option<ExitStatus>,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

/// A running `koshka serve`; killed with SIGKILL by PID on drop.
#[derive(Debug)]
pub struct Server {
    child: Child,
    ports: HashMap<String, u16>,
    stderr: Arc<Mutex<String>>,
    stderr_thread: Option<std::thread::JoinHandle<()>>,
}

fn capture_stderr(child: &mut Child) -> (Arc<Mutex<String>>, std::thread::JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(String::new()));
    let mut err = child.stderr.take().expect("stderr piped");
    let b = Arc::clone(&buf);
    let handle = std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match err.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => b.lock().unwrap().push_str(&strip_ansi(&chunk[..n])),
            }
        }
    });
    (buf, handle)
}

/// Drops ANSI colour escapes (`ESC [ … m`) so messages can be matched as plain text.
fn strip_ansi(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let mut out = String::with_capacity(text.len());
    let mut in_escape = false;
    for ch in text.chars() {
        match (in_escape, ch) {
            (false, '\u{1b}') => in_escape = true,
            (false, c) => out.push(c),
            (true, 'm') => in_escape = false,
            (true, _) => {}
        }
    }
    out
}

impl Server {
    /// Starts a server and waits until every engine prints its `listening` line and kv (or
    /// the first engine) answers `version`.
    ///
    /// # Errors
    /// The process exited (or timed out) before listening: its status and stderr.
    pub fn start(opts: &ServerOpts) -> Result<Self, StartFailure> {
        let mut child = opts.command().spawn().expect("spawn koshka");
        let (stderr, stderr_thread) = capture_stderr(&mut child);
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    // Keep draining so the server never blocks on a full pipe.
                    continue;
                }
            }
        });
        let mut ports = HashMap::new();
        let deadline = Instant::now() + START_TIMEOUT;
        while ports.len() < opts.engines.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some((name, port)) = parse_listening(&line) {
                        ports.insert(name, port);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    let _ = stderr_thread.join();
                    let text = stderr.lock().unwrap().clone();
                    return Err(StartFailure {
                        status,
                        stderr: format!("timed out waiting for listening lines\n{text}"),
                    });
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().ok();
                    let _ = stderr_thread.join();
                    let text = stderr.lock().unwrap().clone();
                    return Err(StartFailure {
                        status,
                        stderr: text,
                    });
                }
            }
        }
        let server = Self {
            child,
            ports,
            stderr,
            stderr_thread: Some(stderr_thread),
        };
        let first = opts.engines[0];
        let mut c = server.connect(first);
        let v = c.command_line("version").expect("version");
        assert!(v.starts_with("VERSION"), "version reply {v:?}");
        Ok(server)
    }

    /// Starts a server that must come up; panics with its stderr otherwise.
    #[must_use]
    pub fn must_start(opts: &ServerOpts) -> Self {
        match Self::start(opts) {
            Ok(s) => s,
            Err(f) => panic!(
                "server in {} did not start (status {:?}):\n{}",
                opts.data_dir.display(),
                f.status,
                f.stderr
            ),
        }
    }

    /// Starts a server that must fail to start; returns its stderr.
    #[must_use]
    pub fn must_fail(opts: &ServerOpts) -> StartFailure {
        match Self::start(opts) {
            Ok(s) => panic!(
                "server in {} started although it should have refused:\n{}",
                opts.data_dir.display(),
                s.stderr()
            ),
            Err(f) => f,
        }
    }

    /// Port of `engine`.
    #[must_use]
    pub fn port(&self, engine: &str) -> u16 {
        *self
            .ports
            .get(engine)
            .unwrap_or_else(|| panic!("engine {engine} not hosted"))
    }

    /// A new connection to `engine`.
    #[must_use]
    pub fn connect(&self, engine: &str) -> Client {
        Client::connect(self.port(engine)).expect("connect")
    }

    /// The process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server wrote to stderr so far.
    #[must_use]
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The stderr once `ready` holds for it, or as it is after 10 s. stderr is read by its own
    /// thread, separately from the stdout lines `start` waits for, so a line the server wrote
    /// before listening may still be on its way when `start` returns.
    pub fn stderr_when(&self, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.stderr();
            if ready(&text) || Instant::now() >= deadline {
                return text;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL by PID and reap; returns the stderr.
    pub fn kill9(mut self) -> String {
        self.kill_inner();
        self.stderr()
    }

    fn kill_inner(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill_inner();
    }
}

fn parse_listening(line: &str) -> Option<(String, u16)> {
    let rest = line.strip_prefix("koshka: ")?;
    let (name, addr) = rest.split_once(" listening on ")?;
    let port = addr.rsplit_once(':')?.1.trim().parse().ok()?;
    Some((name.to_string(), port))
}

/// Runs `koshka binlog <args>`; returns (success, stdout + stderr).
#[must_use]
pub fn binlog_tool(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_koshka"))
        .arg("binlog")
        .args(args)
        .arg(dir)
        .output()
        .expect("run koshka binlog");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

// ---------------------------------------------------------------------------------------------
// client

/// A blocking memcached text-protocol client with timeouts.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

/// A failed exchange: the connection broke (the server died) or the reply was unexpected.
pub type Io<T> = std::io::Result<T>;

fn proto_err(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

impl Client {
    /// Connects to `127.0.0.1:port`.
    ///
    /// # Errors
    /// Connection errors.
    pub fn connect(port: u16) -> Io<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Sends raw bytes.
    ///
    /// # Errors
    /// I/O errors.
    pub fn send(&mut self, bytes: &[u8]) -> Io<()> {
        self.writer.write_all(bytes)
    }

    /// Reads one `\r\n`-terminated line (without the terminator). A line cut short by EOF
    /// is an error: that reply was never received.
    ///
    /// # Errors
    /// I/O errors, EOF.
    pub fn line(&mut self) -> Io<String> {
        let mut buf = Vec::new();
        self.reader.read_until(b'\n', &mut buf)?;
        if !buf.ends_with(b"\r\n") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed mid-reply",
            ));
        }
        buf.truncate(buf.len() - 2);
        String::from_utf8(buf).map_err(|e| proto_err(e.to_string()))
    }

    /// Sends one command line and reads one reply line.
    ///
    /// # Errors
    /// I/O errors.
    pub fn command_line(&mut self, cmd: &str) -> Io<String> {
        self.send(format!("{cmd}\r\n").as_bytes())?;
        self.line()
    }

    /// `set key 0 0 len` with `value`; returns the reply line.
    ///
    /// # Errors
    /// I/O errors.
    pub fn set(&mut self, key: &str, value: &[u8]) -> Io<String> {
        self.send(&set_bytes(key, value))?;
        self.line()
    }

    /// Reads `VALUE … END` replies of one `get`; (key, value) pairs.
    ///
    /// # Errors
    /// I/O errors, malformed replies.
    pub fn read_values(&mut self) -> Io<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        loop {
            let line = self.line()?;
            if line == "END" {
                return Ok(out);
            }
            let mut parts = line.split(' ');
            if parts.next() != Some("VALUE") {
                return Err(proto_err(format!("unexpected get reply {line:?}")));
            }
            let key = parts.next().unwrap_or_default().to_string();
            let _flags = parts.next();
            let len: usize = parts
                .next()
                .and_then(|l| l.parse().ok())
                .ok_or_else(|| proto_err(format!("bad VALUE line {line:?}")))?;
            let mut data = vec![0u8; len + 2];
            self.reader.read_exact(&mut data)?;
            if !data.ends_with(b"\r\n") {
                return Err(proto_err("value not terminated".into()));
            }
            data.truncate(len);
            out.push((key, data));
        }
    }

    /// `get key`.
    ///
    /// # Errors
    /// I/O errors, malformed replies.
    pub fn get(&mut self, key: &str) -> Io<Option<Vec<u8>>> {
        self.send(format!("get {key}\r\n").as_bytes())?;
        let mut v = self.read_values()?;
        Ok(v.pop().map(|(_, d)| d))
    }

    /// `get key` as a string.
    ///
    /// # Errors
    /// As [`Client::get`].
    pub fn get_str(&mut self, key: &str) -> Io<Option<String>> {
        Ok(self
            .get(key)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Gets many keys, one `get` per key, pipelined in batches; missing keys are absent.
    ///
    /// # Errors
    /// As [`Client::get`].
    pub fn get_many(&mut self, keys: &[String]) -> Io<HashMap<String, String>> {
        let mut out = HashMap::new();
        for batch in keys.chunks(200) {
            let mut req = Vec::new();
            for k in batch {
                req.extend_from_slice(format!("get {k}\r\n").as_bytes());
            }
            self.send(&req)?;
            for k in batch {
                let mut v = self.read_values()?;
                if let Some((_, d)) = v.pop() {
                    out.insert(k.clone(), String::from_utf8_lossy(&d).into_owned());
                }
            }
        }
        Ok(out)
    }

    /// `stats [group]`: name → value.
    ///
    /// # Errors
    /// I/O errors.
    pub fn stats(&mut self, group: &str) -> Io<BTreeMap<String, String>> {
        let cmd = if group.is_empty() {
            "stats\r\n".to_string()
        } else {
            format!("stats {group}\r\n")
        };
        self.send(cmd.as_bytes())?;
        let mut out = BTreeMap::new();
        loop {
            let line = self.line()?;
            if line == "END" {
                return Ok(out);
            }
            let mut parts = line.splitn(3, ' ');
            if parts.next() != Some("STAT") {
                return Err(proto_err(format!("unexpected stats reply {line:?}")));
            }
            let name = parts.next().unwrap_or_default().to_string();
            out.insert(name, parts.next().unwrap_or_default().to_string());
        }
    }
}

/// The bytes of `set key 0 0 len\r\nvalue\r\n`.
#[must_use]
pub fn set_bytes(key: &str, value: &[u8]) -> Vec<u8> {
    let mut b = format!("set {key} 0 0 {}\r\n", value.len()).into_bytes();
    b.extend_from_slice(value);
    b.extend_from_slice(b"\r\n");
    b
}

/// Requests a snapshot of the engine behind `client` and waits (bounded) until
/// `snapshots_written` grows. Returns the new count.
pub fn snapshot_and_wait(client: &mut Client) -> u64 {
    let before: u64 = client.stats("").unwrap()["snapshots_written"]
        .parse()
        .unwrap();
    let reply = client.stats("snapshot").unwrap();
    assert_eq!(
        reply.get("snapshot").map(String::as_str),
        Some("started"),
        "{reply:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now: u64 = client.stats("").unwrap()["snapshots_written"]
            .parse()
            .unwrap();
        if now > before {
            return now;
        }
        assert!(Instant::now() < deadline, "snapshot never completed");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------------
// segment files

/// One record found in a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordAt {
    /// File offset of the record header.
    pub offset: u64,
    /// Header + payload bytes.
    pub len: u64,
    /// Record type.
    pub record_type: u16,
}

/// Segment (`.bin`) or snapshot (`.snap`) files of `engine` in `dir`, by position.
#[must_use]
pub fn files(dir: &Path, engine: &str, ext: &str) -> Vec<PathBuf> {
    let prefix = format!("{engine}.");
    let suffix = format!(".{ext}");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(&suffix))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Records of a segment file, walking the length fields (no CRC checks).
#[must_use]
pub fn records(path: &Path) -> Vec<RecordAt> {
    let bytes = std::fs::read(path).expect("read segment");
    let mut out = Vec::new();
    let mut off = SEGMENT_HEADER as usize;
    while off + RECORD_HEADER as usize <= bytes.len() {
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        let record_type = u16::from_le_bytes(bytes[off + 4..off + 6].try_into().unwrap());
        let total = RECORD_HEADER as usize + len;
        if off + total > bytes.len() {
            break;
        }
        out.push(RecordAt {
            offset: off as u64,
            len: total as u64,
            record_type,
        });
        off += total;
    }
    out
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Flips one bit of the byte at `offset`.
pub fn flip_bit(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = usize::try_from(offset).unwrap();
    bytes[i] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

/// Truncates a file to `len` bytes.
pub fn truncate(path: &Path, len: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(len).unwrap();
}

/// The file name of `path` as a string.
#[must_use]
pub fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------------------------
// workload and model

/// Number of shared counter keys every kv writer increments.
pub const COUNTERS: usize = 4;
/// Keys per kv writer.
pub const KV_KEYS: usize = 48;
/// Mailboxes per messages writer.
pub const MAILBOXES: u32 = 4;
/// Users per friends writer.
pub const FRIEND_USERS: u32 = 12;
/// Lists per lists writer.
pub const LISTS: i32 = 4;
/// Objects per lists writer.
pub const LIST_OBJECTS: i32 = 16;
/// Authors per news writer (many, so no author nears the per-author cap of 5000).
pub const NEWS_AUTHORS: i32 = 32;
/// Owners per search writer.
pub const SEARCH_OWNERS: u32 = 8;
/// Item ids per search owner.
pub const SEARCH_IDS: u32 = 40;

/// How many writers of each kind run, and how long records are.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// kv writer threads.
    pub kv: usize,
    /// messages writer threads.
    pub messages: usize,
    /// friends writer threads.
    pub friends: usize,
    /// lists writer threads.
    pub lists: usize,
    /// news writer threads.
    pub news: usize,
    /// search writer threads.
    pub search: usize,
    /// Longest random padding of kv values and message texts.
    pub pad_max: usize,
}

impl Default for Workload {
    fn default() -> Self {
        Self {
            kv: 3,
            messages: 2,
            friends: 2,
            lists: 2,
            news: 1,
            search: 1,
            pad_max: 300,
        }
    }
}

/// An operation a writer completed (acknowledged) or had in flight.
#[derive(Debug, Clone)]
pub enum Op {
    /// kv `set key value`.
    KvSet(String, String),
    /// kv `delete key` (acked as DELETED or NOT_FOUND).
    KvDelete(String),
    /// kv `incr ctr 1`; the reply value when acked.
    Incr(String, Option<u64>),
    /// messages `sendmsg`: from, to, text, local ids in from's and to's mailboxes (known when
    /// the `newmsgid` replies arrived).
    Send {
        /// Sender.
        from: u32,
        /// Recipient.
        to: u32,
        /// Unique text.
        text: String,
        /// (sender's lid, recipient's lid).
        lids: Option<(u64, u64)>,
    },
    /// friends `set friend<u>_<f> mask` (u < f).
    FriendAdd(u32, u32, u32),
    /// friends `delete friend<u>_<f>`.
    FriendDel(u32, u32),
    /// lists `set entry<list>_<obj> flags,value`.
    ListSet(i32, i32, u32, i64),
    /// lists `delete entry<list>_<obj>`.
    ListDel(i32, i32),
    /// lists `delete object<obj>`, with the lists it may be in.
    ListObjectDel(i32, Vec<i32>),
    /// news `set update<author>` of an event whose item is unique.
    NewsEvent(i32, i32),
    /// search `set item<owner>_<id>` with a text whose first word is unique.
    SearchSet(u32, u32, String),
    /// search `delete item<owner>_<id>` (acked as DELETED or NOT_FOUND).
    SearchDel(u32, u32),
}

/// What one writer thread did: acknowledged operations in order, then the one whose reply
/// never arrived (if any).
#[derive(Debug, Default)]
pub struct WriterLog {
    /// Acknowledged, in order.
    pub acked: Vec<Op>,
    /// Sent but not acknowledged.
    pub in_flight: Option<Op>,
    /// Why it stopped.
    pub ended: String,
}

/// Engines the workload needs.
pub const WORKLOAD_ENGINES: &[&str] = &["kv", "messages", "friends", "lists", "news", "search"];

/// A stored message as seen through `get message…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    /// Local id.
    pub id: u64,
    /// The other side.
    pub peer: u32,
    /// Link to the other copy.
    pub peer_msg_id: u64,
    /// Text.
    pub text: String,
}

fn json_field<'a>(json: &'a str, name: &str) -> Option<&'a str> {
    let pat = format!("\"{name}\":");
    let start = json.find(&pat)? + pat.len();
    let rest = &json[start..];
    if let Some(s) = rest.strip_prefix('"') {
        let end = s.find('"')?;
        Some(&s[..end])
    } else {
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        Some(&rest[..end])
    }
}

/// Parses a `get message…` JSON reply (texts in this kit need no escapes).
#[must_use]
pub fn parse_msg(json: &str) -> Option<Msg> {
    Some(Msg {
        id: json_field(json, "id")?.parse().ok()?,
        peer: json_field(json, "peer")?.parse().ok()?,
        peer_msg_id: json_field(json, "peer_msg_id")?.parse().ok()?,
        text: json_field(json, "text")?.to_string(),
    })
}

/// A list entry as the model sees it: (flags, value), `None` when absent.
pub type ListEntry = Option<(u32, i64)>;

/// An acknowledged send: sender, recipient, and the local ids in both mailboxes when known.
pub type SentMsg = (u32, u32, Option<(u64, u64)>);

/// Model of every acknowledged write, plus the writes whose fate is unknown.
#[derive(Debug, Default)]
pub struct Model {
    /// kv key → value (`None`: deleted).
    pub kv: BTreeMap<String, Option<String>>,
    /// kv keys touched by an in-flight op, with the value it would leave.
    pub kv_maybe: Vec<(String, Option<String>)>,
    /// counter → acknowledged incrs (after a restart: the recovered value).
    pub counters: BTreeMap<String, u64>,
    /// counter → largest value an acknowledged incr replied.
    pub counter_seen: BTreeMap<String, u64>,
    /// counter → in-flight incrs.
    pub counter_maybe: BTreeMap<String, u64>,
    /// Acknowledged sends by text (every text is unique).
    pub msgs: BTreeMap<String, SentMsg>,
    /// In-flight sends by text.
    pub msgs_maybe: BTreeMap<String, (u32, u32)>,
    /// Mailboxes in use.
    pub mailboxes: HashSet<u32>,
    /// (u, f) with u < f → stored mask of f in u's list (`None`: not friends).
    pub friends: BTreeMap<(u32, u32), Option<u32>>,
    /// In-flight friend ops.
    pub friends_maybe: Vec<((u32, u32), Option<u32>)>,
    /// (list, object) → (flags, value) (`None`: not in the list).
    pub lists: BTreeMap<(i32, i32), ListEntry>,
    /// In-flight lists ops.
    pub lists_maybe: Vec<((i32, i32), ListEntry)>,
    /// news author → items of its acknowledged events.
    pub news: BTreeMap<i32, BTreeSet<i32>>,
    /// In-flight news events (author, item).
    pub news_maybe: Vec<(i32, i32)>,
    /// search item → its text (`None`: deleted).
    pub search: BTreeMap<(u32, u32), Option<String>>,
    /// In-flight search ops.
    pub search_maybe: Vec<((u32, u32), Option<String>)>,
    /// Acknowledged operations so far.
    pub acked_ops: u64,
    /// In-flight operations so far (unknown fate at the kill).
    pub in_flight_ops: u64,
}

impl Model {
    /// Feeds one writer's log into the model.
    pub fn absorb(&mut self, log: WriterLog) {
        for op in log.acked {
            self.acked_ops += 1;
            match op {
                Op::KvSet(k, v) => {
                    self.kv.insert(k, Some(v));
                }
                Op::KvDelete(k) => {
                    self.kv.insert(k, None);
                }
                Op::Incr(c, seen) => {
                    *self.counters.entry(c.clone()).or_default() += 1;
                    if let Some(s) = seen {
                        let e = self.counter_seen.entry(c).or_default();
                        *e = (*e).max(s);
                    }
                }
                Op::Send {
                    from,
                    to,
                    text,
                    lids,
                } => {
                    self.mailboxes.insert(from);
                    self.mailboxes.insert(to);
                    self.msgs.insert(text, (from, to, lids));
                }
                Op::FriendAdd(u, f, m) => {
                    self.friends.insert((u, f), Some(m | 1));
                }
                Op::FriendDel(u, f) => {
                    self.friends.insert((u, f), None);
                }
                Op::ListSet(l, o, f, v) => {
                    self.lists.insert((l, o), Some((f, v)));
                }
                Op::ListDel(l, o) => {
                    self.lists.insert((l, o), None);
                }
                Op::ListObjectDel(o, lists) => {
                    for l in lists {
                        self.lists.insert((l, o), None);
                    }
                }
                Op::NewsEvent(author, item) => {
                    self.news.entry(author).or_default().insert(item);
                }
                Op::SearchSet(o, i, text) => {
                    self.search.insert((o, i), Some(text));
                }
                Op::SearchDel(o, i) => {
                    self.search.insert((o, i), None);
                }
            }
        }
        if let Some(op) = log.in_flight {
            self.in_flight_ops += 1;
            match op {
                Op::KvSet(k, v) => self.kv_maybe.push((k, Some(v))),
                Op::KvDelete(k) => self.kv_maybe.push((k, None)),
                Op::Incr(c, _) => *self.counter_maybe.entry(c).or_default() += 1,
                Op::Send { from, to, text, .. } => {
                    self.mailboxes.insert(from);
                    self.mailboxes.insert(to);
                    self.msgs_maybe.insert(text, (from, to));
                }
                Op::FriendAdd(u, f, m) => self.friends_maybe.push(((u, f), Some(m | 1))),
                Op::FriendDel(u, f) => self.friends_maybe.push(((u, f), None)),
                Op::ListSet(l, o, f, v) => self.lists_maybe.push(((l, o), Some((f, v)))),
                Op::ListDel(l, o) => self.lists_maybe.push(((l, o), None)),
                Op::ListObjectDel(o, lists) => {
                    for l in lists {
                        self.lists_maybe.push(((l, o), None));
                    }
                }
                Op::NewsEvent(author, item) => self.news_maybe.push((author, item)),
                Op::SearchSet(o, i, text) => self.search_maybe.push(((o, i), Some(text))),
                Op::SearchDel(o, i) => self.search_maybe.push(((o, i), None)),
            }
        }
    }

    /// Checks the server against the model: every acknowledged write is there, every
    /// in-flight write is either wholly there or wholly absent, nothing else is there.
    /// Resolves the in-flight writes to what the server holds. Returns the violations.
    pub fn verify_and_resolve(&mut self, server: &Server) -> Vec<String> {
        let mut bad = Vec::new();
        if server.ports.contains_key("kv") {
            self.verify_kv(&mut server.connect("kv"), &mut bad);
        }
        if server.ports.contains_key("messages") {
            self.verify_messages(&mut server.connect("messages"), &mut bad);
        }
        if server.ports.contains_key("friends") {
            self.verify_friends(&mut server.connect("friends"), &mut bad);
        }
        if server.ports.contains_key("lists") {
            self.verify_lists(&mut server.connect("lists"), &mut bad);
        }
        if server.ports.contains_key("news") {
            self.verify_news(&mut server.connect("news"), &mut bad);
        }
        if server.ports.contains_key("search") {
            self.verify_search(&mut server.connect("search"), &mut bad);
        }
        bad
    }

    fn verify_kv(&mut self, c: &mut Client, bad: &mut Vec<String>) {
        let keys: Vec<String> = self
            .kv
            .keys()
            .chain(self.kv_maybe.iter().map(|(k, _)| k))
            .chain(self.counters.keys())
            .chain(self.counter_maybe.keys())
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let actual = c.get_many(&keys).expect("kv read-back");
        let maybe: HashMap<&String, Vec<&Option<String>>> =
            self.kv_maybe.iter().fold(HashMap::new(), |mut m, (k, v)| {
                m.entry(k).or_default().push(v);
                m
            });
        let mut resolved = Vec::new();
        for (key, want) in &self.kv {
            let got = actual.get(key).cloned();
            let ok = got == *want || maybe.get(key).is_some_and(|vs| vs.contains(&&got));
            if !ok {
                bad.push(format!(
                    "kv {key}: acknowledged {want:?}, in flight {:?}, found {got:?}",
                    maybe.get(key)
                ));
            }
            resolved.push((key.clone(), got));
        }
        for (key, v) in &self.kv_maybe {
            if !self.kv.contains_key(key) {
                let got = actual.get(key).cloned();
                if got.is_some() && got != *v {
                    bad.push(format!("kv {key}: in flight {v:?}, found {got:?}"));
                }
                resolved.push((key.clone(), got));
            }
        }
        for (k, v) in resolved {
            self.kv.insert(k, v);
        }
        self.kv_maybe.clear();
        let counters: Vec<String> = self
            .counters
            .keys()
            .chain(self.counter_maybe.keys())
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for ctr in counters {
            let acked = self.counters.get(&ctr).copied().unwrap_or(0);
            let maybe = self.counter_maybe.get(&ctr).copied().unwrap_or(0);
            let seen = self.counter_seen.get(&ctr).copied().unwrap_or(0);
            let got: Option<u64> = actual.get(&ctr).and_then(|v| v.trim().parse().ok());
            match got {
                Some(g) if g >= acked && g >= seen && g <= acked + maybe => {
                    self.counters.insert(ctr.clone(), g);
                    self.counter_seen.insert(ctr, g);
                }
                _ => bad.push(format!(
                    "counter {ctr}: acknowledged {acked} (largest reply {seen}), \
                     in flight {maybe}, found {got:?}"
                )),
            }
        }
        self.counter_maybe.clear();
    }

    fn verify_messages(&mut self, c: &mut Client, bad: &mut Vec<String>) {
        // Every message in every mailbox in use.
        let mut found: HashMap<(u32, u64), Msg> = HashMap::new();
        let mut boxes: Vec<u32> = self.mailboxes.iter().copied().collect();
        boxes.sort_unstable();
        for &uid in &boxes {
            let mut lids = Vec::new();
            let mut from = 1u64;
            loop {
                let to = from + 999;
                let reply = c
                    .get_str(&format!("sublist{uid}_0:0#{from},{to}"))
                    .expect("sublist")
                    .unwrap_or_else(|| "0".into());
                let mut it = reply.split(',');
                let total: u64 = it.next().unwrap().parse().unwrap();
                lids.extend(it.map(|s| s.parse::<u64>().unwrap()));
                if to >= total {
                    break;
                }
                from = to + 1;
            }
            let keys: Vec<String> = lids.iter().map(|l| format!("message{uid}_{l}")).collect();
            let got = c.get_many(&keys).expect("messages read-back");
            for lid in lids {
                match got
                    .get(&format!("message{uid}_{lid}"))
                    .and_then(|j| parse_msg(j))
                {
                    Some(m) => {
                        found.insert((uid, lid), m);
                    }
                    None => bad.push(format!("message{uid}_{lid} listed but unreadable")),
                }
            }
        }
        // Every stored message was sent by us and both copies exist and link each other.
        let mut by_text: HashMap<String, Vec<(u32, u64)>> = HashMap::new();
        for ((uid, lid), m) in &found {
            by_text
                .entry(m.text.clone())
                .or_default()
                .push((*uid, *lid));
            match found.get(&(m.peer, m.peer_msg_id)) {
                Some(p) if p.text == m.text && p.peer == *uid && p.peer_msg_id == *lid => {}
                other => bad.push(format!(
                    "message{uid}_{lid} {m:?}: its other copy is {other:?} (half-applied send?)"
                )),
            }
            if !self.msgs.contains_key(&m.text) && !self.msgs_maybe.contains_key(&m.text) {
                bad.push(format!("message{uid}_{lid} {m:?} was never sent"));
            }
        }
        for (text, copies) in &by_text {
            if copies.len() != 2 {
                bad.push(format!(
                    "text {text} stored {} times: {copies:?}",
                    copies.len()
                ));
            }
        }
        // Every acknowledged send is there with its exact text, at the acknowledged ids.
        for (text, (from, to, lids)) in &self.msgs {
            let copies = by_text.get(text).cloned().unwrap_or_default();
            let in_from = copies.iter().find(|(u, _)| u == from).map(|c| c.1);
            let in_to = copies.iter().find(|(u, _)| u == to).map(|c| c.1);
            match (in_from, in_to, lids) {
                (Some(a), Some(b), Some((la, lb))) if a == *la && b == *lb => {}
                (Some(_), Some(_), None) => {}
                _ => bad.push(format!(
                    "acknowledged send {from}->{to} {text:?} (ids {lids:?}): found at {copies:?}"
                )),
            }
        }
        // Resolve in-flight sends.
        for (text, (from, to)) in std::mem::take(&mut self.msgs_maybe) {
            if let Some(copies) = by_text.get(&text) {
                let a = copies.iter().find(|(u, _)| *u == from).map(|c| c.1);
                let b = copies.iter().find(|(u, _)| *u == to).map(|c| c.1);
                if let (Some(a), Some(b)) = (a, b) {
                    self.msgs.insert(text, (from, to, Some((a, b))));
                }
            }
        }
    }

    fn verify_friends(&mut self, c: &mut Client, bad: &mut Vec<String>) {
        let pairs: Vec<(u32, u32)> = self
            .friends
            .keys()
            .copied()
            .chain(self.friends_maybe.iter().map(|(p, _)| *p))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut keys = Vec::new();
        for (u, f) in &pairs {
            keys.push(format!("friend{u}_{f}"));
            keys.push(format!("friend{f}_{u}"));
        }
        let got = c.get_many(&keys).expect("friends read-back");
        let mut maybe: HashMap<(u32, u32), Vec<Option<u32>>> = HashMap::new();
        for (p, m) in &self.friends_maybe {
            maybe.entry(*p).or_default().push(*m);
        }
        for (u, f) in pairs {
            let fwd: Option<u32> = got
                .get(&format!("friend{u}_{f}"))
                .map(|v| v.trim().parse().unwrap());
            let back: Option<u32> = got
                .get(&format!("friend{f}_{u}"))
                .map(|v| v.trim().parse().unwrap());
            if fwd.is_some() != back.is_some() || back.is_some_and(|b| b != 1) {
                bad.push(format!(
                    "friends {u}<->{f}: halves disagree: {fwd:?} / {back:?} (half-applied?)"
                ));
            }
            let want = self.friends.get(&(u, f)).copied().flatten();
            let ok = fwd == want || maybe.get(&(u, f)).is_some_and(|ms| ms.contains(&fwd));
            if !ok {
                bad.push(format!(
                    "friend{u}_{f}: acknowledged {want:?}, in flight {:?}, found {fwd:?}",
                    maybe.get(&(u, f))
                ));
            }
            self.friends.insert((u, f), fwd);
        }
        self.friends_maybe.clear();
        // Friend counts agree with the pairs (nothing extra stored).
        let mut counts: BTreeMap<u32, u64> = BTreeMap::new();
        for ((u, f), m) in &self.friends {
            counts.entry(*u).or_default();
            counts.entry(*f).or_default();
            if m.is_some() {
                *counts.entry(*u).or_default() += 1;
                *counts.entry(*f).or_default() += 1;
            }
        }
        let keys: Vec<String> = counts.keys().map(|u| format!("friendcnt{u}")).collect();
        let got = c.get_many(&keys).expect("friendcnt");
        for (u, want) in counts {
            let n: u64 = got
                .get(&format!("friendcnt{u}"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if n != want {
                bad.push(format!("friendcnt{u}: model {want}, found {n}"));
            }
        }
    }

    fn verify_lists(&mut self, c: &mut Client, bad: &mut Vec<String>) {
        let pairs: Vec<(i32, i32)> = self
            .lists
            .keys()
            .copied()
            .chain(self.lists_maybe.iter().map(|(p, _)| *p))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let keys: Vec<String> = pairs.iter().map(|(l, o)| format!("entry{l}_{o}")).collect();
        let got = c.get_many(&keys).expect("lists read-back");
        let mut maybe: HashMap<(i32, i32), Vec<ListEntry>> = HashMap::new();
        for (p, e) in &self.lists_maybe {
            maybe.entry(*p).or_default().push(*e);
        }
        for (l, o) in pairs {
            let found = got.get(&format!("entry{l}_{o}")).map(|v| {
                let mut it = v.trim().split(',');
                let flags: u32 = it.next().unwrap().parse().unwrap();
                let value: i64 = it.next().unwrap().parse().unwrap();
                (flags, value)
            });
            let want = self.lists.get(&(l, o)).copied().flatten();
            let ok = found == want || maybe.get(&(l, o)).is_some_and(|es| es.contains(&found));
            if !ok {
                bad.push(format!(
                    "entry{l}_{o}: acknowledged {want:?}, in flight {:?}, found {found:?}",
                    maybe.get(&(l, o))
                ));
            }
            self.lists.insert((l, o), found);
        }
        self.lists_maybe.clear();
        // Counts agree with the entries (nothing extra stored).
        let mut counts: BTreeMap<i32, u64> = BTreeMap::new();
        for ((l, _), e) in &self.lists {
            *counts.entry(*l).or_default() += u64::from(e.is_some());
        }
        let keys: Vec<String> = counts.keys().map(|l| format!("count{l}")).collect();
        let got = c.get_many(&keys).expect("lists counts");
        for (l, want) in counts {
            let n: u64 = got
                .get(&format!("count{l}"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if n != want {
                bad.push(format!("count{l}: model {want}, found {n}"));
            }
        }
    }

    fn verify_news(&mut self, c: &mut Client, bad: &mut Vec<String>) {
        let authors: BTreeSet<i32> = self
            .news
            .keys()
            .copied()
            .chain(self.news_maybe.iter().map(|(a, _)| *a))
            .collect();
        let keys: Vec<String> = authors
            .iter()
            .map(|a| format!("raw_updates4294967295_0,4294967295#10000:{a}"))
            .collect();
        let got = c.get_many(&keys).expect("news read-back");
        for (author, key) in authors.iter().zip(&keys) {
            let reply = got.get(key).cloned().unwrap_or_else(|| "0".into());
            let nums: Vec<i64> = reply
                .trim()
                .split(',')
                .map(|n| n.parse().unwrap())
                .collect();
            let mut found = BTreeSet::new();
            for e in nums[1..].chunks(9) {
                let (kind, item) = (e[3], i32::try_from(e[8]).unwrap());
                if e[1] != i64::from(*author) || kind != news_kind(item) {
                    bad.push(format!("news {author}: event {e:?} is not one we wrote"));
                }
                if !found.insert(item) {
                    bad.push(format!("news {author}: item {item} stored twice"));
                }
            }
            let acked = self.news.entry(*author).or_default();
            for item in acked.iter() {
                if !found.contains(item) {
                    bad.push(format!("news {author}: acknowledged item {item} missing"));
                }
            }
            for item in &found {
                let maybe = self.news_maybe.contains(&(*author, *item));
                if !acked.contains(item) && !maybe {
                    bad.push(format!("news {author}: item {item} was never written"));
                }
            }
            *acked = found;
        }
        self.news_maybe.clear();
    }

    /// Every search item holds its acknowledged text (or one in flight): `get item…` shows
    /// the text's FNV-1a hash and a search for the text's unique first word finds exactly that
    /// item; deleted items are absent; the count of all items matches.
    fn verify_search(&mut self, c: &mut Client, bad: &mut Vec<String>) {
        let fnv = |text: &str| {
            text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            })
        };
        let items: Vec<(u32, u32)> = self
            .search
            .keys()
            .copied()
            .chain(self.search_maybe.iter().map(|(k, _)| *k))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let keys: Vec<String> = items.iter().map(|(o, i)| format!("item{o}_{i}")).collect();
        let got = c.get_many(&keys).expect("search read-back");
        let mut maybe: HashMap<(u32, u32), Vec<Option<String>>> = HashMap::new();
        for (k, t) in &self.search_maybe {
            maybe.entry(*k).or_default().push(t.clone());
        }
        let mut live = 0u64;
        for (o, i) in items {
            let hash: Option<u64> = got
                .get(&format!("item{o}_{i}"))
                .map(|v| v.trim().rsplit(',').next().unwrap().parse().unwrap());
            let mut candidates: Vec<Option<String>> =
                vec![self.search.get(&(o, i)).cloned().flatten()];
            candidates.extend(maybe.remove(&(o, i)).unwrap_or_default());
            let Some(found) = candidates
                .into_iter()
                .find(|t| t.as_deref().map(fnv) == hash)
            else {
                bad.push(format!(
                    "item{o}_{i}: found hash {hash:?}, not an acknowledged or in-flight text"
                ));
                continue;
            };
            if let Some(text) = &found {
                live += 1;
                let token = text.split(' ').next().unwrap();
                let reply = c.get_str(&format!("search#R5({token})")).expect("search");
                let want = format!("1,1,{o},{i},");
                if !reply.as_deref().is_some_and(|r| r.starts_with(&want)) {
                    bad.push(format!(
                        "item{o}_{i}: search for {token} answered {reply:?}"
                    ));
                }
            }
            self.search.insert((o, i), found);
        }
        self.search_maybe.clear();
        let all = c.get_str("search#R0()").expect("count");
        if all.as_deref() != Some(format!("{live},0").as_str()) {
            bad.push(format!(
                "search: {live} live items in the model, count answered {all:?}"
            ));
        }
    }

    /// Creates the shared counters (acknowledged `set … 0`) if the model has none.
    pub fn ensure_counters(&mut self, server: &Server) {
        if !self.counters.is_empty() || !server.ports.contains_key("kv") {
            return;
        }
        let mut c = server.connect("kv");
        for i in 0..COUNTERS {
            let k = format!("ctr{i}");
            assert_eq!(c.set(&k, b"0").unwrap(), "STORED");
            self.counters.insert(k.clone(), 0);
            self.counter_seen.insert(k, 0);
        }
    }

    /// One line of counts.
    #[must_use]
    pub fn summary(&self) -> String {
        let live = self.kv.values().filter(|v| v.is_some()).count();
        let friends = self.friends.values().filter(|v| v.is_some()).count();
        let entries = self.lists.values().filter(|v| v.is_some()).count();
        let events: usize = self.news.values().map(BTreeSet::len).sum();
        let mut s = String::new();
        let _ = write!(
            s,
            "kv keys {live}, counters {:?}, messages {}, friendships {friends}, list entries \
             {entries}, news events {events}, search items {}",
            self.counters.values().collect::<Vec<_>>(),
            self.msgs.len(),
            self.search.values().filter(|v| v.is_some()).count()
        );
        s
    }
}

/// Handle of running writers.
pub struct Writers {
    handles: Vec<std::thread::JoinHandle<WriterLog>>,
    stop: Arc<AtomicBool>,
}

impl Writers {
    /// Starts the writers of `workload` against `server`. `round` makes values unique across
    /// rounds on the same data. Every writer runs until its connection breaks, `stop` is
    /// called, or `max` elapses.
    #[must_use]
    pub fn start(
        server: &Server,
        workload: Workload,
        seed: u64,
        round: usize,
        max: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        let deadline = Instant::now() + max;
        let mut n = 0u64;
        let mut spawn = |kind: &'static str, w: usize, port: u16| {
            n += 1;
            let rng =
                StdRng::seed_from_u64(seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
            let stop = Arc::clone(&stop);
            let pad = workload.pad_max;
            handles.push(
                std::thread::Builder::new()
                    .name(format!("{kind}-writer-{w}"))
                    .spawn(move || {
                        let mut log = WriterLog::default();
                        let mut ctx = WriterCtx {
                            w,
                            round,
                            rng,
                            pad,
                            seq: 0,
                        };
                        let result = match Client::connect(port) {
                            Ok(mut c) => loop {
                                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                                    break Ok(());
                                }
                                let r = match kind {
                                    "kv" => ctx.kv_op(&mut c, &mut log),
                                    "messages" => ctx.msg_op(&mut c, &mut log),
                                    "lists" => ctx.list_op(&mut c, &mut log),
                                    "news" => ctx.news_op(&mut c, &mut log),
                                    "search" => ctx.search_op(&mut c, &mut log),
                                    _ => ctx.friend_op(&mut c, &mut log),
                                };
                                if let Err(e) = r {
                                    break Err(e);
                                }
                            },
                            Err(e) => Err(e),
                        };
                        log.ended = match result {
                            Ok(()) => "stopped".into(),
                            Err(e) => e.to_string(),
                        };
                        log
                    })
                    .expect("spawn writer"),
            );
        };
        for w in 0..workload.kv {
            spawn("kv", w, server.port("kv"));
        }
        for w in 0..workload.messages {
            spawn("messages", w, server.port("messages"));
        }
        for w in 0..workload.friends {
            spawn("friends", w, server.port("friends"));
        }
        if server.ports.contains_key("lists") {
            for w in 0..workload.lists {
                spawn("lists", w, server.port("lists"));
            }
        }
        if server.ports.contains_key("news") {
            for w in 0..workload.news {
                spawn("news", w, server.port("news"));
            }
        }
        if server.ports.contains_key("search") {
            for w in 0..workload.search {
                spawn("search", w, server.port("search"));
            }
        }
        Self { handles, stop }
    }

    /// Asks the writers to stop after their current operation.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Waits for every writer.
    #[must_use]
    pub fn join(self) -> Vec<WriterLog> {
        self.handles
            .into_iter()
            .map(|h| h.join().expect("writer panicked"))
            .collect()
    }
}

struct WriterCtx {
    w: usize,
    round: usize,
    rng: StdRng,
    pad: usize,
    seq: u64,
}

impl WriterCtx {
    fn unique(&mut self, tag: &str) -> String {
        self.seq += 1;
        let pad_len = self.rng.gen_range(0..=self.pad);
        let mut s = format!("{tag}{}r{}s{}-", self.w, self.round, self.seq);
        for _ in 0..pad_len {
            s.push(char::from(b'a' + self.rng.gen_range(0..26u8)));
        }
        s
    }

    fn kv_op(&mut self, c: &mut Client, log: &mut WriterLog) -> Io<()> {
        let roll = self.rng.gen_range(0..100);
        if roll < 55 {
            let key = format!("k{}_{}", self.w, self.rng.gen_range(0..KV_KEYS));
            let value = self.unique("v");
            log.in_flight = Some(Op::KvSet(key.clone(), value.clone()));
            let r = c.set(&key, value.as_bytes())?;
            if r != "STORED" {
                return Err(proto_err(format!("set {key}: {r}")));
            }
        } else if roll < 80 {
            let ctr = format!("ctr{}", self.rng.gen_range(0..COUNTERS));
            log.in_flight = Some(Op::Incr(ctr.clone(), None));
            let r = c.command_line(&format!("incr {ctr} 1"))?;
            let v: u64 = r
                .parse()
                .map_err(|_| proto_err(format!("incr {ctr}: {r}")))?;
            log.in_flight = Some(Op::Incr(ctr, Some(v)));
        } else {
            let key = format!("k{}_{}", self.w, self.rng.gen_range(0..KV_KEYS));
            log.in_flight = Some(Op::KvDelete(key.clone()));
            let r = c.command_line(&format!("delete {key}"))?;
            if r != "DELETED" && r != "NOT_FOUND" {
                return Err(proto_err(format!("delete {key}: {r}")));
            }
        }
        log.acked.extend(log.in_flight.take());
        Ok(())
    }

    fn msg_op(&mut self, c: &mut Client, log: &mut WriterLog) -> Io<()> {
        let base = 1000 + u32::try_from(self.w).unwrap() * 10;
        let from = base + self.rng.gen_range(0..MAILBOXES);
        let mut to = base + self.rng.gen_range(0..MAILBOXES - 1);
        if to >= from {
            to += 1;
        }
        let text = self.unique("m");
        let tag = format!("t{}", self.w);
        log.in_flight = Some(Op::Send {
            from,
            to,
            text: text.clone(),
            lids: None,
        });
        let mut req = set_bytes(
            &format!("sendmsg{from}_{to}#{tag}"),
            format!("0\n{text}").as_bytes(),
        );
        req.extend_from_slice(
            format!("get newmsgid{from}#{tag}\r\nget newmsgid{to}#{tag}\r\n").as_bytes(),
        );
        c.send(&req)?;
        let r = c.line()?;
        if r != "STORED" {
            return Err(proto_err(format!("sendmsg{from}_{to}: {r}")));
        }
        // STORED is the acknowledgement; the ids follow in the same batch of replies.
        log.acked.push(Op::Send {
            from,
            to,
            text: text.clone(),
            lids: None,
        });
        log.in_flight = None;
        let a = c.read_values()?;
        let b = c.read_values()?;
        let parse = |v: &[(String, Vec<u8>)]| -> Option<u64> {
            std::str::from_utf8(&v.first()?.1).ok()?.parse().ok()
        };
        if let (Some(la), Some(lb)) = (parse(&a), parse(&b)) {
            if let Some(Op::Send { lids, .. }) = log.acked.last_mut() {
                *lids = Some((la, lb));
            }
        } else {
            return Err(proto_err(format!("newmsgid replies {a:?} {b:?}")));
        }
        Ok(())
    }

    fn search_op(&mut self, c: &mut Client, log: &mut WriterLog) -> Io<()> {
        let owner = 1 + u32::try_from(self.w).unwrap() * 100 + self.rng.gen_range(0..SEARCH_OWNERS);
        let id = self.rng.gen_range(1..=SEARCH_IDS);
        if self.rng.gen_range(0..100) < 75 {
            let pad = self.unique("pad");
            let text = format!(
                "q{}r{}s{} кошки и собаки {pad}",
                self.w, self.round, self.seq
            );
            let value = format!("1,{},{}\t{text}", self.seq, self.rng.gen_range(0..100));
            log.in_flight = Some(Op::SearchSet(owner, id, text));
            let r = c.set(&format!("item{owner}_{id}"), value.as_bytes())?;
            if r != "STORED" {
                return Err(proto_err(format!("item{owner}_{id}: {r}")));
            }
        } else {
            log.in_flight = Some(Op::SearchDel(owner, id));
            let r = c.command_line(&format!("delete item{owner}_{id}"))?;
            if r != "DELETED" && r != "NOT_FOUND" {
                return Err(proto_err(format!("delete item{owner}_{id}: {r}")));
            }
        }
        log.acked.extend(log.in_flight.take());
        Ok(())
    }

    fn friend_op(&mut self, c: &mut Client, log: &mut WriterLog) -> Io<()> {
        let base = 5000 + u32::try_from(self.w).unwrap() * 100;
        let u = base + self.rng.gen_range(0..FRIEND_USERS - 1);
        let f = self.rng.gen_range(u + 1..base + FRIEND_USERS);
        if self.rng.gen_range(0..100) < 60 {
            let mask = self.rng.gen_range(0..256u32);
            log.in_flight = Some(Op::FriendAdd(u, f, mask));
            let r = c.set(&format!("friend{u}_{f}"), mask.to_string().as_bytes())?;
            if r != "STORED" {
                return Err(proto_err(format!("friend{u}_{f}: {r}")));
            }
        } else {
            log.in_flight = Some(Op::FriendDel(u, f));
            let r = c.command_line(&format!("delete friend{u}_{f}"))?;
            if r != "DELETED" && r != "NOT_FOUND" {
                return Err(proto_err(format!("delete friend{u}_{f}: {r}")));
            }
        }
        log.acked.extend(log.in_flight.take());
        Ok(())
    }
}

impl WriterCtx {
    /// Lists of writer `w`: positive and negative (group) ids, none shared with another
    /// writer; objects likewise.
    fn list_op(&mut self, c: &mut Client, log: &mut WriterLog) -> Io<()> {
        let w = i32::try_from(self.w).unwrap();
        let lists: Vec<i32> = (0..LISTS)
            .map(|i| {
                let id = 7000 + w * 100 + i;
                if i % 2 == 0 {
                    id
                } else {
                    -id
                }
            })
            .collect();
        let list = lists[self.rng.gen_range(0..lists.len())];
        let object = {
            let o = 1 + w * 1000 + self.rng.gen_range(0..LIST_OBJECTS);
            if self.rng.gen_bool(0.2) {
                -o
            } else {
                o
            }
        };
        let roll = self.rng.gen_range(0..100);
        if roll < 60 {
            let flags = self.rng.gen_range(0..256u32);
            let value = self.rng.gen_range(-1_000_000i64..1_000_000);
            log.in_flight = Some(Op::ListSet(list, object, flags, value));
            let r = c.set(
                &format!("entry{list}_{object}"),
                format!("{flags},{value}").as_bytes(),
            )?;
            if r != "STORED" {
                return Err(proto_err(format!("entry{list}_{object}: {r}")));
            }
        } else if roll < 92 {
            log.in_flight = Some(Op::ListDel(list, object));
            let r = c.command_line(&format!("delete entry{list}_{object}"))?;
            if r != "DELETED" && r != "NOT_FOUND" {
                return Err(proto_err(format!("delete entry{list}_{object}: {r}")));
            }
        } else {
            log.in_flight = Some(Op::ListObjectDel(object, lists));
            let r = c.command_line(&format!("delete object{object}"))?;
            if r != "DELETED" && r != "NOT_FOUND" {
                return Err(proto_err(format!("delete object{object}: {r}")));
            }
        }
        log.acked.extend(log.in_flight.take());
        Ok(())
    }
}

/// The event type the news writers give an item (checked on read-back).
fn news_kind(item: i32) -> i64 {
    1 + i64::from(item % 5)
}

impl WriterCtx {
    /// Events of authors `9000 + w * 100 + i` (users) and their negatives (groups); items are
    /// unique per writer and round.
    fn news_op(&mut self, c: &mut Client, log: &mut WriterLog) -> Io<()> {
        let w = i32::try_from(self.w).unwrap();
        let i = self.rng.gen_range(0..NEWS_AUTHORS);
        let author = if i % 2 == 0 {
            9000 + w * 100 + i
        } else {
            -(9000 + w * 100 + i)
        };
        self.seq += 1;
        // A data directory lives 10 rounds: items stay unique within it.
        let round = i32::try_from(self.round % 200).unwrap();
        let item = round * 10_000_000 + w * 1_000_000 + i32::try_from(self.seq).unwrap();
        let value = format!("{},{author},0,{author},0,{item}", news_kind(item));
        log.in_flight = Some(Op::NewsEvent(author, item));
        let r = c.set(&format!("update{author}"), value.as_bytes())?;
        if r != "STORED" {
            return Err(proto_err(format!("update{author}: {r}")));
        }
        log.acked.extend(log.in_flight.take());
        Ok(())
    }
}

/// Sends `stats snapshot` to random engines at random intervals until the connection
/// breaks or `stop` is set. Returns how many were requested.
pub fn snapshot_requester(
    ports: Vec<u16>,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut clients: Vec<Client> = ports
            .iter()
            .filter_map(|p| Client::connect(*p).ok())
            .collect();
        let mut n = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && !clients.is_empty() {
            std::thread::sleep(Duration::from_millis(rng.gen_range(20..200)));
            let i = rng.gen_range(0..clients.len());
            if clients[i].stats("snapshot").is_err() {
                break;
            }
            n += 1;
        }
        n
    })
}
