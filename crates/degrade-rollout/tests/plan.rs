//! The planner step by step: batch shapes, the order of a rollback, replay.

use degrade_rollout::plan::{
    Direction, Record, RolloutAction, RolloutEvent, RolloutMachine, RolloutPhase, RolloutStep,
    StepKind, Target,
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
    settle_at(p, actions, Instant::now(), healthy)
}

/// [`settle`] at `now`.
fn settle_at(
    p: &mut RolloutMachine,
    actions: Vec<RolloutAction>,
    now: Instant,
    healthy: impl Fn(&str, &str) -> bool,
) -> Vec<Record> {
    let mut actions: VecDeque<RolloutAction> = actions.into();
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
                check,
            } => {
                let ok = healthy(&instance.id, &instance.version);
                p.handle(
                    RolloutEvent::Health {
                        id,
                        target,
                        healthy: ok,
                        check,
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
        RolloutPhase::Finished(RolloutOutcome::RolledBack)
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
            RolloutAction::Health {
                id, target, check, ..
            } => p.handle(
                RolloutEvent::Health {
                    id,
                    target,
                    healthy: true,
                    check,
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

fn watched_cfg() -> RolloutConfig {
    RolloutConfig {
        health_interval: Duration::from_secs(1),
        post_watch: Duration::from_secs(10),
        failure_threshold: 2,
        ..cfg(0, 1)
    }
}

/// Runs the upgrade batches of `p` to their end at `now` (every check healthy).
fn upgrade(p: &mut RolloutMachine, now: Instant) -> Vec<Record> {
    let start = p.handle(RolloutEvent::Tick, now);
    settle_at(p, start, now, |_, _| true)
}

/// Lets `secs` seconds pass one at a time, answering every check with `healthy`.
fn pass(
    p: &mut RolloutMachine,
    from: Instant,
    secs: u64,
    healthy: impl Fn(&str, &str) -> bool + Copy,
) -> Vec<Record> {
    let mut records = Vec::new();
    for s in 1..=secs {
        let now = from + Duration::from_secs(s);
        let tick = p.handle(RolloutEvent::Tick, now);
        records.extend(settle_at(p, tick, now, healthy));
    }
    records
}

#[test]
fn a_rollout_completes_only_after_its_post_rollout_watch() {
    let t0 = Instant::now();
    let mut p = RolloutMachine::new(watched_cfg(), fleet(3), "v2").unwrap();
    let records = upgrade(&mut p, t0);
    assert!(records.contains(&Record::WatchStarted {
        outcome: RolloutOutcome::Completed
    }));
    assert_eq!(p.phase(), RolloutPhase::Watching);
    assert_eq!(p.watched().len(), 3);
    // Nine seconds of healthy checks: still watching.
    pass(&mut p, t0, 9, |_, _| true);
    assert_eq!(p.phase(), RolloutPhase::Watching);
    // The tenth: completed.
    pass(&mut p, t0 + Duration::from_secs(9), 1, |_, _| true);
    assert_eq!(p.phase(), RolloutPhase::Finished(RolloutOutcome::Completed));
}

#[test]
fn a_watched_instance_failing_its_checks_after_the_rollout_rolls_every_instance_back() {
    let t0 = Instant::now();
    let mut p = RolloutMachine::new(watched_cfg(), fleet(3), "v2").unwrap();
    upgrade(&mut p, t0);
    // i1 goes unhealthy 3 s into the watch: two failed checks roll everything back.
    pass(&mut p, t0, 3, |_, _| true);
    let records = pass(&mut p, t0 + Duration::from_secs(3), 3, |id, v| {
        !(id == "i1" && v == "v2")
    });
    let failed = records.iter().find_map(|r| match r {
        Record::Failed { id, reason, .. } => Some((id.clone(), reason.clone())),
        _ => None,
    });
    let (id, reason) = failed.expect("the rollout failed");
    assert_eq!(id.as_deref(), Some("i1"));
    assert!(reason.contains("after its upgrade"), "{reason}");
    assert_eq!(
        p.phase(),
        RolloutPhase::Finished(RolloutOutcome::RolledBack)
    );
    assert!(p.instances().iter().all(|i| i.version == "v1"));
}

#[test]
fn an_exit_of_a_watched_instance_rolls_back_at_once_and_a_stale_one_is_ignored() {
    let t0 = Instant::now();
    let mut p = RolloutMachine::new(watched_cfg(), fleet(2), "v2").unwrap();
    let start = p.handle(RolloutEvent::Tick, t0);
    // Every upgraded instance's process is watched from its start.
    let watches = |actions: &[RolloutAction]| -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                RolloutAction::Watch { instance } => Some(instance.id.clone()),
                _ => None,
            })
            .collect()
    };
    let mut seen = Vec::new();
    let mut actions: VecDeque<RolloutAction> = start.into();
    while let Some(a) = actions.pop_front() {
        seen.extend(watches(std::slice::from_ref(&a)));
        let next = match a {
            RolloutAction::Drive { step, instance, .. } => p.handle(
                RolloutEvent::StepOk {
                    id: instance.id,
                    step,
                    address: None,
                },
                t0,
            ),
            RolloutAction::Health {
                id, target, check, ..
            } => p.handle(
                RolloutEvent::Health {
                    id,
                    target,
                    healthy: true,
                    check,
                },
                t0,
            ),
            _ => continue,
        };
        actions.extend(next);
    }
    assert_eq!(seen, ["i0", "i1"]);
    assert_eq!(p.phase(), RolloutPhase::Watching);
    let i0 = p.instances()[0].clone();
    let out = p.handle(
        RolloutEvent::Exited {
            id: "i0".into(),
            address: i0.address,
            error: "signal: 9 (SIGKILL)".into(),
        },
        t0 + Duration::from_secs(1),
    );
    assert!(out.iter().any(|a| matches!(
        a,
        RolloutAction::Record(Record::Failed { id: Some(id), target: Some(Target::Current), .. }) if id == "i0"
    )));
    // The rollback stops i0 on its way back: that exit is the rollback's own, ignored.
    let records = settle_at(&mut p, out, t0 + Duration::from_secs(1), |_, _| true);
    assert!(
        !records
            .iter()
            .skip(1)
            .any(|r| matches!(r, Record::Failed { .. }))
    );
    assert_eq!(
        p.phase(),
        RolloutPhase::Finished(RolloutOutcome::RolledBack)
    );
    let again = p.handle(
        RolloutEvent::Exited {
            id: "i0".into(),
            address: i0.address,
            error: "stopped".into(),
        },
        t0 + Duration::from_secs(2),
    );
    assert!(again.is_empty());
    assert!(p.instances().iter().all(|i| i.version == "v1"));
}

#[test]
fn a_resumed_machine_keeps_watching_what_it_upgraded() {
    let t0 = Instant::now();
    let mut p = RolloutMachine::new(watched_cfg(), fleet(3), "v2").unwrap();
    let records = upgrade(&mut p, t0);
    let mut q = RolloutMachine::replay(watched_cfg(), fleet(3), "v2", &records).unwrap();
    assert_eq!(q.phase(), RolloutPhase::Watching);
    let t1 = t0 + Duration::from_secs(4);
    let out = q.handle(RolloutEvent::Tick, t1);
    let watched: Vec<String> = out
        .iter()
        .filter_map(|a| match a {
            RolloutAction::Watch { instance } => Some(instance.id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        watched,
        ["i0", "i1", "i2"],
        "process watches asked for again"
    );
    let checks = out
        .iter()
        .filter(|a| matches!(a, RolloutAction::Health { .. }))
        .count();
    assert_eq!(checks, 3, "health checks at once");
    // The watch runs its full length again from the restart.
    settle_at(&mut q, out, t1, |_, _| true);
    pass(&mut q, t1, 9, |_, _| true);
    assert_eq!(q.phase(), RolloutPhase::Watching);
    pass(&mut q, t1 + Duration::from_secs(9), 1, |_, _| true);
    assert_eq!(q.phase(), RolloutPhase::Finished(RolloutOutcome::Completed));
}

#[test]
fn an_earlier_batch_failing_during_a_later_one_is_rolled_back_right_after_the_current_batch() {
    let t0 = Instant::now();
    let cfg = RolloutConfig {
        failure_threshold: 1,
        min_ready: Duration::from_secs(3),
        ..watched_cfg()
    };
    let mut p = RolloutMachine::new(cfg, fleet(4), "v2").unwrap();
    // Batches 0 and 1 done; i0 (batch 0) dies while batch 2 (i2) bakes.
    let mut actions: VecDeque<RolloutAction> = p.handle(RolloutEvent::Tick, t0).into();
    let mut records = Vec::new();
    let mut now = t0;
    while !matches!(p.phase(), RolloutPhase::Finished(_)) {
        let Some(a) = actions.pop_front() else {
            now += Duration::from_secs(1);
            actions.extend(p.handle(RolloutEvent::Tick, now));
            continue;
        };
        let next = match a {
            RolloutAction::Record(r) => {
                records.push(r);
                continue;
            }
            RolloutAction::Drive { step, instance, .. } => p.handle(
                RolloutEvent::StepOk {
                    id: instance.id,
                    step,
                    address: None,
                },
                now,
            ),
            RolloutAction::Health {
                id,
                target,
                instance,
                check,
            } => {
                let sick = id == "i0" && p.current_batch() == Some(2);
                p.handle(
                    RolloutEvent::Health {
                        id,
                        target,
                        healthy: !sick || instance.version == "v1",
                        check,
                    },
                    now,
                )
            }
            _ => continue,
        };
        actions.extend(next);
    }
    records.extend(actions.into_iter().filter_map(|a| match a {
        RolloutAction::Record(r) => Some(r),
        _ => None,
    }));
    assert_eq!(
        p.phase(),
        RolloutPhase::Finished(RolloutOutcome::RolledBack)
    );
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
    // i2 (the batch in progress), then i0 (down), then i1.
    assert_eq!(order, ["i2", "i0", "i1"]);
    assert!(p.instances().iter().all(|i| i.version == "v1"));
}
