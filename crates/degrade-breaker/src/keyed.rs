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
//! (one relaxed load; a store only if the mark was clear), and a hand sweeps the slots to find
//! a victim. A marked slot gets a second chance (the hand clears its mark and moves on); the
//! first closed, idle, unmarked breaker is evicted. The hand passes at most
//! [`MAX_EVICTION_SKIPS`] breakers that cannot be evicted before it gives up and hands the new
//! key the overflow breaker, and it resumes from there next time.
//!
//! Admitting a new key at the cap therefore costs O(1) amortised, whatever keys arrive: every
//! mark the hand clears was set by an earlier lookup, and every other visit is bounded by the
//! skip budget. A stream of attacker-chosen keys cannot turn an insertion into a scan of the
//! whole map. [`KeyedSnapshot`] counts the slots the hand visited.
//!
//! # No lock for a known key
//!
//! A call for a key already in the map takes no lock, allocates nothing and writes no shared
//! reference count: the key is found in a concurrent hash map with lock-free reads
//! ([`papaya`]; its memory is reclaimed by epochs, so a lookup writes only its own thread's
//! reservation word), its mark is set if clear, and the key's breaker admits the call before
//! the lookup ends. Only a new key takes a mutex (the slots in CLOCK order, the hand, the
//! counters), to insert or evict; so do the cold accessors ([`handle`](KeyedBreakerLayer::handle),
//! [`len`](KeyedBreakerLayer::len), [`keys`](KeyedBreakerLayer::keys),
//! [`snapshot`](KeyedBreakerLayer::snapshot)) and each call of a key left on the overflow
//! breaker (it looks for room again every time).
//!
//! **A call racing an eviction.** A call whose lookup found its key just before the hand
//! evicted that key's breaker (closed, idle, unmarked, no handle) is admitted by the evicted
//! breaker and its outcome is recorded there, exactly once: lost to the key's next breaker, as
//! are the calls the evicted window had counted. It never reaches another key's breaker or a
//! recycled one: an evicted breaker is released only after every lookup that could have
//! found it has ended, and a lookup ends after its call is counted as started, so the
//! breaker's state is parked until that call ends ([`degrade_core::recycle`]). The key's next
//! call finds no entry and inserts a fresh breaker. A lookup may also re-mark a slot the hand
//! has just cleared: one more second chance.
//!
//! **Memory.** Evicted breakers are released on the insertion path once the map has reclaimed
//! its node, which it does in batches (32 retired nodes per thread, or one per core if more):
//! a few dozen evicted breakers per evicting thread may wait beyond `max_keys`. Reclaiming a
//! batch (the map's nodes and keys) may fall to any thread that ends a lookup, a call
//! included: a deallocation now and then while keys are being evicted, never while every call
//! is for a known key.
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
use crate::error::CircuitOpen;
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
use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// The most breakers that cannot be evicted (open, half-open, manually set, busy) the clock
/// hand passes while looking for a victim for one new key; past it the key gets the overflow
/// breaker. It bounds the work a new key can cause at the cap to a constant.
pub const MAX_EVICTION_SKIPS: u32 = 64;

/// One key's breaker, shared by the lock-free map (what calls read) and the ring (what the
/// hand sweeps).
struct Entry<C: 'static, K> {
    /// Held only by this entry, and by the key's handles (which the hand counts).
    shared: Arc<Shared<C, K>>,
    /// Set by lookups, cleared by the clock hand: a second chance before eviction.
    referenced: AtomicBool,
}

impl<C: 'static, K: Clock> Entry<C, K> {
    /// The call path: mark the slot (a store only if the mark was clear), then admit.
    #[inline]
    fn admit(&self) -> Result<Permit<C, K>, CircuitOpen> {
        if !self.referenced.load(Ordering::Relaxed) {
            self.referenced.store(true, Ordering::Relaxed);
        }
        admit(&self.shared)
    }
}

#[inline]
fn admit<C: 'static, K: Clock>(shared: &Shared<C, K>) -> Result<Permit<C, K>, CircuitOpen> {
    shared.admit().map(|ticket| Permit::new(shared, ticket))
}

/// What only new keys and readers of the counters touch, behind the mutex: the entries in
/// CLOCK order, the hand, the counters, and the evicted entries the map may still hand out.
struct Ring<Key, C: 'static, K> {
    slots: Vec<(Key, Arc<Entry<C, K>>)>,
    hand: usize,
    stats: KeyedSnapshot,
    /// Evicted entries whose map node is not reclaimed yet (a lookup may still hold it). Each
    /// is dropped here, on the insertion path, once the map's reference is gone — never by a
    /// call, whose lookup may be the one that frees the map's node.
    evicted: Vec<Arc<Entry<C, K>>>,
}

impl<Key, C: 'static, K: Clock> Ring<Key, C, K> {
    /// Moves the hand until it finds a slot to evict, or `None` after `MAX_EVICTION_SKIPS`
    /// breakers that cannot be evicted or two revolutions. After one revolution every
    /// evictable slot has been unmarked once; a lookup may mark it again meanwhile (it is in
    /// use: a further second chance), so the second revolution finds a victim unless every
    /// evictable breaker is being used.
    fn victim(&mut self) -> Option<usize> {
        let len = self.slots.len();
        let mut skips = 0;
        for _ in 0..len.saturating_mul(2) {
            let i = self.hand;
            self.hand = if i + 1 == len { 0 } else { i + 1 };
            self.stats.scanned += 1;
            let entry = &self.slots[i].1;
            let marked = entry.referenced.swap(false, Ordering::Relaxed);
            // Held only by its entry (no handle), closed in normal mode, no call in flight.
            // Futures hold no `Arc` (they reach the breaker through a `&'static`): a call in
            // flight shows in the counts, read only for an unmarked slot (each such read
            // evicts or counts a skip, so a search reads at most `MAX_EVICTION_SKIPS + 1`).
            let evictable = Arc::strong_count(&entry.shared) == 1
                && entry.shared.is_closed()
                && (marked || entry.shared.in_flight() == 0);
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

    /// Drops the evicted entries that no lookup can reach any more (the map has reclaimed its
    /// node: this list holds the last reference). Their breakers go back to the pool here.
    fn release_evicted(&mut self) {
        self.evicted.retain(|entry| Arc::strong_count(entry) > 1);
    }
}

struct Keyed<F, Key, C: 'static, K> {
    extractor: F,
    config: BreakerConfig,
    classifier: C,
    clock: K,
    name: Arc<str>,
    max_keys: usize,
    /// Keyed by `Option<Key>`: requests without a key share the `None` breaker. Read with no
    /// lock; written only with `ring` locked, so the two always hold the same entries (between
    /// two lock holders).
    map: papaya::HashMap<Option<Key>, Arc<Entry<C, K>>>,
    ring: Mutex<Ring<Option<Key>, C, K>>,
    overflow: Arc<Shared<C, K>>,
}

impl<F, Key, C: 'static, K> Keyed<F, Key, C, K>
where
    Key: Hash + Eq + Clone + fmt::Debug,
    C: Clone,
    K: Clock,
{
    /// Admits a call for `key`: with no lock for a known key (see the module docs).
    #[inline]
    fn admit(&self, key: &Option<Key>) -> Result<Permit<C, K>, CircuitOpen> {
        {
            let guard = self.map.guard();
            if let Some(entry) = self.map.get(key, &guard) {
                // Admitted under the guard: the entry cannot be released before the call is
                // counted as started, so a racing eviction parks its breaker until it ends.
                return entry.admit();
            }
        }
        self.admit_new(key)
    }

    #[cold]
    #[inline(never)]
    fn admit_new(&self, key: &Option<Key>) -> Result<Permit<C, K>, CircuitOpen> {
        let mut ring = lock(&self.ring);
        // A new entry starts unmarked: only later lookups give it a second chance.
        match self.insert(&mut ring, key) {
            Some(entry) => admit(&entry.shared),
            None => admit(&self.overflow),
        }
    }

    /// The key's entry, made if there is room (or a victim); `None` sends the call to the
    /// overflow breaker. Called with the ring locked: the map is written only here.
    fn insert(
        &self,
        ring: &mut Ring<Option<Key>, C, K>,
        key: &Option<Key>,
    ) -> Option<Arc<Entry<C, K>>> {
        let guard = self.map.guard();
        if let Some(entry) = self.map.get(key, &guard) {
            return Some(Arc::clone(entry));
        }
        ring.release_evicted();
        let at = if ring.slots.len() < self.max_keys {
            None
        } else {
            match ring.victim() {
                Some(i) => Some(i),
                None => {
                    ring.stats.overflowed += 1;
                    return None;
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
            ring.stats.overflowed += 1;
            return None;
        };
        let entry = Arc::new(Entry {
            shared: Arc::new(shared),
            referenced: AtomicBool::new(false),
        });
        match at {
            Some(i) => {
                let (old_key, old) =
                    std::mem::replace(&mut ring.slots[i], (key.clone(), Arc::clone(&entry)));
                self.map.remove(&old_key, &guard);
                ring.evicted.push(old);
                ring.stats.evicted += 1;
            }
            None => ring.slots.push((key.clone(), Arc::clone(&entry))),
        }
        self.map.insert(key.clone(), Arc::clone(&entry), &guard);
        ring.stats.inserted += 1;
        Some(entry)
    }
}

impl<F, Key: Hash + Eq, C: 'static, K: Clock> Keyed<F, Key, C, K> {
    /// A handle on `key`'s breaker, taken with the ring locked so that the hand, which
    /// evicts only breakers without a handle, sees it.
    fn handle(&self, key: &Option<Key>) -> Option<BreakerHandle<C, K>> {
        let _ring = lock(&self.ring);
        let guard = self.map.guard();
        self.map
            .get(key, &guard)
            .map(|entry| BreakerHandle::from_shared(Arc::clone(&entry.shared)))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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
        self.keyed.handle(&Some(key.clone()))
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
        lock(&self.keyed.ring).slots.len()
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
        let ring = lock(&self.keyed.ring);
        KeyedSnapshot {
            keys: ring.slots.len(),
            ..ring.stats
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
        let ring = lock(&self.keyed.ring);
        ring.slots
            .iter()
            .filter_map(|(key, _)| key.clone())
            .collect()
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
        self.keyed.handle(&None)
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
                map: papaya::HashMap::new(),
                ring: Mutex::new(Ring {
                    slots: Vec::new(),
                    hand: 0,
                    stats: KeyedSnapshot::default(),
                    evicted: Vec::new(),
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
        match self.keyed.admit(&self.keyed.extractor.extract(&req)) {
            Ok(permit) => ResponseFuture::called(self.inner.call(req), permit),
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
        match self.keyed.admit(&self.keyed.extractor.extract(&req)) {
            Ok(permit) => RespondFuture::called(self.inner.call(req), permit),
            Err(open) => RespondFuture::rejected(Responses::<W>::respond(&open)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use degrade_core::key::from_fn;
    use degrade_core::{ManualClock, Outcome};
    use papaya::Guard;

    /// The race of the module docs, played step by step on one thread: a lookup finds key 1,
    /// a new key evicts key 1's breaker, and the call then goes on under the entry it found.
    /// It is counted once, by the evicted breaker, and that breaker's state is handed to no
    /// other breaker while a call it admitted is in flight.
    #[test]
    fn a_call_racing_an_eviction_is_counted_once_by_the_evicted_breaker() {
        let clock = ManualClock::new();
        let layer =
            KeyedBreakerLayer::builder(BreakerConfig::default(), from_fn(|k: &u32| Some(*k)))
                .max_keys(1)
                .clock(clock.clone())
                .build()
                .unwrap();
        let keyed = &layer.keyed;
        keyed.admit(&Some(1)).unwrap().record(Outcome::Success);

        let guard = keyed.map.guard();
        let found = keyed.map.get(&Some(1), &guard).unwrap();
        let evicted = found.shared.core.get();
        // Key 2 evicts key 1 (closed, idle; its mark cleared on the hand's first pass).
        keyed.admit(&Some(2)).unwrap().record(Outcome::Success);
        assert_eq!(layer.snapshot().evicted, 1);
        assert_eq!(layer.keys(), [2]);
        // The lookup goes on: two calls under the entry it found, then it ends.
        let first = found.admit().unwrap();
        let second = found.admit().unwrap();
        drop(guard);
        // The map's node of key 1 is reclaimed (no lookup is active)...
        let flush = keyed.map.guard();
        flush.flush();
        drop(flush);
        // ...so the next new key releases the evicted breaker, whose state is parked (calls
        // in flight), not reused by key 3's breaker.
        keyed.admit(&Some(3)).unwrap().record(Outcome::Success);
        {
            // Key 1's entry released on the insertion path; key 2's (just evicted) waits.
            let ring = lock(&keyed.ring);
            assert_eq!(ring.evicted.len(), 1);
            assert!(!std::ptr::eq(ring.evicted[0].shared.core.get(), evicted));
        }
        let third = layer.handle(&3).unwrap();
        assert!(!std::ptr::eq(third.shared.core.get(), evicted));
        first.record(Outcome::Failure);
        // Still one call in flight: the evicted breaker's counts cannot have been reset.
        let s = evicted.snapshot(&clock);
        assert_eq!((s.admitted, s.successes, s.failures), (3, 1, 1));
        assert_eq!(evicted.in_flight(), 1);
        drop(second);
        assert_eq!(
            third.snapshot().admitted,
            1,
            "key 3's breaker saw only its own call"
        );
    }
}
