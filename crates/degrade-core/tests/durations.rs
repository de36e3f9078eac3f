//! Durations from configuration and from peers, at their extremes (0, 1 ns, `Duration::MAX`):
//! nothing panics, spins or overflows (issue 14).

use degrade_core::clock::saturating_add;
use degrade_core::ladder::{Ladder, LadderConfig, Reading};
use degrade_core::rejection::{self, retry_after_secs};
use degrade_core::window::TimeWindow;
use degrade_core::{Level, Outcome, Priority, Shed};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use std::num::NonZeroU32;
use std::time::Duration;
use tokio::time::Instant;

/// The durations a configuration or a peer may produce, extremes first.
fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_nanos(1)),
        Just(Duration::MAX),
        Just(Duration::new(u64::MAX, 0)),
        Just(Duration::from_secs(u64::MAX / 2)),
        Just(Duration::from_secs(1)),
        (0u64..=u64::MAX, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (0u64..10_000_000_000).prop_map(Duration::from_nanos),
    ]
}

#[test]
fn a_premature_recovery_with_an_enormous_dwell_saturates_the_backoff() {
    // `dwell.mul_f64(dwell_backoff)` panicked once the product passed `Duration::MAX`.
    let dwell = Duration::from_secs(u64::MAX / 50);
    let config = LadderConfig {
        escalate_after: 1,
        recover_after: 1,
        dwell,
        dwell_backoff: 100.0,
        max_dwell: Some(Duration::MAX),
        ..Default::default()
    };
    let t0 = Instant::now();
    let mut ladder = Ladder::new(config, t0).unwrap();
    let high = [Reading::new("cpu", 0.75)];
    let low = [Reading::new("cpu", 0.1)];
    assert_eq!(ladder.observe(&high, t0).unwrap().to, Level::Light);
    let t1 = t0 + dwell;
    assert_eq!(ladder.observe(&low, t1).unwrap().to, Level::Normal);
    // Escalating again within the dwell that followed: the step down was premature.
    let t2 = t1 + Duration::from_secs(1);
    assert_eq!(ladder.observe(&high, t2).unwrap().to, Level::Light);
    assert_eq!(ladder.current_dwell(), Duration::MAX);
}

#[test]
fn a_backoff_never_shortens_a_dwell_of_many_years() {
    // Through `f64` seconds, 9.1e15 s and 123 ns came back a few hundred nanoseconds short:
    // a backoff of 1.0 shortened the dwell (found by `a_ladder_with_extreme_durations_never_panics`).
    let dwell = Duration::new(9_100_000_000_000_000, 123);
    let config = LadderConfig {
        escalate_after: 1,
        recover_after: 1,
        dwell,
        dwell_backoff: 1.0,
        ..Default::default()
    };
    let t0 = Instant::now();
    let mut ladder = Ladder::new(config, t0).unwrap();
    let high = [Reading::new("cpu", 0.75)];
    let low = [Reading::new("cpu", 0.1)];
    assert_eq!(ladder.observe(&high, t0).unwrap().to, Level::Light);
    let t1 = t0 + dwell;
    assert_eq!(ladder.observe(&low, t1).unwrap().to, Level::Normal);
    let t2 = t1 + Duration::from_secs(1);
    assert_eq!(ladder.observe(&high, t2).unwrap().to, Level::Light);
    assert_eq!(ladder.current_dwell(), dwell);
}

#[test]
fn saturating_add_of_the_longest_duration_is_the_latest_instant() {
    let now = Instant::now();
    let latest = saturating_add(now, Duration::MAX);
    assert!(latest > now);
    assert_eq!(saturating_add(latest, Duration::from_nanos(1)), latest);
    assert_eq!(saturating_add(latest, Duration::MAX), latest);
    assert_eq!(saturating_add(now, Duration::ZERO), now);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/durations.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn saturating_add_is_the_sum_when_it_fits_and_never_goes_back(d in duration(), e in duration()) {
        let now = Instant::now();
        let t = saturating_add(now, d);
        prop_assert!(t >= now);
        if let Some(exact) = now.checked_add(d) {
            prop_assert_eq!(t, exact);
        }
        // Monotone in the duration.
        let (lo, hi) = if d <= e { (d, e) } else { (e, d) };
        prop_assert!(saturating_add(now, lo) <= saturating_add(now, hi));
    }

    #[test]
    fn a_ladder_with_extreme_durations_never_panics(
        dwell in duration(),
        max_dwell in prop::option::of(duration()),
        cooldown in duration(),
        backoff in prop_oneof![Just(1.0), Just(100.0), 1.0f64..=100.0],
        steps in prop::collection::vec((duration(), 0.0f64..=1.0), 1..40),
    ) {
        let config = LadderConfig {
            escalate_after: 1,
            recover_after: 1,
            dwell,
            dwell_backoff: backoff,
            max_dwell,
            escalate_cooldown: cooldown,
            ..Default::default()
        };
        let t0 = Instant::now();
        let Ok(mut ladder) = Ladder::new(config, t0) else {
            return Ok(());
        };
        let mut now = t0;
        for (dt, p) in steps {
            now = saturating_add(now, dt);
            let before = ladder.level();
            if let Some(t) = ladder.observe(&[Reading::new("s", p)], now) {
                prop_assert_eq!(t.from, before);
            }
            prop_assert!(ladder.current_dwell() >= dwell.min(ladder.config().effective_max_dwell()));
        }
    }

    #[test]
    fn a_time_window_with_extreme_spans_and_times_never_panics(
        span in duration(),
        buckets in prop_oneof![Just(1u32), Just(u32::MAX), 1u32..20_000],
        steps in prop::collection::vec((duration(), 0u8..4), 1..30),
    ) {
        let t0 = Instant::now();
        let Ok(w) = TimeWindow::new(span, NonZeroU32::new(buckets).unwrap(), t0) else {
            return Ok(());
        };
        let mut now = t0;
        for (dt, o) in steps {
            now = saturating_add(now, dt);
            let outcome = [Outcome::Success, Outcome::Failure, Outcome::Slow, Outcome::Ignored]
                [usize::from(o)];
            w.record(outcome, now);
            let s = w.snapshot(now);
            prop_assert!(s.failures + s.slow <= s.calls);
        }
    }

    #[test]
    fn every_retry_after_maps_to_http_and_grpc_without_panicking(d in duration()) {
        let secs = retry_after_secs(d);
        prop_assert!(u128::from(secs) * 1_000_000_000 >= d.as_nanos() || secs == u64::MAX);
        let shed = Shed::new(Level::Heavy, Priority::Low, d);
        let res: http::Response<()> = rejection::http::response(&shed);
        prop_assert_eq!(res.headers()["retry-after"].to_str().unwrap(), secs.to_string());
        let status = rejection::grpc::status(&shed);
        let back = rejection::grpc::retry_delay(&status).unwrap();
        prop_assert_eq!(back, d.min(rejection::grpc::MAX_RETRY_DELAY));
    }
}
