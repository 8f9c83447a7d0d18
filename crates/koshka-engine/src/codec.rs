//! The little-endian byte codec every record and snapshot is written with: `put_*` helpers
//! that append to a `Vec<u8>`, and a [`Reader`] that fails with [`Error::Corrupt`] instead of
//! panicking when the bytes run out. Written once here, used by every engine and the binlog.

use crate::{Error, Result};

/// Appends a `u8`.
pub fn put_u8(out: &mut Vec<u8>, v: u8) {
    out.push(v);
}

/// Appends a little-endian `u16`.
pub fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a little-endian `u32`.
pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a little-endian `u64`.
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a little-endian `i64`.
pub fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends `u32` length then the bytes.
///
/// # Panics
/// If `bytes` is 4 GiB or longer (records are bounded far below that).
pub fn put_bytes32(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len());
    assert!(len.is_ok(), "a 4 GiB field cannot be framed");
    put_u32(out, len.unwrap_or(u32::MAX));
    out.extend_from_slice(bytes);
}

/// A cursor over a little-endian payload. Every read fails with [`Error::Corrupt`] naming
/// `what` when fewer bytes remain than it needs.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`; `what` names the structure in errors ("record", "kv snapshot").
    #[must_use]
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }

    fn corrupt(&self, reason: String) -> Error {
        Error::Corrupt {
            what: self.what,
            reason,
        }
    }

    /// Takes the next `n` bytes.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if fewer remain.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(self.corrupt(format!(
                "ends early: need {n} bytes, have {}",
                self.buf.len()
            )));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    /// Reads a `u8`.
    ///
    /// # Errors
    /// [`Error::Corrupt`] on a short buffer.
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    /// Reads a little-endian `u16`.
    ///
    /// # Errors
    /// [`Error::Corrupt`] on a short buffer.
    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian `u32`.
    ///
    /// # Errors
    /// [`Error::Corrupt`] on a short buffer.
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian `u64`.
    ///
    /// # Errors
    /// [`Error::Corrupt`] on a short buffer.
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian `i64`.
    ///
    /// # Errors
    /// [`Error::Corrupt`] on a short buffer.
    pub fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    /// Reads a `u32` length, checks it against `max`, then takes that many bytes.
    ///
    /// # Errors
    /// [`Error::Corrupt`] on a short buffer or a length above `max`.
    pub fn bytes32(&mut self, max: usize) -> Result<&'a [u8]> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(self.corrupt(format!("field of {len} bytes exceeds {max}")));
        }
        self.bytes(len)
    }

    /// Everything not read yet, consuming it.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Bytes not read yet.
    #[must_use]
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Whether everything was read.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Checks that everything was read.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming the number of trailing bytes.
    pub fn finish(&self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.corrupt(format!("{} trailing bytes", self.buf.len())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_short_reads() {
        let mut out = Vec::new();
        put_u8(&mut out, 7);
        put_u16(&mut out, 0x1234);
        put_u32(&mut out, 0xdead_beef);
        put_u64(&mut out, u64::MAX - 1);
        put_i64(&mut out, -5);
        put_bytes32(&mut out, b"hello");
        let mut r = Reader::new(&out, "test");
        assert_eq!(r.u8().unwrap(), 7);
        assert_eq!(r.u16().unwrap(), 0x1234);
        assert_eq!(r.u32().unwrap(), 0xdead_beef);
        assert_eq!(r.u64().unwrap(), u64::MAX - 1);
        assert_eq!(r.i64().unwrap(), -5);
        assert!(r.clone().bytes32(4).is_err(), "length above max");
        assert_eq!(r.bytes32(5).unwrap(), b"hello");
        r.finish().unwrap();
        assert!(matches!(r.u8(), Err(Error::Corrupt { what: "test", .. })));
        let mut short = Reader::new(&out[..3], "test");
        short.u8().unwrap();
        assert!(short.u32().is_err());
        assert!(short.finish().is_err());
    }
}
