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
//! instead of a reference count (two locked instructions per request saved). It is a
//! [`Recycle`] object like the canary's and the `ObserveLayer`'s statistics: idle when it
//! reads zero (nothing in flight, nothing kept by a thread, nobody waiting), and the
//! [`recycle::Pool`](crate::recycle::Pool) of the limiter's state hands it to a later limiter
//! only then. A release's `fetch_sub` is the request's last write to it, with release ordering,
//! and the pool's acquire load sees it (loom model
//! `the_word_is_recycled_once_after_the_last_release`).

use crate::recycle::Recycle;
use crate::sync::{AtomicU64, Ordering};

const IN_FLIGHT: u64 = 1;
const WAITING: u64 = 1 << 32;
const MASK: u64 = WAITING - 1;
const WAITING_MASK: u64 = !MASK;

/// What a release found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Released {
    /// Requests wait: the releaser hands the slot on.
    pub(crate) waiters: bool,
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
        }
    }

    /// Gives `n` slots back at once (a thread's kept slots, see [`lease`](super::lease)).
    pub(crate) fn release_many(&self, n: u32) -> Released {
        let n = u64::from(n);
        let before = self.word.fetch_sub(n, Ordering::AcqRel);
        debug_assert!(before & MASK >= n, "released more slots than taken");
        Released {
            waiters: before & WAITING_MASK != 0,
        }
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

/// Once its limiter is gone nothing acquires a slot, so a word that reads zero stays zero: no
/// request holds a slot, no thread keeps one, nobody waits.
impl Recycle for InFlight {
    fn is_idle(&self) -> bool {
        self.word.load(Ordering::Acquire) == 0
    }

    fn reset(&self) {
        debug_assert_eq!(self.load(), (0, 0), "recycled while in use");
        self.word.store(0, Ordering::Relaxed);
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

    /// The owner goes while two requests are in flight, released on two threads: the pool
    /// recycles the word exactly once, never while a slot is held (the reset sees every
    /// release), and the next take gets it back empty.
    #[test]
    fn the_word_is_recycled_once_after_the_last_release() {
        use crate::recycle::{Pool, Recycle};
        use crate::sync::{AtomicU64, Ordering};

        #[derive(Default)]
        struct Word {
            in_flight: InFlight,
            resets: AtomicU64,
        }
        impl Recycle for Word {
            fn is_idle(&self) -> bool {
                self.in_flight.is_idle()
            }
            fn reset(&self) {
                assert_eq!(self.in_flight.load(), (0, 0), "recycled with a slot held");
                self.resets.fetch_add(1, Ordering::Relaxed);
                self.in_flight.reset();
            }
        }

        loom::model(|| {
            let pool: &'static Pool<Word> = Box::leak(Box::new(Pool::new()));
            let owned = pool.take(Word::default);
            let word = owned.get();
            assert_eq!(word.in_flight.try_acquire(2), Some(1));
            assert_eq!(word.in_flight.try_acquire(2), Some(2));
            let releasers: Vec<_> = (0..2)
                .map(|_| thread::spawn(move || assert!(!word.in_flight.release().waiters)))
                .collect();
            drop(owned);
            let during = pool.take(Word::default);
            let reused_early = std::ptr::eq(during.get(), word);
            for t in releasers {
                t.join().unwrap();
            }
            let after = pool.take(Word::default);
            assert!(
                reused_early || std::ptr::eq(after.get(), word),
                "recycled by the first take after the last release"
            );
            assert_eq!(
                word.resets.load(Ordering::Relaxed),
                1,
                "recycled exactly once"
            );
            assert_eq!(word.in_flight.load(), (0, 0));
            drop((during, after));
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
