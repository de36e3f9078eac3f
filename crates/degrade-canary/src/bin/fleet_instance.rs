//! One instance of a fleet canary: a `Canary` router over a stable and a candidate service,
//! driven by its own load, its weight following the rollout in Redis (`FleetCanary`). Run
//! three of them against one `redis-server` and they run one rollout: one leader by lease,
//! statistics summed in Redis, every router at the fleet's weight.
//!
//! ```text
//! redis-server --port 6390 &
//! for i in 1 2 3; do
//!   FLEET_CONFIG='{"url":"redis://127.0.0.1:6390","name":"demo","instance":"i'$i'",
//!     "canary":{"steps":[{"weight_percent":10,"bake":"2s"},{"weight_percent":50,"bake":"2s"},
//!     {"weight_percent":100,"bake":"2s"}],"analysis_interval":"1s",
//!     "judge":{"min_samples":200}}}' FLEET_BAD=0.3 \
//!   cargo run -p degrade-canary --features redis --bin degrade-canary-fleet-instance &
//! done
//! ```
//!
//! Environment: `FLEET_CONFIG` (a `FleetCanaryConfig` as JSON), `FLEET_BAD` (the candidate's
//! failure rate, default 0), `FLEET_RATE` (requests per second, default 400), `FLEET_REQUESTS`
//! (stop the load after this many requests; default never). Every 100 ms it prints one line
//! `STATUS {json}` with the fleet snapshot and the router's own counts, and `DONE {json}`
//! once its load has ended.
//!
//! Standard input takes manual gates for the whole fleet, one a line: `<gate> <who> <why>`
//! (`abort alice errors in eu`; gates `promote`, `abort`, `pause`, `resume`), issued through
//! this instance's `FleetCanary::gates()`; each is answered by a line `GATE {json}` with the
//! command's `id`, or its `error` (`finished` names the phase of an ended rollout).

use degrade_canary::fleet::{
    FleetCanary, FleetCanaryConfig, FleetCanarySnapshot, FleetCommandError, parse_gate,
};
use degrade_canary::{BoxError, Canary, key::from_fn};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tower_service::Service;

/// A backend version: each call takes `service_time`; a `bad` share of them fail, spread
/// evenly (deterministic). Clones share the call count.
#[derive(Clone)]
struct Backend {
    version: &'static str,
    bad: f64,
    calls: Arc<AtomicU64>,
}

impl Service<u64> for Backend {
    type Response = &'static str;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<&'static str, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, user: u64) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let fail = ((n + 1) as f64 * self.bad).floor() > (n as f64 * self.bad).floor();
        let version = self.version;
        Box::pin(async move {
            tokio::time::sleep(service_time(user, n)).await;
            if fail {
                Err(format!("{version} failed").into())
            } else {
                Ok(version)
            }
        })
    }
}

fn line(tag: &str, f: &FleetCanarySnapshot, s: &degrade_canary::stats::CanarySnapshot) {
    let state = f.state.map(|st| {
        serde_json::json!({
            "phase": format!("{:?}", st.phase),
            "step": st.step,
            "weight_bp": st.weight_bp,
        })
    });
    let v = serde_json::json!({
        "state": state,
        "weight_bp": f.weight_bp,
        "leader": f.leader,
        "token": f.token,
        "terms": f.terms,
        "analyses": f.analyses,
        "last_verdict": f.last_verdict.map(|(v, r)| format!("{v}: {r}")),
        "refused_writes": f.refused_writes,
        "polls": f.polls,
        "poll_failures": f.poll_failures,
        "fallbacks": f.fallbacks,
        "falling_back": f.falling_back,
        "published": f.published,
        "duplicates": f.duplicates,
        "publish_failures": f.publish_failures,
        "commands": f.commands,
        "commands_applied": f.commands_applied,
        "local": {
            "stable_routed": s.stable.routed,
            "canary_routed": s.canary.routed,
            "stable_failures": s.stable.failures,
            "canary_failures": s.canary.failures,
            "stable_samples": s.stable.samples(),
            "canary_samples": s.canary.samples(),
        },
    });
    println!("{tag} {v}");
}

/// A service time between 1 and 9 ms, the same spread for both versions: a deterministic
/// mix of the user and the call number. (A latency that sits in one or two histogram buckets
/// would give the judge's rank test no spread to measure a regression against.)
fn service_time(user: u64, n: u64) -> Duration {
    let mut x = user ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 29;
    Duration::from_micros(1_000 + x % 8_000)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let cfg: FleetCanaryConfig = serde_json::from_str(&std::env::var("FLEET_CONFIG")?)?;
    let env = |k: &str| std::env::var(k).ok();
    let bad: f64 = env("FLEET_BAD").map_or(Ok(0.0), |v| v.parse())?;
    let rate: u64 = env("FLEET_RATE").map_or(Ok(400), |v| v.parse())?;
    let limit: Option<u64> = env("FLEET_REQUESTS").map(|v| v.parse()).transpose()?;

    // Both versions take the same spread of service times; the candidate fails a share.
    let backend = |version, bad| Backend {
        version,
        bad,
        calls: Arc::new(AtomicU64::new(0)),
    };
    let router = Canary::builder(backend("v1", 0.0), backend("v2", bad))
        .key(from_fn(|user: &u64| Some(*user)))
        .build()?;
    let handle = router.handle();
    let fleet = FleetCanary::new(cfg, router.handle())?;
    let task = fleet.spawn();

    // Manual gates from standard input, issued for the whole fleet.
    let gates = fleet.gates();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            let mut words = line.trim().splitn(3, ' ');
            let (gate, who, why) = (
                words.next().unwrap_or(""),
                words.next().unwrap_or(""),
                words.next().unwrap_or(""),
            );
            let v = match parse_gate(gate) {
                None => serde_json::json!({ "error": format!("no gate {gate:?}") }),
                Some(g) => match gates.send(g, who, why).await {
                    Ok(id) => serde_json::json!({ "id": id, "gate": gate }),
                    Err(FleetCommandError::Finished(p)) => serde_json::json!({
                        "error": "finished", "finished": format!("{p:?}"), "gate": gate
                    }),
                    Err(e) => serde_json::json!({ "error": e.to_string(), "gate": gate }),
                },
            };
            println!("GATE {v}");
        }
    });

    // The load: `rate` requests a second over 5,000 users, until `limit`.
    let load = tokio::spawn(async move {
        let mut svc = router;
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut n = 0u64;
        while limit.is_none_or(|l| n < l) {
            tick.tick().await;
            let user = n.wrapping_mul(2_654_435_761) % 5_000;
            std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
            let _ = svc.call(user).await;
            n += 1;
        }
        Ok::<_, BoxError>(())
    });
    let mut load = Some(load);
    let mut report = tokio::time::interval(Duration::from_millis(100));
    loop {
        report.tick().await;
        if load.as_ref().is_some_and(|l| l.is_finished()) {
            if let Some(l) = load.take() {
                l.await??;
            }
            line("DONE", &task.snapshot(), &handle.snapshot());
        }
        line("STATUS", &task.snapshot(), &handle.snapshot());
    }
}
