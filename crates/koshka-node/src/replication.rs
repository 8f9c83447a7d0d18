//! The replication listener of a primary: replicas connect here for log shipping
//! ([`koshka_binlog::repl`]) and, when they start, to compare their log with this one
//! (`KCHAIN` queries). One thread per connection; connections are few (one per engine and
//! replica).

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use koshka_binlog::repl;

use crate::persist::HostPersistence;

/// How often the accept loop looks at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(20);

/// The engines a node ships, by name.
pub(crate) type Shipped = Vec<(String, Arc<HostPersistence>)>;

/// A running replication listener; stops when dropped.
pub(crate) struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts accepting replicas on `listener`.
pub(crate) fn spawn(listener: TcpListener, engines: Shipped) -> std::io::Result<Listener> {
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_in = Arc::clone(&stop);
    let engines = Arc::new(engines);
    let thread = std::thread::Builder::new()
        .name("repl-listen".into())
        .spawn(move || {
            while !stop_in.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        let (engines, stop) = (Arc::clone(&engines), Arc::clone(&stop_in));
                        let spawned = std::thread::Builder::new()
                            .name("repl-conn".into())
                            .spawn(move || connection(stream, peer, &engines, &stop));
                        if let Err(e) = spawned {
                            tracing::error!("replication: cannot start a thread: {e}");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(ACCEPT_POLL);
                    }
                    Err(e) => {
                        tracing::warn!("replication accept: {e}");
                        std::thread::sleep(ACCEPT_POLL);
                    }
                }
            }
        })?;
    Ok(Listener {
        stop,
        thread: Some(thread),
    })
}

fn connection(stream: TcpStream, peer: SocketAddr, engines: &Shipped, stop: &AtomicBool) {
    if let Err(e) = connection_inner(stream, engines, stop) {
        tracing::info!("replication connection from {peer} ended: {e}");
    }
}

fn connection_inner(
    stream: TcpStream,
    engines: &Shipped,
    stop: &AtomicBool,
) -> koshka_binlog::Result<()> {
    let io = |e: std::io::Error| koshka_binlog::Error::Replication(e.to_string());
    stream.set_nonblocking(false).map_err(io)?;
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(repl::IDLE_TIMEOUT))
        .map_err(io)?;
    let mut w = stream.try_clone().map_err(io)?;
    let mut r = BufReader::new(stream.try_clone().map_err(io)?);
    let first = repl::read_first_line(&mut r)?;
    if first.starts_with("KCHAIN ") {
        let dir_of = |name: &str| -> Option<PathBuf> {
            engines
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, p)| p.host().config().dir.clone())
        };
        return repl::serve_chain_queries(&first, &mut r, &mut w, &dir_of);
    }
    let hello = match repl::parse_hello(&first) {
        Ok(h) => h,
        Err(e) => {
            let _ = writeln!(w, "ERR {e}");
            return Err(e);
        }
    };
    let Some((_, persistence)) = engines.iter().find(|(n, _)| *n == hello.engine) else {
        let reason = format!("this node ships no engine {:?}", hello.engine);
        let _ = writeln!(w, "ERR {reason}");
        return Err(koshka_binlog::Error::Replication(reason));
    };
    let host = persistence.host();
    let Some(binlog) = host.binlog() else {
        let reason = "this node is a replica itself; connect to its primary".to_string();
        let _ = writeln!(w, "ERR {reason}");
        return Err(koshka_binlog::Error::Replication(reason));
    };
    let cfg = host.config();
    let src = repl::Source {
        dir: &cfg.dir,
        engine: &cfg.engine,
        shard: cfg.shard,
        binlog,
    };
    repl::serve(stream, &hello, &src, host.acks(), stop)
}
