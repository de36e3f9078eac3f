//! One breaker per key (host, endpoint, tenant), in a map with a bound on its size.
//!
//! A single breaker in front of many callees opens for all of them when one fails, and a
//! breaker per callee built by hand grows without bound when keys come from requests. The
//! [`KeyedBreakerLayer`] takes a key function `Fn(&Request) -> Key` and keeps one breaker per
//! key, each with the same configuration (and its own jitter seed), created on first use.
//!
//! # The bound
//!
//! The map holds at most `max_keys` breakers. When a new key arrives at the cap, the least
//! recently used breaker that is **closed and idle** (no call in flight, no handle held) is
//! evicted: forgetting it loses only a window of calls that had not opened it. Open, half-open
//! and manually set breakers are never evicted — forgetting them would send traffic back to a
//! callee known to be failing. If every breaker at the cap is busy or not closed, the new key
//! shares one **overflow breaker** with every other such key until room frees up; it is exposed
//! by [`KeyedBreakerLayer::overflow`] so that an operator sees when the cap is too small.
//!
//! "Recently used" is measured in key insertions, not in time: a lookup of a known key costs a
//! shared read lock and two relaxed loads, and writes nothing unless a key was inserted since
//! the entry was last used.
//!
//! ```
//! use degrade_breaker::{BreakerConfig, KeyedBreakerLayer, State, WindowConfig};
//! use tower::{Layer, Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), degrade_core::BoxError> {
//! let mut config = BreakerConfig::default();
//! config.window = WindowConfig::Consecutive { failures: 2 };
//! let layer = KeyedBreakerLayer::builder(config, |host: &&'static str| host.to_string())
//!     .max_keys(1000)
//!     .build()?;
//! let mut svc = layer.layer(service_fn(|host: &'static str| async move {
//!     if host == "down.example" { Err("refused") } else { Ok(()) }
//! }));
//!
//! for _ in 0..2 {
//!     let _ = svc.ready().await?.call("down.example").await;
//! }
//! assert_eq!(layer.handle(&"down.example".to_string()).unwrap().state(), State::Open);
//! assert!(svc.ready().await?.call("up.example").await.is_ok()); // its own breaker
//! # Ok(()) }
//! ```

use crate::config::BreakerConfig;
#[cfg(feature = "http")]
use crate::future::RespondFuture;
use crate::future::ResponseFuture;
use crate::handle::{BreakerHandle, Permit, Shared};
use crate::layer::BreakerLayer;
use degrade_core::degrade::Errors;
#[cfg(feature = "grpc")]
use degrade_core::degrade::GrpcResponses;
#[cfg(feature = "http")]
use degrade_core::degrade::HttpResponses;
use degrade_core::{BoxError, Classifier, Clock, ConfigError, DefaultClassifier, TokioClock};
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

struct Entry<C, K> {
    shared: Arc<Shared<C, K>>,
    last_used: AtomicU64,
}

struct Keyed<F, Key, C, K> {
    key_fn: F,
    config: BreakerConfig,
    classifier: C,
    clock: K,
    name: Arc<str>,
    max_keys: usize,
    map: RwLock<HashMap<Key, Entry<C, K>>>,
    /// Bumped on every insertion: the "time" of the LRU order.
    inserts: AtomicU64,
    overflow: Arc<Shared<C, K>>,
}

impl<F, Key, C, K> Keyed<F, Key, C, K>
where
    Key: Hash + Eq + Clone + fmt::Debug,
    C: Clone,
    K: Clock,
{
    fn breaker(&self, key: &Key) -> Arc<Shared<C, K>> {
        // An entry used after the n-th insertion ranks above the n-th inserted entry.
        let now = self.inserts.load(Ordering::Relaxed) * 2 + 1;
        {
            let map = self.map.read().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = map.get(key) {
                if e.last_used.load(Ordering::Relaxed) != now {
                    e.last_used.store(now, Ordering::Relaxed);
                }
                return Arc::clone(&e.shared);
            }
        }
        self.insert(key)
    }

    #[cold]
    fn insert(&self, key: &Key) -> Arc<Shared<C, K>> {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map.get(key) {
            return Arc::clone(&e.shared);
        }
        if map.len() >= self.max_keys {
            let victim = map
                .iter()
                .filter(|(_, e)| Arc::strong_count(&e.shared) == 1 && e.shared.is_closed())
                .min_by_key(|(_, e)| e.last_used.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone());
            match victim {
                Some(k) => {
                    map.remove(&k);
                }
                None => return Arc::clone(&self.overflow),
            }
        }
        let name: Arc<str> = Arc::from(format!("{}[{key:?}]", self.name));
        // The configuration was validated when the layer was built, so this cannot fail; the
        // overflow breaker is the safe answer if it ever did.
        let Ok(shared) = Shared::new(
            self.config.clone(),
            self.classifier.clone(),
            self.clock.clone(),
            name,
        ) else {
            return Arc::clone(&self.overflow);
        };
        let shared = Arc::new(shared);
        let tick = self.inserts.fetch_add(1, Ordering::Relaxed) + 1;
        map.insert(
            key.clone(),
            Entry {
                shared: Arc::clone(&shared),
                last_used: AtomicU64::new(tick * 2),
            },
        );
        shared
    }
}

/// One breaker per key, in a bounded map; see the [module](self) documentation.
///
/// Cloning the layer shares the map.
///
/// ```
/// use degrade_breaker::{BreakerConfig, KeyedBreakerLayer};
/// let layer = KeyedBreakerLayer::new(BreakerConfig::default(), |tenant: &u32| *tenant)?;
/// assert_eq!(layer.len(), 0);
/// # Ok::<(), degrade_core::ConfigError>(())
/// ```
pub struct KeyedBreakerLayer<F, Key, C = DefaultClassifier, K = TokioClock, M = Errors> {
    keyed: Arc<Keyed<F, Key, C, K>>,
    _mode: PhantomData<fn() -> M>,
}

impl<F, Key, C, K, M> Clone for KeyedBreakerLayer<F, Key, C, K, M> {
    fn clone(&self) -> Self {
        Self {
            keyed: Arc::clone(&self.keyed),
            _mode: PhantomData,
        }
    }
}

impl<F, Key, C, K, M> fmt::Debug for KeyedBreakerLayer<F, Key, C, K, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBreakerLayer")
            .field("name", &self.keyed.name)
            .field("max_keys", &self.keyed.max_keys)
            .finish_non_exhaustive()
    }
}

/// The default bound on the number of keys.
pub const DEFAULT_MAX_KEYS: usize = 10_000;

impl<F, Key> KeyedBreakerLayer<F, Key> {
    /// Keyed breakers with the default classifier, clock and bound ([`DEFAULT_MAX_KEYS`]).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid field.
    ///
    /// ```
    /// use degrade_breaker::{BreakerConfig, KeyedBreakerLayer};
    /// let mut bad = BreakerConfig::default();
    /// bad.failure_rate = -1.0;
    /// let err = KeyedBreakerLayer::new(bad, |k: &u8| *k).unwrap_err();
    /// assert_eq!(err.field(), "failure_rate");
    /// ```
    pub fn new<R>(config: BreakerConfig, key_fn: F) -> Result<Self, ConfigError>
    where
        F: Fn(&R) -> Key,
        Key: Hash + Eq + Clone + fmt::Debug,
    {
        Self::builder(config, key_fn).build()
    }

    /// A builder; `key_fn` maps a request to its key.
    ///
    /// ```
    /// use degrade_breaker::{BreakerConfig, KeyedBreakerLayer};
    /// let layer = KeyedBreakerLayer::builder(BreakerConfig::default(), |r: &(u8, u8)| r.0)
    ///     .max_keys(16)
    ///     .name("hosts")
    ///     .build()?;
    /// # let _ = layer;
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn builder<R>(config: BreakerConfig, key_fn: F) -> KeyedBuilder<F, Key>
    where
        F: Fn(&R) -> Key,
    {
        KeyedBuilder {
            inner: BreakerLayer::builder(config),
            key_fn,
            max_keys: DEFAULT_MAX_KEYS,
            _key: PhantomData,
        }
    }
}

impl<F, Key, C, K, M> KeyedBreakerLayer<F, Key, C, K, M>
where
    Key: Hash + Eq,
    K: Clock,
{
    /// The handle of `key`'s breaker, if the map holds one.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, KeyedBreakerLayer};
    /// let layer = KeyedBreakerLayer::new(BreakerConfig::default(), |k: &u8| *k)?;
    /// assert!(layer.handle(&1).is_none());
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn handle(&self, key: &Key) -> Option<BreakerHandle<C, K>> {
        let map = self.keyed.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(key)
            .map(|e| BreakerHandle::from_shared(Arc::clone(&e.shared)))
    }

    /// The breaker shared by new keys that arrive while the map is full of breakers that cannot
    /// be evicted.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, KeyedBreakerLayer};
    /// let layer = KeyedBreakerLayer::new(BreakerConfig::default(), |k: &u8| *k)?;
    /// assert_eq!(layer.overflow().snapshot().offered(), 0);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn overflow(&self) -> BreakerHandle<C, K> {
        BreakerHandle::from_shared(Arc::clone(&self.keyed.overflow))
    }

    /// The number of keys in the map.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, KeyedBreakerLayer};
    /// let layer = KeyedBreakerLayer::new(BreakerConfig::default(), |k: &u8| *k)?;
    /// assert!(layer.is_empty());
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn len(&self) -> usize {
        self.keyed
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Whether the map holds no key.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, KeyedBreakerLayer};
    /// let layer = KeyedBreakerLayer::new(BreakerConfig::default(), |k: &u8| *k)?;
    /// assert!(layer.is_empty());
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys in the map, in no particular order.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, KeyedBreakerLayer};
    /// let layer = KeyedBreakerLayer::new(BreakerConfig::default(), |k: &u8| *k)?;
    /// assert!(layer.keys().is_empty());
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn keys(&self) -> Vec<Key>
    where
        Key: Clone,
    {
        let map = self.keyed.map.read().unwrap_or_else(|e| e.into_inner());
        map.keys().cloned().collect()
    }
}

impl<F, Key, C, K, M> KeyedBreakerLayer<F, Key, C, K, M> {
    /// The same layer (same map) answering rejected HTTP requests with 503 and `Retry-After`
    /// (feature `http`).
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, KeyedBreakerLayer};
    /// let layer = KeyedBreakerLayer::new(BreakerConfig::default(),
    ///     |r: &http::Request<()>| r.uri().host().map(str::to_owned))?.http();
    /// # let _ = layer;
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    #[cfg(feature = "http")]
    pub fn http(self) -> KeyedBreakerLayer<F, Key, C, K, HttpResponses> {
        KeyedBreakerLayer {
            keyed: self.keyed,
            _mode: PhantomData,
        }
    }

    /// The same layer (same map) answering rejected gRPC calls with UNAVAILABLE (feature
    /// `grpc`).
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, KeyedBreakerLayer};
    /// let layer = KeyedBreakerLayer::new(BreakerConfig::default(),
    ///     |r: &http::Request<()>| r.uri().path().to_owned())?.grpc();
    /// # let _ = layer;
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    #[cfg(feature = "grpc")]
    pub fn grpc(self) -> KeyedBreakerLayer<F, Key, C, K, GrpcResponses> {
        KeyedBreakerLayer {
            keyed: self.keyed,
            _mode: PhantomData,
        }
    }
}

impl<S, F, Key, C, K, M> Layer<S> for KeyedBreakerLayer<F, Key, C, K, M> {
    type Service = KeyedBreaker<S, F, Key, C, K, M>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedBreaker {
            inner,
            keyed: Arc::clone(&self.keyed),
            _mode: PhantomData,
        }
    }
}

/// Builds a [`KeyedBreakerLayer`]; see [`KeyedBreakerLayer::builder`].
///
/// ```
/// use degrade_breaker::{BreakerConfig, KeyedBreakerLayer};
/// let b = KeyedBreakerLayer::builder(BreakerConfig::default(), |k: &u8| *k).max_keys(4);
/// # let _ = b;
/// ```
pub struct KeyedBuilder<F, Key, C = DefaultClassifier, K = TokioClock> {
    inner: crate::layer::BreakerBuilder<C, K>,
    key_fn: F,
    max_keys: usize,
    _key: PhantomData<fn() -> Key>,
}

impl<F, Key, C, K> fmt::Debug for KeyedBuilder<F, Key, C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBuilder")
            .field("inner", &self.inner)
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

impl<F, Key, C, K> KeyedBuilder<F, Key, C, K> {
    /// The most breakers the map holds (default [`DEFAULT_MAX_KEYS`]; at least 1).
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, KeyedBreakerLayer};
    /// let err = KeyedBreakerLayer::builder(BreakerConfig::default(), |k: &u8| *k)
    ///     .max_keys(0).build().unwrap_err();
    /// assert_eq!(err.field(), "max_keys");
    /// ```
    #[must_use]
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// The classifier of every key's breaker (cloned per key).
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, KeyedBreakerLayer};
    /// let b = KeyedBreakerLayer::builder(BreakerConfig::default(), |k: &u8| *k)
    ///     .classifier(degrade_core::DefaultClassifier);
    /// # let _ = b;
    /// ```
    pub fn classifier<D>(self, classifier: D) -> KeyedBuilder<F, Key, D, K> {
        KeyedBuilder {
            inner: self.inner.classifier(classifier),
            key_fn: self.key_fn,
            max_keys: self.max_keys,
            _key: PhantomData,
        }
    }

    /// The clock of every key's breaker.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, KeyedBreakerLayer};
    /// let b = KeyedBreakerLayer::builder(BreakerConfig::default(), |k: &u8| *k)
    ///     .clock(degrade_core::TokioClock);
    /// # let _ = b;
    /// ```
    pub fn clock<L: Clock>(self, clock: L) -> KeyedBuilder<F, Key, C, L> {
        KeyedBuilder {
            inner: self.inner.clock(clock),
            key_fn: self.key_fn,
            max_keys: self.max_keys,
            _key: PhantomData,
        }
    }

    /// The name in `tracing` events; each key's breaker is named `name[key]`.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, KeyedBreakerLayer};
    /// let b = KeyedBreakerLayer::builder(BreakerConfig::default(), |k: &u8| *k).name("hosts");
    /// # let _ = b;
    /// ```
    #[must_use]
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.inner = self.inner.name(name);
        self
    }

    /// Validates and builds the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid field (`max_keys` included).
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, KeyedBreakerLayer};
    /// assert!(KeyedBreakerLayer::builder(BreakerConfig::default(), |k: &u8| *k).build().is_ok());
    /// ```
    pub fn build(self) -> Result<KeyedBreakerLayer<F, Key, C, K>, ConfigError>
    where
        Key: Hash + Eq + Clone + fmt::Debug,
        C: Clone,
        K: Clock,
    {
        if self.max_keys == 0 {
            return Err(ConfigError::new("max_keys", "must be at least 1"));
        }
        let (config, classifier, clock, name) = self.inner.parts();
        let overflow = Shared::new(
            config.clone(),
            classifier.clone(),
            clock.clone(),
            Arc::from(format!("{name}[overflow]")),
        )?;
        Ok(KeyedBreakerLayer {
            keyed: Arc::new(Keyed {
                key_fn: self.key_fn,
                config,
                classifier,
                clock,
                name,
                max_keys: self.max_keys,
                map: RwLock::new(HashMap::new()),
                inserts: AtomicU64::new(0),
                overflow: Arc::new(overflow),
            }),
            _mode: PhantomData,
        })
    }
}

/// The service made by [`KeyedBreakerLayer`]: finds (or creates) the request's breaker, then
/// behaves as [`Breaker`](crate::Breaker) does.
///
/// ```
/// use degrade_breaker::{BreakerConfig, KeyedBreakerLayer};
/// use tower::Layer;
/// let layer = KeyedBreakerLayer::new(BreakerConfig::default(), |k: &u8| *k)?;
/// let svc = layer.layer(tower::service_fn(|k: u8| async move { Ok::<_, std::convert::Infallible>(k) }));
/// # let _ = svc;
/// # Ok::<(), degrade_core::ConfigError>(())
/// ```
pub struct KeyedBreaker<S, F, Key, C = DefaultClassifier, K = TokioClock, M = Errors> {
    inner: S,
    keyed: Arc<Keyed<F, Key, C, K>>,
    _mode: PhantomData<fn() -> M>,
}

impl<S: Clone, F, Key, C, K, M> Clone for KeyedBreaker<S, F, Key, C, K, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            keyed: Arc::clone(&self.keyed),
            _mode: PhantomData,
        }
    }
}

impl<S: fmt::Debug, F, Key, C, K, M> fmt::Debug for KeyedBreaker<S, F, Key, C, K, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBreaker")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, F, Key, C, K, M> KeyedBreaker<S, F, Key, C, K, M> {
    /// The inner service.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, KeyedBreakerLayer}; use tower::Layer;
    /// let svc = KeyedBreakerLayer::new(BreakerConfig::default(), |k: &u8| *k)?.layer(7u8);
    /// assert_eq!(*svc.get_ref(), 7);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, KeyedBreakerLayer}; use tower::Layer;
    /// let mut svc = KeyedBreakerLayer::new(BreakerConfig::default(), |k: &u8| *k)?.layer(7u8);
    /// *svc.get_mut() = 8;
    /// assert_eq!(svc.into_inner(), 8);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the wrapper, returning the inner service.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, KeyedBreakerLayer}; use tower::Layer;
    /// let svc = KeyedBreakerLayer::new(BreakerConfig::default(), |k: &u8| *k)?.layer("x");
    /// assert_eq!(svc.into_inner(), "x");
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, F, Key, C, K, R> Service<R> for KeyedBreaker<S, F, Key, C, K, Errors>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
    F: Fn(&R) -> Key,
    Key: Hash + Eq + Clone + fmt::Debug,
    C: Classifier<S::Response, S::Error> + Clone,
    K: Clock,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C, K>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let shared = self.keyed.breaker(&(self.keyed.key_fn)(&req));
        match shared.admit() {
            Ok(ticket) => ResponseFuture::called(self.inner.call(req), Permit::new(shared, ticket)),
            Err(open) => ResponseFuture::rejected(open),
        }
    }
}

#[cfg(feature = "http")]
impl<S, F, Key, C, K, ReqB, ResB> Service<http::Request<ReqB>>
    for KeyedBreaker<S, F, Key, C, K, HttpResponses>
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>>,
    F: Fn(&http::Request<ReqB>) -> Key,
    Key: Hash + Eq + Clone + fmt::Debug,
    C: Classifier<http::Response<ResB>, S::Error> + Clone,
    K: Clock,
    ResB: Default,
{
    type Response = http::Response<ResB>;
    type Error = S::Error;
    type Future = RespondFuture<S::Future, ResB, C, K>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        let shared = self.keyed.breaker(&(self.keyed.key_fn)(&req));
        match shared.admit() {
            Ok(ticket) => RespondFuture::called(self.inner.call(req), Permit::new(shared, ticket)),
            Err(open) => RespondFuture::rejected(degrade_core::rejection::http::response(&open)),
        }
    }
}

#[cfg(feature = "grpc")]
impl<S, F, Key, C, K, ReqB, ResB> Service<http::Request<ReqB>>
    for KeyedBreaker<S, F, Key, C, K, GrpcResponses>
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>>,
    F: Fn(&http::Request<ReqB>) -> Key,
    Key: Hash + Eq + Clone + fmt::Debug,
    C: Classifier<http::Response<ResB>, S::Error> + Clone,
    K: Clock,
    ResB: Default,
{
    type Response = http::Response<ResB>;
    type Error = S::Error;
    type Future = RespondFuture<S::Future, ResB, C, K>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        let shared = self.keyed.breaker(&(self.keyed.key_fn)(&req));
        match shared.admit() {
            Ok(ticket) => RespondFuture::called(self.inner.call(req), Permit::new(shared, ticket)),
            Err(open) => RespondFuture::rejected(degrade_core::rejection::grpc::response(&open)),
        }
    }
}
