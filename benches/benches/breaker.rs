//! Closed-path cost of the degrade circuit breaker, next to a no-layer baseline and the peer
//! circuit breakers, all measured through the same harness.
//!
//! One group, `breaker` (members are `BenchmarkId::new(who, case)`). One iteration is
//! `poll_ready` + `call` + poll of the response future to completion, on a no-op waker and
//! without a runtime ([`degrade_benches::call_now`]), over the same immediately-ready inner
//! service ([`degrade_benches::inner`]); every breaker is closed and every call succeeds, so
//! each one records one success per iteration:
//!
//! * `baseline/no-layer`: the bare inner service;
//! * `degrade/closed-count`: a count window of 100 calls (the default configuration);
//! * `degrade/closed-consecutive`: a consecutive-failures window;
//! * `degrade/closed-time`: a time window (10 s in 10 buckets), so one clock read per call;
//! * `degrade/closed-slow`: a count window with slow-call detection on (two clock reads);
//! * `degrade/closed-time-fast-clock`, `degrade/closed-slow-fast-clock`: the two timed cases
//!   on degrade-core's opt-in `FastClock` (feature `fast-clock`);
//! * `degrade/reject-open`: a forced-open breaker (the reject path, which boxes `CircuitOpen`);
//! * `tower-resilience/closed`: `tower-resilience-circuitbreaker` 0.14 (count window of 100);
//! * `failsafe/closed`: failsafe 1.3's futures breaker (consecutive failures), through a
//!   minimal tower adapter that calls `CircuitBreaker::call(inner_future)`;
//! * `seatbelt/closed`: seatbelt 0.11's breaker (its tower `Service`), on a frozen `tick`
//!   clock (its own test clock: seatbelt reads no real time here, which favours it slightly);
//! * `recloser/closed`: recloser 1.4's `AsyncRecloser` (ring buffer of 100), through the same
//!   kind of adapter;
//! * `degrade/keyed-known`: a `KeyedBreakerLayer` (count window of 100) keyed by the request,
//!   1,000 keys already in its map, every call for a known key (the lookup, then the closed
//!   path); `degrade/keyed-1-thread` and `degrade/keyed-2-threads`: the same layer through
//!   `contended` below, each thread on its own known key (keys 0 and 1), so two threads share
//!   the map but not a breaker;
//! * `*/2-threads` and `*/1-thread`: one shared service (one breaker) called through clones from
//!   2 threads (or 1) via `iter_custom` ([`degrade_benches::contended`]); the figure is wall time
//!   per call. tower-resilience is not in these: its breaker sits behind a `tokio::sync::Mutex`
//!   whose contended `lock()` is `Pending` until a runtime wakes it, and the harness has none.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use degrade_benches::{Req, call_now, contended, inner};
use degrade_breaker::{BreakerConfig, BreakerLayer, CircuitOpen, KeyedBreakerLayer, WindowConfig};
use degrade_core::FastClock;
use degrade_core::key::from_fn;
use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;
use tower::{Layer, Service};

#[path = "peers/mod.rs"]
mod peers;

fn degrade_config(window: WindowConfig) -> BreakerConfig {
    let mut c = BreakerConfig::default();
    c.window = window;
    c.minimum_calls = 1;
    c
}

fn degrade(
    config: BreakerConfig,
) -> impl Service<Req, Response = Req, Error = degrade_core::BoxError> + Clone + Send + 'static {
    let layer = BreakerLayer::new(config).expect("valid configuration");
    layer.layer(inner())
}

fn tower_resilience()
-> impl Service<Req, Response = Req, Error = impl std::fmt::Debug> + Clone + Send + 'static {
    tower_resilience_circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .build()
        .expect("valid configuration")
        .layer(inner())
}

fn failsafe_svc()
-> impl Service<Req, Response = Req, Error = impl std::fmt::Debug> + Clone + Send + 'static {
    peers::failsafe(inner())
}

fn seatbelt_svc() -> impl Service<Req, Response = Req, Error = Infallible> + Clone + Send + 'static
{
    use layered::Layer as _;
    let clock = tick::Clock::new_frozen();
    let context = seatbelt::ResilienceContext::<Req, Result<Req, Infallible>>::new(&clock);
    seatbelt::breaker::Breaker::layer("bench", &context)
        .recovery_with(|out: &Result<Req, Infallible>, _| match out {
            Ok(_) => seatbelt::RecoveryInfo::never(),
            Err(_) => seatbelt::RecoveryInfo::retry(),
        })
        .rejected_input(|_, _| Ok(0))
        .layer(inner())
}

fn recloser_svc()
-> impl Service<Req, Response = Req, Error = impl std::fmt::Debug> + Clone + Send + 'static {
    peers::recloser(inner())
}

fn bench_one<S>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    who: &str,
    mut svc: S,
) where
    S: Service<Req, Response = Req>,
    S::Error: std::fmt::Debug,
{
    assert_eq!(call_now(&mut svc, 7).expect("a closed breaker admits"), 7);
    g.bench_function(BenchmarkId::new(who, "closed"), |b| {
        b.iter(|| black_box(call_now(&mut svc, black_box(1))))
    });
}

fn bench_threads<S>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    who: &str,
    svc: S,
) where
    S: Service<Req> + Clone + Send,
{
    for threads in [1, 2] {
        let case = if threads == 1 {
            "1-thread"
        } else {
            "2-threads"
        };
        g.bench_function(BenchmarkId::new(who, case), |b| {
            b.iter_custom(|iters| contended(&svc, threads, iters))
        });
    }
}

fn breaker(c: &mut Criterion) {
    let mut g = c.benchmark_group("breaker");

    let mut svc = inner();
    g.bench_function(BenchmarkId::new("baseline", "no-layer"), |b| {
        b.iter(|| black_box(call_now(&mut svc, black_box(1))))
    });

    let cases = [
        (
            "closed-count",
            degrade_config(WindowConfig::Count { size: 100 }),
        ),
        (
            "closed-consecutive",
            degrade_config(WindowConfig::Consecutive { failures: 5 }),
        ),
        (
            "closed-time",
            degrade_config(WindowConfig::Time {
                span: Duration::from_secs(10),
                buckets: 10,
            }),
        ),
        ("closed-slow", {
            let mut c = degrade_config(WindowConfig::Count { size: 100 });
            c.slow_call_duration = Some(Duration::from_secs(1));
            c
        }),
    ];
    for (case, config) in cases {
        let timed = case == "closed-time" || case == "closed-slow";
        let fast = timed.then(|| config.clone());
        let mut svc = degrade(config);
        assert_eq!(call_now(&mut svc, 7).expect("a closed breaker admits"), 7);
        g.bench_function(BenchmarkId::new("degrade", case), |b| {
            b.iter(|| black_box(call_now(&mut svc, black_box(1))))
        });
        // The windows that read the time, again on degrade-core's opt-in `FastClock`.
        if let Some(config) = fast {
            let mut svc = BreakerLayer::builder(config)
                .clock(FastClock::new())
                .build()
                .expect("valid configuration")
                .layer(inner());
            assert_eq!(call_now(&mut svc, 7).expect("a closed breaker admits"), 7);
            g.bench_function(
                BenchmarkId::new("degrade", format!("{case}-fast-clock")),
                |b| b.iter(|| black_box(call_now(&mut svc, black_box(1)))),
            );
        }
    }

    let layer = BreakerLayer::new(BreakerConfig::default()).expect("valid configuration");
    layer.handle().force_open();
    let mut svc = layer.layer(inner());
    assert!(
        call_now(&mut svc, 1)
            .expect_err("forced open")
            .is::<CircuitOpen>()
    );
    g.bench_function(BenchmarkId::new("degrade", "reject-open"), |b| {
        b.iter(|| black_box(call_now(&mut svc, black_box(1))))
    });

    // Keyed: 1,000 known keys, each request its own key.
    let layer = KeyedBreakerLayer::builder(
        degrade_config(WindowConfig::Count { size: 100 }),
        from_fn(|r: &Req| Some(*r)),
    )
    .max_keys(10_000)
    .build()
    .expect("valid configuration");
    let mut svc = layer.layer(inner());
    for key in 0..1_000 {
        assert_eq!(
            call_now(&mut svc, key).expect("a closed breaker admits"),
            key
        );
    }
    assert_eq!(layer.len(), 1_000);
    g.bench_function(BenchmarkId::new("degrade", "keyed-known"), |b| {
        b.iter(|| black_box(call_now(&mut svc, black_box(1))))
    });
    for threads in [1, 2] {
        let case = if threads == 1 {
            "keyed-1-thread"
        } else {
            "keyed-2-threads"
        };
        g.bench_function(BenchmarkId::new("degrade", case), |b| {
            b.iter_custom(|iters| contended(&svc, threads, iters))
        });
    }
    assert_eq!(
        layer.snapshot().inserted,
        1_000,
        "every call was for a known key"
    );

    bench_one(&mut g, "tower-resilience", tower_resilience());
    bench_one(&mut g, "failsafe", failsafe_svc());
    bench_one(&mut g, "seatbelt", seatbelt_svc());
    bench_one(&mut g, "recloser", recloser_svc());

    bench_threads(&mut g, "baseline", inner());
    bench_threads(
        &mut g,
        "degrade",
        degrade(degrade_config(WindowConfig::Count { size: 100 })),
    );
    // tower-resilience is left out here: under contention its `tokio::sync::Mutex` returns
    // `Pending`, which needs a runtime to wake it, and this harness has none.
    bench_threads(&mut g, "failsafe", failsafe_svc());
    bench_threads(&mut g, "seatbelt", seatbelt_svc());
    bench_threads(&mut g, "recloser", recloser_svc());

    g.finish();
}

criterion_group!(benches, breaker);
criterion_main!(benches);
