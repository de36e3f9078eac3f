//! The process-CPU signal rises when the process burns CPU.
//!
//! One test in this file, so no other test of the same binary uses CPU while it measures. The
//! idle and busy periods are real time on purpose: CPU usage is CPU time over wall time.

use degrade_triggers::Signal;
use degrade_triggers::os::{CpuConfig, CpuSignal, CpuSource, SignalEnv};
use std::hint::black_box;
use std::time::Duration;
use tokio::time::Instant;

/// Keeps this thread busy for `d` of wall time.
fn burn(d: Duration) -> u64 {
    let start = std::time::Instant::now();
    let mut x = 0u64;
    while start.elapsed() < d {
        for i in 0..10_000u64 {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
    }
    x
}

#[test]
fn burning_cpu_raises_the_process_cpu_signal() {
    let config = CpuConfig {
        source: CpuSource::Process,
        // One core makes 100 %, whatever the machine.
        cores: Some(1.0),
        ..Default::default()
    };
    let mut cpu = CpuSignal::new(config, &SignalEnv::default()).unwrap();
    assert_eq!(
        cpu.sample(Instant::now()).unwrap(),
        None,
        "a rate needs two readings"
    );

    // Idle: the process does next to nothing.
    std::thread::sleep(Duration::from_millis(400));
    let idle = cpu.sample(Instant::now()).unwrap().unwrap();

    // Busy: four threads spin (on an idle two-CPU machine that reads about 200 % of one core;
    // on a machine shared with other work, whatever share the scheduler gives them: four
    // threads keep that share well above the bound below even beside two busy processes).
    std::thread::scope(|s| {
        let others: Vec<_> = (0..3)
            .map(|_| s.spawn(|| burn(Duration::from_millis(600))))
            .collect();
        black_box(burn(Duration::from_millis(600)));
        for other in others {
            black_box(other.join().unwrap());
        }
    });
    let busy = cpu.sample(Instant::now()).unwrap().unwrap();

    assert!(idle.value < 20.0, "idle process CPU {:.1} %", idle.value);
    assert!(busy.value > 40.0, "busy process CPU {:.1} %", busy.value);
    assert!(busy.value > idle.value + 30.0);
    assert!(
        busy.pressure > idle.pressure + 0.25,
        "pressure {:.2} → {:.2}",
        idle.pressure,
        busy.pressure
    );
}
