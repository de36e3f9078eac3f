//! Property tests: every quantile the histogram reports is within its stated error of the exact
//! nearest-rank quantile, for any set of latencies; every scale rises, stays in `[0, 1]`, and
//! lands exactly on the ladder's anchors at its raw thresholds.

use degrade_core::{BoxError, Clock, ManualClock};
use degrade_triggers::observe::{LatencyConfig, LatencyStat};
use degrade_triggers::{LevelThresholds, ObserveLayer, Scale, Signal};
use futures_util::FutureExt;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use std::time::Duration;
use tower::{Layer, Service};

/// Latencies in nanoseconds, spread over many orders of magnitude.
fn latencies() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(
        prop_oneof![0u64..200, 200u64..1_000_000, 1_000_000u64..5_000_000_000],
        1..2_000,
    )
}

fn thresholds() -> impl Strategy<Value = LevelThresholds> {
    (0.001f64..1e6, 0.01f64..10.0, 0.01f64..10.0, 0.01f64..10.0).prop_map(|(l, a, b, c)| {
        LevelThresholds::new(
            l,
            l * (1.0 + a),
            l * (1.0 + a) * (1.0 + b),
            l * (1.0 + a) * (1.0 + b) * (1.0 + c),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        // Integration tests have no lib.rs beside them for proptest's default lookup.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/proptests.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn quantiles_are_within_one_128th_of_the_exact_value(values in latencies(), q in 0.0f64..=1.0) {
        let clock = ManualClock::new();
        let layer = ObserveLayer::builder().clock(clock.clone()).build().unwrap();
        let mut svc = layer.layer(tower::service_fn(|()| async { Ok::<_, BoxError>(()) }));
        for v in &values {
            let fut = svc.call(());
            clock.advance(Duration::from_nanos(*v));
            fut.now_or_never().unwrap().unwrap();
        }
        let mut sorted = values.clone();
        sorted.sort_unstable();

        // Through a latency signal whose window covers every call (p50 or p99 by `q`).
        let stat_q = if q < 0.5 { (LatencyStat::P50, 0.5) } else { (LatencyStat::P99, 0.99) };
        let rank = ((stat_q.1 * sorted.len() as f64).ceil() as usize).max(1);
        let exact_stat = sorted[rank - 1] as f64;
        let mut signal = layer.latency(LatencyConfig {
            stat: stat_q.0,
            min_calls: 1,
            ..Default::default()
        }).unwrap();
        let got_ms = signal.sample(clock.now()).unwrap().unwrap().value;
        let got = got_ms * 1e6;
        prop_assert!((got - exact_stat).abs() <= exact_stat / 128.0 + 1e-6,
            "{:?}: got {got} ns, exact {exact_stat} ns", stat_q.0);

        // And p50 / p99 from the snapshot.
        let snap = layer.snapshot();
        for (qq, est) in [(0.5, snap.p50.unwrap()), (0.99, snap.p99.unwrap())] {
            let rank = ((qq * sorted.len() as f64).ceil() as usize).max(1);
            let want = sorted[rank - 1] as f64;
            let est = est.as_nanos() as f64;
            prop_assert!((est - want).abs() <= want / 128.0 + 1e-6, "q{qq}: {est} vs {want}");
        }
    }

    #[test]
    fn scales_rise_stay_in_range_and_hit_the_anchors(t in thresholds(), raws in prop::collection::vec(0.0f64..1e8, 1..50)) {
        let s = Scale::new(t).unwrap();
        for (raw, anchor) in t.as_array().into_iter().zip([0.70, 0.80, 0.90, 0.95]) {
            prop_assert_eq!(s.pressure(raw), anchor);
        }
        let mut sorted = raws.clone();
        sorted.sort_by(f64::total_cmp);
        let mut prev = 0.0;
        for r in sorted {
            let p = s.pressure(r);
            prop_assert!((0.0..=1.0).contains(&p));
            prop_assert!(p >= prev, "{r} → {p} < {prev}");
            prev = p;
        }
    }
}
