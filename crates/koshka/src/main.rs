//! `koshka`: the one binary. `serve` runs a node; `bench` drives load; `binlog` inspects logs.
//!
//! # Layout
//! * `main.rs` — flags, config loading, logging, signal handling, then the library's `run`;
//! * `engines.rs` — the engine registry.

mod engines;
mod persist;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use koshka_server::config::{Config, Durability, KvMode, Size};
use koshka_server::{EngineSlot, Node, Persistence};

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
    /// Drive memcached-protocol load at a server and report throughput and latency.
    Bench(koshka_bench::BenchArgs),
    /// Inspect binlogs and snapshots.
    Binlog {
        #[command(subcommand)]
        command: BinlogCommand,
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
    /// kv address; the other engines listen on the following ports (port 0: all ephemeral).
    #[arg(long)]
    listen: Option<String>,
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
    /// Print the effective configuration and exit.
    #[arg(long)]
    print_config: bool,
    /// Print every statistic name with its description and exit.
    #[arg(long)]
    list_stats: bool,
}

fn main() -> anyhow::Result<()> {
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
        Command::Bench(args) => koshka_bench::run_and_print(args),
        Command::Binlog { command } => binlog(command),
    }
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
    Ok(config)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if args.list_stats {
        for (name, description) in koshka_server::stats::Counters::DESCRIPTIONS {
            println!("{name}\t{description}");
        }
        return Ok(());
    }
    let config = effective_config(&args)?;
    let listen = config.validate()?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    let enabled: Vec<String> = config
        .engines
        .enabled
        .iter()
        .filter(|name| {
            let known = engines::KNOWN.contains(&name.as_str());
            if !known {
                tracing::warn!("engine {name} is not available in this build; skipped");
            }
            known
        })
        .cloned()
        .collect();
    std::fs::create_dir_all(&config.storage.data_dir)
        .with_context(|| format!("creating {}", config.storage.data_dir.display()))?;
    let mut slots = Vec::new();
    for (offset, name) in enabled.iter().enumerate() {
        let (hosted, key_len_max) = engines::build(name, &config)?;
        let port = if listen.port() == 0 {
            0
        } else {
            listen.port() + u16::try_from(offset)?
        };
        let persistence = open_persistence(name, &hosted, &config)?;
        slots.push(Arc::new(EngineSlot {
            name: name.clone(),
            listen: SocketAddr::new(listen.ip(), port),
            hosted,
            persistence,
            key_len_max,
        }));
    }
    let node = Arc::new(Node::new(config, slots));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signals = std::thread::Builder::new()
        .name("koshka-signals".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                tracing::info!("shutting down");
                let _ = stop_tx.send(true);
                anyhow::Ok(())
            })
        })?;
    let _ = signals;
    koshka_server::run(node.clone(), stop_rx)?;
    for slot in &node.slots {
        if let Err(e) = slot.persistence.shutdown() {
            tracing::error!("{}: shutdown: {e}", slot.name);
        }
    }
    Ok(())
}

/// Opens (recovers) the binlog host of one engine: newest snapshot + replay of the log tail.
fn open_persistence(
    name: &str,
    hosted: &koshka_server::Hosted,
    config: &Config,
) -> anyhow::Result<Arc<dyn Persistence>> {
    let engine: Arc<dyn koshka_engine::Engine> = match hosted {
        koshka_server::Hosted::Kv(kv) => kv.clone(),
        koshka_server::Hosted::Compiled(engine) => engine.clone(),
    };
    let cache = name == "kv" && config.storage.kv_mode == KvMode::Cache;
    let durability = match (config.storage.durability, cache) {
        (_, true) | (Durability::None, _) => koshka_binlog::Durability::None,
        (Durability::Always, _) => koshka_binlog::Durability::Always,
        (Durability::Everysec, _) => koshka_binlog::Durability::EverySec,
    };
    let dir = config.storage.data_dir.join(name);
    let mut persist = koshka_binlog::PersistConfig::new(&dir, name, &config.limits());
    persist.shard = koshka_engine::ShardSpec {
        index: config.engines.shard_index,
        count: config.engines.shard_count,
    };
    persist.durability = durability;
    persist.snapshot_on_shutdown = config.storage.snapshot_on_shutdown;
    persist.repair = config.storage.repair;
    let started = std::time::Instant::now();
    let host = koshka_binlog::Host::open(engine, persist)
        .with_context(|| format!("opening the {name} binlog in {}", dir.display()))?;
    tracing::info!(
        "{name}: ready in {:.2}s ({durability:?})",
        started.elapsed().as_secs_f64()
    );
    Ok(Arc::new(persist::HostPersistence(host)))
}
