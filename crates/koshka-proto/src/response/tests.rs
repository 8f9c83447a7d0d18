//! Unit tests of the reply parser; the composer round trips are in `tests/roundtrip.rs`.

use super::*;

fn cfg() -> ReplyConfig {
    ReplyConfig::default()
}

fn done(buf: &[u8]) -> (Reply<'_>, usize) {
    match parse_reply(buf, &cfg()) {
        ParsedReply::Done { reply, consumed } => (reply, consumed),
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn bad(buf: &[u8], config: &ReplyConfig) -> (BadReply, Option<usize>) {
    match parse_reply(buf, config) {
        ParsedReply::Bad {
            error, consumed, ..
        } => (error, consumed),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn values_need_complete_blocks() {
    let reply = b"VALUE a 0 3\r\nabc\r\nVALUE b 1 2 9\r\nxy\r\nEND\r\nSTORED\r\n";
    let frame = reply.len() - 8;
    for cut in 0..frame {
        assert_eq!(
            parse_reply(&reply[..cut], &cfg()),
            ParsedReply::Incomplete,
            "cut at {cut}"
        );
    }
    let (parsed, consumed) = done(reply);
    assert_eq!(consumed, frame);
    let Reply::Values(values) = parsed else {
        panic!("{parsed:?}")
    };
    assert_eq!(values.len(), 2);
    let all: Vec<Value<'_>> = values.iter().collect();
    assert_eq!(
        all,
        vec![
            Value {
                key: b"a",
                flags: 0,
                cas: None,
                data: b"abc"
            },
            Value {
                key: b"b",
                flags: 1,
                cas: Some(9),
                data: b"xy"
            }
        ]
    );
}

#[test]
fn value_data_may_contain_terminators() {
    let reply = b"VALUE a 0 5\r\nEND\r\n\r\nEND\r\n";
    let (parsed, consumed) = done(reply);
    assert_eq!(consumed, reply.len());
    let Reply::Values(values) = parsed else {
        panic!("{parsed:?}")
    };
    assert_eq!(
        values.iter().next().map(|value| value.data),
        Some(&b"END\r\n"[..])
    );
}

#[test]
fn one_line_replies() {
    assert_eq!(done(b"STORED\r\n").0, Reply::Status(Status::Stored));
    assert_eq!(done(b"RESET\r\n").0, Reply::Status(Status::Reset));
    assert_eq!(done(b"42\r\n").0, Reply::Number(42));
    assert_eq!(done(b"VERSION 1.6.21\r\n").0, Reply::Version(b"1.6.21"));
    assert_eq!(done(b"ERROR\r\n").0, Reply::Error(ErrorReply::Unknown));
    assert_eq!(
        done(b"CLIENT_ERROR bad data chunk\r\n").0,
        Reply::Error(ErrorReply::Client(b"bad data chunk"))
    );
    // A lone "\n" ends a line too, as in the request parser.
    assert_eq!(done(b"DELETED\n"), (Reply::Status(Status::Deleted), 8));
    let (meta, consumed) = done(b"VA 2 t-1 c5\r\nhi\r\nHD\r\n");
    assert_eq!(consumed, 17);
    let Reply::Meta(meta) = meta else {
        panic!("{meta:?}")
    };
    assert_eq!((meta.code, meta.data), (MetaCode::Va, Some(&b"hi"[..])));
    assert_eq!(meta.flags.token(b'c'), Some(&b"5"[..]));
    assert_eq!(meta.flags.number::<i64>(b't'), Ok(Some(-1)));
    let (en, _) = done(b"EN\r\n");
    assert!(matches!(
        en,
        Reply::Meta(Meta {
            code: MetaCode::En,
            data: None,
            ..
        })
    ));
}

#[test]
fn stats_skip_dump_lines() {
    let reply = b"STAT pid 1\r\nITEM k [1 b; 0 s]\r\nSTAT version 1.6 x\r\nEND\r\n";
    let (parsed, consumed) = done(reply);
    assert_eq!(consumed, reply.len());
    let Reply::Stats(stats) = parsed else {
        panic!("{parsed:?}")
    };
    assert_eq!(stats.len(), 2);
    let all: Vec<_> = stats.iter().collect();
    assert_eq!(
        all,
        vec![(&b"pid"[..], &b"1"[..]), (&b"version"[..], &b"1.6 x"[..])]
    );
}

#[test]
fn an_error_ends_a_multiget() {
    let reply = b"VALUE a 0 1\r\nx\r\nSERVER_ERROR out of memory\r\nrest";
    assert_eq!(
        done(reply),
        (Reply::Error(ErrorReply::Server(b"out of memory")), 44)
    );
}

#[test]
fn delimited_garbage_can_be_skipped() {
    assert_eq!(
        bad(b"WHAT\r\nSTORED\r\n", &cfg()),
        (BadReply::UnknownReply, Some(6))
    );
    assert_eq!(
        bad(b"STORED x\r\n", &cfg()),
        (BadReply::UnknownReply, Some(10))
    );
    assert_eq!(bad(b"\r\n", &cfg()), (BadReply::UnknownReply, Some(2)));
    assert_eq!(
        bad(b"99999999999999999999999\r\n", &cfg()),
        (BadReply::BadNumber, Some(25))
    );
    assert_eq!(
        bad(b"VALUE a 0 1\r\nx\r\nSTORED\r\n", &cfg()),
        (BadReply::Unclosed, Some(24))
    );
    assert_eq!(
        bad(b"STAT a 1\r\nVALUE a 0 1\r\nx\r\nEND\r\n", &cfg()),
        (BadReply::Unclosed, Some(23))
    );
}

#[test]
fn broken_framing_is_fatal() {
    assert_eq!(
        bad(b"VALUE a 0 x\r\n", &cfg()),
        (BadReply::BadValueHeader, None)
    );
    assert_eq!(
        bad(b"VALUE a 0\r\n", &cfg()),
        (BadReply::BadValueHeader, None)
    );
    assert_eq!(
        bad(b"VALUE a 0 1 2 3\r\n", &cfg()),
        (BadReply::BadValueHeader, None)
    );
    assert_eq!(bad(b"VA x\r\n", &cfg()), (BadReply::BadValueHeader, None));
    assert_eq!(
        bad(b"VALUE a 0 1\r\nab\r\n", &cfg()),
        (BadReply::UnterminatedData, None)
    );
}

#[test]
fn limits_are_checked_before_the_bytes_arrive() {
    let small = ReplyConfig {
        value_size_max: 10,
        line_len_max: 20,
        frame_size_max: 60,
    };
    // The announced length alone is refused, with no data block buffered.
    assert_eq!(
        bad(b"VALUE a 0 11\r\n", &small),
        (BadReply::ValueTooLarge { len: 11, max: 10 }, None)
    );
    assert_eq!(
        bad(b"VA 99999999999\r\n", &small).0,
        BadReply::ValueTooLarge {
            len: 99_999_999_999,
            max: 10
        }
    );
    // A line with no end in sight: incomplete up to the limit, then refused.
    assert_eq!(parse_reply(&[b'a'; 21], &small), ParsedReply::Incomplete);
    assert_eq!(
        bad(&[b'a'; 22], &small),
        (BadReply::LineTooLong { max: 20 }, None)
    );
    let mut at_limit = b"VERSION ".to_vec();
    at_limit.resize(20, b'v');
    at_limit.extend_from_slice(b"\r\n");
    assert!(matches!(
        parse_reply(&at_limit, &small),
        ParsedReply::Done { .. }
    ));
    // Values that each fit but together overflow the frame.
    let mut many = Vec::new();
    for _ in 0..4 {
        many.extend_from_slice(b"VALUE a 0 10\r\n0123456789\r\n");
    }
    assert_eq!(
        bad(&many, &small),
        (BadReply::FrameTooLarge { max: 60 }, None)
    );
}

#[test]
fn the_defaults_are_the_named_limits() {
    let config = ReplyConfig::default();
    assert_eq!(config.value_size_max, REPLY_VALUE_SIZE_MAX);
    assert_eq!(config.line_len_max, REPLY_LINE_LEN_MAX);
    assert_eq!(config.frame_size_max, REPLY_FRAME_SIZE_MAX);
}
