//! Behaviour of the windows and sharded counters that the other tests left unpinned, found by
//! mutation testing (`cargo xtask mutants --scope ladder-windows`, see `docs/mutants.md`).

use degrade_core::Outcome;
use degrade_core::counter::ShardedCounter;
use degrade_core::window::{ConsecutiveWindow, CountWindow, TimeWindow, WindowSnapshot};
use std::num::NonZeroU32;
use std::sync::{Arc, Barrier};
use std::time::Duration;
use tokio::time::Instant;

fn n(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v).unwrap()
}

#[test]
fn a_success_evicts_the_oldest_slow_call_of_a_full_window() {
    let w = CountWindow::new(n(2));
    w.record(Outcome::Slow);
    w.record(Outcome::Success);
    w.record(Outcome::Success);
    assert_eq!(
        w.snapshot(),
        WindowSnapshot {
            calls: 2,
            failures: 0,
            slow: 0
        }
    );
}

#[test]
fn windows_report_the_size_span_and_buckets_they_were_built_with() {
    assert_eq!(CountWindow::new(n(37)).size(), n(37));
    let w = TimeWindow::new(Duration::from_secs(12), n(6), Instant::now()).unwrap();
    assert_eq!(w.span(), Duration::from_secs(12));
    assert_eq!(w.buckets(), n(6));
}

#[test]
fn debug_output_names_each_window_and_its_state() {
    let c = ConsecutiveWindow::new();
    c.record(Outcome::Failure);
    c.record(Outcome::Failure);
    assert_eq!(format!("{c:?}"), "ConsecutiveWindow { consecutive: 2 }");

    let w = CountWindow::new(n(3));
    w.record(Outcome::Failure);
    assert_eq!(
        format!("{w:?}"),
        "CountWindow { size: 3, snapshot: WindowSnapshot { calls: 1, failures: 1, slow: 0 } }"
    );

    let t = TimeWindow::new(Duration::from_secs(10), n(5), Instant::now()).unwrap();
    let text = format!("{t:?}");
    assert!(text.starts_with("TimeWindow {"), "{text}");
    assert!(text.contains("span: 10s"), "{text}");
    assert!(text.contains("buckets: 5"), "{text}");
}

/// A snapshot for an instant before the newest records (a caller that read its clock, then
/// snapshot after others recorded) sees some words of a bucket at the newer epoch and some at
/// the older: it is still clamped to `failures + slow <= calls`.
#[test]
fn a_snapshot_behind_the_newest_records_has_no_more_failures_and_slow_calls_than_calls() {
    let t0 = Instant::now();
    let s = Duration::from_secs(1);
    // Four buckets of one second.
    let w = TimeWindow::new(4 * s, n(4), t0).unwrap();
    for _ in 0..3 {
        w.record(Outcome::Slow, t0);
    }
    w.record(Outcome::Success, t0 + 3 * s);
    w.record(Outcome::Success, t0 + 3 * s);
    w.record(Outcome::Failure, t0 + 3 * s);
    // Epoch 4 reuses bucket 0: its calls and failures words move to epoch 4, its slow word
    // still counts epoch 0.
    w.record(Outcome::Failure, t0 + 4 * s);
    let snap = w.snapshot(t0 + 3 * s);
    assert!(snap.failures + snap.slow <= snap.calls, "{snap:?}");
    assert_eq!(
        snap,
        WindowSnapshot {
            calls: 3,
            failures: 1,
            slow: 2
        }
    );
}

/// More threads alive at once than a counter has owned slots (32): every add is counted, the
/// late threads through the shared slot.
#[test]
fn adds_from_more_live_threads_than_owned_slots_all_count() {
    more_live_threads_than_owned_slots(|counter| counter.add(0, 1));
}

/// The same through `add_then_slot`, the canary's per-thread stride: its slot test is the
/// one `add` has, and a thread on the shared slot must not lose a count either.
#[test]
fn add_then_slot_from_more_live_threads_than_owned_slots_all_count() {
    more_live_threads_than_owned_slots(|counter| {
        let _ = counter.add_then_slot(0, 1);
    });
}

/// `add_then_slot` hands back what the calling thread's slot held before the add: a sequence
/// of the thread's own adds (a fresh counter, one thread: owned or shared slot alike).
#[test]
fn add_then_slot_returns_what_the_threads_slot_held_before() {
    std::thread::spawn(|| {
        let counter = ShardedCounter::<2>::new();
        assert_eq!(counter.add_then_slot(1, 1), 0);
        assert_eq!(counter.add_then_slot(1, 5), 1);
        assert_eq!(counter.add_then_slot(1, 1), 6);
        assert_eq!(
            counter.add_then_slot(0, 2),
            0,
            "each counter has its own sequence"
        );
        assert_eq!(counter.snapshot(), [2, 7]);
    })
    .join()
    .unwrap();
}

fn more_live_threads_than_owned_slots(add_one: fn(&ShardedCounter<2>)) {
    const THREADS: usize = 80;
    const ROUNDS: u64 = 2;
    const ADDS: u64 = 150_000;
    let counter = Arc::new(ShardedCounter::<2>::new());
    // Every thread takes its slot, then none exits (returning its slot) before all have
    // added: at least 48 threads share the shared slot. The rounds make the threads start
    // again together, so those on the shared slot race on it (and with any thread that would
    // wrongly own it). A round of each thread outlasts its time slice, so the threads are
    // preempted mid-loop: a plain load and store on the shared slot then loses counts even
    // when the other cores are busy elsewhere and no two of these threads run at once (with
    // 10,000 adds a round, a whole round fitted in one slice and such a mutant survived on a
    // loaded machine).
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (counter, barrier) = (Arc::clone(&counter), Arc::clone(&barrier));
            std::thread::spawn(move || {
                counter.add(1, 0);
                for _ in 0..ROUNDS {
                    barrier.wait();
                    for _ in 0..ADDS {
                        add_one(&counter);
                    }
                }
                barrier.wait();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let total = THREADS as u64 * ROUNDS * ADDS;
    assert_eq!(counter.get(0), total);
    assert_eq!(counter.snapshot(), [total, 0]);
}
