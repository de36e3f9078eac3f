//! The rollout state machine: steps of weight and bake time, analysis at each step, automatic
//! promotion or rollback, manual gates.
//!
//! It is pure: [`Rollout::on`] takes an [`Event`] and the current instant and returns the
//! [`Action`]s to carry out; it never sleeps, reads a clock or touches the router. The
//! [`RolloutController`](crate::RolloutController) drives it; the simulation harness and the
//! tests drive it directly.
//!
//! ```text
//!               Pass after bake (not last step)  ─▶ next step, new weight
//! Progressing ─ Pass after bake (last step)      ─▶ Promoted   (weight stays at the last step's)
//!      │  ▲     Fail (any time, also when paused) ─▶ RolledBack (weight 0)
//!      │  │     inconclusive_limit Inconclusive looks after bake ─▶ Paused(Inconclusive)
//!  Pause│  │Resume
//!      ▼  │     Promote (gate) ─▶ Promoted      Abort (gate) ─▶ RolledBack
//!   Paused
//! ```

use crate::arm::{FULL_BP, percent_to_bp};
use crate::judge::{JudgeConfig, Verdict};
use degrade_core::ConfigError;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::time::Instant;

/// One step of a rollout: the canary's weight and how long it bakes there before it may move
/// on.
///
/// ```
/// use degrade_canary::Step;
/// let s: Step = serde_json::from_str(r#"{"weight_percent": 5, "bake": "2m"}"#).unwrap();
/// assert_eq!(s.bake, std::time::Duration::from_secs(120));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The canary's share of traffic, in percent (0–100).
    pub weight_percent: f64,
    /// The minimum time at this weight.
    #[serde(with = "humantime_serde")]
    pub bake: Duration,
}

impl Step {
    /// A step of `weight_percent` % baking for `bake`.
    ///
    /// ```
    /// # use degrade_canary::Step;
    /// let s = Step::new(25.0, std::time::Duration::from_secs(60));
    /// assert_eq!(s.weight_percent, 25.0);
    /// ```
    pub fn new(weight_percent: f64, bake: Duration) -> Self {
        Self {
            weight_percent,
            bake,
        }
    }
}

/// Settings of a rollout.
///
/// ```
/// use degrade_canary::RolloutConfig;
/// let cfg = RolloutConfig::default();
/// let weights: Vec<f64> = cfg.steps.iter().map(|s| s.weight_percent).collect();
/// assert_eq!(weights, [1.0, 5.0, 10.0, 25.0, 50.0, 100.0]);
/// assert!(cfg.validate().is_ok());
///
/// let bad: RolloutConfig = serde_json::from_str(
///     r#"{"steps": [{"weight_percent": 10, "bake": "1m"}, {"weight_percent": 5, "bake": "1m"}]}"#,
/// ).unwrap();
/// assert_eq!(bad.validate().unwrap_err().field(), "steps.1.weight_percent");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutConfig {
    /// The steps, with strictly rising weights. Default 1, 5, 10, 25, 50, 100 %, 2 minutes each.
    pub steps: Vec<Step>,
    /// How often the controller analyses. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub analysis_interval: Duration,
    /// Consecutive inconclusive analyses after a step's bake time before the rollout pauses.
    /// Default 10.
    pub inconclusive_limit: u32,
    /// The judge.
    pub judge: JudgeConfig,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            steps: [1.0, 5.0, 10.0, 25.0, 50.0, 100.0]
                .into_iter()
                .map(|w| Step::new(w, Duration::from_secs(120)))
                .collect(),
            analysis_interval: Duration::from_secs(30),
            inconclusive_limit: 10,
            judge: JudgeConfig::default(),
        }
    }
}

impl RolloutConfig {
    /// Checks every field; the error names the first bad one.
    ///
    /// ```
    /// # use degrade_canary::RolloutConfig;
    /// let mut cfg = RolloutConfig::default();
    /// cfg.steps[5].weight_percent = 101.0;
    /// assert_eq!(cfg.validate().unwrap_err().field(), "steps.5.weight_percent");
    /// cfg.steps.clear();
    /// assert_eq!(cfg.validate().unwrap_err().field(), "steps");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.weights().map(|_| ())?;
        if self.analysis_interval.is_zero() {
            return Err(ConfigError::new("analysis_interval", "must be positive"));
        }
        if self.inconclusive_limit == 0 {
            return Err(ConfigError::new("inconclusive_limit", "must be at least 1"));
        }
        self.judge.validate().map_err(|e| e.within("judge"))
    }

    /// The step weights in basis points, checked.
    fn weights(&self) -> Result<Vec<u32>, ConfigError> {
        if self.steps.is_empty() {
            return Err(ConfigError::new("steps", "must not be empty"));
        }
        let mut out = Vec::with_capacity(self.steps.len());
        for (i, step) in self.steps.iter().enumerate() {
            let field = || format!("steps.{i}.weight_percent");
            let bp = percent_to_bp("weight_percent", step.weight_percent)
                .map_err(|e| ConfigError::new(field(), e.rule().to_owned()))?;
            if bp == 0 {
                return Err(ConfigError::new(field(), "must be above 0"));
            }
            if out.last().is_some_and(|&prev| bp <= prev) {
                return Err(ConfigError::new(field(), "steps must strictly rise"));
            }
            out.push(bp);
        }
        Ok(out)
    }
}

/// Why a rollout is paused.
///
/// ```
/// use degrade_canary::PauseReason;
/// assert_ne!(PauseReason::Manual, PauseReason::Inconclusive);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseReason {
    /// A [`Event::Pause`] gate.
    Manual,
    /// `inconclusive_limit` inconclusive analyses in a row after the bake time.
    Inconclusive,
}

/// Where a rollout is.
///
/// ```
/// use degrade_canary::Phase;
/// assert!(Phase::Promoted.is_terminal());
/// assert!(!Phase::Progressing.is_terminal());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Baking and analysing at the current step.
    Progressing,
    /// Holding the current weight; still rolls back on a Fail.
    Paused(PauseReason),
    /// The candidate passed every step (or was promoted by hand).
    Promoted,
    /// The candidate failed (or was aborted by hand); weight 0.
    RolledBack,
}

impl Phase {
    /// Promoted or rolled back: no event changes it any more.
    ///
    /// ```
    /// # use degrade_canary::Phase;
    /// assert!(Phase::RolledBack.is_terminal());
    /// ```
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Promoted | Phase::RolledBack)
    }
}

/// The persisted part of a rollout: enough for a restarted controller to resume at the same
/// step and weight.
///
/// ```
/// use degrade_canary::{Phase, RolloutState};
/// let s = RolloutState { phase: Phase::Progressing, step: 2, weight_bp: 1_000, inconclusive: 0 };
/// let json = serde_json::to_string(&s).unwrap();
/// assert_eq!(serde_json::from_str::<RolloutState>(&json).unwrap(), s);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutState {
    /// The phase.
    pub phase: Phase,
    /// Index of the current step.
    pub step: usize,
    /// The canary weight in basis points.
    pub weight_bp: u32,
    /// Consecutive inconclusive analyses after the bake time.
    pub inconclusive: u32,
}

/// What happens to a rollout.
///
/// ```
/// use degrade_canary::{Event, Verdict};
/// let e = Event::Analysis(Verdict::Pass);
/// assert_ne!(e, Event::Abort);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The judge's verdict at an analysis.
    Analysis(Verdict),
    /// Gate: promote now.
    Promote,
    /// Gate: roll back now.
    Abort,
    /// Gate: hold the current step.
    Pause,
    /// Gate: continue after a pause (the bake time of the step starts over).
    Resume,
}

/// What the driver must do after an event.
///
/// ```
/// use degrade_canary::Action;
/// assert_eq!(Action::SetWeight(100), Action::SetWeight(100));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Set the router's weight (basis points).
    SetWeight(u32),
    /// Run the promote hook.
    Promote,
    /// Run the rollback hook.
    RollBack,
}

/// The rollout state machine.
///
/// ```
/// use degrade_canary::{Action, Event, Phase, Rollout, RolloutConfig, Step, Verdict};
/// use std::time::Duration;
/// use tokio::time::Instant;
///
/// let mut cfg = RolloutConfig::default();
/// cfg.steps = vec![Step::new(10.0, Duration::from_secs(60)), Step::new(100.0, Duration::from_secs(60))];
/// let t0 = Instant::now();
/// let mut r = Rollout::new(cfg, t0).unwrap();
/// assert_eq!(r.state().weight_bp, 1_000);
/// // Passing before the bake time does not advance.
/// assert!(r.on(Event::Analysis(Verdict::Pass), t0 + Duration::from_secs(30)).is_empty());
/// assert_eq!(r.on(Event::Analysis(Verdict::Pass), t0 + Duration::from_secs(60)),
///            [Action::SetWeight(10_000)]);
/// assert_eq!(r.on(Event::Analysis(Verdict::Pass), t0 + Duration::from_secs(120)), [Action::Promote]);
/// assert_eq!(r.state().phase, Phase::Promoted);
/// ```
#[derive(Debug, Clone)]
pub struct Rollout {
    weights: Vec<u32>,
    bakes: Vec<Duration>,
    inconclusive_limit: u32,
    state: RolloutState,
    step_started: Instant,
}

impl Rollout {
    /// A rollout at its first step, started at `now`.
    ///
    /// ```
    /// # use degrade_canary::{Rollout, RolloutConfig};
    /// let r = Rollout::new(RolloutConfig::default(), tokio::time::Instant::now()).unwrap();
    /// assert_eq!(r.state().weight_bp, 100);
    /// ```
    pub fn new(cfg: RolloutConfig, now: Instant) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let weights = cfg.weights()?;
        let state = RolloutState {
            phase: Phase::Progressing,
            step: 0,
            weight_bp: weights[0],
            inconclusive: 0,
        };
        Ok(Self {
            bakes: cfg.steps.iter().map(|s| s.bake).collect(),
            weights,
            inconclusive_limit: cfg.inconclusive_limit,
            state,
            step_started: now,
        })
    }

    /// A rollout resumed from a persisted `state`; the current step's bake time starts over at
    /// `now`. `ConfigError` if the state does not fit the configuration.
    ///
    /// ```
    /// # use degrade_canary::{Phase, Rollout, RolloutConfig, RolloutState};
    /// let saved = RolloutState { phase: Phase::Progressing, step: 3, weight_bp: 2_500, inconclusive: 0 };
    /// let r = Rollout::resume(RolloutConfig::default(), saved, tokio::time::Instant::now()).unwrap();
    /// assert_eq!(r.state().step, 3);
    /// let bad = RolloutState { step: 9, ..saved };
    /// assert!(Rollout::resume(RolloutConfig::default(), bad, tokio::time::Instant::now()).is_err());
    /// ```
    pub fn resume(
        cfg: RolloutConfig,
        state: RolloutState,
        now: Instant,
    ) -> Result<Self, ConfigError> {
        let mut r = Self::new(cfg, now)?;
        if state.step >= r.weights.len() {
            return Err(ConfigError::new(
                "state.step",
                "beyond the configured steps",
            ));
        }
        if state.weight_bp > FULL_BP {
            return Err(ConfigError::new("state.weight_bp", "must be at most 10000"));
        }
        r.state = state;
        Ok(r)
    }

    /// The persisted state.
    ///
    /// ```
    /// # use degrade_canary::{Phase, Rollout, RolloutConfig};
    /// let r = Rollout::new(RolloutConfig::default(), tokio::time::Instant::now()).unwrap();
    /// assert_eq!(r.state().phase, Phase::Progressing);
    /// ```
    pub fn state(&self) -> RolloutState {
        self.state
    }

    /// Applies `event` at `now`; returns the actions to carry out, in order.
    ///
    /// ```
    /// # use degrade_canary::{Action, Event, Phase, Rollout, RolloutConfig, Verdict};
    /// let t = tokio::time::Instant::now();
    /// let mut r = Rollout::new(RolloutConfig::default(), t).unwrap();
    /// assert_eq!(r.on(Event::Analysis(Verdict::Fail), t), [Action::SetWeight(0), Action::RollBack]);
    /// assert_eq!(r.state().phase, Phase::RolledBack);
    /// assert!(r.on(Event::Resume, t).is_empty()); // terminal
    /// ```
    pub fn on(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let s = &mut self.state;
        if s.phase.is_terminal() {
            return Vec::new();
        }
        let baked = now.saturating_duration_since(self.step_started) >= self.bakes[s.step];
        match (s.phase, event) {
            (_, Event::Analysis(Verdict::Fail)) | (_, Event::Abort) => {
                s.phase = Phase::RolledBack;
                s.weight_bp = 0;
                tracing::warn!(step = s.step, ?event, "canary rolled back");
                vec![Action::SetWeight(0), Action::RollBack]
            }
            (_, Event::Promote) => {
                s.phase = Phase::Promoted;
                tracing::info!(step = s.step, "canary promoted by gate");
                vec![Action::Promote]
            }
            (Phase::Progressing, Event::Pause) => {
                s.phase = Phase::Paused(PauseReason::Manual);
                tracing::info!(step = s.step, "rollout paused by gate");
                Vec::new()
            }
            (Phase::Paused(_), Event::Resume) => {
                s.phase = Phase::Progressing;
                s.inconclusive = 0;
                self.step_started = now;
                tracing::info!(step = s.step, "rollout resumed");
                Vec::new()
            }
            (Phase::Progressing, Event::Analysis(Verdict::Pass)) => {
                s.inconclusive = 0;
                if !baked {
                    Vec::new()
                } else if s.step + 1 == self.weights.len() {
                    s.phase = Phase::Promoted;
                    tracing::info!(step = s.step, "canary promoted");
                    vec![Action::Promote]
                } else {
                    s.step += 1;
                    s.weight_bp = self.weights[s.step];
                    self.step_started = now;
                    tracing::info!(step = s.step, weight_bp = s.weight_bp, "canary step up");
                    vec![Action::SetWeight(s.weight_bp)]
                }
            }
            (Phase::Progressing, Event::Analysis(Verdict::Inconclusive)) if baked => {
                s.inconclusive += 1;
                if s.inconclusive >= self.inconclusive_limit {
                    s.phase = Phase::Paused(PauseReason::Inconclusive);
                    tracing::warn!(
                        step = s.step,
                        inconclusive = s.inconclusive,
                        "rollout paused: analysis stays inconclusive"
                    );
                }
                Vec::new()
            }
            _ => Vec::new(),
        }
    }
}
