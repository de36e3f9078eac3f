//! Gaps in what the limiter sees: a host stall, a service that slows down at once, a cold
//! start before anything was learnt.
//!
//! A host stall (the process does not run for a while: a loaded machine, a GC pause of a
//! neighbour, a debugger) ages every waiter at once. When the process runs again, the slots
//! freed meanwhile go to the waiters first, and only the waiters left over are judged against
//! their target: a critical request is not refused for the host's stall while a slot is free
//! for it. (`cargo xtask demo --quick` under load read critical 99.17 % at 3x: two critical
//! waiters, each past twice its target after the queue stood 56 and 99 ms, expired by the very
//! release that had freed a slot under the critical limit.) On paused tokio time, the stall is
//! a clock jump while nothing runs.

use degrade_core::limit::LimitConfig;
use degrade_core::{Controller, DegradeLayer, Priority, Shed};
use futures_util::FutureExt;
use std::convert::Infallible;
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

/// Each request is its own priority.
type Own = fn(&Priority) -> Priority;

/// A layer under `config`'s limit that reads each request's priority from the request, and the
/// controller it answers to.
fn layer(config: LimitConfig) -> (Controller, DegradeLayer<Own>) {
    let c = Controller::new(Default::default()).unwrap();
    let layer = DegradeLayer::builder(c.handle())
        .prioritize((|p: &Priority| *p) as Own)
        .limit(config)
        .build()
        .unwrap();
    (c, layer)
}

/// A limit held at `limit`.
fn fixed(limit: u32) -> LimitConfig {
    LimitConfig {
        initial: limit,
        min: limit,
        max: limit,
        ..LimitConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_critical_waiter_aged_by_a_stall_takes_the_slot_that_frees() {
    let (_c, layer) = layer(fixed(2));
    let mut svc = layer.layer(tower::service_fn(|p: Priority| async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok::<_, Infallible>(p)
    }));
    // One at a time: the layer learns the 10 ms baseline, and with it a queueing target.
    for _ in 0..40 {
        svc.ready()
            .await
            .unwrap()
            .call(Priority::Normal)
            .await
            .unwrap();
    }
    let snapshot = || layer.snapshot().limit.unwrap();
    let target = snapshot().queue_target.expect("a target is learnt");

    // The limit is full for critical requests too (two slots, and a tenth over for critical:
    // three), and one critical request and one normal request wait.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut h = Box::pin(svc.ready().await.unwrap().call(Priority::Critical));
        assert!(h.as_mut().now_or_never().is_none(), "in flight");
        held.push(h);
    }
    let mut critical = Box::pin(svc.ready().await.unwrap().call(Priority::Critical));
    let mut normal = Box::pin(svc.ready().await.unwrap().call(Priority::Normal));
    assert!(critical.as_mut().now_or_never().is_none());
    assert!(normal.as_mut().now_or_never().is_none());
    assert_eq!((snapshot().in_flight, snapshot().waiting), (3, 2));

    // The stall: nothing runs while the clock moves past both waiters' allowances (the target,
    // twice that for critical).
    tokio::time::advance(target * 5).await;
    // The process runs again: one request in flight completes (its future is dropped here, as
    // a completion would release it), and its slot goes to the critical waiter.
    drop(held.pop());
    assert_eq!(
        critical.await.unwrap(),
        Priority::Critical,
        "served, not refused"
    );
    // The normal waiter found no slot: the limit is still full for it (two in flight), and it
    // waited past its target.
    let refused = normal.await.unwrap_err();
    assert!(refused.downcast_ref::<Shed>().is_some(), "{refused}");

    drop(held);
    let snap = layer.snapshot();
    assert_eq!(snap.admitted_by(Priority::Critical), 4);
    assert_eq!(snap.limited_by(Priority::Critical), 0);
    assert_eq!(snap.limited_by(Priority::Normal), 1);
    assert_eq!(snapshot().in_flight, 0);
}

/// The service slows down at once (10 ms to 18 ms a request): every request in flight started
/// after the change, and nothing completes for a whole new service time. A critical request
/// that comes meanwhile may wait four times the 5 ms target, and takes the first slot that
/// frees (with twice the target, as before, it was refused at 10 ms); a normal request in
/// its place waits the target, and is refused.
#[tokio::test(start_paused = true)]
async fn a_critical_request_waits_out_a_sudden_slowdown() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    let (_c, layer) = layer(fixed(2));
    let service_ms = Arc::new(AtomicU64::new(10));
    let ms = Arc::clone(&service_ms);
    let svc = layer.layer(tower::service_fn(move |p: Priority| {
        let took = Duration::from_millis(ms.load(Ordering::Relaxed));
        async move {
            tokio::time::sleep(took).await;
            Ok::<_, Infallible>(p)
        }
    }));
    for _ in 0..40 {
        svc.clone().oneshot(Priority::Normal).await.unwrap();
    }
    let snapshot = || layer.snapshot().limit.unwrap();
    assert_eq!(snapshot().queue_target, Some(Duration::from_millis(5)));

    // The slowdown: three critical requests fill the limit (two slots and a tenth over for
    // critical requests), each to take 18 ms.
    service_ms.store(18, Ordering::Relaxed);
    let held: Vec<_> = (0..3)
        .map(|_| tokio::spawn(svc.clone().oneshot(Priority::Critical)))
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(snapshot().in_flight, 3);
    tokio::time::advance(Duration::from_millis(1)).await;
    let critical = tokio::spawn(svc.clone().oneshot(Priority::Critical));
    let normal = tokio::spawn(svc.clone().oneshot(Priority::Normal));
    tokio::task::yield_now().await;
    assert_eq!(snapshot().waiting, 2);

    // Past the normal request's wait (5 ms), within the critical one's (20 ms), before the
    // first completion.
    tokio::time::advance(Duration::from_millis(12)).await;
    tokio::task::yield_now().await;
    assert!(
        normal.is_finished(),
        "the normal request was refused at its deadline"
    );
    let refused = normal.await.unwrap().unwrap_err();
    assert!(refused.downcast_ref::<Shed>().is_some(), "{refused}");
    assert!(!critical.is_finished(), "the critical request waits on");
    assert_eq!(snapshot().waiting, 1);

    // The slowed requests complete at 18 ms: the first slot goes to the critical request.
    for h in held {
        assert_eq!(h.await.unwrap().unwrap(), Priority::Critical);
    }
    assert_eq!(critical.await.unwrap().unwrap(), Priority::Critical);
    let snap = layer.snapshot();
    assert_eq!(snap.limited_by(Priority::Critical), 0);
    assert_eq!(snap.limited_by(Priority::Normal), 1);
    assert_eq!(snapshot().in_flight, 0);
}

/// A cold start: no baseline and no queueing-delay target until the first window of
/// completions is judged. A request that finds the initial limit full meanwhile waits on the
/// target the first completions give (`queue_delay` times their mean latency); before anything
/// completes, a critical request waits for the first completions (at most a second) and any
/// other is refused at once. Before these, every request over the initial limit was refused
/// at once, whatever its priority: from a cold start at 3x over gRPC, one or two critical
/// calls in about one start of four, all in the first 200 ms.
#[tokio::test(start_paused = true)]
async fn a_cold_start_waits_on_the_first_completions() {
    let (_c, layer) = layer(LimitConfig {
        initial: 4,
        ..LimitConfig::default()
    });
    let svc = layer.layer(tower::service_fn(|p: Priority| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok::<_, Infallible>(p)
    }));
    let snapshot = || layer.snapshot().limit.unwrap();
    let call = |p| tokio::spawn(svc.clone().oneshot(p));

    // Nothing has completed yet: over the initial limit, a normal request is refused at once
    // (and the critical requests' limit is a tenth over the others' from then on, as ever),
    // and a critical one over that waits.
    let mut first: Vec<_> = (0..4).map(|_| call(Priority::Normal)).collect();
    tokio::task::yield_now().await;
    assert_eq!(snapshot().in_flight, 4);
    let early = svc.clone().oneshot(Priority::Normal).await.unwrap_err();
    assert!(early.downcast_ref::<Shed>().is_some(), "{early}");
    first.push(call(Priority::Critical));
    tokio::task::yield_now().await;
    assert_eq!(snapshot().in_flight, 5);
    let cold = call(Priority::Critical);
    tokio::task::yield_now().await;
    assert_eq!(snapshot().waiting, 1, "the critical request waits");
    for h in first {
        h.await.unwrap().unwrap();
    }
    assert_eq!(
        cold.await.unwrap().unwrap(),
        Priority::Critical,
        "served at 20 ms"
    );
    assert_eq!(snapshot().queue_target, None, "no window judged yet");

    // Four completions of 20 ms: requests may wait half that (critical ones four times as
    // long).
    let busy: Vec<_> = (0..4).map(|_| call(Priority::Normal)).collect();
    tokio::task::yield_now().await;
    let critical: Vec<_> = (0..3).map(|_| call(Priority::Critical)).collect();
    tokio::task::yield_now().await;
    assert!(snapshot().waiting > 0, "a critical request waits");
    for h in critical {
        assert_eq!(h.await.unwrap().unwrap(), Priority::Critical);
    }
    for h in busy {
        h.await.unwrap().unwrap();
    }
    let snap = layer.snapshot();
    assert_eq!(snap.limited_by(Priority::Critical), 0);
    assert_eq!(snap.admitted_by(Priority::Critical), 5);
    assert_eq!(snap.limited_by(Priority::Normal), 1);
}
