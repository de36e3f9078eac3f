//! Response futures of the [`Degrade`](super::Degrade) service.

use crate::rejection::Shed;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

pin_project! {
    /// Future of a [`Degrade`](super::Degrade) service in [`Errors`](super::Errors) mode: the
    /// inner call, or an immediately ready [`Shed`] error.
    ///
    /// ```
    /// use degrade_core::{Controller, DegradeLayer, Level, Policy};
    /// use tower::{Layer, Service};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let c = Controller::new(Default::default()).unwrap();
    /// c.pin(Level::Heavy); // Normal priority is shed at Heavy
    /// let mut svc = DegradeLayer::new(c.handle(), Policy::default()).unwrap()
    ///     .layer(tower::service_fn(|()| async { Ok::<_, std::convert::Infallible>(()) }));
    /// let fut: degrade_core::degrade::ResponseFuture<_> = svc.call(());
    /// assert!(fut.await.unwrap_err().is::<degrade_core::Shed>());
    /// # }
    /// ```
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called { #[pin] fut: F },
        Rejected { shed: Option<Shed> },
    }
}

impl<F> ResponseFuture<F> {
    #[inline]
    pub(super) fn called(fut: F) -> Self {
        Self {
            state: State::Called { fut },
        }
    }

    pub(super) fn rejected(shed: Shed) -> Self {
        Self {
            state: State::Rejected { shed: Some(shed) },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<crate::BoxError>,
{
    type Output = Result<T, crate::BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { fut } => Poll::Ready(ready!(fut.poll(cx)).map_err(Into::into)),
            StateProj::Rejected { shed } => match shed.take() {
                Some(shed) => Poll::Ready(Err(Box::new(shed))),
                None => panic!("ResponseFuture polled after completion"),
            },
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

#[cfg(feature = "http")]
pin_project! {
    /// Future of a [`Degrade`](super::Degrade) service that answers rejections itself (HTTP or
    /// gRPC mode): the inner call, or an immediately ready rejection response. The error type
    /// is the inner service's, so `Infallible` services stay infallible.
    ///
    /// ```
    /// # #[cfg(feature = "http")] {
    /// use degrade_core::{Controller, DegradeLayer, Level, Policy};
    /// use tower::{Layer, Service};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let c = Controller::new(Default::default()).unwrap();
    /// c.pin(Level::Heavy);
    /// let mut svc = DegradeLayer::new(c.handle(), Policy::default()).unwrap().http()
    ///     .layer(tower::service_fn(|_: http::Request<()>| async {
    ///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    ///     }));
    /// let res = svc.call(http::Request::new(())).await.unwrap();
    /// assert_eq!(res.status(), 503);
    /// # }
    /// # }
    /// ```
    pub struct RespondFuture<F, B> {
        #[pin]
        state: RespondState<F, B>,
    }
}

#[cfg(feature = "http")]
pin_project! {
    #[project = RespondStateProj]
    enum RespondState<F, B> {
        Called { #[pin] fut: F },
        Rejected { res: Option<http::Response<B>> },
    }
}

#[cfg(feature = "http")]
impl<F, B> RespondFuture<F, B> {
    #[inline]
    pub(super) fn called(fut: F) -> Self {
        Self {
            state: RespondState::Called { fut },
        }
    }

    pub(super) fn rejected(res: http::Response<B>) -> Self {
        Self {
            state: RespondState::Rejected { res: Some(res) },
        }
    }
}

#[cfg(feature = "http")]
impl<F, B, E> Future for RespondFuture<F, B>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<B>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            RespondStateProj::Called { fut } => fut.poll(cx),
            RespondStateProj::Rejected { res } => match res.take() {
                Some(res) => Poll::Ready(Ok(res)),
                None => panic!("RespondFuture polled after completion"),
            },
        }
    }
}

#[cfg(feature = "http")]
impl<F, B> std::fmt::Debug for RespondFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RespondFuture").finish_non_exhaustive()
    }
}
