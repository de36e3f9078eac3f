//! The steps of one instance's upgrade or rollback (an op) and the per-id slot it acts on.

use super::types::{RolloutStep, StepKind, Target};
use crate::instance::{Instance, InstanceState};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OpKind {
    InPlace,
    Surge,
    /// Throw away a surge replacement that never took over.
    Discard,
    /// Restart the current instance on its previous version, then throw the replacement away.
    Restore,
}

pub(super) const fn s(kind: StepKind, target: Target) -> RolloutStep {
    RolloutStep { kind, target }
}

use StepKind as K;
use Target::{Current as C, Next as N};

pub(super) fn steps(kind: OpKind) -> &'static [RolloutStep] {
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
pub(super) const SURGE_RETIRE_FROM: usize = 5;

#[derive(Debug, Clone)]
pub(super) struct Op {
    pub(super) slot: usize,
    pub(super) kind: OpKind,
    pub(super) to: String,
    pub(super) pos: usize,
    pub(super) busy: bool,
    /// The health check this op waits for (its number), while a gate or bake check runs.
    pub(super) check: Option<u64>,
    pub(super) ok_streak: u32,
    pub(super) fail_streak: u32,
    pub(super) next_probe: Option<Instant>,
    pub(super) bake_until: Option<Instant>,
    pub(super) probe_since: Option<Instant>,
}

impl Op {
    pub(super) fn new(slot: usize, kind: OpKind, to: String) -> Self {
        Self {
            slot,
            kind,
            to,
            pos: 0,
            busy: false,
            check: None,
            ok_streak: 0,
            fail_streak: 0,
            next_probe: None,
            bake_until: None,
            probe_since: None,
        }
    }
    pub(super) fn step(&self) -> Option<RolloutStep> {
        steps(self.kind).get(self.pos).copied()
    }
    pub(super) fn done(&self) -> bool {
        self.pos >= steps(self.kind).len()
    }
}

#[derive(Debug, Clone)]
pub(super) struct Slot {
    pub(super) current: Instance,
    pub(super) next: Option<Instance>,
    pub(super) previous: String,
    pub(super) current_serving: bool,
    pub(super) next_serving: bool,
    /// The health watch of the id's upgraded instance, from the end of its bake until the
    /// rollout ends or rolls back.
    pub(super) watch: Option<Watch>,
}

/// The health watch of one upgraded instance (all soft state but `target`, which follows from
/// the records).
#[derive(Debug, Clone)]
pub(super) struct Watch {
    /// Which of the id's instances is watched (the surge replacement until it takes over the id).
    pub(super) target: Target,
    /// A check is running.
    pub(super) busy: bool,
    /// The number of the running check.
    pub(super) check: Option<u64>,
    /// When the running check was asked for.
    pub(super) issued: Option<Instant>,
    /// When the next check is due (`None`: now).
    pub(super) next_probe: Option<Instant>,
    /// Consecutive failed checks.
    pub(super) fail_streak: u32,
    /// When the last passing check was asked for (checks asked for before the post-rollout
    /// watch began do not count towards its end).
    pub(super) passed: Option<Instant>,
}

impl Watch {
    pub(super) fn new(target: Target, fail_streak: u32, next_probe: Option<Instant>) -> Self {
        Self {
            target,
            busy: false,
            check: None,
            issued: None,
            next_probe,
            fail_streak,
            passed: None,
        }
    }
}

impl Slot {
    pub(super) fn get(&self, t: Target) -> Option<&Instance> {
        match t {
            C => Some(&self.current),
            N => self.next.as_ref(),
        }
    }
    pub(super) fn get_mut(&mut self, t: Target) -> Option<&mut Instance> {
        match t {
            C => Some(&mut self.current),
            N => self.next.as_mut(),
        }
    }
    pub(super) fn set_state(&mut self, t: Target, state: InstanceState) {
        if let Some(i) = self.get_mut(t) {
            i.state = state;
        }
    }
    pub(super) fn serving(&mut self, t: Target, on: bool) {
        match t {
            C => self.current_serving = on,
            N => self.next_serving = on,
        }
    }
    pub(super) fn available(&self) -> bool {
        let ok = |i: Option<&Instance>, serving| {
            serving && i.is_some_and(|i| i.state != InstanceState::Failed)
        };
        ok(Some(&self.current), self.current_serving) || ok(self.next.as_ref(), self.next_serving)
    }
}
