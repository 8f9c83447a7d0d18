//! Reply parsing: the front of a client's read buffer → one [`Reply`], the inverse of the
//! composers in [`crate::reply`].
//!
//! [`parse_reply`] reads one *frame*: everything the server sends for one request. That is
//! zero or more `VALUE` blocks or `STAT` lines closed by `END`, or one line (a status, a
//! number, `VERSION`, an error, a meta reply), with a data block after `VA`. Like
//! [`crate::parse`] it never allocates: keys, values and flags are slices of the caller's
//! buffer, and "not enough bytes yet" is [`ParsedReply::Incomplete`], not an error.
//!
//! A client must buffer a whole frame before it is parsed, so every length the server
//! announces is checked against [`ReplyConfig`] *before* the bytes arrive: a hostile or broken
//! server cannot make the client buffer more than `frame_size_max` bytes (plus one read).
//!
//! ```text
//! VALUE <key> <flags> <bytes>[ <cas>]\r\n<data>\r\n … END\r\n      Reply::Values
//! STAT <name> <value>\r\n … END\r\n                                  Reply::Stats
//! STORED | NOT_STORED | EXISTS | NOT_FOUND | DELETED | TOUCHED | OK | RESET
//!                                                                     Reply::Status
//! <digits>\r\n                                                        Reply::Number
//! VERSION <text>\r\n                                                  Reply::Version
//! HD|EN|NF|NS|EX|MN|ME <flags>\r\n   VA <bytes> <flags>\r\n<data>\r\n   Reply::Meta
//! ERROR | CLIENT_ERROR <msg> | SERVER_ERROR <msg>                     Reply::Error
//! ```

use crate::meta::MetaFlags;
use crate::request::parse_u64;

/// Largest data block (`VALUE` or `VA`) a reply may announce: the server's own ceiling on a
/// stored value. A longer announcement is [`BadReply::ValueTooLarge`] before a byte of the
/// block is buffered; the connection must then be dropped (its stream cannot be framed).
pub const REPLY_VALUE_SIZE_MAX: usize = koshka_limits::VALUE_SIZE_MAX;

/// Longest reply line without its line end. Reply lines echo at most one key (`VALUE`, meta
/// `k`, `ME`) plus a few numbers, so the request line limit covers them. Longer is
/// [`BadReply::LineTooLong`] and the connection must be dropped.
pub const REPLY_LINE_LEN_MAX: usize = koshka_limits::LINE_LEN_MAX;

/// Largest frame (one reply, with every value block of a multi-get): the largest output buffer
/// a koshka server may hold for one connection. A client buffers a frame whole, so this bounds
/// its memory. Over it is [`BadReply::FrameTooLarge`]: fetch fewer keys per request.
pub const REPLY_FRAME_SIZE_MAX: usize = koshka_limits::OUTPUT_BUFFER_MAX;

// A frame holding one maximal value with its header line fits.
const _: () = assert!(REPLY_VALUE_SIZE_MAX + REPLY_LINE_LEN_MAX + 4 <= REPLY_FRAME_SIZE_MAX);
// A VALUE line echoing the longest compiled key fits in a line.
const _: () = assert!(koshka_limits::COMPILED_KEY_LEN_MAX + 64 <= REPLY_LINE_LEN_MAX);

/// Limits [`parse_reply`] enforces; the defaults are the named constants above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyConfig {
    /// Largest data block accepted.
    pub value_size_max: usize,
    /// Longest line accepted (without its line end).
    pub line_len_max: usize,
    /// Largest frame accepted.
    pub frame_size_max: usize,
}

impl ReplyConfig {
    /// The named limits: [`REPLY_VALUE_SIZE_MAX`], [`REPLY_LINE_LEN_MAX`],
    /// [`REPLY_FRAME_SIZE_MAX`].
    pub const DEFAULT: ReplyConfig = ReplyConfig {
        value_size_max: REPLY_VALUE_SIZE_MAX,
        line_len_max: REPLY_LINE_LEN_MAX,
        frame_size_max: REPLY_FRAME_SIZE_MAX,
    };
}

impl Default for ReplyConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A one-line status reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `STORED`
    Stored,
    /// `NOT_STORED`
    NotStored,
    /// `EXISTS`
    Exists,
    /// `NOT_FOUND`
    NotFound,
    /// `DELETED`
    Deleted,
    /// `TOUCHED`
    Touched,
    /// `OK`
    Ok,
    /// `RESET` (reply to `stats reset`)
    Reset,
}

impl Status {
    /// Every status, for tables and tests.
    pub const ALL: [Status; 8] = [
        Self::Stored,
        Self::NotStored,
        Self::Exists,
        Self::NotFound,
        Self::Deleted,
        Self::Touched,
        Self::Ok,
        Self::Reset,
    ];

    /// The reply line, `\r\n` included (the constants of [`crate::reply`]).
    #[must_use]
    pub fn line(self) -> &'static [u8] {
        match self {
            Self::Stored => crate::reply::STORED,
            Self::NotStored => crate::reply::NOT_STORED,
            Self::Exists => crate::reply::EXISTS,
            Self::NotFound => crate::reply::NOT_FOUND,
            Self::Deleted => crate::reply::DELETED,
            Self::Touched => crate::reply::TOUCHED,
            Self::Ok => crate::reply::OK,
            Self::Reset => crate::reply::RESET,
        }
    }
}

/// The two-letter code that starts a meta reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaCode {
    /// `HD`: success, no value.
    Hd,
    /// `VA`: success with a value block.
    Va,
    /// `EN`: miss (mg).
    En,
    /// `NF`: not found (md, ma, ms with some modes).
    Nf,
    /// `NS`: not stored (ms).
    Ns,
    /// `EX`: CAS mismatch.
    Ex,
    /// `MN`: reply to `mn` (meta no-op).
    Mn,
    /// `ME`: reply to `me` (meta debug).
    Me,
}

impl MetaCode {
    /// Every code, for tables and tests.
    pub const ALL: [MetaCode; 8] = [
        Self::Hd,
        Self::Va,
        Self::En,
        Self::Nf,
        Self::Ns,
        Self::Ex,
        Self::Mn,
        Self::Me,
    ];

    /// The two letters on the wire.
    #[must_use]
    pub fn word(self) -> &'static [u8; 2] {
        match self {
            Self::Hd => b"HD",
            Self::Va => b"VA",
            Self::En => b"EN",
            Self::Nf => b"NF",
            Self::Ns => b"NS",
            Self::Ex => b"EX",
            Self::Mn => b"MN",
            Self::Me => b"ME",
        }
    }
}

/// An error reply from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorReply<'a> {
    /// `ERROR` (unknown command).
    Unknown,
    /// `CLIENT_ERROR <message>`: the request was malformed.
    Client(&'a [u8]),
    /// `SERVER_ERROR <message>`: the server could not serve a well-formed request.
    Server(&'a [u8]),
}

/// One `VALUE` block of a retrieval reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Value<'a> {
    /// The key as the server echoed it.
    pub key: &'a [u8],
    /// The opaque client flags stored with the item.
    pub flags: u32,
    /// The CAS unique (`gets`/`gats`).
    pub cas: Option<u64>,
    /// The data block, without its `\r\n`.
    pub data: &'a [u8],
}

/// The `VALUE` blocks of a retrieval reply: a validated slice of the buffer, iterated lazily
/// (as [`crate::Keys`] is for requests), so a multi-get allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Values<'a> {
    raw: &'a [u8],
    count: usize,
}

impl<'a> Values<'a> {
    /// Iterates the values in the server's order.
    pub fn iter(&self) -> impl Iterator<Item = Value<'a>> + 'a {
        let mut rest = self.raw;
        std::iter::from_fn(move || {
            let (value, next) = value_block(rest)?;
            rest = &rest[next..];
            Some(value)
        })
    }

    /// Number of values (hits).
    #[must_use]
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are none (all keys missed).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// The `STAT` lines of a `stats` reply (`ITEM` and `PREFIX` lines of the dump commands are
/// framed but skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats<'a> {
    raw: &'a [u8],
    count: usize,
}

impl<'a> Stats<'a> {
    /// Iterates `(name, value)` in the server's order; the value is the rest of the line.
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        lines(self.raw).filter_map(|line| {
            let stat = line.strip_prefix(b"STAT ")?;
            Some(split_word(stat))
        })
    }

    /// Number of `STAT` lines.
    #[must_use]
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are no `STAT` lines.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// A reply to a meta command (`mg`, `ms`, `md`, `ma`, `mn`, `me`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta<'a> {
    /// The reply code.
    pub code: MetaCode,
    /// The return flags (`c12 f0 t-1 kfoo`), the same token grammar as request flags. For `ME`
    /// this is the whole rest of the line (the key and its `name=value` pairs).
    pub flags: MetaFlags<'a>,
    /// The data block, for `VA`.
    pub data: Option<&'a [u8]>,
}

/// One complete reply frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// `VALUE …` blocks then `END` (none for a plain `END`).
    Values(Values<'a>),
    /// `STAT name value` lines then `END`.
    Stats(Stats<'a>),
    /// A one-line status.
    Status(Status),
    /// A decimal number (reply to `incr`/`decr`).
    Number(u64),
    /// `VERSION <text>`.
    Version(&'a [u8]),
    /// A meta reply.
    Meta(Meta<'a>),
    /// `ERROR`, `CLIENT_ERROR …` or `SERVER_ERROR …`. memcached may send one after some
    /// `VALUE` blocks of a multi-get that failed midway; the frame then ends at the error and
    /// the values before it are dropped.
    Error(ErrorReply<'a>),
}

/// Why a reply could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadReply {
    /// A line that is no reply this parser knows.
    UnknownReply,
    /// A number that does not parse (a `u64` overflow).
    BadNumber,
    /// A run of `VALUE` or `STAT` lines ended by a line other than `END` or an error.
    Unclosed,
    /// A `VALUE` or `VA` line whose fields do not parse: its block length is unknown.
    BadValueHeader,
    /// A data block not followed by `\r\n`.
    UnterminatedData,
    /// A data block longer than [`ReplyConfig::value_size_max`].
    ValueTooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A line longer than [`ReplyConfig::line_len_max`].
    LineTooLong {
        /// The limit.
        max: usize,
    },
    /// A frame longer than [`ReplyConfig::frame_size_max`].
    FrameTooLarge {
        /// The limit.
        max: usize,
    },
}

impl BadReply {
    /// A short static description, for error messages.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownReply => "unknown reply",
            Self::BadNumber => "bad number",
            Self::Unclosed => "multi-line reply not closed by END",
            Self::BadValueHeader => "bad VALUE or VA line",
            Self::UnterminatedData => "value block not terminated by CRLF",
            Self::ValueTooLarge { .. } => "value over the size limit",
            Self::LineTooLong { .. } => "line over the length limit",
            Self::FrameTooLarge { .. } => "reply over the size limit",
        }
    }
}

impl std::fmt::Display for BadReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ValueTooLarge { len, max } => write!(f, "{} ({len} > {max})", self.reason()),
            Self::LineTooLong { max } | Self::FrameTooLarge { max } => {
                write!(f, "{} ({max})", self.reason())
            }
            _ => f.write_str(self.reason()),
        }
    }
}

/// Outcome of [`parse_reply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParsedReply<'a> {
    /// Not enough bytes yet; call again when more arrived. Not an error.
    Incomplete,
    /// A complete reply occupying the first `consumed` bytes.
    Done {
        /// The reply.
        reply: Reply<'a>,
        /// Bytes to drop from the buffer.
        consumed: usize,
    },
    /// A bad reply.
    Bad {
        /// What was wrong.
        error: BadReply,
        /// The offending line without its line end (at most the line limit), for messages.
        line: &'a [u8],
        /// The bytes of the bad frame when it is still delimited (an unknown line): the caller
        /// may drop them and read on. `None` when the stream cannot be framed any more (a
        /// broken length, a limit): the caller must drop the connection.
        consumed: Option<usize>,
    },
}

/// Parses one reply frame from the front of `buf`.
#[must_use]
pub fn parse_reply<'a>(buf: &'a [u8], config: &ReplyConfig) -> ParsedReply<'a> {
    let (line, next) = match line_at(buf, 0, config) {
        Ok(Some(found)) => found,
        Ok(None) => return ParsedReply::Incomplete,
        Err(bad) => return bad,
    };
    let (word, rest) = first_word(line);
    let done = |reply| ParsedReply::Done {
        reply,
        consumed: next,
    };
    let status = |status| done(Reply::Status(status));
    let meta = |code| {
        done(Reply::Meta(Meta {
            code,
            flags: MetaFlags::new(rest),
            data: None,
        }))
    };
    match word {
        b"VALUE" | b"END" => run(buf, (line, next), config, Run::Values),
        b"STAT" | b"ITEM" | b"PREFIX" => run(buf, (line, next), config, Run::Stats),
        b"STORED" if rest.is_empty() => status(Status::Stored),
        b"NOT_STORED" if rest.is_empty() => status(Status::NotStored),
        b"EXISTS" if rest.is_empty() => status(Status::Exists),
        b"NOT_FOUND" if rest.is_empty() => status(Status::NotFound),
        b"DELETED" if rest.is_empty() => status(Status::Deleted),
        b"TOUCHED" if rest.is_empty() => status(Status::Touched),
        b"OK" if rest.is_empty() => status(Status::Ok),
        b"RESET" if rest.is_empty() => status(Status::Reset),
        b"VERSION" => done(Reply::Version(rest)),
        b"VA" => meta_value(buf, line, rest, next, config),
        b"HD" => meta(MetaCode::Hd),
        b"EN" => meta(MetaCode::En),
        b"NF" => meta(MetaCode::Nf),
        b"NS" => meta(MetaCode::Ns),
        b"EX" => meta(MetaCode::Ex),
        b"MN" => meta(MetaCode::Mn),
        b"ME" => meta(MetaCode::Me),
        _ => {
            if let Some(error) = error_reply(word, rest) {
                done(Reply::Error(error))
            } else if !line.is_empty() && line.iter().all(u8::is_ascii_digit) {
                match parse_u64(line) {
                    Some(number) => done(Reply::Number(number)),
                    None => delimited(BadReply::BadNumber, line, next),
                }
            } else {
                delimited(BadReply::UnknownReply, line, next)
            }
        }
    }
}

/// A multi-line run and what may appear in it before `END`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Run {
    Values,
    Stats,
}

/// A run of `VALUE` blocks or `STAT` lines starting with `first` (a line and the offset after
/// it), up to `END`.
fn run<'a>(
    buf: &'a [u8],
    first: (&'a [u8], usize),
    config: &ReplyConfig,
    kind: Run,
) -> ParsedReply<'a> {
    let (mut line, mut next) = first;
    let mut pos = 0;
    let mut count = 0;
    loop {
        if kind == Run::Values && line.starts_with(b"VALUE ") {
            let Some(header) = value_header(line) else {
                return fatal(BadReply::BadValueHeader, line);
            };
            match data_block(buf, next, header.len, line, config) {
                Ok(Some((_, end))) => pos = end,
                Ok(None) => return ParsedReply::Incomplete,
                Err(bad) => return bad,
            }
            count += 1;
        } else if kind == Run::Stats && is_stat_line(line) {
            count += usize::from(line.starts_with(b"STAT "));
            pos = next;
        } else {
            return run_end(buf, pos, line, next, kind, count);
        }
        (line, next) = match line_at(buf, pos, config) {
            Ok(Some(found)) => found,
            Ok(None) => return ParsedReply::Incomplete,
            Err(bad) => return bad,
        };
    }
}

/// The line `line` (ending at `next`) after a run of `count` entries in `buf[..pos]`.
fn run_end<'a>(
    buf: &'a [u8],
    pos: usize,
    line: &'a [u8],
    next: usize,
    kind: Run,
    count: usize,
) -> ParsedReply<'a> {
    let reply = if line == b"END" {
        let raw = &buf[..pos];
        match kind {
            Run::Values => Reply::Values(Values { raw, count }),
            Run::Stats => Reply::Stats(Stats { raw, count }),
        }
    } else {
        let (word, rest) = first_word(line);
        match error_reply(word, rest) {
            Some(error) => Reply::Error(error),
            None => return delimited(BadReply::Unclosed, line, next),
        }
    };
    ParsedReply::Done {
        reply,
        consumed: next,
    }
}

/// `VA <bytes> <flags>*` (`rest` is after `VA`) and its data block.
fn meta_value<'a>(
    buf: &'a [u8],
    line: &'a [u8],
    rest: &'a [u8],
    next: usize,
    config: &ReplyConfig,
) -> ParsedReply<'a> {
    let (len, flags) = split_word(rest);
    let Some(len) = parse_u64(len).and_then(|len| usize::try_from(len).ok()) else {
        return fatal(BadReply::BadValueHeader, line);
    };
    match data_block(buf, next, len, line, config) {
        Ok(Some((data, end))) => ParsedReply::Done {
            reply: Reply::Meta(Meta {
                code: MetaCode::Va,
                flags: MetaFlags::new(flags),
                data: Some(data),
            }),
            consumed: end,
        },
        Ok(None) => ParsedReply::Incomplete,
        Err(bad) => bad,
    }
}

/// A bad reply that is still one delimited line.
fn delimited(error: BadReply, line: &[u8], next: usize) -> ParsedReply<'_> {
    ParsedReply::Bad {
        error,
        line,
        consumed: Some(next),
    }
}

fn fatal(error: BadReply, line: &[u8]) -> ParsedReply<'_> {
    ParsedReply::Bad {
        error,
        line,
        consumed: None,
    }
}

fn error_reply<'a>(word: &[u8], rest: &'a [u8]) -> Option<ErrorReply<'a>> {
    match word {
        b"ERROR" => Some(ErrorReply::Unknown),
        b"CLIENT_ERROR" => Some(ErrorReply::Client(rest)),
        b"SERVER_ERROR" => Some(ErrorReply::Server(rest)),
        _ => None,
    }
}

/// Lines that continue a `stats` reply.
fn is_stat_line(line: &[u8]) -> bool {
    line.starts_with(b"STAT ") || line.starts_with(b"ITEM ") || line.starts_with(b"PREFIX ")
}

/// A line or data block and the offset after it, `Ok(None)` when it has not fully arrived, or
/// the bad outcome to return.
type Found<'a> = Result<Option<(&'a [u8], usize)>, ParsedReply<'a>>;

/// The line starting at `pos` (without `\r\n` or a lone `\n`) and the offset after it.
fn line_at<'a>(buf: &'a [u8], pos: usize, config: &ReplyConfig) -> Found<'a> {
    // A line is at most `line_len_max` bytes of content plus "\r\n".
    let window = config.line_len_max.saturating_add(2);
    let end = buf.len().min(pos.saturating_add(window));
    let Some(newline) = memchr::memchr(b'\n', &buf[pos..end]) else {
        if end - pos >= window {
            return Err(fatal(
                BadReply::LineTooLong {
                    max: config.line_len_max,
                },
                &buf[pos..pos + config.line_len_max],
            ));
        }
        if end > config.frame_size_max {
            return Err(too_large(buf, pos, config));
        }
        return Ok(None);
    };
    let next = pos + newline + 1;
    let line = trim_cr(&buf[pos..pos + newline]);
    if line.len() > config.line_len_max {
        return Err(fatal(
            BadReply::LineTooLong {
                max: config.line_len_max,
            },
            &line[..config.line_len_max],
        ));
    }
    if next > config.frame_size_max {
        return Err(too_large(buf, pos, config));
    }
    Ok(Some((line, next)))
}

fn too_large<'a>(buf: &'a [u8], pos: usize, config: &ReplyConfig) -> ParsedReply<'a> {
    let end = buf.len().min(pos.saturating_add(config.line_len_max));
    fatal(
        BadReply::FrameTooLarge {
            max: config.frame_size_max,
        },
        &buf[pos..end],
    )
}

/// The data block of `len` bytes and `\r\n` starting at `start` (announced by `line`) and
/// the offset after it.
fn data_block<'a>(
    buf: &'a [u8],
    start: usize,
    len: usize,
    line: &'a [u8],
    config: &ReplyConfig,
) -> Found<'a> {
    if len > config.value_size_max {
        let max = config.value_size_max;
        return Err(fatal(BadReply::ValueTooLarge { len, max }, line));
    }
    let end = start.saturating_add(len).saturating_add(2);
    if end > config.frame_size_max {
        let max = config.frame_size_max;
        return Err(fatal(BadReply::FrameTooLarge { max }, line));
    }
    if buf.len() < end {
        return Ok(None);
    }
    if &buf[end - 2..end] != b"\r\n" {
        return Err(fatal(BadReply::UnterminatedData, line));
    }
    Ok(Some((&buf[start..end - 2], end)))
}

/// The fields of `VALUE <key> <flags> <bytes>[ <cas>]`.
struct ValueHeader<'a> {
    key: &'a [u8],
    flags: u32,
    len: usize,
    cas: Option<u64>,
}

fn value_header(line: &[u8]) -> Option<ValueHeader<'_>> {
    let (key, rest) = split_word(line.strip_prefix(b"VALUE ")?);
    if key.is_empty() {
        return None;
    }
    let (flags, rest) = number_field(rest)?;
    let (len, rest) = number_field(rest)?;
    let cas = if rest.is_empty() {
        None
    } else {
        let (cas, rest) = number_field(rest)?;
        if !rest.is_empty() {
            return None;
        }
        Some(cas)
    };
    Some(ValueHeader {
        key,
        flags: u32::try_from(flags).ok()?,
        len: usize::try_from(len).ok()?,
        cas,
    })
}

/// A decimal `u64` token at the front of `s` (at least one digit, no overflow, ended by a
/// space or the end) and the rest after its spaces: tokenizes and parses in one pass, since
/// `VALUE` headers are on the hot path of every multi-get.
#[inline]
fn number_field(s: &[u8]) -> Option<(u64, &[u8])> {
    let mut n: u64 = 0;
    let mut digits = 0;
    for &byte in s {
        if byte == b' ' {
            break;
        }
        if !byte.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(byte - b'0'))?;
        digits += 1;
    }
    if digits == 0 {
        return None;
    }
    Some((n, trim_start(&s[digits..])))
}

/// One already validated `VALUE` block at the front of `raw` and the offset after it.
fn value_block(raw: &[u8]) -> Option<(Value<'_>, usize)> {
    let newline = memchr::memchr(b'\n', raw)?;
    let header = value_header(trim_cr(&raw[..newline]))?;
    let start = newline + 1;
    let data = raw.get(start..start + header.len)?;
    let value = Value {
        key: header.key,
        flags: header.flags,
        cas: header.cas,
        data,
    };
    Some((value, start + header.len + 2))
}

/// The lines of `raw` without their line ends (no data blocks inside).
fn lines(raw: &[u8]) -> impl Iterator<Item = &[u8]> {
    raw.split(|&byte| byte == b'\n')
        .filter(|line| !line.is_empty())
        .map(trim_cr)
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Splits off the first space-separated word; the rest has its leading spaces trimmed.
fn split_word(s: &[u8]) -> (&[u8], &[u8]) {
    let s = trim_start(s);
    match memchr::memchr(b' ', s) {
        Some(i) => (&s[..i], trim_start(&s[i + 1..])),
        None => (s, &[]),
    }
}

/// [`split_word`] for the reply word: reply words are a few bytes long, where a plain loop beats
/// `memchr`'s call and setup, and this runs once per reply.
#[inline]
fn first_word(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|&byte| byte == b' ') {
        Some(i) => (&line[..i], trim_start(&line[i + 1..])),
        None => (line, &[]),
    }
}

fn trim_start(mut s: &[u8]) -> &[u8] {
    while let [b' ', rest @ ..] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests;
