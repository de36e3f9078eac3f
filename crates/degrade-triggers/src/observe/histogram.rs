//! A lock-free, log-bucketed latency histogram, sharded by thread, plus the reader-side window.
//!
//! # Buckets
//!
//! Latencies are recorded in nanoseconds. Values below 128 ns get a bucket each (exact); above,
//! every power of two is cut into 64 equal buckets, so a bucket `[lo, hi)` is at most `lo / 64`
//! wide. A quantile is reported as the middle of the bucket the rank falls in, so it is within
//! **1/128 (0.79 %)** of the exact nearest-rank quantile of the recorded values. The top bucket
//! starts at 2^43 ns (about 2.4 hours) and takes everything above: 2432 buckets of 8 bytes per
//! shard.
//!
//! # Hot path
//!
//! Recording is one relaxed `fetch_add` on the latency's bucket in the calling thread's row
//! (one row per CPU, threads spread round-robin), plus plain loads and stores on the thread's
//! own slot of a degrade-core `ShardedCounter` for the latency sum, the outcome counters and
//! the in-flight gauge (calls started minus calls ended): no lock, no allocation, no clock.
//!
//! # Windows without rotation
//!
//! The shards only ever count up. A reader that wants "the last 10 seconds" keeps cumulative
//! copies taken on its own schedule ([`Window`]) and subtracts: the window's histogram is
//! `now − copy from ≥ 10 s ago`. Nothing on the request path ever clears or rotates a bucket,
//! so no record can be lost or double-counted by a rotation race, and several readers with
//! different windows can share one histogram.

use crossbeam_utils::CachePadded;
use degrade_core::counter::ShardedCounter;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Values below this get one bucket each.
const LINEAR: u64 = 128;
/// Sub-buckets per power of two above `LINEAR`.
const SUB: u64 = 64;
/// The highest exponent with buckets of its own; larger values go to the last bucket.
const MAX_EXP: u32 = 42;
/// Number of buckets.
pub(crate) const BUCKETS: usize = (LINEAR + (MAX_EXP as u64 - 6) * SUB) as usize;

/// The bucket of a value in nanoseconds.
#[inline]
pub(crate) fn bucket_of(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let e = 63 - v.leading_zeros();
    if e > MAX_EXP {
        return BUCKETS - 1;
    }
    let shift = e - 6;
    let top = v >> shift; // in 64..128
    (LINEAR + u64::from(e - 7) * SUB + (top - SUB)) as usize
}

/// The bounds `[lo, hi)` of a bucket.
pub(crate) fn bucket_bounds(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < LINEAR {
        return (i, i + 1);
    }
    let j = i - LINEAR;
    let e = j / SUB + 7;
    let top = j % SUB + SUB;
    let shift = e - 6;
    (top << shift, (top + 1) << shift)
}

/// The value reported for a bucket: its middle (exact below `LINEAR`).
pub(crate) fn bucket_value(i: usize) -> u64 {
    let (lo, hi) = bucket_bounds(i);
    lo + (hi - lo - 1) / 2
}

/// Counter slots besides the buckets.
pub(crate) const SUM: usize = 0;
pub(crate) const FAILURES: usize = 1;
pub(crate) const SLOW: usize = 2;
pub(crate) const TIMEOUTS: usize = 3;
pub(crate) const CANCELLED: usize = 4;
pub(crate) const COUNTERS: usize = 5;
/// Calls started and calls ended: in-flight is their difference.
const STARTED: usize = COUNTERS;
const ENDED: usize = COUNTERS + 1;

/// The shared recording side.
///
/// The counters (latency sum, failures, slow, timeouts, cancelled, started, ended) are a
/// degrade-core `ShardedCounter`: each thread owns a slot and adds with a plain load and store,
/// no locked instruction. The buckets are too many for a slot per thread (2432 per row), so they
/// live in one row per CPU, picked by thread, and take a relaxed `fetch_add`.
pub(crate) struct Histogram {
    counters: ShardedCounter<{ COUNTERS + 2 }>,
    shards: Box<[CachePadded<Box<[AtomicU64]>>]>,
}

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
}

#[inline]
fn thread_index() -> usize {
    THREAD_INDEX
        .try_with(|c| {
            let i = c.get();
            if i != usize::MAX {
                return i;
            }
            let i = NEXT_THREAD.fetch_add(1, Ordering::Relaxed) % (usize::MAX - 1);
            c.set(i);
            i
        })
        .unwrap_or(0)
}

impl Histogram {
    pub(crate) fn new() -> Self {
        // A power of two, so the request path picks its row with a mask, not a division.
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(4)
            .clamp(1, 16)
            .next_power_of_two();
        Self {
            counters: ShardedCounter::new(),
            shards: (0..n)
                .map(|_| CachePadded::new((0..BUCKETS).map(|_| AtomicU64::new(0)).collect()))
                .collect(),
        }
    }

    #[inline]
    pub(crate) fn start(&self) {
        self.counters.add(STARTED, 1);
    }

    /// Ends a call: `counter` is `FAILURES`, `SLOW`, `TIMEOUTS` (which also counts as a
    /// failure), `CANCELLED`, or `usize::MAX` for a plain success. A cancelled call has no
    /// latency worth recording.
    #[inline]
    pub(crate) fn end(&self, latency: Duration, counter: usize) {
        self.counters.add(ENDED, 1);
        if counter == CANCELLED {
            self.counters.add(CANCELLED, 1);
            return;
        }
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let shard = &self.shards[thread_index() & (self.shards.len() - 1)];
        shard[bucket_of(nanos)].fetch_add(1, Ordering::Relaxed);
        self.counters.add(SUM, nanos);
        match counter {
            TIMEOUTS => {
                self.counters.add(FAILURES, 1);
                self.counters.add(TIMEOUTS, 1);
            }
            FAILURES | SLOW => self.counters.add(counter, 1),
            _ => {}
        }
    }

    /// Ends a call that is not counted at all (ignored by the classifier).
    #[inline]
    pub(crate) fn end_ignored(&self) {
        self.counters.add(ENDED, 1);
    }

    pub(crate) fn in_flight(&self) -> u64 {
        // Ended first: a call that ends between the two reads is then counted as started too,
        // so the difference never goes below the truth by more than the calls started meanwhile.
        let ended = self.counters.get(ENDED);
        let started = self.counters.get(STARTED);
        started.saturating_sub(ended)
    }

    /// Copies the cumulative counts into `into` (buckets too if `with_buckets`).
    pub(crate) fn read(&self, into: &mut Counts, with_buckets: bool) {
        for (i, c) in into.counters.iter_mut().enumerate() {
            *c = self.counters.get(i);
        }
        if with_buckets {
            into.buckets.iter_mut().for_each(|b| *b = 0);
            for shard in &*self.shards {
                for (acc, b) in into.buckets.iter_mut().zip(shard.iter()) {
                    *acc = acc.wrapping_add(b.load(Ordering::Relaxed));
                }
            }
            into.calls = into.buckets.iter().sum();
        } else {
            into.calls = self
                .shards
                .iter()
                .flat_map(|s| s.iter())
                .map(|b| b.load(Ordering::Relaxed))
                .sum();
        }
    }
}

/// Counts read from a histogram: cumulative, or a window's difference of two reads.
#[derive(Clone)]
pub(crate) struct Counts {
    pub(crate) calls: u64,
    pub(crate) counters: [u64; COUNTERS],
    pub(crate) buckets: Box<[u64]>,
}

impl Counts {
    pub(crate) fn new(with_buckets: bool) -> Self {
        Self {
            calls: 0,
            counters: [0; COUNTERS],
            buckets: vec![0; if with_buckets { BUCKETS } else { 0 }].into_boxed_slice(),
        }
    }

    fn set_difference(&mut self, newer: &Counts, older: &Counts) {
        self.calls = newer.calls.wrapping_sub(older.calls);
        for i in 0..COUNTERS {
            self.counters[i] = newer.counters[i].wrapping_sub(older.counters[i]);
        }
        for ((d, n), o) in self
            .buckets
            .iter_mut()
            .zip(newer.buckets.iter())
            .zip(older.buckets.iter())
        {
            *d = n.wrapping_sub(*o);
        }
    }

    /// The nearest-rank quantile `q` in nanoseconds, as the middle of its bucket.
    pub(crate) fn quantile(&self, q: f64) -> Option<u64> {
        if self.calls == 0 || self.buckets.is_empty() {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.calls as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_value(i));
            }
        }
        Some(bucket_value(BUCKETS - 1))
    }

    /// Mean latency in nanoseconds.
    pub(crate) fn mean(&self) -> Option<f64> {
        (self.calls > 0).then(|| self.counters[SUM] as f64 / self.calls as f64)
    }
}

/// A reader's sliding window over a histogram: keeps cumulative copies at least `span / 4`
/// apart and subtracts the newest one that is at least `span` old, so the window covers
/// between `span` and `1.25 × span` (all history until the first copy is `span` old).
pub(crate) struct Window {
    span: Duration,
    with_buckets: bool,
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
            with_buckets,
            copies: Vec::with_capacity(COPIES),
            next: 0,
            current: Counts::new(with_buckets),
            zero: Counts::new(with_buckets),
            result: Counts::new(with_buckets),
        }
    }

    /// Reads `hist` at `now` and leaves the window's counts in `self.result`.
    pub(crate) fn update(&mut self, hist: &Histogram, now: Instant) {
        hist.read(&mut self.current, self.with_buckets);
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
    fn buckets_are_contiguous_and_narrow() {
        let mut expected_lo = 0;
        for i in 0..BUCKETS {
            let (lo, hi) = bucket_bounds(i);
            assert_eq!(lo, expected_lo, "bucket {i}");
            assert!(hi > lo);
            if lo >= LINEAR {
                // Width at most lo / 64: the middle is within 1/128 of any value inside.
                assert!((hi - lo) * 64 <= lo, "bucket {i}: [{lo}, {hi})");
            }
            assert_eq!(bucket_of(lo), i);
            assert_eq!(bucket_of(hi - 1), i);
            expected_lo = hi;
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn windows_subtract_old_copies() {
        let h = Histogram::new();
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(4), true);
        h.start();
        h.end(Duration::from_millis(1), usize::MAX);
        w.update(&h, t0);
        assert_eq!(w.result.calls, 1);
        for s in 1..=4 {
            w.update(&h, t0 + Duration::from_secs(s));
        }
        // The copy taken at t0 already held the first call; 4 s later it is subtracted.
        assert_eq!(w.result.calls, 0);
        h.start();
        h.end(Duration::from_millis(3), FAILURES);
        w.update(&h, t0 + Duration::from_secs(5));
        assert_eq!((w.result.calls, w.result.counters[FAILURES]), (1, 1));
        assert_eq!(h.in_flight(), 0);
    }
}
