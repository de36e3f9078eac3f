//! # degrade-ratelimit
//!
//! GCRA rate limiting for tower services: one budget shared by every clone, decided in `call`,
//! with weighted cost, bounded waiting, live quota changes, quota scaling by degradation level,
//! and keyed limits in bounded memory.
//!
//! ## How it differs from its peers
//!
//! * **One budget, not one per clone.** tower's `RateLimit` keeps its budget inside the service
//!   value; axum clones the service per connection, so a 5 req/s limit let 1500 of 1500
//!   concurrent requests through (axum #2634). Here the budget lives in the layer: every
//!   service it makes and every clone of those share it.
//! * **Decided in `call`.** axum assumes services are always ready; a rejection is an
//!   immediately ready error (or, in HTTP/gRPC mode, an immediately ready 429 /
//!   RESOURCE_EXHAUSTED answer that keeps `Infallible` services infallible).
//! * **Quotas that change at run time.** governor's quota is fixed per limiter (governor #39,
//!   #273). Our GCRA cell stores the theoretical arrival time (TAT) in one `AtomicU64` of
//!   nanoseconds and reads the quota from a sequence-locked table, so a [`QuotaHandle`] puts a
//!   new quota in force for the next request. The spent budget carries over *in units*: a
//!   limiter that had spent half its burst still has spent half, so a change causes neither a
//!   burst of extra admits nor a wave of rejections. The same mechanism scales the quota by
//!   the ladder's [`Level`](degrade_core::Level).
//! * **One clock.** Time comes from a [`degrade_core::Clock`] type parameter, so tests run on
//!   `ManualClock`; `GovernorClock` (feature `governor`) gives governor the same clock.
//! * **A quota for a fleet.** With feature `redis`, `fleet::FleetLayer` keeps
//!   the budget in Redis (one `EVALSHA` round trip per decision, a bounded timeout, and a
//!   configured policy while Redis is down or slow).
//! * **Bounded memory for keys.** governor's keyed state grows until `retain_recent` is
//!   called. Here a key store has a hard cap; see [`KeysConfig`] and the behaviour at the cap
//!   below.
//!
//! ## The algorithm
//!
//! GCRA with emission interval `T = period / quota` (rounded *up* to whole nanoseconds, so the
//! limiter is never more generous than configured) and tolerance `τ = burst × T`. A request of
//! cost `c` units is admitted iff `max(TAT, now) + c·T − τ ≤ now + max_wait`; admission moves
//! the TAT by compare-and-swap. Over any window of length `t`, at most `quota × t / period +
//! burst` units are admitted. A rejection's `retry_after` is exact: at `now + retry_after` the
//! same request is admitted if nothing else spends budget meanwhile. A cost above the burst can
//! never be admitted and is rejected at once ([`error::Cause::CostAboveBurst`]).
//!
//! ## Waiting
//!
//! With `max_wait` set, a request whose budget comes within `max_wait` *reserves* it (the TAT
//! moves at once, so waiters are served in order and never overshoot) and sleeps on tokio's
//! timer until its slot; at most `max_waiters` wait at once, past that the request is rejected
//! with [`error::Cause::TooManyWaiters`]. A cancelled waiter's reservation is not handed back
//! (that could let a later request through early).
//!
//! ## Keys and the cap
//!
//! [`RateLimitBuilder::keyed`] gives each key its own budget (with feature `http`:
//! `key::PeerIp` with trusted proxies for `X-Forwarded-For`, `key::HeaderKey`,
//! `key::GrpcMetadataKey`; always: [`key::from_fn`]). A key whose budget is full again is identical to an absent key, so the
//! store drops such keys without losing anything. At the cap, a full shard first drops its
//! recovered keys; if every key in it is still mid-budget, the **new** key is rejected with
//! [`error::Cause::KeyCapacity`] (429, reason `rate_limit_key_capacity`) while known keys go on
//! being limited. The store never grows past `max_keys`, and an attacker spraying keys cannot
//! evict a live key's debt to reset it.
//!
//! ```
//! use degrade_ratelimit::{RateLimitConfig, RateLimitLayer, RateLimited};
//! use degrade_core::ManualClock;
//! use std::time::Duration;
//! use tower::{Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let clock = ManualClock::new();
//! let layer = RateLimitLayer::builder(RateLimitConfig::per(10, Duration::from_secs(1)).burst(2))
//!     .clock(clock.clone())
//!     .build()
//!     .unwrap();
//! let mut svc = layer.layer(tower::service_fn(|()| async { Ok::<_, std::convert::Infallible>("ok") }));
//!
//! assert!(svc.ready().await.unwrap().call(()).await.is_ok());
//! assert!(svc.ready().await.unwrap().call(()).await.is_ok()); // the burst
//! let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
//! let limited = err.downcast_ref::<RateLimited>().unwrap();
//! assert_eq!(limited.retry_after, Some(Duration::from_millis(100)));
//!
//! clock.advance(Duration::from_millis(100));
//! assert!(svc.ready().await.unwrap().call(()).await.is_ok());
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
pub mod cost;
pub mod error;
#[cfg(feature = "redis")]
pub mod fleet;
pub mod future;
#[cfg(feature = "governor")]
mod governor;
pub mod key;
mod layer;
mod limiter;
mod service;
mod state;
mod store;
mod sync;

pub use config::{LevelScale, RateLimitConfig};
pub use error::RateLimited;
#[cfg(feature = "governor")]
pub use governor::GovernorClock;
pub use layer::{KeysConfig, QuotaHandle, RateLimitBuilder, RateLimitLayer};
pub use limiter::RateLimitSnapshot;
pub use service::RateLimit;

// The README's examples are compiled and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
