//! Meta-command replies (`HD`, `VA`, `EN`, `NF`, `NS`, `EX` with return flags), composed from
//! the request's flags and a description of the item, so the server encodes every engine's
//! answers the same way. Built on the low-level composers [`reply::meta_head`],
//! [`reply::meta_flag`] and [`reply::meta_end`] that the reply parser is tested against.

use base64::Engine as _;

use crate::meta::MetaFlags;
use crate::reply;
use crate::response::MetaCode;

/// What a meta reply may report about an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaItem {
    /// Client flags (`f`).
    pub flags: u32,
    /// Cas unique (`c`).
    pub cas: u64,
    /// Absolute expiry, unix seconds, 0 = never (`t` reports the seconds left, or -1).
    pub exptime: u32,
    /// Value length (`s`).
    pub size: usize,
}

/// Appends the return flags `flags` asks for, in request order: `O` (opaque) and `k` (key,
/// base64 with `b`) always; `c`, `f`, `s`, `t` only when `item` is known. `now` is the time
/// `t` counts from.
pub fn return_flags(
    out: &mut Vec<u8>,
    flags: &MetaFlags<'_>,
    key: &[u8],
    item: Option<&MetaItem>,
    now: u32,
) {
    for (letter, token) in flags.iter() {
        match (letter, item) {
            (b'O', _) => reply::meta_flag(out, b'O', token),
            (b'k', _) => {
                if flags.has(b'b') {
                    // As memcached's META_KEY: the base64 key is followed by ` b` at once,
                    // wherever `b` stood in the request.
                    let encoded = base64::engine::general_purpose::STANDARD.encode(key);
                    reply::meta_flag(out, b'k', encoded.as_bytes());
                    reply::meta_flag(out, b'b', b"");
                } else {
                    reply::meta_flag(out, b'k', key);
                }
            }
            (b'c', Some(item)) => {
                out.extend_from_slice(b" c");
                reply::number(out, item.cas);
            }
            (b'f', Some(item)) => {
                out.extend_from_slice(b" f");
                reply::number(out, u64::from(item.flags));
            }
            (b's', Some(item)) => {
                out.extend_from_slice(b" s");
                reply::number(out, item.size as u64);
            }
            (b't', Some(item)) => {
                out.extend_from_slice(b" t");
                ttl(out, item.exptime, now);
            }
            _ => {}
        }
    }
}

/// Appends the seconds left until `exptime` (`-1` for never).
pub fn ttl(out: &mut Vec<u8>, exptime: u32, now: u32) {
    match exptime {
        0 => out.extend_from_slice(b"-1"),
        e => reply::number(out, u64::from(e.saturating_sub(now))),
    }
}

/// Appends an `mg` hit: `VA <len> <flags>\r\n<data>\r\n` with `v`, else `HD <flags>\r\n`.
pub fn hit(
    out: &mut Vec<u8>,
    flags: &MetaFlags<'_>,
    key: &[u8],
    item: &MetaItem,
    value: &[u8],
    now: u32,
) {
    let want_value = flags.has(b'v');
    let code = if want_value {
        MetaCode::Va
    } else {
        MetaCode::Hd
    };
    reply::meta_head(out, code, value.len());
    return_flags(out, flags, key, Some(item), now);
    reply::meta_end(out, want_value.then_some(value));
}

/// Appends a status line: `code` (`HD`, `NF`, `NS`, `EX`, `EN`) with the return flags the
/// request asked for; those that describe the item (`c`, `f`, `s`, `t`) only when `item` is
/// known.
pub fn status(
    out: &mut Vec<u8>,
    code: MetaCode,
    flags: &MetaFlags<'_>,
    key: &[u8],
    item: Option<&MetaItem>,
    now: u32,
) {
    reply::meta_head(out, code, 0);
    return_flags(out, flags, key, item, now);
    reply::meta_end(out, None);
}

/// Appends an `me` (debug) line for an item.
pub fn debug(out: &mut Vec<u8>, key: &[u8], item: &MetaItem, now: u32) {
    let exp = if item.exptime == 0 {
        -1
    } else {
        i64::from(item.exptime) - i64::from(now)
    };
    out.extend_from_slice(b"ME ");
    out.extend_from_slice(key);
    out.extend_from_slice(b" exp=");
    reply::signed(out, exp);
    out.extend_from_slice(b" la=0 cas=");
    reply::number(out, item.cas);
    out.extend_from_slice(b" fetch=no cls=1 size=");
    reply::number(out, item.size as u64);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_and_status_lines() {
        let item = MetaItem {
            flags: 5,
            cas: 9,
            exptime: 130,
            size: 2,
        };
        let mut out = Vec::new();
        hit(
            &mut out,
            &MetaFlags::new(b"v c f t s k O7"),
            b"key",
            &item,
            b"hi",
            100,
        );
        assert_eq!(out, b"VA 2 c9 f5 t30 s2 kkey O7\r\nhi\r\n");
        out.clear();
        hit(&mut out, &MetaFlags::new(b"k b"), b"key", &item, b"hi", 100);
        assert_eq!(out, b"HD ka2V5 b\r\n");
        out.clear();
        status(
            &mut out,
            MetaCode::Nf,
            &MetaFlags::new(b"c O1 k"),
            b"key",
            None,
            0,
        );
        assert_eq!(out, b"NF O1 kkey\r\n");
        out.clear();
        debug(&mut out, b"key", &item, 100);
        assert_eq!(out, b"ME key exp=30 la=0 cas=9 fetch=no cls=1 size=2\r\n");
    }
}
