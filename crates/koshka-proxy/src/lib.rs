//! The koshka proxy: the layer between applications and shards.
//!
//! An application connects to the proxy as it would to one node (one listen port per engine
//! family); the proxy routes every key to its shard, splits multi-gets into one request per
//! shard with a deadline, writes the two halves of cross-shard sends and friendships, merges
//! answers that need several shards, and can read hot key families through a memcached pool.
//! It parses, routes, rewrites and merges with the key grammar types of `koshka-keys` and the
//! codec of `koshka-proto`; it never sees engine state. See `docs/proxy.md`.
//!
//! # Layout
//! * [`config`] — the TOML cluster map and its defaults;
//! * [`ring`] — ketama consistent hashing for plain kv keys;
//! * [`backend`] — pipelined connections per server, health, reconnects;
//! * [`cluster`] — shards, members, placement;
//! * [`route`] — the plan for each key (which shard, or which proxy-side procedure);
//! * `conn` — one client connection: parse, plan, submit, replies in order;
//! * `twin` — writes in several steps (cross-shard sends and friendships, the new-id
//!   handshake) and the durable queue of second halves;
//! * `scatter` — merges over several shards (common friends, counts, privacy checks);
//! * `cache` — the read-through memcached tier and its invalidation;
//! * [`feed`], [`feed_cache`] — the feed key and its in-proxy cache;
//! * `admin` — admin keys and `stats`;
//! * [`stats`] — per-cluster counters;
//! * this file — [`run`] (blocking, the binary) and [`start`] (in the background, tests),
//!   listeners, reloads.
//!
//! # What it is not
//! Not a replication manager (replicas are read from, never promoted), not a general
//! memcached proxy with arbitrary hashing schemes, and not stateful beyond the twin queue: a
//! restart loses nothing but client connections and cached ids of handshakes in flight.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod admin;
pub mod backend;
mod cache;
pub mod cluster;
pub mod config;
mod conn;
pub mod etcd;
pub mod feed;
pub mod feed_cache;
mod lists;
pub mod ring;
pub mod route;
mod scatter;
mod search;
pub mod stats;
mod twin;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

pub use config::Config;
pub use conn::{NEW_IDS_MAX, TEMP_LISTS_MAX};
pub use lists::OBJECT_LISTS_WINDOW_MAX;

use crate::backend::Member;
use crate::cluster::Cluster;
use crate::stats::{bump, ClusterStats};

/// Why the proxy could not start or reload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    /// A listener could not be bound.
    #[error("cluster {cluster}: cannot listen on {addr}: {source}")]
    Listen {
        /// The cluster.
        cluster: String,
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The twin queue could not be opened.
    #[error("twin queue: {0}")]
    Queue(std::io::Error),
    /// The runtime or a thread could not be started, or the proxy stopped.
    #[error("{0}")]
    Io(std::io::Error),
}

/// Result of proxy operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The current version of a cluster, swapped on reload; connections load it per batch.
#[derive(Debug)]
pub struct ClusterCell {
    inner: RwLock<Arc<Cluster>>,
}

impl ClusterCell {
    fn new(cluster: Cluster) -> ClusterCell {
        ClusterCell {
            inner: RwLock::new(Arc::new(cluster)),
        }
    }

    /// The cluster in force.
    pub fn load(&self) -> Arc<Cluster> {
        self.inner.read().clone()
    }

    fn store(&self, cluster: Cluster) {
        *self.inner.write() = Arc::new(cluster);
    }
}

/// State every connection shares.
#[derive(Debug)]
pub struct Shared {
    /// When the proxy started.
    pub started: Instant,
    /// The cache tier, if configured.
    pub cache: Option<Arc<cache::Pool>>,
    /// The twin queue.
    pub twin: Arc<twin::Queue>,
    /// The feed key's cache (friend lists, privacy answers, author heads).
    pub feed_cache: Arc<feed_cache::FeedCache>,
    /// Counter for the tags the proxy uses in backend session state.
    pub tags: AtomicU64,
    /// Clusters by name (the twin retry worker finds its cluster here).
    pub clusters: RwLock<HashMap<String, Arc<ClusterCell>>>,
    config_loaded: Mutex<String>,
    connections: AtomicUsize,
    max_connections: usize,
}

impl Shared {
    /// The configuration's fingerprint and load time, for `stats`.
    #[must_use]
    pub fn config_text(&self) -> String {
        self.config_loaded.lock().clone()
    }

    /// A tag no other request of this proxy uses (for `temp<tag>`, `newmsg…#<tag>`).
    #[must_use]
    pub fn next_tag(&self) -> String {
        format!("kp{}", self.tags.fetch_add(1, Ordering::Relaxed))
    }

    /// The cluster named `name`, if configured.
    #[must_use]
    pub fn cluster(&self, name: &str) -> Option<Arc<Cluster>> {
        self.clusters.read().get(name).map(|cell| cell.load())
    }
}

fn fingerprint(config: &Config) -> String {
    use md5::{Digest, Md5};
    let digest = Md5::digest(config.to_toml().as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("md5={hex},loaded={now}")
}

/// What a running proxy can be told.
#[derive(Debug)]
pub enum Control {
    /// Replace the cluster map (SIGHUP); the answer says whether it was taken.
    Reload(Box<Config>, std::sync::mpsc::Sender<Result<(), String>>),
    /// Stop.
    Stop,
}

struct Listening {
    cell: Arc<ClusterCell>,
    stop: watch::Sender<bool>,
    addr: SocketAddr,
    listen: String,
}

/// Runs the proxy in the calling thread until [`Control::Stop`] (or the sender is dropped).
///
/// # Errors
/// A bad configuration, a port that cannot be bound, a twin queue that cannot be opened.
pub fn run(config: Config, control: mpsc::UnboundedReceiver<Control>) -> Result<()> {
    let runtime = runtime(&config)?;
    runtime.block_on(serve(config, control, None))
}

fn runtime(config: &Config) -> Result<tokio::runtime::Runtime> {
    let mut builder = if config.proxy.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if config.proxy.threads > 1 {
        builder.worker_threads(config.proxy.threads);
    }
    builder
        .enable_all()
        .thread_name("koshka-proxy")
        .build()
        .map_err(Error::Io)
}

/// A proxy running on its own threads; stops when dropped.
pub struct Running {
    addrs: BTreeMap<String, SocketAddr>,
    control: mpsc::UnboundedSender<Control>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// The address cluster `name` listens on.
    #[must_use]
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.addrs.get(name).copied()
    }

    /// Every cluster's address.
    #[must_use]
    pub fn addrs(&self) -> &BTreeMap<String, SocketAddr> {
        &self.addrs
    }

    /// Replaces the cluster map without dropping client connections.
    ///
    /// # Errors
    /// The reason the new map was refused (the old one stays in force).
    pub fn reload(&self, config: Config) -> Result<(), String> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.control
            .send(Control::Reload(Box::new(config), tx))
            .map_err(|_| "proxy stopped".to_string())?;
        rx.recv().map_err(|_| "proxy stopped".to_string())?
    }

    /// Stops the proxy and waits for it.
    ///
    /// # Errors
    /// What the proxy reported.
    pub fn stop(mut self) -> Result<()> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> Result<()> {
        let _ = self.control.send(Control::Stop);
        match self.thread.take().map(JoinHandle::join) {
            None => Ok(()),
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(Error::Io(std::io::Error::other("proxy thread panicked"))),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Err(e) = self.shut_down() {
            tracing::error!("proxy shutdown: {e}");
        }
    }
}

/// Starts the proxy in the background; returns once every cluster listens (so listen
/// addresses may use port 0) and the backends were tried once.
///
/// # Errors
/// As [`run`].
pub fn start(config: Config) -> Result<Running> {
    config.validate()?;
    let runtime = runtime(&config)?;
    let (control, rx) = mpsc::unbounded_channel();
    let _ = etcd::spawn(&config, control.clone());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("koshka-proxy".into())
        .spawn(move || runtime.block_on(serve(config, rx, Some(ready_tx))))
        .map_err(Error::Io)?;
    match ready_rx.recv() {
        Ok(addrs) => Ok(Running {
            addrs,
            control,
            thread: Some(thread),
        }),
        Err(_) => match thread.join() {
            Ok(Err(e)) => Err(e),
            _ => Err(Error::Io(std::io::Error::other("proxy failed to start"))),
        },
    }
}

async fn serve(
    config: Config,
    mut control: mpsc::UnboundedReceiver<Control>,
    ready: Option<std::sync::mpsc::Sender<BTreeMap<String, SocketAddr>>>,
) -> Result<()> {
    config.validate()?;
    let cache = match config.cache.servers.is_empty() {
        true => None,
        false => Some(Arc::new(
            cache::Pool::start(&config.cache, &config.proxy).await,
        )),
    };
    let shared = Arc::new(Shared {
        started: Instant::now(),
        cache,
        twin: Arc::new(twin::Queue::open(&config.twin).map_err(Error::Queue)?),
        feed_cache: Arc::new(feed_cache::FeedCache::new(&config.feed)),
        tags: AtomicU64::new(0),
        clusters: RwLock::new(HashMap::new()),
        config_loaded: Mutex::new(fingerprint(&config)),
        connections: AtomicUsize::new(0),
        max_connections: config.proxy.max_connections,
    });
    let mut listening: BTreeMap<String, Listening> = BTreeMap::new();
    apply(&config, &shared, &mut listening).await?;
    twin::spawn_worker(shared.clone());
    if let Some(ready) = ready {
        let addrs = listening.iter().map(|(n, l)| (n.clone(), l.addr)).collect();
        let _ = ready.send(addrs);
    }
    while let Some(message) = control.recv().await {
        match message {
            Control::Stop => break,
            Control::Reload(config, answer) => {
                let result = match config.validate() {
                    Ok(()) => apply(&config, &shared, &mut listening)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match &result {
                    Ok(()) => {
                        *shared.config_loaded.lock() = fingerprint(&config);
                        tracing::info!("configuration reloaded");
                    }
                    Err(e) => tracing::error!("reload refused, the old map stays: {e}"),
                }
                let _ = answer.send(result);
            }
        }
    }
    for (_, listening) in listening {
        let _ = listening.stop.send(true);
    }
    shared.twin.flush();
    Ok(())
}

/// Makes `config` the map in force: clusters that keep their name and listen address keep
/// their listener and client connections (their shards are rebuilt, reusing connected
/// members by address); new ones are bound; removed ones stop accepting.
async fn apply(
    config: &Config,
    shared: &Arc<Shared>,
    listening: &mut BTreeMap<String, Listening>,
) -> Result<()> {
    if config
        .clusters
        .iter()
        .any(|c| c.engine == crate::config::Family::News)
    {
        shared.feed_cache.serve();
    }
    let old_members: HashMap<String, Arc<Member>> = listening
        .values()
        .flat_map(|l| {
            l.cell
                .load()
                .members()
                .map(|m| (m.addr.clone(), m.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    // Bind new listeners first, so a port clash refuses the whole reload.
    let mut bound = Vec::new();
    for cluster in &config.clusters {
        let keep = listening
            .get(&cluster.name)
            .is_some_and(|l| l.listen == cluster.listen);
        if keep {
            continue;
        }
        let listener =
            TcpListener::bind(&cluster.listen)
                .await
                .map_err(|source| Error::Listen {
                    cluster: cluster.name.clone(),
                    addr: cluster.listen.clone(),
                    source,
                })?;
        bound.push((cluster.name.clone(), listener));
    }
    let mut in_use: Vec<Arc<Member>> = Vec::new();
    for cluster_config in &config.clusters {
        let name = cluster_config.name.clone();
        let stats = listening.get(&name).map_or_else(
            || Arc::new(ClusterStats::default()),
            |l| l.cell.load().stats.clone(),
        );
        let cluster =
            Cluster::build(cluster_config.clone(), &config.proxy, stats, &old_members).await;
        in_use.extend(cluster.members().cloned());
        if let Some(pos) = bound.iter().position(|(n, _)| *n == name) {
            let (_, listener) = bound.swap_remove(pos);
            if let Some(old) = listening.remove(&name) {
                let _ = old.stop.send(true);
            }
            let addr = listener.local_addr().map_err(Error::Io)?;
            let cell = Arc::new(ClusterCell::new(cluster));
            let (stop, stopped) = watch::channel(false);
            tokio::spawn(accept(listener, cell.clone(), shared.clone(), stopped));
            tracing::info!(
                "cluster {name} ({}) listening on {addr}",
                cluster_config.engine.name()
            );
            listening.insert(
                name.clone(),
                Listening {
                    cell,
                    stop,
                    addr,
                    listen: cluster_config.listen.clone(),
                },
            );
        } else if let Some(l) = listening.get(&name) {
            l.cell.store(cluster);
        }
    }
    let names: Vec<String> = config.clusters.iter().map(|c| c.name.clone()).collect();
    listening.retain(|name, l| {
        let keep = names.contains(name);
        if !keep {
            let _ = l.stop.send(true);
        }
        keep
    });
    for (addr, member) in old_members {
        if !in_use.iter().any(|m| Arc::ptr_eq(m, &member)) {
            tracing::info!("backend {addr} left the map");
            member.stop();
        }
    }
    *shared.clusters.write() = listening
        .iter()
        .map(|(n, l)| (n.clone(), l.cell.clone()))
        .collect();
    Ok(())
}

/// Accepts client connections until told to stop.
async fn accept(
    listener: TcpListener,
    cell: Arc<ClusterCell>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    static NEXT_ID: AtomicUsize = AtomicUsize::new(0);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let (stream, _) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let stats = cell.load().stats.clone();
        let _ = stream.set_nodelay(true);
        if shared.connections.fetch_add(1, Ordering::Relaxed) >= shared.max_connections {
            shared.connections.fetch_sub(1, Ordering::Relaxed);
            bump(&stats.connections_refused);
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut stream = stream;
                let _ = stream
                    .write_all(b"SERVER_ERROR too many connections\r\n")
                    .await;
            });
            continue;
        }
        bump(&stats.connections_accepted);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let (cell, shared) = (cell.clone(), shared.clone());
        tokio::spawn(async move {
            conn::serve(stream, cell, shared.clone(), id).await;
            shared.connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}
