//! The PSI signal: Linux pressure stall information, from the cgroup or the whole system.

use super::parse;
use super::{SignalEnv, read_optional};
use crate::scale::{LevelThresholds, Scale};
use crate::signal::{Sample, Signal, SignalError};
use degrade_core::ConfigError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tokio::time::Instant;

/// The resource whose stalls are read.
///
/// ```
/// use degrade_triggers::os::PsiResource;
/// assert_eq!(PsiResource::Memory.as_str(), "memory");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PsiResource {
    /// Runnable tasks waiting for a CPU (default).
    #[default]
    Cpu,
    /// Tasks waiting for memory (reclaim, refaults, swap-in).
    Memory,
    /// Tasks waiting for block I/O.
    Io,
}

impl PsiResource {
    /// The name used in file names.
    ///
    /// ```
    /// # use degrade_triggers::os::PsiResource;
    /// assert_eq!(PsiResource::Io.as_str(), "io");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            PsiResource::Cpu => "cpu",
            PsiResource::Memory => "memory",
            PsiResource::Io => "io",
        }
    }
}

/// Which line: `some` (at least one task stalled) or `full` (all non-idle tasks stalled).
///
/// ```
/// use degrade_triggers::os::PsiKind;
/// assert_eq!(PsiKind::default(), PsiKind::Some);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PsiKind {
    /// The `some` line (default).
    #[default]
    Some,
    /// The `full` line (absent for `cpu` before Linux 5.13: reads as unknown).
    Full,
}

/// Whose pressure.
///
/// ```
/// use degrade_triggers::os::PsiScope;
/// assert_eq!(PsiScope::default(), PsiScope::Auto);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PsiScope {
    /// The cgroup's `<resource>.pressure` when it exists, else `/proc/pressure/<resource>`.
    #[default]
    Auto,
    /// The cgroup's `<resource>.pressure` only.
    Cgroup,
    /// `/proc/pressure/<resource>` only.
    System,
}

/// The PSI signal's configuration: the `avg10` of the chosen line, in percent of time stalled,
/// against thresholds (default 10 / 20 / 40 / 60 %).
///
/// ```
/// use degrade_triggers::os::{PsiConfig, PsiKind, PsiResource};
/// let cfg: PsiConfig = serde_json::from_str(r#"{ "resource": "memory", "kind": "full" }"#).unwrap();
/// assert_eq!((cfg.resource, cfg.kind), (PsiResource::Memory, PsiKind::Full));
/// cfg.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PsiConfig {
    /// The signal's name (default `psi.<resource>.<kind>`, e.g. `psi.cpu.some`).
    pub name: Option<String>,
    /// The resource.
    pub resource: PsiResource,
    /// The line.
    pub kind: PsiKind,
    /// Whose pressure.
    pub scope: PsiScope,
    /// Per-level thresholds, percent of time stalled over the last 10 s.
    pub thresholds: LevelThresholds,
}

impl Default for PsiConfig {
    fn default() -> Self {
        Self {
            name: None,
            resource: PsiResource::Cpu,
            kind: PsiKind::Some,
            scope: PsiScope::Auto,
            thresholds: LevelThresholds::new(10.0, 20.0, 40.0, 60.0),
        }
    }
}

impl PsiConfig {
    /// Checks the thresholds.
    ///
    /// ```
    /// # use degrade_triggers::os::PsiConfig;
    /// assert!(PsiConfig::default().validate().is_ok());
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.thresholds
            .validate()
            .map_err(|e| e.within("thresholds"))
    }
}

/// The PSI signal; see [`PsiConfig`]. A kernel without PSI (no file) reads as unknown without
/// an error; a malformed file is an error.
///
/// ```
/// use degrade_triggers::os::{PsiConfig, PsiSignal, SignalEnv};
/// use degrade_triggers::Signal;
/// let mut psi = PsiSignal::new(PsiConfig::default(), &SignalEnv::with_root("/nonexistent"))?;
/// assert_eq!(psi.name(), "psi.cpu.some");
/// assert_eq!(psi.sample(tokio::time::Instant::now()).unwrap(), None);
/// # Ok::<(), degrade_core::ConfigError>(())
/// ```
#[derive(Debug)]
pub struct PsiSignal {
    name: String,
    paths: Vec<PathBuf>,
    kind: &'static str,
    scale: Scale,
}

impl PsiSignal {
    /// A PSI signal reading under `env.root`.
    ///
    /// # Errors
    ///
    /// When the configuration is invalid; the field is named.
    ///
    /// ```
    /// use degrade_triggers::os::{PsiConfig, PsiResource, PsiSignal, SignalEnv};
    /// let cfg = PsiConfig { resource: PsiResource::Io, ..Default::default() };
    /// let s = PsiSignal::new(cfg, &SignalEnv::default())?;
    /// assert_eq!(degrade_triggers::Signal::name(&s), "psi.io.some");
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn new(config: PsiConfig, env: &SignalEnv) -> Result<Self, ConfigError> {
        config.validate()?;
        let scale = Scale::with_anchors(config.thresholds, &env.anchors)
            .map_err(|e| e.within("thresholds"))?;
        let res = config.resource.as_str();
        let kind = match config.kind {
            PsiKind::Some => "some",
            PsiKind::Full => "full",
        };
        let cgroup = env
            .cgroup()
            .map(|cg| cg.dir().join(format!("{res}.pressure")));
        let system = env.root.join("proc/pressure").join(res);
        let paths = match config.scope {
            PsiScope::Auto => cgroup.into_iter().chain([system]).collect(),
            PsiScope::Cgroup => cgroup.into_iter().collect(),
            PsiScope::System => vec![system],
        };
        Ok(Self {
            name: config.name.unwrap_or_else(|| format!("psi.{res}.{kind}")),
            paths,
            kind,
            scale,
        })
    }
}

impl Signal for PsiSignal {
    fn name(&self) -> &str {
        &self.name
    }

    fn sample(&mut self, _now: Instant) -> Result<Option<Sample>, SignalError> {
        for path in &self.paths {
            if let Some(text) = read_optional(path)? {
                return Ok(parse::psi_avg10(&text, self.kind)
                    .map_err(|e| SignalError::new(format!("{}: {e}", path.display())))?
                    .map(|v| Sample::scaled(v, &self.scale)));
            }
        }
        Ok(None)
    }
}
