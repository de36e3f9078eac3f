//! Behaviour of the judge that the other tests left unpinned, found by mutation testing
//! (`cargo xtask mutants --scope canary`, see `docs/mutants.md`). Pure: the judge is fed
//! hand-made cumulative snapshots, no router, no runtime.

use degrade_canary::stats::{ARM_LAYOUT, CanarySnapshot};
use degrade_canary::{Judge, JudgeConfig, Judgement, Verdict};
use std::time::Duration;

fn judge(cfg: JudgeConfig) -> Judge {
    Judge::new(cfg).unwrap()
}

fn min_samples(min: u64) -> JudgeConfig {
    JudgeConfig {
        min_samples: min,
        ..JudgeConfig::default()
    }
}

/// One analysis window of ungrouped calls (each call its own unit): calls and failures of
/// each arm, at the router weight `weight`.
#[derive(Debug, Clone, Copy)]
struct Win {
    weight: Option<u32>,
    stable: (u64, u64),
    canary: (u64, u64),
}

impl Win {
    fn new(weight: Option<u32>, stable: (u64, u64), canary: (u64, u64)) -> Self {
        Self {
            weight,
            stable,
            canary,
        }
    }

    /// The difference of the failure rates, canary minus stable.
    fn effect(&self) -> f64 {
        self.canary.1 as f64 / self.canary.0 as f64 - self.stable.1 as f64 / self.stable.0 as f64
    }
}

/// Adds `w`'s calls to the cumulative snapshot `s`.
fn add(s: &mut CanarySnapshot, w: &Win) {
    s.weight_bp = w.weight;
    for (arm, (calls, failures)) in [(&mut s.stable, w.stable), (&mut s.canary, w.canary)] {
        arm.successes += calls - failures;
        arm.failures += failures;
    }
}

/// Feeds the windows to a fresh judge, one look each; the last look's judgement.
fn run(cfg: JudgeConfig, windows: &[Win]) -> Judgement {
    let mut j = judge(cfg);
    let mut s = CanarySnapshot::default();
    let mut last = None;
    for w in windows {
        add(&mut s, w);
        last = Some(j.look(&s));
    }
    last.unwrap()
}

/// A window's Cochran–Mantel–Haenszel weight as the judge documents it:
/// `n_c·n_s/(n_c + n_s) / (p(1 − p))`, `p` the window's pooled failure rate shrunk towards the
/// rate so far (`before`) by two expected failures, `(f + 2)/(n + 2/before)` (unshrunk when
/// nothing failed before); a spread of 0 divides by 1.
fn cmh_weight(w: &Win, before: Option<f64>) -> f64 {
    let (ns, nc) = (w.stable.0 as f64, w.canary.0 as f64);
    let (n, f) = (ns + nc, (w.stable.1 + w.canary.1) as f64);
    let p = match before {
        Some(b) if b > 0.0 => (f + 2.0) / (n + 2.0 / b),
        _ => f / n,
    };
    let spread = p * (1.0 - p);
    let h = ns * nc / (ns + nc);
    if spread > 0.0 { h / spread } else { h }
}

/// `Σ wₜ·θₜ` over the windows: the error test's estimate (times its weight) when they all
/// fall in one stratum. The rate "so far" is pooled over every earlier window.
fn weighted_effect(windows: &[Win]) -> f64 {
    let (mut failed, mut calls) = (0.0, 0.0);
    let mut sum = 0.0;
    for w in windows {
        let before = (calls > 0.0).then(|| failed / calls);
        sum += cmh_weight(w, before) * w.effect();
        failed += (w.stable.1 + w.canary.1) as f64;
        calls += (w.stable.0 + w.canary.0) as f64;
    }
    sum
}

/// A regression window and a later, smaller improvement window that cancel each other
/// exactly in one stratum *by their CMH weights* (the regression's canary failures chosen
/// so), after the `lead` windows (without failures), at the weights given. Returns the
/// windows and the weighted effect of the improvement alone (the scale of a mismatch).
fn balanced(
    lead: &[Win],
    regression_at: Option<u32>,
    improvement_at: Option<u32>,
) -> (Vec<Win>, f64) {
    // 4 failures in 1,000 stable calls, none on the canary: its weight depends on the rate so
    // far (about 5e-4), which its own 4 failures would put at 2e-3.
    let improvement = Win::new(improvement_at, (1_000, 4), (1_000, 0));
    let build = |fc: u64| {
        let mut ws = lead.to_vec();
        ws.push(Win::new(regression_at, (10_000, 4_500), (10_000, fc)));
        ws.push(improvement);
        ws
    };
    let best = (4_500..10_000)
        .min_by(|&a, &b| {
            weighted_effect(&build(a))
                .abs()
                .total_cmp(&weighted_effect(&build(b)).abs())
        })
        .unwrap();
    let windows = build(best);
    let scale = {
        let n = windows.len();
        weighted_effect(&windows) - weighted_effect(&windows[..n - 1])
    };
    let residual = weighted_effect(&windows);
    assert!(
        residual.abs() < 1e-3 * scale.abs(),
        "no balance: {residual} against {scale}"
    );
    (windows, scale)
}

/// Ten million calls on each arm, none failed: the rate so far is then small enough that the
/// shrinkage of a window with few failures matters.
fn quiet(weight: Option<u32>) -> Win {
    Win::new(weight, (10_000_000, 0), (10_000_000, 0))
}

/// error_z for the balanced windows, and for the regression 100 canary failures (of about
/// 5,500) weaker and stronger: the control that the balance is what keeps the score at zero
/// (one failure moves it by about 0.002).
fn balanced_scores(windows: &[Win]) -> (f64, f64, f64) {
    let z = |ws: &[Win]| run(min_samples(100), ws).error_z;
    let k = (0..windows.len())
        .max_by_key(|&i| windows[i].canary.1)
        .unwrap();
    let shifted = |d: i64| {
        let mut ws = windows.to_vec();
        ws[k].canary.1 = ws[k].canary.1.checked_add_signed(d).unwrap();
        z(&ws)
    };
    (z(windows), shifted(-100), shifted(100))
}

fn assert_balanced(windows: &[Win]) {
    let (z, weaker, stronger) = balanced_scores(windows);
    assert!(z.abs() < 0.01, "balanced windows scored {z}");
    assert!(
        weaker < -0.1 && stronger > 0.1,
        "control: {weaker}, {stronger}"
    );
}

#[test]
fn windows_of_one_weight_are_combined_by_their_shrunk_cmh_weights() {
    // The regression's window comes after a quiet one (rate so far 0: its weight unshrunk);
    // the improvement's is shrunk towards the rate so far. The judge's score is zero exactly
    // when it weighs the windows so.
    let (windows, _) = balanced(&[quiet(None)], None, None);
    assert_balanced(&windows);
}

#[test]
fn a_window_at_a_weight_seen_before_joins_that_weights_stratum() {
    // The improvement comes back to weight 500 after a window at 1000: it must be combined
    // with the regression at 500 in one stratum (by CMH weights), not on its own.
    let mut lead = vec![quiet(Some(500))];
    lead.push(Win::new(Some(1_000), (1_000, 0), (1_000, 0)));
    let (mut windows, _) = balanced(&lead, Some(500), Some(500));
    // Move the window at 1000 between the regression and the improvement.
    let other = windows.remove(1);
    windows.insert(2, other);
    let residual = weighted_effect(&windows);
    assert!(residual.abs() < 1.0, "{residual}");
    assert_balanced(&windows);
}

#[test]
fn weights_beyond_the_thirty_second_are_merged_into_the_last_stratum() {
    // Windows at 31 weights, the regression at the 32nd, the improvement at a 33rd: merged
    // into the 32nd's stratum, so they cancel as if at one weight.
    let lead: Vec<Win> = (1..=31)
        .map(|w| Win::new(Some(w), (10_000_000 / 31, 0), (10_000_000 / 31, 0)))
        .collect();
    let (windows, _) = balanced(&lead, Some(32), Some(33));
    assert_balanced(&windows);
    // And the judgement is the one of the same windows with the improvement at the 32nd.
    let mut same = windows.clone();
    same.last_mut().unwrap().weight = Some(32);
    assert_eq!(
        run(min_samples(100), &windows),
        run(min_samples(100), &same)
    );
}

#[test]
fn a_window_where_one_arm_saw_nothing_is_carried_into_the_next() {
    for stable_first in [true, false] {
        // First look: one arm's calls only, 10 % failed. Second look: 1,000 calls on each arm,
        // the same arm without failures, the other with 5 %. Carried over, the first arm has
        // 100 of 2,000 failed: both arms at 5 %, no difference at all.
        let (alone, then) = ((1_000, 100), (1_000, 0));
        let other = (1_000, 50);
        let windows = if stable_first {
            [Win::new(None, alone, (0, 0)), Win::new(None, then, other)]
        } else {
            [Win::new(None, (0, 0), alone), Win::new(None, other, then)]
        };
        let j = run(min_samples(100), &windows);
        assert_eq!(j.error_z, 0.0, "stable first: {stable_first}: {j:?}");
        assert_eq!(j.verdict, Verdict::Pass);
        let n = if stable_first {
            (2_000, 1_000)
        } else {
            (1_000, 2_000)
        };
        assert_eq!(j.samples, n);
    }
}

#[test]
fn an_error_ratio_barely_above_one_leaves_the_error_test_all_but_deaf() {
    // The mixture over effects is scaled by `(error_ratio − 1) ×` the pooled rate: tuned to an
    // effect of almost nothing, even a 1 % → 20 % regression moves ln Λ by almost nothing
    // (the score itself does not depend on the tuning).
    let window = [Win::new(None, (100_000, 1_000), (10_000, 2_000))];
    let deaf = run(
        JudgeConfig {
            error_ratio: 1.0 + 1e-9,
            ..min_samples(100)
        },
        &window,
    );
    assert!(deaf.error_llr.abs() < 1e-3, "{deaf:?}");
    assert!(deaf.error_z > 10.0, "{deaf:?}");
    assert_eq!(deaf.verdict, Verdict::Pass);
    let tuned = run(min_samples(100), &window);
    assert_eq!(tuned.error_z, deaf.error_z);
    assert!(tuned.error_llr > tuned.upper_bound, "{tuned:?}");
    assert_eq!(tuned.verdict, Verdict::Fail);
}

#[test]
fn error_rates_count_cancelled_calls_as_failures_unless_told_not_to() {
    let mut s = CanarySnapshot::default();
    s.stable.successes = 900;
    s.stable.failures = 100;
    s.canary.successes = 80;
    s.canary.failures = 10;
    s.canary.cancelled = 10;
    let j = judge(min_samples(1_000_000)).look(&s);
    assert_eq!(j.samples, (1_000, 100));
    assert_eq!(j.error_rates, (Some(0.1), Some(0.2)));
    let j = judge(JudgeConfig {
        cancelled_is_failure: false,
        ..min_samples(1_000_000)
    })
    .look(&s);
    assert_eq!(j.samples, (1_000, 90));
    assert_eq!(j.error_rates, (Some(0.1), Some(10.0 / 90.0)));
}

#[test]
fn an_arm_without_calls_has_no_error_rate() {
    let j = judge(JudgeConfig::default()).look(&CanarySnapshot::default());
    assert_eq!(j.error_rates, (None, None));
    let mut s = CanarySnapshot::default();
    s.stable.successes = 10;
    let j = judge(JudgeConfig::default()).look(&s);
    assert_eq!(j.error_rates, (Some(0.0), None));
}

#[test]
fn the_absolute_guards_wait_for_min_samples_canary_calls() {
    // Both arms at 10 % errors, above the guard of 5 %: 50 canary calls are not enough to
    // judge, so not enough to fail by the guard either.
    let cfg = JudgeConfig {
        max_error_rate: Some(0.05),
        ..min_samples(100)
    };
    let mut j = judge(cfg);
    let mut s = CanarySnapshot::default();
    s.stable.successes = 9_000;
    s.stable.failures = 1_000;
    s.canary.successes = 45;
    s.canary.failures = 5;
    let first = j.look(&s);
    assert_eq!(first.verdict, Verdict::Inconclusive, "{first:?}");
    assert_eq!(first.reason, "not enough samples");
    s.canary.successes += 45;
    s.canary.failures += 5;
    let second = j.look(&s);
    assert_eq!(second.verdict, Verdict::Fail);
    assert_eq!(second.reason, "canary error rate above max_error_rate");
}

#[test]
fn a_guard_does_not_overwrite_the_reason_of_an_earlier_failure() {
    let mut j = judge(JudgeConfig {
        max_error_rate: Some(0.5),
        ..min_samples(100)
    });
    let mut s = CanarySnapshot::default();
    s.stable.successes = 99_000;
    s.stable.failures = 1_000;
    s.canary.successes = 800;
    s.canary.failures = 200;
    assert_eq!(j.look(&s).reason, "canary error rate above stable's");
    // Later the canary breaks the guard too: the failure keeps its first reason.
    s.canary.failures += 10_000;
    let later = j.look(&s);
    assert_eq!(later.verdict, Verdict::Fail);
    assert_eq!(later.reason, "canary error rate above stable's");
}

#[test]
fn an_error_rate_exactly_at_max_error_rate_passes() {
    let cfg = JudgeConfig {
        max_error_rate: Some(0.1),
        ..min_samples(100)
    };
    // Both arms at exactly 10 %: no relative regression, and the guard is not exceeded.
    let window = [Win::new(None, (10_000, 1_000), (1_000, 100))];
    let at = run(cfg.clone(), &window);
    assert_eq!(at.error_rates.1, Some(0.1));
    assert_eq!(at.verdict, Verdict::Pass, "{at:?}");
    let above = run(cfg, &[Win::new(None, (10_000, 1_000), (1_000, 101))]);
    assert_eq!(above.reason, "canary error rate above max_error_rate");
}

#[test]
fn a_p99_exactly_at_max_p99_passes() {
    let mut s = CanarySnapshot::default();
    let bucket = ARM_LAYOUT.bucket(Duration::from_millis(200));
    s.stable.successes = 1_000;
    s.stable.latency.add(bucket, 1_000);
    s.canary.successes = 200;
    s.canary.latency.add(bucket, 200);
    let p99 = s.canary.latency.quantile_upper(0.99).unwrap();
    let with_max = |max| {
        judge(JudgeConfig {
            max_p99: Some(max),
            ..min_samples(100)
        })
        .look(&s)
    };
    let at = with_max(p99);
    assert_eq!(at.verdict, Verdict::Pass, "{at:?}");
    let below = with_max(p99 - Duration::from_nanos(1));
    assert_eq!(below.reason, "canary p99 above max_p99");
}

#[test]
fn judge_config_refuses_the_upper_end_of_each_open_interval() {
    let refused = |cfg: JudgeConfig| cfg.validate().unwrap_err().field().to_owned();
    let d = JudgeConfig::default;
    assert_eq!(refused(JudgeConfig { alpha: 0.5, ..d() }), "alpha");
    assert_eq!(
        refused(JudgeConfig {
            error_ratio: 1e6,
            ..d()
        }),
        "error_ratio"
    );
    assert_eq!(
        refused(JudgeConfig {
            latency_ratio: 1e6,
            ..d()
        }),
        "latency_ratio"
    );
    let inside = JudgeConfig {
        alpha: 0.499,
        error_ratio: 999_999.0,
        latency_ratio: 999_999.0,
        ..d()
    };
    assert!(inside.validate().is_ok());
}

#[test]
fn every_verdict_displays_as_its_name() {
    assert_eq!(Verdict::Pass.to_string(), "pass");
    assert_eq!(Verdict::Fail.to_string(), "fail");
    assert_eq!(Verdict::Inconclusive.to_string(), "inconclusive");
}

#[test]
fn the_judge_reports_the_configuration_it_was_built_with() {
    let cfg = JudgeConfig {
        min_samples: 123,
        alpha: 0.01,
        max_error_rate: Some(0.2),
        ..JudgeConfig::default()
    };
    assert_eq!(judge(cfg.clone()).config(), &cfg);
}

/// The two-proportion normal scores of one window of ungrouped calls: pooled (the variance
/// under no difference) and unpooled (each arm's own variance), canary minus stable.
fn two_proportion_z(w: &Win) -> (f64, f64) {
    let (ns, nc) = (w.stable.0 as f64, w.canary.0 as f64);
    let (ps, pc) = (w.stable.1 as f64 / ns, w.canary.1 as f64 / nc);
    let p = (w.stable.1 + w.canary.1) as f64 / (ns + nc);
    let pooled = (p * (1.0 - p) * (1.0 / ns + 1.0 / nc)).sqrt();
    let unpooled = (ps * (1.0 - ps) / ns + pc * (1.0 - pc) / nc).sqrt();
    (w.effect() / pooled, w.effect() / unpooled)
}

#[test]
fn one_window_of_ungrouped_calls_scores_the_pooled_two_proportion_z_when_it_is_the_smaller() {
    // Equal arms: the pooled variance exceeds the unpooled by (p_c − p_s)²/2 per call, so the
    // floor (`null_var`) speaks, exactly: no degrees-of-freedom correction applies to it.
    let w = Win::new(None, (20_000, 200), (20_000, 290));
    let (pooled, unpooled) = two_proportion_z(&w);
    assert!(pooled < unpooled && pooled > 3.0, "{pooled} {unpooled}");
    let z = run(min_samples(100), &[w]).error_z;
    assert!((z - pooled).abs() < 1e-6 * pooled, "z {z}, pooled {pooled}");
    // The same counts the other way round score the same magnitude, negative.
    let back = Win::new(None, (20_000, 290), (20_000, 200));
    let z = run(min_samples(100), &[back]).error_z;
    assert!((z + pooled).abs() < 1e-6 * pooled, "z {z}, pooled {pooled}");
}

#[test]
fn one_window_of_ungrouped_calls_scores_the_unpooled_two_proportion_z_when_it_is_the_smaller() {
    // A small canary arm at a higher rate: its own variance exceeds the pooled one (which the
    // stable arm's lower rate dominates), so the cluster-robust score (`single_sq`, each call
    // its own unit: about 12 000 units, a correction of a few parts in 10 000) speaks.
    let w = Win::new(None, (90_000, 900), (10_000, 160));
    let (pooled, unpooled) = two_proportion_z(&w);
    assert!(unpooled < pooled && unpooled > 3.0, "{pooled} {unpooled}");
    let z = run(min_samples(100), &[w]).error_z;
    assert!(
        z < unpooled && (z - unpooled).abs() < 1e-3 * unpooled,
        "z {z}, unpooled {unpooled}, pooled {pooled}"
    );
}

#[test]
fn a_small_canary_arm_scores_below_its_t_by_the_degrees_of_freedom_of_its_calls() {
    // 30 canary calls against 3 000 stable: the design gives about 30 independent units, so
    // the unpooled t (2.60) is read on about 29 degrees of freedom and its normal score is
    // several per cent smaller (about 2.47). With many units the two would agree.
    let w = Win::new(None, (3_000, 30), (30, 6));
    let (pooled, unpooled) = two_proportion_z(&w);
    assert!(unpooled < pooled, "{pooled} {unpooled}");
    let z = run(min_samples(10), &[w]).error_z;
    assert!(
        z > 0.9 * unpooled && z < 0.97 * unpooled,
        "z {z}, unpooled t {unpooled}"
    );
}

/// One window of ungrouped, fully timed successes: `(latency in ms, calls)` on each arm.
fn latency_snapshot(stable: &[(u64, u64)], canary: &[(u64, u64)]) -> CanarySnapshot {
    let mut s = CanarySnapshot::default();
    for (arm, calls) in [(&mut s.stable, stable), (&mut s.canary, canary)] {
        for &(ms, n) in calls {
            arm.successes += n;
            arm.latency
                .add(ARM_LAYOUT.bucket(Duration::from_millis(ms)), n);
        }
    }
    s
}

/// The rank test's scores of one window, from its latencies (at distinct powers of two, so
/// distinct buckets of every layout): the AUC `P(canary slower) + ½P(tie)` minus ½ over its
/// standard error under no difference (the pooled mid-ranks' variance), and over its
/// standard error from each call's own influence (each call its own unit).
fn rank_z(stable: &[(u64, u64)], canary: &[(u64, u64)]) -> (f64, f64) {
    let mid_cdf = |arm: &[(u64, u64)], at: u64| {
        let total: u64 = arm.iter().map(|c| c.1).sum();
        let below: u64 = arm.iter().filter(|c| c.0 < at).map(|c| c.1).sum();
        let tied: u64 = arm.iter().filter(|c| c.0 == at).map(|c| c.1).sum();
        (below as f64 + tied as f64 / 2.0) / total as f64
    };
    let count = |arm: &[(u64, u64)]| arm.iter().map(|c| c.1).sum::<u64>() as f64;
    let (ls, lc) = (count(stable), count(canary));
    let auc = canary
        .iter()
        .map(|&(ms, n)| n as f64 * mid_cdf(stable, ms))
        .sum::<f64>()
        / lc;
    let pooled: Vec<(u64, u64)> = {
        let mut all: Vec<u64> = stable.iter().chain(canary).map(|c| c.0).collect();
        all.sort_unstable();
        all.dedup();
        all.iter()
            .map(|&ms| {
                let n =
                    |arm: &[(u64, u64)]| arm.iter().filter(|c| c.0 == ms).map(|c| c.1).sum::<u64>();
                (ms, n(stable) + n(canary))
            })
            .collect()
    };
    let v = pooled
        .iter()
        .map(|&(ms, n)| n as f64 * (mid_cdf(&pooled, ms) - 0.5).powi(2))
        .sum::<f64>()
        / (ls + lc);
    let null_se = (v * (1.0 / lc + 1.0 / ls)).sqrt();
    let own = canary
        .iter()
        .map(|&(ms, n)| n as f64 * (mid_cdf(stable, ms) - auc).powi(2))
        .sum::<f64>()
        / (lc * lc)
        + stable
            .iter()
            .map(|&(ms, n)| n as f64 * (1.0 - mid_cdf(canary, ms) - auc).powi(2))
            .sum::<f64>()
            / (ls * ls);
    ((auc - 0.5) / null_se, (auc - 0.5) / own.sqrt())
}

#[test]
fn one_window_of_ungrouped_latencies_scores_the_smaller_of_the_rank_tests_two_z() {
    // Equal arms, the canary shifted up: the pooled mid-ranks' variance is the larger, and the
    // floor speaks exactly (no degrees-of-freedom correction applies to it).
    let (stable, canary) = (
        [(1, 500), (2, 300), (4, 200)],
        [(1, 400), (2, 300), (4, 300)],
    );
    let (pooled, own) = rank_z(&stable, &canary);
    assert!(pooled < own && pooled > 3.0, "{pooled} {own}");
    let z = judge(min_samples(10))
        .look(&latency_snapshot(&stable, &canary))
        .latency_z;
    assert!((z - pooled).abs() < 1e-6 * pooled, "z {z}, pooled {pooled}");
    // A small canary arm spread wider than the stable one: the calls' own influences speak,
    // read on the design's ~430 units (t²/4df: about 2 % smaller).
    let (stable, canary) = (
        [(1, 2_000), (2, 6_000), (4, 2_000)],
        [(1, 120), (2, 80), (4, 60), (8, 140)],
    );
    let (pooled, own) = rank_z(&stable, &canary);
    assert!(own < pooled && own > 3.0, "{pooled} {own}");
    let z = judge(min_samples(10))
        .look(&latency_snapshot(&stable, &canary))
        .latency_z;
    assert!(
        z < own && z > 0.97 * own,
        "z {z}, own {own}, pooled {pooled}"
    );
}

#[test]
fn a_small_canary_arm_reads_its_rank_score_on_the_degrees_of_freedom_of_its_calls() {
    // 24 canary calls, spread wider than 3 000 stable ones: about 24 units, so the own-influence
    // t (4.43) is read on about 23 degrees of freedom: a normal score of about 3.68.
    let (stable, canary) = (
        [(1, 600), (2, 1_800), (4, 600)],
        [(1, 3), (2, 4), (4, 5), (8, 12)],
    );
    let (pooled, own) = rank_z(&stable, &canary);
    assert!(own < pooled && own > 2.0, "{pooled} {own}");
    let z = judge(min_samples(10))
        .look(&latency_snapshot(&stable, &canary))
        .latency_z;
    assert!(z > 0.78 * own && z < 0.87 * own, "z {z}, own t {own}");
}

#[test]
fn latency_windows_of_one_weight_are_combined_by_their_harmonic_sizes() {
    // A slower window (500 canary calls against 2 000 stable: harmonic size 400, AUC − ½ =
    // 0.1) and a faster one (4 000 against 8 000: harmonic size 2 666.7, AUC − ½ = −k/8 000)
    // cancel exactly at k = 120 when the judge weighs each window by
    // `canary · stable / (canary + stable)` calls; one call more or less either way is the
    // control that the balance is what keeps the score at zero.
    let score = |k: u64| {
        let mut j = judge(min_samples(10));
        let first = latency_snapshot(&[(2, 2_000)], &[(2, 400), (4, 100)]);
        j.look(&first);
        let second = latency_snapshot(
            &[(2, 2_000 + 8_000)],
            &[(2, 400 + 4_000 - k), (4, 100), (1, k)],
        );
        j.look(&second).latency_z
    };
    let (z, weaker, stronger) = (score(120), score(119), score(121));
    assert!(z.abs() < 1e-9, "balanced windows scored {z}");
    assert!(
        weaker > 1e-3 && stronger < -1e-3,
        "control: {weaker}, {stronger}"
    );
}

#[test]
fn a_window_sampled_one_in_four_weighs_four_times_its_timed_calls() {
    // As above, but the faster window's calls were timed 1 in 4 (its successes four times its
    // latencies, on both arms): it weighs 4 × 2 000 · 1 000 / 3 000 timed calls, so k = 30
    // faster canary calls (AUC − ½ = −k/2 000) balance the slower window's 400 × 0.1.
    let score = |k: u64| {
        let mut j = judge(min_samples(10));
        let first = latency_snapshot(&[(2, 2_000)], &[(2, 400), (4, 100)]);
        j.look(&first);
        let mut second = latency_snapshot(
            &[(2, 2_000 + 2_000)],
            &[(2, 400 + 1_000 - k), (4, 100), (1, k)],
        );
        second.stable.successes = first.stable.successes + 4 * 2_000;
        second.canary.successes = first.canary.successes + 4 * 1_000;
        j.look(&second).latency_z
    };
    let (z, weaker, stronger) = (score(30), score(29), score(31));
    assert!(z.abs() < 1e-9, "balanced windows scored {z}");
    assert!(
        weaker > 1e-3 && stronger < -1e-3,
        "control: {weaker}, {stronger}"
    );
}

#[test]
fn an_arm_without_timed_calls_gives_the_rank_test_no_evidence() {
    // The stable arm's calls were not timed at all: there is nothing to rank the canary's
    // latencies against, so the window adds nothing (no score, no NaN).
    let mut s = latency_snapshot(&[], &[(1, 500), (8, 500)]);
    s.stable.successes = 1_000;
    let judgement = judge(min_samples(10)).look(&s);
    assert_eq!(
        (judgement.latency_z, judgement.latency_llr),
        (0.0, 0.0),
        "{judgement:?}"
    );
    let mut s = latency_snapshot(&[(1, 500), (8, 500)], &[]);
    s.canary.successes = 1_000;
    let mut j = judge(min_samples(10));
    let judgement = j.look(&s);
    assert_eq!(
        (judgement.latency_z, judgement.latency_llr),
        (0.0, 0.0),
        "{judgement:?}"
    );
    // Nor does it spoil the stratum: a later timed window in it, the canary clearly slower,
    // is scored.
    let mut later = latency_snapshot(&[(1, 500 + 500), (8, 500 + 500)], &[(1, 100), (8, 900)]);
    later.canary.successes += 1_000;
    let judgement = j.look(&later);
    assert!(judgement.latency_z > 3.0, "{judgement:?}");
}

/// `(calls, latency in ms)` of one arm of one key group.
type Calls = (u64, u64);

/// One window of keyed calls: for each of `groups` (count, canary calls, stable calls),
/// `count` key groups each with those calls, every call timed and successful.
fn keyed_latency_snapshot(groups: &[(usize, Calls, Calls)]) -> CanarySnapshot {
    use degrade_canary::stats::{GROUP_LAYOUT, GROUPS, GroupSnapshot};
    let mut s = CanarySnapshot::default();
    s.stable.groups = vec![GroupSnapshot::default(); GROUPS];
    s.canary.groups = vec![GroupSnapshot::default(); GROUPS];
    let mut g = 0;
    for &(count, canary, stable) in groups {
        for _ in 0..count {
            for (arm, (n, ms)) in [(&mut s.canary, canary), (&mut s.stable, stable)] {
                let at = Duration::from_millis(ms);
                arm.successes += n;
                arm.latency.add(ARM_LAYOUT.bucket(at), n);
                arm.groups[g].calls += n;
                arm.groups[g].latency.add(GROUP_LAYOUT.bucket(at), n);
            }
            g += 1;
        }
    }
    assert!(g <= GROUPS);
    s
}

#[test]
fn a_key_groups_canary_and_stable_calls_are_one_unit_of_the_rank_test() {
    // The same calls on each arm (canary 700 slow, 300 fast; stable 500 slow, 500 fast: AUC
    // 0.6), grouped two ways. Aligned: each group's canary calls read slower than the arm and
    // its stable calls faster, or the reverse — both of a group's influences point the same
    // way and add up, so 60 groups vary a lot and the score is small. Crossed: a group's
    // slow canary calls come with slow stable calls (its influences cancel), so the groups
    // barely vary and the floor speaks. Whoever weighed a group's stable calls against its
    // canary calls would read the two the other way round.
    let cfg = || JudgeConfig {
        max_key_share: 1.0,
        ..min_samples(10)
    };
    let aligned = keyed_latency_snapshot(&[(50, (14, 4), (10, 1)), (10, (30, 1), (50, 4))]);
    let crossed = keyed_latency_snapshot(&[(50, (14, 4), (10, 4)), (10, (30, 1), (50, 1))]);
    let z_aligned = judge(cfg()).look(&aligned).latency_z;
    let z_crossed = judge(cfg()).look(&crossed).latency_z;
    assert!(
        z_aligned > 0.5 && z_aligned < 2.0 && z_crossed > 5.0,
        "aligned {z_aligned}, crossed {z_crossed}"
    );
    // Every group a copy of its arms in miniature (50 groups: canary 14 slow and 6 fast,
    // stable 10 and 10): every influence is zero and the floor speaks exactly — the pooled
    // rank z of the arms' calls, each keyed call counted once at full weight.
    let mut copies = keyed_latency_snapshot(&[(50, (14, 4), (10, 4))]);
    for (arm, n) in [(&mut copies.canary, 6), (&mut copies.stable, 10)] {
        let at = Duration::from_millis(1);
        for g in &mut arm.groups[..50] {
            g.calls += n;
            g.latency
                .add(degrade_canary::stats::GROUP_LAYOUT.bucket(at), n);
        }
        arm.successes += 50 * n;
        arm.latency.add(ARM_LAYOUT.bucket(at), 50 * n);
    }
    let (pooled, _) = rank_z(&[(4, 500), (1, 500)], &[(4, 700), (1, 300)]);
    let z = judge(cfg()).look(&copies).latency_z;
    assert!(
        (z - pooled).abs() < 1e-6 * pooled,
        "copies {z}, pooled {pooled}"
    );
}

#[test]
fn keyed_calls_are_counted_once_by_the_error_test() {
    // The same calls judged without key groups, and with 20 groups holding 4 of every 5 calls
    // at the arm's own rates (cancelled calls included, which count as failures): every
    // group's influence is zero, so the floor speaks in both, on the same totals — the
    // ungrouped rest must be the arm minus the groups (calls, failures and cancelled alike).
    use degrade_canary::stats::{GROUPS, GroupSnapshot};
    let mut flat = CanarySnapshot::default();
    // Canary: 20 × (100 calls, 3 failed, 1 cancelled) + (500 calls, 15 failed, 5 cancelled).
    flat.canary.successes = 20 * 97 + 485;
    flat.canary.failures = 20 * 3 + 15;
    flat.canary.cancelled = 20 + 5;
    // Stable: 20 × (100 calls, 1 failed) + (500 calls, 5 failed).
    flat.stable.successes = 20 * 99 + 495;
    flat.stable.failures = 20 + 5;
    let mut keyed = flat.clone();
    for (arm, failures, cancelled) in [(&mut keyed.canary, 3, 1), (&mut keyed.stable, 1, 0)] {
        arm.groups = vec![GroupSnapshot::default(); GROUPS];
        for g in &mut arm.groups[..20] {
            g.calls = 100;
            g.failures = failures;
            g.cancelled = cancelled;
        }
    }
    let cfg = |share| JudgeConfig {
        max_key_share: share,
        ..min_samples(10)
    };
    let z_flat = judge(cfg(1.0)).look(&flat).error_z;
    let z_keyed = judge(cfg(1.0)).look(&keyed).error_z;
    assert!(z_flat > 3.0, "{z_flat}");
    assert!(
        (z_keyed - z_flat).abs() < 1e-9 * z_flat,
        "keyed {z_keyed}, flat {z_flat}"
    );
}

#[test]
fn a_small_window_weighs_its_timed_calls_not_its_key_groups() {
    // A small slower window (20 calls an arm, 4 canary calls slower: harmonic size 10, AUC −
    // ½ = 0.1) and a larger faster one (400 an arm, k canary calls faster: 200 × −k/800)
    // cancel exactly at k = 4, every call timed: the sampling factor reads 1 in both (the
    // calls counted, not the groups that might hold them).
    let score = |k: u64| {
        let mut j = judge(min_samples(10));
        let first = latency_snapshot(&[(2, 20)], &[(2, 16), (4, 4)]);
        j.look(&first);
        let second = latency_snapshot(&[(2, 20 + 400)], &[(2, 16 + 400 - k), (4, 4), (1, k)]);
        j.look(&second).latency_z
    };
    let (z, weaker, stronger) = (score(4), score(3), score(5));
    assert!(z.abs() < 1e-9, "balanced windows scored {z}");
    assert!(
        weaker > 1e-3 && stronger < -1e-3,
        "control: {weaker}, {stronger}"
    );
}

#[test]
fn a_capped_groups_calls_count_by_their_cap_in_the_floor() {
    // One heavy key (300 calls) and 19 of 100 beside 500 ungrouped calls on each arm, every
    // group at its arm's rate (canary 3 %, stable 1 %): influences are zero and the floor
    // speaks. With fewer groups than 1 / 2 % the bound cannot hold, and the groups above the
    // mean (110) are cut to it: the heavy key's calls weigh c = 110/300 each. The floor is the
    // two-proportion z on the weighted calls `Σ c·n`, with their effective number `Σ c²·n`.
    use degrade_canary::stats::{GROUPS, GroupSnapshot};
    let mut s = CanarySnapshot::default();
    for (arm, per_hundred) in [(&mut s.canary, 3), (&mut s.stable, 1)] {
        arm.groups = vec![GroupSnapshot::default(); GROUPS];
        arm.groups[0].calls = 300;
        arm.groups[0].failures = 3 * per_hundred;
        for g in &mut arm.groups[1..20] {
            g.calls = 100;
            g.failures = per_hundred;
        }
        arm.failures = 3 * per_hundred + 19 * per_hundred + 5 * per_hundred;
        arm.successes = 2_700 - arm.failures;
    }
    let weighed = |rate: f64| {
        let c = 110.0 / 300.0;
        let d = c * 300.0 + 1_900.0 + 500.0;
        (d, rate * d, c * c * 300.0 + 2_400.0)
    };
    let (dc, fc, ec) = weighed(0.03);
    let (ds, fs, es) = weighed(0.01);
    let p = (fc + fs) / (dc + ds);
    let floor = (fc / dc - fs / ds) / (p * (1.0 - p) * (ec / (dc * dc) + es / (ds * ds))).sqrt();
    let z = judge(min_samples(10)).look(&s).error_z;
    assert!(
        (z - floor).abs() < 1e-9 * floor,
        "z {z}, the floor's {floor}"
    );
}

#[test]
fn a_capped_groups_latencies_count_by_their_cap_in_the_rank_floor() {
    // The rank test's twin of the error test above: one heavy key (300 calls) and 19 of 100
    // on each arm, every call keyed and every group a copy of its arm in miniature (canary
    // 70 % at 4 ms, 30 % at 1 ms; stable half and half): every influence is zero and the floor
    // speaks. (Ungrouped calls would each be a unit of their own and bring the degrees of
    // freedom in.) The heavy key is cut to the mean of the groups (110 calls: fewer groups
    // than 1 / 2 %), so each arm weighs D = 110 + 1 900 calls with an effective number of
    // e = (110/300)²·300 + 1 900, and the floor is the unweighted pooled rank z of N = 2 200
    // calls an arm scaled by D / √(N·e).
    use degrade_canary::stats::{GROUP_LAYOUT, GROUPS, GroupSnapshot};
    let mut s = CanarySnapshot::default();
    for (arm, slow_per_ten) in [(&mut s.canary, 7), (&mut s.stable, 5)] {
        arm.groups = vec![GroupSnapshot::default(); GROUPS];
        for (g, calls) in arm
            .groups
            .iter_mut()
            .zip([300].into_iter().chain([100; 19]))
        {
            let split = [
                (4, calls * slow_per_ten / 10),
                (1, calls * (10 - slow_per_ten) / 10),
            ];
            for (ms, n) in split {
                let at = Duration::from_millis(ms);
                g.calls += n;
                g.latency.add(GROUP_LAYOUT.bucket(at), n);
                arm.successes += n;
                arm.latency.add(ARM_LAYOUT.bucket(at), n);
            }
        }
    }
    let (pooled, _) = rank_z(&[(4, 1_100), (1, 1_100)], &[(4, 1_540), (1, 660)]);
    let c = 110.0 / 300.0;
    let (d, e) = (c * 300.0 + 1_900.0, c * c * 300.0 + 1_900.0);
    let floor = pooled * d / (2_200.0 * e).sqrt();
    let z = judge(min_samples(10)).look(&s).latency_z;
    assert!(
        (z - floor).abs() < 1e-9 * floor,
        "z {z}, the floor's {floor}"
    );
}
