//! The collector goes away and comes back. The breaker opens, the application does not notice
//! (its per-request latency is measured and printed), the exporter's memory stays bounded, and
//! spans flow again once the collector is back: the batch processor's worker thread survived.
//!
//! One test in its own process, so the resident-memory reading is not disturbed by others.
#![cfg(all(feature = "grpc", target_os = "linux"))]

mod support;

use degrade_breaker::{BreakerConfig, BreakerLayer, State, WindowConfig};
use degrade_core::{Controller, Policy};
use degrade_otel::grpc::GrpcRetry;
use degrade_otel::{DropReason, ExportStats, ServiceExporter};
use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, Tracer, TracerProvider};
use std::time::{Duration, Instant};
use support::*;
use tokio::runtime::Handle;
use tower_layer::Layer;

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// `n` application requests, each making one span with a few attributes; returns latencies.
fn requests<T: Tracer>(tracer: &T, n: usize) -> Vec<Duration> {
    let payload = "x".repeat(200);
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let mut span = tracer.start("GET /orders");
        span.set_attribute(KeyValue::new("http.route", "/orders"));
        span.set_attribute(KeyValue::new("order.id", i as i64));
        span.set_attribute(KeyValue::new("payload", payload.clone()));
        // A little work standing for the handler.
        let mut h = 0u64;
        for b in payload.bytes() {
            h = h.wrapping_mul(31).wrapping_add(u64::from(b));
        }
        std::hint::black_box(h);
        span.end();
        lat.push(t.elapsed());
    }
    lat
}

fn p99(mut lat: Vec<Duration>) -> Duration {
    lat.sort();
    lat[lat.len() * 99 / 100]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_outage_opens_the_breaker_and_spans_flow_again() {
    let rx = grpc_receiver().await;
    let addr = rx.addr;
    let controller = Controller::new(Default::default()).unwrap();
    let stats = ExportStats::new();

    let mut config = BreakerConfig::default();
    config.window = WindowConfig::Consecutive { failures: 3 };
    config.wait = Duration::from_millis(300);
    config.half_open.successes = 1;
    let breaker = BreakerLayer::new(config).unwrap();
    let breaker_handle = breaker.handle();
    let grpc = grpc_exporter(addr, &stats)
        .retry(GrpcRetry::none())
        .attempt_timeout(Duration::from_secs(2));
    let lifecycle = grpc.lifecycle();
    let exporter = ServiceExporter::new(breaker.layer(grpc), Handle::current())
        .lifecycle(lifecycle)
        .stats(stats.clone())
        .timeout(Duration::from_secs(5));
    let provider = provider_with_queue(
        exporter,
        &controller.handle(),
        &Policy::default(),
        &stats,
        "orders",
        256,
        2048,
    );
    let tracer = provider.tracer("app");

    // Phase 1: collector up; 10 bursts of 1,000 (each fits the processor's queue).
    let received = rx.received.clone();
    let mut up = Vec::new();
    for burst in 1..=10 {
        let t = tracer.clone();
        up.extend(
            tokio::task::spawn_blocking(move || requests(&t, 1_000))
                .await
                .unwrap(),
        );
        received
            .wait_until(Duration::from_secs(30), |s| s.spans.len() == burst * 1_000)
            .await;
    }
    assert!(
        received.span_count() == 10_000,
        "all spans exported while the collector is up ({})",
        received.span_count()
    );

    // Phase 2: collector down.
    let received = rx.stop().await;
    let rss_before = rss_kib();
    let t = tracer.clone();
    let down = tokio::task::spawn_blocking(move || requests(&t, 100_000))
        .await
        .unwrap();
    // The processor keeps exporting (and failing) in the background; wait for the breaker.
    let end = Instant::now() + Duration::from_secs(30);
    while stats.snapshot().dropped(DropReason::CircuitOpen) == 0 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss_after = rss_kib();
    let snap = stats.snapshot();
    assert!(
        snap.dropped(DropReason::CircuitOpen) > 0,
        "breaker rejected exports: {snap:?}"
    );
    assert!(
        snap.dropped(DropReason::ExportFailed) > 0,
        "failures before it opened"
    );
    assert_ne!(breaker_handle.state(), State::Closed);

    // Phase 3: collector back on the same address.
    let rx = grpc_receiver_on(addr, received.clone()).await;
    let before = received.span_count();
    let mut back = Vec::new();
    let end = Instant::now() + Duration::from_secs(60);
    while received.span_count() < before + 1_000 && Instant::now() < end {
        let t = tracer.clone();
        back.extend(
            tokio::task::spawn_blocking(move || requests(&t, 200))
                .await
                .unwrap(),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resumed = received.span_count() - before;
    let snap = stats.snapshot();
    eprintln!(
        "collector down: p99 up {:?}, down {:?}, back {:?}; RSS {} -> {} KiB over 100,000 spans \
         (~{} KiB of span data); resumed with {resumed} spans; drops {{circuit_open: {}, export_failed: {}}}",
        p99(up),
        p99(down),
        p99(back),
        rss_before,
        rss_after,
        100_000 * 300 / 1024,
        snap.dropped(DropReason::CircuitOpen),
        snap.dropped(DropReason::ExportFailed),
    );
    assert!(
        resumed >= 1_000,
        "spans flow again after the collector returned ({resumed})"
    );
    assert_eq!(breaker_handle.state(), State::Closed);
    // 100,000 spans of ~300 bytes of attributes would be ~30 MiB (more as SpanData) if kept;
    // the processor's queue (2,048 spans here) and the open breaker bound it.
    assert!(
        rss_after.saturating_sub(rss_before) < 16 * 1024,
        "RSS grew {} KiB",
        rss_after - rss_before
    );
    shutdown(provider).await;
    rx.stop().await;
}
