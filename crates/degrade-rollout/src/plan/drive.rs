//! Actions out: starting batches, stepping ops, health checks, analysis and the end.

use crate::deadline::{after, elapsed};
use crate::instance::InstanceState;
use tokio::time::Instant;

use super::RolloutMachine;
use super::ops::Op;
use super::protocol::{Record, RolloutAction};
use super::types::{Direction, RolloutOutcome, RolloutPhase, StepKind};
use StepKind as K;

impl RolloutMachine {
    /// Everything the machine does after an event: batches and their steps, then the watch of
    /// the upgraded instances.
    pub(super) fn drive(&mut self, now: Instant, out: &mut Vec<RolloutAction>) {
        self.drive_batches(now, out);
        self.drive_watch(now, out);
    }

    fn drive_batches(&mut self, now: Instant, out: &mut Vec<RolloutAction>) {
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
                RolloutPhase::Watching => {
                    if let Some(outcome) = self.watch_over(now) {
                        self.record(Record::Finished { outcome }, now, out);
                        continue;
                    }
                    return;
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
                    let r = Record::Failed {
                        id: None,
                        target: None,
                        reason,
                    };
                    self.record(r, now, out);
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
            } else if self.abort && self.direction == Direction::Upgrade {
                // An abort stops an upgrade; a rollback (the safe direction) runs to its end.
                Some(RolloutOutcome::Aborted)
            } else {
                None
            };
            if let Some(outcome) = outcome {
                // The instances this rollout changed are watched a while longer before it
                // ends: an upgrade is not complete while one of them may be down.
                let r = if self.direction == Direction::Upgrade
                    && self.slots.iter().any(|s| s.watch.is_some())
                {
                    Record::WatchStarted { outcome }
                } else {
                    Record::Finished { outcome }
                };
                self.record(r, now, out);
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

    pub(super) fn needs_analysis(&self) -> bool {
        self.direction == Direction::Upgrade
            && self.cfg.analysis.is_some()
            && self
                .current_batch
                .is_some_and(|b| !self.analysed.contains(&b))
            && self.slots.iter().any(|s| s.current.version != self.target)
    }

    pub(super) fn analyze_action(&self) -> RolloutAction {
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

    pub(super) fn step_ops(&mut self, now: Instant, out: &mut Vec<RolloutAction>) {
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
                        let check = self.next_check;
                        self.next_check += 1;
                        op.busy = true;
                        op.check = Some(check);
                        out.push(RolloutAction::Health {
                            id,
                            target: step.target,
                            instance: instance.clone(),
                            check,
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
