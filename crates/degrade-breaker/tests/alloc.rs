//! The admit path allocates nothing: a counting global allocator measures every allocation
//! made while calls pass through a closed breaker and are recorded.
//!
//! It runs without the libtest harness (`harness = false`): the harness's own main thread
//! sets up its channels while the test thread runs, and a global counting allocator sees those
//! allocations too. Alone in its process, the measurement counts the breaker only.

use degrade_breaker::{BreakerConfig, BreakerLayer, KeyedBreakerLayer, WindowConfig};
use degrade_core::key::from_fn;
use futures_util::FutureExt;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use std::convert::Infallible;
use std::future::ready;
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

/// A zero-sized error: boxing it into the `BoxError` allocates nothing, so every allocation
/// counted below would be the breaker's own.
#[derive(Debug)]
struct Down;

impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("down")
    }
}

impl std::error::Error for Down {}

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn call_all<S: Service<u32>>(svc: &mut S, n: u32) -> (usize, usize) {
    let (mut ok, mut err) = (0, 0);
    for i in 0..n {
        svc.ready().now_or_never().unwrap().ok().unwrap();
        match svc.call(i).now_or_never().unwrap() {
            Ok(_) => ok += 1,
            Err(_) => err += 1,
        }
    }
    (ok, err)
}

fn main() {
    closed_path_allocates_nothing();
    println!("closed_path_allocates_nothing ... ok");
    a_known_key_allocates_nothing();
    println!("a_known_key_allocates_nothing ... ok");
}

/// A keyed breaker's call for a key already in its map: the lock-free lookup and the closed
/// path allocate nothing (the first call of each key, which makes its breaker, is the warm-up).
fn a_known_key_allocates_nothing() {
    let layer =
        KeyedBreakerLayer::builder(BreakerConfig::default(), from_fn(|n: &u32| Some(n % 100)))
            .max_keys(1_000)
            .build()
            .unwrap();
    let mut svc = layer.layer(tower::service_fn(|n: u32| {
        ready(if n.is_multiple_of(8) {
            Err(Down)
        } else {
            Ok(n)
        })
    }));
    call_all(&mut svc, 200); // every key's breaker made, thread-locals warm
    assert_eq!(layer.len(), 100);
    let region = Region::new(GLOBAL);
    let (ok, err) = call_all(&mut svc, 1000);
    let change = region.change();
    assert_eq!((ok, err), (875, 125));
    assert_eq!(change.allocations, 0, "{change:?}");
    assert_eq!(change.reallocations, 0);
    assert_eq!(
        change.deallocations, 0,
        "nothing freed either: no eviction happened"
    );
    assert_eq!(layer.snapshot().inserted, 100);
}

fn closed_path_allocates_nothing() {
    let windows = [
        WindowConfig::Consecutive { failures: 5 },
        WindowConfig::Count { size: 100 },
        WindowConfig::Time {
            span: Duration::from_secs(10),
            buckets: 10,
        },
    ];
    for window in windows {
        let mut config = BreakerConfig::default();
        config.window = window;
        if !matches!(window, WindowConfig::Consecutive { .. }) {
            config.slow_call_duration = Some(Duration::from_secs(1));
        }
        let layer = BreakerLayer::new(config).unwrap();
        // Every fourth call fails: recorded, never enough to open.
        let mut svc = layer.layer(tower::service_fn(|n: u32| {
            ready(if n.is_multiple_of(4) {
                Err(Down)
            } else {
                Ok(n)
            })
        }));
        call_all(&mut svc, 8); // warm up thread-locals
        let region = Region::new(GLOBAL);
        let (ok, err) = call_all(&mut svc, 1000);
        let change = region.change();
        assert_eq!((ok, err), (750, 250));
        assert_eq!(change.allocations, 0, "{window:?}: {change:?}");
        assert_eq!(change.reallocations, 0);
    }

    // An infallible inner service: nothing at all.
    let layer = BreakerLayer::new(BreakerConfig::default()).unwrap();
    let mut svc = layer.layer(tower::service_fn(|n: u32| ready(Ok::<_, Infallible>(n))));
    call_all(&mut svc, 8);
    let region = Region::new(GLOBAL);
    assert_eq!(call_all(&mut svc, 1000), (1000, 0));
    assert_eq!(region.change().allocations, 0);
}
