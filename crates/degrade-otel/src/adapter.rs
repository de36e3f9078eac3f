//! Adapters between OpenTelemetry span exporters and tower services.
//!
//! * [`ExportService`] turns any [`SpanExporter`] into a `tower::Service<Vec<SpanData>>`, so
//!   every tower layer (rate limit, breaker, timeout, the [`CoalesceLayer`](crate::CoalesceLayer))
//!   can wrap an OTLP exporter.
//! * [`ServiceExporter`] turns such a service stack back into a [`SpanExporter`] for the SDK's
//!   processors.
//!
//! ## Why a runtime handle
//!
//! The SDK's `BatchSpanProcessor` exports from its own OS thread with
//! `futures_executor::block_on`: there is no tokio runtime there. A tower layer that creates a
//! tokio timer would panic with "no reactor running", the worker thread would die, and every
//! later span would be lost without a word. [`ServiceExporter`] captures a
//! [`tokio::runtime::Handle`] when it is built and runs every call of the stack as a task on
//! that runtime; the processor thread only waits for the task's result. The task runs with
//! telemetry suppressed, so instrumentation inside the export path does not produce spans about
//! exporting spans.
//!
//! ## Lifecycle
//!
//! `set_resource`, `force_flush` and `shutdown` are not part of `tower::Service`. Components
//! that need them (the exporter at the bottom, a coalescing buffer in the middle) expose a
//! [`Lifecycle`] handle; [`ServiceExporter::lifecycle`] registers them, top of the stack first,
//! and forwards each call to all of them in that order. Forgetting `set_resource` would make
//! OTLP export an empty resource (no `service.name`): [`ExportService::new`] returns its handle
//! so it cannot be overlooked.

use crate::export::StackExporter;
use crate::stats::{DropReason, ExportStats};
use degrade_core::BoxError;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::RwLock;
use tower_service::Service;

/// A boxed, sendable future (the future type of the adapters).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The parts of a span exporter's life that `tower::Service` has no place for.
///
/// Every method has a no-op default. The futures run on the runtime captured by
/// [`ServiceExporter`].
pub trait Lifecycle: Send + Sync + fmt::Debug + 'static {
    /// The SDK hands over the resource (`service.name` and the rest) once, when the provider
    /// is built.
    fn set_resource(&self, _resource: &Resource) {}

    /// Export everything held.
    fn force_flush(&self) -> BoxFuture<OTelSdkResult> {
        Box::pin(async { Ok(()) })
    }

    /// Export everything held, then release resources.
    fn shutdown(&self, _timeout: Duration) -> BoxFuture<OTelSdkResult> {
        Box::pin(async { Ok(()) })
    }
}

/// The drop reason of an export error: a local rejection, a timeout, a shutdown or a failure.
///
/// ```
/// use degrade_otel::{DropReason, adapter::drop_reason};
/// let err: degrade_core::BoxError = "collector said no".into();
/// assert_eq!(drop_reason(err.as_ref()), DropReason::ExportFailed);
/// ```
pub fn drop_reason(err: &(dyn std::error::Error + 'static)) -> DropReason {
    if err.is::<tokio::time::error::Elapsed>() {
        return DropReason::Timeout;
    }
    if let Some(e) = err.downcast_ref::<OTelSdkError>() {
        return match e {
            OTelSdkError::AlreadyShutdown => DropReason::Shutdown,
            OTelSdkError::Timeout(_) => DropReason::Timeout,
            _ => DropReason::ExportFailed,
        };
    }
    match degrade_core::rejection::find(err).map(|r| r.kind()) {
        Some(degrade_core::RejectionKind::RateLimited) => DropReason::RateLimited,
        Some(degrade_core::RejectionKind::Unavailable) => DropReason::CircuitOpen,
        Some(_) => DropReason::Rejected,
        None => DropReason::ExportFailed,
    }
}

/// A `tower::Service<Vec<SpanData>>` over any [`SpanExporter`]; the bottom of an exporter stack.
///
/// It counts exported spans and requests in its [`ExportStats`]. Clones share the exporter.
///
/// ```
/// use degrade_otel::ExportService;
/// use opentelemetry_sdk::trace::InMemorySpanExporter;
/// use tower::{Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let memory = InMemorySpanExporter::default();
/// let (mut service, _lifecycle) = ExportService::new(memory.clone());
/// service.ready().await.unwrap().call(Vec::new()).await.unwrap();
/// assert_eq!(service.stats().snapshot().requests, 1);
/// # }
/// ```
pub struct ExportService<E> {
    exporter: Arc<RwLock<E>>,
    stats: ExportStats,
}

impl<E> fmt::Debug for ExportService<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportService").finish_non_exhaustive()
    }
}

impl<E> Clone for ExportService<E> {
    fn clone(&self) -> Self {
        Self {
            exporter: self.exporter.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<E: SpanExporter + 'static> ExportService<E> {
    /// The service and the [`Lifecycle`] handle that forwards `set_resource`, `force_flush`
    /// and `shutdown` to `exporter`.
    pub fn new(exporter: E) -> (Self, ExporterLifecycle<E>) {
        let exporter = Arc::new(RwLock::new(exporter));
        (
            Self {
                exporter: exporter.clone(),
                stats: ExportStats::new(),
            },
            ExporterLifecycle { exporter },
        )
    }

    /// Counts exported spans and requests in `stats`.
    #[must_use]
    pub fn with_stats(mut self, stats: ExportStats) -> Self {
        self.stats = stats;
        self
    }

    /// The counters.
    pub fn stats(&self) -> &ExportStats {
        &self.stats
    }
}

impl<E: SpanExporter + 'static> Service<Vec<SpanData>> for ExportService<E> {
    type Response = ();
    type Error = BoxError;
    type Future = BoxFuture<Result<(), BoxError>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, batch: Vec<SpanData>) -> Self::Future {
        let exporter = self.exporter.clone();
        let stats = self.stats.clone();
        Box::pin(async move {
            let n = batch.len() as u64;
            let guard = exporter.read_owned().await;
            guard.export(batch).await?;
            stats.record_exported(n, 1);
            Ok(())
        })
    }
}

/// Forwards the [`Lifecycle`] calls to the exporter under an [`ExportService`].
pub struct ExporterLifecycle<E> {
    exporter: Arc<RwLock<E>>,
}

impl<E> fmt::Debug for ExporterLifecycle<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExporterLifecycle").finish_non_exhaustive()
    }
}

impl<E: SpanExporter + 'static> Lifecycle for ExporterLifecycle<E> {
    fn set_resource(&self, resource: &Resource) {
        // Called once, while the provider is built, before any export holds the lock.
        match self.exporter.try_write() {
            Ok(mut e) => e.set_resource(resource),
            Err(_) if Handle::try_current().is_err() => {
                self.exporter.blocking_write().set_resource(resource);
            }
            Err(_) => {
                tracing::warn!("set_resource while an export is running; resource not updated")
            }
        }
    }

    fn force_flush(&self) -> BoxFuture<OTelSdkResult> {
        let exporter = self.exporter.clone();
        Box::pin(async move { exporter.read().await.force_flush() })
    }

    fn shutdown(&self, timeout: Duration) -> BoxFuture<OTelSdkResult> {
        let exporter = self.exporter.clone();
        Box::pin(async move { exporter.read().await.shutdown_with_timeout(timeout) })
    }
}

/// Runs `fut` on `handle` and waits for it from any thread, at most `timeout`.
///
/// From a thread of a current-thread runtime the task cannot run while this waits: it then
/// reports a timeout instead of deadlocking.
pub(crate) fn run_on<F>(handle: &Handle, fut: F, timeout: Duration) -> OTelSdkResult
where
    F: Future<Output = OTelSdkResult> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let r = tokio::time::timeout(timeout, fut)
            .await
            .unwrap_or(Err(OTelSdkError::Timeout(timeout)));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(timeout.saturating_add(Duration::from_millis(100))) {
        Ok(r) => r,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(OTelSdkError::Timeout(timeout)),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(OTelSdkError::InternalFailure(
            "the runtime of the exporter stack is gone".to_owned(),
        )),
    }
}

/// A [`SpanExporter`] over a `tower::Service<Vec<SpanData>>` stack, running it on a captured
/// tokio runtime. See the [module documentation](self).
///
/// Failed exports are counted by [`DropReason`] in its [`ExportStats`]; the SDK gets an
/// `InternalFailure` with the error's text.
///
/// ```
/// use degrade_otel::{ExportService, ServiceExporter};
/// use opentelemetry::trace::{Tracer, TracerProvider};
/// use opentelemetry_sdk::trace::{BatchSpanProcessor, InMemorySpanExporter, SdkTracerProvider};
/// use std::time::Duration;
///
/// # #[tokio::main] async fn main() {
/// let memory = InMemorySpanExporter::default();
/// let (service, lifecycle) = ExportService::new(memory.clone());
/// let stack = tower::ServiceBuilder::new()
///     .timeout(Duration::from_secs(5)) // a tokio timer: fine, the stack runs on the runtime
///     .service(service);
/// let exporter = ServiceExporter::new(stack, tokio::runtime::Handle::current()).lifecycle(lifecycle);
/// let provider = SdkTracerProvider::builder()
///     .with_span_processor(BatchSpanProcessor::builder(exporter).build())
///     .build();
/// provider.tracer("doc").start("work");
/// let p = provider.clone();
/// tokio::task::spawn_blocking(move || p.force_flush()).await.unwrap().unwrap();
/// assert_eq!(memory.get_finished_spans().unwrap().len(), 1);
/// # }
/// ```
pub struct ServiceExporter<S> {
    inner: StackExporter<S>,
}

impl<S> fmt::Debug for ServiceExporter<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceExporter")
            .field("timeout", &self.inner.timeout)
            .field("lifecycles", &self.inner.lifecycles)
            .finish_non_exhaustive()
    }
}

impl<S> ServiceExporter<S> {
    /// An exporter running `service` on `handle`'s runtime.
    pub fn new(service: S, handle: Handle) -> Self {
        Self {
            inner: StackExporter::new(service, handle),
        }
    }

    /// Bounds every export call (the SDK's thread-based processor enforces no export timeout).
    /// Also bounds `force_flush` and `shutdown` (default 5 s for those).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.inner.timeout = Some(timeout);
        self
    }

    /// Registers a [`Lifecycle`]; register the top of the stack first.
    #[must_use]
    pub fn lifecycle(mut self, lifecycle: impl Lifecycle) -> Self {
        self.inner.lifecycles.push(Arc::new(lifecycle));
        self
    }

    /// Counts drops by reason in `stats`.
    #[must_use]
    pub fn stats(mut self, stats: ExportStats) -> Self {
        self.inner.stats = stats;
        self
    }

    /// The service stack.
    pub fn get_ref(&self) -> &S {
        &self.inner.service
    }
}

impl<S> SpanExporter for ServiceExporter<S>
where
    S: Service<Vec<SpanData>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    S::Response: Send + 'static,
{
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let n = batch.len() as u64;
        self.inner.export(batch, n)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
