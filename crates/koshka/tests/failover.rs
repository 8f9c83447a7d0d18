//! Failover coordinated by a real etcd (Debian `etcd-server`, installed by the test command):
//! three nodes of one shard, one etcd on ephemeral loopback ports.
//!
//! * kill -9 the primary under semi-synchronous write load: the most advanced replica takes
//!   the lease, every acknowledged write is on it, the other replica follows it, and the old
//!   primary restarts as a replica and converges;
//! * split brain: the primary loses etcd (its connection goes through a relay the test cuts)
//!   but clients still reach it — it refuses writes before any other node accepts one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{config_file, Conn, Node};

/// Lease time to live of these tests.
const TTL_MS: u64 = 2000;

/// Bound on every wait here.
const WAIT: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real etcd on ephemeral loopback ports, killed on drop.
struct Etcd {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args([
                "--name",
                "koshka-test",
                "--data-dir",
                dir.path().to_str().unwrap(),
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &format!("koshka-test={peer_url}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian etcd-server) must be installed: scripts/test.sh installs it");
        let etcd = Self {
            child,
            url,
            _dir: dir,
        };
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", client)).is_err()
            || koshka_etcd_grant_works(&etcd.url).is_err()
        {
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        etcd
    }
}

/// One HTTP request by hand: the test does not trust the client it tests.
fn koshka_etcd_grant_works(url: &str) -> std::io::Result<()> {
    let addr = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let body = r#"{"TTL":1}"#;
    write!(
        s,
        "POST /v3/lease/grant HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    if reply.starts_with("HTTP/1.1 200") && reply.contains("\"ID\"") {
        Ok(())
    } else {
        Err(std::io::Error::other(reply))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP relay in front of etcd that the test can cut (a network partition between one node
/// and etcd; test code, not product code).
struct Relay {
    port: u16,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(to: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let to = to.trim_start_matches("http://").to_string();
        let (cut_in, conns_in) = (Arc::clone(&cut), Arc::clone(&conns));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if cut_in.load(Ordering::Acquire) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&to) else {
                    continue;
                };
                let mut all = conns_in.lock().unwrap();
                all.push(client.try_clone().unwrap());
                all.push(server.try_clone().unwrap());
                for (mut from, mut into) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut into);
                        let _ = into.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Self { port, cut, conns }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

fn stats(port: u16) -> HashMap<String, String> {
    let mut conn = Conn::open(port);
    let reply = conn.roundtrip(b"stats\r\n", b"END\r\n");
    String::from_utf8_lossy(&reply)
        .lines()
        .filter_map(|l| l.strip_prefix("STAT "))
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn role(node: &Node) -> String {
    stats(node.port("kv"))
        .get("repl_role")
        .cloned()
        .unwrap_or_default()
}

/// Starts a kv node of shard 0 of cluster `cluster` coordinated by etcd at `etcd`.
fn start_node(etcd: &str, cluster: &str, extra: &str, dir: tempfile::TempDir) -> Node {
    let (cfg_dir, cfg) = config_file(&format!(
        "[storage]\nsegment_size = \"256KiB\"\n[replication]\nlisten = \"127.0.0.1:0\"\n\
         etcd = \"{etcd}\"\ncluster = \"{cluster}\"\nlease_ttl_ms = {TTL_MS}\n{extra}"
    ));
    let node = Node::start_in(dir, &["--config", &cfg, "--engines", "kv"]);
    // The node read its configuration at start-up.
    drop(cfg_dir);
    node
}

fn wait_role(node: &Node, want: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = role(node);
        if r.starts_with(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "role stayed {r:?}, wanted {want:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn try_set(port: u16, key: &str) -> Option<Vec<u8>> {
    let mut conn = Conn::connect(port).ok()?;
    conn.stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .ok()?;
    conn.send(format!("set {key} 0 0 1\r\nx\r\n").as_bytes());
    conn.try_read_until(b"\r\n").ok()
}

#[test]
fn etcd_failover_keeps_every_semisync_write_and_the_old_primary_rejoins() {
    let etcd = Etcd::start();
    let extra = "semisync_replicas = 1\n";
    let mut primary = start_node(&etcd.url, "a", extra, tempfile::tempdir().unwrap());
    wait_role(&primary, "primary");
    let r1 = start_node(&etcd.url, "a", extra, tempfile::tempdir().unwrap());
    let r2 = start_node(&etcd.url, "a", extra, tempfile::tempdir().unwrap());
    wait_role(&r1, "replica");
    wait_role(&r2, "replica");

    let stop = Arc::new(AtomicBool::new(false));
    let port = primary.port("kv");
    let writers: Vec<_> = (0..4)
        .map(|c| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                let Ok(mut conn) = Conn::connect(port) else {
                    return acked;
                };
                conn.stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{c}-{i}");
                    conn.send(format!("set {key} 0 0 5\r\nvalue\r\n").as_bytes());
                    match conn.try_read_until(b"\r\n") {
                        Ok(r) if r == b"STORED\r\n" => acked.push(key),
                        _ => break,
                    }
                    i += 1;
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    primary.child.kill().unwrap();
    let killed = Instant::now();
    primary.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<String> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(acked.len() > 100, "too little load: {}", acked.len());

    // One replica takes over by itself; the other follows it.
    let deadline = Instant::now() + WAIT;
    let (new, other) = loop {
        if let Some(r) = try_set(r1.port("kv"), "probe") {
            if r == b"STORED\r\n" {
                break (&r1, &r2);
            }
        }
        if let Some(r) = try_set(r2.port("kv"), "probe") {
            if r == b"STORED\r\n" {
                break (&r2, &r1);
            }
        }
        assert!(Instant::now() < deadline, "no replica took over");
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = killed.elapsed();
    eprintln!(
        "etcd failover: writes accepted again {took:?} after the kill (lease {TTL_MS} ms); {} \
         acknowledged writes",
        acked.len()
    );
    assert!(took < Duration::from_millis(TTL_MS) * 4, "took {took:?}");
    let mut conn = Conn::open(new.port("kv"));
    let missing: Vec<&String> = acked
        .iter()
        .filter(|k| {
            !conn
                .roundtrip(format!("get {k}\r\n").as_bytes(), b"END\r\n")
                .starts_with(b"VALUE ")
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged writes lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    // The other replica follows the new primary: it gets the probe.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut c = Conn::open(other.port("kv"));
        if c.roundtrip(b"get probe\r\n", b"END\r\n")
            .starts_with(b"VALUE ")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the other replica does not follow the new primary"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The old primary comes back: a replica of the new one, with the new writes.
    let dir = std::mem::replace(&mut primary.dir, tempfile::tempdir().unwrap());
    drop(primary);
    let old = start_node(&etcd.url, "a", extra, dir);
    wait_role(&old, "replica");
    let reply = try_set(new.port("kv"), "after-rejoin").unwrap();
    assert_eq!(reply, b"STORED\r\n");
    let deadline = Instant::now() + WAIT;
    loop {
        let mut c = Conn::open(old.port("kv"));
        if c.roundtrip(b"get after-rejoin\r\n", b"END\r\n")
            .starts_with(b"VALUE ")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old primary did not converge"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = try_set(old.port("kv"), "x").unwrap();
    assert!(refused.starts_with(b"SERVER_ERROR read-only replica"));
}

#[test]
fn a_primary_cut_off_from_etcd_fences_itself_before_another_node_takes_over() {
    let etcd = Etcd::start();
    let relay = Relay::start(&etcd.url);
    let primary = start_node(&relay.url(), "b", "", tempfile::tempdir().unwrap());
    wait_role(&primary, "primary");
    let replica = start_node(&etcd.url, "b", "", tempfile::tempdir().unwrap());
    wait_role(&replica, "replica");
    assert_eq!(
        try_set(primary.port("kv"), "before").unwrap(),
        b"STORED\r\n"
    );

    relay.cut();
    let cut = Instant::now();
    let deadline = cut + WAIT;
    let (mut fenced_at, mut taken_at) = (None, None);
    while fenced_at.is_none() || taken_at.is_none() {
        assert!(
            Instant::now() < deadline,
            "fenced {fenced_at:?}, taken {taken_at:?}"
        );
        if fenced_at.is_none() {
            let r = try_set(primary.port("kv"), "during").unwrap();
            if r.starts_with(b"SERVER_ERROR fenced") {
                fenced_at = Some(cut.elapsed());
            } else {
                assert_eq!(r, b"STORED\r\n", "{}", String::from_utf8_lossy(&r));
                assert!(
                    taken_at.is_none(),
                    "the old primary took a write after the new one started"
                );
            }
        }
        if taken_at.is_none()
            && try_set(replica.port("kv"), "new").as_deref() == Some(b"STORED\r\n")
        {
            taken_at = Some(cut.elapsed());
            assert!(
                fenced_at.is_some(),
                "the new primary accepted a write while the old one still did"
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!(
        "split brain: old primary fenced {:?} after the cut, new primary writable {:?} after",
        fenced_at.unwrap(),
        taken_at.unwrap()
    );
    // Reads still work on the fenced node.
    let mut c = Conn::open(primary.port("kv"));
    assert!(c
        .roundtrip(b"get before\r\n", b"END\r\n")
        .starts_with(b"VALUE "));
    assert_eq!(stats(primary.port("kv"))["repl_fenced"], "1");
}

#[test]
fn the_proxy_follows_a_failover_through_etcd() {
    let etcd = Etcd::start();
    let mut primary = start_node(&etcd.url, "c", "", tempfile::tempdir().unwrap());
    wait_role(&primary, "primary");
    let replica = start_node(&etcd.url, "c", "", tempfile::tempdir().unwrap());
    wait_role(&replica, "replica");
    let config = koshka_proxy::Config::from_toml(&format!(
        "[proxy]\netcd = \"{}\"\netcd_cluster = \"c\"\nget_timeout_ms = 500\nset_timeout_ms = 500\n\
         [[cluster]]\nname = \"kv\"\nengine = \"kv\"\nlisten = \"127.0.0.1:0\"\n\
         shards = [{{ primary = \"{}\", replicas = [\"{}\"] }}]\n",
        etcd.url,
        primary.addr("kv"),
        replica.addr("kv")
    ))
    .unwrap();
    let proxy = koshka_proxy::start(config).unwrap();
    let port = proxy.addr("kv").unwrap().port();
    for i in 0..100 {
        assert_eq!(try_set(port, &format!("p{i}")).unwrap(), b"STORED\r\n");
    }
    // Asynchronous replication: let the replica catch up, so the test is about the proxy.
    let written: u64 = stats(primary.port("kv"))["binlog_written"].parse().unwrap();
    let deadline = Instant::now() + WAIT;
    while stats(replica.port("kv"))["repl_applied_pos"]
        .parse::<u64>()
        .unwrap()
        < written
    {
        assert!(Instant::now() < deadline, "the replica did not catch up");
        std::thread::sleep(Duration::from_millis(10));
    }
    primary.child.kill().unwrap();
    let killed = Instant::now();
    primary.child.wait().unwrap();
    let deadline = killed + WAIT;
    while try_set(port, "after").as_deref() != Some(b"STORED\r\n") {
        assert!(
            Instant::now() < deadline,
            "writes through the proxy never resumed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "proxy: writes through it resumed {:?} after the primary was killed",
        killed.elapsed()
    );
    let mut conn = Conn::open(port);
    let reply = conn.roundtrip(b"get p0 p99 after\r\n", b"END\r\n");
    let text = String::from_utf8_lossy(&reply);
    assert_eq!(text.matches("VALUE ").count(), 3, "{text}");
}
