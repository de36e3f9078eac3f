//! The tokio scheduling-delay signal: how late a periodic tick runs.
//!
//! A runtime whose workers are busy (or blocked by synchronous work) runs every task late. A
//! probe task asks to wake every `period` and records how late it actually woke; the signal
//! reports the worst lateness since its previous sample, in milliseconds. If the probe has not
//! run at all since the previous sample, the time since its last wake-up beyond one period
//! counts as lateness too, so a runtime stuck solid still reads as late.

use crate::scale::{LevelThresholds, Scale};
use crate::signal::{Sample, Signal, SignalError};
use degrade_core::ConfigError;
use degrade_core::ladder::Thresholds;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

/// The scheduling-delay signal's configuration: the probe's period (default 100 ms) and
/// thresholds in milliseconds of lateness (default 10 / 25 / 50 / 100 ms).
///
/// ```
/// use degrade_triggers::LagConfig;
/// use std::time::Duration;
/// let cfg: LagConfig = serde_json::from_str(r#"{ "period": "50ms" }"#).unwrap();
/// assert_eq!(cfg.period, Duration::from_millis(50));
/// assert_eq!(LagConfig { period: Duration::ZERO, ..cfg }.validate().unwrap_err().field(), "period");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LagConfig {
    /// The signal's name (default `"tokio_lag"`).
    pub name: String,
    /// How often the probe asks to wake.
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    /// Per-level thresholds in milliseconds.
    pub thresholds: LevelThresholds,
}

impl Default for LagConfig {
    fn default() -> Self {
        Self {
            name: "tokio_lag".into(),
            period: Duration::from_millis(100),
            thresholds: LevelThresholds::new(10.0, 25.0, 50.0, 100.0),
        }
    }
}

impl LagConfig {
    /// Checks the period and the thresholds.
    ///
    /// ```
    /// # use degrade_triggers::LagConfig;
    /// assert!(LagConfig::default().validate().is_ok());
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.period.is_zero() {
            return Err(ConfigError::new("period", "must be greater than zero"));
        }
        self.thresholds
            .validate()
            .map_err(|e| e.within("thresholds"))
    }
}

struct Probe {
    origin: Instant,
    /// Worst lateness since the last sample, in nanoseconds.
    worst: AtomicU64,
    /// When the probe last woke, in nanoseconds since `origin` (0: never).
    last_wake: AtomicU64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The tokio scheduling-delay signal. The probe task stops when the signal is dropped.
///
/// A runtime whose workers are busy (or blocked by synchronous work) runs every task late. A
/// probe task asks to wake every `period` and records how late it actually woke; the signal
/// reports the worst lateness since its previous sample, in milliseconds. If the probe has not
/// run at all since the previous sample, the time since its last wake-up beyond one period
/// counts as lateness too, so a runtime stuck solid still reads as late.
///
/// ```
/// use degrade_triggers::{LagConfig, SchedulingDelay, Signal};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mut lag = SchedulingDelay::spawn(LagConfig::default()).unwrap();
/// assert_eq!(lag.name(), "tokio_lag");
/// let _ = lag.sample(tokio::time::Instant::now());
/// # }
/// ```
pub struct SchedulingDelay {
    name: String,
    period: Duration,
    scale: Scale,
    probe: Arc<Probe>,
    last_seen_wake: u64,
    task: JoinHandle<()>,
}

impl fmt::Debug for SchedulingDelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchedulingDelay")
            .field("name", &self.name)
            .field("period", &self.period)
            .finish_non_exhaustive()
    }
}

impl SchedulingDelay {
    /// Starts the probe on the current tokio runtime, with the default ladder anchors.
    ///
    /// # Errors
    ///
    /// When the configuration is invalid; the field is named.
    ///
    /// ```
    /// # use degrade_triggers::{LagConfig, SchedulingDelay};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// assert!(SchedulingDelay::spawn(LagConfig::default()).is_ok());
    /// # }
    /// ```
    pub fn spawn(config: LagConfig) -> Result<Self, ConfigError> {
        Self::spawn_anchored(config, &Thresholds::default())
    }

    pub(crate) fn spawn_anchored(
        config: LagConfig,
        anchors: &Thresholds,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let scale =
            Scale::with_anchors(config.thresholds, anchors).map_err(|e| e.within("thresholds"))?;
        let probe = Arc::new(Probe {
            origin: Instant::now(),
            worst: AtomicU64::new(0),
            last_wake: AtomicU64::new(0),
        });
        let p = Arc::clone(&probe);
        let period = config.period;
        let task = tokio::spawn(async move {
            let mut interval = tokio::time::interval_at(p.origin + period, period);
            interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
            loop {
                let scheduled = interval.tick().await;
                let now = Instant::now();
                p.worst.fetch_max(
                    nanos(now.saturating_duration_since(scheduled)),
                    Ordering::Relaxed,
                );
                p.last_wake.store(
                    nanos(now.saturating_duration_since(p.origin)).max(1),
                    Ordering::Relaxed,
                );
            }
        });
        Ok(Self {
            name: config.name,
            period,
            scale,
            probe,
            last_seen_wake: 0,
            task,
        })
    }
}

impl Drop for SchedulingDelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Signal for SchedulingDelay {
    fn name(&self) -> &str {
        &self.name
    }

    fn sample(&mut self, now: Instant) -> Result<Option<Sample>, SignalError> {
        let mut worst = self.probe.worst.swap(0, Ordering::Relaxed);
        let wake = self.probe.last_wake.load(Ordering::Relaxed);
        if wake == self.last_seen_wake {
            // The probe has not woken since the previous sample: it is late by however much
            // more than a period has passed since it last did.
            let since =
                nanos(now.saturating_duration_since(self.probe.origin)).saturating_sub(wake);
            worst = worst.max(since.saturating_sub(nanos(self.period)));
            if wake == 0 && since < nanos(self.period) * 2 {
                // Just started: nothing to say yet.
                return Ok(None);
            }
        }
        self.last_seen_wake = wake;
        Ok(Some(Sample::scaled(worst as f64 / 1e6, &self.scale)))
    }
}
