//! Helpers for the koshka media tests: start the real `koshka media serve` on ephemeral
//! loopback ports with two temporary data directories, speak raw HTTP/1.1 and the memcached
//! text protocol to it, make real media files with ffmpeg.
//!
//! Readiness is the two `listening` lines plus an answered `version` (no fixed sleeps); every
//! wait is bounded; the process is killed by PID when dropped.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a server may take to print its ports.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one request may take.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `koshka media serve`.
pub struct Media {
    /// The process.
    pub child: Child,
    /// HTTP address.
    pub http: String,
    /// Key port address.
    pub keys: String,
    /// The two data directories.
    pub dirs: Vec<tempfile::TempDir>,
    /// Everything the process wrote to stderr so far.
    pub stderr: Arc<Mutex<String>>,
    /// The server's TMPDIR (processing jobs' temporary files go here).
    pub tmp: tempfile::TempDir,
    args: Vec<String>,
}

impl Media {
    /// Starts a server on two fresh data directories.
    pub fn start(args: &[&str]) -> Media {
        let dirs = vec![tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        Media::start_in(dirs, args)
    }

    /// Starts a server on existing directories (a restart).
    pub fn start_in(dirs: Vec<tempfile::TempDir>, args: &[&str]) -> Media {
        Media::start_wrapped(dirs, args, &[])
    }

    /// As [`Media::start_in`], the binary run through `wrapper` (a command prefix that ends
    /// by exec-ing its arguments, so the PID is the server's).
    pub fn start_wrapped(dirs: Vec<tempfile::TempDir>, args: &[&str], wrapper: &[&str]) -> Media {
        let mut cmd = if wrapper.is_empty() {
            Command::new(env!("CARGO_BIN_EXE_koshka"))
        } else {
            let mut c = Command::new(wrapper[0]);
            c.args(&wrapper[1..]).arg(env!("CARGO_BIN_EXE_koshka"));
            c
        };
        cmd.args([
            "media",
            "serve",
            "--http",
            "127.0.0.1:0",
            "--keys",
            "127.0.0.1:0",
        ]);
        for d in &dirs {
            cmd.arg("--data-dir").arg(d.path());
        }
        let tmp = tempfile::tempdir().unwrap();
        cmd.args(args)
            .env("RUST_LOG", "info")
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn koshka media serve");
        let stdout = child.stdout.take().unwrap();
        let stderr_pipe = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let (mut http, mut keys) = (None, None);
        while http.is_none() || keys.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "koshka media did not print its ports; stderr:\n{}",
                stderr.lock().unwrap()
            );
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("koshka: media-http listening on ") {
                        http = Some(a.to_owned());
                    }
                    if let Some(a) = line.strip_prefix("koshka: media-keys listening on ") {
                        keys = Some(a.to_owned());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!(
                            "koshka media exited: {status}; stderr:\n{}",
                            stderr.lock().unwrap()
                        );
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().unwrap();
                    std::thread::sleep(Duration::from_millis(100));
                    panic!(
                        "koshka media exited: {status}; stderr:\n{}",
                        stderr.lock().unwrap()
                    );
                }
            }
        }
        let m = Media {
            child,
            http: http.unwrap(),
            keys: keys.unwrap(),
            dirs,
            stderr,
            tmp,
            args: args.iter().map(|s| (*s).to_owned()).collect(),
        };
        assert!(m.key_command("version\r\n").starts_with("VERSION"));
        m
    }

    /// Kills with SIGKILL, returns the directories.
    pub fn kill9(mut self) -> Vec<tempfile::TempDir> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::take(&mut self.dirs)
    }

    /// SIGTERM and a bounded wait for a clean exit; returns the directories.
    pub fn terminate(mut self) -> Vec<tempfile::TempDir> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "unclean exit {status}");
                break;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::mem::take(&mut self.dirs)
    }

    /// Restarts with the same arguments on the same directories (after kill9/terminate).
    pub fn restart(dirs: Vec<tempfile::TempDir>, args: &[&str]) -> Media {
        Media::start_in(dirs, args)
    }

    /// The data directory paths.
    pub fn dir_paths(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.path().to_path_buf()).collect()
    }

    /// One HTTP request.
    pub fn req(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        http(&self.http, method, path, headers, body)
    }

    /// GET.
    pub fn get(&self, path: &str) -> Resp {
        self.req("GET", path, &[], None)
    }

    /// Raw upload; returns the reply JSON (panics unless 200).
    pub fn upload(&self, data: &[u8], ctype: &str) -> serde_json::Value {
        let r = self.req("POST", "/upload", &[("Content-Type", ctype)], Some(data));
        assert_eq!(r.status, 200, "upload: {}", r.text());
        serde_json::from_slice(&r.body).unwrap()
    }

    /// A raw memcached command; reads until END/a one-line reply.
    pub fn key_command(&self, line: &str) -> String {
        let mut s = TcpStream::connect(&self.keys).unwrap();
        s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        s.write_all(line.as_bytes()).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            let n = s.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "key port closed; got {:?}",
                String::from_utf8_lossy(&out)
            );
            out.extend_from_slice(&buf[..n]);
            let t = String::from_utf8_lossy(&out);
            if t.ends_with("END\r\n")
                || (!t.starts_with("VALUE") && !t.starts_with("STAT") && t.ends_with("\r\n"))
            {
                return t.into_owned();
            }
        }
    }

    /// `get key` → the value, or None on a miss.
    pub fn key(&self, key: &str) -> Option<String> {
        let r = self.key_command(&format!("get {key}\r\n"));
        if r == "END\r\n" {
            return None;
        }
        let rest = r
            .strip_prefix("VALUE ")
            .unwrap_or_else(|| panic!("reply {r:?}"));
        let (_, value) = rest.split_once("\r\n").unwrap();
        Some(value.strip_suffix("\r\nEND\r\n").unwrap().to_owned())
    }

    /// `stats` → name → value.
    pub fn stats(&self) -> std::collections::HashMap<String, String> {
        self.key_command("stats\r\n")
            .lines()
            .filter_map(|l| l.strip_prefix("STAT "))
            .filter_map(|l| l.split_once(' '))
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect()
    }

    /// Resident set size of the server, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    /// Waits (bounded) until stderr contains `needle`.
    pub fn wait_stderr(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.stderr.lock().unwrap().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Media {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Resp {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request with `Connection: close`.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    if let Some(b) = body {
        // The server may answer (and close) before taking the whole body.
        let _ = s.write_all(b);
    }
    read_response(&mut s, method == "HEAD")
}

/// Reads one response from `s` (to EOF or Content-Length).
pub fn read_response(s: &mut TcpStream, head_only: bool) -> Resp {
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let mut header_end = None;
    loop {
        let n = match s.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && header_end.is_some() => 0,
            Err(e) => panic!(
                "read response: {e}; so far {:?}",
                String::from_utf8_lossy(&raw)
            ),
        };
        raw.extend_from_slice(&buf[..n]);
        if header_end.is_none() {
            header_end = raw.windows(4).position(|w| w == b"\r\n\r\n");
        }
        if let Some(he) = header_end {
            let head = String::from_utf8_lossy(&raw[..he]).to_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if let Some(len) = len {
                if head_only || raw.len() >= he + 4 + len {
                    break;
                }
            }
        }
        if n == 0 {
            break;
        }
    }
    let he =
        header_end.unwrap_or_else(|| panic!("no header in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..he]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[he + 4..].to_vec();
    if let Some(len) = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        if head_only {
            body.clear();
        } else {
            body.truncate(len);
        }
    }
    Resp {
        status,
        headers,
        body,
    }
}

/// Runs ffmpeg with `args` (`-y -loglevel error` added), panics on failure.
pub fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-y", "-loglevel", "error"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Real media made with ffmpeg in `dir`: small and large JPEG, PNG, MP4 (testsrc2 + sine).
pub fn make_media(dir: &Path) -> Vec<(Vec<u8>, &'static str)> {
    let mut out = Vec::new();
    for (name, args, ctype) in [
        (
            "tiny.jpg",
            vec![
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=32x24",
                "-frames:v",
                "1",
                "-q:v",
                "10",
            ],
            "image/jpeg",
        ),
        (
            "small.png",
            vec!["-f", "lavfi", "-i", "testsrc2=size=64x48", "-frames:v", "1"],
            "image/png",
        ),
        (
            "mid.jpg",
            vec![
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=640x480",
                "-frames:v",
                "1",
            ],
            "image/jpeg",
        ),
        (
            "big.png",
            vec![
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=1280x960",
                "-frames:v",
                "1",
            ],
            "image/png",
        ),
        (
            "clip.mp4",
            vec![
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=320x240:rate=25:duration=2",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:duration=2",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-c:a",
                "aac",
                "-shortest",
            ],
            "video/mp4",
        ),
    ] {
        let path = dir.join(name);
        let mut a = args.clone();
        let p = path.to_str().unwrap().to_owned();
        a.push(&p);
        ffmpeg(&a);
        out.push((std::fs::read(&path).unwrap(), ctype));
    }
    out.sort_by_key(|(d, _)| d.len());
    out
}

/// File `i` of a round trip: a real media file (the largest base not bigger than the target
/// size) followed by seeded random bytes up to a size between 1 KB and `max` (log-uniform).
/// Deterministic, so the check regenerates instead of holding every file in RAM.
pub fn round_trip_file(
    bases: &[(Vec<u8>, &'static str)],
    i: u64,
    max: usize,
) -> (Vec<u8>, &'static str) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(i);
    let lo = (1024f64).ln();
    let hi = (max as f64).ln();
    let size = rng.gen_range(lo..hi).exp() as usize;
    let (base, ctype) = bases
        .iter()
        .rev()
        .find(|(b, _)| b.len() <= size)
        .unwrap_or(&bases[0]);
    let mut data = base.clone();
    let mut tail = vec![0u8; size.saturating_sub(data.len())];
    rng.fill(&mut tail[..]);
    data.extend_from_slice(&tail);
    (data, ctype)
}
