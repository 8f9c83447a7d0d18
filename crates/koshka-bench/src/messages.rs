//! The `messages` workload: mailboxes of `--users` users.
//!
//! # Data (preload)
//!
//! `--messages` sends. With `--dialog-peers 0` sender and recipient are drawn uniformly
//! over the users (mostly one-message conversations); otherwise the sender is drawn by
//! `--distribution` and the recipient from the sender's circle of `--dialog-peers`
//! correspondents (a fixed hash of the sender), 30 % of sends being replies. Texts come from
//! the fortunes (`--texts`, see `text`), the same text for the same send on both protocols.
//! One more user, id `--users + 1`, gets a mailbox of exactly `--big-mailbox` messages with
//! 100 correspondents, for the search latency target.
//!
//! # The Redis models (`--redis-model`)
//!
//! Both keep VK's two copies per message (the sender's outbox copy, the recipient's inbox
//! copy), as koshka does:
//!
//! * `plain` — per copy a hash `m:<owner>:<lid>` {peer, date, flags, text}; sorted sets per
//!   mailbox (`box:<owner>:in|out`, score and member the lid), per conversation
//!   (`dlg:<owner>:<peer>`), the dialogs (`dialogs:<owner>`, member the peer, score its
//!   latest lid); an unread hash per owner (`unread:<owner>`, a field per peer plus `total`);
//!   a lid counter per owner (`ctr:<owner>`). No search.
//! * `indexed` — `plain` plus an application-side search index: a set per owner and word
//!   (`w:<owner>:<word>`, members lids) for every distinct lowercase word of each copy.
//!
//! # Operations (one logical operation each, the same on both protocols)
//!
//! | kind | koshka (compiled keys) | Redis 7 |
//! |---|---|---|
//! | `send` | `set sendmsg<from>_<to>` | `INCR ctr:<from>` + `INCR ctr:<to>`, then `MULTI` 2 `HSET` copies, 2 `ZADD box`, 2 `ZADD dlg`, 2 `ZADD dialogs`, 2 `HINCRBY unread` (`indexed`: one `SADD` per word per copy) `EXEC` |
//! | `dialogs` | `get topmsglist<u>#-1,-20`, then one multi-get of the 20 latest messages | `ZREVRANGE dialogs:<u> 0 19 WITHSCORES`, then 20 `HGETALL m:<u>:<lid>` + `HMGET unread:<u> <peers…>` pipelined |
//! | `conversation` | `get peermsglist<u>_<p>#-1,-20`, then one multi-get of those messages | `ZREVRANGE dlg:<u>:<p> 0 19`, then 20 `HGETALL m:<u>:<lid>` pipelined |
//! | `unread` | `get unreadcount<u>` | `HGET unread:<u> total` |
//! | `read` | `set readall<u>_<p>` | `HGET unread:<u> <p>`, then (if unread) `MULTI` `HSET unread:<u> <p> 0`, `HINCRBY unread:<u> total -n` `EXEC` |
//! | `search` | `get search(<u>,20,<w1>+<w2>)` | `SINTER w:<u>:<w1> w:<u>:<w2>` (`indexed` only) |
//! | `bigsearch` | as `search`, in the `--big-mailbox` mailbox, two words of one of its own messages (so at least one hit) | as `search` |
//!
//! Conversations are those of a random preloaded send (so they exist); dialogs, unread
//! counters and searches are of a user drawn by `--distribution`.

use std::time::{SystemTime, UNIX_EPOCH};

use koshka_keys::messages::{Query, Text, Update};
use koshka_keys::{Encode, Slice};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::keys::{owner_id, with_key, KeyChooser};
use crate::social::{mix64, Social};
use crate::text::{TextPool, Texts};
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
    "unread",
];

/// The default mix of the messages workload: a messenger's read-mostly front page.
pub(crate) const DEFAULT_MIX: &str = "send=10,dialogs=35,conversation=35,unread=20";

const SEND: u8 = 0;
const DIALOGS: u8 = 1;
const CONVERSATION: u8 = 2;
const READ: u8 = 3;
const SEARCH: u8 = 4;
const BIGSEARCH: u8 = 5;
const UNREAD: u8 = 6;

/// Items per page (dialogs, conversation, search results).
const PAGE: u64 = 20;

/// Correspondents of the big mailbox.
const BIG_PEERS: u64 = 100;

/// Share of sends that are replies (recipient writes back), with a circle of peers.
const REPLY_SHARE: f64 = 0.3;

/// Redis lid counters set per preload item (one `MSET`).
const COUNTERS_PER_ITEM: u64 = 1000;

/// Flags of an outbox copy (OUTBOX) and of an inbox copy (UNREAD), as koshka sets them.
const OUTBOX_FLAGS: u64 = 2;
const INBOX_FLAGS: u64 = 1;

/// The Redis model of the messages workload (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisModel {
    /// Hashes per copy, sorted sets per mailbox, conversation and dialogs; no search.
    Plain,
    /// `plain` plus a set per owner and word (application-side search index).
    Indexed,
}

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
    model: RedisModel,
    users: u64,
    messages: u64,
    big_mailbox: u64,
    /// Correspondents per user; 0 = recipients uniform over all users.
    circle: u64,
    pool: TextPool,
    chooser: KeyChooser,
    weights: Vec<u32>,
    seed: u64,
    /// Redis: the lids of each preloaded send's two copies, `(from_lid, to_lid)`.
    lids: Vec<(u32, u32)>,
    /// Redis: copies per user after the preload (index = user id).
    counts: Vec<u32>,
}

/// One in-flight operation.
#[derive(Debug, Default)]
pub(crate) struct Op {
    kind: u8,
    step: u8,
    owner: u64,
    peer: u64,
    text: usize,
    /// Redis sends: the lids the counters gave.
    lids: (u64, u64),
}

/// Settings of [`Messages::new`].
#[derive(Debug)]
pub(crate) struct MessagesConfig {
    pub(crate) protocol: Protocol,
    pub(crate) model: RedisModel,
    pub(crate) users: u64,
    pub(crate) messages: u64,
    pub(crate) big_mailbox: u64,
    pub(crate) circle: u64,
    pub(crate) texts: Texts,
    pub(crate) text_size: usize,
    pub(crate) chooser: KeyChooser,
    pub(crate) weights: Vec<u32>,
    pub(crate) seed: u64,
}

impl Messages {
    /// Builds the plan (loads the text pool; for Redis, numbers every preloaded copy).
    ///
    /// # Errors
    ///
    /// A search kind in the mix against the plain Redis model, which has no search.
    pub(crate) fn new(config: MessagesConfig) -> anyhow::Result<Messages> {
        let searches = config.weights[usize::from(SEARCH)] + config.weights[usize::from(BIGSEARCH)];
        anyhow::ensure!(
            config.protocol == Protocol::Memcache
                || config.model == RedisModel::Indexed
                || searches == 0,
            "the plain Redis model has no search index: use --redis-model indexed for search \
             and bigsearch"
        );
        let mut plan = Messages {
            protocol: config.protocol,
            model: config.model,
            users: config.users,
            messages: config.messages,
            big_mailbox: config.big_mailbox,
            circle: config.circle,
            pool: TextPool::new(config.texts, config.text_size, config.seed),
            chooser: config.chooser,
            weights: config.weights,
            seed: config.seed,
            lids: Vec::new(),
            counts: Vec::new(),
        };
        if plan.protocol == Protocol::Redis {
            plan.number_copies();
        }
        Ok(plan)
    }

    /// Numbers the copies of every preloaded send in item order, as the per-owner counters
    /// would: the preload writes them in parallel, in any order, with these lids.
    fn number_copies(&mut self) {
        let sends = self.messages + self.big_mailbox;
        let mut counts = vec![0u32; usize::try_from(self.users + 2).unwrap_or(usize::MAX)];
        let mut lids = Vec::with_capacity(usize::try_from(sends).unwrap_or(0));
        for item in 0..sends {
            let (from, to, _) = self.preload_message(item);
            let mut next = |user: u64| {
                let count = &mut counts[user as usize];
                *count += 1;
                *count
            };
            let from_lid = next(from);
            lids.push((from_lid, next(to)));
        }
        self.lids = lids;
        self.counts = counts;
    }

    /// Where the texts came from.
    pub(crate) fn text_source(&self) -> &str {
        &self.pool.source
    }

    /// Message copies the preload writes (two per send).
    pub(crate) fn copies(&self) -> u64 {
        2 * (self.messages + self.big_mailbox)
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

    /// A user id drawn by `--distribution`.
    #[inline]
    fn user(&self, rng: &mut SmallRng) -> u64 {
        self.chooser.next(rng) + 1
    }

    /// A sender and a recipient: from the sender's circle (30 % reversed), or uniform.
    #[inline]
    fn pair(&self, rng: &mut SmallRng) -> (u64, u64) {
        let user = self.user(rng);
        if self.circle == 0 {
            let mut peer = rng.gen_range(1..self.users);
            if peer >= user {
                peer += 1;
            }
            return (user, peer);
        }
        let peer = self.circle_peer(user, rng.gen_range(0..self.circle));
        if rng.gen_bool(REPLY_SHARE) {
            (peer, user)
        } else {
            (user, peer)
        }
    }

    /// Two users who have a conversation: those of a random preloaded send (or, without
    /// preloaded sends, a fresh pair).
    fn conversation(&self, rng: &mut SmallRng) -> (u64, u64) {
        if self.messages == 0 {
            return self.pair(rng);
        }
        let (from, to, _) = self.preload_message(rng.gen_range(0..self.messages));
        (from, to)
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
        (from, to, text)
    }

    /// Appends the Redis commands that store one send (no MULTI); returns the replies.
    fn redis_message(&self, out: &mut Vec<u8>, send: RedisSend, date: u64) -> u32 {
        let text = &self.pool.texts[send.text];
        let (from, to) = (send.from, send.to);
        let (from_lid, to_lid) = send.lids;
        let mut replies = 0;
        for (owner, lid, peer, flags, mailbox) in [
            (from, from_lid, to, OUTBOX_FLAGS, &b":out"[..]),
            (to, to_lid, from, INBOX_FLAGS, &b":in"[..]),
        ] {
            resp::command(out, 10);
            resp::arg(out, b"HSET");
            resp::parts(
                out,
                &[Part::S(b"m:"), Part::N(owner), Part::S(b":"), Part::N(lid)],
            );
            resp::arg(out, b"peer");
            resp::num(out, peer);
            resp::arg(out, b"date");
            resp::num(out, date);
            resp::arg(out, b"flags");
            resp::num(out, flags);
            resp::arg(out, b"text");
            resp::arg(out, &text.body);
            let zadd = |out: &mut Vec<u8>, key: &[Part<'_>], score: u64, member: u64| {
                resp::command(out, 4);
                resp::arg(out, b"ZADD");
                resp::parts(out, key);
                resp::num(out, score);
                resp::num(out, member);
            };
            zadd(
                out,
                &[Part::S(b"box:"), Part::N(owner), Part::S(mailbox)],
                lid,
                lid,
            );
            zadd(
                out,
                &[
                    Part::S(b"dlg:"),
                    Part::N(owner),
                    Part::S(b":"),
                    Part::N(peer),
                ],
                lid,
                lid,
            );
            zadd(out, &[Part::S(b"dialogs:"), Part::N(owner)], lid, peer);
            replies += 4;
            if self.model == RedisModel::Indexed {
                for word in &text.words {
                    resp::command(out, 3);
                    resp::arg(out, b"SADD");
                    resp::parts(
                        out,
                        &[Part::S(b"w:"), Part::N(owner), Part::S(b":"), Part::S(word)],
                    );
                    resp::num(out, lid);
                    replies += 1;
                }
            }
        }
        for field in [Part::N(from), Part::S(b"total")] {
            resp::command(out, 4);
            resp::arg(out, b"HINCRBY");
            resp::parts(out, &[Part::S(b"unread:"), Part::N(to)]);
            resp::parts(out, &[field]);
            resp::num(out, 1);
            replies += 1;
        }
        replies
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
                            Part::S(b"w:"),
                            Part::N(owner),
                            Part::S(b":"),
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

    /// Redis: `HGETALL m:<owner>:<lid>` for each lid; returns how many.
    fn redis_fetch(out: &mut Vec<u8>, owner: u64, lid: &[u8]) {
        resp::command(out, 2);
        resp::arg(out, b"HGETALL");
        resp::parts(
            out,
            &[Part::S(b"m:"), Part::N(owner), Part::S(b":"), Part::S(lid)],
        );
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
                let mut lids = [0u64; 2];
                let mut index = 0;
                wire::resp_scalars(reply, |scalar| {
                    if let (Scalar::Bytes(bytes), Some(lid)) = (scalar, lids.get_mut(index)) {
                        *lid = wire::parse_u64(bytes).unwrap_or(0);
                        index += 1;
                    }
                });
                op.lids = (lids[0], lids[1]);
                resp::command(out, 1);
                resp::arg(out, b"MULTI");
                let send = RedisSend {
                    from: op.owner,
                    to: op.peer,
                    text: op.text,
                    lids: op.lids,
                };
                let replies = self.redis_message(out, send, Self::now());
                resp::command(out, 1);
                resp::arg(out, b"EXEC");
                Some(Step::new(Frame::Resp, replies + 2))
            }
            (DIALOGS, 0) => {
                // member (peer), score (lid) pairs.
                let mut pairs = 0usize;
                let mut index = 0usize;
                wire::resp_scalars(reply, |scalar| {
                    if let Scalar::Bytes(bytes) = scalar {
                        if index % 2 == 1 {
                            Self::redis_fetch(out, op.owner, bytes);
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
                resp::parts(out, &[Part::S(b"unread:"), Part::N(op.owner)]);
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
                        Self::redis_fetch(out, op.owner, bytes);
                        count += 1;
                    }
                });
                (count > 0).then_some(Step::new(Frame::Resp, count))
            }
            (READ, 0) => {
                let mut unread = 0;
                wire::resp_scalars(reply, |scalar| {
                    if let Scalar::Bytes(bytes) = scalar {
                        unread = wire::parse_u64(bytes).unwrap_or(0);
                    }
                });
                if unread == 0 {
                    return None;
                }
                let key = [Part::S(b"unread:"), Part::N(op.owner)];
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
                resp::command(out, 1);
                resp::arg(out, b"EXEC");
                Some(Step::new(Frame::Resp, 4))
            }
            _ => None,
        }
    }

    /// Redis: `MSET ctr:<u> <copies> …` for the users of counter item `index`.
    fn redis_counters(&self, out: &mut Vec<u8>, index: u64) -> Step {
        let first = index * COUNTERS_PER_ITEM;
        let last = (first + COUNTERS_PER_ITEM).min(self.counts.len() as u64);
        let users: Vec<u64> = (first..last)
            .filter(|&user| self.counts[user as usize] > 0)
            .collect();
        if users.is_empty() {
            return Step::new(Frame::Resp, 0);
        }
        resp::command(out, 1 + 2 * users.len());
        resp::arg(out, b"MSET");
        for user in users {
            resp::parts(out, &[Part::S(b"ctr:"), Part::N(user)]);
            resp::num(out, u64::from(self.counts[user as usize]));
        }
        Step::new(Frame::Resp, 1)
    }
}

/// One send as the Redis model writes it.
#[derive(Debug, Clone, Copy)]
struct RedisSend {
    from: u64,
    to: u64,
    text: usize,
    /// The lids of the outbox and the inbox copy.
    lids: (u64, u64),
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
        // Redis: after the sends, items that set the lid counters.
        self.messages + self.big_mailbox + (self.users + 2).div_ceil(COUNTERS_PER_ITEM)
    }

    fn preload_batch(&self) -> usize {
        match self.protocol {
            Protocol::Memcache => 256,
            Protocol::Redis => 32,
        }
    }

    fn push_preload(&self, item: u64, out: &mut Vec<u8>) -> Step {
        let sends = self.messages + self.big_mailbox;
        if item >= sends {
            return match self.protocol {
                Protocol::Memcache => Step::new(Frame::McLine, 0),
                Protocol::Redis => self.redis_counters(out, item - sends),
            };
        }
        let (from, to, text) = self.preload_message(item);
        match self.protocol {
            Protocol::Memcache => self.koshka_send(out, from, to, text),
            Protocol::Redis => {
                let (from_lid, to_lid) = self.lids[item as usize];
                let send = RedisSend {
                    from,
                    to,
                    text,
                    lids: (u64::from(from_lid), u64::from(to_lid)),
                };
                let replies = self.redis_message(out, send, DATE_BASE + item);
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
                (op.owner, op.peer) = self.pair(rng);
                op.text = self.pool.pick(rng);
                if redis {
                    for user in [op.owner, op.peer] {
                        resp::command(out, 2);
                        resp::arg(out, b"INCR");
                        resp::parts(out, &[Part::S(b"ctr:"), Part::N(user)]);
                    }
                    Step::new(Frame::Resp, 2)
                } else {
                    self.koshka_send(out, op.owner, op.peer, op.text)
                }
            }
            DIALOGS => {
                op.owner = self.user(rng);
                if redis {
                    resp::command(out, 5);
                    resp::arg(out, b"ZREVRANGE");
                    resp::parts(out, &[Part::S(b"dialogs:"), Part::N(op.owner)]);
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
                let (from, to) = self.conversation(rng);
                // Reads happen in the recipient's mailbox; conversations from either side.
                let swap = kind == READ || rng.gen_bool(0.5);
                (op.owner, op.peer) = if swap { (to, from) } else { (from, to) };
                match (kind, redis) {
                    (CONVERSATION, true) => {
                        resp::command(out, 4);
                        resp::arg(out, b"ZREVRANGE");
                        resp::parts(
                            out,
                            &[
                                Part::S(b"dlg:"),
                                Part::N(op.owner),
                                Part::S(b":"),
                                Part::N(op.peer),
                            ],
                        );
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
                        resp::parts(out, &[Part::S(b"unread:"), Part::N(op.owner)]);
                        resp::num(out, op.peer);
                        Step::new(Frame::Resp, 1)
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
            UNREAD => {
                op.owner = self.user(rng);
                if redis {
                    resp::command(out, 3);
                    resp::arg(out, b"HGET");
                    resp::parts(out, &[Part::S(b"unread:"), Part::N(op.owner)]);
                    resp::arg(out, b"total");
                    Step::new(Frame::Resp, 1)
                } else {
                    let unread = Query::Unread {
                        owner: owner_id(op.owner),
                        peer: None,
                    };
                    with_key(&unread, |key| mc::get(out, &[Part::S(key)]));
                    Step::new(Frame::McGet, 1)
                }
            }
            SEARCH => {
                op.owner = self.user(rng);
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

    fn plan(protocol: Protocol, model: RedisModel, circle: u64) -> anyhow::Result<Messages> {
        let mut weights = vec![1; KINDS.len()];
        if model == RedisModel::Plain && protocol == Protocol::Redis {
            weights[usize::from(SEARCH)] = 0;
            weights[usize::from(BIGSEARCH)] = 0;
        }
        Messages::new(MessagesConfig {
            protocol,
            model,
            users: 1000,
            messages: 100,
            big_mailbox: 10,
            circle,
            texts: Texts::Cut,
            text_size: 100,
            chooser: KeyChooser::new(Distribution::Zipf, 1000, 0.99)?,
            weights,
            seed: 1,
        })
    }

    #[test]
    fn koshka_requests_use_compiled_keys() -> anyhow::Result<()> {
        let plan = plan(Protocol::Memcache, RedisModel::Plain, 5)?;
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
        out.clear();
        let (_, step) = plan.start(usize::from(UNREAD), &mut rng, &mut (), &mut out);
        assert_eq!(step, Step::new(Frame::McGet, 1));
        assert!(out.starts_with(b"get unreadcount"));
        Ok(())
    }

    #[test]
    fn redis_send_is_two_incrs_then_multi_exec() -> anyhow::Result<()> {
        for model in [RedisModel::Plain, RedisModel::Indexed] {
            let plan = plan(Protocol::Redis, model, 0)?;
            let mut rng = SmallRng::seed_from_u64(1);
            let mut out = Vec::new();
            let (mut op, step) = plan.start(usize::from(SEND), &mut rng, &mut (), &mut out);
            assert_eq!(step, Step::new(Frame::Resp, 2));
            let text = String::from_utf8_lossy(&out).into_owned();
            assert!(text.contains("INCR") && text.contains("ctr:"), "{text}");
            out.clear();
            let step = plan.next(&mut op, b":42\r\n:7\r\n", &mut rng, &mut (), &mut out);
            let words = match model {
                RedisModel::Plain => 0,
                RedisModel::Indexed => plan.pool.texts[op.text].words.len() as u32,
            };
            assert_eq!(step, Some(Step::new(Frame::Resp, 12 + 2 * words)));
            let text = String::from_utf8_lossy(&out);
            let from = op.owner;
            let head = "*1\r\n$5\r\nMULTI\r\n*10\r\n$4\r\nHSET\r\n";
            assert!(text.starts_with(head), "{text}");
            assert!(text.contains(&format!("m:{from}:42\r\n")), "{text}");
            assert!(text.contains(&format!("m:{}:7\r\n", op.peer)), "{text}");
            assert!(text.ends_with("*1\r\n$4\r\nEXEC\r\n"));
            assert_eq!(text.contains("SADD"), model == RedisModel::Indexed);
        }
        Ok(())
    }

    #[test]
    fn plain_redis_refuses_search() -> anyhow::Result<()> {
        let result = Messages::new(MessagesConfig {
            protocol: Protocol::Redis,
            model: RedisModel::Plain,
            users: 10,
            messages: 1,
            big_mailbox: 0,
            circle: 0,
            texts: Texts::Cut,
            text_size: 100,
            chooser: KeyChooser::new(Distribution::Uniform, 10, 0.99)?,
            weights: vec![1; KINDS.len()],
            seed: 1,
        });
        assert!(result.is_err());
        Ok(())
    }

    #[test]
    fn redis_lids_count_copies_per_owner() -> anyhow::Result<()> {
        let plan = plan(Protocol::Redis, RedisModel::Plain, 0)?;
        let mut seen = vec![0u32; 1002];
        for item in 0..110 {
            let (from, to, _) = plan.preload_message(item);
            assert_ne!(from, to);
            seen[from as usize] += 1;
            assert_eq!(plan.lids[item as usize].0, seen[from as usize]);
            seen[to as usize] += 1;
            assert_eq!(plan.lids[item as usize].1, seen[to as usize]);
        }
        assert_eq!(seen, plan.counts);
        let mut out = Vec::new();
        let counters = plan.preload_items() - 110;
        let mut set = 0;
        for index in 0..counters {
            out.clear();
            if plan.push_preload(110 + index, &mut out).replies == 1 {
                set += String::from_utf8_lossy(&out).matches("ctr:").count();
            }
        }
        assert_eq!(set, seen.iter().filter(|&&count| count > 0).count());
        Ok(())
    }

    #[test]
    fn preload_is_deterministic_and_fills_the_big_mailbox() -> anyhow::Result<()> {
        let plan = plan(Protocol::Memcache, RedisModel::Plain, 5)?;
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
