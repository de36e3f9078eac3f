//! Batch analysis in-process on paused time: every latency is exactly what the backend says,
//! so the judge's verdict depends on the rollout's rules alone (`tests/process.rs` has the same
//! with real processes, where a loaded machine adds its own differences between instances).

mod support;

use degrade_canary::JudgeConfig;
use degrade_core::BoxError;
use degrade_rollout::discover::Pool;
use degrade_rollout::{
    Amount, AnalysisConfig, Instance, RolloutConfig, RolloutController, RolloutOutcome,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use support::Recorder;
use tokio::time::Instant;
use tower::balance::p2c::Balance;
use tower::{Service, ServiceExt, service_fn};

/// How long a v2 endpoint is slow after it is put in service.
const COLD: Duration = Duration::from_millis(1500);

/// An endpoint's client: v1 answers in 2 ms; v2 in 8 ms for its first [`COLD`] in service,
/// then in 2 ms like v1 (a release that is slow while it warms up, and as good after).
fn backend(
    i: &Instance,
) -> impl Service<(), Response = String, Error = BoxError, Future: Send> + Clone + Send + use<> {
    let cold_until = if i.version == "v2" {
        Instant::now() + COLD
    } else {
        Instant::now()
    };
    let version = i.version.clone();
    service_fn(move |()| {
        let version = version.clone();
        async move {
            let latency = if Instant::now() < cold_until {
                Duration::from_millis(8)
            } else {
                Duration::from_millis(2)
            };
            tokio::time::sleep(latency).await;
            Ok::<_, BoxError>(version)
        }
    })
}

fn fleet(n: u16) -> Vec<Instance> {
    (0..n)
        .map(|k| {
            let addr = SocketAddr::from(([127, 0, 0, 1], 7200 + k));
            Instance::new(format!("i{k}"), addr, "v1")
        })
        .collect()
}

/// Upgrades three instances one at a time under three callers, each batch analysed after
/// `warmup`; returns the outcome, its failure and the calls that failed.
async fn roll(warmup: Duration) -> (RolloutOutcome, Option<String>, u64) {
    let pool = Pool::new(backend);
    let instances = fleet(3);
    for i in &instances {
        pool.insert(i);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let mut balancer = Balance::new(pool.discover());
            let (stop, failed) = (stop.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let res = match balancer.ready().await {
                        Ok(svc) => svc.call(()).await,
                        Err(e) => Err(e),
                    };
                    if res.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let cfg = RolloutConfig {
        max_surge: Amount::Count(0),
        max_unavailable: Amount::Count(1),
        min_ready: Duration::from_millis(300),
        health_interval: Duration::from_millis(100),
        post_watch: Duration::from_millis(500),
        analysis: Some(AnalysisConfig {
            judge: JudgeConfig {
                min_samples: 50,
                ..JudgeConfig::default()
            },
            duration: Duration::from_secs(20),
            interval: Duration::from_millis(200),
            warmup,
            require_pass: true,
        }),
        ..RolloutConfig::default()
    };
    let report = RolloutController::builder(Recorder::default(), pool.clone())
        .config(cfg)
        .instances(instances)
        .target("v2")
        .build()
        .expect("valid rollout")
        .run()
        .await
        .expect("no journal");
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.await.unwrap();
    }
    (
        report.outcome,
        report.failure,
        failed.load(Ordering::Relaxed),
    )
}

#[tokio::test(start_paused = true)]
async fn the_warmup_leaves_a_batchs_cold_start_out_of_both_arms() {
    let (outcome, failure, failed) = roll(Duration::from_secs(2)).await;
    assert_eq!(outcome, RolloutOutcome::Completed, "{failure:?}");
    assert_eq!(failed, 0);
}

#[tokio::test(start_paused = true)]
async fn judged_from_its_first_call_a_cold_start_reads_as_a_latency_regression() {
    let (outcome, failure, failed) = roll(Duration::ZERO).await;
    assert_eq!(outcome, RolloutOutcome::RolledBack);
    let failure = failure.unwrap_or_default();
    assert!(
        failure.contains("analysis of batch 0") && failure.contains("latency"),
        "{failure}"
    );
    assert_eq!(failed, 0);
}

#[tokio::test(start_paused = true)]
async fn a_warmup_shorter_than_the_cold_start_still_sees_it() {
    // Half the cold start is left in the judged calls: still a regression.
    let (outcome, failure, _) = roll(COLD / 3).await;
    assert_eq!(outcome, RolloutOutcome::RolledBack, "{failure:?}");
}
