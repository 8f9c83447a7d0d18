//! The engine's request vocabulary: what a client asked for, said without the wire.
//!
//! The server parses the memcached text or meta protocol and turns each command into one
//! [`Request`] per key (a multi-get is one `Get` per key). The engine answers in two ways:
//! found values go straight into the connection's output through [`Reply`], under the
//! partition lock and without copies; everything else is the returned [`Outcome`], which the
//! server encodes in the form the client used (`STORED` for `set`, `HD` for `ms`, …).
//!
//! This module knows no wire format.

/// Which store command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    /// Store unconditionally.
    Set,
    /// Store only if absent.
    Add,
    /// Store only if present.
    Replace,
    /// Add the data after the existing value.
    Append,
    /// Add the data before the existing value.
    Prepend,
    /// Store only if the cas unique still matches [`Request::Store::cas`].
    Cas,
}

/// Options of an increment or decrement (memcached's `incr`/`decr` and meta `ma`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArithOptions {
    /// Create the item with `initial` if missing, with this raw exptime (`ma N`).
    pub vivify: Option<i64>,
    /// Initial value for vivified items (`ma J`).
    pub initial: u64,
    /// Compare cas first (`ma C`).
    pub cas: Option<u64>,
    /// New raw exptime on success (`ma T`).
    pub exptime: Option<i64>,
}

/// One request for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// Read a key (`get`, `gets`, `mg`). Hits go to [`Reply::item`] or [`Reply::value`].
    Get {
        /// The key.
        key: &'a [u8],
    },
    /// Change a key's expiry (`touch`), and with `read` also return it (`gat`, `mg T`).
    Touch {
        /// The key.
        key: &'a [u8],
        /// New raw exptime (memcached rules).
        exptime: i64,
        /// Also answer the item like a `Get`.
        read: bool,
    },
    /// Store a value (`set` … `cas`, `ms`).
    Store {
        /// Which store command.
        mode: StoreMode,
        /// The key.
        key: &'a [u8],
        /// Client flags.
        flags: u32,
        /// Raw exptime (memcached rules).
        exptime: i64,
        /// The cas unique to compare for [`StoreMode::Cas`]; 0 otherwise.
        cas: u64,
        /// The data block.
        data: &'a [u8],
    },
    /// Remove a key (`delete`, `md`); with `cas`, only if it still matches.
    Delete {
        /// The key.
        key: &'a [u8],
        /// Compare cas first (`md C`).
        cas: Option<u64>,
    },
    /// Add `delta` to (`incr`) or subtract it from (`decr`) a number.
    Arith {
        /// The key.
        key: &'a [u8],
        /// Increment (true) or decrement.
        incr: bool,
        /// The amount.
        delta: u64,
        /// Meta options.
        options: ArithOptions,
    },
    /// Invalidate everything now (`delay <= 0`) or at a later time.
    FlushAll {
        /// Seconds (or an absolute time) until the flush takes effect.
        delay: i64,
    },
}

impl Request<'_> {
    /// Whether the request may change durable state.
    #[must_use]
    pub fn is_write(&self) -> bool {
        !matches!(self, Request::Get { .. })
    }
}

/// What a request came to, besides the values it sent through [`Reply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A read found something (its bytes went through [`Reply`]).
    Hit,
    /// A read found nothing, or a `touch`/`delete`/`incr` target does not exist.
    Miss,
    /// A store or update was carried out; `cas` is the item's new cas unique (0 if the
    /// engine has none).
    Stored {
        /// New cas unique.
        cas: u64,
    },
    /// A conditional store did not apply (`add` of an existing key, `replace` of a missing one).
    NotStored,
    /// A cas comparison failed.
    Exists,
    /// A delete removed the key.
    Deleted,
    /// A touch changed the expiry.
    Touched,
    /// The result of an increment or decrement, with the item's cas and absolute exptime.
    Number {
        /// The new value.
        value: u64,
        /// The item's cas unique.
        cas: u64,
        /// The item's absolute exptime (0 = never).
        exptime: u32,
    },
    /// `incr`/`decr` of a value that is not a decimal number.
    NonNumeric,
    /// A command without a result (`flush_all`).
    Done,
}

/// An item as an engine hands it to [`Reply::item`]: borrowed, valid only during the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemRef<'a> {
    /// The key.
    pub key: &'a [u8],
    /// Client flags.
    pub flags: u32,
    /// Cas unique.
    pub cas: u64,
    /// Absolute expiry (unix seconds, 0 = never).
    pub exptime: u32,
    /// The value bytes.
    pub value: &'a [u8],
}

/// Where an engine writes what a read found. Implemented by the server over the
/// connection's output buffer, in the protocol form the client used.
pub trait Reply {
    /// A stored item, written under the partition lock (copying the value once, into the
    /// output buffer).
    fn item(&mut self, item: &ItemRef<'_>);

    /// A computed value (JSON, an id list): `render` appends its bytes to the buffer it is
    /// given, which is the connection's output buffer itself, so no intermediate copy is
    /// made, and returns whether there is a value at all; on `false` whatever it appended is
    /// dropped and nothing is answered for the key (a miss). `render` is called exactly once.
    /// Returns what `render` returned.
    fn value(
        &mut self,
        key: &[u8],
        flags: u32,
        render: &mut dyn FnMut(&mut Vec<u8>) -> bool,
    ) -> bool;
}

/// A [`Reply`] that collects into owned values: for tests and tools, not the hot path.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Collect {
    /// `(key, flags, value)` in the order they were written.
    pub values: Vec<(Vec<u8>, u32, Vec<u8>)>,
}

impl Reply for Collect {
    fn item(&mut self, item: &ItemRef<'_>) {
        self.values
            .push((item.key.to_vec(), item.flags, item.value.to_vec()));
    }

    fn value(
        &mut self,
        key: &[u8],
        flags: u32,
        render: &mut dyn FnMut(&mut Vec<u8>) -> bool,
    ) -> bool {
        let mut data = Vec::new();
        let found = render(&mut data);
        if found {
            self.values.push((key.to_vec(), flags, data));
        }
        found
    }
}
