//! Reply composition: small functions that append one reply to an output buffer.
//!
//! The server accumulates every reply of one read batch in one buffer and writes it with a
//! single system call, so these functions only append and never allocate beyond buffer growth.
//! [`crate::response::parse_reply`] is their inverse (the client side).

use crate::response::MetaCode;

/// `STORED\r\n`
pub const STORED: &[u8] = b"STORED\r\n";
/// `NOT_STORED\r\n`
pub const NOT_STORED: &[u8] = b"NOT_STORED\r\n";
/// `EXISTS\r\n`
pub const EXISTS: &[u8] = b"EXISTS\r\n";
/// `NOT_FOUND\r\n`
pub const NOT_FOUND: &[u8] = b"NOT_FOUND\r\n";
/// `DELETED\r\n`
pub const DELETED: &[u8] = b"DELETED\r\n";
/// `TOUCHED\r\n`
pub const TOUCHED: &[u8] = b"TOUCHED\r\n";
/// `END\r\n`
pub const END: &[u8] = b"END\r\n";
/// `OK\r\n`
pub const OK: &[u8] = b"OK\r\n";
/// `ERROR\r\n`
pub const ERROR: &[u8] = b"ERROR\r\n";
/// `MN\r\n` (meta no-op)
pub const MN: &[u8] = b"MN\r\n";
/// `EN\r\n` (meta miss)
pub const EN: &[u8] = b"EN\r\n";
/// `RESET\r\n` (reply to `stats reset`)
pub const RESET: &[u8] = b"RESET\r\n";

/// Appends a decimal number.
pub fn number(out: &mut Vec<u8>, n: u64) {
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(n).as_bytes());
}

/// Appends a signed decimal number.
pub fn signed(out: &mut Vec<u8>, n: i64) {
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(n).as_bytes());
}

/// Appends `VALUE <key> <flags> <bytes>[ <cas>]\r\n<data>\r\n`.
pub fn value(out: &mut Vec<u8>, key: &[u8], flags: u32, data: &[u8], cas: Option<u64>) {
    value_header(out, key, flags, data.len(), cas);
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends only the `VALUE …\r\n` line; the caller appends the data and `\r\n`.
pub fn value_header(out: &mut Vec<u8>, key: &[u8], flags: u32, len: usize, cas: Option<u64>) {
    out.extend_from_slice(b"VALUE ");
    out.extend_from_slice(key);
    out.push(b' ');
    number(out, u64::from(flags));
    out.push(b' ');
    number(out, len as u64);
    if let Some(cas) = cas {
        out.push(b' ');
        number(out, cas);
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `VALUE <key> <flags> <bytes>\r\n<data>\r\n` where `render` appends the data to
/// `out` itself, so a computed value (JSON, an id list) is written once, in place, without an
/// intermediate buffer. The header is inserted in front of the data afterwards by one move
/// within `out` (the length is only known once the data is rendered). When `render` returns
/// false (there is no value), what it appended is dropped and nothing is written.
pub fn value_in_place(
    out: &mut Vec<u8>,
    key: &[u8],
    flags: u32,
    render: &mut dyn FnMut(&mut Vec<u8>) -> bool,
) -> bool {
    let start = out.len();
    if !render(out) {
        out.truncate(start);
        return false;
    }
    let len = out.len() - start;
    let mut flags_digits = itoa::Buffer::new();
    let flags_digits = flags_digits.format(flags).as_bytes();
    let mut len_digits = itoa::Buffer::new();
    let len_digits = len_digits.format(len).as_bytes();
    let header_len =
        b"VALUE ".len() + key.len() + 1 + flags_digits.len() + 1 + len_digits.len() + 2;
    out.resize(out.len() + header_len, 0);
    out.copy_within(start..start + len, start + header_len);
    let mut at = start;
    for part in [
        &b"VALUE "[..],
        key,
        b" ",
        flags_digits,
        b" ",
        len_digits,
        b"\r\n",
    ] {
        out[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    debug_assert_eq!(at, start + header_len);
    out.extend_from_slice(b"\r\n");
    true
}

/// Appends `<n>\r\n` (incr/decr reply).
pub fn arith(out: &mut Vec<u8>, n: u64) {
    number(out, n);
    out.extend_from_slice(b"\r\n");
}

/// Appends `STAT <name> <value>\r\n`.
pub fn stat(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(b"STAT ");
    out.extend_from_slice(name.as_bytes());
    out.push(b' ');
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `CLIENT_ERROR <reason>\r\n`.
pub fn client_error(out: &mut Vec<u8>, reason: &str) {
    out.extend_from_slice(b"CLIENT_ERROR ");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `SERVER_ERROR <reason>\r\n`.
pub fn server_error(out: &mut Vec<u8>, reason: &str) {
    out.extend_from_slice(b"SERVER_ERROR ");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `VERSION <version>\r\n`.
pub fn version(out: &mut Vec<u8>, version: &str) {
    out.extend_from_slice(b"VERSION ");
    out.extend_from_slice(version.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends the head of a meta reply: the code, and for [`MetaCode::Va`] the length of the data
/// block that [`meta_end`] will append. Return flags follow with [`meta_flag`].
pub fn meta_head(out: &mut Vec<u8>, code: MetaCode, data_len: usize) {
    out.extend_from_slice(code.word());
    if code == MetaCode::Va {
        out.push(b' ');
        number(out, data_len as u64);
    }
}

/// Appends one return flag of a meta reply: ` <letter><token>`.
pub fn meta_flag(out: &mut Vec<u8>, letter: u8, token: &[u8]) {
    out.push(b' ');
    out.push(letter);
    out.extend_from_slice(token);
}

/// Ends a meta reply: `\r\n`, then the data block and `\r\n` for `VA`.
pub fn meta_end(out: &mut Vec<u8>, data: Option<&[u8]>) {
    out.extend_from_slice(b"\r\n");
    if let Some(data) = data {
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_in_place_matches_value() {
        let mut a = b"prefix".to_vec();
        let mut b = a.clone();
        value(&mut a, b"message2_17", 4_294_967_295, b"{\"id\":17}", None);
        assert!(value_in_place(
            &mut b,
            b"message2_17",
            4_294_967_295,
            &mut |out| {
                out.extend_from_slice(b"{\"id\":");
                out.extend_from_slice(b"17}");
                true
            }
        ));
        assert_eq!(a, b);
        let mut empty = Vec::new();
        value_in_place(&mut empty, b"k", 0, &mut |_| true);
        assert_eq!(empty, b"VALUE k 0 0\r\n\r\n");
        let mut miss = b"x".to_vec();
        assert!(!value_in_place(&mut miss, b"k", 0, &mut |out| {
            out.extend_from_slice(b"partial");
            false
        }));
        assert_eq!(miss, b"x");
    }

    #[test]
    fn value_lines() {
        let mut out = Vec::new();
        value(&mut out, b"k", 5, b"hi", None);
        value(&mut out, b"k", 0, b"", Some(7));
        arith(&mut out, 42);
        assert_eq!(out, b"VALUE k 5 2\r\nhi\r\nVALUE k 0 0 7\r\n\r\n42\r\n");
    }

    #[test]
    fn meta_lines() {
        let mut out = Vec::new();
        meta_head(&mut out, MetaCode::Va, 2);
        meta_flag(&mut out, b'c', b"5");
        meta_flag(&mut out, b't', b"-1");
        meta_end(&mut out, Some(b"hi"));
        meta_head(&mut out, MetaCode::Hd, 0);
        meta_end(&mut out, None);
        version(&mut out, "1.6");
        assert_eq!(out, b"VA 2 c5 t-1\r\nhi\r\nHD\r\nVERSION 1.6\r\n");
    }
}
