//! Exact drain: the instance set as a [`tower::discover::Discover`] stream, a per-endpoint
//! layer counting requests in flight, and passive ejection of endpoints that cannot be reached.
//!
//! # Why the balancer must hear of a drain first
//!
//! Stopping an instance that a balancer still routes to fails requests; waiting a fixed time
//! after deregistering hopes they are over. Here the controller owns the balancer's view of
//! the set: a [`Pool`] hands each balancer a [`PoolDiscover`] stream, and draining an instance
//! ([`Pool::drain`]) is
//!
//! 1. push `Change::Remove` to every subscribed stream;
//! 2. wait until every stream has *yielded* it — tower's balancers poll their discover stream
//!    at the start of `poll_ready`, before choosing an endpoint, so from then on no new
//!    request can be routed to the instance, and any request routed before has already been
//!    `call`ed;
//! 3. wait until the endpoint's [`InFlight`] count reaches zero;
//!
//! each bounded by the drain timeout. Only then does the driver stop the instance. A balancer
//! that is idle (not polled) delays step 2 until the timeout: it cannot send anything in the
//! meantime either, since it polls the stream before its next pick.
//!
//! # Passive ejection
//!
//! An instance can die between two health checks, and a balancer routing to it meanwhile
//! fails every call it sends there — a fast failure, so a busy client sends many. The pool
//! therefore watches the calls themselves, like Envoy's outlier detection for locally
//! originated failures:
//!
//! 1. [`InFlight`] hands the error of a failed call to the pool's classifier
//!    ([`is_transport_failure`] by default: connection refused, reset or aborted, broken pipe,
//!    the connection closed before the answer — through the error's source chain, so a
//!    hyper-util client error counts — and never a timeout or an answer such as a 5xx);
//! 2. after `consecutive_failures` of them in a row (default 1; a call that gets an answer
//!    resets the count), the endpoint is **ejected**: `Change::Remove` goes to every
//!    subscribed balancer, which drops it before its next pick — so each balancer sends at
//!    most one more call there, and calls already in flight are the only other loss;
//! 3. a re-probe task checks it after `reprobe_interval`, doubling up to `reprobe_max`,
//!    with the check given to [`PoolBuilder::health`], else the rollout controller's
//!    [`Driver::health`](crate::Driver::health), else a TCP connect; once one passes, the
//!    endpoint **returns**: `Change::Insert` to every balancer.
//!
//! Ejection never takes more than `max_ejected_percent` of the endpoints out (default 100 %:
//! a live endpoint ejected by mistake is back after one re-probe, while a dead one routed to
//! fails every call). A drain of an ejected endpoint ends its re-probes (and does not wait
//! for balancers that saw its ejection). Ejections, returns and transport failures are
//! counted in [`Pool::snapshot`] and logged (`warn` for an ejection, `info` for a return).
//!
//! ```
//! use degrade_rollout::{Instance, discover::Pool};
//! use degrade_core::BoxError;
//! use tower::{Service, ServiceExt, service_fn};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // A client whose endpoint refuses connections (its process is gone).
//! let pool = Pool::new(|_: &Instance| {
//!     service_fn(|()| async {
//!         Err::<(), BoxError>(std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into())
//!     })
//! });
//! let a = Instance::new("a", "127.0.0.1:8001".parse().unwrap(), "v1");
//! pool.insert(&a);
//! let mut balancer = tower::balance::p2c::Balance::new(pool.discover());
//! assert!(balancer.ready().await.unwrap().call(()).await.is_err());
//! // One failed call: out of every balancer, counted.
//! assert!(pool.keys().is_empty());
//! let s = pool.snapshot();
//! assert_eq!((s.ejections, s.ejected), (1, vec![a.key()]));
//! # }
//! ```

mod eject;
mod in_flight;
mod pool;

pub use eject::{EjectionConfig, is_transport_failure};
pub use in_flight::{InFlight, ResponseFuture};
pub use pool::{DrainReport, Pool, PoolBuilder, PoolDiscover, PoolSnapshot};
