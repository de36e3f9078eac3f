//! The signals read from an [`ObserveLayer`](super::ObserveLayer)'s histogram.

use super::Source;
use super::histogram::{COUNTERS, Window, signal_id};
use crate::scale::{LevelThresholds, Scale};
use crate::signal::{Sample, Signal, SignalError};
use degrade_core::ConfigError;
use degrade_core::ladder::Thresholds;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Which latency statistic the latency signal compares with its thresholds.
///
/// ```
/// use degrade_triggers::observe::LatencyStat;
/// assert_eq!(serde_json::from_str::<LatencyStat>(r#""p99""#).unwrap(), LatencyStat::P99);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LatencyStat {
    /// The median.
    P50,
    /// The 99th percentile (the default).
    #[default]
    P99,
    /// The mean.
    Mean,
}

/// The latency signal's configuration.
///
/// Thresholds are in milliseconds (defaults 100 / 250 / 500 / 1000 ms for Light / Moderate /
/// Heavy / Emergency). With `sla` set, the thresholds are ignored and pressure is proportional
/// to `stat / sla` (Light at 70 % of the SLA, Emergency at 95 %, see [`Scale::proportional`]).
/// Fewer than `min_calls` timed calls in the window read as unknown: a latency of three requests is
/// noise, and an idle service has no latency at all.
///
/// ```
/// use degrade_triggers::observe::{LatencyConfig, LatencyStat};
/// use std::time::Duration;
/// let cfg: LatencyConfig = serde_json::from_str(r#"{ "stat": "p50", "sla": "200ms" }"#).unwrap();
/// assert_eq!(cfg.sla, Some(Duration::from_millis(200)));
/// assert_eq!(cfg.window, Duration::from_secs(10));
/// cfg.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LatencyConfig {
    /// The signal's name (default `"latency"`).
    pub name: String,
    /// The statistic (default p99).
    pub stat: LatencyStat,
    /// Per-level thresholds in milliseconds.
    pub thresholds: LevelThresholds,
    /// An SLA instead of thresholds.
    #[serde(with = "humantime_serde")]
    pub sla: Option<Duration>,
    /// The sliding window (default 10 s).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Fewer timed calls than this in the window read as unknown (default 10).
    pub min_calls: u64,
}

impl Default for LatencyConfig {
    fn default() -> Self {
        Self {
            name: "latency".into(),
            stat: LatencyStat::P99,
            thresholds: LevelThresholds::new(100.0, 250.0, 500.0, 1000.0),
            sla: None,
            window: Duration::from_secs(10),
            min_calls: 10,
        }
    }
}

impl LatencyConfig {
    /// Checks the thresholds (or the SLA) and the window.
    ///
    /// ```
    /// # use degrade_triggers::observe::LatencyConfig; use std::time::Duration;
    /// let bad = LatencyConfig { sla: Some(Duration::ZERO), ..Default::default() };
    /// assert_eq!(bad.validate().unwrap_err().field(), "sla");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.scale(&Thresholds::default()).map(|_| ())
    }

    fn scale(&self, anchors: &Thresholds) -> Result<Scale, ConfigError> {
        if self.window.is_zero() {
            return Err(ConfigError::new("window", "must be greater than zero"));
        }
        match self.sla {
            Some(sla) => Scale::proportional_anchored(sla.as_secs_f64() * 1000.0, anchors)
                .map_err(|_| ConfigError::new("sla", "must be greater than zero")),
            None => {
                Scale::with_anchors(self.thresholds, anchors).map_err(|e| e.within("thresholds"))
            }
        }
    }
}

/// The configuration of a rate signal (errors, timeouts, slow calls), in percent of calls.
///
/// ```
/// use degrade_triggers::observe::RateConfig;
/// let cfg: RateConfig = serde_json::from_str(r#"{ "min_calls": 50 }"#).unwrap();
/// assert_eq!(cfg.thresholds.light, 5.0);
/// assert_eq!(RateConfig { min_calls: 0, ..cfg }.validate().unwrap_err().field(), "min_calls");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateConfig {
    /// The signal's name (default: `"errors"`, `"timeouts"` or `"slow"` by the method used).
    pub name: Option<String>,
    /// Per-level thresholds in percent of calls (errors default 5 / 10 / 25 / 50 %).
    pub thresholds: LevelThresholds,
    /// The sliding window (default 10 s).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Fewer calls than this in the window read as unknown (default 20).
    pub min_calls: u64,
}

impl Default for RateConfig {
    fn default() -> Self {
        Self::errors()
    }
}

impl RateConfig {
    /// Defaults for an error rate: 5 / 10 / 25 / 50 %.
    ///
    /// ```
    /// # use degrade_triggers::observe::RateConfig;
    /// assert_eq!(RateConfig::errors().thresholds.emergency, 50.0);
    /// ```
    pub fn errors() -> Self {
        Self {
            name: None,
            thresholds: LevelThresholds::new(5.0, 10.0, 25.0, 50.0),
            window: Duration::from_secs(10),
            min_calls: 20,
        }
    }

    /// Defaults for a timeout rate: 1 / 5 / 10 / 25 %.
    ///
    /// ```
    /// # use degrade_triggers::observe::RateConfig;
    /// assert_eq!(RateConfig::timeouts().thresholds.light, 1.0);
    /// ```
    pub fn timeouts() -> Self {
        Self {
            thresholds: LevelThresholds::new(1.0, 5.0, 10.0, 25.0),
            ..Self::errors()
        }
    }

    /// Checks thresholds, window and `min_calls`.
    ///
    /// ```
    /// # use degrade_triggers::observe::RateConfig;
    /// assert!(RateConfig::timeouts().validate().is_ok());
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.window.is_zero() {
            return Err(ConfigError::new("window", "must be greater than zero"));
        }
        if self.min_calls == 0 {
            return Err(ConfigError::new("min_calls", "must be at least 1"));
        }
        Scale::new(self.thresholds).map_err(|e| e.within("thresholds"))?;
        Ok(())
    }
}

/// The in-flight signal's configuration: calls started and not finished, against thresholds
/// (defaults 100 / 200 / 400 / 800).
///
/// ```
/// use degrade_triggers::observe::InFlightConfig;
/// let cfg: InFlightConfig = serde_json::from_str(r#"{ "thresholds": { "light": 10, "moderate": 20, "heavy": 40, "emergency": 80 } }"#).unwrap();
/// assert_eq!(cfg.name, "in_flight");
/// cfg.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InFlightConfig {
    /// The signal's name (default `"in_flight"`).
    pub name: String,
    /// Per-level thresholds in calls.
    pub thresholds: LevelThresholds,
}

impl Default for InFlightConfig {
    fn default() -> Self {
        Self {
            name: "in_flight".into(),
            thresholds: LevelThresholds::new(100.0, 200.0, 400.0, 800.0),
        }
    }
}

impl InFlightConfig {
    /// Checks the thresholds.
    ///
    /// ```
    /// # use degrade_triggers::observe::InFlightConfig;
    /// assert!(InFlightConfig::default().validate().is_ok());
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        Scale::new(self.thresholds)
            .map(|_| ())
            .map_err(|e| e.within("thresholds"))
    }
}

enum Metric {
    Latency(LatencyStat),
    Rate(usize),
    InFlight,
}

/// A signal read from an [`ObserveLayer`](super::ObserveLayer): latency (ms), a rate (percent)
/// or in-flight calls. Made by the layer's `latency`, `error_rate`, `timeout_rate`,
/// `slow_rate` and `in_flight` methods.
///
/// ```
/// use degrade_triggers::{ObserveLayer, Signal, observe::InFlightConfig};
/// let layer = ObserveLayer::new();
/// let mut s = layer.in_flight(InFlightConfig::default())?;
/// assert_eq!(s.name(), "in_flight");
/// assert_eq!(s.sample(tokio::time::Instant::now()).unwrap().unwrap().value, 0.0);
/// # Ok::<(), degrade_core::ConfigError>(())
/// ```
pub struct ObserveSignal {
    name: String,
    source: Arc<dyn Source>,
    metric: Metric,
    scale: Scale,
    window: Option<Window>,
    min_calls: u64,
    /// This signal's id, for the timing share a latency signal asks of the layer.
    id: u64,
}

impl fmt::Debug for ObserveSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObserveSignal")
            .field("name", &self.name)
            .field("scale", &self.scale)
            .finish_non_exhaustive()
    }
}

impl ObserveSignal {
    pub(crate) fn latency(
        source: Arc<dyn Source>,
        config: LatencyConfig,
        anchors: &Thresholds,
    ) -> Result<Self, ConfigError> {
        let scale = config.scale(anchors)?;
        Ok(Self {
            name: config.name,
            source,
            metric: Metric::Latency(config.stat),
            scale,
            window: Some(Window::new(config.window, true)),
            min_calls: config.min_calls,
            id: signal_id(),
        })
    }

    pub(crate) fn rate(
        source: Arc<dyn Source>,
        config: RateConfig,
        counter: usize,
        default_name: &str,
        anchors: &Thresholds,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        debug_assert!(counter < COUNTERS);
        Ok(Self {
            name: config.name.unwrap_or_else(|| default_name.to_owned()),
            source,
            metric: Metric::Rate(counter),
            scale: Scale::with_anchors(config.thresholds, anchors)
                .map_err(|e| e.within("thresholds"))?,
            window: Some(Window::new(config.window, false)),
            min_calls: config.min_calls,
            id: signal_id(),
        })
    }

    pub(crate) fn in_flight(
        source: Arc<dyn Source>,
        config: InFlightConfig,
        anchors: &Thresholds,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            name: config.name,
            source,
            metric: Metric::InFlight,
            scale: Scale::with_anchors(config.thresholds, anchors)
                .map_err(|e| e.within("thresholds"))?,
            window: None,
            min_calls: 0,
            id: signal_id(),
        })
    }
}

impl Signal for ObserveSignal {
    fn name(&self) -> &str {
        &self.name
    }

    fn sample(&mut self, now: Instant) -> Result<Option<Sample>, SignalError> {
        let hist = self.source.histogram();
        let value = match (&self.metric, &mut self.window) {
            (Metric::InFlight, _) => Some(hist.in_flight() as f64),
            (_, None) => None,
            (metric, Some(window)) => {
                window.update(hist, now);
                let c = &window.result;
                // A latency is known from the timed calls; their share follows the traffic.
                let counted = match metric {
                    Metric::Latency(_) => {
                        hist.window_saw(self.id, c.calls);
                        c.timed()
                    }
                    _ => c.calls,
                };
                if counted < self.min_calls.max(1) {
                    None
                } else {
                    match metric {
                        Metric::Latency(LatencyStat::P50) => {
                            c.quantile(0.50).map(|ns| ns as f64 / 1e6)
                        }
                        Metric::Latency(LatencyStat::P99) => {
                            c.quantile(0.99).map(|ns| ns as f64 / 1e6)
                        }
                        Metric::Latency(LatencyStat::Mean) => c.mean().map(|ns| ns / 1e6),
                        Metric::Rate(counter) => {
                            Some(100.0 * c.counters[*counter] as f64 / c.calls as f64)
                        }
                        Metric::InFlight => None,
                    }
                }
            }
        };
        Ok(value.map(|v| Sample::scaled(v, &self.scale)))
    }
}
