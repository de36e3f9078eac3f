//! # degrade-breaker
//!
//! A circuit breaker for tower services: when a callee keeps failing, stop calling it for a
//! while, then probe it with a few calls before trusting it again. It spares the callee the load
//! that keeps it down and spares the caller the time spent waiting on calls that will fail.
//!
//! ## Example
//!
//! ```
//! use degrade_breaker::{BreakerConfig, BreakerLayer, CircuitOpen, State, WindowConfig};
//! use degrade_core::ManualClock;
//! use std::time::Duration;
//! use tower::{Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), degrade_core::BoxError> {
//! let mut config = BreakerConfig::default();
//! config.window = WindowConfig::Count { size: 10 };
//! config.minimum_calls = 5;
//! config.failure_rate = 0.5;
//! config.wait = Duration::from_secs(30);
//! config.half_open.successes = 1;
//!
//! let clock = ManualClock::new();
//! let layer = BreakerLayer::builder(config).clock(clock.clone()).build()?;
//! let handle = layer.handle();
//! let mut svc = tower::ServiceBuilder::new()
//!     .layer(layer)
//!     .service(service_fn(|ok: bool| async move { if ok { Ok(()) } else { Err("boom") } }));
//!
//! for _ in 0..5 {
//!     let _ = svc.ready().await?.call(false).await;
//! }
//! assert_eq!(handle.state(), State::Open);
//! let err = svc.ready().await?.call(true).await.unwrap_err();
//! assert_eq!(err.downcast_ref::<CircuitOpen>().unwrap().retry_after, Duration::from_secs(30));
//!
//! clock.advance(Duration::from_secs(30));
//! svc.ready().await?.call(true).await?; // the probe succeeds
//! assert_eq!(handle.state(), State::Closed);
//! # Ok(()) }
//! ```
//!
//! ## How it works
//!
//! * **A pure state machine** ([`state::BreakerMachine`]) takes `(event, now)` and returns the
//!   transition: closed → open on a threshold, open → half-open when the wait is over,
//!   half-open → closed after enough successful probes or → open on a failed one, plus the
//!   manual modes forced-open, disabled (passes and records, never moves) and metrics-only (a
//!   shadow mode: judges and reports transitions, never rejects).
//! * **Windows from `degrade_core::window`**: failures in a row, the last N calls, or the calls
//!   of the last span in buckets; thresholds on the failure rate and on the slow-call rate,
//!   judged from a minimum number of calls on.
//! * **A lock-free closed path.** One atomic word holds the state and an epoch; a call in the
//!   closed state costs one load to admit and a lock-free window record to finish. The lock
//!   around the machine is taken only when the window crosses a threshold (and re-checked under
//!   it), when the wait is over, for half-open probes' outcomes, and for manual commands.
//! * **Permits that cannot leak.** Every admitted call carries a [`Permit`] inside its response
//!   future. The outcome is recorded when the call completes; a future dropped before that
//!   records a cancelled call (ignored by default) and returns its half-open slot. At most
//!   `half_open.permits` probes are ever in flight; every other call is rejected meanwhile.
//!   A permit writes no shared reference count: it reaches the breaker through a `&'static`
//!   (degrade-core's `recycle`: the breaker's state is reused by a later breaker once its
//!   layer is gone and every call it admitted has ended, never before).
//! * **Outcomes through the core [`Classifier`](degrade_core::Classifier)**: errors (timeouts
//!   included) fail, 5xx / gRPC UNAVAILABLE fail with the HTTP / gRPC classifiers, and
//!   rejections by other degrade layers are ignored (they say nothing about the callee).
//! * **Backoff** of the open wait across repeated openings, with a deterministic jitter (a
//!   seeded hash, no random number generator).
//! * **Keyed breakers** ([`keyed`]): one breaker per host, endpoint or tenant, in a map with a
//!   bound on its size; a call for a known key takes no lock.
//!
//! ## How it differs from its peers
//!
//! Other tower breakers count only consecutive failures, let every caller through when
//! half-open, leak half-open permits when a caller gives up, create state per `layer()` call,
//! or read a clock paused tokio time does not reach; each of those is impossible here by
//! construction, and tested one by one.
//!
//! ## Concurrency, precisely
//!
//! * The state word carries an epoch bumped on every change of state. A call remembers the
//!   epoch it was admitted in; an outcome that arrives after the breaker moved on belongs to a
//!   state that is gone and is dropped (a slow call admitted while closed does not count as a
//!   probe, and cannot reopen a breaker that closed meanwhile).
//! * The thread that records an outcome judges the window right after its own record, and only
//!   a crossing takes the lock, where the machine judges the window again; two threads that
//!   cross the threshold together make one transition. The loom models in `tests/loom.rs`
//!   check this, the half-open permit bound, and races between probes and manual commands.
//! * The open deadline is published with the epoch it belongs to, so a thread that read an open
//!   state never pairs it with the deadline of the state that followed.
//!
//! A rejection is a [`CircuitOpen`] `{ retry_after, state }`, returned as the service's
//! `BoxError`; `.http()` answers 503 with `Retry-After` instead and `.grpc()` UNAVAILABLE with
//! `RetryInfo`, through the one mapping in `degrade_core::rejection`.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod error;
pub mod future;
mod handle;
pub mod keyed;
mod layer;
mod permit;
mod service;
mod shared;
pub mod state;
mod sync;

pub use config::{
    BackoffConfig, BreakerConfig, CancelledAs, HalfOpenConfig, TimeoutTarget, WindowConfig,
};
pub use error::CircuitOpen;
pub use handle::{BreakerHandle, BreakerSnapshot};
pub use keyed::{KeyedBreakerLayer, KeyedSnapshot};
pub use permit::Permit;

pub use layer::{BreakerBuilder, BreakerLayer};
pub use service::Breaker;
pub use state::{BreakerTransition, Reason, State};

// The README's examples are compiled and run as doc tests (they use the HTTP classifier).
#[doc = include_str!("../README.md")]
#[cfg(all(doctest, feature = "http"))]
pub struct ReadmeDoctests;
