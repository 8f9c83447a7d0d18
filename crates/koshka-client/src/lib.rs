//! An async (tokio) client for the memcached text and meta protocols, as spoken by
//! `koshka serve` and by the real memcached.
//!
//! It is the client koshka's own tests, proxy and bench use. It favours exactness over
//! convenience: every reply is parsed fully, anything unexpected is an [`Error`], and
//! [`Client::send_raw`] lets tests send arbitrary bytes and see the exact reply bytes.
//!
//! # Layout
//!
//! * [`reply`] — pure framing ([`reply::frame_len`]) and parsing ([`Response::parse`]), no I/O.
//! * `encode` — request encoding into a caller-owned buffer.
//! * [`Client`] — one TCP connection: typed commands, raw passthrough.
//! * [`Pipeline`] — queue many requests, send them in one write, read the replies in order.
//! * [`testkit`] (feature `testkit`) — start a real server process on a free loopback port.
//!
//! # What it is not
//!
//! Not a pooled, sharded or reconnecting client, and not the binary protocol. One [`Client`]
//! is one connection; a lost connection is an error, not a retry.

mod encode;
mod error;
pub mod reply;
#[cfg(feature = "testkit")]
pub mod testkit;

use std::time::Duration;

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
}

impl ReadBuffer {
    /// Reads until one complete frame is buffered and returns it (consumed).
    async fn next_frame<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        timeout: Duration,
    ) -> Result<&[u8]> {
        loop {
            if let Some(len) = reply::frame_len(&self.bytes[self.start..])? {
                let frame = self.start..self.start + len;
                self.start += len;
                return Ok(&self.bytes[frame]);
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
    /// deadlock on full socket buffers.
    async fn exchange(&mut self, request: &[u8], replies: usize) -> Result<Vec<Response>> {
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
            let mut responses = Vec::with_capacity(replies);
            for _ in 0..replies {
                let frame = read.next_frame(&mut reader, timeout).await?;
                responses.push(Response::parse(frame)?);
            }
            Ok::<Vec<Response>, Error>(responses)
        };
        let (written, responses) = tokio::join!(write, collect);
        written?;
        responses
    }

    /// Encodes one request with `encode`, sends it and returns its one reply.
    async fn request(
        &mut self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<()>,
    ) -> Result<Response> {
        let mut buffer = std::mem::take(&mut self.write);
        buffer.clear();
        let result = match encode(&mut buffer) {
            Ok(()) => self.exchange(&buffer, 1).await,
            Err(error) => Err(error),
        };
        self.write = buffer;
        let mut responses = result?;
        responses.pop().ok_or(Error::Closed)
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
            frames.push(
                self.read
                    .next_frame(&mut self.stream, timeout)
                    .await?
                    .to_vec(),
            );
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
        let frame = self.read.next_frame(&mut self.stream, self.timeout).await?;
        Ok(frame.to_vec())
    }

    /// `get <key>`: the item, or `None` on a miss.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`], transport errors, or the server's error reply.
    pub async fn get(&mut self, key: impl AsRef<[u8]>) -> Result<Option<Item>> {
        let items = self.retrieve("get", None, &[key]).await?;
        Ok(items.into_iter().next())
    }

    /// `gets <key>`: the item with its CAS unique, or `None` on a miss.
    ///
    /// # Errors
    ///
    /// As [`Client::get`].
    pub async fn gets(&mut self, key: impl AsRef<[u8]>) -> Result<Option<Item>> {
        let items = self.retrieve("gets", None, &[key]).await?;
        Ok(items.into_iter().next())
    }

    /// `get <key> <key> …`: the items that hit, in the server's order.
    ///
    /// # Errors
    ///
    /// As [`Client::get`].
    pub async fn get_multi<K: AsRef<[u8]>>(&mut self, keys: &[K]) -> Result<Vec<Item>> {
        self.retrieve("get", None, keys).await
    }

    /// `gets <key> <key> …`: the items that hit, with CAS uniques.
    ///
    /// # Errors
    ///
    /// As [`Client::get`].
    pub async fn gets_multi<K: AsRef<[u8]>>(&mut self, keys: &[K]) -> Result<Vec<Item>> {
        self.retrieve("gets", None, keys).await
    }

    /// `gat <exptime> <key>`: get and touch.
    ///
    /// # Errors
    ///
    /// As [`Client::get`].
    pub async fn gat(&mut self, exptime: i64, key: impl AsRef<[u8]>) -> Result<Option<Item>> {
        let items = self.retrieve("gat", Some(exptime), &[key]).await?;
        Ok(items.into_iter().next())
    }

    /// `gats <exptime> <key>`: get and touch, with the CAS unique.
    ///
    /// # Errors
    ///
    /// As [`Client::get`].
    pub async fn gats(&mut self, exptime: i64, key: impl AsRef<[u8]>) -> Result<Option<Item>> {
        let items = self.retrieve("gats", Some(exptime), &[key]).await?;
        Ok(items.into_iter().next())
    }

    async fn retrieve<K: AsRef<[u8]>>(
        &mut self,
        command: &'static str,
        exptime: Option<i64>,
        keys: &[K],
    ) -> Result<Vec<Item>> {
        let response = self
            .request(|buffer| encode::retrieval(buffer, command, exptime, keys))
            .await?;
        match response {
            Response::Values(items) => Ok(items),
            other => Err(unexpected(command, other)),
        }
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
        self.store("set", key.as_ref(), value.as_ref(), flags, exptime, None)
            .await
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
        self.store("add", key.as_ref(), value.as_ref(), flags, exptime, None)
            .await
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
        self.store(
            "replace",
            key.as_ref(),
            value.as_ref(),
            flags,
            exptime,
            None,
        )
        .await
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
        self.store("append", key.as_ref(), value.as_ref(), 0, 0, None)
            .await
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
        self.store("prepend", key.as_ref(), value.as_ref(), 0, 0, None)
            .await
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
        self.store(
            "cas",
            key.as_ref(),
            value.as_ref(),
            flags,
            exptime,
            Some(cas_unique),
        )
        .await
    }

    async fn store(
        &mut self,
        command: &'static str,
        key: &[u8],
        value: &[u8],
        flags: u32,
        exptime: i64,
        cas_unique: Option<u64>,
    ) -> Result<Status> {
        let response = self
            .request(|buffer| {
                let storage = encode::Storage {
                    command,
                    key,
                    value,
                    flags,
                    exptime,
                    cas_unique,
                };
                encode::storage(buffer, &storage)
            })
            .await?;
        match response {
            Response::Status(
                status @ (Status::Stored | Status::NotStored | Status::Exists | Status::NotFound),
            ) => Ok(status),
            other => Err(unexpected(command, other)),
        }
    }

    /// `delete <key>`: `true` if an item was deleted, `false` if there was none.
    ///
    /// # Errors
    ///
    /// As [`Client::get`].
    pub async fn delete(&mut self, key: impl AsRef<[u8]>) -> Result<bool> {
        let key = key.as_ref();
        let response = self
            .request(|buffer| encode::keyed(buffer, "delete", key, None))
            .await?;
        match response {
            Response::Status(Status::Deleted) => Ok(true),
            Response::Status(Status::NotFound) => Ok(false),
            other => Err(unexpected("delete", other)),
        }
    }

    /// `incr <key> <delta>`: the new value, or `None` if the key is absent.
    ///
    /// # Errors
    ///
    /// As [`Client::get`]; a non-numeric value is [`Error::ClientError`].
    pub async fn incr(&mut self, key: impl AsRef<[u8]>, delta: u64) -> Result<Option<u64>> {
        self.arithmetic("incr", key.as_ref(), delta).await
    }

    /// `decr <key> <delta>`: the new value (floored at 0), or `None` if the key is absent.
    ///
    /// # Errors
    ///
    /// As [`Client::incr`].
    pub async fn decr(&mut self, key: impl AsRef<[u8]>, delta: u64) -> Result<Option<u64>> {
        self.arithmetic("decr", key.as_ref(), delta).await
    }

    async fn arithmetic(
        &mut self,
        command: &'static str,
        key: &[u8],
        delta: u64,
    ) -> Result<Option<u64>> {
        let argument = delta.to_string();
        let response = self
            .request(|buffer| encode::keyed(buffer, command, key, Some(&argument)))
            .await?;
        match response {
            Response::Number(value) => Ok(Some(value)),
            Response::Status(Status::NotFound) => Ok(None),
            other => Err(unexpected(command, other)),
        }
    }

    /// `touch <key> <exptime>`: `true` if the item exists.
    ///
    /// # Errors
    ///
    /// As [`Client::get`].
    pub async fn touch(&mut self, key: impl AsRef<[u8]>, exptime: i64) -> Result<bool> {
        let key = key.as_ref();
        let argument = exptime.to_string();
        let response = self
            .request(|buffer| encode::keyed(buffer, "touch", key, Some(&argument)))
            .await?;
        match response {
            Response::Status(Status::Touched) => Ok(true),
            Response::Status(Status::NotFound) => Ok(false),
            other => Err(unexpected("touch", other)),
        }
    }

    /// `stats` (or `stats <group>` with `Some(group)`): the `(name, value)` pairs in order.
    ///
    /// # Errors
    ///
    /// Transport errors or the server's error reply.
    pub async fn stats(&mut self, group: Option<&str>) -> Result<Vec<(String, String)>> {
        let response = self
            .request(|buffer| {
                encode::line(buffer, &["stats", group.unwrap_or_default()]);
                Ok(())
            })
            .await?;
        match response {
            Response::Stats(stats) => Ok(stats),
            Response::Values(items) if items.is_empty() => Ok(Vec::new()),
            other => Err(unexpected("stats", other)),
        }
    }

    /// `version`: the server's version string.
    ///
    /// # Errors
    ///
    /// Transport errors or an unexpected reply.
    pub async fn version(&mut self) -> Result<String> {
        let response = self
            .request(|buffer| {
                encode::line(buffer, &["version"]);
                Ok(())
            })
            .await?;
        match response {
            Response::Version(version) => Ok(version),
            other => Err(unexpected("version", other)),
        }
    }

    /// `flush_all` (or `flush_all <delay>`): invalidates every item.
    ///
    /// # Errors
    ///
    /// Transport errors or an unexpected reply.
    pub async fn flush_all(&mut self, delay: Option<u32>) -> Result<()> {
        let delay = delay.map(|delay| delay.to_string()).unwrap_or_default();
        let response = self
            .request(|buffer| {
                encode::line(buffer, &["flush_all", &delay]);
                Ok(())
            })
            .await?;
        match response {
            Response::Status(Status::Ok) => Ok(()),
            other => Err(unexpected("flush_all", other)),
        }
    }

    /// `mg <key> <flags>*` (meta get), e.g. `meta_get("k", &["v", "c", "f"])`.
    ///
    /// # Errors
    ///
    /// As [`Client::get`].
    pub async fn meta_get(&mut self, key: impl AsRef<[u8]>, flags: &[&str]) -> Result<MetaReply> {
        let key = key.as_ref();
        self.meta("mg", |buffer| encode::meta(buffer, "mg", key, None, flags))
            .await
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
        self.meta("ms", |buffer| {
            encode::meta(buffer, "ms", key, Some(value), flags)
        })
        .await
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
        let key = key.as_ref();
        self.meta("md", |buffer| encode::meta(buffer, "md", key, None, flags))
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
        let key = key.as_ref();
        self.meta("ma", |buffer| encode::meta(buffer, "ma", key, None, flags))
            .await
    }

    /// `mn` (meta no-op): the server answers `MN` once every earlier request is answered.
    ///
    /// # Errors
    ///
    /// Transport errors or an unexpected reply.
    pub async fn meta_noop(&mut self) -> Result<MetaReply> {
        self.meta("mn", |buffer| {
            encode::line(buffer, &["mn"]);
            Ok(())
        })
        .await
    }

    async fn meta(
        &mut self,
        command: &'static str,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<()>,
    ) -> Result<MetaReply> {
        match self.request(encode).await? {
            Response::Meta(reply) => Ok(reply),
            other => Err(unexpected(command, other)),
        }
    }
}

/// Turns a reply that does not answer `command` into the matching error.
fn unexpected(command: &'static str, response: Response) -> Error {
    match response {
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
        encode::retrieval(&mut self.request, "get", None, keys)?;
        self.replies += 1;
        Ok(self)
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
        let storage = encode::Storage {
            command: "set",
            key: key.as_ref(),
            value: value.as_ref(),
            flags,
            exptime,
            cas_unique: None,
        };
        encode::storage(&mut self.request, &storage)?;
        self.replies += 1;
        Ok(self)
    }

    /// Queues `delete <key>`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`].
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> Result<&mut Self> {
        encode::keyed(&mut self.request, "delete", key.as_ref(), None)?;
        self.replies += 1;
        Ok(self)
    }

    /// Queues `incr <key> <delta>`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`].
    pub fn incr(&mut self, key: impl AsRef<[u8]>, delta: u64) -> Result<&mut Self> {
        encode::keyed(
            &mut self.request,
            "incr",
            key.as_ref(),
            Some(&delta.to_string()),
        )?;
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
        self.client.exchange(&self.request, self.replies).await
    }
}
