//! The admit path allocates nothing: a counting global allocator measures every allocation made
//! while admitted requests go through the `DegradeLayer`, and while latencies are recorded into
//! an `AtomicHistogram`.
//!
//! The counter is process-wide, so this test runs without libtest's harness (`harness = false`
//! in Cargo.toml): no runner thread exists that could allocate inside a measured region.

use degrade_core::priority::HeaderPriority;
use degrade_core::{Controller, DegradeLayer, Level, Priority};
use futures_util::FutureExt;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use std::convert::Infallible;
use std::future::ready;
use tower::{Layer, Service, ServiceExt};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn call_all<S, R>(svc: &mut S, reqs: Vec<R>) -> (usize, usize)
where
    S: Service<R>,
{
    let (mut ok, mut err) = (0, 0);
    for req in reqs {
        svc.ready().now_or_never().unwrap().ok().unwrap();
        match svc.call(req).now_or_never().unwrap() {
            Ok(_) => ok += 1,
            Err(_) => err += 1,
        }
    }
    (ok, err)
}

fn main() {
    admit_path_allocates_nothing();
    histogram_record_allocates_nothing();
    println!("alloc: 2 passed, 0 failed");
}

fn histogram_record_allocates_nothing() {
    use degrade_core::histogram::{AtomicHistogram, Layout};
    use std::time::Duration;
    let h = AtomicHistogram::per_cpu(Layout::FINE);
    h.record(Duration::from_millis(1)); // warm up the thread's row index
    let region = Region::new(GLOBAL);
    for i in 0..1000u64 {
        h.record(Duration::from_nanos(i * 7_919));
    }
    let change = region.change();
    assert_eq!(h.count(), 1001);
    assert_eq!(change.allocations, 0, "histogram record: {change:?}");
}

fn admit_path_allocates_nothing() {
    let controller = Controller::new(Default::default()).unwrap();

    // Error mode with a closure classifier; full and fractional shares.
    let layer = DegradeLayer::builder(controller.handle())
        .prioritize(|n: &u32| {
            if n.is_multiple_of(2) {
                Priority::Low
            } else {
                Priority::Critical
            }
        })
        .build()
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(|n: u32| ready(Ok::<_, Infallible>(n))));
    let reqs: Vec<u32> = (0..1000).collect();
    call_all(&mut svc, vec![1, 2, 3]); // warm up thread-locals
    let region = Region::new(GLOBAL);
    let (ok, err) = call_all(&mut svc, reqs);
    let change = region.change();
    assert_eq!((ok, err), (1000, 0));
    assert_eq!(change.allocations, 0, "admit (Normal level): {change:?}");
    assert_eq!(change.reallocations, 0);
    // That was the default layer's adaptive limit: every request took and gave back a slot,
    // the first ones timed (the window needed samples), and the law closed windows on them.
    let snap = layer.snapshot();
    let limit = snap
        .limit
        .expect("the default layer has the adaptive limit");
    assert_eq!(limit.in_flight, 0);
    assert_eq!(snap.admitted(), 1003);

    // Light: Low is admitted at 50 %, Critical in full. Count only admitted requests: the shed
    // ones box their `Shed` error, which is the reject path.
    controller.pin(Level::Light);
    let reqs: Vec<u32> = (0..1000).map(|i| i * 2 + 1).collect(); // all Critical
    let region = Region::new(GLOBAL);
    let (ok, _) = call_all(&mut svc, reqs);
    let change = region.change();
    assert_eq!(ok, 1000);
    assert_eq!(change.allocations, 0, "admit (Light level): {change:?}");

    // The level's shares (no limit) after a live policy change: the shares are atomic words,
    // read with no lock and no allocation.
    let shares = DegradeLayer::builder(controller.handle())
        .admission(degrade_core::degrade::Admission::LevelShares)
        .prioritize(|_: &u32| Priority::High)
        .build()
        .unwrap();
    // The default Heavy admits half of High; the new policy all of it.
    let mut policy = degrade_core::Policy::default();
    policy.heavy.admit.high = 1.0;
    shares.set_policy(&policy).unwrap();
    controller.pin(Level::Heavy);
    let mut svc = shares.layer(tower::service_fn(|n: u32| ready(Ok::<_, Infallible>(n))));
    call_all(&mut svc, vec![1, 2, 3]);
    let reqs: Vec<u32> = (0..1000).collect();
    let region = Region::new(GLOBAL);
    let (ok, err) = call_all(&mut svc, reqs);
    let change = region.change();
    assert_eq!((ok, err), (1000, 0));
    assert_eq!(
        change.allocations, 0,
        "admit (level shares after set_policy): {change:?}"
    );

    // HTTP mode with a header classifier: requests are built before measuring.
    controller.pin(Level::Normal);
    let layer = DegradeLayer::builder(controller.handle())
        .prioritize(HeaderPriority::new("x-priority", Priority::Normal).unwrap())
        .build()
        .unwrap()
        .http();
    let mut svc = layer.layer(tower::service_fn(|_: http::Request<()>| {
        ready(Ok::<_, Infallible>(http::Response::new(())))
    }));
    let reqs: Vec<_> = (0..1000)
        .map(|i| {
            http::Request::builder()
                .header("x-priority", if i % 2 == 0 { "low" } else { "critical" })
                .body(())
                .unwrap()
        })
        .collect();
    call_all(
        &mut svc,
        vec![
            http::Request::builder()
                .header("x-priority", "low")
                .body(())
                .unwrap(),
        ],
    );
    let region = Region::new(GLOBAL);
    let (ok, _) = call_all(&mut svc, reqs);
    let change = region.change();
    assert_eq!(ok, 1000);
    assert_eq!(change.allocations, 0, "admit (HTTP mode): {change:?}");
}
