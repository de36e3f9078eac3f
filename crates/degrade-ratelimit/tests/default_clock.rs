//! What the default clock (`FastClock::unless_pausable`, issue 20) picks, and that paused tokio
//! time keeps working with it: tokio's clock inside a current-thread runtime (the only kind
//! whose time can be paused), the CPU's counter outside any runtime and on a multi-thread one.

use degrade_ratelimit::{RateLimitConfig, RateLimitLayer, RateLimited};
use std::convert::Infallible;
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

fn one_a_second() -> RateLimitConfig {
    RateLimitConfig::per(1, Duration::from_secs(1)).burst(1)
}

async fn admitted<S: Service<()>>(svc: &mut S) -> bool
where
    S::Error: Into<degrade_core::BoxError>,
{
    let svc = svc.ready().await.map_err(Into::into).unwrap();
    match svc.call(()).await.map_err(Into::into) {
        Ok(_) => true,
        Err(e) => {
            assert!(e.is::<RateLimited>(), "{e}");
            false
        }
    }
}

fn echo() -> impl Service<
    (),
    Response = (),
    Error = Infallible,
    Future = std::future::Ready<Result<(), Infallible>>,
> + Clone {
    tower::service_fn(|()| std::future::ready(Ok::<_, Infallible>(())))
}

/// Under `start_paused`, the budget comes back exactly when tokio's time has advanced by the
/// emission interval, not a nanosecond earlier: the decision reads the paused clock.
#[tokio::test(start_paused = true)]
async fn the_default_clock_follows_paused_time_on_a_current_thread_runtime() {
    let layer = RateLimitLayer::new(one_a_second()).unwrap();
    assert!(layer.clock().follows_tokio());
    let mut svc = layer.layer(echo());
    assert!(admitted(&mut svc).await);
    assert!(!admitted(&mut svc).await);
    tokio::time::advance(Duration::from_secs(1) - Duration::from_nanos(1)).await;
    assert!(!admitted(&mut svc).await);
    tokio::time::advance(Duration::from_nanos(1)).await;
    assert!(admitted(&mut svc).await);
    let s = layer.snapshot();
    assert_eq!((s.offered(), s.admitted, s.rejected()), (4, 2, 2));
}

/// A layer built on a current-thread runtime before time is paused still follows the pause:
/// the choice is "where time can be paused", not "where it is paused now".
#[tokio::test]
async fn the_default_clock_follows_a_pause_that_comes_after_the_layer() {
    let layer = RateLimitLayer::new(one_a_second()).unwrap();
    let mut svc = layer.layer(echo());
    tokio::time::pause();
    assert!(admitted(&mut svc).await);
    assert!(!admitted(&mut svc).await);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(admitted(&mut svc).await);
}

/// On a multi-thread runtime tokio cannot pause time: the default reads the counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_clock_reads_the_counter_on_a_multi_thread_runtime() {
    let layer = RateLimitLayer::new(one_a_second()).unwrap();
    assert!(!layer.clock().follows_tokio());
    let mut svc = layer.layer(echo());
    assert!(admitted(&mut svc).await);
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    let r = err.downcast_ref::<RateLimited>().unwrap();
    // The wait is measured on the counter: at most the emission interval, and not zero.
    let wait = r.retry_after.unwrap();
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_secs(1),
        "{wait:?}"
    );
}

/// Outside any runtime (a layer built in `main` before the runtime starts, a static), the
/// default reads the counter.
#[test]
fn the_default_clock_reads_the_counter_outside_a_runtime() {
    let layer = RateLimitLayer::new(one_a_second()).unwrap();
    assert!(!layer.clock().follows_tokio());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    rt.block_on(async {
        assert!(admitted(&mut svc).await);
        assert!(!admitted(&mut svc).await);
    });
}
