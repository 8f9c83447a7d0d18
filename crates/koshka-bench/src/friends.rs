//! The `friends` workload: a social graph with skewed degrees.
//!
//! # Data (preload)
//!
//! About `--edges` distinct friendships among `--users` users: one end drawn Zipf with
//! exponent `--degree-exponent` (id 1 has the most friends: thousands with the defaults), the
//! other uniform, so most users have tens of friends and a few have thousands. Then
//! `--big-pairs` pairs of users (the highest ids) get `--big-degree` friends each, a tenth of
//! them shared, for the "common friends of two users with 1 000 friends" target. The
//! `--privacy-users` hottest users store rules for 20 privacy keys `album1`…`album20` (rules
//! such as `*0`, `*G`, `-<uid>*0`, `/0*A`).
//!
//! # Operations (the same logical operation on both protocols)
//!
//! | kind | koshka (compiled keys) | Redis 7 (idiomatic model) |
//! |---|---|---|
//! | `page` | `get recent_friends<u>#1,20` (or `#21,40`) | `ZREVRANGE f:<u> 0 19 WITHSCORES` (sorted set per user, score = date added) |
//! | `common` | `get common_friends<a>,<b>` (two Zipf users) | `ZINTER 2 f:<a> f:<b>`; with `--redis-friend-sets`, `SINTER s:<a> s:<b>` |
//! | `common1k` | as `common`, for a pair with 1 000 friends each | as `common` |
//! | `add` | `set friend<a>_<b>` (both halves, one binlog record) | `MULTI` `ZADD f:<a> <now> <b>` `ZADD f:<b> <now> <a>` `EXEC` |
//! | `remove` | `delete friend<a>_<b>` (an edge this connection added) | `MULTI` 2×`ZREM` `EXEC` |
//! | `privacy` | `get <viewer>~<owner>:album1,…,album20` | `HMGET p:<owner> album1 … album20` + `ZSCORE f:<owner> <viewer>`; then, if the viewer is no friend and a rule names `G`, `ZINTERCARD 2 f:<owner> f:<viewer> LIMIT 1`; rules evaluated in the application |
//!
//! `--redis-friend-sets` also keeps every user's friends in a plain set `s:<u>` (preload, adds
//! and removes write both), so common friends can be the issue's `SINTER` of two sets (hash
//! lookups, unordered reply) instead of `ZINTER` of two sorted sets.

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use koshka_keys::friends::{DeleteKey, GetKey, SetKey};
use koshka_keys::{idiom, Slice};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::keys::{user_id, with_key, Distribution, KeyChooser};
use crate::social::{mix64, Social};
use crate::wire::{self, mc, resp, Frame, Part, Scalar, Step};
use crate::Protocol;

/// Operation kinds, in `--mix` order.
pub(crate) const KINDS: &[&str] = &["page", "common", "common1k", "add", "remove", "privacy"];

/// The default mix of the friends workload.
pub(crate) const DEFAULT_MIX: &str = "page=45,common=15,add=10,remove=10,privacy=20";

const PAGE: usize = 0;
const COMMON: usize = 1;
const COMMON_1K: usize = 2;
const ADD: usize = 3;
const REMOVE: usize = 4;
const PRIVACY: usize = 5;

/// Friends per page.
const PAGE_SIZE: u64 = 20;

/// Privacy keys per user (and per batch check).
const PRIVACY_KEYS: u64 = 20;

/// Preload date base for the Redis model (koshka dates come from its binlog).
const DATE_BASE: u64 = 1_600_000_000;

/// Edges a connection remembers for later removal.
const CHURN_MAX: usize = 1 << 14;

/// Settings of [`Friends::new`].
#[derive(Debug)]
pub(crate) struct FriendsConfig {
    pub(crate) protocol: Protocol,
    pub(crate) users: u64,
    pub(crate) edges: u64,
    pub(crate) degree_exponent: f64,
    pub(crate) big_pairs: u64,
    pub(crate) big_degree: u64,
    pub(crate) privacy_users: u64,
    pub(crate) chooser: KeyChooser,
    pub(crate) weights: Vec<u32>,
    pub(crate) seed: u64,
    /// The Redis model also keeps plain sets, and common friends are `SINTER`.
    pub(crate) redis_sets: bool,
}

/// The plan of the friends workload.
#[derive(Debug)]
pub(crate) struct Friends {
    protocol: Protocol,
    users: u64,
    big_pairs: u64,
    privacy_users: u64,
    chooser: KeyChooser,
    privacy_chooser: KeyChooser,
    weights: Vec<u32>,
    seed: u64,
    /// Distinct friendships `(a, b)`, `a < b`, in load order.
    edges: Vec<(u32, u32)>,
    /// The privacy keys `album1`…`album<PRIVACY_KEYS>`.
    album_keys: Vec<String>,
    /// `--redis-friend-sets`.
    redis_sets: bool,
}

/// One in-flight operation.
#[derive(Debug, Default)]
pub(crate) struct Op {
    kind: usize,
    owner: u64,
    viewer: u64,
}

/// A rule template: `(prefix, uses a uid, suffix)`.
const RULES: [(&[u8], bool, &[u8]); 8] = [
    (b"*0", false, b""),
    (b"*A", false, b""),
    (b"*G", false, b""),
    (b"/G*A", false, b""),
    (b"-", true, b"*0"),
    (b"+", true, b"*0"),
    (b"*0+", true, b""),
    (b"/0*A", false, b""),
];

impl Friends {
    /// Builds the plan and generates the graph (deterministic in `seed`).
    ///
    /// # Errors
    ///
    /// If the degree exponent is not in (0, 1) or the user count cannot fit the big pairs.
    pub(crate) fn new(config: FriendsConfig) -> anyhow::Result<Friends> {
        anyhow::ensure!(
            config.users >= 2 * config.big_pairs + 2 && config.users <= u64::from(u32::MAX),
            "--users must be at least 2 x --big-pairs + 2"
        );
        anyhow::ensure!(
            config.big_degree < config.users,
            "--big-degree must be below --users"
        );
        let degrees = KeyChooser::new(Distribution::Zipf, config.users, config.degree_exponent)?;
        let mut rng = SmallRng::seed_from_u64(mix64(config.seed ^ 0x0F81_E4D5));
        let users = config.users;
        let mut edges: Vec<(u32, u32)> = Vec::with_capacity(config.edges as usize + 1024);
        let mut push = |a: u64, b: u64| {
            if a != b {
                edges.push((a.min(b) as u32, a.max(b) as u32));
            }
        };
        for _ in 0..config.edges {
            let a = degrees.next(&mut rng) + 1;
            let b = rng.gen_range(1..=users);
            push(a, b);
        }
        let shared_count = config.big_degree / 10;
        for pair in 0..config.big_pairs {
            let (p, q) = (users - 2 * pair, users - 2 * pair - 1);
            for _ in 0..shared_count {
                let common = rng.gen_range(1..=users);
                push(p, common);
                push(q, common);
            }
            for _ in shared_count..config.big_degree {
                push(p, rng.gen_range(1..=users));
                push(q, rng.gen_range(1..=users));
            }
        }
        edges.sort_unstable();
        edges.dedup();
        edges.shuffle(&mut rng);
        let privacy_users = config.privacy_users.clamp(1, users);
        Ok(Friends {
            protocol: config.protocol,
            users,
            big_pairs: config.big_pairs,
            privacy_users,
            chooser: config.chooser,
            privacy_chooser: KeyChooser::new(Distribution::Zipf, privacy_users, 0.99)?,
            weights: config.weights,
            seed: config.seed,
            edges,
            album_keys: (1..=PRIVACY_KEYS).map(|k| format!("album{k}")).collect(),
            redis_sets: config.redis_sets,
        })
    }

    /// Distinct friendships the preload writes.
    pub(crate) fn edge_count(&self) -> u64 {
        self.edges.len() as u64
    }

    /// The most friends any user has in the generated graph.
    pub(crate) fn max_degree(&self) -> u64 {
        let mut degrees = vec![0u32; self.users as usize + 1];
        for &(a, b) in &self.edges {
            degrees[a as usize] += 1;
            degrees[b as usize] += 1;
        }
        u64::from(degrees.iter().copied().max().unwrap_or(0))
    }

    /// The rule of `owner`'s privacy key `album<k>`, as parts.
    fn rule(&self, owner: u64, k: u64) -> [Part<'static>; 3] {
        let hash = mix64(self.seed ^ owner.wrapping_mul(31).wrapping_add(k));
        let (prefix, uid, suffix) = RULES[(hash % RULES.len() as u64) as usize];
        let uid = if uid {
            Part::N((hash >> 16) % self.users + 1)
        } else {
            Part::S(b"")
        };
        [Part::S(prefix), uid, Part::S(suffix)]
    }

    #[inline]
    fn user(&self, rng: &mut SmallRng) -> u64 {
        self.chooser.next(rng) + 1
    }

    fn other(&self, user: u64, rng: &mut SmallRng) -> u64 {
        let other = rng.gen_range(1..=self.users);
        if other == user {
            other % self.users + 1
        } else {
            other
        }
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(DATE_BASE, |since| since.as_secs())
    }

    /// Appends a common-friends query of `a` and `b`.
    fn common(&self, out: &mut Vec<u8>, a: u64, b: u64) -> Step {
        match self.protocol {
            Protocol::Memcache => {
                let common = GetKey::CommonFriends {
                    user: user_id(a),
                    other: user_id(b),
                };
                with_key(&common, |key| mc::get(out, &[Part::S(key)]));
                Step::new(Frame::McGet, 1)
            }
            Protocol::Redis if self.redis_sets => {
                resp::command(out, 3);
                resp::arg(out, b"SINTER");
                resp::parts(out, &[Part::S(b"s:"), Part::N(a)]);
                resp::parts(out, &[Part::S(b"s:"), Part::N(b)]);
                Step::new(Frame::Resp, 1)
            }
            Protocol::Redis => {
                resp::command(out, 4);
                resp::arg(out, b"ZINTER");
                resp::num(out, 2);
                resp::parts(out, &[Part::S(b"f:"), Part::N(a)]);
                resp::parts(out, &[Part::S(b"f:"), Part::N(b)]);
                Step::new(Frame::Resp, 1)
            }
        }
    }

    /// Appends a two-sided add or remove of the friendship `a`–`b`.
    fn change(&self, out: &mut Vec<u8>, a: u64, b: u64, add: bool) -> Step {
        match self.protocol {
            Protocol::Memcache => {
                let (user, friend) = (user_id(a), user_id(b));
                if add {
                    let set = SetKey::Friend {
                        user,
                        friend,
                        half: false,
                    };
                    with_key(&set, |key| mc::set(out, &[Part::S(key)], &[Part::S(b"0")]));
                } else {
                    let delete = DeleteKey::Friend {
                        user,
                        friend,
                        half: false,
                    };
                    with_key(&delete, |key| mc::delete(out, &[Part::S(key)]));
                }
                Step::new(Frame::McLine, 1)
            }
            Protocol::Redis => {
                let now = Self::now();
                resp::command(out, 1);
                resp::arg(out, b"MULTI");
                for (owner, friend) in [(a, b), (b, a)] {
                    if add {
                        resp::command(out, 4);
                        resp::arg(out, b"ZADD");
                        resp::parts(out, &[Part::S(b"f:"), Part::N(owner)]);
                        resp::num(out, now);
                    } else {
                        resp::command(out, 3);
                        resp::arg(out, b"ZREM");
                        resp::parts(out, &[Part::S(b"f:"), Part::N(owner)]);
                    }
                    resp::num(out, friend);
                    if self.redis_sets {
                        resp::command(out, 3);
                        resp::arg(out, if add { &b"SADD"[..] } else { &b"SREM"[..] });
                        resp::parts(out, &[Part::S(b"s:"), Part::N(owner)]);
                        resp::num(out, friend);
                    }
                }
                resp::command(out, 1);
                resp::arg(out, b"EXEC");
                Step::new(Frame::Resp, if self.redis_sets { 6 } else { 4 })
            }
        }
    }
}

impl Social for Friends {
    type Op = Op;
    type Local = VecDeque<(u64, u64)>;

    fn kinds(&self) -> &'static [&'static str] {
        KINDS
    }

    fn weights(&self) -> &[u32] {
        &self.weights
    }

    fn local(&self, _connection: usize) -> VecDeque<(u64, u64)> {
        VecDeque::with_capacity(CHURN_MAX)
    }

    fn preload_items(&self) -> u64 {
        self.edge_count() + self.privacy_users
    }

    fn preload_batch(&self) -> usize {
        256
    }

    fn push_preload(&self, item: u64, out: &mut Vec<u8>) -> Step {
        let edges = self.edge_count();
        if item < edges {
            let (a, b) = self.edges[item as usize];
            let (a, b) = (u64::from(a), u64::from(b));
            return match self.protocol {
                Protocol::Memcache => self.change(out, a, b, true),
                Protocol::Redis => {
                    for (owner, friend) in [(a, b), (b, a)] {
                        resp::command(out, 4);
                        resp::arg(out, b"ZADD");
                        resp::parts(out, &[Part::S(b"f:"), Part::N(owner)]);
                        resp::num(out, DATE_BASE + item);
                        resp::num(out, friend);
                        if self.redis_sets {
                            resp::command(out, 3);
                            resp::arg(out, b"SADD");
                            resp::parts(out, &[Part::S(b"s:"), Part::N(owner)]);
                            resp::num(out, friend);
                        }
                    }
                    Step::new(Frame::Resp, if self.redis_sets { 4 } else { 2 })
                }
            };
        }
        let owner = item - edges + 1;
        match self.protocol {
            Protocol::Memcache => {
                for (k, album) in (1..=PRIVACY_KEYS).zip(&self.album_keys) {
                    let privacy = SetKey::Privacy {
                        user: user_id(owner),
                        key: album.clone(),
                    };
                    with_key(&privacy, |key| {
                        mc::set(out, &[Part::S(key)], &self.rule(owner, k));
                    });
                }
                Step::new(Frame::McLine, PRIVACY_KEYS as u32)
            }
            Protocol::Redis => {
                resp::command(out, 2 + 2 * PRIVACY_KEYS as usize);
                resp::arg(out, b"HSET");
                resp::parts(out, &[Part::S(b"p:"), Part::N(owner)]);
                for k in 1..=PRIVACY_KEYS {
                    resp::parts(out, &[Part::S(b"album"), Part::N(k)]);
                    resp::parts(out, &self.rule(owner, k));
                }
                Step::new(Frame::Resp, 1)
            }
        }
    }

    fn start(
        &self,
        kind: usize,
        rng: &mut SmallRng,
        churn: &mut VecDeque<(u64, u64)>,
        out: &mut Vec<u8>,
    ) -> (Op, Step) {
        let mut op = Op {
            kind,
            ..Op::default()
        };
        let redis = self.protocol == Protocol::Redis;
        let step = match kind {
            PAGE => {
                op.owner = self.user(rng);
                let first = if rng.gen_bool(0.8) { 0 } else { PAGE_SIZE };
                if redis {
                    resp::command(out, 5);
                    resp::arg(out, b"ZREVRANGE");
                    resp::parts(out, &[Part::S(b"f:"), Part::N(op.owner)]);
                    resp::num(out, first);
                    resp::num(out, first + PAGE_SIZE - 1);
                    resp::arg(out, b"WITHSCORES");
                    Step::new(Frame::Resp, 1)
                } else {
                    let page = GetKey::RecentFriends {
                        user: user_id(op.owner),
                        slice: Slice::Range {
                            from: i64::try_from(first + 1).unwrap_or(i64::MAX),
                            to: i64::try_from(first + PAGE_SIZE).unwrap_or(i64::MAX),
                        },
                    };
                    with_key(&page, |key| mc::get(out, &[Part::S(key)]));
                    Step::new(Frame::McGet, 1)
                }
            }
            COMMON => {
                let a = self.user(rng);
                let mut b = self.user(rng);
                if b == a {
                    b = self.other(a, rng);
                }
                self.common(out, a, b)
            }
            COMMON_1K => {
                let pair = rng.gen_range(0..self.big_pairs.max(1));
                let p = self.users - 2 * pair;
                self.common(out, p, p - 1)
            }
            ADD => {
                let a = self.user(rng);
                let b = self.other(a, rng);
                if churn.len() == CHURN_MAX {
                    churn.pop_front();
                }
                churn.push_back((a, b));
                self.change(out, a, b, true)
            }
            REMOVE => {
                let (a, b) = churn.pop_front().unwrap_or_else(|| {
                    let a = self.user(rng);
                    (a, self.other(a, rng))
                });
                self.change(out, a, b, false)
            }
            _ => {
                op.owner = self.privacy_chooser.next(rng) + 1;
                op.viewer = self.user(rng);
                if op.viewer == op.owner {
                    op.viewer = self.other(op.owner, rng);
                }
                if redis {
                    resp::command(out, 2 + PRIVACY_KEYS as usize);
                    resp::arg(out, b"HMGET");
                    resp::parts(out, &[Part::S(b"p:"), Part::N(op.owner)]);
                    for k in 1..=PRIVACY_KEYS {
                        resp::parts(out, &[Part::S(b"album"), Part::N(k)]);
                    }
                    resp::command(out, 3);
                    resp::arg(out, b"ZSCORE");
                    resp::parts(out, &[Part::S(b"f:"), Part::N(op.owner)]);
                    resp::num(out, op.viewer);
                    Step::new(Frame::Resp, 2)
                } else {
                    // The batch check `viewer~owner:album1,…` written by the grammar's own
                    // encoder for it, from keys spelled once (no GetKey::Check to allocate).
                    let start = out.len();
                    mc::get(out, &[]);
                    out.truncate(out.len() - 2);
                    debug_assert!(out.len() > start);
                    idiom::encode_check(
                        out,
                        user_id(op.viewer),
                        user_id(op.owner),
                        &self.album_keys,
                    );
                    out.extend_from_slice(b"\r\n");
                    Step::new(Frame::McGet, 1)
                }
            }
        };
        (op, step)
    }

    fn next(
        &self,
        op: &mut Op,
        reply: &[u8],
        _rng: &mut SmallRng,
        _churn: &mut VecDeque<(u64, u64)>,
        out: &mut Vec<u8>,
    ) -> Option<Step> {
        if op.kind != PRIVACY || self.protocol != Protocol::Redis || op.viewer == 0 {
            return None;
        }
        // HMGET values (20), then the ZSCORE: is the viewer a friend?
        let mut index = 0u64;
        let mut names_g = false;
        let mut friend = false;
        wire::resp_scalars(reply, |scalar| {
            match scalar {
                Scalar::Bytes(rule) if index < PRIVACY_KEYS => {
                    names_g |= rule.contains(&b'G');
                }
                Scalar::Bytes(_) => friend = true,
                Scalar::Null => {}
            }
            index += 1;
        });
        let (owner, viewer) = (op.owner, op.viewer);
        op.viewer = 0;
        if friend || !names_g {
            return None;
        }
        resp::command(out, 6);
        resp::arg(out, b"ZINTERCARD");
        resp::num(out, 2);
        resp::parts(out, &[Part::S(b"f:"), Part::N(owner)]);
        resp::parts(out, &[Part::S(b"f:"), Part::N(viewer)]);
        resp::arg(out, b"LIMIT");
        resp::num(out, 1);
        Some(Step::new(Frame::Resp, 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(protocol: Protocol) -> anyhow::Result<Friends> {
        Friends::new(FriendsConfig {
            protocol,
            users: 10_000,
            edges: 50_000,
            degree_exponent: 0.6,
            big_pairs: 2,
            big_degree: 1000,
            privacy_users: 10,
            chooser: KeyChooser::new(Distribution::Zipf, 10_000, 0.99)?,
            weights: vec![1; KINDS.len()],
            seed: 1,
            redis_sets: false,
        })
    }

    #[test]
    fn graph_is_skewed_and_big_pairs_have_their_degree() -> anyhow::Result<()> {
        let plan = plan(Protocol::Memcache)?;
        let mut degrees = vec![0u32; 10_001];
        for &(a, b) in &plan.edges {
            assert!(a < b);
            degrees[a as usize] += 1;
            degrees[b as usize] += 1;
        }
        assert!(degrees[10_000] >= 900, "{}", degrees[10_000]);
        assert!(degrees[1] > 500, "{}", degrees[1]);
        let mut sorted = degrees[1..].to_vec();
        sorted.sort_unstable();
        let median = sorted[sorted.len() / 2];
        assert!((3..50).contains(&median), "median {median}");
        assert_eq!(plan.max_degree(), u64::from(*sorted.last().unwrap_or(&0)));
        Ok(())
    }

    #[test]
    fn requests_are_well_formed() -> anyhow::Result<()> {
        let koshka = plan(Protocol::Memcache)?;
        let mut rng = SmallRng::seed_from_u64(1);
        let mut churn = koshka.local(0);
        let mut out = Vec::new();
        let (_, step) = koshka.start(PRIVACY, &mut rng, &mut churn, &mut out);
        assert_eq!(step, Step::new(Frame::McGet, 1));
        let text = String::from_utf8_lossy(&out).into_owned();
        assert!(
            text.starts_with("get ") && text.contains(":album1,album2,"),
            "{text}"
        );
        assert!(text.ends_with(",album20\r\n"), "{text}");
        let key = text.trim_start_matches("get ").trim_end();
        assert!(
            matches!(GetKey::parse(key.as_bytes()), Ok(GetKey::Check { keys, .. }) if keys.len() == 20),
            "{key}"
        );
        out.clear();
        koshka.push_preload(koshka.edge_count(), &mut out);
        assert!(out.starts_with(b"set privacy1_album1 0 0 "));

        let redis = plan(Protocol::Redis)?;
        out.clear();
        let (mut op, step) = redis.start(PRIVACY, &mut rng, &mut churn, &mut out);
        assert_eq!(step, Step::new(Frame::Resp, 2));
        out.clear();
        let reply = b"*2\r\n$2\r\n*G\r\n$-1\r\n$-1\r\n";
        let step = redis.next(&mut op, reply, &mut rng, &mut churn, &mut out);
        assert_eq!(step, Some(Step::new(Frame::Resp, 1)));
        assert!(String::from_utf8_lossy(&out).contains("ZINTERCARD"));
        out.clear();
        let (_, step) = redis.start(ADD, &mut rng, &mut churn, &mut out);
        assert_eq!(step, Step::new(Frame::Resp, 4));
        assert_eq!(churn.len(), 1);
        Ok(())
    }

    #[test]
    fn redis_sets_model_writes_both_and_asks_sinter() -> anyhow::Result<()> {
        let mut sets = plan(Protocol::Redis)?;
        sets.redis_sets = true;
        let mut out = Vec::new();
        assert_eq!(sets.push_preload(0, &mut out), Step::new(Frame::Resp, 4));
        let text = String::from_utf8_lossy(&out).into_owned();
        assert_eq!(text.matches("ZADD").count(), 2);
        assert_eq!(text.matches("SADD").count(), 2);
        out.clear();
        assert_eq!(sets.common(&mut out, 3, 4), Step::new(Frame::Resp, 1));
        assert_eq!(out, b"*3\r\n$6\r\nSINTER\r\n$3\r\ns:3\r\n$3\r\ns:4\r\n");
        out.clear();
        assert_eq!(
            sets.change(&mut out, 3, 4, false),
            Step::new(Frame::Resp, 6)
        );
        assert_eq!(String::from_utf8_lossy(&out).matches("SREM").count(), 2);
        Ok(())
    }
}
