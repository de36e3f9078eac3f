//! The routing path allocates nothing: a counting global allocator measures every allocation
//! made while requests go through the `Canary` (keyed and unkeyed, both arms, with the
//! override, and on the sampled path: most calls counted, not timed). The optional arm extension (`.http()`) is not measured: inserting into
//! `http::Extensions` allocates its map.
//!
//! The counter is process-wide, so this test runs without libtest's harness (`harness = false`
//! in Cargo.toml): no runner thread exists that could allocate inside a measured region.

use degrade_canary::key::{HeaderKey, HeaderOverride, from_fn};
use degrade_canary::{Canary, CanaryConfig, CanaryController, CanaryStep, Weight};
use futures_util::FutureExt;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use std::convert::Infallible;
use std::future::ready;
use std::time::Duration;
use tower::{Service, ServiceExt};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn call_all<S, R>(svc: &mut S, reqs: Vec<R>) -> usize
where
    S: Service<R>,
    S::Error: std::fmt::Debug,
{
    let mut ok = 0;
    for req in reqs {
        svc.ready().now_or_never().unwrap().unwrap();
        svc.call(req).now_or_never().unwrap().unwrap();
        ok += 1;
    }
    ok
}

fn main() {
    routing_allocates_nothing();
    println!("alloc: 1 passed, 0 failed");
}

fn routing_allocates_nothing() {
    // Global (Global), fractional weight: both arms and the stride.
    let mut svc = Canary::builder(
        tower::service_fn(|n: u64| ready(Ok::<_, Infallible>(n))),
        tower::service_fn(|n: u64| ready(Ok::<_, Infallible>(n))),
    )
    .weight(Weight::new(3_000).unwrap())
    .build()
    .unwrap();
    call_all(&mut svc, vec![1, 2, 3]); // warm up thread-locals
    let changes: Vec<_> = (0..3)
        .map(|_| {
            let reqs: Vec<u64> = (0..1_000).collect();
            let region = Region::new(GLOBAL);
            let ok = call_all(&mut svc, reqs);
            let change = region.change();
            assert_eq!(ok, 1_000);
            change
        })
        .collect();
    assert_eq!(svc.snapshot().canary.routed, 900);
    let least = changes
        .iter()
        .map(|c| c.allocations + c.reallocations)
        .min();
    assert_eq!(least, Some(0), "unkeyed: {changes:?}");

    // HTTP: header key and allow-listed override; requests are built before measuring.
    let mut svc = Canary::builder(
        tower::service_fn(|_: http::Request<()>| {
            ready(Ok::<_, Infallible>(http::Response::new(())))
        }),
        tower::service_fn(|_: http::Request<()>| {
            ready(Ok::<_, Infallible>(http::Response::new(())))
        }),
    )
    .weight(Weight::new(5_000).unwrap())
    .key(HeaderKey::new("x-user").unwrap())
    .force(
        HeaderOverride::new("x-canary", |r: &http::Request<()>| {
            r.headers().contains_key("x-tester")
        })
        .unwrap(),
    )
    .build()
    .unwrap();
    let reqs = |n: usize| -> Vec<http::Request<()>> {
        (0..n)
            .map(|i| {
                let mut b = http::Request::builder().header("x-user", i.to_string());
                if i.is_multiple_of(3) {
                    b = b.header("x-canary", "canary").header("x-tester", "1");
                }
                b.body(()).unwrap()
            })
            .collect()
    };
    call_all(&mut svc, reqs(3));
    let changes: Vec<_> = (0..3)
        .map(|_| {
            let batch = reqs(1_000);
            let region = Region::new(GLOBAL);
            let ok = call_all(&mut svc, batch);
            let change = region.change();
            assert_eq!(ok, 1_000);
            change
        })
        .collect();
    let least = changes
        .iter()
        .map(|c| c.allocations + c.reallocations)
        .min();
    assert_eq!(least, Some(0), "http: {changes:?}");

    // Keyed, under a controller that read heavy traffic: most calls only counted (the
    // sampled path), the key groups' exact counts beside them.
    let mut svc = Canary::builder(
        tower::service_fn(|n: u64| ready(Ok::<_, Infallible>(n))),
        tower::service_fn(|n: u64| ready(Ok::<_, Infallible>(n))),
    )
    .key(from_fn(|n: &u64| Some(*n % 1_000)))
    .build()
    .unwrap();
    let hour = Duration::from_secs(3_600);
    let cfg = CanaryConfig {
        steps: vec![CanaryStep::new(30.0, hour), CanaryStep::new(100.0, hour)],
        ..CanaryConfig::default()
    };
    let mut controller = CanaryController::builder(cfg, svc.handle())
        .build()
        .unwrap();
    call_all(&mut svc, (0..100_000).collect());
    controller.tick().now_or_never().unwrap().unwrap();
    let before = svc.snapshot();
    let changes: Vec<_> = (0..3)
        .map(|_| {
            let reqs: Vec<u64> = (0..16_000).collect();
            let region = Region::new(GLOBAL);
            let ok = call_all(&mut svc, reqs);
            let change = region.change();
            assert_eq!(ok, 16_000);
            change
        })
        .collect();
    let d = svc.snapshot().since(&before);
    assert!(
        d.stable.latency.count() * 8 < d.stable.samples(),
        "sampled: {} of {} timed",
        d.stable.latency.count(),
        d.stable.samples()
    );
    let least = changes
        .iter()
        .map(|c| c.allocations + c.reallocations)
        .min();
    assert_eq!(least, Some(0), "sampled: {changes:?}");
}
