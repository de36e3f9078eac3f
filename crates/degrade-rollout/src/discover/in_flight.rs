//! [`InFlight`]: the per-endpoint middleware counting requests in flight (the endpoint's
//! `Load`, what a drain waits for) and their outcomes (what analysis compares), and reporting
//! transport failures to its pool (what passive ejection acts on).

use crate::instance::Key;
use degrade_canary::stats::{ARM_LAYOUT, ArmSnapshot};
use degrade_core::histogram::AtomicHistogram;
use degrade_core::{BoxError, Clock, TokioClock};
use pin_project_lite::pin_project;
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use tokio::sync::Notify;
use tower::load::Load;
use tower_service::Service;

/// Where an endpoint reports the failed calls it sees: its pool.
pub(super) trait FailureSink: Send + Sync {
    /// Whether `error` means the endpoint could not be reached (the pool's classifier).
    fn is_transport_failure(&self, error: &(dyn Error + 'static)) -> bool;
    /// A call to the endpoint failed at the transport; `streak` is the count of consecutive
    /// ones.
    fn transport_failure(
        self: Arc<Self>,
        endpoint: &Endpoint,
        streak: u32,
        error: &(dyn Error + 'static),
    );
}

/// One endpoint as its clients see it: requests in flight, finished outcomes, consecutive
/// transport failures, and the pool to tell about them.
pub(super) struct Endpoint {
    pub(super) key: Key,
    /// Which insertion of `key` into the pool this is (a drained and re-inserted endpoint is
    /// another one: late failures of the old one must not eject the new).
    pub(super) generation: u64,
    pub(super) in_flight: AtomicUsize,
    pub(super) ok: AtomicU64,
    pub(super) err: AtomicU64,
    pub(super) latency: AtomicHistogram,
    pub(super) idle: Notify,
    /// Consecutive calls that failed at the transport.
    pub(super) streak: AtomicU32,
    pub(super) sink: Weak<dyn FailureSink>,
}

impl Endpoint {
    pub(super) fn new(key: Key, generation: u64, sink: Weak<dyn FailureSink>) -> Self {
        Self {
            key,
            generation,
            in_flight: AtomicUsize::new(0),
            ok: AtomicU64::new(0),
            err: AtomicU64::new(0),
            latency: AtomicHistogram::new(ARM_LAYOUT, 1),
            idle: Notify::new(),
            streak: AtomicU32::new(0),
            sink,
        }
    }

    pub(super) fn arm(&self) -> ArmSnapshot {
        let mut a = ArmSnapshot::default();
        a.successes = self.ok.load(Ordering::Relaxed);
        a.failures = self.err.load(Ordering::Relaxed);
        a.latency = self.latency.snapshot();
        a
    }

    /// The endpoint answered: its transport works.
    fn reached(&self) {
        // A load first: no write (no cache line bouncing between balancers) on the usual path.
        if self.streak.load(Ordering::Relaxed) != 0 {
            self.streak.store(0, Ordering::Relaxed);
        }
    }

    /// A call failed with `error`: a transport failure counts towards ejection, any other
    /// error is an answer (the endpoint is reachable).
    fn failed(&self, error: &(dyn Error + 'static)) {
        let Some(sink) = self.sink.upgrade() else {
            return;
        };
        if sink.is_transport_failure(error) {
            let streak = self
                .streak
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            sink.transport_failure(self, streak, error);
        } else {
            self.reached();
        }
    }
}

/// A client service of one endpoint, counting its requests in flight (its [`Load`]) and
/// their outcomes (`Ok` is a success, `Err` a failure), and telling its pool when a call
/// fails at the transport (see [passive ejection](crate::discover#passive-ejection)).
///
/// ```
/// use degrade_rollout::{Instance, discover::Pool};
/// use tower::{Service, ServiceExt, service_fn};
/// use tower::load::Load;
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let pool = Pool::new(|_: &Instance| service_fn(|n: u32| async move { Ok::<_, std::convert::Infallible>(n) }));
/// let a = Instance::new("a", "127.0.0.1:1".parse().unwrap(), "v1");
/// pool.insert(&a);
/// let mut svc = pool.service(&a.key()).unwrap();
/// assert_eq!(svc.load(), 0);
/// assert_eq!(svc.ready().await.unwrap().call(7).await.unwrap(), 7);
/// assert_eq!(pool.in_flight(&a.key()), Some(0));
/// # }
/// ```
pub struct InFlight<S, C = TokioClock> {
    pub(super) inner: S,
    pub(super) endpoint: Arc<Endpoint>,
    pub(super) clock: C,
}

impl<S: Clone, C: Clone> Clone for InFlight<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            endpoint: self.endpoint.clone(),
            clock: self.clock.clone(),
        }
    }
}

impl<S, C> fmt::Debug for InFlight<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight")
            .field("endpoint", &self.endpoint.key)
            .field(
                "in_flight",
                &self.endpoint.in_flight.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

impl<S, C> InFlight<S, C> {
    degrade_core::inner_service_accessors!(S);
}

impl<S, C> Load for InFlight<S, C> {
    type Metric = usize;
    fn load(&self) -> usize {
        self.endpoint.in_flight.load(Ordering::Acquire)
    }
}

impl<S, C, Req> Service<Req> for InFlight<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Clock,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // Counted before the inner call: the drain sees it from the moment it is routed.
        self.endpoint.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = Guard {
            endpoint: self.endpoint.clone(),
            start: self.clock.now(),
            clock: self.clock.clone(),
            done: false,
        };
        ResponseFuture {
            inner: self.inner.call(req),
            guard,
        }
    }
}

struct Guard<C: Clock> {
    endpoint: Arc<Endpoint>,
    start: tokio::time::Instant,
    clock: C,
    done: bool,
}

impl<C: Clock> Guard<C> {
    fn finish(&mut self, ok: bool) {
        if self.done {
            return;
        }
        self.done = true;
        let e = &self.endpoint;
        if ok {
            e.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            e.err.fetch_add(1, Ordering::Relaxed);
        }
        let latency = self.clock.now().saturating_duration_since(self.start);
        e.latency.record(latency);
    }
}

impl<C: Clock> Drop for Guard<C> {
    fn drop(&mut self) {
        // A dropped future is a cancelled call: no outcome, but no longer in flight.
        if self.endpoint.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.endpoint.idle.notify_waiters();
        }
    }
}

pin_project! {
    /// The response future of [`InFlight`].
    pub struct ResponseFuture<F, C: Clock> {
        #[pin]
        inner: F,
        guard: Guard<C>,
    }
}

impl<F, C: Clock> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, T, E, C> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Clock,
{
    type Output = Result<T, BoxError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        this.guard.finish(out.is_ok());
        Poll::Ready(match out {
            Ok(v) => {
                this.guard.endpoint.reached();
                Ok(v)
            }
            Err(e) => {
                let e: BoxError = e.into();
                this.guard.endpoint.failed(&*e);
                Err(e)
            }
        })
    }
}
