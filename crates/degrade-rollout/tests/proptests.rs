//! Property tests of the planner, driven by a simulated driver: it never takes more instances
//! out of service than allowed, never runs more than desired + surge, never installs the
//! target on an instance twice, always terminates, and ends in a state matching its outcome.
//! A planner rebuilt from the records at any point carries on to the same end.

use degrade_rollout::plan::{Record, RolloutAction, RolloutEvent, RolloutMachine, StepKind};
use degrade_rollout::{Amount, Instance, RolloutConfig, RolloutOutcome};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone)]
struct Case {
    n: usize,
    already: usize,
    surge: Amount,
    unavailable: Amount,
    min_ready: u64,
    healthy: u32,
    failures: u32,
    bad_release: bool,
    analysis_fails: bool,
    script: Vec<u8>,
    replay_at: Option<usize>,
}

fn amount() -> impl Strategy<Value = Amount> {
    prop_oneof![
        (0u32..4).prop_map(Amount::Count),
        (0u32..=100).prop_map(Amount::Percent)
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        1usize..8,
        0usize..3,
        amount(),
        amount(),
        0u64..4,
        1u32..4,
        1u32..4,
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..600),
        prop::option::of(0usize..300),
    )
        .prop_filter("surge and unavailable both zero is a config error", |c| {
            !(matches!(c.2, Amount::Count(0) | Amount::Percent(0))
                && matches!(c.3, Amount::Count(0) | Amount::Percent(0)))
        })
        .prop_map(|c| Case {
            n: c.0,
            already: c.1,
            surge: c.2,
            unavailable: c.3,
            min_ready: c.4,
            healthy: c.5,
            failures: c.6,
            bad_release: c.7,
            analysis_fails: c.8,
            script: c.9,
            replay_at: c.10,
        })
}

struct Sim {
    planner: RolloutMachine,
    cfg: RolloutConfig,
    instances: Vec<Instance>,
    records: Vec<Record>,
    outstanding: Vec<RolloutAction>,
    now: Instant,
    installs: HashMap<String, u32>,
    next_port: u16,
    finished: Option<RolloutOutcome>,
}

impl Sim {
    fn feed(&mut self, e: RolloutEvent) {
        let actions = self.planner.handle(e, self.now);
        for a in actions {
            match a {
                RolloutAction::Record(r) => self.records.push(r),
                RolloutAction::Finished(o) => self.finished = Some(o),
                RolloutAction::Serve { .. } => {}
                other => self.outstanding.push(other),
            }
        }
    }

    fn check(&self, limits: degrade_rollout::Limits) {
        let n = self.instances.len();
        assert!(
            self.planner.unavailable() <= limits.unavailable,
            "unavailable {} > {}",
            self.planner.unavailable(),
            limits.unavailable
        );
        assert!(self.planner.allocated() <= n + limits.surge);
        for (id, c) in &self.installs {
            assert!(*c <= 1, "target installed {c} times on {id}");
        }
    }

    fn complete(&mut self, k: usize, ok: bool, healthy: bool, bad: bool, analysis_ok: bool) {
        let a = self.outstanding.swap_remove(k);
        let ev = match a {
            RolloutAction::Drive {
                step,
                instance,
                version,
            } => {
                if ok {
                    if step.kind == StepKind::Install && version == self.planner.target() {
                        // Completed installs: one re-issued after a restart is not a second upgrade.
                        *self.installs.entry(instance.id.clone()).or_default() += 1;
                    }
                    let address = (step.kind == StepKind::Allocate).then(|| {
                        self.next_port += 1;
                        format!("127.0.0.1:{}", self.next_port).parse().unwrap()
                    });
                    RolloutEvent::StepOk {
                        id: instance.id,
                        step,
                        address,
                    }
                } else {
                    RolloutEvent::StepErr {
                        id: instance.id,
                        step,
                        error: "boom".into(),
                    }
                }
            }
            RolloutAction::Health {
                id,
                target,
                instance,
            } => {
                let sick = bad && instance.version == self.planner.target();
                RolloutEvent::Health {
                    id,
                    target,
                    healthy: healthy && !sick,
                }
            }
            RolloutAction::Analyze { batch, .. } => RolloutEvent::Analysis {
                batch,
                pass: analysis_ok,
                reason: "judged".into(),
            },
            other => panic!("unexpected outstanding action {other:?}"),
        };
        self.feed(ev);
    }
}

fn run(c: Case) {
    let mut instances = Vec::new();
    for i in 0..c.n {
        let v = if i < c.already.min(c.n - 1) {
            "v2"
        } else {
            "v1"
        };
        instances.push(Instance::new(
            format!("i{i}"),
            format!("127.0.0.1:{}", 1000 + i).parse().unwrap(),
            v,
        ));
    }
    let cfg = RolloutConfig {
        max_surge: c.surge,
        max_unavailable: c.unavailable,
        min_ready: Duration::from_secs(c.min_ready),
        progress_deadline: Duration::from_secs(120),
        health_interval: Duration::from_secs(1),
        healthy_threshold: c.healthy,
        failure_threshold: c.failures,
        startup_grace: Duration::from_secs(c.min_ready / 2),
        analysis: c.analysis_fails.then(Default::default),
        ..Default::default()
    };
    let planner = RolloutMachine::new(cfg.clone(), instances.clone(), "v2").expect("valid");
    let limits = planner.limits();
    let mut sim = Sim {
        planner,
        cfg,
        instances: instances.clone(),
        records: Vec::new(),
        outstanding: Vec::new(),
        now: Instant::now(),
        installs: HashMap::new(),
        next_port: 20_000,
        finished: None,
    };
    sim.feed(RolloutEvent::Tick);
    sim.check(limits);
    let mut script = c.script.iter().copied();
    let mut steps = 0usize;
    while sim.finished.is_none() {
        steps += 1;
        assert!(steps < 20_000, "did not terminate");
        if c.replay_at == Some(steps) {
            // A controller restart: rebuild from the records, forget the running steps.
            sim.planner =
                RolloutMachine::replay(sim.cfg.clone(), instances.clone(), "v2", &sim.records)
                    .expect("replay");
            sim.outstanding.clear();
            sim.feed(RolloutEvent::Tick);
            sim.check(limits);
            continue;
        }
        let b = script.next();
        match b {
            Some(b) if b % 16 == 0 => sim.feed(RolloutEvent::Pause),
            Some(b) if b % 16 == 1 => sim.feed(RolloutEvent::Resume),
            Some(2) => sim.feed(RolloutEvent::Abort),
            _ if !sim.outstanding.is_empty() => {
                let b = b.unwrap_or(3);
                let k = b as usize % sim.outstanding.len();
                let ok = b % 29 != 5;
                let healthy = b % 13 != 7;
                sim.complete(k, ok, healthy, c.bad_release, b % 5 != 0);
            }
            _ => {
                if sim.planner.paused() {
                    sim.feed(RolloutEvent::Resume);
                } else if let Some(t) = sim.planner.next_wake() {
                    // With nothing running, the planner waits only for a health check or the
                    // end of a bake, never idly for its progress deadline.
                    assert!(
                        t <= sim.now + Duration::from_secs(c.min_ready.max(1)),
                        "idle until {:?} from now",
                        t - sim.now
                    );
                    sim.now = sim.now.max(t);
                    sim.feed(RolloutEvent::Tick);
                } else {
                    panic!(
                        "stuck: nothing outstanding, nothing to wait for ({:?})",
                        sim.planner.phase()
                    );
                }
            }
        }
        sim.check(limits);
    }
    let outcome = sim.finished.unwrap();
    // Every record the planner wrote is one a replay accepts, up to the end.
    let replayed = RolloutMachine::replay(sim.cfg.clone(), instances.clone(), "v2", &sim.records)
        .expect("the planner's own records replay");
    assert_eq!(
        replayed.phase(),
        degrade_rollout::plan::RolloutPhase::Finished(outcome)
    );
    let end = sim.planner.instances();
    let versions: Vec<&str> = end.iter().map(|i| i.version.as_str()).collect();
    match outcome {
        RolloutOutcome::Completed => {
            assert!(versions.iter().all(|v| *v == "v2"), "{versions:?}");
            assert_eq!(sim.planner.instances().len(), c.n);
        }
        RolloutOutcome::RolledBack => {
            let before: Vec<&str> = instances.iter().map(|i| i.version.as_str()).collect();
            assert_eq!(versions, before);
        }
        RolloutOutcome::Aborted | RolloutOutcome::RollbackFailed => {}
    }
    if c.bad_release && c.script.is_empty() && c.replay_at.is_none() {
        assert_ne!(outcome, RolloutOutcome::Completed);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/proptests.txt"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn planner_keeps_its_bounds_and_terminates(c in case()) {
        run(c);
    }
}
