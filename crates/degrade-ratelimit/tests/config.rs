//! Bad configuration is a `ConfigError` naming the field, never a panic.

use degrade_ratelimit::{KeysConfig, LevelScale, RateLimitConfig, RateLimitLayer};
use std::time::Duration;

fn field(cfg: RateLimitConfig) -> String {
    let err = cfg.validate().unwrap_err();
    assert_eq!(
        RateLimitLayer::new(cfg).unwrap_err().field(),
        err.field(),
        "build and validate agree"
    );
    err.field().to_owned()
}

const SEC: Duration = Duration::from_secs(1);

#[test]
fn zero_and_absurd_quotas_name_the_field() {
    assert_eq!(field(RateLimitConfig::per(0, SEC)), "quota");
    assert_eq!(field(RateLimitConfig::per(2_000_000_000, SEC)), "quota");
    assert_eq!(field(RateLimitConfig::per(u64::MAX, SEC)), "quota");
    assert_eq!(field(RateLimitConfig::per(1, Duration::ZERO)), "period");
    assert_eq!(
        field(RateLimitConfig::per(1, Duration::from_secs(400 * 86_400))),
        "period"
    );
    assert_eq!(field(RateLimitConfig::per(1, Duration::MAX)), "period");
    // One nanosecond per unit is the finest quota that is not absurd.
    assert!(RateLimitConfig::per(1_000_000_000, SEC).validate().is_ok());
}

#[test]
fn zero_and_absurd_bursts_name_the_field() {
    assert_eq!(field(RateLimitConfig::per(10, SEC).burst(0)), "burst");
    assert_eq!(
        field(RateLimitConfig::per(1, Duration::from_secs(3600)).burst(u64::MAX)),
        "burst"
    );
}

#[test]
fn nan_negative_zero_and_oversized_costs_name_the_field() {
    for cost in [f64::NAN, -1.0, 0.0, f64::INFINITY, f64::NEG_INFINITY, 11.0] {
        let mut cfg = RateLimitConfig::per(10, SEC);
        cfg.cost = cost;
        assert_eq!(field(cfg), "cost", "cost {cost}");
    }
    let mut cfg = RateLimitConfig::per(10, SEC);
    cfg.cost = 0.5;
    assert!(cfg.validate().is_ok());
}

#[test]
fn waiting_needs_room_for_a_waiter() {
    assert_eq!(
        field(RateLimitConfig::per(10, SEC).wait(Duration::from_millis(5), 0)),
        "max_waiters"
    );
    assert!(
        RateLimitConfig::per(10, SEC)
            .wait(Duration::ZERO, 0)
            .validate()
            .is_ok()
    );
}

#[test]
fn level_scales_must_be_positive_and_finite() {
    for (bad, name) in [
        (0.0, "heavy"),
        (f64::NAN, "heavy"),
        (-0.5, "heavy"),
        (1e9, "heavy"),
    ] {
        let cfg = RateLimitConfig::per(10, SEC).level_scale(LevelScale {
            heavy: bad,
            ..LevelScale::default()
        });
        assert_eq!(field(cfg), format!("level_scale.{name}"));
    }
    // A scale that makes the quota absurd at one level names that level.
    let cfg = RateLimitConfig::per(1_000_000_000, SEC).level_scale(LevelScale {
        light: 2.0,
        ..LevelScale::default()
    });
    assert_eq!(field(cfg), "level_scale.light");
}

#[test]
fn key_cap_is_checked() {
    let err = RateLimitLayer::builder(RateLimitConfig::default())
        .keyed(
            degrade_ratelimit::key::from_fn(|r: &u8| Some(*r)),
            KeysConfig { max_keys: 0 },
        )
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "keys.max_keys");
}

#[test]
fn config_deserializes_with_humantime_and_rejects_unknown_fields() {
    let cfg: RateLimitConfig = serde_json::from_str(
        r#"{ "quota": 5, "period": "250ms", "burst": 2, "cost": 1.5, "max_wait": "1s",
             "max_waiters": 3, "level_scale": { "emergency": 0.1 } }"#,
    )
    .unwrap();
    assert_eq!(cfg.period, Duration::from_millis(250));
    assert_eq!(cfg.level_scale.emergency, 0.1);
    assert!(cfg.validate().is_ok());
    let back: RateLimitConfig =
        serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(back, cfg);
    assert!(serde_json::from_str::<RateLimitConfig>(r#"{ "qouta": 5 }"#).is_err());
    assert!(serde_json::from_str::<RateLimitConfig>(r#"{ "quota": -5 }"#).is_err());
}

#[test]
fn a_bad_live_quota_is_refused_and_the_old_one_stays() {
    let layer = RateLimitLayer::new(RateLimitConfig::per(10, SEC)).unwrap();
    let h = layer.quota_handle();
    let mut bad = RateLimitConfig::per(10, SEC);
    bad.cost = f64::NAN;
    assert_eq!(h.set(bad).unwrap_err().field(), "cost");
    assert_eq!(h.get(), RateLimitConfig::per(10, SEC));
}
