//! Backends: a few persistent, pipelined connections per server, shared by every client
//! connection, and the server's health.
//!
//! ```text
//!  client conns ──submit(bytes, frames)──► Member ── round robin ──► Conn 0 ─┐
//!                 ◄── oneshot(frames) ────                            Conn 1 ─┤─► server
//!                                                                              │
//!  Conn: writer task  mpsc → pending queue (FIFO) → one write per batch ◄──────┘
//!        reader task  read → parse_reply → pop the oldest pending call → oneshot
//! ```
//!
//! A call is a run of request bytes and the number of reply frames they produce; its bytes
//! are written contiguously, so a sequence that shares per-connection state on the server
//! (`set temp…` + `get …:-tag`, a tagged `set` + `get newmsgid…`) is one call. Replies come
//! back in request order (memcached's pipelining rule), so the reader hands each frame to the
//! oldest waiting call. A caller that gave up (deadline) simply drops its receiver; the late
//! reply still pops its call, so the stream never goes out of step.
//!
//! Health (after VK's mc-proxy): each call that misses its deadline adds 1000 to the member's
//! unreliability and each success halves it; above [`UNRELIABILITY_FAILED`] the member is
//! *failed* and not used until pings bring it down again. A member without a live connection
//! is failed too. A supervisor task per member reconnects with exponential back-off and
//! ±50 % jitter, pings idle connections with `version`, and reopens a connection whose oldest
//! call waited longer than `stuck_ms`. A failed member is refused at once: no client ever
//! waits on a dead server longer than its own deadline.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use koshka_proto::{parse_reply, ParsedReply, ReplyConfig};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::config::ProxySection;

/// Unreliability added by a call that missed its deadline.
pub const UNRELIABILITY_TIMEOUT: u64 = 1000;
/// Above this unreliability a member is failed (VK: 5000, five timeouts in a row).
pub const UNRELIABILITY_FAILED: u64 = 5000;
/// Calls queued per connection before a submit tries another connection (and, when every
/// connection is this far behind, is refused as busy).
pub const CONN_QUEUE_MAX: usize = 4096;
/// Bytes a writer gathers from queued calls into one write.
const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// Bytes reserved in a reader's buffer before each read.
const READ_CHUNK_SIZE: usize = 64 * 1024;

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The member is failed or has no live connection.
    #[error("{addr} is down")]
    Down {
        /// The member's address.
        addr: String,
    },
    /// Every connection's queue is full.
    #[error("{addr} is overloaded")]
    Busy {
        /// The member's address.
        addr: String,
    },
    /// The connection closed before the reply came.
    #[error("connection to {addr} lost")]
    Lost {
        /// The member's address.
        addr: String,
    },
    /// The deadline passed.
    #[error("timeout waiting for {addr}")]
    Timeout {
        /// The member's address.
        addr: String,
    },
    /// The server sent something that is no reply.
    #[error("bad reply from {addr}: {reason}")]
    BadReply {
        /// The member's address.
        addr: String,
        /// What was wrong.
        reason: String,
    },
}

/// The reply frames of one call, in order.
pub type Frames = Vec<Bytes>;

/// What a caller waits on.
pub type Reply = oneshot::Receiver<Result<Frames, CallError>>;

struct Call {
    bytes: Bytes,
    frames: usize,
    reply: oneshot::Sender<Result<Frames, CallError>>,
}

struct Waiting {
    frames: usize,
    got: Frames,
    reply: oneshot::Sender<Result<Frames, CallError>>,
    since: Instant,
}

/// The calls written and not yet answered, and whether the connection is closed (both under
/// one lock so that a call is never queued behind a connection that already failed its
/// queue).
struct Pending {
    closed: bool,
    queue: VecDeque<Waiting>,
    /// The member's count of live connections, once this one is installed.
    live: Option<Arc<AtomicUsize>>,
}

/// One pipelined connection.
struct Conn {
    tx: mpsc::Sender<Call>,
    pending: Arc<Mutex<Pending>>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Drop for Conn {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        close(&self.pending, None);
    }
}

impl Conn {
    fn closed(&self) -> bool {
        self.pending.lock().closed
    }

    fn oldest(&self) -> Option<Instant> {
        self.pending.lock().queue.front().map(|w| w.since)
    }
}

/// Fails every waiting call and marks the connection closed.
fn close(pending: &Mutex<Pending>, addr: Option<&str>) {
    let drained: Vec<Waiting> = {
        let mut p = pending.lock();
        if !p.closed {
            if let Some(live) = p.live.take() {
                live.fetch_sub(1, Ordering::Relaxed);
            }
        }
        p.closed = true;
        p.queue.drain(..).collect()
    };
    let addr = addr.unwrap_or("backend").to_string();
    for waiting in drained {
        let _ = waiting
            .reply
            .send(Err(CallError::Lost { addr: addr.clone() }));
    }
}

/// Health counters of a member, shown by `#targets` and `stats`.
#[derive(Debug, Default)]
pub struct Health {
    /// Failed: not used.
    pub failed: AtomicBool,
    /// VK's unreliability score.
    pub unreliability: AtomicU64,
    /// Connects that failed.
    pub connect_failures: AtomicU64,
    /// Calls that missed their deadline.
    pub timeouts: AtomicU64,
    /// Calls sent.
    pub calls: AtomicU64,
    /// Connections reopened because a call waited past `stuck_ms`.
    pub stuck: AtomicU64,
}

/// One server (a shard's primary or replica).
pub struct Member {
    /// The configured address.
    pub addr: String,
    /// Health counters.
    pub health: Health,
    slots: Vec<Mutex<Option<Arc<Conn>>>>,
    live: Arc<AtomicUsize>,
    wake: Arc<Notify>,
    last_call: Mutex<Instant>,
    settings: ProxySection,
    stopped: AtomicBool,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Member {
    /// A member of `addr` with `settings.connections_per_backend` connections: tries to
    /// connect once (so a proxy starts with its backends connected), then leaves reconnects,
    /// pings and health to a supervisor task on the current runtime.
    pub async fn start(addr: &str, settings: &ProxySection) -> Arc<Member> {
        let member = Arc::new(Member {
            addr: addr.to_string(),
            health: Health::default(),
            slots: (0..settings.connections_per_backend)
                .map(|_| Mutex::new(None))
                .collect(),
            live: Arc::new(AtomicUsize::new(0)),
            wake: Arc::new(Notify::new()),
            last_call: Mutex::new(Instant::now()),
            settings: settings.clone(),
            stopped: AtomicBool::new(false),
        });
        reconnect(&member).await;
        update_failed(&member, member.live_connections());
        tokio::spawn(supervise(Arc::downgrade(&member)));
        member
    }

    /// Stops the supervisor and closes the connections (on reload, for a member no longer
    /// configured).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        for slot in &self.slots {
            slot.lock().take();
        }
        self.wake.notify_one();
    }

    /// Whether the member may be used: not failed, and a connection is open.
    #[must_use]
    pub fn usable(&self) -> bool {
        !self.health.failed.load(Ordering::Relaxed) && self.live.load(Ordering::Relaxed) > 0
    }

    /// Live connections.
    #[must_use]
    pub fn live_connections(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Queues `bytes` (a request run producing `frames` reply frames) on a live connection:
    /// connection `affinity mod count` when it is live, so that every request of one client
    /// connection travels on one backend connection and keeps its order (read your writes,
    /// pipelined or not), else the next live one.
    ///
    /// # Errors
    /// [`CallError::Down`] when failed or without a live connection, [`CallError::Busy`]
    /// when every connection's queue is full. Never waits.
    pub fn submit(&self, bytes: Bytes, frames: usize, affinity: usize) -> Result<Reply, CallError> {
        if !self.usable() {
            return Err(CallError::Down {
                addr: self.addr.clone(),
            });
        }
        let (reply, rx) = oneshot::channel();
        let mut call = Call {
            bytes,
            frames,
            reply,
        };
        let count = self.slots.len();
        let start = affinity;
        let mut busy = false;
        for i in 0..count {
            let conn = self.slots[(start + i) % count].lock().clone();
            let Some(conn) = conn else { continue };
            match conn.tx.try_send(call) {
                Ok(()) => {
                    self.health.calls.fetch_add(1, Ordering::Relaxed);
                    return Ok(rx);
                }
                Err(mpsc::error::TrySendError::Full(back)) => {
                    busy = true;
                    call = back;
                }
                Err(mpsc::error::TrySendError::Closed(back)) => call = back,
            }
        }
        self.wake.notify_one();
        let addr = self.addr.clone();
        Err(if busy {
            CallError::Busy { addr }
        } else {
            CallError::Down { addr }
        })
    }

    /// Waits for a submitted call until `deadline`, scoring the outcome.
    ///
    /// # Errors
    /// [`CallError::Timeout`] at the deadline, [`CallError::Lost`] when the connection
    /// closed first.
    pub async fn wait(
        &self,
        reply: Reply,
        deadline: tokio::time::Instant,
    ) -> Result<Frames, CallError> {
        match tokio::time::timeout_at(deadline, reply).await {
            Ok(Ok(Ok(frames))) => {
                self.success();
                Ok(frames)
            }
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(CallError::Lost {
                addr: self.addr.clone(),
            }),
            Err(_) => {
                self.timed_out();
                Err(CallError::Timeout {
                    addr: self.addr.clone(),
                })
            }
        }
    }

    /// [`Member::submit`] then [`Member::wait`].
    ///
    /// # Errors
    /// As those two.
    pub async fn call(
        &self,
        bytes: Bytes,
        frames: usize,
        affinity: usize,
        deadline: tokio::time::Instant,
    ) -> Result<Frames, CallError> {
        let reply = self.submit(bytes, frames, affinity)?;
        self.wait(reply, deadline).await
    }

    fn success(&self) {
        let health = &self.health;
        if health.unreliability.load(Ordering::Relaxed) != 0 {
            let _ = health
                .unreliability
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| Some(u / 2));
        }
        *self.last_call.lock() = Instant::now();
    }

    fn timed_out(&self) {
        let health = &self.health;
        health.timeouts.fetch_add(1, Ordering::Relaxed);
        let score = health
            .unreliability
            .fetch_add(UNRELIABILITY_TIMEOUT, Ordering::Relaxed)
            + UNRELIABILITY_TIMEOUT;
        if score > UNRELIABILITY_FAILED && !health.failed.swap(true, Ordering::Relaxed) {
            tracing::warn!("backend {} failed: unreliability {score}", self.addr);
        }
    }
}

/// Reconnects, pings and watches one member until it is dropped or stopped.
async fn supervise(weak: Weak<Member>) {
    let mut backoff_ms = 0u64;
    loop {
        let Some(member) = weak.upgrade() else { return };
        if member.stopped.load(Ordering::Relaxed) {
            return;
        }
        let settings = member.settings.clone();
        let all_live = reconnect(&member).await;
        let live = member.live_connections();
        reap_stuck(&member);
        ping_if_idle(&member).await;
        update_failed(&member, live);
        let wake = member.wake.clone();
        drop(member);
        let pause = if all_live {
            backoff_ms = 0;
            Duration::from_millis(settings.ping_interval_ms.min(1000))
        } else {
            backoff_ms = if backoff_ms == 0 {
                settings.reconnect_min_ms
            } else {
                (backoff_ms * 2).min(settings.reconnect_max_ms)
            };
            jitter(backoff_ms)
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = wake.notified(), if all_live => {}
        }
    }
}

/// `ms` ± 50 %.
fn jitter(ms: u64) -> Duration {
    let spread = rand::random::<u64>() % (ms + 1);
    Duration::from_millis(ms / 2 + spread)
}

/// Opens a connection in every empty or closed slot; true when every slot is live.
async fn reconnect(member: &Arc<Member>) -> bool {
    let mut all_live = true;
    for slot in &member.slots {
        let dead = slot.lock().as_ref().is_none_or(|c| c.closed());
        if !dead {
            continue;
        }
        slot.lock().take();
        let timeout = Duration::from_millis(member.settings.connect_timeout_ms);
        let opened = match connect(&member.addr, timeout, member.wake.clone()).await {
            Ok(conn) => handshake(conn, timeout).await,
            Err(e) => Err(e),
        };
        match opened {
            Ok(conn) => {
                {
                    let mut p = conn.pending.lock();
                    if !p.closed {
                        member.live.fetch_add(1, Ordering::Relaxed);
                        p.live = Some(member.live.clone());
                    }
                }
                *slot.lock() = Some(Arc::new(conn));
            }
            Err(e) => {
                all_live = false;
                let failures = member
                    .health
                    .connect_failures
                    .fetch_add(1, Ordering::Relaxed);
                if failures.is_multiple_of(20) {
                    tracing::warn!("backend {}: connect failed: {e}", member.addr);
                }
                // A refused connect means the rest would be refused too.
                break;
            }
        }
    }
    all_live
}

/// A new connection counts only once it answered `version`: a server that accepts and
/// closes (a dying process, a listening proxy of a dead host) stays failed.
async fn handshake(conn: Conn, timeout: Duration) -> std::io::Result<Conn> {
    let (reply, rx) = oneshot::channel();
    let call = Call {
        bytes: Bytes::from_static(b"version\r\n"),
        frames: 1,
        reply,
    };
    let failed =
        |what: &str| std::io::Error::new(std::io::ErrorKind::ConnectionAborted, what.to_string());
    conn.tx
        .try_send(call)
        .map_err(|_| failed("connection closed"))?;
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(Ok(frames))) if frames.first().is_some_and(|f| f.starts_with(b"VERSION")) => Ok(conn),
        Ok(Ok(Ok(_))) => Err(failed("no VERSION reply")),
        Ok(_) => Err(failed("closed before answering version")),
        Err(_) => Err(failed("no answer to version")),
    }
}

/// Closes connections whose oldest call waited past `stuck_ms`.
fn reap_stuck(member: &Member) {
    let limit = Duration::from_millis(member.settings.stuck_ms);
    for slot in &member.slots {
        let stuck = slot
            .lock()
            .as_ref()
            .and_then(|c| c.oldest())
            .is_some_and(|since| since.elapsed() > limit);
        if stuck {
            member.health.stuck.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "backend {}: a call waited over {limit:?}; reconnecting",
                member.addr
            );
            slot.lock().take();
        }
    }
}

/// Pings an idle member (or a failed one, so that it can recover).
async fn ping_if_idle(member: &Member) {
    let idle = member.last_call.lock().elapsed();
    let failed = !member.usable();
    if !failed && idle < Duration::from_millis(member.settings.ping_interval_ms) {
        return;
    }
    let Some(conn) = member.slots.iter().find_map(|s| s.lock().clone()) else {
        return;
    };
    let (reply, rx) = oneshot::channel();
    let call = Call {
        bytes: Bytes::from_static(b"version\r\n"),
        frames: 1,
        reply,
    };
    if conn.tx.try_send(call).is_err() {
        return;
    }
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(member.settings.get_timeout_ms.max(100));
    match tokio::time::timeout_at(deadline, rx).await {
        Ok(Ok(Ok(frames))) if frames.first().is_some_and(|f| f.starts_with(b"VERSION")) => {
            member.success();
        }
        _ => member.timed_out(),
    }
}

fn update_failed(member: &Member, live: usize) {
    let score = member.health.unreliability.load(Ordering::Relaxed);
    let failed = live == 0 || score > UNRELIABILITY_FAILED;
    let was = member.health.failed.swap(failed, Ordering::Relaxed);
    if was && !failed {
        tracing::info!("backend {} is back", member.addr);
    } else if !was && failed {
        tracing::warn!(
            "backend {} failed ({live} live connections, unreliability {score})",
            member.addr
        );
    }
}

async fn connect(addr: &str, timeout: Duration, wake: Arc<Notify>) -> std::io::Result<Conn> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout"))??;
    stream.set_nodelay(true)?;
    let peer: SocketAddr = stream.peer_addr()?;
    let (read, write) = stream.into_split();
    let pending = Arc::new(Mutex::new(Pending {
        closed: false,
        queue: VecDeque::new(),
        live: None,
    }));
    let (tx, rx) = mpsc::channel(CONN_QUEUE_MAX);
    let name = peer.to_string();
    let writer = tokio::spawn(write_loop(
        write,
        rx,
        pending.clone(),
        name.clone(),
        wake.clone(),
    ));
    let reader = tokio::spawn(read_loop(read, pending.clone(), name, wake));
    Ok(Conn {
        tx,
        pending,
        tasks: [writer, reader],
    })
}

async fn write_loop(
    mut write: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<Call>,
    pending: Arc<Mutex<Pending>>,
    addr: String,
    wake: Arc<Notify>,
) {
    let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
    while let Some(call) = rx.recv().await {
        let mut next = Some(call);
        {
            let mut p = pending.lock();
            while let Some(call) = next.take() {
                if p.closed {
                    let _ = call.reply.send(Err(CallError::Lost { addr: addr.clone() }));
                } else {
                    batch.extend_from_slice(&call.bytes);
                    p.queue.push_back(Waiting {
                        frames: call.frames,
                        got: Vec::with_capacity(call.frames),
                        reply: call.reply,
                        since: Instant::now(),
                    });
                }
                if batch.len() < WRITE_BATCH_BYTES {
                    next = rx.try_recv().ok();
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        if let Err(e) = write.write_all(&batch).await {
            tracing::debug!("backend {addr}: write failed: {e}");
            break;
        }
        batch.clear();
    }
    close(&pending, Some(&addr));
    wake.notify_one();
}

async fn read_loop(
    mut read: tokio::net::tcp::OwnedReadHalf,
    pending: Arc<Mutex<Pending>>,
    addr: String,
    wake: Arc<Notify>,
) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK_SIZE);
    let config = ReplyConfig::DEFAULT;
    'read: loop {
        buf.reserve(READ_CHUNK_SIZE);
        match read.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            let consumed = match parse_reply(&buf, &config) {
                ParsedReply::Incomplete => break,
                ParsedReply::Done { consumed, .. } => consumed,
                // An unknown line is still one delimited reply: hand it on as it is.
                ParsedReply::Bad {
                    consumed: Some(consumed),
                    ..
                } => consumed,
                ParsedReply::Bad { error, .. } => {
                    tracing::warn!("backend {addr}: unframeable reply ({error}); reconnecting");
                    break 'read;
                }
            };
            let frame = buf.split_to(consumed).freeze();
            if !deliver(&pending, frame) {
                tracing::warn!("backend {addr}: a reply nobody asked for; reconnecting");
                break 'read;
            }
        }
    }
    close(&pending, Some(&addr));
    wake.notify_one();
}

/// Hands `frame` to the oldest waiting call; false when none waits (the stream is out of
/// step).
fn deliver(pending: &Mutex<Pending>, frame: Bytes) -> bool {
    let done = {
        let mut p = pending.lock();
        let Some(front) = p.queue.front_mut() else {
            return false;
        };
        front.got.push(frame);
        if front.got.len() < front.frames {
            return true;
        }
        p.queue.pop_front()
    };
    if let Some(waiting) = done {
        let _ = waiting.reply.send(Ok(waiting.got));
    }
    true
}
