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
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if config.threads > 0 {
        rt.worker_threads(config.threads);
    }
    let rt = rt.enable_all().build()?;
    rt.block_on(async move {
        let http = tokio::net::TcpListener::bind(&config.http)
            .await
            .map_err(|e| anyhow::anyhow!("bind http {}: {e}", config.http))?;
        let keys = tokio::net::TcpListener::bind(&config.keys)
            .await
            .map_err(|e| anyhow::anyhow!("bind keys {}: {e}", config.keys))?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "koshka: media-http listening on {}",
                http.local_addr()?
            )?;
            writeln!(
                out,
                "koshka: media-keys listening on {}",
                keys.local_addr()?
            )?;
            out.flush()?;
        }
        tokio::spawn(http::serve(http, app.clone()));
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
