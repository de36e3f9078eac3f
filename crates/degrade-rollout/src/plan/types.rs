//! The plan's vocabulary: steps, targets, modes, directions, phases and outcomes.

use serde::{Deserialize, Serialize};
use std::fmt;

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
    /// The batches are done; the changed instances are watched for
    /// [`post_watch`](crate::RolloutConfig::post_watch) before the rollout ends. A failure of
    /// one of them now still rolls back.
    Watching,
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
            RolloutPhase::Watching => f.write_str("watching"),
            RolloutPhase::Failing => f.write_str("failing"),
            RolloutPhase::RollingBack => f.write_str("rolling back"),
            RolloutPhase::Finished(o) => write!(f, "finished ({o})"),
        }
    }
}
