//! The messages/wall grammar (VK's text-engine idioms): [`Query`] for `get` keys and
//! [`Update`] for `set`/`delete`/`incr`/`decr` keys with their values. The client-facing
//! description, with replies, is `docs/protocol/messages.md`.
//!
//! Keys follow VK's idioms: `name<owner>_<id>` addressing, `#from,to` slices (1-based, negative
//! = from the newest; without a slice a list key returns the newest [`PAGE_SIZE_DEFAULT`]
//! items newest first, see [`DEFAULT_SLICE`]), `and:xor` sublists, `(…)` query payloads and
//! random-tag handshakes (`set newmsg<uid>#<tag>` then `get newmsgid<uid>#<tag>`).
//!
//! # Layout
//! * this file — the limits the grammar enforces, message texts ([`Text`], [`parse_text`],
//!   [`encode_text`]) and the operations of updates ([`FlagOp`], [`ExtraOp`]);
//! * `query.rs` — [`Query`];
//! * `update.rs` — [`Update`].
//!
//! # Canonical spellings
//! `post…` is written `message…`, `dialogs…` `topmsglist…`, `newpostid…` `newmsgid…`,
//! `post_text…` `message_text…`; a slice equal to [`DEFAULT_SLICE`], a `#0` mode, the default
//! history limit, a zero `peer_msg_id`/`parent`/repost flags, an empty tag and an all-default
//! `xsearch(…)` (spelled `search(…)`) are left out.

mod query;
mod update;

pub use query::{mode, Query};
pub use update::Update;

use crate::idiom::Slice;
use crate::{KeyError, Result};

/// Most bytes of a compiled key this grammar parses; longer keys answer `CLIENT_ERROR`.
pub const KEY_BYTES_MAX: usize = 4096;

/// Most bytes of a session tag in `newmsg<uid>#<tag>`.
pub const TAG_BYTES_MAX: usize = 64;

/// Most bytes of one message's text (kludges + subject + body). Larger sends and edits answer
/// `CLIENT_ERROR` before anything is logged.
pub const MESSAGE_TEXT_BYTES_MAX: usize = 64 * 1024;

/// Most bytes of a subject. Larger ones answer `CLIENT_ERROR`.
pub const SUBJECT_BYTES_MAX: usize = 1024;

/// Most bytes of a message's kludges (`\x01name value\t` prefixes). Larger ones answer
/// `CLIENT_ERROR`.
pub const KLUDGES_BYTES_MAX: usize = 4096;

/// Items a page read returns when the key has no `#from,to` slice (the newest ones).
pub const PAGE_SIZE_DEFAULT: usize = 100;

/// Most results one search returns; a larger requested limit answers `CLIENT_ERROR`.
pub const SEARCH_RESULTS_MAX: usize = 1000;

/// Most words in a search query; more answer `CLIENT_ERROR`.
pub const SEARCH_WORDS_MAX: usize = 16;

/// Most events one `history` read returns; the default when the key names no limit.
pub const HISTORY_READ_MAX: usize = 256;

/// Number of integer extra fields per message (`extra<uid>_<lid>:<k>`, `k < EXTRA_FIELDS`).
pub const EXTRA_FIELDS: u8 = 8;

/// Flags a client may set: the low 16 bits. The high bits are reserved for the engine.
pub const USER_FLAGS_MASK: u32 = 0xFFFF;

/// The slice of a list key without `#from,to`: the newest [`PAGE_SIZE_DEFAULT`] items,
/// newest first.
// NOTE: PAGE_SIZE_DEFAULT is a small constant.
pub const DEFAULT_SLICE: Slice = Slice::Range {
    from: -1,
    to: -(PAGE_SIZE_DEFAULT as i64),
};

const _: () = assert!(TAG_BYTES_MAX < KEY_BYTES_MAX);
const _: () = assert!(SUBJECT_BYTES_MAX + KLUDGES_BYTES_MAX <= MESSAGE_TEXT_BYTES_MAX);

/// The three parts of a message text, each stored once per copy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Text {
    /// `\x01name value\t` prefixes, hidden unless asked for.
    pub kludges: Vec<u8>,
    /// The subject (may be empty).
    pub subject: Vec<u8>,
    /// The body.
    pub body: Vec<u8>,
}

impl Text {
    /// Total bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.kludges.len() + self.subject.len() + self.body.len()
    }

    /// True when all parts are empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How a flags update changes flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagOp {
    /// Replace the flags (`set flags…`).
    Set,
    /// Bitwise OR (`incr flags…`).
    Or,
    /// Bitwise AND-NOT (`decr flags…`).
    AndNot,
}

/// How an extra-field update changes the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtraOp {
    /// Replace the value (`set extra…`).
    Set,
    /// Add (wrapping) to the value (`incr`/`decr extra…`).
    Add,
}

/// Splits a stored text value into kludges, subject and body, and checks the limits:
/// leading `\x01…\t` runs are kludges, then everything before the first TAB (if any) is the
/// subject (when `with_subject`; a status has none).
///
/// # Errors
/// [`KeyError::Malformed`] for non-UTF-8 text or text over a limit.
pub fn parse_text(raw: &[u8], with_subject: bool) -> Result<Text> {
    if raw.len() > MESSAGE_TEXT_BYTES_MAX {
        return Err(KeyError::malformed(format!(
            "text of {} bytes exceeds {MESSAGE_TEXT_BYTES_MAX}",
            raw.len()
        )));
    }
    if std::str::from_utf8(raw).is_err() {
        return Err(KeyError::malformed("text is not UTF-8"));
    }
    let mut kludges_end = 0;
    while raw.get(kludges_end) == Some(&0x01) {
        match raw[kludges_end..].iter().position(|&b| b == b'\t') {
            Some(tab) => kludges_end += tab + 1,
            None => return Err(KeyError::malformed("kludge without a terminating TAB")),
        }
    }
    if kludges_end > KLUDGES_BYTES_MAX {
        return Err(KeyError::malformed(format!(
            "kludges exceed {KLUDGES_BYTES_MAX} bytes"
        )));
    }
    let rest = &raw[kludges_end..];
    let (subject, body) = match rest.iter().position(|&b| b == b'\t') {
        Some(tab) if with_subject => (&rest[..tab], &rest[tab + 1..]),
        _ => (&rest[..0], rest),
    };
    if subject.len() > SUBJECT_BYTES_MAX {
        return Err(KeyError::malformed(format!(
            "subject exceeds {SUBJECT_BYTES_MAX} bytes"
        )));
    }
    Ok(Text {
        kludges: raw[..kludges_end].to_vec(),
        subject: subject.to_vec(),
        body: body.to_vec(),
    })
}

/// Appends `text` as a stored text value, the inverse of [`parse_text`]: kludges, then
/// `subject<TAB>body`. An empty subject is left out unless the body would otherwise read as a
/// subject or a kludge (it holds a TAB or starts with `\x01`); then the value starts with a TAB.
/// Without `with_subject` the subject is not written (a status has none).
pub fn encode_text(out: &mut Vec<u8>, text: &Text, with_subject: bool) {
    out.extend_from_slice(&text.kludges);
    if with_subject
        && (!text.subject.is_empty()
            || text.body.contains(&b'\t')
            || text.body.first() == Some(&0x01))
    {
        out.extend_from_slice(&text.subject);
        out.push(b'\t');
    }
    out.extend_from_slice(&text.body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_split_and_join() {
        let text = parse_text(b"\x01from x\tsubj\tbody\twith tab", true).unwrap();
        assert_eq!(text.kludges, b"\x01from x\t");
        assert_eq!(text.subject, b"subj");
        assert_eq!(text.body, b"body\twith tab");
        for (raw, with_subject) in [
            (&b"\x01from x\tsubj\tbody\twith tab"[..], true),
            (b"plain", true),
            (b"\tbody\twith tab", true),
            (b"\t\x01not a kludge", true),
            (b"subject\t", true),
            (b"", true),
            (b"status\twith tab", false),
            (b"\x01k\tstatus", false),
        ] {
            let text = parse_text(raw, with_subject).unwrap();
            let mut out = Vec::new();
            encode_text(&mut out, &text, with_subject);
            assert_eq!(out, raw, "{:?}", String::from_utf8_lossy(raw));
        }
        assert!(parse_text(b"\x01no tab", true).is_err());
        assert!(parse_text(b"\xff", true).is_err());
    }
}
