//! Per-arm statistics: requests routed, outcomes by the core [`Classifier`], and a latency
//! histogram.
//!
//! Counts are cumulative from the router's creation; the judge works on differences between
//! snapshots, so nothing is ever reset under a running request.
//!
//! [`Classifier`]: degrade_core::Classifier

use crate::arm::Arm;
use degrade_core::Outcome;
use degrade_core::counter::ShardedCounter;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Number of latency buckets: 16 exact microsecond buckets, then 16 per power of two (about
/// 4–6 % wide) up to 2^40 µs (12 days); longer latencies land in the last bucket.
///
/// ```
/// use degrade_canary::stats::{LATENCY_BUCKETS, latency_bucket};
/// assert_eq!(latency_bucket(std::time::Duration::MAX), LATENCY_BUCKETS - 1);
/// ```
pub const LATENCY_BUCKETS: usize = 16 * 37;

/// The histogram bucket of a latency.
///
/// ```
/// use degrade_canary::stats::{latency_bucket, bucket_upper_micros};
/// let b = latency_bucket(std::time::Duration::from_micros(1_000));
/// assert!(bucket_upper_micros(b) > 1_000);
/// assert!(bucket_upper_micros(b) <= 1_070);
/// ```
#[inline]
pub fn latency_bucket(latency: Duration) -> usize {
    let v = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    if v < 16 {
        return v as usize;
    }
    let e = 63 - v.leading_zeros() as usize; // >= 4
    let index = 16 * (e - 3) + ((v >> (e - 4)) & 15) as usize;
    index.min(LATENCY_BUCKETS - 1)
}

/// The exclusive upper bound, in microseconds, of latency bucket `index`.
///
/// ```
/// use degrade_canary::stats::bucket_upper_micros;
/// assert_eq!(bucket_upper_micros(0), 1);
/// assert_eq!(bucket_upper_micros(16), 17);
/// ```
pub fn bucket_upper_micros(index: usize) -> u64 {
    if index < 16 {
        return index as u64 + 1;
    }
    let e = index / 16 + 3;
    let sub = (index % 16) as u64;
    (17 + sub) << (e - 4)
}

const ROUTED: usize = 0; // + arm
const FORCED: usize = 2; // + arm
const SUCCESS: usize = 4; // + arm
const FAILURE: usize = 6; // + arm
const SLOW: usize = 8; // + arm
const IGNORED: usize = 10; // + arm
const CANCELLED: usize = 12; // + arm
const SLOTS: usize = 14;

/// Shared, lock-free statistics of both arms.
pub(crate) struct Stats {
    counters: ShardedCounter<SLOTS>,
    latency: [Box<[AtomicU64]>; 2],
}

impl Stats {
    pub(crate) fn new() -> Self {
        let hist = || (0..LATENCY_BUCKETS).map(|_| AtomicU64::new(0)).collect();
        Self {
            counters: ShardedCounter::new(),
            latency: [hist(), hist()],
        }
    }

    #[inline]
    pub(crate) fn routed(&self, arm: Arm, forced: bool) {
        self.counters.add(ROUTED + arm.index(), 1);
        if forced {
            self.counters.add(FORCED + arm.index(), 1);
        }
    }

    /// Records a call whose response future was dropped before it completed.
    #[inline]
    pub(crate) fn cancelled(&self, arm: Arm) {
        self.counters.add(CANCELLED + arm.index(), 1);
    }

    /// Records a finished call. Ignored outcomes (rejections from layers below, by the
    /// classifier's judgement) count apart and carry no latency.
    #[inline]
    pub(crate) fn finished(&self, arm: Arm, outcome: Outcome, latency: Duration) {
        let a = arm.index();
        let slot = match outcome {
            Outcome::Success => SUCCESS,
            Outcome::Failure => FAILURE,
            Outcome::Slow => SLOW,
            Outcome::Ignored => {
                self.counters.add(IGNORED + a, 1);
                return;
            }
        };
        self.counters.add(slot + a, 1);
        self.latency[a][latency_bucket(latency)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> CanarySnapshot {
        let c = self.counters.snapshot();
        let arm = |a: usize| ArmSnapshot {
            routed: c[ROUTED + a],
            forced: c[FORCED + a],
            successes: c[SUCCESS + a] + c[SLOW + a],
            failures: c[FAILURE + a],
            ignored: c[IGNORED + a],
            cancelled: c[CANCELLED + a],
            latency: Histogram(
                self.latency[a]
                    .iter()
                    .map(|b| b.load(Ordering::Relaxed))
                    .collect(),
            ),
        };
        CanarySnapshot {
            stable: arm(0),
            canary: arm(1),
        }
    }
}

impl fmt::Debug for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stats").finish_non_exhaustive()
    }
}

/// A latency histogram (counts per bucket, see [`latency_bucket`]).
///
/// ```
/// use degrade_canary::stats::Histogram;
/// use std::time::Duration;
/// let mut h = Histogram::new();
/// for ms in 1..=100 { h.record(Duration::from_millis(ms)); }
/// assert_eq!(h.count(), 100);
/// let p99 = h.quantile_upper(0.99).unwrap();
/// assert!(p99 >= Duration::from_millis(99) && p99 <= Duration::from_millis(106));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Histogram(Box<[u64]>);

impl Histogram {
    /// An empty histogram.
    ///
    /// ```
    /// # use degrade_canary::stats::Histogram;
    /// assert_eq!(Histogram::new().count(), 0);
    /// ```
    pub fn new() -> Self {
        Self(vec![0; LATENCY_BUCKETS].into_boxed_slice())
    }

    /// Adds one latency.
    ///
    /// ```
    /// # use degrade_canary::stats::Histogram;
    /// let mut h = Histogram::new();
    /// h.record(std::time::Duration::from_millis(3));
    /// assert_eq!(h.count(), 1);
    /// ```
    #[inline]
    pub fn record(&mut self, latency: Duration) {
        self.0[latency_bucket(latency)] += 1;
    }

    /// Adds `n` latencies in bucket `index` (ignored when out of range).
    ///
    /// ```
    /// # use degrade_canary::stats::Histogram;
    /// let mut h = Histogram::new();
    /// h.add(20, 5);
    /// assert_eq!(h.buckets()[20], 5);
    /// ```
    pub fn add(&mut self, index: usize, n: u64) {
        if let Some(b) = self.0.get_mut(index) {
            *b += n;
        }
    }

    /// The counts per bucket.
    ///
    /// ```
    /// # use degrade_canary::stats::{Histogram, LATENCY_BUCKETS};
    /// assert_eq!(Histogram::new().buckets().len(), LATENCY_BUCKETS);
    /// ```
    pub fn buckets(&self) -> &[u64] {
        &self.0
    }

    /// The number of latencies recorded.
    ///
    /// ```
    /// # use degrade_canary::stats::Histogram;
    /// assert_eq!(Histogram::new().count(), 0);
    /// ```
    pub fn count(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The bucket holding quantile `q` (the smallest bucket whose cumulative count reaches
    /// `q` of the total), or `None` when empty.
    ///
    /// ```
    /// # use degrade_canary::stats::Histogram;
    /// let mut h = Histogram::new();
    /// h.add(3, 99);
    /// h.add(40, 1);
    /// assert_eq!(h.quantile_bucket(0.99), Some(3));
    /// assert_eq!(h.quantile_bucket(1.0), Some(40));
    /// ```
    pub fn quantile_bucket(&self, q: f64) -> Option<usize> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.0.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(i);
            }
        }
        Some(self.0.len() - 1)
    }

    /// The upper edge of the bucket holding quantile `q`, or `None` when empty.
    ///
    /// ```
    /// # use degrade_canary::stats::Histogram;
    /// assert_eq!(Histogram::new().quantile_upper(0.5), None);
    /// ```
    pub fn quantile_upper(&self, q: f64) -> Option<Duration> {
        self.quantile_bucket(q)
            .map(|i| Duration::from_micros(bucket_upper_micros(i)))
    }

    /// Latencies in buckets strictly above `index`.
    ///
    /// ```
    /// # use degrade_canary::stats::Histogram;
    /// let mut h = Histogram::new();
    /// h.add(3, 5);
    /// h.add(9, 2);
    /// assert_eq!(h.count_above(3), 2);
    /// ```
    pub fn count_above(&self, index: usize) -> u64 {
        self.0.iter().skip(index + 1).sum()
    }

    /// `self - earlier`, bucket by bucket (saturating).
    ///
    /// ```
    /// # use degrade_canary::stats::Histogram;
    /// let mut a = Histogram::new();
    /// a.add(1, 3);
    /// let b = Histogram::new();
    /// assert_eq!(a.since(&b).count(), 3);
    /// ```
    #[must_use]
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        Histogram(
            self.0
                .iter()
                .zip(earlier.0.iter())
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
        )
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count())
            .field("p50", &self.quantile_upper(0.5))
            .field("p99", &self.quantile_upper(0.99))
            .finish()
    }
}

/// One arm's cumulative counts.
///
/// ```
/// use degrade_canary::stats::ArmSnapshot;
/// let a = ArmSnapshot::default();
/// assert_eq!(a.samples(), 0);
/// assert_eq!(a.error_rate(), None);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ArmSnapshot {
    /// Requests routed to this arm (including those still running).
    pub routed: u64,
    /// Of those, requests the override forced here.
    pub forced: u64,
    /// Finished calls classified success (or slow).
    pub successes: u64,
    /// Finished calls classified failure.
    pub failures: u64,
    /// Finished calls classified ignored (they carry no evidence either way).
    pub ignored: u64,
    /// Calls whose response future was dropped before it completed (not judged).
    pub cancelled: u64,
    /// Latencies of the successes and failures.
    pub latency: Histogram,
}

impl ArmSnapshot {
    /// Judged calls: successes plus failures.
    ///
    /// ```
    /// # use degrade_canary::stats::ArmSnapshot;
    /// let mut a = ArmSnapshot::default();
    /// a.successes = 9;
    /// a.failures = 1;
    /// assert_eq!(a.samples(), 10);
    /// assert_eq!(a.error_rate(), Some(0.1));
    /// ```
    pub fn samples(&self) -> u64 {
        self.successes + self.failures
    }

    /// Failures over judged calls; `None` with no data.
    ///
    /// ```
    /// # use degrade_canary::stats::ArmSnapshot;
    /// assert_eq!(ArmSnapshot::default().error_rate(), None);
    /// ```
    pub fn error_rate(&self) -> Option<f64> {
        let n = self.samples();
        (n > 0).then(|| self.failures as f64 / n as f64)
    }

    /// `self - earlier` (saturating): the counts of an analysis window.
    ///
    /// ```
    /// # use degrade_canary::stats::ArmSnapshot;
    /// let mut now = ArmSnapshot::default();
    /// now.successes = 10;
    /// let mut then = ArmSnapshot::default();
    /// then.successes = 4;
    /// assert_eq!(now.since(&then).successes, 6);
    /// ```
    #[must_use]
    pub fn since(&self, earlier: &ArmSnapshot) -> ArmSnapshot {
        ArmSnapshot {
            routed: self.routed.saturating_sub(earlier.routed),
            forced: self.forced.saturating_sub(earlier.forced),
            successes: self.successes.saturating_sub(earlier.successes),
            failures: self.failures.saturating_sub(earlier.failures),
            ignored: self.ignored.saturating_sub(earlier.ignored),
            cancelled: self.cancelled.saturating_sub(earlier.cancelled),
            latency: self.latency.since(&earlier.latency),
        }
    }
}

/// Both arms' cumulative counts.
///
/// ```
/// use degrade_canary::stats::CanarySnapshot;
/// use degrade_canary::Arm;
/// let s = CanarySnapshot::default();
/// assert_eq!(s.arm(Arm::Canary).routed, 0);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CanarySnapshot {
    /// The stable arm.
    pub stable: ArmSnapshot,
    /// The canary arm.
    pub canary: ArmSnapshot,
}

impl CanarySnapshot {
    /// One arm.
    ///
    /// ```
    /// # use degrade_canary::{Arm, stats::CanarySnapshot};
    /// assert_eq!(CanarySnapshot::default().arm(Arm::Stable).failures, 0);
    /// ```
    pub fn arm(&self, arm: Arm) -> &ArmSnapshot {
        match arm {
            Arm::Stable => &self.stable,
            Arm::Canary => &self.canary,
        }
    }

    /// `self - earlier` for both arms.
    ///
    /// ```
    /// # use degrade_canary::stats::CanarySnapshot;
    /// let s = CanarySnapshot::default();
    /// assert_eq!(s.since(&s), s);
    /// ```
    #[must_use]
    pub fn since(&self, earlier: &CanarySnapshot) -> CanarySnapshot {
        CanarySnapshot {
            stable: self.stable.since(&earlier.stable),
            canary: self.canary.since(&earlier.canary),
        }
    }
}
