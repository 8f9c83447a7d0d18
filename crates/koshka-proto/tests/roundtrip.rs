//! Property tests: `parse(encode(command)) == command` for every request type, and the
//! parser never panics or over-consumes on arbitrary bytes.

use koshka_proto::{parse, Command, ParseConfig, Parsed};
use proptest::prelude::*;

fn key() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(0x21u8..0x7f, 1..40)
}

fn encoded_command() -> impl Strategy<Value = Vec<u8>> {
    let store = (
        0usize..6,
        key(),
        any::<u32>(),
        -100i64..100_000,
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..200),
        any::<bool>(),
    )
        .prop_map(|(mode, key, flags, exptime, cas, data, noreply)| {
            let word = ["set", "add", "replace", "append", "prepend", "cas"][mode];
            let mut out = format!("{word} ").into_bytes();
            out.extend_from_slice(&key);
            out.extend_from_slice(format!(" {flags} {exptime} {}", data.len()).as_bytes());
            if word == "cas" {
                out.extend_from_slice(format!(" {cas}").as_bytes());
            }
            if noreply {
                out.extend_from_slice(b" noreply");
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&data);
            out.extend_from_slice(b"\r\n");
            out
        });
    let get = (any::<bool>(), proptest::collection::vec(key(), 1..20)).prop_map(|(cas, keys)| {
        let mut out = if cas {
            b"gets".to_vec()
        } else {
            b"get".to_vec()
        };
        for k in keys {
            out.push(b' ');
            out.extend_from_slice(&k);
        }
        out.extend_from_slice(b"\r\n");
        out
    });
    let arith = (key(), any::<u64>(), any::<bool>(), any::<bool>()).prop_map(|(k, d, incr, nr)| {
        let mut out = if incr {
            b"incr ".to_vec()
        } else {
            b"decr ".to_vec()
        };
        out.extend_from_slice(&k);
        out.extend_from_slice(format!(" {d}{}\r\n", if nr { " noreply" } else { "" }).as_bytes());
        out
    });
    let meta = (
        key(),
        proptest::sample::subsequence(vec!["v", "c", "f", "k", "t", "s", "q", "O77", "T30"], 0..6),
    )
        .prop_map(|(k, flags)| {
            let mut out = b"mg ".to_vec();
            out.extend_from_slice(&k);
            for f in flags {
                out.push(b' ');
                out.extend_from_slice(f.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            out
        });
    prop_oneof![store, get, arith, meta]
}

fn parse_all(buf: &[u8]) -> Vec<u8> {
    let config = ParseConfig::default();
    match parse(buf, &config) {
        Parsed::Done { command, consumed } => {
            assert_eq!(
                consumed,
                buf.len(),
                "one command consumes exactly its bytes"
            );
            let mut again = Vec::new();
            command.encode(&mut again);
            again
        }
        other => panic!(
            "did not parse: {other:?} from {:?}",
            String::from_utf8_lossy(buf)
        ),
    }
}

proptest! {
    #[test]
    fn encode_parse_roundtrip(bytes in encoded_command()) {
        // parse ∘ encode is the identity on the parsed form.
        let once = parse_all(&bytes);
        let twice = parse_all(&once);
        prop_assert_eq!(&once, &twice);
        let config = ParseConfig::default();
        let (Parsed::Done { command: a, .. }, Parsed::Done { command: b, .. }) =
            (parse(&bytes, &config), parse(&once, &config)) else { panic!() };
        prop_assert_eq!(a, b);
    }

    #[test]
    fn prefixes_are_incomplete_or_errors(bytes in encoded_command(), cut in 0usize..400) {
        let cut = cut.min(bytes.len().saturating_sub(1));
        let config = ParseConfig::default();
        match parse(&bytes[..cut], &config) {
            Parsed::Incomplete | Parsed::Bad { .. } => {}
            Parsed::Done { consumed, .. } => prop_assert!(consumed <= cut),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let config = ParseConfig { line_len_max: 300, value_size_max: 100, ..ParseConfig::default() };
        match parse(&bytes, &config) {
            Parsed::Incomplete => prop_assert!(bytes.len() < config.line_len_max + 2),
            Parsed::Done { consumed, .. } => prop_assert!(consumed > 0 && consumed <= bytes.len()),
            Parsed::Bad { consumed, .. } => prop_assert!(consumed > 0 && consumed <= bytes.len()),
        }
    }
}

#[test]
fn pipelined_commands_parse_one_by_one() {
    let buf = b"set a 0 0 1\r\nx\r\nget a\r\nincr n 5\r\nmn\r\n";
    let config = ParseConfig::default();
    let mut offset = 0;
    let mut words = Vec::new();
    while offset < buf.len() {
        let Parsed::Done { command, consumed } = parse(&buf[offset..], &config) else {
            panic!()
        };
        words.push(match command {
            Command::Store { .. } => "store",
            Command::Get { .. } => "get",
            Command::Arith { .. } => "arith",
            Command::MetaNoop => "mn",
            _ => "other",
        });
        offset += consumed;
    }
    assert_eq!(words, ["store", "get", "arith", "mn"]);
}
