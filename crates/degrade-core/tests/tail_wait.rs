//! How long a request may wait for a slot follows the service's own spread
//! ([`Law::queue_target`](degrade_core::limit::Law::queue_target)): a target of half a
//! baseline for a service of about constant latency, longer (at most two baselines) when a
//! few costly requests hold the slots for a while — there the short wait refused the requests
//! that came while every slot was taken, and the slot that freed next stood idle. Both are
//! half again as long here, where nothing is refused (demand about capacity, see
//! [`Law::rejected_share`](degrade_core::limit::Law::rejected_share)). A lone waiter (a burst,
//! not a standing queue) may wait twice its target. Driven through the `DegradeLayer` on
//! paused tokio time: the waits and the refusals are the limiter's own.

use degrade_core::limit::LimitConfig;
use degrade_core::{Controller, DegradeLayer, Shed};
use std::convert::Infallible;
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A layer with one slot in front of a service that takes the time each request names, after
/// `calls` sequential calls, the `i`th costing `cost(i)`; returns the service, the learnt
/// baseline and queue target.
async fn learnt(
    calls: u32,
    cost: impl Fn(u32) -> Duration,
) -> (
    impl Service<Duration, Response = Duration, Error = tower::BoxError, Future: Send>
    + Clone
    + Send
    + 'static,
    Duration,
    Duration,
) {
    let c = Controller::new(Default::default()).unwrap();
    let layer = DegradeLayer::builder(c.handle())
        .limit(LimitConfig {
            initial: 1,
            min: 1,
            max: 1,
            ..LimitConfig::default()
        })
        .build()
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(|d: Duration| async move {
        tokio::time::sleep(d).await;
        Ok::<_, Infallible>(d)
    }));
    for i in 0..calls {
        svc.ready().await.unwrap().call(cost(i)).await.unwrap();
    }
    let snap = layer.snapshot().limit.unwrap();
    assert!(snap.rejected_share < 0.15, "{}", snap.rejected_share);
    let baseline = snap.baseline.expect("a baseline is learnt");
    let target = snap.queue_target.expect("a target is learnt");
    (svc, baseline, target)
}

/// One request holds the slot for `hold`; another arrives at once and waits for it. Returns
/// whether the second was served.
async fn second_served<S>(svc: &S, hold: Duration) -> bool
where
    S: Service<Duration, Response = Duration, Error = tower::BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let first = tokio::spawn(svc.clone().oneshot(hold));
    tokio::task::yield_now().await;
    let second = svc.clone().oneshot(ms(1)).await;
    assert_eq!(first.await.unwrap().unwrap(), hold);
    match second {
        Ok(_) => true,
        Err(e) => {
            assert!(e.downcast_ref::<Shed>().is_some(), "{e}");
            false
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_constant_service_waits_half_a_baseline() {
    let (svc, baseline, target) = learnt(300, |_| ms(10)).await;
    assert!(
        baseline >= ms(10) && baseline < ms(11),
        "baseline {baseline:?}"
    );
    // Half a baseline, half again as long while nothing is refused.
    assert_eq!(target, baseline.mul_f64(0.75));
    // A lone waiter may wait twice the target (1.5 baselines): a slot that frees after 1.25
    // baselines comes in time, one that frees after two too late.
    assert!(second_served(&svc, baseline.mul_f64(1.25)).await);
    assert!(!second_served(&svc, baseline * 2).await);
}

#[tokio::test(start_paused = true)]
async fn a_service_with_a_heavy_tail_lets_a_waiter_wait_longer() {
    // One request in ten costs ten times as much.
    let (svc, baseline, target) =
        learnt(1_000, |i| if i % 10 == 0 { ms(100) } else { ms(10) }).await;
    assert!(
        target >= baseline.mul_f64(1.35) && target <= baseline * 3,
        "baseline {baseline:?}, target {target:?}"
    );
    // The wait of two baselines is now within the waiter's allowance: it is served.
    assert!(second_served(&svc, baseline * 2).await);
}
