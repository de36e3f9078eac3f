//! [`Pool`]: the instance set as a discover stream per balancer, the exact drain, and
//! passive ejection of endpoints that fail at the transport.

use crate::instance::{Instance, Key};
use degrade_canary::stats::ArmSnapshot;
use degrade_core::{BoxError, ConfigError, TokioClock};
use futures_util::Stream;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::sync::watch;
use tower::discover::Change;

use super::eject::{Classify, EjectionConfig, HealthCheck, is_transport_failure, tcp_probe};
use super::in_flight::{Endpoint, FailureSink, InFlight};

enum Entry<S> {
    Insert(Key, S),
    Remove(Key),
}

struct Sub {
    cursor: u64,
    waker: Option<Waker>,
}

/// An endpoint the controller put in service: routed to, unless ejected.
struct Member<S> {
    instance: Instance,
    svc: InFlight<S>,
    ejected: Option<Ejected>,
}

/// An ejected endpoint: out of every balancer until its re-probe passes.
struct Ejected {
    since: tokio::time::Instant,
    reprobe: Option<tokio::task::AbortHandle>,
}

impl Drop for Ejected {
    fn drop(&mut self) {
        if let Some(task) = self.reprobe.take() {
            task.abort();
        }
    }
}

struct State<S> {
    endpoints: BTreeMap<Key, Member<S>>,
    log: VecDeque<Entry<InFlight<S>>>,
    base: u64,
    subs: HashMap<u64, Sub>,
    next_sub: u64,
    next_generation: u64,
}

impl<S> State<S> {
    fn end(&self) -> u64 {
        self.base + self.log.len() as u64
    }

    fn push(&mut self, e: Entry<InFlight<S>>) -> u64 {
        self.log.push_back(e);
        for sub in self.subs.values_mut() {
            if let Some(w) = sub.waker.take() {
                w.wake();
            }
        }
        self.compact();
        self.end()
    }

    fn compact(&mut self) {
        let min = self
            .subs
            .values()
            .map(|s| s.cursor)
            .min()
            .unwrap_or(self.end());
        while self.base < min && !self.log.is_empty() {
            self.log.pop_front();
            self.base += 1;
        }
    }
}

struct Shared<S> {
    make: Box<dyn Fn(&Instance) -> S + Send + Sync>,
    state: Mutex<State<S>>,
    polled: watch::Sender<u64>,
    ejection: EjectionConfig,
    classify: Classify,
    /// The re-probe of an ejected endpoint: the one given to the builder, else the one the
    /// rollout controller gives (its driver's), else a TCP connect.
    health: OnceLock<HealthCheck>,
    transport_failures: AtomicU64,
    ejections: AtomicU64,
    returns: AtomicU64,
}

impl<S> Shared<S> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<S>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn probe(
        &self,
        instance: &Instance,
    ) -> futures_util::future::BoxFuture<'static, Result<(), BoxError>> {
        match self.health.get() {
            Some(check) => check(instance),
            None => Box::pin(tcp_probe(instance.clone())),
        }
    }
}

impl<S: Clone> Shared<S> {
    /// Brings an ejected endpoint back (its re-probe passed): `Insert` to every balancer.
    fn readmit(&self, key: &Key, generation: u64) {
        let mut st = self.lock();
        let Some(m) = st.endpoints.get_mut(key) else {
            return;
        };
        if m.svc.endpoint.generation != generation {
            return;
        }
        let Some(mut ejected) = m.ejected.take() else {
            return;
        };
        // This runs on the re-probe task itself: nothing to abort.
        ejected.reprobe = None;
        m.svc.endpoint.streak.store(0, Ordering::Relaxed);
        let svc = m.svc.clone();
        // Counted before the balancers can see it.
        self.returns.fetch_add(1, Ordering::Relaxed);
        st.push(Entry::Insert(key.clone(), svc));
        drop(st);
        tracing::info!(endpoint = %key, ejected_for = ?ejected.since.elapsed(), "endpoint passed its health check: back in service");
    }
}

impl<S: Clone + Send + 'static> FailureSink for Shared<S> {
    fn is_transport_failure(&self, error: &(dyn Error + 'static)) -> bool {
        self.ejection.enabled && (self.classify)(error)
    }

    fn transport_failure(
        self: Arc<Self>,
        endpoint: &Endpoint,
        streak: u32,
        error: &(dyn Error + 'static),
    ) {
        self.transport_failures.fetch_add(1, Ordering::Relaxed);
        if streak < self.ejection.consecutive_failures {
            return;
        }
        let key = &endpoint.key;
        let mut st = self.lock();
        let members = st.endpoints.len();
        let ejected = st
            .endpoints
            .values()
            .filter(|m| m.ejected.is_some())
            .count();
        let Some(m) = st.endpoints.get_mut(key) else {
            return; // drained meanwhile
        };
        if m.svc.endpoint.generation != endpoint.generation || m.ejected.is_some() {
            return;
        }
        if ejected >= self.ejection.max_ejected(members) {
            tracing::warn!(endpoint = %key, ejected, members, "transport failure, but no ejection: at max_ejected_percent");
            return;
        }
        let instance = m.instance.clone();
        let mut e = Ejected {
            since: tokio::time::Instant::now(),
            reprobe: None,
        };
        // Without a runtime (a call driven by another executor) the endpoint stays out until
        // the controller drains and re-inserts it.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let task = rt.spawn(reprobe(
                Arc::downgrade(&self),
                key.clone(),
                endpoint.generation,
                instance,
                self.ejection.clone(),
            ));
            e.reprobe = Some(task.abort_handle());
        }
        m.ejected = Some(e);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        st.push(Entry::Remove(key.clone()));
        drop(st);
        tracing::warn!(endpoint = %key, streak, error = %error, "endpoint ejected: its calls fail at the transport");
    }
}

/// Checks an ejected endpoint with backoff until it passes, then brings it back.
async fn reprobe<S: Clone>(
    shared: Weak<Shared<S>>,
    key: Key,
    generation: u64,
    instance: Instance,
    cfg: EjectionConfig,
) {
    let mut delay = cfg.reprobe_interval;
    loop {
        tokio::time::sleep(delay).await;
        let Some(check) = shared.upgrade().map(|s| s.probe(&instance)) else {
            return;
        };
        let passed = matches!(
            tokio::time::timeout(cfg.probe_timeout, check).await,
            Ok(Ok(()))
        );
        let Some(pool) = shared.upgrade() else {
            return;
        };
        if passed {
            pool.readmit(&key, generation);
            return;
        }
        tracing::debug!(endpoint = %key, next_in = ?delay, "ejected endpoint still failing its health check");
        delay = delay.saturating_mul(2).min(cfg.reprobe_max);
    }
}

/// The set of instances in service, shared by the rollout controller (which inserts and
/// drains) and the balancers (which subscribe with [`discover`](Pool::discover)). Clones
/// share the set.
///
/// ```
/// use degrade_rollout::{Instance, discover::Pool};
/// use futures_util::StreamExt;
/// use tower::discover::Change;
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let pool = Pool::new(|i: &Instance| i.address.port());
/// let a = Instance::new("a", "127.0.0.1:8001".parse().unwrap(), "v1");
/// pool.insert(&a);
/// let mut stream = pool.discover();
/// match stream.next().await.unwrap().unwrap() {
///     Change::Insert(key, svc) => assert_eq!((key.id.as_str(), *svc.get_ref()), ("a", 8001)),
///     Change::Remove(_) => unreachable!(),
/// }
/// # }
/// ```
pub struct Pool<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for Pool<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<S> fmt::Debug for Pool<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        let (ejected, routed): (Vec<&Member<S>>, Vec<&Member<S>>) =
            st.endpoints.values().partition(|m| m.ejected.is_some());
        let keys = |v: Vec<&Member<S>>| {
            v.into_iter()
                .map(|m| m.svc.endpoint.key.clone())
                .collect::<Vec<_>>()
        };
        f.debug_struct("Pool")
            .field("endpoints", &keys(routed))
            .field("ejected", &keys(ejected))
            .field("subscribers", &st.subs.len())
            .finish()
    }
}

/// What a drain observed.
///
/// ```
/// use degrade_rollout::discover::DrainReport;
/// let r = DrainReport::default();
/// assert!(r.clean());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Balancers that had not seen the removal when the timeout struck.
    pub unacknowledged: usize,
    /// Requests still in flight when the timeout struck.
    pub in_flight: usize,
    /// Time the drain took.
    pub waited: Duration,
}

impl DrainReport {
    /// Every balancer saw the removal and no request was left in flight.
    ///
    /// ```
    /// # use degrade_rollout::discover::DrainReport;
    /// assert!(DrainReport::default().clean());
    /// ```
    pub fn clean(&self) -> bool {
        self.unacknowledged == 0 && self.in_flight == 0
    }
}

impl<S: Clone + Send + 'static> Pool<S> {
    /// A pool making each endpoint's client service with `make`, with passive ejection on
    /// its defaults ([`EjectionConfig::default`], [`is_transport_failure`], re-probes through
    /// the rollout's driver or a TCP connect). [`Pool::builder`] sets them.
    ///
    /// ```
    /// # use degrade_rollout::{Instance, discover::Pool};
    /// let pool = Pool::new(|i: &Instance| i.address);
    /// assert!(pool.keys().is_empty());
    /// ```
    pub fn new(make: impl Fn(&Instance) -> S + Send + Sync + 'static) -> Self {
        Self::from_parts(
            Box::new(make),
            EjectionConfig::default(),
            Arc::new(is_transport_failure),
            None,
        )
    }

    /// A builder of a pool making each endpoint's client service with `make`.
    ///
    /// ```
    /// use degrade_rollout::{Instance, discover::{EjectionConfig, Pool}};
    /// use std::time::Duration;
    ///
    /// let pool = Pool::builder(|i: &Instance| i.address)
    ///     .ejection(EjectionConfig { reprobe_interval: Duration::from_millis(200), ..Default::default() })
    ///     // Timeouts count too, for this client (they do not by default).
    ///     .transport_failure(|e| {
    ///         degrade_rollout::discover::is_transport_failure(e)
    ///             || e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
    ///     })
    ///     .health(|i: &Instance| {
    ///         let address = i.address;
    ///         async move { tokio::net::TcpStream::connect(address).await.map(drop).map_err(Into::into) }
    ///     })
    ///     .build()
    ///     .unwrap();
    /// pool.insert(&Instance::new("a", "127.0.0.1:8001".parse().unwrap(), "v1"));
    /// assert_eq!(pool.keys().len(), 1);
    /// ```
    pub fn builder(make: impl Fn(&Instance) -> S + Send + Sync + 'static) -> PoolBuilder<S> {
        PoolBuilder {
            make: Box::new(make),
            ejection: EjectionConfig::default(),
            classify: Arc::new(is_transport_failure),
            health: None,
        }
    }

    fn from_parts(
        make: Box<dyn Fn(&Instance) -> S + Send + Sync>,
        ejection: EjectionConfig,
        classify: Classify,
        health: Option<HealthCheck>,
    ) -> Self {
        let (polled, _) = watch::channel(0);
        let cell = OnceLock::new();
        if let Some(h) = health {
            let _ = cell.set(h);
        }
        Self {
            shared: Arc::new(Shared {
                make,
                state: Mutex::new(State {
                    endpoints: BTreeMap::new(),
                    log: VecDeque::new(),
                    base: 0,
                    subs: HashMap::new(),
                    next_sub: 0,
                    next_generation: 0,
                }),
                polled,
                ejection,
                classify,
                health: cell,
                transport_failures: AtomicU64::new(0),
                ejections: AtomicU64::new(0),
                returns: AtomicU64::new(0),
            }),
        }
    }

    /// Re-probes ejected endpoints with `driver`'s health check, unless the builder set a
    /// check (the rollout controller calls it with its driver).
    pub(crate) fn health_fallback<D: crate::Driver>(&self, driver: Arc<D>) {
        let check: HealthCheck = Arc::new(move |i: &Instance| {
            let (driver, i) = (driver.clone(), i.clone());
            Box::pin(async move { driver.health(&i).await })
        });
        let _ = self.shared.health.set(check);
    }

    /// Puts an instance in service (no-op when it already is).
    ///
    /// ```
    /// # use degrade_rollout::{Instance, discover::Pool};
    /// let pool = Pool::new(|i: &Instance| i.address);
    /// let a = Instance::new("a", "127.0.0.1:1".parse().unwrap(), "v1");
    /// pool.insert(&a);
    /// pool.insert(&a);
    /// assert_eq!(pool.keys(), vec![a.key()]);
    /// ```
    pub fn insert(&self, instance: &Instance) {
        let key = instance.key();
        let mut st = self.lock();
        if let Some(m) = st.endpoints.get_mut(&key) {
            // Already a member (perhaps ejected: it stays out until its re-probe passes).
            m.instance.clone_from(instance);
            return;
        }
        let generation = st.next_generation;
        st.next_generation += 1;
        let sink: Weak<dyn FailureSink> = {
            let weak: Weak<Shared<S>> = Arc::downgrade(&self.shared);
            weak
        };
        let svc = InFlight {
            inner: (self.shared.make)(instance),
            endpoint: Arc::new(Endpoint::new(key.clone(), generation, sink)),
            clock: TokioClock,
        };
        st.endpoints.insert(
            key.clone(),
            Member {
                instance: instance.clone(),
                svc: svc.clone(),
                ejected: None,
            },
        );
        st.push(Entry::Insert(key.clone(), svc));
        tracing::debug!(endpoint = %key, "endpoint in service");
    }

    /// Takes an endpoint out of service, then waits (at most `timeout`) until every
    /// subscribed balancer has seen the removal and its requests in flight have finished.
    /// See the [module documentation](crate::discover).
    ///
    /// ```
    /// # use degrade_rollout::{Instance, discover::Pool};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let pool = Pool::new(|i: &Instance| i.address);
    /// let a = Instance::new("a", "127.0.0.1:1".parse().unwrap(), "v1");
    /// pool.insert(&a);
    /// let report = pool.drain(&a.key(), std::time::Duration::from_secs(1)).await;
    /// assert!(report.clean());
    /// assert!(pool.keys().is_empty());
    /// # }
    /// ```
    pub async fn drain(&self, key: &Key, timeout: Duration) -> DrainReport {
        let start = tokio::time::Instant::now();
        let deadline = crate::deadline::after(start, timeout);
        let (seq, counters) = {
            let mut st = self.lock();
            match st.endpoints.remove(key) {
                // Ejected: the balancers were told already; wait for them to have seen it.
                Some(m) if m.ejected.is_some() => (st.end(), Some(m.svc.endpoint.clone())),
                Some(m) => {
                    let seq = st.push(Entry::Remove(key.clone()));
                    (seq, Some(m.svc.endpoint.clone()))
                }
                None => (st.end(), None),
            }
        };
        let mut polled = self.shared.polled.subscribe();
        loop {
            let idle = counters.as_ref().map(|c| c.idle.notified());
            let mut idle = std::pin::pin!(idle);
            if let Some(n) = idle.as_mut().as_pin_mut() {
                n.enable();
            }
            let unacknowledged = self.lock().subs.values().filter(|s| s.cursor < seq).count();
            let in_flight = counters
                .as_ref()
                .map_or(0, |c| c.in_flight.load(Ordering::Acquire));
            let report = DrainReport {
                unacknowledged,
                in_flight,
                waited: start.elapsed(),
            };
            if report.clean() || tokio::time::Instant::now() >= deadline {
                if !report.clean() {
                    tracing::warn!(endpoint = %key, unacknowledged, in_flight, "drain timed out");
                }
                return report;
            }
            let idle_fut = async {
                match idle.as_mut().as_pin_mut() {
                    Some(n) => n.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = polled.changed() => {}
                _ = idle_fut => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// A new subscriber: a discover stream that first inserts every endpoint in service,
    /// then follows the changes.
    ///
    /// ```
    /// # use degrade_rollout::{Instance, discover::Pool};
    /// let pool = Pool::new(|i: &Instance| i.address);
    /// let stream = pool.discover();
    /// assert_eq!(pool.subscribers(), 1);
    /// drop(stream);
    /// assert_eq!(pool.subscribers(), 0);
    /// ```
    pub fn discover(&self) -> PoolDiscover<S> {
        let mut st = self.lock();
        let id = st.next_sub;
        st.next_sub += 1;
        let cursor = st.end();
        st.subs.insert(
            id,
            Sub {
                cursor,
                waker: None,
            },
        );
        let initial = st
            .endpoints
            .iter()
            .filter(|(_, m)| m.ejected.is_none())
            .map(|(k, m)| Change::Insert(k.clone(), m.svc.clone()))
            .collect();
        PoolDiscover {
            pool: self.clone(),
            id,
            initial,
        }
    }

    /// Keys in service: routed to by the balancers (ejected endpoints are not).
    ///
    /// ```
    /// # use degrade_rollout::{Instance, discover::Pool};
    /// assert!(Pool::new(|i: &Instance| i.address).keys().is_empty());
    /// ```
    pub fn keys(&self) -> Vec<Key> {
        self.lock()
            .endpoints
            .iter()
            .filter(|(_, m)| m.ejected.is_none())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The instances in service (routed to; ejected ones are not).
    ///
    /// ```
    /// # use degrade_rollout::{Instance, discover::Pool};
    /// assert!(Pool::new(|i: &Instance| i.address).instances().is_empty());
    /// ```
    pub fn instances(&self) -> Vec<Instance> {
        self.lock()
            .endpoints
            .values()
            .filter(|m| m.ejected.is_none())
            .map(|m| m.instance.clone())
            .collect()
    }

    /// A client service of an endpoint put in service, ejected or not (sharing its counters).
    ///
    /// ```
    /// # use degrade_rollout::{Instance, discover::Pool};
    /// let pool = Pool::new(|i: &Instance| i.address);
    /// assert!(pool.service(&Instance::new("a", "127.0.0.1:1".parse().unwrap(), "v1").key()).is_none());
    /// ```
    pub fn service(&self, key: &Key) -> Option<InFlight<S>> {
        self.lock().endpoints.get(key).map(|m| m.svc.clone())
    }

    /// Requests in flight at an endpoint put in service (ejected or not).
    ///
    /// ```
    /// # use degrade_rollout::{Instance, discover::Pool};
    /// let pool = Pool::new(|i: &Instance| i.address);
    /// # let a = Instance::new("a", "127.0.0.1:1".parse().unwrap(), "v1");
    /// pool.insert(&a);
    /// assert_eq!(pool.in_flight(&a.key()), Some(0));
    /// ```
    pub fn in_flight(&self, key: &Key) -> Option<usize> {
        self.lock()
            .endpoints
            .get(key)
            .map(|m| m.svc.endpoint.in_flight.load(Ordering::Acquire))
    }

    /// Cumulative outcomes of the endpoints in `keys` (those put in service, ejected or not:
    /// the failures that ejected one count), summed, as one arm of a
    /// [`CanarySnapshot`](degrade_canary::stats::CanarySnapshot).
    ///
    /// ```
    /// # use degrade_rollout::{Instance, discover::Pool};
    /// let pool = Pool::new(|i: &Instance| i.address);
    /// assert_eq!(pool.outcomes(&[]).samples(), 0);
    /// ```
    pub fn outcomes(&self, keys: &[Key]) -> ArmSnapshot {
        let st = self.lock();
        let mut total = ArmSnapshot::default();
        for k in keys {
            if let Some(m) = st.endpoints.get(k) {
                let a = m.svc.endpoint.arm();
                total.successes += a.successes;
                total.failures += a.failures;
                total.latency.merge(&a.latency);
            }
        }
        total
    }

    /// Live subscribers.
    ///
    /// ```
    /// # use degrade_rollout::{Instance, discover::Pool};
    /// assert_eq!(Pool::new(|i: &Instance| i.address).subscribers(), 0);
    /// ```
    pub fn subscribers(&self) -> usize {
        self.lock().subs.len()
    }

    /// The pool's state and its passive-ejection counters.
    ///
    /// ```
    /// # use degrade_rollout::{Instance, discover::Pool};
    /// let pool = Pool::new(|i: &Instance| i.address);
    /// pool.insert(&Instance::new("a", "127.0.0.1:1".parse().unwrap(), "v1"));
    /// let s = pool.snapshot();
    /// assert_eq!((s.endpoints, s.ejected.len(), s.ejections, s.returns), (1, 0, 0, 0));
    /// ```
    pub fn snapshot(&self) -> PoolSnapshot {
        let st = self.lock();
        let sh = &self.shared;
        PoolSnapshot {
            endpoints: st.endpoints.len(),
            ejected: st
                .endpoints
                .iter()
                .filter(|(_, m)| m.ejected.is_some())
                .map(|(k, _)| k.clone())
                .collect(),
            subscribers: st.subs.len(),
            transport_failures: sh.transport_failures.load(Ordering::Relaxed),
            ejections: sh.ejections.load(Ordering::Relaxed),
            returns: sh.returns.load(Ordering::Relaxed),
        }
    }
}

/// A [`Pool`]'s state and passive-ejection counters ([`Pool::snapshot`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolSnapshot {
    /// Endpoints put in service and not drained (routed to, or ejected).
    pub endpoints: usize,
    /// Endpoints ejected now (out of every balancer until their re-probe passes).
    pub ejected: Vec<Key>,
    /// Live subscribers (balancers).
    pub subscribers: usize,
    /// Calls that failed at the transport.
    pub transport_failures: u64,
    /// Ejections so far.
    pub ejections: u64,
    /// Ejected endpoints that passed a re-probe and came back (the others are still out, or
    /// were drained while out).
    pub returns: u64,
}

/// Builds a [`Pool`]: passive ejection's settings, its transport-failure classifier and the
/// re-probe of ejected endpoints.
pub struct PoolBuilder<S> {
    make: Box<dyn Fn(&Instance) -> S + Send + Sync>,
    ejection: EjectionConfig,
    classify: Classify,
    health: Option<HealthCheck>,
}

impl<S> fmt::Debug for PoolBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("ejection", &self.ejection)
            .field("health", &self.health.is_some())
            .finish_non_exhaustive()
    }
}

impl<S: Clone + Send + 'static> PoolBuilder<S> {
    /// Passive ejection's settings (default [`EjectionConfig::default`]).
    #[must_use]
    pub fn ejection(mut self, config: EjectionConfig) -> Self {
        self.ejection = config;
        self
    }

    /// Which errors of an endpoint's client service are transport failures (default
    /// [`is_transport_failure`]: refused, reset and closed connections, through the error's
    /// source chain).
    ///
    /// ```
    /// use degrade_rollout::{Instance, discover::Pool};
    /// use degrade_core::BoxError;
    /// use tower::{Service, ServiceExt, service_fn};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // A client whose errors are strings: "unreachable" is the transport failing.
    /// let pool = Pool::builder(|_: &Instance| {
    ///     service_fn(|fail: &'static str| async move { Err::<(), BoxError>(fail.into()) })
    /// })
    /// .transport_failure(|e| e.to_string().starts_with("unreachable"))
    /// .build()
    /// .unwrap();
    /// let a = Instance::new("a", "127.0.0.1:8001".parse().unwrap(), "v1");
    /// pool.insert(&a);
    /// let mut svc = pool.service(&a.key()).unwrap();
    /// let _ = svc.ready().await.unwrap().call("bad request").await;
    /// assert_eq!(pool.snapshot().ejections, 0); // an answer
    /// let _ = svc.ready().await.unwrap().call("unreachable: no route").await;
    /// assert_eq!(pool.snapshot().ejections, 1);
    /// # }
    /// ```
    #[must_use]
    pub fn transport_failure(
        mut self,
        classify: impl Fn(&(dyn Error + 'static)) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.classify = Arc::new(classify);
        self
    }

    /// The check an ejected endpoint must pass to come back. Default: the rollout
    /// controller's driver's [`health`](crate::Driver::health) once a controller uses the
    /// pool, a TCP connect to the instance's address before.
    #[must_use]
    pub fn health<F, Fut>(mut self, check: F) -> Self
    where
        F: Fn(&Instance) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.health = Some(Arc::new(move |i: &Instance| Box::pin(check(i))));
        self
    }

    /// Validates and makes the pool.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the bad field of the ejection settings (within `ejection`).
    ///
    /// ```
    /// # use degrade_rollout::{Instance, discover::{EjectionConfig, Pool}};
    /// let bad = EjectionConfig { consecutive_failures: 0, ..Default::default() };
    /// let err = Pool::builder(|i: &Instance| i.address).ejection(bad).build().unwrap_err();
    /// assert_eq!(err.field(), "ejection.consecutive_failures");
    /// ```
    pub fn build(self) -> Result<Pool<S>, ConfigError> {
        self.ejection.validate().map_err(|e| e.within("ejection"))?;
        Ok(Pool::from_parts(
            self.make,
            self.ejection,
            self.classify,
            self.health,
        ))
    }
}

impl<S> Pool<S> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<S>> {
        self.shared.lock()
    }
}

/// A balancer's view of a [`Pool`]: a `tower::discover::Discover` stream of
/// `Change<Key, InFlight<S>>`.
///
/// ```
/// use degrade_rollout::{Instance, discover::Pool};
/// use tower::balance::p2c::Balance;
/// use tower::{Service, ServiceExt, service_fn};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let pool = Pool::new(|i: &Instance| {
///     let port = i.address.port();
///     service_fn(move |_: ()| async move { Ok::<_, std::convert::Infallible>(port) })
/// });
/// pool.insert(&Instance::new("a", "127.0.0.1:8001".parse().unwrap(), "v1"));
/// let mut balancer = Balance::new(pool.discover());
/// assert_eq!(balancer.ready().await.unwrap().call(()).await.unwrap(), 8001);
/// # }
/// ```
pub struct PoolDiscover<S> {
    pool: Pool<S>,
    id: u64,
    initial: VecDeque<Change<Key, InFlight<S>>>,
}

impl<S> fmt::Debug for PoolDiscover<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolDiscover")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<S> Unpin for PoolDiscover<S> {}

impl<S: Clone> Stream for PoolDiscover<S> {
    type Item = Result<Change<Key, InFlight<S>>, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(c) = this.initial.pop_front() {
            return Poll::Ready(Some(Ok(c)));
        }
        let mut st = this.pool.lock();
        let end = st.end();
        let base = st.base;
        let Some(sub) = st.subs.get_mut(&this.id) else {
            return Poll::Ready(None);
        };
        if sub.cursor >= end {
            sub.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let index = (sub.cursor - base) as usize;
        sub.cursor += 1;
        let change = match &st.log[index] {
            Entry::Insert(k, s) => Change::Insert(k.clone(), s.clone()),
            Entry::Remove(k) => Change::Remove(k.clone()),
        };
        st.compact();
        drop(st);
        this.pool.shared.polled.send_modify(|n| *n += 1);
        Poll::Ready(Some(Ok(change)))
    }
}

impl<S> Drop for PoolDiscover<S> {
    fn drop(&mut self) {
        let mut st = self.pool.lock();
        st.subs.remove(&self.id);
        let min = st.subs.values().map(|s| s.cursor).min().unwrap_or(st.end());
        while st.base < min && !st.log.is_empty() {
            st.log.pop_front();
            st.base += 1;
        }
        drop(st);
        self.pool.shared.polled.send_modify(|n| *n += 1);
    }
}
