//! The bounded keyed store: one GCRA TAT per key, found with no lock, in shards whose mutex
//! only new keys take.
//!
//! Memory is bounded by construction: a shard never holds more than its share of the key cap.
//! A key whose TAT is not ahead of now has its full budget back, which is exactly the state of
//! an absent key, so dropping it loses nothing; the store drops such keys whenever a shard is
//! full (and on [`Store::evict_idle`]). Only when a full shard holds no recovered key at all is
//! a *new* key refused, with [`Cause::KeyCapacity`](crate::error::Cause::KeyCapacity): known
//! keys keep being limited, and the store never grows past its cap.
//!
//! # No lock for a known key
//!
//! Each shard keeps its keys in a concurrent hash map with lock-free reads (`papaya`; a
//! lookup writes only its own thread's reservation word) and each key's TAT in one atomic
//! word ([`KeyCell`]). A request for a known key whose cell is in the unit of the request's
//! parameters takes no lock and allocates nothing: it moves the TAT by compare-and-swap, as
//! the global cell does. The shard's mutex is taken only to insert a key, to drop recovered
//! keys when the shard is full, and to carry a key's debt over to a new unit after a quota
//! or level change (once per key and change).
//!
//! A cell leaves the map only by being **killed** first, under the shard's mutex: its word is
//! swapped to a dead mark, from a TAT that shows a full budget (a sweep) or whatever it was
//! (a carry-over, which hands that TAT on to the key's new cell). A request that found the
//! cell before it left and then meets the mark looks the key up again, under the mutex. So a
//! request racing a sweep or a carry-over is decided exactly once, against the key's budget,
//! and no admission is lost: a sweep's compare-and-swap fails if a request moved the TAT
//! after the sweep read it (the key is then mid-budget and kept), and a carry-over hands on
//! every admission its swap saw.
//!
//! A dropped key's map entry is freed once no lookup can still read it, by the map's epoch
//! reclamation, in batches: that may fall to any thread that ends a lookup, a request
//! included — a deallocation now and then while keys are being dropped, never while every
//! request is for a known key.

use crate::config::Params;
use crate::state::{Decision, decide, rescale};
use crate::sync::{AtomicU64, Ordering};
use crossbeam_utils::CachePadded;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::sync::{Mutex, MutexGuard};

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

/// The word of a cell that has left (or is leaving) the map. No TAT takes this value: TATs
/// are capped one below it (a TAT that far ahead is "never" either way).
const DEAD: u64 = u64::MAX;

/// One key's TAT, in one atomic word, in the unit (nanoseconds per unit of budget) the cell
/// was made in. A change of unit makes a new cell (see [`KeyCell::kill`]).
pub(crate) struct KeyCell {
    unit_ns: u64,
    tat: AtomicU64,
}

impl KeyCell {
    pub(crate) fn new(unit_ns: u64, tat: u64) -> Self {
        Self {
            unit_ns,
            tat: AtomicU64::new(tat.min(DEAD - 1)),
        }
    }

    /// One decision of `cost` with `tolerance` (both in this cell's unit) at `now`; on
    /// admission the TAT has moved. `None`: the cell is dead (dropped or carried over) and
    /// the key must be looked up again.
    #[inline]
    pub(crate) fn acquire(
        &self,
        cost: u64,
        tolerance: u64,
        now: u64,
        max_wait: u64,
    ) -> Option<Decision> {
        let mut w = self.tat.load(Ordering::Acquire);
        loop {
            if w == DEAD {
                return None;
            }
            match decide(w, now, cost, tolerance, max_wait) {
                Decision::Admit { tat, wait } => {
                    match self.tat.compare_exchange_weak(
                        w,
                        tat.min(DEAD - 1),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return Some(Decision::Admit { tat, wait }),
                        Err(actual) => w = actual,
                    }
                }
                reject => return Some(reject),
            }
        }
    }

    /// Kills the cell if its budget is full at `now` under `unit_ns` (the unit in force).
    /// `Err(bound)` when it is kept: a lower bound of every TAT the key can have from now on
    /// (its TAT, or less once carried over to `unit_ns`). Called with the shard's mutex held,
    /// so no other thread kills it meanwhile.
    pub(crate) fn kill_if_recovered(&self, now: u64, unit_ns: u64) -> Result<(), u64> {
        let mut w = self.tat.load(Ordering::Acquire);
        loop {
            let carried = rescale(w, now, self.unit_ns, unit_ns);
            if w == DEAD || carried > now {
                return Err(w.min(carried));
            }
            match self
                .tat
                .compare_exchange(w, DEAD, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                // A request moved the TAT: now mid-budget, kept (checked again above).
                Err(actual) => w = actual,
            }
        }
    }

    /// Kills the cell whatever its TAT, and returns that TAT: every admission the cell made
    /// is in it, and none can follow. Called with the shard's mutex held.
    pub(crate) fn kill(&self) -> u64 {
        self.tat.swap(DEAD, Ordering::AcqRel)
    }

    /// The TAT (`DEAD` once killed), for the loom models.
    #[cfg(all(test, degrade_loom))]
    fn tat(&self) -> u64 {
        self.tat.load(Ordering::Acquire)
    }
}

/// What only the shard's mutex guards: how many keys it holds, and when a sweep can next
/// free one.
struct Meta {
    len: usize,
    /// A lower bound of every held key's TAT: no key can recover before this instant, so a
    /// sweep before it would free nothing. Insertions and carry-overs (under the mutex) lower
    /// it to the TAT they write; requests on known keys only move TATs up, so it stays a lower
    /// bound without them (an empty shard's bound is `u64::MAX`, and the next insertion
    /// brings it down).
    next_sweep: u64,
}

struct Shard<K> {
    map: papaya::HashMap<Prehashed<K>, KeyCell, BuildHasherDefault<PassThrough>>,
    /// On its own cache line: inserting threads write it, lookups never read it.
    meta: CachePadded<Mutex<Meta>>,
}

pub(crate) struct Store<K> {
    shards: Box<[Shard<K>]>,
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

fn lock(meta: &Mutex<Meta>) -> MutexGuard<'_, Meta> {
    meta.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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
            .map(|_| Shard {
                map: papaya::HashMap::default(),
                meta: CachePadded::new(Mutex::new(Meta {
                    len: 0,
                    next_sweep: 0,
                })),
            })
            .collect();
        Self {
            shards,
            shard_cap: cap / n,
            hasher,
        }
    }

    /// The shard of a hash: bits 32 and up, clear of the low bits that pick a bucket and the
    /// top seven that the map keeps as a tag. The shard count is a power of two.
    #[inline]
    fn shard(&self, hash: u64) -> &Shard<K> {
        &self.shards[(hash >> 32) as usize & (self.shards.len() - 1)]
    }

    /// One decision for `key`: with no lock when the key is known and its cell is in `p`'s
    /// unit (see the module docs).
    #[inline]
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
        let shard = self.shard(key.hash);
        {
            let guard = shard.map.guard();
            if let Some(cell) = shard.map.get(&key, &guard)
                && cell.unit_ns == p.unit_ns
                && let Some(d) = cell.acquire(cost_ns, p.tolerance_ns, now, max_wait)
            {
                return Ok(d);
            }
        }
        self.acquire_locked(shard, key, p, cost_ns, now, max_wait)
    }

    /// A new key, a key whose cell is in another unit, or a cell killed under the request:
    /// decided with the shard's mutex held.
    #[cold]
    #[inline(never)]
    fn acquire_locked(
        &self,
        shard: &Shard<K>,
        key: Prehashed<K>,
        p: &Params,
        cost_ns: u64,
        now: u64,
        max_wait: u64,
    ) -> Result<Decision, Full> {
        let mut meta = lock(&shard.meta);
        let guard = shard.map.guard();
        if let Some(cell) = shard.map.get(&key, &guard) {
            // Cells are killed only under this mutex, and leave the map before it is
            // released: this one is live.
            if cell.unit_ns == p.unit_ns
                && let Some(d) = cell.acquire(cost_ns, p.tolerance_ns, now, max_wait)
            {
                return Ok(d);
            }
            // The quota or the level changed: carry the key's debt over to `p`'s unit, in a
            // new cell. Requests still on the old cell meet its dead mark and come here.
            let tat = rescale(cell.kill(), now, cell.unit_ns, p.unit_ns).min(DEAD - 1);
            let d = decide(tat, now, cost_ns, p.tolerance_ns, max_wait);
            let tat = match d {
                Decision::Admit { tat, .. } => tat,
                Decision::Reject { .. } => tat,
            };
            shard.map.insert(key, KeyCell::new(p.unit_ns, tat), &guard);
            meta.next_sweep = meta.next_sweep.min(tat);
            return Ok(d);
        }
        let d = decide(0, now, cost_ns, p.tolerance_ns, max_wait);
        let Decision::Admit { tat, .. } = d else {
            // Rejected from a fresh budget (cost above the burst): nothing to remember.
            return Ok(d);
        };
        if meta.len >= self.shard_cap {
            if now < meta.next_sweep {
                return Err(Full {
                    until: meta.next_sweep,
                });
            }
            shard.sweep(&mut meta, now, p.unit_ns);
            if meta.len >= self.shard_cap {
                return Err(Full {
                    until: meta.next_sweep,
                });
            }
        }
        shard.map.insert(key, KeyCell::new(p.unit_ns, tat), &guard);
        meta.len += 1;
        meta.next_sweep = meta.next_sweep.min(tat);
        Ok(d)
    }

    /// Drops every key whose budget is full again (under the unit in force, `unit_ns`); returns
    /// how many were dropped.
    pub(crate) fn evict_idle(&self, now: u64, unit_ns: u64) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let mut meta = lock(&s.meta);
                let before = meta.len;
                s.sweep(&mut meta, now, unit_ns);
                before - meta.len
            })
            .sum()
    }

    /// Keys held.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(&s.meta).len).sum()
    }

    /// Entries held by the shards' maps: one allocation each (the map's tables are sized to
    /// them; a dropped key's node is freed once no lookup can still read it).
    pub(crate) fn allocated(&self) -> usize {
        self.shards.iter().map(|s| s.map.len()).sum()
    }

    /// The most keys the store may hold.
    pub(crate) fn cap(&self) -> usize {
        self.shard_cap * self.shards.len()
    }
}

impl<K: Hash + Eq> Shard<K> {
    /// Drops the recovered keys and sets `next_sweep` to a lower bound of the kept keys' TATs
    /// (`u64::MAX` when none is kept: the next insertion lowers it). A key still in an old
    /// unit is judged by its debt carried over to `unit_ns`, so a quota change neither keeps
    /// a key longer nor drops it sooner than the quota in force says. Called with `meta`'s
    /// mutex held.
    fn sweep(&self, meta: &mut Meta, now: u64, unit_ns: u64) {
        let guard = self.map.guard();
        let mut earliest = u64::MAX;
        for (key, cell) in self.map.iter(&guard) {
            match cell.kill_if_recovered(now, unit_ns) {
                Ok(()) => {
                    self.map.remove(key, &guard);
                    meta.len -= 1;
                }
                Err(bound) => earliest = earliest.min(bound),
            }
        }
        meta.next_sweep = earliest;
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

#[cfg(all(test, degrade_loom))]
mod loom_models {
    //! The key cell's dead mark against requests, every interleaving. Run with
    //! `RUSTFLAGS="--cfg degrade_loom" CARGO_TARGET_DIR=target/loom cargo test -p
    //! degrade-ratelimit --release --lib loom_models`.
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// A request on a recovered key (TAT 0, now 10) races a sweep: either the request is
    /// admitted on the live cell and the sweep keeps it (its TAT shows the admission), or the
    /// sweep kills it and the request meets the mark (and looks the key up again). Never both
    /// an admission and a kill: that admission would be lost with the cell.
    #[test]
    fn a_request_racing_a_sweep_is_admitted_on_a_kept_cell_or_sent_back() {
        loom::model(|| {
            let cell = Arc::new(KeyCell::new(10, 0));
            let c = Arc::clone(&cell);
            let request = thread::spawn(move || c.acquire(10, 20, 10, 0));
            let swept = cell.kill_if_recovered(10, 10);
            match (request.join().unwrap(), swept) {
                (Some(Decision::Admit { tat: 20, wait: 0 }), Err(bound)) => {
                    assert_eq!(cell.tat(), 20);
                    assert!(bound <= 20);
                }
                (None, Ok(())) => assert_eq!(cell.tat(), DEAD),
                other => panic!("{other:?}"),
            }
        });
    }

    /// Two requests race a carry-over (the cell killed for a new unit): the TAT the kill
    /// returns holds exactly the admissions made on the cell, and every other request is sent
    /// back to look the key up again.
    #[test]
    fn a_carry_over_hands_on_every_admission_of_the_old_cell() {
        loom::model(|| {
            let cell = Arc::new(KeyCell::new(10, 0));
            let requests: Vec<_> = (0..2)
                .map(|_| {
                    let c = Arc::clone(&cell);
                    thread::spawn(move || c.acquire(10, 20, 0, 0))
                })
                .collect();
            let last = cell.kill();
            let admitted = requests
                .into_iter()
                .map(|r| match r.join().unwrap() {
                    Some(Decision::Admit { .. }) => 1,
                    None => 0,
                    Some(reject) => panic!("a budget of two refused: {reject:?}"),
                })
                .sum::<u64>();
            assert_eq!(last, 10 * admitted);
            assert_eq!(cell.tat(), DEAD);
        });
    }
}
