//! Writes the proxy carries out in several steps, and the durable queue of second halves.
//!
//! * **The new-id handshake.** Every update that allocates an id (`newmsg`, `sendmsg`,
//!   `newpost`, `repost`, `status`) is sent with a proxy-unique tag and pipelined, on the same
//!   backend connection, with `get newmsgid<owner>#<tag>`; the proxy remembers the id for the
//!   client's own tag, and answers the client's `get newmsgid…` itself. Tags never collide on
//!   the shared backend connections, and an application sees the handshake it knows.
//! * **Cross-shard send** `sendmsg<from>_<to>` (shards differ): (1) the sender's outbox copy,
//!   `set newmsg<from>` (`2,<to>`) → id A; (2) a queue record *deliver (from, to, A, flags,
//!   text)* appended and fsynced; (3) the recipient's inbox copy, `set newmsg<to>`
//!   (`1,<from>,A`) → id B; (4) `set peer_msg_id<from>_<A> B`; (5) a *done* record.
//! * **Cross-shard repost** `set repost<owner>` of a post on another shard's wall: (1) the
//!   original, `get post<orig>_<id>#2` on its shard (missing or deleted: `NOT_FOUND`, as on one
//!   node); (2) the copy, `set repost_half<owner>` with the original's text → id; (3) a record
//!   *copied (orig, id)*; (4) `incr flags<orig>_<id> 256` (COPIED) on the original's shard;
//!   (5) *done*.
//! * **Cross-shard friendship** `set friend<u>_<f> mask`: (1) `set friend_half<u>_<f> mask`;
//!   (2) a record *befriend (f, u)*; (3) on f's shard `get friend<f>_<u>` and, when absent,
//!   `set friend_half<f>_<u> 1` (a friend already there keeps its mask, as on one node);
//!   (4) *done*. `delete friend<u>_<f>` and `delete user<u>` queue `delete friend_half…` the
//!   same way.
//!
//! # The guarantee
//! The client's reply is the first half's reply. Once it is `STORED`/`DELETED`, the second
//! half is in the queue (fsynced when `twin.fsync`) and is retried, with back-off, until its
//! shard accepts it: after a second shard's outage, or a proxy crash and restart on the same
//! queue file, it lands. Retries are idempotent: a friend half is a set or a delete, and a
//! recipient copy is looked up before it is written again (the newest 64 messages of the
//! conversation are searched for one with `peer_msg_id` A), so it lands once. A half the
//! shard refuses for good (`CLIENT_ERROR`: a full mailbox, a map that moved the user) is
//! dropped, logged and counted. The window not covered: a proxy crash after the first half
//! and before the queue record is on disk (one round trip) leaves the first half alone, with
//! the client unanswered, as a node crash after its append and before its reply leaves it
//! unsure.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use koshka_keys::messages::{Query, Update};
use koshka_keys::Encode;
use koshka_proto::encode;
use koshka_proto::{parse_reply, ParsedReply, Reply};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backend::{CallError, Frames};
use crate::cluster::Cluster;
use crate::config::TwinSection;
use crate::conn::{server_error, Effect, Outcome};
use crate::route::WritePlan;
use crate::stats::bump;
use crate::Shared;

/// Most second halves waiting at once; a twin write past it answers `SERVER_ERROR` before
/// anything is written.
pub const QUEUE_ENTRIES_MAX: usize = 100_000;
/// Messages of a conversation searched for an already delivered recipient copy.
pub const DEDUPE_WINDOW: u32 = 64;

/// Message flag bits the proxy sets on the two copies of a split send (as the engine does on
/// one node).
const UNREAD: u32 = 1;
const OUTBOX: u32 = 2;

/// A second half waiting to land.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Half {
    /// The recipient's copy of a send, then the link of the sender's copy to it.
    Deliver {
        /// The messages cluster.
        cluster: String,
        /// Sender.
        from: i64,
        /// Recipient.
        to: i64,
        /// The sender's copy.
        from_lid: u32,
        /// The recipient copy's flags.
        flags: u32,
        /// The text value (`[subject\t]body`, kludges first).
        text: String,
    },
    /// The COPIED flag on a reposted original (`incr flags<owner>_<id> 256`).
    Copied {
        /// The wall cluster.
        cluster: String,
        /// The original's wall.
        owner: i64,
        /// The original.
        id: u32,
    },
    /// `friend` in `owner`'s list (mask 1 unless already there).
    Befriend {
        /// The friends cluster.
        cluster: String,
        /// Whose list.
        owner: u32,
        /// Who.
        friend: u32,
    },
    /// `friend` out of `owner`'s list.
    Unfriend {
        /// The friends cluster.
        cluster: String,
        /// Whose list.
        owner: u32,
        /// Who.
        friend: u32,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Record {
    Add { id: u64, half: Half },
    Done { id: u64 },
}

struct Waiting {
    half: Half,
    attempts: u32,
    next: Instant,
}

/// The queue of second halves: in memory, and in an append-only file of JSON lines when
/// `twin.queue` is set (`{"add":{"id":…,"half":…}}`, `{"done":{"id":…}}`), compacted on open.
pub struct Queue {
    file: Option<Mutex<std::fs::File>>,
    fsync: bool,
    waiting: Mutex<BTreeMap<u64, Waiting>>,
    next_id: AtomicU64,
    retry_min: Duration,
    retry_max: Duration,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("waiting", &self.waiting.lock().len())
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// Opens the queue: reads the file (a torn last line is dropped), keeps the halves without
    /// a *done* record, and rewrites the file with only those.
    ///
    /// # Errors
    /// When the file cannot be read or written.
    pub fn open(config: &TwinSection) -> std::io::Result<Queue> {
        let mut waiting = BTreeMap::new();
        let mut next_id = 1;
        let file = match &config.queue {
            None => None,
            Some(path) => {
                let halves = read_queue(path)?;
                let file = rewrite_queue(path, &halves)?;
                for (id, half) in halves {
                    next_id = next_id.max(id + 1);
                    waiting.insert(
                        id,
                        Waiting {
                            half,
                            attempts: 1,
                            next: Instant::now(),
                        },
                    );
                }
                if !waiting.is_empty() {
                    tracing::info!("twin queue: {} halves to land", waiting.len());
                }
                Some(Mutex::new(file))
            }
        };
        Ok(Queue {
            file,
            fsync: config.fsync,
            waiting: Mutex::new(waiting),
            next_id: AtomicU64::new(next_id),
            retry_min: Duration::from_millis(config.retry_min_ms),
            retry_max: Duration::from_millis(config.retry_max_ms),
        })
    }

    /// Halves waiting.
    #[must_use]
    pub fn len(&self) -> usize {
        self.waiting.lock().len()
    }

    /// Whether nothing waits.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records `half` durably; it waits (not yet due) until [`Queue::done`] or a retry.
    fn add(&self, half: Half) -> std::io::Result<u64> {
        if self.len() >= QUEUE_ENTRIES_MAX {
            return Err(std::io::Error::other(format!(
                "twin queue full ({QUEUE_ENTRIES_MAX} halves waiting)"
            )));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.append(
            &Record::Add {
                id,
                half: half.clone(),
            },
            self.fsync,
        )?;
        self.waiting.lock().insert(
            id,
            Waiting {
                half,
                attempts: 0,
                next: Instant::now() + self.retry_min,
            },
        );
        Ok(id)
    }

    /// The half landed (or was refused for good).
    fn done(&self, id: u64) {
        self.waiting.lock().remove(&id);
        // Not synced: a lost *done* only repeats an idempotent half after a crash.
        if let Err(e) = self.append(&Record::Done { id }, false) {
            tracing::error!("twin queue: cannot record a landed half: {e}");
        }
    }

    fn append(&self, record: &Record, sync: bool) -> std::io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let write = || {
            let mut file = file.lock();
            file.write_all(&line)?;
            if sync {
                file.sync_data()?;
            }
            Ok(())
        };
        if tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
        {
            tokio::task::block_in_place(write)
        } else {
            write()
        }
    }

    /// Syncs the file (shutdown).
    pub fn flush(&self) {
        if let Some(file) = &self.file {
            let _ = file.lock().sync_data();
        }
    }

    /// The halves due now, marked as attempted.
    fn due(&self) -> Vec<(u64, Half, u32)> {
        let now = Instant::now();
        let mut waiting = self.waiting.lock();
        let mut due = Vec::new();
        for (id, w) in waiting.iter_mut() {
            if w.next <= now {
                w.attempts += 1;
                let shift = w.attempts.min(16);
                let delay = self
                    .retry_min
                    .saturating_mul(1 << shift)
                    .min(self.retry_max);
                w.next = now + delay;
                due.push((*id, w.half.clone(), w.attempts));
            }
        }
        due
    }
}

fn read_queue(path: &PathBuf) -> std::io::Result<Vec<(u64, Half)>> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut halves = BTreeMap::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        match serde_json::from_str::<Record>(&line) {
            Ok(Record::Add { id, half }) => {
                halves.insert(id, half);
            }
            Ok(Record::Done { id }) => {
                halves.remove(&id);
            }
            // A torn last line (a crash mid-append): its half was never acknowledged.
            Err(e) => tracing::warn!("twin queue {}: skipping a bad line: {e}", path.display()),
        }
    }
    Ok(halves.into_iter().collect())
}

fn rewrite_queue(path: &PathBuf, halves: &[(u64, Half)]) -> std::io::Result<std::fs::File> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        for (id, half) in halves {
            let mut line = serde_json::to_vec(&Record::Add {
                id: *id,
                half: half.clone(),
            })
            .map_err(std::io::Error::other)?;
            line.push(b'\n');
            file.write_all(&line)?;
        }
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::OpenOptions::new().append(true).open(path)
}

/// Starts a multi-step write (a [`WritePlan`] other than `Shard` and `Temp`).
pub fn start(
    cluster: Arc<Cluster>,
    shared: Arc<Shared>,
    plan: WritePlan,
    value: Vec<u8>,
    _flags: (u32, i64),
    affinity: usize,
) -> JoinHandle<Outcome> {
    tokio::spawn(async move {
        let steps = Steps {
            cluster: &cluster,
            shared: &shared,
            affinity,
        };
        let outcome = match plan {
            WritePlan::Create(update) => steps.create(update).await,
            WritePlan::FriendAdd { user, friend } => steps.befriend(user, friend, &value).await,
            WritePlan::FriendDelete { user, friend } => steps.unfriend(user, friend).await,
            WritePlan::UserDelete { user } => steps.delete_user(user).await,
            WritePlan::Shard(_) | WritePlan::Temp { .. } | WritePlan::ObjectDelete => {
                Outcome::reply(b"SERVER_ERROR internal: not a multi-step write\r\n".to_vec())
            }
        };
        crate::cache::invalidate_after(&cluster, &shared, &outcome).await;
        outcome
    })
}

/// Starts the worker that retries queued halves.
pub fn spawn_worker(shared: Arc<Shared>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(shared.twin.retry_min.min(Duration::from_millis(200))).await;
            for (id, half, attempts) in shared.twin.due() {
                let name = match &half {
                    Half::Deliver { cluster, .. }
                    | Half::Copied { cluster, .. }
                    | Half::Befriend { cluster, .. }
                    | Half::Unfriend { cluster, .. } => cluster.clone(),
                };
                let Some(cluster) = shared.cluster(&name) else {
                    tracing::warn!("twin queue: cluster {name} is gone; half {id} waits");
                    continue;
                };
                bump(&cluster.stats.twin_retries);
                let steps = Steps {
                    cluster: &cluster,
                    shared: &shared,
                    affinity: usize::try_from(id).unwrap_or(0),
                };
                let landed = steps.land(&half, true).await;
                if let Half::Befriend { owner, friend, .. } | Half::Unfriend { owner, friend, .. } =
                    &half
                {
                    // The feed cache's friend lists and privacy answers of both (whatever the
                    // outcome: a late half may still have landed).
                    if shared.feed_cache.watches(cluster.family()) {
                        let owners = [i64::from(*owner), i64::from(*friend)];
                        shared.feed_cache.invalidate(cluster.family(), &owners);
                    }
                }
                match landed {
                    Landed::Yes => {
                        bump(&cluster.stats.twin_landed);
                        shared.twin.done(id);
                        tracing::info!("twin half {id} landed after {attempts} attempts");
                    }
                    Landed::Refused(reason) => {
                        tracing::error!("twin half {id} refused for good ({reason}): {half:?}");
                        shared.twin.done(id);
                    }
                    Landed::Later(reason) => {
                        tracing::debug!("twin half {id} waits: {reason}");
                    }
                }
            }
        }
    });
}

enum Landed {
    Yes,
    Refused(String),
    Later(String),
}

struct Steps<'a> {
    cluster: &'a Arc<Cluster>,
    shared: &'a Arc<Shared>,
    affinity: usize,
}

/// Appends `set <key> 0 0 <len>\r\n<value>\r\n`.
fn set(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    encode::set(out, key, value);
}

/// Appends `get <key>\r\n`.
fn get(out: &mut Vec<u8>, key: &[u8]) {
    encode::get(out, [key]);
}

/// The id a `get newmsgid…` frame holds.
fn lid_of(frame: &[u8]) -> Option<u32> {
    match parse_reply(frame, &koshka_proto::ReplyConfig::DEFAULT) {
        ParsedReply::Done {
            reply: Reply::Values(values),
            ..
        } => values
            .iter()
            .next()
            .and_then(|v| std::str::from_utf8(v.data).ok()?.parse().ok()),
        _ => None,
    }
}

/// The value of a one-key `get` frame (`None` for a miss or an error).
fn value_of(frame: &[u8]) -> Option<Vec<u8>> {
    match parse_reply(frame, &koshka_proto::ReplyConfig::DEFAULT) {
        ParsedReply::Done {
            reply: Reply::Values(values),
            ..
        } => values.iter().next().map(|v| v.data.to_vec()),
        _ => None,
    }
}

fn stored(frame: &[u8]) -> bool {
    frame == b"STORED\r\n"
}

fn client_error(frame: &[u8]) -> bool {
    frame.starts_with(b"CLIENT_ERROR") || frame.starts_with(b"ERROR")
}

fn newid_key(owner: i64, tag: &[u8]) -> Vec<u8> {
    Query::NewId {
        owner,
        tag: tag.to_vec(),
    }
    .to_bytes()
}

impl Steps<'_> {
    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.cluster.settings.set_timeout_ms)
    }

    /// One call to the primary of `shard`.
    async fn call(
        &self,
        cluster: &Cluster,
        shard: u32,
        bytes: Vec<u8>,
        frames: usize,
    ) -> Result<Frames, CallError> {
        let member = cluster.writer(shard)?.clone();
        member
            .call(Bytes::from(bytes), frames, self.affinity, self.deadline())
            .await
    }

    /// An id-allocating update: on its owner's shard with the handshake, or split in two
    /// when it is a send between shards.
    async fn create(&self, update: Update) -> Outcome {
        let cluster = self.cluster;
        if let Update::Send { from, to, .. } = &update {
            if cluster.shard_of_owner(*from) != cluster.shard_of_owner(*to) {
                return self.split_send(update).await;
            }
        }
        if let Update::Repost {
            owner,
            orig_owner,
            text: None,
            ..
        } = &update
        {
            if cluster.shard_of_owner(*owner) != cluster.shard_of_owner(*orig_owner) {
                return self.split_repost(update).await;
            }
        }
        let tag = self.shared.next_tag().into_bytes();
        let mut tagged = update.clone();
        let (owner, second, client_tag) = match &mut tagged {
            Update::Send {
                from, to, tag: t, ..
            } => (*from, Some(*to), std::mem::replace(t, tag.clone())),
            Update::NewMessage { owner, tag: t, .. }
            | Update::NewPost { owner, tag: t, .. }
            | Update::Repost { owner, tag: t, .. }
            | Update::Status { owner, tag: t, .. } => {
                (*owner, None, std::mem::replace(t, tag.clone()))
            }
            _ => {
                return Outcome::reply(b"SERVER_ERROR internal: not a creating update\r\n".to_vec())
            }
        };
        let mut bytes = Vec::new();
        set(&mut bytes, &tagged.to_bytes(), &tagged.value_bytes());
        get(&mut bytes, &newid_key(owner, &tag));
        if let Some(second) = second {
            get(&mut bytes, &newid_key(second, &tag));
        }
        let frames = 2 + usize::from(second.is_some());
        let shard = cluster.shard_of_owner(owner);
        match self.call(cluster, shard, bytes, frames).await {
            Ok(frames) => {
                let mut outcome = Outcome::reply(frames[0].to_vec());
                if stored(&frames[0]) {
                    // A node remembers a send's recipient id first, then the sender's: the
                    // same order evicts the same entry when the memory is full.
                    let ids: Vec<(&Bytes, i64)> = frames[1..]
                        .iter()
                        .zip([Some(owner), second].into_iter().flatten())
                        .collect();
                    for (frame, id) in ids.into_iter().rev() {
                        if let Some(lid) = lid_of(frame) {
                            outcome.effects.push(Effect::NewId {
                                owner: id,
                                tag: client_tag.clone(),
                                lid,
                            });
                        }
                    }
                    outcome.effects.push(Effect::Invalidate(vec![owner]));
                    if let Some(second) = second {
                        outcome.effects.push(Effect::Invalidate(vec![second]));
                    }
                }
                outcome
            }
            Err(e) => Outcome::reply(server_error(&e)),
        }
    }

    /// `sendmsg` between shards: the sender's copy, the queue record, the recipient's copy,
    /// the link.
    async fn split_send(&self, update: Update) -> Outcome {
        let Update::Send {
            from,
            to,
            tag: client_tag,
            flags,
            text,
        } = update
        else {
            return Outcome::reply(b"SERVER_ERROR internal: not a send\r\n".to_vec());
        };
        let cluster = self.cluster;
        bump(&cluster.stats.twin_writes);
        if self.shared.twin.len() >= QUEUE_ENTRIES_MAX {
            return Outcome::reply(b"SERVER_ERROR twin queue full\r\n".to_vec());
        }
        let outbox = |tag| Update::NewMessage {
            owner: from,
            tag,
            flags: (flags & !UNREAD) | OUTBOX,
            peer: to,
            peer_lid: 0,
            text: text.clone(),
        };
        let from_lid = match self.first_half(from, outbox).await {
            Ok(lid) => lid,
            Err(reply) => return reply,
        };
        let mut text_value = Vec::new();
        koshka_keys::messages::encode_text(&mut text_value, &text, true);
        let half = Half::Deliver {
            cluster: cluster.config.name.clone(),
            from,
            to,
            from_lid,
            flags: (flags & !OUTBOX) | UNREAD,
            text: String::from_utf8_lossy(&text_value).into_owned(),
        };
        let mut outcome = Outcome::reply(koshka_proto::reply::STORED.to_vec());
        outcome.effects.push(Effect::Invalidate(vec![from, to]));
        // Remembered after the recipient's id, as a node does (see `create`).
        let sender_id = Effect::NewId {
            owner: from,
            tag: client_tag.clone(),
            lid: from_lid,
        };
        let id = match self.shared.twin.add(half.clone()) {
            Ok(id) => id,
            Err(e) => {
                tracing::error!("twin queue: {e}");
                return Outcome::reply(format!("SERVER_ERROR twin queue: {e}\r\n").into_bytes());
            }
        };
        match self.deliver(&half, false).await {
            Ok(to_lid) => {
                self.shared.twin.done(id);
                outcome.effects.push(Effect::NewId {
                    owner: to,
                    tag: client_tag,
                    lid: to_lid,
                });
            }
            Err(Landed::Refused(reason)) => {
                tracing::error!("twin send {from}→{to} refused by the recipient's shard: {reason}");
                self.shared.twin.done(id);
                return Outcome::reply(format!("{}\r\n", reason.trim_end()).into_bytes());
            }
            Err(_) => bump(&cluster.stats.twin_queued),
        }
        outcome.effects.push(sender_id);
        outcome
    }

    /// The first half of a twin write: `update` (built with a proxy-unique tag) on `owner`'s
    /// shard with the new-id handshake; the new id, or the client's reply when it failed.
    async fn first_half(
        &self,
        owner: i64,
        update: impl FnOnce(Vec<u8>) -> Update,
    ) -> Result<u32, Outcome> {
        let tag = self.shared.next_tag().into_bytes();
        let update = update(tag.clone());
        let mut bytes = Vec::new();
        set(&mut bytes, &update.to_bytes(), &update.value_bytes());
        get(&mut bytes, &newid_key(owner, &tag));
        let cluster = self.cluster;
        let frames = self
            .call(cluster, cluster.shard_of_owner(owner), bytes, 2)
            .await
            .map_err(|e| Outcome::reply(server_error(&e)))?;
        match (lid_of(&frames[1]), stored(&frames[0])) {
            (Some(lid), true) => Ok(lid),
            _ => Err(Outcome::reply(frames[0].to_vec())),
        }
    }

    /// `repost` of a post on another shard's wall: the original's text, the copy, the queue
    /// record, the COPIED flag.
    async fn split_repost(&self, update: Update) -> Outcome {
        let Update::Repost {
            owner,
            tag: client_tag,
            author,
            flags,
            orig_owner,
            orig_id,
            text: None,
        } = update
        else {
            return Outcome::reply(b"SERVER_ERROR internal: not a repost\r\n".to_vec());
        };
        let cluster = self.cluster;
        bump(&cluster.stats.twin_writes);
        if self.shared.twin.len() >= QUEUE_ENTRIES_MAX {
            return Outcome::reply(b"SERVER_ERROR twin queue full\r\n".to_vec());
        }
        let text = match self.original_text(orig_owner, orig_id).await {
            Ok(Some(text)) => text,
            Ok(None) => return Outcome::reply(koshka_proto::reply::NOT_FOUND.to_vec()),
            Err(reply) => return Outcome::reply(reply),
        };
        let copy = |tag| Update::Repost {
            owner,
            tag,
            author,
            flags,
            orig_owner,
            orig_id,
            text: Some(text),
        };
        let lid = match self.first_half(owner, copy).await {
            Ok(lid) => lid,
            Err(reply) => return reply,
        };
        let half = Half::Copied {
            cluster: cluster.config.name.clone(),
            owner: orig_owner,
            id: orig_id,
        };
        let mut outcome = Outcome::reply(koshka_proto::reply::STORED.to_vec());
        outcome
            .effects
            .push(Effect::Invalidate(vec![owner, orig_owner]));
        outcome.effects.push(Effect::NewId {
            owner,
            tag: client_tag,
            lid,
        });
        self.queue_and_land(half, &mut outcome).await;
        outcome
    }

    /// The text of `owner`'s post `id` as its shard stores it (kludges, subject, body);
    /// `None` when it is missing or deleted; `Err` with the client's reply when the shard
    /// cannot say.
    async fn original_text(
        &self,
        owner: i64,
        id: u32,
    ) -> Result<Option<koshka_keys::messages::Text>, Vec<u8>> {
        /// The DELETED flag: a deleted original is not reposted.
        const DELETED: u64 = 128;
        let cluster = self.cluster;
        let mut bytes = Vec::new();
        // Mode 2: the kludges too.
        get(&mut bytes, format!("post{owner}_{id}#2").as_bytes());
        let frames = self
            .call(cluster, cluster.shard_of_owner(owner), bytes, 1)
            .await
            .map_err(|e| server_error(&e))?;
        if client_error(&frames[0]) || frames[0].starts_with(b"SERVER_ERROR") {
            return Err(frames[0].to_vec());
        }
        let Some(json) = value_of(&frames[0]) else {
            return Ok(None);
        };
        let post: serde_json::Value = serde_json::from_slice(&json).map_err(|e| {
            format!("SERVER_ERROR the original's shard answered unreadable JSON: {e}\r\n")
                .into_bytes()
        })?;
        if post["flags"].as_u64().unwrap_or(DELETED) & DELETED != 0 {
            return Ok(None);
        }
        let part = |name: &str| post[name].as_str().unwrap_or_default().as_bytes().to_vec();
        Ok(Some(koshka_keys::messages::Text {
            kludges: part("kludges"),
            subject: part("subject"),
            body: part("text"),
        }))
    }

    /// COPIED on a reposted original. `NOT_FOUND`: the original is gone; nothing to mark.
    async fn mark_copied(&self, owner: i64, id: u32) -> Landed {
        /// The COPIED flag (someone reposted the post).
        const COPIED: u32 = 256;
        let cluster = self.cluster;
        let mut bytes = Vec::new();
        let key = format!("flags{owner}_{id}");
        encode::arith(&mut bytes, key.as_bytes(), true, COPIED.into(), false);
        match self
            .call(cluster, cluster.shard_of_owner(owner), bytes, 1)
            .await
        {
            Err(e) => Landed::Later(e.to_string()),
            Ok(frames) if client_error(&frames[0]) => {
                Landed::Refused(String::from_utf8_lossy(&frames[0]).into_owned())
            }
            Ok(frames)
                if frames[0].as_ref() == b"NOT_FOUND\r\n"
                    || frames[0].first().is_some_and(u8::is_ascii_digit) =>
            {
                Landed::Yes
            }
            Ok(frames) => Landed::Later(String::from_utf8_lossy(&frames[0]).into_owned()),
        }
    }

    /// Lands a queued half.
    async fn land(&self, half: &Half, retry: bool) -> Landed {
        match half {
            Half::Copied { owner, id, .. } => self.mark_copied(*owner, *id).await,
            Half::Deliver { .. } => match self.deliver(half, retry).await {
                Ok(_) => Landed::Yes,
                Err(landed) => landed,
            },
            Half::Befriend { owner, friend, .. } => self.befriend_half(*owner, *friend).await,
            Half::Unfriend { owner, friend, .. } => match self.unfriend_half(*owner, *friend).await
            {
                Ok(_) => Landed::Yes,
                Err(landed) => landed,
            },
        }
    }

    /// The recipient's copy (looked up first on a retry) and the sender copy's link.
    async fn deliver(&self, half: &Half, retry: bool) -> Result<u32, Landed> {
        let Half::Deliver {
            from,
            to,
            from_lid,
            flags,
            text,
            ..
        } = half
        else {
            return Err(Landed::Refused("not a delivery".into()));
        };
        let cluster = self.cluster;
        let later = |e: CallError| Landed::Later(e.to_string());
        let to_shard = cluster.shard_of_owner(*to);
        let existing = if retry {
            self.find_delivered(*to, *from, *from_lid)
                .await
                .map_err(later)?
        } else {
            None
        };
        let to_lid = match existing {
            Some(lid) => lid,
            None => {
                let tag = self.shared.next_tag().into_bytes();
                let mut value = format!("{flags},{from},{from_lid}\n").into_bytes();
                value.extend_from_slice(text.as_bytes());
                let mut bytes = Vec::new();
                let key = format!("newmsg{to}#{}", String::from_utf8_lossy(&tag));
                set(&mut bytes, key.as_bytes(), &value);
                get(&mut bytes, &newid_key(*to, &tag));
                let frames = self
                    .call(cluster, to_shard, bytes, 2)
                    .await
                    .map_err(later)?;
                if client_error(&frames[0]) {
                    return Err(Landed::Refused(
                        String::from_utf8_lossy(&frames[0]).into_owned(),
                    ));
                }
                match (stored(&frames[0]), lid_of(&frames[1])) {
                    (true, Some(lid)) => lid,
                    _ => {
                        return Err(Landed::Later(
                            String::from_utf8_lossy(&frames[0]).into_owned(),
                        ))
                    }
                }
            }
        };
        let mut bytes = Vec::new();
        let link = format!("peer_msg_id{from}_{from_lid}");
        set(&mut bytes, link.as_bytes(), to_lid.to_string().as_bytes());
        let frames = self
            .call(cluster, cluster.shard_of_owner(*from), bytes, 1)
            .await
            .map_err(later)?;
        // NOT_FOUND: the sender deleted the copy meanwhile; nothing left to link.
        if stored(&frames[0]) || frames[0].as_ref() == b"NOT_FOUND\r\n" {
            Ok(to_lid)
        } else if client_error(&frames[0]) {
            Err(Landed::Refused(
                String::from_utf8_lossy(&frames[0]).into_owned(),
            ))
        } else {
            Err(Landed::Later(
                String::from_utf8_lossy(&frames[0]).into_owned(),
            ))
        }
    }

    /// The id of a copy in `to`'s conversation with `from` whose `peer_msg_id` is `from_lid`,
    /// among the newest [`DEDUPE_WINDOW`].
    async fn find_delivered(
        &self,
        to: i64,
        from: i64,
        from_lid: u32,
    ) -> Result<Option<u32>, CallError> {
        let cluster = self.cluster;
        let shard = cluster.shard_of_owner(to);
        let mut bytes = Vec::new();
        let list = format!("peermsglist{to}_{from}#-1,-{DEDUPE_WINDOW}");
        get(&mut bytes, list.as_bytes());
        let frames = self.call(cluster, shard, bytes, 1).await?;
        let Some(list) = value_of(&frames[0]) else {
            return Ok(None);
        };
        let Ok(list) = koshka_keys::idiom::CountedList::parse(&list) else {
            return Ok(None);
        };
        if list.items.is_empty() {
            return Ok(None);
        }
        let keys: Vec<String> = list
            .items
            .iter()
            .map(|lid| format!("message{to}_{lid}#1"))
            .collect();
        let mut bytes = Vec::new();
        encode::get(&mut bytes, &keys);
        let frames = self.call(cluster, shard, bytes, 1).await?;
        let ParsedReply::Done {
            reply: Reply::Values(values),
            ..
        } = parse_reply(&frames[0], &koshka_proto::ReplyConfig::DEFAULT)
        else {
            return Ok(None);
        };
        for value in values.iter() {
            let json = String::from_utf8_lossy(value.data);
            if json_number(&json, "peer") == Some(from)
                && json_number(&json, "peer_msg_id") == Some(i64::from(from_lid))
            {
                return Ok(json_number(&json, "id").and_then(|id| u32::try_from(id).ok()));
            }
        }
        Ok(None)
    }

    /// `set friend<u>_<f>` with `f` on another shard.
    async fn befriend(&self, user: u32, friend: u32, mask: &[u8]) -> Outcome {
        let cluster = self.cluster;
        bump(&cluster.stats.twin_writes);
        let mut bytes = Vec::new();
        set(
            &mut bytes,
            format!("friend_half{user}_{friend}").as_bytes(),
            mask,
        );
        let shard = cluster.shard_of_owner(i64::from(user));
        let frames = match self.call(cluster, shard, bytes, 1).await {
            Ok(frames) => frames,
            Err(e) => return Outcome::reply(server_error(&e)),
        };
        let mut outcome = Outcome::reply(frames[0].to_vec());
        if !stored(&frames[0]) {
            return outcome;
        }
        outcome
            .effects
            .push(Effect::Invalidate(vec![i64::from(user), i64::from(friend)]));
        let half = Half::Befriend {
            cluster: cluster.config.name.clone(),
            owner: friend,
            friend: user,
        };
        self.queue_and_land(half, &mut outcome).await;
        outcome
    }

    async fn befriend_half(&self, owner: u32, friend: u32) -> Landed {
        let cluster = self.cluster;
        let shard = cluster.shard_of_owner(i64::from(owner));
        let mut bytes = Vec::new();
        get(&mut bytes, format!("friend{owner}_{friend}").as_bytes());
        let frames = match self.call(cluster, shard, bytes, 1).await {
            Ok(frames) => frames,
            Err(e) => return Landed::Later(e.to_string()),
        };
        if value_of(&frames[0]).is_some() {
            return Landed::Yes;
        }
        if client_error(&frames[0]) {
            return Landed::Refused(String::from_utf8_lossy(&frames[0]).into_owned());
        }
        let mut bytes = Vec::new();
        set(
            &mut bytes,
            format!("friend_half{owner}_{friend}").as_bytes(),
            b"1",
        );
        match self.call(cluster, shard, bytes, 1).await {
            Ok(frames) if stored(&frames[0]) => Landed::Yes,
            Ok(frames) if client_error(&frames[0]) => {
                Landed::Refused(String::from_utf8_lossy(&frames[0]).into_owned())
            }
            Ok(frames) => Landed::Later(String::from_utf8_lossy(&frames[0]).into_owned()),
            Err(e) => Landed::Later(e.to_string()),
        }
    }

    /// Deletes one half; `Ok(true)` when something was deleted.
    async fn unfriend_half(&self, owner: u32, friend: u32) -> Result<bool, Landed> {
        let cluster = self.cluster;
        let shard = cluster.shard_of_owner(i64::from(owner));
        let mut bytes = Vec::new();
        encode::delete(
            &mut bytes,
            format!("friend_half{owner}_{friend}").as_bytes(),
            false,
        );
        match self.call(cluster, shard, bytes, 1).await {
            Ok(frames) if frames[0].as_ref() == b"DELETED\r\n" => Ok(true),
            Ok(frames) if frames[0].as_ref() == b"NOT_FOUND\r\n" => Ok(false),
            Ok(frames) if client_error(&frames[0]) => Err(Landed::Refused(
                String::from_utf8_lossy(&frames[0]).into_owned(),
            )),
            Ok(frames) => Err(Landed::Later(
                String::from_utf8_lossy(&frames[0]).into_owned(),
            )),
            Err(e) => Err(Landed::Later(e.to_string())),
        }
    }

    /// `delete friend<u>_<f>` with `f` on another shard: `DELETED` when either half existed.
    async fn unfriend(&self, user: u32, friend: u32) -> Outcome {
        let cluster = self.cluster;
        bump(&cluster.stats.twin_writes);
        let first = match self.unfriend_half(user, friend).await {
            Ok(deleted) => deleted,
            Err(Landed::Refused(line)) => return Outcome::reply(line.into_bytes()),
            Err(Landed::Later(reason)) => {
                return Outcome::reply(format!("SERVER_ERROR {reason}\r\n").into_bytes())
            }
            Err(Landed::Yes) => false,
        };
        let mut outcome = Outcome::default();
        outcome
            .effects
            .push(Effect::Invalidate(vec![i64::from(user), i64::from(friend)]));
        let half = Half::Unfriend {
            cluster: cluster.config.name.clone(),
            owner: friend,
            friend: user,
        };
        let id = match self.shared.twin.add(half) {
            Ok(id) => id,
            Err(e) => {
                return Outcome::reply(format!("SERVER_ERROR twin queue: {e}\r\n").into_bytes())
            }
        };
        let second = match self.unfriend_half(friend, user).await {
            Ok(deleted) => {
                self.shared.twin.done(id);
                deleted
            }
            Err(Landed::Refused(_)) => {
                self.shared.twin.done(id);
                false
            }
            Err(_) => {
                bump(&cluster.stats.twin_queued);
                false
            }
        };
        outcome.reply = if first || second {
            koshka_proto::reply::DELETED.to_vec()
        } else {
            koshka_proto::reply::NOT_FOUND.to_vec()
        };
        outcome
    }

    /// `delete user<u>`: read its friends, delete it on its shard, queue the removal of its
    /// halves on the other shards.
    async fn delete_user(&self, user: u32) -> Outcome {
        let cluster = self.cluster;
        let shard = cluster.shard_of_owner(i64::from(user));
        let mut bytes = Vec::new();
        get(&mut bytes, format!("friends{user}").as_bytes());
        encode::delete(&mut bytes, format!("user{user}").as_bytes(), false);
        let frames = match self.call(cluster, shard, bytes, 2).await {
            Ok(frames) => frames,
            Err(e) => return Outcome::reply(server_error(&e)),
        };
        let friends = value_of(&frames[0])
            .and_then(|v| koshka_keys::idiom::CountedList::parse(&v).ok())
            .map(|l| l.items)
            .unwrap_or_default();
        let mut outcome = Outcome::reply(frames[1].to_vec());
        let mut owners = vec![i64::from(user)];
        for friend in friends {
            let Ok(friend) = u32::try_from(friend) else {
                continue;
            };
            owners.push(i64::from(friend));
            if cluster.shard_of_owner(i64::from(friend)) == shard {
                continue;
            }
            bump(&cluster.stats.twin_writes);
            let half = Half::Unfriend {
                cluster: cluster.config.name.clone(),
                owner: friend,
                friend: user,
            };
            self.queue_and_land(half, &mut outcome).await;
        }
        outcome.effects.push(Effect::Invalidate(owners));
        outcome
    }

    /// Queues `half` and tries it once at once; a failure there is the retry worker's.
    async fn queue_and_land(&self, half: Half, outcome: &mut Outcome) {
        let id = match self.shared.twin.add(half.clone()) {
            Ok(id) => id,
            Err(e) => {
                *outcome = Outcome::reply(format!("SERVER_ERROR twin queue: {e}\r\n").into_bytes());
                return;
            }
        };
        match self.land(&half, false).await {
            Landed::Yes => self.shared.twin.done(id),
            Landed::Refused(reason) => {
                tracing::error!("twin half refused for good ({reason}): {half:?}");
                self.shared.twin.done(id);
            }
            Landed::Later(_) => bump(&self.cluster.stats.twin_queued),
        }
    }
}

/// The integer value of `"name":` in a flat JSON object.
fn json_number(json: &str, name: &str) -> Option<i64> {
    let pattern = format!("\"{name}\":");
    let at = json.find(&pattern)? + pattern.len();
    let rest = &json[at..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_numbers() {
        let json = r#"{"date":1,"flags":9,"id":3,"peer":1000,"peer_msg_id":17,"subject":"a"}"#;
        assert_eq!(json_number(json, "peer"), Some(1000));
        assert_eq!(json_number(json, "peer_msg_id"), Some(17));
        assert_eq!(json_number(json, "id"), Some(3));
        assert_eq!(json_number(json, "nope"), None);
    }

    #[test]
    fn the_queue_file_keeps_what_did_not_land() {
        let dir = tempfile::tempdir().unwrap();
        let config = TwinSection {
            queue: Some(dir.path().join("q")),
            ..TwinSection::default()
        };
        let runtime = tokio::runtime::Builder::new_multi_thread().build().unwrap();
        runtime.block_on(async {
            let queue = Queue::open(&config).unwrap();
            let half = |owner| Half::Befriend {
                cluster: "friends".into(),
                owner,
                friend: 1,
            };
            let a = queue.add(half(2)).unwrap();
            let _b = queue.add(half(3)).unwrap();
            queue.done(a);
            drop(queue);
            // A torn last line is skipped.
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(dir.path().join("q"))
                .unwrap();
            file.write_all(b"{\"add\":{\"id\":9,").unwrap();
            let queue = Queue::open(&config).unwrap();
            let due: Vec<Half> = queue
                .waiting
                .lock()
                .values()
                .map(|w| w.half.clone())
                .collect();
            assert_eq!(due, vec![half(3)]);
            assert!(queue.add(half(4)).unwrap() > 2);
        });
    }
}
