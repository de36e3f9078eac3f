//! Counters of the export path and the signals derived from them.
//!
//! One [`ExportStats`] is shared (cheap clones) by the sampler, the filter, the exporter adapter
//! and the HTTP client of one pipeline. It counts spans offered to the batch processor, spans
//! and bytes exported, export requests, and every dropped span by [`DropReason`]. Two signals
//! for degrade-triggers come from it:
//!
//! * [`ExportStats::backlog`]: spans handed to the processor minus spans that left it
//!   (exported, or dropped by the exporter stack). A collector that slows down makes it grow.
//!   The SDK's batch processor drops spans on a full queue into a private counter with no
//!   getter, so after such an overflow the backlog overstates what is queued; it is clamped to
//!   the queue capacity you give [`ExportStats::backlog_pressure`].
//! * [`TelemetryBudget`]: spans or bytes exported per period against a budget, so a service
//!   that would exceed what it may send (or be billed for) degrades its telemetry first.
//!
//! Both are plain readers: feed them to a `degrade_triggers::Gauge` (or any ladder input)
//! without this crate depending on degrade-triggers:
//!
//! ```text
//! use degrade_triggers::{Gauge, LevelThresholds, Scale};
//! let s = stats.clone();
//! // Raw backlog in spans, against the processor's queue of 2048.
//! let backlog = Gauge::new("otel-backlog",
//!     Scale::new(LevelThresholds::new(512.0, 1024.0, 1536.0, 1900.0))?,
//!     move || Some(s.backlog() as f64));
//! // The budget is already a pressure: 1.0 means "on course to spend it all".
//! let budget = Arc::new(TelemetryBudget::new(stats, BudgetUnit::Bytes, 50 << 30, DAY)?);
//! let cost = Gauge::new("otel-budget", Scale::proportional(1.0)?, move || Some(budget.pressure()));
//! ```

use degrade_core::{Clock, ConfigError, TokioClock};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Why spans were dropped on the export path.
///
/// ```
/// use degrade_otel::DropReason;
/// assert_eq!(DropReason::RateLimited.as_str(), "rate_limited");
/// assert_eq!(DropReason::ALL.len(), 9);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Not sampled at the level's ratio (head sampler).
    SampledOut,
    /// Not a critical service at a `critical_only` level.
    NotCritical,
    /// Not an error at an `errors_only` level.
    NotError,
    /// The span rate limit rejected the batch.
    RateLimited,
    /// The circuit breaker was open.
    CircuitOpen,
    /// Another local rejection (load shed, overload).
    Rejected,
    /// The export timed out.
    Timeout,
    /// The collector or the transport failed the export.
    ExportFailed,
    /// The exporter was shut down.
    Shutdown,
}

impl DropReason {
    /// Every reason, in index order.
    pub const ALL: [DropReason; 9] = [
        DropReason::SampledOut,
        DropReason::NotCritical,
        DropReason::NotError,
        DropReason::RateLimited,
        DropReason::CircuitOpen,
        DropReason::Rejected,
        DropReason::Timeout,
        DropReason::ExportFailed,
        DropReason::Shutdown,
    ];

    /// The metric attribute value (`"sampled_out"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::SampledOut => "sampled_out",
            DropReason::NotCritical => "not_critical",
            DropReason::NotError => "not_error",
            DropReason::RateLimited => "rate_limited",
            DropReason::CircuitOpen => "circuit_open",
            DropReason::Rejected => "rejected",
            DropReason::Timeout => "timeout",
            DropReason::ExportFailed => "export_failed",
            DropReason::Shutdown => "shutdown",
        }
    }

    /// Whether the span was dropped before reaching the batch processor (sampler or filter).
    pub const fn before_processor(self) -> bool {
        matches!(
            self,
            DropReason::SampledOut | DropReason::NotCritical | DropReason::NotError
        )
    }

    const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Default)]
struct Counters {
    offered: AtomicU64,
    exported: AtomicU64,
    bytes: AtomicU64,
    requests: AtomicU64,
    dropped: [AtomicU64; 9],
}

/// Shared counters of one export pipeline. See the [module documentation](self).
///
/// ```
/// use degrade_otel::{DropReason, ExportStats};
/// let stats = ExportStats::new();
/// stats.record_offered(10);
/// stats.record_exported(6, 1);
/// stats.record_drop(DropReason::CircuitOpen, 2);
/// assert_eq!(stats.backlog(), 2);
/// assert_eq!(stats.snapshot().dropped(DropReason::CircuitOpen), 2);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ExportStats {
    inner: Arc<Counters>,
}

impl ExportStats {
    /// Zeroed counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts `n` spans handed to the batch processor.
    #[inline]
    pub fn record_offered(&self, n: u64) {
        self.inner.offered.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `spans` spans exported in `requests` requests.
    #[inline]
    pub fn record_exported(&self, spans: u64, requests: u64) {
        self.inner.exported.fetch_add(spans, Ordering::Relaxed);
        self.inner.requests.fetch_add(requests, Ordering::Relaxed);
    }

    /// Counts `n` request body bytes sent to the collector.
    #[inline]
    pub fn record_bytes(&self, n: u64) {
        self.inner.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` spans dropped for `reason`.
    #[inline]
    pub fn record_drop(&self, reason: DropReason, n: u64) {
        self.inner.dropped[reason.index()].fetch_add(n, Ordering::Relaxed);
    }

    /// Spans handed to the processor that have neither been exported nor dropped after it.
    pub fn backlog(&self) -> u64 {
        let s = self.snapshot();
        let after: u64 = DropReason::ALL
            .iter()
            .filter(|r| !r.before_processor())
            .map(|r| s.dropped(*r))
            .sum();
        s.offered.saturating_sub(s.exported + after)
    }

    /// The backlog as a pressure in `[0, 1]` of a processor queue holding `capacity` spans.
    ///
    /// ```
    /// # use degrade_otel::ExportStats;
    /// let stats = ExportStats::new();
    /// stats.record_offered(1024);
    /// assert_eq!(stats.backlog_pressure(2048), 0.5);
    /// ```
    pub fn backlog_pressure(&self, capacity: usize) -> f64 {
        if capacity == 0 {
            return 1.0;
        }
        (self.backlog() as f64 / capacity as f64).min(1.0)
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let c = &self.inner;
        StatsSnapshot {
            offered: c.offered.load(Ordering::Relaxed),
            exported: c.exported.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            dropped: std::array::from_fn(|i| c.dropped[i].load(Ordering::Relaxed)),
        }
    }
}

/// The counters of an [`ExportStats`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Spans handed to the batch processor.
    pub offered: u64,
    /// Spans exported.
    pub exported: u64,
    /// Request body bytes sent (OTLP/HTTP client and gRPC exporter).
    pub bytes: u64,
    /// Export requests that succeeded.
    pub requests: u64,
    dropped: [u64; 9],
}

impl StatsSnapshot {
    /// Spans dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()]
    }

    /// Spans dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }
}

/// What a [`TelemetryBudget`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BudgetUnit {
    /// Spans exported.
    Spans,
    /// Request body bytes sent.
    Bytes,
}

#[derive(Debug)]
struct Period {
    start: Instant,
    used_at_start: u64,
}

/// A telemetry cost budget: spans or bytes per period, read as a pressure for the ladder.
///
/// The pressure is the projected use of the current period over the budget, in `[0, 1]`:
/// exporting at exactly the budgeted rate reads 1.0 at any point of the period, at half the
/// rate 0.5. Feed it to the ladder so an over-budget service samples less before it is billed
/// or cut off.
///
/// ```
/// use degrade_core::ManualClock;
/// use degrade_otel::{BudgetUnit, ExportStats, TelemetryBudget};
/// use std::time::Duration;
///
/// let stats = ExportStats::new();
/// let clock = ManualClock::new();
/// let budget = TelemetryBudget::with_clock(stats.clone(), BudgetUnit::Spans, 1000, Duration::from_secs(60), clock.clone()).unwrap();
/// clock.advance(Duration::from_secs(30));
/// stats.record_exported(250, 1);
/// assert_eq!(budget.pressure(), 0.5); // 250 in half the period: 500 of 1000 projected
/// ```
#[derive(Debug)]
pub struct TelemetryBudget<C = TokioClock> {
    stats: ExportStats,
    unit: BudgetUnit,
    budget: u64,
    period: Duration,
    clock: C,
    current: Mutex<Period>,
}

impl TelemetryBudget<TokioClock> {
    /// A budget of `budget` units per `period` on tokio's clock.
    pub fn new(
        stats: ExportStats,
        unit: BudgetUnit,
        budget: u64,
        period: Duration,
    ) -> Result<Self, ConfigError> {
        Self::with_clock(stats, unit, budget, period, TokioClock)
    }
}

impl<C: Clock> TelemetryBudget<C> {
    /// A budget on `clock`.
    pub fn with_clock(
        stats: ExportStats,
        unit: BudgetUnit,
        budget: u64,
        period: Duration,
        clock: C,
    ) -> Result<Self, ConfigError> {
        if budget == 0 {
            return Err(ConfigError::new("budget", "must be at least 1"));
        }
        if period.is_zero() {
            return Err(ConfigError::new("period", "must be greater than zero"));
        }
        let used = Self::used_of(&stats, unit);
        let current = Mutex::new(Period {
            start: clock.now(),
            used_at_start: used,
        });
        Ok(Self {
            stats,
            unit,
            budget,
            period,
            clock,
            current,
        })
    }

    fn used_of(stats: &ExportStats, unit: BudgetUnit) -> u64 {
        let s = stats.snapshot();
        match unit {
            BudgetUnit::Spans => s.exported,
            BudgetUnit::Bytes => s.bytes,
        }
    }

    /// Units used in the current period. Periods are aligned on the budget's creation; after
    /// any idle time (a nanosecond period and years of silence included) the current one is
    /// found in constant time.
    ///
    /// ```
    /// use degrade_core::ManualClock;
    /// use degrade_otel::{BudgetUnit, ExportStats, TelemetryBudget};
    /// use std::time::Duration;
    ///
    /// let stats = ExportStats::new();
    /// let clock = ManualClock::new();
    /// let budget = TelemetryBudget::with_clock(stats.clone(), BudgetUnit::Spans, 100, Duration::from_secs(60), clock.clone()).unwrap();
    /// stats.record_exported(40, 1);
    /// assert_eq!(budget.used(), 40);
    /// clock.advance(Duration::from_secs(61)); // the next period
    /// assert_eq!(budget.used(), 0);
    /// ```
    pub fn used(&self) -> u64 {
        let now = self.clock.now();
        let used = Self::used_of(&self.stats, self.unit);
        let mut p = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(p.start);
        if elapsed >= self.period {
            // Skip every whole period at once: the start of the current one is `now` minus
            // what is left of `elapsed` after whole periods.
            p.start = now - whole_periods_remainder(elapsed, self.period);
            p.used_at_start = used;
        }
        used.saturating_sub(p.used_at_start)
    }

    /// Projected use of the period over the budget, in `[0, 1]`.
    pub fn pressure(&self) -> f64 {
        let used = self.used() as f64;
        let now = self.clock.now();
        let start = self.current.lock().unwrap_or_else(|e| e.into_inner()).start;
        // Project from at least a tenth of the period so one early batch does not read as a flood.
        let elapsed = now.saturating_duration_since(start).max(self.period / 10);
        if elapsed.is_zero() {
            // A period under 10 ns, read at its very start: nothing to project from.
            return if used > 0.0 { 1.0 } else { 0.0 };
        }
        let projected = used * self.period.as_secs_f64() / elapsed.as_secs_f64();
        (projected / self.budget as f64).clamp(0.0, 1.0)
    }
}

/// `elapsed` modulo `period` (`period` non-zero), exact for every pair of durations.
fn whole_periods_remainder(elapsed: Duration, period: Duration) -> Duration {
    const NANOS: u128 = 1_000_000_000;
    let rem = elapsed.as_nanos() % period.as_nanos();
    // `rem < period`, so its whole seconds fit in a u64 as the period's do.
    Duration::new(
        u64::try_from(rem / NANOS).unwrap_or(u64::MAX),
        (rem % NANOS) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remainder_of_whole_periods_is_exact() {
        let s = Duration::from_secs;
        assert_eq!(whole_periods_remainder(s(125), s(60)), s(5));
        assert_eq!(whole_periods_remainder(s(120), s(60)), Duration::ZERO);
        assert_eq!(
            whole_periods_remainder(Duration::MAX, Duration::from_nanos(1)),
            Duration::ZERO
        );
        assert_eq!(whole_periods_remainder(s(59), Duration::MAX), s(59));
        assert_eq!(
            whole_periods_remainder(Duration::new(10, 7), Duration::new(3, 5)),
            Duration::new(0, 999_999_992)
        );
    }
}
