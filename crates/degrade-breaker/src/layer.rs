//! The [`BreakerLayer`] and its builder.

use crate::config::BreakerConfig;
use crate::handle::{BreakerHandle, BreakerSnapshot};
use crate::service::Breaker;
use crate::shared::Shared;
use degrade_core::answer::Errors;
#[cfg(feature = "grpc")]
use degrade_core::answer::GrpcResponses;
#[cfg(feature = "http")]
use degrade_core::answer::HttpResponses;
use degrade_core::{Clock, ConfigError, DefaultClassifier, FastClock};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use tower_layer::Layer;

/// A circuit breaker as a tower layer; see the [crate](crate) documentation.
///
/// The layer owns one breaker: every service it makes, every clone of the layer and of those
/// services (axum clones per connection), and every [`BreakerHandle`] share it.
///
/// `C` classifies outcomes ([`DefaultClassifier`]: errors fail, rejections by other degrade
/// layers are ignored); `K` is the clock; `M` the answer mode ([`Errors`] by default, or
/// `HttpResponses` / `GrpcResponses` through `.http()` and `.grpc()`, features `http` and
/// `grpc`).
///
/// ```
/// use degrade_breaker::{BreakerConfig, BreakerLayer, CircuitOpen, State, WindowConfig};
/// use tower::{Service, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), degrade_core::BoxError> {
/// let mut config = BreakerConfig::default();
/// config.window = WindowConfig::Consecutive { failures: 3 };
/// let layer = BreakerLayer::new(config)?;
/// let mut svc = tower::ServiceBuilder::new()
///     .layer(layer.clone())
///     .service(service_fn(|_: ()| async { Err::<(), _>("upstream down") }));
///
/// for _ in 0..3 {
///     assert!(svc.ready().await?.call(()).await.is_err());
/// }
/// assert_eq!(layer.handle().state(), State::Open);
/// let err = svc.ready().await?.call(()).await.unwrap_err();
/// assert!(err.is::<CircuitOpen>());
/// # Ok(()) }
/// ```
pub struct BreakerLayer<C: 'static = DefaultClassifier, K = FastClock, M = Errors> {
    shared: Arc<Shared<C, K>>,
    _mode: PhantomData<fn() -> M>,
}

impl<C: 'static, K, M> Clone for BreakerLayer<C, K, M> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            _mode: PhantomData,
        }
    }
}

impl<C: 'static, K, M> fmt::Debug for BreakerLayer<C, K, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerLayer")
            .field("shared", &self.shared)
            .finish()
    }
}

impl BreakerLayer {
    /// A breaker with the default classifier and clock.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid field.
    ///
    /// ```
    /// use degrade_breaker::{BreakerConfig, BreakerLayer};
    /// let mut bad = BreakerConfig::default();
    /// bad.slow_call_rate = 0.0;
    /// assert_eq!(BreakerLayer::new(bad).unwrap_err().field(), "slow_call_rate");
    /// ```
    pub fn new(config: BreakerConfig) -> Result<Self, ConfigError> {
        Self::builder(config).build()
    }

    /// A builder, to set the classifier, the clock and the name.
    ///
    /// ```
    /// use degrade_breaker::{BreakerConfig, BreakerLayer};
    /// let layer = BreakerLayer::builder(BreakerConfig::default())
    ///     .name("payments")
    ///     .build()?;
    /// assert_eq!(layer.handle().name(), "payments");
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn builder(config: BreakerConfig) -> BreakerBuilder {
        BreakerBuilder {
            config,
            classifier: DefaultClassifier,
            clock: FastClock::unless_pausable(),
            name: Arc::from("breaker"),
        }
    }
}

impl<C: 'static, K: Clock, M> BreakerLayer<C, K, M> {
    /// A handle on the layer's breaker.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer, State};
    /// let h = BreakerLayer::new(BreakerConfig::default())?.handle();
    /// assert_eq!(h.state(), State::Closed);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn handle(&self) -> BreakerHandle<C, K> {
        BreakerHandle::from_shared(Arc::clone(&self.shared))
    }

    /// The clock the breaker reads (see [`BreakerBuilder::clock`] for the default).
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer};
    /// // Built outside any runtime: the counter, not tokio's clock.
    /// let layer = BreakerLayer::new(BreakerConfig::default())?;
    /// assert!(!layer.clock().follows_tokio());
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn clock(&self) -> &K {
        &self.shared.clock
    }

    /// Counters and state of the layer's breaker.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer};
    /// assert_eq!(BreakerLayer::new(BreakerConfig::default())?.snapshot().offered(), 0);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn snapshot(&self) -> BreakerSnapshot {
        BreakerHandle::from_shared(Arc::clone(&self.shared)).snapshot()
    }
}

impl<C: 'static, K, M> BreakerLayer<C, K, M> {
    /// The same layer (same breaker) answering rejected HTTP requests itself: 503 with
    /// `Retry-After` (feature `http`). Pair it with an HTTP classifier so that 5xx responses
    /// count as failures.
    ///
    /// ```
    /// use degrade_breaker::{BreakerConfig, BreakerLayer};
    /// use degrade_core::HttpClassifier;
    /// use tower::{Layer, Service, ServiceExt};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), degrade_core::BoxError> {
    /// let layer = BreakerLayer::builder(BreakerConfig::default())
    ///     .classifier(HttpClassifier::default())
    ///     .build()?
    ///     .http();
    /// layer.handle().force_open();
    /// let mut svc = layer.layer(tower::service_fn(|_: http::Request<()>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    /// }));
    /// let res = svc.ready().await?.call(http::Request::new(())).await?;
    /// assert_eq!(res.status(), 503);
    /// assert!(res.headers().contains_key("retry-after"));
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "http")]
    pub fn http(self) -> BreakerLayer<C, K, HttpResponses> {
        BreakerLayer {
            shared: self.shared,
            _mode: PhantomData,
        }
    }

    /// The same layer (same breaker) answering rejected gRPC calls itself: UNAVAILABLE with
    /// `RetryInfo` (feature `grpc`). Pair it with a gRPC classifier.
    ///
    /// ```
    /// use degrade_breaker::{BreakerConfig, BreakerLayer};
    /// use degrade_core::GrpcClassifier;
    /// use tower::{Layer, Service, ServiceExt};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), degrade_core::BoxError> {
    /// let layer = BreakerLayer::builder(BreakerConfig::default())
    ///     .classifier(GrpcClassifier::default())
    ///     .build()?
    ///     .grpc();
    /// layer.handle().force_open();
    /// let mut svc = layer.layer(tower::service_fn(|_: http::Request<()>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    /// }));
    /// let res = svc.ready().await?.call(http::Request::new(())).await?;
    /// assert_eq!(res.headers()["grpc-status"], "14"); // UNAVAILABLE
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "grpc")]
    pub fn grpc(self) -> BreakerLayer<C, K, GrpcResponses> {
        BreakerLayer {
            shared: self.shared,
            _mode: PhantomData,
        }
    }

    /// The same layer (same breaker) returning rejections as `BoxError`s.
    ///
    /// ```
    /// use degrade_breaker::{BreakerConfig, BreakerLayer, CircuitOpen};
    /// use tower::{Layer, Service, ServiceExt};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), degrade_core::BoxError> {
    /// let layer = BreakerLayer::new(BreakerConfig::default())?.errors();
    /// layer.handle().force_open();
    /// let mut svc = layer.layer(tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
    /// let err = svc.ready().await?.call(1).await.unwrap_err();
    /// assert!(err.is::<CircuitOpen>());
    /// # Ok(()) }
    /// ```
    pub fn errors(self) -> BreakerLayer<C, K, Errors> {
        BreakerLayer {
            shared: self.shared,
            _mode: PhantomData,
        }
    }

    pub(crate) fn from_shared(shared: Arc<Shared<C, K>>) -> Self {
        Self {
            shared,
            _mode: PhantomData,
        }
    }
}

impl<S, C: 'static, K, M> Layer<S> for BreakerLayer<C, K, M> {
    type Service = Breaker<S, C, K, M>;

    fn layer(&self, inner: S) -> Self::Service {
        Breaker::new(inner, Arc::clone(&self.shared))
    }
}

/// Builds a [`BreakerLayer`]; see [`BreakerLayer::builder`].
///
/// ```
/// use degrade_breaker::{BreakerConfig, BreakerLayer, WindowConfig};
/// use degrade_core::{ManualClock, Outcome};
/// use std::time::Duration;
/// let clock = ManualClock::new();
/// let mut config = BreakerConfig::default();
/// config.window = WindowConfig::Consecutive { failures: 1 };
/// config.wait = Duration::from_secs(10);
/// let handle = BreakerLayer::builder(config).clock(clock.clone()).build()?.handle();
/// handle.try_acquire().unwrap().record(Outcome::Failure); // opens
/// assert!(handle.try_acquire().is_err());
/// clock.advance(Duration::from_secs(10)); // the wait runs on the clock given here
/// assert!(handle.try_acquire().unwrap().is_probe());
/// # Ok::<(), degrade_core::ConfigError>(())
/// ```
pub struct BreakerBuilder<C: 'static = DefaultClassifier, K = FastClock> {
    config: BreakerConfig,
    classifier: C,
    clock: K,
    name: Arc<str>,
}

impl<C: 'static, K> fmt::Debug for BreakerBuilder<C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerBuilder")
            .field("config", &self.config)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<C: 'static, K> BreakerBuilder<C, K> {
    /// How outcomes are classified: any `degrade_core::Classifier` (`HttpClassifier` with
    /// feature `http`, `GrpcClassifier` with `grpc`, or your own).
    pub fn classifier<D>(self, classifier: D) -> BreakerBuilder<D, K> {
        BreakerBuilder {
            config: self.config,
            classifier,
            clock: self.clock,
            name: self.name,
        }
    }

    /// The clock. The default is
    /// [`FastClock::unless_pausable`](degrade_core::FastClock::unless_pausable), chosen when
    /// the builder is made, as for the rate limiter and the canary: `TokioClock` inside a
    /// current-thread runtime (where tokio's time can be paused, so paused-time tests keep
    /// working), the CPU's counter elsewhere, whose first read in a request's `call` is every
    /// other counter read's (`degrade_core::clock::CallScope`). The closed path reads no clock
    /// unless `slow_call_duration` is set. A clock given here is never replaced; give
    /// `TokioClock` or a `ManualClock` to a breaker built outside the runtime whose paused time
    /// a test drives.
    ///
    /// ```
    /// use degrade_breaker::{BreakerConfig, BreakerLayer};
    ///
    /// // Inside a current-thread runtime (a `#[tokio::test]`): tokio's clock, paused or not.
    /// let rt = tokio::runtime::Builder::new_current_thread()
    ///     .enable_time()
    ///     .start_paused(true)
    ///     .build()
    ///     .unwrap();
    /// let layer = rt.block_on(async { BreakerLayer::new(BreakerConfig::default()) })?;
    /// assert!(layer.clock().follows_tokio());
    /// // Outside any runtime: the counter.
    /// assert!(!BreakerLayer::new(BreakerConfig::default())?.clock().follows_tokio());
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn clock<L: Clock>(self, clock: L) -> BreakerBuilder<C, L> {
        BreakerBuilder {
            config: self.config,
            classifier: self.classifier,
            clock,
            name: self.name,
        }
    }

    /// The name in the breaker's `tracing` events (default `"breaker"`).
    #[must_use]
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Validates the configuration and builds the layer (and its one breaker).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid field.
    ///
    /// ```
    /// use degrade_breaker::{BreakerConfig, BreakerLayer};
    /// let mut c = BreakerConfig::default();
    /// c.backoff.jitter = 1.0;
    /// let err = BreakerLayer::builder(c).build().unwrap_err();
    /// assert_eq!(err.field(), "backoff.jitter");
    /// ```
    pub fn build(self) -> Result<BreakerLayer<C, K>, ConfigError>
    where
        K: Clock,
    {
        let shared = Shared::new(self.config, self.classifier, self.clock, self.name)?;
        Ok(BreakerLayer::from_shared(Arc::new(shared)))
    }

    pub(crate) fn parts(self) -> (BreakerConfig, C, K, Arc<str>) {
        (self.config, self.classifier, self.clock, self.name)
    }
}
