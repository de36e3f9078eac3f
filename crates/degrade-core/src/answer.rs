//! Answer modes: how every degrade layer hands a refusal to its caller.
//!
//! A layer's last type parameter is its answer mode, switched by `.errors()`, `.http()` and
//! `.grpc()` on the layer:
//!
//! * [`Errors`] (the default): the refusal is the service's error, a [`BoxError`](crate::BoxError)
//!   that downcasts to the layer's rejection type (`err.is::<Shed>()`).
//! * [`HttpResponses`] (feature `http`): the layer answers itself with a 429 or 503 and
//!   `Retry-After` (see [`rejection::http`](crate::rejection::http)), and keeps the inner
//!   service's error type, so an axum `Router` of `Infallible` services stays infallible.
//! * [`GrpcResponses`] (feature `grpc`): a trailers-only RESOURCE_EXHAUSTED or UNAVAILABLE status
//!   with `RetryInfo` (see [`rejection::grpc`](crate::rejection::grpc)).
//!
//! [`Respond`] writes each wire form once, for every layer. The two responding modes are one
//! generic type, [`Responses<F>`], so a layer writes one `Service` impl for both of them next to
//! its `Errors` impl. (See [`Respond`] for the shape of those impls.)

use std::fmt;
use std::marker::PhantomData;

/// Answer mode: a refusal is the service's error, a `BoxError` that downcasts to the layer's
/// rejection type. The default of every layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Errors;

/// Answer mode: the layer answers a refusal itself with a response in the wire format `F`
/// ([`Http`] or [`Grpc`]); spelled [`HttpResponses`] and [`GrpcResponses`].
pub struct Responses<F>(PhantomData<fn() -> F>);

impl<F> Clone for Responses<F> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F> Copy for Responses<F> {}

impl<F> Default for Responses<F> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<F> fmt::Debug for Responses<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Responses<{}>", std::any::type_name::<F>())
    }
}

/// Wire format of [`HttpResponses`]: 429 or 503 with `Retry-After`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Http;

/// Wire format of [`GrpcResponses`]: RESOURCE_EXHAUSTED or UNAVAILABLE with `RetryInfo`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Grpc;

/// Answer mode (feature `http` to respond): refusals become HTTP 429 / 503 responses with
/// `Retry-After`.
pub type HttpResponses = Responses<Http>;

/// Answer mode (feature `grpc` to respond): refusals become gRPC RESOURCE_EXHAUSTED / UNAVAILABLE
/// statuses with `RetryInfo`.
pub type GrpcResponses = Responses<Grpc>;

/// How a responding answer mode turns a rejection into a response of its own (feature `http`).
/// Implemented for [`HttpResponses`] and (feature `grpc`) [`GrpcResponses`]; every layer's
/// responding `Service` impl calls it, so each wire form is written once.
///
/// ```
/// use degrade_core::answer::{Errors, Respond, Responses};
/// use std::task::{Context, Poll};
/// use tower_service::Service;
///
/// /// A layer's service that refuses everything, in any answer mode.
/// struct Refuse<M>(std::marker::PhantomData<M>);
///
/// impl<R> Service<R> for Refuse<Errors> {
///     type Response = ();
///     type Error = degrade_core::BoxError;
///     type Future = std::future::Ready<Result<(), Self::Error>>;
///     fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
///         Poll::Ready(Ok(()))
///     }
///     fn call(&mut self, _: R) -> Self::Future {
///         std::future::ready(Err(Box::new(shed())))
///     }
/// }
///
/// impl<F, B> Service<http::Request<B>> for Refuse<Responses<F>>
/// where
///     Responses<F>: Respond,
/// {
///     type Response = http::Response<String>;
///     type Error = std::convert::Infallible;
///     type Future = std::future::Ready<Result<Self::Response, Self::Error>>;
///     fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
///         Poll::Ready(Ok(()))
///     }
///     fn call(&mut self, _: http::Request<B>) -> Self::Future {
///         std::future::ready(Ok(Responses::<F>::respond(&shed())))
///     }
/// }
///
/// fn shed() -> degrade_core::Shed {
///     use degrade_core::{Level, Priority};
///     degrade_core::Shed::new(Level::Heavy, Priority::Low, std::time::Duration::from_secs(2))
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use degrade_core::answer::HttpResponses;
/// let mut http = Refuse::<HttpResponses>(Default::default());
/// let res = http.call(http::Request::new(())).await.unwrap();
/// assert_eq!(res.status(), 503);
/// assert_eq!(res.headers()["retry-after"], "2");
///
/// let mut errors = Refuse::<Errors>(Default::default());
/// assert!(errors.call(()).await.unwrap_err().is::<degrade_core::Shed>());
/// # }
/// ```
#[cfg(feature = "http")]
pub trait Respond {
    /// The response for `rejection`.
    fn respond<B: Default>(rejection: &dyn crate::Rejection) -> http::Response<B>;

    /// What a response says about the service, for the adaptive limit of the
    /// [`DegradeLayer`](crate::DegradeLayer): a refusal by another degrade layer further in (it
    /// carries the `degrade-rejection` header) says nothing and is
    /// [`Ignored`](crate::Outcome::Ignored); otherwise the status decides, as the
    /// [`HttpClassifier`](crate::HttpClassifier) does by default.
    ///
    /// ```
    /// use degrade_core::answer::{HttpResponses, Respond};
    /// use degrade_core::Outcome;
    /// let res = http::Response::builder().status(502).body(()).unwrap();
    /// assert_eq!(HttpResponses::outcome(&res), Outcome::Failure);
    /// let res = http::Response::builder()
    ///     .status(429)
    ///     .header("degrade-rejection", "rate_limited")
    ///     .body(())
    ///     .unwrap();
    /// assert_eq!(HttpResponses::outcome(&res), Outcome::Ignored);
    /// ```
    fn outcome<B>(response: &http::Response<B>) -> crate::Outcome {
        use crate::Classifier;
        static CLASSIFIER: std::sync::LazyLock<crate::HttpClassifier> =
            std::sync::LazyLock::new(crate::HttpClassifier::default);
        if response
            .headers()
            .contains_key(crate::rejection::http::REJECTION_HEADER)
        {
            return crate::Outcome::Ignored;
        }
        Classifier::<http::Response<B>, crate::BoxError>::classify_response(&*CLASSIFIER, response)
    }
}

#[cfg(feature = "http")]
impl Respond for HttpResponses {
    #[inline]
    fn respond<B: Default>(rejection: &dyn crate::Rejection) -> http::Response<B> {
        crate::rejection::http::response(rejection)
    }
}

#[cfg(feature = "grpc")]
impl Respond for GrpcResponses {
    #[inline]
    fn respond<B: Default>(rejection: &dyn crate::Rejection) -> http::Response<B> {
        crate::rejection::grpc::response(rejection)
    }

    fn outcome<B>(response: &http::Response<B>) -> crate::Outcome {
        use crate::Classifier;
        static CLASSIFIER: std::sync::LazyLock<crate::GrpcClassifier> =
            std::sync::LazyLock::new(crate::GrpcClassifier::default);
        if response
            .headers()
            .contains_key(crate::rejection::http::REJECTION_HEADER)
        {
            return crate::Outcome::Ignored;
        }
        Classifier::<http::Response<B>, crate::BoxError>::classify_response(&*CLASSIFIER, response)
    }
}
