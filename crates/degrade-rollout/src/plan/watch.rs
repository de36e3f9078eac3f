//! The watch of what the rollout changed: health checks of every upgraded instance from the end
//! of its bake, its process watched for an exit from its start, until the rollout ends — and
//! for `post_watch` after the last batch (the [`Watching`](RolloutPhase::Watching) phase). A
//! failure of a watched instance fails the rollout like any other, and the rollback returns
//! every changed instance to its previous version.

use crate::deadline::after;
use crate::instance::InstanceState;
use std::net::SocketAddr;
use tokio::time::Instant;

use super::RolloutMachine;
use super::protocol::RolloutAction;
use super::types::{Direction, RolloutOutcome, RolloutPhase, StepKind, Target};

impl RolloutMachine {
    /// Whether the upgraded instances are under watch now: while upgrading and during the
    /// post-rollout watch (a failing or rolling-back rollout gates each instance it restores
    /// on its own).
    pub(super) fn watching(&self) -> bool {
        self.direction == Direction::Upgrade
            && matches!(self.phase, RolloutPhase::Upgrading | RolloutPhase::Watching)
    }

    /// Whether the process of `slot`'s `target` instance is watched for an exit: this rollout
    /// started it on the target version, and is not stopping it.
    pub(super) fn exit_watched(&self, slot: usize, target: Target) -> bool {
        let s = &self.slots[slot];
        let starting = self.ops.iter().any(|op| {
            op.slot == slot
                && op
                    .step()
                    .is_some_and(|st| st.kind == StepKind::Start && st.target == target)
        });
        self.watching()
            && !starting
            && s.previous != self.target
            && s.get(target).is_some_and(|i| {
                i.version == self.target
                    && matches!(
                        i.state,
                        InstanceState::Starting | InstanceState::Ready | InstanceState::Running
                    )
            })
    }

    /// Asks for the process watches a new controller needs (after a replay) and for the
    /// health checks that are due.
    pub(super) fn drive_watch(&mut self, now: Instant, out: &mut Vec<RolloutAction>) {
        let rewatch = std::mem::take(&mut self.rewatch);
        if !self.watching() {
            return;
        }
        if rewatch {
            for slot in 0..self.slots.len() {
                for t in [Target::Current, Target::Next] {
                    if self.exit_watched(slot, t)
                        && let Some(i) = self.slots[slot].get(t)
                    {
                        out.push(RolloutAction::Watch {
                            instance: i.clone(),
                        });
                    }
                }
            }
        }
        for s in &mut self.slots {
            let Some(w) = s.watch.as_mut() else { continue };
            if w.busy || w.next_probe.is_some_and(|t| now < t) {
                continue;
            }
            let instance = match w.target {
                Target::Current => &s.current,
                Target::Next => match &s.next {
                    Some(n) => n,
                    None => continue,
                },
            };
            let check = self.next_check;
            self.next_check += 1;
            w.busy = true;
            w.check = Some(check);
            w.issued = Some(now);
            out.push(RolloutAction::Health {
                id: s.current.id.clone(),
                target: w.target,
                instance: instance.clone(),
                check,
            });
        }
    }

    /// A health check of a watched instance finished.
    pub(super) fn watch_health(
        &mut self,
        id: &str,
        target: Target,
        healthy: bool,
        check: u64,
        now: Instant,
        out: &mut Vec<RolloutAction>,
    ) {
        let interval = self.cfg.health_interval;
        let watching = self.watching();
        let Some(w) = self
            .slots
            .iter_mut()
            .filter(|s| s.current.id == id)
            .find_map(|s| s.watch.as_mut())
            .filter(|w| w.busy && w.target == target && w.check == Some(check))
        else {
            return;
        };
        w.busy = false;
        w.check = None;
        w.next_probe = Some(after(now, interval));
        if !watching {
            return;
        }
        if healthy {
            w.fail_streak = 0;
            w.passed = w.issued;
            return;
        }
        w.fail_streak = w.fail_streak.saturating_add(1);
        let n = w.fail_streak;
        if n >= self.cfg.failure_threshold {
            let reason =
                format!("`{id}` ({target}) failed {n} consecutive health checks after its upgrade");
            self.fail(Some(id.to_owned()), Some(target), reason, now, out);
        }
    }

    /// A watched process exited: the rollout fails (stale reports, of an instance the rollout
    /// has since stopped or is restoring, are ignored).
    pub(super) fn exited(
        &mut self,
        id: String,
        address: SocketAddr,
        error: &str,
        now: Instant,
        out: &mut Vec<RolloutAction>,
    ) {
        let Some(slot) = self.slots.iter().position(|s| s.current.id == id) else {
            return;
        };
        let Some(target) = [Target::Current, Target::Next].into_iter().find(|&t| {
            self.slots[slot]
                .get(t)
                .is_some_and(|i| i.address == address)
        }) else {
            return;
        };
        if !self.exit_watched(slot, target) {
            return;
        }
        let version = self.target.clone();
        let reason = format!("`{id}` ({address}, {version}) exited after its start: {error}");
        self.fail(Some(id), Some(target), reason, now, out);
    }

    /// The outcome, once the post-rollout watch may end: `post_watch` has passed since it
    /// began and every watched instance passed a check asked for since then and has failed
    /// none after it. An instance failing its checks keeps the watch open until it recovers or
    /// reaches `failure_threshold` (which fails the rollout), so the rollout never completes
    /// with an instance down. An abort during the watch ends it at once, as aborted.
    pub(super) fn watch_over(&mut self, now: Instant) -> Option<RolloutOutcome> {
        if self.watch_cut {
            return Some(RolloutOutcome::Aborted);
        }
        let since = *self.watch_since.get_or_insert(now);
        let until = *self
            .watch_until
            .get_or_insert_with(|| after(now, self.cfg.post_watch));
        if now < until {
            return None;
        }
        // From now on only checks end the watch: no more waking up for its end.
        self.watch_elapsed = true;
        let verified = self
            .slots
            .iter()
            .filter_map(|s| s.watch.as_ref())
            .all(|w| w.fail_streak == 0 && w.passed.is_some_and(|p| p >= since));
        verified.then(|| self.watch_outcome.unwrap_or(RolloutOutcome::Completed))
    }
}
