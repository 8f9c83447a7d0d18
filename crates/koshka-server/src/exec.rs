//! Command execution: one parsed [`Command`] against the engine behind the port, replies
//! appended to the connection's output buffer.

use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use koshka_engine::{Appended, Engine, Journal, Session, StoreOutcome};
use koshka_kv::{ArithOptions, ArithOutcome, Item, Kv};
use koshka_proto::{reply, Command, Keys, MetaFlags, StoreMode};

use crate::stats::{bump, Counters};
use crate::{reply_error, stats_groups, EngineSlot, Hosted, Node};

/// What the connection does after a command.
pub(crate) enum Flow {
    /// Go on with the next command.
    Continue,
    /// Close after flushing (`quit`).
    Quit,
    /// The output buffer filled during a multi-get: flush, then call again from this key.
    MoreKeys(usize),
}

pub(crate) struct Ctx<'a> {
    pub node: &'a Node,
    pub slot: &'a EngineSlot,
    pub counters: &'a Counters,
    pub session: &'a mut Session,
    pub out: &'a mut Vec<u8>,
    pub ack_pos: &'a mut u64,
    pub output_max: usize,
}

impl Ctx<'_> {
    fn journal(&self) -> &dyn Journal {
        self.slot.persistence.journal()
    }

    fn wrote(&mut self, pos: u64) {
        *self.ack_pos = (*self.ack_pos).max(pos);
    }

    fn error(&mut self, error: &koshka_engine::Error) {
        bump(&self.counters.protocol_errors, 1);
        self.out.extend_from_slice(reply_error(error).as_bytes());
    }

    /// Counts a hit or a miss and answers `hit_reply` or `NOT_FOUND`.
    fn hit_or_miss(
        &mut self,
        hit: bool,
        (hits, misses): (&AtomicU64, &AtomicU64),
        hit_reply: &[u8],
        noreply: bool,
    ) {
        bump(if hit { hits } else { misses }, 1);
        self.reply(noreply, if hit { hit_reply } else { reply::NOT_FOUND });
    }

    fn reply(&mut self, noreply: bool, bytes: &[u8]) {
        if !noreply {
            self.out.extend_from_slice(bytes);
        }
    }
}

/// Executes one command; `resume` is the index of the first key still to answer in a
/// multi-get continued after [`Flow::MoreKeys`].
pub(crate) fn execute(ctx: &mut Ctx<'_>, command: &Command<'_>, resume: usize) -> Flow {
    match command {
        Command::Version => {
            ctx.out.extend_from_slice(b"VERSION ");
            ctx.out.extend_from_slice(koshka_proto::VERSION.as_bytes());
            ctx.out.extend_from_slice(b"\r\n");
        }
        Command::Quit => return Flow::Quit,
        Command::Verbosity { noreply } => ctx.reply(*noreply, reply::OK),
        Command::SlabsAutomove { .. } => stats_groups::slabs_automove(ctx.out),
        Command::SlabsReassign {
            source,
            destination,
        } => stats_groups::slabs_reassign(*source, *destination, ctx.out),
        Command::MetaNoop => ctx.out.extend_from_slice(reply::MN),
        Command::Stats { group } => stats(ctx, group),
        _ => {
            let hosted = ctx.slot.hosted.clone();
            return match &hosted {
                Hosted::Kv(kv) => kv_command(ctx, kv, command, resume),
                Hosted::Compiled(engine) => compiled_command(ctx, engine.as_ref(), command, resume),
            };
        }
    }
    Flow::Continue
}

// ---------------------------------------------------------------------------------------------
// kv: the full memcached command set.

fn kv_command(ctx: &mut Ctx<'_>, kv: &Kv, command: &Command<'_>, resume: usize) -> Flow {
    match command {
        Command::Get { keys, cas } => return kv_get(ctx, kv, keys, *cas, None, resume),
        Command::Gat { exptime, keys, cas } => {
            return kv_get(ctx, kv, keys, *cas, Some(*exptime), resume)
        }
        Command::Store {
            mode,
            key,
            flags,
            exptime,
            cas_unique,
            data,
            noreply,
        } => {
            bump(&ctx.counters.cmd_set, 1);
            ctx.node.detail.set(key);
            let result = kv.store(
                *mode,
                key,
                *flags,
                *exptime,
                *cas_unique,
                data,
                ctx.journal(),
            );
            match result {
                Ok(written) => {
                    ctx.wrote(written.pos);
                    if *mode == StoreMode::Cas {
                        let counter = match written.outcome.outcome {
                            StoreOutcome::Stored => &ctx.counters.cas_hits,
                            StoreOutcome::Exists => &ctx.counters.cas_badval,
                            _ => &ctx.counters.cas_misses,
                        };
                        bump(counter, 1);
                    }
                    ctx.reply(*noreply, store_reply(written.outcome.outcome));
                }
                Err(e) => ctx.error(&e),
            }
        }
        Command::Delete { key, noreply } => {
            ctx.node.detail.delete(key);
            match kv.delete(key, None, ctx.journal()) {
                Ok(written) => {
                    ctx.wrote(written.pos);
                    let hit = written.outcome == Some(true);
                    let c = ctx.counters;
                    ctx.hit_or_miss(
                        hit,
                        (&c.delete_hits, &c.delete_misses),
                        reply::DELETED,
                        *noreply,
                    );
                }
                Err(e) => ctx.error(&e),
            }
        }
        Command::Arith {
            key,
            incr,
            delta,
            noreply,
        } => {
            let result = kv.arith(key, *incr, *delta, ArithOptions::default(), ctx.journal());
            match result {
                Ok(written) => {
                    ctx.wrote(written.pos);
                    arith_reply(ctx, *incr, written.outcome, *noreply);
                }
                Err(e) => ctx.error(&e),
            }
        }
        Command::Touch {
            key,
            exptime,
            noreply,
        } => {
            bump(&ctx.counters.cmd_touch, 1);
            match kv.touch(key, *exptime, ctx.journal()) {
                Ok(written) => {
                    ctx.wrote(written.pos);
                    let c = ctx.counters;
                    let hits = (&c.touch_hits, &c.touch_misses);
                    ctx.hit_or_miss(written.outcome, hits, reply::TOUCHED, *noreply);
                }
                Err(e) => ctx.error(&e),
            }
        }
        Command::FlushAll { delay, noreply } => {
            bump(&ctx.counters.cmd_flush, 1);
            match kv.flush_all(*delay, ctx.journal()) {
                Ok(pos) => {
                    ctx.wrote(pos);
                    ctx.reply(*noreply, reply::OK);
                }
                Err(e) => ctx.error(&e),
            }
        }
        Command::MetaGet { key, flags } => meta_get(ctx, kv, key, flags),
        Command::MetaSet { key, flags, data } => meta_set(ctx, kv, key, flags, data),
        Command::MetaDelete { key, flags } => meta_delete(ctx, kv, key, flags),
        Command::MetaArith { key, flags } => meta_arith(ctx, kv, key, flags),
        Command::MetaDebug { key } => meta_debug(ctx, kv, key),
        _ => ctx.out.extend_from_slice(reply::ERROR),
    }
    Flow::Continue
}

fn store_reply(outcome: StoreOutcome) -> &'static [u8] {
    match outcome {
        StoreOutcome::Stored => reply::STORED,
        StoreOutcome::NotStored => reply::NOT_STORED,
        StoreOutcome::Exists => reply::EXISTS,
        StoreOutcome::NotFound => reply::NOT_FOUND,
    }
}

fn arith_reply(ctx: &mut Ctx<'_>, incr: bool, outcome: ArithOutcome, noreply: bool) {
    let (hits, misses) = if incr {
        (&ctx.counters.incr_hits, &ctx.counters.incr_misses)
    } else {
        (&ctx.counters.decr_hits, &ctx.counters.decr_misses)
    };
    match outcome {
        ArithOutcome::Value { value, .. } => {
            bump(hits, 1);
            if !noreply {
                reply::arith(ctx.out, value);
            }
        }
        ArithOutcome::NotFound | ArithOutcome::Exists => {
            bump(misses, 1);
            ctx.reply(noreply, reply::NOT_FOUND);
        }
        ArithOutcome::NonNumeric => {
            bump(&ctx.counters.protocol_errors, 1);
            ctx.out.extend_from_slice(
                b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
            );
        }
    }
}

fn kv_get(
    ctx: &mut Ctx<'_>,
    kv: &Kv,
    keys: &Keys<'_>,
    cas: bool,
    touch: Option<i64>,
    resume: usize,
) -> Flow {
    if touch.is_some() && resume == 0 {
        bump(&ctx.counters.cmd_touch, keys.len() as u64);
    }
    for (index, key) in keys.iter().enumerate().skip(resume) {
        if ctx.out.len() >= ctx.output_max {
            return Flow::MoreKeys(index);
        }
        bump(&ctx.counters.cmd_get, 1);
        if key.len() > 1 && key.ends_with(b"*") && touch.is_none() {
            prefix_scan(ctx, kv, &key[..key.len() - 1]);
            continue;
        }
        let out = &mut *ctx.out;
        let write = |item: Option<&Item>| match item {
            Some(item) => {
                let meta = item.meta();
                reply::value(out, key, meta.flags, item.value(), cas.then_some(meta.cas));
                true
            }
            None => false,
        };
        let hit = match touch {
            None => kv.read(key, write),
            Some(exptime) => {
                match kv.touch_read(key, exptime, ctx.slot.persistence.journal(), write) {
                    Ok(written) => {
                        *ctx.ack_pos = (*ctx.ack_pos).max(written.pos);
                        written.outcome
                    }
                    Err(e) => {
                        ctx.error(&e);
                        return Flow::Continue;
                    }
                }
            }
        };
        ctx.node.detail.get(key, hit);
        if hit {
            bump(&ctx.counters.get_hits, 1);
            if touch.is_some() {
                bump(&ctx.counters.touch_hits, 1);
            }
        } else {
            bump(&ctx.counters.get_misses, 1);
            if touch.is_some() {
                bump(&ctx.counters.touch_misses, 1);
            }
        }
    }
    ctx.out.extend_from_slice(reply::END);
    Flow::Continue
}

fn prefix_scan(ctx: &mut Ctx<'_>, kv: &Kv, prefix: &[u8]) {
    let found = kv.prefix_scan(prefix);
    if found.is_empty() {
        bump(&ctx.counters.get_misses, 1);
    } else {
        bump(&ctx.counters.get_hits, 1);
    }
    for (key, flags, value) in found {
        reply::value(ctx.out, &key, flags, &value, None);
    }
}

// ---------------------------------------------------------------------------------------------
// Meta commands (kv only).

fn meta_number<T: std::str::FromStr>(
    ctx: &mut Ctx<'_>,
    flags: &MetaFlags<'_>,
    letter: u8,
) -> Result<Option<T>, ()> {
    flags.number(letter).inspect_err(|()| {
        bump(&ctx.counters.protocol_errors, 1);
        ctx.out
            .extend_from_slice(b"CLIENT_ERROR bad token in command line format\r\n");
    })
}

/// Appends the return flags a meta command asked for (`k`, `O`, `b`, `c`, …).
fn meta_return_flags(out: &mut Vec<u8>, flags: &MetaFlags<'_>, key: &[u8], item: Option<&Item>) {
    let now = koshka_engine::unix_now();
    for (letter, token) in flags.iter() {
        match (letter, item) {
            (b'O', _) => {
                out.extend_from_slice(b" O");
                out.extend_from_slice(token);
            }
            (b'k', _) => {
                out.extend_from_slice(b" k");
                if flags.has(b'b') {
                    // As memcached's META_KEY: the base64 key is followed by ` b` at once,
                    // wherever `b` stood in the request.
                    out.extend_from_slice(
                        base64::engine::general_purpose::STANDARD
                            .encode(key)
                            .as_bytes(),
                    );
                    out.extend_from_slice(b" b");
                } else {
                    out.extend_from_slice(key);
                }
            }
            (b'c', Some(item)) => {
                out.extend_from_slice(b" c");
                reply::number(out, item.meta().cas);
            }
            (b'f', Some(item)) => {
                out.extend_from_slice(b" f");
                reply::number(out, u64::from(item.meta().flags));
            }
            (b's', Some(item)) => {
                out.extend_from_slice(b" s");
                reply::number(out, item.value().len() as u64);
            }
            (b't', Some(item)) => {
                out.extend_from_slice(b" t");
                match item.meta().exptime {
                    0 => out.extend_from_slice(b"-1"),
                    e => reply::number(out, u64::from(e.saturating_sub(now))),
                }
            }
            _ => {}
        }
    }
}

fn meta_get(ctx: &mut Ctx<'_>, kv: &Kv, key: &[u8], flags: &MetaFlags<'_>) {
    bump(&ctx.counters.cmd_get, 1);
    let Ok(touch) = meta_number::<i64>(ctx, flags, b'T') else {
        return;
    };
    let quiet = flags.has(b'q');
    let want_value = flags.has(b'v');
    let out = &mut *ctx.out;
    let write = |item: Option<&Item>| {
        let Some(item) = item else {
            if !quiet {
                out.extend_from_slice(reply::EN);
            }
            return false;
        };
        if want_value {
            out.extend_from_slice(b"VA ");
            reply::number(out, item.value().len() as u64);
        } else {
            out.extend_from_slice(b"HD");
        }
        meta_return_flags(out, flags, key, Some(item));
        out.extend_from_slice(b"\r\n");
        if want_value {
            out.extend_from_slice(item.value());
            out.extend_from_slice(b"\r\n");
        }
        true
    };
    let hit = match touch {
        None => kv.read(key, write),
        Some(exptime) => {
            bump(&ctx.counters.cmd_touch, 1);
            match kv.touch_read(key, exptime, ctx.slot.persistence.journal(), write) {
                Ok(written) => {
                    *ctx.ack_pos = (*ctx.ack_pos).max(written.pos);
                    written.outcome
                }
                Err(e) => {
                    ctx.error(&e);
                    return;
                }
            }
        }
    };
    ctx.node.detail.get(key, hit);
    bump(
        if hit {
            &ctx.counters.get_hits
        } else {
            &ctx.counters.get_misses
        },
        1,
    );
}

fn meta_set(ctx: &mut Ctx<'_>, kv: &Kv, key: &[u8], flags: &MetaFlags<'_>, data: &[u8]) {
    bump(&ctx.counters.cmd_set, 1);
    ctx.node.detail.set(key);
    let (Ok(client_flags), Ok(ttl), Ok(compare)) = (
        meta_number::<u32>(ctx, flags, b'F'),
        meta_number::<i64>(ctx, flags, b'T'),
        meta_number::<u64>(ctx, flags, b'C'),
    ) else {
        return;
    };
    let mode = match flags.token(b'M') {
        None => StoreMode::Set,
        Some(m) => match m.first().map(u8::to_ascii_uppercase) {
            Some(b'S') => StoreMode::Set,
            Some(b'E') => StoreMode::Add,
            Some(b'R') => StoreMode::Replace,
            Some(b'A') => StoreMode::Append,
            Some(b'P') => StoreMode::Prepend,
            _ => {
                ctx.out
                    .extend_from_slice(b"CLIENT_ERROR invalid mode for ms M token\r\n");
                return;
            }
        },
    };
    let mode = if compare.is_some() && mode == StoreMode::Set {
        StoreMode::Cas
    } else {
        mode
    };
    let result = kv.store(
        mode,
        key,
        client_flags.unwrap_or(0),
        ttl.unwrap_or(0),
        compare.unwrap_or(0),
        data,
        ctx.journal(),
    );
    let written = match result {
        Ok(written) => written,
        Err(e) => return ctx.error(&e),
    };
    ctx.wrote(written.pos);
    let code: &[u8] = match written.outcome.outcome {
        StoreOutcome::Stored if flags.has(b'q') => return,
        StoreOutcome::Stored => b"HD",
        StoreOutcome::NotStored => b"NS",
        StoreOutcome::Exists => b"EX",
        StoreOutcome::NotFound => b"NF",
    };
    ctx.out.extend_from_slice(code);
    let stored = written.outcome.outcome == StoreOutcome::Stored;
    // Return flags: cas only makes sense for a stored item.
    for (letter, token) in flags.iter() {
        match letter {
            b'O' => {
                ctx.out.extend_from_slice(b" O");
                ctx.out.extend_from_slice(token);
            }
            b'k' => {
                ctx.out.extend_from_slice(b" k");
                ctx.out.extend_from_slice(key);
            }
            b'c' if stored => {
                ctx.out.extend_from_slice(b" c");
                reply::number(ctx.out, written.outcome.cas);
            }
            _ => {}
        }
    }
    ctx.out.extend_from_slice(b"\r\n");
}

fn meta_delete(ctx: &mut Ctx<'_>, kv: &Kv, key: &[u8], flags: &MetaFlags<'_>) {
    let Ok(compare) = meta_number::<u64>(ctx, flags, b'C') else {
        return;
    };
    ctx.node.detail.delete(key);
    let written = match kv.delete(key, compare, ctx.journal()) {
        Ok(written) => written,
        Err(e) => return ctx.error(&e),
    };
    ctx.wrote(written.pos);
    let code: &[u8] = match written.outcome {
        Some(true) => {
            bump(&ctx.counters.delete_hits, 1);
            if flags.has(b'q') {
                return;
            }
            b"HD"
        }
        Some(false) => {
            bump(&ctx.counters.delete_misses, 1);
            b"NF"
        }
        None => b"EX",
    };
    ctx.out.extend_from_slice(code);
    meta_return_flags(ctx.out, flags, key, None);
    ctx.out.extend_from_slice(b"\r\n");
}

fn meta_arith(ctx: &mut Ctx<'_>, kv: &Kv, key: &[u8], flags: &MetaFlags<'_>) {
    let (Ok(vivify), Ok(initial), Ok(delta), Ok(ttl), Ok(compare)) = (
        meta_number::<i64>(ctx, flags, b'N'),
        meta_number::<u64>(ctx, flags, b'J'),
        meta_number::<u64>(ctx, flags, b'D'),
        meta_number::<i64>(ctx, flags, b'T'),
        meta_number::<u64>(ctx, flags, b'C'),
    ) else {
        return;
    };
    let incr = match flags.token(b'M').and_then(|m| m.first().copied()) {
        None | Some(b'I' | b'i' | b'+') => true,
        Some(b'D' | b'd' | b'-') => false,
        Some(_) => {
            ctx.out
                .extend_from_slice(b"CLIENT_ERROR invalid mode for ma M token\r\n");
            return;
        }
    };
    let options = ArithOptions {
        vivify,
        initial: initial.unwrap_or(0),
        cas: compare,
        exptime: ttl,
    };
    let written = match kv.arith(key, incr, delta.unwrap_or(1), options, ctx.journal()) {
        Ok(written) => written,
        Err(e) => return ctx.error(&e),
    };
    ctx.wrote(written.pos);
    match written.outcome {
        ArithOutcome::Value { value, cas } => {
            bump(
                if incr {
                    &ctx.counters.incr_hits
                } else {
                    &ctx.counters.decr_hits
                },
                1,
            );
            let mut digits = itoa::Buffer::new();
            let digits = digits.format(value);
            if flags.has(b'v') {
                ctx.out.extend_from_slice(b"VA ");
                reply::number(ctx.out, digits.len() as u64);
            } else if flags.has(b'q') {
                return;
            } else {
                ctx.out.extend_from_slice(b"HD");
            }
            for (letter, token) in flags.iter() {
                match letter {
                    b'O' => {
                        ctx.out.extend_from_slice(b" O");
                        ctx.out.extend_from_slice(token);
                    }
                    b'k' => {
                        ctx.out.extend_from_slice(b" k");
                        ctx.out.extend_from_slice(key);
                    }
                    b'c' => {
                        ctx.out.extend_from_slice(b" c");
                        reply::number(ctx.out, cas);
                    }
                    b't' => {
                        let ttl = kv.read(key, |item| item.map_or(0, |i| i.meta().exptime));
                        ctx.out.extend_from_slice(b" t");
                        match ttl {
                            0 => ctx.out.extend_from_slice(b"-1"),
                            e => reply::number(
                                ctx.out,
                                u64::from(e.saturating_sub(koshka_engine::unix_now())),
                            ),
                        }
                    }
                    _ => {}
                }
            }
            ctx.out.extend_from_slice(b"\r\n");
            if flags.has(b'v') {
                ctx.out.extend_from_slice(digits.as_bytes());
                ctx.out.extend_from_slice(b"\r\n");
            }
        }
        ArithOutcome::NotFound => {
            bump(
                if incr {
                    &ctx.counters.incr_misses
                } else {
                    &ctx.counters.decr_misses
                },
                1,
            );
            ctx.out.extend_from_slice(b"NF\r\n");
        }
        ArithOutcome::Exists => ctx.out.extend_from_slice(b"EX\r\n"),
        ArithOutcome::NonNumeric => ctx
            .out
            .extend_from_slice(b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"),
    }
}

fn meta_debug(ctx: &mut Ctx<'_>, kv: &Kv, key: &[u8]) {
    let now = koshka_engine::unix_now();
    let out = &mut *ctx.out;
    kv.read(key, |item| match item {
        None => out.extend_from_slice(reply::EN),
        Some(item) => {
            let meta = item.meta();
            let exp = if meta.exptime == 0 {
                -1
            } else {
                i64::from(meta.exptime) - i64::from(now)
            };
            let line = format!(
                "ME {} exp={exp} la=0 cas={} fetch=no cls=1 size={}\r\n",
                String::from_utf8_lossy(key),
                meta.cas,
                item.raw().len()
            );
            out.extend_from_slice(line.as_bytes());
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Compiled-key engines.

/// A journal wrapper that remembers the highest position appended, so the connection knows
/// what to wait for before acknowledging.
struct Tracking<'a> {
    inner: &'a dyn Journal,
    max: AtomicU64,
}

impl Journal for Tracking<'_> {
    fn append(&self, record_type: u16, payload: &[u8]) -> koshka_engine::Result<Appended> {
        let appended = self.inner.append(record_type, payload)?;
        self.max.fetch_max(appended.pos, Ordering::Relaxed);
        Ok(appended)
    }
}

fn compiled_command(
    ctx: &mut Ctx<'_>,
    engine: &dyn Engine,
    command: &Command<'_>,
    resume: usize,
) -> Flow {
    let tracking = Tracking {
        inner: ctx.slot.persistence.journal(),
        max: AtomicU64::new(0),
    };
    let unsupported = koshka_engine::Error::NotSupported {
        engine: engine.name(),
    };
    match command {
        Command::Get { keys, cas: false } => {
            let start = ctx.out.len();
            for (index, key) in keys.iter().enumerate().skip(resume) {
                if ctx.out.len() >= ctx.output_max {
                    return Flow::MoreKeys(index);
                }
                bump(&ctx.counters.cmd_get, 1);
                match engine.get(key, ctx.session) {
                    Ok(Some(value)) => {
                        bump(&ctx.counters.get_hits, 1);
                        reply::value(ctx.out, key, value.flags, &value.data, None);
                    }
                    Ok(None) => bump(&ctx.counters.get_misses, 1),
                    Err(e) => {
                        // One bad key fails the whole get: replace what was written.
                        bump(&ctx.counters.engine_errors, 1);
                        if resume == 0 {
                            ctx.out.truncate(start);
                        }
                        ctx.error(&e);
                        return Flow::Continue;
                    }
                }
            }
            ctx.out.extend_from_slice(reply::END);
        }
        Command::Store {
            mode: StoreMode::Set,
            key,
            flags,
            data,
            noreply,
            ..
        } => {
            bump(&ctx.counters.cmd_set, 1);
            match engine.set(key, *flags, data, ctx.session, &tracking) {
                Ok(outcome) => ctx.reply(*noreply, store_reply(outcome)),
                Err(e) => {
                    bump(&ctx.counters.engine_errors, 1);
                    ctx.error(&e);
                }
            }
        }
        Command::Delete { key, noreply } => match engine.delete(key, ctx.session, &tracking) {
            Ok(true) => ctx.reply(*noreply, reply::DELETED),
            Ok(false) => ctx.reply(*noreply, reply::NOT_FOUND),
            Err(e) => {
                bump(&ctx.counters.engine_errors, 1);
                ctx.error(&e);
            }
        },
        Command::Arith {
            key,
            incr,
            delta,
            noreply,
        } => {
            let Ok(delta) = i64::try_from(*delta) else {
                ctx.out
                    .extend_from_slice(b"CLIENT_ERROR invalid numeric delta argument\r\n");
                return Flow::Continue;
            };
            let delta = if *incr { delta } else { -delta };
            match engine.incr(key, delta, ctx.session, &tracking) {
                Ok(Some(value)) => {
                    if !noreply {
                        reply::arith(ctx.out, value);
                    }
                }
                Ok(None) => ctx.reply(*noreply, reply::NOT_FOUND),
                Err(e) => {
                    bump(&ctx.counters.engine_errors, 1);
                    ctx.error(&e);
                }
            }
        }
        _ => ctx.error(&unsupported),
    }
    ctx.wrote(tracking.max.load(Ordering::Relaxed));
    Flow::Continue
}

// ---------------------------------------------------------------------------------------------
// stats

fn stats(ctx: &mut Ctx<'_>, group: &[u8]) {
    match group {
        b"" => general_stats(ctx),
        b"settings" => settings_stats(ctx),
        b"snapshot" => {
            let status = ctx.slot.persistence.request_snapshot();
            reply::stat(ctx.out, "snapshot", &status.replace(['\r', '\n'], " "));
        }
        b"reset" => {
            stats_groups::reset(ctx.node, ctx.slot);
            ctx.out.extend_from_slice(b"RESET\r\n");
            return;
        }
        _ => {
            if !stats_groups::render(ctx.node, ctx.slot, group, ctx.out) {
                ctx.out.extend_from_slice(reply::ERROR);
            }
            return;
        }
    }
    ctx.out.extend_from_slice(reply::END);
}

fn general_stats(ctx: &mut Ctx<'_>) {
    let node = ctx.node;
    let now = koshka_engine::unix_now();
    let out = &mut *ctx.out;
    let (user, system) = rusage();
    let lines: Vec<(&str, String)> = vec![
        ("pid", std::process::id().to_string()),
        ("uptime", node.started.elapsed().as_secs().to_string()),
        ("time", now.to_string()),
        ("version", koshka_proto::VERSION.to_string()),
        ("libevent", "tokio".to_string()),
        (
            "pointer_size",
            (8 * std::mem::size_of::<usize>()).to_string(),
        ),
        ("rusage_user", user),
        ("rusage_system", system),
        (
            "max_connections",
            node.config.server.max_connections.to_string(),
        ),
        ("curr_connections", node.connection_count().to_string()),
        ("threads", node.config.threads().to_string()),
        ("engine", ctx.slot.name.clone()),
    ];
    for (name, value) in &lines {
        reply::stat(out, name, value);
    }
    for (name, value) in crate::stats::sum(&node.counters.snapshot()) {
        reply::stat(out, name, &value.to_string());
    }
    for (name, value) in ctx.slot.hosted.engine().stats() {
        reply::stat(out, &name, &value);
    }
    for (name, value) in ctx.slot.persistence.stats() {
        reply::stat(out, &name, &value);
    }
}

fn settings_stats(ctx: &mut Ctx<'_>) {
    let config = &ctx.node.config;
    let limits = config.limits();
    let lines: Vec<(&str, String)> = vec![
        ("maxbytes", config.storage.memory_limit.0.to_string()),
        ("maxconns", config.server.max_connections.to_string()),
        ("tcpport", ctx.slot.listen.port().to_string()),
        ("interface", ctx.slot.listen.ip().to_string()),
        ("num_threads", config.threads().to_string()),
        ("item_size_max", limits.value_size_max.to_string()),
        ("key_len_max", ctx.slot.key_len_max.to_string()),
        ("line_len_max", koshka_limits::LINE_LEN_MAX.to_string()),
        (
            "multiget_keys_max",
            koshka_limits::MULTIGET_KEYS_MAX.to_string(),
        ),
        ("output_buffer_max", limits.output_buffer_max.to_string()),
        (
            "evictions",
            if config.storage.kv_mode == crate::config::KvMode::Cache {
                "on"
            } else {
                "off"
            }
            .to_string(),
        ),
        ("cas_enabled", "yes".to_string()),
        ("data_dir", config.storage.data_dir.display().to_string()),
        (
            "durability",
            format!("{:?}", config.storage.durability).to_lowercase(),
        ),
        (
            "binlog_segment_size",
            limits.binlog_segment_size.to_string(),
        ),
        ("snapshot_log_bytes", limits.snapshot_log_bytes.to_string()),
        ("shard_index", config.engines.shard_index.to_string()),
        ("shard_count", config.engines.shard_count.to_string()),
    ];
    for (name, value) in &lines {
        reply::stat(ctx.out, name, value);
    }
}

fn rusage() -> (String, String) {
    let usage = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields 14 and 15 (1-based) are utime and stime in clock ticks, after the ")" of comm.
    let fields: Vec<&str> = usage
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 100.0
    };
    (format!("{:.6}", ticks(11)), format!("{:.6}", ticks(12)))
}
