//! The adaptive concurrency limit behind the [`DegradeLayer`](crate::DegradeLayer).
//!
//! Why a concurrency limit, and why adaptive: a service has a knee — below it, a request more
//! in flight costs nothing in latency; beyond it, every request more waits in the service's own
//! queue. A fixed limit has to be found by trial for each service and is wrong as soon as the
//! service slows down, scales out or changes its mix of requests. The limit here learns the
//! knee from what it observes and follows it.
//!
//! * [`Law`] is the control law, a pure function of (state, [`Window`] of observations, now):
//!   the limit is multiplied each window by the ratio of a latency target (`1 + tolerance`
//!   times the service's no-load latency, its *baseline*) to the window's mean latency, grows
//!   while demand fills the limit and nothing queues, and probes below itself now and then to
//!   re-learn the baseline. While demand does not fill it, the limit stays within a tolerance
//!   (and one request) of the highest concurrency the service was seen to serve at the target
//!   ([`Law::served`]): a limit nothing tested is not promised to the next overload. It reads
//!   no clock and touches no atomic, so it is tested by
//!   property tests and a discrete-event simulation without a runtime.
//! * The limiter (crate-private) puts the law behind atomics, shared by every clone of a layer:
//!   one word counts the requests in flight and those waiting (a compare-and-swap admits, a
//!   `fetch_sub` releases; a loom model checks that a release never misses a waiter); while
//!   the limit has headroom each thread keeps a few released slots and admits from them
//!   without a locked instruction (per-thread leases, revoked near the limit), a
//!   bounded wait queue serves the highest priority first, and the completion that closes a
//!   window moves the limit under a `try_lock` (never waited on). The hot path reads one
//!   published limit per priority: the law's, or the priority's [share](SHARES) of it while a
//!   priority above it is pressured (had a request refused in this window or the last: see
//!   [`Law::limits_under`]); a request held to its share waits, and takes the slot above its
//!   share if no request of the pressured priority did within a tenth of its queue target.
//! * [`LimitConfig`] holds only ratios and safety bounds; [`LimitSnapshot`] shows the limit,
//!   its inputs (baseline, latency ratio, the concurrency served, queue target) and the
//!   queue's counters.
//!
//! ```
//! use degrade_core::limit::LimitConfig;
//! use degrade_core::{Controller, DegradeLayer};
//! use tower::{Service, ServiceExt, Layer};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let c = Controller::new(Default::default()).unwrap();
//! // The defaults know nothing of the service: a first limit of 16, learnt from there.
//! let layer = DegradeLayer::builder(c.handle()).build().unwrap();
//! let snap = layer.snapshot().limit.unwrap();
//! assert_eq!((snap.limit, snap.in_flight, snap.baseline), (16, 0, None));
//!
//! let mut svc = layer.layer(tower::service_fn(|()| async { Ok::<_, std::convert::Infallible>(()) }));
//! svc.ready().await.unwrap().call(()).await.unwrap();
//! assert_eq!(layer.snapshot().limit.unwrap().in_flight, 0); // the slot came back
//! # let _ = LimitConfig::default();
//! # }
//! ```

mod inflight;
mod law;
mod lease;
mod limiter;
mod queue;
#[cfg(test)]
mod sim;

pub use self::law::{Law, SHARES, Window, shares};
pub use self::limiter::LimitSnapshot;
pub(crate) use self::limiter::{Completion, Entry, Limiter, Permit};
pub(crate) use self::queue::{Fate, Ticket};
#[cfg(test)]
pub(crate) use self::queue::{Pushed, WaitQueue};

use crate::config::{ConfigError, check_range};
use serde::{Deserialize, Serialize};

/// Configuration of the adaptive limit. Every field is dimensionless or a safety bound: none
/// needs to know the service, and the defaults are meant to be kept.
///
/// ```
/// use degrade_core::limit::LimitConfig;
/// let config: LimitConfig = serde_json::from_str(r#"{ "max": 200 }"#).unwrap();
/// assert_eq!(config.max, 200);
/// config.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitConfig {
    /// The limit before anything is learnt (default 16).
    pub initial: u32,
    /// The limit never goes below this (default 1).
    pub min: u32,
    /// The limit never goes above this (default 10 000): a safety bound, not a capacity.
    pub max: u32,
    /// The latency inflation over the no-load baseline at which the limit settles (default
    /// 0.1: the service runs at 110 % of its no-load latency, busy, with almost no queue).
    pub tolerance: f64,
    /// How long a request may wait for a slot, in baselines (default 0.5; in halves of the
    /// service's tail when that is longer, at most four baselines: see
    /// [`Law::queue_target`]). Near capacity a request may wait half again as long, above it
    /// 0.6 as long (a critical one: this long at any load). A waiting request is served
    /// highest priority first; one that waited longer is refused.
    ///
    /// The trade of latency for goodput this configuration offers: a wait lets a slot that
    /// frees before the next arrival be used at once, and adds to the latency of the request
    /// that waited. On the overload bench's backend (8 slots × 40 ms; `cargo xtask bench
    /// overload --quick --only degrade --queue-delay 0.3`, two runs beside two of the
    /// default) 0.3 brought the admitted p99 from 1.19–1.34× the unloaded p99 to 1.13–1.24×
    /// in `steps` at 1.5×–4×, and from 1.56–1.60× to 1.40–1.41× in `capacity-halves` at 1.5×,
    /// for 0.8–1.0 point of goodput at 1× (91.0–91.2 % of capacity against 92.0 %); it did not
    /// bound the phase after a slower one (1.36× and 1.98×). BENCHMARKS.md's "The wait for a
    /// slot" has every figure.
    pub queue_delay: f64,
    /// Most requests waiting at once, in limits (default 1.0: as many as the limit), a limit
    /// below four counting as four: at a limit of one or two, room for one or two waiters
    /// refused critical requests that a short burst brought (see `MIN_QUEUE_LIMIT` in the
    /// limiter's source for the figures). Each waiter still waits no longer than
    /// [`queue_delay`](Self::queue_delay) allows.
    pub queue_size: f64,
    /// Below the limit, one admitted request in this many is timed (default 16); every request
    /// is timed once demand reaches half the limit, until a window gathers more than eight
    /// times the samples the law needs (a service of microseconds): the limiter then times
    /// those too only as often as keeps the next window at about that many.
    pub timing_every: u32,
}

impl Default for LimitConfig {
    fn default() -> Self {
        Self {
            initial: 16,
            min: 1,
            max: 10_000,
            tolerance: 0.1,
            queue_delay: 0.5,
            queue_size: 1.0,
            timing_every: 16,
        }
    }
}

impl LimitConfig {
    /// Checks every field, naming the first bad one.
    ///
    /// ```
    /// # use degrade_core::limit::LimitConfig;
    /// let mut c = LimitConfig::default();
    /// c.min = 0;
    /// assert_eq!(c.validate().unwrap_err().field(), "min");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.min == 0 {
            return Err(ConfigError::new("min", "must be at least 1"));
        }
        if self.max < self.min {
            return Err(ConfigError::new("max", "must be at least `min`"));
        }
        if self.max > 1_000_000 {
            return Err(ConfigError::new("max", "must be at most 1000000"));
        }
        if !(self.min..=self.max).contains(&self.initial) {
            return Err(ConfigError::new("initial", "must be within [min, max]"));
        }
        check_range("tolerance", self.tolerance, 0.01, 1.0)?;
        check_range("queue_delay", self.queue_delay, 0.0, 10.0)?;
        check_range("queue_size", self.queue_size, 0.0, 10.0)?;
        if self.timing_every == 0 || self.timing_every > 1 << 16 {
            return Err(ConfigError::new(
                "timing_every",
                "must be within [1, 65536]",
            ));
        }
        Ok(())
    }
}
