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

/// This process's CPU time so far (user + system) from `/proc/self/stat`, in milliseconds: an
/// independent reading (the signal reads it through `sysinfo`). Linux reports it in ticks of
/// `USER_HZ`, which is 100 on every Linux ABI.
fn process_cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which may hold spaces, inside parentheses): state is the
    // third field of the line, utime the 14th and stime the 15th.
    let rest = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields[i].parse::<f64>().expect("a tick count");
    (ticks(11) + ticks(12)) * 10.0
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

    // Busy: four threads spin for 600 ms of wall time. What share of a core they get is the
    // scheduler's business (about 200 % on an idle two-CPU machine, far less beside other
    // busy processes), so the share the process really got is read independently, over the
    // same interval, and the signal must agree with it.
    let (cpu_before, wall_before) = (process_cpu_ms(), std::time::Instant::now());
    std::thread::scope(|s| {
        let others: Vec<_> = (0..3)
            .map(|_| s.spawn(|| burn(Duration::from_millis(600))))
            .collect();
        black_box(burn(Duration::from_millis(600)));
        for other in others {
            black_box(other.join().unwrap());
        }
    });
    let got = (process_cpu_ms() - cpu_before) / wall_before.elapsed().as_secs_f64() / 10.0;
    let busy = cpu.sample(Instant::now()).unwrap().unwrap();

    assert!(idle.value < 20.0, "idle process CPU {:.1} %", idle.value);
    // The signal's interval is a little longer than the measured one (it began at the idle
    // sample), and the tick is 10 ms: agree within a quarter, or 15 points.
    assert!(
        (busy.value - got).abs() <= (got / 4.0).max(15.0),
        "the signal read {:.1} % where the process got {got:.1} %",
        busy.value
    );
    // The process got at least 60 % of a core even on a shared machine (four threads beside
    // other work): then the signal rises well clear of idle, and so does the pressure.
    if got >= 60.0 {
        assert!(busy.value > 40.0, "busy process CPU {:.1} %", busy.value);
        assert!(busy.value > idle.value + 30.0);
        assert!(
            busy.pressure > idle.pressure + 0.25,
            "pressure {:.2} → {:.2}",
            idle.pressure,
            busy.pressure
        );
    } else {
        eprintln!("the machine gave the busy threads {got:.1} % of a core: rise not judged");
    }
}
