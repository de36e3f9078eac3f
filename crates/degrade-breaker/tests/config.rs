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

/// A live threshold change applies at the next call recorded, keeps the calls in the window
/// and the deadline of an open wait, and a refused change leaves everything as it was.
#[test]
fn a_live_threshold_change_judges_the_next_call_and_keeps_the_running_wait() {
    use degrade_breaker::State;
    use degrade_core::{ManualClock, Outcome};
    let clock = ManualClock::new();
    let mut config = with(|c| {
        c.window = WindowConfig::Count { size: 10 };
        c.minimum_calls = 10;
        c.wait = Duration::from_secs(10);
    });
    let h = BreakerLayer::builder(config.clone())
        .clock(clock.clone())
        .build()
        .unwrap()
        .handle();
    let record = |o| h.try_acquire().unwrap().record(o);
    for i in 0..10 {
        record(if i < 3 {
            Outcome::Failure
        } else {
            Outcome::Success
        });
    }
    assert_eq!(h.state(), State::Closed); // 30 % < 50 %
    // Lowered to 25 %: the window's ten calls stay, and the next call is judged by it.
    config.failure_rate = 0.25;
    config.wait = Duration::from_secs(30);
    h.reconfigure(config.clone()).unwrap();
    assert_eq!(h.state(), State::Closed); // nothing moves by itself
    record(Outcome::Failure);
    assert_eq!(h.state(), State::Open);
    let t = h.try_acquire().unwrap_err();
    assert_eq!(t.retry_after, Duration::from_secs(30)); // this opening waits the new wait
    // A refused change (the window's size needs a new breaker) changes nothing.
    let mut bad = config.clone();
    bad.window = WindowConfig::Count { size: 20 };
    bad.failure_rate = 0.9;
    let err = h.reconfigure(bad).unwrap_err();
    assert_eq!(err.field(), "window");
    assert!(err.to_string().contains("requires a restart"), "{err}");
    let err = h.reconfigure(with(|c| c.failure_rate = 2.0)).unwrap_err();
    assert_eq!(err.field(), "failure_rate");
    assert_eq!(h.config(), config);
    // The running wait keeps its deadline when `wait` changes again.
    config.wait = Duration::from_secs(5);
    h.reconfigure(config).unwrap();
    clock.advance(Duration::from_secs(29));
    assert_eq!(h.state(), State::Open);
    clock.advance(Duration::from_secs(1));
    assert_eq!(h.state(), State::HalfOpen);
}
