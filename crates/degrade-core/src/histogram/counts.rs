//! [`Histogram`]: counts per bucket of a [`Layout`], read from an [`AtomicHistogram`] or built
//! by hand; merged, subtracted and queried for quantiles off the request path.
//!
//! [`AtomicHistogram`]: super::AtomicHistogram

use super::Layout;
use std::fmt;
use std::time::Duration;

/// Latency counts per bucket of a [`Layout`].
///
/// ```
/// use degrade_core::histogram::{Histogram, Layout};
/// use std::time::Duration;
///
/// let mut before = Histogram::new(Layout::FINE);
/// before.record(Duration::from_millis(5));
/// let mut now = before.clone();
/// now.record(Duration::from_millis(80));
/// // What happened in between: one call of 80 ms.
/// let window = now.since(&before);
/// assert_eq!(window.count(), 1);
/// assert!(window.quantile(0.5).unwrap() > Duration::from_millis(79));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Histogram {
    layout: Layout,
    counts: Box<[u64]>,
}

impl Histogram {
    /// An empty histogram.
    ///
    /// ```
    /// # use degrade_core::histogram::{Histogram, Layout};
    /// let h = Histogram::new(Layout::FINE);
    /// assert_eq!((h.count(), h.buckets().len()), (0, Layout::FINE.len()));
    /// ```
    pub fn new(layout: Layout) -> Self {
        Self {
            layout,
            counts: vec![0; layout.len()].into_boxed_slice(),
        }
    }

    /// The bucket layout.
    ///
    /// ```
    /// # use degrade_core::histogram::{Histogram, Layout};
    /// assert_eq!(Histogram::new(Layout::FINE).layout(), Layout::FINE);
    /// ```
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Adds one latency.
    ///
    /// ```
    /// # use degrade_core::histogram::{Histogram, Layout};
    /// use std::time::Duration;
    /// let mut h = Histogram::new(Layout::FINE);
    /// h.record(Duration::from_millis(3));
    /// assert_eq!(h.buckets()[Layout::FINE.bucket(Duration::from_millis(3))], 1);
    /// ```
    #[inline]
    pub fn record(&mut self, latency: Duration) {
        self.counts[self.layout.bucket(latency)] += 1;
    }

    /// Adds `n` latencies to bucket `index` (ignored when out of range).
    ///
    /// ```
    /// # use degrade_core::histogram::{Histogram, Layout};
    /// let mut h = Histogram::new(Layout::FINE);
    /// h.add(20, 5);
    /// h.add(usize::MAX, 5);
    /// assert_eq!((h.buckets()[20], h.count()), (5, 5));
    /// ```
    pub fn add(&mut self, index: usize, n: u64) {
        if let Some(b) = self.counts.get_mut(index) {
            *b = b.saturating_add(n);
        }
    }

    /// Adds every count of `other`, which must have this layout or a finer one of the same
    /// unit (then each of its buckets goes to the bucket here that contains it: exact).
    /// Returns `false`, adding nothing, for any other layout.
    ///
    /// ```
    /// # use degrade_core::histogram::{Histogram, Layout};
    /// use std::time::Duration;
    /// let fine = Layout::new(4, 10).unwrap();
    /// let coarse = Layout::new(1, 10).unwrap();
    /// let mut f = Histogram::new(fine);
    /// f.record(Duration::from_millis(7));
    /// let mut c = Histogram::new(coarse);
    /// assert!(c.merge(&f));
    /// assert_eq!(c.buckets()[coarse.bucket(Duration::from_millis(7))], 1);
    /// assert!(!f.merge(&c));
    /// ```
    pub fn merge(&mut self, other: &Histogram) -> bool {
        if other.layout == self.layout {
            for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
                *a = a.saturating_add(*b);
            }
            return true;
        }
        if !self.layout.absorbs(&other.layout) {
            return false;
        }
        for (i, &n) in other.counts.iter().enumerate() {
            if n > 0 {
                let (lo, _) = other.layout.bounds_in_units(i);
                let to = self.layout.bucket_of_nanos(lo << self.layout.unit_log2);
                self.counts[to] = self.counts[to].saturating_add(n);
            }
        }
        true
    }

    /// The counts per bucket.
    ///
    /// ```
    /// # use degrade_core::histogram::{Histogram, Layout};
    /// assert!(Histogram::new(Layout::FINE).buckets().iter().all(|&n| n == 0));
    /// ```
    pub fn buckets(&self) -> &[u64] {
        &self.counts
    }

    /// The number of latencies recorded.
    ///
    /// ```
    /// # use degrade_core::histogram::{Histogram, Layout};
    /// let mut h = Histogram::new(Layout::FINE);
    /// h.add(1, 2);
    /// h.add(9, 3);
    /// assert_eq!(h.count(), 5);
    /// ```
    pub fn count(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, &b| a.saturating_add(b))
    }

    /// The bucket holding the nearest-rank quantile `q` (the first bucket whose cumulative
    /// count reaches `⌈q·count⌉`, at least 1), or `None` when empty.
    ///
    /// ```
    /// # use degrade_core::histogram::{Histogram, Layout};
    /// let mut h = Histogram::new(Layout::FINE);
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
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        for (i, &n) in self.counts.iter().enumerate() {
            seen = seen.saturating_add(n);
            if seen >= rank {
                return Some(i);
            }
        }
        Some(self.counts.len() - 1)
    }

    /// The nearest-rank quantile `q`, reported as the middle of its bucket: within
    /// [`Layout::relative_error`] of the exact quantile of the recorded values.
    ///
    /// ```
    /// # use degrade_core::histogram::{Histogram, Layout};
    /// use std::time::Duration;
    /// let mut h = Histogram::new(Layout::FINE);
    /// assert_eq!(h.quantile(0.5), None);
    /// h.record(Duration::from_micros(250));
    /// let p50 = h.quantile(0.5).unwrap().as_secs_f64();
    /// assert!((p50 - 250e-6).abs() <= 250e-6 / 128.0);
    /// ```
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        self.quantile_bucket(q).map(|i| self.layout.middle(i))
    }

    /// The exclusive upper bound of the bucket holding quantile `q`: a value the exact
    /// quantile is below (`Duration::MAX` in the last bucket).
    ///
    /// ```
    /// # use degrade_core::histogram::{Histogram, Layout};
    /// use std::time::Duration;
    /// let mut h = Histogram::new(Layout::FINE);
    /// h.record(Duration::from_millis(100));
    /// assert!(h.quantile_upper(0.99).unwrap() > Duration::from_millis(100));
    /// ```
    pub fn quantile_upper(&self, q: f64) -> Option<Duration> {
        self.quantile_bucket(q).map(|i| self.layout.bounds(i).1)
    }

    /// Latencies in buckets strictly above `index`.
    ///
    /// ```
    /// # use degrade_core::histogram::{Histogram, Layout};
    /// let mut h = Histogram::new(Layout::FINE);
    /// h.add(3, 5);
    /// h.add(9, 2);
    /// assert_eq!(h.count_above(3), 2);
    /// ```
    pub fn count_above(&self, index: usize) -> u64 {
        self.counts
            .iter()
            .skip(index.saturating_add(1))
            .fold(0u64, |a, &b| a.saturating_add(b))
    }

    /// `self − earlier`, bucket by bucket (saturating): the counts between two reads of a
    /// cumulative histogram. A histogram of another layout subtracts nothing.
    ///
    /// ```
    /// # use degrade_core::histogram::{Histogram, Layout};
    /// let mut a = Histogram::new(Layout::FINE);
    /// a.add(1, 3);
    /// let mut b = Histogram::new(Layout::FINE);
    /// b.add(1, 1);
    /// assert_eq!(a.since(&b).count(), 2);
    /// ```
    #[must_use]
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let mut out = self.clone();
        out.subtract(earlier);
        out
    }

    /// `self −= other`, bucket by bucket (saturating), without allocating. A histogram of
    /// another layout subtracts nothing.
    ///
    /// ```
    /// # use degrade_core::histogram::{Histogram, Layout};
    /// let mut a = Histogram::new(Layout::FINE);
    /// a.add(1, 3);
    /// let b = a.clone();
    /// a.subtract(&b);
    /// assert_eq!(a.count(), 0);
    /// ```
    pub fn subtract(&mut self, other: &Histogram) {
        if other.layout != self.layout {
            return;
        }
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a = a.saturating_sub(*b);
        }
    }

    /// Sets every count to zero.
    pub(crate) fn clear(&mut self) {
        self.counts.iter_mut().for_each(|n| *n = 0);
    }

    /// The counts, writable (for the atomic side's reads).
    pub(crate) fn counts_mut(&mut self) -> &mut [u64] {
        &mut self.counts
    }
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("layout", &self.layout)
            .field("count", &self.count())
            .field("p50", &self.quantile(0.5))
            .field("p99", &self.quantile(0.99))
            .finish()
    }
}
