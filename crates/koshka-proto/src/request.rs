//! Request parsing: the front of a read buffer → one [`Command`].
//!
//! [`parse`] never allocates on the classic commands: keys, data blocks and meta flags are
//! slices of the caller's buffer. It distinguishes three outcomes ([`Parsed`]): a complete
//! command, "not enough bytes yet", and a bad request together with how many bytes to drop so
//! the stream stays in sync (including data blocks that must be swallowed without ever being
//! buffered whole, such as an oversized value).

use std::borrow::Cow;

use base64::Engine as _;

use crate::meta::{self, MetaFlags};

/// Limits the parser enforces; the server builds one per listening port (plain keys for `kv`,
/// long compiled keys for the other engines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseConfig {
    /// Longest key accepted.
    pub key_len_max: usize,
    /// Largest data block accepted by a store command; larger ones are swallowed and refused.
    pub value_size_max: usize,
    /// Longest command line.
    pub line_len_max: usize,
    /// Most keys in one retrieval command.
    pub multiget_keys_max: usize,
}

impl Default for ParseConfig {
    fn default() -> Self {
        Self {
            key_len_max: koshka_limits::KEY_LEN_MAX,
            value_size_max: koshka_limits::VALUE_SIZE_DEFAULT,
            line_len_max: koshka_limits::LINE_LEN_MAX,
            multiget_keys_max: koshka_limits::MULTIGET_KEYS_MAX,
        }
    }
}

/// Which store command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    /// `set`: store unconditionally.
    Set,
    /// `add`: store only if absent.
    Add,
    /// `replace`: store only if present.
    Replace,
    /// `append`: add data after the existing value.
    Append,
    /// `prepend`: add data before the existing value.
    Prepend,
    /// `cas`: store only if the cas unique still matches.
    Cas,
}

impl StoreMode {
    /// The command word.
    #[must_use]
    pub fn word(self) -> &'static str {
        match self {
            Self::Set => "set",
            Self::Add => "add",
            Self::Replace => "replace",
            Self::Append => "append",
            Self::Prepend => "prepend",
            Self::Cas => "cas",
        }
    }
}

/// The keys of a retrieval command: a validated, space-separated slice of the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keys<'a> {
    raw: &'a [u8],
    count: usize,
}

impl<'a> Keys<'a> {
    /// Iterates the keys in request order.
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.raw.split(|b| *b == b' ').filter(|k| !k.is_empty())
    }

    /// Number of keys.
    #[must_use]
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are no keys (never true for a parsed command).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// One complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `get`/`gets <key>*`
    Get {
        /// The keys.
        keys: Keys<'a>,
        /// `gets`: also return cas uniques.
        cas: bool,
    },
    /// `gat`/`gats <exptime> <key>*`
    Gat {
        /// New expiry for every hit.
        exptime: i64,
        /// The keys.
        keys: Keys<'a>,
        /// `gats`: also return cas uniques.
        cas: bool,
    },
    /// `set|add|replace|append|prepend <key> <flags> <exptime> <bytes> [noreply]` or
    /// `cas <key> <flags> <exptime> <bytes> <cas> [noreply]`, with the data block.
    Store {
        /// Which store command.
        mode: StoreMode,
        /// The key.
        key: &'a [u8],
        /// Client flags.
        flags: u32,
        /// Expiry (memcached rules).
        exptime: i64,
        /// For `cas`: the unique to compare; 0 otherwise.
        cas_unique: u64,
        /// The data block, without its `\r\n`.
        data: &'a [u8],
        /// Suppress the reply.
        noreply: bool,
    },
    /// `delete <key> [0] [noreply]`
    Delete {
        /// The key.
        key: &'a [u8],
        /// Suppress the reply.
        noreply: bool,
    },
    /// `incr`/`decr <key> <delta> [noreply]`
    Arith {
        /// The key.
        key: &'a [u8],
        /// `true` for incr.
        incr: bool,
        /// The amount.
        delta: u64,
        /// Suppress the reply.
        noreply: bool,
    },
    /// `touch <key> <exptime> [noreply]`
    Touch {
        /// The key.
        key: &'a [u8],
        /// New expiry.
        exptime: i64,
        /// Suppress the reply.
        noreply: bool,
    },
    /// `flush_all [delay] [noreply]`
    FlushAll {
        /// Seconds until the flush takes effect (0 = now).
        delay: i64,
        /// Suppress the reply.
        noreply: bool,
    },
    /// `stats [group]`
    Stats {
        /// Everything after `stats `, trimmed (empty for general stats).
        group: &'a [u8],
    },
    /// `version`
    Version,
    /// `verbosity <level> [noreply]`
    Verbosity {
        /// Suppress the reply.
        noreply: bool,
    },
    /// `slabs automove <0|1|2>`: accepted for memcached's tools; koshka has no slab pages to
    /// move, so the mode changes nothing.
    SlabsAutomove {
        /// The mode asked for (0, 1 or 2).
        mode: u8,
    },
    /// `slabs reassign <source class> <destination class>` (source -1: any class).
    SlabsReassign {
        /// Class to take a page from.
        source: i32,
        /// Class to give it to.
        destination: i32,
    },
    /// `quit`
    Quit,
    /// `mn`
    MetaNoop,
    /// `me <key>`
    MetaDebug {
        /// The key.
        key: &'a [u8],
    },
    /// `mg <key> <flags>*`
    MetaGet {
        /// The key (decoded when the `b` flag is set).
        key: Cow<'a, [u8]>,
        /// The flags.
        flags: MetaFlags<'a>,
    },
    /// `ms <key> <datalen> <flags>*` and the data block.
    MetaSet {
        /// The key (decoded when the `b` flag is set).
        key: Cow<'a, [u8]>,
        /// The flags.
        flags: MetaFlags<'a>,
        /// The data block.
        data: &'a [u8],
    },
    /// `md <key> <flags>*`
    MetaDelete {
        /// The key (decoded when the `b` flag is set).
        key: Cow<'a, [u8]>,
        /// The flags.
        flags: MetaFlags<'a>,
    },
    /// `ma <key> <flags>*`
    MetaArith {
        /// The key (decoded when the `b` flag is set).
        key: Cow<'a, [u8]>,
        /// The flags.
        flags: MetaFlags<'a>,
    },
}

/// Why a request was refused. The server renders it (see [`BadRequest::reply`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRequest {
    /// Unknown command word: `ERROR`.
    UnknownCommand,
    /// Malformed request: `CLIENT_ERROR <reason>`.
    Client(&'static str),
    /// Data block over the value limit: `SERVER_ERROR object too large for cache`.
    TooLarge,
    /// A line longer than the limit: `CLIENT_ERROR line too long`; the connection must close.
    LineTooLong,
    /// Not memcached at all: an HTTP request line, or a command other than a retrieval still
    /// without its newline after [`koshka_limits::UNTERMINATED_LINE_LEN_MAX`] bytes. As
    /// memcached does, the connection is closed without a reply.
    Hangup,
}

impl BadRequest {
    /// The reply line for this error (empty for [`BadRequest::Hangup`]).
    #[must_use]
    pub fn reply(&self) -> Cow<'static, [u8]> {
        match self {
            Self::UnknownCommand => Cow::Borrowed(b"ERROR\r\n"),
            Self::Client(reason) => Cow::Owned(format!("CLIENT_ERROR {reason}\r\n").into_bytes()),
            Self::TooLarge => Cow::Borrowed(b"SERVER_ERROR object too large for cache\r\n"),
            Self::LineTooLong => Cow::Borrowed(b"CLIENT_ERROR line too long\r\n"),
            Self::Hangup => Cow::Borrowed(b""),
        }
    }

    /// Whether the connection must close after the reply: the stream cannot be trusted.
    #[must_use]
    pub fn closes(&self) -> bool {
        matches!(self, Self::LineTooLong | Self::Hangup)
    }
}

/// Outcome of [`parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// Not enough bytes yet; call again when more arrived. Not an error.
    Incomplete,
    /// A complete command occupying the first `consumed` bytes.
    Done {
        /// The command.
        command: Command<'a>,
        /// Bytes to drop from the buffer.
        consumed: usize,
    },
    /// A bad request: reply with `error` unless `noreply`, drop `consumed` bytes now and then
    /// `swallow` more bytes as they arrive (a refused data block), close the connection if
    /// [`BadRequest::closes`].
    Bad {
        /// What was wrong.
        error: BadRequest,
        /// Bytes to drop from the buffer now.
        consumed: usize,
        /// Further bytes to discard as they arrive.
        swallow: usize,
        /// The line asked for no reply (`… noreply`), which memcached honours for its error
        /// replies too: the client does not read one, so sending it would shift every later
        /// reply by one line.
        noreply: bool,
    },
}

/// Most space-separated tokens on a non-retrieval line.
const TOKENS_MAX: usize = 24;

/// Largest data block length a store command may announce: memcached reads it as a signed
/// 32-bit number with room for the `\r\n` and refuses anything larger as a malformed line
/// (`CLIENT_ERROR bad command line format`, nothing swallowed) before it compares the length
/// with the value limit (`SERVER_ERROR object too large for cache`, block swallowed).
pub const DATA_LEN_MAX: usize = i32::MAX as usize - 2;

/// Most leading spaces before a retrieval word that may still wait for its newline (memcached
/// hangs up on more).
const LEADING_SPACES_MAX: usize = 100;

/// Commands whose error replies `noreply` suppresses, as in memcached.
const NOREPLY_WORDS: [&[u8]; 12] = [
    b"set",
    b"add",
    b"replace",
    b"append",
    b"prepend",
    b"cas",
    b"incr",
    b"decr",
    b"delete",
    b"touch",
    b"flush_all",
    b"verbosity",
];

const BAD_FORMAT: &str = "bad command line format";

/// Parses one request from the front of `buf`.
#[must_use]
pub fn parse<'a>(buf: &'a [u8], config: &ParseConfig) -> Parsed<'a> {
    // A line is at most `line_len_max` bytes of content plus "\r\n".
    let window = config.line_len_max.saturating_add(2);
    let scan = &buf[..buf.len().min(window)];
    let too_long = Parsed::Bad {
        error: BadRequest::LineTooLong,
        consumed: buf.len(),
        swallow: 0,
        noreply: false,
    };
    let Some(nl) = memchr::memchr(b'\n', scan) else {
        if buf.len() >= window {
            return too_long;
        }
        // Room for the longest line that may still come and its "\r".
        if buf.len() > unterminated_len_max(config) + 1 && !starts_retrieval(buf) {
            return hangup(buf.len());
        }
        return Parsed::Incomplete;
    };
    let line_end = if nl > 0 && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    if line_end > config.line_len_max {
        return too_long;
    }
    // The same limit for a line that did arrive whole, so the outcome never depends on how
    // the bytes were split into reads.
    if line_end > unterminated_len_max(config) && !starts_retrieval(buf) {
        return hangup(nl + 1);
    }
    let line = &buf[..line_end];
    let after = nl + 1;
    let bad = |reason: &'static str| Parsed::Bad {
        error: BadRequest::Client(reason),
        consumed: after,
        swallow: 0,
        noreply: false,
    };
    let (word, rest) = split_word(line);
    let parsed = match word {
        b"get" => retrieval(rest, false, None, after, config),
        b"gets" => retrieval(rest, true, None, after, config),
        b"gat" | b"gats" => {
            let (exptime, keys) = split_word(rest);
            match parse_i64(exptime) {
                Some(exptime) => retrieval(keys, word == b"gats", Some(exptime), after, config),
                None if exptime.is_empty() => unknown(after),
                None => bad("invalid exptime argument"),
            }
        }
        b"set" => store(StoreMode::Set, rest, buf, after, config),
        b"add" => store(StoreMode::Add, rest, buf, after, config),
        b"replace" => store(StoreMode::Replace, rest, buf, after, config),
        b"append" => store(StoreMode::Append, rest, buf, after, config),
        b"prepend" => store(StoreMode::Prepend, rest, buf, after, config),
        b"cas" => store(StoreMode::Cas, rest, buf, after, config),
        b"ms" => meta_set(rest, buf, after, config),
        _ => simple(word, rest, after, config),
    };
    refine_error(parsed, word, line)
}

/// Applies memcached's two line-wide rules to a refused line: an unknown command whose last
/// token starts with `HTTP/` is a web client, hung up on without a reply; and `noreply` as the
/// last token of a command that takes it also silences the error reply.
fn refine_error<'a>(parsed: Parsed<'a>, word: &[u8], line: &[u8]) -> Parsed<'a> {
    let Parsed::Bad {
        error,
        consumed,
        swallow,
        noreply: false,
    } = parsed
    else {
        return parsed;
    };
    let last = line
        .rsplit(|b| *b == b' ')
        .find(|token| !token.is_empty())
        .unwrap_or_default();
    match error {
        BadRequest::UnknownCommand if last.starts_with(b"HTTP/") => Parsed::Bad {
            error: BadRequest::Hangup,
            consumed,
            swallow: 0,
            noreply: false,
        },
        BadRequest::Client(_) | BadRequest::TooLarge => Parsed::Bad {
            error,
            consumed,
            swallow,
            noreply: last == b"noreply" && NOREPLY_WORDS.contains(&word),
        },
        _ => parsed,
    }
}

fn hangup<'a>(consumed: usize) -> Parsed<'a> {
    Parsed::Bad {
        error: BadRequest::Hangup,
        consumed,
        swallow: 0,
        noreply: false,
    }
}

/// Longest line other than a retrieval: memcached's limit on bytes waiting for a newline,
/// plus the extra key length of a compiled-key port.
fn unterminated_len_max(config: &ParseConfig) -> usize {
    koshka_limits::UNTERMINATED_LINE_LEN_MAX.saturating_add(
        config
            .key_len_max
            .saturating_sub(koshka_limits::KEY_LEN_MAX),
    )
}

/// Whether an unterminated line may still become a long multi-get: at most
/// [`LEADING_SPACES_MAX`] spaces, then a retrieval word and a space.
fn starts_retrieval(buf: &[u8]) -> bool {
    let spaces = buf.iter().take_while(|b| **b == b' ').count();
    let rest = &buf[spaces..];
    spaces <= LEADING_SPACES_MAX
        && [&b"get "[..], b"gets ", b"gat ", b"gats "]
            .iter()
            .any(|word| rest.starts_with(word))
}

/// Commands that fit on one line and carry no data block.
fn simple<'a>(word: &[u8], rest: &'a [u8], after: usize, config: &ParseConfig) -> Parsed<'a> {
    let mut tokens: [&[u8]; TOKENS_MAX] = [&[]; TOKENS_MAX];
    let Some(n) = tokenize(rest, &mut tokens) else {
        return Parsed::Bad {
            error: BadRequest::Client(BAD_FORMAT),
            consumed: after,
            swallow: 0,
            noreply: false,
        };
    };
    let tokens = &tokens[..n];
    match simple_command(word, tokens, rest, config) {
        Ok(command) => Parsed::Done {
            command,
            consumed: after,
        },
        Err(error) => Parsed::Bad {
            error,
            consumed: after,
            swallow: 0,
            noreply: false,
        },
    }
}

fn simple_command<'a>(
    word: &[u8],
    tokens: &[&'a [u8]],
    rest: &'a [u8],
    config: &ParseConfig,
) -> Result<Command<'a>, BadRequest> {
    let fmt = BadRequest::Client(BAD_FORMAT);
    let noreply_at = |i: usize| -> Result<bool, BadRequest> {
        match tokens.get(i) {
            None => Ok(false),
            Some(t) if *t == b"noreply" && tokens.len() == i + 1 => Ok(true),
            Some(_) => Err(fmt),
        }
    };
    let key_at = |i: usize| -> Result<&'a [u8], BadRequest> {
        let key = *tokens.get(i).ok_or(BadRequest::UnknownCommand)?;
        if key.len() > config.key_len_max {
            return Err(fmt);
        }
        Ok(key)
    };
    match word {
        b"delete" => {
            let key = key_at(0)?;
            // memcached still accepts the legacy "delete <key> 0" form.
            let skip = usize::from(tokens.get(1) == Some(&&b"0"[..]));
            let noreply = noreply_at(1 + skip).map_err(|_| {
                BadRequest::Client("bad command line format.  Usage: delete <key> [noreply]")
            })?;
            Ok(Command::Delete { key, noreply })
        }
        b"incr" | b"decr" => {
            let key = key_at(0)?;
            let delta = tokens.get(1).ok_or(BadRequest::UnknownCommand)?;
            let delta =
                parse_u64(delta).ok_or(BadRequest::Client("invalid numeric delta argument"))?;
            Ok(Command::Arith {
                key,
                incr: word == b"incr",
                delta,
                noreply: noreply_at(2)?,
            })
        }
        b"touch" => {
            let key = key_at(0)?;
            let exptime = tokens.get(1).ok_or(BadRequest::UnknownCommand)?;
            let exptime =
                parse_i64(exptime).ok_or(BadRequest::Client("invalid exptime argument"))?;
            Ok(Command::Touch {
                key,
                exptime,
                noreply: noreply_at(2)?,
            })
        }
        b"flush_all" => {
            let (delay, next) = match tokens.first() {
                Some(t) if *t != b"noreply" => (
                    parse_i64(t).ok_or(BadRequest::Client("invalid exptime argument"))?,
                    1,
                ),
                _ => (0, 0),
            };
            Ok(Command::FlushAll {
                delay,
                noreply: noreply_at(next)?,
            })
        }
        b"stats" => Ok(Command::Stats { group: trim(rest) }),
        b"version" => Ok(Command::Version),
        b"quit" => Ok(Command::Quit),
        // As memcached: the level must be a number (`verbosity noreply` is a bad level whose
        // error `noreply` silences), a second token is ignored unless it is `noreply`.
        b"verbosity" => match tokens {
            [level] | [level, _] => {
                parse_u64(level).ok_or(fmt)?;
                Ok(Command::Verbosity {
                    noreply: tokens.len() == 2 && tokens[1] == b"noreply",
                })
            }
            _ => Err(BadRequest::UnknownCommand),
        },
        b"slabs" => slabs(tokens),
        b"mn" => Ok(Command::MetaNoop),
        b"me" => Ok(Command::MetaDebug { key: key_at(0)? }),
        b"mg" | b"md" | b"ma" => meta_simple(word, rest, config),
        _ => Err(BadRequest::UnknownCommand),
    }
}

/// `slabs automove <mode>` and `slabs reassign <source> <destination>`, answered as memcached
/// does: a wrong token count is an unknown command, a token that is not a number is
/// `CLIENT_ERROR bad command line format`, an automove mode other than 0–2 is `ERROR`.
fn slabs<'a>(tokens: &[&'a [u8]]) -> Result<Command<'a>, BadRequest> {
    let fmt = BadRequest::Client(BAD_FORMAT);
    match tokens {
        // memcached reads the mode unsigned and ignores tokens after it.
        [b"automove", mode, ..] => match parse_u64(mode).ok_or(fmt)? {
            mode @ 0..=2 => Ok(Command::SlabsAutomove {
                mode: u8::try_from(mode).map_err(|_| fmt)?,
            }),
            _ => Err(BadRequest::UnknownCommand),
        },
        [b"reassign", source, destination] => {
            let class = |token: &[u8]| {
                parse_i64(token)
                    .and_then(|n| i32::try_from(n).ok())
                    .ok_or(fmt)
            };
            Ok(Command::SlabsReassign {
                source: class(source)?,
                destination: class(destination)?,
            })
        }
        _ => Err(BadRequest::UnknownCommand),
    }
}

fn meta_simple<'a>(
    word: &[u8],
    rest: &'a [u8],
    config: &ParseConfig,
) -> Result<Command<'a>, BadRequest> {
    let (key, flags) = split_word(rest);
    if key.is_empty() {
        return Err(BadRequest::UnknownCommand);
    }
    let flags = MetaFlags::new(flags);
    let allowed = match word {
        b"mg" => meta::MG_FLAGS,
        b"md" => meta::MD_FLAGS,
        _ => meta::MA_FLAGS,
    };
    flags.validate(allowed).map_err(BadRequest::Client)?;
    let key = meta_key(key, &flags, config)?;
    Ok(match word {
        b"mg" => Command::MetaGet { key, flags },
        b"md" => Command::MetaDelete { key, flags },
        _ => Command::MetaArith { key, flags },
    })
}

fn meta_key<'a>(
    key: &'a [u8],
    flags: &MetaFlags<'a>,
    config: &ParseConfig,
) -> Result<Cow<'a, [u8]>, BadRequest> {
    if !flags.has(b'b') {
        if key.len() > config.key_len_max {
            return Err(BadRequest::Client(BAD_FORMAT));
        }
        return Ok(Cow::Borrowed(key));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| BadRequest::Client("error decoding key"))?;
    if decoded.is_empty() || decoded.len() > config.key_len_max {
        return Err(BadRequest::Client("error decoding key"));
    }
    Ok(Cow::Owned(decoded))
}

fn retrieval<'a>(
    keys: &'a [u8],
    cas: bool,
    exptime: Option<i64>,
    after: usize,
    config: &ParseConfig,
) -> Parsed<'a> {
    let mut count = 0;
    for key in keys.split(|b| *b == b' ').filter(|k| !k.is_empty()) {
        count += 1;
        let error = if key.len() > config.key_len_max {
            BadRequest::Client(BAD_FORMAT)
        } else if count > config.multiget_keys_max {
            BadRequest::Client("too many keys")
        } else {
            continue;
        };
        return Parsed::Bad {
            error,
            consumed: after,
            swallow: 0,
            noreply: false,
        };
    }
    if count == 0 {
        return unknown(after);
    }
    let keys = Keys { raw: keys, count };
    let command = match exptime {
        None => Command::Get { keys, cas },
        Some(exptime) => Command::Gat { exptime, keys, cas },
    };
    Parsed::Done {
        command,
        consumed: after,
    }
}

fn store<'a>(
    mode: StoreMode,
    rest: &'a [u8],
    buf: &'a [u8],
    after: usize,
    config: &ParseConfig,
) -> Parsed<'a> {
    let mut tokens: [&[u8]; TOKENS_MAX] = [&[]; TOKENS_MAX];
    let n = tokenize(rest, &mut tokens).unwrap_or(TOKENS_MAX);
    let tokens = &tokens[..n];
    let bad = |error| Parsed::Bad {
        error,
        consumed: after,
        swallow: 0,
        noreply: false,
    };
    let fields = if mode == StoreMode::Cas { 5 } else { 4 };
    if n < fields {
        return bad(BadRequest::UnknownCommand);
    }
    // As memcached: one trailing token is `noreply` or ignored; more are an unknown command.
    let noreply = match &tokens[fields..] {
        [] => false,
        [t] => *t == b"noreply",
        _ => return bad(BadRequest::UnknownCommand),
    };
    let key = tokens[0];
    let flags = parse_u64(tokens[1]).and_then(|f| u32::try_from(f).ok());
    let exptime = parse_i64(tokens[2]);
    let bytes = parse_data_len(tokens[3]);
    let cas_unique = if mode == StoreMode::Cas {
        parse_u64(tokens[4])
    } else {
        Some(0)
    };
    let (Some(flags), Some(exptime), Some(bytes), Some(cas_unique)) =
        (flags, exptime, bytes, cas_unique)
    else {
        return bad(BadRequest::Client(BAD_FORMAT));
    };
    if key.len() > config.key_len_max {
        return bad(BadRequest::Client(BAD_FORMAT));
    }
    match data_block(buf, after, bytes, config) {
        DataBlock::Ok { data, consumed } => Parsed::Done {
            command: Command::Store {
                mode,
                key,
                flags,
                exptime,
                cas_unique,
                data,
                noreply,
            },
            consumed,
        },
        DataBlock::Other(parsed) => parsed,
    }
}

fn meta_set<'a>(rest: &'a [u8], buf: &'a [u8], after: usize, config: &ParseConfig) -> Parsed<'a> {
    let bad = |error| Parsed::Bad {
        error,
        consumed: after,
        swallow: 0,
        noreply: false,
    };
    let (key, rest) = split_word(rest);
    let (len, flags) = split_word(rest);
    if key.is_empty() {
        return bad(BadRequest::UnknownCommand);
    }
    let Some(bytes) = parse_data_len(len) else {
        return bad(BadRequest::Client(BAD_FORMAT));
    };
    let flags = MetaFlags::new(flags);
    if let Err(reason) = flags.validate(meta::MS_FLAGS) {
        // The data block follows regardless; swallow it to stay in sync.
        return Parsed::Bad {
            error: BadRequest::Client(reason),
            consumed: after,
            swallow: bytes
                .saturating_add(2)
                .min(config.value_size_max.saturating_add(2)),
            noreply: false,
        };
    }
    let key = match meta_key(key, &flags, config) {
        Ok(key) => key,
        Err(error) => {
            return Parsed::Bad {
                error,
                consumed: after,
                swallow: bytes
                    .saturating_add(2)
                    .min(config.value_size_max.saturating_add(2)),
                noreply: false,
            }
        }
    };
    match data_block(buf, after, bytes, config) {
        DataBlock::Ok { data, consumed } => Parsed::Done {
            command: Command::MetaSet { key, flags, data },
            consumed,
        },
        DataBlock::Other(parsed) => parsed,
    }
}

enum DataBlock<'a> {
    Ok { data: &'a [u8], consumed: usize },
    Other(Parsed<'a>),
}

/// Locates the data block of `bytes` bytes plus `\r\n` after the command line.
fn data_block<'a>(
    buf: &'a [u8],
    after: usize,
    bytes: usize,
    config: &ParseConfig,
) -> DataBlock<'a> {
    if bytes > config.value_size_max {
        return DataBlock::Other(Parsed::Bad {
            error: BadRequest::TooLarge,
            consumed: after,
            swallow: bytes.saturating_add(2),
            noreply: false,
        });
    }
    let end = after + bytes + 2;
    if buf.len() < end {
        return DataBlock::Other(Parsed::Incomplete);
    }
    if &buf[end - 2..end] != b"\r\n" {
        return DataBlock::Other(Parsed::Bad {
            error: BadRequest::Client("bad data chunk"),
            consumed: end,
            swallow: 0,
            noreply: false,
        });
    }
    DataBlock::Ok {
        data: &buf[after..end - 2],
        consumed: end,
    }
}

fn unknown<'a>(after: usize) -> Parsed<'a> {
    Parsed::Bad {
        error: BadRequest::UnknownCommand,
        consumed: after,
        swallow: 0,
        noreply: false,
    }
}

/// Splits off the first space-separated word; the rest keeps its leading spaces trimmed.
fn split_word(s: &[u8]) -> (&[u8], &[u8]) {
    let s = trim_start(s);
    match memchr::memchr(b' ', s) {
        Some(i) => (&s[..i], trim_start(&s[i + 1..])),
        None => (s, &[]),
    }
}

fn trim_start(mut s: &[u8]) -> &[u8] {
    while let [b' ', rest @ ..] = s {
        s = rest;
    }
    s
}

fn trim(s: &[u8]) -> &[u8] {
    let mut s = trim_start(s);
    while let [rest @ .., b' '] = s {
        s = rest;
    }
    s
}

/// Splits `s` into at most `TOKENS_MAX` tokens; `None` when there are more.
fn tokenize<'a>(s: &'a [u8], out: &mut [&'a [u8]; TOKENS_MAX]) -> Option<usize> {
    let mut n = 0;
    for token in s.split(|b| *b == b' ').filter(|t| !t.is_empty()) {
        if n == TOKENS_MAX {
            return None;
        }
        out[n] = token;
        n += 1;
    }
    Some(n)
}

/// The key of a `set` command line (without its data block), for the caller that refused
/// the data as too large: memcached then removes the old item, so a failed `set` never leaves
/// a stale value readable. `None` for any other line.
#[must_use]
pub fn set_key(line: &[u8]) -> Option<&[u8]> {
    let (word, rest) = split_word(line);
    if word != b"set" {
        return None;
    }
    let (key, _) = split_word(rest);
    (!key.is_empty()).then_some(key)
}

/// Parses the announced length of a data block: a decimal of at most [`DATA_LEN_MAX`].
fn parse_data_len(s: &[u8]) -> Option<usize> {
    parse_u64(s)
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| *n <= DATA_LEN_MAX)
}

/// Parses an unsigned decimal number; `None` on empty input, other bytes or overflow.
#[must_use]
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// Parses a signed decimal number.
#[must_use]
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    match s {
        [b'-', digits @ ..] => {
            let n = parse_u64(digits)?;
            0i64.checked_sub_unsigned(n)
        }
        _ => i64::try_from(parse_u64(s)?).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ParseConfig {
        ParseConfig {
            value_size_max: 100,
            ..ParseConfig::default()
        }
    }

    fn done(buf: &[u8]) -> (Command<'_>, usize) {
        match parse(buf, &cfg()) {
            Parsed::Done { command, consumed } => (command, consumed),
            other => panic!("expected a command, got {other:?}"),
        }
    }

    fn bad(buf: &[u8]) -> (BadRequest, usize, usize) {
        match parse(buf, &cfg()) {
            Parsed::Bad {
                error,
                consumed,
                swallow,
                noreply: false,
            } => (error, consumed, swallow),
            other => panic!("expected an error with a reply, got {other:?}"),
        }
    }

    /// The error of a refused line whose reply `noreply` silences.
    fn silenced(buf: &[u8]) -> BadRequest {
        match parse(buf, &cfg()) {
            Parsed::Bad {
                error,
                noreply: true,
                ..
            } => error,
            other => panic!("expected a silenced error, got {other:?}"),
        }
    }

    #[test]
    fn get_multi() {
        let (cmd, used) = done(b"get a bb  ccc\r\nrest");
        assert_eq!(used, 15);
        let Command::Get { keys, cas: false } = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!(
            keys.iter().collect::<Vec<_>>(),
            vec![&b"a"[..], b"bb", b"ccc"]
        );
        assert_eq!(keys.len(), 3);
    }

    #[test]
    fn incomplete_until_newline_and_data() {
        assert_eq!(parse(b"get a", &cfg()), Parsed::Incomplete);
        assert_eq!(parse(b"set a 0 0 5\r\nhel", &cfg()), Parsed::Incomplete);
        assert_eq!(parse(b"set a 0 0 5\r\nhello\r", &cfg()), Parsed::Incomplete);
        let (cmd, used) = done(b"set a 1 2 5\r\nhello\r\n");
        assert_eq!(used, 20);
        assert!(matches!(
            cmd,
            Command::Store {
                mode: StoreMode::Set,
                flags: 1,
                exptime: 2,
                data: b"hello",
                ..
            }
        ));
    }

    #[test]
    fn bare_newline_is_accepted() {
        let (cmd, used) = done(b"version\n");
        assert_eq!((cmd, used), (Command::Version, 8));
    }

    #[test]
    fn errors_keep_the_stream_in_sync() {
        assert_eq!(
            bad(b"bogus\r\nget a\r\n"),
            (BadRequest::UnknownCommand, 7, 0)
        );
        assert_eq!(bad(b"get\r\n").0, BadRequest::UnknownCommand);
        assert_eq!(
            bad(b"set a 0 0 2\r\nabcd\r\n"),
            (BadRequest::Client("bad data chunk"), 17, 0)
        );
        assert_eq!(bad(b"set a 0 0 1000\r\n"), (BadRequest::TooLarge, 16, 1002));
        assert_eq!(bad(b"set a 0 0 -1\r\n").0, BadRequest::Client(BAD_FORMAT));
        assert_eq!(bad(b"set a x 0 1\r\n").0, BadRequest::Client(BAD_FORMAT));
        assert_eq!(
            bad(b"incr a x\r\n").0,
            BadRequest::Client("invalid numeric delta argument")
        );
        let long_key = [b'k'; 251];
        let mut line = b"get ".to_vec();
        line.extend_from_slice(&long_key);
        line.extend_from_slice(b"\r\n");
        assert_eq!(bad(&line).0, BadRequest::Client(BAD_FORMAT));
    }

    #[test]
    fn line_too_long() {
        let max = cfg().line_len_max;
        // A multi-get without its newline within the window: too long once the window is
        // full, incomplete before.
        let mut get = b"get ".to_vec();
        get.resize(max + 2, b'a');
        assert_eq!(bad(&get).0, BadRequest::LineTooLong);
        assert_eq!(parse(&get[..max + 1], &cfg()), Parsed::Incomplete);
        // Content of exactly the limit is accepted, one byte more is refused, whether the
        // line ends in "\r\n" or a bare "\n".
        let mut at_limit = b"get ".to_vec();
        at_limit.resize(max - 1, b' ');
        at_limit.extend_from_slice(b"k\r\n");
        assert!(matches!(parse(&at_limit, &cfg()), Parsed::Done { .. }));
        let mut over = b"get ".to_vec();
        over.resize(max, b' ');
        over.extend_from_slice(b"k\n");
        assert_eq!(bad(&over).0, BadRequest::LineTooLong);
    }

    #[test]
    fn unterminated_line_hangs_up_unless_a_retrieval() {
        let limit = koshka_limits::UNTERMINATED_LINE_LEN_MAX;
        // memcached's getset.t: 2048 spaces inside an incr line without its newline.
        let mut incr = b"incr ".to_vec();
        incr.resize(limit, b' ');
        incr.push(b'\r');
        assert_eq!(parse(&incr, &cfg()), Parsed::Incomplete);
        incr.pop();
        incr.extend_from_slice(b" manyspaces 1");
        assert_eq!(bad(&incr).0, BadRequest::Hangup);
        // The same line arriving whole is refused the same way, so the outcome does not
        // depend on read boundaries; one byte less is a command.
        incr.extend_from_slice(b"\r\n");
        assert_eq!(bad(&incr).0, BadRequest::Hangup);
        let mut stats = b"stats ".to_vec();
        stats.resize(limit, b'x');
        stats.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&stats, &cfg()), Parsed::Done { .. }));
        stats.insert(6, b'x');
        assert_eq!(bad(&stats).0, BadRequest::Hangup);
        // A get may go on: it can be a long multi-get.
        let mut get = b"get ".to_vec();
        get.resize(limit + 10, b' ');
        assert_eq!(parse(&get, &cfg()), Parsed::Incomplete);
        get.extend_from_slice(b"manyspaces\r\n");
        assert!(matches!(parse(&get, &cfg()), Parsed::Done { .. }));
        // ... unless too many spaces come first.
        let mut spaces = vec![b' '; LEADING_SPACES_MAX + 1];
        spaces.extend_from_slice(b"get ");
        spaces.resize(limit + 2, b'k');
        assert_eq!(bad(&spaces).0, BadRequest::Hangup);
        // A compiled-key port waits for its longer keys.
        let compiled = ParseConfig {
            key_len_max: koshka_limits::COMPILED_KEY_LEN_MAX,
            ..cfg()
        };
        let mut set = b"set ".to_vec();
        set.resize(koshka_limits::COMPILED_KEY_LEN_MAX + 4, b'k');
        assert_eq!(parse(&set, &compiled), Parsed::Incomplete);
    }

    #[test]
    fn http_request_lines_hang_up() {
        // memcached's malicious-commands.t.
        for line in [
            &b"GET / HTTP/1.0\r\n"[..],
            b"PUT /asdf/asd/fasdfasdf/sadf HTTP/1.1\r\n",
            b"DELETE HTTP/1.1\r\n",
        ] {
            assert_eq!(bad(line).0, BadRequest::Hangup, "{line:?}");
            assert!(bad(line).0.closes() && bad(line).0.reply().is_empty());
        }
        // A known command keeps its meaning whatever its last token.
        assert!(matches!(
            parse(b"get HTTP/1.1\r\n", &cfg()),
            Parsed::Done { .. }
        ));
    }

    #[test]
    fn lengths_are_checked_as_memcached_does() {
        // memcached's issue_70.t: lengths that do not fit its signed 32-bit field are a bad
        // command line, with nothing swallowed; a fitting one over the limit is too large.
        for line in [
            &b"set a 0 0 -1\r\n"[..],
            b"set a 0 0 4294967295\r\n",
            b"set a 0 0 2147483647\r\nscoobyscoobydoo",
            b"set a 0 0 18446744073709551615\r\n",
            b"ms a 4294967295\r\n",
        ] {
            let (error, _, swallow) = bad(line);
            assert_eq!(
                (error, swallow),
                (BadRequest::Client(BAD_FORMAT), 0),
                "{line:?}"
            );
        }
        let line = format!("set a 0 0 {DATA_LEN_MAX}\r\n");
        let (error, _, swallow) = bad(line.as_bytes());
        assert_eq!((error, swallow), (BadRequest::TooLarge, DATA_LEN_MAX + 2));
    }

    #[test]
    fn noreply_silences_errors() {
        // memcached's issue_3.t: "delete <key> 10 noreply" is refused without a reply.
        assert!(matches!(
            silenced(b"delete k 10 noreply\r\n"),
            BadRequest::Client(_)
        ));
        assert_eq!(
            silenced(b"set a 0 0 1000 noreply\r\n"),
            BadRequest::TooLarge
        );
        for line in [
            &b"set a x 0 1 noreply\r\n"[..],
            b"incr a x noreply\r\n",
            b"touch a x noreply\r\n",
            b"flush_all x noreply\r\n",
            b"verbosity x noreply\r\n",
            b"verbosity noreply\r\n",
        ] {
            assert!(matches!(silenced(line), BadRequest::Client(_)), "{line:?}");
        }
        // Unknown commands and commands without noreply still answer.
        assert_eq!(bad(b"bogus noreply\r\n").0, BadRequest::UnknownCommand);
        assert!(matches!(bad(b"delete k 10\r\n").0, BadRequest::Client(_)));
        assert!(matches!(
            bad(b"gat x k noreply\r\n").0,
            BadRequest::Client(_)
        ));
    }

    #[test]
    fn verbosity_and_slabs() {
        // memcached's strtol-testing.t.
        assert_eq!(
            bad(b"verbosity invalid\r\n").0,
            BadRequest::Client(BAD_FORMAT)
        );
        assert_eq!(
            bad(b"slabs automove invalid\r\n").0,
            BadRequest::Client(BAD_FORMAT)
        );
        assert_eq!(
            bad(b"slabs reassign 1 x\r\n").0,
            BadRequest::Client(BAD_FORMAT)
        );
        assert_eq!(
            done(b"verbosity 1 2\r\n").0,
            Command::Verbosity { noreply: false }
        );
        assert_eq!(
            done(b"slabs automove 2\r\n").0,
            Command::SlabsAutomove { mode: 2 }
        );
        assert_eq!(
            bad(b"slabs automove -1\r\n").0,
            BadRequest::Client(BAD_FORMAT)
        );
        assert_eq!(
            done(b"slabs reassign -1 5\r\n").0,
            Command::SlabsReassign {
                source: -1,
                destination: 5
            }
        );
        for line in [
            &b"verbosity\r\n"[..],
            b"slabs\r\n",
            b"slabs automove\r\n",
            b"slabs automove 3\r\n",
            b"slabs reassign 1\r\n",
        ] {
            assert_eq!(bad(line).0, BadRequest::UnknownCommand, "{line:?}");
        }
    }

    #[test]
    fn too_many_keys() {
        let config = ParseConfig {
            multiget_keys_max: 3,
            ..cfg()
        };
        let parsed = parse(b"get a b c d\r\n", &config);
        assert!(matches!(
            parsed,
            Parsed::Bad {
                error: BadRequest::Client("too many keys"),
                ..
            }
        ));
    }

    #[test]
    fn delete_forms() {
        assert!(matches!(
            done(b"delete k 0\r\n").0,
            Command::Delete { noreply: false, .. }
        ));
        assert!(matches!(
            done(b"delete k noreply\r\n").0,
            Command::Delete { noreply: true, .. }
        ));
        assert!(matches!(bad(b"delete k 5\r\n").0, BadRequest::Client(_)));
    }

    #[test]
    fn meta_commands() {
        let (cmd, _) = done(b"mg foo v c O12\r\n");
        let Command::MetaGet { key, flags } = cmd else {
            panic!()
        };
        assert_eq!(&*key, b"foo");
        assert!(flags.has(b'v'));
        let (cmd, used) = done(b"ms Zm9v 2 b T10\r\nhi\r\n");
        assert_eq!(used, 21);
        let Command::MetaSet { key, data, .. } = cmd else {
            panic!()
        };
        assert_eq!((&*key, data), (&b"foo"[..], &b"hi"[..]));
        assert_eq!(bad(b"mg foo zz\r\n").0, BadRequest::Client("invalid flag"));
        assert_eq!(
            bad(b"ms foo 2 zz\r\nhi\r\n"),
            (BadRequest::Client("invalid flag"), 13, 4)
        );
        assert_eq!(done(b"mn\r\n").0, Command::MetaNoop);
    }

    #[test]
    fn set_key_of_a_refused_line() {
        assert_eq!(set_key(b"set k 0 0 99999999\r\n"), Some(&b"k"[..]));
        assert_eq!(set_key(b"add k 0 0 9\r\n"), None);
        assert_eq!(set_key(b"set"), None);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"-"), None);
        assert_eq!(parse_u64(b""), None);
    }
}
