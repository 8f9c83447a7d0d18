//! Test helpers: in-process shards, the proxy in front, a delaying and cuttable TCP relay.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use koshka_node::config::{Config as NodeConfig, Durability};
use koshka_proxy::config::{ClusterConfig, Config, Family, ShardConfig};

pub const FAMILIES: [Family; 4] = [Family::Kv, Family::Messages, Family::Wall, Family::Friends];

pub fn node_config(dir: &Path, index: u32, count: u32) -> NodeConfig {
    let mut config = NodeConfig::default();
    config.server.listen = "127.0.0.1:0".into();
    config.server.threads = 1;
    config.storage.data_dir = dir.to_path_buf();
    config.storage.durability = Durability::None;
    config.engines.enabled = FAMILIES.iter().map(|f| f.name().to_string()).collect();
    config.engines.shard_index = index;
    config.engines.shard_count = count;
    config
}

/// `count` shards in this process, each a node holding shard `i` of `count`.
pub struct Shards {
    pub nodes: Vec<Option<koshka_node::Running>>,
    pub dirs: Vec<tempfile::TempDir>,
}

impl Shards {
    pub fn start(count: u32) -> Shards {
        Shards::start_with(count, None)
    }

    /// `count` shards, each node's configuration adjusted by `edit` (limits, …).
    pub fn start_configured(count: u32, edit: impl Fn(&mut NodeConfig)) -> Shards {
        let dirs: Vec<_> = (0..count).map(|_| tempfile::tempdir().unwrap()).collect();
        let nodes = dirs
            .iter()
            .enumerate()
            .map(|(i, dir)| {
                let mut config = node_config(dir.path(), u32::try_from(i).unwrap(), count);
                edit(&mut config);
                Some(start_node(config, None))
            })
            .collect();
        Shards { nodes, dirs }
    }

    /// `count` shards whose log time comes from `clock` (shared with a reference node, so
    /// both give the same dates).
    pub fn start_with(count: u32, clock: Option<&Arc<dyn koshka_engine::Clock>>) -> Shards {
        let dirs: Vec<_> = (0..count).map(|_| tempfile::tempdir().unwrap()).collect();
        let nodes = dirs
            .iter()
            .enumerate()
            .map(|(i, dir)| {
                let config = node_config(dir.path(), u32::try_from(i).unwrap(), count);
                Some(start_node(config, clock))
            })
            .collect();
        Shards { nodes, dirs }
    }

    pub fn addr(&self, shard: usize, family: Family) -> SocketAddr {
        self.nodes[shard]
            .as_ref()
            .unwrap()
            .addr(family.name())
            .unwrap()
    }

    /// A proxy map with one cluster per family over these shards (ephemeral listen ports).
    pub fn proxy_config(&self) -> Config {
        let mut config = Config::default();
        config.proxy.get_timeout_ms = 2000;
        config.proxy.set_timeout_ms = 3000;
        for family in FAMILIES {
            config.clusters.push(cluster(
                family,
                (0..self.nodes.len())
                    .map(|i| self.addr(i, family).to_string())
                    .collect(),
            ));
        }
        config
    }
}

pub fn cluster(family: Family, addrs: Vec<String>) -> ClusterConfig {
    ClusterConfig {
        name: family.name().to_string(),
        engine: family,
        listen: "127.0.0.1:0".into(),
        mode: None,
        step: 1,
        read_from: Default::default(),
        cache: Vec::new(),
        shards: addrs.into_iter().map(ShardConfig::Addr).collect(),
    }
}

fn start_node(
    config: NodeConfig,
    clock: Option<&Arc<dyn koshka_engine::Clock>>,
) -> koshka_node::Running {
    let registry = koshka_node::registry::builtin();
    match clock {
        Some(clock) => koshka_node::start_with_clock(config, &registry, clock.clone()).unwrap(),
        None => koshka_node::start(config, &registry).unwrap(),
    }
}

/// One node holding every shard (the reference of the differential test).
pub fn single_node(dir: &Path) -> koshka_node::Running {
    single_node_with(dir, None)
}

/// [`single_node`] with log time from `clock`.
pub fn single_node_with(
    dir: &Path,
    clock: Option<&Arc<dyn koshka_engine::Clock>>,
) -> koshka_node::Running {
    start_node(node_config(dir, 0, 1), clock)
}

/// A TCP relay in front of a server: can add a delay to every chunk it forwards, be cut
/// (every connection closed, new ones refused by closing them at once), or rewrite requests.
pub struct Relay {
    pub addr: SocketAddr,
    delay_ms: Arc<AtomicU64>,
    down: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
    rewrite: Rewrite,
    task: tokio::task::JoinHandle<()>,
}

/// Bytes replaced in what clients send (the same length, so requests keep their framing).
type Rewrite = Arc<std::sync::Mutex<Option<(Vec<u8>, Vec<u8>)>>>;

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let delay_ms = Arc::new(AtomicU64::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicU64::new(0));
        let rewrite: Rewrite = Arc::default();
        let (d, dn, g, rw) = (
            delay_ms.clone(),
            down.clone(),
            generation.clone(),
            rewrite.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if dn.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let (d, dn, g, rw) = (d.clone(), dn.clone(), g.clone(), rw.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let born = g.load(Ordering::SeqCst);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let a = tokio::spawn(pipe(
                        cr,
                        sw,
                        d.clone(),
                        dn.clone(),
                        g.clone(),
                        born,
                        Some(rw),
                    ));
                    let b = tokio::spawn(pipe(sr, cw, d, dn, g, born, None));
                    let _ = tokio::join!(a, b);
                });
            }
        });
        Relay {
            addr,
            delay_ms,
            down,
            generation,
            rewrite,
            task,
        }
    }

    /// Replaces `from` with `to` (as long) in every chunk a client sends from now on.
    pub fn set_rewrite(&self, from: &[u8], to: &[u8]) {
        assert_eq!(from.len(), to.len(), "a rewrite keeps the length");
        *self.rewrite.lock().unwrap() = Some((from.to_vec(), to.to_vec()));
    }

    pub fn set_delay(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Cuts every connection and refuses new ones, or lets them through again.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay_ms: Arc<AtomicU64>,
    down: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
    born: u64,
    rewrite: Option<Rewrite>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buf) => read,
            () = tokio::time::sleep(Duration::from_millis(20)) => {
                if down.load(Ordering::SeqCst) || generation.load(Ordering::SeqCst) != born {
                    return;
                }
                continue;
            }
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let delay = delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if down.load(Ordering::SeqCst) || generation.load(Ordering::SeqCst) != born {
            return;
        }
        if let Some(rewrite) = &rewrite {
            if let Some((from, to)) = rewrite.lock().unwrap().as_ref() {
                let mut at = 0;
                while let Some(i) = buf[at..n].windows(from.len()).position(|w| w == from) {
                    buf[at + i..at + i + from.len()].copy_from_slice(to);
                    at += i + from.len();
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Sends raw bytes and reads until the reply ends with `end` (or a 5 s timeout).
pub async fn raw(addr: SocketAddr, request: &[u8], end: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !out.ends_with(end) {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    out
}

/// A real memcached on a free loopback port, killed by PID on drop.
pub struct Memcached {
    pub addr: SocketAddr,
    child: std::process::Child,
}

impl Memcached {
    /// `None` when memcached is not installed (scripts/test.sh installs it).
    pub fn start() -> Option<Memcached> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = std::process::Command::new("memcached");
        command.args([
            "-l",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "0",
            "-m",
            "64",
        ]);
        // memcached refuses to run as root without -u.
        if std::env::var("USER").as_deref() == Ok("root") || std::path::Path::new("/root").exists()
        {
            command.args(["-u", "root"]);
        }
        let child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "memcached did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Memcached { addr, child })
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
