//! One client connection: read → parse (`koshka_proto::parse`, the node's own parser and
//! limits) → plan each key (`route`) → submit to backends → replies in request order.
//!
//! Every command of a read batch is planned and submitted before the first reply is awaited,
//! so a pipelined batch fans out in parallel; replies are then written in request order. A
//! command whose effects later commands must see (a write the proxy carries out in several
//! steps, any write in a cluster with a cache tier) is a *barrier*: the batch stops there and
//! the rest is planned after its reply. All requests of one client connection to one backend
//! travel on the same backend connection (affinity), so a client reads its own writes.
//!
//! # Memory of a client that does not read
//! Replies are written to the client whenever [`FLUSH_BYTES`] have gathered, and no input is
//! read while a write is pending, so a connection holds at most one batch: the replies of
//! [`BATCH_COMMANDS_MAX`] commands (each frame at most
//! `koshka_proto::response::REPLY_FRAME_SIZE_MAX`) plus [`FLUSH_BYTES`]. A client that
//! leaves its replies unread for `write_stall_timeout_ms` is disconnected and that memory is
//! released (`proxy_output_stalls`), as a node drops such a client.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use koshka_keys::Verb;
use koshka_proto::encode::{self, Retrieval};
use koshka_proto::{
    parse, parse_reply, BadRequest, Command, Keys, Parsed, ParsedReply, Reply as Parsed2, StoreMode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backend::{CallError, Member, Reply};
use crate::cluster::Cluster;
use crate::config::Family;
use crate::route::{self, ReadPlan, WritePlan};
use crate::stats::{add, bump};
use crate::{admin, Shared};

/// Commands planned from one read before their replies are awaited: bounds the replies a
/// connection holds at once.
pub const BATCH_COMMANDS_MAX: usize = 1024;
/// Reply bytes gathered before they are written, even in the middle of a multi-get: what a
/// connection buffers is bounded by this plus one shard's answer.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// Temp lists a client connection may hold (as the friends engine: the oldest is evicted).
pub const TEMP_LISTS_MAX: usize = 16;
/// Ids remembered from the proxy's new-id handshakes per client connection (the oldest is
/// forgotten): as many as a node's session keeps (`koshka_engine::SESSION_TEMP_ENTRIES_MAX`,
/// checked by the differential test), so `get newmsgid…` answers as one node would.
pub const NEW_IDS_MAX: usize = 16;
/// Bytes reserved in the input buffer before each read.
const READ_CHUNK_SIZE: usize = 16 * 1024;

/// Per-connection state the proxy keeps for its client.
#[derive(Debug, Default)]
pub struct Session {
    /// Connection number (backend affinity).
    pub id: usize,
    temps: VecDeque<(String, TempIds)>,
    new_ids: VecDeque<((i64, Vec<u8>), u32)>,
    /// Sub-requests completed by the last retrieval.
    pub last_complete: u32,
    /// Sub-requests sent by the last retrieval.
    pub last_fanout: u32,
}

impl Session {
    /// The friends temp list `tag` (user ids), if stored.
    #[must_use]
    pub fn temp(&self, tag: &str) -> Option<&Vec<u32>> {
        match self.temps.iter().find(|(t, _)| t == tag) {
            Some((_, TempIds::Users(ids))) => Some(ids),
            _ => None,
        }
    }

    /// The lists temp list `tag` (object ids, groups negative), if stored.
    #[must_use]
    pub fn object_temp(&self, tag: &str) -> Option<&Vec<i32>> {
        match self.temps.iter().find(|(t, _)| t == tag) {
            Some((_, TempIds::Objects(ids))) => Some(ids),
            _ => None,
        }
    }

    fn put_temp(&mut self, tag: String, ids: TempIds) {
        self.temps.retain(|(t, _)| *t != tag);
        if self.temps.len() == TEMP_LISTS_MAX {
            self.temps.pop_front();
        }
        self.temps.push_back((tag, ids));
    }

    /// The id a handshake allocated in `owner`'s mailbox for `tag`.
    #[must_use]
    pub fn new_id(&self, owner: i64, tag: &[u8]) -> Option<u32> {
        self.new_ids
            .iter()
            .rev()
            .find(|((o, t), _)| *o == owner && t == tag)
            .map(|(_, lid)| *lid)
    }

    fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::NewId { owner, tag, lid } => {
                self.new_ids
                    .retain(|((o, t), _)| !(*o == owner && *t == tag));
                if self.new_ids.len() == NEW_IDS_MAX {
                    self.new_ids.pop_front();
                }
                self.new_ids.push_back(((owner, tag), lid));
            }
            Effect::Complete { done, total } => {
                self.last_complete = done;
                self.last_fanout = total;
            }
            Effect::Invalidate(_) => {}
        }
    }
}

/// A temp list the proxy keeps for its client: one connection speaks one family's grammar.
#[derive(Debug)]
enum TempIds {
    /// The friends grammar's user ids.
    Users(Vec<u32>),
    /// The lists grammar's object ids.
    Objects(Vec<i32>),
}

/// A change to the session a reply carries (applied when the reply's turn comes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A handshake learned `owner`'s new id for the client's `tag`.
    NewId {
        /// Mailbox.
        owner: i64,
        /// The client's tag.
        tag: Vec<u8>,
        /// The id.
        lid: u32,
    },
    /// These owners' cached keys were invalidated (by the task, before its reply).
    Invalidate(Vec<i64>),
    /// How complete a retrieval was.
    Complete {
        /// Sub-requests answered in time.
        done: u32,
        /// Sub-requests sent.
        total: u32,
    },
}

/// A reply computed by a task, with its session effects.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The reply bytes.
    pub reply: Vec<u8>,
    /// Session changes.
    pub effects: Vec<Effect>,
}

impl Outcome {
    /// A reply without effects.
    #[must_use]
    pub fn reply(reply: Vec<u8>) -> Outcome {
        Outcome {
            reply,
            effects: Vec::new(),
        }
    }
}

/// One retrieval part's result.
pub enum Part {
    /// `VALUE` blocks (no `END`) and how many.
    Values(Bytes, u32),
    /// An error line: it replaces `END`.
    Error(Bytes),
    /// Missed the deadline or had no usable member.
    Missed,
    /// A key merged from several shard requests (a search): its `VALUE` block (empty when
    /// no shard answered), how many, and how many of its `total` shard requests answered in
    /// time (they count as sub-requests of the retrieval, for `#last_complete_count`).
    Merged {
        /// `VALUE` block.
        values: Bytes,
        /// Values in `values` (0 or 1).
        count: u32,
        /// Shards that answered in time.
        done: u32,
        /// Shards asked.
        total: u32,
    },
}

/// A part of a retrieval in flight.
pub type PartFuture = Pin<Box<dyn Future<Output = Part> + Send>>;

/// What a single forwarded request does with its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A one-key retrieval: on failure `END` (partial, counted).
    Get,
    /// A write: on failure `SERVER_ERROR`; `silent` (noreply) drops the reply.
    Write { silent: bool },
    /// A meta command: on failure `SERVER_ERROR`; a reply starting with `drop` (the code a
    /// `q` flag hides) is not written.
    Meta { drop: Option<&'static [u8]> },
}

struct Forward {
    member: Arc<Member>,
    reply: Reply,
    deadline: Instant,
    kind: Kind,
}

enum Slot {
    Ready(Vec<u8>),
    Static(&'static [u8]),
    Nothing,
    Forward(Forward),
    Gather(Vec<PartFuture>),
    Task(JoinHandle<Outcome>),
    /// Keys answered from the session when their turn comes (after earlier replies' effects).
    Deferred(Vec<Vec<u8>>),
}

/// Serves one client connection until it closes.
pub async fn serve(
    mut stream: TcpStream,
    cell: Arc<crate::ClusterCell>,
    shared: Arc<Shared>,
    id: usize,
) {
    let mut input = BytesMut::with_capacity(READ_CHUNK_SIZE);
    let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK_SIZE);
    let mut swallow = 0usize;
    let mut session = Session {
        id,
        ..Session::default()
    };
    let mut pending_parse = false;
    loop {
        if !pending_parse {
            input.reserve(READ_CHUNK_SIZE);
            match stream.read_buf(&mut input).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        let skip = swallow.min(input.len());
        input.advance(skip);
        swallow -= skip;
        let cluster = cell.load();
        let mut conn = Conn {
            cluster: &cluster,
            shared: &shared,
            session: &mut session,
        };
        let (slots, close, more, swallow_more) = conn.plan_batch(&mut input);
        swallow += swallow_more;
        pending_parse = more;
        let mut writer = Writer {
            stream: &mut stream,
            stall: std::time::Duration::from_millis(cluster.settings.write_stall_timeout_ms),
            cluster: &cluster,
        };
        for slot in slots {
            if resolve(slot, &cluster, &mut session, &mut out, &mut writer)
                .await
                .is_err()
            {
                return;
            }
            if out.len() >= FLUSH_BYTES && writer.write(&mut out).await.is_err() {
                return;
            }
        }
        if writer.write(&mut out).await.is_err() {
            return;
        }
        if out.capacity() > 4 * FLUSH_BYTES {
            out.shrink_to(READ_CHUNK_SIZE);
        }
        if close {
            return;
        }
    }
}

/// The client side of a connection: writes that give up when the client stops reading.
struct Writer<'a> {
    stream: &'a mut TcpStream,
    stall: std::time::Duration,
    cluster: &'a Cluster,
}

impl Writer<'_> {
    /// Writes and clears `out`. An error when the client is gone, or when it took nothing for
    /// the stall timeout (counted): the connection must close.
    async fn write(&mut self, out: &mut Vec<u8>) -> std::io::Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        let mut written = 0;
        while written < out.len() {
            match tokio::time::timeout(self.stall, self.stream.write(&out[written..])).await {
                Ok(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(Ok(n)) => written += n,
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    bump(&self.cluster.stats.output_stalls);
                    return Err(std::io::ErrorKind::TimedOut.into());
                }
            }
        }
        out.clear();
        Ok(())
    }
}

struct Conn<'a> {
    cluster: &'a Arc<Cluster>,
    shared: &'a Arc<Shared>,
    session: &'a mut Session,
}

impl Conn<'_> {
    /// Plans the complete commands at the front of `input`: the slots, whether to close after
    /// them, whether complete commands remain (a barrier stopped the batch), and bytes to
    /// swallow.
    fn plan_batch(&mut self, input: &mut BytesMut) -> (Vec<Slot>, bool, bool, usize) {
        let mut slots = Vec::new();
        loop {
            if slots.len() >= BATCH_COMMANDS_MAX {
                return (slots, false, true, 0);
            }
            let parsed = parse(input, &self.cluster.parse);
            match parsed {
                Parsed::Incomplete => return (slots, false, false, 0),
                Parsed::Bad {
                    error,
                    consumed,
                    swallow,
                    noreply,
                } => {
                    if error == BadRequest::TooLarge {
                        if let Some(slot) = self.delete_stale(&input[..consumed]) {
                            slots.push(slot);
                        }
                    }
                    if !noreply {
                        let line = error.reply().into_owned();
                        if !line.is_empty() {
                            bump(&self.cluster.stats.client_errors);
                        }
                        slots.push(Slot::Ready(line));
                    }
                    input.advance(consumed);
                    let skip = swallow.min(input.len());
                    input.advance(skip);
                    if error.closes() {
                        return (slots, true, false, 0);
                    }
                    if swallow > skip {
                        return (slots, false, false, swallow - skip);
                    }
                }
                Parsed::Done { command, consumed } => {
                    bump(&self.cluster.stats.commands);
                    if command == Command::Quit {
                        return (slots, true, false, 0);
                    }
                    let raw = &input[..consumed];
                    let (slot, barrier) = self.dispatch(&command, raw);
                    slots.push(slot);
                    input.advance(consumed);
                    if barrier {
                        return (slots, false, true, 0);
                    }
                }
            }
        }
    }

    /// Plans one command; true when it is a barrier.
    fn dispatch(&mut self, command: &Command<'_>, raw: &[u8]) -> (Slot, bool) {
        // A write is a barrier when a cache (the tier's families, or the feed cache's friends
        // and news) must be invalidated before later commands read.
        let cached = !self.cluster.config.cache.is_empty()
            || self.shared.feed_cache.watches(self.cluster.family());
        match command {
            Command::Get { keys, cas } => {
                let kind = if *cas {
                    Retrieval::Gets
                } else {
                    Retrieval::Get
                };
                (self.retrieval(*keys, kind, raw), false)
            }
            Command::Gat { exptime, keys, cas } => {
                let kind = if *cas {
                    Retrieval::Gats(*exptime)
                } else {
                    Retrieval::Gat(*exptime)
                };
                (self.retrieval(*keys, kind, raw), false)
            }
            Command::Store {
                mode,
                key,
                data,
                noreply,
                ..
            } => {
                let verb = if *mode == StoreMode::Set {
                    Verb::Set
                } else {
                    Verb::Get
                };
                let plan = if verb == Verb::Set {
                    route::write(self.cluster, verb, key, data)
                } else {
                    WritePlan::Shard(self.plain_or_owner(key))
                };
                self.write(plan, command, raw, *noreply, cached)
            }
            Command::Delete { key, noreply } => {
                let plan = route::write(self.cluster, Verb::Delete, key, b"");
                self.write(plan, command, raw, *noreply, cached)
            }
            Command::Arith {
                key, incr, noreply, ..
            } => {
                let verb = if *incr { Verb::Incr } else { Verb::Decr };
                let plan = route::write(self.cluster, verb, key, b"");
                self.write(plan, command, raw, *noreply, cached)
            }
            Command::Touch { key, noreply, .. } => {
                let plan = WritePlan::Shard(self.plain_or_owner(key));
                self.write(plan, command, raw, *noreply, cached)
            }
            Command::FlushAll { noreply, .. } => (self.broadcast(command, *noreply), true),
            Command::Stats { group } => (self.stats(group), false),
            Command::Version => (
                Slot::Ready(format!("VERSION {}\r\n", koshka_proto::VERSION).into_bytes()),
                false,
            ),
            Command::Verbosity { noreply } => (
                if *noreply {
                    Slot::Nothing
                } else {
                    Slot::Static(koshka_proto::reply::OK)
                },
                false,
            ),
            Command::SlabsAutomove { .. } | Command::SlabsReassign { .. } => {
                (Slot::Static(koshka_proto::reply::OK), false)
            }
            Command::Quit => (Slot::Nothing, true),
            Command::MetaNoop => (Slot::Static(koshka_proto::reply::MN), false),
            Command::MetaDebug { key } => (self.meta(key, raw, None), false),
            Command::MetaGet { key, flags } => {
                let drop = flags.has(b'q').then_some(&b"EN"[..]);
                (self.meta(key, raw, drop), false)
            }
            Command::MetaSet { key, flags, .. }
            | Command::MetaDelete { key, flags }
            | Command::MetaArith { key, flags } => {
                let drop = flags.has(b'q').then_some(&b"HD"[..]);
                (self.meta(key, raw, drop), cached)
            }
        }
    }

    /// A `set` whose value is over the limit removes the old value, as on a node (and in
    /// memcached), so a refused write never leaves a stale value readable: the proxy sends
    /// the shard a `delete` whose reply it drops. Plain kv only (a compiled key names an
    /// update, not a value); `None` for any other line.
    fn delete_stale(&mut self, line: &[u8]) -> Option<Slot> {
        if self.cluster.family() != Family::Kv {
            return None;
        }
        let key = koshka_proto::request::set_key(line.trim_ascii_end())?.to_vec();
        bump(&self.cluster.stats.stale_deletes);
        let command = Command::Delete {
            key: &key,
            noreply: true,
        };
        let plan = WritePlan::Shard(self.plain_or_owner(&key));
        let cached = !self.cluster.config.cache.is_empty();
        let (slot, _barrier) = self.write(plan, &command, b"", true, cached);
        Some(slot)
    }

    fn plain_or_owner(&self, key: &[u8]) -> u32 {
        self.cluster.shard_of_plain(key)
    }

    fn deadline_get(&self) -> Instant {
        Instant::now() + std::time::Duration::from_millis(self.cluster.settings.get_timeout_ms)
    }

    fn deadline_set(&self) -> Instant {
        Instant::now() + std::time::Duration::from_millis(self.cluster.settings.set_timeout_ms)
    }

    fn retrieval(&mut self, keys: Keys<'_>, kind: Retrieval, raw: &[u8]) -> Slot {
        let stats = &self.cluster.stats;
        bump(&stats.retrievals);
        add(&stats.keys_requested, keys.len() as u64);
        let plans: Vec<(&[u8], ReadPlan)> = keys
            .iter()
            .map(|key| (key, route::read(self.cluster, key)))
            .collect();
        let local = |p: &ReadPlan| matches!(p, ReadPlan::Admin | ReadPlan::NewId { .. });
        if plans.iter().all(|(_, p)| local(p)) {
            return Slot::Deferred(plans.iter().map(|(k, _)| k.to_vec()).collect());
        }
        if let [(key, ReadPlan::Shard(shard))] = plans.as_slice() {
            if !self.cached(key) {
                return self.forward_get(*shard, raw);
            }
        }
        let mut by_shard: BTreeMap<u32, Vec<&[u8]>> = BTreeMap::new();
        let mut parts: Vec<PartFuture> = Vec::new();
        for (key, plan) in plans {
            match plan {
                ReadPlan::Shard(shard) if self.cached(key) => {
                    parts.push(crate::cache::read(
                        self.cluster,
                        self.shared,
                        key,
                        shard,
                        kind,
                        self.session.id,
                    ));
                }
                ReadPlan::Shard(shard) => by_shard.entry(shard).or_default().push(key),
                ReadPlan::Friends(get) => {
                    bump(&stats.scatter_gathers);
                    parts.push(crate::scatter::friends(
                        self.cluster.clone(),
                        self.shared.clone(),
                        key.to_vec(),
                        get,
                        None,
                        self.session,
                    ));
                }
                ReadPlan::Pinned { get, shard } => {
                    parts.push(crate::scatter::friends(
                        self.cluster.clone(),
                        self.shared.clone(),
                        key.to_vec(),
                        get,
                        Some(shard),
                        self.session,
                    ));
                }
                ReadPlan::Search(search) => {
                    parts.push(crate::search::scatter(
                        self.cluster.clone(),
                        key.to_vec(),
                        search,
                        self.session.id,
                    ));
                }
                ReadPlan::Lists { get, shard } => parts.push(crate::lists::read(
                    self.cluster.clone(),
                    self.shared,
                    key.to_vec(),
                    get,
                    shard,
                    self.session,
                )),
                ReadPlan::Feed => parts.push(crate::feed::start(
                    self.cluster.clone(),
                    self.shared.clone(),
                    key.to_vec(),
                    self.session.id,
                )),
                ReadPlan::Admin | ReadPlan::NewId { .. } => {
                    let value = admin::local_value(self.cluster, self.shared, self.session, key);
                    let count = u32::from(!value.is_empty());
                    parts.push(Box::pin(std::future::ready(Part::Values(
                        value.into(),
                        count,
                    ))));
                }
            }
        }
        if by_shard.len() > 1 {
            bump(&stats.fanout_requests);
        }
        add(&stats.fanout_shards, by_shard.len() as u64);
        let deadline = self.deadline_get();
        for (shard, keys) in by_shard {
            let mut bytes =
                Vec::with_capacity(16 + keys.iter().map(|k| k.len() + 1).sum::<usize>());
            encode::retrieval(&mut bytes, kind, keys);
            parts.push(self.shard_part(shard, bytes.into(), deadline));
        }
        Slot::Gather(parts)
    }

    /// Whether `key` is read through the cache tier.
    fn cached(&self, key: &[u8]) -> bool {
        self.shared.cache.is_some() && crate::cache::family_cached(self.cluster, key)
    }

    fn shard_part(&self, shard: u32, bytes: Bytes, deadline: Instant) -> PartFuture {
        let stats = self.cluster.stats.clone();
        let member = match self.cluster.reader(shard) {
            Ok(member) => member.clone(),
            Err(_) => {
                bump(&stats.shard_unavailable);
                return Box::pin(std::future::ready(Part::Missed));
            }
        };
        let submitted = member.submit(bytes, 1, self.session.id);
        Box::pin(async move {
            let reply = match submitted {
                Ok(reply) => reply,
                Err(_) => {
                    bump(&stats.shard_unavailable);
                    return Part::Missed;
                }
            };
            match member.wait(reply, deadline).await {
                Ok(frames) => values_part(frames.into_iter().next().unwrap_or_default()),
                Err(CallError::Timeout { .. }) => {
                    bump(&stats.shard_timeouts);
                    Part::Missed
                }
                Err(_) => {
                    bump(&stats.shard_unavailable);
                    Part::Missed
                }
            }
        })
    }

    fn forward_get(&mut self, shard: u32, raw: &[u8]) -> Slot {
        add(&self.cluster.stats.fanout_shards, 1);
        let deadline = self.deadline_get();
        match self.cluster.reader(shard) {
            Ok(member) => match member.submit(Bytes::copy_from_slice(raw), 1, self.session.id) {
                Ok(reply) => Slot::Forward(Forward {
                    member: member.clone(),
                    reply,
                    deadline,
                    kind: Kind::Get,
                }),
                Err(_) => self.missed_get(),
            },
            Err(_) => self.missed_get(),
        }
    }

    fn missed_get(&mut self) -> Slot {
        let stats = &self.cluster.stats;
        bump(&stats.shard_unavailable);
        bump(&stats.partial_answers);
        self.session.apply(Effect::Complete { done: 0, total: 1 });
        Slot::Static(koshka_proto::reply::END)
    }

    /// Plans an update; true when it is a barrier.
    fn write(
        &mut self,
        plan: WritePlan,
        command: &Command<'_>,
        raw: &[u8],
        noreply: bool,
        cached: bool,
    ) -> (Slot, bool) {
        bump(&self.cluster.stats.writes);
        match plan {
            WritePlan::Shard(shard) => {
                let bytes = if noreply {
                    replying(command)
                } else {
                    raw.to_vec()
                };
                let slot = self.forward_write(shard, bytes, noreply, command);
                (slot, cached)
            }
            WritePlan::Temp { tag } => {
                let Command::Store { data, .. } = command else {
                    return (Slot::Static(koshka_proto::reply::ERROR), false);
                };
                let parsed = if self.cluster.family() == Family::Lists {
                    koshka_keys::lists::parse_ids(data).map(TempIds::Objects)
                } else {
                    koshka_keys::friends::parse_id_list(data).map(TempIds::Users)
                };
                let reply: Vec<u8> = match parsed {
                    Ok(ids) => {
                        self.session.put_temp(tag, ids);
                        koshka_proto::reply::STORED.to_vec()
                    }
                    Err(e) => format!("CLIENT_ERROR {e}\r\n").into_bytes(),
                };
                (
                    if noreply {
                        Slot::Nothing
                    } else {
                        Slot::Ready(reply)
                    },
                    false,
                )
            }
            WritePlan::ObjectDelete => {
                let task = tokio::spawn(crate::lists::delete_object(
                    self.cluster.clone(),
                    self.shared.clone(),
                    replying(command).into(),
                    self.session.id,
                    self.deadline_set(),
                ));
                (task_slot(task, noreply), true)
            }
            plan => {
                let task = crate::twin::start(
                    self.cluster.clone(),
                    self.shared.clone(),
                    plan,
                    command_value(command),
                    command_flags(command),
                    self.session.id,
                );
                (task_slot(task, noreply), true)
            }
        }
    }

    fn forward_write(
        &mut self,
        shard: u32,
        bytes: Vec<u8>,
        silent: bool,
        command: &Command<'_>,
    ) -> Slot {
        let deadline = self.deadline_set();
        let submitted = self.cluster.writer(shard).and_then(|member| {
            Ok((
                member.clone(),
                member.submit(bytes.into(), 1, self.session.id)?,
            ))
        });
        match submitted {
            Ok((member, reply)) => {
                if crate::cache::invalidates(self.cluster, self.shared) {
                    let key = command_key(command);
                    let owners = crate::cache::owners_of_write(self.cluster, &key);
                    return Slot::Task(crate::cache::write_then_invalidate(
                        self.cluster.clone(),
                        self.shared.clone(),
                        member,
                        reply,
                        deadline,
                        owners,
                        silent,
                    ));
                }
                Slot::Forward(Forward {
                    member,
                    reply,
                    deadline,
                    kind: Kind::Write { silent },
                })
            }
            Err(e) => {
                if silent {
                    Slot::Nothing
                } else {
                    bump(&self.cluster.stats.server_errors);
                    Slot::Ready(server_error(&e))
                }
            }
        }
    }

    fn meta(&mut self, key: &[u8], raw: &[u8], drop: Option<&'static [u8]>) -> Slot {
        let shard = self.plain_or_owner(key);
        let deadline = self.deadline_set();
        let bytes = if drop.is_some() {
            strip_quiet(raw)
        } else {
            raw.to_vec()
        };
        let submitted = self
            .cluster
            .writer(shard)
            .or_else(|_| self.cluster.reader(shard))
            .and_then(|member| {
                Ok((
                    member.clone(),
                    member.submit(bytes.into(), 1, self.session.id)?,
                ))
            });
        match submitted {
            Ok((member, reply)) => Slot::Forward(Forward {
                member,
                reply,
                deadline,
                kind: Kind::Meta { drop },
            }),
            Err(e) => {
                bump(&self.cluster.stats.server_errors);
                Slot::Ready(server_error(&e))
            }
        }
    }

    /// `flush_all`: every shard's primary; `OK` when every one said so.
    fn broadcast(&mut self, command: &Command<'_>, noreply: bool) -> Slot {
        let bytes: Bytes = replying(command).into();
        let deadline = self.deadline_set();
        let mut calls = Vec::new();
        for shard in 0..self.cluster.count() {
            match self.cluster.writer(shard) {
                Ok(member) => calls.push((
                    member.clone(),
                    member.submit(bytes.clone(), 1, self.session.id),
                )),
                Err(e) => calls.push((
                    self.cluster.shards[shard as usize].members[0].clone(),
                    Err(e),
                )),
            }
        }
        let task = tokio::spawn(async move {
            let mut first_error = None;
            for (member, submitted) in calls {
                let result = match submitted {
                    Ok(reply) => member.wait(reply, deadline).await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(frames) if frames.first().is_some_and(|f| f.as_ref() == b"OK\r\n") => {}
                    Ok(frames) => {
                        first_error
                            .get_or_insert(frames.into_iter().next().unwrap_or_default().to_vec());
                    }
                    Err(e) => {
                        first_error.get_or_insert(server_error(&e));
                    }
                }
            }
            Outcome::reply(first_error.unwrap_or_else(|| koshka_proto::reply::OK.to_vec()))
        });
        task_slot(task, noreply)
    }

    /// `stats [group]`: every shard's numbers summed (the proxy's own `pid`, `uptime`, `time`,
    /// `version`), then the cluster's `proxy_*` counters for the general group and `proxy`.
    fn stats(&mut self, group: &[u8]) -> Slot {
        let cluster = self.cluster.clone();
        let shared = self.shared.clone();
        let group = group.to_vec();
        let deadline = self.deadline_get();
        let affinity = self.session.id;
        Slot::Task(tokio::spawn(async move {
            Outcome::reply(admin::stats(&cluster, &shared, &group, deadline, affinity).await)
        }))
    }
}

/// The slot of a write carried out by `task`, its reply dropped for `noreply`.
fn task_slot(task: JoinHandle<Outcome>, noreply: bool) -> Slot {
    if noreply {
        Slot::Task(silence(task))
    } else {
        Slot::Task(task)
    }
}

/// A `SERVER_ERROR` line for a failed call.
#[must_use]
pub fn server_error(e: &CallError) -> Vec<u8> {
    let mut out = Vec::new();
    koshka_proto::reply::server_error(&mut out, &e.to_string());
    out
}

/// Splits a retrieval frame into its `VALUE` blocks (without `END`) or its error line.
#[must_use]
pub fn values_part(frame: Bytes) -> Part {
    match parse_reply(&frame, &koshka_proto::ReplyConfig::DEFAULT) {
        ParsedReply::Done {
            reply: Parsed2::Values(values),
            ..
        } => {
            let count = u32::try_from(values.len()).unwrap_or(u32::MAX);
            let end = frame.len().saturating_sub(koshka_proto::reply::END.len());
            Part::Values(frame.slice(..end), count)
        }
        ParsedReply::Done {
            reply: Parsed2::Error(_),
            ..
        } => Part::Error(frame),
        _ => Part::Error(Bytes::from_static(
            b"SERVER_ERROR unexpected reply from a shard\r\n",
        )),
    }
}

/// The request bytes of `command` with `noreply` cleared, so the backend always answers
/// and its reply stream stays in step (the proxy drops the reply instead).
fn replying(command: &Command<'_>) -> Vec<u8> {
    let mut copy = command.clone();
    match &mut copy {
        Command::Store { noreply, .. }
        | Command::Delete { noreply, .. }
        | Command::Arith { noreply, .. }
        | Command::Touch { noreply, .. }
        | Command::FlushAll { noreply, .. }
        | Command::Verbosity { noreply } => *noreply = false,
        _ => {}
    }
    let mut out = Vec::new();
    copy.encode(&mut out);
    out
}

/// A meta request line without its `q` token (the proxy drops the replies `q` hides, so the
/// backend's reply stream stays one reply per request).
fn strip_quiet(raw: &[u8]) -> Vec<u8> {
    let line_end = memchr::memchr(b'\n', raw).map_or(raw.len(), |nl| nl + 1);
    let (line, rest) = raw.split_at(line_end);
    let text = line
        .strip_suffix(b"\r\n")
        .or_else(|| line.strip_suffix(b"\n"))
        .unwrap_or(line);
    let mut out = Vec::with_capacity(raw.len());
    for (i, token) in text
        .split(|b| *b == b' ')
        .filter(|t| !t.is_empty() && *t != b"q")
        .enumerate()
    {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(token);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(rest);
    out
}

fn command_key(command: &Command<'_>) -> Vec<u8> {
    match command {
        Command::Store { key, .. }
        | Command::Delete { key, .. }
        | Command::Arith { key, .. }
        | Command::Touch { key, .. } => key.to_vec(),
        Command::MetaSet { key, .. }
        | Command::MetaDelete { key, .. }
        | Command::MetaArith { key, .. } => key.to_vec(),
        _ => Vec::new(),
    }
}

/// The value an update travels with: a store's data, an arith's delta.
fn command_value(command: &Command<'_>) -> Vec<u8> {
    match command {
        Command::Store { data, .. } => data.to_vec(),
        Command::Arith { delta, .. } => delta.to_string().into_bytes(),
        _ => Vec::new(),
    }
}

/// A store's client flags and exptime.
fn command_flags(command: &Command<'_>) -> (u32, i64) {
    match command {
        Command::Store { flags, exptime, .. } => (*flags, *exptime),
        _ => (0, 0),
    }
}

/// A task whose reply is dropped (`noreply`).
fn silence(task: JoinHandle<Outcome>) -> JoinHandle<Outcome> {
    tokio::spawn(async move {
        let mut outcome = task.await.unwrap_or_default();
        outcome.reply.clear();
        outcome
    })
}

/// Writes one slot's reply into `out` (flushing to the client when it grows), applying its
/// session effects.
async fn resolve(
    slot: Slot,
    cluster: &Cluster,
    session: &mut Session,
    out: &mut Vec<u8>,
    writer: &mut Writer<'_>,
) -> std::io::Result<()> {
    let stats = &cluster.stats;
    match slot {
        Slot::Ready(bytes) => out.extend_from_slice(&bytes),
        Slot::Static(bytes) => out.extend_from_slice(bytes),
        Slot::Nothing => {}
        Slot::Forward(forward) => resolve_forward(forward, cluster, session, out).await,
        Slot::Task(task) => {
            let outcome = task
                .await
                .unwrap_or_else(|_| Outcome::reply(b"SERVER_ERROR proxy task failed\r\n".to_vec()));
            if outcome.reply.starts_with(b"SERVER_ERROR") {
                bump(&stats.server_errors);
            }
            out.extend_from_slice(&outcome.reply);
            for effect in outcome.effects {
                session.apply(effect);
            }
        }
        Slot::Deferred(keys) => {
            for key in keys {
                // NOTE: admin values never need the shared state's async parts.
                let value = admin::session_value(cluster, session, &key);
                out.extend_from_slice(&value);
            }
            out.extend_from_slice(koshka_proto::reply::END);
        }
        Slot::Gather(parts) => {
            let mut total = u32::try_from(parts.len()).unwrap_or(u32::MAX);
            let mut done = 0u32;
            let mut error: Option<Bytes> = None;
            let mut pending: FuturesUnordered<PartFuture> = parts.into_iter().collect();
            while let Some(part) = pending.next().await {
                match part {
                    Part::Values(values, count) => {
                        done += 1;
                        add(&stats.keys_found, u64::from(count));
                        out.extend_from_slice(&values);
                    }
                    Part::Error(line) => {
                        done += 1;
                        error.get_or_insert(line);
                    }
                    Part::Missed => {}
                    Part::Merged {
                        values,
                        count,
                        done: answered,
                        total: asked,
                    } => {
                        // The part's shard requests replace it in the counts.
                        total = total.saturating_sub(1).saturating_add(asked);
                        done = done.saturating_add(answered);
                        add(&stats.keys_found, u64::from(count));
                        out.extend_from_slice(&values);
                    }
                }
                if out.len() >= FLUSH_BYTES {
                    writer.write(out).await?;
                }
            }
            if done < total {
                bump(&stats.partial_answers);
            }
            session.apply(Effect::Complete { done, total });
            match error {
                Some(line) => {
                    bump(&stats.client_errors);
                    out.extend_from_slice(&line);
                }
                None => out.extend_from_slice(koshka_proto::reply::END),
            }
        }
    }
    Ok(())
}

async fn resolve_forward(
    forward: Forward,
    cluster: &Cluster,
    session: &mut Session,
    out: &mut Vec<u8>,
) {
    let stats = &cluster.stats;
    let Forward {
        member,
        reply,
        deadline,
        kind,
    } = forward;
    let result = member.wait(reply, deadline).await;
    match (kind, result) {
        (Kind::Get, Ok(frames)) => {
            session.apply(Effect::Complete { done: 1, total: 1 });
            for frame in frames {
                if frame.starts_with(b"VALUE") {
                    bump(&stats.keys_found);
                }
                out.extend_from_slice(&frame);
            }
        }
        (Kind::Get, Err(e)) => {
            if matches!(e, CallError::Timeout { .. }) {
                bump(&stats.shard_timeouts);
            } else {
                bump(&stats.shard_unavailable);
            }
            bump(&stats.partial_answers);
            session.apply(Effect::Complete { done: 0, total: 1 });
            out.extend_from_slice(koshka_proto::reply::END);
        }
        (Kind::Write { silent: true }, _) => {}
        (Kind::Meta { drop }, Ok(frames)) => {
            for frame in frames {
                if drop.is_some_and(|code| frame.starts_with(code)) {
                    continue;
                }
                out.extend_from_slice(&frame);
            }
        }
        (Kind::Write { silent: false }, Ok(frames)) => {
            for frame in frames {
                out.extend_from_slice(&frame);
            }
        }
        (Kind::Write { silent: false } | Kind::Meta { .. }, Err(e)) => {
            bump(&stats.server_errors);
            out.extend_from_slice(&server_error(&e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_flags_are_stripped_from_the_line_only() {
        assert_eq!(strip_quiet(b"mg foo v q k\r\n"), b"mg foo v k\r\n");
        assert_eq!(
            strip_quiet(b"ms foo 2 q T0\r\nqq\r\n"),
            b"ms foo 2 T0\r\nqq\r\n"
        );
    }

    #[test]
    fn noreply_is_cleared() {
        let Parsed::Done { command, .. } =
            parse(b"set a 1 2 3 noreply\r\nabc\r\n", &Default::default())
        else {
            panic!()
        };
        assert_eq!(replying(&command), b"set a 1 2 3\r\nabc\r\n");
    }

    #[test]
    fn sessions_bound_their_lists() {
        let mut session = Session::default();
        for i in 0..40 {
            session.put_temp(format!("t{i}"), TempIds::Users(vec![i]));
        }
        assert_eq!(session.temps.len(), TEMP_LISTS_MAX);
        assert_eq!(session.temp("t39"), Some(&vec![39]));
        assert_eq!(session.temp("t0"), None);
        for lid in 0..100 {
            session.apply(Effect::NewId {
                owner: 5,
                tag: format!("{lid}").into_bytes(),
                lid,
            });
        }
        assert_eq!(session.new_ids.len(), NEW_IDS_MAX);
        assert_eq!(session.new_id(5, b"99"), Some(99));
    }
}
