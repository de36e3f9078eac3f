//! The `ObserveLayer`'s request path allocates nothing: a counting global allocator measures
//! every allocation made while requests go through it.
//!
//! This file holds a single test so no other test thread allocates while it measures.

use degrade_triggers::ObserveLayer;
use futures_util::FutureExt;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use std::future::ready;
use std::time::Duration;
use tower::{Layer, Service};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn observe_path_allocates_nothing() {
    let layer = ObserveLayer::builder()
        .slow(Duration::from_secs(1))
        .build()
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(|n: u32| {
        ready(if n.is_multiple_of(10) {
            Err("boom")
        } else {
            Ok(n)
        })
    }));
    // Warm up the thread-local shard index.
    let _ = svc.call(1).now_or_never().unwrap();

    // The allocator counts every thread of the process, and libtest's main thread allocates
    // lazily the first time it blocks waiting for this test, which can fall inside a region.
    // A per-request allocation would show in every attempt (thousands of them); a stray one
    // from another thread shows in one attempt at most, so one clean attempt of five is proof.
    let mut attempts = Vec::new();
    for _ in 0..5 {
        let region = Region::new(GLOBAL);
        for n in 0..10_000u32 {
            let _ = svc.call(n).now_or_never().unwrap();
        }
        // Cancelled calls too: the future is dropped unpolled.
        for n in 0..1_000u32 {
            drop(svc.call(n));
        }
        let change = region.change();
        attempts.push(change);
        if change.allocations == 0 && change.reallocations == 0 {
            break;
        }
    }
    let last = attempts.last().unwrap();
    assert_eq!(last.allocations, 0, "{attempts:?}");
    assert_eq!(last.reallocations, 0, "{attempts:?}");
    let n = attempts.len() as u64;
    let snap = layer.snapshot();
    assert_eq!(
        (snap.calls, snap.failures, snap.cancelled),
        (1 + n * 10_000, n * 1_000, n * 1_000)
    );
}
