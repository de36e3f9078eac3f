//! Errors of the rollout.

use crate::plan::StepKind;
use degrade_core::{BoxError, ConfigError};
use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// A driver step failed on an instance.
///
/// ```
/// use degrade_rollout::{DriverError, plan::StepKind};
/// let e = DriverError::new("web-2", StepKind::Start, "no such file");
/// assert_eq!(e.to_string(), "start of instance `web-2` failed: no such file");
/// assert_eq!(e.instance, "web-2");
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DriverError {
    /// The instance id.
    pub instance: String,
    /// The step that failed.
    pub op: StepKind,
    /// The driver's error.
    pub source: Arc<dyn Error + Send + Sync>,
}

impl DriverError {
    /// A driver error on `instance` during `op`.
    ///
    /// ```
    /// # use degrade_rollout::{DriverError, plan::StepKind};
    /// let e = DriverError::new("a", StepKind::Stop, std::io::Error::other("gone"));
    /// assert_eq!(e.op, StepKind::Stop);
    /// ```
    pub fn new(instance: impl Into<String>, op: StepKind, source: impl Into<BoxError>) -> Self {
        Self {
            instance: instance.into(),
            op,
            source: Arc::from(source.into()),
        }
    }
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of instance `{}` failed: {}",
            self.op, self.instance, self.source
        )
    }
}

impl Error for DriverError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}

/// Why a rollout could not run (a failed rollout is not an error: it rolls back and reports
/// its [`Outcome`](crate::Outcome)).
///
/// ```
/// use degrade_rollout::RolloutError;
/// let e = RolloutError::from(degrade_core::ConfigError::new("instances", "must not be empty"));
/// assert_eq!(e.to_string(), "invalid `instances`: must not be empty");
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum RolloutError {
    /// Bad input: configuration, instance set, version, or a journal of another rollout.
    Config(ConfigError),
    /// The journal could not be read or written.
    Journal(Arc<std::io::Error>),
}

impl fmt::Display for RolloutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RolloutError::Config(e) => e.fmt(f),
            RolloutError::Journal(e) => write!(f, "journal: {e}"),
        }
    }
}

impl Error for RolloutError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            RolloutError::Config(e) => Some(e),
            RolloutError::Journal(e) => Some(&**e),
        }
    }
}

impl From<ConfigError> for RolloutError {
    fn from(e: ConfigError) -> Self {
        RolloutError::Config(e)
    }
}

impl From<std::io::Error> for RolloutError {
    fn from(e: std::io::Error) -> Self {
        RolloutError::Journal(Arc::new(e))
    }
}
