//! Flag tokens of the meta commands (`mg key v c T30 O123`).
//!
//! A meta command line is `<cmd> <key> [<datalen>] <flag>*`. Each flag is one ASCII letter,
//! optionally followed by a token (`T30`, `Oabc`). The flags are kept as the raw rest of the
//! line, so parsing allocates nothing, and are validated once by [`MetaFlags::validate`].

/// Most flags accepted on one meta command line; more is a `CLIENT_ERROR`.
pub const META_FLAGS_MAX: usize = 32;

/// Longest opaque (`O`) token, as in memcached.
pub const META_OPAQUE_LEN_MAX: usize = 32;

/// The flags of one meta command, in the order the client sent them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaFlags<'a> {
    raw: &'a [u8],
}

impl<'a> MetaFlags<'a> {
    /// Wraps the flag part of a line (space separated tokens).
    #[must_use]
    pub fn new(raw: &'a [u8]) -> Self {
        Self { raw }
    }

    /// The raw flag bytes.
    #[must_use]
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Iterates the flags as `(letter, token)` in request order.
    pub fn iter(&self) -> impl Iterator<Item = (u8, &'a [u8])> + 'a {
        self.raw
            .split(|b| *b == b' ')
            .filter(|t| !t.is_empty())
            .map(|t| (t[0], &t[1..]))
    }

    /// Whether flag `letter` is present.
    #[must_use]
    pub fn has(&self, letter: u8) -> bool {
        self.iter().any(|(l, _)| l == letter)
    }

    /// The token of flag `letter`, if present.
    #[must_use]
    pub fn token(&self, letter: u8) -> Option<&'a [u8]> {
        self.iter().find(|(l, _)| *l == letter).map(|(_, t)| t)
    }

    /// The token of flag `letter` as a number.
    ///
    /// # Errors
    /// `Err(())` when the flag is present but its token is not a number.
    #[expect(clippy::result_unit_err)]
    pub fn number<T: std::str::FromStr>(&self, letter: u8) -> Result<Option<T>, ()> {
        match self.token(letter) {
            None => Ok(None),
            Some(t) => std::str::from_utf8(t)
                .ok()
                .and_then(|s| s.parse().ok())
                .map(Some)
                .ok_or(()),
        }
    }

    /// Checks that every flag is one of `allowed`, that there are not too many, and that opaque
    /// tokens are short.
    ///
    /// # Errors
    /// A static reason suitable for `CLIENT_ERROR`.
    pub fn validate(&self, allowed: &[u8]) -> Result<(), &'static str> {
        let mut count = 0;
        for (letter, token) in self.iter() {
            count += 1;
            if count > META_FLAGS_MAX {
                return Err("too many flags");
            }
            if !allowed.contains(&letter) {
                return Err("invalid flag");
            }
            if letter == b'O' && token.len() > META_OPAQUE_LEN_MAX {
                return Err("opaque token too long");
            }
        }
        Ok(())
    }
}

/// Flags `mg` accepts.
pub const MG_FLAGS: &[u8] = b"bcfhklOqstvT";
/// Flags `ms` accepts.
pub const MS_FLAGS: &[u8] = b"bcCFkOqTM";
/// Flags `md` accepts.
pub const MD_FLAGS: &[u8] = b"bCkOq";
/// Flags `ma` accepts.
pub const MA_FLAGS: &[u8] = b"bCNJDTMOqtckv";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iterates_in_order() {
        let f = MetaFlags::new(b"v  c T30 O12");
        let all: Vec<_> = f.iter().collect();
        assert_eq!(
            all,
            vec![
                (b'v', &b""[..]),
                (b'c', &b""[..]),
                (b'T', &b"30"[..]),
                (b'O', &b"12"[..])
            ]
        );
        assert_eq!(f.number::<i64>(b'T'), Ok(Some(30)));
        assert_eq!(f.number::<i64>(b'F'), Ok(None));
        assert!(f.validate(MG_FLAGS).is_ok());
        assert_eq!(
            MetaFlags::new(b"zz").validate(MG_FLAGS),
            Err("invalid flag")
        );
    }
}
