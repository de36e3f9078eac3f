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
//! bake timer, the post-rollout watch's timer) starts over.
//!
//! # Batches and modes
//!
//! Instances not yet on the target version are cut into batches of `surge + unavailable`
//! (resolved as Kubernetes does, see [`RolloutConfig::limits`](crate::RolloutConfig::limits)). In each batch the first
//! `surge` instances are replaced by a surge (a new instance on a spare address is started,
//! health-gated and baked before the old one is drained and stopped: no capacity lost) and the
//! others are upgraded in place (drain, stop, install, start, health gate, bake: out of service
//! meanwhile). A batch finishes when every instance in it is done, then (optionally) passes
//! analysis.
//!
//! # The watch
//!
//! From its start on the target version, the process of every changed instance is watched
//! ([`RolloutAction::Watch`]; the controller reports [`RolloutEvent::Exited`]), and from the
//! end of its bake its health is checked every `health_interval` ([`RolloutAction::Health`]),
//! until the rollout ends. After the last batch (or an abort after a batch) the machine
//! records [`Record::WatchStarted`] and is [`RolloutPhase::Watching`]: it completes once
//! `post_watch` has passed and every watched instance has passed a check asked for since the
//! watch began, with no failure after it — so an instance failing its checks keeps the watch
//! open until it recovers or fails the rollout. An abort during the watch ends it at once, as
//! aborted (never as completed).
//!
//! # Failure and rollback
//!
//! A failed driver step, an instance reaching `failure_threshold` failed checks (in its gate,
//! its bake or the watch after it), a watched process exiting, a missed progress deadline or
//! a failed analysis fails the rollout: the planner lets the steps already running finish,
//! then rolls back — the failed batch first, then the completed batches holding an instance
//! that went down (it is out of service already: restoring it first takes no more capacity
//! down), then the other completed batches in reverse order, with the same batch sizes and
//! modes, every changed instance returning to the version it had before. A failure during the
//! rollback stops everything (reported as [`RolloutOutcome::RollbackFailed`]): taking more
//! instances down would break the availability bound.

mod apply;
mod drive;
mod handle;
mod machine;
mod ops;
mod protocol;
mod types;
mod watch;

pub use machine::RolloutMachine;
pub use protocol::{Record, RolloutAction, RolloutEvent};
pub use types::{Direction, Mode, RolloutOutcome, RolloutPhase, RolloutStep, StepKind, Target};
