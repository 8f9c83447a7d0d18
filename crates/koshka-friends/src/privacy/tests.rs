use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

/// Friend lists: user → (friend → mask with bit 0 set).
pub type Graph = BTreeMap<u32, BTreeMap<u32, u32>>;

/// The obvious evaluator, written from the rule table: first match wins, no match denies,
/// owner allowed, `G` = friend or shares a friend with the owner. With `fof_known == false`
/// the friend-of-friend relation is treated as unknown and both branches are reported.
pub fn reference(rules: &[Rule], owner: u32, viewer: u32, graph: &Graph, fof_known: bool) -> u8 {
    if viewer == owner {
        return b'3';
    }
    let empty = BTreeMap::new();
    let owner_friends = graph.get(&owner).unwrap_or(&empty);
    let viewer_friends = graph.get(&viewer).unwrap_or(&empty);
    let mask = owner_friends.get(&viewer).copied();
    let is_fof = owner_friends.keys().any(|w| viewer_friends.contains_key(w));
    let decide = |fof: bool| {
        for rule in rules {
            let matched = match rule.target {
                Target::User(u) => u == viewer,
                Target::Folder(f) => mask.is_some_and(|m| m & (1 << f) != 0),
                Target::Friends => mask.is_some(),
                Target::FriendsOfFriends => mask.is_some() || fof,
                Target::Everybody => true,
            };
            if matched {
                return rule.allow;
            }
        }
        false
    };
    let (if_fof, if_not) = if fof_known {
        (decide(is_fof), decide(is_fof))
    } else {
        (decide(true), decide(false))
    };
    Answer::from_branches(if_fof, if_not).as_char()
}

fn run(rules: &[Rule], owner: u32, viewer: u32, graph: &Graph, fof_known: bool) -> u8 {
    let empty = BTreeMap::new();
    let owner_friends = graph.get(&owner).unwrap_or(&empty);
    let viewer_friends = graph.get(&viewer).unwrap_or(&empty);
    let mask = owner_friends.get(&viewer).copied().unwrap_or(0);
    let mut calls = 0;
    let mut fof = || {
        calls += 1;
        fof_known.then(|| owner_friends.keys().any(|w| viewer_friends.contains_key(w)))
    };
    let answer = evaluate(rules, owner, Viewer { id: viewer, mask }, &mut fof).as_char();
    assert!(calls <= 1, "friend-of-friend computed {calls} times");
    answer
}

const USERS: u32 = 8;
const FOLDERS: u8 = 4;

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        4 => (1..=USERS).prop_map(Target::User),
        3 => (1..=FOLDERS).prop_map(Target::Folder),
        1 => Just(Target::Friends),
        1 => Just(Target::FriendsOfFriends),
        1 => Just(Target::Everybody),
    ]
}

fn rules() -> impl Strategy<Value = Vec<Rule>> {
    prop::collection::vec(
        (any::<bool>(), target()).prop_map(|(allow, target)| Rule { allow, target }),
        0..14,
    )
}

/// A symmetric friendship graph over users 1..=USERS with random masks on each side.
fn graph() -> impl Strategy<Value = Graph> {
    prop::collection::vec(((1..=USERS), (1..=USERS), 0u32..32, 0u32..32), 0..20).prop_map(|edges| {
        let mut graph = Graph::new();
        let mut seen = BTreeSet::new();
        for (a, b, ma, mb) in edges {
            if a == b || !seen.insert((a.min(b), a.max(b))) {
                continue;
            }
            graph.entry(a).or_default().insert(b, (ma << 1) | 1);
            graph.entry(b).or_default().insert(a, (mb << 1) | 1);
        }
        graph
    })
}

proptest! {
    #[test]
    fn evaluator_matches_reference(rules in rules(), graph in graph(), owner in 1..=USERS) {
        for viewer in 0..=USERS {
            for fof_known in [true, false] {
                prop_assert_eq!(
                    run(&rules, owner, viewer, &graph, fof_known),
                    reference(&rules, owner, viewer, &graph, fof_known),
                    "viewer {} fof_known {} rules {}", viewer, fof_known, render(&rules)
                );
            }
        }
    }

    #[test]
    fn canonical_form_is_idempotent_and_keeps_decisions(
        rules in rules(), graph in graph(), owner in 1..=USERS,
    ) {
        let canonical = canonicalize(&rules, owner);
        prop_assert_eq!(&canonicalize(&canonical, owner), &canonical);
        prop_assert!(canonical.len() <= rules.len());
        let text = render(&canonical);
        prop_assert_eq!(&parse_rules(text.as_bytes()).unwrap(), &canonical);
        prop_assert_eq!(&parse_rules(render(&rules).as_bytes()).unwrap(), &rules);
        for viewer in 0..=USERS {
            for fof_known in [true, false] {
                prop_assert_eq!(
                    reference(&canonical, owner, viewer, &graph, fof_known),
                    reference(&rules, owner, viewer, &graph, fof_known),
                    "viewer {} rules {} canonical {}", viewer, render(&rules), text
                );
            }
        }
    }

    #[test]
    fn parser_never_panics(text in prop::collection::vec(any::<u8>(), 0..40)) {
        let _ = parse_rules(&text);
    }
}

fn canon(text: &str) -> String {
    render(&canonicalize(&parse_rules(text.as_bytes()).unwrap(), 999))
}

#[test]
fn canonical_examples_from_vk() {
    assert_eq!(canon("-3+2"), "+2");
    assert_eq!(canon("-3/0*2"), "");
    assert_eq!(canon("-1+2*3/4*0/G*A"), "-1*3+2/4*0/G*A");
    assert_eq!(canon("+5*A"), "*A");
    assert_eq!(canon("*A+5-6"), "*A");
    assert_eq!(canon("*3*1*3+9+2"), "*1*3+2+9");
    assert_eq!(canon("+999*2"), "*2");
    assert_eq!(canon("/A"), "");
}

#[test]
fn friend_of_friend_answers_when_unknown() {
    let rules = parse_rules(b"*G").unwrap();
    let viewer = Viewer { id: 5, mask: 0 };
    assert_eq!(
        evaluate(&rules, 1, viewer, &mut || None),
        Answer::AllowedIfFriendOfFriend
    );
    let rules = parse_rules(b"/G*A").unwrap();
    assert_eq!(
        evaluate(&rules, 1, viewer, &mut || None),
        Answer::AllowedUnlessFriendOfFriend
    );
    assert_eq!(
        evaluate(&rules, 1, viewer, &mut || Some(true)),
        Answer::Denied
    );
    let friend = Viewer { id: 5, mask: 1 };
    assert_eq!(evaluate(&rules, 1, friend, &mut || None), Answer::Denied);
    assert_eq!(
        evaluate(&rules, 1, Viewer { id: 1, mask: 0 }, &mut || None),
        Answer::Allowed
    );
}

#[test]
fn malformed_rules_are_client_errors() {
    for text in [
        &b"x"[..],
        b"+",
        b"+0",
        b"-2147483648",
        b"*31",
        b"/99999999999",
        b"*B",
        b"+1 -2",
        b"+-1",
    ] {
        assert!(
            matches!(parse_rules(text), Err(Error::Client(_))),
            "{:?}",
            String::from_utf8_lossy(text)
        );
    }
    let many = "+1".repeat(PRIVACY_RULES_MAX + 1);
    assert!(matches!(
        parse_rules(many.as_bytes()),
        Err(Error::Client(_))
    ));
    let long = "+1".repeat(PRIVACY_RULES_TEXT_LEN_MAX);
    assert!(matches!(
        parse_rules(long.as_bytes()),
        Err(Error::Client(_))
    ));
}
