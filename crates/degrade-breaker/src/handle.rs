//! [`BreakerHandle`]: reads and steers one breaker; [`BreakerSnapshot`]: its counters.

use crate::error::CircuitOpen;
use crate::permit::Permit;
use crate::shared::Shared;
use crate::state::{BreakerEvent, BreakerTransition, State};
use degrade_core::window::WindowSnapshot;
use degrade_core::{Clock, FastClock};
use std::fmt;
use std::sync::Arc;
use tokio::sync::{broadcast, watch};

/// Counters and state of one breaker.
///
/// `offered() = admitted + rejected` holds exactly; every admitted call ends as exactly one of
/// successes, failures, slow, ignored or cancelled once it has finished.
///
/// ```
/// use degrade_breaker::{BreakerConfig, BreakerLayer, State};
/// let layer = BreakerLayer::new(BreakerConfig::default())?;
/// let s = layer.snapshot();
/// assert_eq!((s.state, s.offered()), (State::Closed, 0));
/// # Ok::<(), degrade_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub struct BreakerSnapshot {
    /// The state (open breakers whose wait is over read as half-open).
    pub state: State,
    /// A metrics-only breaker's shadow phase.
    pub shadow_state: Option<State>,
    /// The closed window (empty for a consecutive window).
    pub window: WindowSnapshot,
    /// Failures in a row (consecutive window only).
    pub consecutive_failures: u32,
    /// Calls let through (including probes and a metrics-only breaker's shadow rejections).
    pub admitted: u64,
    /// Calls rejected.
    pub rejected: u64,
    /// Calls a metrics-only breaker let through that a real breaker would have rejected.
    pub shadow_rejected: u64,
    /// Calls let through as half-open probes.
    pub probes: u64,
    /// Calls that succeeded.
    pub successes: u64,
    /// Calls that failed.
    pub failures: u64,
    /// Calls that succeeded slowly.
    pub slow: u64,
    /// Calls the classifier ignored.
    pub ignored: u64,
    /// Calls dropped before they finished.
    pub cancelled: u64,
    /// Transitions so far.
    pub transitions: u64,
    /// Openings in a row (what the backoff grows with).
    pub openings: u32,
}

impl BreakerSnapshot {
    /// Calls seen: admitted + rejected.
    ///
    /// ```
    /// # use degrade_breaker::BreakerSnapshot;
    /// assert_eq!(BreakerSnapshot::default().offered(), 0);
    /// ```
    pub fn offered(&self) -> u64 {
        self.admitted + self.rejected
    }

    /// Calls let through whose outcome is not recorded yet.
    ///
    /// ```
    /// # use degrade_breaker::BreakerSnapshot;
    /// assert_eq!(BreakerSnapshot::default().in_flight(), 0);
    /// ```
    pub fn in_flight(&self) -> u64 {
        self.admitted.saturating_sub(
            self.successes + self.failures + self.slow + self.ignored + self.cancelled,
        )
    }
}

impl degrade_core::snapshot::Accounting for BreakerSnapshot {
    fn offered(&self) -> u64 {
        BreakerSnapshot::offered(self)
    }
    fn admitted(&self) -> u64 {
        self.admitted
    }
    fn rejected(&self) -> u64 {
        self.rejected
    }
}

/// A handle on one breaker: its state, manual control, transitions and counters, and a
/// non-tower way to guard calls ([`try_acquire`](BreakerHandle::try_acquire)).
///
/// Cheap to clone; every clone, every service of the layer, and the layer itself share one
/// breaker.
///
/// ```
/// use degrade_breaker::{BreakerConfig, BreakerLayer, State};
///
/// let handle = BreakerLayer::new(BreakerConfig::default())?.handle();
/// handle.force_open();
/// assert_eq!(handle.state(), State::ForcedOpen);
/// assert!(handle.try_acquire().is_err());
/// handle.reset();
/// assert_eq!(handle.state(), State::Closed);
/// # Ok::<(), degrade_core::ConfigError>(())
/// ```
pub struct BreakerHandle<C: 'static = degrade_core::DefaultClassifier, K = FastClock> {
    pub(crate) shared: Arc<Shared<C, K>>,
}

impl<C: 'static, K> Clone for BreakerHandle<C, K> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<C: 'static, K> fmt::Debug for BreakerHandle<C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BreakerHandle").field(&self.shared).finish()
    }
}

impl<C: 'static, K: Clock> BreakerHandle<C, K> {
    pub(crate) fn from_shared(shared: Arc<Shared<C, K>>) -> Self {
        Self { shared }
    }

    /// The current state. An open breaker whose wait is over turns half-open here, so the
    /// state is current even when no call has come in.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer, State};
    /// let h = BreakerLayer::new(BreakerConfig::default())?.handle();
    /// assert_eq!(h.state(), State::Closed);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn state(&self) -> State {
        self.shared.state().0
    }

    /// Rejects every call until [`force_close`](Self::force_close) or [`reset`](Self::reset).
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer, State};
    /// let h = BreakerLayer::new(BreakerConfig::default())?.handle();
    /// h.force_open();
    /// assert_eq!(h.state(), State::ForcedOpen);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn force_open(&self) {
        self.shared.event(BreakerEvent::ForceOpen);
    }

    /// Closes the breaker (from any state) with an empty window; the backoff of repeated
    /// openings is kept.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer, State};
    /// let h = BreakerLayer::new(BreakerConfig::default())?.handle();
    /// h.force_open();
    /// h.force_close();
    /// assert_eq!(h.state(), State::Closed);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn force_close(&self) {
        self.shared.event(BreakerEvent::ForceClose);
    }

    /// Closes the breaker with an empty window and forgets the backoff.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer, State};
    /// let h = BreakerLayer::new(BreakerConfig::default())?.handle();
    /// h.disable();
    /// h.reset();
    /// assert_eq!(h.state(), State::Closed);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn reset(&self) {
        self.shared.event(BreakerEvent::Reset);
    }

    /// Puts new thresholds in force while calls flow, or changes nothing and returns the
    /// [`ConfigError`](degrade_core::ConfigError) naming the field.
    ///
    /// What may change live, and what needs a new breaker, is listed at
    /// [`BreakerConfig::live_change`](crate::BreakerConfig::live_change). The point at which a
    /// change applies is fixed: the calls already in the window stay, and the next call
    /// recorded after this returns is judged by the new thresholds (a window already over a
    /// lowered threshold opens at that call); an open wait keeps its deadline and the next
    /// opening waits the new `wait` (with the new backoff); probes of a half-open period in
    /// progress are counted against the new `successes` / `failures` from the next probe
    /// outcome. The state does not change by itself. The admit path is untouched; the
    /// after-call check reads the thresholds from atomics, with no lock.
    ///
    /// ```
    /// use degrade_breaker::{BreakerConfig, BreakerLayer, State, WindowConfig};
    /// use degrade_core::Outcome;
    ///
    /// let mut config = BreakerConfig::default();
    /// config.window = WindowConfig::Consecutive { failures: 5 };
    /// let h = BreakerLayer::new(config.clone())?.handle();
    /// for _ in 0..2 { h.try_acquire().unwrap().record(Outcome::Failure); }
    /// assert_eq!(h.state(), State::Closed);
    ///
    /// config.window = WindowConfig::Consecutive { failures: 3 };
    /// h.reconfigure(config.clone())?;
    /// h.try_acquire().unwrap().record(Outcome::Failure); // the third in a row
    /// assert_eq!(h.state(), State::Open);
    ///
    /// config.window = WindowConfig::Count { size: 100 };
    /// assert_eq!(h.reconfigure(config).unwrap_err().field(), "window"); // needs a restart
    /// assert_eq!(h.config().window, WindowConfig::Consecutive { failures: 3 });
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn reconfigure(
        &self,
        config: crate::BreakerConfig,
    ) -> Result<(), degrade_core::ConfigError> {
        self.shared.reconfigure(config)
    }

    /// The configuration in force.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer};
    /// let h = BreakerLayer::new(BreakerConfig::default())?.handle();
    /// assert_eq!(h.config(), BreakerConfig::default());
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn config(&self) -> crate::BreakerConfig {
        self.shared.lock().config().clone()
    }

    /// Lets every call through and keeps recording, without ever moving.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer, State};
    /// let h = BreakerLayer::new(BreakerConfig::default())?.handle();
    /// h.disable();
    /// assert_eq!(h.state(), State::Disabled);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn disable(&self) {
        self.shared.event(BreakerEvent::Disable);
    }

    /// Shadow mode: lets every call through, judges, and reports the transitions a real
    /// breaker would make (flagged `shadow`).
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer, State};
    /// let h = BreakerLayer::new(BreakerConfig::default())?.handle();
    /// h.metrics_only();
    /// assert_eq!(h.state(), State::MetricsOnly);
    /// assert_eq!(h.snapshot().shadow_state, Some(State::Closed));
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn metrics_only(&self) {
        self.shared.event(BreakerEvent::MetricsOnly);
    }

    /// Every transition from now on. A receiver that falls more than 64 transitions behind
    /// gets `RecvError::Lagged` and continues with the newest.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer, State};
    /// let h = BreakerLayer::new(BreakerConfig::default())?.handle();
    /// let mut rx = h.subscribe();
    /// h.force_open();
    /// assert_eq!(rx.try_recv().unwrap().to, State::ForcedOpen);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn subscribe(&self) -> broadcast::Receiver<BreakerTransition> {
        self.shared.lock().events.subscribe()
    }

    /// The latest state, as a `watch` channel (for a task that only cares where the breaker
    /// is now).
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer, State};
    /// let h = BreakerLayer::new(BreakerConfig::default())?.handle();
    /// let rx = h.watch();
    /// h.disable();
    /// assert_eq!(*rx.borrow(), State::Disabled);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn watch(&self) -> watch::Receiver<State> {
        self.shared.lock().states.subscribe()
    }

    /// Counters and state.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer};
    /// let h = BreakerLayer::new(BreakerConfig::default())?.handle();
    /// assert!(h.try_acquire().is_ok());
    /// assert_eq!(h.snapshot().admitted, 1);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn snapshot(&self) -> BreakerSnapshot {
        self.shared.snapshot()
    }

    /// The breaker's name (in its `tracing` events).
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer};
    /// let layer = BreakerLayer::builder(BreakerConfig::default()).name("db").build()?;
    /// assert_eq!(layer.handle().name(), "db");
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Asks to make one call outside tower: a [`Permit`] to record the call's outcome on, or
    /// the rejection. A permit dropped without an outcome records a cancelled call.
    ///
    /// # Errors
    ///
    /// [`CircuitOpen`] when the breaker rejects the call.
    ///
    /// ```
    /// use degrade_breaker::{BreakerConfig, BreakerLayer, WindowConfig, State};
    /// use degrade_core::Outcome;
    ///
    /// let mut config = BreakerConfig::default();
    /// config.window = WindowConfig::Consecutive { failures: 2 };
    /// let h = BreakerLayer::new(config)?.handle();
    /// for _ in 0..2 {
    ///     h.try_acquire().unwrap().record(Outcome::Failure);
    /// }
    /// assert_eq!(h.state(), State::Open);
    /// assert!(h.try_acquire().unwrap_err().retry_after > std::time::Duration::ZERO);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn try_acquire(&self) -> Result<Permit<C, K>, CircuitOpen> {
        let ticket = self.shared.admit()?;
        Ok(Permit::new(&self.shared, ticket))
    }
}
