//! Cost of the `ObserveLayer` on the request path, next to a no-layer baseline, and the cost of
//! one `Monitor` tick.
//!
//! Groups (members are `BenchmarkId::new(who, case)`):
//!
//! * `observe`: one iteration is `poll_ready` + `call` + poll of the response future to
//!   completion, on one thread, without a runtime ([`degrade_benches::call_now`]), over the same
//!   immediately-ready inner service ([`degrade_benches::inner`]):
//!   * `baseline/no-layer`: the bare inner service;
//!   * `degrade/observe`: the `ObserveLayer` (default classifier and clock) that no latency
//!     signal reads: each thread times its first 65,536 calls, then 1 in 16 (criterion's
//!     warm-up passes the first; before stop 34 such a layer timed every call) — per timed call
//!     two clock reads, the latency bucket and the latency sum; per call the in-flight gauge up
//!     and down;
//!   * `degrade/observe-frozen-clock`: the same layer on a clock that returns a fixed instant,
//!     to separate the layer's own bookkeeping from the clock reads of its timed calls;
//!   * `degrade/observe-fast-clock`: the same layer on degrade-core's opt-in `FastClock`
//!     (feature `fast-clock`: the TSC through quanta);
//!   * `degrade/admit+observe`: the `DegradeLayer` (level Normal) over the `ObserveLayer`, the
//!     stack a service runs;
//!   * `degrade/observe-monitored`: the `ObserveLayer` after a latency signal has read 20,000
//!     calls (as the `Monitor` does): 1 call in 16 per thread is timed, every call counted.
//! * `observe-2-threads`: one shared layer called through clones from 1 or 2 threads via
//!   `iter_custom`; the figure is wall time per call.
//! * `monitor-tick`: one `Monitor::tick` (sample every signal, smooth, feed the ladder):
//!   * `baseline/no-signals`: a monitor without signals (the ladder and the snapshot alone);
//!   * `degrade/observe-signals`: p99 latency, error rate, timeout rate and in-flight over an
//!     `ObserveLayer` holding 100,000 calls;
//!   * `degrade/os-signals`: cgroup-aware CPU and memory (host fallback on this machine) and the
//!     three PSI files, read from the real machine.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use degrade_benches::{FrozenClock, call_now, contended, inner};
use degrade_core::{Controller, DegradeLayer, FastClock, Policy};
use degrade_triggers::os::{PsiConfig, PsiResource};
use degrade_triggers::{Monitor, ObserveLayer, Signal, TriggersConfig};
use std::hint::black_box;
use std::time::Duration;
use tower::{Layer, ServiceBuilder};

fn observe(c: &mut Criterion) {
    let mut g = c.benchmark_group("observe");

    let mut svc = inner();
    g.bench_function(BenchmarkId::new("baseline", "no-layer"), |b| {
        b.iter(|| black_box(call_now(&mut svc, black_box(1))))
    });

    let layer = ObserveLayer::new();
    let mut svc = layer.layer(inner());
    assert!(call_now(&mut svc, 1).is_ok());
    g.bench_function(BenchmarkId::new("degrade", "observe"), |b| {
        b.iter(|| black_box(call_now(&mut svc, black_box(1))))
    });
    assert!(layer.snapshot().calls >= 1, "the layer recorded the calls");

    let frozen = ObserveLayer::builder()
        .clock(FrozenClock::now_frozen())
        .build()
        .unwrap();
    let mut svc = frozen.layer(inner());
    assert!(call_now(&mut svc, 1).is_ok());
    g.bench_function(BenchmarkId::new("degrade", "observe-frozen-clock"), |b| {
        b.iter(|| black_box(call_now(&mut svc, black_box(1))))
    });
    assert!(frozen.snapshot().calls >= 1, "the layer recorded the calls");

    let fast = ObserveLayer::builder()
        .clock(FastClock::new())
        .build()
        .unwrap();
    let mut svc = fast.layer(inner());
    assert!(call_now(&mut svc, 1).is_ok());
    g.bench_function(BenchmarkId::new("degrade", "observe-fast-clock"), |b| {
        b.iter(|| black_box(call_now(&mut svc, black_box(1))))
    });

    let controller = Controller::new(Default::default()).expect("default ladder config is valid");
    let observe = ObserveLayer::new();
    let mut svc = ServiceBuilder::new()
        .layer(DegradeLayer::new(controller.handle(), Policy::default()).expect("valid policy"))
        .layer(observe.clone())
        .service(inner());
    assert!(call_now(&mut svc, 1).is_ok());
    g.bench_function(BenchmarkId::new("degrade", "admit+observe"), |b| {
        b.iter(|| black_box(call_now(&mut svc, black_box(1))))
    });

    // With a latency signal that has read heavy traffic, as under a `Monitor`: each thread
    // times 1 call in 16 from then on (every call is still counted).
    let monitored = ObserveLayer::new();
    let mut svc = monitored.layer(inner());
    for _ in 0..20_000 {
        assert!(call_now(&mut svc, 1).is_ok());
    }
    let mut latency = monitored.latency(Default::default()).unwrap();
    assert!(
        latency
            .sample(tokio::time::Instant::now())
            .unwrap()
            .is_some()
    );
    g.bench_function(BenchmarkId::new("degrade", "observe-monitored"), |b| {
        b.iter(|| black_box(call_now(&mut svc, black_box(1))))
    });

    g.finish();
}

fn observe_2_threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("observe-2-threads");
    g.throughput(Throughput::Elements(1));
    let baseline = inner();
    let layer = ObserveLayer::new();
    let observed = layer.layer(inner());
    for (threads, case) in [(1, "1-thread"), (2, "2-threads")] {
        g.bench_function(BenchmarkId::new("baseline", case), |b| {
            b.iter_custom(|iters| contended(&baseline, threads, iters))
        });
        g.bench_function(BenchmarkId::new("degrade", case), |b| {
            b.iter_custom(|iters| contended(&observed, threads, iters))
        });
    }
    let snap = layer.snapshot();
    assert_eq!(snap.in_flight, 0, "every call ended");
    g.finish();
}

fn monitor_tick(c: &mut Criterion) {
    let mut g = c.benchmark_group("monitor-tick");

    let controller = Controller::new(Default::default()).expect("default ladder config is valid");
    let mut monitor = Monitor::new(controller);
    g.bench_function(BenchmarkId::new("baseline", "no-signals"), |b| {
        b.iter(|| black_box(monitor.tick()))
    });

    let layer = ObserveLayer::new();
    let mut svc = layer.layer(inner());
    for i in 0..100_000 {
        let _ = call_now(&mut svc, i);
    }
    let config = TriggersConfig {
        cpu: None,
        memory: None,
        in_flight: Some(Default::default()),
        ..Default::default()
    };
    let controller = Controller::new(Default::default()).expect("default ladder config is valid");
    let mut monitor = config
        .monitor_with(controller, &layer)
        .expect("valid triggers config");
    monitor.tick();
    assert!(
        monitor
            .snapshot()
            .signal("latency")
            .and_then(|r| r.pressure)
            .is_some(),
        "the latency window holds calls"
    );
    g.bench_function(BenchmarkId::new("degrade", "observe-signals"), |b| {
        b.iter(|| black_box(monitor.tick()))
    });

    let config = TriggersConfig {
        psi: [PsiResource::Cpu, PsiResource::Memory, PsiResource::Io]
            .into_iter()
            .map(|resource| PsiConfig {
                resource,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let controller = Controller::new(Default::default()).expect("default ladder config is valid");
    let mut monitor = config.monitor(controller).expect("valid triggers config");
    g.bench_function(BenchmarkId::new("degrade", "os-signals"), |b| {
        b.iter(|| black_box(monitor.tick()))
    });

    g.finish();
}

/// Modest settings so the family runs in well under a minute.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = observe, observe_2_threads, monitor_tick
}
criterion_main!(benches);
