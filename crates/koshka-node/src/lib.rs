//! A koshka node as a library: what `koshka serve` runs, and what tests start in-process
//! (several nodes in one process, each on its own ephemeral ports and data directory).
//!
//! Start-up, in this order, so that an operator mistake costs nothing:
//! 1. check the configuration against the engine registry (unknown or repeated engines, bad
//!    ports, a zero memory limit are refused with one clear line);
//! 2. create and lock the data directory (a second node on it stops here, touching nothing);
//! 3. bind every listener (a port clash stops here, before any file is read);
//! 4. build each engine from its [`EngineSpec`] and open its persistence: newest snapshot plus
//!    replay of the log tail;
//! 5. serve until told to stop, then flush, snapshot (if configured) and close every log.
//!
//! # Layout
//! * [`registry`] — the engines this build knows: the one place an engine registers;
//! * `persist` — the binlog [`koshka_binlog::Host`] as the server's
//!   [`koshka_server::Persistence`];
//! * this file — [`start`] (in the background, for tests), [`start_with_clock`] (the same with
//!   an injected log clock), [`run`] (blocking, for the binary).
//!
//! This crate opens sockets and files but speaks no protocol: the server does that.

mod failover;
mod persist;
pub mod registry;
mod replication;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use koshka_engine::{Clock, EngineSetup, EngineSpec, ShardSpec};
use koshka_server::config::{Durability, KvMode};
use koshka_server::{EngineSlot, NoPersistence, Node, Persistence};
use tokio::sync::watch;

pub use koshka_server::config::{self, Config};
pub use koshka_server::stats;

/// Why a node could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The data directory cannot be used.
    #[error("data directory {path}: {reason}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The data directory is locked by another process, or cannot be locked (the message
    /// names the directory and the holder's PID).
    #[error("{0}")]
    Lock(koshka_binlog::Error),
    /// A listener could not be bound (the address is in the message).
    #[error("{0}")]
    Listen(std::io::Error),
    /// An engine could not be built.
    #[error("engine {engine}: {reason}")]
    Engine {
        /// The engine's name.
        engine: String,
        /// Why.
        reason: String,
    },
    /// An engine's log or snapshot could not be opened (the file and offset are named).
    #[error("{engine}: {source}")]
    Persistence {
        /// The engine's name.
        engine: String,
        /// What failed.
        source: koshka_binlog::Error,
    },
    /// The node's threads could not be started or failed.
    #[error("{0}")]
    Io(std::io::Error),
}

/// Result of node operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An engine this node will host, and where.
#[derive(Debug, Clone, Copy)]
pub struct Planned {
    /// Its registration.
    pub spec: EngineSpec,
    /// The address to listen on (port 0 = ephemeral).
    pub addr: SocketAddr,
}

/// Checks `config` against `registry` and decides each engine's address: the engine's own
/// `[engine.<name>] port`, else, when `server.listen` has port 0, an ephemeral port, else
/// `server.listen` itself for `kv` and the engine's stable default port for the others.
///
/// # Errors
/// [`Error::Config`] naming the bad setting.
pub fn plan(config: &Config, registry: &[EngineSpec]) -> Result<Vec<Planned>> {
    let listen = config
        .validate()
        .map_err(|e| Error::Config(e.to_string()))?;
    if config.storage.memory_limit.0 == 0 {
        return Err(Error::Config(
            "storage.memory_limit must be positive".into(),
        ));
    }
    for name in config.engine.keys() {
        if !config.engines.enabled.contains(name) && !registry.iter().any(|s| s.name == name) {
            return Err(Error::Config(format!(
                "[engine.{name}] names an engine this build does not have (known: {})",
                known(registry)
            )));
        }
    }
    let mut planned: Vec<Planned> = Vec::new();
    for name in &config.engines.enabled {
        let Some(spec) = registry.iter().find(|s| s.name == name) else {
            return Err(Error::Config(format!(
                "unknown engine {name:?} in engines.enabled (known: {})",
                known(registry)
            )));
        };
        if planned.iter().any(|p| p.spec.name == name) {
            return Err(Error::Config(format!(
                "engine {name:?} is listed twice in engines.enabled: one engine, one log"
            )));
        }
        let configured = config
            .engine_port(name)
            .map_err(|e| Error::Config(e.to_string()))?;
        let port = match configured {
            Some(port) => port,
            None if listen.port() == 0 => 0,
            None if spec.name == "kv" => listen.port(),
            None => spec.default_port,
        };
        let addr = SocketAddr::new(listen.ip(), port);
        if port != 0 {
            if let Some(other) = planned.iter().find(|p| p.addr == addr) {
                return Err(Error::Config(format!(
                    "engines {} and {name} would both listen on {addr}",
                    other.spec.name
                )));
            }
        }
        planned.push(Planned { spec: *spec, addr });
    }
    Ok(planned)
}

/// File descriptors a node keeps for itself besides client connections: listeners, binlog
/// segments and snapshots being written or read, the lock file, stdio, and slack for a
/// snapshot and a rotation happening at once, per engine.
pub const FDS_RESERVED_PER_ENGINE: u64 = 16;

/// File descriptors a node keeps for itself whatever the engines.
pub const FDS_RESERVED_BASE: u64 = 32;

/// Raises the soft `RLIMIT_NOFILE` as far as `max_connections` needs and the hard limit
/// allows. Returns the connection limit the node can honour: `max_connections`, or fewer
/// (with a warning) when the descriptors are not there, so clients past it get
/// memcached's `ERROR Too many open connections` instead of hanging in an accept queue.
fn fit_connections_to_file_limit(max_connections: usize, engines: usize) -> usize {
    let reserved = FDS_RESERVED_BASE + FDS_RESERVED_PER_ENGINE * engines as u64;
    let wanted = max_connections as u64 + reserved;
    let (soft, hard) = match rlimit::Resource::NOFILE.get() {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!("cannot read the file descriptor limit: {e}");
            return max_connections;
        }
    };
    let mut soft = soft;
    if soft < wanted {
        let target = wanted.min(hard);
        match rlimit::Resource::NOFILE.set(target, hard) {
            Ok(()) => soft = target,
            Err(e) => tracing::warn!("cannot raise the file descriptor limit to {target}: {e}"),
        }
    }
    if soft >= wanted {
        return max_connections;
    }
    let fitted = usize::try_from(soft.saturating_sub(reserved).max(1)).unwrap_or(1);
    tracing::warn!(
        "max_connections lowered from {max_connections} to {fitted}: the file descriptor limit \
         is {soft} (hard {hard}) and the node keeps {reserved} for itself; raise it with \
         `ulimit -n` or LimitNOFILE="
    );
    fitted
}

fn known(registry: &[EngineSpec]) -> String {
    registry
        .iter()
        .map(|s| s.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Creates the data directory (refusing a path that is not a directory).
fn prepare_data_dir(dir: &Path) -> Result<()> {
    let fail = |reason: String| Error::DataDir {
        path: dir.to_path_buf(),
        reason,
    };
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => Err(fail("exists and is not a directory".into())),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create it: {e}")))
        }
        Err(e) => Err(fail(e.to_string())),
    }
}

/// A node ready to serve: locked, bound, recovered.
struct Prepared {
    node: Arc<Node>,
    listeners: Vec<std::net::TcpListener>,
    /// The replication listener and the engines it ships.
    replication: Option<(std::net::TcpListener, replication::Shipped)>,
    /// The etcd failover loop, with the role decided at start-up.
    failover: Option<(failover::Coordinator, failover::Role)>,
    _lock: koshka_binlog::DirLock,
}

fn prepare(
    mut config: Config,
    registry: &[EngineSpec],
    clock: Option<&Arc<dyn Clock>>,
) -> Result<Prepared> {
    let planned = plan(&config, registry)?;
    config.server.max_connections =
        fit_connections_to_file_limit(config.server.max_connections, planned.len());
    let data_dir = config.storage.data_dir.clone();
    prepare_data_dir(&data_dir)?;
    let lock = koshka_binlog::DirLock::acquire(&data_dir).map_err(Error::Lock)?;
    let listeners = planned
        .iter()
        .map(|p| koshka_server::bind(p.addr))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(Error::Listen)?;
    let replication_listener = if config.replication.listen.is_empty() {
        None
    } else {
        let addr: SocketAddr = config
            .replication
            .listen
            .parse()
            .map_err(|e| Error::Config(format!("replication.listen: {e}")))?;
        Some(std::net::TcpListener::bind(addr).map_err(|e| {
            Error::Listen(std::io::Error::new(
                e.kind(),
                format!("replication listener {addr}: {e}"),
            ))
        })?)
    };
    let failover = match &replication_listener {
        Some(listener) if !config.replication.etcd.is_empty() => {
            let bound = listener.local_addr().map_err(Error::Io)?;
            let me = if config.replication.advertise.is_empty() {
                bound.to_string()
            } else {
                config.replication.advertise.clone()
            };
            let engines = planned
                .iter()
                .zip(&listeners)
                .map(|(p, l)| Ok((p.spec.name.to_string(), l.local_addr()?)))
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(Error::Io)?;
            let names: Vec<String> = engines.iter().map(|(n, _)| n.clone()).collect();
            let settings = failover::Settings {
                etcd: config.replication.etcd.clone(),
                prefix: format!(
                    "/koshka/{}/shard/{}",
                    config.replication.cluster, config.engines.shard_index
                ),
                ttl: std::time::Duration::from_millis(config.replication.lease_ttl_ms),
                me,
                engines,
            };
            let position = failover::position_on_disk(&config.storage.data_dir, &names);
            let (coordinator, role) =
                failover::Coordinator::start(settings, position).map_err(Error::Config)?;
            config.replication.primary = match &role {
                failover::Role::Primary => String::new(),
                failover::Role::Replica(addr) => addr.clone(),
            };
            tracing::info!("failover: starting as {role:?}");
            Some((coordinator, role))
        }
        _ => None,
    };
    let mut slots = Vec::new();
    let mut shipped = Vec::new();
    for (planned, listener) in planned.iter().zip(&listeners) {
        let listen = listener.local_addr().map_err(Error::Io)?;
        let (slot, host) = open_engine(&config, planned.spec, listen, clock)?;
        if let Some(host) = host {
            shipped.push((slot.name.clone(), host));
        }
        slots.push(Arc::new(slot));
    }
    Ok(Prepared {
        node: Arc::new(Node::new(config, slots)),
        listeners,
        replication: replication_listener.map(|l| (l, shipped)),
        failover,
        _lock: lock,
    })
}

/// Builds one engine and opens (recovers) its persistence; `clock`, when given, replaces the
/// system clock as the source of log time.
fn open_engine(
    config: &Config,
    spec: EngineSpec,
    listen: SocketAddr,
    clock: Option<&Arc<dyn Clock>>,
) -> Result<(EngineSlot, Option<Arc<persist::HostPersistence>>)> {
    let setup = EngineSetup {
        shard: ShardSpec {
            index: config.engines.shard_index,
            count: config.engines.shard_count,
        },
        memory_limit: config.storage.memory_limit.0,
        value_size_max: usize::try_from(config.server.value_size_max.0).unwrap_or(usize::MAX),
        cache: config.storage.kv_mode == KvMode::Cache,
        settings: config.engine_settings(spec.name),
    };
    let built = (spec.build)(&setup).map_err(|e| Error::Engine {
        engine: spec.name.into(),
        reason: e.to_string(),
    })?;
    let durability = match (config.storage.durability, built.logged) {
        (_, false) | (Durability::None, _) => koshka_binlog::Durability::None,
        (Durability::Always, true) => koshka_binlog::Durability::Always,
        (Durability::Everysec, true) => koshka_binlog::Durability::EverySec,
    };
    let mut host = None;
    let persistence: Arc<dyn Persistence> = match (durability, clock) {
        (koshka_binlog::Durability::None, None) => Arc::new(NoPersistence::default()),
        (koshka_binlog::Durability::None, Some(clock)) => {
            Arc::new(NoPersistence::with_clock(clock.clone()))
        }
        _ => {
            let opened = persist::open(spec.name, &built.engine, config, durability, clock)?;
            host = Some(Arc::clone(&opened));
            opened
        }
    };
    let slot = EngineSlot {
        name: spec.name.into(),
        listen,
        engine: built.engine,
        persistence,
        key_len_max: spec.key_len_max,
    };
    Ok((slot, host))
}

/// Serves a prepared node until `shutdown`, then closes every log.
fn serve(prepared: Prepared, shutdown: watch::Receiver<bool>) -> Result<()> {
    let Prepared {
        node,
        listeners,
        replication,
        failover,
        _lock,
    } = prepared;
    let failover_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failover_thread = match (failover, &replication) {
        (Some((coordinator, role)), Some((_, shipped))) => Some(
            coordinator
                .spawn(role, shipped.clone(), Arc::clone(&failover_stop))
                .map_err(Error::Io)?,
        ),
        _ => None,
    };
    let shipping = match replication {
        Some((listener, shipped)) => {
            println!(
                "koshka: replication listening on {}",
                listener.local_addr().map_err(Error::Io)?
            );
            Some(replication::spawn(listener, shipped).map_err(Error::Io)?)
        }
        None => None,
    };
    let served = koshka_server::serve(node.clone(), listeners, shutdown).map_err(Error::Io);
    failover_stop.store(true, std::sync::atomic::Ordering::Release);
    if let Some(t) = failover_thread {
        let _ = t.join();
    }
    drop(shipping);
    let mut closed = Ok(());
    for slot in &node.slots {
        if let Err(e) = slot.persistence.shutdown() {
            tracing::error!("{}: shutdown: {e}", slot.name);
            closed = Err(Error::Io(std::io::Error::other(format!(
                "{}: {e}",
                slot.name
            ))));
        }
    }
    // The lock is released only after every log is closed.
    drop(_lock);
    served.and(closed)
}

/// Runs a node in the calling thread until `shutdown` becomes true.
///
/// # Errors
/// Anything that stops start-up (see the crate docs), or a failed shutdown.
pub fn run(config: Config, registry: &[EngineSpec], shutdown: watch::Receiver<bool>) -> Result<()> {
    serve(prepare(config, registry, None)?, shutdown)
}

/// A node running on its own threads; stops (cleanly) when dropped.
pub struct Running {
    addrs: BTreeMap<String, SocketAddr>,
    replication: Option<SocketAddr>,
    stop: watch::Sender<bool>,
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
    /// The address `engine` listens on.
    #[must_use]
    pub fn addr(&self, engine: &str) -> Option<SocketAddr> {
        self.addrs.get(engine).copied()
    }

    /// The replication listener's address, if the node has one.
    #[must_use]
    pub fn replication_addr(&self) -> Option<SocketAddr> {
        self.replication
    }

    /// Every engine's address.
    #[must_use]
    pub fn addrs(&self) -> &BTreeMap<String, SocketAddr> {
        &self.addrs
    }

    /// Stops the node and waits for its logs to close.
    ///
    /// # Errors
    /// What the node's shutdown reported.
    pub fn stop(mut self) -> Result<()> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> Result<()> {
        let _ = self.stop.send(true);
        match self.thread.take().map(JoinHandle::join) {
            None => Ok(()),
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(Error::Io(std::io::Error::other("node thread panicked"))),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Err(e) = self.shut_down() {
            tracing::error!("node shutdown: {e}");
        }
    }
}

/// Starts a node in the background: returns once it is locked, bound and recovered, with the
/// real addresses of its engines (so `server.listen` may use port 0).
///
/// # Errors
/// Anything that stops start-up (see the crate docs).
pub fn start(config: Config, registry: &[EngineSpec]) -> Result<Running> {
    start_prepared(prepare(config, registry, None)?)
}

/// [`start`] with every engine's log time taken from `clock` instead of the system clock: the
/// dates records carry (a message's `date`, a friend's date added) and what expiry compares
/// against. Tests that compare several nodes share one [`koshka_engine::ManualClock`], so the
/// same workload gives the same dates everywhere.
///
/// # Errors
/// As [`start`].
pub fn start_with_clock(
    config: Config,
    registry: &[EngineSpec],
    clock: Arc<dyn Clock>,
) -> Result<Running> {
    start_prepared(prepare(config, registry, Some(&clock))?)
}

fn start_prepared(prepared: Prepared) -> Result<Running> {
    let addrs = prepared
        .node
        .slots
        .iter()
        .zip(&prepared.listeners)
        .map(|(slot, listener)| Ok((slot.name.clone(), listener.local_addr()?)))
        .collect::<std::io::Result<BTreeMap<_, _>>>()
        .map_err(Error::Io)?;
    let replication = match &prepared.replication {
        Some((l, _)) => Some(l.local_addr().map_err(Error::Io)?),
        None => None,
    };
    let (stop, shutdown) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("koshka-node".into())
        .spawn(move || serve(prepared, shutdown))
        .map_err(Error::Io)?;
    Ok(Running {
        addrs,
        replication,
        stop,
        thread: Some(thread),
    })
}
