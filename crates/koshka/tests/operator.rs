//! The node against the mistakes operators make: a second start on a live data directory, a
//! port clash, a hang-up signal, a low file limit, clients that never read, a kill during a
//! snapshot, a wall clock stepped back, a full disk. Every test drives the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod crashkit;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crashkit::{binlog_tool, set_bytes, snapshot_and_wait, Client, Server, ServerOpts};

/// Keys acknowledged (`STORED`) by writers, with their values.
type Acked = Arc<Mutex<BTreeMap<String, String>>>;

/// Starts `writers` threads that set distinct keys until `stop`; each acknowledged write is
/// recorded.
fn writers(
    port: u16,
    writers: usize,
    stop: &Arc<AtomicBool>,
    acked: &Acked,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..writers)
        .map(|w| {
            let stop = stop.clone();
            let acked = acked.clone();
            std::thread::spawn(move || {
                let Ok(mut c) = Client::connect(port) else {
                    return;
                };
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{w}k{i}");
                    let value = format!("v{i}");
                    match c.set(&key, value.as_bytes()) {
                        Ok(reply) if reply == "STORED" => {
                            acked.lock().unwrap().insert(key, value);
                        }
                        _ => return,
                    }
                    i += 1;
                }
            })
        })
        .collect()
}

fn check_acked(server: &Server, acked: &Acked) {
    let acked = acked.lock().unwrap();
    assert!(!acked.is_empty(), "the writers acknowledged nothing");
    let mut c = server.connect("kv");
    let keys: Vec<String> = acked.keys().cloned().collect();
    for chunk in keys.chunks(200) {
        let found = c.get_many(chunk).unwrap();
        for key in chunk {
            assert_eq!(found.get(key), acked.get(key), "acknowledged {key} lost");
        }
    }
}

#[test]
fn a_second_start_under_write_load_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ServerOpts::new(dir.path(), "everysec", &["kv"]);
    let server = Server::must_start(&opts);
    let (stop, acked) = (Arc::new(AtomicBool::new(false)), Acked::default());
    let threads = writers(server.port("kv"), 4, &stop, &acked);
    std::thread::sleep(Duration::from_millis(300));
    // The operator (or a supervisor) starts a second node on the same directory.
    for _ in 0..3 {
        let failure = Server::must_fail(&opts);
        assert!(
            failure
                .stderr
                .contains(&format!("in use by koshka process {}", server.pid())),
            "{}",
            failure.stderr
        );
        assert!(
            failure.stderr.contains(&dir.path().display().to_string()),
            "{}",
            failure.stderr
        );
        assert_eq!(failure.status.and_then(|s| s.code()), Some(1));
        // One line for the operator, no backtrace.
        let errors: Vec<&str> = failure
            .stderr
            .lines()
            .filter(|l| l.starts_with("koshka: "))
            .collect();
        assert_eq!(errors.len(), 1, "{}", failure.stderr);
        assert!(!failure.stderr.contains("backtrace"), "{}", failure.stderr);
    }
    std::thread::sleep(Duration::from_millis(300));
    server.kill9();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let server = Server::must_start(&opts);
    check_acked(&server, &acked);
    server.kill9();
    let (ok, report) = binlog_tool(&["verify"], &dir.path().join("kv"));
    assert!(ok, "{report}");
}

#[test]
fn a_port_clash_costs_nothing() {
    let first_dir = tempfile::tempdir().unwrap();
    let first = Server::must_start(&ServerOpts::new(first_dir.path(), "everysec", &["kv"]));
    let dir = tempfile::tempdir().unwrap();
    let mut opts = ServerOpts::new(&dir.path().join("data"), "everysec", &["kv"]);
    opts.extra_args = vec!["--port".into(), format!("kv={}", first.port("kv"))];
    let failure = Server::must_fail(&opts);
    assert!(
        failure
            .stderr
            .contains(&format!("cannot listen on 127.0.0.1:{}", first.port("kv"))),
        "{}",
        failure.stderr
    );
    // Nothing was recovered or created for the engine.
    assert!(!dir.path().join("data").join("kv").exists());
}

#[test]
fn sighup_does_not_stop_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::must_start(&ServerOpts::new(dir.path(), "everysec", &["kv"]));
    let mut c = server.connect("kv");
    assert_eq!(c.set("k", b"v").unwrap(), "STORED");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(c.get_str("k").unwrap().as_deref(), Some("v"));
    assert!(
        server.stderr().contains("SIGHUP ignored"),
        "{}",
        server.stderr()
    );
}

/// Opens `count` connections and sends `version` on each; returns (answered, refused).
fn open_many(port: u16, count: usize) -> (usize, usize) {
    let mut streams = Vec::new();
    let (mut answered, mut refused) = (0, 0);
    for _ in 0..count {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"version\r\n").unwrap();
        let mut buf = [0u8; 128];
        let n = s
            .read(&mut buf)
            .expect("no reply within 5 s: the client hangs");
        let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
        if reply.starts_with("VERSION") {
            answered += 1;
        } else {
            assert_eq!(reply, "ERROR Too many open connections\r\n");
            refused += 1;
        }
        streams.push(s);
    }
    (answered, refused)
}

#[test]
fn a_low_soft_file_limit_is_raised() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = ServerOpts::new(dir.path(), "everysec", &["kv"]);
    opts.shell_prefix = Some("ulimit -Sn 256".into());
    opts.extra_args = vec!["--max-connections".into(), "4096".into()];
    let server = Server::must_start(&opts);
    assert_eq!(open_many(server.port("kv"), 400), (400, 0));
}

#[test]
fn a_low_hard_file_limit_lowers_the_connection_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = ServerOpts::new(dir.path(), "everysec", &["kv"]);
    opts.shell_prefix = Some("ulimit -Sn 256 && ulimit -Hn 256".into());
    opts.extra_args = vec!["--max-connections".into(), "4096".into()];
    let server = Server::must_start(&opts);
    assert!(
        server
            .stderr()
            .contains("max_connections lowered from 4096"),
        "{}",
        server.stderr()
    );
    let (answered, refused) = open_many(server.port("kv"), 300);
    assert!(answered > 150, "{answered} answered");
    assert!(refused > 0, "nobody was refused");
    // The node still serves.
    let mut c = server.connect("kv");
    assert_eq!(c.set("still", b"here").unwrap(), "STORED");
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[test]
fn clients_that_never_read_are_bounded_in_total() {
    const CLIENTS: usize = 48;
    let dir = tempfile::tempdir().unwrap();
    let mut opts = ServerOpts::new(dir.path(), "none", &["kv"]);
    opts.extra_args = vec!["--output-budget".into(), "64MiB".into()];
    let server = Server::must_start(&opts);
    let value = vec![b'x'; 1 << 20];
    let mut c = server.connect("kv");
    c.send(&set_bytes("big", &value)).unwrap();
    assert_eq!(c.line().unwrap(), "STORED");
    let baseline = rss_bytes(server.pid());
    // Each client asks for 64 MiB of replies and never reads one.
    let request = "get big\r\n".repeat(64);
    let clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", server.port("kv"))).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            s
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut peak = 0;
    let closed = loop {
        std::thread::sleep(Duration::from_millis(200));
        peak = peak.max(rss_bytes(server.pid()));
        let stats = c.stats("").unwrap();
        let closed: u64 = stats["output_budget_closed"].parse().unwrap();
        if closed >= (CLIENTS / 2) as u64 || Instant::now() > deadline {
            break closed;
        }
    };
    assert!(closed > 0, "no connection was closed for the budget");
    // Without the budget the held replies alone would pass 48 × 16 MiB = 768 MiB.
    let grown = peak.saturating_sub(baseline);
    assert!(
        grown < 300 << 20,
        "RSS grew by {} MiB with a 64 MiB output budget",
        grown >> 20
    );
    drop(clients);
    assert_eq!(c.get("big").unwrap().unwrap().len(), 1 << 20);
}

#[test]
fn a_kill_during_a_snapshot_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ServerOpts::new(dir.path(), "everysec", &["kv"]);
    let server = Server::must_start(&opts);
    let mut c = server.connect("kv");
    let value = vec![b'v'; 4096];
    for i in 0..20_000 {
        c.send(&set_bytes(&format!("key{i}"), &value)).unwrap();
    }
    for _ in 0..20_000 {
        assert_eq!(c.line().unwrap(), "STORED");
    }
    // Start a snapshot of ~80 MB and kill the node while it is being written.
    let reply = c.stats("snapshot").unwrap();
    assert_eq!(reply.get("snapshot").map(String::as_str), Some("started"));
    std::thread::sleep(Duration::from_millis(20));
    server.kill9();
    let server = Server::must_start(&opts);
    assert!(
        crashkit::files(&dir.path().join("kv"), "kv", "tmp").is_empty(),
        "a leftover temporary snapshot stayed"
    );
    let mut c = server.connect("kv");
    let keys: Vec<String> = (0..20_000).map(|i| format!("key{i}")).collect();
    for chunk in keys.chunks(500) {
        assert_eq!(c.get_many(chunk).unwrap().len(), chunk.len());
    }
    // And a snapshot still works afterwards.
    snapshot_and_wait(&mut c);
}

/// `mg <key> t` → the seconds left, or None for a miss.
fn ttl(c: &mut Client, key: &str) -> Option<i64> {
    let line = c.command_line(&format!("mg {key} t")).unwrap();
    if line == "EN" {
        return None;
    }
    let t = line.split_whitespace().find_map(|f| f.strip_prefix('t'))?;
    Some(t.parse().unwrap())
}

#[test]
fn expiry_survives_a_clock_stepped_back_a_day() {
    let faketime = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    assert!(
        std::path::Path::new(faketime).exists(),
        "libfaketime is missing: scripts/test.sh installs the faketime package"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut opts = ServerOpts::new(dir.path(), "everysec", &["kv"]);
    let server = Server::must_start(&opts);
    let mut c = server.connect("kv");
    c.send(b"set short 0 1 1\r\na\r\nset long 0 100 1\r\nb\r\n")
        .unwrap();
    assert_eq!(c.line().unwrap(), "STORED");
    assert_eq!(c.line().unwrap(), "STORED");
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(c.get_str("short").unwrap(), None);
    drop(c);
    server.kill9();
    // The wall clock is now a day behind the log.
    opts.env = vec![
        ("LD_PRELOAD".into(), faketime.into()),
        ("FAKETIME".into(), "-1d".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ];
    let server = Server::must_start(&opts);
    let mut c = server.connect("kv");
    assert_eq!(
        c.get_str("short").unwrap(),
        None,
        "an expired key came back"
    );
    let left = ttl(&mut c, "long").expect("the 100 s key is gone");
    assert!((90..=100).contains(&left), "a 100 s TTL reads as {left} s");
    // A new TTL counts from log time too.
    c.send(b"set fresh 0 50 1\r\nc\r\n").unwrap();
    assert_eq!(c.line().unwrap(), "STORED");
    let left = ttl(&mut c, "fresh").unwrap();
    assert!((45..=50).contains(&left), "a 50 s TTL reads as {left} s");
}

/// A small tmpfs mounted for one test, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .ok()?;
        status.success().then_some(Self { dir })
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_full_disk_refuses_writes_serves_reads_and_recovers() {
    let Some(disk) = Tmpfs::mount("32m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?)");
        return;
    };
    let filler = disk.path().join("filler");
    std::fs::write(&filler, vec![0u8; 8 << 20]).unwrap();
    let opts = ServerOpts::new(&disk.path().join("data"), "everysec", &["kv"]);
    let server = Server::must_start(&opts);
    let mut c = server.connect("kv");
    let value = vec![b'd'; 64 * 1024];
    let mut acked = Vec::new();
    let refusal = loop {
        let key = format!("k{}", acked.len());
        c.send(&set_bytes(&key, &value)).unwrap();
        let reply = c.line().unwrap();
        if reply != "STORED" {
            break reply;
        }
        acked.push(key);
        assert!(acked.len() < 1000, "32 MiB never filled up");
    };
    assert!(refusal.starts_with("SERVER_ERROR"), "{refusal}");
    assert!(refusal.contains("disk full"), "{refusal}");
    // Refused writes are not readable; acknowledged ones are.
    assert_eq!(c.get(&format!("k{}", acked.len())).unwrap(), None);
    assert_eq!(c.get(&acked[0]).unwrap().unwrap().len(), value.len());
    assert_eq!(
        c.get(acked.last().unwrap()).unwrap().unwrap().len(),
        value.len()
    );
    // Still full: still refused, the connection still works.
    c.send(&set_bytes("again", &value)).unwrap();
    assert!(c.line().unwrap().starts_with("SERVER_ERROR"));
    // Space comes back: writes resume by themselves.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let key = format!("k{}", acked.len());
        c.send(&set_bytes(&key, &value)).unwrap();
        if c.line().unwrap() == "STORED" {
            acked.push(key);
            break;
        }
        assert!(Instant::now() < deadline, "writes did not resume");
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in 0..16 {
        let key = format!("after{i}");
        c.send(&set_bytes(&key, b"small")).unwrap();
        assert_eq!(c.line().unwrap(), "STORED");
    }
    drop(c);
    server.kill9();
    let server = Server::must_start(&opts);
    let mut c = server.connect("kv");
    for chunk in acked.chunks(100) {
        assert_eq!(
            c.get_many(chunk).unwrap().len(),
            chunk.len(),
            "acknowledged lost"
        );
    }
    assert_eq!(c.get_str("after15").unwrap().as_deref(), Some("small"));
    drop(c);
    server.kill9();
    let (ok, report) = binlog_tool(&["verify"], &disk.path().join("data").join("kv"));
    assert!(ok, "{report}");
}
