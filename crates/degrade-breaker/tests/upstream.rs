//! A real upstream on 127.0.0.1 that fails every request, called through the breaker (HTTP
//! mode, HTTP classifier) over several client connections whose services are clones of one
//! breaker. Checks, with counts taken at the upstream itself: the breaker opens after the
//! minimum number of calls, fails fast while open (no upstream call), probes after the wait,
//! closes once the upstream recovers, and offered = passed + rejected exactly.
#![cfg(feature = "http")]

use axum::Router;
use axum::routing::get;
use degrade_breaker::{BreakerConfig, BreakerLayer, State, WindowConfig};
use degrade_core::{BoxError, HttpClassifier, ManualClock};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tower::{Layer, Service, ServiceExt};

const CONNECTIONS: usize = 4;
const WAIT: Duration = Duration::from_secs(30);

struct Upstream {
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
    healthy: Arc<AtomicBool>,
}

async fn upstream() -> Upstream {
    let hits = Arc::new(AtomicU64::new(0));
    let healthy = Arc::new(AtomicBool::new(false));
    let (h, ok) = (hits.clone(), healthy.clone());
    let app = Router::new().route(
        "/",
        get(move || {
            let (h, ok) = (h.clone(), ok.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                if ok.load(Ordering::SeqCst) {
                    (http::StatusCode::OK, "ok")
                } else {
                    (http::StatusCode::INTERNAL_SERVER_ERROR, "down")
                }
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Upstream {
        addr,
        hits,
        healthy,
    }
}

/// A client over one dedicated HTTP/1 connection, as a tower service.
async fn connection(
    addr: SocketAddr,
) -> impl Service<
    http::Request<String>,
    Response = http::Response<String>,
    Error = BoxError,
    Future: Send,
> + Clone {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let sender = Arc::new(Mutex::new(sender));
    tower::service_fn(move |req: http::Request<String>| {
        let sender = sender.clone();
        async move {
            let mut sender = sender.lock().await;
            sender.ready().await?;
            let res = sender.send_request(req).await?;
            let (parts, body) = res.into_parts();
            let body = String::from_utf8(body.collect().await?.to_bytes().to_vec())?;
            Ok::<_, BoxError>(http::Response::from_parts(parts, body))
        }
    })
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    ok: u64,
    failed: u64,
    rejected: u64,
}

impl Tally {
    fn sent(&self) -> u64 {
        self.ok + self.failed + self.rejected
    }
    fn add(&mut self, o: Tally) {
        self.ok += o.ok;
        self.failed += o.failed;
        self.rejected += o.rejected;
    }
}

async fn send<S>(svc: &mut S, n: usize) -> Tally
where
    S: Service<http::Request<String>, Response = http::Response<String>, Error = BoxError>,
{
    let mut t = Tally::default();
    for _ in 0..n {
        let req = http::Request::get("/")
            .header("host", "localhost")
            .body(String::new())
            .unwrap();
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        match res.status().as_u16() {
            200 => t.ok += 1,
            500 => t.failed += 1,
            503 => {
                assert_eq!(res.headers()["degrade-rejection"], "circuit_open");
                assert!(res.headers().contains_key("retry-after"));
                t.rejected += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    t
}

/// Every connection sends `n` requests at the same time.
async fn burst<S>(clients: &[S], n: usize) -> Tally
where
    S: Service<http::Request<String>, Response = http::Response<String>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let tasks: Vec<_> = clients
        .iter()
        .map(|c| {
            let mut c = c.clone();
            tokio::spawn(async move { send(&mut c, n).await })
        })
        .collect();
    let mut total = Tally::default();
    for t in tasks {
        total.add(t.await.unwrap());
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_protects_and_recovers_with_a_real_failing_upstream() {
    let up = upstream().await;
    let clock = ManualClock::new();
    let mut config = BreakerConfig::default();
    config.window = WindowConfig::Count { size: 20 };
    config.minimum_calls = 10;
    config.failure_rate = 0.5;
    config.wait = WAIT;
    config.half_open.permits = 1;
    config.half_open.successes = 3;
    let layer = BreakerLayer::builder(config)
        .classifier(HttpClassifier::default())
        .clock(clock.clone())
        .name("upstream")
        .build()
        .unwrap()
        .http();
    let handle = layer.handle();
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(layer.layer(connection(up.addr).await));
    }
    let mut total = Tally::default();

    // 1. One request at a time, round robin over the connections: exactly the minimum number
    //    of calls reaches the upstream, then the breaker opens.
    let mut sequential = Tally::default();
    for i in 0..12 {
        sequential.add(send(&mut clients[i % CONNECTIONS], 1).await);
    }
    assert_eq!(up.hits.load(Ordering::SeqCst), 10);
    assert_eq!(
        sequential,
        Tally {
            ok: 0,
            failed: 10,
            rejected: 2
        }
    );
    assert_eq!(handle.state(), State::Open);
    total.add(sequential);

    // 2. Open: every connection hammers it; not one request reaches the upstream.
    let open = burst(&clients, 50).await;
    assert_eq!(
        open,
        Tally {
            ok: 0,
            failed: 0,
            rejected: 200
        }
    );
    assert_eq!(up.hits.load(Ordering::SeqCst), 10);
    total.add(open);

    // 3. After the wait, one probe reaches the still-failing upstream and reopens the breaker.
    clock.advance(WAIT);
    let probe = burst(&clients, 10).await;
    assert_eq!(
        probe,
        Tally {
            ok: 0,
            failed: 1,
            rejected: 39
        }
    );
    assert_eq!(up.hits.load(Ordering::SeqCst), 11);
    assert_eq!(handle.state(), State::Open);
    total.add(probe);

    // 4. The upstream recovers; after the next wait three probes close the breaker.
    up.healthy.store(true, Ordering::SeqCst);
    clock.advance(WAIT);
    let mut probes = Tally::default();
    for i in 0..3 {
        probes.add(send(&mut clients[i % CONNECTIONS], 1).await);
    }
    assert_eq!(
        probes,
        Tally {
            ok: 3,
            failed: 0,
            rejected: 0
        }
    );
    assert_eq!(handle.state(), State::Closed);
    total.add(probes);
    let closed = burst(&clients, 50).await;
    assert_eq!(
        closed,
        Tally {
            ok: 200,
            failed: 0,
            rejected: 0
        }
    );
    total.add(closed);

    // Accounting, exactly: at the client, at the breaker and at the upstream.
    let s = handle.snapshot();
    assert_eq!(s.offered(), total.sent());
    assert_eq!(s.admitted, total.ok + total.failed);
    assert_eq!(s.rejected, total.rejected);
    assert_eq!(s.admitted, up.hits.load(Ordering::SeqCst));
    assert_eq!(
        (s.successes, s.failures, s.in_flight()),
        (total.ok, total.failed, 0)
    );
    assert_eq!(s.transitions, 5); // open, half-open, open, half-open, closed
}
