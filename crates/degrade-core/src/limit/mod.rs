//! The adaptive concurrency limit behind the [`DegradeLayer`](crate::DegradeLayer).
//!
//! (Module documentation is completed with the layer integration.)

mod inflight;
mod law;
mod limiter;
mod queue;
#[cfg(test)]
mod sim;

pub use self::law::{Law, Window};
pub use self::limiter::LimitSnapshot;
pub(crate) use self::limiter::{Completion, Entry, Limiter, Slot};
pub(crate) use self::queue::{Fate, Ticket};
#[cfg(test)]
pub(crate) use self::queue::{Pushed, WaitQueue};

use crate::config::{ConfigError, check_range};
use serde::{Deserialize, Serialize};

/// Configuration of the adaptive limit. Every field is dimensionless or a safety bound: none
/// needs to know the service, and the defaults are meant to be kept.
///
/// ```
/// use degrade_core::limit::LimitConfig;
/// let config: LimitConfig = serde_json::from_str(r#"{ "max": 200 }"#).unwrap();
/// assert_eq!(config.max, 200);
/// config.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitConfig {
    /// The limit before anything is learnt (default 16).
    pub initial: u32,
    /// The limit never goes below this (default 1).
    pub min: u32,
    /// The limit never goes above this (default 10 000): a safety bound, not a capacity.
    pub max: u32,
    /// The latency inflation over the no-load baseline at which the limit settles (default
    /// 0.1: the service runs at 110 % of its no-load latency, busy, with almost no queue).
    pub tolerance: f64,
    /// How long a request may wait for a slot, in baselines (default 0.5). A waiting request
    /// is served highest priority first; one that waited longer is refused.
    pub queue_delay: f64,
    /// Most requests waiting at once, in limits (default 1.0: as many as the limit).
    pub queue_size: f64,
    /// Below the limit, one admitted request in this many is timed (default 16); every request
    /// is timed once demand reaches half the limit.
    pub timing_every: u32,
}

impl Default for LimitConfig {
    fn default() -> Self {
        Self {
            initial: 16,
            min: 1,
            max: 10_000,
            tolerance: 0.1,
            queue_delay: 0.5,
            queue_size: 1.0,
            timing_every: 16,
        }
    }
}

impl LimitConfig {
    /// Checks every field, naming the first bad one.
    ///
    /// ```
    /// # use degrade_core::limit::LimitConfig;
    /// let mut c = LimitConfig::default();
    /// c.min = 0;
    /// assert_eq!(c.validate().unwrap_err().field(), "min");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.min == 0 {
            return Err(ConfigError::new("min", "must be at least 1"));
        }
        if self.max < self.min {
            return Err(ConfigError::new("max", "must be at least `min`"));
        }
        if self.max > 1_000_000 {
            return Err(ConfigError::new("max", "must be at most 1000000"));
        }
        if !(self.min..=self.max).contains(&self.initial) {
            return Err(ConfigError::new("initial", "must be within [min, max]"));
        }
        check_range("tolerance", self.tolerance, 0.01, 1.0)?;
        check_range("queue_delay", self.queue_delay, 0.0, 10.0)?;
        check_range("queue_size", self.queue_size, 0.0, 10.0)?;
        if self.timing_every == 0 || self.timing_every > 1 << 16 {
            return Err(ConfigError::new(
                "timing_every",
                "must be within [1, 65536]",
            ));
        }
        Ok(())
    }
}
