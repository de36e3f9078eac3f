//! The limiter: the [`Law`] and the [`WaitQueue`] behind atomics, shared by every clone of a
//! layer.
//!
//! * Admit (hot path): a slot this thread keeps (see [`lease`](super::lease): a plain load and
//!   store while the limit has headroom), else one compare-and-swap on the [`InFlight`] word;
//!   no lock, no allocation, no reference count (the response future refers to the word,
//!   which outlives the limiter).
//!   Timing a request costs two clock reads, so a request is timed only while the current
//!   window still needs samples (up to four timed requests per sample it needs, so answers
//!   that never become samples — errors, rejections further in — do not time every request),
//!   while demand is near the limit (where the law acts), and one in
//!   [`timing_every`](LimitConfig::timing_every) otherwise; every request is *counted*.
//! * Complete: the slot is kept by the completing thread while its lease holds, else one
//!   `fetch_sub`; a timed request adds its latency to the window's atomics, and
//!   the completion that finds the window done takes the law's lock with `try_lock` (never
//!   waits) to move the limit.
//! * Overload: a request that finds the limit full (or waiters ahead of it) takes the queue's
//!   lock: it is admitted ahead of lower priorities, queued (bounded), or refused.

use super::inflight::{InFlight, Released};
use super::lease::{self, Host, Leases};
use super::queue::{Fate, Pushed, Ticket, WaitQueue};
use super::{Law, LimitConfig, Window};
use crate::clock::{Clock, TokioClock};
use crate::priority::Priority;
use crate::recycle::{Pool, Pooled, Recycle};
use crate::sync::{AtomicU32, AtomicU64, Ordering};
use crossbeam_utils::CachePadded;
use std::cell::Cell;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::Waker;
use std::time::Duration;
use tokio::time::Instant;

/// What a request holds while it is in flight: what the completion needs to record it.
///
/// Sixteen bytes, copied into every response future: an untimed request (most of them below
/// the limit) only gives its slot back, and reads nothing else.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    /// When it entered the inner service, in nanoseconds since the limiter's origin plus one;
    /// 0 when untimed.
    start: u64,
    /// Requests in flight when it entered, itself included; [`LOW`] set when that was low
    /// concurrency.
    concurrency: u32,
    /// The window it was admitted in.
    epoch: u32,
}

/// The bit of [`Slot::concurrency`] that says "admitted at low concurrency".
const LOW: u32 = 1 << 31;

impl Slot {
    pub(crate) const UNTIMED: Slot = Slot {
        start: 0,
        concurrency: 0,
        epoch: 0,
    };

    #[inline]
    fn is_timed(&self) -> bool {
        self.start != 0
    }

    fn concurrency(&self) -> u32 {
        self.concurrency & !LOW
    }

    fn low(&self) -> bool {
        self.concurrency & LOW != 0
    }
}

/// The answer of the overload path.
#[derive(Debug)]
pub(crate) enum Entry {
    /// Admitted at once.
    Admitted(Permit),
    /// Queued: wait for the ticket's fate until the deadline.
    Queued(Ticket, Instant),
    /// Refused: the queue is full of requests at least as important (critical ones excepted:
    /// they take the oldest critical waiter's place), or nothing is learnt yet.
    Refused,
}

/// Window accumulators, each bumped by timed completions.
#[derive(Debug, Default)]
struct Cells {
    samples: AtomicU32,
    latency_sum_ns: AtomicU64,
    latency_sq_sum_us: AtomicU64,
    concurrency_sum: AtomicU64,
    low_samples: AtomicU32,
    low_latency_sum_ns: AtomicU64,
    half_samples: AtomicU32,
    half_latency_sum_ns: AtomicU64,
    fast_failures: AtomicU32,
    max_latency_ns: AtomicU64,
    /// Requests timed in this window because it was short of samples (not a sample yet:
    /// errors and cancellations may never become one).
    timed_for_samples: AtomicU32,
}

/// A window short of samples times at most this many requests per sample it needs: when
/// answers do not become samples (a service whose calls all fail fast, or are rejected by a
/// layer further in), the window fills through the one-in-`timing_every` requests instead of
/// timing every request.
const TIMED_PER_NEEDED_SAMPLE: u32 = 4;

/// Counters of the limiter, for its snapshot.
#[derive(Debug, Default)]
struct Counters {
    queued: AtomicU64,
    expired: AtomicU64,
    evicted: AtomicU64,
    refused: AtomicU64,
    queue_delay_ns: AtomicU64,
}

/// A limiter's in-flight word, in memory that outlives the limiter (see
/// [`InFlight`](super::inflight)): response futures refer to it without a reference count.
#[derive(Debug)]
struct Word {
    in_flight: CachePadded<InFlight>,
    /// The slots threads keep while the limit has headroom (counted by `in_flight` too).
    leases: Leases,
    /// The limiter the word counts for, to hand a freed slot to its waiters.
    owner: Mutex<Weak<Limiter>>,
}

/// The limiters' words, recycled once idle (see [`crate::recycle`]).
#[cfg(not(degrade_loom))]
static WORDS: Pool<Word> = Pool::new();
#[cfg(degrade_loom)]
static WORDS: std::sync::LazyLock<Pool<Word>> = std::sync::LazyLock::new(Pool::new);

impl Word {
    /// A recycled word, or a new one (kept for the life of the process, and reused).
    fn take(owner: Weak<Limiter>) -> Pooled<Word> {
        let word = WORDS.take(|| Word {
            in_flight: CachePadded::new(InFlight::new()),
            leases: Leases::default(),
            owner: Mutex::new(Weak::new()),
        });
        *word.lock_owner() = owner;
        word
    }

    fn lock_owner(&self) -> std::sync::MutexGuard<'_, Weak<Limiter>> {
        self.owner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot comes back: kept by this thread while its lease holds, else to a waiter if any.
    #[inline]
    fn release(&'static self) {
        if lease::keep(self) {
            return;
        }
        let released = self.in_flight.release();
        if released != NOTHING_TO_DO {
            self.after_release(released);
        }
    }

    #[inline(never)]
    fn after_release(&'static self, released: Released) {
        if released.waiters {
            // The guard is dropped before the limiter is used (and perhaps dropped).
            let owner = self.lock_owner().upgrade();
            if let Some(limiter) = owner {
                limiter.hand_on();
            }
        }
    }
}

/// Idle once nothing is in flight, kept or waiting (the word counts all three).
impl Recycle for Word {
    fn is_idle(&self) -> bool {
        self.in_flight.is_idle()
    }

    fn reset(&self) {
        *self.lock_owner() = Weak::new();
        self.in_flight.reset();
        self.leases.reset();
    }
}

impl Host for Word {
    fn in_flight(&self) -> &InFlight {
        &self.in_flight
    }

    fn leases(&self) -> &Leases {
        &self.leases
    }

    fn after_release(&'static self, released: Released) {
        Word::after_release(self, released);
    }
}

const NOTHING_TO_DO: Released = Released { waiters: false };

/// A slot of the limit held by an admitted request: given back once, by
/// [`finish`](Permit::finish) with the request's outcome or, if the future is dropped first,
/// as a cancellation. An untimed request holds no reference count.
#[derive(Debug)]
pub(crate) struct Permit {
    /// `None` when nothing is held (no limit, or given back).
    word: Option<&'static Word>,
    /// Held by a timed request, whose completion goes to the law.
    limiter: Option<Arc<Limiter>>,
    slot: Slot,
}

impl Permit {
    /// Nothing held.
    pub(crate) const NONE: Permit = Permit {
        word: None,
        limiter: None,
        slot: Slot::UNTIMED,
    };

    /// Holds a slot.
    #[inline]
    pub(crate) fn holds(&self) -> bool {
        self.word.is_some()
    }

    /// The request finished with `outcome`: the slot goes back (once; later calls and the drop
    /// do nothing).
    #[inline(always)]
    pub(crate) fn finish(&mut self, outcome: Completion) {
        let Some(word) = self.word.take() else {
            return;
        };
        if let Some(limiter) = self.limiter.take() {
            // Recorded while the slot is still held, so the word cannot be recycled meanwhile.
            limiter.complete_timed(self.slot, outcome);
        }
        word.release();
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        self.finish(Completion::Cancelled);
    }
}

/// The adaptive limit of one layer.
#[derive(Debug)]
pub(crate) struct Limiter {
    word: Pooled<Word>,
    /// The law's decisions, published for the hot path.
    limit: AtomicU32,
    limit_critical: AtomicU32,
    low: AtomicU32,
    /// Requests in flight at or below which a completion counts as a half-limit sample
    /// (zero once a baseline is known).
    half: AtomicU32,
    needed: AtomicU32,
    epoch: AtomicU32,
    /// 0 until known.
    baseline_ns: AtomicU64,
    queue_target_ns: AtomicU64,
    /// The most of one latency the window's sums count (`Law::sample_cap`), 0 until known.
    sample_cap_ns: AtomicU64,
    /// Window bounds, from the origin, nanoseconds.
    window_start_ns: AtomicU64,
    min_window_ns: AtomicU64,
    max_window_ns: AtomicU64,
    binding: AtomicBool,
    /// The window (its epoch plus one) that may still be short of samples, 0 once it is not:
    /// a line written twice a window, read by every untimed request instead of the window's
    /// counts (which timed completions write).
    short: AtomicU32,
    cells: CachePadded<Cells>,
    counters: Counters,
    law: Mutex<Law>,
    queue: Mutex<WaitQueue<Option<Waker>>>,
    clock: TokioClock,
    origin: Instant,
    config: LimitConfig,
}

thread_local! {
    /// Per-thread countdown to the next one-in-N timed request: no shared write and no
    /// division on the hot path.
    static COUNTDOWN: Cell<u32> = const { Cell::new(0) };
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Limiter {
    pub(crate) fn new(config: LimitConfig) -> Arc<Self> {
        let law = Law::new(config.clone());
        // Slots are held by futures until they read their fate, so twice the largest queue.
        let capacity = (queue_bound(&config, config.max) as usize)
            .saturating_mul(2)
            .clamp(2, 2 * MAX_WAITING);
        Arc::new_cyclic(|owner| Self::with_word(Word::take(owner.clone()), config, law, capacity))
    }

    fn with_word(word: Pooled<Word>, config: LimitConfig, law: Law, capacity: usize) -> Self {
        let clock = TokioClock;
        let limiter = Self {
            word,
            limit: AtomicU32::new(0),
            limit_critical: AtomicU32::new(0),
            low: AtomicU32::new(0),
            half: AtomicU32::new(0),
            needed: AtomicU32::new(0),
            epoch: AtomicU32::new(0),
            baseline_ns: AtomicU64::new(0),
            queue_target_ns: AtomicU64::new(0),
            sample_cap_ns: AtomicU64::new(0),
            window_start_ns: AtomicU64::new(0),
            min_window_ns: AtomicU64::new(0),
            max_window_ns: AtomicU64::new(u64::MAX),
            binding: AtomicBool::new(false),
            short: AtomicU32::new(1),
            cells: CachePadded::new(Cells::default()),
            counters: Counters::default(),
            queue: Mutex::new(WaitQueue::new(capacity)),
            law: Mutex::new(law),
            clock,
            origin: clock.now(),
            config,
        };
        limiter.publish(&limiter.lock_law());
        limiter
    }

    fn lock_law(&self) -> std::sync::MutexGuard<'_, Law> {
        self.law.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, WaitQueue<Option<Waker>>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn since_origin(&self, now: Instant) -> u64 {
        nanos(now.saturating_duration_since(self.origin))
    }

    /// Publishes the law's state for the hot path.
    fn publish(&self, law: &Law) {
        let before = self.limit.swap(law.limit(), Ordering::Relaxed);
        if law.limit() < before || law.limit() < lease::MIN_LIMIT {
            self.word.leases.revoke();
        }
        self.limit_critical
            .store(law.limit_for(Priority::Critical), Ordering::Relaxed);
        self.low.store(law.low_concurrency(), Ordering::Relaxed);
        self.half.store(law.half_concurrency(), Ordering::Relaxed);
        self.needed.store(law.samples_needed(), Ordering::Relaxed);
        let baseline = law.baseline().map_or(0, nanos);
        self.baseline_ns.store(baseline, Ordering::Relaxed);
        self.queue_target_ns
            .store(law.queue_target().map_or(0, nanos), Ordering::Relaxed);
        self.sample_cap_ns
            .store(law.sample_cap().map_or(0, nanos), Ordering::Relaxed);
        let (min, max) = law.window_bounds();
        self.min_window_ns.store(nanos(min), Ordering::Relaxed);
        self.max_window_ns
            .store(max.map_or(u64::MAX, nanos), Ordering::Relaxed);
    }

    #[inline]
    fn limit_for(&self, priority: Priority) -> u32 {
        if priority == Priority::Critical {
            self.limit_critical.load(Ordering::Relaxed)
        } else {
            self.limit.load(Ordering::Relaxed)
        }
    }

    /// The hot path: a slot this thread keeps (no locked instruction), or one from the word
    /// when nobody waits and the limit has room.
    #[inline(always)]
    pub(crate) fn try_acquire(self: &Arc<Self>, priority: Priority) -> Option<Permit> {
        let taken = self.try_take(priority)?;
        Some(self.permit_for(taken))
    }

    /// The hot path's slot, before its permit is made: `(in flight as the word counts it,
    /// the limit)`. Separate so that a caller counts the admission before the permit exists
    /// (a permit built first is kept on the stack across the count and moved from there in
    /// 16-byte halves written as 8-byte halves: a store-forwarding stall of ~5 ns).
    #[inline(always)]
    pub(crate) fn try_take(&self, priority: Priority) -> Option<(u32, u32)> {
        let limit = self.limit_for(priority);
        if lease::take(self.word.get()) {
            let (concurrency, _) = self.word.in_flight.load();
            return Some((concurrency, limit));
        }
        let concurrency = self.word.in_flight.try_acquire(limit)?;
        let whole = self.limit.load(Ordering::Relaxed);
        if whole >= lease::MIN_LIMIT {
            self.word.leases.adjust(concurrency, whole);
        }
        Some((concurrency, limit))
    }

    /// The permit of a slot from [`try_take`](Self::try_take).
    #[inline(always)]
    pub(crate) fn permit_for(self: &Arc<Self>, (concurrency, limit): (u32, u32)) -> Permit {
        self.permit(concurrency, limit, false)
    }

    /// The permit of a request admitted with `concurrency` in flight.
    #[inline(always)]
    fn permit(self: &Arc<Self>, concurrency: u32, limit: u32, always_time: bool) -> Permit {
        let slot = self.slot(concurrency, limit, always_time);
        Permit {
            word: Some(self.word.get()),
            limiter: slot.is_timed().then(|| Arc::clone(self)),
            slot,
        }
    }

    /// The slot of a request admitted with `concurrency` in flight (the word's count, slots
    /// kept by threads included): timed (two clock reads and
    /// the window's atomics at completion) only when the law needs it — demand near the limit,
    /// a window short of samples, or one request in `timing_every` to keep the baseline
    /// fresh; otherwise nothing is read but the countdown.
    #[inline]
    fn slot(&self, concurrency: u32, limit: u32, always_time: bool) -> Slot {
        if always_time || 2 * concurrency >= limit || self.countdown() {
            self.timed_slot(concurrency)
        } else if self.short_of_samples() {
            self.cells.timed_for_samples.fetch_add(1, Ordering::Relaxed);
            self.timed_slot(concurrency)
        } else {
            Slot::UNTIMED
        }
    }

    /// The window lacks samples and has not timed its share of requests for them yet. Both
    /// counts only grow within a window, so once it is not short it stays so: the first
    /// request that sees it clears the window's flag, and later ones read only the flag.
    #[inline]
    fn short_of_samples(&self) -> bool {
        let window = self.short.load(Ordering::Relaxed);
        if window == 0 {
            return false;
        }
        let needed = self.needed.load(Ordering::Relaxed);
        let short = self.cells.samples.load(Ordering::Relaxed) < needed
            && self.cells.timed_for_samples.load(Ordering::Relaxed)
                < needed.saturating_mul(TIMED_PER_NEEDED_SAMPLE);
        if !short {
            // Only this window's flag: a window that opened meanwhile keeps its own.
            let _ = self
                .short
                .compare_exchange(window, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
        short
    }

    /// `true` once every `timing_every` calls on this thread.
    #[inline]
    fn countdown(&self) -> bool {
        COUNTDOWN.with(|c| match c.get() {
            0 | 1 => {
                c.set(self.config.timing_every);
                true
            }
            n => {
                c.set(n - 1);
                false
            }
        })
    }

    #[inline(never)]
    fn timed_slot(&self, counted: u32) -> Slot {
        // The requests in flight: the word's count less the slots threads keep.
        let concurrency = counted.saturating_sub(self.word.leases.kept()).max(1);
        let low = if concurrency <= self.low.load(Ordering::Relaxed) {
            LOW
        } else {
            0
        };
        Slot {
            start: self.since_origin(self.clock.now()).saturating_add(1),
            concurrency: concurrency.min(!LOW) | low,
            epoch: self.epoch.load(Ordering::Relaxed),
        }
    }

    /// The overload path: admit ahead of lower priorities, queue, or refuse.
    pub(crate) fn enter(self: &Arc<Self>, priority: Priority) -> Entry {
        // Near the limit every slot counts: threads give back what they keep.
        self.word.leases.revoke();
        if !self.binding.load(Ordering::Relaxed) {
            self.binding.store(true, Ordering::Relaxed);
        }
        // The time is needed only to expire waiters and to queue: read it (outside the lock)
        // when requests wait, and otherwise only once this request is about to queue.
        let (_, waiting) = self.word.in_flight.load();
        let mut now = (waiting > 0).then(|| self.clock.now());
        let mut queue = self.lock_queue();
        if queue.len() > 0 {
            let at = *now.get_or_insert_with(|| self.clock.now());
            self.expire(&mut queue, at);
        }
        let limit = self.limit_for(priority);
        if queue.best_priority().is_none_or(|best| best < priority)
            && let Some(n) = self.word.in_flight.try_acquire_ahead(limit)
        {
            return Entry::Admitted(self.permit(n, limit, true));
        }
        let target = self.queue_target_ns.load(Ordering::Relaxed);
        if target == 0 {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            return Entry::Refused;
        }
        let now = now.unwrap_or_else(|| self.clock.now());
        let wait = if priority == Priority::Critical {
            target.saturating_mul(2)
        } else {
            target
        };
        let bound = queue_bound(&self.config, self.limit.load(Ordering::Relaxed));
        match queue.push(priority, now, bound as usize, None) {
            Pushed::Queued { ticket, evicted } => {
                self.word.in_flight.add_waiter();
                self.counters.queued.fetch_add(1, Ordering::Relaxed);
                if let Some((_, waker)) = evicted {
                    self.word.in_flight.remove_waiter();
                    self.counters.evicted.fetch_add(1, Ordering::Relaxed);
                    if let Some(w) = waker {
                        w.wake();
                    }
                }
                // A slot may have been freed since the fast path looked.
                self.drain(&mut queue, now);
                Entry::Queued(ticket, now + Duration::from_nanos(wait))
            }
            Pushed::Full(_) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                Entry::Refused
            }
        }
    }

    /// Hands free slots to the best waiters (under the queue's lock).
    fn drain(&self, queue: &mut WaitQueue<Option<Waker>>, now: Instant) {
        let target = Duration::from_nanos(self.queue_target_ns.load(Ordering::Relaxed));
        while let Some(best) = queue.best_priority() {
            let limit = self.limit_for(best);
            if self.word.in_flight.try_acquire_ahead(limit).is_none() {
                break;
            }
            // Under a standing queue (it has not emptied for a whole target), newest first.
            let standing = queue.standing_for(now) > target;
            match queue.grant(now, standing) {
                Some((_, waker, waited)) => {
                    self.word.in_flight.remove_waiter();
                    self.counters
                        .queue_delay_ns
                        .store(nanos(waited), Ordering::Relaxed);
                    if let Some(w) = waker {
                        w.wake();
                    }
                }
                None => {
                    // Cannot happen (a best priority exists); give the slot back.
                    let _ = self.word.in_flight.release();
                    break;
                }
            }
        }
    }

    /// Ends the waits past their deadline (under the queue's lock).
    fn expire(&self, queue: &mut WaitQueue<Option<Waker>>, now: Instant) {
        let target = Duration::from_nanos(self.queue_target_ns.load(Ordering::Relaxed));
        if target.is_zero() || queue.len() == 0 {
            return;
        }
        // Critical waiters may wait twice the target (they are served before any other, so
        // they wait that long only when critical requests alone fill the limit).
        let mut expired = 0u64;
        let critical = Priority::Critical.index();
        let mut wake = |_, waker: Option<Waker>| {
            expired += 1;
            if let Some(w) = waker {
                w.wake();
            }
        };
        queue.expire_lanes(0..critical, now, target, &mut wake);
        queue.expire_lanes(critical..critical + 1, now, target * 2, &mut wake);
        for _ in 0..expired {
            self.word.in_flight.remove_waiter();
        }
        self.counters.expired.fetch_add(expired, Ordering::Relaxed);
    }

    /// Polls a queued request: its fate, or `None` (after storing `waker`) while it waits.
    pub(crate) fn poll_ticket(&self, ticket: Ticket, waker: &Waker) -> Option<Fate> {
        let mut queue = self.lock_queue();
        match queue.take(ticket) {
            Some(fate) => Some(fate),
            None => {
                if let Some(slot) = queue.payload_mut(ticket) {
                    match slot {
                        Some(w) if w.will_wake(waker) => {}
                        _ => *slot = Some(waker.clone()),
                    }
                }
                None
            }
        }
    }

    /// The permit of a granted waiter.
    pub(crate) fn granted_permit(self: &Arc<Self>) -> Permit {
        let (n, _) = self.word.in_flight.load();
        self.permit(n, self.limit.load(Ordering::Relaxed), true)
    }

    /// A queued request gives up: its deadline passed, or its future was dropped. Returns its
    /// fate if one was decided meanwhile (a granted slot is then the caller's to use or
    /// release); `None` means it left the queue unserved.
    pub(crate) fn withdraw(&self, ticket: Ticket, expired: bool) -> Option<Fate> {
        let mut queue = self.lock_queue();
        let fate = queue.cancel(ticket);
        if fate.is_none() {
            self.word.in_flight.remove_waiter();
            if expired {
                self.counters.expired.fetch_add(1, Ordering::Relaxed);
            }
        }
        fate
    }

    /// A slot comes back (a granted waiter that will not use it).
    pub(crate) fn release(&self) {
        self.word.get().release();
    }

    /// Requests wait: the freed slot goes to the best of them.
    #[inline(never)]
    fn hand_on(&self) {
        let now = self.clock.now();
        let mut queue = self.lock_queue();
        self.expire(&mut queue, now);
        self.drain(&mut queue, now);
    }

    /// The baseline latency, if known (for the completion path's fast-failure test).
    #[inline]
    pub(crate) fn baseline(&self) -> Option<Duration> {
        match self.baseline_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// Adds a timed request to the window: its latency counts if it succeeded or failed
    /// slowly; a fast failure counts apart.
    #[inline(never)]
    fn complete_timed(&self, slot: Slot, outcome: Completion) {
        debug_assert!(slot.is_timed());
        // A window takes the requests admitted within it, and the requests longer than a
        // window (leaving them out would hide every request slower than a window); shorter
        // ones admitted earlier ran under an older limit.
        let now = self.clock.now();
        let latency = Duration::from_nanos(self.since_origin(now).saturating_sub(slot.start - 1));
        let window = self.min_window_ns.load(Ordering::Relaxed);
        if slot.epoch != self.epoch.load(Ordering::Relaxed) && nanos(latency) <= window {
            return;
        }
        let slow = self.baseline().is_none_or(|b| latency >= b);
        match outcome {
            Completion::Success => self.record(latency, slot),
            Completion::Failure | Completion::Cancelled if slow => self.record(latency, slot),
            Completion::Failure => {
                self.cells.fast_failures.fetch_add(1, Ordering::Relaxed);
            }
            Completion::Cancelled | Completion::Ignored => {}
        }
        self.maybe_close(now);
    }

    fn record(&self, latency: Duration, slot: Slot) {
        let whole = nanos(latency);
        let c = &self.cells;
        c.max_latency_ns.fetch_max(whole, Ordering::Relaxed);
        let ns = match self.sample_cap_ns.load(Ordering::Relaxed) {
            0 => whole,
            cap => whole.min(cap),
        };
        let us = ns / 1_000;
        c.latency_sum_ns.fetch_add(ns, Ordering::Relaxed);
        c.latency_sq_sum_us
            .fetch_add(us.saturating_mul(us), Ordering::Relaxed);
        c.concurrency_sum
            .fetch_add(u64::from(slot.concurrency()), Ordering::Relaxed);
        if slot.low() {
            c.low_samples.fetch_add(1, Ordering::Relaxed);
            c.low_latency_sum_ns.fetch_add(ns, Ordering::Relaxed);
        }
        if slot.concurrency() <= self.half.load(Ordering::Relaxed) {
            c.half_samples.fetch_add(1, Ordering::Relaxed);
            c.half_latency_sum_ns.fetch_add(ns, Ordering::Relaxed);
        }
        // Last, so a closer that sees the count sees the sums (up to records in flight).
        c.samples.fetch_add(1, Ordering::Release);
    }

    fn maybe_close(&self, now: Instant) {
        let elapsed = self
            .since_origin(now)
            .saturating_sub(self.window_start_ns.load(Ordering::Relaxed));
        let samples = self.cells.samples.load(Ordering::Acquire);
        let due = (samples >= self.needed.load(Ordering::Relaxed)
            && elapsed >= self.min_window_ns.load(Ordering::Relaxed))
            || elapsed >= self.max_window_ns.load(Ordering::Relaxed);
        if !due {
            return;
        }
        // Whoever gets the lock closes the window; the others carry on.
        let Ok(mut law) = self.law.try_lock() else {
            return;
        };
        let elapsed = Duration::from_nanos(
            self.since_origin(now)
                .saturating_sub(self.window_start_ns.load(Ordering::Relaxed)),
        );
        let samples = self.cells.samples.load(Ordering::Acquire);
        if !law.window_done(samples, elapsed) {
            return;
        }
        let c = &self.cells;
        let window = Window {
            samples: c.samples.swap(0, Ordering::AcqRel),
            latency_sum_ns: c.latency_sum_ns.swap(0, Ordering::AcqRel),
            latency_sq_sum_us: c.latency_sq_sum_us.swap(0, Ordering::AcqRel),
            concurrency_sum: c.concurrency_sum.swap(0, Ordering::AcqRel),
            low_samples: c.low_samples.swap(0, Ordering::AcqRel),
            low_latency_sum_ns: c.low_latency_sum_ns.swap(0, Ordering::AcqRel),
            half_samples: c.half_samples.swap(0, Ordering::AcqRel),
            half_latency_sum_ns: c.half_latency_sum_ns.swap(0, Ordering::AcqRel),
            binding: self.binding.swap(false, Ordering::Relaxed),
            fast_failures: c.fast_failures.swap(0, Ordering::AcqRel),
            max_latency_ns: c.max_latency_ns.swap(0, Ordering::AcqRel),
            elapsed,
        };
        c.timed_for_samples.store(0, Ordering::Relaxed);
        // A sample that lands between the swaps may leave its count in one window and its
        // sums in the next: an error of one sample in a window of at least sixteen.
        let before = law.limit();
        let after = law.observe(&window, now);
        let epoch = self.epoch.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        self.window_start_ns
            .store(self.since_origin(now), Ordering::Relaxed);
        self.publish(&law);
        // The new window may be short of samples (after its counts and `needed` are reset).
        self.short
            .store(epoch.wrapping_add(1).max(1), Ordering::Relaxed);
        if after != before {
            tracing::debug!(
                target: "degrade::limit",
                from = before,
                to = after,
                baseline_ms = law.baseline().map_or(0.0, |b| b.as_secs_f64() * 1e3),
                latency_ms = window.mean_latency().map_or(0.0, |l| l.as_secs_f64() * 1e3),
                ratio = law.latency_ratio().unwrap_or(0.0),
                samples = window.samples,
                "concurrency limit changed"
            );
        }
        drop(law);
        if after > before {
            let mut queue = self.lock_queue();
            self.drain(&mut queue, now);
        }
    }

    /// The limiter's state, for snapshots.
    pub(crate) fn snapshot(&self) -> LimitSnapshot {
        let (in_flight, waiting) = self.word.leases.in_flight(&self.word.in_flight);
        let law = self.lock_law();
        LimitSnapshot {
            limit: law.limit(),
            in_flight,
            waiting,
            baseline: law.baseline(),
            latency_ratio: law.latency_ratio(),
            queue_target: law.queue_target(),
            queue_delay: Duration::from_nanos(self.counters.queue_delay_ns.load(Ordering::Relaxed)),
            queued: self.counters.queued.load(Ordering::Relaxed),
            expired: self.counters.expired.load(Ordering::Relaxed),
            evicted: self.counters.evicted.load(Ordering::Relaxed),
            refused: self.counters.refused.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        *self.word.lock_owner() = Weak::new();
        // Kept slots come back at their threads' next touch (or exit). The word goes back to
        // its pool when this drop's `Pooled` does: reused once idle.
        self.word.leases.revoke();
    }
}

/// How a request in flight ended, for the law.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Completion {
    Success,
    Failure,
    Ignored,
    Cancelled,
}

/// The most requests that ever wait at once, whatever the limit.
pub(crate) const MAX_WAITING: usize = 4096;

fn queue_bound(config: &LimitConfig, limit: u32) -> u32 {
    ((config.queue_size * f64::from(limit)).ceil() as u32).clamp(1, MAX_WAITING as u32)
}

/// The state of an adaptive limit: what it learnt, and what its queue did.
///
/// ```
/// use degrade_core::{Controller, DegradeLayer};
/// let c = Controller::new(Default::default()).unwrap();
/// let layer = DegradeLayer::builder(c.handle()).build().unwrap();
/// let limit = layer.snapshot().limit.unwrap();
/// assert_eq!(limit.limit, 16); // the initial limit, before anything is learnt
/// assert_eq!(limit.baseline, None);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct LimitSnapshot {
    /// The concurrency limit.
    pub limit: u32,
    /// Requests in the inner service now.
    pub in_flight: u32,
    /// Requests waiting for a slot now.
    pub waiting: u32,
    /// The service's no-load latency, as learnt.
    pub baseline: Option<Duration>,
    /// The latest window's mean latency over the baseline.
    pub latency_ratio: Option<f64>,
    /// How long a request may wait for a slot.
    pub queue_target: Option<Duration>,
    /// How long the latest request handed a slot had waited.
    pub queue_delay: Duration,
    /// Requests that waited for a slot, ever.
    pub queued: u64,
    /// Waiting requests refused at their deadline, ever.
    pub expired: u64,
    /// Waiting requests refused to make room for a higher priority, ever, or for a newer
    /// critical request when only critical requests waited (the oldest of them goes).
    pub evicted: u64,
    /// Requests refused at once (queue full of requests at least as important), ever.
    pub refused: u64,
}
