//! A [`governor::clock::Clock`] over any [`degrade_core::Clock`] (feature `governor`).
//!
//! For code that uses governor's own limiters next to degrade's: the same `ManualClock` then
//! drives both in tests, and governor reads `tokio::time::Instant` (monotonic, and following
//! paused tokio time) instead of its default quanta clock, which has been seen to step
//! backwards across cores.

use degrade_core::Clock;
use degrade_core::clock::Epoch;
use governor::nanos::Nanos;

/// A governor clock reading a degrade clock: nanoseconds since the adapter was made.
///
/// ```
/// use degrade_core::ManualClock;
/// use degrade_ratelimit::GovernorClock;
/// use governor::{Quota, RateLimiter};
/// use std::num::NonZeroU32;
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// let quota = Quota::per_second(NonZeroU32::new(1).unwrap());
/// let limiter = RateLimiter::direct_with_clock(quota, GovernorClock::new(clock.clone()));
/// assert!(limiter.check().is_ok());
/// assert!(limiter.check().is_err());
/// clock.advance(Duration::from_secs(1));
/// assert!(limiter.check().is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct GovernorClock<C> {
    clock: C,
    origin: Epoch,
}

impl<C: Clock> GovernorClock<C> {
    /// An adapter whose zero is `clock`'s current instant.
    ///
    /// ```
    /// # use degrade_ratelimit::GovernorClock;
    /// use governor::clock::Clock as _;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let c = GovernorClock::new(degrade_core::TokioClock);
    /// assert!(c.now() >= governor::nanos::Nanos::new(0));
    /// # }
    /// ```
    pub fn new(clock: C) -> Self {
        let origin = clock.epoch();
        Self { clock, origin }
    }
}

impl<C: Clock> governor::clock::Clock for GovernorClock<C> {
    type Instant = Nanos;

    /// Nanoseconds since the adapter was made ([`Clock::nanos_since`]); a reading before the
    /// origin saturates to zero.
    #[inline]
    fn now(&self) -> Nanos {
        Nanos::new(self.clock.nanos_since(&self.origin))
    }
}
