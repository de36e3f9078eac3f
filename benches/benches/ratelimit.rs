//! Cost of a rate limit decision: degrade-ratelimit next to a no-layer baseline, governor's
//! direct limiter, tower's `RateLimit`, tower_governor and tower-resilience's rate limiter.
//!
//! One group, `ratelimit` (members are `BenchmarkId::new(who, case)`). Every limiter is given
//! a quota far above what one benchmark can spend (about 10⁹ per second), so every iteration
//! takes the admit path. One iteration is `poll_ready` + `call` + poll of the response future
//! ([`degrade_benches::call_now`]) over the same immediately-ready inner service, except the
//! `governor/check*` members, which time governor's bare `check` (no service around it).
//!
//! * `baseline/no-layer`: the bare inner service.
//! * `degrade/admit`: one global budget (`RateLimitLayer`, error mode), built outside any
//!   runtime: its default clock reads the CPU's counter (`FastClock::unless_pausable`).
//! * `degrade/admit-tokio-clock`: the same on `TokioClock`, which is what the default picks
//!   inside a current-thread runtime (where tokio's time can be paused).
//! * `degrade/admit-fast-clock`: the same on degrade-core's opt-in `FastClock` (TSC, feature
//!   `fast-clock`); `degrade/admit-frozen-clock`: on a clock that costs nothing, i.e. the
//!   limiter without its clock read.
//! * `degrade/reject`: the reject path (boxes the `RateLimited` error).
//! * `governor/check`: `RateLimiter::direct(..).check()` on its default clock.
//! * `governor/service`: the same check inside a `service_fn`: what a thin tower wrapper over
//!   governor costs, for the comparison with `degrade/admit`.
//! * `tower/rate_limit`: `tower::limit::RateLimit` (its budget is per service instance).
//! * `tower-resilience/rate_limiter`: `tower_resilience_ratelimiter::RateLimiter` (boxes its
//!   response future).
//! * `degrade/keyed-10k`, `governor/check-keyed-10k`: one budget per key, cycling through
//!   10,000 keys (degrade's bounded store vs governor's `DashMapStateStore`);
//!   `degrade/keyed-1-thread`, `degrade/keyed-2-threads`: the same layer called through
//!   `contended` below, each thread on its own known key (keys 0 and 1).
//! * `baseline/http-no-layer`, `degrade/http-admit`, `tower_governor/http-global`: the same over
//!   `http::Request` (tower_governor only speaks HTTP), global key.
//! * `*/2-threads` (`iter_custom` via [`degrade_benches::contended`]): two threads calling
//!   clones of one service; the figure is wall time per call.
//!
//! A second group, `ratelimit-redis`, measures fleet mode against a `redis-server` the bench
//! starts on a free loopback port (it must be on PATH), on a two-worker tokio runtime, through
//! `iter_custom` (wall time divided by decisions):
//!
//! * `baseline/1-task`, `degrade/fleet-1-task`: one task awaiting one call after another, with
//!   no layer and through a `FleetLayer`; the difference is the latency a decision adds.
//! * `baseline/64-tasks`, `degrade/fleet-64-tasks`: 64 concurrent tasks sharing the calls; the
//!   inverse of the figure is decisions per second.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use degrade_benches::{FrozenClock, Req, call_now, contended, inner};
use degrade_core::{FastClock, TokioClock};
use degrade_ratelimit::{KeysConfig, RateLimitConfig, RateLimitLayer, RateLimited, key};
use governor::{Quota, RateLimiter};
use std::convert::Infallible;
use std::future::ready;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tower::Layer;

const PER_SECOND: u64 = 1_000_000_000;

fn degrade_config() -> RateLimitConfig {
    RateLimitConfig::per(PER_SECOND, Duration::from_secs(1)).burst(PER_SECOND)
}

fn governor_quota() -> Quota {
    Quota::per_second(NonZeroU32::MAX).allow_burst(NonZeroU32::MAX)
}

fn http_inner() -> impl tower::Service<
    http::Request<()>,
    Response = http::Response<axum::body::Body>,
    Error = Infallible,
    Future = std::future::Ready<Result<http::Response<axum::body::Body>, Infallible>>,
> + Clone {
    tower::service_fn(|_: http::Request<()>| {
        ready(Ok::<_, Infallible>(http::Response::new(
            axum::body::Body::empty(),
        )))
    })
}

fn ratelimit(c: &mut Criterion) {
    // degrade's layers are built before the runtime below is entered, as in a server on a
    // multi-thread runtime (or outside any): the default clock then reads the CPU's counter.
    // Inside a current-thread runtime (where tokio's time can be paused) it reads `TokioClock`;
    // `degrade/admit-tokio-clock` shows that case.
    let degrade = RateLimitLayer::new(degrade_config()).expect("valid config");
    let reject = RateLimitLayer::new(RateLimitConfig::per(1, Duration::from_secs(3600)))
        .expect("valid config");
    let keyed = RateLimitLayer::builder(degrade_config())
        .keyed(
            key::from_fn(|r: &Req| Some(*r % 10_000)),
            KeysConfig::default(),
        )
        .build()
        .expect("valid config");
    let http_layer = RateLimitLayer::new(degrade_config())
        .expect("valid config")
        .http();
    assert!(!degrade.clock().follows_tokio());

    // tower's RateLimit arms a tokio sleep when it is made; it needs a runtime context.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    let _guard = rt.enter();
    let mut g = c.benchmark_group("ratelimit");

    let mut svc = inner();
    g.bench_function(BenchmarkId::new("baseline", "no-layer"), |b| {
        b.iter(|| black_box(call_now(&mut svc, black_box(1))))
    });

    let mut svc = degrade.layer(inner());
    assert!(call_now(&mut svc, 1).is_ok());
    g.bench_function(BenchmarkId::new("degrade", "admit"), |b| {
        b.iter(|| black_box(call_now(&mut svc, black_box(1))))
    });
    let mut svc = RateLimitLayer::builder(degrade_config())
        .clock(TokioClock)
        .build()
        .expect("valid config")
        .layer(inner());
    assert!(call_now(&mut svc, 1).is_ok());
    g.bench_function(BenchmarkId::new("degrade", "admit-tokio-clock"), |b| {
        b.iter(|| black_box(call_now(&mut svc, black_box(1))))
    });

    // The same decision on degrade-core's opt-in TSC clock, and on a clock that costs nothing
    // (the limiter's own cost, without any clock read).
    let mut svc = RateLimitLayer::builder(degrade_config())
        .clock(FastClock::new())
        .build()
        .expect("valid config")
        .layer(inner());
    assert!(call_now(&mut svc, 1).is_ok());
    g.bench_function(BenchmarkId::new("degrade", "admit-fast-clock"), |b| {
        b.iter(|| black_box(call_now(&mut svc, black_box(1))))
    });
    let mut svc = RateLimitLayer::builder(degrade_config())
        .clock(FrozenClock::now_frozen())
        .build()
        .expect("valid config")
        .layer(inner());
    assert!(call_now(&mut svc, 1).is_ok());
    g.bench_function(BenchmarkId::new("degrade", "admit-frozen-clock"), |b| {
        b.iter(|| black_box(call_now(&mut svc, black_box(1))))
    });

    let mut svc = reject.layer(inner());
    let _ = call_now(&mut svc, 1);
    let err = call_now(&mut svc, 1).expect_err("budget spent");
    assert!(err.is::<RateLimited>());
    g.bench_function(BenchmarkId::new("degrade", "reject"), |b| {
        b.iter(|| black_box(call_now(&mut svc, black_box(1))))
    });

    let direct = RateLimiter::direct(governor_quota());
    g.bench_function(BenchmarkId::new("governor", "check"), |b| {
        b.iter(|| black_box(black_box(&direct).check()))
    });

    let lim = Arc::new(RateLimiter::direct(governor_quota()));
    let governor_svc = {
        let lim = Arc::clone(&lim);
        tower::service_fn(move |r: Req| {
            ready(match lim.check() {
                Ok(()) => Ok(r),
                Err(_) => Err("rate limited"),
            })
        })
    };
    let mut svc = governor_svc.clone();
    g.bench_function(BenchmarkId::new("governor", "service"), |b| {
        b.iter(|| black_box(call_now(&mut svc, black_box(1))))
    });

    let mut svc = tower::limit::RateLimit::new(
        inner(),
        tower::limit::rate::Rate::new(PER_SECOND, Duration::from_secs(1)),
    );
    assert!(call_now(&mut svc, 1).is_ok());
    g.bench_function(BenchmarkId::new("tower", "rate_limit"), |b| {
        b.iter(|| black_box(call_now(&mut svc, black_box(1))))
    });

    let resilience = tower_resilience_ratelimiter::RateLimiterLayer::builder()
        .limit_for_period(PER_SECOND as usize)
        .refresh_period(Duration::from_secs(1))
        .build()
        .expect("valid tower-resilience config");
    let mut svc = resilience.layer(inner());
    assert!(call_now(&mut svc, 1).is_ok());
    g.bench_function(BenchmarkId::new("tower-resilience", "rate_limiter"), |b| {
        b.iter(|| black_box(call_now(&mut svc, black_box(1))))
    });

    // Keyed: 10,000 keys, visited in turn.
    let mut svc = keyed.layer(inner());
    for k in 0..10_000 {
        assert!(call_now(&mut svc, k).is_ok());
    }
    let mut n: Req = 0;
    g.bench_function(BenchmarkId::new("degrade", "keyed-10k"), |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            black_box(call_now(&mut svc, black_box(n)))
        })
    });
    assert_eq!(keyed.snapshot().keys, 10_000);
    // The same layer from 1 and 2 threads, each on its own known key (keys 0 and 1).
    for (threads, case) in [(1, "keyed-1-thread"), (2, "keyed-2-threads")] {
        g.bench_function(BenchmarkId::new("degrade", case), |b| {
            b.iter_custom(|iters| contended(&svc, threads, iters))
        });
    }
    assert_eq!(keyed.snapshot().keys, 10_000);

    let gkeyed = RateLimiter::dashmap(governor_quota());
    for k in 0..10_000u64 {
        assert!(gkeyed.check_key(&k).is_ok());
    }
    let mut n: u64 = 0;
    g.bench_function(BenchmarkId::new("governor", "check-keyed-10k"), |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            black_box(gkeyed.check_key(&black_box(n % 10_000)))
        })
    });

    // HTTP, global key.
    let mut svc = http_inner();
    g.bench_function(BenchmarkId::new("baseline", "http-no-layer"), |b| {
        b.iter(|| black_box(call_now(&mut svc, http::Request::new(()))))
    });
    let mut svc = http_layer.layer(http_inner());
    g.bench_function(BenchmarkId::new("degrade", "http-admit"), |b| {
        b.iter(|| black_box(call_now(&mut svc, http::Request::new(()))))
    });
    let config = tower_governor::governor::GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(u32::MAX)
        .key_extractor(tower_governor::key_extractor::GlobalKeyExtractor)
        .finish()
        .expect("valid tower_governor config");
    let mut svc = tower_governor::GovernorLayer::new(Arc::new(config)).layer(http_inner());
    assert_eq!(
        call_now(&mut svc, http::Request::new(())).map(|r| r.status()),
        Ok(http::StatusCode::OK)
    );
    g.bench_function(BenchmarkId::new("tower_governor", "http-global"), |b| {
        b.iter(|| black_box(call_now(&mut svc, http::Request::new(()))))
    });

    // Two threads on one layer.
    let baseline = inner();
    let shared = degrade.layer(inner());
    let shared_fast = RateLimitLayer::builder(degrade_config())
        .clock(FastClock::new())
        .build()
        .expect("valid config")
        .layer(inner());
    for (threads, case) in [(1, "1-thread"), (2, "2-threads")] {
        g.bench_function(
            BenchmarkId::new("degrade", format!("fast-clock-{case}")),
            |b| b.iter_custom(|iters| contended(&shared_fast, threads, iters)),
        );
        g.bench_function(BenchmarkId::new("baseline", case), |b| {
            b.iter_custom(|iters| contended(&baseline, threads, iters))
        });
        g.bench_function(BenchmarkId::new("degrade", case), |b| {
            b.iter_custom(|iters| contended(&shared, threads, iters))
        });
        g.bench_function(
            BenchmarkId::new("governor", format!("service-{case}")),
            |b| b.iter_custom(|iters| contended(&governor_svc, threads, iters)),
        );
    }
    assert!(degrade.snapshot().admitted > 0);

    g.finish();
}

/// A `redis-server` on a free loopback port, killed on drop.
struct RedisServer(std::process::Child, u16);

impl RedisServer {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect(
                "redis-server on PATH (apt-get install redis-server) for the ratelimit-redis group",
            );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Self(child, port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wall time for `tasks` tasks together making `iters` calls through clones of `svc`.
fn tasks<S>(rt: &tokio::runtime::Runtime, svc: &S, tasks: u64, iters: u64) -> Duration
where
    S: tower::Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let start = std::time::Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let calls = iters / tasks + u64::from(t < iters % tasks);
                let mut svc = svc.clone();
                tokio::spawn(async move {
                    use tower::ServiceExt;
                    for _ in 0..calls {
                        let _ = black_box(svc.ready().await.expect("ready").call(t).await);
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.expect("bench task");
        }
        start.elapsed()
    })
}

fn ratelimit_redis(c: &mut Criterion) {
    let redis = RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let mut cfg = degrade_ratelimit::fleet::FleetConfig::default();
    cfg.url = format!("redis://127.0.0.1:{}", redis.1);
    cfg.quota = degrade_config();
    cfg.unavailable = degrade_ratelimit::fleet::Unavailable::FailClosed;
    let layer = {
        let _g = rt.enter();
        degrade_ratelimit::fleet::FleetLayer::new(cfg).expect("valid fleet config")
    };
    let fleet = layer.layer(inner());
    let baseline = inner();
    // One decision up front, so the checks below also hold when a filter skips every member.
    rt.block_on(async {
        use tower::{Service, ServiceExt};
        let mut svc = fleet.clone();
        let svc = svc.ready().await.expect("ready");
        assert!(svc.call(0).await.is_ok(), "admitted by Redis");
    });

    let mut g = c.benchmark_group("ratelimit-redis");
    g.throughput(criterion::Throughput::Elements(1));
    for (n, case) in [(1, "1-task"), (64, "64-tasks")] {
        g.bench_function(BenchmarkId::new("baseline", case), |b| {
            b.iter_custom(|iters| tasks(&rt, &baseline, n, iters))
        });
        g.bench_function(BenchmarkId::new("degrade", format!("fleet-{case}")), |b| {
            b.iter_custom(|iters| tasks(&rt, &fleet, n, iters))
        });
    }
    g.finish();
    let snap = layer.snapshot();
    assert!(snap.admitted > 0, "decided by Redis");
    assert_eq!(snap.fallbacks(), 0, "Redis answered every decision in time");
    drop(redis);
}

/// Modest settings so the whole family runs in about a minute and a half.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = ratelimit, ratelimit_redis
}
criterion_main!(benches);
