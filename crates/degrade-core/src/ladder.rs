//! The ladder: the level controller, as a pure state machine.
//!
//! # Why a ladder with hysteresis
//!
//! Most overload protections compare one signal with one limit and flip a flag: the OpenTelemetry
//! Collector's memory limiter refuses everything above its limit and accepts everything below it,
//! Envoy's scaled CPU trigger flip-flops around its threshold, Sentinel acts on raw one-second
//! samples. A service that sheds load sees its pressure fall at once, so a single limit makes it
//! oscillate: shed, recover, overload, shed.
//!
//! The ladder damps that in three ways:
//!
//! * **Two thresholds per level.** A level is *entered* when pressure reaches its `enter`
//!   threshold and *left* only when pressure falls below its lower `exit` threshold.
//! * **Consecutive samples.** Escalating needs `escalate_after` consecutive samples at or above
//!   the next level's `enter`; recovering needs `recover_after` consecutive samples below the
//!   current level's `exit`. One noisy sample moves nothing.
//! * **Dwell and stepwise recovery.** The ladder never steps down sooner than `dwell` after its
//!   last transition, and steps down one level at a time, so recovery from Emergency to Normal
//!   takes at least four dwells and each step is observed before the next.
//! * **Recovery backoff.** A step down that proves premature — pressure escalates again within
//!   the dwell that followed it — makes the next step down wait `dwell_backoff` times longer
//!   (default 2×, up to `max_dwell`, default 4 × `dwell`). A service whose load only falls
//!   because it is shedding probes recovery less and less often instead of bouncing every dwell.
//!
//! Escalation is meant to be fast: with `jump` (the default) a sustained pressure far over the
//! next threshold goes straight to the level it points at, and escalation waits for no dwell
//! unless `escalate_cooldown` asks it to. With `escalate_cooldown` equal to `dwell`, no two
//! transitions are ever closer than the dwell.
//!
//! # Pressures
//!
//! The ladder is fed [`Reading`]s: one per named signal, each a pressure in `[0, 1]` or unknown
//! (a stale or failed signal). The worst known signal drives the decision. What an unknown signal
//! means is the [`UnknownPolicy`]. Values outside `[0, 1]` are clamped; NaN reads as unknown.
//!
//! # Purity
//!
//! [`Ladder::on_event`] is a function of (state, event, now): no clock, no I/O, no task. The
//! [`Controller`](crate::Controller) adds the clock, a lock and publication; tests drive the ladder
//! directly with made-up instants.
//!
//! ```
//! use degrade_core::ladder::{Ladder, LadderConfig, Reading};
//! use degrade_core::Level;
//! use std::time::Duration;
//! use tokio::time::Instant;
//!
//! let mut ladder = Ladder::new(LadderConfig::default(), Instant::now()).unwrap();
//! let mut now = Instant::now();
//! let hot = [Reading::new("cpu", 0.97)];
//! for _ in 0..3 {
//!     now += Duration::from_secs(1);
//!     ladder.observe(&hot, now);
//! }
//! // Three samples at 0.97 jump straight to Emergency (enter 0.95).
//! assert_eq!(ladder.level(), Level::Emergency);
//! ```

use crate::PerLevel;
use crate::config::{ConfigError, check_range};
use crate::level::Level;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::time::Instant;

/// The enter and exit thresholds of one level.
///
/// ```
/// use degrade_core::ladder::Band;
/// let b = Band { enter: 0.9, exit: 0.8 };
/// assert!(b.exit < b.enter);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Band {
    /// Pressure at or above which the level is entered.
    pub enter: f64,
    /// Pressure below which the level is left (must be below `enter`).
    pub exit: f64,
}

/// The thresholds of the four levels above Normal.
///
/// ```
/// use degrade_core::ladder::Thresholds;
/// let t = Thresholds::default();
/// assert_eq!((t.light.enter, t.light.exit), (0.70, 0.60));
/// assert_eq!((t.emergency.enter, t.emergency.exit), (0.95, 0.88));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// Light: enter 0.70, exit 0.60 by default.
    pub light: Band,
    /// Moderate: enter 0.80, exit 0.70 by default.
    pub moderate: Band,
    /// Heavy: enter 0.90, exit 0.80 by default.
    pub heavy: Band,
    /// Emergency: enter 0.95, exit 0.88 by default.
    pub emergency: Band,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            light: Band {
                enter: 0.70,
                exit: 0.60,
            },
            moderate: Band {
                enter: 0.80,
                exit: 0.70,
            },
            heavy: Band {
                enter: 0.90,
                exit: 0.80,
            },
            emergency: Band {
                enter: 0.95,
                exit: 0.88,
            },
        }
    }
}

impl Thresholds {
    /// The band of `level`, or `None` for Normal (which has no thresholds).
    ///
    /// ```
    /// # use degrade_core::{ladder::Thresholds, Level};
    /// assert_eq!(Thresholds::default().band(Level::Heavy).unwrap().enter, 0.90);
    /// assert!(Thresholds::default().band(Level::Normal).is_none());
    /// ```
    pub fn band(&self, level: Level) -> Option<Band> {
        match level {
            Level::Normal => None,
            Level::Light => Some(self.light),
            Level::Moderate => Some(self.moderate),
            Level::Heavy => Some(self.heavy),
            Level::Emergency => Some(self.emergency),
        }
    }
}

/// What an unknown (stale, failed or NaN) signal means to the ladder.
///
/// In configuration files: `"ignore"`, `"hold"` or `{ "assume": 0.5 }`.
///
/// ```
/// use degrade_core::ladder::UnknownPolicy;
/// let p: UnknownPolicy = serde_json::from_str(r#"{"assume":0.5}"#).unwrap();
/// assert_eq!(p, UnknownPolicy::Assume(0.5));
/// assert_eq!(serde_json::from_str::<UnknownPolicy>(r#""hold""#).unwrap(), UnknownPolicy::Hold);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownPolicy {
    /// Decide on the known signals alone; with none known, hold the level. The default: a
    /// reader that breaks for good must not pin a service in a degraded level forever.
    #[default]
    Ignore,
    /// Decide escalation on the known signals, but never step down while any signal is unknown.
    /// Conservative: recovery waits until every signal reads again.
    Hold,
    /// Treat an unknown signal as this pressure.
    Assume(f64),
}

/// The ladder's configuration. Every field has a default; deserialize a partial document.
///
/// ```
/// use degrade_core::ladder::LadderConfig;
/// use std::time::Duration;
///
/// let cfg: LadderConfig = serde_json::from_str(r#"{ "dwell": "10s", "escalate_after": 2 }"#).unwrap();
/// assert_eq!(cfg.dwell, Duration::from_secs(10));
/// assert_eq!(cfg.recover_after, 3);
/// cfg.validate().unwrap();
///
/// let bad = LadderConfig { escalate_after: 0, ..Default::default() };
/// assert_eq!(bad.validate().unwrap_err().field(), "escalate_after");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LadderConfig {
    /// Enter and exit thresholds per level.
    pub thresholds: Thresholds,
    /// Consecutive samples at or above the next level's `enter` needed to escalate (default 3).
    pub escalate_after: u32,
    /// Consecutive samples below the current level's `exit` needed to step down (default 3).
    pub recover_after: u32,
    /// Minimum time after any transition before stepping down (default 30 s).
    #[serde(with = "humantime_serde")]
    pub dwell: Duration,
    /// When a step down proves premature (pressure escalates again within the dwell that
    /// followed it), the next step down waits this many times longer, up to `max_dwell`
    /// (default 2.0; 1.0 turns the backoff off). Once a step down holds, the next one waits the
    /// plain `dwell` again.
    pub dwell_backoff: f64,
    /// The longest the backoff may stretch the dwell (default: four times `dwell`).
    #[serde(with = "humantime_serde")]
    pub max_dwell: Option<Duration>,
    /// Minimum time after any transition before escalating (default 0: react at once).
    #[serde(with = "humantime_serde")]
    pub escalate_cooldown: Duration,
    /// Escalate straight to the level the sustained pressure points at, rather than one level
    /// per escalation (default true).
    pub jump: bool,
    /// What an unknown signal means (default [`UnknownPolicy::Ignore`]).
    pub unknown: UnknownPolicy,
    /// How many transitions the [`LevelHandle`](crate::LevelHandle) keeps (default 1000).
    pub history: usize,
}

impl Default for LadderConfig {
    fn default() -> Self {
        Self {
            thresholds: Thresholds::default(),
            escalate_after: 3,
            recover_after: 3,
            dwell: Duration::from_secs(30),
            dwell_backoff: 2.0,
            max_dwell: None,
            escalate_cooldown: Duration::ZERO,
            jump: true,
            unknown: UnknownPolicy::Ignore,
            history: 1000,
        }
    }
}

/// The largest history a handle keeps; past it the history is a memory leak in disguise.
const MAX_HISTORY: usize = 1_000_000;

impl LadderConfig {
    /// Checks every rule; the error names the field.
    ///
    /// Rules: thresholds are finite numbers in `(0, 1]`; each `exit` is below its `enter`;
    /// `enter` and `exit` both rise strictly from Light to Emergency; `escalate_after` and
    /// `recover_after` are at least 1; `dwell` is greater than zero; `dwell_backoff` is in
    /// `[1, 100]`; `max_dwell`, when set, is at least `dwell`; `unknown.assume` is in `[0, 1]`;
    /// `history` is in `1..=1_000_000`.
    ///
    /// ```
    /// use degrade_core::ladder::LadderConfig;
    /// let mut cfg = LadderConfig::default();
    /// cfg.thresholds.heavy.exit = 0.95;
    /// let err = cfg.validate().unwrap_err();
    /// assert_eq!(err.field(), "thresholds.heavy.exit");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut prev: Option<Band> = None;
        for level in &Level::ALL[1..] {
            // `band` is Some for every level above Normal.
            let Some(band) = self.thresholds.band(*level) else {
                continue;
            };
            let name = level.as_str();
            for (which, v) in [("enter", band.enter), ("exit", band.exit)] {
                if !(v.is_finite() && v > 0.0 && v <= 1.0) {
                    return Err(ConfigError::new(
                        format!("thresholds.{name}.{which}"),
                        format!("must be a finite number in (0, 1], got {v}"),
                    ));
                }
            }
            if band.exit >= band.enter {
                return Err(ConfigError::new(
                    format!("thresholds.{name}.exit"),
                    format!(
                        "must be below thresholds.{name}.enter ({}) for hysteresis, got {}",
                        band.enter, band.exit
                    ),
                ));
            }
            if let Some(p) = prev {
                if band.enter <= p.enter {
                    return Err(ConfigError::new(
                        format!("thresholds.{name}.enter"),
                        "must be greater than the enter threshold of the level below",
                    ));
                }
                if band.exit <= p.exit {
                    return Err(ConfigError::new(
                        format!("thresholds.{name}.exit"),
                        "must be greater than the exit threshold of the level below",
                    ));
                }
            }
            prev = Some(band);
        }
        if self.escalate_after == 0 {
            return Err(ConfigError::new("escalate_after", "must be at least 1"));
        }
        if self.recover_after == 0 {
            return Err(ConfigError::new("recover_after", "must be at least 1"));
        }
        if self.dwell.is_zero() {
            return Err(ConfigError::new("dwell", "must be greater than zero"));
        }
        if !(self.dwell_backoff.is_finite() && (1.0..=100.0).contains(&self.dwell_backoff)) {
            return Err(ConfigError::new(
                "dwell_backoff",
                format!(
                    "must be a finite number in [1, 100], got {}",
                    self.dwell_backoff
                ),
            ));
        }
        if self.max_dwell.is_some_and(|m| m < self.dwell) {
            return Err(ConfigError::new("max_dwell", "must be at least `dwell`"));
        }
        if let UnknownPolicy::Assume(p) = self.unknown {
            check_range("unknown.assume", p, 0.0, 1.0)?;
        }
        if self.history == 0 || self.history > MAX_HISTORY {
            return Err(ConfigError::new(
                "history",
                format!("must be in 1..={MAX_HISTORY}, got {}", self.history),
            ));
        }
        Ok(())
    }
}

impl LadderConfig {
    /// The longest the dwell backoff may stretch the dwell: `max_dwell`, or four times `dwell`.
    ///
    /// ```
    /// # use degrade_core::ladder::LadderConfig; use std::time::Duration;
    /// assert_eq!(LadderConfig::default().effective_max_dwell(), Duration::from_secs(120));
    /// ```
    pub fn effective_max_dwell(&self) -> Duration {
        self.max_dwell
            .unwrap_or_else(|| self.dwell.saturating_mul(4))
    }
}

/// One signal's pressure at the time of a sample.
///
/// ```
/// use degrade_core::ladder::Reading;
/// let r = Reading::new("cpu", 0.42);
/// assert_eq!(r.pressure, Some(0.42));
/// assert_eq!(Reading::unknown("psi").pressure, None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading<'a> {
    /// The signal's name (`"cpu"`, `"latency"`...).
    pub signal: &'a str,
    /// The pressure in `[0, 1]`, or `None` when unknown.
    pub pressure: Option<f64>,
}

impl<'a> Reading<'a> {
    /// A known pressure.
    ///
    /// ```
    /// # use degrade_core::ladder::Reading;
    /// assert_eq!(Reading::new("mem", 0.5).signal, "mem");
    /// ```
    pub fn new(signal: &'a str, pressure: f64) -> Self {
        Self {
            signal,
            pressure: Some(pressure),
        }
    }

    /// An unknown pressure (stale or failed signal).
    ///
    /// ```
    /// # use degrade_core::ladder::Reading;
    /// assert!(Reading::unknown("psi").pressure.is_none());
    /// ```
    pub fn unknown(signal: &'a str) -> Self {
        Self {
            signal,
            pressure: None,
        }
    }
}

/// An input to the ladder.
#[derive(Debug, Clone, Copy)]
pub enum LadderEvent<'a> {
    /// A sample of every signal.
    Sample(&'a [Reading<'a>]),
    /// Hold the level at this value until [`LadderEvent::Unpin`], whatever the signals say.
    Pin(Level),
    /// Let the signals drive the level again.
    Unpin,
}

/// Why the level changed.
///
/// ```
/// use degrade_core::ladder::LevelCause;
/// assert_eq!(LevelCause::Escalated.to_string(), "escalated");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LevelCause {
    /// Pressure stayed at or above the next level's enter threshold.
    Escalated,
    /// Pressure stayed below the current level's exit threshold and the dwell had passed.
    Recovered,
    /// An operator pinned the level.
    Pinned,
}

impl std::fmt::Display for LevelCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LevelCause::Escalated => "escalated",
            LevelCause::Recovered => "recovered",
            LevelCause::Pinned => "pinned",
        })
    }
}

/// A level change, with what caused it.
///
/// ```
/// use degrade_core::ladder::{LevelCause, Ladder, LadderConfig, Reading};
/// use degrade_core::Level;
/// use std::time::Duration;
/// use tokio::time::Instant;
///
/// let t0 = Instant::now();
/// let cfg = LadderConfig { escalate_after: 1, ..Default::default() };
/// let mut ladder = Ladder::new(cfg, t0).unwrap();
/// let t = ladder.observe(&[Reading::new("latency", 0.85)], t0 + Duration::from_secs(2)).unwrap();
/// assert_eq!((t.from, t.to, t.cause), (Level::Normal, Level::Moderate, LevelCause::Escalated));
/// assert_eq!(t.signal.as_deref(), Some("latency"));
/// assert_eq!(t.threshold, Some(0.80));
/// assert_eq!(t.time_at_previous, Duration::from_secs(2));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LevelTransition {
    /// The level before.
    pub from: Level,
    /// The level after.
    pub to: Level,
    /// When it happened.
    pub at: Instant,
    /// Why.
    pub cause: LevelCause,
    /// The signal that drove it (none for a pin).
    pub signal: Option<String>,
    /// The pressure that drove it: the lowest of the sustained run for an escalation, the last
    /// sample for a recovery.
    pub value: Option<f64>,
    /// The threshold crossed: the `enter` of the new level, or the `exit` of the old one.
    pub threshold: Option<f64>,
    /// How long the ladder had been at the old level.
    pub time_at_previous: Duration,
}

/// The level controller. See the [module documentation](self).
///
/// ```
/// use degrade_core::ladder::{Ladder, LadderConfig, Reading};
/// use degrade_core::Level;
/// use std::time::Duration;
/// use tokio::time::Instant;
///
/// let cfg = LadderConfig { dwell: Duration::from_secs(10), ..Default::default() };
/// let t0 = Instant::now();
/// let mut ladder = Ladder::new(cfg, t0).unwrap();
/// let mut t = t0;
/// let mut feed = |ladder: &mut Ladder, p: f64, secs: u64| {
///     for _ in 0..secs {
///         t += Duration::from_secs(1);
///         ladder.observe(&[Reading::new("cpu", p)], t);
///     }
/// };
/// feed(&mut ladder, 0.92, 3);
/// assert_eq!(ladder.level(), Level::Heavy);
/// feed(&mut ladder, 0.10, 9); // calm, but the dwell has not passed
/// assert_eq!(ladder.level(), Level::Heavy);
/// feed(&mut ladder, 0.10, 1);
/// assert_eq!(ladder.level(), Level::Moderate); // one level per dwell
/// ```
#[derive(Debug, Clone)]
pub struct Ladder {
    config: LadderConfig,
    /// The enter / exit pressure of each level (Normal's is unused).
    enter: PerLevel<f64>,
    exit: PerLevel<f64>,
    level: Level,
    /// The instant of the last transition (or of creation / unpinning).
    since: Instant,
    pinned: Option<Level>,
    /// The dwell in force: `config.dwell`, stretched by the backoff after premature recoveries.
    dwell: Duration,
    /// The cause of the last transition, to tell a premature recovery from one that held.
    last_cause: Option<LevelCause>,
    up_run: u32,
    /// The lowest pressure of the current escalation run and the signal that set it.
    up_min: f64,
    up_signal: Option<String>,
    down_run: u32,
}

impl Ladder {
    /// A ladder at Normal, created at `now`. Fails if the configuration is invalid.
    ///
    /// ```
    /// # use degrade_core::ladder::{Ladder, LadderConfig}; use degrade_core::Level;
    /// let ladder = Ladder::new(LadderConfig::default(), tokio::time::Instant::now()).unwrap();
    /// assert_eq!(ladder.level(), Level::Normal);
    /// ```
    pub fn new(config: LadderConfig, now: Instant) -> Result<Self, ConfigError> {
        config.validate()?;
        let band = |l| config.thresholds.band(l);
        let enter = PerLevel::from_fn(|l| band(l).map_or(0.0, |b| b.enter));
        let exit = PerLevel::from_fn(|l| band(l).map_or(0.0, |b| b.exit));
        let dwell = config.dwell;
        Ok(Self {
            config,
            enter,
            exit,
            level: Level::Normal,
            since: now,
            pinned: None,
            dwell,
            last_cause: None,
            up_run: 0,
            up_min: f64::INFINITY,
            up_signal: None,
            down_run: 0,
        })
    }

    /// The current level.
    ///
    /// ```
    /// # use degrade_core::ladder::{Ladder, LadderConfig}; use degrade_core::Level;
    /// # let ladder = Ladder::new(LadderConfig::default(), tokio::time::Instant::now()).unwrap();
    /// assert_eq!(ladder.level(), Level::Normal);
    /// ```
    pub fn level(&self) -> Level {
        self.level
    }

    /// The pinned level, if any.
    ///
    /// ```
    /// # use degrade_core::ladder::{Ladder, LadderConfig}; use degrade_core::Level;
    /// # let now = tokio::time::Instant::now();
    /// let mut ladder = Ladder::new(LadderConfig::default(), now).unwrap();
    /// ladder.pin(Level::Light, now);
    /// assert_eq!(ladder.pinned(), Some(Level::Light));
    /// ```
    pub fn pinned(&self) -> Option<Level> {
        self.pinned
    }

    /// The dwell now in force before the next step down: `dwell`, or longer after premature
    /// recoveries (see [`LadderConfig::dwell_backoff`]).
    ///
    /// ```
    /// # use degrade_core::ladder::{Ladder, LadderConfig}; use std::time::Duration;
    /// let ladder = Ladder::new(LadderConfig::default(), tokio::time::Instant::now()).unwrap();
    /// assert_eq!(ladder.current_dwell(), Duration::from_secs(30));
    /// ```
    pub fn current_dwell(&self) -> Duration {
        // A step down that was not undone within its dwell held: the next one waits the base.
        if self.last_cause == Some(LevelCause::Recovered) {
            self.config.dwell
        } else {
            self.dwell
        }
    }

    /// The configuration the ladder was built with.
    ///
    /// ```
    /// # use degrade_core::ladder::{Ladder, LadderConfig};
    /// # let ladder = Ladder::new(LadderConfig::default(), tokio::time::Instant::now()).unwrap();
    /// assert_eq!(ladder.config().escalate_after, 3);
    /// ```
    pub fn config(&self) -> &LadderConfig {
        &self.config
    }

    /// Puts a new configuration in force at `now`, or changes nothing and returns the
    /// [`ConfigError`] naming the field. A pure step like [`on_event`](Self::on_event): the
    /// caller passes the time.
    ///
    /// The new thresholds, sample counts and cooldowns judge the next sample; the level, the
    /// pin and the time since the last transition are kept. Runs of consecutive samples are
    /// forgotten (they were counted against the old thresholds), so the next escalation or
    /// step down needs `escalate_after` / `recover_after` samples under the new ones. A dwell
    /// stretched by the backoff restarts from the new `dwell`. Reconfiguring never moves the
    /// level by itself and returns no transition.
    ///
    /// ```
    /// use degrade_core::ladder::{Ladder, LadderConfig, Reading};
    /// use degrade_core::Level;
    /// use std::time::Duration;
    ///
    /// let t0 = tokio::time::Instant::now();
    /// let cfg = LadderConfig { escalate_after: 1, ..Default::default() };
    /// let mut ladder = Ladder::new(cfg.clone(), t0).unwrap();
    /// let calm = [Reading::new("cpu", 0.5)];
    /// assert!(ladder.observe(&calm, t0).is_none()); // below Light's enter (0.70)
    ///
    /// let mut lower = cfg.clone();
    /// lower.thresholds.light.enter = 0.45;
    /// lower.thresholds.light.exit = 0.40;
    /// ladder.reconfigure(lower, t0).unwrap();
    /// assert_eq!(ladder.level(), Level::Normal); // nothing moves until the next sample
    /// let t = ladder.observe(&calm, t0 + Duration::from_secs(1)).unwrap();
    /// assert_eq!((t.to, t.threshold), (Level::Light, Some(0.45)));
    ///
    /// let mut bad = cfg;
    /// bad.thresholds.light.exit = 0.9;
    /// assert_eq!(ladder.reconfigure(bad, t0).unwrap_err().field(), "thresholds.light.exit");
    /// assert_eq!(ladder.config().thresholds.light.enter, 0.45); // unchanged
    /// ```
    pub fn reconfigure(&mut self, config: LadderConfig, now: Instant) -> Result<(), ConfigError> {
        let fresh = Ladder::new(config, now)?;
        self.enter = fresh.enter;
        self.exit = fresh.exit;
        self.dwell = fresh.config.dwell;
        self.config = fresh.config;
        self.reset_runs();
        Ok(())
    }

    /// The instant of the last transition (or of creation, or of the last unpin).
    ///
    /// ```
    /// # use degrade_core::ladder::{Ladder, LadderConfig};
    /// let now = tokio::time::Instant::now();
    /// let ladder = Ladder::new(LadderConfig::default(), now).unwrap();
    /// assert_eq!(ladder.since(), now);
    /// ```
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Feeds a sample; shorthand for `on_event(LadderEvent::Sample(readings), now)`.
    ///
    /// ```
    /// # use degrade_core::ladder::{Ladder, LadderConfig, Reading};
    /// # let now = tokio::time::Instant::now();
    /// let mut ladder = Ladder::new(LadderConfig::default(), now).unwrap();
    /// assert!(ladder.observe(&[Reading::new("cpu", 0.1)], now).is_none());
    /// ```
    pub fn observe(&mut self, readings: &[Reading<'_>], now: Instant) -> Option<LevelTransition> {
        self.on_event(LadderEvent::Sample(readings), now)
    }

    /// Pins the level; shorthand for `on_event(LadderEvent::Pin(level), now)`.
    ///
    /// ```
    /// # use degrade_core::ladder::{Ladder, LadderConfig}; use degrade_core::Level;
    /// # let now = tokio::time::Instant::now();
    /// let mut ladder = Ladder::new(LadderConfig::default(), now).unwrap();
    /// let t = ladder.pin(Level::Heavy, now).unwrap();
    /// assert_eq!(t.to, Level::Heavy);
    /// ```
    pub fn pin(&mut self, level: Level, now: Instant) -> Option<LevelTransition> {
        self.on_event(LadderEvent::Pin(level), now)
    }

    /// Unpins; shorthand for `on_event(LadderEvent::Unpin, now)`.
    ///
    /// ```
    /// # use degrade_core::ladder::{Ladder, LadderConfig}; use degrade_core::Level;
    /// # let now = tokio::time::Instant::now();
    /// let mut ladder = Ladder::new(LadderConfig::default(), now).unwrap();
    /// ladder.pin(Level::Heavy, now);
    /// ladder.unpin(now);
    /// assert_eq!(ladder.pinned(), None);
    /// assert_eq!(ladder.level(), Level::Heavy); // recovery resumes from the pinned level
    /// ```
    pub fn unpin(&mut self, now: Instant) -> Option<LevelTransition> {
        self.on_event(LadderEvent::Unpin, now)
    }

    /// Applies one event at `now` and returns the transition it caused, if any.
    ///
    /// `now` is expected not to go backwards; if it does, elapsed times read as zero (so a
    /// backwards step can delay a recovery, never hasten one).
    ///
    /// ```
    /// # use degrade_core::ladder::{LadderEvent, Ladder, LadderConfig}; use degrade_core::Level;
    /// # let now = tokio::time::Instant::now();
    /// let mut ladder = Ladder::new(LadderConfig::default(), now).unwrap();
    /// assert!(ladder.on_event(LadderEvent::Pin(Level::Light), now).is_some());
    /// assert!(ladder.on_event(LadderEvent::Unpin, now).is_none());
    /// ```
    pub fn on_event(&mut self, event: LadderEvent<'_>, now: Instant) -> Option<LevelTransition> {
        match event {
            LadderEvent::Pin(level) => {
                self.pinned = Some(level);
                self.reset_runs();
                if level == self.level {
                    return None;
                }
                Some(self.transition(level, now, LevelCause::Pinned, None, None, None))
            }
            LadderEvent::Unpin => {
                if self.pinned.take().is_some() {
                    // The dwell counts from the unpin, so an operator releasing a pin does not
                    // get an instant step down from a level the signals never chose.
                    self.since = now;
                    self.reset_runs();
                }
                None
            }
            LadderEvent::Sample(readings) => self.on_sample(readings, now),
        }
    }

    fn reset_runs(&mut self) {
        self.up_run = 0;
        self.up_min = f64::INFINITY;
        self.up_signal = None;
        self.down_run = 0;
    }

    fn on_sample(&mut self, readings: &[Reading<'_>], now: Instant) -> Option<LevelTransition> {
        if self.pinned.is_some() {
            return None;
        }
        let mut worst: Option<(&str, f64)> = None;
        let mut any_unknown = false;
        for r in readings {
            let value = match r.pressure.filter(|p| !p.is_nan()) {
                Some(p) => p.clamp(0.0, 1.0),
                None => match self.config.unknown {
                    UnknownPolicy::Assume(p) => p,
                    UnknownPolicy::Ignore | UnknownPolicy::Hold => {
                        any_unknown = true;
                        continue;
                    }
                },
            };
            if worst.is_none_or(|(_, w)| value > w) {
                worst = Some((r.signal, value));
            }
        }
        let Some((signal, pressure)) = worst else {
            // Nothing known: hold the level and forget partial runs, since the samples that
            // built them are no longer consecutive with whatever comes next.
            self.reset_runs();
            return None;
        };
        let elapsed = now.saturating_duration_since(self.since);

        // Escalation.
        if self.level < Level::Emergency && pressure >= self.enter[self.level.up()] {
            self.down_run = 0;
            self.up_run = self.up_run.saturating_add(1);
            if pressure < self.up_min || self.up_signal.is_none() {
                self.up_min = pressure;
                self.up_signal = Some(signal.to_owned());
            }
            if self.up_run >= self.config.escalate_after && elapsed >= self.config.escalate_cooldown
            {
                let target = if self.config.jump {
                    Level::ALL[1..]
                        .iter()
                        .rev()
                        .copied()
                        .find(|&l| self.up_min >= self.enter[l])
                        .unwrap_or(self.level.up())
                        .max(self.level.up())
                } else {
                    self.level.up()
                };
                let value = self.up_min;
                let signal = self.up_signal.take();
                let threshold = self.enter[target];
                return Some(self.transition(
                    target,
                    now,
                    LevelCause::Escalated,
                    signal,
                    Some(value),
                    Some(threshold),
                ));
            }
            return None;
        }
        self.up_run = 0;
        self.up_min = f64::INFINITY;
        self.up_signal = None;

        // Recovery.
        let exit = self.exit[self.level];
        let blocked = any_unknown && self.config.unknown == UnknownPolicy::Hold;
        if self.level > Level::Normal && pressure < exit && !blocked {
            self.down_run = self.down_run.saturating_add(1);
            if self.down_run >= self.config.recover_after && elapsed >= self.current_dwell() {
                let to = self.level.down();
                return Some(self.transition(
                    to,
                    now,
                    LevelCause::Recovered,
                    Some(signal.to_owned()),
                    Some(pressure),
                    Some(exit),
                ));
            }
        } else {
            self.down_run = 0;
        }
        None
    }

    fn transition(
        &mut self,
        to: Level,
        now: Instant,
        cause: LevelCause,
        signal: Option<String>,
        value: Option<f64>,
        threshold: Option<f64>,
    ) -> LevelTransition {
        let t = LevelTransition {
            from: self.level,
            to,
            at: now,
            cause,
            signal,
            value,
            threshold,
            time_at_previous: now.saturating_duration_since(self.since),
        };
        self.adapt_dwell(&t);
        self.level = to;
        self.since = now;
        self.last_cause = Some(cause);
        self.reset_runs();
        t
    }

    /// Stretches the dwell after a premature recovery and restores it once a recovery holds.
    fn adapt_dwell(&mut self, t: &LevelTransition) {
        match (self.last_cause, t.cause) {
            // Escalating again within one dwell of a step down: that step was premature.
            (Some(LevelCause::Recovered), LevelCause::Escalated)
                if t.time_at_previous < self.dwell =>
            {
                // `mul_f64` panics past `Duration::MAX`, which a configured dwell may reach.
                let longer = Duration::try_from_secs_f64(
                    self.dwell.as_secs_f64() * self.config.dwell_backoff,
                )
                .unwrap_or(Duration::MAX);
                // Through `f64` a dwell of many years loses its nanoseconds: the backoff only
                // ever lengthens the dwell.
                self.dwell = longer
                    .max(self.dwell)
                    .min(self.config.effective_max_dwell());
            }
            // A step down after a step down: the first one held.
            (Some(LevelCause::Recovered), LevelCause::Recovered) => self.dwell = self.config.dwell,
            (_, LevelCause::Pinned) => self.dwell = self.config.dwell,
            _ => {}
        }
        if t.to == Level::Normal {
            self.dwell = self.config.dwell;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn feed(ladder: &mut Ladder, t: &mut Instant, p: Option<f64>, n: u32) -> Vec<LevelTransition> {
        let mut out = Vec::new();
        for _ in 0..n {
            *t += secs(1);
            let r = [Reading {
                signal: "s",
                pressure: p,
            }];
            out.extend(ladder.observe(&r, *t));
        }
        out
    }

    #[test]
    fn escalates_only_after_the_configured_sample_count() {
        let t0 = Instant::now();
        let mut l = Ladder::new(LadderConfig::default(), t0).unwrap();
        let mut t = t0;
        assert!(feed(&mut l, &mut t, Some(0.75), 2).is_empty());
        let tr = feed(&mut l, &mut t, Some(0.75), 1);
        assert_eq!(tr.len(), 1);
        assert_eq!(l.level(), Level::Light);
    }

    #[test]
    fn one_low_sample_breaks_an_escalation_run() {
        let t0 = Instant::now();
        let mut l = Ladder::new(LadderConfig::default(), t0).unwrap();
        let mut t = t0;
        feed(&mut l, &mut t, Some(0.75), 2);
        feed(&mut l, &mut t, Some(0.50), 1);
        feed(&mut l, &mut t, Some(0.75), 2);
        assert_eq!(l.level(), Level::Normal);
    }

    #[test]
    fn jump_goes_to_the_level_of_the_weakest_sample_of_the_run() {
        let t0 = Instant::now();
        let mut l = Ladder::new(LadderConfig::default(), t0).unwrap();
        let mut t = t0;
        feed(&mut l, &mut t, Some(0.99), 2);
        let tr = feed(&mut l, &mut t, Some(0.91), 1);
        assert_eq!(tr[0].to, Level::Heavy);
        assert_eq!(tr[0].value, Some(0.91));
        assert_eq!(tr[0].threshold, Some(0.90));
    }

    #[test]
    fn without_jump_escalation_is_one_level_at_a_time() {
        let t0 = Instant::now();
        let cfg = LadderConfig {
            jump: false,
            ..Default::default()
        };
        let mut l = Ladder::new(cfg, t0).unwrap();
        let mut t = t0;
        feed(&mut l, &mut t, Some(0.99), 3);
        assert_eq!(l.level(), Level::Light);
        feed(&mut l, &mut t, Some(0.99), 3);
        assert_eq!(l.level(), Level::Moderate);
    }

    #[test]
    fn hysteresis_holds_between_exit_and_enter() {
        let t0 = Instant::now();
        let mut l = Ladder::new(LadderConfig::default(), t0).unwrap();
        let mut t = t0;
        feed(&mut l, &mut t, Some(0.72), 3);
        assert_eq!(l.level(), Level::Light);
        // 0.65 is below Light's enter but above its exit: stay, however long.
        feed(&mut l, &mut t, Some(0.65), 200);
        assert_eq!(l.level(), Level::Light);
    }

    #[test]
    fn recovery_is_stepwise_one_level_per_dwell() {
        let t0 = Instant::now();
        let cfg = LadderConfig {
            dwell: secs(10),
            ..Default::default()
        };
        let mut l = Ladder::new(cfg, t0).unwrap();
        let mut t = t0;
        feed(&mut l, &mut t, Some(1.0), 3);
        assert_eq!(l.level(), Level::Emergency);
        let trs = feed(&mut l, &mut t, Some(0.0), 100);
        let levels: Vec<_> = trs.iter().map(|t| t.to).collect();
        assert_eq!(
            levels,
            [Level::Heavy, Level::Moderate, Level::Light, Level::Normal]
        );
        for tr in &trs {
            assert_eq!(tr.cause, LevelCause::Recovered);
            assert!(tr.time_at_previous >= secs(10));
        }
    }

    #[test]
    fn pin_holds_until_unpinned_and_dwell_restarts() {
        let t0 = Instant::now();
        let cfg = LadderConfig {
            dwell: secs(5),
            ..Default::default()
        };
        let mut l = Ladder::new(cfg, t0).unwrap();
        let mut t = t0;
        l.pin(Level::Heavy, t);
        assert!(feed(&mut l, &mut t, Some(0.0), 50).is_empty());
        assert!(feed(&mut l, &mut t, Some(1.0), 50).is_empty());
        assert_eq!(l.level(), Level::Heavy);
        l.unpin(t);
        assert!(feed(&mut l, &mut t, Some(0.0), 4).is_empty());
        assert_eq!(feed(&mut l, &mut t, Some(0.0), 1)[0].to, Level::Moderate);
    }

    #[test]
    fn unknown_policies() {
        let t0 = Instant::now();
        // Ignore: all unknown holds.
        let mut l = Ladder::new(LadderConfig::default(), t0).unwrap();
        let mut t = t0;
        feed(&mut l, &mut t, Some(0.99), 3);
        assert!(feed(&mut l, &mut t, None, 100).is_empty());
        assert_eq!(l.level(), Level::Emergency);

        // Hold: a known low signal cannot recover while another is unknown.
        let cfg = LadderConfig {
            unknown: UnknownPolicy::Hold,
            dwell: secs(1),
            ..Default::default()
        };
        let mut l = Ladder::new(cfg, t0).unwrap();
        let mut t = t0;
        feed(&mut l, &mut t, Some(0.99), 3);
        for _ in 0..20 {
            t += secs(1);
            l.observe(&[Reading::new("a", 0.0), Reading::unknown("b")], t);
        }
        assert_eq!(l.level(), Level::Emergency);

        // Assume: unknown reads as the assumed pressure.
        let cfg = LadderConfig {
            unknown: UnknownPolicy::Assume(0.85),
            ..Default::default()
        };
        let mut l = Ladder::new(cfg, t0).unwrap();
        let mut t = t0;
        feed(&mut l, &mut t, None, 3);
        assert_eq!(l.level(), Level::Moderate);
    }

    #[test]
    fn nan_and_out_of_range_pressures_do_not_panic() {
        let t0 = Instant::now();
        let mut l = Ladder::new(LadderConfig::default(), t0).unwrap();
        let mut t = t0;
        feed(&mut l, &mut t, Some(f64::NAN), 5);
        assert_eq!(l.level(), Level::Normal);
        feed(&mut l, &mut t, Some(7.0), 3);
        assert_eq!(l.level(), Level::Emergency);
        feed(&mut l, &mut t, Some(-3.0), 3);
    }

    #[test]
    fn worst_signal_drives() {
        let t0 = Instant::now();
        let cfg = LadderConfig {
            escalate_after: 1,
            ..Default::default()
        };
        let mut l = Ladder::new(cfg, t0).unwrap();
        let tr = l
            .observe(
                &[Reading::new("cpu", 0.2), Reading::new("memory", 0.93)],
                t0 + secs(1),
            )
            .unwrap();
        assert_eq!(tr.signal.as_deref(), Some("memory"));
        assert_eq!(tr.to, Level::Heavy);
    }

    #[test]
    fn a_premature_recovery_stretches_the_next_dwell_until_a_recovery_holds() {
        let t0 = Instant::now();
        let cfg = LadderConfig {
            dwell: secs(10),
            jump: false,
            ..Default::default()
        };
        let mut l = Ladder::new(cfg, t0).unwrap();
        let mut t = t0;
        feed(&mut l, &mut t, Some(0.85), 3); // Light at t=3
        feed(&mut l, &mut t, Some(0.85), 3); // Moderate at t=6
        assert_eq!(l.level(), Level::Moderate);
        let down = feed(&mut l, &mut t, Some(0.0), 10); // Light at t=16
        assert_eq!(down[0].to, Level::Light);
        // Pressure returns at once: the step down was premature.
        feed(&mut l, &mut t, Some(0.85), 3);
        assert_eq!(l.level(), Level::Moderate);
        assert_eq!(l.current_dwell(), secs(20));
        // Again: the dwell doubles once more, then stops at four times the base.
        let down = feed(&mut l, &mut t, Some(0.0), 20);
        assert_eq!((down.len(), down[0].time_at_previous), (1, secs(20)));
        feed(&mut l, &mut t, Some(0.85), 3);
        assert_eq!(l.current_dwell(), secs(40));
        let down = feed(&mut l, &mut t, Some(0.0), 40);
        assert_eq!(down[0].time_at_previous, secs(40));
        feed(&mut l, &mut t, Some(0.85), 3);
        assert_eq!(l.current_dwell(), secs(40), "capped at max_dwell");
        // Calm for good: the first step waits the stretched dwell; once it has held, the base
        // dwell is back.
        let down = feed(&mut l, &mut t, Some(0.0), 100);
        let waits: Vec<_> = down.iter().map(|t| t.time_at_previous).collect();
        assert_eq!(waits, [secs(40), secs(10)]);
        assert_eq!(l.level(), Level::Normal);
        assert_eq!(l.current_dwell(), secs(10));
    }

    #[test]
    fn backoff_of_one_keeps_the_dwell_fixed() {
        let t0 = Instant::now();
        let cfg = LadderConfig {
            dwell: secs(10),
            dwell_backoff: 1.0,
            ..Default::default()
        };
        let mut l = Ladder::new(cfg, t0).unwrap();
        let mut t = t0;
        feed(&mut l, &mut t, Some(0.75), 3);
        feed(&mut l, &mut t, Some(0.0), 10);
        feed(&mut l, &mut t, Some(0.75), 3);
        assert_eq!(l.current_dwell(), secs(10));
    }

    #[test]
    fn reconfiguring_keeps_level_and_pin_and_judges_the_next_sample_by_the_new_thresholds() {
        let t0 = Instant::now();
        let cfg = LadderConfig {
            dwell: secs(10),
            ..Default::default()
        };
        let mut l = Ladder::new(cfg.clone(), t0).unwrap();
        let mut t = t0;
        // Two samples of a run of three toward Light, then a reload: the run starts over.
        feed(&mut l, &mut t, Some(0.75), 2);
        let mut lower = cfg.clone();
        lower.thresholds.light = Band {
            enter: 0.5,
            exit: 0.4,
        };
        l.reconfigure(lower.clone(), t).unwrap();
        assert_eq!(l.level(), Level::Normal);
        assert!(feed(&mut l, &mut t, Some(0.55), 2).is_empty());
        let up = feed(&mut l, &mut t, Some(0.55), 1);
        assert_eq!((up[0].to, up[0].threshold), (Level::Light, Some(0.5)));
        // Raising the exit above the pressure lets the level step down after the dwell, which
        // counts from the escalation, not from the reload.
        let mut higher_exit = lower.clone();
        higher_exit.thresholds.light.exit = 0.6;
        higher_exit.thresholds.light.enter = 0.65;
        l.reconfigure(higher_exit, t).unwrap();
        let down = feed(&mut l, &mut t, Some(0.55), 10);
        assert_eq!(down.len(), 1);
        assert_eq!(
            (down[0].to, down[0].time_at_previous),
            (Level::Normal, secs(10))
        );
        // A pin survives a reload; an invalid configuration changes nothing.
        l.pin(Level::Heavy, t);
        l.reconfigure(cfg.clone(), t).unwrap();
        assert_eq!((l.level(), l.pinned()), (Level::Heavy, Some(Level::Heavy)));
        let mut bad = cfg;
        bad.recover_after = 0;
        assert_eq!(l.reconfigure(bad, t).unwrap_err().field(), "recover_after");
        assert_eq!(l.config().recover_after, 3);
    }

    #[test]
    fn escalate_cooldown_delays_escalation() {
        let t0 = Instant::now();
        let cfg = LadderConfig {
            escalate_cooldown: secs(10),
            jump: false,
            ..Default::default()
        };
        let mut l = Ladder::new(cfg, t0).unwrap();
        let mut t = t0;
        let trs = feed(&mut l, &mut t, Some(1.0), 30);
        assert_eq!(trs.len(), 3);
        for w in trs.windows(2) {
            assert!(w[1].at - w[0].at >= secs(10));
        }
    }
}
