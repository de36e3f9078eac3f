//! [`ShardedCounter`]: plain totals (calls per arm, rejections per level and priority) bumped
//! on the hot path by every thread, sharded so that threads do not fight over one cache line.
//! What the `DegradeLayer`, the rate limiter, the canary and the triggers count with.
//!
//! [`TimingSampler`]: which of those calls a layer also times (1 in up to 16 of each thread's
//! calls under heavy traffic), so that the counts stay exact while most calls read no clock.
//! The `ObserveLayer` and the canary time with it.

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
        self.add_ordered(index, n, Ordering::Relaxed);
    }

    /// Adds `n` to counter `index` with `order`; returns what the calling thread's slot held
    /// before (0 for an index `>= N`). The one body of [`add`](Self::add),
    /// [`add_then_slot`](Self::add_then_slot) and [`add_release`](Self::add_release).
    #[inline(always)]
    fn add_ordered(&self, index: usize, n: u64, order: Ordering) -> u64 {
        debug_assert!(index < N, "counter index {index} out of range 0..{N}");
        let slot = slot_index();
        let Some(counter) = self.slots.get(slot).and_then(|row| row.get(index)) else {
            return 0;
        };
        if slot < OWNED_SLOTS {
            // This thread is the slot's only writer: no read-modify-write needed.
            let before = counter.load(Ordering::Relaxed);
            counter.store(before.wrapping_add(n), order);
            before
        } else {
            counter.fetch_add(n, order)
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
        self.add_ordered(index, n, Ordering::Relaxed)
    }

    /// Adds `n` to counter `index` with a release store: everything the calling thread wrote
    /// before happens before a reader's [`get`](Self::get) that sees the count. What a response
    /// future uses for its *last* write to statistics it reaches without a reference count
    /// ([`crate::recycle`]): the end of its call. On x86 the same plain store as
    /// [`add`](Self::add).
    ///
    /// ```
    /// # use degrade_core::counter::ShardedCounter;
    /// let c = ShardedCounter::<1>::new();
    /// c.add_release(0, 1);
    /// assert_eq!(c.get(0), 1);
    /// ```
    #[inline]
    pub fn add_release(&self, index: usize, n: u64) {
        self.add_ordered(index, n, Ordering::Release);
    }

    /// Adds `n[i]` to counter `i` for every `i`, in index order, each store with release
    /// ordering: one look-up of the thread's slot for a row of counts (the adaptive limit's
    /// window sums), and a reader that sees the last counter's count sees the others' too
    /// (on x86 the same plain stores as [`add`](Self::add)). Zeros are skipped.
    #[inline]
    pub(crate) fn add_each(&self, n: &[u64; N]) {
        let slot = slot_index();
        let Some(row) = self.slots.get(slot) else {
            return;
        };
        for (counter, &n) in row.iter().zip(n) {
            if n == 0 {
                continue;
            }
            if slot < OWNED_SLOTS {
                let before = counter.load(Ordering::Relaxed);
                counter.store(before.wrapping_add(n), Ordering::Release);
            } else {
                counter.fetch_add(n, Ordering::Release);
            }
        }
    }

    /// Sets every counter back to zero. Counts added meanwhile on other threads may be lost:
    /// for an object nobody writes any more (a recycled one, see [`crate::recycle`]).
    ///
    /// ```
    /// # use degrade_core::counter::ShardedCounter;
    /// let c = ShardedCounter::<2>::new();
    /// c.add(1, 4);
    /// c.reset();
    /// assert_eq!(c.snapshot(), [0, 0]);
    /// ```
    pub fn reset(&self) {
        for counter in self.slots.iter().flat_map(|row| row.iter()) {
            counter.store(0, Ordering::Relaxed);
        }
    }

    /// The total of counter `index` over all slots (0 for an index `>= N`). The loads acquire:
    /// a count added by [`add_release`](Self::add_release) brings what its thread wrote before.
    /// Readers are rare; on x86 an acquire load is a plain load.
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
            .fold(0, |sum, c| sum.wrapping_add(c.load(Ordering::Acquire)))
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

/// Which calls a layer times: each thread times 1 in `every` of its own calls, `every` a power
/// of two from 1 to [`MAX_EVERY`](Self::MAX_EVERY), set by whoever reads the latencies.
///
/// Reading the clock twice per call costs more than everything else a layer records; under
/// heavy traffic a latency estimate needs only a fraction of the calls. The layer keeps every
/// *count* exact (calls, failures, cancellations: a [`ShardedCounter`]) and asks this sampler
/// whether to time a call: [`is_timed`](Self::is_timed) takes the thread's own sequence number
/// of such calls (what [`ShardedCounter::add_then_slot`] returns for the counter the layer
/// bumps anyway) and is a relaxed load and a mask — no clock, no locked instruction. A call
/// that is not timed reads no clock at all.
///
/// The reader of the latencies (a latency signal, a canary judge) tells the sampler, each time
/// it reads its window, how many calls the window saw (exact) and how many timed calls it
/// needs per window ([`window_saw`](Self::window_saw)): `every` becomes the largest power of
/// two up to 16 that still leaves that many timed calls in such a window. A quiet window sets
/// it back to 1. [`every_call`](Self::every_call) makes a sampler that always times every
/// call (for a classification that needs every latency, such as a slow-call threshold).
///
/// Until someone reads, a [`new`](Self::new) sampler times every call; a
/// [`warm`](Self::warm) one times each thread's first [`UNREAD_CALLS`](Self::UNREAD_CALLS)
/// (65,536) calls and then 1 in [`MAX_EVERY`](Self::MAX_EVERY), so that a layer whose
/// latencies may never be read (a canary split with no controller, an `ObserveLayer` no
/// latency signal reads) stops paying two clock
/// reads per call once traffic is heavy, while a light-traffic one (a test, a quiet service)
/// keeps every latency. A reader's first read sets the rate from then on (a canary controller
/// reads a window of 0 calls when it is built: every call timed).
///
/// With several readers the one that needs the most timing wins: a reader may lower `every`,
/// and raise it only when it set the current value itself or nobody has, so a long window's
/// large count cannot starve a short one. Two readers at the same instant on two threads may
/// leave the other's value until the next read: `every` is a hint, and no count depends on it.
///
/// ```
/// use degrade_core::counter::{ShardedCounter, TimingSampler};
///
/// let calls = ShardedCounter::<1>::new();
/// let sampler = TimingSampler::new();
/// let reader = TimingSampler::new_reader();
/// // 64 calls on this thread; how many of them are timed.
/// let calls_64 = || (0..64).filter(|_| sampler.is_timed(calls.add_then_slot(0, 1))).count();
/// assert_eq!(calls_64(), 64); // nobody has read yet: every call timed
///
/// // A window of 20,000 calls that needs 1,000 timed ones: 1 in 16 is enough.
/// sampler.window_saw(reader, 20_000, 1_000);
/// assert_eq!(sampler.every(), 16);
/// assert_eq!(calls_64(), 4);
/// assert_eq!(calls.get(0), 128); // the count stays exact
///
/// // A quiet window: every call timed again.
/// sampler.window_saw(reader, 300, 1_000);
/// assert_eq!(sampler.every(), 1);
/// ```
pub struct TimingSampler {
    /// `every − 1` in the low 8 bits; above them the id of the reader that set it (0: none).
    word: StdAtomicU64,
    /// The rate was fixed at construction: readers change nothing.
    fixed: bool,
}

/// The bits of `TimingSampler::word` that hold the mask.
const MASK_BITS: u64 = 0xFF;

/// `TimingSampler::word` of a [`TimingSampler::warm`] sampler before any reader has read (no
/// reader id with a mask of at most 15 is all ones).
const UNREAD: u64 = u64::MAX;

impl TimingSampler {
    /// The most calls per timed call.
    ///
    /// ```
    /// # use degrade_core::counter::TimingSampler;
    /// let s = TimingSampler::new();
    /// s.window_saw(TimingSampler::new_reader(), u64::MAX, 1);
    /// assert_eq!(s.every(), TimingSampler::MAX_EVERY);
    /// ```
    pub const MAX_EVERY: u64 = 16;

    /// The calls each thread of a [`warm`](Self::warm) sampler times before sampling 1 in
    /// [`MAX_EVERY`](Self::MAX_EVERY), while no reader has read.
    ///
    /// ```
    /// # use degrade_core::counter::TimingSampler;
    /// let s = TimingSampler::warm();
    /// let n = TimingSampler::UNREAD_CALLS;
    /// assert!((0..n).all(|seq| s.is_timed(seq)));
    /// assert_eq!((n..n + 64).filter(|&seq| s.is_timed(seq)).count(), 4);
    /// ```
    pub const UNREAD_CALLS: u64 = 1 << 16;

    /// A sampler that times every call until a reader says otherwise.
    ///
    /// ```
    /// # use degrade_core::counter::TimingSampler;
    /// let s = TimingSampler::new();
    /// assert_eq!(s.every(), 1);
    /// assert!(s.is_timed(TimingSampler::UNREAD_CALLS + 1));
    /// ```
    pub const fn new() -> Self {
        Self {
            word: StdAtomicU64::new(0),
            fixed: false,
        }
    }

    /// A sampler that times each thread's first [`UNREAD_CALLS`](Self::UNREAD_CALLS) calls
    /// and 1 in [`MAX_EVERY`](Self::MAX_EVERY) after them, until a reader says otherwise: for
    /// a layer whose latencies may never be read.
    ///
    /// ```
    /// # use degrade_core::counter::TimingSampler;
    /// let s = TimingSampler::warm();
    /// assert_eq!(s.every(), 1); // as long as each thread's calls are the first 65,536
    /// assert!(s.is_timed(1) && !s.is_timed(TimingSampler::UNREAD_CALLS + 1));
    /// s.window_saw(TimingSampler::new_reader(), 0, 1); // a reader's quiet window
    /// assert!(s.is_timed(TimingSampler::UNREAD_CALLS + 1));
    /// ```
    pub const fn warm() -> Self {
        Self {
            word: StdAtomicU64::new(UNREAD),
            fixed: false,
        }
    }

    /// A sampler that times every call whatever the readers say.
    ///
    /// ```
    /// # use degrade_core::counter::TimingSampler;
    /// let s = TimingSampler::every_call();
    /// s.window_saw(TimingSampler::new_reader(), 1_000_000, 1_000);
    /// assert_eq!(s.every(), 1);
    /// assert!((0..100).all(|seq| s.is_timed(seq)));
    /// ```
    pub const fn every_call() -> Self {
        Self::fixed(1)
    }

    /// A sampler that times 1 in `every` of each thread's calls whatever the readers say:
    /// `every` rounded down to a power of two, from 1 to [`MAX_EVERY`](Self::MAX_EVERY) (for
    /// simulations and benchmarks of the sampled path).
    ///
    /// ```
    /// # use degrade_core::counter::TimingSampler;
    /// let s = TimingSampler::fixed(10);
    /// s.window_saw(TimingSampler::new_reader(), 0, 1_000);
    /// assert_eq!(s.every(), 8);
    /// assert_eq!(TimingSampler::fixed(0).every(), 1);
    /// assert_eq!(TimingSampler::fixed(1_000).every(), 16);
    /// ```
    pub const fn fixed(every: u64) -> Self {
        let every = if every == 0 {
            1
        } else if every > Self::MAX_EVERY {
            Self::MAX_EVERY
        } else {
            every
        };
        Self {
            word: StdAtomicU64::new((1u64 << (63 - every.leading_zeros())) - 1),
            fixed: true,
        }
    }

    /// A new reader's id (never 0), for [`window_saw`](Self::window_saw).
    ///
    /// ```
    /// # use degrade_core::counter::TimingSampler;
    /// assert_ne!(TimingSampler::new_reader(), TimingSampler::new_reader());
    /// ```
    pub fn new_reader() -> u64 {
        static NEXT: StdAtomicU64 = StdAtomicU64::new(1);
        // Ids wrap within the bits above the mask; 0 (nobody) is skipped.
        loop {
            let id = NEXT.fetch_add(1, Ordering::Relaxed) & (u64::MAX >> 8);
            if id != 0 {
                return id;
            }
        }
    }

    /// Whether to time the call that is the calling thread's `seq`-th (from 0): one in
    /// [`every`](Self::every) (for a [`warm`](Self::warm) sampler no reader has read yet: the
    /// first [`UNREAD_CALLS`](Self::UNREAD_CALLS), then 1 in [`MAX_EVERY`](Self::MAX_EVERY)).
    /// A relaxed load, a comparison and a mask.
    ///
    /// ```
    /// # use degrade_core::counter::TimingSampler;
    /// let s = TimingSampler::new();
    /// s.window_saw(TimingSampler::new_reader(), 4_000, 1_000);
    /// let timed: Vec<u64> = (0..12).filter(|&seq| s.is_timed(seq)).collect();
    /// assert_eq!(timed, [0, 4, 8]);
    /// ```
    #[inline]
    pub fn is_timed(&self, seq: u64) -> bool {
        match self.word.load(Ordering::Relaxed) {
            UNREAD => seq < Self::UNREAD_CALLS || seq & (Self::MAX_EVERY - 1) == 0,
            word => seq & word & MASK_BITS == 0,
        }
    }

    /// Calls per timed call now: a power of two from 1 to [`MAX_EVERY`](Self::MAX_EVERY) (1 for
    /// a [`warm`](Self::warm) sampler no reader has read yet: true of each thread's first
    /// [`UNREAD_CALLS`](Self::UNREAD_CALLS) calls, see [`is_timed`](Self::is_timed)).
    ///
    /// ```
    /// # use degrade_core::counter::TimingSampler;
    /// let s = TimingSampler::new();
    /// s.window_saw(TimingSampler::new_reader(), 7_999, 1_000);
    /// assert_eq!(s.every(), 4); // 7.999 calls per needed timed call: 4, the power of two below
    /// ```
    pub fn every(&self) -> u64 {
        match self.word.load(Ordering::Relaxed) {
            UNREAD => 1,
            word => (word & MASK_BITS) + 1,
        }
    }

    /// Reader `reader` (an id from [`new_reader`](Self::new_reader)) read a window that saw
    /// `calls` calls (exact, timed or not) and needs `timed` timed calls in such a window:
    /// from now on each thread times 1 call in the largest power of two `every ≤ 16` with
    /// `calls / every ≥ timed` (1 when the window saw fewer than `2 × timed`). See the type's
    /// documentation for several readers.
    ///
    /// ```
    /// # use degrade_core::counter::TimingSampler;
    /// let s = TimingSampler::new();
    /// let (long, short) = (TimingSampler::new_reader(), TimingSampler::new_reader());
    /// s.window_saw(long, 100_000, 1_000);
    /// assert_eq!(s.every(), 16);
    /// s.window_saw(short, 2_500, 1_000); // the short window needs more timing: it wins
    /// assert_eq!(s.every(), 2);
    /// s.window_saw(long, 100_000, 1_000); // the long one cannot starve it
    /// assert_eq!(s.every(), 2);
    /// ```
    pub fn window_saw(&self, reader: u64, calls: u64, timed: u64) {
        if self.fixed {
            return;
        }
        let every = (calls / timed.max(1)).clamp(1, Self::MAX_EVERY);
        // The largest power of two not above `every`.
        let every = 1u64 << (63 - every.leading_zeros());
        let mask = every - 1;
        let current = match self.word.load(Ordering::Relaxed) {
            UNREAD => 0,
            word => word,
        };
        let owner = current >> 8;
        if owner == 0 || owner == reader || mask <= current & MASK_BITS {
            self.word.store(reader << 8 | mask, Ordering::Relaxed);
        }
    }
}

impl Default for TimingSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for TimingSampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimingSampler")
            .field("every", &self.every())
            .field("fixed", &self.fixed)
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
    #[test]
    fn a_sampler_times_one_call_in_every_per_thread_and_the_counts_stay_exact() {
        let calls = ShardedCounter::<1>::new();
        let timed = ShardedCounter::<1>::new();
        let sampler = TimingSampler::new();
        sampler.window_saw(TimingSampler::new_reader(), 16_000, 1_000);
        assert_eq!(sampler.every(), 16);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1_600 {
                        if sampler.is_timed(calls.add_then_slot(0, 1)) {
                            timed.add(0, 1);
                        }
                    }
                });
            }
        });
        assert_eq!(calls.get(0), 6_400);
        assert_eq!(
            timed.get(0),
            400,
            "each thread timed 1 in 16 of its own calls"
        );
    }

    #[test]
    fn every_is_the_largest_power_of_two_that_keeps_the_timed_calls() {
        let reader = TimingSampler::new_reader();
        for (calls, timed, every) in [
            (0, 1_000, 1),
            (1_999, 1_000, 1),
            (2_000, 1_000, 2),
            (3_999, 1_000, 2),
            (4_000, 1_000, 4),
            (15_999, 1_000, 8),
            (16_000, 1_000, 16),
            (u64::MAX, 1_000, 16),
            (10, 0, 8), // no need at all: as if one were needed
        ] {
            let s = TimingSampler::new();
            s.window_saw(reader, calls, timed);
            assert_eq!(s.every(), every, "{calls} calls, {timed} needed");
            assert_eq!(
                u64::try_from((0..64).filter(|&q| s.is_timed(q)).count()).unwrap(),
                64 / every
            );
        }
    }

    #[test]
    fn the_reader_that_needs_most_timing_wins_and_only_its_owner_raises_it() {
        let s = TimingSampler::new();
        let (a, b) = (TimingSampler::new_reader(), TimingSampler::new_reader());
        s.window_saw(a, 8_000, 1_000);
        assert_eq!(s.every(), 8);
        s.window_saw(b, 1_000_000, 1_000); // b would raise it: not its value
        assert_eq!(s.every(), 8);
        s.window_saw(b, 2_000, 1_000); // b lowers it and owns it now
        assert_eq!(s.every(), 2);
        s.window_saw(a, 1_000_000, 1_000); // a may not raise b's value
        assert_eq!(s.every(), 2);
        s.window_saw(b, 0, 1_000); // a quiet window of the owner: every call
        assert_eq!(s.every(), 1);
        s.window_saw(a, 1_000_000, 1_000); // b owns the value: a cannot raise it
        assert_eq!(s.every(), 1);
        s.window_saw(b, 1_000_000, 1_000);
        assert_eq!(s.every(), 16);
    }
}
