//! Worker threads and listeners.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::stats::bump;
use crate::{conn, EngineSlot, Node};

/// Reply sent to a connection over the limit before it is closed.
const TOO_MANY_CONNECTIONS: &[u8] = b"SERVER_ERROR too many connections\r\n";

fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Runs a node until `shutdown` becomes true: binds every slot's port (ephemeral ports are
/// resolved once and shared by all threads), prints `<engine> listening on <addr>` lines to
/// stdout, starts the worker threads and joins them.
///
/// # Errors
/// Binding failures.
pub fn run(node: Arc<Node>, shutdown: watch::Receiver<bool>) -> std::io::Result<()> {
    let threads = node.config.threads();
    // First listener per slot resolves port 0; the other threads bind the same address.
    let mut first: Vec<std::net::TcpListener> = Vec::new();
    let mut addrs = Vec::new();
    for slot in &node.slots {
        let listener = bind(slot.listen)?;
        let addr = listener.local_addr()?;
        println!("koshka: {} listening on {addr}", slot.name);
        addrs.push(addr);
        first.push(listener);
    }
    let mut per_thread: Vec<Vec<std::net::TcpListener>> = vec![first];
    for _ in 1..threads {
        per_thread.push(
            addrs
                .iter()
                .map(|addr| bind(*addr))
                .collect::<std::io::Result<_>>()?,
        );
    }
    let handles: Vec<_> = per_thread
        .into_iter()
        .enumerate()
        .map(|(index, listeners)| {
            let node = node.clone();
            let shutdown = shutdown.clone();
            std::thread::Builder::new()
                .name(format!("koshka-worker-{index}"))
                .spawn(move || worker(&node, listeners, shutdown))
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
    node: &Arc<Node>,
    listeners: Vec<std::net::TcpListener>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let counters = node.counters.register();
    local.block_on(&runtime, async move {
        for (listener, slot) in listeners.into_iter().zip(node.slots.iter()) {
            let listener = TcpListener::from_std(listener)?;
            let node = node.clone();
            let slot = slot.clone();
            let counters = counters.clone();
            tokio::task::spawn_local(async move {
                accept_loop(listener, node, slot, counters).await;
            });
        }
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        Ok(())
    })
}

async fn accept_loop(
    listener: TcpListener,
    node: Arc<Node>,
    slot: Arc<EngineSlot>,
    counters: Arc<crate::stats::Counters>,
) {
    let max = node.config.server.max_connections;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!("accept on {}: {e}", slot.name);
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
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
        let node = node.clone();
        let slot = slot.clone();
        let counters = counters.clone();
        tokio::task::spawn_local(async move {
            conn::serve(stream, &node, &slot, &counters).await;
            node.connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn reject(mut stream: TcpStream) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        let _ = stream.write_all(TOO_MANY_CONNECTIONS).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
