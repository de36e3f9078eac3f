//! Admission by degradation level and request priority.
//!
//! # What it is for
//!
//! When a service is overloaded, serving everything slowly serves nobody: latency climbs for
//! every request and the important ones time out with the rest. The [`DegradeLayer`] reads the
//! current [`Level`] (one atomic load) and the request's [`Priority`], and admits exactly the
//! share of that priority that the [`Policy`](crate::Policy) gives the level. The rest is shed at
//! once with a typed [`Shed`] rejection — before any work is done for it.
//!
//! # How it differs from tower's `LoadShed`
//!
//! `tower::load_shed` rejects when the inner service is not ready: it needs a
//! backpressure-giving layer inside it, reacts to one instant, and cannot tell a payment from a
//! prefetch. axum also asks middleware not to rely on `poll_ready` backpressure. The
//! `DegradeLayer` decides in `call` from a level that a controller moves with hysteresis, and
//! sheds by priority: it never sheds a higher priority while admitting a lower one.
//!
//! # Deterministic shares
//!
//! A share strictly between 0 and 1 is applied with a per-priority counter stride, not a random
//! draw: request *n* of a priority is admitted when `⌊(n+1)·s⌋ > ⌊n·s⌋`. Over any run of
//! requests the admitted count is within one of the exact share, with no random number
//! generator, no syscall and no lock.
//!
//! # Three ways to answer
//!
//! * [`Errors`] (the default): the service error is a `BoxError`; a rejection downcasts to
//!   [`Shed`].
//! * [`HttpResponses`](crate::answer::HttpResponses) (feature `http`, `DegradeLayer::http`): a shed request gets a 503 with
//!   `Retry-After`, and the service keeps its inner error type, so an axum `Router` of
//!   `Infallible` services stays infallible.
//! * [`GrpcResponses`](crate::answer::GrpcResponses) (feature `grpc`, `DegradeLayer::grpc`): a shed call gets a gRPC
//!   UNAVAILABLE status with `RetryInfo`.
//!
//! # Shared state
//!
//! The layer owns one shared state: every service it makes, and every clone of those (axum
//! clones per connection), shares the counters and the level. Building the layer once and
//! applying it anywhere never creates a second budget.
//!
//! ```
//! use degrade_core::{Controller, DegradeLayer, Level, Policy, Priority};
//! use tower::{Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let controller = Controller::new(Default::default()).unwrap();
//! let layer = DegradeLayer::builder(controller.handle())
//!     .prioritize(|n: &u32| if *n == 0 { Priority::Critical } else { Priority::Low })
//!     .build()
//!     .unwrap();
//! let mut svc = tower::ServiceBuilder::new()
//!     .layer(layer.clone())
//!     .service(service_fn(|n: u32| async move { Ok::<_, std::convert::Infallible>(n) }));
//!
//! controller.pin(Level::Light); // Light admits half of Low
//! let mut admitted = 0;
//! for _ in 0..100 {
//!     if svc.ready().await.unwrap().call(7).await.is_ok() { admitted += 1; }
//! }
//! assert_eq!(admitted, 50);
//! let snap = layer.snapshot();
//! assert_eq!(snap.offered(), 100);
//! assert_eq!(snap.shed_by(Priority::Low), 50);
//! # }
//! ```

mod future;
mod layer;

#[cfg(feature = "http")]
pub use self::future::RespondFuture;
pub use self::future::ResponseFuture;
pub use self::layer::{DegradeBuilder, DegradeLayer};

use crate::answer::Errors;
#[cfg(feature = "http")]
use crate::answer::Respond;
use crate::counter::ShardedCounter;
use crate::handle::LevelHandle;
use crate::level::Level;
use crate::priority::{Fixed, Prioritize, Priority};
use crate::rejection::Shed;
use crossbeam_utils::CachePadded;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tower_service::Service;

/// Counter slots: admitted by priority, then shed by (level, priority).
const ADMITTED: usize = 0;
const SHED: usize = 5;
const SLOTS: usize = 5 + 5 * 5;
/// Shares are applied in basis points.
const FULL: u32 = 10_000;

pub(crate) struct Shared<P> {
    handle: LevelHandle,
    table: [[u32; 5]; 5],
    /// Per-priority request sequence for fractional shares. Padded: each priority's stream is
    /// independent and should not false-share with the others.
    seq: [CachePadded<AtomicU64>; 5],
    counters: ShardedCounter<SLOTS>,
    prioritizer: P,
    retry_after: Duration,
}

impl<P> fmt::Debug for Shared<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("level", &self.handle.current())
            .field("retry_after", &self.retry_after)
            .field("snapshot", &self.snapshot())
            .finish_non_exhaustive()
    }
}

impl<P> Shared<P> {
    pub(crate) fn new(
        handle: LevelHandle,
        table: [[u32; 5]; 5],
        prioritizer: P,
        retry_after: Duration,
    ) -> Self {
        Self {
            handle,
            table,
            seq: Default::default(),
            counters: ShardedCounter::new(),
            prioritizer,
            retry_after,
        }
    }

    /// The admission decision. The hot path: one atomic load for the level, a table lookup, at
    /// most one `fetch_add` for a fractional share, and one sharded counter increment.
    #[inline]
    fn decide(&self, priority: Priority) -> Result<(), Shed> {
        let level = self.handle.current();
        let p = priority.index();
        let share = self.table[level.index()][p];
        let admit = if share >= FULL {
            true
        } else if share == 0 {
            false
        } else {
            // The admit pattern of a share repeats every FULL requests, so reduce first and the
            // products below cannot overflow however long the service runs.
            let n = self.seq[p].fetch_add(1, Ordering::Relaxed) % u64::from(FULL);
            let s = u64::from(share);
            (n + 1) * s / u64::from(FULL) != n * s / u64::from(FULL)
        };
        if admit {
            self.counters.add(ADMITTED + p, 1);
            Ok(())
        } else {
            self.counters.add(SHED + level.index() * 5 + p, 1);
            Err(Shed::new(level, priority, self.retry_after))
        }
    }

    #[inline]
    fn admit<R>(&self, req: &R) -> Result<(), Shed>
    where
        P: Prioritize<R>,
    {
        self.decide(self.prioritizer.priority(req))
    }

    pub(crate) fn snapshot(&self) -> DegradeSnapshot {
        let raw = self.counters.snapshot();
        let mut snap = DegradeSnapshot::default();
        for p in 0..5 {
            snap.admitted[p] = raw[ADMITTED + p];
            for l in 0..5 {
                snap.shed[l][p] = raw[SHED + l * 5 + p];
            }
        }
        snap
    }
}

/// Counters of a [`DegradeLayer`]: admitted by priority, shed by level and priority. Offered is
/// their sum, so offered = admitted + shed holds exactly.
///
/// Arrays are indexed by [`Priority::index`] and [`Level::index`].
///
/// ```
/// use degrade_core::{Controller, DegradeLayer, Level, Policy, Priority};
/// let c = Controller::new(Default::default()).unwrap();
/// let layer = DegradeLayer::new(c.handle(), Policy::default()).unwrap();
/// let snap = layer.snapshot();
/// assert_eq!(snap.offered(), 0);
/// assert_eq!(snap.shed_at(Level::Heavy, Priority::Low), 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DegradeSnapshot {
    /// Admitted requests by priority.
    pub admitted: [u64; 5],
    /// Shed requests by level, then priority.
    pub shed: [[u64; 5]; 5],
}

impl DegradeSnapshot {
    /// All requests seen.
    ///
    /// ```
    /// # use degrade_core::degrade::DegradeSnapshot;
    /// assert_eq!(DegradeSnapshot::default().offered(), 0);
    /// ```
    pub fn offered(&self) -> u64 {
        self.admitted() + self.rejected()
    }

    /// All admitted requests.
    ///
    /// ```
    /// # use degrade_core::degrade::DegradeSnapshot;
    /// assert_eq!(DegradeSnapshot::default().admitted(), 0);
    /// ```
    pub fn admitted(&self) -> u64 {
        self.admitted.iter().sum()
    }

    /// All rejected (shed) requests.
    ///
    /// ```
    /// # use degrade_core::degrade::DegradeSnapshot;
    /// assert_eq!(DegradeSnapshot::default().rejected(), 0);
    /// ```
    pub fn rejected(&self) -> u64 {
        self.shed.iter().flatten().sum()
    }

    /// Requests of `priority` seen.
    ///
    /// ```
    /// # use degrade_core::{degrade::DegradeSnapshot, Priority};
    /// assert_eq!(DegradeSnapshot::default().offered_by(Priority::Low), 0);
    /// ```
    pub fn offered_by(&self, priority: Priority) -> u64 {
        self.admitted_by(priority) + self.shed_by(priority)
    }

    /// Admitted requests of `priority`.
    ///
    /// ```
    /// # use degrade_core::{degrade::DegradeSnapshot, Priority};
    /// assert_eq!(DegradeSnapshot::default().admitted_by(Priority::High), 0);
    /// ```
    pub fn admitted_by(&self, priority: Priority) -> u64 {
        self.admitted[priority.index()]
    }

    /// Shed requests of `priority`, at any level.
    ///
    /// ```
    /// # use degrade_core::{degrade::DegradeSnapshot, Priority};
    /// assert_eq!(DegradeSnapshot::default().shed_by(Priority::High), 0);
    /// ```
    pub fn shed_by(&self, priority: Priority) -> u64 {
        self.shed.iter().map(|row| row[priority.index()]).sum()
    }

    /// Shed requests of `priority` at `level`.
    ///
    /// ```
    /// # use degrade_core::{degrade::DegradeSnapshot, Level, Priority};
    /// assert_eq!(DegradeSnapshot::default().shed_at(Level::Light, Priority::Background), 0);
    /// ```
    pub fn shed_at(&self, level: Level, priority: Priority) -> u64 {
        self.shed[level.index()][priority.index()]
    }
}

impl crate::snapshot::Accounting for DegradeSnapshot {
    fn offered(&self) -> u64 {
        DegradeSnapshot::offered(self)
    }
    fn admitted(&self) -> u64 {
        DegradeSnapshot::admitted(self)
    }
    fn rejected(&self) -> u64 {
        DegradeSnapshot::rejected(self)
    }
}

/// The service made by [`DegradeLayer`]. `M` is the answer mode ([`Errors`],
/// [`HttpResponses`](crate::answer::HttpResponses) or [`GrpcResponses`](crate::answer::GrpcResponses)).
///
/// ```
/// use degrade_core::{Controller, DegradeLayer, Policy};
/// use tower::Layer;
///
/// let c = Controller::new(Default::default()).unwrap();
/// let layer = DegradeLayer::new(c.handle(), Policy::default()).unwrap();
/// let svc = layer.layer(tower::service_fn(|()| async { Ok::<_, std::convert::Infallible>(()) }));
/// let twin = svc.clone();
/// assert_eq!(svc.snapshot(), twin.snapshot()); // clones share the counters
/// ```
pub struct Degrade<S, P = Fixed, M = Errors> {
    inner: S,
    shared: Arc<Shared<P>>,
    _mode: PhantomData<fn() -> M>,
}

impl<S: Clone, P, M> Clone for Degrade<S, P, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            _mode: PhantomData,
        }
    }
}

impl<S: fmt::Debug, P, M> fmt::Debug for Degrade<S, P, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Degrade")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S, P, M> Degrade<S, P, M> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<P>>) -> Self {
        Self {
            inner,
            shared,
            _mode: PhantomData,
        }
    }

    crate::inner_service_accessors!(S);

    /// The shared counters.
    ///
    /// ```
    /// # use degrade_core::{Controller, DegradeLayer, Policy}; use tower::Layer;
    /// # let c = Controller::new(Default::default()).unwrap();
    /// let svc = DegradeLayer::new(c.handle(), Policy::default()).unwrap().layer(());
    /// assert_eq!(svc.snapshot().offered(), 0);
    /// ```
    pub fn snapshot(&self) -> DegradeSnapshot {
        self.shared.snapshot()
    }
}

impl<S, P, R> Service<R> for Degrade<S, P, Errors>
where
    S: Service<R>,
    S::Error: Into<crate::BoxError>,
    P: Prioritize<R>,
{
    type Response = S::Response;
    type Error = crate::BoxError;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: R) -> Self::Future {
        match self.shared.admit(&req) {
            Ok(()) => ResponseFuture::called(self.inner.call(req)),
            Err(shed) => ResponseFuture::rejected(shed),
        }
    }
}

#[cfg(feature = "http")]
impl<S, P, M, ReqB, ResB> Service<http::Request<ReqB>> for Degrade<S, P, M>
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>>,
    P: Prioritize<http::Request<ReqB>>,
    M: Respond,
    ResB: Default,
{
    type Response = http::Response<ResB>;
    type Error = S::Error;
    type Future = RespondFuture<S::Future, ResB>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        match self.shared.admit(&req) {
            Ok(()) => RespondFuture::called(self.inner.call(req)),
            Err(shed) => RespondFuture::rejected(M::respond(&shed)),
        }
    }
}
