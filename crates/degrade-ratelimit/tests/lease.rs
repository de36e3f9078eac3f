//! Leases (issue 20): at high rates a thread takes budget from a limiter's shared cell in one
//! compare-and-swap and spends it on its next requests to that limiter, whichever service
//! clone they go through. The window bound with its allowance
//! is a proptest in `proptests.rs`; here, what a lease does step by step, and exact accounting
//! with two threads.

use degrade_core::ManualClock;
use degrade_ratelimit::{RateLimitConfig, RateLimitLayer, RateLimited};
use futures_util::FutureExt;
use std::convert::Infallible;
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

fn echo() -> impl Service<
    (),
    Response = (),
    Error = Infallible,
    Future = std::future::Ready<Result<(), Infallible>>,
> + Clone
+ Send {
    tower::service_fn(|()| std::future::ready(Ok::<_, Infallible>(())))
}

fn call<S>(svc: &mut S) -> bool
where
    S: Service<(), Error = degrade_core::BoxError>,
{
    let s = svc.ready().now_or_never().unwrap().unwrap();
    match s.call(()).now_or_never().expect("decided at once") {
        Ok(_) => true,
        Err(e) => {
            assert!(e.is::<RateLimited>(), "{e}");
            false
        }
    }
}

const US: Duration = Duration::from_micros(1);

/// 1,000,000 a second (1 µs a unit), burst 1,000: a lease lives min(1 ms, 1,000 µs / 16) =
/// 62.5 µs and holds at most 62 units.
fn million_a_second() -> RateLimitConfig {
    RateLimitConfig::per(1_000_000, Duration::from_secs(1)).burst(1000)
}

#[test]
fn a_hot_thread_leases_doubling_budgets_and_an_idle_one_goes_back_to_the_cell() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder(million_a_second())
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    // First request: decided by the cell alone.
    assert!(call(&mut svc));
    assert_eq!(layer.debt(), US);
    // Second, at once: the thread is hot, it leases two units and spends one.
    assert!(call(&mut svc));
    assert_eq!(layer.debt(), 3 * US);
    // Third: spent from the lease, the cell does not move.
    assert!(call(&mut svc));
    assert_eq!(layer.debt(), 3 * US);
    // Fourth: the lease is spent, the next one is twice as large.
    assert!(call(&mut svc));
    assert_eq!(layer.debt(), 7 * US);
    // The lease (3 units left) expires 62.5 µs after it was taken: they are forfeited, and
    // the next lease is half the size (two units).
    clock.advance(Duration::from_nanos(62_500));
    assert!(call(&mut svc));
    assert_eq!(layer.debt(), 2 * US);
    let s = layer.snapshot();
    assert_eq!((s.offered(), s.admitted, s.units), (5, 5, 5));
}

/// The case the allowance is for: a unit leased before the budget refilled is spent after
/// it did, so at one instant the burst plus that unit is admitted, within the stated bound
/// (burst + units emitted in a lease's life).
#[test]
fn a_unit_leased_before_a_refill_may_be_spent_after_it_within_the_allowance() {
    let clock = ManualClock::new();
    // 1 µs a unit, burst 64: a lease lives min(1 ms, 64 µs / 16) = 4 µs, at most 4 units.
    let layer =
        RateLimitLayer::builder(RateLimitConfig::per(1_000_000, Duration::from_secs(1)).burst(64))
            .clock(clock.clone())
            .build()
            .unwrap();
    let mut a = layer.layer(echo());
    let mut b = layer.layer(echo());
    assert!(call(&mut a)); // by the cell
    assert!(call(&mut a)); // from a lease of two: one unit left
    assert_eq!(layer.debt(), 3 * US);
    clock.advance(3 * US); // the budget is full again; the lease lives one more µs
    assert_eq!(layer.debt(), Duration::ZERO);
    // Through another clone (the same thread's lease) until refused: the leased unit, then
    // the whole burst, at one instant.
    let mut admitted = 0;
    while call(&mut b) {
        admitted += 1;
    }
    assert!(!call(&mut a));
    assert_eq!(admitted, 65, "the burst plus one, within burst + 4");
}

#[test]
fn a_slow_rate_never_leases() {
    // 1,000 a second: a unit is 1 ms, no lease of two units fits 1 ms.
    let clock = ManualClock::new();
    let layer =
        RateLimitLayer::builder(RateLimitConfig::per(1000, Duration::from_secs(1)).burst(1000))
            .clock(clock.clone())
            .build()
            .unwrap();
    let mut svc = layer.layer(echo());
    for n in 1..=10u32 {
        assert!(call(&mut svc));
        assert_eq!(layer.debt(), n * Duration::from_millis(1));
    }
}

#[test]
fn a_lease_is_not_taken_from_a_nearly_spent_budget_and_the_burst_holds() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder(million_a_second())
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    let mut others: Vec<_> = (0..7).map(|_| layer.layer(echo())).collect();
    // Eight services at one instant: together at most the burst.
    let mut admitted = 0;
    for _ in 0..200 {
        admitted += u32::from(call(&mut svc));
        for o in &mut others {
            admitted += u32::from(call(o));
        }
    }
    assert!(
        admitted <= 1000,
        "{admitted} admitted at one instant, burst 1000"
    );
    let s = layer.snapshot();
    assert_eq!(s.offered(), 1600);
    assert_eq!(s.admitted + s.rejected(), 1600);
}

#[test]
fn a_quota_change_voids_a_lease() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder(million_a_second())
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    for _ in 0..4 {
        assert!(call(&mut svc));
    }
    assert_eq!(layer.debt(), 7 * US); // 3 units still leased
    // Ten a second, burst 1: the leased units are void; one request, then over quota.
    layer
        .quota_handle()
        .set(RateLimitConfig::per(10, Duration::from_secs(1)).burst(1))
        .unwrap();
    clock.advance(Duration::from_secs(1));
    assert!(call(&mut svc));
    assert!(!call(&mut svc));
}

/// Two threads, each on its own clone, against a budget that runs out at one instant: every
/// request is counted once, and no more than the burst is admitted.
#[test]
fn two_threads_leasing_keep_exact_accounting() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder(million_a_second())
        .clock(clock.clone())
        .build()
        .unwrap();
    let svc = layer.layer(echo());
    let admitted: u32 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let mut svc = svc.clone();
                s.spawn(move || (0..5000).map(|_| u32::from(call(&mut svc))).sum::<u32>())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let snap = layer.snapshot();
    assert_eq!(snap.offered(), 10_000);
    assert_eq!(snap.admitted, u64::from(admitted));
    assert_eq!(snap.admitted + snap.rejected(), 10_000);
    // Time stood still: at most the burst.
    assert!(admitted <= 1000, "{admitted}");
}

/// axum clones its service for every request: the lease is the thread's, so a fresh clone per
/// request still spends it.
#[test]
fn a_clone_per_request_spends_the_threads_lease() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder(million_a_second())
        .clock(clock.clone())
        .build()
        .unwrap();
    let svc = layer.layer(echo());
    for _ in 0..4 {
        assert!(call(&mut svc.clone()));
    }
    assert_eq!(layer.debt(), 7 * US); // 1 by the cell, then leases of 2 and 4
}

/// A thread holds leases for four limiters; a fifth takes the least recently used slot, and
/// that lease is forfeited (never spent twice).
#[test]
fn a_thread_on_five_limiters_forfeits_the_oldest_lease() {
    let clock = ManualClock::new();
    let layers: Vec<_> = (0..5)
        .map(|_| {
            RateLimitLayer::builder(million_a_second())
                .clock(clock.clone())
                .build()
                .unwrap()
        })
        .collect();
    let mut svcs: Vec<_> = layers.iter().map(|l| l.layer(echo())).collect();
    for s in &mut svcs[..4] {
        assert!(call(s));
        assert!(call(s)); // a lease of two, one unit left
    }
    assert!(call(&mut svcs[4])); // takes the first limiter's slot
    assert!(call(&mut svcs[0])); // its lease is gone: a fresh start, by the cell
    assert_eq!(layers[0].debt(), 4 * US);
    for l in &layers[1..4] {
        assert_eq!(l.debt(), 3 * US);
    }
}
