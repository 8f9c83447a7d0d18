//! The feed key on a news cluster's port: one client round trip for a viewer's feed.
//!
//! `feed<viewer>[_<types>][#<limit>][,<date>,<author>,<id>][:<id,id,…>]`
//!
//! 1. The authors: the listed ids, else the viewer's friends (`friends<viewer>` from the
//!    friends cluster) and, when the map has a lists cluster, whom the viewer follows (the
//!    objects of `list<viewer>` there: groups, and people who are not friends), both asked
//!    in parallel; at most [`FEED_AUTHORS_MAX`], lowest ids first.
//! 2. Every news shard holding some of them gets `set temp<tag>` of only its authors and
//!    `get raw_updates<types>_0,<to>[,<author>,<id>]#<batch>:-<tag>` (one call per shard, all
//!    shards in parallel); `batch` is `limit + 1` (one event more to know whether a next page
//!    exists), doubled on each refill.
//! 3. Every (author, type) pair among the fetched events of a user author is checked with the
//!    friends engine: `get <viewer>~<author>:news<t>,…` on the author's friends shard (one call
//!    per shard). `3` and `?` (no rule) show, `0` hides, `1`/`2` (the friend-of-a-friend step
//!    the author's shard could not decide) are resolved with `common_friends<author>:-<tag>`
//!    against the viewer's friend list. Groups (negative authors) have no privacy rules.
//! 4. A k-way merge by `(date, author, id)` descending takes visible events until `limit + 1`
//!    are found; a shard whose batch runs out before that is asked for its next batch (from its
//!    last event) and the merge goes on.
//! 5. The first `limit` events are grouped: same author, same type, same day (`date / 86400`)
//!    form one item with the stable id `<author>_<type>_<day>`; items are ordered by their
//!    newest event. JSON out, with the cursor of the next page.
//!
//! With the feed cache on (`[feed] cache_ttl_ms`, [`crate::feed_cache`]) the viewer's friend
//! list and privacy answers come from the cache when it holds usable ones, and a page of
//! `limit < HEAD_EVENTS` over at most `HEADS_AUTHORS_MAX` authors is first tried from the
//! authors' cached heads (newest events): a k-way merge over them, privacy checked only for
//! the pairs that can still make the page, used only when no event outside the heads could
//! belong on it; otherwise steps 2–4 run as above.

use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use koshka_keys::idiom::{push_int, CountedList};
use koshka_keys::news::{ALL_TYPES, RAW_LIMIT_MAX, TYPE_MAX};
use koshka_proto::{encode, parse_reply, ParsedReply, Reply};
use tokio::time::Instant;

use crate::backend::{CallError, Frames};
use crate::cluster::Cluster;
use crate::config::Family;
use crate::conn::{values_part, Part, PartFuture};
use crate::feed_cache::{heads_serve, FeedCache, Head, HEAD_EVENTS};
use crate::scatter::Fail;
use crate::stats::{add, bump};
use crate::Shared;

/// Events per page when the key names no `#limit`.
pub const FEED_LIMIT_DEFAULT: u32 = 20;
/// Most events per page.
pub const FEED_LIMIT_MAX: u32 = 1000;
/// Most authors of one feed (listed, or the viewer's friends: the first ones are used).
pub const FEED_AUTHORS_MAX: usize = 10_000;
/// Most events one feed request examines (shown or hidden). A page that reaches it before it
/// is full is returned short, with the cursor of the last event examined, so the next page
/// goes on from there.
pub const FEED_SCAN_MAX: usize = 20_000;
/// Seconds in a day: events of one author and type on the same day (`date / 86400`) group.
pub const DAY_SECONDS: u32 = 86_400;

/// A parsed feed key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedKey {
    /// Who reads the feed (a user id).
    pub viewer: u32,
    /// Event types wanted: bit `t` for type `t`.
    pub types: u32,
    /// Events per page.
    pub limit: u32,
    /// Only events strictly older than this `(date, author, id)`.
    pub cursor: Option<(u32, i32, u32)>,
    /// The authors, when the client lists them (else the viewer's friends).
    pub authors: Option<Vec<i32>>,
}

struct Scan<'a> {
    text: &'a [u8],
    at: usize,
}

impl Scan<'_> {
    fn eat(&mut self, byte: u8) -> bool {
        if self.text.get(self.at) == Some(&byte) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn int(&mut self, what: &str) -> Result<i64, String> {
        let start = self.at;
        if self.text.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        let digits = self.at;
        while self.text.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
        if self.at == digits || self.at - digits > 10 {
            return Err(format!("expected {what} at offset {start}"));
        }
        std::str::from_utf8(&self.text[start..self.at])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad {what} at offset {start}"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let value = self.int(what)?;
        u32::try_from(value).map_err(|_| format!("{what} {value} out of range"))
    }

    fn author(&mut self, what: &str) -> Result<i32, String> {
        let value = self.int(what)?;
        match i32::try_from(value) {
            Ok(id) if id != 0 && id != i32::MIN => Ok(id),
            _ => Err(format!(
                "{what} {value} must be in 1..=2147483647 or -2147483647..=-1"
            )),
        }
    }
}

impl FeedKey {
    /// Parses `feed<viewer>[_<types>][#<limit>][,<date>,<author>,<id>][:<ids>]` (an `N@`
    /// prefix is ignored: the feed spans every shard).
    ///
    /// # Errors
    /// The reason, for a `CLIENT_ERROR`.
    pub fn parse(key: &[u8]) -> Result<FeedKey, String> {
        let (_, key) = koshka_keys::idiom::split_route(key);
        let Some(rest) = key.strip_prefix(b"feed") else {
            return Err("not a feed key".into());
        };
        let mut s = Scan { text: rest, at: 0 };
        let viewer = s.u32("viewer id")?;
        if viewer == 0 || viewer > i32::MAX as u32 {
            return Err(format!("viewer id {viewer} must be in 1..=2147483647"));
        }
        let types = if s.eat(b'_') {
            s.u32("type mask")?
        } else {
            ALL_TYPES
        };
        let limit = if s.eat(b'#') {
            let limit = s.u32("limit")?;
            if limit == 0 || limit > FEED_LIMIT_MAX {
                return Err(format!("limit {limit} must be in 1..={FEED_LIMIT_MAX}"));
            }
            limit
        } else {
            FEED_LIMIT_DEFAULT
        };
        let cursor = if s.eat(b',') {
            let date = s.u32("cursor date")?;
            if !s.eat(b',') {
                return Err("expected ',' after the cursor date".into());
            }
            let author = s.author("cursor author")?;
            if !s.eat(b',') {
                return Err("expected ',' after the cursor author".into());
            }
            Some((date, author, s.u32("cursor id")?))
        } else {
            None
        };
        let authors = if s.eat(b':') {
            let mut ids = Vec::new();
            loop {
                ids.push(s.author("author id")?);
                if ids.len() > FEED_AUTHORS_MAX {
                    return Err(format!("more than {FEED_AUTHORS_MAX} authors"));
                }
                if !s.eat(b',') {
                    break;
                }
            }
            Some(ids)
        } else {
            None
        };
        if s.at != rest.len() {
            return Err(format!(
                "unexpected {:?} at the end of the feed key",
                String::from_utf8_lossy(&rest[s.at..])
            ));
        }
        Ok(FeedKey {
            viewer,
            types,
            limit,
            cursor,
            authors,
        })
    }
}

/// One event of a raw reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Date (unix seconds).
    pub date: u32,
    /// Author.
    pub author: i32,
    /// Id within the author.
    pub id: u32,
    /// Type `1..=31`.
    pub kind: u32,
    /// user, group, owner, place, item.
    pub fields: [i64; 5],
}

impl Event {
    /// The feed order: larger first.
    fn order(&self) -> (u32, i32, u32) {
        (self.date, self.author, self.id)
    }
}

/// Parses `n,date,author,id,type,user,group,owner,place,item,…`.
///
/// # Errors
/// A reason when the reply is not such a list.
pub fn parse_raw(text: &[u8]) -> Result<Vec<Event>, String> {
    let list = CountedList::parse(text).map_err(|e| e.to_string())?;
    let items = list.items;
    if items.len() % 9 != 0 || items.len() / 9 != usize::try_from(list.total).unwrap_or(0) {
        return Err("raw_updates reply of the wrong length".into());
    }
    let bad = |_| "raw_updates reply value out of range".to_string();
    items
        .chunks_exact(9)
        .map(|c| {
            Ok(Event {
                date: u32::try_from(c[0]).map_err(bad)?,
                author: i32::try_from(c[1]).map_err(bad)?,
                id: u32::try_from(c[2]).map_err(bad)?,
                kind: u32::try_from(c[3]).map_err(bad)?,
                fields: [c[4], c[5], c[6], c[7], c[8]],
            })
        })
        .collect()
}

/// The privacy key of event type `t` in the friends engine: `news<t>`.
#[must_use]
pub fn privacy_key(kind: u32) -> String {
    format!("news{kind}")
}

/// Renders a page: the events (newest first) grouped, and the cursor.
#[must_use]
pub fn render(events: &[Event], next: Option<(u32, i32, u32)>) -> Vec<u8> {
    // Items in order of their newest event; the map finds an item by (author, type, day).
    let mut items: Vec<(i32, u32, u32, Vec<&Event>)> = Vec::new();
    let mut at: HashMap<(i32, u32, u32), usize> = HashMap::new();
    for e in events {
        let group = (e.author, e.kind, e.date / DAY_SECONDS);
        let index = *at.entry(group).or_insert_with(|| {
            items.push((group.0, group.1, group.2, Vec::new()));
            items.len() - 1
        });
        items[index].3.push(e);
    }
    let mut out = Vec::with_capacity(64 + events.len() * 96);
    out.extend_from_slice(b"{\"items\":[");
    for (n, (author, kind, day, list)) in items.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(format!("{{\"id\":\"{author}_{kind}_{day}\",\"author\":{author},\"type\":{kind},\"date\":{},\"count\":{},\"events\":[", list[0].date, list.len()).as_bytes());
        for (k, e) in list.iter().enumerate() {
            if k > 0 {
                out.push(b',');
            }
            let [user, group, owner, place, item] = e.fields;
            out.extend_from_slice(format!("{{\"id\":{},\"date\":{},\"user\":{user},\"group\":{group},\"owner\":{owner},\"place\":{place},\"item\":{item}}}", e.id, e.date).as_bytes());
        }
        out.extend_from_slice(b"]}");
    }
    out.extend_from_slice(b"],\"next\":");
    match next {
        Some((date, author, id)) => {
            out.extend_from_slice(format!("\"{date},{author},{id}\"").as_bytes());
        }
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
    out
}

fn client_error(text: &str) -> Fail {
    Fail::Reply(Bytes::from(format!("CLIENT_ERROR {text}\r\n")))
}

/// The value of a one-key retrieval frame (`None` for a miss).
fn one_value(frame: &Bytes) -> Result<Option<Vec<u8>>, Fail> {
    match values_part(frame.clone()) {
        Part::Values(_, 0) | Part::Missed => Ok(None),
        Part::Values(..) => match parse_reply(frame, &koshka_proto::ReplyConfig::DEFAULT) {
            ParsedReply::Done {
                reply: Reply::Values(values),
                ..
            } => Ok(values.iter().next().map(|v| v.data.to_vec())),
            _ => Ok(None),
        },
        Part::Error(line) => Err(Fail::Reply(line)),
        // Only the search scatter builds merged parts; a backend frame never is one.
        Part::Merged { .. } => Err(Fail::Reply(Bytes::from_static(
            b"SERVER_ERROR unexpected merged reply\r\n",
        ))),
    }
}

fn check_stored(frame: &Bytes) -> Result<(), Fail> {
    if frame.as_ref() == b"STORED\r\n" {
        Ok(())
    } else {
        Err(Fail::Reply(frame.clone()))
    }
}

/// Answers a feed key (`key` as the client wrote it) on the news cluster `news`.
pub fn start(news: Arc<Cluster>, shared: Arc<Shared>, key: Vec<u8>, affinity: usize) -> PartFuture {
    let parsed = match FeedKey::parse(&key) {
        Ok(parsed) => parsed,
        Err(e) => {
            return Box::pin(std::future::ready(Part::Error(
                format!("CLIENT_ERROR {e}\r\n").into(),
            )))
        }
    };
    Box::pin(async move {
        bump(&news.stats.scatter_gathers);
        let (friends, lists) = {
            let clusters = shared.clusters.read();
            let find = |family| {
                clusters
                    .values()
                    .map(|cell| cell.load())
                    .find(|c| c.family() == family)
            };
            (find(Family::Friends), find(Family::Lists))
        };
        let deadline = Instant::now() + Duration::from_millis(news.settings.get_timeout_ms);
        let cache: &FeedCache = &shared.feed_cache;
        let feed = Feed {
            news: &news,
            friends: friends.as_deref(),
            lists: lists.as_deref(),
            shared: &shared,
            cache,
            // Read before anything is asked of a node (see feed_cache.rs).
            viewer_gen: cache.friends_gen(i64::from(parsed.viewer)),
            follows_gen: cache.follows_gen(parsed.viewer),
            affinity,
            deadline,
            key: parsed,
        };
        let result = feed.run().await;
        if cache.enabled() {
            let c = &cache.counters;
            let stats = &news.stats;
            let load =
                |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            let store = |a: &std::sync::atomic::AtomicU64, v: u64| {
                a.store(v, std::sync::atomic::Ordering::Relaxed);
            };
            store(&stats.feed_cache_hits, load(&c.hits));
            store(&stats.feed_cache_misses, load(&c.misses));
            store(&stats.feed_cache_evictions, load(&c.evictions));
            store(&stats.feed_cache_entries, cache.entries());
        }
        match result {
            Ok(text) => {
                let mut out = Vec::new();
                koshka_proto::reply::value(&mut out, &key, 0, &text, None);
                Part::Values(out.into(), 1)
            }
            Err(Fail::Reply(line)) => Part::Error(line),
            Err(Fail::Call(CallError::Timeout { .. })) => {
                bump(&news.stats.shard_timeouts);
                Part::Missed
            }
            Err(Fail::Call(_)) => {
                bump(&news.stats.shard_unavailable);
                Part::Missed
            }
        }
    })
}

struct Feed<'a> {
    news: &'a Cluster,
    friends: Option<&'a Cluster>,
    /// The lists cluster, whose `list<viewer>` names whom the viewer follows.
    lists: Option<&'a Cluster>,
    shared: &'a Shared,
    cache: &'a FeedCache,
    /// The viewer's friends-family generation when the request started.
    viewer_gen: u64,
    /// The viewer's follow-list stamp when the request started.
    follows_gen: [u64; 2],
    affinity: usize,
    deadline: Instant,
    key: FeedKey,
}

/// One news shard's part of the merge.
struct Stream {
    shard: u32,
    authors: Vec<i32>,
    /// Fetched, not yet merged (newest first).
    buffer: std::collections::VecDeque<Event>,
    /// The last event fetched: the next batch starts after it.
    last: Option<(u32, i32, u32)>,
    /// The shard has nothing more.
    done: bool,
    batch: u32,
}

impl Feed<'_> {
    async fn call(
        &self,
        cluster: &Cluster,
        shard: u32,
        bytes: Vec<u8>,
        frames: usize,
    ) -> Result<Frames, CallError> {
        let member = cluster.reader(shard)?.clone();
        member
            .call(Bytes::from(bytes), frames, self.affinity, self.deadline)
            .await
    }

    fn friends_cluster(&self) -> Result<&Cluster, Fail> {
        self.friends
            .ok_or_else(|| client_error("the feed needs a friends cluster in the proxy map"))
    }

    /// The viewer's friend list (from the cache when it holds a usable one).
    async fn viewer_friends(&self) -> Result<Arc<Vec<u32>>, Fail> {
        let viewer = self.key.viewer;
        if let Some(list) = self.cache.list(viewer) {
            return Ok(list);
        }
        let born = std::time::Instant::now();
        let list = Arc::new(self.friends_of(viewer).await?);
        self.cache
            .put_list(viewer, list.clone(), self.viewer_gen, born);
        Ok(list)
    }

    /// Whom the viewer follows: the objects of `list<viewer>` on the lists cluster (none
    /// without one), from the cache when it holds a usable list.
    async fn viewer_follows(&self) -> Result<Arc<Vec<i32>>, Fail> {
        let Some(lists) = self.lists else {
            return Ok(Arc::new(Vec::new()));
        };
        let viewer = self.key.viewer;
        if let Some(list) = self.cache.follows(viewer) {
            return Ok(list);
        }
        let born = std::time::Instant::now();
        let mut bytes = Vec::new();
        encode::get(&mut bytes, [format!("list{viewer}")]);
        let shard = lists.shard_of_owner(i64::from(viewer));
        let frames = self.call(lists, shard, bytes, 1).await?;
        let list: Vec<i32> = one_value(&frames[0])?
            .and_then(|v| CountedList::parse(&v).ok())
            .map(|l| {
                l.items
                    .into_iter()
                    .filter_map(|i| i32::try_from(i).ok())
                    .filter(|&i| i != 0 && i != i32::MIN)
                    .collect()
            })
            .unwrap_or_default();
        let list = Arc::new(list);
        self.cache
            .put_follows(viewer, list.clone(), self.follows_gen, born);
        Ok(list)
    }

    async fn friends_of(&self, user: u32) -> Result<Vec<u32>, Fail> {
        let friends = self.friends_cluster()?;
        let shard = friends.shard_of_owner(i64::from(user));
        crate::scatter::friend_ids(user, |bytes| async move {
            let frames = self.call(friends, shard, bytes, 1).await?;
            one_value(&frames[0])
        })
        .await
    }

    async fn run(self) -> Result<Vec<u8>, Fail> {
        let mut viewer_friends: Option<Arc<Vec<u32>>> = None;
        let mut authors: Vec<i32> = match &self.key.authors {
            Some(list) => list.clone(),
            None => {
                let (list, follows) = tokio::join!(self.viewer_friends(), self.viewer_follows());
                let (list, follows) = (list?, follows?);
                let authors = list
                    .iter()
                    .filter_map(|&f| i32::try_from(f).ok())
                    .chain(follows.iter().copied())
                    .collect();
                viewer_friends = Some(list);
                authors
            }
        };
        authors.sort_unstable();
        authors.dedup();
        authors.truncate(FEED_AUTHORS_MAX);
        if self.cache.enabled() && heads_serve(self.key.limit, authors.len()) {
            if let Some(page) = self.page_from_heads(&authors, &mut viewer_friends).await? {
                bump(&self.news.stats.feed_cache_pages);
                return Ok(page);
            }
        }
        let mut by_shard: BTreeMap<u32, Vec<i32>> = BTreeMap::new();
        for a in authors {
            by_shard
                .entry(self.news.shard_of_owner(i64::from(a)))
                .or_default()
                .push(a);
        }
        let want = self.key.limit as usize + 1;
        let first_batch = (self.key.limit + 1).min(RAW_LIMIT_MAX);
        let mut streams: Vec<Stream> = by_shard
            .into_iter()
            .map(|(shard, authors)| Stream {
                shard,
                authors,
                buffer: Default::default(),
                last: self.key.cursor,
                done: false,
                batch: first_batch,
            })
            .collect();
        if streams.len() > 1 {
            bump(&self.news.stats.fanout_requests);
        }
        let mut visible: HashMap<(i32, u32), bool> = HashMap::new();
        let mut page: Vec<Event> = Vec::with_capacity(want);
        let mut scanned = 0usize;
        let mut last_scanned: Option<(u32, i32, u32)> = None;
        loop {
            // Refill every stream that ran dry and may have more.
            let dry: Vec<usize> = (0..streams.len())
                .filter(|&i| streams[i].buffer.is_empty() && !streams[i].done)
                .collect();
            if !dry.is_empty() {
                let fetches = dry.iter().map(|&i| self.fetch(&streams[i]));
                let answers = futures_util::future::join_all(fetches).await;
                let mut fresh = Vec::new();
                for (&i, answer) in dry.iter().zip(answers) {
                    let events = answer?;
                    let s = &mut streams[i];
                    s.done = events.len() < s.batch as usize;
                    s.batch = s.batch.saturating_mul(2).min(RAW_LIMIT_MAX);
                    if let Some(e) = events.last() {
                        s.last = Some(e.order());
                    }
                    fresh.extend(events.iter().copied());
                    s.buffer.extend(events);
                }
                self.check_privacy(&fresh, &mut visible, &mut viewer_friends)
                    .await?;
            }
            // Merge until a stream that may have more runs dry.
            loop {
                if page.len() == want {
                    break;
                }
                if streams.iter().any(|s| s.buffer.is_empty() && !s.done) {
                    break;
                }
                let best = streams
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| s.buffer.front().map(|e| (e.order(), i)))
                    .max();
                let Some((_, i)) = best else {
                    break;
                };
                let Some(e) = streams[i].buffer.pop_front() else {
                    break;
                };
                scanned += 1;
                last_scanned = Some(e.order());
                if e.author < 0 || visible.get(&(e.author, e.kind)).copied().unwrap_or(false) {
                    page.push(e);
                }
                if scanned >= FEED_SCAN_MAX {
                    break;
                }
            }
            let all_done = streams.iter().all(|s| s.buffer.is_empty() && s.done);
            if page.len() == want || all_done || scanned >= FEED_SCAN_MAX {
                break;
            }
        }
        let next = if page.len() == want {
            page.pop();
            page.last().map(Event::order)
        } else if scanned >= FEED_SCAN_MAX && !streams.iter().all(|s| s.buffer.is_empty() && s.done)
        {
            last_scanned
        } else {
            None
        };
        Ok(render(&page, next))
    }

    /// The page from the authors' cached heads (the missing ones are read, one raw query per
    /// author, and cached), when the heads are enough to decide it exactly: every author
    /// whose head is not all of its events must have its oldest cached event at or below the
    /// page's last event (`limit + 1`-th visible). `None` sends the feed down the
    /// shard-by-shard path.
    async fn page_from_heads(
        &self,
        authors: &[i32],
        viewer_friends: &mut Option<Arc<Vec<u32>>>,
    ) -> Result<Option<Vec<u8>>, Fail> {
        let mut heads = self.cache.heads(authors);
        let missing: Vec<usize> = (0..authors.len()).filter(|&i| heads[i].is_none()).collect();
        if !missing.is_empty() {
            let mut by_shard: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
            for &i in &missing {
                by_shard
                    .entry(self.news.shard_of_owner(i64::from(authors[i])))
                    .or_default()
                    .push(i);
            }
            // Generations before the nodes are asked (see feed_cache.rs).
            let born = std::time::Instant::now();
            let gens: HashMap<usize, u64> = missing
                .iter()
                .map(|&i| (i, self.cache.news_gen(i64::from(authors[i]))))
                .collect();
            let asks = by_shard.iter().map(|(shard, list)| async move {
                let mut bytes = Vec::with_capacity(list.len() * 64);
                for &i in list {
                    encode::get(
                        &mut bytes,
                        [format!(
                            "raw_updates{ALL_TYPES}_0,{}#{HEAD_EVENTS}:{}",
                            u32::MAX,
                            authors[i]
                        )],
                    );
                }
                let frames = self.call(self.news, *shard, bytes, list.len()).await?;
                let mut out = Vec::with_capacity(list.len());
                for frame in &frames {
                    let events = match one_value(frame)? {
                        Some(text) => parse_raw(&text).map_err(|e| {
                            Fail::Reply(Bytes::from(format!("SERVER_ERROR {e}\r\n")))
                        })?,
                        None => Vec::new(),
                    };
                    out.push(events);
                }
                Ok::<_, Fail>(out)
            });
            let answers = futures_util::future::join_all(asks).await;
            for ((_, list), answer) in by_shard.iter().zip(answers) {
                for (&i, events) in list.iter().zip(answer?) {
                    let head = Arc::new(Head {
                        complete: events.len() < HEAD_EVENTS as usize,
                        events,
                    });
                    self.cache
                        .put_head(authors[i], head.clone(), gens[&i], born);
                    heads[i] = Some(head);
                }
            }
        }
        let heads: Vec<Arc<Head>> = heads.into_iter().flatten().collect();
        let want = self.key.limit as usize + 1;
        let types = self.key.types;
        let cursor = self.key.cursor;
        // The first event at or after `from` of head `h` that the page may show.
        let next_in = |h: &Head, from: usize| {
            (from..h.events.len()).find(|&p| {
                let e = &h.events[p];
                e.kind <= TYPE_MAX
                    && types & (1 << e.kind) != 0
                    && cursor.is_none_or(|c| e.order() < c)
            })
        };
        let mut visible: HashMap<(i32, u32), bool> = HashMap::new();
        let page = loop {
            let mut heap: BinaryHeap<((u32, i32, u32), usize, usize)> = heads
                .iter()
                .enumerate()
                .filter_map(|(h, head)| next_in(head, 0).map(|p| (head.events[p].order(), h, p)))
                .collect();
            let mut page: Vec<Event> = Vec::with_capacity(want);
            let mut unknown: Vec<Event> = Vec::new();
            let mut scanned = 0usize;
            while page.len() + unknown.len() < want {
                let Some((_, h, p)) = heap.pop() else {
                    break;
                };
                scanned += 1;
                if scanned >= FEED_SCAN_MAX {
                    return Ok(None);
                }
                let e = heads[h].events[p];
                if let Some(q) = next_in(&heads[h], p + 1) {
                    heap.push((heads[h].events[q].order(), h, q));
                }
                if e.author < 0 {
                    page.push(e);
                } else {
                    match visible.get(&(e.author, e.kind)) {
                        Some(true) => page.push(e),
                        Some(false) => {}
                        None => unknown.push(e),
                    }
                }
            }
            if unknown.is_empty() {
                break page;
            }
            self.check_privacy(&unknown, &mut visible, viewer_friends)
                .await?;
        };
        // Exact only if no uncached event could belong on the page.
        let boundary = (page.len() == want).then(|| page[want - 1].order());
        for head in &heads {
            if head.complete {
                continue;
            }
            let oldest = head.events.last().map(Event::order);
            match (boundary, oldest) {
                (Some(b), Some(o)) if o <= b => {}
                _ => return Ok(None),
            }
        }
        let mut page = page;
        let next = if page.len() == want {
            page.pop();
            page.last().map(Event::order)
        } else {
            None
        };
        Ok(Some(render(&page, next)))
    }

    /// The next batch of stream `s`.
    async fn fetch(&self, s: &Stream) -> Result<Vec<Event>, Fail> {
        let tag = self.shared.next_tag();
        let mut value = Vec::with_capacity(s.authors.len() * 8);
        for (n, a) in s.authors.iter().enumerate() {
            if n > 0 {
                value.push(b',');
            }
            push_int(&mut value, i64::from(*a));
        }
        let mut bytes = Vec::with_capacity(value.len() + 128);
        encode::set(&mut bytes, format!("temp{tag}").as_bytes(), &value);
        let mut key = format!("raw_updates{}_0,", self.key.types);
        match s.last {
            Some((date, author, id)) => key.push_str(&format!("{date},{author},{id}")),
            None => key.push_str(&u32::MAX.to_string()),
        }
        key.push_str(&format!("#{}:-{tag}", s.batch));
        encode::get(&mut bytes, [&key]);
        let frames = self.call(self.news, s.shard, bytes, 2).await?;
        check_stored(&frames[0])?;
        let Some(text) = one_value(&frames[1])? else {
            return Ok(Vec::new());
        };
        parse_raw(&text).map_err(|e| Fail::Reply(Bytes::from(format!("SERVER_ERROR {e}\r\n"))))
    }

    /// Decides, for every (user author, type) of `events` not yet known, whether the viewer
    /// may see it.
    async fn check_privacy(
        &self,
        events: &[Event],
        visible: &mut HashMap<(i32, u32), bool>,
        viewer_friends: &mut Option<Arc<Vec<u32>>>,
    ) -> Result<(), Fail> {
        let mut pairs: Vec<(i32, u32)> = events
            .iter()
            .filter(|e| {
                e.author > 0 && e.kind <= TYPE_MAX && !visible.contains_key(&(e.author, e.kind))
            })
            .map(|e| (e.author, e.kind))
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        let viewer = self.key.viewer;
        self.cache.privacy(viewer, self.viewer_gen, &pairs, visible);
        let mut pending: BTreeMap<i32, Vec<u32>> = BTreeMap::new();
        for (author, kind) in pairs {
            if !visible.contains_key(&(author, kind)) {
                pending.entry(author).or_default().push(kind);
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        let friends = self.friends_cluster()?;
        // Generations before the nodes are asked (see feed_cache.rs).
        let born = std::time::Instant::now();
        let gens: HashMap<i32, u64> = pending
            .keys()
            .map(|&a| (a, self.cache.friends_gen(i64::from(a))))
            .collect();
        let mut learned: Vec<(i32, u32, bool, u64)> = Vec::new();
        let mut by_shard: BTreeMap<u32, Vec<(i32, Vec<u32>)>> = BTreeMap::new();
        for (author, kinds) in pending {
            by_shard
                .entry(friends.shard_of_owner(i64::from(author)))
                .or_default()
                .push((author, kinds));
        }
        let asks = by_shard.iter().map(|(shard, checks)| async move {
            let mut bytes = Vec::new();
            for (author, kinds) in checks {
                let keys: Vec<String> = kinds.iter().map(|k| privacy_key(*k)).collect();
                encode::get(
                    &mut bytes,
                    [format!("{viewer}~{author}:{}", keys.join(","))],
                );
            }
            let frames = self.call(friends, *shard, bytes, checks.len()).await?;
            frames
                .iter()
                .map(one_value)
                .collect::<Result<Vec<Option<Vec<u8>>>, Fail>>()
        });
        let answers = futures_util::future::join_all(asks).await;
        // Answers `1`/`2`: the friend-of-a-friend step, per author.
        let mut unresolved: BTreeMap<u32, Vec<(i32, u32, u8)>> = BTreeMap::new();
        for ((shard, checks), answer) in by_shard.iter().zip(answers) {
            for ((author, kinds), value) in checks.iter().zip(answer?) {
                for (n, kind) in kinds.iter().enumerate() {
                    let c = value
                        .as_ref()
                        .and_then(|v| v.get(n).copied())
                        .unwrap_or(b'?');
                    match c {
                        b'3' | b'?' => {
                            visible.insert((*author, *kind), true);
                            learned.push((*author, *kind, true, gens[author]));
                        }
                        b'1' | b'2' => unresolved
                            .entry(*shard)
                            .or_default()
                            .push((*author, *kind, c)),
                        _ => {
                            visible.insert((*author, *kind), false);
                            learned.push((*author, *kind, false, gens[author]));
                        }
                    }
                }
            }
        }
        if unresolved.is_empty() {
            self.cache
                .put_privacy(viewer, self.viewer_gen, &learned, born);
            return Ok(());
        }
        add(
            &self.news.stats.privacy_resolved,
            unresolved.values().map(|l| l.len() as u64).sum(),
        );
        if viewer_friends.is_none() {
            *viewer_friends = Some(self.viewer_friends().await?);
        }
        let mine: &[u32] = viewer_friends.as_deref().map_or(&[][..], Vec::as_slice);
        let asks = unresolved.iter().map(|(shard, list)| async move {
            let mut authors: Vec<i32> = list.iter().map(|(a, _, _)| *a).collect();
            authors.dedup();
            if mine.is_empty() {
                return Ok::<_, Fail>(authors.into_iter().map(|a| (a, false)).collect());
            }
            let tag = self.shared.next_tag();
            let mut value = Vec::new();
            koshka_keys::idiom::encode_id_list(&mut value, mine);
            let mut bytes = Vec::new();
            encode::set(&mut bytes, format!("temp{tag}").as_bytes(), &value);
            for a in &authors {
                encode::get(&mut bytes, [format!("common_friends{a}:-{tag}")]);
            }
            let frames = self.call(friends, *shard, bytes, 1 + authors.len()).await?;
            check_stored(&frames[0])?;
            let mut common = Vec::with_capacity(authors.len());
            for (a, frame) in authors.iter().zip(&frames[1..]) {
                let shared = one_value(frame)?
                    .and_then(|v| CountedList::parse(&v).ok())
                    .is_some_and(|l| l.total > 0);
                common.push((*a, shared));
            }
            Ok(common)
        });
        let answers = futures_util::future::join_all(asks).await;
        for ((_, list), answer) in unresolved.iter().zip(answers) {
            let common: HashMap<i32, bool> = answer?.into_iter().collect();
            for (author, kind, c) in list {
                let fof = common.get(author).copied().unwrap_or(false);
                let shown = (*c == b'1') == fof;
                visible.insert((*author, *kind), shown);
                learned.push((*author, *kind, shown, gens[author]));
            }
        }
        self.cache
            .put_privacy(viewer, self.viewer_gen, &learned, born);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_feed_keys() {
        let k = FeedKey::parse(b"feed10").unwrap();
        assert_eq!(
            (k.viewer, k.types, k.limit, k.cursor, k.authors),
            (10, ALL_TYPES, FEED_LIMIT_DEFAULT, None, None)
        );
        let k = FeedKey::parse(b"3@feed10_6#5,1700000000,-20,7:1,-2,3").unwrap();
        assert_eq!(
            (k.viewer, k.types, k.limit, k.cursor, k.authors),
            (
                10,
                6,
                5,
                Some((1_700_000_000, -20, 7)),
                Some(vec![1, -2, 3])
            )
        );
        for bad in [
            &b"feed"[..],
            b"feed0",
            b"feed-3",
            b"feed10#0",
            b"feed10#1001",
            b"feed10,1,2",
            b"feed10,1,0,3",
            b"feed10:",
            b"feed10:1,,2",
            b"feed10x",
            b"feed99999999999",
            b"feed10:-2147483648",
        ] {
            assert!(
                FeedKey::parse(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let many: Vec<String> = (1..=FEED_AUTHORS_MAX + 1).map(|i| i.to_string()).collect();
        let key = format!("feed1:{}", many.join(","));
        assert!(FeedKey::parse(key.as_bytes()).is_err());
        let key = format!("feed1:{}", many[..FEED_AUTHORS_MAX].join(","));
        assert!(FeedKey::parse(key.as_bytes()).is_ok());
    }

    #[test]
    fn groups_by_author_type_and_day() {
        let e = |date, author, id, kind| Event {
            date,
            author,
            id,
            kind,
            fields: [1, 2, 3, 4, 5],
        };
        let day = DAY_SECONDS * 100;
        let events = [
            e(day + 50, 7, 3, 3),
            e(day + 40, 8, 1, 1),
            e(day + 30, 7, 2, 3),
            e(day - 10, 7, 1, 3),
        ];
        let text = String::from_utf8(render(&events, Some((day - 10, 7, 1)))).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let items = v["items"].as_array().unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0]["id"], "7_3_100");
        assert_eq!(items[0]["count"], 2);
        assert_eq!(items[1]["id"], "8_1_100");
        assert_eq!(items[2]["id"], "7_3_99");
        assert_eq!(v["next"], format!("{},7,1", day - 10));
        assert_eq!(parse_raw(b"0").unwrap(), vec![]);
        assert!(parse_raw(b"1,1,2").is_err());
    }
}
