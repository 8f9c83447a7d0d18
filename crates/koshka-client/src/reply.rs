//! Owned replies, built from the borrowed [`koshka_proto::Reply`] that
//! [`koshka_proto::parse_reply`] frames and parses. No I/O and no parsing of its own: the
//! codec is koshka-proto's, shared with the server's reply composers.
//!
//! [`Status`] and [`MetaCode`] moved to koshka-proto and are re-exported here unchanged.

use koshka_proto::{parse_reply, BadReply, ParsedReply, Reply, ReplyConfig};

pub use koshka_proto::{MetaCode, Status};

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

impl From<koshka_proto::Value<'_>> for Item {
    fn from(value: koshka_proto::Value<'_>) -> Item {
        Item {
            key: value.key.to_vec(),
            flags: value.flags,
            cas: value.cas,
            data: value.data.to_vec(),
        }
    }
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

impl From<koshka_proto::ErrorReply<'_>> for ErrorReply {
    fn from(reply: koshka_proto::ErrorReply<'_>) -> ErrorReply {
        match reply {
            koshka_proto::ErrorReply::Unknown => ErrorReply::Unknown,
            koshka_proto::ErrorReply::Client(message) => {
                ErrorReply::Client(lossy(message).trim().to_owned())
            }
            koshka_proto::ErrorReply::Server(message) => {
                ErrorReply::Server(lossy(message).trim().to_owned())
            }
        }
    }
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

impl From<koshka_proto::Meta<'_>> for MetaReply {
    fn from(meta: koshka_proto::Meta<'_>) -> MetaReply {
        let tokens = meta.flags.raw().split(|&byte| byte == b' ');
        MetaReply {
            code: meta.code,
            flags: tokens
                .filter(|token| !token.is_empty())
                .map(lossy)
                .collect(),
            data: meta.data.map(<[u8]>::to_vec),
        }
    }
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

impl From<Reply<'_>> for Response {
    fn from(reply: Reply<'_>) -> Response {
        match reply {
            Reply::Values(values) => Response::Values(values.iter().map(Item::from).collect()),
            // A dump of only `ITEM` lines carries no statistic: an empty list, as `END` alone.
            Reply::Stats(stats) if stats.is_empty() => Response::Values(Vec::new()),
            Reply::Stats(stats) => Response::Stats(
                stats
                    .iter()
                    .map(|(name, value)| (lossy(name), lossy(value)))
                    .collect(),
            ),
            Reply::Status(status) => Response::Status(status),
            Reply::Number(number) => Response::Number(number),
            Reply::Version(version) => Response::Version(lossy(version)),
            Reply::Meta(meta) => Response::Meta(meta.into()),
            Reply::Error(error) => Response::Error(error.into()),
        }
    }
}

impl Response {
    /// Parses the first reply frame of `frame` (as delimited by [`frame_len`]).
    ///
    /// # Errors
    ///
    /// [`Error::Malformed`] if the frame is incomplete or not a reply this client knows.
    pub fn parse(frame: &[u8]) -> Result<Response> {
        match parse_reply(frame, &ReplyConfig::default()) {
            ParsedReply::Done { reply, .. } => Ok(reply.into()),
            ParsedReply::Incomplete => Err(Error::Malformed {
                reason: "incomplete frame",
                line: lossy(frame),
            }),
            ParsedReply::Bad { error, line, .. } => Err(malformed(error, line)),
        }
    }

    /// A short human-readable rendering, for error messages.
    pub(crate) fn describe(&self) -> String {
        let text = format!("{self:?}");
        text.chars().take(200).collect()
    }
}

/// Returns the length of the first complete reply frame in `buf`, or `None` if more bytes are
/// needed. A line that is no known reply is still a frame of its own (raw passthrough shows it).
///
/// # Errors
///
/// [`Error::Malformed`] if the stream cannot be framed: a `VALUE`/`VA` header without a valid
/// length, a block not CRLF-terminated, or a limit of [`ReplyConfig`] exceeded.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>> {
    match parse_reply(buf, &ReplyConfig::default()) {
        ParsedReply::Done { consumed, .. } => Ok(Some(consumed)),
        ParsedReply::Incomplete => Ok(None),
        ParsedReply::Bad {
            consumed: Some(consumed),
            ..
        } => Ok(Some(consumed)),
        ParsedReply::Bad {
            error,
            line,
            consumed: None,
        } => Err(malformed(error, line)),
    }
}

/// The error for a bad reply.
pub(crate) fn malformed(error: BadReply, line: &[u8]) -> Error {
    Error::Malformed {
        reason: error.reason(),
        line: lossy(line),
    }
}

fn lossy(bytes: &[u8]) -> String {
    const SHOWN_MAX: usize = 200;
    let shown = &bytes[..bytes.len().min(SHOWN_MAX)];
    String::from_utf8_lossy(shown).into_owned()
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
