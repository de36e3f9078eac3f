//! [`TriggersConfig`]: every signal of a service in one serde document.

use crate::lag::{LagConfig, SchedulingDelay};
use crate::monitor::Monitor;
use crate::observe::{InFlightConfig, LatencyConfig, ObserveLayer, ObserveSignal, RateConfig};
use crate::os::{
    CpuConfig, CpuSignal, MemoryConfig, MemorySignal, PsiConfig, PsiSignal, SignalEnv,
};
use crate::signal::{Signal, Smoothing};
use degrade_core::ladder::Thresholds;
use degrade_core::{Clock, ConfigError, Controller};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// The signals of a service and how the [`Monitor`] samples them. Every field has a default;
/// deserialize a partial document. A signal set to `null` is off.
///
/// Defaults: a 1 s interval; CPU (70 / 80 / 90 / 95 %) and memory (75 / 85 / 92 / 97 %), both
/// cgroup-aware; no PSI signal (list the ones wanted); and, when an [`ObserveLayer`] is given
/// to [`monitor_with`](TriggersConfig::monitor_with), p99 latency (100 / 250 / 500 / 1000 ms),
/// error rate (5 / 10 / 25 / 50 %) and timeout rate (1 / 5 / 10 / 25 %). In-flight and tokio
/// scheduling delay are off unless configured.
///
/// `anchors` are the ladder's thresholds the scales map onto (only `enter` is used): keep them
/// equal to the ladder's own, see [`Scale`](crate::Scale).
///
/// ```
/// use degrade_triggers::TriggersConfig;
/// use std::time::Duration;
///
/// let cfg: TriggersConfig = serde_json::from_str(r#"{
///     "interval": "500ms",
///     "cpu": { "thresholds": { "light": 60, "moderate": 75, "heavy": 85, "emergency": 95 } },
///     "memory": null,
///     "psi": [ { "resource": "memory", "kind": "full" } ],
///     "latency": { "sla": "300ms" }
/// }"#).unwrap();
/// assert_eq!(cfg.interval, Duration::from_millis(500));
/// assert!(cfg.memory.is_none());
/// cfg.validate().unwrap();
///
/// let bad: TriggersConfig = serde_json::from_str(r#"{ "cpu": { "cores": -1 } }"#).unwrap();
/// assert_eq!(bad.validate().unwrap_err().field(), "cpu.cores");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TriggersConfig {
    /// How often the monitor samples (default 1 s).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// The filesystem root the OS readers read under (default `/`).
    pub root: PathBuf,
    /// The ladder thresholds the scales anchor to (default: the ladder's defaults).
    pub anchors: Thresholds,
    /// Smoothing and staleness of every signal (default: no smoothing, unknown after 3 misses).
    pub smoothing: Smoothing,
    /// The CPU signal.
    pub cpu: Option<CpuConfig>,
    /// The memory signal.
    pub memory: Option<MemoryConfig>,
    /// PSI signals.
    pub psi: Vec<PsiConfig>,
    /// The latency signal (with an `ObserveLayer`).
    pub latency: Option<LatencyConfig>,
    /// The error-rate signal (with an `ObserveLayer`).
    pub errors: Option<RateConfig>,
    /// The timeout-rate signal (with an `ObserveLayer`).
    pub timeouts: Option<RateConfig>,
    /// The in-flight signal (with an `ObserveLayer`).
    pub in_flight: Option<InFlightConfig>,
    /// The tokio scheduling-delay signal.
    pub lag: Option<LagConfig>,
}

impl Default for TriggersConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            root: PathBuf::from("/"),
            anchors: Thresholds::default(),
            smoothing: Smoothing::default(),
            cpu: Some(CpuConfig::default()),
            memory: Some(MemoryConfig::default()),
            psi: Vec::new(),
            latency: Some(LatencyConfig::default()),
            errors: Some(RateConfig::errors()),
            timeouts: Some(RateConfig::timeouts()),
            in_flight: None,
            lag: None,
        }
    }
}

impl TriggersConfig {
    /// Checks every rule; the error names the field by its full path (`cpu.thresholds.light`).
    ///
    /// ```
    /// # use degrade_triggers::TriggersConfig; use std::time::Duration;
    /// let bad = TriggersConfig { interval: Duration::ZERO, ..Default::default() };
    /// assert_eq!(bad.validate().unwrap_err().field(), "interval");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interval.is_zero() {
            return Err(ConfigError::new("interval", "must be greater than zero"));
        }
        let mut ladder = degrade_core::ladder::LadderConfig {
            thresholds: self.anchors,
            ..Default::default()
        };
        ladder.history = 1;
        // The ladder's own rules for its thresholds; the error names the field as it is here.
        ladder.validate().map_err(|e| {
            let field = e.field().strip_prefix("thresholds.").unwrap_or(e.field());
            ConfigError::new(format!("anchors.{field}"), e.rule().to_owned())
        })?;
        self.smoothing
            .validate()
            .map_err(|e| e.within("smoothing"))?;
        if let Some(c) = &self.cpu {
            c.validate().map_err(|e| e.within("cpu"))?;
        }
        if let Some(c) = &self.memory {
            c.validate().map_err(|e| e.within("memory"))?;
        }
        for (i, c) in self.psi.iter().enumerate() {
            c.validate().map_err(|e| e.within(&format!("psi[{i}]")))?;
        }
        if let Some(c) = &self.latency {
            c.validate().map_err(|e| e.within("latency"))?;
        }
        if let Some(c) = &self.errors {
            c.validate().map_err(|e| e.within("errors"))?;
        }
        if let Some(c) = &self.timeouts {
            c.validate().map_err(|e| e.within("timeouts"))?;
        }
        if let Some(c) = &self.in_flight {
            c.validate().map_err(|e| e.within("in_flight"))?;
        }
        if let Some(c) = &self.lag {
            c.validate().map_err(|e| e.within("lag"))?;
        }
        Ok(())
    }

    /// A monitor of the OS signals (CPU, memory, PSI, scheduling delay) driving `controller`.
    /// Start it with [`Monitor::spawn`]. With `lag` configured, this must be called within a
    /// tokio runtime (the probe task starts here).
    ///
    /// # Errors
    ///
    /// When the configuration is invalid; the field is named.
    ///
    /// ```
    /// use degrade_core::Controller;
    /// use degrade_triggers::TriggersConfig;
    /// let mut monitor = TriggersConfig::default().monitor(Controller::new(Default::default()).unwrap())?;
    /// # let _rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    /// # let _guard = _rt.enter();
    /// monitor.tick();
    /// assert!(monitor.snapshot().signal("cpu").is_some()); // the defaults: CPU and memory
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn monitor<C: Clock>(&self, controller: Controller<C>) -> Result<Monitor<C>, ConfigError> {
        self.build(controller, Vec::new())
    }

    /// A monitor of the OS signals and of `observe`'s latency, error, timeout and in-flight
    /// signals, driving `controller`.
    ///
    /// # Errors
    ///
    /// When the configuration is invalid; the field is named.
    ///
    /// ```
    /// use degrade_core::Controller;
    /// use degrade_triggers::{ObserveLayer, TriggersConfig};
    /// let observe = ObserveLayer::new();
    /// let mut monitor = TriggersConfig::default()
    ///     .monitor_with(Controller::new(Default::default()).unwrap(), &observe)?;
    /// # let _rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    /// # let _guard = _rt.enter();
    /// monitor.tick();
    /// assert!(monitor.snapshot().signal("latency").is_some()); // read from the layer
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn monitor_with<C, K, C2>(
        &self,
        controller: Controller<C>,
        observe: &ObserveLayer<K, C2>,
    ) -> Result<Monitor<C>, ConfigError>
    where
        C: Clock,
        K: Send + Sync + 'static,
        C2: Clock,
    {
        let extra = observe.signals(
            self.latency.as_ref(),
            [
                (self.errors.as_ref(), "errors"),
                (self.timeouts.as_ref(), "timeouts"),
            ],
            self.in_flight.as_ref(),
            &self.anchors,
        )?;
        self.build(controller, extra)
    }

    fn build<C: Clock>(
        &self,
        controller: Controller<C>,
        extra: Vec<ObserveSignal>,
    ) -> Result<Monitor<C>, ConfigError> {
        self.validate()?;
        let env = SignalEnv {
            root: self.root.clone(),
            anchors: self.anchors,
        };
        let mut signals: Vec<Box<dyn Signal>> = Vec::new();
        if let Some(c) = &self.cpu {
            signals.push(Box::new(
                CpuSignal::new(c.clone(), &env).map_err(|e| e.within("cpu"))?,
            ));
        }
        if let Some(c) = &self.memory {
            signals.push(Box::new(
                MemorySignal::new(c.clone(), &env).map_err(|e| e.within("memory"))?,
            ));
        }
        for (i, c) in self.psi.iter().enumerate() {
            signals.push(Box::new(
                PsiSignal::new(c.clone(), &env).map_err(|e| e.within(&format!("psi[{i}]")))?,
            ));
        }
        for s in extra {
            signals.push(Box::new(s));
        }
        if let Some(c) = &self.lag {
            signals.push(Box::new(
                SchedulingDelay::spawn_anchored(c.clone(), &self.anchors)
                    .map_err(|e| e.within("lag"))?,
            ));
        }
        let mut monitor = Monitor::new(controller).interval(self.interval);
        for s in signals {
            monitor.push_boxed(s, self.smoothing);
        }
        Ok(monitor)
    }
}
