//! Reply formatting: comma-separated decimal lists without allocation per number.

/// Appends the decimal form of `n`.
pub fn push_u32(out: &mut Vec<u8>, mut n: u32) {
    let mut buf = [0u8; 10];
    let mut at = buf.len();
    loop {
        at -= 1;
        let digit = (n % 10) as u8;
        buf[at] = b'0' + digit;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[at..]);
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
