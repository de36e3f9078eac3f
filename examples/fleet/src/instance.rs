//! One instance of the fleet, run as a child process (`fleet-example --instance ...`). It
//! prints one JSON line per report on stdout: `STATUS {...}` every 100 ms (canary mode),
//! `START {}` and `DONE {...}` (quota mode).

use degrade_canary::fleet::{FleetCanary, FleetCanaryConfig};
use degrade_canary::{BoxError, Canary, key::from_fn};
use degrade_core::Controller;
use degrade_core::ladder::{LadderConfig, Reading};
use degrade_ratelimit::RateLimitConfig;
use degrade_ratelimit::fleet::incident::{IncidentConfig, IncidentSwitch};
use degrade_ratelimit::fleet::{FleetConfig, FleetLayer};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, ServiceExt};
use tower_service::Service;

/// Requests per second each canary instance serves.
const CANARY_RATE: u64 = 400;
/// The fleet's quota (requests per second, shared by every instance) and its burst.
pub(crate) const QUOTA: u64 = 200;
pub(crate) const BURST: u64 = 20;
/// Requests per second each quota instance offers: together, three times the quota.
const QUOTA_OFFER: u64 = 200;
/// The rate-limit key prefix and name every instance shares.
const LIMIT_NAME: &str = "fleet-example";
/// The incident switch's service name.
pub(crate) const SERVICE: &str = "fleet-example";

/// The fleet canary's configuration for `rollout` on instance `name`: short steps and a short
/// analysis interval so the example runs in seconds (a real rollout bakes minutes).
pub(crate) fn canary_config(
    url: &str,
    rollout: &str,
    name: &str,
) -> Result<FleetCanaryConfig, BoxError> {
    let cfg: FleetCanaryConfig = serde_json::from_value(serde_json::json!({
        "url": url, "name": rollout, "instance": name,
        "poll": "100ms", "timeout": "200ms", "lease": "1s", "publish": "250ms",
        "stale_after": "2s",
        "canary": {
            "steps": [
                {"weight_percent": 10, "bake": "1s"},
                {"weight_percent": 50, "bake": "1s"},
                {"weight_percent": 100, "bake": "1s"}
            ],
            "analysis_interval": "500ms",
            "judge": {"min_samples": 200}
        }
    }))?;
    cfg.validate()?;
    Ok(cfg)
}

/// The incident switch's configuration (the operator and every watcher use the same).
pub(crate) fn incident_config(url: &str) -> IncidentConfig {
    let mut cfg = IncidentConfig::default();
    cfg.url = url.to_owned();
    cfg.name = SERVICE.to_owned();
    cfg.poll = Duration::from_millis(100);
    cfg
}

/// A backend version: every call takes 1 to 9 ms (the same spread for both versions); a
/// `bad` share of the calls fail, spread evenly.
#[derive(Clone)]
struct Backend {
    bad: f64,
    calls: Arc<AtomicU64>,
}

impl Service<u64> for Backend {
    type Response = ();
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, user: u64) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let fails = ((n + 1) as f64 * self.bad) as u64 > (n as f64 * self.bad) as u64;
        // A deterministic mix of user and call number picks the service time.
        let mix =
            (user ^ n.wrapping_mul(0x2545_f491_4f6c_dd1d)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let took = Duration::from_micros(1_000 + (mix >> 40) % 8_000);
        Box::pin(async move {
            tokio::time::sleep(took).await;
            if fails {
                Err("candidate failed".into())
            } else {
                Ok(())
            }
        })
    }
}

/// Canary mode: a router over v1 and the candidate (`bad` failure rate) following the fleet
/// rollout `rollout`, and a level controller following the incident switch.
pub(crate) async fn canary(name: &str, url: &str, rollout: &str, bad: f64) -> Result<(), BoxError> {
    let backend = |bad| Backend {
        bad,
        calls: Arc::new(AtomicU64::new(0)),
    };
    let router = Canary::builder(backend(0.0), backend(bad))
        .key(from_fn(|user: &u64| Some(*user)))
        .build()?;
    let handle = router.handle();
    let fleet = FleetCanary::new(canary_config(url, rollout, name)?, router.handle())?.spawn();

    // This instance's level: its own signal (a calm CPU reading every 100 ms, so Normal) unless
    // the fleet pins it; after a pin it steps down one level per half-second dwell.
    let ladder = LadderConfig {
        dwell: Duration::from_millis(500),
        ..LadderConfig::default()
    };
    let controller = Controller::new(ladder)?;
    let watcher = IncidentSwitch::new(incident_config(url))?.watch(controller.clone());

    // The load: CANARY_RATE requests a second over 5,000 users, each served concurrently.
    tokio::spawn(async move {
        let mut svc = router;
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / CANARY_RATE));
        let mut n = 0u64;
        loop {
            tick.tick().await;
            let user = n.wrapping_mul(2_654_435_761) % 5_000;
            if svc.ready().await.is_err() {
                continue;
            }
            let call = svc.call(user);
            tokio::spawn(async move {
                let _ = call.await;
            });
            n += 1;
        }
    });

    let mut report = tokio::time::interval(Duration::from_millis(100));
    loop {
        report.tick().await;
        controller.observe(&[Reading::new("cpu", 0.05)]);
        let f = fleet.snapshot();
        let s = handle.snapshot();
        let w = watcher.snapshot();
        let v = serde_json::json!({
            "phase": f.state.map(|st| format!("{:?}", st.phase)),
            "step": f.state.map(|st| st.step),
            "weight_bp": f.weight_bp,
            "leader": f.leader,
            "token": f.token,
            "verdict": f.last_verdict.map(|(v, why)| format!("{v}: {why}")),
            "refused_writes": f.refused_writes,
            "falling_back": f.falling_back,
            "fallbacks": f.fallbacks,
            "level": controller.level().to_string(),
            "pinned": w.pinned.map(|l| l.to_string()),
            "stable_routed": s.stable.routed,
            "canary_routed": s.canary.routed,
            "canary_failures": s.canary.failures,
        });
        println!("STATUS {v}");
    }
}

/// Quota mode: offers QUOTA_OFFER requests a second on average for `millis` (gaps spread
/// between half and one and a half times the mean, a deterministic sequence per instance)
/// through the fleet rate limit shared by every instance, reporting its counts every 100 ms
/// (`STATUS`) and at the end (`DONE`, with `sent`: the requests it offered).
pub(crate) async fn quota(name: &str, url: &str, millis: u64) -> Result<(), BoxError> {
    let mut cfg = FleetConfig::default();
    cfg.url = url.to_owned();
    cfg.name = LIMIT_NAME.to_owned();
    // Generous for a machine shared with builds: a decision past it would go to the local
    // fallback (counted apart below).
    cfg.timeout = Duration::from_millis(200);
    cfg.quota = RateLimitConfig::per(QUOTA, Duration::from_secs(1)).burst(BURST);
    let layer = FleetLayer::new(cfg)?;
    let svc = layer.layer(tower::service_fn(|_: u64| async { Ok::<_, BoxError>(()) }));
    let counts = |s: degrade_ratelimit::fleet::FleetSnapshot| {
        serde_json::json!({
            "offered": s.offered(),
            "admitted": s.admitted,
            "rejected": s.rejected,
            "fallback_admitted": s.fallback_admitted,
            "fallback_rejected": s.fallback_rejected,
            "redis_failures": s.redis_failures,
            "failed_fast": s.failed_fast,
            "failing_fast": s.failing_fast,
        })
    };
    let reporter = {
        let layer = layer.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                println!("STATUS {}", counts(layer.snapshot()));
            }
        })
    };

    println!("START {{}}");
    let mean_us = 1_000_000 / QUOTA_OFFER;
    let seed = name.bytes().fold(0u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut next = tokio::time::Instant::now();
    let mut calls = Vec::new();
    let sent = QUOTA_OFFER * millis / 1_000;
    for n in 0..sent {
        let mix = (seed ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
        next += Duration::from_micros(mean_us / 2 + mix % mean_us);
        tokio::time::sleep_until(next).await;
        let mut svc = svc.clone();
        // Each decision concurrently: one Redis round trip each.
        calls.push(tokio::spawn(async move {
            let _ = svc.ready().await?.call(n).await;
            Ok::<_, BoxError>(())
        }));
    }
    for c in calls {
        c.await??;
    }
    reporter.abort();
    let mut v = counts(layer.snapshot());
    v["sent"] = sent.into();
    println!("DONE {v}");
    Ok(())
}
