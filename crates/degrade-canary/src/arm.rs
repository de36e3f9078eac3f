//! The two arms and the live weight.

use degrade_core::ConfigError;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Full weight in basis points (100 %).
///
/// ```
/// use degrade_canary::{FULL_BP, Weight};
/// assert_eq!(Weight::new(FULL_BP).unwrap().get(), 10_000);
/// ```
pub const FULL_BP: u32 = 10_000;

/// Which backend served a request. [`Canary`](crate::Canary) records the arm each request
/// actually took, in its statistics and (in HTTP mode) as a response extension.
///
/// ```
/// use degrade_canary::Arm;
/// assert_eq!(Arm::Canary.as_str(), "canary");
/// assert_eq!("stable".parse::<Arm>(), Ok(Arm::Stable));
/// assert!("v3".parse::<Arm>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arm {
    /// The current release.
    Stable,
    /// The release under test.
    Canary,
}

impl Arm {
    /// `"stable"` or `"canary"`.
    ///
    /// ```
    /// # use degrade_canary::Arm;
    /// assert_eq!(Arm::Stable.as_str(), "stable");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Arm::Stable => "stable",
            Arm::Canary => "canary",
        }
    }

    /// 0 for stable, 1 for canary.
    ///
    /// ```
    /// # use degrade_canary::Arm;
    /// assert_eq!(Arm::Canary.index(), 1);
    /// ```
    pub fn index(self) -> usize {
        match self {
            Arm::Stable => 0,
            Arm::Canary => 1,
        }
    }
}

impl fmt::Display for Arm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing an [`Arm`] from anything but `stable` or `canary`.
///
/// ```
/// # use degrade_canary::Arm;
/// let err = "both".parse::<Arm>().unwrap_err();
/// assert_eq!(err.to_string(), "unknown arm, expected `stable` or `canary`");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ParseArmError;

impl fmt::Display for ParseArmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unknown arm, expected `stable` or `canary`")
    }
}

impl std::error::Error for ParseArmError {}

impl std::str::FromStr for Arm {
    type Err = ParseArmError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("stable") {
            Ok(Arm::Stable)
        } else if s.eq_ignore_ascii_case("canary") {
            Ok(Arm::Canary)
        } else {
            Err(ParseArmError)
        }
    }
}

/// The canary's share of traffic in basis points (0 = none, 10 000 = all), shared by the
/// router (one relaxed atomic load per request) and whoever moves it (the controller, or you).
///
/// Clones share one weight.
///
/// ```
/// use degrade_canary::Weight;
/// let w = Weight::new(100).unwrap(); // 1 %
/// let router_view = w.clone();
/// w.set_percent(25.0).unwrap();
/// assert_eq!(router_view.get(), 2_500);
/// assert!(w.set(10_001).is_err());
/// assert_eq!(w.get(), 2_500);
/// ```
#[derive(Clone)]
pub struct Weight(Arc<AtomicU32>);

impl Weight {
    /// A weight of `bp` basis points; `ConfigError` above 10 000.
    ///
    /// ```
    /// # use degrade_canary::Weight;
    /// assert_eq!(Weight::new(0).unwrap().get(), 0);
    /// assert_eq!(Weight::new(20_000).unwrap_err().field(), "weight");
    /// ```
    pub fn new(bp: u32) -> Result<Self, ConfigError> {
        check_bp("weight", bp)?;
        Ok(Self(Arc::new(AtomicU32::new(bp))))
    }

    /// The current weight in basis points.
    ///
    /// ```
    /// # use degrade_canary::Weight;
    /// assert_eq!(Weight::new(500).unwrap().get(), 500);
    /// ```
    #[inline]
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    /// Sets the weight in basis points; `ConfigError` above 10 000 (the weight is unchanged).
    ///
    /// ```
    /// # use degrade_canary::Weight;
    /// let w = Weight::new(0).unwrap();
    /// w.set(10_000).unwrap();
    /// assert_eq!(w.get(), 10_000);
    /// ```
    pub fn set(&self, bp: u32) -> Result<(), ConfigError> {
        check_bp("weight", bp)?;
        self.0.store(bp, Ordering::Relaxed);
        Ok(())
    }

    /// Sets the weight in percent (`0.0..=100.0`, rounded to a basis point).
    ///
    /// ```
    /// # use degrade_canary::Weight;
    /// let w = Weight::new(0).unwrap();
    /// w.set_percent(12.5).unwrap();
    /// assert_eq!(w.get(), 1_250);
    /// assert!(w.set_percent(f64::NAN).is_err());
    /// assert!(w.set_percent(-1.0).is_err());
    /// ```
    pub fn set_percent(&self, percent: f64) -> Result<(), ConfigError> {
        self.set(percent_to_bp("weight", percent)?)
    }
}

impl fmt::Debug for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Weight").field(&self.get()).finish()
    }
}

pub(crate) fn check_bp(field: &'static str, bp: u32) -> Result<(), ConfigError> {
    if bp > FULL_BP {
        return Err(ConfigError::new(
            field,
            "must be between 0 and 10000 basis points (0-100 %)",
        ));
    }
    Ok(())
}

pub(crate) fn percent_to_bp(field: &'static str, percent: f64) -> Result<u32, ConfigError> {
    if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
        return Err(ConfigError::new(field, "must be a percentage in [0, 100]"));
    }
    Ok((percent * 100.0).round() as u32)
}
