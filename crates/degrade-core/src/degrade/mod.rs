//! Admission: an adaptive concurrency limit that fills the service's capacity, highest
//! priority first.
//!
//! # What it is for
//!
//! People put a load shedder in front of a service for two things: keep serving as much as
//! the service can, and serve the most important requests first. The [`DegradeLayer`] does
//! both with nothing to tune. It learns how many requests the service can work on at once —
//! its capacity in concurrency — from what it observes, admits that many, and when more
//! arrive, lets the most important wait a little for a freed slot and refuses the least
//! important at once with a typed [`Shed`] rejection, before any work is done for them.
//!
//! # How it decides
//!
//! * **The limit** ([`limit`](crate::limit)): the latency of a service is flat while it has
//!   room and grows in proportion to concurrency once requests queue in it. The limit
//!   compares each window's mean latency with the service's no-load latency (learnt from
//!   requests that found it nearly empty, re-probed below the limit now and then, and moved
//!   up when a cut does not make the service faster), cuts in proportion when the latency is
//!   clearly above `1.1 ×` that baseline and grows while demand fills it: it settles at the
//!   knee, where the service is busy and nothing queues in it. Every number is a ratio or a
//!   sample count; none knows the service.
//! * **Priority inside the limit**: below the limit, nobody waits and everything is admitted
//!   (one compare-and-swap). At the limit, a request waits in a short queue served highest
//!   priority first, for at most half a baseline — longer for a service with a heavy tail of
//!   costly requests, see [`Law::queue_target`](crate::limit::Law::queue_target) — (a
//!   critical request, four times that, or two of the service's latencies now when longer:
//!   see [`Law::max_wait`](crate::limit::Law::max_wait)); a waiter
//!   past its target is refused, and under a standing queue the newest of a priority is served
//!   first, so the admitted latency stays low. A full queue makes room for a higher priority
//!   by refusing the newest waiter of the lowest. Critical requests may also go a tenth over
//!   the limit, so they find a slot at once when the limit was just cut.
//! * **Priority among arrivals**: the queue orders waiters, but a slot that frees while
//!   nobody waits goes to whoever comes first. So while a priority is *pressured* (a request
//!   of it was refused in this window or the last), a new request of a lower priority takes a
//!   slot only while fewer than its share of the limit are in flight (background 60 %, low
//!   70 %, normal 80 %, high 90 %, rounded down, at least one: [`limit::SHARES`](crate::limit::SHARES)).
//!   Above its share it waits, and the slot goes to it only if no request of the pressured
//!   priority took it within a tenth of its queueing target, so a reserved slot never stands
//!   idle for long. With no priority above it pressured, a priority fills the whole limit.
//! * **The level** ([`Level`]) no longer sheds by default: it keeps its other jobs (trace
//!   sampling, errors-only, batch hints, feature switches), and a signal of degrade-triggers
//!   derived from this limiter can drive it. [`Admission::LevelShares`] restores admission by
//!   the [`Policy`](crate::Policy)'s per-level shares, and [`Admission::Both`] applies the
//!   shares first (an operator pins a level to shed by hand) and the limit after.
//!
//! # How it differs from tower's `ConcurrencyLimit` + `LoadShed`
//!
//! tower's pair needs the limit as a number, found by trial for each service and wrong as
//! soon as the service changes; it refuses whoever arrives when the limit is full, a payment
//! like a prefetch; and it relies on `poll_ready` backpressure, which axum asks middleware
//! not to rely on. The `DegradeLayer` learns the limit, follows it when the service slows
//! down or speeds up, decides in `call`, and never refuses a higher priority while a lower one
//! waits. Its cost is a bounded wait queue on the overload path (a mutex and, for a waiting
//! request, one boxed future and one tokio timer; at most `queue_size × limit` waiters, 4096
//! at most).
//!
//! A waiting request's wait is bounded by its deadline (its queueing-delay target, or until
//! the queue has stood two targets; for a critical request its
//! [`Law::max_wait`](crate::limit::Law::max_wait)), even when nothing else happens — a
//! backend that never answers and no new request: the waiting future wakes
//! itself at the deadline with a tokio timer (`sleep_until`; the limiter's clock follows
//! tokio's in a current-thread runtime, so paused test time and `advance` drive it too, and
//! elsewhere reads the counter timeline kept within about a microsecond of the OS clock that
//! tokio's timer follows) and is refused, counted once as limited. A slot handed to it before then is used. Outside a tokio runtime no timer is
//! armed, and the wait ends at the expiry pass the next arrival or freed slot runs; inside
//! one, the runtime needs its time driver (`enable_time`, as every tokio server has).
//!
//! ```
//! use degrade_core::{Controller, DegradeLayer, Priority};
//! use std::time::Duration;
//! use tower::{Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let controller = Controller::new(Default::default()).unwrap();
//! let layer = DegradeLayer::builder(controller.handle())
//!     .prioritize(|n: &u32| if *n == 0 { Priority::Critical } else { Priority::Low })
//!     .build()
//!     .unwrap();
//! // A backend of four slots, 10 ms each.
//! let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(4));
//! let svc = tower::ServiceBuilder::new().layer(layer.clone()).service(service_fn(move |n: u32| {
//!     let slots = slots.clone();
//!     async move {
//!         let _slot = slots.acquire().await.unwrap();
//!         tokio::time::sleep(Duration::from_millis(10)).await;
//!         Ok::<_, std::convert::Infallible>(n)
//!     }
//! }));
//! // Eight times the capacity for two seconds, one request in ten critical.
//! let mut calls = tokio::task::JoinSet::new();
//! for i in 0..6400u32 {
//!     let mut svc = svc.clone();
//!     calls.spawn(async move { svc.ready().await.unwrap().call(i % 10).await.is_ok() });
//!     tokio::time::sleep(Duration::from_micros(312)).await;
//! }
//! let answered = calls.join_all().await.into_iter().filter(|ok| *ok).count();
//! let snap = layer.snapshot();
//! assert_eq!(snap.offered(), 6400);
//! assert!(snap.admitted_by(Priority::Critical) >= 634); // critical first: 99 % and more
//! assert!(answered > 700, "{answered}"); // near the 800 the backend can serve
//! let limit = snap.limit.unwrap();
//! assert!((3..=8).contains(&limit.limit), "{limit:?}"); // learnt: about its four slots
//! # }
//! ```
//!
//! # Three ways to answer
//!
//! * [`Errors`] (the default): the service error is a `BoxError`; a rejection downcasts to
//!   [`Shed`].
//! * [`HttpResponses`](crate::answer::HttpResponses) (feature `http`, `DegradeLayer::http`): a shed request gets a 503 with
//!   `Retry-After`, and the service keeps its inner error type, so an axum `Router` of
//!   `Infallible` services stays infallible.
//! * [`GrpcResponses`](crate::answer::GrpcResponses) (feature `grpc`, `DegradeLayer::grpc`): a shed call gets a gRPC
//!   UNAVAILABLE status with `RetryInfo`.
//!
//! # Shared state
//!
//! The layer owns one shared state: every service it makes, and every clone of those (axum
//! clones per connection), shares the limit, the queue and the counters. Building the layer
//! once and applying it anywhere never creates a second limit. The inner service must be
//! `Clone`: a request that waits takes a clone along, as tower's `Buffer` does.
//!
//! # Level shares
//!
//! A share strictly between 0 and 1 is applied with a per-priority counter stride, not a random
//! draw: request *n* of a priority is admitted when `⌊(n+1)·s⌋ > ⌊n·s⌋`. Over any run of
//! requests the admitted count is within one of the exact share.
//!
//! ```
//! use degrade_core::degrade::Admission;
//! use degrade_core::{Controller, DegradeLayer, Level, Priority};
//! use tower::{Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let controller = Controller::new(Default::default()).unwrap();
//! let layer = DegradeLayer::builder(controller.handle())
//!     .admission(Admission::LevelShares)
//!     .prioritize(|n: &u32| if *n == 0 { Priority::Critical } else { Priority::Low })
//!     .build()
//!     .unwrap();
//! let mut svc = tower::ServiceBuilder::new()
//!     .layer(layer.clone())
//!     .service(service_fn(|n: u32| async move { Ok::<_, std::convert::Infallible>(n) }));
//!
//! controller.pin(Level::Light); // Light admits half of Low
//! let mut admitted = 0;
//! for _ in 0..100 {
//!     if svc.ready().await.unwrap().call(7).await.is_ok() { admitted += 1; }
//! }
//! assert_eq!(admitted, 50);
//! let snap = layer.snapshot();
//! assert_eq!(snap.offered(), 100);
//! assert_eq!(snap.shed_by(Priority::Low), 50);
//! # }
//! ```

mod future;
mod layer;

#[cfg(feature = "http")]
pub use self::future::RespondFuture;
pub use self::future::ResponseFuture;
pub use self::layer::{DegradeBuilder, DegradeLayer};
pub use crate::limit::LimitSnapshot;

use crate::answer::Errors;
#[cfg(feature = "http")]
use crate::answer::Respond;
use crate::counter::ShardedCounter;
use crate::handle::LevelHandle;
use crate::level::Level;
pub(crate) use crate::limit::Permit;
use crate::limit::{Entry, LimitConfig, Limiter, Ticket};
use crate::priority::{Fixed, Prioritize, Priority};
use crate::rejection::Shed;
use crossbeam_utils::CachePadded;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tower_service::Service;

/// Counter slots: admitted by priority, shed by (level, priority), refused by the limit by
/// priority, abandoned by priority.
const ADMITTED: usize = 0;
const SHED: usize = 5;
const LIMITED: usize = 30;
const ABANDONED: usize = 35;
const SLOTS: usize = 40;
/// Shares are applied in basis points.
const FULL: u32 = 10_000;

/// How a [`DegradeLayer`] decides whom to admit.
///
/// ```
/// use degrade_core::degrade::Admission;
/// assert_eq!(Admission::default(), Admission::Adaptive);
/// let mode: Admission = serde_json::from_str(r#""level-shares""#).unwrap();
/// assert_eq!(mode, Admission::LevelShares);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Admission {
    /// The adaptive concurrency limit, highest priority first (the default): fills the
    /// service's capacity with no threshold to set. The level does not shed.
    #[default]
    Adaptive,
    /// The policy's per-level shares only (no limit): the level, moved by a controller from
    /// your signals, decides which share of each priority is admitted.
    LevelShares,
    /// Both: the level's shares first (an operator can pin a level to shed by hand), then the
    /// adaptive limit.
    Both,
}

/// The state every service of one layer shares, whatever its request type.
pub(crate) struct Gate {
    handle: LevelHandle,
    /// The admit share of every (level, priority) in basis points. Atomics so that
    /// [`DegradeLayer::set_policy`] can change them while requests flow: a request reads the
    /// one word of its (level, priority) with a relaxed load, the same instruction as a plain
    /// read on the platforms we run on.
    table: [[AtomicU32; 5]; 5],
    /// Per-priority request sequence for fractional shares. Padded: each priority's stream is
    /// independent and should not false-share with the others.
    seq: [CachePadded<AtomicU64>; 5],
    counters: ShardedCounter<SLOTS>,
    retry_after: Duration,
    shares: bool,
    limiter: Option<Arc<Limiter>>,
}

pub(crate) struct Shared<P> {
    gate: Arc<Gate>,
    prioritizer: P,
}

impl<P> fmt::Debug for Shared<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("gate", &self.gate)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate")
            .field("level", &self.handle.current())
            .field("retry_after", &self.retry_after)
            .field("snapshot", &self.snapshot())
            .finish_non_exhaustive()
    }
}

/// What [`Gate::admit`] decided.
pub(crate) enum Decision {
    /// Call the inner service now; the permit (adaptive modes) gives the slot back.
    Go(Permit),
    /// Wait in the limiter's queue, at the latest until the deadline (on the limiter's clock),
    /// waking at the hold's end if held to the priority's share.
    Wait(Ticket, tokio::time::Instant, Option<tokio::time::Instant>),
    /// Refused.
    Refuse(Shed),
}

impl<P> Shared<P> {
    pub(crate) fn new(gate: Gate, prioritizer: P) -> Self {
        Self {
            gate: Arc::new(gate),
            prioritizer,
        }
    }

    pub(crate) fn snapshot(&self) -> DegradeSnapshot {
        self.gate.snapshot()
    }

    pub(crate) fn gate(&self) -> &Gate {
        &self.gate
    }
}

impl Gate {
    pub(crate) fn new(
        handle: LevelHandle,
        table: [[u32; 5]; 5],
        retry_after: Duration,
        admission: Admission,
        limit: LimitConfig,
    ) -> Self {
        Self {
            handle,
            table: table.map(|row| row.map(AtomicU32::new)),
            seq: Default::default(),
            counters: ShardedCounter::new(),
            retry_after,
            shares: admission != Admission::Adaptive,
            limiter: (admission != Admission::LevelShares).then(|| Limiter::new(limit)),
        }
    }

    /// Whether the level in force admits all of `priority` (two relaxed loads): then the
    /// share needs no decision, and the adaptive fast path may admit.
    #[inline(always)]
    fn whole_share(&self, priority: Priority) -> bool {
        let level = self.handle.current();
        self.table[level.index()][priority.index()].load(Ordering::Relaxed) >= FULL
    }

    /// The level's share for `priority`: one atomic load for the level, a table lookup, at
    /// most one `fetch_add` for a fractional share.
    #[inline]
    fn share(&self, priority: Priority) -> Result<(), Shed> {
        let level = self.handle.current();
        let p = priority.index();
        let share = self.table[level.index()][p].load(Ordering::Relaxed);
        let admit = if share >= FULL {
            true
        } else if share == 0 {
            false
        } else {
            // The admit pattern of a share repeats every FULL requests, so reduce first and the
            // products below cannot overflow however long the service runs.
            let n = self.seq[p].fetch_add(1, Ordering::Relaxed) % u64::from(FULL);
            let s = u64::from(share);
            (n + 1) * s / u64::from(FULL) != n * s / u64::from(FULL)
        };
        if admit {
            Ok(())
        } else {
            Err(self.shed(priority))
        }
    }

    /// Puts a new admit table in force: one relaxed store per (level, priority) word, taking
    /// no lock. A request reads the single word of its own level and priority, so it is
    /// decided under the old share or the new one, never a torn value; every request that
    /// starts after this returns is decided under the new table.
    pub(crate) fn set_table(&self, table: [[u32; 5]; 5]) {
        for (row, new) in self.table.iter().zip(table) {
            for (cell, share) in row.iter().zip(new) {
                cell.store(share, Ordering::Relaxed);
            }
        }
    }

    /// Counts and makes a rejection of `priority`.
    fn shed(&self, priority: Priority) -> Shed {
        let level = self.handle.current();
        self.counters
            .add(SHED + level.index() * 5 + priority.index(), 1);
        Shed::new(level, priority, self.retry_after)
    }

    #[inline]
    fn admitted(&self, priority: Priority) {
        self.counters.add(ADMITTED + priority.index(), 1);
    }

    /// Counts and makes a refusal of `priority` by the adaptive limit (full, or a wait past its
    /// target).
    fn limited(&self, priority: Priority) -> Shed {
        self.counters.add(LIMITED + priority.index(), 1);
        Shed::new(self.handle.current(), priority, self.retry_after)
    }

    fn abandoned(&self, priority: Priority) {
        self.counters.add(ABANDONED + priority.index(), 1);
    }

    /// The hot path of the adaptive mode: below the limit with nobody waiting, a slot the
    /// thread keeps or one compare-and-swap, and one sharded counter increment (no reference
    /// count, timed or not: the permit refers to the limiter's recycled state). With the
    /// level's shares on, a priority the level admits whole takes the same path (two more
    /// loads). `None` when a share must decide or the limit is full: [`admit`](Self::admit)
    /// decides.
    #[inline(always)]
    fn try_admit(self: &Arc<Self>, priority: Priority) -> Option<Permit> {
        if self.shares && !self.whole_share(priority) {
            return None;
        }
        let Some(limiter) = self.limiter.as_ref() else {
            // Level shares alone, and the level admits this priority whole.
            self.admitted(priority);
            return Some(Permit::NONE);
        };
        let taken = limiter.try_take(priority)?;
        self.admitted(priority);
        Some(limiter.permit_for(taken))
    }

    /// The whole admission decision, for what [`try_admit`](Self::try_admit) left.
    #[inline(never)]
    fn admit(self: &Arc<Self>, priority: Priority) -> Decision {
        if self.shares
            && let Err(shed) = self.share(priority)
        {
            return Decision::Refuse(shed);
        }
        let Some(limiter) = &self.limiter else {
            self.admitted(priority);
            return Decision::Go(Permit::NONE);
        };
        if let Some(permit) = limiter.try_acquire(priority) {
            self.admitted(priority);
            return Decision::Go(permit);
        }
        self.enter(priority)
    }

    #[inline(never)]
    fn enter(self: &Arc<Self>, priority: Priority) -> Decision {
        let Some(limiter) = &self.limiter else {
            return Decision::Go(Permit::NONE);
        };
        match limiter.enter(priority) {
            Entry::Admitted(permit) => {
                self.admitted(priority);
                Decision::Go(permit)
            }
            Entry::Queued(ticket, deadline, hold) => Decision::Wait(ticket, deadline, hold),
            Entry::Refused => Decision::Refuse(self.limited(priority)),
        }
    }

    pub(crate) fn snapshot(&self) -> DegradeSnapshot {
        let raw = self.counters.snapshot();
        let mut snap = DegradeSnapshot::default();
        for p in 0..5 {
            snap.admitted[p] = raw[ADMITTED + p];
            snap.limited[p] = raw[LIMITED + p];
            snap.abandoned[p] = raw[ABANDONED + p];
            for l in 0..5 {
                snap.shed[l][p] = raw[SHED + l * 5 + p];
            }
        }
        snap.limit = self.limiter.as_deref().map(Limiter::snapshot);
        snap
    }
}

/// Counters of a [`DegradeLayer`], in the [`Accounting`](crate::snapshot::Accounting) words:
/// every request offered is admitted or rejected, and each rejection has one reason:
///
/// * `shed`: refused by the level's share of its priority ([`Admission::LevelShares`] mode), by
///   level and priority;
/// * `limited`: refused by the adaptive limit — full for its priority, or a wait for a slot past
///   the queueing-delay target — by priority;
/// * `abandoned`: waited for a slot and its caller gave up first (dropped the future), by
///   priority.
///
/// So offered = admitted + shed + limited + abandoned, exactly. In the adaptive modes the
/// snapshot also carries the [limit's state](LimitSnapshot). Arrays are indexed by
/// [`Priority::index`] and [`Level::index`].
///
/// ```
/// use degrade_core::snapshot::Accounting;
/// use degrade_core::{limit::LimitConfig, Controller, DegradeLayer, Priority};
/// use tower::{Layer, Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let c = Controller::new(Default::default()).unwrap();
/// // A limit of one slot and no wait queue: a second request while one is in is refused.
/// let limit = LimitConfig { initial: 1, max: 1, queue_size: 0.0, ..Default::default() };
/// let layer = DegradeLayer::builder(c.handle())
///     .prioritize(|p: &Priority| *p)
///     .limit(limit)
///     .build()
///     .unwrap();
/// let mut svc = layer.layer(tower::service_fn(|_: Priority| async {
///     Ok::<_, std::convert::Infallible>(())
/// }));
/// // The slot is taken at `call`: the first request holds it until its future completes.
/// let first = svc.ready().await.unwrap().call(Priority::High);
/// let refused = svc.ready().await.unwrap().call(Priority::Low).await;
/// assert!(refused.unwrap_err().is::<degrade_core::Shed>());
/// first.await.unwrap();
///
/// let snap = layer.snapshot();
/// assert_eq!((snap.offered(), snap.admitted(), snap.rejected()), (2, 1, 1));
/// assert_eq!(snap.limited_by(Priority::Low), 1);
/// assert!(snap.balanced());
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct DegradeSnapshot {
    /// Admitted requests by priority.
    pub admitted: [u64; 5],
    /// Requests refused by the level's share, by level, then priority.
    pub shed: [[u64; 5]; 5],
    /// Requests refused by the adaptive limit (full, or waited past the target), by priority.
    pub limited: [u64; 5],
    /// Requests whose caller gave up while they waited for a slot, by priority.
    pub abandoned: [u64; 5],
    /// The adaptive limit (`None` in [`Admission::LevelShares`] mode).
    pub limit: Option<LimitSnapshot>,
}

impl DegradeSnapshot {
    /// All requests seen: admitted + rejected.
    ///
    /// ```
    /// # use degrade_core::degrade::DegradeSnapshot;
    /// assert_eq!(DegradeSnapshot::default().offered(), 0);
    /// ```
    pub fn offered(&self) -> u64 {
        self.admitted() + self.rejected()
    }

    /// All admitted requests.
    ///
    /// ```
    /// # use degrade_core::degrade::DegradeSnapshot;
    /// assert_eq!(DegradeSnapshot::default().admitted(), 0);
    /// ```
    pub fn admitted(&self) -> u64 {
        self.admitted.iter().sum()
    }

    /// All rejected requests, whatever the reason: shed by the level, refused by the limit, or
    /// abandoned while waiting.
    ///
    /// ```
    /// # use degrade_core::degrade::DegradeSnapshot;
    /// assert_eq!(DegradeSnapshot::default().rejected(), 0);
    /// ```
    pub fn rejected(&self) -> u64 {
        self.shed.iter().flatten().sum::<u64>()
            + self.limited.iter().sum::<u64>()
            + self.abandoned.iter().sum::<u64>()
    }

    /// Requests refused by the adaptive limit (full, or waited past the target).
    ///
    /// ```
    /// # use degrade_core::degrade::DegradeSnapshot;
    /// assert_eq!(DegradeSnapshot::default().limited(), 0);
    /// ```
    pub fn limited(&self) -> u64 {
        self.limited.iter().sum()
    }

    /// Requests of `priority` seen.
    ///
    /// ```
    /// # use degrade_core::{degrade::DegradeSnapshot, Priority};
    /// assert_eq!(DegradeSnapshot::default().offered_by(Priority::Low), 0);
    /// ```
    pub fn offered_by(&self, priority: Priority) -> u64 {
        self.admitted_by(priority) + self.rejected_by(priority)
    }

    /// Admitted requests of `priority`.
    ///
    /// ```
    /// # use degrade_core::{degrade::DegradeSnapshot, Priority};
    /// assert_eq!(DegradeSnapshot::default().admitted_by(Priority::High), 0);
    /// ```
    pub fn admitted_by(&self, priority: Priority) -> u64 {
        self.admitted[priority.index()]
    }

    /// Rejected requests of `priority`, whatever the reason.
    ///
    /// ```
    /// # use degrade_core::{degrade::DegradeSnapshot, Priority};
    /// assert_eq!(DegradeSnapshot::default().rejected_by(Priority::High), 0);
    /// ```
    pub fn rejected_by(&self, priority: Priority) -> u64 {
        let p = priority.index();
        self.shed_by(priority) + self.limited[p] + self.abandoned[p]
    }

    /// Requests of `priority` shed by the level's share, at any level.
    ///
    /// ```
    /// # use degrade_core::{degrade::DegradeSnapshot, Priority};
    /// assert_eq!(DegradeSnapshot::default().shed_by(Priority::High), 0);
    /// ```
    pub fn shed_by(&self, priority: Priority) -> u64 {
        self.shed.iter().map(|row| row[priority.index()]).sum()
    }

    /// Requests of `priority` refused by the adaptive limit.
    ///
    /// ```
    /// # use degrade_core::{degrade::DegradeSnapshot, Priority};
    /// assert_eq!(DegradeSnapshot::default().limited_by(Priority::Low), 0);
    /// ```
    pub fn limited_by(&self, priority: Priority) -> u64 {
        self.limited[priority.index()]
    }

    /// Requests of `priority` shed by the level's share at `level`.
    ///
    /// ```
    /// # use degrade_core::{degrade::DegradeSnapshot, Level, Priority};
    /// assert_eq!(DegradeSnapshot::default().shed_at(Level::Light, Priority::Background), 0);
    /// ```
    pub fn shed_at(&self, level: Level, priority: Priority) -> u64 {
        self.shed[level.index()][priority.index()]
    }
}

impl crate::snapshot::Accounting for DegradeSnapshot {
    fn offered(&self) -> u64 {
        DegradeSnapshot::offered(self)
    }
    fn admitted(&self) -> u64 {
        DegradeSnapshot::admitted(self)
    }
    fn rejected(&self) -> u64 {
        DegradeSnapshot::rejected(self)
    }
}

/// The service made by [`DegradeLayer`]. `M` is the answer mode ([`Errors`],
/// [`HttpResponses`](crate::answer::HttpResponses) or [`GrpcResponses`](crate::answer::GrpcResponses)).
///
/// ```
/// use degrade_core::{Controller, DegradeLayer, Policy};
/// use tower::Layer;
///
/// let c = Controller::new(Default::default()).unwrap();
/// let layer = DegradeLayer::new(c.handle(), Policy::default()).unwrap();
/// let svc = layer.layer(tower::service_fn(|()| async { Ok::<_, std::convert::Infallible>(()) }));
/// let twin = svc.clone();
/// assert_eq!(svc.snapshot(), twin.snapshot()); // clones share the counters
/// ```
pub struct Degrade<S, P = Fixed, M = Errors> {
    inner: S,
    shared: Arc<Shared<P>>,
    _mode: PhantomData<fn() -> M>,
}

impl<S: Clone, P, M> Clone for Degrade<S, P, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            _mode: PhantomData,
        }
    }
}

impl<S: fmt::Debug, P, M> fmt::Debug for Degrade<S, P, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Degrade")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S, P, M> Degrade<S, P, M> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<P>>) -> Self {
        Self {
            inner,
            shared,
            _mode: PhantomData,
        }
    }

    crate::inner_service_accessors!(S);

    /// The shared counters.
    ///
    /// ```
    /// # use degrade_core::{Controller, DegradeLayer, Policy}; use tower::Layer;
    /// # let c = Controller::new(Default::default()).unwrap();
    /// let svc = DegradeLayer::new(c.handle(), Policy::default()).unwrap().layer(());
    /// assert_eq!(svc.snapshot().offered(), 0);
    /// ```
    pub fn snapshot(&self) -> DegradeSnapshot {
        self.shared.snapshot()
    }
}

impl<S, P, R> Service<R> for Degrade<S, P, Errors>
where
    S: Service<R> + Clone,
    S::Error: Into<crate::BoxError>,
    P: Prioritize<R>,
{
    type Response = S::Response;
    type Error = crate::BoxError;
    type Future = ResponseFuture<S::Future, S, R>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: R) -> Self::Future {
        // Every layer further in shares this call's start instant.
        let _scope = crate::clock::CallScope::enter();
        let priority = self.shared.prioritizer.priority(&req);
        // Each arm builds the whole future (`decide` through `wrap`), and the permit lies
        // beside the state rather than in its `Called` variant: the inner service's future is
        // then written where it stays. Built aside and copied in, it was read back in wider
        // loads than it was written in, a store-forwarding stall on every call.
        match self.shared.gate.try_admit(priority) {
            Some(permit) => ResponseFuture::new(future::Core::called(self.inner.call(req)), permit),
            None => self.decide(priority, req, ResponseFuture::new),
        }
    }
}

impl<S: Clone, P, M> Degrade<S, P, M> {
    /// Everything but the fast path: a fractional share, the limit full (wait or refuse), or
    /// no limit; the future made by `wrap` (see `call`).
    #[inline(never)]
    fn decide<R, Fut>(
        &mut self,
        priority: Priority,
        req: R,
        wrap: impl FnOnce(future::Core<S::Future, S, R>, Permit) -> Fut,
    ) -> Fut
    where
        S: Service<R>,
    {
        match self.shared.gate.admit(priority) {
            Decision::Go(permit) => wrap(future::Core::called(self.inner.call(req)), permit),
            Decision::Wait(ticket, deadline, hold) => {
                // Moves the ready inner service and the request into the waiting future (the
                // tower idiom: the clone stays behind for the next call).
                let clone = self.inner.clone();
                let svc = std::mem::replace(&mut self.inner, clone);
                let gate = Arc::clone(&self.shared.gate);
                let core =
                    future::Core::waiting(gate, ticket, (deadline, hold), priority, svc, req);
                wrap(core, Permit::NONE)
            }
            Decision::Refuse(shed) => wrap(future::Core::rejected(shed), Permit::NONE),
        }
    }
}

#[cfg(feature = "http")]
impl<S, P, M, ReqB, ResB> Service<http::Request<ReqB>> for Degrade<S, P, M>
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>> + Clone,
    P: Prioritize<http::Request<ReqB>>,
    M: Respond,
    ResB: Default,
{
    type Response = http::Response<ResB>;
    type Error = S::Error;
    type Future = RespondFuture<S::Future, ResB, S, http::Request<ReqB>, M>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        // Every layer further in shares this call's start instant.
        let _scope = crate::clock::CallScope::enter();
        let priority = self.shared.prioritizer.priority(&req);
        match self.shared.gate.try_admit(priority) {
            Some(permit) => RespondFuture::new(future::Core::called(self.inner.call(req)), permit),
            None => self.decide(priority, req, RespondFuture::new),
        }
    }
}
