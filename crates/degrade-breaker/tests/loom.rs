//! loom models of the breaker's concurrent paths: outcomes recorded on two threads while the
//! breaker moves, and the half-open permit counter.
//!
//! Run with
//! `RUSTFLAGS="--cfg degrade_loom" CARGO_TARGET_DIR=target/loom cargo test -p degrade-breaker --release --test loom`.
//! Under that cfg the breaker's state word, permit word and lock are loom's (as are
//! degrade-core's window atomics), so loom explores every interleaving of the real code.
//! Models keep to two threads.
#![cfg(degrade_loom)]

use degrade_breaker::{BreakerConfig, BreakerHandle, BreakerLayer, State, WindowConfig};
use degrade_core::{DefaultClassifier, ManualClock, Outcome};
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;
use std::sync::Arc;
use std::time::Duration;

type Handle = BreakerHandle<DefaultClassifier, ManualClock>;

const WAIT: Duration = Duration::from_secs(1);

fn breaker(window: WindowConfig, permits: u32, successes: u32) -> (Handle, ManualClock) {
    let mut c = BreakerConfig::default();
    c.window = window;
    c.minimum_calls = 2;
    c.failure_rate = 0.5;
    c.wait = WAIT;
    c.half_open.permits = permits;
    c.half_open.successes = successes;
    let clock = ManualClock::new();
    let handle = BreakerLayer::builder(c)
        .clock(clock.clone())
        .build()
        .unwrap()
        .handle();
    (handle, clock)
}

/// Opens the breaker and lets its wait pass, so the next call finds it half-open.
fn half_open(window: WindowConfig, permits: u32, successes: u32) -> (Handle, ManualClock) {
    let (h, clock) = breaker(window, permits, successes);
    for _ in 0..2 {
        h.try_acquire().unwrap().record(Outcome::Failure);
    }
    assert_eq!(h.state(), State::Open);
    clock.advance(WAIT);
    (h, clock)
}

/// Two threads each record a failure that, together, cross the threshold: exactly one
/// closed → open transition is made and published, whatever the interleaving.
fn concurrent_failures_open_once(window: WindowConfig) {
    loom::model(move || {
        let (h, _clock) = breaker(window, 1, 1);
        let mut rx = h.subscribe();
        let h1 = h.clone();
        let t = thread::spawn(move || h1.try_acquire().unwrap().record(Outcome::Failure));
        h.try_acquire().unwrap().record(Outcome::Failure);
        t.join().unwrap();
        assert_eq!(h.state(), State::Open);
        let first = rx.try_recv().unwrap();
        assert_eq!((first.from, first.to), (State::Closed, State::Open));
        assert!(rx.try_recv().is_err(), "a second transition was made");
        assert_eq!(h.snapshot().transitions, 1);
    });
}

#[test]
fn count_window_concurrent_failures_open_once() {
    concurrent_failures_open_once(WindowConfig::Count { size: 2 });
}

#[test]
fn consecutive_window_concurrent_failures_open_once() {
    concurrent_failures_open_once(WindowConfig::Consecutive { failures: 2 });
}

/// Two threads race for one half-open permit, each probing twice: never more than one probe
/// is in flight, every admitted probe is recorded, and the breaker closes exactly once.
///
/// Four admissions and two recordings, each with a lock and a broadcast, are too many for an
/// unbounded search (minutes, unfinished); with three preemptions the model runs in seconds and
/// still finds the bug it was written for (a thread pairing a stale open state with the
/// deadline of the half-open state that followed, and rejecting forever) when the deadline's
/// epoch tag is removed.
#[test]
fn half_open_never_admits_more_than_its_permits() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(|| {
        let (h, _clock) = half_open(WindowConfig::Count { size: 2 }, 1, 2);
        let mut rx = h.subscribe();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let probe = {
            let h = h.clone();
            let in_flight = Arc::clone(&in_flight);
            move || {
                let mut admitted = 0;
                for _ in 0..2 {
                    if let Ok(p) = h.try_acquire() {
                        if p.is_probe() {
                            let n = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                            assert!(n <= 1, "{n} probes in flight");
                            in_flight.fetch_sub(1, Ordering::SeqCst);
                        }
                        p.record(Outcome::Success);
                        admitted += 1;
                    }
                }
                admitted
            }
        };
        let t = thread::spawn(probe.clone());
        let mine = probe();
        let theirs = t.join().unwrap();
        let s = h.snapshot();
        assert_eq!(s.admitted, 2 + mine + theirs);
        assert_eq!(s.in_flight(), 0);
        assert!(mine + theirs >= 2, "the breaker lost a permit");
        // Open -> half-open, then exactly one half-open -> closed.
        let mut ts = Vec::new();
        while let Ok(t) = rx.try_recv() {
            ts.push((t.from, t.to));
        }
        assert_eq!(
            ts,
            [
                (State::Open, State::HalfOpen),
                (State::HalfOpen, State::Closed)
            ]
        );
        assert_eq!(h.state(), State::Closed);
    });
}

/// A failing probe and a succeeding probe finish at the same time: whichever the machine
/// sees first decides, the other is stale, and the published transitions end in the
/// breaker's state.
#[test]
fn racing_probe_outcomes_make_one_decision() {
    loom::model(|| {
        let (h, _clock) = half_open(WindowConfig::Count { size: 2 }, 2, 1);
        let a = h.try_acquire().unwrap();
        let b = h.try_acquire().unwrap();
        assert!(a.is_probe() && b.is_probe());
        let mut rx = h.subscribe();
        let t = thread::spawn(move || a.record(Outcome::Failure));
        b.record(Outcome::Success);
        t.join().unwrap();
        let mut last = None;
        let mut n = 0;
        while let Ok(t) = rx.try_recv() {
            assert_eq!(t.from, State::HalfOpen);
            last = Some(t.to);
            n += 1;
        }
        assert_eq!(n, 1);
        assert_eq!(Some(h.state()), last);
    });
}

/// A manual command races with a probe's outcome: neither is lost, and the breaker ends in the
/// state of the last published transition.
#[test]
fn force_open_racing_a_probe_is_not_lost() {
    loom::model(|| {
        let (h, _clock) = half_open(WindowConfig::Count { size: 2 }, 1, 1);
        let p = h.try_acquire().unwrap();
        let mut rx = h.subscribe();
        let h1 = h.clone();
        let t = thread::spawn(move || h1.force_open());
        p.record(Outcome::Success);
        t.join().unwrap();
        let mut ts = Vec::new();
        while let Ok(t) = rx.try_recv() {
            ts.push(t.to);
        }
        assert_eq!(ts.last(), Some(&State::ForcedOpen));
        assert_eq!(h.state(), State::ForcedOpen);
        assert!(h.try_acquire().is_err());
    });
}
