//! The machine's state, its construction (new, replay) and what it tells about itself.

use crate::config::{Limits, RolloutConfig};
use crate::deadline::after;
use crate::instance::{Instance, InstanceState};
use degrade_core::ConfigError;
use std::collections::HashSet;
use tokio::time::Instant;

use super::ops::{Op, OpKind, Slot};
use super::protocol::Record;
use super::types::{Direction, Mode, RolloutOutcome, RolloutPhase, StepKind};
use StepKind as K;

/// The rollout planner. See the [module documentation](crate::plan).
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
    pub(super) cfg: RolloutConfig,
    pub(super) limits: Limits,
    pub(super) target: String,
    pub(super) slots: Vec<Slot>,
    pub(super) batches: Vec<Vec<(usize, Mode)>>,
    pub(super) rollback: Vec<Vec<(usize, OpKind, String)>>,
    pub(super) phase: RolloutPhase,
    pub(super) direction: Direction,
    pub(super) next_batch: usize,
    pub(super) current_batch: Option<usize>,
    pub(super) ops: Vec<Op>,
    pub(super) failure: Option<String>,
    pub(super) paused: bool,
    pub(super) abort: bool,
    pub(super) analysis_pending: bool,
    pub(super) analysed: HashSet<usize>,
    pub(super) last_progress: Option<Instant>,
    /// How the rollout ends if the post-rollout watch sees no failure (set by `WatchStarted`).
    pub(super) watch_outcome: Option<RolloutOutcome>,
    /// When the post-rollout watch began and when it may end (soft: after a restart the
    /// watch runs its full length again).
    pub(super) watch_since: Option<Instant>,
    pub(super) watch_until: Option<Instant>,
    /// `watch_until` has passed (the watch waits for checks only).
    pub(super) watch_elapsed: bool,
    /// An abort came during the post-rollout watch: it ends at once, as aborted.
    pub(super) watch_cut: bool,
    /// The process watches must be asked for again (after a replay: a new controller).
    pub(super) rewatch: bool,
    /// The number the next health check is given: a reply names the check it answers.
    pub(super) next_check: u64,
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
                    watch: None,
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
            watch_outcome: None,
            watch_since: None,
            watch_until: None,
            watch_elapsed: false,
            watch_cut: false,
            rewatch: false,
            next_check: 0,
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
            op.check = None;
            op.next_probe = None;
            op.bake_until = None;
            op.ok_streak = 0;
            op.fail_streak = 0;
        }
        for w in self.slots.iter_mut().filter_map(|s| s.watch.as_mut()) {
            *w = super::ops::Watch::new(w.target, 0, None);
        }
        self.watch_since = None;
        self.watch_until = None;
        self.watch_elapsed = false;
        self.rewatch = true;
        self.analysis_pending = false;
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

    /// When the planner next needs a [`RolloutEvent::Tick`](super::RolloutEvent::Tick), if it waits on time.
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
        if self.watching() {
            for w in self.slots.iter().filter_map(|s| s.watch.as_ref()) {
                if !w.busy {
                    at(w.next_probe);
                }
            }
        }
        if self.phase == RolloutPhase::Watching && !self.watch_elapsed {
            at(self.watch_until);
        }
        wake
    }

    /// The upgraded instances under watch: health-checked every `health_interval` from the
    /// end of their bake until the rollout ends (after [`post_watch`](RolloutConfig::post_watch))
    /// or rolls back. See the [module documentation](crate::plan).
    ///
    /// ```
    /// # use degrade_rollout::{Instance, RolloutConfig, plan::RolloutMachine};
    /// # let i = vec![Instance::new("a", "127.0.0.1:1".parse().unwrap(), "v1")];
    /// assert!(RolloutMachine::new(RolloutConfig::default(), i, "v2").unwrap().watched().is_empty());
    /// ```
    pub fn watched(&self) -> Vec<Instance> {
        self.slots
            .iter()
            .filter_map(|s| s.get(s.watch.as_ref()?.target).cloned())
            .collect()
    }
}
