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
    node: &'a Node,
    slot: &'a EngineSlot,
    counters: &'a Counters,
    parse_config: ParseConfig,
    read: Vec<u8>,
    swallow: usize,
    session: Session,
    output: Output,
    /// The connection's entry in `stats conns`.
    listed: Registration<'a>,
}

/// The write side of a connection.
struct Output {
    stream: TcpStream,
    out: Vec<u8>,
    /// Highest log position written by this batch; replies wait for it.
    ack_pos: u64,
    output_max: usize,
    /// How long one write may wait for the client to read before the connection is dropped.
    write_stall: Duration,
    /// This connection's standing with the node's output budget.
    ticket: crate::budget::Ticket,
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
        listed,
        node,
        slot,
        counters,
        parse_config,
        read: Vec::with_capacity(READ_BUFFER_INITIAL),
        swallow: 0,
        session: Session::default(),
        output: Output {
            stream,
            out: Vec::with_capacity(READ_BUFFER_INITIAL),
            ack_pos: 0,
            output_max: limits.output_buffer_max,
            write_stall: Duration::from_millis(node.config.server.write_stall_timeout_ms),
            ticket: node.output_budget.ticket(),
        },
    };
    let _ = connection.run().await;
}

impl Connection<'_> {
    async fn run(&mut self) -> Result<(), End> {
        loop {
            self.reserve_read();
            let n = self
                .output
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
        // One log-clock read per batch: every expiry check in it uses this time.
        let now = self.slot.persistence.journal().now();
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
                        self.output.out.extend_from_slice(&error.reply());
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
                            out: &mut self.output.out,
                            ack_pos: &mut self.output.ack_pos,
                            output_max: self.output.output_max,
                            now,
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
                                self.output
                                    .flush(self.node, self.slot, self.counters)
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
            if self.output.out.len() >= self.output.output_max {
                self.output
                    .flush(self.node, self.slot, self.counters)
                    .await?;
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
        // Compiled keys name updates, not values: deleting one would be a different update.
        if !self.slot.engine.item_model() {
            return;
        }
        let line = &self.read[start..start + consumed];
        let Some(key) = koshka_proto::request::set_key(line.trim_ascii_end()) else {
            return;
        };
        let journal = koshka_engine::Tracking::new(self.slot.persistence.journal());
        let mut reply = koshka_engine::Collect::default();
        let mut cx = koshka_engine::Cx {
            session: &mut self.session,
            journal: &journal,
            reply: &mut reply,
            now: koshka_engine::Journal::now(&journal),
        };
        let request = koshka_engine::Request::Delete { key, cas: None };
        if let Err(e) = self.slot.engine.execute(&request, &mut cx) {
            tracing::warn!("removing the stale value of a refused set: {e}");
        }
        self.output.ack_pos = self.output.ack_pos.max(journal.written());
    }

    async fn flush(&mut self) -> Result<(), End> {
        self.output.flush(self.node, self.slot, self.counters).await
    }
}

impl Output {
    /// Waits for the batch's writes to be acknowledged by the log, then writes every reply.
    async fn flush(
        &mut self,
        node: &Node,
        slot: &EngineSlot,
        counters: &Counters,
    ) -> Result<(), End> {
        if self.ack_pos > 0 {
            let persistence = &slot.persistence;
            if persistence.acked_pos() < self.ack_pos {
                // Let this worker's other ready connections run first: what they append goes
                // to the log in the same write(2) (`everysec`) or fdatasync (`always`) as this
                // batch, instead of one system call per connection. Costs one task switch.
                tokio::task::yield_now().await;
            }
            if persistence.acked_pos() < self.ack_pos {
                if let Err(reason) = persistence.wait_acked(self.ack_pos).await {
                    // The log failed (or too few replicas confirmed): the writes are not
                    // durable as promised, so do not acknowledge them.
                    tracing::error!("write not acknowledged, dropping connection: {reason}");
                    return Err(End::Failed);
                }
            }
            self.ack_pos = 0;
        }
        if self.out.is_empty() {
            return Ok(());
        }
        // Most replies fit the socket buffer: written at once, they cost the budget nothing.
        let written = match self.stream.try_write(&self.out) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(_) => return Err(End::Failed),
        };
        if written < self.out.len() {
            self.write_held(node, counters, written).await?;
        }
        bump(&counters.bytes_written, self.out.len() as u64);
        self.out.clear();
        if self.out.capacity() > self.output_max.max(4 * READ_BUFFER_INITIAL) {
            self.out = Vec::with_capacity(READ_BUFFER_INITIAL);
        }
        Ok(())
    }

    /// Writes the rest of the output to a client that is not reading fast enough, holding the
    /// buffer against the node's output budget until it is written.
    async fn write_held(
        &mut self,
        node: &Node,
        counters: &Counters,
        written: usize,
    ) -> Result<(), End> {
        let budget = &node.output_budget;
        budget.hold(&self.ticket, self.out.capacity());
        let closing = budget.closing(&self.ticket);
        let write = tokio::time::timeout(
            self.write_stall,
            self.stream.write_all(&self.out[written..]),
        );
        let result = tokio::select! {
            result = write => match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(End::Failed),
                Err(_) => {
                    bump(&counters.output_buffer_overflows, 1);
                    Err(End::Failed)
                }
            },
            () = closing.wait() => Err(End::Failed),
        };
        budget.release(&self.ticket);
        result
    }
}
