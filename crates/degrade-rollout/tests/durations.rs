//! Configured durations as large as `Duration::MAX` (a bake, a deadline or an interval of
//! "forever") never panic on instant arithmetic: they mean "never" wherever they are used.

mod support;

use degrade_rollout::discover::Pool;
use degrade_rollout::driver::CommandSpec;
use degrade_rollout::plan::{Record, RolloutAction, RolloutEvent, RolloutMachine, RolloutPhase};
use degrade_rollout::{
    AnalysisConfig, Driver, Instance, ProcessDriver, RolloutConfig, RolloutController,
};
use std::net::SocketAddr;
use std::time::Duration;
use support::Recorder;

const FOREVER: Duration = Duration::MAX;

fn forever() -> RolloutConfig {
    RolloutConfig {
        min_ready: FOREVER,
        progress_deadline: FOREVER,
        health_interval: FOREVER,
        healthy_threshold: 1,
        startup_grace: FOREVER,
        drain_timeout: FOREVER,
        health_timeout: FOREVER,
        post_watch: FOREVER,
        analysis: Some(AnalysisConfig {
            duration: FOREVER,
            interval: FOREVER,
            warmup: FOREVER,
            ..AnalysisConfig::default()
        }),
        ..RolloutConfig::default()
    }
}

fn fleet(n: usize) -> Vec<Instance> {
    (0..n)
        .map(|k| {
            let addr: SocketAddr = format!("127.0.0.1:{}", 7100 + k).parse().unwrap();
            Instance::new(format!("i{k}"), addr, "v1")
        })
        .collect()
}

#[test]
fn a_planner_with_duration_max_settings_never_panics_and_never_times_out() {
    let mut p = RolloutMachine::new(forever(), fleet(2), "v2").unwrap();
    let start = tokio::time::Instant::now();
    let mut now = start;
    let mut pending = p.handle(RolloutEvent::Tick, now);
    let year = Duration::from_secs(365 * 24 * 3600);
    for round in 0..200 {
        let mut next = Vec::new();
        for a in pending.drain(..) {
            match a {
                RolloutAction::Record(Record::Failed { reason, .. }) => panic!("failed: {reason}"),
                RolloutAction::Drive { step, instance, .. } => next.push(RolloutEvent::StepOk {
                    id: instance.id,
                    step,
                    address: None,
                }),
                RolloutAction::Health {
                    id, target, check, ..
                } => next.push(RolloutEvent::Health {
                    id,
                    target,
                    // Unhealthy now and then: within the (endless) startup grace.
                    healthy: round % 3 != 0,
                    check,
                }),
                _ => {}
            }
        }
        let _ = p.next_wake();
        // Decades pass between events: no deadline, bake or grace comes to an end.
        now += year * 10;
        for e in next {
            pending.extend(p.handle(e, now));
        }
        pending.extend(p.handle(RolloutEvent::Tick, now));
    }
    assert_eq!(p.phase(), RolloutPhase::Upgrading);
    assert_eq!(
        p.current_batch(),
        Some(0),
        "the first instance bakes forever"
    );
    assert!(p.next_wake().is_some_and(|t| t > now));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_with_duration_max_settings_never_panics() {
    // Everything "forever": the first instance passes its health gate and bakes for ever.
    let pool = Pool::new(|i: &Instance| i.address);
    for i in fleet(2) {
        pool.insert(&i);
    }
    let rollout = RolloutController::builder(Recorder::default(), pool.clone())
        .config(forever())
        .instances(fleet(2))
        .target("v2")
        .build()
        .unwrap();
    let handle = rollout.handle();
    let run = tokio::spawn(rollout.run());
    let mut status = handle.subscribe();
    tokio::time::timeout(Duration::from_secs(30), async {
        while !status
            .borrow_and_update()
            .instances
            .iter()
            .any(|i| i.version == "v2")
        {
            status.changed().await.unwrap();
        }
    })
    .await
    .expect("the first install happens");
    assert!(!run.is_finished(), "baking for ever, not failed");
    run.abort();
    assert!(run.await.unwrap_err().is_cancelled(), "no panic inside");

    // A short bake, then an analysis that looks "every forever" for "forever": it waits.
    let cfg = RolloutConfig {
        min_ready: Duration::from_millis(1),
        health_interval: Duration::from_millis(1),
        ..forever()
    };
    let rollout = RolloutController::builder(Recorder::default(), pool)
        .config(cfg)
        .instances(fleet(2))
        .target("v2")
        .build()
        .unwrap();
    let handle = rollout.handle();
    let run = tokio::spawn(rollout.run());
    let mut status = handle.subscribe();
    tokio::time::timeout(Duration::from_secs(30), async {
        while status.borrow_and_update().steps < 4 {
            status.changed().await.unwrap();
        }
    })
    .await
    .expect("the first batch's steps run");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!run.is_finished());
    run.abort();
    assert!(run.await.unwrap_err().is_cancelled());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_and_health_waits_of_duration_max_end_when_their_condition_does() {
    let pool = Pool::new(|i: &Instance| i.address);
    let a = Instance::new("a", "127.0.0.1:1".parse().unwrap(), "v1");
    pool.insert(&a);
    assert!(pool.drain(&a.key(), FOREVER).await.clean());

    // A real process: wait_healthy(forever) returns once it answers.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let server = CommandSpec::new(env!("CARGO_BIN_EXE_degrade-rollout-testserver")).args([
        "--port",
        "{port}",
        "--version",
        "v1",
    ]);
    let driver = ProcessDriver::builder()
        .version("v1", server)
        .stop_grace(FOREVER)
        .build()
        .unwrap();
    let i = Instance::new("p", format!("127.0.0.1:{port}").parse().unwrap(), "v1");
    driver.start(&i).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), driver.wait_healthy(&i, FOREVER))
        .await
        .expect("healthy in time")
        .unwrap();
    driver.stop(&i).await.unwrap();
}

#[test]
fn a_post_watch_of_duration_max_watches_for_ever_without_panicking() {
    let cfg = RolloutConfig {
        min_ready: Duration::ZERO,
        health_interval: Duration::from_secs(1),
        healthy_threshold: 1,
        post_watch: FOREVER,
        ..RolloutConfig::default()
    };
    let mut p = RolloutMachine::new(cfg, fleet(2), "v2").unwrap();
    let mut now = tokio::time::Instant::now();
    let mut pending = p.handle(RolloutEvent::Tick, now);
    let year = Duration::from_secs(365 * 24 * 3600);
    for _ in 0..200 {
        let mut next = Vec::new();
        for a in pending.drain(..) {
            match a {
                RolloutAction::Record(Record::Failed { reason, .. }) => panic!("failed: {reason}"),
                RolloutAction::Drive { step, instance, .. } => next.push(RolloutEvent::StepOk {
                    id: instance.id,
                    step,
                    address: None,
                }),
                RolloutAction::Health {
                    id, target, check, ..
                } => next.push(RolloutEvent::Health {
                    id,
                    target,
                    healthy: true,
                    check,
                }),
                _ => {}
            }
        }
        for e in next {
            pending.extend(p.handle(e, now));
        }
        if pending.is_empty() {
            // Decades pass between checks: the watch never ends.
            now += year * 10;
            pending.extend(p.handle(RolloutEvent::Tick, now));
        }
    }
    assert_eq!(p.phase(), RolloutPhase::Watching);
    assert!(p.instances().iter().all(|i| i.version == "v2"));
    assert!(p.next_wake().is_some());
}
