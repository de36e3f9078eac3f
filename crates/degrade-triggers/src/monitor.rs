//! The [`Monitor`]: samples every signal on an interval and drives the ladder.

use crate::signal::{Sample, Signal, Smoother, Smoothing};
use degrade_core::ladder::{LevelTransition, Reading};
use degrade_core::{Clock, ConfigError, Controller, Level, TokioClock};
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

/// What one signal said at the last tick.
///
/// ```
/// use degrade_triggers::SignalReport;
/// let r = SignalReport { name: "cpu".into(), sample: None, pressure: None, failing: false };
/// assert!(r.pressure.is_none());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SignalReport {
    /// The signal's name.
    pub name: String,
    /// The fresh sample of this tick, if any.
    pub sample: Option<Sample>,
    /// The pressure fed to the ladder after smoothing and staleness (`None`: unknown).
    pub pressure: Option<f64>,
    /// Whether the signal's reader is currently failing.
    pub failing: bool,
}

/// The monitor's state after a tick, published on a `watch` channel.
///
/// ```
/// use degrade_triggers::MonitorSnapshot;
/// let s = MonitorSnapshot::default();
/// assert_eq!(s.ticks, 0);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MonitorSnapshot {
    /// Ticks so far.
    pub ticks: u64,
    /// The level after the last tick.
    pub level: Level,
    /// Every signal's report at the last tick, in the order the signals were added.
    pub signals: Vec<SignalReport>,
    /// Wall time spent sampling and deciding, summed over all ticks (the monitor's own cost).
    pub busy: Duration,
}

impl MonitorSnapshot {
    /// The mean cost of one tick.
    ///
    /// ```
    /// # use degrade_triggers::MonitorSnapshot; use std::time::Duration;
    /// let s = MonitorSnapshot { ticks: 4, busy: Duration::from_micros(100), ..Default::default() };
    /// assert_eq!(s.busy_per_tick(), Duration::from_micros(25));
    /// ```
    pub fn busy_per_tick(&self) -> Duration {
        if self.ticks == 0 {
            Duration::ZERO
        } else {
            self.busy / u32::try_from(self.ticks).unwrap_or(u32::MAX)
        }
    }

    /// The report of the signal named `name`.
    ///
    /// ```
    /// # use degrade_triggers::MonitorSnapshot;
    /// assert!(MonitorSnapshot::default().signal("cpu").is_none());
    /// ```
    pub fn signal(&self, name: &str) -> Option<&SignalReport> {
        self.signals.iter().find(|s| s.name == name)
    }
}

struct Entry {
    signal: Box<dyn Signal>,
    smoother: Smoother,
    failing: bool,
    panicked: bool,
}

/// Samples signals on an interval, feeds their pressures to a [`Controller`], and publishes
/// what it saw.
///
/// Each tick, every signal is sampled in turn at the controller clock's `now`; its result goes
/// through the signal's [`Smoothing`] (moving average, staleness); the pressures go to
/// [`Controller::observe`] as [`Reading`]s, which moves and publishes the level. A signal whose
/// reader fails is logged once, reads as unknown, and is logged again when it recovers. A
/// signal that panics is caught, logged once, and never sampled again (its state may be
/// broken); it reads as unknown from then on. Nothing a reader does stops the monitor.
///
/// [`spawn`](Monitor::spawn) runs it as a tokio task on `tokio::time::interval` with
/// [`MissedTickBehavior::Skip`]; [`tick`](Monitor::tick) runs one pass by hand (tests,
/// benchmarks, or a caller with its own schedule).
///
/// ```
/// use degrade_core::{Controller, Level, ladder::LadderConfig};
/// use degrade_triggers::{Gauge, Monitor, Scale};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let controller = Controller::new(LadderConfig { escalate_after: 1, ..Default::default() }).unwrap();
/// let handle = Monitor::new(controller.clone())
///     .interval(Duration::from_secs(1))
///     .signal(Gauge::new("queue", Scale::proportional(100.0).unwrap(), || Some(80.0)))
///     .spawn()
///     .unwrap();
/// tokio::time::sleep(Duration::from_millis(1500)).await; // paused time: advances at once
/// assert_eq!(controller.level(), Level::Moderate);
/// assert_eq!(handle.snapshot().signal("queue").unwrap().pressure, Some(0.80));
/// handle.shutdown().await;
/// # }
/// ```
pub struct Monitor<C = TokioClock> {
    controller: Controller<C>,
    interval: Duration,
    default_smoothing: Smoothing,
    entries: Vec<Entry>,
    snapshot: MonitorSnapshot,
}

impl<C> fmt::Debug for Monitor<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.entries.iter().map(|e| e.signal.name()).collect();
        f.debug_struct("Monitor")
            .field("interval", &self.interval)
            .field("signals", &names)
            .field("ticks", &self.snapshot.ticks)
            .finish_non_exhaustive()
    }
}

impl<C: Clock> Monitor<C> {
    /// A monitor driving `controller`, with a 1 s interval, no signal yet, and
    /// [`Smoothing::default`] for the signals added with [`signal`](Monitor::signal).
    pub fn new(controller: Controller<C>) -> Self {
        Self {
            controller,
            interval: Duration::from_secs(1),
            default_smoothing: Smoothing::default(),
            entries: Vec::new(),
            snapshot: MonitorSnapshot::default(),
        }
    }

    /// The sampling interval (default 1 s; checked by [`spawn`](Monitor::spawn)).
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The smoothing of signals added after this call with [`signal`](Monitor::signal).
    #[must_use]
    pub fn smoothing(mut self, smoothing: Smoothing) -> Self {
        self.default_smoothing = smoothing;
        self
    }

    /// Adds a signal with the current default smoothing.
    #[must_use]
    pub fn signal(self, signal: impl Signal) -> Self {
        let smoothing = self.default_smoothing;
        self.signal_with(signal, smoothing)
    }

    /// Adds a signal with its own smoothing.
    ///
    /// ```
    /// # use degrade_core::Controller; use degrade_triggers::{Gauge, Monitor, Scale, Smoothing};
    /// # use std::time::Duration;
    /// let m = Monitor::new(Controller::new(Default::default()).unwrap()).signal_with(
    ///     Gauge::new("queue", Scale::proportional(10.0).unwrap(), || Some(1.0)),
    ///     Smoothing::ewma(Duration::from_secs(2)),
    /// );
    /// # let _ = m;
    /// ```
    #[must_use]
    pub fn signal_with(mut self, signal: impl Signal, smoothing: Smoothing) -> Self {
        self.entries.push(Entry {
            signal: Box::new(signal),
            smoother: Smoother::new(smoothing),
            failing: false,
            panicked: false,
        });
        self
    }

    /// Adds an already boxed signal (from [`TriggersConfig`](crate::TriggersConfig)).
    pub(crate) fn push_boxed(&mut self, signal: Box<dyn Signal>, smoothing: Smoothing) {
        self.entries.push(Entry {
            signal,
            smoother: Smoother::new(smoothing),
            failing: false,
            panicked: false,
        });
    }

    /// The controller this monitor drives.
    ///
    /// ```
    /// # use degrade_core::{Controller, Level}; use degrade_triggers::Monitor;
    /// let m = Monitor::new(Controller::new(Default::default()).unwrap());
    /// assert_eq!(m.controller().level(), Level::Normal);
    /// ```
    pub fn controller(&self) -> &Controller<C> {
        &self.controller
    }

    /// The state after the last tick.
    ///
    /// ```
    /// # use degrade_core::Controller; use degrade_triggers::Monitor;
    /// let m = Monitor::new(Controller::new(Default::default()).unwrap());
    /// assert_eq!(m.snapshot().ticks, 0);
    /// ```
    pub fn snapshot(&self) -> &MonitorSnapshot {
        &self.snapshot
    }

    /// One pass: samples every signal at the clock's now, feeds the ladder, and returns the
    /// transition it caused, if any.
    ///
    /// ```
    /// use degrade_core::{Controller, Level, ManualClock, ladder::LadderConfig};
    /// use degrade_triggers::{Gauge, Monitor, Scale};
    ///
    /// let clock = ManualClock::new();
    /// let cfg = LadderConfig { escalate_after: 1, ..Default::default() };
    /// let controller = Controller::with_clock(cfg, clock.clone()).unwrap();
    /// let mut m = Monitor::new(controller)
    ///     .signal(Gauge::new("queue", Scale::proportional(100.0).unwrap(), || Some(96.0)));
    /// let t = m.tick().unwrap();
    /// assert_eq!(t.to, Level::Emergency);
    /// ```
    pub fn tick(&mut self) -> Option<LevelTransition> {
        // The monitor's own cost, reported in the snapshot. Measured, not used in any decision.
        let started = std::time::Instant::now();
        let now = self.controller.clock().now();
        self.snapshot
            .signals
            .resize_with(self.entries.len(), || SignalReport {
                name: String::new(),
                sample: None,
                pressure: None,
                failing: false,
            });
        for (entry, report) in self.entries.iter_mut().zip(&mut self.snapshot.signals) {
            let result = if entry.panicked {
                Err(crate::SignalError::new("the signal panicked earlier"))
            } else {
                catch_unwind(AssertUnwindSafe(|| entry.signal.sample(now))).unwrap_or_else(|_| {
                    // Its state may be broken: never sample it again.
                    entry.panicked = true;
                    Err(crate::SignalError::new(
                        "the signal panicked; it is not sampled again",
                    ))
                })
            };
            let name = entry.signal.name();
            let sample = match result {
                Ok(sample) => {
                    if entry.failing {
                        entry.failing = false;
                        tracing::info!(signal = name, "signal recovered");
                    }
                    sample.filter(|s| !s.pressure.is_nan())
                }
                Err(error) => {
                    if !entry.failing {
                        entry.failing = true;
                        tracing::warn!(
                            signal = name, %error,
                            "signal failed; it reads as unknown until it recovers"
                        );
                    }
                    None
                }
            };
            let pressure = entry.smoother.update(sample.map(|s| s.pressure), now);
            if report.name != name {
                report.name.clear();
                report.name.push_str(name);
            }
            report.sample = sample;
            report.pressure = pressure;
            report.failing = entry.failing;
        }
        let readings: Vec<Reading<'_>> = self
            .snapshot
            .signals
            .iter()
            .map(|r| Reading {
                signal: &r.name,
                pressure: r.pressure,
            })
            .collect();
        let transition = self.controller.observe(&readings);
        drop(readings);
        self.snapshot.ticks += 1;
        self.snapshot.level = self.controller.level();
        self.snapshot.busy += started.elapsed();
        transition
    }
}

impl<C: Clock> Monitor<C> {
    /// Starts the monitor as a tokio task and returns the handle that stops it. Must be called
    /// within a tokio runtime. The first tick is immediate.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] on `interval` if it is zero.
    ///
    /// ```
    /// # use degrade_core::Controller; use degrade_triggers::Monitor; use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let bad = Monitor::new(Controller::new(Default::default()).unwrap()).interval(Duration::ZERO);
    /// assert_eq!(bad.spawn().unwrap_err().field(), "interval");
    /// # }
    /// ```
    pub fn spawn(mut self) -> Result<MonitorHandle, ConfigError> {
        if self.interval.is_zero() {
            return Err(ConfigError::new("interval", "must be greater than zero"));
        }
        let (tx, rx) = watch::channel(Arc::new(self.snapshot.clone()));
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut interval = tokio::time::interval_at(Instant::now(), self.interval);
            interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    biased;
                    _ = &mut stop_rx => break,
                    _ = interval.tick() => {
                        self.tick();
                        tx.send_replace(Arc::new(self.snapshot.clone()));
                    }
                }
            }
        });
        Ok(MonitorHandle {
            snapshot: rx,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }
}

/// Controls a running [`Monitor`]: read what it saw, stop it. Dropping the handle stops the
/// monitor too.
///
/// ```
/// use degrade_core::Controller;
/// use degrade_triggers::Monitor;
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let handle = Monitor::new(Controller::new(Default::default()).unwrap()).spawn().unwrap();
/// let mut rx = handle.subscribe();
/// rx.changed().await.unwrap(); // the first tick
/// assert_eq!(rx.borrow().ticks, 1);
/// handle.shutdown().await;
/// # }
/// ```
pub struct MonitorHandle {
    snapshot: watch::Receiver<Arc<MonitorSnapshot>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for MonitorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MonitorHandle")
            .field("ticks", &self.snapshot.borrow().ticks)
            .finish_non_exhaustive()
    }
}

impl MonitorHandle {
    /// The state after the latest tick.
    pub fn snapshot(&self) -> Arc<MonitorSnapshot> {
        Arc::clone(&self.snapshot.borrow())
    }

    /// A receiver notified after every tick.
    ///
    /// ```
    /// # use degrade_core::Controller; use degrade_triggers::Monitor;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let h = Monitor::new(Controller::new(Default::default()).unwrap()).spawn().unwrap();
    /// let rx = h.subscribe();
    /// # let _ = rx;
    /// # }
    /// ```
    pub fn subscribe(&self) -> watch::Receiver<Arc<MonitorSnapshot>> {
        self.snapshot.clone()
    }

    /// Stops the monitor and waits for its task to end. A tick in progress completes first.
    ///
    /// ```
    /// # use degrade_core::Controller; use degrade_triggers::Monitor;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let h = Monitor::new(Controller::new(Default::default()).unwrap()).spawn().unwrap();
    /// h.shutdown().await;
    /// # }
    /// ```
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MonitorHandle {
    fn drop(&mut self) {
        // The task sees the closed channel on its next poll and ends; no abort needed.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
