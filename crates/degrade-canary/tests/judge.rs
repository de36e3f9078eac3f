//! The judge on hand-made and simulated data: no data is inconclusive, regressions fail,
//! repeated looks at an A/A stream stay within alpha, and a small simulation run meets the
//! issue's targets (the full run is `cargo run -p degrade-canary --release --example judge_sim
//! -- --runs 1000`).

use degrade_canary::sim::{Rng, Scenario, SimConfig, simulate};
use degrade_canary::stats::{CanarySnapshot, latency_bucket};
use degrade_canary::{Judge, JudgeConfig, Verdict};
use std::time::Duration;

fn judge(min: u64) -> Judge {
    Judge::new(JudgeConfig {
        min_samples: min,
        ..JudgeConfig::default()
    })
    .unwrap()
}

#[test]
fn no_data_is_inconclusive_never_a_pass() {
    let mut j = judge(1);
    for _ in 0..100 {
        assert_eq!(
            j.look(&CanarySnapshot::default()).verdict,
            Verdict::Inconclusive
        );
    }
    // Stable traffic alone is still no data about the canary.
    let mut s = CanarySnapshot::default();
    s.stable.successes = 1_000_000;
    assert_eq!(j.look(&s).verdict, Verdict::Inconclusive);
}

#[test]
fn below_minimum_samples_is_inconclusive() {
    let mut j = judge(1_000);
    let mut s = CanarySnapshot::default();
    s.stable.successes = 100_000;
    s.canary.successes = 999;
    assert_eq!(j.look(&s).verdict, Verdict::Inconclusive);
    s.canary.successes = 1_000;
    assert_eq!(j.look(&s).verdict, Verdict::Pass);
}

#[test]
fn a_failure_is_latched() {
    let mut j = judge(10);
    let mut s = CanarySnapshot::default();
    s.stable.successes = 10_000;
    s.stable.failures = 10;
    s.canary.successes = 100;
    s.canary.failures = 30;
    assert_eq!(j.look(&s).verdict, Verdict::Fail);
    s.stable.successes += 1_000_000;
    s.canary.successes += 1_000_000;
    assert_eq!(j.look(&s).verdict, Verdict::Fail);
    j.start(&s);
    assert_eq!(j.look(&s).verdict, Verdict::Inconclusive);
}

#[test]
fn absolute_guards_fail_a_canary_as_bad_as_stable() {
    let mut j = Judge::new(JudgeConfig {
        min_samples: 100,
        max_error_rate: Some(0.05),
        ..JudgeConfig::default()
    })
    .unwrap();
    let mut s = CanarySnapshot::default();
    // Both arms at 10 %: no relative regression, but above the absolute guard.
    s.stable.successes = 9_000;
    s.stable.failures = 1_000;
    s.canary.successes = 900;
    s.canary.failures = 100;
    let j1 = j.look(&s);
    assert_eq!(j1.verdict, Verdict::Fail);
    assert!(j1.reason.contains("max_error_rate"));

    let mut j = Judge::new(JudgeConfig {
        min_samples: 100,
        max_p99: Some(Duration::from_millis(100)),
        ..JudgeConfig::default()
    })
    .unwrap();
    let mut s = CanarySnapshot::default();
    s.stable.successes = 1_000;
    s.stable
        .latency
        .add(latency_bucket(Duration::from_millis(200)), 1_000);
    s.canary.successes = 200;
    s.canary
        .latency
        .add(latency_bucket(Duration::from_millis(200)), 200);
    assert_eq!(j.look(&s).reason, "canary p99 above max_p99");
}

/// Feeds `looks` windows of an identical stream to one judge: the share of streams it fails
/// is the false-rollback rate under many repeated looks.
fn a_a_false_fail_rate(streams: u32, looks: u32) -> f64 {
    let mut failed = 0;
    for seed in 0..streams {
        let mut rng = Rng::new(1_000 + u64::from(seed));
        let mut j = judge(500);
        let mut s = CanarySnapshot::default();
        for _ in 0..looks {
            for _ in 0..2_000 {
                let arm = if rng.bernoulli(0.1) {
                    &mut s.canary
                } else {
                    &mut s.stable
                };
                if rng.bernoulli(0.01) {
                    arm.failures += 1;
                } else {
                    arm.successes += 1;
                }
                let ms = 20.0 * (0.5 * rng.normal()).exp();
                arm.latency
                    .add(latency_bucket(Duration::from_secs_f64(ms / 1e3)), 1);
            }
            if j.look(&s).verdict == Verdict::Fail {
                failed += 1;
                break;
            }
        }
    }
    f64::from(failed) / f64::from(streams)
}

#[test]
fn repeated_looks_do_not_inflate_false_rollbacks() {
    // 60 looks per stream: a fixed-size test at alpha 0.05 re-run 60 times would fail most
    // streams; the SPRT stays near its alpha (0.0025 per test).
    let rate = a_a_false_fail_rate(150, 60);
    assert!(rate <= 0.02, "false rollback rate {rate}");
}

#[test]
fn small_simulation_meets_the_targets() {
    let mut cfg = SimConfig::default();
    cfg.runs = 40;
    cfg.seed = 7;
    let a_a = simulate(&cfg, &Scenario::a_a());
    assert!(a_a.rollback_rate() <= 0.05, "A/A {a_a:?}");
    assert_eq!(a_a.promoted + a_a.rolled_back, a_a.runs);
    let errors = simulate(&cfg, &Scenario::errors(0.005, 0.02));
    assert!(errors.detection_within_min_samples() >= 0.95, "{errors:?}");
    let latency = simulate(&cfg, &Scenario::latency(1.3));
    assert!(
        latency.detection_within_min_samples() >= 0.95,
        "{latency:?}"
    );
}
