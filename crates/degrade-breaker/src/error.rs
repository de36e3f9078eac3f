//! The rejection of an open breaker.

use crate::State;
use degrade_core::rejection::{Rejection, RejectionKind};
use std::fmt;
use std::time::Duration;

/// A call rejected by a breaker that is open, forced open, or half-open with every probe
/// permit taken. Returned as the service's `BoxError` (`err.is::<CircuitOpen>()`); with the
/// `http` or `grpc` answer modes it becomes a 503 with `Retry-After` or an UNAVAILABLE status.
///
/// ```
/// use degrade_breaker::{CircuitOpen, State};
/// use degrade_core::{Rejection, RejectionKind};
/// use std::time::Duration;
///
/// let e = CircuitOpen::new(State::Open, Duration::from_millis(1500));
/// assert_eq!(e.to_string(), "circuit open, retry after 1.5s");
/// assert_eq!(e.kind(), RejectionKind::Unavailable);
/// assert_eq!(e.retry_after(), Some(Duration::from_millis(1500)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CircuitOpen {
    /// When a retry may pass: the rest of the open wait, or a hint when forced open or
    /// half-open.
    pub retry_after: Duration,
    /// The state that rejected the call (open, forced open or half-open).
    pub state: State,
}

impl CircuitOpen {
    /// A rejection by `state`, to retry after `retry_after`.
    ///
    /// ```
    /// # use degrade_breaker::{CircuitOpen, State};
    /// let e = CircuitOpen::new(State::ForcedOpen, std::time::Duration::from_secs(1));
    /// assert_eq!(e.state, State::ForcedOpen);
    /// ```
    pub fn new(state: State, retry_after: Duration) -> Self {
        Self { retry_after, state }
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.state {
            State::HalfOpen => "circuit half-open and all probes taken",
            State::ForcedOpen => "circuit forced open",
            _ => "circuit open",
        };
        write!(f, "{what}, retry after {:?}", self.retry_after)
    }
}

impl std::error::Error for CircuitOpen {}

impl Rejection for CircuitOpen {
    fn kind(&self) -> RejectionKind {
        RejectionKind::Unavailable
    }

    fn retry_after(&self) -> Option<Duration> {
        Some(self.retry_after)
    }

    fn reason(&self) -> &'static str {
        "circuit_open"
    }
}
