//! Thin tower adapters over the peers that have no tower `Service` of their own, shared by the
//! bench families that include this file (`#[path = "peers/mod.rs"] mod peers;`). Each adapter
//! is the least code that puts the peer on the same request path as degrade's layers.

// Each family uses a different subset.
#![allow(dead_code)]

use degrade_benches::{Req, inner};
use futures_util::TryFutureExt;
use futures_util::future::{Either, ErrInto, Ready, ready};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::convert::Infallible;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tower::limit::ConcurrencyLimit;
use tower::load_shed::LoadShed;
use tower::steer::Steer;
use tower::{BoxError, Service};

/// failsafe's futures breaker as a tower service: `call` wraps the inner future.
pub(crate) struct Failsafe<S, P> {
    inner: S,
    breaker: failsafe::StateMachine<P, ()>,
}

// Not derived: the policy need not be `Clone`, the state machine is shared (an `Arc`).
impl<S: Clone, P> Clone for Failsafe<S, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            breaker: self.breaker.clone(),
        }
    }
}

impl<S, P> Service<Req> for Failsafe<S, P>
where
    S: Service<Req, Error = Infallible>,
    P: failsafe::FailurePolicy + Send + Sync,
{
    type Response = S::Response;
    type Error = failsafe::Error<Infallible>;
    type Future = failsafe::futures::ResponseFuture<S::Future, P, (), failsafe::Any>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(failsafe::Error::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        use failsafe::futures::CircuitBreaker;
        self.breaker.call(self.inner.call(req))
    }
}

/// failsafe's breaker (5 consecutive failures, 60 s open) over `inner`.
pub(crate) fn failsafe<S>(inner: S) -> Failsafe<S, impl failsafe::FailurePolicy + Send + Sync> {
    let policy = failsafe::failure_policy::consecutive_failures(
        5,
        failsafe::backoff::constant(Duration::from_secs(60)),
    );
    Failsafe {
        inner,
        breaker: failsafe::Config::new().failure_policy(policy).build(),
    }
}

/// recloser's `AsyncRecloser` as a tower service: `call` wraps the inner future.
#[derive(Clone)]
pub(crate) struct Recloser<S> {
    inner: S,
    breaker: recloser::AsyncRecloser,
}

impl<S> Service<Req> for Recloser<S>
where
    S: Service<Req, Error = Infallible>,
{
    type Response = S::Response;
    type Error = recloser::Error<Infallible>;
    type Future = recloser::RecloserFuture<S::Future, recloser::AnyError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(recloser::Error::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.breaker.call(self.inner.call(req))
    }
}

/// recloser's breaker (ring of 100, 50 % error rate, 60 s open) over `inner`.
pub(crate) fn recloser<S>(inner: S) -> Recloser<S> {
    let breaker = recloser::Recloser::custom()
        .error_rate(0.5)
        .closed_len(100)
        .open_wait(Duration::from_secs(60))
        .build();
    Recloser {
        inner,
        breaker: recloser::AsyncRecloser::from(breaker),
    }
}

/// The error of the governor adapter when the quota is spent (zero-sized, so boxing it does
/// not allocate).
#[derive(Debug)]
pub(crate) struct GovernorRejected;

impl std::fmt::Display for GovernorRejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("rate limited")
    }
}

impl std::error::Error for GovernorRejected {}

/// governor's direct limiter as a tower service: `check` in `call`, a ready error when spent.
#[derive(Clone)]
pub(crate) struct Governor<S> {
    inner: S,
    limiter: Arc<DefaultDirectRateLimiter>,
}

impl<S> Governor<S> {
    /// `inner` behind one governor limiter with `quota`, shared by every clone.
    pub(crate) fn new(inner: S, quota: Quota) -> Self {
        Self {
            inner,
            limiter: Arc::new(RateLimiter::direct(quota)),
        }
    }
}

impl<S> Service<Req> for Governor<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Either<ErrInto<S::Future, BoxError>, Ready<Result<S::Response, BoxError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.limiter.check() {
            Ok(()) => Either::Left(self.inner.call(req).err_into()),
            Err(_) => Either::Right(ready(Err(Box::new(GovernorRejected)))),
        }
    }
}

/// A governor quota no benchmark can spend.
pub(crate) fn open_governor_quota() -> Quota {
    Quota::per_second(NonZeroU32::MAX).allow_burst(NonZeroU32::MAX)
}

/// A governor quota spent after one request.
pub(crate) fn spent_governor_quota() -> Quota {
    Quota::per_hour(NonZeroU32::MIN)
}

/// tower's `Steer` over two `inner` arms with a picker doing the canary's deterministic 10 %
/// stride (`Steer` has no weights of its own, and records nothing).
pub(crate) fn steer_10pct()
-> impl Service<Req, Response = Req, Error = Infallible, Future: Send> + Clone + Send + 'static {
    let seq = Arc::new(AtomicU64::new(0));
    Steer::new(vec![inner(), inner()], move |_: &Req, _: &[_]| {
        let n = seq.fetch_add(1, Ordering::Relaxed) % 10_000;
        usize::from((n + 1) * 1_000 / 10_000 != n * 1_000 / 10_000)
    })
}

/// The peers' nearest equivalent of degrade's full stack: `LoadShed` + `ConcurrencyLimit`
/// (admission), governor (rate limit), failsafe (breaker), `Steer` at 10 % (canary split).
pub(crate) fn peer_stack(
    concurrency: usize,
    quota: Quota,
) -> impl Service<Req, Response = Req, Error = BoxError> + Clone + Send + 'static {
    LoadShed::new(ConcurrencyLimit::new(
        Governor::new(failsafe(steer_10pct()), quota),
        concurrency,
    ))
}
