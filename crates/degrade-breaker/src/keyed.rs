//! One breaker per key (host, endpoint, tenant), in a map with a bound on its size.
//!
//! A single breaker in front of many callees opens for all of them when one fails, and a
//! breaker per callee built by hand grows without bound when keys come from requests. The
//! [`KeyedBreakerLayer`] takes a key extractor from degrade's one family
//! ([`degrade_core::key`]: a closure through [`from_fn`](degrade_core::key::from_fn), a header, a
//! gRPC metadata entry, a cookie, the peer IP) and keeps one breaker per key, each with the same
//! configuration (and its own jitter seed), created on first use. Requests without a key share
//! one keyless breaker.
//!
//! # The bound
//!
//! The map holds at most `max_keys` breakers. When a new key arrives at the cap, a breaker that
//! is **closed and idle** (no call in flight, no handle held) and not recently used is evicted:
//! forgetting it loses only a window of calls that had not opened it. Open, half-open and
//! manually set breakers are never evicted — forgetting them would send traffic back to a
//! callee known to be failing. If none can be evicted, the new key shares one **overflow
//! breaker** with every other such key until room frees up; it is exposed by
//! [`KeyedBreakerLayer::overflow`] so that an operator sees when the cap is too small.
//!
//! "Recently used" is the CLOCK approximation of LRU: a lookup of a known key marks its slot
//! (a shared read lock and one relaxed load; a store only if the mark was clear), and a hand
//! sweeps the slots to find a victim. A marked slot gets a second chance (the hand clears its
//! mark and moves on); the first closed, idle, unmarked breaker is evicted. The hand passes at
//! most [`MAX_EVICTION_SKIPS`] breakers that cannot be evicted before it gives up and hands the
//! new key the overflow breaker, and it resumes from there next time.
//!
//! Admitting a new key at the cap therefore costs O(1) amortised, whatever keys arrive: every
//! mark the hand clears was set by an earlier lookup, and every other visit is bounded by the
//! skip budget. A stream of attacker-chosen keys cannot turn the write lock into a scan of the
//! whole map (the previous design did exactly that, once per new key). [`KeyedSnapshot`]
//! counts the slots the hand visited.
//!
//! ```
//! use degrade_breaker::{BreakerConfig, KeyedBreakerLayer, State, WindowConfig};
//! use degrade_core::key::from_fn;
//! use tower::{Layer, Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), degrade_core::BoxError> {
//! let mut config = BreakerConfig::default();
//! config.window = WindowConfig::Consecutive { failures: 2 };
//! let layer = KeyedBreakerLayer::builder(config, from_fn(|host: &&'static str| Some(host.to_string())))
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
use crate::handle::BreakerHandle;
use crate::layer::BreakerLayer;
use crate::permit::Permit;
use crate::shared::Shared;
use degrade_core::answer::Errors;
#[cfg(feature = "grpc")]
use degrade_core::answer::GrpcResponses;
#[cfg(feature = "http")]
use degrade_core::answer::{HttpResponses, Respond, Responses};
use degrade_core::key::KeyExtractor;
use degrade_core::{BoxError, Classifier, Clock, ConfigError, DefaultClassifier, FastClock};
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// The most breakers that cannot be evicted (open, half-open, manually set, busy) the clock
/// hand passes while looking for a victim for one new key; past it the key gets the overflow
/// breaker. It bounds the work a new key can cause at the cap to a constant.
pub const MAX_EVICTION_SKIPS: u32 = 64;

struct Slot<Key, C: 'static, K> {
    key: Key,
    shared: Arc<Shared<C, K>>,
    /// Set by lookups, cleared by the clock hand: a second chance before eviction.
    referenced: AtomicBool,
}

/// The map: an index from key to slot, the slots in a ring, and the clock hand.
struct Table<Key, C: 'static, K> {
    index: HashMap<Key, usize>,
    slots: Vec<Slot<Key, C, K>>,
    hand: usize,
    stats: KeyedSnapshot,
}

impl<Key, C: 'static, K: Clock> Table<Key, C, K> {
    /// Moves the hand until it finds a slot to evict, or `None` after `MAX_EVICTION_SKIPS`
    /// breakers that cannot be evicted or two revolutions. No lookup can set a mark while the
    /// write lock is held, so after one revolution every evictable slot is unmarked and the
    /// second finds it if there is one.
    fn victim(&mut self) -> Option<usize> {
        let len = self.slots.len();
        let mut skips = 0;
        for _ in 0..len.saturating_mul(2) {
            let i = self.hand;
            self.hand = if i + 1 == len { 0 } else { i + 1 };
            self.stats.scanned += 1;
            let slot = &self.slots[i];
            let marked = slot.referenced.swap(false, Ordering::Relaxed);
            // Held only by this map (no handle), closed in normal mode, no call in flight.
            // Futures hold no `Arc` (they reach the breaker through a `&'static`): a call in
            // flight shows in the counts, read only for an unmarked slot (each such read
            // evicts or counts a skip, so a search reads at most `MAX_EVICTION_SKIPS + 1`).
            let evictable = Arc::strong_count(&slot.shared) == 1
                && slot.shared.is_closed()
                && (marked || slot.shared.in_flight() == 0);
            if evictable && !marked {
                return Some(i);
            }
            if !evictable {
                skips += 1;
                if skips >= MAX_EVICTION_SKIPS {
                    return None;
                }
            }
        }
        None
    }
}

struct Keyed<F, Key, C: 'static, K> {
    extractor: F,
    config: BreakerConfig,
    classifier: C,
    clock: K,
    name: Arc<str>,
    max_keys: usize,
    /// Keyed by `Option<Key>`: requests without a key share the `None` breaker.
    table: RwLock<Table<Option<Key>, C, K>>,
    overflow: Arc<Shared<C, K>>,
}

impl<F, Key, C: 'static, K> Keyed<F, Key, C, K>
where
    Key: Hash + Eq + Clone + fmt::Debug,
    C: Clone,
    K: Clock,
{
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table<Option<Key>, C, K>> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn breaker(&self, key: &Option<Key>) -> Arc<Shared<C, K>> {
        {
            let table = self.read();
            if let Some(&i) = table.index.get(key) {
                let slot = &table.slots[i];
                if !slot.referenced.load(Ordering::Relaxed) {
                    slot.referenced.store(true, Ordering::Relaxed);
                }
                return Arc::clone(&slot.shared);
            }
        }
        self.insert(key)
    }

    #[cold]
    fn insert(&self, key: &Option<Key>) -> Arc<Shared<C, K>> {
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        if let Some(&i) = table.index.get(key) {
            return Arc::clone(&table.slots[i].shared);
        }
        let at = if table.slots.len() < self.max_keys {
            None
        } else {
            match table.victim() {
                Some(i) => Some(i),
                None => {
                    table.stats.overflowed += 1;
                    return Arc::clone(&self.overflow);
                }
            }
        };
        let name: Arc<str> = Arc::from(format!("{}[{key:?}]", self.name));
        // The configuration was validated when the layer was built, so this cannot fail; the
        // overflow breaker is the safe answer if it ever did.
        let Ok(shared) = Shared::new(
            self.config.clone(),
            self.classifier.clone(),
            self.clock.clone(),
            name,
        ) else {
            table.stats.overflowed += 1;
            return Arc::clone(&self.overflow);
        };
        let shared = Arc::new(shared);
        let slot = Slot {
            key: key.clone(),
            shared: Arc::clone(&shared),
            referenced: AtomicBool::new(false),
        };
        let table = &mut *table;
        match at {
            Some(i) => {
                let old = std::mem::replace(&mut table.slots[i], slot);
                table.index.remove(&old.key);
                table.index.insert(key.clone(), i);
                table.stats.evicted += 1;
            }
            None => {
                table.index.insert(key.clone(), table.slots.len());
                table.slots.push(slot);
            }
        }
        table.stats.inserted += 1;
        shared
    }
}

/// Counters of a [`KeyedBreakerLayer`]'s map (not of its breakers: each has its own
/// [`BreakerSnapshot`](crate::BreakerSnapshot)).
///
/// ```
/// use degrade_breaker::{BreakerConfig, KeyedBreakerLayer};
/// use degrade_core::key::from_fn;
/// use tower::{Layer, Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let layer = KeyedBreakerLayer::builder(BreakerConfig::default(), from_fn(|k: &u32| Some(*k)))
///     .max_keys(2)
///     .build()
///     .unwrap();
/// let mut svc = layer.layer(tower::service_fn(|k: u32| async move { Ok::<_, std::convert::Infallible>(k) }));
/// for key in [1, 2, 3] {
///     svc.ready().await.unwrap().call(key).await.unwrap();
/// }
/// let s = layer.snapshot();
/// assert_eq!((s.keys, s.inserted, s.evicted, s.overflowed), (2, 3, 1, 0));
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct KeyedSnapshot {
    /// Keys in the map now.
    pub keys: usize,
    /// Breakers created for new keys.
    pub inserted: u64,
    /// Breakers forgotten to make room (closed and idle ones only).
    pub evicted: u64,
    /// New keys sent to the overflow breaker because nothing could be evicted.
    pub overflowed: u64,
    /// Slots the eviction hand visited: the work new keys at the cap caused. At most
    /// `MAX_EVICTION_SKIPS + 1` per new key, plus one per mark a lookup set.
    pub scanned: u64,
}

/// One breaker per key, in a bounded map; see the [module](self) documentation.
///
/// Cloning the layer shares the map.
///
/// ```
/// use degrade_breaker::{BreakerConfig, KeyedBreakerLayer};
/// use degrade_core::key::from_fn;
/// let layer = KeyedBreakerLayer::new(BreakerConfig::default(), from_fn(|tenant: &u32| Some(*tenant)))?;
/// assert_eq!(layer.len(), 0);
/// # Ok::<(), degrade_core::ConfigError>(())
/// ```
pub struct KeyedBreakerLayer<F, Key, C: 'static = DefaultClassifier, K = FastClock, M = Errors> {
    keyed: Arc<Keyed<F, Key, C, K>>,
    _mode: PhantomData<fn() -> M>,
}

impl<F, Key, C: 'static, K, M> Clone for KeyedBreakerLayer<F, Key, C, K, M> {
    fn clone(&self) -> Self {
        Self {
            keyed: Arc::clone(&self.keyed),
            _mode: PhantomData,
        }
    }
}

impl<F, Key, C: 'static, K, M> fmt::Debug for KeyedBreakerLayer<F, Key, C, K, M> {
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
    /// use degrade_core::key::from_fn;
    /// let mut bad = BreakerConfig::default();
    /// bad.failure_rate = -1.0;
    /// let err = KeyedBreakerLayer::new(bad, from_fn(|k: &u8| Some(*k))).unwrap_err();
    /// assert_eq!(err.field(), "failure_rate");
    /// ```
    pub fn new<R>(config: BreakerConfig, extractor: F) -> Result<Self, ConfigError>
    where
        F: KeyExtractor<R, Key = Key>,
        Key: Hash + Eq + Clone + fmt::Debug,
    {
        Self::builder(config, extractor).build()
    }

    /// A builder; `extractor` finds a request's key.
    ///
    /// ```
    /// use degrade_breaker::{BreakerConfig, KeyedBreakerLayer};
    /// use degrade_core::key::from_fn;
    /// let layer = KeyedBreakerLayer::builder(BreakerConfig::default(), from_fn(|r: &(u8, u8)| Some(r.0)))
    ///     .max_keys(16)
    ///     .name("hosts")
    ///     .build()?;
    /// assert!(layer.is_empty()); // a key's breaker is made by its first request
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn builder<R>(config: BreakerConfig, extractor: F) -> KeyedBuilder<F, Key>
    where
        F: KeyExtractor<R, Key = Key>,
    {
        KeyedBuilder {
            inner: BreakerLayer::builder(config),
            extractor,
            max_keys: DEFAULT_MAX_KEYS,
            _key: PhantomData,
        }
    }
}

impl<F, Key, C: 'static, K, M> KeyedBreakerLayer<F, Key, C, K, M>
where
    Key: Hash + Eq + Clone,
    K: Clock,
{
    /// The handle of `key`'s breaker, if the map holds one.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, KeyedBreakerLayer};
    /// # use degrade_core::key::from_fn;
    /// let layer = KeyedBreakerLayer::new(BreakerConfig::default(), from_fn(|k: &u8| Some(*k)))?;
    /// assert!(layer.handle(&1).is_none());
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn handle(&self, key: &Key) -> Option<BreakerHandle<C, K>> {
        let table = self.keyed.table.read().unwrap_or_else(|e| e.into_inner());
        table
            .index
            .get(&Some(key.clone()))
            .map(|&i| BreakerHandle::from_shared(Arc::clone(&table.slots[i].shared)))
    }

    /// The breaker shared by new keys that arrive while the map is full of breakers that cannot
    /// be evicted.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, KeyedBreakerLayer};
    /// # use degrade_core::key::from_fn;
    /// let layer = KeyedBreakerLayer::new(BreakerConfig::default(), from_fn(|k: &u8| Some(*k)))?;
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
    /// # use degrade_core::key::from_fn;
    /// let layer = KeyedBreakerLayer::new(BreakerConfig::default(), from_fn(|k: &u8| Some(*k)))?;
    /// assert!(layer.is_empty());
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn len(&self) -> usize {
        self.keyed
            .table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .slots
            .len()
    }

    /// Counters of the map: keys, insertions, evictions, overflows and the eviction hand's
    /// work (see [`KeyedSnapshot`]).
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, KeyedBreakerLayer};
    /// # use degrade_core::key::from_fn;
    /// let layer = KeyedBreakerLayer::new(BreakerConfig::default(), from_fn(|k: &u8| Some(*k)))?;
    /// assert_eq!(layer.snapshot().inserted, 0);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn snapshot(&self) -> KeyedSnapshot {
        let table = self.keyed.table.read().unwrap_or_else(|e| e.into_inner());
        KeyedSnapshot {
            keys: table.slots.len(),
            ..table.stats
        }
    }

    /// Whether the map holds no key.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, KeyedBreakerLayer};
    /// # use degrade_core::key::from_fn;
    /// let layer = KeyedBreakerLayer::new(BreakerConfig::default(), from_fn(|k: &u8| Some(*k)))?;
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
    /// # use degrade_core::key::from_fn;
    /// let layer = KeyedBreakerLayer::new(BreakerConfig::default(), from_fn(|k: &u8| Some(*k)))?;
    /// assert!(layer.keys().is_empty());
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn keys(&self) -> Vec<Key> {
        let table = self.keyed.table.read().unwrap_or_else(|e| e.into_inner());
        table.slots.iter().filter_map(|s| s.key.clone()).collect()
    }

    /// The handle of the breaker shared by requests without a key, if one came.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, KeyedBreakerLayer};
    /// use degrade_core::key::from_fn;
    /// use tower::{Layer, Service};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let layer = KeyedBreakerLayer::new(BreakerConfig::default(), from_fn(|k: &u8| (*k > 0).then_some(*k))).unwrap();
    /// let mut svc = layer.layer(tower::service_fn(|k: u8| async move { Ok::<_, std::convert::Infallible>(k) }));
    /// svc.call(0).await.unwrap();
    /// assert_eq!(layer.keyless().unwrap().snapshot().offered(), 1);
    /// assert!(layer.keys().is_empty());
    /// # }
    /// ```
    pub fn keyless(&self) -> Option<BreakerHandle<C, K>> {
        let table = self.keyed.table.read().unwrap_or_else(|e| e.into_inner());
        table
            .index
            .get(&None)
            .map(|&i| BreakerHandle::from_shared(Arc::clone(&table.slots[i].shared)))
    }
}

impl<F, Key, C: 'static, K, M> KeyedBreakerLayer<F, Key, C, K, M> {
    /// The same layer (same map) answering rejected HTTP requests with 503 and `Retry-After`
    /// (feature `http`).
    #[cfg(feature = "http")]
    pub fn http(self) -> KeyedBreakerLayer<F, Key, C, K, HttpResponses> {
        KeyedBreakerLayer {
            keyed: self.keyed,
            _mode: PhantomData,
        }
    }

    /// The same layer (same map) answering rejected gRPC calls with UNAVAILABLE (feature
    /// `grpc`).
    #[cfg(feature = "grpc")]
    pub fn grpc(self) -> KeyedBreakerLayer<F, Key, C, K, GrpcResponses> {
        KeyedBreakerLayer {
            keyed: self.keyed,
            _mode: PhantomData,
        }
    }

    /// The same layer (same map) returning rejections as `BoxError`s (the default mode).
    pub fn errors(self) -> KeyedBreakerLayer<F, Key, C, K, Errors> {
        KeyedBreakerLayer {
            keyed: self.keyed,
            _mode: PhantomData,
        }
    }
}

impl<S, F, Key, C: 'static, K, M> Layer<S> for KeyedBreakerLayer<F, Key, C, K, M> {
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
pub struct KeyedBuilder<F, Key, C: 'static = DefaultClassifier, K = FastClock> {
    inner: crate::layer::BreakerBuilder<C, K>,
    extractor: F,
    max_keys: usize,
    _key: PhantomData<fn() -> Key>,
}

impl<F, Key, C: 'static, K> fmt::Debug for KeyedBuilder<F, Key, C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBuilder")
            .field("inner", &self.inner)
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

impl<F, Key, C: 'static, K> KeyedBuilder<F, Key, C, K> {
    /// The most breakers the map holds (default [`DEFAULT_MAX_KEYS`]; at least 1).
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, KeyedBreakerLayer};
    /// # use degrade_core::key::from_fn;
    /// let err = KeyedBreakerLayer::builder(BreakerConfig::default(), from_fn(|k: &u8| Some(*k)))
    ///     .max_keys(0).build().unwrap_err();
    /// assert_eq!(err.field(), "max_keys");
    /// ```
    #[must_use]
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// The classifier of every key's breaker (cloned per key).
    pub fn classifier<D>(self, classifier: D) -> KeyedBuilder<F, Key, D, K> {
        KeyedBuilder {
            inner: self.inner.classifier(classifier),
            extractor: self.extractor,
            max_keys: self.max_keys,
            _key: PhantomData,
        }
    }

    /// The clock of every key's breaker.
    pub fn clock<L: Clock>(self, clock: L) -> KeyedBuilder<F, Key, C, L> {
        KeyedBuilder {
            inner: self.inner.clock(clock),
            extractor: self.extractor,
            max_keys: self.max_keys,
            _key: PhantomData,
        }
    }

    /// The name in `tracing` events; each key's breaker is named `name[key]`.
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
    /// # use degrade_core::key::from_fn;
    /// assert!(KeyedBreakerLayer::builder(BreakerConfig::default(), from_fn(|k: &u8| Some(*k))).build().is_ok());
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
                extractor: self.extractor,
                config,
                classifier,
                clock,
                name,
                max_keys: self.max_keys,
                table: RwLock::new(Table {
                    index: HashMap::new(),
                    slots: Vec::new(),
                    hand: 0,
                    stats: KeyedSnapshot::default(),
                }),
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
/// use degrade_breaker::{BreakerConfig, KeyedBreakerLayer, State};
/// use degrade_core::key::from_fn;
/// use tower::{Layer, Service, ServiceExt};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), degrade_core::BoxError> {
/// let layer = KeyedBreakerLayer::new(BreakerConfig::default(), from_fn(|k: &u8| Some(*k)))?;
/// let mut svc = layer.layer(tower::service_fn(|k: u8| async move { Ok::<_, std::convert::Infallible>(k) }));
/// svc.ready().await?.call(1).await?;
/// svc.ready().await?.call(2).await?;
/// assert_eq!(layer.keys().len(), 2); // one breaker per key
/// layer.handle(&1).unwrap().force_open();
/// assert!(svc.ready().await?.call(1).await.is_err());
/// assert_eq!(svc.ready().await?.call(2).await?, 2); // key 2 is not affected
/// assert_eq!(layer.handle(&2).unwrap().state(), State::Closed);
/// # Ok(()) }
/// ```
pub struct KeyedBreaker<S, F, Key, C: 'static = DefaultClassifier, K = FastClock, M = Errors> {
    inner: S,
    keyed: Arc<Keyed<F, Key, C, K>>,
    _mode: PhantomData<fn() -> M>,
}

impl<S: Clone, F, Key, C: 'static, K, M> Clone for KeyedBreaker<S, F, Key, C, K, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            keyed: Arc::clone(&self.keyed),
            _mode: PhantomData,
        }
    }
}

impl<S: fmt::Debug, F, Key, C: 'static, K, M> fmt::Debug for KeyedBreaker<S, F, Key, C, K, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBreaker")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, F, Key, C: 'static, K, M> KeyedBreaker<S, F, Key, C, K, M> {
    degrade_core::inner_service_accessors!(S);
}

impl<S, F, Key, C: 'static, K, R> Service<R> for KeyedBreaker<S, F, Key, C, K, Errors>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
    F: KeyExtractor<R, Key = Key>,
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
        // Every layer further in shares this call's start instant.
        let _scope = degrade_core::clock::CallScope::enter();
        let shared = self.keyed.breaker(&self.keyed.extractor.extract(&req));
        match shared.admit() {
            Ok(ticket) => {
                ResponseFuture::called(self.inner.call(req), Permit::new(&shared, ticket))
            }
            Err(open) => ResponseFuture::rejected(open),
        }
    }
}

/// The HTTP and gRPC answer modes, as [`Breaker`](crate::Breaker)'s.
#[cfg(feature = "http")]
impl<S, F, Key, C: 'static, K, W, ReqB, ResB> Service<http::Request<ReqB>>
    for KeyedBreaker<S, F, Key, C, K, Responses<W>>
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>>,
    F: KeyExtractor<http::Request<ReqB>, Key = Key>,
    Key: Hash + Eq + Clone + fmt::Debug,
    C: Classifier<http::Response<ResB>, S::Error> + Clone,
    K: Clock,
    Responses<W>: Respond,
    ResB: Default,
{
    type Response = http::Response<ResB>;
    type Error = S::Error;
    type Future = RespondFuture<S::Future, ResB, C, K>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        // Every layer further in shares this call's start instant.
        let _scope = degrade_core::clock::CallScope::enter();
        let shared = self.keyed.breaker(&self.keyed.extractor.extract(&req));
        match shared.admit() {
            Ok(ticket) => RespondFuture::called(self.inner.call(req), Permit::new(&shared, ticket)),
            Err(open) => RespondFuture::rejected(Responses::<W>::respond(&open)),
        }
    }
}
