//! The sticky bucket of a key: a fixed, seeded 64-bit mix, the same in every process and
//! every version of this crate.
//!
//! `std`'s `DefaultHasher` is randomly keyed per process and may change between Rust releases,
//! so two replicas (or one replica before and after a restart) would put one user on different
//! arms. This hash is written out here and is part of the crate's stability promise: changing
//! it would move users between arms, so it will not change within a major version.

/// Number of buckets: weights are in basis points, so bucket `b` is on the canary exactly when
/// `b < weight`.
///
/// ```
/// use degrade_canary::hash::{BUCKETS, bucket};
/// assert!(u32::from(bucket(b"any key")) < BUCKETS);
/// ```
pub const BUCKETS: u32 = 10_000;

const SEED: u64 = 0x6465_6772_6164_6521; // "degrade!"
const K: u64 = 0x9E37_79B9_7F4A_7C15;

/// The splitmix64 finaliser: a bijection of `u64` with full avalanche.
#[inline]
const fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The 64-bit hash of `key`: eight bytes at a time, each word folded in through the splitmix64
/// finaliser, the length mixed last so that `b"a"` and `b"a\0"` differ.
///
/// ```
/// use degrade_canary::hash::hash_bytes;
/// assert_eq!(hash_bytes(b"user-42"), hash_bytes(b"user-42"));
/// assert_ne!(hash_bytes(b"user-42"), hash_bytes(b"user-43"));
/// ```
#[inline]
pub fn hash_bytes(key: &[u8]) -> u64 {
    let mut h = SEED;
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = mix(h.wrapping_add(K) ^ w);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut buf = [0u8; 8];
        buf[..rest.len()].copy_from_slice(rest);
        h = mix(h.wrapping_add(K) ^ u64::from_le_bytes(buf));
    }
    mix(h ^ (key.len() as u64).wrapping_mul(K))
}

/// The bucket (`0..10_000`) of a byte key.
///
/// ```
/// use degrade_canary::hash::{bucket, BUCKETS};
/// assert!(u32::from(bucket(b"alice")) < BUCKETS);
/// assert_eq!(bucket(b"alice"), bucket(b"alice"));
/// ```
#[inline]
pub fn bucket(key: &[u8]) -> u16 {
    reduce(hash_bytes(key))
}

/// The bucket (`0..10_000`) of a numeric key such as a user id.
///
/// ```
/// use degrade_canary::hash::{bucket_u64, BUCKETS};
/// assert!(u32::from(bucket_u64(42)) < BUCKETS);
/// ```
#[inline]
pub fn bucket_u64(key: u64) -> u16 {
    reduce(mix(SEED ^ mix(key.wrapping_add(K))))
}

/// Maps a hash to `0..BUCKETS` by the multiply-shift range reduction (Lemire): uniform up to
/// a bias of `BUCKETS / 2^32`, negligible.
#[inline]
fn reduce(h: u64) -> u16 {
    (((h >> 32) * u64::from(BUCKETS)) >> 32) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_pinned_across_versions() {
        // Changing these values moves users between arms: it is a breaking change.
        let pinned = [
            bucket(b"alice"),
            bucket(b"bob"),
            bucket_u64(1),
            bucket_u64(2),
        ];
        assert_eq!(pinned, PINNED);
    }

    const PINNED: [u16; 4] = [8010, 5398, 8205, 4484];

    #[test]
    fn buckets_are_uniform() {
        let mut counts = [0u32; 10];
        for i in 0..100_000u64 {
            counts[usize::from(bucket(format!("user-{i}").as_bytes())) / 1000] += 1;
        }
        for c in counts {
            assert!((9_500..10_500).contains(&c), "{counts:?}");
        }
    }
}
