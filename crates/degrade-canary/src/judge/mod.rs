//! The judge: is the canary worse than stable?
//!
//! # What it must survive
//!
//! Real traffic is not a stream of independent coin flips. Sticky routing puts *whole users*
//! on one arm, and users differ: a few fail far more often, some are always slower, a few send
//! a large share of all requests. Outages and load cycles hit both arms at the same moment.
//! Latency has a heavy tail. And the canary is analysed again and again while it bakes. A test
//! that counts requests as independent (a binomial or Mann–Whitney test per request, Wald's
//! SPRT on the counts) mistakes one slow user who happens to be on the canary for a
//! regression: measured with those effects, such a judge rolled back 7.5 % of good releases.
//!
//! # Method
//!
//! * **The unit is what was randomised.** A keyed request's sticky bucket decides its arm, so
//!   the statistics keep keyed calls apart by group (`bucket % GROUPS`, 64 groups, see
//!   [`stats::GROUPS`](crate::stats::GROUPS)); everything a user does stays inside one group.
//!   The variance of each comparison is the *cluster-robust* (sandwich) variance over groups,
//!   estimated from the data: the sum of squared per-group contributions, with the usual
//!   small-sample factor `G/(G − 1)`. Global requests are randomised one by one (the stride),
//!   so each is its own unit.
//! * **Few units, few degrees of freedom.** When a handful of groups carry the design (three
//!   users on a 1 % canary), the variance estimate itself is unreliable. The judge measures
//!   the effective number of units *from the design*: the Satterthwaite degrees of freedom
//!   of the sandwich under a working model of independent calls and no difference, in the
//!   manner of Bell & McCaffrey (2002), the correction Imbens & Kolesár (2016) recommend for
//!   cluster-robust errors with few or unequal clusters: `G* = (Σvᵍ)² / Σ(vᵍ)²`, where `vᵍ` is the variance group `g`'s influence would have if
//!   calls were independent and the arms equal — fixed by its weighted calls on each arm,
//!   never by its outcomes — and reads the statistic as Student's t with `G* − 1` degrees of
//!   freedom, converted to the equivalent normal score. A group that stands out by its
//!   *outcomes* (a broken client) is already in the sandwich variance, which holds one heavy
//!   user, however extreme, to `t ≈ 1`: it cannot decide a verdict, and it does not also cut
//!   the degrees of freedom of everyone else's evidence (see *Why* below). The variance is
//!   never taken below what independent calls would give under "no difference" (a floor, not
//!   a constant).
//! * **One key's share is bounded.** Within each arm, a group's calls weigh at most
//!   `max_key_share` (default 2 %) of the arm's weighted calls (water-filling over the groups'
//!   counts, which do not depend on outcomes, so the estimate stays unbiased under "no
//!   difference"). A flood from one client, or a client that picks its own sticky key, moves
//!   the estimate by at most that share.
//! * **Compare within the same time window.** Each analysis window is a stratum: the arms are
//!   compared on the window's calls only, and the windows are combined with
//!   Cochran–Mantel–Haenszel weights `n_c·n_s/(n_c + n_s)`. An outage, a load peak or a daily
//!   cycle moves both arms in the same window and cancels, however the weight changed between
//!   windows.
//! * **Errors**: the difference of failure rates (a cancelled call is a failure by default: a
//!   hung candidate must roll back, not pause). **Latency**: the Mann–Whitney probability that
//!   a canary call is slower than a stable call of the same window, minus ½ — rank-based, so a
//!   heavy tail cannot dominate it, and sensitive to a shift of the whole distribution, not
//!   only of one quantile.
//! * **Always-valid under repeated looks.** Each statistic drives a one-sided mixture
//!   sequential probability ratio test (mSPRT, the method of Johari et al. and of Netflix's
//!   sequential canary tests): with estimate `θ̂`, variance `V` and a half-normal mixture of
//!   scale `τ` over the effect, `Λ = 2·√(V/(V+τ²))·exp(z²τ²/(2(V+τ²)))·Φ(zτ/√(V+τ²))`, a
//!   nonnegative martingale under "no regression", so by Ville's inequality
//!   `P(Λ ever ≥ 1/α) ≤ α` however often the judge looks. `τ` comes from the data: for errors
//!   `(error_ratio − 1) ×` the pooled error rate; for latency the rank effect of scaling
//!   stable's own latency spread by `latency_ratio`.
//!
//! # Why this and not the alternatives
//!
//! Chosen by simulation (`judge_sim`, figures in the crate README), driving the real router
//! and controller.
//!
//! *Degrees of freedom from the design, not from the influences.* The judge first estimated
//! `G*` from the realised influences, `3(Σψ²)²/Σψ⁴` (Satterthwaite with a normal kurtosis).
//! That estimate is noisy both ways. With all effects together, one group with a broken,
//! busy client on the canary holds most of `Σψ²` and `Σψ⁴`; `G*` fell to 5–12 at the 50 %
//! step and a raw t of 4.7 was read as z 2.4: 5.8 % of the error regressions (0.5 % → 2 %)
//! went to 100 % undetected (1000 runs), short of the 95 % goal. With few users
//! (`--users 500`, all effects, A/A, 1000 runs) an unlucky draw read too many units: 6.7 %
//! false rollbacks. From the design, on the same seeds: 0.1 % false rollbacks with 500 users,
//! and with all effects at 10 000 users errors detected in 97.6 % of runs, A/A 0.1 %, mean
//! time to a verdict unchanged (figures in the crate README). The design-based
//! count still protects where it should: a canary whose calls come from a few groups has few
//! units, whatever its outcomes. Per-request tests (Kayenta's Mann–Whitney per metric; the binomial SPRT this
//! crate had) keep their error rates only on independent traffic. An over-dispersion factor
//! estimated from the data fixes the variance but not the bias that shared outages bring when
//! the weight changes between steps; time strata alone do not fix user clustering. Cluster-robust
//! variance over key groups, within time strata, with the degrees-of-freedom correction and the
//! key-share cap, kept the simulated A/A false rollbacks at or below 0.1 % on every effect and their
//! combination. Its power is bounded by the number of users behind the canary, not by the
//! number of requests: at a 1 % step, 20 heterogeneous users carry little evidence, however
//! many requests they send — which is the point.
//!
//! # Verdicts
//!
//! * **Fail** as soon as either test's `ln Λ` reaches `ln(1/α)` (latched: a failed canary stays
//!   failed), or an absolute guard (`max_error_rate`, `max_p99`) is exceeded with at least
//!   `min_samples` canary calls.
//! * **Inconclusive** while either arm has fewer than `min_samples` judged calls since the
//!   judge started — "no data" is never a pass.
//! * **Pass** otherwise: enough samples and no evidence of a regression.
//!
//! ```
//! use degrade_canary::{Judge, JudgeConfig, Verdict};
//! use degrade_canary::stats::{CanarySnapshot, GROUP_LAYOUT, GROUPS};
//! use degrade_core::histogram::Histogram;
//! use std::time::Duration;
//!
//! let mut judge = Judge::new(JudgeConfig { min_samples: 500, ..Default::default() }).unwrap();
//! let mut snap = CanarySnapshot::default();
//! snap.stable.groups = vec![Default::default(); GROUPS];
//! snap.canary.groups = vec![Default::default(); GROUPS];
//! let ms = |m| GROUP_LAYOUT.bucket(Duration::from_millis(m));
//! // One user (group 7) on the canary fails every call; everyone else is healthy.
//! for g in 0..GROUPS {
//!     snap.stable.groups[g].latency.add(ms(20), 100);
//!     snap.stable.groups[g].failures = 1;
//!     snap.canary.groups[g].latency.add(ms(20), 10);
//! }
//! snap.canary.groups[7].latency.add(ms(20), 500);
//! snap.canary.groups[7].failures = 510;
//! for arm in [&mut snap.stable, &mut snap.canary] {
//!     arm.failures = arm.groups.iter().map(|g| g.failures).sum();
//!     arm.successes = arm.groups.iter().map(|g| g.samples()).sum::<u64>() - arm.failures;
//!     // The arm's histogram: the groups' sum (no unkeyed calls), at the groups' layout.
//!     arm.latency = Histogram::new(GROUP_LAYOUT);
//!     arm.groups.iter().for_each(|g| assert!(arm.latency.merge(&g.latency)));
//! }
//! // A per-request test would fail this canary; one key cannot.
//! let j = judge.look(&snap);
//! assert_eq!(j.verdict, Verdict::Pass);
//! ```

mod evidence;

use self::evidence::{
    Evidence, Window, cap_factors, combine, error_window, latency_window, rank_effect,
    timed_per_window,
};
use crate::stats::{ArmSnapshot, CanarySnapshot, GROUPS};
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
/// assert!(cfg.cancelled_is_failure);
/// assert!(cfg.validate().is_ok());
/// let zero: JudgeConfig = serde_json::from_str(r#"{"min_samples": 0}"#).unwrap();
/// assert_eq!(zero.validate().unwrap_err().field(), "min_samples");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JudgeConfig {
    /// Judged calls each arm needs (since the judge started) before a Pass. Default 2 000.
    pub min_samples: u64,
    /// False-rollback bound of each test (errors, latency), over all looks. Default 0.005 (both tests together: 1 %).
    pub alpha: f64,
    /// The error regression the test is most sensitive to, as canary failure rate / stable's:
    /// the scale of the mixture over effects (the bound `alpha` holds for any value).
    /// Default 2.
    pub error_ratio: f64,
    /// The latency regression the test is most sensitive to, as canary latency / stable's
    /// (the whole distribution scaled). Default 1.3.
    pub latency_ratio: f64,
    /// The largest share of an arm's judged calls one sticky-key group may carry in the
    /// statistics; heavier groups are weighted down to it. Default 0.02 (about 1.3 times the fair
    /// share of the 64 groups).
    pub max_key_share: f64,
    /// Count a call whose future was dropped before it completed (a caller's timeout) as a
    /// failure of its arm. Default true.
    pub cancelled_is_failure: bool,
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
            alpha: 0.005,
            error_ratio: 2.0,
            latency_ratio: 1.3,
            max_key_share: 0.02,
            cancelled_is_failure: true,
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
        open("error_ratio", self.error_ratio, 1.0, 1e6)?;
        open("latency_ratio", self.latency_ratio, 1.0, 1e6)?;
        if !(self.max_key_share.is_finite()
            && self.max_key_share > 0.0
            && self.max_key_share <= 1.0)
        {
            return Err(ConfigError::new("max_key_share", "must be in (0, 1]"));
        }
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
    /// Log mixture likelihood ratio `ln Λ` of the error test (fails at `upper_bound`).
    pub error_llr: f64,
    /// Log mixture likelihood ratio `ln Λ` of the latency test (fails at `upper_bound`).
    pub latency_llr: f64,
    /// The rejection bound, `ln(1 / α)`.
    pub upper_bound: f64,
    /// The error test's normal score (canary worse when positive), after the
    /// degrees-of-freedom correction.
    pub error_z: f64,
    /// The latency test's normal score (canary slower when positive), after the
    /// degrees-of-freedom correction.
    pub latency_z: f64,
}

/// The sequential judge. Feed it cumulative snapshots ([`crate::CanaryHandle::snapshot`]) at
/// each look; it keeps what it needs between looks. Each look's new calls form one time
/// stratum (a look where either arm saw nothing is merged into the next).
///
/// Snapshots without key groups (`ArmSnapshot::groups` empty, as built by hand or by
/// `degrade-rollout`'s pool) are judged with every call as its own unit.
///
/// ```
/// use degrade_canary::{Judge, JudgeConfig, Verdict, stats::CanarySnapshot};
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
    base: CanarySnapshot,
    last: CanarySnapshot,
    /// Weighted failures and calls of both arms since the start (the pooled error rate).
    pooled: (f64, f64),
    /// The evidence of each weight the router had (each step), combined at each look.
    strata: Vec<Stratum>,
    failed: Option<&'static str>,
    /// The last look's window: judged calls of the smaller arm (exact), and the timed calls
    /// per arm such a window needs ([`Judge::timing_window`]).
    window: (u64, u64),
}

/// The calls judged at one router weight.
#[derive(Debug, Clone)]
struct Stratum {
    weight_bp: Option<u32>,
    /// Judged calls in this stratum, per arm: per key group, then the ungrouped ones (for the
    /// key-share caps: a heavy user that just moved to the canary is capped at once).
    counts: [[u64; GROUPS + 1]; 2],
    errors: Evidence,
    latency: Evidence,
}

/// More distinct weights than a rollout has steps are merged into the last stratum.
const MAX_STRATA: usize = 32;

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
        let upper = (1.0 / cfg.alpha).ln();
        Ok(Self {
            cfg,
            upper,
            base: CanarySnapshot::default(),
            last: CanarySnapshot::default(),
            pooled: (0.0, 0.0),
            strata: Vec::new(),
            failed: None,
            window: (0, 0),
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
    /// # use degrade_canary::{Judge, JudgeConfig, Verdict, stats::CanarySnapshot};
    /// let mut judge = Judge::new(JudgeConfig { min_samples: 10, ..Default::default() }).unwrap();
    /// let mut snap = CanarySnapshot::default();
    /// snap.stable.successes = 100;
    /// snap.canary.successes = 100;
    /// assert_eq!(judge.look(&snap).verdict, Verdict::Pass);
    /// judge.start(&snap);
    /// assert_eq!(judge.look(&snap).verdict, Verdict::Inconclusive);
    /// ```
    pub fn start(&mut self, now: &CanarySnapshot) {
        self.base = now.clone();
        self.last = now.clone();
        self.pooled = (0.0, 0.0);
        self.strata.clear();
        self.failed = None;
        self.window = (0, 0);
    }

    /// What the last look's window tells the router's timing: the judged calls of the smaller
    /// arm in it (exact, timed or not) and the timed calls per arm the latency test needs in
    /// such a window (see `timed_per_window`). The controller passes both to the router,
    /// which then times 1 call in the largest power of two `n ≤ 16` of each arm that keeps
    /// that many.
    pub(crate) fn timing_window(&self) -> (u64, u64) {
        self.window
    }

    /// One look at the cumulative snapshot `now`.
    ///
    /// ```
    /// # use degrade_canary::{Judge, JudgeConfig, Verdict, stats::CanarySnapshot};
    /// let mut judge = Judge::new(JudgeConfig { min_samples: 10, ..Default::default() }).unwrap();
    /// let mut snap = CanarySnapshot::default();
    /// snap.stable.successes = 1_000;
    /// snap.canary.successes = 20;
    /// let j = judge.look(&snap);
    /// assert_eq!(j.verdict, Verdict::Pass);
    /// assert_eq!(j.samples, (1_000, 20));
    /// ```
    pub fn look(&mut self, now: &CanarySnapshot) -> Judgement {
        let delta = now.since(&self.last);
        let window_calls = delta.stable.samples().min(delta.canary.samples());
        let cif = self.cfg.cancelled_is_failure;
        let ws = Window::of(&delta.stable, cif);
        let wc = Window::of(&delta.canary, cif);
        // A window where one arm saw nothing carries no comparison: keep accumulating it.
        if ws.total() > 0 && wc.total() > 0 {
            let k = match self
                .strata
                .iter()
                .position(|s| s.weight_bp == now.weight_bp)
            {
                Some(k) => k,
                None if self.strata.len() < MAX_STRATA => {
                    self.strata.push(Stratum {
                        weight_bp: now.weight_bp,
                        counts: [[0; GROUPS + 1]; 2],
                        errors: Evidence::new(),
                        latency: Evidence::new(),
                    });
                    self.strata.len() - 1
                }
                None => MAX_STRATA - 1,
            };
            let stratum = &mut self.strata[k];
            for (a, w) in [&ws, &wc].into_iter().enumerate() {
                for (c, n) in stratum.counts[a].iter_mut().zip(w.n.iter()) {
                    *c += n;
                }
            }
            let share = self.cfg.max_key_share;
            let cs = cap_factors(&stratum.counts[0], share);
            let cc = cap_factors(&stratum.counts[1], share);
            let before = (self.pooled.1 > 0.0).then(|| self.pooled.0 / self.pooled.1);
            let (f, d) = error_window(&mut stratum.errors, &ws, &wc, &cs, &cc, before);
            self.pooled.0 += f;
            self.pooled.1 += d;
            latency_window(&mut stratum.latency, &ws, &wc, &cs, &cc);
            self.last = now.clone();
        }

        let total = now.since(&self.base);
        let rate = |a: &ArmSnapshot| {
            let extra = if cif { a.cancelled } else { 0 };
            let n = a.samples() + extra;
            (n, (n > 0).then(|| (a.failures + extra) as f64 / n as f64))
        };
        let (ns, rs) = rate(&total.stable);
        let (nc, rc) = rate(&total.canary);

        let tau_e = (self.cfg.error_ratio - 1.0)
            * if self.pooled.1 > 0.0 {
                self.pooled.0 / self.pooled.1
            } else {
                0.0
            };
        let (error_z, error_llr) = combine(self.strata.iter().map(|s| &s.errors)).score(tau_e);
        let tau_l = rank_effect(&total.stable.latency, self.cfg.latency_ratio);
        self.window = (window_calls, timed_per_window(tau_l, self.cfg.alpha));
        let (latency_z, latency_llr) = combine(self.strata.iter().map(|s| &s.latency)).score(tau_l);
        if self.failed.is_none() {
            if error_llr >= self.upper {
                self.failed = Some("canary error rate above stable's");
            } else if latency_llr >= self.upper {
                self.failed = Some("canary latency above stable's");
            }
        }

        let enough = ns >= self.cfg.min_samples && nc >= self.cfg.min_samples;
        if self.failed.is_none() && nc >= self.cfg.min_samples {
            if let Some(max) = self.cfg.max_error_rate
                && rc.is_some_and(|r| r > max)
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
            samples: (ns, nc),
            error_rates: (rs, rc),
            error_llr,
            latency_llr,
            upper_bound: self.upper,
            error_z,
            latency_z,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{GROUP_LAYOUT, GroupSnapshot};
    use degrade_core::histogram::Histogram;

    /// One window: every group has `calls` calls on each arm; failures per group from `fail`.
    fn snapshot(calls: u64, fail: impl Fn(usize, usize) -> u64) -> CanarySnapshot {
        let mut snap = CanarySnapshot::default();
        let bucket = GROUP_LAYOUT.bucket(Duration::from_millis(20));
        for (a, arm) in [&mut snap.stable, &mut snap.canary].into_iter().enumerate() {
            arm.groups = (0..GROUPS)
                .map(|g| {
                    let mut group = GroupSnapshot::default();
                    group.latency.add(bucket, calls);
                    group.failures = fail(a, g);
                    group
                })
                .collect();
            arm.failures = arm.groups.iter().map(|g| g.failures).sum();
            arm.successes = arm.groups.iter().map(|g| g.samples()).sum::<u64>() - arm.failures;
            arm.latency = Histogram::new(GROUP_LAYOUT);
            arm.groups
                .iter()
                .for_each(|g| assert!(arm.latency.merge(&g.latency)));
        }
        snap
    }

    /// Stable fails 0.5–1.5 % of the calls of each group, the canary 0.4 points more; `broken`
    /// more failures in canary group 0 (a broken client).
    fn regression_everywhere(broken: u64) -> CanarySnapshot {
        snapshot(1_000, |arm, g| {
            let spread = (g * 7 % 11) as u64;
            match arm {
                0 => 5 + spread,
                _ => 9 + spread + if g == 0 { broken } else { 0 },
            }
        })
    }

    #[test]
    fn one_outlying_group_does_not_discount_a_regression_of_all_the_others() {
        let judge = || {
            Judge::new(JudgeConfig {
                min_samples: 100,
                ..JudgeConfig::default()
            })
            .unwrap()
        };
        // Without the broken client: a clear failure.
        let clean = judge().look(&regression_everywhere(0));
        assert_eq!(clean.verdict, Verdict::Fail, "{clean:?}");
        // A broken client failing 2 % or 5 % more of its calls only adds to the canary's
        // failures: it must not turn the verdict. Effective units read from the realised
        // influences (`3(Σψ²)²/Σψ⁴`) took that one group for most of the variance and read the t
        // statistic with a few degrees of freedom: z 2.65 and 2.09, Pass. Its weight in the
        // variance is the sandwich's business; the units come from the design.
        for broken in [20, 50] {
            let j = judge().look(&regression_everywhere(broken));
            assert_eq!(j.verdict, Verdict::Fail, "broken {broken}: {j:?}");
            assert!(j.error_z > 5.0, "broken {broken}: {j:?}");
        }
    }
}
