//! The layer behind a real axum server on 127.0.0.1, driven through many separate client
//! connections: axum clones the service per connection, so this checks that all of them spend
//! one budget (tower's own `RateLimit` keeps one per clone and admits everything here).
#![cfg(feature = "http")]

use axum::Router;
use axum::routing::get;
use degrade_core::ManualClock;
use degrade_ratelimit::error::Cause;
use degrade_ratelimit::key::HeaderKey;
use degrade_ratelimit::{KeysConfig, RateLimitConfig, RateLimitLayer};
use http_body_util::BodyExt;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;

const CONNECTIONS: usize = 16;

async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn connect(addr: SocketAddr) -> SendRequest<String> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// Sends `n` requests on one connection; returns (200s, 429s). Every 429 must carry the
/// headers a client needs.
async fn burst(sender: &mut SendRequest<String>, n: usize, tenant: &str) -> (u64, u64) {
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..n {
        let req = http::Request::get("/")
            .header("host", "localhost")
            .header("x-tenant", tenant)
            .body(String::new())
            .unwrap();
        sender.ready().await.unwrap();
        let res = sender.send_request(req).await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        res.into_body().collect().await.unwrap();
        match status {
            200 => ok += 1,
            429 => {
                assert!(headers.contains_key("retry-after"));
                assert!(headers.contains_key("ratelimit-policy"));
                assert!(headers.contains_key("ratelimit"));
                limited += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    (ok, limited)
}

async fn round(senders: &mut [SendRequest<String>], per_conn: usize, tenant: &str) -> (u64, u64) {
    let tasks: Vec<_> = senders
        .iter_mut()
        .map(|s| burst(s, per_conn, tenant))
        .collect();
    futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_spends_one_shared_budget() {
    let clock = ManualClock::new();
    let quota = 100;
    let burst_size = 50;
    let layer = RateLimitLayer::builder(
        RateLimitConfig::per(quota, Duration::from_secs(1)).burst(burst_size),
    )
    .clock(clock.clone())
    .build()
    .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer.clone().http());
    let addr = serve(app).await;
    let mut senders = Vec::new();
    for _ in 0..CONNECTIONS {
        senders.push(connect(addr).await);
    }

    // Time stands still: 16 connections × 25 requests, and exactly the burst gets through.
    let (ok, limited) = round(&mut senders, 25, "a").await;
    assert_eq!(ok, burst_size);
    assert_eq!(ok + limited, (CONNECTIONS * 25) as u64);

    // One second in 10 ms steps, every connection asking at each step: the budget refills one
    // unit per step, so admitted = quota × t exactly (≤ quota × t + burst, and the offered load
    // is far above it).
    let mut admitted = 0;
    for _ in 0..100 {
        clock.advance(Duration::from_millis(10));
        admitted += round(&mut senders, 2, "a").await.0;
    }
    assert_eq!(admitted, quota);
    let snap = layer.snapshot();
    assert_eq!(snap.admitted, quota + burst_size);
    assert_eq!(
        snap.offered(),
        (CONNECTIONS * 25 + 100 * CONNECTIONS * 2) as u64
    );
    assert_eq!(
        snap.offered(),
        snap.admitted + snap.rejected_by(Cause::OverQuota)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_key_gives_each_tenant_its_own_budget_across_connections() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder(RateLimitConfig::per(10, Duration::from_secs(1)).burst(5))
        .clock(clock.clone())
        .keyed(HeaderKey::new("x-tenant").unwrap(), KeysConfig::default())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer.clone().http());
    let addr = serve(app).await;
    let mut senders = Vec::new();
    for _ in 0..CONNECTIONS {
        senders.push(connect(addr).await);
    }
    for tenant in ["acme", "globex", "initech"] {
        let (ok, _) = round(&mut senders, 4, tenant).await;
        assert_eq!(ok, 5, "{tenant}");
    }
    assert_eq!(layer.snapshot().keys, 3);
}
