//! The admission members timed as the **minimum** over repetitions, for machines shared with
//! other work, where criterion's medians move by 2× from one run to the next.
//!
//! Each member runs 40 repetitions of 200,000 calls ([`degrade_benches::call_now`]) and prints
//! the fastest repetition's time per call: a repetition that the scheduler did not interrupt.
//! On a quiet machine it reads a little below criterion's median; on a busy one it is the only
//! figure that repeats. Run:
//!
//! ```text
//! cargo run --release -p degrade-benches --example min_of_reps [member ...]
//! ```
//!
//! Members: `baseline`, `admit` (the default adaptive limit — as its fastest repetitions
//! find it: the first ones, before its limit settles), `admit-settled` (the same after two
//! seconds of calls, once the limit has come down to what this one caller uses — 2 — as
//! criterion's `admission/degrade/admit` finds it after its warm-up), `admit-shares` (level shares),
//! `reject-limit` (the limit full, no queue), `downstream` (every call rejected by a layer
//! further in, i.e. the inner service returns a boxed `Shed`) and `downstream-baseline` (that
//! inner service alone), `full-stack` (`DegradeLayer` → rate limit → breaker → canary at
//! 10 %, every layer on its admit path and its default clock, as `degrade/admit` in the
//! `full-stack` criterion group), `full-stack-settled` (the same after two seconds of calls,
//! as `admit-settled`), `full-stack-limit-64` (the same with the `DegradeLayer`'s
//! limit held at 64: under this one sequential caller the default limit decays to 2, below
//! the 16 from which threads keep slots, so every call takes and gives back a slot of the
//! shared in-flight word; held at 64 a thread keeps its slot), `full-stack-judged` (the same stack with the canary as a release runs it: its controller
//! has read heavy traffic, so each thread times 1 call in 16 of each arm),
//! `full-stack-tokio-clock` (the same with `TokioClock` in every
//! layer that takes a clock; the `DegradeLayer`'s limiter keeps its default), `peers-full-stack` (the peers' composition of that group: `LoadShed` +
//! `ConcurrencyLimit` + governor + failsafe + `Steer`), `full-stack-observed` and
//! `full-stack-observed-tokio-clock` (the `full-stack` member under an `ObserveLayer` timing
//! every call, on its default clock and on `TokioClock`), `ratelimit` (the default
//! `RateLimitLayer` alone, built outside any runtime: the counter) and `governor`
//! (governor's `check` on its own quanta clock, no service), `observe`
//! and `observe-frozen-clock` (the `ObserveLayer` alone, on its default clock — the counter
//! here, outside any runtime — and on [`degrade_benches::FrozenClock`], every call timed: no latency signal reads it),
//! `observe-monitored` (the same with a latency signal sampled once after 20,000 calls, as the
//! `Monitor` does: from then on a thread times 1 call in 16), `canary` and `canary-frozen-clock` (the canary split at
//! 10 %, unkeyed, no controller: each thread times its first 65,536 calls of each arm, then 1
//! in 16 — so the repetitions time 1 in 16), `canary-judged` (the same after a
//! `CanaryController` read a window of 200,000 calls: from then on a thread times 1 call in 16
//! of each arm) and `breaker` (the default breaker, closed). With no argument, all of them.
//! `breaker-threads` times the default breaker shared by 1 and by 2 threads, as below.
//! `keyed-ratelimit-10k` times a keyed rate limit cycling through 10,000 known keys, and
//! `keyed-ratelimit-threads` the same layer from 1 and 2 threads, each on its own key.
//! `keyed-breaker-threads` times a `KeyedBreakerLayer` with 1,000 known keys the same way, each
//! thread calling its own known key (one map, two breakers). `admit-threads` times the default layer shared by 1 and by 2
//! threads ([`degrade_benches::contended`], wall time per call; the ratio is the second
//! thread's gain) — meaningful only when nothing else runs. Its limit is held at 64 (min =
//! max): with an inner service of a few nanoseconds the law may learn a limit of one, and a
//! second thread's request then waits, which the harness cannot. `admit-threads-rarely-timed`
//! is the same with one request in 65,536 timed (the window's atomics are shared);
//! `admit-threads-default` the same at the default layer's limit of 16 (its initial limit,
//! held), where the criterion `admission-2-threads` member runs. `admit-threads-adaptive` is
//! the default layer itself, its limit adapting (it stays at 16: nothing queues), and
//! `full-stack-threads` the `full-stack` member shared by 1 and by 2 threads, and
//! `threads-control` a service that shares nothing between threads — the most a second
//! thread gives on this machine at that moment. Every threaded member alternates one and two
//! threads within each repetition ([`report_threads`]): on a guest whose vCPUs are two cores
//! at some moments and less at others, the two counts then meet the same host.

use degrade_benches::{Req, call_now, inner, min_ns_per_call};
use degrade_breaker::{BreakerConfig, BreakerLayer};
use degrade_canary::{Canary, Weight};
use degrade_core::TokioClock;
use degrade_core::degrade::Admission;
use degrade_core::limit::LimitConfig;
use degrade_core::{BoxError, Controller, DegradeLayer, Level, Priority, Shed};
use degrade_ratelimit::RateLimitLayer;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::time::Duration;
use tower::{Layer, Service};

/// The threaded members' calls per repetition and repetitions.
const CALLS: u32 = 200_000;
const REPETITIONS: u32 = 40;

/// Calls per repetition and repetitions: 200,000 and 40, or `MIN_OF_REPS_CALLS` and
/// `MIN_OF_REPS_REPETITIONS` from the environment. On a loaded machine shorter repetitions
/// (say 5,000 calls, about a millisecond) and more of them (400) are likelier to find one the
/// scheduler did not interrupt.
fn calls_and_repetitions() -> (u32, u32) {
    let var = |name: &str, default: u32| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &u32| n > 0)
            .unwrap_or(default)
    };
    (
        var("MIN_OF_REPS_CALLS", 200_000),
        var("MIN_OF_REPS_REPETITIONS", 40),
    )
}

#[path = "../benches/peers/mod.rs"]
mod peers;

/// A rate far above what a run spends: every call is admitted.
fn open_rate() -> degrade_ratelimit::RateLimitConfig {
    degrade_ratelimit::RateLimitConfig::per(1_000_000_000, Duration::from_secs(1))
        .burst(1_000_000_000)
}

/// The fastest repetition's time per call, in nanoseconds.
fn min_ns<S: Service<Req>>(svc: &mut S) -> f64 {
    let (calls, repetitions) = calls_and_repetitions();
    min_ns_per_call(calls, repetitions, || {
        let _ = black_box(call_now(svc, black_box(1)));
    })
}

/// Calls `svc` for two seconds, so that an adaptive limit takes the windows it needs to come
/// down to what this caller uses (the untested-limit rule: `served × 1.1 + 1`) and the
/// repetitions that follow time the layer as it stays.
fn settle<S: Service<Req>>(svc: &mut S) {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        for _ in 0..10_000 {
            let _ = black_box(call_now(svc, black_box(1)));
        }
    }
}

/// The settled limit beside a member's line.
fn report_limit(name: &str, limit: Option<degrade_core::limit::LimitSnapshot>) {
    if let Some(l) = limit {
        println!("{name:<20} limit {} (kept {})", l.limit, l.kept);
    }
}

/// One member's line: its name and time per call.
fn report(name: &str, ns: f64) {
    println!("{name:<20} {ns:>8.2} ns");
}

/// `svc` shared by one and by two threads ([`degrade_benches::contended`], wall time per call),
/// the two alternating within every repetition so that both meet the same moments of the host:
/// on a guest whose two vCPUs are sometimes two cores and sometimes less, timing all of one
/// then all of the other compares two different machines. Prints each one's fastest
/// repetition and the ratio (the second thread's gain).
fn report_threads<S>(prefix: &str, svc: &S)
where
    S: Service<Req> + Clone + Send,
{
    let mut best = [f64::INFINITY; 2];
    for _ in 0..REPETITIONS {
        for (threads, best) in [1, 2].into_iter().zip(best.iter_mut()) {
            let t = degrade_benches::contended(svc, threads, u64::from(CALLS));
            *best = best.min(t.as_secs_f64() * 1e9 / f64::from(CALLS));
        }
    }
    report(&format!("{prefix}-1-thread"), best[0]);
    report(&format!("{prefix}-2-thread"), best[1]);
    println!(
        "{prefix}: two threads give {:.2}x one thread's throughput",
        best[0] / best[1]
    );
}

/// Leaves `svc` as a `CanaryController` leaves its router under heavy traffic: a controller
/// at a 10 % step (baking for an hour, so the weight stays) reads a window of 200,000 calls,
/// 20,000 of them on the canary, and from then on each thread times 1 call in 16 of each arm.
fn judge_heavy_traffic<S, C, K, O, Cl, M, Clk>(
    svc: &mut degrade_canary::Canary<S, C, K, O, Cl, M, Clk>,
) -> degrade_canary::CanaryController
where
    degrade_canary::Canary<S, C, K, O, Cl, M, Clk>: Service<Req>,
{
    use degrade_canary::{CanaryConfig, CanaryController, CanaryStep};
    use futures_util::FutureExt;
    let hour = Duration::from_secs(3_600);
    let cfg = CanaryConfig {
        steps: vec![CanaryStep::new(10.0, hour), CanaryStep::new(100.0, hour)],
        ..CanaryConfig::default()
    };
    let mut controller = CanaryController::builder(cfg, svc.handle())
        .build()
        .expect("valid rollout");
    for _ in 0..CALLS {
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

/// An inner service whose every call is rejected by "a layer further in".
fn rejecting()
-> impl Service<Req, Response = Req, Error = BoxError, Future = Ready<Result<Req, BoxError>>> + Clone
{
    tower::service_fn(|_: Req| {
        let shed = Shed::new(Level::Heavy, Priority::Low, Duration::from_secs(1));
        ready(Err::<Req, BoxError>(Box::new(shed)))
    })
}

fn main() {
    let wanted: Vec<String> = std::env::args().skip(1).collect();
    let on = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
    let controller = Controller::new(Default::default()).expect("default ladder config");
    let adaptive = || {
        DegradeLayer::builder(controller.handle())
            .build()
            .expect("the default layer is valid")
    };
    // The canary of the `full-stack` members (10 %, unkeyed, every layer on its default clock)
    // and the stack over it: `DegradeLayer` → rate limit → breaker → canary.
    let ten_percent = || {
        Canary::builder(inner(), inner())
            .weight(Weight::new(1_000).expect("10 %"))
            .build()
            .expect("valid canary")
    };
    let stack_under = |layer: DegradeLayer, canary| {
        tower::ServiceBuilder::new()
            .layer(layer)
            .layer(RateLimitLayer::new(open_rate()).expect("valid rate limit"))
            .layer(BreakerLayer::new(BreakerConfig::default()).expect("valid breaker"))
            .service(canary)
    };
    let full_stack = |canary| stack_under(adaptive(), canary);

    if on("baseline") {
        report("baseline", min_ns(&mut inner()));
    }
    if on("admit") {
        report("admit", min_ns(&mut adaptive().layer(inner())));
    }
    if on("admit-settled") {
        let mut svc = adaptive().layer(inner());
        settle(&mut svc);
        report("admit-settled", min_ns(&mut svc));
        report_limit("admit-settled", svc.snapshot().limit);
    }
    if on("admit-shares") {
        let layer = DegradeLayer::builder(controller.handle())
            .admission(Admission::LevelShares)
            .build()
            .expect("level shares are valid");
        report("admit-shares", min_ns(&mut layer.layer(inner())));
    }
    if on("reject-limit") {
        let one = LimitConfig {
            initial: 1,
            min: 1,
            max: 1,
            queue_size: 0.0,
            ..LimitConfig::default()
        };
        let layer = DegradeLayer::builder(controller.handle())
            .limit(one)
            .build()
            .expect("a limit of one is valid");
        let mut svc = layer.layer(inner());
        let _held = svc.call(1); // takes the only slot for the whole run
        report("reject-limit", min_ns(&mut svc));
    }
    if on("downstream") {
        report("downstream", min_ns(&mut adaptive().layer(rejecting())));
    }
    if on("full-stack") {
        // Every layer on its default clock: `FastClock::unless_pausable()` for the
        // `DegradeLayer`'s sampled timing, the rate limit, the breaker (whose closed path reads
        // none) and the canary: the counter here, outside any runtime.
        let mut svc = full_stack(ten_percent());
        report("full-stack", min_ns(&mut svc));
    }
    if on("full-stack-settled") {
        let mut svc = full_stack(ten_percent());
        settle(&mut svc);
        report("full-stack-settled", min_ns(&mut svc));
        report_limit("full-stack-settled", svc.snapshot().limit);
    }
    if on("full-stack-limit-64") {
        let held = LimitConfig {
            initial: 64,
            min: 64,
            max: 64,
            ..LimitConfig::default()
        };
        let layer = DegradeLayer::builder(controller.handle())
            .limit(held)
            .build()
            .expect("a limit of 64 is valid");
        let mut svc = stack_under(layer, ten_percent());
        report("full-stack-limit-64", min_ns(&mut svc));
        let limit = svc.snapshot().limit.map(|l| l.limit);
        assert_eq!(limit, Some(64), "held");
    }
    if on("full-stack-judged") {
        // The same stack as a canary release runs it: its `CanaryController` has read heavy
        // traffic on both arms, so each thread times 1 call in 16 of each arm (the
        // `canary-judged` member) instead of every call.
        let mut canary = ten_percent();
        let _controller = judge_heavy_traffic(&mut canary);
        let mut svc = full_stack(canary);
        report("full-stack-judged", min_ns(&mut svc));
    }
    if on("full-stack-tokio-clock") {
        // The same with `TokioClock` in every layer (the criterion group's
        // `degrade/admit-tokio-clock`).
        let mut svc = tower::ServiceBuilder::new()
            .layer(adaptive())
            .layer(
                RateLimitLayer::builder(open_rate())
                    .clock(TokioClock)
                    .build()
                    .expect("valid rate limit"),
            )
            .layer(
                BreakerLayer::builder(BreakerConfig::default())
                    .clock(TokioClock)
                    .build()
                    .expect("valid breaker"),
            )
            .service(
                Canary::builder(inner(), inner())
                    .weight(Weight::new(1_000).expect("10 %"))
                    .clock(TokioClock)
                    .build()
                    .expect("valid canary"),
            );
        report("full-stack-tokio-clock", min_ns(&mut svc));
    }
    if on("full-stack-observed") || on("full-stack-observed-tokio-clock") {
        // The full stack under an `ObserveLayer` (every call timed: no latency signal reads
        // it), on its default clock (the counter here: its start is the call scope's counter
        // stamp, which the layers further in then reuse) and on `TokioClock` (a
        // `clock_gettime` for its start and one for its end, besides the counter's reads).
        let stack = || {
            tower::ServiceBuilder::new()
                .layer(adaptive())
                .layer(RateLimitLayer::new(open_rate()).expect("valid rate limit"))
                .layer(BreakerLayer::new(BreakerConfig::default()).expect("valid breaker"))
                .service(
                    Canary::builder(inner(), inner())
                        .weight(Weight::new(1_000).expect("10 %"))
                        .build()
                        .expect("valid canary"),
                )
        };
        if on("full-stack-observed") {
            let observe = degrade_triggers::ObserveLayer::new();
            let mut svc = observe.layer(stack());
            report("full-stack-observed", min_ns(&mut svc));
        }
        if on("full-stack-observed-tokio-clock") {
            let observe = degrade_triggers::ObserveLayer::builder()
                .clock(TokioClock)
                .build()
                .expect("valid observe layer");
            let mut svc = observe.layer(stack());
            report("full-stack-observed-tokio-clock", min_ns(&mut svc));
        }
    }
    if on("peers-full-stack") {
        let mut svc = peers::peer_stack(usize::MAX >> 4, peers::open_governor_quota());
        report("peers-full-stack", min_ns(&mut svc));
    }
    if on("ratelimit") {
        let layer = RateLimitLayer::new(open_rate()).expect("valid rate limit");
        assert!(!layer.clock().follows_tokio(), "no runtime: the counter");
        report("ratelimit", min_ns(&mut layer.layer(inner())));
    }
    if on("governor") {
        let limiter = governor::RateLimiter::direct(peers::open_governor_quota());
        report(
            "governor",
            min_ns_per_call(calls_and_repetitions().0, calls_and_repetitions().1, || {
                let _ = black_box(limiter.check());
            }),
        );
    }
    if on("observe") {
        let layer = degrade_triggers::ObserveLayer::new();
        report("observe", min_ns(&mut layer.layer(inner())));
        assert!(layer.snapshot().calls > 0, "the layer recorded the calls");
    }
    if on("observe-monitored") {
        use degrade_triggers::Signal;
        let layer = degrade_triggers::ObserveLayer::new();
        let mut svc = layer.layer(inner());
        for _ in 0..20_000 {
            let _ = black_box(call_now(&mut svc, 1));
        }
        let mut latency = layer.latency(Default::default()).expect("valid signal");
        let sampled = latency.sample(tokio::time::Instant::now());
        assert!(
            sampled.expect("a sample").is_some(),
            "20,000 calls measured"
        );
        report("observe-monitored", min_ns(&mut svc));
    }
    if on("observe-frozen-clock") {
        let layer = degrade_triggers::ObserveLayer::builder()
            .clock(degrade_benches::FrozenClock::now_frozen())
            .build()
            .expect("valid observe layer");
        report("observe-frozen-clock", min_ns(&mut layer.layer(inner())));
    }
    // Each member times the router itself, not behind a `tower::util::Either`: how a
    // caller inlines the `Either`'s poll is not the router's cost.
    let canary_builder = || {
        degrade_canary::Canary::builder(inner(), inner())
            .weight(degrade_canary::Weight::new(1_000).expect("10 %"))
    };
    if on("canary") {
        let mut svc = canary_builder().build().expect("valid canary");
        report("canary", min_ns(&mut svc));
    }
    if on("canary-frozen-clock") {
        let mut svc = canary_builder()
            .clock(degrade_benches::FrozenClock::now_frozen())
            .build()
            .expect("valid canary");
        report("canary-frozen-clock", min_ns(&mut svc));
    }
    if on("canary-judged") {
        let mut svc = degrade_canary::Canary::builder(inner(), inner())
            .weight(degrade_canary::Weight::new(1_000).expect("10 %"))
            .build()
            .expect("valid canary");
        let _controller = judge_heavy_traffic(&mut svc);
        report("canary-judged", min_ns(&mut svc));
    }
    if on("breaker") {
        let layer =
            degrade_breaker::BreakerLayer::builder(degrade_breaker::BreakerConfig::default())
                .build()
                .expect("valid breaker");
        report("breaker", min_ns(&mut layer.layer(inner())));
    }
    // `breaker-threads`: the default breaker (closed) shared by 1 and by 2 threads, as
    // `admit-threads` (wall time per call; the ratio is the second thread's gain).
    if wanted.iter().any(|w| w == "breaker-threads") {
        let svc = degrade_breaker::BreakerLayer::builder(degrade_breaker::BreakerConfig::default())
            .build()
            .expect("valid breaker")
            .layer(inner());
        report_threads("breaker", &svc);
    }
    // `keyed-ratelimit-10k`: a keyed rate limit cycling through 10,000 known keys (the
    // criterion `ratelimit/degrade/keyed-10k`); `keyed-ratelimit-threads`: the same layer from
    // 1 and 2 threads alternated, each thread on its own known key.
    if wanted
        .iter()
        .any(|w| w == "keyed-ratelimit-10k" || w == "keyed-ratelimit-threads")
    {
        let layer = RateLimitLayer::builder(open_rate())
            .keyed(
                degrade_core::key::from_fn(|r: &Req| Some(*r % 10_000)),
                degrade_ratelimit::KeysConfig::default(),
            )
            .build()
            .expect("valid rate limit");
        let mut svc = layer.layer(inner());
        for key in 0..10_000 {
            let _ = call_now(&mut svc, key);
        }
        if wanted.iter().any(|w| w == "keyed-ratelimit-10k") {
            let (calls, repetitions) = calls_and_repetitions();
            let mut n: Req = 0;
            let ns = min_ns_per_call(calls, repetitions, || {
                n = n.wrapping_add(1);
                let _ = black_box(call_now(&mut svc, black_box(n)));
            });
            report("keyed-ratelimit-10k", ns);
        }
        if wanted.iter().any(|w| w == "keyed-ratelimit-threads") {
            report_threads("keyed-ratelimit", &svc);
        }
        assert_eq!(
            layer.snapshot().keys,
            10_000,
            "every timed call was for a known key"
        );
    }
    // `keyed-breaker-threads`: a keyed breaker with 1,000 keys in its map, each thread calling
    // its own known key (thread i sends request i): one map read by both, two breakers.
    if wanted.iter().any(|w| w == "keyed-breaker-threads") {
        let layer = degrade_breaker::KeyedBreakerLayer::builder(
            degrade_breaker::BreakerConfig::default(),
            degrade_core::key::from_fn(|r: &Req| Some(*r)),
        )
        .build()
        .expect("valid breaker");
        let mut svc = layer.layer(inner());
        for key in 0..1_000 {
            let _ = call_now(&mut svc, key);
        }
        report_threads("keyed-breaker", &svc);
        assert_eq!(
            layer.snapshot().inserted,
            1_000,
            "every timed call was for a known key"
        );
    }
    // `admit-threads-rarely-timed`: the same with one request in 65,536 timed (the most
    // `timing_every` allows), to separate the in-flight accounting from the timed requests'
    // writes to the window's shared atomics.
    // `admit-threads-default`: the same at the default layer's limit (its initial 16, held),
    // as the criterion `admission-2-threads` member runs it.
    let default_limit = LimitConfig::default().initial;
    for (member, limit, timing_every, prefix) in [
        ("admit-threads", 64, 16, "admit"),
        (
            "admit-threads-rarely-timed",
            64,
            1 << 16,
            "admit-rarely-timed",
        ),
        ("admit-threads-default", default_limit, 16, "admit-default"),
    ] {
        if !wanted.iter().any(|w| w == member) {
            continue;
        }
        let fixed = LimitConfig {
            initial: limit,
            min: limit,
            max: limit,
            timing_every,
            ..LimitConfig::default()
        };
        let svc = DegradeLayer::builder(controller.handle())
            .limit(fixed)
            .build()
            .expect("a fixed limit is valid")
            .layer(inner());
        report_threads(prefix, &svc);
    }
    // `admit-threads-adaptive`: the default layer itself, its limit adapting (it stays at its
    // initial 16: the inner service answers at once and nothing queues).
    if wanted.iter().any(|w| w == "admit-threads-adaptive") {
        let svc = DegradeLayer::builder(controller.handle())
            .build()
            .expect("the default layer is valid")
            .layer(inner());
        report_threads("admit-adaptive", &svc);
    }
    // `full-stack-threads`: the `full-stack` member shared by 1 and by 2 threads (the
    // criterion group `full-stack-2-threads`), alternated as the members above.
    if wanted.iter().any(|w| w == "full-stack-threads") {
        let svc = full_stack(ten_percent());
        report_threads("full-stack", &svc);
    }
    // `threads-control`: a service that shares nothing between threads (a few nanoseconds of
    // arithmetic per call), timed as the members above: the most a second thread can give on
    // this machine at this moment, through this harness.
    if wanted.iter().any(|w| w == "threads-control") {
        let svc = tower::service_fn(|r: Req| {
            let mut x = r;
            for _ in 0..black_box(60u32) {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            }
            ready(Ok::<_, BoxError>(x))
        });
        report_threads("control", &svc);
    }
    if on("downstream-baseline") {
        report("downstream-baseline", min_ns(&mut rejecting()));
    }
}
