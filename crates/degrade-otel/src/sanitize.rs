//! What a collector (or a proxy in front of it) answers is network input: tonic 0.14 panics
//! in `Status::from_header_map` on a `grpc-status-details-bin` that is not base64, whether it
//! comes in the headers or the trailers. [`Sanitized`] sits between tonic's client and the
//! transport and drops such a header first: the status keeps its code and message and loses
//! only the details it could not carry anyway.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tonic::client::GrpcService;
use tower_service::Service;

/// The header tonic decodes without checking.
const DETAILS: &str = "grpc-status-details-bin";

/// tonic's own decoder settings, so that what passes here decodes there.
const TONIC_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Drops a `grpc-status-details-bin` that tonic could not decode.
fn sanitize(headers: &mut HeaderMap) {
    if let Some(v) = headers.get(DETAILS)
        && TONIC_BASE64.decode(v.as_bytes()).is_err()
    {
        headers.remove(DETAILS);
        tracing::debug!("dropped a grpc-status-details-bin header that is not base64");
    }
}

/// A gRPC transport whose responses are sanitized (see the [module documentation](self)).
#[derive(Debug, Clone)]
pub(crate) struct Sanitized<T>(pub(crate) T);

impl<T> Service<http::Request<tonic::body::Body>> for Sanitized<T>
where
    T: GrpcService<tonic::body::Body>,
{
    type Response = http::Response<SanitizedBody<T::ResponseBody>>;
    type Error = T::Error;
    type Future = SanitizeFuture<T::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        SanitizeFuture {
            inner: self.0.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Sanitized`].
    pub(crate) struct SanitizeFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, B, E> Future for SanitizeFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<SanitizedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let r = ready!(self.project().inner.poll(cx));
        Poll::Ready(r.map(|mut response| {
            sanitize(response.headers_mut());
            response.map(|inner| SanitizedBody { inner })
        }))
    }
}

pin_project_lite::pin_project! {
    /// A response body whose trailers are sanitized.
    pub(crate) struct SanitizedBody<B> {
        #[pin]
        inner: B,
    }
}

impl<B: Body> Body for SanitizedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = ready!(self.project().inner.poll_frame(cx));
        Poll::Ready(frame.map(|f| {
            f.map(|mut frame| {
                if let Some(trailers) = frame.trailers_mut() {
                    sanitize(trailers);
                }
                frame
            })
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_undecodable_details_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(DETAILS, "CAQSBHNsb3c".parse().unwrap()); // unpadded: tonic accepts it
        sanitize(&mut h);
        assert!(h.contains_key(DETAILS));
        h.insert(DETAILS, "=".parse().unwrap());
        sanitize(&mut h);
        assert!(!h.contains_key(DETAILS));
        // A status built from the sanitized map no longer panics.
        h.insert("grpc-status", "14".parse().unwrap());
        h.insert(DETAILS, "%%%".parse().unwrap());
        sanitize(&mut h);
        let s = tonic::Status::from_header_map(&h).unwrap();
        assert_eq!(s.code(), tonic::Code::Unavailable);
    }
}
