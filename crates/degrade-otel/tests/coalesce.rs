//! Batch hints at Heavy: the coalescing layer merges the processor's small export calls into
//! fewer, larger OTLP requests carrying the same spans, and shutdown drains what it holds.
//! Also: the span rate limit (cost = batch length) in the same stack.
#![cfg(all(feature = "grpc", feature = "ratelimit"))]

mod support;

use degrade_core::{Controller, Level, Policy};
use degrade_otel::ratelimit::spans_per_second;
use degrade_otel::{CoalesceLayer, DropReason, ExportStats, ServiceExporter};
use opentelemetry::trace::{Tracer, TracerProvider};
use std::time::Duration;
use support::*;
use tokio::runtime::Handle;
use tower::ServiceBuilder;

/// The default policy, but sampling everything at every level: only the batch hints act.
fn hints_only() -> Policy {
    let mut p = Policy::default();
    for l in Level::ALL {
        let lp = p.level_mut(l);
        lp.sampling = 1.0;
        lp.errors_only = false;
        lp.drop_verbose_attributes = false;
        // A wait no loaded CI box reaches: the merge is decided by size and by the shutdown
        // drain only.
        if lp.batch_wait.is_some() {
            lp.batch_wait = Some(Duration::from_secs(3_600));
        }
    }
    p
}

async fn emit(
    provider: &opentelemetry_sdk::trace::SdkTracerProvider,
    n: usize,
    received: &Received,
    until: usize,
) {
    let tracer = provider.tracer("t");
    for _ in 0..n / 200 {
        for _ in 0..200 {
            tracer.start("work");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let p = provider.clone();
    tokio::task::spawn_blocking(move || p.force_flush())
        .await
        .unwrap()
        .unwrap();
    if until > 0 {
        assert!(
            received
                .wait_until(Duration::from_secs(30), |s| s.spans.len() >= until)
                .await
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_merges_exports_into_fewer_larger_requests_and_drains_at_shutdown() {
    let rx = grpc_receiver().await;
    let controller = Controller::new(Default::default()).unwrap();
    let policy = hints_only();
    let stats = ExportStats::new();
    let coalesce = CoalesceLayer::new(controller.handle(), &policy).stats(stats.clone());
    let drain = coalesce.handle();
    let grpc = grpc_exporter(rx.addr, &stats);
    let lifecycle = grpc.lifecycle();
    let stack = ServiceBuilder::new()
        .layer(coalesce)
        .layer(spans_per_second(1_000_000, 16_384).unwrap())
        .service(grpc);
    let exporter = ServiceExporter::new(stack, Handle::current())
        .lifecycle(drain.clone())
        .lifecycle(lifecycle)
        .stats(stats.clone());
    let provider = provider(
        exporter,
        &controller.handle(),
        &policy,
        &stats,
        "orders",
        64,
    );

    // Normal: no hints, every export call is one request.
    emit(&provider, 4_000, &rx.received, 4_000).await;
    let normal: Vec<usize> = rx.received.lock().accepted_requests.clone();

    // Heavy: 2048 spans (the wait is out of reach here, see `hints_only`).
    controller.pin(Level::Heavy);
    emit(&provider, 4_000, &rx.received, 0).await;
    // force_flush through the ServiceExporter drains nothing here: the SDK's processor does not
    // call the exporter's force_flush. 2048 went out when the buffer filled; the rest waits.
    assert_eq!(drain.buffered(), 4_000 - 2_048);
    shutdown(provider).await;

    let got = rx.stop().await;
    let st = got.lock();
    let heavy = &st.accepted_requests[normal.len()..];
    eprintln!(
        "coalescing: Normal {} requests (max {} spans), Heavy {} requests {:?}; {} spans received",
        normal.len(),
        normal.iter().max().unwrap(),
        heavy.len(),
        heavy,
        st.spans.len()
    );
    assert_eq!(
        st.spans.len(),
        8_000,
        "nothing lost, the shutdown drained the buffer"
    );
    assert_eq!(heavy, [2_048, 1_952]);
    assert!(normal.len() >= 4_000 / 64);
    assert_eq!(stats.snapshot().dropped_total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn span_rate_limit_drops_whole_batches_and_counts_them() {
    let rx = grpc_receiver().await;
    let controller = Controller::new(Default::default()).unwrap();
    let stats = ExportStats::new();
    let grpc = grpc_exporter(rx.addr, &stats);
    let lifecycle = grpc.lifecycle();
    // 100 spans per second, burst 200: of 2,000 spans offered at once, about 200 pass.
    let stack = ServiceBuilder::new()
        .layer(spans_per_second(100, 200).unwrap())
        .service(grpc);
    let exporter = ServiceExporter::new(stack, Handle::current())
        .lifecycle(lifecycle)
        .stats(stats.clone());
    let policy = hints_only();
    let provider = provider(
        exporter,
        &controller.handle(),
        &policy,
        &stats,
        "orders",
        50,
    );
    let tracer = provider.tracer("t");
    for _ in 0..2_000 {
        tracer.start("work");
    }
    shutdown(provider).await;
    let got = rx.stop().await;
    let received = got.span_count() as u64;
    let snap = stats.snapshot();
    eprintln!(
        "rate limit: {received} received, {} rate limited",
        snap.dropped(DropReason::RateLimited)
    );
    assert_eq!(received + snap.dropped(DropReason::RateLimited), 2_000);
    assert!((50..2_000).contains(&received), "{received}");
}
