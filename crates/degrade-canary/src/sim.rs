//! A seeded simulation harness that measures the judge under the controller's look schedule.
//!
//! Each run drives a real [`CanaryMachine`] and [`Judge`] over a simulated request stream: at each
//! analysis interval `requests_per_look` requests are split between the arms by the router's
//! own deterministic stride at the current weight, each fails with its arm's probability
//! (Bernoulli) and takes a lognormal latency (Box–Muller), and the counts are recorded into
//! the same histograms the router keeps. The judge then looks at the cumulative snapshot and
//! the rollout acts on its verdict, exactly as the [`CanaryController`](crate::CanaryController)
//! does. A run ends promoted, rolled back, paused, or after `max_looks`.
//!
//! The random numbers come from a xoshiro256++ generator written here and seeded per run, so a
//! table of results is reproducible bit for bit:
//!
//! ```text
//! cargo run -p degrade-canary --release --example judge_sim -- --runs 1000
//! ```
//!
//! ```
//! use degrade_canary::sim::{Scenario, SimConfig, simulate};
//! let mut cfg = SimConfig::default();
//! cfg.runs = 3;
//! let r = simulate(&cfg, &Scenario::errors(0.005, 0.05));
//! assert_eq!(r.runs, 3);
//! assert_eq!(r.rolled_back, 3);
//! ```

use crate::arm::FULL_BP;
use crate::judge::{Judge, Verdict};
use crate::machine::{CanaryConfig, CanaryEvent, CanaryMachine, CanaryPhase};
use crate::stats::{CanarySnapshot, latency_bucket};
use std::time::Duration;
use tokio::time::Instant;

/// A small, fast, seeded generator (xoshiro256++, seeded through splitmix64).
///
/// ```
/// use degrade_canary::sim::Rng;
/// let mut a = Rng::new(7);
/// let mut b = Rng::new(7);
/// assert_eq!(a.next_u64(), b.next_u64());
/// let u = a.uniform();
/// assert!((0.0..1.0).contains(&u));
/// ```
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
    spare: Option<f64>,
}

impl Rng {
    /// A generator seeded with `seed`.
    ///
    /// ```
    /// # use degrade_canary::sim::Rng;
    /// assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    /// ```
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self {
            s: [next(), next(), next(), next()],
            spare: None,
        }
    }

    /// The next 64 random bits.
    ///
    /// ```
    /// # use degrade_canary::sim::Rng;
    /// let _ = Rng::new(0).next_u64();
    /// ```
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let out = (s[0].wrapping_add(s[3])).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    ///
    /// ```
    /// # use degrade_canary::sim::Rng;
    /// assert!(Rng::new(3).uniform() < 1.0);
    /// ```
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `p`.
    ///
    /// ```
    /// # use degrade_canary::sim::Rng;
    /// let mut r = Rng::new(5);
    /// assert!(!r.bernoulli(0.0));
    /// assert!(r.bernoulli(1.0));
    /// ```
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// A standard normal draw (Box–Muller; the second value of each pair is kept).
    ///
    /// ```
    /// # use degrade_canary::sim::Rng;
    /// let mut r = Rng::new(9);
    /// let mean = (0..10_000).map(|_| r.normal()).sum::<f64>() / 10_000.0;
    /// assert!(mean.abs() < 0.05);
    /// ```
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = std::f64::consts::TAU * u2;
        self.spare = Some(r * theta.sin());
        r * theta.cos()
    }
}

/// One arm's simulated behaviour.
///
/// ```
/// use degrade_canary::sim::ArmModel;
/// let m = ArmModel { error_rate: 0.005, median: std::time::Duration::from_millis(50), sigma: 0.5 };
/// assert!(m.p99() > m.median);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArmModel {
    /// Probability that a request fails.
    pub error_rate: f64,
    /// Median latency (lognormal).
    pub median: Duration,
    /// Lognormal shape: standard deviation of the latency's logarithm.
    pub sigma: f64,
}

impl ArmModel {
    /// The model's exact p99 (`median · e^{2.326σ}`).
    ///
    /// ```
    /// # use degrade_canary::sim::ArmModel;
    /// let m = ArmModel { error_rate: 0.0, median: std::time::Duration::from_millis(10), sigma: 0.0 };
    /// assert_eq!(m.p99(), std::time::Duration::from_millis(10));
    /// ```
    pub fn p99(&self) -> Duration {
        self.median.mul_f64((2.326_347_874 * self.sigma).exp())
    }

    fn draw(&self, rng: &mut Rng) -> (bool, Duration) {
        let failed = rng.bernoulli(self.error_rate);
        let latency = self.median.mul_f64((self.sigma * rng.normal()).exp());
        (failed, latency)
    }
}

/// A stable arm and a canary arm.
///
/// ```
/// use degrade_canary::sim::Scenario;
/// let s = Scenario::latency(1.3);
/// assert!(s.canary.p99() > s.stable.p99());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// A name for tables.
    pub name: String,
    /// The stable release.
    pub stable: ArmModel,
    /// The candidate.
    pub canary: ArmModel,
}

const BASE: ArmModel = ArmModel {
    error_rate: 0.005,
    median: Duration::from_millis(50),
    sigma: 0.5,
};

impl Scenario {
    /// A/A: both arms identical (0.5 % errors, lognormal latency, median 50 ms, σ 0.5).
    ///
    /// ```
    /// # use degrade_canary::sim::Scenario;
    /// assert_eq!(Scenario::a_a().stable, Scenario::a_a().canary);
    /// ```
    pub fn a_a() -> Self {
        Self {
            name: "A/A (0.5 % errors, p50 50 ms)".into(),
            stable: BASE,
            canary: BASE,
        }
    }

    /// Error rates `stable` → `canary`, latency unchanged.
    ///
    /// ```
    /// # use degrade_canary::sim::Scenario;
    /// assert_eq!(Scenario::errors(0.005, 0.02).canary.error_rate, 0.02);
    /// ```
    pub fn errors(stable: f64, canary: f64) -> Self {
        Self {
            name: format!("errors {} % -> {} %", stable * 100.0, canary * 100.0),
            stable: ArmModel {
                error_rate: stable,
                ..BASE
            },
            canary: ArmModel {
                error_rate: canary,
                ..BASE
            },
        }
    }

    /// The canary's latency scaled by `factor` (so its p99 is `factor` × stable's).
    ///
    /// ```
    /// # use degrade_canary::sim::Scenario;
    /// let s = Scenario::latency(1.3);
    /// let r = s.canary.p99().as_secs_f64() / s.stable.p99().as_secs_f64();
    /// assert!((r - 1.3).abs() < 1e-6);
    /// ```
    pub fn latency(factor: f64) -> Self {
        Self {
            name: format!("p99 +{:.0} %", (factor - 1.0) * 100.0),
            stable: BASE,
            canary: ArmModel {
                median: BASE.median.mul_f64(factor),
                ..BASE
            },
        }
    }
}

/// Settings of a simulation.
///
/// ```
/// use degrade_canary::sim::SimConfig;
/// let cfg = SimConfig::default();
/// assert_eq!(cfg.requests_per_look, 5_000);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SimConfig {
    /// Independent runs per scenario.
    pub runs: u32,
    /// Seed of run 0; run `i` uses `seed + i`.
    pub seed: u64,
    /// Requests (both arms together) per analysis interval.
    pub requests_per_look: u64,
    /// The rollout (steps, bake times, interval, inconclusive limit, judge).
    pub rollout: CanaryConfig,
    /// A run that has not ended after this many looks counts as stuck.
    pub max_looks: u32,
}

impl Default for SimConfig {
    fn default() -> Self {
        // At 5 000 requests per 30 s look, the 1 % step needs 40 looks to reach the 2 000
        // canary samples of the minimum: the inconclusive limit is raised to match.
        let rollout = CanaryConfig {
            inconclusive_limit: 100,
            ..CanaryConfig::default()
        };
        Self {
            runs: 100,
            seed: 1,
            requests_per_look: 5_000,
            rollout,
            max_looks: 2_000,
        }
    }
}

/// The outcome of one scenario.
///
/// ```
/// use degrade_canary::sim::SimResult;
/// let r = SimResult::default();
/// assert_eq!(r.rollback_rate(), 0.0);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct SimResult {
    /// Runs.
    pub runs: u32,
    /// Runs that ended rolled back.
    pub rolled_back: u32,
    /// Runs rolled back no later than the look at which the canary first had `min_samples`.
    pub rolled_back_within_min_samples: u32,
    /// Runs that ended promoted.
    pub promoted: u32,
    /// Runs that paused or ran out of looks.
    pub stuck: u32,
    /// Canary samples at each rollback, sorted.
    pub canary_samples_at_rollback: Vec<u64>,
}

impl SimResult {
    /// Rolled-back share of runs.
    ///
    /// ```
    /// # use degrade_canary::sim::SimResult;
    /// assert_eq!(SimResult::default().rollback_rate(), 0.0);
    /// ```
    pub fn rollback_rate(&self) -> f64 {
        ratio(self.rolled_back, self.runs)
    }

    /// Share of runs rolled back within the minimum samples.
    ///
    /// ```
    /// # use degrade_canary::sim::SimResult;
    /// assert_eq!(SimResult::default().detection_within_min_samples(), 0.0);
    /// ```
    pub fn detection_within_min_samples(&self) -> f64 {
        ratio(self.rolled_back_within_min_samples, self.runs)
    }

    /// Canary samples by which share `q` of the rolled-back runs had rolled back.
    ///
    /// ```
    /// # use degrade_canary::sim::SimResult;
    /// assert_eq!(SimResult::default().samples_at_rollback_quantile(0.95), None);
    /// ```
    pub fn samples_at_rollback_quantile(&self, q: f64) -> Option<u64> {
        let v = &self.canary_samples_at_rollback;
        let i = ((q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize).max(1);
        v.get(i - 1).copied()
    }

    /// Median canary samples at rollback, if any run rolled back.
    ///
    /// ```
    /// # use degrade_canary::sim::SimResult;
    /// assert_eq!(SimResult::default().median_samples_at_rollback(), None);
    /// ```
    pub fn median_samples_at_rollback(&self) -> Option<u64> {
        let v = &self.canary_samples_at_rollback;
        (!v.is_empty()).then(|| v[v.len() / 2])
    }
}

fn ratio(a: u32, b: u32) -> f64 {
    if b == 0 {
        0.0
    } else {
        f64::from(a) / f64::from(b)
    }
}

/// Runs `cfg.runs` seeded rollouts of `scenario`.
///
/// # Panics
///
/// If `cfg.rollout` is invalid.
///
/// ```
/// use degrade_canary::sim::{Scenario, SimConfig, simulate};
/// let mut cfg = SimConfig::default();
/// cfg.runs = 2;
/// assert_eq!(simulate(&cfg, &Scenario::a_a()).runs, 2);
/// ```
pub fn simulate(cfg: &SimConfig, scenario: &Scenario) -> SimResult {
    let mut result = SimResult {
        runs: cfg.runs,
        ..SimResult::default()
    };
    for run in 0..cfg.runs {
        let mut rng = Rng::new(cfg.seed.wrapping_add(u64::from(run)));
        match one_run(cfg, scenario, &mut rng) {
            RunEnd::RolledBack {
                canary_samples,
                within_min,
            } => {
                result.rolled_back += 1;
                result.rolled_back_within_min_samples += u32::from(within_min);
                result.canary_samples_at_rollback.push(canary_samples);
            }
            RunEnd::Promoted => result.promoted += 1,
            RunEnd::Stuck => result.stuck += 1,
        }
    }
    result.canary_samples_at_rollback.sort_unstable();
    result
}

enum RunEnd {
    RolledBack {
        canary_samples: u64,
        within_min: bool,
    },
    Promoted,
    Stuck,
}

fn one_run(cfg: &SimConfig, scenario: &Scenario, rng: &mut Rng) -> RunEnd {
    let t0 = Instant::now();
    let mut rollout = CanaryMachine::new(cfg.rollout.clone(), t0).expect("valid rollout config");
    let mut judge = Judge::new(cfg.rollout.judge.clone()).expect("valid judge config");
    let min = cfg.rollout.judge.min_samples;
    let mut snap = CanarySnapshot::default();
    let mut seq: u64 = 0;
    let mut min_reached = false;
    for look in 1..=cfg.max_looks {
        let w = u64::from(rollout.state().weight_bp);
        for _ in 0..cfg.requests_per_look {
            // The router's unkeyed stride.
            let n = seq % u64::from(FULL_BP);
            seq += 1;
            let canary = (n + 1) * w / u64::from(FULL_BP) != n * w / u64::from(FULL_BP);
            let (model, arm) = if canary {
                (&scenario.canary, &mut snap.canary)
            } else {
                (&scenario.stable, &mut snap.stable)
            };
            let (failed, latency) = model.draw(rng);
            arm.routed += 1;
            if failed {
                arm.failures += 1;
            } else {
                arm.successes += 1;
            }
            arm.latency.add(latency_bucket(latency), 1);
        }
        let now = t0 + cfg.rollout.analysis_interval * look;
        let judgement = judge.look(&snap);
        let within_min = !min_reached;
        min_reached |= judgement.samples.1 >= min;
        rollout.on(CanaryEvent::Analysis(judgement.verdict), now);
        match rollout.state().phase {
            CanaryPhase::RolledBack => {
                debug_assert_eq!(judgement.verdict, Verdict::Fail);
                return RunEnd::RolledBack {
                    canary_samples: judgement.samples.1,
                    within_min,
                };
            }
            CanaryPhase::Promoted => return RunEnd::Promoted,
            CanaryPhase::Paused(_) => return RunEnd::Stuck,
            CanaryPhase::Progressing => {}
        }
    }
    RunEnd::Stuck
}
