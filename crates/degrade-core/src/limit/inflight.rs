//! The shared in-flight counter: one word holding the requests in flight and the requests
//! waiting, so that a release and an enqueue can never miss each other.
//!
//! The admit path is one compare-and-swap on this word: admit while nobody waits and the
//! count is under the limit. A release is one `fetch_sub`; the value it returns says whether
//! anybody waits, and if so the releaser hands the slot on under the queue's lock. An enqueue
//! bumps the waiting half (under that lock) and then tries to take a slot itself. Both halves
//! live in one word, so the modification order of that word orders every release against
//! every enqueue: either the release sees the waiter, or the waiter's own attempt sees the
//! freed slot. The loom model at the end checks it.
//!
//! The word outlives its limiter: a response future holds a plain `&'static` reference to it
//! instead of a reference count (two locked instructions per request saved). When the limiter
//! goes, its drop marks the word orphaned; whoever leaves it empty — that drop, or the last
//! release — hands it to a free list for the next limiter. The memory kept is bounded by the
//! most limiters alive at once; a loom model checks that the word is recycled exactly once.

use crate::sync::{AtomicU64, Ordering};

const IN_FLIGHT: u64 = 1;
const WAITING: u64 = 1 << 32;
const MASK: u64 = WAITING - 1;
/// Set when the limiter that owns the word is gone (the top bit; waiters never reach it).
const ORPHAN: u64 = 1 << 63;
const WAITING_MASK: u64 = !MASK & !ORPHAN;

/// What a release found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Released {
    /// Requests wait: the releaser hands the slot on.
    pub(crate) waiters: bool,
    /// It was the last slot of a word whose limiter is gone: the releaser recycles the word.
    pub(crate) last_of_orphan: bool,
}

/// Requests in flight and requests waiting, in one atomic word.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    word: AtomicU64,
}

impl InFlight {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Takes a slot when nobody waits and fewer than `limit` are in flight; returns the
    /// number in flight, this request included.
    #[inline]
    pub(crate) fn try_acquire(&self, limit: u32) -> Option<u32> {
        let mut current = self.word.load(Ordering::Relaxed);
        loop {
            let n = (current & MASK) as u32;
            if current >= WAITING || n >= limit {
                return None;
            }
            match self.word.compare_exchange_weak(
                current,
                current + IN_FLIGHT,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(n + 1),
                Err(actual) => current = actual,
            }
        }
    }

    /// Takes a slot when fewer than `limit` are in flight, waiters or not: for the queue's
    /// grants and for a request allowed ahead of every waiter (under the queue's lock).
    pub(crate) fn try_acquire_ahead(&self, limit: u32) -> Option<u32> {
        let mut current = self.word.load(Ordering::Relaxed);
        loop {
            let n = (current & MASK) as u32;
            if n >= limit {
                return None;
            }
            match self.word.compare_exchange_weak(
                current,
                current + IN_FLIGHT,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(n + 1),
                Err(actual) => current = actual,
            }
        }
    }

    /// Gives a slot back.
    #[inline]
    pub(crate) fn release(&self) -> Released {
        let before = self.word.fetch_sub(IN_FLIGHT, Ordering::AcqRel);
        debug_assert!(before & MASK > 0, "released more slots than taken");
        Released {
            waiters: before & WAITING_MASK != 0,
            last_of_orphan: before == ORPHAN | IN_FLIGHT,
        }
    }

    /// Gives `n` slots back at once (a thread's kept slots, see [`lease`](super::lease)).
    pub(crate) fn release_many(&self, n: u32) -> Released {
        let n = u64::from(n);
        let before = self.word.fetch_sub(n, Ordering::AcqRel);
        debug_assert!(before & MASK >= n, "released more slots than taken");
        Released {
            waiters: before & WAITING_MASK != 0,
            last_of_orphan: before == ORPHAN | n,
        }
    }

    /// The owner is gone (no more acquires, no waiters): `true` when nothing is in flight, so
    /// the caller recycles the word now; otherwise the last [`release`](Self::release) will
    /// say so. Exactly one of the two sees the word empty.
    pub(crate) fn orphan(&self) -> bool {
        let before = self.word.fetch_or(ORPHAN, Ordering::AcqRel);
        debug_assert!(before & WAITING_MASK == 0, "orphaned with requests waiting");
        before & MASK == 0
    }

    /// Back to empty, for a new owner (once recycled: nobody else holds it).
    pub(crate) fn reset(&self) {
        self.word.store(0, Ordering::Release);
    }

    /// One more waiter (under the queue's lock).
    pub(crate) fn add_waiter(&self) {
        self.word.fetch_add(WAITING, Ordering::AcqRel);
    }

    /// One waiter fewer (under the queue's lock).
    pub(crate) fn remove_waiter(&self) {
        let before = self.word.fetch_sub(WAITING, Ordering::AcqRel);
        debug_assert!(
            before & WAITING_MASK != 0,
            "removed more waiters than added"
        );
    }

    /// (in flight, waiting).
    pub(crate) fn load(&self) -> (u32, u32) {
        let w = self.word.load(Ordering::Acquire);
        ((w & MASK) as u32, ((w & WAITING_MASK) >> 32) as u32)
    }
}

#[cfg(all(test, degrade_loom))]
mod loom_models {
    //! `RUSTFLAGS="--cfg degrade_loom" cargo test -p degrade-core --release --lib loom_models`
    use super::InFlight;
    use loom::sync::{Arc, Mutex};
    use loom::thread;

    /// A request that finds the limit full waits; a concurrent release must hand it the slot
    /// (directly, or through the waiter's own second attempt): no lost wake-up, and never more
    /// than the limit in flight.
    #[test]
    fn a_release_never_misses_a_waiter() {
        loom::model(|| {
            let cell = Arc::new(InFlight::new());
            // The queue: how many wait, and how many were granted a slot.
            let queue = Arc::new(Mutex::new((0u32, 0u32)));
            assert_eq!(cell.try_acquire(1), Some(1));

            let drain = |cell: &InFlight, q: &mut (u32, u32)| {
                while q.0 > 0 {
                    if cell.try_acquire_ahead(1).is_none() {
                        break;
                    }
                    q.0 -= 1;
                    q.1 += 1;
                    cell.remove_waiter();
                }
            };

            let (c, q) = (Arc::clone(&cell), Arc::clone(&queue));
            let releaser = thread::spawn(move || {
                if c.release().waiters {
                    let mut q = q.lock().unwrap();
                    drain(&c, &mut q);
                }
            });
            // The other request: the fast path fails or succeeds; on failure it queues.
            let admitted_fast = cell.try_acquire(1).is_some();
            if !admitted_fast {
                let mut q = queue.lock().unwrap();
                q.0 += 1;
                cell.add_waiter();
                drain(&cell, &mut q);
            }
            releaser.join().unwrap();

            let (in_flight, waiting) = cell.load();
            let q = queue.lock().unwrap();
            assert_eq!(waiting, q.0);
            assert_eq!(q.0, 0, "the waiter was handed the slot");
            assert_eq!(in_flight, 1, "exactly one request holds the one slot");
            assert_eq!(u32::from(admitted_fast) + q.1, 1);
        });
    }

    /// The owner goes while a request is in flight: exactly one of the owner's drop and the
    /// last release recycles the word, and only once nothing is in flight.
    #[test]
    fn the_word_is_recycled_once_after_the_last_release() {
        loom::model(|| {
            let cell = Arc::new(InFlight::new());
            assert_eq!(cell.try_acquire(2), Some(1));
            assert_eq!(cell.try_acquire(2), Some(2));
            let releasers: Vec<_> = (0..2)
                .map(|_| {
                    let c = Arc::clone(&cell);
                    thread::spawn(move || c.release().last_of_orphan)
                })
                .collect();
            let by_owner = cell.orphan();
            let by_releasers = releasers
                .into_iter()
                .map(|t| t.join().unwrap())
                .filter(|recycled| *recycled)
                .count();
            assert_eq!(
                usize::from(by_owner) + by_releasers,
                1,
                "recycled exactly once"
            );
            assert_eq!(cell.load(), (0, 0));
        });
    }

    /// Two requests race for the last slot: exactly one gets it.
    #[test]
    fn two_acquirers_never_exceed_the_limit() {
        loom::model(|| {
            let cell = Arc::new(InFlight::new());
            let c = Arc::clone(&cell);
            let t = thread::spawn(move || c.try_acquire(1).is_some());
            let mine = cell.try_acquire(1).is_some();
            let theirs = t.join().unwrap();
            assert!(mine ^ theirs, "one and only one admitted");
            assert_eq!(cell.load(), (1, 0));
        });
    }
}
