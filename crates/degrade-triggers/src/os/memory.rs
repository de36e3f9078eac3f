//! The memory signal: cgroup v2 usage against its limit, host memory, or the process's RSS.

use super::parse;
use super::{Cgroup, SignalEnv, read, read_optional};
use crate::scale::{LevelThresholds, Scale};
use crate::signal::{Sample, Signal, SignalError};
use degrade_core::ConfigError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use sysinfo::System;
use tokio::time::Instant;

/// Where the memory signal reads.
///
/// ```
/// use degrade_triggers::os::MemorySource;
/// assert_eq!(serde_json::from_str::<MemorySource>(r#""cgroup""#).unwrap(), MemorySource::Cgroup);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemorySource {
    /// The cgroup's `memory.current` against its limit when it has one (checked at every
    /// sample), else the host (default).
    #[default]
    Auto,
    /// The cgroup's usage against its limit; an error without a limit.
    Cgroup,
    /// Host used / total memory through `sysinfo`.
    Host,
    /// This process's resident set (`VmRSS` in `/proc/self/status`) against `limit` (default:
    /// the cgroup limit, or the host's total memory).
    Process,
}

/// The memory signal's configuration. Thresholds are in percent of the limit (seed defaults
/// 75 / 85 / 92 / 97 %). The cgroup limit is the tightest `memory.max` from the process's
/// cgroup up to the root, or, where every `memory.max` is `max`, the tightest `memory.high`.
///
/// ```
/// use degrade_triggers::os::{MemoryConfig, MemorySource};
/// let cfg: MemoryConfig = serde_json::from_str(r#"{ "source": "process", "limit": 1073741824 }"#).unwrap();
/// assert_eq!(cfg.thresholds.heavy, 92.0);
/// cfg.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// The signal's name (default `"memory"`, or `"process_memory"` for
    /// [`MemorySource::Process`]).
    pub name: Option<String>,
    /// Where to read.
    pub source: MemorySource,
    /// Per-level thresholds, percent of the limit.
    pub thresholds: LevelThresholds,
    /// For [`MemorySource::Process`]: the limit in bytes.
    pub limit: Option<u64>,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            name: None,
            source: MemorySource::Auto,
            thresholds: LevelThresholds::new(75.0, 85.0, 92.0, 97.0),
            limit: None,
        }
    }
}

impl MemoryConfig {
    /// Checks the thresholds and the limit.
    ///
    /// ```
    /// # use degrade_triggers::os::MemoryConfig;
    /// let bad = MemoryConfig { limit: Some(0), ..Default::default() };
    /// assert_eq!(bad.validate().unwrap_err().field(), "limit");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.thresholds
            .validate()
            .map_err(|e| e.within("thresholds"))?;
        if self.limit == Some(0) {
            return Err(ConfigError::new("limit", "must be greater than zero"));
        }
        Ok(())
    }
}

/// The memory signal; see [`MemoryConfig`] and the [module docs](super).
///
/// ```
/// use degrade_triggers::os::{MemoryConfig, MemorySignal, SignalEnv};
/// use degrade_triggers::Signal;
/// let mut mem = MemorySignal::new(MemoryConfig::default(), &SignalEnv::default())?;
/// let s = mem.sample(tokio::time::Instant::now()).unwrap().unwrap();
/// assert!(s.value > 0.0 && s.value <= 100.0);
/// # Ok::<(), degrade_core::ConfigError>(())
/// ```
pub struct MemorySignal {
    name: String,
    source: MemorySource,
    limit: Option<u64>,
    root: PathBuf,
    cgroup: Option<Cgroup>,
    scale: Scale,
    system: Option<System>,
}

impl fmt::Debug for MemorySignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySignal")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("cgroup", &self.cgroup)
            .finish_non_exhaustive()
    }
}

impl MemorySignal {
    /// A memory signal reading under `env.root`.
    ///
    /// # Errors
    ///
    /// When the configuration is invalid; the field is named.
    ///
    /// ```
    /// use degrade_triggers::os::{MemoryConfig, MemorySignal, MemorySource, SignalEnv};
    /// let cfg = MemoryConfig { source: MemorySource::Process, limit: Some(1 << 30), ..Default::default() };
    /// let s = MemorySignal::new(cfg, &SignalEnv::default())?;
    /// assert_eq!(degrade_triggers::Signal::name(&s), "process_memory");
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn new(config: MemoryConfig, env: &SignalEnv) -> Result<Self, ConfigError> {
        config.validate()?;
        let scale = Scale::with_anchors(config.thresholds, &env.anchors)
            .map_err(|e| e.within("thresholds"))?;
        let name = config.name.unwrap_or_else(|| {
            if config.source == MemorySource::Process {
                "process_memory".into()
            } else {
                "memory".into()
            }
        });
        Ok(Self {
            name,
            source: config.source,
            limit: config.limit,
            root: env.root.clone(),
            cgroup: env.cgroup(),
            scale,
            system: None,
        })
    }

    /// The tightest cgroup limit and the usage of the cgroup that sets it, in bytes.
    fn cgroup_usage(&self) -> Result<Option<(u64, u64)>, SignalError> {
        let Some(cg) = &self.cgroup else {
            return Ok(None);
        };
        for file in ["memory.max", "memory.high"] {
            let mut best: Option<(u64, PathBuf)> = None;
            for dir in cg.levels() {
                if let Some(text) = read_optional(&dir.join(file))?
                    && let Some(limit) = parse::limit(file, &text)?
                    && best.as_ref().is_none_or(|(b, _)| limit < *b)
                {
                    best = Some((limit, dir.to_path_buf()));
                }
            }
            if let Some((limit, dir)) = best {
                let current = parse::bytes("memory.current", &read(&dir.join("memory.current"))?)?;
                return Ok(Some((current, limit)));
            }
        }
        Ok(None)
    }

    fn host(&mut self) -> Result<(u64, u64), SignalError> {
        let sys = match &mut self.system {
            Some(s) => s,
            None => self
                .system
                .insert(System::new().map_err(|e| SignalError::new(format!("sysinfo: {e}")))?),
        };
        sys.refresh_memory();
        Ok((sys.used_memory(), sys.total_memory()))
    }

    fn percent(&self, used: u64, limit: u64) -> Result<Option<Sample>, SignalError> {
        if limit == 0 {
            return Err(SignalError::new("memory limit reads as zero"));
        }
        Ok(Some(Sample::scaled(
            100.0 * used as f64 / limit as f64,
            &self.scale,
        )))
    }
}

impl Signal for MemorySignal {
    fn name(&self) -> &str {
        &self.name
    }

    fn sample(&mut self, _now: Instant) -> Result<Option<Sample>, SignalError> {
        match self.source {
            MemorySource::Cgroup => match self.cgroup_usage()? {
                Some((used, limit)) => self.percent(used, limit),
                None if self.cgroup.is_none() => Err(SignalError::new("no cgroup v2 found")),
                None => Err(SignalError::new("the cgroup has no memory limit")),
            },
            MemorySource::Host => {
                let (used, total) = self.host()?;
                self.percent(used, total)
            }
            MemorySource::Auto => match self.cgroup_usage()? {
                Some((used, limit)) => self.percent(used, limit),
                None => {
                    let (used, total) = self.host()?;
                    self.percent(used, total)
                }
            },
            MemorySource::Process => {
                let rss = parse::vm_rss(&read(&self.root.join("proc/self/status"))?)?;
                let limit = match self.limit {
                    Some(l) => l,
                    None => match self.cgroup_usage()? {
                        Some((_, l)) => l,
                        None => self.host()?.1,
                    },
                };
                self.percent(rss, limit)
            }
        }
    }
}
