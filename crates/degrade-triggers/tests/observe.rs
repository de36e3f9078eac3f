//! The `ObserveLayer`: quantiles within the histogram's stated error, outcomes (failures,
//! timeouts, slow, ignored, cancelled), in-flight, and the windowed signals built on it.

use degrade_core::{BoxError, Level, ManualClock, Priority, Shed};
use degrade_triggers::observe::{InFlightConfig, LatencyConfig, LatencyStat, RateConfig};
use degrade_triggers::{LevelThresholds, ObserveLayer, Signal};
use futures_util::FutureExt;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

/// The histogram's stated bound on a quantile's relative error: half a bucket, 1/128.
const STATED_ERROR: f64 = 1.0 / 128.0;

/// Latencies from 50 µs to about 3 s, log-uniform, from a fixed-seed generator.
fn latencies(n: usize) -> Vec<Duration> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            Duration::from_nanos((50_000.0 * (60_000.0f64).powf(u)) as u64)
        })
        .collect()
}

/// The nearest-rank quantile of the exact values.
fn exact(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank - 1]
}

fn relative_error(estimate: Duration, exact: Duration) -> f64 {
    (estimate.as_nanos() as f64 - exact.as_nanos() as f64).abs() / exact.as_nanos() as f64
}

#[test]
fn p99_and_p50_are_within_the_stated_error_over_100_000_samples() {
    let clock = ManualClock::new();
    // A slow-call threshold keeps every call timed (an unread layer times each thread's first
    // 65,536 calls, then 1 in 16): the comparison is with the exact values of all 100,000.
    let layer = ObserveLayer::builder()
        .clock(clock.clone())
        .slow(Duration::from_secs(3600))
        .build()
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(|()| async { Ok::<_, BoxError>(()) }));
    let values = latencies(100_000);
    for d in &values {
        // Each call starts, takes exactly `d` on the manual clock, then completes.
        let fut = svc.call(());
        clock.advance(*d);
        fut.now_or_never().unwrap().unwrap();
    }
    let mut sorted = values.clone();
    sorted.sort();
    let snap = layer.snapshot();
    assert_eq!(snap.calls, 100_000);
    for (q, got) in [(0.99, snap.p99.unwrap()), (0.50, snap.p50.unwrap())] {
        let want = exact(&sorted, q);
        let err = relative_error(got, want);
        assert!(
            err <= STATED_ERROR,
            "q{q}: histogram {got:?}, exact {want:?}, relative error {err:.5} > {STATED_ERROR:.5}"
        );
    }
    let mean = values.iter().sum::<Duration>() / values.len() as u32;
    assert!(relative_error(snap.mean.unwrap(), mean) < 1e-6);

    // The latency signal reports the same p99, in milliseconds.
    let mut signal = layer
        .latency(LatencyConfig {
            stat: LatencyStat::P99,
            ..Default::default()
        })
        .unwrap();
    let s = signal.sample(clock_now(&clock)).unwrap().unwrap();
    assert!((s.value - snap.p99.unwrap().as_secs_f64() * 1e3).abs() < 1e-9);
}

/// A default `ObserveLayer` that reads `clock`.
fn on_manual_clock(
    clock: &ManualClock,
) -> ObserveLayer<degrade_core::DefaultClassifier, ManualClock> {
    ObserveLayer::builder()
        .clock(clock.clone())
        .build()
        .unwrap()
}

/// One call of `svc` that takes `took` on `clock` (it starts, the clock advances, it ends).
fn call_taking<S: Service<(), Error = BoxError>>(svc: &mut S, clock: &ManualClock, took: Duration) {
    let fut = svc.call(());
    clock.advance(took);
    fut.now_or_never().unwrap().unwrap();
}

fn clock_now(clock: &ManualClock) -> tokio::time::Instant {
    degrade_core::Clock::now(clock)
}

#[tokio::test(start_paused = true)]
async fn outcomes_are_classified_and_counted() {
    let layer = ObserveLayer::builder()
        .slow(Duration::from_millis(100))
        .build()
        .unwrap();
    // Inner: 0 ok, 1 error, 2 a degrade rejection (ignored), 3 a tower timeout.
    let inner = tower::service_fn(|n: u8| async move {
        match n {
            0 => Ok(()),
            1 => Err::<(), BoxError>("boom".into()),
            2 => Err(Box::new(Shed::new(
                Level::Heavy,
                Priority::Low,
                Duration::from_secs(1),
            )) as BoxError),
            _ => {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(())
            }
        }
    });
    let timeout = tower::timeout::TimeoutLayer::new(Duration::from_millis(10));
    let mut svc = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .layer(timeout)
        .service(inner);
    for n in [0, 0, 1, 2, 3] {
        let _ = svc.ready().await.unwrap().call(n).await;
    }
    let snap = layer.snapshot();
    assert_eq!(snap.calls, 4, "the rejection is not a call: {snap:?}");
    assert_eq!(snap.failures, 2, "{snap:?}");
    assert_eq!(snap.timeouts, 1, "{snap:?}");
    assert_eq!(snap.in_flight, 0);
    assert!(snap.p99.unwrap() >= Duration::from_millis(10));
}

#[test]
fn slow_calls_and_cancelled_calls() {
    let clock = ManualClock::new();
    let layer = ObserveLayer::builder()
        .clock(clock.clone())
        .slow(Duration::from_millis(100))
        .build()
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(|()| async { Ok::<_, BoxError>(()) }));
    let fut = svc.call(());
    clock.advance(Duration::from_millis(150));
    fut.now_or_never().unwrap().unwrap();

    // A call whose future is dropped: counted as cancelled, not as a latency.
    let mut pending = layer.layer(tower::service_fn(|()| {
        std::future::pending::<Result<(), BoxError>>()
    }));
    let fut = pending.call(());
    assert_eq!(layer.snapshot().in_flight, 1);
    drop(fut);
    let snap = layer.snapshot();
    assert_eq!(
        (snap.calls, snap.slow, snap.cancelled, snap.in_flight),
        (1, 1, 1, 0)
    );
}

#[test]
fn in_flight_counts_started_and_unfinished_calls() {
    let layer = ObserveLayer::new();
    let mut svc = layer.layer(tower::service_fn(|()| {
        std::future::pending::<Result<(), BoxError>>()
    }));
    let mut futs: Vec<_> = (0..150).map(|_| Box::pin(svc.call(()))).collect();
    let mut cx = Context::from_waker(Waker::noop());
    for f in &mut futs {
        assert!(f.as_mut().poll(&mut cx).is_pending());
    }
    let mut signal = layer.in_flight(InFlightConfig::default()).unwrap();
    let s = signal.sample(tokio::time::Instant::now()).unwrap().unwrap();
    assert_eq!(s.value, 150.0);
    assert!(
        (s.pressure - 0.75).abs() < 1e-12,
        "half way Light → Moderate: {s:?}"
    );
    futs.truncate(50);
    assert_eq!(layer.snapshot().in_flight, 50);
}

#[test]
fn error_rate_is_windowed_and_unknown_below_min_calls() {
    let clock = ManualClock::new();
    let layer = ObserveLayer::builder()
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(|fail: bool| async move {
        if fail {
            Err::<(), BoxError>("boom".into())
        } else {
            Ok(())
        }
    }));
    let mut call = |fail: bool| {
        let fut = pin!(svc.call(fail));
        match fut.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(_) => {}
            Poll::Pending => unreachable!(),
        }
    };
    let mut errors = layer
        .error_rate(RateConfig {
            window: Duration::from_secs(4),
            min_calls: 20,
            ..RateConfig::errors()
        })
        .unwrap();
    for _ in 0..10 {
        call(true);
    }
    assert_eq!(
        errors.sample(clock_now(&clock)).unwrap(),
        None,
        "10 calls < min_calls"
    );
    for _ in 0..30 {
        call(false);
    }
    // 10 of 40 failed: 25 %, Heavy exactly.
    let s = errors.sample(clock_now(&clock)).unwrap().unwrap();
    assert_eq!(s.value, 25.0);
    assert_eq!(s.pressure, 0.90);
    // The window slides: a second later, 40 good calls; five seconds later the failures are out.
    for step in 1..=5 {
        clock.advance(Duration::from_secs(1));
        for _ in 0..40 {
            call(false);
        }
        let s = errors.sample(clock_now(&clock)).unwrap().unwrap();
        if step == 5 {
            assert_eq!(s.value, 0.0, "the failures left the window");
        }
    }
}

#[test]
fn latency_signal_against_an_sla() {
    let clock = ManualClock::new();
    let layer = on_manual_clock(&clock);
    let mut svc = layer.layer(tower::service_fn(|()| async { Ok::<_, BoxError>(()) }));
    for _ in 0..100 {
        let fut = svc.call(());
        clock.advance(Duration::from_millis(240));
        fut.now_or_never().unwrap().unwrap();
    }
    let mut latency = layer
        .latency(LatencyConfig {
            stat: LatencyStat::Mean,
            sla: Some(Duration::from_millis(300)),
            thresholds: LevelThresholds::new(1.0, 2.0, 3.0, 4.0), // ignored with an SLA
            ..Default::default()
        })
        .unwrap();
    let s = latency.sample(clock_now(&clock)).unwrap().unwrap();
    // 240 ms of a 300 ms SLA is 80 %: Moderate.
    assert!((s.value - 240.0).abs() < 1e-9);
    assert!((s.pressure - 0.80).abs() < 1e-9, "{s:?}");
}

#[test]
fn clones_of_the_layer_and_services_share_one_histogram() {
    let layer = ObserveLayer::new();
    let twin = layer.clone();
    let mut a = layer.layer(tower::service_fn(|()| async { Ok::<_, BoxError>(()) }));
    let mut b = twin
        .layer(tower::service_fn(|()| async { Ok::<_, BoxError>(()) }))
        .clone();
    a.call(()).now_or_never().unwrap().unwrap();
    b.call(()).now_or_never().unwrap().unwrap();
    assert_eq!(layer.snapshot().calls, 2);
    assert_eq!(twin.snapshot().calls, 2);
}

#[test]
fn recording_from_many_threads_loses_nothing() {
    let layer = ObserveLayer::new();
    std::thread::scope(|s| {
        for _ in 0..4 {
            let layer = layer.clone();
            s.spawn(move || {
                let mut svc = layer.layer(tower::service_fn(|()| async { Ok::<_, BoxError>(()) }));
                for _ in 0..10_000 {
                    svc.call(()).now_or_never().unwrap().unwrap();
                }
            });
        }
    });
    let snap = layer.snapshot();
    assert_eq!((snap.calls, snap.in_flight), (40_000, 0));
}

/// Heavy traffic: once a latency window has seen 16 × 1,000 calls, a thread times 1 in 16 of
/// its calls, and every call is still counted, its outcome too.
#[test]
fn calls_left_untimed_under_heavy_traffic_are_still_counted_exactly() {
    let clock = ManualClock::new();
    let layer = ObserveLayer::builder()
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(|fail: bool| async move {
        if fail {
            Err::<(), BoxError>("boom".into())
        } else {
            Ok(())
        }
    }));
    let mut call = |fail: bool, took: Duration| {
        let fut = svc.call(fail);
        clock.advance(took);
        let _ = fut.now_or_never().unwrap();
    };
    for _ in 0..16_000 {
        call(false, Duration::from_millis(1));
    }
    let mut signal = layer.latency(LatencyConfig::default()).unwrap();
    assert!(signal.sample(clock_now(&clock)).unwrap().is_some());
    // From now on this thread times calls 16,000, 16,016, ...: 100 of the next 1,600.
    for n in 0..1_600 {
        call(n % 10 == 0, Duration::from_millis(3));
    }
    let snap = layer.snapshot();
    assert_eq!(
        (snap.calls, snap.failures, snap.in_flight),
        (17_600, 160, 0)
    );
    // The mean is the timed calls' mean: 16,000 at 1 ms and 100 at 3 ms.
    let want = Duration::from_nanos((16_000 * 1_000_000 + 100 * 3_000_000) / 16_100);
    assert_eq!(snap.mean.unwrap(), want);
}

/// Nobody reads the layer's latency (no signal): each thread times its first 65,536 calls,
/// then 1 in 16 (as an unread canary arm does), and every call is still counted.
#[test]
fn an_unread_layer_times_each_threads_first_calls_then_one_in_sixteen() {
    let clock = ManualClock::new();
    let layer = on_manual_clock(&clock);
    let mut svc = layer.layer(tower::service_fn(|()| async { Ok::<_, BoxError>(()) }));
    let mut call = |took: Duration| call_taking(&mut svc, &clock, took);
    let first = degrade_core::counter::TimingSampler::UNREAD_CALLS;
    for _ in 0..first {
        call(Duration::from_millis(1));
    }
    // Calls 65,536, 65,552, ...: 100 of the next 1,600 are timed.
    for _ in 0..1_600 {
        call(Duration::from_millis(3));
    }
    let snap = layer.snapshot();
    assert_eq!((snap.calls, snap.in_flight), (first + 1_600, 0));
    let want = Duration::from_nanos((first * 1_000_000 + 100 * 3_000_000) / (first + 100));
    assert_eq!(snap.mean.unwrap(), want, "the timed calls' mean");
}

/// Light traffic: a latency window that saw few calls makes every call timed again, so a
/// quiet service's latency rests on all its calls, and a window with too few timed calls reads
/// as unknown rather than as the latency of one or two calls.
#[test]
fn a_latency_window_with_few_calls_times_every_call_again() {
    let clock = ManualClock::new();
    let layer = on_manual_clock(&clock);
    let mut svc = layer.layer(tower::service_fn(|()| async { Ok::<_, BoxError>(()) }));
    let mut call = |took: Duration| call_taking(&mut svc, &clock, took);
    let window = Duration::from_secs(10);
    let mut signal = layer
        .latency(LatencyConfig {
            stat: LatencyStat::Mean,
            window,
            ..Default::default()
        })
        .unwrap();
    for _ in 0..16_000 {
        call(Duration::from_micros(100));
    }
    assert!(signal.sample(clock_now(&clock)).unwrap().is_some()); // 1 in 16 from now on
    clock.advance(window);
    // A quiet window: 20 calls, of which this thread times 2 (its calls 16,000 and 16,016).
    for _ in 0..20 {
        call(Duration::from_millis(2));
    }
    let quiet = signal.sample(clock_now(&clock)).unwrap();
    assert_eq!(quiet, None, "2 timed calls are fewer than min_calls (10)");
    // That window asked for every call: the next 20 are all timed.
    for _ in 0..20 {
        call(Duration::from_millis(4));
    }
    let s = signal.sample(clock_now(&clock)).unwrap().unwrap();
    let want = (2.0 * 2.0 + 20.0 * 4.0) / 22.0;
    assert!(
        (s.value - want).abs() < 1e-9,
        "mean {} ms, want {want} ms",
        s.value
    );
    assert_eq!(layer.snapshot().calls, 16_040);
}

/// With a slow-call threshold every call is timed whatever the traffic: the slow count needs
/// every latency.
#[test]
fn a_slow_threshold_keeps_every_call_timed_under_heavy_traffic() {
    let clock = ManualClock::new();
    let layer = ObserveLayer::builder()
        .clock(clock.clone())
        .slow(Duration::from_millis(1))
        .build()
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(|()| async { Ok::<_, BoxError>(()) }));
    let mut call = |took: Duration| call_taking(&mut svc, &clock, took);
    for _ in 0..16_000 {
        call(Duration::from_micros(100));
    }
    let mut signal = layer.latency(LatencyConfig::default()).unwrap();
    assert!(signal.sample(clock_now(&clock)).unwrap().is_some());
    for _ in 0..160 {
        call(Duration::from_millis(5));
    }
    let snap = layer.snapshot();
    assert_eq!((snap.calls, snap.slow), (16_160, 160));
}

/// Two latency signals over different windows: the one that needs the most timed calls wins,
/// so a long window's large call count cannot leave a short window without samples.
#[test]
fn the_latency_signal_that_needs_the_most_timing_wins() {
    let clock = ManualClock::new();
    let layer = on_manual_clock(&clock);
    let mut svc = layer.layer(tower::service_fn(|()| async { Ok::<_, BoxError>(()) }));
    let mut call = |took: Duration| call_taking(&mut svc, &clock, took);
    let signal = |window: Duration| {
        layer
            .latency(LatencyConfig {
                window,
                ..Default::default()
            })
            .unwrap()
    };
    let (mut short, mut long) = (
        signal(Duration::from_secs(1)),
        signal(Duration::from_secs(1_000)),
    );
    for _ in 0..16_000 {
        call(Duration::from_micros(100)); // all timed: no signal has read anything yet
    }
    let now = clock_now(&clock);
    let _ = (short.sample(now), long.sample(now)); // both: 1 in 16
    clock.advance(Duration::from_secs(10));
    for _ in 0..20 {
        call(Duration::from_millis(2)); // calls 16,000 and 16,016 timed
    }
    let now = clock_now(&clock);
    let _ = short.sample(now); // 20 calls in its window: time every call
    let _ = long.sample(now); // 16,020 in its window: would ask 1 in 16, may not raise it
    for _ in 0..20 {
        call(Duration::from_millis(4)); // all timed
    }
    let timed_ns: u64 = 16_000 * 100_000 + 2 * 2_000_000 + 20 * 4_000_000;
    let snap = layer.snapshot();
    assert_eq!(snap.calls, 16_040);
    assert_eq!(snap.mean.unwrap(), Duration::from_nanos(timed_ns / 16_022));
}

/// Response futures reach the layer's tally without a reference count, and a layer's tally is
/// reused by a later layer once it is gone: a call still in flight when its layer goes must
/// end in its own layer's counts, never in a newer layer's (completed or cancelled), and every
/// new layer starts from zero.
#[test]
fn a_future_outliving_its_layer_never_counts_against_a_new_one() {
    let (release, wait) = tokio::sync::oneshot::channel::<()>();
    let old = ObserveLayer::new();
    let mut svc = old.layer(tower::service_fn(
        |wait: Option<tokio::sync::oneshot::Receiver<()>>| async move {
            if let Some(wait) = wait {
                let _ = wait.await;
            }
            Ok::<_, BoxError>(())
        },
    ));
    let mut noop = Context::from_waker(Waker::noop());
    let mut outliving = Box::pin(svc.call(Some(wait)));
    assert!(outliving.as_mut().poll(&mut noop).is_pending());
    let cancelled = svc.call(None);
    drop((svc, old));

    let newer: Vec<_> = (0..4)
        .map(|_| {
            let layer = ObserveLayer::new();
            assert_eq!(
                layer.snapshot(),
                Default::default(),
                "a new layer starts at zero"
            );
            let mut svc = layer.layer(tower::service_fn(|()| async { Ok::<_, BoxError>(()) }));
            svc.call(()).now_or_never().unwrap().unwrap();
            layer
        })
        .collect();

    release.send(()).unwrap();
    assert!(outliving.as_mut().poll(&mut noop).is_ready());
    drop((outliving, cancelled));
    for layer in &newer {
        let snap = layer.snapshot();
        assert_eq!(
            (snap.calls, snap.cancelled, snap.in_flight),
            (1, 0, 0),
            "only the layer's own call"
        );
    }

    // Every old call has ended: later layers may reuse the tallies, from zero.
    drop(newer);
    for _ in 0..4 {
        let layer = ObserveLayer::new();
        assert_eq!(layer.snapshot(), Default::default());
        let mut svc = layer.layer(tower::service_fn(|()| async { Ok::<_, BoxError>(()) }));
        svc.call(()).now_or_never().unwrap().unwrap();
        assert_eq!((layer.snapshot().calls, layer.snapshot().in_flight), (1, 0));
    }
}

/// Built outside any runtime, the default clock is the counter timeline, and a call's start is
/// the call scope's counter stamp: the reading a layer further out (a rate limit on its
/// default clock) already made, so the stack reads the time once for every layer's start. On
/// `TokioClock` the start was a read of its own, 2 ms later, and the call was not slow.
#[test]
fn a_calls_start_is_the_call_scopes_counter_stamp() {
    let layer = ObserveLayer::builder()
        .slow(Duration::from_millis(1))
        .build()
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(|()| async { Ok::<_, BoxError>(()) }));
    let scope = degrade_core::clock::CallScope::enter();
    let _stamp = degrade_core::Clock::now(&degrade_core::FastClock::new());
    std::thread::sleep(Duration::from_millis(2));
    let call = svc.call(());
    drop(scope);
    call.now_or_never().unwrap().unwrap();
    let s = layer.snapshot();
    assert_eq!((s.calls, s.slow), (1, 1), "{s:?}");
}

/// Built inside a `current_thread` runtime with paused time, the default clock follows it:
/// `advance` is the call's latency, exactly.
#[tokio::test(start_paused = true)]
async fn under_paused_time_the_default_clock_times_what_tokio_advanced() {
    let layer = ObserveLayer::builder()
        .slow(Duration::from_millis(100))
        .build()
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(|ms: u64| async move {
        tokio::time::advance(Duration::from_millis(ms)).await;
        Ok::<_, BoxError>(())
    }));
    svc.ready().await.unwrap().call(250).await.unwrap();
    svc.ready().await.unwrap().call(99).await.unwrap();
    let s = layer.snapshot();
    assert_eq!((s.calls, s.slow), (2, 1), "{s:?}");
}
