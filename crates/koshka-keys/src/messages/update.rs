//! [`Update`]: the `set`, `delete` and `incr`/`decr` keys of the messages/wall grammar, with
//! their values.

use super::query::{field, owner_lid, owner_peer, push_name, push_sub, start};
use super::{encode_text, parse_text, ExtraOp, FlagOp, Text, TAG_BYTES_MAX, USER_FLAGS_MASK};
use crate::idiom::{self, check_id, push_int, push_uint};
use crate::route::{Access, Merge, Owners, Route};
use crate::{Encode, KeyError, Result, Verb};

/// An update, parsed from a `set`, `delete` or `incr`/`decr` key (and value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// `set newmsg<uid>[#<tag>]` = `flags,peer[,peer_lid]\n[subject\t]text`: one side.
    NewMessage {
        /// Mailbox.
        owner: i64,
        /// Handshake tag.
        tag: Vec<u8>,
        /// Flags.
        flags: u32,
        /// Peer.
        peer: i64,
        /// Twin id in the peer's mailbox (0 = unknown).
        peer_lid: u32,
        /// Text.
        text: Text,
    },
    /// `set sendmsg<from>_<to>[#<tag>]` = `flags\n[subject\t]text`: both sides, linked.
    Send {
        /// Sender.
        from: i64,
        /// Recipient.
        to: i64,
        /// Handshake tag.
        tag: Vec<u8>,
        /// Flags common to both copies.
        flags: u32,
        /// Text.
        text: Text,
    },
    /// `set flags<uid>_<lid>` = N; `incr flags… mask` (OR); `decr flags… mask` (AND-NOT).
    Flags {
        /// Mailbox.
        owner: i64,
        /// Message.
        lid: u32,
        /// Operation.
        op: FlagOp,
        /// Operand.
        value: u32,
    },
    /// `set readupto<uid>_<peer>` = lid; `set readall<uid>_<peer>` (lid 0).
    ReadUpto {
        /// Mailbox.
        owner: i64,
        /// Dialog.
        peer: i64,
        /// Last id to mark read, 0 = all.
        lid: u32,
    },
    /// `set message_text<uid>_<lid>` = `[subject\t]text` (alias `post_text…`).
    Edit {
        /// Mailbox.
        owner: i64,
        /// Message.
        lid: u32,
        /// New text.
        text: Text,
    },
    /// `set peer_msg_id<uid>_<lid>` = twin id: link a one-sided copy to its twin.
    PeerLink {
        /// Mailbox.
        owner: i64,
        /// Message.
        lid: u32,
        /// Twin id in the peer's mailbox.
        peer_lid: u32,
    },
    /// `delete message<uid>_<lid>` (wall: `post…`).
    Delete {
        /// Mailbox.
        owner: i64,
        /// Message.
        lid: u32,
    },
    /// `delete dialog<uid>_<peer>`.
    DeleteDialog {
        /// Mailbox.
        owner: i64,
        /// Dialog.
        peer: i64,
    },
    /// `delete first_messages<uid>_<min_lid>`.
    Trim {
        /// Mailbox.
        owner: i64,
        /// Ids below are removed.
        min_lid: u32,
    },
    /// `set extra<uid>_<lid>:<k>` = v; `incr|decr extra… delta`.
    Extra {
        /// Mailbox.
        owner: i64,
        /// Message.
        lid: u32,
        /// Field.
        field: u8,
        /// Operation.
        op: ExtraOp,
        /// Operand.
        value: i64,
    },
    /// Wall: `set newpost<uid>[#<tag>]` = `flags,author[,parent]\n[subject\t]text`.
    NewPost {
        /// Wall.
        owner: i64,
        /// Handshake tag.
        tag: Vec<u8>,
        /// Flags.
        flags: u32,
        /// Author.
        author: i64,
        /// Parent post for a reply (0 = top level).
        parent: u32,
        /// Text.
        text: Text,
    },
    /// Wall: `set repost<uid>[#<tag>]` = `orig_owner,orig_id,author[,flags]`, or the one-sided
    /// `set repost_half<uid>[#<tag>]` = `orig_owner,orig_id,author[,flags]\n<text>` (the copy
    /// alone, its text given: the original lives on another node).
    Repost {
        /// Wall receiving the copy.
        owner: i64,
        /// Handshake tag.
        tag: Vec<u8>,
        /// Who reposts.
        author: i64,
        /// Extra flags of the copy.
        flags: u32,
        /// Original wall.
        orig_owner: i64,
        /// Original post.
        orig_id: u32,
        /// `repost_half`: the original's text, copied by the caller; `None` for `repost`.
        text: Option<Text>,
    },
    /// Wall: `set status<uid>[#<tag>]` = text: a new current status.
    Status {
        /// Wall.
        owner: i64,
        /// Handshake tag.
        tag: Vec<u8>,
        /// Text.
        text: Text,
    },
}

/// Splits `header\ntext` and parses the header as comma-separated integers.
fn header(value: &[u8], min: usize, max: usize) -> Result<(Vec<i64>, &[u8])> {
    let (head, text) = match value.iter().position(|&b| b == b'\n') {
        Some(nl) => (&value[..nl], &value[nl + 1..]),
        None => (value, &value[..0]),
    };
    let head =
        std::str::from_utf8(head).map_err(|_| KeyError::malformed("value header is not ASCII"))?;
    let head = head.trim_end_matches('\r');
    let numbers: Vec<i64> = head
        .split(',')
        .map(|s| s.trim().parse::<i64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| {
            KeyError::malformed(format!("bad value header {head:?}: expected integers"))
        })?;
    if numbers.len() < min || numbers.len() > max {
        return Err(KeyError::malformed(format!(
            "value header {head:?} must have {min}..={max} numbers"
        )));
    }
    Ok((numbers, text))
}

fn user_flags(value: i64) -> Result<u32> {
    match u32::try_from(value) {
        Ok(f) if f & !USER_FLAGS_MASK == 0 => Ok(f),
        _ => Err(KeyError::malformed(format!(
            "flags {value} must be in 0..=65535"
        ))),
    }
}

fn optional_lid(value: i64, what: &str) -> Result<u32> {
    u32::try_from(value)
        .map_err(|_| KeyError::malformed(format!("{what} {value} must be a local id or 0")))
}

fn positive_lid(value: i64, reason: &str) -> Result<u32> {
    match u32::try_from(value) {
        Ok(l) if l > 0 => Ok(l),
        _ => Err(KeyError::malformed(reason)),
    }
}

fn number(value: &[u8]) -> Result<i64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| KeyError::malformed("value must be a decimal integer"))
}

impl Update {
    /// Parses a `set` key and its value.
    ///
    /// # Errors
    /// [`KeyError`] naming what is wrong.
    pub fn parse_set(key: &[u8], value: &[u8]) -> Result<Self> {
        let (name, mut c) = start(key)?;
        let update = match name {
            b"newmsg" | b"newpost" => {
                let owner = c.id("owner id")?;
                let tag = c.tag(TAG_BYTES_MAX)?;
                let (h, text) = header(value, 2, 3)?;
                let flags = user_flags(h[0])?;
                let second = h.get(2).copied().unwrap_or(0);
                if name == b"newmsg" {
                    Self::NewMessage {
                        owner,
                        tag,
                        flags,
                        peer: check_id(h[1], "peer id")?,
                        peer_lid: optional_lid(second, "peer message id")?,
                        text: parse_text(text, true)?,
                    }
                } else {
                    Self::NewPost {
                        owner,
                        tag,
                        flags,
                        author: check_id(h[1], "author id")?,
                        parent: optional_lid(second, "parent post id")?,
                        text: parse_text(text, true)?,
                    }
                }
            }
            b"sendmsg" => {
                let (from, to) = owner_peer(&mut c)?;
                if from == to {
                    return Err(KeyError::malformed("sendmsg to oneself: use newmsg"));
                }
                let tag = c.tag(TAG_BYTES_MAX)?;
                let (h, text) = header(value, 1, 1)?;
                Self::Send {
                    from,
                    to,
                    tag,
                    flags: user_flags(h[0])?,
                    text: parse_text(text, true)?,
                }
            }
            b"flags" => {
                let (owner, lid) = owner_lid(&mut c)?;
                Self::Flags {
                    owner,
                    lid,
                    op: FlagOp::Set,
                    value: user_flags(number(value)?)?,
                }
            }
            b"readupto" | b"readall" => {
                let (owner, peer) = owner_peer(&mut c)?;
                let lid = if name == b"readall" {
                    0
                } else {
                    positive_lid(number(value)?, "readupto value must be a positive local id")?
                };
                Self::ReadUpto { owner, peer, lid }
            }
            b"peer_msg_id" => {
                let (owner, lid) = owner_lid(&mut c)?;
                let peer_lid = positive_lid(
                    number(value)?,
                    "peer_msg_id value must be a positive local id",
                )?;
                Self::PeerLink {
                    owner,
                    lid,
                    peer_lid,
                }
            }
            b"message_text" | b"post_text" => {
                let (owner, lid) = owner_lid(&mut c)?;
                Self::Edit {
                    owner,
                    lid,
                    text: parse_text(value, true)?,
                }
            }
            b"extra" => {
                let (owner, lid) = owner_lid(&mut c)?;
                c.expect(b':')?;
                Self::Extra {
                    owner,
                    lid,
                    field: field(&mut c)?,
                    op: ExtraOp::Set,
                    value: number(value)?,
                }
            }
            b"repost" | b"repost_half" => parse_repost(&mut c, value, name == b"repost_half")?,
            b"status" => Self::Status {
                owner: c.id("owner id")?,
                tag: c.tag(TAG_BYTES_MAX)?,
                text: parse_text(value, false)?,
            },
            _ => {
                return Err(KeyError::unknown(format!(
                    "unknown key for set {:?}",
                    c.show()
                )))
            }
        };
        c.end()?;
        Ok(update)
    }

    /// Parses a `delete` key.
    ///
    /// # Errors
    /// [`KeyError`] naming what is wrong.
    pub fn parse_delete(key: &[u8]) -> Result<Self> {
        let (name, mut c) = start(key)?;
        let update = match name {
            b"message" | b"post" => {
                let (owner, lid) = owner_lid(&mut c)?;
                Self::Delete { owner, lid }
            }
            b"dialog" => {
                let (owner, peer) = owner_peer(&mut c)?;
                Self::DeleteDialog { owner, peer }
            }
            b"first_messages" => {
                let (owner, min_lid) = owner_lid(&mut c)?;
                Self::Trim { owner, min_lid }
            }
            _ => {
                return Err(KeyError::unknown(format!(
                    "unknown key for delete {:?}",
                    c.show()
                )))
            }
        };
        c.end()?;
        Ok(update)
    }

    /// Parses an `incr`/`decr` key (`delta` negative for decr).
    ///
    /// # Errors
    /// [`KeyError`] naming what is wrong.
    pub fn parse_incr(key: &[u8], delta: i64) -> Result<Self> {
        let (name, mut c) = start(key)?;
        let update = match name {
            b"flags" => {
                let (owner, lid) = owner_lid(&mut c)?;
                let op = if delta >= 0 {
                    FlagOp::Or
                } else {
                    FlagOp::AndNot
                };
                let mask = user_flags(i64::try_from(delta.unsigned_abs()).unwrap_or(i64::MAX))?;
                Self::Flags {
                    owner,
                    lid,
                    op,
                    value: mask,
                }
            }
            b"extra" => {
                let (owner, lid) = owner_lid(&mut c)?;
                c.expect(b':')?;
                Self::Extra {
                    owner,
                    lid,
                    field: field(&mut c)?,
                    op: ExtraOp::Add,
                    value: delta,
                }
            }
            _ => {
                return Err(KeyError::unknown(format!(
                    "unknown key for incr/decr {:?}",
                    c.show()
                )))
            }
        };
        c.end()?;
        Ok(update)
    }

    /// Parses a request as it travels: the command, the key and the value (`set`: the data;
    /// `incr`/`decr`: the decimal delta; otherwise ignored). The inverse of [`Update::verb`],
    /// [`Encode::encode`] and [`Update::encode_value`].
    ///
    /// # Errors
    /// [`KeyError`] naming what is wrong; [`KeyError::Unknown`] for `get`.
    pub fn parse(verb: Verb, key: &[u8], value: &[u8]) -> Result<Self> {
        match verb {
            Verb::Set => Self::parse_set(key, value),
            Verb::Delete => Self::parse_delete(key),
            Verb::Incr | Verb::Decr => {
                let magnitude: u64 = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .ok_or_else(|| KeyError::malformed("delta must be a decimal number"))?;
                let delta = if verb == Verb::Incr {
                    i64::try_from(magnitude).ok()
                } else {
                    0i64.checked_sub_unsigned(magnitude)
                };
                let delta = delta.ok_or_else(|| KeyError::malformed("delta out of range"))?;
                Self::parse_incr(key, delta)
            }
            Verb::Get => Err(KeyError::unknown("an update is not read with get")),
        }
    }

    /// The command this update travels with.
    #[must_use]
    pub fn verb(&self) -> Verb {
        match self {
            Self::Delete { .. } | Self::DeleteDialog { .. } | Self::Trim { .. } => Verb::Delete,
            Self::Flags { op: FlagOp::Or, .. } => Verb::Incr,
            Self::Flags {
                op: FlagOp::AndNot,
                value,
                ..
            } => {
                // A zero mask is spelled `incr … 0`: `decr … 0` reads back as an OR of 0.
                if *value == 0 {
                    Verb::Incr
                } else {
                    Verb::Decr
                }
            }
            Self::Extra {
                op: ExtraOp::Add,
                value,
                ..
            } => {
                if *value < 0 {
                    Verb::Decr
                } else {
                    Verb::Incr
                }
            }
            _ => Verb::Set,
        }
    }

    /// Appends the value this update travels with: the data of a `set`, the decimal delta of
    /// an `incr`/`decr`, nothing for a `delete`.
    pub fn encode_value(&self, out: &mut Vec<u8>) {
        match self {
            Self::NewMessage {
                flags,
                peer,
                peer_lid,
                text,
                ..
            } => encode_header_text(out, &[i64::from(*flags), *peer], *peer_lid, text),
            Self::NewPost {
                flags,
                author,
                parent,
                text,
                ..
            } => encode_header_text(out, &[i64::from(*flags), *author], *parent, text),
            Self::Send { flags, text, .. } => {
                encode_header_text(out, &[i64::from(*flags)], 0, text);
            }
            Self::Flags { value, .. } => push_uint(out, u64::from(*value)),
            Self::ReadUpto { lid, .. } => {
                if *lid != 0 {
                    push_uint(out, u64::from(*lid));
                }
            }
            Self::Edit { text, .. } => encode_text(out, text, true),
            Self::PeerLink { peer_lid, .. } => push_uint(out, u64::from(*peer_lid)),
            Self::Extra {
                op: ExtraOp::Set,
                value,
                ..
            } => push_int(out, *value),
            Self::Extra {
                op: ExtraOp::Add,
                value,
                ..
            } => push_uint(out, value.unsigned_abs()),
            Self::Repost {
                orig_owner,
                orig_id,
                author,
                flags,
                text,
                ..
            } => {
                push_int(out, *orig_owner);
                out.push(b',');
                push_uint(out, u64::from(*orig_id));
                out.push(b',');
                push_int(out, *author);
                if *flags != 0 {
                    out.push(b',');
                    push_uint(out, u64::from(*flags));
                }
                if let Some(text) = text {
                    out.push(b'\n');
                    encode_text(out, text, true);
                }
            }
            Self::Status { text, .. } => encode_text(out, text, false),
            Self::Delete { .. } | Self::DeleteDialog { .. } | Self::Trim { .. } => {}
        }
    }

    /// [`Update::encode_value`] into a new vector.
    #[must_use]
    pub fn value_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_value(&mut out);
        out
    }

    /// The mailboxes this update names, as the engine's shard check takes them: the primary
    /// owner and the second one of a send or a repost (the same as [`Route::owners`]).
    #[must_use]
    pub fn owners(&self) -> (i64, Option<i64>) {
        match *self {
            Self::Send { from, to, .. } => (from, Some(to)),
            Self::Repost {
                owner,
                orig_owner,
                ref text,
                ..
            } => (owner, text.is_none().then_some(orig_owner)),
            Self::NewMessage { owner, .. }
            | Self::Flags { owner, .. }
            | Self::ReadUpto { owner, .. }
            | Self::Edit { owner, .. }
            | Self::Delete { owner, .. }
            | Self::DeleteDialog { owner, .. }
            | Self::Trim { owner, .. }
            | Self::PeerLink { owner, .. }
            | Self::Extra { owner, .. }
            | Self::NewPost { owner, .. }
            | Self::Status { owner, .. } => (owner, None),
        }
    }
}

fn parse_repost(c: &mut crate::idiom::Cursor<'_>, value: &[u8], half: bool) -> Result<Update> {
    let owner = c.id("owner id")?;
    let tag = c.tag(TAG_BYTES_MAX)?;
    let (h, text) = header(value, 3, 4)?;
    let orig_id = positive_lid(h[1], "original post id must be a positive local id")?;
    Ok(Update::Repost {
        owner,
        tag,
        orig_owner: check_id(h[0], "original owner id")?,
        orig_id,
        author: check_id(h[2], "author id")?,
        flags: user_flags(h.get(3).copied().unwrap_or(0))?,
        text: if half {
            Some(parse_text(text, true)?)
        } else {
            None
        },
    })
}

/// Appends `n,n[,optional]\n` and the text (the optional number is left out when 0).
fn encode_header_text(out: &mut Vec<u8>, numbers: &[i64], optional: u32, text: &Text) {
    for (i, n) in numbers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_int(out, *n);
    }
    if optional != 0 {
        out.push(b',');
        push_uint(out, u64::from(optional));
    }
    out.push(b'\n');
    encode_text(out, text, true);
}

/// Appends `name<owner>_<lid>`.
fn push_owner_lid(out: &mut Vec<u8>, name: &[u8], owner: i64, lid: u32) {
    push_name(out, name, owner);
    push_sub(out, u64::from(lid));
}

impl Encode for Update {
    /// Appends the key (the value is [`Update::encode_value`], the command [`Update::verb`]).
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::NewMessage { owner, tag, .. } => {
                push_name(out, b"newmsg", *owner);
                idiom::encode_tag(out, tag);
            }
            Self::NewPost { owner, tag, .. } => {
                push_name(out, b"newpost", *owner);
                idiom::encode_tag(out, tag);
            }
            Self::Repost {
                owner, tag, text, ..
            } => {
                let name: &[u8] = if text.is_some() {
                    b"repost_half"
                } else {
                    b"repost"
                };
                push_name(out, name, *owner);
                idiom::encode_tag(out, tag);
            }
            Self::Status { owner, tag, .. } => {
                push_name(out, b"status", *owner);
                idiom::encode_tag(out, tag);
            }
            Self::Send { from, to, tag, .. } => {
                push_name(out, b"sendmsg", *from);
                out.push(b'_');
                push_int(out, *to);
                idiom::encode_tag(out, tag);
            }
            Self::Flags { owner, lid, .. } => push_owner_lid(out, b"flags", *owner, *lid),
            Self::ReadUpto { owner, peer, lid } => {
                let name: &[u8] = if *lid == 0 { b"readall" } else { b"readupto" };
                push_name(out, name, *owner);
                out.push(b'_');
                push_int(out, *peer);
            }
            Self::Edit { owner, lid, .. } => push_owner_lid(out, b"message_text", *owner, *lid),
            Self::PeerLink { owner, lid, .. } => {
                push_owner_lid(out, b"peer_msg_id", *owner, *lid);
            }
            Self::Delete { owner, lid } => push_owner_lid(out, b"message", *owner, *lid),
            Self::DeleteDialog { owner, peer } => {
                push_name(out, b"dialog", *owner);
                out.push(b'_');
                push_int(out, *peer);
            }
            Self::Trim { owner, min_lid } => {
                push_owner_lid(out, b"first_messages", *owner, *min_lid);
            }
            Self::Extra {
                owner, lid, field, ..
            } => {
                push_owner_lid(out, b"extra", *owner, *lid);
                out.push(b':');
                push_uint(out, u64::from(*field));
            }
        }
    }
}

impl Route for Update {
    fn owners(&self) -> Owners {
        match Update::owners(self) {
            (first, Some(second)) => Owners::Two(first, second),
            (first, None) => Owners::One(first),
        }
    }

    fn access(&self) -> Access {
        Access::Write
    }

    fn merge(&self) -> Merge {
        match self {
            // Across shards the proxy sends two `newmsg` and a `peer_msg_id`.
            Self::Send { .. } => Merge::AllOk,
            // Both walls must live on one node; the engine refuses otherwise.
            _ => Merge::Single,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(update: &Update) -> Update {
        Update::parse(update.verb(), &update.to_bytes(), &update.value_bytes()).unwrap()
    }

    #[test]
    fn parses_sets() {
        let set = Update::parse_set(b"newmsg5#ab", b"1,7\nsubj\tbody").unwrap();
        assert!(matches!(
            set,
            Update::NewMessage {
                owner: 5,
                peer: 7,
                flags: 1,
                ..
            }
        ));
        assert_eq!(set.to_bytes(), b"newmsg5#ab");
        assert_eq!(set.value_bytes(), b"1,7\nsubj\tbody");
        assert_eq!(round_trip(&set), set);
        assert!(Update::parse_set(b"sendmsg5_5", b"0\nhi").is_err());
        assert!(matches!(
            Update::parse_set(b"nothing5", b""),
            Err(KeyError::Unknown { .. })
        ));
    }

    #[test]
    fn verbs_and_values() {
        let decr = Update::parse_incr(b"flags5_1", -3).unwrap();
        assert_eq!(decr.verb(), Verb::Decr);
        assert_eq!(decr.value_bytes(), b"3");
        assert_eq!(round_trip(&decr), decr);
        let add = Update::parse_incr(b"extra5_1:2", i64::MIN).unwrap();
        assert_eq!(add.verb(), Verb::Decr);
        assert_eq!(round_trip(&add), add);
        let read = Update::parse_set(b"readall5_7", b"whatever").unwrap();
        assert_eq!(read.to_bytes(), b"readall5_7");
        assert_eq!(round_trip(&read), read);
        let delete = Update::parse_delete(b"post5_3").unwrap();
        assert_eq!(delete.to_bytes(), b"message5_3");
        assert_eq!(delete.verb(), Verb::Delete);
        assert!(Update::parse(Verb::Get, b"message5_3", b"").is_err());
    }

    #[test]
    fn routes() {
        let send = Update::parse_set(b"sendmsg5_8", b"0\nhi").unwrap();
        assert_eq!(Route::owners(&send), Owners::Two(5, 8));
        assert_eq!(send.merge(), Merge::AllOk);
        assert_eq!(send.access(), Access::Write);
        let repost = Update::parse_set(b"repost5", b"6,1,7").unwrap();
        assert_eq!(Route::owners(&repost), Owners::Two(5, 6));
        assert_eq!(repost.merge(), Merge::Single);
    }
}
