//! Response futures of the [`Breaker`](crate::Breaker) service. An admitted call's future
//! carries its [`Permit`]: the outcome is recorded when the inner future completes, and a
//! future dropped before that records a cancelled call — the permit cannot leak.

use crate::error::CircuitOpen;
use crate::permit::Permit;
use degrade_core::{BoxError, Classifier, Clock};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

pin_project! {
    /// Future of a [`Breaker`](crate::Breaker) in errors mode: the inner call carrying its
    /// permit, or an immediately ready [`CircuitOpen`] error.
    ///
    /// ```
    /// use degrade_breaker::{BreakerConfig, BreakerLayer, CircuitOpen};
    /// use tower::{Layer, Service};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let layer = BreakerLayer::new(BreakerConfig::default()).unwrap();
    /// layer.handle().force_open();
    /// let mut svc = layer.layer(tower::service_fn(|()| async { Ok::<_, std::convert::Infallible>(()) }));
    /// let fut: degrade_breaker::future::ResponseFuture<_, _, _> = svc.call(());
    /// assert!(fut.await.unwrap_err().is::<CircuitOpen>());
    /// # }
    /// ```
    pub struct ResponseFuture<F, C: 'static, K: Clock> {
        #[pin]
        state: State<F, C, K>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, C: 'static, K: Clock> {
        Called { #[pin] fut: F, permit: Option<Permit<C, K>> },
        Rejected { open: Option<CircuitOpen> },
    }
}

impl<F, C: 'static, K: Clock> ResponseFuture<F, C, K> {
    #[inline]
    pub(crate) fn called(fut: F, permit: Permit<C, K>) -> Self {
        Self {
            state: State::Called {
                fut,
                permit: Some(permit),
            },
        }
    }

    pub(crate) fn rejected(open: CircuitOpen) -> Self {
        Self {
            state: State::Rejected { open: Some(open) },
        }
    }
}

impl<F, C: 'static, K, T, E> Future for ResponseFuture<F, C, K>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classifier<T, E>,
    K: Clock,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { fut, permit } => {
                let out = ready!(fut.poll(cx));
                // In place, not taken out: see `Permit::finish`.
                if let Some(permit) = permit.as_mut() {
                    permit.finish_result(&out);
                }
                Poll::Ready(out.map_err(Into::into))
            }
            StateProj::Rejected { open } => Poll::Ready(Err(rejected(open))),
        }
    }
}

/// The rejected call's error, out of line: `poll` stays small enough to inline into its caller
/// (one that cannot inline it reads the answer back from memory).
#[inline(never)]
fn rejected(open: &mut Option<CircuitOpen>) -> BoxError {
    match open.take() {
        Some(open) => Box::new(open),
        None => panic!("ResponseFuture polled after completion"),
    }
}

impl<F, C: 'static, K: Clock> std::fmt::Debug for ResponseFuture<F, C, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

#[cfg(feature = "http")]
pin_project! {
    /// Future of a [`Breaker`](crate::Breaker) that answers rejections itself (HTTP or gRPC
    /// mode): the inner call carrying its permit, or an immediately ready 503 / UNAVAILABLE
    /// response. The error type is the inner service's, so `Infallible` stays infallible.
    ///
    /// ```
    /// use degrade_breaker::{BreakerConfig, BreakerLayer};
    /// use tower::{Layer, Service};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let layer = BreakerLayer::new(BreakerConfig::default()).unwrap().http();
    /// layer.handle().force_open();
    /// let mut svc = layer.layer(tower::service_fn(|_: http::Request<()>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    /// }));
    /// let res = svc.call(http::Request::new(())).await.unwrap();
    /// assert_eq!(res.status(), 503);
    /// assert_eq!(res.headers()["retry-after"], "60");
    /// # }
    /// ```
    pub struct RespondFuture<F, B, C: 'static, K: Clock> {
        #[pin]
        state: RespondState<F, B, C, K>,
    }
}

#[cfg(feature = "http")]
pin_project! {
    #[project = RespondStateProj]
    enum RespondState<F, B, C: 'static, K: Clock> {
        Called { #[pin] fut: F, permit: Option<Permit<C, K>> },
        Rejected { res: Option<http::Response<B>> },
    }
}

#[cfg(feature = "http")]
impl<F, B, C: 'static, K: Clock> RespondFuture<F, B, C, K> {
    #[inline]
    pub(crate) fn called(fut: F, permit: Permit<C, K>) -> Self {
        Self {
            state: RespondState::Called {
                fut,
                permit: Some(permit),
            },
        }
    }

    pub(crate) fn rejected(res: http::Response<B>) -> Self {
        Self {
            state: RespondState::Rejected { res: Some(res) },
        }
    }
}

#[cfg(feature = "http")]
impl<F, B, C: 'static, K, E> Future for RespondFuture<F, B, C, K>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    C: Classifier<http::Response<B>, E>,
    K: Clock,
{
    type Output = Result<http::Response<B>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            RespondStateProj::Called { fut, permit } => {
                let out = ready!(fut.poll(cx));
                if let Some(permit) = permit.as_mut() {
                    match &out {
                        // A degrade layer further in answered this request itself: it says
                        // nothing about the service, whatever the classifier (even one that
                        // reads no responses, like the default one).
                        Ok(res) if degrade_core::rejection::http::rejected(res).is_some() => {
                            permit.finish(degrade_core::Outcome::Ignored);
                        }
                        _ => permit.finish_result(&out),
                    }
                }
                Poll::Ready(out)
            }
            RespondStateProj::Rejected { res } => match res.take() {
                Some(res) => Poll::Ready(Ok(res)),
                None => panic!("RespondFuture polled after completion"),
            },
        }
    }
}

#[cfg(feature = "http")]
impl<F, B, C: 'static, K: Clock> std::fmt::Debug for RespondFuture<F, B, C, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RespondFuture").finish_non_exhaustive()
    }
}
