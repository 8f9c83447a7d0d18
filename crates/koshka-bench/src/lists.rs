//! The `lists` workload: membership lists against koshka's lists engine and Redis 7 sets.
//!
//! # Data (preload)
//!
//! `--edges` memberships: the list drawn Zipf over `--lists` lists (exponent
//! `--degree-exponent`: a few lists with tens of thousands of members, most with hundreds),
//! the object uniform over `--users`; duplicates dropped.
//!
//! # Operations (the same logical operation on both protocols)
//!
//! | kind | koshka (compiled keys) | Redis 7 (idiomatic model: a set per list) |
//! |---|---|---|
//! | `check` | `get flags<l>_<o>` (half the time a member) | `SISMEMBER l:<l> <o>` |
//! | `add` | `set entry<l>_<o>` `0` | `SADD l:<l> <o>` |
//! | `intersect` | `get intersect<l>:<100 ids>` (which of 100 ids are members) | `SMISMEMBER l:<l> <100 ids>` |
//!
//! Lists are chosen Zipf (`--distribution`, `--zipf-exponent` over the lists), so big lists
//! are the hot ones.

use koshka_keys::lists::{GetKey, SetKey};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::keys::{with_key, KeyChooser};
use crate::social::{mix64, Social};
use crate::wire::{mc, push_u64, resp, Frame, Part, Step};
use crate::Protocol;

/// Operation kinds, in `--mix` order.
pub(crate) const KINDS: &[&str] = &["check", "add", "intersect"];

/// The default mix.
pub(crate) const DEFAULT_MIX: &str = "check=60,add=20,intersect=20";

const CHECK: usize = 0;
const ADD: usize = 1;

/// Ids per intersection.
pub(crate) const INTERSECT_IDS: usize = 100;

/// Settings of [`Lists::new`].
#[derive(Debug)]
pub(crate) struct ListsConfig {
    pub(crate) protocol: Protocol,
    pub(crate) lists: u64,
    pub(crate) users: u64,
    pub(crate) edges: u64,
    pub(crate) degree_exponent: f64,
    /// Chooses the list of an operation (over `lists`).
    pub(crate) chooser: KeyChooser,
    pub(crate) weights: Vec<u32>,
    pub(crate) seed: u64,
}

/// The plan of the lists workload.
#[derive(Debug)]
pub(crate) struct Lists {
    protocol: Protocol,
    users: u64,
    chooser: KeyChooser,
    weights: Vec<u32>,
    /// Distinct memberships `(list, object)`, in load order.
    edges: Vec<(u32, u32)>,
    /// Members per list (index = list id).
    sizes: Vec<u32>,
}

fn i32_id(id: u64) -> i32 {
    i32::try_from(id).unwrap_or(i32::MAX)
}

impl Lists {
    /// Builds the plan and draws the memberships (deterministic in `seed`).
    ///
    /// # Errors
    /// If ids do not fit, or the degree exponent is not in (0, 1).
    pub(crate) fn new(config: ListsConfig) -> anyhow::Result<Lists> {
        anyhow::ensure!(
            config.lists >= 1 && config.lists <= i32::MAX as u64,
            "--lists must be in 1..=2147483647"
        );
        anyhow::ensure!(
            config.users >= 1 && config.users <= i32::MAX as u64,
            "--users must fit a 32-bit id"
        );
        let sizes_chooser = KeyChooser::new(
            crate::keys::Distribution::Zipf,
            config.lists,
            config.degree_exponent,
        )?;
        let mut rng = SmallRng::seed_from_u64(mix64(config.seed ^ 0x11575));
        let mut edges: Vec<(u32, u32)> = (0..config.edges)
            .map(|_| {
                let list = sizes_chooser.next(&mut rng) + 1;
                let object = rng.gen_range(1..=config.users);
                (list as u32, object as u32)
            })
            .collect();
        edges.sort_unstable();
        edges.dedup();
        let mut sizes = vec![0u32; config.lists as usize + 1];
        for &(list, _) in &edges {
            sizes[list as usize] += 1;
        }
        edges.shuffle(&mut rng);
        Ok(Lists {
            protocol: config.protocol,
            users: config.users,
            chooser: config.chooser,
            weights: config.weights,
            edges,
            sizes,
        })
    }

    /// Distinct memberships the preload writes.
    pub(crate) fn edge_count(&self) -> u64 {
        self.edges.len() as u64
    }

    /// The largest list.
    pub(crate) fn max_size(&self) -> u64 {
        u64::from(self.sizes.iter().copied().max().unwrap_or(0))
    }

    /// The median list size.
    pub(crate) fn median_size(&self) -> u64 {
        let mut sizes = self.sizes[1..].to_vec();
        sizes.sort_unstable();
        u64::from(sizes.get(sizes.len() / 2).copied().unwrap_or(0))
    }

    fn add(&self, out: &mut Vec<u8>, list: u64, object: u64) -> Step {
        match self.protocol {
            Protocol::Memcache => {
                let key = SetKey::Entry {
                    list: i32_id(list),
                    object: i32_id(object),
                };
                with_key(&key, |key| mc::set(out, &[Part::S(key)], &[Part::S(b"0")]));
                Step::new(Frame::McLine, 1)
            }
            Protocol::Redis => {
                resp::command(out, 3);
                resp::arg(out, b"SADD");
                resp::parts(out, &[Part::S(b"l:"), Part::N(list)]);
                resp::num(out, object);
                Step::new(Frame::Resp, 1)
            }
        }
    }

    /// An object: a member of `list` half the time (when the plan knows one), else random.
    fn object(&self, rng: &mut SmallRng) -> u64 {
        rng.gen_range(1..=self.users)
    }
}

impl Social for Lists {
    type Op = ();
    type Local = ();

    fn kinds(&self) -> &'static [&'static str] {
        KINDS
    }

    fn weights(&self) -> &[u32] {
        &self.weights
    }

    fn local(&self, _connection: usize) {}

    fn preload_items(&self) -> u64 {
        self.edge_count()
    }

    fn preload_batch(&self) -> usize {
        256
    }

    fn push_preload(&self, item: u64, out: &mut Vec<u8>) -> Step {
        let (list, object) = self.edges[item as usize];
        self.add(out, u64::from(list), u64::from(object))
    }

    fn start(
        &self,
        kind: usize,
        rng: &mut SmallRng,
        _local: &mut (),
        out: &mut Vec<u8>,
    ) -> ((), Step) {
        let step = match kind {
            CHECK => {
                // Half the checks ask about a member: a random stored membership.
                let (list, object) = if rng.gen_bool(0.5) && !self.edges.is_empty() {
                    let (l, o) = self.edges[rng.gen_range(0..self.edges.len())];
                    (u64::from(l), u64::from(o))
                } else {
                    (self.chooser.next(rng) + 1, self.object(rng))
                };
                match self.protocol {
                    Protocol::Memcache => {
                        let key = GetKey::Flags {
                            list: i32_id(list),
                            object: i32_id(object),
                        };
                        with_key(&key, |key| mc::get(out, &[Part::S(key)]));
                        Step::new(Frame::McGet, 1)
                    }
                    Protocol::Redis => {
                        resp::command(out, 3);
                        resp::arg(out, b"SISMEMBER");
                        resp::parts(out, &[Part::S(b"l:"), Part::N(list)]);
                        resp::num(out, object);
                        Step::new(Frame::Resp, 1)
                    }
                }
            }
            ADD => {
                let list = self.chooser.next(rng) + 1;
                let object = self.object(rng);
                self.add(out, list, object)
            }
            _ => {
                let list = self.chooser.next(rng) + 1;
                match self.protocol {
                    Protocol::Memcache => {
                        out.extend_from_slice(b"get intersect");
                        push_u64(out, list);
                        out.push(b':');
                        for i in 0..INTERSECT_IDS {
                            if i > 0 {
                                out.push(b',');
                            }
                            push_u64(out, self.object(rng));
                        }
                        out.extend_from_slice(b"\r\n");
                        Step::new(Frame::McGet, 1)
                    }
                    Protocol::Redis => {
                        resp::command(out, 2 + INTERSECT_IDS);
                        resp::arg(out, b"SMISMEMBER");
                        resp::parts(out, &[Part::S(b"l:"), Part::N(list)]);
                        for _ in 0..INTERSECT_IDS {
                            resp::num(out, self.object(rng));
                        }
                        Step::new(Frame::Resp, 1)
                    }
                }
            }
        };
        ((), step)
    }

    fn next(
        &self,
        _op: &mut (),
        _reply: &[u8],
        _rng: &mut SmallRng,
        _local: &mut (),
        _out: &mut Vec<u8>,
    ) -> Option<Step> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Distribution;

    fn plan(protocol: Protocol) -> anyhow::Result<Lists> {
        Lists::new(ListsConfig {
            protocol,
            lists: 1000,
            users: 100_000,
            edges: 100_000,
            degree_exponent: 0.6,
            chooser: KeyChooser::new(Distribution::Zipf, 1000, 0.99)?,
            weights: vec![1; KINDS.len()],
            seed: 1,
        })
    }

    #[test]
    fn sizes_are_skewed_and_requests_well_formed() -> anyhow::Result<()> {
        let koshka = plan(Protocol::Memcache)?;
        assert!(koshka.max_size() > 10 * koshka.median_size().max(1));
        let mut rng = SmallRng::seed_from_u64(1);
        let mut out = Vec::new();
        koshka.start(2, &mut rng, &mut (), &mut out);
        let text = String::from_utf8(out.clone())?;
        let key = text.trim_start_matches("get ").trim_end();
        assert!(
            matches!(GetKey::parse(key.as_bytes()), Ok(GetKey::Intersect { .. })),
            "{key}"
        );
        out.clear();
        koshka.push_preload(0, &mut out);
        assert!(out.starts_with(b"set entry"));
        let redis = plan(Protocol::Redis)?;
        out.clear();
        redis.start(2, &mut rng, &mut (), &mut out);
        assert!(String::from_utf8_lossy(&out).contains("SMISMEMBER"));
        Ok(())
    }
}
