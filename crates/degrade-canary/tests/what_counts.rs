//! What the judge counts, through the real router and controller: a hung candidate (the
//! caller's timeout drops the call) is rolled back, not paused; a store that fails on save
//! leaves the weight at 0 with a typed error; a single heavy key cannot force a rollback of
//! a good release.

use degrade_canary::hash::bucket_u64;
use degrade_canary::key::from_fn;
use degrade_canary::{
    Canary, CanaryConfig, CanaryController, CanaryPhase, CanaryState, CanaryStep, Gate, Judge,
    JudgeConfig, MemoryStore, StateStore, StoreError, Verdict,
};
use degrade_core::ManualClock;
use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tower::{Service, ServiceExt};

const BAKE: Duration = Duration::from_secs(60);

fn config(min_samples: u64) -> CanaryConfig {
    CanaryConfig {
        steps: vec![
            CanaryStep::new(10.0, BAKE),
            CanaryStep::new(50.0, BAKE),
            CanaryStep::new(100.0, BAKE),
        ],
        inconclusive_limit: 3,
        judge: JudgeConfig {
            min_samples,
            ..JudgeConfig::default()
        },
        ..CanaryConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_hung_candidate_is_rolled_back_not_paused() {
    // v2 accepts requests and never answers; callers give up after 1 s.
    let router = Canary::builder()
        .key(from_fn(|user: &u64| Some(*user)))
        .build(
            tower::service_fn(|_: u64| async { Ok::<_, Infallible>("v1") }),
            tower::service_fn(|_: u64| std::future::pending::<Result<&str, Infallible>>()),
        );
    let clock = ManualClock::new();
    let mut controller = CanaryController::builder(config(200), router.handle())
        .clock(clock.clone())
        .start()
        .unwrap();
    let mut svc = router.clone();
    let mut timeouts = 0;
    for look in 0..20u64 {
        for user in 0..500u64 {
            let call = svc.ready().await.unwrap().call(look * 500 + user);
            if tokio::time::timeout(Duration::from_secs(1), call)
                .await
                .is_err()
            {
                timeouts += 1;
            }
        }
        clock.advance(Duration::from_secs(30));
        let j = controller.tick().await.unwrap();
        assert_ne!(j.verdict, Verdict::Inconclusive, "look {look}: {j:?}");
        if controller.state().phase != CanaryPhase::Progressing {
            assert_eq!(controller.state().phase, CanaryPhase::RolledBack, "{j:?}");
            assert_eq!(j.reason, "canary error rate above stable's");
            break;
        }
    }
    assert_eq!(controller.state().phase, CanaryPhase::RolledBack);
    assert_eq!(router.weight().get(), 0);
    assert!(timeouts > 0);
    assert_eq!(router.snapshot().canary.cancelled, timeouts);
}

#[tokio::test(start_paused = true)]
async fn cancelled_calls_are_not_failures_when_configured_so() {
    let mut judge = Judge::new(JudgeConfig {
        min_samples: 50,
        cancelled_is_failure: false,
        ..JudgeConfig::default()
    })
    .unwrap();
    let router = Canary::builder()
        .weight(degrade_canary::Weight::new(5_000).unwrap())
        .build(
            tower::service_fn(|_: u64| async { Ok::<_, Infallible>("v1") }),
            tower::service_fn(|_: u64| std::future::pending::<Result<&str, Infallible>>()),
        );
    let mut svc = router.clone();
    for n in 0..400u64 {
        let call = svc.ready().await.unwrap().call(n);
        let _ = tokio::time::timeout(Duration::from_millis(10), call).await;
    }
    let j = judge.look(&router.snapshot());
    // No judged canary call at all: inconclusive, never a failure.
    assert_eq!(j.verdict, Verdict::Inconclusive);
    assert_eq!(j.samples.1, 0);
}

/// Saves `ok` times, then fails every save.
#[derive(Clone)]
struct FailingStore {
    ok: Arc<AtomicU32>,
    inner: MemoryStore,
}

impl StateStore for FailingStore {
    fn load(&self) -> io::Result<Option<CanaryState>> {
        self.inner.load()
    }
    fn save(&self, state: &CanaryState) -> io::Result<()> {
        if self
            .ok
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_err()
        {
            return Err(io::Error::other("disk full"));
        }
        self.inner.save(state)
    }
}

fn echo_router() -> Canary<
    impl tower::Service<u8, Response = u8, Error = Infallible, Future: Send> + Clone,
    impl tower::Service<u8, Response = u8, Error = Infallible, Future: Send> + Clone,
> {
    Canary::builder().build(
        tower::service_fn(|x: u8| async move { Ok::<_, Infallible>(x) }),
        tower::service_fn(|x: u8| async move { Ok::<_, Infallible>(x) }),
    )
}

#[tokio::test]
async fn a_store_that_fails_on_save_sets_weight_zero_and_returns_an_error() {
    let router = echo_router();
    let store = FailingStore {
        ok: Arc::new(AtomicU32::new(1)),
        inner: MemoryStore::default(),
    };
    let rollbacks = Arc::new(AtomicU32::new(0));
    let seen = rollbacks.clone();
    let mut c = CanaryController::builder(config(100), router.handle())
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
    // The next state change cannot be saved: the controller fails safe.
    let err: StoreError = c.gate(Gate::Pause).await.unwrap_err();
    assert_eq!(err.io().to_string(), "disk full");
    assert_eq!(err.state.phase, CanaryPhase::RolledBack);
    assert_eq!(err.state.weight_bp, 0);
    assert_eq!(router.weight().get(), 0);
    assert_eq!(c.state().phase, CanaryPhase::RolledBack);
    assert_eq!(rollbacks.load(Ordering::SeqCst), 1);
    // The last saved state is the one before the failure; nothing later claims otherwise.
    assert_eq!(
        store.load().unwrap().unwrap().phase,
        CanaryPhase::Progressing
    );

    // A store that cannot even save the first state: no weight at all.
    let router = echo_router();
    let failing = FailingStore {
        ok: Arc::new(AtomicU32::new(0)),
        inner: MemoryStore::default(),
    };
    let err = CanaryController::builder(config(100), router.handle())
        .store(failing)
        .start()
        .unwrap_err();
    let err = err.downcast::<StoreError>().unwrap();
    assert_eq!(err.state.weight_bp, 0);
    assert_eq!(router.weight().get(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_spawned_controller_whose_store_fails_ends_with_weight_zero() {
    let router = echo_router();
    let store = FailingStore {
        ok: Arc::new(AtomicU32::new(1)),
        inner: MemoryStore::default(),
    };
    let (task, gates) = CanaryController::builder(config(100), router.handle())
        .store(store)
        .start()
        .unwrap()
        .spawn();
    gates.pause();
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(err.state.phase, CanaryPhase::RolledBack);
    assert_eq!(router.weight().get(), 0);
}

/// A request: the user, and whether this request fails (the same on either arm: A/A).
#[derive(Clone, Copy)]
struct Req {
    user: u64,
    fails: bool,
}

#[tokio::test]
async fn a_single_heavy_key_cannot_force_a_rollback_in_a_a() {
    // Both arms are the same release. One client — sending half of all requests, every one of
    // them failing (a broken client) — has a key on the canary's side of the 10 % step.
    let heavy = (0..).find(|k: &u64| bucket_u64(*k) < 300).unwrap();
    let backend = || {
        tower::service_fn(|r: Req| async move {
            if r.fails {
                Err("broken request")
            } else {
                Ok(r.user)
            }
        })
    };
    let router = Canary::builder()
        .key(from_fn(|r: &Req| Some(r.user)))
        .build(backend(), backend());
    let clock = ManualClock::new();
    let mut controller = CanaryController::builder(config(500), router.handle())
        .clock(clock.clone())
        .start()
        .unwrap();
    let mut svc = router.clone();
    let mut n = 0u64;
    let mut windows = Vec::new();
    for _ in 0..20 {
        for _ in 0..2_000 {
            n += 1;
            let req = if n.is_multiple_of(2) {
                Req {
                    user: heavy,
                    fails: true,
                }
            } else {
                // Ordinary users, 1 % of whose requests fail, alike on both arms.
                Req {
                    user: 1_000 + n % 4_001,
                    fails: n.is_multiple_of(199),
                }
            };
            let _ = svc.ready().await.unwrap().call(req).await;
        }
        windows.push(router.snapshot());
        clock.advance(Duration::from_secs(30));
        let j = controller.tick().await.unwrap();
        assert_ne!(j.verdict, Verdict::Fail, "{j:?}");
        if controller.state().phase.is_terminal() {
            break;
        }
    }
    assert_eq!(controller.state().phase, CanaryPhase::Promoted);

    // The same windows judged request by request (no key groups): that client alone decides.
    let mut naive = Judge::new(config(500).judge).unwrap();
    let verdicts: Vec<Verdict> = windows
        .iter()
        .map(|s| {
            let mut s = s.clone();
            s.stable.groups.clear();
            s.canary.groups.clear();
            naive.look(&s).verdict
        })
        .collect();
    assert!(verdicts.contains(&Verdict::Fail), "{verdicts:?}");
}
