//! Fuzz-style property tests of the triggers' configuration through serde (issue 14): any JSON
//! document, any bytes, and valid documents with one hostile field give a configuration or an
//! error; a configuration validates or names its field; a valid one builds its monitor and its
//! `ObserveLayer` signals. Nothing panics, hangs or allocates without bound.
//!
//! Stable Rust has no cargo-fuzz, so these are proptest runs; the case counts keep the file to
//! a few seconds in CI (`PROPTEST_CASES=100000` digs deeper).

use degrade_core::Controller;
use degrade_triggers::observe::{InFlightConfig, LatencyConfig, LatencyStat, RateConfig};
use degrade_triggers::os::{
    CpuConfig, CpuSource, MemoryConfig, MemorySource, PsiConfig, PsiKind, PsiResource, PsiScope,
};
use degrade_triggers::{LagConfig, LevelThresholds, ObserveLayer, Smoothing, TriggersConfig};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::Value;
use std::time::Duration;

/// The configurations' field names and enum tags, so that arbitrary objects hit real fields.
const KEYS: &[&str] = &[
    "interval",
    "root",
    "anchors",
    "smoothing",
    "cpu",
    "memory",
    "psi",
    "latency",
    "errors",
    "timeouts",
    "in_flight",
    "lag",
    "thresholds",
    "light",
    "moderate",
    "heavy",
    "emergency",
    "enter",
    "exit",
    "cores",
    "source",
    "auto",
    "cgroup",
    "host",
    "process",
    "resource",
    "kind",
    "some",
    "full",
    "scope",
    "window",
    "sla",
    "stat",
    "p50",
    "p99",
    "mean",
    "alpha",
    "stale_after",
    "min_calls",
    "limit",
    "probe",
    "io",
];

/// Strings a configuration may hold: durations in humantime form (including ones that
/// overflow), enum tags, paths, and anything else.
fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "0s",
            "1ns",
            "1ms",
            "1s",
            "10s",
            "18446744073709551615s",
            "18446744073709551616s",
            "584942417355y",
            "99999999999999999999y",
            "-1s",
            "",
            " ",
            "/",
            "/nonexistent",
            "../..",
            "/proc/self",
        ])
        .prop_map(str::to_owned),
        prop::sample::select(KEYS).prop_map(str::to_owned),
        "\\PC{0,12}",
    ]
}

/// Numbers at the edges of every numeric type the configurations hold.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            Value::from(0),
            Value::from(1),
            Value::from(-1),
            Value::from(u64::MAX),
            Value::from(i64::MIN),
            Value::from(u32::MAX),
            Value::from(100),
            Value::from(101),
            Value::from(0.5),
            Value::from(1.0),
            Value::from(1e308),
            Value::from(-1e308),
            Value::from(f64::MIN_POSITIVE),
        ]),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
    ]
}

/// Arbitrary JSON, nested a few levels, with the configurations' own field names as keys.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((string(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A replacement for one field: of the field's own kind most of the time (a number for a
/// number, a string for a string), so that the document still parses and the value reaches
/// validation; anything at all otherwise.
#[derive(Debug, Clone)]
struct Replacement {
    number: Value,
    string: String,
    any: Value,
    same_kind: bool,
}

fn replacement() -> impl Strategy<Value = Replacement> {
    (number(), string(), json(), prop::bool::weighted(0.8)).prop_map(
        |(number, string, any, same_kind)| Replacement {
            number,
            string,
            any,
            same_kind,
        },
    )
}

/// Replaces the value at a path chosen by `at` (one step per index, as deep as the document
/// goes): a valid document with one hostile field, deeper than random JSON gets.
fn mutate(value: &mut Value, at: &[prop::sample::Index], new: &Replacement) {
    let Some((ix, rest)) = at.split_first() else {
        *value = match value {
            Value::Number(_) if new.same_kind => new.number.clone(),
            Value::String(_) if new.same_kind => Value::String(new.string.clone()),
            Value::Bool(b) if new.same_kind => Value::Bool(!*b),
            _ => new.any.clone(),
        };
        return;
    };
    match value {
        Value::Object(m) if !m.is_empty() => {
            let key = m.keys().nth(ix.index(m.len())).cloned().unwrap_or_default();
            if let Some(v) = m.get_mut(&key) {
                mutate(v, rest, new);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            let i = ix.index(a.len());
            mutate(&mut a[i], rest, new);
        }
        _ => mutate(value, &[], new),
    }
}

/// A valid document with every signal configured.
fn full_document() -> Value {
    let mut doc = serde_json::to_value(TriggersConfig::default()).unwrap();
    doc["psi"] =
        serde_json::json!([{ "resource": "memory", "kind": "full" }, { "resource": "cpu" }]);
    doc["in_flight"] = serde_json::to_value(InFlightConfig::default()).unwrap();
    doc["lag"] = serde_json::to_value(LagConfig::default()).unwrap();
    doc
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// Parses `doc` as every configuration type; a valid `TriggersConfig` must build its monitor
/// (reading under an empty root, so no host file decides the outcome) with the observe
/// signals.
fn check(doc: &Value, rt: &tokio::runtime::Runtime) -> Result<(), TestCaseError> {
    let text = doc.to_string();
    if let Ok(mut c) = serde_json::from_str::<TriggersConfig>(&text) {
        match c.validate() {
            Ok(()) => {
                c.root = std::env::temp_dir().join("degrade-triggers-fuzz-empty-root");
                let observe = ObserveLayer::new();
                let _guard = rt.enter();
                let controller = Controller::new(Default::default()).unwrap();
                let monitor = c.monitor_with(controller, &observe);
                prop_assert!(
                    monitor.is_ok(),
                    "validate() accepted what monitor_with() refused: {:?}",
                    monitor.err()
                );
            }
            Err(e) => prop_assert!(!e.field().is_empty()),
        }
    }
    // Every valid signal configuration builds its signal.
    if let Ok(c) = serde_json::from_str::<LatencyConfig>(&text)
        && c.validate().is_ok()
    {
        prop_assert!(ObserveLayer::new().latency(c).is_ok());
    }
    if let Ok(c) = serde_json::from_str::<RateConfig>(&text)
        && c.validate().is_ok()
    {
        prop_assert!(ObserveLayer::new().error_rate(c.clone()).is_ok());
        prop_assert!(ObserveLayer::new().timeout_rate(c).is_ok());
    }
    if let Ok(c) = serde_json::from_str::<InFlightConfig>(&text)
        && c.validate().is_ok()
    {
        prop_assert!(ObserveLayer::new().in_flight(c).is_ok());
    }
    if let Ok(c) = serde_json::from_str::<LagConfig>(&text) {
        let _ = c.validate();
    }
    if let Ok(c) = serde_json::from_str::<LevelThresholds>(&text) {
        let _ = c.validate();
    }
    if let Ok(c) = serde_json::from_str::<Smoothing>(&text) {
        let _ = c.validate();
    }
    if let Ok(c) = serde_json::from_str::<CpuConfig>(&text) {
        let _ = c.validate();
    }
    if let Ok(c) = serde_json::from_str::<MemoryConfig>(&text) {
        let _ = c.validate();
    }
    if let Ok(c) = serde_json::from_str::<PsiConfig>(&text) {
        let _ = c.validate();
    }
    let _ = serde_json::from_str::<LatencyStat>(&text);
    let _ = serde_json::from_str::<CpuSource>(&text);
    let _ = serde_json::from_str::<MemorySource>(&text);
    let _ = serde_json::from_str::<PsiResource>(&text);
    let _ = serde_json::from_str::<PsiKind>(&text);
    let _ = serde_json::from_str::<PsiScope>(&text);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/fuzz.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_json_is_a_triggers_config_or_an_error(doc in json()) {
        check(&doc, &runtime())?;
    }

    #[test]
    fn a_valid_triggers_config_with_one_hostile_field_is_a_config_or_an_error(
        at in prop::collection::vec(any::<prop::sample::Index>(), 1..5),
        new in replacement(),
    ) {
        let mut doc = full_document();
        mutate(&mut doc, &at, &new);
        check(&doc, &runtime())?;
    }

    #[test]
    fn any_bytes_are_a_triggers_config_or_an_error(bytes in prop::collection::vec(any::<u8>(), 0..160)) {
        if let Ok(c) = serde_json::from_slice::<TriggersConfig>(&bytes) {
            let _ = c.validate();
        }
        let _ = serde_json::from_slice::<LatencyConfig>(&bytes);
        let _ = serde_json::from_slice::<RateConfig>(&bytes);
    }
}

#[test]
fn the_full_document_is_valid() {
    let c: TriggersConfig = serde_json::from_value(full_document()).unwrap();
    c.validate().unwrap();
    assert_eq!(c.interval, Duration::from_secs(1));
}
