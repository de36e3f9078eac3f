//! Fuzz-style property tests of every parser in degrade-core that reads the network or a
//! configuration file (issue 14): priority headers and gRPC method paths, the gRPC
//! `RetryInfo` detail and status mapping, and every configuration type through serde.
//!
//! Stable Rust has no cargo-fuzz, so these are proptest runs over arbitrary bytes and over
//! structured generators that reach deeper (valid messages with hostile values, valid
//! configurations with one field replaced). Each property is "never panics, never hangs, and
//! agrees with a plain reference model". Case counts keep the file to a few seconds in CI;
//! `PROPTEST_CASES=100000 cargo test -p degrade-core --all-features --test fuzz` digs deeper.

use degrade_core::ladder::{Band, Ladder, LadderConfig, Thresholds, UnknownPolicy};
use degrade_core::policy::{AdmitShares, LevelPolicy};
use degrade_core::priority::{GrpcMethodPriority, HeaderPriority, RoutePriority};
use degrade_core::rejection::{self, grpc::MAX_RETRY_DELAY};
use degrade_core::{
    BoxError, Classifier, Controller, DegradeLayer, GrpcClassifier, HttpClassifier, Level, Outcome,
    Policy, Prioritize, Priority,
};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::Value;
use std::time::Duration;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/fuzz.txt",
        ))),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Priorities

/// The reference model of `Priority::parse_bytes`: a name in any case, or 1–3 digits up to
/// 255, around optional ASCII whitespace.
fn model_priority(value: &[u8]) -> Option<Priority> {
    let v = value.trim_ascii();
    for p in Priority::ALL {
        if v.eq_ignore_ascii_case(p.as_str().as_bytes()) {
            return Some(p);
        }
    }
    if v.is_empty() || v.len() > 3 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v)
        .ok()?
        .parse::<u8>()
        .ok()
        .map(Priority::from_scale)
}

/// Bytes that look like priorities more often than chance would.
fn priority_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..12),
        (
            prop::sample::select(vec![
                "critical",
                "HIGH",
                "Normal",
                "low",
                "background",
                "0",
                "255",
                "256",
                "999",
                "007"
            ]),
            "[ \t]{0,2}",
            "[ \t\r\n]{0,2}",
        )
            .prop_map(|(p, a, b)| format!("{a}{p}{b}").into_bytes()),
    ]
}

/// A valid header value made of arbitrary bytes (visible ASCII, space, tab, obs-text).
fn header_value() -> impl Strategy<Value = http::HeaderValue> {
    prop_oneof![priority_bytes(), prop::collection::vec(any::<u8>(), 0..32),]
        .prop_filter_map("valid header value", |b| {
            http::HeaderValue::from_bytes(&b).ok()
        })
}

/// A request path: slashes, dots, method-like words and arbitrary printable characters.
fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        "/[a-zA-Z0-9._]{0,12}/[a-zA-Z0-9_]{0,12}",
        "/[!-~&&[^?#%]]{0,30}",
        Just("/".to_owned()),
    ]
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn priority_parsing_of_any_bytes_matches_the_model(value in priority_bytes()) {
        prop_assert_eq!(Priority::parse_bytes(&value), model_priority(&value));
        if let Ok(s) = std::str::from_utf8(&value) {
            prop_assert_eq!(s.parse::<Priority>().ok(), model_priority(&value));
        }
    }

    #[test]
    fn a_priority_header_of_any_value_gives_its_priority_or_the_default(
        values in prop::collection::vec(header_value(), 0..3),
        default in prop::sample::select(Priority::ALL.to_vec()),
    ) {
        let p = HeaderPriority::new("x-priority", default).unwrap();
        let mut req = http::Request::new(());
        for v in &values {
            req.headers_mut().append("x-priority", v.clone());
        }
        let expected = values
            .first()
            .and_then(|v| model_priority(v.as_bytes()))
            .unwrap_or(default);
        prop_assert_eq!(p.priority(&req), expected);
    }

    #[test]
    fn grpc_method_and_route_priorities_of_any_path_take_the_longest_entry(
        entries in prop::collection::vec(
            ("[a-zA-Z0-9._]{0,8}", prop::option::of("[a-zA-Z0-9_]{0,8}"), prop::sample::select(Priority::ALL.to_vec())),
            0..6,
        ),
        path in path(),
    ) {
        let Ok(uri) = path.parse::<http::Uri>() else {
            return Ok(());
        };
        let req = http::Request::builder().uri(uri).body(()).unwrap();
        let mut grpc = GrpcMethodPriority::new(Priority::Normal);
        let mut route = RoutePriority::new(Priority::Normal);
        let mut table: Vec<(String, Priority)> = Vec::new();
        for (service, method, p) in &entries {
            let prefix = match method {
                Some(m) => {
                    grpc = grpc.method(service, m, *p);
                    format!("/{service}/{m}")
                }
                None => {
                    grpc = grpc.service(service, *p);
                    format!("/{service}/")
                }
            };
            route = route.route(prefix.clone(), *p);
            table.retain(|(q, _)| *q != prefix);
            table.push((prefix, *p));
        }
        // The model: the longest matching prefix (two distinct prefixes of one length cannot
        // both start the same path), else the default.
        let actual = req.uri().path();
        let expected = table
            .iter()
            .filter(|(prefix, _)| actual.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map_or(Priority::Normal, |(_, p)| *p);
        prop_assert_eq!(grpc.priority(&req), expected);
        prop_assert_eq!(route.priority(&req), expected);
    }
}

// ---------------------------------------------------------------------------------------------
// RetryInfo and the status mapping

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_bytes(buf: &mut Vec<u8>, field: u64, b: &[u8]) {
    put_varint(buf, (field << 3) | 2);
    put_varint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

/// A field a peer may add anywhere: a varint, fixed-width or length-delimited value under an
/// arbitrary field number.
fn noise_field() -> impl Strategy<Value = Vec<u8>> {
    (
        4u64..64,
        0u8..3,
        any::<u64>(),
        prop::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(|(field, kind, v, bytes)| {
            let mut b = Vec::new();
            match kind {
                0 => {
                    put_varint(&mut b, field << 3);
                    put_varint(&mut b, v);
                }
                1 => {
                    put_varint(&mut b, (field << 3) | 1);
                    b.extend_from_slice(&v.to_le_bytes());
                }
                _ => put_bytes(&mut b, field, &bytes),
            }
            b
        })
}

/// A `google.rpc.Status` whose `RetryInfo` holds arbitrary `seconds` and `nanos` (sign-extended
/// as protobuf writes them), with noise fields before the details.
fn status_bytes() -> impl Strategy<Value = (Vec<u8>, i64, i64)> {
    (
        prop_oneof![
            Just(i64::MIN),
            Just(-1i64),
            Just(0i64),
            Just(i64::MAX),
            any::<i64>(),
            0i64..7200
        ],
        prop_oneof![
            Just(0i64),
            Just(999_999_999i64),
            Just(1_000_000_000i64),
            Just(-1i64),
            Just(i64::from(i32::MAX)),
            Just(i64::from(i32::MIN)),
            any::<i64>(),
            -2_000_000_000i64..2_000_000_000,
        ],
        prop::collection::vec(noise_field(), 0..3),
    )
        .prop_map(|(seconds, nanos, noise)| {
            let mut duration = Vec::new();
            put_varint(&mut duration, 1 << 3);
            put_varint(&mut duration, seconds as u64);
            put_varint(&mut duration, 2 << 3);
            put_varint(&mut duration, nanos as u64);
            let mut retry_info = Vec::new();
            put_bytes(&mut retry_info, 1, &duration);
            let mut any = Vec::new();
            put_bytes(&mut any, 1, b"type.googleapis.com/google.rpc.RetryInfo");
            put_bytes(&mut any, 2, &retry_info);
            let mut status = Vec::new();
            put_varint(&mut status, 1 << 3);
            put_varint(&mut status, 8);
            for n in &noise {
                status.extend_from_slice(n);
            }
            put_bytes(&mut status, 3, &any);
            (status, seconds, nanos)
        })
}

/// The reference model of a decoded `google.protobuf.Duration`: an `int32` read from a wider
/// varint keeps its low 32 bits (as every protobuf library reads it), a negative total is zero.
fn model_delay(seconds: i64, nanos: i64) -> Option<Duration> {
    let nanos = nanos as i32;
    let total = i128::from(seconds) * 1_000_000_000 + i128::from(nanos);
    let capped = total.clamp(0, MAX_RETRY_DELAY.as_nanos() as i128) as u64;
    Some(Duration::from_nanos(capped))
}

fn delay_of(details: Vec<u8>) -> Option<Duration> {
    let status = tonic::Status::with_details(tonic::Code::ResourceExhausted, "x", details.into());
    rejection::grpc::retry_delay(&status)
}

proptest! {
    #![proptest_config(config(4096))]

    #[test]
    fn retry_delay_of_any_bytes_is_none_or_at_most_the_maximum(
        bytes in prop::collection::vec(any::<u8>(), 0..96),
    ) {
        if let Some(d) = delay_of(bytes) {
            prop_assert!(d <= MAX_RETRY_DELAY);
        }
    }

    #[test]
    fn retry_delay_of_any_duration_fields_matches_the_model((bytes, seconds, nanos) in status_bytes()) {
        prop_assert_eq!(delay_of(bytes), model_delay(seconds, nanos));
    }

    #[test]
    fn retry_delay_of_a_truncated_or_corrupted_status_never_panics(
        (bytes, _, _) in status_bytes(),
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let mut b = bytes;
        b.truncate(cut.index(b.len() + 1));
        for (at, x) in flips {
            if !b.is_empty() {
                let i = at.index(b.len());
                b[i] ^= x;
            }
        }
        if let Some(d) = delay_of(b) {
            prop_assert!(d <= MAX_RETRY_DELAY);
        }
    }

    #[test]
    fn a_status_from_any_trailers_maps_and_classifies_without_panicking(
        code in prop_oneof![prop::collection::vec(any::<u8>(), 0..4), "[0-9]{1,3}".prop_map(String::into_bytes)],
        details in prop::collection::vec(any::<u8>(), 0..64),
        (status, _, _) in status_bytes(),
        which in any::<bool>(),
    ) {
        use base64_like::encode;
        let mut headers = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_bytes(&code) {
            headers.insert("grpc-status", v.clone());
            // The same header on a response: the classifier reads it as a code or a failure.
            let mut res = http::Response::new(());
            res.headers_mut().insert("grpc-status", v);
            let o = Classifier::<_, BoxError>::classify_response(&GrpcClassifier::default(), &res);
            let parsed = std::str::from_utf8(&code).ok().and_then(|s| s.trim().parse::<i32>().ok());
            prop_assert_eq!(o, parsed.map_or(Outcome::Failure, |c| GrpcClassifier::default().classify_code(c)));
        }
        // Valid base64 only: tonic 0.14.5's `Status::from_header_map` itself panics on an
        // invalid `grpc-status-details-bin` ("Invalid status header, expected base64 encoded
        // value", status.rs:477), before any code of ours runs.
        let bin = if which { encode(&details) } else { encode(&status) };
        if let Ok(v) = http::HeaderValue::from_str(&bin) {
            headers.insert("grpc-status-details-bin", v);
        }
        if let Some(s) = tonic::Status::from_header_map(&headers) {
            if let Some(d) = rejection::grpc::retry_delay(&s) {
                prop_assert!(d <= MAX_RETRY_DELAY);
            }
            // Whatever a peer sent, it is judged by its code: never taken for a local rejection.
            let c = GrpcClassifier::default();
            let o = Classifier::<http::Response<()>, _>::classify_error(&c, &s);
            prop_assert_eq!(o, c.classify_code(s.code() as i32));
        }
    }

    #[test]
    fn every_code_and_status_classifies_without_panicking(code in any::<i32>(), status in any::<u16>()) {
        let g = GrpcClassifier::default().classify_code(code);
        if !(0..=16).contains(&code) {
            prop_assert_eq!(g, Outcome::Failure);
        }
        let h = HttpClassifier::default().classify_status(status);
        prop_assert_eq!(h == Outcome::Failure, (500..600).contains(&status) || status == 408 || status == 429);
    }
}

mod base64_like {
    //! Standard base64 without padding, as gRPC writes `-bin` headers.
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub(crate) fn encode(bytes: &[u8]) -> String {
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration through serde

/// Field names and enum tags of the core configurations, so that arbitrary objects hit real
/// fields often.
const KEYS: &[&str] = &[
    "thresholds",
    "light",
    "moderate",
    "heavy",
    "emergency",
    "enter",
    "exit",
    "escalate_after",
    "recover_after",
    "dwell",
    "dwell_backoff",
    "max_dwell",
    "escalate_cooldown",
    "jump",
    "unknown",
    "assume",
    "ignore",
    "hold",
    "history",
    "normal",
    "admit",
    "background",
    "low",
    "high",
    "critical",
    "sampling",
    "errors_only",
    "critical_only",
    "batch_size",
    "batch_wait",
    "drop_verbose_attributes",
];

/// Strings a configuration may hold: durations in humantime form (including ones that
/// overflow), level and priority names, and anything else.
fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "0s",
            "1ns",
            "1s",
            "30s",
            "5m",
            "1h 30m",
            "18446744073709551615s",
            "18446744073709551616s",
            "584942417355y",
            "99999999999999999999y",
            "-1s",
            "1.5s",
            "",
            " ",
            "normal",
            "light",
            "emergency",
            "critical",
            "hold",
            "ignore",
        ])
        .prop_map(str::to_owned),
        prop::sample::select(KEYS).prop_map(str::to_owned),
        "\\PC{0,12}",
    ]
}

/// Numbers at the edges of every numeric type a configuration holds.
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
            Value::from(0.5),
            Value::from(1.0),
            Value::from(1e308),
            Value::from(-1e308),
            Value::from(f64::MIN_POSITIVE),
            Value::from(100.0),
            Value::from(100.000001),
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

/// Every core configuration from `doc`: parsing gives a value or an error; a value validates
/// or names a field; a valid one builds its component. None of it may panic.
fn check_core_configs(doc: &Value) -> Result<(), TestCaseError> {
    let text = doc.to_string();
    if let Ok(c) = serde_json::from_str::<LadderConfig>(&text) {
        match c.validate() {
            Ok(()) => {
                let t0 = tokio::time::Instant::now();
                let mut ladder = Ladder::new(c.clone(), t0).unwrap();
                let _ = ladder.observe(&[degrade_core::ladder::Reading::new("s", 1.0)], t0);
                let controller = Controller::new(c).unwrap();
                prop_assert_eq!(controller.handle().current(), Level::Normal);
            }
            Err(e) => prop_assert!(!e.field().is_empty()),
        }
    }
    if let Ok(p) = serde_json::from_str::<Policy>(&text) {
        match p.validate() {
            Ok(()) => {
                let controller = Controller::new(LadderConfig::default()).unwrap();
                let layer = DegradeLayer::builder(controller.handle()).policy(p).build();
                prop_assert!(layer.is_ok());
            }
            Err(e) => prop_assert!(!e.field().is_empty()),
        }
    }
    let _ = serde_json::from_str::<Thresholds>(&text);
    let _ = serde_json::from_str::<Band>(&text);
    let _ = serde_json::from_str::<UnknownPolicy>(&text);
    let _ = serde_json::from_str::<LevelPolicy>(&text);
    let _ = serde_json::from_str::<AdmitShares>(&text);
    let _ = serde_json::from_str::<Level>(&text);
    let _ = serde_json::from_str::<Priority>(&text);
    Ok(())
}

fn valid_documents() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(serde_json::to_value(LadderConfig::default()).unwrap()),
        Just(serde_json::to_value(Policy::default()).unwrap()),
    ]
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn any_json_is_a_core_config_or_an_error(doc in json()) {
        check_core_configs(&doc)?;
    }

    #[test]
    fn a_valid_core_config_with_one_hostile_field_is_a_config_or_an_error(
        mut doc in valid_documents(),
        at in prop::collection::vec(any::<prop::sample::Index>(), 1..4),
        new in replacement(),
    ) {
        mutate(&mut doc, &at, &new);
        check_core_configs(&doc)?;
    }

    #[test]
    fn any_bytes_are_a_core_config_or_an_error(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
        let _ = serde_json::from_slice::<LadderConfig>(&bytes);
        let _ = serde_json::from_slice::<Policy>(&bytes);
        if let Ok(s) = std::str::from_utf8(&bytes) {
            let _ = s.parse::<Level>();
        }
    }
}
