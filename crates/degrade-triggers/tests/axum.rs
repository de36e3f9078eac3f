//! End to end on a real axum server on 127.0.0.1: a backend that slows down raises the level
//! through the latency signal, low priorities are shed first, and once the backend recovers the
//! level steps back to Normal one level per dwell.
//!
//! Requests take real time (the backend really waits 100 ms when slow) and are timed by the
//! `ObserveLayer` on the tokio clock. The ladder, the latency window and the monitor run on a
//! `ManualClock` that the test advances by one second per monitor tick, so the dwell and the
//! windows are exact whatever the machine's load.

use axum::Router;
use axum::routing::get;
use degrade_core::ladder::{LadderConfig, LevelCause};
use degrade_core::priority::HeaderPriority;
use degrade_core::{Controller, DegradeLayer, HttpClassifier, Level, ManualClock, Priority};
use degrade_triggers::observe::{LatencyConfig, LatencyStat};
use degrade_triggers::{LevelThresholds, Monitor, ObserveLayer};
use http_body_util::BodyExt;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

const CONNECTIONS: usize = 5;
const DWELL: Duration = Duration::from_secs(5);

async fn connect(addr: SocketAddr) -> SendRequest<String> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// One round: every connection sends one request of each priority, concurrently across
/// connections. Returns (200s, 503s) per priority.
async fn round(senders: &mut [SendRequest<String>]) -> [(u64, u64); 5] {
    let tasks = senders.iter_mut().map(|sender| async move {
        let mut tally = [(0u64, 0u64); 5];
        for p in Priority::ALL {
            let req = http::Request::get("/")
                .header("host", "localhost")
                .header("x-priority", p.as_str())
                .body(String::new())
                .unwrap();
            sender.ready().await.unwrap();
            let res = sender.send_request(req).await.unwrap();
            let status = res.status().as_u16();
            res.into_body().collect().await.unwrap();
            match status {
                200 => tally[p.index()].0 += 1,
                503 => tally[p.index()].1 += 1,
                other => panic!("unexpected status {other}"),
            }
        }
        tally
    });
    let mut total = [(0, 0); 5];
    for t in futures_util::future::join_all(tasks).await {
        for (acc, x) in total.iter_mut().zip(t) {
            acc.0 += x.0;
            acc.1 += x.1;
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_raises_the_level_sheds_low_first_and_recovers_one_level_per_dwell() {
    let clock = ManualClock::new();
    let ladder = LadderConfig {
        escalate_after: 2,
        recover_after: 2,
        dwell: DWELL,
        ..Default::default()
    };
    let controller = Controller::with_clock(ladder, clock.clone()).unwrap();
    let observe = ObserveLayer::builder()
        .classifier(HttpClassifier::default())
        .build()
        .unwrap();
    let latency = observe
        .latency(LatencyConfig {
            stat: LatencyStat::P99,
            // A 100 ms backend sits between Moderate (80 ms) and Heavy (160 ms); a fast one stays
            // far below Light (50 ms) even on a loaded machine.
            thresholds: LevelThresholds::new(50.0, 80.0, 160.0, 320.0),
            window: Duration::from_secs(2),
            min_calls: 5,
            ..Default::default()
        })
        .unwrap();
    let mut monitor = Monitor::new(controller.clone()).signal(latency);
    let degrade = DegradeLayer::builder(controller.handle())
        // This test is about the level: admission by its shares.
        .admission(degrade_core::degrade::Admission::LevelShares)
        .prioritize(HeaderPriority::new("x-priority", Priority::Normal).unwrap())
        .build()
        .unwrap();

    let delay_ms = Arc::new(AtomicU64::new(0));
    let d = Arc::clone(&delay_ms);
    let app = Router::new()
        .route(
            "/",
            get(move || {
                let d = Arc::clone(&d);
                async move {
                    let ms = d.load(Ordering::Relaxed);
                    if ms > 0 {
                        // The backend's slowness: real time, the phenomenon under test.
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    "ok"
                }
            }),
        )
        // The observe layer inside the degrade layer: it times served requests only.
        .layer(observe.clone())
        .layer(degrade.clone().http());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut senders = Vec::new();
    for _ in 0..CONNECTIONS {
        senders.push(connect(addr).await);
    }

    // A fast backend: nothing moves.
    for _ in 0..4 {
        let tally = round(&mut senders).await;
        assert!(tally.iter().all(|(_, shed)| *shed == 0));
        clock.advance(Duration::from_secs(1));
        monitor.tick();
    }
    assert_eq!(controller.level(), Level::Normal);
    let p99 = monitor
        .snapshot()
        .signal("latency")
        .unwrap()
        .sample
        .unwrap()
        .value;
    assert!(p99 < 50.0, "fast backend p99 {p99} ms");

    // The backend slows down: two ticks over Moderate's threshold raise the level.
    delay_ms.store(100, Ordering::Relaxed);
    let mut ticks = 0;
    while controller.level() == Level::Normal {
        round(&mut senders).await;
        clock.advance(Duration::from_secs(1));
        monitor.tick();
        ticks += 1;
        assert!(ticks <= 4, "the level did not rise");
    }
    let raised = controller.level();
    assert!(
        matches!(raised, Level::Moderate | Level::Heavy),
        "a 100 ms backend points at Moderate (or Heavy with jitter), got {raised}"
    );
    let up = controller.handle().history();
    assert_eq!(up.last().unwrap().cause, LevelCause::Escalated);
    assert_eq!(up.last().unwrap().signal.as_deref(), Some("latency"));

    // Under that level, background and low are shed entirely, critical and high never.
    let tally = round(&mut senders).await;
    for p in [Priority::Background, Priority::Low] {
        assert_eq!(tally[p.index()], (0, CONNECTIONS as u64), "{p}");
    }
    for p in [Priority::High, Priority::Critical] {
        assert_eq!(tally[p.index()].1, 0, "{p} was shed");
    }
    let snap = degrade.snapshot();
    assert_eq!(snap.offered(), snap.admitted() + snap.rejected());
    assert_eq!(snap.shed_by(Priority::Critical), 0);

    // The backend recovers: one step down per dwell, never two at once.
    delay_ms.store(0, Ordering::Relaxed);
    let mut ticks = 0;
    while controller.level() != Level::Normal {
        round(&mut senders).await;
        clock.advance(Duration::from_secs(1));
        monitor.tick();
        ticks += 1;
        assert!(ticks <= 60, "no recovery after {ticks} ticks");
    }
    let history = controller.handle().history();
    let down: Vec<_> = history
        .iter()
        .filter(|t| t.cause == LevelCause::Recovered)
        .collect();
    assert_eq!(down.len(), raised.index(), "one step per level: {down:?}");
    for (i, t) in down.iter().enumerate() {
        assert_eq!(t.from.index(), raised.index() - i);
        assert_eq!(t.to.index(), t.from.index() - 1);
        assert!(t.time_at_previous >= DWELL, "{t:?}");
    }
    // And stepping down the whole ladder took at least one dwell per level.
    assert!(ticks as u64 >= DWELL.as_secs() * raised.index() as u64);
    assert_eq!(observe.snapshot().in_flight, 0);
}
