//! The planner: a pure state machine deciding every step of a rollout.
//!
//! # Why a pure state machine
//!
//! A rollout mixes slow I/O (stopping processes, health checks) with decisions that must be
//! exactly right (never more than `max_unavailable` out of service, never touch an instance
//! twice, roll back exactly what was changed). The [`RolloutMachine`] holds the decisions only: it
//! takes a [`RolloutEvent`] and the current time and returns [`RolloutAction`]s; the controller
//! performs them and reports back. Tests drive it without a runtime.
//!
//! Every change of the planner's durable state is a [`Record`] it emits before acting; a
//! planner rebuilt from the same records ([`RolloutMachine::replay`]) is in the same state, which is
//! how a restarted controller resumes from its journal. Only soft state (health streaks, the
//! bake timer) starts over.
//!
//! # Batches and modes
//!
//! Instances not yet on the target version are cut into batches of `surge + unavailable`
//! (resolved as Kubernetes does, see [`RolloutConfig::limits`]). In each batch the first
//! `surge` instances are replaced by a surge (a new instance on a spare address is started,
//! health-gated and baked before the old one is drained and stopped: no capacity lost) and the
//! others are upgraded in place (drain, stop, install, start, health gate, bake: out of service
//! meanwhile). A batch finishes when every instance in it is done, then (optionally) passes
//! analysis.
//!
//! # Failure and rollback
//!
//! A failed driver step, an instance reaching `failure_threshold` failed checks, a missed
//! progress deadline or a failed analysis fails the rollout: the planner lets the steps already
//! running finish, then rolls back — the failed batch first, then the completed batches in
//! reverse order, with the same batch sizes and modes, every changed instance returning to the
//! version it had before. A failure during the rollback stops everything (reported as
//! [`RolloutOutcome::RollbackFailed`]): taking more instances down would break the availability
//! bound.

use crate::config::{Limits, RolloutConfig};
use crate::deadline::{after, elapsed};
use crate::instance::{Instance, InstanceState};
use degrade_core::ConfigError;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use tokio::time::Instant;

/// Which of an id's two possible instances a step acts on.
///
/// ```
/// use degrade_rollout::plan::Target;
/// assert_eq!(Target::Next.to_string(), "next");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The instance currently holding the id.
    Current,
    /// Its surge replacement.
    Next,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::Current => "current",
            Target::Next => "next",
        })
    }
}

/// What a step does.
///
/// ```
/// use degrade_rollout::plan::StepKind;
/// assert_eq!(StepKind::Install.to_string(), "install");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Ask the driver for a spare address for a surge replacement.
    Allocate,
    /// Take the instance out of the balancer and wait for its in-flight requests.
    Drain,
    /// Stop it.
    Stop,
    /// Install a version.
    Install,
    /// Start it.
    Start,
    /// Health-check it until `healthy_threshold` consecutive passes (then it serves).
    Probe,
    /// Keep checking it for `min_ready` while it serves.
    Bake,
    /// Give its address back to the driver.
    Release,
    /// The replacement takes over the id.
    Swap,
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StepKind::Allocate => "allocate",
            StepKind::Drain => "drain",
            StepKind::Stop => "stop",
            StepKind::Install => "install",
            StepKind::Start => "start",
            StepKind::Probe => "probe",
            StepKind::Bake => "bake",
            StepKind::Release => "release",
            StepKind::Swap => "swap",
        })
    }
}

/// One step of an instance's upgrade (or rollback).
///
/// ```
/// use degrade_rollout::plan::{RolloutStep, StepKind, Target};
/// let s = RolloutStep { kind: StepKind::Start, target: Target::Next };
/// assert_eq!(s.to_string(), "start next");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RolloutStep {
    /// What it does.
    pub kind: StepKind,
    /// On which instance of the id.
    pub target: Target,
}

impl fmt::Display for RolloutStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.target)
    }
}

/// How an instance is upgraded in its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Stopped, upgraded and restarted on its own address (out of service meanwhile).
    InPlace,
    /// Replaced by a new instance on a spare address, retired once the new one is available.
    Surge,
}

/// Which way the instances are moving.
///
/// ```
/// use degrade_rollout::plan::Direction;
/// assert_eq!(Direction::Rollback.to_string(), "rollback");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Towards the target version.
    Upgrade,
    /// Back to the previous versions.
    Rollback,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Upgrade => "upgrade",
            Direction::Rollback => "rollback",
        })
    }
}

/// How a rollout ended.
///
/// ```
/// use degrade_rollout::RolloutOutcome;
/// assert_eq!(RolloutOutcome::RolledBack.to_string(), "rolled back");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutOutcome {
    /// Every instance runs the target version.
    Completed,
    /// Stopped on request after a batch; instances keep the versions they have.
    Aborted,
    /// The rollout failed and every changed instance is back on its previous version.
    RolledBack,
    /// The rollback itself failed; some instances may be on either version or failed.
    RollbackFailed,
}

impl fmt::Display for RolloutOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RolloutOutcome::Completed => "completed",
            RolloutOutcome::Aborted => "aborted",
            RolloutOutcome::RolledBack => "rolled back",
            RolloutOutcome::RollbackFailed => "rollback failed",
        })
    }
}

/// A durable change of the planner's state, written to the journal before it is acted on.
///
/// ```
/// use degrade_rollout::plan::{Direction, Record};
/// let r = Record::BatchStarted { direction: Direction::Upgrade, batch: 0 };
/// let line = serde_json::to_string(&r).unwrap();
/// assert_eq!(line, r#"{"record":"batch_started","direction":"upgrade","batch":0}"#);
/// assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), r);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Record {
    /// A batch began.
    BatchStarted {
        /// Upgrade or rollback.
        direction: Direction,
        /// Its index in that direction's batch list.
        batch: usize,
    },
    /// A step of an instance finished successfully.
    StepDone {
        /// The instance id.
        id: String,
        /// The step.
        step: RolloutStep,
        /// For [`StepKind::Allocate`]: the replacement's address.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<SocketAddr>,
    },
    /// The rollout failed.
    Failed {
        /// The instance at fault, if one is.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// Why.
        reason: String,
    },
    /// The rollback began (every step of the failed batch had settled).
    RollbackStarted,
    /// A batch passed its analysis.
    AnalysisPassed {
        /// Upgrade batch index.
        batch: usize,
    },
    /// Paused: no new batch starts.
    Paused,
    /// Resumed.
    Resumed,
    /// Abort requested: stop after the current batch.
    AbortRequested,
    /// The rollout ended.
    Finished {
        /// How.
        outcome: RolloutOutcome,
    },
}

/// Something the controller must do.
///
/// ```
/// use degrade_rollout::plan::RolloutAction;
/// fn is_io(a: &RolloutAction) -> bool { matches!(a, RolloutAction::Drive { .. } | RolloutAction::Health { .. }) }
/// assert!(!is_io(&RolloutAction::Record(degrade_rollout::plan::Record::Paused)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RolloutAction {
    /// Append to the journal (before performing the actions that follow).
    Record(Record),
    /// Perform a driver step on `instance` (for [`StepKind::Install`], install `version`).
    /// RolloutReport [`RolloutEvent::StepOk`] or [`RolloutEvent::StepErr`].
    Drive {
        /// The step.
        step: RolloutStep,
        /// The instance it acts on (for `Allocate`: the instance to replace).
        instance: Instance,
        /// The version being moved to.
        version: String,
    },
    /// Check the health of `instance` once; report [`RolloutEvent::Health`].
    Health {
        /// The id.
        id: String,
        /// Which of its instances.
        target: Target,
        /// The instance.
        instance: Instance,
    },
    /// The instance passed its health gate: put it in the balancer.
    Serve {
        /// The instance.
        instance: Instance,
    },
    /// Analyse the batch: compare `upgraded` with `baseline`, report [`RolloutEvent::Analysis`].
    Analyze {
        /// Upgrade batch index.
        batch: usize,
        /// Instances on the target version.
        upgraded: Vec<Instance>,
        /// Instances not yet touched.
        baseline: Vec<Instance>,
    },
    /// The rollout ended.
    Finished(RolloutOutcome),
}

/// An input of the planner.
///
/// ```
/// use degrade_rollout::plan::RolloutEvent;
/// let e = RolloutEvent::Tick;
/// assert!(matches!(e, RolloutEvent::Tick));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RolloutEvent {
    /// Time passed (or: start).
    Tick,
    /// A [`RolloutAction::Drive`] step succeeded.
    StepOk {
        /// The id.
        id: String,
        /// The step.
        step: RolloutStep,
        /// For `Allocate`: the address given.
        address: Option<SocketAddr>,
    },
    /// A [`RolloutAction::Drive`] step failed.
    StepErr {
        /// The id.
        id: String,
        /// The step.
        step: RolloutStep,
        /// The driver's error, as text.
        error: String,
    },
    /// A health check finished.
    Health {
        /// The id.
        id: String,
        /// Which of its instances.
        target: Target,
        /// Whether it passed.
        healthy: bool,
    },
    /// A batch's analysis finished.
    Analysis {
        /// Upgrade batch index.
        batch: usize,
        /// Whether the batch passed.
        pass: bool,
        /// Why, in a few words.
        reason: String,
    },
    /// Do not start new batches.
    Pause,
    /// Start batches again.
    Resume,
    /// Stop after the current batch.
    Abort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    InPlace,
    Surge,
    /// Throw away a surge replacement that never took over.
    Discard,
    /// Restart the current instance on its previous version, then throw the replacement away.
    Restore,
}

const fn s(kind: StepKind, target: Target) -> RolloutStep {
    RolloutStep { kind, target }
}

use StepKind as K;
use Target::{Current as C, Next as N};

fn steps(kind: OpKind) -> &'static [RolloutStep] {
    const IN_PLACE: &[RolloutStep] = &[
        s(K::Drain, C),
        s(K::Stop, C),
        s(K::Install, C),
        s(K::Start, C),
        s(K::Probe, C),
        s(K::Bake, C),
    ];
    const SURGE: &[RolloutStep] = &[
        s(K::Allocate, N),
        s(K::Install, N),
        s(K::Start, N),
        s(K::Probe, N),
        s(K::Bake, N),
        s(K::Drain, C),
        s(K::Stop, C),
        s(K::Release, C),
        s(K::Swap, N),
    ];
    const DISCARD: &[RolloutStep] = &[s(K::Drain, N), s(K::Stop, N), s(K::Release, N)];
    const RESTORE: &[RolloutStep] = &[
        s(K::Drain, C),
        s(K::Stop, C),
        s(K::Install, C),
        s(K::Start, C),
        s(K::Probe, C),
        s(K::Bake, C),
        s(K::Drain, N),
        s(K::Stop, N),
        s(K::Release, N),
    ];
    match kind {
        OpKind::InPlace => IN_PLACE,
        OpKind::Surge => SURGE,
        OpKind::Discard => DISCARD,
        OpKind::Restore => RESTORE,
    }
}

/// Index in `SURGE` of the first step that touches the current instance.
const SURGE_RETIRE_FROM: usize = 5;

#[derive(Debug, Clone)]
struct Op {
    slot: usize,
    kind: OpKind,
    to: String,
    pos: usize,
    busy: bool,
    ok_streak: u32,
    fail_streak: u32,
    next_probe: Option<Instant>,
    bake_until: Option<Instant>,
    probe_since: Option<Instant>,
}

impl Op {
    fn new(slot: usize, kind: OpKind, to: String) -> Self {
        Self {
            slot,
            kind,
            to,
            pos: 0,
            busy: false,
            ok_streak: 0,
            fail_streak: 0,
            next_probe: None,
            bake_until: None,
            probe_since: None,
        }
    }
    fn step(&self) -> Option<RolloutStep> {
        steps(self.kind).get(self.pos).copied()
    }
    fn done(&self) -> bool {
        self.pos >= steps(self.kind).len()
    }
}

#[derive(Debug, Clone)]
struct Slot {
    current: Instance,
    next: Option<Instance>,
    previous: String,
    current_serving: bool,
    next_serving: bool,
}

impl Slot {
    fn get(&self, t: Target) -> Option<&Instance> {
        match t {
            C => Some(&self.current),
            N => self.next.as_ref(),
        }
    }
    fn get_mut(&mut self, t: Target) -> Option<&mut Instance> {
        match t {
            C => Some(&mut self.current),
            N => self.next.as_mut(),
        }
    }
    fn set_state(&mut self, t: Target, state: InstanceState) {
        if let Some(i) = self.get_mut(t) {
            i.state = state;
        }
    }
    fn serving(&mut self, t: Target, on: bool) {
        match t {
            C => self.current_serving = on,
            N => self.next_serving = on,
        }
    }
    fn available(&self) -> bool {
        let ok = |i: Option<&Instance>, serving| {
            serving && i.is_some_and(|i| i.state != InstanceState::Failed)
        };
        ok(Some(&self.current), self.current_serving) || ok(self.next.as_ref(), self.next_serving)
    }
}

/// Where the rollout is.
///
/// ```
/// use degrade_rollout::plan::RolloutPhase;
/// assert_eq!(RolloutPhase::Upgrading.to_string(), "upgrading");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutPhase {
    /// Moving instances to the target version.
    Upgrading,
    /// Failed; waiting for the running steps to settle before rolling back.
    Failing,
    /// Moving changed instances back.
    RollingBack,
    /// Ended.
    Finished(RolloutOutcome),
}

impl fmt::Display for RolloutPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RolloutPhase::Upgrading => f.write_str("upgrading"),
            RolloutPhase::Failing => f.write_str("failing"),
            RolloutPhase::RollingBack => f.write_str("rolling back"),
            RolloutPhase::Finished(o) => write!(f, "finished ({o})"),
        }
    }
}

/// The rollout planner. See the [module documentation](self).
///
/// ```
/// use degrade_rollout::{Instance, RolloutConfig};
/// use degrade_rollout::plan::{RolloutAction, RolloutEvent, RolloutMachine, StepKind};
/// use tokio::time::Instant;
///
/// let instances = vec![
///     Instance::new("a", "127.0.0.1:8001".parse().unwrap(), "v1"),
///     Instance::new("b", "127.0.0.1:8002".parse().unwrap(), "v1"),
/// ];
/// let mut p = RolloutMachine::new(RolloutConfig::default(), instances, "v2").unwrap();
/// assert_eq!(p.batch_count(), 2); // max_unavailable 1, max_surge 0: one at a time
/// let actions = p.handle(RolloutEvent::Tick, Instant::now());
/// let drains: Vec<_> = actions.iter().filter(|a| matches!(a, RolloutAction::Drive { step, .. } if step.kind == StepKind::Drain)).collect();
/// assert_eq!(drains.len(), 1);
/// ```
#[derive(Debug, Clone)]
pub struct RolloutMachine {
    cfg: RolloutConfig,
    limits: Limits,
    target: String,
    slots: Vec<Slot>,
    batches: Vec<Vec<(usize, Mode)>>,
    rollback: Vec<Vec<(usize, OpKind, String)>>,
    phase: RolloutPhase,
    direction: Direction,
    next_batch: usize,
    current_batch: Option<usize>,
    ops: Vec<Op>,
    failure: Option<String>,
    paused: bool,
    abort: bool,
    analysis_pending: bool,
    analysed: HashSet<usize>,
    last_progress: Option<Instant>,
}

impl RolloutMachine {
    /// A planner moving `instances` to `target`. Instances already on `target` are left
    /// alone.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for an invalid configuration, an empty set, duplicate ids or
    /// addresses, or an empty target version.
    ///
    /// ```
    /// # use degrade_rollout::{Instance, RolloutConfig, plan::RolloutMachine};
    /// let a = Instance::new("a", "127.0.0.1:8001".parse().unwrap(), "v1");
    /// let err = RolloutMachine::new(RolloutConfig::default(), vec![a.clone(), a], "v2").unwrap_err();
    /// assert_eq!(err.field(), "instances");
    /// ```
    pub fn new(
        cfg: RolloutConfig,
        instances: Vec<Instance>,
        target: impl Into<String>,
    ) -> Result<Self, ConfigError> {
        let target = target.into();
        let limits = cfg.limits(instances.len())?;
        if target.trim().is_empty() {
            return Err(ConfigError::new("target", "must not be empty"));
        }
        let mut ids = HashSet::new();
        let mut addrs = HashSet::new();
        for i in &instances {
            if i.id.is_empty() {
                return Err(ConfigError::new("instances", "an instance id is empty"));
            }
            if !ids.insert(i.id.as_str()) {
                return Err(ConfigError::new(
                    "instances",
                    format!("duplicate instance id `{}`", i.id),
                ));
            }
            if !addrs.insert(i.address) {
                return Err(ConfigError::new(
                    "instances",
                    format!("duplicate address {}", i.address),
                ));
            }
            if i.version.trim().is_empty() {
                return Err(ConfigError::new(
                    "instances",
                    format!("instance `{}` has an empty version", i.id),
                ));
            }
        }
        let slots: Vec<Slot> = instances
            .into_iter()
            .map(|mut i| {
                i.state = InstanceState::Running;
                Slot {
                    previous: i.version.clone(),
                    current: i,
                    next: None,
                    current_serving: true,
                    next_serving: false,
                }
            })
            .collect();
        let todo: Vec<usize> = (0..slots.len())
            .filter(|&i| slots[i].current.version != target)
            .collect();
        let size = limits.surge.saturating_add(limits.unavailable).max(1);
        let batches = todo
            .chunks(size)
            .map(|chunk| {
                chunk
                    .iter()
                    .enumerate()
                    .map(|(k, &slot)| {
                        let mode = if k < limits.surge {
                            Mode::Surge
                        } else {
                            Mode::InPlace
                        };
                        (slot, mode)
                    })
                    .collect()
            })
            .collect();
        Ok(Self {
            cfg,
            limits,
            target,
            slots,
            batches,
            rollback: Vec::new(),
            phase: RolloutPhase::Upgrading,
            direction: Direction::Upgrade,
            next_batch: 0,
            current_batch: None,
            ops: Vec::new(),
            failure: None,
            paused: false,
            abort: false,
            analysis_pending: false,
            analysed: HashSet::new(),
            last_progress: None,
        })
    }

    /// Rebuilds a planner and applies `records` (from a journal), without acting on them.
    /// The next [`handle`](Self::handle) re-issues whatever step was running.
    ///
    /// ```
    /// # use degrade_rollout::{Instance, RolloutConfig, plan::{RolloutMachine, Record, Direction}};
    /// # let instances = vec![Instance::new("a", "127.0.0.1:8001".parse().unwrap(), "v1")];
    /// let records = vec![Record::BatchStarted { direction: Direction::Upgrade, batch: 0 }];
    /// let p = RolloutMachine::replay(RolloutConfig::default(), instances, "v2", &records).unwrap();
    /// assert_eq!(p.current_batch(), Some(0));
    /// ```
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for what [`new`](Self::new) refuses, and one naming `records[i]` for
    /// the first record this planner could not have written at that point (a batch that does
    /// not exist or starts out of turn, a step that is not the next one of a batch in
    /// progress, anything after the end): replaying it would act on a state that never was.
    ///
    /// ```
    /// # use degrade_rollout::{Instance, RolloutConfig, plan::{RolloutMachine, Record, Direction}};
    /// # let instances = vec![Instance::new("a", "127.0.0.1:8001".parse().unwrap(), "v1")];
    /// let records = vec![Record::BatchStarted { direction: Direction::Upgrade, batch: 7 }];
    /// let err = RolloutMachine::replay(RolloutConfig::default(), instances, "v2", &records).unwrap_err();
    /// assert_eq!(err.field(), "records[0]");
    /// assert!(err.to_string().contains("batch 7"));
    /// ```
    pub fn replay(
        cfg: RolloutConfig,
        instances: Vec<Instance>,
        target: impl Into<String>,
        records: &[Record],
    ) -> Result<Self, ConfigError> {
        let mut p = Self::new(cfg, instances, target)?;
        for (i, r) in records.iter().enumerate() {
            p.replay_one(r.clone())
                .map_err(|rule| ConfigError::new(format!("records[{i}]"), rule))?;
        }
        p.end_replay();
        Ok(p)
    }

    /// Applies one journaled record after checking that this planner could have written it
    /// now; the error says why not.
    pub(crate) fn replay_one(&mut self, r: Record) -> Result<(), String> {
        self.fits(&r)?;
        self.apply(r, None);
        Ok(())
    }

    /// Forgets the soft state after a replay: health streaks and timers start over.
    pub(crate) fn end_replay(&mut self) {
        for op in &mut self.ops {
            op.busy = false;
            op.next_probe = None;
            op.bake_until = None;
            op.ok_streak = 0;
            op.fail_streak = 0;
        }
        self.analysis_pending = false;
    }

    /// Whether `r` is a record this planner could emit in its present state.
    fn fits(&self, r: &Record) -> Result<(), String> {
        if let RolloutPhase::Finished(o) = self.phase {
            return Err(format!("a record after the rollout finished ({o})"));
        }
        match r {
            Record::BatchStarted { direction, batch } => {
                let total = match direction {
                    Direction::Upgrade => self.batches.len(),
                    Direction::Rollback => self.rollback.len(),
                };
                if !matches!(
                    self.phase,
                    RolloutPhase::Upgrading | RolloutPhase::RollingBack
                ) {
                    return Err(format!(
                        "{direction} batch {batch} started while {}",
                        self.phase
                    ));
                }
                if *direction != self.direction {
                    return Err(format!(
                        "{direction} batch {batch} started while the rollout moves the other way"
                    ));
                }
                // A batch whose ops are all done (and analysed, if need be) ends without a
                // record of its own: the next one may start.
                if let Some(b) = self.current_batch
                    && (!self.ops.iter().all(Op::done) || self.needs_analysis())
                {
                    return Err(format!(
                        "batch {batch} started while batch {b} is in progress"
                    ));
                }
                if *batch >= total {
                    return Err(format!(
                        "{direction} batch {batch} does not exist (the plan has {total})"
                    ));
                }
                if *batch != self.next_batch {
                    return Err(format!(
                        "{direction} batch {batch} started out of turn (next is {})",
                        self.next_batch
                    ));
                }
            }
            Record::StepDone { id, step, address } => {
                let in_progress = self
                    .ops
                    .iter()
                    .any(|op| self.slots[op.slot].current.id == *id && op.step() == Some(*step));
                if !in_progress {
                    return Err(format!(
                        "`{step}` of `{id}` is not the next step of a batch in progress"
                    ));
                }
                if step.kind == K::Allocate && address.is_none() {
                    return Err(format!("`{step}` of `{id}` has no address"));
                }
            }
            Record::RollbackStarted => {
                if self.phase != RolloutPhase::Failing {
                    return Err(format!("rollback started while {}", self.phase));
                }
            }
            Record::AnalysisPassed { batch } => {
                let finished = self.direction == Direction::Upgrade
                    && self.current_batch == Some(*batch)
                    && self.ops.iter().all(Op::done);
                if !finished {
                    return Err(format!(
                        "analysis of batch {batch}, which is not awaiting one"
                    ));
                }
            }
            Record::Failed { .. }
            | Record::Paused
            | Record::Resumed
            | Record::AbortRequested
            | Record::Finished { .. } => {}
        }
        Ok(())
    }

    /// The resolved surge and unavailable limits.
    ///
    /// ```
    /// # use degrade_rollout::{Instance, RolloutConfig, plan::RolloutMachine};
    /// # let i = vec![Instance::new("a", "127.0.0.1:1".parse().unwrap(), "v1")];
    /// assert_eq!(RolloutMachine::new(RolloutConfig::default(), i, "v2").unwrap().limits().unavailable, 1);
    /// ```
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The target version.
    ///
    /// ```
    /// # use degrade_rollout::{Instance, RolloutConfig, plan::RolloutMachine};
    /// # let i = vec![Instance::new("a", "127.0.0.1:1".parse().unwrap(), "v1")];
    /// assert_eq!(RolloutMachine::new(RolloutConfig::default(), i, "v2").unwrap().target(), "v2");
    /// ```
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The configuration.
    ///
    /// ```
    /// # use degrade_rollout::{Instance, RolloutConfig, plan::RolloutMachine};
    /// # let i = vec![Instance::new("a", "127.0.0.1:1".parse().unwrap(), "v1")];
    /// assert_eq!(RolloutMachine::new(RolloutConfig::default(), i, "v2").unwrap().config().healthy_threshold, 3);
    /// ```
    pub fn config(&self) -> &RolloutConfig {
        &self.cfg
    }

    /// Number of upgrade batches.
    ///
    /// ```
    /// # use degrade_rollout::{Instance, RolloutConfig, plan::RolloutMachine};
    /// # let i = vec![Instance::new("a", "127.0.0.1:1".parse().unwrap(), "v2")];
    /// assert_eq!(RolloutMachine::new(RolloutConfig::default(), i, "v2").unwrap().batch_count(), 0);
    /// ```
    pub fn batch_count(&self) -> usize {
        self.batches.len()
    }

    /// The phase.
    ///
    /// ```
    /// # use degrade_rollout::{Instance, RolloutConfig, plan::{RolloutMachine, RolloutPhase}};
    /// # let i = vec![Instance::new("a", "127.0.0.1:1".parse().unwrap(), "v1")];
    /// assert_eq!(RolloutMachine::new(RolloutConfig::default(), i, "v2").unwrap().phase(), RolloutPhase::Upgrading);
    /// ```
    pub fn phase(&self) -> RolloutPhase {
        self.phase
    }

    /// The batch in progress (an index into the batches of the current direction).
    ///
    /// ```
    /// # use degrade_rollout::{Instance, RolloutConfig, plan::RolloutMachine};
    /// # let i = vec![Instance::new("a", "127.0.0.1:1".parse().unwrap(), "v1")];
    /// assert_eq!(RolloutMachine::new(RolloutConfig::default(), i, "v2").unwrap().current_batch(), None);
    /// ```
    pub fn current_batch(&self) -> Option<usize> {
        self.current_batch
    }

    /// Whether new batches are held.
    ///
    /// ```
    /// # use degrade_rollout::{Instance, RolloutConfig, plan::RolloutMachine};
    /// # let i = vec![Instance::new("a", "127.0.0.1:1".parse().unwrap(), "v1")];
    /// assert!(!RolloutMachine::new(RolloutConfig::default(), i, "v2").unwrap().paused());
    /// ```
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Why the rollout failed, once it has.
    ///
    /// ```
    /// # use degrade_rollout::{Instance, RolloutConfig, plan::RolloutMachine};
    /// # let i = vec![Instance::new("a", "127.0.0.1:1".parse().unwrap(), "v1")];
    /// assert_eq!(RolloutMachine::new(RolloutConfig::default(), i, "v2").unwrap().failure(), None);
    /// ```
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Every instance: the current holder of each id, then surge replacements.
    ///
    /// ```
    /// # use degrade_rollout::{Instance, RolloutConfig, plan::RolloutMachine};
    /// # let i = vec![Instance::new("a", "127.0.0.1:1".parse().unwrap(), "v1")];
    /// assert_eq!(RolloutMachine::new(RolloutConfig::default(), i, "v2").unwrap().instances().len(), 1);
    /// ```
    pub fn instances(&self) -> Vec<Instance> {
        let mut v: Vec<Instance> = self.slots.iter().map(|s| s.current.clone()).collect();
        v.extend(self.slots.iter().filter_map(|s| s.next.clone()));
        v
    }

    /// The instances that should be in the balancer now.
    ///
    /// ```
    /// # use degrade_rollout::{Instance, RolloutConfig, plan::RolloutMachine};
    /// # let i = vec![Instance::new("a", "127.0.0.1:1".parse().unwrap(), "v1")];
    /// assert_eq!(RolloutMachine::new(RolloutConfig::default(), i, "v2").unwrap().serving().len(), 1);
    /// ```
    pub fn serving(&self) -> Vec<Instance> {
        let mut v = Vec::new();
        for s in &self.slots {
            if s.current_serving {
                v.push(s.current.clone());
            }
            if s.next_serving
                && let Some(n) = &s.next
            {
                v.push(n.clone());
            }
        }
        v
    }

    /// Ids with no available instance (none serving and healthy).
    ///
    /// ```
    /// # use degrade_rollout::{Instance, RolloutConfig, plan::RolloutMachine};
    /// # let i = vec![Instance::new("a", "127.0.0.1:1".parse().unwrap(), "v1")];
    /// assert_eq!(RolloutMachine::new(RolloutConfig::default(), i, "v2").unwrap().unavailable(), 0);
    /// ```
    pub fn unavailable(&self) -> usize {
        self.slots.iter().filter(|s| !s.available()).count()
    }

    /// Instances that exist (desired ones plus surge replacements).
    ///
    /// ```
    /// # use degrade_rollout::{Instance, RolloutConfig, plan::RolloutMachine};
    /// # let i = vec![Instance::new("a", "127.0.0.1:1".parse().unwrap(), "v1")];
    /// assert_eq!(RolloutMachine::new(RolloutConfig::default(), i, "v2").unwrap().allocated(), 1);
    /// ```
    pub fn allocated(&self) -> usize {
        self.slots.len() + self.slots.iter().filter(|s| s.next.is_some()).count()
    }

    /// When the planner next needs a [`RolloutEvent::Tick`], if it waits on time.
    ///
    /// ```
    /// # use degrade_rollout::{Instance, RolloutConfig, plan::RolloutMachine};
    /// # let i = vec![Instance::new("a", "127.0.0.1:1".parse().unwrap(), "v1")];
    /// assert_eq!(RolloutMachine::new(RolloutConfig::default(), i, "v2").unwrap().next_wake(), None);
    /// ```
    pub fn next_wake(&self) -> Option<Instant> {
        if matches!(self.phase, RolloutPhase::Finished(_)) {
            return None;
        }
        let mut wake = None::<Instant>;
        let mut at = |t: Option<Instant>| {
            if let Some(t) = t {
                wake = Some(wake.map_or(t, |w| w.min(t)));
            }
        };
        let waiting = matches!(
            self.phase,
            RolloutPhase::Upgrading | RolloutPhase::RollingBack
        );
        for op in &self.ops {
            if !waiting || op.done() {
                continue;
            }
            if matches!(op.step().map(|s| s.kind), Some(K::Probe | K::Bake)) && !op.busy {
                at(op.next_probe);
                at(op.bake_until);
            }
        }
        if waiting && !self.ops.is_empty() && !self.analysis_pending {
            at(self
                .last_progress
                .map(|t| after(t, self.cfg.progress_deadline)));
        }
        wake
    }

    /// Feeds one event; returns what to do, records first.
    ///
    /// ```
    /// # use degrade_rollout::{Instance, RolloutConfig, plan::{RolloutMachine, RolloutEvent, RolloutAction, Record}};
    /// # let i = vec![Instance::new("a", "127.0.0.1:1".parse().unwrap(), "v1")];
    /// let mut p = RolloutMachine::new(RolloutConfig::default(), i, "v2").unwrap();
    /// let actions = p.handle(RolloutEvent::Pause, tokio::time::Instant::now());
    /// assert_eq!(actions, vec![RolloutAction::Record(Record::Paused)]);
    /// ```
    pub fn handle(&mut self, event: RolloutEvent, now: Instant) -> Vec<RolloutAction> {
        let mut out = Vec::new();
        if matches!(self.phase, RolloutPhase::Finished(_)) {
            return out;
        }
        match event {
            RolloutEvent::Tick => {}
            RolloutEvent::Pause => {
                if !self.paused {
                    self.record(Record::Paused, now, &mut out);
                }
            }
            RolloutEvent::Resume => {
                if self.paused {
                    self.record(Record::Resumed, now, &mut out);
                }
            }
            RolloutEvent::Abort => {
                if !self.abort {
                    self.record(Record::AbortRequested, now, &mut out);
                }
            }
            RolloutEvent::StepOk { id, step, address } => {
                if let Some(k) = self.busy_op(&id, step) {
                    self.ops[k].busy = false;
                    self.record(Record::StepDone { id, step, address }, now, &mut out);
                }
            }
            RolloutEvent::StepErr { id, step, error } => {
                if let Some(k) = self.busy_op(&id, step) {
                    self.ops[k].busy = false;
                    let reason = format!("{step} of `{id}` failed: {error}");
                    self.fail(Some(id), reason, now, &mut out);
                }
            }
            RolloutEvent::Health {
                id,
                target,
                healthy,
            } => self.health(id, target, healthy, now, &mut out),
            RolloutEvent::Analysis {
                batch,
                pass,
                reason,
            } => {
                if self.analysis_pending && self.current_batch == Some(batch) {
                    self.analysis_pending = false;
                    if pass {
                        self.record(Record::AnalysisPassed { batch }, now, &mut out);
                    } else {
                        self.fail(
                            None,
                            format!("analysis of batch {batch}: {reason}"),
                            now,
                            &mut out,
                        );
                    }
                }
            }
        }
        self.drive(now, &mut out);
        out
    }

    fn busy_op(&self, id: &str, step: RolloutStep) -> Option<usize> {
        self.ops.iter().position(|op| {
            op.busy && self.slots[op.slot].current.id == id && op.step() == Some(step)
        })
    }

    fn health(
        &mut self,
        id: String,
        target: Target,
        healthy: bool,
        now: Instant,
        out: &mut Vec<RolloutAction>,
    ) {
        let Some(k) = self.ops.iter().position(|op| {
            op.busy
                && self.slots[op.slot].current.id == id
                && matches!(op.step(), Some(st) if matches!(st.kind, K::Probe | K::Bake) && st.target == target)
        }) else {
            return;
        };
        let op = &mut self.ops[k];
        op.busy = false;
        op.next_probe = Some(after(now, self.cfg.health_interval));
        if self.phase == RolloutPhase::Failing {
            return;
        }
        if healthy {
            op.ok_streak += 1;
            op.fail_streak = 0;
            if op.step().map(|s| s.kind) == Some(K::Probe)
                && op.ok_streak >= self.cfg.healthy_threshold
            {
                let step = s(K::Probe, target);
                self.record(
                    Record::StepDone {
                        id,
                        step,
                        address: None,
                    },
                    now,
                    out,
                );
                let op = &mut self.ops[k];
                op.bake_until = Some(after(now, self.cfg.min_ready));
                op.next_probe = Some(after(now, self.cfg.health_interval));
                if let Some(i) = self.slots[op.slot].get(target) {
                    out.push(RolloutAction::Serve {
                        instance: i.clone(),
                    });
                }
            }
        } else {
            op.ok_streak = 0;
            let starting = op.step().map(|s| s.kind) == Some(K::Probe)
                && op
                    .probe_since
                    .is_some_and(|t| !elapsed(t, now, self.cfg.startup_grace));
            if starting {
                return;
            }
            op.fail_streak += 1;
            if op.fail_streak >= self.cfg.failure_threshold {
                let n = op.fail_streak;
                let reason = format!("`{id}` ({target}) failed {n} consecutive health checks");
                self.fail(Some(id), reason, now, out);
            }
        }
    }

    fn fail(
        &mut self,
        id: Option<String>,
        reason: String,
        now: Instant,
        out: &mut Vec<RolloutAction>,
    ) {
        if self.phase == RolloutPhase::Failing {
            return;
        }
        self.record(Record::Failed { id, reason }, now, out);
    }

    fn record(&mut self, r: Record, now: Instant, out: &mut Vec<RolloutAction>) {
        out.push(RolloutAction::Record(r.clone()));
        self.apply(r, Some(now));
    }

    /// Applies a durable change. `now` is `None` when replaying.
    fn apply(&mut self, r: Record, now: Option<Instant>) {
        match r {
            Record::BatchStarted { direction, batch } => {
                self.direction = direction;
                self.current_batch = Some(batch);
                self.next_batch = batch + 1;
                self.ops = match direction {
                    Direction::Upgrade => self.batches.get(batch).map_or_else(Vec::new, |b| {
                        b.iter()
                            .map(|&(slot, mode)| {
                                let kind = match mode {
                                    Mode::InPlace => OpKind::InPlace,
                                    Mode::Surge => OpKind::Surge,
                                };
                                Op::new(slot, kind, self.target.clone())
                            })
                            .collect()
                    }),
                    Direction::Rollback => self.rollback.get(batch).map_or_else(Vec::new, |b| {
                        b.iter()
                            .map(|(slot, kind, to)| Op::new(*slot, *kind, to.clone()))
                            .collect()
                    }),
                };
                self.last_progress = now;
            }
            Record::StepDone { id, step, address } => {
                let Some(k) = self
                    .ops
                    .iter()
                    .position(|op| self.slots[op.slot].current.id == id && op.step() == Some(step))
                else {
                    return;
                };
                let (slot, to) = (self.ops[k].slot, self.ops[k].to.clone());
                let sl = &mut self.slots[slot];
                match step.kind {
                    K::Allocate => {
                        let Some(address) = address else { return };
                        let mut n = Instance::new(id.clone(), address, sl.current.version.clone());
                        n.state = InstanceState::Stopped;
                        sl.next = Some(n);
                        sl.next_serving = false;
                    }
                    K::Drain => {
                        sl.serving(step.target, false);
                        sl.set_state(step.target, InstanceState::Draining);
                    }
                    K::Stop => sl.set_state(step.target, InstanceState::Stopped),
                    K::Install => {
                        if let Some(i) = sl.get_mut(step.target) {
                            i.version = to;
                            i.state = InstanceState::Stopped;
                        }
                    }
                    K::Start => sl.set_state(step.target, InstanceState::Starting),
                    K::Probe => {
                        sl.serving(step.target, true);
                        sl.set_state(step.target, InstanceState::Ready);
                    }
                    K::Bake => {}
                    K::Release => {
                        if step.target == N {
                            sl.next = None;
                            sl.next_serving = false;
                        } else {
                            sl.current_serving = false;
                        }
                    }
                    K::Swap => {
                        if let Some(n) = sl.next.take() {
                            sl.current = n;
                            sl.current_serving = sl.next_serving;
                            sl.next_serving = false;
                        }
                    }
                }
                let op = &mut self.ops[k];
                op.pos += 1;
                op.busy = false;
                op.ok_streak = 0;
                op.fail_streak = 0;
                op.next_probe = None;
                op.bake_until = None;
                op.probe_since = None;
                if op.done() {
                    let sl = &mut self.slots[op.slot];
                    if sl.current_serving {
                        sl.current.state = InstanceState::Running;
                    }
                }
                if now.is_some() {
                    self.last_progress = now;
                }
            }
            Record::Failed { id, reason } => {
                if let Some(id) = &id
                    && let Some(slot) = self.slots.iter().position(|s| &s.current.id == id)
                {
                    // The failing instance is the one the op was acting on.
                    let target = self
                        .ops
                        .iter()
                        .find(|op| op.slot == slot)
                        .and_then(Op::step)
                        .map_or(C, |st| st.target);
                    self.slots[slot].set_state(target, InstanceState::Failed);
                }
                self.failure.get_or_insert(reason);
                self.phase = match self.phase {
                    RolloutPhase::Upgrading => RolloutPhase::Failing,
                    RolloutPhase::RollingBack => {
                        RolloutPhase::Finished(RolloutOutcome::RollbackFailed)
                    }
                    p => p,
                };
                self.analysis_pending = false;
            }
            Record::RollbackStarted => self.start_rollback(),
            Record::AnalysisPassed { batch } => {
                self.analysed.insert(batch);
                self.analysis_pending = false;
            }
            Record::Paused => self.paused = true,
            Record::Resumed => self.paused = false,
            Record::AbortRequested => self.abort = true,
            Record::Finished { outcome } => {
                self.phase = RolloutPhase::Finished(outcome);
                self.ops.clear();
                self.current_batch = None;
            }
        }
    }

    fn start_rollback(&mut self) {
        let mut groups: Vec<Vec<(usize, OpKind, String)>> = Vec::new();
        let unfinished = self.ops.iter().any(|op| !op.done());
        let completed = if unfinished || self.current_batch.is_none() {
            // The current batch is rolled back from wherever each of its ops stopped.
            let mut first = Vec::new();
            for op in &self.ops {
                let prev = self.slots[op.slot].previous.clone();
                match (op.kind, op.pos) {
                    (OpKind::InPlace, _) => first.push((op.slot, OpKind::InPlace, prev)),
                    (OpKind::Surge, 0) => {}
                    (OpKind::Surge, p) if p < SURGE_RETIRE_FROM => {
                        first.push((op.slot, OpKind::Discard, prev));
                    }
                    (OpKind::Surge, p) if p < steps(OpKind::Surge).len() => {
                        first.push((op.slot, OpKind::Restore, prev));
                    }
                    (_, _) => first.push((op.slot, OpKind::Surge, prev)),
                }
            }
            if !first.is_empty() {
                groups.push(first);
            }
            self.current_batch.unwrap_or(self.next_batch)
        } else {
            // The batch finished (its analysis failed): roll it back with the others.
            self.current_batch.map_or(self.next_batch, |b| b + 1)
        };
        for b in (0..completed.min(self.batches.len())).rev() {
            let group = self.batches[b]
                .iter()
                .map(|&(slot, mode)| {
                    let kind = match mode {
                        Mode::InPlace => OpKind::InPlace,
                        Mode::Surge => OpKind::Surge,
                    };
                    (slot, kind, self.slots[slot].previous.clone())
                })
                .collect();
            groups.push(group);
        }
        self.rollback = groups;
        self.ops.clear();
        self.current_batch = None;
        self.next_batch = 0;
        self.direction = Direction::Rollback;
        self.phase = RolloutPhase::RollingBack;
        self.paused = false;
        self.abort = false;
    }

    fn drive(&mut self, now: Instant, out: &mut Vec<RolloutAction>) {
        loop {
            match self.phase {
                RolloutPhase::Finished(outcome) => {
                    if !out.iter().any(|a| matches!(a, RolloutAction::Finished(_))) {
                        out.push(RolloutAction::Finished(outcome));
                    }
                    return;
                }
                RolloutPhase::Failing => {
                    if self.ops.iter().any(|op| op.busy) {
                        return;
                    }
                    self.record(Record::RollbackStarted, now, out);
                    continue;
                }
                RolloutPhase::Upgrading | RolloutPhase::RollingBack => {}
            }
            if self.current_batch.is_some() {
                if self.last_progress.is_none() {
                    self.last_progress = Some(now);
                }
                if self.ops.iter().all(Op::done) {
                    if self.needs_analysis() {
                        if !self.analysis_pending {
                            self.analysis_pending = true;
                            out.push(self.analyze_action());
                        }
                        return;
                    }
                    self.current_batch = None;
                    self.ops.clear();
                    continue;
                }
                self.step_ops(now, out);
                if self.phase == RolloutPhase::Failing || self.ops.iter().all(Op::done) {
                    continue;
                }
                if let Some(t) = self.last_progress
                    && elapsed(t, now, self.cfg.progress_deadline)
                {
                    let reason = format!(
                        "no progress in {:?} (progress deadline)",
                        self.cfg.progress_deadline
                    );
                    self.record(Record::Failed { id: None, reason }, now, out);
                    continue;
                }
                return;
            }
            let total = match self.direction {
                Direction::Upgrade => self.batches.len(),
                Direction::Rollback => self.rollback.len(),
            };
            let outcome = if self.next_batch >= total {
                Some(match self.direction {
                    Direction::Upgrade => RolloutOutcome::Completed,
                    Direction::Rollback => RolloutOutcome::RolledBack,
                })
            } else if self.abort {
                Some(RolloutOutcome::Aborted)
            } else {
                None
            };
            if let Some(outcome) = outcome {
                self.record(Record::Finished { outcome }, now, out);
                continue;
            }
            if self.paused {
                return;
            }
            let r = Record::BatchStarted {
                direction: self.direction,
                batch: self.next_batch,
            };
            self.record(r, now, out);
        }
    }

    fn needs_analysis(&self) -> bool {
        self.direction == Direction::Upgrade
            && self.cfg.analysis.is_some()
            && self
                .current_batch
                .is_some_and(|b| !self.analysed.contains(&b))
            && self.slots.iter().any(|s| s.current.version != self.target)
    }

    fn analyze_action(&self) -> RolloutAction {
        let (upgraded, baseline) = self
            .slots
            .iter()
            .filter(|s| s.current_serving)
            .map(|s| s.current.clone())
            .partition(|i| i.version == self.target);
        RolloutAction::Analyze {
            batch: self.current_batch.unwrap_or(0),
            upgraded,
            baseline,
        }
    }

    fn step_ops(&mut self, now: Instant, out: &mut Vec<RolloutAction>) {
        let mut k = 0;
        while k < self.ops.len() {
            if self.phase != RolloutPhase::Upgrading && self.phase != RolloutPhase::RollingBack {
                return;
            }
            let op = &self.ops[k];
            let Some(step) = op.step() else {
                k += 1;
                continue;
            };
            if op.busy {
                k += 1;
                continue;
            }
            let slot = op.slot;
            let id = self.slots[slot].current.id.clone();
            match step.kind {
                K::Probe | K::Bake => {
                    if step.kind == K::Bake {
                        let until = *self.ops[k]
                            .bake_until
                            .get_or_insert_with(|| after(now, self.cfg.min_ready));
                        if now >= until {
                            self.record(
                                Record::StepDone {
                                    id,
                                    step,
                                    address: None,
                                },
                                now,
                                out,
                            );
                            continue;
                        }
                    }
                    let op = &mut self.ops[k];
                    if step.kind == K::Probe {
                        op.probe_since.get_or_insert(now);
                    }
                    if op.next_probe.is_none_or(|t| now >= t)
                        && let Some(instance) = self.slots[slot].get(step.target)
                    {
                        op.busy = true;
                        out.push(RolloutAction::Health {
                            id,
                            target: step.target,
                            instance: instance.clone(),
                        });
                    }
                }
                K::Swap => {
                    self.record(
                        Record::StepDone {
                            id,
                            step,
                            address: None,
                        },
                        now,
                        out,
                    );
                    continue;
                }
                _ => {
                    let sl = &mut self.slots[slot];
                    let state = match step.kind {
                        K::Drain => Some(InstanceState::Draining),
                        K::Install => Some(InstanceState::Installing),
                        K::Start => Some(InstanceState::Starting),
                        _ => None,
                    };
                    if step.kind == K::Drain {
                        sl.serving(step.target, false);
                    }
                    if let Some(st) = state {
                        sl.set_state(step.target, st);
                    }
                    let instance = match sl.get(step.target) {
                        Some(i) => i.clone(),
                        None if step.kind == K::Allocate => sl.current.clone(),
                        // The replacement was never allocated: nothing to do on it.
                        None => {
                            self.record(
                                Record::StepDone {
                                    id,
                                    step,
                                    address: None,
                                },
                                now,
                                out,
                            );
                            continue;
                        }
                    };
                    let op = &mut self.ops[k];
                    op.busy = true;
                    out.push(RolloutAction::Drive {
                        step,
                        instance,
                        version: op.to.clone(),
                    });
                }
            }
            k += 1;
        }
    }
}
