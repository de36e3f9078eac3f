//! The [`ObserveLayer`]: latency, errors, timeouts and in-flight requests, measured where the
//! requests are, for the latency, error-rate, timeout-rate and in-flight signals.
//!
//! # Why measure in a layer
//!
//! CPU and memory say how hard the machine works, not whether the service still answers in
//! time. A backend that slows down leaves the CPU idle while requests pile up. The layer times
//! requests (from `call` to the end of its response future), classifies every result with
//! the same [`Classifier`] the breaker and the canary use, and records both into a lock-free
//! histogram (quantiles within 1/128 = 0.79 % of the exact value, one relaxed `fetch_add` per
//! timed request plus plain stores on per-thread counter slots, no allocation, no lock).
//!
//! # Which requests are timed
//!
//! Two clock reads cost more than the rest of the layer (31 ns each on some virtual
//! machines), so under heavy traffic not every request is timed: every call, its outcome and
//! its end are **counted exactly** (calls, failures, timeouts, cancelled, in flight), and a
//! latency signal, each time it reads its window, lets each thread time 1 call in `n` of its
//! own (`n` a power of two up to 16) such that the window still holds at least 1,000 timed
//! calls (with several latency signals, the one that needs the most timed calls wins). A
//! window with fewer calls than that brings `n` back to 1, and a window with fewer *timed*
//! calls than its `min_calls` reads as unknown. Until a latency signal reads, each thread times
//! its first 65,536 calls (`TimingSampler::UNREAD_CALLS`) and then 1 in 16, as an unread
//! canary arm does: a layer whose latency nobody reads does not pay two clock reads on every
//! call forever, and a short-lived or quiet one keeps every latency. With a
//! [`slow`](ObserveBuilder::slow) threshold (the slow count needs every latency) every call is
//! timed, always. The snapshot's mean and quantiles are those of the timed calls.
//!
//! The histogram (degrade-core's, in `Layout::FINE`) has one bucket per nanosecond below
//! 128 ns, then 64 buckets per power of two;
//! a quantile is reported as the middle of its bucket. The shards only count up: a signal's
//! window is the difference between the counts now and a copy it took at least one window
//! ago, so nothing on the request path ever clears or rotates a bucket.
//!
//! The signals read it on the [`Monitor`](crate::Monitor)'s schedule, each over its own sliding
//! window:
//!
//! * [`ObserveLayer::latency`]: p50, p99 or mean latency in milliseconds, against per-level
//!   thresholds or an SLA;
//! * [`ObserveLayer::error_rate`] and [`ObserveLayer::timeout_rate`]: percent of calls;
//! * [`ObserveLayer::in_flight`]: calls started and not yet finished, now.
//!
//! A call whose outcome is [`Outcome::Ignored`](degrade_core::Outcome::Ignored) (a rejection
//! by a degrade layer further in, or as the classifier says) is not counted; a call whose future
//! is dropped before it completes is counted as cancelled, with no latency. A failure counts as
//! a timeout when its error is tower's or tokio's `Elapsed`, directly or in a `BoxError`.
//!
//! Put the `ObserveLayer` *inside* the `DegradeLayer` so that it measures the requests the
//! service actually serves, not the shed ones that are answered at once.
//!
//! ```
//! use degrade_triggers::{ObserveLayer, observe::LatencyConfig};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let observe = ObserveLayer::new();
//! let mut svc = ServiceBuilder::new()
//!     .layer(observe.clone())
//!     .service_fn(|n: u32| async move { if n % 10 == 0 { Err("boom") } else { Ok(n) } });
//! for n in 0..100 {
//!     let _ = svc.ready().await.unwrap().call(n).await;
//! }
//! let snap = observe.snapshot();
//! assert_eq!((snap.calls, snap.failures, snap.in_flight), (100, 10, 0));
//! let latency = observe.latency(LatencyConfig::default()).unwrap(); // a Signal for the Monitor
//! # let _ = latency;
//! # }
//! ```

mod future;
pub(crate) mod histogram;
mod signal;

pub use self::future::ResponseFuture;
pub use self::signal::{InFlightConfig, LatencyConfig, LatencyStat, ObserveSignal, RateConfig};

use self::future::Guard;
use self::histogram::{COUNTERS, Counts, FAILURES, Recorder, SLOW, TIMEOUTS};
use degrade_core::ladder::Thresholds;
use degrade_core::recycle::Held;
use degrade_core::{Classifier, Clock, ConfigError, DefaultClassifier, FastClock};
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower_layer::Layer;
use tower_service::Service;

pub(crate) struct Inner<K: 'static, C> {
    pub(crate) hist: Recorder,
    /// Held as a `&'static` when zero-sized (the default classifiers), else in an `Arc`.
    pub(crate) classifier: Held<K>,
    /// Cloned into the response futures of timed calls only.
    pub(crate) clock: C,
    pub(crate) slow: Option<Duration>,
}

/// Gives the signals the histogram without the layer's type parameters.
pub(crate) trait Source: Send + Sync + 'static {
    fn histogram(&self) -> &Recorder;
}

impl<K: Send + Sync + 'static, C: Clock> Source for Inner<K, C> {
    fn histogram(&self) -> &Recorder {
        &self.hist
    }
}

/// Records every request's latency and outcome; see the [module docs](self).
///
/// Cloning the layer shares its histogram: every service made from it, by any clone (axum
/// clones per connection), records into the same one.
///
/// ```
/// use degrade_triggers::ObserveLayer;
/// let layer = ObserveLayer::new();
/// let twin = layer.clone();
/// assert_eq!(layer.snapshot(), twin.snapshot());
/// ```
pub struct ObserveLayer<K: 'static = DefaultClassifier, C = FastClock> {
    inner: Arc<Inner<K, C>>,
}

impl<K, C> Clone for ObserveLayer<K, C> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K, C> fmt::Debug for ObserveLayer<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObserveLayer")
            .field("slow", &self.inner.slow)
            .finish_non_exhaustive()
    }
}

impl ObserveLayer {
    /// A layer with the [`DefaultClassifier`] (every `Err` is a failure, except degrade
    /// rejections), on the default clock ([`ObserveBuilder::clock`]), with no slow-call
    /// threshold.
    ///
    /// ```
    /// # use degrade_triggers::ObserveLayer;
    /// assert_eq!(ObserveLayer::new().snapshot().calls, 0);
    /// ```
    pub fn new() -> Self {
        Self::builder()
            .build()
            .expect("the default settings are valid")
    }

    /// A builder, to set the classifier, the clock and the slow-call threshold.
    ///
    /// ```
    /// use degrade_core::HttpClassifier;
    /// use degrade_triggers::ObserveLayer;
    /// use std::time::Duration;
    ///
    /// let layer = ObserveLayer::builder()
    ///     .classifier(HttpClassifier::default())
    ///     .slow(Duration::from_millis(500))
    ///     .build()?;
    /// assert_eq!(layer.snapshot().slow, 0);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn builder() -> ObserveBuilder {
        ObserveBuilder {
            classifier: DefaultClassifier,
            clock: FastClock::unless_pausable(),
            slow: None,
        }
    }
}

impl Default for ObserveLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, C> ObserveLayer<K, C>
where
    K: Send + Sync + 'static,
    C: Clock,
{
    /// Counters and latencies since the layer was built.
    ///
    /// ```
    /// # use degrade_triggers::ObserveLayer;
    /// let s = ObserveLayer::new().snapshot();
    /// assert_eq!((s.calls, s.p99), (0, None));
    /// ```
    pub fn snapshot(&self) -> ObserveSnapshot {
        let mut counts = Counts::new(true);
        self.inner.hist.read(&mut counts);
        ObserveSnapshot::from_counts(&counts, self.inner.hist.in_flight())
    }

    /// The latency signal (named `"latency"` unless the config says otherwise).
    ///
    /// # Errors
    ///
    /// When the configuration is invalid; the field is named.
    ///
    /// ```
    /// use degrade_triggers::{LevelThresholds, ObserveLayer, Signal, observe::{LatencyConfig, LatencyStat}};
    /// use std::time::Duration;
    /// let layer = ObserveLayer::new();
    /// let by_levels = layer.latency(LatencyConfig {
    ///     stat: LatencyStat::P99,
    ///     thresholds: LevelThresholds::new(100.0, 250.0, 500.0, 1000.0),
    ///     ..Default::default()
    /// })?;
    /// let mut by_sla = layer.latency(LatencyConfig { sla: Some(Duration::from_millis(300)), ..Default::default() })?;
    /// assert_eq!(by_levels.name(), "latency");
    /// // No call measured yet: no sample, so the signal does not move the level.
    /// assert_eq!(by_sla.sample(tokio::time::Instant::now()).unwrap(), None);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn latency(
        &self,
        config: LatencyConfig,
    ) -> Result<ObserveSignal, degrade_core::ConfigError> {
        ObserveSignal::latency(self.source(), config, &Thresholds::default())
    }

    /// The error-rate signal: percent of calls that failed (timeouts included).
    ///
    /// # Errors
    ///
    /// When the configuration is invalid; the field is named.
    ///
    /// ```
    /// # use degrade_triggers::{ObserveLayer, Signal, observe::RateConfig};
    /// let mut s = ObserveLayer::new().error_rate(RateConfig::errors())?;
    /// assert_eq!(s.sample(tokio::time::Instant::now()).unwrap(), None); // no calls: no sample
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn error_rate(
        &self,
        config: RateConfig,
    ) -> Result<ObserveSignal, degrade_core::ConfigError> {
        ObserveSignal::rate(
            self.source(),
            config,
            FAILURES,
            "errors",
            &Thresholds::default(),
        )
    }

    /// The timeout-rate signal: percent of calls that failed with a timeout.
    ///
    /// # Errors
    ///
    /// When the configuration is invalid; the field is named.
    ///
    /// ```
    /// # use degrade_triggers::{ObserveLayer, Signal, observe::RateConfig};
    /// let mut s = ObserveLayer::new().timeout_rate(RateConfig::timeouts())?;
    /// assert_eq!(s.sample(tokio::time::Instant::now()).unwrap(), None); // no calls: no sample
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn timeout_rate(
        &self,
        config: RateConfig,
    ) -> Result<ObserveSignal, degrade_core::ConfigError> {
        ObserveSignal::rate(
            self.source(),
            config,
            TIMEOUTS,
            "timeouts",
            &Thresholds::default(),
        )
    }

    /// The slow-call-rate signal: percent of calls slower than the layer's `slow` threshold.
    ///
    /// # Errors
    ///
    /// When the configuration is invalid; the field is named.
    ///
    /// ```
    /// # use degrade_triggers::{ObserveLayer, Signal, observe::RateConfig};
    /// let mut s = ObserveLayer::new().slow_rate(RateConfig::errors())?;
    /// assert_eq!(s.sample(tokio::time::Instant::now()).unwrap(), None); // no calls: no sample
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn slow_rate(
        &self,
        config: RateConfig,
    ) -> Result<ObserveSignal, degrade_core::ConfigError> {
        ObserveSignal::rate(self.source(), config, SLOW, "slow", &Thresholds::default())
    }

    /// The in-flight signal: calls started and not yet finished.
    ///
    /// # Errors
    ///
    /// When the configuration is invalid; the field is named.
    ///
    /// ```
    /// # use degrade_triggers::{ObserveLayer, Signal, observe::InFlightConfig};
    /// let mut s = ObserveLayer::new().in_flight(InFlightConfig::default())?;
    /// let now = s.sample(tokio::time::Instant::now()).unwrap().unwrap();
    /// assert_eq!((now.value, now.pressure), (0.0, 0.0)); // nothing in flight
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn in_flight(
        &self,
        config: InFlightConfig,
    ) -> Result<ObserveSignal, degrade_core::ConfigError> {
        ObserveSignal::in_flight(self.source(), config, &Thresholds::default())
    }

    /// The signals of [`TriggersConfig`](crate::TriggersConfig), anchored to its ladder.
    pub(crate) fn signals(
        &self,
        latency: Option<&LatencyConfig>,
        rates: [(Option<&RateConfig>, &'static str); 2],
        in_flight: Option<&InFlightConfig>,
        anchors: &Thresholds,
    ) -> Result<Vec<ObserveSignal>, degrade_core::ConfigError> {
        let mut out = Vec::new();
        if let Some(c) = latency {
            out.push(
                ObserveSignal::latency(self.source(), c.clone(), anchors)
                    .map_err(|e| e.within("latency"))?,
            );
        }
        for (config, field) in rates {
            let counter = if field == "timeouts" {
                TIMEOUTS
            } else {
                FAILURES
            };
            if let Some(c) = config {
                out.push(
                    ObserveSignal::rate(self.source(), c.clone(), counter, field, anchors)
                        .map_err(|e| e.within(field))?,
                );
            }
        }
        if let Some(c) = in_flight {
            out.push(
                ObserveSignal::in_flight(self.source(), c.clone(), anchors)
                    .map_err(|e| e.within("in_flight"))?,
            );
        }
        Ok(out)
    }

    fn source(&self) -> Arc<dyn Source> {
        Arc::clone(&self.inner) as Arc<dyn Source>
    }
}

impl<S, K, C> Layer<S> for ObserveLayer<K, C> {
    type Service = Observe<S, K, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            shared: Arc::clone(&self.inner),
        }
    }
}

/// Builds an [`ObserveLayer`]; see [`ObserveLayer::builder`].
pub struct ObserveBuilder<K = DefaultClassifier, C = FastClock> {
    classifier: K,
    clock: C,
    slow: Option<Duration>,
}

impl<K, C> fmt::Debug for ObserveBuilder<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObserveBuilder")
            .field("slow", &self.slow)
            .finish_non_exhaustive()
    }
}

impl<K, C> ObserveBuilder<K, C> {
    /// How results are judged (default [`DefaultClassifier`]; `HttpClassifier` for HTTP
    /// statuses, `GrpcClassifier` for gRPC codes).
    ///
    /// ```
    /// use degrade_core::{Classifier, Outcome};
    /// use degrade_triggers::ObserveLayer;
    /// #[derive(Clone)]
    /// struct Strict;
    /// impl Classifier<u32, String> for Strict {
    ///     fn classify_response(&self, n: &u32) -> Outcome { if *n == 0 { Outcome::Failure } else { Outcome::Success } }
    ///     fn classify_error(&self, _: &String) -> Outcome { Outcome::Failure }
    /// }
    /// let layer = ObserveLayer::builder().classifier(Strict).build()?;
    /// assert_eq!(layer.snapshot().failures, 0);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn classifier<K2>(self, classifier: K2) -> ObserveBuilder<K2, C> {
        ObserveBuilder {
            classifier,
            clock: self.clock,
            slow: self.slow,
        }
    }

    /// The clock that times requests (a `ManualClock` in tests); a clock given here is never
    /// replaced.
    ///
    /// The default is [`FastClock::unless_pausable`], chosen when [`ObserveLayer::builder`]
    /// is called: the process's counter timeline, whose reading the call scope shares with the
    /// other degrade layers on their default clocks (a stack reads it once per request for
    /// every layer's start), except inside a `current_thread` tokio runtime, where tokio's
    /// time can be paused: there it reads [`TokioClock`](degrade_core::TokioClock), so paused
    /// time and `advance` are followed exactly. A layer built outside any runtime or on a
    /// multi-thread runtime and then used under paused time does not follow the pause: build
    /// it in the test's runtime, or pass `TokioClock` or a `ManualClock` here.
    ///
    /// ```
    /// use degrade_core::ManualClock;
    /// use degrade_triggers::ObserveLayer;
    /// use std::time::Duration;
    /// use tower::{Layer, Service, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let clock = ManualClock::new();
    /// let layer = ObserveLayer::builder()
    ///     .clock(clock.clone())
    ///     .slow(Duration::from_millis(100))
    ///     .build()
    ///     .unwrap();
    /// let step = clock.clone();
    /// let mut svc = layer.layer(tower::service_fn(move |ms: u64| {
    ///     let step = step.clone();
    ///     async move {
    ///         step.advance(Duration::from_millis(ms));
    ///         Ok::<_, std::convert::Infallible>(())
    ///     }
    /// }));
    /// svc.ready().await.unwrap().call(250).await.unwrap(); // 250 ms on the manual clock
    /// svc.ready().await.unwrap().call(10).await.unwrap();
    /// assert_eq!(layer.snapshot().slow, 1);
    /// # }
    /// ```
    pub fn clock<C2: Clock>(self, clock: C2) -> ObserveBuilder<K, C2> {
        ObserveBuilder {
            classifier: self.classifier,
            clock,
            slow: self.slow,
        }
    }

    /// A successful call at least this long counts as slow ([`Outcome::Slow`](degrade_core::Outcome::Slow)).
    #[must_use]
    pub fn slow(mut self, threshold: Duration) -> Self {
        self.slow = Some(threshold);
        self
    }

    /// Validates the settings and builds the layer and its histogram (the only allocation:
    /// about 20 KB per shard, one shard per CPU up to 16).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] on field `slow` when the slow-call threshold is zero (every call
    /// would count as slow).
    ///
    /// ```
    /// use degrade_triggers::ObserveLayer;
    /// use std::time::Duration;
    /// let err = ObserveLayer::builder().slow(Duration::ZERO).build().unwrap_err();
    /// assert_eq!(err.field(), "slow");
    /// ```
    pub fn build(self) -> Result<ObserveLayer<K, C>, ConfigError> {
        if self.slow == Some(Duration::ZERO) {
            return Err(ConfigError::new("slow", "must be greater than zero"));
        }
        Ok(ObserveLayer {
            inner: Arc::new(Inner {
                hist: Recorder::new(self.slow.is_some()),
                classifier: Held::new(self.classifier),
                clock: self.clock,
                slow: self.slow,
            }),
        })
    }
}

/// Counters and latencies of an [`ObserveLayer`] since it was built.
///
/// ```
/// use degrade_triggers::ObserveLayer;
/// let s = ObserveLayer::new().snapshot();
/// assert_eq!(s.failures + s.slow, 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub struct ObserveSnapshot {
    /// Calls recorded (cancelled and ignored calls excluded).
    pub calls: u64,
    /// Calls that failed, timeouts included.
    pub failures: u64,
    /// Failed calls that timed out.
    pub timeouts: u64,
    /// Successful calls slower than the slow threshold.
    pub slow: u64,
    /// Calls whose future was dropped before completing.
    pub cancelled: u64,
    /// Calls in flight now.
    pub in_flight: u64,
    /// Mean latency of the timed calls (see [which requests are timed](self#which-requests-are-timed)).
    pub mean: Option<Duration>,
    /// Median latency of the timed calls (within 0.79 %).
    pub p50: Option<Duration>,
    /// 99th percentile latency of the timed calls (within 0.79 %).
    pub p99: Option<Duration>,
}

impl ObserveSnapshot {
    fn from_counts(c: &Counts, in_flight: u64) -> Self {
        debug_assert_eq!(c.counters.len(), COUNTERS);
        Self {
            calls: c.calls,
            failures: c.counters[FAILURES],
            timeouts: c.counters[TIMEOUTS],
            slow: c.counters[SLOW],
            cancelled: c.counters[histogram::CANCELLED],
            in_flight,
            mean: c.mean().map(|ns| Duration::from_nanos(ns as u64)),
            p50: c.quantile(0.50).map(Duration::from_nanos),
            p99: c.quantile(0.99).map(Duration::from_nanos),
        }
    }
}

/// The service made by [`ObserveLayer`]: passes requests and responses through unchanged and
/// records each call's latency and outcome.
///
/// ```
/// use degrade_triggers::ObserveLayer;
/// use tower::Layer;
/// let svc = ObserveLayer::new().layer(42u8);
/// assert_eq!(*svc.get_ref(), 42);
/// ```
pub struct Observe<S, K: 'static = DefaultClassifier, C = FastClock> {
    inner: S,
    shared: Arc<Inner<K, C>>,
}

impl<S: Clone, K, C> Clone for Observe<S, K, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, K, C> fmt::Debug for Observe<S, K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observe")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, K, C> Observe<S, K, C> {
    degrade_core::inner_service_accessors!(S);
}

impl<S, K, C, R> Service<R> for Observe<S, K, C>
where
    S: Service<R>,
    S::Error: 'static,
    K: Classifier<S::Response, S::Error>,
    C: Clock,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, K, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: R) -> Self::Future {
        let _scope = degrade_core::clock::CallScope::enter();
        let guard = Guard::new(&self.shared);
        ResponseFuture::new(self.inner.call(req), guard)
    }
}
