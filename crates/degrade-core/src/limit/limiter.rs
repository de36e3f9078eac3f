//! The limiter: the [`Law`] and the [`WaitQueue`] behind atomics, shared by every clone of a
//! layer.
//!
//! * Admit (hot path): a slot this thread keeps (see [`lease`](super::lease): a plain load and
//!   store while the limit has headroom), else one compare-and-swap on the [`InFlight`] word;
//!   no lock, no allocation, no reference count (the response future refers to the limiter's
//!   [`Shared`] state — the word, the leases, the window — which outlives the limiter and is
//!   recycled through [`crate::recycle`]).
//!   Timing a request costs two clock reads (on the [`LimitClock`]; the start is the call
//!   scope's reading, shared with the other layers on the same clock), so a request is timed only while the current
//!   window still needs samples (up to four timed requests per sample it needs, so answers
//!   that never become samples — errors, rejections further in — do not time every request),
//!   while demand is near the limit (where the law acts: every such request, unless the last
//!   window gathered more than [`PLENTY`] times the samples it needed — a service of
//!   nanoseconds or microseconds — then one in [`near_every`]), and one in
//!   [`timing_every`](LimitConfig::timing_every) otherwise (one in `timing_every` ×
//!   [`near_every`] past plenty); every request is *counted*.
//! * Complete: the slot is kept by the completing thread while its lease holds, else one
//!   `fetch_sub`; a timed request adds its latency to its own thread's row of the window's
//!   sums (plain stores, merged when the window closes), and the completion that finds the
//!   window done reaches the limiter through its owner link and takes the law's lock with
//!   `try_lock` (never waits) to move the limit.
//! * Overload: a request that finds the limit full (or waiters ahead of it) takes the queue's
//!   lock: it is admitted ahead of lower priorities, queued (bounded), or refused.

use super::inflight::{InFlight, Released};
use super::lease::{self, Host, Leases};
use super::queue::{Fate, Patience, Pushed, Ticket, WaitQueue};
use super::{Law, LimitConfig, Window, shares};
use crate::clock::Clock;
use crate::counter::ShardedCounter;
use crate::priority::Priority;
use crate::recycle::{Pool, Pooled, Recycle};
use crate::sync::{AtomicU32, AtomicU64, Mutex, MutexGuard, Ordering};
use crossbeam_utils::CachePadded;
use std::cell::Cell;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, PoisonError, Weak};
use std::task::Waker;
use std::time::Duration;
use tokio::time::Instant;

/// The clock that times the limiter's sampled requests and its queue:
/// [`FastClock::unless_pausable`](crate::FastClock::unless_pausable) with feature `fast-clock`
/// (the counter timeline the other layers' defaults read, so a request's start is one read
/// of the call scope's counter stamp for the whole stack; tokio's clock inside a
/// `current_thread` runtime, so paused time is followed), [`TokioClock`](crate::TokioClock)
/// without.
#[cfg(feature = "fast-clock")]
pub(crate) type LimitClock = crate::clock::FastClock;
/// The clock that times the limiter's sampled requests and its queue (see the `fast-clock`
/// version).
#[cfg(not(feature = "fast-clock"))]
pub(crate) type LimitClock = crate::clock::TokioClock;

/// The limiter's clock, chosen where the limiter is made.
fn limit_clock() -> LimitClock {
    #[cfg(feature = "fast-clock")]
    {
        LimitClock::unless_pausable()
    }
    #[cfg(not(feature = "fast-clock"))]
    {
        LimitClock::default()
    }
}

/// The owner's [`LimitClock`], kept in the recycled [`Shared`] state for the completions
/// (written when the state is taken, while nothing is in flight).
#[derive(Debug)]
struct ClockCell {
    #[cfg(feature = "fast-clock")]
    word: AtomicU32,
}

impl ClockCell {
    fn new() -> Self {
        Self {
            #[cfg(feature = "fast-clock")]
            word: AtomicU32::new(0),
        }
    }

    fn set(&self, clock: LimitClock) {
        #[cfg(feature = "fast-clock")]
        self.word.store(clock.to_word(), Ordering::Relaxed);
        #[cfg(not(feature = "fast-clock"))]
        let _ = clock;
    }

    #[inline]
    fn get(&self) -> LimitClock {
        #[cfg(feature = "fast-clock")]
        {
            LimitClock::from_word(self.word.load(Ordering::Relaxed))
        }
        #[cfg(not(feature = "fast-clock"))]
        {
            LimitClock::default()
        }
    }
}

/// What a request holds while it is in flight: what the completion needs to record it.
///
/// Sixteen bytes, copied into every response future: an untimed request (most of them below
/// the limit) only gives its slot back, and reads nothing else.
///
/// Two words, so that [`Limiter::timed_slot`] (out of line) returns it in two registers: as
/// three fields it came back through memory written as three stores and was copied on with
/// one 16-byte load, which the processor cannot forward from those stores (a stall of a dozen
/// cycles on every timed request).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    /// When it entered the inner service, in nanoseconds since the limiter state's anchor
    /// ([`Shared::ns`]); [`UNTIMED`] when untimed.
    start: i64,
    /// The low half: requests in flight when it entered, itself included
    /// ([`Limiter::concurrency`]: within two slots per other lease holder), [`LOW`] set when
    /// that was low concurrency; the high half: the window it was admitted in.
    word: u64,
}

/// The bit of [`Slot::concurrency`] that says "admitted at low concurrency".
const LOW: u32 = 1 << 31;

/// [`Slot::start`] of an untimed request.
const UNTIMED: i64 = i64::MIN;

impl Slot {
    pub(crate) const UNTIMED: Slot = Slot {
        start: UNTIMED,
        word: 0,
    };

    /// A slot admitted at `start` with `concurrency` (its [`LOW`] bit included) in window
    /// `epoch`.
    #[inline]
    fn new(start: i64, concurrency: u32, epoch: u32) -> Self {
        Self {
            start,
            word: u64::from(concurrency) | u64::from(epoch) << 32,
        }
    }

    #[inline]
    fn epoch(&self) -> u32 {
        (self.word >> 32) as u32
    }

    #[inline]
    fn concurrency_word(&self) -> u32 {
        self.word as u32
    }

    #[inline]
    fn is_timed(&self) -> bool {
        self.start != UNTIMED
    }

    fn concurrency(&self) -> u32 {
        self.concurrency_word() & !LOW
    }

    fn low(&self) -> bool {
        self.concurrency_word() & LOW != 0
    }
}

/// The answer of the overload path.
#[derive(Debug)]
pub(crate) enum Entry {
    /// Admitted at once.
    Admitted(Permit),
    /// Queued: wait for the ticket's fate until the deadline; a request held to its
    /// priority's share also wakes at the hold's end (see [`HOLD_SHARE`]), when a free slot
    /// may go to its priority.
    Queued(Ticket, Instant, Option<Instant>),
    /// Refused: the queue is full of requests at least as important (critical ones excepted:
    /// they take the oldest critical waiter's place), or nothing is learnt yet.
    Refused,
}

/// The window's sums, one [`ShardedCounter`] row per thread (a timed completion writes its
/// own thread's row with plain stores: no line shared between threads, no locked
/// instruction). The rows are never cleared while the state is owned: a window is the
/// difference between the totals when it closes and the totals [`Cells::taken`] when the
/// previous one closed, so the law gets the same inputs whichever threads recorded them.
/// `SAMPLES` is the last index, written last (with release), and read first by the closer.
const LATENCY_SUM: usize = 0;
const LATENCY_SQ_SUM: usize = 1;
const CONCURRENCY_SUM: usize = 2;
const LOW_SAMPLES: usize = 3;
const LOW_LATENCY_SUM: usize = 4;
const HALF_SAMPLES: usize = 5;
const HALF_LATENCY_SUM: usize = 6;
const FAST_FAILURES: usize = 7;
const CAPPED_SAMPLES: usize = 8;
const CAPPED_EXCESS: usize = 9;
const SAMPLES: usize = 10;
const SUMS: usize = 11;

/// Window accumulators, bumped by timed completions.
#[derive(Debug)]
struct Cells {
    /// Per-thread running totals (see [`SAMPLES`]).
    sums: ShardedCounter<SUMS>,
    /// The totals when the last window closed (written by the closer, under the law's lock).
    taken: [AtomicU64; SUMS],
    /// The longest latency of the window: shared, but written only when a sample exceeds it
    /// (a few times a window), so most samples only read it.
    max_latency_ns: CachePadded<AtomicU64>,
    /// The highest concurrency at which a sample met the target latency in this window
    /// (`Window::served_concurrency`): written like the longest latency, only when a sample
    /// exceeds it.
    served: AtomicU32,
    /// Requests timed in this window because it was short of samples (not a sample yet:
    /// errors and cancellations may never become one).
    timed_for_samples: AtomicU32,
}

impl Default for Cells {
    fn default() -> Self {
        Self {
            sums: ShardedCounter::new(),
            taken: Default::default(),
            max_latency_ns: CachePadded::new(AtomicU64::new(0)),
            served: AtomicU32::new(0),
            timed_for_samples: AtomicU32::new(0),
        }
    }
}

impl Cells {
    /// Samples in the current window (every thread's row summed: for the rare readers, the
    /// window's close and a window short of samples).
    fn samples(&self) -> u64 {
        self.sums
            .get(SAMPLES)
            .wrapping_sub(self.taken[SAMPLES].load(Ordering::Relaxed))
    }

    /// The window since the last close, and the totals marked taken (under the law's lock).
    /// A sample recorded meanwhile may leave its sums in this window and its count in the
    /// next: the count is read first, so never the other way round.
    fn take(&self) -> [u64; SUMS] {
        let samples = self.sums.get(SAMPLES);
        std::array::from_fn(|i| {
            let total = if i == SAMPLES {
                samples
            } else {
                self.sums.get(i)
            };
            total.wrapping_sub(self.taken[i].swap(total, Ordering::Relaxed))
        })
    }

    fn reset(&self) {
        self.sums.reset();
        for t in &self.taken {
            t.store(0, Ordering::Relaxed);
        }
        self.max_latency_ns.store(0, Ordering::Relaxed);
        self.served.store(0, Ordering::Relaxed);
        self.timed_for_samples.store(0, Ordering::Relaxed);
    }
}

/// How long a critical request may wait at a cold start, before anything has completed:
/// there is no latency to scale a wait by yet, and refusing it at once refused critical calls
/// that came in the first service time over the initial limit (from a cold start at 3x over
/// gRPC, one or two in about one start of four). Once the first completions give a target,
/// the expiry passes judge it by that; the second only bounds a service that completes
/// nothing (as long as the layer's default `Retry-After`, not a figure of any backend).
const COLD_WAIT: Duration = Duration::from_secs(1);

/// Below this (nanoseconds), [`Limiter::first_target`] gives no target.
const FIRST_TARGET_FLOOR_NS: f64 = 1_000.0;

/// A window short of samples times at most this many requests per sample it needs: when
/// answers do not become samples (a service whose calls all fail fast, or are rejected by a
/// layer further in), the window fills through the one-in-`timing_every` requests instead of
/// timing every request.
const TIMED_PER_NEEDED_SAMPLE: u32 = 4;

/// The samples a window takes, in multiples of what it needs, before requests near the limit
/// are no longer all timed: a window that gathered more than this many times its needs had
/// timed requests the law did not need (at 100 ns a request, every one of the millions in a
/// window, each paying two clock reads and the window's sums: 60 ns instead of 10).
const PLENTY: u32 = 8;

/// The most [`near_every`] spaces out the requests near the limit that are timed.
const MAX_NEAR_EVERY: u32 = 1 << 16;

/// One request in how many near the limit (demand past half of it) the next window times,
/// after a window that timed them one in `previous` and gathered `samples` where the law
/// needs `needed`: 1 (every one) until a window gathers more than [`PLENTY`] times its needs,
/// then as many as make the next window's samples about that many. The one-in-`timing_every`
/// countdown that keeps the baseline fresh is spaced out by the same factor, so a window's
/// samples, near the limit or not, scale as one over this. So a service of milliseconds,
/// whose windows hold tens of samples, keeps timing every request near the limit and one in
/// `timing_every` of the others, and one of a hundred nanoseconds times a thousandth of
/// them. A window short of samples is filled by the short-of-samples timing whatever this
/// is.
pub(crate) fn near_every(previous: u32, samples: u32, needed: u32) -> u32 {
    let goal = u64::from(needed.max(1)) * u64::from(PLENTY);
    let scaled = u64::from(samples) * u64::from(previous.max(1)) / goal;
    scaled.clamp(1, u64::from(MAX_NEAR_EVERY)) as u32
}

/// Counters of the limiter, for its snapshot.
#[derive(Debug, Default)]
struct Counters {
    queued: AtomicU64,
    expired: AtomicU64,
    evicted: AtomicU64,
    refused: AtomicU64,
    queue_delay_ns: AtomicU64,
    /// `refused + expired + evicted` when the last window closed.
    at_close: AtomicU64,
}

impl Counters {
    /// The requests rejected (refused at once, expired or evicted) since the last call:
    /// the window's [`rejected`](Window::rejected), counted when it closes.
    fn rejected_since_close(&self) -> u32 {
        let total = self.refused.load(Ordering::Relaxed)
            + self.expired.load(Ordering::Relaxed)
            + self.evicted.load(Ordering::Relaxed);
        let last = self.at_close.swap(total, Ordering::Relaxed);
        u32::try_from(total.saturating_sub(last)).unwrap_or(u32::MAX)
    }
}

/// What a limiter shares with its response futures, in memory that outlives the limiter: the
/// in-flight word (see [`InFlight`](super::inflight)), the leases, and what a timed
/// completion records into and reads — the window's cells and the law's published bounds.
/// Futures refer to it with a plain `&'static`, never a reference count; it is recycled
/// through a [`Pool`] once nothing is in flight, so a future that outlives its limiter
/// records into its own limiter's (orphaned) state and never into a new limiter's.
#[derive(Debug)]
struct Shared {
    in_flight: CachePadded<InFlight>,
    /// The slots threads keep while the limit has headroom (counted by `in_flight` too).
    leases: Leases,
    /// The limiter the state belongs to, to hand a freed slot to its waiters and to close a
    /// window. The standard mutex even under loom: it is held only to read or swap the
    /// pointer, never across an atomic or another lock.
    owner: std::sync::Mutex<Weak<Limiter>>,
    /// Fixed for the object's life: every time below is in signed nanoseconds from it
    /// ([`ns`](Self::ns)), so a new owner needs no origin of its own, even on a clock (paused
    /// tokio time in another runtime) that reads earlier than this.
    anchor: Instant,
    /// The owner's clock: a timed request's completion is read on the clock its start was.
    clock: ClockCell,
    /// The anchor in signed nanoseconds on the counter timeline (`i64` bits), set while the
    /// owner's clock is on the counter: a counter reading less this is [`ns`](Self::ns) of
    /// the same instant, without making the instant ([`now_ns`](Self::now_ns)).
    #[cfg(feature = "fast-clock")]
    anchor_on_counter: AtomicU64,
    /// Requests in flight at or below which a completion counts as a half-limit sample
    /// (zero once a baseline is known).
    half: AtomicU32,
    needed: AtomicU32,
    epoch: AtomicU32,
    /// 0 until known.
    baseline_ns: AtomicU64,
    /// The most of one latency the window's sums count (`Law::sample_cap`), 0 until known.
    sample_cap_ns: AtomicU64,
    /// The latency a sample meets to count as served without a queue (`Law::target_latency`),
    /// 0 until known.
    target_ns: AtomicU64,
    /// The window's start ([`ns`](Self::ns), as `i64` bits) and bounds, nanoseconds.
    window_start_ns: AtomicU64,
    min_window_ns: AtomicU64,
    max_window_ns: AtomicU64,
    cells: Cells,
}

/// `at` in signed nanoseconds since `from` (saturating).
#[inline]
fn signed_nanos(at: Instant, from: Instant) -> i64 {
    match at.checked_duration_since(from) {
        Some(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        None => i64::try_from(from.duration_since(at).as_nanos()).map_or(i64::MIN + 1, |n| -n),
    }
}

/// The limiters' shared states, recycled once idle (see [`crate::recycle`]).
#[cfg(not(degrade_loom))]
static STATES: Pool<Shared> = Pool::new();
#[cfg(degrade_loom)]
static STATES: std::sync::LazyLock<Pool<Shared>> = std::sync::LazyLock::new(Pool::new);

impl Shared {
    /// A recycled state of `pool` (the limiters' [`STATES`]; a model's own under loom), or a
    /// new one (kept for the life of the process, and reused).
    fn take(
        pool: &'static Pool<Shared>,
        owner: Weak<Limiter>,
        clock: LimitClock,
    ) -> Pooled<Shared> {
        let now = clock.now();
        let shared = pool.take(|| Shared {
            in_flight: CachePadded::new(InFlight::new()),
            leases: Leases::default(),
            owner: std::sync::Mutex::new(Weak::new()),
            anchor: now,
            clock: ClockCell::new(),
            #[cfg(feature = "fast-clock")]
            anchor_on_counter: AtomicU64::new(0),
            half: AtomicU32::new(0),
            needed: AtomicU32::new(0),
            epoch: AtomicU32::new(0),
            baseline_ns: AtomicU64::new(0),
            sample_cap_ns: AtomicU64::new(0),
            target_ns: AtomicU64::new(0),
            window_start_ns: AtomicU64::new(0),
            min_window_ns: AtomicU64::new(0),
            max_window_ns: AtomicU64::new(u64::MAX),
            cells: Cells::default(),
        });
        *shared.lock_owner() = owner;
        shared.clock.set(clock);
        #[cfg(feature = "fast-clock")]
        if let (false, Some(base)) = (clock.follows_tokio(), LimitClock::counter_base()) {
            let anchor = signed_nanos(shared.anchor, base);
            shared
                .anchor_on_counter
                .store(anchor as u64, Ordering::Relaxed);
        }
        shared
            .window_start_ns
            .store(shared.ns(now) as u64, Ordering::Relaxed);
        shared
    }

    /// `at` in signed nanoseconds since the anchor.
    #[inline]
    fn ns(&self, at: Instant) -> i64 {
        signed_nanos(at, self.anchor)
    }

    /// [`ns`](Self::ns) of `clock`'s reading now. On the counter it is the counter's
    /// nanoseconds less the anchor's — the same figure (`now()` on the counter is the
    /// timeline's base plus the counter's nanoseconds) without the two conversions through
    /// an [`Instant`] that cost a timed request about 15 ns on a KVM guest.
    #[inline]
    fn now_ns(&self, clock: &LimitClock) -> i64 {
        #[cfg(feature = "fast-clock")]
        if let Some(ns) = clock.counter_ns() {
            let anchor = self.anchor_on_counter.load(Ordering::Relaxed) as i64;
            return i64::try_from(ns).unwrap_or(i64::MAX).saturating_sub(anchor);
        }
        self.ns(clock.now())
    }

    /// The instant of `ns` (from [`ns`](Self::ns)).
    fn instant_of(&self, ns: i64) -> Instant {
        match u64::try_from(ns) {
            Ok(after) => crate::clock::saturating_add(self.anchor, Duration::from_nanos(after)),
            Err(_) => self
                .anchor
                .checked_sub(Duration::from_nanos(ns.unsigned_abs()))
                .unwrap_or(self.anchor),
        }
    }

    /// Nanoseconds from `earlier` to `later` (both from [`ns`](Self::ns)), 0 if negative.
    #[inline]
    fn between(earlier: i64, later: i64) -> u64 {
        u64::try_from(later.saturating_sub(earlier)).unwrap_or(0)
    }

    /// The baseline latency, if known (for the completion path's fast-failure test).
    #[inline]
    fn baseline(&self) -> Option<Duration> {
        match self.baseline_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// Adds a timed request to the window: its latency counts if it succeeded or failed
    /// slowly; a fast failure counts apart. Reached through the response future's
    /// `&'static`: no reference count on the limiter.
    #[inline(never)]
    fn complete_timed(&self, slot: Slot, outcome: Completion) {
        debug_assert!(slot.is_timed());
        // A window takes the requests admitted within it, and the requests longer than a
        // window (leaving them out would hide every request slower than a window); shorter
        // ones admitted earlier ran under an older limit.
        let now_ns = self.now_ns(&self.clock.get());
        let latency = Duration::from_nanos(Self::between(slot.start, now_ns));
        let window = self.min_window_ns.load(Ordering::Relaxed);
        if slot.epoch() != self.epoch.load(Ordering::Relaxed) && nanos(latency) <= window {
            return;
        }
        let slow = self.baseline().is_none_or(|b| latency >= b);
        match outcome {
            Completion::Success => self.record(latency, slot),
            Completion::Failure | Completion::Cancelled if slow => self.record(latency, slot),
            Completion::Failure => self.cells.sums.add(FAST_FAILURES, 1),
            Completion::Cancelled | Completion::Ignored => {}
        }
        self.maybe_close(now_ns);
    }

    /// One latency sample into this thread's row of the window's sums.
    fn record(&self, latency: Duration, slot: Slot) {
        let whole = nanos(latency);
        let max = &self.cells.max_latency_ns;
        if whole > max.load(Ordering::Relaxed) {
            max.fetch_max(whole, Ordering::Relaxed);
        }
        let ns = match self.sample_cap_ns.load(Ordering::Relaxed) {
            0 => whole,
            cap => whole.min(cap),
        };
        let target = self.target_ns.load(Ordering::Relaxed);
        if whole <= target {
            let served = &self.cells.served;
            if slot.concurrency() > served.load(Ordering::Relaxed) {
                served.fetch_max(slot.concurrency(), Ordering::Relaxed);
            }
        }
        let us = ns / 1_000;
        let mut add = [0; SUMS];
        if ns < whole {
            add[CAPPED_SAMPLES] = 1;
            add[CAPPED_EXCESS] = whole - ns;
        }
        add[LATENCY_SUM] = ns;
        add[LATENCY_SQ_SUM] = us.saturating_mul(us);
        add[CONCURRENCY_SUM] = u64::from(slot.concurrency());
        if slot.low() {
            add[LOW_SAMPLES] = 1;
            add[LOW_LATENCY_SUM] = ns;
        }
        if slot.concurrency() <= self.half.load(Ordering::Relaxed) {
            add[HALF_SAMPLES] = 1;
            add[HALF_LATENCY_SUM] = ns;
        }
        // Last (the highest index), so a closer that sees the count sees the sums.
        add[SAMPLES] = 1;
        self.cells.sums.add_each(&add);
    }

    /// Asks the owner to close the window once it is due: its longest span passed, or its
    /// shortest passed with the samples it needs (the samples are summed over the threads'
    /// rows only then).
    #[inline]
    fn maybe_close(&self, now_ns: i64) {
        let start = self.window_start_ns.load(Ordering::Relaxed) as i64;
        let elapsed = Self::between(start, now_ns);
        let due = elapsed >= self.max_window_ns.load(Ordering::Relaxed)
            || (elapsed >= self.min_window_ns.load(Ordering::Relaxed)
                && self.cells.samples() >= u64::from(self.needed.load(Ordering::Relaxed)));
        if due {
            self.close_for_owner(self.instant_of(now_ns));
        }
    }

    #[cold]
    #[inline(never)]
    fn close_for_owner(&self, now: Instant) {
        // The guard is dropped before the limiter is used (and perhaps dropped).
        let owner = self.lock_owner().upgrade();
        if let Some(limiter) = owner {
            limiter.close(now);
        }
    }

    /// The window since the last close, as the law reads it (under the law's lock).
    fn take_window(&self, binding: bool, elapsed: Duration) -> Window {
        let d = self.cells.take();
        let count = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        self.cells.timed_for_samples.store(0, Ordering::Relaxed);
        Window {
            samples: count(d[SAMPLES]),
            latency_sum_ns: d[LATENCY_SUM],
            latency_sq_sum_us: d[LATENCY_SQ_SUM],
            concurrency_sum: d[CONCURRENCY_SUM],
            low_samples: count(d[LOW_SAMPLES]),
            low_latency_sum_ns: d[LOW_LATENCY_SUM],
            half_samples: count(d[HALF_SAMPLES]),
            half_latency_sum_ns: d[HALF_LATENCY_SUM],
            binding,
            fast_failures: count(d[FAST_FAILURES]),
            max_latency_ns: self.cells.max_latency_ns.swap(0, Ordering::Relaxed),
            capped_samples: count(d[CAPPED_SAMPLES]),
            capped_excess_ns: d[CAPPED_EXCESS],
            served_concurrency: self.cells.served.swap(0, Ordering::Relaxed),
            elapsed,
            // Counted by the limiter when the window closes.
            rejected: 0,
        }
    }

    fn lock_owner(&self) -> std::sync::MutexGuard<'_, Weak<Limiter>> {
        self.owner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot comes back: kept by this thread while its lease holds, else to a waiter if any.
    #[inline]
    fn release(&'static self) {
        if lease::keep(self) {
            return;
        }
        let released = self.in_flight.release();
        if released != NOTHING_TO_DO {
            self.after_release(released);
        }
    }

    #[inline(never)]
    fn after_release(&'static self, released: Released) {
        if released.waiters {
            // The guard is dropped before the limiter is used (and perhaps dropped).
            let owner = self.lock_owner().upgrade();
            if let Some(limiter) = owner {
                limiter.hand_on();
            }
        }
    }
}

/// Idle once nothing is in flight, kept or waiting (the word counts all three): a timed
/// request records before it gives its slot back, so nothing writes the cells either.
impl Recycle for Shared {
    fn is_idle(&self) -> bool {
        self.in_flight.is_idle()
    }

    fn reset(&self) {
        *self.lock_owner() = Weak::new();
        self.in_flight.reset();
        self.leases.reset();
        self.epoch.store(0, Ordering::Relaxed);
        self.cells.reset();
        // The law's bounds are published by the next owner.
    }
}

impl Host for Shared {
    fn in_flight(&self) -> &InFlight {
        &self.in_flight
    }

    fn leases(&self) -> &Leases {
        &self.leases
    }

    fn after_release(&'static self, released: Released) {
        Shared::after_release(self, released);
    }
}

const NOTHING_TO_DO: Released = Released { waiters: false };

/// A slot of the limit held by an admitted request: given back once, by
/// [`finish`](Permit::finish) with the request's outcome or, if the future is dropped first,
/// as a cancellation. No request holds a reference count: the limiter's [`Shared`] state
/// outlives it. Twenty-four bytes.
#[derive(Debug)]
pub(crate) struct Permit {
    /// `None` when nothing is held (no limit, or given back).
    shared: Option<&'static Shared>,
    /// A timed request's completion goes to the window.
    slot: Slot,
}

impl Permit {
    /// Nothing held.
    pub(crate) const NONE: Permit = Permit {
        shared: None,
        slot: Slot::UNTIMED,
    };

    /// Holds a slot.
    #[inline]
    pub(crate) fn holds(&self) -> bool {
        self.shared.is_some()
    }

    /// The request finished with `outcome`: the slot goes back (once; later calls and the drop
    /// do nothing).
    #[inline(always)]
    pub(crate) fn finish(&mut self, outcome: Completion) {
        let Some(shared) = self.shared.take() else {
            return;
        };
        if self.slot.is_timed() {
            // Recorded while the slot is still held, so the state cannot be recycled meanwhile.
            shared.complete_timed(self.slot, outcome);
        }
        shared.release();
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        self.finish(Completion::Cancelled);
    }
}

/// The adaptive limit of one layer.
#[derive(Debug)]
pub(crate) struct Limiter {
    shared: Pooled<Shared>,
    /// The law's decisions, published for the hot path.
    limit: AtomicU32,
    limit_critical: AtomicU32,
    /// Each priority's limit for a new request (by [`Priority::index`]): the law's, or the
    /// priority's share of it while a priority above it is pressured ([`shares`]). Written
    /// only under the queue's lock, from `limit`, `limit_critical` and `pressure` as they are
    /// then, so the last write is always of the latest state.
    limits: [AtomicU32; 5],
    /// The priorities pressured (a request of theirs was refused): bit `1 << index` of
    /// the current window, and the same bits shifted by [`PREVIOUS`] for the window before.
    /// Written only under the queue's lock.
    pressure: AtomicU32,
    low: AtomicU32,
    queue_target_ns: AtomicU64,
    /// The law's [`queue_target`](Law::queue_target), the target of every priority but
    /// critical ([`Limiter::target_ns`]): half again as long as `queue_target_ns` near
    /// capacity, shorter above it (see [`Law::rejected_share`]).
    others_target_ns: AtomicU64,
    /// How long a critical request may wait ([`Law::max_wait`]).
    critical_wait_ns: AtomicU64,
    binding: AtomicBool,
    /// The window (its epoch plus one) that may still be short of samples, 0 once it is not:
    /// a line written twice a window, read by every untimed request instead of the window's
    /// counts (which timed completions write).
    short: AtomicU32,
    /// Requests near the limit are timed one in this many ([`near_every`]; 1: every one), the
    /// others one in `timing_every` times this; written at each window's close.
    near_every: AtomicU32,
    counters: Counters,
    /// Loom's mutexes under `--cfg degrade_loom` ([`crate::sync`]), so that the model of a
    /// waiter withdrawing while a slot is handed on (`loom_models`) explores both locks.
    law: Mutex<Law>,
    queue: Mutex<WaitQueue<Option<Waker>>>,
    clock: LimitClock,
    config: LimitConfig,
}

thread_local! {
    /// Per-thread countdown to the next one-in-N timed request: no shared write and no
    /// division on the hot path.
    static COUNTDOWN: Cell<u32> = const { Cell::new(0) };
    /// The same for the one-in-[`near_every`] timed requests near the limit.
    static NEAR_COUNTDOWN: Cell<u32> = const { Cell::new(0) };
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Limiter {
    pub(crate) fn new(config: LimitConfig) -> Arc<Self> {
        Self::new_in(&STATES, config)
    }

    /// A limiter whose shared state comes from `pool`: [`STATES`], or a loom model's own pool
    /// (a state made in one model execution must not be recycled into the next).
    fn new_in(pool: &'static Pool<Shared>, config: LimitConfig) -> Arc<Self> {
        let law = Law::new(config.clone());
        // Slots are held by futures until they read their fate, so twice the largest queue.
        let capacity = (queue_bound(&config, config.max) as usize)
            .saturating_mul(2)
            .clamp(2, 2 * MAX_WAITING);
        let clock = limit_clock();
        Arc::new_cyclic(|owner| {
            let shared = Shared::take(pool, owner.clone(), clock);
            Self::with_shared(shared, config, law, capacity, clock)
        })
    }

    fn with_shared(
        shared: Pooled<Shared>,
        config: LimitConfig,
        law: Law,
        capacity: usize,
        clock: LimitClock,
    ) -> Self {
        let limiter = Self {
            shared,
            limit: AtomicU32::new(0),
            limit_critical: AtomicU32::new(0),
            limits: std::array::from_fn(|_| AtomicU32::new(0)),
            pressure: AtomicU32::new(0),
            low: AtomicU32::new(0),
            queue_target_ns: AtomicU64::new(0),
            others_target_ns: AtomicU64::new(0),
            critical_wait_ns: AtomicU64::new(0),
            binding: AtomicBool::new(false),
            short: AtomicU32::new(1),
            near_every: AtomicU32::new(1),
            counters: Counters::default(),
            queue: Mutex::new(WaitQueue::new(capacity)),
            law: Mutex::new(law),
            clock,
            config,
        };
        limiter.publish(&limiter.lock_law());
        limiter.publish_limits(&limiter.lock_queue());
        limiter
    }

    fn lock_law(&self) -> MutexGuard<'_, Law> {
        self.law.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_queue(&self) -> MutexGuard<'_, WaitQueue<Option<Waker>>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes the law's state for the hot path.
    fn publish(&self, law: &Law) {
        let before = self.limit.swap(law.limit(), Ordering::Relaxed);
        self.shared.leases.limit(law.limit(), before);
        self.limit_critical
            .store(law.limit_for(Priority::Critical), Ordering::Relaxed);
        self.low.store(law.low_concurrency(), Ordering::Relaxed);
        self.shared
            .half
            .store(law.half_concurrency(), Ordering::Relaxed);
        self.shared
            .needed
            .store(law.samples_needed(), Ordering::Relaxed);
        let baseline = law.baseline().map_or(0, nanos);
        self.shared.baseline_ns.store(baseline, Ordering::Relaxed);
        // The law's rule for each priority's target: critical, and every other.
        let target = |p| law.queue_target_for(p).map_or(0, nanos);
        self.queue_target_ns
            .store(target(Priority::Critical), Ordering::Relaxed);
        self.others_target_ns
            .store(target(Priority::Normal), Ordering::Relaxed);
        self.critical_wait_ns.store(
            law.max_wait(Priority::Critical).map_or(0, nanos),
            Ordering::Relaxed,
        );
        self.shared
            .sample_cap_ns
            .store(law.sample_cap().map_or(0, nanos), Ordering::Relaxed);
        self.shared
            .target_ns
            .store(law.target_latency().map_or(0, nanos), Ordering::Relaxed);
        let (min, max) = law.window_bounds();
        self.shared
            .min_window_ns
            .store(nanos(min), Ordering::Relaxed);
        self.shared
            .max_window_ns
            .store(max.map_or(u64::MAX, nanos), Ordering::Relaxed);
    }

    /// Publishes each priority's limit (see [`limits`](Self::limits)); the queue's guard
    /// proves the lock is held.
    fn publish_limits(&self, _queue: &WaitQueue<Option<Waker>>) {
        let limits = shares(
            self.limit.load(Ordering::Relaxed),
            self.limit_critical.load(Ordering::Relaxed),
            self.pressured(),
        );
        for (cell, limit) in self.limits.iter().zip(limits) {
            cell.store(limit, Ordering::Relaxed);
        }
    }

    /// The queueing-delay target of a waiter of `priority`, in nanoseconds (0 before one is
    /// known), as published at the last window: the law's rule
    /// ([`Law::queue_target_for`]) on the two targets it gave.
    fn target_ns(&self, priority: Priority) -> u64 {
        let plain = self.queue_target_ns.load(Ordering::Relaxed);
        if priority == Priority::Critical {
            return plain;
        }
        // Before the law published one (a cold start's first target), the plain one.
        match self.others_target_ns.load(Ordering::Relaxed) {
            0 => plain,
            other => other,
        }
    }

    /// The priorities pressured in this window or the last (bit `1 << index`).
    fn pressured(&self) -> u8 {
        let bits = self.pressure.load(Ordering::Relaxed);
        ((bits | bits >> PREVIOUS) & PRIORITY_BITS) as u8
    }

    /// A request of `priority` was refused — at once (the queue full of requests at least as
    /// important), at its deadline, or evicted — (under the queue's lock): the priorities
    /// below it keep their shares from now on, until two windows pass without another.
    fn press(&self, queue: &WaitQueue<Option<Waker>>, priority: Priority) {
        let bit = 1 << priority.index();
        let before = self.pressure.fetch_or(bit, Ordering::Relaxed);
        if (before | before >> PREVIOUS) & bit == 0 {
            self.publish_limits(queue);
        }
    }

    /// A window closed (under the queue's lock): its pressure becomes the previous window's.
    fn roll_pressure(&self, queue: &WaitQueue<Option<Waker>>) {
        let bits = self.pressure.load(Ordering::Relaxed);
        self.pressure
            .store((bits & PRIORITY_BITS) << PREVIOUS, Ordering::Relaxed);
        self.publish_limits(queue);
    }

    /// The limit of `priority` with no share applied (the law's).
    fn whole_limit(&self, priority: Priority) -> u32 {
        if priority == Priority::Critical {
            self.limit_critical.load(Ordering::Relaxed)
        } else {
            self.limit.load(Ordering::Relaxed)
        }
    }

    /// The limit a new request of `priority` is admitted under: one load, whatever the
    /// priority.
    #[inline]
    fn limit_for(&self, priority: Priority) -> u32 {
        self.limits[priority.index()].load(Ordering::Relaxed)
    }

    /// The hot path: a slot this thread keeps (no locked instruction), or one from the word
    /// when nobody waits and the limit has room.
    #[inline(always)]
    pub(crate) fn try_acquire(self: &Arc<Self>, priority: Priority) -> Option<Permit> {
        let taken = self.try_take(priority)?;
        Some(self.permit_for(taken))
    }

    /// The hot path's slot, before its permit is made: `(in flight as the word counts it,
    /// the limit)`. Separate so that a caller counts the admission before the permit exists
    /// (a permit built first is kept on the stack across the count and moved from there in
    /// 16-byte halves written as 8-byte halves: a store-forwarding stall of ~5 ns).
    #[inline(always)]
    pub(crate) fn try_take(&self, priority: Priority) -> Option<(u32, u32)> {
        let limit = self.limit_for(priority);
        if lease::take(self.shared.get()) {
            let (concurrency, _) = self.shared.in_flight.load();
            return Some((concurrency, limit));
        }
        let concurrency = self.shared.in_flight.try_acquire(limit)?;
        let whole = self.limit.load(Ordering::Relaxed);
        // Under 16 leases come back only while no priority is held to a share (the lowest
        // has the whole limit): a kept slot admits whatever the priority.
        self.shared.leases.adjust(concurrency, whole, || {
            self.limits[0].load(Ordering::Relaxed) >= whole
        });
        Some((concurrency, limit))
    }

    /// The permit of a slot from [`try_take`](Self::try_take).
    #[inline(always)]
    pub(crate) fn permit_for(self: &Arc<Self>, (concurrency, limit): (u32, u32)) -> Permit {
        self.permit(concurrency, limit, false)
    }

    /// The permit of a request admitted with `concurrency` in flight.
    #[inline(always)]
    fn permit(self: &Arc<Self>, concurrency: u32, limit: u32, always_time: bool) -> Permit {
        let slot = self.slot(concurrency, limit, always_time);
        Permit {
            shared: Some(self.shared.get()),
            slot,
        }
    }

    /// The slot of a request admitted with `concurrency` in flight (the word's count, slots
    /// kept by threads included): timed (two clock reads and
    /// the window's atomics at completion) only when the law needs it — demand near the limit,
    /// a window short of samples, or one request in `timing_every` to keep the baseline
    /// fresh; otherwise nothing is read but the countdown.
    #[inline]
    fn slot(&self, concurrency: u32, limit: u32, always_time: bool) -> Slot {
        if always_time || (2 * concurrency >= limit && self.near_due()) || self.countdown() {
            self.timed_slot(concurrency)
        } else if self.short_of_samples() {
            self.shared
                .cells
                .timed_for_samples
                .fetch_add(1, Ordering::Relaxed);
            self.timed_slot(concurrency)
        } else {
            Slot::UNTIMED
        }
    }

    /// The window lacks samples and has not timed its share of requests for them yet. Both
    /// counts only grow within a window, so once it is not short it stays so: the first
    /// request that sees it clears the window's flag, and later ones read only the flag.
    #[inline]
    fn short_of_samples(&self) -> bool {
        let window = self.short.load(Ordering::Relaxed);
        if window == 0 {
            return false;
        }
        let needed = self.shared.needed.load(Ordering::Relaxed);
        let short = self.shared.cells.samples() < u64::from(needed)
            && self.shared.cells.timed_for_samples.load(Ordering::Relaxed)
                < needed.saturating_mul(TIMED_PER_NEEDED_SAMPLE);
        if !short {
            // Only this window's flag: a window that opened meanwhile keeps its own.
            let _ = self
                .short
                .compare_exchange(window, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
        short
    }

    /// Whether a request near the limit is timed: always while [`near_every`] is 1, else once
    /// every that many such requests on this thread.
    #[inline]
    fn near_due(&self) -> bool {
        let every = self.near_every.load(Ordering::Relaxed);
        every <= 1
            || NEAR_COUNTDOWN.with(|c| match c.get() {
                0 | 1 => {
                    c.set(every);
                    true
                }
                n => {
                    c.set(n - 1);
                    false
                }
            })
    }

    /// `true` once every `timing_every` calls on this thread — every `timing_every` ×
    /// [`near_every`] once windows gather more than [`PLENTY`] times the samples the law
    /// needs (a service of nanoseconds or microseconds, where the one in `timing_every` alone
    /// times tens of thousands of requests a window, each paying two clock reads and, with
    /// other threads keeping slots, their cells' cache lines).
    #[inline]
    fn countdown(&self) -> bool {
        COUNTDOWN.with(|c| match c.get() {
            0 | 1 => {
                let every = self.near_every.load(Ordering::Relaxed);
                c.set(self.config.timing_every.saturating_mul(every));
                true
            }
            n => {
                c.set(n - 1);
                false
            }
        })
    }

    #[inline(never)]
    fn timed_slot(&self, counted: u32) -> Slot {
        let low_bound = self.low.load(Ordering::Relaxed);
        let concurrency = self.concurrency(counted, low_bound);
        let low = if concurrency <= low_bound { LOW } else { 0 };
        Slot::new(
            self.shared.now_ns(&self.clock),
            concurrency.min(!LOW) | low,
            self.shared.epoch.load(Ordering::Relaxed),
        )
    }

    /// The requests in flight as a timed request records them, when the word counts
    /// `counted`: the word less the slots threads keep. While leases are on and the count is
    /// at most half the limit, from this thread's own cell, a bound on the others' and what
    /// they kept at this thread's last census (see [`lease::View::estimate`]: within two slots
    /// per other lease holder, the same low-concurrency and half-limit verdicts); otherwise
    /// every thread's cell is read.
    #[inline]
    fn concurrency(&self, counted: u32, low: u32) -> u32 {
        let half = self.limit.load(Ordering::Relaxed) / 2;
        let shared = self.shared.get();
        let view = lease::view(shared);
        let guess = || lease::others_kept(shared, || shared.leases.kept().saturating_sub(view.own));
        view.estimate(counted, low, half, guess)
            .unwrap_or_else(|| counted.saturating_sub(shared.leases.kept()).max(1))
    }

    /// The overload path: admit ahead of lower priorities, queue, or refuse.
    pub(crate) fn enter(self: &Arc<Self>, priority: Priority) -> Entry {
        // Near the limit every slot counts: threads give back what they keep.
        self.shared.leases.revoke();
        // The time is needed only to expire waiters and to queue: read it (outside the lock)
        // when requests wait, and otherwise only once this request is about to queue.
        let (_, waiting) = self.shared.in_flight.load();
        let mut now = (waiting > 0).then(|| self.clock.now());
        let mut queue = self.lock_queue();
        let alone = queue.len() == 0;
        if !alone {
            let at = *now.get_or_insert_with(|| self.clock.now());
            self.expire(&mut queue, at);
            if self.shared.leases.stranded() > 0 {
                // Slots idle threads still keep are free: the waiters take them first.
                self.drain(&mut queue, at);
            }
        }
        let stranded = self.shared.leases.stranded();
        let limit = self.limit_for(priority).saturating_add(stranded);
        if queue.best_priority().is_none_or(|best| best < priority)
            && let Some(n) = self.shared.in_flight.try_acquire_ahead(limit)
        {
            // Demand reached the limit unless the word was full only of slots idle threads
            // kept (a small limit's leases): admitted with nobody waiting, it is within the
            // limit's worth in flight, as on the fast path.
            if !(alone && stranded > 0) {
                self.bind();
            }
            return Entry::Admitted(self.permit(n, limit, true));
        }
        self.bind();
        let mut target = self.target_ns(priority);
        if target == 0 {
            target = self.first_target();
        }
        // No target: a request is refused, unless nothing has completed yet and it is critical
        // (it waits for the first completions, see `COLD_WAIT`; never with `queue_delay` 0).
        let cold = target == 0;
        if cold
            && (priority != Priority::Critical
                || self.shared.cells.samples() > 0
                || self.config.queue_delay <= 0.0)
        {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            self.press(&queue, priority);
            return Entry::Refused;
        }
        let now = now.unwrap_or_else(|| self.clock.now());
        let patience = if cold {
            Patience {
                wait: COLD_WAIT,
                interval: COLD_WAIT,
            }
        } else {
            Patience::under(
                Duration::from_nanos(target),
                self.critical_wait(),
                priority,
                self.pressured(),
                queue.critical_crowd(1),
            )
        };
        let bound = queue_bound(&self.config, self.limit.load(Ordering::Relaxed));
        match queue.push(priority, now, bound as usize, None) {
            Pushed::Queued { ticket, evicted } => {
                self.shared.in_flight.add_waiter();
                self.counters.queued.fetch_add(1, Ordering::Relaxed);
                if let Some((_, waker, victim)) = evicted {
                    self.shared.in_flight.remove_waiter();
                    self.counters.evicted.fetch_add(1, Ordering::Relaxed);
                    self.press(&queue, victim);
                    if let Some(w) = waker {
                        w.wake();
                    }
                }
                // A slot may have been freed since the fast path looked.
                self.drain(&mut queue, now);
                // Held to its share: the slot it could have had may go to it after the hold.
                let held = self.limit_for(priority) < self.whole_limit(priority);
                let hold = held.then(|| now + hold(Duration::from_nanos(target)));
                Entry::Queued(ticket, queue.deadline(now, patience), hold)
            }
            Pushed::Full(_) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                self.press(&queue, priority);
                Entry::Refused
            }
        }
    }

    /// Demand reached the limit in this window (a request waits or is refused).
    #[inline]
    fn bind(&self) {
        if !self.binding.load(Ordering::Relaxed) {
            self.binding.store(true, Ordering::Relaxed);
        }
    }

    /// What the in-flight word may count on the overload path for a request admitted under
    /// `limit`: the limit, plus the slots threads still keep under leases since revoked
    /// ([`Leases::stranded`](super::lease::Leases::stranded)). The word counts those until
    /// their holders' next touch; a holder that stays idle (a worker thread with nothing to
    /// do, the thread that made one call at start-up) would otherwise keep them from the
    /// limit for as long as it is idle — all of a limit of 2 after the limit fell from 32.
    /// Once given back they leave the word and the allowance alike.
    #[inline]
    fn room(&self, limit: u32) -> u32 {
        limit.saturating_add(self.shared.leases.stranded())
    }

    /// Hands free slots to the best waiters (under the queue's lock).
    fn drain(&self, queue: &mut WaitQueue<Option<Waker>>, now: Instant) {
        while let Some(best) = queue.best_priority() {
            let target = Duration::from_nanos(self.target_ns(best));
            // Under a standing queue (it has not emptied for a whole target), newest first
            // (not before there is a target: critical waiters at a cold start, oldest first).
            let mut standing =
                (!target.is_zero() && queue.standing_for(now) > target).then_some(target);
            if self
                .shared
                .in_flight
                .try_acquire_ahead(self.room(self.limit_for(best)))
                .is_none()
            {
                // Held to its share: a slot above it goes to the priority's oldest waiter once
                // that one has waited the hold (no newer one overtakes it there).
                let whole = self.room(self.whole_limit(best));
                let held = queue
                    .oldest_since(best)
                    .is_some_and(|since| now.saturating_duration_since(since) >= hold(target));
                if !held || self.shared.in_flight.try_acquire_ahead(whole).is_none() {
                    break;
                }
                standing = None;
            }
            match queue.grant(now, standing) {
                Some((_, waker, waited)) => {
                    self.shared.in_flight.remove_waiter();
                    self.counters
                        .queue_delay_ns
                        .store(nanos(waited), Ordering::Relaxed);
                    if let Some(w) = waker {
                        w.wake();
                    }
                }
                None => {
                    // Cannot happen (a best priority exists); give the slot back.
                    let _ = self.shared.in_flight.release();
                    break;
                }
            }
        }
    }

    /// Ends the waits past their deadline (under the queue's lock): a waiter past its target
    /// is refused only once the queue stands (see [`Patience`]), so one late waiter of a
    /// burst at the knee is served instead.
    fn expire(&self, queue: &mut WaitQueue<Option<Waker>>, now: Instant) {
        if self.target_ns(Priority::Critical) == 0 || queue.len() == 0 {
            return;
        }
        let mut expired = 0u64;
        let critical = self.critical_wait();
        let pressured = self.pressured();
        let alone = queue.critical_crowd(0);
        for priority in Priority::ALL {
            let target = Duration::from_nanos(self.target_ns(priority));
            let patience = Patience::under(target, critical, priority, pressured, alone);
            let lane = priority.index();
            let before = expired;
            queue.expire_lanes(lane..lane + 1, now, patience, |_, waker: Option<Waker>| {
                expired += 1;
                if let Some(w) = waker {
                    w.wake();
                }
            });
            if expired > before {
                self.press(queue, priority);
            }
        }
        for _ in 0..expired {
            self.shared.in_flight.remove_waiter();
        }
        self.counters.expired.fetch_add(expired, Ordering::Relaxed);
    }

    /// Polls a queued request: its fate, or `None` (after storing `waker`) while it waits.
    pub(crate) fn poll_ticket(&self, ticket: Ticket, waker: &Waker) -> Option<Fate> {
        let mut queue = self.lock_queue();
        match queue.take(ticket) {
            Some(fate) => Some(fate),
            None => {
                if let Some(slot) = queue.payload_mut(ticket) {
                    match slot {
                        Some(w) if w.will_wake(waker) => {}
                        _ => *slot = Some(waker.clone()),
                    }
                }
                None
            }
        }
    }

    /// The time on the limiter's clock (the timeline of the deadlines [`enter`](Self::enter)
    /// gives queued requests).
    pub(crate) fn now(&self) -> Instant {
        self.clock.now()
    }

    /// The permit of a granted waiter.
    pub(crate) fn granted_permit(self: &Arc<Self>) -> Permit {
        let (n, _) = self.shared.in_flight.load();
        self.permit(n, self.limit.load(Ordering::Relaxed), true)
    }

    /// A queued request gives up: its deadline passed (`expired`: the request's priority), or
    /// its future was dropped (`None`). Returns its fate if one was decided meanwhile (a
    /// granted slot is then the caller's to use or release); `None` means it left the queue
    /// unserved.
    pub(crate) fn withdraw(&self, ticket: Ticket, expired: Option<Priority>) -> Option<Fate> {
        let mut queue = self.lock_queue();
        let fate = queue.cancel(ticket);
        if fate.is_none() {
            self.shared.in_flight.remove_waiter();
            if let Some(priority) = expired {
                self.counters.expired.fetch_add(1, Ordering::Relaxed);
                self.press(&queue, priority);
            }
        }
        fate
    }

    /// How long a critical request may wait, as the law last published it.
    fn critical_wait(&self) -> Duration {
        Duration::from_nanos(self.critical_wait_ns.load(Ordering::Relaxed))
    }

    /// A queueing-delay target before the law has one (under the queue's lock), in
    /// nanoseconds: `queue_delay` times the mean latency of the completions timed so far
    /// (every request is timed until the first window has its samples), published until the
    /// law's first target replaces it; 0 while nothing has completed, or when that is under
    /// a microsecond (a service of nanoseconds has no use for a queue, and `queue_delay` 0
    /// none at all).
    ///
    /// Without it a request that found the initial limit full was refused at once, whatever
    /// its priority, until the first window was judged: from a cold start at 3x, 3 critical
    /// calls of 1,189 over gRPC (`xtask/clients/grpc_load.py` against `cargo xtask serve
    /// --grpc`), all in the first 200 ms.
    #[cold]
    fn first_target(&self) -> u64 {
        let cells = &self.shared.cells;
        let samples = cells.samples();
        if samples == 0 {
            return 0;
        }
        let sum = cells
            .sums
            .get(LATENCY_SUM)
            .wrapping_sub(cells.taken[LATENCY_SUM].load(Ordering::Relaxed));
        let target = (sum / samples) as f64 * self.config.queue_delay;
        // NaN (no latency summed yet) is not a target either.
        if target.is_nan() || target < FIRST_TARGET_FLOOR_NS {
            return 0;
        }
        let target = target.min(u64::MAX as f64 / 4.0) as u64;
        // The law's own, if it published one meanwhile, stands.
        match self
            .queue_target_ns
            .compare_exchange(0, target, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => {
                let _ = self.critical_wait_ns.compare_exchange(
                    0,
                    nanos(super::law::critical_wait(Duration::from_nanos(target))),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                target
            }
            Err(published) => published,
        }
    }

    /// A slot comes back (a granted waiter that will not use it).
    pub(crate) fn release(&self) {
        self.shared.get().release();
    }

    /// Requests wait: the freed slot goes to the best of them, and then the waiters left are
    /// judged against their target. In that order: a stall of the host (the process did not
    /// run) ages every waiter at once, and the completions that end it free slots for them;
    /// expiring first refused a critical waiter that the slot freed this moment would serve
    /// (`tests/stall.rs`). A non-critical waiter past its target is served only when every
    /// waiter of its priority is (a standing queue serves the newest first).
    #[inline(never)]
    fn hand_on(&self) {
        let now = self.clock.now();
        let mut queue = self.lock_queue();
        self.drain(&mut queue, now);
        self.expire(&mut queue, now);
    }

    /// A waiter held to its priority's share reached the hold's end: a free slot goes to the
    /// best waiter, its priority's whole limit counting for it now.
    pub(crate) fn hold_ended(&self) {
        self.hand_on();
    }

    /// A completion found the window due: whoever gets the law's lock closes it (the others
    /// carry on).
    fn close(&self, now: Instant) {
        let Ok(mut law) = self.law.try_lock() else {
            return;
        };
        let shared = &*self.shared;
        let now_ns = shared.ns(now);
        let start = shared.window_start_ns.load(Ordering::Relaxed) as i64;
        let elapsed = Duration::from_nanos(Shared::between(start, now_ns));
        let samples = u32::try_from(shared.cells.samples()).unwrap_or(u32::MAX);
        if !law.window_done(samples, elapsed) {
            return;
        }
        let mut window = shared.take_window(self.binding.swap(false, Ordering::Relaxed), elapsed);
        window.rejected = self.counters.rejected_since_close();
        let before = law.limit();
        let after = law.observe(&window, now);
        let every = self.near_every.load(Ordering::Relaxed);
        self.near_every.store(
            near_every(every, window.samples, law.samples_needed()),
            Ordering::Relaxed,
        );
        let epoch = shared.epoch.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        shared
            .window_start_ns
            .store(now_ns as u64, Ordering::Relaxed);
        self.publish(&law);
        // The new window may be short of samples (after its counts and `needed` are reset).
        self.short
            .store(epoch.wrapping_add(1).max(1), Ordering::Relaxed);
        if after != before {
            tracing::debug!(
                target: "degrade::limit",
                from = before,
                to = after,
                baseline_ms = law.baseline().map_or(0.0, |b| b.as_secs_f64() * 1e3),
                latency_ms = window.mean_latency().map_or(0.0, |l| l.as_secs_f64() * 1e3),
                ratio = law.latency_ratio().unwrap_or(0.0),
                served = law.served(),
                samples = window.samples,
                rejected_share = law.rejected_share(),
                "concurrency limit changed"
            );
        }
        drop(law);
        // The new limits (and the shares of the pressure that rolled off) in one write, then
        // the waiters they may let in.
        let mut queue = self.lock_queue();
        self.roll_pressure(&queue);
        if queue.len() > 0 {
            self.drain(&mut queue, now);
        }
    }

    /// The limiter's state, for snapshots.
    pub(crate) fn snapshot(&self) -> LimitSnapshot {
        let (in_flight, waiting) = self.shared.leases.in_flight(&self.shared.in_flight);
        let law = self.lock_law();
        LimitSnapshot {
            limit: law.limit(),
            in_flight,
            waiting,
            baseline: law.baseline(),
            latency_ratio: law.latency_ratio(),
            served: law.served(),
            queue_target: law.queue_target(),
            rejected_share: law.rejected_share(),
            queue_delay: Duration::from_nanos(self.counters.queue_delay_ns.load(Ordering::Relaxed)),
            queued: self.counters.queued.load(Ordering::Relaxed),
            expired: self.counters.expired.load(Ordering::Relaxed),
            evicted: self.counters.evicted.load(Ordering::Relaxed),
            refused: self.counters.refused.load(Ordering::Relaxed),
            pressured: {
                let bits = self.pressured();
                std::array::from_fn(|p| bits & (1 << p) != 0)
            },
            kept: self.shared.leases.kept(),
        }
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        *self.shared.lock_owner() = Weak::new();
        // Kept slots come back at their threads' next touch (or exit). The word goes back to
        // its pool when this drop's `Pooled` does: reused once idle.
        self.shared.leases.revoke();
    }
}

/// How a request in flight ended, for the law.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Completion {
    Success,
    Failure,
    Ignored,
    Cancelled,
}

/// How long a request held to its priority's share (a priority above it is pressured) waits
/// for a request of the pressured priority to take the free slot before it may take it
/// itself: this fraction of the queueing-delay target (1/20 of the baseline with the default
/// target). The slot reserved for a pressured priority stands idle at most this long, so the
/// reservation costs little capacity when the pressured priority does not come. Measured on
/// the simulator's overload table (`SIM_SEEDS=61-120`, `seeds`): with no hold, goodput fell
/// up to 12 points (2 slots × 200 ms: a slot kept for high and critical requests stood idle);
/// with a tenth of the target, by 0.3 at most on every backend (a twentieth was no better).
pub(crate) const HOLD_SHARE: u32 = 10;

/// The hold of a request held to its share, under the queueing-delay target `target`.
pub(crate) fn hold(target: Duration) -> Duration {
    target / HOLD_SHARE
}

/// [`Limiter::pressure`]: the previous window's bits sit this far above the current one's.
const PREVIOUS: u32 = 8;
/// [`Limiter::pressure`]: one bit per priority.
const PRIORITY_BITS: u32 = (1 << 5) - 1;

/// The most requests that ever wait at once, whatever the limit.
pub(crate) const MAX_WAITING: usize = 4096;

/// A limit below this counts as this many for the wait queue's bound: at a limit of one or two
/// a queue of `queue_size` limits holds one or two waiters, too few for the burst of critical
/// requests a small backend sees at 1.5x (the simulator's seeds table over seeds 1-12: 2 slots x
/// 200 ms refused 10 critical requests of 1,847 with room for two waiters, 1 with room for
/// four; 2 CPU-shared cores 34 of 4,419, then 6; `capacity-halves` over seeds 1-50 on 2 slots,
/// 2 cores and 6 slots 40 in all, then 6). A waiter still waits no longer than its target, so
/// the room costs no latency (the same runs' p99 within 0.1x either way); a limit of four or
/// more is unaffected.
pub(crate) const MIN_QUEUE_LIMIT: u32 = 4;

/// The most requests that may wait under `limit`: `queue_size` times the limit (counted as at
/// least [`MIN_QUEUE_LIMIT`]), at least one, at most [`MAX_WAITING`].
pub(crate) fn queue_bound(config: &LimitConfig, limit: u32) -> u32 {
    ((config.queue_size * f64::from(limit.max(MIN_QUEUE_LIMIT))).ceil() as u32)
        .clamp(1, MAX_WAITING as u32)
}

/// The state of an adaptive limit: what it learnt, and what its queue did.
///
/// ```
/// use degrade_core::{Controller, DegradeLayer};
/// let c = Controller::new(Default::default()).unwrap();
/// let layer = DegradeLayer::builder(c.handle()).build().unwrap();
/// let limit = layer.snapshot().limit.unwrap();
/// assert_eq!(limit.limit, 16); // the initial limit, before anything is learnt
/// assert_eq!(limit.baseline, None);
/// assert_eq!(limit.served, 0);
/// assert_eq!(limit.rejected_share, 1.0); // nothing judged yet
/// assert_eq!(limit.pressured, [false; 5]); // nothing refused yet
/// assert_eq!(limit.kept, 0); // no thread has given a slot back yet
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct LimitSnapshot {
    /// The concurrency limit.
    pub limit: u32,
    /// Requests in the inner service now.
    pub in_flight: u32,
    /// Requests waiting for a slot now.
    pub waiting: u32,
    /// The service's no-load latency, as learnt.
    pub baseline: Option<Duration>,
    /// The latest window's mean latency over the baseline.
    pub latency_ratio: Option<f64>,
    /// The highest concurrency the service was seen to serve without a queue (0 until known):
    /// a window demand does not fill leaves the limit at most a tolerance and one request
    /// above it (see [`Law::served`]).
    pub served: u32,
    /// How long a request may wait for a slot (a critical one: see [`Law::max_wait`]).
    pub queue_target: Option<Duration>,
    /// The share of the requests offered that the limiter rejected lately, a moving
    /// average over windows (1 until a window is judged): under 15 %, demand is about
    /// capacity and the wait is half again as long (see [`Law::rejected_share`]).
    pub rejected_share: f64,
    /// How long the latest request handed a slot had waited.
    pub queue_delay: Duration,
    /// Requests that waited for a slot, ever.
    pub queued: u64,
    /// Waiting requests refused at their deadline, ever.
    pub expired: u64,
    /// Waiting requests refused to make room for a higher priority, ever, or for a newer
    /// critical request when only critical requests waited (the oldest of them goes).
    pub evicted: u64,
    /// Requests refused at once (queue full of requests at least as important), ever.
    pub refused: u64,
    /// The priorities pressured now, by [`Priority::index`]: a request of the priority was
    /// refused in the current window or the last. While one is, a new request of a lower
    /// priority takes a slot at once only while fewer than its share of the limit are in
    /// flight (see [`Law::limits_under`]).
    pub pressured: [bool; 5],
    /// Slots threads keep now: below half a limit of 16 or more, a thread keeps the slots its
    /// requests gave back and admits its next requests from them (see the crate's README,
    /// "Hot path"); they are not in flight. After the leases are revoked a thread gives them
    /// back at its next call, and meanwhile they do not take from the limit.
    pub kept: u32,
}

#[cfg(all(test, not(degrade_loom)))]
mod tests {
    use super::*;

    /// A window's worth of samples: a spread of latencies and concurrencies, a third of them
    /// at low concurrency.
    fn samples() -> Vec<(Duration, Slot)> {
        (0..96u32)
            .map(|i| {
                let latency = Duration::from_nanos(500_000 + u64::from(i * 37_013 % 1_000_003));
                let low = if i % 3 == 0 { LOW } else { 0 };
                let slot = Slot::new(0, (1 + i % 20) | low, 0);
                (latency, slot)
            })
            .collect()
    }

    /// The sample cap the windows are recorded under (the samples run 0.5-1.5 ms).
    const CAP_NS: u64 = 1_200_000;
    /// The target latency the windows are recorded under: the samples that take no longer
    /// count towards `served_concurrency`.
    const TARGET_NS: u64 = 600_000;

    /// Two windows of the same samples recorded by `threads` threads (and one fast failure in
    /// seven), as the law would read them.
    fn windows_from(threads: usize) -> [Window; 2] {
        let limiter = Limiter::new(LimitConfig::default());
        let shared = limiter.shared.get();
        // A cap inside the samples' spread: some are cut, and the window counts them.
        shared.sample_cap_ns.store(CAP_NS, Ordering::Relaxed);
        shared.target_ns.store(TARGET_NS, Ordering::Relaxed);
        let all = samples();
        let chunk = all.len().div_ceil(threads);
        std::array::from_fn(|_| {
            std::thread::scope(|s| {
                for part in all.chunks(chunk) {
                    s.spawn(move || {
                        for (i, &(latency, slot)) in part.iter().enumerate() {
                            if i % 7 == 3 {
                                shared.cells.sums.add(FAST_FAILURES, 1);
                            }
                            shared.record(latency, slot);
                        }
                    });
                }
            });
            shared.take_window(false, Duration::from_secs(1))
        })
    }

    /// The window's sums live in per-thread rows merged when the window closes: the law gets
    /// exactly the inputs it got from one shared set of atomics, whichever threads recorded
    /// them, and each window only its own samples.
    #[test]
    fn the_laws_inputs_are_the_same_from_one_thread_or_many() {
        let one = windows_from(1);
        let all = samples();
        let w = one[0];
        assert_eq!(w.samples, 96);
        assert_eq!(w.low_samples, 32);
        assert_eq!(w.fast_failures, 96 / 7 + 1);
        let sum: u64 = all.iter().map(|(l, _)| nanos(*l).min(CAP_NS)).sum();
        assert_eq!(w.latency_sum_ns, sum);
        let cut: Vec<u64> = all
            .iter()
            .map(|(l, _)| nanos(*l))
            .filter(|&l| l > CAP_NS)
            .collect();
        assert!(!cut.is_empty());
        assert_eq!(w.capped_samples as usize, cut.len());
        assert_eq!(
            w.capped_excess_ns,
            cut.iter().map(|l| l - CAP_NS).sum::<u64>()
        );
        let concurrency: u64 = all.iter().map(|(_, s)| u64::from(s.concurrency())).sum();
        assert_eq!(w.concurrency_sum, concurrency);
        let max = all.iter().map(|(l, _)| nanos(*l)).max().unwrap();
        assert_eq!(w.max_latency_ns, max);
        let served = all
            .iter()
            .filter(|(l, _)| nanos(*l) <= TARGET_NS)
            .map(|(_, s)| s.concurrency())
            .max()
            .unwrap();
        assert!(served < all.iter().map(|(_, s)| s.concurrency()).max().unwrap());
        assert_eq!(w.served_concurrency, served);
        assert_eq!(one[1], w, "the second window counts only its own samples");
        for threads in [2, 3, 8, 40] {
            let chunk = all.len().div_ceil(threads);
            // The fast failures follow the chunks: compare like with like.
            let failures: u32 = all
                .chunks(chunk)
                .map(|part| (0..part.len()).filter(|i| i % 7 == 3).count() as u32)
                .sum();
            let expected = Window {
                fast_failures: failures,
                ..w
            };
            assert_eq!(windows_from(threads), [expected; 2], "{threads} threads");
        }
        // The concurrency each sample carries: one thread's is exact; with more, within two
        // slots per other lease holder of the exact count, with the same low-concurrency
        // verdicts (see `lease::View::estimate`).
        for (threads, limit) in [
            (1, 64),
            (2, 64),
            (3, 64),
            (8, 64),
            (1, 16),
            (2, 16),
            (8, 16),
        ] {
            let (recorded, exact, estimated) = concurrency_windows(threads, limit);
            let at = format!("{threads} threads, limit {limit}");
            assert_eq!(recorded.samples, exact.samples, "{at}");
            assert_eq!(recorded.low_samples, exact.low_samples, "{at}");
            assert!(exact.low_samples > 0 && exact.low_samples < exact.samples);
            let bound = u64::from(exact.samples) * u64::from(lease::KEEP) * (threads as u64 - 1);
            assert!(
                recorded.concurrency_sum.abs_diff(exact.concurrency_sum) <= bound,
                "{at}: {} vs {}",
                recorded.concurrency_sum,
                exact.concurrency_sum
            );
            // The censuses keep the window's mean close (this schedule at 64: +0.02, +0.01 and
            // +0.13 on 2, 3 and 8 threads, the bound alone allowing 2, 4 and 14; at 16, one
            // slot kept per thread: +0.00 and -0.01 on 2 and 8 threads).
            let (r, e) = (recorded.mean_concurrency(), exact.mean_concurrency());
            assert!(
                (r.unwrap() - e.unwrap()).abs() <= 0.25,
                "{at}: {r:?} vs {e:?}"
            );
            if threads == 1 {
                assert_eq!(recorded, exact, "one thread: exactly today's inputs");
            } else {
                assert!(estimated > 0, "{at}: the estimate was used");
            }
        }
    }

    /// A thread that runs the steps it is sent, one at a time, while the test waits: every
    /// count between steps is deterministic. It exits (giving back what it keeps) when
    /// dropped.
    struct Worker {
        steps: Option<std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Worker {
        fn new() -> Self {
            let (tx, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
            let thread = std::thread::spawn(move || {
                for step in rx {
                    step();
                }
            });
            Worker {
                steps: Some(tx),
                thread: Some(thread),
            }
        }

        fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let step = Box::new(move || tx.send(f()).expect("the test waits"));
            self.steps.as_ref().unwrap().send(step).expect("alive");
            rx.recv().expect("the step ran")
        }
    }

    impl Drop for Worker {
        fn drop(&mut self) {
            drop(self.steps.take());
            if let Some(t) = self.thread.take() {
                t.join().expect("the worker exits");
            }
        }
    }

    /// Outside any runtime the limiter times on the counter timeline, and a timed request's
    /// start is the call scope's counter stamp: the reading the other layers on their default
    /// clocks share, so a stack reads the time once for every layer's start.
    #[cfg(feature = "fast-clock")]
    #[test]
    fn a_timed_request_starts_at_the_call_scopes_counter_stamp() {
        let limiter = Limiter::new(fixed(64));
        assert!(!limiter.clock.follows_tokio(), "no runtime: the counter");
        let scope = crate::clock::CallScope::enter();
        // A layer further out (a rate limit on its default clock) read the counter first.
        let stamp = crate::FastClock::new().now();
        std::thread::sleep(Duration::from_millis(2));
        let slot = limiter.timed_slot(1);
        assert_eq!(slot.start, limiter.shared.ns(stamp));
        drop(scope);
        // Out of the scope the completion reads the counter anew: the request's 2 ms.
        limiter.shared.complete_timed(slot, Completion::Success);
        let max = limiter.shared.cells.max_latency_ns.load(Ordering::Relaxed);
        assert!(max >= 1_900_000, "{max}"); // within the anchor's error of 2 ms
    }

    /// A completion on the counter reads nanoseconds without an instant, and a window it
    /// closes gets the instant back: both round trips are exact, before the anchor and after.
    #[cfg(feature = "fast-clock")]
    #[test]
    fn counter_nanoseconds_and_instants_agree_exactly() {
        let limiter = Limiter::new(fixed(64));
        let shared = limiter.shared.get();
        let clock = limiter.clock;
        assert!(!clock.follows_tokio(), "no runtime: the counter");
        let _scope = crate::clock::CallScope::enter();
        let now = clock.now();
        assert_eq!(shared.now_ns(&clock), shared.ns(now));
        for at in [
            now,
            now + Duration::from_nanos(1),
            shared.anchor,
            shared.anchor - Duration::from_millis(3),
        ] {
            assert_eq!(shared.instant_of(shared.ns(at)), at);
        }
    }

    /// Where tokio's time can be paused (a `current_thread` runtime) the limiter times on
    /// tokio's clock: paused time and `advance` are the request's latency, exactly.
    #[cfg(feature = "fast-clock")]
    #[tokio::test(start_paused = true)]
    async fn under_paused_time_a_timed_request_lasts_what_tokio_advanced() {
        let limiter = Limiter::new(fixed(64));
        assert!(limiter.clock.follows_tokio());
        let slot = limiter.timed_slot(1);
        tokio::time::advance(Duration::from_millis(5)).await;
        limiter.shared.complete_timed(slot, Completion::Success);
        let max = limiter.shared.cells.max_latency_ns.load(Ordering::Relaxed);
        assert_eq!(max, 5_000_000);
    }

    /// A service of a microsecond called by one caller at a time: the law brings the limit
    /// down to 2, where every request is near it (demand past half the limit). Its windows
    /// gather thousands of samples where the law needs tens, so after one such window the
    /// limiter times those requests one in many — and a window still gathers more than it
    /// needs. A service of milliseconds never gets there (`near_every` stays 1: its windows
    /// hold tens of samples).
    #[tokio::test(start_paused = true)]
    async fn requests_near_the_limit_are_timed_one_in_many_once_windows_have_plenty() {
        let limiter = Limiter::new(LimitConfig::default());
        #[cfg(feature = "fast-clock")]
        assert!(limiter.clock.follows_tokio(), "paused time: tokio's clock");
        let mut per_window = Vec::new();
        for _ in 0..40 {
            let epoch = limiter.shared.epoch.load(Ordering::Relaxed);
            let mut timed = 0u32;
            let mut calls = 0u32;
            while limiter.shared.epoch.load(Ordering::Relaxed) == epoch && calls < 100_000 {
                let (counted, limit) = limiter.try_take(Priority::Normal).expect("one at a time");
                let mut permit = limiter.permit_for((counted, limit));
                timed += u32::from(permit.slot.is_timed());
                tokio::time::advance(Duration::from_micros(1)).await;
                permit.finish(Completion::Success);
                calls += 1;
            }
            per_window.push((limiter.limit.load(Ordering::Relaxed), timed, calls));
        }
        let (limit, timed, calls) = *per_window.last().unwrap();
        assert!(limit <= 3, "one caller: {per_window:?}");
        let needed = limiter.lock_law().samples_needed();
        assert!(
            limiter.near_every.load(Ordering::Relaxed) > 1,
            "{per_window:?}"
        );
        // Every request would be timed (1 of 1 at a limit of 2) without the spacing; with it
        // about one in 16 (the countdown) and enough for the law.
        assert!(
            timed * 8 < calls,
            "timed {timed} of {calls}: {per_window:?}"
        );
        assert!(timed >= needed, "timed {timed}, the law needs {needed}");
    }

    /// A thread that kept two slots under a limit of 32 and then went idle: the limit falls to
    /// 4 (the leases are revoked) and the thread does not touch the limiter again. Its two
    /// slots stay counted by the word until it does — but the overload path counts them as
    /// free, so the limit's four requests are admitted (not two), a fifth is not, and once the
    /// thread exits and gives its slots back the word counts exactly the four in flight.
    #[test]
    fn slots_an_idle_thread_kept_do_not_shrink_a_smaller_limit() {
        // No waits: the first completions would otherwise give a target to wait on.
        let no_wait = |limit| LimitConfig {
            queue_delay: 0.0,
            ..fixed(limit)
        };
        let limiter = Limiter::new(no_wait(32));
        let (park, parked) = std::sync::mpsc::channel::<()>();
        let (kept_tx, kept_rx) = std::sync::mpsc::channel::<u32>();
        let idle = {
            let limiter = Arc::clone(&limiter);
            std::thread::spawn(move || {
                let mut a = limiter.try_acquire(Priority::Normal).expect("room");
                let mut b = limiter.try_acquire(Priority::Normal).expect("room");
                a.finish(Completion::Success);
                b.finish(Completion::Success);
                kept_tx
                    .send(limiter.shared.leases.kept())
                    .expect("the test waits");
                // Idle until the test ends: it never touches the limiter again.
                let _ = parked.recv();
            })
        };
        assert_eq!(kept_rx.recv().expect("kept"), 2, "two slots kept under 32");
        *limiter.lock_law() = Law::new(no_wait(4));
        limiter.publish(&limiter.lock_law());
        limiter.publish_limits(&limiter.lock_queue());
        assert_eq!(limiter.shared.leases.stranded(), 2, "revoked, still kept");
        let mut admitted = Vec::new();
        for _ in 0..4 {
            match limiter.try_acquire(Priority::Normal) {
                Some(p) => admitted.push(p),
                None => match limiter.enter(Priority::Normal) {
                    Entry::Admitted(p) => admitted.push(p),
                    _ => panic!("refused with {} in flight", admitted.len()),
                },
            }
        }
        assert!(limiter.try_acquire(Priority::Normal).is_none());
        assert!(
            matches!(limiter.enter(Priority::Normal), Entry::Refused),
            "a fifth is over the limit of 4 (no queue)"
        );
        park.send(()).expect("the idle thread waits");
        idle.join().expect("the idle thread exits");
        assert_eq!(limiter.shared.leases.stranded(), 0, "given back at exit");
        assert_eq!(
            limiter.shared.leases.in_flight(&limiter.shared.in_flight),
            (4, 0)
        );
        assert_eq!(
            limiter.shared.in_flight.load(),
            (4, 0),
            "the word counts the four"
        );
        for mut p in admitted {
            p.finish(Completion::Success);
        }
        assert_eq!(limiter.shared.in_flight.load(), (0, 0));
    }

    #[test]
    fn near_every_spaces_timing_only_past_plenty() {
        // Tens of samples where 16 are needed: every request near the limit stays timed.
        assert_eq!(near_every(1, 60, 16), 1);
        assert_eq!(near_every(1, 16 * PLENTY, 16), 1);
        // Ten thousand: about one in 78, so the next window gathers about 128.
        assert_eq!(near_every(1, 10_000, 16), 78);
        // From a spaced window the factor compounds, and it comes back when samples fall.
        assert_eq!(near_every(78, 128, 16), 78);
        assert_eq!(near_every(78, 12, 16), 7);
        assert_eq!(near_every(7, 0, 16), 1);
        assert_eq!(near_every(MAX_NEAR_EVERY, u32::MAX, 1), MAX_NEAR_EVERY);
        assert_eq!(near_every(0, 10_000, 0), 1_250);
    }

    fn fixed(limit: u32) -> LimitConfig {
        LimitConfig {
            initial: limit,
            min: limit,
            max: limit,
            ..LimitConfig::default()
        }
    }

    /// At a limit of one the wait queue takes four requests (a limit below
    /// [`MIN_QUEUE_LIMIT`] counts as that many), `queue_size` scaling the room as it scales a
    /// limit's; at a limit of eight it takes eight, as before.
    #[test]
    fn a_small_limit_queues_as_many_as_a_limit_of_four() {
        for (limit, queue_size, room) in [(1, 1.0, 4), (1, 0.5, 2), (2, 2.0, 8), (8, 1.0, 8)] {
            Worker::new().run(move || {
                let limiter = Limiter::new(LimitConfig {
                    queue_size,
                    ..fixed(limit)
                });
                // As if a baseline were learnt: requests may wait (an hour: none expires).
                limiter
                    .queue_target_ns
                    .store(3_600_000_000_000, Ordering::Relaxed);
                let held: Vec<Permit> = (0..limit)
                    .map(|_| limiter.try_acquire(Priority::Normal).expect("room"))
                    .collect();
                for n in 1..=room {
                    assert!(
                        matches!(limiter.enter(Priority::Normal), Entry::Queued(..)),
                        "limit {limit}, queue_size {queue_size}: waiter {n} of {room}"
                    );
                }
                assert!(
                    matches!(limiter.enter(Priority::Normal), Entry::Refused),
                    "limit {limit}, queue_size {queue_size}: room for {room} only"
                );
                drop(held);
            });
        }
    }

    /// A timed admit: its slot, and the exact count (the word less every thread's cell, read
    /// while no other thread moves).
    fn timed_admit(limiter: &Arc<Limiter>) -> (Permit, u32) {
        let (counted, limit) = limiter.try_take(Priority::Normal).expect("room");
        let exact = counted.saturating_sub(limiter.shared.leases.kept()).max(1);
        (limiter.permit(counted, limit, true), exact)
    }

    /// Timed requests admitted by `threads` threads taking turns at a limit of 64 or 16 (leases
    /// on while the word stays under half of it; a thread keeps two slots or one), each
    /// answered on the next thread after its own admits: the window as recorded, as the exact
    /// counts give it, and how many samples the estimate gave.
    fn concurrency_windows(threads: usize, limit: u32) -> (Window, Window, usize) {
        let (samples, estimated) = concurrency_samples(threads, limit);
        let latency = Duration::from_millis(1);
        let (mut recorded, mut exact) = (Window::default(), Window::default());
        for (slot, n) in samples {
            recorded.record(latency, slot.concurrency(), slot.low());
            exact.record(latency, n, n <= limit / 8);
        }
        (recorded, exact, estimated)
    }

    /// The slots of [`concurrency_windows`]' requests beside their exact counts, and how many
    /// the estimate gave.
    fn concurrency_samples(threads: usize, limit: u32) -> (Vec<(Slot, u32)>, usize) {
        let limiter = Limiter::new(fixed(limit));
        // A thread admits 1 to 8 at once (1 to 4 under 16: with eight threads' kept slots and
        // the answers still held, the word stays under the limit).
        let most = (limit / 4).min(8) as usize;
        let (low, half) = (limit / 8, limit / 2);
        let workers: Vec<Worker> = (0..threads).map(|_| Worker::new()).collect();
        let mut samples = Vec::new();
        let mut estimated = 0;
        let mut held: Vec<Permit> = Vec::new();
        for round in 0..24 {
            for (w, worker) in workers.iter().enumerate() {
                let l = Arc::clone(&limiter);
                let answer = std::mem::take(&mut held);
                let admits = 1 + (round * 7 + w * 3) % most;
                let out = worker.run(move || {
                    let shared = l.shared.get();
                    let admitted = (0..admits)
                        .map(|_| {
                            let (counted, _) = shared.in_flight.load();
                            let view = lease::view(shared);
                            let by_view = view.estimate(counted + 1, low, half, || 0).is_some();
                            let (permit, exact) = timed_admit(&l);
                            (permit, exact, by_view && view.others > 0)
                        })
                        .collect::<Vec<_>>();
                    for mut p in answer {
                        p.finish(Completion::Ignored);
                    }
                    admitted
                });
                for (permit, n, by_view) in out {
                    let slot = permit.slot;
                    let bound = lease::KEEP * (threads as u32 - 1);
                    assert!(slot.concurrency().abs_diff(n) <= bound, "{slot:?} vs {n}");
                    assert_eq!(slot.low(), n <= low, "{slot:?} vs {n}");
                    samples.push((slot, n));
                    estimated += usize::from(by_view);
                    held.push(permit);
                }
            }
        }
        for mut p in held {
            p.finish(Completion::Ignored);
        }
        (samples, estimated)
    }

    /// Where the law acts on windows run while threads keep slots (leases on, at most half
    /// the limit in flight): neither window fills the limit, the low-concurrency samples are
    /// the same, and the law holds the limit while the service keeps its latency and cuts it
    /// the same when a queue forms, with the same baseline, from the recorded concurrencies
    /// as from the exact ones. (The samples' low verdicts are for the limit they were
    /// admitted at: the sequence ends at the cut.) Where it matters here: the fast windows'
    /// mean concurrency (7.25–7.6 exact) is the baseline's, and the queue's window compares
    /// the low-concurrency bound (8) with it — "slower at more concurrency: a queue" — so a
    /// mean recorded over 8 would raise the baseline instead (the midpoint of the bound,
    /// without the censuses, did: 8.45 on three threads, 8.84 on eight). At the default limit
    /// of 16 (one slot kept per thread) the decisions and the baseline are the same from
    /// both inputs too (the law reads this schedule's queue as a slower service there).
    #[test]
    fn the_law_decides_the_same_from_the_estimated_concurrency() {
        for (threads, limit) in [(2, 64), (3, 64), (8, 64), (2, 16), (8, 16)] {
            let (samples, _) = concurrency_samples(threads, limit);
            let config = LimitConfig {
                initial: limit,
                ..LimitConfig::default()
            };
            let (mut by_estimate, mut by_exact) = (Law::new(config.clone()), Law::new(config));
            let now = Instant::now();
            // 1 ms at any concurrency, then a queue: 1 ms up to 4 in flight (2, the
            // low-concurrency bound, under a limit of 16), +0.5 ms per request more (the
            // service sees the true count).
            let fast_up_to = (limit / 16).max(2);
            for (i, queue) in [false, false, false, true].into_iter().enumerate() {
                let (mut recorded, mut exact) = (Window::default(), Window::default());
                for &(slot, n) in &samples {
                    let behind = if queue {
                        n.saturating_sub(fast_up_to)
                    } else {
                        0
                    };
                    let latency = Duration::from_micros(1_000 + 500 * u64::from(behind));
                    recorded.record(latency, slot.concurrency(), slot.low());
                    exact.record(latency, n, n <= by_exact.low_concurrency());
                }
                assert_eq!(recorded.low_samples, exact.low_samples);
                for w in [&recorded, &exact] {
                    let mean = w.mean_concurrency().unwrap();
                    assert!(mean < 0.75 * f64::from(by_exact.limit()), "not filled");
                }
                let at = now + Duration::from_secs(i as u64 + 1);
                let a = by_estimate.observe(&recorded, at);
                let b = by_exact.observe(&exact, at);
                assert_eq!(a, b, "{threads} threads, window {i}");
                if limit == 64 {
                    assert_eq!(
                        b,
                        if queue { limit / 2 } else { limit },
                        "{threads} threads, window {i}"
                    );
                }
                assert_eq!(
                    by_estimate.baseline(),
                    by_exact.baseline(),
                    "{threads} threads"
                );
                if limit == 64 {
                    assert_eq!(by_exact.baseline(), Some(Duration::from_millis(1)));
                }
            }
        }
    }

    /// The law's FILLED test (mean concurrency at ¾ of the limit) must never fire on slots
    /// idle threads keep: eight threads keep two slots each (16) under a limit of 48, the
    /// limit falls to 32 (the leases are revoked, the slots stay with the idle threads
    /// until their next call), and eight requests enter: the word counts 17 to 24 (¾ of 32),
    /// the requests record 1 to 8. At the default limit of 16 threads keep one slot each,
    /// and the eighth thread's admit (8 in the word, half the limit) revokes the leases: seven
    /// kept, and five requests enter: the word counts 8 to 12 (¾ of 16), the requests record
    /// 1 to 5.
    #[test]
    fn kept_slots_alone_never_fill_the_limit() {
        kept_slots_alone(48, 2, 16, 32);
        kept_slots_alone(LimitConfig::default().initial, 1, 7, 16);
    }

    /// Eight idle threads each call with `at_once` requests under a limit of `kept_under`
    /// and keep what they may (`kept` in all), the limit becomes `limit`, and timed requests
    /// enter until the word reads ¾ of it: they record 1, 2, 3 …
    fn kept_slots_alone(kept_under: u32, at_once: usize, kept: u32, limit: u32) {
        let limiter = Limiter::new(fixed(kept_under));
        let workers: Vec<Worker> = (0..8).map(|_| Worker::new()).collect();
        for worker in &workers {
            let l = Arc::clone(&limiter);
            worker.run(move || {
                let permits: Vec<_> = (0..at_once)
                    .map(|_| l.try_acquire(Priority::Normal).expect("room"))
                    .collect();
                drop(permits); // kept by this thread, up to what it may keep
            });
        }
        assert_eq!(limiter.shared.leases.kept(), kept);
        assert_eq!(limiter.shared.in_flight.load(), (kept, 0));
        let requests = limit * 3 / 4 - kept;
        let law = Law::new(fixed(limit));
        limiter.publish(&law);
        *limiter.lock_law() = law;
        let mut window = Window::default();
        let mut permits = Vec::new();
        for n in 1..=requests {
            let (permit, exact) = timed_admit(&limiter);
            assert_eq!(exact, n);
            assert_eq!(
                permit.slot.concurrency(),
                n,
                "the kept slots are not in flight"
            );
            assert_eq!(permit.slot.low(), n <= limit / 8);
            window.record(Duration::from_millis(1), permit.slot.concurrency(), false);
            permits.push(permit);
        }
        assert_eq!(
            limiter.shared.in_flight.load(),
            (limit * 3 / 4, 0),
            "the word alone reads ¾"
        );
        let mean = window.mean_concurrency().unwrap();
        assert_eq!(mean, f64::from(requests + 1) / 2.0);
        assert!(mean < 0.75 * f64::from(limit));
        drop(permits);
        drop(workers); // the idle threads exit: their kept slots come back
        assert_eq!(limiter.shared.in_flight.load(), (0, 0));
    }

    /// A thread holds the lease of one limiter: one that has moved on to another (a worker
    /// now serving another route) gives that one's slots to its word [`lease::MOVE_AFTER`]
    /// times, then its lease moves there (the first limiter's kept slot goes back to its
    /// word) — and back again the same way. It never moves to a limiter whose leases are
    /// revoked.
    #[test]
    fn a_threads_lease_moves_to_the_limiter_it_now_serves() {
        Worker::new().run(|| {
            let a = Limiter::new(LimitConfig::default());
            let b = Limiter::new(fixed(64));
            let busy = Limiter::new(fixed(64));
            drop(a.try_acquire(Priority::Normal).expect("room"));
            assert_eq!(a.shared.leases.kept(), 1, "the thread's lease is a's");
            // Half of `busy`'s limit in flight: its leases are revoked while these are held.
            let held: Vec<Permit> = (0..32)
                .map(|_| busy.try_acquire(Priority::Normal).expect("room"))
                .collect();
            for _ in 0..3 * lease::MOVE_AFTER {
                drop(busy.try_acquire(Priority::Normal).expect("room"));
                assert_eq!(busy.shared.in_flight.load(), (32, 0), "no lease to move to");
            }
            drop(held);
            assert_eq!(
                a.shared.leases.kept(),
                1,
                "nowhere to move: a's lease stays"
            );
            for (from, to) in [(&a, &b), (&b, &a)] {
                for _ in 1..lease::MOVE_AFTER {
                    drop(to.try_acquire(Priority::Normal).expect("room"));
                    assert_eq!(to.shared.in_flight.load(), (0, 0), "to the word");
                    assert_eq!(from.shared.leases.kept(), 1);
                }
                drop(to.try_acquire(Priority::Normal).expect("room"));
                assert_eq!(
                    from.shared.in_flight.load(),
                    (0, 0),
                    "the kept slot went back"
                );
                assert_eq!(to.shared.leases.kept(), 1, "the lease moved");
                let permit = to.try_acquire(Priority::Normal).expect("room");
                assert_eq!(to.shared.in_flight.load(), (1, 0), "from the kept slot");
                drop(permit);
            }
        });
    }

    /// At the default limit of 16 a thread keeps one slot: its requests, one at a time, are
    /// admitted from it and keep it again (the word is touched once, by the first); two at
    /// once take the second from the word and give it back there. So under 16, down to a
    /// limit of 1.
    #[test]
    fn one_request_at_a_time_stays_on_the_threads_one_kept_slot_at_any_limit() {
        // Fresh threads: a thread holding a lease of another limiter keeps nothing of these.
        Worker::new().run(|| {
            let limiter = Limiter::new(LimitConfig::default());
            assert_eq!(limiter.limit.load(Ordering::Relaxed), 16);
            for _ in 0..100 {
                let permit = limiter.try_acquire(Priority::Normal).expect("room");
                assert_eq!(limiter.shared.leases.kept(), 0);
                assert_eq!(
                    limiter.shared.in_flight.load(),
                    (1, 0),
                    "from the kept slot"
                );
                drop(permit);
                assert_eq!(limiter.shared.leases.kept(), 1);
            }
            let a = limiter.try_acquire(Priority::Normal).expect("room");
            let b = limiter.try_acquire(Priority::Normal).expect("room");
            assert_eq!(limiter.shared.in_flight.load(), (2, 0));
            drop((a, b));
            assert_eq!(
                limiter.shared.leases.kept(),
                1,
                "one slot per thread under 32"
            );
            assert_eq!(limiter.shared.in_flight.load(), (1, 0));
        });
        for limit in [15, 2, 1] {
            Worker::new().run(move || {
                let limiter = Limiter::new(fixed(limit));
                for _ in 0..100 {
                    let permit = limiter.try_acquire(Priority::Normal).expect("room");
                    assert_eq!(limiter.shared.leases.kept(), 0);
                    assert_eq!(limiter.shared.in_flight.load(), (1, 0));
                    drop(permit);
                    assert_eq!(limiter.shared.leases.kept(), 1, "kept under {limit}");
                    assert_eq!(limiter.shared.in_flight.load(), (1, 0));
                }
                if limit >= 2 {
                    let a = limiter.try_acquire(Priority::Normal).expect("room");
                    let b = limiter.try_acquire(Priority::Normal).expect("room");
                    assert_eq!(limiter.shared.in_flight.load(), (2, 0));
                    drop((a, b));
                    assert_eq!(limiter.shared.leases.kept(), 1, "one slot under 32");
                    assert_eq!(limiter.shared.in_flight.load(), (1, 0));
                }
            });
        }
    }

    /// A request that finds the word full only of slots idle threads keep (a small limit's
    /// leases) is admitted on them without marking the window binding — the limit's worth was
    /// not in flight, and a binding window lets the law grow the limit; one that finds the
    /// limit full of requests marks it.
    #[test]
    fn slots_idle_threads_keep_do_not_make_a_window_binding() {
        let limiter = Limiter::new(fixed(2));
        let idle: Vec<Worker> = (0..2).map(|_| Worker::new()).collect();
        for w in &idle {
            let l = Arc::clone(&limiter);
            w.run(move || drop(l.try_acquire(Priority::Normal).expect("room")));
        }
        assert_eq!(
            limiter.shared.leases.kept(),
            2,
            "each idle thread keeps its slot"
        );
        Worker::new().run(move || {
            assert!(
                limiter.try_acquire(Priority::Normal).is_none(),
                "the word is full"
            );
            let held: Vec<Permit> = (0..2)
                .map(|_| match limiter.enter(Priority::Normal) {
                    Entry::Admitted(permit) => permit,
                    _ => panic!("admitted on the slots the idle threads keep"),
                })
                .collect();
            assert!(!limiter.binding.load(Ordering::Relaxed), "not binding yet");
            assert!(matches!(limiter.enter(Priority::Normal), Entry::Refused));
            assert!(
                limiter.binding.load(Ordering::Relaxed),
                "the limit is full: binding"
            );
            drop(held);
        });
        drop(idle);
    }

    /// Under 16 a kept slot admits a request whatever its priority, so the leases come back
    /// only while no priority is held to a share: once a High request is refused (Normal and
    /// Low held to their shares), an admit through the word into an empty limit leaves them
    /// off, and the thread keeps nothing; with no priority pressured the same admit allows
    /// them again and the thread keeps its slot.
    #[test]
    fn small_limit_leases_stay_off_while_a_priority_is_held_to_a_share() {
        Worker::new().run(|| {
            let limiter = Limiter::new(fixed(10));
            let held: Vec<Permit> = (0..10)
                .map(|_| limiter.try_acquire(Priority::High).expect("room"))
                .collect();
            assert!(
                matches!(limiter.enter(Priority::High), Entry::Refused),
                "full, nothing learnt: refused"
            );
            drop(held); // the overload path revoked the leases: every slot to the word
            assert!(
                limiter.limit_for(Priority::Low) < 10,
                "Low held to its share"
            );
            assert_eq!(limiter.shared.in_flight.load(), (0, 0));
            drop(limiter.try_acquire(Priority::Low).expect("room"));
            assert_eq!(
                limiter.shared.leases.kept(),
                0,
                "no lease while held to shares"
            );
            assert_eq!(limiter.shared.in_flight.load(), (0, 0));
        });
        Worker::new().run(|| {
            let limiter = Limiter::new(fixed(10));
            limiter.shared.leases.revoke();
            drop(limiter.try_acquire(Priority::Low).expect("room"));
            drop(limiter.try_acquire(Priority::Low).expect("room"));
            assert_eq!(limiter.shared.leases.kept(), 1, "allowed again, and kept");
        });
    }

    /// Near capacity (nothing refused over the windows judged) a waiter may wait half again
    /// as long, except a critical one, which keeps the plain target; once a third of the
    /// requests are refused, every priority has the plain target.
    #[test]
    fn the_longer_wait_near_capacity_is_for_every_priority_but_critical() {
        let limiter = Limiter::new(LimitConfig::default());
        let ms = Duration::from_millis;
        let window = |rejected| {
            let mut w = Window::default();
            for _ in 0..20 {
                w.record(ms(40), 8, false);
            }
            w.elapsed = ms(100);
            w.rejected = rejected;
            w
        };
        let mut now = Instant::now();
        let mut observe = |rejected, windows| {
            let mut law = limiter.lock_law();
            for _ in 0..windows {
                now += ms(100);
                law.observe(&window(rejected), now);
            }
            limiter.publish(&law);
        };
        observe(0, 8);
        let target = |p| Duration::from_nanos(limiter.target_ns(p));
        let others = || {
            Priority::ALL
                .into_iter()
                .filter(|&p| p != Priority::Critical)
        };
        assert_eq!(
            target(Priority::Critical),
            ms(20),
            "half the 40 ms baseline"
        );
        for p in others() {
            assert_eq!(target(p), ms(30), "{p:?}");
        }
        // Demand at 1.5x: 10 refused for 20 completed in every window. Critical waiters keep
        // the plain target; the others wait 0.6 of it (at least three completions' time at
        // the limit of 16: 7.5 ms).
        observe(10, 3);
        assert_eq!(target(Priority::Critical), ms(20));
        for p in others() {
            assert_eq!(target(p), ms(12), "{p:?}");
        }
    }
}

#[cfg(all(test, degrade_loom))]
mod loom_models {
    //! `RUSTFLAGS="--cfg degrade_loom" cargo test -p degrade-core --release --lib loom_models`
    //!
    //! A queued waiter leaves (its deadline passed, or its future was dropped) while a
    //! completion on another thread releases the one slot and hands it on: the real
    //! [`Limiter`], its [`WaitQueue`] and its in-flight word, under loom's lock and atomics.
    use super::{Entry, Fate, Limiter, Permit, Shared, Slot};
    use crate::limit::LimitConfig;
    use crate::priority::Priority;
    use crate::recycle::Pool;
    use crate::sync::Ordering;
    use loom::thread;
    use std::sync::Arc;
    use std::task::Waker;

    /// `permit` without its timing: its release is what is modelled. A timed completion reads
    /// the real clock and takes an atomic step or not by what it read (a window due, a new
    /// longest latency), which loom cannot replay.
    fn untimed(mut permit: Permit) -> Permit {
        permit.slot = Slot::UNTIMED;
        permit
    }

    /// How the waiter leaves.
    #[derive(Clone, Copy)]
    enum Leave {
        /// Its deadline passed: the future reads its fate, then withdraws counting it expired.
        Deadline,
        /// Its future is dropped: it withdraws, and gives back a slot granted meanwhile.
        Dropped,
    }

    /// A limit of one slot, held by a request, and one waiter queued behind it. The queue's
    /// target is an hour, so no expiry pass refuses the waiter while the model runs: only its
    /// own withdrawal and the grant decide.
    fn one_slot_and_a_waiter() -> (Arc<Limiter>, Permit, super::Ticket) {
        // A pool per execution: a state made with one execution's atomics is never reused.
        let pool: &'static Pool<Shared> = Box::leak(Box::new(Pool::new()));
        let config = LimitConfig {
            initial: 1,
            min: 1,
            max: 1,
            // The queue has room for a second waiter (the request arriving meanwhile): a limit
            // below `MIN_QUEUE_LIMIT` counts as that many for its bound.
            ..LimitConfig::default()
        };
        let limiter = Limiter::new_in(pool, config);
        // As if a baseline were learnt: requests may wait.
        limiter
            .queue_target_ns
            .store(3_600_000_000_000, Ordering::Relaxed);
        let held = untimed(
            limiter
                .try_acquire(Priority::Normal)
                .expect("the one slot is free"),
        );
        let Entry::Queued(ticket, ..) = limiter.enter(Priority::Normal) else {
            panic!("the second request waits behind the first");
        };
        assert_eq!(limiter.shared.in_flight.load(), (1, 1));
        (limiter, held, ticket)
    }

    fn withdraw_racing_a_grant(leave: Leave) {
        loom::model(move || {
            let (limiter, held, ticket) = one_slot_and_a_waiter();
            // The request in flight completes on another thread: its release sees the
            // waiter and hands the slot on under the queue's lock.
            let completion = thread::spawn(move || drop(held));

            let (served, limited) = match leave {
                Leave::Deadline => {
                    // As `Core::poll_other` does at the deadline.
                    let fate = match limiter.poll_ticket(ticket, Waker::noop()) {
                        Some(fate) => fate,
                        None => limiter
                            .withdraw(ticket, Some(Priority::Normal))
                            .unwrap_or(Fate::Expired),
                    };
                    match fate {
                        Fate::Granted => {
                            // Served with the slot it was handed, which it gives back.
                            drop(untimed(limiter.granted_permit()));
                            (true, false)
                        }
                        Fate::Expired | Fate::Evicted => (false, true),
                    }
                }
                Leave::Dropped => {
                    // As `Wait::drop` does.
                    if limiter.withdraw(ticket, None) == Some(Fate::Granted) {
                        limiter.release();
                    }
                    (false, false)
                }
            };
            completion.join().unwrap();

            let expired = limiter.counters.expired.load(Ordering::Relaxed);
            match leave {
                Leave::Deadline => {
                    // Exactly one of: served with the slot, or withdrawn (counted once).
                    assert!(served ^ limited, "served {served}, limited {limited}");
                    assert_eq!(
                        expired,
                        u64::from(limited),
                        "counted expired once if refused"
                    );
                }
                Leave::Dropped => assert_eq!(expired, 0, "a dropped waiter is not expired"),
            }
            assert_eq!(
                limiter.shared.in_flight.load(),
                (0, 0),
                "no waiter left, no slot held"
            );
            assert_eq!(limiter.lock_queue().len(), 0);
            // The slot is free for the next request, at once.
            let next = limiter.try_acquire(Priority::Normal);
            assert!(next.is_some(), "the slot stayed free for the next");
            drop(next);
            // Given back (to the word, or kept by this thread: leases are on again).
            let shared = limiter.shared.get();
            assert_eq!(shared.leases.in_flight(&shared.in_flight), (0, 0));
        });
    }

    /// The waiter's deadline passes while the slot is released and granted: it is either
    /// served with that slot or refused (counted expired once) with the slot left free.
    #[test]
    fn a_waiter_withdrawn_at_its_deadline_is_served_or_refused_once() {
        withdraw_racing_a_grant(Leave::Deadline);
    }

    /// The waiter's future is dropped while the slot is released and granted: a slot handed
    /// to it is given back, so nothing stays in flight and the next request is admitted.
    #[test]
    fn a_dropped_waiter_never_keeps_the_slot_it_was_granted() {
        withdraw_racing_a_grant(Leave::Dropped);
    }

    /// A third request arrives while the waiter leaves at its deadline and the slot is handed
    /// on: it is admitted at once, or it queues and the slot reaches it once the others are
    /// done. Never is a request left waiting behind a free slot (it would wait out its
    /// deadline), nor two requests in the one slot.
    #[test]
    fn a_request_arriving_meanwhile_is_never_left_behind_a_free_slot() {
        loom::model(|| {
            let (limiter, held, ticket) = one_slot_and_a_waiter();
            let completion = thread::spawn(move || drop(held));
            let other = Arc::clone(&limiter);
            let next = thread::spawn(move || match other.enter(Priority::Normal) {
                Entry::Admitted(permit) => {
                    drop(untimed(permit));
                    None
                }
                Entry::Queued(ticket, ..) => Some(ticket),
                Entry::Refused => panic!("the queue has room for it"),
            });
            let fate = match limiter.poll_ticket(ticket, Waker::noop()) {
                Some(fate) => fate,
                None => limiter
                    .withdraw(ticket, Some(Priority::Normal))
                    .unwrap_or(Fate::Expired),
            };
            if fate == Fate::Granted {
                drop(untimed(limiter.granted_permit()));
            }
            completion.join().unwrap();
            if let Some(ticket) = next.join().unwrap() {
                assert_eq!(
                    limiter.poll_ticket(ticket, Waker::noop()),
                    Some(Fate::Granted),
                    "left waiting behind a free slot"
                );
                drop(untimed(limiter.granted_permit()));
            }
            assert_eq!(limiter.shared.in_flight.load(), (0, 0));
            assert_eq!(limiter.lock_queue().len(), 0);
        });
    }
}
