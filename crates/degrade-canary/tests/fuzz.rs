//! Fuzz-style property tests of the sticky-key extractors and the override, which read
//! request headers, cookies and gRPC metadata that any client controls (issue 14).
//!
//! Each property checks an extractor against a plain reference model on arbitrary input: it
//! never panics, a bucket is always in `0..10_000`, and the same key always lands in the same
//! bucket. Stable Rust has no cargo-fuzz, so these are proptest runs, bounded to a few seconds.

use degrade_canary::Arm;
use degrade_canary::hash::{self, BUCKETS};
use degrade_canary::key::{
    CookieKey, ForceArm, GrpcMetadataKey, HeaderKey, HeaderOverride, StickyKey,
};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

/// Names a configuration may give: header-like, with the characters that make them invalid,
/// upper case, `-bin` suffixes in any case.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9-]{1,12}",
        "[A-Za-z0-9-]{0,8}-[bB][iI][nN]",
        "[ -~]{0,12}",
        "\\PC{0,8}",
    ]
}

/// Bytes of a valid header value: visible ASCII, spaces, tabs and obs-text.
fn value() -> impl Strategy<Value = http::HeaderValue> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..24),
        "[ \t]{0,2}(stable|canary|STABLE|Canary|v2)[ \t]{0,2}".prop_map(String::into_bytes),
        "[A-Za-z0-9+/]{0,16}={0,2}".prop_map(String::into_bytes), // a `-bin` value
    ]
    .prop_filter_map("valid header value", |b| {
        http::HeaderValue::from_bytes(&b).ok()
    })
}

/// A cookie jar: `name=value` pairs with random spacing, sometimes broken.
fn cookie_header() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(
            (
                "[a-z]{1,4}",
                "[!#-+\\--:<-\\[\\]-~]{0,6}",
                "[ ]{0,2}",
                prop::bool::weighted(0.1)
            ),
            0..5,
        )
        .prop_map(|pairs| {
            let mut out = Vec::new();
            for (i, (n, v, pad, broken)) in pairs.into_iter().enumerate() {
                if i > 0 {
                    out.push(b';');
                }
                out.extend_from_slice(pad.as_bytes());
                out.extend_from_slice(n.as_bytes());
                if !broken {
                    out.push(b'=');
                }
                out.extend_from_slice(v.as_bytes());
            }
            out
        }),
        prop::collection::vec(any::<u8>(), 0..32),
    ]
}

/// The reference model of `CookieKey`: the first `name=value` among the `;`-separated,
/// whitespace-trimmed pairs of every `Cookie` header, in order.
fn model_cookie(name: &str, headers: &[http::HeaderValue]) -> Option<u16> {
    for h in headers {
        for pair in h.as_bytes().split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            if let Some(v) = pair
                .strip_prefix(name.as_bytes())
                .and_then(|r| r.strip_prefix(b"="))
            {
                return Some(hash::bucket(v));
            }
        }
    }
    None
}

fn is_bin(key: &str) -> bool {
    key.to_ascii_lowercase().ends_with("-bin")
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2048,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/fuzz.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn header_and_metadata_key_names_are_accepted_exactly_when_valid(name in name()) {
        let valid = http::HeaderName::from_bytes(name.as_bytes()).is_ok();
        prop_assert_eq!(HeaderKey::new(&name).is_ok(), valid);
        // Metadata: lower case, not reserved, and binary refused whatever its case.
        let metadata = !name.is_empty()
            && !name.starts_with("grpc-")
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
        prop_assert_eq!(GrpcMetadataKey::new(&name).is_ok(), valid && metadata && !is_bin(&name));
        prop_assert_eq!(
            CookieKey::new(&name).is_ok(),
            !name.is_empty() && !name.contains(['=', ';', ' ', '\t'])
        );
    }

    #[test]
    fn a_header_key_buckets_the_first_value_of_any_bytes(
        name in "[a-z][a-z0-9-]{0,8}",
        upper in any::<bool>(),
        values in prop::collection::vec(value(), 0..3),
        other in value(),
    ) {
        let configured = if upper { name.to_ascii_uppercase() } else { name.clone() };
        let key = HeaderKey::new(&configured).unwrap();
        let mut req = http::Request::new(());
        // Binary metadata next to the ASCII entry must not be read for it.
        req.headers_mut().insert(
            http::HeaderName::from_bytes(format!("{name}-bin").as_bytes()).unwrap(),
            other,
        );
        for v in &values {
            req.headers_mut().append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), v.clone());
        }
        let b = key.bucket(&req);
        prop_assert_eq!(b, values.first().map(|v| hash::bucket(v.as_bytes())));
        if let Some(b) = b {
            prop_assert!(u32::from(b) < BUCKETS);
            prop_assert_eq!(key.bucket(&req), Some(b)); // sticky
        }
    }

    #[test]
    fn a_cookie_key_buckets_its_cookie_in_any_jar(
        name in "[a-z]{1,4}",
        jars in prop::collection::vec(cookie_header(), 0..3),
    ) {
        let key = CookieKey::new(&name).unwrap();
        let headers: Vec<http::HeaderValue> = jars
            .iter()
            .filter_map(|j| http::HeaderValue::from_bytes(j).ok())
            .collect();
        let mut req = http::Request::new(());
        for h in &headers {
            req.headers_mut().append(http::header::COOKIE, h.clone());
        }
        let b = key.bucket(&req);
        prop_assert_eq!(b, model_cookie(&name, &headers));
        if let Some(b) = b {
            prop_assert!(u32::from(b) < BUCKETS);
        }
    }

    #[test]
    fn the_override_forces_an_arm_only_for_an_allowed_request_naming_one(
        v in value(),
        allowed in any::<bool>(),
    ) {
        let o = HeaderOverride::new("x-canary", move |_: &http::Request<()>| allowed).unwrap();
        let mut req = http::Request::new(());
        req.headers_mut().insert("x-canary", v.clone());
        let named = v
            .to_str()
            .ok()
            .and_then(|s| match s.trim() {
                t if t.eq_ignore_ascii_case("stable") => Some(Arm::Stable),
                t if t.eq_ignore_ascii_case("canary") => Some(Arm::Canary),
                _ => None,
            });
        prop_assert_eq!(o.forced(&req), named.filter(|_| allowed));
    }

    #[test]
    fn any_bytes_hash_to_a_bucket_in_range(bytes in prop::collection::vec(any::<u8>(), 0..64), id in any::<u64>()) {
        prop_assert!(u32::from(hash::bucket(&bytes)) < BUCKETS);
        prop_assert!(u32::from(hash::bucket_u64(id)) < BUCKETS);
    }
}

#[test]
fn binary_metadata_keys_are_refused_in_any_case() {
    for key in ["trace-bin", "Trace-Bin", "TRACE-BIN", "x-user-bIn"] {
        let err = GrpcMetadataKey::new(key).unwrap_err();
        assert_eq!(err.field(), "metadata", "{key}");
    }
    assert!(GrpcMetadataKey::new("binary").is_ok());
    assert!(GrpcMetadataKey::new("x-bin-id").is_ok());
}
