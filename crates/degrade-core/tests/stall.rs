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

#[tokio::test(start_paused = true)]
async fn a_critical_waiter_aged_by_a_stall_takes_the_slot_that_frees() {
    let c = Controller::new(Default::default()).unwrap();
    let layer = DegradeLayer::builder(c.handle())
        .prioritize(|p: &Priority| *p)
        .limit(LimitConfig {
            initial: 2,
            min: 2,
            max: 2,
            ..LimitConfig::default()
        })
        .build()
        .unwrap();
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
