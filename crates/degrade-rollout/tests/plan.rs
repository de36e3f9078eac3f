//! The planner step by step: batch shapes, the order of a rollback, replay.

use degrade_rollout::plan::{
    Direction, Record, RolloutAction, RolloutEvent, RolloutMachine, RolloutStep, StepKind, Target,
};
use degrade_rollout::{Amount, Instance, RolloutConfig, RolloutOutcome};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

fn fleet(n: usize) -> Vec<Instance> {
    (0..n)
        .map(|k| {
            Instance::new(
                format!("i{k}"),
                format!("127.0.0.1:{}", 7000 + k).parse().unwrap(),
                "v1",
            )
        })
        .collect()
}

fn cfg(surge: u32, unavailable: u32) -> RolloutConfig {
    RolloutConfig {
        max_surge: Amount::Count(surge),
        max_unavailable: Amount::Count(unavailable),
        min_ready: Duration::ZERO,
        healthy_threshold: 1,
        failure_threshold: 1,
        ..Default::default()
    }
}

fn drives(actions: &[RolloutAction]) -> Vec<(String, RolloutStep)> {
    actions
        .iter()
        .filter_map(|a| match a {
            RolloutAction::Drive { step, instance, .. } => Some((instance.id.clone(), *step)),
            _ => None,
        })
        .collect()
}

/// Completes every driver step and answers every health check with `healthy(id, version)`
/// until nothing is left to do; returns the records.
fn settle(
    p: &mut RolloutMachine,
    actions: Vec<RolloutAction>,
    healthy: impl Fn(&str, &str) -> bool,
) -> Vec<Record> {
    let mut actions: VecDeque<RolloutAction> = actions.into();
    let now = Instant::now();
    let mut records = Vec::new();
    let mut port = 9000;
    while let Some(a) = actions.pop_front() {
        let next = match a {
            RolloutAction::Record(r) => {
                records.push(r);
                continue;
            }
            RolloutAction::Drive { step, instance, .. } => {
                let address = (step.kind == StepKind::Allocate).then(|| {
                    port += 1;
                    format!("127.0.0.1:{port}").parse().unwrap()
                });
                p.handle(
                    RolloutEvent::StepOk {
                        id: instance.id,
                        step,
                        address,
                    },
                    now,
                )
            }
            RolloutAction::Health {
                id,
                target,
                instance,
            } => {
                let ok = healthy(&instance.id, &instance.version);
                p.handle(
                    RolloutEvent::Health {
                        id,
                        target,
                        healthy: ok,
                    },
                    now,
                )
            }
            _ => continue,
        };
        actions.extend(next);
    }
    records
}

#[test]
fn a_batch_mixes_surge_and_in_place_up_to_the_limits() {
    let mut p = RolloutMachine::new(cfg(1, 1), fleet(4), "v2").unwrap();
    assert_eq!(p.batch_count(), 2);
    let first = drives(&p.handle(RolloutEvent::Tick, Instant::now()));
    assert_eq!(
        first,
        vec![
            (
                "i0".to_owned(),
                RolloutStep {
                    kind: StepKind::Allocate,
                    target: Target::Next
                }
            ),
            (
                "i1".to_owned(),
                RolloutStep {
                    kind: StepKind::Drain,
                    target: Target::Current
                }
            ),
        ]
    );
}

#[test]
fn rollback_undoes_the_failed_batch_first_then_the_others_in_reverse() {
    let mut p = RolloutMachine::new(cfg(0, 1), fleet(3), "v2").unwrap();
    let start = p.handle(RolloutEvent::Tick, Instant::now());
    let records = settle(&mut p, start, |id, v| !(id == "i2" && v == "v2"));
    assert_eq!(
        p.phase(),
        degrade_rollout::plan::RolloutPhase::Finished(RolloutOutcome::RolledBack)
    );
    let batches: Vec<(Direction, usize)> = records
        .iter()
        .filter_map(|r| match r {
            Record::BatchStarted { direction, batch } => Some((*direction, *batch)),
            _ => None,
        })
        .collect();
    assert_eq!(
        batches,
        vec![
            (Direction::Upgrade, 0),
            (Direction::Upgrade, 1),
            (Direction::Upgrade, 2),
            (Direction::Rollback, 0),
            (Direction::Rollback, 1),
            (Direction::Rollback, 2),
        ]
    );
    // The instances rolled back in the order i2, i1, i0.
    let order: Vec<&str> = records
        .iter()
        .skip_while(|r| !matches!(r, Record::RollbackStarted))
        .filter_map(|r| match r {
            Record::StepDone { id, step, .. } if step.kind == StepKind::Install => {
                Some(id.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(order, ["i2", "i1", "i0"]);
    assert!(p.instances().iter().all(|i| i.version == "v1"));
}

#[test]
fn a_replayed_planner_does_not_repeat_completed_steps() {
    let mut p = RolloutMachine::new(cfg(0, 1), fleet(2), "v2").unwrap();
    let now = Instant::now();
    let mut records = Vec::new();
    // Run batch 0 to its end and batch 1 up to its install.
    let mut actions: VecDeque<RolloutAction> = p.handle(RolloutEvent::Tick, now).into();
    let mut installs = 0;
    while let Some(a) = actions.pop_front() {
        let next = match a {
            RolloutAction::Record(r) => {
                records.push(r);
                continue;
            }
            RolloutAction::Drive { step, instance, .. } => {
                if step.kind == StepKind::Install {
                    installs += 1;
                    if instance.id == "i1" {
                        break; // the controller dies while installing i1
                    }
                }
                p.handle(
                    RolloutEvent::StepOk {
                        id: instance.id,
                        step,
                        address: None,
                    },
                    now,
                )
            }
            RolloutAction::Health { id, target, .. } => p.handle(
                RolloutEvent::Health {
                    id,
                    target,
                    healthy: true,
                },
                now,
            ),
            _ => continue,
        };
        actions.extend(next);
    }
    assert_eq!(installs, 2);
    let mut q = RolloutMachine::replay(cfg(0, 1), fleet(2), "v2", &records)
        .unwrap_or_else(|e| panic!("{e}: {records:#?}"));
    assert_eq!(q.current_batch(), Some(1));
    let resumed = drives(&q.handle(RolloutEvent::Tick, now));
    // Only i1's unfinished install is issued again; i0 is not touched.
    assert_eq!(
        resumed,
        vec![(
            "i1".to_owned(),
            RolloutStep {
                kind: StepKind::Install,
                target: Target::Current
            }
        )]
    );
}
