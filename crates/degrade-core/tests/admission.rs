//! Priority inside the adaptive limit, behind a real axum server on 127.0.0.1: when the
//! requests in flight reach the limit, a low-priority request is refused while a critical one
//! is still admitted (critical requests may go a tenth over the limit, at least one), and the
//! counters add up exactly. Every request has its own connection, so each goes through its own
//! clone of the service and they all share one limit.
#![cfg(feature = "http")]

use axum::Router;
use axum::routing::get;
use degrade_core::limit::LimitConfig;
use degrade_core::priority::HeaderPriority;
use degrade_core::snapshot::Accounting;
use degrade_core::{Controller, DegradeLayer, Priority};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};

/// The limit, held fixed (min = max) so the test does not depend on what the law learns.
const LIMIT: u32 = 4;

async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Sends one request of `priority` on its own connection; returns the status and the
/// `degrade-rejection` header.
async fn send(addr: SocketAddr, priority: Priority) -> (u16, Option<String>) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/")
        .header("host", "localhost")
        .header("x-priority", priority.as_str())
        .body(String::new())
        .unwrap();
    sender.ready().await.unwrap();
    let res = sender.send_request(req).await.unwrap();
    let status = res.status().as_u16();
    let reason = res
        .headers()
        .get("degrade-rejection")
        .map(|v| v.to_str().unwrap().to_owned());
    res.into_body().collect().await.unwrap();
    (status, reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_is_admitted_while_low_is_refused_at_the_limit() {
    let controller = Controller::new(Default::default()).unwrap();
    let limit = LimitConfig {
        initial: LIMIT,
        min: LIMIT,
        max: LIMIT,
        // No wait queue: a request that finds no slot for its priority is refused at once.
        queue_size: 0.0,
        ..LimitConfig::default()
    };
    let layer = DegradeLayer::builder(controller.handle())
        .prioritize(HeaderPriority::new("x-priority", Priority::Normal).unwrap())
        .limit(limit)
        .build()
        .unwrap();

    // The handler holds every request until the test releases it, and counts those inside.
    let inside = Arc::new(AtomicUsize::new(0));
    let entered = Arc::new(Notify::new());
    let gate = Arc::new(Semaphore::new(0));
    let handler = {
        let (inside, entered, gate) = (inside.clone(), entered.clone(), gate.clone());
        move || {
            let (inside, entered, gate) = (inside.clone(), entered.clone(), gate.clone());
            async move {
                inside.fetch_add(1, Ordering::SeqCst);
                entered.notify_one();
                gate.acquire().await.unwrap().forget();
                "ok"
            }
        }
    };
    let app = Router::new()
        .route("/", get(handler))
        .layer(layer.clone().http());
    let addr = serve(app).await;

    let until_inside = |n: usize| {
        let (inside, entered) = (inside.clone(), entered.clone());
        async move {
            while inside.load(Ordering::SeqCst) < n {
                let notified = entered.notified();
                if inside.load(Ordering::SeqCst) >= n {
                    break;
                }
                notified.await;
            }
        }
    };

    // Low-priority requests fill the limit.
    let mut held = Vec::new();
    for i in 0..LIMIT as usize {
        held.push(tokio::spawn(send(addr, Priority::Low)));
        until_inside(i + 1).await;
    }
    // At the limit: low and normal are refused (503, the limit's reason), critical is admitted.
    assert_eq!(
        send(addr, Priority::Low).await,
        (503, Some("shed".to_owned()))
    );
    assert_eq!(
        send(addr, Priority::Normal).await,
        (503, Some("shed".to_owned()))
    );
    held.push(tokio::spawn(send(addr, Priority::Critical)));
    until_inside(LIMIT as usize + 1).await;
    // The critical reserve (a tenth of the limit, at least one) is now used up too.
    assert_eq!(
        send(addr, Priority::Critical).await,
        (503, Some("shed".to_owned()))
    );

    let snap = layer.snapshot();
    assert_eq!(snap.limit.unwrap().in_flight, LIMIT + 1);
    gate.add_permits(held.len());
    for h in held {
        assert_eq!(h.await.unwrap(), (200, None));
    }

    // Exact accounting: offered = admitted + rejected, each rejection under its reason.
    let snap = layer.snapshot();
    assert_eq!(snap.offered(), 8);
    assert_eq!(snap.admitted_by(Priority::Low), u64::from(LIMIT));
    assert_eq!(snap.admitted_by(Priority::Critical), 1);
    assert_eq!(snap.limited_by(Priority::Low), 1);
    assert_eq!(snap.limited_by(Priority::Normal), 1);
    assert_eq!(snap.limited_by(Priority::Critical), 1);
    assert_eq!(snap.rejected(), 3);
    assert_eq!(snap.shed_by(Priority::Low), 0); // nothing shed by the level
    assert!(snap.balanced(), "{snap:?}");
    assert_eq!(snap.limit.unwrap().in_flight, 0);
}
