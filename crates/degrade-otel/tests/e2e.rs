//! End to end through the SDK's real `BatchSpanProcessor` (its own thread, no runtime) to real
//! OTLP receivers on 127.0.0.1: opentelemetry-proto's tonic server and an axum `/v1/traces`.
#![cfg(all(feature = "grpc", feature = "http"))]

mod support;

use degrade_core::{Controller, Level, Policy};
use degrade_otel::sampler::threshold_for;
use degrade_otel::{DropReason, ExportService, ExportStats, ServiceExporter};
use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, Status, TraceContextExt, TraceId, Tracer, TracerProvider};
use std::collections::HashSet;
use std::time::Duration;
use support::*;
use tokio::runtime::Handle;

/// Emits `n` traces of a root and two children; returns the root trace ids.
fn emit_traces<T: Tracer>(tracer: &T, n: usize, error_every: usize) -> Vec<TraceId>
where
    T::Span: Send + Sync + 'static,
{
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let root = tracer.start("GET /orders");
        let cx = opentelemetry::Context::current_with_span(root);
        ids.push(cx.span().span_context().trace_id());
        {
            let mut db = tracer.start_with_context("db.query", &cx);
            db.set_attribute(KeyValue::new("db.system", "postgresql"));
            db.set_attribute(KeyValue::new("db.statement", "select * from orders"));
            db.end();
        }
        {
            let mut call = tracer.start_with_context("payments.charge", &cx);
            if error_every > 0 && i % error_every == 0 {
                call.set_status(Status::error("card declined"));
            }
            call.end();
        }
        cx.span().end();
    }
    ids
}

fn randomness(id: TraceId) -> u64 {
    let b = id.to_bytes();
    u64::from_be_bytes(b[8..].try_into().unwrap()) & ((1 << 56) - 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_spans_arrive_with_service_name() {
    let rx = grpc_receiver().await;
    let controller = Controller::new(Default::default()).unwrap();
    let stats = ExportStats::new();
    let exporter = grpc_service_exporter(rx.addr, &stats);
    let provider = provider(
        exporter,
        &controller.handle(),
        &Policy::default(),
        &stats,
        "checkout",
        64,
    );
    emit_traces(&provider.tracer("e2e"), 100, 0);
    shutdown(provider).await;

    let got = rx.stop().await;
    let st = got.lock();
    assert_eq!(st.spans.len(), 300);
    assert!(
        st.spans.iter().all(|s| s.service == "checkout"),
        "service.name forwarded"
    );
    assert!(
        st.spans.iter().all(|s| s.trace_state == "ot=th:0"),
        "{:?}",
        st.spans[0].trace_state
    );
    let snap = stats.snapshot();
    assert_eq!(
        (snap.offered, snap.exported, snap.dropped_total()),
        (300, 300, 0)
    );
    assert!(snap.bytes > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_spans_arrive_with_service_name() {
    let rx = http_receiver().await;
    let controller = Controller::new(Default::default()).unwrap();
    let stats = ExportStats::new();
    // opentelemetry-otlp's HTTP exporter, under an ExportService: set_resource must travel
    // through the ServiceExporter and the lifecycle handle.
    let otlp = otlp_http_exporter(rx.addr, hyper_client(), &stats);
    let (service, lifecycle) = ExportService::new(otlp);
    let service = service.with_stats(stats.clone());
    let exporter = ServiceExporter::new(service, Handle::current())
        .lifecycle(lifecycle)
        .stats(stats.clone());
    let provider = provider(
        exporter,
        &controller.handle(),
        &Policy::default(),
        &stats,
        "search",
        64,
    );
    emit_traces(&provider.tracer("e2e"), 50, 0);
    shutdown(provider).await;

    let got = rx.stop().await;
    let st = got.lock();
    assert_eq!(st.spans.len(), 150);
    assert!(st.spans.iter().all(|s| s.service == "search"));
    assert_eq!(stats.snapshot().exported, 150);
    assert!(
        stats.snapshot().bytes > 0,
        "request bytes counted by the client"
    );
}

/// At Heavy (ratio 0.01) 50,000 traces: the kept volume is binomial(50,000, 0.01), mean 500,
/// standard deviation 22.2; ±20 % is ±4.5 sd. Beyond the count, the kept set is *exactly* the
/// traces whose 56-bit randomness clears the threshold, and every kept trace is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_keeps_the_policy_ratio_of_whole_traces() {
    let rx = grpc_receiver().await;
    let controller = Controller::new(Default::default()).unwrap();
    controller.pin(Level::Heavy);
    let stats = ExportStats::new();
    let exporter = grpc_service_exporter(rx.addr, &stats);
    let policy = Policy::default();
    let provider = provider(
        exporter,
        &controller.handle(),
        &policy,
        &stats,
        "orders",
        512,
    );
    let ids = emit_traces(&provider.tracer("e2e"), 50_000, 0);
    shutdown(provider).await;

    let threshold = threshold_for(policy.heavy.sampling).unwrap();
    let expected: HashSet<Vec<u8>> = ids
        .iter()
        .filter(|id| randomness(**id) >= threshold)
        .map(|id| id.to_bytes().to_vec())
        .collect();
    let got = rx.stop().await;
    let traces = got.traces();
    let kept = traces.len();
    eprintln!("heavy: {kept} of 50000 traces kept (expected 500 ± 100)");
    assert!((400..=600).contains(&kept), "kept {kept}");
    let received: HashSet<Vec<u8>> = traces.keys().cloned().collect();
    assert_eq!(
        received, expected,
        "the consistent decision, trace by trace"
    );
    for (id, spans) in &traces {
        assert_eq!(spans.len(), 3, "trace {id:?} is whole");
        assert!(
            spans
                .iter()
                .all(|s| s.trace_state == "ot=th:fd70a3d70a3d71")
        );
        // Heavy drops verbose attributes: db.statement is not on the allow-list.
        let db = spans.iter().find(|s| s.name == "db.query").unwrap();
        assert_eq!(db.attributes, ["db.system"]);
    }
    assert_eq!(
        stats.snapshot().dropped(DropReason::SampledOut),
        50_000 - kept as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emergency_exports_error_spans_only() {
    let rx = http_receiver().await;
    let controller = Controller::new(Default::default()).unwrap();
    controller.pin(Level::Emergency);
    let stats = ExportStats::new();
    let exporter = otlp_http_exporter(rx.addr, hyper_client(), &stats);
    let provider = provider(
        exporter,
        &controller.handle(),
        &Policy::default(),
        &stats,
        "orders",
        64,
    );
    emit_traces(&provider.tracer("e2e"), 300, 3);
    shutdown(provider).await;

    let got = rx.stop().await;
    let st = got.lock();
    assert_eq!(st.spans.len(), 100, "one error span in every third trace");
    assert!(
        st.spans
            .iter()
            .all(|s| s.is_error && s.name == "payments.charge")
    );
    assert_eq!(stats.snapshot().dropped(DropReason::NotError), 800);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn level_changes_apply_without_rebuilding() {
    let rx = grpc_receiver().await;
    let controller = Controller::new(Default::default()).unwrap();
    let stats = ExportStats::new();
    let exporter = grpc_service_exporter(rx.addr, &stats);
    let provider = provider(
        exporter,
        &controller.handle(),
        &Policy::default(),
        &stats,
        "orders",
        128,
    );
    let tracer = provider.tracer("e2e");
    emit_traces(&tracer, 100, 0);
    controller.pin(Level::Emergency);
    emit_traces(&tracer, 100, 10);
    controller.pin(Level::Normal);
    emit_traces(&tracer, 100, 0);
    shutdown(provider).await;
    let got = rx.stop().await;
    assert_eq!(got.span_count(), 300 + 10 + 300);
}

/// A breaker under the gRPC exporter, on the tonic channel itself: once it is open, its
/// rejection reaches the exporter inside the status's source, the exporter does not retry a
/// local rejection, and the drop is counted as `circuit_open`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_level_breaker_rejections_are_not_retried_and_counted() {
    use degrade_breaker::{BreakerConfig, BreakerLayer, WindowConfig};
    use degrade_otel::grpc::{GrpcRetry, GrpcSpanExporter};
    use tower_layer::Layer;

    // A port with nothing listening: take one, then close it.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut config = BreakerConfig::default();
    config.window = WindowConfig::Consecutive { failures: 1 };
    config.wait = Duration::from_secs(600);
    config.backoff.max_wait = config.wait;
    let breaker = BreakerLayer::new(config).unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let stats = ExportStats::new();
    let mut retry = GrpcRetry::default();
    retry.max_retries = 3;
    let grpc = GrpcSpanExporter::new(breaker.layer(channel), Handle::current())
        .retry(retry)
        .stats(stats.clone());
    let probe = grpc.clone();
    let lifecycle = grpc.lifecycle();
    let exporter = ServiceExporter::new(grpc, Handle::current())
        .lifecycle(lifecycle)
        .stats(stats.clone());
    let controller = Controller::new(Default::default()).unwrap();
    let provider = provider(
        exporter,
        &controller.handle(),
        &Policy::default(),
        &stats,
        "orders",
        64,
    );
    provider.tracer("t").start("work");
    let p = provider.clone();
    let _ = tokio::task::spawn_blocking(move || p.force_flush())
        .await
        .unwrap();
    // First attempt: connection refused (UNAVAILABLE), the breaker opens; the retry meets
    // the open breaker and stops there.
    assert_eq!(
        probe.attempts(),
        2,
        "one failure, one local rejection, no further retry"
    );
    assert_eq!(stats.snapshot().dropped(DropReason::CircuitOpen), 1);
    provider.tracer("t").start("work");
    let p = provider.clone();
    let _ = tokio::task::spawn_blocking(move || p.force_flush())
        .await
        .unwrap();
    assert_eq!(
        probe.attempts(),
        3,
        "open: one attempt, rejected locally at once"
    );
    assert_eq!(stats.snapshot().dropped(DropReason::CircuitOpen), 2);
    shutdown(provider).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_metadata_reaches_the_collector() {
    let rx = grpc_receiver().await;
    let stats = ExportStats::new();
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert("x-api-key", "secret".parse().unwrap());
    let grpc = grpc_exporter(rx.addr, &stats).metadata(metadata);
    let controller = Controller::new(Default::default()).unwrap();
    let provider = provider(
        grpc,
        &controller.handle(),
        &Policy::default(),
        &stats,
        "orders",
        64,
    );
    provider.tracer("t").start("work");
    shutdown(provider).await;
    let got = rx.stop().await;
    assert_eq!(got.lock().api_key.as_deref(), Some("secret"));
    assert_eq!(got.span_count(), 1);
}
