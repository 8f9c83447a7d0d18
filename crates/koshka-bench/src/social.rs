//! The engine shared by the social workloads (`messages`, `friends`): multi-step logical
//! operations over either protocol, a closed loop per connection, a preload phase and
//! per-operation latency histograms.
//!
//! A logical operation ("open the dialogs list") is a small state machine of *steps*; each
//! step is one or more pipelined requests written together, and the next step may depend on
//! the previous replies (read 20 ids, then fetch those 20 messages). Each connection keeps
//! `--pipeline` operations in flight: every round writes the current step of each in one
//! write, reads all replies, and advances each operation. An operation's latency runs from
//! the write of its first step to the read that completed its last reply.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::wire::{self, Step};

/// How long one round may wait for its replies.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Histogram ceiling (60 s in ns).
const LATENCY_NS_MAX: u64 = 60_000_000_000;

/// Most connections used while preloading.
const PRELOAD_CONNECTIONS_MAX: usize = 8;

/// A social workload over one protocol.
pub(crate) trait Social: Send + Sync + 'static {
    /// The state of one in-flight operation.
    type Op: Send + Default;
    /// Per-connection state.
    type Local: Send;

    /// Operation kind names, indexed by kind.
    fn kinds(&self) -> &'static [&'static str];
    /// Relative weights of the kinds in the mix.
    fn weights(&self) -> &[u32];
    /// A connection's own state.
    fn local(&self, connection: usize) -> Self::Local;
    /// Items written by the preload phase.
    fn preload_items(&self) -> u64;
    /// Preload items written per round per connection.
    fn preload_batch(&self) -> usize;
    /// Appends the requests of preload item `item`.
    fn push_preload(&self, item: u64, out: &mut Vec<u8>) -> Step;
    /// Starts an operation of kind `kind`: appends its first step.
    fn start(
        &self,
        kind: usize,
        rng: &mut SmallRng,
        local: &mut Self::Local,
        out: &mut Vec<u8>,
    ) -> (Self::Op, Step);
    /// Consumes the replies of the current step (all framed, none an error); appends the next
    /// step and returns it, or returns `None` when the operation is complete.
    fn next(
        &self,
        op: &mut Self::Op,
        reply: &[u8],
        rng: &mut SmallRng,
        local: &mut Self::Local,
        out: &mut Vec<u8>,
    ) -> Option<Step>;
}

/// Per-kind tallies of one connection (or all, merged).
#[derive(Debug)]
pub(crate) struct KindCounters {
    pub(crate) ops: u64,
    pub(crate) errors: u64,
    pub(crate) latency_ns: Histogram<u64>,
}

/// What the measured window counted.
#[derive(Debug)]
pub(crate) struct SocialCounters {
    pub(crate) kinds: Vec<KindCounters>,
    pub(crate) total: KindCounters,
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).context("cannot create a histogram")
}

impl KindCounters {
    fn new() -> anyhow::Result<KindCounters> {
        Ok(KindCounters {
            ops: 0,
            errors: 0,
            latency_ns: histogram()?,
        })
    }

    fn merge(&mut self, other: &KindCounters) -> anyhow::Result<()> {
        self.ops += other.ops;
        self.errors += other.errors;
        self.latency_ns
            .add(&other.latency_ns)
            .context("cannot merge histograms")
    }
}

impl SocialCounters {
    pub(crate) fn new(kinds: usize) -> anyhow::Result<SocialCounters> {
        Ok(SocialCounters {
            kinds: (0..kinds)
                .map(|_| KindCounters::new())
                .collect::<anyhow::Result<_>>()?,
            total: KindCounters::new()?,
        })
    }

    pub(crate) fn merge(&mut self, other: &SocialCounters) -> anyhow::Result<()> {
        for (mine, theirs) in self.kinds.iter_mut().zip(&other.kinds) {
            mine.merge(theirs)?;
        }
        self.total.merge(&other.total)
    }

    fn record(&mut self, kind: usize, latency: Duration, error: bool) {
        let latency_ns = u64::try_from(latency.as_nanos())
            .unwrap_or(u64::MAX)
            .clamp(1, LATENCY_NS_MAX);
        for counters in [&mut self.kinds[kind], &mut self.total] {
            counters.ops += 1;
            counters.errors += u64::from(error);
            counters.latency_ns.saturating_record(latency_ns);
        }
    }
}

/// Parses `--mix name=weight,…` against `kinds`; kinds not named get weight 0.
///
/// # Errors
///
/// Unknown names, bad weights, or all weights zero.
pub(crate) fn parse_mix(mix: &str, kinds: &[&str]) -> anyhow::Result<Vec<u32>> {
    let mut weights = vec![0u32; kinds.len()];
    for pair in mix.split(',').filter(|pair| !pair.trim().is_empty()) {
        let (name, weight) = pair.split_once('=').unwrap_or((pair, "1"));
        let index = kinds
            .iter()
            .position(|kind| *kind == name.trim())
            .with_context(|| {
                format!(
                    "unknown operation {name:?} in --mix (known: {})",
                    kinds.join(", ")
                )
            })?;
        weights[index] = weight
            .trim()
            .parse()
            .with_context(|| format!("bad weight {weight:?} in --mix"))?;
    }
    anyhow::ensure!(
        weights.iter().any(|&weight| weight > 0),
        "--mix names no operation with a positive weight"
    );
    Ok(weights)
}

/// Draws a kind by weight.
#[inline]
fn draw_kind(weights: &[u32], total: u32, rng: &mut SmallRng) -> usize {
    let mut ticket = rng.gen_range(0..total);
    for (kind, &weight) in weights.iter().enumerate() {
        if ticket < weight {
            return kind;
        }
        ticket -= weight;
    }
    0
}

/// One connection's buffers, reused for its whole life.
struct Wire {
    stream: TcpStream,
    out: Vec<u8>,
    input: Vec<u8>,
    /// Per step of the round: byte range of its replies and whether any was an error.
    ranges: Vec<(usize, usize, bool)>,
    /// Per step of the round: when its last reply was read.
    done_at: Vec<Instant>,
}

impl Wire {
    fn new(stream: TcpStream) -> Wire {
        Wire {
            stream,
            out: Vec::with_capacity(64 * 1024),
            input: vec![0; 64 * 1024],
            ranges: Vec::new(),
            done_at: Vec::new(),
        }
    }

    /// Writes `out` and reads the replies of every step in `steps`, concurrently.
    async fn exchange(&mut self, steps: &[Step]) -> anyhow::Result<()> {
        let (mut reader, mut writer) = self.stream.split();
        let (out, input, ranges, done_at) = (
            &self.out,
            &mut self.input,
            &mut self.ranges,
            &mut self.done_at,
        );
        ranges.clear();
        done_at.clear();
        let write = async {
            writer.write_all(out).await.context("write to server")?;
            Ok::<(), anyhow::Error>(())
        };
        let read = async {
            let mut filled = 0;
            let mut pos = 0;
            let mut step = 0;
            let mut replies_left = steps.first().map_or(0, |step| step.replies);
            let mut step_start = 0;
            let mut step_error = false;
            let mut now = Instant::now();
            // Steps with no replies complete at once.
            loop {
                while step < steps.len() && replies_left == 0 {
                    ranges.push((step_start, pos, step_error));
                    done_at.push(now);
                    step += 1;
                    step_start = pos;
                    step_error = false;
                    replies_left = steps.get(step).map_or(0, |step| step.replies);
                }
                if step == steps.len() {
                    break;
                }
                if let Some((len, error)) = wire::frame(&input[pos..filled], steps[step].frame)? {
                    pos += len;
                    step_error |= error;
                    replies_left -= 1;
                    continue;
                }
                if filled == input.len() {
                    let grown = input.len() * 2;
                    input.resize(grown, 0);
                }
                let read = tokio::time::timeout(REPLY_TIMEOUT, reader.read(&mut input[filled..]))
                    .await
                    .context("no reply from the server within 30 s")?
                    .context("read from server")?;
                anyhow::ensure!(read > 0, "server closed the connection");
                filled += read;
                now = Instant::now();
            }
            anyhow::ensure!(
                pos == filled,
                "server sent {} unexpected bytes",
                filled - pos
            );
            Ok(())
        };
        let (written, read) = tokio::join!(write, read);
        written?;
        read
    }
}

/// Writes preload items `items` over one connection; returns the number of failed items.
async fn preload_range<W: Social>(
    stream: TcpStream,
    plan: Arc<W>,
    items: std::ops::Range<u64>,
) -> anyhow::Result<u64> {
    let mut wire = Wire::new(stream);
    let mut steps = Vec::new();
    let mut errors = 0;
    let mut next = items.start;
    let batch = plan.preload_batch() as u64;
    while next < items.end {
        wire.out.clear();
        steps.clear();
        let end = (next + batch).min(items.end);
        for item in next..end {
            steps.push(plan.push_preload(item, &mut wire.out));
        }
        next = end;
        wire.exchange(&steps).await?;
        errors += wire.ranges.iter().filter(|range| range.2).count() as u64;
    }
    Ok(errors)
}

/// Runs the preload phase over up to 8 connections; returns (seconds, items).
pub(crate) async fn preload<W: Social>(
    server: &str,
    plan: &Arc<W>,
    connections: usize,
) -> anyhow::Result<(f64, u64)> {
    let started = Instant::now();
    let items = plan.preload_items();
    let connections = connections.clamp(1, PRELOAD_CONNECTIONS_MAX) as u64;
    let per_connection = items.div_ceil(connections).max(1);
    let mut tasks = Vec::new();
    for index in 0..connections {
        let first = index * per_connection;
        let last = (first + per_connection).min(items);
        if first >= last {
            continue;
        }
        let stream = crate::connect(server).await?;
        tasks.push(tokio::spawn(preload_range(
            stream,
            Arc::clone(plan),
            first..last,
        )));
    }
    let mut errors = 0;
    for task in tasks {
        errors += task.await.context("a preload task panicked")??;
    }
    anyhow::ensure!(errors == 0, "{errors} preload items failed");
    Ok((started.elapsed().as_secs_f64(), items))
}

/// One in-flight operation of a connection.
struct Slot<O> {
    op: O,
    kind: usize,
    started: Instant,
    step: Step,
}

/// The measured window, shared by all connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub(crate) start: Instant,
    pub(crate) end: Instant,
}

/// Runs one closed-loop connection with `pipeline` operations in flight until `window.end`;
/// counts operations that started inside the window and completed before it closed.
pub(crate) async fn drive<W: Social>(
    stream: TcpStream,
    plan: Arc<W>,
    window: Window,
    seed: u64,
    connection: usize,
    pipeline: usize,
) -> anyhow::Result<SocialCounters> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut local = plan.local(connection);
    let mut wire = Wire::new(stream);
    let mut counters = SocialCounters::new(plan.kinds().len())?;
    let weights = plan.weights().to_vec();
    let total_weight: u32 = weights.iter().sum();
    let mut slots: Vec<Slot<W::Op>> = Vec::with_capacity(pipeline);
    let mut steps: Vec<Step> = Vec::with_capacity(pipeline);
    let now = Instant::now();
    for _ in 0..pipeline {
        let kind = draw_kind(&weights, total_weight, &mut rng);
        let (op, step) = plan.start(kind, &mut rng, &mut local, &mut wire.out);
        slots.push(Slot {
            op,
            kind,
            started: now,
            step,
        });
    }
    loop {
        if Instant::now() >= window.end {
            return Ok(counters);
        }
        steps.clear();
        steps.extend(slots.iter().map(|slot| slot.step));
        wire.exchange(&steps).await?;
        let Wire {
            out,
            input,
            ranges,
            done_at,
            ..
        } = &mut wire;
        out.clear();
        for (index, slot) in slots.iter_mut().enumerate() {
            let (start, end, error) = ranges[index];
            let done_at = done_at[index];
            let next = if error {
                None
            } else {
                plan.next(&mut slot.op, &input[start..end], &mut rng, &mut local, out)
            };
            match next {
                Some(step) => slot.step = step,
                None => {
                    if slot.started >= window.start && done_at <= window.end {
                        counters.record(slot.kind, done_at - slot.started, error);
                    }
                    let kind = draw_kind(&weights, total_weight, &mut rng);
                    let (op, step) = plan.start(kind, &mut rng, &mut local, out);
                    *slot = Slot {
                        op,
                        kind,
                        started: Instant::now(),
                        step,
                    };
                }
            }
        }
    }
}

/// SplitMix64: a stateless hash for deterministic data generation.
#[inline]
pub(crate) fn mix64(mut value: u64) -> u64 {
    value = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    value = (value ^ (value >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    value ^ (value >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mixes_and_draws_by_weight() -> anyhow::Result<()> {
        let kinds = ["send", "read", "search"];
        assert_eq!(parse_mix("send=3,search=1", &kinds)?, vec![3, 0, 1]);
        assert_eq!(parse_mix("read", &kinds)?, vec![0, 1, 0]);
        assert!(parse_mix("nope=1", &kinds).is_err());
        assert!(parse_mix("send=0", &kinds).is_err());
        let mut rng = SmallRng::seed_from_u64(1);
        let weights = [3, 0, 1];
        let mut seen = [0u32; 3];
        for _ in 0..4000 {
            seen[draw_kind(&weights, 4, &mut rng)] += 1;
        }
        assert_eq!(seen[1], 0);
        assert!(seen[0] > 2 * seen[2], "{seen:?}");
        Ok(())
    }
}
