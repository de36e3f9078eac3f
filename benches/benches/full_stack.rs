//! Cost of the whole degrade stack on one request — `DegradeLayer` → `RateLimitLayer` →
//! `BreakerLayer` → `Canary` — next to a no-layer baseline and the nearest stack the peers
//! compose: tower's `LoadShed` + `ConcurrencyLimit`, a governor limiter, failsafe's breaker and
//! tower's `Steer`.
//!
//! Group `full-stack` (members are `BenchmarkId::new(who, case)`). One iteration is
//! `poll_ready` + `call` + poll of the response future to completion on one thread, without a
//! runtime ([`degrade_benches::call_now`]), over the same immediately-ready inner service on
//! both canary arms:
//!
//! * `baseline/no-layer`: the bare inner service;
//! * `degrade/admit`: level Normal, the adaptive limit floored at 2 (see [`floored`]), a rate
//!   limit far above what the benchmark can spend, a
//!   closed breaker (count window of 100, the default), a canary at 10 % (no key): every layer
//!   takes its admit path on its default clock, `FastClock::unless_pausable()`: the counter
//!   here (no runtime), read once for the request's start (`CallScope`: the first reader's
//!   read — the `DegradeLayer` when it times the request, else the rate limit — reused by the
//!   layers further in; the breaker's closed path reads none) and once at each timed
//!   completion;
//! * `degrade/admit-tokio-clock`: the same stack with `TokioClock` in every layer that takes a
//!   clock (one `clock_gettime` for the start, shared, and one at the canary's completion; the
//!   `DegradeLayer`'s limiter keeps its default, so a request it times reads the counter too);
//! * `degrade/admit-fast-clock`: the same stack with `FastClock::new()` in every layer;
//! * `degrade/reject-shed`: level Heavy, priority Low: the `DegradeLayer` sheds first (boxes a
//!   `Shed`), nothing below runs;
//! * `degrade/reject-ratelimit`: a spent budget: admitted by the `DegradeLayer`, rejected by the
//!   rate limit (boxes a `RateLimited`);
//! * `peers/admit`: `LoadShed<ConcurrencyLimit<Governor<Failsafe<Steer>>>>` with the same
//!   quota, a consecutive-failures failsafe breaker and a `Steer` picker doing the canary's 10 %
//!   stride. The peers record no per-arm statistics and time nothing;
//! * `peers/reject-shed`: `LoadShed` over a `ConcurrencyLimit` of 0 (always shed);
//! * `peers/reject-ratelimit`: a spent governor quota under `LoadShed` + `ConcurrencyLimit`;
//! * `*/1-thread`, `*/2-threads`: one shared stack called through clones from 1 and 2 threads
//!   ([`degrade_benches::contended`]); wall time per call (`degrade/tokio-clock-*`: every
//!   layer on `TokioClock`).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use degrade_benches::{Req, call_now, contended, inner};
use degrade_breaker::{BreakerConfig, BreakerLayer};
use degrade_canary::{Canary, Weight};
use degrade_core::limit::LimitConfig;
use degrade_core::{
    BoxError, Clock, Controller, DegradeLayer, FastClock, Level, Priority, Shed, TokioClock,
};
use degrade_ratelimit::{RateLimitConfig, RateLimitLayer, RateLimited};
use peers::{GovernorRejected, open_governor_quota, peer_stack, spent_governor_quota};
use std::hint::black_box;
use std::time::Duration;
use tower::{Service, ServiceBuilder};

#[path = "peers/mod.rs"]
mod peers;

const PER_SECOND: u64 = 1_000_000_000;

/// A controller pinned at `level`; kept alive by the caller while the stack is used.
fn pinned(level: Level) -> Controller {
    let c = Controller::new(Default::default()).expect("default ladder config is valid");
    if level != Level::Normal {
        c.pin(level);
    }
    c
}

fn canary_weight() -> Weight {
    Weight::new(1_000).expect("10 % is a valid weight")
}

/// The default adaptive limit floored at 2: over arms that take no time the law brings the
/// limit down to what one caller uses (2) and probes below it (1), where the second thread of
/// the `-2-threads` members would have to wait — which `call_now`, polling once, cannot.
fn floored() -> LimitConfig {
    LimitConfig {
        min: 2,
        ..LimitConfig::default()
    }
}

/// degrade's full stack over two `inner` arms, with `clock` in every layer that reads time.
fn degrade_stack<K: Clock>(
    controller: &Controller,
    quota: RateLimitConfig,
    priority: Priority,
    clock: K,
) -> impl Service<Req, Response = Req, Error = BoxError> + Clone + Send + 'static {
    ServiceBuilder::new()
        .layer(
            DegradeLayer::builder(controller.handle())
                // The adaptive limit, and the level's shares so a pinned level sheds.
                .admission(degrade_core::degrade::Admission::Both)
                .limit(floored())
                .prioritize(move |_: &Req| priority)
                .build()
                .expect("default policy is valid"),
        )
        .layer(
            RateLimitLayer::builder(quota)
                .clock(clock.clone())
                .build()
                .expect("valid rate limit config"),
        )
        .layer(
            BreakerLayer::builder(BreakerConfig::default())
                .clock(clock.clone())
                .build()
                .expect("valid breaker config"),
        )
        .service(
            Canary::builder(inner(), inner())
                .weight(canary_weight())
                .clock(clock)
                .build()
                .unwrap(),
        )
}

/// degrade's full stack over two `inner` arms, every layer on its default clock.
fn default_stack(
    controller: &Controller,
    quota: RateLimitConfig,
    priority: Priority,
) -> impl Service<Req, Response = Req, Error = BoxError> + Clone + Send + 'static {
    ServiceBuilder::new()
        .layer(
            DegradeLayer::builder(controller.handle())
                .admission(degrade_core::degrade::Admission::Both)
                .limit(floored())
                .prioritize(move |_: &Req| priority)
                .build()
                .expect("default policy is valid"),
        )
        .layer(RateLimitLayer::new(quota).expect("valid rate limit config"))
        .layer(BreakerLayer::new(BreakerConfig::default()).expect("valid breaker config"))
        .service(
            Canary::builder(inner(), inner())
                .weight(canary_weight())
                .build()
                .unwrap(),
        )
}

fn open_quota() -> RateLimitConfig {
    RateLimitConfig::per(PER_SECOND, Duration::from_secs(1)).burst(PER_SECOND)
}

fn bench_calls<S>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    who: &str,
    case: &str,
    mut svc: S,
) where
    S: Service<Req, Response = Req>,
{
    g.bench_function(BenchmarkId::new(who, case), |b| {
        b.iter(|| black_box(call_now(&mut svc, black_box(1))))
    });
}

fn full_stack(c: &mut Criterion) {
    let mut g = c.benchmark_group("full-stack");

    bench_calls(&mut g, "baseline", "no-layer", inner());

    let normal = pinned(Level::Normal);
    let mut svc = default_stack(&normal, open_quota(), Priority::Normal);
    for _ in 0..20 {
        assert_eq!(call_now(&mut svc, 7).expect("the stack admits"), 7);
    }
    bench_calls(&mut g, "degrade", "admit", svc);

    let mut svc = degrade_stack(&normal, open_quota(), Priority::Normal, TokioClock);
    assert_eq!(call_now(&mut svc, 7).expect("the stack admits"), 7);
    bench_calls(&mut g, "degrade", "admit-tokio-clock", svc);

    let mut svc = degrade_stack(&normal, open_quota(), Priority::Normal, FastClock::new());
    assert_eq!(call_now(&mut svc, 7).expect("the stack admits"), 7);
    bench_calls(&mut g, "degrade", "admit-fast-clock", svc);

    let heavy = pinned(Level::Heavy);
    let mut svc = degrade_stack(&heavy, open_quota(), Priority::Low, TokioClock);
    let err = call_now(&mut svc, 1).expect_err("Heavy sheds Low");
    assert!(err.is::<Shed>(), "shed by the DegradeLayer: {err}");
    bench_calls(&mut g, "degrade", "reject-shed", svc);

    let spent = RateLimitConfig::per(1, Duration::from_secs(3600));
    let mut svc = degrade_stack(&normal, spent, Priority::Normal, TokioClock);
    let _ = call_now(&mut svc, 1);
    let err = call_now(&mut svc, 1).expect_err("budget spent");
    assert!(err.is::<RateLimited>(), "rejected by the rate limit: {err}");
    bench_calls(&mut g, "degrade", "reject-ratelimit", svc);

    let mut svc = peer_stack(usize::MAX >> 4, open_governor_quota());
    assert_eq!(call_now(&mut svc, 7).expect("the peer stack admits"), 7);
    bench_calls(&mut g, "peers", "admit", svc);

    let mut svc = peer_stack(0, open_governor_quota());
    let err = call_now(&mut svc, 1).expect_err("no concurrency: shed");
    assert!(err.is::<tower::load_shed::error::Overloaded>(), "{err}");
    bench_calls(&mut g, "peers", "reject-shed", svc);

    let mut svc = peer_stack(usize::MAX >> 4, spent_governor_quota());
    let _ = call_now(&mut svc, 1);
    let err = call_now(&mut svc, 1).expect_err("quota spent");
    assert!(err.is::<GovernorRejected>(), "{err}");
    bench_calls(&mut g, "peers", "reject-ratelimit", svc);

    g.finish();
}

fn full_stack_2_threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("full-stack-2-threads");
    g.throughput(Throughput::Elements(1));
    let normal = pinned(Level::Normal);
    let baseline = inner();
    let degrade = default_stack(&normal, open_quota(), Priority::Normal);
    let tokio_clock = degrade_stack(&normal, open_quota(), Priority::Normal, TokioClock);
    let peers = peer_stack(usize::MAX >> 4, open_governor_quota());
    for (threads, case) in [(1, "1-thread"), (2, "2-threads")] {
        g.bench_function(BenchmarkId::new("baseline", case), |b| {
            b.iter_custom(|iters| contended(&baseline, threads, iters))
        });
        g.bench_function(BenchmarkId::new("degrade", case), |b| {
            b.iter_custom(|iters| contended(&degrade, threads, iters))
        });
        g.bench_function(
            BenchmarkId::new("degrade", format!("tokio-clock-{case}")),
            |b| b.iter_custom(|iters| contended(&tokio_clock, threads, iters)),
        );
        g.bench_function(BenchmarkId::new("peers", case), |b| {
            b.iter_custom(|iters| contended(&peers, threads, iters))
        });
    }
    g.finish();
}

/// Modest settings so the family runs in well under a minute.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = full_stack, full_stack_2_threads
}
criterion_main!(benches);
