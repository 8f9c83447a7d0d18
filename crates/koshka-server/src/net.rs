//! Worker threads, listeners and connection placement.
//!
//! Worker 0 accepts on every engine port and hands each new connection to the worker with
//! the fewest open connections (itself included). Kernel `SO_REUSEPORT` hashing was tried
//! first: with 64 connections it routinely split them 40/24, leaving one core idle while the
//! other saturated; memcached's dispatcher balances exactly, and so do we.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::stats::{bump, Counters};
use crate::{conn, Node};

/// Reply sent to a connection over the limit before it is closed: memcached's words, which
/// its clients and tests (maxconns.t) look for.
const TOO_MANY_CONNECTIONS: &[u8] = b"ERROR Too many open connections\r\n";

/// First pause after a failed `accept` (out of file descriptors, say); it doubles per failure.
const ACCEPT_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(10);

/// Longest pause between `accept` retries.
const ACCEPT_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// At most one log line per this interval about failing `accept`s.
const ACCEPT_ERROR_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// A connection handed to a worker: the socket and the index of its engine slot.
type Handoff = (std::net::TcpStream, usize);

/// Open connections per worker, shared by the acceptor to place new ones.
struct Placement {
    open: Vec<AtomicUsize>,
    senders: Vec<mpsc::UnboundedSender<Handoff>>,
}

impl Placement {
    fn least_loaded(&self) -> usize {
        let mut best = 0;
        for (index, open) in self.open.iter().enumerate() {
            if open.load(Ordering::Relaxed) < self.open[best].load(Ordering::Relaxed) {
                best = index;
            }
        }
        best
    }
}

/// Binds one listening socket (with `SO_REUSEADDR`, non-blocking, backlog 1024).
///
/// # Errors
/// The bind or listen failure, with the address named in the message.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    bind_inner(addr)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

fn bind_inner(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Runs a node until `shutdown` becomes true: binds every slot's port, prints
/// `koshka: <engine> listening on <addr>` lines to stdout, starts the worker threads and joins
/// them.
///
/// # Errors
/// Binding failures.
pub fn run(node: Arc<Node>, shutdown: watch::Receiver<bool>) -> std::io::Result<()> {
    let listeners = node
        .slots
        .iter()
        .map(|slot| bind(slot.listen))
        .collect::<std::io::Result<Vec<_>>>()?;
    serve(node, listeners, shutdown)
}

/// Runs a node on listeners bound beforehand (one per slot, in slot order, see [`bind`]) until
/// `shutdown` becomes true; prints `koshka: <engine> listening on <addr>` lines to stdout.
///
/// # Errors
/// Thread start failures.
///
/// # Panics
/// If the number of listeners differs from the number of slots.
pub fn serve(
    node: Arc<Node>,
    listeners: Vec<std::net::TcpListener>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    assert_eq!(
        listeners.len(),
        node.slots.len(),
        "one listener per engine slot"
    );
    let threads = node.config.threads();
    for (slot, listener) in node.slots.iter().zip(&listeners) {
        node.conns.listening(listener);
        println!(
            "koshka: {} listening on {}",
            slot.name,
            listener.local_addr()?
        );
    }
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for _ in 0..threads {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        receivers.push(rx);
    }
    let placement = Arc::new(Placement {
        open: (0..threads).map(|_| AtomicUsize::new(0)).collect(),
        senders,
    });
    let mut listeners = Some(listeners);
    let handles: Vec<_> = receivers
        .into_iter()
        .enumerate()
        .map(|(index, inbox)| {
            let node = node.clone();
            let shutdown = shutdown.clone();
            let placement = placement.clone();
            let listeners = if index == 0 { listeners.take() } else { None };
            std::thread::Builder::new()
                .name(format!("koshka-worker-{index}"))
                .spawn(move || worker(index, &node, &placement, listeners, inbox, shutdown))
        })
        .collect::<std::io::Result<_>>()?;
    for handle in handles {
        if let Ok(Err(e)) = handle.join() {
            tracing::error!("worker failed: {e}");
        }
    }
    Ok(())
}

fn worker(
    index: usize,
    node: &Arc<Node>,
    placement: &Arc<Placement>,
    listeners: Option<Vec<std::net::TcpListener>>,
    mut inbox: mpsc::UnboundedReceiver<Handoff>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let counters = node.counters.register();
    local.block_on(&runtime, async move {
        for (slot, listener) in listeners.into_iter().flatten().enumerate() {
            let listener = TcpListener::from_std(listener)?;
            let node = node.clone();
            let placement = placement.clone();
            let counters = counters.clone();
            tokio::task::spawn_local(async move {
                accept_loop(listener, slot, node, placement, counters).await;
            });
        }
        loop {
            tokio::select! {
                handoff = inbox.recv() => {
                    let Some((stream, slot)) = handoff else { break };
                    match TcpStream::from_std(stream) {
                        Ok(stream) => start(stream, slot, index, node, placement, &counters),
                        Err(_) => {
                            placement.open[index].fetch_sub(1, Ordering::Relaxed);
                            node.connections.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                }
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
            }
        }
        Ok(())
    })
}

/// Serves one connection on the current worker.
fn start(
    stream: TcpStream,
    slot: usize,
    worker: usize,
    node: &Arc<Node>,
    placement: &Arc<Placement>,
    counters: &Arc<Counters>,
) {
    let node = node.clone();
    let placement = placement.clone();
    let counters = counters.clone();
    tokio::task::spawn_local(async move {
        conn::serve(stream, &node, &node.slots[slot], &counters).await;
        placement.open[worker].fetch_sub(1, Ordering::Relaxed);
        node.connections.fetch_sub(1, Ordering::Relaxed);
    });
}

async fn accept_loop(
    listener: TcpListener,
    slot: usize,
    node: Arc<Node>,
    placement: Arc<Placement>,
    counters: Arc<Counters>,
) {
    let max = node.config.server.max_connections;
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut failures = 0u64;
    let mut last_log: Option<std::time::Instant> = None;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF_MIN;
                accepted
            }
            Err(e) => {
                // EMFILE and friends: back off (doubling) instead of spinning, and say so at
                // most once per interval, with the count.
                failures += 1;
                if last_log.is_none_or(|at| at.elapsed() >= ACCEPT_ERROR_LOG_INTERVAL) {
                    tracing::warn!(
                        "accept on {}: {e} ({failures} failures so far; retrying in {:?})",
                        node.slots[slot].name,
                        backoff
                    );
                    last_log = Some(std::time::Instant::now());
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        bump(&counters.total_connections, 1);
        if node.connections.fetch_add(1, Ordering::Relaxed) >= max {
            node.connections.fetch_sub(1, Ordering::Relaxed);
            bump(&counters.rejected_connections, 1);
            tokio::task::spawn_local(reject(stream));
            continue;
        }
        let _ = stream.set_nodelay(true);
        let target = placement.least_loaded();
        placement.open[target].fetch_add(1, Ordering::Relaxed);
        if target == 0 {
            start(stream, slot, 0, &node, &placement, &counters);
            continue;
        }
        let handed = stream
            .into_std()
            .map(|std| placement.senders[target].send((std, slot)));
        if !matches!(handed, Ok(Ok(()))) {
            // The worker is gone (shutting down) or the socket could not be detached.
            placement.open[target].fetch_sub(1, Ordering::Relaxed);
            node.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

async fn reject(mut stream: TcpStream) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        let _ = stream.write_all(TOO_MANY_CONNECTIONS).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
