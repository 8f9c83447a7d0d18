//! Shared helpers for koshka's integration tests: start the real `koshka` binary on ephemeral
//! loopback ports with a temporary data directory, learn its ports from the
//! `koshka: <engine> listening on <addr>` lines, and talk raw bytes to it.
//!
//! Readiness is a `version` reply on every port (no fixed sleeps); every wait is bounded; the
//! process is killed by PID when the [`Node`] is dropped.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a node may take to print its ports and answer `version`.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one raw request may wait for its reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Engines `koshka serve` hosts when neither `--engines` nor a config file says otherwise.
pub const ENGINES_ALL: &[&str] = &["kv", "messages", "wall", "friends"];

/// A running `koshka serve`, killed by PID on drop.
pub struct Node {
    /// Engine name → loopback port.
    pub ports: HashMap<String, u16>,
    /// The process.
    pub child: Child,
    /// The data directory (kept alive as long as the node, reusable after [`Node::terminate`]).
    pub dir: tempfile::TempDir,
}

impl Node {
    /// Starts `koshka serve --listen 127.0.0.1:0 --data-dir <tmp> <args>` and waits for every
    /// engine named by `--engines` (default: all four) to answer `version`.
    pub fn start(args: &[&str]) -> Node {
        Node::start_in(tempfile::tempdir().expect("temp dir"), args)
    }

    /// As [`Node::start`], on an existing data directory (a restart).
    pub fn start_in(dir: tempfile::TempDir, args: &[&str]) -> Node {
        let engines: Vec<String> = match args.iter().position(|a| *a == "--engines") {
            Some(i) => args[i + 1].split(',').map(str::to_owned).collect(),
            None => ENGINES_ALL.iter().map(|s| (*s).to_owned()).collect(),
        };
        Node::start_expecting(dir, args, &engines)
    }

    /// Starts a node whose engine list comes from elsewhere (a config file): `engines` are the
    /// names whose listening lines to wait for.
    pub fn start_expecting<S: AsRef<str>>(
        dir: tempfile::TempDir,
        args: &[&str],
        engines: &[S],
    ) -> Node {
        let mut command = Command::new(env!("CARGO_BIN_EXE_koshka"));
        command
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().expect("spawn koshka");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Nobody listens any more; keep draining so the node never blocks on stdout.
                }
            }
        });
        let mut node = Node {
            ports: HashMap::new(),
            child,
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while !engines.iter().all(|e| node.ports.contains_key(e.as_ref())) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    if let Some((engine, port)) = parse_listening(&line) {
                        node.ports.insert(engine, port);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = node.child.try_wait() {
                        panic!("koshka exited before listening: {status}");
                    }
                    assert!(
                        Instant::now() < deadline,
                        "koshka did not print its ports within {START_TIMEOUT:?}"
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = node.child.wait().expect("wait");
                    panic!("koshka closed stdout before listening: {status}");
                }
            }
        }
        for engine in engines {
            let port = node.port(engine.as_ref());
            wait_version(port, deadline);
        }
        node
    }

    /// The port of `engine`.
    pub fn port(&self, engine: &str) -> u16 {
        *self
            .ports
            .get(engine)
            .unwrap_or_else(|| panic!("engine {engine} is not hosted: {:?}", self.ports))
    }

    /// `127.0.0.1:<port of engine>`.
    pub fn addr(&self, engine: &str) -> String {
        format!("127.0.0.1:{}", self.port(engine))
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Sends SIGTERM, waits (bounded) for a clean exit and returns the data directory.
    pub fn terminate(mut self) -> tempfile::TempDir {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(status.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                assert!(status.success(), "koshka exited with {status} on SIGTERM");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "koshka did not exit within {START_TIMEOUT:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let dir = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Best effort: the process may already have exited.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses `koshka: <engine> listening on <ip>:<port>`.
fn parse_listening(line: &str) -> Option<(String, u16)> {
    let rest = line.strip_prefix("koshka: ")?;
    let (engine, addr) = rest.split_once(" listening on ")?;
    let port = addr.trim().rsplit_once(':')?.1.parse().ok()?;
    Some((engine.to_owned(), port))
}

/// Polls `version` on `port` until it answers or `deadline` passes.
pub fn wait_version(port: u16, deadline: Instant) {
    loop {
        let attempt = (|| -> std::io::Result<Vec<u8>> {
            let mut conn = Conn::connect(port)?;
            conn.stream.set_read_timeout(Some(Duration::from_secs(1)))?;
            conn.send(b"version\r\n");
            conn.try_read_until(b"\r\n")
        })();
        if matches!(&attempt, Ok(reply) if reply.starts_with(b"VERSION ")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "port {port} did not answer version: {attempt:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One blocking raw connection with a reply buffer.
pub struct Conn {
    /// The socket.
    pub stream: TcpStream,
    /// Bytes read but not yet returned.
    pub pending: Vec<u8>,
}

impl Conn {
    /// Connects to `127.0.0.1:<port>` with [`REPLY_TIMEOUT`] on reads and writes.
    pub fn connect(port: u16) -> std::io::Result<Conn> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, REPLY_TIMEOUT)?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            pending: Vec::new(),
        })
    }

    /// Connects or panics.
    pub fn open(port: u16) -> Conn {
        Conn::connect(port).unwrap_or_else(|e| panic!("connect to port {port}: {e}"))
    }

    /// Writes every byte or panics.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write request");
    }

    /// Reads until the buffered bytes end with `terminator` at a line start (or are exactly
    /// it) and returns them.
    pub fn try_read_until(&mut self, terminator: &[u8]) -> std::io::Result<Vec<u8>> {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut chunk = [0u8; 64 * 1024];
        loop {
            if let Some(end) = find_terminator(&self.pending, terminator) {
                let rest = self.pending.split_off(end);
                return Ok(std::mem::replace(&mut self.pending, rest));
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "reply timeout",
                ));
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("closed after {:?}", String::from_utf8_lossy(&self.pending)),
                ));
            }
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads until `terminator` or panics.
    pub fn read_until(&mut self, terminator: &[u8]) -> Vec<u8> {
        self.try_read_until(terminator)
            .unwrap_or_else(|e| panic!("waiting for {:?}: {e}", show(terminator)))
    }

    /// Sends `request` and returns the reply through `terminator`.
    pub fn roundtrip(&mut self, request: &[u8], terminator: &[u8]) -> Vec<u8> {
        self.send(request);
        self.read_until(terminator)
    }

    /// Sends `request` followed by `mn` and returns everything before that `MN` reply: the
    /// exact reply of `request`, even when it is empty (`noreply`, quiet mode). `mn` lines
    /// inside `request` are counted, so their own `MN` replies stay in the result.
    pub fn exchange(&mut self, request: &[u8]) -> Vec<u8> {
        let own = request
            .split(|&b| b == b'\n')
            .filter(|line| *line == b"mn\r" || *line == b"mn")
            .count();
        let mut bytes = request.to_vec();
        bytes.extend_from_slice(b"mn\r\n");
        self.send(&bytes);
        let mut reply = Vec::new();
        for _ in 0..=own {
            reply.extend_from_slice(&self.read_until(b"MN\r\n"));
        }
        reply.truncate(reply.len() - 4);
        reply
    }

    /// Reads until the peer closes (bounded) and returns what arrived; errors such as a reset
    /// count as closed.
    pub fn read_to_close(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut chunk = [0u8; 64 * 1024];
        loop {
            assert!(
                Instant::now() < deadline,
                "connection not closed: {}",
                show(&self.pending)
            );
            match self.stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!("connection not closed within {REPLY_TIMEOUT:?}: {e}")
                }
                Err(_) => break,
            }
        }
        std::mem::take(&mut self.pending)
    }
}

/// End offset of the first `terminator` that starts a line in `buf` (anywhere, if the
/// terminator itself starts with a line end).
fn find_terminator(buf: &[u8], terminator: &[u8]) -> Option<usize> {
    if terminator.starts_with(b"\r\n") || terminator.starts_with(b"\n") {
        return find(buf, terminator).map(|i| i + terminator.len());
    }
    let mut from = 0;
    while let Some(i) = find(&buf[from..], terminator) {
        let at = from + i;
        if at == 0 || buf[at - 1] == b'\n' {
            return Some(at + terminator.len());
        }
        from = at + 1;
    }
    None
}

/// First occurrence of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Opens a connection to `port`, sends `request` and returns the reply through the first line
/// that equals `terminator` (e.g. `b"END\r\n"`, `b"STORED\r\n"`).
pub fn roundtrip(port: u16, request: &[u8], terminator: &[u8]) -> Vec<u8> {
    Conn::open(port).roundtrip(request, terminator)
}

/// Bytes for assertion messages: printable, escapes visible, long runs abbreviated.
pub fn show(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let escaped: String = text.escape_debug().collect();
    if escaped.len() > 400 {
        format!("{}…[{} bytes]", &escaped[..400], bytes.len())
    } else {
        escaped
    }
}

/// Runs `koshka serve` with `args` to completion (e.g. `--print-config`) and returns stdout.
pub fn koshka_output(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_koshka"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run koshka");
    assert!(output.status.success(), "koshka {args:?}: {output:?}");
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// Writes `text` as `koshka.toml` into a fresh temporary directory and returns both.
pub fn config_file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("koshka.toml");
    std::fs::write(&path, text).expect("write config");
    let path = path.to_str().expect("utf-8 path").to_owned();
    (dir, path)
}
