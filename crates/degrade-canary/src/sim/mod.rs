//! (feature `sim`) A seeded traffic simulator that measures the judge through the real
//! [`Canary`](crate::Canary) router and [`CanaryController`](crate::CanaryController).
//!
//! Each run builds a router sticky by user and a controller on a `ManualClock` with the
//! given [`CanaryConfig`], then replays a stream of requests in simulated time: users arrive
//! as a Poisson process at `rate` requests per second, each request carries its user's key
//! through the router, the arm the router picked serves it (failing or not, with a latency),
//! and its response future completes when the simulated clock reaches its end — so the
//! router measures every latency and counts every outcome itself. Every
//! `analysis_interval` the controller's `tick` analyses and moves the weight. A run ends
//! promoted, rolled back, paused, or at `max_time`.
//!
//! The traffic has the effects that break per-request statistics, each with its own
//! parameters ([`Effects`]): per-user error and latency heterogeneity, a few very heavy users,
//! outages that hit both arms at once, a heavy latency tail, and a daily cycle of the request
//! rate with load-dependent errors and latency.
//!
//! Random numbers come from a xoshiro256++ generator seeded per run, so a table is
//! reproducible bit for bit:
//!
//! ```text
//! cargo run -p degrade-canary --release --features sim --example judge_sim -- --runs 1000
//! ```
//!
//! ```
//! use degrade_canary::sim::{Effects, Regression, Scenario, SimConfig, simulate};
//! let mut cfg = SimConfig::default();
//! cfg.runs = 2;
//! let bad = Scenario::new("errors", Effects::none(), Regression::errors(0.05));
//! let r = simulate(&cfg, &bad);
//! assert_eq!(r.runs, 2);
//! assert_eq!(r.rolled_back, 2);
//! ```

mod rng;
mod run;

pub use self::rng::Rng;
use self::run::{RunEnd, one_run};
use crate::machine::CanaryConfig;
use std::time::Duration;

/// Per-user error heterogeneity.
///
/// ```
/// use degrade_canary::sim::ErrorUsers;
/// let e = ErrorUsers::default();
/// assert!(e.bad_share > 0.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct ErrorUsers {
    /// Spread of each user's error-rate multiplier: lognormal with this σ (mean 1).
    pub sigma: f64,
    /// Share of users whose requests fail at `bad_rate` on either arm (broken clients).
    pub bad_share: f64,
    /// The error rate of those users.
    pub bad_rate: f64,
}

impl Default for ErrorUsers {
    fn default() -> Self {
        Self {
            sigma: 1.0,
            bad_share: 0.01,
            bad_rate: 0.25,
        }
    }
}

/// Per-user latency heterogeneity.
///
/// ```
/// use degrade_canary::sim::LatencyUsers;
/// assert!(LatencyUsers::default().slow_factor > 1.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct LatencyUsers {
    /// σ of each user's log-latency offset (normal).
    pub sigma: f64,
    /// Share of users that are always `slow_factor` times slower (big accounts, far regions).
    pub slow_share: f64,
    /// Their slowdown.
    pub slow_factor: f64,
}

impl Default for LatencyUsers {
    fn default() -> Self {
        Self {
            sigma: 0.4,
            slow_share: 0.05,
            slow_factor: 4.0,
        }
    }
}

/// A few very heavy users on top of unequal activity.
///
/// ```
/// use degrade_canary::sim::HeavyUsers;
/// let h = HeavyUsers::default();
/// assert!(h.count as f64 * h.share < 0.5);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct HeavyUsers {
    /// σ of the lognormal activity of ordinary users.
    pub activity_sigma: f64,
    /// Number of heavy users.
    pub count: usize,
    /// Share of all requests each heavy user sends.
    pub share: f64,
}

impl Default for HeavyUsers {
    fn default() -> Self {
        Self {
            activity_sigma: 1.5,
            count: 3,
            share: 0.05,
        }
    }
}

/// Outages that hit both arms at the same moment.
///
/// ```
/// use degrade_canary::sim::Outages;
/// assert!(Outages::default().per_hour > 0.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Outages {
    /// Mean outages per hour (Poisson).
    pub per_hour: f64,
    /// Length of each.
    pub duration: Duration,
    /// Share of requests that fail during an outage.
    pub error_rate: f64,
    /// Latency multiplier during an outage.
    pub latency_factor: f64,
}

impl Default for Outages {
    fn default() -> Self {
        Self {
            per_hour: 6.0,
            duration: Duration::from_secs(20),
            error_rate: 0.3,
            latency_factor: 4.0,
        }
    }
}

/// A heavy latency tail.
///
/// ```
/// use degrade_canary::sim::HeavyTail;
/// assert!(HeavyTail::default().alpha > 1.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct HeavyTail {
    /// Share of requests whose latency is multiplied by a Pareto draw.
    pub share: f64,
    /// Pareto shape (smaller: heavier; below 2 the variance is infinite).
    pub alpha: f64,
}

impl Default for HeavyTail {
    fn default() -> Self {
        Self {
            share: 0.05,
            alpha: 1.2,
        }
    }
}

/// A daily cycle of the request rate, with errors and latency that rise with load.
///
/// ```
/// use degrade_canary::sim::Cycle;
/// assert!(Cycle::default().amplitude < 1.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Cycle {
    /// Rate multiplier `1 + amplitude · sin(2πt / period + φ)`, φ random per run.
    pub amplitude: f64,
    /// The period (a compressed day, so that one rollout sees the rate move).
    pub period: Duration,
    /// Error-rate multiplier per unit of extra load: `1 + load_errors · (m − 1)`.
    pub load_errors: f64,
    /// Latency multiplier per unit of extra load: `1 + load_latency · (m − 1)`.
    pub load_latency: f64,
}

impl Default for Cycle {
    fn default() -> Self {
        Self {
            amplitude: 0.6,
            period: Duration::from_secs(3_600),
            load_errors: 1.5,
            load_latency: 0.8,
        }
    }
}

/// Which effects the traffic has (`None`: absent).
///
/// ```
/// use degrade_canary::sim::Effects;
/// assert!(Effects::none().outages.is_none());
/// assert!(Effects::all().outages.is_some());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub struct Effects {
    /// Per-user error heterogeneity.
    pub error_users: Option<ErrorUsers>,
    /// Per-user latency heterogeneity.
    pub latency_users: Option<LatencyUsers>,
    /// Heavy users.
    pub heavy_users: Option<HeavyUsers>,
    /// Shared outages.
    pub outages: Option<Outages>,
    /// Heavy latency tail.
    pub heavy_tail: Option<HeavyTail>,
    /// Daily cycle.
    pub cycle: Option<Cycle>,
}

impl Effects {
    /// Independent, homogeneous users.
    ///
    /// ```
    /// # use degrade_canary::sim::Effects;
    /// assert_eq!(Effects::none(), Effects::default());
    /// ```
    pub fn none() -> Self {
        Self::default()
    }

    /// Every effect with its default parameters.
    ///
    /// ```
    /// # use degrade_canary::sim::Effects;
    /// assert!(Effects::all().cycle.is_some());
    /// ```
    pub fn all() -> Self {
        Self {
            error_users: Some(ErrorUsers::default()),
            latency_users: Some(LatencyUsers::default()),
            heavy_users: Some(HeavyUsers::default()),
            outages: Some(Outages::default()),
            heavy_tail: Some(HeavyTail::default()),
            cycle: Some(Cycle::default()),
        }
    }

    /// One row per effect (with its default parameters), in table order, named.
    ///
    /// ```
    /// # use degrade_canary::sim::Effects;
    /// assert_eq!(Effects::rows().len(), 8);
    /// ```
    pub fn rows() -> Vec<(&'static str, Effects)> {
        let none = Self::none();
        vec![
            ("independent", none),
            (
                "per-user error rates",
                Self {
                    error_users: Some(ErrorUsers::default()),
                    ..none
                },
            ),
            (
                "per-user latency",
                Self {
                    latency_users: Some(LatencyUsers::default()),
                    ..none
                },
            ),
            (
                "heavy users",
                Self {
                    heavy_users: Some(HeavyUsers::default()),
                    ..none
                },
            ),
            (
                "shared outages",
                Self {
                    outages: Some(Outages::default()),
                    ..none
                },
            ),
            (
                "heavy tail",
                Self {
                    heavy_tail: Some(HeavyTail::default()),
                    ..none
                },
            ),
            (
                "daily cycle",
                Self {
                    cycle: Some(Cycle::default()),
                    ..none
                },
            ),
            ("all together", Self::all()),
        ]
    }
}

/// What the candidate does differently from stable.
///
/// ```
/// use degrade_canary::sim::Regression;
/// assert_eq!(Regression::none().latency_factor, 1.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Regression {
    /// Extra failure probability of every canary request (0.015: 0.5 % → 2 %).
    pub extra_errors: f64,
    /// Multiplier of every canary latency (1.3: the whole distribution 30 % slower).
    pub latency_factor: f64,
}

impl Regression {
    /// A/A: the candidate is stable.
    ///
    /// ```
    /// # use degrade_canary::sim::Regression;
    /// assert_eq!(Regression::none().extra_errors, 0.0);
    /// ```
    pub fn none() -> Self {
        Self {
            extra_errors: 0.0,
            latency_factor: 1.0,
        }
    }

    /// Every canary request fails with `extra` more probability.
    ///
    /// ```
    /// # use degrade_canary::sim::Regression;
    /// assert_eq!(Regression::errors(0.015).extra_errors, 0.015);
    /// ```
    pub fn errors(extra: f64) -> Self {
        Self {
            extra_errors: extra,
            ..Self::none()
        }
    }

    /// Every canary latency is multiplied by `factor`.
    ///
    /// ```
    /// # use degrade_canary::sim::Regression;
    /// assert_eq!(Regression::latency(1.3).latency_factor, 1.3);
    /// ```
    pub fn latency(factor: f64) -> Self {
        Self {
            latency_factor: factor,
            ..Self::none()
        }
    }
}

/// Traffic effects and a regression.
///
/// ```
/// use degrade_canary::sim::{Effects, Regression, Scenario};
/// let s = Scenario::new("A/A", Effects::all(), Regression::none());
/// assert_eq!(s.name, "A/A");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Scenario {
    /// A name for tables.
    pub name: String,
    /// The traffic's effects.
    pub effects: Effects,
    /// The candidate's regression.
    pub regression: Regression,
}

impl Scenario {
    /// A scenario.
    ///
    /// ```
    /// # use degrade_canary::sim::{Effects, Regression, Scenario};
    /// let s = Scenario::new("x", Effects::none(), Regression::latency(1.3));
    /// assert_eq!(s.regression.latency_factor, 1.3);
    /// ```
    pub fn new(name: impl Into<String>, effects: Effects, regression: Regression) -> Self {
        Self {
            name: name.into(),
            effects,
            regression,
        }
    }
}

/// Settings of a simulation.
///
/// ```
/// use degrade_canary::sim::SimConfig;
/// let cfg = SimConfig::default();
/// assert_eq!(cfg.rate, 200.0);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SimConfig {
    /// Independent runs per scenario.
    pub runs: u32,
    /// Seed of run 0; run `i` uses `seed + i`.
    pub seed: u64,
    /// Mean requests per second (both arms together).
    pub rate: f64,
    /// Users (sticky keys).
    pub users: usize,
    /// Stable's error rate (before per-user effects).
    pub error_rate: f64,
    /// Stable's median latency.
    pub median: Duration,
    /// σ of the log-latency of one user's requests.
    pub sigma: f64,
    /// The rollout (steps, bake times, interval, inconclusive limit, judge).
    pub rollout: CanaryConfig,
    /// A run that has not ended by then counts as stuck.
    pub max_time: Duration,
    /// Time only 1 call in this many (a power of two ≤ 16) of each arm, whatever the judge
    /// reads: the router's sampled timing at its heaviest, at the simulator's traffic (where
    /// the router on its own would time more). `None` (the default): the router decides, as
    /// in a real service.
    pub timing_every: Option<u64>,
}

impl Default for SimConfig {
    fn default() -> Self {
        // At 200 requests per second the 1 % step needs about 1 000 s (33 looks) to reach the
        // 2 000 canary samples of the minimum: the inconclusive limit is raised to match.
        let rollout = CanaryConfig {
            inconclusive_limit: 100,
            ..CanaryConfig::default()
        };
        Self {
            runs: 100,
            seed: 1,
            rate: 200.0,
            users: 10_000,
            error_rate: 0.005,
            median: Duration::from_millis(50),
            sigma: 0.5,
            rollout,
            max_time: Duration::from_secs(4 * 3_600),
            timing_every: None,
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
    /// Runs that paused or ran out of time.
    pub stuck: u32,
    /// Canary samples at each rollback, sorted.
    pub canary_samples_at_rollback: Vec<u64>,
    /// Requests simulated.
    pub requests: u64,
    /// Simulated seconds from the start to the end of each run (rolled back, promoted or
    /// stuck), sorted: the time to a verdict.
    pub secs_to_end: Vec<u32>,
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

    /// Adds another result of the same scenario (runs of other seeds).
    ///
    /// ```
    /// # use degrade_canary::sim::SimResult;
    /// let mut a = SimResult::default();
    /// let mut b = SimResult::default();
    /// b.runs = 2;
    /// a.merge(&b);
    /// assert_eq!(a.runs, 2);
    /// ```
    pub fn merge(&mut self, other: &SimResult) {
        self.runs += other.runs;
        self.rolled_back += other.rolled_back;
        self.rolled_back_within_min_samples += other.rolled_back_within_min_samples;
        self.promoted += other.promoted;
        self.stuck += other.stuck;
        self.requests += other.requests;
        self.canary_samples_at_rollback
            .extend_from_slice(&other.canary_samples_at_rollback);
        self.canary_samples_at_rollback.sort_unstable();
        self.secs_to_end.extend_from_slice(&other.secs_to_end);
        self.secs_to_end.sort_unstable();
    }

    /// Mean simulated seconds from the start to the end of a run (its verdict).
    ///
    /// ```
    /// # use degrade_canary::sim::SimResult;
    /// let mut r = SimResult::default();
    /// assert_eq!(r.mean_secs_to_end(), None);
    /// r.secs_to_end = vec![600, 900];
    /// assert_eq!(r.mean_secs_to_end(), Some(750.0));
    /// ```
    pub fn mean_secs_to_end(&self) -> Option<f64> {
        let n = self.secs_to_end.len();
        (n > 0).then(|| self.secs_to_end.iter().map(|&s| f64::from(s)).sum::<f64>() / n as f64)
    }
}

fn ratio(a: u32, b: u32) -> f64 {
    if b == 0 {
        0.0
    } else {
        f64::from(a) / f64::from(b)
    }
}

/// Runs `cfg.runs` seeded rollouts of `scenario`, runs `start..start + count` of them with
/// [`simulate_runs`].
///
/// # Panics
///
/// If `cfg.rollout` is invalid.
///
/// ```
/// use degrade_canary::sim::{Effects, Regression, Scenario, SimConfig, simulate};
/// let mut cfg = SimConfig::default();
/// cfg.runs = 1;
/// let r = simulate(&cfg, &Scenario::new("A/A", Effects::none(), Regression::none()));
/// assert_eq!(r.runs, 1);
/// assert!(r.requests > 0);
/// ```
pub fn simulate(cfg: &SimConfig, scenario: &Scenario) -> SimResult {
    simulate_runs(cfg, scenario, 0..cfg.runs)
}

/// Runs the seeded rollouts `runs` (run `i` seeded with `cfg.seed + i`) of `scenario`, so that
/// a table can be split between threads and merged with [`SimResult::merge`].
///
/// # Panics
///
/// If `cfg.rollout` is invalid.
///
/// ```
/// use degrade_canary::sim::{Effects, Regression, Scenario, SimConfig, simulate_runs};
/// let cfg = SimConfig::default();
/// let s = Scenario::new("errors", Effects::none(), Regression::errors(0.1));
/// assert_eq!(simulate_runs(&cfg, &s, 5..6).rolled_back, 1);
/// ```
pub fn simulate_runs(
    cfg: &SimConfig,
    scenario: &Scenario,
    runs: std::ops::Range<u32>,
) -> SimResult {
    let mut result = SimResult::default();
    for run in runs {
        result.runs += 1;
        let mut rng = Rng::new(cfg.seed.wrapping_add(u64::from(run)));
        let (end, requests, secs) = one_run(cfg, scenario, &mut rng);
        result.requests += requests;
        result.secs_to_end.push(secs.round() as u32);
        match end {
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
    result.secs_to_end.sort_unstable();
    result
}
