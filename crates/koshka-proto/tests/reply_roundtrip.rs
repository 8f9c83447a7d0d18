//! Property tests of the reply codec: for every reply type, `parse_reply(compose(x)) == x`,
//! where `compose` is the `koshka_proto::reply` composers the server writes replies with, so
//! the server and the clients (koshka-client, koshka bench) agree by construction. Also: every
//! strict prefix of a reply is `Incomplete` (a reply split by the network is never refused),
//! pipelined replies parse one by one, and arbitrary bytes never panic the parser.

use koshka_proto::{
    parse_reply, reply, ErrorReply, MetaCode, ParsedReply, Reply, ReplyConfig, Status,
};
use proptest::prelude::*;

/// One `VALUE` block: key, flags, data, cas.
type ValueModel = (Vec<u8>, u32, Vec<u8>, Option<u64>);

/// A reply as the server means it (owned).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Model {
    Values(Vec<ValueModel>),
    Stats(Vec<(String, String)>),
    Status(Status),
    Number(u64),
    Version(String),
    Meta(MetaCode, Vec<(u8, Vec<u8>)>, Vec<u8>),
    Unknown,
    ClientError(String),
    ServerError(String),
}

/// Appends `model` with the server's composers.
fn compose(out: &mut Vec<u8>, model: &Model) {
    match model {
        Model::Values(values) => {
            for (key, flags, data, cas) in values {
                reply::value(out, key, *flags, data, *cas);
            }
            out.extend_from_slice(reply::END);
        }
        Model::Stats(stats) => {
            for (name, value) in stats {
                reply::stat(out, name, value);
            }
            out.extend_from_slice(reply::END);
        }
        Model::Status(status) => out.extend_from_slice(status.line()),
        Model::Number(number) => reply::arith(out, *number),
        Model::Version(version) => reply::version(out, version),
        Model::Meta(code, flags, data) => {
            reply::meta_head(out, *code, data.len());
            for (letter, token) in flags {
                reply::meta_flag(out, *letter, token);
            }
            reply::meta_end(out, (*code == MetaCode::Va).then_some(data.as_slice()));
        }
        Model::Unknown => out.extend_from_slice(reply::ERROR),
        Model::ClientError(message) => reply::client_error(out, message),
        Model::ServerError(message) => reply::server_error(out, message),
    }
}

/// The model a parsed reply describes.
fn model(reply: &Reply<'_>) -> Model {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    match reply {
        Reply::Values(values) => {
            let all: Vec<_> = values
                .iter()
                .map(|v| (v.key.to_vec(), v.flags, v.data.to_vec(), v.cas))
                .collect();
            assert_eq!(all.len(), values.len(), "len() counts what iter() yields");
            Model::Values(all)
        }
        Reply::Stats(stats) => {
            let all: Vec<_> = stats
                .iter()
                .map(|(name, value)| (text(name), text(value)))
                .collect();
            assert_eq!(all.len(), stats.len(), "len() counts what iter() yields");
            Model::Stats(all)
        }
        Reply::Status(status) => Model::Status(*status),
        Reply::Number(number) => Model::Number(*number),
        Reply::Version(version) => Model::Version(text(version)),
        Reply::Meta(meta) => {
            let flags = meta.flags.iter().map(|(l, t)| (l, t.to_vec())).collect();
            assert_eq!(meta.code == MetaCode::Va, meta.data.is_some());
            Model::Meta(meta.code, flags, meta.data.unwrap_or_default().to_vec())
        }
        Reply::Error(ErrorReply::Unknown) => Model::Unknown,
        Reply::Error(ErrorReply::Client(message)) => Model::ClientError(text(message)),
        Reply::Error(ErrorReply::Server(message)) => Model::ServerError(text(message)),
    }
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(0x21u8..0x7f, 1..250)
}

/// Printable text without line ends that does not start with a space (the parser trims the
/// spaces between a word and its argument).
fn text() -> impl Strategy<Value = String> {
    "[!-~][ -~]{0,60}|"
}

fn word() -> impl Strategy<Value = String> {
    "[!-~]{1,30}"
}

fn model_strategy() -> impl Strategy<Value = Model> {
    let value = (
        key(),
        any::<u32>(),
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::option::of(any::<u64>()),
    );
    let meta_flag = (
        prop_oneof![b'a'..=b'z', b'A'..=b'Z'],
        proptest::collection::vec(0x21u8..0x7f, 0..20),
    );
    prop_oneof![
        proptest::collection::vec(value, 0..12).prop_map(Model::Values),
        proptest::collection::vec((word(), text()), 1..12).prop_map(Model::Stats),
        proptest::sample::select(Status::ALL.to_vec()).prop_map(Model::Status),
        any::<u64>().prop_map(Model::Number),
        text().prop_map(Model::Version),
        (
            proptest::sample::select(MetaCode::ALL.to_vec()),
            proptest::collection::vec(meta_flag, 0..8),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(code, flags, data)| {
                let data = if code == MetaCode::Va {
                    data
                } else {
                    Vec::new()
                };
                Model::Meta(code, flags, data)
            }),
        Just(Model::Unknown),
        text().prop_map(Model::ClientError),
        text().prop_map(Model::ServerError),
    ]
}

proptest! {
    #[test]
    fn every_composed_reply_parses_back(model_in in model_strategy()) {
        let mut out = Vec::new();
        compose(&mut out, &model_in);
        match parse_reply(&out, &ReplyConfig::default()) {
            ParsedReply::Done { reply, consumed } => {
                prop_assert_eq!(consumed, out.len());
                prop_assert_eq!(model(&reply), model_in);
            }
            other => prop_assert!(
                false,
                "{:?} did not parse: {:?}",
                String::from_utf8_lossy(&out),
                other
            ),
        }
    }

    #[test]
    fn every_strict_prefix_is_incomplete(
        model_in in model_strategy(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut out = Vec::new();
        compose(&mut out, &model_in);
        let cut = cut.index(out.len());
        prop_assert_eq!(parse_reply(&out[..cut], &ReplyConfig::default()), ParsedReply::Incomplete);
    }

    #[test]
    fn pipelined_replies_parse_one_by_one(
        models in proptest::collection::vec(model_strategy(), 1..16),
    ) {
        let mut out = Vec::new();
        for model_in in &models {
            compose(&mut out, model_in);
        }
        let mut at = 0;
        for model_in in &models {
            let parsed = parse_reply(&out[at..], &ReplyConfig::default());
            let ParsedReply::Done { reply, consumed } = parsed else {
                panic!("{model_in:?} did not parse")
            };
            prop_assert_eq!(&model(&reply), model_in);
            at += consumed;
        }
        prop_assert_eq!(at, out.len());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let config = ReplyConfig { value_size_max: 100, line_len_max: 80, frame_size_max: 400 };
        match parse_reply(&bytes, &config) {
            ParsedReply::Incomplete => prop_assert!(bytes.len() <= config.frame_size_max),
            ParsedReply::Done { reply, consumed } => {
                prop_assert!(consumed > 0 && consumed <= bytes.len().min(config.frame_size_max));
                // The lazy iterators agree with the counts the parse validated.
                let _ = model(&reply);
            }
            ParsedReply::Bad { line, consumed, .. } => {
                prop_assert!(line.len() <= config.line_len_max);
                if let Some(consumed) = consumed {
                    prop_assert!(consumed > 0 && consumed <= bytes.len());
                }
            }
        }
    }
}

#[test]
fn every_status_and_meta_code_is_covered() {
    // The strategies sample from these tables; a new status or code must join them.
    assert_eq!(Status::ALL.len(), 8);
    assert_eq!(MetaCode::ALL.len(), 8);
    for status in Status::ALL {
        let parsed = parse_reply(status.line(), &ReplyConfig::default());
        assert_eq!(
            parsed,
            ParsedReply::Done {
                reply: Reply::Status(status),
                consumed: status.line().len()
            }
        );
    }
}
