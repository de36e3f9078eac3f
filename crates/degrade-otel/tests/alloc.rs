//! The sampler's decision allocates nothing when it drops a trace, and only the tracestate
//! entry when it keeps one. A counting global allocator measures it; the test runs without the
//! libtest harness so no other thread allocates inside the measured regions.

use degrade_core::{Controller, Level, Policy};
use degrade_otel::LevelSampler;
use opentelemetry::trace::{SpanKind, TraceId};
use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const N: u128 = 10_000;

fn main() {
    let controller = Controller::new(Default::default()).unwrap();
    let sampler = LevelSampler::new(controller.handle(), Policy::default())
        .unwrap()
        .record_errors_only_levels(false);

    // Emergency: 0.001, almost every decision is a drop.
    controller.pin(Level::Emergency);
    let mut kept = 0;
    let mut results = Vec::with_capacity(N as usize);
    let region = Region::new(GLOBAL);
    for i in 0..N {
        // Low 56 bits small: below the threshold, dropped.
        let r = sampler.should_sample(
            None,
            TraceId::from(i << 64 | i),
            "GET /",
            &SpanKind::Server,
            &[],
            &[],
        );
        kept += usize::from(r.decision == SamplingDecision::RecordAndSample);
        results.push(r);
    }
    let drop_stats = region.change();
    drop(results);
    assert_eq!(kept, 0);
    assert_eq!(
        drop_stats.allocations, 0,
        "drop path allocated: {drop_stats:?}"
    );
    println!(
        "drop path: {} allocations in {N} decisions ... ok",
        drop_stats.allocations
    );

    // Normal: everything kept; the `ot=th:0` tracestate entry is the only allocation.
    controller.pin(Level::Normal);
    let mut results = Vec::with_capacity(N as usize);
    let region = Region::new(GLOBAL);
    for i in 0..N {
        results.push(sampler.should_sample(
            None,
            TraceId::from(i + 1),
            "GET /",
            &SpanKind::Server,
            &[],
            &[],
        ));
    }
    let keep_stats = region.change();
    assert!(
        results
            .iter()
            .all(|r| r.decision == SamplingDecision::RecordAndSample)
    );
    drop(results);
    let per = keep_stats.allocations as f64 / N as f64;
    println!(
        "keep path: {:.1} allocations, {:.0} bytes per decision (the tracestate entry) ... ok",
        per,
        keep_stats.bytes_allocated as f64 / N as f64
    );
    assert!(per <= 3.0, "{keep_stats:?}");

    // Without the threshold in the tracestate, keeping allocates nothing either.
    let sampler = sampler.write_threshold(false);
    let mut results = Vec::with_capacity(N as usize);
    let region = Region::new(GLOBAL);
    for i in 0..N {
        results.push(sampler.should_sample(
            None,
            TraceId::from(i + 1),
            "GET /",
            &SpanKind::Server,
            &[],
            &[],
        ));
    }
    let bare = region.change();
    drop(results);
    assert_eq!(bare.allocations, 0, "{bare:?}");
    println!("keep path without threshold: 0 allocations ... ok");
}
