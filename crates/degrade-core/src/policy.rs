//! What each level means, as data.
//!
//! A [`Policy`] holds one [`LevelPolicy`] per level: the share of each priority to admit, the
//! trace sampling ratio, whether only errors or only critical services are traced, batch hints
//! for exporters, and whether verbose attributes are dropped. Layers and samplers read it; the
//! [`Ladder`](crate::ladder::Ladder) decides the level. Keeping both apart lets a service change
//! what "Heavy" does without touching when it is reached.
//!
//! The defaults follow the design sketch degrade grew from:
//!
//! | level | admit (background / low / normal / high / critical) | sampling | traces | batch hint |
//! |---|---|---|---|---|
//! | normal | 1 / 1 / 1 / 1 / 1 | 1.0 | all | – |
//! | light | 0 / 0.5 / 1 / 1 / 1 | 0.5 | all | – |
//! | moderate | 0 / 0 / 0.5 / 1 / 1 | 0.1 | all, verbose attributes dropped | 1024 spans / 10 s |
//! | heavy | 0 / 0 / 0 / 0.5 / 1 | 0.01 | all, verbose attributes dropped | 2048 spans / 15 s |
//! | emergency | 0 / 0 / 0 / 0 / 1 | 0.001 | errors only | 2048 spans / 30 s |

use crate::config::{ConfigError, check_range};
use crate::level::Level;
use crate::priority::Priority;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The share of each priority admitted at one level, each in `[0, 1]`.
///
/// ```
/// use degrade_core::policy::AdmitShares;
/// use degrade_core::Priority;
/// let s = AdmitShares { background: 0.0, low: 0.5, normal: 1.0, high: 1.0, critical: 1.0 };
/// assert_eq!(s.get(Priority::Low), 0.5);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmitShares {
    /// Share of [`Priority::Background`] admitted.
    pub background: f64,
    /// Share of [`Priority::Low`] admitted.
    pub low: f64,
    /// Share of [`Priority::Normal`] admitted.
    pub normal: f64,
    /// Share of [`Priority::High`] admitted.
    pub high: f64,
    /// Share of [`Priority::Critical`] admitted.
    pub critical: f64,
}

impl AdmitShares {
    /// Admit everything.
    ///
    /// ```
    /// # use degrade_core::{policy::AdmitShares, Priority};
    /// assert_eq!(AdmitShares::ALL.get(Priority::Background), 1.0);
    /// ```
    pub const ALL: AdmitShares = AdmitShares {
        background: 1.0,
        low: 1.0,
        normal: 1.0,
        high: 1.0,
        critical: 1.0,
    };

    /// The share of `priority`.
    ///
    /// ```
    /// # use degrade_core::{policy::AdmitShares, Priority};
    /// assert_eq!(AdmitShares::ALL.get(Priority::Critical), 1.0);
    /// ```
    pub fn get(&self, priority: Priority) -> f64 {
        match priority {
            Priority::Background => self.background,
            Priority::Low => self.low,
            Priority::Normal => self.normal,
            Priority::High => self.high,
            Priority::Critical => self.critical,
        }
    }
}

/// What one level means.
///
/// ```
/// use degrade_core::{Level, Policy, Priority};
/// let heavy = Policy::default().level(Level::Heavy).clone();
/// assert_eq!(heavy.admit.get(Priority::High), 0.5);
/// assert_eq!(heavy.sampling, 0.01);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelPolicy {
    /// Share of each priority admitted by the [`DegradeLayer`](crate::DegradeLayer).
    pub admit: AdmitShares,
    /// Trace sampling ratio in `[0, 1]`.
    pub sampling: f64,
    /// Trace only spans of failed operations.
    #[serde(default)]
    pub errors_only: bool,
    /// Trace only the services listed in [`Policy::critical`] (and errors).
    #[serde(default)]
    pub critical_only: bool,
    /// Exporter hint: merge export batches up to this many spans.
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Exporter hint: wait up to this long to fill a batch.
    #[serde(default, with = "humantime_serde")]
    pub batch_wait: Option<Duration>,
    /// Drop attributes not on the exporter's allow-list.
    #[serde(default)]
    pub drop_verbose_attributes: bool,
}

impl LevelPolicy {
    fn with(admit: AdmitShares, sampling: f64) -> Self {
        Self {
            admit,
            sampling,
            errors_only: false,
            critical_only: false,
            batch_size: None,
            batch_wait: None,
            drop_verbose_attributes: false,
        }
    }
}

/// The level → action table. See the [module documentation](self) for the defaults.
///
/// ```
/// use degrade_core::{Level, Policy};
///
/// let policy: Policy = serde_json::from_str(r#"{
///     "critical": ["payments", "/api/checkout*"],
///     "heavy": { "admit": { "background": 0, "low": 0, "normal": 0.2, "high": 1, "critical": 1 }, "sampling": 0.05 }
/// }"#).unwrap();
/// policy.validate().unwrap();
/// assert_eq!(policy.recommended_sampling_ratio(Level::Heavy), 0.05);
/// assert!(policy.is_critical("/api/checkout/confirm"));
/// assert!(policy.should_trace(Level::Emergency, "search", true));
/// assert!(!policy.should_trace(Level::Emergency, "search", false));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// At Normal.
    pub normal: LevelPolicy,
    /// At Light.
    pub light: LevelPolicy,
    /// At Moderate.
    pub moderate: LevelPolicy,
    /// At Heavy.
    pub heavy: LevelPolicy,
    /// At Emergency.
    pub emergency: LevelPolicy,
    /// Critical services or routes: an exact name, or a prefix when the entry ends with `*`.
    pub critical: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        let shares = |background, low, normal, high| AdmitShares {
            background,
            low,
            normal,
            high,
            critical: 1.0,
        };
        let mut moderate = LevelPolicy::with(shares(0.0, 0.0, 0.5, 1.0), 0.1);
        moderate.drop_verbose_attributes = true;
        moderate.batch_size = Some(1024);
        moderate.batch_wait = Some(Duration::from_secs(10));
        let mut heavy = LevelPolicy::with(shares(0.0, 0.0, 0.0, 0.5), 0.01);
        heavy.drop_verbose_attributes = true;
        heavy.batch_size = Some(2048);
        heavy.batch_wait = Some(Duration::from_secs(15));
        let mut emergency = LevelPolicy::with(shares(0.0, 0.0, 0.0, 0.0), 0.001);
        emergency.errors_only = true;
        emergency.drop_verbose_attributes = true;
        emergency.batch_size = Some(2048);
        emergency.batch_wait = Some(Duration::from_secs(30));
        Self {
            normal: LevelPolicy::with(AdmitShares::ALL, 1.0),
            light: LevelPolicy::with(shares(0.0, 0.5, 1.0, 1.0), 0.5),
            moderate,
            heavy,
            emergency,
            critical: Vec::new(),
        }
    }
}

impl Policy {
    /// The policy of `level`.
    ///
    /// ```
    /// # use degrade_core::{Level, Policy};
    /// assert!(Policy::default().level(Level::Emergency).errors_only);
    /// ```
    pub fn level(&self, level: Level) -> &LevelPolicy {
        match level {
            Level::Normal => &self.normal,
            Level::Light => &self.light,
            Level::Moderate => &self.moderate,
            Level::Heavy => &self.heavy,
            Level::Emergency => &self.emergency,
        }
    }

    /// The policy of `level`, to change it.
    ///
    /// ```
    /// # use degrade_core::{Level, Policy};
    /// let mut p = Policy::default();
    /// p.level_mut(Level::Light).sampling = 0.25;
    /// assert_eq!(p.recommended_sampling_ratio(Level::Light), 0.25);
    /// ```
    pub fn level_mut(&mut self, level: Level) -> &mut LevelPolicy {
        match level {
            Level::Normal => &mut self.normal,
            Level::Light => &mut self.light,
            Level::Moderate => &mut self.moderate,
            Level::Heavy => &mut self.heavy,
            Level::Emergency => &mut self.emergency,
        }
    }

    /// Adds a critical service or route (a prefix when it ends with `*`).
    ///
    /// ```
    /// # use degrade_core::Policy;
    /// let p = Policy::default().with_critical("checkout");
    /// assert!(p.is_critical("checkout") && !p.is_critical("search"));
    /// ```
    #[must_use]
    pub fn with_critical(mut self, name: impl Into<String>) -> Self {
        self.critical.push(name.into());
        self
    }

    /// The trace sampling ratio at `level` (seed defaults 1.0 / 0.5 / 0.1 / 0.01 / 0.001).
    ///
    /// ```
    /// # use degrade_core::{Level, Policy};
    /// let p = Policy::default();
    /// let ratios: Vec<f64> = Level::ALL.iter().map(|l| p.recommended_sampling_ratio(*l)).collect();
    /// assert_eq!(ratios, [1.0, 0.5, 0.1, 0.01, 0.001]);
    /// ```
    pub fn recommended_sampling_ratio(&self, level: Level) -> f64 {
        self.level(level).sampling
    }

    /// Whether `service` (or route) is in the critical list.
    ///
    /// ```
    /// # use degrade_core::Policy;
    /// let p = Policy::default().with_critical("/pay*");
    /// assert!(p.is_critical("/payments"));
    /// ```
    pub fn is_critical(&self, service: &str) -> bool {
        self.critical.iter().any(|c| match c.strip_suffix('*') {
            Some(prefix) => service.starts_with(prefix),
            None => c == service,
        })
    }

    /// Whether a span of `service` should be traced at `level`: errors are always traced;
    /// with `errors_only` nothing else is; with `critical_only` only critical services are.
    /// (The sampling ratio applies on top.)
    ///
    /// ```
    /// # use degrade_core::{Level, Policy};
    /// let mut p = Policy::default().with_critical("payments");
    /// p.heavy.critical_only = true;
    /// assert!(p.should_trace(Level::Heavy, "payments", false));
    /// assert!(!p.should_trace(Level::Heavy, "search", false));
    /// assert!(p.should_trace(Level::Heavy, "search", true));
    /// ```
    pub fn should_trace(&self, level: Level, service: &str, is_error: bool) -> bool {
        let lp = self.level(level);
        if is_error {
            return true;
        }
        if lp.errors_only {
            return false;
        }
        !lp.critical_only || self.is_critical(service)
    }

    /// Checks every rule; the error names the field (`heavy.admit.low`).
    ///
    /// Rules: shares and sampling ratios are finite numbers in `[0, 1]`; within a level, a
    /// priority may be cut below 1 only if every lower priority is cut to 0 (never shed a
    /// higher priority while admitting a lower one); no share and no sampling ratio rises as
    /// the level rises; batch hints, when set, are positive; critical entries are not empty.
    ///
    /// ```
    /// # use degrade_core::Policy;
    /// let mut p = Policy::default();
    /// p.light.admit.low = 1.0; // Light keeps all Low but only 0 of Background: fine
    /// p.validate().unwrap();
    /// p.light.admit.high = 0.9; // High cut while Normal and Low are admitted
    /// assert_eq!(p.validate().unwrap_err().field(), "light.admit.normal");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut prev: Option<&LevelPolicy> = None;
        for level in Level::ALL {
            let name = level.as_str();
            let lp = self.level(level);
            for p in Priority::ALL {
                check_range(
                    format!("{name}.admit.{}", p.as_str()),
                    lp.admit.get(p),
                    0.0,
                    1.0,
                )?;
            }
            // Walk from the highest priority down: once one is cut, all below must be 0.
            let mut cut: Option<Priority> = None;
            for p in Priority::ALL.into_iter().rev() {
                let share = lp.admit.get(p);
                if let Some(higher) = cut {
                    if share > 0.0 {
                        return Err(ConfigError::new(
                            format!("{name}.admit.{}", p.as_str()),
                            format!(
                                "must be 0 because the higher priority `{higher}` is not admitted in full"
                            ),
                        ));
                    }
                } else if share < 1.0 {
                    cut = Some(p);
                }
            }
            check_range(format!("{name}.sampling"), lp.sampling, 0.0, 1.0)?;
            if lp.batch_size == Some(0) {
                return Err(ConfigError::new(
                    format!("{name}.batch_size"),
                    "must be at least 1 when set",
                ));
            }
            if lp.batch_wait.is_some_and(|w| w.is_zero()) {
                return Err(ConfigError::new(
                    format!("{name}.batch_wait"),
                    "must be greater than zero when set",
                ));
            }
            if let Some(prev) = prev {
                for p in Priority::ALL {
                    if lp.admit.get(p) > prev.admit.get(p) {
                        return Err(ConfigError::new(
                            format!("{name}.admit.{}", p.as_str()),
                            "must not be greater than at the level below",
                        ));
                    }
                }
                if lp.sampling > prev.sampling {
                    return Err(ConfigError::new(
                        format!("{name}.sampling"),
                        "must not be greater than at the level below",
                    ));
                }
            }
            prev = Some(lp);
        }
        if let Some(i) = self
            .critical
            .iter()
            .position(|c| c.trim_end_matches('*').is_empty())
        {
            return Err(ConfigError::new(
                format!("critical[{i}]"),
                "must not be empty (an empty prefix would make everything critical)",
            ));
        }
        Ok(())
    }

    /// The admit share of every (level, priority) in basis points, for the hot path.
    pub(crate) fn admit_table(&self) -> [[u32; 5]; 5] {
        let mut t = [[0u32; 5]; 5];
        for level in Level::ALL {
            for p in Priority::ALL {
                // Validated to [0, 1]; the cast cannot overflow.
                t[level.index()][p.index()] =
                    (self.level(level).admit.get(p) * 10_000.0).round() as u32;
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_is_valid() {
        Policy::default().validate().unwrap();
    }

    #[test]
    fn each_rule_names_its_field() {
        type Mutation = Box<dyn Fn(&mut Policy)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|p| p.light.admit.low = f64::NAN),
                "light.admit.low",
            ),
            (Box::new(|p| p.light.admit.low = 1.5), "light.admit.low"),
            (
                Box::new(|p| p.normal.admit.background = -0.1),
                "normal.admit.background",
            ),
            (
                Box::new(|p| p.heavy.admit.critical = 0.5),
                "heavy.admit.high",
            ),
            (Box::new(|p| p.light.sampling = 2.0), "light.sampling"),
            (Box::new(|p| p.heavy.sampling = 0.9), "heavy.sampling"),
            (
                Box::new(|p| p.moderate.admit.background = 0.5),
                "moderate.admit.background",
            ),
            (
                Box::new(|p| p.moderate.batch_size = Some(0)),
                "moderate.batch_size",
            ),
            (
                Box::new(|p| p.heavy.batch_wait = Some(Duration::ZERO)),
                "heavy.batch_wait",
            ),
            (Box::new(|p| p.critical.push("*".into())), "critical[0]"),
        ];
        for (mutate, field) in cases {
            let mut p = Policy::default();
            mutate(&mut p);
            assert_eq!(p.validate().unwrap_err().field(), field);
        }
    }

    #[test]
    fn admit_table_is_in_basis_points() {
        let t = Policy::default().admit_table();
        assert_eq!(t[Level::Light.index()][Priority::Low.index()], 5_000);
        assert_eq!(
            t[Level::Emergency.index()][Priority::Critical.index()],
            10_000
        );
        assert_eq!(t[Level::Emergency.index()][Priority::High.index()], 0);
    }
}
