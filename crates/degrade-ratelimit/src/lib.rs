//! # degrade-ratelimit
//!
//! GCRA rate limiting for tower services: one budget shared by every clone, decided in `call`,
//! with weighted cost, bounded waiting, live quota changes, quota scaling by degradation level,
//! and keyed limits in bounded memory.
//!
//! ## Example
//!
//! Ten requests a second with a burst of two, on a clock the test moves:
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
//!
//! The budget lives in the layer: every service it makes and every clone of those (axum
//! clones per connection) share it. A [`QuotaHandle`] puts a new quota in force for the next
//! request, carrying the spent budget over *in units* (no burst of extra admits, no wave of
//! rejections); the same mechanism scales the quota by the ladder's
//! [`Level`](degrade_core::Level). Time comes from a [`degrade_core::Clock`] type parameter;
//! `GovernorClock` (feature `governor`) gives governor the same clock. With feature `redis`,
//! `fleet::FleetLayer` keeps the budget in Redis or a Redis Cluster for a whole fleet (one
//! `EVALSHA` round trip per decision, a bounded timeout, a configured policy while Redis is
//! down or slow, per-level scaling and live quota changes without a burst), and
//! `fleet::incident` pins a level on every instance at once.
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
//! `key::GrpcMetadataKey`; always: [`key::from_fn`]). A key whose budget is full again is
//! identical to an absent key, so the store drops such keys without losing anything. At the
//! cap, a full shard first drops its recovered keys; if every key in it is still mid-budget, the **new** key is rejected with
//! [`error::Cause::KeyCapacity`] (429, reason `rate_limit_key_capacity`) while known keys go on
//! being limited. The store never grows past `max_keys`, and an attacker spraying keys cannot
//! evict a live key's debt to reset it.
//!
//! ## How it differs from its peers
//!
//! tower's `RateLimit` keeps its budget in each clone of the service, so under axum it does
//! not limit; governor's quota is fixed per limiter and its keyed store grows until
//! `retain_recent` is called. Here one budget is shared by every clone, decided in `call`
//! (axum assumes services are always ready), quotas change live, and a key store has a hard
//! cap ([`KeysConfig`]).
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
