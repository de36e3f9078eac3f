//! The tokio scheduling-delay signal sees a runtime blocked by synchronous work.
//!
//! Real time on purpose: the lateness of a real timer on a really blocked thread is what the
//! signal measures, and paused time does not move while a thread is blocked.

use degrade_triggers::{LagConfig, SchedulingDelay, Signal};
use std::time::Duration;
use tokio::time::Instant;

fn block_thread(d: Duration) {
    let start = std::time::Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

#[tokio::test(flavor = "current_thread")]
async fn blocking_the_runtime_shows_as_scheduling_delay() {
    let mut lag = SchedulingDelay::spawn(LagConfig {
        period: Duration::from_millis(5),
        ..Default::default()
    })
    .unwrap();
    // Let the probe run a few periods with the runtime free.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let quiet = lag.sample(Instant::now()).unwrap().unwrap();

    // Synchronous work holds the only worker thread: the probe's timer fires late.
    block_thread(Duration::from_millis(120));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let blocked = lag.sample(Instant::now()).unwrap().unwrap();

    assert!(
        blocked.value >= 100.0,
        "lag after blocking {:.1} ms",
        blocked.value
    );
    assert!(
        blocked.value > quiet.value + 50.0,
        "quiet {:.1} ms",
        quiet.value
    );
    assert!(
        blocked.pressure >= 0.95,
        "at or past Emergency (100 ms): {blocked:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_probe_that_never_ran_reads_as_late() {
    let mut lag = SchedulingDelay::spawn(LagConfig {
        period: Duration::from_millis(5),
        ..Default::default()
    })
    .unwrap();
    // The probe task has not had a chance to run at all.
    block_thread(Duration::from_millis(60));
    let s = lag.sample(Instant::now()).unwrap().unwrap();
    assert!(s.value >= 50.0, "{s:?}");
}
