//! The same adapters for logs (feature `logs`).
//!
//! `LogExporter::export` takes a *borrowed* `LogBatch<'_>`, which a `tower::Service` (whose
//! futures are `'static`) cannot hold. [`ServiceLogExporter`] therefore clones the batch into
//! an owned [`LogRecords`] vector — one copy per record, the price of putting tower layers in
//! front of a log exporter — and runs the stack on a captured runtime, as
//! [`ServiceExporter`](crate::ServiceExporter) does for spans. [`LogExportService`] is the
//! bottom of such a stack over any `LogExporter`. `set_resource` and `shutdown` are forwarded
//! through [`Lifecycle`] handles (a log exporter has no `force_flush`). The export itself —
//! the task on the runtime, the timeout, the drop counts by reason in an
//! [`ExportStats`] — is the span adapter's, written once.

use crate::adapter::{BoxFuture, Lifecycle};
use crate::export::StackExporter;
use crate::stats::ExportStats;
use degrade_core::BoxError;
use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogBatch, LogExporter, SdkLogRecord};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::RwLock;
use tower_service::Service;

/// An owned log batch: what a log exporter stack's services take.
pub type LogRecords = Vec<(SdkLogRecord, InstrumentationScope)>;

/// A `tower::Service<LogRecords>` over any [`LogExporter`].
///
/// ```
/// use degrade_otel::logs::LogExportService;
/// use opentelemetry_sdk::logs::InMemoryLogExporter;
/// use tower::{Service, ServiceExt};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let (mut service, _lifecycle) = LogExportService::new(InMemoryLogExporter::default());
/// service.ready().await.unwrap().call(Vec::new()).await.unwrap();
/// # }
/// ```
pub struct LogExportService<E> {
    exporter: Arc<RwLock<E>>,
}

impl<E> Clone for LogExportService<E> {
    fn clone(&self) -> Self {
        Self {
            exporter: self.exporter.clone(),
        }
    }
}

impl<E> fmt::Debug for LogExportService<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogExportService").finish_non_exhaustive()
    }
}

impl<E: LogExporter + 'static> LogExportService<E> {
    /// The service and the [`Lifecycle`] handle forwarding `set_resource` and `shutdown`.
    pub fn new(exporter: E) -> (Self, LogExporterLifecycle<E>) {
        let exporter = Arc::new(RwLock::new(exporter));
        (
            Self {
                exporter: exporter.clone(),
            },
            LogExporterLifecycle { exporter },
        )
    }
}

impl<E: LogExporter + 'static> Service<LogRecords> for LogExportService<E> {
    type Response = ();
    type Error = BoxError;
    type Future = BoxFuture<Result<(), BoxError>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, records: LogRecords) -> Self::Future {
        let exporter = self.exporter.clone();
        Box::pin(async move {
            let guard = exporter.read_owned().await;
            let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
                records.iter().map(|(r, s)| (r, s)).collect();
            guard.export(LogBatch::new(&refs)).await?;
            Ok(())
        })
    }
}

/// Forwards the [`Lifecycle`] calls to the exporter under a [`LogExportService`].
pub struct LogExporterLifecycle<E> {
    exporter: Arc<RwLock<E>>,
}

impl<E> fmt::Debug for LogExporterLifecycle<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogExporterLifecycle")
            .finish_non_exhaustive()
    }
}

impl<E: LogExporter + 'static> Lifecycle for LogExporterLifecycle<E> {
    fn set_resource(&self, resource: &Resource) {
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

    fn shutdown(&self, timeout: Duration) -> BoxFuture<OTelSdkResult> {
        let exporter = self.exporter.clone();
        Box::pin(async move { exporter.read().await.shutdown_with_timeout(timeout) })
    }
}

/// A [`LogExporter`] over a `tower::Service<LogRecords>` stack, run on a captured runtime.
///
/// ```
/// use degrade_otel::logs::{LogExportService, ServiceLogExporter};
/// use opentelemetry_sdk::logs::{InMemoryLogExporter, SdkLoggerProvider, BatchLogProcessor};
/// use opentelemetry::logs::{Logger, LoggerProvider, LogRecord};
///
/// # #[tokio::main] async fn main() {
/// let memory = InMemoryLogExporter::default();
/// let (service, lifecycle) = LogExportService::new(memory.clone());
/// let exporter = ServiceLogExporter::new(service, tokio::runtime::Handle::current()).lifecycle(lifecycle);
/// let provider = SdkLoggerProvider::builder()
///     .with_log_processor(BatchLogProcessor::builder(exporter).build())
///     .build();
/// let logger = provider.logger("doc");
/// let mut record = logger.create_log_record();
/// record.set_body("hello".into());
/// logger.emit(record);
/// let p = provider.clone();
/// tokio::task::spawn_blocking(move || p.force_flush()).await.unwrap().unwrap();
/// assert_eq!(memory.get_emitted_logs().unwrap().len(), 1);
/// # }
/// ```
pub struct ServiceLogExporter<S> {
    inner: StackExporter<S>,
}

impl<S> fmt::Debug for ServiceLogExporter<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceLogExporter")
            .field("timeout", &self.inner.timeout)
            .field("lifecycles", &self.inner.lifecycles)
            .finish_non_exhaustive()
    }
}

impl<S> ServiceLogExporter<S> {
    /// An exporter running `service` on `handle`'s runtime.
    pub fn new(service: S, handle: Handle) -> Self {
        Self {
            inner: StackExporter::new(service, handle),
        }
    }

    /// Bounds every export call; also bounds `shutdown`.
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

    /// Counts dropped log records by reason in `stats`, as
    /// [`ServiceExporter::stats`](crate::ServiceExporter::stats) counts spans.
    ///
    /// ```
    /// use degrade_otel::logs::{LogRecords, ServiceLogExporter};
    /// use degrade_otel::{DropReason, ExportStats};
    /// use opentelemetry_sdk::logs::{LogBatch, LogExporter};
    /// use opentelemetry_sdk::logs::{SdkLoggerProvider, SdkLogRecord};
    /// use opentelemetry::logs::{Logger, LoggerProvider};
    /// use opentelemetry::InstrumentationScope;
    /// use tower::service_fn;
    ///
    /// # #[tokio::main] async fn main() {
    /// let stats = ExportStats::new();
    /// let refuse = service_fn(|_: LogRecords| async { Err::<(), _>("collector said no") });
    /// let exporter = ServiceLogExporter::new(refuse, tokio::runtime::Handle::current())
    ///     .stats(stats.clone());
    /// # let record = SdkLoggerProvider::builder().build().logger("doc").create_log_record();
    /// # let scope = InstrumentationScope::builder("doc").build();
    /// let batch = [(&record, &scope), (&record, &scope)];
    /// assert!(exporter.export(LogBatch::new(&batch)).await.is_err());
    /// assert_eq!(stats.snapshot().dropped(DropReason::ExportFailed), 2);
    /// # }
    /// ```
    #[must_use]
    pub fn stats(mut self, stats: ExportStats) -> Self {
        self.inner.stats = stats;
        self
    }
}

impl<S> LogExporter for ServiceLogExporter<S>
where
    S: Service<LogRecords> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    S::Response: Send + 'static,
{
    fn export(&self, batch: LogBatch<'_>) -> impl Future<Output = OTelSdkResult> + Send {
        // The one copy: a 'static service cannot borrow the batch.
        let records: LogRecords = batch.iter().map(|(r, s)| (r.clone(), s.clone())).collect();
        let n = records.len() as u64;
        self.inner.export(records, n)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
