//! Property tests: for every grammar type and variant, `parse(encode(k)) == k` over values the
//! parsers can produce; a routing prefix changes nothing; the primary owner is the id VK's
//! "firstint" router would pick from the encoded key; and for keys spelled from grammar tokens,
//! whatever parses re-encodes to a key that parses to the same value.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use koshka_keys::friends::{DeleteKey, GetKey, IncrKey, ListRef, Mode, PrivacyKeys, SetKey};
use koshka_keys::messages::{
    ExtraOp, FlagOp, Query, Text, Update, DEFAULT_SLICE, HISTORY_READ_MAX, SEARCH_RESULTS_MAX,
    SEARCH_WORDS_MAX, TAG_BYTES_MAX,
};
use koshka_keys::{Encode, Route, Slice, Verb};
use proptest::prelude::*;

// ----- shared strategies -----

fn owner() -> impl Strategy<Value = i64> {
    prop_oneof![
        1..=20i64,
        1..=i64::from(i32::MAX),
        Just(i64::from(i32::MAX))
    ]
}

fn user() -> impl Strategy<Value = u32> {
    owner().prop_map(|id| u32::try_from(id).unwrap())
}

fn lid() -> impl Strategy<Value = u32> {
    prop_oneof![1..=50u32, 1..=u32::MAX]
}

/// A non-zero slice position of a messages key (any `i64`).
fn position() -> impl Strategy<Value = i64> {
    prop_oneof![
        1..=30i64,
        -30..=-1i64,
        any::<i64>().prop_filter("non-zero", |p| *p != 0)
    ]
}

fn messages_slice() -> impl Strategy<Value = Slice> {
    prop_oneof![
        Just(DEFAULT_SLICE),
        Just(Slice::Range { from: 0, to: 0 }),
        (position(), position()).prop_map(|(from, to)| Slice::Range { from, to }),
    ]
}

/// A friends slice: `#limit` and bounds within `i32`.
fn friends_slice() -> impl Strategy<Value = Slice> {
    let bound = prop_oneof![
        1..=30i32,
        -30..=-1i32,
        any::<i32>().prop_filter("non-zero", |p| *p != 0)
    ];
    prop_oneof![
        Just(Slice::All),
        (0..=u32::try_from(i32::MAX).unwrap()).prop_map(Slice::Limit),
        Just(Slice::Range { from: 0, to: 0 }),
        (bound.clone(), bound).prop_map(|(from, to)| Slice::Range {
            from: i64::from(from),
            to: i64::from(to)
        }),
    ]
}

fn handshake_tag() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        "[a-z0-9]{1,8}".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..=TAG_BYTES_MAX),
    ]
}

fn user_flags() -> impl Strategy<Value = u32> {
    prop_oneof![0..=16u32, 0..=0xFFFFu32]
}

/// A message text as `parse_text` produces it: kludges are `\x01…\t` runs, the rest never
/// starts with `\x01`, a subject holds no TAB.
fn text(with_subject: bool) -> impl Strategy<Value = Text> {
    let kludge = "[^\t]{0,6}".prop_map(|s| format!("\u{1}{s}\t"));
    let kludges = proptest::collection::vec(kludge, 0..3).prop_map(|k| k.concat().into_bytes());
    let subject = if with_subject {
        "([^\t\u{1}][^\t]{0,10})?".boxed()
    } else {
        Just(String::new()).boxed()
    };
    // Bodies that read like a subject or a kludge when written carelessly come often.
    let body = if with_subject {
        prop_oneof![
            "[^\u{0}]{0,30}",
            "\u{1}[^\t]{0,5}",
            "\u{1}?[a-z]{0,3}\t[a-z\t]{0,5}",
        ]
        .boxed()
    } else {
        prop_oneof!["([^\u{1}][^\u{0}]{0,30})?", "[a-z]{1,3}\t[a-z\t]{0,5}"].boxed()
    };
    (kludges, subject, body).prop_map(|(kludges, subject, body)| Text {
        kludges,
        subject: subject.into_bytes(),
        body: body.into_bytes(),
    })
}

/// 1..=SEARCH_WORDS_MAX words of any characters but space, joined by one or more spaces.
fn words() -> impl Strategy<Value = Vec<u8>> {
    let word = "[^ ]{1,6}";
    proptest::collection::vec((word, 1..=2usize, any::<bool>()), 1..=SEARCH_WORDS_MAX).prop_map(
        |words| {
            let mut out = String::new();
            for (i, (word, spaces, lead)) in words.iter().enumerate() {
                if i > 0 || *lead {
                    out.push_str(&" ".repeat(*spaces));
                }
                out.push_str(word);
            }
            out.into_bytes()
        },
    )
}

fn privacy_key() -> impl Strategy<Value = String> {
    "[a-z]{1,10}([0-9]{1,10}|_[a-z0-9_]{1,12})"
}

fn temp_tag() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_]{1,32}"
}

// ----- messages -----

fn query() -> impl Strategy<Value = Query> {
    let reads = prop_oneof![
        (owner(), lid(), 0..=7u32, proptest::option::of(0..=u32::MAX)).prop_map(
            |(owner, lid, mode, max_len)| Query::Message {
                owner,
                lid,
                mode,
                max_len: max_len.map(|m| usize::try_from(m).unwrap()),
            }
        ),
        (owner(), lid()).prop_map(|(owner, lid)| Query::Flags { owner, lid }),
        (owner(), lid(), 0..8u8).prop_map(|(owner, lid, field)| Query::Extra { owner, lid, field }),
        (owner(), any::<u32>(), any::<u32>(), messages_slice()).prop_map(
            |(owner, and, xor, slice)| Query::Sublist {
                owner,
                and,
                xor,
                slice
            }
        ),
        (owner(), any::<u32>(), any::<u32>(), lid()).prop_map(|(owner, and, xor, lid)| {
            Query::SublistPos {
                owner,
                and,
                xor,
                lid,
            }
        }),
        (owner(), owner(), messages_slice()).prop_map(|(owner, peer, slice)| Query::PeerList {
            owner,
            peer,
            slice
        }),
        (owner(), owner(), lid()).prop_map(|(owner, peer, lid)| Query::PeerListPos {
            owner,
            peer,
            lid
        }),
        (owner(), messages_slice()).prop_map(|(owner, slice)| Query::Dialogs { owner, slice }),
        (owner(), proptest::option::of(owner()))
            .prop_map(|(owner, peer)| Query::Unread { owner, peer }),
    ];
    let more = prop_oneof![
        (owner(), handshake_tag()).prop_map(|(owner, tag)| Query::NewId { owner, tag }),
        owner().prop_map(|owner| Query::Timestamp { owner }),
        (
            owner(),
            0..=u64::try_from(i64::MAX).unwrap(),
            1..=HISTORY_READ_MAX
        )
            .prop_map(|(owner, ts, limit)| Query::History { owner, ts, limit }),
        (
            owner(),
            prop_oneof![Just((0, 0)), (any::<u32>(), any::<u32>())],
            prop_oneof![Just(0), 0..=i64::MAX],
            prop_oneof![Just(0), any::<u32>()],
            prop_oneof![Just(0), any::<u32>()],
            1..=SEARCH_RESULTS_MAX,
            words(),
        )
            .prop_map(|(owner, mask, peer, min_date, max_date, limit, words)| {
                Query::Search {
                    owner,
                    mask,
                    peer,
                    min_date,
                    max_date,
                    limit,
                    words,
                }
            }),
        Just(Query::SublistTypes),
        (owner(), lid(), messages_slice()).prop_map(|(owner, post, slice)| Query::Replies {
            owner,
            post,
            slice
        }),
        owner().prop_map(|owner| Query::Status { owner }),
        (owner(), messages_slice()).prop_map(|(owner, slice)| Query::Statuses { owner, slice }),
    ];
    prop_oneof![reads, more]
}

fn update() -> impl Strategy<Value = Update> {
    let sends = prop_oneof![
        (
            owner(),
            handshake_tag(),
            user_flags(),
            owner(),
            any::<u32>(),
            text(true)
        )
            .prop_map(
                |(owner, tag, flags, peer, peer_lid, text)| Update::NewMessage {
                    owner,
                    tag,
                    flags,
                    peer,
                    peer_lid,
                    text,
                }
            ),
        (owner(), owner(), handshake_tag(), user_flags(), text(true))
            .prop_filter("two mailboxes", |(from, to, ..)| from != to)
            .prop_map(|(from, to, tag, flags, text)| Update::Send {
                from,
                to,
                tag,
                flags,
                text,
            }),
        (
            owner(),
            handshake_tag(),
            user_flags(),
            owner(),
            any::<u32>(),
            text(true)
        )
            .prop_map(
                |(owner, tag, flags, author, parent, text)| Update::NewPost {
                    owner,
                    tag,
                    flags,
                    author,
                    parent,
                    text,
                }
            ),
        (
            owner(),
            handshake_tag(),
            owner(),
            user_flags(),
            owner(),
            lid(),
            proptest::option::of(text(true))
        )
            .prop_map(|(owner, tag, author, flags, orig_owner, orig_id, text)| {
                Update::Repost {
                    owner,
                    tag,
                    author,
                    flags,
                    orig_owner,
                    orig_id,
                    text,
                }
            }),
        (owner(), handshake_tag(), text(false)).prop_map(|(owner, tag, text)| Update::Status {
            owner,
            tag,
            text
        }),
    ];
    let edits = prop_oneof![
        (
            owner(),
            lid(),
            prop_oneof![
                user_flags().prop_map(|v| (FlagOp::Set, v)),
                user_flags().prop_map(|v| (FlagOp::Or, v)),
                (1..=0xFFFFu32).prop_map(|v| (FlagOp::AndNot, v)),
            ]
        )
            .prop_map(|(owner, lid, (op, value))| Update::Flags {
                owner,
                lid,
                op,
                value
            }),
        (owner(), owner(), prop_oneof![Just(0), any::<u32>()])
            .prop_map(|(owner, peer, lid)| Update::ReadUpto { owner, peer, lid }),
        (owner(), lid(), text(true)).prop_map(|(owner, lid, text)| Update::Edit {
            owner,
            lid,
            text
        }),
        (owner(), lid(), lid()).prop_map(|(owner, lid, peer_lid)| Update::PeerLink {
            owner,
            lid,
            peer_lid
        }),
        (owner(), lid()).prop_map(|(owner, lid)| Update::Delete { owner, lid }),
        (owner(), owner()).prop_map(|(owner, peer)| Update::DeleteDialog { owner, peer }),
        (owner(), lid()).prop_map(|(owner, min_lid)| Update::Trim { owner, min_lid }),
        (
            owner(),
            lid(),
            0..8u8,
            prop_oneof![Just(ExtraOp::Set), Just(ExtraOp::Add)],
            any::<i64>()
        )
            .prop_map(|(owner, lid, field, op, value)| Update::Extra {
                owner,
                lid,
                field,
                op,
                value,
            }),
    ];
    prop_oneof![sends, edits]
}

// ----- friends -----

fn list_ref() -> impl Strategy<Value = ListRef> {
    prop_oneof![
        proptest::collection::vec(user(), 0..20).prop_map(ListRef::Inline),
        temp_tag().prop_map(ListRef::Temp),
    ]
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![
        Just(Mode::Ids),
        Just(Mode::Masks),
        Just(Mode::Full),
        Just(Mode::Packed)
    ]
}

fn get_key() -> impl Strategy<Value = GetKey<'static>> {
    prop_oneof![
        (user(), 0..=30u8, mode(), friends_slice()).prop_map(|(user, folder, mode, slice)| {
            GetKey::Friends {
                user,
                folder,
                mode,
                slice,
            }
        }),
        (user(), 0..=30u8).prop_map(|(user, folder)| GetKey::FriendCount { user, folder }),
        (user(), friends_slice()).prop_map(|(user, slice)| GetKey::RecentFriends { user, slice }),
        (user(), user()).prop_map(|(user, friend)| GetKey::Friend { user, friend }),
        (user(), user()).prop_map(|(user, from)| GetKey::Request { user, from }),
        (user(), friends_slice()).prop_map(|(user, slice)| GetKey::Requests { user, slice }),
        (user(), privacy_key()).prop_map(|(user, key)| GetKey::Privacy {
            user,
            key: key.into()
        }),
        (
            prop_oneof![Just(0u32), user()],
            user(),
            proptest::collection::vec(privacy_key(), 1..8)
        )
            .prop_map(|(viewer, owner, keys)| GetKey::Check {
                viewer,
                owner,
                keys: PrivacyKeys::new(keys).unwrap()
            }),
        (user(), user()).prop_map(|(user, other)| GetKey::CommonFriends { user, other }),
        (user(), list_ref()).prop_map(|(user, list)| GetKey::FriendsAmong { user, list }),
        (user(), list_ref()).prop_map(|(user, list)| GetKey::CommonCounts { user, list }),
    ]
}

fn set_key() -> impl Strategy<Value = SetKey> {
    prop_oneof![
        (user(), user(), any::<bool>()).prop_map(|(user, friend, half)| SetKey::Friend {
            user,
            friend,
            half
        }),
        (user(), 1..=30u8).prop_map(|(user, folder)| SetKey::Folder { user, folder }),
        (user(), user()).prop_map(|(user, from)| SetKey::Request { user, from }),
        (user(), privacy_key()).prop_map(|(user, key)| SetKey::Privacy { user, key }),
        temp_tag().prop_map(|tag| SetKey::Temp { tag }),
    ]
}

fn delete_key() -> impl Strategy<Value = DeleteKey> {
    prop_oneof![
        (user(), user(), any::<bool>()).prop_map(|(user, friend, half)| DeleteKey::Friend {
            user,
            friend,
            half
        }),
        (user(), 1..=30u8).prop_map(|(user, folder)| DeleteKey::Folder { user, folder }),
        user().prop_map(|user| DeleteKey::User { user }),
        (user(), user()).prop_map(|(user, from)| DeleteKey::Request { user, from }),
        user().prop_map(|user| DeleteKey::Requests { user }),
        (user(), privacy_key()).prop_map(|(user, key)| DeleteKey::Privacy { user, key }),
    ]
}

// ----- properties -----

/// VK's "firstint" routing: the first decimal number of the key; when the key starts with a
/// number followed by `~`, the number after the `~`.
fn firstint(key: &[u8]) -> Option<i64> {
    let number = |from: usize| {
        let start = from + key[from..].iter().position(u8::is_ascii_digit)?;
        let len = key[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        std::str::from_utf8(&key[start..start + len])
            .ok()?
            .parse::<i64>()
            .ok()
            .map(|n| (n, start + len))
    };
    let (first, end) = number(0)?;
    if key[0].is_ascii_digit() && key.get(end) == Some(&b'~') {
        return number(end).map(|(n, _)| n);
    }
    Some(first)
}

fn prefixed(prefix: &[u8], key: &[u8]) -> Vec<u8> {
    [prefix, key].concat()
}

/// The routing vocabulary agrees with the encoded key.
fn check_route(route: &impl Route, key: &[u8]) {
    if let Some(primary) = route.owners().primary() {
        assert_eq!(
            firstint(key),
            Some(primary),
            "{:?}",
            String::from_utf8_lossy(key)
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn messages_queries_round_trip(q in query()) {
        let key = q.to_bytes();
        prop_assert_eq!(Query::parse(&key), Ok(q.clone()), "{:?}", String::from_utf8_lossy(&key));
        prop_assert_eq!(Query::parse(&prefixed(b"98@", &key)), Ok(q.clone()));
        check_route(&q, &key);
    }

    #[test]
    fn messages_updates_round_trip(u in update()) {
        let (key, value) = (u.to_bytes(), u.value_bytes());
        prop_assert_eq!(
            Update::parse(u.verb(), &key, &value), Ok(u.clone()),
            "{} {:?} {:?}",
            u.verb().as_str(),
            String::from_utf8_lossy(&key),
            String::from_utf8_lossy(&value)
        );
        prop_assert_eq!(Update::parse(u.verb(), &prefixed(b"-7@", &key), &value), Ok(u.clone()));
        check_route(&u, &key);
    }

    #[test]
    fn friends_get_keys_round_trip(k in get_key()) {
        let key = k.to_bytes();
        prop_assert_eq!(GetKey::parse(&key), Ok(k.clone()), "{:?}", String::from_utf8_lossy(&key));
        let routed = prefixed(b"3@", &key);
        prop_assert_eq!(GetKey::parse(&routed), Ok(k.clone()));
        check_route(&k, &key);
    }

    #[test]
    fn friends_set_keys_round_trip(k in set_key()) {
        let key = k.to_bytes();
        prop_assert_eq!(SetKey::parse(&key), Ok(k.clone()), "{:?}", String::from_utf8_lossy(&key));
        prop_assert_eq!(SetKey::parse(&prefixed(b"3@", &key)), Ok(k.clone()));
        check_route(&k, &key);
    }

    #[test]
    fn friends_delete_keys_round_trip(k in delete_key()) {
        let key = k.to_bytes();
        prop_assert_eq!(DeleteKey::parse(&key), Ok(k.clone()), "{:?}", String::from_utf8_lossy(&key));
        prop_assert_eq!(DeleteKey::parse(&prefixed(b"3@", &key)), Ok(k.clone()));
        check_route(&k, &key);
    }

    #[test]
    fn friends_incr_keys_round_trip(user in user(), friend in user()) {
        let k = IncrKey { user, friend };
        prop_assert_eq!(IncrKey::parse(&k.to_bytes()), Ok(k));
        check_route(&k, &k.to_bytes());
    }

    /// Keys spelled from grammar tokens (the fuzz dictionaries' idea): whatever parses
    /// re-encodes to a key that parses to the same value, and encoding is idempotent.
    #[test]
    fn whatever_parses_re_encodes(tokens in proptest::collection::vec(token(), 1..10)) {
        let key = tokens.concat().into_bytes();
        if let Ok(q) = Query::parse(&key) {
            prop_assert_eq!(Query::parse(&q.to_bytes()), Ok(q.clone()));
        }
        for verb in [Verb::Set, Verb::Delete, Verb::Incr, Verb::Decr] {
            if let Ok(u) = Update::parse(verb, &key, b"5") {
                let encoded = u.to_bytes();
                prop_assert_eq!(Update::parse(u.verb(), &encoded, &u.value_bytes()), Ok(u));
            }
        }
        if let Ok(k) = GetKey::parse(&key) {
            let bytes = k.to_bytes();
            prop_assert_eq!(GetKey::parse(&bytes), Ok(k));
        }
        if let Ok(k) = SetKey::parse(&key) {
            prop_assert_eq!(SetKey::parse(&k.to_bytes()), Ok(k));
        }
        if let Ok(k) = DeleteKey::parse(&key) {
            prop_assert_eq!(DeleteKey::parse(&k.to_bytes()), Ok(k));
        }
        if let Ok(k) = IncrKey::parse(&key) {
            prop_assert_eq!(IncrKey::parse(&k.to_bytes()), Ok(k));
        }
    }
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "message",
            "post",
            "flags",
            "extra",
            "sublist",
            "sublistpos",
            "peermsglist",
            "peermsglistpos",
            "topmsglist",
            "dialogs",
            "unreadcount",
            "newmsgid",
            "newpostid",
            "timestamp",
            "history",
            "search(",
            "xsearch(",
            "sublists_types",
            "replies",
            "status",
            "statuses",
            "newmsg",
            "sendmsg",
            "readupto",
            "readall",
            "message_text",
            "post_text",
            "peer_msg_id",
            "dialog",
            "first_messages",
            "newpost",
            "repost",
            "friends",
            "friends_masks",
            "friends_full",
            "friendcnt",
            "recent_friends",
            "friend",
            "friend_half",
            "friendreq",
            "requests",
            "privacy",
            "common_friends",
            "common_friends_num",
            "temp",
            "friend_cat",
            "user",
            "album",
            "priv_phone",
            "_",
            "#",
            ",",
            ":",
            "~",
            "@",
            "-",
            ")",
            "+",
            "%20",
            "0",
            "00",
            "1",
            "5",
            "17",
            "-1",
            "2147483647",
            "2147483648",
            "4294967296",
            "9223372036854775808",
        ])
        .prop_map(str::to_owned),
        "[0-9]{1,3}",
        "[a-z_]{1,3}",
    ]
}

#[test]
fn a_full_privacy_batch_round_trips() {
    let mut keys: Vec<String> = (0..256).map(|i| format!("album{i}")).collect();
    let check = GetKey::Check {
        viewer: 0,
        owner: 7,
        keys: PrivacyKeys::new(&keys).unwrap(),
    };
    assert_eq!(GetKey::parse(&check.to_bytes()).unwrap(), check);
    keys.push("album256".into());
    assert!(PrivacyKeys::new(&keys).is_err());
    let too_many = format!("0~7:{}", keys.join(","));
    assert!(GetKey::parse(too_many.as_bytes()).is_err());
}
