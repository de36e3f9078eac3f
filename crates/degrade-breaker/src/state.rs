//! The pure state machine: `(machine, event, now) → transition`, no atomics, no clock, no I/O.
//!
//! Every decision that moves a breaker from one state to another is made here, and only here;
//! the service around it ([`BreakerHandle`](crate::BreakerHandle)) adds the lock-free closed
//! path, the window, the permits and the notifications. Being pure, the machine can be tested
//! event by event without a runtime:
//!
//! ```
//! use degrade_breaker::state::{BreakerEvent, BreakerMachine};
//! use degrade_breaker::{BreakerConfig, State, WindowConfig};
//! use degrade_core::window::WindowSnapshot;
//! use std::time::Duration;
//! use tokio::time::Instant;
//!
//! let mut config = BreakerConfig::default();
//! config.window = WindowConfig::Count { size: 10 };
//! config.minimum_calls = 4;
//! config.wait = Duration::from_secs(5);
//! let t0 = Instant::now();
//! let mut m = BreakerMachine::new(config, 0)?;
//!
//! let half_failed = WindowSnapshot { calls: 4, failures: 2, slow: 0 };
//! let t = m.on_event(BreakerEvent::Window { snapshot: half_failed, consecutive: 0 }, t0).unwrap();
//! assert_eq!((t.from, t.to), (State::Closed, State::Open));
//! assert!(m.on_event(BreakerEvent::Tick, t0 + Duration::from_secs(4)).is_none());
//! let t = m.on_event(BreakerEvent::Tick, t0 + Duration::from_secs(5)).unwrap();
//! assert_eq!(t.to, State::HalfOpen);
//! # Ok::<(), degrade_core::ConfigError>(())
//! ```
//!
//! # States and modes
//!
//! The machine keeps a *mode* (normal, forced open, disabled, metrics-only) and, under it, a
//! *phase* (closed, open, half-open). In normal mode the phase is the state. Forced open rejects
//! everything; disabled passes everything and still records, but never moves. Metrics-only runs
//! the phases in the shadow: it judges and reports transitions (flagged `shadow`) exactly as
//! normal mode would, but admits every call — for tuning thresholds on live traffic.

use crate::config::{BreakerConfig, TimeoutTarget, WindowConfig};
use degrade_core::clock::saturating_add;
use degrade_core::window::WindowSnapshot;
use degrade_core::{ConfigError, Outcome};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;
use tokio::time::Instant;

/// What a breaker is doing.
///
/// ```
/// use degrade_breaker::State;
/// assert_eq!(State::HalfOpen.to_string(), "half-open");
/// assert!(State::Open.rejects());
/// assert!(!State::MetricsOnly.rejects());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum State {
    /// Calls pass and are judged.
    #[default]
    Closed,
    /// Calls are rejected until the wait is over.
    Open,
    /// A few probes pass; their outcomes close or reopen the breaker.
    HalfOpen,
    /// Every call is rejected until the breaker is closed or reset by hand.
    ForcedOpen,
    /// Every call passes and is recorded; the breaker never moves.
    Disabled,
    /// Every call passes; the breaker judges and reports shadow transitions.
    MetricsOnly,
}

impl State {
    /// Whether the state rejects calls (all or some: half-open rejects beyond its permits).
    ///
    /// ```
    /// # use degrade_breaker::State;
    /// assert!(State::ForcedOpen.rejects());
    /// assert!(!State::Closed.rejects());
    /// ```
    pub fn rejects(self) -> bool {
        matches!(self, State::Open | State::HalfOpen | State::ForcedOpen)
    }

    /// The lower-case name (`"half-open"`).
    ///
    /// ```
    /// # use degrade_breaker::State;
    /// assert_eq!(State::ForcedOpen.as_str(), "forced-open");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half-open",
            State::ForcedOpen => "forced-open",
            State::Disabled => "disabled",
            State::MetricsOnly => "metrics-only",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a transition happened.
///
/// ```
/// use degrade_breaker::Reason;
/// let r = Reason::FailureRate { rate: 0.6, threshold: 0.5 };
/// assert_eq!(r.to_string(), "failure rate 0.6 reached threshold 0.5");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[non_exhaustive]
pub enum Reason {
    /// The window's failure rate reached the threshold.
    FailureRate {
        /// The observed rate.
        rate: f64,
        /// The configured threshold.
        threshold: f64,
    },
    /// The window's slow-call rate reached the threshold.
    SlowRate {
        /// The observed rate.
        rate: f64,
        /// The configured threshold.
        threshold: f64,
    },
    /// This many failures in a row.
    ConsecutiveFailures(u32),
    /// The open wait is over.
    WaitElapsed,
    /// Enough probes succeeded.
    ProbesSucceeded,
    /// Too many probes failed.
    ProbeFailed,
    /// The breaker was half-open for `half_open.max_duration`.
    HalfOpenTimeout,
    /// A hand on the handle (force open, force close, reset, disable, metrics-only).
    Manual,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::FailureRate { rate, threshold } => {
                write!(f, "failure rate {rate} reached threshold {threshold}")
            }
            Reason::SlowRate { rate, threshold } => {
                write!(f, "slow-call rate {rate} reached threshold {threshold}")
            }
            Reason::ConsecutiveFailures(n) => write!(f, "{n} failures in a row"),
            Reason::WaitElapsed => f.write_str("open wait elapsed"),
            Reason::ProbesSucceeded => f.write_str("probes succeeded"),
            Reason::ProbeFailed => f.write_str("probe failed"),
            Reason::HalfOpenTimeout => f.write_str("half-open for too long"),
            Reason::Manual => f.write_str("manual"),
        }
    }
}

/// One change of state.
///
/// `shadow` transitions are those of a metrics-only breaker: `from` and `to` are the phases it
/// would have been in, while it kept admitting every call.
///
/// ```
/// use degrade_breaker::{Reason, State, BreakerTransition};
/// let t = BreakerTransition::new(State::Closed, State::Open, Reason::ConsecutiveFailures(5),
///     tokio::time::Instant::now());
/// assert_eq!(t.to_string(), "closed -> open (5 failures in a row)");
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct BreakerTransition {
    /// The state left.
    pub from: State,
    /// The state entered.
    pub to: State,
    /// Why.
    pub reason: Reason,
    /// When.
    pub at: Instant,
    /// Whether this is a metrics-only breaker's shadow transition.
    pub shadow: bool,
    /// The wait of the opening this transition starts (for transitions to open).
    pub wait: Option<Duration>,
}

impl BreakerTransition {
    /// A (non-shadow) transition.
    ///
    /// ```
    /// # use degrade_breaker::{Reason, State, BreakerTransition};
    /// let t = BreakerTransition::new(State::Open, State::HalfOpen, Reason::WaitElapsed,
    ///     tokio::time::Instant::now());
    /// assert!(!t.shadow);
    /// ```
    pub fn new(from: State, to: State, reason: Reason, at: Instant) -> Self {
        Self {
            from,
            to,
            reason,
            at,
            shadow: false,
            wait: None,
        }
    }
}

impl fmt::Display for BreakerTransition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shadow = if self.shadow { "shadow " } else { "" };
        write!(f, "{shadow}{} -> {} ({})", self.from, self.to, self.reason)
    }
}

/// An event for the [`BreakerMachine`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum BreakerEvent {
    /// A reading of the closed window: judged against the thresholds.
    Window {
        /// The window's calls.
        snapshot: WindowSnapshot,
        /// Failures in a row (for a consecutive window).
        consecutive: u32,
    },
    /// Time passed: ends an open wait or a half-open period that ran out.
    Tick,
    /// The outcome of a half-open probe.
    Probe(Outcome),
    /// Reject everything until closed by hand.
    ForceOpen,
    /// Close now, keeping the backoff of repeated openings.
    ForceClose,
    /// Close now and forget the backoff.
    Reset,
    /// Pass and record everything, never move.
    Disable,
    /// Pass everything, judge in the shadow.
    MetricsOnly,
}

/// The phase under the mode: closed, open or half-open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Closed,
    Open,
    HalfOpen,
}

impl Phase {
    fn state(self) -> State {
        match self {
            Phase::Closed => State::Closed,
            Phase::Open => State::Open,
            Phase::HalfOpen => State::HalfOpen,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Normal,
    ForcedOpen,
    Disabled,
    MetricsOnly,
}

/// The thresholds a closed window is judged by, kept apart so the lock-free closed path can
/// ask "would this trip?" before it takes the lock to let the [`BreakerMachine`] decide.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Thresholds {
    pub(crate) consecutive: Option<u32>,
    pub(crate) minimum_calls: u64,
    pub(crate) failure_rate: f64,
    pub(crate) slow_rate: Option<f64>,
}

impl Thresholds {
    fn new(config: &BreakerConfig) -> Self {
        Self {
            consecutive: match config.window {
                WindowConfig::Consecutive { failures } => Some(failures),
                _ => None,
            },
            minimum_calls: u64::from(config.minimum_calls),
            failure_rate: config.failure_rate,
            slow_rate: config.slow_call_duration.map(|_| config.slow_call_rate),
        }
    }

    /// Whether this reading opens the breaker, and why.
    #[inline]
    pub(crate) fn judge(&self, snapshot: WindowSnapshot, consecutive: u32) -> Option<Reason> {
        if let Some(limit) = self.consecutive {
            return (consecutive >= limit).then_some(Reason::ConsecutiveFailures(consecutive));
        }
        if snapshot.calls < self.minimum_calls || snapshot.calls == 0 {
            return None;
        }
        // A window without failures (or slow calls) has a rate of exactly 0, so the division,
        // whose latency dominates the closed path of a healthy breaker, is skipped when the
        // comparison is already known; the result is the same either way.
        if snapshot.failures > 0 || self.failure_rate <= 0.0 {
            let failure = snapshot.failures as f64 / snapshot.calls as f64;
            if failure >= self.failure_rate {
                return Some(Reason::FailureRate {
                    rate: failure,
                    threshold: self.failure_rate,
                });
            }
        }
        let threshold = self.slow_rate?;
        if snapshot.slow == 0 && threshold > 0.0 {
            return None;
        }
        let slow = snapshot.slow as f64 / snapshot.calls as f64;
        (slow >= threshold).then_some(Reason::SlowRate {
            rate: slow,
            threshold,
        })
    }
}

/// The breaker's state machine. See the [module](self) documentation.
///
/// ```
/// use degrade_breaker::state::{BreakerEvent, BreakerMachine};
/// use degrade_breaker::{BreakerConfig, State};
/// let mut m = BreakerMachine::new(BreakerConfig::default(), 7)?;
/// let t = m.on_event(BreakerEvent::ForceOpen, tokio::time::Instant::now()).unwrap();
/// assert_eq!(t.to, State::ForcedOpen);
/// assert_eq!(m.state(), State::ForcedOpen);
/// # Ok::<(), degrade_core::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct BreakerMachine {
    config: BreakerConfig,
    thresholds: Thresholds,
    seed: u64,
    mode: Mode,
    phase: Phase,
    /// Bumped on every change of mode or phase.
    epoch: u64,
    /// Openings in a row (reset when the breaker closes by itself or is reset).
    openings: u32,
    /// Openings ever, mixed into the jitter so repeated runs of n openings differ.
    total_openings: u64,
    /// End of the open wait (phase Open) or of the half-open period (phase HalfOpen).
    deadline: Option<Instant>,
    probe_successes: u32,
    probe_failures: u32,
}

impl BreakerMachine {
    /// A closed machine. `seed` is mixed into the jitter (breakers built from one configuration
    /// should pass different seeds).
    ///
    /// # Errors
    ///
    /// The configuration's [`ConfigError`], if it is invalid.
    ///
    /// ```
    /// # use degrade_breaker::{state::BreakerMachine, BreakerConfig, State};
    /// let m = BreakerMachine::new(BreakerConfig::default(), 0)?;
    /// assert_eq!(m.state(), State::Closed);
    /// let mut bad = BreakerConfig::default();
    /// bad.wait = std::time::Duration::ZERO;
    /// assert_eq!(BreakerMachine::new(bad, 0).unwrap_err().field(), "wait");
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn new(config: BreakerConfig, seed: u64) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            thresholds: Thresholds::new(&config),
            config,
            seed,
            mode: Mode::Normal,
            phase: Phase::Closed,
            epoch: 0,
            openings: 0,
            total_openings: 0,
            deadline: None,
            probe_successes: 0,
            probe_failures: 0,
        })
    }

    /// The current state.
    ///
    /// ```
    /// # use degrade_breaker::{state::BreakerMachine, BreakerConfig, State};
    /// assert_eq!(BreakerMachine::new(BreakerConfig::default(), 0)?.state(), State::Closed);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn state(&self) -> State {
        match self.mode {
            Mode::Normal => self.phase.state(),
            Mode::ForcedOpen => State::ForcedOpen,
            Mode::Disabled => State::Disabled,
            Mode::MetricsOnly => State::MetricsOnly,
        }
    }

    /// The phase a metrics-only breaker is in, in the shadow (`None` in other modes).
    ///
    /// ```
    /// # use degrade_breaker::{state::{BreakerEvent, BreakerMachine}, BreakerConfig, State};
    /// let mut m = BreakerMachine::new(BreakerConfig::default(), 0)?;
    /// assert_eq!(m.shadow_state(), None);
    /// m.on_event(BreakerEvent::MetricsOnly, tokio::time::Instant::now());
    /// assert_eq!(m.shadow_state(), Some(State::Closed));
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn shadow_state(&self) -> Option<State> {
        (self.mode == Mode::MetricsOnly).then(|| self.phase.state())
    }

    /// When the open wait ends (phase open) or the half-open period runs out (phase
    /// half-open with `max_duration`).
    ///
    /// ```
    /// # use degrade_breaker::{state::BreakerMachine, BreakerConfig};
    /// assert_eq!(BreakerMachine::new(BreakerConfig::default(), 0)?.deadline(), None);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Openings in a row (what the backoff grows with).
    ///
    /// ```
    /// # use degrade_breaker::{state::BreakerMachine, BreakerConfig};
    /// assert_eq!(BreakerMachine::new(BreakerConfig::default(), 0)?.openings(), 0);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn openings(&self) -> u32 {
        self.openings
    }

    /// A number bumped on every change of state (or shadow phase): anything recorded under an
    /// older epoch belongs to a state that is gone.
    ///
    /// ```
    /// # use degrade_breaker::{state::{BreakerEvent, BreakerMachine}, BreakerConfig};
    /// let mut m = BreakerMachine::new(BreakerConfig::default(), 0)?;
    /// m.on_event(BreakerEvent::Disable, tokio::time::Instant::now());
    /// assert_eq!(m.epoch(), 1);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The configuration.
    ///
    /// ```
    /// # use degrade_breaker::{state::BreakerMachine, BreakerConfig};
    /// let m = BreakerMachine::new(BreakerConfig::default(), 0)?;
    /// assert_eq!(m.config().minimum_calls, 100);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// Puts a new configuration in force, or changes nothing and returns the [`ConfigError`]
    /// naming the field (see [`BreakerConfig::live_change`] for what may change). A pure step:
    /// no state changes and no transition is made.
    ///
    /// The new thresholds judge the next window reading; an open wait already running keeps
    /// its deadline and the next opening waits under the new `wait` and `backoff` (the count
    /// of openings in a row is kept); a half-open period in progress compares its probe counts
    /// with the new `successes` / `failures` at its next probe outcome, and a new
    /// `max_duration` applies from the next half-open period.
    ///
    /// ```
    /// use degrade_breaker::state::{BreakerEvent, BreakerMachine};
    /// use degrade_breaker::{BreakerConfig, State};
    /// use degrade_core::window::WindowSnapshot;
    ///
    /// let now = tokio::time::Instant::now();
    /// let mut config = BreakerConfig::default();
    /// config.minimum_calls = 10;
    /// let mut m = BreakerMachine::new(config.clone(), 0)?;
    /// let reading = BreakerEvent::Window {
    ///     snapshot: WindowSnapshot { calls: 10, failures: 3, slow: 0 },
    ///     consecutive: 0,
    /// };
    /// assert!(m.on_event(reading, now).is_none()); // 30 % < 50 %
    /// config.failure_rate = 0.25;
    /// m.reconfigure(config)?;
    /// assert_eq!(m.on_event(reading, now).unwrap().to, State::Open);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn reconfigure(&mut self, config: BreakerConfig) -> Result<(), ConfigError> {
        self.config.live_change(&config)?;
        self.thresholds = Thresholds::new(&config);
        self.config = config;
        Ok(())
    }

    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    pub(crate) fn thresholds(&self) -> Thresholds {
        self.thresholds
    }

    /// The wait of the `n`-th opening in a row: backoff, cap, then jitter.
    ///
    /// ```
    /// # use degrade_breaker::{state::BreakerMachine, BreakerConfig};
    /// # use std::time::Duration;
    /// let mut c = BreakerConfig::default();
    /// c.wait = Duration::from_secs(1);
    /// c.backoff.multiplier = 2.0;
    /// c.backoff.max_wait = Duration::from_secs(5);
    /// let m = BreakerMachine::new(c, 0)?;
    /// assert_eq!(m.wait_for(1, 0), Duration::from_secs(1));
    /// assert_eq!(m.wait_for(3, 0), Duration::from_secs(4));
    /// assert_eq!(m.wait_for(9, 0), Duration::from_secs(5));
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn wait_for(&self, openings: u32, nonce: u64) -> Duration {
        let b = &self.config.backoff;
        let base = self.config.wait.as_secs_f64();
        let exp = i32::try_from(openings.saturating_sub(1)).unwrap_or(i32::MAX);
        let grown = base * b.multiplier.powi(exp);
        let capped = grown.min(b.max_wait.as_secs_f64());
        let unit = (splitmix(self.seed ^ splitmix(nonce)) >> 11) as f64 / (1u64 << 53) as f64;
        let jittered = capped * (1.0 - b.jitter * unit);
        // Finite and non-negative by construction, but `f64` has 53 bits: a long `max_wait`
        // rounds up on the way through seconds, so clamp again in `Duration`. A wait is never
        // zero (the configuration refuses one), however small jitter makes it.
        Duration::try_from_secs_f64(jittered)
            .map_or(b.max_wait, |w| w.min(b.max_wait))
            .max(Duration::from_nanos(1))
    }

    /// Feeds one event; returns the transition it caused, if any.
    ///
    /// ```
    /// # use degrade_breaker::{state::{BreakerEvent, BreakerMachine}, BreakerConfig, State};
    /// # use degrade_core::Outcome;
    /// let mut m = BreakerMachine::new(BreakerConfig::default(), 0)?;
    /// // A probe outcome in the closed state is not a probe: nothing happens.
    /// assert!(m.on_event(BreakerEvent::Probe(Outcome::Failure), tokio::time::Instant::now()).is_none());
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    pub fn on_event(&mut self, event: BreakerEvent, now: Instant) -> Option<BreakerTransition> {
        let judging = matches!(self.mode, Mode::Normal | Mode::MetricsOnly);
        match event {
            BreakerEvent::Window {
                snapshot,
                consecutive,
            } if judging && self.phase == Phase::Closed => {
                let reason = self.thresholds.judge(snapshot, consecutive)?;
                Some(self.open(reason, now))
            }
            BreakerEvent::Tick if judging => match (self.phase, self.deadline) {
                (Phase::Open, Some(until)) if now >= until => {
                    let deadline = self
                        .config
                        .half_open
                        .max_duration
                        .map(|d| saturating_add(now, d));
                    self.probe_successes = 0;
                    self.probe_failures = 0;
                    Some(self.set_phase(Phase::HalfOpen, deadline, Reason::WaitElapsed, now))
                }
                (Phase::HalfOpen, Some(until)) if now >= until => {
                    Some(match self.config.half_open.on_timeout {
                        TimeoutTarget::Open => self.open(Reason::HalfOpenTimeout, now),
                        TimeoutTarget::Closed => {
                            self.openings = 0;
                            self.set_phase(Phase::Closed, None, Reason::HalfOpenTimeout, now)
                        }
                    })
                }
                _ => None,
            },
            BreakerEvent::Probe(outcome) if judging && self.phase == Phase::HalfOpen => {
                let failed = match outcome {
                    Outcome::Failure => true,
                    Outcome::Slow => self.thresholds.slow_rate.is_some(),
                    Outcome::Success => false,
                    Outcome::Ignored => return None,
                };
                if failed {
                    self.probe_failures += 1;
                    (self.probe_failures >= self.config.half_open.failures)
                        .then(|| self.open(Reason::ProbeFailed, now))
                } else {
                    self.probe_successes += 1;
                    (self.probe_successes >= self.config.half_open.successes).then(|| {
                        self.openings = 0;
                        self.set_phase(Phase::Closed, None, Reason::ProbesSucceeded, now)
                    })
                }
            }
            BreakerEvent::ForceOpen => self.set_mode(Mode::ForcedOpen, now),
            BreakerEvent::ForceClose => self.set_mode(Mode::Normal, now),
            BreakerEvent::Reset => {
                self.openings = 0;
                self.set_mode(Mode::Normal, now)
            }
            BreakerEvent::Disable => self.set_mode(Mode::Disabled, now),
            BreakerEvent::MetricsOnly => self.set_mode(Mode::MetricsOnly, now),
            _ => None,
        }
    }

    fn open(&mut self, reason: Reason, now: Instant) -> BreakerTransition {
        self.openings = self.openings.saturating_add(1);
        self.total_openings = self.total_openings.wrapping_add(1);
        let wait = self.wait_for(self.openings, self.total_openings);
        // A configured wait may be as long as `Duration::MAX`: "open until reset", not a panic.
        let mut t = self.set_phase(Phase::Open, Some(saturating_add(now, wait)), reason, now);
        t.wait = Some(wait);
        t
    }

    fn set_phase(
        &mut self,
        phase: Phase,
        deadline: Option<Instant>,
        reason: Reason,
        now: Instant,
    ) -> BreakerTransition {
        let from = self.phase.state();
        self.phase = phase;
        self.deadline = deadline;
        self.epoch += 1;
        let mut t = BreakerTransition::new(from, phase.state(), reason, now);
        t.shadow = self.mode == Mode::MetricsOnly;
        t
    }

    /// Every manual change starts the new mode from a closed phase.
    fn set_mode(&mut self, mode: Mode, now: Instant) -> Option<BreakerTransition> {
        let from = self.state();
        let changed = self.mode != mode || self.phase != Phase::Closed;
        self.mode = mode;
        self.phase = Phase::Closed;
        self.deadline = None;
        self.epoch += 1;
        (changed && from != self.state())
            .then(|| BreakerTransition::new(from, self.state(), Reason::Manual, now))
    }
}

/// splitmix64: a fixed, well-mixed hash of one word.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        let mut c = BreakerConfig {
            window: WindowConfig::Count { size: 10 },
            minimum_calls: 4,
            wait: Duration::from_secs(10),
            ..BreakerConfig::default()
        };
        c.half_open.successes = 2;
        c
    }

    fn snap(calls: u64, failures: u64, slow: u64) -> BreakerEvent {
        BreakerEvent::Window {
            snapshot: WindowSnapshot {
                calls,
                failures,
                slow,
            },
            consecutive: 0,
        }
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn closed_waits_for_minimum_calls() {
        let t0 = Instant::now();
        let mut m = BreakerMachine::new(config(), 0).unwrap();
        assert!(m.on_event(snap(3, 3, 0), t0).is_none());
        assert!(m.on_event(snap(4, 1, 0), t0).is_none());
        let t = m.on_event(snap(4, 2, 0), t0).unwrap();
        assert_eq!(t.to, State::Open);
        assert_eq!(t.wait, Some(10 * S));
        assert_eq!(m.deadline(), Some(t0 + 10 * S));
    }

    #[test]
    fn slow_rate_trips_only_when_configured() {
        let t0 = Instant::now();
        let mut m = BreakerMachine::new(config(), 0).unwrap();
        assert!(m.on_event(snap(4, 0, 4), t0).is_none());
        let mut c = config();
        c.slow_call_duration = Some(S);
        c.slow_call_rate = 0.5;
        let mut m = BreakerMachine::new(c, 0).unwrap();
        let t = m.on_event(snap(4, 0, 2), t0).unwrap();
        assert!(matches!(t.reason, Reason::SlowRate { .. }));
    }

    #[test]
    fn half_open_closes_after_successes_and_reopens_with_backoff() {
        let t0 = Instant::now();
        let mut c = config();
        c.backoff.multiplier = 2.0;
        let mut m = BreakerMachine::new(c, 0).unwrap();
        m.on_event(snap(4, 4, 0), t0).unwrap();
        let t1 = t0 + 10 * S;
        assert_eq!(
            m.on_event(BreakerEvent::Tick, t1).unwrap().to,
            State::HalfOpen
        );
        let t = m
            .on_event(BreakerEvent::Probe(Outcome::Failure), t1)
            .unwrap();
        assert_eq!((t.to, t.wait), (State::Open, Some(20 * S)));
        let t2 = t1 + 20 * S;
        m.on_event(BreakerEvent::Tick, t2).unwrap();
        assert!(
            m.on_event(BreakerEvent::Probe(Outcome::Ignored), t2)
                .is_none()
        );
        assert!(
            m.on_event(BreakerEvent::Probe(Outcome::Success), t2)
                .is_none()
        );
        let t = m
            .on_event(BreakerEvent::Probe(Outcome::Success), t2)
            .unwrap();
        assert_eq!((t.from, t.to), (State::HalfOpen, State::Closed));
        assert_eq!(m.openings(), 0);
    }

    #[test]
    fn half_open_timeout_goes_to_target() {
        let t0 = Instant::now();
        let mut c = config();
        c.half_open.max_duration = Some(5 * S);
        c.half_open.on_timeout = TimeoutTarget::Closed;
        let mut m = BreakerMachine::new(c, 0).unwrap();
        m.on_event(snap(4, 4, 0), t0);
        m.on_event(BreakerEvent::Tick, t0 + 10 * S).unwrap();
        assert!(m.on_event(BreakerEvent::Tick, t0 + 14 * S).is_none());
        let t = m.on_event(BreakerEvent::Tick, t0 + 15 * S).unwrap();
        assert_eq!((t.to, t.reason), (State::Closed, Reason::HalfOpenTimeout));
    }

    #[test]
    fn jitter_is_deterministic_and_bounded() {
        let mut c = config();
        c.backoff.jitter = 0.5;
        let a = BreakerMachine::new(c.clone(), 1).unwrap();
        let b = BreakerMachine::new(c, 2).unwrap();
        let waits: Vec<_> = (0..50).map(|n| a.wait_for(1, n)).collect();
        assert!(waits.iter().all(|w| *w > 5 * S && *w <= 10 * S));
        assert!(waits.windows(2).any(|w| w[0] != w[1]));
        assert_eq!(a.wait_for(1, 3), a.wait_for(1, 3));
        assert_ne!(a.wait_for(1, 3), b.wait_for(1, 3));
    }

    #[test]
    fn modes_never_judge_and_return_closed() {
        let t0 = Instant::now();
        let mut m = BreakerMachine::new(config(), 0).unwrap();
        assert_eq!(
            m.on_event(BreakerEvent::Disable, t0).unwrap().to,
            State::Disabled
        );
        assert!(m.on_event(snap(10, 10, 0), t0).is_none());
        assert_eq!(
            m.on_event(BreakerEvent::ForceOpen, t0).unwrap().to,
            State::ForcedOpen
        );
        assert!(m.on_event(BreakerEvent::Tick, t0 + 100 * S).is_none());
        let t = m.on_event(BreakerEvent::ForceClose, t0).unwrap();
        assert_eq!((t.from, t.to), (State::ForcedOpen, State::Closed));
        assert!(m.on_event(BreakerEvent::Reset, t0).is_none());
    }

    #[test]
    fn metrics_only_reports_shadow_transitions() {
        let t0 = Instant::now();
        let mut m = BreakerMachine::new(config(), 0).unwrap();
        m.on_event(BreakerEvent::MetricsOnly, t0).unwrap();
        let t = m.on_event(snap(4, 4, 0), t0).unwrap();
        assert!(t.shadow);
        assert_eq!((t.from, t.to), (State::Closed, State::Open));
        assert_eq!(m.state(), State::MetricsOnly);
        assert_eq!(m.shadow_state(), Some(State::Open));
    }
}
