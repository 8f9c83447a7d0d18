//! The VK privacy rule language: parse, canonicalise, render, evaluate.
//!
//! A rule string is a concatenation of rules checked in order; the first rule that matches the
//! viewer decides, no match denies, and the owner is always allowed:
//!
//! | rule  | matches                                   |
//! |-------|-------------------------------------------|
//! | `+u`  | allow user `u`                            |
//! | `-u`  | deny user `u`                             |
//! | `*f`  | allow friends in folder `f` (1..=30)      |
//! | `/f`  | deny friends in folder `f`                |
//! | `*0` `/0` | allow / deny all friends              |
//! | `*G` `/G` | allow / deny friends and friends of friends |
//! | `*A` `/A` | allow / deny everybody                |
//!
//! Rules are stored in a minimal canonical form (see [`canonicalize`]): rules that can never
//! decide anything are dropped and each run of same-polarity rules is sorted (group rules
//! before user rules, each ascending), so `-1+2*3/4*0/G*A` is stored as `-1*3+2/4*0/G*A`.
//!
//! This module knows nothing of partitions or keys; it works on rule slices and on what the
//! caller tells it about the viewer.

use koshka_engine::{Error, Result};

use crate::{FOLDER_MAX, PRIVACY_RULES_MAX, PRIVACY_RULES_TEXT_LEN_MAX, USER_ID_MAX};

/// Who a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// One user by id.
    User(u32),
    /// Friends in one folder, `1..=FOLDER_MAX`.
    Folder(u8),
    /// All friends (`0`).
    Friends,
    /// Friends and friends of friends (`G`).
    FriendsOfFriends,
    /// Everybody (`A`).
    Everybody,
}

/// One privacy rule: a target and whether a match allows or denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rule {
    /// `true` for `+`/`*`, `false` for `-`/`/`.
    pub allow: bool,
    /// Who the rule matches.
    pub target: Target,
}

/// The answer of a privacy check, one character on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `0`: denied.
    Denied,
    /// `1`: allowed only if the viewer is a friend of a friend (not decidable here).
    AllowedIfFriendOfFriend,
    /// `2`: allowed only if the viewer is not a friend of a friend (not decidable here).
    AllowedUnlessFriendOfFriend,
    /// `3`: allowed.
    Allowed,
}

impl Answer {
    /// The wire character (`0`..`3`).
    #[must_use]
    pub fn as_char(self) -> u8 {
        match self {
            Self::Denied => b'0',
            Self::AllowedIfFriendOfFriend => b'1',
            Self::AllowedUnlessFriendOfFriend => b'2',
            Self::Allowed => b'3',
        }
    }

    fn from_branches(if_fof: bool, if_not_fof: bool) -> Self {
        match (if_fof, if_not_fof) {
            (false, false) => Self::Denied,
            (true, false) => Self::AllowedIfFriendOfFriend,
            (false, true) => Self::AllowedUnlessFriendOfFriend,
            (true, true) => Self::Allowed,
        }
    }
}

/// Parses a rule string such as `+5-7*3/G*A`.
///
/// # Errors
/// [`Error::Client`] naming the offending byte offset for an unknown sign, a missing or
/// malformed operand, a zero or too large user id, a folder outside `1..=30`, a string longer
/// than [`PRIVACY_RULES_TEXT_LEN_MAX`] or more than [`PRIVACY_RULES_MAX`] rules.
pub fn parse_rules(text: &[u8]) -> Result<Vec<Rule>> {
    if text.len() > PRIVACY_RULES_TEXT_LEN_MAX {
        return Err(Error::client(format!(
            "privacy rules of {} bytes exceed {PRIVACY_RULES_TEXT_LEN_MAX}",
            text.len()
        )));
    }
    let mut rules = Vec::new();
    let mut at = 0;
    while at < text.len() {
        let sign = text[at];
        let start = at;
        at += 1;
        let digits_end = at + text[at..].iter().take_while(|b| b.is_ascii_digit()).count();
        let rule = match sign {
            b'+' | b'-' => {
                let id = parse_operand_number(&text[at..digits_end], start)?;
                if id == 0 || id > u64::from(USER_ID_MAX) {
                    return Err(Error::client(format!(
                        "privacy rule at offset {start}: user id {id} outside 1..={USER_ID_MAX}"
                    )));
                }
                at = digits_end;
                // NOTE: checked against USER_ID_MAX (a u32) just above.
                #[expect(clippy::cast_possible_truncation)]
                let target = Target::User(id as u32);
                Rule {
                    allow: sign == b'+',
                    target,
                }
            }
            b'*' | b'/' => {
                let target = match text.get(at) {
                    Some(b'G') => {
                        at += 1;
                        Target::FriendsOfFriends
                    }
                    Some(b'A') => {
                        at += 1;
                        Target::Everybody
                    }
                    _ => {
                        let folder = parse_operand_number(&text[at..digits_end], start)?;
                        at = digits_end;
                        match u8::try_from(folder) {
                            Ok(0) => Target::Friends,
                            Ok(f) if f <= FOLDER_MAX => Target::Folder(f),
                            _ => {
                                return Err(Error::client(format!(
                                    "privacy rule at offset {start}: folder {folder} outside \
                                     0..={FOLDER_MAX}"
                                )))
                            }
                        }
                    }
                };
                Rule {
                    allow: sign == b'*',
                    target,
                }
            }
            other => {
                return Err(Error::client(format!(
                    "privacy rule at offset {start}: expected one of + - * / but found {:?}",
                    char::from(other)
                )))
            }
        };
        if rules.len() == PRIVACY_RULES_MAX {
            return Err(Error::client(format!(
                "more than {PRIVACY_RULES_MAX} privacy rules"
            )));
        }
        rules.push(rule);
    }
    Ok(rules)
}

fn parse_operand_number(digits: &[u8], start: usize) -> Result<u64> {
    if digits.is_empty() {
        return Err(Error::client(format!(
            "privacy rule at offset {start}: missing number"
        )));
    }
    if digits.len() > 10 {
        return Err(Error::client(format!(
            "privacy rule at offset {start}: number too long"
        )));
    }
    Ok(digits
        .iter()
        .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0')))
}

/// Renders rules in the wire syntax (`+5-7*3/G*A`).
#[must_use]
pub fn render(rules: &[Rule]) -> String {
    let mut out = Vec::with_capacity(rules.len() * 4);
    render_into(&mut out, rules);
    // Only ASCII signs, digits and letters were written.
    String::from_utf8(out).unwrap_or_else(|_| unreachable!("rules render as ASCII"))
}

/// [`render`] appended to `out` (a reply buffer), allocating nothing.
pub fn render_into(out: &mut Vec<u8>, rules: &[Rule]) {
    for rule in rules {
        let (user_sign, group_sign) = if rule.allow {
            (b'+', b'*')
        } else {
            (b'-', b'/')
        };
        let mut digits = itoa::Buffer::new();
        match rule.target {
            Target::User(id) => {
                out.push(user_sign);
                out.extend_from_slice(digits.format(id).as_bytes());
            }
            Target::Folder(f) => {
                out.push(group_sign);
                out.extend_from_slice(digits.format(f).as_bytes());
            }
            Target::Friends => out.extend_from_slice(&[group_sign, b'0']),
            Target::FriendsOfFriends => out.extend_from_slice(&[group_sign, b'G']),
            Target::Everybody => out.extend_from_slice(&[group_sign, b'A']),
        }
    }
}

/// `a` matches every viewer that `b` matches (friend masks always contain the
/// all-friends bit, so every folder is inside "friends").
fn covers(a: Target, b: Target) -> bool {
    match (a, b) {
        (Target::Everybody, _) => true,
        (Target::FriendsOfFriends, t) => {
            matches!(
                t,
                Target::Folder(_) | Target::Friends | Target::FriendsOfFriends
            )
        }
        (Target::Friends, t) => matches!(t, Target::Folder(_) | Target::Friends),
        (Target::Folder(x), Target::Folder(y)) => x == y,
        (Target::User(x), Target::User(y)) => x == y,
        _ => false,
    }
}

/// Some viewer may match both `a` and `b`: only two different users are disjoint, since any
/// user may be a friend in any set of folders.
fn overlaps(a: Target, b: Target) -> bool {
    match (a, b) {
        (Target::User(x), Target::User(y)) => x == y,
        _ => true,
    }
}

/// Rule `index` can be dropped without changing any decision: either an earlier rule matches
/// everything it matches (it never fires), or every viewer it matches gets the same decision
/// from the rules after it (or from the default deny).
fn removable(rules: &[Rule], index: usize) -> bool {
    let rule = rules[index];
    if rules[..index]
        .iter()
        .any(|earlier| covers(earlier.target, rule.target))
    {
        return true;
    }
    for later in &rules[index + 1..] {
        if !overlaps(later.target, rule.target) {
            continue;
        }
        if later.allow != rule.allow {
            return false;
        }
        if covers(later.target, rule.target) {
            return true;
        }
    }
    // Reached the default, which denies.
    !rule.allow
}

fn sort_rank(target: Target) -> (u8, u32) {
    match target {
        Target::Folder(f) => (0, u32::from(f)),
        Target::Friends => (1, 0),
        Target::FriendsOfFriends => (2, 0),
        Target::Everybody => (3, 0),
        Target::User(id) => (4, id),
    }
}

/// Returns the minimal canonical form of `rules` for `owner`: rules naming the owner are
/// dropped (the owner is always allowed), then rules that can never change a decision are
/// dropped one at a time until none is left, and finally each maximal run of same-polarity
/// rules is sorted (folders ascending, `0`, `G`, `A`, then users ascending) and deduplicated.
/// Sorting a run never changes a decision because every rule of the run decides the same way.
///
/// The result decides exactly as `rules` for every viewer and is a fixed point.
#[must_use]
pub fn canonicalize(rules: &[Rule], owner: u32) -> Vec<Rule> {
    let mut out: Vec<Rule> = rules
        .iter()
        .copied()
        .filter(|r| r.target != Target::User(owner))
        .collect();
    // Each round removes one rule, so the loop runs at most `rules.len()` times.
    while let Some(index) = (0..out.len()).find(|&i| removable(&out, i)) {
        out.remove(index);
    }
    let mut start = 0;
    while start < out.len() {
        let allow = out[start].allow;
        let end = start + out[start..].iter().take_while(|r| r.allow == allow).count();
        out[start..end].sort_by_key(|r| sort_rank(r.target));
        start = end;
    }
    // Removal already dropped duplicates (a duplicate is covered by its twin).
    debug_assert!(out.windows(2).all(|w| w[0] != w[1]));
    out
}

/// What the engine knows about the viewer when it evaluates rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Viewer {
    /// The viewer's id (0 = anonymous).
    pub id: u32,
    /// The viewer's folder mask in the owner's list (bit 0 set), or 0 if not a friend.
    pub mask: u32,
}

/// Evaluates `rules` for `viewer` of `owner`. `friend_of_friend` is called at most once, only
/// when a `G` rule is reached for a viewer who is not a friend; it answers `Some(true|false)`
/// when this node can decide whether the viewer is a friend of a friend, or `None` when the
/// data lives elsewhere, in which case the answer may be
/// [`Answer::AllowedIfFriendOfFriend`] or [`Answer::AllowedUnlessFriendOfFriend`].
pub fn evaluate(
    rules: &[Rule],
    owner: u32,
    viewer: Viewer,
    friend_of_friend: &mut dyn FnMut() -> Option<bool>,
) -> Answer {
    if viewer.id == owner {
        return Answer::Allowed;
    }
    let mut fof: Option<Option<bool>> = None;
    // When the friend-of-friend relation is unknown, the first `G` rule splits evaluation:
    // `if_fof` is its decision, and evaluation continues as if the viewer were not one.
    let mut if_fof: Option<bool> = None;
    for rule in rules {
        let matched = match rule.target {
            Target::User(id) => id == viewer.id,
            Target::Folder(f) => viewer.mask & (1 << f) != 0,
            Target::Friends => viewer.mask != 0,
            Target::Everybody => true,
            Target::FriendsOfFriends => {
                if viewer.mask != 0 {
                    true
                } else {
                    match *fof.get_or_insert_with(&mut *friend_of_friend) {
                        Some(known) => known,
                        None => {
                            if if_fof.is_none() {
                                if_fof = Some(rule.allow);
                            }
                            false
                        }
                    }
                }
            }
        };
        if matched {
            return Answer::from_branches(if_fof.unwrap_or(rule.allow), rule.allow);
        }
    }
    Answer::from_branches(if_fof.unwrap_or(false), false)
}

#[cfg(test)]
pub(crate) mod tests;
