//! The admit path allocates nothing: a counting global allocator measures every allocation
//! made while admitted requests go through the layer (global budget, known keys, HTTP mode).
//!
//! The file runs without libtest's harness (`harness = false`): the counting allocator is
//! global, and the harness's own threads (printing the test's name, waiting for it) could
//! allocate while it measures.

#![cfg_attr(not(feature = "http"), allow(unused_imports, dead_code))]

use degrade_core::ManualClock;
#[cfg(feature = "http")]
use degrade_ratelimit::key::HeaderKey;
use degrade_ratelimit::{KeysConfig, RateLimitConfig, RateLimitLayer, key};
use futures_util::FutureExt;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use std::convert::Infallible;
use std::future::ready;
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn call_all<S, R>(svc: &mut S, reqs: Vec<R>) -> usize
where
    S: Service<R>,
{
    let mut ok = 0;
    for req in reqs {
        svc.ready().now_or_never().unwrap().ok().unwrap();
        if svc.call(req).now_or_never().unwrap().is_ok() {
            ok += 1;
        }
    }
    ok
}

fn main() {
    #[cfg(feature = "http")]
    {
        admit_path_allocates_nothing();
        println!("test admit_path_allocates_nothing ... ok");
    }
    #[cfg(not(feature = "http"))]
    println!("test admit_path_allocates_nothing ... skipped (needs feature `http`)");
}

#[cfg(feature = "http")]
fn admit_path_allocates_nothing() {
    let big = RateLimitConfig::per(1_000_000, Duration::from_secs(1)).burst(1_000_000);

    // Global budget, error mode, with a cost function.
    let layer = RateLimitLayer::builder(big.clone())
        .clock(ManualClock::new())
        .cost(|n: &u64| *n % 3)
        .build()
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(|n: u64| ready(Ok::<_, Infallible>(n))));
    call_all(&mut svc, vec![1, 2, 3]);
    let reqs: Vec<u64> = (0..1000).collect();
    let region = Region::new(GLOBAL);
    let ok = call_all(&mut svc, reqs);
    let change = region.change();
    assert_eq!(ok, 1000);
    assert_eq!(change.allocations, 0, "global admit: {change:?}");
    assert_eq!(change.reallocations, 0);

    // Keyed by a closure: known keys are admitted without allocating.
    let layer = RateLimitLayer::builder(big.clone())
        .clock(ManualClock::new())
        .keyed(key::from_fn(|n: &u64| Some(*n % 16)), KeysConfig::default())
        .build()
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(|n: u64| ready(Ok::<_, Infallible>(n))));
    call_all(&mut svc, (0..16).collect());
    let reqs: Vec<u64> = (0..1000).collect();
    let region = Region::new(GLOBAL);
    let ok = call_all(&mut svc, reqs);
    let change = region.change();
    assert_eq!(ok, 1000);
    assert_eq!(change.allocations, 0, "keyed admit: {change:?}");

    // HTTP mode keyed by a header (the key is a cheap clone of the header's shared bytes).
    let layer = RateLimitLayer::builder(big)
        .clock(ManualClock::new())
        .keyed(HeaderKey::new("x-tenant").unwrap(), KeysConfig::default())
        .build()
        .unwrap()
        .http();
    let mut svc = layer.layer(tower::service_fn(|_: http::Request<()>| {
        ready(Ok::<_, Infallible>(http::Response::new(())))
    }));
    let req = |i: usize| {
        http::Request::builder()
            .header(
                "x-tenant",
                if i.is_multiple_of(2) {
                    "acme"
                } else {
                    "globex"
                },
            )
            .body(())
            .unwrap()
    };
    call_all(&mut svc, vec![req(0), req(1)]);
    let reqs: Vec<_> = (0..1000).map(req).collect();
    let region = Region::new(GLOBAL);
    let ok = call_all(&mut svc, reqs);
    let change = region.change();
    assert_eq!(ok, 1000);
    assert_eq!(change.allocations, 0, "HTTP keyed admit: {change:?}");
}
