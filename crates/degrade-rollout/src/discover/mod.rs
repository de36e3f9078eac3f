//! Exact drain: the instance set as a [`tower::discover::Discover`] stream, and a per-endpoint
//! layer counting requests in flight.
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

mod eject;
mod in_flight;
mod pool;

pub use eject::{EjectionConfig, is_transport_failure};
pub use in_flight::{InFlight, ResponseFuture};
pub use pool::{DrainReport, Pool, PoolBuilder, PoolDiscover, PoolSnapshot};
