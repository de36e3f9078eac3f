//! The shared breaker behind every service, clone and handle: the state word, the window, the
//! probe permits, the counters, and the [`BreakerMachine`] under a lock that only transitions take.

use crate::config::{BreakerConfig, WindowConfig};
use crate::error::CircuitOpen;
use crate::state::{
    BreakerEvent, BreakerMachine, BreakerTransition, Mode, Phase, State, Thresholds,
};
use crate::sync::{AtomicU64, Mutex, Ordering};
use crossbeam_utils::CachePadded;
use degrade_core::counter::ShardedCounter;
use degrade_core::window::{ConsecutiveWindow, CountWindow, TimeWindow, WindowSnapshot};
use degrade_core::{Classifier, Clock, ConfigError, Outcome, TokioClock};
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
enum Track {
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
    word: u64,
    /// Nanoseconds after `origin` at admission, or `NOT_TIMED` (slow calls off).
    start: u64,
}

impl Ticket {
    #[inline]
    fn new(track: Track, epoch: u64, start: u64) -> Self {
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
    fn track(&self) -> Track {
        match self.word & 3 {
            0 => Track::Window,
            1 => Track::Probe,
            2 => Track::Untracked,
            _ => Track::Done,
        }
    }

    #[inline]
    fn epoch(&self) -> u64 {
        self.word >> 2
    }
}

const NOT_TIMED: u64 = u64::MAX;

enum Window {
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
}

/// Everything one breaker shares between its layer, services, futures and handles.
pub(crate) struct Shared<C, K> {
    word: CachePadded<AtomicU64>,
    /// When the open wait (or the half-open period) ends: microseconds after `origin` (low 48
    /// bits) tagged with the low 16 bits of the epoch it belongs to (see the deadline word above).
    deadline: AtomicU64,
    /// The half-open epoch (low 32 bits) above the number of probes in flight.
    probes: CachePadded<AtomicU64>,
    window: Window,
    counters: ShardedCounter<COUNTERS>,
    thresholds: Thresholds,
    slow: Option<Duration>,
    cancelled: Outcome,
    permits: u32,
    wait: Duration,
    machine: Mutex<BreakerMachine>,
    transitions: std::sync::atomic::AtomicU64,
    events: broadcast::Sender<BreakerTransition>,
    states: watch::Sender<State>,
    clock: K,
    origin: Instant,
    name: Arc<str>,
    pub(crate) classifier: C,
}

/// Breakers built from one configuration get different jitter seeds.
static INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl<C, K: Clock> Shared<C, K> {
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
        Ok(Self {
            word: CachePadded::new(AtomicU64::new(TAG_CLOSED)),
            deadline: AtomicU64::new(NO_DEADLINE),
            probes: CachePadded::new(AtomicU64::new(0)),
            window,
            counters: ShardedCounter::new(),
            thresholds: machine.thresholds(),
            slow: config.slow_call_duration,
            cancelled: config.cancelled.outcome(),
            permits: config.half_open.permits,
            wait: config.wait,
            machine: Mutex::new(machine),
            transitions: std::sync::atomic::AtomicU64::new(0),
            events: broadcast::channel(64).0,
            states: watch::channel(State::Closed).0,
            clock,
            origin,
            name,
            classifier,
        })
    }

    fn lock(&self) -> impl std::ops::DerefMut<Target = BreakerMachine> + '_ {
        self.machine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Microseconds after `origin`, rounded down (for `now`).
    fn micros(&self, at: Instant) -> u64 {
        let us = at.saturating_duration_since(self.origin).as_micros();
        u64::try_from(us).unwrap_or(u64::MAX).min(DEADLINE_MASK - 1)
    }

    /// Microseconds after `origin`, rounded up (for deadlines: never early).
    fn micros_ceil(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.origin);
        let us = d.as_micros() + u128::from(!d.subsec_nanos().is_multiple_of(1000));
        u64::try_from(us).unwrap_or(u64::MAX).min(DEADLINE_MASK - 1)
    }

    fn at(&self, micros: u64) -> Instant {
        self.origin + Duration::from_micros(micros)
    }

    /// The deadline of the state of `epoch` (`NO_DEADLINE` for none), or `None` if the deadline
    /// word already belongs to another state.
    fn deadline_of(&self, epoch: u64) -> Option<u64> {
        let d = self.deadline.load(Ordering::Acquire);
        (d >> DEADLINE_BITS == epoch & 0xFFFF).then_some(d & DEADLINE_MASK)
    }

    #[inline]
    fn start(&self) -> u64 {
        if self.slow.is_some() {
            self.nanos(self.clock.now())
        } else {
            NOT_TIMED
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        let n = at.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(n).unwrap_or(NOT_TIMED - 1)
    }

    /// The admission decision. The closed path is one load of the state word, one sharded
    /// counter increment, and (only with slow calls on) one clock read.
    #[inline]
    pub(crate) fn admit(&self) -> Result<Ticket, CircuitOpen> {
        let word = self.word.load(Ordering::Acquire);
        if word & TAG_MASK == TAG_CLOSED {
            self.counters.add(PASSED, 1);
            return Ok(Ticket::new(Track::Window, word >> TAG_BITS, self.start()));
        }
        self.admit_slow(word)
    }

    /// Whether the breaker is closed in normal mode (the only state a keyed map may forget).
    pub(crate) fn is_closed(&self) -> bool {
        self.word.load(Ordering::Acquire) & TAG_MASK == TAG_CLOSED
    }

    fn pass(&self, track: Track, epoch: u64) -> Result<Ticket, CircuitOpen> {
        self.counters.add(PASSED, 1);
        if track == Track::Probe {
            self.counters.add(PROBES, 1);
        }
        Ok(Ticket::new(track, epoch, self.start()))
    }

    fn reject(&self, state: State, retry_after: Duration) -> Result<Ticket, CircuitOpen> {
        self.counters.add(REJECTED, 1);
        Err(CircuitOpen::new(state, retry_after))
    }

    fn shadow_pass(&self, epoch: u64) -> Result<Ticket, CircuitOpen> {
        self.counters.add(SHADOW_REJECTED, 1);
        self.pass(Track::Untracked, epoch)
    }

    #[cold]
    #[inline(never)]
    fn admit_slow(&self, mut word: u64) -> Result<Ticket, CircuitOpen> {
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
                (Mode::ForcedOpen, _) => return self.reject(State::ForcedOpen, self.wait),
                (Mode::Disabled, _) | (_, Phase::Closed) => return self.pass(Track::Window, epoch),
                (_, Phase::Open) => {
                    let now = self.clock.now();
                    if let Some(until) = self.deadline_of(epoch) {
                        if self.micros(now) < until {
                            if shadow {
                                return self.shadow_pass(epoch);
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
                        let now = self.clock.now();
                        let due = self.micros(now) >= until;
                        if due {
                            self.tick(now);
                        }
                        due
                    };
                    if !due {
                        if self.acquire_probe(epoch) {
                            return self.pass(Track::Probe, epoch);
                        }
                        let again = self.word.load(Ordering::Acquire);
                        if again == word {
                            if shadow {
                                return self.shadow_pass(epoch);
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

    fn half_open_hint(&self) -> Duration {
        self.wait.min(Duration::from_secs(1))
    }

    fn acquire_probe(&self, epoch: u64) -> bool {
        let e = (epoch & LOW) << 32;
        let permits = u64::from(self.permits);
        self.probes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                (p & !LOW == e && p & LOW < permits).then_some(p + 1)
            })
            .is_ok()
    }

    fn release_probe(&self, epoch: u64) {
        let e = (epoch & LOW) << 32;
        let _ = self
            .probes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                (p & !LOW == e && p & LOW > 0).then(|| p - 1)
            });
    }

    /// Records a finished (or, with `cancelled`, dropped) call.
    pub(crate) fn complete(&self, ticket: Ticket, outcome: Outcome, cancelled: bool) {
        let needs_now = (ticket.start != NOT_TIMED && !cancelled)
            || (ticket.track() == Track::Window && matches!(self.window, Window::Time(_)));
        let now = needs_now.then(|| self.clock.now());
        let outcome = if cancelled {
            self.counters.add(CANCELLED, 1);
            self.cancelled
        } else {
            let outcome = match (self.slow, now) {
                (Some(slow), Some(now)) if ticket.start != NOT_TIMED => {
                    let took = self.nanos(now).saturating_sub(ticket.start);
                    outcome.slow_if(Duration::from_nanos(took), slow)
                }
                _ => outcome,
            };
            self.counters.add(
                match outcome {
                    Outcome::Success => SUCCESS,
                    Outcome::Failure => FAILURE,
                    Outcome::Slow => SLOW,
                    Outcome::Ignored => IGNORED,
                },
                1,
            );
            outcome
        };
        match ticket.track() {
            Track::Window => self.record_window(ticket.epoch(), outcome, now),
            Track::Probe => self.record_probe(ticket.epoch(), outcome),
            Track::Untracked | Track::Done => {}
        }
    }

    #[inline]
    fn record_window(&self, epoch: u64, outcome: Outcome, now: Option<Instant>) {
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
                judging && self.thresholds.judge(w.snapshot(), 0).is_some()
            }
            Window::Time(w) => {
                let now = now.unwrap_or_else(|| self.clock.now());
                w.record(outcome, now);
                // A time window's snapshot reads every bucket, so it is judged after failures
                // and slow calls only: a success lowers both rates and can matter only by
                // bringing the window to `minimum_calls`, which the next failure re-checks.
                judging
                    && outcome != Outcome::Success
                    && self.thresholds.judge(w.snapshot(now), 0).is_some()
            }
        };
        if trips {
            self.trip(epoch);
        }
    }

    /// The window crossed a threshold: let the machine decide under the lock, re-reading the
    /// window there (another thread may have tripped it already).
    #[cold]
    #[inline(never)]
    fn trip(&self, epoch: u64) {
        let mut m = self.lock();
        if m.epoch() != epoch {
            return;
        }
        let now = self.clock.now();
        let (snapshot, consecutive) = self.window.reading(now);
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
    fn record_probe(&self, epoch: u64, outcome: Outcome) {
        let now = self.clock.now();
        let mut m = self.lock();
        if m.epoch() == epoch {
            let t = m.on_event(BreakerEvent::Probe(outcome), now);
            self.publish(&m, epoch, t);
        }
        // The permit goes back only to the half-open period it came from.
        self.release_probe(epoch);
    }

    #[cold]
    fn tick(&self, now: Instant) {
        self.event(BreakerEvent::Tick, now);
    }

    fn event(&self, event: BreakerEvent, now: Instant) {
        let mut m = self.lock();
        let before = m.epoch();
        let t = m.on_event(event, now);
        self.publish(&m, before, t);
    }

    /// Publishes the machine's state (called with the lock held, so transitions are published
    /// in the order they happen).
    fn publish(&self, m: &BreakerMachine, before: u64, t: Option<BreakerTransition>) {
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
        self.states.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
        if let Some(t) = t {
            self.transitions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if t.to == State::Open || t.to == State::ForcedOpen {
                tracing::warn!(
                    breaker = %self.name, from = %t.from, to = %t.to, reason = %t.reason,
                    shadow = t.shadow, wait = ?t.wait, "circuit breaker transition"
                );
            } else {
                tracing::info!(
                    breaker = %self.name, from = %t.from, to = %t.to, reason = %t.reason,
                    shadow = t.shadow, "circuit breaker transition"
                );
            }
            let _ = self.events.send(t);
        }
    }

    fn state(&self) -> (State, Option<State>) {
        let now = self.clock.now();
        let mut m = self.lock();
        let before = m.epoch();
        let t = m.on_event(BreakerEvent::Tick, now);
        self.publish(&m, before, t);
        (m.state(), m.shadow_state())
    }

    fn snapshot(&self) -> BreakerSnapshot {
        let (state, shadow_state) = self.state();
        let openings = self.lock().openings();
        let (window, consecutive_failures) = self.window.reading(self.clock.now());
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

impl<C, K> fmt::Debug for Shared<C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.name)
            .field("word", &self.word.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Counters and state of one breaker.
///
/// `offered() = passed + rejected` holds exactly; every passed call ends as exactly one of
/// successes, failures, slow, ignored or cancelled once it has finished.
///
/// ```
/// use degrade_breaker::{BreakerConfig, BreakerLayer, State};
/// let layer = BreakerLayer::new(BreakerConfig::default())?;
/// let s = layer.snapshot();
/// assert_eq!((s.state, s.offered()), (State::Closed, 0));
/// # Ok::<(), degrade_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub struct BreakerSnapshot {
    /// The state (open breakers whose wait is over read as half-open).
    pub state: State,
    /// A metrics-only breaker's shadow phase.
    pub shadow_state: Option<State>,
    /// The closed window (empty for a consecutive window).
    pub window: WindowSnapshot,
    /// Failures in a row (consecutive window only).
    pub consecutive_failures: u32,
    /// Calls let through (including probes and a metrics-only breaker's shadow rejections).
    pub admitted: u64,
    /// Calls rejected.
    pub rejected: u64,
    /// Calls a metrics-only breaker let through that a real breaker would have rejected.
    pub shadow_rejected: u64,
    /// Calls let through as half-open probes.
    pub probes: u64,
    /// Calls that succeeded.
    pub successes: u64,
    /// Calls that failed.
    pub failures: u64,
    /// Calls that succeeded slowly.
    pub slow: u64,
    /// Calls the classifier ignored.
    pub ignored: u64,
    /// Calls dropped before they finished.
    pub cancelled: u64,
    /// Transitions so far.
    pub transitions: u64,
    /// Openings in a row (what the backoff grows with).
    pub openings: u32,
}

impl BreakerSnapshot {
    /// Calls seen: admitted + rejected.
    ///
    /// ```
    /// # use degrade_breaker::BreakerSnapshot;
    /// assert_eq!(BreakerSnapshot::default().offered(), 0);
    /// ```
    pub fn offered(&self) -> u64 {
        self.admitted + self.rejected
    }

    /// Calls let through whose outcome is not recorded yet.
    ///
    /// ```
    /// # use degrade_breaker::BreakerSnapshot;
    /// assert_eq!(BreakerSnapshot::default().in_flight(), 0);
    /// ```
    pub fn in_flight(&self) -> u64 {
        self.admitted.saturating_sub(
            self.successes + self.failures + self.slow + self.ignored + self.cancelled,
        )
    }
}

impl degrade_core::snapshot::Accounting for BreakerSnapshot {
    fn offered(&self) -> u64 {
        BreakerSnapshot::offered(self)
    }
    fn admitted(&self) -> u64 {
        self.admitted
    }
    fn rejected(&self) -> u64 {
        self.rejected
    }
}

/// A handle on one breaker: its state, manual control, transitions and counters, and a
/// non-tower way to guard calls ([`try_acquire`](BreakerHandle::try_acquire)).
///
/// Cheap to clone; every clone, every service of the layer, and the layer itself share one
/// breaker.
///
/// ```
/// use degrade_breaker::{BreakerConfig, BreakerLayer, State};
///
/// let handle = BreakerLayer::new(BreakerConfig::default())?.handle();
/// handle.force_open();
/// assert_eq!(handle.state(), State::ForcedOpen);
/// assert!(handle.try_acquire().is_err());
/// handle.reset();
/// assert_eq!(handle.state(), State::Closed);
/// # Ok::<(), degrade_core::ConfigError>(())
/// ```
pub struct BreakerHandle<C = degrade_core::DefaultClassifier, K = TokioClock> {
    pub(crate) shared: Arc<Shared<C, K>>,
}

impl<C, K> Clone for BreakerHandle<C, K> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<C, K> fmt::Debug for BreakerHandle<C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BreakerHandle").field(&self.shared).finish()
    }
}

impl<C, K: Clock> BreakerHandle<C, K> {
    pub(crate) fn from_shared(shared: Arc<Shared<C, K>>) -> Self {
        Self { shared }
    }

    /// The current state. An open breaker whose wait is over turns half-open here, so the
    /// state is current even when no call has come in.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer, State};
    /// let h = BreakerLayer::new(BreakerConfig::default())?.handle();
    /// assert_eq!(h.state(), State::Closed);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn state(&self) -> State {
        self.shared.state().0
    }

    /// Rejects every call until [`force_close`](Self::force_close) or [`reset`](Self::reset).
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer, State};
    /// let h = BreakerLayer::new(BreakerConfig::default())?.handle();
    /// h.force_open();
    /// assert_eq!(h.state(), State::ForcedOpen);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn force_open(&self) {
        self.shared
            .event(BreakerEvent::ForceOpen, self.shared.clock.now());
    }

    /// Closes the breaker (from any state) with an empty window; the backoff of repeated
    /// openings is kept.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer, State};
    /// let h = BreakerLayer::new(BreakerConfig::default())?.handle();
    /// h.force_open();
    /// h.force_close();
    /// assert_eq!(h.state(), State::Closed);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn force_close(&self) {
        self.shared
            .event(BreakerEvent::ForceClose, self.shared.clock.now());
    }

    /// Closes the breaker with an empty window and forgets the backoff.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer, State};
    /// let h = BreakerLayer::new(BreakerConfig::default())?.handle();
    /// h.disable();
    /// h.reset();
    /// assert_eq!(h.state(), State::Closed);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn reset(&self) {
        self.shared
            .event(BreakerEvent::Reset, self.shared.clock.now());
    }

    /// Lets every call through and keeps recording, without ever moving.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer, State};
    /// let h = BreakerLayer::new(BreakerConfig::default())?.handle();
    /// h.disable();
    /// assert_eq!(h.state(), State::Disabled);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn disable(&self) {
        self.shared
            .event(BreakerEvent::Disable, self.shared.clock.now());
    }

    /// Shadow mode: lets every call through, judges, and reports the transitions a real
    /// breaker would make (flagged `shadow`).
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer, State};
    /// let h = BreakerLayer::new(BreakerConfig::default())?.handle();
    /// h.metrics_only();
    /// assert_eq!(h.state(), State::MetricsOnly);
    /// assert_eq!(h.snapshot().shadow_state, Some(State::Closed));
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn metrics_only(&self) {
        self.shared
            .event(BreakerEvent::MetricsOnly, self.shared.clock.now());
    }

    /// Every transition from now on. A receiver that falls more than 64 transitions behind
    /// gets `RecvError::Lagged` and continues with the newest.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer, State};
    /// let h = BreakerLayer::new(BreakerConfig::default())?.handle();
    /// let mut rx = h.subscribe();
    /// h.force_open();
    /// assert_eq!(rx.try_recv().unwrap().to, State::ForcedOpen);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn subscribe(&self) -> broadcast::Receiver<BreakerTransition> {
        self.shared.events.subscribe()
    }

    /// The latest state, as a `watch` channel (for a task that only cares where the breaker
    /// is now).
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer, State};
    /// let h = BreakerLayer::new(BreakerConfig::default())?.handle();
    /// let rx = h.watch();
    /// h.disable();
    /// assert_eq!(*rx.borrow(), State::Disabled);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn watch(&self) -> watch::Receiver<State> {
        self.shared.states.subscribe()
    }

    /// Counters and state.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer};
    /// let h = BreakerLayer::new(BreakerConfig::default())?.handle();
    /// assert!(h.try_acquire().is_ok());
    /// assert_eq!(h.snapshot().admitted, 1);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn snapshot(&self) -> BreakerSnapshot {
        self.shared.snapshot()
    }

    /// The breaker's name (in its `tracing` events).
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer};
    /// let layer = BreakerLayer::builder(BreakerConfig::default()).name("db").build()?;
    /// assert_eq!(layer.handle().name(), "db");
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Asks to make one call outside tower: a [`Permit`] to record the call's outcome on, or
    /// the rejection. A permit dropped without an outcome records a cancelled call.
    ///
    /// # Errors
    ///
    /// [`CircuitOpen`] when the breaker rejects the call.
    ///
    /// ```
    /// use degrade_breaker::{BreakerConfig, BreakerLayer, WindowConfig, State};
    /// use degrade_core::Outcome;
    ///
    /// let mut config = BreakerConfig::default();
    /// config.window = WindowConfig::Consecutive { failures: 2 };
    /// let h = BreakerLayer::new(config)?.handle();
    /// for _ in 0..2 {
    ///     h.try_acquire().unwrap().record(Outcome::Failure);
    /// }
    /// assert_eq!(h.state(), State::Open);
    /// assert!(h.try_acquire().unwrap_err().retry_after > std::time::Duration::ZERO);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn try_acquire(&self) -> Result<Permit<C, K>, CircuitOpen> {
        let ticket = self.shared.admit()?;
        Ok(Permit {
            shared: Arc::clone(&self.shared),
            ticket,
        })
    }
}

/// The right to make one call, handed out by a breaker: records the call's outcome with
/// [`record`](Permit::record), or a cancelled call when dropped without one — so a caller that
/// gives up can never leave a half-open breaker waiting for a probe that will not come.
///
/// ```
/// use degrade_breaker::{BreakerConfig, BreakerLayer};
/// use degrade_core::Outcome;
///
/// let h = BreakerLayer::new(BreakerConfig::default())?.handle();
/// let permit = h.try_acquire().unwrap();
/// assert!(!permit.is_probe());
/// drop(permit); // cancelled
/// assert_eq!(h.snapshot().cancelled, 1);
/// h.try_acquire().unwrap().record(Outcome::Success);
/// assert_eq!(h.snapshot().successes, 1);
/// # Ok::<(), degrade_core::ConfigError>(())
/// ```
pub struct Permit<C, K: Clock> {
    shared: Arc<Shared<C, K>>,
    ticket: Ticket,
}

impl<C, K: Clock> Permit<C, K> {
    pub(crate) fn new(shared: Arc<Shared<C, K>>, ticket: Ticket) -> Self {
        Self { shared, ticket }
    }

    /// Whether this call is a half-open probe.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer};
    /// let h = BreakerLayer::new(BreakerConfig::default())?.handle();
    /// assert!(!h.try_acquire().unwrap().is_probe());
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn is_probe(&self) -> bool {
        self.ticket.track() == Track::Probe
    }

    /// Records the call's outcome. With slow calls on, a success that took at least the slow
    /// duration since the permit was granted is recorded as slow.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer}; use degrade_core::Outcome;
    /// let h = BreakerLayer::new(BreakerConfig::default())?.handle();
    /// h.try_acquire().unwrap().record(Outcome::Failure);
    /// assert_eq!(h.snapshot().failures, 1);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn record(mut self, outcome: Outcome) {
        let ticket = self.ticket;
        self.ticket.word = 3; // Track::Done: the drop that follows records nothing
        self.shared.complete(ticket, outcome, false);
    }

    /// Records a call's result through the breaker's classifier.
    ///
    /// ```
    /// # use degrade_breaker::{BreakerConfig, BreakerLayer};
    /// let h = BreakerLayer::new(BreakerConfig::default())?.handle();
    /// let result: Result<(), std::io::Error> = Err(std::io::ErrorKind::Other.into());
    /// h.try_acquire().unwrap().record_result(&result);
    /// assert_eq!(h.snapshot().failures, 1);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn record_result<T, E>(self, result: &Result<T, E>)
    where
        C: Classifier<T, E>,
    {
        let outcome = match result {
            Ok(res) => self.shared.classifier.classify_response(res),
            Err(err) => self.shared.classifier.classify_error(err),
        };
        self.record(outcome);
    }
}

impl<C, K: Clock> Drop for Permit<C, K> {
    fn drop(&mut self) {
        if self.ticket.track() != Track::Done {
            self.shared.complete(self.ticket, Outcome::Ignored, true);
        }
    }
}

impl<C, K: Clock> fmt::Debug for Permit<C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("probe", &self.is_probe())
            .finish_non_exhaustive()
    }
}
