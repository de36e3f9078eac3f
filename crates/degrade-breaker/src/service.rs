//! The [`Breaker`] service.

#[cfg(feature = "http")]
use crate::future::RespondFuture;
use crate::future::ResponseFuture;
use crate::handle::{BreakerHandle, BreakerSnapshot};
use crate::permit::Permit;
use crate::shared::Shared;
use degrade_core::answer::Errors;
#[cfg(feature = "http")]
use degrade_core::answer::{Respond, Responses};
use degrade_core::{BoxError, Classifier, Clock, DefaultClassifier, FastClock};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_service::Service;

/// The service made by [`BreakerLayer`](crate::BreakerLayer). The decision is made in `call`
/// (never in `poll_ready`); a rejection is an immediately ready future.
///
/// ```
/// use degrade_breaker::{BreakerConfig, BreakerLayer};
/// use tower::Layer;
/// let layer = BreakerLayer::new(BreakerConfig::default())?;
/// let svc = layer.layer(tower::service_fn(|()| async { Ok::<_, std::convert::Infallible>(()) }));
/// let twin = svc.clone();
/// twin.handle().force_open(); // clones share one breaker
/// assert_eq!(svc.handle().state(), degrade_breaker::State::ForcedOpen);
/// # Ok::<(), degrade_core::ConfigError>(())
/// ```
pub struct Breaker<S, C: 'static = DefaultClassifier, K = FastClock, M = Errors> {
    inner: S,
    shared: Arc<Shared<C, K>>,
    _mode: PhantomData<fn() -> M>,
}

impl<S: Clone, C: 'static, K, M> Clone for Breaker<S, C, K, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            _mode: PhantomData,
        }
    }
}

impl<S: fmt::Debug, C: 'static, K, M> fmt::Debug for Breaker<S, C, K, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S, C: 'static, K, M> Breaker<S, C, K, M> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<C, K>>) -> Self {
        Self {
            inner,
            shared,
            _mode: PhantomData,
        }
    }

    degrade_core::inner_service_accessors!(S);
}

impl<S, C: 'static, K: Clock, M> Breaker<S, C, K, M> {
    /// A handle on the shared breaker.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer, State}; use tower::Layer;
    /// let svc = BreakerLayer::new(BreakerConfig::default())?.layer(());
    /// assert_eq!(svc.handle().state(), State::Closed);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn handle(&self) -> BreakerHandle<C, K> {
        BreakerHandle::from_shared(Arc::clone(&self.shared))
    }

    /// Counters and state of the shared breaker.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer}; use tower::Layer;
    /// let svc = BreakerLayer::new(BreakerConfig::default())?.layer(());
    /// assert_eq!(svc.snapshot().offered(), 0);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn snapshot(&self) -> BreakerSnapshot {
        self.handle().snapshot()
    }
}

impl<S, C: 'static, K, R> Service<R> for Breaker<S, C, K, Errors>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
    C: Classifier<S::Response, S::Error>,
    K: Clock,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C, K>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: R) -> Self::Future {
        // Every layer further in shares this call's start instant.
        let _scope = degrade_core::clock::CallScope::enter();
        match self.shared.admit() {
            Ok(ticket) => {
                ResponseFuture::called(self.inner.call(req), Permit::new(&self.shared, ticket))
            }
            Err(open) => ResponseFuture::rejected(open),
        }
    }
}

/// The HTTP and gRPC answer modes: one impl over
/// [`Responses<F>`](degrade_core::answer::Responses), the wire form written once by
/// [`Respond`](degrade_core::answer::Respond).
#[cfg(feature = "http")]
impl<S, C: 'static, K, F, ReqB, ResB> Service<http::Request<ReqB>>
    for Breaker<S, C, K, Responses<F>>
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>>,
    C: Classifier<http::Response<ResB>, S::Error>,
    K: Clock,
    Responses<F>: Respond,
    ResB: Default,
{
    type Response = http::Response<ResB>;
    type Error = S::Error;
    type Future = RespondFuture<S::Future, ResB, C, K>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        // Every layer further in shares this call's start instant.
        let _scope = degrade_core::clock::CallScope::enter();
        match self.shared.admit() {
            Ok(ticket) => {
                RespondFuture::called(self.inner.call(req), Permit::new(&self.shared, ticket))
            }
            Err(open) => RespondFuture::rejected(Responses::<F>::respond(&open)),
        }
    }
}
