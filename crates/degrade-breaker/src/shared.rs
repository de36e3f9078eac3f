//! The shared breaker behind every service, clone and handle: the state word, the window, the
//! probe permits, the counters, and the [`BreakerMachine`] under a lock that only transitions take.
//!
//! # No reference count per call
//!
//! All of that lives in a [`Core`], which is not generic, and which response futures (their
//! [`Permit`](crate::Permit)s) reach through a `&'static` (degrade-core's `recycle`): a
//! `Pool` leaks it once and hands it out again once its owner is gone and every call it
//! admitted has ended. The owner ([`Shared`], kept by the layer, its services and handles
//! through the `Arc` they share, cloned per service clone and never per call) adds what is
//! generic: the clock and the classifier, which a permit copies (a zero-sized classifier is a
//! `&'static`, see `recycle::Held`; `TokioClock` is zero-sized).
//!
//! A call starts with its `PASSED` count (in `admit`, while the caller holds the owner) and
//! ends with exactly one of `SUCCESS`, `FAILURE`, `SLOW`, `IGNORED` or `CANCELLED`, the
//! permit's **last** write to the core (a release store, after the window record and any
//! transition it drives): `PASSED == sum(ended)` once the owner is gone proves that nothing is
//! in flight, and the pool resets the core only then. An outcome that arrives after its
//! breaker is gone is recorded into that breaker's core, never into a new breaker's.
//!
//! A recycled core is reused by a new breaker of the same window shape (kind and size; see
//! `Pool::take_fitting`), which puts its own configuration in force before any call can reach
//! it: thresholds, slow-call duration, cancelled outcome, permits and wait in atomics, a new
//! machine, name and channels under the lock, and its origin as an offset from the core's
//! first one (so a reused time window counts its buckets from the new breaker's creation,
//! exactly as a fresh one).

use crate::config::{BreakerConfig, WindowConfig};
use crate::error::CircuitOpen;
use crate::handle::BreakerSnapshot;
use crate::state::{
    BreakerEvent, BreakerMachine, BreakerTransition, Mode, Phase, State, Thresholds,
};
use crate::sync::{AtomicU64, Mutex, Ordering};
use crossbeam_utils::CachePadded;
use degrade_core::counter::ShardedCounter;
use degrade_core::recycle::{Held, Pool, Pooled, Recycle};
use degrade_core::window::{ConsecutiveWindow, CountWindow, TimeWindow, WindowSnapshot};
use degrade_core::{Clock, ConfigError, Outcome};
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

// The state word: the machine's epoch above four bits of (mode, phase). One load tells the
// closed path everything it needs.
const TAG_BITS: u32 = 4;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
const TAG_CLOSED: u64 = 0;

fn tag(mode: Mode, phase: Phase) -> u64 {
    let m = match mode {
        Mode::Normal => 0,
        Mode::ForcedOpen => 1,
        Mode::Disabled => 2,
        Mode::MetricsOnly => 3,
    };
    let p = match phase {
        Phase::Closed => 0,
        Phase::Open => 1,
        Phase::HalfOpen => 2,
    };
    (m << 2) | p
}

fn untag(tag: u64) -> (Mode, Phase) {
    let mode = match tag >> 2 {
        0 => Mode::Normal,
        1 => Mode::ForcedOpen,
        2 => Mode::Disabled,
        _ => Mode::MetricsOnly,
    };
    let phase = match tag & 3 {
        0 => Phase::Closed,
        1 => Phase::Open,
        _ => Phase::HalfOpen,
    };
    (mode, phase)
}

// Counter slots.
const PASSED: usize = 0;
const REJECTED: usize = 1;
const SHADOW_REJECTED: usize = 2;
const SUCCESS: usize = 3;
const FAILURE: usize = 4;
const SLOW: usize = 5;
const IGNORED: usize = 6;
const CANCELLED: usize = 7;
const PROBES: usize = 8;
const COUNTERS: usize = 9;

// The deadline word: the low 16 bits of the epoch it belongs to, above the deadline in
// microseconds after `origin` (48 bits: 8.9 years). A reader that loaded the state word and
// then the deadline word can tell whether both belong to the same state; without the tag, a
// thread could pair an open state with the deadline of the half-open state that followed.
const DEADLINE_BITS: u32 = 48;
const DEADLINE_MASK: u64 = (1 << DEADLINE_BITS) - 1;
const NO_DEADLINE: u64 = DEADLINE_MASK;
const LOW: u64 = 0xFFFF_FFFF;

/// How a finished call is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Track {
    /// Into the closed (or disabled, or shadow-closed) window.
    Window,
    /// As a half-open probe.
    Probe,
    /// Counted only: a metrics-only breaker's call that a real breaker would have rejected.
    Untracked,
    /// Already recorded (a permit after `record`).
    Done,
}

/// What a permit remembers of its admission, in two whole words: the epoch and the track
/// packed in one, the start time in the other. Every response future carries it, and
/// byte-sized fields here cost store-forwarding stalls on the closed path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    pub(crate) word: u64,
    /// Nanoseconds after `origin` at admission, or `NOT_TIMED` (slow calls off).
    pub(crate) start: u64,
}

impl Ticket {
    #[inline]
    pub(crate) fn new(track: Track, epoch: u64, start: u64) -> Self {
        let t = match track {
            Track::Window => 0,
            Track::Probe => 1,
            Track::Untracked => 2,
            Track::Done => 3,
        };
        Self {
            word: (epoch << 2) | t,
            start,
        }
    }

    #[inline]
    pub(crate) fn track(&self) -> Track {
        match self.word & 3 {
            0 => Track::Window,
            1 => Track::Probe,
            2 => Track::Untracked,
            _ => Track::Done,
        }
    }

    #[inline]
    pub(crate) fn epoch(&self) -> u64 {
        self.word >> 2
    }
}

const NOT_TIMED: u64 = u64::MAX;

pub(crate) enum Window {
    Consecutive(ConsecutiveWindow),
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    fn new(config: &WindowConfig, origin: Instant) -> Result<Self, ConfigError> {
        let nz = |field: &'static str, n: u32| {
            NonZeroU32::new(n).ok_or_else(|| ConfigError::new(field, "must be at least 1"))
        };
        Ok(match *config {
            WindowConfig::Consecutive { .. } => Window::Consecutive(ConsecutiveWindow::new()),
            WindowConfig::Count { size } => {
                Window::Count(CountWindow::new(nz("window.size", size)?))
            }
            WindowConfig::Time { span, buckets } => Window::Time(
                TimeWindow::new(span, nz("window.buckets", buckets)?, origin)
                    .map_err(|e| e.within("window"))?,
            ),
        })
    }

    fn reading(&self, now: Instant) -> (WindowSnapshot, u32) {
        match self {
            Window::Consecutive(w) => (WindowSnapshot::default(), w.consecutive()),
            Window::Count(w) => (w.snapshot(), 0),
            Window::Time(w) => (w.snapshot(now), 0),
        }
    }

    fn reset(&self) {
        match self {
            Window::Consecutive(w) => w.reset(),
            Window::Count(w) => w.reset(),
            Window::Time(w) => w.reset(),
        }
    }

    /// Empty and as new (a time window forgets its epochs too), for a recycled core.
    fn clear(&self) {
        match self {
            Window::Consecutive(w) => w.reset(),
            Window::Count(w) => w.reset(),
            Window::Time(w) => w.clear(),
        }
    }

    /// What a recycled core's window must match to be reused.
    fn shape(&self) -> Shape {
        match self {
            Window::Consecutive(_) => Shape::Consecutive,
            Window::Count(w) => Shape::Count(w.size()),
            Window::Time(w) => Shape::Time(w.span(), w.buckets()),
        }
    }
}

/// A window's kind and size: what a new breaker needs of a recycled core's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    Consecutive,
    Count(NonZeroU32),
    Time(Duration, NonZeroU32),
}

fn nanos_of(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The machine's [`Thresholds`] in atomics, so a reload can change them while calls complete:
/// the closed path reads them with relaxed loads (no lock) to ask whether a reading would trip,
/// and the machine decides under its lock with its own copy. A reader racing a reload may mix
/// old and new values for one call; at worst that call takes the lock for nothing or leaves
/// the trip to the next call recorded, which reads the new values.
pub(crate) struct LiveThresholds {
    /// Failures in a row of a consecutive window, 0 for a rate window.
    consecutive: std::sync::atomic::AtomicU32,
    minimum_calls: std::sync::atomic::AtomicU64,
    /// `f64` bits.
    failure_rate: std::sync::atomic::AtomicU64,
    /// `f64` bits, or `NO_RATE` with slow calls off.
    slow_rate: std::sync::atomic::AtomicU64,
}

const NO_RATE: u64 = u64::MAX;

impl LiveThresholds {
    fn new(t: Thresholds) -> Self {
        let live = Self {
            consecutive: std::sync::atomic::AtomicU32::new(0),
            minimum_calls: std::sync::atomic::AtomicU64::new(0),
            failure_rate: std::sync::atomic::AtomicU64::new(0),
            slow_rate: std::sync::atomic::AtomicU64::new(NO_RATE),
        };
        live.store(t);
        live
    }

    fn store(&self, t: Thresholds) {
        use std::sync::atomic::Ordering::Relaxed;
        self.consecutive.store(t.consecutive.unwrap_or(0), Relaxed);
        self.minimum_calls.store(t.minimum_calls, Relaxed);
        self.failure_rate.store(t.failure_rate.to_bits(), Relaxed);
        self.slow_rate
            .store(t.slow_rate.map_or(NO_RATE, f64::to_bits), Relaxed);
    }

    #[inline]
    pub(crate) fn load(&self) -> Thresholds {
        use std::sync::atomic::Ordering::Relaxed;
        let consecutive = self.consecutive.load(Relaxed);
        let slow = self.slow_rate.load(Relaxed);
        Thresholds {
            consecutive: (consecutive != 0).then_some(consecutive),
            minimum_calls: self.minimum_calls.load(Relaxed),
            failure_rate: f64::from_bits(self.failure_rate.load(Relaxed)),
            slow_rate: (slow != NO_RATE).then(|| f64::from_bits(slow)),
        }
    }
}

/// What the lock guards: the machine, and what only transitions use (the name they log, the
/// channels they publish on). A recycled core gets new ones for its new breaker.
pub(crate) struct Locked {
    pub(crate) machine: BreakerMachine,
    pub(crate) events: broadcast::Sender<BreakerTransition>,
    pub(crate) states: watch::Sender<State>,
    pub(crate) name: Arc<str>,
}

impl Locked {
    fn new(machine: BreakerMachine, name: Arc<str>) -> Self {
        Self {
            machine,
            events: broadcast::channel(64).0,
            states: watch::channel(State::Closed).0,
            name,
        }
    }
}

impl std::ops::Deref for Locked {
    type Target = BreakerMachine;

    fn deref(&self) -> &BreakerMachine {
        &self.machine
    }
}

impl std::ops::DerefMut for Locked {
    fn deref_mut(&mut self) -> &mut BreakerMachine {
        &mut self.machine
    }
}

/// Everything of one breaker that its calls reach: see the module documentation. Taken from
/// the pool by [`Shared::new`]; response futures hold a `&'static Core`.
pub(crate) struct Core {
    pub(crate) word: CachePadded<AtomicU64>,
    /// When the open wait (or the half-open period) ends: microseconds after the origin (low
    /// 48 bits) tagged with the low 16 bits of the epoch it belongs to (see the deadline word
    /// above).
    pub(crate) deadline: AtomicU64,
    /// The half-open epoch (low 32 bits) above the number of probes in flight.
    pub(crate) probes: CachePadded<AtomicU64>,
    pub(crate) window: Window,
    pub(crate) counters: ShardedCounter<COUNTERS>,
    /// The machine's thresholds, for the lock-free "would this trip?" check after a call.
    pub(crate) thresholds: LiveThresholds,
    /// The slow-call duration in nanoseconds, or `NOT_TIMED` (slow calls off).
    slow: std::sync::atomic::AtomicU64,
    /// The outcome a cancelled call counts as (`outcome_code`).
    cancelled: std::sync::atomic::AtomicU8,
    pub(crate) permits: std::sync::atomic::AtomicU32,
    /// The configured `wait` in nanoseconds (the retry hint of forced-open and half-open
    /// rejections).
    pub(crate) wait: std::sync::atomic::AtomicU64,
    pub(crate) machine: Mutex<Locked>,
    pub(crate) transitions: std::sync::atomic::AtomicU64,
    /// The origin of the core's first breaker: its time window counts epochs from here.
    base: Instant,
    /// The current breaker's origin, in nanoseconds after `base`.
    offset: std::sync::atomic::AtomicU64,
}

fn outcome_code(o: Outcome) -> u8 {
    match o {
        Outcome::Success => 0,
        Outcome::Failure => 1,
        Outcome::Slow => 2,
        Outcome::Ignored => 3,
    }
}

fn outcome_of(code: u8) -> Outcome {
    match code {
        0 => Outcome::Success,
        1 => Outcome::Failure,
        2 => Outcome::Slow,
        _ => Outcome::Ignored,
    }
}

/// Cores whose breaker is gone, for the next breaker.
#[cfg(not(degrade_loom))]
static POOL: Pool<Core> = Pool::new();

#[cfg(not(degrade_loom))]
fn pool() -> &'static Pool<Core> {
    &POOL
}

/// Under loom every model makes its own objects: one pool per breaker.
#[cfg(degrade_loom)]
fn pool() -> &'static Pool<Core> {
    Box::leak(Box::new(Pool::new()))
}

/// Calls started (`PASSED`) against calls ended: the end counts are each call's last write.
const ENDED: [usize; 5] = [SUCCESS, FAILURE, SLOW, IGNORED, CANCELLED];

impl Recycle for Core {
    fn is_idle(&self) -> bool {
        self.in_flight() == 0
    }

    fn reset(&self) {
        self.counters.reset();
        self.window.clear();
        self.word.store(TAG_CLOSED, Ordering::Relaxed);
        self.deadline.store(NO_DEADLINE, Ordering::Relaxed);
        self.probes.store(0, Ordering::Relaxed);
        self.transitions
            .store(0, std::sync::atomic::Ordering::Relaxed);
        // The old breaker's subscribers see their channels close, as when a breaker is freed.
        let mut m = self.lock();
        m.events = broadcast::channel(64).0;
        m.states = watch::channel(State::Closed).0;
    }
}

/// Breakers built from one configuration get different jitter seeds.
static INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One breaker's owner: its core, and what its calls need besides (clock, classifier). The
/// layer, its services and handles share it through an `Arc`; the core goes back to the pool
/// when it drops.
pub(crate) struct Shared<C: 'static, K> {
    pub(crate) core: Pooled<Core>,
    pub(crate) clock: K,
    pub(crate) classifier: Held<C>,
    pub(crate) name: Arc<str>,
}

impl<C: 'static, K: Clock> Shared<C, K> {
    pub(crate) fn new(
        config: BreakerConfig,
        classifier: C,
        clock: K,
        name: Arc<str>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        degrade_core::rejection::register::<CircuitOpen>();
        let origin = clock.now();
        let instance = INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let seed = config.backoff.seed ^ instance.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let window = Window::new(&config.window, origin)?;
        let machine = BreakerMachine::new(config.clone(), seed)?;
        let shape = window.shape();
        let mut made = false;
        let core = pool().take_fitting(
            |core| core.window.shape() == shape && origin >= core.base,
            || {
                made = true;
                Core::new(window, origin, &config, machine, Arc::clone(&name))
            },
        );
        if !made {
            let machine = BreakerMachine::new(config.clone(), seed)?;
            core.configure(&config, machine, Arc::clone(&name), origin);
        }
        Ok(Self {
            core,
            clock,
            classifier: Held::new(classifier),
            name,
        })
    }

    /// The admission decision (see [`Core::admit`]).
    #[inline]
    pub(crate) fn admit(&self) -> Result<Ticket, CircuitOpen> {
        self.core.admit(&self.clock)
    }

    pub(crate) fn state(&self) -> (State, Option<State>) {
        self.core.state(&self.clock)
    }

    pub(crate) fn snapshot(&self) -> BreakerSnapshot {
        self.core.snapshot(&self.clock)
    }

    pub(crate) fn event(&self, event: BreakerEvent) {
        self.core.event(event, self.clock.now());
    }
}

impl<C: 'static, K> std::ops::Deref for Shared<C, K> {
    type Target = Core;

    fn deref(&self) -> &Core {
        &self.core
    }
}

impl Core {
    fn new(
        window: Window,
        origin: Instant,
        config: &BreakerConfig,
        machine: BreakerMachine,
        name: Arc<str>,
    ) -> Self {
        let core = Self {
            word: CachePadded::new(AtomicU64::new(TAG_CLOSED)),
            deadline: AtomicU64::new(NO_DEADLINE),
            probes: CachePadded::new(AtomicU64::new(0)),
            window,
            counters: ShardedCounter::new(),
            thresholds: LiveThresholds::new(machine.thresholds()),
            slow: std::sync::atomic::AtomicU64::new(NOT_TIMED),
            cancelled: std::sync::atomic::AtomicU8::new(0),
            permits: std::sync::atomic::AtomicU32::new(0),
            wait: std::sync::atomic::AtomicU64::new(0),
            machine: Mutex::new(Locked::new(machine, name)),
            transitions: std::sync::atomic::AtomicU64::new(0),
            base: origin,
            offset: std::sync::atomic::AtomicU64::new(0),
        };
        core.settings(config, origin);
        core
    }

    /// Puts a new breaker's configuration in force in a recycled core (reset, and reachable
    /// by no call yet).
    fn configure(
        &self,
        config: &BreakerConfig,
        machine: BreakerMachine,
        name: Arc<str>,
        origin: Instant,
    ) {
        self.thresholds.store(machine.thresholds());
        self.settings(config, origin);
        *self.lock() = Locked::new(machine, name);
    }

    /// What a configuration fixes besides the machine and its thresholds.
    fn settings(&self, config: &BreakerConfig, origin: Instant) {
        use std::sync::atomic::Ordering::Relaxed;
        self.slow.store(
            config.slow_call_duration.map_or(NOT_TIMED, nanos_of),
            Relaxed,
        );
        self.cancelled
            .store(outcome_code(config.cancelled.outcome()), Relaxed);
        self.permits.store(config.half_open.permits, Relaxed);
        self.wait.store(nanos_of(config.wait), Relaxed);
        let offset = origin.saturating_duration_since(self.base);
        self.offset.store(nanos_of(offset), Relaxed);
    }

    /// Calls admitted whose outcome is not recorded yet (exact once no call can start).
    pub(crate) fn in_flight(&self) -> u64 {
        let ended = ENDED
            .into_iter()
            .fold(0u64, |sum, i| sum.wrapping_add(self.counters.get(i)));
        self.counters.get(PASSED).wrapping_sub(ended)
    }

    pub(crate) fn lock(&self) -> impl std::ops::DerefMut<Target = Locked> + '_ {
        self.machine.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn offset(&self) -> u64 {
        self.offset.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The current breaker's origin.
    fn origin(&self) -> Instant {
        self.base + Duration::from_nanos(self.offset())
    }

    /// `now` on the window's own scale: the same distance after `base` as `now` is after the
    /// current breaker's origin.
    fn window_now(&self, now: Instant) -> Instant {
        now.checked_sub(Duration::from_nanos(self.offset()))
            .map_or(self.base, |at| at.max(self.base))
    }

    fn slow(&self) -> Option<Duration> {
        let n = self.slow.load(std::sync::atomic::Ordering::Relaxed);
        (n != NOT_TIMED).then(|| Duration::from_nanos(n))
    }

    /// Microseconds after the origin, rounded down (for `now`).
    pub(crate) fn micros(&self, at: Instant) -> u64 {
        let us = at.saturating_duration_since(self.origin()).as_micros();
        u64::try_from(us).unwrap_or(u64::MAX).min(DEADLINE_MASK - 1)
    }

    /// Microseconds after the origin, rounded up (for deadlines: never early).
    pub(crate) fn micros_ceil(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.origin());
        let us = d.as_micros() + u128::from(!d.subsec_nanos().is_multiple_of(1000));
        u64::try_from(us).unwrap_or(u64::MAX).min(DEADLINE_MASK - 1)
    }

    pub(crate) fn at(&self, micros: u64) -> Instant {
        self.origin() + Duration::from_micros(micros)
    }

    /// The deadline of the state of `epoch` (`NO_DEADLINE` for none), or `None` if the deadline
    /// word already belongs to another state.
    pub(crate) fn deadline_of(&self, epoch: u64) -> Option<u64> {
        let d = self.deadline.load(Ordering::Acquire);
        (d >> DEADLINE_BITS == epoch & 0xFFFF).then_some(d & DEADLINE_MASK)
    }

    #[inline]
    pub(crate) fn start<K: Clock>(&self, clock: &K) -> u64 {
        if self.slow.load(std::sync::atomic::Ordering::Relaxed) != NOT_TIMED {
            self.nanos(clock.now())
        } else {
            NOT_TIMED
        }
    }

    /// Nanoseconds after the origin.
    pub(crate) fn nanos(&self, at: Instant) -> u64 {
        let n = at.saturating_duration_since(self.base).as_nanos();
        u64::try_from(n)
            .unwrap_or(NOT_TIMED - 1)
            .saturating_sub(self.offset())
            .min(NOT_TIMED - 1)
    }

    /// The admission decision. The closed path is one load of the state word, one sharded
    /// counter increment, and (only with slow calls on) one clock read.
    #[inline]
    pub(crate) fn admit<K: Clock>(&self, clock: &K) -> Result<Ticket, CircuitOpen> {
        let word = self.word.load(Ordering::Acquire);
        if word & TAG_MASK == TAG_CLOSED {
            self.counters.add(PASSED, 1);
            return Ok(Ticket::new(
                Track::Window,
                word >> TAG_BITS,
                self.start(clock),
            ));
        }
        self.admit_slow(word, clock)
    }

    /// Whether the breaker is closed in normal mode (the only state a keyed map may forget).
    pub(crate) fn is_closed(&self) -> bool {
        self.word.load(Ordering::Acquire) & TAG_MASK == TAG_CLOSED
    }

    pub(crate) fn pass<K: Clock>(
        &self,
        track: Track,
        epoch: u64,
        clock: &K,
    ) -> Result<Ticket, CircuitOpen> {
        self.counters.add(PASSED, 1);
        if track == Track::Probe {
            self.counters.add(PROBES, 1);
        }
        Ok(Ticket::new(track, epoch, self.start(clock)))
    }

    pub(crate) fn reject(
        &self,
        state: State,
        retry_after: Duration,
    ) -> Result<Ticket, CircuitOpen> {
        self.counters.add(REJECTED, 1);
        Err(CircuitOpen::new(state, retry_after))
    }

    pub(crate) fn shadow_pass<K: Clock>(
        &self,
        epoch: u64,
        clock: &K,
    ) -> Result<Ticket, CircuitOpen> {
        self.counters.add(SHADOW_REJECTED, 1);
        self.pass(Track::Untracked, epoch, clock)
    }

    #[cold]
    #[inline(never)]
    pub(crate) fn admit_slow<K: Clock>(
        &self,
        mut word: u64,
        clock: &K,
    ) -> Result<Ticket, CircuitOpen> {
        // Each turn either decides or follows a transition; a breaker that keeps moving under
        // us for this long is treated as half-open and full.
        for attempt in 0..4 {
            if attempt == 2 {
                // Still racing transitions: the lock orders this thread after the last one.
                drop(self.lock());
                word = self.word.load(Ordering::Acquire);
            }
            let epoch = word >> TAG_BITS;
            let (mode, phase) = untag(word & TAG_MASK);
            let shadow = mode == Mode::MetricsOnly;
            match (mode, phase) {
                (Mode::ForcedOpen, _) => return self.reject(State::ForcedOpen, self.wait()),
                (Mode::Disabled, _) | (_, Phase::Closed) => {
                    return self.pass(Track::Window, epoch, clock);
                }
                (_, Phase::Open) => {
                    let now = clock.now();
                    if let Some(until) = self.deadline_of(epoch) {
                        if self.micros(now) < until {
                            if shadow {
                                return self.shadow_pass(epoch, clock);
                            }
                            return self.reject(State::Open, self.at(until) - now);
                        }
                        self.tick(now);
                    }
                }
                (_, Phase::HalfOpen) => {
                    let Some(until) = self.deadline_of(epoch) else {
                        word = self.word.load(Ordering::Acquire);
                        continue;
                    };
                    let due = until != NO_DEADLINE && {
                        let now = clock.now();
                        let due = self.micros(now) >= until;
                        if due {
                            self.tick(now);
                        }
                        due
                    };
                    if !due {
                        if self.acquire_probe(epoch) {
                            return self.pass(Track::Probe, epoch, clock);
                        }
                        let again = self.word.load(Ordering::Acquire);
                        if again == word {
                            if shadow {
                                return self.shadow_pass(epoch, clock);
                            }
                            return self.reject(State::HalfOpen, self.half_open_hint());
                        }
                    }
                }
            }
            word = self.word.load(Ordering::Acquire);
        }
        self.reject(State::HalfOpen, self.half_open_hint())
    }

    pub(crate) fn half_open_hint(&self) -> Duration {
        self.wait().min(Duration::from_secs(1))
    }

    fn wait(&self) -> Duration {
        Duration::from_nanos(self.wait.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Puts a new configuration in force (see [`BreakerMachine::reconfigure`]): the machine
    /// changes under its lock, then the lock-free copies of its thresholds and wait follow.
    /// A call recorded after this returns is judged by the new thresholds.
    pub(crate) fn reconfigure(&self, config: BreakerConfig) -> Result<(), ConfigError> {
        let mut m = self.lock();
        let wait = config.wait;
        m.reconfigure(config)?;
        self.thresholds.store(m.thresholds());
        self.wait
            .store(nanos_of(wait), std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn acquire_probe(&self, epoch: u64) -> bool {
        let e = (epoch & LOW) << 32;
        let permits = u64::from(self.permits.load(std::sync::atomic::Ordering::Relaxed));
        self.probes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                (p & !LOW == e && p & LOW < permits).then_some(p + 1)
            })
            .is_ok()
    }

    pub(crate) fn release_probe(&self, epoch: u64) {
        let e = (epoch & LOW) << 32;
        let _ = self
            .probes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                (p & !LOW == e && p & LOW > 0).then(|| p - 1)
            });
    }

    /// Records a finished (or, with `cancelled`, dropped) call. Its end count is the last
    /// write to the core: once it is visible, the core may be reused (see the module
    /// documentation).
    pub(crate) fn complete<K: Clock>(
        &self,
        ticket: Ticket,
        outcome: Outcome,
        cancelled: bool,
        clock: &K,
    ) {
        let needs_now = (ticket.start != NOT_TIMED && !cancelled)
            || (ticket.track() == Track::Window && matches!(self.window, Window::Time(_)));
        let now = needs_now.then(|| clock.now());
        let (outcome, end) = if cancelled {
            let code = self.cancelled.load(std::sync::atomic::Ordering::Relaxed);
            (outcome_of(code), CANCELLED)
        } else {
            let outcome = match (self.slow(), now) {
                (Some(slow), Some(now)) if ticket.start != NOT_TIMED => {
                    let took = self.nanos(now).saturating_sub(ticket.start);
                    outcome.slow_if(Duration::from_nanos(took), slow)
                }
                _ => outcome,
            };
            let end = match outcome {
                Outcome::Success => SUCCESS,
                Outcome::Failure => FAILURE,
                Outcome::Slow => SLOW,
                Outcome::Ignored => IGNORED,
            };
            (outcome, end)
        };
        match ticket.track() {
            Track::Window => self.record_window(ticket.epoch(), outcome, now, clock),
            Track::Probe => self.record_probe(ticket.epoch(), outcome, clock),
            Track::Untracked | Track::Done => {}
        }
        // The call's last write: nothing touches the core after it.
        self.counters.add_release(end, 1);
    }

    #[inline]
    pub(crate) fn record_window<K: Clock>(
        &self,
        epoch: u64,
        outcome: Outcome,
        now: Option<Instant>,
        clock: &K,
    ) {
        if outcome == Outcome::Ignored {
            return;
        }
        let word = self.word.load(Ordering::Acquire);
        if word >> TAG_BITS != epoch {
            // The state this call was admitted in is gone; its outcome belongs to no window.
            return;
        }
        let t = word & TAG_MASK;
        let judging = t == TAG_CLOSED || t == tag(Mode::MetricsOnly, Phase::Closed);
        let trips = match &self.window {
            Window::Consecutive(w) => {
                if outcome == Outcome::Failure {
                    let n = w.record(outcome);
                    judging
                        && self
                            .thresholds
                            .load()
                            .judge(WindowSnapshot::default(), n)
                            .is_some()
                } else {
                    // Only write the shared word when a run actually ends.
                    if w.consecutive() != 0 {
                        w.reset();
                    }
                    false
                }
            }
            Window::Count(w) => {
                w.record(outcome);
                judging && self.thresholds.load().judge(w.snapshot(), 0).is_some()
            }
            Window::Time(w) => {
                let now = self.window_now(now.unwrap_or_else(|| clock.now()));
                w.record(outcome, now);
                // A time window's snapshot reads every bucket, so it is judged after failures
                // and slow calls only: a success lowers both rates and can matter only by
                // bringing the window to `minimum_calls`, which the next failure re-checks.
                judging
                    && outcome != Outcome::Success
                    && self.thresholds.load().judge(w.snapshot(now), 0).is_some()
            }
        };
        if trips {
            self.trip(epoch, clock);
        }
    }

    fn reading(&self, now: Instant) -> (WindowSnapshot, u32) {
        self.window.reading(self.window_now(now))
    }

    /// The window crossed a threshold: let the machine decide under the lock, re-reading the
    /// window there (another thread may have tripped it already).
    #[cold]
    #[inline(never)]
    pub(crate) fn trip<K: Clock>(&self, epoch: u64, clock: &K) {
        let mut m = self.lock();
        if m.epoch() != epoch {
            return;
        }
        let now = clock.now();
        let (snapshot, consecutive) = self.reading(now);
        let t = m.on_event(
            BreakerEvent::Window {
                snapshot,
                consecutive,
            },
            now,
        );
        self.publish(&m, epoch, t);
    }

    #[cold]
    pub(crate) fn record_probe<K: Clock>(&self, epoch: u64, outcome: Outcome, clock: &K) {
        let now = clock.now();
        let mut m = self.lock();
        if m.epoch() == epoch {
            let t = m.on_event(BreakerEvent::Probe(outcome), now);
            self.publish(&m, epoch, t);
        }
        // The permit goes back only to the half-open period it came from.
        self.release_probe(epoch);
    }

    #[cold]
    pub(crate) fn tick(&self, now: Instant) {
        self.event(BreakerEvent::Tick, now);
    }

    pub(crate) fn event(&self, event: BreakerEvent, now: Instant) {
        let mut m = self.lock();
        let before = m.epoch();
        let t = m.on_event(event, now);
        self.publish(&m, before, t);
    }

    /// Publishes the machine's state (called with the lock held, so transitions are published
    /// in the order they happen).
    pub(crate) fn publish(&self, m: &Locked, before: u64, t: Option<BreakerTransition>) {
        let epoch = m.epoch();
        if epoch == before {
            return;
        }
        let phase = m.phase();
        let deadline = m.deadline().map_or(NO_DEADLINE, |d| self.micros_ceil(d));
        self.deadline.store(
            ((epoch & 0xFFFF) << DEADLINE_BITS) | deadline,
            Ordering::Release,
        );
        match phase {
            Phase::HalfOpen => self.probes.store((epoch & LOW) << 32, Ordering::Relaxed),
            // Every closed period judges its own calls.
            Phase::Closed => self.window.reset(),
            Phase::Open => {}
        }
        // Release: a thread that sees the new word also sees the deadline, the permits and the
        // emptied window.
        self.word.store(
            (epoch << TAG_BITS) | tag(m.mode(), phase),
            Ordering::Release,
        );
        let state = m.state();
        m.states.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
        if let Some(t) = t {
            self.transitions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if t.to == State::Open || t.to == State::ForcedOpen {
                tracing::warn!(
                    breaker = %m.name, from = %t.from, to = %t.to, reason = %t.reason,
                    shadow = t.shadow, wait = ?t.wait, "circuit breaker transition"
                );
            } else {
                tracing::info!(
                    breaker = %m.name, from = %t.from, to = %t.to, reason = %t.reason,
                    shadow = t.shadow, "circuit breaker transition"
                );
            }
            let _ = m.events.send(t);
        }
    }

    pub(crate) fn state<K: Clock>(&self, clock: &K) -> (State, Option<State>) {
        let now = clock.now();
        let mut m = self.lock();
        let before = m.epoch();
        let t = m.on_event(BreakerEvent::Tick, now);
        self.publish(&m, before, t);
        (m.state(), m.shadow_state())
    }

    pub(crate) fn snapshot<K: Clock>(&self, clock: &K) -> BreakerSnapshot {
        let (state, shadow_state) = self.state(clock);
        let openings = self.lock().openings();
        let (window, consecutive_failures) = self.reading(clock.now());
        let c = self.counters.snapshot();
        BreakerSnapshot {
            state,
            shadow_state,
            window,
            consecutive_failures,
            admitted: c[PASSED],
            rejected: c[REJECTED],
            shadow_rejected: c[SHADOW_REJECTED],
            probes: c[PROBES],
            successes: c[SUCCESS],
            failures: c[FAILURE],
            slow: c[SLOW],
            ignored: c[IGNORED],
            cancelled: c[CANCELLED],
            transitions: self.transitions.load(std::sync::atomic::Ordering::Relaxed),
            openings,
        }
    }
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("word", &self.word.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<C: 'static, K> fmt::Debug for Shared<C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.name)
            .field("word", &self.core.word.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}
