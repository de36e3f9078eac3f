//! The [`Signal`] trait, user gauges, and per-signal smoothing and staleness.

use crate::scale::Scale;
use degrade_core::ConfigError;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;
use std::time::Duration;
use tokio::time::Instant;

/// One reading of a signal: the raw measurement in the signal's own unit (percent,
/// milliseconds, a count) and the pressure its [`Scale`] gives it.
///
/// ```
/// use degrade_triggers::Sample;
/// let s = Sample { value: 82.0, pressure: 0.82 };
/// assert!(s.pressure <= 1.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The raw measurement.
    pub value: f64,
    /// The pressure in `[0, 1]`.
    pub pressure: f64,
}

impl Sample {
    /// A sample of `value` mapped through `scale`.
    ///
    /// ```
    /// use degrade_triggers::{LevelThresholds, Sample, Scale};
    /// let scale = Scale::new(LevelThresholds::new(70.0, 80.0, 90.0, 95.0))?;
    /// assert_eq!(Sample::scaled(90.0, &scale).pressure, 0.90);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn scaled(value: f64, scale: &Scale) -> Self {
        Self {
            value,
            pressure: scale.pressure(value),
        }
    }
}

/// Why a signal could not be read: a missing or malformed file, an OS call that failed.
///
/// The [`Monitor`](crate::Monitor) logs a failing signal once (and once more when it recovers)
/// and feeds it to the ladder as unknown; it never panics on it.
///
/// ```
/// use degrade_triggers::SignalError;
/// let e = SignalError::new("cpu.max: expected `<quota> <period>`");
/// assert_eq!(e.to_string(), "cpu.max: expected `<quota> <period>`");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalError {
    message: Cow<'static, str>,
}

impl SignalError {
    /// An error with this message.
    ///
    /// ```
    /// # use degrade_triggers::SignalError;
    /// let e = SignalError::new(format!("{}: not found", "/proc/pressure/cpu"));
    /// assert!(e.message().contains("not found"));
    /// ```
    pub fn new(message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The message.
    ///
    /// ```
    /// # use degrade_triggers::SignalError;
    /// assert_eq!(SignalError::new("x").message(), "x");
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for SignalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SignalError {}

/// A named source of pressure.
///
/// `sample` is called by the [`Monitor`](crate::Monitor) once per interval with the monitor's
/// `now`. It returns:
///
/// * `Ok(Some(sample))`: a fresh reading;
/// * `Ok(None)`: nothing to say this time, and that is normal (the first of two CPU readings
///   that a rate needs, an idle service with no request in its latency window, a kernel without
///   PSI);
/// * `Err(error)`: the reader failed. The monitor logs it once and reads the signal as unknown.
///
/// A sample must be quick and must never sleep or block on the network: the monitor samples
/// every signal in turn on one task. Rates are computed from the previous call's reading and
/// `now`, never by waiting inside `sample`.
///
/// ```
/// use degrade_triggers::{Sample, Signal, SignalError};
/// use tokio::time::Instant;
///
/// /// A signal of a fixed pressure, as a test double.
/// struct Fixed(f64);
/// impl Signal for Fixed {
///     fn name(&self) -> &str { "fixed" }
///     fn sample(&mut self, _now: Instant) -> Result<Option<Sample>, SignalError> {
///         Ok(Some(Sample { value: self.0, pressure: self.0 }))
///     }
/// }
/// let mut s = Fixed(0.4);
/// assert_eq!(s.sample(Instant::now()).unwrap().unwrap().pressure, 0.4);
/// ```
pub trait Signal: Send + 'static {
    /// The signal's name, as it appears in readings, transitions and logs.
    fn name(&self) -> &str;

    /// Reads the signal at `now`.
    fn sample(&mut self, now: Instant) -> Result<Option<Sample>, SignalError>;
}

impl Signal for Box<dyn Signal> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn sample(&mut self, now: Instant) -> Result<Option<Sample>, SignalError> {
        (**self).sample(now)
    }
}

/// Any gauge as a signal: a closure that returns the current raw value (an exporter's backlog,
/// a queue's depth, a pool's waiters), or `None` when it has none, mapped through a [`Scale`].
///
/// ```
/// use degrade_triggers::{Gauge, LevelThresholds, Scale, Signal};
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
///
/// let backlog = Arc::new(AtomicUsize::new(0));
/// let b = Arc::clone(&backlog);
/// let scale = Scale::new(LevelThresholds::new(1000.0, 2000.0, 4000.0, 8000.0))?;
/// let mut gauge = Gauge::new("export-backlog", scale, move || Some(b.load(Ordering::Relaxed) as f64));
/// backlog.store(2000, Ordering::Relaxed);
/// let s = gauge.sample(tokio::time::Instant::now()).unwrap().unwrap();
/// assert_eq!((s.value, s.pressure), (2000.0, 0.80));
/// # Ok::<(), degrade_core::ConfigError>(())
/// ```
pub struct Gauge<F> {
    name: Cow<'static, str>,
    scale: Scale,
    read: F,
}

impl<F> Gauge<F>
where
    F: FnMut() -> Option<f64> + Send + 'static,
{
    /// A gauge named `name` reading `read`, mapped through `scale`.
    ///
    /// ```
    /// # use degrade_triggers::{Gauge, Scale, Signal};
    /// let mut g = Gauge::new("waiters", Scale::proportional(64.0)?, || Some(16.0));
    /// let s = g.sample(tokio::time::Instant::now()).unwrap().unwrap();
    /// assert_eq!((g.name(), s.value, s.pressure), ("waiters", 16.0, 0.25));
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn new(name: impl Into<Cow<'static, str>>, scale: Scale, read: F) -> Self {
        Self {
            name: name.into(),
            scale,
            read,
        }
    }
}

impl<F> fmt::Debug for Gauge<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gauge")
            .field("name", &self.name)
            .field("scale", &self.scale)
            .finish_non_exhaustive()
    }
}

impl<F> Signal for Gauge<F>
where
    F: FnMut() -> Option<f64> + Send + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn sample(&mut self, _now: Instant) -> Result<Option<Sample>, SignalError> {
        Ok((self.read)()
            .filter(|v| !v.is_nan())
            .map(|v| Sample::scaled(v, &self.scale)))
    }
}

/// How the [`Monitor`](crate::Monitor) smooths a signal and when it gives up on it.
///
/// * `half_life`: exponentially weighted moving average of the pressure, by time: a reading
///   `half_life` old weighs half as much as a fresh one. The weight of each new sample is
///   `1 - 2^(-Δt / half_life)`, so skipped ticks are accounted for. Zero turns smoothing off.
/// * `stale_after`: after this many ticks in a row without a fresh sample (an error or
///   `Ok(None)`), the signal reads as unknown; until then it holds its last value. 1 makes it
///   unknown at the first miss.
///
/// ```
/// use degrade_triggers::Smoothing;
/// use std::time::Duration;
///
/// let s: Smoothing = serde_json::from_str(r#"{ "half_life": "2s" }"#).unwrap();
/// assert_eq!(s.half_life, Duration::from_secs(2));
/// assert_eq!(s.stale_after, 3);
/// assert_eq!(Smoothing { stale_after: 0, ..s }.validate().unwrap_err().field(), "stale_after");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Smoothing {
    /// Half-life of the moving average (default 0: off).
    #[serde(with = "humantime_serde")]
    pub half_life: Duration,
    /// Ticks without a fresh sample before the signal reads unknown (default 3).
    pub stale_after: u32,
}

impl Default for Smoothing {
    fn default() -> Self {
        Self {
            half_life: Duration::ZERO,
            stale_after: 3,
        }
    }
}

impl Smoothing {
    /// No smoothing; unknown after 3 missed ticks.
    ///
    /// ```
    /// # use degrade_triggers::Smoothing;
    /// assert_eq!(Smoothing::none(), Smoothing::default());
    /// ```
    pub fn none() -> Self {
        Self::default()
    }

    /// A moving average with this half-life; unknown after 3 missed ticks.
    ///
    /// ```
    /// # use degrade_triggers::Smoothing; use std::time::Duration;
    /// assert_eq!(Smoothing::ewma(Duration::from_secs(5)).half_life, Duration::from_secs(5));
    /// ```
    pub fn ewma(half_life: Duration) -> Self {
        Self {
            half_life,
            ..Self::default()
        }
    }

    /// Checks that `stale_after` is at least 1.
    ///
    /// ```
    /// # use degrade_triggers::Smoothing;
    /// assert!(Smoothing::default().validate().is_ok());
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.stale_after == 0 {
            return Err(ConfigError::new("stale_after", "must be at least 1"));
        }
        Ok(())
    }
}

/// The smoothing state of one signal: a pure function of (state, sample, now).
#[derive(Debug, Clone)]
pub(crate) struct Smoother {
    config: Smoothing,
    value: Option<f64>,
    last_fresh: Option<Instant>,
    misses: u32,
}

impl Smoother {
    pub(crate) fn new(config: Smoothing) -> Self {
        Self {
            config,
            value: None,
            last_fresh: None,
            misses: 0,
        }
    }

    /// Feeds one tick's result (a fresh pressure or none) and returns the pressure to report.
    pub(crate) fn update(&mut self, fresh: Option<f64>, now: Instant) -> Option<f64> {
        match fresh.filter(|p| !p.is_nan()) {
            Some(p) => {
                let p = p.clamp(0.0, 1.0);
                self.misses = 0;
                let next = match (self.value, self.last_fresh) {
                    (Some(prev), Some(at)) if !self.config.half_life.is_zero() => {
                        let dt = now.saturating_duration_since(at).as_secs_f64();
                        let weight = 1.0 - (-dt / self.config.half_life.as_secs_f64()).exp2();
                        prev + weight * (p - prev)
                    }
                    _ => p,
                };
                self.value = Some(next);
                self.last_fresh = Some(now);
            }
            None => {
                self.misses = self.misses.saturating_add(1);
                if self.misses >= self.config.stale_after {
                    // Forget: when the signal comes back it starts from its first fresh sample,
                    // not from a value that may be minutes old.
                    self.value = None;
                    self.last_fresh = None;
                }
            }
        }
        self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_half_life_the_pressure_passes_through() {
        let mut s = Smoother::new(Smoothing::none());
        let t = Instant::now();
        assert_eq!(s.update(Some(0.3), t), Some(0.3));
        assert_eq!(s.update(Some(0.9), t + Duration::from_secs(1)), Some(0.9));
    }

    #[test]
    fn one_half_life_moves_half_way() {
        let mut s = Smoother::new(Smoothing::ewma(Duration::from_secs(2)));
        let t = Instant::now();
        s.update(Some(0.0), t);
        let v = s.update(Some(1.0), t + Duration::from_secs(2)).unwrap();
        assert!((v - 0.5).abs() < 1e-12, "{v}");
        let v = s.update(Some(1.0), t + Duration::from_secs(4)).unwrap();
        assert!((v - 0.75).abs() < 1e-12, "{v}");
    }

    #[test]
    fn misses_hold_the_value_then_read_unknown() {
        let mut s = Smoother::new(Smoothing {
            half_life: Duration::ZERO,
            stale_after: 3,
        });
        let t = Instant::now();
        s.update(Some(0.8), t);
        assert_eq!(s.update(None, t), Some(0.8));
        assert_eq!(s.update(None, t), Some(0.8));
        assert_eq!(s.update(None, t), None);
        assert_eq!(s.update(Some(0.1), t), Some(0.1));
    }
}
