//! The process-memory signal rises when the process allocates, against a configured limit.
//!
//! One test in this file, so no other test of the same binary allocates while it measures.

use degrade_triggers::Signal;
use degrade_triggers::os::{MemoryConfig, MemorySignal, MemorySource, SignalEnv};
use std::hint::black_box;
use tokio::time::Instant;

const MIB: u64 = 1 << 20;

fn signal(limit: u64) -> MemorySignal {
    MemorySignal::new(
        MemoryConfig {
            source: MemorySource::Process,
            limit: Some(limit),
            ..Default::default()
        },
        &SignalEnv::default(),
    )
    .unwrap()
}

#[test]
fn allocating_raises_memory_pressure_against_the_configured_limit() {
    // The resident set now: against a 100 MiB limit, the value in percent is the RSS in MiB.
    let probe = signal(100 * MIB).sample(Instant::now()).unwrap().unwrap();
    let rss = (probe.value * MIB as f64) as u64;
    assert!(rss > 0, "VmRSS read as zero");

    // Room for 240 MiB more: allocating 200 MiB takes the process to about 85 % of it.
    let limit = rss + 240 * MIB;
    let mut mem = signal(limit);
    let before = mem.sample(Instant::now()).unwrap().unwrap();

    // Non-zero bytes, so every page is touched and resident.
    let block = black_box(vec![0xA5u8; (200 * MIB) as usize]);
    let after = mem.sample(Instant::now()).unwrap().unwrap();
    black_box(&block);
    drop(block);

    assert!(before.pressure < 0.3, "before {before:?}");
    assert!(after.value > 70.0, "after {after:?}");
    assert!(after.pressure > 0.65, "after {after:?}");
    assert!(after.pressure > before.pressure + 0.4);
}
