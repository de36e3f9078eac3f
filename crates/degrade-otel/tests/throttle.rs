//! A throttling collector (HTTP 429 + Retry-After, gRPC RESOURCE_EXHAUSTED + RetryInfo) and a
//! local rate limit: the backoff is honoured, and the receiver sees no doubled attempts (one
//! retry owner).
//!
//! The delay checks are lower bounds on the gap between two attempts at the receiver: a
//! loaded machine can only make the gap longer.
#![cfg(all(feature = "grpc", feature = "http"))]

mod support;

use degrade_core::{Controller, Policy};
use degrade_otel::ExportStats;
use degrade_otel::grpc::GrpcRetry;
use degrade_ratelimit::{RateLimitConfig, RateLimitLayer};
use opentelemetry::trace::{Tracer, TracerProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::time::Duration;
use support::*;
use tower_layer::Layer;

async fn flush(provider: &SdkTracerProvider) {
    let p = provider.clone();
    tokio::task::spawn_blocking(move || p.force_flush())
        .await
        .unwrap()
        .unwrap();
}

fn gap(st: &State, i: usize) -> Duration {
    st.attempts[i + 1].0 - st.attempts[i].0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_429_retry_after_is_honoured_once() {
    let rx = http_receiver().await;
    rx.received
        .script([Answer::Throttle(Duration::from_secs(1))]);
    let controller = Controller::new(Default::default()).unwrap();
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
    for _ in 0..10 {
        provider.tracer("t").start("work");
    }
    flush(&provider).await;
    shutdown(provider).await;

    let got = rx.stop().await;
    let st = got.lock();
    assert_eq!(
        st.attempts.len(),
        2,
        "one throttled attempt, one retry: {:?}",
        st.attempts
    );
    assert_eq!(st.spans.len(), 10);
    eprintln!("http 429 Retry-After: 1 -> retry after {:?}", gap(&st, 0));
    assert!(gap(&st, 0) >= Duration::from_millis(950));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_resource_exhausted_with_retry_info_is_honoured_once() {
    let rx = grpc_receiver().await;
    rx.received
        .script([Answer::Throttle(Duration::from_secs(1))]);
    let controller = Controller::new(Default::default()).unwrap();
    let stats = ExportStats::new();
    let grpc = grpc_exporter(rx.addr, &stats);
    let probe = grpc.clone();
    let provider = provider(
        grpc,
        &controller.handle(),
        &Policy::default(),
        &stats,
        "orders",
        64,
    );
    for _ in 0..10 {
        provider.tracer("t").start("work");
    }
    flush(&provider).await;
    shutdown(provider).await;

    let got = rx.stop().await;
    let st = got.lock();
    assert_eq!(st.attempts.len(), 2, "{:?}", st.attempts);
    assert_eq!(probe.attempts(), 2);
    assert_eq!(st.spans.len(), 10);
    eprintln!(
        "grpc RESOURCE_EXHAUSTED + RetryInfo 1s -> retry after {:?}",
        gap(&st, 0)
    );
    assert!(gap(&st, 0) >= Duration::from_millis(950));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_retries_with_backoff_then_gives_up() {
    let rx = grpc_receiver().await;
    rx.received.script([
        Answer::Unavailable,
        Answer::Unavailable,
        Answer::Unavailable,
    ]);
    let controller = Controller::new(Default::default()).unwrap();
    let stats = ExportStats::new();
    let mut retry = GrpcRetry::default();
    retry.max_retries = 2;
    let grpc = grpc_exporter(rx.addr, &stats).retry(retry);
    let provider = provider(
        grpc,
        &controller.handle(),
        &Policy::default(),
        &stats,
        "orders",
        64,
    );
    provider.tracer("t").start("work");
    let p = provider.clone();
    let flushed = tokio::task::spawn_blocking(move || p.force_flush())
        .await
        .unwrap();
    assert!(
        flushed.is_err(),
        "the failed export is reported to the processor"
    );
    shutdown(provider).await;
    let got = rx.stop().await;
    let st = got.lock();
    assert_eq!(
        st.attempts.len(),
        3,
        "first try and exactly max_retries retries"
    );
    assert!(st.spans.is_empty());
    assert!(gap(&st, 0) >= Duration::from_millis(100));
    assert!(
        gap(&st, 1) >= Duration::from_millis(200),
        "the delay doubles"
    );
}

/// A local rate limit in the HTTP client's stack rejects the second export; the client turns
/// the rejection into 429 + Retry-After, and opentelemetry-otlp's own retry loop waits that
/// long. The receiver gets exactly two requests, both accepted: nothing was sent only to be
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_rate_limit_becomes_a_retry_after_for_the_exporter() {
    let rx = http_receiver().await;
    let controller = Controller::new(Default::default()).unwrap();
    let stats = ExportStats::new();
    let limit =
        RateLimitLayer::new(RateLimitConfig::per(1, Duration::from_secs(2)).burst(1)).unwrap();
    let exporter = otlp_http_exporter(rx.addr, limit.layer(hyper_client()), &stats);
    let provider = provider(
        exporter,
        &controller.handle(),
        &Policy::default(),
        &stats,
        "orders",
        64,
    );
    provider.tracer("t").start("first");
    flush(&provider).await;
    provider.tracer("t").start("second");
    flush(&provider).await;
    shutdown(provider).await;

    let got = rx.stop().await;
    let st = got.lock();
    assert_eq!(st.attempts.len(), 2, "{:?}", st.attempts);
    assert_eq!(st.accepted_requests, [1, 1]);
    eprintln!("local rate limit -> second request after {:?}", gap(&st, 0));
    assert!(gap(&st, 0) >= Duration::from_millis(1_500));
}
