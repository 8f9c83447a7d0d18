//! The `kv` workload over the memcached text protocol: `get` (single or multi-key) and `set`
//! of fixed-size keys and values, closed-loop with a fixed pipeline depth per connection.
//!
//! Hot path: requests are copied from prebuilt templates into a reused buffer and only the key
//! digits are patched; replies are parsed in a reused buffer by
//! [`koshka_proto::parse_reply`], which borrows from it. Nothing is allocated per request.
//! The templates are encoded by [`koshka_proto::encode`], and the key offsets patched into
//! are found by parsing each template with the server's own request parser.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use koshka_proto::{
    encode, parse, parse_reply, Command, ParseConfig, Parsed, ParsedReply, Reply, Status,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::keys::{KeyChooser, KeyFormat};
use crate::wire;

/// How long one batch may wait for its replies before the bench gives up on the server.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests per write while preloading.
const PRELOAD_BATCH: usize = 256;

/// Histogram ceiling: latencies above it are clamped (60 s in ns).
const LATENCY_NS_MAX: u64 = 60_000_000_000;

/// What one request expects back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `get` of this many keys: `VALUE` blocks then `END`.
    Get(u32),
    /// `set`: one `STORED` line.
    Set,
}

/// The immutable request plan shared by every connection.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) chooser: KeyChooser,
    pub(crate) format: KeyFormat,
    pub(crate) get_ratio: f64,
    pub(crate) multiget: usize,
    pub(crate) pipeline: usize,
    get_template: Vec<u8>,
    get_key_offsets: Vec<usize>,
    set_template: Vec<u8>,
    /// Where the key starts in `set_template`.
    set_key_offset: usize,
}

impl Plan {
    /// Builds the request templates.
    pub(crate) fn new(
        chooser: KeyChooser,
        format: KeyFormat,
        value_size: usize,
        get_ratio: f64,
        multiget: usize,
        pipeline: usize,
    ) -> Plan {
        let blank_key = vec![b'0'; format.size()];
        let mut get_template = Vec::new();
        encode::get(&mut get_template, std::iter::repeat_n(&blank_key, multiget));
        let get_key_offsets = key_offsets(&get_template);
        // A readable, non-repeating-looking value; never contains CR or LF.
        let value: Vec<u8> = (0..value_size)
            .map(|index| b'a' + (index % 26) as u8)
            .collect();
        let mut set_template = Vec::new();
        encode::set(&mut set_template, &blank_key, &value);
        let set_key_offset = key_offsets(&set_template)[0];
        Plan {
            chooser,
            format,
            get_ratio,
            multiget,
            pipeline,
            get_template,
            get_key_offsets,
            set_template,
            set_key_offset,
        }
    }

    /// Appends a `set` of key `index` to `out`.
    #[inline]
    fn push_set(&self, out: &mut Vec<u8>, index: u64) {
        let start = out.len();
        out.extend_from_slice(&self.set_template);
        let key = start + self.set_key_offset;
        self.format
            .write(&mut out[key..key + self.format.size()], index);
    }

    /// Appends a random request to `out` and returns what it expects back.
    #[inline]
    fn push_random(&self, out: &mut Vec<u8>, rng: &mut SmallRng) -> Kind {
        if rng.gen::<f64>() < self.get_ratio {
            let start = out.len();
            out.extend_from_slice(&self.get_template);
            for &offset in &self.get_key_offsets {
                let key = start + offset;
                let index = self.chooser.next(rng);
                self.format
                    .write(&mut out[key..key + self.format.size()], index);
            }
            Kind::Get(self.multiget as u32)
        } else {
            let index = self.chooser.next(rng);
            self.push_set(out, index);
            Kind::Set
        }
    }
}

/// Where each key of the one request in `template` starts, as the server's parser sees it.
///
/// # Panics
///
/// If the template does not parse as one get or store command (a bug in the encoder or in
/// the key format).
fn key_offsets(template: &[u8]) -> Vec<usize> {
    // The bench's own limits (key size, value size, multiget) are checked by its arguments.
    let config = ParseConfig {
        key_len_max: usize::MAX,
        value_size_max: usize::MAX,
        line_len_max: usize::MAX,
        multiget_keys_max: usize::MAX,
    };
    let parsed = parse(template, &config);
    let keys: Vec<&[u8]> = match &parsed {
        Parsed::Done {
            command: Command::Get { keys, .. },
            consumed,
        } if *consumed == template.len() => keys.iter().collect(),
        Parsed::Done {
            command: Command::Store { key, .. },
            consumed,
        } if *consumed == template.len() => vec![*key],
        other => panic!("a request template does not parse back: {other:?}"),
    };
    let base = template.as_ptr() as usize;
    keys.iter()
        .map(|key| key.as_ptr() as usize - base)
        .collect()
}

/// What one connection counted during the measured window.
#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) gets: u64,
    pub(crate) sets: u64,
    pub(crate) get_keys: u64,
    pub(crate) hits: u64,
    pub(crate) errors: u64,
    pub(crate) latency_ns: Histogram<u64>,
}

impl Counters {
    pub(crate) fn new() -> anyhow::Result<Counters> {
        let latency_ns = Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3)
            .context("cannot create the latency histogram")?;
        Ok(Counters {
            gets: 0,
            sets: 0,
            get_keys: 0,
            hits: 0,
            errors: 0,
            latency_ns,
        })
    }

    pub(crate) fn merge(&mut self, other: &Counters) -> anyhow::Result<()> {
        self.gets += other.gets;
        self.sets += other.sets;
        self.get_keys += other.get_keys;
        self.hits += other.hits;
        self.errors += other.errors;
        self.latency_ns
            .add(&other.latency_ns)
            .context("cannot merge latency histograms")?;
        Ok(())
    }
}

/// The parsed outcome of one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scanned {
    /// Bytes the reply occupies.
    pub(crate) len: usize,
    /// `VALUE` blocks seen (gets).
    pub(crate) hits: u32,
    /// The reply was an error line (or an unexpected status).
    pub(crate) error: bool,
}

/// Parses one reply of `kind` at the start of `buf`; `None` if it is not complete yet. A reply
/// other than the one `kind` expects (an error, a line that is no reply) is framed and counted
/// as an error.
///
/// # Errors
///
/// If the stream cannot be framed any more (a `VALUE` line without a parsable length, a
/// limit of [`wire::REPLY_CONFIG`]).
#[inline]
pub(crate) fn scan_reply(buf: &[u8], kind: Kind) -> anyhow::Result<Option<Scanned>> {
    let (reply, len) = match parse_reply(buf, &wire::REPLY_CONFIG) {
        ParsedReply::Incomplete => return Ok(None),
        ParsedReply::Done { reply, consumed } => (Some(reply), consumed),
        ParsedReply::Bad {
            consumed: Some(consumed),
            ..
        } => (None, consumed),
        ParsedReply::Bad {
            error,
            line,
            consumed: None,
        } => return Err(wire::unframeable(error, line)),
    };
    let hits = match (kind, reply) {
        (Kind::Get(_), Some(Reply::Values(values))) => Some(values.len()),
        (Kind::Set, Some(Reply::Status(Status::Stored))) => Some(0),
        _ => None,
    };
    Ok(Some(Scanned {
        len,
        hits: hits.map_or(0, |hits| u32::try_from(hits).unwrap_or(u32::MAX)),
        error: hits.is_none(),
    }))
}

/// The measured window, shared by all connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub(crate) start: Instant,
    pub(crate) end: Instant,
}

/// One connection's buffers, reused for its whole life.
struct Connection {
    stream: TcpStream,
    out: Vec<u8>,
    kinds: Vec<Kind>,
    input: Vec<u8>,
    filled: usize,
}

impl Connection {
    fn new(stream: TcpStream, plan: &Plan, batch: usize) -> Connection {
        let request_max = plan.get_template.len().max(plan.set_template.len());
        let reply_max = plan.multiget * (plan.set_template.len() + 64) + 16;
        Connection {
            stream,
            out: Vec::with_capacity(batch * request_max),
            kinds: Vec::with_capacity(batch),
            input: vec![0; (batch * reply_max).max(64 * 1024)],
            filled: 0,
        }
    }

    /// Sends `out` and reads one reply per entry of `kinds`, concurrently. Calls `on_reply`
    /// with each reply's outcome and the time its last byte was read.
    async fn exchange(
        &mut self,
        mut on_reply: impl FnMut(Kind, Scanned, Instant),
    ) -> anyhow::Result<()> {
        let (mut reader, mut writer) = self.stream.split();
        let (out, kinds, input, filled) =
            (&self.out, &self.kinds, &mut self.input, &mut self.filled);
        let write = async {
            writer.write_all(out).await.context("write to server")?;
            Ok::<(), anyhow::Error>(())
        };
        let read = async {
            let mut done = 0;
            let mut pos = 0;
            let mut now = Instant::now();
            while done < kinds.len() {
                while done < kinds.len() {
                    let Some(scanned) = scan_reply(&input[pos..*filled], kinds[done])? else {
                        break;
                    };
                    on_reply(kinds[done], scanned, now);
                    pos += scanned.len;
                    done += 1;
                }
                if done == kinds.len() {
                    break;
                }
                if pos > 0 {
                    input.copy_within(pos..*filled, 0);
                    *filled -= pos;
                    pos = 0;
                }
                if *filled == input.len() {
                    let grown = input.len() * 2;
                    input.resize(grown, 0);
                }
                let read = tokio::time::timeout(REPLY_TIMEOUT, reader.read(&mut input[*filled..]))
                    .await
                    .context("no reply from the server within 10 s")?
                    .context("read from server")?;
                anyhow::ensure!(read > 0, "server closed the connection");
                *filled += read;
                now = Instant::now();
            }
            // Closed loop: every byte the server sent belongs to this batch.
            anyhow::ensure!(
                pos == *filled,
                "server sent {} unexpected bytes",
                *filled - pos
            );
            *filled = 0;
            Ok(())
        };
        let (written, read) = tokio::join!(write, read);
        written?;
        read
    }
}

/// Sets every key in `indexes` once (before the measured run), in pipelined batches.
pub(crate) async fn preload(
    stream: TcpStream,
    plan: Arc<Plan>,
    indexes: std::ops::Range<u64>,
) -> anyhow::Result<u64> {
    let mut connection = Connection::new(stream, &plan, PRELOAD_BATCH);
    let mut errors = 0;
    let mut next = indexes.start;
    while next < indexes.end {
        connection.out.clear();
        connection.kinds.clear();
        let batch_end = (next + PRELOAD_BATCH as u64).min(indexes.end);
        for index in next..batch_end {
            plan.push_set(&mut connection.out, index);
            connection.kinds.push(Kind::Set);
        }
        next = batch_end;
        connection
            .exchange(|_, scanned, _| errors += u64::from(scanned.error))
            .await?;
    }
    Ok(errors)
}

/// Runs one closed-loop connection until `window.end`; counts replies to batches sent inside
/// the window.
pub(crate) async fn drive(
    stream: TcpStream,
    plan: Arc<Plan>,
    window: Window,
    seed: u64,
) -> anyhow::Result<Counters> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut connection = Connection::new(stream, &plan, plan.pipeline);
    let mut counters = Counters::new()?;
    loop {
        let sent = Instant::now();
        if sent >= window.end {
            return Ok(counters);
        }
        let measured = sent >= window.start;
        connection.out.clear();
        connection.kinds.clear();
        for _ in 0..plan.pipeline {
            let kind = plan.push_random(&mut connection.out, &mut rng);
            connection.kinds.push(kind);
        }
        connection
            .exchange(|kind, scanned, now| {
                if !measured {
                    return;
                }
                let latency_ns = u64::try_from((now - sent).as_nanos()).unwrap_or(u64::MAX);
                counters
                    .latency_ns
                    .saturating_record(latency_ns.clamp(1, LATENCY_NS_MAX));
                counters.errors += u64::from(scanned.error);
                match kind {
                    Kind::Get(keys) => {
                        counters.gets += 1;
                        counters.get_keys += u64::from(keys);
                        counters.hits += u64::from(scanned.hits);
                    }
                    Kind::Set => counters.sets += 1,
                }
            })
            .await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Distribution;

    #[test]
    fn scans_replies() -> anyhow::Result<()> {
        let get = b"VALUE a 0 3\r\nEND\r\nVALUE b 0 1 77\r\nx\r\nEND\r\nSTORED\r\n";
        let first = scan_reply(get, Kind::Get(2))?;
        assert_eq!(
            first,
            Some(Scanned {
                len: 42,
                hits: 2,
                error: false
            })
        );
        assert_eq!(
            scan_reply(&get[42..], Kind::Set)?,
            Some(Scanned {
                len: 8,
                hits: 0,
                error: false
            })
        );
        for cut in 0..42 {
            assert_eq!(scan_reply(&get[..cut], Kind::Get(2))?, None, "cut {cut}");
        }
        let miss = scan_reply(b"END\r\n", Kind::Get(1))?;
        assert_eq!(
            miss,
            Some(Scanned {
                len: 5,
                hits: 0,
                error: false
            })
        );
        let error = scan_reply(b"SERVER_ERROR out of memory\r\n", Kind::Set)?;
        assert!(error.is_some_and(|scanned| scanned.error));
        assert!(scan_reply(b"VALUE a 0 x\r\n", Kind::Get(1)).is_err());
        Ok(())
    }

    #[test]
    fn builds_requests_from_templates() -> anyhow::Result<()> {
        let chooser = KeyChooser::new(Distribution::Uniform, 100, 0.99)?;
        let format = KeyFormat::new(8, 100)?;
        let plan = Plan::new(chooser, format, 5, 1.0, 3, 1);
        let mut out = Vec::new();
        plan.push_set(&mut out, 42);
        assert_eq!(out, b"set key:0042 0 0 5\r\nabcde\r\n");
        out.clear();
        let mut rng = SmallRng::seed_from_u64(1);
        assert_eq!(plan.push_random(&mut out, &mut rng), Kind::Get(3));
        assert_eq!(out.len(), b"get key:0000 key:0000 key:0000\r\n".len());
        assert!(out.starts_with(b"get key:00"));
        Ok(())
    }
}
