//! `DegradeLayer` behind a real axum server on 127.0.0.1, driven through several separate client
//! connections (axum clones the service per connection, so this checks that every clone shares
//! one level and one set of counters).
#![cfg(feature = "http")]

use axum::Router;
use axum::routing::get;
use degrade_core::priority::HeaderPriority;
use degrade_core::{Controller, DegradeLayer, Level, Policy, Priority};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use tokio::net::TcpListener;

const CONNECTIONS: usize = 8;
const REQUESTS_PER_LEVEL: usize = 10_000;

async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Per priority: (200 responses, 503 responses carrying Retry-After).
type Tally = [(u64, u64); 5];

/// Sends `n` requests over one dedicated HTTP/1 connection, cycling through the priorities.
async fn client(addr: SocketAddr, n: usize, offset: usize) -> Tally {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut tally = [(0, 0); 5];
    for i in 0..n {
        let p = Priority::ALL[(i + offset) % 5];
        let req = http::Request::get("/")
            .header("host", "localhost")
            .header("x-priority", p.as_str())
            .body(String::new())
            .unwrap();
        sender.ready().await.unwrap();
        let res = sender.send_request(req).await.unwrap();
        let status = res.status();
        let retry_after = res.headers().get("retry-after").cloned();
        let reason = res.headers().get("degrade-rejection").cloned();
        res.into_body().collect().await.unwrap();
        match status.as_u16() {
            200 => tally[p.index()].0 += 1,
            503 => {
                assert_eq!(retry_after.unwrap(), "1");
                assert_eq!(reason.unwrap(), "shed");
                tally[p.index()].1 += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admitted_share_per_priority_matches_the_policy_at_every_level() {
    let controller = Controller::new(Default::default()).unwrap();
    let policy = Policy::default();
    let layer = DegradeLayer::builder(controller.handle())
        .admission(degrade_core::degrade::Admission::LevelShares)
        .policy(policy.clone())
        .prioritize(HeaderPriority::new("x-priority", Priority::Normal).unwrap())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer.clone().http());
    let addr = serve(app).await;

    for level in Level::ALL {
        controller.pin(level);
        let before = layer.snapshot();
        let per_conn = REQUESTS_PER_LEVEL / CONNECTIONS;
        let tasks: Vec<_> = (0..CONNECTIONS)
            .map(|c| tokio::spawn(client(addr, per_conn, c)))
            .collect();
        let mut total: Tally = [(0, 0); 5];
        for t in tasks {
            for (acc, x) in total.iter_mut().zip(t.await.unwrap()) {
                acc.0 += x.0;
                acc.1 += x.1;
            }
        }
        let after = layer.snapshot();

        let mut offered = 0;
        for p in Priority::ALL {
            let (ok, shed) = total[p.index()];
            let sent = ok + shed;
            offered += sent;
            let share = ok as f64 / sent as f64;
            let want = policy.level(level).admit.get(p);
            assert!(
                (share - want).abs() <= 0.02,
                "{level}/{p}: admitted share {share:.4}, policy {want}"
            );
            // The server's counters agree with what the clients saw, request for request.
            assert_eq!(
                after.admitted_by(p) - before.admitted_by(p),
                ok,
                "{level}/{p}"
            );
            assert_eq!(
                after.shed_at(level, p) - before.shed_at(level, p),
                shed,
                "{level}/{p}"
            );
        }
        assert_eq!(offered, (per_conn * CONNECTIONS) as u64);
        assert_eq!(after.offered() - before.offered(), offered);
        assert_eq!(
            after.offered(),
            after.admitted() + after.rejected(),
            "offered = admitted + shed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_level_change_reaches_every_open_connection() {
    let controller = Controller::new(Default::default()).unwrap();
    let layer = DegradeLayer::builder(controller.handle())
        .admission(degrade_core::degrade::Admission::LevelShares)
        .prioritize(HeaderPriority::new("x-priority", Priority::Normal).unwrap())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer.clone().http());
    let addr = serve(app).await;

    // Open the connections first, so their service clones exist before the level changes.
    let mut senders = Vec::new();
    for _ in 0..CONNECTIONS {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        senders.push(sender);
    }
    let send = |sender: &mut hyper::client::conn::http1::SendRequest<String>| {
        let req = http::Request::get("/")
            .header("host", "localhost")
            .header("x-priority", "low")
            .body(String::new())
            .unwrap();
        sender.send_request(req)
    };
    for s in &mut senders {
        // An HTTP/1 connection takes its next request only once it is ready again.
        s.ready().await.unwrap();
        let res = send(s).await.unwrap();
        assert_eq!(res.status(), 200);
        res.into_body().collect().await.unwrap();
    }
    controller.pin(Level::Emergency);
    for s in &mut senders {
        s.ready().await.unwrap();
        let res = send(s).await.unwrap();
        assert_eq!(res.status(), 503);
        res.into_body().collect().await.unwrap();
    }
    let snap = layer.snapshot();
    assert_eq!(snap.admitted_by(Priority::Low), CONNECTIONS as u64);
    assert_eq!(
        snap.shed_at(Level::Emergency, Priority::Low),
        CONNECTIONS as u64
    );
}
