//! What the default clock (`FastClock::unless_pausable`, issue 20) picks, and that paused tokio
//! time keeps working with it: tokio's clock inside a current-thread runtime (the only kind
//! whose time can be paused), the CPU's counter outside any runtime and on a multi-thread one.

use degrade_core::clock::CallScope;
use degrade_core::{Clock, FastClock, TokioClock};
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

/// One call inside a call scope where "a layer further out" read `outer` first (stamping its
/// clock's reading), admitted or not. The scope covers `call` only, as degrade's layers hold it.
async fn admitted_after_outer_read<S: Service<()>>(
    svc: &mut S,
    outer: impl FnOnce() -> tokio::time::Instant,
) -> bool
where
    S::Error: Into<degrade_core::BoxError>,
{
    let svc = svc.ready().await.map_err(Into::into).unwrap();
    let future = {
        let _scope = CallScope::enter();
        let _ = outer();
        svc.call(())
    };
    match future.await.map_err(Into::into) {
        Ok(_) => true,
        Err(e) => {
            assert!(e.is::<RateLimited>(), "{e}");
            false
        }
    }
}

fn one_an_hour() -> RateLimitConfig {
    RateLimitConfig::per(1, Duration::from_secs(3600)).burst(1)
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// A limiter on the counter (built outside any runtime) behind a layer that stamped tokio's
/// paused instant in the same call: it decides on the counter alone. Had it taken tokio's
/// stamp, each hour of paused time would refill its budget and all five calls would pass.
#[test]
fn a_counter_limiter_never_decides_on_a_paused_tokio_stamp() {
    let layer = RateLimitLayer::new(one_an_hour()).unwrap();
    assert!(!layer.clock().follows_tokio());
    let mut svc = layer.layer(echo());
    let admitted = paused_runtime().block_on(async {
        let mut admitted = 0;
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(3600)).await;
            admitted += u32::from(admitted_after_outer_read(&mut svc, || TokioClock.now()).await);
        }
        admitted
    });
    assert_eq!(admitted, 1, "the burst only: real time did not refill it");
    let s = layer.snapshot();
    assert_eq!((s.offered(), s.admitted, s.rejected()), (5, 1, 4));
}

/// The converse: a limiter on `TokioClock` behind a layer that stamped the counter's reading
/// first follows paused time exactly (an hour refills one unit), never the counter's.
#[test]
fn a_tokio_clock_limiter_never_decides_on_a_counter_stamp() {
    let counter = FastClock::new();
    let layer = RateLimitLayer::builder(one_an_hour())
        .clock(TokioClock)
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    let admitted = paused_runtime().block_on(async {
        let mut admitted = 0;
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(3600)).await;
            admitted += u32::from(admitted_after_outer_read(&mut svc, || counter.now()).await);
        }
        // And no refill without paused time moving, however long the counter runs.
        std::thread::sleep(Duration::from_millis(5));
        admitted += u32::from(admitted_after_outer_read(&mut svc, || counter.now()).await);
        admitted
    });
    assert_eq!(admitted, 5, "one unit per paused hour");
}

/// Two counter clocks in one call (the rate limiter's and, say, the canary's) answer the same
/// reading: the stack reads the counter once per request.
#[test]
fn counter_clocks_in_one_call_share_one_reading() {
    let limiter_clock = *RateLimitLayer::new(one_a_second()).unwrap().clock();
    let other = FastClock::unless_pausable();
    assert!(!other.follows_tokio());
    let _scope = CallScope::enter();
    let first = limiter_clock.now();
    std::thread::sleep(Duration::from_millis(2));
    assert_eq!(other.now(), first);
    assert_eq!(limiter_clock.nanos_since(&other.epoch()), 0);
}
