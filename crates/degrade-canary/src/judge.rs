//! The judge: is the canary worse than stable?
//!
//! # Why a sequential test
//!
//! A canary is analysed again and again while it bakes. Re-running a fixed-size test at every
//! look inflates its false-positive rate (20 looks at α = 0.05 roll back up to 64 % of good
//! releases), and judging against absolute thresholds ("any error fails", Flagger's single
//! failed check) rolls back good releases whenever stable itself has errors. The judge instead
//! runs Wald's sequential probability ratio test (SPRT), whose error bounds hold however often
//! one looks: the log-likelihood ratio is updated with each analysis window's counts and the
//! canary fails the moment it crosses `ln((1 − β) / α)`.
//!
//! # Comparing with stable, not with a number
//!
//! Both tests are *conditional* binomial tests, which need no knowledge of stable's own rate:
//! when both arms fail at the same rate, each failure in a window comes from the canary with
//! probability `π₀ = n_canary / (n_canary + n_stable)` (the canary's share of the window's
//! judged calls). Under the alternative "the canary fails `r` times as often" (`error_ratio`,
//! default 2) that probability is `π₁ = rπ₀ / (rπ₀ + 1 − π₀)`. Every failure moves the
//! log-likelihood ratio by `ln(π₁/π₀)` (canary) or `ln((1−π₁)/(1−π₀))` (stable). Because `π₀`
//! is recomputed per window, the test stays exact while the weight moves between steps.
//!
//! Latency uses the same machinery on *exceedances*: a call is "slow" when its latency lies
//! above stable's `latency_quantile` (p99 by default), estimated from stable's calls **before**
//! the window (so the threshold is independent of the window's data). Under "no regression"
//! both arms exceed it at the same rate (≈ 1 %); a canary with p99 +30 % exceeds it several
//! times as often, and the exceedance SPRT (ratio `latency_ratio`, default 2) detects it.
//!
//! The latency test starts once stable has enough calls to place the quantile (ten calls above
//! it: 1 000 for p99); until then only the error test and the guards speak.
//!
//! The log-likelihood ratios are floored at the lower Wald bound `ln(β / (1 − α))` (a CUSUM-like
//! reset), so a long good run cannot bank so much credit that a later regression goes unseen.
//!
//! # Verdicts
//!
//! * **Fail** as soon as either test crosses its upper bound (latched: a failed canary stays
//!   failed), or an absolute guard (`max_error_rate`, `max_p99`) is exceeded with at least
//!   `min_samples` canary calls.
//! * **Inconclusive** while either arm has fewer than `min_samples` judged calls since the
//!   judge started — "no data" is never a pass.
//! * **Pass** otherwise: enough samples and no evidence of a regression.
//!
//! With the defaults (α = 0.0025 per test, β = 0.05, ratios 2, `min_samples` 2 000) the
//! simulation harness (`examples/judge_sim.rs`, figures in the crate README) measures the false
//! rollback rate of an A/A rollout and the detection rate of a 0.5 % → 2 % error rate and of a
//! +30 % p99 within the minimum samples.

use crate::stats::CanarySnapshot;
use degrade_core::ConfigError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Settings of the [`Judge`].
///
/// ```
/// use degrade_canary::JudgeConfig;
/// let cfg: JudgeConfig = serde_json::from_str(r#"{"min_samples": 500, "max_p99": "250ms"}"#).unwrap();
/// assert_eq!(cfg.min_samples, 500);
/// assert!(cfg.validate().is_ok());
/// let zero: JudgeConfig = serde_json::from_str(r#"{"min_samples": 0}"#).unwrap();
/// assert_eq!(zero.validate().unwrap_err().field(), "min_samples");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JudgeConfig {
    /// Judged calls each arm needs (since the judge started) before a Pass. Default 2 000.
    pub min_samples: u64,
    /// False-rollback bound of each test (errors, latency). Default 0.0025.
    pub alpha: f64,
    /// Missed-regression bound at the alternative. Default 0.05.
    pub beta: f64,
    /// The regression the error test is tuned to: canary failure rate / stable's. Default 2.
    pub error_ratio: f64,
    /// Quantile of stable's latency that defines a slow call. Default 0.99.
    pub latency_quantile: f64,
    /// The regression the latency test is tuned to: canary share of slow calls / stable's.
    /// Default 2.
    pub latency_ratio: f64,
    /// Optional absolute guard: fail when the canary's error rate exceeds it.
    pub max_error_rate: Option<f64>,
    /// Optional absolute guard: fail when the canary's p99 exceeds it.
    #[serde(with = "humantime_serde")]
    pub max_p99: Option<Duration>,
}

impl Default for JudgeConfig {
    fn default() -> Self {
        Self {
            min_samples: 2_000,
            alpha: 0.0025,
            beta: 0.05,
            error_ratio: 2.0,
            latency_quantile: 0.99,
            latency_ratio: 2.0,
            max_error_rate: None,
            max_p99: None,
        }
    }
}

impl JudgeConfig {
    /// Checks every field; the error names the first bad one.
    ///
    /// ```
    /// # use degrade_canary::JudgeConfig;
    /// let mut cfg = JudgeConfig::default();
    /// cfg.error_ratio = 1.0;
    /// assert_eq!(cfg.validate().unwrap_err().field(), "error_ratio");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.min_samples == 0 {
            return Err(ConfigError::new("min_samples", "must be at least 1"));
        }
        let open = |field: &'static str, v: f64, lo: f64, hi: f64| {
            if v.is_finite() && v > lo && v < hi {
                Ok(())
            } else {
                Err(ConfigError::new(
                    field,
                    format!("must be strictly between {lo} and {hi}"),
                ))
            }
        };
        open("alpha", self.alpha, 0.0, 0.5)?;
        open("beta", self.beta, 0.0, 0.5)?;
        open("error_ratio", self.error_ratio, 1.0, 1e6)?;
        open("latency_quantile", self.latency_quantile, 0.5, 1.0)?;
        open("latency_ratio", self.latency_ratio, 1.0, 1e6)?;
        if let Some(max) = self.max_error_rate
            && !(max.is_finite() && (0.0..=1.0).contains(&max))
        {
            return Err(ConfigError::new("max_error_rate", "must be in [0, 1]"));
        }
        if self.max_p99 == Some(Duration::ZERO) {
            return Err(ConfigError::new("max_p99", "must be positive"));
        }
        Ok(())
    }
}

/// The judge's answer.
///
/// ```
/// use degrade_canary::Verdict;
/// assert_eq!(Verdict::Inconclusive.to_string(), "inconclusive");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Enough samples, no evidence that the canary is worse.
    Pass,
    /// The canary is worse than stable (or breaks an absolute guard).
    Fail,
    /// Not enough data yet.
    Inconclusive,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Inconclusive => "inconclusive",
        })
    }
}

/// A verdict with its reason and the evidence behind it.
///
/// ```
/// use degrade_canary::{Judge, JudgeConfig, Verdict, stats::CanarySnapshot};
/// let mut judge = Judge::new(JudgeConfig::default()).unwrap();
/// let j = judge.look(&CanarySnapshot::default());
/// assert_eq!(j.verdict, Verdict::Inconclusive);
/// assert_eq!(j.reason, "not enough samples");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Judgement {
    /// Pass, Fail or Inconclusive.
    pub verdict: Verdict,
    /// Why, in a few words.
    pub reason: &'static str,
    /// Judged calls of (stable, canary) since the judge started.
    pub samples: (u64, u64),
    /// Error rates of (stable, canary) since the judge started.
    pub error_rates: (Option<f64>, Option<f64>),
    /// Log-likelihood ratio of the error test (fails at `upper_bound`).
    pub error_llr: f64,
    /// Log-likelihood ratio of the latency test (fails at `upper_bound`).
    pub latency_llr: f64,
    /// The SPRT's rejection bound, `ln((1 − β) / α)`.
    pub upper_bound: f64,
}

/// The sequential judge. Feed it cumulative snapshots ([`crate::CanaryHandle::snapshot`]) at
/// each look; it keeps what it needs between looks.
///
/// ```
/// use degrade_canary::{Judge, JudgeConfig, Verdict, stats::{ArmSnapshot, CanarySnapshot}};
/// let mut judge = Judge::new(JudgeConfig { min_samples: 100, ..Default::default() }).unwrap();
/// let mut snap = CanarySnapshot::default();
/// judge.start(&snap);
/// snap.stable.successes = 9_900;
/// snap.stable.failures = 100;   // stable: 1 %
/// snap.canary.successes = 400;
/// snap.canary.failures = 100;   // canary: 20 %
/// assert_eq!(judge.look(&snap).verdict, Verdict::Fail);
/// ```
#[derive(Debug, Clone)]
pub struct Judge {
    cfg: JudgeConfig,
    upper: f64,
    lower: f64,
    base: CanarySnapshot,
    last: CanarySnapshot,
    error_llr: f64,
    latency_llr: f64,
    failed: Option<&'static str>,
}

impl Judge {
    /// A judge with `cfg`, started at an empty snapshot.
    ///
    /// ```
    /// # use degrade_canary::{Judge, JudgeConfig};
    /// let mut cfg = JudgeConfig::default();
    /// cfg.min_samples = 0;
    /// assert!(Judge::new(cfg).is_err());
    /// ```
    pub fn new(cfg: JudgeConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let upper = ((1.0 - cfg.beta) / cfg.alpha).ln();
        let lower = (cfg.beta / (1.0 - cfg.alpha)).ln();
        Ok(Self {
            cfg,
            upper,
            lower,
            base: CanarySnapshot::default(),
            last: CanarySnapshot::default(),
            error_llr: 0.0,
            latency_llr: 0.0,
            failed: None,
        })
    }

    /// The configuration.
    ///
    /// ```
    /// # use degrade_canary::{Judge, JudgeConfig};
    /// assert_eq!(Judge::new(JudgeConfig::default()).unwrap().config().min_samples, 2_000);
    /// ```
    pub fn config(&self) -> &JudgeConfig {
        &self.cfg
    }

    /// Forgets all evidence: the analysis starts over from `now` (a new rollout).
    ///
    /// ```
    /// # use degrade_canary::{Judge, JudgeConfig, stats::CanarySnapshot};
    /// let mut judge = Judge::new(JudgeConfig::default()).unwrap();
    /// judge.start(&CanarySnapshot::default());
    /// ```
    pub fn start(&mut self, now: &CanarySnapshot) {
        self.base = now.clone();
        self.last = now.clone();
        self.error_llr = 0.0;
        self.latency_llr = 0.0;
        self.failed = None;
    }

    /// One look at the cumulative snapshot `now`.
    ///
    /// ```
    /// # use degrade_canary::{Judge, JudgeConfig, Verdict, stats::CanarySnapshot};
    /// let mut judge = Judge::new(JudgeConfig { min_samples: 10, ..Default::default() }).unwrap();
    /// let mut snap = CanarySnapshot::default();
    /// snap.stable.successes = 1_000;
    /// snap.canary.successes = 20;
    /// assert_eq!(judge.look(&snap).verdict, Verdict::Pass);
    /// ```
    pub fn look(&mut self, now: &CanarySnapshot) -> Judgement {
        let delta = now.since(&self.last);
        let (ns, nc) = (delta.stable.samples(), delta.canary.samples());
        // A window where one arm saw nothing carries no comparison: keep accumulating it.
        if ns > 0 && nc > 0 {
            let pi0 = nc as f64 / (ns + nc) as f64;
            self.error_llr = self.step(
                self.error_llr,
                pi0,
                self.cfg.error_ratio,
                delta.canary.failures,
                delta.stable.failures,
            );
            let before = self.last.stable.latency.since(&self.base.stable.latency);
            // The threshold comes from stable's calls before this window, and only once there
            // are enough of them to place the quantile (ten calls above it).
            if before.count() as f64 * (1.0 - self.cfg.latency_quantile) >= 10.0
                && let Some(t) = before.quantile_bucket(self.cfg.latency_quantile)
            {
                let (ls, lc) = (delta.stable.latency.count(), delta.canary.latency.count());
                if ls > 0 && lc > 0 {
                    let pi0 = lc as f64 / (ls + lc) as f64;
                    self.latency_llr = self.step(
                        self.latency_llr,
                        pi0,
                        self.cfg.latency_ratio,
                        delta.canary.latency.count_above(t),
                        delta.stable.latency.count_above(t),
                    );
                }
            }
            self.last = now.clone();
        }
        if self.failed.is_none() {
            if self.error_llr >= self.upper {
                self.failed = Some("canary error rate above stable's");
            } else if self.latency_llr >= self.upper {
                self.failed = Some("canary latency above stable's");
            }
        }

        let total = now.since(&self.base);
        let samples = (total.stable.samples(), total.canary.samples());
        let enough = samples.0 >= self.cfg.min_samples && samples.1 >= self.cfg.min_samples;
        if self.failed.is_none() && samples.1 >= self.cfg.min_samples {
            if let Some(max) = self.cfg.max_error_rate
                && total.canary.error_rate().is_some_and(|r| r > max)
            {
                self.failed = Some("canary error rate above max_error_rate");
            } else if let Some(max) = self.cfg.max_p99
                && total
                    .canary
                    .latency
                    .quantile_upper(0.99)
                    .is_some_and(|p| p > max)
            {
                self.failed = Some("canary p99 above max_p99");
            }
        }
        let (verdict, reason) = match self.failed {
            Some(reason) => (Verdict::Fail, reason),
            None if !enough => (Verdict::Inconclusive, "not enough samples"),
            None => (Verdict::Pass, "no evidence of a regression"),
        };
        Judgement {
            verdict,
            reason,
            samples,
            error_rates: (total.stable.error_rate(), total.canary.error_rate()),
            error_llr: self.error_llr,
            latency_llr: self.latency_llr,
            upper_bound: self.upper,
        }
    }

    /// One SPRT update of a conditional binomial: `canary` of `canary + stable` events came
    /// from the canary, whose share of calls is `pi0`; the alternative multiplies the canary's
    /// event rate by `ratio`.
    fn step(&self, llr: f64, pi0: f64, ratio: f64, canary: u64, stable: u64) -> f64 {
        if canary + stable == 0 {
            return llr;
        }
        let pi1 = ratio * pi0 / (ratio * pi0 + 1.0 - pi0);
        let up = (pi1 / pi0).ln();
        let down = ((1.0 - pi1) / (1.0 - pi0)).ln();
        (llr + canary as f64 * up + stable as f64 * down).max(self.lower)
    }
}
