//! Sampled latency timing: under heavy traffic on both arms the router times only 1 call in
//! `n ≤ 16` of each arm (the same `n` for both), set by the controller from the judge's
//! windows; every count stays exact, an untimed call reads no clock, a canary with few calls
//! keeps every call timed, and the judge still rolls back a latency regression.

use degrade_canary::key::from_fn;
use degrade_canary::{
    Arm, Canary, CanaryConfig, CanaryController, CanaryPhase, CanaryStep, Verdict,
};
use degrade_core::{BoxError, Clock, ManualClock};
use futures_util::FutureExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

/// A manual clock that counts its reads.
#[derive(Clone)]
struct CountingClock {
    clock: ManualClock,
    reads: Arc<AtomicU64>,
}

impl CountingClock {
    fn new(clock: ManualClock) -> Self {
        Self {
            clock,
            reads: Arc::new(AtomicU64::new(0)),
        }
    }

    fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
}

impl Clock for CountingClock {
    fn now(&self) -> Instant {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.clock.now()
    }
}

/// A request: its user (the sticky key) and whether the backend fails it.
#[derive(Clone, Copy)]
struct Req {
    user: u64,
    fail: bool,
}

fn req(i: u64) -> Req {
    Req {
        user: i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % 10_000,
        fail: i % 50 == 7,
    }
}

/// A backend that answers at once, failing the requests marked so.
fn backend() -> impl Service<Req, Response = u64, Error = BoxError, Future: Send> + Clone + Send {
    tower::service_fn(|r: Req| async move {
        if r.fail {
            Err::<u64, BoxError>("backend failed".into())
        } else {
            Ok(r.user)
        }
    })
}

fn call<R, S: Service<R>>(svc: &mut S, r: R) -> Result<S::Response, S::Error> {
    let Some(Ok(svc)) = svc.ready().now_or_never() else {
        panic!("the backends are always ready");
    };
    svc.call(r)
        .now_or_never()
        .expect("the backends answer at once")
}

/// A rollout with a long bake at `percent`: the controller keeps the weight and only reads.
fn one_step(percent: f64) -> CanaryConfig {
    let hour = Duration::from_secs(3_600);
    CanaryConfig {
        steps: vec![CanaryStep::new(percent, hour), CanaryStep::new(100.0, hour)],
        ..CanaryConfig::default()
    }
}

/// Per-arm tallies a caller keeps: routed, failures, cancelled.
#[derive(Default, Clone, Copy, PartialEq, Debug)]
struct Tally {
    routed: u64,
    failures: u64,
    cancelled: u64,
}

#[test]
fn counts_stay_exact_under_heavy_multi_thread_traffic_while_most_calls_go_untimed() {
    let clock = CountingClock::new(ManualClock::new());
    let router = Canary::builder(backend(), backend())
        .key(from_fn(|r: &Req| Some(r.user)))
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut controller = CanaryController::builder(one_step(10.0), router.handle())
        .clock(ManualClock::new())
        .build()
        .unwrap();
    assert_eq!(router.weight().get(), 1_000);

    // One window of heavy traffic: 200,000 calls, about 20,000 on the canary, every one timed.
    let mut svc = router.clone();
    for i in 0..200_000 {
        let _ = call(&mut svc, req(i));
    }
    let before = router.snapshot();
    assert_eq!(before.stable.latency.count(), before.stable.samples());
    assert_eq!(
        clock.reads(),
        2 * 200_000,
        "every call timed before the first look"
    );
    assert_ne!(
        controller.tick().now_or_never().unwrap().unwrap().verdict,
        Verdict::Fail
    );
    assert_eq!(router.weight().get(), 1_000, "still baking at 10 %");

    // Four threads at once; each drops 1 future in 100 unpolled (a cancelled call).
    let reads_before = clock.reads();
    let tallies: Vec<[Tally; 2]> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4u64)
            .map(|t| {
                let mut svc = router.clone();
                s.spawn(move || {
                    let mut tally = [Tally::default(); 2];
                    for i in 0..50_000u64 {
                        let r = req(1_000_000 * (t + 1) + i);
                        let fut = svc.ready().now_or_never().unwrap().unwrap().call(r);
                        let arm = usize::from(fut.arm() == Arm::Canary);
                        tally[arm].routed += 1;
                        if i % 100 == 3 {
                            drop(fut);
                            tally[arm].cancelled += 1;
                        } else if fut.now_or_never().unwrap().is_err() {
                            tally[arm].failures += 1;
                        }
                    }
                    tally
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let d = router.snapshot().since(&before);
    let mut timed_calls = 0;
    for (a, arm) in [(0, &d.stable), (1, &d.canary)] {
        let want = tallies.iter().fold(Tally::default(), |mut sum, t| {
            sum.routed += t[a].routed;
            sum.failures += t[a].failures;
            sum.cancelled += t[a].cancelled;
            sum
        });
        let got = Tally {
            routed: arm.routed,
            failures: arm.failures,
            cancelled: arm.cancelled,
        };
        assert_eq!(got, want, "arm {a}: every count exact");
        assert_eq!(
            arm.successes + arm.failures + arm.cancelled,
            arm.routed,
            "arm {a}: every routed call ended once"
        );
        // The groups' exact calls plus the unkeyed ones (none here) are the arm's.
        let grouped: u64 = arm.groups.iter().map(|g| g.calls).sum();
        assert_eq!(
            grouped,
            arm.samples(),
            "arm {a}: the groups hold every call"
        );
        assert_eq!(
            arm.groups.iter().map(|g| g.failures).sum::<u64>(),
            arm.failures
        );
        // 1 in 16 of each thread's calls of this arm timed (each thread within one of it: a
        // thread's slot may start mid-sequence); the cancelled ones among them have no
        // latency.
        let timed = arm.latency.count();
        let most = want.routed / 16 + 4;
        let least = (want.routed - want.cancelled) / 16 - 4;
        assert!(
            (least..=most).contains(&timed),
            "arm {a}: {timed} of {} calls timed",
            want.routed
        );
        timed_calls += timed;
    }
    assert!(d.canary.routed > 15_000, "about 10 % of 200,000");
    // An untimed call reads no clock, neither in `call` nor at completion; a timed one reads
    // it twice (once if it was cancelled).
    let reads = clock.reads() - reads_before;
    assert!(
        (2 * timed_calls..=2 * timed_calls + d.stable.cancelled + d.canary.cancelled)
            .contains(&reads),
        "{reads} clock reads for {timed_calls} timed calls"
    );
}

/// A router no controller reads (a weighted split read only by snapshots): each thread times
/// its first 65,536 calls of each arm and 1 in 16 after them, reading no clock for the others;
/// every count stays exact; building a controller makes every call timed again.
#[test]
fn a_router_no_controller_reads_samples_its_heavy_traffic_until_one_is_built() {
    use degrade_core::counter::TimingSampler;
    let clock = CountingClock::new(ManualClock::new());
    let router = Canary::builder(backend(), backend())
        .key(from_fn(|r: &Req| Some(r.user)))
        .weight(degrade_canary::Weight::new(0).unwrap())
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut svc = router.clone();
    let warm = TimingSampler::UNREAD_CALLS;
    // On a thread of its own: its calls are the only ones in its row of the router's counters.
    let calls = warm + 16_000;
    let (snap, reads) = std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..calls {
                let _ = call(&mut svc, req(i));
            }
            (router.snapshot(), clock.reads())
        })
        .join()
        .unwrap()
    });
    // Every call on stable (weight 0): the first 65,536 timed, then 1 in 16.
    assert_eq!(snap.stable.routed, calls);
    assert_eq!(snap.stable.samples(), calls, "every outcome counted");
    let timed = warm + 16_000 / 16;
    assert_eq!(snap.stable.latency.count(), timed);
    assert_eq!(reads, 2 * timed, "an untimed call reads no clock");

    // A controller built now reads a quiet window: every call timed from then on.
    let _controller = CanaryController::builder(one_step(10.0), router.handle())
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let mut svc = router.clone();
    let before = router.snapshot();
    let d = std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..(warm + 1_000) {
                let _ = call(&mut svc, req(i));
            }
            router.snapshot().since(&before)
        })
        .join()
        .unwrap()
    });
    for arm in [&d.stable, &d.canary] {
        assert_eq!(arm.latency.count(), arm.samples());
    }
    assert_eq!(d.stable.routed + d.canary.routed, warm + 1_000);
}

#[test]
fn a_canary_with_few_calls_keeps_every_call_timed_on_both_arms() {
    let router = Canary::builder(backend(), backend())
        .key(from_fn(|r: &Req| Some(r.user)))
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let mut controller = CanaryController::builder(one_step(1.0), router.handle())
        .clock(ManualClock::new())
        .build()
        .unwrap();
    assert_eq!(router.weight().get(), 100);
    let mut svc = router.clone();
    // 100,000 calls a window: stable alone could be sampled 1 in 16, but the 1 % canary has
    // about 1,000 calls, which the judge needs every one of; both arms stay alike.
    for round in 0..3u64 {
        let before = router.snapshot();
        for i in 0..100_000 {
            let _ = call(&mut svc, req(round * 100_000 + i));
        }
        let d = router.snapshot().since(&before);
        assert!(d.canary.samples() < 2_000, "{}", d.canary.samples());
        for arm in [&d.stable, &d.canary] {
            assert_eq!(arm.latency.count(), arm.samples(), "round {round}");
        }
        controller.tick().now_or_never().unwrap().unwrap();
    }
}

#[test]
fn the_judge_rolls_back_a_latency_regression_while_calls_are_sampled() {
    // The backends move the router's manual clock by each request's latency while they
    // answer: the router reads its start before and its end after, as with a real backend.
    let clock = ManualClock::new();
    let slow = Arc::new(AtomicBool::new(false));
    let answer = |clock: ManualClock, factor: Option<Arc<AtomicBool>>| {
        tower::service_fn(move |r: Req| {
            // 5 to 24 ms by user: a spread like a real service's.
            let mut us = 5_000 + (r.user * 7_919 % 20) * 1_000;
            if factor.as_ref().is_some_and(|f| f.load(Ordering::Relaxed)) {
                us = us * 3 / 2;
            }
            clock.advance(Duration::from_micros(us));
            std::future::ready(Ok::<_, BoxError>(r.user))
        })
    };
    let router = Canary::builder(
        answer(clock.clone(), None),
        answer(clock.clone(), Some(slow.clone())),
    )
    .key(from_fn(|r: &Req| Some(r.user)))
    .clock(clock.clone())
    .build()
    .unwrap();
    let mut controller = CanaryController::builder(one_step(10.0), router.handle())
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let mut svc = router.clone();
    let mut i = 0;
    let mut window = |svc: &mut _, n: u64| {
        for _ in 0..n {
            let _ = call(
                svc,
                Req {
                    user: req(i).user,
                    fail: false,
                },
            );
            i += 1;
        }
    };

    // A healthy window of heavy traffic: the judge sees no regression and lets the router
    // time 1 call in 16.
    window(&mut svc, 200_000);
    let j = controller.tick().now_or_never().unwrap().unwrap();
    assert_ne!(j.verdict, Verdict::Fail, "{j:?}");

    // The candidate turns 50 % slower. The next window is sampled, and enough.
    slow.store(true, Ordering::Relaxed);
    let before = router.snapshot();
    window(&mut svc, 200_000);
    let d = router.snapshot().since(&before);
    assert!(
        d.canary.latency.count() * 8 < d.canary.samples(),
        "sampled: {} of {} canary calls timed",
        d.canary.latency.count(),
        d.canary.samples()
    );
    assert!(d.canary.latency.count() >= 1_000, "the judge's floor");
    let j = controller.tick().now_or_never().unwrap().unwrap();
    assert_eq!(j.verdict, Verdict::Fail, "{j:?}");
    assert_eq!(j.reason, "canary latency above stable's");
    assert_eq!(controller.state().phase, CanaryPhase::RolledBack);
    assert_eq!(router.weight().get(), 0);
}

/// What an unkeyed request does at the backend.
#[derive(Clone, Copy, PartialEq)]
enum Fate {
    Succeed,
    Fail,
    /// Rejected by "a layer further in": the default classifier ignores it.
    Shed,
}

fn fate(i: u64) -> Fate {
    match (i % 50, i % 40) {
        (7, _) => Fate::Fail,
        (_, 5) => Fate::Shed,
        _ => Fate::Succeed,
    }
}

/// Per-arm tallies of unkeyed calls, as the caller sees them.
#[derive(Default, Clone, Copy, PartialEq, Debug)]
struct Ends {
    routed: u64,
    successes: u64,
    failures: u64,
    ignored: u64,
    cancelled: u64,
}

#[test]
fn unkeyed_calls_count_exactly_whether_timed_or_not() {
    let shedding = || {
        tower::service_fn(|f: Fate| async move {
            match f {
                Fate::Succeed => Ok(1u64),
                Fate::Fail => Err::<u64, BoxError>("backend failed".into()),
                Fate::Shed => Err(Box::new(degrade_core::Shed::new(
                    degrade_core::Level::Heavy,
                    degrade_core::Priority::Low,
                    Duration::from_secs(1),
                )) as BoxError),
            }
        })
    };
    let clock = CountingClock::new(ManualClock::new());
    let router = Canary::builder(shedding(), shedding())
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut controller = CanaryController::builder(one_step(10.0), router.handle())
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let mut svc = router.clone();
    for _ in 0..200_000 {
        let _ = call(&mut svc, Fate::Succeed);
    }
    controller.tick().now_or_never().unwrap().unwrap();
    assert_eq!(router.weight().get(), 1_000, "still baking at 10 %");

    // Two threads of unkeyed calls, now mostly untimed; 1 future in 100 dropped unpolled.
    let before = router.snapshot();
    let reads_before = clock.reads();
    let tallies: Vec<[Ends; 2]> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let mut svc = router.clone();
                s.spawn(move || {
                    let mut ends = [Ends::default(); 2];
                    for i in 0..40_000u64 {
                        let f = fate(i);
                        let fut = svc.ready().now_or_never().unwrap().unwrap().call(f);
                        let e = &mut ends[usize::from(fut.arm() == Arm::Canary)];
                        e.routed += 1;
                        if i % 100 == 3 {
                            drop(fut);
                            e.cancelled += 1;
                            continue;
                        }
                        let _ = fut.now_or_never().unwrap();
                        match f {
                            Fate::Succeed => e.successes += 1,
                            Fate::Fail => e.failures += 1,
                            Fate::Shed => e.ignored += 1,
                        }
                    }
                    ends
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let d = router.snapshot().since(&before);
    let mut timed_calls = 0;
    for (a, arm) in [(0, &d.stable), (1, &d.canary)] {
        let want = tallies.iter().fold(Ends::default(), |mut sum, t| {
            sum.routed += t[a].routed;
            sum.successes += t[a].successes;
            sum.failures += t[a].failures;
            sum.ignored += t[a].ignored;
            sum.cancelled += t[a].cancelled;
            sum
        });
        let got = Ends {
            routed: arm.routed,
            successes: arm.successes,
            failures: arm.failures,
            ignored: arm.ignored,
            cancelled: arm.cancelled,
        };
        assert_eq!(got, want, "arm {a}: every count exact");
        assert!(
            arm.groups.iter().all(|g| g.calls == 0 && g.cancelled == 0),
            "arm {a}: unkeyed calls are in no group"
        );
        // Each thread times 1 in 16 of its calls of each arm; cancelled and ignored calls
        // carry no latency.
        let timed = arm.latency.count();
        let most = want.routed / 16 + 2;
        let least = (want.successes + want.failures) / 16 - 2;
        assert!(
            (least..=most).contains(&timed),
            "arm {a}: {timed} of {} calls timed",
            want.routed
        );
        timed_calls += timed;
    }
    assert_eq!(
        d.canary.routed, 8_000,
        "the stride: exactly 10 % of each thread's calls"
    );
    // A timed call reads the clock twice (once if cancelled, twice if ignored); no other does.
    let reads = clock.reads() - reads_before;
    let not_judged = d.stable.ignored + d.stable.cancelled + d.canary.ignored + d.canary.cancelled;
    let most = 2 * timed_calls + 2 * (not_judged / 16 + 8);
    assert!(
        (2 * timed_calls..=most).contains(&reads),
        "{reads} clock reads for {timed_calls} timed calls"
    );
}
