//! What an `ObserveLayer` records: degrade-core's lock-free latency histogram plus outcome
//! counters, and the reader-side window.
//!
//! # Buckets
//!
//! Latencies go to a degrade-core [`AtomicHistogram`] in [`Layout::FINE`]: nanoseconds, exact
//! below 128 ns, then 64 buckets per power of two, so a quantile
//! (reported as the middle of its bucket) is within **1/128 (0.79 %)** of the exact
//! nearest-rank quantile of the recorded values. From 2^43 ns (about 2.4 hours) up everything
//! lands in the last bucket.
//!
//! # Hot path
//!
//! Recording is plain loads and stores on the thread's own slot of a degrade-core
//! `ShardedCounter` for the call count, the outcome counters and the in-flight gauge (calls
//! started minus calls ended), and, for a timed call, one relaxed `fetch_add` on the latency's
//! bucket in the calling thread's row (one row per CPU) and the latency sum: no lock, no
//! allocation, no clock. Which calls are timed: the thread's own sequence number of calls
//! started (the `STARTED` slot it bumps anyway), asked of degrade-core's `TimingSampler`,
//! which the latency windows set from the exact call count they saw
//! ([`Recorder::window_saw`]).
//!
//! # Windows without rotation
//!
//! The histogram only ever counts up. A reader that wants "the last 10 seconds" keeps
//! cumulative copies taken on its own schedule ([`Window`]) and subtracts: the window's
//! histogram is `now − copy from ≥ 10 s ago`. Nothing on the request path ever clears or
//! rotates a bucket, so no record can be lost or double-counted by a rotation race, and several
//! readers with different windows can share one histogram.

use degrade_core::counter::{ShardedCounter, TimingSampler};
use degrade_core::histogram::{AtomicHistogram, Histogram, Layout};
use degrade_core::recycle::{Pool, Pooled, Recycle};
use std::time::Duration;
use tokio::time::Instant;

/// A new latency signal's id (never 0), for [`Recorder::window_saw`].
pub(crate) fn signal_id() -> u64 {
    TimingSampler::new_reader()
}

/// Timed calls a latency window asks for before it lets calls go untimed: a p99 from 1,000
/// samples rests on 10 of them.
const TIMED_PER_WINDOW: u64 = 1_000;

/// Counter slots besides the buckets.
pub(crate) const SUM: usize = 0;
pub(crate) const FAILURES: usize = 1;
pub(crate) const SLOW: usize = 2;
pub(crate) const TIMEOUTS: usize = 3;
pub(crate) const CANCELLED: usize = 4;
/// Calls recorded (cancelled and ignored ones excluded), timed or not: exact.
pub(crate) const CALLS: usize = 5;
pub(crate) const COUNTERS: usize = 6;
/// Calls started and calls ended: in-flight is their difference.
const STARTED: usize = COUNTERS;
const ENDED: usize = COUNTERS + 1;

/// The counts and latencies that response futures write, reached through a `&'static`
/// (degrade-core's `recycle`): no reference count per call. Leased from [`POOL`] by each
/// layer, reset and reused once the layer is gone and every call it started has ended.
///
/// The counters (latency sum, failures, slow, timeouts, cancelled, started, ended) are a
/// degrade-core `ShardedCounter`: each thread owns a slot and adds with a plain load and store,
/// no locked instruction. The buckets are too many for a slot per thread (2,433 per row), so they
/// live in an [`AtomicHistogram`] with one row per CPU.
pub(crate) struct Tally {
    counters: ShardedCounter<{ COUNTERS + 2 }>,
    latency: AtomicHistogram,
}

/// Tallies whose layer is gone, for the next layer.
static POOL: Pool<Tally> = Pool::new();

impl Recycle for Tally {
    /// The layer is gone, so `STARTED` is frozen; each call adds to `ENDED` last.
    fn is_idle(&self) -> bool {
        self.counters.get(STARTED) == self.counters.get(ENDED)
    }

    fn reset(&self) {
        self.counters.reset();
        self.latency.reset();
    }
}

/// The shared recording side: the taken [`Tally`] and which calls to time.
pub(crate) struct Recorder {
    tally: Pooled<Tally>,
    /// Which calls are timed: a thread times its calls whose sequence number (its `STARTED`
    /// slot) is a multiple of `every`, set by the latency signals (rarely), read with a
    /// relaxed load per call. Until a latency signal reads, each thread times its first
    /// `TimingSampler::UNREAD_CALLS` calls and then 1 in 16 (a layer nobody reads would
    /// otherwise pay two clock reads per call forever); always every call with a slow-call
    /// threshold (it needs every latency).
    timing: TimingSampler,
}

impl Recorder {
    pub(crate) fn new(time_all: bool) -> Self {
        Self {
            tally: POOL.take(|| Tally {
                counters: ShardedCounter::new(),
                latency: AtomicHistogram::per_cpu(Layout::FINE),
            }),
            timing: if time_all {
                TimingSampler::every_call()
            } else {
                TimingSampler::warm()
            },
        }
    }

    /// Starts a call: the tally its future ends it in, and whether to time it.
    #[inline]
    pub(crate) fn start(&self) -> (&'static Tally, bool) {
        let tally = self.tally.get();
        let seq = tally.counters.add_then_slot(STARTED, 1);
        (tally, self.timing.is_timed(seq))
    }

    /// The window of latency signal `signal` (an id from [`signal_id`]) saw `calls` calls
    /// (exact): time 1 in `every ≤ 16` calls from now on, so that such a window still holds
    /// [`TIMED_PER_WINDOW`] timed calls (degrade-core's `TimingSampler::window_saw`: with
    /// several latency signals the one that needs the most timing wins).
    pub(crate) fn window_saw(&self, signal: u64, calls: u64) {
        self.timing.window_saw(signal, calls, TIMED_PER_WINDOW);
    }

    pub(crate) fn in_flight(&self) -> u64 {
        self.tally.in_flight()
    }

    /// Copies the cumulative counts into `into` (latencies too if it keeps them).
    pub(crate) fn read(&self, into: &mut Counts) {
        self.tally.read(into);
    }
}

impl Tally {
    /// Ends a call: `counter` is `FAILURES`, `SLOW`, `TIMEOUTS` (which also counts as a
    /// failure), `CANCELLED`, or `usize::MAX` for a plain success; `latency` is `None` for a
    /// call that was not timed. A cancelled call has no latency worth recording. `ENDED` is
    /// the last write (a release store): after it the future does not touch the tally.
    #[inline]
    pub(crate) fn end(&self, latency: Option<Duration>, counter: usize) {
        if counter == CANCELLED {
            self.counters.add(CANCELLED, 1);
            self.counters.add_release(ENDED, 1);
            return;
        }
        self.counters.add(CALLS, 1);
        if let Some(latency) = latency {
            let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
            self.latency.record(latency);
            self.counters.add(SUM, nanos);
        }
        match counter {
            TIMEOUTS => {
                self.counters.add(FAILURES, 1);
                self.counters.add(TIMEOUTS, 1);
            }
            FAILURES | SLOW => self.counters.add(counter, 1),
            _ => {}
        }
        self.counters.add_release(ENDED, 1);
    }

    /// Ends a call that is not counted at all (ignored by the classifier).
    #[inline]
    pub(crate) fn end_ignored(&self) {
        self.counters.add_release(ENDED, 1);
    }

    pub(crate) fn in_flight(&self) -> u64 {
        // Ended first: a call that ends between the two reads is then counted as started too,
        // so the difference never goes below the truth by more than the calls started meanwhile.
        let ended = self.counters.get(ENDED);
        let started = self.counters.get(STARTED);
        started.saturating_sub(ended)
    }

    /// Copies the cumulative counts into `into` (latencies too if it keeps them).
    pub(crate) fn read(&self, into: &mut Counts) {
        for (i, c) in into.counters.iter_mut().enumerate() {
            *c = self.counters.get(i);
        }
        into.calls = into.counters[CALLS];
        if let Some(h) = &mut into.latency {
            self.latency.read_into(h);
        }
    }
}

/// Counts read from a recorder: cumulative, or a window's difference of two reads.
#[derive(Clone)]
pub(crate) struct Counts {
    pub(crate) calls: u64,
    pub(crate) counters: [u64; COUNTERS],
    /// The latencies, when the reader wants them.
    pub(crate) latency: Option<Histogram>,
}

impl Counts {
    pub(crate) fn new(with_buckets: bool) -> Self {
        Self {
            calls: 0,
            counters: [0; COUNTERS],
            latency: with_buckets.then(|| Histogram::new(Layout::FINE)),
        }
    }

    fn set_difference(&mut self, newer: &Counts, older: &Counts) {
        self.calls = newer.calls.wrapping_sub(older.calls);
        for i in 0..COUNTERS {
            self.counters[i] = newer.counters[i].wrapping_sub(older.counters[i]);
        }
        if let (Some(d), Some(n), Some(o)) = (&mut self.latency, &newer.latency, &older.latency) {
            d.clone_from(n);
            d.subtract(o);
        }
    }

    /// The nearest-rank quantile `q` in nanoseconds, as the middle of its bucket.
    pub(crate) fn quantile(&self, q: f64) -> Option<u64> {
        let h = self.latency.as_ref()?;
        h.quantile(q)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    /// Calls timed (those in the latency histogram; 0 when this read keeps no latencies).
    pub(crate) fn timed(&self) -> u64 {
        self.latency.as_ref().map_or(0, Histogram::count)
    }

    /// Mean latency of the timed calls, in nanoseconds.
    pub(crate) fn mean(&self) -> Option<f64> {
        let timed = self.timed();
        (timed > 0).then(|| self.counters[SUM] as f64 / timed as f64)
    }
}

/// A reader's sliding window over a histogram: keeps cumulative copies at least `span / 4`
/// apart and subtracts the newest one that is at least `span` old, so the window covers
/// between `span` and `1.25 × span` (all history until the first copy is `span` old).
pub(crate) struct Window {
    span: Duration,
    copies: Vec<(Instant, Counts)>,
    next: usize,
    current: Counts,
    zero: Counts,
    pub(crate) result: Counts,
}

const COPIES: usize = 6;

impl Window {
    pub(crate) fn new(span: Duration, with_buckets: bool) -> Self {
        Self {
            span,
            copies: Vec::with_capacity(COPIES),
            next: 0,
            current: Counts::new(with_buckets),
            zero: Counts::new(with_buckets),
            result: Counts::new(with_buckets),
        }
    }

    /// Reads `hist` at `now` and leaves the window's counts in `self.result`.
    pub(crate) fn update(&mut self, hist: &Recorder, now: Instant) {
        hist.read(&mut self.current);
        let base = self
            .copies
            .iter()
            .filter(|(at, _)| now.saturating_duration_since(*at) >= self.span)
            .max_by_key(|(at, _)| *at)
            .map(|(_, c)| c)
            .unwrap_or(&self.zero);
        self.result.set_difference(&self.current, base);
        let newest = self.copies.iter().map(|(at, _)| *at).max();
        if newest.is_none_or(|at| now.saturating_duration_since(at) >= self.span / 4) {
            if self.copies.len() < COPIES {
                self.copies.push((now, self.current.clone()));
            } else {
                let slot = &mut self.copies[self.next];
                slot.0 = now;
                slot.1.clone_from(&self.current);
                self.next = (self.next + 1) % COPIES;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_subtract_old_copies() {
        let h = Recorder::new(false);
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(4), true);
        h.start().0.end(Some(Duration::from_millis(1)), usize::MAX);
        w.update(&h, t0);
        assert_eq!(w.result.calls, 1);
        for s in 1..=4 {
            w.update(&h, t0 + Duration::from_secs(s));
        }
        // The copy taken at t0 already held the first call; 4 s later it is subtracted.
        assert_eq!(w.result.calls, 0);
        h.start().0.end(Some(Duration::from_millis(3)), FAILURES);
        w.update(&h, t0 + Duration::from_secs(5));
        assert_eq!((w.result.calls, w.result.counters[FAILURES]), (1, 1));
        assert_eq!(h.in_flight(), 0);
    }
}
