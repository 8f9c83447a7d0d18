//! Every key the protocol documents parses and re-encodes to the same bytes, or to its canonical
//! spelling (`docs/protocol/README.md`): the key templates of `docs/protocol/messages.md` and
//! `docs/protocol/friends.md` (`friends<uid>[_<folder>][#slice]`, instantiated with sample ids
//! and every combination of their optional parts) and the keys of their example sessions.
//! A documented key form the grammar does not know, or a grammar name no document shows, fails.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use koshka_keys::friends::{DeleteKey, GetKey, IncrKey, SetKey};
use koshka_keys::messages::{Query, Update};
use koshka_keys::{Encode, Verb};

const MESSAGES_MD: &str = include_str!("../../../docs/protocol/messages.md");
const FRIENDS_MD: &str = include_str!("../../../docs/protocol/friends.md");

/// One documented grammar: its key names per command and sample values for placeholders.
struct Doc {
    name: &'static str,
    text: &'static str,
    names: &'static [(Verb, &'static [&'static str])],
    /// `<placeholder>` → the values to try.
    placeholders: &'static [(&'static str, &'static [&'static str])],
    /// Literal pieces of templates (`#slice`) → the values to try.
    literals: &'static [(&'static str, &'static [&'static str])],
    /// Spellings that encode to another name, per command: `(verb, alias, canonical)`.
    aliases: &'static [(Verb, &'static str, &'static str)],
}

const MESSAGES: Doc = Doc {
    name: "messages.md",
    text: MESSAGES_MD,
    names: &[
        (
            Verb::Get,
            &[
                "message",
                "post",
                "flags",
                "extra",
                "sublist",
                "sublistpos",
                "peermsglist",
                "peermsglistpos",
                "topmsglist",
                "unreadcount",
                "newmsgid",
                "newpostid",
                "timestamp",
                "history",
                "search",
                "xsearch",
                "sublists_types",
                "replies",
                "status",
                "statuses",
            ],
        ),
        (
            Verb::Set,
            &[
                "newmsg",
                "sendmsg",
                "flags",
                "readupto",
                "readall",
                "message_text",
                "peer_msg_id",
                "extra",
                "newpost",
                "repost",
                "status",
            ],
        ),
        (Verb::Delete, &["message", "dialog", "first_messages"]),
        (Verb::Incr, &["flags"]),
        (Verb::Decr, &["flags", "extra"]),
    ],
    placeholders: &[
        ("uid", &["2002"]),
        ("lid", &["17"]),
        ("k", &["3"]),
        ("and", &["131"]),
        ("xor", &["1"]),
        ("peer", &["1000"]),
        ("from", &["1000"]),
        ("to", &["2002"]),
        ("tag", &["7f3a"]),
        ("owner", &["500"]),
        ("id", &["4"]),
        ("post", &["3"]),
        ("ts", &["12"]),
        ("limit", &["20"]),
        ("min_lid", &["5"]),
        ("words", &["hello+world", "%D0%BC%D0%B8%D1%80"]),
        ("min_date", &["1700000000"]),
        ("max_date", &["0"]),
        ("A", &["2"]),
    ],
    literals: &[
        ("#from,to", &["#-1,-20", "#1,5", "#0,0"]),
        ("#mode", &["#5"]),
        (",max_len", &[",200"]),
    ],
    aliases: &[
        (Verb::Get, "post", "message"),
        (Verb::Get, "dialogs", "topmsglist"),
        (Verb::Get, "newpostid", "newmsgid"),
        (Verb::Set, "post_text", "message_text"),
        (Verb::Delete, "post", "message"),
    ],
};

const FRIENDS: Doc = Doc {
    name: "friends.md",
    text: FRIENDS_MD,
    names: &[
        (
            Verb::Get,
            &[
                "friends",
                "friends_masks",
                "friends_full",
                "friendcnt",
                "recent_friends",
                "friend",
                "friendreq",
                "requests",
                "privacy",
                "common_friends",
                "common_friends_num",
            ],
        ),
        (
            Verb::Set,
            &[
                "friend",
                "friend_half",
                "friends",
                "friendreq",
                "privacy",
                "temp",
            ],
        ),
        (
            Verb::Delete,
            &[
                "friend",
                "friend_half",
                "friend_cat",
                "user",
                "friendreq",
                "requests",
                "privacy",
            ],
        ),
        (Verb::Incr, &["friend"]),
        (Verb::Decr, &["friend"]),
    ],
    placeholders: &[
        ("uid", &["10"]),
        ("fid", &["20"]),
        ("folder", &["3", "30"]),
        ("from", &["50"]),
        ("key", &["album17", "priv_phone"]),
        ("key1", &["album17"]),
        ("key2", &["priv_phone"]),
        ("viewer", &["30"]),
        ("owner", &["10"]),
        ("u1", &["10"]),
        ("u2", &["40"]),
        ("u", &["10"]),
        ("f", &["20"]),
        ("x", &["40"]),
        ("list", &["20,40,50", "-7", "-ab_1"]),
        ("tag", &["7", "ab_1", "_x"]),
    ],
    literals: &[("#slice", &["#-5,-1", "#10", "#0", "#0,0"])],
    aliases: &[],
};

/// The code spans of a document outside fenced blocks, with the line each is on.
fn spans(text: &str) -> Vec<(String, &str)> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let parts: Vec<&str> = line.split('`').collect();
        for span in parts.iter().skip(1).step_by(2) {
            out.push(((*span).to_owned(), line));
        }
    }
    out
}

fn verb_of(word: &str) -> Option<Verb> {
    match word {
        "get" => Some(Verb::Get),
        "set" | "add" | "replace" => Some(Verb::Set),
        "delete" => Some(Verb::Delete),
        "incr" => Some(Verb::Incr),
        "decr" => Some(Verb::Decr),
        _ => None,
    }
}

/// Expands the optional `[…]` groups of a template: every combination, outermost first.
fn optional_groups(template: &str) -> Vec<String> {
    let Some(open) = template.find('[') else {
        return vec![template.to_owned()];
    };
    let mut depth = 0;
    let close = template[open..]
        .char_indices()
        .find_map(|(i, c)| {
            depth += match c {
                '[' => 1,
                ']' => -1,
                _ => 0,
            };
            (depth == 0).then_some(open + i)
        })
        .expect("balanced brackets");
    let (before, inner, after) = (
        &template[..open],
        &template[open + 1..close],
        &template[close + 1..],
    );
    let mut out = optional_groups(&format!("{before}{inner}{after}"));
    out.extend(optional_groups(&format!("{before}{after}")));
    out
}

/// Replaces the first `<placeholder>` or literal of `key` by each of its values, recursively.
fn instantiate(doc: &Doc, key: &str) -> Vec<String> {
    for (literal, values) in doc.literals {
        if let Some(at) = key.find(literal) {
            return values
                .iter()
                .flat_map(|v| {
                    instantiate(
                        doc,
                        &format!("{}{v}{}", &key[..at], &key[at + literal.len()..]),
                    )
                })
                .collect();
        }
    }
    let Some(open) = key.find('<') else {
        return vec![key.to_owned()];
    };
    let close = open + key[open..].find('>').expect("closed placeholder");
    let name = &key[open + 1..close];
    let values = doc
        .placeholders
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("{}: no sample value for <{name}> in {key:?}", doc.name))
        .1;
    values
        .iter()
        .flat_map(|v| instantiate(doc, &format!("{}{v}{}", &key[..open], &key[close + 1..])))
        .collect()
}

/// The key name: the leading `[a-z_]` run after an `N@` prefix.
fn name_of(key: &str) -> &str {
    let (_, body) = koshka_keys::idiom::split_route(key.as_bytes());
    let body = std::str::from_utf8(body).unwrap();
    let len = body
        .bytes()
        .take_while(|b| b.is_ascii_lowercase() || *b == b'_')
        .count();
    &body[..len]
}

/// Whether a span's first token is a key of this document (rather than a value, a flag
/// table entry or prose).
fn is_key(doc: &Doc, token: &str) -> bool {
    if token.contains('…') {
        return false;
    }
    if token.starts_with("<viewer>~") {
        return true;
    }
    let name = name_of(token);
    let known = doc.names.iter().any(|(_, names)| names.contains(&name))
        || doc.aliases.iter().any(|(_, alias, _)| *alias == name);
    let rest = &token[token.find(name).unwrap_or(0) + name.len()..];
    known
        && !name.is_empty()
        && (name == "sublists_types"
            || rest.starts_with(['<', '(', '#'])
            || rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// The canonical spelling of a documented key: no routing prefix, aliases renamed.
fn canonical(doc: &Doc, verb: Verb, key: &str) -> String {
    let (_, body) = koshka_keys::idiom::split_route(key.as_bytes());
    let body = std::str::from_utf8(body).unwrap();
    let name = name_of(body);
    for (v, alias, to) in doc.aliases {
        if *v == verb && name == *alias {
            return format!("{to}{}", &body[name.len()..]);
        }
    }
    body.to_owned()
}

/// A value the documented `set` of a messages key accepts.
fn messages_value(name: &str) -> &'static [u8] {
    match name {
        "newmsg" => b"1,7\nsubj\tbody",
        "sendmsg" => b"8\nHi\tHello",
        "readall" => b"",
        "message_text" | "post_text" => b"s\tb",
        "newpost" => b"0,7",
        "repost" => b"5,1,7",
        "status" => b"hi",
        _ => b"3",
    }
}

/// Parses `key` with the grammar of `doc` for `verb` and encodes it back.
fn round_trip(doc: &Doc, verb: Verb, key: &str, value: Option<&[u8]>) -> Result<Vec<u8>, String> {
    let bytes = key.as_bytes();
    let show = |e: koshka_keys::KeyError| format!("{e}");
    if doc.name == MESSAGES.name {
        if verb == Verb::Get {
            let q = Query::parse(bytes).map_err(show)?;
            assert_eq!(Query::parse(&q.to_bytes()).unwrap(), q);
            return Ok(q.to_bytes());
        }
        let value = match verb {
            Verb::Incr | Verb::Decr => &b"3"[..],
            _ => value.unwrap_or_else(|| messages_value(name_of(key))),
        };
        let u = Update::parse(verb, bytes, value).map_err(show)?;
        assert_eq!(
            Update::parse(u.verb(), &u.to_bytes(), &u.value_bytes()).unwrap(),
            u
        );
        return Ok(u.to_bytes());
    }
    let encoded = match verb {
        Verb::Get => GetKey::parse(bytes).map_err(show)?.to_bytes(),
        Verb::Set => SetKey::parse(bytes).map_err(show)?.to_bytes(),
        Verb::Delete => DeleteKey::parse(bytes).map_err(show)?.to_bytes(),
        Verb::Incr | Verb::Decr => IncrKey::parse(bytes).map_err(show)?.to_bytes(),
    };
    Ok(encoded)
}

/// Checks one documented key; records `(verb, name)` as covered.
fn check(
    doc: &Doc,
    verb: Verb,
    key: &str,
    value: Option<&[u8]>,
    covered: &mut BTreeSet<(String, String)>,
) {
    let encoded = round_trip(doc, verb, key, value).unwrap_or_else(|e| {
        panic!(
            "{}: {} {key:?} does not parse: {e}",
            doc.name,
            verb.as_str()
        )
    });
    assert_eq!(
        String::from_utf8_lossy(&encoded),
        canonical(doc, verb, key),
        "{}: {} {key:?} re-encodes to another spelling",
        doc.name,
        verb.as_str()
    );
    covered.insert((verb.as_str().to_owned(), name_of(key).to_owned()));
}

/// The templates and concrete keys in code spans.
fn check_spans(doc: &Doc, covered: &mut BTreeSet<(String, String)>) -> usize {
    let mut keys = 0;
    let mut row_verb: Option<(&str, Verb)> = None;
    for (span, line) in spans(doc.text) {
        let mut words = span.split_whitespace();
        let Some(first) = words.next() else { continue };
        if row_verb.is_some_and(|(l, _)| !std::ptr::eq(l, line)) {
            row_verb = None;
        }
        let (verb, token) = match verb_of(first) {
            Some(verb) => match words.next() {
                Some(token) => (verb, token),
                None => {
                    // A table's command cell: the key follows in the next cell.
                    row_verb = Some((line, verb));
                    continue;
                }
            },
            None => (row_verb.map_or(Verb::Get, |(_, v)| v), first),
        };
        if !is_key(doc, token) {
            continue;
        }
        for variant in optional_groups(token) {
            for key in instantiate(doc, &variant) {
                check(doc, verb, &key, None, covered);
                keys += 1;
            }
        }
    }
    keys
}

/// Decodes the `\n`, `\t`, `\r` escapes of the messages example session.
fn unescape(text: &str) -> Vec<u8> {
    text.replace("\\n", "\n")
        .replace("\\t", "\t")
        .replace("\\r", "\r")
        .into_bytes()
}

/// The requests of the fenced example sessions: `(verb, key, value)`.
fn session_requests(text: &str) -> Vec<(Verb, String, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut fenced = false;
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced || line.starts_with('<') {
            continue;
        }
        let line = line.strip_prefix("> ").unwrap_or(line);
        let (command, data) = line.split_once("\\r\\n").unwrap_or((line, ""));
        let words: Vec<&str> = command.split_whitespace().collect();
        let Some(verb) = words.first().and_then(|w| verb_of(w)) else {
            continue;
        };
        let value = if verb == Verb::Set {
            // memcached: `set <key> <flags> <exptime> <bytes>`, the data on the next line.
            let declared: usize = words[4].parse().unwrap();
            let data = if line.contains("\\r\\n") {
                unescape(data.strip_suffix("\\r\\n").unwrap_or(data))
            } else {
                lines[i + 1].as_bytes().to_vec()
            };
            assert_eq!(data.len(), declared, "declared length of {line:?}");
            Some(data)
        } else {
            None
        };
        out.push((verb, words[1].to_owned(), value));
    }
    out
}

fn check_doc(doc: &Doc) {
    let mut covered = BTreeSet::new();
    let templates = check_spans(doc, &mut covered);
    let mut examples = 0;
    for (verb, key, value) in session_requests(doc.text) {
        check(doc, verb, &key, value.as_deref(), &mut covered);
        examples += 1;
    }
    assert!(
        templates > 40,
        "{}: only {templates} keys from templates",
        doc.name
    );
    assert!(examples > 8, "{}: only {examples} session keys", doc.name);
    let mut missing = Vec::new();
    for (verb, names) in doc.names {
        for name in *names {
            if !covered.contains(&(verb.as_str().to_owned(), (*name).to_owned())) {
                missing.push(format!("{} {name}", verb.as_str()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{}: keys the grammar knows but the document never shows: {missing:?}",
        doc.name
    );
}

#[test]
fn every_documented_messages_key_round_trips() {
    check_doc(&MESSAGES);
}

#[test]
fn every_documented_friends_key_round_trips() {
    check_doc(&FRIENDS);
}

#[test]
fn templates_expand_every_combination() {
    assert_eq!(
        optional_groups("m<uid>[#mode[,max_len]]"),
        vec!["m<uid>#mode,max_len", "m<uid>#mode", "m<uid>"]
    );
    assert_eq!(
        instantiate(&FRIENDS, "friends<uid>#slice").len(),
        FRIENDS.literals[0].1.len()
    );
}
