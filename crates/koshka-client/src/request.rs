//! Requests of the typed API: validate what the caller passed, then append the request with
//! [`koshka_proto::encode`]. Nothing is written when validation fails, so a refused request
//! never leaves half a command in a pipeline.

use koshka_proto::encode::{self, MetaCommand, Retrieval, Store};
use koshka_proto::StoreMode;

use crate::error::{Error, Result};

/// Refuses keys that cannot travel in the text protocol ([`encode::check_key`]).
fn check_key(key: &[u8]) -> Result<()> {
    encode::check_key(key).map_err(|bad| Error::InvalidKey {
        reason: bad.reason(),
    })
}

/// `get|gets <key>*` or `gat|gats <exptime> <key>*`.
pub(crate) fn retrieval<K: AsRef<[u8]>>(
    out: &mut Vec<u8>,
    command: Retrieval,
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
    encode::retrieval(out, command, keys.iter().map(AsRef::as_ref));
    Ok(())
}

/// The store fields of one typed call (replies wanted).
pub(crate) fn store(mode: StoreMode, flags: u32, exptime: i64, cas_unique: u64) -> Store {
    Store {
        flags,
        exptime,
        cas_unique,
        ..Store::new(mode)
    }
}

/// `<mode> <key> <flags> <exptime> <bytes>[ <cas>]\r\n<data>\r\n`.
pub(crate) fn storage(out: &mut Vec<u8>, store: &Store, key: &[u8], value: &[u8]) -> Result<()> {
    check_key(key)?;
    encode::store(out, store, key, value);
    Ok(())
}

/// `delete <key>`.
pub(crate) fn delete(out: &mut Vec<u8>, key: &[u8]) -> Result<()> {
    check_key(key)?;
    encode::delete(out, key, false);
    Ok(())
}

/// `incr|decr <key> <delta>`.
pub(crate) fn arith(out: &mut Vec<u8>, key: &[u8], incr: bool, delta: u64) -> Result<()> {
    check_key(key)?;
    encode::arith(out, key, incr, delta, false);
    Ok(())
}

/// `touch <key> <exptime>`.
pub(crate) fn touch(out: &mut Vec<u8>, key: &[u8], exptime: i64) -> Result<()> {
    check_key(key)?;
    encode::touch(out, key, exptime, false);
    Ok(())
}

/// `stats[ <group>]`.
pub(crate) fn stats(out: &mut Vec<u8>, group: &[u8]) -> Result<()> {
    encode::stats(out, group);
    Ok(())
}

/// `version`.
pub(crate) fn version(out: &mut Vec<u8>) -> Result<()> {
    encode::version(out);
    Ok(())
}

/// `flush_all[ <delay>]`.
pub(crate) fn flush_all(out: &mut Vec<u8>, delay: Option<u32>) -> Result<()> {
    encode::flush_all(out, delay.map(i64::from), false);
    Ok(())
}

/// `mn`.
pub(crate) fn meta_noop(out: &mut Vec<u8>) -> Result<()> {
    encode::meta_noop(out);
    Ok(())
}

/// `mg|ms|md|ma <key>[ <datalen>] <flag>*`, then the data block for `ms`.
pub(crate) fn meta(
    out: &mut Vec<u8>,
    command: MetaCommand,
    key: &[u8],
    flags: &[&str],
    data: Option<&[u8]>,
) -> Result<()> {
    check_key(key)?;
    for flag in flags {
        // A flag token obeys the key rule: one non-empty token of printable bytes.
        if encode::check_key(flag.as_bytes()).is_err() {
            return Err(Error::InvalidKey {
                reason: "meta flag contains whitespace or is empty",
            });
        }
    }
    encode::meta(out, command, key, flags, data);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_requests() {
        let mut buffer = Vec::new();
        let cas = store(StoreMode::Cas, 5, -1, 9);
        assert!(storage(&mut buffer, &cas, b"k", b"abc").is_ok());
        assert_eq!(buffer, b"cas k 5 -1 3 9\r\nabc\r\n");
        buffer.clear();
        assert!(retrieval(&mut buffer, Retrieval::Gat(10), &["a", "b"]).is_ok());
        assert_eq!(buffer, b"gat 10 a b\r\n");
        buffer.clear();
        assert!(meta(
            &mut buffer,
            MetaCommand::Set,
            b"k",
            &["T0", "F3"],
            Some(b"hi")
        )
        .is_ok());
        assert_eq!(buffer, b"ms k 2 T0 F3\r\nhi\r\n");
        buffer.clear();
        assert!(stats(&mut buffer, b"").is_ok());
        assert_eq!(buffer, b"stats\r\n");
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
        // A refused request writes nothing.
        let mut buffer = b"get a\r\n".to_vec();
        let refused = meta(&mut buffer, MetaCommand::Get, b"k", &["v", "a b"], None);
        assert!(matches!(refused, Err(Error::InvalidKey { .. })));
        assert!(retrieval(&mut buffer, Retrieval::Get, &["ok", ""]).is_err());
        assert_eq!(buffer, b"get a\r\n");
    }
}
