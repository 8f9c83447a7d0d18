//! The stored form of one message text: a [`Blob`], shared by the two copies of a message
//! sent between two mailboxes of this node (they hold the same text and date), together with
//! the text's search terms.
//!
//! ```text
//! +----------+---------+--------------+------------+------------+------------+---------+---------+------+-----------+-----------------+
//! | date u32 | code u8 | text_len var | kludges var| subject var| body var   | kludges | subject | body | terms var | term deltas var…|
//! +----------+---------+--------------+------------+------------+------------+---------+---------+------+-----------+-----------------+
//! ```
//!
//! * `text_len` is the length of the original text (kludges + subject + body, UTF-8), the
//!   part lengths are the stored lengths.
//! * `code` says how the parts are stored: [`CODE_RAW`] (the original bytes) or
//!   [`CODE_PACKED`]: valid UTF-8 with Cyrillic letters and common Russian punctuation as one
//!   byte each (see [`pack`]), which halves a Russian text. A text is packed only when that
//!   makes it shorter.
//! * The terms are the ascending stem ids of the subject and body (the [`crate::search`]
//!   lexicon's), delta-encoded: small mailboxes are searched by scanning them, large ones
//!   index them.
//!
//! Variable-length integers are LEB128 ([`put_var`]).

use std::sync::Arc;

/// Parts stored as given.
pub const CODE_RAW: u8 = 0;
/// Parts stored [`pack`]ed.
pub const CODE_PACKED: u8 = 1;

/// Characters stored in one byte by [`pack`], besides ASCII and the Cyrillic block
/// `А..=я` (`0x80..=0xBF`): byte `0xC0 + index`.
const ONE_BYTE: [char; 14] = [
    'Ё', 'ё', '«', '»', '—', '–', '…', '\u{a0}', '“', '”', '„', '№', '’', '‘',
];

/// The byte that introduces a character stored as its UTF-8 bytes.
const ESCAPE: u8 = 0xFF;

const _: () = assert!(0xC0 + ONE_BYTE.len() < ESCAPE as usize);

/// One stored text: immutable, shared by reference counting. See the module docs.
#[derive(Clone, PartialEq, Eq)]
pub struct Blob(Arc<[u8]>);

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blob")
            .field("date", &self.date())
            .field("bytes", &self.0.len())
            .finish()
    }
}

/// The parsed layout of a [`Blob`].
#[derive(Debug, Clone, Copy)]
struct Layout {
    code: u8,
    text_len: usize,
    kludges: (usize, usize),
    subject: (usize, usize),
    body: (usize, usize),
    terms: usize,
}

impl Blob {
    /// Stores a text (`kludges`, `subject`, `body`) with its `date` and ascending `terms`.
    #[must_use]
    pub fn new(date: u32, parts: [&[u8]; 3], terms: &[u32]) -> Self {
        let mut out = Vec::with_capacity(16 + parts.iter().map(|p| p.len()).sum::<usize>());
        Self::write_text(&mut out, date, parts);
        write_terms(&mut out, terms);
        Self(out.into())
    }

    /// Appends the text part of a blob (everything before the terms) to `out`.
    fn write_text(out: &mut Vec<u8>, date: u32, parts: [&[u8]; 3]) {
        out.extend_from_slice(&date.to_le_bytes());
        let text_len: usize = parts.iter().map(|p| p.len()).sum();
        let packed: Option<[Vec<u8>; 3]> = (|| {
            let packed = [pack(parts[0])?, pack(parts[1])?, pack(parts[2])?];
            let len: usize = packed.iter().map(Vec::len).sum();
            (len < text_len).then_some(packed)
        })();
        match packed {
            Some(packed) => {
                out.push(CODE_PACKED);
                put_var(out, text_len as u64);
                for part in &packed {
                    put_var(out, part.len() as u64);
                }
                for part in &packed {
                    out.extend_from_slice(part);
                }
            }
            None => {
                out.push(CODE_RAW);
                put_var(out, text_len as u64);
                for part in parts {
                    put_var(out, part.len() as u64);
                }
                for part in parts {
                    out.extend_from_slice(part);
                }
            }
        }
    }

    /// True when this blob stores `date` and exactly these parts (whatever its terms).
    #[must_use]
    pub fn same_text(&self, date: u32, parts: [&[u8]; 3]) -> bool {
        let mut text = Vec::with_capacity(self.0.len());
        Self::write_text(&mut text, date, parts);
        self.0.get(..text.len()) == Some(&text[..]) && self.layout().terms == text.len()
    }

    fn layout(&self) -> Layout {
        let bytes = &self.0[..];
        let code = bytes[4];
        let mut at = 5;
        let mut var = || {
            let (value, used) = get_var(&bytes[at..]);
            at += used;
            value as usize
        };
        let text_len = var();
        let (k, s, b) = (var(), var(), var());
        let kludges = (at, at + k);
        let subject = (kludges.1, kludges.1 + s);
        let body = (subject.1, subject.1 + b);
        Layout {
            code,
            text_len,
            kludges,
            subject,
            body,
            terms: body.1,
        }
    }

    /// The date (unix seconds, from the log).
    #[must_use]
    pub fn date(&self) -> u32 {
        u32::from_le_bytes([self.0[0], self.0[1], self.0[2], self.0[3]])
    }

    /// Length of the original text in bytes (kludges + subject + body).
    #[must_use]
    pub fn text_len(&self) -> usize {
        self.layout().text_len
    }

    /// The stored parts `(kludges, subject, body)` and how they are coded.
    #[must_use]
    pub fn parts(&self) -> (Coded<'_>, Coded<'_>, Coded<'_>) {
        let l = self.layout();
        let part = |(a, b): (usize, usize)| Coded {
            code: l.code,
            bytes: &self.0[a..b],
        };
        (part(l.kludges), part(l.subject), part(l.body))
    }

    /// The term ids, ascending.
    #[must_use]
    pub fn terms(&self) -> Terms<'_> {
        let bytes = &self.0[self.layout().terms..];
        let (left, at) = get_var(bytes);
        Terms {
            bytes,
            at,
            left,
            term: 0,
        }
    }

    /// True when every id of the ascending `wanted` is among this text's terms.
    #[must_use]
    pub fn has_terms(&self, wanted: &[u32]) -> bool {
        let mut terms = self.terms();
        'wanted: for &w in wanted {
            for term in terms.by_ref() {
                match term.cmp(&w) {
                    std::cmp::Ordering::Less => {}
                    std::cmp::Ordering::Equal => continue 'wanted,
                    std::cmp::Ordering::Greater => return false,
                }
            }
            return false;
        }
        true
    }

    /// Bytes stored (the allocation is this plus the reference counts).
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Bytes of the text part (date, lengths, parts), without the terms.
    #[must_use]
    pub fn text_part_len(&self) -> usize {
        self.layout().terms
    }

    /// Never true: a blob holds at least its date.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// How many holders share this blob (two for the copies of a local send).
    #[must_use]
    pub fn holders(&self) -> usize {
        Arc::strong_count(&self.0)
    }

    /// The original text parts, decoded (for snapshots and reposts).
    #[must_use]
    pub fn to_parts(&self) -> [Vec<u8>; 3] {
        let (k, s, b) = self.parts();
        [k.to_vec(), s.to_vec(), b.to_vec()]
    }
}

/// The term ids of a [`Blob`], ascending.
#[derive(Debug, Clone)]
pub struct Terms<'a> {
    bytes: &'a [u8],
    at: usize,
    left: u64,
    term: u64,
}

impl Iterator for Terms<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let (delta, used) = get_var(&self.bytes[self.at.min(self.bytes.len())..]);
        self.at += used;
        self.term += delta;
        // NOTE: terms were written from u32 ids.
        Some(self.term as u32)
    }
}

fn write_terms(out: &mut Vec<u8>, terms: &[u32]) {
    put_var(out, terms.len() as u64);
    let mut last = 0u64;
    for &term in terms {
        debug_assert!(u64::from(term) >= last);
        put_var(out, u64::from(term) - last);
        last = u64::from(term);
    }
}

/// One stored part of a text and its coding.
#[derive(Debug, Clone, Copy)]
pub struct Coded<'a> {
    code: u8,
    bytes: &'a [u8],
}

impl Coded<'_> {
    /// The original bytes.
    #[must_use]
    pub fn to_vec(&self) -> Vec<u8> {
        if self.code == CODE_RAW {
            return self.bytes.to_vec();
        }
        let mut out = Vec::with_capacity(self.bytes.len() * 2);
        unpack(self.bytes, usize::MAX, |c| {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        });
        out
    }

    /// Appends the text as a JSON string (what `serde_json` writes for the text, invalid
    /// UTF-8 replaced by U+FFFD), cut to at most `max` bytes of UTF-8 at a character
    /// boundary.
    pub fn write_json(&self, out: &mut Vec<u8>, max: Option<usize>) {
        let max = max.unwrap_or(usize::MAX);
        out.push(b'"');
        // A packed byte decodes to at most four bytes of UTF-8 (an escaped character is
        // longer packed than decoded), so with room for that no cut can happen.
        if self.code == CODE_PACKED && max >= self.bytes.len() * 4 {
            write_packed_json(out, self.bytes);
        } else if self.code == CODE_RAW {
            let text = String::from_utf8_lossy(self.bytes);
            let mut end = max.min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            escape_str(out, &text[..end]);
        } else {
            unpack(self.bytes, max, |c| escape_char(out, c));
        }
        out.push(b'"');
    }
}

/// UTF-8 of the packed bytes `0x80..`: the Cyrillic block, then [`ONE_BYTE`]; a length of 0
/// marks a byte that is no character.
const UNPACKED: [([u8; 3], u8); 0x80] = {
    let mut table = [([0u8; 3], 0u8); 0x80];
    let mut i = 0;
    while i < 0x80 {
        let c = if i < 0x40 {
            char::from_u32(0x410 + i as u32)
        } else if i - 0x40 < ONE_BYTE.len() {
            Some(ONE_BYTE[i - 0x40])
        } else {
            None
        };
        if let Some(c) = c {
            let mut bytes = [0u8; 4];
            let len = c.encode_utf8(&mut bytes).len();
            table[i] = ([bytes[0], bytes[1], bytes[2]], len as u8);
        }
        i += 1;
    }
    table
};

/// The JSON string body of a whole packed text: a table lookup per byte, no per-character
/// copies (the hot path of every message read).
fn write_packed_json(out: &mut Vec<u8>, packed: &[u8]) {
    out.reserve(packed.len() * 2 + 8);
    let mut at = 0;
    while at < packed.len() {
        let byte = packed[at];
        at += 1;
        if byte < 0x80 {
            if byte >= 0x20 && byte != b'"' && byte != b'\\' {
                out.push(byte);
            } else {
                escape_ascii(out, byte);
            }
        } else if byte == ESCAPE {
            let len = utf8_len(packed.get(at).copied().unwrap_or(0));
            let end = (at + len).min(packed.len());
            match std::str::from_utf8(&packed[at..end]) {
                Ok(c) => out.extend_from_slice(c.as_bytes()),
                Err(_) => out.extend_from_slice("\u{fffd}".as_bytes()),
            }
            at = end;
        } else {
            let (bytes, len) = UNPACKED[usize::from(byte - 0x80)];
            match len {
                2 => {
                    out.push(bytes[0]);
                    out.push(bytes[1]);
                }
                3 => out.extend_from_slice(&bytes),
                _ => out.extend_from_slice("\u{fffd}".as_bytes()),
            }
        }
    }
}

/// Appends `text` JSON-escaped exactly as `serde_json` does: `"` and `\`, the C0 controls as
/// `\b \t \n \f \r` or `\u00xx`; everything else as is.
pub fn escape_str(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        if byte >= 0x20 && byte != b'"' && byte != b'\\' {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        escape_ascii(out, byte);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

fn escape_char(out: &mut Vec<u8>, c: char) {
    if c.is_ascii() {
        let byte = c as u8;
        if byte >= 0x20 && byte != b'"' && byte != b'\\' {
            out.push(byte);
        } else {
            escape_ascii(out, byte);
        }
    } else {
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    }
}

fn escape_ascii(out: &mut Vec<u8>, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match byte {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x09 => out.extend_from_slice(b"\\t"),
        0x0A => out.extend_from_slice(b"\\n"),
        0x0C => out.extend_from_slice(b"\\f"),
        0x0D => out.extend_from_slice(b"\\r"),
        _ => {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xF)]);
        }
    }
}

/// Packs valid UTF-8: ASCII as is, `А..=я` as `0x80..=0xBF`, the [`ONE_BYTE`] characters as
/// `0xC0 + index`, any other character as [`ESCAPE`] and its UTF-8 bytes. `None` for invalid
/// UTF-8.
#[must_use]
pub fn pack(text: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(text).ok()?;
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        let code = u32::from(c);
        if c.is_ascii() {
            out.push(code as u8);
        } else if (0x410..=0x44F).contains(&code) {
            out.push(0x80 + (code - 0x410) as u8);
        } else if let Some(index) = ONE_BYTE.iter().position(|&one| one == c) {
            out.push(0xC0 + index as u8);
        } else {
            out.push(ESCAPE);
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
    }
    Some(out)
}

/// Calls `visit` with the characters of a [`pack`]ed text while their UTF-8 length stays
/// within `max` bytes.
fn unpack(packed: &[u8], max: usize, mut visit: impl FnMut(char)) {
    let mut at = 0;
    let mut written = 0usize;
    while at < packed.len() {
        let byte = packed[at];
        let (c, used) = match byte {
            0..=0x7F => (char::from(byte), 1),
            0x80..=0xBF => (
                char::from_u32(0x410 + u32::from(byte - 0x80)).unwrap_or('\u{fffd}'),
                1,
            ),
            ESCAPE => {
                let len = utf8_len(packed.get(at + 1).copied().unwrap_or(0));
                let end = (at + 1 + len).min(packed.len());
                let c = std::str::from_utf8(&packed[at + 1..end])
                    .ok()
                    .and_then(|s| s.chars().next())
                    .unwrap_or('\u{fffd}');
                (c, 1 + len)
            }
            _ => (
                ONE_BYTE
                    .get(usize::from(byte - 0xC0))
                    .copied()
                    .unwrap_or('\u{fffd}'),
                1,
            ),
        };
        written += c.len_utf8();
        if written > max {
            return;
        }
        visit(c);
        at += used;
    }
}

fn utf8_len(lead: u8) -> usize {
    match lead {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

pub use koshka_text::varint::{get_var, put_var};

#[cfg(test)]
mod tests {
    use super::*;

    fn json(coded: Coded<'_>, max: Option<usize>) -> Vec<u8> {
        let mut out = Vec::new();
        coded.write_json(&mut out, max);
        out
    }

    fn serde(text: &str) -> Vec<u8> {
        serde_json::to_vec(text).unwrap_or_default()
    }

    #[test]
    fn packs_russian_in_half_and_round_trips() {
        let texts = [
            "Привет, мир! Ёжик — «ёлка»… №5 “quotes” ‘x’",
            "plain ascii",
            "",
            "emoji 😀 ünïcödé 日本語 і ї є ґ",
            "ctrl \u{1}\u{2}\t\n\r\u{8}\u{c}\u{7f} \"q\" back\\slash",
        ];
        for text in texts {
            let packed = pack(text.as_bytes()).unwrap_or_default();
            let blob = Blob::new(7, [b"", b"", text.as_bytes()], &[]);
            assert_eq!(blob.to_parts()[2], text.as_bytes(), "{text}");
            assert_eq!(blob.text_len(), text.len());
            let (_, _, body) = blob.parts();
            assert_eq!(json(body, None), serde(text), "{text}");
            let coded = Coded {
                code: CODE_PACKED,
                bytes: &packed,
            };
            assert_eq!(coded.to_vec(), text.as_bytes());
            assert_eq!(json(coded, None), serde(text), "{text}");
            // Every cut matches the cut of the original at a character boundary.
            for max in 0..=text.len() + 1 {
                let mut end = max.min(text.len());
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                assert_eq!(json(coded, Some(max)), serde(&text[..end]), "{text} {max}");
                assert_eq!(json(body, Some(max)), serde(&text[..end]), "{text} {max}");
            }
        }
        let russian = "Недостаточно дискового пространства";
        let blob = Blob::new(1, [b"", b"", russian.as_bytes()], &[]);
        // Ten bytes of date, coding and lengths; then one byte per letter.
        assert_eq!(blob.len(), 10 + russian.chars().count(), "{}", blob.len());
    }

    #[test]
    fn the_fast_path_matches_the_careful_one() {
        let mut every: Vec<u8> = (0u8..=0xFF).collect();
        every.extend_from_slice(&[ESCAPE, 0xF0, 0x9F, 0x98, 0x80, ESCAPE, 0xC3]);
        let coded = Coded {
            code: CODE_PACKED,
            bytes: &every,
        };
        let mut fast = Vec::new();
        write_packed_json(&mut fast, &every);
        let mut careful = Vec::new();
        unpack(&every, usize::MAX, |c| escape_char(&mut careful, c));
        assert_eq!(fast, careful);
        assert_eq!(json(coded, None), [&b"\""[..], &fast, b"\""].concat());
    }

    #[test]
    fn escapes_every_ascii_byte_like_serde_json() {
        for byte in 0u8..=0x7F {
            let text = String::from(char::from(byte));
            let mut out = Vec::new();
            escape_str(&mut out, &text);
            let mut want = serde(&text);
            want.remove(0);
            want.pop();
            assert_eq!(out, want, "byte {byte:#x}");
            let mut out = Vec::new();
            escape_char(&mut out, char::from(byte));
            assert_eq!(out, want, "byte {byte:#x}");
        }
    }

    #[test]
    fn invalid_utf8_is_stored_raw_and_rendered_lossily() {
        let bad = b"ok \xff\xfe end";
        let blob = Blob::new(3, [b"", b"subj", bad], &[1, 5, 900, 70_000]);
        assert_eq!(blob.date(), 3);
        assert_eq!(blob.to_parts()[2], bad);
        assert_eq!(blob.to_parts()[1], b"subj");
        let (_, _, body) = blob.parts();
        assert_eq!(json(body, None), serde(&String::from_utf8_lossy(bad)));
        assert_eq!(blob.terms().collect::<Vec<_>>(), [1, 5, 900, 70_000]);
        assert!(blob.has_terms(&[5, 70_000]));
        assert!(blob.has_terms(&[]));
        assert!(!blob.has_terms(&[5, 6]));
        assert!(!blob.has_terms(&[0]));
        assert!(!blob.has_terms(&[70_001]));
    }

    #[test]
    fn same_text_ignores_terms() {
        let blob = Blob::new(9, [b"\x01k v\t", b"s", "тело".as_bytes()], &[3, 4]);
        assert!(blob.same_text(9, [b"\x01k v\t", b"s", "тело".as_bytes()]));
        assert!(!blob.same_text(8, [b"\x01k v\t", b"s", "тело".as_bytes()]));
        assert!(!blob.same_text(9, [b"", b"s", "тело".as_bytes()]));
        assert!(!blob.same_text(9, [b"\x01k v\t", b"s", "тела".as_bytes()]));
    }
}
