//! The planner's behaviours the mutation run (`cargo xtask mutants --scope planner`) showed no
//! pure test pinned: what a step does the moment it is asked for, the numbering of health
//! checks, the startup grace, when the machine wakes, what the watch checks and when it ends,
//! which journals a replay refuses, and what a rollback restores. Every test drives the pure
//! machine with made-up instants: no runtime, no clock, no process.

use degrade_rollout::plan::{
    Direction, Record, RolloutAction, RolloutEvent, RolloutMachine, RolloutPhase, RolloutStep,
    StepKind, Target,
};
use degrade_rollout::{
    Amount, AnalysisConfig, Instance, InstanceState, RolloutConfig, RolloutOutcome,
};
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

fn step(kind: StepKind, target: Target) -> RolloutStep {
    RolloutStep { kind, target }
}

fn done(id: &str, kind: StepKind, target: Target) -> Record {
    Record::StepDone {
        id: id.to_owned(),
        step: step(kind, target),
        address: None,
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// What [`run`] saw.
#[derive(Default)]
struct Run {
    records: Vec<Record>,
    /// Every action, in order (the held ones included).
    actions: Vec<RolloutAction>,
    /// The actions `hold` kept back, unanswered.
    held: Vec<RolloutAction>,
}

impl Run {
    fn drives(&self) -> Vec<(String, RolloutStep)> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                RolloutAction::Drive { step, instance, .. } => Some((instance.id.clone(), *step)),
                _ => None,
            })
            .collect()
    }
    fn checks(&self) -> Vec<u64> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                RolloutAction::Health { check, .. } => Some(*check),
                _ => None,
            })
            .collect()
    }
}

/// Answers every driver step with success and every health check with `healthy(id)` at `now`,
/// except the actions `hold` keeps back, until nothing is left to do.
fn run(
    p: &mut RolloutMachine,
    actions: Vec<RolloutAction>,
    now: Instant,
    healthy: impl Fn(&str) -> bool,
    hold: impl Fn(&RolloutAction) -> bool,
) -> Run {
    let mut queue: VecDeque<RolloutAction> = actions.into();
    let mut seen = Run::default();
    let mut port = 9000;
    while let Some(a) = queue.pop_front() {
        seen.actions.push(a.clone());
        if hold(&a) {
            seen.held.push(a);
            continue;
        }
        let next = match a {
            RolloutAction::Record(r) => {
                seen.records.push(r);
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
                let ok = healthy(&instance.id);
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
        queue.extend(next);
    }
    seen
}

fn tick(p: &mut RolloutMachine, now: Instant) -> Run {
    let actions = p.handle(RolloutEvent::Tick, now);
    run(p, actions, now, |_| true, |_| false)
}

fn is_drive(a: &RolloutAction, id: &str, kind: StepKind) -> bool {
    matches!(a, RolloutAction::Drive { step, instance, .. } if instance.id == id && step.kind == kind)
}

fn state_of(p: &RolloutMachine, id: &str) -> InstanceState {
    p.instances().iter().find(|i| i.id == id).unwrap().state
}

fn ids(instances: &[Instance]) -> Vec<&str> {
    instances.iter().map(|i| i.id.as_str()).collect()
}

// The vocabulary's names (the journal's readers and the logs show them).

#[test]
fn every_plan_word_displays_as_its_name() {
    assert_eq!(Target::Current.to_string(), "current");
    assert_eq!(Target::Next.to_string(), "next");
    assert_eq!(StepKind::Allocate.to_string(), "allocate");
    assert_eq!(StepKind::Swap.to_string(), "swap");
    assert_eq!(
        step(StepKind::Drain, Target::Next).to_string(),
        "drain next"
    );
    assert_eq!(Direction::Upgrade.to_string(), "upgrade");
    assert_eq!(Direction::Rollback.to_string(), "rollback");
    assert_eq!(
        RolloutOutcome::RollbackFailed.to_string(),
        "rollback failed"
    );
    assert_eq!(RolloutPhase::RollingBack.to_string(), "rolling back");
    assert_eq!(
        RolloutPhase::Finished(RolloutOutcome::Completed).to_string(),
        "finished (completed)"
    );
}

#[test]
fn the_machine_reports_its_target_configuration_and_failure() {
    let config = RolloutConfig {
        healthy_threshold: 7,
        ..cfg(0, 1)
    };
    let mut p = RolloutMachine::new(config.clone(), fleet(1), "v2").unwrap();
    assert_eq!(p.target(), "v2");
    assert_eq!(p.config(), &config);
    assert_eq!(p.failure(), None);
    let t0 = Instant::now();
    let drain = p.handle(RolloutEvent::Tick, t0);
    assert!(drain.iter().any(|a| is_drive(a, "i0", StepKind::Drain)));
    p.handle(
        RolloutEvent::StepErr {
            id: "i0".into(),
            step: step(StepKind::Drain, Target::Current),
            error: "boom".into(),
        },
        t0,
    );
    assert_eq!(p.failure(), Some("drain current of `i0` failed: boom"));
}

// A step's effects the moment it is asked for (the balancer and the counts follow them).

#[test]
fn an_instance_leaves_service_when_its_drain_is_asked_for_and_shows_each_step_in_flight() {
    let t0 = Instant::now();
    let mut p = RolloutMachine::new(cfg(0, 1), fleet(2), "v2").unwrap();
    assert_eq!(ids(&p.serving()), ["i0", "i1"]);
    assert_eq!(p.unavailable(), 0);
    let actions = p.handle(RolloutEvent::Tick, t0);
    assert!(actions.iter().any(|a| is_drive(a, "i0", StepKind::Drain)));
    // Out of the balancer before the driver even starts draining it.
    assert_eq!(ids(&p.serving()), ["i1"]);
    assert_eq!(p.unavailable(), 1);
    assert_eq!(p.allocated(), 2);
    assert_eq!(state_of(&p, "i0"), InstanceState::Draining);
    let ok = |kind| RolloutEvent::StepOk {
        id: "i0".into(),
        step: step(kind, Target::Current),
        address: None,
    };
    p.handle(ok(StepKind::Drain), t0);
    p.handle(ok(StepKind::Stop), t0);
    assert_eq!(state_of(&p, "i0"), InstanceState::Installing);
    p.handle(ok(StepKind::Install), t0);
    assert_eq!(state_of(&p, "i0"), InstanceState::Starting);
    assert_eq!(p.unavailable(), 1);
}

#[test]
fn a_surge_replacement_counts_among_the_allocated_instances_and_the_swap_stays_in_the_planner() {
    let t0 = Instant::now();
    let mut p = RolloutMachine::new(cfg(1, 0), fleet(2), "v2").unwrap();
    let first = p.handle(RolloutEvent::Tick, t0);
    let allocate = run(
        &mut p,
        first,
        t0,
        |_| true,
        |a| !is_drive(a, "i0", StepKind::Allocate) && matches!(a, RolloutAction::Drive { .. }),
    );
    assert_eq!(allocate.drives().len(), 2, "{:?}", allocate.drives());
    assert_eq!(p.allocated(), 3);
    let rest = run(&mut p, allocate.held, t0, |_| true, |_| false);
    let all = tick(&mut p, t0);
    assert_eq!(p.phase(), RolloutPhase::Watching);
    assert_eq!(p.allocated(), 2);
    let drives: Vec<_> = rest.drives().into_iter().chain(all.drives()).collect();
    assert!(!drives.is_empty());
    // The swap is the planner's own bookkeeping: no driver ever sees it.
    assert!(
        drives.iter().all(|(_, s)| s.kind != StepKind::Swap),
        "{drives:?}"
    );
    let swaps = rest
        .records
        .iter()
        .chain(all.records.iter())
        .filter(|r| matches!(r, Record::StepDone { step, .. } if step.kind == StepKind::Swap))
        .count();
    assert_eq!(swaps, 2);
}

#[test]
fn every_health_check_gets_a_number_of_its_own() {
    let t0 = Instant::now();
    let mut p = RolloutMachine::new(cfg(0, 2), fleet(2), "v2").unwrap();
    let seen = tick(&mut p, t0);
    let mut checks = seen.checks();
    assert_eq!(checks.len(), 2, "the two gates");
    checks.sort_unstable();
    checks.dedup();
    assert_eq!(checks.len(), 2, "{:?}", seen.checks());
}

#[test]
fn a_failed_gate_check_within_the_startup_grace_does_not_count() {
    let t0 = Instant::now();
    let config = RolloutConfig {
        startup_grace: secs(30),
        ..cfg(0, 1)
    };
    let mut p = RolloutMachine::new(config, fleet(1), "v2").unwrap();
    let first = p.handle(RolloutEvent::Tick, t0);
    run(&mut p, first, t0, |_| false, |_| false);
    assert_eq!(p.phase(), RolloutPhase::Upgrading, "{:?}", p.failure());
    // After the grace, one failure (the threshold) fails it.
    let late = t0 + secs(31);
    let again = p.handle(RolloutEvent::Tick, late);
    run(&mut p, again, late, |_| false, |_| false);
    assert_ne!(p.phase(), RolloutPhase::Upgrading);
    assert!(p.failure().unwrap().contains("failed 1 consecutive"));
}

// Control events.

#[test]
fn pause_is_recorded_once_and_holds_the_next_batch_until_resume() {
    let t0 = Instant::now();
    let mut p = RolloutMachine::new(cfg(0, 1), fleet(2), "v2").unwrap();
    assert_eq!(
        p.handle(RolloutEvent::Pause, t0),
        vec![RolloutAction::Record(Record::Paused)]
    );
    assert!(p.paused());
    assert!(p.handle(RolloutEvent::Pause, t0).is_empty());
    assert_eq!(p.current_batch(), None);
    let resumed = p.handle(RolloutEvent::Resume, t0);
    assert_eq!(resumed[0], RolloutAction::Record(Record::Resumed));
    assert_eq!(p.current_batch(), Some(0));
}

#[test]
fn an_abort_is_recorded_once() {
    let t0 = Instant::now();
    let mut p = RolloutMachine::new(cfg(0, 1), fleet(2), "v2").unwrap();
    p.handle(RolloutEvent::Tick, t0);
    let abort = p.handle(RolloutEvent::Abort, t0);
    assert_eq!(abort, vec![RolloutAction::Record(Record::AbortRequested)]);
    assert!(p.handle(RolloutEvent::Abort, t0).is_empty());
}

#[test]
fn an_abort_during_a_batch_still_watches_what_the_batch_upgraded() {
    let t0 = Instant::now();
    let config = RolloutConfig {
        post_watch: secs(10),
        ..cfg(0, 1)
    };
    let mut p = RolloutMachine::new(config, fleet(2), "v2").unwrap();
    let first = p.handle(RolloutEvent::Tick, t0);
    p.handle(RolloutEvent::Abort, t0);
    let seen = run(&mut p, first, t0, |_| true, |_| false);
    assert!(seen.records.contains(&Record::WatchStarted {
        outcome: RolloutOutcome::Aborted
    }));
    assert_eq!(p.phase(), RolloutPhase::Watching);
    assert_eq!(ids(&p.watched()), ["i0"]);
}

#[test]
fn an_abort_during_the_post_rollout_watch_ends_it_at_once_as_aborted() {
    let t0 = Instant::now();
    let config = RolloutConfig {
        post_watch: secs(10),
        ..cfg(0, 1)
    };
    let mut p = RolloutMachine::new(config, fleet(1), "v2").unwrap();
    tick(&mut p, t0);
    assert_eq!(p.phase(), RolloutPhase::Watching);
    p.handle(RolloutEvent::Abort, t0 + secs(1));
    assert_eq!(p.phase(), RolloutPhase::Finished(RolloutOutcome::Aborted));
}

#[test]
fn a_rollout_with_nothing_to_upgrade_finishes_at_once_without_a_watch() {
    let t0 = Instant::now();
    let mut p = RolloutMachine::new(cfg(0, 1), fleet(2), "v1").unwrap();
    assert_eq!(p.batch_count(), 0);
    let seen = tick(&mut p, t0);
    assert_eq!(
        seen.records,
        vec![Record::Finished {
            outcome: RolloutOutcome::Completed
        }]
    );
    assert_eq!(p.phase(), RolloutPhase::Finished(RolloutOutcome::Completed));
}

// Analysis of a batch against the instances not yet upgraded.

fn analyses(actions: &[RolloutAction]) -> Vec<(usize, Vec<&str>, Vec<&str>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            RolloutAction::Analyze {
                batch,
                upgraded,
                baseline,
            } => Some((*batch, ids(upgraded), ids(baseline))),
            _ => None,
        })
        .collect()
}

#[test]
fn each_batch_but_the_last_is_analysed_against_the_instances_not_yet_upgraded() {
    let t0 = Instant::now();
    let config = RolloutConfig {
        analysis: Some(AnalysisConfig::default()),
        ..cfg(0, 1)
    };
    let mut p = RolloutMachine::new(config, fleet(3), "v2").unwrap();
    let first = tick(&mut p, t0);
    assert_eq!(
        analyses(&first.actions),
        [(0, vec!["i0"], vec!["i1", "i2"])]
    );
    let passed = |batch| RolloutEvent::Analysis {
        batch,
        pass: true,
        reason: String::new(),
    };
    let next = p.handle(passed(0), t0);
    let second = run(&mut p, next, t0, |_| true, |_| false);
    assert_eq!(
        analyses(&second.actions),
        [(1, vec!["i0", "i1"], vec!["i2"])]
    );
    let next = p.handle(passed(1), t0);
    // The last batch leaves no baseline: no analysis, the watch begins.
    let last = run(&mut p, next, t0, |_| true, |_| false);
    assert!(analyses(&last.actions).is_empty());
    assert_eq!(p.phase(), RolloutPhase::Watching);
}

// When the machine wants a tick.

#[test]
fn a_failing_rollout_waiting_for_a_running_step_wakes_for_nothing() {
    let t0 = Instant::now();
    let config = RolloutConfig {
        min_ready: secs(10),
        ..cfg(0, 3)
    };
    let mut p = RolloutMachine::new(config, fleet(3), "v2").unwrap();
    let first = p.handle(RolloutEvent::Tick, t0);
    // i0 goes to its bake; i1's drain keeps running; i2's drain is held, then fails.
    let seen = run(
        &mut p,
        first,
        t0,
        |_| true,
        |a| is_drive(a, "i1", StepKind::Drain) || is_drive(a, "i2", StepKind::Drain),
    );
    assert_eq!(seen.held.len(), 2);
    assert!(
        p.next_wake().is_some(),
        "the bake and the progress deadline"
    );
    p.handle(
        RolloutEvent::StepErr {
            id: "i2".into(),
            step: step(StepKind::Drain, Target::Current),
            error: "boom".into(),
        },
        t0,
    );
    assert_eq!(p.phase(), RolloutPhase::Failing);
    // Only the drain's reply moves it on: no timer of the bake or of the progress deadline.
    assert_eq!(p.next_wake(), None);
}

#[test]
fn while_a_gate_check_is_in_flight_the_machine_wakes_only_for_the_progress_deadline() {
    let t0 = Instant::now();
    let config = RolloutConfig {
        healthy_threshold: 2,
        ..cfg(0, 1)
    };
    let mut p = RolloutMachine::new(config, fleet(1), "v2").unwrap();
    let first = p.handle(RolloutEvent::Tick, t0);
    run(&mut p, first, t0, |_| true, |_| false);
    // One pass of two: the next check is due a health interval later.
    assert_eq!(p.next_wake(), Some(t0 + secs(1)));
    let t1 = t0 + secs(1);
    let second = p.handle(RolloutEvent::Tick, t1);
    assert!(
        second
            .iter()
            .any(|a| matches!(a, RolloutAction::Health { .. }))
    );
    // The check runs: its reply wakes the machine; the deadline counts from the last step.
    assert_eq!(p.next_wake(), Some(t0 + secs(600)));
}

// The watch of what was upgraded.

#[test]
fn an_instance_started_on_the_target_version_is_watched_from_its_start() {
    let t0 = Instant::now();
    let mut p = RolloutMachine::new(cfg(0, 2), fleet(2), "v2").unwrap();
    let first = p.handle(RolloutEvent::Tick, t0);
    let seen = run(
        &mut p,
        first,
        t0,
        |_| true,
        |a| matches!(a, RolloutAction::Health { .. }),
    );
    let watched: Vec<_> = seen
        .actions
        .iter()
        .filter_map(|a| match a {
            RolloutAction::Watch { instance } => Some((instance.id.as_str(), &*instance.version)),
            _ => None,
        })
        .collect();
    assert_eq!(watched, [("i0", "v2"), ("i1", "v2")]);
}

#[test]
fn only_the_instances_the_rollout_started_on_the_target_version_are_watched_for_an_exit() {
    let t0 = Instant::now();
    // Resumed after i0's upgrade, paused (i1 keeps serving on v1): the new controller is
    // asked to watch i0's process only.
    let mut records = vec![started(0)];
    records.extend(in_place("i0"));
    records.push(Record::Paused);
    let mut p = RolloutMachine::replay(cfg(0, 1), fleet(2), "v2", &records).unwrap();
    let resumed = p.handle(RolloutEvent::Tick, t0);
    let watched: Vec<_> = resumed
        .iter()
        .filter_map(|a| match a {
            RolloutAction::Watch { instance } => Some(instance.id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(watched, ["i0"]);
    // An exit of i1, still on v1 and not started by the rollout, is not the rollout's failure.
    let i1 = p.instances()[1].clone();
    assert_eq!(i1.version, "v1");
    p.handle(
        RolloutEvent::Exited {
            id: "i1".into(),
            address: i1.address,
            error: "killed".into(),
        },
        t0,
    );
    assert_eq!(p.failure(), None);
    assert_ne!(p.phase(), RolloutPhase::Failing);
}

#[test]
fn a_failing_rollout_stops_checking_the_instances_it_watched() {
    let t0 = Instant::now();
    let config = RolloutConfig {
        health_interval: secs(1),
        ..cfg(0, 1)
    };
    let mut p = RolloutMachine::new(config, fleet(2), "v2").unwrap();
    let first = p.handle(RolloutEvent::Tick, t0);
    // Batch 0 (i0) completes; i1's stop keeps running.
    run(
        &mut p,
        first,
        t0,
        |_| true,
        |a| is_drive(a, "i1", StepKind::Stop),
    );
    assert_eq!(ids(&p.watched()), ["i0"]);
    let i0 = p.instances()[0].clone();
    p.handle(
        RolloutEvent::Exited {
            id: "i0".into(),
            address: i0.address,
            error: "killed".into(),
        },
        t0,
    );
    assert_eq!(p.phase(), RolloutPhase::Failing);
    let later = p.handle(RolloutEvent::Tick, t0 + secs(5));
    assert!(
        !later
            .iter()
            .any(|a| matches!(a, RolloutAction::Health { .. })),
        "{later:?}"
    );
}

#[test]
fn a_watch_reply_naming_another_check_is_ignored() {
    let t0 = Instant::now();
    let config = RolloutConfig {
        post_watch: secs(10),
        ..cfg(0, 1)
    };
    let mut p = RolloutMachine::new(config, fleet(1), "v2").unwrap();
    tick(&mut p, t0);
    assert_eq!(p.phase(), RolloutPhase::Watching);
    let t1 = t0 + secs(1);
    let checks = p.handle(RolloutEvent::Tick, t1);
    let Some(RolloutAction::Health { check, .. }) = checks
        .iter()
        .find(|a| matches!(a, RolloutAction::Health { .. }))
    else {
        panic!("no watch check: {checks:?}");
    };
    p.handle(
        RolloutEvent::Health {
            id: "i0".into(),
            target: Target::Current,
            healthy: false,
            check: check + 1000,
        },
        t1,
    );
    assert_eq!(p.phase(), RolloutPhase::Watching);
    assert_eq!(p.failure(), None);
}

#[test]
fn the_watch_stays_open_past_post_watch_while_an_instance_fails_its_checks() {
    let t0 = Instant::now();
    let config = RolloutConfig {
        health_interval: secs(1),
        post_watch: secs(10),
        failure_threshold: 3,
        ..cfg(0, 1)
    };
    let mut p = RolloutMachine::new(config, fleet(1), "v2").unwrap();
    tick(&mut p, t0);
    assert_eq!(p.phase(), RolloutPhase::Watching);
    for s in 1..=9 {
        let now = t0 + secs(s);
        let actions = p.handle(RolloutEvent::Tick, now);
        // Healthy until the last check before the end, which fails (one of three).
        run(&mut p, actions, now, |_| s < 9, |_| false);
    }
    assert_eq!(p.phase(), RolloutPhase::Watching);
    p.handle(RolloutEvent::Tick, t0 + secs(10));
    assert_eq!(p.phase(), RolloutPhase::Watching);
    assert_eq!(p.failure(), None);
}

// What a replay refuses (a journal this planner could not have written).

fn replay_error(config: RolloutConfig, n: usize, records: &[Record]) -> (String, String) {
    let err = RolloutMachine::replay(config, fleet(n), "v2", records).unwrap_err();
    (err.field().to_owned(), err.to_string())
}

fn started(batch: usize) -> Record {
    Record::BatchStarted {
        direction: Direction::Upgrade,
        batch,
    }
}

/// The steps of an in-place upgrade of `id`, in order.
fn in_place(id: &str) -> Vec<Record> {
    use StepKind::*;
    [Drain, Stop, Install, Start, Probe, Bake]
        .into_iter()
        .map(|k| done(id, k, Target::Current))
        .collect()
}

#[test]
fn replay_refuses_a_batch_started_while_the_previous_one_is_in_progress() {
    let (field, msg) = replay_error(cfg(0, 1), 2, &[started(0), started(1)]);
    assert_eq!(field, "records[1]");
    assert!(msg.contains("while batch 0 is in progress"), "{msg}");
}

#[test]
fn replay_refuses_a_step_out_of_order_or_of_an_instance_outside_the_batch() {
    let records = [started(0), done("i0", StepKind::Stop, Target::Current)];
    let (field, msg) = replay_error(cfg(0, 2), 2, &records);
    assert_eq!(field, "records[1]");
    assert!(msg.contains("not the next step"), "{msg}");
    let records = [started(0), done("i2", StepKind::Drain, Target::Current)];
    assert_eq!(replay_error(cfg(0, 2), 3, &records).0, "records[1]");
}

#[test]
fn replay_refuses_an_analysis_verdict_for_a_batch_still_running() {
    let records = [started(0), Record::AnalysisPassed { batch: 0 }];
    let (field, msg) = replay_error(cfg(0, 1), 1, &records);
    assert_eq!(field, "records[1]");
    assert!(msg.contains("not awaiting one"), "{msg}");
}

#[test]
fn replay_refuses_a_watch_started_while_its_batch_is_in_progress() {
    let mut records = vec![started(0)];
    records.extend(in_place("i0"));
    records.push(done("i1", StepKind::Drain, Target::Current));
    records.push(Record::WatchStarted {
        outcome: RolloutOutcome::Completed,
    });
    let (field, msg) = replay_error(cfg(0, 2), 2, &records);
    assert_eq!(field, "records[8]");
    assert!(msg.contains("watch started while upgrading"), "{msg}");
}

#[test]
fn replay_refuses_a_watch_started_after_the_rollout_failed() {
    let mut records = vec![started(0)];
    records.extend(in_place("i0"));
    records.push(Record::Failed {
        id: None,
        target: None,
        reason: "analysis".into(),
    });
    records.push(Record::WatchStarted {
        outcome: RolloutOutcome::Completed,
    });
    let (field, msg) = replay_error(cfg(0, 1), 1, &records);
    assert_eq!(field, "records[8]");
    assert!(msg.contains("watch started while failing"), "{msg}");
}

#[test]
fn a_journaled_failure_without_a_target_marks_the_instance_its_op_acted_on() {
    // One batch: i0 by surge (at its allocation), i1 in place (at its drain).
    let p = RolloutMachine::new(cfg(1, 1), fleet(2), "v2").unwrap();
    assert_eq!(p.batch_count(), 1);
    let records = [
        started(0),
        Record::Failed {
            id: Some("i1".into()),
            target: None,
            reason: "an older journal".into(),
        },
    ];
    let p = RolloutMachine::replay(cfg(1, 1), fleet(2), "v2", &records).unwrap();
    assert_eq!(state_of(&p, "i1"), InstanceState::Failed);
    assert_eq!(state_of(&p, "i0"), InstanceState::Running);
}

// What a rollback restores.

#[test]
fn a_rollback_restores_the_old_instance_once_its_replacement_has_baked() {
    // The surge's replacement baked; the old instance's drain is next and may have been in
    // flight when the controller stopped: the rollback drains and restarts the old instance
    // (it may be out of the balancer) before it throws the replacement away.
    use StepKind::*;
    let mut records = vec![
        started(0),
        Record::StepDone {
            id: "i0".into(),
            step: step(Allocate, Target::Next),
            address: Some("127.0.0.1:9001".parse().unwrap()),
        },
    ];
    for k in [Install, Start, Probe, Bake] {
        records.push(done("i0", k, Target::Next));
    }
    records.push(Record::Failed {
        id: None,
        target: None,
        reason: "progress deadline".into(),
    });
    let config = cfg(1, 0);
    let mut p = RolloutMachine::replay(config, fleet(1), "v2", &records).unwrap();
    assert_eq!(p.phase(), RolloutPhase::Failing);
    let t0 = Instant::now();
    let seen = tick(&mut p, t0);
    assert_eq!(
        seen.drives()[0],
        ("i0".to_owned(), step(Drain, Target::Current))
    );
    assert_eq!(
        p.phase(),
        RolloutPhase::Finished(RolloutOutcome::RolledBack)
    );
    assert_eq!(p.instances().len(), 1);
    assert_eq!(p.instances()[0].version, "v1");
}
