//! [`AtomicHistogram`]: the recording side, one relaxed `fetch_add` per latency.

use super::{Histogram, Layout};
use crossbeam_utils::CachePadded;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A histogram that many threads record into at once: no lock, no allocation, no clock.
///
/// Recording is one relaxed `fetch_add` on the latency's bucket. With `rows > 1` the buckets
/// are repeated per row so that threads on different CPUs do not fight over one cache line: a
/// thread writes the row of its [`ShardedCounter`](crate::counter::ShardedCounter) slot (live
/// threads hold distinct slots), and a read sums the rows. Counts only ever
/// rise: a reader keeps earlier reads and subtracts ([`Histogram::since`]) for a window, so
/// nothing on the request path ever clears or rotates a bucket.
///
/// ```
/// use degrade_core::histogram::{AtomicHistogram, Histogram, Layout};
/// use std::time::Duration;
///
/// let h = AtomicHistogram::new(Layout::FINE, 4);
/// std::thread::scope(|s| {
///     for _ in 0..4 {
///         s.spawn(|| (0..100).for_each(|_| h.record(Duration::from_millis(2))));
///     }
/// });
/// let mut read = Histogram::new(Layout::FINE);
/// h.read_into(&mut read);
/// assert_eq!(read.count(), 400);
/// ```
pub struct AtomicHistogram {
    layout: Layout,
    /// `rows` rows of `layout.len()` buckets, each row on its own cache lines.
    rows: Box<[CachePadded<Box<[AtomicU64]>>]>,
}

impl AtomicHistogram {
    /// An empty histogram with `rows` rows (rounded up to a power of two, at least 1, at
    /// most 64): one for a histogram of which there are many (the canary keeps one per arm and
    /// key group), about one per CPU for a single hot one.
    ///
    /// ```
    /// # use degrade_core::histogram::{AtomicHistogram, Layout};
    /// let h = AtomicHistogram::new(Layout::FINE, 3);
    /// assert_eq!(h.rows(), 4);
    /// ```
    pub fn new(layout: Layout, rows: usize) -> Self {
        let rows = rows.clamp(1, 64).next_power_of_two();
        Self {
            layout,
            rows: (0..rows)
                .map(|_| CachePadded::new((0..layout.len()).map(|_| AtomicU64::new(0)).collect()))
                .collect(),
        }
    }

    /// One row per available CPU (at most 16): for a histogram every request records into.
    ///
    /// ```
    /// # use degrade_core::histogram::{AtomicHistogram, Layout};
    /// let h = AtomicHistogram::per_cpu(Layout::FINE);
    /// assert!(h.rows() >= 1 && h.rows() <= 16);
    /// ```
    pub fn per_cpu(layout: Layout) -> Self {
        let cpus = std::thread::available_parallelism().map_or(4, |n| n.get());
        Self::new(layout, cpus.clamp(1, 16))
    }

    /// One row per thread (up to 32 threads; more share one row): for a histogram every
    /// request records into. A thread writes its own row with a plain load and store — no
    /// locked instruction, no cache line shared with another writer — using the slots of
    /// [`ShardedCounter`](crate::counter::ShardedCounter) (a row changes hands only through
    /// their mutex when a thread exits, so no count is lost). Memory: 33 rows of the layout.
    ///
    /// ```
    /// # use degrade_core::histogram::{AtomicHistogram, Histogram, Layout};
    /// use std::time::Duration;
    /// let h = AtomicHistogram::per_thread(Layout::FINE);
    /// std::thread::scope(|s| {
    ///     for _ in 0..4 {
    ///         s.spawn(|| (0..100).for_each(|_| h.record(Duration::from_millis(2))));
    ///     }
    /// });
    /// assert_eq!(h.count(), 400);
    /// ```
    pub fn per_thread(layout: Layout) -> Self {
        Self {
            layout,
            rows: (0..crate::counter::SLOTS)
                .map(|_| CachePadded::new((0..layout.len()).map(|_| AtomicU64::new(0)).collect()))
                .collect(),
        }
    }

    /// The bucket layout.
    ///
    /// ```
    /// # use degrade_core::histogram::{AtomicHistogram, Layout};
    /// assert_eq!(AtomicHistogram::new(Layout::FINE, 1).layout(), Layout::FINE);
    /// ```
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The number of rows.
    ///
    /// ```
    /// # use degrade_core::histogram::{AtomicHistogram, Layout};
    /// assert_eq!(AtomicHistogram::new(Layout::FINE, 1).rows(), 1);
    /// ```
    pub fn rows(&self) -> usize {
        self.rows.len()
    }

    /// Records one latency: a relaxed `fetch_add`, or a plain load and store on a
    /// [`per_thread`](Self::per_thread) histogram.
    ///
    /// ```
    /// # use degrade_core::histogram::{AtomicHistogram, Layout};
    /// use std::time::Duration;
    /// let h = AtomicHistogram::new(Layout::FINE, 1);
    /// h.record(Duration::from_micros(40));
    /// assert_eq!(h.count(), 1);
    /// ```
    #[inline]
    pub fn record(&self, latency: Duration) {
        let bucket = self.layout.bucket(latency);
        let rows = self.rows.len();
        if rows == 1 {
            self.rows[0][bucket].fetch_add(1, Ordering::Relaxed);
            return;
        }
        let slot = crate::counter::slot_index();
        if rows == crate::counter::SLOTS {
            // One row per slot (`per_thread`): an owned slot's row has this thread as its only
            // writer.
            let Some(cell) = self.rows.get(slot).and_then(|row| row.get(bucket)) else {
                return;
            };
            if slot < crate::counter::OWNED_SLOTS {
                cell.store(
                    cell.load(Ordering::Relaxed).wrapping_add(1),
                    Ordering::Relaxed,
                );
            } else {
                cell.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        self.rows[slot & (rows - 1)][bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// The latencies recorded so far.
    ///
    /// ```
    /// # use degrade_core::histogram::{AtomicHistogram, Layout};
    /// assert_eq!(AtomicHistogram::new(Layout::FINE, 2).count(), 0);
    /// ```
    pub fn count(&self) -> u64 {
        self.rows
            .iter()
            .flat_map(|r| r.iter())
            .fold(0u64, |a, b| a.wrapping_add(b.load(Ordering::Relaxed)))
    }

    /// Copies the counts into `into` (replacing its counts), without allocating. `into` takes
    /// this histogram's layout if it had another (then it allocates once).
    ///
    /// ```
    /// # use degrade_core::histogram::{AtomicHistogram, Histogram, Layout};
    /// use std::time::Duration;
    /// let h = AtomicHistogram::new(Layout::FINE, 2);
    /// h.record(Duration::from_millis(1));
    /// let mut read = Histogram::new(Layout::FINE);
    /// h.read_into(&mut read);
    /// h.read_into(&mut read);
    /// assert_eq!(read.count(), 1);
    /// ```
    pub fn read_into(&self, into: &mut Histogram) {
        if into.layout() != self.layout {
            *into = Histogram::new(self.layout);
        } else {
            into.clear();
        }
        let counts = into.counts_mut();
        for row in &*self.rows {
            for (acc, b) in counts.iter_mut().zip(row.iter()) {
                *acc = acc.wrapping_add(b.load(Ordering::Relaxed));
            }
        }
    }

    /// Sets every bucket back to zero. Latencies recorded meanwhile on other threads may be
    /// lost: for a histogram nobody records into any more (a recycled one, see
    /// [`crate::recycle`]).
    ///
    /// ```
    /// # use degrade_core::histogram::{AtomicHistogram, Layout};
    /// use std::time::Duration;
    /// let h = AtomicHistogram::new(Layout::FINE, 2);
    /// h.record(Duration::from_millis(3));
    /// h.reset();
    /// assert_eq!(h.count(), 0);
    /// ```
    pub fn reset(&self) {
        for bucket in self.rows.iter().flat_map(|row| row.iter()) {
            bucket.store(0, Ordering::Relaxed);
        }
    }

    /// A fresh read of the counts.
    ///
    /// ```
    /// # use degrade_core::histogram::{AtomicHistogram, Layout};
    /// use std::time::Duration;
    /// let h = AtomicHistogram::new(Layout::FINE, 1);
    /// h.record(Duration::from_millis(9));
    /// assert_eq!(h.snapshot().count(), 1);
    /// ```
    pub fn snapshot(&self) -> Histogram {
        let mut h = Histogram::new(self.layout);
        self.read_into(&mut h);
        h
    }
}

impl fmt::Debug for AtomicHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AtomicHistogram")
            .field("layout", &self.layout)
            .field("rows", &self.rows.len())
            .field("count", &self.count())
            .finish()
    }
}
