//! The rollout state machine: steps of weight and bake time, analysis at each step, automatic
//! promotion or rollback, manual gates.
//!
//! It is pure: [`CanaryMachine::on`] takes a [`CanaryEvent`] and the current instant and returns the
//! [`CanaryAction`]s to carry out; it never sleeps, reads a clock or touches the router. The
//! [`CanaryController`](crate::CanaryController) drives it; the simulation harness and the
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
/// use degrade_canary::CanaryStep;
/// let s: CanaryStep = serde_json::from_str(r#"{"weight_percent": 5, "bake": "2m"}"#).unwrap();
/// assert_eq!(s.bake, std::time::Duration::from_secs(120));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryStep {
    /// The canary's share of traffic, in percent (0–100).
    pub weight_percent: f64,
    /// The minimum time at this weight.
    #[serde(with = "humantime_serde")]
    pub bake: Duration,
}

impl CanaryStep {
    /// A step of `weight_percent` % baking for `bake`.
    ///
    /// ```
    /// # use degrade_canary::CanaryStep;
    /// let s = CanaryStep::new(25.0, std::time::Duration::from_secs(60));
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
/// use degrade_canary::CanaryConfig;
/// let cfg = CanaryConfig::default();
/// let weights: Vec<f64> = cfg.steps.iter().map(|s| s.weight_percent).collect();
/// assert_eq!(weights, [1.0, 5.0, 10.0, 25.0, 50.0, 100.0]);
/// assert!(cfg.validate().is_ok());
///
/// let bad: CanaryConfig = serde_json::from_str(
///     r#"{"steps": [{"weight_percent": 10, "bake": "1m"}, {"weight_percent": 5, "bake": "1m"}]}"#,
/// ).unwrap();
/// assert_eq!(bad.validate().unwrap_err().field(), "steps.1.weight_percent");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CanaryConfig {
    /// The steps, with strictly rising weights. Default 1, 5, 10, 25, 50, 100 %, 2 minutes each.
    pub steps: Vec<CanaryStep>,
    /// How often the controller analyses. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub analysis_interval: Duration,
    /// Consecutive inconclusive analyses after a step's bake time before the rollout pauses.
    /// Default 10.
    pub inconclusive_limit: u32,
    /// The judge.
    pub judge: JudgeConfig,
}

impl Default for CanaryConfig {
    fn default() -> Self {
        Self {
            steps: [1.0, 5.0, 10.0, 25.0, 50.0, 100.0]
                .into_iter()
                .map(|w| CanaryStep::new(w, Duration::from_secs(120)))
                .collect(),
            analysis_interval: Duration::from_secs(30),
            inconclusive_limit: 10,
            judge: JudgeConfig::default(),
        }
    }
}

impl CanaryConfig {
    /// Checks every field; the error names the first bad one.
    ///
    /// ```
    /// # use degrade_canary::CanaryConfig;
    /// let mut cfg = CanaryConfig::default();
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
    /// A [`CanaryEvent::Pause`] gate.
    Manual,
    /// `inconclusive_limit` inconclusive analyses in a row after the bake time.
    Inconclusive,
}

/// Where a rollout is.
///
/// ```
/// use degrade_canary::CanaryPhase;
/// assert!(CanaryPhase::Promoted.is_terminal());
/// assert!(!CanaryPhase::Progressing.is_terminal());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryPhase {
    /// Baking and analysing at the current step.
    Progressing,
    /// Holding the current weight; still rolls back on a Fail.
    Paused(PauseReason),
    /// The candidate passed every step (or was promoted by hand).
    Promoted,
    /// The candidate failed (or was aborted by hand); weight 0.
    RolledBack,
}

impl CanaryPhase {
    /// Promoted or rolled back: no event changes it any more.
    ///
    /// ```
    /// # use degrade_canary::CanaryPhase;
    /// assert!(CanaryPhase::RolledBack.is_terminal());
    /// ```
    pub fn is_terminal(self) -> bool {
        matches!(self, CanaryPhase::Promoted | CanaryPhase::RolledBack)
    }
}

/// The persisted part of a rollout: enough for a restarted controller to resume at the same
/// step and weight.
///
/// ```
/// use degrade_canary::{CanaryPhase, CanaryState};
/// let s = CanaryState { phase: CanaryPhase::Progressing, step: 2, weight_bp: 1_000, inconclusive: 0 };
/// let json = serde_json::to_string(&s).unwrap();
/// assert_eq!(serde_json::from_str::<CanaryState>(&json).unwrap(), s);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryState {
    /// The phase.
    pub phase: CanaryPhase,
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
/// use degrade_canary::{CanaryEvent, Verdict};
/// let e = CanaryEvent::Analysis(Verdict::Pass);
/// assert_ne!(e, CanaryEvent::Abort);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanaryEvent {
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
/// use degrade_canary::CanaryAction;
/// assert_eq!(CanaryAction::SetWeight(100), CanaryAction::SetWeight(100));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanaryAction {
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
/// use degrade_canary::{CanaryAction, CanaryEvent, CanaryPhase, CanaryMachine, CanaryConfig, CanaryStep, Verdict};
/// use std::time::Duration;
/// use tokio::time::Instant;
///
/// let mut cfg = CanaryConfig::default();
/// cfg.steps = vec![CanaryStep::new(10.0, Duration::from_secs(60)), CanaryStep::new(100.0, Duration::from_secs(60))];
/// let t0 = Instant::now();
/// let mut r = CanaryMachine::new(cfg, t0).unwrap();
/// assert_eq!(r.state().weight_bp, 1_000);
/// // Passing before the bake time does not advance.
/// assert!(r.on(CanaryEvent::Analysis(Verdict::Pass), t0 + Duration::from_secs(30)).is_empty());
/// assert_eq!(r.on(CanaryEvent::Analysis(Verdict::Pass), t0 + Duration::from_secs(60)),
///            [CanaryAction::SetWeight(10_000)]);
/// assert_eq!(r.on(CanaryEvent::Analysis(Verdict::Pass), t0 + Duration::from_secs(120)), [CanaryAction::Promote]);
/// assert_eq!(r.state().phase, CanaryPhase::Promoted);
/// ```
#[derive(Debug, Clone)]
pub struct CanaryMachine {
    weights: Vec<u32>,
    bakes: Vec<Duration>,
    inconclusive_limit: u32,
    state: CanaryState,
    step_started: Instant,
}

impl CanaryMachine {
    /// A rollout at its first step, started at `now`.
    ///
    /// ```
    /// # use degrade_canary::{CanaryMachine, CanaryConfig};
    /// let r = CanaryMachine::new(CanaryConfig::default(), tokio::time::Instant::now()).unwrap();
    /// assert_eq!(r.state().weight_bp, 100);
    /// ```
    pub fn new(cfg: CanaryConfig, now: Instant) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let weights = cfg.weights()?;
        let state = CanaryState {
            phase: CanaryPhase::Progressing,
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
    /// # use degrade_canary::{CanaryPhase, CanaryMachine, CanaryConfig, CanaryState};
    /// let saved = CanaryState { phase: CanaryPhase::Progressing, step: 3, weight_bp: 2_500, inconclusive: 0 };
    /// let r = CanaryMachine::resume(CanaryConfig::default(), saved, tokio::time::Instant::now()).unwrap();
    /// assert_eq!(r.state().step, 3);
    /// let bad = CanaryState { step: 9, ..saved };
    /// assert!(CanaryMachine::resume(CanaryConfig::default(), bad, tokio::time::Instant::now()).is_err());
    /// ```
    pub fn resume(
        cfg: CanaryConfig,
        state: CanaryState,
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
    /// # use degrade_canary::{CanaryPhase, CanaryMachine, CanaryConfig};
    /// let r = CanaryMachine::new(CanaryConfig::default(), tokio::time::Instant::now()).unwrap();
    /// assert_eq!(r.state().phase, CanaryPhase::Progressing);
    /// ```
    pub fn state(&self) -> CanaryState {
        self.state
    }

    /// Applies `event` at `now`; returns the actions to carry out, in order.
    ///
    /// ```
    /// # use degrade_canary::{CanaryAction, CanaryEvent, CanaryPhase, CanaryMachine, CanaryConfig, Verdict};
    /// let t = tokio::time::Instant::now();
    /// let mut r = CanaryMachine::new(CanaryConfig::default(), t).unwrap();
    /// assert_eq!(r.on(CanaryEvent::Analysis(Verdict::Fail), t), [CanaryAction::SetWeight(0), CanaryAction::RollBack]);
    /// assert_eq!(r.state().phase, CanaryPhase::RolledBack);
    /// assert!(r.on(CanaryEvent::Resume, t).is_empty()); // terminal
    /// ```
    pub fn on(&mut self, event: CanaryEvent, now: Instant) -> Vec<CanaryAction> {
        let s = &mut self.state;
        if s.phase.is_terminal() {
            return Vec::new();
        }
        let baked = now.saturating_duration_since(self.step_started) >= self.bakes[s.step];
        match (s.phase, event) {
            (_, CanaryEvent::Analysis(Verdict::Fail)) | (_, CanaryEvent::Abort) => {
                s.phase = CanaryPhase::RolledBack;
                s.weight_bp = 0;
                tracing::warn!(step = s.step, ?event, "canary rolled back");
                vec![CanaryAction::SetWeight(0), CanaryAction::RollBack]
            }
            (_, CanaryEvent::Promote) => {
                s.phase = CanaryPhase::Promoted;
                tracing::info!(step = s.step, "canary promoted by gate");
                vec![CanaryAction::Promote]
            }
            (CanaryPhase::Progressing, CanaryEvent::Pause) => {
                s.phase = CanaryPhase::Paused(PauseReason::Manual);
                tracing::info!(step = s.step, "rollout paused by gate");
                Vec::new()
            }
            (CanaryPhase::Paused(_), CanaryEvent::Resume) => {
                s.phase = CanaryPhase::Progressing;
                s.inconclusive = 0;
                self.step_started = now;
                tracing::info!(step = s.step, "rollout resumed");
                Vec::new()
            }
            (CanaryPhase::Progressing, CanaryEvent::Analysis(Verdict::Pass)) => {
                s.inconclusive = 0;
                if !baked {
                    Vec::new()
                } else if s.step + 1 == self.weights.len() {
                    s.phase = CanaryPhase::Promoted;
                    tracing::info!(step = s.step, "canary promoted");
                    vec![CanaryAction::Promote]
                } else {
                    s.step += 1;
                    s.weight_bp = self.weights[s.step];
                    self.step_started = now;
                    tracing::info!(step = s.step, weight_bp = s.weight_bp, "canary step up");
                    vec![CanaryAction::SetWeight(s.weight_bp)]
                }
            }
            (CanaryPhase::Progressing, CanaryEvent::Analysis(Verdict::Inconclusive)) if baked => {
                s.inconclusive += 1;
                if s.inconclusive >= self.inconclusive_limit {
                    s.phase = CanaryPhase::Paused(PauseReason::Inconclusive);
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
