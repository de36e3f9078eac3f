//! Merging export calls into fewer, larger requests while the level asks for it.
//!
//! The policy of some levels carries batch hints (`batch_size`, `batch_wait`; by default
//! Moderate 1024 spans / 10 s, Heavy 2048 / 15 s, Emergency 2048 / 30 s). The SDK's batch
//! processor cannot change its batch size at run time, so [`CoalesceLayer`] does it in the
//! exporter stack: at a level with hints, an export call's spans are added to a buffer and
//! the call returns at once; the buffer is sent as one request when it reaches `batch_size`
//! spans or when `batch_wait` has passed since the first span was buffered. At a level
//! without hints, calls pass straight through (after sending anything still buffered).
//!
//! Fewer, larger requests cost the collector and the network less per span. The price is
//! latency and, for spans held in the buffer, the SDK's belief that they were exported: a
//! crash loses them. [`CoalesceHandle`] is a [`Lifecycle`]: register it with the
//! [`ServiceExporter`](crate::ServiceExporter) so `force_flush` and `shutdown` drain the buffer
//! first. Memory is bounded: the buffer never holds more than `batch_size` spans plus one
//! incoming batch. Failures of a merged request are counted in the [`ExportStats`] here (the
//! calls that contributed spans have already returned).

use crate::adapter::{BoxFuture, Lifecycle, drop_reason};
use crate::stats::ExportStats;
use degrade_core::{BoxError, LevelHandle, PerLevel, Policy};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::SpanData;
use std::fmt;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tower_layer::Layer;
use tower_service::Service;

/// Upper bound of a merged request when only `batch_wait` is set.
const DEFAULT_MAX_SPANS: usize = 8192;
/// How long spans may wait when only `batch_size` is set.
const DEFAULT_WAIT: Duration = Duration::from_secs(5);

type Flusher = Box<dyn Fn(Vec<SpanData>) -> BoxFuture<Result<(), BoxError>> + Send + Sync>;

#[derive(Debug, Default)]
struct Buffer {
    spans: Vec<SpanData>,
    timer_armed: bool,
}

struct Shared {
    level: LevelHandle,
    hints: PerLevel<Option<(usize, Duration)>>,
    buffer: Mutex<Buffer>,
    flusher: OnceLock<Flusher>,
    stats: ExportStats,
    calls: AtomicU64,
    requests: AtomicU64,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("hints", &self.hints)
            .field("calls", &self.calls)
            .field("requests", &self.requests)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `spans` through the inner service and counts a failure as drops.
    async fn send(self: &Arc<Self>, spans: Vec<SpanData>) {
        if spans.is_empty() {
            return;
        }
        let Some(flusher) = self.flusher.get() else {
            return;
        };
        let n = spans.len() as u64;
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = flusher(spans).await {
            self.stats.record_drop(drop_reason(e.as_ref()), n);
            tracing::debug!(error = %e, spans = n, "coalesced export failed");
        }
    }

    async fn drain(self: &Arc<Self>) {
        let spans = std::mem::take(&mut self.lock().spans);
        self.send(spans).await;
    }
}

/// A layer merging export calls up to the level's batch hints. See the
/// [module documentation](self).
///
/// ```
/// use degrade_core::{Controller, Level, Policy};
/// use degrade_otel::{CoalesceLayer, ExportService, Lifecycle};
/// use opentelemetry_sdk::trace::InMemorySpanExporter;
/// use tower::{Layer, Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let controller = Controller::new(Default::default()).unwrap();
/// controller.pin(Level::Heavy); // 2048 spans / 15 s
/// let layer = CoalesceLayer::new(controller.handle(), &Policy::default());
/// let handle = layer.handle();
/// let (inner, _) = ExportService::new(InMemorySpanExporter::default());
/// let mut svc = layer.layer(inner.clone());
/// for _ in 0..3 {
///     svc.ready().await.unwrap().call(Vec::new()).await.unwrap();
/// }
/// handle.force_flush().await.unwrap();
/// assert_eq!(handle.calls(), 3);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct CoalesceLayer {
    shared: Arc<Shared>,
}

impl CoalesceLayer {
    /// A layer reading the batch hints of `policy` at the level of `level`.
    pub fn new(level: LevelHandle, policy: &Policy) -> Self {
        let hints = PerLevel::from_fn(|l| {
            let lp = policy.level(l);
            match (lp.batch_size, lp.batch_wait) {
                (None, None) => None,
                (size, wait) => Some((
                    size.unwrap_or(DEFAULT_MAX_SPANS).max(1),
                    wait.unwrap_or(DEFAULT_WAIT),
                )),
            }
        });
        Self {
            shared: Arc::new(Shared {
                level,
                hints,
                buffer: Mutex::new(Buffer::default()),
                flusher: OnceLock::new(),
                stats: ExportStats::new(),
                calls: AtomicU64::new(0),
                requests: AtomicU64::new(0),
            }),
        }
    }

    /// Counts failures of merged requests in `stats` (call before [`handle`](Self::handle)
    /// and [`layer`](Layer::layer)).
    #[must_use]
    pub fn stats(self, stats: ExportStats) -> Self {
        let s = &self.shared;
        Self {
            shared: Arc::new(Shared {
                level: s.level.clone(),
                hints: s.hints,
                buffer: Mutex::new(Buffer::default()),
                flusher: OnceLock::new(),
                stats,
                calls: AtomicU64::new(0),
                requests: AtomicU64::new(0),
            }),
        }
    }

    /// The handle that drains the buffer (a [`Lifecycle`]) and reads the counts.
    pub fn handle(&self) -> CoalesceHandle {
        CoalesceHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S> Layer<S> for CoalesceLayer
where
    S: Service<Vec<SpanData>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    type Service = Coalesce<S>;

    /// Wraps `inner`. One layer buffers for one stack: a second `layer` call shares the buffer
    /// and the first inner service keeps receiving the merged requests.
    fn layer(&self, inner: S) -> Coalesce<S> {
        let flush_inner = inner.clone();
        let _ = self.shared.flusher.set(Box::new(move |spans| {
            let mut svc = flush_inner.clone();
            Box::pin(async move {
                poll_fn(|cx| svc.poll_ready(cx)).await.map_err(Into::into)?;
                svc.call(spans).await.map(|_| ()).map_err(Into::into)
            })
        }));
        Coalesce {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service made by [`CoalesceLayer`].
#[derive(Debug, Clone)]
pub struct Coalesce<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Coalesce<S> {
    degrade_core::inner_service_accessors!(S);
}

impl<S> Service<Vec<SpanData>> for Coalesce<S>
where
    S: Service<Vec<SpanData>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    type Response = ();
    type Error = BoxError;
    type Future = BoxFuture<Result<(), BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness of the inner service is awaited in the call (on a clone).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut batch: Vec<SpanData>) -> Self::Future {
        let shared = self.shared.clone();
        shared.calls.fetch_add(1, Ordering::Relaxed);
        let hint = shared.hints[shared.level.current()];
        let mut inner = self.inner.clone();
        let in_runtime = tokio::runtime::Handle::try_current().is_ok();
        match hint {
            Some((size, wait)) if in_runtime => {
                let mut ready = Vec::new();
                {
                    let mut buf = shared.lock();
                    if buf.spans.is_empty() {
                        buf.spans = batch;
                    } else {
                        buf.spans.append(&mut batch);
                    }
                    while buf.spans.len() >= size {
                        let rest = buf.spans.split_off(size);
                        ready.push(std::mem::replace(&mut buf.spans, rest));
                    }
                    if !buf.spans.is_empty() && !buf.timer_armed {
                        buf.timer_armed = true;
                        let timer = shared.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(wait).await;
                            let spans = {
                                let mut b = timer.lock();
                                b.timer_armed = false;
                                std::mem::take(&mut b.spans)
                            };
                            timer.send(spans).await;
                        });
                    }
                }
                Box::pin(async move {
                    for spans in ready {
                        shared.send(spans).await;
                    }
                    Ok(())
                })
            }
            _ => Box::pin(async move {
                shared.drain().await;
                shared.requests.fetch_add(1, Ordering::Relaxed);
                poll_fn(|cx| inner.poll_ready(cx))
                    .await
                    .map_err(Into::into)?;
                inner.call(batch).await.map(|_| ()).map_err(Into::into)
            }),
        }
    }
}

/// Drains a [`CoalesceLayer`]'s buffer and reads its counts.
#[derive(Debug, Clone)]
pub struct CoalesceHandle {
    shared: Arc<Shared>,
}

impl CoalesceHandle {
    /// Export calls received.
    pub fn calls(&self) -> u64 {
        self.shared.calls.load(Ordering::Relaxed)
    }

    /// Requests sent to the inner service.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Spans waiting in the buffer.
    pub fn buffered(&self) -> usize {
        self.shared.lock().spans.len()
    }
}

impl Lifecycle for CoalesceHandle {
    fn force_flush(&self) -> BoxFuture<OTelSdkResult> {
        let shared = self.shared.clone();
        Box::pin(async move {
            shared.drain().await;
            Ok(())
        })
    }

    fn shutdown(&self, _timeout: Duration) -> BoxFuture<OTelSdkResult> {
        let shared = self.shared.clone();
        Box::pin(async move {
            shared.drain().await;
            if shared.flusher.get().is_none() && !shared.lock().spans.is_empty() {
                return Err(OTelSdkError::InternalFailure(
                    "coalescing layer was never applied".to_owned(),
                ));
            }
            Ok(())
        })
    }
}
