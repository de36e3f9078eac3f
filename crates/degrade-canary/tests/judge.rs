//! The judge on hand-made data: no data is inconclusive, regressions fail, the guards, and
//! repeated looks at an A/A stream stay within alpha. (Simulated traffic through the router:
//! `tests/sim.rs`; the full table: `cargo run -p degrade-canary --release --features sim
//! --example judge_sim -- --runs 1000`.)

use degrade_canary::stats::{ARM_LAYOUT, CanarySnapshot};
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
        .add(ARM_LAYOUT.bucket(Duration::from_millis(200)), 1_000);
    s.canary.successes = 200;
    s.canary
        .latency
        .add(ARM_LAYOUT.bucket(Duration::from_millis(200)), 200);
    assert_eq!(j.look(&s).reason, "canary p99 above max_p99");
}

/// A small seeded generator (splitmix64) for the streams below.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn bernoulli(&mut self, p: f64) -> bool {
        self.uniform() < p
    }
    fn normal(&mut self) -> f64 {
        let (u1, u2) = (1.0 - self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
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
                    .add(ARM_LAYOUT.bucket(Duration::from_secs_f64(ms / 1e3)), 1);
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
    // streams; the mixture SPRT stays within its alpha (0.005 per test).
    let rate = a_a_false_fail_rate(150, 60);
    assert!(rate <= 0.02, "false rollback rate {rate}");
}
