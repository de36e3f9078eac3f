//! Lock-free windowed counters, written once for the breaker, the canary and the triggers.
//! (Plain totals bumped on the hot path are [`ShardedCounter`](crate::counter::ShardedCounter)s.)
//!
//! Every policy that judges a callee by its recent calls needs "how many of the recent calls
//! failed, and how many were slow". The question is what "recent" means, and each answer has its
//! place:
//!
//! - [`ConsecutiveWindow`]: failures in a row. The simplest breaker there is ("open after 5
//!   straight failures"): no rate, no size to tune, one word of state. It reacts fast to a dead
//!   callee and never to a callee that fails every other call.
//! - [`CountWindow`]: the last N calls (resilience4j's `COUNT_BASED` window). The rate always
//!   covers the same number of calls, so its noise is the same at any traffic, but at low traffic
//!   those calls may be hours old.
//! - [`TimeWindow`]: the calls of the last span, in buckets (resilience4j's `TIME_BASED` window).
//!   Old calls expire however quiet the service is, at the price of a noisy rate when few calls
//!   fall in the span; callers pair it with a minimum number of calls.
//!
//! All of them read a [`WindowSnapshot`]. [`Outcome::Ignored`] is never a call: a cancelled
//! request or a local rejection says nothing about the callee, and counting it would dilute the
//! failure rate.
//!
//! # Concurrency
//!
//! Recording happens on the response path of every request, so nothing here takes a lock or
//! allocates after construction. Each window keeps one invariant that holds once all records
//! have returned, whatever the interleaving, so errors never accumulate:
//!
//! - [`CountWindow`]: the aggregates equal the contents of the slots. A record claims a slot with
//!   a cursor `fetch_add` and *swaps* its outcome in; the swap hands the evicted outcome to
//!   exactly one thread, which then applies the net change (the outcome in minus the outcome
//!   out) to the aggregates. Once the window is full a success replacing a success, the common
//!   case, changes nothing: the record sees the same outcome in its slot with a plain load
//!   (equivalent to swapping it for itself at that moment) and writes nothing. A success
//!   recorded into a window whose totals show only successes does not even take a slot: every
//!   slot it could evict holds a success, so the window's contents are the same either way,
//!   and a healthy breaker's record touches no shared cache line for writing. The aggregates are sums of signed changes
//!   made by atomic read-modify-writes, so whatever the order they land in, they are exact once
//!   the records return; a snapshot taken while an evictor's change overtakes the matching
//!   record's may see a total below zero for a moment, and reads it as zero.
//! - [`TimeWindow`]: each counter word carries the epoch it counts, so a word is either counting
//!   the current epoch or visibly stale; rolling over to a new epoch and counting in it is one
//!   compare-and-swap, and no update can land in the wrong epoch.
//!
//! A snapshot reads several words one after the other, so one taken while records are in flight
//! may be off by those records (a call counted but not yet its failure, say). Snapshots are
//! clamped so that `failures + slow <= calls` (and `calls <= N` for a count window) always holds.
//! The models in `tests/loom.rs` check these arguments under `--cfg degrade_loom`.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use crossbeam_utils::CachePadded;
use tokio::time::Instant;

use crate::sync::{AtomicU32, AtomicU64, Ordering};
use crate::{ConfigError, Outcome};

/// The largest [`CountWindow`] a configuration should ask for: a million calls (4 MB of slots).
/// [`CountWindow::new`] itself takes any size; configurations (the breaker's `window.size`)
/// refuse larger ones, so that a typo cannot allocate gigabytes.
///
/// ```
/// assert_eq!(degrade_core::window::MAX_COUNT_SIZE, 1_000_000);
/// ```
pub const MAX_COUNT_SIZE: u32 = 1_000_000;

/// The most buckets a [`TimeWindow`] may have (240 KB of counters). A snapshot reads every
/// bucket, so even this many makes each judgement a long pass; a few dozen are enough for any
/// span.
///
/// ```
/// # use degrade_core::window::{TimeWindow, MAX_BUCKETS};
/// # use std::{num::NonZeroU32, time::Duration};
/// let too_many = NonZeroU32::new(MAX_BUCKETS + 1).unwrap();
/// let err = TimeWindow::new(Duration::from_secs(86_400), too_many, tokio::time::Instant::now()).unwrap_err();
/// assert_eq!(err.field(), "buckets");
/// ```
pub const MAX_BUCKETS: u32 = 10_000;

/// What a window holds at one moment: calls, and how many of them failed or were slow.
///
/// [`Outcome::Ignored`] calls are not counted, and a slow failure counts as a failure only, so
/// `failures + slow <= calls`.
///
/// ```
/// use degrade_core::window::WindowSnapshot;
///
/// let s = WindowSnapshot { calls: 10, failures: 5, slow: 2 };
/// assert_eq!(s.failure_rate(), Some(0.5));
/// assert_eq!(s.slow_rate(), Some(0.2));
/// assert_eq!(WindowSnapshot::default().failure_rate(), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowSnapshot {
    /// Calls in the window (successes, failures and slow calls).
    pub calls: u64,
    /// Calls that failed.
    pub failures: u64,
    /// Calls that succeeded but slower than the threshold.
    pub slow: u64,
}

impl WindowSnapshot {
    /// The fraction of calls that failed, or `None` when the window holds no call (a rate of an
    /// empty window would be a guess, and a breaker must not trip on a guess).
    ///
    /// ```
    /// # use degrade_core::window::WindowSnapshot;
    /// let s = WindowSnapshot { calls: 4, failures: 1, slow: 0 };
    /// assert_eq!(s.failure_rate(), Some(0.25));
    /// assert_eq!(WindowSnapshot { calls: 0, failures: 0, slow: 0 }.failure_rate(), None);
    /// ```
    pub fn failure_rate(&self) -> Option<f64> {
        rate(self.failures, self.calls)
    }

    /// The fraction of calls that were slow, or `None` when the window holds no call.
    ///
    /// ```
    /// # use degrade_core::window::WindowSnapshot;
    /// let s = WindowSnapshot { calls: 4, failures: 0, slow: 3 };
    /// assert_eq!(s.slow_rate(), Some(0.75));
    /// assert_eq!(WindowSnapshot::default().slow_rate(), None);
    /// ```
    pub fn slow_rate(&self) -> Option<f64> {
        rate(self.slow, self.calls)
    }

    /// Builds a snapshot from counters read one after the other while records may be in
    /// flight, restoring `failures + slow <= calls <= max_calls`.
    fn clamped(calls: u64, failures: u64, slow: u64, max_calls: u64) -> Self {
        let calls = calls.min(max_calls);
        let failures = failures.min(calls);
        let slow = slow.min(calls - failures);
        Self {
            calls,
            failures,
            slow,
        }
    }
}

// `as f64` is exact below 2^53 calls, and a rate needs no more.
fn rate(part: u64, calls: u64) -> Option<f64> {
    (calls > 0).then(|| part as f64 / calls as f64)
}

// ---------------------------------------------------------------------------------------------
// Consecutive failures
// ---------------------------------------------------------------------------------------------

/// Counts failures in a row: the simplest breaker window.
///
/// A success or a slow call (a slow call did answer) ends the run; an ignored call leaves it
/// as it is. The count saturates at `u32::MAX`.
///
/// ```
/// use degrade_core::Outcome;
/// use degrade_core::window::ConsecutiveWindow;
///
/// let w = ConsecutiveWindow::new();
/// assert_eq!(w.record(Outcome::Failure), 1);
/// assert_eq!(w.record(Outcome::Failure), 2);
/// assert_eq!(w.record(Outcome::Ignored), 2);
/// assert_eq!(w.record(Outcome::Success), 0);
/// ```
pub struct ConsecutiveWindow {
    // Relaxed throughout: the count publishes no other data, it only needs atomic updates.
    run: AtomicU32,
}

impl ConsecutiveWindow {
    /// Creates a window with no failure recorded.
    ///
    /// ```
    /// # use degrade_core::window::ConsecutiveWindow;
    /// assert_eq!(ConsecutiveWindow::new().consecutive(), 0);
    /// ```
    pub fn new() -> Self {
        Self {
            run: AtomicU32::new(0),
        }
    }

    /// Records an outcome and returns the number of failures in a row after it, so a breaker
    /// can compare the returned value with its threshold without a second read.
    ///
    /// ```
    /// # use degrade_core::{Outcome, window::ConsecutiveWindow};
    /// let w = ConsecutiveWindow::new();
    /// w.record(Outcome::Failure);
    /// assert_eq!(w.record(Outcome::Failure), 2);
    /// assert_eq!(w.record(Outcome::Slow), 0);
    /// ```
    #[inline]
    pub fn record(&self, outcome: Outcome) -> u32 {
        match outcome {
            Outcome::Failure => {
                match self
                    .run
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1))
                {
                    Ok(previous) => previous + 1,
                    Err(saturated) => saturated,
                }
            }
            Outcome::Success | Outcome::Slow => {
                self.run.store(0, Ordering::Relaxed);
                0
            }
            Outcome::Ignored => self.consecutive(),
        }
    }

    /// The current number of failures in a row.
    ///
    /// ```
    /// # use degrade_core::{Outcome, window::ConsecutiveWindow};
    /// let w = ConsecutiveWindow::new();
    /// w.record(Outcome::Failure);
    /// assert_eq!(w.consecutive(), 1);
    /// ```
    #[inline]
    pub fn consecutive(&self) -> u32 {
        self.run.load(Ordering::Relaxed)
    }

    /// Forgets the current run (a breaker does this when it changes state).
    ///
    /// ```
    /// # use degrade_core::{Outcome, window::ConsecutiveWindow};
    /// let w = ConsecutiveWindow::new();
    /// w.record(Outcome::Failure);
    /// w.reset();
    /// assert_eq!(w.consecutive(), 0);
    /// ```
    pub fn reset(&self) {
        self.run.store(0, Ordering::Relaxed);
    }
}

impl Default for ConsecutiveWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ConsecutiveWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsecutiveWindow")
            .field("consecutive", &self.consecutive())
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Count-based window
// ---------------------------------------------------------------------------------------------

const EMPTY: u32 = 0;
const SUCCESS: u32 = 1;
const FAILURE: u32 = 2;
const SLOW: u32 = 3;

fn encode(outcome: Outcome) -> Option<u32> {
    match outcome {
        Outcome::Success => Some(SUCCESS),
        Outcome::Failure => Some(FAILURE),
        Outcome::Slow => Some(SLOW),
        Outcome::Ignored => None,
    }
}

/// The last N calls (resilience4j's `COUNT_BASED` sliding window).
///
/// A ring of N slots, each holding one outcome, plus running totals so that a snapshot costs
/// three loads rather than a pass over the ring. [`Outcome::Ignored`] calls are not recorded
/// at all: they neither take a slot nor evict a call.
///
/// Records racing for the same slot (N records apart) may land in either order, so under
/// contention "the last N" is the last N to finish, not to start; the totals always match the
/// slots once the records return.
///
/// ```
/// use degrade_core::Outcome;
/// use degrade_core::window::{CountWindow, WindowSnapshot};
/// use std::num::NonZeroU32;
///
/// let w = CountWindow::new(NonZeroU32::new(3).unwrap());
/// w.record(Outcome::Failure);
/// w.record(Outcome::Success);
/// w.record(Outcome::Slow);
/// w.record(Outcome::Success); // evicts the failure
/// assert_eq!(w.snapshot(), WindowSnapshot { calls: 3, failures: 0, slow: 1 });
/// ```
pub struct CountWindow {
    slots: Box<[AtomicU32]>,
    size: NonZeroU32,
    // On a line of its own: every record bumps it, while the totals below are written only
    // when an outcome changes and read by every judgement; sharing a line, two threads would
    // invalidate each other's reads on every call.
    cursor: CachePadded<AtomicU64>,
    // Signed totals kept in wrapping `u64`s, updated Relaxed: they are exact once records
    // return whatever order their changes land in (see the module documentation).
    calls: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
}

impl CountWindow {
    /// Creates an empty window over the last `size` calls. This is the only allocation (one
    /// 4-byte slot per call): a size read from configuration should be bounded first, as the
    /// breaker bounds it by [`MAX_COUNT_SIZE`].
    ///
    /// ```
    /// # use degrade_core::window::{CountWindow, WindowSnapshot};
    /// # use std::num::NonZeroU32;
    /// let w = CountWindow::new(NonZeroU32::new(100).unwrap());
    /// assert_eq!(w.snapshot(), WindowSnapshot::default());
    /// ```
    pub fn new(size: NonZeroU32) -> Self {
        Self {
            slots: (0..size.get()).map(|_| AtomicU32::new(EMPTY)).collect(),
            size,
            cursor: CachePadded::new(AtomicU64::new(0)),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            slow: AtomicU64::new(0),
        }
    }

    /// Records a call, evicting the oldest once the window is full.
    ///
    /// ```
    /// # use degrade_core::{Outcome, window::CountWindow};
    /// # use std::num::NonZeroU32;
    /// let w = CountWindow::new(NonZeroU32::new(2).unwrap());
    /// w.record(Outcome::Failure);
    /// w.record(Outcome::Ignored);
    /// assert_eq!(w.snapshot().calls, 1);
    /// ```
    #[inline]
    pub fn record(&self, outcome: Outcome) {
        let Some(code) = encode(outcome) else {
            return;
        };
        if code == SUCCESS && self.all_successes() {
            // A full window of successes stays a full window of successes whichever slot this
            // success would evict, so the record changes nothing and writes nothing (not even
            // the cursor: the slot that a later failure evicts holds a success either way).
            // Totals read while another record is in flight may lag its slot; this record is
            // then ordered before that one, which is allowed since the two overlap.
            return;
        }
        // The slot comes from the cursor's low 32 bits (a 32-bit division is several times
        // cheaper than a 64-bit one): every 2^32 calls the ring skips a few slots once,
        // harmlessly, since the totals follow the slots whatever the order.
        let index = (self.cursor.fetch_add(1, Ordering::Relaxed) as u32) % self.size.get();
        let slot = &self.slots[index as usize];
        // A slot that already holds this outcome (a full window of successes, the common case)
        // would be swapped for itself: the load is that swap's linearisation point, so it is
        // skipped, and the slot's cache line stays shared between threads instead of bouncing.
        if slot.load(Ordering::Relaxed) == code {
            return;
        }
        let evicted = slot.swap(code, Ordering::AcqRel);
        // Apply only the net change: an outcome replacing the same outcome (a full window of
        // successes) changes no total, and an add and a subtract that cancel would be two
        // locked read-modify-writes for nothing.
        if evicted != code {
            if evicted == EMPTY {
                self.calls.fetch_add(1, Ordering::Relaxed);
            }
            self.shift(code, 1);
            self.shift(evicted, 1u64.wrapping_neg());
        }
    }

    /// The calls in the window. Exact once concurrent records have returned; while some are in
    /// flight it may be off by those records, but it never drifts.
    ///
    /// ```
    /// # use degrade_core::{Outcome, window::CountWindow};
    /// # use std::num::NonZeroU32;
    /// let w = CountWindow::new(NonZeroU32::new(4).unwrap());
    /// w.record(Outcome::Failure);
    /// w.record(Outcome::Success);
    /// assert_eq!(w.snapshot().failure_rate(), Some(0.5));
    /// ```
    #[inline]
    pub fn snapshot(&self) -> WindowSnapshot {
        // The totals are signed sums kept in wrapping `u64`s (see the module documentation): a
        // total an evictor has overtaken for a moment is below zero and reads as zero.
        let load = |c: &AtomicU64| (c.load(Ordering::Relaxed) as i64).max(0) as u64;
        WindowSnapshot::clamped(
            load(&self.calls),
            load(&self.failures),
            load(&self.slow),
            u64::from(self.size.get()),
        )
    }

    /// Empties the window. Each slot is swapped out and its outcome subtracted, so a reset
    /// racing with records may keep some of them but never leaves the totals out of step with
    /// the slots.
    ///
    /// ```
    /// # use degrade_core::{Outcome, window::{CountWindow, WindowSnapshot}};
    /// # use std::num::NonZeroU32;
    /// let w = CountWindow::new(NonZeroU32::new(4).unwrap());
    /// w.record(Outcome::Failure);
    /// w.reset();
    /// assert_eq!(w.snapshot(), WindowSnapshot::default());
    /// ```
    pub fn reset(&self) {
        for slot in &*self.slots {
            let removed = slot.swap(EMPTY, Ordering::AcqRel);
            self.subtract(removed);
        }
    }

    /// The number of calls the window holds when full.
    ///
    /// ```
    /// # use degrade_core::window::CountWindow;
    /// # use std::num::NonZeroU32;
    /// let w = CountWindow::new(NonZeroU32::new(50).unwrap());
    /// assert_eq!(w.size().get(), 50);
    /// ```
    pub fn size(&self) -> NonZeroU32 {
        self.size
    }

    /// Whether the totals show a full window of successes only.
    #[inline]
    fn all_successes(&self) -> bool {
        self.failures.load(Ordering::Relaxed) == 0
            && self.slow.load(Ordering::Relaxed) == 0
            && self.calls.load(Ordering::Relaxed) == u64::from(self.size.get())
    }

    /// Adds `delta` (a wrapping `+1` or `-1`) to the outcome-specific total of `code`.
    #[inline]
    fn shift(&self, code: u32, delta: u64) {
        match code {
            FAILURE => {
                self.failures.fetch_add(delta, Ordering::Relaxed);
            }
            SLOW => {
                self.slow.fetch_add(delta, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    fn subtract(&self, code: u32) {
        if code == EMPTY {
            return;
        }
        self.calls.fetch_sub(1, Ordering::Relaxed);
        self.shift(code, 1u64.wrapping_neg());
    }
}

impl fmt::Debug for CountWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountWindow")
            .field("size", &self.size)
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Time-based window
// ---------------------------------------------------------------------------------------------

const COUNT_MASK: u64 = 0xFFFF_FFFF;
const MIN_BUCKET_WIDTH: Duration = Duration::from_millis(1);

/// One bucket: three words, each `(epoch as u32) << 32 | count`.
struct Bucket {
    calls: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
}

/// The calls of the last `span`, in buckets (resilience4j's `TIME_BASED` sliding window).
///
/// Time is cut into epochs of `span / buckets` counted from an `origin`; the window is the
/// `buckets` epochs ending with the epoch of `now`, so it slides by one bucket width at a time.
/// The window never reads a clock: `now` is passed in, which keeps it testable and lets a caller
/// reuse the instant it already took.
///
/// A record whose `now` is older than the data already in its bucket (a thread that read the
/// clock, was descheduled for a whole span, then recorded) is dropped rather than allowed to wipe
/// the newer counts; its call would be outside the window anyway. A `now` before `origin` counts
/// in the first epoch. Counts saturate at `u32::MAX` per bucket.
///
/// ```
/// use degrade_core::Outcome;
/// use degrade_core::window::TimeWindow;
/// use std::{num::NonZeroU32, time::Duration};
/// use tokio::time::Instant;
///
/// let t0 = Instant::now();
/// let w = TimeWindow::new(Duration::from_secs(10), NonZeroU32::new(10).unwrap(), t0)?;
/// w.record(Outcome::Failure, t0);
/// w.record(Outcome::Success, t0 + Duration::from_secs(5));
/// assert_eq!(w.snapshot(t0 + Duration::from_secs(9)).calls, 2);
/// // Ten seconds later the failure has left the window.
/// assert_eq!(w.snapshot(t0 + Duration::from_secs(10)).failures, 0);
/// # Ok::<(), degrade_core::ConfigError>(())
/// ```
pub struct TimeWindow {
    buckets: Box<[Bucket]>,
    bucket_count: NonZeroU32,
    width_nanos: u64,
    span: Duration,
    origin: Instant,
    // The newest epoch ever recorded. Bucket words keep only 32 bits of their epoch, so a tag
    // that looks newer than `now` may instead be one left 2^32 epochs ago by a quiet bucket
    // (seven weeks at 1 ms per bucket); a tag is newer only if some record reached it.
    head: AtomicU64,
}

impl TimeWindow {
    /// Creates an empty window over `span`, cut into `buckets` buckets, with epochs counted
    /// from `origin`. This is the only allocation.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] on field `span` if it is zero or longer than `u64::MAX` nanoseconds
    /// (about 584 years), or on field `buckets` if there are more than [`MAX_BUCKETS`] or a
    /// bucket would be narrower than 1 ms.
    /// Callers prefix the field with their own path ([`ConfigError::within`]).
    ///
    /// ```
    /// # use degrade_core::window::TimeWindow;
    /// # use std::{num::NonZeroU32, time::Duration};
    /// # use tokio::time::Instant;
    /// let ten = NonZeroU32::new(10).unwrap();
    /// assert!(TimeWindow::new(Duration::from_secs(1), ten, Instant::now()).is_ok());
    /// let err = TimeWindow::new(Duration::from_millis(5), ten, Instant::now()).unwrap_err();
    /// assert_eq!(err.field(), "buckets");
    /// let err = TimeWindow::new(Duration::ZERO, ten, Instant::now()).unwrap_err();
    /// assert_eq!(err.field(), "span");
    /// ```
    pub fn new(span: Duration, buckets: NonZeroU32, origin: Instant) -> Result<Self, ConfigError> {
        if span.is_zero() {
            return Err(ConfigError::new("span", "must be greater than zero"));
        }
        let Ok(span_nanos) = u64::try_from(span.as_nanos()) else {
            return Err(ConfigError::new(
                "span",
                "must be at most u64::MAX nanoseconds (about 584 years)",
            ));
        };
        if buckets.get() > MAX_BUCKETS {
            return Err(ConfigError::new(
                "buckets",
                format!("must be at most {MAX_BUCKETS}"),
            ));
        }
        let width_nanos = span_nanos / u64::from(buckets.get());
        if u128::from(width_nanos) < MIN_BUCKET_WIDTH.as_nanos() {
            return Err(ConfigError::new(
                "buckets",
                "must leave each bucket at least 1ms wide (span / buckets >= 1ms)",
            ));
        }
        Ok(Self {
            buckets: (0..buckets.get())
                .map(|_| Bucket {
                    calls: AtomicU64::new(0),
                    failures: AtomicU64::new(0),
                    slow: AtomicU64::new(0),
                })
                .collect(),
            bucket_count: buckets,
            width_nanos,
            span,
            origin,
            head: AtomicU64::new(0),
        })
    }

    /// Records a call that finished at `now`.
    ///
    /// ```
    /// # use degrade_core::{Outcome, window::TimeWindow};
    /// # use std::{num::NonZeroU32, time::Duration};
    /// # use tokio::time::Instant;
    /// let t0 = Instant::now();
    /// let w = TimeWindow::new(Duration::from_secs(1), NonZeroU32::new(4).unwrap(), t0)?;
    /// w.record(Outcome::Slow, t0);
    /// w.record(Outcome::Ignored, t0);
    /// assert_eq!(w.snapshot(t0).calls, 1);
    /// assert_eq!(w.snapshot(t0).slow, 1);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn record(&self, outcome: Outcome, now: Instant) {
        if outcome.is_ignored() {
            return;
        }
        let epoch = self.epoch(now);
        // Raise `head` before any word carries this epoch: a thread that then reads the word
        // (acquire) also sees `head` at least this high. Usually one load per bucket width.
        if self.head.load(Ordering::Relaxed) < epoch {
            self.head.fetch_max(epoch, Ordering::Relaxed);
        }
        let bucket = &self.buckets[(epoch % u64::from(self.bucket_count.get())) as usize];
        self.bump(&bucket.calls, epoch);
        match outcome {
            Outcome::Failure => self.bump(&bucket.failures, epoch),
            Outcome::Slow => self.bump(&bucket.slow, epoch),
            Outcome::Success | Outcome::Ignored => {}
        }
    }

    /// The calls of the window ending with the bucket of `now`. A snapshot taken while records
    /// are in flight may be off by those records.
    ///
    /// ```
    /// # use degrade_core::{Outcome, window::{TimeWindow, WindowSnapshot}};
    /// # use std::{num::NonZeroU32, time::Duration};
    /// # use tokio::time::Instant;
    /// let t0 = Instant::now();
    /// let w = TimeWindow::new(Duration::from_secs(2), NonZeroU32::new(2).unwrap(), t0)?;
    /// w.record(Outcome::Failure, t0);
    /// let one = WindowSnapshot { calls: 1, failures: 1, slow: 0 };
    /// assert_eq!(w.snapshot(t0 + Duration::from_millis(1999)), one);
    /// assert_eq!(w.snapshot(t0 + Duration::from_secs(2)), WindowSnapshot::default());
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn snapshot(&self, now: Instant) -> WindowSnapshot {
        let tag = self.epoch(now) as u32;
        let n = self.bucket_count.get();
        let live = |word: &AtomicU64| -> u64 {
            let word = word.load(Ordering::Acquire);
            // Tags newer than `now` wrap to a huge distance and are left out too.
            if tag.wrapping_sub((word >> 32) as u32) < n {
                word & COUNT_MASK
            } else {
                0
            }
        };
        let (mut calls, mut failures, mut slow) = (0, 0, 0);
        for bucket in &*self.buckets {
            calls += live(&bucket.calls);
            failures += live(&bucket.failures);
            slow += live(&bucket.slow);
        }
        WindowSnapshot::clamped(calls, failures, slow, u64::MAX)
    }

    /// Empties the window. Each word keeps its epoch and drops its count in one atomic step, so
    /// a record racing with the reset is either kept whole or dropped whole.
    ///
    /// ```
    /// # use degrade_core::{Outcome, window::{TimeWindow, WindowSnapshot}};
    /// # use std::{num::NonZeroU32, time::Duration};
    /// # use tokio::time::Instant;
    /// let t0 = Instant::now();
    /// let w = TimeWindow::new(Duration::from_secs(1), NonZeroU32::new(4).unwrap(), t0)?;
    /// w.record(Outcome::Failure, t0);
    /// w.reset();
    /// assert_eq!(w.snapshot(t0), WindowSnapshot::default());
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn reset(&self) {
        for bucket in &*self.buckets {
            for word in [&bucket.calls, &bucket.failures, &bucket.slow] {
                word.fetch_and(!COUNT_MASK, Ordering::AcqRel);
            }
        }
    }

    /// Empties the window and forgets its epochs too, as new: for a window nobody records
    /// into any more (a recycled one, see [`crate::recycle`]), whose next owner counts epochs
    /// from its own origin — starting over at a lower epoch, which [`reset`](Self::reset)'s
    /// words (they keep their epoch) would refuse as older than what they hold.
    ///
    /// ```
    /// # use degrade_core::{Outcome, window::TimeWindow};
    /// # use std::{num::NonZeroU32, time::Duration};
    /// # use tokio::time::Instant;
    /// let t0 = Instant::now();
    /// let w = TimeWindow::new(Duration::from_secs(1), NonZeroU32::new(4).unwrap(), t0)?;
    /// w.record(Outcome::Failure, t0 + Duration::from_secs(4)); // epoch 4, bucket 0
    /// w.clear();
    /// // Epoch 0, bucket 0 again: after a `reset` the bucket would keep epoch 4 and refuse it.
    /// w.record(Outcome::Failure, t0);
    /// assert_eq!(w.snapshot(t0).failures, 1);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn clear(&self) {
        for bucket in &*self.buckets {
            for word in [&bucket.calls, &bucket.failures, &bucket.slow] {
                word.store(0, Ordering::Relaxed);
            }
        }
        self.head.store(0, Ordering::Relaxed);
    }

    /// The duration the window covers.
    ///
    /// ```
    /// # use degrade_core::window::TimeWindow;
    /// # use std::{num::NonZeroU32, time::Duration};
    /// # use tokio::time::Instant;
    /// let w = TimeWindow::new(Duration::from_secs(60), NonZeroU32::new(6).unwrap(), Instant::now())?;
    /// assert_eq!(w.span(), Duration::from_secs(60));
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn span(&self) -> Duration {
        self.span
    }

    /// The number of buckets the span is cut into.
    ///
    /// ```
    /// # use degrade_core::window::TimeWindow;
    /// # use std::{num::NonZeroU32, time::Duration};
    /// # use tokio::time::Instant;
    /// let w = TimeWindow::new(Duration::from_secs(60), NonZeroU32::new(6).unwrap(), Instant::now())?;
    /// assert_eq!(w.buckets().get(), 6);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn buckets(&self) -> NonZeroU32 {
        self.bucket_count
    }

    fn epoch(&self, now: Instant) -> u64 {
        // Saturating: a `now` before the origin is epoch 0, and after 584 years time stops.
        let nanos = u64::try_from(now.saturating_duration_since(self.origin).as_nanos())
            .unwrap_or(u64::MAX);
        nanos / self.width_nanos
    }

    /// Adds one to `word` for `epoch`, rolling a stale word over to `epoch` in the same
    /// compare-and-swap and leaving a newer word alone.
    fn bump(&self, word: &AtomicU64, epoch: u64) {
        let tag = epoch as u32;
        let mut current = word.load(Ordering::Acquire);
        loop {
            let stored = (current >> 32) as u32;
            let next = if stored == tag {
                if current & COUNT_MASK == COUNT_MASK {
                    return;
                }
                current + 1
            } else if self.is_newer(stored, tag, epoch) {
                return;
            } else {
                (u64::from(tag) << 32) | 1
            };
            match word.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// Whether a word tagged `stored` counts an epoch after `epoch`. The word was read with
    /// acquire, so `head` already covers the epoch it was written for.
    fn is_newer(&self, stored: u32, tag: u32, epoch: u64) -> bool {
        let ahead = stored.wrapping_sub(tag);
        (ahead as i32) > 0
            && epoch.saturating_add(u64::from(ahead)) <= self.head.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for TimeWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A snapshot needs a `now`, and Debug must not read a clock.
        f.debug_struct("TimeWindow")
            .field("span", &self.span)
            .field("buckets", &self.bucket_count)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    fn snap(calls: u64, failures: u64, slow: u64) -> WindowSnapshot {
        WindowSnapshot {
            calls,
            failures,
            slow,
        }
    }

    fn origin() -> Instant {
        Instant::from_std(std::time::Instant::now())
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn rates_are_none_without_calls() {
        assert_eq!(snap(0, 0, 0).failure_rate(), None);
        assert_eq!(snap(0, 0, 0).slow_rate(), None);
        assert_eq!(snap(8, 2, 4).failure_rate(), Some(0.25));
        assert_eq!(snap(8, 2, 4).slow_rate(), Some(0.5));
    }

    #[test]
    fn consecutive_counts_failures_until_a_success() {
        let w = ConsecutiveWindow::new();
        assert_eq!(w.record(Outcome::Failure), 1);
        assert_eq!(w.record(Outcome::Failure), 2);
        assert_eq!(w.record(Outcome::Ignored), 2);
        assert_eq!(w.record(Outcome::Slow), 0);
        assert_eq!(w.record(Outcome::Failure), 1);
        assert_eq!(w.record(Outcome::Success), 0);
        w.record(Outcome::Failure);
        w.reset();
        assert_eq!(w.consecutive(), 0);
    }

    #[test]
    fn consecutive_saturates() {
        let w = ConsecutiveWindow::new();
        w.run.store(u32::MAX - 1, Ordering::Relaxed);
        assert_eq!(w.record(Outcome::Failure), u32::MAX);
        assert_eq!(w.record(Outcome::Failure), u32::MAX);
    }

    #[test]
    fn count_window_evicts_oldest_first() {
        let w = CountWindow::new(nz(3));
        w.record(Outcome::Failure);
        w.record(Outcome::Slow);
        w.record(Outcome::Success);
        assert_eq!(w.snapshot(), snap(3, 1, 1));
        w.record(Outcome::Success); // evicts the failure
        assert_eq!(w.snapshot(), snap(3, 0, 1));
        w.record(Outcome::Failure); // evicts the slow call
        assert_eq!(w.snapshot(), snap(3, 1, 0));
        w.record(Outcome::Success); // evicts the first success
        assert_eq!(w.snapshot(), snap(3, 1, 0));
        w.record(Outcome::Success); // evicts the second success
        w.record(Outcome::Success); // evicts the failure
        assert_eq!(w.snapshot(), snap(3, 0, 0));
    }

    #[test]
    fn count_window_full_of_successes_still_evicts_in_order() {
        let w = CountWindow::new(nz(3));
        for _ in 0..3 {
            w.record(Outcome::Success);
        }
        // Successes into a window of successes take no slot...
        for _ in 0..10 {
            w.record(Outcome::Success);
        }
        assert_eq!(w.snapshot(), snap(3, 0, 0));
        // ...and a failure still leaves exactly `size` records after it arrived.
        w.record(Outcome::Failure);
        w.record(Outcome::Success);
        w.record(Outcome::Success);
        assert_eq!(w.snapshot(), snap(3, 1, 0));
        w.record(Outcome::Success);
        assert_eq!(w.snapshot(), snap(3, 0, 0));
        w.record(Outcome::Slow);
        w.record(Outcome::Slow);
        assert_eq!(w.snapshot(), snap(3, 0, 2));
    }

    #[test]
    fn count_window_ignores_ignored() {
        let w = CountWindow::new(nz(2));
        w.record(Outcome::Failure);
        for _ in 0..10 {
            w.record(Outcome::Ignored);
        }
        assert_eq!(w.snapshot(), snap(1, 1, 0));
        assert_eq!(w.snapshot().failure_rate(), Some(1.0));
    }

    #[test]
    fn count_window_reset_then_refill() {
        let w = CountWindow::new(nz(3));
        w.record(Outcome::Failure);
        w.record(Outcome::Failure);
        w.reset();
        assert_eq!(w.snapshot(), WindowSnapshot::default());
        for _ in 0..5 {
            w.record(Outcome::Slow);
        }
        assert_eq!(w.snapshot(), snap(3, 0, 3));
    }

    #[test]
    fn count_window_threads_leave_exact_totals() {
        let w = CountWindow::new(nz(64));
        std::thread::scope(|s| {
            for t in 0..4 {
                let w = &w;
                s.spawn(move || {
                    for i in 0..10_000 {
                        let o = [Outcome::Success, Outcome::Failure, Outcome::Slow][(i + t) % 3];
                        w.record(o);
                    }
                });
            }
        });
        assert_eq!(w.snapshot().calls, 64);
        for _ in 0..64 {
            w.record(Outcome::Success);
        }
        assert_eq!(w.snapshot(), snap(64, 0, 0));
        w.reset();
        assert_eq!(w.snapshot(), WindowSnapshot::default());
    }

    #[test]
    fn time_window_rejects_bad_config() {
        let err = TimeWindow::new(Duration::ZERO, nz(1), origin()).unwrap_err();
        assert_eq!(err.field(), "span");
        let err = TimeWindow::new(Duration::from_millis(9), nz(10), origin()).unwrap_err();
        assert_eq!(err.field(), "buckets");
        let err = TimeWindow::new(Duration::MAX, nz(1), origin()).unwrap_err();
        assert_eq!(err.field(), "span");
        assert!(TimeWindow::new(Duration::from_millis(10), nz(10), origin()).is_ok());
    }

    #[test]
    fn time_window_expires_after_span() {
        let t0 = origin();
        let w = TimeWindow::new(100 * MS, nz(4), t0).unwrap(); // 25 ms buckets
        w.record(Outcome::Failure, t0);
        w.record(Outcome::Slow, t0 + 30 * MS);
        w.record(Outcome::Success, t0 + 99 * MS);
        w.record(Outcome::Ignored, t0 + 99 * MS);
        assert_eq!(w.snapshot(t0 + 99 * MS), snap(3, 1, 1));
        // At 100 ms the first bucket (0..25 ms) has left the window.
        assert_eq!(w.snapshot(t0 + 100 * MS), snap(2, 0, 1));
        assert_eq!(w.snapshot(t0 + 149 * MS), snap(1, 0, 0));
        assert_eq!(w.snapshot(t0 + 200 * MS), snap(0, 0, 0));
        // A snapshot older than the records does not see them.
        assert_eq!(w.snapshot(t0 + 10 * MS), snap(1, 1, 0));
        // A bucket reused a span later starts from zero.
        w.record(Outcome::Success, t0 + 101 * MS);
        assert_eq!(w.snapshot(t0 + 101 * MS), snap(3, 0, 1));
    }

    #[test]
    fn time_window_drops_late_writers() {
        let t0 = origin();
        let w = TimeWindow::new(40 * MS, nz(4), t0).unwrap(); // 10 ms buckets
        // Epoch 4 reuses the bucket of epoch 0.
        w.record(Outcome::Failure, t0 + 45 * MS);
        w.record(Outcome::Success, t0 + 5 * MS); // late: must not wipe epoch 4
        w.record(Outcome::Slow, t0 + 5 * MS);
        assert_eq!(w.snapshot(t0 + 45 * MS), snap(1, 1, 0));
        // A late writer into a bucket that holds older data still counts.
        w.record(Outcome::Success, t0 + 25 * MS);
        assert_eq!(w.snapshot(t0 + 45 * MS), snap(2, 1, 0));
    }

    #[test]
    fn time_window_quiet_bucket_is_not_mistaken_for_newer() {
        let t0 = origin();
        let w = TimeWindow::new(4 * MS, nz(4), t0).unwrap(); // 1 ms buckets
        w.record(Outcome::Failure, t0 + 3 * MS);
        // Epoch 2^31 + 7 shares the bucket, and in 32-bit arithmetic the old tag 3 looks
        // 2^31 - 4 epochs *newer*; no record ever reached that epoch, so it is stale.
        let later = t0 + Duration::from_millis(3 + (1 << 31) + 4);
        w.record(Outcome::Success, later);
        assert_eq!(w.snapshot(later), snap(1, 0, 0));
    }

    #[test]
    fn time_window_before_origin_is_first_epoch() {
        let t0 = origin() + Duration::from_secs(1);
        let w = TimeWindow::new(10 * MS, nz(2), t0).unwrap();
        let before = t0 - Duration::from_millis(500);
        w.record(Outcome::Failure, before);
        assert_eq!(w.snapshot(before), snap(1, 1, 0));
        assert_eq!(w.snapshot(t0 + 4 * MS), snap(1, 1, 0));
        assert_eq!(w.snapshot(t0 + 10 * MS), snap(0, 0, 0));
    }

    #[test]
    fn time_window_reset_keeps_counting() {
        let t0 = origin();
        let w = TimeWindow::new(10 * MS, nz(2), t0).unwrap();
        w.record(Outcome::Failure, t0);
        w.reset();
        assert_eq!(w.snapshot(t0), snap(0, 0, 0));
        w.record(Outcome::Slow, t0);
        assert_eq!(w.snapshot(t0), snap(1, 0, 1));
    }

    #[test]
    fn time_window_threads_lose_no_count() {
        let t0 = origin();
        let w = TimeWindow::new(10 * MS, nz(2), t0).unwrap();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        w.record(Outcome::Failure, t0);
                    }
                });
            }
        });
        assert_eq!(w.snapshot(t0), snap(40_000, 40_000, 0));
    }

    #[test]
    fn windows_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<ConsecutiveWindow>();
        check::<CountWindow>();
        check::<TimeWindow>();
    }
}
