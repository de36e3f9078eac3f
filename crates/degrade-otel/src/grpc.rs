//! An OTLP/gRPC span exporter over a tower-wrapped tonic transport (feature `grpc`).
//!
//! opentelemetry-otlp's tonic exporter only takes a concrete `tonic::transport::Channel`, and
//! its interceptor hook turns every local error into a non-retryable INTERNAL. To put tower
//! layers (a breaker counting UNAVAILABLE, a concurrency limit) under the export,
//! [`GrpcSpanExporter`] speaks OTLP itself over any `T` that tonic's generated
//! `TraceServiceClient` accepts — a `Channel` or a `ServiceBuilder` stack over one.
//!
//! It is the **one retry owner** of its stack and follows the OTLP specification:
//!
//! | status | retried |
//! |---|---|
//! | UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, DATA_LOSS, CANCELLED | yes, after `RetryInfo` if present, else exponential backoff |
//! | RESOURCE_EXHAUSTED with `RetryInfo` | yes, after the delay it gives |
//! | RESOURCE_EXHAUSTED without `RetryInfo`, every other code | no |
//! | a local degrade rejection (circuit open, rate limited) from the stack | no: the stack already decided |
//!
//! What the collector answers is network input and never panics the exporter: a
//! `grpc-status-details-bin` that is not base64 (on which tonic 0.14 panics) is dropped before
//! tonic reads the status, and `RetryInfo` is read by degrade-core's total decoder.
//!
//! It is both a `tower::Service<Vec<SpanData>>` (errors keep their cause, so drops are counted
//! by reason further up) and a [`SpanExporter`] (running on a captured runtime).

use crate::adapter::{BoxFuture, Lifecycle};
use crate::sanitize::Sanitized;
use crate::stats::{DropReason, ExportStats};
use bytes::Bytes;
use degrade_core::BoxError;
use opentelemetry::Context;
use opentelemetry::context::FutureExt as _;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::runtime::Handle;
use tonic::Code;
use tonic::client::GrpcService;
use tower_service::Service;

/// How a failed export is retried.
///
/// ```
/// use degrade_otel::grpc::GrpcRetry;
/// let r = GrpcRetry::default();
/// assert_eq!(r.max_retries, 3);
/// assert_eq!(GrpcRetry::none().max_retries, 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct GrpcRetry {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff delay.
    pub initial_delay: Duration,
    /// Backoff cap (a server's `RetryInfo` may ask for more, up to `max_throttle`).
    pub max_delay: Duration,
    /// The longest server-requested delay honoured.
    pub max_throttle: Duration,
    /// The whole export, attempts and waits included, must end within this.
    pub deadline: Duration,
}

impl Default for GrpcRetry {
    fn default() -> Self {
        Self {
            max_retries: 3,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1600),
            max_throttle: Duration::from_secs(30),
            deadline: Duration::from_secs(30),
        }
    }
}

impl GrpcRetry {
    /// No retry: one attempt.
    pub fn none() -> Self {
        Self {
            max_retries: 0,
            ..Self::default()
        }
    }
}

/// What the OTLP specification says to do after a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryDecision {
    /// Give up.
    No,
    /// Retry with backoff, waiting at least the server's delay when it gave one.
    Yes(Option<Duration>),
}

/// Classifies a failed export's status as the OTLP specification says (see the
/// [module documentation](self)).
///
/// ```
/// use degrade_otel::grpc::{classify, RetryDecision};
/// assert_eq!(classify(&tonic::Status::unavailable("down")), RetryDecision::Yes(None));
/// assert_eq!(classify(&tonic::Status::resource_exhausted("slow down")), RetryDecision::No);
/// assert_eq!(classify(&tonic::Status::invalid_argument("bad")), RetryDecision::No);
/// ```
pub fn classify(status: &tonic::Status) -> RetryDecision {
    if is_local_rejection(status) {
        return RetryDecision::No;
    }
    let delay = degrade_core::rejection::grpc::retry_delay(status);
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::DataLoss
        | Code::Cancelled => RetryDecision::Yes(delay),
        Code::ResourceExhausted if delay.is_some() => RetryDecision::Yes(delay),
        _ => RetryDecision::No,
    }
}

fn is_local_rejection(status: &tonic::Status) -> bool {
    use std::error::Error as _;
    status
        .source()
        .is_some_and(|s| degrade_core::rejection::find(s).is_some())
}

/// An OTLP/gRPC span exporter over the tonic transport `T`. See the
/// [module documentation](self).
///
/// ```no_run
/// use degrade_otel::grpc::GrpcSpanExporter;
/// # #[tokio::main] async fn main() {
/// let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:4317").connect_lazy();
/// let stack = tower::ServiceBuilder::new()
///     .concurrency_limit(4)
///     .service(channel);
/// let exporter = GrpcSpanExporter::new(stack, tokio::runtime::Handle::current());
/// # let _ = exporter;
/// # }
/// ```
pub struct GrpcSpanExporter<T> {
    client: TraceServiceClient<Sanitized<T>>,
    resource: Arc<RwLock<ResourceAttributesWithSchema>>,
    retry: GrpcRetry,
    attempt_timeout: Duration,
    handle: Handle,
    stats: ExportStats,
    attempts: Arc<AtomicU64>,
    metadata: tonic::metadata::MetadataMap,
}

impl<T: Clone> Clone for GrpcSpanExporter<T> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            resource: self.resource.clone(),
            retry: self.retry,
            attempt_timeout: self.attempt_timeout,
            handle: self.handle.clone(),
            stats: self.stats.clone(),
            attempts: self.attempts.clone(),
            metadata: self.metadata.clone(),
        }
    }
}

impl<T> fmt::Debug for GrpcSpanExporter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcSpanExporter")
            .field("retry", &self.retry)
            .field("attempt_timeout", &self.attempt_timeout)
            .finish_non_exhaustive()
    }
}

impl<T> GrpcSpanExporter<T>
where
    T: GrpcService<tonic::body::Body> + Clone + Send + Sync + 'static,
    T::Error: Into<BoxError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
    T::Future: Send,
{
    /// An exporter over `transport`; [`SpanExporter::export`] runs on `handle`'s runtime.
    pub fn new(transport: T, handle: Handle) -> Self {
        Self {
            client: TraceServiceClient::new(Sanitized(transport)),
            resource: Arc::default(),
            retry: GrpcRetry::default(),
            attempt_timeout: Duration::from_secs(10),
            handle,
            stats: ExportStats::new(),
            attempts: Arc::default(),
            metadata: tonic::metadata::MetadataMap::new(),
        }
    }

    /// The retry policy (default [`GrpcRetry::default`]).
    #[must_use]
    pub fn retry(mut self, retry: GrpcRetry) -> Self {
        self.retry = retry;
        self
    }

    /// Bounds each attempt (default 10 s).
    #[must_use]
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// Counts exported spans, requests and bytes in `stats`.
    #[must_use]
    pub fn stats(mut self, stats: ExportStats) -> Self {
        self.stats = stats;
        self
    }

    /// Metadata (headers) sent with every request, e.g. an API key for the collector.
    ///
    /// ```no_run
    /// # use degrade_otel::grpc::GrpcSpanExporter;
    /// # #[tokio::main] async fn main() {
    /// # let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:4317").connect_lazy();
    /// let mut metadata = tonic::metadata::MetadataMap::new();
    /// metadata.insert("x-api-key", "secret".parse().unwrap());
    /// let exporter = GrpcSpanExporter::new(channel, tokio::runtime::Handle::current()).metadata(metadata);
    /// # let _ = exporter;
    /// # }
    /// ```
    #[must_use]
    pub fn metadata(mut self, metadata: tonic::metadata::MetadataMap) -> Self {
        self.metadata = metadata;
        self
    }

    /// Attempts made so far (first tries and retries).
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// The [`Lifecycle`] forwarding `set_resource` (use it when this exporter is the bottom of
    /// a [`ServiceExporter`](crate::ServiceExporter) stack).
    pub fn lifecycle(&self) -> GrpcLifecycle {
        GrpcLifecycle {
            resource: self.resource.clone(),
        }
    }

    fn send(
        &self,
        batch: Vec<SpanData>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send + 'static {
        let n = batch.len() as u64;
        let resource_spans = {
            let r = self.resource.read().unwrap_or_else(|e| e.into_inner());
            group_spans_by_resource_and_scope(batch, &r)
        };
        let request = ExportTraceServiceRequest { resource_spans };
        let bytes = prost::Message::encoded_len(&request) as u64;
        let mut client = self.client.clone();
        let retry = self.retry;
        let attempt_timeout = self.attempt_timeout;
        let stats = self.stats.clone();
        let attempts = self.attempts.clone();
        let metadata = self.metadata.clone();
        async move {
            let start = tokio::time::Instant::now();
            let mut delay = retry.initial_delay;
            let mut cap = retry.max_delay;
            let mut retries = 0;
            loop {
                attempts.fetch_add(1, Ordering::Relaxed);
                let status = match tokio::time::timeout(
                    attempt_timeout,
                    client.export(tonic::Request::from_parts(
                        metadata.clone(),
                        tonic::Extensions::default(),
                        request.clone(),
                    )),
                )
                .await
                {
                    Ok(Ok(response)) => {
                        // A partial success: the collector refused some spans for good
                        // (the spec says not to retry them).
                        let rejected = response
                            .get_ref()
                            .partial_success
                            .as_ref()
                            .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0))
                            .min(n);
                        if rejected > 0 {
                            stats.record_drop(DropReason::ExportFailed, rejected);
                            tracing::debug!(rejected, "OTLP/gRPC partial success");
                        }
                        stats.record_exported(n - rejected, 1);
                        stats.record_bytes(bytes);
                        return Ok(());
                    }
                    Ok(Err(status)) => status,
                    Err(_) => tonic::Status::deadline_exceeded("export attempt timed out"),
                };
                let server_delay = match classify(&status) {
                    RetryDecision::Yes(d) if retries < retry.max_retries => d,
                    _ => return Err(BoxError::from(status)),
                };
                retries += 1;
                if let Some(d) = server_delay {
                    let d = d.min(retry.max_throttle);
                    if d > cap {
                        cap = retry.max_throttle;
                    }
                    delay = delay.max(d);
                }
                let sleep = delay.min(cap);
                if start.elapsed().saturating_add(sleep) >= retry.deadline {
                    return Err(BoxError::from(status));
                }
                tracing::debug!(code = ?status.code(), delay_ms = sleep.as_millis() as u64, "OTLP/gRPC export retried");
                tokio::time::sleep(sleep).await;
                delay = delay.saturating_mul(2).min(cap);
            }
        }
    }
}

impl<T> Service<Vec<SpanData>> for GrpcSpanExporter<T>
where
    T: GrpcService<tonic::body::Body> + Clone + Send + Sync + 'static,
    T::Error: Into<BoxError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
    T::Future: Send,
{
    type Response = ();
    type Error = BoxError;
    type Future = BoxFuture<Result<(), BoxError>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, batch: Vec<SpanData>) -> Self::Future {
        Box::pin(self.send(batch))
    }
}

impl<T> SpanExporter for GrpcSpanExporter<T>
where
    T: GrpcService<tonic::body::Body> + Clone + Send + Sync + 'static,
    T::Error: Into<BoxError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
    T::Future: Send,
{
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let fut = self
            .send(batch)
            .with_context(Context::current().with_telemetry_suppressed());
        let task = self.handle.spawn(fut);
        async move {
            match task.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(OTelSdkError::InternalFailure(e.to_string())),
                Err(e) => Err(OTelSdkError::InternalFailure(e.to_string())),
            }
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.lifecycle().set_resource(resource);
    }
}

/// Forwards `set_resource` to a [`GrpcSpanExporter`].
#[derive(Debug, Clone)]
pub struct GrpcLifecycle {
    resource: Arc<RwLock<ResourceAttributesWithSchema>>,
}

impl Lifecycle for GrpcLifecycle {
    fn set_resource(&self, resource: &Resource) {
        *self.resource.write().unwrap_or_else(|e| e.into_inner()) = resource.into();
    }
}
