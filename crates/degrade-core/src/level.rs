//! The five degradation levels.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How degraded a service is, from [`Normal`](Level::Normal) to [`Emergency`](Level::Emergency).
///
/// Levels are ordered (`Level::Heavy > Level::Light`), print and parse in lower case, and
/// (de)serialize the same way.
///
/// ```
/// use degrade_core::Level;
///
/// assert!(Level::Heavy > Level::Light);
/// assert_eq!(Level::Moderate.to_string(), "moderate");
/// assert_eq!("Emergency".parse::<Level>().unwrap(), Level::Emergency);
/// assert_eq!(Level::Light.up(), Level::Moderate);
/// assert_eq!(Level::Normal.down(), Level::Normal);
/// ```
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Level {
    /// Everything is admitted and traced.
    #[default]
    Normal = 0,
    /// The least important work is shed.
    Light = 1,
    /// Only important work is admitted in full.
    Moderate = 2,
    /// Only high-priority and critical work.
    Heavy = 3,
    /// Critical work only.
    Emergency = 4,
}

impl Level {
    /// All levels, lowest first.
    ///
    /// ```
    /// # use degrade_core::Level;
    /// assert_eq!(Level::ALL.len(), 5);
    /// assert_eq!(Level::ALL[0], Level::Normal);
    /// ```
    pub const ALL: [Level; 5] = [
        Level::Normal,
        Level::Light,
        Level::Moderate,
        Level::Heavy,
        Level::Emergency,
    ];

    /// The level's index, 0 (Normal) to 4 (Emergency).
    ///
    /// ```
    /// # use degrade_core::Level;
    /// assert_eq!(Level::Heavy.index(), 3);
    /// ```
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The level at `index`, or `None` past Emergency.
    ///
    /// ```
    /// # use degrade_core::Level;
    /// assert_eq!(Level::from_index(1), Some(Level::Light));
    /// assert_eq!(Level::from_index(5), None);
    /// ```
    #[inline]
    pub const fn from_index(index: usize) -> Option<Level> {
        match index {
            0 => Some(Level::Normal),
            1 => Some(Level::Light),
            2 => Some(Level::Moderate),
            3 => Some(Level::Heavy),
            4 => Some(Level::Emergency),
            _ => None,
        }
    }

    /// One level more degraded (Emergency stays Emergency).
    ///
    /// ```
    /// # use degrade_core::Level;
    /// assert_eq!(Level::Emergency.up(), Level::Emergency);
    /// ```
    pub const fn up(self) -> Level {
        match Level::from_index(self.index() + 1) {
            Some(l) => l,
            None => Level::Emergency,
        }
    }

    /// One level less degraded (Normal stays Normal).
    ///
    /// ```
    /// # use degrade_core::Level;
    /// assert_eq!(Level::Light.down(), Level::Normal);
    /// ```
    pub const fn down(self) -> Level {
        match self.index().checked_sub(1) {
            Some(i) => match Level::from_index(i) {
                Some(l) => l,
                None => Level::Normal,
            },
            None => Level::Normal,
        }
    }

    /// The lower-case name (`"heavy"`).
    ///
    /// ```
    /// # use degrade_core::Level;
    /// assert_eq!(Level::Heavy.as_str(), "heavy");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Level::Normal => "normal",
            Level::Light => "light",
            Level::Moderate => "moderate",
            Level::Heavy => "heavy",
            Level::Emergency => "emergency",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not a level name.
///
/// ```
/// # use degrade_core::Level;
/// let err = "severe".parse::<Level>().unwrap_err();
/// assert_eq!(err.to_string(), "unknown level `severe` (expected normal, light, moderate, heavy or emergency)");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseLevelError {
    input: String,
}

impl fmt::Display for ParseLevelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown level `{}` (expected normal, light, moderate, heavy or emergency)",
            self.input
        )
    }
}

impl std::error::Error for ParseLevelError {}

impl FromStr for Level {
    type Err = ParseLevelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Level::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ParseLevelError {
                input: s.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        for l in Level::ALL {
            assert_eq!(l.to_string().parse::<Level>().unwrap(), l);
            assert_eq!(Level::from_index(l.index()), Some(l));
        }
    }

    #[test]
    fn serde_uses_lower_case_names() {
        assert_eq!(serde_json::to_string(&Level::Heavy).unwrap(), "\"heavy\"");
        assert_eq!(
            serde_json::from_str::<Level>("\"light\"").unwrap(),
            Level::Light
        );
        assert!(serde_json::from_str::<Level>("\"severe\"").is_err());
    }

    #[test]
    fn up_and_down_saturate() {
        assert_eq!(Level::Normal.down(), Level::Normal);
        assert_eq!(Level::Emergency.up(), Level::Emergency);
        assert_eq!(Level::Light.up().down(), Level::Light);
    }
}
