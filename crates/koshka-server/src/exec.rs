//! Command execution: one parsed [`Command`] becomes one engine [`Request`] per key, run
//! against the engine behind the port through the [`Engine`] seam; replies are appended to
//! the connection's output buffer in the form the client used (text or meta).
//!
//! The engine writes found values itself, through a [`Reply`] sink over the output buffer
//! ([`Classic`], [`Meta`], [`Debug`]), under its partition lock and without copies; every
//! other answer is an [`Outcome`] encoded here. This module knows no engine.

use koshka_engine::{
    ArithOptions, Cx, Engine, Error, ItemRef, Outcome, Reply, Request, Session, StoreMode, Tracking,
};
use koshka_proto::meta_reply::{self, MetaItem};
use koshka_proto::{reply, Command, Keys, MetaCode, MetaFlags};

use crate::stats::{bump, Counters};
use crate::{reply_error, stats_groups, EngineSlot, Node};

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
    /// The log's "now", read once per batch.
    pub now: u32,
}

impl Ctx<'_> {
    fn engine(&self) -> &dyn Engine {
        self.slot.engine.as_ref()
    }

    /// Runs one request; records the log position the batch must wait for.
    fn run(&mut self, request: &Request<'_>, sink: Sink) -> koshka_engine::Result<Outcome> {
        let journal = Tracking::new(self.slot.persistence.journal());
        let now = self.now;
        let result = {
            let mut reply = sink.over(self.out, now);
            let mut cx = Cx {
                session: self.session,
                journal: &journal,
                reply: &mut reply,
                now,
            };
            self.slot.engine.execute(request, &mut cx)
        };
        *self.ack_pos = (*self.ack_pos).max(journal.written());
        if result.is_err() {
            bump(&self.counters.engine_errors, 1);
        }
        result
    }

    fn error(&mut self, error: &Error) {
        bump(&self.counters.protocol_errors, 1);
        self.out.extend_from_slice(reply_error(error).as_bytes());
    }

    fn reply(&mut self, noreply: bool, bytes: &[u8]) {
        if !noreply {
            self.out.extend_from_slice(bytes);
        }
    }

    /// Refuses a command the engine's model does not have (see [`Engine::item_model`]).
    fn refuse_unless_item_model(&mut self) -> bool {
        if self.engine().item_model() {
            return false;
        }
        let error = Error::NotSupported {
            engine: self.engine().name(),
        };
        self.error(&error);
        true
    }
}

/// How found values are written.
#[derive(Clone, Copy)]
enum Sink<'f> {
    /// `VALUE` lines, with cas uniques for `gets`/`gats`.
    Classic { cas: bool },
    /// `mg` lines.
    Meta { flags: MetaFlags<'f> },
    /// `me` lines.
    Debug,
    /// Nothing is expected (updates).
    None,
}

impl<'f> Sink<'f> {
    fn over<'o>(self, out: &'o mut Vec<u8>, now: u32) -> Writer<'o, 'f> {
        Writer {
            out,
            sink: self,
            now,
        }
    }
}

/// A [`Reply`] over the output buffer.
struct Writer<'o, 'f> {
    out: &'o mut Vec<u8>,
    sink: Sink<'f>,
    now: u32,
}

impl Reply for Writer<'_, '_> {
    fn item(&mut self, item: &ItemRef<'_>) {
        let meta = MetaItem {
            flags: item.flags,
            cas: item.cas,
            exptime: item.exptime,
            size: item.value.len(),
        };
        match self.sink {
            Sink::Classic { cas } => {
                reply::value(
                    self.out,
                    item.key,
                    item.flags,
                    item.value,
                    cas.then_some(item.cas),
                );
            }
            Sink::Meta { flags } => {
                meta_reply::hit(self.out, &flags, item.key, &meta, item.value, self.now);
            }
            Sink::Debug => meta_reply::debug(self.out, item.key, &meta, self.now),
            Sink::None => {}
        }
    }

    fn value(
        &mut self,
        key: &[u8],
        flags: u32,
        render: &mut dyn FnMut(&mut Vec<u8>) -> bool,
    ) -> bool {
        match self.sink {
            Sink::Classic { .. } => reply::value_in_place(self.out, key, flags, render),
            Sink::Meta { .. } | Sink::Debug | Sink::None => {
                // Meta commands reach item-model engines only, which answer with items.
                let mut data = Vec::new();
                if !render(&mut data) {
                    return false;
                }
                let item = ItemRef {
                    key,
                    flags,
                    cas: 0,
                    exptime: 0,
                    value: &data,
                };
                self.item(&item);
                true
            }
        }
    }
}

/// Executes one command; `resume` is the index of the first key still to answer in a
/// multi-get continued after [`Flow::MoreKeys`].
pub(crate) fn execute(ctx: &mut Ctx<'_>, command: &Command<'_>, resume: usize) -> Flow {
    match command {
        Command::Version => reply::version(ctx.out, koshka_proto::VERSION),
        Command::Quit => return Flow::Quit,
        Command::Verbosity { noreply } => ctx.reply(*noreply, reply::OK),
        Command::SlabsAutomove { .. } => stats_groups::slabs_automove(ctx.out),
        Command::SlabsReassign {
            source,
            destination,
        } => stats_groups::slabs_reassign(*source, *destination, ctx.out),
        Command::MetaNoop => ctx.out.extend_from_slice(reply::MN),
        Command::Stats { group } => crate::stats_cmd::stats(ctx.node, ctx.slot, group, ctx.out),
        Command::Get { keys, cas } => {
            if *cas && ctx.refuse_unless_item_model() {
                return Flow::Continue;
            }
            return get(ctx, keys, *cas, None, resume);
        }
        Command::Gat { exptime, keys, cas } => {
            if ctx.refuse_unless_item_model() {
                return Flow::Continue;
            }
            return get(ctx, keys, *cas, Some(*exptime), resume);
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
            let mode = store_mode(*mode);
            if mode != StoreMode::Set && ctx.refuse_unless_item_model() {
                return Flow::Continue;
            }
            let request = Request::Store {
                mode,
                key,
                flags: *flags,
                exptime: *exptime,
                cas: *cas_unique,
                data,
            };
            match ctx.run(&request, Sink::None) {
                Ok(outcome) => {
                    if mode == StoreMode::Cas {
                        let counter = match outcome {
                            Outcome::Stored { .. } => &ctx.counters.cas_hits,
                            Outcome::Exists => &ctx.counters.cas_badval,
                            _ => &ctx.counters.cas_misses,
                        };
                        bump(counter, 1);
                    }
                    ctx.reply(*noreply, store_reply(outcome));
                }
                Err(e) => ctx.error(&e),
            }
        }
        Command::Delete { key, noreply } => delete(ctx, key, *noreply),
        Command::Arith {
            key,
            incr,
            delta,
            noreply,
        } => arith(ctx, key, *incr, *delta, *noreply),
        Command::Touch {
            key,
            exptime,
            noreply,
        } => touch(ctx, key, *exptime, *noreply),
        Command::FlushAll { delay, noreply } => {
            if ctx.refuse_unless_item_model() {
                return Flow::Continue;
            }
            bump(&ctx.counters.cmd_flush, 1);
            match ctx.run(&Request::FlushAll { delay: *delay }, Sink::None) {
                Ok(_) => ctx.reply(*noreply, reply::OK),
                Err(e) => ctx.error(&e),
            }
        }
        Command::MetaGet { key, flags } => {
            if !ctx.refuse_unless_item_model() {
                meta_get(ctx, key, flags);
            }
        }
        Command::MetaSet { key, flags, data } => {
            if !ctx.refuse_unless_item_model() {
                meta_set(ctx, key, flags, data);
            }
        }
        Command::MetaDelete { key, flags } => {
            if !ctx.refuse_unless_item_model() {
                meta_delete(ctx, key, flags);
            }
        }
        Command::MetaArith { key, flags } => {
            if !ctx.refuse_unless_item_model() {
                meta_arith(ctx, key, flags);
            }
        }
        Command::MetaDebug { key } => {
            if !ctx.refuse_unless_item_model() {
                meta_debug(ctx, key);
            }
        }
    }
    Flow::Continue
}

fn store_mode(mode: koshka_proto::StoreMode) -> StoreMode {
    use koshka_proto::StoreMode as Wire;
    match mode {
        Wire::Set => StoreMode::Set,
        Wire::Add => StoreMode::Add,
        Wire::Replace => StoreMode::Replace,
        Wire::Append => StoreMode::Append,
        Wire::Prepend => StoreMode::Prepend,
        Wire::Cas => StoreMode::Cas,
    }
}

fn store_reply(outcome: Outcome) -> &'static [u8] {
    match outcome {
        Outcome::Stored { .. } => reply::STORED,
        Outcome::NotStored => reply::NOT_STORED,
        Outcome::Exists => reply::EXISTS,
        _ => reply::NOT_FOUND,
    }
}

/// Keys of a multi-get announced to the engine at a time ([`Engine::prefetch`]): enough to
/// overlap the cache misses of a typical multi-get, few enough that what is prefetched is
/// still cached when its turn comes.
const PREFETCH_KEYS: usize = 16;

/// `get`/`gets`/`gat`/`gats`: one request per key, values streamed into the output buffer.
/// A key the engine refuses (a malformed compiled key) fails the whole command.
fn get(ctx: &mut Ctx<'_>, keys: &Keys<'_>, cas: bool, touch: Option<i64>, resume: usize) -> Flow {
    if touch.is_some() && resume == 0 {
        bump(&ctx.counters.cmd_touch, keys.len() as u64);
    }
    let start = ctx.out.len();
    // A multi-get tells the engine its keys a window ahead (see `Engine::prefetch`).
    let prefetch = touch.is_none() && keys.len() > 1;
    let mut ahead = keys.iter().skip(resume);
    for (index, key) in keys.iter().enumerate().skip(resume) {
        if ctx.out.len() >= ctx.output_max {
            return Flow::MoreKeys(index);
        }
        if prefetch && (index - resume).is_multiple_of(PREFETCH_KEYS) {
            let mut window: [&[u8]; PREFETCH_KEYS] = [&[]; PREFETCH_KEYS];
            let mut n = 0;
            for (slot, key) in window.iter_mut().zip(ahead.by_ref()) {
                *slot = key;
                n += 1;
            }
            ctx.engine().prefetch(&window[..n]);
        }
        bump(&ctx.counters.cmd_get, 1);
        let request = match touch {
            None => Request::Get { key },
            Some(exptime) => Request::Touch {
                key,
                exptime,
                read: true,
            },
        };
        match ctx.run(&request, Sink::Classic { cas }) {
            Ok(outcome) => {
                let hit = outcome == Outcome::Hit;
                ctx.node.detail.get(key, hit);
                let c = ctx.counters;
                bump(if hit { &c.get_hits } else { &c.get_misses }, 1);
                if touch.is_some() {
                    bump(if hit { &c.touch_hits } else { &c.touch_misses }, 1);
                }
            }
            Err(e) => {
                if resume == 0 {
                    ctx.out.truncate(start);
                }
                ctx.error(&e);
                return Flow::Continue;
            }
        }
    }
    ctx.out.extend_from_slice(reply::END);
    Flow::Continue
}

fn delete(ctx: &mut Ctx<'_>, key: &[u8], noreply: bool) {
    ctx.node.detail.delete(key);
    match ctx.run(&Request::Delete { key, cas: None }, Sink::None) {
        Ok(Outcome::Deleted) => {
            bump(&ctx.counters.delete_hits, 1);
            ctx.reply(noreply, reply::DELETED);
        }
        Ok(_) => {
            bump(&ctx.counters.delete_misses, 1);
            ctx.reply(noreply, reply::NOT_FOUND);
        }
        Err(e) => ctx.error(&e),
    }
}

fn arith(ctx: &mut Ctx<'_>, key: &[u8], incr: bool, delta: u64, noreply: bool) {
    let request = Request::Arith {
        key,
        incr,
        delta,
        options: ArithOptions::default(),
    };
    let result = ctx.run(&request, Sink::None);
    let c = ctx.counters;
    let (hits, misses) = if incr {
        (&c.incr_hits, &c.incr_misses)
    } else {
        (&c.decr_hits, &c.decr_misses)
    };
    match result {
        Ok(Outcome::Number { value, .. }) => {
            bump(hits, 1);
            if !noreply {
                reply::arith(ctx.out, value);
            }
        }
        Ok(Outcome::NonNumeric) => {
            bump(&ctx.counters.protocol_errors, 1);
            ctx.out.extend_from_slice(
                b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
            );
        }
        Ok(_) => {
            bump(misses, 1);
            ctx.reply(noreply, reply::NOT_FOUND);
        }
        Err(e) => ctx.error(&e),
    }
}

fn touch(ctx: &mut Ctx<'_>, key: &[u8], exptime: i64, noreply: bool) {
    if ctx.refuse_unless_item_model() {
        return;
    }
    bump(&ctx.counters.cmd_touch, 1);
    let request = Request::Touch {
        key,
        exptime,
        read: false,
    };
    match ctx.run(&request, Sink::None) {
        Ok(Outcome::Touched) => {
            bump(&ctx.counters.touch_hits, 1);
            ctx.reply(noreply, reply::TOUCHED);
        }
        Ok(_) => {
            bump(&ctx.counters.touch_misses, 1);
            ctx.reply(noreply, reply::NOT_FOUND);
        }
        Err(e) => ctx.error(&e),
    }
}

// ---------------------------------------------------------------------------------------------
// Meta commands (engines with the item model only).

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

fn meta_get(ctx: &mut Ctx<'_>, key: &[u8], flags: &MetaFlags<'_>) {
    bump(&ctx.counters.cmd_get, 1);
    let Ok(touch) = meta_number::<i64>(ctx, flags, b'T') else {
        return;
    };
    let request = match touch {
        None => Request::Get { key },
        Some(exptime) => {
            bump(&ctx.counters.cmd_touch, 1);
            Request::Touch {
                key,
                exptime,
                read: true,
            }
        }
    };
    let result = ctx.run(&request, Sink::Meta { flags: *flags });
    if let Ok(outcome) = &result {
        ctx.node.detail.get(key, *outcome == Outcome::Hit);
    }
    match result {
        Ok(Outcome::Hit) => bump(&ctx.counters.get_hits, 1),
        Ok(_) => {
            bump(&ctx.counters.get_misses, 1);
            if !flags.has(b'q') {
                ctx.out.extend_from_slice(reply::EN);
            }
        }
        Err(e) => ctx.error(&e),
    }
}

fn meta_store_mode(flags: &MetaFlags<'_>, compare: bool) -> Option<StoreMode> {
    let mode = match flags.token(b'M') {
        None => StoreMode::Set,
        Some(m) => match m.first().map(u8::to_ascii_uppercase) {
            Some(b'S') => StoreMode::Set,
            Some(b'E') => StoreMode::Add,
            Some(b'R') => StoreMode::Replace,
            Some(b'A') => StoreMode::Append,
            Some(b'P') => StoreMode::Prepend,
            _ => return None,
        },
    };
    Some(if compare && mode == StoreMode::Set {
        StoreMode::Cas
    } else {
        mode
    })
}

fn meta_set(ctx: &mut Ctx<'_>, key: &[u8], flags: &MetaFlags<'_>, data: &[u8]) {
    bump(&ctx.counters.cmd_set, 1);
    ctx.node.detail.set(key);
    let (Ok(client_flags), Ok(ttl), Ok(compare)) = (
        meta_number::<u32>(ctx, flags, b'F'),
        meta_number::<i64>(ctx, flags, b'T'),
        meta_number::<u64>(ctx, flags, b'C'),
    ) else {
        return;
    };
    let Some(mode) = meta_store_mode(flags, compare.is_some()) else {
        ctx.out
            .extend_from_slice(b"CLIENT_ERROR invalid mode for ms M token\r\n");
        return;
    };
    let request = Request::Store {
        mode,
        key,
        flags: client_flags.unwrap_or(0),
        exptime: ttl.unwrap_or(0),
        cas: compare.unwrap_or(0),
        data,
    };
    let outcome = match ctx.run(&request, Sink::None) {
        Ok(outcome) => outcome,
        Err(e) => return ctx.error(&e),
    };
    let now = ctx.now;
    match outcome {
        Outcome::Stored { .. } if flags.has(b'q') => {}
        Outcome::Stored { cas } => {
            // Only the cas is known about the stored item; it is what `ms` may ask for.
            let item = MetaItem {
                flags: client_flags.unwrap_or(0),
                cas,
                exptime: 0,
                size: data.len(),
            };
            meta_reply::status(ctx.out, MetaCode::Hd, flags, key, Some(&item), now);
        }
        Outcome::NotStored => meta_reply::status(ctx.out, MetaCode::Ns, flags, key, None, now),
        Outcome::Exists => meta_reply::status(ctx.out, MetaCode::Ex, flags, key, None, now),
        _ => meta_reply::status(ctx.out, MetaCode::Nf, flags, key, None, now),
    }
}

fn meta_delete(ctx: &mut Ctx<'_>, key: &[u8], flags: &MetaFlags<'_>) {
    let Ok(compare) = meta_number::<u64>(ctx, flags, b'C') else {
        return;
    };
    ctx.node.detail.delete(key);
    let outcome = match ctx.run(&Request::Delete { key, cas: compare }, Sink::None) {
        Ok(outcome) => outcome,
        Err(e) => return ctx.error(&e),
    };
    let code = match outcome {
        Outcome::Deleted => {
            bump(&ctx.counters.delete_hits, 1);
            if flags.has(b'q') {
                return;
            }
            MetaCode::Hd
        }
        Outcome::Exists => MetaCode::Ex,
        _ => {
            bump(&ctx.counters.delete_misses, 1);
            MetaCode::Nf
        }
    };
    let now = ctx.now;
    meta_reply::status(ctx.out, code, flags, key, None, now);
}

fn meta_arith(ctx: &mut Ctx<'_>, key: &[u8], flags: &MetaFlags<'_>) {
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
    let request = Request::Arith {
        key,
        incr,
        delta: delta.unwrap_or(1),
        options: ArithOptions {
            vivify,
            initial: initial.unwrap_or(0),
            cas: compare,
            exptime: ttl,
        },
    };
    let outcome = match ctx.run(&request, Sink::None) {
        Ok(outcome) => outcome,
        Err(e) => return ctx.error(&e),
    };
    let c = ctx.counters;
    let (hits, misses) = if incr {
        (&c.incr_hits, &c.incr_misses)
    } else {
        (&c.decr_hits, &c.decr_misses)
    };
    match outcome {
        Outcome::Number {
            value,
            cas,
            exptime,
        } => {
            bump(hits, 1);
            meta_number_reply(ctx, key, flags, value, cas, exptime);
        }
        Outcome::Exists => ctx.out.extend_from_slice(b"EX\r\n"),
        Outcome::NonNumeric => ctx
            .out
            .extend_from_slice(b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"),
        _ => {
            bump(misses, 1);
            ctx.out.extend_from_slice(b"NF\r\n");
        }
    }
}

/// The `ma` reply for a number: `VA <len> <flags>\r\n<n>\r\n` with `v`, `HD <flags>` without,
/// nothing with `q`.
fn meta_number_reply(
    ctx: &mut Ctx<'_>,
    key: &[u8],
    flags: &MetaFlags<'_>,
    value: u64,
    cas: u64,
    exptime: u32,
) {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(value);
    let want_value = flags.has(b'v');
    if !want_value && flags.has(b'q') {
        return;
    }
    let code = if want_value {
        MetaCode::Va
    } else {
        MetaCode::Hd
    };
    reply::meta_head(ctx.out, code, digits.len());
    let item = MetaItem {
        flags: 0,
        cas,
        exptime,
        size: digits.len(),
    };
    // `ma` reports only O, k, c and t.
    let mut only = Vec::new();
    for (letter, token) in flags.iter() {
        if matches!(letter, b'O' | b'k' | b'c' | b't') {
            only.push(letter);
            only.extend_from_slice(token);
            only.push(b' ');
        }
    }
    let now = ctx.now;
    meta_reply::return_flags(ctx.out, &MetaFlags::new(&only), key, Some(&item), now);
    reply::meta_end(ctx.out, want_value.then_some(digits.as_bytes()));
}

fn meta_debug(ctx: &mut Ctx<'_>, key: &[u8]) {
    match ctx.run(&Request::Get { key }, Sink::Debug) {
        Ok(Outcome::Hit) => {}
        Ok(_) => ctx.out.extend_from_slice(reply::EN),
        Err(e) => ctx.error(&e),
    }
}
