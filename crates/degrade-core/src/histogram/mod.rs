//! The family's latency histogram: a log-linear bucket [`Layout`] with a stated relative
//! error, a plain [`Histogram`] of counts (merge, difference, quantiles) and the lock-free
//! recording side, [`AtomicHistogram`].
//!
//! # Buckets
//!
//! A layout counts in units of `2^unit_log2` nanoseconds and has `2^precision` buckets per
//! power of two: values below `2^precision` units get one bucket each (exact to the unit);
//! above, the octave `[2^e, 2^(e+1))` is cut into `2^precision` equal buckets, so a bucket
//! `[lo, hi)` is at most `lo / 2^precision` wide and its middle is within
//! [`Layout::relative_error`] `= 1 / 2^(precision+1)` of any value inside it. Every layout
//! ends at the same place: values from `2^43` ns (about 2.4 hours) up land in the last bucket.
//!
//! The precision is the size knob. The triggers' latency signals use [`Layout::FINE`]
//! (nanoseconds, 64 per octave, within 0.79 %, 2,433 buckets); the canary keeps one histogram
//! per arm and sticky-key group and uses coarser layouts (see `degrade_canary::stats`).
//! Histograms of two layouts with the same unit merge into the coarser one exactly: a coarse
//! bucket is the union of whole fine buckets ([`Histogram::merge`]).
//!
//! ```
//! use degrade_core::histogram::{Histogram, Layout};
//! use std::time::Duration;
//!
//! let mut h = Histogram::new(Layout::FINE);
//! for ms in 1..=100 {
//!     h.record(Duration::from_millis(ms));
//! }
//! let p99 = h.quantile(0.99).unwrap();
//! let exact = Duration::from_millis(99).as_secs_f64();
//! assert!((p99.as_secs_f64() - exact).abs() <= exact * Layout::FINE.relative_error());
//! ```

mod atomic;
mod counts;

pub use atomic::AtomicHistogram;
pub use counts::Histogram;

use std::time::Duration;

/// `log2` of the first value, in nanoseconds, that every layout puts in its last bucket.
const TOP_LOG2_NANOS: u32 = 43;

/// A log-linear bucket layout: the unit, the buckets per power of two, and the bucket of a
/// latency (see the [module docs](self)).
///
/// ```
/// use degrade_core::histogram::Layout;
/// use std::time::Duration;
///
/// // Microsecond units, 4 buckets per power of two: within 12.5 %.
/// let l = Layout::new(2, 10).unwrap();
/// assert_eq!(l.relative_error(), 0.125);
/// let b = l.bucket(Duration::from_millis(10));
/// let (lo, hi) = l.bounds(b);
/// assert!(lo <= Duration::from_millis(10) && Duration::from_millis(10) < hi);
/// assert!(hi - lo <= lo / 4);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Layout {
    precision: u8,
    unit_log2: u8,
}

impl Layout {
    /// Nanoseconds, 64 buckets per power of two: quantiles within 1/128 (0.79 %); 2,433
    /// buckets. What the triggers' latency signals use.
    ///
    /// ```
    /// # use degrade_core::histogram::Layout;
    /// assert_eq!(Layout::FINE.len(), 2_433);
    /// assert_eq!(Layout::FINE.relative_error(), 1.0 / 128.0);
    /// ```
    pub const FINE: Layout = Layout {
        precision: 6,
        unit_log2: 0,
    };

    /// A layout of `2^precision` buckets per power of two in units of `2^unit_log2` ns;
    /// `None` unless `precision <= 8` and `precision + unit_log2 < 43` (the layout must have
    /// at least one log-linear octave below the common top of 2^43 ns).
    ///
    /// ```
    /// # use degrade_core::histogram::Layout;
    /// assert!(Layout::new(1, 10).is_some());
    /// assert!(Layout::new(9, 0).is_none());
    /// assert!(Layout::new(4, 40).is_none());
    /// ```
    pub const fn new(precision: u8, unit_log2: u8) -> Option<Layout> {
        if precision > 8 || precision as u32 + unit_log2 as u32 >= TOP_LOG2_NANOS {
            return None;
        }
        Some(Layout {
            precision,
            unit_log2,
        })
    }

    /// Buckets per power of two, as `log2`.
    ///
    /// ```
    /// # use degrade_core::histogram::Layout;
    /// assert_eq!(Layout::FINE.precision(), 6);
    /// ```
    pub const fn precision(&self) -> u8 {
        self.precision
    }

    /// The unit, as `log2` of nanoseconds.
    ///
    /// ```
    /// # use degrade_core::histogram::Layout;
    /// assert_eq!(Layout::new(2, 10).unwrap().unit_log2(), 10);
    /// ```
    pub const fn unit_log2(&self) -> u8 {
        self.unit_log2
    }

    /// The highest exponent (in units) whose octave has buckets of its own.
    const fn max_exp(&self) -> u32 {
        TOP_LOG2_NANOS - 1 - self.unit_log2 as u32
    }

    /// The number of buckets.
    ///
    /// ```
    /// # use degrade_core::histogram::Layout;
    /// // 2 buckets per octave of microseconds: 67 buckets.
    /// assert_eq!(Layout::new(1, 10).unwrap().len(), 67);
    /// ```
    #[allow(clippy::len_without_is_empty)]
    pub const fn len(&self) -> usize {
        let p = self.precision as u32;
        (((self.max_exp() - p + 2) << p) + 1) as usize
    }

    /// The largest relative distance between a value (at or above `2^precision` units) and
    /// the middle of its bucket: `1 / 2^(precision + 1)`. Below, buckets are one unit wide.
    ///
    /// ```
    /// # use degrade_core::histogram::Layout;
    /// assert_eq!(Layout::new(1, 10).unwrap().relative_error(), 0.25);
    /// ```
    pub fn relative_error(&self) -> f64 {
        1.0 / f64::from(1u32 << (self.precision + 1))
    }

    /// The bucket of `latency`.
    ///
    /// ```
    /// # use degrade_core::histogram::Layout;
    /// use std::time::Duration;
    /// let l = Layout::FINE;
    /// assert_eq!(l.bucket(Duration::from_nanos(5)), 5);
    /// assert_eq!(l.bucket(Duration::MAX), l.len() - 1);
    /// ```
    #[inline]
    pub fn bucket(&self, latency: Duration) -> usize {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.bucket_of_nanos(nanos)
    }

    /// The bucket of a value in nanoseconds.
    #[inline]
    pub(crate) fn bucket_of_nanos(&self, nanos: u64) -> usize {
        let v = nanos >> self.unit_log2;
        let p = u32::from(self.precision);
        let e = (63 - (v | 1).leading_zeros()).max(p);
        if e > self.max_exp() {
            return self.len() - 1;
        }
        let shift = e - p;
        ((u64::from(shift) << p) + (v >> shift)) as usize
    }

    /// The bounds `[lo, hi)` of bucket `index`; the last bucket's `hi` is `Duration::MAX`.
    /// An index past the end reads as the last bucket.
    ///
    /// ```
    /// # use degrade_core::histogram::Layout;
    /// use std::time::Duration;
    /// let l = Layout::new(1, 10).unwrap();
    /// assert_eq!(l.bounds(0), (Duration::ZERO, Duration::from_nanos(1024)));
    /// assert_eq!(l.bounds(l.len() - 1).1, Duration::MAX);
    /// ```
    pub fn bounds(&self, index: usize) -> (Duration, Duration) {
        let (lo, hi) = self.bounds_in_units(index.min(self.len() - 1));
        let unit = |v: u64| Duration::from_nanos(v << self.unit_log2);
        match hi {
            Some(hi) => (unit(lo), unit(hi)),
            None => (unit(lo), Duration::MAX),
        }
    }

    /// Bounds in units; `None` for the open top of the last bucket.
    fn bounds_in_units(&self, index: usize) -> (u64, Option<u64>) {
        let p = u32::from(self.precision);
        let i = index as u64;
        if index == self.len() - 1 {
            return (1 << (self.max_exp() + 1), None);
        }
        let sub = 1u64 << p;
        if i < 2 * sub {
            return (i, Some(i + 1));
        }
        let shift = (i >> p) - 1;
        let top = (i & (sub - 1)) + sub;
        (top << shift, Some((top + 1) << shift))
    }

    /// The value reported for bucket `index`: its middle, `lo + (hi − lo) / 2` (its lower
    /// bound for the last).
    ///
    /// ```
    /// # use degrade_core::histogram::Layout;
    /// use std::time::Duration;
    /// let l = Layout::FINE;
    /// assert_eq!(l.middle(l.bucket(Duration::from_nanos(77))), Duration::from_nanos(77));
    /// ```
    pub fn middle(&self, index: usize) -> Duration {
        let (lo, hi) = self.bounds_in_units(index.min(self.len() - 1));
        let v = match hi {
            Some(hi) => lo + (hi - lo) / 2,
            None => lo,
        };
        Duration::from_nanos(v << self.unit_log2)
    }

    /// Whether histograms of `finer` merge exactly into this layout: same unit, and at least
    /// this precision (each bucket of `finer` lies inside one bucket here).
    pub(crate) fn absorbs(&self, finer: &Layout) -> bool {
        self.unit_log2 == finer.unit_log2 && self.precision <= finer.precision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_within_the_stated_error() {
        for (p, u) in [(0, 0), (1, 10), (2, 10), (4, 10), (6, 0), (8, 0)] {
            let l = Layout::new(p, u).unwrap();
            let mut expected_lo = 0;
            for i in 0..l.len() - 1 {
                let (lo, hi) = l.bounds_in_units(i);
                let hi = hi.unwrap();
                assert_eq!(lo, expected_lo, "{l:?} bucket {i}");
                assert!(hi > lo);
                if lo >= 1 << p {
                    assert!((hi - lo) << p <= lo, "{l:?} bucket {i}: [{lo}, {hi})");
                }
                assert_eq!(l.bucket_of_nanos(lo << u), i);
                assert_eq!(l.bucket_of_nanos(((hi - 1) << u) + (1 << u) - 1), i);
                expected_lo = hi;
            }
            assert_eq!(expected_lo << u, 1 << TOP_LOG2_NANOS, "{l:?}");
            assert_eq!(l.bucket_of_nanos(1 << TOP_LOG2_NANOS), l.len() - 1);
            assert_eq!(l.bucket_of_nanos(u64::MAX), l.len() - 1);
        }
    }
}
