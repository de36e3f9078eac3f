//! `TriggersConfig` and the signal configs: partial documents, seed defaults, unknown fields
//! rejected, and every bad value reported as a `ConfigError` naming its full path.

use degrade_core::Controller;
use degrade_triggers::os::{CpuConfig, MemoryConfig, PsiConfig};
use degrade_triggers::{LevelThresholds, ObserveLayer, TriggersConfig};
use std::time::Duration;

fn parse(json: &str) -> TriggersConfig {
    serde_json::from_str(json).unwrap()
}

fn field_of(json: &str) -> String {
    parse(json).validate().unwrap_err().field().to_owned()
}

#[test]
fn seed_defaults() {
    let cfg = TriggersConfig::default();
    assert_eq!(cfg.interval, Duration::from_secs(1));
    let cpu = cfg.cpu.unwrap();
    assert_eq!(cpu.thresholds, LevelThresholds::new(70.0, 80.0, 90.0, 95.0));
    let mem = cfg.memory.unwrap();
    assert_eq!(mem.thresholds, LevelThresholds::new(75.0, 85.0, 92.0, 97.0));
    let lat = cfg.latency.unwrap();
    assert_eq!(
        lat.thresholds,
        LevelThresholds::new(100.0, 250.0, 500.0, 1000.0)
    );
    assert!(cfg.psi.is_empty() && cfg.in_flight.is_none() && cfg.lag.is_none());
    assert_eq!(parse("{}"), TriggersConfig::default());
}

#[test]
fn round_trips_through_serde() {
    let cfg = TriggersConfig {
        psi: vec![PsiConfig::default()],
        cpu: Some(CpuConfig {
            cores: Some(2.0),
            ..Default::default()
        }),
        memory: Some(MemoryConfig {
            limit: Some(1 << 30),
            ..Default::default()
        }),
        in_flight: Some(Default::default()),
        lag: Some(Default::default()),
        ..Default::default()
    };
    let json = serde_json::to_string(&cfg).unwrap();
    assert_eq!(serde_json::from_str::<TriggersConfig>(&json).unwrap(), cfg);
}

#[test]
fn unknown_fields_are_rejected() {
    for json in [
        r#"{ "intervall": "1s" }"#,
        r#"{ "cpu": { "treshold": 3 } }"#,
        r#"{ "latency": { "stat": "p95" } }"#,
        r#"{ "psi": [{ "resource": "disk" }] }"#,
        r#"{ "cpu": { "thresholds": { "light": 1, "moderate": 2, "heavy": 3 } } }"#,
    ] {
        assert!(
            serde_json::from_str::<TriggersConfig>(json).is_err(),
            "{json}"
        );
    }
}

#[test]
fn bad_values_name_their_field() {
    let cases = [
        (r#"{ "interval": "0s" }"#, "interval"),
        (
            r#"{ "cpu": { "thresholds": { "light": 80, "moderate": 70, "heavy": 90, "emergency": 95 } } }"#,
            "cpu.thresholds.moderate",
        ),
        (
            r#"{ "cpu": { "throttling": { "light": 0, "moderate": 1, "heavy": 2, "emergency": 3 } } }"#,
            "cpu.throttling.light",
        ),
        (r#"{ "memory": { "limit": 0 } }"#, "memory.limit"),
        (
            r#"{ "psi": [{}, { "thresholds": { "light": 5, "moderate": 5, "heavy": 6, "emergency": 7 } }] }"#,
            "psi[1].thresholds.moderate",
        ),
        (r#"{ "latency": { "window": "0s" } }"#, "latency.window"),
        (r#"{ "latency": { "sla": "0s" } }"#, "latency.sla"),
        (r#"{ "errors": { "min_calls": 0 } }"#, "errors.min_calls"),
        (r#"{ "timeouts": { "window": "0s" } }"#, "timeouts.window"),
        (
            r#"{ "in_flight": { "thresholds": { "light": -1, "moderate": 2, "heavy": 3, "emergency": 4 } } }"#,
            "in_flight.thresholds.light",
        ),
        (r#"{ "lag": { "period": "0s" } }"#, "lag.period"),
        (
            r#"{ "smoothing": { "stale_after": 0 } }"#,
            "smoothing.stale_after",
        ),
        (
            r#"{ "anchors": { "light": { "enter": 0.9, "exit": 0.6 } } }"#,
            "anchors.moderate.enter",
        ),
    ];
    for (json, field) in cases {
        assert_eq!(field_of(json), field, "{json}");
    }
}

#[test]
fn monitor_with_builds_every_configured_signal_and_rejects_bad_configs() {
    let observe = ObserveLayer::new();
    let cfg = parse(r#"{ "psi": [{ "resource": "io" }], "in_flight": {}, "timeouts": null }"#);
    let monitor = cfg
        .monitor_with(Controller::new(Default::default()).unwrap(), &observe)
        .unwrap();
    let debug = format!("{monitor:?}");
    for name in [
        "cpu",
        "memory",
        "psi.io.some",
        "latency",
        "errors",
        "in_flight",
    ] {
        assert!(
            debug.contains(&format!("\"{name}\"")),
            "{name} missing: {debug}"
        );
    }
    assert!(!debug.contains("\"timeouts\""));

    let bad = parse(r#"{ "errors": { "min_calls": 0 } }"#);
    let err = bad
        .monitor_with(Controller::new(Default::default()).unwrap(), &observe)
        .unwrap_err();
    assert_eq!(err.field(), "errors.min_calls");
}
