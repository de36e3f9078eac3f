//! Property tests of the adaptive limit's control law ([`Law`]), a pure function of (state,
//! window, now): it never leaves `[min, max]`, it settles at the knee of a service of fixed
//! capacity whatever that capacity and latency, and it follows a step change of capacity.
//!
//! The model service has `k` slots and a service time `s`: at concurrency `n` its mean latency
//! is `s * max(1, n / k)` (beyond `k`, requests queue in it), with a few percent of noise. Demand
//! always exceeds the limit (every window is binding), as under overload.

use degrade_core::limit::{Law, LimitConfig, Window};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use std::time::Duration;
use tokio::time::Instant;

/// Samples per window: what a busy service completes in one.
const SAMPLES: u32 = 32;

/// One window of the model service at the law's current limit: `SAMPLES` completions at the
/// concurrency the limit allows, latencies spread by `jitter` (a deterministic sequence from
/// `seed`, so a failure replays exactly).
fn window(law: &Law, k: f64, s: f64, jitter: f64, seed: &mut u64) -> Window {
    let n = law.limit();
    let mean = s * (f64::from(n) / k).max(1.0);
    let mut w = Window::default();
    for _ in 0..SAMPLES {
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let u = (*seed >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
        let latency = mean * (1.0 + jitter * (2.0 * u - 1.0));
        w.record(
            Duration::from_secs_f64(latency),
            n,
            n <= law.low_concurrency(),
        );
    }
    w.binding = true;
    w.elapsed = Duration::from_secs_f64(mean * 4.0);
    w
}

/// Runs `windows` windows against a service of `k` slots, returning every limit.
fn drive(
    law: &mut Law,
    t: &mut Instant,
    k: f64,
    s: f64,
    windows: usize,
    seed: &mut u64,
) -> Vec<u32> {
    (0..windows)
        .map(|_| {
            let w = window(law, k, s, 0.03, seed);
            *t += w.elapsed;
            law.observe(&w, *t)
        })
        .collect()
}

/// The median of the limits (probe windows, at half the limit for one window in 32, do not
/// move it).
fn median(mut limits: Vec<u32>) -> f64 {
    limits.sort_unstable();
    f64::from(limits[limits.len() / 2])
}

/// Whether a limit serves a service of `k` slots at capacity without a standing queue in it:
/// at least `k` (every slot busy) and at most the knee the tolerance allows, plus one.
fn at_the_knee(limit: f64, k: f64, tolerance: f64) -> bool {
    limit >= k.floor() && limit <= (k * (1.0 + tolerance) * 1.15).ceil() + 1.0
}

fn any_window() -> impl Strategy<Value = (u32, u64, u32, bool, u64)> {
    (
        0u32..200,            // samples
        0u64..5_000_000_000,  // mean latency, ns (up to 5 s)
        0u32..100_000,        // concurrency
        any::<bool>(),        // binding
        0u64..10_000_000_000, // elapsed, ns
    )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/limit_law.txt",
        ))),
        ..ProptestConfig::default()
    })]

    /// Whatever the windows (empty, huge, zero latency, absurd concurrency), the limit stays
    /// within `[min, max]`, never 0, and critical requests never get less than the others.
    #[test]
    fn the_limit_never_leaves_its_bounds(
        min in 1u32..50,
        span in 0u32..500,
        start in 0.0f64..=1.0,
        tolerance in 0.01f64..=1.0,
        windows in prop::collection::vec(any_window(), 1..200),
    ) {
        let max = min + span;
        let config = LimitConfig {
            min,
            max,
            initial: min + (f64::from(span) * start) as u32,
            tolerance,
            ..LimitConfig::default()
        };
        config.validate().unwrap();
        let mut law = Law::new(config);
        let mut t = Instant::now();
        for (samples, latency_ns, concurrency, binding, elapsed_ns) in windows {
            let mut w = Window::default();
            for i in 0..samples {
                // Latencies around the mean, some far from it.
                let l = latency_ns.saturating_mul(u64::from(i % 7 + 1)) / 4;
                w.record(Duration::from_nanos(l), concurrency, concurrency <= law.low_concurrency());
            }
            w.binding = binding;
            w.elapsed = Duration::from_nanos(elapsed_ns);
            t += w.elapsed;
            let limit = law.observe(&w, t);
            prop_assert!((min..=max).contains(&limit), "{limit} outside [{min}, {max}]");
            prop_assert!(limit >= 1);
            prop_assert_eq!(limit, law.limit());
            prop_assert!(law.limit_for(degrade_core::Priority::Critical) >= limit);
        }
    }

    /// A service of `k` slots and service time `s`, over a range neither the law nor its
    /// defaults know: the limit settles at the knee (every slot busy, no standing queue).
    #[test]
    fn the_limit_converges_on_a_fixed_capacity(
        k in 1u32..300,
        s_ms in 1u64..2_000,
        seed in any::<u64>(),
    ) {
        let (k, s) = (f64::from(k), s_ms as f64 / 1e3);
        let config = LimitConfig::default();
        let tolerance = config.tolerance;
        let mut law = Law::new(config);
        let mut t = Instant::now();
        let mut seed = seed;
        let limits = drive(&mut law, &mut t, k, s, 400, &mut seed);
        let settled = median(limits[300..].to_vec());
        prop_assert!(at_the_knee(settled, k, tolerance), "k {k}, s {s}: settled at {settled}");
    }

    /// Capacity halves or doubles (or more) after the limit settled: within 150 windows the
    /// limit sits at the new knee.
    #[test]
    fn the_limit_follows_a_step_change_of_capacity(
        k in 2u32..200,
        factor in prop_oneof![Just(0.5), Just(2.0), Just(0.25), Just(3.0)],
        s_ms in 5u64..500,
        seed in any::<u64>(),
    ) {
        let (k, s) = (f64::from(k), s_ms as f64 / 1e3);
        let config = LimitConfig::default();
        let tolerance = config.tolerance;
        let mut law = Law::new(config);
        let mut t = Instant::now();
        let mut seed = seed;
        drive(&mut law, &mut t, k, s, 300, &mut seed);
        let k2 = (k * factor).max(1.0).round();
        let limits = drive(&mut law, &mut t, k2, s, 250, &mut seed);
        let settled = median(limits[150..].to_vec());
        prop_assert!(
            at_the_knee(settled, k2, tolerance),
            "k {k} -> {k2}, s {s}: settled at {settled}"
        );
    }

    /// The service gets slower (its slots stay, each request takes 2x-4x as long): the law
    /// first reads the slower latency as a queue and cuts, then sees that the cuts did not
    /// help, learns the new baseline and gives the cuts back, so the limit is at the knee
    /// again within a few windows instead of growing back from the bottom.
    #[test]
    fn a_slower_service_gets_its_limit_back_within_a_few_windows(
        k in 8u32..200,
        slower in prop_oneof![Just(2.0), Just(3.0), Just(4.0)],
        s_ms in 5u64..500,
        seed in any::<u64>(),
    ) {
        let (k, s) = (f64::from(k), s_ms as f64 / 1e3);
        let mut law = Law::new(LimitConfig::default());
        let mut t = Instant::now();
        let mut seed = seed;
        drive(&mut law, &mut t, k, s, 300, &mut seed);
        let limits = drive(&mut law, &mut t, k, s * slower, 40, &mut seed);
        let back = limits.iter().position(|&l| f64::from(l) >= k.floor());
        prop_assert!(
            back.is_some_and(|i| i <= 2),
            "k {k}, s {s} x{slower}: limits {limits:?}"
        );
    }
}
