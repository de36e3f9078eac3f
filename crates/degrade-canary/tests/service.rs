//! The router as a tower service: override and allow-list, the arm extension, per-arm
//! statistics by the classifier, readiness of both arms, cancelled calls, shared clones.
#![cfg(feature = "http")]

use degrade_canary::key::{CookieKey, HeaderKey, HeaderOverride};
use degrade_canary::stats::ARM_LAYOUT;
use degrade_canary::{Arm, Canary, Weight};
use degrade_core::{HttpClassifier, ManualClock};
use futures_util::FutureExt;
use http::{Request, Response, StatusCode};
use std::convert::Infallible;
use std::future::{Future, ready};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tower::{Service, ServiceExt};

fn backend(
    name: &'static str,
    status: StatusCode,
) -> impl Service<Request<()>, Response = Response<String>, Error = Infallible, Future: Send> + Clone
{
    tower::service_fn(move |_: Request<()>| {
        let mut res = Response::new(name.to_owned());
        *res.status_mut() = status;
        ready(Ok::<_, Infallible>(res))
    })
}

fn call<S>(svc: &mut S, req: Request<()>) -> Response<String>
where
    S: Service<Request<()>, Response = Response<String>>,
    S::Error: std::fmt::Debug,
{
    svc.ready()
        .now_or_never()
        .unwrap()
        .unwrap()
        .call(req)
        .now_or_never()
        .unwrap()
        .unwrap()
}

fn tester_only(req: &Request<()>) -> bool {
    req.headers().get("x-tester").is_some_and(|v| v == "yes")
}

#[test]
fn override_is_honoured_only_for_allowed_requests() {
    let mut svc = Canary::builder(backend("v1", StatusCode::OK), backend("v2", StatusCode::OK))
        .force(HeaderOverride::new("x-canary", tester_only).unwrap())
        .http()
        .build()
        .unwrap();
    // Weight 0: without an override everything is stable.
    let allowed = Request::builder()
        .header("x-canary", "canary")
        .header("x-tester", "yes")
        .body(())
        .unwrap();
    assert_eq!(call(&mut svc, allowed).body(), "v2");
    let not_allowed = Request::builder()
        .header("x-canary", "canary")
        .body(())
        .unwrap();
    assert_eq!(call(&mut svc, not_allowed).body(), "v1");

    // Forcing stable works against a full weight.
    svc.weight().set(10_000).unwrap();
    let to_stable = Request::builder()
        .header("x-canary", "stable")
        .header("x-tester", "yes")
        .body(())
        .unwrap();
    assert_eq!(call(&mut svc, to_stable).body(), "v1");
    let snap = svc.snapshot();
    assert_eq!((snap.stable.forced, snap.canary.forced), (1, 1));
}

#[test]
fn a_forced_request_is_routed_but_never_judged() {
    // The candidate answers 500 to everything; testers force themselves onto it.
    let mut svc = Canary::builder(
        backend("v1", StatusCode::OK),
        backend("v2", StatusCode::INTERNAL_SERVER_ERROR),
    )
    .force(HeaderOverride::new("x-canary", tester_only).unwrap())
    .classifier(HttpClassifier::default())
    .build()
    .unwrap();
    for _ in 0..50 {
        let forced = Request::builder()
            .header("x-canary", "canary")
            .header("x-tester", "yes")
            .body(())
            .unwrap();
        assert_eq!(call(&mut svc, forced).status(), 500);
    }
    // A forced call that never completes is not judged either.
    {
        let forced = Request::builder()
            .header("x-canary", "canary")
            .header("x-tester", "yes")
            .body(())
            .unwrap();
        drop(svc.call(forced));
    }
    let snap = svc.snapshot();
    assert_eq!((snap.canary.routed, snap.canary.forced), (51, 51));
    assert_eq!(snap.canary.samples(), 0);
    assert_eq!(snap.canary.failures, 0);
    assert_eq!(snap.canary.cancelled, 0);
    assert_eq!(snap.canary.latency.count(), 0);
    assert!(snap.canary.groups.iter().all(|g| g.samples() == 0));
}

#[test]
fn unknown_override_values_are_ignored() {
    let mut svc = Canary::builder(backend("v1", StatusCode::OK), backend("v2", StatusCode::OK))
        .weight(Weight::new(10_000).unwrap())
        .force(HeaderOverride::new("x-canary", tester_only).unwrap())
        .build()
        .unwrap();
    for value in ["v1", "yes", "", "stable,canary", "Canary2"] {
        let req = Request::builder()
            .header("x-canary", value)
            .header("x-tester", "yes")
            .body(())
            .unwrap();
        assert_eq!(call(&mut svc, req).body(), "v2", "value {value:?}");
    }
    assert_eq!(svc.snapshot().canary.forced, 0);
}

#[test]
fn the_arm_taken_is_a_response_extension() {
    let mut svc = Canary::builder(backend("v1", StatusCode::OK), backend("v2", StatusCode::OK))
        .weight(Weight::new(5_000).unwrap())
        .http()
        .build()
        .unwrap();
    for _ in 0..10 {
        let res = call(&mut svc, Request::new(()));
        let arm = *res.extensions().get::<Arm>().unwrap();
        assert_eq!(
            arm,
            if res.body() == "v2" {
                Arm::Canary
            } else {
                Arm::Stable
            }
        );
    }
}

#[test]
fn header_and_cookie_keys_are_sticky() {
    let mut by_header =
        Canary::builder(backend("v1", StatusCode::OK), backend("v2", StatusCode::OK))
            .weight(Weight::new(5_000).unwrap())
            .key(HeaderKey::new("x-user").unwrap())
            .build()
            .unwrap();
    let mut by_cookie =
        Canary::builder(backend("v1", StatusCode::OK), backend("v2", StatusCode::OK))
            .weight(Weight::new(5_000).unwrap())
            .key(CookieKey::new("sid").unwrap())
            .build()
            .unwrap();
    let mut seen = [0; 2];
    for user in 0..200 {
        let first = call(
            &mut by_header,
            Request::builder()
                .header("x-user", user.to_string())
                .body(())
                .unwrap(),
        )
        .into_body();
        for _ in 0..3 {
            let again = call(
                &mut by_header,
                Request::builder()
                    .header("x-user", user.to_string())
                    .body(())
                    .unwrap(),
            );
            assert_eq!(again.body(), &first);
        }
        seen[usize::from(first == "v2")] += 1;
        let cookie = format!("a=1; sid={user}");
        let c1 = call(
            &mut by_cookie,
            Request::builder()
                .header("cookie", &cookie)
                .body(())
                .unwrap(),
        );
        let c2 = call(
            &mut by_cookie,
            Request::builder()
                .header("cookie", &cookie)
                .body(())
                .unwrap(),
        );
        assert_eq!(c1.body(), c2.body());
    }
    assert!(seen[0] > 50 && seen[1] > 50, "{seen:?}");
}

#[test]
fn statistics_follow_the_classifier_and_the_clock() {
    let clock = ManualClock::new();
    let delay = clock.clone();
    let slow_stable = tower::service_fn(move |_: Request<()>| {
        // The stable backend "takes" 40 ms of manual time.
        delay.advance(Duration::from_millis(40));
        ready(Ok::<_, Infallible>(Response::new("v1".to_owned())))
    });
    let mut svc = Canary::builder(
        slow_stable,
        backend("v2", StatusCode::INTERNAL_SERVER_ERROR),
    )
    .weight(Weight::new(5_000).unwrap())
    .classifier(HttpClassifier::default())
    .clock(clock.clone())
    .build()
    .unwrap();
    for _ in 0..100 {
        call(&mut svc, Request::new(()));
    }
    let snap = svc.snapshot();
    assert_eq!((snap.stable.routed, snap.canary.routed), (50, 50));
    assert_eq!((snap.stable.successes, snap.stable.failures), (50, 0));
    assert_eq!((snap.canary.successes, snap.canary.failures), (0, 50));
    assert_eq!(
        snap.stable.latency.buckets()[ARM_LAYOUT.bucket(Duration::from_millis(40))],
        50
    );
    assert_eq!(snap.canary.latency.buckets()[0], 50);
}

#[derive(Clone)]
struct Gate(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Service<Request<()>> for Gate {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<String>, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.0.load(std::sync::atomic::Ordering::SeqCst) {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
    fn call(&mut self, _: Request<()>) -> Self::Future {
        ready(Ok(Response::new("v2".to_owned())))
    }
}

#[test]
fn ready_only_when_both_arms_are_ready() {
    let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut svc = Canary::new(backend("v1", StatusCode::OK), Gate(open.clone()));
    let mut cx = Context::from_waker(Waker::noop());
    // Weight 0, yet the router waits for the candidate: the arm is picked in `call` from the
    // weight, never from which backend happens to be ready.
    assert!(svc.poll_ready(&mut cx).is_pending());
    open.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
}

#[test]
fn a_cancelled_call_is_counted_as_cancelled() {
    let mut svc = Canary::builder(
        backend("v1", StatusCode::OK),
        tower::service_fn(|_: Request<()>| {
            std::future::pending::<Result<Response<String>, Infallible>>()
        }),
    )
    .weight(Weight::new(10_000).unwrap())
    .build()
    .unwrap();
    {
        let mut fut = pin!(svc.call(Request::new(())));
        assert!(
            fut.as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
                .is_pending()
        );
    }
    let snap = svc.snapshot();
    assert_eq!(snap.canary.routed, 1);
    assert_eq!(snap.canary.cancelled, 1);
    assert_eq!(snap.canary.samples(), 0);
}

#[test]
fn clones_share_weight_stride_and_statistics() {
    let svc = Canary::builder(backend("v1", StatusCode::OK), backend("v2", StatusCode::OK))
        .weight(Weight::new(2_500).unwrap())
        .build()
        .unwrap();
    let mut clones: Vec<_> = (0..4).map(|_| svc.clone()).collect();
    let mut v2 = 0;
    for i in 0..400 {
        if call(&mut clones[i % 4], Request::new(())).body() == "v2" {
            v2 += 1;
        }
    }
    // One stride over all clones: exactly a quarter.
    assert_eq!(v2, 100);
    assert_eq!(svc.snapshot().canary.routed, 100);
    clones[0].weight().set(0).unwrap();
    assert_eq!(svc.weight().get(), 0);
}

#[test]
fn inner_errors_are_boxed_and_judged_failures() {
    let mut svc = Canary::builder(
        backend("v1", StatusCode::OK),
        tower::service_fn(|_: Request<()>| {
            ready(Err::<Response<String>, _>(std::io::Error::other("boom")))
        }),
    )
    .weight(Weight::new(10_000).unwrap())
    .build()
    .unwrap();
    let err = svc
        .ready()
        .now_or_never()
        .unwrap()
        .unwrap()
        .call(Request::new(()))
        .now_or_never()
        .unwrap()
        .unwrap_err();
    assert!(err.is::<std::io::Error>());
    assert_eq!(svc.snapshot().canary.failures, 1);
}

/// The stride is each thread's own (no word every thread increments): clones called from
/// several threads at once still split exactly, each thread within one request of the weight.
#[test]
fn unkeyed_split_is_exact_per_thread_with_threads_calling_at_once() {
    let svc = Canary::builder(backend("v1", StatusCode::OK), backend("v2", StatusCode::OK))
        .weight(Weight::new(1_000).unwrap())
        .build()
        .unwrap();
    let barrier = std::sync::Barrier::new(4);
    let per_thread: Vec<usize> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (mut svc, barrier) = (svc.clone(), &barrier);
                s.spawn(move || {
                    barrier.wait();
                    (0..1_000)
                        .filter(|_| call(&mut svc, Request::new(())).body() == "v2")
                        .count()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    assert_eq!(per_thread, [100; 4], "10 % of each thread's 1,000 requests");
    let snap = svc.snapshot();
    assert_eq!((snap.canary.routed, snap.stable.routed), (400, 3_600));
}

/// Response futures reach the statistics without a reference count, and a router's
/// statistics are reused by a later router once it is gone: a call still in flight when its
/// router goes must end in its own router's statistics, never in a newer router's, whether it
/// completes or is cancelled, and every new router starts from zero.
#[test]
fn a_future_outliving_its_router_never_counts_against_a_new_one() {
    let (release, wait) = tokio::sync::oneshot::channel::<()>();
    let wait = std::sync::Mutex::new(Some(wait));
    let mut old = Canary::builder(
        backend("v1", StatusCode::OK),
        tower::service_fn(move |_: Request<()>| {
            let wait = wait.lock().unwrap().take();
            async move {
                if let Some(wait) = wait {
                    let _ = wait.await;
                }
                Ok::<_, Infallible>(Response::new("v2".to_owned()))
            }
        }),
    )
    .weight(Weight::new(10_000).unwrap())
    .build()
    .unwrap();
    let mut noop = Context::from_waker(Waker::noop());
    let mut outliving = Box::pin(old.call(Request::new(())));
    assert!(outliving.as_mut().poll(&mut noop).is_pending());
    let cancelled = old.call(Request::new(()));
    drop(old);

    let mut newer: Vec<_> = (0..4)
        .map(|_| {
            let mut svc =
                Canary::builder(backend("v1", StatusCode::OK), backend("v2", StatusCode::OK))
                    .weight(Weight::new(10_000).unwrap())
                    .build()
                    .unwrap();
            assert_eq!(
                svc.snapshot().canary.routed,
                0,
                "a new router starts at zero"
            );
            call(&mut svc, Request::new(()));
            svc
        })
        .collect();

    release.send(()).unwrap();
    match outliving.as_mut().poll(&mut noop) {
        Poll::Ready(res) => assert_eq!(res.unwrap().body(), "v2"),
        Poll::Pending => panic!("released"),
    }
    drop(outliving);
    drop(cancelled); // never polled: a cancelled call of the old router
    for svc in &newer {
        let snap = svc.snapshot();
        assert_eq!(
            (
                snap.canary.routed,
                snap.canary.successes,
                snap.canary.cancelled
            ),
            (1, 1, 0),
            "only the router's own call"
        );
    }

    // Every old call has ended: the next routers may reuse the statistics, from zero.
    newer.clear();
    for _ in 0..4 {
        let mut svc = Canary::builder(backend("v1", StatusCode::OK), backend("v2", StatusCode::OK))
            .weight(Weight::new(10_000).unwrap())
            .build()
            .unwrap();
        let snap = svc.snapshot();
        assert_eq!(
            (
                snap.canary.routed,
                snap.canary.samples(),
                snap.canary.latency.count()
            ),
            (0, 0, 0)
        );
        call(&mut svc, Request::new(()));
        assert_eq!(svc.snapshot().canary.samples(), 1);
    }
}

/// An arm whose `call` panics started a call that never gets a future: it ends as cancelled,
/// so the router's started and ended counts still match (its statistics can be reused once it
/// is gone) and the snapshot accounts for every routed call.
#[test]
fn an_arm_whose_call_panics_counts_a_cancelled_call() {
    let mut svc = Canary::builder(
        backend("v1", StatusCode::OK),
        tower::service_fn(
            |_: Request<()>| -> std::future::Ready<Result<Response<String>, Infallible>> {
                panic!("the candidate's call panics")
            },
        ),
    )
    .weight(Weight::new(10_000).unwrap())
    .build()
    .unwrap();
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(svc.call(Request::new(())))
    }));
    assert!(unwound.is_err());
    let snap = svc.snapshot();
    assert_eq!((snap.canary.routed, snap.canary.cancelled), (1, 1));
}
