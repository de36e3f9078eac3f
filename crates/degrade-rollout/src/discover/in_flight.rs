//! [`InFlight`]: the per-endpoint middleware counting requests in flight (the endpoint's
//! `Load`, what a drain waits for) and their outcomes (what analysis compares).

use degrade_canary::stats::{ArmSnapshot, Histogram, LATENCY_BUCKETS, latency_bucket};
use degrade_core::{BoxError, Clock, TokioClock};
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use tokio::sync::Notify;
use tower::load::Load;
use tower_service::Service;

/// Counters of one endpoint: requests in flight and finished outcomes.
pub(super) struct Counters {
    pub(super) in_flight: AtomicUsize,
    pub(super) ok: AtomicU64,
    pub(super) err: AtomicU64,
    pub(super) latency: Box<[AtomicU64]>,
    pub(super) idle: Notify,
}

impl Counters {
    pub(super) fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            ok: AtomicU64::new(0),
            err: AtomicU64::new(0),
            latency: (0..LATENCY_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            idle: Notify::new(),
        }
    }

    pub(super) fn arm(&self) -> ArmSnapshot {
        let mut a = ArmSnapshot::default();
        a.successes = self.ok.load(Ordering::Relaxed);
        a.failures = self.err.load(Ordering::Relaxed);
        let mut h = Histogram::new();
        for (i, b) in self.latency.iter().enumerate() {
            h.add(i, b.load(Ordering::Relaxed));
        }
        a.latency = h;
        a
    }
}

/// A client service of one endpoint, counting its requests in flight (its [`Load`]) and
/// their outcomes (`Ok` is a success, `Err` a failure).
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
    pub(super) counters: Arc<Counters>,
    pub(super) clock: C,
}

impl<S: Clone, C: Clone> Clone for InFlight<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            counters: self.counters.clone(),
            clock: self.clock.clone(),
        }
    }
}

impl<S, C> fmt::Debug for InFlight<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight")
            .field(
                "in_flight",
                &self.counters.in_flight.load(Ordering::Relaxed),
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
        self.counters.in_flight.load(Ordering::Acquire)
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
        self.counters.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = Guard {
            counters: self.counters.clone(),
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
    counters: Arc<Counters>,
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
        let c = &self.counters;
        if ok {
            c.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            c.err.fetch_add(1, Ordering::Relaxed);
        }
        let latency = self.clock.now().saturating_duration_since(self.start);
        c.latency[latency_bucket(latency)].fetch_add(1, Ordering::Relaxed);
    }
}

impl<C: Clock> Drop for Guard<C> {
    fn drop(&mut self) {
        // A dropped future is a cancelled call: no outcome, but no longer in flight.
        if self.counters.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.counters.idle.notify_waiters();
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
        Poll::Ready(out.map_err(Into::into))
    }
}
