//! A failing reader is logged once when it starts failing and once when it recovers, not at
//! every tick. A minimal `tracing` subscriber counts the events by level.

use degrade_core::{Controller, ManualClock};
use degrade_triggers::{Monitor, Sample, Signal, SignalError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

#[derive(Default)]
struct Counts {
    warn: AtomicUsize,
    info: AtomicUsize,
}

struct Counter(Arc<Counts>);

impl Subscriber for Counter {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        // Only this crate's events: the ladder's own transition events come from degrade-core.
        if !event.metadata().target().starts_with("degrade_triggers") {
            return;
        }
        match *event.metadata().level() {
            Level::WARN => self.0.warn.fetch_add(1, Ordering::Relaxed),
            Level::INFO => self.0.info.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// Fails for its first `fail` samples, then reads fine.
struct FailsThenReads {
    calls: AtomicU32,
    fail: u32,
}

impl Signal for FailsThenReads {
    fn name(&self) -> &str {
        "disk"
    }
    fn sample(&mut self, _: Instant) -> Result<Option<Sample>, SignalError> {
        if self.calls.fetch_add(1, Ordering::Relaxed) < self.fail {
            Err(SignalError::new("cannot read"))
        } else {
            Ok(Some(Sample {
                value: 1.0,
                pressure: 0.1,
            }))
        }
    }
}

#[test]
fn a_failing_reader_is_logged_once_and_once_more_on_recovery() {
    let counts = Arc::new(Counts::default());
    tracing::subscriber::with_default(Counter(Arc::clone(&counts)), || {
        let clock = ManualClock::new();
        let controller = Controller::with_clock(Default::default(), clock.clone()).unwrap();
        let mut monitor = Monitor::new(controller).signal(FailsThenReads {
            calls: AtomicU32::new(0),
            fail: 10,
        });
        for _ in 0..20 {
            clock.advance(Duration::from_secs(1));
            monitor.tick();
        }
    });
    assert_eq!(
        counts.warn.load(Ordering::Relaxed),
        1,
        "one warning for ten failures"
    );
    assert_eq!(
        counts.info.load(Ordering::Relaxed),
        1,
        "one notice of recovery"
    );
}
