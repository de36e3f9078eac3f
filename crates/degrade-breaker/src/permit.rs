//! [`Permit`]: one admitted call, whose outcome reaches the breaker exactly once (on
//! `record`, or as a cancelled call on drop).

use crate::shared::{Core, Shared, Ticket, Track};
use degrade_core::recycle::Held;
use degrade_core::{Classifier, Clock, Outcome};
use std::fmt;

/// The right to make one call, handed out by a breaker: records the call's outcome with
/// [`record`](Permit::record), or a cancelled call when dropped without one — so a caller that
/// gives up can never leave a half-open breaker waiting for a probe that will not come.
///
/// ```
/// use degrade_breaker::{BreakerConfig, BreakerLayer};
/// use degrade_core::Outcome;
///
/// let h = BreakerLayer::new(BreakerConfig::default())?.handle();
/// let permit = h.try_acquire().unwrap();
/// assert!(!permit.is_probe());
/// drop(permit); // cancelled
/// assert_eq!(h.snapshot().cancelled, 1);
/// h.try_acquire().unwrap().record(Outcome::Success);
/// assert_eq!(h.snapshot().successes, 1);
/// # Ok::<(), degrade_core::ConfigError>(())
/// ```
///
/// A permit writes no shared reference count: it reaches its breaker through a `&'static`
/// (the breaker's state is recycled, not freed, once its layer is gone and every permit it
/// granted has recorded), and copies the classifier (a `&'static` when it is zero-sized, as
/// every classifier degrade ships; else an `Arc`) and the clock (`TokioClock` is zero-sized, `FastClock` one byte).
/// A permit that outlives its layer records into its own breaker, never into a new one.
pub struct Permit<C: 'static, K: Clock> {
    core: &'static Core,
    classifier: Held<C>,
    clock: K,
    ticket: Ticket,
}

impl<C: 'static, K: Clock> Permit<C, K> {
    #[inline]
    pub(crate) fn new(shared: &Shared<C, K>, ticket: Ticket) -> Self {
        Self {
            core: shared.core.get(),
            classifier: shared.classifier.clone(),
            clock: shared.clock.clone(),
            ticket,
        }
    }

    /// Whether this call is a half-open probe.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer};
    /// let h = BreakerLayer::new(BreakerConfig::default())?.handle();
    /// assert!(!h.try_acquire().unwrap().is_probe());
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn is_probe(&self) -> bool {
        self.ticket.track() == Track::Probe
    }

    /// Records the call's outcome. With slow calls on, a success that took at least the slow
    /// duration since the permit was granted is recorded as slow.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer}; use degrade_core::Outcome;
    /// let h = BreakerLayer::new(BreakerConfig::default())?.handle();
    /// h.try_acquire().unwrap().record(Outcome::Failure);
    /// assert_eq!(h.snapshot().failures, 1);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn record(mut self, outcome: Outcome) {
        self.finish(outcome);
    }

    /// Records `outcome` in place and marks the permit done (its drop records nothing; a
    /// second call records nothing either). The response futures finish their permit here
    /// rather than moving it out: a move copies the permit the caller has just written, in
    /// wider loads than its stores (a store-forwarding stall, measured on the closed path).
    #[inline]
    pub(crate) fn finish(&mut self, outcome: Outcome) {
        let ticket = self.ticket;
        if ticket.track() == Track::Done {
            return;
        }
        self.ticket.word = 3; // Track::Done: the drop that follows records nothing
        self.core.complete(ticket, outcome, false, &self.clock);
    }

    /// [`finish`](Self::finish) with the outcome the classifier gives `result`.
    #[inline]
    pub(crate) fn finish_result<T, E>(&mut self, result: &Result<T, E>)
    where
        C: Classifier<T, E>,
    {
        let outcome = match result {
            Ok(res) => self.classifier.classify_response(res),
            Err(err) => self.classifier.classify_error(err),
        };
        self.finish(outcome);
    }

    /// Records a call's result through the breaker's classifier.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer};
    /// let h = BreakerLayer::new(BreakerConfig::default())?.handle();
    /// let result: Result<(), std::io::Error> = Err(std::io::ErrorKind::Other.into());
    /// h.try_acquire().unwrap().record_result(&result);
    /// assert_eq!(h.snapshot().failures, 1);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn record_result<T, E>(mut self, result: &Result<T, E>)
    where
        C: Classifier<T, E>,
    {
        self.finish_result(result);
    }
}

impl<C: 'static, K: Clock> Drop for Permit<C, K> {
    fn drop(&mut self) {
        if self.ticket.track() != Track::Done {
            self.core
                .complete(self.ticket, Outcome::Ignored, true, &self.clock);
        }
    }
}

impl<C: 'static, K: Clock> fmt::Debug for Permit<C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("probe", &self.is_probe())
            .finish_non_exhaustive()
    }
}
