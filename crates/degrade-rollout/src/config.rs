//! RolloutController settings and their Kubernetes-style resolution.

use degrade_canary::JudgeConfig;
use degrade_core::ConfigError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// An absolute number of instances or a percentage of the instance set, as in a Kubernetes
/// `RollingUpdate` (`maxSurge: 1` or `maxSurge: "25%"`).
///
/// ```
/// use degrade_rollout::Amount;
/// let a: Amount = serde_json::from_str(r#""25%""#).unwrap();
/// assert_eq!(a, Amount::Percent(25));
/// let b: Amount = serde_json::from_str("2").unwrap();
/// assert_eq!(b, Amount::Count(2));
/// assert_eq!(a.to_string(), "25%");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    /// This many instances.
    Count(u32),
    /// This percentage (0–100) of the instance set.
    Percent(u32),
}

impl Amount {
    fn is_zero(self) -> bool {
        matches!(self, Amount::Count(0) | Amount::Percent(0))
    }

    /// Resolves against `n` instances; percentages round up when `round_up` (max surge) and
    /// down otherwise (max unavailable), as Kubernetes does.
    fn resolve(self, n: usize, round_up: bool) -> usize {
        match self {
            Amount::Count(c) => usize::try_from(c).unwrap_or(usize::MAX),
            Amount::Percent(p) => {
                // In u128 so that no `n` overflows; the result is at most `n` for p <= 100.
                let scaled = n as u128 * u128::from(p.min(100));
                let share = if round_up {
                    scaled.div_ceil(100)
                } else {
                    scaled / 100
                };
                usize::try_from(share).unwrap_or(usize::MAX)
            }
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(c) => write!(f, "{c}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum AmountRepr {
    Count(u32),
    Text(String),
}

impl Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Amount::Count(c) => AmountRepr::Count(*c),
            Amount::Percent(_) => AmountRepr::Text(self.to_string()),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match AmountRepr::deserialize(d)? {
            AmountRepr::Count(c) => Ok(Amount::Count(c)),
            AmountRepr::Text(t) => {
                let t = t.trim();
                let parsed = match t.strip_suffix('%') {
                    Some(p) => p.trim().parse().map(Amount::Percent),
                    None => t.parse().map(Amount::Count),
                };
                parsed.map_err(|_| {
                    serde::de::Error::custom(format!(
                        "expected a count or a percentage like \"25%\", got {t:?}"
                    ))
                })
            }
        }
    }
}

/// Canary analysis of each upgraded batch against the instances not yet upgraded.
///
/// ```
/// use degrade_rollout::AnalysisConfig;
/// let a: AnalysisConfig = serde_json::from_str(
///     r#"{"duration": "30s", "warmup": "2s", "judge": {"min_samples": 200}}"#,
/// ).unwrap();
/// assert_eq!(a.duration, std::time::Duration::from_secs(30));
/// assert_eq!(a.warmup, std::time::Duration::from_secs(2));
/// assert!(a.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalysisConfig {
    /// The judge comparing the upgraded instances (canary arm) with the others (stable arm).
    pub judge: JudgeConfig,
    /// How long each batch is analysed, at most. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Time between looks of the judge. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Time after the batch is in service before the judge starts counting: calls in it are
    /// left out of both arms. A process that has just started is often slower for a while
    /// (cold caches, lazy initialisation, new connections, a scheduler that has not given it
    /// its share yet); judged from its first call, a good release can read as a latency
    /// regression and be rolled back. Set it to cover your service's warm-up. `duration`
    /// counts from its end. Default 0 (judge from the first call).
    #[serde(with = "humantime_serde")]
    pub warmup: Duration,
    /// When true, a batch whose analysis ends inconclusive fails the rollout; otherwise it
    /// proceeds (and says so in the logs). Default false.
    pub require_pass: bool,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        Self {
            judge: JudgeConfig::default(),
            duration: Duration::from_secs(30),
            interval: Duration::from_secs(1),
            warmup: Duration::ZERO,
            require_pass: false,
        }
    }
}

impl AnalysisConfig {
    /// Checks every field; the error names the first bad one.
    ///
    /// ```
    /// # use degrade_rollout::AnalysisConfig;
    /// let a = AnalysisConfig { interval: std::time::Duration::ZERO, ..Default::default() };
    /// assert_eq!(a.validate().unwrap_err().field(), "interval");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.judge.validate().map_err(|e| e.within("judge"))?;
        if self.duration.is_zero() {
            return Err(ConfigError::new("duration", "must be greater than zero"));
        }
        if self.interval.is_zero() {
            return Err(ConfigError::new("interval", "must be greater than zero"));
        }
        Ok(())
    }
}

/// Settings of a rollout, with Kubernetes `RollingUpdate` semantics.
///
/// ```
/// use degrade_rollout::{Amount, RolloutConfig};
/// let cfg: RolloutConfig = serde_json::from_str(
///     r#"{"max_surge": "25%", "max_unavailable": 0, "min_ready": "5s", "progress_deadline": "2m"}"#,
/// ).unwrap();
/// let limits = cfg.limits(4).unwrap();
/// assert_eq!((limits.surge, limits.unavailable), (1, 0));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutConfig {
    /// Instances that may run above the desired count (replacements started on spare
    /// addresses before the instance they replace is retired). Percentages round up.
    /// Default 0.
    pub max_surge: Amount,
    /// Instances that may be out of service at once (upgraded in place). Percentages round
    /// down. Default 1. Surge and unavailable may not both be zero.
    pub max_unavailable: Amount,
    /// Time an upgraded instance must stay healthy, serving, before it counts as available
    /// (Kubernetes `minReadySeconds`). Default 5 s.
    #[serde(with = "humantime_serde")]
    pub min_ready: Duration,
    /// Longest time a batch may go without progress (a driver step finishing or an instance
    /// passing its health gate) before the rollout fails. Default 10 min.
    #[serde(with = "humantime_serde")]
    pub progress_deadline: Duration,
    /// Time between health checks of a starting or baking instance. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
    /// Consecutive healthy checks before an instance is ready. Default 3.
    pub healthy_threshold: u32,
    /// Consecutive failed checks that fail an instance (and the rollout). Default 3.
    pub failure_threshold: u32,
    /// Time after a start during which failed checks of a not-yet-ready instance do not count
    /// towards `failure_threshold` (a slow start is not a failure; Kubernetes'
    /// `initialDelaySeconds`). The progress deadline still applies. Default 0.
    #[serde(with = "humantime_serde")]
    pub startup_grace: Duration,
    /// Longest wait for a drained instance's in-flight requests to finish. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Longest wait for one health check. Default 2 s.
    #[serde(with = "humantime_serde")]
    pub health_timeout: Duration,
    /// How long the instances the rollout changed stay watched after its last batch (health
    /// checks every `health_interval`, their processes watched for an exit) before it ends as
    /// completed. A failure meanwhile — or earlier, of an instance upgraded in a previous
    /// batch — fails the rollout and rolls every changed instance back, as a Kubernetes
    /// Deployment whose updated pods go unready would. Zero means one last passing check of
    /// each; otherwise at least `health_interval`. Default 1 min.
    #[serde(with = "humantime_serde")]
    pub post_watch: Duration,
    /// Optional analysis of each batch with the canary judge.
    pub analysis: Option<AnalysisConfig>,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            max_surge: Amount::Count(0),
            max_unavailable: Amount::Count(1),
            min_ready: Duration::from_secs(5),
            progress_deadline: Duration::from_secs(600),
            health_interval: Duration::from_secs(1),
            healthy_threshold: 3,
            failure_threshold: 3,
            startup_grace: Duration::ZERO,
            drain_timeout: Duration::from_secs(30),
            health_timeout: Duration::from_secs(2),
            post_watch: Duration::from_secs(60),
            analysis: None,
        }
    }
}

/// Max surge and max unavailable resolved against an instance count.
///
/// ```
/// use degrade_rollout::{Amount, RolloutConfig};
/// let cfg = RolloutConfig { max_surge: Amount::Percent(10), max_unavailable: Amount::Percent(10), ..Default::default() };
/// let l = cfg.limits(4).unwrap();
/// assert_eq!((l.surge, l.unavailable), (1, 0)); // 0.4 rounds up for surge, down for unavailable
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Limits {
    /// Instances allowed above the desired count.
    pub surge: usize,
    /// Instances allowed out of service.
    pub unavailable: usize,
}

impl RolloutConfig {
    /// Checks every field; the error names the first bad one.
    ///
    /// ```
    /// # use degrade_rollout::{Amount, RolloutConfig};
    /// let cfg = RolloutConfig { max_surge: Amount::Count(0), max_unavailable: Amount::Percent(0), ..Default::default() };
    /// assert_eq!(cfg.validate().unwrap_err().field(), "max_unavailable");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, a) in [
            ("max_surge", self.max_surge),
            ("max_unavailable", self.max_unavailable),
        ] {
            if let Amount::Percent(p) = a
                && p > 100
            {
                return Err(ConfigError::new(field, "a percentage must be at most 100%"));
            }
        }
        if self.max_surge.is_zero() && self.max_unavailable.is_zero() {
            return Err(ConfigError::new(
                "max_unavailable",
                "max_surge and max_unavailable may not both be zero",
            ));
        }
        let positive = |field: &'static str, d: Duration| {
            if d.is_zero() {
                Err(ConfigError::new(field, "must be greater than zero"))
            } else {
                Ok(())
            }
        };
        positive("progress_deadline", self.progress_deadline)?;
        positive("health_interval", self.health_interval)?;
        positive("drain_timeout", self.drain_timeout)?;
        positive("health_timeout", self.health_timeout)?;
        if !self.post_watch.is_zero() && self.post_watch < self.health_interval {
            return Err(ConfigError::new(
                "post_watch",
                "must be zero (one last check) or at least health_interval (a shorter watch sees no more checks than zero)",
            ));
        }
        if self.healthy_threshold == 0 {
            return Err(ConfigError::new("healthy_threshold", "must be at least 1"));
        }
        if self.failure_threshold == 0 {
            return Err(ConfigError::new("failure_threshold", "must be at least 1"));
        }
        if let Some(a) = &self.analysis {
            a.validate().map_err(|e| e.within("analysis"))?;
        }
        Ok(())
    }

    /// Validates and resolves max surge and max unavailable for `n` instances: surge
    /// percentages round up, unavailable percentages round down, and when both resolve to
    /// zero max unavailable becomes 1 (as in Kubernetes).
    ///
    /// ```
    /// # use degrade_rollout::{Amount, RolloutConfig};
    /// let cfg = RolloutConfig { max_surge: Amount::Count(0), max_unavailable: Amount::Percent(25), ..Default::default() };
    /// assert_eq!(cfg.limits(3).unwrap().unavailable, 1); // 0.75 rounds down to 0, then 1
    /// assert_eq!(cfg.limits(0).unwrap_err().field(), "instances");
    /// ```
    pub fn limits(&self, n: usize) -> Result<Limits, ConfigError> {
        self.validate()?;
        if n == 0 {
            return Err(ConfigError::new("instances", "must not be empty"));
        }
        let surge = self.max_surge.resolve(n, true);
        let mut unavailable = self.max_unavailable.resolve(n, false).min(n);
        if surge == 0 && unavailable == 0 {
            unavailable = 1;
        }
        Ok(Limits { surge, unavailable })
    }
}
