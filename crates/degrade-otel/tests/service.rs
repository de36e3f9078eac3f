//! The filter, the adapters and the coalescing layer against the SDK's in-memory exporter.

use degrade_core::{Controller, Level, Policy};
use degrade_otel::{
    CoalesceLayer, DropReason, ExportService, ExportStats, LevelFilter, LevelSampler, Lifecycle,
    ServiceExporter,
};
use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanKind, TraceId, Tracer, TracerProvider};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, InMemorySpanExporter, SamplingDecision, SdkTracerProvider, ShouldSample,
    SimpleSpanProcessor, SpanData, SpanExporter,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::runtime::Handle;
use tower::{Layer, Service, ServiceExt};

fn names(exporter: &InMemorySpanExporter) -> Vec<String> {
    exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .map(|s| s.name.into_owned())
        .collect()
}

#[test]
fn critical_only_keeps_critical_services_and_routes() {
    let mut policy = Policy::default().with_critical("/pay*");
    policy.moderate.critical_only = true;
    let controller = Controller::new(Default::default()).unwrap();
    controller.pin(Level::Moderate);
    let memory = InMemorySpanExporter::default();
    let stats = ExportStats::new();
    let filter = LevelFilter::new(
        SimpleSpanProcessor::new(memory.clone()),
        controller.handle(),
        policy,
    )
    .unwrap()
    .stats(stats.clone());
    let provider = SdkTracerProvider::builder()
        .with_span_processor(filter)
        .build();
    let tracer = provider.tracer("t");
    tracer.start("/payments/charge").end();
    tracer.start("/search").end();
    assert_eq!(names(&memory), ["/payments/charge"]);
    assert_eq!(stats.snapshot().dropped(DropReason::NotCritical), 1);
    assert_eq!(stats.snapshot().offered, 1);
}

#[test]
fn a_critical_service_keeps_everything_at_critical_only_levels() {
    let mut policy = Policy::default().with_critical("payments");
    policy.moderate.critical_only = true;
    let controller = Controller::new(Default::default()).unwrap();
    controller.pin(Level::Moderate);
    let memory = InMemorySpanExporter::default();
    let filter = LevelFilter::new(
        SimpleSpanProcessor::new(memory.clone()),
        controller.handle(),
        policy.clone(),
    )
    .unwrap();
    let provider = SdkTracerProvider::builder()
        .with_resource(
            Resource::builder_empty()
                .with_service_name("payments")
                .build(),
        )
        .with_span_processor(filter)
        .build();
    provider.tracer("t").start("/search").end();
    assert_eq!(
        names(&memory),
        ["/search"],
        "service.name read from set_resource"
    );

    // The sampler drops non-critical roots at the head, and samples critical ones at the ratio.
    let sampler = LevelSampler::new(controller.handle(), policy.clone()).unwrap();
    let all_ones = TraceId::from(u128::MAX);
    let decide = |s: &LevelSampler, name: &str| {
        s.should_sample(None, all_ones, name, &SpanKind::Server, &[], &[])
            .decision
    };
    assert_eq!(decide(&sampler, "/search"), SamplingDecision::Drop);
    let sampler = sampler.service("payments");
    assert_eq!(
        decide(&sampler, "/search"),
        SamplingDecision::RecordAndSample
    );
}

#[test]
fn verbose_attributes_are_dropped_by_allow_list_and_counted() {
    let controller = Controller::new(Default::default()).unwrap();
    controller.pin(Level::Moderate);
    let memory = InMemorySpanExporter::default();
    let filter = LevelFilter::new(
        SimpleSpanProcessor::new(memory.clone()),
        controller.handle(),
        Policy::default(),
    )
    .unwrap()
    .allow_attributes(["keep.me"]);
    let provider = SdkTracerProvider::builder()
        .with_span_processor(filter)
        .build();
    let mut span = provider.tracer("t").start("work");
    span.set_attribute(KeyValue::new("keep.me", 1));
    span.set_attribute(KeyValue::new("debug.payload", "..."));
    span.set_attribute(KeyValue::new("http.route", "/x"));
    span.end();
    let spans = memory.get_finished_spans().unwrap();
    let keys: Vec<_> = spans[0]
        .attributes
        .iter()
        .map(|kv| kv.key.as_str().to_owned())
        .collect();
    assert_eq!(keys, ["keep.me"]);
    assert_eq!(spans[0].dropped_attributes_count, 2);

    controller.pin(Level::Normal);
    let mut span = provider.tracer("t").start("work");
    span.set_attribute(KeyValue::new("debug.payload", "..."));
    span.end();
    assert_eq!(memory.get_finished_spans().unwrap()[1].attributes.len(), 1);
}

/// The batch processor's thread has no runtime: a tokio timer in the stack would kill it. The
/// adapter runs the stack on the captured runtime, so a `tower::timeout` works there, across
/// many exports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_timers_in_the_stack_work_from_the_processor_thread() {
    let memory = InMemorySpanExporter::default();
    let (service, lifecycle) = ExportService::new(memory.clone());
    let stack = tower::ServiceBuilder::new()
        .timeout(Duration::from_secs(5))
        .service(service);
    let exporter = ServiceExporter::new(stack, Handle::current()).lifecycle(lifecycle);
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter).build())
        .build();
    for round in 1..=3 {
        for _ in 0..10 {
            provider.tracer("t").start("work");
        }
        let p = provider.clone();
        tokio::task::spawn_blocking(move || p.force_flush())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(memory.get_finished_spans().unwrap().len(), round * 10);
    }
    let p = provider.clone();
    tokio::task::spawn_blocking(move || p.shutdown())
        .await
        .unwrap()
        .unwrap();
}

/// An exporter that records the lifecycle calls it receives.
#[derive(Debug, Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl SpanExporter for Recorder {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0
            .lock()
            .unwrap()
            .push(format!("export {}", batch.len()));
        Ok(())
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.lock().unwrap().push("flush".into());
        Ok(())
    }
    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        self.0.lock().unwrap().push("shutdown".into());
        Ok(())
    }
    fn set_resource(&mut self, r: &Resource) {
        let name = r
            .get(&opentelemetry::Key::from_static_str("service.name"))
            .map(|v| v.to_string())
            .unwrap_or_default();
        self.0.lock().unwrap().push(format!("resource {name}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_calls_reach_the_exporter_and_shutdown_drains_first() {
    let controller = Controller::new(Default::default()).unwrap();
    controller.pin(Level::Heavy);
    let recorder = Recorder::default();
    let (service, lifecycle) = ExportService::new(recorder.clone());
    let coalesce = CoalesceLayer::new(controller.handle(), &Policy::default());
    let drain = coalesce.handle();
    let mut exporter = ServiceExporter::new(coalesce.layer(service), Handle::current())
        .lifecycle(drain.clone())
        .lifecycle(lifecycle);
    exporter.set_resource(&Resource::builder_empty().with_service_name("svc").build());
    let exporter = Arc::new(exporter);
    let e = exporter.clone();
    tokio::task::spawn_blocking(move || {
        block_on(e.export(Vec::new())).unwrap();
        e.force_flush().unwrap();
        e.shutdown().unwrap();
        assert!(
            e.shutdown().is_err(),
            "second shutdown reports AlreadyShutdown"
        );
    })
    .await
    .unwrap();
    let log = recorder.0.lock().unwrap().clone();
    assert_eq!(log, ["resource svc", "flush", "shutdown"]);
}

/// Drives a future on a thread of its own, as the SDK's processor thread does.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(f)
}

#[tokio::test(start_paused = true)]
async fn coalescing_waits_for_the_hinted_time_then_sends_one_request() {
    let controller = Controller::new(Default::default()).unwrap();
    controller.pin(Level::Moderate); // 1024 spans / 10 s
    let memory = InMemorySpanExporter::default();
    let (service, _) = ExportService::new(memory.clone());
    let stats = ExportStats::new();
    let service = service.with_stats(stats.clone());
    let layer = CoalesceLayer::new(controller.handle(), &Policy::default());
    let handle = layer.handle();
    let mut svc = layer.layer(service);
    // Three calls of 10 spans each.
    let spans: Vec<SpanData> = {
        let source = InMemorySpanExporter::default();
        let p = SdkTracerProvider::builder()
            .with_span_processor(SimpleSpanProcessor::new(source.clone()))
            .build();
        for _ in 0..10 {
            p.tracer("t").start("work");
        }
        source.get_finished_spans().unwrap()
    };
    for _ in 0..3 {
        svc.ready()
            .await
            .unwrap()
            .call(spans.clone())
            .await
            .unwrap();
    }
    assert_eq!(handle.buffered(), 30);
    assert!(memory.get_finished_spans().unwrap().is_empty());
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(
        memory.get_finished_spans().unwrap().is_empty(),
        "still waiting"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(memory.get_finished_spans().unwrap().len(), 30);
    assert_eq!((handle.calls(), handle.requests()), (3, 1));
    assert_eq!(stats.snapshot().requests, 1);

    // Back at Normal: calls pass straight through.
    controller.pin(Level::Normal);
    svc.ready()
        .await
        .unwrap()
        .call(spans.clone())
        .await
        .unwrap();
    assert_eq!(memory.get_finished_spans().unwrap().len(), 40);
    handle.force_flush().await.unwrap();
}

#[test]
fn a_budget_finds_its_period_at_once_after_years_of_idle() {
    use degrade_core::ManualClock;
    use degrade_otel::{BudgetUnit, TelemetryBudget};
    let stats = ExportStats::new();
    let clock = ManualClock::new();
    // A nanosecond period: one loop turn per elapsed period would be 3 * 10^18 turns here.
    let budget = TelemetryBudget::with_clock(
        stats.clone(),
        BudgetUnit::Spans,
        1,
        Duration::from_nanos(1),
        clock.clone(),
    )
    .unwrap();
    stats.record_exported(5, 1);
    clock.advance(Duration::from_secs(100 * 365 * 24 * 3600));
    assert_eq!(budget.used(), 0, "a new period");
    assert!((0.0..=1.0).contains(&budget.pressure()));

    // A period of Duration::MAX never rolls over, however long the idle.
    let forever = TelemetryBudget::with_clock(
        stats.clone(),
        BudgetUnit::Spans,
        10,
        Duration::MAX,
        clock.clone(),
    )
    .unwrap();
    stats.record_exported(3, 1);
    clock.advance(Duration::from_secs(400 * 365 * 24 * 3600));
    assert_eq!(forever.used(), 3);
    assert!((0.0..=1.0).contains(&forever.pressure()));

    // Periods stay aligned on the budget's start: 2.5 periods later, half a period in.
    let clock = ManualClock::new();
    let aligned = TelemetryBudget::with_clock(
        stats.clone(),
        BudgetUnit::Spans,
        100,
        Duration::from_secs(60),
        clock.clone(),
    )
    .unwrap();
    clock.advance(Duration::from_secs(150));
    stats.record_exported(10, 1);
    assert_eq!(
        aligned.used(),
        0,
        "counted from the start of the period it rolled into"
    );
    stats.record_exported(10, 1);
    assert_eq!(aligned.used(), 10);
    clock.advance(Duration::from_secs(29));
    assert_eq!(aligned.used(), 10, "still the third period");
    clock.advance(Duration::from_secs(1));
    assert_eq!(aligned.used(), 0, "the fourth period begins at 180 s");
}

#[test]
fn budget_rolls_over_each_period_and_backlog_tracks_the_processor() {
    use degrade_core::ManualClock;
    use degrade_otel::{BudgetUnit, TelemetryBudget};
    let stats = ExportStats::new();
    let clock = ManualClock::new();
    let budget = TelemetryBudget::with_clock(
        stats.clone(),
        BudgetUnit::Bytes,
        10_000,
        Duration::from_secs(60),
        clock.clone(),
    )
    .unwrap();
    stats.record_bytes(5_000);
    clock.advance(Duration::from_secs(30));
    assert_eq!(budget.used(), 5_000);
    assert_eq!(budget.pressure(), 1.0, "on course to spend it all");
    clock.advance(Duration::from_secs(31));
    assert_eq!(budget.used(), 0, "a new period");
    stats.record_bytes(1_000);
    clock.advance(Duration::from_secs(29));
    assert!(
        (budget.pressure() - 0.2).abs() < 0.01,
        "{}",
        budget.pressure()
    );
    assert!(
        TelemetryBudget::new(stats.clone(), BudgetUnit::Spans, 0, Duration::from_secs(1))
            .unwrap_err()
            .field()
            == "budget"
    );

    stats.record_offered(100);
    stats.record_drop(DropReason::SampledOut, 1_000); // before the processor: not backlog
    stats.record_exported(60, 1);
    stats.record_drop(DropReason::RateLimited, 10);
    assert_eq!(stats.backlog(), 30);
    assert_eq!(stats.backlog_pressure(60), 0.5);
    assert_eq!(stats.backlog_pressure(10), 1.0);
}
