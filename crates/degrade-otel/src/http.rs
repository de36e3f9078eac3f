//! An `opentelemetry_http::HttpClient` over any tower HTTP service (feature `http`).
//!
//! The OTLP/HTTP exporter calls its `HttpClient` once per attempt, inside its own retry loop,
//! and reads the status code. That is the place for tower layers that must see every attempt
//! and every status: a breaker counting 429 / 503 as failures, a concurrency limit, a timeout.
//!
//! [`TowerHttpClient`] makes such a stack usable as the exporter's client:
//!
//! * **It runs on a captured runtime.** The exporter is driven from the batch processor's
//!   thread, which has no tokio runtime; every attempt runs as a task on the runtime whose
//!   [`Handle`] the client holds.
//! * **Local rejections become answers.** The exporter treats any `Err` from its client as an
//!   anonymous network error. A degrade rejection from the stack (rate limited, circuit open,
//!   shed) is turned into the response it stands for — 429 or 503 with `Retry-After` — so the
//!   exporter's retry loop backs off as long as the rejection asks, and no longer.
//! * **It bounds itself.** The exporter's timeout does not cancel an attempt in flight; the
//!   client has its own per-attempt timeout and caps the response body it reads (a collector
//!   answering with gigabytes cannot exhaust memory).
//!
//! The exporter owns retries: do not put a tower retry in the stack.

use crate::stats::ExportStats;
use async_trait::async_trait;
use bytes::Bytes;
use degrade_core::BoxError;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use opentelemetry::Context;
use opentelemetry::context::FutureExt as _;
use opentelemetry_http::{HttpClient, HttpError, ResponseBodyTooLarge};
use std::fmt;
use std::future::poll_fn;
use std::marker::PhantomData;
use std::time::Duration;
use tokio::runtime::Handle;
use tower_service::Service;

/// Per-attempt timeout by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Response body cap by default (the collector's answer is a small protobuf).
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// An `HttpClient` over the tower service `S` taking `Request<ReqB>`. See the
/// [module documentation](self).
///
/// ```
/// use bytes::Bytes;
/// use degrade_core::{BoxError, Level, Priority, Shed};
/// use degrade_otel::http::TowerHttpClient;
/// use opentelemetry_http::HttpClient;
/// use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
/// use std::time::Duration;
///
/// # #[tokio::main] async fn main() {
/// // Any tower HTTP service: a hyper client, or one behind degrade's layers. Here the layers
/// // refuse the call themselves (a `Shed`, as a rate limiter or an open breaker would).
/// let svc = tower::service_fn(|_: http::Request<Bytes>| async {
///     let shed = Shed::new(Level::Heavy, Priority::Low, Duration::from_secs(2));
///     Err::<http::Response<http_body_util::Full<Bytes>>, BoxError>(Box::new(shed))
/// });
/// let client = TowerHttpClient::<_, Bytes>::new(svc, tokio::runtime::Handle::current());
/// let request = http::Request::post("http://127.0.0.1:4318/v1/traces").body(Bytes::from_static(b"spans")).unwrap();
/// let answer = client.send_bytes(request).await.unwrap();
/// assert_eq!(answer.status(), 503); // a retryable answer for the exporter, not a transport error
/// assert_eq!(answer.headers()["retry-after"], "2");
///
/// // The same client inside opentelemetry-otlp's exporter:
/// let exporter = opentelemetry_otlp::SpanExporter::builder()
///     .with_http()
///     .with_http_client(client)
///     .with_endpoint("http://127.0.0.1:4318/v1/traces")
///     .build()
///     .unwrap();
/// # drop(exporter);
/// # }
/// ```
pub struct TowerHttpClient<S, ReqB = Bytes> {
    service: S,
    handle: Handle,
    timeout: Duration,
    max_response_bytes: usize,
    stats: ExportStats,
    _body: PhantomData<fn(ReqB)>,
}

impl<S: Clone, ReqB> Clone for TowerHttpClient<S, ReqB> {
    fn clone(&self) -> Self {
        Self {
            service: self.service.clone(),
            handle: self.handle.clone(),
            timeout: self.timeout,
            max_response_bytes: self.max_response_bytes,
            stats: self.stats.clone(),
            _body: PhantomData,
        }
    }
}

impl<S, ReqB> fmt::Debug for TowerHttpClient<S, ReqB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TowerHttpClient")
            .field("timeout", &self.timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish_non_exhaustive()
    }
}

impl<S, ReqB> TowerHttpClient<S, ReqB> {
    /// A client running `service` on `handle`'s runtime.
    pub fn new(service: S, handle: Handle) -> Self {
        Self {
            service,
            handle,
            timeout: DEFAULT_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            stats: ExportStats::new(),
            _body: PhantomData,
        }
    }

    /// Bounds each attempt (default [`DEFAULT_TIMEOUT`]).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Caps the response body read (default [`DEFAULT_MAX_RESPONSE_BYTES`]); a larger body is
    /// a non-retryable `ResponseBodyTooLarge` error.
    #[must_use]
    pub fn max_response_bytes(mut self, max: usize) -> Self {
        self.max_response_bytes = max;
        self
    }

    /// Counts request bytes accepted by the collector (2xx) in `stats` (for a bytes budget).
    #[must_use]
    pub fn stats(mut self, stats: ExportStats) -> Self {
        self.stats = stats;
        self
    }
}

/// The response a local rejection stands for, if `err` is one.
fn rejection_response(err: &(dyn std::error::Error + 'static)) -> Option<Response<Bytes>> {
    degrade_core::rejection::http::error_response::<Bytes>(err)
}

#[async_trait]
impl<S, ReqB, ResB> HttpClient for TowerHttpClient<S, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqB: From<Bytes> + Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let sent = request.body().len() as u64;
        let mut service = self.service.clone();
        let max = self.max_response_bytes;
        let attempt = async move {
            poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(Into::into)?;
            let response = service
                .call(request.map(ReqB::from))
                .await
                .map_err(Into::into)?;
            let (parts, body) = response.into_parts();
            let collected = Limited::new(body, max).collect().await?;
            Ok::<_, BoxError>(Response::from_parts(parts, collected.to_bytes()))
        }
        .with_context(Context::current().with_telemetry_suppressed());
        let timeout = self.timeout;
        let task = self
            .handle
            .spawn(async move { tokio::time::timeout(timeout, attempt).await });
        let result = match task.await {
            Ok(Ok(r)) => r,
            Ok(Err(elapsed)) => Err(BoxError::from(elapsed)),
            Err(join) => Err(BoxError::from(join)),
        };
        match result {
            Ok(response) => {
                if response.status().is_success() {
                    self.stats.record_bytes(sent);
                }
                Ok(response)
            }
            Err(e) if e.is::<LengthLimitError>() => Err(Box::new(ResponseBodyTooLarge::new())),
            Err(e) => match rejection_response(e.as_ref()) {
                Some(response) => Ok(response),
                None => Err(e),
            },
        }
    }
}
