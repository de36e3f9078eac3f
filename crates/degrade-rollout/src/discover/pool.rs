//! [`Pool`]: the instance set as a discover stream per balancer, and the exact drain.

use crate::instance::{Instance, Key};
use degrade_canary::stats::{ArmSnapshot, Histogram};
use degrade_core::TokioClock;
use futures_util::Stream;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::sync::watch;
use tower::discover::Change;

use super::in_flight::{Counters, InFlight};

enum Entry<S> {
    Insert(Key, S),
    Remove(Key),
}

struct Sub {
    cursor: u64,
    waker: Option<Waker>,
}

struct State<S> {
    endpoints: BTreeMap<Key, (Instance, InFlight<S>)>,
    log: VecDeque<Entry<InFlight<S>>>,
    base: u64,
    subs: HashMap<u64, Sub>,
    next_sub: u64,
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
        f.debug_struct("Pool")
            .field("endpoints", &st.endpoints.keys().collect::<Vec<_>>())
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
    /// A pool making each endpoint's client service with `make`.
    ///
    /// ```
    /// # use degrade_rollout::{Instance, discover::Pool};
    /// let pool = Pool::new(|i: &Instance| i.address);
    /// assert!(pool.keys().is_empty());
    /// ```
    pub fn new(make: impl Fn(&Instance) -> S + Send + Sync + 'static) -> Self {
        let (polled, _) = watch::channel(0);
        Self {
            shared: Arc::new(Shared {
                make: Box::new(make),
                state: Mutex::new(State {
                    endpoints: BTreeMap::new(),
                    log: VecDeque::new(),
                    base: 0,
                    subs: HashMap::new(),
                    next_sub: 0,
                }),
                polled,
            }),
        }
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
        if let Some((i, _)) = st.endpoints.get_mut(&key) {
            i.clone_from(instance);
            return;
        }
        let svc = InFlight {
            inner: (self.shared.make)(instance),
            counters: Arc::new(Counters::new()),
            clock: TokioClock,
        };
        st.endpoints
            .insert(key.clone(), (instance.clone(), svc.clone()));
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
                Some((_, svc)) => {
                    let seq = st.push(Entry::Remove(key.clone()));
                    (seq, Some(svc.counters))
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
            .map(|(k, (_, s))| Change::Insert(k.clone(), s.clone()))
            .collect();
        PoolDiscover {
            pool: self.clone(),
            id,
            initial,
        }
    }

    /// Keys in service.
    ///
    /// ```
    /// # use degrade_rollout::{Instance, discover::Pool};
    /// assert!(Pool::new(|i: &Instance| i.address).keys().is_empty());
    /// ```
    pub fn keys(&self) -> Vec<Key> {
        self.lock().endpoints.keys().cloned().collect()
    }

    /// The instances in service.
    ///
    /// ```
    /// # use degrade_rollout::{Instance, discover::Pool};
    /// assert!(Pool::new(|i: &Instance| i.address).instances().is_empty());
    /// ```
    pub fn instances(&self) -> Vec<Instance> {
        self.lock()
            .endpoints
            .values()
            .map(|(i, _)| i.clone())
            .collect()
    }

    /// A client service of an endpoint in service (sharing its counters).
    ///
    /// ```
    /// # use degrade_rollout::{Instance, discover::Pool};
    /// let pool = Pool::new(|i: &Instance| i.address);
    /// assert!(pool.service(&Instance::new("a", "127.0.0.1:1".parse().unwrap(), "v1").key()).is_none());
    /// ```
    pub fn service(&self, key: &Key) -> Option<InFlight<S>> {
        self.lock().endpoints.get(key).map(|(_, s)| s.clone())
    }

    /// Requests in flight at an endpoint in service.
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
            .map(|(_, s)| s.counters.in_flight.load(Ordering::Acquire))
    }

    /// Cumulative outcomes of the endpoints in `keys` (those in service), summed, as one
    /// arm of a [`CanarySnapshot`](degrade_canary::stats::CanarySnapshot).
    ///
    /// ```
    /// # use degrade_rollout::{Instance, discover::Pool};
    /// let pool = Pool::new(|i: &Instance| i.address);
    /// assert_eq!(pool.outcomes(&[]).samples(), 0);
    /// ```
    pub fn outcomes(&self, keys: &[Key]) -> ArmSnapshot {
        let st = self.lock();
        let mut total = ArmSnapshot::default();
        let mut hist = Histogram::new();
        for k in keys {
            if let Some((_, s)) = st.endpoints.get(k) {
                let a = s.counters.arm();
                total.successes += a.successes;
                total.failures += a.failures;
                for (i, &n) in a.latency.buckets().iter().enumerate() {
                    hist.add(i, n);
                }
            }
        }
        total.latency = hist;
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
}

impl<S> Pool<S> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<S>> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
