//! Request encoding and reply framing for the social workloads, for both wire protocols:
//! the memcached text protocol (koshka's compiled keys) and RESP2 (Redis).
//!
//! The memcached side is koshka-proto's codec, the one the server and `koshka-client` use:
//! [`mc`] hands keys built from [`Part`]s to [`koshka_proto::encode`] as [`Chunk`]s (written
//! straight into the buffer), and [`frame`] parses replies with
//! [`koshka_proto::parse_reply`]. RESP (Redis) is only spoken here, so its codec lives here.
//!
//! Everything writes into / reads from caller-owned buffers; nothing here allocates.

use anyhow::Context as _;
use koshka_proto::encode::Chunk;
use koshka_proto::{parse_reply, ParsedReply, Reply, ReplyConfig};

pub(crate) use koshka_proto::request::parse_u64;

/// Limits on the replies the bench reads: the codec's named defaults.
pub(crate) const REPLY_CONFIG: ReplyConfig = ReplyConfig::DEFAULT;

/// Writes the decimal digits of `value` into `out`.
#[inline]
pub(crate) fn push_u64(out: &mut Vec<u8>, value: u64) {
    koshka_proto::reply::number(out, value);
}

/// Number of decimal digits of `value`.
#[inline]
pub(crate) fn digits(mut value: u64) -> usize {
    let mut count = 1;
    while value >= 10 {
        value /= 10;
        count += 1;
    }
    count
}

/// One piece of a key or argument: bytes or a decimal number.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Part<'a> {
    /// Literal bytes.
    S(&'a [u8]),
    /// A decimal number.
    N(u64),
}

impl Part<'_> {
    #[inline]
    fn len(self) -> usize {
        match self {
            Part::S(bytes) => bytes.len(),
            Part::N(number) => digits(number),
        }
    }

    #[inline]
    fn push(self, out: &mut Vec<u8>) {
        match self {
            Part::S(bytes) => out.extend_from_slice(bytes),
            Part::N(number) => push_u64(out, number),
        }
    }
}

/// Writes the concatenation of `parts`.
#[inline]
pub(crate) fn push_parts(out: &mut Vec<u8>, parts: &[Part<'_>]) {
    for &part in parts {
        part.push(out);
    }
}

/// A key or value made of parts, as one [`Chunk`] of a request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Parts<'a>(pub(crate) &'a [Part<'a>]);

impl Chunk for Parts<'_> {
    #[inline]
    fn len(&self) -> usize {
        self.0.iter().map(|part| part.len()).sum()
    }

    #[inline]
    fn append_to(&self, out: &mut Vec<u8>) {
        push_parts(out, self.0);
    }
}

/// RESP2 request encoding: a command is an array of bulk strings.
pub(crate) mod resp {
    use super::{push_u64, Part};

    /// Starts a command of `args` arguments (the command name included).
    #[inline]
    pub(crate) fn command(out: &mut Vec<u8>, args: usize) {
        out.push(b'*');
        push_u64(out, args as u64);
        out.extend_from_slice(b"\r\n");
    }

    /// Appends one bulk-string argument.
    #[inline]
    pub(crate) fn arg(out: &mut Vec<u8>, bytes: &[u8]) {
        parts(out, &[Part::S(bytes)]);
    }

    /// Appends one decimal argument.
    #[inline]
    pub(crate) fn num(out: &mut Vec<u8>, value: u64) {
        parts(out, &[Part::N(value)]);
    }

    /// Appends one bulk-string argument made of `pieces` (e.g. a key `u:42:in`).
    #[inline]
    pub(crate) fn parts(out: &mut Vec<u8>, pieces: &[Part<'_>]) {
        let len: usize = pieces.iter().map(|piece| piece.len()).sum();
        out.push(b'$');
        push_u64(out, len as u64);
        out.extend_from_slice(b"\r\n");
        super::push_parts(out, pieces);
        out.extend_from_slice(b"\r\n");
    }
}

/// Memcached text-protocol requests with keys and values given as parts, through
/// [`koshka_proto::encode`].
pub(crate) mod mc {
    use koshka_proto::encode;

    use super::{Part, Parts};

    /// `get <key>\r\n`.
    #[inline]
    pub(crate) fn get(out: &mut Vec<u8>, key: &[Part<'_>]) {
        encode::get(out, [Parts(key)]);
    }

    /// `set <key> 0 0 <len>\r\n<value>\r\n`, the value given as parts.
    #[inline]
    pub(crate) fn set(out: &mut Vec<u8>, key: &[Part<'_>], value: &[Part<'_>]) {
        encode::set(out, &Parts(key), &Parts(value));
    }

    /// `delete <key>\r\n`.
    #[inline]
    pub(crate) fn delete(out: &mut Vec<u8>, key: &[Part<'_>]) {
        encode::delete(out, &Parts(key), false);
    }
}

/// How the replies of one step are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frame {
    /// memcached `get`: `VALUE` blocks then `END`.
    McGet,
    /// memcached one-line status (`STORED`, `DELETED`, `NOT_FOUND`, a number, …).
    McLine,
    /// One RESP2 value.
    Resp,
}

/// What one step of an operation sends: `replies` replies framed as `frame`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Step {
    /// Framing of every reply of the step.
    pub(crate) frame: Frame,
    /// Replies the step expects.
    pub(crate) replies: u32,
}

impl Step {
    /// `replies` replies framed as `frame`.
    pub(crate) const fn new(frame: Frame, replies: u32) -> Step {
        Step { frame, replies }
    }
}

/// Frames one reply at the start of `buf`: `Some((len, is_error))`, or `None` if incomplete.
///
/// # Errors
///
/// If the stream cannot be framed (a malformed length).
pub(crate) fn frame(buf: &[u8], frame: Frame) -> anyhow::Result<Option<(usize, bool)>> {
    if frame == Frame::Resp {
        return resp_frame(buf);
    }
    match parse_reply(buf, &REPLY_CONFIG) {
        ParsedReply::Incomplete => Ok(None),
        ParsedReply::Done { reply, consumed } => {
            let error = match frame {
                Frame::McGet => !matches!(reply, Reply::Values(_)),
                _ => matches!(reply, Reply::Error(_)),
            };
            Ok(Some((consumed, error)))
        }
        // A line that is no reply: framed, and counted as an error.
        ParsedReply::Bad {
            consumed: Some(consumed),
            ..
        } => Ok(Some((consumed, true))),
        ParsedReply::Bad {
            error,
            line,
            consumed: None,
        } => Err(unframeable(error, line)),
    }
}

/// The error for a memcached reply stream that cannot be framed any more.
pub(crate) fn unframeable(error: koshka_proto::BadReply, line: &[u8]) -> anyhow::Error {
    anyhow::anyhow!(
        "unparsable reply line ({error}): {:?}",
        String::from_utf8_lossy(line)
    )
}

/// Parses a signed decimal terminated by `\r\n` at `buf[at..]`: `(value, position after)`.
fn resp_number(buf: &[u8], at: usize) -> anyhow::Result<Option<(i64, usize)>> {
    let Some(newline) = memchr::memchr(b'\n', &buf[at..]) else {
        return Ok(None);
    };
    let line = &buf[at..at + newline];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = std::str::from_utf8(line).context("non-UTF-8 RESP length")?;
    let value = text
        .parse::<i64>()
        .with_context(|| format!("bad RESP length {text:?}"))?;
    Ok(Some((value, at + newline + 1)))
}

/// Frames one RESP2 value (arrays nested to any depth) at the start of `buf`.
fn resp_frame(buf: &[u8]) -> anyhow::Result<Option<(usize, bool)>> {
    let mut pos = 0;
    // Values still to read at the current nesting (a flat counter suffices: an array of n
    // adds n values to read).
    let mut pending: u64 = 1;
    let mut error = false;
    while pending > 0 {
        let Some(&tag) = buf.get(pos) else {
            return Ok(None);
        };
        pending -= 1;
        match tag {
            b'+' | b'-' | b':' => {
                let Some(newline) = memchr::memchr(b'\n', &buf[pos..]) else {
                    return Ok(None);
                };
                error |= tag == b'-' && pos == 0;
                pos += newline + 1;
            }
            b'$' => {
                let Some((len, after)) = resp_number(buf, pos + 1)? else {
                    return Ok(None);
                };
                pos = after;
                if len >= 0 {
                    let len = usize::try_from(len)?;
                    if buf.len() < pos + len + 2 {
                        return Ok(None);
                    }
                    pos += len + 2;
                }
            }
            b'*' => {
                let Some((count, after)) = resp_number(buf, pos + 1)? else {
                    return Ok(None);
                };
                pos = after;
                if count > 0 {
                    pending += u64::try_from(count)?;
                }
            }
            other => anyhow::bail!("unexpected RESP type byte {:?}", char::from(other)),
        }
    }
    Ok(Some((pos, error)))
}

/// One scalar of a RESP reply, in stream order (array headers are skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scalar<'a> {
    /// A bulk or simple string, or an integer's digits.
    Bytes(&'a [u8]),
    /// A null bulk string or null array.
    Null,
}

/// Calls `each` with every scalar of the (already framed) RESP values in `buf`.
pub(crate) fn resp_scalars<'a>(buf: &'a [u8], mut each: impl FnMut(Scalar<'a>)) {
    let mut pos = 0;
    while pos < buf.len() {
        let tag = buf[pos];
        let Some(newline) = memchr::memchr(b'\n', &buf[pos..]) else {
            return;
        };
        let head = &buf[pos + 1..pos + newline];
        let head = head.strip_suffix(b"\r").unwrap_or(head);
        pos += newline + 1;
        match tag {
            b'+' | b':' => each(Scalar::Bytes(head)),
            b'$' => match parse_u64(head) {
                Some(len) => {
                    let len = len as usize;
                    let end = (pos + len).min(buf.len());
                    each(Scalar::Bytes(&buf[pos..end]));
                    pos = end + 2;
                }
                None => each(Scalar::Null),
            },
            b'*' if head.first() == Some(&b'-') => each(Scalar::Null),
            _ => {}
        }
    }
}

/// The data block of the first `VALUE` in a framed memcached `get` reply, if any.
pub(crate) fn mc_value(reply: &[u8]) -> Option<&[u8]> {
    match parse_reply(reply, &REPLY_CONFIG) {
        ParsedReply::Done {
            reply: Reply::Values(values),
            ..
        } => values.iter().next().map(|value| value.data),
        _ => None,
    }
}

/// Calls `each` with every number of a comma-separated list (`total,id,…`).
pub(crate) fn comma_numbers(list: &[u8], mut each: impl FnMut(u64)) {
    for field in list.split(|&byte| byte == b',') {
        if let Some(value) = parse_u64(field) {
            each(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_resp() -> anyhow::Result<()> {
        let exec = b"*3\r\n:1\r\n$3\r\nabc\r\n*2\r\n$-1\r\n+OK\r\n:7\r\n";
        let end = exec.len() - 4;
        assert_eq!(resp_frame(exec)?, Some((end, false)));
        for cut in 0..end {
            assert_eq!(resp_frame(&exec[..cut])?, None, "cut {cut}");
        }
        assert_eq!(resp_frame(b"-ERR x\r\n")?, Some((8, true)));
        assert_eq!(resp_frame(b"*-1\r\n")?, Some((5, false)));
        assert_eq!(resp_frame(b"*0\r\n")?, Some((4, false)));
        assert!(resp_frame(b"?\r\n").is_err());
        let mut seen = Vec::new();
        resp_scalars(&exec[..end], |scalar| seen.push(scalar));
        assert_eq!(
            seen,
            vec![
                Scalar::Bytes(b"1"),
                Scalar::Bytes(b"abc"),
                Scalar::Null,
                Scalar::Bytes(b"OK")
            ]
        );
        Ok(())
    }

    #[test]
    fn encodes_requests() {
        let mut out = Vec::new();
        resp::command(&mut out, 3);
        resp::arg(&mut out, b"SADD");
        resp::parts(
            &mut out,
            &[Part::S(b"u:"), Part::N(42), Part::S(":w:кот".as_bytes())],
        );
        resp::num(&mut out, 0);
        assert_eq!(
            out,
            "*3\r\n$4\r\nSADD\r\n$13\r\nu:42:w:кот\r\n$1\r\n0\r\n".as_bytes()
        );
        out.clear();
        mc::set(
            &mut out,
            &[Part::S(b"sendmsg"), Part::N(1), Part::S(b"_"), Part::N(20)],
            &[Part::S(b"0\n"), Part::S(b"hi")],
        );
        assert_eq!(out, b"set sendmsg1_20 0 0 4\r\n0\nhi\r\n");
        assert_eq!(digits(0), 1);
        assert_eq!(digits(1_000), 4);
    }

    #[test]
    fn frames_memcached_lines_and_values() -> anyhow::Result<()> {
        assert_eq!(frame(b"NOT_FOUND\r\nx", Frame::McLine)?, Some((11, false)));
        assert_eq!(
            frame(b"CLIENT_ERROR x\r\n", Frame::McLine)?,
            Some((16, true))
        );
        let get = b"VALUE k 0 5\r\n3,1,2\r\nEND\r\n";
        assert_eq!(frame(get, Frame::McGet)?, Some((get.len(), false)));
        assert_eq!(mc_value(get), Some(&b"3,1,2"[..]));
        let mut numbers = Vec::new();
        comma_numbers(b"3,1,2", |n| numbers.push(n));
        assert_eq!(numbers, vec![3, 1, 2]);
        Ok(())
    }
}
