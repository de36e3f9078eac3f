//! Configuration errors shared by every degrade crate.
//!
//! Every configuration in degrade is plain data (`serde`-deserializable, durations in humantime
//! form such as `"250ms"` or `"30s"`) and is checked by a `validate()` or `build()` step before it
//! is used. A failed check is a [`ConfigError`] that names the offending field and the rule it
//! broke; nothing in degrade panics on a user-supplied value.

use std::borrow::Cow;
use std::fmt;

/// A configuration value broke a rule.
///
/// The error names the field by its path in the configuration (for example
/// `ladder.enter[2]` or `policy.levels.heavy.admit.low`) and states the rule in words, so a
/// message read in a log is enough to fix the file.
///
/// ```
/// use degrade_core::ConfigError;
///
/// let err = ConfigError::new("ladder.dwell", "must be greater than zero");
/// assert_eq!(err.field(), "ladder.dwell");
/// assert_eq!(err.rule(), "must be greater than zero");
/// assert_eq!(err.to_string(), "invalid `ladder.dwell`: must be greater than zero");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: Cow<'static, str>,
    rule: Cow<'static, str>,
}

impl ConfigError {
    /// Creates an error for `field` (its path in the configuration) breaking `rule`.
    ///
    /// ```
    /// # use degrade_core::ConfigError;
    /// let err = ConfigError::new(format!("policy.levels.{}.sampling", "heavy"), "must be in [0, 1]");
    /// assert!(err.to_string().contains("policy.levels.heavy.sampling"));
    /// ```
    pub fn new(field: impl Into<Cow<'static, str>>, rule: impl Into<Cow<'static, str>>) -> Self {
        Self {
            field: field.into(),
            rule: rule.into(),
        }
    }

    /// The path of the field that broke the rule.
    ///
    /// ```
    /// # use degrade_core::ConfigError;
    /// assert_eq!(ConfigError::new("a.b", "rule").field(), "a.b");
    /// ```
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The rule, in words.
    ///
    /// ```
    /// # use degrade_core::ConfigError;
    /// assert_eq!(ConfigError::new("a.b", "must be positive").rule(), "must be positive");
    /// ```
    pub fn rule(&self) -> &str {
        &self.rule
    }

    /// Returns the same error with `prefix.` put before the field path, so a nested
    /// configuration can report the full path (`ladder.dwell` rather than `dwell`).
    ///
    /// ```
    /// # use degrade_core::ConfigError;
    /// let err = ConfigError::new("dwell", "must be greater than zero").within("ladder");
    /// assert_eq!(err.field(), "ladder.dwell");
    /// ```
    #[must_use]
    pub fn within(self, prefix: &str) -> Self {
        Self {
            field: Cow::Owned(format!("{prefix}.{}", self.field)),
            rule: self.rule,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid `{}`: {}", self.field, self.rule)
    }
}

impl std::error::Error for ConfigError {}

/// Checks that `value` is a finite number in `[lo, hi]`.
pub(crate) fn check_range(
    field: impl Into<Cow<'static, str>>,
    value: f64,
    lo: f64,
    hi: f64,
) -> Result<(), ConfigError> {
    if value.is_finite() && value >= lo && value <= hi {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("must be a finite number in [{lo}, {hi}], got {value}"),
        ))
    }
}
