//! Property tests of the search grammar: `parse(encode(k)) == k` for every query and update
//! value the parsers can produce, a routing prefix changes nothing, the primary owner is the
//! owner the key names; and the reply `Found` round-trips.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use koshka_keys::search::{
    By, Filter, Found, Hit, Order, Query, Search, Update, ITEM_TEXT_BYTES_MAX, ITEM_TYPE_MAX,
    SEARCH_LIMIT_MAX, SEARCH_WINDOW_MAX,
};
use koshka_keys::{Encode, Owners, Route};
use proptest::prelude::*;

fn owner() -> impl Strategy<Value = i64> {
    prop_oneof![
        1..=20i64,
        -20..=-1i64,
        1..=i64::from(i32::MAX),
        -i64::from(i32::MAX)..=-1
    ]
}

fn id() -> impl Strategy<Value = u32> {
    prop_oneof![1..=50u32, 1..=i32::MAX.unsigned_abs()]
}

fn words() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            Just("кошка"),
            Just("cat"),
            Just("a%b"),
            Just("ё+1"),
            Just("x,y()")
        ],
        0..=16,
    )
    .prop_map(|w| w.join(" ").into_bytes())
}

fn search() -> impl Strategy<Value = Search> {
    (
        prop_oneof![Just(By::Rating), Just(By::Date), Just(By::Relevance)],
        any::<bool>(),
        0..=SEARCH_LIMIT_MAX,
        0..=SEARCH_WINDOW_MAX - SEARCH_LIMIT_MAX,
        prop::option::of(1..=ITEM_TYPE_MAX),
        prop::option::of(owner()),
        prop::option::of((any::<u32>(), any::<u32>())),
        words(),
    )
        .prop_map(
            |(by, descending, limit, offset, kind, owner, dates, words)| Search {
                order: Order { by, descending },
                limit,
                offset,
                filter: Filter {
                    kind,
                    owner,
                    dates: dates.map(|(a, b)| (a.min(b), a.max(b))),
                },
                words,
            },
        )
}

proptest! {
    #[test]
    fn searches_round_trip(search in search(), route in any::<i32>()) {
        let query = Query::Search(search.clone());
        let key = query.to_bytes();
        prop_assert_eq!(Query::parse(&key).unwrap(), query.clone());
        let mut routed = format!("{route}@").into_bytes();
        routed.extend_from_slice(&key);
        prop_assert_eq!(Query::parse(&routed).unwrap(), query.clone());
        let owners = search.filter.owner.map_or(Owners::None, Owners::One);
        prop_assert_eq!(query.owners(), owners);
        let per_shard = search.per_shard(8);
        prop_assert_eq!(per_shard.offset, 0);
        prop_assert!(per_shard.limit <= search.window());
    }

    #[test]
    fn items_round_trip(owner in owner(), id in id()) {
        let query = Query::Item { owner, id };
        prop_assert_eq!(Query::parse(&query.to_bytes()).unwrap(), query.clone());
        prop_assert_eq!(query.owners(), Owners::One(owner));
    }

    #[test]
    fn updates_round_trip(
        owner in owner(),
        id in id(),
        kind in 1..=ITEM_TYPE_MAX,
        (date, rating) in (any::<u32>(), any::<u32>()),
        text in prop::collection::vec(any::<u8>(), 0..200),
        delta in any::<i64>(),
    ) {
        for update in [
            Update::SetItem { owner, id, kind, date, rating, text: text.clone() },
            Update::SetRate { owner, id, rating },
        ] {
            let mut value = Vec::new();
            update.encode_value(&mut value);
            prop_assert_eq!(Update::parse_set(&update.to_bytes(), &value).unwrap(), update.clone());
            prop_assert_eq!(update.owners(), Owners::One(owner));
        }
        let delete = Update::DeleteItem { owner, id };
        prop_assert_eq!(Update::parse_delete(&delete.to_bytes()).unwrap(), delete);
        let add = Update::AddRate { owner, id, delta };
        prop_assert_eq!(Update::parse_incr(&add.to_bytes(), delta).unwrap(), add);
    }

    #[test]
    fn replies_round_trip(
        total in any::<u64>(),
        hits in prop::collection::vec((owner(), id(), any::<u32>(), any::<u64>()), 0..50),
    ) {
        let found = Found {
            total,
            hits: hits.into_iter().map(|(owner, id, value, hash)| Hit { owner, id, value, hash }).collect(),
        };
        let mut bytes = Vec::new();
        found.encode(&mut bytes);
        prop_assert_eq!(Found::parse(&bytes).unwrap(), found);
    }
}

#[test]
fn the_longest_text_is_accepted() {
    let mut value = b"1,1,1\t".to_vec();
    value.resize(6 + ITEM_TEXT_BYTES_MAX, b'x');
    assert!(Update::parse_set(b"item1_1", &value).is_ok());
    value.push(b'x');
    assert!(Update::parse_set(b"item1_1", &value).is_err());
}
