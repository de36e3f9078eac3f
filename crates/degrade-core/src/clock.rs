//! One clock for all policy code.
//!
//! Every time-dependent decision in degrade reads time through a [`Clock`]. The clock returns
//! [`tokio::time::Instant`], never `std::time::Instant`, so a test can drive it either with
//! `#[tokio::test(start_paused = true)]` / `tokio::time::advance`, or with a [`ManualClock`]
//! (feature `test-util`) that moves only when told. A peer that read `std::time::Instant` could
//! not be tested with paused time at all.
//!
//! A clock is a type parameter (defaulting to the zero-sized [`TokioClock`]), not an
//! `Arc<dyn Clock>`, so production code pays nothing for the indirection.

use std::cell::Cell;
use std::marker::PhantomData;
use std::time::Duration;
use tokio::time::Instant;

/// A source of the current time.
///
/// ```
/// use degrade_core::{Clock, TokioClock};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let clock = TokioClock;
/// let a = clock.now();
/// let b = clock.now();
/// assert!(b >= a);
/// # }
/// ```
pub trait Clock: Clone + Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The production clock: [`tokio::time::Instant::now`], which also follows tokio's paused test
/// time.
///
/// ```
/// # use degrade_core::{Clock, TokioClock};
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let before = TokioClock.now();
/// tokio::time::advance(std::time::Duration::from_secs(5)).await;
/// assert_eq!(TokioClock.now() - before, std::time::Duration::from_secs(5));
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokioClock;

impl Clock for TokioClock {
    #[inline]
    fn now(&self) -> Instant {
        match CALL.try_with(Cell::get) {
            Ok(Stamp::Open) => stamp_now(),
            Ok(Stamp::At(at)) => at,
            Ok(Stamp::Closed) | Err(_) => Instant::now(),
        }
    }
}

/// The time of the request a thread is handing down through the layers' `call`s.
#[derive(Debug, Clone, Copy)]
enum Stamp {
    /// No call under way.
    Closed,
    /// A call under way, its time not read yet.
    Open,
    /// A call under way since this instant.
    At(Instant),
}

thread_local! {
    static CALL: Cell<Stamp> = const { Cell::new(Stamp::Closed) };
}

#[cold]
fn stamp_now() -> Instant {
    let now = Instant::now();
    let _ = CALL.try_with(|c| c.set(Stamp::At(now)));
    now
}

/// One start instant for every layer a request goes through: while the outermost layer's
/// `call` runs (it holds the scope), the first [`TokioClock`] read is made and every later
/// read on that thread — by the layers further in, in their own `call`s — answers the same
/// instant. A stack that times a request in three layers reads the clock once at the start
/// instead of three times (31 ns a read on some virtual machines).
///
/// Degrade's layers open the scope at the top of `call` and hold it until `call` returns;
/// opening it inside an open one does nothing. `call` only hands the request down (the work
/// happens when the response future is polled), so the layers' start instants differ by
/// nanoseconds; should a layer between two degrade layers do slow work in `call` itself, the
/// inner layer counts it as part of its request. Completion instants are never shared: a
/// future's poll may follow work of unknown length. `ManualClock` and `FastClock` ignore the
/// scope; under paused tokio time the shared instant is the paused one.
///
/// ```
/// use degrade_core::clock::CallScope;
/// use degrade_core::{Clock, TokioClock};
/// use std::time::Duration;
///
/// let outer = CallScope::enter();
/// let start = TokioClock.now();
/// {
///     let _inner = CallScope::enter(); // a layer further in: shares the outer scope
///     std::thread::sleep(Duration::from_millis(2));
///     assert_eq!(TokioClock.now(), start);
/// }
/// assert_eq!(TokioClock.now(), start); // still the outer layer's call
/// drop(outer);
/// assert!(TokioClock.now() - start >= Duration::from_millis(2));
/// ```
#[derive(Debug)]
#[must_use = "the scope lasts as long as the guard"]
pub struct CallScope {
    opened: bool,
    /// Tied to the thread whose `call` it covers.
    _not_send: PhantomData<*const ()>,
}

impl CallScope {
    /// Opens the scope, unless a layer further out has.
    ///
    /// ```
    /// # use degrade_core::clock::CallScope;
    /// let _scope = CallScope::enter();
    /// ```
    #[inline]
    pub fn enter() -> Self {
        let opened = CALL
            .try_with(|c| match c.get() {
                Stamp::Closed => {
                    c.set(Stamp::Open);
                    true
                }
                Stamp::Open | Stamp::At(_) => false,
            })
            .unwrap_or(false);
        Self {
            opened,
            _not_send: PhantomData,
        }
    }
}

impl Drop for CallScope {
    #[inline]
    fn drop(&mut self) {
        if self.opened {
            let _ = CALL.try_with(|c| c.set(Stamp::Closed));
        }
    }
}

/// `at + d`, or the latest instant the platform can represent when that overflows: the sum for
/// deadlines built from configured or received durations (`now + wait` with a wait of
/// `Duration::MAX` means "as late as possible", not a panic).
///
/// Never panics; it costs one `checked_add` unless the sum overflows, and then at most two
/// attempts per bit of `d` to find the latest instant.
///
/// ```
/// use degrade_core::clock::saturating_add;
/// use std::time::Duration;
/// use tokio::time::Instant;
///
/// let now = Instant::now();
/// assert_eq!(saturating_add(now, Duration::from_secs(5)), now + Duration::from_secs(5));
/// let never = saturating_add(now, Duration::MAX);
/// assert!(never > now + Duration::from_secs(100 * 365 * 86_400));
/// assert_eq!(saturating_add(never, Duration::from_nanos(1)), never);
/// ```
pub fn saturating_add(at: Instant, d: Duration) -> Instant {
    if let Some(t) = at.checked_add(d) {
        return t;
    }
    // Greedy from the top: a step that fails is halved; a step that fits is taken, and cannot
    // fit twice (its double failed just before), so each step size is tried at most twice.
    let mut t = at;
    let mut step = d;
    while !step.is_zero() {
        match t.checked_add(step) {
            Some(later) => t = later,
            None => step /= 2,
        }
    }
    t
}

#[cfg(feature = "fast-clock")]
mod fast {
    use super::{Clock, TokioClock};
    use tokio::time::Instant;

    /// An opt-in clock that reads the CPU's time-stamp counter through [`quanta`] (feature
    /// `fast-clock`), for layers that read the time on every request.
    ///
    /// [`TokioClock`](super::TokioClock) is a vDSO `clock_gettime`, which costs 20–50 ns on
    /// many virtual machines; a TSC read plus a multiply and a shift is cheaper where the CPU
    /// has an invariant TSC (quanta falls back to `clock_gettime` where it has not).
    ///
    /// The reading is mapped onto a [`tokio::time::Instant`] captured when the clock is made,
    /// so it is a drop-in [`Clock`] for every layer. The caveats of a clock made by
    /// [`FastClock::new`]:
    ///
    /// * **It does not follow tokio's paused time.** `tokio::time::pause` / `advance` do not
    ///   move it; tests must keep using `TokioClock` or a `ManualClock`.
    ///   [`FastClock::unless_pausable`] (the rate limiter's default) avoids this one: where
    ///   tokio's time can be paused it reads [`TokioClock`] instead.
    /// * **It can step backwards by a little** when two reads land on cores whose counters are
    ///   not perfectly synchronised (a known quanta property). The layers tolerate it: a rate
    ///   limiter that sees an earlier `now` only becomes stricter for that decision, windows
    ///   saturate elapsed times at zero, and latencies are clamped at zero.
    /// * It drifts from the OS clock by the calibration error (parts per million), which
    ///   matters for neither rate limits nor latency buckets.
    ///
    /// Clones share the same base and are as cheap to copy as the quanta clock (no allocation).
    ///
    /// ```
    /// use degrade_core::{Clock, FastClock};
    ///
    /// let clock = FastClock::new();
    /// let a = clock.now();
    /// let b = clock.now();
    /// assert!(b + std::time::Duration::from_millis(1) >= a);
    /// ```
    #[derive(Debug, Clone)]
    pub struct FastClock {
        source: Source,
    }

    #[derive(Debug, Clone)]
    enum Source {
        /// The time-stamp counter, mapped onto the tokio instant `origin`.
        Tsc {
            clock: quanta::Clock,
            origin_raw: u64,
            origin: Instant,
        },
        /// [`TokioClock`]: made where tokio's time can be paused.
        Tokio,
    }

    impl FastClock {
        /// A clock whose readings start at the current `tokio::time::Instant` (under paused
        /// tokio time, at the paused instant; it then runs in real time).
        ///
        /// The first clock made in a process calibrates the counter against the OS clock
        /// (quanta does this once, for a few milliseconds).
        ///
        /// ```
        /// # use degrade_core::{Clock, FastClock};
        /// let before = tokio::time::Instant::now();
        /// assert!(FastClock::new().now() >= before);
        /// assert!(!FastClock::new().follows_tokio());
        /// ```
        pub fn new() -> Self {
            let clock = quanta::Clock::new();
            let origin_raw = clock.raw();
            Self {
                source: Source::Tsc {
                    clock,
                    origin_raw,
                    origin: Instant::now(),
                },
            }
        }

        /// The counter where tokio's time cannot be paused, [`TokioClock`] where it can: the
        /// clock a layer picks by default for its per-request reads.
        ///
        /// Tokio pauses time only on a `current_thread` runtime (`start_paused`,
        /// `tokio::time::pause`; `#[tokio::test]` is one), and only for reads made inside that
        /// runtime's context. So the choice is made here, once, from the context this is called
        /// in:
        ///
        /// * inside a `current_thread` runtime (or a flavour tokio may add later): a clock
        ///   that reads [`TokioClock`] (its call scope included), so paused time, `advance`
        ///   and auto-advance are followed exactly, whether time is paused already or later;
        /// * outside any runtime, or inside a multi-thread runtime (which cannot pause): the
        ///   counter, as [`FastClock::new`] (about 12 ns a read where `clock_gettime` costs
        ///   30 ns).
        ///
        /// What it does not follow: a clock made outside any runtime or on a multi-thread
        /// runtime and then read inside a *paused* `current_thread` runtime reads real time
        /// (it never consults tokio again). Make it in the test's runtime, or give the layer
        /// [`TokioClock`] or a `ManualClock` explicitly.
        ///
        /// ```
        /// use degrade_core::{Clock, FastClock};
        /// use std::time::Duration;
        ///
        /// // No runtime: the counter.
        /// assert!(!FastClock::unless_pausable().follows_tokio());
        ///
        /// // A current-thread runtime with paused time: tokio's clock, advance included.
        /// let rt = tokio::runtime::Builder::new_current_thread()
        ///     .enable_time()
        ///     .start_paused(true)
        ///     .build()
        ///     .unwrap();
        /// rt.block_on(async {
        ///     let clock = FastClock::unless_pausable();
        ///     assert!(clock.follows_tokio());
        ///     let t0 = clock.now();
        ///     tokio::time::advance(Duration::from_secs(3)).await;
        ///     assert_eq!(clock.now() - t0, Duration::from_secs(3));
        /// });
        /// ```
        pub fn unless_pausable() -> Self {
            if pausable_here() {
                Self {
                    source: Source::Tokio,
                }
            } else {
                Self::new()
            }
        }

        /// Whether this clock reads [`TokioClock`] (made where tokio's time can be paused)
        /// rather than the counter.
        ///
        /// ```
        /// # use degrade_core::FastClock;
        /// assert!(!FastClock::new().follows_tokio());
        /// ```
        pub fn follows_tokio(&self) -> bool {
            matches!(self.source, Source::Tokio)
        }
    }

    /// Whether tokio's time can be paused for reads made on this thread now: inside a runtime
    /// context that is not a multi-thread runtime.
    fn pausable_here() -> bool {
        match tokio::runtime::Handle::try_current() {
            Ok(h) => !matches!(
                h.runtime_flavor(),
                tokio::runtime::RuntimeFlavor::MultiThread
            ),
            Err(_) => false,
        }
    }

    impl Default for FastClock {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Clock for FastClock {
        #[inline]
        fn now(&self) -> Instant {
            match &self.source {
                // `delta` is zero for a reading before the origin (a core whose counter lags).
                Source::Tsc {
                    clock,
                    origin_raw,
                    origin,
                } => *origin + clock.delta(*origin_raw, clock.raw()),
                Source::Tokio => TokioClock.now(),
            }
        }
    }
}

#[cfg(feature = "fast-clock")]
pub use fast::FastClock;

#[cfg(feature = "test-util")]
mod manual {
    use super::Clock;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;
    use tokio::time::Instant;

    /// A clock that moves only when [`advance`](ManualClock::advance) is called. Clones share
    /// the same time (feature `test-util`).
    ///
    /// ```
    /// use degrade_core::{Clock, ManualClock};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let other = clock.clone();
    /// let start = clock.now();
    /// other.advance(Duration::from_millis(1500));
    /// assert_eq!(clock.now() - start, Duration::from_millis(1500));
    /// ```
    #[derive(Debug, Clone)]
    pub struct ManualClock {
        origin: Instant,
        elapsed_nanos: Arc<AtomicU64>,
    }

    impl ManualClock {
        /// A clock starting at the current instant.
        ///
        /// ```
        /// # use degrade_core::{Clock, ManualClock};
        /// let c = ManualClock::new();
        /// assert_eq!(c.now(), c.now());
        /// ```
        pub fn new() -> Self {
            Self {
                origin: Instant::now(),
                elapsed_nanos: Arc::new(AtomicU64::new(0)),
            }
        }

        /// Moves time forward by `by` for this clock and every clone of it. Time saturates
        /// instead of overflowing (after about 584 years).
        ///
        /// ```
        /// # use degrade_core::{Clock, ManualClock}; use std::time::Duration;
        /// let c = ManualClock::new();
        /// let t0 = c.now();
        /// c.advance(Duration::from_secs(1));
        /// assert_eq!(c.now() - t0, Duration::from_secs(1));
        /// ```
        pub fn advance(&self, by: Duration) {
            let add = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
            let _ = self
                .elapsed_nanos
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                    Some(t.saturating_add(add))
                });
        }

        /// Time elapsed since the clock was made.
        ///
        /// ```
        /// # use degrade_core::ManualClock; use std::time::Duration;
        /// let c = ManualClock::new();
        /// c.advance(Duration::from_millis(3));
        /// assert_eq!(c.elapsed(), Duration::from_millis(3));
        /// ```
        pub fn elapsed(&self) -> Duration {
            Duration::from_nanos(self.elapsed_nanos.load(Ordering::Acquire))
        }
    }

    impl Default for ManualClock {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            self.origin + self.elapsed()
        }
    }
}

#[cfg(feature = "test-util")]
pub use manual::ManualClock;
