//! The `DegradeLayer` as a tower service, and the controller on paused and manual time.

use degrade_core::ladder::{LadderConfig, Reading};
use degrade_core::{BoxError, Controller, DegradeLayer, Level, Policy, Priority, Shed};
use futures_util::FutureExt;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use std::convert::Infallible;
use std::future::ready;
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

fn echo() -> impl Service<
    u8,
    Response = u8,
    Error = Infallible,
    Future = std::future::Ready<Result<u8, Infallible>>,
> + Clone {
    tower::service_fn(|n: u8| ready(Ok::<_, Infallible>(n)))
}

fn call<S: Service<u8, Error = BoxError>>(svc: &mut S, n: u8) -> Result<S::Response, BoxError> {
    svc.ready().now_or_never().unwrap()?;
    svc.call(n).now_or_never().unwrap()
}

#[test]
fn shed_error_carries_level_priority_and_retry_after() {
    let c = Controller::new(Default::default()).unwrap();
    let layer = DegradeLayer::builder(c.handle())
        .admission(degrade_core::degrade::Admission::LevelShares)
        .prioritize(|_: &u8| Priority::Low)
        .retry_after(Duration::from_secs(7))
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    assert_eq!(call(&mut svc, 1).unwrap(), 1);
    c.pin(Level::Moderate);
    let err = call(&mut svc, 1).unwrap_err();
    let shed = err.downcast_ref::<Shed>().unwrap();
    assert_eq!(
        (shed.level, shed.priority),
        (Level::Moderate, Priority::Low)
    );
    assert_eq!(shed.retry_after, Duration::from_secs(7));
}

#[test]
fn clones_of_the_layer_and_services_share_counters() {
    let c = Controller::new(Default::default()).unwrap();
    let layer = DegradeLayer::new(c.handle(), Policy::default()).unwrap();
    let mut a = layer.clone().layer(echo());
    let mut b = layer.layer(echo());
    let mut a2 = a.clone();
    for svc in [&mut a, &mut b, &mut a2] {
        call(svc, 0).unwrap();
    }
    assert_eq!(a.snapshot().offered(), 3);
    assert_eq!(b.snapshot(), a2.snapshot());
}

/// With the level's shares on (alone or with the adaptive limit), a priority the level in
/// force admits whole takes the fast path and one admitted a share goes through the share's
/// decision: every request is counted once, each priority gets exactly its share of 100 calls,
/// the limit's slots all come back, and a level change is read by the very next request.
#[test]
fn level_shares_admit_whole_priorities_and_decide_fractional_ones_exactly() {
    use degrade_core::degrade::Admission;
    for admission in [Admission::LevelShares, Admission::Both] {
        let c = Controller::new(Default::default()).unwrap();
        let policy = Policy::default();
        let layer = DegradeLayer::builder(c.handle())
            .admission(admission)
            .prioritize(|n: &u8| Priority::ALL[usize::from(*n)])
            .build()
            .unwrap();
        let mut svc = layer.layer(echo());
        let mut expected_admitted = [0u64; 5];
        let mut offered = 0u64;
        for level in [Level::Normal, Level::Heavy, Level::Moderate, Level::Normal] {
            c.pin(level);
            for p in Priority::ALL {
                let share = policy.level(level).admit.get(p);
                let mut admitted = 0u64;
                for _ in 0..100 {
                    offered += 1;
                    match call(&mut svc, p.index() as u8) {
                        Ok(_) => admitted += 1,
                        Err(e) => {
                            let shed = e.downcast_ref::<Shed>().expect("shed by the share");
                            assert_eq!((shed.level, shed.priority), (level, p));
                        }
                    }
                }
                assert_eq!(
                    admitted,
                    (share * 100.0).round() as u64,
                    "{admission:?} {level:?} {p:?}"
                );
                expected_admitted[p.index()] += admitted;
            }
        }
        let snap = layer.snapshot();
        assert_eq!(snap.offered(), offered, "{admission:?}");
        assert_eq!(snap.admitted, expected_admitted, "{admission:?}");
        assert_eq!(snap.offered(), snap.admitted() + snap.rejected());
        if let Some(limit) = snap.limit {
            assert_eq!(limit.in_flight, 0, "{admission:?}: every slot given back");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/service.txt",
        ))),
        ..ProptestConfig::default()
    })]

    /// At any level, once some request of priority `q` has been admitted, no request of a
    /// higher priority is shed at that level.
    #[test]
    fn never_sheds_a_higher_priority_while_admitting_a_lower_one(
        level in 0usize..5, prios in prop::collection::vec(0u8..5, 1..400)
    ) {
        let c = Controller::new(Default::default()).unwrap();
        c.pin(Level::from_index(level).unwrap());
        let layer = DegradeLayer::builder(c.handle())
            .admission(degrade_core::degrade::Admission::LevelShares)
            .prioritize(|n: &u8| Priority::ALL[usize::from(*n)])
            .build()
            .unwrap();
        let mut svc = layer.layer(echo());
        let mut lowest_admitted: Option<u8> = None;
        let mut highest_shed: Option<u8> = None;
        for p in prios {
            match call(&mut svc, p) {
                Ok(_) => lowest_admitted = Some(lowest_admitted.map_or(p, |l| l.min(p))),
                Err(e) => {
                    prop_assert!(e.is::<Shed>());
                    highest_shed = Some(highest_shed.map_or(p, |h| h.max(p)));
                }
            }
            if let (Some(low), Some(high)) = (lowest_admitted, highest_shed) {
                // A shed priority above an admitted one is only allowed for a fractional share
                // of that very priority.
                prop_assert!(high <= low, "shed {} while admitting {}", high, low);
            }
        }
        let snap = layer.snapshot();
        prop_assert_eq!(snap.offered(), snap.admitted() + snap.rejected());
    }
}

fn fast_ladder() -> LadderConfig {
    LadderConfig {
        escalate_after: 1,
        recover_after: 1,
        dwell: Duration::from_secs(10),
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn paused_tokio_time_drives_the_controller() {
    let c = Controller::new(fast_ladder()).unwrap();
    c.observe(&[Reading::new("cpu", 0.99)]);
    assert_eq!(c.level(), Level::Emergency);
    tokio::time::advance(Duration::from_secs(9)).await;
    c.observe(&[Reading::new("cpu", 0.0)]);
    assert_eq!(c.level(), Level::Emergency, "the dwell has not passed");
    tokio::time::advance(Duration::from_secs(1)).await;
    c.observe(&[Reading::new("cpu", 0.0)]);
    assert_eq!(c.level(), Level::Heavy);
    let h = c.handle().history();
    assert_eq!(h[1].time_at_previous, Duration::from_secs(10));
}

#[cfg(feature = "test-util")]
#[test]
fn manual_clock_drives_the_controller_and_subscribers_see_each_change() {
    use degrade_core::ManualClock;
    let clock = ManualClock::new();
    let c = Controller::with_clock(fast_ladder(), clock.clone()).unwrap();
    let mut rx = c.handle().subscribe();
    c.observe(&[Reading::new("queue", 0.91)]);
    assert_eq!(*rx.borrow_and_update(), Level::Heavy);
    for expected in [Level::Moderate, Level::Light, Level::Normal] {
        c.observe(&[Reading::new("queue", 0.0)]);
        assert!(!rx.has_changed().unwrap(), "no step before the dwell");
        clock.advance(Duration::from_secs(10));
        c.observe(&[Reading::new("queue", 0.0)]);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), expected);
    }
}

#[test]
fn history_is_bounded() {
    let c = Controller::new(LadderConfig {
        history: 3,
        ..Default::default()
    })
    .unwrap();
    for l in [
        Level::Light,
        Level::Heavy,
        Level::Normal,
        Level::Emergency,
        Level::Light,
    ] {
        c.pin(l);
    }
    let h = c.handle().history();
    assert_eq!(h.len(), 3);
    assert_eq!(
        h.iter().map(|t| t.to).collect::<Vec<_>>(),
        [Level::Normal, Level::Emergency, Level::Light]
    );
}

#[cfg(feature = "grpc")]
#[test]
fn grpc_mode_answers_unavailable_with_retry_info() {
    let c = Controller::new(Default::default()).unwrap();
    c.pin(Level::Emergency);
    let layer = DegradeLayer::builder(c.handle())
        .admission(degrade_core::degrade::Admission::LevelShares)
        .prioritize(
            degrade_core::priority::GrpcMethodPriority::new(Priority::Normal)
                .service("grpc.health.v1.Health", Priority::Critical),
        )
        .retry_after(Duration::from_secs(2))
        .build()
        .unwrap()
        .grpc();
    let mut svc = layer.layer(tower::service_fn(|_: http::Request<()>| {
        ready(Ok::<_, Infallible>(http::Response::new(())))
    }));
    let req = |path: &str| http::Request::builder().uri(path).body(()).unwrap();
    let ok = svc
        .call(req("/grpc.health.v1.Health/Check"))
        .now_or_never()
        .unwrap()
        .unwrap();
    assert!(ok.headers().get("grpc-status").is_none());
    let shed = svc
        .call(req("/shop.Catalog/List"))
        .now_or_never()
        .unwrap()
        .unwrap();
    let status = tonic::Status::from_header_map(shed.headers()).unwrap();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(
        degrade_core::rejection::grpc::retry_delay(&status),
        Some(Duration::from_secs(2))
    );
}

/// A response future holds its slot of the limit without a reference count on the layer: the
/// slot's word outlives the layer and is reused only once the last request of the old layer
/// has given its slot back, so a new layer never starts with someone else's requests in flight.
#[test]
fn a_request_outliving_its_layer_never_counts_against_a_new_layer() {
    use degrade_core::limit::LimitConfig;
    let c = Controller::new(Default::default()).unwrap();
    let one = LimitConfig {
        initial: 1,
        min: 1,
        max: 1,
        queue_size: 0.0,
        ..LimitConfig::default()
    };
    let build = || {
        DegradeLayer::builder(c.handle())
            .limit(one.clone())
            .build()
            .unwrap()
    };
    let in_flight = |layer: &DegradeLayer| layer.snapshot().limit.unwrap().in_flight;

    let old = build();
    let mut svc = old.layer(echo());
    let pending = svc.call(1); // holds the only slot, never polled
    let completes_late = {
        let other = build();
        let mut svc = other.layer(echo());
        svc.call(2)
    }; // its layer is gone before it is polled
    drop((svc, old));

    let live = build();
    let mut svc = live.layer(echo());
    let held = svc.call(3);
    assert_eq!(in_flight(&live), 1);

    assert_eq!(completes_late.now_or_never().unwrap().unwrap(), 2);
    drop(pending); // the old layer's last slot: its word is free now
    for _ in 0..8 {
        let fresh = build();
        assert_eq!(in_flight(&fresh), 0, "a new layer starts empty");
        let mut svc = fresh.layer(echo());
        assert_eq!(call(&mut svc, 4).unwrap(), 4);
        assert_eq!(in_flight(&fresh), 0);
        let _held = svc.call(5);
        assert_eq!(in_flight(&fresh), 1);
    }
    assert_eq!(
        in_flight(&live),
        1,
        "no other layer touched this one's count"
    );
    assert_eq!(held.now_or_never().unwrap().unwrap(), 3);
    assert_eq!(in_flight(&live), 0);
}

/// A timed request's response future reaches its layer's window through the layer's recycled
/// `&'static` state, not a reference count on the layer: a request that outlives its layer
/// records its latency into that layer's (orphaned) window, never into a new layer's, and a
/// layer that reuses the state once it is idle starts from an empty window. On paused time:
/// each layer learns exactly its own service's latency.
#[tokio::test(start_paused = true)]
async fn a_timed_request_outliving_its_layer_never_counts_against_a_new_one() {
    use degrade_core::limit::LimitConfig;
    let c = Controller::new(Default::default()).unwrap();
    let every = LimitConfig {
        timing_every: 1,
        ..LimitConfig::default()
    };
    let build = || {
        DegradeLayer::builder(c.handle())
            .limit(every.clone())
            .build()
            .unwrap()
    };
    // Answers after `ms` milliseconds.
    let sleepy = || {
        tower::service_fn(|ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, Infallible>(ms)
        })
    };
    // Calls of `ms` one after another until the layer has learnt a baseline.
    async fn learn<S>(baseline: impl Fn() -> Option<Duration>, svc: &mut S, ms: u64) -> Duration
    where
        S: Service<u64, Response = u64, Error = BoxError>,
    {
        for _ in 0..10_000 {
            if let Some(b) = baseline() {
                return b;
            }
            svc.ready().await.unwrap().call(ms).await.unwrap();
        }
        panic!("no baseline learnt");
    }

    let old = build();
    let mut svc = old.layer(sleepy());
    let late = tokio::spawn(svc.ready().await.unwrap().call(10_000)); // timed, 10 s
    tokio::task::yield_now().await;
    drop((svc, old));

    let new = build();
    let mut svc = new.layer(sleepy());
    let learnt = learn(|| new.snapshot().limit.unwrap().baseline, &mut svc, 1).await;
    assert!(
        learnt >= Duration::from_millis(1) && learnt < Duration::from_millis(3),
        "the new layer learnt its own 1 ms, not the old request's 10 s: {learnt:?}"
    );
    assert_eq!(late.await.unwrap().unwrap(), 10_000); // ends into the old layer's state
    let before = new.snapshot().limit.unwrap();

    // The old state is idle now: a later layer may get it, and starts from an empty window.
    for _ in 0..4 {
        let fresh = build();
        let mut svc = fresh.layer(sleepy());
        let learnt = learn(|| fresh.snapshot().limit.unwrap().baseline, &mut svc, 5).await;
        assert!(
            learnt >= Duration::from_millis(5) && learnt < Duration::from_millis(7),
            "a recycled state starts from an empty window: {learnt:?}"
        );
    }
    let mut after = new.snapshot().limit.unwrap();
    // The slot this thread kept for the new layer went back when its lease moved to the
    // fresh layers': the thread's doing, not another layer's request.
    after.kept = before.kept;
    assert_eq!(after, before, "no other layer's request touched this one");
}

/// Through the layer, on paused tokio time: when the wait queue is full of critical requests,
/// a critical newcomer takes the place of the one that waited longest, which is refused (as
/// limited, counted as evicted); the rest are served oldest first as slots free up.
#[tokio::test(start_paused = true)]
async fn a_queue_full_of_critical_waiters_refuses_its_oldest_for_a_critical_newcomer() {
    use degrade_core::limit::LimitConfig;
    let c = Controller::new(Default::default()).unwrap();
    let layer = DegradeLayer::builder(c.handle())
        .prioritize(|_: &u8| Priority::Critical)
        .limit(LimitConfig {
            initial: 2,
            min: 2,
            max: 2,
            ..LimitConfig::default()
        })
        .build()
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(|n: u8| async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok::<_, Infallible>(n)
    }));
    // One at a time: the limiter learns the 10 ms baseline, and with it a queueing target.
    for n in 0..40 {
        assert_eq!(svc.ready().await.unwrap().call(n).await.unwrap(), n);
    }
    let snapshot = || layer.snapshot().limit.unwrap();
    assert!(snapshot().queue_target.is_some(), "{:?}", snapshot());

    // Critical requests may go a tenth over the limit, at least one: three in flight.
    let mut held: Vec<_> = Vec::new();
    for n in 100..103 {
        held.push(svc.ready().await.unwrap().call(n));
    }
    assert_eq!((snapshot().in_flight, snapshot().waiting), (3, 0));
    // The queue holds as many as the limit, a limit below four counting as four: four.
    let mut oldest = Box::pin(svc.ready().await.unwrap().call(110));
    let mut rest = Vec::new();
    for n in 111..114 {
        rest.push(Box::pin(svc.ready().await.unwrap().call(n)));
    }
    assert_eq!(snapshot().waiting, 4);
    assert!(oldest.as_mut().now_or_never().is_none(), "waits");
    // A fifth critical request: the oldest waiter is refused, the newcomer waits.
    let mut newest = Box::pin(svc.ready().await.unwrap().call(114));
    assert_eq!((snapshot().waiting, snapshot().evicted), (4, 1));
    let refused = oldest.now_or_never().expect("decided").unwrap_err();
    assert!(refused.downcast_ref::<Shed>().is_some(), "{refused}");
    for waiter in &mut rest {
        assert!(waiter.as_mut().now_or_never().is_none());
    }
    assert!(newest.as_mut().now_or_never().is_none());

    // A slot frees: the oldest of the waiters gets it.
    drop(held.pop());
    assert_eq!((snapshot().in_flight, snapshot().waiting), (3, 3));
    drop(held);
    for (waiter, n) in rest.into_iter().zip(111..) {
        assert_eq!(waiter.await.unwrap(), n);
    }
    assert_eq!(newest.await.unwrap(), 114);
    assert_eq!(snapshot().in_flight, 0);
}

/// A layer with a fixed limit of two that has learnt a 10 ms baseline (queueing target 5 ms,
/// so the queue stands after 10 ms), over a service that answers request `n < 100` after
/// 10 ms and never answers any other (its slot frees when its future is dropped).
async fn two_slots_with_a_target() -> (
    DegradeLayer,
    impl Service<u8, Response = u8, Error = BoxError>,
) {
    use degrade_core::limit::LimitConfig;
    let c = Controller::new(Default::default()).unwrap();
    let layer = DegradeLayer::builder(c.handle())
        .limit(LimitConfig {
            initial: 2,
            min: 2,
            max: 2,
            ..LimitConfig::default()
        })
        .build()
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(|n: u8| async move {
        if n < 100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        } else {
            std::future::pending::<()>().await;
        }
        Ok::<_, Infallible>(n)
    }));
    // One at a time: the limiter learns the 10 ms baseline, and with it a queueing target.
    for n in 0..40 {
        assert_eq!(svc.ready().await.unwrap().call(n).await.unwrap(), n);
    }
    let limit = layer.snapshot().limit.unwrap();
    assert_eq!(
        limit.queue_target,
        Some(Duration::from_millis(5)),
        "{limit:?}"
    );
    (layer, svc)
}

/// Through the layer, on paused tokio time: the limit's two slots are held, one request
/// waits, and a slot frees 8 ms later — past its 5 ms target, but the queue has held only
/// this waiter, for less than its 10 ms interval: a burst passing, not a standing queue. The
/// waiter is served, not refused (the expiry pass that runs when the slot frees used to
/// refuse it first).
#[tokio::test(start_paused = true)]
async fn a_late_waiter_in_a_burst_is_served_when_the_queue_is_not_standing() {
    let (layer, mut svc) = two_slots_with_a_target().await;
    let snapshot = || layer.snapshot().limit.unwrap();
    let mut held = Vec::new();
    for n in 100..102 {
        held.push(svc.ready().await.unwrap().call(n));
    }
    assert_eq!(snapshot().in_flight, 2);
    let mut late = Box::pin(svc.ready().await.unwrap().call(1));
    assert!(late.as_mut().now_or_never().is_none(), "waits");
    assert_eq!(snapshot().waiting, 1);

    tokio::time::advance(Duration::from_millis(8)).await;
    drop(held.pop());
    let s = snapshot();
    assert_eq!((s.expired, s.waiting, s.in_flight), (0, 0, 2), "handed on");
    assert_eq!(s.queue_delay, Duration::from_millis(8));
    assert_eq!(
        late.await.unwrap(),
        1,
        "served after waiting past its target"
    );
    drop(held);
    assert_eq!(snapshot().in_flight, 0);
}

/// Through the layer, on paused tokio time: the same two held slots, but the queue stands —
/// a first waiter came 11 ms before a newcomer, and the queue has not emptied since. The
/// newcomer's arrival runs the expiry pass: the first waiter, past its target in a queue
/// that has stood its interval, is refused; the newcomer waits, and gets the next slot.
#[tokio::test(start_paused = true)]
async fn a_standing_queue_still_refuses_past_the_target() {
    let (layer, mut svc) = two_slots_with_a_target().await;
    let snapshot = || layer.snapshot().limit.unwrap();
    let mut held = Vec::new();
    for n in 100..102 {
        held.push(svc.ready().await.unwrap().call(n));
    }
    let mut first = Box::pin(svc.ready().await.unwrap().call(1));
    assert!(first.as_mut().now_or_never().is_none(), "waits");

    tokio::time::advance(Duration::from_millis(11)).await;
    let mut newcomer = Box::pin(svc.ready().await.unwrap().call(2));
    assert_eq!((snapshot().expired, snapshot().waiting), (1, 1));
    let refused = first.now_or_never().expect("decided").unwrap_err();
    assert!(refused.downcast_ref::<Shed>().is_some(), "{refused}");
    assert!(newcomer.as_mut().now_or_never().is_none(), "waits");

    drop(held.pop());
    assert_eq!(newcomer.await.unwrap(), 2);
    drop(held);
    assert_eq!(snapshot().in_flight, 0);
}

/// Through the layer, on paused tokio time, behind a backend that never answers: both slots
/// are held for good, one request waits, and nothing else happens — no arrival, no freed
/// slot, so no expiry pass. The waiting future wakes itself at its deadline (its 10 ms
/// interval: the queue stands by then) and is refused there, counted once as expired by the
/// limit and once as limited by the layer. It used to stay pending for ever.
#[tokio::test(start_paused = true)]
async fn a_queued_request_is_refused_at_its_deadline_when_nothing_else_happens() {
    let (layer, mut svc) = two_slots_with_a_target().await;
    let held: Vec<_> = [100, 101].map(|n| svc.call(n)).into();
    let start = tokio::time::Instant::now();
    let mut waiter = Box::pin(svc.ready().await.unwrap().call(1));
    assert!(waiter.as_mut().now_or_never().is_none(), "waits");
    tokio::time::advance(Duration::from_millis(9)).await;
    assert!(
        waiter.as_mut().now_or_never().is_none(),
        "before its deadline"
    );

    let refused = tokio::time::timeout(Duration::from_secs(3600), waiter)
        .await
        .expect("refused at its deadline, not left waiting")
        .unwrap_err();
    let shed = refused.downcast_ref::<Shed>().expect("a Shed");
    assert_eq!(shed.priority, Priority::Normal);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(10) && waited <= Duration::from_millis(11),
        "{waited:?}"
    );

    // The accounting is exact: 40 learning calls and the 2 held admitted, the waiter limited.
    let snap = layer.snapshot();
    assert_eq!(snap.offered(), 43);
    assert_eq!(snap.admitted(), 42);
    assert_eq!(snap.limited, [0, 0, 1, 0, 0]);
    assert_eq!(snap.rejected(), 1);
    let limit = snap.limit.unwrap();
    assert_eq!(
        (limit.queued, limit.expired, limit.evicted, limit.refused),
        (1, 1, 0, 0),
        "{limit:?}"
    );
    assert_eq!((limit.waiting, limit.in_flight), (0, 2), "{limit:?}");
    drop(held);
    assert_eq!(layer.snapshot().limit.unwrap().in_flight, 0);
}

/// A waiter handed a slot before its deadline but polled only after it is served: its fate
/// is read before the deadline is looked at.
#[tokio::test(start_paused = true)]
async fn a_waiter_granted_before_its_deadline_is_served_when_polled_after_it() {
    let (layer, mut svc) = two_slots_with_a_target().await;
    let mut held: Vec<_> = [100, 101].map(|n| svc.call(n)).into();
    let mut waiter = Box::pin(svc.ready().await.unwrap().call(1));
    assert!(waiter.as_mut().now_or_never().is_none(), "waits");
    tokio::time::advance(Duration::from_millis(8)).await;
    drop(held.pop());
    tokio::time::advance(Duration::from_millis(50)).await;
    assert_eq!(waiter.await.unwrap(), 1);
    let snap = layer.snapshot();
    assert_eq!(
        (snap.offered(), snap.admitted(), snap.rejected()),
        (43, 43, 0)
    );
    let limit = snap.limit.unwrap();
    assert_eq!((limit.queued, limit.expired), (1, 0), "{limit:?}");
}

/// The deadline's timer does not spin: a request left waiting behind a backend that never
/// answers is polled once when it queues and once when its timer fires (paused time
/// auto-advances as far as the hour's timeout: a timer re-armed at once, or one that fired
/// before the deadline on the limiter's clock, would be polled again and again).
#[tokio::test(start_paused = true)]
async fn a_waiting_request_is_polled_only_when_it_queues_and_at_its_deadline() {
    let (_layer, mut svc) = two_slots_with_a_target().await;
    let _held: Vec<_> = [100, 101].map(|n| svc.call(n)).into();
    let polls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut waiter = Box::pin(svc.ready().await.unwrap().call(1));
    let counted = {
        let polls = polls.clone();
        std::future::poll_fn(move |cx| {
            polls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            waiter.as_mut().poll(cx)
        })
    };
    let out = tokio::time::timeout(Duration::from_secs(3600), counted).await;
    assert!(out.expect("decided").is_err(), "refused");
    assert_eq!(polls.load(std::sync::atomic::Ordering::Relaxed), 2);
}

/// Outside a tokio runtime no timer is armed (and nothing panics): the wait past the deadline
/// ends at the expiry pass of the next arrival, as it did before the timer.
#[test]
fn a_waiter_polled_outside_a_runtime_is_refused_by_the_next_arrival() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let (layer, mut svc, _held, mut waiter) = rt.block_on(async {
        let (layer, mut svc) = two_slots_with_a_target().await;
        let held: Vec<_> = [100, 101].map(|n| svc.call(n)).into();
        let waiter = Box::pin(svc.ready().await.unwrap().call(1));
        (layer, svc, held, waiter)
    });
    assert!(waiter.as_mut().now_or_never().is_none(), "waits, no timer");
    rt.block_on(tokio::time::advance(Duration::from_millis(11)));
    let in_runtime = rt.enter();
    let _newcomer = svc.call(2);
    drop(in_runtime);
    let limit = layer.snapshot().limit.unwrap();
    assert_eq!((limit.queued, limit.expired), (2, 1), "{limit:?}");
    let refused = waiter.now_or_never().expect("decided").unwrap_err();
    assert!(refused.downcast_ref::<Shed>().is_some(), "{refused}");
}

/// Through the default layer, on paused tokio time, over a service of eight slots of 40 ms
/// (a ninth request waits for a slot inside it): four callers in a loop never fill the initial
/// limit of 16, so nothing tests it. The limiter sees the service serve four at once at its
/// own latency, and the limit comes down to a tolerance and one request above that; when 30
/// requests then arrive at once, five go into the service, not sixteen (eight of which would
/// have queued inside it for a whole service time).
#[tokio::test(start_paused = true)]
async fn an_untested_limit_follows_what_light_demand_was_served_at() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    let c = Controller::new(Default::default()).unwrap();
    let layer = DegradeLayer::builder(c.handle()).build().unwrap();
    let slots = Arc::new(tokio::sync::Semaphore::new(8));
    let (inside, most) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let svc = {
        let (inside, most) = (inside.clone(), most.clone());
        layer.layer(tower::service_fn(move |n: u32| {
            let (slots, inside, most) = (slots.clone(), inside.clone(), most.clone());
            async move {
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let permit = slots.acquire().await.unwrap();
                tokio::time::sleep(Duration::from_millis(40)).await;
                drop(permit);
                inside.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, Infallible>(n)
            }
        }))
    };
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let mut svc = svc.clone();
            tokio::spawn(async move {
                for n in 0..50 {
                    svc.ready().await.unwrap().call(n).await.unwrap();
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap();
    }
    let limit = layer.snapshot().limit.unwrap();
    assert_eq!(most.load(Ordering::SeqCst), 4);
    assert_eq!((limit.served, limit.limit), (4, 5), "{limit:?}");

    most.store(0, Ordering::SeqCst);
    let burst: Vec<_> = (0..30)
        .map(|n| {
            let mut svc = svc.clone();
            tokio::spawn(async move { svc.ready().await.unwrap().call(n).await })
        })
        .collect();
    let mut answered = 0;
    for call in burst {
        answered += u32::from(call.await.unwrap().is_ok());
    }
    assert_eq!(
        most.load(Ordering::SeqCst),
        5,
        "requests inside the service at once"
    );
    assert!(answered >= 5, "{answered}");
    let s = layer.snapshot();
    assert_eq!(s.offered(), 200 + 30, "{s:?}");
}
