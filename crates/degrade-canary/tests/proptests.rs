//! Property tests of the router: sticky buckets are monotone as the weight rises, a rollback
//! returns everyone to stable, and the unkeyed split follows the weight.

use degrade_canary::key::from_fn;
use degrade_canary::{Arm, Canary, Weight};
use futures_util::FutureExt;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use std::convert::Infallible;
use std::future::{Ready, ready};
use tower::Service;

type Echo = tower::util::ServiceFn<fn(u64) -> Ready<Result<u64, Infallible>>>;

fn echo() -> Echo {
    tower::service_fn(|n: u64| ready(Ok::<_, Infallible>(n)))
}

/// The arm a request takes (the service is always ready and answers at once).
fn arm_of<S>(svc: &mut S, req: u64) -> Arm
where
    S: Service<
            u64,
            Future = degrade_canary::future::ResponseFuture<
                Ready<Result<u64, Infallible>>,
                Ready<Result<u64, Infallible>>,
                degrade_core::DefaultClassifier,
                degrade_canary::service::Plain,
                degrade_core::FastClock,
            >,
        >,
{
    let fut = svc.call(req);
    let arm = fut.arm();
    fut.now_or_never().expect("ready").expect("ok");
    arm
}

fn rising_weights() -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(0u32..=10_000, 1..12).prop_map(|mut v| {
        v.sort_unstable();
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        // Integration tests have no lib.rs beside them for proptest's default lookup.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/proptests.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn stickiness_is_monotone_as_the_weight_rises(
        weights in rising_weights(),
        users in prop::collection::vec(any::<u64>(), 1..300),
    ) {
        let weight = Weight::new(0).unwrap();
        let mut svc = Canary::builder(echo(), echo())
            .weight(weight.clone())
            .key(from_fn(|u: &u64| Some(*u)))
            .build().unwrap();
        let mut on_canary = vec![false; users.len()];
        for w in weights {
            weight.set(w).unwrap();
            for (i, &u) in users.iter().enumerate() {
                let arm = arm_of(&mut svc, u);
                // Once on the canary, a user stays there while the weight rises.
                prop_assert!(!(on_canary[i] && arm == Arm::Stable), "user {u} left the canary at {w} bp");
                // And the same user always gets the same answer at one weight.
                prop_assert_eq!(arm, arm_of(&mut svc, u));
                on_canary[i] = arm == Arm::Canary;
            }
        }
        // Rollback: everyone returns to stable.
        weight.set(0).unwrap();
        for &u in &users {
            prop_assert_eq!(arm_of(&mut svc, u), Arm::Stable);
        }
    }

    #[test]
    fn unkeyed_split_of_100k_requests_follows_the_weight(w in 0u32..=10_000) {
        let mut svc = Canary::builder(echo(), echo())
            .weight(Weight::new(w).unwrap())
            .build().unwrap();
        let canary = (0..100_000u64)
            .filter(|&i| arm_of(&mut svc, i) == Arm::Canary)
            .count() as i64;
        let exact = 100_000 * i64::from(w) / 10_000;
        // The issue asks for ±1 % of the weight; the stride gives ±1 request.
        prop_assert!((canary - exact).abs() <= 1_000);
        prop_assert!((canary - exact).abs() <= 1, "canary {canary}, exact {exact}");
        let snap = svc.snapshot();
        prop_assert_eq!(snap.canary.routed as i64, canary);
        prop_assert_eq!(snap.stable.routed + snap.canary.routed, 100_000);
    }

    #[test]
    fn keyed_split_follows_the_weight(w in 0u32..=10_000, seed in any::<u64>()) {
        let mut svc = Canary::builder(echo(), echo())
            .weight(Weight::new(w).unwrap())
            .key(from_fn(|u: &u64| Some(*u)))
            .build().unwrap();
        let n = 20_000u64;
        let canary = (0..n)
            .filter(|&i| arm_of(&mut svc, seed.wrapping_add(i.wrapping_mul(0x9E37_79B9))) == Arm::Canary)
            .count() as f64;
        // Hashed buckets are uniform: 20 000 users land within ±1.5 points of the weight.
        prop_assert!((canary / n as f64 - f64::from(w) / 10_000.0).abs() <= 0.015);
    }
}
