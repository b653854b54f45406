//! Concurrent maps keyed by integers pgsluice issues itself (client ids, cancel keys):
//! hashed with one multiplication instead of SipHash, which was a noticeable part of a
//! login's cost. Only pgsluice chooses the keys that are inserted, so the maps need no
//! protection against keys crafted to collide.

use std::hash::{BuildHasherDefault, Hasher};

/// Fibonacci hashing of an integer key: the multiplication spreads consecutive ids over
/// the high bits, which DashMap uses to pick a shard.
#[derive(Default, Clone, Copy)]
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

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_i32(&mut self, n: i32) {
        self.write_u64(u64::from(n as u32));
    }
}

/// A `DashMap` keyed by pgsluice-issued integers.
pub type IdMap<K, V> = dashmap::DashMap<K, V, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_ids_spread_over_the_high_bits() {
        let tops: std::collections::HashSet<u64> = (1..=64u64)
            .map(|id| {
                let mut h = IdHasher::default();
                h.write_u64(id);
                h.finish() >> 58
            })
            .collect();
        assert!(tops.len() > 32, "only {} distinct top bits", tops.len());
    }

    #[test]
    fn map_works() {
        let m: IdMap<u64, &str> = IdMap::default();
        m.insert(7, "seven");
        assert_eq!(m.get(&7).map(|v| *v), Some("seven"));
        assert!(m.get(&8).is_none());
    }
}
