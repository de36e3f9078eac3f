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

/// Number of sticky-key groups the statistics keep apart: a keyed request belongs to group
/// `bucket % GROUPS`. The group, not the request, is the judge's unit of analysis: every
/// request of one user lands in one group, so what a user does repeatedly (fail, be slow,
/// send a flood) stays inside one unit instead of posing as independent evidence.
///
/// ```
/// use degrade_canary::stats::GROUPS;
/// assert_eq!(GROUPS, 64);
/// ```
pub const GROUPS: usize = 64;

/// The group index of requests that carried no sticky key (each is its own unit).
pub(crate) const UNGROUPED: u8 = GROUPS as u8;

/// Per cell: the latency histogram, then failures, then cancelled calls.
const CELL: usize = LATENCY_BUCKETS + 2;
const CELL_FAILURES: usize = LATENCY_BUCKETS;
const CELL_CANCELLED: usize = LATENCY_BUCKETS + 1;
/// Cells per arm: the key groups and one for unkeyed requests.
const CELLS_PER_ARM: usize = GROUPS + 1;

/// Shared, lock-free statistics of both arms.
pub(crate) struct Stats {
    counters: ShardedCounter<SLOTS>,
    /// `[arm][group or UNGROUPED][latency bucket | failures | cancelled]`, flattened. The arm's
    /// histogram is the sum of its cells, so a request touches one histogram cell, as before.
    cells: Box<[AtomicU64]>,
}

#[inline]
fn cell(arm: Arm, group: u8) -> usize {
    (arm.index() * CELLS_PER_ARM + usize::from(group).min(GROUPS)) * CELL
}

impl Stats {
    pub(crate) fn new() -> Self {
        Self {
            counters: ShardedCounter::new(),
            cells: (0..2 * CELLS_PER_ARM * CELL)
                .map(|_| AtomicU64::new(0))
                .collect(),
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
    pub(crate) fn cancelled(&self, arm: Arm, group: u8) {
        self.counters.add(CANCELLED + arm.index(), 1);
        if let Some(c) = self.cells.get(cell(arm, group) + CELL_CANCELLED) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records a finished call. Ignored outcomes (rejections from layers below, by the
    /// classifier's judgement) count apart and carry no latency.
    #[inline]
    pub(crate) fn finished(&self, arm: Arm, group: u8, outcome: Outcome, latency: Duration) {
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
        let base = cell(arm, group);
        if let Some(c) = self.cells.get(base + latency_bucket(latency)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if slot == FAILURE
            && let Some(c) = self.cells.get(base + CELL_FAILURES)
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> CanarySnapshot {
        let c = self.counters.snapshot();
        let arm = |arm: Arm| {
            let a = arm.index();
            let mut latency = Histogram::new();
            let mut groups = Vec::with_capacity(GROUPS);
            for g in 0..=GROUPS {
                let base = cell(arm, g as u8);
                let cells = &self.cells[base..base + CELL];
                let hist = Histogram(
                    cells[..LATENCY_BUCKETS]
                        .iter()
                        .map(|b| b.load(Ordering::Relaxed))
                        .collect(),
                );
                for (sum, n) in latency.0.iter_mut().zip(hist.0.iter()) {
                    *sum += n;
                }
                if g < GROUPS {
                    groups.push(GroupSnapshot {
                        failures: cells[CELL_FAILURES].load(Ordering::Relaxed),
                        cancelled: cells[CELL_CANCELLED].load(Ordering::Relaxed),
                        latency: hist,
                    });
                }
            }
            ArmSnapshot {
                routed: c[ROUTED + a],
                forced: c[FORCED + a],
                successes: c[SUCCESS + a] + c[SLOW + a],
                failures: c[FAILURE + a],
                ignored: c[IGNORED + a],
                cancelled: c[CANCELLED + a],
                latency,
                groups,
            }
        };
        CanarySnapshot {
            stable: arm(Arm::Stable),
            canary: arm(Arm::Canary),
            weight_bp: None,
        }
    }
}

impl fmt::Debug for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stats").finish_non_exhaustive()
    }
}

/// One sticky-key group's judged calls of one arm (see [`GROUPS`]).
///
/// ```
/// use degrade_canary::stats::GroupSnapshot;
/// let g = GroupSnapshot::default();
/// assert_eq!(g.samples(), 0);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupSnapshot {
    /// Finished calls classified failure.
    pub failures: u64,
    /// Calls dropped before they completed.
    pub cancelled: u64,
    /// Latencies of the finished calls (successes and failures).
    pub latency: Histogram,
}

impl GroupSnapshot {
    /// Finished, judged calls (successes and failures).
    ///
    /// ```
    /// # use degrade_canary::stats::GroupSnapshot;
    /// let mut g = GroupSnapshot::default();
    /// g.latency.add(3, 4);
    /// g.failures = 1;
    /// assert_eq!(g.samples(), 4);
    /// ```
    pub fn samples(&self) -> u64 {
        self.latency.count()
    }

    /// `self - earlier` (saturating).
    ///
    /// ```
    /// # use degrade_canary::stats::GroupSnapshot;
    /// let mut now = GroupSnapshot::default();
    /// now.failures = 3;
    /// assert_eq!(now.since(&GroupSnapshot::default()).failures, 3);
    /// ```
    #[must_use]
    pub fn since(&self, earlier: &GroupSnapshot) -> GroupSnapshot {
        GroupSnapshot {
            failures: self.failures.saturating_sub(earlier.failures),
            cancelled: self.cancelled.saturating_sub(earlier.cancelled),
            latency: self.latency.since(&earlier.latency),
        }
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

impl Histogram {
    /// `self -= other`, bucket by bucket (saturating), without allocating.
    pub(crate) fn subtract(&mut self, other: &Histogram) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a = a.saturating_sub(*b);
        }
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
    /// Of those, requests the override forced here. They are served but never judged: their
    /// outcomes are in none of the counts below.
    pub forced: u64,
    /// Finished calls classified success (or slow).
    pub successes: u64,
    /// Finished calls classified failure.
    pub failures: u64,
    /// Finished calls classified ignored (they carry no evidence either way).
    pub ignored: u64,
    /// Calls whose response future was dropped before it completed (judged as failures
    /// unless [`JudgeConfig::cancelled_is_failure`](crate::JudgeConfig::cancelled_is_failure)
    /// is off).
    pub cancelled: u64,
    /// Latencies of the successes and failures.
    pub latency: Histogram,
    /// The keyed calls by sticky-key group ([`GROUPS`] entries), or empty when the source
    /// keeps no groups (then every call counts as its own unit). Calls not in a group (no
    /// key) are the totals above minus the groups.
    pub groups: Vec<GroupSnapshot>,
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
            groups: self
                .groups
                .iter()
                .enumerate()
                .map(|(i, g)| match earlier.groups.get(i) {
                    Some(e) => g.since(e),
                    None => g.clone(),
                })
                .collect(),
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
    /// The router's weight when the snapshot was taken (basis points), if known. The judge
    /// keeps the calls of each weight apart: a weight step changes which users are on which
    /// arm.
    pub weight_bp: Option<u32>,
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
            weight_bp: self.weight_bp,
        }
    }
}
