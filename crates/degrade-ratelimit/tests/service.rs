//! Service-level behaviour of the rate limit layer, on `ManualClock` or paused tokio time.

use degrade_core::{Controller, Level, ManualClock};
use degrade_ratelimit::error::Cause;
use degrade_ratelimit::{
    KeysConfig, LevelScale, RateLimitConfig, RateLimitLayer, RateLimited, key,
};
use std::convert::Infallible;
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

fn echo<R: Send + 'static>()
-> impl Service<R, Response = R, Error = Infallible, Future = std::future::Ready<Result<R, Infallible>>>
+ Clone {
    tower::service_fn(|r: R| std::future::ready(Ok::<_, Infallible>(r)))
}

async fn call<S, R>(svc: &mut S, req: R) -> Result<S::Response, S::Error>
where
    S: Service<R>,
{
    svc.ready().await?.call(req).await
}

fn limited(err: degrade_core::BoxError) -> RateLimited {
    err.downcast_ref::<RateLimited>()
        .unwrap_or_else(|| panic!("not a RateLimited: {err}"))
        .clone()
}

const MS: Duration = Duration::from_millis(1);

#[tokio::test]
async fn clones_and_services_share_one_budget() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder(RateLimitConfig::per(10, Duration::from_secs(1)).burst(4))
        .clock(clock.clone())
        .build()
        .unwrap();
    // Two services from two clones of the layer, each cloned again (as axum does per connection).
    let a = layer.layer(echo::<u32>());
    let b = layer.clone().layer(echo::<u32>());
    let mut svcs = [a.clone(), a, b.clone(), b];
    let mut ok = 0;
    for i in 0..40 {
        if call(&mut svcs[i % 4], 1).await.is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 4, "one burst for all of them");
    let snap = layer.snapshot();
    assert_eq!(snap.admitted, 4);
    assert_eq!(snap.rejected_by(Cause::OverQuota), 36);
    assert_eq!(snap.offered(), 40);
}

#[tokio::test]
async fn retry_after_is_exactly_the_wait() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder(RateLimitConfig::per(4, Duration::from_secs(1)).burst(1))
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut svc = layer.layer(echo::<()>());
    call(&mut svc, ()).await.unwrap();
    let r = limited(call(&mut svc, ()).await.unwrap_err());
    assert_eq!(r.cause, Cause::OverQuota);
    assert_eq!(r.retry_after, Some(Duration::from_millis(250)));
    assert_eq!((r.quota, r.window), (4, Duration::from_secs(1)));
    clock.advance(Duration::from_millis(249));
    let r = limited(call(&mut svc, ()).await.unwrap_err());
    assert_eq!(r.retry_after, Some(MS));
    clock.advance(MS);
    call(&mut svc, ()).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn waiting_requests_are_admitted_in_turn_within_the_bound() {
    let cfg = RateLimitConfig::per(10, Duration::from_secs(1))
        .burst(1)
        .wait(Duration::from_millis(250), 8);
    let layer = RateLimitLayer::new(cfg).unwrap();
    let svc = layer.layer(tower::service_fn(|()| async {
        Ok::<_, Infallible>(tokio::time::Instant::now())
    }));
    let start = tokio::time::Instant::now();
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let mut s = svc.clone();
            tokio::spawn(async move { call(&mut s, ()).await })
        })
        .collect();
    let mut at = Vec::new();
    let mut rejected = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(when) => at.push(when - start),
            Err(e) => {
                let r = limited(e);
                assert_eq!(r.cause, Cause::OverQuota);
                rejected += 1;
            }
        }
    }
    at.sort();
    // Burst 1 at once, then one every 100 ms up to the 250 ms bound: 0, 100, 200.
    assert_eq!(at, [Duration::ZERO, 100 * MS, 200 * MS]);
    assert_eq!(rejected, 2);
    let snap = layer.snapshot();
    assert_eq!((snap.admitted, snap.waited, snap.waiting), (1, 2, 0));
}

#[tokio::test(start_paused = true)]
async fn waiters_past_the_bound_are_rejected() {
    let cfg = RateLimitConfig::per(10, Duration::from_secs(1))
        .burst(1)
        .wait(Duration::from_secs(10), 2);
    let layer = RateLimitLayer::new(cfg).unwrap();
    let mut svc = layer.layer(echo::<()>());
    call(&mut svc, ()).await.unwrap();
    let w1 = svc.ready().await.unwrap().call(());
    let w2 = svc.ready().await.unwrap().call(());
    let r = limited(call(&mut svc, ()).await.unwrap_err());
    assert_eq!(r.cause, Cause::TooManyWaiters);
    assert!(r.retry_after.is_some());
    assert_eq!(layer.snapshot().waiting, 2);
    // Dropping a waiter frees its place (its reservation stays spent).
    drop(w1);
    assert_eq!(layer.snapshot().waiting, 1);
    w2.await.unwrap();
    assert_eq!(layer.snapshot().waiting, 0);
}

#[tokio::test]
async fn cost_function_spends_units_and_a_cost_above_the_burst_is_refused_at_once() {
    let clock = ManualClock::new();
    let layer =
        RateLimitLayer::builder(RateLimitConfig::per(100, Duration::from_secs(1)).burst(50))
            .clock(clock.clone())
            .cost(|spans: &u64| *spans)
            .build()
            .unwrap();
    let mut svc = layer.layer(echo::<u64>());
    call(&mut svc, 30).await.unwrap();
    call(&mut svc, 0).await.unwrap(); // free
    let r = limited(call(&mut svc, 21).await.unwrap_err());
    assert_eq!(r.cause, Cause::OverQuota);
    assert_eq!(r.retry_after, Some(Duration::from_millis(10)));
    call(&mut svc, 20).await.unwrap();
    let r = limited(call(&mut svc, 51).await.unwrap_err());
    assert_eq!(r.cause, Cause::CostAboveBurst);
    assert_eq!(r.retry_after, None);
    let r = limited(call(&mut svc, u64::MAX).await.unwrap_err());
    assert_eq!(r.cause, Cause::CostAboveBurst);
    assert_eq!(layer.snapshot().units, 50);
}

#[tokio::test]
async fn lowering_the_quota_live_carries_the_spent_budget_over() {
    let clock = ManualClock::new();
    let layer =
        RateLimitLayer::builder(RateLimitConfig::per(100, Duration::from_secs(1)).burst(10))
            .clock(clock.clone())
            .build()
            .unwrap();
    let handle = layer.quota_handle();
    let mut svc = layer.layer(echo::<()>());
    for _ in 0..10 {
        call(&mut svc, ()).await.unwrap();
    }
    // Budget spent; cut the quota tenfold. A fresh governor limiter would admit 10 at once now.
    handle
        .set(RateLimitConfig::per(10, Duration::from_secs(1)).burst(10))
        .unwrap();
    let r = limited(call(&mut svc, ()).await.unwrap_err());
    assert_eq!(r.retry_after, Some(Duration::from_millis(100)));
    assert_eq!(r.quota, 10);
    // Over the next second exactly 10 more, one per 100 ms.
    let mut ok = 0;
    for _ in 0..100 {
        clock.advance(Duration::from_millis(10));
        while call(&mut svc, ()).await.is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 10);
}

#[tokio::test]
async fn raising_the_quota_live_takes_effect_on_the_next_request_without_rejections() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder(RateLimitConfig::per(10, Duration::from_secs(1)).burst(2))
        .clock(clock.clone())
        .build()
        .unwrap();
    let handle = layer.quota_handle();
    let mut svc = layer.layer(echo::<()>());
    call(&mut svc, ()).await.unwrap(); // half the burst spent
    handle
        .set(RateLimitConfig::per(1000, Duration::from_secs(1)).burst(2))
        .unwrap();
    // Half spent stays half spent: one more now, then one per millisecond.
    call(&mut svc, ()).await.unwrap();
    let r = limited(call(&mut svc, ()).await.unwrap_err());
    assert_eq!(r.retry_after, Some(MS));
    for _ in 0..50 {
        clock.advance(MS);
        call(&mut svc, ()).await.unwrap();
    }
}

async fn count<S: Service<(), Response = ()>>(svc: &mut S, clock: &ManualClock) -> u32 {
    let mut ok = 0;
    for _ in 0..1000 {
        clock.advance(MS);
        if call(svc, ()).await.is_ok() {
            ok += 1;
        }
    }
    ok
}

#[tokio::test]
async fn the_quota_follows_the_degradation_level() {
    let clock = ManualClock::new();
    let controller = Controller::new(Default::default()).unwrap();
    let cfg = RateLimitConfig::per(100, Duration::from_secs(1))
        .burst(1)
        .level_scale(LevelScale {
            heavy: 0.1,
            ..LevelScale::default()
        });
    let layer = RateLimitLayer::builder(cfg)
        .clock(clock.clone())
        .level(controller.handle())
        .build()
        .unwrap();
    let mut svc = layer.layer(echo::<()>());
    assert_eq!(count(&mut svc, &clock).await, 100);
    controller.pin(Level::Heavy);
    assert_eq!(count(&mut svc, &clock).await, 10);
    controller.pin(Level::Normal);
    assert_eq!(count(&mut svc, &clock).await, 100);
}

#[tokio::test]
async fn keys_have_their_own_budgets_and_keyless_requests_share_one() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder(RateLimitConfig::per(1, Duration::from_secs(60)))
        .clock(clock.clone())
        .keyed(key::from_fn(|r: &Option<u32>| *r), KeysConfig::default())
        .build()
        .unwrap();
    let mut svc = layer.layer(echo::<Option<u32>>());
    for k in 0..10 {
        call(&mut svc, Some(k)).await.unwrap();
        assert!(call(&mut svc, Some(k)).await.is_err());
    }
    call(&mut svc, None).await.unwrap();
    assert!(call(&mut svc, None).await.is_err());
    assert_eq!(layer.snapshot().keys, 10);
    clock.advance(Duration::from_secs(60));
    assert_eq!(layer.evict_idle(), 10);
    assert_eq!(layer.snapshot().keys, 0);
}

#[tokio::test]
async fn a_full_key_store_refuses_new_keys_and_keeps_limiting_known_ones() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder(RateLimitConfig::per(1, Duration::from_secs(1)))
        .clock(clock.clone())
        .keyed(key::from_fn(|r: &u32| Some(*r)), KeysConfig { max_keys: 8 })
        .build()
        .unwrap();
    let mut svc = layer.layer(echo::<u32>());
    for k in 0..8 {
        call(&mut svc, k).await.unwrap();
    }
    let r = limited(call(&mut svc, 100).await.unwrap_err());
    assert_eq!(r.cause, Cause::KeyCapacity);
    // The earliest a held key recovers and makes room.
    assert_eq!(r.retry_after, Some(Duration::from_secs(1)));
    assert!(call(&mut svc, 3).await.is_err(), "known key still limited");
    clock.advance(Duration::from_secs(1));
    call(&mut svc, 100).await.unwrap();
    assert!(layer.snapshot().keys <= 8);
    assert_eq!(layer.snapshot().rejected_by(Cause::KeyCapacity), 1);
}

#[tokio::test]
async fn zero_cost_requests_pass_without_spending_budget() {
    // Zero-cost requests pass; everything is decided synchronously in `call`.
    let layer = RateLimitLayer::builder(RateLimitConfig::per(1, Duration::from_secs(1)))
        .cost(|n: &u64| *n)
        .build()
        .unwrap();
    let mut svc = layer.layer(echo::<u64>());
    for _ in 0..100 {
        call(&mut svc, 0).await.unwrap();
    }
    assert_eq!(layer.snapshot().admitted, 100);
    assert_eq!(layer.snapshot().units, 0);
}

#[cfg(feature = "http")]
#[tokio::test]
async fn http_mode_answers_429_with_retry_after_and_ratelimit_fields() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder(RateLimitConfig::per(10, Duration::from_secs(1)).burst(1))
        .clock(clock.clone())
        .build()
        .unwrap()
        .http();
    let mut svc = layer.layer(tower::service_fn(|_: http::Request<()>| async {
        Ok::<_, Infallible>(http::Response::new(String::new()))
    }));
    assert_eq!(
        call(&mut svc, http::Request::new(()))
            .await
            .unwrap()
            .status(),
        200
    );
    let res = call(&mut svc, http::Request::new(())).await.unwrap();
    assert_eq!(res.status(), 429);
    let h = res.headers();
    assert_eq!(h["retry-after"], "1");
    assert_eq!(h["degrade-rejection"], "rate_limited");
    assert_eq!(h["ratelimit-policy"], "\"degrade\";q=10;w=1");
    assert_eq!(h["ratelimit"], "\"degrade\";r=0;t=1");
}

#[cfg(feature = "grpc")]
#[tokio::test]
async fn grpc_mode_answers_resource_exhausted_with_retry_info() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder(RateLimitConfig::per(10, Duration::from_secs(1)).burst(1))
        .clock(clock.clone())
        .build()
        .unwrap()
        .grpc();
    let mut svc = layer.layer(tower::service_fn(|_: http::Request<()>| async {
        Ok::<_, Infallible>(http::Response::new(String::new()))
    }));
    call(&mut svc, http::Request::new(())).await.unwrap();
    let res = call(&mut svc, http::Request::new(())).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["grpc-status"], "8");
    let status = tonic::Status::from_header_map(res.headers()).unwrap();
    assert_eq!(
        degrade_core::rejection::grpc::retry_delay(&status),
        Some(Duration::from_millis(100))
    );
}

#[cfg(feature = "http")]
#[tokio::test]
async fn rejections_are_found_by_the_core_mapping() {
    let layer = RateLimitLayer::new(RateLimitConfig::per(1, Duration::from_secs(60))).unwrap();
    let mut svc = layer.layer(echo::<()>());
    call(&mut svc, ()).await.unwrap();
    let err = call(&mut svc, ()).await.unwrap_err();
    let res: http::Response<()> = degrade_core::rejection::http::error_response(&*err).unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "60");
}

#[cfg(feature = "governor")]
#[test]
fn governor_runs_on_the_manual_clock_and_never_steps_back() {
    use governor::clock::Clock as _;
    use std::num::NonZeroU32;
    let clock = ManualClock::new();
    let gclock = degrade_ratelimit::GovernorClock::new(clock.clone());
    let limiter = governor::RateLimiter::direct_with_clock(
        governor::Quota::per_second(NonZeroU32::new(2).unwrap()),
        gclock.clone(),
    );
    assert!(limiter.check().is_ok());
    assert!(limiter.check().is_ok());
    let not_until = limiter.check().unwrap_err();
    assert_eq!(
        not_until.wait_time_from(gclock.now()),
        Duration::from_millis(500)
    );
    let mut last = gclock.now();
    for _ in 0..100 {
        clock.advance(Duration::from_millis(5));
        let now = gclock.now();
        assert!(now > last);
        last = now;
    }
    assert!(limiter.check().is_ok());
}
