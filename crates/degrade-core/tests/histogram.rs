//! The family's latency histogram: every layout's buckets tile the range with the stated
//! relative error; quantiles are within that error of the exact nearest-rank quantile; merges
//! (same layout, or a finer one into a coarser one) and differences keep every count; the
//! atomic side loses no record across threads and records without allocating.

use degrade_core::histogram::{AtomicHistogram, Histogram, Layout};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use std::time::Duration;

fn layouts() -> impl Strategy<Value = Layout> {
    (0u8..=8, 0u8..=20).prop_filter_map("valid layout", |(p, u)| Layout::new(p, u))
}

/// Latencies in nanoseconds over many orders of magnitude, up to past the top bucket.
fn nanos() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..2_000,
        2_000u64..10_000_000,
        10_000_000u64..20_000_000_000_000,
        any::<u64>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/histogram.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_value_lies_in_its_bucket_and_the_middle_is_within_the_stated_error(
        layout in layouts(),
        v in nanos(),
    ) {
        let d = Duration::from_nanos(v);
        let b = layout.bucket(d);
        prop_assert!(b < layout.len());
        let (lo, hi) = layout.bounds(b);
        prop_assert!(lo <= d && d < hi, "{d:?} not in [{lo:?}, {hi:?})");
        let unit = 1u64 << layout.unit_log2();
        let top = 1u64 << 43;
        if v < top {
            let mid = layout.middle(b).as_nanos() as f64;
            let err = (mid - v as f64).abs();
            // Exact to the unit below 2^precision units, relative error above.
            let bound = (v as f64 * layout.relative_error()).max(unit as f64);
            prop_assert!(err <= bound, "{layout:?} {v}: middle {mid}, error {err} > {bound}");
        } else {
            prop_assert_eq!(b, layout.len() - 1);
        }
    }

    #[test]
    fn quantiles_are_within_the_stated_error_of_the_exact_ones(
        layout in layouts(),
        values in prop::collection::vec(1_000u64..10_000_000_000, 1..500),
        q in 0.0f64..=1.0,
    ) {
        let mut h = Histogram::new(layout);
        for &v in &values {
            h.record(Duration::from_nanos(v));
        }
        let mut sorted = values.clone();
        sorted.sort_unstable();
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        let exact = sorted[rank - 1] as f64;
        let got = h.quantile(q).unwrap().as_nanos() as f64;
        let bound = (exact * layout.relative_error()).max((1u64 << layout.unit_log2()) as f64);
        prop_assert!((got - exact).abs() <= bound, "q{q}: {got} vs {exact}");
        prop_assert!(h.quantile_upper(q).unwrap().as_nanos() as f64 > exact);
    }

    #[test]
    fn merges_and_differences_keep_every_count(
        fine_p in 0u8..=8,
        coarse_p in 0u8..=8,
        unit in 0u8..=12,
        a in prop::collection::vec(nanos(), 0..200),
        b in prop::collection::vec(nanos(), 0..200),
    ) {
        let (fine_p, coarse_p) = (fine_p.max(coarse_p), fine_p.min(coarse_p));
        let fine = Layout::new(fine_p, unit).unwrap();
        let coarse = Layout::new(coarse_p, unit).unwrap();
        let (mut ha, mut hb, mut direct) =
            (Histogram::new(fine), Histogram::new(fine), Histogram::new(coarse));
        for &v in &a {
            ha.record(Duration::from_nanos(v));
            direct.record(Duration::from_nanos(v));
        }
        for &v in &b {
            hb.record(Duration::from_nanos(v));
            direct.record(Duration::from_nanos(v));
        }
        let mut sum = ha.clone();
        prop_assert!(sum.merge(&hb));
        prop_assert_eq!(sum.count(), (a.len() + b.len()) as u64);
        prop_assert_eq!(&sum.since(&hb), &ha);
        // A finer histogram merged into a coarser one lands exactly where recording there
        // directly would have put each value.
        let mut coarse_sum = Histogram::new(coarse);
        prop_assert!(coarse_sum.merge(&sum));
        prop_assert_eq!(&coarse_sum, &direct);
        // Never the other way round.
        if coarse_p < fine_p {
            prop_assert!(!ha.merge(&direct));
        }
    }
}

#[test]
fn concurrent_records_are_all_counted() {
    let h = AtomicHistogram::new(Layout::FINE, 4);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let h = &h;
            s.spawn(move || {
                for i in 0..10_000u64 {
                    h.record(Duration::from_nanos(t * 1_000 + i));
                }
            });
        }
    });
    let read = h.snapshot();
    assert_eq!(read.count(), 40_000);
    assert_eq!(h.count(), 40_000);
    let mut again = Histogram::new(Layout::new(1, 10).unwrap());
    h.read_into(&mut again);
    assert_eq!(again, read, "a read takes the recording side's layout");
}

/// A per-thread histogram's rows are written without locked instructions by their one owner;
/// threads come and go (more at once than there are owned rows, so some share the overflow
/// row) and no recording is lost.
#[test]
fn per_thread_histogram_loses_nothing_as_threads_come_and_go() {
    let h = AtomicHistogram::per_thread(Layout::FINE);
    let threads = 40;
    for _wave in 0..3 {
        let barrier = std::sync::Barrier::new(threads);
        std::thread::scope(|s| {
            for t in 0..threads {
                let (h, barrier) = (&h, &barrier);
                s.spawn(move || {
                    barrier.wait(); // all alive at once: some must share the overflow row
                    for i in 0..1_000u64 {
                        h.record(Duration::from_micros(1 + (i + t as u64) % 500));
                    }
                });
            }
        });
    }
    assert_eq!(h.count(), 3 * 40 * 1_000);
    assert_eq!(h.snapshot().count(), 3 * 40 * 1_000);
}
