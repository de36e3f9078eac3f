//! The [`RateLimit`] service.

use crate::cost::{DefaultCost, Weigh};
use crate::future::{Core, ResponseFuture};
use crate::key::{Global, KeyExtractor, Keyed};
use crate::limiter::{RateLimitSnapshot, Shared, Verdict};
use degrade_core::answer::Errors;
use degrade_core::{Clock, FastClock};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_service::Service;

/// The service made by [`RateLimitLayer`](crate::RateLimitLayer): every clone and every service
/// of one layer spends the same budget. The decision is made in `call`; `poll_ready` only
/// forwards to the inner service.
///
/// The inner service must be `Clone`: a request that waits for reserved budget takes the ready
/// inner service with it (tower's usual `mem::replace` with a clone) and calls it when its turn
/// comes.
///
/// ```
/// use degrade_ratelimit::{RateLimitConfig, RateLimitLayer, RateLimited};
/// use std::time::Duration;
/// use tower::{Layer, Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let layer = RateLimitLayer::new(RateLimitConfig::per(2, Duration::from_secs(1))).unwrap();
/// let svc = layer.layer(tower::service_fn(|n: u32| async move { Ok::<_, std::convert::Infallible>(n) }));
/// let mut a = svc.clone();
/// let mut b = svc.clone(); // a second connection's clone: same budget
/// assert!(a.ready().await.unwrap().call(1).await.is_ok());
/// assert!(b.ready().await.unwrap().call(2).await.is_ok());
/// let err = a.ready().await.unwrap().call(3).await.unwrap_err();
/// assert!(err.downcast_ref::<RateLimited>().unwrap().retry_after.is_some());
/// # }
/// ```
pub struct RateLimit<S, E = Global, W = DefaultCost, C = FastClock, M = Errors>
where
    E: Keyed,
{
    inner: S,
    shared: Arc<Shared<E, W, C>>,
    _mode: PhantomData<fn() -> M>,
}

impl<S: Clone, E: Keyed, W, C, M> Clone for RateLimit<S, E, W, C, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            _mode: PhantomData,
        }
    }
}

impl<S: fmt::Debug, E: Keyed, W, C, M> fmt::Debug for RateLimit<S, E, W, C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S, E: Keyed, W, C: Clock, M> RateLimit<S, E, W, C, M> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<E, W, C>>) -> Self {
        Self {
            inner,
            shared,
            _mode: PhantomData,
        }
    }

    degrade_core::inner_service_accessors!(S);

    /// The shared counters.
    ///
    /// ```
    /// # use degrade_ratelimit::{RateLimitConfig, RateLimitLayer}; use tower::Layer;
    /// let svc = RateLimitLayer::new(RateLimitConfig::default()).unwrap().layer(());
    /// assert_eq!(svc.snapshot().offered(), 0);
    /// ```
    pub fn snapshot(&self) -> RateLimitSnapshot {
        self.shared.snapshot()
    }

    /// The decision for `req`, as a [`Core`] future.
    #[inline]
    fn decide<R>(&mut self, req: R) -> Core<S::Future, S, R>
    where
        S: Service<R> + Clone,
        E: KeyExtractor<R>,
        W: Weigh<R>,
    {
        match self.shared.admit(&req) {
            Verdict::Now => Core::called(self.inner.call(req)),
            Verdict::No(r) => Core::rejected(r),
            Verdict::After(wait, slot) => {
                if tokio::runtime::Handle::try_current().is_err() {
                    // No timer to wait on: the reservation is spent, answer as over quota.
                    return Core::rejected(crate::error::RateLimited::new(
                        crate::error::Cause::OverQuota,
                        Some(wait),
                    ));
                }
                // Take the service that was made ready for this call; leave a clone to be
                // made ready for the next one.
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                Core::waiting(tokio::time::sleep(wait), ready, req, slot)
            }
        }
    }
}

impl<S, E, W, C, R> Service<R> for RateLimit<S, E, W, C, Errors>
where
    S: Service<R> + Clone,
    S::Error: Into<degrade_core::BoxError>,
    E: KeyExtractor<R>,
    W: Weigh<R>,
    C: Clock,
{
    type Response = S::Response;
    type Error = degrade_core::BoxError;
    type Future = ResponseFuture<S::Future, S, R>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: R) -> Self::Future {
        // Every layer further in shares this call's start instant.
        let _scope = degrade_core::clock::CallScope::enter();
        ResponseFuture::new(self.decide(req))
    }
}

#[cfg(feature = "http")]
mod http_mode {
    use super::RateLimit;
    use crate::cost::Weigh;
    use crate::future::RespondFuture;
    use crate::key::KeyExtractor;
    use degrade_core::Clock;
    use degrade_core::answer::{Respond, Responses};
    use http::{Request, Response};
    use std::task::{Context, Poll};
    use tower_service::Service;

    /// The HTTP and gRPC answer modes: one impl over [`Responses<F>`], the wire form written once
    /// by core's [`Respond`] (the HTTP form adds the `RateLimit` fields through
    /// `RateLimited`'s [`Rejection::http_headers`](degrade_core::Rejection::http_headers)).
    impl<S, E, W, C, F, ReqB, ResB> Service<Request<ReqB>> for RateLimit<S, E, W, C, Responses<F>>
    where
        S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
        E: KeyExtractor<Request<ReqB>>,
        W: Weigh<Request<ReqB>>,
        C: Clock,
        Responses<F>: Respond,
        ResB: Default,
    {
        type Response = Response<ResB>;
        type Error = S::Error;
        type Future = RespondFuture<S::Future, S, Request<ReqB>, Responses<F>>;

        #[inline]
        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            self.inner.poll_ready(cx)
        }

        #[inline]
        fn call(&mut self, req: Request<ReqB>) -> Self::Future {
            // Every layer further in shares this call's start instant.
            let _scope = degrade_core::clock::CallScope::enter();
            RespondFuture::new(self.decide(req))
        }
    }
}
