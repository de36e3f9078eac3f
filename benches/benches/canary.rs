//! Cost of the canary split, next to a no-layer baseline, tower's `Steer` and
//! tower-resilience's `WeightedRouter`.
//!
//! Group `canary` (members are `BenchmarkId::new(who, case)`); one iteration is `poll_ready` +
//! `call` + poll of the response future to completion on one thread without a runtime
//! ([`degrade_benches::call_now`]), over the same immediately-ready inner service on every arm:
//!
//! * `baseline/no-layer`: the bare inner service;
//! * `degrade/unkeyed-10pct`: `Canary` at 10 %, no key (the deterministic stride: each
//!   thread's own counter slot), recording the arm and the outcome of every call and the
//!   latency of the timed ones (two `TokioClock` reads each): no controller reads it, so each
//!   thread times its first 65,536 calls of each arm and 1 in 16 after them (criterion's
//!   warm-up passes the first; before stop 29 every call was timed);
//! * `degrade/keyed-10pct`: the same with a sticky key from a closure (hash, no stride);
//! * `degrade/unkeyed-10pct-frozen-clock`: `unkeyed-10pct` with a clock that returns a fixed
//!   instant — the split and the statistics without the OS clock reads;
//! * `degrade/unkeyed-10pct-judged`: `unkeyed-10pct` after a `CanaryController` read one
//!   window of heavy traffic (200,000 calls): each thread then times 1 call in 16 of each arm,
//!   and the other calls read no clock (every count stays exact);
//! * `degrade/unkeyed-10pct-fast-clock`: `unkeyed-10pct` on degrade-core's opt-in `FastClock`
//!   (feature `fast-clock`: the TSC through quanta);
//! * `degrade/weight-0`: everything stable, no key;
//! * `tower/steer-10pct`: tower's `Steer` over the two arms with a picker doing the same
//!   deterministic stride (`Steer` has no weights of its own, and records nothing);
//! * `tower-resilience/weighted-90-10`: tower-resilience's `WeightedRouter`, deterministic
//!   strategy, weights 90 / 10 (records nothing).
//!
//! Group `canary-clock`: the two clock reads the `Canary` makes per request, for reading the
//! figures above (`TokioClock::now` twice, and `FastClock::now` twice).

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use degrade_benches::{FrozenClock, Req, call_now, inner};
use degrade_canary::key::from_fn;
use degrade_canary::{Canary, CanaryConfig, CanaryController, CanaryStep, Weight};
use degrade_core::{Clock, FastClock, TokioClock};
use futures_util::FutureExt;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tower::steer::Steer;
use tower_resilience_router::WeightedRouter;

fn canary(c: &mut Criterion) {
    let mut g = c.benchmark_group("canary");

    let mut svc = inner();
    g.bench_function(BenchmarkId::new("baseline", "no-layer"), |b| {
        b.iter(|| black_box(call_now(&mut svc, black_box(1))))
    });

    let mut svc = Canary::builder(inner(), inner())
        .weight(Weight::new(1_000).expect("10 % is a valid weight"))
        .build()
        .unwrap();
    for _ in 0..20 {
        assert!(call_now(&mut svc, 1).is_ok());
    }
    assert_eq!(svc.snapshot().canary.routed, 2, "10 % of 20 requests");
    g.bench_function(BenchmarkId::new("degrade", "unkeyed-10pct"), |b| {
        b.iter(|| black_box(call_now(&mut svc, black_box(1))))
    });

    let mut svc = Canary::builder(inner(), inner())
        .weight(Weight::new(1_000).expect("10 % is a valid weight"))
        .key(from_fn(|r: &Req| Some(*r)))
        .build()
        .unwrap();
    g.bench_function(BenchmarkId::new("degrade", "keyed-10pct"), |b| {
        b.iter(|| black_box(call_now(&mut svc, black_box(1))))
    });

    // The same router with a clock that costs nothing: the split and the statistics alone,
    // without the two OS clock reads (compare with the `canary-clock` group).
    let mut svc = Canary::builder(inner(), inner())
        .weight(Weight::new(1_000).expect("10 % is a valid weight"))
        .clock(FrozenClock::now_frozen())
        .build()
        .unwrap();
    g.bench_function(
        BenchmarkId::new("degrade", "unkeyed-10pct-frozen-clock"),
        |b| b.iter(|| black_box(call_now(&mut svc, black_box(1)))),
    );

    // The same router once a `CanaryController` has read a window of heavy traffic: each
    // thread times 1 call in 16 of each arm (the others read no clock).
    let mut svc = Canary::builder(inner(), inner())
        .weight(Weight::new(1_000).expect("10 % is a valid weight"))
        .build()
        .unwrap();
    let _controller = judge_heavy_traffic(&mut svc);
    g.bench_function(BenchmarkId::new("degrade", "unkeyed-10pct-judged"), |b| {
        b.iter(|| black_box(call_now(&mut svc, black_box(1))))
    });

    // The same router on degrade-core's opt-in TSC clock (feature `fast-clock`).
    let mut svc = Canary::builder(inner(), inner())
        .weight(Weight::new(1_000).expect("10 % is a valid weight"))
        .clock(FastClock::new())
        .build()
        .unwrap();
    g.bench_function(
        BenchmarkId::new("degrade", "unkeyed-10pct-fast-clock"),
        |b| b.iter(|| black_box(call_now(&mut svc, black_box(1)))),
    );

    let mut svc = Canary::new(inner(), inner());
    g.bench_function(BenchmarkId::new("degrade", "weight-0"), |b| {
        b.iter(|| black_box(call_now(&mut svc, black_box(1))))
    });
    assert_eq!(svc.snapshot().canary.routed, 0);

    let seq = Arc::new(AtomicU64::new(0));
    let mut svc = Steer::new(vec![inner(), inner()], move |_: &Req, _: &[_]| {
        let n = seq.fetch_add(1, Ordering::Relaxed) % 10_000;
        usize::from((n + 1) * 1_000 / 10_000 != n * 1_000 / 10_000)
    });
    assert!(call_now(&mut svc, 1).is_ok());
    g.bench_function(BenchmarkId::new("tower", "steer-10pct"), |b| {
        b.iter(|| black_box(call_now(&mut svc, black_box(1))))
    });

    let mut svc = WeightedRouter::builder()
        .route(inner(), 90)
        .route(inner(), 10)
        .deterministic()
        .build();
    assert!(call_now(&mut svc, 1).is_ok());
    g.bench_function(
        BenchmarkId::new("tower-resilience", "weighted-90-10"),
        |b| b.iter(|| black_box(call_now(&mut svc, black_box(1)))),
    );

    g.finish();
}

/// Leaves `svc` as a `CanaryController` leaves its router under heavy traffic: a controller
/// at a 10 % step (baking for an hour, so the weight stays) reads a window of 200,000 calls,
/// 20,000 of them on the canary; from then on each thread times 1 call in 16 of each arm.
fn judge_heavy_traffic<S, C, K, O, Cl, M, Clk>(
    svc: &mut Canary<S, C, K, O, Cl, M, Clk>,
) -> CanaryController
where
    Canary<S, C, K, O, Cl, M, Clk>: tower::Service<Req>,
{
    let hour = Duration::from_secs(3_600);
    let cfg = CanaryConfig {
        steps: vec![CanaryStep::new(10.0, hour), CanaryStep::new(100.0, hour)],
        ..CanaryConfig::default()
    };
    let mut controller = CanaryController::builder(cfg, svc.handle())
        .build()
        .expect("valid rollout");
    for _ in 0..200_000 {
        let _ = black_box(call_now(svc, 1));
    }
    let judged = controller.tick().now_or_never().expect("no hooks: ready");
    assert!(judged.is_ok(), "the memory store cannot fail");
    assert_eq!(svc.weight().get(), 1_000, "still at the 10 % step");
    let before = svc.snapshot().stable.latency.count();
    for _ in 0..16_000 {
        let _ = black_box(call_now(svc, 1));
    }
    let timed = svc.snapshot().stable.latency.count() - before;
    assert_eq!(timed, 14_400 / 16, "1 stable call in 16 timed");
    controller
}

fn canary_clock(c: &mut Criterion) {
    let mut g = c.benchmark_group("canary-clock");
    let clock = TokioClock;
    g.bench_function(BenchmarkId::new("degrade", "TokioClock::now-x2"), |b| {
        b.iter(|| {
            let start = black_box(&clock).now();
            black_box(black_box(&clock).now() - start)
        })
    });
    let fast = FastClock::new();
    g.bench_function(BenchmarkId::new("degrade", "FastClock::now-x2"), |b| {
        b.iter(|| {
            let start = black_box(&fast).now();
            black_box(black_box(&fast).now() - start)
        })
    });
    g.finish();
}

/// Modest settings so the whole family runs in well under a minute.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = canary, canary_clock
}
criterion_main!(benches);
