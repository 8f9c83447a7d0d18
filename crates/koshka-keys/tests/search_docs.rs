//! Every key of `docs/protocol/search.md`'s example session parses with
//! `koshka_keys::search` and re-encodes to the same bytes (the session is written in canonical
//! form), except those the session shows answered with `CLIENT_ERROR`, which the grammar
//! refuses; every key template of the keys table names a form the grammar knows.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use koshka_keys::search::{Query, Update};
use koshka_keys::Encode;

const SEARCH_MD: &str = include_str!("../../../docs/protocol/search.md");

#[test]
fn the_example_session_parses_in_canonical_form() {
    let session = SEARCH_MD
        .split("## Example session")
        .nth(1)
        .and_then(|s| s.split("```").nth(1))
        .expect("an example session");
    let lines: Vec<&str> = session.lines().collect();
    let mut checked = 0;
    for (at, line) in lines.iter().enumerate() {
        let mut words = line.split(' ');
        let (Some(verb), Some(key)) = (words.next(), words.next()) else {
            continue;
        };
        let next = |n: usize| lines.get(at + n).copied().unwrap_or_default();
        let (parsed, refused) = match verb {
            "get" => (
                Query::parse(key.as_bytes()).map(|q| q.to_bytes()),
                next(1).starts_with("CLIENT_ERROR"),
            ),
            "set" => (
                Update::parse_set(key.as_bytes(), next(1).as_bytes()).map(|u| u.to_bytes()),
                next(2).starts_with("CLIENT_ERROR"),
            ),
            "delete" => (
                Update::parse_delete(key.as_bytes()).map(|u| u.to_bytes()),
                false,
            ),
            "incr" | "decr" => (
                Update::parse_incr(key.as_bytes(), 1).map(|u| u.to_bytes()),
                false,
            ),
            _ => continue,
        };
        if refused {
            assert!(parsed.is_err(), "{line}: the session shows CLIENT_ERROR");
        } else {
            assert_eq!(parsed.unwrap(), key.as_bytes(), "{line}");
        }
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} keys in the session");
}

#[test]
fn every_key_form_of_the_table_is_known() {
    for (template, key) in [
        ("`item<owner>_<id>`", "item-3_7"),
        ("`rate<owner>_<id>`", "rate5_1"),
        (
            "`search#<order><limit>[,<offset>][t<type>][o<owner>][d<from>,<to>](<words>)`",
            "search#R10,5[t1][o2][d1,2](a)",
        ),
    ] {
        assert!(SEARCH_MD.contains(template), "{template} is documented");
        assert!(
            Query::parse(key.as_bytes()).is_ok()
                || Update::parse_delete(key.as_bytes()).is_ok()
                || Update::parse_incr(key.as_bytes(), 1).is_ok(),
            "{key}"
        );
    }
}
