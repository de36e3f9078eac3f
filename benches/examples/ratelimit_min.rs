//! The rate limiter's admit path timed as the **minimum** over repetitions (see
//! `min_of_reps.rs` for why the minimum on a shared machine), for issue 20's "rate limit admit
//! ≤ governor's `check` + 10 ns" and "two threads ≥ 1.5× one thread" criteria.
//!
//! ```text
//! cargo run --release -p degrade-benches --example ratelimit_min [member ...]
//! ```
//!
//! Members (every limiter has a quota far above what a run spends, so every call is admitted):
//!
//! * `baseline`: the bare inner service ([`degrade_benches::call_now`]).
//! * `admit`: `RateLimitLayer::new` (the default clock), built outside any runtime, as in a
//!   server on a multi-thread runtime.
//! * `admit-tokio-clock`: the same on `TokioClock` (what a current-thread runtime gets).
//! * `admit-frozen-clock`: on [`degrade_benches::FrozenClock`]: the limiter without its clock.
//! * `governor-check`: governor's `RateLimiter::direct(..).check()` on its default (quanta)
//!   clock, no service around it.
//! * `threads`: the default layer shared by 1 and by 2 threads ([`degrade_benches::contended`],
//!   wall time per call; the second thread's gain is the ratio), and governor's `check` in a
//!   `service_fn` the same way. Meaningful only when nothing else runs.
//!
//! * `full-stack` and `full-stack-tokio-clock`: `DegradeLayer` → rate limit → breaker →
//!   canary at 10 % (as `min_of_reps full-stack`), the rate limit on its default clock and on
//!   `TokioClock`, which shares the start instant the outer `DegradeLayer` read
//!   (`degrade_core::clock::CallScope`).
//!
//! With no argument, all of them.

use degrade_benches::{FrozenClock, Req, call_now, contended, inner, min_ns_per_call};
use degrade_core::TokioClock;
use degrade_ratelimit::{RateLimitConfig, RateLimitLayer};
use governor::{Quota, RateLimiter};
use std::future::ready;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tower::{Layer, Service};

const CALLS: u32 = 200_000;
const REPETITIONS: u32 = 40;

fn config() -> RateLimitConfig {
    RateLimitConfig::per(1_000_000_000, Duration::from_secs(1)).burst(1_000_000_000)
}

fn governor_quota() -> Quota {
    Quota::per_second(NonZeroU32::MAX).allow_burst(NonZeroU32::MAX)
}

/// The fastest repetition's time per call of `f`, in nanoseconds.
fn min_ns(f: impl FnMut()) -> f64 {
    min_ns_per_call(CALLS, REPETITIONS, f)
}

fn min_svc<S: Service<Req>>(svc: &mut S) -> f64 {
    min_ns(|| {
        let _ = black_box(call_now(svc, black_box(1)));
    })
}

/// The fastest repetition's wall time per call with `threads` threads on clones of `svc`.
fn min_threads<S: Service<Req> + Clone + Send>(svc: &S, threads: usize) -> f64 {
    (0..REPETITIONS)
        .map(|_| {
            let t = contended(svc, threads, u64::from(CALLS));
            t.as_secs_f64() * 1e9 / f64::from(CALLS)
        })
        .fold(f64::INFINITY, f64::min)
}

/// The full stack of `min_of_reps full-stack`, with the rate limit on `clock`.
fn full_stack<C: degrade_core::Clock>(
    clock: Option<C>,
) -> impl Service<Req, Response = Req, Error = degrade_core::BoxError> {
    let controller =
        degrade_core::Controller::new(Default::default()).expect("default ladder config");
    let rate = RateLimitLayer::builder(config());
    let rate = match clock {
        Some(c) => tower::util::Either::Left(rate.clock(c).build().expect("valid rate limit")),
        None => tower::util::Either::Right(rate.build().expect("valid rate limit")),
    };
    tower::ServiceBuilder::new()
        .layer(
            degrade_core::DegradeLayer::builder(controller.handle())
                .build()
                .expect("the default layer is valid"),
        )
        .layer(rate)
        .layer(
            degrade_breaker::BreakerLayer::builder(degrade_breaker::BreakerConfig::default())
                .build()
                .expect("valid breaker"),
        )
        .service(
            degrade_canary::Canary::builder(inner(), inner())
                .weight(degrade_canary::Weight::new(1_000).expect("10 %"))
                .build()
                .expect("valid canary"),
        )
}

fn main() {
    let wanted: Vec<String> = std::env::args().skip(1).collect();
    let on = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
    let report = |name: &str, ns: f64| println!("{name:<28} {ns:>8.2} ns");

    if on("baseline") {
        report("baseline", min_svc(&mut inner()));
    }
    if on("admit") {
        let layer = RateLimitLayer::new(config()).expect("valid config");
        report("admit", min_svc(&mut layer.layer(inner())));
        assert!(layer.snapshot().admitted > 0);
    }
    if on("admit-tokio-clock") {
        let layer = RateLimitLayer::builder(config())
            .clock(TokioClock)
            .build()
            .expect("valid config");
        report("admit-tokio-clock", min_svc(&mut layer.layer(inner())));
    }
    if on("admit-frozen-clock") {
        let layer = RateLimitLayer::builder(config())
            .clock(FrozenClock::now_frozen())
            .build()
            .expect("valid config");
        report("admit-frozen-clock", min_svc(&mut layer.layer(inner())));
    }
    if on("governor-check") {
        let direct = RateLimiter::direct(governor_quota());
        report(
            "governor-check",
            min_ns(|| {
                let _ = black_box(black_box(&direct).check());
            }),
        );
    }
    if on("full-stack") {
        report("full-stack", min_svc(&mut full_stack::<TokioClock>(None)));
    }
    if on("full-stack-tokio-clock") {
        report(
            "full-stack-tokio-clock",
            min_svc(&mut full_stack(Some(TokioClock))),
        );
    }
    if on("threads") {
        let layer = RateLimitLayer::new(config()).expect("valid config");
        let shared = layer.layer(inner());
        let one = min_threads(&shared, 1);
        let two = min_threads(&shared, 2);
        report("admit-1-thread", one);
        report("admit-2-threads", two);
        println!("{:<28} {:>8.2} ×", "admit-2-threads-gain", one / two);
        let s = layer.snapshot();
        assert_eq!(s.offered(), s.admitted + s.waited + s.rejected());
        let lim = Arc::new(RateLimiter::direct(governor_quota()));
        let governor = tower::service_fn(move |r: Req| {
            ready(match lim.check() {
                Ok(()) => Ok(r),
                Err(_) => Err("rate limited"),
            })
        });
        let one = min_threads(&governor, 1);
        let two = min_threads(&governor, 2);
        report("governor-service-1-thread", one);
        report("governor-service-2-threads", two);
        println!("{:<28} {:>8.2} ×", "governor-2-threads-gain", one / two);
    }
}
