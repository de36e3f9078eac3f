//! The state every service of one layer shares, and the admission decision.

use crate::config::{Params, RateLimitConfig};
use crate::cost::Weigh;
use crate::error::{Cause, RateLimited};
use crate::key::{KeyExtractor, Keyed};
use crate::state::{Cell, Decision, ParamTable};
use crate::store::Store;
use crossbeam_utils::CachePadded;
use degrade_core::clock::Epoch;
use degrade_core::counter::ShardedCounter;
use degrade_core::{Clock, ConfigError, LevelHandle};
use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ADMITTED: usize = 0;
const WAITED: usize = 1;
const UNITS: usize = 2;
const REJECTED: usize = 3;
const SLOTS: usize = REJECTED + Cause::ALL.len();

/// The answer to one request.
pub(crate) enum Verdict {
    Now,
    After(Duration, WaiterSlot),
    No(RateLimited),
}

/// The longest a [`Lease`] may be spent: 1 ms, or a sixteenth of the burst's time if that
/// is shorter. It is what a window may admit beyond GCRA, as time at the configured rate.
pub(crate) const LEASE_NS: u64 = 1_000_000;

/// The burst's share a lease's life (and so its size) is bounded by.
const LEASE_BURST_SHARE: u64 = 16;

/// How long a lease taken under `p` may be spent, in nanoseconds: `min(1 ms, burst / 16)`.
#[inline]
pub(crate) fn lease_life(p: &Params) -> u64 {
    LEASE_NS.min(p.tolerance_ns / LEASE_BURST_SHARE)
}

/// Budget one thread took from a limiter's shared GCRA cell in one compare-and-swap and spends
/// on its next requests to that limiter without touching the cell (issue 20: one cell is one
/// contended cache line; two threads admitting through it were no faster than one). Leases are
/// per thread, not per service clone: axum and hyper clone a service per request or per
/// connection, a worker thread serves them all. A thread holds leases for up to
/// [`LEASE_SLOTS`] limiters; a fifth takes the slot of the one it used least recently (that
/// lease is forfeited).
///
/// Only a global (unkeyed) limit leases, and only when its rate is high. A lease lives
/// `L = min(1 ms, burst time / 16)` from when it was taken and holds at most the units
/// emitted in `L` (`rate × L`, so at most `burst / 16`); below two units no lease is taken.
/// The size adapts per thread: a thread starts with none (every request decided by the cell,
/// exactly as GCRA), doubles its lease when it spent the last one within `L / 4`, keeps the
/// size when within `L`, and halves it when a lease expired. A quota or level change (another
/// unit or burst) voids a lease. Near exhaustion a lease is not granted and the request is
/// decided by the cell alone.
///
/// What it changes, stated as bounds (the window proptests in `tests/proptests.rs` carry the
/// allowance; `tests/lease.rs` shows the case that needs it):
///
/// * **Never more than `rate × L` units beyond GCRA, over any window.** Every leased unit was
///   charged to the cell less than `L` before it is spent, so over any window of length `W`
///   the admitted units are at most `burst + rate × (W + L)`, where GCRA alone allows
///   `burst + rate × W`. At one instant (`W = 0`) that is the burst plus at most a sixteenth,
///   and at most 1 ms of rate.
/// * **Budget forfeited** (fewer admitted than GCRA would): what a thread leased and did not
///   spend within `L`; at most one lease per thread per `L`, and only by a thread whose own
///   traffic spent its previous lease within `L`.
/// * Accounting is untouched: every request is counted once, admitted or rejected.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lease {
    /// Nanoseconds of budget left.
    left: u64,
    /// When the lease was taken (limiter nanoseconds), and until when it may be spent.
    taken: u64,
    until: u64,
    /// The unit and the tolerance the lease was taken under; others void it.
    unit_ns: u64,
    tolerance_ns: u64,
    /// Units the next lease takes (0 or 1: none).
    next: u64,
}

/// How many limiters a thread holds leases for at once.
pub(crate) const LEASE_SLOTS: usize = 4;

/// The leases of one thread: `(limiter id, lease, last use)`; id 0 is a free slot.
struct Leases {
    slots: [(u64, Lease, u64); LEASE_SLOTS],
    uses: u64,
}

thread_local! {
    static LEASES: RefCell<Leases> = const {
        RefCell::new(Leases {
            slots: [(0, Lease::NONE, 0); LEASE_SLOTS],
            uses: 0,
        })
    };
}

/// Ids of limiters, for the per-thread lease slots (never reused, never 0).
static NEXT_LIMITER: AtomicU64 = AtomicU64::new(1);

impl Leases {
    /// The calling thread's lease for limiter `id` (a fresh one if it had none), or `None`
    /// while the thread's storage is being torn down.
    #[inline]
    fn with<T>(id: u64, f: impl FnOnce(&mut Lease) -> T) -> Option<T> {
        LEASES
            .try_with(|l| {
                let mut l = l.borrow_mut();
                l.uses += 1;
                let uses = l.uses;
                let i = match l.slots.iter().position(|s| s.0 == id) {
                    Some(i) => i,
                    None => Self::evict(&mut l, id),
                };
                let slot = &mut l.slots[i];
                slot.2 = uses;
                f(&mut slot.1)
            })
            .ok()
    }

    /// Gives the least recently used slot to limiter `id`; its lease is forfeited.
    #[cold]
    fn evict(&mut self, id: u64) -> usize {
        let (i, _) = self
            .slots
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| s.2)
            .unwrap_or((0, &self.slots[0]));
        self.slots[i] = (id, Lease::NONE, 0);
        i
    }
}

impl Lease {
    const NONE: Self = Self {
        left: 0,
        taken: 0,
        until: 0,
        unit_ns: 0,
        tolerance_ns: 0,
        next: 0,
    };

    /// Spends `cost_ns` from the lease, if it holds that much, is in force at `now` and was
    /// taken under `p`'s unit and burst.
    #[inline]
    fn spend(&mut self, cost_ns: u64, now: u64, p: &Params) -> bool {
        if self.left >= cost_ns
            && now < self.until
            && self.unit_ns == p.unit_ns
            && self.tolerance_ns == p.tolerance_ns
        {
            self.left -= cost_ns;
            true
        } else {
            false
        }
    }

    /// Starts the next lease at `now` and answers its size in nanoseconds (zero: none), from
    /// how the last one went.
    #[cold]
    fn renew(&mut self, p: &Params, now: u64) -> u64 {
        let life = lease_life(p);
        let max = life / p.unit_ns.max(1);
        let same = self.unit_ns == p.unit_ns && self.tolerance_ns == p.tolerance_ns;
        let next = if max < 2 || !same {
            1
        } else if now >= self.until {
            // Expired (unspent, or the clone was idle): smaller.
            (self.next / 2).max(1)
        } else if now.saturating_sub(self.taken) < life / 4 {
            (self.next.max(1) * 2).min(max)
        } else {
            self.next.clamp(1, max)
        };
        *self = Self {
            left: 0,
            taken: now,
            until: now.saturating_add(life),
            unit_ns: p.unit_ns,
            tolerance_ns: p.tolerance_ns,
            next,
        };
        if next >= 2 {
            next.saturating_mul(p.unit_ns)
        } else {
            0
        }
    }
}

/// A place among the bounded number of waiters; released on drop.
#[derive(Debug)]
pub(crate) struct WaiterSlot(Arc<AtomicU32>);

impl Drop for WaiterSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(crate) struct Shared<E: Keyed, W, C> {
    /// This limiter's key in the threads' lease slots.
    id: u64,
    table: ParamTable,
    cell: CachePadded<Cell>,
    level: Option<LevelHandle>,
    clock: C,
    /// The clock's reading the limiter's nanoseconds count from.
    origin: Epoch,
    max_wait_ns: AtomicU64,
    max_waiters: AtomicU32,
    waiters: Arc<AtomicU32>,
    counters: ShardedCounter<SLOTS>,
    extractor: E,
    store: Option<Store<E::Key>>,
    weigh: W,
    config: Mutex<RateLimitConfig>,
}

impl<E: Keyed, W, C> fmt::Debug for Shared<E, W, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field(
                "config",
                &*self.config.lock().unwrap_or_else(|e| e.into_inner()),
            )
            .field("snapshot", &self.snapshot())
            .finish_non_exhaustive()
    }
}

impl<E: Keyed, W, C> Shared<E, W, C> {
    pub(crate) fn snapshot(&self) -> RateLimitSnapshot {
        let raw = self.counters.snapshot();
        let mut rejected = [0; Cause::ALL.len()];
        rejected.copy_from_slice(&raw[REJECTED..]);
        RateLimitSnapshot {
            admitted: raw[ADMITTED],
            waited: raw[WAITED],
            units: raw[UNITS],
            rejected,
            keys: self.store.as_ref().map_or(0, Store::len),
            waiting: self.waiters.load(Ordering::Acquire),
        }
    }
}

impl<E: Keyed, W, C: Clock> Shared<E, W, C> {
    pub(crate) fn new(
        config: RateLimitConfig,
        params: [Params; 5],
        level: Option<LevelHandle>,
        clock: C,
        extractor: E,
        max_keys: Option<usize>,
        weigh: W,
    ) -> Self {
        degrade_core::rejection::register::<RateLimited>();
        let origin = clock.epoch();
        Self {
            id: NEXT_LIMITER.fetch_add(1, Ordering::Relaxed),
            table: ParamTable::new(params),
            cell: CachePadded::new(Cell::new(params[0].unit_ns)),
            level,
            clock,
            origin,
            max_wait_ns: AtomicU64::new(nanos(config.max_wait)),
            max_waiters: AtomicU32::new(config.max_waiters),
            waiters: Arc::new(AtomicU32::new(0)),
            counters: ShardedCounter::new(),
            extractor,
            store: max_keys.map(Store::new),
            weigh,
            config: Mutex::new(config),
        }
    }

    /// Nanoseconds since the origin, straight from the clock where it counts in nanoseconds
    /// (`FastClock` on the counter: no `Instant` is made). A reading before the origin counts
    /// as the origin; a clock that steps back a little (the counter's cores, its re-anchoring)
    /// only makes that decision stricter.
    #[inline]
    fn now_ns(&self) -> u64 {
        self.clock.nanos_since(&self.origin)
    }

    #[inline]
    fn params(&self) -> Params {
        let l = match &self.level {
            Some(h) => h.current().index(),
            None => 0,
        };
        self.table.load(l)
    }

    /// The decision for `req`, made in `call`.
    #[inline]
    pub(crate) fn admit<R>(&self, req: &R) -> Verdict
    where
        E: KeyExtractor<R>,
        W: Weigh<R>,
    {
        let p = self.params();
        let (cost_ns, units) = match self.weigh.units(req) {
            None => (p.cost_ns, p.cost_units),
            Some(0) => {
                self.counters.add(ADMITTED, 1);
                return Verdict::Now;
            }
            Some(n) => (n.saturating_mul(p.unit_ns), n),
        };
        if cost_ns > p.tolerance_ns {
            return self.reject(Cause::CostAboveBurst, None, &p);
        }
        let now = self.now_ns();
        if self.store.is_none()
            && Leases::with(self.id, |l| self.leased(l, &p, cost_ns, now)) == Some(true)
        {
            self.counters.add(ADMITTED, 1);
            self.counters.add(UNITS, units);
            return Verdict::Now;
        }
        let mut max_wait = self.max_wait_ns.load(Ordering::Relaxed);
        let mut waiters_full = false;
        if max_wait > 0
            && self.waiters.load(Ordering::Acquire) >= self.max_waiters.load(Ordering::Relaxed)
        {
            // No room to wait: decide as a reject-at-once limiter, so no budget is reserved
            // for a request that will not wait.
            max_wait = 0;
            waiters_full = true;
        }
        let decision = match (self.extractor.extract(req), &self.store) {
            (Some(key), Some(store)) => match store.acquire(key, &p, cost_ns, now, max_wait) {
                Ok(d) => d,
                Err(full) => {
                    // The earliest a held key recovers and makes room.
                    let wait = full.until.saturating_sub(now).max(1);
                    return self.reject(Cause::KeyCapacity, Some(Duration::from_nanos(wait)), &p);
                }
            },
            _ => self.cell.acquire(&p, cost_ns, now, max_wait),
        };
        match decision {
            Decision::Admit { wait: 0, .. } => {
                self.counters.add(ADMITTED, 1);
                self.counters.add(UNITS, units);
                Verdict::Now
            }
            Decision::Admit { wait, .. } => match self.take_waiter_slot() {
                Some(slot) => {
                    self.counters.add(WAITED, 1);
                    self.counters.add(UNITS, units);
                    Verdict::After(Duration::from_nanos(wait), slot)
                }
                // Another thread took the last place between the check and the reservation.
                // The reservation stays spent (handing it back could let a later request
                // through early): conservative, and only on that race.
                None => self.reject(Cause::TooManyWaiters, Some(Duration::from_nanos(wait)), &p),
            },
            Decision::Reject { wait } => {
                let cause = if waiters_full && wait <= self.max_wait_ns.load(Ordering::Relaxed) {
                    Cause::TooManyWaiters
                } else {
                    Cause::OverQuota
                };
                self.reject(cause, Some(Duration::from_nanos(wait)), &p)
            }
        }
    }

    /// Admits a request of `cost_ns` from the thread's lease, or from a new lease taken from
    /// the cell; false: decide it by the cell alone.
    #[inline]
    fn leased(&self, lease: &mut Lease, p: &Params, cost_ns: u64, now: u64) -> bool {
        if lease.spend(cost_ns, now, p) {
            return true;
        }
        let size = lease.renew(p, now);
        if size >= cost_ns
            && let Decision::Admit { wait: 0, .. } = self.cell.acquire(p, size, now, 0)
        {
            lease.left = size - cost_ns;
            return true;
        }
        if size > 0 {
            // Not granted (the budget is nearly spent): decide this request alone, and lease
            // nothing until the thread proves hot again.
            lease.next = 1;
        }
        false
    }

    fn take_waiter_slot(&self) -> Option<WaiterSlot> {
        let max = self.max_waiters.load(Ordering::Relaxed);
        self.waiters
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w < max).then_some(w + 1)
            })
            .ok()
            .map(|_| WaiterSlot(Arc::clone(&self.waiters)))
    }

    #[cold]
    fn reject(&self, cause: Cause, retry_after: Option<Duration>, p: &Params) -> Verdict {
        self.counters.add(REJECTED + cause.index(), 1);
        Verdict::No(
            RateLimited::new(cause, retry_after)
                .with_policy(p.quota, Duration::from_nanos(p.window_ns)),
        )
    }

    pub(crate) fn evict_idle(&self) -> usize {
        let now = self.now_ns();
        let unit = self.params().unit_ns;
        self.store.as_ref().map_or(0, |s| s.evict_idle(now, unit))
    }

    pub(crate) fn key_memory(&self) -> (usize, usize) {
        self.store
            .as_ref()
            .map_or((0, 0), |s| (s.allocated(), s.cap()))
    }

    pub(crate) fn clock(&self) -> &C {
        &self.clock
    }

    /// Nanoseconds the shared budget is ahead of now (its debt); zero when full.
    pub(crate) fn debt(&self) -> Duration {
        Duration::from_nanos(self.cell.tat().saturating_sub(self.now_ns()))
    }
}

pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What a [`QuotaHandle`](crate::QuotaHandle) changes.
pub(crate) trait SetQuota: Send + Sync + 'static {
    fn set(&self, config: RateLimitConfig) -> Result<(), ConfigError>;
    fn get(&self) -> RateLimitConfig;
}

impl<E, W, C> SetQuota for Shared<E, W, C>
where
    E: Keyed,
    W: Send + Sync + 'static,
    C: Clock,
{
    fn set(&self, config: RateLimitConfig) -> Result<(), ConfigError> {
        let params = config.params()?;
        let mut cur = self.config.lock().unwrap_or_else(|e| e.into_inner());
        self.max_wait_ns
            .store(nanos(config.max_wait), Ordering::Relaxed);
        self.max_waiters
            .store(config.max_waiters, Ordering::Relaxed);
        self.table.store(params);
        tracing::info!(
            quota = config.quota,
            period = ?config.period,
            burst = config.effective_burst(),
            "rate limit quota changed"
        );
        *cur = config;
        Ok(())
    }

    fn get(&self) -> RateLimitConfig {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Counters of a rate limit layer. `offered() == admitted + waited + rejected` holds exactly.
///
/// ```
/// use degrade_ratelimit::{RateLimitConfig, RateLimitLayer};
/// use std::time::Duration;
/// let layer = RateLimitLayer::new(RateLimitConfig::per(10, Duration::from_secs(1))).unwrap();
/// let s = layer.snapshot();
/// assert_eq!(s.offered(), 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitSnapshot {
    /// Requests admitted at once.
    pub admitted: u64,
    /// Requests admitted after waiting (or still waiting) for their reserved budget.
    pub waited: u64,
    /// Budget units spent by admitted and waiting requests.
    pub units: u64,
    /// Rejections by [`Cause::index`].
    pub rejected: [u64; Cause::ALL.len()],
    /// Keys held by the keyed store (zero for a global limit).
    pub keys: usize,
    /// Requests waiting right now.
    pub waiting: u32,
}

impl RateLimitSnapshot {
    /// All requests seen.
    ///
    /// ```
    /// # use degrade_ratelimit::RateLimitSnapshot;
    /// assert_eq!(RateLimitSnapshot::default().offered(), 0);
    /// ```
    pub fn offered(&self) -> u64 {
        self.admitted + self.waited + self.rejected()
    }

    /// All rejections, whatever the cause.
    ///
    /// ```
    /// # use degrade_ratelimit::RateLimitSnapshot;
    /// assert_eq!(RateLimitSnapshot::default().rejected(), 0);
    /// ```
    pub fn rejected(&self) -> u64 {
        self.rejected.iter().sum()
    }

    /// Rejections for `cause`.
    ///
    /// ```
    /// # use degrade_ratelimit::{RateLimitSnapshot, error::Cause};
    /// assert_eq!(RateLimitSnapshot::default().rejected_by(Cause::OverQuota), 0);
    /// ```
    pub fn rejected_by(&self, cause: Cause) -> u64 {
        self.rejected[cause.index()]
    }
}

/// Admitted counts both ways through: at once (`admitted`) and after a bounded wait (`waited`).
impl degrade_core::snapshot::Accounting for RateLimitSnapshot {
    fn offered(&self) -> u64 {
        RateLimitSnapshot::offered(self)
    }
    fn admitted(&self) -> u64 {
        self.admitted + self.waited
    }
    fn rejected(&self) -> u64 {
        RateLimitSnapshot::rejected(self)
    }
}
