//! koshka media: VK's storage-engine idea on koshka's rules. A **volume** is an append-only
//! file of needles kept in two data directories with a RAM index of 16 bytes per file
//! ([`volume`], [`needle`], [`store`]); files are served over HTTP at secret URLs
//! `/v<vol>/<lid hex>/<secret b64url>.<ext>` ([`http`]); a memcached port answers
//! operator keys ([`keys`]); images and videos are processed by a sandboxed ffmpeg in a bounded
//! job queue ([`process`], [`sniff`]). `docs/media.md` is the user guide.

pub mod http;
pub mod keys;
pub mod limits;
pub mod needle;
pub mod process;
pub mod sniff;
pub mod store;
pub mod volume;

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Default HTTP address (loopback).
pub const HTTP_DEFAULT: &str = "127.0.0.1:11280";
/// Default memcached-protocol key port address (loopback).
pub const KEYS_DEFAULT: &str = "127.0.0.1:11218";

/// Everything `koshka media serve` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Store settings.
    pub store: store::StoreConfig,
    /// Processing settings.
    pub process: process::ProcessConfig,
    /// HTTP address.
    pub http: String,
    /// Key port address.
    pub keys: String,
    /// Runtime worker threads (0 = one per core).
    pub threads: usize,
}

impl Config {
    /// Defaults over `dirs`.
    #[must_use]
    pub fn new(dirs: Vec<PathBuf>) -> Config {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Config {
            store: store::StoreConfig {
                dirs,
                volume_size: limits::VOLUME_SIZE_DEFAULT,
                durability: store::Durability::Everysec,
            },
            process: process::ProcessConfig {
                ffmpeg: PathBuf::from("ffmpeg"),
                ffprobe: PathBuf::from("ffprobe"),
                workers: cores,
                timeout: limits::JOB_TIMEOUT_DEFAULT,
            },
            http: HTTP_DEFAULT.into(),
            keys: KEYS_DEFAULT.into(),
            threads: 0,
        }
    }
}

/// Opens the store, binds both ports, prints `koshka: media-http listening on <addr>` and
/// `koshka: media-keys listening on <addr>` on stdout, and serves until SIGTERM/SIGINT
/// (after which the volumes are fsynced).
///
/// # Errors
/// Bad directories, unbindable addresses.
pub fn run(config: Config) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.store.volume_size <= volume::VOLUME_SIZE_MAX,
        "volume size is at most {} bytes",
        volume::VOLUME_SIZE_MAX
    );
    let store = store::Store::open(config.store.clone())?;
    let processor = Arc::new(process::Processor::new(config.process.clone()));
    let app = http::App::new(store.clone(), processor);
    // HTTP: one single-threaded runtime per core, each accepting on its own SO_REUSEPORT
    // socket of the same address (nginx's worker model; no task hand-offs between threads).
    let threads = if config.threads > 0 {
        config.threads
    } else {
        std::thread::available_parallelism().map_or(1, usize::from)
    };
    let first = reuseport_listener(&config.http)
        .map_err(|e| anyhow::anyhow!("bind http {}: {e}", config.http))?;
    let http_addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..threads {
        listeners.push(reuseport_listener(&http_addr.to_string())?);
    }
    for (i, listener) in listeners.into_iter().enumerate() {
        let app = app.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("media-http-{i}"))
            .spawn(move || {
                rt.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => http::serve(l, app).await,
                        Err(e) => tracing::error!(%e, "http listener"),
                    }
                });
            })?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let keys = tokio::net::TcpListener::bind(&config.keys)
            .await
            .map_err(|e| anyhow::anyhow!("bind keys {}: {e}", config.keys))?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "koshka: media-http listening on {http_addr}")?;
            writeln!(
                out,
                "koshka: media-keys listening on {}",
                keys.local_addr()?
            )?;
            out.flush()?;
        }
        tokio::spawn(keys::serve(keys, app.clone()));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        for v in store.stats() {
            if let Some(vol) = store.volume(v.vol) {
                if let Err(e) = vol.sync() {
                    tracing::error!(vol = v.vol, %e, "fsync at shutdown");
                }
            }
        }
        tracing::info!("media: stopped");
        anyhow::Ok(())
    })?;
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// A non-blocking listener on `addr` with SO_REUSEPORT, so several threads can accept on it.
fn reuseport_listener(addr: &str) -> anyhow::Result<std::net::TcpListener> {
    let addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| anyhow::anyhow!("{addr:?} is not an address: {e}"))?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}
