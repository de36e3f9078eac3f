//! `PeerIp` through the layer: which requests share a budget.
#![cfg(feature = "http")]

use degrade_core::ManualClock;
use degrade_ratelimit::key::{ForwardedHeader, KeyExtractor, PeerIp, PeerIpConfig};
use degrade_ratelimit::{KeysConfig, RateLimitConfig, RateLimitLayer};
use futures_util::FutureExt;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

fn req(peer: &str, headers: &[(&str, &str)]) -> http::Request<()> {
    let mut b = http::Request::builder();
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let mut r = b.body(()).unwrap();
    r.extensions_mut()
        .insert(SocketAddr::new(peer.parse().unwrap(), 40_000));
    r
}

/// Sends each request through one layer with a budget of one per minute per key; returns
/// which were admitted.
fn admitted(key: PeerIp, reqs: Vec<http::Request<()>>) -> Vec<bool> {
    let layer = RateLimitLayer::builder(RateLimitConfig::per(1, Duration::from_secs(60)))
        .clock(ManualClock::new())
        .keyed(key, KeysConfig::default())
        .build()
        .unwrap()
        .http();
    let mut svc = layer.layer(tower::service_fn(|_: http::Request<()>| {
        std::future::ready(Ok::<_, Infallible>(http::Response::new(())))
    }));
    reqs.into_iter()
        .map(|r| {
            let res = svc
                .ready()
                .now_or_never()
                .unwrap()
                .unwrap()
                .call(r)
                .now_or_never()
                .unwrap()
                .unwrap();
            res.status() == 200
        })
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn ipv6_clients_rotating_addresses_within_a_64_share_one_budget() {
    let out = admitted(
        PeerIp::new(),
        vec![
            req("2001:db8:1:2::1", &[]),
            req("2001:db8:1:2:dead:beef:0:7", &[]), // same /64: over budget
            req("2001:db8:1:3::1", &[]),            // the next /64: its own budget
            req("::ffff:192.0.2.1", &[]),           // IPv4-mapped: keyed as IPv4
            req("192.0.2.1", &[]),
        ],
    );
    assert_eq!(out, [true, false, true, true, false]);
}

#[test]
fn the_ipv6_prefix_is_configurable() {
    let mut cfg = PeerIpConfig::default();
    cfg.ipv6_prefix = 128;
    let out = admitted(
        PeerIp::from_config(&cfg).unwrap(),
        vec![req("2001:db8:1:2::1", &[]), req("2001:db8:1:2::2", &[])],
    );
    assert_eq!(out, [true, true]);
    cfg.ipv6_prefix = 48;
    cfg.ipv4_prefix = 24;
    let out = admitted(
        PeerIp::from_config(&cfg).unwrap(),
        vec![
            req("2001:db8:1:2::1", &[]),
            req("2001:db8:1:ffff::1", &[]),
            req("192.0.2.1", &[]),
            req("192.0.2.200", &[]),
        ],
    );
    assert_eq!(out, [true, false, true, false]);
    for (v4, v6, field) in [(0, 64, "ipv4_prefix"), (33, 64, "ipv4_prefix")]
        .into_iter()
        .chain([(32, 0, "ipv6_prefix"), (32, 129, "ipv6_prefix")])
    {
        cfg.ipv4_prefix = v4;
        cfg.ipv6_prefix = v6;
        assert_eq!(PeerIp::from_config(&cfg).unwrap_err().field(), field);
    }
}

/// Issue 14: entries with a port or in brackets failed to parse, so every client behind such
/// a proxy shared the proxy's budget.
#[test]
fn forwarded_for_entries_with_ports_or_brackets_name_their_client() {
    let key = PeerIp::behind(["10.0.0.0/8"]).unwrap();
    let xff = |v: &str| req("10.0.0.1", &[("x-forwarded-for", v)]);
    assert_eq!(
        key.extract(&xff("203.0.113.9:5678")),
        Some(ip("203.0.113.9"))
    );
    assert_eq!(
        key.extract(&xff("[2001:db8::1]:443, 10.0.0.7")),
        Some(ip("2001:db8::"))
    );
    assert_eq!(key.extract(&xff("[2001:db8::1]")), Some(ip("2001:db8::")));
    let out = admitted(
        key,
        vec![
            xff("203.0.113.9:5678"),
            xff("198.51.100.4:5678"), // another client behind the same proxy
            xff("203.0.113.9:6000"),  // the first client, another source port
        ],
    );
    assert_eq!(out, [true, true, false]);
}

#[test]
fn the_walk_stops_at_the_first_untrusted_or_unreadable_entry_from_the_right() {
    let key = PeerIp::behind(["10.0.0.0/8"]).unwrap();
    let xff = |vs: &[&str]| {
        let h: Vec<_> = vs.iter().map(|v| ("x-forwarded-for", *v)).collect();
        key.extract(&req("10.0.0.1", &h)).unwrap()
    };
    // The spoofed left-most entry is ignored: the right-most untrusted one is the client.
    assert_eq!(xff(&["1.1.1.1, 203.0.113.9, 10.0.0.2"]), ip("203.0.113.9"));
    // Several header lines are one list, top to bottom.
    assert_eq!(
        xff(&["1.1.1.1", "203.0.113.9", "10.0.0.2"]),
        ip("203.0.113.9")
    );
    // Every entry trusted: the left-most.
    assert_eq!(xff(&["10.0.0.9, 10.0.0.2"]), ip("10.0.0.9"));
    // An unreadable entry: the last address a trusted proxy vouched for.
    assert_eq!(xff(&["203.0.113.9, garbage, 10.0.0.2"]), ip("10.0.0.2"));
    assert_eq!(xff(&["203.0.113.9, unknown"]), ip("10.0.0.1"));
    // No header: the peer.
    assert_eq!(xff(&[]), ip("10.0.0.1"));
    // An untrusted peer's header is ignored.
    let spoof = req("198.51.100.1", &[("x-forwarded-for", "203.0.113.9")]);
    assert_eq!(key.extract(&spoof), Some(ip("198.51.100.1")));
}

#[test]
fn the_forwarded_header_names_the_client_when_configured() {
    let mut cfg = PeerIpConfig::default();
    cfg.trusted_proxies = vec!["10.0.0.0/8".into(), "2001:db8:ffff::/48".into()];
    cfg.header = ForwardedHeader::Forwarded;
    let key = PeerIp::from_config(&cfg).unwrap();
    let fwd = |v: &str| {
        key.extract(&req(
            "10.0.0.1",
            &[("forwarded", v), ("x-forwarded-for", "1.1.1.1")],
        ))
        .unwrap()
    };
    assert_eq!(
        fwd(r#"for=192.0.2.60;proto=http;by=203.0.113.43"#),
        ip("192.0.2.60")
    );
    assert_eq!(
        fwd(r#"for="[2001:db8:cafe::17]:4711", for="[2001:db8:ffff::1]""#),
        ip("2001:db8:cafe::")
    );
    assert_eq!(fwd("for=192.0.2.60:8080, for=10.0.0.3"), ip("192.0.2.60"));
    assert_eq!(fwd(r#"for="_hidden", for=10.0.0.3"#), ip("10.0.0.3"));
    assert_eq!(fwd("proto=https"), ip("10.0.0.1"));
}
