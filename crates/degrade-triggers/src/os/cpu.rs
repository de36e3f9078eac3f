//! The CPU signal: cgroup v2 quota and throttling, host usage, or the process's own usage.

use super::parse::{self, CpuStat};
use super::{Cgroup, SignalEnv, read, read_optional};
use crate::scale::{LevelThresholds, Scale};
use crate::signal::{Sample, Signal, SignalError};
use degrade_core::ConfigError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
use tokio::time::Instant;

/// Where the CPU signal reads.
///
/// ```
/// use degrade_triggers::os::CpuSource;
/// assert_eq!(serde_json::from_str::<CpuSource>(r#""process""#).unwrap(), CpuSource::Process);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuSource {
    /// The cgroup's quota when it has one (checked at every sample), else the host (default).
    #[default]
    Auto,
    /// The cgroup's usage against its quota, plus throttling; an error without a quota.
    Cgroup,
    /// Host-wide usage through `sysinfo`.
    Host,
    /// This process's own usage through `sysinfo`, against `cores` (default: the cgroup quota,
    /// or the number of CPUs).
    Process,
}

/// The CPU signal's configuration. Thresholds are in percent of the available CPU (seed
/// defaults 70 / 80 / 90 / 95 %); `throttling` thresholds are in percent of the cgroup's
/// scheduler periods that were throttled (default 10 / 25 / 50 / 75 %; `null` to ignore
/// throttling). The signal's pressure is the higher of the two.
///
/// ```
/// use degrade_triggers::os::{CpuConfig, CpuSource};
/// let cfg: CpuConfig = serde_json::from_str(r#"{ "source": "cgroup", "throttling": null }"#).unwrap();
/// assert_eq!(cfg.thresholds.moderate, 80.0);
/// assert!(cfg.throttling.is_none());
/// cfg.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CpuConfig {
    /// The signal's name (default `"cpu"`, or `"process_cpu"` for [`CpuSource::Process`]).
    pub name: Option<String>,
    /// Where to read.
    pub source: CpuSource,
    /// Per-level thresholds, percent of the available CPU.
    pub thresholds: LevelThresholds,
    /// Per-level thresholds, percent of throttled periods (cgroup only).
    pub throttling: Option<LevelThresholds>,
    /// For [`CpuSource::Process`]: how many CPUs make 100 %.
    pub cores: Option<f64>,
}

impl Default for CpuConfig {
    fn default() -> Self {
        Self {
            name: None,
            source: CpuSource::Auto,
            thresholds: LevelThresholds::new(70.0, 80.0, 90.0, 95.0),
            throttling: Some(LevelThresholds::new(10.0, 25.0, 50.0, 75.0)),
            cores: None,
        }
    }
}

impl CpuConfig {
    /// Checks the thresholds and `cores`.
    ///
    /// ```
    /// # use degrade_triggers::os::CpuConfig;
    /// let bad = CpuConfig { cores: Some(0.0), ..Default::default() };
    /// assert_eq!(bad.validate().unwrap_err().field(), "cores");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.thresholds
            .validate()
            .map_err(|e| e.within("thresholds"))?;
        if let Some(t) = &self.throttling {
            t.validate().map_err(|e| e.within("throttling"))?;
        }
        if let Some(c) = self.cores
            && !(c.is_finite() && c > 0.0)
        {
            return Err(ConfigError::new(
                "cores",
                format!("must be a finite number above zero, got {c}"),
            ));
        }
        Ok(())
    }
}

/// The CPU utilisation of a cgroup between two `cpu.stat` readings `dt` apart, in percent of
/// its quota (`quota` CPUs), and the percent of scheduler periods throttled.
pub(crate) fn cgroup_rates(prev: CpuStat, cur: CpuStat, dt: Duration, quota: f64) -> (f64, f64) {
    let used = cur.usage_usec.saturating_sub(prev.usage_usec) as f64;
    let avail = dt.as_secs_f64() * 1e6 * quota;
    let util = if avail > 0.0 {
        100.0 * used / avail
    } else {
        0.0
    };
    let periods = cur.nr_periods.saturating_sub(prev.nr_periods);
    let throttled = cur.nr_throttled.saturating_sub(prev.nr_throttled);
    let throttle = if periods > 0 {
        100.0 * throttled as f64 / periods as f64
    } else {
        0.0
    };
    (util, throttle)
}

/// Process CPU in percent of `cores`, from accumulated CPU milliseconds `dt` apart.
pub(crate) fn process_rate(prev_ms: u64, cur_ms: u64, dt: Duration, cores: f64) -> f64 {
    let avail = dt.as_secs_f64() * 1e3 * cores;
    if avail > 0.0 {
        100.0 * cur_ms.saturating_sub(prev_ms) as f64 / avail
    } else {
        0.0
    }
}

enum State {
    Cgroup(Option<(Instant, CpuStat)>),
    Host {
        system: Option<System>,
        last: Option<(Instant, Option<f64>)>,
    },
    Process {
        system: Option<System>,
        pid: Option<Pid>,
        prev: Option<(Instant, u64)>,
    },
}

/// The CPU signal; see [`CpuConfig`] and the [module docs](super).
///
/// ```
/// use degrade_triggers::os::{CpuConfig, CpuSignal, SignalEnv};
/// use degrade_triggers::Signal;
/// let mut cpu = CpuSignal::new(CpuConfig::default(), &SignalEnv::default())?;
/// assert_eq!(cpu.name(), "cpu");
/// // The first sample of a rate is unknown.
/// assert!(cpu.sample(tokio::time::Instant::now()).unwrap().is_none());
/// # Ok::<(), degrade_core::ConfigError>(())
/// ```
pub struct CpuSignal {
    name: String,
    source: CpuSource,
    cores: Option<f64>,
    cgroup: Option<Cgroup>,
    scale: Scale,
    throttle: Option<Scale>,
    state: State,
}

impl fmt::Debug for CpuSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuSignal")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("cgroup", &self.cgroup)
            .finish_non_exhaustive()
    }
}

impl CpuSignal {
    /// A CPU signal reading under `env.root`.
    ///
    /// # Errors
    ///
    /// When the configuration is invalid; the field is named.
    ///
    /// ```
    /// use degrade_triggers::os::{CpuConfig, CpuSignal, CpuSource, SignalEnv};
    /// let cfg = CpuConfig { source: CpuSource::Process, ..Default::default() };
    /// let s = CpuSignal::new(cfg, &SignalEnv::default())?;
    /// assert_eq!(degrade_triggers::Signal::name(&s), "process_cpu");
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn new(config: CpuConfig, env: &SignalEnv) -> Result<Self, ConfigError> {
        config.validate()?;
        let scale = Scale::with_anchors(config.thresholds, &env.anchors)
            .map_err(|e| e.within("thresholds"))?;
        let throttle = config
            .throttling
            .map(|t| Scale::with_anchors(t, &env.anchors))
            .transpose()
            .map_err(|e| e.within("throttling"))?;
        let name = config.name.unwrap_or_else(|| {
            if config.source == CpuSource::Process {
                "process_cpu".into()
            } else {
                "cpu".into()
            }
        });
        let state = if config.source == CpuSource::Process {
            State::Process {
                system: None,
                pid: None,
                prev: None,
            }
        } else {
            State::Cgroup(None)
        };
        Ok(Self {
            name,
            source: config.source,
            cores: config.cores,
            cgroup: env.cgroup(),
            scale,
            throttle,
            state,
        })
    }

    /// The cgroup's tightest quota, in CPUs, with the directory whose `cpu.stat` to read.
    fn quota(&self) -> Result<Option<(f64, PathBuf)>, SignalError> {
        let Some(cg) = &self.cgroup else {
            return Ok(None);
        };
        let mut best: Option<(f64, PathBuf)> = None;
        for dir in cg.levels() {
            if let Some(text) = read_optional(&dir.join("cpu.max"))?
                && let Some(q) = parse::cpu_max(&text)?
                && best.as_ref().is_none_or(|(b, _)| q < *b)
            {
                best = Some((q, dir.to_path_buf()));
            }
        }
        Ok(best)
    }

    fn sample_cgroup(
        &mut self,
        now: Instant,
        quota: f64,
        dir: PathBuf,
    ) -> Result<Option<Sample>, SignalError> {
        let stat = parse::cpu_stat(&read(&dir.join("cpu.stat"))?)?;
        let prev = match &mut self.state {
            State::Cgroup(prev) => prev.replace((now, stat)),
            other => {
                *other = State::Cgroup(Some((now, stat)));
                None
            }
        };
        let Some((at, before)) = prev else {
            return Ok(None);
        };
        let dt = now.saturating_duration_since(at);
        if dt.is_zero() {
            return Ok(None);
        }
        let (util, throttled) = cgroup_rates(before, stat, dt, quota);
        let mut pressure = self.scale.pressure(util);
        if let Some(t) = &self.throttle {
            pressure = pressure.max(t.pressure(throttled));
        }
        Ok(Some(Sample {
            value: util,
            pressure,
        }))
    }

    fn sample_host(&mut self, now: Instant) -> Result<Option<Sample>, SignalError> {
        if !matches!(self.state, State::Host { .. }) {
            self.state = State::Host {
                system: None,
                last: None,
            };
        }
        let State::Host { system, last } = &mut self.state else {
            return Ok(None);
        };
        if let Some((at, value)) = *last
            && now.saturating_duration_since(at) < sysinfo::MINIMUM_CPU_UPDATE_INTERVAL
        {
            return Ok(value.map(|v| Sample::scaled(v, &self.scale)));
        }
        let sys = match system {
            Some(s) => s,
            None => {
                system.insert(System::new().map_err(|e| SignalError::new(format!("sysinfo: {e}")))?)
            }
        };
        let first = last.is_none();
        sys.refresh_cpu_usage();
        let value = (!first).then(|| f64::from(sys.global_cpu_usage()));
        *last = Some((now, value));
        Ok(value
            .filter(|v| v.is_finite())
            .map(|v| Sample::scaled(v, &self.scale)))
    }

    fn sample_process(&mut self, now: Instant) -> Result<Option<Sample>, SignalError> {
        let cores = match self.cores {
            Some(c) => c,
            None => match self.quota()? {
                Some((q, _)) => q,
                None => std::thread::available_parallelism()
                    .map(|n| n.get() as f64)
                    .unwrap_or(1.0),
            },
        };
        let State::Process { system, pid, prev } = &mut self.state else {
            return Ok(None);
        };
        let pid = match pid {
            Some(p) => *p,
            None => *pid.insert(
                sysinfo::get_current_pid()
                    .map_err(|e| SignalError::new(format!("sysinfo: {e}")))?,
            ),
        };
        let sys = match system {
            Some(s) => s,
            None => {
                system.insert(System::new().map_err(|e| SignalError::new(format!("sysinfo: {e}")))?)
            }
        };
        sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            false,
            ProcessRefreshKind::nothing().with_cpu(),
        );
        let ms = sys
            .process(pid)
            .ok_or_else(|| SignalError::new("sysinfo: this process is not listed"))?
            .accumulated_cpu_time();
        let Some((at, before)) = prev.replace((now, ms)) else {
            return Ok(None);
        };
        let dt = now.saturating_duration_since(at);
        if dt.is_zero() {
            return Ok(None);
        }
        Ok(Some(Sample::scaled(
            process_rate(before, ms, dt, cores),
            &self.scale,
        )))
    }
}

impl Signal for CpuSignal {
    fn name(&self) -> &str {
        &self.name
    }

    fn sample(&mut self, now: Instant) -> Result<Option<Sample>, SignalError> {
        match self.source {
            CpuSource::Process => self.sample_process(now),
            CpuSource::Host => self.sample_host(now),
            CpuSource::Cgroup => match self.quota()? {
                Some((q, dir)) => self.sample_cgroup(now, q, dir),
                None if self.cgroup.is_none() => Err(SignalError::new("no cgroup v2 found")),
                None => Err(SignalError::new("the cgroup has no cpu.max quota")),
            },
            CpuSource::Auto => match self.quota()? {
                Some((q, dir)) => self.sample_cgroup(now, q, dir),
                None => self.sample_host(now),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_utilisation_is_usage_over_time_times_quota() {
        let a = CpuStat {
            usage_usec: 1_000_000,
            nr_periods: 100,
            nr_throttled: 0,
        };
        let b = CpuStat {
            usage_usec: 2_600_000,
            nr_periods: 120,
            nr_throttled: 5,
        };
        // 1.6 CPU-seconds in 1 s against a 2-CPU quota: 80 %; 5 of 20 periods throttled.
        let (util, thr) = cgroup_rates(a, b, Duration::from_secs(1), 2.0);
        assert!((util - 80.0).abs() < 1e-9, "{util}");
        assert!((thr - 25.0).abs() < 1e-9, "{thr}");
        // A counter that went backwards (cgroup recreated) reads as idle, not negative.
        assert_eq!(cgroup_rates(b, a, Duration::from_secs(1), 2.0), (0.0, 0.0));
        assert_eq!(cgroup_rates(a, b, Duration::ZERO, 2.0).0, 0.0);
    }

    #[test]
    fn process_rate_is_cpu_ms_over_wall_ms_times_cores() {
        assert!((process_rate(0, 500, Duration::from_secs(1), 1.0) - 50.0).abs() < 1e-9);
        assert!((process_rate(0, 500, Duration::from_secs(1), 2.0) - 25.0).abs() < 1e-9);
        assert_eq!(process_rate(9, 1, Duration::from_secs(1), 1.0), 0.0);
    }
}
