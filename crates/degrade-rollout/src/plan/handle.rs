//! Events in: control, driver results, health checks and analysis verdicts.

use crate::deadline::{after, elapsed};
use tokio::time::Instant;

use super::RolloutMachine;
use super::ops::s;
use super::protocol::{Record, RolloutAction, RolloutEvent};
use super::types::{RolloutPhase, RolloutStep, StepKind, Target};
use StepKind as K;

impl RolloutMachine {
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
                    self.fail(Some(id), Some(step.target), reason, now, &mut out);
                }
            }
            RolloutEvent::Health {
                id,
                target,
                healthy,
                check,
            } => self.health(id, target, healthy, check, now, &mut out),
            RolloutEvent::Exited { id, address, error } => {
                self.exited(id, address, &error, now, &mut out);
            }
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

    pub(super) fn busy_op(&self, id: &str, step: RolloutStep) -> Option<usize> {
        self.ops.iter().position(|op| {
            op.busy && self.slots[op.slot].current.id == id && op.step() == Some(step)
        })
    }

    pub(super) fn health(
        &mut self,
        id: String,
        target: Target,
        healthy: bool,
        check: u64,
        now: Instant,
        out: &mut Vec<RolloutAction>,
    ) {
        // The reply names its check: a check of an instance since replaced under the same id
        // and target (a watch check of a surge replacement that swapped in, answered while the
        // rollback's own replacement is gated) is not this op's gate.
        let Some(k) = self.ops.iter().position(|op| {
            op.busy
                && op.check == Some(check)
                && self.slots[op.slot].current.id == id
                && matches!(op.step(), Some(st) if matches!(st.kind, K::Probe | K::Bake) && st.target == target)
        }) else {
            // Not an op's gate or bake: perhaps the watch of an upgraded instance.
            self.watch_health(&id, target, healthy, check, now, out);
            return;
        };
        let op = &mut self.ops[k];
        op.busy = false;
        op.check = None;
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
                self.fail(Some(id), Some(target), reason, now, out);
            }
        }
    }

    pub(super) fn fail(
        &mut self,
        id: Option<String>,
        target: Option<Target>,
        reason: String,
        now: Instant,
        out: &mut Vec<RolloutAction>,
    ) {
        if self.phase == RolloutPhase::Failing {
            return;
        }
        self.record(Record::Failed { id, target, reason }, now, out);
    }

    pub(super) fn record(&mut self, r: Record, now: Instant, out: &mut Vec<RolloutAction>) {
        out.push(RolloutAction::Record(r.clone()));
        let started = match &r {
            Record::StepDone { id, step, .. } if step.kind == K::Start => {
                Some((id.clone(), step.target))
            }
            _ => None,
        };
        self.apply(r, Some(now));
        // An instance started on the target version: watch its process from now on.
        if let Some((id, target)) = started
            && let Some(slot) = self.slots.iter().position(|s| s.current.id == id)
            && self.exit_watched(slot, target)
            && let Some(instance) = self.slots[slot].get(target)
        {
            out.push(RolloutAction::Watch {
                instance: instance.clone(),
            });
        }
    }
}
