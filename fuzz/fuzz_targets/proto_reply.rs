//! `proto_reply`: the memcached reply parser (`koshka_proto::parse_reply`) on arbitrary bytes,
//! as a client reads a server's stream.
//!
//! The input is parsed repeatedly from the front, dropping `consumed` bytes after a reply or a
//! delimited bad reply, and stopping at `Incomplete` (no more bytes will come) or at a bad
//! reply the stream cannot be framed past (the client drops the connection). Invariants:
//!
//! * `parse_reply` never panics;
//! * `Done` and a delimited `Bad` consume at least one byte and never more than the buffer
//!   holds, nor more than `frame_size_max`; `Incomplete` never holds more than
//!   `frame_size_max` bytes (the client's buffer is bounded); a bad line is at most
//!   `line_len_max` long;
//! * the lazy iterators of `Values` and `Stats` yield exactly `len()` items, and every data
//!   block is within `value_size_max`;
//! * recomposing a `Done` reply with the server's composers (`koshka_proto::reply`) and
//!   parsing that gives the same reply (compared item by item) consuming exactly the composed
//!   bytes;
//! * the parser does not look past what it consumed: parsing exactly the consumed bytes gives
//!   the same outcome, and one byte fewer is `Incomplete` (a reply split by the network is
//!   never refused).
//!
//! Each input is parsed twice: with small limits (so the fuzzer reaches every limit) and with
//! the production defaults.

#![no_main]

use koshka_proto::{
    parse_reply, reply, BadReply, ErrorReply, MetaCode, ParsedReply, Reply, ReplyConfig,
};
use libfuzzer_sys::fuzz_target;

/// Small limits: every limit is reachable with short inputs.
const SMALL: ReplyConfig = ReplyConfig {
    value_size_max: 64,
    line_len_max: 96,
    frame_size_max: 512,
};

fuzz_target!(|data: &[u8]| {
    run(data, &SMALL);
    run(data, &ReplyConfig::DEFAULT);
});

fn run(data: &[u8], config: &ReplyConfig) {
    let mut buf = data;
    // Each round consumes at least one byte (asserted), so this terminates.
    while !buf.is_empty() {
        let parsed = parse_reply(buf, config);
        let consumed = match parsed {
            ParsedReply::Incomplete => {
                assert!(buf.len() <= config.frame_size_max, "unbounded buffering");
                return;
            }
            ParsedReply::Done { reply, consumed } => {
                check_reply(&reply, config);
                recompose(&reply, config);
                consumed
            }
            ParsedReply::Bad { line, consumed, .. } => {
                assert!(line.len() <= config.line_len_max);
                match consumed {
                    Some(consumed) => consumed,
                    None => return,
                }
            }
        };
        assert!(consumed > 0 && consumed <= buf.len(), "consumed {consumed} of {}", buf.len());
        assert!(consumed <= config.frame_size_max);
        // No look-ahead: exactly the consumed bytes give the same outcome, one fewer waits.
        assert_eq!(parse_reply(&buf[..consumed], config), parsed);
        assert_eq!(
            parse_reply(&buf[..consumed - 1], config),
            ParsedReply::Incomplete
        );
        buf = &buf[consumed..];
    }
}

fn check_reply(reply: &Reply<'_>, config: &ReplyConfig) {
    match reply {
        Reply::Values(values) => {
            assert_eq!(values.iter().count(), values.len());
            for value in values.iter() {
                assert!(!value.key.is_empty());
                assert!(value.data.len() <= config.value_size_max);
            }
        }
        Reply::Stats(stats) => assert_eq!(stats.iter().count(), stats.len()),
        Reply::Meta(meta) => {
            assert_eq!(meta.code == MetaCode::Va, meta.data.is_some());
            assert!(meta.data.map_or(0, <[u8]>::len) <= config.value_size_max);
        }
        _ => {}
    }
}

/// Composes `reply` again with the server's composers and checks it parses back the same.
fn recompose(reply: &Reply<'_>, config: &ReplyConfig) {
    let text = |bytes: &[u8]| std::str::from_utf8(bytes).ok().map(str::to_owned);
    let mut out = Vec::new();
    match reply {
        Reply::Values(values) => {
            for value in values.iter() {
                reply::value(&mut out, value.key, value.flags, value.data, value.cas);
            }
            out.extend_from_slice(reply::END);
        }
        Reply::Stats(stats) => {
            for (name, value) in stats.iter() {
                let (Some(name), Some(value)) = (text(name), text(value)) else {
                    return;
                };
                reply::stat(&mut out, &name, &value);
            }
            out.extend_from_slice(reply::END);
        }
        Reply::Status(status) => out.extend_from_slice(status.line()),
        Reply::Number(number) => reply::arith(&mut out, *number),
        Reply::Version(version) => match text(version) {
            Some(version) => reply::version(&mut out, &version),
            None => return,
        },
        Reply::Meta(meta) => {
            reply::meta_head(&mut out, meta.code, meta.data.map_or(0, <[u8]>::len));
            for (letter, token) in meta.flags.iter() {
                reply::meta_flag(&mut out, letter, token);
            }
            reply::meta_end(&mut out, meta.data);
        }
        Reply::Error(ErrorReply::Unknown) => out.extend_from_slice(reply::ERROR),
        Reply::Error(ErrorReply::Client(message)) => match text(message) {
            Some(message) => reply::client_error(&mut out, &message),
            None => return,
        },
        Reply::Error(ErrorReply::Server(message)) => match text(message) {
            Some(message) => reply::server_error(&mut out, &message),
            None => return,
        },
    }
    let (again, consumed) = match parse_reply(&out, config) {
        ParsedReply::Done { reply, consumed } => (reply, consumed),
        // The composers write "\r\n" for a lone "\n" and `STAT name \r\n` for a bare
        // `STAT name`: a reply at a limit may recompose past it.
        ParsedReply::Bad {
            error: BadReply::LineTooLong { .. } | BadReply::FrameTooLarge { .. },
            ..
        } => return,
        other => panic!(
            "recomposed {:?} does not parse: {other:?}",
            String::from_utf8_lossy(&out)
        ),
    };
    assert_eq!(consumed, out.len());
    assert!(same(reply, &again), "{reply:?} recomposed as {again:?}");
}

/// Equal replies, item by item (the raw slices differ in spacing and line ends).
fn same(a: &Reply<'_>, b: &Reply<'_>) -> bool {
    match (a, b) {
        (Reply::Values(a), Reply::Values(b)) => a.iter().eq(b.iter()),
        (Reply::Stats(a), Reply::Stats(b)) => a.iter().eq(b.iter()),
        // A run of only ITEM lines has no STAT to recompose: `END` alone, an empty Values.
        (Reply::Stats(a), Reply::Values(b)) => a.is_empty() && b.is_empty(),
        (Reply::Meta(a), Reply::Meta(b)) => {
            a.code == b.code && a.data == b.data && a.flags.iter().eq(b.flags.iter())
        }
        _ => a == b,
    }
}
