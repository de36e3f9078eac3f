//! Publishing the level: [`LevelHandle`] (read side) and [`Controller`] (write side).
//!
//! The level is read on every request, so the handle keeps it in an `AtomicU8`: one load, no
//! lock. Subscribers that want to react to changes (a sampler, a quota scaler, a dashboard) use
//! a [`tokio::sync::watch`] channel instead of polling. The last transitions are kept in a
//! bounded history for reports and debugging.

use crate::clock::{Clock, TokioClock};
use crate::config::ConfigError;
use crate::ladder::{Ladder, LadderConfig, LadderEvent, LevelTransition, Reading};
use crate::level::Level;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

#[derive(Debug)]
struct Published {
    level: AtomicU8,
    tx: watch::Sender<Level>,
    history: Mutex<VecDeque<LevelTransition>>,
    /// The ladder's `history`; changed by [`Controller::reconfigure`].
    capacity: AtomicUsize,
}

/// The current degradation level, shared by every layer, sampler and subscriber.
///
/// Cloning is cheap and every clone sees the same level. Only a [`Controller`] changes it.
///
/// ```
/// use degrade_core::{Controller, Level};
///
/// let controller = Controller::new(Default::default()).unwrap();
/// let handle = controller.handle();
/// let mut changes = handle.subscribe();
/// controller.pin(Level::Heavy);
/// assert_eq!(handle.current(), Level::Heavy);
/// assert!(changes.has_changed().unwrap());
/// assert_eq!(*changes.borrow_and_update(), Level::Heavy);
/// assert_eq!(handle.history().len(), 1);
/// ```
#[derive(Debug, Clone)]
pub struct LevelHandle {
    inner: Arc<Published>,
}

impl LevelHandle {
    fn new(capacity: usize) -> Self {
        let (tx, _) = watch::channel(Level::Normal);
        Self {
            inner: Arc::new(Published {
                level: AtomicU8::new(Level::Normal as u8),
                tx,
                history: Mutex::new(VecDeque::with_capacity(capacity.min(64))),
                capacity: AtomicUsize::new(capacity),
            }),
        }
    }

    /// The current level: one atomic load, for the hot path.
    ///
    /// ```
    /// # use degrade_core::{Controller, Level};
    /// let c = Controller::new(Default::default()).unwrap();
    /// assert_eq!(c.handle().current(), Level::Normal);
    /// ```
    #[inline]
    pub fn current(&self) -> Level {
        // Only valid discriminants are ever stored.
        Level::from_index(usize::from(self.inner.level.load(Ordering::Relaxed)))
            .unwrap_or(Level::Emergency)
    }

    /// A receiver that is notified on every level change.
    ///
    /// ```
    /// # use degrade_core::{Controller, Level};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let c = Controller::new(Default::default()).unwrap();
    /// let mut rx = c.handle().subscribe();
    /// c.pin(Level::Light);
    /// rx.changed().await.unwrap();
    /// assert_eq!(*rx.borrow(), Level::Light);
    /// # }
    /// ```
    pub fn subscribe(&self) -> watch::Receiver<Level> {
        self.inner.tx.subscribe()
    }

    /// The recorded transitions, oldest first (at most the configured `history`).
    ///
    /// ```
    /// # use degrade_core::{Controller, Level};
    /// let c = Controller::new(Default::default()).unwrap();
    /// c.pin(Level::Light);
    /// c.pin(Level::Normal);
    /// let h = c.handle().history();
    /// assert_eq!((h[0].to, h[1].to), (Level::Light, Level::Normal));
    /// ```
    pub fn history(&self) -> Vec<LevelTransition> {
        lock(&self.inner.history).iter().cloned().collect()
    }

    fn publish(&self, t: &LevelTransition) {
        {
            let mut h = lock(&self.inner.history);
            let capacity = self.inner.capacity.load(Ordering::Relaxed).max(1);
            while h.len() >= capacity {
                h.pop_front();
            }
            h.push_back(t.clone());
        }
        self.inner.level.store(t.to as u8, Ordering::Relaxed);
        self.inner.tx.send_replace(t.to);
        if t.to > t.from {
            tracing::warn!(
                from = %t.from, to = %t.to, cause = %t.cause,
                signal = t.signal.as_deref().unwrap_or("-"),
                value = t.value.unwrap_or(f64::NAN),
                threshold = t.threshold.unwrap_or(f64::NAN),
                time_at_previous_ms = t.time_at_previous.as_millis() as u64,
                "degradation level raised"
            );
        } else {
            tracing::info!(
                from = %t.from, to = %t.to, cause = %t.cause,
                signal = t.signal.as_deref().unwrap_or("-"),
                value = t.value.unwrap_or(f64::NAN),
                threshold = t.threshold.unwrap_or(f64::NAN),
                time_at_previous_ms = t.time_at_previous.as_millis() as u64,
                "degradation level lowered"
            );
        }
    }
}

/// A poisoned lock only means another thread panicked while holding it; the data (a history or
/// a ladder) is still consistent, so keep going rather than spread the panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
struct ControllerInner<C> {
    ladder: Mutex<Ladder>,
    handle: LevelHandle,
    clock: C,
}

/// Drives a [`Ladder`] with the clock and publishes its level through a [`LevelHandle`].
///
/// A `Monitor` (in degrade-triggers) calls [`observe`](Controller::observe) on an interval; an
/// application can also feed its own signals, or pin the level by hand. Clones share one ladder.
///
/// ```
/// use degrade_core::ladder::{LadderConfig, Reading};
/// use degrade_core::{Controller, Level};
///
/// let controller = Controller::new(LadderConfig { escalate_after: 1, ..Default::default() }).unwrap();
/// controller.observe(&[Reading::new("queue", 0.82)]);
/// assert_eq!(controller.level(), Level::Moderate);
/// ```
#[derive(Debug)]
pub struct Controller<C = TokioClock> {
    inner: Arc<ControllerInner<C>>,
}

impl<C> Clone for Controller<C> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl Controller<TokioClock> {
    /// A controller on the tokio clock. Fails if the configuration is invalid.
    ///
    /// ```
    /// # use degrade_core::{Controller, ladder::LadderConfig};
    /// let bad = LadderConfig { recover_after: 0, ..Default::default() };
    /// assert_eq!(Controller::new(bad).unwrap_err().field(), "ladder.recover_after");
    /// ```
    pub fn new(config: LadderConfig) -> Result<Self, ConfigError> {
        Self::with_clock(config, TokioClock)
    }
}

impl<C: Clock> Controller<C> {
    /// A controller on the given clock (a `ManualClock` in tests).
    ///
    /// ```
    /// # #[cfg(feature = "test-util")] {
    /// use degrade_core::{Controller, ManualClock, Level, ladder::{LadderConfig, Reading}};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let cfg = LadderConfig { escalate_after: 1, recover_after: 1, dwell: Duration::from_secs(5), ..Default::default() };
    /// let c = Controller::with_clock(cfg, clock.clone()).unwrap();
    /// c.observe(&[Reading::new("cpu", 0.75)]);
    /// c.observe(&[Reading::new("cpu", 0.1)]);
    /// assert_eq!(c.level(), Level::Light); // the dwell has not passed
    /// clock.advance(Duration::from_secs(5));
    /// c.observe(&[Reading::new("cpu", 0.1)]);
    /// assert_eq!(c.level(), Level::Normal);
    /// # }
    /// ```
    pub fn with_clock(config: LadderConfig, clock: C) -> Result<Self, ConfigError> {
        let capacity = config.history;
        let ladder = Ladder::new(config, clock.now()).map_err(|e| e.within("ladder"))?;
        Ok(Self {
            inner: Arc::new(ControllerInner {
                ladder: Mutex::new(ladder),
                handle: LevelHandle::new(capacity),
                clock,
            }),
        })
    }

    /// The read side, to give to layers and subscribers.
    ///
    /// ```
    /// # use degrade_core::Controller;
    /// let c = Controller::new(Default::default()).unwrap();
    /// let h = c.handle();
    /// assert_eq!(h.current(), c.level());
    /// ```
    pub fn handle(&self) -> LevelHandle {
        self.inner.handle.clone()
    }

    /// The current level.
    ///
    /// ```
    /// # use degrade_core::{Controller, Level};
    /// assert_eq!(Controller::new(Default::default()).unwrap().level(), Level::Normal);
    /// ```
    pub fn level(&self) -> Level {
        self.inner.handle.current()
    }

    /// Feeds one sample of every signal, at the clock's now.
    ///
    /// ```
    /// # use degrade_core::{Controller, ladder::Reading};
    /// let c = Controller::new(Default::default()).unwrap();
    /// assert!(c.observe(&[Reading::new("cpu", 0.2), Reading::unknown("psi")]).is_none());
    /// ```
    pub fn observe(&self, readings: &[Reading<'_>]) -> Option<LevelTransition> {
        self.apply(LadderEvent::Sample(readings))
    }

    /// Pins the level until [`unpin`](Controller::unpin): signals keep being sampled but change
    /// nothing.
    ///
    /// ```
    /// # use degrade_core::{Controller, Level};
    /// let c = Controller::new(Default::default()).unwrap();
    /// c.pin(Level::Emergency);
    /// assert_eq!(c.level(), Level::Emergency);
    /// ```
    pub fn pin(&self, level: Level) -> Option<LevelTransition> {
        self.apply(LadderEvent::Pin(level))
    }

    /// Lets the signals drive the level again; the dwell counts from now.
    ///
    /// ```
    /// # use degrade_core::{Controller, Level};
    /// let c = Controller::new(Default::default()).unwrap();
    /// c.pin(Level::Light);
    /// c.unpin();
    /// assert_eq!(c.pinned(), None);
    /// ```
    pub fn unpin(&self) -> Option<LevelTransition> {
        self.apply(LadderEvent::Unpin)
    }

    /// The pinned level, if any.
    ///
    /// ```
    /// # use degrade_core::{Controller, Level};
    /// let c = Controller::new(Default::default()).unwrap();
    /// assert_eq!(c.pinned(), None);
    /// ```
    pub fn pinned(&self) -> Option<Level> {
        lock(&self.inner.ladder).pinned()
    }

    /// Puts a new ladder configuration in force, or changes nothing and returns the
    /// [`ConfigError`] naming the field (`ladder.thresholds.light.exit`).
    ///
    /// The new thresholds judge the next sample [`observe`](Self::observe) feeds (a `Monitor`'s
    /// next tick): see [`Ladder::reconfigure`] for what is kept (the level, a pin, the time
    /// at the level) and what starts over (runs of consecutive samples, a stretched dwell).
    /// The request path is untouched: layers read the level's one atomic word, and this takes
    /// the ladder's lock like `observe` does. A smaller `history` drops the oldest transitions
    /// at the next one recorded.
    ///
    /// ```
    /// use degrade_core::ladder::{LadderConfig, Reading};
    /// use degrade_core::{Controller, Level};
    ///
    /// let cfg = LadderConfig { escalate_after: 1, ..Default::default() };
    /// let c = Controller::new(cfg.clone()).unwrap();
    /// c.observe(&[Reading::new("queue", 0.6)]);
    /// assert_eq!(c.level(), Level::Normal);
    ///
    /// let mut hair_trigger = cfg;
    /// hair_trigger.thresholds.light.enter = 0.5;
    /// hair_trigger.thresholds.light.exit = 0.4;
    /// c.reconfigure(hair_trigger).unwrap();
    /// c.observe(&[Reading::new("queue", 0.6)]);
    /// assert_eq!(c.level(), Level::Light);
    /// assert_eq!(c.config().thresholds.light.enter, 0.5);
    /// ```
    pub fn reconfigure(&self, config: LadderConfig) -> Result<(), ConfigError> {
        let capacity = config.history;
        let mut ladder = lock(&self.inner.ladder);
        ladder
            .reconfigure(config, self.inner.clock.now())
            .map_err(|e| e.within("ladder"))?;
        self.inner
            .handle
            .inner
            .capacity
            .store(capacity, Ordering::Relaxed);
        Ok(())
    }

    /// The ladder configuration in force.
    ///
    /// ```
    /// # use degrade_core::Controller;
    /// let c = Controller::new(Default::default()).unwrap();
    /// assert_eq!(c.config().escalate_after, 3);
    /// ```
    pub fn config(&self) -> LadderConfig {
        lock(&self.inner.ladder).config().clone()
    }

    /// The clock the controller reads.
    pub fn clock(&self) -> &C {
        &self.inner.clock
    }

    fn apply(&self, event: LadderEvent<'_>) -> Option<LevelTransition> {
        let mut ladder = lock(&self.inner.ladder);
        let now = self.inner.clock.now();
        let t = ladder.on_event(event, now)?;
        // Published under the ladder's lock so subscribers and the history see transitions in
        // the order the ladder made them.
        self.inner.handle.publish(&t);
        Some(t)
    }
}
