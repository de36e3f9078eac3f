//! Bad configuration is a `ConfigError` naming the field, never a panic; configurations
//! deserialize from humantime text and reject unknown fields.

use degrade_breaker::{BreakerConfig, BreakerLayer, KeyedBreakerLayer, WindowConfig};
use degrade_core::key::from_fn;
use std::time::Duration;

fn field(c: BreakerConfig) -> String {
    BreakerLayer::new(c).unwrap_err().field().to_owned()
}

fn with(f: impl FnOnce(&mut BreakerConfig)) -> BreakerConfig {
    let mut c = BreakerConfig::default();
    f(&mut c);
    c
}

#[test]
fn rates_outside_zero_one_are_rejected() {
    for bad in [0.0, -0.1, 1.01, f64::NAN, f64::INFINITY] {
        assert_eq!(
            field(with(|c| c.failure_rate = bad)),
            "failure_rate",
            "{bad}"
        );
        assert_eq!(
            field(with(|c| c.slow_call_rate = bad)),
            "slow_call_rate",
            "{bad}"
        );
    }
    assert!(BreakerLayer::new(with(|c| c.failure_rate = 1.0)).is_ok());
    assert!(BreakerLayer::new(with(|c| c.slow_call_rate = 0.01)).is_ok());
}

#[test]
fn empty_windows_are_rejected() {
    let cases = [
        (WindowConfig::Count { size: 0 }, "window.size"),
        (WindowConfig::Consecutive { failures: 0 }, "window.failures"),
        (
            WindowConfig::Time {
                span: Duration::ZERO,
                buckets: 10,
            },
            "window.span",
        ),
        (
            WindowConfig::Time {
                span: Duration::from_secs(1),
                buckets: 0,
            },
            "window.buckets",
        ),
        (
            WindowConfig::Time {
                span: Duration::from_millis(5),
                buckets: 10,
            },
            "window.buckets",
        ),
    ];
    for (window, name) in cases {
        let c = with(|c| {
            c.window = window;
            c.minimum_calls = 1;
        });
        assert_eq!(field(c), name, "{window:?}");
    }
}

#[test]
fn zero_permits_and_other_bad_values_name_their_field() {
    let cases: Vec<(BreakerConfig, &str)> = vec![
        (with(|c| c.half_open.permits = 0), "half_open.permits"),
        (with(|c| c.half_open.successes = 0), "half_open.successes"),
        (with(|c| c.half_open.failures = 0), "half_open.failures"),
        (
            with(|c| c.half_open.max_duration = Some(Duration::ZERO)),
            "half_open.max_duration",
        ),
        (with(|c| c.minimum_calls = 0), "minimum_calls"),
        (with(|c| c.minimum_calls = 101), "minimum_calls"),
        (with(|c| c.wait = Duration::ZERO), "wait"),
        (
            with(|c| c.slow_call_duration = Some(Duration::ZERO)),
            "slow_call_duration",
        ),
        (with(|c| c.backoff.multiplier = 0.5), "backoff.multiplier"),
        (
            with(|c| c.backoff.max_wait = Duration::from_secs(1)),
            "backoff.max_wait",
        ),
        (with(|c| c.backoff.jitter = 1.0), "backoff.jitter"),
        (
            with(|c| {
                c.window = WindowConfig::Consecutive { failures: 3 };
                c.slow_call_duration = Some(Duration::from_secs(1));
            }),
            "slow_call_duration",
        ),
    ];
    for (c, name) in cases {
        let err = BreakerLayer::new(c.clone()).unwrap_err();
        assert_eq!(err.field(), name, "{c:?}");
        assert!(!err.rule().is_empty());
        let err = KeyedBreakerLayer::new(c, from_fn(|k: &u8| Some(*k))).unwrap_err();
        assert_eq!(err.field(), name);
    }
}

#[test]
fn config_deserializes_from_humantime_and_rejects_unknown_fields() {
    let c: BreakerConfig = serde_json::from_str(
        r#"{
            "window": {"kind": "time", "span": "30s", "buckets": 30},
            "minimum_calls": 20,
            "slow_call_duration": "750ms",
            "wait": "5s",
            "half_open": {"permits": 3, "max_duration": "1m", "on_timeout": "closed"},
            "cancelled": "failure"
        }"#,
    )
    .unwrap();
    c.validate().unwrap();
    assert_eq!(c.slow_call_duration, Some(Duration::from_millis(750)));
    assert_eq!(c.half_open.max_duration, Some(Duration::from_secs(60)));
    let round: BreakerConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(round, c);
    assert!(serde_json::from_str::<BreakerConfig>(r#"{"failure_rat": 0.5}"#).is_err());
    assert!(
        serde_json::from_str::<BreakerConfig>(r#"{"window": {"kind": "count", "sise": 3}}"#)
            .is_err()
    );
    let bad: BreakerConfig = serde_json::from_str(r#"{"failure_rate": 2}"#).unwrap();
    assert_eq!(bad.validate().unwrap_err().field(), "failure_rate");
}
