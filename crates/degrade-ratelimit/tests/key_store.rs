//! The keyed store at its cap: recovered keys make room for new ones, whatever happened
//! before, and the store never holds more than `max_keys`.

use degrade_core::ManualClock;
use degrade_ratelimit::error::Cause;
use degrade_ratelimit::{KeysConfig, RateLimitConfig, RateLimitLayer, RateLimited, key};
use futures_util::FutureExt;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use std::convert::Infallible;
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

type Layered = RateLimitLayer<
    key::KeyFn<fn(&u32) -> Option<u32>, u32>,
    degrade_ratelimit::cost::DefaultCost,
    ManualClock,
>;

fn keyed(cfg: RateLimitConfig, max_keys: usize, clock: &ManualClock) -> Layered {
    let by_key: fn(&u32) -> Option<u32> = |k| Some(*k);
    RateLimitLayer::builder(cfg)
        .clock(clock.clone())
        .keyed(key::from_fn(by_key), KeysConfig { max_keys })
        .build()
        .unwrap()
}

/// One request for `k`, decided at once.
fn call(layer: &Layered, k: u32) -> Result<(), RateLimited> {
    let mut svc = layer.layer(tower::service_fn(|_: u32| {
        std::future::ready(Ok::<_, Infallible>(()))
    }));
    svc.ready()
        .now_or_never()
        .unwrap()
        .unwrap()
        .call(k)
        .now_or_never()
        .expect("decided at once")
        .map_err(|e| e.downcast_ref::<RateLimited>().unwrap().clone())
}

const SEC: Duration = Duration::from_secs(1);

/// Issue 14, reproduced with its inputs: a sweep that emptied the store set the next sweep to
/// "never", so once new keys filled it again every later new key was refused with a
/// `retry_after` of 584 years.
#[test]
fn new_keys_admitted_after_a_quiet_period() {
    let clock = ManualClock::new();
    let layer = keyed(RateLimitConfig::per(1, SEC), 2, &clock);
    assert!(call(&layer, 1).is_ok());
    assert!(call(&layer, 2).is_ok());
    clock.advance(5 * SEC);
    assert!(call(&layer, 3).is_ok());
    assert!(call(&layer, 4).is_ok());
    clock.advance(60 * SEC); // t = 65 s
    assert_eq!(call(&layer, 5), Ok(()));
    clock.advance(60 * SEC); // t = 125 s
    assert_eq!(call(&layer, 7), Ok(()));
    assert!(layer.snapshot().keys <= 2);
    assert_eq!(layer.snapshot().rejected_by(Cause::KeyCapacity), 0);
}

/// At the cap with every key mid-budget, a new key's `retry_after` is the time until the
/// soonest held key recovers, and at that instant the new key is admitted.
#[test]
fn key_capacity_retry_after_is_the_soonest_recovery() {
    let clock = ManualClock::new();
    let layer = keyed(RateLimitConfig::per(1, SEC), 2, &clock);
    assert!(call(&layer, 1).is_ok());
    clock.advance(Duration::from_millis(300));
    assert!(call(&layer, 2).is_ok());
    clock.advance(Duration::from_millis(200)); // t = 0.5 s: key 1 recovers at 1 s
    let r = call(&layer, 3).unwrap_err();
    assert_eq!(r.cause, Cause::KeyCapacity);
    assert_eq!(r.retry_after, Some(Duration::from_millis(500)));
    clock.advance(Duration::from_millis(500));
    assert_eq!(call(&layer, 3), Ok(()));
    // After an emptying sweep the bound is just as exact.
    clock.advance(10 * SEC);
    assert_eq!(call(&layer, 4), Ok(()));
    assert_eq!(call(&layer, 5), Ok(()));
    let r = call(&layer, 6).unwrap_err();
    assert_eq!(r.cause, Cause::KeyCapacity);
    assert_eq!(r.retry_after, Some(SEC));
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/key_store.txt",
        ))),
        ..ProptestConfig::default()
    })]

    /// Over random arrivals of keys and clock advances: a key with its full budget is admitted
    /// whenever fewer than `max_keys` other keys can still be mid-budget (so the store holds a
    /// reclaimable key, or has room); a `KeyCapacity` refusal happens only at the cap, with a
    /// `retry_after` no longer than one burst; the store never holds more than `max_keys`.
    #[test]
    fn a_new_key_is_admitted_whenever_a_held_key_is_reclaimable(
        burst in 1u64..4,
        max_keys in 1usize..8,
        ops in prop::collection::vec((prop_oneof![Just(0u64), 0u64..1500, 0u64..10_000], 0u32..12), 1..200),
    ) {
        let clock = ManualClock::new();
        let layer = keyed(RateLimitConfig::per(1, SEC).burst(burst), max_keys, &clock);
        // Per key: the instant of its last admission, in ms. Its TAT is at most one burst
        // (`burst` s) after it, so past that the key is reclaimable.
        let tolerance_ms = burst * 1000;
        let mut last: std::collections::HashMap<u32, u64> = Default::default();
        let mut now_ms = 0u64;
        for (dt, k) in ops {
            clock.advance(Duration::from_millis(dt));
            now_ms += dt;
            let live = |j: &u32| last.get(j).is_some_and(|&t| now_ms < t + tolerance_ms);
            let fresh = !live(&k);
            let others_live = last.keys().filter(|j| **j != k && live(j)).count();
            let held_before = layer.snapshot().keys;
            let out = call(&layer, k);
            match &out {
                Ok(()) => { last.insert(k, now_ms); }
                Err(r) if r.cause == Cause::KeyCapacity => {
                    prop_assert_eq!(held_before, max_keys, "refused below the cap");
                    let wait = r.retry_after.unwrap();
                    prop_assert!(wait > Duration::ZERO && wait <= Duration::from_millis(tolerance_ms),
                        "retry_after {:?}", wait);
                }
                Err(r) => {
                    prop_assert_eq!(r.cause, Cause::OverQuota);
                    prop_assert!(!fresh, "a full budget refused as over quota");
                }
            }
            if fresh && others_live < max_keys {
                prop_assert_eq!(&out, &Ok(()),
                    "new key {} refused with {} of {} keys possibly live", k, others_live, max_keys);
            }
            prop_assert!(layer.snapshot().keys <= max_keys);
        }
    }
}
