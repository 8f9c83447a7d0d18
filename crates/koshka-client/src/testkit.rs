//! Start a real memcached-protocol server process on a free loopback port, for tests.
//!
//! Following memcached's own test suite: the process is real, the port is free, readiness is
//! a `version` reply (no fixed sleeps), and the process is killed by PID when dropped.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer its first `version`. Generous: CI machines are slow
/// while they compile; at the limit the process is killed and `spawn` fails.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How many times `spawn` retries with a new port when the process exits at once (another
/// process took the port between our probe and its bind).
const SPAWN_ATTEMPTS_MAX: usize = 5;

/// Returns a loopback port that was free a moment ago (bind to port 0, read it, close).
///
/// # Errors
///
/// If binding a loopback socket fails.
pub fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A running server process, killed on drop.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    port: u16,
}

impl ServerProcess {
    /// Starts `program` with `args`, where every `{port}` in an argument is replaced by a free
    /// port, and waits until it answers `version` on `127.0.0.1:{port}`.
    ///
    /// # Errors
    ///
    /// If the program cannot start, exits, or is not ready within [`READY_TIMEOUT`].
    pub fn spawn(program: &str, args: &[&str]) -> io::Result<ServerProcess> {
        let mut last_error = io::Error::other("no attempt made");
        for _ in 0..SPAWN_ATTEMPTS_MAX {
            let port = free_port()?;
            let args: Vec<String> = args
                .iter()
                .map(|arg| arg.replace("{port}", &port.to_string()))
                .collect();
            let child = Command::new(program)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()?;
            let mut server = ServerProcess { child, port };
            match server.wait_ready() {
                Ok(()) => return Ok(server),
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }

    /// Starts the real memcached (`$MEMCACHED` or `memcached` on `PATH`) on a free loopback
    /// port with 64 MiB of memory, 2 threads and 2 MiB items.
    ///
    /// # Errors
    ///
    /// As [`ServerProcess::spawn`].
    pub fn memcached() -> io::Result<ServerProcess> {
        let program = std::env::var("MEMCACHED").unwrap_or_else(|_| "memcached".to_owned());
        // NOTE: memcached refuses to run as root without -u; as non-root -u is ignored.
        let args = ["-l", "127.0.0.1", "-p", "{port}", "-U", "0", "-u", "root"];
        let mut all = args.to_vec();
        all.extend(["-m", "64", "-t", "2", "-I", "2m"]);
        ServerProcess::spawn(&program, &all)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!("server exited early: {status}")));
            }
            if probe_version(self.port).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "server did not answer version",
        ))
    }

    fn kill(&mut self) {
        // The process may already be gone; both calls are best effort by design.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `version` and checks that the reply starts with `VERSION `.
fn probe_version(port: u16) -> io::Result<()> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"version\r\n")?;
    let mut reply = [0u8; 64];
    let mut len = 0;
    while len < reply.len() && !reply[..len].ends_with(b"\r\n") {
        let read = stream.read(&mut reply[len..])?;
        if read == 0 {
            break;
        }
        len += read;
    }
    if reply[..len].starts_with(b"VERSION ") {
        Ok(())
    } else {
        Err(io::Error::other("unexpected reply to version"))
    }
}
