//! loom models of the lock-free windows in `degrade_core::window`.
//!
//! Run with
//! `RUSTFLAGS="--cfg degrade_loom" CARGO_TARGET_DIR=target/loom cargo test -p degrade-core --release --test loom`.
//! Each model keeps to two threads and a window of two so that loom can explore every
//! interleaving; the arguments they check do not depend on the size.
#![cfg(degrade_loom)]

use std::num::NonZeroU32;
use std::time::Duration;

use degrade_core::Outcome;
use degrade_core::window::{CountWindow, TimeWindow, WindowSnapshot};
use loom::sync::Arc;
use loom::thread;
use tokio::time::Instant;

const TWO: NonZeroU32 = NonZeroU32::new(2).unwrap();

fn snap(calls: u64, failures: u64, slow: u64) -> WindowSnapshot {
    WindowSnapshot {
        calls,
        failures,
        slow,
    }
}

/// Records on two threads, then checks that the totals match the slots: the window holds the
/// number of calls it should, and after two fresh records and a reset nothing is left over
/// (a drifted total would survive both).
fn count_window_model(a: &'static [Outcome], b: &'static [Outcome]) {
    loom::model(move || {
        let w = Arc::new(CountWindow::new(TWO));
        let w1 = Arc::clone(&w);
        let t = thread::spawn(move || {
            for &o in a {
                w1.record(o);
            }
        });
        for &o in b {
            w.record(o);
        }
        t.join().unwrap();

        let total = (a.len() + b.len()) as u64;
        let s = w.snapshot();
        assert_eq!(s.calls, total.min(2), "{s:?}");
        let failures = a
            .iter()
            .chain(b)
            .filter(|o| **o == Outcome::Failure)
            .count() as u64;
        assert!(
            s.failures <= failures && s.failures + s.slow <= s.calls,
            "{s:?}"
        );

        w.record(Outcome::Success);
        w.record(Outcome::Success);
        assert_eq!(w.snapshot(), snap(2, 0, 0));
        w.reset();
        assert_eq!(w.snapshot(), snap(0, 0, 0));
    });
}

#[test]
fn count_window_concurrent_records_within_size() {
    count_window_model(&[Outcome::Failure], &[Outcome::Slow]);
}

#[test]
fn count_window_concurrent_records_evict_exactly() {
    count_window_model(
        &[Outcome::Failure, Outcome::Failure],
        &[Outcome::Slow, Outcome::Success],
    );
}

#[test]
fn count_window_record_racing_reset_stays_consistent() {
    loom::model(|| {
        let w = Arc::new(CountWindow::new(TWO));
        w.record(Outcome::Slow);
        let w1 = Arc::clone(&w);
        let t = thread::spawn(move || {
            w1.record(Outcome::Failure);
            w1.record(Outcome::Failure);
        });
        w.reset();
        t.join().unwrap();

        let s = w.snapshot();
        assert!(
            s.calls <= 2 && s.failures == s.calls - s.slow && s.slow <= 1,
            "{s:?}"
        );

        w.record(Outcome::Success);
        w.record(Outcome::Success);
        assert_eq!(w.snapshot(), snap(2, 0, 0));
        w.reset();
        assert_eq!(w.snapshot(), snap(0, 0, 0));
    });
}

#[test]
fn time_window_same_epoch_loses_no_count() {
    loom::model(|| {
        let t0 = Instant::from_std(std::time::Instant::now());
        let w = Arc::new(TimeWindow::new(Duration::from_millis(2), TWO, t0).unwrap());
        let w1 = Arc::clone(&w);
        let t = thread::spawn(move || {
            w1.record(Outcome::Failure, t0);
            w1.record(Outcome::Success, t0);
        });
        w.record(Outcome::Slow, t0);
        w.record(Outcome::Failure, t0);
        t.join().unwrap();

        assert_eq!(w.snapshot(t0), snap(4, 2, 1));
    });
}

#[test]
fn time_window_late_writer_never_pollutes_newer_bucket() {
    loom::model(|| {
        let t0 = Instant::from_std(std::time::Instant::now());
        let w = Arc::new(TimeWindow::new(Duration::from_millis(2), TWO, t0).unwrap());
        // Epoch 2 shares epoch 0's bucket.
        let new = t0 + Duration::from_millis(2);
        let w1 = Arc::clone(&w);
        let t = thread::spawn(move || {
            w1.record(Outcome::Failure, t0);
            w1.record(Outcome::Failure, t0);
        });
        w.record(Outcome::Success, new);
        w.record(Outcome::Slow, new);
        t.join().unwrap();

        // The newer epoch holds exactly its own calls, whatever the old writer did.
        assert_eq!(w.snapshot(new), snap(2, 0, 1));
        // The old epoch kept whatever it recorded before the newer one took the bucket.
        let old = w.snapshot(t0);
        assert!(old.calls <= 2 && old.failures == old.calls, "{old:?}");
    });
}
