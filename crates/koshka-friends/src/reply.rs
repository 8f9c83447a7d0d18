//! Reply formatting: comma-separated decimal lists without allocation per number.

/// Appends the decimal form of `n`.
pub fn push_u32(out: &mut Vec<u8>, n: u32) {
    koshka_keys::idiom::push_uint(out, u64::from(n));
}

/// Appends `,` and the decimal form of `n`.
pub fn push_item(out: &mut Vec<u8>, n: u32) {
    out.push(b',');
    push_u32(out, n);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers() {
        let mut out = Vec::new();
        push_u32(&mut out, 0);
        push_item(&mut out, 4_294_967_295);
        push_item(&mut out, 10);
        assert_eq!(out, b"0,4294967295,10");
    }
}
