//! One million distinct keys through a store capped at 100,000: the store never holds more
//! than its cap, its allocated slots stay bounded, and the process's resident memory is
//! reported.
//!
//! One test in this file, so the RSS figure is this test's own.

use degrade_core::ManualClock;
use degrade_ratelimit::error::Cause;
use degrade_ratelimit::{KeysConfig, RateLimitConfig, RateLimitLayer, key};
use futures_util::FutureExt;
use std::convert::Infallible;
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn a_million_distinct_keys_stay_within_the_cap() {
    const CAP: usize = 100_000;
    const KEYS: u64 = 1_000_000;
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder(RateLimitConfig::per(10, Duration::from_secs(1)).burst(2))
        .clock(clock.clone())
        .keyed(
            key::from_fn(|k: &u64| Some(*k)),
            KeysConfig { max_keys: CAP },
        )
        .build()
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(|k: u64| {
        std::future::ready(Ok::<_, Infallible>(k))
    }));
    let mut call = |k: u64| {
        svc.ready()
            .now_or_never()
            .unwrap()
            .unwrap()
            .call(k)
            .now_or_never()
            .unwrap()
    };
    let rss_before = rss_kib();

    // Time moves 1 µs per request, so a key recovers (100 ms per unit) after 100,000 more
    // requests: the store churns through recovered keys and refuses new keys only while every
    // key it holds is still mid-budget.
    let mut max_len = 0;
    let (mut admitted, mut at_cap) = (0u64, 0u64);
    for k in 0..KEYS {
        clock.advance(Duration::from_micros(1));
        match call(k) {
            Ok(_) => admitted += 1,
            Err(e) => {
                let r = e.downcast_ref::<degrade_ratelimit::RateLimited>().unwrap();
                assert_eq!(r.cause, Cause::KeyCapacity);
                at_cap += 1;
            }
        }
        if k % 10_000 == 0 {
            max_len = max_len.max(layer.snapshot().keys);
        }
    }
    let snap = layer.snapshot();
    max_len = max_len.max(snap.keys);
    let (slots, cap) = layer.key_slots();
    let rss_after = rss_kib();
    println!(
        "1,000,000 keys, cap {cap}: max held {max_len}, admitted {admitted}, refused at cap {at_cap}, \
         table slots {slots}, RSS {rss_before:?} KiB -> {rss_after:?} KiB"
    );
    assert!(cap <= CAP);
    assert!(max_len <= CAP, "held {max_len} keys");
    assert_eq!(admitted + at_cap, KEYS);
    assert_eq!(snap.offered(), KEYS);
    assert!(
        admitted > KEYS / 2,
        "recovered keys are dropped, so most new keys fit"
    );
    // Each shard holds at most its share of the cap, one allocated entry per key (the
    // lock-free maps do not expose their tables' size: the RSS check below bounds those).
    assert!(slots <= 4 * CAP, "{slots} slots");
    if let (Some(a), Some(b)) = (rss_before, rss_after) {
        // 100,000 entries of 24 bytes (+ control bytes) are a few MiB; a million would be ~40.
        assert!(b.saturating_sub(a) < 16 * 1024, "RSS grew {} KiB", b - a);
    }

    // Frozen time: every held key is mid-budget, so new keys are refused, never stored.
    let before = layer.snapshot().keys;
    for k in KEYS..KEYS + 200_000 {
        let _ = call(k);
    }
    assert!(layer.snapshot().keys <= CAP);
    assert!(layer.snapshot().keys >= before);
}
