//! The `messages` workload: mailboxes of `--users` users with Zipf-skewed activity.
//!
//! # Data (preload)
//!
//! `--messages` sends: the sender is drawn Zipf over the users (id 1 hottest), the recipient
//! from the sender's circle of `--dialog-peers` correspondents (a fixed hash of the sender),
//! and 30 % of sends are replies (the direction reversed). Texts are `--text-size`-byte cuts
//! of real fortunes (see `text`). One more user, id `--users + 1`, gets a mailbox of exactly
//! `--big-mailbox` messages with 100 correspondents, for the search latency target.
//!
//! # Operations (one logical operation each, the same on both protocols)
//!
//! | kind | koshka (compiled keys) | Redis 7 (idiomatic model) |
//! |---|---|---|
//! | `send` | `set sendmsg<from>_<to>` | `INCR msg:next`, then `MULTI` … `EXEC` of HSET message hash, 6 ZADD (outbox/inbox sublists, both dialogs, both dialog lists), 2 HINCRBY unread counters, one SADD per distinct word per side |
//! | `dialogs` | `get topmsglist<u>#-1,-20`, then one multi-get of the 20 latest messages | `ZREVRANGE u:<u>:dl 0 19 WITHSCORES`, then 20 `HMGET m:<id> from date text` + `HMGET u:<u>:uc <peers…>` pipelined |
//! | `conversation` | `get peermsglist<u>_<p>#-1,-20`, then one multi-get of those messages | `ZREVRANGE u:<u>:d:<p> 0 19`, then 20 `HGETALL m:<id>` pipelined |
//! | `read` | `set readall<u>_<p>` | `HGET u:<u>:uc <p>` + `ZREVRANGE u:<u>:d:<p> 0 0`, then (if unread) `MULTI` HSET counter 0, HINCRBY total, HSET read-up-to `EXEC` |
//! | `search` | `get search(<u>,20,<w1>+<w2>)` | `SINTER u:<u>:w:<w1> u:<u>:w:<w2>` (per-user inverted index in sets) |
//! | `bigsearch` | as `search`, in the `--big-mailbox` mailbox, two words of one of its own messages (so at least one hit) | as `search` |

use std::time::{SystemTime, UNIX_EPOCH};

use koshka_keys::messages::{Query, Text, Update};
use koshka_keys::{Encode, Slice};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::keys::{owner_id, with_key, KeyChooser};
use crate::social::{mix64, Social};
use crate::text::TextPool;
use crate::wire::{self, mc, resp, Frame, Part, Scalar, Step};
use crate::Protocol;

/// Operation kinds, in `--mix` order.
pub(crate) const KINDS: &[&str] = &[
    "send",
    "dialogs",
    "conversation",
    "read",
    "search",
    "bigsearch",
];

/// The default mix of the messages workload.
pub(crate) const DEFAULT_MIX: &str = "send=15,dialogs=25,conversation=35,read=15,search=10";

const SEND: u8 = 0;
const DIALOGS: u8 = 1;
const CONVERSATION: u8 = 2;
const READ: u8 = 3;
const SEARCH: u8 = 4;

/// Items per page (dialogs, conversation, search results).
const PAGE: u64 = 20;

/// Correspondents of the big mailbox.
const BIG_PEERS: u64 = 100;

/// Share of sends that are replies (recipient writes back).
const REPLY_SHARE: f64 = 0.3;

/// The newest [`PAGE`] items of a list, newest first (`#-1,-20`).
fn newest_page() -> Slice {
    Slice::Range {
        from: -1,
        to: -(PAGE as i64),
    }
}

/// Preload date base for the Redis model (koshka dates come from its binlog).
const DATE_BASE: u64 = 1_700_000_000;

/// The plan of the messages workload.
#[derive(Debug)]
pub(crate) struct Messages {
    protocol: Protocol,
    users: u64,
    messages: u64,
    big_mailbox: u64,
    circle: u64,
    pool: TextPool,
    chooser: KeyChooser,
    weights: Vec<u32>,
    seed: u64,
}

/// One in-flight operation.
#[derive(Debug, Default)]
pub(crate) struct Op {
    kind: u8,
    step: u8,
    owner: u64,
    peer: u64,
    text: usize,
}

/// Settings of [`Messages::new`].
#[derive(Debug)]
pub(crate) struct MessagesConfig {
    pub(crate) protocol: Protocol,
    pub(crate) users: u64,
    pub(crate) messages: u64,
    pub(crate) big_mailbox: u64,
    pub(crate) circle: u64,
    pub(crate) text_size: usize,
    pub(crate) chooser: KeyChooser,
    pub(crate) weights: Vec<u32>,
    pub(crate) seed: u64,
}

impl Messages {
    /// Builds the plan (loads the text pool).
    pub(crate) fn new(config: MessagesConfig) -> Messages {
        Messages {
            protocol: config.protocol,
            users: config.users,
            messages: config.messages,
            big_mailbox: config.big_mailbox,
            circle: config.circle.max(1),
            pool: TextPool::load(config.text_size, config.seed),
            chooser: config.chooser,
            weights: config.weights,
            seed: config.seed,
        }
    }

    /// Where the texts came from.
    pub(crate) fn text_source(&self) -> &str {
        &self.pool.source
    }

    /// The user with the big mailbox.
    fn big_user(&self) -> u64 {
        self.users + 1
    }

    /// The `k`-th correspondent of `user` (never `user` itself).
    fn circle_peer(&self, user: u64, k: u64) -> u64 {
        let peer = mix64(user.wrapping_mul(1_000_003).wrapping_add(k)) % self.users + 1;
        if peer == user {
            peer % self.users + 1
        } else {
            peer
        }
    }

    /// A Zipf-chosen user id.
    #[inline]
    fn user(&self, rng: &mut SmallRng) -> u64 {
        self.chooser.next(rng) + 1
    }

    /// A Zipf-chosen user and one of its correspondents.
    #[inline]
    fn pair(&self, rng: &mut SmallRng) -> (u64, u64) {
        let user = self.user(rng);
        let peer = self.circle_peer(user, rng.gen_range(0..self.circle));
        (user, peer)
    }

    /// The message preload item `item` sends: (from, to, text).
    fn preload_message(&self, item: u64) -> (u64, u64, usize) {
        let mut rng = SmallRng::seed_from_u64(mix64(self.seed ^ item.wrapping_mul(0x5851_F42D)));
        if item >= self.messages {
            let index = item - self.messages;
            let big = self.big_user();
            let peer = self.circle_peer(big, index % BIG_PEERS);
            let text = self.pool.pick(&mut rng);
            return if index.is_multiple_of(2) {
                (big, peer, text)
            } else {
                (peer, big, text)
            };
        }
        let (from, to) = self.pair(&mut rng);
        let text = self.pool.pick(&mut rng);
        if rng.gen_bool(REPLY_SHARE) {
            (to, from, text)
        } else {
            (from, to, text)
        }
    }

    /// Appends the Redis commands that store message `id` (no MULTI); returns the replies.
    fn redis_message(
        &self,
        out: &mut Vec<u8>,
        id: u64,
        from: u64,
        to: u64,
        text: usize,
        date: u64,
    ) -> u32 {
        let text = &self.pool.texts[text];
        resp::command(out, 10);
        resp::arg(out, b"HSET");
        resp::parts(out, &[Part::S(b"m:"), Part::N(id)]);
        resp::arg(out, b"from");
        resp::num(out, from);
        resp::arg(out, b"to");
        resp::num(out, to);
        resp::arg(out, b"date");
        resp::num(out, date);
        resp::arg(out, b"text");
        resp::arg(out, &text.body);
        let zadd = |out: &mut Vec<u8>, key: &[Part<'_>], member: u64| {
            resp::command(out, 4);
            resp::arg(out, b"ZADD");
            resp::parts(out, key);
            resp::num(out, id);
            resp::num(out, member);
        };
        zadd(out, &[Part::S(b"u:"), Part::N(from), Part::S(b":out")], id);
        zadd(
            out,
            &[Part::S(b"u:"), Part::N(from), Part::S(b":d:"), Part::N(to)],
            id,
        );
        zadd(out, &[Part::S(b"u:"), Part::N(from), Part::S(b":dl")], to);
        zadd(out, &[Part::S(b"u:"), Part::N(to), Part::S(b":in")], id);
        zadd(
            out,
            &[Part::S(b"u:"), Part::N(to), Part::S(b":d:"), Part::N(from)],
            id,
        );
        zadd(out, &[Part::S(b"u:"), Part::N(to), Part::S(b":dl")], from);
        for field in [Part::N(from), Part::S(b"total")] {
            resp::command(out, 4);
            resp::arg(out, b"HINCRBY");
            resp::parts(out, &[Part::S(b"u:"), Part::N(to), Part::S(b":uc")]);
            resp::parts(out, &[field]);
            resp::num(out, 1);
        }
        for owner in [from, to] {
            for word in &text.words {
                resp::command(out, 3);
                resp::arg(out, b"SADD");
                resp::parts(
                    out,
                    &[
                        Part::S(b"u:"),
                        Part::N(owner),
                        Part::S(b":w:"),
                        Part::S(word),
                    ],
                );
                resp::num(out, id);
            }
        }
        9 + 2 * text.words.len() as u32
    }

    /// Appends a koshka `sendmsg`. The value is written from the pool's text in place (a
    /// flags line, then the body, which holds no TAB, so no subject), not through
    /// [`Update::encode_value`], which would need the text copied into the update.
    fn koshka_send(&self, out: &mut Vec<u8>, from: u64, to: u64, text: usize) -> Step {
        let send = Update::Send {
            from: owner_id(from),
            to: owner_id(to),
            tag: Vec::new(),
            flags: 0,
            text: Text::default(),
        };
        with_key(&send, |key| {
            mc::set(
                out,
                &[Part::S(key)],
                &[Part::S(b"0\n"), Part::S(&self.pool.texts[text].body)],
            );
        });
        Step::new(Frame::McLine, 1)
    }

    /// Appends a search of two co-occurring words in `owner`'s mailbox: words of a random
    /// text, or (big mailbox) of a text that mailbox holds, so the query has hits.
    fn search(&self, out: &mut Vec<u8>, owner: u64, rng: &mut SmallRng) -> Step {
        let held = if owner == self.big_user() && self.big_mailbox > 0 {
            let item = self.messages + rng.gen_range(0..self.big_mailbox);
            let (_, _, text) = self.preload_message(item);
            self.pool.query_in(text, rng)
        } else {
            None
        };
        let (text, first, second) = held.unwrap_or_else(|| self.pool.query(rng));
        let text = &self.pool.texts[text];
        match self.protocol {
            Protocol::Memcache => {
                let (first, second) = (&text.words[first], &text.words[second]);
                let mut words = Vec::with_capacity(first.len() + 1 + second.len());
                words.extend_from_slice(first);
                words.push(b' ');
                words.extend_from_slice(second);
                let search = Query::Search {
                    owner: owner_id(owner),
                    mask: (0, 0),
                    peer: 0,
                    min_date: 0,
                    max_date: 0,
                    limit: PAGE as usize,
                    words,
                };
                with_key(&search, |key| mc::get(out, &[Part::S(key)]));
                Step::new(Frame::McGet, 1)
            }
            Protocol::Redis => {
                resp::command(out, 3);
                resp::arg(out, b"SINTER");
                for word in [first, second] {
                    resp::parts(
                        out,
                        &[
                            Part::S(b"u:"),
                            Part::N(owner),
                            Part::S(b":w:"),
                            Part::S(&text.words[word]),
                        ],
                    );
                }
                Step::new(Frame::Resp, 1)
            }
        }
    }

    /// koshka: a multi-get of `message<owner>_<lid>` for the lids `lids` yields.
    fn koshka_fetch(
        out: &mut Vec<u8>,
        owner: u64,
        mut lids: impl FnMut(&mut dyn FnMut(u64)),
    ) -> Option<Step> {
        let start = out.len();
        out.extend_from_slice(b"get");
        let mut count = 0;
        lids(&mut |lid| {
            out.push(b' ');
            Query::Message {
                owner: owner_id(owner),
                lid: u32::try_from(lid).unwrap_or(u32::MAX),
                mode: 0,
                max_len: None,
            }
            .encode(out);
            count += 1;
        });
        if count == 0 {
            out.truncate(start);
            return None;
        }
        out.extend_from_slice(b"\r\n");
        Some(Step::new(Frame::McGet, 1))
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(DATE_BASE, |since| since.as_secs())
    }

    fn next_koshka(&self, op: &mut Op, reply: &[u8], out: &mut Vec<u8>) -> Option<Step> {
        match (op.kind, op.step) {
            (DIALOGS, 0) => {
                let list = wire::mc_value(reply)?;
                let owner = op.owner;
                Self::koshka_fetch(out, owner, |each| {
                    // total,(lid,peer,unread)…
                    let mut index = 0usize;
                    wire::comma_numbers(list, |number| {
                        if index % 3 == 1 {
                            each(number);
                        }
                        index += 1;
                    });
                })
            }
            (CONVERSATION, 0) => {
                let list = wire::mc_value(reply)?;
                let owner = op.owner;
                Self::koshka_fetch(out, owner, |each| {
                    let mut first = true;
                    wire::comma_numbers(list, |number| {
                        if !first {
                            each(number);
                        }
                        first = false;
                    });
                })
            }
            _ => None,
        }
    }

    fn next_redis(&self, op: &mut Op, reply: &[u8], out: &mut Vec<u8>) -> Option<Step> {
        match (op.kind, op.step) {
            (SEND, 0) => {
                let mut id = 0;
                wire::resp_scalars(reply, |scalar| {
                    if let Scalar::Bytes(bytes) = scalar {
                        id = wire::parse_u64(bytes).unwrap_or(0);
                    }
                });
                resp::command(out, 1);
                resp::arg(out, b"MULTI");
                let replies = self.redis_message(out, id, op.owner, op.peer, op.text, Self::now());
                resp::command(out, 1);
                resp::arg(out, b"EXEC");
                Some(Step::new(Frame::Resp, replies + 2))
            }
            (DIALOGS, 0) => {
                // member (peer), score (message id) pairs.
                let mut pairs = 0usize;
                let mut index = 0usize;
                wire::resp_scalars(reply, |scalar| {
                    if let Scalar::Bytes(bytes) = scalar {
                        if index % 2 == 1 {
                            resp::command(out, 5);
                            resp::arg(out, b"HMGET");
                            resp::parts(out, &[Part::S(b"m:"), Part::S(bytes)]);
                            resp::arg(out, b"from");
                            resp::arg(out, b"date");
                            resp::arg(out, b"text");
                            pairs += 1;
                        }
                        index += 1;
                    }
                });
                if pairs == 0 {
                    return None;
                }
                resp::command(out, 2 + pairs);
                resp::arg(out, b"HMGET");
                resp::parts(out, &[Part::S(b"u:"), Part::N(op.owner), Part::S(b":uc")]);
                let mut index = 0usize;
                wire::resp_scalars(reply, |scalar| {
                    if let Scalar::Bytes(bytes) = scalar {
                        if index.is_multiple_of(2) {
                            resp::arg(out, bytes);
                        }
                        index += 1;
                    }
                });
                Some(Step::new(Frame::Resp, pairs as u32 + 1))
            }
            (CONVERSATION, 0) => {
                let mut count = 0u32;
                wire::resp_scalars(reply, |scalar| {
                    if let Scalar::Bytes(bytes) = scalar {
                        resp::command(out, 2);
                        resp::arg(out, b"HGETALL");
                        resp::parts(out, &[Part::S(b"m:"), Part::S(bytes)]);
                        count += 1;
                    }
                });
                (count > 0).then_some(Step::new(Frame::Resp, count))
            }
            (READ, 0) => {
                let mut unread = 0;
                let mut last = 0;
                let mut index = 0;
                wire::resp_scalars(reply, |scalar| {
                    if let Scalar::Bytes(bytes) = scalar {
                        let value = wire::parse_u64(bytes).unwrap_or(0);
                        if index == 0 {
                            unread = value;
                        } else {
                            last = value;
                        }
                    }
                    index += 1;
                });
                if unread == 0 {
                    return None;
                }
                let key = [Part::S(b"u:"), Part::N(op.owner), Part::S(b":uc")];
                resp::command(out, 1);
                resp::arg(out, b"MULTI");
                resp::command(out, 4);
                resp::arg(out, b"HSET");
                resp::parts(out, &key);
                resp::num(out, op.peer);
                resp::num(out, 0);
                resp::command(out, 4);
                resp::arg(out, b"HINCRBY");
                resp::parts(out, &key);
                resp::arg(out, b"total");
                resp::parts(out, &[Part::S(b"-"), Part::N(unread)]);
                resp::command(out, 4);
                resp::arg(out, b"HSET");
                resp::parts(out, &[Part::S(b"u:"), Part::N(op.owner), Part::S(b":lr")]);
                resp::num(out, op.peer);
                resp::num(out, last);
                resp::command(out, 1);
                resp::arg(out, b"EXEC");
                Some(Step::new(Frame::Resp, 5))
            }
            _ => None,
        }
    }
}

impl Social for Messages {
    type Op = Op;
    type Local = ();

    fn kinds(&self) -> &'static [&'static str] {
        KINDS
    }

    fn weights(&self) -> &[u32] {
        &self.weights
    }

    fn local(&self, _connection: usize) {}

    fn preload_items(&self) -> u64 {
        // The Redis model's last item sets the message id counter.
        self.messages + self.big_mailbox + 1
    }

    fn preload_batch(&self) -> usize {
        match self.protocol {
            Protocol::Memcache => 256,
            Protocol::Redis => 32,
        }
    }

    fn push_preload(&self, item: u64, out: &mut Vec<u8>) -> Step {
        let total = self.messages + self.big_mailbox;
        if item >= total {
            return match self.protocol {
                Protocol::Memcache => Step::new(Frame::McLine, 0),
                Protocol::Redis => {
                    resp::command(out, 3);
                    resp::arg(out, b"SET");
                    resp::arg(out, b"msg:next");
                    resp::num(out, total);
                    Step::new(Frame::Resp, 1)
                }
            };
        }
        let (from, to, text) = self.preload_message(item);
        match self.protocol {
            Protocol::Memcache => self.koshka_send(out, from, to, text),
            Protocol::Redis => {
                let replies = self.redis_message(out, item + 1, from, to, text, DATE_BASE + item);
                Step::new(Frame::Resp, replies)
            }
        }
    }

    fn start(
        &self,
        kind: usize,
        rng: &mut SmallRng,
        _local: &mut (),
        out: &mut Vec<u8>,
    ) -> (Op, Step) {
        let kind = kind as u8;
        let mut op = Op {
            kind,
            ..Op::default()
        };
        let redis = self.protocol == Protocol::Redis;
        let step = match kind {
            SEND => {
                let (mut from, mut to) = self.pair(rng);
                if rng.gen_bool(REPLY_SHARE) {
                    std::mem::swap(&mut from, &mut to);
                }
                op.owner = from;
                op.peer = to;
                op.text = self.pool.pick(rng);
                if redis {
                    resp::command(out, 2);
                    resp::arg(out, b"INCR");
                    resp::arg(out, b"msg:next");
                    Step::new(Frame::Resp, 1)
                } else {
                    self.koshka_send(out, from, to, op.text)
                }
            }
            DIALOGS => {
                let (user, peer) = self.pair(rng);
                op.owner = if rng.gen_bool(0.5) { user } else { peer };
                if redis {
                    resp::command(out, 5);
                    resp::arg(out, b"ZREVRANGE");
                    resp::parts(out, &[Part::S(b"u:"), Part::N(op.owner), Part::S(b":dl")]);
                    resp::num(out, 0);
                    resp::num(out, PAGE - 1);
                    resp::arg(out, b"WITHSCORES");
                    Step::new(Frame::Resp, 1)
                } else {
                    let dialogs = Query::Dialogs {
                        owner: owner_id(op.owner),
                        slice: newest_page(),
                    };
                    with_key(&dialogs, |key| mc::get(out, &[Part::S(key)]));
                    Step::new(Frame::McGet, 1)
                }
            }
            CONVERSATION | READ => {
                let (user, peer) = self.pair(rng);
                // Reads happen in the recipient's mailbox; conversations from either side.
                let swap = kind == READ || rng.gen_bool(0.5);
                (op.owner, op.peer) = if swap { (peer, user) } else { (user, peer) };
                let key = [
                    Part::S(b"u:"),
                    Part::N(op.owner),
                    Part::S(b":d:"),
                    Part::N(op.peer),
                ];
                match (kind, redis) {
                    (CONVERSATION, true) => {
                        resp::command(out, 4);
                        resp::arg(out, b"ZREVRANGE");
                        resp::parts(out, &key);
                        resp::num(out, 0);
                        resp::num(out, PAGE - 1);
                        Step::new(Frame::Resp, 1)
                    }
                    (CONVERSATION, false) => {
                        let conversation = Query::PeerList {
                            owner: owner_id(op.owner),
                            peer: owner_id(op.peer),
                            slice: newest_page(),
                        };
                        with_key(&conversation, |key| mc::get(out, &[Part::S(key)]));
                        Step::new(Frame::McGet, 1)
                    }
                    (_, true) => {
                        resp::command(out, 3);
                        resp::arg(out, b"HGET");
                        resp::parts(out, &[Part::S(b"u:"), Part::N(op.owner), Part::S(b":uc")]);
                        resp::num(out, op.peer);
                        resp::command(out, 4);
                        resp::arg(out, b"ZREVRANGE");
                        resp::parts(out, &key);
                        resp::num(out, 0);
                        resp::num(out, 0);
                        Step::new(Frame::Resp, 2)
                    }
                    (_, false) => {
                        let read = Update::ReadUpto {
                            owner: owner_id(op.owner),
                            peer: owner_id(op.peer),
                            lid: 0,
                        };
                        with_key(&read, |key| mc::set(out, &[Part::S(key)], &[]));
                        Step::new(Frame::McLine, 1)
                    }
                }
            }
            SEARCH => {
                let (user, peer) = self.pair(rng);
                op.owner = if rng.gen_bool(0.5) { user } else { peer };
                self.search(out, op.owner, rng)
            }
            _ => {
                // bigsearch
                op.owner = self.big_user();
                self.search(out, op.owner, rng)
            }
        };
        (op, step)
    }

    fn next(
        &self,
        op: &mut Op,
        reply: &[u8],
        _rng: &mut SmallRng,
        _local: &mut (),
        out: &mut Vec<u8>,
    ) -> Option<Step> {
        let next = match self.protocol {
            Protocol::Memcache => self.next_koshka(op, reply, out),
            Protocol::Redis => self.next_redis(op, reply, out),
        };
        op.step += 1;
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Distribution;

    fn plan(protocol: Protocol) -> anyhow::Result<Messages> {
        Ok(Messages::new(MessagesConfig {
            protocol,
            users: 1000,
            messages: 100,
            big_mailbox: 10,
            circle: 5,
            text_size: 100,
            chooser: KeyChooser::new(Distribution::Zipf, 1000, 0.99)?,
            weights: vec![1; KINDS.len()],
            seed: 1,
        }))
    }

    #[test]
    fn koshka_requests_use_compiled_keys() -> anyhow::Result<()> {
        let plan = plan(Protocol::Memcache)?;
        let mut out = Vec::new();
        let step = plan.push_preload(0, &mut out);
        assert_eq!(step, Step::new(Frame::McLine, 1));
        assert!(
            out.starts_with(b"set sendmsg"),
            "{}",
            String::from_utf8_lossy(&out)
        );
        let mut rng = SmallRng::seed_from_u64(1);
        out.clear();
        let (mut op, step) = plan.start(usize::from(DIALOGS), &mut rng, &mut (), &mut out);
        assert_eq!(step, Step::new(Frame::McGet, 1));
        assert!(out.starts_with(b"get topmsglist"));
        assert!(matches!(
            Query::parse(out[4..out.len() - 2].as_ref()),
            Ok(Query::Dialogs {
                slice: Slice::Range { from: -1, to: -20 },
                ..
            })
        ));
        out.clear();
        let reply = b"VALUE topmsglist5#-1,-20 0 13\r\n2,7,9,1,3,4,0\r\nEND\r\n";
        let step = plan.next(&mut op, reply, &mut rng, &mut (), &mut out);
        assert_eq!(step, Some(Step::new(Frame::McGet, 1)));
        let owner = op.owner;
        assert_eq!(
            String::from_utf8_lossy(&out),
            format!("get message{owner}_7 message{owner}_3\r\n")
        );
        out.clear();
        let (_, step) = plan.start(usize::from(SEARCH), &mut rng, &mut (), &mut out);
        assert_eq!(step, Step::new(Frame::McGet, 1));
        let key = &out[4..out.len() - 2];
        match Query::parse(key) {
            Ok(Query::Search {
                limit: 20, words, ..
            }) => {
                assert_eq!(words.split(|b| *b == b' ').count(), 2);
            }
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(key)),
        }
        out.clear();
        let (_, step) = plan.start(usize::from(READ), &mut rng, &mut (), &mut out);
        assert_eq!(step, Step::new(Frame::McLine, 1));
        assert!(
            out.starts_with(b"set readall"),
            "{}",
            String::from_utf8_lossy(&out)
        );
        Ok(())
    }

    #[test]
    fn redis_send_is_incr_then_multi_exec() -> anyhow::Result<()> {
        let plan = plan(Protocol::Redis)?;
        let mut rng = SmallRng::seed_from_u64(1);
        let mut out = Vec::new();
        let (mut op, step) = plan.start(usize::from(SEND), &mut rng, &mut (), &mut out);
        assert_eq!(step, Step::new(Frame::Resp, 1));
        assert!(out.ends_with(b"INCR\r\n$8\r\nmsg:next\r\n"));
        out.clear();
        let step = plan.next(&mut op, b":42\r\n", &mut rng, &mut (), &mut out);
        let words = plan.pool.texts[op.text].words.len() as u32;
        assert_eq!(step, Some(Step::new(Frame::Resp, 11 + 2 * words)));
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("*1\r\n$5\r\nMULTI\r\n*10\r\n$4\r\nHSET\r\n$4\r\nm:42\r\n"));
        assert!(text.ends_with("*1\r\n$4\r\nEXEC\r\n"));
        Ok(())
    }

    #[test]
    fn preload_is_deterministic_and_fills_the_big_mailbox() -> anyhow::Result<()> {
        let plan = plan(Protocol::Memcache)?;
        assert_eq!(plan.preload_message(3), plan.preload_message(3));
        let (from, to, _) = plan.preload_message(100);
        assert_eq!(from, 1001);
        assert_ne!(to, 1001);
        let (from, to, _) = plan.preload_message(101);
        assert_eq!(to, 1001);
        assert_ne!(from, 1001);
        Ok(())
    }
}
