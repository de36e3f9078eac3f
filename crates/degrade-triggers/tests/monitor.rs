//! The `Monitor`: ticks on its interval in paused tokio time, feeds the ladder, smooths, goes
//! stale, survives failing and panicking readers, and stops on drop or shutdown.

use degrade_core::ladder::{LadderConfig, UnknownPolicy};
use degrade_core::{Controller, Level, ManualClock};
use degrade_triggers::{Gauge, Monitor, Sample, Scale, Signal, SignalError, Smoothing};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

fn shared_gauge(name: &'static str) -> (Arc<AtomicU64>, impl Signal) {
    let value = Arc::new(AtomicU64::new(0f64.to_bits()));
    let v = Arc::clone(&value);
    let gauge = Gauge::new(name, Scale::proportional(100.0).unwrap(), move || {
        let x = f64::from_bits(v.load(Ordering::Relaxed));
        (!x.is_nan()).then_some(x)
    });
    (value, gauge)
}

fn set(v: &AtomicU64, x: f64) {
    v.store(x.to_bits(), Ordering::Relaxed);
}

#[tokio::test(start_paused = true)]
async fn the_monitor_ticks_on_its_interval_and_drives_the_ladder() {
    let cfg = LadderConfig {
        escalate_after: 2,
        recover_after: 1,
        dwell: Duration::from_secs(10),
        ..Default::default()
    };
    let controller = Controller::new(cfg).unwrap();
    let (queue, gauge) = shared_gauge("queue");
    let handle = Monitor::new(controller.clone())
        .interval(Duration::from_secs(1))
        .signal(gauge)
        .spawn()
        .unwrap();
    let mut rx = handle.subscribe();
    rx.changed().await.unwrap();
    assert_eq!(
        rx.borrow_and_update().ticks,
        1,
        "the first tick is immediate"
    );

    set(&queue, 91.0); // past Heavy's 0.90
    let start = Instant::now();
    while controller.level() != Level::Heavy {
        rx.changed().await.unwrap();
    }
    // Two samples needed: the ticks at 1 s and 2 s.
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(
        handle.snapshot().signal("queue").unwrap().pressure,
        Some(0.91)
    );

    set(&queue, 10.0);
    let start = Instant::now();
    let mut seen = vec![];
    while controller.level() != Level::Normal {
        rx.changed().await.unwrap();
        let level = rx.borrow_and_update().level;
        if seen.last() != Some(&level) {
            seen.push(level);
        }
    }
    assert_eq!(
        seen,
        [Level::Heavy, Level::Moderate, Level::Light, Level::Normal]
    );
    // One level per 10 s dwell, counted from the escalation.
    assert!(
        start.elapsed() >= Duration::from_secs(28),
        "{:?}",
        start.elapsed()
    );
    handle.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn dropping_the_handle_stops_the_monitor() {
    let controller = Controller::new(Default::default()).unwrap();
    let handle = Monitor::new(controller).spawn().unwrap();
    let mut rx = handle.subscribe();
    rx.changed().await.unwrap();
    drop(handle);
    // The task ends and drops its sender: the receiver sees the channel close.
    while rx.changed().await.is_ok() {}
    let ticks = rx.borrow().ticks;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(rx.borrow().ticks, ticks);
}

/// Fails on its first three samples, then reads fine.
struct Flaky {
    calls: Arc<AtomicU32>,
}

impl Signal for Flaky {
    fn name(&self) -> &str {
        "flaky"
    }
    fn sample(&mut self, _now: Instant) -> Result<Option<Sample>, SignalError> {
        if self.calls.fetch_add(1, Ordering::Relaxed) < 3 {
            Err(SignalError::new("cannot read"))
        } else {
            Ok(Some(Sample {
                value: 0.5,
                pressure: 0.5,
            }))
        }
    }
}

/// Panics on its second sample.
struct Buggy {
    calls: Arc<AtomicU32>,
}

impl Signal for Buggy {
    fn name(&self) -> &str {
        "buggy"
    }
    fn sample(&mut self, _now: Instant) -> Result<Option<Sample>, SignalError> {
        if self.calls.fetch_add(1, Ordering::Relaxed) == 1 {
            panic!("a reader bug");
        }
        Ok(Some(Sample {
            value: 0.9,
            pressure: 0.9,
        }))
    }
}

#[test]
fn a_failing_reader_reads_as_unknown_then_recovers() {
    let clock = ManualClock::new();
    let controller = Controller::with_clock(Default::default(), clock.clone()).unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let mut monitor = Monitor::new(controller).signal_with(
        Flaky {
            calls: Arc::clone(&calls),
        },
        Smoothing {
            half_life: Duration::ZERO,
            stale_after: 1,
        },
    );
    for _ in 0..3 {
        clock.advance(Duration::from_secs(1));
        monitor.tick();
        let r = monitor.snapshot().signal("flaky").unwrap();
        assert!(r.failing);
        assert_eq!(r.pressure, None);
    }
    clock.advance(Duration::from_secs(1));
    monitor.tick();
    let r = monitor.snapshot().signal("flaky").unwrap();
    assert!(!r.failing);
    assert_eq!(r.pressure, Some(0.5));
    assert_eq!(calls.load(Ordering::Relaxed), 4);
}

#[test]
fn a_panicking_reader_is_caught_and_never_sampled_again() {
    let clock = ManualClock::new();
    let controller = Controller::with_clock(Default::default(), clock.clone()).unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let (other, gauge) = shared_gauge("other");
    set(&other, 30.0);
    let mut monitor = Monitor::new(controller)
        .signal_with(
            Buggy {
                calls: Arc::clone(&calls),
            },
            Smoothing {
                half_life: Duration::ZERO,
                stale_after: 1,
            },
        )
        .signal(gauge);
    for _ in 0..5 {
        clock.advance(Duration::from_secs(1));
        monitor.tick();
    }
    let snap = monitor.snapshot();
    assert_eq!(
        calls.load(Ordering::Relaxed),
        2,
        "not sampled after the panic"
    );
    let r = snap.signal("buggy").unwrap();
    assert!(r.failing);
    assert_eq!(r.pressure, None);
    // The other signals go on.
    assert_eq!(snap.signal("other").unwrap().pressure, Some(0.3));
    assert_eq!(snap.ticks, 5);
}

#[test]
fn a_silent_signal_holds_its_value_then_goes_stale() {
    let clock = ManualClock::new();
    let cfg = LadderConfig {
        escalate_after: 1,
        unknown: UnknownPolicy::Ignore,
        ..Default::default()
    };
    let controller = Controller::with_clock(cfg, clock.clone()).unwrap();
    let (v, gauge) = shared_gauge("g");
    let mut monitor = Monitor::new(controller).signal_with(
        gauge,
        Smoothing {
            half_life: Duration::ZERO,
            stale_after: 3,
        },
    );
    set(&v, 50.0);
    monitor.tick();
    set(&v, f64::NAN); // the gauge has nothing to say
    let mut pressures = vec![];
    for _ in 0..4 {
        clock.advance(Duration::from_secs(1));
        monitor.tick();
        pressures.push(monitor.snapshot().signal("g").unwrap().pressure);
    }
    assert_eq!(pressures, [Some(0.5), Some(0.5), None, None]);
}

#[test]
fn ewma_smooths_a_step_by_half_life() {
    let clock = ManualClock::new();
    let controller = Controller::with_clock(Default::default(), clock.clone()).unwrap();
    let (v, gauge) = shared_gauge("g");
    let mut monitor = Monitor::new(controller)
        .smoothing(Smoothing::ewma(Duration::from_secs(2)))
        .signal(gauge);
    monitor.tick();
    set(&v, 100.0);
    let mut pressures = vec![];
    for _ in 0..4 {
        clock.advance(Duration::from_secs(1));
        monitor.tick();
        pressures.push(monitor.snapshot().signal("g").unwrap().pressure.unwrap());
    }
    // Each second closes 1 - 2^(-1/2) of the gap to 1.0: after 2 s half of it, after 4 s 3/4.
    assert!((pressures[1] - 0.5).abs() < 1e-9, "{pressures:?}");
    assert!((pressures[3] - 0.75).abs() < 1e-9, "{pressures:?}");
    assert!(pressures.windows(2).all(|w| w[1] > w[0]));
}

#[test]
fn one_spike_does_not_escalate_when_smoothed() {
    let clock = ManualClock::new();
    let cfg = LadderConfig {
        escalate_after: 1,
        ..Default::default()
    };
    let controller = Controller::with_clock(cfg, clock.clone()).unwrap();
    let (v, gauge) = shared_gauge("g");
    let mut monitor = Monitor::new(controller.clone())
        .smoothing(Smoothing::ewma(Duration::from_secs(5)))
        .signal(gauge);
    set(&v, 20.0);
    monitor.tick();
    set(&v, 100.0);
    clock.advance(Duration::from_secs(1));
    monitor.tick();
    set(&v, 20.0);
    clock.advance(Duration::from_secs(1));
    monitor.tick();
    assert_eq!(controller.level(), Level::Normal);
}
