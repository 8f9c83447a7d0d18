//! `koshka`: the one binary. `serve` runs a node; `bench` drives load; `binlog` inspects logs.
//!
//! This file parses flags, loads the configuration, sets up logging and signals, then calls
//! the libraries: [`koshka_node::run`] for `serve` (the engine registry is
//! [`koshka_node::registry`]).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use koshka_node::config::{Config, Durability, KvMode, Size};

/// koshka: VK-style in-memory engines behind the memcached protocol.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node: every configured engine on its own loopback port.
    Serve(ServeArgs),
    /// Run the proxy: route keys over shards, split multi-gets, write cross-shard twins.
    Proxy(ProxyArgs),
    /// A local cluster for users and tests.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Drive memcached-protocol load at a server and report throughput and latency.
    Bench(koshka_bench::BenchArgs),
    /// Replication: who is primary, lag per replica; promote a replica.
    Replication {
        #[command(subcommand)]
        command: ReplicationCommand,
    },
    /// Inspect binlogs and snapshots.
    Binlog {
        #[command(subcommand)]
        command: BinlogCommand,
    },
    /// Media storage: append-only volumes served at secret URLs (see docs/media.md).
    Media {
        #[command(subcommand)]
        command: MediaCommand,
    },
}

#[derive(Debug, Subcommand)]
enum MediaCommand {
    /// Serve volumes over HTTP (uploads, downloads) and a memcached key port.
    Serve(MediaServeArgs),
}

#[derive(Debug, Args)]
struct MediaServeArgs {
    /// Data directory (give it twice: every volume is written to both).
    #[arg(long = "data-dir", required = true)]
    data_dirs: Vec<PathBuf>,
    /// HTTP address (port 0: ephemeral).
    #[arg(long, default_value = koshka_media::HTTP_DEFAULT)]
    http: String,
    /// memcached-protocol key port address.
    #[arg(long, default_value = koshka_media::KEYS_DEFAULT)]
    keys: String,
    /// always | everysec | none.
    #[arg(long, default_value = "everysec")]
    durability: koshka_media::store::Durability,
    /// Volume size limit in bytes; a full volume becomes read-only.
    #[arg(long, default_value_t = koshka_media::limits::VOLUME_SIZE_DEFAULT)]
    volume_size: u64,
    /// Concurrent ffmpeg jobs (0 = one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Wall-clock limit of one ffmpeg run, in seconds.
    #[arg(long, default_value_t = koshka_media::limits::JOB_TIMEOUT_DEFAULT.as_secs())]
    job_timeout: u64,
    /// ffmpeg binary.
    #[arg(long, default_value = "ffmpeg")]
    ffmpeg: PathBuf,
    /// ffprobe binary.
    #[arg(long, default_value = "ffprobe")]
    ffprobe: PathBuf,
    /// Runtime worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn media(command: MediaCommand) -> anyhow::Result<()> {
    let MediaCommand::Serve(args) = command;
    let mut config = koshka_media::Config::new(args.data_dirs);
    config.http = args.http;
    config.keys = args.keys;
    config.store.durability = args.durability;
    config.store.volume_size = args.volume_size;
    if args.workers > 0 {
        config.process.workers = args.workers;
    }
    config.process.timeout = std::time::Duration::from_secs(args.job_timeout);
    config.process.ffmpeg = args.ffmpeg;
    config.process.ffprobe = args.ffprobe;
    config.threads = args.threads;
    koshka_media::run(config)
}

#[derive(Debug, Subcommand)]
enum ReplicationCommand {
    /// Print every engine's replication statistics (`stats`, `repl_*` lines) of the nodes at
    /// ADDR… (memcached ports of any engine; every engine of each node is asked).
    Status {
        /// host:port of an engine's memcached port, repeatable.
        #[arg(required = true)]
        addrs: Vec<String>,
    },
    /// Promote the replica engine listening at ADDR (memcached port) to primary.
    Promote {
        /// host:port of the replica engine's memcached port, repeatable.
        #[arg(required = true)]
        addrs: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum BinlogCommand {
    /// Check every segment and snapshot in DIR (an engine's data directory); exit 1 on damage.
    Verify {
        /// Engine data directory, e.g. koshka-data/kv.
        dir: PathBuf,
    },
    /// Summarise segments, positions, record counts and snapshots in DIR.
    Stat {
        /// Engine data directory.
        dir: PathBuf,
    },
    /// Print every record from a position on, one line each.
    Dump {
        /// Engine data directory.
        dir: PathBuf,
        /// First position to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// kv address; its host is every engine's host (port 0: every engine on an ephemeral port).
    /// The other engines listen on their own stable default ports.
    #[arg(long)]
    listen: Option<String>,
    /// One engine's port, as ENGINE=PORT (repeatable), e.g. --port messages=12012.
    #[arg(long = "port", value_name = "ENGINE=PORT")]
    ports: Vec<String>,
    /// Data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Worker threads (0 = one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// kv memory limit, e.g. 4GiB.
    #[arg(long)]
    memory_limit: Option<Size>,
    /// Most simultaneous connections.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Reply bytes all non-reading clients together may hold before the biggest is closed.
    #[arg(long)]
    output_budget: Option<Size>,
    /// always | everysec | none.
    #[arg(long)]
    durability: Option<Durability>,
    /// Run kv as an LRU cache (no binlog, evicts at the memory limit).
    #[arg(long)]
    cache: bool,
    /// Largest value, e.g. 1MiB.
    #[arg(long)]
    value_size_max: Option<Size>,
    /// Comma-separated engines to host (default: kv,messages,wall,friends).
    #[arg(long, value_delimiter = ',')]
    engines: Option<Vec<String>>,
    /// Truncate the binlog at the first corrupt record instead of refusing to start.
    #[arg(long)]
    repair: bool,
    /// Address replicas connect to for log shipping (replication.listen), e.g. 127.0.0.1:11300.
    #[arg(long)]
    replication_listen: Option<String>,
    /// Run as a read-only replica of the primary whose replication address this is
    /// (replication.primary).
    #[arg(long)]
    replica_of: Option<String>,
    /// Semi-synchronous acknowledgement: replicas that must have written a write before it
    /// is acknowledged (replication.semisync_replicas; 0 = asynchronous).
    #[arg(long)]
    semisync_replicas: Option<usize>,
    /// etcd endpoint coordinating failover (replication.etcd), e.g. http://127.0.0.1:2379.
    #[arg(long)]
    etcd: Option<String>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    print_config: bool,
    /// Print every statistic name with its description and exit.
    #[arg(long)]
    list_stats: bool,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Start N nodes, a memcached cache pool and the proxy on loopback; print the ports; stop
    /// them all on Ctrl-C or SIGTERM.
    Up(ClusterUpArgs),
}

#[derive(Debug, Args)]
struct ClusterUpArgs {
    /// Number of shards (one node each).
    #[arg(long, default_value_t = 8)]
    shards: u32,
    /// memcached servers for the cache tier (0 = none; needs the `memcached` binary).
    #[arg(long, default_value_t = 2)]
    cache_servers: u32,
    /// Data directory (one sub-directory per node); default: a temporary directory removed on
    /// exit.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The proxy's first port (kv, then messages, wall, friends, news, lists, search: 11211 to
    /// 11217 by default); 0 = ephemeral ports.
    #[arg(long, default_value_t = 11211)]
    base_port: u16,
}

#[derive(Debug, Args)]
struct ProxyArgs {
    /// TOML cluster map (see config/proxy.toml); re-read on SIGHUP.
    #[arg(long)]
    config: PathBuf,
    /// Worker threads (0 = one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Retrieval deadline in milliseconds (missing shards contribute nothing).
    #[arg(long)]
    get_timeout_ms: Option<u64>,
    /// Write deadline in milliseconds.
    #[arg(long)]
    set_timeout_ms: Option<u64>,
    /// Persistent connections per backend.
    #[arg(long)]
    connections_per_backend: Option<usize>,
    /// The durable twin queue file.
    #[arg(long)]
    twin_queue: Option<PathBuf>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    print_config: bool,
    /// Print every statistic name with its description and exit.
    #[arg(long)]
    list_stats: bool,
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Operator errors are one line (with their causes), never a backtrace.
            eprintln!("koshka: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Proxy(args) => proxy(args),
        Command::Cluster {
            command: ClusterCommand::Up(args),
        } => cluster_up(&args),
        Command::Bench(args) => koshka_bench::run_and_print(args),
        Command::Binlog { command } => binlog(command),
        Command::Replication { command } => replication(command),
        Command::Media { command } => media(command),
    }
}

/// `stats [group]` of the engine at `addr`, through the project's client.
fn admin_stats(addr: &str, group: Option<&str>) -> anyhow::Result<Vec<(String, String)>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut client = koshka_client::Client::connect(addr)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to {addr}: {e}"))?;
        client
            .stats(group)
            .await
            .map_err(|e| anyhow::anyhow!("{addr}: {e}"))
    })
}

fn replication(command: ReplicationCommand) -> anyhow::Result<()> {
    match command {
        ReplicationCommand::Status { addrs } => {
            for addr in addrs {
                println!("{addr}");
                for (name, value) in admin_stats(&addr, None)? {
                    if name.starts_with("repl_") || name == "binlog_position" {
                        println!("  {name} {value}");
                    }
                }
            }
        }
        ReplicationCommand::Promote { addrs } => {
            for addr in addrs {
                for (_, status) in admin_stats(&addr, Some("promote"))? {
                    println!("{addr}: {status}");
                    if status.starts_with("refused") {
                        anyhow::bail!("{addr}: {status}");
                    }
                }
            }
        }
    }
    Ok(())
}

fn binlog(command: BinlogCommand) -> anyhow::Result<()> {
    match command {
        BinlogCommand::Verify { dir } => {
            let report = koshka_binlog::verify(&dir)?;
            print!("{report}");
            if !report.is_ok() {
                anyhow::bail!("{} is damaged", dir.display());
            }
        }
        BinlogCommand::Stat { dir } => print!("{}", koshka_binlog::stat(&dir)?),
        BinlogCommand::Dump { dir, from } => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            koshka_binlog::dump(&dir, from, &mut out)?;
        }
    }
    Ok(())
}

fn effective_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(listen) = &args.listen {
        config.server.listen.clone_from(listen);
    }
    if let Some(dir) = &args.data_dir {
        config.storage.data_dir.clone_from(dir);
    }
    if let Some(threads) = args.threads {
        config.server.threads = threads;
    }
    if let Some(limit) = args.memory_limit {
        config.storage.memory_limit = limit;
    }
    if let Some(max) = args.max_connections {
        config.server.max_connections = max;
    }
    if let Some(budget) = args.output_budget {
        config.server.output_budget = budget;
    }
    if let Some(durability) = args.durability {
        config.storage.durability = durability;
    }
    if args.cache {
        config.storage.kv_mode = KvMode::Cache;
    }
    if let Some(size) = args.value_size_max {
        config.server.value_size_max = size;
    }
    if let Some(engines) = &args.engines {
        config.engines.enabled.clone_from(engines);
    }
    if args.repair {
        config.storage.repair = true;
    }
    if let Some(listen) = &args.replication_listen {
        config.replication.listen.clone_from(listen);
    }
    if let Some(primary) = &args.replica_of {
        config.replication.primary.clone_from(primary);
    }
    if let Some(etcd) = &args.etcd {
        config.replication.etcd.clone_from(etcd);
    }
    if let Some(k) = args.semisync_replicas {
        config.replication.semisync_replicas = k;
    }
    for assignment in &args.ports {
        let Some((engine, port)) = assignment.split_once('=') else {
            anyhow::bail!("--port takes ENGINE=PORT, not {assignment:?}");
        };
        let port: u16 = port
            .parse()
            .map_err(|_| anyhow::anyhow!("--port {assignment}: {port:?} is not a port number"))?;
        config
            .engine
            .entry(engine.to_string())
            .or_default()
            .insert("port".into(), i64::from(port).into());
    }
    Ok(config)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if args.list_stats {
        for (name, description) in koshka_node::stats::Counters::DESCRIPTIONS {
            println!("{name}\t{description}");
        }
        return Ok(());
    }
    let config = effective_config(&args)?;
    let registry = koshka_node::registry::builtin();
    koshka_node::plan(&config, &registry)?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    std::thread::Builder::new()
        .name("koshka-signals".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let mut term = signal(SignalKind::terminate())?;
                let mut hangup = signal(SignalKind::hangup())?;
                loop {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => break,
                        _ = term.recv() => break,
                        // Nothing to re-open: logs go to stderr. SIGHUP must not kill a node
                        // a terminal or supervisor hangs up on.
                        _ = hangup.recv() => tracing::info!("SIGHUP ignored (logs go to stderr)"),
                    }
                }
                tracing::info!("shutting down");
                let _ = stop_tx.send(true);
                anyhow::Ok(())
            })
        })?;
    koshka_node::run(config, &registry, stop_rx)?;
    Ok(())
}

fn proxy_config(args: &ProxyArgs) -> anyhow::Result<koshka_proxy::Config> {
    let mut config = koshka_proxy::Config::from_file(&args.config)?;
    if let Some(threads) = args.threads {
        config.proxy.threads = threads;
    }
    if let Some(ms) = args.get_timeout_ms {
        config.proxy.get_timeout_ms = ms;
    }
    if let Some(ms) = args.set_timeout_ms {
        config.proxy.set_timeout_ms = ms;
    }
    if let Some(n) = args.connections_per_backend {
        config.proxy.connections_per_backend = n;
    }
    if let Some(queue) = &args.twin_queue {
        config.twin.queue = Some(queue.clone());
    }
    config.validate()?;
    Ok(config)
}

fn proxy(args: ProxyArgs) -> anyhow::Result<()> {
    if args.list_stats {
        for (name, description) in koshka_proxy::stats::ClusterStats::DESCRIPTIONS {
            println!("{name}\t{description}");
        }
        return Ok(());
    }
    let config = proxy_config(&args)?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    let (control, rx) = tokio::sync::mpsc::unbounded_channel();
    let _ = koshka_proxy::etcd::spawn(&config, control.clone());
    std::thread::Builder::new()
        .name("koshka-signals".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let mut term = signal(SignalKind::terminate())?;
                let mut hangup = signal(SignalKind::hangup())?;
                loop {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => break,
                        _ = term.recv() => break,
                        _ = hangup.recv() => match proxy_config(&args) {
                            Ok(config) => {
                                let (tx, rx) = std::sync::mpsc::channel();
                                let _ = control.send(koshka_proxy::Control::Reload(Box::new(config), tx));
                                let answer = tokio::task::spawn_blocking(move || rx.recv()).await;
                                if let Ok(Ok(Err(e))) = answer {
                                    tracing::error!("SIGHUP: reload refused: {e}");
                                }
                            }
                            Err(e) => tracing::error!("SIGHUP: {e:#}; the old map stays"),
                        },
                    }
                }
                tracing::info!("shutting down");
                let _ = control.send(koshka_proxy::Control::Stop);
                anyhow::Ok(())
            })
        })?;
    koshka_proxy::run(config, rx)?;
    Ok(())
}

/// A memcached child process, killed by PID when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn cluster_up(args: &ClusterUpArgs) -> anyhow::Result<()> {
    use koshka_proxy::config::{ClusterConfig, Family, ShardConfig};
    anyhow::ensure!(args.shards >= 1, "--shards must be at least 1");
    let temp;
    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => {
            temp = std::env::temp_dir().join(format!("koshka-cluster-{}", std::process::id()));
            temp.clone()
        }
    };
    let registry = koshka_node::registry::builtin();
    // In port order: 11211 kv … 11217 search, as a single node's defaults.
    let families = [
        Family::Kv,
        Family::Messages,
        Family::Wall,
        Family::Friends,
        Family::News,
        Family::Lists,
        Family::Search,
    ];
    let mut nodes = Vec::new();
    for index in 0..args.shards {
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".into();
        config.server.threads = 1;
        config.storage.data_dir = data_dir.join(format!("node{index}"));
        config.storage.memory_limit = Size(256 * 1024 * 1024);
        config.engines.shard_index = index;
        config.engines.shard_count = args.shards;
        config.engines.enabled = families.iter().map(|f| f.name().to_string()).collect();
        nodes.push(koshka_node::start(config, &registry)?);
    }
    let mut caches = Vec::new();
    let mut cache_addrs = Vec::new();
    for _ in 0..args.cache_servers {
        let port = free_port()?;
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
            "-u",
            "root",
        ]);
        match command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            Ok(child) => {
                caches.push(Child(child));
                cache_addrs.push(format!("127.0.0.1:{port}"));
            }
            Err(e) => {
                eprintln!("koshka: no cache tier (cannot start memcached: {e})");
                break;
            }
        }
    }
    let mut config = koshka_proxy::Config::default();
    config.twin.queue = Some(data_dir.join("proxy.twin"));
    config.cache.servers.clone_from(&cache_addrs);
    for (i, family) in families.iter().enumerate() {
        let port = if args.base_port == 0 {
            0
        } else {
            args.base_port + u16::try_from(i)?
        };
        config.clusters.push(ClusterConfig {
            name: family.name().to_string(),
            engine: *family,
            listen: format!("127.0.0.1:{port}"),
            mode: None,
            step: 1,
            read_from: koshka_proxy::config::ReadFrom::PrimaryFirst,
            cache: match family {
                Family::Wall if !cache_addrs.is_empty() => vec!["status".into(), "statuses".into()],
                _ => Vec::new(),
            },
            shards: nodes
                .iter()
                .map(|n| {
                    n.addr(family.name())
                        .map(|a| ShardConfig::Addr(a.to_string()))
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| anyhow::anyhow!("a node did not start every engine"))?,
        });
    }
    std::fs::create_dir_all(&data_dir)?;
    std::fs::write(data_dir.join("proxy.toml"), config.to_toml())?;
    let proxy = koshka_proxy::start(config)?;
    for (i, node) in nodes.iter().enumerate() {
        let ports: Vec<String> = node
            .addrs()
            .iter()
            .map(|(e, a)| format!("{e}={}", a.port()))
            .collect();
        println!("node {i}: {}", ports.join(" "));
    }
    for addr in &cache_addrs {
        println!("cache: {addr}");
    }
    for family in families {
        if let Some(addr) = proxy.addr(family.name()) {
            println!("proxy {}: {addr}", family.name());
        }
    }
    println!("map: {}", data_dir.join("proxy.toml").display());
    println!("ready; Ctrl-C stops everything");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    })?;
    eprintln!("koshka: stopping the cluster");
    drop(proxy);
    drop(caches);
    for node in nodes {
        node.stop()?;
    }
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    Ok(())
}
