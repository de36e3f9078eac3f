//! The rollout state machine and its controller: steps, bake time, promotion, rollback,
//! the inconclusive pause, gates, hooks, and resuming from the file store.

use degrade_canary::{
    Canary, CanaryAction, CanaryConfig, CanaryController, CanaryEvent, CanaryMachine, CanaryPhase,
    CanaryStep, FileStore, Gate, MemoryStore, PauseReason, StateStore, Verdict,
};
use degrade_core::ManualClock;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::time::Instant;

const MIN: Duration = Duration::from_secs(60);

fn config() -> CanaryConfig {
    CanaryConfig {
        steps: vec![
            CanaryStep::new(10.0, MIN),
            CanaryStep::new(50.0, MIN),
            CanaryStep::new(100.0, MIN),
        ],
        inconclusive_limit: 3,
        ..CanaryConfig::default()
    }
}

#[test]
fn passes_after_bake_walk_every_step_then_promote() {
    let t0 = Instant::now();
    let mut r = CanaryMachine::new(config(), t0).unwrap();
    let pass = CanaryEvent::Analysis(Verdict::Pass);
    assert!(r.on(pass, t0 + MIN / 2).is_empty(), "bake time not over");
    assert_eq!(r.on(pass, t0 + MIN), [CanaryAction::SetWeight(5_000)]);
    assert!(
        r.on(pass, t0 + MIN + MIN / 2).is_empty(),
        "the next step bakes anew"
    );
    assert_eq!(r.on(pass, t0 + 2 * MIN), [CanaryAction::SetWeight(10_000)]);
    assert_eq!(r.on(pass, t0 + 3 * MIN), [CanaryAction::Promote]);
    assert_eq!(r.state().phase, CanaryPhase::Promoted);
    assert!(
        r.on(CanaryEvent::Analysis(Verdict::Fail), t0 + 4 * MIN)
            .is_empty(),
        "terminal"
    );
}

#[test]
fn a_fail_rolls_back_at_any_step_and_even_when_paused() {
    let t0 = Instant::now();
    let mut r = CanaryMachine::new(config(), t0).unwrap();
    r.on(CanaryEvent::Analysis(Verdict::Pass), t0 + MIN);
    r.on(CanaryEvent::Pause, t0 + MIN);
    assert_eq!(r.state().phase, CanaryPhase::Paused(PauseReason::Manual));
    assert!(
        r.on(CanaryEvent::Analysis(Verdict::Pass), t0 + 5 * MIN)
            .is_empty(),
        "paused holds"
    );
    assert_eq!(r.state().step, 1);
    assert_eq!(
        r.on(CanaryEvent::Analysis(Verdict::Fail), t0 + 5 * MIN),
        [CanaryAction::SetWeight(0), CanaryAction::RollBack]
    );
    assert_eq!(r.state().phase, CanaryPhase::RolledBack);
    assert_eq!(r.state().weight_bp, 0);
}

#[test]
fn too_many_inconclusive_looks_after_bake_pause_the_rollout() {
    let t0 = Instant::now();
    let mut r = CanaryMachine::new(config(), t0).unwrap();
    let inc = CanaryEvent::Analysis(Verdict::Inconclusive);
    // During the bake time inconclusive looks are expected and not counted.
    for i in 0..10 {
        r.on(inc, t0 + Duration::from_secs(i));
    }
    assert_eq!(r.state().phase, CanaryPhase::Progressing);
    r.on(inc, t0 + MIN);
    r.on(inc, t0 + MIN);
    // A pass resets the streak.
    r.on(CanaryEvent::Analysis(Verdict::Pass), t0 + MIN / 2);
    r.on(inc, t0 + MIN);
    r.on(inc, t0 + MIN);
    assert_eq!(r.state().phase, CanaryPhase::Progressing);
    r.on(inc, t0 + MIN);
    assert_eq!(
        r.state().phase,
        CanaryPhase::Paused(PauseReason::Inconclusive)
    );
    assert_eq!(r.state().weight_bp, 1_000, "a pause holds the weight");
    r.on(CanaryEvent::Resume, t0 + 2 * MIN);
    assert_eq!(r.state().phase, CanaryPhase::Progressing);
    assert!(
        r.on(CanaryEvent::Analysis(Verdict::Pass), t0 + 2 * MIN)
            .is_empty(),
        "bake restarts"
    );
    assert_eq!(
        r.on(CanaryEvent::Analysis(Verdict::Pass), t0 + 3 * MIN),
        [CanaryAction::SetWeight(5_000)]
    );
}

#[test]
fn gates_promote_and_abort_at_once() {
    let t0 = Instant::now();
    let mut r = CanaryMachine::new(config(), t0).unwrap();
    assert_eq!(r.on(CanaryEvent::Promote, t0), [CanaryAction::Promote]);
    assert_eq!(r.state().phase, CanaryPhase::Promoted);
    let mut r = CanaryMachine::new(config(), t0).unwrap();
    assert_eq!(
        r.on(CanaryEvent::Abort, t0),
        [CanaryAction::SetWeight(0), CanaryAction::RollBack]
    );
}

fn router() -> Canary<
    impl tower::Service<u8, Response = u8, Error = Infallible, Future: Send> + Clone,
    impl tower::Service<u8, Response = u8, Error = Infallible, Future: Send> + Clone,
> {
    Canary::builder().build(
        tower::service_fn(|x: u8| async move { Ok::<_, Infallible>(x) }),
        tower::service_fn(|x: u8| async move { Ok::<_, Infallible>(x) }),
    )
}

#[tokio::test]
async fn controller_moves_the_weight_runs_hooks_and_persists() {
    let router = router();
    let clock = ManualClock::new();
    let store = MemoryStore::default();
    let rollbacks = Arc::new(AtomicU32::new(0));
    let seen = rollbacks.clone();
    let mut c = CanaryController::builder(config(), router.handle())
        .clock(clock.clone())
        .store(store.clone())
        .on_rollback(move || {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        })
        .start()
        .unwrap();
    assert_eq!(router.weight().get(), 1_000);
    assert_eq!(store.load().unwrap().unwrap().step, 0);
    c.gate(Gate::Abort).await.unwrap();
    assert_eq!(router.weight().get(), 0);
    assert_eq!(rollbacks.load(Ordering::SeqCst), 1);
    assert_eq!(
        store.load().unwrap().unwrap().phase,
        CanaryPhase::RolledBack
    );
}

#[tokio::test]
async fn a_restarted_controller_resumes_from_the_file_store() {
    let path = std::env::temp_dir().join(format!("canary-resume-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let clock = ManualClock::new();
    let router = router();
    {
        let mut c = CanaryController::builder(config(), router.handle())
            .clock(clock.clone())
            .store(FileStore::new(&path))
            .start()
            .unwrap();
        c.gate(Gate::Pause).await.unwrap();
    }
    let saved = FileStore::new(&path).load().unwrap().unwrap();
    assert_eq!(saved.phase, CanaryPhase::Paused(PauseReason::Manual));
    assert_eq!(saved.weight_bp, 1_000);
    // A new process: the router starts at weight 0, the controller restores the step's weight.
    let fresh = self::router();
    let c = CanaryController::builder(config(), fresh.handle())
        .clock(clock)
        .store(FileStore::new(&path))
        .start()
        .unwrap();
    assert_eq!(c.state(), saved);
    assert_eq!(fresh.weight().get(), 1_000);
    // The file is replaced atomically: no temporary file is left behind.
    let name = path.file_name().unwrap().to_str().unwrap().to_owned();
    let temps: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with(&name) && f.ends_with(".tmp"))
        .collect();
    assert!(temps.is_empty(), "{temps:?}");
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_spawned_controller_takes_gates() {
    let router = router();
    let (task, gates) = CanaryController::builder(config(), router.handle())
        .start()
        .unwrap()
        .spawn();
    gates.pause();
    gates.resume();
    gates.promote();
    let end = task.await.unwrap().unwrap();
    assert_eq!(end.phase, CanaryPhase::Promoted);
}

#[tokio::test(start_paused = true)]
async fn a_spawned_controller_pauses_when_no_traffic_arrives() {
    // No requests at all: every analysis is inconclusive; after the bake time and
    // `inconclusive_limit` looks the rollout pauses (and then holds, never promotes).
    let router = router();
    let store = MemoryStore::default();
    let (task, gates) = CanaryController::builder(config(), router.handle())
        .store(store.clone())
        .start()
        .unwrap()
        .spawn();
    tokio::time::sleep(MIN + config().analysis_interval * 4).await;
    assert_eq!(
        store.load().unwrap().unwrap().phase,
        CanaryPhase::Paused(PauseReason::Inconclusive)
    );
    assert_eq!(router.weight().get(), 1_000);
    gates.abort();
    assert_eq!(task.await.unwrap().unwrap().phase, CanaryPhase::RolledBack);
}
