//! The [`RateLimitLayer`], its builder, and the [`QuotaHandle`].

use crate::config::RateLimitConfig;
use crate::cost::DefaultCost;
use crate::key::{Global, Keyed};
use crate::limiter::{RateLimitSnapshot, SetQuota, Shared};
use crate::service::RateLimit;
use degrade_core::answer::Errors;
use degrade_core::{Clock, ConfigError, FastClock, LevelHandle};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;
use tower_layer::Layer;

/// A GCRA rate limit whose one budget (or one budget per key) is shared by every service the
/// layer makes and every clone of them; see the [crate docs](crate).
///
/// ```
/// use degrade_ratelimit::{RateLimitConfig, RateLimitLayer};
/// use std::time::Duration;
///
/// let layer = RateLimitLayer::new(RateLimitConfig::per(100, Duration::from_secs(1)).burst(20)).unwrap();
/// let for_router = layer.clone(); // same budget
/// assert_eq!(for_router.snapshot(), layer.snapshot());
/// ```
pub struct RateLimitLayer<E = Global, W = DefaultCost, C = FastClock, M = Errors>
where
    E: Keyed,
{
    shared: Arc<Shared<E, W, C>>,
    _mode: PhantomData<fn() -> M>,
}

impl<E: Keyed, W, C, M> Clone for RateLimitLayer<E, W, C, M> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            _mode: PhantomData,
        }
    }
}

impl<E: Keyed, W, C, M> fmt::Debug for RateLimitLayer<E, W, C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("shared", &self.shared)
            .finish()
    }
}

impl RateLimitLayer {
    /// One global budget under `config`. Fails with a [`ConfigError`] naming the field.
    ///
    /// ```
    /// use degrade_ratelimit::{RateLimitConfig, RateLimitLayer};
    /// use std::time::Duration;
    /// let err = RateLimitLayer::new(RateLimitConfig::per(0, Duration::from_secs(1))).unwrap_err();
    /// assert_eq!(err.field(), "quota");
    /// ```
    pub fn new(config: RateLimitConfig) -> Result<Self, ConfigError> {
        Self::builder(config).build()
    }

    /// A builder, to set a clock, a level handle, a cost function or keys.
    ///
    /// ```
    /// use degrade_ratelimit::{RateLimitConfig, RateLimitLayer, RateLimited};
    /// use std::time::Duration;
    /// use tower::{Layer, Service, ServiceExt};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // 10 units a second, burst 10; a batch costs one unit per item.
    /// let layer = RateLimitLayer::builder(RateLimitConfig::per(10, Duration::from_secs(1)))
    ///     .cost(|batch: &Vec<u32>| batch.len() as u64)
    ///     .build()
    ///     .unwrap();
    /// let mut svc = layer.layer(tower::service_fn(|b: Vec<u32>| async move { Ok::<_, std::convert::Infallible>(b.len()) }));
    /// assert_eq!(svc.ready().await.unwrap().call(vec![0; 8]).await.unwrap(), 8);
    /// let err = svc.ready().await.unwrap().call(vec![0; 8]).await.unwrap_err();
    /// assert!(err.is::<RateLimited>()); // 8 + 8 units exceed the burst of 10
    /// # }
    /// ```
    pub fn builder(config: RateLimitConfig) -> RateLimitBuilder {
        RateLimitBuilder {
            config,
            level: None,
            clock: FastClock::unless_pausable(),
            extractor: Global,
            keys: None,
            weigh: DefaultCost,
        }
    }
}

impl<E: Keyed, W, C: Clock, M> RateLimitLayer<E, W, C, M> {
    /// The same layer (same budget) answering rejected HTTP requests itself: 429 with
    /// `Retry-After`, `RateLimit-Policy` and `RateLimit` (feature `http`).
    #[cfg(feature = "http")]
    pub fn http(self) -> RateLimitLayer<E, W, C, degrade_core::answer::HttpResponses> {
        RateLimitLayer {
            shared: self.shared,
            _mode: PhantomData,
        }
    }

    /// The same layer (same budget) answering rejected gRPC calls itself: RESOURCE_EXHAUSTED
    /// with a `RetryInfo` detail (feature `grpc`).
    #[cfg(feature = "grpc")]
    pub fn grpc(self) -> RateLimitLayer<E, W, C, degrade_core::answer::GrpcResponses> {
        RateLimitLayer {
            shared: self.shared,
            _mode: PhantomData,
        }
    }

    /// The same layer (same budget) returning rejections as `BoxError`s.
    pub fn errors(self) -> RateLimitLayer<E, W, C, Errors> {
        RateLimitLayer {
            shared: self.shared,
            _mode: PhantomData,
        }
    }

    /// The counters shared by every service of this layer.
    ///
    /// ```
    /// # use degrade_ratelimit::{RateLimitConfig, RateLimitLayer};
    /// let layer = RateLimitLayer::new(RateLimitConfig::default()).unwrap();
    /// assert_eq!(layer.snapshot().admitted, 0);
    /// ```
    pub fn snapshot(&self) -> RateLimitSnapshot {
        self.shared.snapshot()
    }

    /// A handle to change the quota while the layer serves.
    ///
    /// ```
    /// # use degrade_ratelimit::{RateLimitConfig, RateLimitLayer}; use std::time::Duration;
    /// let layer = RateLimitLayer::new(RateLimitConfig::per(10, Duration::from_secs(1))).unwrap();
    /// let handle = layer.quota_handle();
    /// handle.set(RateLimitConfig::per(20, Duration::from_secs(1))).unwrap();
    /// assert_eq!(handle.get().quota, 20);
    /// ```
    pub fn quota_handle(&self) -> QuotaHandle
    where
        W: Send + Sync + 'static,
    {
        QuotaHandle {
            target: Arc::clone(&self.shared) as Arc<dyn SetQuota>,
        }
    }

    /// Drops every key whose budget is full again (a recovered key is the same as an absent
    /// one, so nothing is lost); returns how many. The store also does this by itself when a
    /// shard is full. A no-op for a global limit.
    ///
    /// ```
    /// # use degrade_ratelimit::{RateLimitConfig, RateLimitLayer};
    /// let layer = RateLimitLayer::new(RateLimitConfig::default()).unwrap();
    /// assert_eq!(layer.evict_idle(), 0);
    /// ```
    pub fn evict_idle(&self) -> usize {
        self.shared.evict_idle()
    }

    /// Entries the keyed store has allocated (one per key held, until a dropped key's entry is
    /// freed: no lookup can still read it), and its cap (both zero for a global limit).
    ///
    /// ```
    /// # use degrade_ratelimit::{RateLimitConfig, RateLimitLayer};
    /// let layer = RateLimitLayer::new(RateLimitConfig::default()).unwrap();
    /// assert_eq!(layer.key_slots(), (0, 0));
    /// ```
    pub fn key_slots(&self) -> (usize, usize) {
        self.shared.key_memory()
    }

    /// How far the shared (or keyless) budget is spent ahead of now: zero when it is full.
    ///
    /// ```
    /// # use degrade_ratelimit::{RateLimitConfig, RateLimitLayer};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let layer = RateLimitLayer::new(RateLimitConfig::default()).unwrap();
    /// assert_eq!(layer.debt(), std::time::Duration::ZERO);
    /// # }
    /// ```
    pub fn debt(&self) -> Duration {
        self.shared.debt()
    }

    /// The clock the layer decides on: the one given to
    /// [`RateLimitBuilder::clock`], or the default chosen when the builder was made (see
    /// there).
    ///
    /// ```
    /// # use degrade_ratelimit::{RateLimitConfig, RateLimitLayer};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // Inside a current-thread runtime, tokio's time can be paused: the default follows it.
    /// let layer = RateLimitLayer::new(RateLimitConfig::default()).unwrap();
    /// assert!(layer.clock().follows_tokio());
    /// # }
    /// ```
    pub fn clock(&self) -> &C {
        self.shared.clock()
    }
}

impl<S, E: Keyed, W, C: Clock, M> Layer<S> for RateLimitLayer<E, W, C, M> {
    type Service = RateLimit<S, E, W, C, M>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, Arc::clone(&self.shared))
    }
}

/// Changes a layer's quota at run time: the next request is decided under the new quota. The
/// budget already spent carries over in *units* (half-spent stays half-spent), so a change
/// neither refills the budget into a burst of extra admits nor drains it into rejections.
///
/// ```
/// use degrade_ratelimit::{RateLimitConfig, RateLimitLayer};
/// use std::time::Duration;
///
/// let layer = RateLimitLayer::new(RateLimitConfig::per(10, Duration::from_secs(1))).unwrap();
/// let handle = layer.quota_handle();
/// let err = handle.set(RateLimitConfig::per(10, Duration::ZERO)).unwrap_err();
/// assert_eq!(err.field(), "period"); // the old quota stays in force
/// assert_eq!(handle.get().period, Duration::from_secs(1));
/// ```
#[derive(Clone)]
pub struct QuotaHandle {
    target: Arc<dyn SetQuota>,
}

impl fmt::Debug for QuotaHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuotaHandle")
            .field("config", &self.target.get())
            .finish()
    }
}

impl QuotaHandle {
    #[cfg(feature = "redis")]
    pub(crate) fn from_target(target: Arc<dyn SetQuota>) -> Self {
        Self { target }
    }

    /// Validates `config` and puts it in force for the next request.
    ///
    /// ```
    /// # use degrade_ratelimit::{RateLimitConfig, RateLimitLayer}; use std::time::Duration;
    /// # let layer = RateLimitLayer::new(RateLimitConfig::default()).unwrap();
    /// let quota = layer.quota_handle();
    /// quota.set(RateLimitConfig::per(5, Duration::from_secs(1)).burst(1)).unwrap();
    /// assert!(quota.set(RateLimitConfig::per(0, Duration::from_secs(1))).is_err()); // refused, old quota kept
    /// ```
    pub fn set(&self, config: RateLimitConfig) -> Result<(), ConfigError> {
        self.target.set(config)
    }

    /// The configuration in force.
    ///
    /// ```
    /// # use degrade_ratelimit::{RateLimitConfig, RateLimitLayer};
    /// # let layer = RateLimitLayer::new(RateLimitConfig::default()).unwrap();
    /// assert_eq!(layer.quota_handle().get(), RateLimitConfig::default());
    /// ```
    pub fn get(&self) -> RateLimitConfig {
        self.target.get()
    }
}

/// Configuration of keyed limits: how many keys the store may hold.
///
/// ```
/// use degrade_ratelimit::KeysConfig;
/// let cfg: KeysConfig = serde_json::from_str(r#"{ "max_keys": 50000 }"#).unwrap();
/// assert!(cfg.validate().is_ok());
/// assert_eq!(KeysConfig { max_keys: 0 }.validate().unwrap_err().field(), "max_keys");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// The most keys held at once (default 100,000). At the cap, keys whose budget is full
    /// again are dropped; if none is, a new key is refused with `Cause::KeyCapacity` while
    /// known keys go on being limited.
    pub max_keys: usize,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self { max_keys: 100_000 }
    }
}

impl KeysConfig {
    /// Checks the rules; the error names the field.
    ///
    /// ```
    /// # use degrade_ratelimit::KeysConfig;
    /// assert!(KeysConfig::default().validate().is_ok());
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_keys == 0 {
            return Err(ConfigError::new("max_keys", "must be greater than zero"));
        }
        if self.max_keys > 1 << 32 {
            return Err(ConfigError::new("max_keys", "must be at most 2^32"));
        }
        Ok(())
    }
}

/// Builds a [`RateLimitLayer`]; see [`RateLimitLayer::builder`].
///
/// ```
/// use degrade_ratelimit::{KeysConfig, RateLimitConfig, RateLimitLayer, key};
/// use std::time::Duration;
/// use tower::{Layer, Service, ServiceExt};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // One request a second per tenant (the first field), burst 1.
/// let layer = RateLimitLayer::builder(RateLimitConfig::per(1, Duration::from_secs(1)).burst(1))
///     .keyed(key::from_fn(|req: &(u32, u32)| Some(req.0)), KeysConfig { max_keys: 1000 })
///     .build()
///     .unwrap();
/// let mut svc = layer.layer(tower::service_fn(|r: (u32, u32)| async move { Ok::<_, std::convert::Infallible>(r.1) }));
/// assert!(svc.ready().await.unwrap().call((1, 0)).await.is_ok());
/// assert!(svc.ready().await.unwrap().call((1, 1)).await.is_err()); // tenant 1 spent its budget
/// assert!(svc.ready().await.unwrap().call((2, 0)).await.is_ok()); // tenant 2 has its own
/// # }
/// ```
pub struct RateLimitBuilder<E = Global, W = DefaultCost, C = FastClock> {
    config: RateLimitConfig,
    level: Option<LevelHandle>,
    clock: C,
    extractor: E,
    keys: Option<KeysConfig>,
    weigh: W,
}

impl<E, W, C> fmt::Debug for RateLimitBuilder<E, W, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitBuilder")
            .field("config", &self.config)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl<E, W, C> RateLimitBuilder<E, W, C> {
    /// Scales the quota by the ladder's level (see [`RateLimitConfig::level_scale`]).
    #[must_use]
    pub fn level(mut self, handle: LevelHandle) -> Self {
        self.level = Some(handle);
        self
    }

    /// The clock (`ManualClock` in tests). Waiting always sleeps on tokio's timer.
    ///
    /// The default is [`FastClock::unless_pausable`], chosen when
    /// [`RateLimitLayer::builder`] is called: the CPU's time-stamp counter (one read per
    /// decision, about 12 ns, where `clock_gettime` costs about 30 ns on virtual machines),
    /// except inside a `current_thread` tokio runtime, where tokio's time can be paused
    /// (`#[tokio::test(start_paused = true)]`): there it reads
    /// [`TokioClock`](degrade_core::TokioClock), so paused time and `advance` are followed
    /// exactly. A layer built outside any runtime or on a multi-thread runtime and then used
    /// under paused time does not follow the pause: build it in the test's runtime, or pass
    /// `TokioClock` or a `ManualClock` here.
    ///
    /// ```
    /// use degrade_core::{Clock, ManualClock, TokioClock};
    /// use degrade_ratelimit::{RateLimitConfig, RateLimitLayer};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let layer = RateLimitLayer::builder(RateLimitConfig::per(1, Duration::from_secs(1)).burst(1))
    ///     .clock(clock.clone())
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(layer.clock().now(), clock.now());
    /// // Outside any runtime, the default reads the counter.
    /// assert!(!RateLimitLayer::new(RateLimitConfig::default()).unwrap().clock().follows_tokio());
    /// let _explicit = RateLimitLayer::builder(RateLimitConfig::default()).clock(TokioClock).build();
    /// ```
    pub fn clock<C2: Clock>(self, clock: C2) -> RateLimitBuilder<E, W, C2> {
        RateLimitBuilder {
            config: self.config,
            level: self.level,
            clock,
            extractor: self.extractor,
            keys: self.keys,
            weigh: self.weigh,
        }
    }

    /// The cost of each request in units: a closure `Fn(&Request) -> u64` or any
    /// [`Weigh`](crate::cost::Weigh).
    pub fn cost<W2>(self, weigh: W2) -> RateLimitBuilder<E, W2, C> {
        RateLimitBuilder {
            config: self.config,
            level: self.level,
            clock: self.clock,
            extractor: self.extractor,
            keys: self.keys,
            weigh,
        }
    }

    /// One budget per key found by `extractor`, in a store bounded by `keys`.
    ///
    /// ```
    /// # use degrade_ratelimit::{KeysConfig, RateLimitConfig, RateLimitLayer, key};
    /// let err = RateLimitLayer::builder(RateLimitConfig::default())
    ///     .keyed(key::from_fn(|r: &u8| Some(*r)), KeysConfig { max_keys: 0 })
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(err.field(), "keys.max_keys");
    /// ```
    pub fn keyed<E2: Keyed>(self, extractor: E2, keys: KeysConfig) -> RateLimitBuilder<E2, W, C> {
        RateLimitBuilder {
            config: self.config,
            level: self.level,
            clock: self.clock,
            extractor,
            keys: Some(keys),
            weigh: self.weigh,
        }
    }

    /// Validates and builds the layer.
    ///
    /// ```
    /// # use degrade_ratelimit::{RateLimitConfig, RateLimitLayer};
    /// let mut cfg = RateLimitConfig::default();
    /// cfg.burst = Some(0);
    /// assert_eq!(RateLimitLayer::builder(cfg).build().unwrap_err().field(), "burst");
    /// ```
    pub fn build(self) -> Result<RateLimitLayer<E, W, C>, ConfigError>
    where
        E: Keyed,
        W: Send + Sync + 'static,
        C: Clock,
    {
        let params = self.config.params()?;
        if let Some(k) = &self.keys {
            k.validate().map_err(|e| e.within("keys"))?;
        }
        Ok(RateLimitLayer {
            shared: Arc::new(Shared::new(
                self.config,
                params,
                self.level,
                self.clock,
                self.extractor,
                self.keys.map(|k| k.max_keys),
                self.weigh,
            )),
            _mode: PhantomData,
        })
    }
}
