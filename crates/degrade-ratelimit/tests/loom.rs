//! loom models of the shared budget, through the public layer.
//!
//! Run with
//! `RUSTFLAGS="--cfg degrade_loom" CARGO_TARGET_DIR=target/loom cargo test -p degrade-ratelimit --release --test loom`
//! (the models of the cell and the quota table themselves are unit tests:
//! `... cargo test -p degrade-ratelimit --release --lib loom_models`). Two threads each.
#![cfg(degrade_loom)]

use degrade_core::ManualClock;
use degrade_ratelimit::{RateLimitConfig, RateLimitLayer};
use futures_util::FutureExt;
use loom::thread;
use std::convert::Infallible;
use std::future::ready;
use std::time::Duration;
use tower::{Layer, Service};

type Svc = degrade_ratelimit::RateLimit<
    tower::util::ServiceFn<fn(()) -> std::future::Ready<Result<(), Infallible>>>,
    degrade_ratelimit::key::Global,
    degrade_ratelimit::cost::DefaultCost,
    ManualClock,
>;

fn layer(
    burst: u64,
) -> RateLimitLayer<degrade_ratelimit::key::Global, degrade_ratelimit::cost::DefaultCost, ManualClock>
{
    RateLimitLayer::builder(RateLimitConfig::per(1, Duration::from_secs(1)).burst(burst))
        .clock(ManualClock::new())
        .build()
        .unwrap()
}

fn service(
    l: &RateLimitLayer<
        degrade_ratelimit::key::Global,
        degrade_ratelimit::cost::DefaultCost,
        ManualClock,
    >,
) -> Svc {
    let f: fn(()) -> std::future::Ready<Result<(), Infallible>> = |()| ready(Ok(()));
    l.layer(tower::service_fn(f))
}

fn admitted(svc: &mut Svc) -> u64 {
    u64::from(
        svc.call(())
            .now_or_never()
            .expect("decided at once")
            .is_ok(),
    )
}

/// Two connections' clones race for a budget of one: exactly one request is admitted, and the
/// counters account for both.
#[test]
fn clones_racing_for_one_unit_admit_exactly_one() {
    loom::model(|| {
        let l = layer(1);
        let mut a = service(&l);
        let mut b = a.clone();
        let t = thread::spawn(move || admitted(&mut b));
        let mine = admitted(&mut a);
        assert_eq!(mine + t.join().unwrap(), 1);
        let snap = l.snapshot();
        assert_eq!((snap.admitted, snap.offered()), (1, 2));
    });
}

/// A quota change racing a request: the request is decided under one quota or the other, and
/// a spent budget stays spent (the change is no refill).
#[test]
fn a_live_quota_change_racing_a_request_is_no_refill() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(2);
    builder.check(|| {
        let l = layer(1);
        let mut svc = service(&l);
        assert_eq!(admitted(&mut svc), 1);
        let handle = l.quota_handle();
        let t = thread::spawn(move || {
            handle
                .set(RateLimitConfig::per(2, Duration::from_secs(1)).burst(1))
                .unwrap()
        });
        // The budget of one is spent: under either quota this request is over it.
        assert_eq!(admitted(&mut svc), 0);
        t.join().unwrap();
        assert_eq!(admitted(&mut svc), 0);
    });
}
