//! (feature `sim`) A seeded traffic simulator that measures the judge through the real
//! [`Canary`] router and [`RolloutController`].
//!
//! Each run builds a router sticky by user and a controller on a [`ManualClock`] with the
//! given [`RolloutConfig`], then replays a stream of requests in simulated time: users arrive
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

use crate::arm::Arm;
use crate::key::{KeyFn, NoOverride, key_fn};
use crate::rollout::{Phase, RolloutConfig};
use crate::service::{Canary, Plain};
use crate::{RolloutController, future::ResponseFuture};
use degrade_core::{Clock, DefaultClassifier, ManualClock};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::time::Instant;
use tower_service::Service;

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
    pub rollout: RolloutConfig,
    /// A run that has not ended by then counts as stuck.
    pub max_time: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        // At 200 requests per second the 1 % step needs about 1 000 s (33 looks) to reach the
        // 2 000 canary samples of the minimum: the inconclusive limit is raised to match.
        let rollout = RolloutConfig {
            inconclusive_limit: 100,
            ..RolloutConfig::default()
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
        let (end, requests) = one_run(cfg, scenario, &mut rng);
        result.requests += requests;
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

/// One user of a run.
struct User {
    key: u64,
    /// Error-rate multiplier, or a fixed rate (a broken client).
    error_mult: f64,
    bad_rate: Option<f64>,
    /// Latency multiplier.
    latency_mult: f64,
}

/// A request: its user's key and what each arm would do with it (common random numbers).
#[derive(Debug, Clone, Copy)]
struct SimReq {
    key: u64,
    /// (failed, latency) on stable, then on the canary.
    arms: [(bool, Duration); 2],
}

/// The error of a failed simulated call.
#[derive(Debug)]
struct Failed;

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("simulated failure")
    }
}

impl std::error::Error for Failed {}

/// One arm of the simulated backend.
#[derive(Clone)]
struct Backend {
    arm: Arm,
    clock: ManualClock,
}

impl Service<SimReq> for Backend {
    type Response = ();
    type Error = Failed;
    type Future = Call;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Failed>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: SimReq) -> Call {
        let (failed, latency) = req.arms[self.arm.index()];
        Call {
            done_at: self.clock.now() + latency,
            failed,
            clock: self.clock.clone(),
        }
    }
}

/// A call that completes when the simulated clock reaches `done_at`.
struct Call {
    done_at: Instant,
    failed: bool,
    clock: ManualClock,
}

impl Future for Call {
    type Output = Result<(), Failed>;
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        if self.clock.now() >= self.done_at {
            Poll::Ready(if self.failed { Err(Failed) } else { Ok(()) })
        } else {
            Poll::Pending
        }
    }
}

type Key = KeyFn<fn(&SimReq) -> Option<u64>>;
type Router = Canary<Backend, Backend, Key, NoOverride, DefaultClassifier, Plain, ManualClock>;
type Pending = ResponseFuture<Call, Call, DefaultClassifier, Plain, ManualClock>;

fn user_key(req: &SimReq) -> Option<u64> {
    Some(req.key)
}

/// A call in flight, ordered by completion time.
struct InFlight {
    done_ns: u64,
    seq: u64,
    fut: Pending,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.done_ns, self.seq) == (other.done_ns, other.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.done_ns, self.seq).cmp(&(other.done_ns, other.seq))
    }
}

/// Polls a future that the simulation knows to be ready (no timer, no I/O inside).
fn poll_now<F: Future + Unpin>(fut: &mut F) -> Option<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(fut).poll(&mut cx) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// Walker's alias table: O(1) draws from a discrete distribution.
struct Alias {
    prob: Vec<f64>,
    alias: Vec<usize>,
}

impl Alias {
    fn new(weights: &[f64]) -> Self {
        let n = weights.len();
        let total: f64 = weights.iter().sum();
        let mut scaled: Vec<f64> = weights.iter().map(|w| w * n as f64 / total).collect();
        let mut prob = vec![1.0; n];
        let mut alias: Vec<usize> = (0..n).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| scaled[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            prob[s] = scaled[s];
            alias[s] = l;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        Self { prob, alias }
    }

    fn draw(&self, rng: &mut Rng) -> usize {
        let n = self.prob.len();
        let i = ((rng.uniform() * n as f64) as usize).min(n - 1);
        if rng.uniform() < self.prob[i] {
            i
        } else {
            self.alias[i]
        }
    }
}

fn lognormal_mean_one(rng: &mut Rng, sigma: f64) -> f64 {
    (sigma * rng.normal() - sigma * sigma / 2.0).exp()
}

fn make_users(cfg: &SimConfig, fx: &Effects, rng: &mut Rng) -> (Vec<User>, Alias) {
    let mut users = Vec::with_capacity(cfg.users);
    let mut activity = Vec::with_capacity(cfg.users);
    for _ in 0..cfg.users {
        let key = rng.next_u64();
        let (error_mult, bad_rate) = match fx.error_users {
            Some(e) if rng.bernoulli(e.bad_share) => (1.0, Some(e.bad_rate)),
            Some(e) => (lognormal_mean_one(rng, e.sigma), None),
            None => (1.0, None),
        };
        let latency_mult = match fx.latency_users {
            Some(l) => {
                let slow = if rng.bernoulli(l.slow_share) {
                    l.slow_factor
                } else {
                    1.0
                };
                slow * (l.sigma * rng.normal()).exp()
            }
            None => 1.0,
        };
        users.push(User {
            key,
            error_mult,
            bad_rate,
            latency_mult,
        });
        activity.push(match fx.heavy_users {
            Some(h) => lognormal_mean_one(rng, h.activity_sigma),
            None => 1.0,
        });
    }
    if let Some(h) = fx.heavy_users {
        let count = h.count.min(users.len());
        let heavy_total = (count as f64 * h.share).min(0.9);
        let ordinary: f64 = activity[count..].iter().sum();
        let each = if count > 0 {
            heavy_total / (1.0 - heavy_total) * ordinary / count as f64
        } else {
            0.0
        };
        for a in &mut activity[..count] {
            *a = each;
        }
    }
    let alias = Alias::new(&activity);
    (users, alias)
}

fn one_run(cfg: &SimConfig, scenario: &Scenario, rng: &mut Rng) -> (RunEnd, u64) {
    let fx = &scenario.effects;
    let reg = &scenario.regression;
    let (users, alias) = make_users(cfg, fx, rng);
    let clock = ManualClock::new();
    let backend = |arm| Backend {
        arm,
        clock: clock.clone(),
    };
    let mut router: Router = Canary::builder()
        .key(key_fn(user_key as fn(&SimReq) -> Option<u64>))
        .clock(clock.clone())
        .build(backend(Arm::Stable), backend(Arm::Canary));
    let mut controller = RolloutController::builder(cfg.rollout.clone(), router.handle())
        .clock(clock.clone())
        .start()
        .expect("valid rollout config");
    let min = cfg.rollout.judge.min_samples;
    let mut min_reached = false;

    // Outages: start times over the horizon, in nanoseconds.
    let horizon = cfg.max_time.as_secs_f64();
    let mut outages = Vec::new();
    if let Some(o) = fx.outages {
        let mut t = 0.0;
        loop {
            t += -(1.0 - rng.uniform()).ln() * 3_600.0 / o.per_hour.max(1e-9);
            if t > horizon {
                break;
            }
            outages.push((t, t + o.duration.as_secs_f64()));
        }
    }
    let phase = rng.uniform() * std::f64::consts::TAU;
    let load = |t: f64| match fx.cycle {
        Some(c) => {
            1.0 + c.amplitude * (std::f64::consts::TAU * t / c.period.as_secs_f64() + phase).sin()
        }
        None => 1.0,
    };
    let max_load = 1.0 + fx.cycle.map_or(0.0, |c| c.amplitude.abs());

    let interval = cfg.rollout.analysis_interval.as_secs_f64();
    let mut now: f64; // seconds since the start
    let mut clock_ns: u64 = 0;
    let advance_to = |t: f64, clock_ns: &mut u64| {
        let target = (t * 1e9) as u64;
        if target > *clock_ns {
            clock.advance(Duration::from_nanos(target - *clock_ns));
            *clock_ns = target;
        }
    };
    let mut heap: BinaryHeap<Reverse<InFlight>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut requests = 0u64;
    let mut next_look = interval;
    let mut next_arrival = 0.0;
    let mut outage_idx = 0;
    loop {
        // Arrivals by thinning a Poisson process at the peak rate.
        if next_arrival <= next_look
            && heap
                .peek()
                .is_none_or(|Reverse(f)| next_arrival * 1e9 <= f.done_ns as f64)
        {
            now = next_arrival;
            next_arrival += -(1.0 - rng.uniform()).ln() / (cfg.rate * max_load);
            let m = load(now);
            if !rng.bernoulli(m / max_load) {
                continue;
            }
            advance_to(now, &mut clock_ns);
            while outage_idx < outages.len() && outages[outage_idx].1 < now {
                outage_idx += 1;
            }
            let outage = fx
                .outages
                .filter(|_| outages.get(outage_idx).is_some_and(|o| o.0 <= now));
            let user = &users[alias.draw(rng)];
            let (load_err, load_lat) = match fx.cycle {
                Some(c) => (
                    (1.0 + c.load_errors * (m - 1.0)).max(0.0),
                    (1.0 + c.load_latency * (m - 1.0)).max(0.1),
                ),
                None => (1.0, 1.0),
            };
            let base_err = match user.bad_rate {
                Some(r) => r,
                None => (cfg.error_rate * user.error_mult).min(1.0),
            } * load_err;
            let u_err = rng.uniform();
            let mut latency = cfg.median.as_secs_f64()
                * user.latency_mult
                * load_lat
                * (cfg.sigma * rng.normal()).exp();
            if let Some(tail) = fx.heavy_tail
                && rng.bernoulli(tail.share)
            {
                latency *= (1.0 - rng.uniform()).powf(-1.0 / tail.alpha);
            }
            let mut outage_fail = false;
            if let Some(o) = outage {
                outage_fail = rng.bernoulli(o.error_rate);
                latency *= o.latency_factor;
            }
            let latency = latency.min(600.0);
            let stable = (outage_fail || u_err < base_err, latency);
            let canary = (
                outage_fail || u_err < base_err + reg.extra_errors,
                latency * reg.latency_factor,
            );
            let req = SimReq {
                key: user.key,
                arms: [
                    (stable.0, Duration::from_secs_f64(stable.1)),
                    (canary.0, Duration::from_secs_f64(canary.1)),
                ],
            };
            requests += 1;
            let fut = router.call(req);
            let (_, latency) = req.arms[fut.arm().index()];
            seq += 1;
            heap.push(Reverse(InFlight {
                done_ns: clock_ns + u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX),
                seq,
                fut,
            }));
        } else if heap
            .peek()
            .is_some_and(|Reverse(f)| (f.done_ns as f64) <= next_look * 1e9)
        {
            let Some(Reverse(mut f)) = heap.pop() else {
                continue;
            };
            if f.done_ns > clock_ns {
                clock.advance(Duration::from_nanos(f.done_ns - clock_ns));
                clock_ns = f.done_ns;
            }
            let _ = poll_now(&mut f.fut).expect("a simulated call completes at its time");
        } else {
            now = next_look;
            next_look += interval;
            advance_to(now, &mut clock_ns);
            let mut tick = Box::pin(controller.tick());
            let judgement = match poll_now(&mut tick) {
                Some(Ok(j)) => j,
                _ => return (RunEnd::Stuck, requests),
            };
            drop(tick);
            let within_min = !min_reached;
            min_reached |= judgement.samples.1 >= min;
            match controller.state().phase {
                Phase::RolledBack => {
                    return (
                        RunEnd::RolledBack {
                            canary_samples: judgement.samples.1,
                            within_min,
                        },
                        requests,
                    );
                }
                Phase::Promoted => return (RunEnd::Promoted, requests),
                Phase::Paused(_) => return (RunEnd::Stuck, requests),
                Phase::Progressing => {}
            }
            if now >= horizon {
                return (RunEnd::Stuck, requests);
            }
        }
    }
}
