//! Key choice: which key index a request touches, and how an index becomes key bytes; and
//! how the social workloads spell koshka's compiled keys (always through `koshka-keys`).

use std::cell::RefCell;

use koshka_keys::Encode;
use rand::rngs::SmallRng;
use rand::Rng;

/// Longest key the memcached text protocol accepts; longer `--key-size` values are refused.
pub const KEY_SIZE_MAX: usize = 250;

/// How key indexes are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// Zipfian: key 0 hottest, then 1, … (YCSB's generator, exponent `--zipf-exponent`).
    Zipf,
}

/// Draws key indexes in `0..keys`. Precomputed once, shared read-only by all connections.
#[derive(Debug, Clone)]
pub enum KeyChooser {
    /// Uniform over `0..keys`.
    Uniform {
        /// Key space size.
        keys: u64,
    },
    /// YCSB zipfian over `0..keys` (Gray et al., "Quickly generating billion-record
    /// synthetic databases").
    Zipf {
        /// Key space size.
        keys: u64,
        /// The exponent, in (0, 1).
        theta: f64,
        /// zeta(keys, theta).
        zeta_n: f64,
        /// 1 / (1 - theta).
        alpha: f64,
        /// The generator's eta constant.
        eta: f64,
    },
}

fn zeta(count: u64, theta: f64) -> f64 {
    (1..=count)
        .map(|rank| 1.0 / (rank as f64).powf(theta))
        .sum()
}

impl KeyChooser {
    /// Builds a chooser; zipf precomputes zeta over the key space (O(keys), once).
    ///
    /// # Errors
    ///
    /// If `keys` is 0 or the zipf exponent is not in (0, 1).
    pub fn new(distribution: Distribution, keys: u64, theta: f64) -> anyhow::Result<KeyChooser> {
        anyhow::ensure!(keys > 0, "--keys must be at least 1");
        match distribution {
            Distribution::Uniform => Ok(KeyChooser::Uniform { keys }),
            Distribution::Zipf => {
                anyhow::ensure!(
                    theta > 0.0 && theta < 1.0,
                    "--zipf-exponent must be in (0, 1), got {theta}"
                );
                let zeta_n = zeta(keys, theta);
                let zeta_2 = zeta(2.min(keys), theta);
                let alpha = 1.0 / (1.0 - theta);
                let eta = (1.0 - (2.0 / keys as f64).powf(1.0 - theta)) / (1.0 - zeta_2 / zeta_n);
                Ok(KeyChooser::Zipf {
                    keys,
                    theta,
                    zeta_n,
                    alpha,
                    eta,
                })
            }
        }
    }

    /// Draws one key index.
    #[inline]
    pub fn next(&self, rng: &mut SmallRng) -> u64 {
        match *self {
            KeyChooser::Uniform { keys } => rng.gen_range(0..keys),
            KeyChooser::Zipf {
                keys,
                theta,
                zeta_n,
                alpha,
                eta,
            } => {
                let u: f64 = rng.gen();
                let uz = u * zeta_n;
                if uz < 1.0 {
                    return 0;
                }
                if uz < 1.0 + 0.5f64.powf(theta) {
                    return 1.min(keys - 1);
                }
                let rank = (keys as f64 * (eta * u - eta + 1.0).powf(alpha)) as u64;
                rank.min(keys - 1)
            }
        }
    }
}

/// Writes key bytes for indexes into fixed-size slots without allocating: `key:` then the
/// zero-padded index filling the slot (digits only when the slot is too small for the prefix).
#[derive(Debug, Clone, Copy)]
pub struct KeyFormat {
    size: usize,
    prefix_len: usize,
}

const KEY_PREFIX: &[u8] = b"key:";

impl KeyFormat {
    /// A format for `size`-byte keys over `keys` indexes.
    ///
    /// # Errors
    ///
    /// If `size` exceeds [`KEY_SIZE_MAX`] or cannot hold the largest index.
    pub fn new(size: usize, keys: u64) -> anyhow::Result<KeyFormat> {
        let digits = keys.saturating_sub(1).max(1).ilog10() as usize + 1;
        anyhow::ensure!(
            size <= KEY_SIZE_MAX,
            "--key-size {size} exceeds {KEY_SIZE_MAX}"
        );
        anyhow::ensure!(
            size >= digits,
            "--key-size {size} cannot hold {keys} distinct keys"
        );
        let prefix_len = if size >= digits + KEY_PREFIX.len() {
            KEY_PREFIX.len()
        } else {
            0
        };
        Ok(KeyFormat { size, prefix_len })
    }

    /// The key length in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Fills `slot` (exactly [`KeyFormat::size`] bytes) with the key for `index`.
    #[inline]
    pub fn write(&self, slot: &mut [u8], mut index: u64) {
        debug_assert_eq!(slot.len(), self.size);
        slot[..self.prefix_len].copy_from_slice(&KEY_PREFIX[..self.prefix_len]);
        for byte in slot[self.prefix_len..].iter_mut().rev() {
            *byte = b'0' + (index % 10) as u8;
            index /= 10;
        }
    }
}

/// Encodes a compiled key into a per-thread scratch buffer and hands the bytes to `write`, so
/// spelling a key costs no allocation once the buffer has grown. `write` must not call
/// `with_key` again.
pub(crate) fn with_key<R>(key: &impl Encode, write: impl FnOnce(&[u8]) -> R) -> R {
    thread_local! {
        static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(256));
    }
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        scratch.clear();
        key.encode(&mut scratch);
        write(&scratch)
    })
}

/// A workload user id as a messages owner id (ids are far below `i64::MAX`).
pub(crate) fn owner_id(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

/// A workload user id as a friends user id (the workload checks `--users` fits `u32`).
pub(crate) fn user_id(id: u64) -> u32 {
    u32::try_from(id).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn keys_are_fixed_size_and_distinct() -> anyhow::Result<()> {
        let format = KeyFormat::new(10, 1000)?;
        let mut slot = [0u8; 10];
        format.write(&mut slot, 42);
        assert_eq!(&slot, b"key:000042");
        let tight = KeyFormat::new(3, 1000)?;
        let mut slot = [0u8; 3];
        tight.write(&mut slot, 999);
        assert_eq!(&slot, b"999");
        assert!(KeyFormat::new(2, 1000).is_err());
        assert!(KeyFormat::new(251, 10).is_err());
        Ok(())
    }

    #[test]
    fn compiled_keys_are_spelled_by_the_grammar() {
        let key = koshka_keys::friends::GetKey::CommonFriends { user: 3, other: 4 };
        assert_eq!(with_key(&key, <[u8]>::to_vec), b"common_friends3,4");
        let key = koshka_keys::messages::Query::Timestamp { owner: owner_id(9) };
        assert_eq!(with_key(&key, <[u8]>::to_vec), b"timestamp9");
        assert_eq!(user_id(u64::MAX), u32::MAX);
    }

    #[test]
    fn zipf_stays_in_range_and_is_skewed() -> anyhow::Result<()> {
        let keys = 10_000;
        let chooser = KeyChooser::new(Distribution::Zipf, keys, 0.99)?;
        let mut rng = SmallRng::seed_from_u64(7);
        let mut hot = 0;
        for _ in 0..100_000 {
            let index = chooser.next(&mut rng);
            assert!(index < keys);
            hot += u32::from(index < 10);
        }
        // The 0.1 % hottest keys get a large share of the draws.
        assert!(hot > 20_000, "hot draws {hot}");
        let uniform = KeyChooser::new(Distribution::Uniform, 1, 0.99)?;
        assert_eq!(uniform.next(&mut rng), 0);
        Ok(())
    }
}
