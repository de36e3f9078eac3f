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

    /// The current reading, kept to count nanoseconds from with
    /// [`nanos_since`](Clock::nanos_since).
    ///
    /// A policy that decides in nanoseconds (a rate limiter's GCRA) keeps an epoch and asks
    /// for the nanoseconds since it on every decision: a clock that counts in nanoseconds
    /// itself (`FastClock` on the counter) answers without going through an [`Instant`] and
    /// back. The default implementation is `now()`.
    ///
    /// ```
    /// use degrade_core::{Clock, TokioClock};
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let epoch = TokioClock.epoch();
    /// assert_eq!(epoch.instant(), TokioClock.now());
    /// tokio::time::advance(Duration::from_micros(3)).await;
    /// assert_eq!(TokioClock.nanos_since(&epoch), 3_000);
    /// # }
    /// ```
    #[inline]
    fn epoch(&self) -> Epoch {
        Epoch(Reading::At(self.now()))
    }

    /// Nanoseconds from `epoch` to now; 0 when now is earlier than `epoch`, `u64::MAX` after
    /// about 584 years. An epoch taken from another clock is measured by its instant.
    ///
    /// ```
    /// use degrade_core::{Clock, TokioClock};
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let epoch = TokioClock.epoch();
    /// tokio::time::advance(Duration::from_millis(2)).await;
    /// assert_eq!(TokioClock.nanos_since(&epoch), 2_000_000);
    /// let later = TokioClock.epoch();
    /// tokio::time::advance(Duration::from_millis(1)).await;
    /// assert_eq!(TokioClock.nanos_since(&later), 1_000_000);
    /// # }
    /// ```
    #[inline]
    fn nanos_since(&self, epoch: &Epoch) -> u64 {
        nanos(self.now().saturating_duration_since(epoch.instant()))
    }
}

/// A clock's reading kept to count nanoseconds from: made by [`Clock::epoch`], read by
/// [`Clock::nanos_since`].
///
/// ```
/// use degrade_core::{Clock, TokioClock};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let epoch = TokioClock.epoch();
/// tokio::time::advance(std::time::Duration::from_nanos(250)).await;
/// assert_eq!(TokioClock.nanos_since(&epoch), 250);
/// assert_eq!(TokioClock.now() - epoch.instant(), std::time::Duration::from_nanos(250));
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch(Reading);

/// An epoch's reading: 16 bytes either way (the counter's nanoseconds sit in the instant's
/// seconds, the instant's nanoseconds field tells the two apart), as small as the `Instant` a
/// response future kept before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    At(Instant),
    /// Nanoseconds on the process's counter timeline: a `FastClock` epoch on the counter.
    #[cfg(feature = "fast-clock")]
    Counter(u64),
}

impl Epoch {
    /// The instant of the reading.
    ///
    /// ```
    /// # use degrade_core::{Clock, TokioClock};
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let epoch = TokioClock.epoch();
    /// assert_eq!(epoch.instant(), TokioClock.now()); // paused: no time has passed
    /// # }
    /// ```
    pub fn instant(&self) -> Instant {
        match self.0 {
            Reading::At(at) => at,
            #[cfg(feature = "fast-clock")]
            Reading::Counter(ns) => fast::counter_instant(ns),
        }
    }
}

/// `d` in nanoseconds, `u64::MAX` past about 584 years.
#[inline]
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
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
        match CALL.try_with(|c| c.stamp.get()) {
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

/// A thread's call scope: tokio's instant and the counter's reading, each stamped by the
/// first read of its own clock. The two are kept apart so that no clock ever answers with the
/// other's reading: under paused tokio time they are different timelines.
struct Call {
    stamp: Cell<Stamp>,
    /// The `FastClock` counter's reading (nanoseconds on the process's counter timeline),
    /// once one has been made in the open scope.
    #[cfg(feature = "fast-clock")]
    counter: Cell<Option<u64>>,
}

thread_local! {
    static CALL: Call = const {
        Call {
            stamp: Cell::new(Stamp::Closed),
            #[cfg(feature = "fast-clock")]
            counter: Cell::new(None),
        }
    };
}

#[cold]
fn stamp_now() -> Instant {
    let now = Instant::now();
    let _ = CALL.try_with(|c| c.stamp.set(Stamp::At(now)));
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
/// future's poll may follow work of unknown length. Under paused tokio time the shared instant
/// is the paused one.
///
/// A `FastClock` on the counter keeps its own stamp in the same scope: its first read is
/// every counter read's answer until the scope closes. The two stamps never answer for each
/// other (under paused time they are different timelines), so a stack reads once per clock it
/// uses: once in all when every layer runs on its default clock. `ManualClock` ignores the
/// scope (it moves only when told).
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
            .try_with(|c| match c.stamp.get() {
                Stamp::Closed => {
                    c.stamp.set(Stamp::Open);
                    #[cfg(feature = "fast-clock")]
                    c.counter.set(None);
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
            let _ = CALL.try_with(|c| c.stamp.set(Stamp::Closed));
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
    use super::{CALL, Clock, Epoch, Reading, Stamp, TokioClock, nanos, saturating_add};
    use crate::sync::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    use std::time::Duration;
    use tokio::time::Instant;

    /// How often the counter is re-anchored to the OS clock: short enough that the counter's
    /// calibration error (parts per million) and NTP's slew of the OS clock (at most 500 ppm)
    /// leave the two timelines within a microsecond of each other, long enough that the
    /// re-anchoring read of `clock_gettime` costs a hundredth of a nanosecond per request at a
    /// million requests a second.
    const REANCHOR_EVERY: Duration = Duration::from_millis(1);

    /// The widest gap between the two counter reads around an OS clock read that re-anchors,
    /// as a fraction of [`REANCHOR_EVERY`]: 1/50 of 1 ms, 20 µs; the anchor's error is at most
    /// half of it.
    const MAX_GAP_DIVISOR: u64 = 50;

    /// The anchor of the counter onto the OS clock: a reading is the counter's nanoseconds
    /// plus `offset` (two's complement), and the first read at or after the counter reading
    /// `due` moves the anchor.
    ///
    /// Each field is one word and every value `offset` ever holds is a whole anchor, so a
    /// reader can never see half of one (which two words, a raw reading and its nanoseconds,
    /// could give: a reading off by the whole period). Of the readers that find the anchor
    /// due, the one whose compare-and-swap moves `due` takes the OS reading; the others use
    /// the anchor they found, at most one period old. `tests`'s `loom_models` check it.
    #[derive(Debug)]
    pub(super) struct Anchor {
        offset: AtomicU64,
        due: AtomicU64,
    }

    impl Anchor {
        pub(super) fn new(offset: u64, due: u64) -> Self {
            Self {
                offset: AtomicU64::new(offset),
                due: AtomicU64::new(due),
            }
        }

        /// The reading for counter value `raw` whose nanoseconds are `scaled`, re-anchoring
        /// first when due: `os()` then answers the new offset (the OS clock's nanoseconds less
        /// the counter's, at one moment), or `None` when it could not read both close enough
        /// together (the anchor then stays as it is for another period); the next due is
        /// `raw + period`.
        #[inline]
        pub(super) fn read(
            &self,
            raw: u64,
            scaled: u64,
            period: u64,
            os: impl FnOnce() -> Option<u64>,
        ) -> u64 {
            let due = self.due.load(Ordering::Relaxed);
            if raw >= due {
                self.reanchor(due, raw.saturating_add(period), os);
            }
            scaled.wrapping_add(self.offset.load(Ordering::Relaxed))
        }

        #[cold]
        #[inline(never)]
        fn reanchor(&self, seen: u64, next: u64, os: impl FnOnce() -> Option<u64>) {
            if self
                .due
                .compare_exchange(seen, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
                && let Some(offset) = os()
            {
                self.offset.store(offset, Ordering::Relaxed);
            }
        }
    }

    /// The process's counter timeline: nanoseconds since `base` (an OS instant), read from
    /// the time-stamp counter and re-anchored to the OS clock every [`REANCHOR_EVERY`].
    #[derive(Debug)]
    struct Timeline {
        clock: quanta::Clock,
        /// The counter reading the counter's nanoseconds count from.
        origin_raw: u64,
        base: std::time::Instant,
        /// `base` as a tokio instant (the same instant: tokio's wraps std's).
        base_tokio: Instant,
        /// [`REANCHOR_EVERY`] in counter ticks.
        period: u64,
        anchor: Anchor,
    }

    static TIMELINE: OnceLock<Timeline> = OnceLock::new();

    /// The instant of counter reading `ns` (an [`Epoch`]'s, so the timeline exists).
    pub(super) fn counter_instant(ns: u64) -> Instant {
        Timeline::get().instant(ns)
    }

    impl Timeline {
        fn get() -> &'static Self {
            TIMELINE.get_or_init(|| {
                // The first clock calibrates the counter (quanta, once per process).
                let clock = quanta::Clock::new();
                let base = std::time::Instant::now();
                let origin_raw = clock.raw();
                // Ticks per period from the calibrated scale: 2^32 ticks in nanoseconds.
                let probe = 1u64 << 32;
                let probe_ns = clock.delta_as_nanos(0, probe).max(1);
                let period = u128::from(probe) * REANCHOR_EVERY.as_nanos() / u128::from(probe_ns);
                let period = u64::try_from(period).unwrap_or(u64::MAX).max(1);
                let mut timeline = Self {
                    clock,
                    origin_raw,
                    base,
                    base_tokio: Instant::from_std(base),
                    period,
                    anchor: Anchor::new(0, 0),
                };
                // The first anchor is taken whatever its gap: there is no other.
                let (_, offset) = timeline.tightest_offset();
                timeline.anchor = Anchor::new(offset, origin_raw.saturating_add(period));
                timeline
            })
        }

        /// The counter's nanoseconds at `raw`.
        #[inline]
        fn scaled(&self, raw: u64) -> u64 {
            self.clock.delta_as_nanos(self.origin_raw, raw)
        }

        /// The OS clock's nanoseconds since `base` less the counter's, read together: the
        /// counter is read on both sides of the OS clock and its midpoint taken, the error
        /// being half the gap. A thread preempted between the reads would leave a gap of
        /// milliseconds, so the tightest of a few tries is kept, and `None` answered when even
        /// that one is wider than [`MAX_GAP_DIVISOR`] allows (a machine busy enough to preempt
        /// every try):
        /// the old anchor is better than a bad one.
        fn offset_now(&self) -> Option<u64> {
            let (gap, offset) = self.tightest_offset();
            (gap <= self.period / MAX_GAP_DIVISOR).then_some(offset)
        }

        /// The tightest of a few offset readings, and its gap in counter ticks.
        fn tightest_offset(&self) -> (u64, u64) {
            let mut best = (u64::MAX, 0);
            for _ in 0..4 {
                let before = self.clock.raw();
                let os = nanos(std::time::Instant::now().saturating_duration_since(self.base));
                let after = self.clock.raw().max(before);
                let gap = after - before;
                if gap < best.0 {
                    best = (gap, os.wrapping_sub(self.scaled(before + gap / 2)));
                }
                // Within a period's thousandth (1 µs): as good as another try would get.
                if gap <= self.period / 1_000 {
                    break;
                }
            }
            best
        }

        /// Nanoseconds since `base` now; 0 for a reading that would land before `base`.
        #[inline]
        fn ns(&self) -> u64 {
            let raw = self.clock.raw();
            let ns = self
                .anchor
                .read(raw, self.scaled(raw), self.period, || self.offset_now());
            // Two's complement: a reading a few nanoseconds before `base` (the anchor's error)
            // is "negative"; count it as `base`.
            if ns > u64::MAX / 2 { 0 } else { ns }
        }

        /// The reading now, or the open call scope's counter reading (stamping it if this is
        /// the scope's first counter read).
        #[inline]
        fn ns_in_scope(&self) -> u64 {
            CALL.try_with(|c| match c.stamp.get() {
                Stamp::Closed => self.ns(),
                Stamp::Open | Stamp::At(_) => match c.counter.get() {
                    Some(ns) => ns,
                    None => {
                        let ns = self.ns();
                        c.counter.set(Some(ns));
                        ns
                    }
                },
            })
            .unwrap_or_else(|_| self.ns())
        }

        #[inline]
        fn instant(&self, ns: u64) -> Instant {
            saturating_add(self.base_tokio, Duration::from_nanos(ns))
        }
    }

    /// A clock that reads the CPU's time-stamp counter through [`quanta`] (feature
    /// `fast-clock`), for layers that read the time on every request; the default clock of the
    /// rate limiter, the breaker, the canary, the `ObserveLayer` and the `DegradeLayer`'s
    /// sampled request timing, through [`FastClock::unless_pausable`].
    ///
    /// [`TokioClock`](super::TokioClock) is a vDSO `clock_gettime`, which costs 20–50 ns on
    /// many virtual machines; a TSC read plus a multiply and a shift is cheaper where the CPU
    /// has an invariant TSC (quanta falls back to `clock_gettime` where it has not).
    ///
    /// **One timeline for the process.** Every counter clock reads the same timeline: the
    /// counter's nanoseconds, re-anchored to the OS clock (`std::time::Instant`, which
    /// `tokio::time::Instant` wraps) by the first read after each millisecond. Its instants
    /// are the OS clock's to within a microsecond, so they are proper `tokio::time::Instant`s
    /// for deadlines and sleeps, two counter clocks made at different times agree, and the
    /// counter's calibration error never accumulates.
    ///
    /// **One read per request.** Inside a [`CallScope`](super::CallScope) (degrade's layers
    /// open one in `call`), the first counter read of the request is the reading of every
    /// other counter read in that scope, as [`TokioClock`] shares its own first read: a stack
    /// whose layers all run on the default clock reads the counter once per request. The two
    /// stamps are kept apart — a counter clock never answers tokio's instant and `TokioClock`
    /// never answers the counter's — because under paused tokio time they are different
    /// timelines, and a layer that mixed them would, for example, refill a rate limit with
    /// paused time's jumps.
    ///
    /// The caveats of a clock made by [`FastClock::new`]:
    ///
    /// * **It does not follow tokio's paused time.** `tokio::time::pause` / `advance` do not
    ///   move it; tests must keep using `TokioClock` or a `ManualClock`.
    ///   [`FastClock::unless_pausable`] (the layers' default) avoids this one: where
    ///   tokio's time can be paused it reads [`TokioClock`] instead.
    /// * **It can step backwards by a little**: when two reads land on cores whose counters
    ///   are not perfectly synchronised (a known quanta property), and by the anchor's error
    ///   when it is re-anchored (well under a microsecond). The layers tolerate it: a rate
    ///   limiter that sees an earlier `now` only becomes stricter for that decision, windows
    ///   saturate elapsed times at zero, and latencies are clamped at zero.
    ///
    /// A clock is one byte and copies freely; the timeline is made (and the counter
    /// calibrated) by the first counter clock of the process.
    ///
    /// ```
    /// use degrade_core::clock::CallScope;
    /// use degrade_core::{Clock, FastClock};
    /// use std::time::Duration;
    ///
    /// let clock = FastClock::new();
    /// let a = clock.now();
    /// // The OS clock's timeline, to within the anchor's error.
    /// let os = tokio::time::Instant::now();
    /// assert!(a <= os + Duration::from_millis(1) && os <= a + Duration::from_secs(1));
    ///
    /// // One read per call scope, whichever counter clock makes it.
    /// let scope = CallScope::enter();
    /// let first = FastClock::new().now();
    /// std::thread::sleep(Duration::from_millis(1));
    /// assert_eq!(clock.now(), first);
    /// drop(scope);
    /// assert!(clock.now() > first);
    /// ```
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct FastClock {
        source: Source,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Source {
        /// The process's counter timeline.
        Counter,
        /// [`TokioClock`]: made where tokio's time can be paused.
        Tokio,
    }

    impl FastClock {
        /// A clock on the process's counter timeline (see the type's docs), which runs in real
        /// time whether or not tokio's time is paused.
        ///
        /// The first counter clock made in a process calibrates the counter against the OS
        /// clock (quanta does this once, for a few milliseconds).
        ///
        /// ```
        /// # use degrade_core::{Clock, FastClock};
        /// let before = tokio::time::Instant::now();
        /// let clock = FastClock::new();
        /// assert!(clock.now() + std::time::Duration::from_micros(100) >= before);
        /// assert!(!clock.follows_tokio());
        /// ```
        pub fn new() -> Self {
            let _ = Timeline::get();
            Self {
                source: Source::Counter,
            }
        }

        /// The counter where tokio's time cannot be paused, [`TokioClock`] where it can: the
        /// clock degrade's layers pick by default for their per-request reads.
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
        /// [`TokioClock`] or a `ManualClock` explicitly. A clock given to a builder is never
        /// replaced.
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

        /// The counter's reading now (the open call scope's, as [`now`](Clock::now) reads
        /// it) in nanoseconds since the counter timeline's [`counter_base`](Self::counter_base),
        /// or `None` when this clock follows tokio: for a policy that keeps its own times in
        /// nanoseconds, the same reading as `now()` without making an [`Instant`] and
        /// measuring it back.
        #[inline]
        pub(crate) fn counter_ns(&self) -> Option<u64> {
            match (self.source, TIMELINE.get()) {
                (Source::Counter, Some(t)) => Some(t.ns_in_scope()),
                (Source::Counter, None) | (Source::Tokio, _) => None,
            }
        }

        /// The instant the counter timeline counts from, once a counter clock exists:
        /// `now()` on the counter is this instant plus [`counter_ns`](Self::counter_ns).
        pub(crate) fn counter_base() -> Option<Instant> {
            TIMELINE.get().map(|t| t.base_tokio)
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

        /// The clock as a word, for state that keeps its clock in an atomic (the adaptive
        /// limiter's recycled state): [`from_word`](Self::from_word) gives it back.
        #[inline]
        pub(crate) fn to_word(self) -> u32 {
            match self.source {
                Source::Counter => 0,
                Source::Tokio => 1,
            }
        }

        /// The clock [`to_word`](Self::to_word) made `word` from.
        #[inline]
        pub(crate) fn from_word(word: u32) -> Self {
            let source = if word == 0 {
                Source::Counter
            } else {
                Source::Tokio
            };
            Self { source }
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
            match (self.source, TIMELINE.get()) {
                (Source::Counter, Some(t)) => t.instant(t.ns_in_scope()),
                // A counter clock exists only once the timeline does.
                (Source::Counter, None) | (Source::Tokio, _) => TokioClock.now(),
            }
        }

        /// ```
        /// use degrade_core::{Clock, FastClock};
        ///
        /// let clock = FastClock::new();
        /// let epoch = clock.epoch();
        /// std::thread::sleep(std::time::Duration::from_millis(2));
        /// let ns = clock.nanos_since(&epoch);
        /// assert!(ns >= 1_900_000, "{ns}"); // within the anchor's error of 2 ms
        /// ```
        #[inline]
        fn epoch(&self) -> Epoch {
            match (self.source, TIMELINE.get()) {
                (Source::Counter, Some(t)) => Epoch(Reading::Counter(t.ns_in_scope())),
                (Source::Counter, None) | (Source::Tokio, _) => {
                    Epoch(Reading::At(TokioClock.now()))
                }
            }
        }

        /// On the counter, the difference of two counter readings: no [`Instant`] is made.
        #[inline]
        fn nanos_since(&self, epoch: &Epoch) -> u64 {
            match (self.source, TIMELINE.get(), epoch.0) {
                (Source::Counter, Some(t), Reading::Counter(from)) => {
                    t.ns_in_scope().saturating_sub(from)
                }
                _ => nanos(self.now().saturating_duration_since(epoch.instant())),
            }
        }
    }

    #[cfg(all(test, degrade_loom))]
    mod loom_models {
        //! `RUSTFLAGS="--cfg degrade_loom" cargo test -p degrade-core --release --features
        //! fast-clock --lib loom_models`
        use super::Anchor;
        use crate::sync::{AtomicU64, Ordering};
        use loom::sync::Arc;
        use loom::thread;

        const PERIOD: u64 = 100;

        /// Two readers find the anchor due at once: exactly one of them takes the OS reading
        /// and moves `due` by a period; each reading is the counter plus a whole anchor — the
        /// first one or the new one, never a value no one stored — and once both have
        /// returned the new anchor is the one read, without another OS reading.
        #[test]
        fn a_due_anchor_moves_once_and_every_reading_is_a_whole_anchor() {
            loom::model(|| {
                let anchor = Arc::new(Anchor::new(1_000, 50));
                let os_reads = Arc::new(AtomicU64::new(0));
                let os = |reads: &AtomicU64| {
                    reads.fetch_add(1, Ordering::Relaxed);
                    Some(7_000)
                };
                let other = {
                    let (anchor, os_reads) = (Arc::clone(&anchor), Arc::clone(&os_reads));
                    thread::spawn(move || anchor.read(60, 60, PERIOD, || os(&os_reads)))
                };
                let mine = anchor.read(70, 70, PERIOD, || os(&os_reads));
                let theirs = other.join().unwrap();
                assert!(mine == 1_070 || mine == 7_070, "{mine}");
                assert!(theirs == 1_060 || theirs == 7_060, "{theirs}");
                assert_eq!(os_reads.load(Ordering::Relaxed), 1, "one re-anchoring");
                let due = anchor.due.load(Ordering::Relaxed);
                assert!(due == 60 + PERIOD || due == 70 + PERIOD, "{due}");
                assert_eq!(anchor.read(80, 80, PERIOD, || os(&os_reads)), 7_080);
                assert_eq!(os_reads.load(Ordering::Relaxed), 1);
            });
        }
    }

    #[cfg(all(test, not(degrade_loom)))]
    mod tests {
        use super::*;
        use crate::clock::CallScope;

        /// Re-anchoring keeps the counter on the OS clock: after many periods the two agree
        /// to well within a millisecond, in both directions.
        #[test]
        fn the_counter_timeline_stays_on_the_os_clock() {
            let clock = FastClock::new();
            for _ in 0..5 {
                std::thread::sleep(Duration::from_millis(3));
                let before = tokio::time::Instant::now();
                let reading = clock.now();
                let after = tokio::time::Instant::now();
                let slack = Duration::from_micros(100);
                assert!(reading + slack >= before, "{reading:?} vs {before:?}");
                assert!(reading <= after + slack, "{reading:?} vs {after:?}");
            }
        }

        /// The scope's counter stamp and tokio's are separate: each clock answers its own
        /// first read, never the other's.
        #[tokio::test(start_paused = true)]
        async fn a_scope_never_hands_one_clocks_reading_to_the_other() {
            tokio::time::advance(Duration::from_secs(3600)).await;
            let counter = FastClock::new();
            let scope = CallScope::enter();
            let paused = TokioClock.now();
            let real = counter.now();
            assert_eq!(TokioClock.now(), paused);
            assert_eq!(counter.now(), real);
            // An hour of paused time apart: the counter did not take tokio's stamp.
            assert!(
                paused - real >= Duration::from_secs(3500),
                "{paused:?} {real:?}"
            );
            drop(scope);

            // Counter first, then tokio: the same.
            let _scope = CallScope::enter();
            let real = counter.now();
            let paused = TokioClock.now();
            assert!(
                paused - real >= Duration::from_secs(3500),
                "{paused:?} {real:?}"
            );
        }

        /// An epoch is no bigger than the instant a response future kept before.
        #[test]
        fn an_epoch_is_as_small_as_an_instant() {
            assert_eq!(size_of::<Epoch>(), size_of::<Instant>());
            assert_eq!(size_of::<FastClock>(), 1);
            let counter = FastClock::new().epoch();
            assert!(matches!(counter.0, Reading::Counter(_)));
            let at = counter.instant();
            assert!(at <= FastClock::new().now() + Duration::from_micros(100));
        }

        /// Epochs and nanoseconds: an epoch from another clock is measured by its instant.
        #[test]
        fn an_epoch_from_another_clock_is_measured_by_its_instant() {
            let counter = FastClock::new();
            let foreign = Epoch(Reading::At(std::time::Instant::now().into()));
            std::thread::sleep(Duration::from_millis(2));
            let ns = counter.nanos_since(&foreign);
            assert!((1_900_000..1_000_000_000).contains(&ns), "{ns}");
        }

        /// An OS reading that came back too wide (`None`) leaves the anchor as it was and
        /// waits a period before the next try.
        #[test]
        fn a_failed_reanchoring_keeps_the_old_anchor_for_a_period() {
            let anchor = Anchor::new(1_000, 50);
            assert_eq!(anchor.read(60, 60, 100, || None), 1_060);
            assert_eq!(anchor.due.load(Ordering::Relaxed), 160);
            assert_eq!(anchor.read(150, 150, 100, || unreachable!()), 1_150);
            assert_eq!(anchor.read(170, 170, 100, || Some(5_000)), 5_170);
        }

        /// The anchor's period is the configured one in counter ticks: a reading after more
        /// than a period finds the anchor moved.
        #[test]
        fn the_anchor_moves_after_a_period() {
            let t = Timeline::get();
            let _ = t.ns();
            let due = t.anchor.due.load(Ordering::Relaxed);
            std::thread::sleep(REANCHOR_EVERY * 2);
            let _ = t.ns();
            assert!(t.anchor.due.load(Ordering::Relaxed) > due);
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
