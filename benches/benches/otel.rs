//! Cost of degrade-otel's `LevelSampler` decision next to the SDK's own samplers.
//!
//! Group `otel-sampler` (members are `BenchmarkId::new(who, case)`); one iteration is one
//! `should_sample` call for a root span (no parent) with a trace id from a counter, so the
//! decisions vary as in production:
//!
//! * `baseline/always-on`: the SDK's `Sampler::AlwaysOn` (no decision at all);
//! * `sdk/ratio-0.01` and `degrade/heavy-0.01`: the SDK's `TraceIdRatioBased(0.01)` and the
//!   level sampler at Heavy (policy ratio 0.01): 99 % of decisions drop (the degraded case);
//! * `sdk/ratio-1.0` and `degrade/normal-1.0`: every decision keeps; the level sampler also
//!   writes `ot=th:0` into the tracestate (its only allocation; `normal-1.0-no-threshold`
//!   without it);
//! * `sdk/parent-based-ratio-0.01` and `degrade/parent-based-heavy-0.01`: both under the SDK's
//!   `ParentBasedSampler`, as they are meant to run.
//!
//! The goal from the issue: the level sampler within 1.2× of the SDK's ratio sampler on the
//! drop path.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use degrade_core::{Controller, Level, Policy};
use degrade_otel::LevelSampler;
use opentelemetry::trace::{SpanKind, TraceId};
use opentelemetry_sdk::trace::{ParentBasedSampler, Sampler, ShouldSample};
use std::hint::black_box;

/// A trace id per iteration: a counter mixed so the low 56 bits are spread out.
fn next_id(i: &mut u128) -> TraceId {
    *i = i.wrapping_add(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834);
    TraceId::from(*i)
}

fn sampler(c: &mut Criterion) {
    let controller = Controller::new(Default::default()).expect("default ladder");
    let level = LevelSampler::new(controller.handle(), Policy::default()).expect("valid policy");
    let mut g = c.benchmark_group("otel-sampler");
    let mut run = |who: &str, case: &str, s: &dyn ShouldSample| {
        let mut i = 1u128;
        g.bench_function(BenchmarkId::new(who, case), |b| {
            b.iter(|| {
                black_box(s.should_sample(
                    None,
                    next_id(&mut i),
                    black_box("GET /orders"),
                    &SpanKind::Server,
                    &[],
                    &[],
                ))
            })
        });
    };

    run("baseline", "always-on", &Sampler::AlwaysOn);

    controller.pin(Level::Heavy);
    run("sdk", "ratio-0.01", &Sampler::TraceIdRatioBased(0.01));
    run("degrade", "heavy-0.01", &level);
    run(
        "sdk",
        "parent-based-ratio-0.01",
        &ParentBasedSampler::new(Sampler::TraceIdRatioBased(0.01)),
    );
    run(
        "degrade",
        "parent-based-heavy-0.01",
        &ParentBasedSampler::new(level.clone()),
    );

    controller.pin(Level::Normal);
    run("sdk", "ratio-1.0", &Sampler::TraceIdRatioBased(1.0));
    run("degrade", "normal-1.0", &level);
    run(
        "degrade",
        "normal-1.0-no-threshold",
        &level.clone().write_threshold(false),
    );
    g.finish();
}

criterion_group!(benches, sampler);
criterion_main!(benches);
