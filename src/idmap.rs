//! Hash maps keyed by the daemons' own integer ids (sector ids, request
//! and operation ids), with a multiplicative hash instead of SipHash.
//!
//! SipHash protects maps keyed by what a client chooses; these keys are
//! numbers the daemon makes (or 1024 sector ids), so a hash of one
//! multiplication does, and it is on every request's path.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Fibonacci hashing's multiplier (2^64 / golden ratio, odd).
const MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

/// Hashes integers with one multiplication; other input byte by byte.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(MULTIPLIER);
    }
}

/// A `HashMap` keyed by daemon-made integer ids.
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;
/// A `HashSet` of daemon-made integer ids.
pub type IdSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn consecutive_ids_spread_over_high_and_low_bits() {
        let b = BuildHasherDefault::<IdHasher>::default();
        let hashes: HashSet<u64> = (0u32..1024).map(|s| b.hash_one(s)).collect();
        assert_eq!(hashes.len(), 1024);
        // hashbrown takes the bucket from the low bits and a tag from the top 7.
        let low: HashSet<u64> = hashes.iter().map(|h| h & 1023).collect();
        let top: HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert!(low.len() > 600, "low bits: {} distinct", low.len());
        assert_eq!(top.len(), 128, "every 7-bit tag is used");
    }
}
