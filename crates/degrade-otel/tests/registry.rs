//! Metrics by registration: one `Registry` call per layer, values read from the layers' own
//! snapshots when a real SDK reader collects.

use degrade_breaker::{BreakerConfig, BreakerLayer};
use degrade_canary::{Canary, CanaryConfig, CanaryController};
use degrade_core::{BoxError, Controller, DegradeLayer, Level, Policy, Priority};
use degrade_otel::metrics::Registry;
use degrade_otel::{DropReason, ExportStats};
use degrade_ratelimit::{RateLimitConfig, RateLimitLayer};
use degrade_rollout::discover::Pool;
use degrade_rollout::{Driver, Instance, RolloutController};
use degrade_triggers::{Gauge, Monitor, Scale};
use opentelemetry::metrics::MeterProvider;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

type Points = BTreeMap<String, BTreeMap<String, f64>>;

/// The latest collection: metric name → (sorted `k=v` attributes → value).
fn collect(exporter: &InMemoryMetricExporter) -> Points {
    let mut out = Points::new();
    let finished = exporter.get_finished_metrics().unwrap();
    for rm in finished.iter().rev().take(1) {
        for sm in rm.scope_metrics() {
            for m in sm.metrics() {
                let points = out.entry(m.name().to_owned()).or_default();
                macro_rules! points {
                    ($d:expr) => {
                        match $d {
                            MetricData::Gauge(g) => {
                                for p in g.data_points() {
                                    points.insert(attrs(p.attributes()), p.value() as f64);
                                }
                            }
                            MetricData::Sum(s) => {
                                for p in s.data_points() {
                                    points.insert(attrs(p.attributes()), p.value() as f64);
                                }
                            }
                            _ => {}
                        }
                    };
                }
                match m.data() {
                    AggregatedMetrics::F64(d) => points!(d),
                    AggregatedMetrics::U64(d) => points!(d),
                    AggregatedMetrics::I64(d) => points!(d),
                }
            }
        }
    }
    out
}

fn attrs<'a>(kvs: impl Iterator<Item = &'a opentelemetry::KeyValue>) -> String {
    let mut v: Vec<String> = kvs.map(|kv| format!("{}={}", kv.key, kv.value)).collect();
    v.sort();
    v.join(",")
}

fn value(got: &Points, name: &str, attrs: &str) -> f64 {
    *got.get(name)
        .unwrap_or_else(|| panic!("{name} missing: {got:#?}"))
        .get(attrs)
        .unwrap_or_else(|| panic!("{name}{{{attrs}}} missing: {:#?}", got[name]))
}

#[derive(Debug)]
struct Noop;
impl Driver for Noop {
    async fn stop(&self, _: &Instance) -> Result<(), BoxError> {
        Ok(())
    }
    async fn install(&self, _: &Instance, _: &str) -> Result<(), BoxError> {
        Ok(())
    }
    async fn start(&self, _: &Instance) -> Result<(), BoxError> {
        Ok(())
    }
    async fn health(&self, _: &Instance) -> Result<(), BoxError> {
        Ok(())
    }
}

fn ok<R: Send + 'static>()
-> impl Service<R, Response = (), Error = Infallible, Future: Send> + Clone {
    tower::service_fn(|_: R| async { Ok::<_, Infallible>(()) })
}

#[tokio::test(start_paused = true)]
async fn one_registration_per_layer_reports_every_layer_from_its_snapshot() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let registry = Registry::new(&provider.meter("degrade"));

    // The stack, and one registration for each part of it.
    let controller = Controller::new(Default::default()).unwrap();
    let admission = DegradeLayer::new(controller.handle(), Policy::default()).unwrap();
    let limit = RateLimitLayer::new(RateLimitConfig::per(2, Duration::from_secs(60))).unwrap();
    let breaker = BreakerLayer::new(BreakerConfig::default()).unwrap();
    let canary = Canary::new(ok::<u8>(), ok::<u8>());
    let (_canary_task, gates) = CanaryController::builder(CanaryConfig::default(), canary.handle())
        .build()
        .unwrap()
        .spawn();
    let monitor = Monitor::new(controller.clone())
        .interval(Duration::from_secs(1))
        .signal(Gauge::new(
            "queue",
            Scale::proportional(100.0).unwrap(),
            || Some(30.0),
        ))
        .spawn()
        .unwrap();
    let rollout = RolloutController::builder(Noop, Pool::new(|i: &Instance| i.address))
        .instances(vec![
            Instance::new("a", "127.0.0.1:1".parse().unwrap(), "v1"),
            Instance::new("b", "127.0.0.1:2".parse().unwrap(), "v1"),
        ])
        .target("v2")
        .build()
        .unwrap();
    let stats = ExportStats::new();
    registry
        .level(controller.handle())
        .admission("api", &admission)
        .rate_limit("api", &limit)
        .breaker("backend", breaker.handle())
        .canary("v2", canary.handle(), Some(gates.clone()))
        .monitor(&monitor)
        .rollout("fleet", rollout.handle())
        .export(stats.clone());

    // Traffic through the layers: 3 requests, the third over the rate limit.
    let mut svc = admission.layer(limit.layer(breaker.layer(ok::<()>())));
    for _ in 0..3 {
        let _ = svc.ready().await.unwrap().call(()).await;
    }
    breaker.handle().force_open();
    canary.handle().weight().set(2_500).unwrap();
    let mut c = canary.clone();
    for i in 0..8u8 {
        c.ready().await.unwrap().call(i).await.unwrap();
    }
    rollout.run().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await; // a monitor tick (paused time)
    stats.record_offered(5);
    stats.record_exported(4, 1);
    stats.record_drop(DropReason::CircuitOpen, 1);
    controller.pin(Level::Heavy);

    provider.force_flush().unwrap();
    let got = collect(&exporter);
    assert_eq!(value(&got, "degrade.level", ""), 3.0);
    assert_eq!(value(&got, "degrade.signal.pressure", "signal=queue"), 0.3);
    let normal = Priority::Normal.as_str();
    let admitted = format!("decision=admitted,layer=api,priority={normal}");
    assert_eq!(value(&got, "degrade.admission.requests", &admitted), 3.0);
    let limit_now = admission.snapshot().limit.unwrap().limit;
    assert_eq!(
        value(&got, "degrade.admission.limit", "layer=api"),
        f64::from(limit_now)
    );
    assert_eq!(value(&got, "degrade.admission.in_flight", "layer=api"), 0.0);
    assert_eq!(
        value(
            &got,
            "degrade.rate_limit.decisions",
            "decision=admitted,limiter=api"
        ),
        2.0
    );
    assert_eq!(
        value(
            &got,
            "degrade.rate_limit.decisions",
            "decision=rejected,limiter=api,reason=rate_limited"
        ),
        1.0
    );
    assert_eq!(
        value(
            &got,
            "degrade.breaker.state",
            "breaker=backend,state=forced-open"
        ),
        3.0
    );
    assert_eq!(
        value(
            &got,
            "degrade.breaker.calls",
            "breaker=backend,outcome=success"
        ),
        2.0
    );
    assert_eq!(
        value(&got, "degrade.breaker.transitions", "breaker=backend"),
        1.0
    );
    assert_eq!(value(&got, "degrade.canary.weight", "canary=v2"), 0.25);
    let routed: f64 = ["stable", "canary"]
        .iter()
        .map(|arm| {
            value(
                &got,
                "degrade.canary.routed",
                &format!("arm={arm},canary=v2"),
            )
        })
        .sum();
    assert_eq!(routed, 8.0);
    // The controller analysed while paused time ran (too few calls: inconclusive, step 0).
    assert_eq!(
        value(
            &got,
            "degrade.canary.step",
            "canary=v2,phase=progressing,verdict=inconclusive"
        ),
        0.0
    );
    assert_eq!(
        value(
            &got,
            "degrade.rollout.instances",
            "rollout=fleet,state=running"
        ),
        2.0
    );
    assert_eq!(value(&got, "degrade.otel.spans.exported", ""), 4.0);
    assert_eq!(
        value(&got, "degrade.otel.spans.dropped", "reason=circuit_open"),
        1.0
    );

    // A second collection reads the layers again: the counters follow the snapshots.
    let _ = svc.ready().await.unwrap().call(()).await;
    provider.force_flush().unwrap();
    let got = collect(&exporter);
    let decisions: f64 = got["degrade.rate_limit.decisions"].values().sum();
    assert_eq!(decisions, 4.0);
    assert_eq!(decisions, limit.snapshot().offered() as f64);
    monitor.shutdown().await;
}

/// A fleet canary registered once: its router and the fleet snapshot (leader, fencing token,
/// terms, polls, intervals, commands, fallbacks) read at each collection, against a real
/// redis-server; then an abort through the fleet's gates and Redis killed.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_canary_reports_its_leadership_commands_and_fallbacks() {
    use degrade_canary::fleet::{FleetCanary, FleetCanaryConfig};
    use degrade_core::fleet::testing::RedisServer;

    let mut redis = RedisServer::start();
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let registry = Registry::new(&provider.meter("degrade"));
    let canary = Canary::new(ok::<u8>(), ok::<u8>());
    let mut cfg = FleetCanaryConfig::default();
    cfg.url = redis.url();
    cfg.name = "otel-v2".into();
    cfg.instance = "a".into();
    cfg.poll = Duration::from_millis(50);
    cfg.timeout = Duration::from_millis(100);
    cfg.lease = Duration::from_secs(1);
    cfg.publish = Duration::from_millis(100);
    cfg.stale_after = Duration::from_millis(300);
    let fleet = FleetCanary::new(cfg, canary.handle()).unwrap();
    let task = fleet.spawn();
    registry.fleet_canary("v2", canary.handle(), task.status());
    async fn until(what: &str, f: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    until("leading", || {
        let s = task.snapshot();
        s.leader && s.state.is_some()
    })
    .await;
    let mut c = canary.clone();
    for i in 0..8u8 {
        c.ready().await.unwrap().call(i).await.unwrap();
    }
    until("an interval published", || task.snapshot().published > 0).await;
    provider.force_flush().unwrap();
    let got = collect(&exporter);
    let s = task.snapshot();
    assert_eq!(value(&got, "degrade.canary.fleet.leader", "canary=v2"), 1.0);
    assert_eq!(
        value(&got, "degrade.canary.fleet.token", "canary=v2"),
        s.token as f64
    );
    assert!(s.token >= 1);
    assert_eq!(value(&got, "degrade.canary.fleet.terms", "canary=v2"), 1.0);
    assert_eq!(
        value(&got, "degrade.canary.fleet.refused_writes", "canary=v2"),
        0.0
    );
    assert!(value(&got, "degrade.canary.fleet.polls", "canary=v2,outcome=ok") >= 1.0);
    assert!(
        value(
            &got,
            "degrade.canary.fleet.intervals",
            "canary=v2,outcome=added"
        ) >= 1.0
    );
    assert_eq!(
        value(
            &got,
            "degrade.canary.fleet.intervals",
            "canary=v2,outcome=duplicate"
        ),
        0.0
    );
    assert_eq!(value(&got, "degrade.canary.weight", "canary=v2"), 0.01);
    assert_eq!(
        value(
            &got,
            "degrade.canary.step",
            "canary=v2,phase=progressing,verdict=none"
        ),
        0.0
    );
    let routed: f64 = ["stable", "canary"]
        .iter()
        .map(|arm| {
            value(
                &got,
                "degrade.canary.routed",
                &format!("arm={arm},canary=v2"),
            )
        })
        .sum();
    assert_eq!(routed, 8.0);

    // An abort through the fleet's gates: applied by this instance, the leader.
    fleet.gates().abort("alice", "errors").await.unwrap();
    until("rolled back", || task.snapshot().commands_applied == 1).await;
    provider.force_flush().unwrap();
    let got = collect(&exporter);
    assert_eq!(
        value(
            &got,
            "degrade.canary.fleet.commands",
            "canary=v2,outcome=applied"
        ),
        1.0
    );
    assert_eq!(
        value(
            &got,
            "degrade.canary.fleet.commands",
            "canary=v2,outcome=not_applied"
        ),
        0.0
    );
    assert_eq!(value(&got, "degrade.canary.weight", "canary=v2"), 0.0);
    assert!(got["degrade.canary.step"].contains_key("canary=v2,phase=rolled_back,verdict=none"));

    // Redis killed: polls fail, and after stale_after the router falls back to stable.
    redis.kill();
    until("the fallback", || task.snapshot().falling_back).await;
    provider.force_flush().unwrap();
    let got = collect(&exporter);
    assert_eq!(
        value(&got, "degrade.canary.fleet.fallbacks", "canary=v2"),
        1.0
    );
    assert_eq!(
        value(&got, "degrade.canary.fleet.falling_back", "canary=v2"),
        1.0
    );
    assert!(
        value(
            &got,
            "degrade.canary.fleet.polls",
            "canary=v2,outcome=failed"
        ) >= 1.0
    );
    // The lease passed on the clock without a renewal: no longer leading.
    until("not leading", || !task.snapshot().leader).await;
    provider.force_flush().unwrap();
    let got = collect(&exporter);
    assert_eq!(value(&got, "degrade.canary.fleet.leader", "canary=v2"), 0.0);
}
