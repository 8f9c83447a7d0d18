//! `koshka bench`: a closed-loop load generator for memcached-protocol servers (koshka and
//! the real memcached), with HDR latency percentiles and a record of the machine and commit.
//!
//! Each of `--connections` connections sends a batch of `--pipeline` requests in one write,
//! reads every reply, and repeats (closed loop). A request's latency is the time from its
//! batch's write to the read that completed its reply. Requests are built from prebuilt
//! templates and replies are parsed in place by koshka-proto (the codec the server and
//! koshka-client use), so the hot path does not allocate.
//!
//! # Layout
//!
//! * [`BenchArgs`] — the CLI (`clap::Args`, embedded by the `koshka` binary as `koshka bench`).
//! * [`run`] — connect, optionally preload, warm up, measure, return a [`Report`].
//! * `keys` — key distributions (uniform, zipf) and fixed-size key formatting.
//! * `kv` — the `kv` workload over the memcached text protocol.
//! * `report` — the [`Report`], printed human-readable or as JSON.
//!
//! # Extension points
//!
//! [`Workload`] and [`Protocol`] name the workload and the wire protocol: `kv` over
//! memcached, and the social workloads `messages` and `friends`, either over koshka's
//! compiled keys (`--protocol memcache`) or modelled the idiomatic Redis 7 way
//! (`--protocol redis`, RESP). The social workloads share `social` (multi-step logical
//! operations, closed loop, preload, per-operation histograms); `messages` and `friends`
//! hold the data generators and the operations on both protocols (tables in their module
//! docs); `wire` encodes requests and frames replies (memcached through koshka-proto, RESP
//! itself); `text` loads the fortunes.
//!
//! # What it is not
//!
//! Not an open-loop (fixed-rate) generator and not a correctness checker: replies are framed
//! and counted, not verified. Use the compat suites for correctness.

mod friends;
mod keys;
mod kv;
mod lists;
mod messages;
mod report;
mod search;
mod social;
mod text;
mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use crate::keys::Distribution;
pub use crate::messages::RedisModel;
pub use crate::report::{Latency, Machine, OpReport, Report, SocialReport};
pub use crate::text::Texts;

/// The operations a run issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Plain key-value: `get` (or `--multiget`-key gets) and `set` in `--get-ratio` proportion.
    Kv,
    /// Mailboxes: send, open dialogs, read a conversation page, mark read, search.
    Messages,
    /// Friend graph: list pages, common friends, adds/removes, batch privacy checks.
    Friends,
    /// Membership lists: checks, adds, intersections with 100 ids (koshka's lists engine vs
    /// Redis sets).
    Lists,
    /// Global search: one shard's items (real sentences), two-word searches.
    Search,
}

/// The wire protocol spoken to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// The memcached text protocol (koshka, memcached); koshka's compiled keys for the social
    /// workloads.
    Memcache,
    /// RESP (Redis 7), the social workloads modelled the idiomatic Redis way.
    Redis,
}

/// Options of `koshka bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Server address, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:11211")]
    pub server: String,
    /// Concurrent connections (each closed-loop).
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Requests per connection per batch (pipeline depth).
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Key space size: keys are drawn from 0..KEYS.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Key length in bytes (`key:` + zero-padded index).
    #[arg(long, default_value_t = 32)]
    pub key_size: usize,
    /// Value length in bytes for sets.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Fraction of requests that are gets (the rest are sets), 0.0..=1.0.
    #[arg(long, default_value_t = 0.9)]
    pub get_ratio: f64,
    /// Keys per get request (1 = single-key get).
    #[arg(long, default_value_t = 1)]
    pub multiget: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Key distribution.
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    pub distribution: Distribution,
    /// Zipf exponent (theta), in (0, 1).
    #[arg(long, default_value_t = 0.99)]
    pub zipf_exponent: f64,
    /// Set every key once before the run, so gets hit.
    #[arg(long)]
    pub preload: bool,
    /// Workload to run.
    #[arg(long, value_enum, default_value_t = Workload::Kv)]
    pub workload: Workload,
    /// Wire protocol.
    #[arg(long, value_enum, default_value_t = Protocol::Memcache)]
    pub protocol: Protocol,
    /// Client runtime worker threads (0 = number of CPUs).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Random seed (each connection derives its own).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Social workloads: exit after the preload phase (for memory measurements).
    #[arg(long)]
    pub preload_only: bool,
    /// Social workloads: operation mix, `name=weight,…` (messages: send, dialogs,
    /// conversation, read, search, bigsearch; friends: page, common, common1k, add, remove,
    /// privacy). Default: a realistic mix per workload.
    #[arg(long)]
    pub mix: Option<String>,
    /// Social workloads: user ids 1..=USERS (activity is Zipf over them, `--zipf-exponent`).
    #[arg(long, default_value_t = 100_000)]
    pub users: u64,
    /// messages: messages sent by the preload phase.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// messages: text length in bytes (fortunes cut at a UTF-8 boundary); with `--texts
    /// ru`, the cap on each whole text.
    #[arg(long, default_value_t = 100)]
    pub text_size: usize,
    /// messages: how texts are made from the fortunes.
    #[arg(long, value_enum, default_value_t = Texts::Cut)]
    pub texts: Texts,
    /// messages: correspondents per user; 0 = recipients drawn uniformly over all users.
    #[arg(long, default_value_t = 20)]
    pub dialog_peers: u64,
    /// messages: how the data is modelled in Redis (`--protocol redis`).
    #[arg(long, value_enum, default_value_t = RedisModel::Plain)]
    pub redis_model: RedisModel,
    /// Social workloads: the server's process id; the report then gives the server's CPU
    /// seconds (user + system, /proc/PID/stat) over the measured window.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// messages: size of the one big mailbox (user USERS+1) that `bigsearch` searches.
    #[arg(long, default_value_t = 10_000)]
    pub big_mailbox: u64,
    /// friends: friendships drawn by the preload phase (duplicates dropped).
    #[arg(long, default_value_t = 1_000_000)]
    pub edges: u64,
    /// friends: Zipf exponent of the degree distribution, in (0, 1).
    #[arg(long, default_value_t = 0.6)]
    pub degree_exponent: f64,
    /// friends: pairs of users given BIG_DEGREE friends each (`common1k`).
    #[arg(long, default_value_t = 8)]
    pub big_pairs: u64,
    /// friends: friends of each user of a big pair.
    #[arg(long, default_value_t = 1000)]
    pub big_degree: u64,
    /// friends: the hottest users that store 20 privacy rules each.
    #[arg(long, default_value_t = 1000)]
    pub privacy_users: u64,
    /// friends: the Redis model also keeps each user's friends in a plain set, and common
    /// friends are `SINTER` of two sets (default: `ZINTER` of the sorted sets by date).
    #[arg(long)]
    pub redis_friend_sets: bool,
    /// lists: number of lists (list sizes are Zipf with `--degree-exponent`; `--edges`
    /// memberships in all, objects uniform over `--users`).
    #[arg(long, default_value_t = 1000)]
    pub lists: u64,
    /// search: items the preload indexes on this shard (1 M items over 8 shards = 125 000).
    #[arg(long, default_value_t = 125_000)]
    pub items: u64,
    /// search: shards of the cluster the node is one of (sets item owners and the per-shard
    /// limit of each search).
    #[arg(long, default_value_t = 8)]
    pub search_shards: u32,
    /// search: the shard this node holds.
    #[arg(long, default_value_t = 0)]
    pub search_shard: u32,
    /// search: hits the client wants from the whole cluster; each shard is asked for what a
    /// proxy asks (`shard_limit`: all of them up to 32, else the split estimate).
    #[arg(long, default_value_t = 20)]
    pub search_limit: u32,
    /// search: the server is a proxy over `--search-shards` shards; items go to every shard
    /// (`--items` in all) and each search asks for the whole `--search-limit`.
    #[arg(long)]
    pub search_through_proxy: bool,
}

impl BenchArgs {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.connections > 0, "--connections must be at least 1");
        anyhow::ensure!(self.pipeline > 0, "--pipeline must be at least 1");
        anyhow::ensure!(self.multiget > 0, "--multiget must be at least 1");
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.get_ratio),
            "--get-ratio must be in 0..=1"
        );
        anyhow::ensure!(self.duration > 0.0, "--duration must be positive");
        anyhow::ensure!(self.warmup >= 0.0, "--warmup must not be negative");
        anyhow::ensure!(
            self.value_size <= 1 << 20,
            "--value-size is limited to 1 MiB"
        );
        Ok(())
    }
}

/// Runs the benchmark described by `args` and returns its report. Builds its own tokio
/// runtime, so call it from synchronous code (not from inside a runtime).
///
/// # Errors
///
/// Invalid arguments, an unreachable server, or a server that breaks the protocol or stops
/// answering (10 s) mid-run.
pub fn run(args: BenchArgs) -> anyhow::Result<Report> {
    args.validate()?;
    let threads = if args.threads == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        args.threads
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(run_async(args, threads))
}

/// Runs the benchmark and prints its report (JSON with `--json`).
///
/// # Errors
///
/// As [`run`].
pub fn run_and_print(args: BenchArgs) -> anyhow::Result<()> {
    let json = args.json;
    let report = run(args)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

async fn connect(server: &str) -> anyhow::Result<TcpStream> {
    let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(server))
        .await
        .with_context(|| format!("connecting to {server} timed out"))?
        .with_context(|| format!("cannot connect to {server}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn run_async(args: BenchArgs, threads: usize) -> anyhow::Result<Report> {
    match args.workload {
        Workload::Kv => {
            anyhow::ensure!(
                args.protocol == Protocol::Memcache,
                "the kv workload speaks the memcached protocol only"
            );
            run_kv(args, threads).await
        }
        Workload::Messages | Workload::Friends | Workload::Lists | Workload::Search => {
            run_social(args, threads).await
        }
    }
}

/// The server's version: memcached `version`, or `redis_version` from Redis `INFO server`.
async fn server_version(args: &BenchArgs) -> anyhow::Result<String> {
    if args.protocol == Protocol::Memcache {
        let mut client = koshka_client::Client::connect(args.server.as_str())
            .await
            .with_context(|| format!("cannot connect to {}", args.server))?;
        return client
            .version()
            .await
            .context("the server did not answer version");
    }
    let mut stream = connect(&args.server).await?;
    stream
        .write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
        .await?;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    while wire::frame(&reply, wire::Frame::Resp)?.is_none() {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .context("no INFO reply within 10 s")??;
        anyhow::ensure!(read > 0, "the server closed the connection");
        reply.extend_from_slice(&chunk[..read]);
    }
    let text = String::from_utf8_lossy(&reply);
    let version = text
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .context("no redis_version in INFO server (is this Redis?)")?;
    Ok(format!("redis {}", version.trim()))
}

/// Runs a social workload: build the plan, optionally preload, then drive the mix.
async fn run_social(args: BenchArgs, threads: usize) -> anyhow::Result<Report> {
    anyhow::ensure!(args.users >= 2, "--users must be at least 2");
    let version = server_version(&args).await?;
    let chooser = keys::KeyChooser::new(args.distribution, args.users, args.zipf_exponent)?;
    match args.workload {
        Workload::Messages => {
            let weights = social::parse_mix(
                args.mix.as_deref().unwrap_or(messages::DEFAULT_MIX),
                messages::KINDS,
            )?;
            let plan = Arc::new(messages::Messages::new(messages::MessagesConfig {
                protocol: args.protocol,
                model: args.redis_model,
                users: args.users,
                messages: args.messages,
                big_mailbox: args.big_mailbox,
                circle: args.dialog_peers,
                texts: args.texts,
                text_size: args.text_size,
                chooser,
                weights,
                seed: args.seed,
            })?);
            let peers = if args.dialog_peers == 0 {
                "recipients uniform".to_owned()
            } else {
                format!("{} correspondents per user", args.dialog_peers)
            };
            let info = SocialReport {
                users: args.users,
                data_kind: "message copies".into(),
                data_items: plan.copies(),
                mix: args.mix.clone().unwrap_or(messages::DEFAULT_MIX.into()),
                detail: format!(
                    "{} sends, {peers}, users {:?}; texts: {}; big mailbox user {} ({} \
                     messages); Redis model {:?}",
                    args.messages,
                    args.distribution,
                    plan.text_source(),
                    args.users + 1,
                    args.big_mailbox,
                    args.redis_model,
                ),
                preload_items: None,
                ops_by_kind: Vec::new(),
                server_cpu_s: None,
            };
            drive_social(args, threads, version, plan, info).await
        }
        Workload::Lists => {
            let weights = social::parse_mix(
                args.mix.as_deref().unwrap_or(lists::DEFAULT_MIX),
                lists::KINDS,
            )?;
            let lists_chooser =
                keys::KeyChooser::new(args.distribution, args.lists, args.zipf_exponent)?;
            let plan = Arc::new(lists::Lists::new(lists::ListsConfig {
                protocol: args.protocol,
                lists: args.lists,
                users: args.users,
                edges: args.edges,
                degree_exponent: args.degree_exponent,
                chooser: lists_chooser,
                weights,
                seed: args.seed,
            })?);
            let info = SocialReport {
                users: args.users,
                data_kind: "memberships".into(),
                data_items: plan.edge_count(),
                mix: args.mix.clone().unwrap_or(lists::DEFAULT_MIX.into()),
                detail: format!(
                    "{} lists, sizes Zipf {} (largest {}, median {}); objects uniform over {} \
                     users; intersections of {} ids",
                    args.lists,
                    args.degree_exponent,
                    plan.max_size(),
                    plan.median_size(),
                    args.users,
                    lists::INTERSECT_IDS
                ),
                preload_items: None,
                ops_by_kind: Vec::new(),
                server_cpu_s: None,
            };
            drive_social(args, threads, version, plan, info).await
        }
        Workload::Search => {
            anyhow::ensure!(
                args.protocol == Protocol::Memcache,
                "the search workload speaks koshka's compiled keys only"
            );
            let weights = social::parse_mix(
                args.mix.as_deref().unwrap_or(search::DEFAULT_MIX),
                search::KINDS,
            )?;
            let plan = Arc::new(search::SearchPlan::new(search::SearchConfig {
                items: args.items,
                shards: args.search_shards,
                shard: args.search_shard,
                limit: args.search_limit,
                whole: args.search_through_proxy,
                pool: text::TextPool::new(args.texts, args.text_size, args.seed),
                weights,
                seed: args.seed,
            })?);
            let info = SocialReport {
                users: args.users,
                data_kind: "items".into(),
                data_items: args.items,
                mix: args.mix.clone().unwrap_or(search::DEFAULT_MIX.into()),
                detail: if args.search_through_proxy {
                    format!(
                        "through a proxy over {} shards; top {} per search; texts: {}",
                        args.search_shards,
                        args.search_limit,
                        plan.text_source(),
                    )
                } else {
                    format!(
                        "shard {} of {}; top {} per search = {} per shard; texts: {}",
                        args.search_shard,
                        args.search_shards,
                        args.search_limit,
                        plan.per_shard_limit(),
                        plan.text_source(),
                    )
                },
                preload_items: None,
                ops_by_kind: Vec::new(),
                server_cpu_s: None,
            };
            drive_social(args, threads, version, plan, info).await
        }
        _ => {
            let weights = social::parse_mix(
                args.mix.as_deref().unwrap_or(friends::DEFAULT_MIX),
                friends::KINDS,
            )?;
            let plan = Arc::new(friends::Friends::new(friends::FriendsConfig {
                protocol: args.protocol,
                users: args.users,
                edges: args.edges,
                degree_exponent: args.degree_exponent,
                big_pairs: args.big_pairs,
                big_degree: args.big_degree,
                privacy_users: args.privacy_users,
                chooser,
                weights,
                seed: args.seed,
                redis_sets: args.redis_friend_sets,
            })?);
            let info = SocialReport {
                users: args.users,
                data_kind: "edges".into(),
                data_items: plan.edge_count(),
                mix: args.mix.clone().unwrap_or(friends::DEFAULT_MIX.into()),
                detail: format!(
                    "degree exponent {}, max degree {}; {} pairs with {} friends; {} users with \
                     {} privacy rules",
                    args.degree_exponent,
                    plan.max_degree(),
                    args.big_pairs,
                    args.big_degree,
                    args.privacy_users,
                    20
                ),
                preload_items: None,
                ops_by_kind: Vec::new(),
                server_cpu_s: None,
            };
            drive_social(args, threads, version, plan, info).await
        }
    }
}

/// User + system CPU seconds of process `pid` so far (`/proc/PID/stat`), if readable.
fn process_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ').skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // NOTE: the kernel reports clock ticks, USER_HZ = 100 on every Linux we run.
    Some((utime + stime) as f64 / 100.0)
}

async fn drive_social<W: social::Social>(
    args: BenchArgs,
    threads: usize,
    version: String,
    plan: Arc<W>,
    mut info: SocialReport,
) -> anyhow::Result<Report> {
    let mut preload_s = None;
    if args.preload || args.preload_only {
        let (seconds, items) = social::preload(&args.server, &plan, args.connections).await?;
        preload_s = Some(seconds);
        info.preload_items = Some(items);
    }
    let mut total = social::SocialCounters::new(plan.kinds().len())?;
    if !args.preload_only {
        let mut streams = Vec::with_capacity(args.connections);
        for _ in 0..args.connections {
            streams.push(connect(&args.server).await?);
        }
        let start = Instant::now() + Duration::from_secs_f64(args.warmup);
        let window = social::Window {
            start,
            end: start + Duration::from_secs_f64(args.duration),
        };
        let cpu = args.server_pid.map(|pid| {
            tokio::spawn(async move {
                tokio::time::sleep_until(window.start.into()).await;
                let start = process_cpu_s(pid);
                tokio::time::sleep_until(window.end.into()).await;
                Some(process_cpu_s(pid)? - start?)
            })
        });
        let mut tasks = Vec::with_capacity(args.connections);
        for (index, stream) in streams.into_iter().enumerate() {
            let seed = args
                .seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(index as u64);
            tasks.push(tokio::spawn(social::drive(
                stream,
                Arc::clone(&plan),
                window,
                seed,
                index,
                args.pipeline,
            )));
        }
        for task in tasks {
            let counters = task.await.context("a connection task panicked")??;
            total.merge(&counters)?;
        }
        if let Some(cpu) = cpu {
            info.server_cpu_s = cpu.await.context("the CPU sampler panicked")?;
        }
    }
    Ok(Report::social(
        &args,
        threads,
        version,
        preload_s,
        &total,
        plan.kinds(),
        info,
    ))
}

async fn run_kv(args: BenchArgs, threads: usize) -> anyhow::Result<Report> {
    let server_version = {
        let mut client = koshka_client::Client::connect(args.server.as_str())
            .await
            .with_context(|| format!("cannot connect to {}", args.server))?;
        client
            .version()
            .await
            .context("the server did not answer version")?
    };
    let chooser = keys::KeyChooser::new(args.distribution, args.keys, args.zipf_exponent)?;
    let format = keys::KeyFormat::new(args.key_size, args.keys)?;
    let plan = Arc::new(kv::Plan::new(
        chooser,
        format,
        args.value_size,
        args.get_ratio,
        args.multiget,
        args.pipeline,
    ));
    let preload_s = if args.preload {
        Some(preload(&args, &plan).await?)
    } else {
        None
    };

    let mut streams = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        streams.push(connect(&args.server).await?);
    }
    let start = Instant::now() + Duration::from_secs_f64(args.warmup);
    let window = kv::Window {
        start,
        end: start + Duration::from_secs_f64(args.duration),
    };
    let mut tasks = Vec::with_capacity(args.connections);
    for (index, stream) in streams.into_iter().enumerate() {
        let seed = args
            .seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(index as u64);
        tasks.push(tokio::spawn(kv::drive(
            stream,
            Arc::clone(&plan),
            window,
            seed,
        )));
    }
    let mut total = kv::Counters::new()?;
    for task in tasks {
        let counters = task.await.context("a connection task panicked")??;
        total.merge(&counters)?;
    }
    Ok(Report::new(
        &args,
        threads,
        server_version,
        preload_s,
        &total,
    ))
}

/// Sets every key once over up to 16 connections; returns the seconds it took.
async fn preload(args: &BenchArgs, plan: &Arc<kv::Plan>) -> anyhow::Result<f64> {
    const PRELOAD_CONNECTIONS_MAX: u64 = 16;
    let started = Instant::now();
    let connections = (args.connections as u64).clamp(1, PRELOAD_CONNECTIONS_MAX);
    let per_connection = args.keys.div_ceil(connections);
    let mut tasks = Vec::new();
    for index in 0..connections {
        let first = index * per_connection;
        let last = (first + per_connection).min(args.keys);
        if first >= last {
            continue;
        }
        let stream = connect(&args.server).await?;
        tasks.push(tokio::spawn(kv::preload(
            stream,
            Arc::clone(plan),
            first..last,
        )));
    }
    let mut errors = 0;
    for task in tasks {
        errors += task.await.context("a preload task panicked")??;
    }
    anyhow::ensure!(errors == 0, "{errors} sets failed during preload");
    Ok(started.elapsed().as_secs_f64())
}
