//! Records applied to the state (live and on replay), the check that a journaled record
//! fits, and the rollback plan.

use crate::deadline::after;
use crate::instance::{Instance, InstanceState};
use tokio::time::Instant;

use super::RolloutMachine;
use super::ops::{Op, OpKind, SURGE_RETIRE_FROM, Watch, steps};
use super::protocol::Record;
use super::types::{Direction, Mode, RolloutOutcome, RolloutPhase, StepKind, Target};
use StepKind as K;
use Target::{Current as C, Next as N};

impl RolloutMachine {
    /// Whether `r` is a record this planner could emit in its present state.
    pub(super) fn fits(&self, r: &Record) -> Result<(), String> {
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
            Record::WatchStarted { outcome } => {
                let batch_over = self.current_batch.is_none()
                    || (self.ops.iter().all(Op::done) && !self.needs_analysis());
                if self.phase != RolloutPhase::Upgrading
                    || self.direction != Direction::Upgrade
                    || !batch_over
                {
                    return Err(format!("watch started while {}", self.phase));
                }
                let ends = match outcome {
                    RolloutOutcome::Completed => self.next_batch >= self.batches.len(),
                    RolloutOutcome::Aborted => self.abort,
                    _ => false,
                };
                if !ends {
                    return Err(format!(
                        "watch before a {outcome} end, which the rollout has not reached"
                    ));
                }
                if self.slots.iter().all(|s| s.watch.is_none()) {
                    return Err("watch started with no upgraded instance to watch".to_owned());
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

    /// Applies a durable change. `now` is `None` when replaying.
    pub(super) fn apply(&mut self, r: Record, now: Option<Instant>) {
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
                // What the bake saw, carried into the watch that follows it.
                let (streak, next_probe) = (self.ops[k].fail_streak, self.ops[k].next_probe);
                let upgrading = self.direction == Direction::Upgrade;
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
                    K::Bake => {
                        // Baked on the target version: watched from now until the end.
                        if upgrading {
                            sl.watch = Some(Watch::new(step.target, streak, next_probe));
                        }
                    }
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
                        if let Some(w) = sl.watch.as_mut() {
                            // A check of the replacement in flight reports as `next`: drop it
                            // and check the new holder of the id afresh.
                            w.target = C;
                            w.busy = false;
                            w.check = None;
                            w.issued = None;
                        }
                    }
                }
                let op = &mut self.ops[k];
                op.pos += 1;
                op.busy = false;
                op.check = None;
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
            Record::Failed { id, target, reason } => {
                if let Some(id) = &id
                    && let Some(slot) = self.slots.iter().position(|s| &s.current.id == id)
                {
                    // The failing instance is the one named, or (journals of earlier
                    // versions) the one the op was acting on.
                    let target = target.unwrap_or_else(|| {
                        self.ops
                            .iter()
                            .find(|op| op.slot == slot)
                            .and_then(Op::step)
                            .map_or(C, |st| st.target)
                    });
                    self.slots[slot].set_state(target, InstanceState::Failed);
                }
                self.failure.get_or_insert(reason);
                self.phase = match self.phase {
                    RolloutPhase::Upgrading | RolloutPhase::Watching => RolloutPhase::Failing,
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
            Record::AbortRequested => {
                self.abort = true;
                if self.phase == RolloutPhase::Watching {
                    self.watch_cut = true;
                }
            }
            Record::WatchStarted { outcome } => {
                self.phase = RolloutPhase::Watching;
                self.watch_outcome = Some(outcome);
                self.watch_since = now;
                self.watch_until = now.map(|t| after(t, self.cfg.post_watch));
                self.ops.clear();
                self.current_batch = None;
            }
            Record::Finished { outcome } => {
                self.phase = RolloutPhase::Finished(outcome);
                self.ops.clear();
                self.current_batch = None;
            }
        }
    }

    pub(super) fn start_rollback(&mut self) {
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
        // The completed batches in reverse, those holding a failed instance first: it is out of
        // service already, so restoring it first takes no more capacity down.
        let mut order: Vec<usize> = (0..completed.min(self.batches.len())).rev().collect();
        order.sort_by_key(|&b| {
            !self.batches[b].iter().any(|&(slot, _)| {
                let s = &self.slots[slot];
                s.current.state == InstanceState::Failed
                    || s.next
                        .as_ref()
                        .is_some_and(|n| n.state == InstanceState::Failed)
            })
        });
        for b in order {
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
        // The watch ends: every changed instance goes back, each through its own gate.
        for s in &mut self.slots {
            s.watch = None;
        }
        self.watch_outcome = None;
        self.watch_since = None;
        self.watch_until = None;
        self.watch_elapsed = false;
        self.ops.clear();
        self.current_batch = None;
        self.next_batch = 0;
        self.direction = Direction::Rollback;
        self.phase = RolloutPhase::RollingBack;
        self.paused = false;
        self.abort = false;
    }
}
