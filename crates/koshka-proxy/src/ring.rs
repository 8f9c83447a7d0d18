//! Consistent hashing for plain kv keys: the ketama continuum as libmemcached
//! (`MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED`, equal weights) and twemproxy (`distribution: ketama`,
//! `hash: md5`) build it, so keys keep their servers when an application moves behind the proxy.
//!
//! Each server named `name` gets 160 points: for `i` in `0..40`, the md5 of `"{name}-{i}"`
//! yields four little-endian `u32` points. A key hashes to the first four bytes of its md5
//! (little-endian) and belongs to the first point at or after that value, wrapping around.

use md5::{Digest, Md5};

/// Points per server with equal weights (libmemcached's and twemproxy's
/// `KETAMA_POINTS_PER_SERVER`).
pub const POINTS_PER_SERVER: usize = 160;
/// Points one md5 digest yields.
const POINTS_PER_HASH: usize = 4;

/// Bits of a hash that index [`Ring`]'s bucket table.
const BUCKET_BITS: u32 = 16;

/// A ketama continuum over servers `0..n`.
#[derive(Debug, Clone)]
pub struct Ring {
    /// `(point, server index)`, sorted by point.
    points: Vec<(u32, u32)>,
    /// For each value `b` of a hash's top [`BUCKET_BITS`] bits, the index of the first point
    /// at or after `b << (32 - BUCKET_BITS)`, plus one entry for the end: a lookup scans only
    /// the points of one bucket (almost always none or one) instead of a binary search.
    buckets: Vec<u32>,
}

impl Ring {
    /// Builds the continuum for `names` (server `i` is `names[i]`).
    ///
    /// # Panics
    /// When `names` is empty (a cluster has at least one shard).
    #[must_use]
    pub fn new(names: &[String]) -> Ring {
        assert!(!names.is_empty(), "a ring needs a server");
        let live = names.len();
        let per_server = points_per_server(live);
        let mut points = Vec::with_capacity(per_server * live);
        for (index, name) in names.iter().enumerate() {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            for pointer in 0..per_server / POINTS_PER_HASH {
                let digest = Md5::digest(format!("{name}-{pointer}").as_bytes());
                for alignment in 0..POINTS_PER_HASH {
                    points.push((word(&digest, alignment), index));
                }
            }
        }
        points.sort_unstable();
        let buckets = (0..=1u64 << BUCKET_BITS)
            .map(|b| {
                let at = points
                    .partition_point(|(point, _)| u64::from(*point) < b << (32 - BUCKET_BITS));
                u32::try_from(at).unwrap_or(u32::MAX)
            })
            .collect();
        Ring { points, buckets }
    }

    /// The server index of `key`.
    #[must_use]
    pub fn lookup(&self, key: &[u8]) -> u32 {
        self.server_of(word(&Md5::digest(key), 0))
    }

    /// The server owning `hash`: the first point at or after it, wrapping around.
    fn server_of(&self, hash: u32) -> u32 {
        let bucket = (hash >> (32 - BUCKET_BITS)) as usize;
        let (from, to) = (
            self.buckets[bucket] as usize,
            self.buckets[bucket + 1] as usize,
        );
        let at = self.points[from..to]
            .iter()
            .position(|(point, _)| *point >= hash)
            .map_or(to, |i| from + i);
        self.points
            .get(at)
            .or_else(|| self.points.first())
            .map_or(0, |(_, index)| *index)
    }
}

/// The points per server as the C implementations compute them, float arithmetic included:
/// `floorf(pct * 160 / 4 * live + 1e-10) * 4` with `pct = 1 / live` (equal weights).
fn points_per_server(live: usize) -> usize {
    // NOTE: live is a shard count (at most SHARDS_MAX), exact in f32.
    #[expect(clippy::cast_precision_loss)]
    let live_f = live as f32;
    let pct = 1.0f32 / live_f;
    let scaled = pct * POINTS_PER_SERVER as f32 / POINTS_PER_HASH as f32 * live_f;
    #[expect(clippy::cast_possible_truncation)]
    let scaled = (f64::from(scaled) + 0.000_000_000_1) as f32;
    // NOTE: a small non-negative number.
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let groups = scaled.floor() as usize;
    groups * POINTS_PER_HASH
}

/// Little-endian `u32` number `alignment` of an md5 digest.
fn word(digest: &[u8], alignment: usize) -> u32 {
    let at = alignment * 4;
    u32::from_le_bytes([digest[at], digest[at + 1], digest[at + 2], digest[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("127.0.0.1:{}", 20000 + i)).collect()
    }

    #[test]
    fn every_server_gets_its_points() {
        for n in (1..=24).chain([32, 64]) {
            assert_eq!(points_per_server(n), POINTS_PER_SERVER, "{n} servers");
            assert_eq!(Ring::new(&names(n)).points.len(), n * POINTS_PER_SERVER);
        }
        // The C float arithmetic rounds 40 groups down to 39 for some sizes; kept, so that
        // placement matches libmemcached and twemproxy there too.
        assert_eq!(points_per_server(25), 156);
    }

    #[test]
    fn keys_spread_and_mostly_stay_when_a_server_joins() {
        let eight = Ring::new(&names(8));
        let nine = Ring::new(&names(9));
        let mut counts = [0usize; 8];
        let mut moved = 0;
        for i in 0..20_000 {
            let key = format!("key:{i}");
            let a = eight.lookup(key.as_bytes());
            counts[a as usize] += 1;
            let b = nine.lookup(key.as_bytes());
            if a != b {
                assert_eq!(b, 8, "a key moves only to the new server");
                moved += 1;
            }
        }
        for count in counts {
            assert!((1500..3500).contains(&count), "{counts:?}");
        }
        assert!((1000..3500).contains(&moved), "{moved} of 20000 moved");
    }

    #[test]
    fn bucket_lookup_equals_a_binary_search_of_the_continuum() {
        for n in [1, 3, 8, 25] {
            let ring = Ring::new(&names(n));
            let search = |hash: u32| {
                let at = ring.points.partition_point(|(point, _)| *point < hash);
                ring.points.get(at).unwrap_or(&ring.points[0]).1
            };
            let mut probes = vec![0, 1, u32::MAX, u32::MAX - 1];
            for (point, _) in &ring.points {
                probes.extend([*point, point.wrapping_sub(1), point.wrapping_add(1)]);
            }
            probes.extend((0..20_000u32).map(|i| i.wrapping_mul(2_654_435_761)));
            for hash in probes {
                assert_eq!(
                    ring.server_of(hash),
                    search(hash),
                    "{n} servers, hash {hash:#x}"
                );
            }
        }
    }

    #[test]
    fn md5_words_are_little_endian() {
        // md5("") = d41d8cd98f00b204e9800998ecf8427e
        let digest = Md5::digest(b"");
        assert_eq!(word(&digest, 0), 0xd98c_1dd4);
        assert_eq!(word(&digest, 3), 0x7e42_f8ec);
    }
}
