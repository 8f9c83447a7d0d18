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

// ---------------------------------------------------------------------------------------------
// Every request form koshka-client and koshka bench encode: a model of the request, encoded by
// the `koshka_proto::encode` function the client or the bench calls, parses back to the
// command the model describes, consuming exactly the encoded bytes.

mod requests {
    use std::borrow::Cow;

    use base64::Engine as _;
    use koshka_proto::encode::{self, Chunk, MetaCommand, Retrieval, Store};
    use koshka_proto::{parse, Command, MetaFlags, ParseConfig, Parsed, StoreMode};
    use proptest::prelude::*;

    use super::key;

    /// A request as the client's typed API or the bench describes it.
    #[derive(Debug, Clone)]
    enum Request {
        Retrieval(Retrieval, Vec<Vec<u8>>),
        Store(Store, Vec<u8>, Vec<u8>),
        Delete(Vec<u8>, bool),
        Arith(Vec<u8>, bool, u64, bool),
        Touch(Vec<u8>, i64, bool),
        FlushAll(Option<i64>, bool),
        Stats(Vec<u8>),
        Version,
        Verbosity(u64, bool),
        Quit,
        MetaNoop,
        MetaDebug(Vec<u8>),
        /// Command, key as sent, flag tokens, data (ms); with the `b` flag the key is sent in
        /// base64 and the parsed key is `decoded`.
        Meta(MetaCommand, Vec<u8>, Vec<String>, Option<Vec<u8>>),
        /// The bench's compiled key: a prefix, a number and a suffix written as one chunk.
        CompiledGet(Vec<u8>, u64, Vec<u8>),
    }

    /// A key written from parts (bytes, a decimal number, bytes), as the bench writes
    /// `message42_7` straight into its buffer.
    struct Compiled<'a>(&'a [u8], u64, &'a [u8]);

    impl Chunk for Compiled<'_> {
        fn len(&self) -> usize {
            self.0.len() + self.1.to_string().len() + self.2.len()
        }

        fn append_to(&self, out: &mut Vec<u8>) {
            out.extend_from_slice(self.0);
            koshka_proto::reply::number(out, self.1);
            out.extend_from_slice(self.2);
        }
    }

    fn store_mode() -> impl Strategy<Value = StoreMode> {
        prop_oneof![
            Just(StoreMode::Set),
            Just(StoreMode::Add),
            Just(StoreMode::Replace),
            Just(StoreMode::Append),
            Just(StoreMode::Prepend),
            Just(StoreMode::Cas),
        ]
    }

    fn retrieval() -> impl Strategy<Value = Retrieval> {
        prop_oneof![
            Just(Retrieval::Get),
            Just(Retrieval::Gets),
            any::<i64>().prop_map(Retrieval::Gat),
            any::<i64>().prop_map(Retrieval::Gats),
        ]
    }

    /// A printable token (no space), as stats groups and flag tokens are.
    fn token(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(0x21u8..0x7f, len)
    }

    /// Flag tokens a meta command accepts: a letter of `allowed` (not `b`), with a token for
    /// the letters that take one.
    fn meta_flags(allowed: &'static [u8]) -> impl Strategy<Value = Vec<String>> {
        let letters: Vec<u8> = allowed.iter().copied().filter(|&l| l != b'b').collect();
        let flag = (proptest::sample::select(letters), token(0..8), any::<i32>()).prop_map(
            |(letter, token, number)| {
                let letter = char::from(letter);
                match letter {
                    'O' => format!("O{}", String::from_utf8_lossy(&token)),
                    'T' | 'N' | 'J' | 'D' | 'C' | 'F' => {
                        format!("{letter}{}", number.unsigned_abs())
                    }
                    _ => letter.to_string(),
                }
            },
        );
        proptest::collection::vec(flag, 0..8)
    }

    fn meta() -> impl Strategy<Value = Request> {
        let command = prop_oneof![
            Just(MetaCommand::Get),
            Just(MetaCommand::Set),
            Just(MetaCommand::Delete),
            Just(MetaCommand::Arith),
        ];
        (
            command,
            key(),
            proptest::collection::vec(any::<u8>(), 1..40),
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..100),
        )
            .prop_flat_map(|(command, key, binary_key, base64, data)| {
                let allowed = match command {
                    MetaCommand::Get => koshka_proto::meta::MG_FLAGS,
                    MetaCommand::Set => koshka_proto::meta::MS_FLAGS,
                    MetaCommand::Delete => koshka_proto::meta::MD_FLAGS,
                    MetaCommand::Arith => koshka_proto::meta::MA_FLAGS,
                };
                meta_flags(allowed).prop_map(move |mut flags| {
                    let key = if base64 {
                        flags.push("b".into());
                        binary_key.clone()
                    } else {
                        key.clone()
                    };
                    let data = (command == MetaCommand::Set).then(|| data.clone());
                    Request::Meta(command, key, flags, data)
                })
            })
    }

    fn request() -> impl Strategy<Value = Request> {
        let data = proptest::collection::vec(any::<u8>(), 0..300);
        let store = (
            store_mode(),
            any::<u32>(),
            any::<i64>(),
            any::<u64>(),
            any::<bool>(),
        );
        prop_oneof![
            (retrieval(), proptest::collection::vec(key(), 1..20))
                .prop_map(|(command, keys)| Request::Retrieval(command, keys)),
            (store, key(), data).prop_map(
                |((mode, flags, exptime, cas_unique, noreply), key, data)| {
                    let store = Store {
                        mode,
                        flags,
                        exptime,
                        cas_unique,
                        noreply,
                    };
                    Request::Store(store, key, data)
                }
            ),
            (key(), any::<bool>()).prop_map(|(key, noreply)| Request::Delete(key, noreply)),
            (key(), any::<bool>(), any::<u64>(), any::<bool>())
                .prop_map(|(key, incr, delta, noreply)| Request::Arith(key, incr, delta, noreply)),
            (key(), any::<i64>(), any::<bool>())
                .prop_map(|(key, exptime, noreply)| Request::Touch(key, exptime, noreply)),
            (proptest::option::of(any::<i64>()), any::<bool>())
                .prop_map(|(delay, noreply)| Request::FlushAll(delay, noreply)),
            proptest::collection::vec(token(1..10), 0..3)
                .prop_map(|words| Request::Stats(words.join(&b' '))),
            Just(Request::Version),
            (any::<u64>(), any::<bool>())
                .prop_map(|(level, noreply)| Request::Verbosity(level, noreply)),
            Just(Request::Quit),
            Just(Request::MetaNoop),
            key().prop_map(Request::MetaDebug),
            meta(),
            (token(1..20), any::<u64>(), token(0..20))
                .prop_map(|(prefix, number, suffix)| Request::CompiledGet(prefix, number, suffix)),
        ]
    }

    /// Appends `request` the way the client or the bench does.
    fn encode(out: &mut Vec<u8>, request: &Request) {
        match request {
            Request::Retrieval(command, keys) => encode::retrieval(out, *command, keys),
            Request::Store(store, key, data) => encode::store(out, store, key, data),
            Request::Delete(key, noreply) => encode::delete(out, key, *noreply),
            Request::Arith(key, incr, delta, noreply) => {
                encode::arith(out, key, *incr, *delta, *noreply);
            }
            Request::Touch(key, exptime, noreply) => encode::touch(out, key, *exptime, *noreply),
            Request::FlushAll(delay, noreply) => encode::flush_all(out, *delay, *noreply),
            Request::Stats(group) => encode::stats(out, group),
            Request::Version => encode::version(out),
            Request::Verbosity(level, noreply) => encode::verbosity(out, *level, *noreply),
            Request::Quit => encode::quit(out),
            Request::MetaNoop => encode::meta_noop(out),
            Request::MetaDebug(key) => encode::meta_debug(out, key),
            Request::Meta(command, key, flags, data) => {
                let sent = if flags.iter().any(|flag| flag == "b") {
                    base64::engine::general_purpose::STANDARD
                        .encode(key)
                        .into_bytes()
                } else {
                    key.clone()
                };
                encode::meta(out, *command, &sent, flags, data.as_deref());
            }
            Request::CompiledGet(prefix, number, suffix) => {
                encode::get(out, [Compiled(prefix, *number, suffix)]);
            }
        }
    }

    /// Whether `command` is what `request` describes.
    fn matches(request: &Request, command: &Command<'_>) -> bool {
        let same_keys = |keys: &koshka_proto::Keys<'_>, expected: &[Vec<u8>]| {
            keys.len() == expected.len() && keys.iter().eq(expected.iter().map(Vec::as_slice))
        };
        match (request, command) {
            (Request::Retrieval(Retrieval::Get, expected), Command::Get { keys, cas: false })
            | (Request::Retrieval(Retrieval::Gets, expected), Command::Get { keys, cas: true }) => {
                same_keys(keys, expected)
            }
            (
                Request::Retrieval(Retrieval::Gat(e), expected),
                Command::Gat {
                    exptime,
                    keys,
                    cas: false,
                },
            )
            | (
                Request::Retrieval(Retrieval::Gats(e), expected),
                Command::Gat {
                    exptime,
                    keys,
                    cas: true,
                },
            ) => e == exptime && same_keys(keys, expected),
            (Request::Store(store, key, data), parsed) => {
                *parsed
                    == Command::Store {
                        mode: store.mode,
                        key,
                        flags: store.flags,
                        exptime: store.exptime,
                        cas_unique: if store.mode == StoreMode::Cas {
                            store.cas_unique
                        } else {
                            0
                        },
                        data,
                        noreply: store.noreply,
                    }
            }
            (Request::Delete(key, noreply), parsed) => {
                *parsed
                    == Command::Delete {
                        key,
                        noreply: *noreply,
                    }
            }
            (Request::Arith(key, incr, delta, noreply), parsed) => {
                *parsed
                    == Command::Arith {
                        key,
                        incr: *incr,
                        delta: *delta,
                        noreply: *noreply,
                    }
            }
            (Request::Touch(key, exptime, noreply), parsed) => {
                *parsed
                    == Command::Touch {
                        key,
                        exptime: *exptime,
                        noreply: *noreply,
                    }
            }
            (Request::FlushAll(delay, noreply), parsed) => {
                *parsed
                    == Command::FlushAll {
                        delay: delay.unwrap_or(0),
                        noreply: *noreply,
                    }
            }
            (Request::Stats(group), parsed) => *parsed == Command::Stats { group },
            (Request::Version, parsed) => *parsed == Command::Version,
            (Request::Verbosity(_, noreply), parsed) => {
                *parsed == Command::Verbosity { noreply: *noreply }
            }
            (Request::Quit, parsed) => *parsed == Command::Quit,
            (Request::MetaNoop, parsed) => *parsed == Command::MetaNoop,
            (Request::MetaDebug(key), parsed) => *parsed == Command::MetaDebug { key },
            (Request::Meta(which, key, flags, data), parsed) => {
                let raw = flags.join(" ");
                let flags = MetaFlags::new(raw.as_bytes());
                let key = Cow::Borrowed(key.as_slice());
                let expected = match which {
                    MetaCommand::Get => Command::MetaGet { key, flags },
                    MetaCommand::Delete => Command::MetaDelete { key, flags },
                    MetaCommand::Arith => Command::MetaArith { key, flags },
                    MetaCommand::Set => Command::MetaSet {
                        key,
                        flags,
                        data: data.as_deref().unwrap_or_default(),
                    },
                };
                *parsed == expected
            }
            (Request::CompiledGet(prefix, number, suffix), Command::Get { keys, cas: false }) => {
                let mut key = prefix.clone();
                key.extend_from_slice(number.to_string().as_bytes());
                key.extend_from_slice(suffix);
                same_keys(keys, &[key])
            }
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn every_encoded_request_parses_back(request in request()) {
            let mut out = Vec::new();
            encode(&mut out, &request);
            match parse(&out, &ParseConfig::default()) {
                Parsed::Done { command, consumed } => {
                    prop_assert_eq!(consumed, out.len());
                    prop_assert!(
                        matches(&request, &command),
                        "{:?} parsed as {:?}",
                        request,
                        command
                    );
                }
                other => prop_assert!(
                    false,
                    "{:?} encoded as {:?} did not parse: {:?}",
                    request,
                    String::from_utf8_lossy(&out),
                    other
                ),
            }
        }

        #[test]
        fn a_pipeline_parses_request_by_request(
            requests in proptest::collection::vec(request(), 1..20),
        ) {
            // The client's pipelines and the bench's batches append requests to one buffer.
            let mut out = Vec::new();
            for request in &requests {
                encode(&mut out, request);
            }
            let mut at = 0;
            for request in &requests {
                let parsed = parse(&out[at..], &ParseConfig::default());
                let Parsed::Done { command, consumed } = parsed else {
                    panic!("{request:?} did not parse")
                };
                prop_assert!(matches(request, &command), "{:?} parsed as {:?}", request, command);
                at += consumed;
            }
            prop_assert_eq!(at, out.len());
        }
    }
}
