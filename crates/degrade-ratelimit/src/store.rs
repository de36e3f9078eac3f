//! The bounded keyed store: one GCRA TAT per key, in shards behind short mutexes.
//!
//! Memory is bounded by construction: a shard never holds more than its share of the key cap.
//! A key whose TAT is not ahead of now has its full budget back, which is exactly the state of
//! an absent key, so dropping it loses nothing; the store drops such keys whenever a shard is
//! full (and on [`Store::evict_idle`]). Only when a full shard holds no recovered key at all is
//! a *new* key refused, with [`Cause::KeyCapacity`](crate::error::Cause::KeyCapacity): known
//! keys keep being limited, and the store never grows past its cap.

use crate::config::Params;
use crate::state::{Decision, decide, rescale};
use crossbeam_utils::CachePadded;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::sync::Mutex;

/// A key with its hash, computed once per request: the same hash picks the shard and the
/// bucket, so a lookup runs SipHash once instead of twice.
struct Prehashed<K> {
    hash: u64,
    key: K,
}

impl<K> Hash for Prehashed<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl<K: PartialEq> PartialEq for Prehashed<K> {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.key == other.key
    }
}

impl<K: Eq> Eq for Prehashed<K> {}

/// Passes a [`Prehashed`] hash through unchanged.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else so the hasher stays total.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    tat: u64,
    unit_ns: u64,
}

struct Shard<K> {
    map: HashMap<Prehashed<K>, Entry, BuildHasherDefault<PassThrough>>,
    /// A lower bound of every held entry's TAT: no entry can recover before this instant, so a
    /// sweep before it would free nothing. Every write of an entry lowers it to that entry's
    /// TAT if need be, so it never lies above a held key's recovery (an empty shard's bound
    /// is `u64::MAX`, and the next insertion brings it down).
    next_sweep: u64,
}

pub(crate) struct Store<K> {
    shards: Box<[CachePadded<Mutex<Shard<K>>>]>,
    shard_cap: usize,
    hasher: RandomState,
}

/// A new key could not be tracked: its shard is full of keys still mid-budget. `until` is the
/// earliest instant at which one of them can be recovered (and so dropped): always after now,
/// and never later than the soonest recovery of a held key.
#[derive(Debug)]
pub(crate) struct Full {
    pub(crate) until: u64,
}

impl<K: Hash + Eq> Store<K> {
    /// A store of at most `cap` keys (`cap` ≥ 1).
    pub(crate) fn new(cap: usize) -> Self {
        // Shards of at least ~1024 keys, at most 64 shards; the per-shard cap is rounded down
        // so the total never exceeds `cap`.
        // A power of two, so that the shard is a mask of the hash.
        let n = (cap / 1024).clamp(1, 64).next_power_of_two().min(64);
        let hasher = RandomState::new();
        let shards = (0..n)
            .map(|_| {
                CachePadded::new(Mutex::new(Shard {
                    map: HashMap::default(),
                    next_sweep: 0,
                }))
            })
            .collect();
        Self {
            shards,
            shard_cap: cap / n,
            hasher,
        }
    }

    /// The shard of a hash: bits 32 and up, clear of the low bits that pick a bucket and the
    /// top seven that hashbrown keeps as a tag. The shard count is a power of two.
    #[inline]
    fn shard(&self, hash: u64) -> &Mutex<Shard<K>> {
        &self.shards[(hash >> 32) as usize & (self.shards.len() - 1)]
    }

    /// One decision for `key`.
    pub(crate) fn acquire(
        &self,
        key: K,
        p: &Params,
        cost_ns: u64,
        now: u64,
        max_wait: u64,
    ) -> Result<Decision, Full> {
        let key = Prehashed {
            hash: self.hasher.hash_one(&key),
            key,
        };
        let mut shard = self
            .shard(key.hash)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(e) = shard.map.get_mut(&key) {
            if e.unit_ns != p.unit_ns {
                e.tat = rescale(e.tat, now, e.unit_ns, p.unit_ns);
                e.unit_ns = p.unit_ns;
            }
            let d = decide(e.tat, now, cost_ns, p.tolerance_ns, max_wait);
            if let Decision::Admit { tat, .. } = d {
                e.tat = tat;
            }
            // A carry-over may have moved the TAT down.
            let tat = e.tat;
            shard.next_sweep = shard.next_sweep.min(tat);
            return Ok(d);
        }
        let d = decide(0, now, cost_ns, p.tolerance_ns, max_wait);
        let Decision::Admit { tat, .. } = d else {
            // Rejected from a fresh budget (cost above the burst): nothing to remember.
            return Ok(d);
        };
        if shard.map.len() >= self.shard_cap {
            if now < shard.next_sweep {
                return Err(Full {
                    until: shard.next_sweep,
                });
            }
            shard.sweep(now, p.unit_ns);
            if shard.map.len() >= self.shard_cap {
                return Err(Full {
                    until: shard.next_sweep,
                });
            }
        }
        shard.map.insert(
            key,
            Entry {
                tat,
                unit_ns: p.unit_ns,
            },
        );
        shard.next_sweep = shard.next_sweep.min(tat);
        Ok(d)
    }

    /// Drops every key whose budget is full again (under the unit in force, `unit_ns`); returns
    /// how many were dropped.
    pub(crate) fn evict_idle(&self, now: u64, unit_ns: u64) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
                let before = s.map.len();
                s.sweep(now, unit_ns);
                before - s.map.len()
            })
            .sum()
    }

    /// Keys held.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).map.len())
            .sum()
    }

    /// Slots allocated by the shards' tables (an upper bound on their memory, in entries).
    pub(crate) fn allocated(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).map.capacity())
            .sum()
    }

    /// The most keys the store may hold.
    pub(crate) fn cap(&self) -> usize {
        self.shard_cap * self.shards.len()
    }
}

impl<K: Hash + Eq> Shard<K> {
    /// Drops the recovered keys and sets `next_sweep` to the earliest recovery of those kept
    /// (`u64::MAX` when none is: the next insertion lowers it). Entries still in an old unit
    /// are carried over to `unit_ns` first, so a quota change neither keeps a key longer nor
    /// drops it sooner than the quota in force says.
    fn sweep(&mut self, now: u64, unit_ns: u64) {
        let mut earliest = u64::MAX;
        self.map.retain(|_, e| {
            if e.unit_ns != unit_ns {
                e.tat = rescale(e.tat, now, e.unit_ns, unit_ns);
                e.unit_ns = unit_ns;
            }
            let keep = e.tat > now;
            if keep {
                earliest = earliest.min(e.tat);
            }
            keep
        });
        self.next_sweep = earliest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params {
            unit_ns: 10,
            tolerance_ns: 20,
            cost_ns: 10,
            quota: 1,
            window_ns: 10,
            cost_units: 1,
        }
    }

    #[test]
    fn full_store_refuses_new_keys_until_one_recovers() {
        let s = Store::new(4);
        let p = params();
        for k in 0..4u32 {
            assert!(s.acquire(k, &p, 10, 0, 0).is_ok());
        }
        assert!(s.acquire(9, &p, 10, 0, 0).is_err());
        // Known keys are still limited.
        assert!(matches!(
            s.acquire(1, &p, 10, 0, 0),
            Ok(Decision::Admit { .. })
        ));
        assert!(matches!(
            s.acquire(1, &p, 10, 0, 0),
            Ok(Decision::Reject { .. })
        ));
        // Keys 0, 2 and 3 recover at 10 (key 1 spent twice): the sweep drops them and the new
        // key fits.
        assert!(s.acquire(9, &p, 10, 10, 0).is_ok());
        assert_eq!(s.len(), 2);
    }

    /// Issue 14: a sweep that emptied the shard left `next_sweep` at "never", and new keys
    /// were refused for good once the shard filled again.
    #[test]
    fn a_shard_emptied_by_a_sweep_can_sweep_again() {
        let s = Store::new(2);
        let p = params();
        s.acquire(1u8, &p, 10, 0, 0).unwrap();
        s.acquire(2u8, &p, 10, 0, 0).unwrap();
        // Both recovered at 10: the sweep empties the shard, then 3 and 4 fill it.
        s.acquire(3u8, &p, 10, 50, 0).unwrap();
        s.acquire(4u8, &p, 10, 50, 0).unwrap();
        // 3 and 4 recover at 60.
        let full = s.acquire(5u8, &p, 10, 55, 0).unwrap_err();
        assert_eq!(full.until, 60);
        assert!(s.acquire(5u8, &p, 10, 60, 0).is_ok());
    }

    #[test]
    fn evict_idle_drops_recovered_keys_only() {
        let s = Store::new(100);
        let p = params();
        s.acquire(1u8, &p, 10, 0, 0).unwrap();
        s.acquire(2u8, &p, 10, 5, 0).unwrap();
        assert_eq!(s.evict_idle(10, 10), 1);
        assert_eq!(s.len(), 1);
    }
}
