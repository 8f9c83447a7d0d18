//! One client connection: read what arrived, execute every complete command in it, wait for
//! the log to acknowledge the batch's writes, then write all replies with one system call.

use std::time::Duration;

use koshka_engine::Session;
use koshka_proto::{parse, BadRequest, ParseConfig, Parsed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::exec::{self, Flow};
use crate::stats::{bump, Counters};
use crate::stats_groups::Registration;
use crate::{EngineSlot, Node};

/// Initial read buffer size; it grows up to one command line plus one value.
const READ_BUFFER_INITIAL: usize = 16 * 1024;

/// Why a connection ends.
enum End {
    Closed,
    Failed,
}

pub(crate) struct Connection<'a> {
    stream: TcpStream,
    node: &'a Node,
    slot: &'a EngineSlot,
    counters: &'a Counters,
    parse_config: ParseConfig,
    output_max: usize,
    /// How long one write may wait for the client to read before the connection is dropped.
    write_stall: Duration,
    read: Vec<u8>,
    out: Vec<u8>,
    swallow: usize,
    session: Session,
    /// Highest log position written by this batch; replies wait for it.
    ack_pos: u64,
    /// The connection's entry in `stats conns`.
    listed: Registration<'a>,
}

pub(crate) async fn serve(stream: TcpStream, node: &Node, slot: &EngineSlot, counters: &Counters) {
    let limits = node.config.limits();
    let parse_config = ParseConfig {
        key_len_max: slot.key_len_max,
        value_size_max: limits.value_size_max,
        line_len_max: koshka_limits::LINE_LEN_MAX,
        multiget_keys_max: koshka_limits::MULTIGET_KEYS_MAX,
    };
    let listed = node.conns.register(&stream);
    let mut connection = Connection {
        stream,
        node,
        slot,
        counters,
        parse_config,
        output_max: limits.output_buffer_max,
        write_stall: Duration::from_millis(node.config.server.write_stall_timeout_ms),
        read: Vec::with_capacity(READ_BUFFER_INITIAL),
        out: Vec::with_capacity(READ_BUFFER_INITIAL),
        swallow: 0,
        session: Session::default(),
        ack_pos: 0,
        listed,
    };
    let _ = connection.run().await;
}

impl Connection<'_> {
    async fn run(&mut self) -> Result<(), End> {
        loop {
            self.reserve_read();
            let n = self
                .stream
                .read_buf(&mut self.read)
                .await
                .map_err(|_| End::Failed)?;
            if n == 0 {
                return Err(End::Closed);
            }
            bump(&self.counters.bytes_read, n as u64);
            self.listed.busy();
            let quit = self.process().await?;
            self.flush().await?;
            self.listed.idle();
            if quit {
                return Ok(());
            }
        }
    }

    /// Ensures there is room to read: grows for a command still incomplete, within limits.
    fn reserve_read(&mut self) {
        if self.read.capacity() - self.read.len() < READ_BUFFER_INITIAL / 2 {
            self.read
                .reserve(self.read.capacity().max(READ_BUFFER_INITIAL));
        }
    }

    /// Executes every complete command in the read buffer. Returns whether to close.
    async fn process(&mut self) -> Result<bool, End> {
        let mut start = 0;
        let mut quit = false;
        loop {
            if self.swallow > 0 {
                let n = self.swallow.min(self.read.len() - start);
                start += n;
                self.swallow -= n;
                if self.swallow > 0 {
                    break;
                }
            }
            if start == self.read.len() {
                break;
            }
            // Parse borrows the read buffer; copy the outcome's plain parts before mutating.
            let parsed = parse(&self.read[start..], &self.parse_config);
            match parsed {
                Parsed::Incomplete => break,
                Parsed::Bad {
                    error,
                    consumed,
                    swallow,
                    noreply,
                } => {
                    bump(&self.counters.protocol_errors, 1);
                    if error == BadRequest::TooLarge {
                        self.drop_stale_value(start, consumed);
                    }
                    if !noreply {
                        self.out.extend_from_slice(&error.reply());
                    }
                    start += consumed;
                    self.swallow = swallow;
                    if error.closes() {
                        bump(&self.counters.line_too_long, 1);
                        quit = true;
                        break;
                    }
                }
                Parsed::Done { command, consumed } => {
                    let mut resume = 0;
                    loop {
                        let mut ctx = exec::Ctx {
                            node: self.node,
                            slot: self.slot,
                            counters: self.counters,
                            session: &mut self.session,
                            out: &mut self.out,
                            ack_pos: &mut self.ack_pos,
                            output_max: self.output_max,
                        };
                        match exec::execute(&mut ctx, &command, resume) {
                            Flow::Continue => break,
                            Flow::Quit => {
                                quit = true;
                                break;
                            }
                            Flow::MoreKeys(next) => {
                                // A huge multi-get: send what we have before going on.
                                resume = next;
                                write_out(
                                    &mut self.stream,
                                    self.slot,
                                    self.counters,
                                    &mut self.out,
                                    &mut self.ack_pos,
                                    self.output_max,
                                    self.write_stall,
                                )
                                .await?;
                            }
                        }
                    }
                    start += consumed;
                    if quit {
                        break;
                    }
                }
            }
            if self.out.len() >= self.output_max {
                self.flush().await?;
            }
        }
        self.read.drain(..start);
        if self.read.is_empty() && self.read.capacity() > 4 * READ_BUFFER_INITIAL {
            // Give back the memory of a large value once it has been processed.
            self.read = Vec::with_capacity(READ_BUFFER_INITIAL);
        }
        Ok(quit)
    }

    /// A `set` refused as too large removes the key's old value, as memcached does, so the
    /// client cannot read stale data after a failed update.
    fn drop_stale_value(&mut self, start: usize, consumed: usize) {
        let crate::Hosted::Kv(kv) = &self.slot.hosted else {
            return;
        };
        let line = &self.read[start..start + consumed];
        let Some(key) = koshka_proto::request::set_key(line.trim_ascii_end()) else {
            return;
        };
        match kv.delete(key, None, self.slot.persistence.journal()) {
            Ok(written) => self.ack_pos = self.ack_pos.max(written.pos),
            Err(e) => tracing::warn!("removing the stale value of a refused set: {e}"),
        }
    }

    async fn flush(&mut self) -> Result<(), End> {
        write_out(
            &mut self.stream,
            self.slot,
            self.counters,
            &mut self.out,
            &mut self.ack_pos,
            self.output_max,
            self.write_stall,
        )
        .await
    }
}

/// Waits for the batch's writes to be acknowledged by the log, then writes every reply.
async fn write_out(
    stream: &mut TcpStream,
    slot: &EngineSlot,
    counters: &Counters,
    out: &mut Vec<u8>,
    ack_pos: &mut u64,
    output_max: usize,
    write_stall: Duration,
) -> Result<(), End> {
    if *ack_pos > 0 {
        let persistence = &slot.persistence;
        if persistence.acked_pos() < *ack_pos {
            if let Err(reason) = persistence.wait_acked(*ack_pos).await {
                // The log failed: the writes are not durable, so do not acknowledge them.
                tracing::error!("binlog failure, dropping connection: {reason}");
                return Err(End::Failed);
            }
        }
        *ack_pos = 0;
    }
    if out.is_empty() {
        return Ok(());
    }
    match tokio::time::timeout(write_stall, stream.write_all(out)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err(End::Failed),
        Err(_) => {
            bump(&counters.output_buffer_overflows, 1);
            return Err(End::Failed);
        }
    }
    bump(&counters.bytes_written, out.len() as u64);
    out.clear();
    if out.capacity() > output_max.max(4 * READ_BUFFER_INITIAL) {
        *out = Vec::with_capacity(READ_BUFFER_INITIAL);
    }
    Ok(())
}
