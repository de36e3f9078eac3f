//! Response futures reach their breaker through a `&'static` (its state is recycled, not
//! freed, once its layer is gone and every call it admitted has ended): a call that outlives
//! its layer records into its own breaker and never into a new one, a recycled breaker starts
//! as new (its time window counting from its own creation), and every call ends exactly once.
//!
//! Each test uses a window shape no other test of this binary uses: the pool reuses a state
//! only for a breaker of the same shape, so which state a new breaker gets is deterministic.

use degrade_breaker::{BreakerConfig, BreakerLayer, State, WindowConfig};
use degrade_core::{BoxError, ManualClock, Outcome};
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::sync::oneshot;
use tower::{Layer, Service};

const S: Duration = Duration::from_secs(1);

/// Opens at the first failure once a call is in the window (rate 1/1 ≥ 0.5).
fn tripping(size: u32) -> BreakerConfig {
    let mut c = BreakerConfig::default();
    c.window = WindowConfig::Count { size };
    c.minimum_calls = 1;
    c.failure_rate = 0.5;
    c.wait = 10 * S;
    c
}

/// Polls a future that must be ready.
fn now<F: Future>(f: F) -> F::Output {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("not ready"),
    }
}

/// An upstream that succeeds at once, or fails when its request's sender says so.
fn upstream()
-> impl Service<Option<oneshot::Receiver<bool>>, Response = (), Error = BoxError, Future: Send> + Clone
{
    tower::service_fn(|wait: Option<oneshot::Receiver<bool>>| async move {
        match wait {
            None => Ok(()),
            Some(rx) => match rx.await {
                Ok(true) => Ok(()),
                _ => Err::<(), BoxError>("upstream failed".into()),
            },
        }
    })
}

#[test]
fn a_future_outliving_its_layer_never_records_into_a_new_breaker() {
    let clock = ManualClock::new();
    let old = BreakerLayer::builder(tripping(7))
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut transitions = old.handle().subscribe();
    let mut svc = old.layer(upstream());
    let (fail, wait) = oneshot::channel();
    let mut noop = Context::from_waker(Waker::noop());
    let mut outliving = Box::pin(svc.call(Some(wait)));
    assert!(outliving.as_mut().poll(&mut noop).is_pending());
    let cancelled = svc.call(None); // never polled: a cancelled call of the old breaker
    drop((svc, old));

    // New breakers of the same shape while the old breaker's calls are in flight: none may
    // get the old state.
    let newer: Vec<_> = (0..4)
        .map(|_| {
            let layer = BreakerLayer::builder(tripping(7))
                .clock(clock.clone())
                .build()
                .unwrap();
            assert_eq!(
                layer.snapshot().offered(),
                0,
                "a new breaker starts at zero"
            );
            now(layer.layer(upstream()).call(None)).unwrap();
            layer
        })
        .collect();

    // The old call fails: by itself it opens its own breaker, and nothing else.
    fail.send(false).unwrap();
    match outliving.as_mut().poll(&mut noop) {
        Poll::Ready(res) => assert!(res.is_err()),
        Poll::Pending => panic!("answered"),
    }
    drop(outliving);
    drop(cancelled);
    let t = transitions
        .try_recv()
        .expect("the old breaker's own transition");
    assert_eq!(t.to, State::Open);
    for layer in &newer {
        let s = layer.snapshot();
        assert_eq!(
            (s.state, s.admitted, s.successes, s.failures, s.cancelled),
            (State::Closed, 1, 1, 0, 0),
            "only the breaker's own call"
        );
        assert_eq!(s.window.calls, 1);
    }

    // Every call of the old breaker has ended: a new breaker may now reuse its state, which
    // starts as new (closed, empty, counting from zero) and judges only its own calls.
    let next = BreakerLayer::builder(tripping(7))
        .clock(clock.clone())
        .build()
        .unwrap();
    assert!(
        matches!(
            transitions.try_recv(),
            Err(tokio::sync::broadcast::error::TryRecvError::Closed)
        ),
        "the old breaker's subscribers see it end"
    );
    let s = next.snapshot();
    assert_eq!(
        (
            s.state,
            s.offered(),
            s.failures,
            s.transitions,
            s.window.calls
        ),
        (State::Closed, 0, 0, 0, 0)
    );
    now(next.layer(upstream()).call(None)).unwrap();
    assert_eq!(next.snapshot().successes, 1);
}

#[test]
fn a_recycled_time_window_counts_buckets_from_the_new_breakers_creation() {
    let mut config = BreakerConfig::default();
    config.window = WindowConfig::Time {
        span: 10 * S,
        buckets: 10,
    };
    config.minimum_calls = 100; // never trips: only the window's contents matter
    let first = ManualClock::new();
    let old = BreakerLayer::builder(config.clone())
        .clock(first.clone())
        .build()
        .unwrap()
        .handle();
    first.advance(Duration::from_millis(10_200)); // epoch 10: the first bucket again
    old.try_acquire().unwrap().record(Outcome::Failure);
    assert_eq!(old.snapshot().window.failures, 1);
    drop(old); // no call in flight: its state is free for the next breaker of this shape

    let clock = ManualClock::new();
    clock.advance(Duration::from_millis(500)); // half a bucket after the old breaker's origin
    let new = BreakerLayer::builder(config)
        .clock(clock.clone())
        .build()
        .unwrap()
        .handle();
    assert_eq!(new.snapshot().window.calls, 0, "recycled empty");
    new.try_acquire().unwrap().record(Outcome::Failure); // its epoch 0, in the first bucket
    assert_eq!(
        new.snapshot().window.failures,
        1,
        "a newer epoch left by the old breaker would hide it"
    );
    clock.advance(Duration::from_millis(9_600));
    assert_eq!(
        new.snapshot().window.failures,
        1,
        "9.6 s after the new breaker's creation: still in its window"
    );
    clock.advance(Duration::from_millis(400));
    assert_eq!(new.snapshot().window.failures, 0, "10 s after: gone");
}

#[test]
fn every_call_ends_exactly_once_across_threads_and_cancellations() {
    let mut config = BreakerConfig::default();
    config.window = WindowConfig::Count { size: 11 };
    config.minimum_calls = 11;
    config.failure_rate = 1.0; // one call in three fails: never opens
    let layer = BreakerLayer::builder(config).build().unwrap();
    const THREADS: u64 = 2;
    const CALLS: u64 = 20_000;
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            let mut svc = layer.layer(upstream());
            scope.spawn(move || {
                for i in 0..CALLS {
                    if i % 10 == 9 {
                        drop(svc.call(None)); // cancelled
                        continue;
                    }
                    let (tx, rx) = oneshot::channel();
                    let call = svc.call(Some(rx));
                    tx.send(i % 3 != 0).unwrap();
                    let _ = now(call);
                }
            });
        }
    });
    let s = layer.snapshot();
    let per_thread_cancelled = CALLS / 10;
    let per_thread_failed = (0..CALLS).filter(|i| i % 10 != 9 && i % 3 == 0).count() as u64;
    assert_eq!(s.state, State::Closed);
    assert_eq!(s.admitted, THREADS * CALLS);
    assert_eq!(s.cancelled, THREADS * per_thread_cancelled);
    assert_eq!(s.failures, THREADS * per_thread_failed);
    assert_eq!(
        s.successes,
        THREADS * (CALLS - per_thread_cancelled - per_thread_failed)
    );
    assert_eq!((s.slow, s.ignored, s.in_flight()), (0, 0, 0));
}
