//! Request encoding into a caller-owned buffer.

use crate::error::{Error, Result};

/// Refuses keys that cannot travel in the text protocol. Length is the server's business
/// (compiled keys may be long), so only the framing-breaking bytes are checked here.
pub(crate) fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidKey { reason: "empty" });
    }
    if key.iter().any(|&byte| byte <= b' ' || byte == 0x7f) {
        return Err(Error::InvalidKey {
            reason: "contains whitespace or a control character",
        });
    }
    Ok(())
}

/// Appends a space-separated command line ending in CRLF; empty words are skipped.
pub(crate) fn line(buffer: &mut Vec<u8>, words: &[&str]) {
    let mut first = true;
    for word in words.iter().filter(|word| !word.is_empty()) {
        if !first {
            buffer.push(b' ');
        }
        first = false;
        buffer.extend_from_slice(word.as_bytes());
    }
    buffer.extend_from_slice(b"\r\n");
}

/// `get|gets <key>*` or `gat|gats <exptime> <key>*`.
pub(crate) fn retrieval<K: AsRef<[u8]>>(
    buffer: &mut Vec<u8>,
    command: &str,
    exptime: Option<i64>,
    keys: &[K],
) -> Result<()> {
    if keys.is_empty() {
        return Err(Error::InvalidKey {
            reason: "no keys given",
        });
    }
    for key in keys {
        check_key(key.as_ref())?;
    }
    buffer.extend_from_slice(command.as_bytes());
    if let Some(exptime) = exptime {
        buffer.extend_from_slice(format!(" {exptime}").as_bytes());
    }
    for key in keys {
        buffer.push(b' ');
        buffer.extend_from_slice(key.as_ref());
    }
    buffer.extend_from_slice(b"\r\n");
    Ok(())
}

/// The parts of a storage command.
pub(crate) struct Storage<'a> {
    pub(crate) command: &'a str,
    pub(crate) key: &'a [u8],
    pub(crate) value: &'a [u8],
    pub(crate) flags: u32,
    pub(crate) exptime: i64,
    pub(crate) cas_unique: Option<u64>,
}

/// `<command> <key> <flags> <exptime> <bytes> [<cas>]\r\n<data>\r\n`.
pub(crate) fn storage(buffer: &mut Vec<u8>, storage: &Storage<'_>) -> Result<()> {
    check_key(storage.key)?;
    buffer.extend_from_slice(storage.command.as_bytes());
    buffer.push(b' ');
    buffer.extend_from_slice(storage.key);
    let header = format!(
        " {} {} {}",
        storage.flags,
        storage.exptime,
        storage.value.len()
    );
    buffer.extend_from_slice(header.as_bytes());
    if let Some(cas_unique) = storage.cas_unique {
        buffer.extend_from_slice(format!(" {cas_unique}").as_bytes());
    }
    buffer.extend_from_slice(b"\r\n");
    buffer.extend_from_slice(storage.value);
    buffer.extend_from_slice(b"\r\n");
    Ok(())
}

/// `<command> <key> [<argument>]`.
pub(crate) fn keyed(
    buffer: &mut Vec<u8>,
    command: &str,
    key: &[u8],
    argument: Option<&str>,
) -> Result<()> {
    check_key(key)?;
    buffer.extend_from_slice(command.as_bytes());
    buffer.push(b' ');
    buffer.extend_from_slice(key);
    if let Some(argument) = argument {
        buffer.push(b' ');
        buffer.extend_from_slice(argument.as_bytes());
    }
    buffer.extend_from_slice(b"\r\n");
    Ok(())
}

/// `<command> <key> [<datalen>] <flag>*` followed by the data block when `value` is given.
pub(crate) fn meta(
    buffer: &mut Vec<u8>,
    command: &str,
    key: &[u8],
    value: Option<&[u8]>,
    flags: &[&str],
) -> Result<()> {
    check_key(key)?;
    buffer.extend_from_slice(command.as_bytes());
    buffer.push(b' ');
    buffer.extend_from_slice(key);
    if let Some(value) = value {
        buffer.extend_from_slice(format!(" {}", value.len()).as_bytes());
    }
    for flag in flags {
        if flag.is_empty() || flag.bytes().any(|byte| byte <= b' ') {
            return Err(Error::InvalidKey {
                reason: "meta flag contains whitespace or is empty",
            });
        }
        buffer.push(b' ');
        buffer.extend_from_slice(flag.as_bytes());
    }
    buffer.extend_from_slice(b"\r\n");
    if let Some(value) = value {
        buffer.extend_from_slice(value);
        buffer.extend_from_slice(b"\r\n");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_requests() {
        let mut buffer = Vec::new();
        let storage = Storage {
            command: "cas",
            key: b"k",
            value: b"abc",
            flags: 5,
            exptime: -1,
            cas_unique: Some(9),
        };
        assert!(storage_ok(&mut buffer, &storage));
        assert_eq!(buffer, b"cas k 5 -1 3 9\r\nabc\r\n");
        buffer.clear();
        assert!(retrieval(&mut buffer, "gat", Some(10), &["a", "b"]).is_ok());
        assert_eq!(buffer, b"gat 10 a b\r\n");
        buffer.clear();
        assert!(meta(&mut buffer, "ms", b"k", Some(b"hi"), &["T0", "F3"]).is_ok());
        assert_eq!(buffer, b"ms k 2 T0 F3\r\nhi\r\n");
        buffer.clear();
        line(&mut buffer, &["stats", ""]);
        assert_eq!(buffer, b"stats\r\n");
    }

    fn storage_ok(buffer: &mut Vec<u8>, value: &Storage<'_>) -> bool {
        storage(buffer, value).is_ok()
    }

    #[test]
    fn refuses_bad_keys() {
        for key in [&b""[..], b"a b", b"a\r\nb", b"\x00"] {
            assert!(
                matches!(check_key(key), Err(Error::InvalidKey { .. })),
                "{key:?}"
            );
        }
        assert!(check_key("ключ".as_bytes()).is_ok());
    }
}
