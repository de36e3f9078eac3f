//! Per-arm statistics: requests routed, outcomes by the core [`Classifier`], and latency
//! histograms (degrade-core's [`Histogram`]) per arm and per sticky-key group.
//!
//! Counts are cumulative from the router's creation; the judge works on differences between
//! snapshots, so nothing is ever reset under a running request.
//!
//! # Two layouts
//!
//! Each arm keeps one latency histogram in [`ARM_LAYOUT`] (16 buckets per power of two of
//! microseconds: quantiles within 3.2 %, what `max_p99` and the snapshot's quantiles read),
//! and one per key group in the coarser [`GROUP_LAYOUT`] (2 buckets per power of two, within
//! 25 %), which is all the judge's rank test needs: a regression moves calls across many
//! buckets either way, and ties within a bucket count half. The 128 group histograms are
//! most of the router's memory: about 71 KB at 2 buckets per octave, against 618 KB when every
//! cell had the arm's resolution. Finer histograms merge into coarser ones exactly
//! ([`Histogram::merge`]), so the judge compares the arms at [`GROUP_LAYOUT`].
//!
//! # Exact counts, sampled latencies
//!
//! Every count (routed, forced, outcomes, cancelled, each group's calls and failures) is
//! exact. Latencies are those of the *timed* calls: once a
//! [`CanaryController`](crate::CanaryController) is built, all of them until its judge reads
//! heavy traffic on both arms; then each thread times 1 in `n ≤ 16` of its own calls of each
//! arm (degrade-core's `TimingSampler`, the same `n` for both arms), keeping per window at
//! least the timed calls the judge's latency test needs. A router no controller reads times
//! each thread's first 65,536 calls of each arm and 1 in 16 after them. An untimed call reads
//! no clock.
//!
//! [`Classifier`]: degrade_core::Classifier

use crate::arm::Arm;
use degrade_core::Outcome;
use degrade_core::counter::ShardedCounter;
use degrade_core::histogram::{AtomicHistogram, Histogram, Layout};
use degrade_core::recycle::{Pool, Pooled, Recycle};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const fn layout(precision: u8, unit_log2: u8) -> Layout {
    match Layout::new(precision, unit_log2) {
        Some(l) => l,
        None => panic!("invalid histogram layout"),
    }
}

/// The layout of each arm's latency histogram ([`ArmSnapshot::latency`]): units of 1.024 µs,
/// 16 buckets per power of two (within 1/32 of any latency from 16 µs up), 481 buckets.
///
/// ```
/// use degrade_canary::stats::ARM_LAYOUT;
/// assert_eq!(ARM_LAYOUT.relative_error(), 1.0 / 32.0);
/// ```
pub const ARM_LAYOUT: Layout = layout(4, 10);

/// The layout of each key group's latency histogram ([`GroupSnapshot::latency`]) and of the
/// judge's rank test: units of 1.024 µs, 2 buckets per power of two (within 1/4), 67 buckets.
///
/// ```
/// use degrade_canary::stats::GROUP_LAYOUT;
/// assert_eq!((GROUP_LAYOUT.len(), GROUP_LAYOUT.relative_error()), (67, 0.25));
/// ```
pub const GROUP_LAYOUT: Layout = layout(1, 10);

/// Rows of each arm's histogram: two, so that two threads recording at once do not always
/// share a cache line, without paying per-CPU rows on a large machine.
const ARM_ROWS: usize = 2;

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

/// One arm's calls of one key group.
struct Cell {
    latency: AtomicHistogram,
    failures: AtomicU64,
    cancelled: AtomicU64,
}

/// Shared, lock-free statistics of both arms.
///
/// Response futures reach them through a `&'static` (degrade-core's [`recycle`]): a router
/// takes them from [`POOL`] and they are reset and reused once the router is gone and every
/// call it started has ended. A call starts with its `ROUTED` count (minus `FORCED`: a forced
/// call is never recorded) and ends with exactly one of `SUCCESS`, `FAILURE`, `SLOW`,
/// `IGNORED`, `CANCELLED`, the future's last write (a release store).
///
/// [`recycle`]: degrade_core::recycle
pub(crate) struct Stats {
    counters: ShardedCounter<SLOTS>,
    /// Finished, judged calls of each keyed cell (timed or not), indexed as the cells: a
    /// thread's own slot, so counting a keyed call takes no locked instruction.
    group_calls: ShardedCounter<{ 2 * GROUPS }>,
    /// Each arm's latencies at [`ARM_LAYOUT`].
    latency: [AtomicHistogram; 2],
    /// `[arm][group]`, flattened (index from [`cell`]); latencies at [`GROUP_LAYOUT`].
    /// Unkeyed requests have no cell: nothing reads them apart (they are the arm's totals
    /// minus the groups), so recording them would cost a locked instruction per request for
    /// nothing.
    cells: Box<[Cell]>,
}

/// The cell of a keyed request; `None` for an unkeyed one ([`UNGROUPED`]), which has none.
#[inline]
fn cell(arm: Arm, group: u8) -> Option<usize> {
    let group = usize::from(group);
    (group < GROUPS).then(|| arm.index() * GROUPS + group)
}

/// Whether calls of `group` have a cell (they carried a sticky key).
#[inline]
pub(crate) fn grouped(group: u8) -> bool {
    usize::from(group) < GROUPS
}

/// Statistics whose router is gone, for the next router.
static POOL: Pool<Stats> = Pool::new();

impl Recycle for Stats {
    fn is_idle(&self) -> bool {
        let c = &self.counters;
        let sum = |first: usize| c.get(first).wrapping_add(c.get(first + 1));
        let started = sum(ROUTED).wrapping_sub(sum(FORCED));
        let ended = [SUCCESS, FAILURE, SLOW, IGNORED, CANCELLED]
            .into_iter()
            .fold(0u64, |total, first| total.wrapping_add(sum(first)));
        started == ended
    }

    fn reset(&self) {
        self.counters.reset();
        self.group_calls.reset();
        for h in &self.latency {
            h.reset();
        }
        for c in &*self.cells {
            c.latency.reset();
            c.failures.store(0, Ordering::Relaxed);
            c.cancelled.store(0, Ordering::Relaxed);
        }
    }
}

impl Stats {
    /// Fresh statistics for a new router: recycled ones if any are free.
    pub(crate) fn take() -> Pooled<Stats> {
        POOL.take(Stats::new)
    }

    pub(crate) fn new() -> Self {
        Self {
            counters: ShardedCounter::new(),
            group_calls: ShardedCounter::new(),
            latency: [(); 2].map(|_| AtomicHistogram::new(ARM_LAYOUT, ARM_ROWS)),
            cells: (0..2 * GROUPS)
                .map(|_| Cell {
                    latency: AtomicHistogram::new(GROUP_LAYOUT, 1),
                    failures: AtomicU64::new(0),
                    cancelled: AtomicU64::new(0),
                })
                .collect(),
        }
    }

    /// Bytes of the histograms and per-group counters (the sharded counters aside).
    #[cfg(test)]
    pub(crate) fn table_bytes(&self) -> usize {
        let arm: usize = self
            .latency
            .iter()
            .map(|h| h.rows() * h.layout().len() * 8)
            .sum();
        let cells: usize = self
            .cells
            .iter()
            .map(|c| c.latency.rows() * c.latency.layout().len() * 8 + 16)
            .sum();
        arm + cells
    }

    /// Counts a routed call; returns the calling thread's sequence of calls of this arm (for
    /// the `TimingSampler`), or `None` for a forced call (never judged, never timed).
    #[inline]
    pub(crate) fn routed(&self, arm: Arm, forced: bool) -> Option<u64> {
        let seq = self.counters.add_then_slot(ROUTED + arm.index(), 1);
        if forced {
            self.counters.add(FORCED + arm.index(), 1);
            return None;
        }
        Some(seq)
    }

    /// Records a call whose response future was dropped before it completed. The end count
    /// is the last write: after it the future does not touch the statistics.
    #[inline]
    pub(crate) fn cancelled(&self, arm: Arm, group: u8) {
        if let Some(c) = cell(arm, group).and_then(|i| self.cells.get(i)) {
            c.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        self.counters.add_release(CANCELLED + arm.index(), 1);
    }

    /// Records a finished call of no key group that was not timed: one thread-slot look-up
    /// and one store, what most calls do under heavy traffic (inlined into the response
    /// future's `poll`). The end count is the last write.
    #[inline]
    pub(crate) fn ended(&self, arm: Arm, outcome: Outcome) {
        let end = match outcome {
            Outcome::Success => SUCCESS,
            Outcome::Failure => FAILURE,
            Outcome::Slow => SLOW,
            Outcome::Ignored => IGNORED,
        };
        self.counters.add_release(end + arm.index(), 1);
    }

    /// Records a finished call, with its latency if it was timed. Ignored outcomes
    /// (rejections from layers below, by the classifier's judgement) count apart and carry no
    /// latency. The end count is the last write: after it the future does not touch the
    /// statistics. A call in no key group that was not timed can use [`ended`](Self::ended).
    pub(crate) fn finished(
        &self,
        arm: Arm,
        group: u8,
        outcome: Outcome,
        latency: Option<Duration>,
    ) {
        let a = arm.index();
        let slot = match outcome {
            Outcome::Success => SUCCESS,
            Outcome::Failure => FAILURE,
            Outcome::Slow => SLOW,
            Outcome::Ignored => {
                self.counters.add_release(IGNORED + a, 1);
                return;
            }
        };
        if let Some(latency) = latency {
            self.latency[a].record(latency);
        }
        if let Some(i) = cell(arm, group) {
            self.group_calls.add(i, 1);
            if let Some(c) = self.cells.get(i) {
                if let Some(latency) = latency {
                    c.latency.record(latency);
                }
                if slot == FAILURE {
                    c.failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.counters.add_release(slot + a, 1);
    }

    pub(crate) fn snapshot(&self) -> CanarySnapshot {
        let c = self.counters.snapshot();
        let arm = |arm: Arm| {
            let a = arm.index();
            let groups = (0..GROUPS)
                .map(|g| {
                    let cell = &self.cells[arm.index() * GROUPS + g]; // as `cell(arm, g)`, g < GROUPS
                    GroupSnapshot {
                        calls: self.group_calls.get(arm.index() * GROUPS + g),
                        failures: cell.failures.load(Ordering::Relaxed),
                        cancelled: cell.cancelled.load(Ordering::Relaxed),
                        latency: cell.latency.snapshot(),
                    }
                })
                .collect();
            ArmSnapshot {
                routed: c[ROUTED + a],
                forced: c[FORCED + a],
                successes: c[SUCCESS + a] + c[SLOW + a],
                failures: c[FAILURE + a],
                ignored: c[IGNORED + a],
                cancelled: c[CANCELLED + a],
                latency: self.latency[a].snapshot(),
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
/// use degrade_canary::stats::{GROUP_LAYOUT, GroupSnapshot};
/// let g = GroupSnapshot::default();
/// assert_eq!(g.samples(), 0);
/// assert_eq!(g.latency.layout(), GROUP_LAYOUT);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupSnapshot {
    /// Finished, judged calls (successes and failures), timed or not: exact.
    pub calls: u64,
    /// Finished calls classified failure.
    pub failures: u64,
    /// Calls dropped before they completed.
    pub cancelled: u64,
    /// Latencies of the finished calls that were timed (all of them unless the router samples
    /// its timing under heavy traffic), at [`GROUP_LAYOUT`].
    pub latency: Histogram,
}

impl Default for GroupSnapshot {
    fn default() -> Self {
        Self {
            calls: 0,
            failures: 0,
            cancelled: 0,
            latency: Histogram::new(GROUP_LAYOUT),
        }
    }
}

impl GroupSnapshot {
    /// Finished, judged calls (successes and failures): [`calls`](Self::calls), or the
    /// latencies when there are more of those (a snapshot built with latencies only).
    ///
    /// ```
    /// # use degrade_canary::stats::GroupSnapshot;
    /// let mut g = GroupSnapshot::default();
    /// g.latency.add(3, 4);
    /// g.failures = 1;
    /// assert_eq!(g.samples(), 4);
    /// g.calls = 64; // 64 calls, 4 of them timed
    /// assert_eq!(g.samples(), 64);
    /// ```
    pub fn samples(&self) -> u64 {
        self.calls.max(self.latency.count())
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
            calls: self.calls.saturating_sub(earlier.calls),
            failures: self.failures.saturating_sub(earlier.failures),
            cancelled: self.cancelled.saturating_sub(earlier.cancelled),
            latency: self.latency.since(&earlier.latency),
        }
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Latencies of the successes and failures that were timed, at [`ARM_LAYOUT`] (or any
    /// finer layout of the same unit). Every call is timed unless a
    /// [`CanaryController`](crate::CanaryController) reads heavy traffic on both arms: then
    /// each thread times 1 in `n ≤ 16` of each arm's calls (the same `n` for both arms),
    /// keeping at least the timed calls per window the judge's latency test needs; the counts
    /// above stay exact.
    pub latency: Histogram,
    /// The keyed calls by sticky-key group ([`GROUPS`] entries), or empty when the source
    /// keeps no groups (then every call counts as its own unit). Calls not in a group (no
    /// key) are the totals above minus the groups.
    pub groups: Vec<GroupSnapshot>,
}

impl Default for ArmSnapshot {
    fn default() -> Self {
        Self {
            routed: 0,
            forced: 0,
            successes: 0,
            failures: 0,
            ignored: 0,
            cancelled: 0,
            latency: Histogram::new(ARM_LAYOUT),
            groups: Vec::new(),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stats_table_is_tens_of_kilobytes() {
        let bytes = Stats::new().table_bytes();
        // Before the group histograms went to 2 buckets per octave: 2 × 65 × 594 × 8 bytes.
        assert!(bytes < 100_000, "{bytes} bytes");
        println!("stats table: {bytes} bytes");
    }

    #[test]
    fn a_call_lands_in_its_arm_and_its_group() {
        let s = Stats::new();
        s.finished(
            Arm::Canary,
            5,
            Outcome::Failure,
            Some(Duration::from_millis(40)),
        );
        s.finished(
            Arm::Canary,
            UNGROUPED,
            Outcome::Success,
            Some(Duration::from_millis(2)),
        );
        s.finished(Arm::Canary, 5, Outcome::Success, None); // counted, not timed
        s.cancelled(Arm::Stable, 5);
        let snap = s.snapshot();
        assert_eq!(snap.canary.latency.count(), 2);
        let grouped: u64 = snap.canary.groups.iter().map(GroupSnapshot::samples).sum();
        assert_eq!(
            grouped, 2,
            "the unkeyed call is in the arm's totals, in no group"
        );
        assert_eq!(snap.canary.groups[5].samples(), 2);
        assert_eq!(snap.canary.groups[5].latency.count(), 1);
        assert_eq!(snap.canary.samples(), 3);
        assert_eq!(snap.canary.groups[5].failures, 1);
        assert_eq!(snap.stable.groups[5].cancelled, 1);
        let p = snap.canary.groups[5].latency.quantile(0.5).unwrap();
        assert!(p.abs_diff(Duration::from_millis(40)) <= Duration::from_millis(10));
    }
}
