//! The export body both SDK-facing adapters share ([`ServiceExporter`] for spans,
//! `ServiceLogExporter` for logs): run a call of the tower stack as a task on the captured
//! runtime with telemetry suppressed, bound it by the timeout, count what it drops by
//! [`DropReason`], and forward the lifecycle calls. Written once so that spans and logs fail,
//! time out, shut down and count alike.
//!
//! [`ServiceExporter`]: crate::ServiceExporter

use crate::adapter::{Lifecycle, drop_reason, run_on};
use crate::stats::{DropReason, ExportStats};
use degrade_core::BoxError;
use opentelemetry::Context;
use opentelemetry::context::FutureExt as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use std::fmt;
use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::runtime::Handle;
use tower_service::Service;

/// A tower stack run for an SDK exporter, with its runtime, timeout, lifecycles and stats.
pub(crate) struct StackExporter<S> {
    pub(crate) service: S,
    handle: Handle,
    pub(crate) timeout: Option<Duration>,
    pub(crate) lifecycles: Vec<Arc<dyn Lifecycle>>,
    pub(crate) stats: ExportStats,
    is_shutdown: AtomicBool,
}

impl<S> fmt::Debug for StackExporter<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StackExporter")
            .field("timeout", &self.timeout)
            .field("lifecycles", &self.lifecycles)
            .finish_non_exhaustive()
    }
}

impl<S> StackExporter<S> {
    pub(crate) fn new(service: S, handle: Handle) -> Self {
        Self {
            service,
            handle,
            timeout: None,
            lifecycles: Vec::new(),
            stats: ExportStats::new(),
            is_shutdown: AtomicBool::new(false),
        }
    }

    /// Exports `batch` of `n` items through a clone of the stack. Every item of a failed
    /// export is counted as dropped, by reason.
    pub(crate) fn export<B>(&self, batch: B, n: u64) -> impl Future<Output = OTelSdkResult> + Send
    where
        B: Send + 'static,
        S: Service<B> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        S::Response: Send + 'static,
    {
        let shut = self.is_shutdown.load(Ordering::Acquire);
        let stats = self.stats.clone();
        let mut service = self.service.clone();
        let timeout = self.timeout;
        let handle = self.handle.clone();
        async move {
            if shut {
                stats.record_drop(DropReason::Shutdown, n);
                return Err(OTelSdkError::AlreadyShutdown);
            }
            let call = async move {
                poll_fn(|cx| service.poll_ready(cx))
                    .await
                    .map_err(Into::into)?;
                service.call(batch).await.map_err(Into::into)
            }
            .with_context(Context::current().with_telemetry_suppressed());
            let task = handle.spawn(async move {
                match timeout {
                    Some(t) => match tokio::time::timeout(t, call).await {
                        Ok(r) => r,
                        Err(elapsed) => Err(BoxError::from(elapsed)),
                    },
                    None => call.await,
                }
            });
            match task.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => {
                    stats.record_drop(drop_reason(e.as_ref()), n);
                    Err(OTelSdkError::InternalFailure(e.to_string()))
                }
                Err(join) => {
                    stats.record_drop(DropReason::ExportFailed, n);
                    Err(OTelSdkError::InternalFailure(format!(
                        "export task failed: {join}"
                    )))
                }
            }
        }
    }

    /// Shuts every lifecycle down, top of the stack first; the first error wins. A second
    /// shutdown is `AlreadyShutdown`.
    pub(crate) fn shutdown(&self, timeout: Duration) -> OTelSdkResult {
        if self.is_shutdown.swap(true, Ordering::AcqRel) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        self.each(timeout, |l| l.shutdown(timeout))
    }

    /// Flushes every lifecycle, top of the stack first; the first error wins.
    pub(crate) fn force_flush(&self) -> OTelSdkResult {
        let timeout = self.timeout.unwrap_or(Duration::from_secs(5));
        self.each(timeout, |l| l.force_flush())
    }

    pub(crate) fn set_resource(&self, resource: &Resource) {
        for l in &self.lifecycles {
            l.set_resource(resource);
        }
    }

    fn each(
        &self,
        timeout: Duration,
        call: impl Fn(&dyn Lifecycle) -> crate::adapter::BoxFuture<OTelSdkResult>,
    ) -> OTelSdkResult {
        let mut result = Ok(());
        for l in &self.lifecycles {
            let r = run_on(&self.handle, call(l.as_ref()), timeout);
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}
