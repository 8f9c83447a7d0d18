//! Requests back to bytes: the inverse of [`crate::parse`], used by clients and by the
//! round-trip property tests.

use crate::reply::{number, signed};
use crate::request::{Command, StoreMode};

impl Command<'_> {
    /// Appends the request bytes of this command to `out`. Meta keys are written raw, so a
    /// command parsed with the `b` flag re-encodes with its decoded key only if the caller
    /// re-encodes it in base64 first.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Command::Get { keys, cas } => {
                out.extend_from_slice(if *cas { b"gets" } else { b"get" });
                for key in keys.iter() {
                    out.push(b' ');
                    out.extend_from_slice(key);
                }
            }
            Command::Gat { exptime, keys, cas } => {
                out.extend_from_slice(if *cas { b"gats " } else { b"gat " });
                signed(out, *exptime);
                for key in keys.iter() {
                    out.push(b' ');
                    out.extend_from_slice(key);
                }
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
                out.extend_from_slice(mode.word().as_bytes());
                out.push(b' ');
                out.extend_from_slice(key);
                out.push(b' ');
                number(out, u64::from(*flags));
                out.push(b' ');
                signed(out, *exptime);
                out.push(b' ');
                number(out, data.len() as u64);
                if *mode == StoreMode::Cas {
                    out.push(b' ');
                    number(out, *cas_unique);
                }
                noreply_suffix(out, *noreply);
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(data);
            }
            Command::Delete { key, noreply } => {
                word_key(out, b"delete", key);
                noreply_suffix(out, *noreply);
            }
            Command::Arith {
                key,
                incr,
                delta,
                noreply,
            } => {
                word_key(out, if *incr { b"incr" } else { b"decr" }, key);
                out.push(b' ');
                number(out, *delta);
                noreply_suffix(out, *noreply);
            }
            Command::Touch {
                key,
                exptime,
                noreply,
            } => {
                word_key(out, b"touch", key);
                out.push(b' ');
                signed(out, *exptime);
                noreply_suffix(out, *noreply);
            }
            Command::FlushAll { delay, noreply } => {
                out.extend_from_slice(b"flush_all ");
                signed(out, *delay);
                noreply_suffix(out, *noreply);
            }
            Command::Stats { group } => {
                out.extend_from_slice(b"stats");
                if !group.is_empty() {
                    out.push(b' ');
                    out.extend_from_slice(group);
                }
            }
            Command::Version => out.extend_from_slice(b"version"),
            Command::Verbosity { noreply } => {
                out.extend_from_slice(b"verbosity 1");
                noreply_suffix(out, *noreply);
            }
            Command::SlabsAutomove { mode } => {
                out.extend_from_slice(b"slabs automove ");
                number(out, u64::from(*mode));
            }
            Command::SlabsReassign {
                source,
                destination,
            } => {
                out.extend_from_slice(b"slabs reassign ");
                signed(out, i64::from(*source));
                out.push(b' ');
                signed(out, i64::from(*destination));
            }
            Command::Quit => out.extend_from_slice(b"quit"),
            Command::MetaNoop => out.extend_from_slice(b"mn"),
            Command::MetaDebug { key } => word_key(out, b"me", key),
            Command::MetaGet { key, flags } => meta(out, b"mg", key, None, flags.raw()),
            Command::MetaDelete { key, flags } => meta(out, b"md", key, None, flags.raw()),
            Command::MetaArith { key, flags } => meta(out, b"ma", key, None, flags.raw()),
            Command::MetaSet { key, flags, data } => {
                meta(out, b"ms", key, Some(data.len()), flags.raw());
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(data);
            }
        }
        out.extend_from_slice(b"\r\n");
    }
}

fn word_key(out: &mut Vec<u8>, word: &[u8], key: &[u8]) {
    out.extend_from_slice(word);
    out.push(b' ');
    out.extend_from_slice(key);
}

fn noreply_suffix(out: &mut Vec<u8>, noreply: bool) {
    if noreply {
        out.extend_from_slice(b" noreply");
    }
}

fn meta(out: &mut Vec<u8>, word: &[u8], key: &[u8], len: Option<usize>, flags: &[u8]) {
    word_key(out, word, key);
    if let Some(len) = len {
        out.push(b' ');
        number(out, len as u64);
    }
    if !flags.is_empty() {
        out.push(b' ');
        out.extend_from_slice(flags);
    }
}
