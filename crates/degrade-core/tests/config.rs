//! One test per configuration rule: every bad value is a `ConfigError` naming its field, and no
//! value, however absurd, makes a constructor panic.

use degrade_core::ladder::{Band, Ladder, LadderConfig, UnknownPolicy};
use degrade_core::window::TimeWindow;
use degrade_core::{Controller, DegradeLayer, Policy, Priority};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use std::num::NonZeroU32;
use std::time::Duration;
use tokio::time::Instant;

fn ladder_err(mutate: impl FnOnce(&mut LadderConfig)) -> String {
    let mut cfg = LadderConfig::default();
    mutate(&mut cfg);
    let err = Controller::new(cfg).unwrap_err();
    assert!(err.to_string().contains(err.field()));
    err.field().to_owned()
}

#[test]
fn threshold_outside_unit_interval() {
    assert_eq!(
        ladder_err(|c| c.thresholds.light.enter = 0.0),
        "ladder.thresholds.light.enter"
    );
    assert_eq!(
        ladder_err(|c| c.thresholds.emergency.enter = 1.01),
        "ladder.thresholds.emergency.enter"
    );
    assert_eq!(
        ladder_err(|c| c.thresholds.heavy.exit = f64::NAN),
        "ladder.thresholds.heavy.exit"
    );
    assert_eq!(
        ladder_err(|c| c.thresholds.moderate.exit = -0.5),
        "ladder.thresholds.moderate.exit"
    );
    assert_eq!(
        ladder_err(|c| c.thresholds.light.enter = f64::INFINITY),
        "ladder.thresholds.light.enter"
    );
}

#[test]
fn exit_not_below_enter() {
    assert_eq!(
        ladder_err(|c| c.thresholds.moderate = Band {
            enter: 0.8,
            exit: 0.8
        }),
        "ladder.thresholds.moderate.exit"
    );
}

#[test]
fn enter_thresholds_must_rise() {
    assert_eq!(
        ladder_err(|c| c.thresholds.heavy = Band {
            enter: 0.79,
            exit: 0.75
        }),
        "ladder.thresholds.heavy.enter"
    );
}

#[test]
fn exit_thresholds_must_rise() {
    assert_eq!(
        ladder_err(|c| c.thresholds.heavy = Band {
            enter: 0.9,
            exit: 0.65
        }),
        "ladder.thresholds.heavy.exit"
    );
}

#[test]
fn sample_counts_at_least_one() {
    assert_eq!(
        ladder_err(|c| c.escalate_after = 0),
        "ladder.escalate_after"
    );
    assert_eq!(ladder_err(|c| c.recover_after = 0), "ladder.recover_after");
}

#[test]
fn dwell_greater_than_zero() {
    assert_eq!(ladder_err(|c| c.dwell = Duration::ZERO), "ladder.dwell");
}

#[test]
fn dwell_backoff_in_range() {
    assert_eq!(
        ladder_err(|c| c.dwell_backoff = 0.5),
        "ladder.dwell_backoff"
    );
    assert_eq!(
        ladder_err(|c| c.dwell_backoff = f64::NAN),
        "ladder.dwell_backoff"
    );
    assert_eq!(
        ladder_err(|c| c.dwell_backoff = 1e9),
        "ladder.dwell_backoff"
    );
}

#[test]
fn max_dwell_not_below_dwell() {
    assert_eq!(
        ladder_err(|c| c.max_dwell = Some(Duration::from_secs(1))),
        "ladder.max_dwell"
    );
}

#[test]
fn assumed_pressure_in_unit_interval() {
    assert_eq!(
        ladder_err(|c| c.unknown = UnknownPolicy::Assume(1.5)),
        "ladder.unknown.assume"
    );
    assert_eq!(
        ladder_err(|c| c.unknown = UnknownPolicy::Assume(f64::NAN)),
        "ladder.unknown.assume"
    );
}

#[test]
fn history_bounded() {
    assert_eq!(ladder_err(|c| c.history = 0), "ladder.history");
    assert_eq!(ladder_err(|c| c.history = usize::MAX), "ladder.history");
}

#[test]
fn policy_errors_are_prefixed_through_the_layer() {
    let c = Controller::new(Default::default()).unwrap();
    let mut p = Policy::default();
    p.emergency.admit.critical = 0.0;
    p.emergency.admit.high = 0.5;
    let err = DegradeLayer::new(c.handle(), p).unwrap_err();
    assert_eq!(err.field(), "policy.emergency.admit.high");
}

#[test]
fn retry_after_greater_than_zero() {
    let c = Controller::new(Default::default()).unwrap();
    let err = DegradeLayer::builder(c.handle())
        .retry_after(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "retry_after");
}

#[test]
fn unknown_priority_name() {
    assert_eq!(
        "urgent".parse::<Priority>().unwrap_err().field(),
        "priority"
    );
}

#[cfg(feature = "http")]
#[test]
fn invalid_header_name() {
    use degrade_core::priority::HeaderPriority;
    let err = HeaderPriority::new("x priority", Priority::Normal).unwrap_err();
    assert_eq!(err.field(), "priority.header");
}

#[test]
fn time_window_span_and_buckets() {
    let one = NonZeroU32::new(1).unwrap();
    let err = TimeWindow::new(Duration::ZERO, one, Instant::now()).unwrap_err();
    assert_eq!(err.field(), "span");
    let err = TimeWindow::new(
        Duration::from_millis(5),
        NonZeroU32::new(10).unwrap(),
        Instant::now(),
    )
    .unwrap_err();
    assert_eq!(err.field(), "buckets");
}

#[test]
fn configs_deserialize_with_humantime_durations_and_reject_unknown_fields() {
    let cfg: LadderConfig = serde_json::from_str(
        r#"{ "dwell": "1m 30s", "escalate_cooldown": "250ms", "thresholds": { "light": { "enter": 0.5, "exit": 0.4 } } }"#,
    )
    .unwrap();
    assert_eq!(cfg.dwell, Duration::from_secs(90));
    assert_eq!(cfg.escalate_cooldown, Duration::from_millis(250));
    assert_eq!(cfg.thresholds.light.enter, 0.5);
    assert_eq!(
        cfg.thresholds.moderate.enter, 0.80,
        "unset bands keep their defaults"
    );
    cfg.validate().unwrap();
    assert!(serde_json::from_str::<LadderConfig>(r#"{ "dwel": "1s" }"#).is_err());
    assert!(serde_json::from_str::<Policy>(r#"{ "extreme": {} }"#).is_err());
}

fn any_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        -2.0f64..2.0,
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(0.0),
        Just(1.0)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/config.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_ladder_config_panics(
        t in prop::collection::vec(any_f64(), 8),
        up in any::<u32>(), down in any::<u32>(),
        dwell in any::<u64>(), history in any::<usize>(), assume in any_f64(),
        pressures in prop::collection::vec(any_f64(), 0..20),
    ) {
        let band = |i: usize| Band { enter: t[2 * i], exit: t[2 * i + 1] };
        let cfg = LadderConfig {
            thresholds: degrade_core::ladder::Thresholds {
                light: band(0), moderate: band(1), heavy: band(2), emergency: band(3),
            },
            escalate_after: up,
            recover_after: down,
            dwell: Duration::from_nanos(dwell),
            unknown: UnknownPolicy::Assume(assume),
            history: history % 2_000_000,
            ..Default::default()
        };
        let now = Instant::now();
        if let Ok(mut ladder) = Ladder::new(cfg, now) {
            for (i, p) in pressures.iter().enumerate() {
                let r = [degrade_core::ladder::Reading::new("x", *p)];
                ladder.observe(&r, now + Duration::from_secs(i as u64));
            }
        }
    }

    #[test]
    fn no_policy_panics(shares in prop::collection::vec(any_f64(), 25), sampling in any_f64()) {
        let mut p = Policy::default();
        for (i, level) in degrade_core::Level::ALL.iter().enumerate() {
            let lp = p.level_mut(*level);
            lp.admit.background = shares[i * 5];
            lp.admit.low = shares[i * 5 + 1];
            lp.admit.normal = shares[i * 5 + 2];
            lp.admit.high = shares[i * 5 + 3];
            lp.admit.critical = shares[i * 5 + 4];
            lp.sampling = sampling;
        }
        let c = Controller::new(Default::default()).unwrap();
        let _ = DegradeLayer::new(c.handle(), p);
    }
}
