//! Errors of the rollout.

use crate::plan::StepKind;
use degrade_core::{BoxError, ConfigError};
use std::error::Error;
use std::fmt;
use std::path::PathBuf;
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

/// A journal that cannot be resumed: a line before the last is not a record, or a record
/// this rollout could not have written at that point. Acting on it could touch an instance
/// twice or skip one, so the controller refuses it and leaves the file as it is: inspect it,
/// then move it aside to start a new rollout.
///
/// (A torn *last* line is what a crash while appending leaves behind: it is dropped, with a
/// warning, and the rollout resumes from the lines before it.)
///
/// ```
/// use degrade_rollout::{CorruptJournal, RolloutError};
/// let e = CorruptJournal::new("rollout.jsonl", 3, "expected value at column 1");
/// assert_eq!(e.line, 3);
/// assert_eq!(
///     RolloutError::CorruptJournal(e).to_string(),
///     "corrupt journal rollout.jsonl, line 3: expected value at column 1"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CorruptJournal {
    /// The journal file.
    pub path: PathBuf,
    /// The line at fault, counted from 1.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

impl CorruptJournal {
    /// A fault at `line` (from 1) of the journal at `path`.
    ///
    /// ```
    /// # use degrade_rollout::CorruptJournal;
    /// assert_eq!(CorruptJournal::new("j", 1, "bad header").reason, "bad header");
    /// ```
    pub fn new(path: impl Into<PathBuf>, line: usize, reason: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            line,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for CorruptJournal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "corrupt journal {}, line {}: {}",
            self.path.display(),
            self.line,
            self.reason
        )
    }
}

impl Error for CorruptJournal {}

/// Why a rollout could not run (a failed rollout is not an error: it rolls back and reports
/// its [`RolloutOutcome`](crate::RolloutOutcome)).
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
    /// The journal holds something other than this rollout's records; nothing was written to
    /// it.
    CorruptJournal(CorruptJournal),
}

impl fmt::Display for RolloutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RolloutError::Config(e) => e.fmt(f),
            RolloutError::Journal(e) => write!(f, "journal: {e}"),
            RolloutError::CorruptJournal(e) => e.fmt(f),
        }
    }
}

impl Error for RolloutError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            RolloutError::Config(e) => Some(e),
            RolloutError::Journal(e) => Some(&**e),
            RolloutError::CorruptJournal(e) => Some(e),
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

impl From<CorruptJournal> for RolloutError {
    fn from(e: CorruptJournal) -> Self {
        RolloutError::CorruptJournal(e)
    }
}
