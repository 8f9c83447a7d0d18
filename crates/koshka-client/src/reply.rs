//! Reply framing and parsing: pure functions over byte slices, no I/O.
//!
//! A *frame* is everything the server sends for one request: zero or more `VALUE` blocks or
//! `STAT`/`ITEM`/`PREFIX` lines followed by one terminating line, or a single meta reply (with a
//! data block for `VA`). [`frame_len`] finds where a frame ends; [`Response::parse`] turns a frame
//! into a typed [`Response`].

use crate::error::{Error, Result};

/// One item returned by `get`/`gets`/`gat`/`gats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The key as the server echoed it.
    pub key: Vec<u8>,
    /// The opaque client flags stored with the item.
    pub flags: u32,
    /// The CAS unique, present for `gets`/`gats`.
    pub cas: Option<u64>,
    /// The value bytes.
    pub data: Vec<u8>,
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

/// An error reply from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorReply {
    /// `ERROR`
    Unknown,
    /// `CLIENT_ERROR <message>`
    Client(String),
    /// `SERVER_ERROR <message>`
    Server(String),
}

impl From<ErrorReply> for Error {
    fn from(reply: ErrorReply) -> Self {
        match reply {
            ErrorReply::Unknown => Error::UnknownCommand,
            ErrorReply::Client(message) => Error::ClientError(message),
            ErrorReply::Server(message) => Error::ServerError(message),
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

/// A reply to a meta command (`mg`, `ms`, `md`, `ma`, `mn`, `me`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaReply {
    /// The reply code.
    pub code: MetaCode,
    /// The return flags as sent, e.g. `["c12", "f0", "t-1"]`.
    pub flags: Vec<String>,
    /// The value, for `VA`.
    pub data: Option<Vec<u8>>,
}

impl MetaReply {
    /// Returns the value of return flag `flag` (`c` for CAS, `f` for client flags, `t` for TTL,
    /// `k` for key …), if the server sent it. A flag without a value yields `Some("")`.
    pub fn flag(&self, flag: char) -> Option<&str> {
        self.flags
            .iter()
            .find(|token| token.starts_with(flag))
            .map(|token| &token[flag.len_utf8()..])
    }
}

/// A parsed reply frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// `VALUE …` blocks then `END` (an empty list for a plain `END`).
    Values(Vec<Item>),
    /// `STAT name value` lines then `END`.
    Stats(Vec<(String, String)>),
    /// A one-line status.
    Status(Status),
    /// A decimal number (reply to `incr`/`decr`).
    Number(u64),
    /// `VERSION <version>`.
    Version(String),
    /// A meta reply.
    Meta(MetaReply),
    /// `ERROR`, `CLIENT_ERROR …` or `SERVER_ERROR …`.
    Error(ErrorReply),
}

fn lossy(bytes: &[u8]) -> String {
    const SHOWN_MAX: usize = 200;
    let shown = &bytes[..bytes.len().min(SHOWN_MAX)];
    String::from_utf8_lossy(shown).into_owned()
}

fn malformed(reason: &'static str, line: &[u8]) -> Error {
    Error::Malformed {
        reason,
        line: lossy(line),
    }
}

/// Strips the trailing `\r\n` (or a lone `\n`) from a line.
fn trim_line(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn parse_number<T: std::str::FromStr>(token: &[u8], line: &[u8]) -> Result<T> {
    std::str::from_utf8(token)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| malformed("bad number", line))
}

/// Returns the value block length announced by a `VALUE`/`VA` line (token `index`).
fn block_len(line: &[u8], index: usize) -> Result<usize> {
    let token = line
        .split(|&byte| byte == b' ')
        .filter(|token| !token.is_empty())
        .nth(index)
        .ok_or_else(|| malformed("missing length", line))?;
    parse_number(token, line)
}

/// Checks that a data block of `len` bytes starting at `start` is complete and CRLF-terminated.
/// Returns the offset after the terminator, or `None` if more bytes are needed.
fn block_end(buf: &[u8], start: usize, len: usize, line: &[u8]) -> Result<Option<usize>> {
    let end = start + len + 2;
    if buf.len() < end {
        return Ok(None);
    }
    if &buf[end - 2..end] != b"\r\n" {
        return Err(malformed("value block not terminated by CRLF", line));
    }
    Ok(Some(end))
}

/// Lines that are followed by more lines of the same reply.
fn is_continuation(line: &[u8]) -> bool {
    line.starts_with(b"STAT ") || line.starts_with(b"ITEM ") || line.starts_with(b"PREFIX ")
}

/// Returns the length of the first complete reply frame in `buf`, or `None` if more bytes are
/// needed.
///
/// # Errors
///
/// [`Error::Malformed`] if a `VALUE`/`VA` header has no valid length or its block is not
/// CRLF-terminated.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>> {
    let mut pos = 0;
    loop {
        let Some(newline) = memchr::memchr(b'\n', &buf[pos..]) else {
            return Ok(None);
        };
        let line_end = pos + newline + 1;
        let line = trim_line(&buf[pos..line_end]);
        if line.starts_with(b"VALUE ") {
            let len = block_len(line, 3)?;
            match block_end(buf, line_end, len, line)? {
                Some(end) => pos = end,
                None => return Ok(None),
            }
        } else if line.starts_with(b"VA ") {
            let len = block_len(line, 1)?;
            return block_end(buf, line_end, len, line);
        } else if is_continuation(line) {
            pos = line_end;
        } else {
            return Ok(Some(line_end));
        }
    }
}

fn parse_meta_code(word: &[u8]) -> Option<MetaCode> {
    Some(match word {
        b"HD" => MetaCode::Hd,
        b"VA" => MetaCode::Va,
        b"EN" => MetaCode::En,
        b"NF" => MetaCode::Nf,
        b"NS" => MetaCode::Ns,
        b"EX" => MetaCode::Ex,
        b"MN" => MetaCode::Mn,
        b"ME" => MetaCode::Me,
        _ => return None,
    })
}

fn parse_single_line(line: &[u8]) -> Result<Response> {
    let status = match line {
        b"STORED" => Some(Status::Stored),
        b"NOT_STORED" => Some(Status::NotStored),
        b"EXISTS" => Some(Status::Exists),
        b"NOT_FOUND" => Some(Status::NotFound),
        b"DELETED" => Some(Status::Deleted),
        b"TOUCHED" => Some(Status::Touched),
        b"OK" => Some(Status::Ok),
        b"RESET" => Some(Status::Reset),
        _ => None,
    };
    if let Some(status) = status {
        return Ok(Response::Status(status));
    }
    if line == b"ERROR" {
        return Ok(Response::Error(ErrorReply::Unknown));
    }
    if let Some(message) = line.strip_prefix(b"CLIENT_ERROR") {
        return Ok(Response::Error(ErrorReply::Client(
            lossy(message).trim().to_owned(),
        )));
    }
    if let Some(message) = line.strip_prefix(b"SERVER_ERROR") {
        return Ok(Response::Error(ErrorReply::Server(
            lossy(message).trim().to_owned(),
        )));
    }
    if let Some(version) = line.strip_prefix(b"VERSION ") {
        return Ok(Response::Version(lossy(version)));
    }
    if !line.is_empty() && line.iter().all(u8::is_ascii_digit) {
        return Ok(Response::Number(parse_number(line, line)?));
    }
    let mut tokens = line
        .split(|&byte| byte == b' ')
        .filter(|token| !token.is_empty());
    let code = tokens
        .next()
        .and_then(parse_meta_code)
        .ok_or_else(|| malformed("unknown reply", line))?;
    let flags = tokens.map(lossy).collect();
    Ok(Response::Meta(MetaReply {
        code,
        flags,
        data: None,
    }))
}

fn parse_value_header(line: &[u8]) -> Result<(Vec<u8>, u32, usize, Option<u64>)> {
    let tokens: Vec<&[u8]> = line
        .split(|&byte| byte == b' ')
        .filter(|token| !token.is_empty())
        .collect();
    if !(4..=5).contains(&tokens.len()) {
        return Err(malformed("VALUE line needs 4 or 5 tokens", line));
    }
    let flags = parse_number(tokens[2], line)?;
    let len = parse_number(tokens[3], line)?;
    let cas = tokens
        .get(4)
        .map(|token| parse_number(token, line))
        .transpose()?;
    Ok((tokens[1].to_vec(), flags, len, cas))
}

/// Splits a frame into its lines, skipping over value blocks. Returns the line and, for `VALUE`
/// and `VA`, the block that follows it.
fn next_line(frame: &[u8], pos: &mut usize) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
    let rest = &frame[*pos..];
    let newline = memchr::memchr(b'\n', rest).ok_or_else(|| malformed("incomplete frame", rest))?;
    let line = trim_line(&rest[..=newline]);
    let data_start = *pos + newline + 1;
    let len = if line.starts_with(b"VALUE ") {
        Some(block_len(line, 3)?)
    } else if line.starts_with(b"VA ") {
        Some(block_len(line, 1)?)
    } else {
        None
    };
    match len {
        Some(len) => {
            let end = block_end(frame, data_start, len, line)?
                .ok_or_else(|| malformed("incomplete value block", line))?;
            *pos = end;
            Ok((
                line.to_vec(),
                Some(frame[data_start..data_start + len].to_vec()),
            ))
        }
        None => {
            *pos = data_start;
            Ok((line.to_vec(), None))
        }
    }
}

impl Response {
    /// Parses one complete frame (as delimited by [`frame_len`]).
    ///
    /// # Errors
    ///
    /// [`Error::Malformed`] if the frame is not a reply this client knows.
    pub fn parse(frame: &[u8]) -> Result<Response> {
        let mut pos = 0;
        let mut items = Vec::new();
        let mut stats = Vec::new();
        loop {
            let (line, data) = next_line(frame, &mut pos)?;
            if let Some(data) = data {
                if line.starts_with(b"VA ") {
                    let flags = line.split(|&b| b == b' ').skip(2).filter(|t| !t.is_empty());
                    let flags = flags.map(lossy).collect();
                    let reply = MetaReply {
                        code: MetaCode::Va,
                        flags,
                        data: Some(data),
                    };
                    return Ok(Response::Meta(reply));
                }
                let (key, flags, _, cas) = parse_value_header(&line)?;
                items.push(Item {
                    key,
                    flags,
                    cas,
                    data,
                });
                continue;
            }
            if let Some(stat) = line.strip_prefix(b"STAT ") {
                let text = lossy(stat);
                let (name, value) = text.split_once(' ').unwrap_or((&text, ""));
                stats.push((name.to_owned(), value.to_owned()));
                continue;
            }
            if is_continuation(&line) {
                continue;
            }
            if line == b"END" {
                if !stats.is_empty() {
                    return Ok(Response::Stats(stats));
                }
                return Ok(Response::Values(items));
            }
            if !items.is_empty() || !stats.is_empty() {
                return Err(malformed("multi-line reply not closed by END", &line));
            }
            return parse_single_line(&line);
        }
    }

    /// A short human-readable rendering, for error messages.
    pub(crate) fn describe(&self) -> String {
        let text = format!("{self:?}");
        text.chars().take(200).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_need_complete_blocks() {
        let reply = b"VALUE a 0 3\r\nabc\r\nVALUE b 1 2 9\r\nxy\r\nEND\r\n";
        for cut in 0..reply.len() {
            assert_eq!(frame_len(&reply[..cut]).ok(), Some(None), "cut at {cut}");
        }
        assert_eq!(frame_len(reply).ok(), Some(Some(reply.len())));
        let mut two = reply.to_vec();
        two.extend_from_slice(b"STORED\r\n");
        assert_eq!(frame_len(&two).ok(), Some(Some(reply.len())));
    }

    #[test]
    fn value_data_may_contain_terminators() {
        let reply = b"VALUE a 0 5\r\nEND\r\n\r\nEND\r\n";
        assert_eq!(frame_len(reply).ok(), Some(Some(reply.len())));
        let parsed = Response::parse(reply).ok();
        let Some(Response::Values(items)) = parsed else {
            panic!("not values: {parsed:?}")
        };
        assert_eq!(items[0].data, b"END\r\n");
    }

    #[test]
    fn parses_every_reply_kind() {
        let cases: Vec<(&[u8], Response)> = vec![
            (b"STORED\r\n", Response::Status(Status::Stored)),
            (b"NOT_FOUND\r\n", Response::Status(Status::NotFound)),
            (b"42\r\n", Response::Number(42)),
            (b"VERSION 1.6.18\r\n", Response::Version("1.6.18".into())),
            (b"END\r\n", Response::Values(vec![])),
            (b"ERROR\r\n", Response::Error(ErrorReply::Unknown)),
            (
                b"CLIENT_ERROR bad data chunk\r\n",
                Response::Error(ErrorReply::Client("bad data chunk".into())),
            ),
            (
                b"STAT pid 1\r\nSTAT version 1.6\r\nEND\r\n",
                Response::Stats(vec![
                    ("pid".into(), "1".into()),
                    ("version".into(), "1.6".into()),
                ]),
            ),
            (
                b"HD c5 f3\r\n",
                Response::Meta(MetaReply {
                    code: MetaCode::Hd,
                    flags: vec!["c5".into(), "f3".into()],
                    data: None,
                }),
            ),
            (
                b"VA 2 t-1\r\nhi\r\n",
                Response::Meta(MetaReply {
                    code: MetaCode::Va,
                    flags: vec!["t-1".into()],
                    data: Some(b"hi".to_vec()),
                }),
            ),
            (
                b"EN\r\n",
                Response::Meta(MetaReply {
                    code: MetaCode::En,
                    flags: vec![],
                    data: None,
                }),
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(frame_len(bytes).ok(), Some(Some(bytes.len())), "{bytes:?}");
            assert_eq!(Response::parse(bytes).ok(), Some(expected), "{bytes:?}");
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            Response::parse(b"WHAT\r\n"),
            Err(Error::Malformed { .. })
        ));
        assert!(matches!(
            frame_len(b"VALUE a 0 x\r\n"),
            Err(Error::Malformed { .. })
        ));
        assert!(matches!(
            frame_len(b"VALUE a 0 1\r\nab\r\n"),
            Err(Error::Malformed { .. })
        ));
    }
}
