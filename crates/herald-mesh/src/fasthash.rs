//! A fast hasher for the mesh's own lookup tables.
//!
//! The standard library's SipHash resists hash flooding, which matters for tables
//! that remote peers fill. The tables here are filled by local code only (declared
//! exchanges and queues, a service's methods, the counters of this handle's
//! correlation ids); remote input only looks entries up. So they use a multiply-rotate
//! hash, a few instructions per word instead of SipHash's rounds, on the path of
//! every call.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// An odd 64-bit constant with well-spread bits (from the golden ratio).
const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// Multiply-rotate hasher; see the module documentation for where it is used.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FastHasher(u64);

impl FastHasher {
    #[inline]
    fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(26) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.mix(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(w));
        }
        // The zero padding of the last word must not make `b"ab"` and `b"ab\0"` equal.
        self.mix(bytes.len() as u64);
    }

    #[inline]
    fn write_u8(&mut self, v: u8) {
        self.mix(u64::from(v));
    }

    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.mix(v);
    }

    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.mix(v as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // Fold the well-mixed high half into the low bits as well: the table picks
        // its bucket from the low bits and its tag from the high ones.
        self.0 ^ (self.0 >> 32)
    }
}

/// A `HashMap` with [`FastHasher`].
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    fn hash<T: std::hash::Hash>(v: T) -> u64 {
        BuildHasherDefault::<FastHasher>::default().hash_one(v)
    }

    #[test]
    fn different_keys_hash_differently() {
        // Counters (the pending map) and short names (queues, methods).
        let mut seen = std::collections::HashSet::new();
        for n in 0u64..10_000 {
            assert!(seen.insert(hash(n)), "counter {n} collides");
        }
        for name in ["add", "echo", "fail", "slow", "emit", "ad", "dda", "add\0"] {
            assert!(seen.insert(hash(name)), "{name:?} collides");
        }
        // Keys that differ only past the first word, or in length.
        assert_ne!(hash("nuropb-rpc-exchange"), hash("nuropb-rpc-exchangf"));
        assert_ne!(hash(""), hash("\0"));
    }

    #[test]
    fn low_bits_spread_for_counters() {
        // 1024 consecutive counters land in most of 1024 buckets (by low bits).
        let buckets: std::collections::HashSet<u64> =
            (0u64..1024).map(|n| hash(n) & 1023).collect();
        assert!(buckets.len() > 600, "only {} buckets used", buckets.len());
    }

    #[test]
    fn a_map_finds_what_was_put_in() {
        let mut m: FastMap<String, usize> = FastMap::default();
        for i in 0..1000 {
            m.insert(format!("q{i}"), i);
        }
        assert!((0..1000).all(|i| m.get(&format!("q{i}")) == Some(&i)));
        assert_eq!(m.get("q1000"), None);
    }
}
