//! Fuzz-style property tests of every parser in this crate fed by the network or by
//! configuration: forwarding headers and the other key extractors, trusted-proxy networks, the
//! replies of a server pretending to be Redis, and every configuration type through serde.
//!
//! Stable Rust, proptest with arbitrary bytes and structured generators; bounded (input sizes,
//! case counts, per-decision timeouts) so the file runs in seconds in CI. None of the inputs may
//! panic, hang, or make the crate allocate beyond the input's size.
#![cfg(feature = "http")]

use degrade_core::ManualClock;
use degrade_ratelimit::error::Cause;
use degrade_ratelimit::key::{
    Cidr, ForwardedHeader, GrpcMetadataKey, HeaderKey, KeyExtractor, PeerIp, PeerIpConfig,
};
use degrade_ratelimit::{KeysConfig, LevelScale, RateLimitConfig, RateLimitLayer, RateLimited};
use futures_util::FutureExt;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

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
// Forwarding headers
// ---------------------------------------------------------------------------------------------

/// One hop of a forwarding header, as a proxy (or an attacker) might write it.
#[derive(Debug, Clone)]
enum Hop {
    V4(Ipv4Addr, Option<u16>),
    /// Address, in brackets, port (only with brackets).
    V6(Ipv6Addr, bool, Option<u16>),
    Garbage(&'static str),
}

const GARBAGE: &[&str] = &[
    "",
    "unknown",
    "_hidden",
    "1.2.3",
    "1.2.3.4:",
    "1.2.3.4:99999",
    "[::1",
    "[::1]x",
    "::g",
    "fe80::1%eth0",
    "[10.0.0.1]",
    "1.2.3.4 5.6.7.8",
];

/// Addresses from a small pool, half of them inside the trusted networks.
fn v4() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        (0u8..4).prop_map(|x| Ipv4Addr::new(10, 0, 0, x)),
        (0u8..4).prop_map(|x| Ipv4Addr::new(203, 0, 113, x)),
    ]
}

fn v6() -> impl Strategy<Value = Ipv6Addr> {
    prop_oneof![
        (0u16..4).prop_map(|x| Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, x)),
        (0u16..4, 0u16..3).prop_map(|(x, n)| Ipv6Addr::new(0x2001, 0xdb8, 1, n, 0, 0, 0, x)),
        (0u8..4).prop_map(|x| Ipv4Addr::new(203, 0, 113, x).to_ipv6_mapped()),
    ]
}

fn hop() -> impl Strategy<Value = Hop> {
    prop_oneof![
        3 => (v4(), prop::option::of(any::<u16>())).prop_map(|(a, p)| Hop::V4(a, p)),
        3 => (v6(), any::<bool>(), prop::option::of(any::<u16>()))
            .prop_map(|(a, b, p)| Hop::V6(a, b, if b { p } else { None })),
        1 => prop::sample::select(GARBAGE).prop_map(Hop::Garbage),
    ]
}

impl Hop {
    fn ip(&self) -> Option<IpAddr> {
        match self {
            Hop::V4(a, _) => Some(IpAddr::V4(*a)),
            Hop::V6(a, ..) => Some(a.to_ipv4_mapped().map_or(IpAddr::V6(*a), IpAddr::V4)),
            Hop::Garbage(_) => None,
        }
    }

    /// As written in `X-Forwarded-For`.
    fn xff(&self) -> String {
        match self {
            Hop::V4(a, None) => a.to_string(),
            Hop::V4(a, Some(p)) => format!("{a}:{p}"),
            Hop::V6(a, false, _) => a.to_string(),
            Hop::V6(a, true, None) => format!("[{a}]"),
            Hop::V6(a, true, Some(p)) => format!("[{a}]:{p}"),
            Hop::Garbage(g) => (*g).to_owned(),
        }
    }

    /// As the `for` parameter of a `Forwarded` element (quoted when it must be).
    fn forwarded(&self) -> String {
        match self {
            Hop::V4(a, None) => format!("for={a};proto=https"),
            Hop::Garbage("") => "proto=http".to_owned(),
            _ => format!("by=10.9.9.9;for=\"{}\"", self.xff()),
        }
    }
}

fn trusted() -> PeerIp {
    let mut cfg = PeerIpConfig::default();
    cfg.trusted_proxies = vec!["10.0.0.0/8".into(), "2001:db8:ffff::/48".into()];
    PeerIp::from_config(&cfg).unwrap()
}

fn is_trusted(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.octets()[0] == 10,
        IpAddr::V6(a) => a.segments()[..3] == [0x2001, 0xdb8, 0xffff],
    }
}

/// The key the extractor gives an address (IPv6 cut to its /64).
fn keyed(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(a) => IpAddr::V4(a),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & !((1u128 << 64) - 1))),
    }
}

/// The reference: walk the hops from the right; stop at the first untrusted one (the client),
/// or at an unreadable one (then the last address a trusted proxy vouched for).
fn walk(peer: IpAddr, hops: &[Hop]) -> IpAddr {
    let mut client = peer;
    for h in hops.iter().rev() {
        match h.ip() {
            None => return client,
            Some(ip) => {
                client = ip;
                if !is_trusted(ip) {
                    return ip;
                }
            }
        }
    }
    client
}

fn request(peer: IpAddr, headers: &[(&str, Vec<u8>)]) -> http::Request<()> {
    let mut r = http::Request::new(());
    for (name, v) in headers {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_bytes(v),
        ) {
            r.headers_mut().append(n, v);
        }
    }
    r.extensions_mut().insert(SocketAddr::new(peer, 443));
    r
}

/// Splits `hops` into header lines at the given cut points.
fn lines(hops: &[Hop], cuts: &[usize], render: impl Fn(&Hop) -> String, sep: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (hops.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.push(hops.len());
    for c in cuts {
        if c > start {
            let s: Vec<String> = hops[start..c].iter().map(&render).collect();
            out.push(s.join(sep).into_bytes());
            start = c;
        }
    }
    out
}

proptest! {
    #![proptest_config(config(512))]

    /// Structured `X-Forwarded-For` lists (ports, brackets, IPv4-mapped IPv6, garbage, several
    /// lines): the client is the one a plain right-to-left walk finds, cut to its prefix.
    #[test]
    fn x_forwarded_for_names_the_right_most_untrusted_client(
        hops in prop::collection::vec(hop(), 0..8),
        cuts in prop::collection::vec(any::<usize>(), 0..3),
        peer_trusted in any::<bool>(),
    ) {
        let peer: IpAddr = if peer_trusted { [10, 0, 0, 1].into() } else { [198, 51, 100, 7].into() };
        let headers: Vec<_> = lines(&hops, &cuts, Hop::xff, ", ")
            .into_iter().map(|l| ("x-forwarded-for", l)).collect();
        let got = trusted().extract(&request(peer, &headers));
        let want = if peer_trusted { walk(peer, &hops) } else { peer };
        prop_assert_eq!(got, Some(keyed(want)));
    }

    /// The same for RFC 7239 `Forwarded`, with other parameters around `for`.
    #[test]
    fn forwarded_names_the_right_most_untrusted_client(
        hops in prop::collection::vec(hop(), 0..8),
        cuts in prop::collection::vec(any::<usize>(), 0..3),
    ) {
        let peer: IpAddr = [10, 0, 0, 1].into();
        let headers: Vec<_> = lines(&hops, &cuts, Hop::forwarded, ", ")
            .into_iter().map(|l| ("forwarded", l)).collect();
        let mut cfg = PeerIpConfig::default();
        cfg.trusted_proxies = vec!["10.0.0.0/8".into(), "2001:db8:ffff::/48".into()];
        cfg.header = ForwardedHeader::Forwarded;
        let key = PeerIp::from_config(&cfg).unwrap();
        prop_assert_eq!(key.extract(&request(peer, &headers)), Some(keyed(walk(peer, &hops))));
    }

    /// Arbitrary bytes in either forwarding header, on several lines: never a panic, and the
    /// key is the peer or an address that appears in the headers.
    #[test]
    fn arbitrary_forwarding_headers_never_panic(
        values in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..96), 0..4),
        text in prop::collection::vec("[ -~]{0,64}", 0..3),
        forwarded in any::<bool>(),
    ) {
        let peer: IpAddr = [10, 0, 0, 1].into();
        let name = if forwarded { "forwarded" } else { "x-forwarded-for" };
        let mut headers: Vec<_> = values.into_iter().map(|v| (name, v)).collect();
        headers.extend(text.into_iter().map(|t| (name, t.into_bytes())));
        let mut cfg = PeerIpConfig::default();
        cfg.trusted_proxies = vec!["0.0.0.0/0".into(), "::/0".into()];
        cfg.header = if forwarded { ForwardedHeader::Forwarded } else { ForwardedHeader::XForwardedFor };
        let key = PeerIp::from_config(&cfg).unwrap();
        let req = request(peer, &headers);
        let got = key.extract(&req).unwrap();
        let all: String = req.headers().get_all(name).iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect();
        // IPv6 may be spelled in other ways (case, zeros); an IPv4 key is spelled as sent.
        prop_assert!(got == peer || got.is_ipv6() || all.contains(&got.to_string()),
            "{got} from {all:?}");
    }

    /// Trusted-proxy networks and prefixes from configuration: any text is a network or a
    /// `ConfigError`, never a panic; a network contains its own address.
    #[test]
    fn any_network_text_parses_or_is_refused(s in "\\PC{0,48}", v4 in any::<u8>(), v6 in any::<u8>()) {
        if let Ok(net) = s.parse::<Cidr>() {
            let addr = s.split('/').next().unwrap().trim().parse::<IpAddr>().unwrap();
            prop_assert!(net.contains(addr));
        }
        let mut cfg = PeerIpConfig::default();
        cfg.trusted_proxies = vec![s.clone()];
        cfg.ipv4_prefix = v4;
        cfg.ipv6_prefix = v6;
        match PeerIp::from_config(&cfg) {
            Ok(_) => prop_assert!((1..=32).contains(&v4) && (1..=128).contains(&v6)),
            Err(e) => prop_assert!(
                ["trusted_proxies[0]", "ipv4_prefix", "ipv6_prefix"].contains(&e.field()),
                "{}", e.field()),
        }
    }

    /// Header and gRPC metadata keys: any name is accepted or refused without panic; any value
    /// gives a key, the same value the same key (binary `-bin` entries are refused).
    #[test]
    fn header_and_metadata_keys_take_any_name_and_value(
        name in prop_oneof!["[a-z0-9_.-]{0,12}(-bin)?", "\\PC{0,16}"],
        a in prop::collection::vec(any::<u8>(), 0..64),
        b in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let peer: IpAddr = [192, 0, 2, 1].into();
        if let Ok(k) = HeaderKey::new(&name) {
            let (ra, rb) = (request(peer, &[(name.as_str(), a.clone())]), request(peer, &[(name.as_str(), b.clone())]));
            let (ka, kb) = (k.extract(&ra), k.extract(&rb));
            prop_assert_eq!(ka.is_some(), ra.headers().contains_key(name.as_str()));
            if ra.headers().get(name.as_str()) == rb.headers().get(name.as_str()) {
                prop_assert_eq!(ka, kb);
            }
        }
        if let Ok(k) = GrpcMetadataKey::new(&name) {
            let r = request(peer, &[(name.as_str(), a)]);
            let _ = k.extract(&r);
            prop_assert!(!name.starts_with("grpc-") && !name.is_empty());
            prop_assert!(!name.to_ascii_lowercase().ends_with("-bin"));
        }
    }
}

/// A binary metadata entry (`-bin`) travels base64-encoded, padded or not, so one value has
/// several spellings and would be several budgets: such a key is refused, in any case, with the
/// same rule and field as in every degrade crate (degrade_core::key).
#[test]
fn binary_metadata_keys_are_refused_in_any_case() {
    for name in ["x-user-bin", "X-User-BIN", "a-Bin"] {
        let err = GrpcMetadataKey::new(name).unwrap_err();
        assert_eq!(err.field(), "metadata", "{name}");
    }
    assert!(GrpcMetadataKey::new("x-user").is_ok());
}

// ---------------------------------------------------------------------------------------------
// Configuration through serde
// ---------------------------------------------------------------------------------------------

/// JSON scalars a configuration file could hold: edge integers and floats, booleans, nulls,
/// and duration strings from sane to absurd.
fn scalar() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{Value, json};
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop::sample::select(vec![
            0u64,
            1,
            2,
            3,
            10,
            1000,
            1 << 32,
            1 << 53,
            1 << 62,
            u64::MAX
        ])
        .prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<i64>().prop_map(|n| json!(n)),
        prop::sample::select(vec![
            0.0f64,
            -0.0,
            0.5,
            1.0,
            1e-300,
            1e300,
            -1.0,
            f64::MAX,
            f64::MIN_POSITIVE
        ])
        .prop_map(|n| json!(n)),
        prop::sample::select(vec![
            "0s",
            "1ns",
            "1ms",
            "1s",
            "20ms",
            "1h",
            "365days",
            "366days",
            "1y",
            "100y",
            "584y",
            "585y",
            "1000000000y",
            "18446744073709551615ns",
            "18446744073709551616ns",
            "99999999999999999999999999s",
            "-1s",
            "1.5s",
            "",
            "s",
            "1 second",
            "1e9s",
        ])
        .prop_map(|s| json!(s)),
        "\\PC{0,24}".prop_map(Value::String),
    ]
}

/// An object with some of `fields` (and sometimes an unknown one) set to arbitrary scalars,
/// or nested objects for the nested fields.
fn object(
    fields: &'static [&'static str],
    nested: BoxedStrategy<serde_json::Value>,
) -> impl Strategy<Value = serde_json::Value> {
    let value = prop_oneof![4 => scalar(), 1 => nested];
    prop::collection::vec((prop::sample::select(fields), value), 0..6).prop_map(|kv| {
        serde_json::Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    })
}

const RATE_FIELDS: &[&str] = &[
    "quota",
    "period",
    "burst",
    "cost",
    "max_wait",
    "max_waiters",
    "level_scale",
    "unknown",
];
const SCALE_FIELDS: &[&str] = &["normal", "light", "moderate", "heavy", "emergency"];

fn rate_json() -> impl Strategy<Value = serde_json::Value> {
    object(
        RATE_FIELDS,
        object(SCALE_FIELDS, Just(serde_json::Value::Null).boxed()).boxed(),
    )
}

/// Runs a few requests through a layer built from `cfg`, moving a manual clock by arbitrary
/// amounts (up to the clock's 584-year saturation): every answer is an admission or a typed
/// rejection whose `retry_after` is finite and within the configuration's own bounds.
fn exercise(cfg: RateLimitConfig, steps: &[(u64, u64)]) -> Result<(), TestCaseError> {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder(cfg.clone())
        .clock(clock.clone())
        .cost(|n: &u64| *n)
        .keyed(
            degrade_ratelimit::key::from_fn(|n: &u64| Some(*n % 3)),
            KeysConfig { max_keys: 2 },
        )
        .build()
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(|_: u64| {
        std::future::ready(Ok::<_, Infallible>(()))
    }));
    // The longest any retry_after may be: validation keeps every level's burst tolerance
    // within 2^62 ns (about 146 years), and waiting is off here. Never u64::MAX (584 years,
    // the mark of an overflow).
    let bound = Duration::from_nanos(1 << 62);
    for &(dt, cost) in steps {
        clock.advance(Duration::from_nanos(dt));
        let fut = svc.ready().now_or_never().unwrap().unwrap().call(cost);
        let out = fut
            .now_or_never()
            .expect("decided at once (waiting is off)");
        if let Err(e) = out {
            let r = e.downcast_ref::<RateLimited>().unwrap();
            if let Some(w) = r.retry_after {
                prop_assert!(w > Duration::ZERO && w <= bound, "{r:?}");
            }
            prop_assert!(r.cause != Cause::FleetUnavailable);
        }
    }
    let s = layer.snapshot();
    prop_assert_eq!(s.offered(), steps.len() as u64);
    prop_assert!(s.keys <= 2);
    Ok(())
}

fn steps() -> impl Strategy<Value = Vec<(u64, u64)>> {
    prop::collection::vec(
        (
            prop_oneof![
                Just(0u64),
                0u64..1_000_000_000,
                Just(u64::MAX / 4),
                Just(u64::MAX)
            ],
            prop_oneof![Just(0u64), 1u64..4, Just(u64::MAX)],
        ),
        0..12,
    )
}

proptest! {
    #![proptest_config(config(512))]

    /// Arbitrary JSON into `RateLimitConfig`: a serde error or a value; the value validates
    /// or names a field; a valid one runs without panic at any clock reading and cost.
    #[test]
    fn any_rate_limit_json_is_a_config_or_an_error(json in rate_json(), steps in steps()) {
        if let Ok(cfg) = serde_json::from_value::<RateLimitConfig>(json) {
            match cfg.validate() {
                Ok(()) => {
                    // Waiting for hours on a manual clock cannot be checked at once; the
                    // decision itself is what is under test.
                    let mut cfg = cfg;
                    cfg.max_wait = Duration::ZERO;
                    exercise(cfg, &steps)?;
                }
                Err(e) => prop_assert!(
                    RATE_FIELDS.iter().any(|f| e.field().starts_with(f)), "{}", e.field()),
            }
        }
    }

    /// Arbitrary bytes as a configuration file, for every configuration type.
    #[test]
    fn any_bytes_are_a_config_or_an_error(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(c) = serde_json::from_slice::<RateLimitConfig>(&bytes) { let _ = c.validate(); }
        if let Ok(c) = serde_json::from_slice::<KeysConfig>(&bytes) { let _ = c.validate(); }
        if let Ok(c) = serde_json::from_slice::<LevelScale>(&bytes) {
            let _ = RateLimitConfig::default().level_scale(c).validate();
        }
        if let Ok(c) = serde_json::from_slice::<PeerIpConfig>(&bytes) { let _ = PeerIp::from_config(&c); }
        #[cfg(feature = "redis")]
        if let Ok(c) = serde_json::from_slice::<degrade_ratelimit::fleet::FleetConfig>(&bytes) {
            let _ = c.validate();
        }
    }

    /// Arbitrary JSON into `KeysConfig` and `PeerIpConfig`.
    #[test]
    fn any_keys_and_peer_ip_json_is_a_config_or_an_error(
        keys in object(&["max_keys", "other"], Just(serde_json::Value::Null).boxed()),
        peer in object(&["trusted_proxies", "header", "ipv4_prefix", "ipv6_prefix"],
            prop::collection::vec(scalar(), 0..3).prop_map(serde_json::Value::Array).boxed()),
    ) {
        if let Ok(k) = serde_json::from_value::<KeysConfig>(keys) {
            match k.validate() {
                Ok(()) => prop_assert!(k.max_keys >= 1 && k.max_keys <= 1 << 32),
                Err(e) => prop_assert_eq!(e.field(), "max_keys"),
            }
        }
        if let Ok(p) = serde_json::from_value::<PeerIpConfig>(peer) {
            let _ = PeerIp::from_config(&p);
        }
    }
}

#[cfg(feature = "redis")]
proptest! {
    #![proptest_config(config(256))]

    /// Arbitrary JSON into `FleetConfig` (with a nested quota and fallback policy).
    #[test]
    fn any_fleet_json_is_a_config_or_an_error(
        json in object(
            &["url", "prefix", "name", "timeout", "quota", "unavailable", "local_keys", "fail_fast_after"],
            prop_oneof![
                rate_json().boxed(),
                Just(serde_json::json!("fail_open")),
                Just(serde_json::json!("fail_closed")),
                scalar().prop_map(|s| serde_json::json!({ "local": { "share": s } })),
                scalar().prop_map(|s| serde_json::json!({ "max_keys": s })),
            ].boxed(),
        ),
    ) {
        if let Ok(c) = serde_json::from_value::<degrade_ratelimit::fleet::FleetConfig>(json) {
            let _ = c.validate();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Durations from configuration
// ---------------------------------------------------------------------------------------------

/// The extremes of every duration and count: refused with the field named, or accepted and
/// then decided without panic or spin, however far the clock moves.
#[test]
fn extreme_durations_and_counts_never_panic_or_spin() {
    for period in [
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_secs(365 * 86_400),
        Duration::MAX,
    ] {
        for quota in [1, 1000, u64::MAX] {
            for burst in [1, u64::MAX / 2, u64::MAX] {
                for max_wait in [
                    Duration::ZERO,
                    Duration::from_secs(365 * 86_400),
                    Duration::MAX,
                ] {
                    let cfg = RateLimitConfig::per(quota, period)
                        .burst(burst)
                        .wait(max_wait, u32::MAX);
                    match cfg.validate() {
                        Ok(()) => {
                            let mut cfg = cfg;
                            cfg.max_wait = Duration::ZERO;
                            exercise(cfg, &[(0, 1), (u64::MAX, 1), (u64::MAX, u64::MAX), (0, 1)])
                                .unwrap();
                        }
                        Err(e) => assert!(
                            ["period", "quota", "burst", "max_wait"].contains(&e.field()),
                            "{}",
                            e.field()
                        ),
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Redis replies
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "redis")]
mod redis_replies {
    use super::*;
    use degrade_ratelimit::fleet::{FleetConfig, FleetLayer, Unavailable};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A RESP reply, structured or raw.
    fn resp() -> impl Strategy<Value = Vec<u8>> {
        let int = prop_oneof![Just(0i64), Just(1), Just(-1), any::<i64>()];
        let leaf = prop_oneof![
            int.clone().prop_map(|n| format!(":{n}\r\n").into_bytes()),
            Just(b"$-1\r\n".to_vec()),
            Just(b"*-1\r\n".to_vec()),
            Just(b"_\r\n".to_vec()),
            Just(b"+OK\r\n".to_vec()),
            Just(b"-ERR boom\r\n".to_vec()),
            Just(b"-NOSCRIPT No matching script\r\n".to_vec()),
            "[ -~]{0,8}".prop_map(|s| format!("${}\r\n{s}\r\n", s.len()).into_bytes()),
            Just(b",3.5\r\n".to_vec()),
            Just(b"#t\r\n".to_vec()),
            Just(b"(12345678901234567890123\r\n".to_vec()),
            // Lengths far beyond what follows: the reply never completes.
            Just(b"*999999999999\r\n".to_vec()),
            Just(b"$999999999999\r\n".to_vec()),
            Just(b"*9223372036854775807\r\n:1\r\n".to_vec()),
            Just(b"%2\r\n:1\r\n:2\r\n".to_vec()),
        ];
        let structured = leaf.prop_recursive(2, 8, 3, |inner| {
            prop::collection::vec(inner, 0..3).prop_map(|items| {
                let mut out = format!("*{}\r\n", items.len()).into_bytes();
                for i in items {
                    out.extend(i);
                }
                out
            })
        });
        prop_oneof![
            3 => structured,
            2 => (int.clone(), int).prop_map(|(a, b)| format!("*2\r\n:{a}\r\n:{b}\r\n").into_bytes()),
            1 => prop::collection::vec(any::<u8>(), 0..48),
        ]
    }

    /// Reads one RESP command (an array of bulk strings) from `buf`; returns its first word and
    /// how many bytes it used, or `None` if it is not complete yet.
    fn command(buf: &[u8]) -> Option<(String, usize)> {
        fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
            let end = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
            Some((&buf[at..end], end + 2))
        }
        let (head, mut at) = line(buf, 0)?;
        let n: usize = std::str::from_utf8(head.strip_prefix(b"*")?)
            .ok()?
            .parse()
            .ok()?;
        let mut first = String::new();
        for i in 0..n {
            let (len, next) = line(buf, at)?;
            let len: usize = std::str::from_utf8(len.strip_prefix(b"$")?)
                .ok()?
                .parse()
                .ok()?;
            if buf.len() < next + len + 2 {
                return None;
            }
            if i == 0 {
                first = String::from_utf8_lossy(&buf[next..next + len]).to_uppercase();
            }
            at = next + len + 2;
        }
        Some((first, at))
    }

    /// A server that answers `+OK` to connection set-up and `reply` to every script call.
    async fn fake_redis(reply: Vec<u8>) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let reply = reply.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while let Some((cmd, used)) = command(&buf) {
                            buf.drain(..used);
                            let out: &[u8] = match cmd.as_str() {
                                "EVALSHA" | "EVAL" => &reply,
                                "SCRIPT" => b"$40\r\n0000000000000000000000000000000000000000\r\n",
                                "PING" => b"+PONG\r\n",
                                _ => b"+OK\r\n",
                            };
                            if sock.write_all(out).await.is_err() {
                                return;
                            }
                        }
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        if buf.len() > 1 << 20 {
                            return;
                        }
                    }
                });
            }
        });
        port
    }

    proptest! {
        #![proptest_config(config(48))]

        /// Whatever a server pretending to be Redis answers to the GCRA script, each decision
        /// ends within the timeout (with the server's answer, or with the fallback policy),
        /// never panics, and is counted exactly once; a rejection's `retry_after` never
        /// exceeds the burst.
        #[test]
        fn any_reply_from_redis_is_a_decision_or_a_fallback(reply in resp()) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let port = fake_redis(reply).await;
                let mut cfg = FleetConfig::default();
                cfg.url = format!("redis://127.0.0.1:{port}");
                cfg.timeout = Duration::from_millis(50);
                cfg.quota = RateLimitConfig::per(10, Duration::from_secs(1));
                cfg.unavailable = Unavailable::FailClosed;
                cfg.fail_fast_after = 1000;
                let layer = FleetLayer::new(cfg).unwrap();
                let mut svc = layer.layer(tower::service_fn(|()| async { Ok::<_, Infallible>(()) }));
                for _ in 0..2 {
                    let out = tokio::time::timeout(Duration::from_secs(5), async {
                        svc.ready().await.unwrap().call(()).await
                    })
                    .await
                    .expect("a decision within the timeout");
                    if let Err(e) = out {
                        let r = e.downcast_ref::<RateLimited>().expect("a RateLimited");
                        match r.cause {
                            Cause::OverQuota => prop_assert!(
                                r.retry_after.unwrap() <= Duration::from_secs(1)),
                            Cause::FleetUnavailable => {}
                            c => prop_assert!(false, "unexpected cause {c:?}"),
                        }
                    }
                }
                let s = layer.snapshot();
                prop_assert_eq!(s.offered(), 2);
                prop_assert_eq!(s.fallbacks(), s.redis_failures + s.failed_fast);
                Ok(())
            })?;
        }
    }
}
