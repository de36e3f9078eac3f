//! The breaker as a tower service: thresholds, open, half-open permits, manual modes,
//! classification, clocks, and one test per bug class of `lessons-from-peers.md`.

use degrade_breaker::{
    BreakerConfig, BreakerLayer, CancelledAs, CircuitOpen, Reason, State, TimeoutTarget,
    WindowConfig,
};
use degrade_core::{BoxError, ManualClock, Outcome, TokioClock};
use futures_util::FutureExt;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::oneshot;
use tower::{Layer, Service, ServiceExt};

const S: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

/// What the test upstream does with a request.
enum Req {
    Ok,
    Fail,
    /// Answers when the sender is used (or fails if it is dropped).
    Wait(oneshot::Receiver<bool>),
}

type Upstream = tower::util::BoxCloneSyncService<Req, &'static str, BoxError>;

/// An upstream that counts the calls that reach it.
fn upstream(calls: Arc<AtomicUsize>) -> Upstream {
    tower::util::BoxCloneSyncService::new(tower::service_fn(move |req: Req| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            match req {
                Req::Ok => Ok("ok"),
                Req::Fail => Err::<_, BoxError>("upstream failed".into()),
                Req::Wait(rx) => match rx.await {
                    Ok(true) => Ok("ok"),
                    _ => Err("upstream failed".into()),
                },
            }
        }
    }))
}

fn count_config(size: u32, minimum: u32) -> BreakerConfig {
    let mut c = BreakerConfig::default();
    c.window = WindowConfig::Count { size };
    c.minimum_calls = minimum;
    c.failure_rate = 0.5;
    c.wait = 10 * S;
    c.half_open.permits = 2;
    c.half_open.successes = 2;
    c
}

async fn call<S: Service<Req, Error = BoxError>>(
    svc: &mut S,
    req: Req,
) -> Result<S::Response, BoxError> {
    svc.ready().await?.call(req).await
}

fn is_open(err: &BoxError) -> bool {
    err.is::<CircuitOpen>()
}

#[tokio::test]
async fn opens_at_failure_rate_after_minimum_calls_only() {
    let clock = ManualClock::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = BreakerLayer::builder(count_config(10, 6))
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut svc = layer.layer(upstream(calls.clone()));
    for _ in 0..5 {
        assert!(!is_open(&call(&mut svc, Req::Fail).await.unwrap_err()));
    }
    // 5 failures of 5 calls: above the rate, but below the minimum.
    assert_eq!(layer.handle().state(), State::Closed);
    call(&mut svc, Req::Ok).await.unwrap();
    // 5 of 6 failed: judged now.
    assert_eq!(layer.handle().state(), State::Open);
    let err = call(&mut svc, Req::Ok).await.unwrap_err();
    let open = err.downcast_ref::<CircuitOpen>().unwrap();
    assert_eq!((open.state, open.retry_after), (State::Open, 10 * S));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        6,
        "no upstream call while open"
    );
    clock.advance(4 * S);
    let err = call(&mut svc, Req::Ok).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<CircuitOpen>().unwrap().retry_after,
        6 * S
    );
}

#[tokio::test]
async fn consecutive_window_opens_on_a_run_only() {
    let mut c = BreakerConfig::default();
    c.window = WindowConfig::Consecutive { failures: 3 };
    let layer = BreakerLayer::new(c).unwrap();
    let mut svc = layer.layer(upstream(Default::default()));
    for _ in 0..10 {
        let _ = call(&mut svc, Req::Fail).await;
        let _ = call(&mut svc, Req::Fail).await;
        call(&mut svc, Req::Ok).await.unwrap();
    }
    assert_eq!(layer.handle().state(), State::Closed);
    let mut rx = layer.handle().subscribe();
    for _ in 0..3 {
        let _ = call(&mut svc, Req::Fail).await;
    }
    let t = rx.try_recv().unwrap();
    assert_eq!((t.from, t.to), (State::Closed, State::Open));
    assert_eq!(t.reason, Reason::ConsecutiveFailures(3));
}

#[tokio::test]
async fn time_window_forgets_old_failures() {
    let clock = ManualClock::new();
    let mut c = BreakerConfig::default();
    c.window = WindowConfig::Time {
        span: 10 * S,
        buckets: 10,
    };
    c.minimum_calls = 4;
    let layer = BreakerLayer::builder(c)
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut svc = layer.layer(upstream(Default::default()));
    for _ in 0..3 {
        let _ = call(&mut svc, Req::Fail).await;
    }
    clock.advance(10 * S); // the three failures leave the window
    let _ = call(&mut svc, Req::Fail).await;
    call(&mut svc, Req::Ok).await.unwrap();
    call(&mut svc, Req::Ok).await.unwrap();
    call(&mut svc, Req::Ok).await.unwrap();
    assert_eq!(layer.handle().state(), State::Closed);
    assert_eq!(layer.snapshot().window.calls, 4);
    let _ = call(&mut svc, Req::Fail).await; // 2 of 5
    let _ = call(&mut svc, Req::Fail).await; // 3 of 6: half
    assert_eq!(layer.handle().state(), State::Open);
}

#[tokio::test]
async fn slow_calls_open_at_the_slow_rate() {
    let clock = ManualClock::new();
    let mut c = count_config(4, 4);
    c.slow_call_duration = Some(100 * MS);
    c.slow_call_rate = 0.5;
    let layer = BreakerLayer::builder(c)
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut svc = layer.layer(upstream(Default::default()));
    call(&mut svc, Req::Ok).await.unwrap();
    call(&mut svc, Req::Ok).await.unwrap();
    for _ in 0..2 {
        let (tx, rx) = oneshot::channel();
        let fut = svc.ready().await.unwrap().call(Req::Wait(rx));
        clock.advance(100 * MS);
        tx.send(true).unwrap();
        fut.await.unwrap();
    }
    let s = layer.snapshot();
    assert_eq!((s.successes, s.slow), (2, 2));
    assert_eq!(s.state, State::Open);
}

#[tokio::test]
async fn half_open_admits_at_most_n_probes_and_no_stampede() {
    let clock = ManualClock::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = BreakerLayer::builder(count_config(4, 4))
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut svc = layer.layer(upstream(calls.clone()));
    for _ in 0..4 {
        let _ = call(&mut svc, Req::Fail).await;
    }
    clock.advance(10 * S);
    // 100 callers arrive at once, through 100 clones: exactly 2 reach the upstream.
    let mut senders = Vec::new();
    let mut probes = Vec::new();
    let mut rejected = 0;
    for _ in 0..100 {
        let mut clone = svc.clone();
        let (tx, rx) = oneshot::channel();
        let fut = clone.ready().await.unwrap().call(Req::Wait(rx));
        let mut fut: Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(fut);
        match (&mut fut).now_or_never() {
            Some(Err(e)) if is_open(&e) => rejected += 1,
            Some(other) => panic!("unexpected {other:?}"),
            None => {
                senders.push(tx);
                probes.push(fut);
            }
        }
    }
    assert_eq!((probes.len(), rejected), (2, 98));
    assert_eq!(calls.load(Ordering::SeqCst), 4 + 2);
    assert_eq!(layer.handle().state(), State::HalfOpen);
    for tx in senders {
        tx.send(true).unwrap();
    }
    for p in probes {
        p.await.unwrap();
    }
    assert_eq!(layer.handle().state(), State::Closed);
    let s = layer.snapshot();
    assert_eq!(s.offered(), 104);
    assert_eq!((s.admitted, s.rejected, s.probes), (6, 98, 2));
}

#[tokio::test]
async fn dropped_probe_future_does_not_leave_the_breaker_half_open() {
    let clock = ManualClock::new();
    let mut c = count_config(4, 4);
    c.half_open.permits = 1;
    c.half_open.successes = 1;
    let layer = BreakerLayer::builder(c)
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut svc = layer.layer(upstream(Default::default()));
    for _ in 0..4 {
        let _ = call(&mut svc, Req::Fail).await;
    }
    clock.advance(10 * S);
    // The only probe: started, then its caller gives up (the future is dropped).
    let (_tx, rx) = oneshot::channel();
    let mut fut = Box::pin(svc.ready().await.unwrap().call(Req::Wait(rx)));
    assert!((&mut fut).now_or_never().is_none());
    assert!(
        is_open(&call(&mut svc, Req::Ok).await.unwrap_err()),
        "permit taken"
    );
    drop(fut);
    let s = layer.snapshot();
    assert_eq!(
        (s.state, s.cancelled, s.in_flight()),
        (State::HalfOpen, 1, 0)
    );
    // The permit came back: the next caller probes, and closes the breaker.
    call(&mut svc, Req::Ok).await.unwrap();
    assert_eq!(layer.handle().state(), State::Closed);
    // A future dropped before its first poll releases its permit too.
    for _ in 0..4 {
        let _ = call(&mut svc, Req::Fail).await;
    }
    clock.advance(10 * S);
    drop(svc.ready().await.unwrap().call(Req::Ok));
    call(&mut svc, Req::Ok).await.unwrap();
    assert_eq!(layer.handle().state(), State::Closed);
}

#[tokio::test]
async fn cancelled_calls_are_ignored_by_default_and_failures_when_configured() {
    for (as_, state) in [
        (CancelledAs::Ignored, State::Closed),
        (CancelledAs::Failure, State::Open),
    ] {
        let mut c = BreakerConfig::default();
        c.window = WindowConfig::Consecutive { failures: 2 };
        c.cancelled = as_;
        let layer = BreakerLayer::new(c).unwrap();
        let mut svc = layer.layer(upstream(Default::default()));
        for _ in 0..2 {
            let (_tx, rx) = oneshot::channel::<bool>();
            drop(svc.ready().await.unwrap().call(Req::Wait(rx)));
        }
        assert_eq!(layer.handle().state(), state, "{as_:?}");
        assert_eq!(layer.snapshot().cancelled, 2);
    }
}

#[tokio::test]
async fn failed_probe_reopens_with_backoff_and_jitter_stays_in_bounds() {
    let clock = ManualClock::new();
    let mut c = count_config(4, 4);
    c.half_open.permits = 1;
    c.backoff.multiplier = 2.0;
    c.backoff.max_wait = 30 * S;
    let layer = BreakerLayer::builder(c)
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut rx = layer.handle().subscribe();
    let mut svc = layer.layer(upstream(Default::default()));
    for _ in 0..4 {
        let _ = call(&mut svc, Req::Fail).await;
    }
    let mut waits = vec![rx.try_recv().unwrap().wait.unwrap()];
    for _ in 0..3 {
        clock.advance(*waits.last().unwrap());
        assert!(!is_open(&call(&mut svc, Req::Fail).await.unwrap_err()));
        while let Ok(t) = rx.try_recv() {
            if let Some(w) = t.wait {
                assert_eq!(t.reason, Reason::ProbeFailed);
                waits.push(w);
            }
        }
    }
    assert_eq!(waits, [10 * S, 20 * S, 30 * S, 30 * S]);
    assert_eq!(layer.snapshot().openings, 4);

    let mut c = count_config(4, 4);
    c.backoff.jitter = 0.5;
    let layer = BreakerLayer::builder(c)
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut rx = layer.handle().subscribe();
    let mut svc = layer.layer(upstream(Default::default()));
    for _ in 0..4 {
        let _ = call(&mut svc, Req::Fail).await;
    }
    let w = rx.try_recv().unwrap().wait.unwrap();
    assert!(w > 5 * S && w <= 10 * S, "{w:?}");
}

#[tokio::test]
async fn half_open_times_out_to_the_configured_target() {
    for (target, state) in [
        (TimeoutTarget::Open, State::Open),
        (TimeoutTarget::Closed, State::Closed),
    ] {
        let clock = ManualClock::new();
        let mut c = count_config(4, 4);
        c.half_open.max_duration = Some(5 * S);
        c.half_open.on_timeout = target;
        let layer = BreakerLayer::builder(c)
            .clock(clock.clone())
            .build()
            .unwrap();
        let mut svc = layer.layer(upstream(Default::default()));
        for _ in 0..4 {
            let _ = call(&mut svc, Req::Fail).await;
        }
        clock.advance(10 * S);
        assert_eq!(layer.handle().state(), State::HalfOpen);
        let (_tx, rx) = oneshot::channel::<bool>();
        let _hung = svc.ready().await.unwrap().call(Req::Wait(rx));
        clock.advance(5 * S);
        assert_eq!(layer.handle().state(), state);
    }
}

#[tokio::test(start_paused = true)]
async fn paused_tokio_time_reaches_the_breaker() {
    let layer = BreakerLayer::builder(count_config(4, 4))
        .clock(TokioClock)
        .build()
        .unwrap();
    let mut svc = layer.layer(upstream(Default::default()));
    for _ in 0..4 {
        let _ = call(&mut svc, Req::Fail).await;
    }
    assert_eq!(layer.handle().state(), State::Open);
    tokio::time::advance(9 * S).await;
    assert!(is_open(&call(&mut svc, Req::Ok).await.unwrap_err()));
    tokio::time::advance(S).await;
    call(&mut svc, Req::Ok).await.unwrap();
    call(&mut svc, Req::Ok).await.unwrap();
    assert_eq!(layer.handle().state(), State::Closed);
}

#[tokio::test]
async fn clones_and_services_of_one_layer_share_one_breaker() {
    let layer = BreakerLayer::new(count_config(4, 4)).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    // Two services from the layer (as two routes), plus clones of each (as connections).
    let mut a = layer.layer(upstream(calls.clone()));
    let mut b = layer.clone().layer(upstream(calls.clone()));
    let mut a2 = a.clone();
    let mut b2 = b.clone();
    let _ = call(&mut a, Req::Fail).await;
    let _ = call(&mut b, Req::Fail).await;
    let _ = call(&mut a2, Req::Fail).await;
    let _ = call(&mut b2, Req::Fail).await;
    for svc in [&mut a, &mut b, &mut a2, &mut b2] {
        assert!(is_open(&call(svc, Req::Ok).await.unwrap_err()));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(a.snapshot(), layer.snapshot());
}

#[tokio::test]
async fn timeouts_count_as_failures_and_degrade_rejections_are_ignored() {
    let clock = ManualClock::new();
    let mut c = BreakerConfig::default();
    c.window = WindowConfig::Consecutive { failures: 2 };
    let layer = BreakerLayer::builder(c).clock(clock).build().unwrap();
    // A degrade rejection from a layer below (here: another breaker, forced open) says nothing
    // about the callee.
    let below = BreakerLayer::new(BreakerConfig::default()).unwrap();
    below.handle().force_open();
    let mut svc = layer.layer(below.layer(upstream(Default::default())));
    for _ in 0..5 {
        assert!(is_open(&call(&mut svc, Req::Ok).await.unwrap_err()));
    }
    assert_eq!(layer.snapshot().ignored, 5);
    assert_eq!(layer.handle().state(), State::Closed);

    // tower's timeout below the breaker: an elapsed call is a failure.
    tokio::time::pause();
    let mut svc =
        layer.layer(tower::timeout::TimeoutLayer::new(S).layer(upstream(Default::default())));
    for _ in 0..2 {
        let (_tx, rx) = oneshot::channel::<bool>();
        let err = call(&mut svc, Req::Wait(rx)).await.unwrap_err();
        assert!(err.is::<tower::timeout::error::Elapsed>());
    }
    assert_eq!(layer.handle().state(), State::Open);
}

/// A classifier that calls everything a failure: only the mark can keep a call out of the
/// window.
#[cfg(feature = "http")]
#[derive(Clone)]
struct Pessimist;

#[cfg(feature = "http")]
impl<B, E> degrade_core::Classifier<http::Response<B>, E> for Pessimist {
    fn classify_response(&self, _: &http::Response<B>) -> Outcome {
        Outcome::Failure
    }
    fn classify_error(&self, _: &E) -> Outcome {
        Outcome::Failure
    }
}

#[cfg(feature = "http")]
#[tokio::test]
async fn a_breaker_answering_http_ignores_answers_made_further_in_whatever_its_classifier() {
    let mut c = BreakerConfig::default();
    c.window = WindowConfig::Consecutive { failures: 1 };
    let below = BreakerLayer::new(BreakerConfig::default()).unwrap().http();
    below.handle().force_open();
    let ok = tower::service_fn(|_: http::Request<()>| async {
        Ok::<_, Infallible>(http::Response::new(String::new()))
    });
    let pessimist = BreakerLayer::builder(c.clone())
        .classifier(Pessimist)
        .build()
        .unwrap()
        .http();
    let default = BreakerLayer::new(c).unwrap().http();
    let mut a = pessimist.layer(below.layer(ok));
    let mut b = default.layer(below.layer(ok));
    for _ in 0..3 {
        let res = a
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(()))
            .await
            .unwrap();
        assert_eq!(res.status(), 503);
        let res = b
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(()))
            .await
            .unwrap();
        assert_eq!(res.status(), 503);
    }
    for snap in [pessimist.snapshot(), default.snapshot()] {
        assert_eq!(
            (snap.state, snap.ignored, snap.failures),
            (State::Closed, 3, 0)
        );
    }
    // The same answer coming from the service itself counts as the classifier says.
    let mut direct = pessimist.layer(ok);
    let _ = direct
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await;
    assert_eq!(pessimist.handle().state(), State::Open);
}

#[tokio::test]
async fn manual_modes() {
    let clock = ManualClock::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = BreakerLayer::builder(count_config(4, 4))
        .clock(clock.clone())
        .build()
        .unwrap();
    let h = layer.handle();
    let states = h.watch();
    let mut svc = layer.layer(upstream(calls.clone()));

    h.force_open();
    let err = call(&mut svc, Req::Ok).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<CircuitOpen>().unwrap().state,
        State::ForcedOpen
    );
    clock.advance(100 * S);
    assert_eq!(h.state(), State::ForcedOpen, "forced open never times out");
    assert_eq!(*states.borrow(), State::ForcedOpen);

    h.disable();
    for _ in 0..10 {
        let _ = call(&mut svc, Req::Fail).await;
    }
    assert_eq!(h.state(), State::Disabled);
    assert_eq!(h.snapshot().window.failures, 4, "disabled still records");

    h.force_close();
    assert_eq!(h.snapshot().window.calls, 0);
    for _ in 0..4 {
        let _ = call(&mut svc, Req::Fail).await;
    }
    assert_eq!(h.state(), State::Open);
    h.reset();
    assert_eq!((h.state(), h.snapshot().openings), (State::Closed, 0));
    assert_eq!(calls.load(Ordering::SeqCst), 14);
}

#[tokio::test]
async fn metrics_only_never_rejects_and_reports_shadow_transitions() {
    let clock = ManualClock::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut c = count_config(4, 4);
    c.half_open.permits = 1;
    c.half_open.successes = 1;
    let layer = BreakerLayer::builder(c)
        .clock(clock.clone())
        .build()
        .unwrap();
    let h = layer.handle();
    h.metrics_only();
    let mut rx = h.subscribe();
    let mut svc = layer.layer(upstream(calls.clone()));
    for _ in 0..4 {
        let _ = call(&mut svc, Req::Fail).await;
    }
    let t = rx.try_recv().unwrap();
    assert!(t.shadow);
    assert_eq!((t.from, t.to), (State::Closed, State::Open));
    for _ in 0..3 {
        call(&mut svc, Req::Ok).await.unwrap(); // would have been rejected
    }
    let s = h.snapshot();
    assert_eq!(
        (s.state, s.shadow_state),
        (State::MetricsOnly, Some(State::Open))
    );
    assert_eq!((s.rejected, s.shadow_rejected), (0, 3));
    clock.advance(10 * S);
    call(&mut svc, Req::Ok).await.unwrap(); // the shadow probe
    assert_eq!(h.snapshot().shadow_state, Some(State::Closed));
    assert_eq!(calls.load(Ordering::SeqCst), 8);
}

#[tokio::test]
async fn permits_record_outcomes_outside_tower() {
    let clock = ManualClock::new();
    let layer = BreakerLayer::builder(count_config(2, 2))
        .clock(clock.clone())
        .build()
        .unwrap();
    let h = layer.handle();
    h.try_acquire().unwrap().record(Outcome::Failure);
    h.try_acquire().unwrap().record(Outcome::Success);
    assert_eq!(h.state(), State::Open);
    clock.advance(10 * S);
    let p = h.try_acquire().unwrap();
    assert!(p.is_probe());
    let q = h.try_acquire().unwrap();
    assert!(h.try_acquire().is_err());
    p.record(Outcome::Success);
    q.record_result(&Ok::<_, Infallible>(()));
    assert_eq!(h.state(), State::Closed);
}

#[cfg(feature = "http")]
#[tokio::test]
async fn http_mode_answers_503_with_retry_after_and_counts_5xx() {
    use degrade_core::HttpClassifier;
    let mut c = BreakerConfig::default();
    c.window = WindowConfig::Consecutive { failures: 2 };
    c.wait = Duration::from_millis(2500);
    let layer = BreakerLayer::builder(c)
        .classifier(HttpClassifier::default())
        .build()
        .unwrap()
        .http();
    let mut svc = layer.layer(tower::service_fn(|_: http::Request<()>| async {
        let mut res = http::Response::new(String::new());
        *res.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        Ok::<_, Infallible>(res)
    }));
    for _ in 0..2 {
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(()))
            .await
            .unwrap();
        assert_eq!(res.status(), 500);
    }
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "3");
    assert_eq!(res.headers()["degrade-rejection"], "circuit_open");
}

#[cfg(feature = "grpc")]
#[tokio::test]
async fn grpc_mode_answers_unavailable() {
    use degrade_core::GrpcClassifier;
    let layer = BreakerLayer::builder(BreakerConfig::default())
        .classifier(GrpcClassifier::default())
        .build()
        .unwrap()
        .grpc();
    layer.handle().force_open();
    let mut svc = layer.layer(tower::service_fn(|_: http::Request<()>| async {
        Ok::<_, Infallible>(http::Response::new(String::new()))
    }));
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["grpc-status"], "14");
}

/// A response future records its call's outcome where it holds its permit, once: the answer
/// counts, dropping the completed future counts nothing more (no cancellation), and a future
/// dropped before its answer counts one cancellation — for successes, failures, and a
/// half-open probe (whose permit goes back exactly once, so the next probe is admitted).
#[tokio::test]
async fn a_completed_call_is_recorded_once_and_its_drop_records_nothing() {
    let clock = ManualClock::new();
    let layer = BreakerLayer::builder(count_config(10, 3))
        .clock(clock.clone())
        .build()
        .unwrap();
    let h = layer.handle();
    let mut svc = layer.layer(upstream(Default::default()));
    let mut fut = svc.ready().await.unwrap().call(Req::Ok);
    assert_eq!((&mut fut).await.unwrap(), "ok");
    drop(fut);
    let mut fut = svc.ready().await.unwrap().call(Req::Fail);
    assert!((&mut fut).await.is_err());
    drop(fut);
    let snap = h.snapshot();
    assert_eq!((snap.successes, snap.failures, snap.cancelled), (1, 1, 0));
    let (_tx, rx) = oneshot::channel::<bool>();
    let pending = svc.ready().await.unwrap().call(Req::Wait(rx));
    drop(pending);
    assert_eq!(h.snapshot().cancelled, 1);

    // A cancelled call is ignored by default: 2 failures of 3 calls (≥ 50 %) open it; then
    // half-open, each probe's permit comes back once.
    let _ = call(&mut svc, Req::Fail).await;
    assert_eq!(h.state(), State::Open);
    clock.advance(10 * S);
    let mut probe = svc.ready().await.unwrap().call(Req::Ok);
    assert_eq!((&mut probe).await.unwrap(), "ok");
    drop(probe);
    assert_eq!(h.state(), State::HalfOpen);
    call(&mut svc, Req::Ok).await.unwrap();
    assert_eq!(
        h.state(),
        State::Closed,
        "the second probe was admitted and closed it"
    );
    let snap = h.snapshot();
    assert_eq!((snap.admitted, snap.rejected), (6, 0));
    assert_eq!(
        snap.admitted,
        snap.successes + snap.failures + snap.cancelled
    );
}
