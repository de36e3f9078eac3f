//! The rejection of the rate limit layers.

use degrade_core::{Rejection, RejectionKind};
use std::fmt;
use std::time::Duration;

/// Why a request was refused.
///
/// ```
/// use degrade_ratelimit::error::Cause;
/// assert_eq!(Cause::OverQuota.as_str(), "rate_limited");
/// assert_eq!(Cause::KeyCapacity.as_str(), "rate_limit_key_capacity");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Cause {
    /// The budget is spent: the request would have had to wait longer than allowed (or waiting
    /// is off).
    OverQuota,
    /// The request costs more than the burst: it can never be admitted under this quota, so it
    /// is refused at once instead of waiting forever.
    CostAboveBurst,
    /// Waiting is allowed, but the bounded number of waiters is reached.
    TooManyWaiters,
    /// The keyed store is at its cap and every key in it is still mid-budget, so a new key
    /// cannot be tracked (see [`KeysConfig`](crate::KeysConfig)).
    KeyCapacity,
    /// Fleet mode: Redis did not answer within the decision timeout, and the policy while it
    /// is unavailable is to fail closed.
    FleetUnavailable,
}

impl Cause {
    /// All causes, in counter order.
    ///
    /// ```
    /// # use degrade_ratelimit::error::Cause;
    /// assert_eq!(Cause::ALL.len(), 5);
    /// ```
    pub const ALL: [Cause; 5] = [
        Cause::OverQuota,
        Cause::CostAboveBurst,
        Cause::TooManyWaiters,
        Cause::KeyCapacity,
        Cause::FleetUnavailable,
    ];

    /// The machine-readable reason, used as the `degrade-rejection` header value.
    ///
    /// ```
    /// # use degrade_ratelimit::error::Cause;
    /// assert_eq!(Cause::CostAboveBurst.as_str(), "rate_limit_cost_above_burst");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Cause::OverQuota => "rate_limited",
            Cause::CostAboveBurst => "rate_limit_cost_above_burst",
            Cause::TooManyWaiters => "rate_limit_too_many_waiters",
            Cause::KeyCapacity => "rate_limit_key_capacity",
            Cause::FleetUnavailable => "rate_limit_fleet_unavailable",
        }
    }

    /// Index of the cause in [`Cause::ALL`].
    ///
    /// ```
    /// # use degrade_ratelimit::error::Cause;
    /// assert_eq!(Cause::KeyCapacity.index(), 3);
    /// ```
    pub const fn index(self) -> usize {
        match self {
            Cause::OverQuota => 0,
            Cause::CostAboveBurst => 1,
            Cause::TooManyWaiters => 2,
            Cause::KeyCapacity => 3,
            Cause::FleetUnavailable => 4,
        }
    }
}

/// A request refused by a rate limit layer.
///
/// Returned as the service's `BoxError` (`err.is::<RateLimited>()`), or, in HTTP / gRPC mode,
/// answered as 429 / RESOURCE_EXHAUSTED through `degrade_core`'s mapping.
///
/// `retry_after` is the earliest time at which the same request would be admitted if nothing
/// else consumed the budget meanwhile; it is never shorter than the real wait (rounded up to the
/// next nanosecond, and to the next whole second in `Retry-After`). It is `None` when waiting
/// cannot help ([`Cause::CostAboveBurst`]).
///
/// ```
/// use degrade_ratelimit::RateLimited;
/// use degrade_ratelimit::error::Cause;
/// use degrade_core::{Rejection, RejectionKind};
/// use std::time::Duration;
///
/// let r = RateLimited::new(Cause::OverQuota, Some(Duration::from_millis(250)));
/// assert_eq!(r.kind(), RejectionKind::RateLimited);
/// assert_eq!(r.retry_after(), Some(Duration::from_millis(250)));
/// assert_eq!(r.to_string(), "rate limited, retry after 250ms");
/// let err: degrade_core::BoxError = Box::new(r);
/// assert!(err.is::<RateLimited>());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimited {
    /// Why the request was refused.
    pub cause: Cause,
    /// When the same request would be admitted, if it ever can be.
    pub retry_after: Option<Duration>,
    /// The quota in force: units per window, for the `RateLimit-Policy` field.
    pub quota: u64,
    /// The quota's window.
    pub window: Duration,
}

impl RateLimited {
    /// A rejection with no quota information.
    ///
    /// ```
    /// # use degrade_ratelimit::{RateLimited, error::Cause};
    /// let r = RateLimited::new(Cause::CostAboveBurst, None);
    /// assert_eq!(r.quota, 0);
    /// ```
    pub fn new(cause: Cause, retry_after: Option<Duration>) -> Self {
        Self {
            cause,
            retry_after,
            quota: 0,
            window: Duration::ZERO,
        }
    }

    pub(crate) fn with_policy(mut self, quota: u64, window: Duration) -> Self {
        self.quota = quota;
        self.window = window;
        self
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.cause, self.retry_after) {
            (Cause::OverQuota, Some(d)) => write!(f, "rate limited, retry after {d:?}"),
            (Cause::OverQuota, None) => f.write_str("rate limited"),
            (Cause::CostAboveBurst, _) => {
                f.write_str("rate limited: the request costs more than the burst allows")
            }
            (Cause::TooManyWaiters, _) => {
                f.write_str("rate limited: too many requests already waiting")
            }
            (Cause::KeyCapacity, _) => {
                f.write_str("rate limited: key store full of keys still mid-budget")
            }
            (Cause::FleetUnavailable, _) => {
                f.write_str("rate limited: the fleet's shared limiter is unavailable")
            }
        }
    }
}

impl std::error::Error for RateLimited {}

impl Rejection for RateLimited {
    fn kind(&self) -> RejectionKind {
        RejectionKind::RateLimited
    }
    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
    fn reason(&self) -> &'static str {
        self.cause.as_str()
    }

    /// The IETF `RateLimit-Policy` and `RateLimit` fields
    /// (draft-ietf-httpapi-ratelimit-headers): the quota and its window, and zero remaining with
    /// the reset in whole seconds (rounded up).
    #[cfg(feature = "http")]
    fn http_headers(&self, headers: &mut http::HeaderMap) {
        use degrade_core::rejection::retry_after_secs;
        if self.quota == 0 {
            return;
        }
        let w = retry_after_secs(self.window).max(1);
        let policy = format!("\"degrade\";q={};w={w}", self.quota);
        let t = self.retry_after.map_or(w, retry_after_secs);
        let state = format!("\"degrade\";r=0;t={t}");
        if let Ok(v) = http::HeaderValue::from_str(&policy) {
            headers.insert("ratelimit-policy", v);
        }
        if let Ok(v) = http::HeaderValue::from_str(&state) {
            headers.insert("ratelimit", v);
        }
    }
}
