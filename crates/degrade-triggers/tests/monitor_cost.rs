//! The Monitor's own cost per tick, with a realistic set of signals reading the real machine:
//! cgroup-aware CPU and memory (host fallback on a machine without limits), three PSI files,
//! and the latency, error-rate, timeout-rate and in-flight signals of an ObserveLayer holding
//! 100,000 recorded calls.
//!
//! Goal: well under 1 ms of CPU per second at a 1 s interval, i.e. well under 1 ms per tick.
//! The figure is printed (`cargo test -p degrade-triggers --release --test monitor_cost --
//! --nocapture`); the assertion is a generous ceiling for debug builds on a loaded machine.

use degrade_core::{Controller, ManualClock};
use degrade_triggers::os::{PsiConfig, PsiResource};
use degrade_triggers::{ObserveLayer, TriggersConfig};
use futures_util::FutureExt;
use std::time::Duration;
use tower::{Layer, Service};

#[test]
fn monitor_tick_costs_well_under_a_millisecond() {
    let clock = ManualClock::new();
    let controller = Controller::with_clock(Default::default(), clock.clone()).unwrap();
    let observe = ObserveLayer::builder()
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut svc = observe.layer(tower::service_fn(|()| async { Ok::<_, &str>(()) }));
    for i in 0..100_000u64 {
        let fut = svc.call(());
        clock.advance(Duration::from_micros(100 + i % 50_000));
        fut.now_or_never().unwrap().unwrap();
    }
    let config = TriggersConfig {
        psi: [PsiResource::Cpu, PsiResource::Memory, PsiResource::Io]
            .into_iter()
            .map(|resource| PsiConfig {
                resource,
                ..Default::default()
            })
            .collect(),
        in_flight: Some(Default::default()),
        ..Default::default()
    };
    let mut monitor = config.monitor_with(controller, &observe).unwrap();
    const TICKS: u32 = 2_000;
    for tick in 0..TICKS {
        // Traffic between ticks, so the latency window always holds calls to rank.
        for i in 0..100u64 {
            let fut = svc.call(());
            clock.advance(Duration::from_micros(
                100 + (i * 997 + u64::from(tick)) % 50_000,
            ));
            fut.now_or_never().unwrap().unwrap();
        }
        clock.advance(Duration::from_secs(1));
        monitor.tick();
    }
    let snap = monitor.snapshot();
    let per_tick = snap.busy_per_tick();
    println!(
        "monitor: {} signals, {} ticks, {:.1} µs per tick ({:.3} % of one CPU at a 1 s interval)",
        snap.signals.len(),
        snap.ticks,
        per_tick.as_secs_f64() * 1e6,
        per_tick.as_secs_f64() * 100.0
    );
    for r in &snap.signals {
        println!(
            "  {:<14} {:?} → {:?}",
            r.name,
            r.sample.map(|s| s.value),
            r.pressure
        );
    }
    assert_eq!(snap.ticks, u64::from(TICKS));
    assert_eq!(snap.signals.len(), 9);
    assert!(snap.signal("latency").unwrap().pressure.is_some());
    // A ceiling that holds for an unoptimised build on a shared machine; the release figure is
    // what the goal is about.
    assert!(per_tick < Duration::from_millis(5), "{per_tick:?} per tick");
}
