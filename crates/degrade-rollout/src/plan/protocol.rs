//! What goes in and out of the machine: the events it takes, the actions it asks for and
//! the records it journals.

use super::types::{Direction, RolloutOutcome, RolloutStep, Target};
use crate::instance::Instance;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

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
        /// For [`StepKind::Allocate`](super::StepKind::Allocate): the replacement's address.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<SocketAddr>,
    },
    /// The rollout failed.
    Failed {
        /// The instance at fault, if one is.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// Which of the id's instances is at fault (absent in journals written before it was
        /// recorded: then the one its step acted on).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<Target>,
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
    /// Abort requested: stop an upgrade after the current batch (a rollback in progress runs to
    /// its end: it is the safe direction).
    AbortRequested,
    /// Every batch is done (or the rollout was aborted after one): the instances it changed
    /// stay watched for `post_watch` before it ends with `outcome`; a failure meanwhile rolls
    /// back.
    WatchStarted {
        /// How the rollout ends if the watch sees no failure: completed or aborted.
        outcome: RolloutOutcome,
    },
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
    /// Perform a driver step on `instance` (for [`StepKind::Install`](super::StepKind::Install), install `version`).
    /// Report [`RolloutEvent::StepOk`] or [`RolloutEvent::StepErr`].
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
        /// The number of this check, to hand back in the [`RolloutEvent::Health`] it ends in.
        check: u64,
    },
    /// The instance passed its health gate: put it in the balancer.
    Serve {
        /// The instance.
        instance: Instance,
    },
    /// The instance was started on the target version: watch its process and report
    /// [`RolloutEvent::Exited`] if it ever exits (drivers that cannot tell never report; the
    /// health checks of the watch still see it). Stale reports are ignored, so the controller
    /// may drop its watches when the rollout ends.
    Watch {
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
/// use degrade_rollout::{Instance, RolloutConfig, plan::{RolloutEvent, RolloutMachine}};
/// let now = tokio::time::Instant::now();
/// let a = Instance::new("a", "127.0.0.1:8001".parse().unwrap(), "v1");
/// let mut m = RolloutMachine::new(RolloutConfig::default(), vec![a], "v2")?;
/// m.handle(RolloutEvent::Pause, now);
/// assert!(m.paused());
/// m.handle(RolloutEvent::Resume, now);
/// assert!(!m.paused());
/// # Ok::<(), degrade_core::ConfigError>(())
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
        /// The `check` of the [`RolloutAction::Health`] it answers. A reply to a check the
        /// planner no longer waits for — of an instance that has since been replaced under the
        /// same id and target, or restarted — is ignored.
        check: u64,
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
    /// A [`RolloutAction::Watch`]ed instance's process exited (crashed, killed, or stopped
    /// by someone else than the rollout).
    Exited {
        /// The id.
        id: String,
        /// The address of the instance that exited (an id has two during a surge).
        address: SocketAddr,
        /// How it exited, as text.
        error: String,
    },
    /// Do not start new batches.
    Pause,
    /// Start batches again.
    Resume,
    /// Stop after the current batch.
    Abort,
}
