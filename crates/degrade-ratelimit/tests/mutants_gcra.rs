//! Behaviour of the GCRA cell that the other tests left unpinned, found by mutation testing
//! (`cargo xtask mutants --scope gcra`, see `docs/mutants.md`).

use degrade_core::ManualClock;
use degrade_ratelimit::{RateLimitConfig, RateLimitLayer};
use std::convert::Infallible;
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

fn echo() -> impl Service<(), Response = (), Error = Infallible> + Clone {
    tower::service_fn(|()| std::future::ready(Ok::<_, Infallible>(())))
}

async fn admitted<S>(svc: &mut S) -> bool
where
    S: Service<()>,
{
    match svc.ready().await {
        Ok(ready) => ready.call(()).await.is_ok(),
        Err(_) => false,
    }
}

const MS: Duration = Duration::from_millis(1);

/// `debt()` is how far the spent budget runs ahead of now: 100 ms per request at 10/s, paid
/// back as the clock moves, and zero (never negative) once the budget is whole again.
#[tokio::test]
async fn debt_is_the_spent_budget_ahead_of_now_and_shrinks_with_time() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder(RateLimitConfig::per(10, Duration::from_secs(1)).burst(10))
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    assert_eq!(layer.debt(), Duration::ZERO);
    for _ in 0..3 {
        assert!(admitted(&mut svc).await);
    }
    assert_eq!(layer.debt(), 300 * MS);
    clock.advance(100 * MS);
    assert_eq!(layer.debt(), 200 * MS);
    clock.advance(Duration::from_secs(1));
    assert_eq!(layer.debt(), Duration::ZERO);
}

/// A quota change after the budget has refilled (the TAT lies in the past) leaves the budget
/// whole: the new burst is available at once, and nothing is carried over from the old unit.
#[tokio::test]
async fn a_quota_change_after_the_budget_refilled_keeps_the_whole_new_burst() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder(RateLimitConfig::per(10, Duration::from_secs(1)).burst(2))
        .clock(clock.clone())
        .build()
        .unwrap();
    let handle = layer.quota_handle();
    let mut svc = layer.layer(echo());
    assert!(admitted(&mut svc).await);
    // 100 ms of debt, paid back long ago by the time the quota changes.
    clock.advance(Duration::from_secs(5));
    handle
        .set(RateLimitConfig::per(4, Duration::from_secs(1)).burst(3))
        .unwrap();
    let mut burst = 0;
    while admitted(&mut svc).await {
        burst += 1;
    }
    assert_eq!(burst, 3, "the whole new burst, no more and no less");
    assert_eq!(layer.debt(), 750 * MS, "three requests at 250 ms each");
}
