//! The breaker's configuration: plain, `serde`-deserializable data, validated into a
//! [`ConfigError`] that names the field.

use degrade_core::ConfigError;
use degrade_core::window::{MAX_BUCKETS, MAX_COUNT_SIZE};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Everything a breaker is told. Every field has a default, so a configuration file names
/// only what it changes; [`validate`](BreakerConfig::validate) (called by every builder) turns a
/// bad value into a [`ConfigError`] naming the field.
///
/// The defaults follow resilience4j where a default there is sound: a count window of the last
/// 100 calls, judged from 100 calls on, opening at a 50 % failure rate, for 60 s. Slow calls are
/// off by default (`slow_call_duration` unset), so the closed path reads no clock unless the
/// window is time-based.
///
/// ```
/// use degrade_breaker::{BreakerConfig, WindowConfig};
/// use std::time::Duration;
///
/// let config: BreakerConfig = serde_json::from_str(r#"{
///     "window": { "kind": "count", "size": 20 },
///     "minimum_calls": 10,
///     "failure_rate": 0.5,
///     "slow_call_duration": "2s",
///     "slow_call_rate": 0.8,
///     "wait": "30s",
///     "backoff": { "multiplier": 2.0, "max_wait": "5m", "jitter": 0.1 },
///     "half_open": { "permits": 2, "successes": 3 }
/// }"#)?;
/// assert_eq!(config.window, WindowConfig::Count { size: 20 });
/// assert_eq!(config.wait, Duration::from_secs(30));
/// config.validate()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// Which recent calls the breaker judges.
    pub window: WindowConfig,
    /// Open when at least this fraction of the window's calls failed; in (0, 1]. Not used by a
    /// consecutive window.
    pub failure_rate: f64,
    /// A successful call that took at least this long is slow. `None` (the default) turns slow
    /// calls off and keeps the clock off the closed path.
    #[serde(with = "humantime_serde")]
    pub slow_call_duration: Option<Duration>,
    /// Open when at least this fraction of the window's calls were slow; in (0, 1]. Used only
    /// with `slow_call_duration`.
    pub slow_call_rate: f64,
    /// Judge a count or time window only once it holds this many calls (at least 1; at most
    /// the size of a count window, which could otherwise never open).
    pub minimum_calls: u32,
    /// How long the breaker stays open before it lets probes through.
    #[serde(with = "humantime_serde")]
    pub wait: Duration,
    /// Longer waits across repeated openings.
    pub backoff: BackoffConfig,
    /// How the breaker probes the callee after a wait.
    pub half_open: HalfOpenConfig,
    /// What a call dropped before it finished counts as.
    pub cancelled: CancelledAs,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: WindowConfig::default(),
            failure_rate: 0.5,
            slow_call_duration: None,
            slow_call_rate: 1.0,
            minimum_calls: 100,
            wait: Duration::from_secs(60),
            backoff: BackoffConfig::default(),
            half_open: HalfOpenConfig::default(),
            cancelled: CancelledAs::Ignored,
        }
    }
}

/// The window a breaker judges (see `degrade_core::window`).
///
/// ```
/// use degrade_breaker::WindowConfig;
/// use std::time::Duration;
///
/// let w: WindowConfig = serde_json::from_str(r#"{"kind": "time", "span": "10s", "buckets": 10}"#)?;
/// assert_eq!(w, WindowConfig::Time { span: Duration::from_secs(10), buckets: 10 });
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum WindowConfig {
    /// Open after this many failures in a row (rates and `minimum_calls` do not apply).
    Consecutive {
        /// Failures in a row that open the breaker (at least 1).
        failures: u32,
    },
    /// The last `size` calls (resilience4j's `COUNT_BASED`).
    Count {
        /// Calls in the window (at least 1, at most a million).
        size: u32,
    },
    /// The calls of the last `span`, in `buckets` buckets (resilience4j's `TIME_BASED`).
    ///
    /// Reading this window costs a pass over its buckets, so it is judged after each failure
    /// or slow call, not after successes: when a success is what brings the window to
    /// `minimum_calls`, the breaker opens at the next failure rather than at that success.
    Time {
        /// How far back the window reaches.
        #[serde(with = "humantime_serde")]
        span: Duration,
        /// Buckets the span is cut into (1 to 10 000, each at least 1 ms wide).
        buckets: u32,
    },
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig::Count { size: 100 }
    }
}

/// Exponential backoff of the open wait across repeated openings, with deterministic jitter.
///
/// The n-th opening in a row (a probe failing counts; closing starts over) waits
/// `wait · multiplier^(n-1)`, at most `max_wait`, then shortened by up to `jitter` of itself.
/// The jitter is a seeded hash of the breaker and the opening, not a random number: it spreads
/// the probes of many breakers (keyed breakers, many instances) without a syscall, and a test
/// can predict it.
///
/// ```
/// use degrade_breaker::BackoffConfig;
/// let b = BackoffConfig::default();
/// assert_eq!(b.multiplier, 1.0); // no backoff
/// assert_eq!(b.jitter, 0.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct BackoffConfig {
    /// Growth of the wait per repeated opening; at least 1 (1 means no backoff).
    pub multiplier: f64,
    /// The longest wait backoff may reach; at least `wait`.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Fraction of the wait that jitter may take off; in [0, 1).
    pub jitter: f64,
    /// Seed of the jitter hash; breakers built from one configuration still differ, since each
    /// breaker mixes in its own identity.
    pub seed: u64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            multiplier: 1.0,
            max_wait: Duration::from_secs(600),
            jitter: 0.0,
            seed: 0,
        }
    }
}

/// How the breaker probes after its wait.
///
/// ```
/// use degrade_breaker::{HalfOpenConfig, TimeoutTarget};
/// let h = HalfOpenConfig::default();
/// assert_eq!((h.permits, h.successes, h.failures), (1, 3, 1));
/// assert_eq!(h.max_duration, None);
/// assert_eq!(h.on_timeout, TimeoutTarget::Open);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct HalfOpenConfig {
    /// Probes in flight at once (at least 1). Every other call is rejected meanwhile.
    pub permits: u32,
    /// Successful probes that close the breaker (at least 1).
    pub successes: u32,
    /// Failed probes that open it again (at least 1). A slow probe is a failed probe when slow
    /// calls are on.
    pub failures: u32,
    /// The longest the breaker may stay half-open (unset: until the probes decide).
    #[serde(with = "humantime_serde")]
    pub max_duration: Option<Duration>,
    /// Where the breaker goes when `max_duration` runs out.
    pub on_timeout: TimeoutTarget,
}

impl Default for HalfOpenConfig {
    fn default() -> Self {
        Self {
            permits: 1,
            successes: 3,
            failures: 1,
            max_duration: None,
            on_timeout: TimeoutTarget::Open,
        }
    }
}

/// Where a breaker goes when it has been half-open for `half_open.max_duration`.
///
/// ```
/// use degrade_breaker::TimeoutTarget;
/// let t: TimeoutTarget = serde_json::from_str("\"closed\"")?;
/// assert_eq!(t, TimeoutTarget::Closed);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TimeoutTarget {
    /// Open again (a new wait, with backoff): probes that never answer are a bad sign.
    #[default]
    Open,
    /// Close: give the callee the benefit of the doubt.
    Closed,
}

/// What a call that was dropped before it finished (a cancelled request, a client gone)
/// counts as.
///
/// ```
/// use degrade_breaker::CancelledAs;
/// assert_eq!(CancelledAs::default(), CancelledAs::Ignored);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CancelledAs {
    /// Not a call at all: a client that gave up says nothing about the callee.
    #[default]
    Ignored,
    /// A failure: for callers whose cancellations are timeouts of their own.
    Failure,
}

impl CancelledAs {
    pub(crate) fn outcome(self) -> degrade_core::Outcome {
        match self {
            CancelledAs::Ignored => degrade_core::Outcome::Ignored,
            CancelledAs::Failure => degrade_core::Outcome::Failure,
        }
    }
}

fn rate(field: &'static str, value: f64) -> Result<(), ConfigError> {
    if value.is_finite() && value > 0.0 && value <= 1.0 {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("must be a rate in (0, 1], got {value}"),
        ))
    }
}

fn at_least_one(field: &'static str, value: u32) -> Result<(), ConfigError> {
    if value == 0 {
        Err(ConfigError::new(field, "must be at least 1"))
    } else {
        Ok(())
    }
}

impl BreakerConfig {
    /// Checks every field. Builders call it; call it yourself to check a configuration early.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first bad field: a rate outside (0, 1], an empty window,
    /// zero permits, a zero wait, a backoff multiplier below 1, jitter outside [0, 1), and
    /// so on.
    ///
    /// ```
    /// use degrade_breaker::{BreakerConfig, WindowConfig};
    ///
    /// let mut c = BreakerConfig::default();
    /// c.failure_rate = 1.5;
    /// assert_eq!(c.validate().unwrap_err().field(), "failure_rate");
    ///
    /// let mut c = BreakerConfig::default();
    /// c.window = WindowConfig::Count { size: 0 };
    /// assert_eq!(c.validate().unwrap_err().field(), "window.size");
    ///
    /// let mut c = BreakerConfig::default();
    /// c.half_open.permits = 0;
    /// assert_eq!(c.validate().unwrap_err().field(), "half_open.permits");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.window {
            WindowConfig::Consecutive { failures } => {
                at_least_one("failures", failures).map_err(|e| e.within("window"))?;
                if self.slow_call_duration.is_some() {
                    return Err(ConfigError::new(
                        "slow_call_duration",
                        "slow calls need a count or time window (a consecutive window counts failures only)",
                    ));
                }
            }
            WindowConfig::Count { size } => {
                at_least_one("size", size).map_err(|e| e.within("window"))?;
                if size > MAX_COUNT_SIZE {
                    return Err(ConfigError::new(
                        "window.size",
                        format!("must be at most {MAX_COUNT_SIZE} calls"),
                    ));
                }
                if self.minimum_calls > size {
                    return Err(ConfigError::new(
                        "minimum_calls",
                        format!("must not exceed window.size ({size}), or the breaker never opens"),
                    ));
                }
            }
            WindowConfig::Time { span, buckets } => {
                at_least_one("buckets", buckets).map_err(|e| e.within("window"))?;
                if buckets > MAX_BUCKETS {
                    return Err(ConfigError::new(
                        "window.buckets",
                        format!("must be at most {MAX_BUCKETS}"),
                    ));
                }
                if span.is_zero() {
                    return Err(ConfigError::new("window.span", "must be greater than zero"));
                }
                if u64::try_from(span.as_nanos()).is_err() {
                    return Err(ConfigError::new("window.span", "must be under 584 years"));
                }
                if span / buckets < Duration::from_millis(1) {
                    return Err(ConfigError::new(
                        "window.buckets",
                        "each bucket must be at least 1 ms wide (span / buckets)",
                    ));
                }
            }
        }
        rate("failure_rate", self.failure_rate)?;
        rate("slow_call_rate", self.slow_call_rate)?;
        if self.slow_call_duration.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new(
                "slow_call_duration",
                "must be greater than zero",
            ));
        }
        at_least_one("minimum_calls", self.minimum_calls)?;
        if self.wait.is_zero() {
            return Err(ConfigError::new("wait", "must be greater than zero"));
        }
        self.backoff
            .validate(self.wait)
            .map_err(|e| e.within("backoff"))?;
        self.half_open.validate().map_err(|e| e.within("half_open"))
    }
}

impl BackoffConfig {
    fn validate(&self, wait: Duration) -> Result<(), ConfigError> {
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(ConfigError::new(
                "multiplier",
                format!(
                    "must be a finite number of at least 1, got {}",
                    self.multiplier
                ),
            ));
        }
        if self.max_wait < wait {
            return Err(ConfigError::new("max_wait", "must be at least `wait`"));
        }
        if !(self.jitter.is_finite() && (0.0..1.0).contains(&self.jitter)) {
            return Err(ConfigError::new(
                "jitter",
                format!("must be a fraction in [0, 1), got {}", self.jitter),
            ));
        }
        Ok(())
    }
}

impl BreakerConfig {
    /// Checks that a breaker running under `self` can take `new` while it runs: `new` is
    /// valid, and it changes only what [`BreakerHandle::reconfigure`](crate::BreakerHandle::reconfigure)
    /// can change live — the thresholds (`failure_rate`, `slow_call_rate`, `minimum_calls`,
    /// a consecutive window's `failures`), `wait`, `backoff` (but its `seed`) and the half-open
    /// `successes`, `failures`, `max_duration` and `on_timeout`. The window's kind and size,
    /// `slow_call_duration`, `cancelled`, `half_open.permits` and `backoff.seed` shape the
    /// breaker's lock-free parts and need a new breaker: a change to them is an error naming
    /// the field, saying it requires a restart.
    ///
    /// ```
    /// use degrade_breaker::{BreakerConfig, WindowConfig};
    /// let old = BreakerConfig::default();
    /// let mut new = old.clone();
    /// new.failure_rate = 0.2;
    /// old.live_change(&new).unwrap();
    /// new.window = WindowConfig::Count { size: 200 };
    /// let err = old.live_change(&new).unwrap_err();
    /// assert_eq!(err.field(), "window");
    /// assert!(err.to_string().contains("requires a restart"));
    /// ```
    pub fn live_change(&self, new: &BreakerConfig) -> Result<(), ConfigError> {
        new.validate()?;
        let same_window = match (self.window, new.window) {
            (WindowConfig::Consecutive { .. }, WindowConfig::Consecutive { .. }) => true,
            (a, b) => a == b,
        };
        let restart = |field: &'static str| {
            Err(ConfigError::new(
                field,
                "requires a restart (it shapes the breaker's lock-free window and permits); nothing was changed",
            ))
        };
        if !same_window {
            return restart("window");
        }
        if new.slow_call_duration != self.slow_call_duration {
            return restart("slow_call_duration");
        }
        if new.cancelled != self.cancelled {
            return restart("cancelled");
        }
        if new.half_open.permits != self.half_open.permits {
            return restart("half_open.permits");
        }
        if new.backoff.seed != self.backoff.seed {
            return restart("backoff.seed");
        }
        Ok(())
    }
}

impl HalfOpenConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        at_least_one("permits", self.permits)?;
        at_least_one("successes", self.successes)?;
        at_least_one("failures", self.failures)?;
        if self.max_duration.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new(
                "max_duration",
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}
