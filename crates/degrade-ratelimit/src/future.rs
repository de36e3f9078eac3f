//! Response futures of the [`RateLimit`](crate::RateLimit) service.

use crate::error::RateLimited;
use crate::limiter::WaiterSlot;
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::time::Sleep;
use tower_service::Service;

pin_project! {
    /// The three states every answer mode shares: the inner call, a wait for reserved budget
    /// (with the inner service and the request held until then), or a rejection.
    #[project = CoreProj]
    pub(crate) enum Core<F, S, R> {
        Called { #[pin] fut: F },
        Waiting {
            sleep: Pin<Box<Sleep>>,
            svc: Option<S>,
            req: Option<R>,
            slot: Option<WaiterSlot>,
        },
        Rejected { rejection: Option<RateLimited> },
        // Fleet mode: the decision is a round trip; the ready inner service and the request
        // wait for it.
        Deciding {
            decision: Pin<Box<dyn Future<Output = Result<(), RateLimited>> + Send>>,
            svc: Option<S>,
            req: Option<R>,
        },
    }
}

impl<F, S, R> Core<F, S, R> {
    #[inline]
    pub(crate) fn called(fut: F) -> Self {
        Core::Called { fut }
    }

    pub(crate) fn waiting(sleep: Sleep, svc: S, req: R, slot: WaiterSlot) -> Self {
        Core::Waiting {
            sleep: Box::pin(sleep),
            svc: Some(svc),
            req: Some(req),
            slot: Some(slot),
        }
    }

    pub(crate) fn rejected(rejection: RateLimited) -> Self {
        Core::Rejected {
            rejection: Some(rejection),
        }
    }
}

impl<F, S, R, T, E> Future for Core<F, S, R>
where
    S: Service<R, Future = F, Response = T, Error = E>,
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<Result<T, E>, RateLimited>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The admit path, kept small enough to inline into the caller: everything else (waits,
        // rejections, fleet decisions) is out of line, so the inner response is not copied
        // through a non-inlined frame (store-forwarding stalls measured on the admit path).
        if let CoreProj::Called { fut } = self.as_mut().project() {
            return fut.poll(cx).map(Ok);
        }
        self.poll_other(cx)
    }
}

impl<F, S, R, T, E> Core<F, S, R>
where
    S: Service<R, Future = F, Response = T, Error = E>,
    F: Future<Output = Result<T, E>>,
{
    #[inline(never)]
    fn poll_other(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Result<T, E>, RateLimited>> {
        loop {
            let fut = match self.as_mut().project() {
                CoreProj::Called { fut } => return fut.poll(cx).map(Ok),
                CoreProj::Rejected { rejection } => {
                    return match rejection.take() {
                        Some(r) => Poll::Ready(Err(r)),
                        None => panic!("rate limit future polled after completion"),
                    };
                }
                CoreProj::Waiting {
                    sleep,
                    svc,
                    req,
                    slot,
                } => {
                    ready!(sleep.as_mut().poll(cx));
                    let Some(s) = svc.as_mut() else {
                        panic!("rate limit future polled after completion")
                    };
                    if let Err(e) = ready!(s.poll_ready(cx)) {
                        svc.take();
                        slot.take();
                        return Poll::Ready(Ok(Err(e)));
                    }
                    // The wait is over: leave the waiters before the inner call runs.
                    slot.take();
                    let (Some(mut s), Some(r)) = (svc.take(), req.take()) else {
                        panic!("rate limit future polled after completion")
                    };
                    s.call(r)
                }
                CoreProj::Deciding { decision, svc, req } => {
                    if let Err(r) = ready!(decision.as_mut().poll(cx)) {
                        svc.take();
                        req.take();
                        self.set(Core::Rejected { rejection: Some(r) });
                        continue;
                    }
                    let Some(s) = svc.as_mut() else {
                        panic!("rate limit future polled after completion")
                    };
                    if let Err(e) = ready!(s.poll_ready(cx)) {
                        svc.take();
                        return Poll::Ready(Ok(Err(e)));
                    }
                    let (Some(mut s), Some(r)) = (svc.take(), req.take()) else {
                        panic!("rate limit future polled after completion")
                    };
                    s.call(r)
                }
            };
            self.set(Core::Called { fut });
        }
    }
}

pin_project! {
    /// Future of a [`RateLimit`](crate::RateLimit) service in
    /// [`Errors`](degrade_core::answer::Errors) mode: the inner call (perhaps after a bounded
    /// wait), or an immediately ready [`RateLimited`] error.
    ///
    /// ```
    /// use degrade_ratelimit::{RateLimitConfig, RateLimitLayer, RateLimited};
    /// use std::time::Duration;
    /// use tower::{Layer, Service};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let layer = RateLimitLayer::new(RateLimitConfig::per(1, Duration::from_secs(60))).unwrap();
    /// let mut svc = layer.layer(tower::service_fn(|()| async { Ok::<_, std::convert::Infallible>(()) }));
    /// let _: degrade_ratelimit::future::ResponseFuture<_, _, _> = svc.call(());
    /// assert!(svc.call(()).await.unwrap_err().is::<RateLimited>());
    /// # }
    /// ```
    pub struct ResponseFuture<F, S, R> {
        #[pin]
        core: Core<F, S, R>,
    }
}

impl<F, S, R> ResponseFuture<F, S, R> {
    #[inline]
    pub(crate) fn new(core: Core<F, S, R>) -> Self {
        Self { core }
    }
}

impl<F, S, R, T, E> Future for ResponseFuture<F, S, R>
where
    S: Service<R, Future = F, Response = T, Error = E>,
    F: Future<Output = Result<T, E>>,
    E: Into<degrade_core::BoxError>,
{
    type Output = Result<T, degrade_core::BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match ready!(self.project().core.poll(cx)) {
            Ok(res) => res.map_err(Into::into),
            Err(r) => Err(Box::new(r)),
        })
    }
}

impl<F, S, R> fmt::Debug for ResponseFuture<F, S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

#[cfg(feature = "http")]
pub use self::http_mode::RespondFuture;

#[cfg(feature = "http")]
mod http_mode {
    use super::Core;
    use degrade_core::answer::Respond;
    use pin_project_lite::pin_project;
    use std::fmt;
    use std::future::Future;
    use std::marker::PhantomData;
    use std::pin::Pin;
    use std::task::{Context, Poll, ready};
    use tower_service::Service;

    pin_project! {
        /// Future of a [`RateLimit`](crate::RateLimit) service that answers rejections itself
        /// (HTTP 429 or gRPC RESOURCE_EXHAUSTED). The error type is the inner service's, so
        /// `Infallible` services stay infallible.
        ///
        /// ```
        /// use degrade_ratelimit::{RateLimitConfig, RateLimitLayer};
        /// use std::time::Duration;
        /// use tower::{Layer, Service};
        /// # #[tokio::main(flavor = "current_thread")] async fn main() {
        /// let layer = RateLimitLayer::new(RateLimitConfig::per(1, Duration::from_secs(60))).unwrap().http();
        /// let mut svc = layer.layer(tower::service_fn(|_: http::Request<()>| async {
        ///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
        /// }));
        /// assert_eq!(svc.call(http::Request::new(())).await.unwrap().status(), 200);
        /// assert_eq!(svc.call(http::Request::new(())).await.unwrap().status(), 429);
        /// # }
        /// ```
        pub struct RespondFuture<F, S, R, M> {
            #[pin]
            core: Core<F, S, R>,
            _mode: PhantomData<fn() -> M>,
        }
    }

    impl<F, S, R, M> RespondFuture<F, S, R, M> {
        #[inline]
        pub(crate) fn new(core: Core<F, S, R>) -> Self {
            Self {
                core,
                _mode: PhantomData,
            }
        }
    }

    impl<F, S, R, B, E, M> Future for RespondFuture<F, S, R, M>
    where
        S: Service<R, Future = F, Response = http::Response<B>, Error = E>,
        F: Future<Output = Result<http::Response<B>, E>>,
        B: Default,
        M: Respond,
    {
        type Output = Result<http::Response<B>, E>;

        #[inline]
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            Poll::Ready(match ready!(self.project().core.poll(cx)) {
                Ok(res) => res,
                Err(r) => Ok(M::respond::<B>(&r)),
            })
        }
    }

    impl<F, S, R, M> fmt::Debug for RespondFuture<F, S, R, M> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("RespondFuture").finish_non_exhaustive()
        }
    }
}
