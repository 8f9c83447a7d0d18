//! LEB128 variable-length integers, the compact integer coding of stem postings (and of the
//! messages engine's blobs and event rings).

/// Appends `value` as LEB128 (7 bits per byte, low first).
pub fn put_var(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads a LEB128 value: `(value, bytes used)`. A truncated or overlong value reads as what
/// its bytes hold (the blobs and rings it reads are written by [`put_var`]).
#[must_use]
#[inline]
pub fn get_var(bytes: &[u8]) -> (u64, usize) {
    // Most postings and counts are below 128: one byte.
    if let Some(&byte) = bytes.first() {
        if byte < 0x80 {
            return (u64::from(byte), 1);
        }
    }
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7F) << (7 * i);
        if byte < 0x80 {
            return (value, i + 1);
        }
    }
    (value, bytes.len().min(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for value in [0, 1, 127, 128, 300, 1 << 20, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_var(&mut out, value);
            assert_eq!(get_var(&out), (value, out.len()));
        }
    }
}
