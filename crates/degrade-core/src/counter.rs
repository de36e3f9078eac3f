//! [`ShardedCounter`]: plain totals (calls per arm, rejections per level and priority) bumped
//! on the hot path by every thread, sharded so that threads do not fight over one cache line.
//! What the `DegradeLayer`, the rate limiter, the canary and the triggers count with.

use std::cell::Cell;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64 as StdAtomicU64, Ordering};

use crossbeam_utils::CachePadded;

/// Slots that a live thread owns alone. Threads beyond this many share one more slot.
pub(crate) const OWNED_SLOTS: usize = 32;
/// The slot shared by threads that found every owned slot taken (and by TLS destructors).
const SHARED_SLOT: usize = OWNED_SLOTS;
pub(crate) const SLOTS: usize = OWNED_SLOTS + 1;
const UNASSIGNED: usize = usize::MAX;

/// Owned slots that no live thread holds, and the next never-used one.
static FREE_SLOTS: Mutex<(usize, Vec<usize>)> = Mutex::new((0, Vec::new()));

thread_local! {
    /// The calling thread's slot. `const` so the hot path reads it without a lazy-init check.
    static SLOT: Cell<usize> = const { Cell::new(UNASSIGNED) };
    /// Returns the owned slot when the thread exits.
    static SLOT_OWNER: SlotOwner = const { SlotOwner };
}

struct SlotOwner;

impl Drop for SlotOwner {
    fn drop(&mut self) {
        let Ok(slot) = SLOT.try_with(|s| s.replace(SHARED_SLOT)) else {
            return;
        };
        if slot < OWNED_SLOTS {
            // Anything this thread still counts from other destructors goes to the shared
            // slot (set above) before the owned slot is handed to another thread.
            lock_free_slots().1.push(slot);
        }
    }
}

fn lock_free_slots() -> std::sync::MutexGuard<'static, (usize, Vec<usize>)> {
    FREE_SLOTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The calling thread's slot: its own on first use while any is free, else the shared one.
/// The histograms' rows follow it too, so one mechanism spreads every per-call write.
#[inline]
pub(crate) fn slot_index() -> usize {
    match SLOT.try_with(Cell::get) {
        Ok(UNASSIGNED) => assign_slot(),
        Ok(slot) => slot,
        // Thread teardown: the shared slot is always safe.
        Err(_) => SHARED_SLOT,
    }
}

#[cold]
fn assign_slot() -> usize {
    let slot = {
        let mut free = lock_free_slots();
        match free.1.pop() {
            Some(slot) => slot,
            None if free.0 < OWNED_SLOTS => {
                free.0 += 1;
                free.0 - 1
            }
            None => SHARED_SLOT,
        }
    };
    // Registering the owner's destructor can fail only during teardown; then keep to the
    // shared slot rather than own a slot that would never be returned.
    let registered = slot == SHARED_SLOT || SLOT_OWNER.try_with(|_| ()).is_ok();
    if !registered {
        lock_free_slots().1.push(slot);
        return SHARED_SLOT;
    }
    let _ = SLOT.try_with(|s| s.set(slot));
    slot
}

/// `N` monotonic `u64` counters that any number of threads bump without contention and
/// without read-modify-write instructions.
///
/// Totals bumped by every request (admitted per priority, rejections per reason) would make one
/// cache line bounce between all cores, and even uncontended, an atomic `fetch_add` costs a
/// locked instruction. Here each live thread owns a slot of its own (up to 32 threads; more
/// share one extra slot through `fetch_add`): as the slot's only writer it adds with a plain
/// relaxed load and store. A reader sums the slots. When a thread exits, its slot goes back to
/// a free list under a mutex, whose release/acquire hands the slot's contents to the next
/// owner, so no count is ever lost. Counters wrap on overflow.
///
/// Memory: 33 cache-padded rows of `N` counters per instance.
///
/// ```
/// use degrade_core::counter::ShardedCounter;
///
/// let c = ShardedCounter::<2>::new();
/// c.add(0, 3);
/// c.add(1, 1);
/// assert_eq!(c.snapshot(), [3, 1]);
/// ```
pub struct ShardedCounter<const N: usize> {
    // Std atomics even under loom: the slot protocol is per thread, not per cell.
    slots: Box<[CachePadded<[StdAtomicU64; N]>]>,
}

impl<const N: usize> ShardedCounter<N> {
    /// Creates `N` counters at zero. This is the only allocation.
    ///
    /// ```
    /// # use degrade_core::counter::ShardedCounter;
    /// assert_eq!(ShardedCounter::<3>::new().snapshot(), [0, 0, 0]);
    /// ```
    pub fn new() -> Self {
        Self {
            slots: (0..SLOTS)
                .map(|_| CachePadded::new(std::array::from_fn(|_| StdAtomicU64::new(0))))
                .collect(),
        }
    }

    /// Adds `n` to counter `index`. An index `>= N` is ignored (and asserts in debug builds),
    /// so a miscount never takes down the request path.
    ///
    /// ```
    /// # use degrade_core::counter::ShardedCounter;
    /// let c = ShardedCounter::<1>::new();
    /// c.add(0, 5);
    /// assert_eq!(c.get(0), 5);
    /// ```
    #[inline]
    pub fn add(&self, index: usize, n: u64) {
        debug_assert!(index < N, "counter index {index} out of range 0..{N}");
        let slot = slot_index();
        let Some(counter) = self.slots.get(slot).and_then(|row| row.get(index)) else {
            return;
        };
        if slot < OWNED_SLOTS {
            // This thread is the slot's only writer: no read-modify-write needed.
            counter.store(
                counter.load(Ordering::Relaxed).wrapping_add(n),
                Ordering::Relaxed,
            );
        } else {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Adds `n` to counter `index` and returns what the calling thread's slot held before:
    /// a per-thread sequence for free, e.g. to act on every 16th call of each thread (0 for
    /// an index `>= N`). Threads on the shared slot see the shared slot's sequence.
    ///
    /// ```
    /// # use degrade_core::counter::ShardedCounter;
    /// let c = ShardedCounter::<1>::new();
    /// assert_eq!(c.add_then_slot(0, 1), 0);
    /// assert_eq!(c.add_then_slot(0, 1), 1);
    /// assert_eq!(c.get(0), 2);
    /// ```
    #[inline]
    pub fn add_then_slot(&self, index: usize, n: u64) -> u64 {
        debug_assert!(index < N, "counter index {index} out of range 0..{N}");
        let slot = slot_index();
        let Some(counter) = self.slots.get(slot).and_then(|row| row.get(index)) else {
            return 0;
        };
        if slot < OWNED_SLOTS {
            let before = counter.load(Ordering::Relaxed);
            counter.store(before.wrapping_add(n), Ordering::Relaxed);
            before
        } else {
            counter.fetch_add(n, Ordering::Relaxed)
        }
    }

    /// The total of counter `index` over all slots (0 for an index `>= N`).
    ///
    /// ```
    /// # use degrade_core::counter::ShardedCounter;
    /// let c = ShardedCounter::<2>::new();
    /// c.add(1, 2);
    /// c.add(1, 2);
    /// assert_eq!(c.get(1), 4);
    /// assert_eq!(c.get(0), 0);
    /// ```
    pub fn get(&self, index: usize) -> u64 {
        self.slots
            .iter()
            .filter_map(|row| row.get(index))
            .fold(0, |sum, c| sum.wrapping_add(c.load(Ordering::Relaxed)))
    }

    /// The totals of all counters. Each counter is summed on its own, so counters bumped
    /// concurrently may be read at slightly different moments.
    ///
    /// ```
    /// # use degrade_core::counter::ShardedCounter;
    /// let c = ShardedCounter::<2>::new();
    /// c.add(0, 1);
    /// assert_eq!(c.snapshot(), [1, 0]);
    /// ```
    pub fn snapshot(&self) -> [u64; N] {
        std::array::from_fn(|index| self.get(index))
    }
}

impl<const N: usize> Default for ShardedCounter<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Debug for ShardedCounter<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ShardedCounter")
            .field(&self.snapshot())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Held by the tests that need most of the owned slots at once: run side by side, one's
    /// wave of threads would leave the other's threads on the overflow slot.
    static SLOT_HUNGRY: Mutex<()> = Mutex::new(());

    fn slot_hungry() -> std::sync::MutexGuard<'static, ()> {
        SLOT_HUNGRY.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[test]
    fn sharded_counter_sums_across_threads() {
        let c = ShardedCounter::<3>::new();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let c = &c;
                s.spawn(move || {
                    for _ in 0..10_000 {
                        c.add(0, 1);
                        c.add(2, t);
                    }
                });
            }
        });
        assert_eq!(c.snapshot(), [40_000, 0, 60_000]);
        assert_eq!(c.get(7), 0);
        assert_eq!(format!("{c:?}"), "ShardedCounter([40000, 0, 60000])");
    }

    #[test]
    fn sharded_counter_loses_nothing_through_slot_recycling_and_overflow() {
        // Waves of more threads than there are owned slots: slots are recycled between waves
        // and, within a wave, the surplus threads share the overflow slot.
        let _hungry = slot_hungry();
        let c = ShardedCounter::<2>::new();
        let threads = OWNED_SLOTS + 8;
        for wave in 0..4u64 {
            let barrier = std::sync::Barrier::new(threads);
            std::thread::scope(|s| {
                for _ in 0..threads {
                    let (c, barrier) = (&c, &barrier);
                    s.spawn(move || {
                        barrier.wait(); // all alive at once: some must overflow
                        for _ in 0..2_000 {
                            c.add(0, 1);
                            c.add(1, wave);
                        }
                    });
                }
            });
        }
        let per_wave = (threads * 2_000) as u64;
        assert_eq!(c.snapshot(), [4 * per_wave, per_wave * (1 + 2 + 3)]);
    }

    #[test]
    fn an_exited_thread_hands_its_slot_to_the_next() {
        // A wave with more threads alive than there are owned slots (some share the overflow
        // slot), then three times as many threads as owned slots, one after another: each finds
        // a slot an exited thread returned, so none is left on the contended overflow slot.
        let _hungry = slot_hungry();
        let barrier = std::sync::Barrier::new(OWNED_SLOTS + 8);
        std::thread::scope(|s| {
            for _ in 0..OWNED_SLOTS + 8 {
                let barrier = &barrier;
                s.spawn(move || {
                    let _ = slot_index();
                    barrier.wait();
                });
            }
        });
        let owned = (0..3 * OWNED_SLOTS)
            .filter(|_| {
                std::thread::spawn(|| slot_index() < OWNED_SLOTS)
                    .join()
                    .expect("slot thread")
            })
            .count();
        // The other tests of this binary hold a few slots at most meanwhile (the one that takes
        // them all waits for `SLOT_HUNGRY`); without recycling at most OWNED_SLOTS threads ever
        // own one.
        assert!(
            owned > 2 * OWNED_SLOTS,
            "{owned} of {} sequential threads owned a slot",
            3 * OWNED_SLOTS
        );
    }

    #[test]
    fn sharded_counters_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<ShardedCounter<4>>();
    }
}
