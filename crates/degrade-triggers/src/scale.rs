//! From a raw measurement (percent, milliseconds, a count) to a pressure in `[0, 1]`.
//!
//! The ladder in degrade-core speaks pressures: it enters Light at 0.70, Moderate at 0.80, Heavy
//! at 0.90 and Emergency at 0.95 (its default `enter` thresholds). Operators speak raw values:
//! "CPU 80 % is Moderate", "a p99 of 500 ms is Heavy". A [`Scale`] joins the two with a
//! piecewise-linear map whose knots are exactly those pairs:
//!
//! | raw value | pressure |
//! |---|---|
//! | 0 | 0 |
//! | the signal's Light threshold | the ladder's Light `enter` (0.70) |
//! | Moderate threshold | Moderate `enter` (0.80) |
//! | Heavy threshold | Heavy `enter` (0.90) |
//! | Emergency threshold | Emergency `enter` (0.95) |
//!
//! Between knots the map interpolates; past Emergency it goes on with the slope of the last
//! segment (Heavy → Emergency) and stops at 1. So "CPU 80 %" with CPU thresholds 70 / 80 / 90 /
//! 95 lands exactly on 0.80 and enters Moderate, and nothing in between needs a second table.
//! The map rises strictly, so the ladder's exit thresholds (hysteresis) translate to raw values
//! too: with the defaults, Moderate is left when pressure falls below 0.70, that is when CPU
//! falls below 70 %.
//!
//! If the ladder is configured with other `enter` thresholds, build the scale with the same ones
//! ([`Scale::with_anchors`]), or the raw thresholds will not land on the levels they name.

use degrade_core::ConfigError;
use degrade_core::ladder::Thresholds;
use serde::{Deserialize, Serialize};

/// A signal's raw threshold for each level above Normal, in the signal's own unit.
///
/// In configuration files: `{ "light": 70, "moderate": 80, "heavy": 90, "emergency": 95 }`.
///
/// ```
/// use degrade_triggers::LevelThresholds;
/// let t = LevelThresholds::new(70.0, 80.0, 90.0, 95.0);
/// assert!(t.validate().is_ok());
/// assert_eq!(LevelThresholds::new(80.0, 70.0, 90.0, 95.0).validate().unwrap_err().field(), "moderate");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelThresholds {
    /// Raw value at which the signal alone points at Light.
    pub light: f64,
    /// Raw value at which the signal alone points at Moderate.
    pub moderate: f64,
    /// Raw value at which the signal alone points at Heavy.
    pub heavy: f64,
    /// Raw value at which the signal alone points at Emergency.
    pub emergency: f64,
}

impl LevelThresholds {
    /// Thresholds for Light, Moderate, Heavy and Emergency.
    ///
    /// ```
    /// # use degrade_triggers::LevelThresholds;
    /// let ms = LevelThresholds::new(100.0, 250.0, 500.0, 1000.0);
    /// assert_eq!(ms.heavy, 500.0);
    /// ```
    pub const fn new(light: f64, moderate: f64, heavy: f64, emergency: f64) -> Self {
        Self {
            light,
            moderate,
            heavy,
            emergency,
        }
    }

    /// The four values, Light first.
    ///
    /// ```
    /// # use degrade_triggers::LevelThresholds;
    /// assert_eq!(LevelThresholds::new(1.0, 2.0, 3.0, 4.0).as_array(), [1.0, 2.0, 3.0, 4.0]);
    /// ```
    pub const fn as_array(&self) -> [f64; 4] {
        [self.light, self.moderate, self.heavy, self.emergency]
    }

    /// Checks that every value is finite, the first is above zero and each is above the one
    /// before. The error names the field (`light`, `moderate`, ...).
    ///
    /// ```
    /// # use degrade_triggers::LevelThresholds;
    /// let err = LevelThresholds::new(0.0, 1.0, 2.0, 3.0).validate().unwrap_err();
    /// assert_eq!(err.field(), "light");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        const NAMES: [&str; 4] = ["light", "moderate", "heavy", "emergency"];
        let mut prev = 0.0;
        for (name, v) in NAMES.into_iter().zip(self.as_array()) {
            if !v.is_finite() {
                return Err(ConfigError::new(
                    name,
                    format!("must be a finite number, got {v}"),
                ));
            }
            if v <= prev {
                let rule = if name == "light" {
                    format!("must be greater than zero, got {v}")
                } else {
                    format!(
                        "must be greater than the threshold of the level below ({prev}), got {v}"
                    )
                };
                return Err(ConfigError::new(name, rule));
            }
            prev = v;
        }
        Ok(())
    }
}

/// The piecewise-linear map from a raw value to a pressure.
///
/// The ladder in degrade-core speaks pressures: it enters Light at 0.70, Moderate at 0.80, Heavy
/// at 0.90 and Emergency at 0.95 (its default `enter` thresholds). Operators speak raw values:
/// "CPU 80 % is Moderate", "a p99 of 500 ms is Heavy". A [`Scale`] joins the two with a
/// piecewise-linear map whose knots are exactly those pairs:
///
/// | raw value | pressure |
/// |---|---|
/// | 0 | 0 |
/// | the signal's Light threshold | the ladder's Light `enter` (0.70) |
/// | Moderate threshold | Moderate `enter` (0.80) |
/// | Heavy threshold | Heavy `enter` (0.90) |
/// | Emergency threshold | Emergency `enter` (0.95) |
///
/// Between knots the map interpolates; past Emergency it goes on with the slope of the last
/// segment (Heavy → Emergency) and stops at 1. So "CPU 80 %" with CPU thresholds 70 / 80 / 90 /
/// 95 lands exactly on 0.80 and enters Moderate, and nothing in between needs a second table.
/// The map rises strictly, so the ladder's exit thresholds (hysteresis) translate to raw values
/// too: with the defaults, Moderate is left when pressure falls below 0.70, that is when CPU
/// falls below 70 %.
///
/// If the ladder is configured with other `enter` thresholds, build the scale with the same ones
/// ([`Scale::with_anchors`]), or the raw thresholds will not land on the levels they name.
///
/// ```
/// use degrade_triggers::{LevelThresholds, Scale};
///
/// let cpu = Scale::new(LevelThresholds::new(70.0, 80.0, 90.0, 95.0))?;
/// assert_eq!(cpu.pressure(80.0), 0.80); // exactly Moderate's enter threshold
/// assert_eq!(cpu.pressure(35.0), 0.35);
/// assert_eq!(cpu.pressure(0.0), 0.0);
/// assert_eq!(cpu.pressure(500.0), 1.0);
///
/// let latency_ms = Scale::new(LevelThresholds::new(100.0, 250.0, 500.0, 1000.0))?;
/// assert_eq!(latency_ms.pressure(500.0), 0.90); // Heavy
/// assert!((latency_ms.pressure(175.0) - 0.75).abs() < 1e-12); // half way Light → Moderate
/// # Ok::<(), degrade_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    raw: [f64; 4],
    anchors: [f64; 4],
}

impl Scale {
    /// A scale anchored to the default ladder's `enter` thresholds (0.70, 0.80, 0.90, 0.95).
    ///
    /// # Errors
    ///
    /// When the thresholds are invalid ([`LevelThresholds::validate`]).
    ///
    /// ```
    /// # use degrade_triggers::{LevelThresholds, Scale};
    /// assert!(Scale::new(LevelThresholds::new(3.0, 2.0, 1.0, 0.5)).is_err());
    /// ```
    pub fn new(thresholds: LevelThresholds) -> Result<Self, ConfigError> {
        Self::with_anchors(thresholds, &Thresholds::default())
    }

    /// A scale anchored to a ladder's own `enter` thresholds.
    ///
    /// # Errors
    ///
    /// When the raw thresholds are invalid, or the anchors do not rise strictly within
    /// `(0, 1]` (field `anchors`).
    ///
    /// ```
    /// use degrade_core::ladder::Thresholds;
    /// use degrade_triggers::{LevelThresholds, Scale};
    ///
    /// let mut ladder = Thresholds::default();
    /// ladder.moderate.enter = 0.85;
    /// let s = Scale::with_anchors(LevelThresholds::new(70.0, 80.0, 90.0, 95.0), &ladder)?;
    /// assert_eq!(s.pressure(80.0), 0.85);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn with_anchors(
        thresholds: LevelThresholds,
        ladder: &Thresholds,
    ) -> Result<Self, ConfigError> {
        thresholds.validate()?;
        let anchors = [
            ladder.light.enter,
            ladder.moderate.enter,
            ladder.heavy.enter,
            ladder.emergency.enter,
        ];
        let mut prev = 0.0;
        for a in anchors {
            if !(a.is_finite() && a > prev && a <= 1.0) {
                return Err(ConfigError::new(
                    "anchors",
                    "ladder enter thresholds must rise strictly within (0, 1]",
                ));
            }
            prev = a;
        }
        Ok(Self {
            raw: thresholds.as_array(),
            anchors,
        })
    }

    /// A scale where pressure is proportional to `raw / full`: the thresholds are the anchors
    /// times `full` (with the default ladder, Light at 70 % of `full`, Emergency at 95 %).
    /// Use it for an SLA ("p99 must stay under 300 ms").
    ///
    /// # Errors
    ///
    /// When `full` is not a finite number above zero (field `full`).
    ///
    /// ```
    /// # use degrade_triggers::Scale;
    /// let sla = Scale::proportional(300.0)?;
    /// assert!((sla.pressure(150.0) - 0.5).abs() < 1e-12);
    /// assert!((sla.pressure(240.0) - 0.8).abs() < 1e-12);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn proportional(full: f64) -> Result<Self, ConfigError> {
        Self::proportional_anchored(full, &Thresholds::default())
    }

    pub(crate) fn proportional_anchored(full: f64, t: &Thresholds) -> Result<Self, ConfigError> {
        if !(full.is_finite() && full > 0.0) {
            return Err(ConfigError::new(
                "full",
                format!("must be a finite number above zero, got {full}"),
            ));
        }
        Self::with_anchors(
            LevelThresholds::new(
                t.light.enter * full,
                t.moderate.enter * full,
                t.heavy.enter * full,
                t.emergency.enter * full,
            ),
            t,
        )
    }

    /// The raw thresholds.
    ///
    /// ```
    /// # use degrade_triggers::{LevelThresholds, Scale};
    /// let t = LevelThresholds::new(1.0, 2.0, 3.0, 4.0);
    /// assert_eq!(Scale::new(t)?.thresholds(), t);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn thresholds(&self) -> LevelThresholds {
        LevelThresholds::new(self.raw[0], self.raw[1], self.raw[2], self.raw[3])
    }

    /// The pressure of a raw value, in `[0, 1]`. Negative values read as 0; NaN reads as 0
    /// too (callers report a NaN measurement as unknown before it gets here).
    ///
    /// ```
    /// # use degrade_triggers::{LevelThresholds, Scale};
    /// let s = Scale::new(LevelThresholds::new(70.0, 80.0, 90.0, 95.0))?;
    /// assert_eq!(s.pressure(-5.0), 0.0);
    /// assert_eq!(s.pressure(95.0), 0.95);
    /// assert_eq!(s.pressure(96.0), 0.96); // past Emergency: the Heavy → Emergency slope
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn pressure(&self, raw: f64) -> f64 {
        if raw.is_nan() || raw <= 0.0 {
            return 0.0;
        }
        let (r, a) = (&self.raw, &self.anchors);
        let p = if raw <= r[0] {
            // raw / r[0] is exactly 1 at the knot, so the Light threshold lands on its anchor.
            a[0] * (raw / r[0])
        } else if raw >= r[3] {
            a[3] + (raw - r[3]) * (a[3] - a[2]) / (r[3] - r[2])
        } else {
            // r[i] < raw <= r[i + 1] for some i in 0..3; the knot itself returns its anchor
            // exactly, so "80 % is Moderate" holds without rounding.
            let i = (0..3).find(|&i| raw <= r[i + 1]).unwrap_or(2);
            if raw == r[i + 1] {
                a[i + 1]
            } else {
                a[i] + (raw - r[i]) * (a[i + 1] - a[i]) / (r[i + 1] - r[i])
            }
        };
        p.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_raw_threshold_lands_exactly_on_its_ladder_anchor() {
        let s = Scale::new(LevelThresholds::new(70.0, 80.0, 90.0, 95.0)).unwrap();
        assert_eq!(s.pressure(70.0), 0.70);
        assert_eq!(s.pressure(80.0), 0.80);
        assert_eq!(s.pressure(90.0), 0.90);
        assert_eq!(s.pressure(95.0), 0.95);
        let s = Scale::new(LevelThresholds::new(75.0, 85.0, 92.0, 97.0)).unwrap();
        assert_eq!(s.pressure(85.0), 0.80);
        assert_eq!(s.pressure(97.0), 0.95);
    }

    #[test]
    fn the_map_rises_and_stays_in_the_unit_interval() {
        let s = Scale::new(LevelThresholds::new(100.0, 250.0, 500.0, 1000.0)).unwrap();
        let mut prev = -1.0;
        for i in 0..5000 {
            let p = s.pressure(f64::from(i));
            assert!((0.0..=1.0).contains(&p));
            assert!(p >= prev);
            prev = p;
        }
        assert_eq!(s.pressure(f64::INFINITY), 1.0);
        assert_eq!(s.pressure(f64::NAN), 0.0);
    }

    #[test]
    fn bad_thresholds_name_the_field() {
        let e = LevelThresholds::new(1.0, 2.0, 2.0, 3.0)
            .validate()
            .unwrap_err();
        assert_eq!(e.field(), "heavy");
        let e = LevelThresholds::new(1.0, 2.0, 3.0, f64::NAN)
            .validate()
            .unwrap_err();
        assert_eq!(e.field(), "emergency");
        assert_eq!(Scale::proportional(0.0).unwrap_err().field(), "full");
    }
}
