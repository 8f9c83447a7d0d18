//! The memcached port of koshka media: requests parsed by koshka-proto, keys answered here.
//!
//! | key (`get …`) | value |
//! |---|---|
//! | `check_file<vol>,<size>` | `1` if volume `vol` is writable and can take `size` more bytes, else `0` |
//! | `volumes` | JSON array of every volume's counters |
//! | `volume<vol>` | JSON counters of one volume (live and dead bytes, files, generation…) |
//! | `hide<vol>,<lid>` / `unhide<vol>,<lid>` | `1` done, `0` no such file |
//! | `delete<vol>,<lid>` | `1` tombstone written, `0` no such file (also `delete file<vol>,<lid>`) |
//! | `valid<vol>,<lid>,<secret>` | `1` if the file exists, is not deleted and the secret matches |
//! | `compact<vol>` | runs compaction; `compacted <before> <after>` or `error: …` |
//! | `jobs` | JSON counters of the processing queue |
//! | `job<id>` | state of a recent job: `queued`, `running`, `done`, `failed: …` |
//!
//! `<vol>` is decimal; `<lid>` is hexadecimal and `<secret>` base64url, as in the URLs.
//!
//! A key that is not one of these is a miss (`END`), like any memcached; a malformed number in a
//! known key is a miss too. `stats` lists totals and, per volume, `vol<N>_live_bytes`,
//! `vol<N>_dead_bytes`, `vol<N>_files`; `index_bytes_per_file` is the RAM index cost.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use koshka_proto::{parse, reply, Command, ParseConfig, Parsed};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::http::App;
use crate::limits::KEYS_CONNECTIONS_MAX;
use crate::needle::{FLAG_DELETED, FLAG_HIDDEN};

/// Serves the key port until the process ends.
pub async fn serve(listener: TcpListener, app: Arc<App>) {
    let conns = Arc::new(Semaphore::new(KEYS_CONNECTIONS_MAX));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = connection(stream, &app).await;
        });
    }
}

async fn connection(mut stream: TcpStream, app: &Arc<App>) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let config = ParseConfig::default();
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    let mut swallow = 0usize;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        let mut data = &chunk[..n];
        if swallow > 0 {
            let k = swallow.min(data.len());
            swallow -= k;
            data = &data[k..];
        }
        buf.extend_from_slice(data);
        loop {
            match parse(&buf, &config) {
                Parsed::Incomplete => break,
                Parsed::Done { command, consumed } => {
                    let quit = matches!(command, Command::Quit);
                    execute(app, &command, &mut out).await;
                    buf.drain(..consumed);
                    if quit {
                        stream.write_all(&out).await?;
                        return Ok(());
                    }
                }
                Parsed::Bad {
                    error,
                    consumed,
                    swallow: more,
                    noreply,
                } => {
                    if !noreply {
                        out.extend_from_slice(&error.reply());
                    }
                    let drop_now = consumed.min(buf.len());
                    buf.drain(..drop_now);
                    swallow = more;
                    if error.closes() {
                        stream.write_all(&out).await?;
                        return Ok(());
                    }
                }
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
    }
}

async fn execute(app: &Arc<App>, command: &Command<'_>, out: &mut Vec<u8>) {
    match command {
        Command::Get { keys, .. } | Command::Gat { keys, .. } => {
            for key in keys.iter() {
                if let Some(value) = query(app, key).await {
                    reply::value(out, key, 0, value.as_bytes(), None);
                }
            }
            out.extend_from_slice(b"END\r\n");
        }
        Command::Delete { key, noreply } => {
            let target = key.strip_prefix(b"file").and_then(two_numbers);
            let done = match target {
                Some((vol, lid)) => flags(app, vol, lid, FLAG_DELETED, 0).await,
                None => false,
            };
            if !noreply {
                out.extend_from_slice(if done {
                    b"DELETED\r\n"
                } else {
                    b"NOT_FOUND\r\n"
                });
            }
        }
        Command::Stats { .. } => stats(app, out),
        Command::Version => reply::version(out, koshka_proto::VERSION),
        Command::Verbosity { noreply } => {
            if !noreply {
                out.extend_from_slice(b"OK\r\n");
            }
        }
        Command::Quit => {}
        Command::MetaNoop => out.extend_from_slice(b"MN\r\n"),
        _ => reply::client_error(out, "koshka media answers get, delete, stats and version"),
    }
}

fn numbers(s: &[u8]) -> Option<Vec<u64>> {
    std::str::from_utf8(s)
        .ok()?
        .split(',')
        .map(|n| n.parse::<u64>().ok())
        .collect()
}

/// `<vol decimal>,<lid hex>` (the lid as in URLs and upload replies).
fn two_numbers(s: &[u8]) -> Option<(u32, u32)> {
    let (vol, lid) = std::str::from_utf8(s).ok()?.split_once(',')?;
    Some((vol.parse().ok()?, u32::from_str_radix(lid, 16).ok()?))
}

/// Sets or clears flags on a blocking thread (the volume may be busy compacting).
async fn flags(app: &Arc<App>, vol: u32, lid: u32, set: u8, clear: u8) -> bool {
    let Some(v) = app.store.volume(vol) else {
        return false;
    };
    tokio::task::spawn_blocking(move || v.set_flags(lid, set, clear).unwrap_or(false))
        .await
        .unwrap_or(false)
}

fn bit(b: bool) -> String {
    if b { "1" } else { "0" }.to_owned()
}

async fn query(app: &Arc<App>, key: &[u8]) -> Option<String> {
    if key == b"volumes" {
        return serde_json::to_string(&app.store.stats()).ok();
    }
    if key == b"jobs" {
        return serde_json::to_string(&app.processor.counters()).ok();
    }
    if let Some(rest) = key.strip_prefix(b"check_file") {
        let n = numbers(rest)?;
        let [vol, size] = n.as_slice() else {
            return None;
        };
        let vol = u32::try_from(*vol).ok()?;
        return Some(bit(app.store.volume(vol).is_some_and(|v| v.fits(*size))));
    }
    if let Some(rest) = key.strip_prefix(b"volume") {
        let vol = u32::try_from(*numbers(rest)?.first()?).ok()?;
        return serde_json::to_string(&app.store.volume(vol)?.stats()).ok();
    }
    if let Some(rest) = key.strip_prefix(b"unhide") {
        let (vol, lid) = two_numbers(rest)?;
        return Some(bit(flags(app, vol, lid, 0, FLAG_HIDDEN).await));
    }
    if let Some(rest) = key.strip_prefix(b"hide") {
        let (vol, lid) = two_numbers(rest)?;
        return Some(bit(flags(app, vol, lid, FLAG_HIDDEN, 0).await));
    }
    if let Some(rest) = key.strip_prefix(b"delete") {
        let (vol, lid) = two_numbers(rest)?;
        return Some(bit(flags(app, vol, lid, FLAG_DELETED, 0).await));
    }
    if let Some(rest) = key.strip_prefix(b"valid") {
        let s = std::str::from_utf8(rest).ok()?;
        let mut it = s.splitn(3, ',');
        let vol: u32 = it.next()?.parse().ok()?;
        let lid = u32::from_str_radix(it.next()?, 16).ok()?;
        let secret: [u8; 8] = URL_SAFE_NO_PAD.decode(it.next()?).ok()?.try_into().ok()?;
        let ok = app
            .store
            .volume(vol)
            .and_then(|v| v.entry(lid))
            .is_some_and(|e| bool::from(e.secret().to_le_bytes().ct_eq(&secret)) && !e.deleted());
        return Some(bit(ok));
    }
    if let Some(rest) = key.strip_prefix(b"compact") {
        let vol = u32::try_from(*numbers(rest)?.first()?).ok()?;
        let store = app.store.clone();
        let r = tokio::task::spawn_blocking(move || store.compact(vol))
            .await
            .ok()?;
        return Some(match r {
            Ok((before, after)) => format!("compacted {before} {after}"),
            Err(e) => format!("error: {e}"),
        });
    }
    if let Some(rest) = key.strip_prefix(b"job") {
        let id = *numbers(rest)?.first()?;
        return app.processor.job_state(id);
    }
    None
}

fn stats(app: &Arc<App>, out: &mut Vec<u8>) {
    let vols = app.store.stats();
    let files: u64 = vols.iter().map(|v| v.lids).sum();
    let index: u64 = vols.iter().map(|v| v.index_bytes).sum();
    reply::stat(out, "pid", &std::process::id().to_string());
    reply::stat(out, "version", koshka_proto::VERSION);
    reply::stat(out, "volumes", &vols.len().to_string());
    reply::stat(out, "files", &files.to_string());
    reply::stat(
        out,
        "live_bytes",
        &vols.iter().map(|v| v.live_bytes).sum::<u64>().to_string(),
    );
    reply::stat(
        out,
        "dead_bytes",
        &vols.iter().map(|v| v.dead_bytes).sum::<u64>().to_string(),
    );
    reply::stat(out, "index_bytes", &index.to_string());
    reply::stat(
        out,
        "index_bytes_per_file",
        &format!("{:.1}", index as f64 / files.max(1) as f64),
    );
    reply::stat(
        out,
        "writes_stopped",
        app.store.stopped().as_deref().unwrap_or("0"),
    );
    let jobs = app.processor.counters();
    reply::stat(out, "jobs_queued", &jobs.queued.to_string());
    reply::stat(out, "jobs_running", &jobs.running.to_string());
    reply::stat(out, "jobs_done", &jobs.done.to_string());
    reply::stat(out, "jobs_failed", &jobs.failed.to_string());
    reply::stat(out, "jobs_timed_out", &jobs.timed_out.to_string());
    for v in &vols {
        reply::stat(
            out,
            &format!("vol{}_live_bytes", v.vol),
            &v.live_bytes.to_string(),
        );
        reply::stat(
            out,
            &format!("vol{}_dead_bytes", v.vol),
            &v.dead_bytes.to_string(),
        );
        reply::stat(
            out,
            &format!("vol{}_files", v.vol),
            &v.live_files.to_string(),
        );
    }
    out.extend_from_slice(b"END\r\n");
}
