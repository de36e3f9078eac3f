//! Plain-data configuration of a rate limit, validated into [`Params`] per degradation level.

use degrade_core::{ConfigError, Level};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The longest period a quota may have (one year): longer ones are almost certainly a unit
/// mistake.
const MAX_PERIOD: Duration = Duration::from_secs(365 * 24 * 3600);
/// The largest burst tolerance in nanoseconds (about 146 years), so that no time sum can
/// overflow a `u64` of nanoseconds.
const MAX_TOLERANCE_NS: u128 = 1 << 62;
/// The largest quota scale for a level.
const MAX_SCALE: f64 = 1000.0;

/// Configuration of a rate limit: `quota` units per `period`, with a `burst` of units that may
/// be spent at once, and how to treat a request over the budget.
///
/// Deserializes with humantime durations; every field has a default. [`validate`] names the
/// field that breaks a rule.
///
/// [`validate`]: RateLimitConfig::validate
///
/// ```
/// use degrade_ratelimit::RateLimitConfig;
///
/// let cfg: RateLimitConfig = serde_json::from_str(
///     r#"{ "quota": 500, "period": "1s", "burst": 50, "max_wait": "20ms", "max_waiters": 64 }"#,
/// ).unwrap();
/// assert!(cfg.validate().is_ok());
///
/// let bad: RateLimitConfig = serde_json::from_str(r#"{ "quota": 0 }"#).unwrap();
/// assert_eq!(bad.validate().unwrap_err().field(), "quota");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct RateLimitConfig {
    /// Units admitted per `period` in the long run (default 100).
    pub quota: u64,
    /// The period of the quota (default 1 s).
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    /// Units that may be spent at once from a full budget (default: unset, equal to `quota`).
    /// Zero is an error.
    pub burst: Option<u64>,
    /// Cost of a request, in units, when no cost function is set (default 1). Must be finite,
    /// greater than zero and at most the burst.
    pub cost: f64,
    /// How long a request may wait for budget before it is rejected instead (default zero:
    /// never wait, reject at once).
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// How many requests may wait at once; past it, rejection (default 1024). Used only when
    /// `max_wait` is not zero.
    pub max_waiters: u32,
    /// Quota multiplier per degradation level (default 1 at every level). Applies only when the
    /// layer is given a `LevelHandle`.
    pub level_scale: LevelScale,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            quota: 100,
            period: Duration::from_secs(1),
            burst: None,
            cost: 1.0,
            max_wait: Duration::ZERO,
            max_waiters: 1024,
            level_scale: LevelScale::default(),
        }
    }
}

/// Quota multiplier per degradation level: at `heavy = 0.25` the layer admits a quarter of its
/// quota while the ladder is at Heavy.
///
/// ```
/// use degrade_ratelimit::LevelScale;
/// use degrade_core::Level;
/// let s = LevelScale { heavy: 0.25, emergency: 0.1, ..LevelScale::default() };
/// assert_eq!(s.get(Level::Heavy), 0.25);
/// assert_eq!(s.get(Level::Normal), 1.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct LevelScale {
    pub normal: f64,
    pub light: f64,
    pub moderate: f64,
    pub heavy: f64,
    pub emergency: f64,
}

impl Default for LevelScale {
    fn default() -> Self {
        Self {
            normal: 1.0,
            light: 1.0,
            moderate: 1.0,
            heavy: 1.0,
            emergency: 1.0,
        }
    }
}

impl LevelScale {
    /// The multiplier at `level`.
    ///
    /// ```
    /// # use degrade_ratelimit::LevelScale; use degrade_core::Level;
    /// assert_eq!(LevelScale::default().get(Level::Emergency), 1.0);
    /// ```
    pub fn get(&self, level: Level) -> f64 {
        match level {
            Level::Normal => self.normal,
            Level::Light => self.light,
            Level::Moderate => self.moderate,
            Level::Heavy => self.heavy,
            Level::Emergency => self.emergency,
        }
    }
}

/// What the limiter needs at one level, precomputed: nanoseconds per unit, the burst tolerance
/// in nanoseconds, and the default cost in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Params {
    /// Emission interval: nanoseconds of budget per unit (rounded up, so never generous).
    pub(crate) unit_ns: u64,
    /// Burst tolerance: `burst × unit_ns`.
    pub(crate) tolerance_ns: u64,
    /// The default cost of a request in nanoseconds.
    pub(crate) cost_ns: u64,
    /// The default cost in whole units (rounded up), for the counters.
    pub(crate) cost_units: u64,
    /// Quota units per window at this level, for `RateLimit-Policy`.
    pub(crate) quota: u64,
    /// The window in nanoseconds.
    pub(crate) window_ns: u64,
}

impl RateLimitConfig {
    /// A configuration of `quota` units per `period`, burst equal to the quota, rejecting at
    /// once when over budget.
    ///
    /// ```
    /// use degrade_ratelimit::RateLimitConfig;
    /// use std::time::Duration;
    /// let cfg = RateLimitConfig::per(100, Duration::from_secs(1)).burst(10);
    /// assert_eq!(cfg.effective_burst(), 10);
    /// ```
    pub fn per(quota: u64, period: Duration) -> Self {
        Self {
            quota,
            period,
            ..Self::default()
        }
    }

    /// Sets the burst.
    ///
    /// ```
    /// # use degrade_ratelimit::RateLimitConfig; use std::time::Duration;
    /// assert_eq!(RateLimitConfig::per(5, Duration::from_secs(1)).burst(2).burst, Some(2));
    /// ```
    #[must_use]
    pub fn burst(mut self, burst: u64) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Lets requests wait up to `max_wait` for budget, at most `max_waiters` at a time.
    ///
    /// ```
    /// # use degrade_ratelimit::RateLimitConfig; use std::time::Duration;
    /// let cfg = RateLimitConfig::per(5, Duration::from_secs(1)).wait(Duration::from_millis(50), 8);
    /// assert_eq!(cfg.max_waiters, 8);
    /// ```
    #[must_use]
    pub fn wait(mut self, max_wait: Duration, max_waiters: u32) -> Self {
        self.max_wait = max_wait;
        self.max_waiters = max_waiters;
        self
    }

    /// Sets the quota scale per level.
    ///
    /// ```
    /// # use degrade_ratelimit::{LevelScale, RateLimitConfig}; use std::time::Duration;
    /// let cfg = RateLimitConfig::per(5, Duration::from_secs(1))
    ///     .level_scale(LevelScale { heavy: 0.5, ..Default::default() });
    /// assert_eq!(cfg.level_scale.heavy, 0.5);
    /// ```
    #[must_use]
    pub fn level_scale(mut self, scale: LevelScale) -> Self {
        self.level_scale = scale;
        self
    }

    /// The burst in force: `burst`, or `quota` when it is unset.
    ///
    /// ```
    /// # use degrade_ratelimit::RateLimitConfig; use std::time::Duration;
    /// assert_eq!(RateLimitConfig::per(40, Duration::from_secs(1)).effective_burst(), 40);
    /// ```
    pub fn effective_burst(&self) -> u64 {
        self.burst.unwrap_or(self.quota)
    }

    /// Checks every rule; the error names the field.
    ///
    /// ```
    /// use degrade_ratelimit::RateLimitConfig;
    /// use std::time::Duration;
    ///
    /// let err = RateLimitConfig::per(10, Duration::ZERO).validate().unwrap_err();
    /// assert_eq!(err.field(), "period");
    /// let mut cfg = RateLimitConfig::per(10, Duration::from_secs(1));
    /// cfg.cost = f64::NAN;
    /// assert_eq!(cfg.validate().unwrap_err().field(), "cost");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.params().map(|_| ())
    }

    /// Validates and computes the parameters of every level.
    pub(crate) fn params(&self) -> Result<[Params; 5], ConfigError> {
        if self.quota == 0 {
            return Err(ConfigError::new("quota", "must be greater than zero"));
        }
        if self.period.is_zero() {
            return Err(ConfigError::new("period", "must be greater than zero"));
        }
        if self.period > MAX_PERIOD {
            return Err(ConfigError::new("period", "must be at most one year"));
        }
        let burst = self.effective_burst();
        if burst == 0 {
            return Err(ConfigError::new("burst", "must be greater than zero"));
        }
        if !(self.cost.is_finite() && self.cost > 0.0) {
            return Err(ConfigError::new(
                "cost",
                format!(
                    "must be a finite number greater than zero, got {}",
                    self.cost
                ),
            ));
        }
        if self.cost > burst as f64 {
            return Err(ConfigError::new(
                "cost",
                format!(
                    "must be at most the burst ({burst}), or no request could ever pass, got {}",
                    self.cost
                ),
            ));
        }
        if !self.max_wait.is_zero() && self.max_waiters == 0 {
            return Err(ConfigError::new(
                "max_waiters",
                "must be greater than zero when max_wait is set",
            ));
        }
        if self.max_wait > MAX_PERIOD {
            return Err(ConfigError::new("max_wait", "must be at most one year"));
        }
        let mut out = [Params::default(); 5];
        for level in Level::ALL {
            let scale = self.level_scale.get(level);
            let field = || format!("level_scale.{level}");
            if !(scale.is_finite() && scale > 0.0 && scale <= MAX_SCALE) {
                return Err(ConfigError::new(
                    field(),
                    format!("must be a finite number in (0, {MAX_SCALE}], got {scale}"),
                ));
            }
            let period_ns = self.period.as_nanos() as f64;
            let exact = period_ns / (self.quota as f64 * scale);
            let unit = exact.ceil();
            if exact < 1.0 {
                let f = if level == Level::Normal {
                    "quota".to_owned()
                } else {
                    field()
                };
                return Err(ConfigError::new(
                    f,
                    "is absurd: more than one unit per nanosecond of period",
                ));
            }
            // `unit` ≤ period ≤ one year in nanoseconds, which fits a u64.
            let unit_ns = unit as u64;
            let tolerance = u128::from(unit_ns) * u128::from(burst);
            if tolerance > MAX_TOLERANCE_NS {
                return Err(ConfigError::new(
                    "burst",
                    "is absurd: burst × period / quota exceeds a century",
                ));
            }
            out[level.index()] = Params {
                unit_ns,
                tolerance_ns: tolerance as u64,
                cost_ns: (self.cost * unit).ceil().min(tolerance as f64) as u64,
                cost_units: self.cost.ceil() as u64,
                quota: ((self.quota as f64 * scale).round() as u64).max(1),
                window_ns: self.period.as_nanos() as u64,
            };
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_is_rounded_up() {
        let p = RateLimitConfig::per(3, Duration::from_secs(1))
            .params()
            .unwrap();
        assert_eq!(p[0].unit_ns, 333_333_334);
        assert_eq!(p[0].tolerance_ns, 3 * 333_333_334);
    }
}
