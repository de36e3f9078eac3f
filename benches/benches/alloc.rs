//! Allocations and bytes allocated **per request** by each degrade layer and by its peers, on
//! the admit and the reject path, printed as a Markdown table.
//!
//! A counting global allocator (`stats_alloc`) wraps the system allocator. Each row makes one
//! service, sends it 1,000 warm-up requests (thread-local slots, lazily built tables and
//! first-use registrations are not per-request costs), then counts the allocator calls over
//! `N` more requests through [`degrade_benches::call_now`] (no runtime, one thread; the
//! harness is off, so no other thread allocates meanwhile) and divides by `N`.
//!
//! ```sh
//! cargo bench -p degrade-benches --bench alloc            # N = 100,000
//! cargo bench -p degrade-benches --bench alloc -- --test  # N = 1,000 (the CI smoke run)
//! ```
//!
//! A reject path that answers with a `BoxError` boxes its rejection: one allocation of the
//! rejection's size, unless the rejection is zero-sized (tower's `Overloaded`). The HTTP answer
//! modes (`.http()`) answer with a response instead and keep `Infallible` services infallible.

use degrade_benches::{FrozenClock, NeverReady, Req, call_now, inner};
use degrade_breaker::{BreakerConfig, BreakerLayer, KeyedBreakerLayer};
use degrade_canary::{Canary, Weight};
use degrade_core::key::from_fn;
use degrade_core::{Controller, DegradeLayer, Level, Priority};
use degrade_ratelimit::{KeysConfig, RateLimitConfig, RateLimitLayer};
use degrade_triggers::ObserveLayer;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use std::time::Duration;
use tower::load_shed::LoadShed;
use tower::{Layer, Service, ServiceBuilder};

#[path = "peers/mod.rs"]
mod peers;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const WARM_UP: u64 = 1_000;

/// One row of the table: who, which path, and the per-request figures.
struct Row {
    family: &'static str,
    who: &'static str,
    case: &'static str,
    allocs: f64,
    bytes: f64,
}

struct Table {
    n: u64,
    rows: Vec<Row>,
}

impl Table {
    /// Measures `svc` over `n` requests after the warm-up. `ok` is the path the member must
    /// take (admit: `true`, reject: `false`); a member on the wrong path is a bug in this file.
    fn measure<S, R>(
        &mut self,
        (family, who, case): (&'static str, &'static str, &'static str),
        ok: bool,
        mut svc: S,
        mut req: impl FnMut() -> R,
    ) where
        S: Service<R>,
    {
        for _ in 0..WARM_UP {
            assert_eq!(
                call_now(&mut svc, req()).is_ok(),
                ok,
                "{family}/{who}/{case} took the wrong path"
            );
        }
        let region = Region::new(GLOBAL);
        for _ in 0..self.n {
            let _ = std::hint::black_box(call_now(&mut svc, req()));
        }
        let s = region.change();
        let n = self.n as f64;
        self.rows.push(Row {
            family,
            who,
            case,
            allocs: (s.allocations + s.reallocations) as f64 / n,
            bytes: (s.bytes_allocated as f64 + s.bytes_reallocated.max(0) as f64) / n,
        });
    }

    fn print(&self) {
        println!("| family | who | case | allocations / request | bytes / request |");
        println!("|---|---|---|---:|---:|");
        for r in &self.rows {
            println!(
                "| {} | {} | {} | {:.2} | {:.1} |",
                r.family, r.who, r.case, r.allocs, r.bytes
            );
        }
        println!(
            "\n({} requests per row after {WARM_UP} warm-up requests)",
            self.n
        );
    }
}

fn pinned(level: Level) -> Controller {
    let c = Controller::new(Default::default()).expect("default ladder config is valid");
    if level != Level::Normal {
        c.pin(level);
    }
    c
}

const PER_SECOND: u64 = 1_000_000_000;

fn open_quota() -> RateLimitConfig {
    RateLimitConfig::per(PER_SECOND, Duration::from_secs(1)).burst(PER_SECOND)
}

fn spent_quota() -> RateLimitConfig {
    RateLimitConfig::per(1, Duration::from_secs(3600))
}

fn ten_percent() -> Weight {
    Weight::new(1_000).expect("10 % is a valid weight")
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--test" || a == "--list");
    let mut t = Table {
        n: if smoke { 1_000 } else { 100_000 },
        rows: Vec::new(),
    };
    // tower's RateLimit arms a tokio sleep when it is made: it needs a runtime context.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    let _guard = rt.enter();

    t.measure(("baseline", "baseline", "no-layer"), true, inner(), || 1);

    // admission
    let normal = pinned(Level::Normal);
    let heavy = pinned(Level::Heavy);
    // Both admission modes at once: the level's shares (pinned at Heavy, Low is shed), then
    // the adaptive limit (every admitted request takes a slot).
    let degrade = |c: &Controller, p: Priority| {
        DegradeLayer::builder(c.handle())
            .admission(degrade_core::degrade::Admission::Both)
            .prioritize(move |_: &Req| p)
            .build()
            .expect("valid policy")
    };
    let svc = degrade(&normal, Priority::Normal).layer(inner());
    t.measure(("admission", "degrade", "admit"), true, svc, || 1);
    let svc = degrade(&heavy, Priority::Low).layer(inner());
    t.measure(("admission", "degrade", "reject"), false, svc, || 1);
    t.measure(
        ("admission", "tower", "load_shed"),
        true,
        LoadShed::new(inner()),
        || 1,
    );
    t.measure(
        ("admission", "tower", "load_shed-reject"),
        false,
        LoadShed::new(NeverReady),
        || 1,
    );

    // rate limit
    let svc = RateLimitLayer::new(open_quota())
        .expect("valid config")
        .layer(inner());
    t.measure(("ratelimit", "degrade", "admit"), true, svc, || 1);
    // Keyed: the warm-up puts 1,000 keys in the store; every counted request is for a known one.
    let svc = RateLimitLayer::builder(open_quota())
        .keyed(from_fn(|r: &Req| Some(*r)), KeysConfig::default())
        .build()
        .expect("valid config")
        .layer(inner());
    let mut key = 0;
    t.measure(
        ("ratelimit", "degrade", "keyed-known"),
        true,
        svc,
        move || {
            key = (key + 1) % 1_000;
            key
        },
    );
    let mut svc = RateLimitLayer::new(spent_quota())
        .expect("valid config")
        .layer(inner());
    let _ = call_now(&mut svc, 1);
    t.measure(("ratelimit", "degrade", "reject"), false, svc, || 1);
    // The HTTP answer mode: a rejection is a 429 response (with its headers), not a boxed error.
    let http_inner = || {
        tower::service_fn(|_: http::Request<()>| {
            std::future::ready(Ok::<_, std::convert::Infallible>(http::Response::new(())))
        })
    };
    t.measure(
        ("ratelimit", "baseline", "http-no-layer"),
        true,
        http_inner(),
        || http::Request::new(()),
    );
    let mut svc = RateLimitLayer::new(spent_quota())
        .expect("valid config")
        .http()
        .layer(http_inner());
    let _ = call_now(&mut svc, http::Request::new(()));
    t.measure(
        ("ratelimit", "degrade", "http-reject-429"),
        true,
        svc,
        || http::Request::new(()),
    );
    let svc = peers::Governor::new(inner(), peers::open_governor_quota());
    t.measure(("ratelimit", "governor", "service"), true, svc, || 1);
    let mut svc = peers::Governor::new(inner(), peers::spent_governor_quota());
    let _ = call_now(&mut svc, 1);
    t.measure(
        ("ratelimit", "governor", "service-reject"),
        false,
        svc,
        || 1,
    );
    let svc = tower::limit::RateLimit::new(
        inner(),
        tower::limit::rate::Rate::new(PER_SECOND, Duration::from_secs(1)),
    );
    t.measure(("ratelimit", "tower", "rate_limit"), true, svc, || 1);
    let svc = tower_resilience_ratelimiter::RateLimiterLayer::builder()
        .limit_for_period(PER_SECOND as usize)
        .refresh_period(Duration::from_secs(1))
        .build()
        .expect("valid tower-resilience config")
        .layer(inner());
    t.measure(
        ("ratelimit", "tower-resilience", "rate_limiter"),
        true,
        svc,
        || 1,
    );

    // breaker
    let svc = BreakerLayer::new(BreakerConfig::default())
        .expect("valid config")
        .layer(inner());
    t.measure(("breaker", "degrade", "closed-count"), true, svc, || 1);
    let layer = BreakerLayer::new(BreakerConfig::default()).expect("valid config");
    layer.handle().force_open();
    t.measure(
        ("breaker", "degrade", "reject-open"),
        false,
        layer.layer(inner()),
        || 1,
    );
    // Keyed: the warm-up puts 1,000 keys in the map; every counted request is for a known one.
    let svc = KeyedBreakerLayer::new(BreakerConfig::default(), from_fn(|r: &Req| Some(*r)))
        .expect("valid config")
        .layer(inner());
    let mut key = 0;
    t.measure(
        ("breaker", "degrade", "keyed-known"),
        true,
        svc,
        move || {
            key = (key + 1) % 1_000;
            key
        },
    );
    let svc = tower_resilience_circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .build()
        .expect("valid configuration")
        .layer(inner());
    t.measure(("breaker", "tower-resilience", "closed"), true, svc, || 1);
    let svc = peers::recloser(inner());
    t.measure(("breaker", "recloser", "closed"), true, svc, || 1);
    let svc = peers::failsafe(inner());
    t.measure(("breaker", "failsafe", "closed"), true, svc, || 1);

    // canary
    let svc = Canary::builder(inner(), inner())
        .weight(ten_percent())
        .build()
        .unwrap();
    t.measure(("canary", "degrade", "unkeyed-10pct"), true, svc, || 1);
    t.measure(
        ("canary", "tower", "steer-10pct"),
        true,
        peers::steer_10pct(),
        || 1,
    );
    let svc = tower_resilience_router::WeightedRouter::builder()
        .route(inner(), 90)
        .route(inner(), 10)
        .deterministic()
        .build();
    t.measure(
        ("canary", "tower-resilience", "weighted-90-10"),
        true,
        svc,
        || 1,
    );

    // observe
    t.measure(
        ("observe", "degrade", "observe"),
        true,
        ObserveLayer::new().layer(inner()),
        || 1,
    );
    let frozen = ObserveLayer::builder()
        .clock(FrozenClock::now_frozen())
        .build()
        .unwrap();
    t.measure(
        ("observe", "degrade", "observe-frozen-clock"),
        true,
        frozen.layer(inner()),
        || 1,
    );

    // full stack
    let stack = |c: &Controller, p: Priority, quota: RateLimitConfig| {
        ServiceBuilder::new()
            .layer(degrade(c, p))
            .layer(RateLimitLayer::new(quota).expect("valid config"))
            .layer(BreakerLayer::new(BreakerConfig::default()).expect("valid config"))
            .service(
                Canary::builder(inner(), inner())
                    .weight(ten_percent())
                    .build()
                    .unwrap(),
            )
    };
    let svc = stack(&normal, Priority::Normal, open_quota());
    t.measure(("full-stack", "degrade", "admit"), true, svc, || 1);
    let svc = stack(&heavy, Priority::Low, open_quota());
    t.measure(("full-stack", "degrade", "reject-shed"), false, svc, || 1);
    let mut svc = stack(&normal, Priority::Normal, spent_quota());
    let _ = call_now(&mut svc, 1);
    t.measure(
        ("full-stack", "degrade", "reject-ratelimit"),
        false,
        svc,
        || 1,
    );

    let svc = peers::peer_stack(usize::MAX >> 4, peers::open_governor_quota());
    t.measure(("full-stack", "peers", "admit"), true, svc, || 1);
    let svc = peers::peer_stack(0, peers::open_governor_quota());
    t.measure(("full-stack", "peers", "reject-shed"), false, svc, || 1);
    let mut svc = peers::peer_stack(usize::MAX >> 4, peers::spent_governor_quota());
    let _ = call_now(&mut svc, 1);
    t.measure(
        ("full-stack", "peers", "reject-ratelimit"),
        false,
        svc,
        || 1,
    );

    t.print();
}
