//! Durations from configuration at their extremes (0, 1 ns, `Duration::MAX`): the breaker
//! neither panics nor spins, and a window cannot ask for gigabytes (issue 14).

use degrade_breaker::state::{BreakerEvent, BreakerMachine};
use degrade_breaker::{BreakerConfig, BreakerLayer, State, WindowConfig};
use degrade_core::window::WindowSnapshot;
use degrade_core::{ManualClock, Outcome};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use std::time::Duration;
use tokio::time::Instant;

fn opens_on_first_failure(wait: Duration) -> BreakerConfig {
    let mut c = BreakerConfig::default();
    c.window = WindowConfig::Consecutive { failures: 1 };
    c.wait = wait;
    c.backoff.max_wait = wait;
    c
}

#[test]
fn an_open_wait_of_duration_max_does_not_panic() {
    // `now + wait` overflowed `Instant` ("overflow when adding duration to instant").
    let mut config = opens_on_first_failure(Duration::MAX);
    config.backoff.multiplier = 2.0;
    let clock = ManualClock::new();
    let h = BreakerLayer::builder(config)
        .clock(clock.clone())
        .build()
        .unwrap()
        .handle();
    h.try_acquire().unwrap().record(Outcome::Failure);
    assert_eq!(h.state(), State::Open);
    let open = h.try_acquire().unwrap_err();
    assert!(open.retry_after > Duration::from_secs(365 * 86_400));
    // The longest the clock can move: still no panic, and the breaker is still honest.
    clock.advance(Duration::MAX);
    let _ = h.try_acquire();
    assert!(matches!(h.state(), State::Open | State::HalfOpen));
}

#[test]
fn the_machine_opens_until_the_latest_instant_for_a_wait_of_duration_max() {
    let mut m = BreakerMachine::new(opens_on_first_failure(Duration::MAX), 7).unwrap();
    let now = Instant::now();
    let t = m
        .on_event(
            BreakerEvent::Window {
                snapshot: WindowSnapshot::default(),
                consecutive: 1,
            },
            now,
        )
        .unwrap();
    assert_eq!((t.to, t.wait), (State::Open, Some(Duration::MAX)));
    assert_eq!(
        m.deadline(),
        Some(degrade_core::clock::saturating_add(now, Duration::MAX))
    );
}

#[test]
fn a_half_open_limit_of_duration_max_does_not_panic() {
    let mut config = opens_on_first_failure(Duration::from_secs(1));
    config.half_open.max_duration = Some(Duration::MAX);
    let clock = ManualClock::new();
    let h = BreakerLayer::builder(config)
        .clock(clock.clone())
        .build()
        .unwrap()
        .handle();
    h.try_acquire().unwrap().record(Outcome::Failure);
    clock.advance(Duration::from_secs(1));
    assert_eq!(h.state(), State::HalfOpen);
    let probe = h.try_acquire().unwrap();
    assert!(probe.is_probe());
}

#[test]
fn a_window_of_billions_of_slots_is_refused_before_it_is_allocated() {
    let mut c = BreakerConfig::default();
    c.window = WindowConfig::Count { size: u32::MAX };
    c.minimum_calls = 1;
    assert_eq!(c.validate().unwrap_err().field(), "window.size");
    c.window = WindowConfig::Count {
        size: degrade_core::window::MAX_COUNT_SIZE,
    };
    assert!(c.validate().is_ok());
    c.window = WindowConfig::Time {
        span: Duration::from_secs(u64::MAX / 1_000_000_000),
        buckets: u32::MAX,
    };
    assert_eq!(c.validate().unwrap_err().field(), "window.buckets");
    assert_eq!(BreakerLayer::new(c).unwrap_err().field(), "window.buckets");
}

/// Durations a configuration may hold, extremes first.
fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_nanos(1)),
        Just(Duration::from_millis(1)),
        Just(Duration::from_secs(1)),
        Just(Duration::MAX),
        Just(Duration::new(u64::MAX, 0)),
        (0u64..=u64::MAX, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (1u64..100_000_000_000).prop_map(Duration::from_nanos),
    ]
}

fn window() -> impl Strategy<Value = WindowConfig> {
    prop_oneof![
        (0u32..5).prop_map(|failures| WindowConfig::Consecutive { failures }),
        prop_oneof![Just(0u32), Just(u32::MAX), 1u32..50]
            .prop_map(|size| WindowConfig::Count { size }),
        (
            duration(),
            prop_oneof![Just(0u32), Just(u32::MAX), 1u32..50]
        )
            .prop_map(|(span, buckets)| WindowConfig::Time { span, buckets }),
    ]
}

fn config() -> impl Strategy<Value = BreakerConfig> {
    (
        window(),
        (
            duration(),
            duration(),
            prop::option::of(duration()),
            prop::option::of(duration()),
        ),
        prop_oneof![
            Just(1.0f64),
            Just(2.0),
            Just(1e300),
            Just(f64::MAX),
            1.0f64..10.0
        ],
        prop_oneof![Just(0.0f64), 0.0f64..1.0],
        (1u32..20, 1u32..4),
    )
        .prop_map(
            |(
                window,
                (wait, max_wait, slow, half_open),
                multiplier,
                jitter,
                (minimum, successes),
            )| {
                let mut c = BreakerConfig::default();
                c.window = window;
                c.wait = wait;
                c.backoff.max_wait = max_wait.max(wait);
                c.backoff.multiplier = multiplier;
                c.backoff.jitter = jitter;
                c.slow_call_duration = slow;
                c.half_open.max_duration = half_open;
                c.half_open.successes = successes;
                c.minimum_calls = minimum;
                c.failure_rate = 0.5;
                c
            },
        )
}

/// One step: how far the clock moves before the call, how far during it, and its outcome.
fn steps() -> impl Strategy<Value = Vec<(Duration, Duration, u8)>> {
    prop::collection::vec((duration(), duration(), 0u8..4), 1..40)
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
    fn a_breaker_with_extreme_durations_never_panics_and_counts_every_call(
        config in config(),
        steps in steps(),
    ) {
        let clock = ManualClock::new();
        let Ok(layer) = BreakerLayer::builder(config).clock(clock.clone()).build() else {
            return Ok(());
        };
        let h = layer.handle();
        let mut offered = 0;
        for (before, during, o) in steps {
            clock.advance(before);
            offered += 1;
            if let Ok(permit) = h.try_acquire() {
                clock.advance(during);
                match o {
                    0 => permit.record(Outcome::Success),
                    1 => permit.record(Outcome::Failure),
                    2 => permit.record(Outcome::Ignored),
                    _ => drop(permit),
                }
            }
            let _ = h.state();
        }
        let s = h.snapshot();
        prop_assert_eq!(s.offered(), offered);
        prop_assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn every_backoff_wait_is_within_the_configured_bounds(
        config in config(),
        openings in prop_oneof![Just(0u32), Just(1), Just(u32::MAX), any::<u32>()],
        nonce in any::<u64>(),
    ) {
        let Ok(m) = BreakerMachine::new(config.clone(), 3) else {
            return Ok(());
        };
        let w = m.wait_for(openings, nonce);
        prop_assert!(w <= config.backoff.max_wait);
        prop_assert!(!w.is_zero());
    }
}
