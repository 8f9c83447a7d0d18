//! `proto_text`: the memcached text + meta request parser on arbitrary bytes.
//!
//! The input is treated as one connection's byte stream and parsed the way the server does:
//! repeatedly from the front, dropping `consumed` bytes, then `swallow` more after a refused
//! data block, stopping at `Incomplete` (no more bytes will come) or at `LineTooLong` (the
//! server closes the connection). Invariants, Pelikan style:
//!
//! * `parse` never panics;
//! * `Done` and `Bad` consume at least one byte and never more than the buffer holds;
//! * every key of a `Done` command respects the configured limits (length, multiget count),
//!   data blocks respect the value limit;
//! * re-encoding a `Done` command with `Command::encode` and parsing the result gives back an
//!   equal command consuming exactly the encoded bytes (meta commands with the `b` flag are
//!   excepted: they hold the decoded key, `encode` writes it raw);
//! * the parser does not look past what it consumed: parsing exactly the consumed bytes gives
//!   the same `Done`, and the same bytes one short are `Incomplete` (a command split by the
//!   network is never refused for it).
//!
//! Each input is parsed twice: with small limits (so the fuzzer reaches every limit) and with
//! the production defaults.

#![no_main]

use koshka_proto::{parse, BadRequest, Command, ParseConfig, Parsed};
use libfuzzer_sys::fuzz_target;

/// Small limits: every limit is reachable with short inputs.
const SMALL: ParseConfig = ParseConfig {
    key_len_max: 16,
    value_size_max: 64,
    line_len_max: 96,
    multiget_keys_max: 4,
};

fuzz_target!(|data: &[u8]| {
    run(data, &SMALL);
    run(data, &ParseConfig::default());
});

fn run(data: &[u8], config: &ParseConfig) {
    let mut buf = data;
    let mut swallow = 0usize;
    // Each round consumes at least one byte (asserted), so this terminates.
    loop {
        if swallow > 0 {
            let n = swallow.min(buf.len());
            buf = &buf[n..];
            swallow -= n;
            if swallow > 0 {
                return;
            }
        }
        if buf.is_empty() {
            return;
        }
        match parse(buf, config) {
            Parsed::Incomplete => {
                // Without a newline, at most line_len_max bytes of content and a "\r" may wait.
                assert!(
                    buf.len() <= config.line_len_max + 1 || memchr_nl(buf).is_some(),
                    "Incomplete on {} bytes without a newline, line_len_max {}",
                    buf.len(),
                    config.line_len_max
                );
                return;
            }
            Parsed::Done { command, consumed } => {
                assert!(
                    consumed > 0 && consumed <= buf.len(),
                    "Done consumed {consumed} of {} bytes",
                    buf.len()
                );
                check_limits(&command, config);
                check_round_trip(&command, config);
                check_no_lookahead(&buf[..consumed], &command, config);
                buf = &buf[consumed..];
            }
            Parsed::Bad {
                error,
                consumed,
                swallow: s,
                ..
            } => {
                assert!(
                    consumed > 0 && consumed <= buf.len(),
                    "Bad({error:?}) consumed {consumed} of {} bytes",
                    buf.len()
                );
                if error.closes() {
                    return;
                }
                // A refused data block is at most the value limit plus its "\r\n".
                assert!(
                    s <= config.value_size_max.saturating_add(2) || error == BadRequest::TooLarge,
                    "Bad({error:?}) asks to swallow {s} bytes"
                );
                buf = &buf[consumed..];
                swallow = s;
            }
        }
    }
}

fn memchr_nl(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
}

fn check_key(key: &[u8], config: &ParseConfig) {
    assert!(!key.is_empty(), "empty key");
    assert!(
        key.len() <= config.key_len_max,
        "key of {} bytes above key_len_max {}",
        key.len(),
        config.key_len_max
    );
}

fn check_limits(command: &Command<'_>, config: &ParseConfig) {
    match command {
        Command::Get { keys, .. } | Command::Gat { keys, .. } => {
            let all: Vec<&[u8]> = keys.iter().collect();
            assert_eq!(all.len(), keys.len(), "Keys::len disagrees with Keys::iter");
            assert!(!all.is_empty(), "retrieval without keys");
            assert!(
                all.len() <= config.multiget_keys_max,
                "{} keys above multiget_keys_max {}",
                all.len(),
                config.multiget_keys_max
            );
            for key in all {
                check_key(key, config);
                assert!(!key.contains(&b' '), "key with a space");
            }
        }
        Command::Store { key, data, .. } => {
            check_key(key, config);
            assert!(data.len() <= config.value_size_max, "data above value_size_max");
        }
        Command::MetaSet { key, data, .. } => {
            check_key(key, config);
            assert!(data.len() <= config.value_size_max, "data above value_size_max");
        }
        Command::Delete { key, .. }
        | Command::Arith { key, .. }
        | Command::Touch { key, .. }
        | Command::MetaDebug { key } => check_key(key, config),
        Command::MetaGet { key, .. }
        | Command::MetaDelete { key, .. }
        | Command::MetaArith { key, .. } => check_key(key, config),
        Command::FlushAll { .. }
        | Command::Stats { .. }
        | Command::Version
        | Command::Verbosity { .. }
        | Command::SlabsAutomove { .. }
        | Command::SlabsReassign { .. }
        | Command::Quit
        | Command::MetaNoop => {}
    }
}

/// Whether the command carries a base64 (`b` flag) meta key, which `encode` does not re-encode.
fn has_base64_key(command: &Command<'_>) -> bool {
    match command {
        Command::MetaGet { flags, .. }
        | Command::MetaDelete { flags, .. }
        | Command::MetaArith { flags, .. }
        | Command::MetaSet { flags, .. } => flags.has(b'b'),
        _ => false,
    }
}

/// Equality as a client sees it: the keys of a retrieval command are compared one by one,
/// not by the raw spacing of the line they came from (`Keys`' derived `PartialEq` compares
/// the raw slice, so `get a  b` and `get a b` differ there).
fn same(a: &Command<'_>, b: &Command<'_>) -> bool {
    match (a, b) {
        (Command::Get { keys: ka, cas: ca }, Command::Get { keys: kb, cas: cb }) => {
            ca == cb && ka.iter().eq(kb.iter())
        }
        (
            Command::Gat {
                exptime: ea,
                keys: ka,
                cas: ca,
            },
            Command::Gat {
                exptime: eb,
                keys: kb,
                cas: cb,
            },
        ) => ea == eb && ca == cb && ka.iter().eq(kb.iter()),
        _ => a == b,
    }
}

fn check_round_trip(command: &Command<'_>, config: &ParseConfig) {
    if has_base64_key(command) {
        return;
    }
    let mut encoded = Vec::new();
    command.encode(&mut encoded);
    match parse(&encoded, config) {
        Parsed::Done {
            command: again,
            consumed,
        } => {
            assert_eq!(
                consumed,
                encoded.len(),
                "re-encoded {command:?} as {:?}: parse consumed {consumed} bytes",
                String::from_utf8_lossy(&encoded)
            );
            assert!(
                same(command, &again),
                "round trip changed the command: {command:?} -> {:?} -> {again:?}",
                String::from_utf8_lossy(&encoded)
            );
        }
        other => panic!(
            "re-encoded {command:?} as {:?}, which parses as {other:?}",
            String::from_utf8_lossy(&encoded)
        ),
    }
}

/// Parsing exactly the consumed bytes gives the same command: the parser never depended on
/// bytes after the command.
fn check_no_lookahead(exact: &[u8], command: &Command<'_>, config: &ParseConfig) {
    match parse(exact, config) {
        Parsed::Done {
            command: again,
            consumed,
        } => {
            assert_eq!(consumed, exact.len());
            assert_eq!(command, &again);
        }
        other => panic!("{command:?} parsed alone as {other:?}"),
    }
    // One byte short, the same command is still arriving.
    let short = &exact[..exact.len() - 1];
    match parse(short, config) {
        Parsed::Incomplete => {}
        other => panic!(
            "{command:?} cut one byte short ({:?}) parsed as {other:?}, not Incomplete",
            String::from_utf8_lossy(short)
        ),
    }
}
