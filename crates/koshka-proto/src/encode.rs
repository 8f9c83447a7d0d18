//! Requests to bytes: the inverse of [`crate::parse`], used by clients, the bench and the
//! round-trip property tests.
//!
//! One function per request form appends the whole request, line end and data block included,
//! to a caller-owned buffer, so a client pipelines by appending and allocates nothing per
//! request once its buffer has grown. Keys and data blocks are [`Chunk`]s: plain byte slices,
//! or anything that knows its length and writes itself (the bench writes compiled keys such as
//! `message42_7` straight into the buffer). [`Command::encode`] is built on the same functions.
//!
//! The functions do not validate: a key with a space or a line end breaks the framing. Call
//! [`check_key`] first on keys that come from outside.

use crate::meta::MetaFlags;
use crate::reply::{number, signed};
use crate::request::{Command, StoreMode};

/// Bytes appended to a request as one piece (a key, a flag token, a data block) whose length is
/// known before they are written, as a data block's length precedes it on the command line.
pub trait Chunk {
    /// The number of bytes [`Chunk::append_to`] appends.
    fn len(&self) -> usize;

    /// Whether the chunk is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the bytes to `out`.
    fn append_to(&self, out: &mut Vec<u8>);
}

impl Chunk for [u8] {
    #[inline]
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    #[inline]
    fn append_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
}

impl<const N: usize> Chunk for [u8; N] {
    #[inline]
    fn len(&self) -> usize {
        N
    }

    #[inline]
    fn append_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
}

impl Chunk for str {
    #[inline]
    fn len(&self) -> usize {
        str::len(self)
    }

    #[inline]
    fn append_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

impl Chunk for Vec<u8> {
    #[inline]
    fn len(&self) -> usize {
        Vec::len(self)
    }

    #[inline]
    fn append_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
}

impl Chunk for String {
    #[inline]
    fn len(&self) -> usize {
        String::len(self)
    }

    #[inline]
    fn append_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

impl<T: Chunk + ?Sized> Chunk for &T {
    #[inline]
    fn len(&self) -> usize {
        (**self).len()
    }

    #[inline]
    fn append_to(&self, out: &mut Vec<u8>) {
        (**self).append_to(out);
    }
}

/// Why a key (or meta flag token) cannot travel on a text-protocol command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadKey {
    /// An empty key: the command line would lose a token.
    Empty,
    /// A space, control character or DEL: it would split the command line or end it.
    Unprintable,
}

impl BadKey {
    /// A short static description.
    #[must_use]
    pub fn reason(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Unprintable => "contains whitespace or a control character",
        }
    }
}

/// Checks that `key` can be sent as one token. Length is the server's business (compiled keys
/// may be long), so only the framing-breaking bytes are refused.
///
/// # Errors
///
/// [`BadKey`] says why not.
pub fn check_key(key: &[u8]) -> Result<(), BadKey> {
    if key.is_empty() {
        return Err(BadKey::Empty);
    }
    if key.iter().any(|&byte| byte <= b' ' || byte == 0x7f) {
        return Err(BadKey::Unprintable);
    }
    Ok(())
}

/// Which retrieval command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retrieval {
    /// `get <key>*`
    Get,
    /// `gets <key>*`: with cas uniques.
    Gets,
    /// `gat <exptime> <key>*`: get and touch.
    Gat(i64),
    /// `gats <exptime> <key>*`: get and touch, with cas uniques.
    Gats(i64),
}

impl Retrieval {
    /// The command word.
    #[must_use]
    pub fn word(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Gets => "gets",
            Self::Gat(_) => "gat",
            Self::Gats(_) => "gats",
        }
    }
}

/// Appends `get|gets <key>*\r\n` or `gat|gats <exptime> <key>*\r\n`. The caller passes at
/// least one key (the server answers `ERROR` to none).
#[inline]
pub fn retrieval<K: Chunk>(
    out: &mut Vec<u8>,
    command: Retrieval,
    keys: impl IntoIterator<Item = K>,
) {
    out.extend_from_slice(command.word().as_bytes());
    if let Retrieval::Gat(exptime) | Retrieval::Gats(exptime) = command {
        out.push(b' ');
        signed(out, exptime);
    }
    for key in keys {
        out.push(b' ');
        key.append_to(out);
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `get <key>*\r\n`: the bench's fast path.
#[inline]
pub fn get<K: Chunk>(out: &mut Vec<u8>, keys: impl IntoIterator<Item = K>) {
    retrieval(out, Retrieval::Get, keys);
}

/// The fields of a store command line other than the key and the data block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Store {
    /// Which store command.
    pub mode: StoreMode,
    /// Client flags.
    pub flags: u32,
    /// Expiry (memcached rules).
    pub exptime: i64,
    /// For [`StoreMode::Cas`]: the unique to compare; not sent for the other modes.
    pub cas_unique: u64,
    /// Suppress the reply.
    pub noreply: bool,
}

impl Store {
    /// `mode` with flags 0, no expiry, no cas unique, a reply.
    #[must_use]
    pub fn new(mode: StoreMode) -> Store {
        Store {
            mode,
            flags: 0,
            exptime: 0,
            cas_unique: 0,
            noreply: false,
        }
    }
}

/// Appends `<mode> <key> <flags> <exptime> <bytes>[ <cas>][ noreply]\r\n<data>\r\n`.
#[inline]
pub fn store<K: Chunk + ?Sized, D: Chunk + ?Sized>(
    out: &mut Vec<u8>,
    store: &Store,
    key: &K,
    data: &D,
) {
    out.extend_from_slice(store.mode.word().as_bytes());
    out.push(b' ');
    key.append_to(out);
    out.push(b' ');
    number(out, u64::from(store.flags));
    out.push(b' ');
    signed(out, store.exptime);
    out.push(b' ');
    number(out, data.len() as u64);
    if store.mode == StoreMode::Cas {
        out.push(b' ');
        number(out, store.cas_unique);
    }
    noreply_suffix(out, store.noreply);
    out.extend_from_slice(b"\r\n");
    let start = out.len();
    data.append_to(out);
    debug_assert_eq!(
        out.len() - start,
        data.len(),
        "a chunk wrote its stated length"
    );
    out.extend_from_slice(b"\r\n");
}

/// Appends `set <key> 0 0 <bytes>\r\n<data>\r\n`: the bench's fast path.
#[inline]
pub fn set<K: Chunk + ?Sized, D: Chunk + ?Sized>(out: &mut Vec<u8>, key: &K, data: &D) {
    store(out, &Store::new(StoreMode::Set), key, data);
}

/// Appends `delete <key>[ noreply]\r\n`.
#[inline]
pub fn delete<K: Chunk + ?Sized>(out: &mut Vec<u8>, key: &K, noreply: bool) {
    word_key(out, b"delete", key);
    noreply_suffix(out, noreply);
    out.extend_from_slice(b"\r\n");
}

/// Appends `incr|decr <key> <delta>[ noreply]\r\n`.
pub fn arith<K: Chunk + ?Sized>(out: &mut Vec<u8>, key: &K, incr: bool, delta: u64, noreply: bool) {
    word_key(out, if incr { b"incr" } else { b"decr" }, key);
    out.push(b' ');
    number(out, delta);
    noreply_suffix(out, noreply);
    out.extend_from_slice(b"\r\n");
}

/// Appends `touch <key> <exptime>[ noreply]\r\n`.
pub fn touch<K: Chunk + ?Sized>(out: &mut Vec<u8>, key: &K, exptime: i64, noreply: bool) {
    word_key(out, b"touch", key);
    out.push(b' ');
    signed(out, exptime);
    noreply_suffix(out, noreply);
    out.extend_from_slice(b"\r\n");
}

/// Appends `flush_all[ <delay>][ noreply]\r\n`.
pub fn flush_all(out: &mut Vec<u8>, delay: Option<i64>, noreply: bool) {
    out.extend_from_slice(b"flush_all");
    if let Some(delay) = delay {
        out.push(b' ');
        signed(out, delay);
    }
    noreply_suffix(out, noreply);
    out.extend_from_slice(b"\r\n");
}

/// Appends `stats[ <group>]\r\n` (general stats for an empty group).
pub fn stats(out: &mut Vec<u8>, group: &[u8]) {
    out.extend_from_slice(b"stats");
    if !group.is_empty() {
        out.push(b' ');
        out.extend_from_slice(group);
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `version\r\n`.
/// `slabs automove <mode>\r\n`
pub fn slabs_automove(out: &mut Vec<u8>, mode: u32) {
    out.extend_from_slice(b"slabs automove ");
    number(out, u64::from(mode));
    out.extend_from_slice(b"\r\n");
}

/// `slabs reassign <source> <destination>\r\n`
pub fn slabs_reassign(out: &mut Vec<u8>, source: i32, destination: i32) {
    out.extend_from_slice(b"slabs reassign ");
    signed(out, i64::from(source));
    out.push(b' ');
    signed(out, i64::from(destination));
    out.extend_from_slice(b"\r\n");
}

/// `version\r\n`
pub fn version(out: &mut Vec<u8>) {
    out.extend_from_slice(b"version\r\n");
}

/// Appends `verbosity <level>[ noreply]\r\n`.
pub fn verbosity(out: &mut Vec<u8>, level: u64, noreply: bool) {
    out.extend_from_slice(b"verbosity ");
    number(out, level);
    noreply_suffix(out, noreply);
    out.extend_from_slice(b"\r\n");
}

/// Appends `quit\r\n`.
pub fn quit(out: &mut Vec<u8>) {
    out.extend_from_slice(b"quit\r\n");
}

/// Appends `mn\r\n` (meta no-op).
pub fn meta_noop(out: &mut Vec<u8>) {
    out.extend_from_slice(b"mn\r\n");
}

/// Appends `me <key>\r\n` (meta debug).
pub fn meta_debug<K: Chunk + ?Sized>(out: &mut Vec<u8>, key: &K) {
    word_key(out, b"me", key);
    out.extend_from_slice(b"\r\n");
}

/// Which meta command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaCommand {
    /// `mg`
    Get,
    /// `ms` (with a data block)
    Set,
    /// `md`
    Delete,
    /// `ma`
    Arith,
}

impl MetaCommand {
    /// The command word.
    #[must_use]
    pub fn word(self) -> &'static str {
        match self {
            Self::Get => "mg",
            Self::Set => "ms",
            Self::Delete => "md",
            Self::Arith => "ma",
        }
    }
}

/// Appends `<cmd> <key>[ <bytes>]( <flag>)*\r\n`, then `<data>\r\n` when `data` is given (it is
/// for `ms` and only for `ms`). Each flag is one token such as `v`, `T30` or `Oabc`.
pub fn meta<K: Chunk + ?Sized, F: Chunk>(
    out: &mut Vec<u8>,
    command: MetaCommand,
    key: &K,
    flags: impl IntoIterator<Item = F>,
    data: Option<&[u8]>,
) {
    debug_assert_eq!(
        command == MetaCommand::Set,
        data.is_some(),
        "ms and only ms has data"
    );
    word_key(out, command.word().as_bytes(), key);
    if let Some(data) = data {
        out.push(b' ');
        number(out, data.len() as u64);
    }
    for flag in flags {
        out.push(b' ');
        flag.append_to(out);
    }
    out.extend_from_slice(b"\r\n");
    if let Some(data) = data {
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
}

impl Command<'_> {
    /// Appends the request bytes of this command to `out`. Meta keys are written raw, so a
    /// command parsed with the `b` flag re-encodes with its decoded key only if the caller
    /// re-encodes it in base64 first.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Command::Get { keys, cas } => {
                let command = if *cas {
                    Retrieval::Gets
                } else {
                    Retrieval::Get
                };
                retrieval(out, command, keys.iter());
            }
            Command::Gat { exptime, keys, cas } => {
                let command = if *cas {
                    Retrieval::Gats(*exptime)
                } else {
                    Retrieval::Gat(*exptime)
                };
                retrieval(out, command, keys.iter());
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
                let header = Store {
                    mode: *mode,
                    flags: *flags,
                    exptime: *exptime,
                    cas_unique: *cas_unique,
                    noreply: *noreply,
                };
                store(out, &header, *key, *data);
            }
            Command::Delete { key, noreply } => delete(out, *key, *noreply),
            Command::Arith {
                key,
                incr,
                delta,
                noreply,
            } => arith(out, *key, *incr, *delta, *noreply),
            Command::Touch {
                key,
                exptime,
                noreply,
            } => touch(out, *key, *exptime, *noreply),
            Command::FlushAll { delay, noreply } => flush_all(out, Some(*delay), *noreply),
            Command::Stats { group } => stats(out, group),
            Command::Version => version(out),
            Command::Verbosity { noreply } => verbosity(out, 1, *noreply),
            Command::Quit => quit(out),
            Command::MetaNoop => meta_noop(out),
            Command::MetaDebug { key } => meta_debug(out, *key),
            Command::MetaGet { key, flags } => meta_flags(out, MetaCommand::Get, key, flags, None),
            Command::MetaDelete { key, flags } => {
                meta_flags(out, MetaCommand::Delete, key, flags, None);
            }
            Command::MetaArith { key, flags } => {
                meta_flags(out, MetaCommand::Arith, key, flags, None);
            }
            Command::SlabsAutomove { mode } => slabs_automove(out, u32::from(*mode)),
            Command::SlabsReassign {
                source,
                destination,
            } => slabs_reassign(out, *source, *destination),
            Command::MetaSet { key, flags, data } => {
                meta_flags(out, MetaCommand::Set, key, flags, Some(data));
            }
        }
    }
}

/// [`meta`] with the flags of a parsed command (one raw chunk, omitted when empty).
fn meta_flags(
    out: &mut Vec<u8>,
    command: MetaCommand,
    key: &[u8],
    flags: &MetaFlags<'_>,
    data: Option<&[u8]>,
) {
    let raw = flags.raw();
    meta(out, command, key, (!raw.is_empty()).then_some(raw), data);
}

#[inline]
fn word_key<K: Chunk + ?Sized>(out: &mut Vec<u8>, word: &[u8], key: &K) {
    out.extend_from_slice(word);
    out.push(b' ');
    key.append_to(out);
}

#[inline]
fn noreply_suffix(out: &mut Vec<u8>, noreply: bool) {
    if noreply {
        out.extend_from_slice(b" noreply");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_requests() {
        // The byte forms the client's own encoder produced before it moved here.
        let mut out = Vec::new();
        let cas = Store {
            mode: StoreMode::Cas,
            flags: 5,
            exptime: -1,
            cas_unique: 9,
            noreply: false,
        };
        store(&mut out, &cas, b"k", b"abc");
        assert_eq!(out, b"cas k 5 -1 3 9\r\nabc\r\n");
        out.clear();
        retrieval(&mut out, Retrieval::Gat(10), ["a", "b"]);
        assert_eq!(out, b"gat 10 a b\r\n");
        out.clear();
        meta(&mut out, MetaCommand::Set, b"k", ["T0", "F3"], Some(b"hi"));
        assert_eq!(out, b"ms k 2 T0 F3\r\nhi\r\n");
        out.clear();
        stats(&mut out, b"");
        assert_eq!(out, b"stats\r\n");
        out.clear();
        set(&mut out, "k", "v");
        get(&mut out, [b"a", b"b"]);
        delete(&mut out, b"k", true);
        flush_all(&mut out, None, false);
        assert_eq!(
            out,
            b"set k 0 0 1\r\nv\r\nget a b\r\ndelete k noreply\r\nflush_all\r\n"
        );
    }

    #[test]
    fn refuses_bad_keys() {
        for key in [&b""[..], b"a b", b"a\r\nb", b"\x00", b"a\x7f"] {
            assert!(check_key(key).is_err(), "{key:?}");
        }
        assert_eq!(check_key(b""), Err(BadKey::Empty));
        assert!(check_key("ключ".as_bytes()).is_ok());
    }
}
