//! Behaviour of the judge that the other tests left unpinned, found by mutation testing
//! (`cargo xtask mutants --scope canary`, see `docs/mutants.md`): the exact sequential update
//! the module documentation describes, windows where one arm saw nothing, when the latency
//! test starts, and the edges of the absolute guards. Snapshots are made by hand.

use degrade_canary::stats::{CanarySnapshot, Histogram, bucket_upper_micros, latency_bucket};
use degrade_canary::{Judge, JudgeConfig, Verdict};
use std::time::Duration;

const MS: Duration = Duration::from_millis(1);

fn judge(cfg: JudgeConfig) -> Judge {
    Judge::new(cfg).unwrap()
}

/// `successes` and `failures` of one arm, each with a latency of `latency`.
fn add(
    arm: &mut degrade_canary::stats::ArmSnapshot,
    successes: u64,
    failures: u64,
    latency: Duration,
) {
    arm.successes += successes;
    arm.failures += failures;
    arm.latency
        .add(latency_bucket(latency), successes + failures);
}

/// Wald's update of the module documentation: each canary event moves the log-likelihood
/// ratio by `ln(π₁/π₀)`, each stable one by `ln((1−π₁)/(1−π₀))`, with
/// `π₁ = rπ₀ / (rπ₀ + 1 − π₀)`, floored at `ln(β / (1 − α))`.
fn wald(llr: f64, pi0: f64, ratio: f64, canary: u64, stable: u64, cfg: &JudgeConfig) -> f64 {
    let pi1 = ratio * pi0 / (ratio * pi0 + 1.0 - pi0);
    let lower = (cfg.beta / (1.0 - cfg.alpha)).ln();
    (llr + canary as f64 * (pi1 / pi0).ln() + stable as f64 * ((1.0 - pi1) / (1.0 - pi0)).ln())
        .max(lower)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

#[test]
fn verdicts_display_in_lower_case() {
    assert_eq!(Verdict::Pass.to_string(), "pass");
    assert_eq!(Verdict::Fail.to_string(), "fail");
    assert_eq!(Verdict::Inconclusive.to_string(), "inconclusive");
}

#[test]
fn config_is_the_one_the_judge_was_built_with() {
    let cfg = JudgeConfig {
        min_samples: 77,
        ..JudgeConfig::default()
    };
    assert_eq!(judge(cfg.clone()).config(), &cfg);
}

#[test]
fn the_error_evidence_follows_the_conditional_binomial_update() {
    let cfg = JudgeConfig::default();
    let mut j = judge(cfg.clone());
    let mut s = CanarySnapshot::default();
    add(&mut s.stable, 10_000, 10, MS);
    add(&mut s.canary, 1_000, 4, MS);
    let first = j.look(&s);
    let expected = wald(0.0, 1_004.0 / 11_014.0, 2.0, 4, 10, &cfg);
    assert!(
        close(first.error_llr, expected),
        "{} vs {expected}",
        first.error_llr
    );
    assert!(expected > 0.5 && expected < first.upper_bound, "{expected}");
    assert!(close(first.upper_bound, (0.95f64 / 0.0025).ln()));
    // The next window adds to it, with the window's own share.
    add(&mut s.stable, 5_000, 1, MS);
    add(&mut s.canary, 1_000, 3, MS);
    let second = j.look(&s);
    let expected = wald(expected, 1_003.0 / 6_004.0, 2.0, 3, 1, &cfg);
    assert!(
        close(second.error_llr, expected),
        "{} vs {expected}",
        second.error_llr
    );
}

#[test]
fn a_window_where_only_one_arm_saw_calls_waits_for_the_next_look() {
    let cfg = JudgeConfig::default();
    // Stable first, then the canary; and the canary first, then stable.
    for canary_first in [false, true] {
        let mut j = judge(cfg.clone());
        let mut s = CanarySnapshot::default();
        if canary_first {
            add(&mut s.canary, 70, 30, MS);
        } else {
            add(&mut s.stable, 10_000, 10, MS);
        }
        let alone = j.look(&s);
        assert_eq!(alone.error_llr, 0.0, "canary first: {canary_first}");
        assert_ne!(alone.verdict, Verdict::Fail);
        if canary_first {
            add(&mut s.stable, 10_000, 10, MS);
        } else {
            add(&mut s.canary, 70, 30, MS);
        }
        // Both windows are judged together: 30 of 100 canary calls failed against 10 of 10 010.
        let both = j.look(&s);
        let expected = wald(0.0, 100.0 / 10_110.0, 2.0, 30, 10, &cfg);
        assert!(
            close(both.error_llr, expected),
            "{} vs {expected}",
            both.error_llr
        );
        assert_eq!(both.verdict, Verdict::Fail, "canary first: {canary_first}");
    }
}

#[test]
fn the_latency_test_waits_for_ten_stable_calls_above_the_quantile() {
    let cfg = JudgeConfig::default(); // p99: a thousand stable calls
    for (before, starts) in [(500, false), (999, false), (1_000, true)] {
        let mut j = judge(cfg.clone());
        let mut s = CanarySnapshot::default();
        add(&mut s.stable, before, 0, MS);
        add(&mut s.canary, 10, 0, MS);
        assert_eq!(j.look(&s).latency_llr, 0.0);
        add(&mut s.stable, 100, 0, MS);
        add(&mut s.canary, 100, 0, 100 * MS);
        let look = j.look(&s);
        if starts {
            // Every canary call of the window is above stable's p99, no stable call is.
            let expected = wald(0.0, 0.5, 2.0, 100, 0, &cfg);
            assert!(
                close(look.latency_llr, expected),
                "{} vs {expected}",
                look.latency_llr
            );
            assert_eq!(look.verdict, Verdict::Fail);
            assert_eq!(look.reason, "canary latency above stable's");
        } else {
            assert_eq!(
                look.latency_llr, 0.0,
                "{before} stable calls before the window"
            );
        }
    }
}

#[test]
fn a_window_without_latencies_on_one_arm_leaves_the_latency_evidence_alone() {
    let cfg = JudgeConfig {
        latency_ratio: 1.5,
        ..JudgeConfig::default()
    };
    let mut j = judge(cfg.clone());
    let mut s = CanarySnapshot::default();
    add(&mut s.stable, 2_000, 0, MS);
    add(&mut s.canary, 10, 0, MS);
    j.look(&s);
    // One canary call in ten above stable's p99, one stable call in a hundred: some evidence.
    add(&mut s.stable, 100, 0, MS);
    add(&mut s.stable, 1, 0, 100 * MS);
    add(&mut s.canary, 9, 0, MS);
    add(&mut s.canary, 1, 0, 100 * MS);
    let evidence = j.look(&s).latency_llr;
    let expected = wald(0.0, 10.0 / 111.0, 1.5, 1, 1, &cfg);
    assert!(close(evidence, expected), "{evidence} vs {expected}");
    assert_ne!(
        evidence,
        (cfg.beta / (1.0 - cfg.alpha)).ln(),
        "not at the floor"
    );
    // A window whose canary calls carry no latency (counted by hand, as here): nothing to
    // compare, the evidence stays.
    add(&mut s.stable, 100, 0, MS);
    s.canary.successes += 50;
    assert_eq!(
        j.look(&s).latency_llr,
        evidence,
        "no canary latency in the window"
    );
    // The same with stable's calls.
    s.stable.successes += 50;
    add(&mut s.canary, 100, 0, MS);
    assert_eq!(
        j.look(&s).latency_llr,
        evidence,
        "no stable latency in the window"
    );
}

#[test]
fn an_error_rate_exactly_at_max_error_rate_does_not_fail() {
    let cfg = JudgeConfig {
        min_samples: 100,
        max_error_rate: Some(0.5),
        ..JudgeConfig::default()
    };
    let mut j = judge(cfg);
    let mut s = CanarySnapshot::default();
    add(&mut s.canary, 50, 50, MS);
    assert_ne!(j.look(&s).verdict, Verdict::Fail);
    add(&mut s.canary, 0, 1, MS);
    let look = j.look(&s);
    assert_eq!(look.verdict, Verdict::Fail);
    assert_eq!(look.reason, "canary error rate above max_error_rate");
}

#[test]
fn a_p99_exactly_at_max_p99_does_not_fail() {
    let upper = Duration::from_micros(bucket_upper_micros(latency_bucket(MS)));
    let cfg = JudgeConfig {
        min_samples: 10,
        max_p99: Some(upper),
        ..JudgeConfig::default()
    };
    let mut j = judge(cfg);
    let mut s = CanarySnapshot::default();
    add(&mut s.stable, 20, 0, MS);
    add(&mut s.canary, 20, 0, MS);
    let mut h = Histogram::new();
    h.record(MS);
    assert_eq!(h.quantile_upper(0.99), Some(upper));
    assert_eq!(j.look(&s).verdict, Verdict::Pass);
}

#[test]
fn the_guards_wait_for_min_samples_canary_calls() {
    let cfg = JudgeConfig {
        min_samples: 100,
        max_error_rate: Some(0.5),
        ..JudgeConfig::default()
    };
    let mut j = judge(cfg);
    let mut s = CanarySnapshot::default();
    add(&mut s.canary, 0, 10, MS);
    let look = j.look(&s);
    assert_eq!(
        (look.verdict, look.reason),
        (Verdict::Inconclusive, "not enough samples")
    );
}
