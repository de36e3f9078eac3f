//! End to end: a front axum server routes through the `Canary` to two real axum backends (v1
//! and v2) on 127.0.0.1, over several client connections, while a `CanaryController` analyses
//! the router's statistics. A v2 that fails 5 % of its requests is rolled back automatically; a
//! good v2 is promoted; the only failed requests are those v2 itself failed; a controller
//! restarted mid-run resumes from its file store.
#![cfg(feature = "http")]

use axum::Router;
use axum::body::Body;
use degrade_canary::key::HeaderKey;
use degrade_canary::{
    Arm, BoxError, Canary, CanaryConfig, CanaryController, CanaryPhase, CanaryStep, FileStore,
    StateStore,
};
use degrade_core::{HttpClassifier, ManualClock};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tower::{Service, ServiceExt};

const CONNECTIONS: usize = 4;
const PER_LOOK: usize = 600;
const LOOK: Duration = Duration::from_secs(30);

async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A backend that answers 200 with `x-backend: name`, or 500 for every `fail_every`-th request.
struct Backend {
    addr: SocketAddr,
    failed: Arc<AtomicU64>,
}

async fn backend(name: &'static str, fail_every: Option<u64>) -> Backend {
    let served = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let f = failed.clone();
    let app = Router::new().fallback(move || {
        let n = served.fetch_add(1, Ordering::Relaxed) + 1;
        let fail = fail_every.is_some_and(|k| n.is_multiple_of(k));
        if fail {
            f.fetch_add(1, Ordering::Relaxed);
        }
        async move {
            let status = if fail {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            };
            (status, [("x-backend", name)], name)
        }
    });
    Backend {
        addr: serve(app).await,
        failed,
    }
}

/// A reverse-proxy arm: forwards the request to `addr` over a pooled hyper client.
fn proxy(
    client: Client<HttpConnector, Body>,
    addr: SocketAddr,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = BoxError, Future: Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(move |mut req: Request<Body>| {
        let client = client.clone();
        async move {
            let path = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            *req.uri_mut() = format!("http://{addr}{path}").parse()?;
            let res = client.request(req).await?;
            Ok::<_, BoxError>(res.map(Body::new))
        }
    })
}

struct Front {
    addr: SocketAddr,
    canary: degrade_canary::CanaryHandle,
}

/// The front server: the `Canary` (sticky on `x-user`, HTTP classifier, arm extension) over
/// the two proxies. The arm extension is copied into an `x-arm` header for the clients.
async fn front(v1: SocketAddr, v2: SocketAddr) -> Front {
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let canary = Canary::builder()
        .key(HeaderKey::new("x-user").unwrap())
        .classifier(HttpClassifier::default())
        .http()
        .build(proxy(client.clone(), v1), proxy(client, v2));
    let handle = canary.handle();
    let svc = tower::service_fn(move |req: Request<Body>| {
        let mut canary = canary.clone();
        async move {
            let res = match canary.ready().await {
                Ok(svc) => svc.call(req).await,
                Err(e) => Err(e),
            };
            Ok::<_, Infallible>(match res {
                Ok(mut res) => {
                    let arm = res.extensions().get::<Arm>().copied().unwrap();
                    res.headers_mut()
                        .insert("x-arm", arm.as_str().parse().unwrap());
                    res
                }
                Err(_) => Response::builder()
                    .status(StatusCode::BAD_GATEWAY)
                    .body(Body::empty())
                    .unwrap(),
            })
        }
    });
    Front {
        addr: serve(Router::new().fallback_service(svc)).await,
        canary: handle,
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    ok: [u64; 2],
    failed: [u64; 2],
    other: u64,
}

/// `n` requests over one dedicated HTTP/1 connection, users `offset + i`.
async fn client(addr: SocketAddr, n: usize, offset: usize) -> Tally {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut tally = Tally::default();
    for i in 0..n {
        let req = Request::get("/")
            .header("host", "localhost")
            .header("x-user", (offset + i * 7919 % 100_000).to_string())
            .body(String::new())
            .unwrap();
        sender.ready().await.unwrap();
        let res = sender.send_request(req).await.unwrap();
        let status = res.status();
        let backend = res.headers().get("x-backend").cloned();
        let arm = res.headers().get("x-arm").cloned();
        res.into_body().collect().await.unwrap();
        let arm = match arm.as_ref().map(|a| a.to_str().unwrap()) {
            Some("stable") => 0,
            Some("canary") => 1,
            _ => {
                tally.other += 1;
                continue;
            }
        };
        // The arm recorded is the backend that actually answered.
        assert_eq!(backend.unwrap(), ["v1", "v2"][arm]);
        match status {
            StatusCode::OK => tally.ok[arm] += 1,
            StatusCode::INTERNAL_SERVER_ERROR => tally.failed[arm] += 1,
            _ => tally.other += 1,
        }
    }
    tally
}

/// One analysis interval of traffic over several connections.
async fn traffic(addr: SocketAddr, look: usize) -> Tally {
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|c| tokio::spawn(client(addr, PER_LOOK / CONNECTIONS, look * PER_LOOK + c)))
        .collect();
    let mut total = Tally::default();
    for t in tasks {
        let t = t.await.unwrap();
        for a in 0..2 {
            total.ok[a] += t.ok[a];
            total.failed[a] += t.failed[a];
        }
        total.other += t.other;
    }
    total
}

fn config() -> CanaryConfig {
    let mut cfg = CanaryConfig {
        steps: vec![
            CanaryStep::new(10.0, Duration::from_secs(60)),
            CanaryStep::new(50.0, Duration::from_secs(60)),
            CanaryStep::new(100.0, Duration::from_secs(60)),
        ],
        analysis_interval: LOOK,
        ..CanaryConfig::default()
    };
    cfg.judge.min_samples = 300;
    cfg
}

fn state_file(name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("canary-axum-{name}-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_v2_is_rolled_back_automatically() {
    let v1 = backend("v1", None).await;
    let v2 = backend("v2", Some(20)).await; // 5 % of v2's requests fail
    let front = front(v1.addr, v2.addr).await;
    let clock = ManualClock::new();
    let rolled_back = Arc::new(AtomicBool::new(false));
    let flag = rolled_back.clone();
    let path = state_file("bad");
    let mut controller = CanaryController::builder(config(), front.canary.clone())
        .clock(clock.clone())
        .store(FileStore::new(&path))
        .on_rollback(move || {
            let flag = flag.clone();
            async move { flag.store(true, Ordering::SeqCst) }
        })
        .start()
        .unwrap();
    let mut total = Tally::default();
    for look in 0..40 {
        let t = traffic(front.addr, look).await;
        for a in 0..2 {
            total.ok[a] += t.ok[a];
            total.failed[a] += t.failed[a];
        }
        total.other += t.other;
        clock.advance(LOOK);
        controller.tick().await.unwrap();
        if controller.state().phase.is_terminal() {
            break;
        }
    }
    assert_eq!(
        controller.state().phase,
        CanaryPhase::RolledBack,
        "{:?}",
        controller.last_judgement()
    );
    assert!(rolled_back.load(Ordering::SeqCst), "the rollback hook ran");
    assert_eq!(front.canary.weight().get(), 0);
    assert_eq!(
        FileStore::new(&path).load().unwrap().unwrap().phase,
        CanaryPhase::RolledBack
    );
    // No request failed other than those v2 itself failed.
    assert_eq!(total.other, 0);
    assert_eq!(total.failed[0], 0);
    assert_eq!(v1.failed.load(Ordering::SeqCst), 0);
    assert_eq!(total.failed[1], v2.failed.load(Ordering::SeqCst));
    assert!(total.failed[1] > 0);

    // After the rollback everyone is on v1.
    let after = traffic(front.addr, 1_000).await;
    assert_eq!(after.ok[0], PER_LOOK as u64);
    assert_eq!(after.ok[1] + after.failed[1] + after.other, 0);
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_v2_is_promoted_across_a_controller_restart() {
    let v1 = backend("v1", None).await;
    let v2 = backend("v2", None).await;
    let front = front(v1.addr, v2.addr).await;
    let clock = ManualClock::new();
    let promoted = Arc::new(AtomicBool::new(false));
    let path = state_file("good");
    let start = |promoted: Arc<AtomicBool>| {
        CanaryController::builder(config(), front.canary.clone())
            .clock(clock.clone())
            .store(FileStore::new(&path))
            .on_promote(move || {
                let promoted = promoted.clone();
                async move { promoted.store(true, Ordering::SeqCst) }
            })
            .start()
            .unwrap()
    };
    let mut controller = start(promoted.clone());
    let mut total = Tally::default();
    let mut restarted = false;
    let mut canary_share_at_step = Vec::new();
    for look in 0..60 {
        let step_of_traffic = controller.state().step;
        let t = traffic(front.addr, look).await;
        canary_share_at_step.push((step_of_traffic, t.ok[1] as f64 / PER_LOOK as f64));
        for a in 0..2 {
            total.ok[a] += t.ok[a];
            total.failed[a] += t.failed[a];
        }
        total.other += t.other;
        clock.advance(LOOK);
        controller.tick().await.unwrap();
        let state = controller.state();
        if state.phase.is_terminal() {
            break;
        }
        if state.step == 1 && !restarted {
            // The controller dies mid-run; the router (a separate process's, in real life)
            // comes back at weight 0, and a new controller resumes from the file.
            drop(controller);
            front.canary.weight().set(0).unwrap();
            controller = start(promoted.clone());
            assert_eq!(controller.state(), state, "resumed at the same step");
            assert_eq!(front.canary.weight().get(), 5_000, "and at the same weight");
            restarted = true;
        }
    }
    assert!(restarted);
    assert_eq!(
        controller.state().phase,
        CanaryPhase::Promoted,
        "{:?}",
        controller.last_judgement()
    );
    assert!(promoted.load(Ordering::SeqCst), "the promote hook ran");
    assert_eq!(front.canary.weight().get(), 10_000);
    assert_eq!(total.failed, [0, 0]);
    assert_eq!(total.other, 0);
    assert_eq!(
        v1.failed.load(Ordering::SeqCst) + v2.failed.load(Ordering::SeqCst),
        0
    );
    // The realised share of (sticky, hashed) users follows each step's weight.
    for (step, share) in canary_share_at_step {
        let w = [0.10, 0.50, 1.00][step];
        assert!((share - w).abs() < 0.08, "step {step}: share {share}");
    }
    std::fs::remove_file(&path).unwrap();
}
