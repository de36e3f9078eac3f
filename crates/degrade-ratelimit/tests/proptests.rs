//! Properties of the limiter over random quotas, bursts, costs and arrival times.
//!
//! * In any window `[a, b]` between two admissions, the units admitted are at most
//!   `quota × (b − a) / period + burst` (checked exactly, in integers), plus what a lease
//!   may add at high rates ([`lease_allowance`]; `tests/lease.rs` checks it with many clones).
//! * A rejection's `retry_after` is never shorter than the real wait: one nanosecond before it
//!   the same request is still refused, and at it the request is admitted.
//! * After a live quota change, every window that starts after the change obeys the new quota.
//! * At high rates, with several service clones each leasing budget from the one cell, every
//!   window obeys the same bound with the lease allowance, and offered = admitted + rejected.

use degrade_core::ManualClock;
use degrade_ratelimit::error::Cause;
use degrade_ratelimit::{RateLimitConfig, RateLimitLayer, RateLimited};
use futures_util::FutureExt;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use std::convert::Infallible;
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

type Svc = Box<dyn FnMut(u64) -> Result<(), RateLimited>>;

fn limiter(cfg: RateLimitConfig, clock: &ManualClock) -> (Svc, degrade_ratelimit::QuotaHandle) {
    let layer = RateLimitLayer::builder(cfg)
        .clock(clock.clone())
        .cost(|c: &u64| *c)
        .build()
        .unwrap();
    let handle = layer.quota_handle();
    let mut svc = layer.layer(tower::service_fn(|_: u64| {
        std::future::ready(Ok::<_, Infallible>(()))
    }));
    let f = move |cost: u64| {
        let out = svc
            .ready()
            .now_or_never()
            .unwrap()
            .unwrap()
            .call(cost)
            .now_or_never()
            .expect("decided at once");
        out.map_err(|e| e.downcast_ref::<RateLimited>().unwrap().clone())
    };
    (Box::new(f), handle)
}

#[derive(Debug, Clone, Copy)]
struct Quota {
    quota: u64,
    period_ms: u64,
    burst: u64,
}

fn quota() -> impl Strategy<Value = Quota> {
    (1u64..1000, 1u64..5000, 1u64..50).prop_map(|(quota, period_ms, burst)| Quota {
        quota,
        period_ms,
        burst,
    })
}

fn config(q: Quota) -> RateLimitConfig {
    RateLimitConfig::per(q.quota, Duration::from_millis(q.period_ms)).burst(q.burst)
}

/// (nanoseconds to advance before the request, cost of the request)
fn ops() -> impl Strategy<Value = Vec<(u64, u64)>> {
    prop::collection::vec((prop_oneof![Just(0u64), 0u64..50_000_000], 0u64..8), 1..300)
}

/// The units a window may hold beyond GCRA's bound because of leases (the crate's `Lease`
/// docs): the units emitted in a lease's life `min(1 ms, burst time / 16)`, plus one for
/// rounding; zero where the rate is too low to lease (fewer than two units per life).
fn lease_allowance(quota: u64, period_ns: u128, burst: u64) -> u128 {
    let unit = (period_ns / u128::from(quota)).max(1);
    let life = 1_000_000u128.min(unit * u128::from(burst) / 16);
    let max = life / unit;
    if max >= 2 { max + 1 } else { 0 }
}

/// Checks the window bound over every pair of admissions in `admitted` (time ns, cost).
fn check_windows(admitted: &[(u64, u64)], q: Quota) -> Result<(), TestCaseError> {
    let period_ns = u128::from(q.period_ms) * 1_000_000;
    let burst = u128::from(q.burst) + lease_allowance(q.quota, period_ns, q.burst);
    for i in 0..admitted.len() {
        let mut units = 0u128;
        for j in i..admitted.len() {
            units += u128::from(admitted[j].1);
            let span = u128::from(admitted[j].0 - admitted[i].0);
            prop_assert!(
                units * period_ns <= burst * period_ns + span * u128::from(q.quota),
                "{units} units in {span} ns under {q:?}"
            );
        }
    }
    Ok(())
}

/// Several clones of one service over a high-rate quota (where clones lease budget).
#[derive(Debug, Clone, Copy)]
struct Hot {
    per_second: u64,
    burst: u64,
}

fn hot() -> impl Strategy<Value = Hot> {
    (10_000u64..2_000_000, 32u64..400).prop_map(|(per_second, burst)| Hot { per_second, burst })
}

/// (clone, time to advance before the requests in hundredths of a unit, cost, requests at
/// that instant): mostly none or a few units (where a lease taken before a refill is spent
/// after it), sometimes long; runs of up to 150 requests at one instant drain the burst.
fn hot_ops() -> impl Strategy<Value = Vec<(usize, u64, u64, u32)>> {
    prop::collection::vec(
        (
            0usize..4,
            prop_oneof![
                4 => Just(0u64),
                4 => 0u64..500,
                1 => 0u64..100_000,
            ],
            1u64..4,
            prop_oneof![3 => Just(1u32), 1 => 1u32..150],
        ),
        1..300,
    )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        // The committed regressions file lives beside the crate's Cargo.toml.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/proptests.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn never_more_than_quota_times_t_plus_burst(q in quota(), ops in ops()) {
        let clock = ManualClock::new();
        let (mut svc, _) = limiter(config(q), &clock);
        let mut admitted = Vec::new();
        for (dt, cost) in ops {
            clock.advance(Duration::from_nanos(dt));
            let now = u64::try_from(clock.elapsed().as_nanos()).unwrap();
            match svc(cost) {
                Ok(()) => admitted.push((now, cost)),
                Err(r) => prop_assert!(
                    r.cause == Cause::OverQuota || (r.cause == Cause::CostAboveBurst && cost > q.burst)
                ),
            }
        }
        check_windows(&admitted, q)?;
    }

    #[test]
    fn retry_after_is_never_shorter_than_the_real_wait(q in quota(), ops in ops()) {
        let clock = ManualClock::new();
        let (mut svc, _) = limiter(config(q), &clock);
        for (dt, cost) in ops {
            clock.advance(Duration::from_nanos(dt));
            let cost = cost.min(q.burst);
            if let Err(r) = svc(cost) {
                prop_assert_eq!(r.cause, Cause::OverQuota);
                let wait = r.retry_after.unwrap();
                prop_assert!(wait > Duration::ZERO);
                clock.advance(wait - Duration::from_nanos(1));
                prop_assert!(svc(cost).is_err(), "admitted before retry_after");
                clock.advance(Duration::from_nanos(1));
                prop_assert!(svc(cost).is_ok(), "refused at retry_after");
            }
        }
    }

    #[test]
    fn after_a_live_change_windows_obey_the_new_quota(
        a in quota(), b in quota(), before in ops(), after in ops(),
    ) {
        let clock = ManualClock::new();
        let (mut svc, handle) = limiter(config(a), &clock);
        for (dt, cost) in before {
            clock.advance(Duration::from_nanos(dt));
            let _ = svc(cost);
        }
        handle.set(config(b)).unwrap();
        let mut admitted = Vec::new();
        for (dt, cost) in after {
            clock.advance(Duration::from_nanos(dt));
            let now = u64::try_from(clock.elapsed().as_nanos()).unwrap();
            if svc(cost).is_ok() {
                admitted.push((now, cost));
            }
        }
        check_windows(&admitted, b)?;
    }

    #[test]
    fn leases_never_admit_more_than_their_life_of_rate_beyond_gcra(h in hot(), ops in hot_ops()) {
        let clock = ManualClock::new();
        let layer = RateLimitLayer::builder(
            RateLimitConfig::per(h.per_second, Duration::from_secs(1)).burst(h.burst),
        )
        .clock(clock.clone())
        .cost(|c: &u64| *c)
        .build()
        .unwrap();
        let svc = layer.layer(tower::service_fn(|_: u64| {
            std::future::ready(Ok::<_, Infallible>(()))
        }));
        let mut clones: Vec<_> = (0..4).map(|_| svc.clone()).collect();
        let mut admitted = Vec::new();
        let mut offered = 0;
        let unit_ns = 1_000_000_000 / h.per_second;
        for (i, dt, cost, run) in ops {
            clock.advance(Duration::from_nanos(dt * unit_ns / 100));
            let now = u64::try_from(clock.elapsed().as_nanos()).unwrap();
            for r in 0..run {
                offered += 1;
                let s = clones[(i + r as usize) % 4].ready().now_or_never().unwrap().unwrap();
                match s.call(cost).now_or_never().expect("decided at once") {
                    Ok(()) => admitted.push((now, cost)),
                    Err(e) => prop_assert_eq!(
                        e.downcast_ref::<RateLimited>().unwrap().cause,
                        Cause::OverQuota
                    ),
                }
            }
        }
        let q = Quota { quota: h.per_second, period_ms: 1000, burst: h.burst };
        check_windows(&admitted, q)?;
        let snap = layer.snapshot();
        prop_assert_eq!(snap.offered(), offered);
        prop_assert_eq!(snap.admitted, admitted.len() as u64);
        prop_assert_eq!(snap.units, admitted.iter().map(|a| a.1).sum::<u64>());
    }
}
