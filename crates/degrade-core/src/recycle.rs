//! Statistics that response futures reach through a `&'static` reference, with no reference
//! count written per request: the object outlives its layer and is recycled, not freed.
//!
//! A layer that records each call's outcome when the response future completes needs the
//! future to reach the layer's statistics after `call` has returned, perhaps after the layer
//! itself is gone. An `Arc` in the future does it at the price of two locked instructions per
//! request (the increment in `call`, the decrement when the future drops): on a 2-vCPU guest
//! about 16 ns each, more than the rest of a canary split. Here the statistics object is
//! leaked once ([`Pool::take`]) and a future holds a plain `&'static T`. When the owner goes
//! (the [`Pooled`], kept by every service clone and handle), the object is handed back to its
//! [`Pool`]; it is reset and reused by a later take once nothing is in flight. The memory kept
//! is bounded by the most objects ever taken at once (plus those kept by futures that never
//! end).
//!
//! # When is an orphan empty
//!
//! The layers already count every call twice, per thread and without a read-modify-write
//! ([`ShardedCounter`](crate::counter::ShardedCounter)): once when it starts (in `call`) and
//! once when it ends (the outcome, or the cancellation when the future is dropped). Once the
//! owner is gone no call starts, so the started total is frozen and the ended total only grows:
//! `sum(ended) == sum(started)` proves that nothing is in flight ([`Recycle::is_idle`]). A
//! future makes its end count its **last** write to the object, with release ordering
//! ([`ShardedCounter::add_release`](crate::counter::ShardedCounter::add_release)), and never
//! touches the object after it; the pool reads the counts with acquire loads, so everything a
//! future wrote happens before the reset.
//!
//! # Exactly once, and nothing on the request path
//!
//! A future does not look for the orphan mark after its end count: that would need a fence on
//! every request (a store then a load of another location on each side), the very cost this
//! module removes. Instead every hand-over happens under the pool's mutex, on the rare paths
//! only: the owner's drop recycles the object at once when it is idle, else parks it; each
//! later [`Pool::take`] first recycles the parked objects that have become idle. One mutex
//! decides, so an object is recycled exactly once per owner, and only when idle. The loom
//! model `loom_models::an_orphan_is_recycled_once_and_never_while_a_future_writes` checks it
//! (`RUSTFLAGS="--cfg degrade_loom" cargo test -p degrade-core --release --lib loom_models`).
//!
//! # What a future reads besides the statistics
//!
//! The user's classifier is per layer and cannot be recycled. [`Held`] holds it: a zero-sized
//! value (the default classifiers) is leaked for free and copied as a `&'static`; anything else
//! is shared through an `Arc`, whose count each future's clone then writes (as before, and only
//! for such user types). A clock is `Clone` and usually zero-sized (`TokioClock`) or a copy: a
//! layer clones it into the futures of the calls it times.

use crate::sync::Mutex;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// A statistics object that a [`Pool`] recycles: it says when nothing is in flight and how
/// to start afresh.
///
/// ```
/// use degrade_core::counter::ShardedCounter;
/// use degrade_core::recycle::{Pool, Recycle};
///
/// // Calls started (slot 0) and ended (slot 1).
/// struct Calls(ShardedCounter<2>);
/// impl Recycle for Calls {
///     fn is_idle(&self) -> bool {
///         self.0.get(0) == self.0.get(1)
///     }
///     fn reset(&self) {
///         self.0.reset();
///     }
/// }
/// static POOL: Pool<Calls> = Pool::new();
///
/// let owned = POOL.take(|| Calls(ShardedCounter::new()));
/// let calls: &'static Calls = owned.get(); // what a response future holds
/// calls.0.add(0, 1); // a call starts
/// drop(owned); // the layer goes while the call is in flight
/// calls.0.add_release(1, 1); // the call ends: its last write
/// let next = POOL.take(|| Calls(ShardedCounter::new()));
/// assert_eq!(next.0.get(0), 0, "a new layer starts from zero");
/// ```
pub trait Recycle: Send + Sync + 'static {
    /// Whether nothing is in flight, asked only once no call can start any more: typically
    /// `sum(ended) == sum(started)` over the object's counts, read with acquire loads
    /// ([`ShardedCounter::get`](crate::counter::ShardedCounter::get)) of end counts that
    /// futures bump last, with release stores.
    fn is_idle(&self) -> bool;

    /// Back to as new, for the next owner. Called once, when the object is idle and no owner
    /// holds it.
    fn reset(&self);
}

struct Lists<T: 'static> {
    /// Idle, reset objects for the next take.
    free: Vec<&'static T>,
    /// Objects whose owner is gone while calls were in flight.
    orphans: Vec<&'static T>,
    /// Objects ever made (leaked).
    made: usize,
}

/// Where objects of type `T` wait between owners. One `static` per type, declared by the
/// crate that owns the type (a `static` cannot be generic).
///
/// ```
/// # use degrade_core::recycle::{Pool, Recycle};
/// # use std::sync::atomic::{AtomicU64, Ordering};
/// # #[derive(Default)] struct Ended(AtomicU64);
/// # impl Recycle for Ended {
/// #     fn is_idle(&self) -> bool { true }
/// #     fn reset(&self) { self.0.store(0, Ordering::Relaxed) }
/// # }
/// static POOL: Pool<Ended> = Pool::new();
/// let first: *const Ended = POOL.take(Ended::default).get();
/// // Idle when its owner went: the next take reuses it.
/// let second: *const Ended = POOL.take(Ended::default).get();
/// assert_eq!(first, second);
/// assert_eq!(POOL.counts(), (1, 1, 0)); // made, free, orphaned
/// ```
pub struct Pool<T: 'static> {
    lists: Mutex<Lists<T>>,
}

impl<T: Recycle> Pool<T> {
    /// An empty pool, for a `static`.
    #[cfg(not(degrade_loom))]
    pub const fn new() -> Self {
        Self {
            lists: Mutex::new(Lists {
                free: Vec::new(),
                orphans: Vec::new(),
                made: 0,
            }),
        }
    }

    /// An empty pool (loom's mutex cannot be made in a `const`).
    #[cfg(degrade_loom)]
    pub fn new() -> Self {
        Self {
            lists: Mutex::new(Lists {
                free: Vec::new(),
                orphans: Vec::new(),
                made: 0,
            }),
        }
    }

    fn lock(&self) -> impl std::ops::DerefMut<Target = Lists<T>> + '_ {
        self.lists
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An object for a new owner: a recycled one (orphans that have become idle are recycled
    /// first), or `make()` leaked when none is free. Not for the request path: it takes the
    /// pool's mutex.
    pub fn take(&'static self, make: impl FnOnce() -> T) -> Pooled<T> {
        self.take_fitting(|_| true, make)
    }

    /// Like [`take`](Self::take), for objects of several shapes (a window of some size, say)
    /// of which only some fit the new owner: a free object is reused only if `fits` says so,
    /// else `make()` is leaked. The memory kept is then bounded, for each shape, by the most
    /// objects of that shape ever taken at once; an owner that needs a recycled object's
    /// per-owner settings changed sets them after the take (the object is reset and
    /// no call can reach it before the new owner hands it out).
    ///
    /// ```
    /// # use degrade_core::recycle::{Pool, Recycle};
    /// struct Slots(Vec<u8>);
    /// impl Recycle for Slots {
    ///     fn is_idle(&self) -> bool { true }
    ///     fn reset(&self) {}
    /// }
    /// static POOL: Pool<Slots> = Pool::new();
    /// let four: *const Slots = POOL.take_fitting(|s| s.0.len() == 4, || Slots(vec![0; 4])).get();
    /// // A free object of another size is not reused...
    /// let eight = POOL.take_fitting(|s| s.0.len() == 8, || Slots(vec![0; 8]));
    /// assert_eq!(POOL.counts(), (2, 1, 0)); // made, free (the size-4 one), orphaned
    /// // ...one that fits is.
    /// let again: *const Slots = POOL.take_fitting(|s| s.0.len() == 4, || Slots(vec![0; 4])).get();
    /// assert_eq!(four, again);
    /// # drop(eight);
    /// ```
    pub fn take_fitting(
        &'static self,
        fits: impl Fn(&T) -> bool,
        make: impl FnOnce() -> T,
    ) -> Pooled<T> {
        let reused = {
            let mut lists = self.lock();
            let Lists { free, orphans, .. } = &mut *lists;
            orphans.retain(|object| {
                if object.is_idle() {
                    object.reset();
                    free.push(object);
                    false
                } else {
                    true
                }
            });
            let reused = free
                .iter()
                .rposition(|object| fits(object))
                .map(|at| free.swap_remove(at));
            if reused.is_none() {
                lists.made += 1;
            }
            reused
        };
        let object = reused.unwrap_or_else(|| Box::leak(Box::new(make())));
        Pooled { object, pool: self }
    }

    /// The owner is gone: recycled now if idle, else parked until a later take finds it idle.
    fn orphan(&self, object: &'static T) {
        let mut lists = self.lock();
        if object.is_idle() {
            object.reset();
            lists.free.push(object);
        } else {
            lists.orphans.push(object);
        }
    }

    /// (objects ever made, free, orphaned with calls in flight when last looked at).
    pub fn counts(&self) -> (usize, usize, usize) {
        let lists = self.lock();
        (lists.made, lists.free.len(), lists.orphans.len())
    }
}

#[cfg(not(degrade_loom))]
impl<T: Recycle> Default for Pool<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for Pool<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

/// The owner's hold on a pooled object: [`get`](Self::get) gives the `&'static` that response
/// futures keep; dropping it hands the object back to its pool (recycled once idle).
/// Services and handles share one hold through an `Arc` (cloned per service clone, never per
/// request).
///
/// ```
/// # use degrade_core::recycle::{Pool, Recycle};
/// # use std::sync::atomic::{AtomicU64, Ordering};
/// #[derive(Default)]
/// struct InFlight(AtomicU64);
/// impl Recycle for InFlight {
///     fn is_idle(&self) -> bool { self.0.load(Ordering::Acquire) == 0 }
///     fn reset(&self) {}
/// }
/// static POOL: Pool<InFlight> = Pool::new();
/// let owned = POOL.take(InFlight::default);
/// let object = owned.get();
/// object.0.store(1, Ordering::Relaxed); // a call in flight
/// drop(owned);
/// assert_eq!(POOL.counts(), (1, 0, 1)); // parked, not reused
/// let other = POOL.take(InFlight::default);
/// assert!(!std::ptr::eq(other.get(), object));
/// ```
pub struct Pooled<T: Recycle> {
    object: &'static T,
    pool: &'static Pool<T>,
}

impl<T: Recycle> Pooled<T> {
    /// The object, for as long as anyone needs it (it is never freed; after the hold is gone
    /// it is reused only once [`Recycle::is_idle`]).
    ///
    /// ```
    /// # use degrade_core::recycle::{Pool, Recycle};
    /// # struct Nothing;
    /// # impl Recycle for Nothing { fn is_idle(&self) -> bool { true } fn reset(&self) {} }
    /// # static POOL: Pool<Nothing> = Pool::new();
    /// let owned = POOL.take(|| Nothing);
    /// let r: &'static Nothing = owned.get();
    /// drop(owned);
    /// let _still_readable = r;
    /// ```
    #[inline]
    pub fn get(&self) -> &'static T {
        self.object
    }
}

impl<T: Recycle> Deref for Pooled<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        self.object
    }
}

impl<T: Recycle> Drop for Pooled<T> {
    fn drop(&mut self) {
        self.pool.orphan(self.object);
    }
}

impl<T: Recycle> fmt::Debug for Pooled<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pooled").finish_non_exhaustive()
    }
}

/// A per-layer value that response futures read (a classifier) without a reference
/// count when it is zero-sized: such a value is leaked for free (no memory) and the holder is a
/// `&'static`; any other value is shared through an `Arc`. Cloning copies a pointer in the
/// first case and bumps the `Arc` in the second. A zero-sized value's `Drop` never runs.
///
/// ```
/// use degrade_core::recycle::Held;
/// use degrade_core::{Classifier, DefaultClassifier, Outcome};
///
/// let held = Held::new(DefaultClassifier);
/// assert!(held.is_static()); // zero-sized: no count to write per clone
/// let per_request = held.clone();
/// assert_eq!(
///     Classifier::<(), ()>::classify_error(&*per_request, &()),
///     Outcome::Failure
/// );
/// assert!(!Held::new(String::from("threshold")).is_static());
/// ```
pub struct Held<T: 'static>(Repr<T>);

enum Repr<T: 'static> {
    Static(&'static T),
    Counted(Arc<T>),
}

impl<T: 'static> Held<T> {
    /// Holds `value`: leaked if zero-sized, else in an `Arc`.
    ///
    /// ```
    /// # use degrade_core::recycle::Held;
    /// assert_eq!(*Held::new(7u32), 7);
    /// ```
    pub fn new(value: T) -> Self {
        if size_of::<T>() == 0 {
            Self(Repr::Static(Box::leak(Box::new(value))))
        } else {
            Self(Repr::Counted(Arc::new(value)))
        }
    }

    /// Whether clones copy a `&'static` (the value is zero-sized).
    ///
    /// ```
    /// # use degrade_core::recycle::Held;
    /// assert!(Held::new(()).is_static());
    /// assert!(!Held::new(1u8).is_static());
    /// ```
    pub fn is_static(&self) -> bool {
        matches!(self.0, Repr::Static(_))
    }
}

impl<T: 'static> Clone for Held<T> {
    #[inline]
    fn clone(&self) -> Self {
        match &self.0 {
            Repr::Static(r) => Self(Repr::Static(r)),
            Repr::Counted(a) => Self(Repr::Counted(Arc::clone(a))),
        }
    }
}

impl<T: 'static> Deref for Held<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        match &self.0 {
            Repr::Static(r) => r,
            Repr::Counted(a) => a,
        }
    }
}

impl<T: fmt::Debug + 'static> fmt::Debug for Held<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Held").field(&**self).finish()
    }
}

#[cfg(all(test, not(degrade_loom)))]
mod tests {
    use super::*;
    use crate::counter::ShardedCounter;

    const STARTED: usize = 0;
    const ENDED: usize = 1;

    struct Calls(ShardedCounter<2>);

    impl Recycle for Calls {
        fn is_idle(&self) -> bool {
            self.0.get(STARTED) == self.0.get(ENDED)
        }
        fn reset(&self) {
            self.0.reset();
        }
    }

    fn calls() -> Calls {
        Calls(ShardedCounter::new())
    }

    #[test]
    fn an_orphan_with_calls_in_flight_is_reused_only_after_they_end() {
        static POOL: Pool<Calls> = Pool::new();
        let first = POOL.take(calls);
        let object = first.get();
        object.0.add(STARTED, 2);
        object.0.add_release(ENDED, 1);
        drop(first);
        assert_eq!(POOL.counts(), (1, 0, 1), "parked with one call in flight");

        let second = POOL.take(calls);
        assert!(
            !std::ptr::eq(second.get(), object),
            "not while a call can write"
        );
        assert_eq!(second.0.snapshot(), [0, 0]);
        // The call outliving its layer ends: it counts against its own object only.
        object.0.add_release(ENDED, 1);
        assert_eq!(second.0.snapshot(), [0, 0]);

        let third = POOL.take(calls);
        assert!(std::ptr::eq(third.get(), object), "recycled once idle");
        assert_eq!(third.0.snapshot(), [0, 0], "reset before reuse");
        assert_eq!(POOL.counts(), (2, 0, 0));
        drop((second, third));
        assert_eq!(POOL.counts(), (2, 2, 0), "each recycled exactly once");
    }

    #[test]
    fn layers_made_and_dropped_one_after_another_reuse_one_object() {
        static POOL: Pool<Calls> = Pool::new();
        for _ in 0..1_000 {
            let owned = POOL.take(calls);
            owned.0.add(STARTED, 1);
            owned.0.add_release(ENDED, 1);
        }
        assert_eq!(
            POOL.counts(),
            (1, 1, 0),
            "memory bounded by the most alive at once"
        );
    }

    #[test]
    fn counts_ended_on_another_thread_make_the_orphan_idle() {
        static POOL: Pool<Calls> = Pool::new();
        let owned = POOL.take(calls);
        let object = owned.get();
        object.0.add(STARTED, 1);
        let ender = std::thread::spawn(move || object.0.add_release(ENDED, 1));
        drop(owned);
        ender.join().unwrap();
        let next = POOL.take(calls);
        assert!(std::ptr::eq(next.get(), object));
        assert_eq!(POOL.counts(), (1, 0, 0));
    }

    #[test]
    fn a_non_zero_sized_value_is_shared_not_leaked() {
        let held = Held::new(vec![1u8]);
        let clone = held.clone();
        assert!(std::ptr::eq(&*held, &*clone));
        assert!(!held.is_static());
    }
}

#[cfg(all(test, degrade_loom))]
mod loom_models {
    //! `RUSTFLAGS="--cfg degrade_loom" cargo test -p degrade-core --release --lib loom_models`
    use super::{Pool, Recycle};
    use crate::sync::{AtomicU64, Ordering};
    use loom::thread;

    /// Started and ended counts of two threads' slots (each written by one thread with a plain
    /// load and store, as `ShardedCounter` does), a value a future writes before its end, and
    /// how many times the object was reset.
    #[derive(Default)]
    struct Object {
        started: AtomicU64,
        ended: [AtomicU64; 2],
        payload: AtomicU64,
        resets: AtomicU64,
    }

    impl Recycle for Object {
        fn is_idle(&self) -> bool {
            let ended: u64 = self.ended.iter().map(|e| e.load(Ordering::Acquire)).sum();
            self.started.load(Ordering::Acquire) == ended
        }
        fn reset(&self) {
            // A generation with a call: its future's write must be visible by now.
            assert_eq!(
                self.payload.load(Ordering::Relaxed),
                7 * self.started.load(Ordering::Relaxed),
                "reset while a future's write is not yet visible"
            );
            self.resets.fetch_add(1, Ordering::Relaxed);
            self.payload.store(0, Ordering::Relaxed);
            self.started.store(0, Ordering::Relaxed);
            for e in &self.ended {
                e.store(0, Ordering::Relaxed);
            }
        }
    }

    /// A call's future ends on another thread while the owner drops its hold and a third
    /// thread takes from the same pool: the object is never handed to the new owner while
    /// the future can still write (the reset sees the future's write), and once the future
    /// has ended the next take gets it back, reset exactly once.
    #[test]
    fn an_orphan_is_recycled_once_and_never_while_a_future_writes() {
        loom::model(|| {
            let pool: &'static Pool<Object> = Box::leak(Box::new(Pool::new()));
            let owned = pool.take(Object::default);
            let object = owned.get();
            // `call`: the start count, written by the owner's thread.
            object.started.store(1, Ordering::Relaxed);
            let future = thread::spawn(move || {
                object.payload.store(7, Ordering::Relaxed);
                // The end count: the future's last write, a release store of its own slot.
                let e = &object.ended[1];
                e.store(e.load(Ordering::Relaxed) + 1, Ordering::Release);
            });
            let other_layer = thread::spawn(move || {
                let owned = pool.take(Object::default);
                let mine = std::ptr::eq(owned.get(), object);
                // A take that got the object owns it afresh: reset, counting from zero.
                if mine {
                    assert_eq!(object.started.load(Ordering::Relaxed), 0);
                }
                mine
            });
            drop(owned);
            future.join().unwrap();
            let reused_by_other = other_layer.join().unwrap();
            // Every party is done: the next take recycles the orphan at the latest.
            let last = pool.take(Object::default);
            let (made, _, parked) = pool.counts();
            assert_eq!(parked, 0, "the idle orphan is recycled by the next take");
            assert!(made <= 2);
            let owners = if reused_by_other { 2 } else { 1 };
            assert_eq!(
                object.resets.load(Ordering::Relaxed),
                owners,
                "recycled exactly once per owner"
            );
            drop(last);
        });
    }
}
