//! [`Permit`]: one admitted call, whose outcome reaches the breaker exactly once (on
//! `record`, or as a cancelled call on drop).

use crate::shared::{Shared, Ticket, Track};
use degrade_core::{Classifier, Clock, Outcome};
use std::fmt;
use std::sync::Arc;

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
pub struct Permit<C, K: Clock> {
    shared: Arc<Shared<C, K>>,
    ticket: Ticket,
}

impl<C, K: Clock> Permit<C, K> {
    pub(crate) fn new(shared: Arc<Shared<C, K>>, ticket: Ticket) -> Self {
        Self { shared, ticket }
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
        let ticket = self.ticket;
        self.ticket.word = 3; // Track::Done: the drop that follows records nothing
        self.shared.complete(ticket, outcome, false);
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
    pub fn record_result<T, E>(self, result: &Result<T, E>)
    where
        C: Classifier<T, E>,
    {
        let outcome = match result {
            Ok(res) => self.shared.classifier.classify_response(res),
            Err(err) => self.shared.classifier.classify_error(err),
        };
        self.record(outcome);
    }
}

impl<C, K: Clock> Drop for Permit<C, K> {
    fn drop(&mut self) {
        if self.ticket.track() != Track::Done {
            self.shared.complete(self.ticket, Outcome::Ignored, true);
        }
    }
}

impl<C, K: Clock> fmt::Debug for Permit<C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("probe", &self.is_probe())
            .finish_non_exhaustive()
    }
}
