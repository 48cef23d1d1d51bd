//! Small shared helpers: a deterministic fast hasher (so that map iteration, and with it every
//! snapshot, is the same from run to run), medians, and human formatting of numbers.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
};

/// Multiply-rotate hasher over integer keys. Not DoS-resistant (keys come from our own kernel
/// probes, not from the network), but fast and deterministic.
#[derive(Default, Clone, Copy)]
pub struct FastHasher(u64);

const K: u64 = 0x517c_c1b7_2722_0a95;

impl Hasher for FastHasher {
    #[inline]
    fn finish(&self) -> u64 {
        // Final avalanche so that low bits (used by hashbrown's buckets) depend on all input.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(w));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.write_u64(i as u64)
    }
    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.write_u64(i as u64)
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.write_u64(i as u64)
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(K);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64)
    }
    #[inline]
    fn write_i32(&mut self, i: i32) {
        self.write_u64(i as u32 as u64)
    }
    #[inline]
    fn write_i64(&mut self, i: i64) {
        self.write_u64(i as u64)
    }
}

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// A stable 64-bit mix of several words (communicator ids, signatures).
pub fn mix(words: &[u64]) -> u64 {
    let mut h = FastHasher(0x2545_f491_4f6c_dd1d);
    for w in words {
        h.write_u64(*w);
    }
    h.finish()
}

/// Median of a scratch slice (reorders it). 0 for an empty slice.
pub fn median(v: &mut [u64]) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let mid = v.len() / 2;
    *v.select_nth_unstable(mid).1
}

/// Median of signed values (reorders the slice).
pub fn median_i64(v: &mut [i64]) -> i64 {
    if v.is_empty() {
        return 0;
    }
    let mid = v.len() / 2;
    *v.select_nth_unstable(mid).1
}

/// "19.8 ms", "940 µs", "1.25 s".
pub fn fmt_ns(ns: u64) -> String {
    let f = ns as f64;
    if ns >= 10_000_000_000 {
        format!("{:.1} s", f / 1e9)
    } else if ns >= 1_000_000_000 {
        format!("{:.2} s", f / 1e9)
    } else if ns >= 1_000_000 {
        format!("{:.1} ms", f / 1e6)
    } else if ns >= 1_000 {
        format!("{:.0} µs", f / 1e3)
    } else {
        format!("{ns} ns")
    }
}

/// "1.5 GiB", "64 KiB", "12 B".
pub fn fmt_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut f = b as f64;
    let mut i = 0;
    while f >= 1024.0 && i + 1 < U.len() {
        f /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{f:.1} {}", U[i])
    }
}

/// A communicator or group id as the short hex the views print.
pub fn fmt_id(id: u64) -> String {
    format!("{id:016x}")
}

/// Size bucket of a message: the power of two at or above `bytes` (0 for 0).
pub fn size_bucket(bytes: u64) -> u8 {
    if bytes <= 1 {
        bytes as u8
    } else {
        (64 - (bytes - 1).leading_zeros()) as u8
    }
}

/// Label of a size bucket: "<=4 KiB".
pub fn size_bucket_label(b: u8) -> String {
    if b == 0 {
        "0 B".into()
    } else {
        format!("<={}", fmt_bytes(1u64 << b.min(63)).replace(".0", ""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two() {
        assert_eq!(size_bucket(0), 0);
        assert_eq!(size_bucket(1), 1);
        assert_eq!(size_bucket(2), 1);
        assert_eq!(size_bucket(3), 2);
        assert_eq!(size_bucket(4096), 12);
        assert_eq!(size_bucket(4097), 13);
        assert_eq!(size_bucket_label(12), "<=4 KiB");
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_ns(19_800_000), "19.8 ms");
        assert_eq!(fmt_ns(940_000_000), "940.0 ms");
        assert_eq!(fmt_ns(1_250_000_000), "1.25 s");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
        let mut v = vec![5, 1, 3];
        assert_eq!(median(&mut v), 3);
    }

    #[test]
    fn hasher_is_deterministic() {
        assert_eq!(mix(&[1, 2, 3]), mix(&[1, 2, 3]));
        assert_ne!(mix(&[1, 2, 3]), mix(&[3, 2, 1]));
    }
}
