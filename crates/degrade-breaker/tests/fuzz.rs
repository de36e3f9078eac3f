//! Fuzz-style property tests of the breaker's configuration through serde (issue 14): any JSON
//! document, any bytes, and valid documents with one hostile field give a configuration or an
//! error; a configuration validates or names its field; a valid one builds a breaker that
//! takes calls. Nothing panics, hangs or allocates without bound (window sizes are capped).
//!
//! Stable Rust has no cargo-fuzz, so these are proptest runs; the case counts keep the file to
//! a few seconds in CI (`PROPTEST_CASES=100000` digs deeper).

use degrade_breaker::{
    BackoffConfig, BreakerConfig, BreakerLayer, CancelledAs, HalfOpenConfig, KeyedBreakerLayer,
    State, TimeoutTarget, WindowConfig,
};
use degrade_core::key::from_fn;
use degrade_core::{ManualClock, Outcome};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::Value;
use std::time::Duration;

/// The breaker configuration's field names and enum tags, so that arbitrary objects hit real
/// fields often.
const KEYS: &[&str] = &[
    "window",
    "kind",
    "consecutive",
    "count",
    "time",
    "failures",
    "size",
    "span",
    "buckets",
    "failure_rate",
    "slow_call_duration",
    "slow_call_rate",
    "minimum_calls",
    "wait",
    "backoff",
    "multiplier",
    "max_wait",
    "jitter",
    "seed",
    "half_open",
    "permits",
    "successes",
    "max_duration",
    "on_timeout",
    "open",
    "closed",
    "cancelled",
    "ignored",
    "failure",
];

/// Strings a configuration may hold: durations in humantime form (including ones that
/// overflow), enum tags, and anything else.
fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "0s",
            "1ns",
            "1ms",
            "1s",
            "30s",
            "10m",
            "18446744073709551615s",
            "18446744073709551616s",
            "584942417355y",
            "99999999999999999999y",
            "-1s",
            "",
            " ",
        ])
        .prop_map(str::to_owned),
        prop::sample::select(KEYS).prop_map(str::to_owned),
        "\\PC{0,12}",
    ]
}

/// Numbers at the edges of every numeric type the configuration holds.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            Value::from(0),
            Value::from(1),
            Value::from(-1),
            Value::from(u64::MAX),
            Value::from(i64::MIN),
            Value::from(u32::MAX),
            Value::from(u64::from(u32::MAX) + 1),
            Value::from(1_000_000),
            Value::from(1_000_001),
            Value::from(10_000),
            Value::from(10_001),
            Value::from(0.5),
            Value::from(1.0),
            Value::from(1e308),
            Value::from(f64::MIN_POSITIVE),
            Value::from(0.999_999_999_999),
        ]),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
    ]
}

/// Arbitrary JSON, nested a few levels, with the configuration's own field names as keys.
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

/// Valid documents of every window kind, to mutate.
fn valid_documents() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        WindowConfig::Consecutive { failures: 3 },
        WindowConfig::Count { size: 20 },
        WindowConfig::Time {
            span: Duration::from_secs(10),
            buckets: 10,
        },
    ])
    .prop_map(|window| {
        let mut c = BreakerConfig::default();
        c.window = window;
        c.minimum_calls = 5;
        c.slow_call_duration =
            (!matches!(window, WindowConfig::Consecutive { .. })).then_some(Duration::from_secs(1));
        c.half_open.max_duration = Some(Duration::from_secs(5));
        serde_json::to_value(c).unwrap()
    })
}

/// Parses `doc` as every configuration type; a valid breaker configuration must build a
/// breaker (and a keyed one) that admits and records calls.
fn check(doc: &Value) -> Result<(), TestCaseError> {
    let text = doc.to_string();
    if let Ok(c) = serde_json::from_str::<BreakerConfig>(&text) {
        match c.validate() {
            Ok(()) => {
                let clock = ManualClock::new();
                let layer = BreakerLayer::builder(c.clone())
                    .clock(clock.clone())
                    .build();
                prop_assert!(
                    layer.is_ok(),
                    "validate() accepted what build() refused: {c:?}"
                );
                let h = layer.unwrap().handle();
                for outcome in [Outcome::Failure, Outcome::Success, Outcome::Failure] {
                    if let Ok(p) = h.try_acquire() {
                        clock.advance(Duration::from_millis(1));
                        p.record(outcome);
                    }
                }
                clock.advance(c.wait);
                let _ = h.state();
                prop_assert_eq!(h.snapshot().offered(), 3);
                let keyed = KeyedBreakerLayer::builder(c, from_fn(|k: &u8| Some(*k)))
                    .max_keys(2)
                    .build();
                prop_assert!(keyed.is_ok());
            }
            Err(e) => prop_assert!(!e.field().is_empty()),
        }
    }
    let _ = serde_json::from_str::<WindowConfig>(&text);
    let _ = serde_json::from_str::<BackoffConfig>(&text);
    let _ = serde_json::from_str::<HalfOpenConfig>(&text);
    let _ = serde_json::from_str::<TimeoutTarget>(&text);
    let _ = serde_json::from_str::<CancelledAs>(&text);
    let _ = serde_json::from_str::<State>(&text);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1024,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/fuzz.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_json_is_a_breaker_config_or_an_error(doc in json()) {
        check(&doc)?;
    }

    #[test]
    fn a_valid_breaker_config_with_one_hostile_field_is_a_config_or_an_error(
        mut doc in valid_documents(),
        at in prop::collection::vec(any::<prop::sample::Index>(), 1..4),
        new in replacement(),
    ) {
        mutate(&mut doc, &at, &new);
        check(&doc)?;
    }

    #[test]
    fn any_bytes_are_a_breaker_config_or_an_error(bytes in prop::collection::vec(any::<u8>(), 0..160)) {
        if let Ok(c) = serde_json::from_slice::<BreakerConfig>(&bytes) {
            let _ = c.validate();
        }
        let _ = serde_json::from_slice::<WindowConfig>(&bytes);
    }
}
