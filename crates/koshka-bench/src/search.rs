//! The `search` workload: one shard of a global search cluster, loaded with `--items` items
//! whose texts are real sentences, queried with two-word searches.
//!
//! # Data (preload)
//!
//! `--items` items as shard `--search-shard` of `--search-shards` would hold them: owner
//! `(i mod 10 000 + 1) × shards + shard`, id `i + 1`, type `1 + i mod 3`, date
//! `1 600 000 000 + i`, a rating drawn from `0..1000`, and a text drawn from the fortunes pool
//! (`--texts`, `--text-size`, as the messages workload makes them). With fewer pool texts than
//! items some texts repeat, as re-posts do; searches show each text once.
//!
//! With `--search-through-proxy` the server is a proxy over `--search-shards` shards: the
//! owners are `i mod (10 000 × shards) + 1`, spread over every shard, and each search asks for
//! the whole `--search-limit` (the proxy splits it over the shards and merges).
//!
//! # Operations (koshka only)
//!
//! | kind | request |
//! |---|---|
//! | `search2` | `get search#R<k>(<w1>+<w2>)`: two words that occur together in one pool text, best rating first; `k` is the per-shard limit a proxy asks for a top `--search-limit` over `--search-shards` shards (`shard_limit`: the whole limit up to 32, else `split_limit`) |
//! | `date2` | the same ordered by date, newest first |
//! | `index` | `set item…` of a new item (ids above the preloaded ones) |

use koshka_keys::search::{shard_limit, By, Filter, Order, Query, Search};
use rand::rngs::SmallRng;

use crate::keys::with_key;
use crate::social::{mix64, Social};
use crate::text::TextPool;
use crate::wire::{mc, Frame, Part, Step};

/// Operation kinds, in `--mix` order.
pub(crate) const KINDS: &[&str] = &["search2", "date2", "index"];

/// The default mix: two-word searches only (the target).
pub(crate) const DEFAULT_MIX: &str = "search2=100";

const SEARCH2: usize = 0;
const DATE2: usize = 1;

/// Distinct owners the items are spread over.
const OWNERS: u64 = 10_000;

/// Date of item 0.
const DATE_BASE: u64 = 1_600_000_000;

/// Settings of [`SearchPlan::new`].
#[derive(Debug)]
pub(crate) struct SearchConfig {
    pub(crate) items: u64,
    pub(crate) shards: u32,
    pub(crate) shard: u32,
    pub(crate) limit: u32,
    /// The server is a proxy over every shard (see the module docs).
    pub(crate) whole: bool,
    pub(crate) pool: TextPool,
    pub(crate) weights: Vec<u32>,
    pub(crate) seed: u64,
}

/// The plan of the search workload.
#[derive(Debug)]
pub(crate) struct SearchPlan {
    config: SearchConfig,
    per_shard: u32,
}

/// Per-connection state: the next id of an `index` operation.
#[derive(Debug)]
pub(crate) struct Local {
    next: u64,
}

impl SearchPlan {
    /// Builds the plan.
    ///
    /// # Errors
    ///
    /// If the shard is not below the shard count or the limit is out of range.
    pub(crate) fn new(config: SearchConfig) -> anyhow::Result<SearchPlan> {
        anyhow::ensure!(config.shards >= 1, "--search-shards must be at least 1");
        anyhow::ensure!(
            config.shard < config.shards,
            "--search-shard must be below --search-shards"
        );
        anyhow::ensure!(
            (1..=koshka_keys::search::SEARCH_LIMIT_MAX).contains(&config.limit),
            "--search-limit must be in 1..=1000"
        );
        anyhow::ensure!(
            config.items < 1 << 30,
            "--items must be below 2^30 (item ids are positive i32)"
        );
        let per_shard = if config.whole {
            config.limit
        } else {
            shard_limit(config.limit, config.shards)
        };
        Ok(SearchPlan { config, per_shard })
    }

    /// Where the texts come from.
    pub(crate) fn text_source(&self) -> &str {
        &self.config.pool.source
    }

    /// The per-shard limit each search asks for.
    pub(crate) fn per_shard_limit(&self) -> u32 {
        self.per_shard
    }

    fn owner(&self, item: u64) -> u64 {
        if self.config.whole {
            return item % (OWNERS * u64::from(self.config.shards)) + 1;
        }
        (item % OWNERS + 1) * u64::from(self.config.shards) + u64::from(self.config.shard)
    }

    fn push_item(&self, out: &mut Vec<u8>, item: u64) -> Step {
        let hash = mix64(self.config.seed ^ item.wrapping_mul(0x9E37_79B9));
        let text = &self.config.pool.texts[(hash % self.config.pool.texts.len() as u64) as usize];
        mc::set(
            out,
            &[
                Part::S(b"item"),
                Part::N(self.owner(item)),
                Part::S(b"_"),
                Part::N(item + 1),
            ],
            &[
                Part::N(1 + item % 3),
                Part::S(b","),
                Part::N(DATE_BASE + item),
                Part::S(b","),
                Part::N((hash >> 20) % 1000),
                Part::S(b"\t"),
                Part::S(&text.body),
            ],
        );
        Step::new(Frame::McLine, 1)
    }
}

impl Social for SearchPlan {
    type Op = ();
    type Local = Local;

    fn kinds(&self) -> &'static [&'static str] {
        KINDS
    }

    fn weights(&self) -> &[u32] {
        &self.config.weights
    }

    fn local(&self, connection: usize) -> Local {
        Local {
            next: self.config.items + (connection as u64) * (1 << 24),
        }
    }

    fn preload_items(&self) -> u64 {
        self.config.items
    }

    fn preload_batch(&self) -> usize {
        256
    }

    fn push_preload(&self, item: u64, out: &mut Vec<u8>) -> Step {
        self.push_item(out, item)
    }

    fn start(
        &self,
        kind: usize,
        rng: &mut SmallRng,
        local: &mut Local,
        out: &mut Vec<u8>,
    ) -> ((), Step) {
        if kind != SEARCH2 && kind != DATE2 {
            local.next += 1;
            return ((), self.push_item(out, local.next));
        }
        let pool = &self.config.pool;
        let (text, first, second) = pool.query(rng);
        let words = &pool.texts[text].words;
        let mut query = words[first].to_vec();
        query.push(b' ');
        query.extend_from_slice(&words[second]);
        let search = Search {
            order: Order {
                by: if kind == SEARCH2 {
                    By::Rating
                } else {
                    By::Date
                },
                descending: true,
            },
            limit: self.per_shard,
            offset: 0,
            filter: Filter::default(),
            words: query,
        };
        with_key(&Query::Search(search), |key| mc::get(out, &[Part::S(key)]));
        ((), Step::new(Frame::McGet, 1))
    }

    fn next(
        &self,
        _op: &mut (),
        _reply: &[u8],
        _rng: &mut SmallRng,
        _local: &mut Local,
        _out: &mut Vec<u8>,
    ) -> Option<Step> {
        None
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::Texts;

    #[test]
    fn items_belong_to_the_shard_and_searches_parse() -> anyhow::Result<()> {
        let plan = SearchPlan::new(SearchConfig {
            items: 1000,
            shards: 8,
            shard: 3,
            limit: 20,
            whole: false,
            pool: TextPool::new(Texts::Cut, 100, 1),
            weights: vec![1, 1, 1],
            seed: 1,
        })?;
        assert_eq!(plan.per_shard_limit(), shard_limit(20, 8));
        for item in [0, 1, 999] {
            let mut out = Vec::new();
            plan.push_preload(item, &mut out);
            let line = String::from_utf8_lossy(&out);
            let key = line.split(' ').nth(1).unwrap_or_default();
            let owner: i64 = key
                .trim_start_matches("item")
                .split('_')
                .next()
                .unwrap_or_default()
                .parse()?;
            assert_eq!(koshka_keys::shard_of(owner, 8), 3, "{line}");
            let (head, value) = line.split_once("\r\n").unwrap_or_default();
            assert!(head.starts_with("set item"), "{line}");
            let value = value.trim_end_matches("\r\n");
            koshka_keys::search::Update::parse_set(key.as_bytes(), value.as_bytes())?;
        }
        let mut rng = SmallRng::seed_from_u64(1);
        let mut local = plan.local(0);
        for kind in [SEARCH2, DATE2] {
            let mut out = Vec::new();
            plan.start(kind, &mut rng, &mut local, &mut out);
            let line = String::from_utf8_lossy(&out);
            let key = line.trim_end().trim_start_matches("get ");
            let Query::Search(search) = Query::parse(key.as_bytes())? else {
                anyhow::bail!("{line}");
            };
            assert_eq!(search.limit, plan.per_shard_limit());
            assert_eq!(search.words.split(|&b| b == b' ').count(), 2, "{line}");
        }
        assert!(SearchPlan::new(SearchConfig {
            items: 1,
            shards: 8,
            shard: 8,
            limit: 20,
            whole: false,
            pool: TextPool::new(Texts::Cut, 100, 1),
            weights: vec![1],
            seed: 1,
        })
        .is_err());
        Ok(())
    }

    #[test]
    fn through_a_proxy_items_cover_every_shard_and_searches_ask_the_whole_limit(
    ) -> anyhow::Result<()> {
        let plan = SearchPlan::new(SearchConfig {
            items: 1000,
            shards: 8,
            shard: 0,
            limit: 20,
            whole: true,
            pool: TextPool::new(Texts::Cut, 100, 1),
            weights: vec![1, 1, 1],
            seed: 1,
        })?;
        assert_eq!(plan.per_shard_limit(), 20);
        let shards: std::collections::BTreeSet<u32> = (0..64)
            .map(|item| koshka_keys::shard_of(i64::try_from(plan.owner(item)).unwrap_or(1), 8))
            .collect();
        assert_eq!(shards.len(), 8);
        Ok(())
    }
}
