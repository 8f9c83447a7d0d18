//! An async (tokio) client for the memcached text and meta protocols, as spoken by
//! `koshka serve` and by the real memcached.
//!
//! It is the client koshka's own tests, proxy and bench use. It favours exactness over
//! convenience: every reply is parsed fully, anything unexpected is an [`Error`], and
//! [`Client::send_raw`] lets tests send arbitrary bytes and see the exact reply bytes.
//!
//! # Layout
//!
//! * [`reply`] — the owned [`Response`] types, built from the replies that
//!   [`koshka_proto::parse_reply`] frames and parses (no I/O).
//! * `request` — validates keys and appends each request with [`koshka_proto::encode`].
//! * [`Client`] — one TCP connection: typed commands, raw passthrough.
//! * [`Pipeline`] — queue many requests, send them in one write, read the replies in order.
//! * [`testkit`] (feature `testkit`) — start a real server process on a free loopback port.
//!
//! The codec is koshka-proto's, the one the server uses: requests are encoded by
//! [`koshka_proto::encode`] and replies parsed by [`koshka_proto::parse_reply`], so this crate
//! holds only I/O, validation and owned result types.
//!
//! # What it is not
//!
//! Not a pooled, sharded or reconnecting client, and not the binary protocol. One [`Client`]
//! is one connection; a lost connection is an error, not a retry.

mod error;
pub mod reply;
mod request;
#[cfg(feature = "testkit")]
pub mod testkit;

use std::time::Duration;

use koshka_proto::encode::{MetaCommand, Retrieval, Store};
use koshka_proto::{parse_reply, ParsedReply, Reply, ReplyConfig, StoreMode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

pub use crate::error::{Error, Result};
pub use crate::reply::{ErrorReply, Item, MetaCode, MetaReply, Response, Status};

/// How long a request may wait for its reply (or for write progress) by default.
///
/// Generous because tests run on loaded 2-core machines; at the limit the call returns
/// [`Error::Timeout`] and the connection should be dropped (its reply stream is out of step).
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// Bytes reserved in the read buffer before each read.
const READ_CHUNK_SIZE: usize = 64 * 1024;

/// Buffered reply bytes and where the unread part starts.
#[derive(Debug, Default)]
struct ReadBuffer {
    bytes: Vec<u8>,
    start: usize,
    /// Limits on what the server may announce; they bound `bytes`.
    config: ReplyConfig,
}

impl ReadBuffer {
    /// Reads until one complete reply frame is buffered, consumes it and returns what `take`
    /// makes of the frame's bytes and its parsed reply. A delimited bad reply (a line that is no
    /// reply) reaches `take` as `Err`, so raw passthrough still shows it.
    ///
    /// # Errors
    ///
    /// Transport errors and [`Error::Malformed`] when the stream cannot be framed.
    async fn next_frame<R: AsyncRead + Unpin, T>(
        &mut self,
        reader: &mut R,
        timeout: Duration,
        take: impl FnOnce(&[u8], Result<Reply<'_>>) -> T,
    ) -> Result<T> {
        loop {
            let buffered = &self.bytes[self.start..];
            let (parsed, consumed) = match parse_reply(buffered, &self.config) {
                ParsedReply::Incomplete => (None, 0),
                ParsedReply::Done { reply, consumed } => (Some(Ok(reply)), consumed),
                ParsedReply::Bad {
                    error,
                    line,
                    consumed: Some(consumed),
                } => (Some(Err(reply::malformed(error, line))), consumed),
                ParsedReply::Bad {
                    error,
                    line,
                    consumed: None,
                } => return Err(reply::malformed(error, line)),
            };
            if let Some(parsed) = parsed {
                let taken = take(&buffered[..consumed], parsed);
                self.start += consumed;
                return Ok(taken);
            }
            self.compact();
            self.bytes.reserve(READ_CHUNK_SIZE);
            let read = tokio::time::timeout(timeout, reader.read_buf(&mut self.bytes))
                .await
                .map_err(|_| Error::Timeout { timeout })??;
            if read == 0 {
                return Err(Error::Closed);
            }
        }
    }

    /// Drops consumed bytes so the buffer does not grow without bound.
    fn compact(&mut self) {
        if self.start == self.bytes.len() {
            self.bytes.clear();
            self.start = 0;
        } else if self.start > 0 {
            self.bytes.drain(..self.start);
            self.start = 0;
        }
    }
}

/// One connection to a memcached-protocol server.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    read: ReadBuffer,
    write: Vec<u8>,
    timeout: Duration,
}

impl Client {
    /// Connects to `addr` (e.g. `"127.0.0.1:11211"`) with `TCP_NODELAY` set.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the connection fails, [`Error::Timeout`] after [`TIMEOUT_DEFAULT`].
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<Client> {
        let timeout = TIMEOUT_DEFAULT;
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::Timeout { timeout })??;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            read: ReadBuffer::default(),
            write: Vec::new(),
            timeout,
        })
    }

    /// Sets the per-request timeout (default [`TIMEOUT_DEFAULT`]).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Starts a pipeline: requests are queued locally and sent together by
    /// [`Pipeline::execute`].
    pub fn pipeline(&mut self) -> Pipeline<'_> {
        Pipeline {
            client: self,
            request: Vec::new(),
            replies: 0,
        }
    }

    /// Writes `request` and reads `replies` frames, concurrently, so a deep pipeline cannot
    /// deadlock on full socket buffers. `each` turns every parsed reply into a result slot.
    async fn exchange<T>(
        &mut self,
        request: &[u8],
        replies: usize,
        mut each: impl FnMut(Result<Reply<'_>>) -> T,
    ) -> Result<Vec<T>> {
        let timeout = self.timeout;
        let (mut reader, mut writer) = self.stream.split();
        let read = &mut self.read;
        let write = async {
            tokio::time::timeout(timeout, writer.write_all(request))
                .await
                .map_err(|_| Error::Timeout { timeout })??;
            Ok::<(), Error>(())
        };
        let collect = async {
            let mut slots = Vec::with_capacity(replies);
            for _ in 0..replies {
                let slot = read
                    .next_frame(&mut reader, timeout, |_, parsed| each(parsed))
                    .await?;
                slots.push(slot);
            }
            Ok::<Vec<T>, Error>(slots)
        };
        let (written, slots) = tokio::join!(write, collect);
        written?;
        slots
    }

    /// The one path of every typed command: appends the request with `encode`, sends it, and
    /// turns its one reply into `T` with `accept`. A reply `accept` refuses is the server's error
    /// reply as an [`Error`], or [`Error::Unexpected`].
    async fn call<T>(
        &mut self,
        command: &'static str,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<()>,
        accept: impl Fn(Reply<'_>) -> Option<T>,
    ) -> Result<T> {
        let mut buffer = std::mem::take(&mut self.write);
        buffer.clear();
        let result = match encode(&mut buffer) {
            Ok(()) => {
                self.exchange(&buffer, 1, |parsed| {
                    let reply = parsed?;
                    accept(reply).ok_or_else(|| unexpected(command, reply))
                })
                .await
            }
            Err(error) => Err(error),
        };
        self.write = buffer;
        result?.pop().ok_or(Error::Closed)?
    }

    /// Sends `bytes` verbatim and returns the raw bytes of the first complete reply frame
    /// (through its terminating line: `END`, `STORED`, `ERROR`, a meta code, …).
    ///
    /// Use it to test exact server output. A request that provokes no reply (e.g. `noreply`)
    /// ends in [`Error::Timeout`].
    ///
    /// # Errors
    ///
    /// [`Error::Io`], [`Error::Closed`], [`Error::Timeout`], or [`Error::Malformed`] if the reply
    /// cannot be framed.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<Vec<u8>> {
        let mut frames = self.send_raw_multi(bytes, 1).await?;
        frames.pop().ok_or(Error::Closed)
    }

    /// Sends `bytes` verbatim and returns the raw bytes of the next `replies` reply frames.
    ///
    /// # Errors
    ///
    /// As [`Client::send_raw`].
    pub async fn send_raw_multi(&mut self, bytes: &[u8], replies: usize) -> Result<Vec<Vec<u8>>> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.stream.write_all(bytes))
            .await
            .map_err(|_| Error::Timeout { timeout })??;
        let mut frames = Vec::with_capacity(replies);
        for _ in 0..replies {
            frames.push(self.read_raw().await?);
        }
        Ok(frames)
    }

    /// Reads one more reply frame without sending anything (after a `send_raw` whose request
    /// produced several replies, or after `noreply` commands followed by one that replies).
    ///
    /// # Errors
    ///
    /// As [`Client::send_raw`].
    pub async fn read_raw(&mut self) -> Result<Vec<u8>> {
        self.read
            .next_frame(&mut self.stream, self.timeout, |frame, _| frame.to_vec())
            .await
    }

    /// `get <key>`: the item, or `None` on a miss.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`], transport errors, or the server's error reply.
    pub async fn get(&mut self, key: impl AsRef<[u8]>) -> Result<Option<Item>> {
        let items = self.retrieve(Retrieval::Get, &[key]).await?;
        Ok(items.into_iter().next())
    }

    /// `gets <key>`: the item with its CAS unique, or `None` on a miss.
    ///
    /// # Errors
    ///
    /// As [`Client::get`].
    pub async fn gets(&mut self, key: impl AsRef<[u8]>) -> Result<Option<Item>> {
        let items = self.retrieve(Retrieval::Gets, &[key]).await?;
        Ok(items.into_iter().next())
    }

    /// `get <key> <key> …`: the items that hit, in the server's order.
    ///
    /// # Errors
    ///
    /// As [`Client::get`].
    pub async fn get_multi<K: AsRef<[u8]>>(&mut self, keys: &[K]) -> Result<Vec<Item>> {
        self.retrieve(Retrieval::Get, keys).await
    }

    /// `gets <key> <key> …`: the items that hit, with CAS uniques.
    ///
    /// # Errors
    ///
    /// As [`Client::get`].
    pub async fn gets_multi<K: AsRef<[u8]>>(&mut self, keys: &[K]) -> Result<Vec<Item>> {
        self.retrieve(Retrieval::Gets, keys).await
    }

    /// `gat <exptime> <key>`: get and touch.
    ///
    /// # Errors
    ///
    /// As [`Client::get`].
    pub async fn gat(&mut self, exptime: i64, key: impl AsRef<[u8]>) -> Result<Option<Item>> {
        let items = self.retrieve(Retrieval::Gat(exptime), &[key]).await?;
        Ok(items.into_iter().next())
    }

    /// `gats <exptime> <key>`: get and touch, with the CAS unique.
    ///
    /// # Errors
    ///
    /// As [`Client::get`].
    pub async fn gats(&mut self, exptime: i64, key: impl AsRef<[u8]>) -> Result<Option<Item>> {
        let items = self.retrieve(Retrieval::Gats(exptime), &[key]).await?;
        Ok(items.into_iter().next())
    }

    async fn retrieve<K: AsRef<[u8]>>(
        &mut self,
        command: Retrieval,
        keys: &[K],
    ) -> Result<Vec<Item>> {
        let encode = |out: &mut Vec<u8>| request::retrieval(out, command, keys);
        self.call(command.word(), encode, |reply| match reply {
            Reply::Values(values) => Some(values.iter().map(Item::from).collect()),
            _ => None,
        })
        .await
    }

    /// `set <key> <flags> <exptime> <bytes>`.
    ///
    /// # Errors
    ///
    /// As [`Client::get`]; a value the server refuses is [`Error::ServerError`] or
    /// [`Error::ClientError`].
    pub async fn set(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        flags: u32,
        exptime: i64,
    ) -> Result<Status> {
        let store = request::store(StoreMode::Set, flags, exptime, 0);
        self.store(&store, key.as_ref(), value.as_ref()).await
    }

    /// `add`: stores only if the key is absent (`Stored` or `NotStored`).
    ///
    /// # Errors
    ///
    /// As [`Client::set`].
    pub async fn add(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        flags: u32,
        exptime: i64,
    ) -> Result<Status> {
        let store = request::store(StoreMode::Add, flags, exptime, 0);
        self.store(&store, key.as_ref(), value.as_ref()).await
    }

    /// `replace`: stores only if the key is present (`Stored` or `NotStored`).
    ///
    /// # Errors
    ///
    /// As [`Client::set`].
    pub async fn replace(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        flags: u32,
        exptime: i64,
    ) -> Result<Status> {
        let store = request::store(StoreMode::Replace, flags, exptime, 0);
        self.store(&store, key.as_ref(), value.as_ref()).await
    }

    /// `append`: adds bytes after the existing value (`Stored` or `NotStored`).
    ///
    /// # Errors
    ///
    /// As [`Client::set`].
    pub async fn append(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<Status> {
        let store = request::store(StoreMode::Append, 0, 0, 0);
        self.store(&store, key.as_ref(), value.as_ref()).await
    }

    /// `prepend`: adds bytes before the existing value (`Stored` or `NotStored`).
    ///
    /// # Errors
    ///
    /// As [`Client::set`].
    pub async fn prepend(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<Status> {
        let store = request::store(StoreMode::Prepend, 0, 0, 0);
        self.store(&store, key.as_ref(), value.as_ref()).await
    }

    /// `cas`: stores only if the item's CAS unique is still `cas_unique`
    /// (`Stored`, `Exists` or `NotFound`).
    ///
    /// # Errors
    ///
    /// As [`Client::set`].
    pub async fn cas(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        flags: u32,
        exptime: i64,
        cas_unique: u64,
    ) -> Result<Status> {
        let store = request::store(StoreMode::Cas, flags, exptime, cas_unique);
        self.store(&store, key.as_ref(), value.as_ref()).await
    }

    async fn store(&mut self, store: &Store, key: &[u8], value: &[u8]) -> Result<Status> {
        let encode = |out: &mut Vec<u8>| request::storage(out, store, key, value);
        self.call(store.mode.word(), encode, |reply| match reply {
            Reply::Status(
                status @ (Status::Stored | Status::NotStored | Status::Exists | Status::NotFound),
            ) => Some(status),
            _ => None,
        })
        .await
    }

    /// `delete <key>`: `true` if an item was deleted, `false` if there was none.
    ///
    /// # Errors
    ///
    /// As [`Client::get`].
    pub async fn delete(&mut self, key: impl AsRef<[u8]>) -> Result<bool> {
        let encode = |out: &mut Vec<u8>| request::delete(out, key.as_ref());
        self.call("delete", encode, |reply| match reply {
            Reply::Status(Status::Deleted) => Some(true),
            Reply::Status(Status::NotFound) => Some(false),
            _ => None,
        })
        .await
    }

    /// `incr <key> <delta>`: the new value, or `None` if the key is absent.
    ///
    /// # Errors
    ///
    /// As [`Client::get`]; a non-numeric value is [`Error::ClientError`].
    pub async fn incr(&mut self, key: impl AsRef<[u8]>, delta: u64) -> Result<Option<u64>> {
        self.arithmetic(true, key.as_ref(), delta).await
    }

    /// `decr <key> <delta>`: the new value (floored at 0), or `None` if the key is absent.
    ///
    /// # Errors
    ///
    /// As [`Client::incr`].
    pub async fn decr(&mut self, key: impl AsRef<[u8]>, delta: u64) -> Result<Option<u64>> {
        self.arithmetic(false, key.as_ref(), delta).await
    }

    async fn arithmetic(&mut self, incr: bool, key: &[u8], delta: u64) -> Result<Option<u64>> {
        let command = if incr { "incr" } else { "decr" };
        let encode = |out: &mut Vec<u8>| request::arith(out, key, incr, delta);
        self.call(command, encode, |reply| match reply {
            Reply::Number(value) => Some(Some(value)),
            Reply::Status(Status::NotFound) => Some(None),
            _ => None,
        })
        .await
    }

    /// `touch <key> <exptime>`: `true` if the item exists.
    ///
    /// # Errors
    ///
    /// As [`Client::get`].
    pub async fn touch(&mut self, key: impl AsRef<[u8]>, exptime: i64) -> Result<bool> {
        let encode = |out: &mut Vec<u8>| request::touch(out, key.as_ref(), exptime);
        self.call("touch", encode, |reply| match reply {
            Reply::Status(Status::Touched) => Some(true),
            Reply::Status(Status::NotFound) => Some(false),
            _ => None,
        })
        .await
    }

    /// `stats` (or `stats <group>` with `Some(group)`): the `(name, value)` pairs in order.
    ///
    /// # Errors
    ///
    /// Transport errors or the server's error reply.
    pub async fn stats(&mut self, group: Option<&str>) -> Result<Vec<(String, String)>> {
        let group = group.unwrap_or_default().as_bytes();
        let encode = |out: &mut Vec<u8>| request::stats(out, group);
        self.call("stats", encode, |reply| match Response::from(reply) {
            Response::Stats(stats) => Some(stats),
            Response::Values(items) if items.is_empty() => Some(Vec::new()),
            _ => None,
        })
        .await
    }

    /// `version`: the server's version string.
    ///
    /// # Errors
    ///
    /// Transport errors or an unexpected reply.
    pub async fn version(&mut self) -> Result<String> {
        let encode = |out: &mut Vec<u8>| request::version(out);
        self.call("version", encode, |reply| match Response::from(reply) {
            Response::Version(version) => Some(version),
            _ => None,
        })
        .await
    }

    /// `flush_all` (or `flush_all <delay>`): invalidates every item.
    ///
    /// # Errors
    ///
    /// Transport errors or an unexpected reply.
    pub async fn flush_all(&mut self, delay: Option<u32>) -> Result<()> {
        let encode = |out: &mut Vec<u8>| request::flush_all(out, delay);
        self.call("flush_all", encode, |reply| match reply {
            Reply::Status(Status::Ok) => Some(()),
            _ => None,
        })
        .await
    }

    /// `mg <key> <flags>*` (meta get), e.g. `meta_get("k", &["v", "c", "f"])`.
    ///
    /// # Errors
    ///
    /// As [`Client::get`].
    pub async fn meta_get(&mut self, key: impl AsRef<[u8]>, flags: &[&str]) -> Result<MetaReply> {
        self.meta(MetaCommand::Get, key.as_ref(), flags, None).await
    }

    /// `ms <key> <datalen> <flags>*` (meta set) with `value` as the data block.
    ///
    /// # Errors
    ///
    /// As [`Client::set`].
    pub async fn meta_set(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        flags: &[&str],
    ) -> Result<MetaReply> {
        let (key, value) = (key.as_ref(), value.as_ref());
        self.meta(MetaCommand::Set, key, flags, Some(value)).await
    }

    /// `md <key> <flags>*` (meta delete).
    ///
    /// # Errors
    ///
    /// As [`Client::get`].
    pub async fn meta_delete(
        &mut self,
        key: impl AsRef<[u8]>,
        flags: &[&str],
    ) -> Result<MetaReply> {
        self.meta(MetaCommand::Delete, key.as_ref(), flags, None)
            .await
    }

    /// `ma <key> <flags>*` (meta arithmetic), e.g. `meta_arithmetic("n", &["MI", "D5", "v"])`.
    ///
    /// # Errors
    ///
    /// As [`Client::get`].
    pub async fn meta_arithmetic(
        &mut self,
        key: impl AsRef<[u8]>,
        flags: &[&str],
    ) -> Result<MetaReply> {
        self.meta(MetaCommand::Arith, key.as_ref(), flags, None)
            .await
    }

    /// `mn` (meta no-op): the server answers `MN` once every earlier request is answered.
    ///
    /// # Errors
    ///
    /// Transport errors or an unexpected reply.
    pub async fn meta_noop(&mut self) -> Result<MetaReply> {
        let encode = |out: &mut Vec<u8>| request::meta_noop(out);
        self.call("mn", encode, meta_reply).await
    }

    async fn meta(
        &mut self,
        command: MetaCommand,
        key: &[u8],
        flags: &[&str],
        data: Option<&[u8]>,
    ) -> Result<MetaReply> {
        let encode = |out: &mut Vec<u8>| request::meta(out, command, key, flags, data);
        self.call(command.word(), encode, meta_reply).await
    }
}

fn meta_reply(reply: Reply<'_>) -> Option<MetaReply> {
    match reply {
        Reply::Meta(meta) => Some(meta.into()),
        _ => None,
    }
}

/// Turns a reply that does not answer `command` into the matching error.
fn unexpected(command: &'static str, reply: Reply<'_>) -> Error {
    match Response::from(reply) {
        Response::Error(reply) => reply.into(),
        other => Error::Unexpected {
            command,
            reply: other.describe(),
        },
    }
}

/// Requests queued on one [`Client`], sent in one write by [`Pipeline::execute`], whose replies
/// come back in order.
///
/// ```no_run
/// # async fn demo(client: &mut koshka_client::Client) -> koshka_client::Result<()> {
/// let mut pipeline = client.pipeline();
/// pipeline.set("a", "1", 0, 0)?.get("a")?.incr("a", 5)?;
/// let replies = pipeline.execute().await?;
/// assert_eq!(replies.len(), 3);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Pipeline<'a> {
    client: &'a mut Client,
    request: Vec<u8>,
    replies: usize,
}

impl Pipeline<'_> {
    /// Queues `get <key>…`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`].
    pub fn get<K: AsRef<[u8]>>(&mut self, key: K) -> Result<&mut Self> {
        self.get_multi(&[key])
    }

    /// Queues `get <key> <key> …` (one reply).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`].
    pub fn get_multi<K: AsRef<[u8]>>(&mut self, keys: &[K]) -> Result<&mut Self> {
        self.push(|out| request::retrieval(out, Retrieval::Get, keys))
    }

    /// Queues `set`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`].
    pub fn set(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        flags: u32,
        exptime: i64,
    ) -> Result<&mut Self> {
        let store = request::store(StoreMode::Set, flags, exptime, 0);
        self.push(|out| request::storage(out, &store, key.as_ref(), value.as_ref()))
    }

    /// Queues `delete <key>`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`].
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> Result<&mut Self> {
        self.push(|out| request::delete(out, key.as_ref()))
    }

    /// Queues `incr <key> <delta>`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`].
    pub fn incr(&mut self, key: impl AsRef<[u8]>, delta: u64) -> Result<&mut Self> {
        self.push(|out| request::arith(out, key.as_ref(), true, delta))
    }

    /// Queues one request that answers with one reply; a refused request queues nothing.
    fn push(&mut self, encode: impl FnOnce(&mut Vec<u8>) -> Result<()>) -> Result<&mut Self> {
        encode(&mut self.request)?;
        self.replies += 1;
        Ok(self)
    }

    /// Queues raw bytes that the server answers with `replies` frames (0 for `noreply`).
    pub fn raw(&mut self, bytes: &[u8], replies: usize) -> &mut Self {
        self.request.extend_from_slice(bytes);
        self.replies += replies;
        self
    }

    /// The number of replies queued so far.
    pub fn len(&self) -> usize {
        self.replies
    }

    /// Whether no reply is queued.
    pub fn is_empty(&self) -> bool {
        self.replies == 0
    }

    /// Sends every queued request in one write and reads the replies in order. An error reply
    /// to one request is returned in its slot as [`Response::Error`]; it does not fail the rest.
    ///
    /// # Errors
    ///
    /// Transport errors and [`Error::Malformed`]; after one the connection is out of step.
    pub async fn execute(self) -> Result<Vec<Response>> {
        let slots = self
            .client
            .exchange(&self.request, self.replies, |parsed| {
                parsed.map(Response::from)
            })
            .await?;
        slots.into_iter().collect()
    }
}
