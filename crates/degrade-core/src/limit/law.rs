//! The control law: a pure function of (state, window of observations, now) → new limit.
//!
//! Everything here is plain arithmetic on numbers the [`Limiter`](super::Limiter) collected;
//! nothing reads a clock or touches an atomic, so the law is tested (and simulated) without a
//! runtime.

use super::LimitConfig;
use std::time::Duration;
use tokio::time::Instant;

/// What the limiter saw during one window: the timed completions and whether demand reached
/// the limit.
///
/// ```
/// use degrade_core::limit::Window;
/// use std::time::Duration;
///
/// let mut w = Window::default();
/// w.record(Duration::from_millis(40), 8, false);
/// w.record(Duration::from_millis(44), 8, false);
/// assert_eq!(w.samples, 2);
/// assert_eq!(w.mean_latency(), Some(Duration::from_millis(42)));
/// assert_eq!(w.mean_concurrency(), Some(8.0));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct Window {
    /// Timed completions (latency samples).
    pub samples: u32,
    /// Sum of their latencies, in nanoseconds.
    pub latency_sum_ns: u64,
    /// Sum of the squared latencies, in microseconds squared (for the noise of the mean).
    pub latency_sq_sum_us: u64,
    /// Sum over the samples of the requests in flight in the inner service when each was
    /// admitted (itself included): the concurrency each latency was measured at.
    pub concurrency_sum: u64,
    /// Samples admitted at low concurrency (at most an eighth of the limit in flight, or
    /// alone): nothing queued in front of them in any backend, so their latency is the
    /// service's own.
    pub low_samples: u32,
    /// Sum of the low-concurrency samples' latencies, in nanoseconds.
    pub low_latency_sum_ns: u64,
    /// Samples admitted at up to half the limit while no baseline is known (see
    /// [`Law::half_concurrency`]), the low ones included: the first window's view of the
    /// service when too few requests found it nearly empty.
    pub half_samples: u32,
    /// Sum of the half-limit samples' latencies, in nanoseconds.
    pub half_latency_sum_ns: u64,
    /// A request had to wait or was refused during the window: demand reached the limit.
    pub binding: bool,
    /// Completions that failed quickly (faster than the baseline): they say nothing about
    /// capacity and are not latency samples.
    pub fast_failures: u32,
    /// The longest latency of the samples, in nanoseconds.
    pub max_latency_ns: u64,
    /// Samples the [sample cap](Law::sample_cap) cut (longer than the cap when recorded).
    pub capped_samples: u32,
    /// What the cap cut off those samples: the sum of their latencies beyond the cap, in
    /// nanoseconds. With [`capped_samples`](Window::capped_samples) it tells how much the cap
    /// lowered the window's mean: a window recorded under a cap learnt before the service
    /// slowed down reads the slower service low (a 40 ms, log-normal 0.5 service averages
    /// 34 ms under the cap of an 18.5 ms baseline, 43 ms under its own).
    ///
    /// ```
    /// # use degrade_core::limit::Window; use std::time::Duration;
    /// let mut w = Window::default();
    /// let cap = Some(Duration::from_millis(50));
    /// w.record_capped(Duration::from_millis(40), cap, 4, false);
    /// w.record_capped(Duration::from_millis(60), cap, 4, false);
    /// w.record_capped(Duration::from_millis(90), cap, 4, false);
    /// assert_eq!(w.capped_samples, 2);
    /// assert_eq!(w.capped_excess_ns, 50_000_000); // 10 ms + 40 ms
    /// assert_eq!(w.latency_sum_ns, 140_000_000); // 40 + 50 + 50 ms
    /// ```
    pub capped_excess_ns: u64,
    /// The highest concurrency at which a sample met the [target](Law::target_latency): the
    /// service was seen to serve that many requests at once without a queue (0 when none did,
    /// or before a baseline is known). See [`Law::served`].
    pub served_concurrency: u32,
    /// Time the window covered.
    pub elapsed: Duration,
    /// Requests the limiter rejected during the window, whatever the reason: refused at once,
    /// past their wait, or evicted from a full queue. With the completions (by Little's law,
    /// the window's concurrency over its latency) it gives the share rejected
    /// ([`Law::rejected_share`]).
    pub rejected: u32,
}

impl Window {
    /// Adds one latency sample measured at `concurrency` requests in flight.
    ///
    /// ```
    /// # use degrade_core::limit::Window; use std::time::Duration;
    /// let mut w = Window::default();
    /// w.record(Duration::from_millis(5), 1, false);
    /// assert_eq!(w.latency_sum_ns, 5_000_000);
    /// ```
    pub fn record(&mut self, latency: Duration, concurrency: u32, low: bool) {
        self.record_capped(latency, None, concurrency, low);
    }

    /// Adds one latency sample measured at `concurrency` requests in flight, counting at most
    /// `cap` of it in the sums (see [`Law::sample_cap`]); the longest latency is kept whole.
    ///
    /// ```
    /// # use degrade_core::limit::Window; use std::time::Duration;
    /// let mut w = Window::default();
    /// let cap = Some(Duration::from_millis(100));
    /// w.record_capped(Duration::from_millis(40), cap, 8, false);
    /// w.record_capped(Duration::from_millis(400), cap, 8, false);
    /// assert_eq!(w.mean_latency(), Some(Duration::from_millis(70)));
    /// assert_eq!(w.max_latency_ns, 400_000_000);
    /// ```
    pub fn record_capped(
        &mut self,
        latency: Duration,
        cap: Option<Duration>,
        concurrency: u32,
        low: bool,
    ) {
        self.samples = self.samples.saturating_add(1);
        let whole = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.max_latency_ns = self.max_latency_ns.max(whole);
        let ns = cap.map_or(whole, |c| {
            whole.min(u64::try_from(c.as_nanos()).unwrap_or(u64::MAX))
        });
        if ns < whole {
            self.capped_samples = self.capped_samples.saturating_add(1);
            self.capped_excess_ns = self.capped_excess_ns.saturating_add(whole - ns);
        }
        self.latency_sum_ns = self.latency_sum_ns.saturating_add(ns);
        let us = ns / 1_000;
        self.latency_sq_sum_us = self.latency_sq_sum_us.saturating_add(us.saturating_mul(us));
        self.concurrency_sum = self.concurrency_sum.saturating_add(u64::from(concurrency));
        if low {
            self.low_samples = self.low_samples.saturating_add(1);
            self.low_latency_sum_ns = self.low_latency_sum_ns.saturating_add(ns);
        }
    }

    /// The standard error of the mean latency, in seconds (`None` below two samples).
    ///
    /// ```
    /// # use degrade_core::limit::Window; use std::time::Duration;
    /// let mut w = Window::default();
    /// w.record(Duration::from_millis(10), 1, false);
    /// w.record(Duration::from_millis(30), 1, false);
    /// let se = w.standard_error().unwrap();
    /// assert!((se - 0.010).abs() < 1e-6, "{se}");
    /// ```
    pub fn standard_error(&self) -> Option<f64> {
        if self.samples < 2 {
            return None;
        }
        let n = f64::from(self.samples);
        let mean_us = self.latency_sum_ns as f64 / 1_000.0 / n;
        let var = (self.latency_sq_sum_us as f64 / n - mean_us * mean_us).max(0.0) * n / (n - 1.0);
        Some((var / n).sqrt() / 1e6)
    }

    /// Mean latency of the low-concurrency samples (`None` without any).
    ///
    /// ```
    /// # use degrade_core::limit::Window; use std::time::Duration;
    /// let mut w = Window::default();
    /// w.record(Duration::from_millis(10), 1, true);
    /// w.record(Duration::from_millis(30), 9, false);
    /// assert_eq!(w.low_mean_latency(), Some(Duration::from_millis(10)));
    /// ```
    pub fn low_mean_latency(&self) -> Option<Duration> {
        (self.low_samples > 0)
            .then(|| Duration::from_nanos(self.low_latency_sum_ns / u64::from(self.low_samples)))
    }

    /// Counts a sample, recorded with [`record_capped`](Window::record_capped), as admitted
    /// at up to [half the limit](Law::half_concurrency) (at most `cap` of it, as there).
    ///
    /// ```
    /// # use degrade_core::limit::Window; use std::time::Duration;
    /// let mut w = Window::default();
    /// let cap = Some(Duration::from_millis(100));
    /// w.record_capped(Duration::from_millis(40), cap, 6, false);
    /// w.record_half(Duration::from_millis(40), cap);
    /// w.record_capped(Duration::from_millis(300), cap, 6, false);
    /// w.record_half(Duration::from_millis(300), cap);
    /// w.record_capped(Duration::from_millis(90), cap, 14, false);
    /// assert_eq!(w.half_samples, 2);
    /// assert_eq!(w.half_mean_latency(), Some(Duration::from_millis(70)));
    /// ```
    pub fn record_half(&mut self, latency: Duration, cap: Option<Duration>) {
        let capped = cap.map_or(latency, |c| latency.min(c));
        let ns = u64::try_from(capped.as_nanos()).unwrap_or(u64::MAX);
        self.half_samples = self.half_samples.saturating_add(1);
        self.half_latency_sum_ns = self.half_latency_sum_ns.saturating_add(ns);
    }

    /// Counts a sample that met the [target latency](Law::target_latency) at `concurrency`
    /// requests in flight (see [`served_concurrency`](Window::served_concurrency)).
    ///
    /// ```
    /// # use degrade_core::limit::Window;
    /// let mut w = Window::default();
    /// w.record_served(6);
    /// w.record_served(4);
    /// assert_eq!(w.served_concurrency, 6);
    /// ```
    pub fn record_served(&mut self, concurrency: u32) {
        self.served_concurrency = self.served_concurrency.max(concurrency);
    }

    /// Mean latency of the half-limit samples (`None` without any).
    ///
    /// ```
    /// # use degrade_core::limit::Window; use std::time::Duration;
    /// let mut w = Window::default();
    /// assert_eq!(w.half_mean_latency(), None);
    /// w.record_half(Duration::from_millis(30), None);
    /// assert_eq!(w.half_mean_latency(), Some(Duration::from_millis(30)));
    /// ```
    pub fn half_mean_latency(&self) -> Option<Duration> {
        (self.half_samples > 0)
            .then(|| Duration::from_nanos(self.half_latency_sum_ns / u64::from(self.half_samples)))
    }

    /// Mean latency of the samples (`None` without samples).
    ///
    /// ```
    /// # use degrade_core::limit::Window;
    /// assert_eq!(Window::default().mean_latency(), None);
    /// ```
    pub fn mean_latency(&self) -> Option<Duration> {
        (self.samples > 0)
            .then(|| Duration::from_nanos(self.latency_sum_ns / u64::from(self.samples)))
    }

    /// Mean concurrency the samples were measured at (`None` without samples).
    ///
    /// ```
    /// # use degrade_core::limit::Window;
    /// assert_eq!(Window::default().mean_concurrency(), None);
    /// ```
    pub fn mean_concurrency(&self) -> Option<f64> {
        (self.samples > 0).then(|| self.concurrency_sum as f64 / f64::from(self.samples))
    }
}

/// Samples a window needs before the law acts on it: the mean of fewer is too noisy to tell a
/// queue from chance.
pub(crate) const MIN_SAMPLES: u32 = 16;
/// The shortest window: the law moves the limit at most a hundred times a second, however
/// fast the service (the latency of a microsecond service is mostly noise of the host).
const MIN_WINDOW: Duration = Duration::from_millis(10);
/// The most samples a window waits for, however noisy the latencies.
const MAX_SAMPLES: u32 = 128;
/// A window also lasts at least this many baseline latencies, so that a change of the limit
/// has reached the inner service before its effect is judged.
const MIN_WINDOW_BASELINES: u32 = 2;
/// A window with too few samples still closes after this many baseline latencies (a quiet
/// service); it then only refreshes the state, never moves the limit.
const MAX_WINDOW_BASELINES: u32 = 200;
/// The largest cut in one window: a single noisy window cannot take more than half.
const MAX_CUT: f64 = 0.5;
/// A window filled the limit when its samples' mean concurrency reached this share of it:
/// under overload requests wait for every slot that frees, and the mean stays within a request
/// or two of the limit.
const FILLED: f64 = 0.75;
/// A probe window runs at this share of the limit: below the knee when the limit sits up to a
/// third above it, and a small limit keeps most of its capacity for the window (at half, a
/// limit of 2-3 on 2 cores lost half of it for a window of 40-90 samples: 3.7 points of
/// goodput per 3 s at 3x in the simulator). A probe that finds the service faster is
/// followed by another, so a limit further above the knee gets there in a few.
const PROBE_SHARE: f64 = 0.75;
/// A window at no more than this share of the limit ran below the knee by itself and counts
/// as a probe.
const LOW_WINDOW_SHARE: f64 = 0.6;
/// A cut from above the knee stops at it when the window's latency is within this factor of
/// what a queue of the excess over the knee explains (see [`Law::observe`]).
const KNEE_RISE: f64 = 1.5;
/// A probe that found the service faster calls for another, lower one only when it found it
/// faster by at least this share of the tolerance (see [`Law::observe`]).
const RECHECK_GAIN: f64 = 0.5;
/// Windows between probes, when no window ran that low by itself.
const PROBE_EVERY: u32 = 32;
/// A critical request may wait this many queueing-delay targets (see [`Law::max_wait`]).
const CRITICAL_WAITS: u32 = 4;

/// The least a critical request may wait under a queueing-delay `target` (see
/// [`Law::max_wait`]; the limiter's provisional target at a cold start uses it too).
pub(crate) fn critical_wait(target: Duration) -> Duration {
    target.saturating_mul(CRITICAL_WAITS)
}
/// A request may wait for a slot up to `queue_delay` times the longer of the baseline and this
/// share of the [tail](Law::wait_scale) (the typical longest latency of a window in which
/// nothing queued).
const TAIL_SHARE: f64 = 0.5;
/// ... and at most `queue_delay` times this many baselines.
const TAIL_MAX_BASELINES: f64 = 4.0;
/// How far each window in which nothing queued moves the tail towards its longest latency.
const TAIL_GAIN: f64 = 0.25;
/// While under this share of the requests are refused ([`Law::rejected_share`]), demand is
/// about capacity, not above it, and the wait for a slot is [`LIGHT_WAIT`] times as long.
const LIGHT_SHARE: f64 = 0.15;
/// How much longer a request may wait for a slot while demand is about capacity (see
/// [`Law::queue_target`]).
const LIGHT_WAIT: f64 = 1.5;
/// While at least [`LIGHT_SHARE`] of the requests are refused, demand is above capacity, and a
/// request other than a critical one may wait this share of the plain target (see
/// [`Law::queue_target`])...
const OVER_WAIT: f64 = 0.6;
/// ... but never less than this many completions' time at the limit (the baseline over the
/// limit), nor more than the plain target.
const OVER_WAIT_COMPLETIONS: f64 = 3.0;
/// How far each window moves the [share rejected](Law::rejected_share) towards its own.
const SHARE_GAIN: f64 = 0.25;
/// How far above the tolerance over the concurrency served at the target a limit demand did
/// not fill may stay, in requests (see [`Law::served`]): half a request, the least that always
/// leaves a whole request above the concurrency served once rounded (2 served: 2.2 + 0.5, a
/// limit of 3; 8 served: 9.3, a limit of 9).
const UNTESTED_HEADROOM: f64 = 0.5;
/// How far a faster window pulls the baseline down.
const DOWN_GAIN: f64 = 0.5;
/// How far a window at the baseline's concurrency moves it.
const REFINE_GAIN: f64 = 0.25;
/// Low-concurrency samples a window needs to move the baseline with them.
const MIN_LOW_SAMPLES: u32 = 4;
/// A window read as a queue or a slower service whose latencies spread more than this many
/// times the service's own did changed within it (a slowdown half-way, a queue forming at
/// once): its spread is the change's, and the next window needs only the samples the service's
/// own spread asks for. A queue that merely stands (a CPU-shared service over its cores) and a
/// service whose own latencies spread widely (log-normal costs) spread a window's latencies
/// less than that, and their windows keep their length: shorter ones there made the cuts
/// noisier and refused critical requests (two CPU-shared cores at 4x: 92.4 % answered), or
/// taught a slower baseline from a mean of 25 log-normal samples, a tenth low.
const SPREAD_CHANGE: f64 = 2.0;
/// A difference counts once it exceeds this many standard errors of the window's mean.
const NOISE_Z: f64 = 2.0;
/// A cut counts as a test of the baseline when the concurrency fell by at least this factor.
const PROBE_CUT: f64 = 0.8;
/// Under queueing, latency falls in proportion to concurrency (elasticity 1); when it fell by
/// less than this share of the concurrency's fall, the latency is not ours: the service itself
/// got slower, and the baseline moves up to it.
const QUEUE_ELASTICITY: f64 = 1.0 / 3.0;

/// The smallest rise of latency the law reads as a queue, in seconds, whatever the baseline.
///
/// A request that waits in any queue a concurrency limit can shorten — the runtime's, the
/// kernel's run queue, a lock's wait list — waits at least one context switch (a wake-up of a
/// parked task or thread costs about a microsecond), and the two clock reads that time a
/// request cost tens of nanoseconds and vary by as much. So a rise of latency below a
/// microsecond is the host's timing noise (cache misses, clock cost, an interrupt), not a queue:
/// in a service of 100 ns the tolerance alone (10 ns) is within that noise, and cutting on it
/// would drive the limit below the concurrency the callers actually use. In a service of
/// milliseconds it is a thousandth of the tolerance and changes nothing.
const QUEUE_FLOOR: f64 = 1e-6;

/// The state of the control law.
///
/// The limit moves by a gradient, as in Envoy's adaptive concurrency filter and Netflix's
/// Gradient2: each window it is multiplied by `(1 + tolerance) / ratio`, where `ratio` is the
/// window's mean latency over the baseline (the latency of the service when nothing queues in
/// it), clamped so a window can at most halve it and grow it by `1 + tolerance` (more in a
/// streak of windows that all grew, and at least half a request) — and it only grows while
/// demand reaches it. So the limit settles where the service's latency is `1 + tolerance`
/// times its no-load latency: the knee, where the service is busy and nothing waits in it.
///
/// A cut from above the concurrency the service last met the target at (with the limit full;
/// before any such window, the highest a request was seen to meet it at: [`Law::served`])
/// stops there when a queue of the excess explains the rise (within 1.5×: heavy-tailed costs
/// swing the mean that much); a larger rise is a slower service and cuts further.
///
/// The baseline is the service's own latency, learnt from windows that ran below the knee:
/// every 32 windows the law probes at three quarters of the limit if no window ran below it
/// by itself, and again a quarter lower while that finds the service faster. When the
/// service gets faster (capacity comes back) the window that shows it ran at the limit, with
/// whatever queue the old baseline allowed in it; the law then re-checks at three quarters of
/// that concurrency, and again while that finds the service faster, before it grows the limit
/// on the new baseline.
///
/// Two kinds of slower window are not read as a queue. A rise below a microsecond is the
/// host's timing noise (a service of 100 ns keeps the limit its callers use). And a window that
/// did not fill the limit, at less than the concurrency the service last served at the target
/// with the limit full, is a slower host (a late timer, a neighbour on the same cores): it
/// leaves the limit alone, so the callers' next burst is not refused; a real queue grows until
/// it fills the limit, and that window cuts.
///
/// A window slower by more than a queue of one or two requests explains (over 1.5 times the
/// target), at no more than the concurrency the service last met the target at, is a service
/// that got slower or smaller: the law cuts as for a queue, and runs the next window as a
/// probe at three quarters of that concurrency's share without a queue. If the service lost
/// slots, the probe is still slow in proportion and the cut stands; if it got slower, the
/// probe is about as slow, the law learns the slower latency as the baseline and gives the cut
/// back — a quarter of the slots idle for one window instead of half of them.
///
/// ```
/// use degrade_core::limit::{Law, LimitConfig, Window};
/// use std::time::Duration;
/// use tokio::time::Instant;
///
/// let mut law = Law::new(LimitConfig::default());
/// let now = Instant::now();
/// // A service that is 40 ms at any concurrency up to 8, and queues beyond.
/// let mut limit = law.limit();
/// for i in 0..200 {
///     let n = limit.min(30) as f64;
///     let latency = Duration::from_secs_f64(0.040 * (n / 8.0).max(1.0));
///     let mut w = Window::default();
///     for _ in 0..32 { w.record(latency, n as u32, false); }
///     w.binding = true;
///     w.elapsed = Duration::from_millis(100);
///     law.observe(&w, now + Duration::from_millis(100 * i));
///     limit = law.limit();
/// }
/// assert!((8..=10).contains(&limit), "{limit}");
/// ```
#[derive(Debug, Clone)]
pub struct Law {
    config: LimitConfig,
    limit: f64,
    /// No-load latency, seconds.
    baseline: Option<f64>,
    /// The concurrency the baseline was last confirmed at: a window at no more concurrency
    /// sees the service as it is without a queue.
    baseline_concurrency: f64,
    /// The baseline comes from a window with too few samples to trust.
    tentative: bool,
    /// Windows since one ran well below the limit (or probed): the baseline is only learnt
    /// below the knee, so a limit that stays above it must be probed below it now and then.
    since_low: u32,
    /// The limit to restore after a probe window (`Some` while probing).
    probing: Option<f64>,
    /// The probe due at the end of this window runs at this concurrency ([`PROBE_SHARE`] of
    /// the one a baseline the service just lowered was learnt at, or of the last probe's
    /// when it found the service faster), rather than at that share of the limit.
    recheck: Option<f64>,
    /// Consecutive windows that grew the limit: growth speeds up while nothing queues.
    growing: u32,
    /// Where the current streak of cuts started, or its latest window whose fall of latency
    /// read as a queue's: (mean concurrency, mean latency).
    previous: Option<(f64, f64)>,
    /// The mean concurrency of the latest window that filled the limit and met the target:
    /// the service was seen to serve that many at once without a queue.
    knee: Option<f64>,
    /// The highest concurrency at which a request was seen to meet the target, ever (0 until
    /// one did): the service serves at least that many at once without a queue.
    served: u32,
    /// Latest window's mean latency over the baseline.
    ratio: Option<f64>,
    /// The typical longest latency of a window in which nothing queued, seconds (a moving
    /// average; `None` before such a window): how far the service's own latencies reach.
    tail: Option<f64>,
    /// The mean latency of the last window judged (seconds): what a critical request's wait
    /// scales with ([`max_wait`](Law::max_wait)).
    recent: Option<f64>,
    /// The share of the requests offered that the limiter rejected, a moving average over
    /// windows (see [`Law::rejected_share`]).
    rejected_share: f64,
    /// The spread of the service's own latencies: the coefficient of variation of windows in
    /// which nothing queued (`None` before such a window; up at once to a wider window's, down
    /// a quarter of the way to a narrower one's). See [`Law::samples_needed`].
    spread: Option<f64>,
    /// The longest latency of the latest window, seconds: the next window lasts at least that
    /// long, so that its slowest requests (admitted within it or the window before) finish
    /// inside it and the mean is not biased towards the fast ones.
    longest: f64,
    /// Samples the next window needs: enough for its mean to resolve the tolerance given the
    /// spread of the service's latencies.
    needed: u32,
    last_update: Option<Instant>,
}

impl Law {
    /// A law at the configuration's initial limit, with no baseline yet.
    ///
    /// ```
    /// # use degrade_core::limit::{Law, LimitConfig};
    /// assert_eq!(Law::new(LimitConfig::default()).limit(), LimitConfig::default().initial);
    /// ```
    pub fn new(config: LimitConfig) -> Self {
        let limit = f64::from(config.initial.clamp(config.min, config.max));
        Self {
            config,
            limit,
            baseline: None,
            baseline_concurrency: 0.0,
            tentative: false,
            // The first full window probes below the limit: the initial limit is a guess.
            since_low: PROBE_EVERY - 1,
            probing: None,
            recheck: None,
            growing: 0,
            previous: None,
            knee: None,
            served: 0,
            ratio: None,
            tail: None,
            recent: None,
            rejected_share: 1.0,
            spread: None,
            needed: MIN_SAMPLES,
            longest: 0.0,
            last_update: None,
        }
    }

    /// The concurrency limit: always within `[min, max]`.
    ///
    /// ```
    /// # use degrade_core::limit::{Law, LimitConfig};
    /// let law = Law::new(LimitConfig::default());
    /// assert!(law.limit() >= 1);
    /// ```
    pub fn limit(&self) -> u32 {
        // The nearest whole number to the law's value: flooring ran the service up to one
        // request short of the concurrency the law found (a limit of 2.9 admitted 2 on a
        // 2-slot backend, a third of its capacity lost; worst goodput of six seeds 69 % there,
        // 89 % rounded). Within [min, max] by construction (integers); the cast cannot truncate.
        self.limit.round() as u32
    }

    /// The no-load latency learnt so far.
    ///
    /// ```
    /// # use degrade_core::limit::{Law, LimitConfig};
    /// assert_eq!(Law::new(LimitConfig::default()).baseline(), None);
    /// ```
    pub fn baseline(&self) -> Option<Duration> {
        self.baseline.map(Duration::from_secs_f64)
    }

    /// The latest window's mean latency over the baseline (1.0: nothing queues).
    ///
    /// ```
    /// # use degrade_core::limit::{Law, LimitConfig};
    /// assert_eq!(Law::new(LimitConfig::default()).latency_ratio(), None);
    /// ```
    pub fn latency_ratio(&self) -> Option<f64> {
        self.ratio
    }

    /// The most of one latency sample the window's mean counts (`None` until a baseline is
    /// known): the latency at which the law already makes its largest cut, the target
    /// (`1 + tolerance` baselines plus a microsecond of timing noise) over `MAX_CUT`: 2.2
    /// baselines by default for any service slower than a few microseconds. A slower sample
    /// cannot make the cut larger, but when request costs are heavy-tailed (one in ten costs ten times as much) the few
    /// costly ones dominate the mean and its noise: the mean then swings by more than the
    /// tolerance from one window to the next, the law cannot tell the knee from chance, grows
    /// past it and cuts far below it. Capped, every sample still moves the mean when a queue
    /// delays it, and the baseline (learnt from the same capped means) is compared like with
    /// like.
    ///
    /// ```
    /// # use degrade_core::limit::{Law, LimitConfig, Window};
    /// # use std::time::Duration;
    /// let mut law = Law::new(LimitConfig::default());
    /// assert_eq!(law.sample_cap(), None);
    /// let mut w = Window::default();
    /// for _ in 0..20 { w.record(Duration::from_millis(10), 1, true); }
    /// law.observe(&w, tokio::time::Instant::now());
    /// assert_eq!(law.sample_cap(), Some(Duration::from_micros(22_002)));
    /// ```
    pub fn sample_cap(&self) -> Option<Duration> {
        self.baseline.map(|b| Duration::from_secs_f64(self.cap(b)))
    }

    /// The [`sample_cap`](Self::sample_cap) of a `baseline` (seconds).
    fn cap(&self, baseline: f64) -> f64 {
        self.target(baseline) / MAX_CUT
    }

    /// The latency the limit settles at: `1 + tolerance` baselines plus a microsecond of timing
    /// noise (`None` until a baseline is known). A request that took no longer met it: nothing
    /// queued in front of it that the limit could have shortened (see [`Law::served`]).
    ///
    /// ```
    /// # use degrade_core::limit::{Law, LimitConfig, Window};
    /// # use std::time::Duration;
    /// let mut law = Law::new(LimitConfig::default());
    /// assert_eq!(law.target_latency(), None);
    /// let mut w = Window::default();
    /// for _ in 0..20 { w.record(Duration::from_millis(10), 1, true); }
    /// law.observe(&w, tokio::time::Instant::now());
    /// assert_eq!(law.target_latency(), Some(Duration::from_micros(11_001)));
    /// ```
    pub fn target_latency(&self) -> Option<Duration> {
        self.baseline
            .map(|b| Duration::from_secs_f64(self.target(b)))
    }

    /// The highest concurrency at which a request met the [target](Law::target_latency), over
    /// every window so far (0 until one did): the service was seen to serve that many requests
    /// at once without a queue, so it has at least that much parallelism.
    ///
    /// It bounds a limit that demand does not fill: such a window leaves the limit at most
    /// `served × (1 + tolerance) + ½`, and a limit above that only by windows that fill it. A
    /// limit nothing has tested — the configured initial guess, or one grown while demand was
    /// light — is otherwise a promise the service may not keep: a step from light load to
    /// overload admits that many at once, and every request beyond the service's own slots
    /// queues inside it (twice the service time at the onset of a 1.5x overload of an 8-slot
    /// backend behind the initial limit of 16) until a window has shown the queue and cut. As
    /// TCP's congestion-window validation (RFC 7661): a window the sender did not use is not
    /// known to be safe, so it decays towards what was used.
    ///
    /// ```
    /// use degrade_core::limit::{Law, LimitConfig, Window};
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    ///
    /// let mut law = Law::new(LimitConfig::default());
    /// let now = Instant::now();
    /// // Light load on an 8-slot, 40 ms service: up to 8 in flight, all at the baseline.
    /// for i in 0..4 {
    ///     let mut w = Window::default();
    ///     for n in 1..=20u32 {
    ///         let c = 1 + n % 8;
    ///         w.record(Duration::from_millis(40), c, c <= law.low_concurrency());
    ///         if law.target_latency().is_some() {
    ///             w.record_served(c);
    ///         }
    ///     }
    ///     w.elapsed = Duration::from_millis(200);
    ///     law.observe(&w, now + Duration::from_millis(200 * i));
    /// }
    /// assert_eq!(law.served(), 8);
    /// // The initial limit of 16 was never used: it comes down to 8 x 1.1 + 0.5, rounded.
    /// assert_eq!(law.limit(), 9);
    /// ```
    pub fn served(&self) -> u32 {
        self.served
    }

    /// The latency the limit settles at for a `baseline` (seconds): `1 + tolerance` times it,
    /// plus the [`QUEUE_FLOOR`] below which a rise of latency is timing noise, not a queue.
    fn target(&self, baseline: f64) -> f64 {
        baseline * (1.0 + self.config.tolerance) + QUEUE_FLOOR
    }

    /// How long a request may wait for a slot: `queue_delay` times the baseline, or times half
    /// the typical longest latency of a window in which nothing queued when that is longer (a
    /// service with a heavy tail of costly requests), at most four baselines (`None` until a
    /// baseline is known, when a request that finds the limit full is refused at once); half
    /// again as long while demand is about capacity (see [`rejected_share`](Law::rejected_share)),
    /// and 0.6 times as long above it, but no less than three completions' time at the limit
    /// (the baseline over the limit) nor more than the plain target. A critical waiter has the
    /// [plain target](Law::plain_queue_target) at any load.
    ///
    /// Why shorter above capacity: the queue stands, a slot that frees finds a waiter at once,
    /// and a longer wait only adds to the latency of the requests served. Behind an adaptive
    /// limit it adds to a queue inside the service too: the limit settles where the latency is
    /// `1 + tolerance` baselines, a request or two queued inside the service over its slots
    /// (9-10 on the overload bench's 8 × 40 ms), and a request that waited most of the plain
    /// target and then found two ahead of it inside the service was the admitted tail.
    /// Overload bench (`cargo xtask bench overload --quick --scenario S --only degrade --tail`,
    /// AMD EPYC, 2 vCPU): `capacity-halves` 1.5x p99 1.36-1.45x the unloaded in five runs
    /// (1.52-1.58x in four before), restored 1.37-1.50x (1.56-1.65x); `steps` 1x goodput
    /// 92.3 % in four runs (92.3-92.5 %), 2x-4x p99 1.00-1.15x (1.15-1.27x). The floor
    /// keeps a waiter through the gaps between completions on a small backend (2 slots × 200
    /// ms: a completion every 100 ms at best), where 0.6 of the plain target alone cost the
    /// simulator's range of backends 1-2 points of goodput at 1.5x.
    ///
    /// Why the tail: a wait for a slot counts against the latency the callers already see, and
    /// when one request in ten costs ten times as much, slots free unevenly — none for a while
    /// when several costly requests hold them, then several at once. A wait of half a
    /// baseline refused the requests that came during the lull, and the slots that freed
    /// next stood idle until new ones arrived (the overload bench's `mixed` at 1.5×: 91–95 %
    /// of capacity; with the tail, 95.6–95.9 % in three runs, the admitted p99 1.11–1.12× the
    /// unloaded, which the costly requests set). A service whose latencies are about
    /// constant has a tail near its baseline, and waits as before.
    ///
    /// ```
    /// use degrade_core::limit::{Law, LimitConfig, Window};
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    ///
    /// let mut law = Law::new(LimitConfig::default());
    /// assert_eq!(law.queue_target(), None);
    /// let ms = Duration::from_millis;
    /// let now = Instant::now();
    /// let mut w = Window::default();
    /// for _ in 0..20 { w.record(ms(10), 1, true); }
    /// law.observe(&w, now);
    /// // Half the 10 ms baseline is the plain target (a critical waiter's); nothing is known to
    /// // fit yet (the share refused starts at 1), so the others wait 0.6 of it.
    /// assert_eq!(law.plain_queue_target(), Some(ms(5)));
    /// assert_eq!(law.queue_target(), Some(ms(3)));
    /// // One request in ten costs 100 ms: the slots free unevenly, and waits may be longer.
    /// let mut w = Window::default();
    /// for i in 0..40 {
    ///     let latency = if i % 10 == 0 { ms(100) } else { ms(10) };
    ///     w.record_capped(latency, law.sample_cap(), 1, true);
    /// }
    /// law.observe(&w, now + ms(400));
    /// let wait = law.plain_queue_target().unwrap();
    /// assert!(wait > ms(15) && wait <= law.baseline().unwrap() * 2, "{wait:?}");
    /// assert_eq!(law.queue_target(), Some(wait.mul_f64(0.6)));
    /// ```
    pub fn queue_target(&self) -> Option<Duration> {
        let plain = self.plain_queue_target()?;
        if self.rejected_share < LIGHT_SHARE {
            return Some(plain.mul_f64(LIGHT_WAIT));
        }
        // Above capacity: the queue stands, a slot that frees finds a waiter at once, and a
        // longer wait only adds to the latency of the requests served. A waiter still needs
        // to outlast the gaps between completions, or the slots stand idle between them.
        let gaps = self.baseline.unwrap_or_default() * OVER_WAIT_COMPLETIONS / self.limit.max(1.0);
        Some(
            plain
                .mul_f64(OVER_WAIT)
                .max(Duration::from_secs_f64(gaps).min(plain)),
        )
    }

    /// The plain queueing-delay target, whatever the [share rejected](Law::rejected_share):
    /// `queue_delay` times the wait's scale (see [`queue_target`](Law::queue_target)), a
    /// critical waiter's target. Critical waiters are served first and wait long only when
    /// critical requests alone fill the limit, where a longer target adds to the latency of
    /// every one of them (the overload bench's `critical-only` read its 1.5x p99 1.40-1.52x
    /// the unloaded with the longer target at an overload's onset, 1.29-1.30x with this one,
    /// 1.25-1.30x before the longer wait); a shorter one refuses critical requests that a
    /// transient (an onset, a cut) kept waiting.
    ///
    /// ```
    /// use degrade_core::limit::{Law, LimitConfig, Window};
    /// use std::time::Duration;
    ///
    /// let mut law = Law::new(LimitConfig::default());
    /// assert_eq!(law.plain_queue_target(), None);
    /// let mut w = Window::default();
    /// for _ in 0..20 { w.record(Duration::from_millis(40), 1, true); }
    /// law.observe(&w, tokio::time::Instant::now());
    /// assert_eq!(law.plain_queue_target(), Some(Duration::from_millis(20)));
    /// // Nothing is known to fit yet (the share refused starts at 1): the others wait less.
    /// assert_eq!(law.queue_target(), Some(Duration::from_millis(12)));
    /// ```
    pub fn plain_queue_target(&self) -> Option<Duration> {
        self.baseline
            .map(|b| Duration::from_secs_f64(self.wait_scale(b) * self.config.queue_delay))
    }

    /// The queueing-delay target of a waiter of `priority`: the
    /// [`queue_target`](Law::queue_target), or for a critical waiter the
    /// [`plain_queue_target`](Law::plain_queue_target). The limiter publishes the critical
    /// target and every other priority's (`Limiter::target_ns`).
    pub(crate) fn queue_target_for(&self, priority: crate::Priority) -> Option<Duration> {
        if priority == crate::Priority::Critical {
            self.plain_queue_target()
        } else {
            self.queue_target()
        }
    }

    /// The share of the requests offered that the limiter rejected, whatever the reason
    /// (refused at once, past their wait, or evicted), a moving average over windows: each moves it a quarter of the
    /// way to its own share, the requests it completed counted by Little's law (its mean
    /// concurrency times its length over its mean latency). It starts at 1: nothing is known
    /// to fit yet.
    ///
    /// Under it the law tells demand about capacity from demand above it. Above capacity, at
    /// least `1 - 1/load` of the requests must be refused (a third at 1.5x), and a longer wait
    /// only adds to the latency of those served. About capacity, the requests refused are a
    /// burst's tail, which the slots take once the burst has passed: while under
    /// `LIGHT_SHARE` (15 %) are refused, a request may wait `LIGHT_WAIT` (1.5) times as
    /// long ([`queue_target`](Law::queue_target); a critical request keeps the target it has
    /// away from capacity, as in [`max_wait`](Law::max_wait)). In the overload bench's `steps`
    /// on 8 slots x 40 ms, the 1x phase served 92.3-92.5 % of capacity in six runs where it
    /// served 91.5-92.0 % in three without, its admitted p99 within the spread; at an
    /// overload's onset the average takes a window or three to pass the share, and
    /// `capacity-halves`' 1.5x phase read its p99 1.53-1.65x the unloaded in five runs
    /// (1.54-1.55x in three without).
    ///
    /// ```
    /// use degrade_core::limit::{Law, LimitConfig, Window};
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    ///
    /// let ms = Duration::from_millis;
    /// let mut law = Law::new(LimitConfig::default());
    /// assert_eq!(law.rejected_share(), 1.0);
    /// // Windows of 100 ms at 8 in flight and 40 ms each: 20 completions. None refused.
    /// let window = |rejected| {
    ///     let mut w = Window::default();
    ///     for _ in 0..20 { w.record(ms(40), 8, false); }
    ///     w.elapsed = ms(100);
    ///     w.rejected = rejected;
    ///     w
    /// };
    /// let mut now = Instant::now();
    /// for _ in 0..8 {
    ///     now += ms(100);
    ///     law.observe(&window(0), now);
    /// }
    /// assert!(law.rejected_share() < 0.15);
    /// assert_eq!(law.queue_target(), Some(ms(30)), "1.5 x half the 40 ms baseline");
    /// // Demand at 1.5x: a third refused. Within three windows the wait is 0.6 of the plain
    /// // 20 ms (a critical waiter keeps 20 ms).
    /// for _ in 0..3 {
    ///     now += ms(100);
    ///     law.observe(&window(10), now);
    /// }
    /// assert!(law.rejected_share() > 0.15);
    /// assert_eq!(law.queue_target(), Some(ms(12)));
    /// assert_eq!(law.plain_queue_target(), Some(ms(20)));
    /// ```
    pub fn rejected_share(&self) -> f64 {
        self.rejected_share
    }

    /// What [`queue_target`](Law::queue_target) multiplies by `queue_delay` for a `baseline`
    /// (seconds): the baseline, or [`TAIL_SHARE`] of the tail when that is longer, at most
    /// [`TAIL_MAX_BASELINES`] baselines.
    fn wait_scale(&self, baseline: f64) -> f64 {
        self.tail.map_or(baseline, |tail| {
            (tail * TAIL_SHARE).clamp(baseline, baseline * TAIL_MAX_BASELINES)
        })
    }

    /// How long a request of `priority` may wait at most: the
    /// [`queue_target`](Law::queue_target); for a critical request, four times the target
    /// away from capacity (the longer wait near capacity is for a burst's tail, see
    /// [`rejected_share`](Law::rejected_share)), or four times `queue_delay` times the mean
    /// latency of the last window when that is longer (that latency counted up to four
    /// baselines). A critical request is served before any other,
    /// so it waits long only when nothing completes — the service just slowed down (every
    /// request in flight started after the change, and none completes for a whole new service
    /// time), a cut drains (nothing is admitted until the requests in flight fall below the new
    /// limit), a cold start — or when critical requests alone fill the limit. The first three
    /// pass, and refusing a critical request frees no slot for anyone; the last is the
    /// limiter's to bound: while critical requests alone crowd its queue and are refused, it
    /// holds them to the target. The latency of the last window counts because the wait for
    /// the next slot scales with the service's latency now, and the target with the baseline,
    /// which a service that just slowed down has not re-learnt yet.
    ///
    /// Twice the target before: the simulator's `capacity-halves` (5 backends, seeds 1-20,
    /// `SIM_VERBOSE=1 cargo test -p degrade-core --release --lib halves_bench -- --ignored
    /// --nocapture`) refused 82 critical requests, 37 of the 100 runs under 99.9 %; with four
    /// targets, the latency of the last window and the crowd of two (`Patience::under` in
    /// `limit/queue.rs`), 12 (6 runs; none on 8 slots x 40 ms), with the same admitted p99 in
    /// every phase; the overload bench's halved phase served every critical request in 10 of
    /// 10 runs (99.2 % in 3 of 10 before).
    ///
    /// ```
    /// use degrade_core::limit::{Law, LimitConfig, Window};
    /// use degrade_core::Priority;
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    ///
    /// let mut law = Law::new(LimitConfig::default());
    /// assert_eq!(law.max_wait(Priority::Critical), None, "nothing learnt: refused at once");
    /// let ms = Duration::from_millis;
    /// let now = Instant::now();
    /// let mut w = Window::default();
    /// for _ in 0..20 { w.record(ms(10), 1, true); }
    /// law.observe(&w, now);
    /// assert_eq!(law.max_wait(Priority::Normal), Some(ms(3))); // see `queue_target`
    /// assert_eq!(law.max_wait(Priority::Critical), Some(ms(20)));
    /// // The service slows to 30 ms: a critical request may wait two of its service times.
    /// let mut w = Window::default();
    /// for _ in 0..20 { w.record_capped(ms(30), law.sample_cap(), 8, false); }
    /// law.observe(&w, now + ms(400));
    /// assert_eq!(law.max_wait(Priority::Critical), Some(ms(60)));
    /// ```
    pub fn max_wait(&self, priority: crate::Priority) -> Option<Duration> {
        let target = self.queue_target()?;
        Some(if priority == crate::Priority::Critical {
            // Four `queue_delay`s of the wait's scale (at least four plain targets), not four
            // of the longer target near capacity: that one is for a burst's tail of other
            // requests (see `plain_queue_target`).
            let baseline = self.baseline.unwrap_or_default();
            let recent = self
                .recent
                .map_or(0.0, |r| r.min(baseline * TAIL_MAX_BASELINES));
            let scale = self.wait_scale(baseline).max(recent);
            target.max(Duration::from_secs_f64(
                f64::from(CRITICAL_WAITS) * scale * self.config.queue_delay,
            ))
        } else {
            target
        })
    }

    /// Whether a window of `samples` timed completions over `elapsed` is ready to judge.
    ///
    /// ```
    /// # use degrade_core::limit::{Law, LimitConfig};
    /// # use std::time::Duration;
    /// let law = Law::new(LimitConfig::default());
    /// assert!(!law.window_done(1, Duration::from_millis(1)));
    /// assert!(law.window_done(100, Duration::from_millis(100)));
    /// ```
    pub fn window_done(&self, samples: u32, elapsed: Duration) -> bool {
        if elapsed < MIN_WINDOW || elapsed.as_secs_f64() < self.longest {
            return false;
        }
        let e = elapsed.as_secs_f64();
        match self.baseline {
            None => samples >= MIN_SAMPLES,
            Some(b) => {
                (samples >= self.needed && e >= b * f64::from(MIN_WINDOW_BASELINES))
                    || e >= b * f64::from(MAX_WINDOW_BASELINES)
            }
        }
    }

    /// The shortest and longest a window lasts now (the longest is `None` until a baseline is
    /// known): a window closes once it has [`samples_needed`](Law::samples_needed) and the
    /// shortest time has passed, or once the longest has.
    ///
    /// ```
    /// # use degrade_core::limit::{Law, LimitConfig};
    /// # use std::time::Duration;
    /// let (min, max) = Law::new(LimitConfig::default()).window_bounds();
    /// assert_eq!((min, max), (Duration::from_millis(10), None));
    /// ```
    pub fn window_bounds(&self) -> (Duration, Option<Duration>) {
        match self.baseline {
            None => (MIN_WINDOW, None),
            Some(b) => (
                MIN_WINDOW.max(Duration::from_secs_f64(
                    (b * f64::from(MIN_WINDOW_BASELINES)).max(self.longest),
                )),
                Some(MIN_WINDOW.max(Duration::from_secs_f64(b * f64::from(MAX_WINDOW_BASELINES)))),
            ),
        }
    }

    /// Latency samples the current window needs: the limiter times every request until it
    /// has them, and one in [`timing_every`](LimitConfig::timing_every) afterwards.
    ///
    /// Enough for the window's mean to resolve the tolerance at two standard errors given the
    /// spread of the latest window's latencies (at least 16, at most 128). After a window read
    /// as a queue or a slower service whose latencies spread more than twice as wide as the
    /// service's own (learnt from windows in which nothing queued), what the service's own
    /// spread asks for when that is fewer: the window changed within it (a slowdown half-way,
    /// a queue forming at once), and the next decides between a queue and a slower service,
    /// which differ by far more than the tolerance.
    ///
    /// ```
    /// use degrade_core::limit::{Law, LimitConfig, Window};
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    ///
    /// let mut law = Law::new(LimitConfig::default());
    /// assert_eq!(law.samples_needed(), 16);
    /// let (ms, now) = (Duration::from_millis, Instant::now());
    /// let window = |latencies: &[u64]| {
    ///     let mut w = Window::default();
    ///     for &l in latencies.iter().cycle().take(32) {
    ///         w.record(ms(l), 8, false);
    ///     }
    ///     w.binding = true;
    ///     w.elapsed = ms(200);
    ///     w
    /// };
    /// // A service of a steady 40 ms: the fewest samples do.
    /// law.observe(&window(&[40]), now);
    /// law.observe(&window(&[40]), now + ms(200));
    /// assert_eq!(law.samples_needed(), 16);
    /// // It slows down to 80 ms half-way through a window: that window's spread (a coefficient
    /// // of variation of a third) would ask for 45 samples, but it reads as a queue, and the
    /// // next window needs what the service's own spread asks for.
    /// law.observe(&window(&[40, 80]), now + ms(400));
    /// assert!(law.limit() < 16);
    /// assert_eq!(law.samples_needed(), 16);
    /// ```
    pub fn samples_needed(&self) -> u32 {
        self.needed
    }

    /// Whether latency that was `t0` at `c0` requests in flight and is `t` at fewer, `c`, fell
    /// by less than a queue's would: under a queue latency falls in proportion to concurrency,
    /// and a fall of less than [`QUEUE_ELASTICITY`] of it is the service's own latency.
    fn not_a_queue(&self, c0: f64, t0: f64, c: f64, t: f64) -> bool {
        (t0 / t).ln() < (c0 / c).ln() * QUEUE_ELASTICITY
    }

    /// Samples a window needs to resolve the tolerance at two standard errors when single
    /// latencies spread by a coefficient of variation `cv`: `(2 cv / tolerance)^2`, within
    /// [`MIN_SAMPLES`] and [`MAX_SAMPLES`].
    fn samples_for(&self, cv: f64) -> u32 {
        ((NOISE_Z * cv / self.config.tolerance).powi(2).ceil() as u32)
            .clamp(MIN_SAMPLES, MAX_SAMPLES)
    }

    /// Takes one window into account and returns the new limit.
    ///
    /// ```
    /// # use degrade_core::limit::{Law, LimitConfig, Window};
    /// # use std::time::Duration;
    /// let mut law = Law::new(LimitConfig::default());
    /// let mut w = Window::default();
    /// for _ in 0..20 { w.record(Duration::from_millis(10), 2, true); }
    /// law.observe(&w, tokio::time::Instant::now());
    /// assert_eq!(law.baseline(), Some(Duration::from_millis(10)));
    /// ```
    pub fn observe(&mut self, window: &Window, now: Instant) -> u32 {
        self.last_update = Some(now);
        self.served = self.served.max(window.served_concurrency);
        let (Some(latency), Some(concurrency)) = (window.mean_latency(), window.mean_concurrency())
        else {
            return self.limit();
        };
        if window.samples < MIN_SAMPLES {
            return self.limit();
        }
        let t = latency.as_secs_f64().max(1e-9);
        // The window's mean with nothing cut off by the sample cap: a slower service's own
        // latency is learnt from it. The cap of the faster baseline reads a slower service
        // whose latencies spread low (log-normal 0.5 at 40 ms: 34-37 ms under the cap of a
        // 19 ms baseline, 43-45 under its own), and a baseline learnt that low kept the limit
        // below the knee of a 16-slot service for seconds (0.90 of its halved capacity).
        let whole = t + window.capped_excess_ns as f64 / 1e9 / f64::from(window.samples);
        self.recent = Some(whole);
        // The requests completed over the window, by Little's law (the timed ones may be a
        // sample of them), against those refused.
        let completed = concurrency * window.elapsed.as_secs_f64() / whole;
        let rejected = f64::from(window.rejected);
        if rejected + completed > 0.0 {
            let share = rejected / (rejected + completed);
            self.rejected_share += (share - self.rejected_share) * SHARE_GAIN;
        }
        let se = window.standard_error().unwrap_or(0.0);
        self.longest = window.max_latency_ns as f64 / 1e9;
        // The spread of single latencies decides how many samples resolve the tolerance at
        // two standard errors: n = (2 cv / tolerance)^2. A window with fewer is too noisy to
        // teach the baseline (it may still cut the limit, when it is clearly too slow).
        let cv = se * f64::from(window.samples).sqrt() / t;
        let needed = self.samples_for(cv);
        self.needed = needed;
        let resolved = window.samples >= needed;
        // Low-concurrency samples count once they are half the samples a window needs. The
        // first window falls back on its half-limit samples when too few found the service
        // nearly empty (callers that all send at once: see `half_concurrency`); they count
        // once they are half the fewest a window takes (the window's spread is that of the
        // queue forming behind the initial limit, which they are free of).
        let low = window
            .low_mean_latency()
            .filter(|_| window.low_samples >= MIN_LOW_SAMPLES.max(needed / 2))
            .map(|l| (f64::from(self.low_concurrency()), l));
        let half = if low.is_none() && self.baseline.is_none() {
            window
                .half_mean_latency()
                .filter(|_| window.half_samples >= MIN_LOW_SAMPLES.max(MIN_SAMPLES / 2))
                .map(|l| (f64::from(self.half_concurrency()), l))
        } else {
            None
        };
        let from_half = half.is_some();
        let low = low.or(half).map(|(c, l)| (c, l.as_secs_f64().max(1e-9)));
        let tolerance = self.config.tolerance;
        let noise = NOISE_Z * se;
        if let Some(restore) = self.probing.take() {
            // A probe window: below the limit, a queued service is clearly faster, and that
            // latency is the nearer view of its own; then back to the limit it had.
            // Faster than the baseline beyond the window's noise and by half the tolerance:
            // the limit sat above the knee, and this probe may have too (a probe only a
            // quarter below a limit half again above the knee finds it 9 % faster); probe
            // again after one window, a quarter lower again, until that no longer helps. A
            // probe that found the service faster by less found no queue to speak of (a
            // host's cost per request in flight, a critical request over the limit): the
            // chain stops there. It went on while any difference beat the noise — on 8
            // slots after capacity came back, probes at 8, 6 and 5 (`capacity-halves`'
            // restored phase: 92.3-94.8 % in three runs, 94.5-95.9 % stopping at 6).
            let lower = self
                .baseline
                .is_none_or(|b| t < b - noise.max(b * tolerance * RECHECK_GAIN) - QUEUE_FLOOR);
            if self.baseline.is_none_or(|b| t < b) {
                self.baseline = Some(t);
                self.baseline_concurrency = concurrency;
            }
            if lower {
                self.recheck = Some(concurrency * PROBE_SHARE);
            }
            self.since_low = if lower { PROBE_EVERY - 1 } else { 0 };
            self.limit = restore;
            // A probe during a streak of cuts that ran hardly faster than where the streak
            // started, at a fifth or more below its concurrency: the service itself got
            // slower (the same test as after cuts, below, and the probe the clearest one).
            // Learn it now and give the cuts back: left to the next window, a slowdown that
            // met a due probe ran a quarter of the limit for a window, then half for one more.
            // Only from a streak that started slower than a queue at the knee explains (the
            // change came before it): a streak begun at a small queue just before the service
            // changed compares the probe with a service that is gone, and a probe at 7 that
            // read 70 ms after 45 ms at 9 is as much a service that lost half its slots as
            // one that got slower; the next window, at the limit, and its probe tell which.
            if let (Some((c0, t0)), Some(b)) = (self.previous, self.baseline)
                && concurrency <= c0 * PROBE_CUT
                && t > self.target(b) + noise
                && t0 > self.target(b) * KNEE_RISE
                && self.not_a_queue(c0, t0, concurrency, t)
            {
                self.baseline = Some(whole);
                self.baseline_concurrency = concurrency;
                self.previous = None;
                self.limit = self.limit.max(c0.min(f64::from(self.config.max)));
            }
            return self.limit();
        }
        if resolved && concurrency <= self.limit * LOW_WINDOW_SHARE {
            self.since_low = 0;
        } else {
            self.since_low = self.since_low.saturating_add(1);
        }
        // This window's best view of the service's own latency: the requests that found it
        // nearly empty when there are enough of them (at the concurrency they saw), else the
        // window's mean.
        let entry = match low {
            Some((c, l)) if l < t => (c, l),
            _ => (concurrency, t),
        };
        // The first window's samples were not capped (there was no baseline to cap them at):
        // one request preempted for a time slice can dominate its mean, so it teaches the
        // baseline and leaves the limit alone; the next window, capped, judges. Unless its
        // half-limit samples taught the baseline: callers that all send at once filled the
        // initial limit, the rest of the window ran behind them, and it is judged against
        // them like any window (leaving a limit above the knee for one more window queued
        // them for twice the service time). Low-concurrency samples, when there are enough,
        // teach it as before and leave the limit alone: a window that did not fill at once
        // has no queue to judge, and on a service whose latency grows with any concurrency
        // (a CPU-bound one) judging the rest against them cut a limit already near the
        // knee.
        let first = self.baseline.is_none() && !(from_half && entry.1 < t);
        let before = self.baseline;
        if self.baseline.is_none()
            || (self.tentative && resolved && entry.0 <= self.baseline_concurrency)
        {
            // The first window gives a first guess, however noisy; the first window with
            // enough samples at no more concurrency replaces it.
            self.baseline = Some(entry.1);
            self.baseline_concurrency = entry.0;
            self.tentative = !resolved;
        } else if resolved {
            match self.baseline {
                None => {}
                Some(b) => {
                    if entry.1 < b * (1.0 - tolerance) - noise {
                        // Clearly faster than the baseline: the service got faster (capacity
                        // came back); it is at least this fast now.
                        self.baseline = Some(entry.1);
                        self.baseline_concurrency = entry.0;
                        if window.binding && entry.1 >= t && entry.0 > self.limit * LOW_WINDOW_SHARE
                        {
                            // Learnt at the limit's concurrency, the new baseline may still
                            // hold a queue: the service that got faster is now served above
                            // its knee, and a baseline with the queue in it lets the limit
                            // grow into it (on 8 slots of 40 ms after 80: a baseline of
                            // 46 ms, the limit 10-14, p99 twice the unloaded). Probe a
                            // quarter below that concurrency now.
                            self.since_low = PROBE_EVERY;
                            self.recheck = Some(entry.0 * PROBE_SHARE);
                        }
                    } else if entry.1 < b {
                        // Faster than the baseline: the service is at least this fast.
                        self.baseline = Some(b + (entry.1 - b) * DOWN_GAIN);
                        if window.binding
                            && entry.1 >= t
                            && entry.1 < b - noise
                            && entry.0 > self.baseline_concurrency * (1.0 + tolerance) + 1.0
                        {
                            // Clearly faster at clearly more concurrency than the baseline
                            // was learnt at: a service's latency does not fall as more
                            // requests share it, so the service itself got faster and the
                            // baseline is stale (a window at 15 on 8 slots of 40 ms, 74 ms
                            // against the 80 ms of the slow phase: read as no queue, the
                            // limit grew to 28). Probe a quarter below this concurrency now.
                            self.since_low = PROBE_EVERY;
                            self.recheck = Some(entry.0 * PROBE_SHARE);
                        }
                        self.baseline_concurrency = entry.0;
                    } else if entry.0 <= self.baseline_concurrency {
                        if entry.1 > self.target(b) + noise {
                            // Clearly slower at no more concurrency than the baseline was
                            // measured at: the service itself got slower (give back the
                            // cuts that read it as a queue, as below) — unless the streak of
                            // cuts this window ends shows the latency fell with concurrency
                            // as a queue's does: the service lost slots, and serves fewer at
                            // once than the baseline's concurrency (90 ms at 9 on 4 of 8
                            // slots, then 50 at 5: a 50 ms baseline, and the cuts given back,
                            // read a queue as the service's own). Only a streak that began
                            // above 1.5 targets tells (one begun at a small queue before the
                            // change says nothing, as for a probe, above). Without one, a rise
                            // larger than a queue at the knee explains is left to the cut and
                            // its probe (below): at the knee's concurrency a service that lost
                            // half its slots reads as one twice as slow.
                            let slower = match self.previous {
                                Some((c0, t0))
                                    if c0 > entry.0 && t0 > self.target(b) * KNEE_RISE =>
                                {
                                    self.not_a_queue(c0, t0, entry.0, entry.1)
                                }
                                _ => entry.1 <= self.target(b) * KNEE_RISE,
                            };
                            if slower {
                                self.baseline = Some(if entry.1 < t { entry.1 } else { whole });
                                if let Some((c0, _)) = self.previous.take() {
                                    self.limit = self.limit.max(c0.min(f64::from(self.config.max)));
                                }
                                self.baseline_concurrency = entry.0;
                            }
                        } else {
                            // The same conditions: refine.
                            self.baseline = Some(b + (entry.1 - b) * REFINE_GAIN);
                            self.baseline_concurrency = entry.0;
                        }
                    }
                    // Else slower at more concurrency: a queue, not the service's own.
                }
            }
        }
        // A window that lowered the baseline had its samples capped at the old baseline's
        // cap: after a first window too noisy to resolve (one request preempted for
        // milliseconds among forty of a microsecond) that cap is hundreds of times the
        // service's latency, and the window's mean, judged against the baseline it teaches,
        // would read its preempted samples as a queue and halve the limit of callers that
        // never waited. Its samples capped at the old cap are read as capped at the new one
        // (the window's sums allow that much; a sample between the two caps stays as it was):
        // the mean the next window's samples would give.
        let mut t = t;
        if window.capped_samples > 0
            && let (Some(old), Some(new)) = (before, self.baseline)
            && new < old
        {
            let excess = self.cap(old) - self.cap(new);
            let n = f64::from(window.samples);
            t = (t - f64::from(window.capped_samples) * excess / n).max(new);
        }
        // Up after cuts that did not help: since the first cut of a streak (or the window that
        // last moved its reference, below) the concurrency fell by a fifth or more and the
        // latency hardly moved, so the latency is the service's own, not a queue's: the
        // service got slower.
        if let (Some((c0, t0)), Some(b)) = (self.previous, self.baseline)
            && concurrency <= c0 * PROBE_CUT
            && t > self.target(b) + noise
        {
            if self.not_a_queue(c0, t0, concurrency, t) {
                self.baseline = Some(whole);
                self.baseline_concurrency = concurrency;
                self.previous = None;
                // The cuts of the streak read the slowdown as a queue: undo them. A service
                // that got slower keeps its parallelism (its slots, its cores), so the
                // concurrency it ran at before is where the knee still is; if the knee fell
                // too, the next window shows a queue and cuts again, from the new baseline.
                self.limit = self.limit.max(c0.min(f64::from(self.config.max)));
            } else {
                // A queue: the latency fell with the concurrency. That queue is gone now, and
                // the streak's next test starts from this window: against the streak's first
                // window it compares a service that still queued there with one that no
                // longer does, and a slower service under that queue's fall stays hidden. On 6
                // slots of 30 ms slowed to 60 (the simulator's `capacity-halves`, seed 12) a
                // window that straddled the change taught a baseline of 49.5 ms, the next
                // queued (89 ms at 9.2 in flight) and began a streak; the windows at 6.2, 4.6
                // and 4.3 in flight read 67, 62 and 57 ms, each a draining queue against 89 ms
                // at 9.2, and the limit sat at 3-4 of the 6 slots for three seconds. Against
                // the window at 6.2, the one at 4.6 is the slower service it is, and the cuts
                // are given back (figures: the CHANGELOG, and
                // `a_slowdown_under_a_draining_queue_is_learnt_within_the_phase` in `sim.rs`).
                self.previous = Some((concurrency, t));
            }
        }
        let Some(baseline) = self.baseline else {
            return self.limit();
        };

        let ratio = t / baseline;
        self.ratio = Some(ratio);
        let target = self.target(baseline);
        if t <= target + noise && !first {
            // Nothing queued in this window: its longest latency is how far the service's
            // own latencies reach (the first window's were not capped, and may hold a
            // preempted request).
            let longest = window.max_latency_ns as f64 / 1e9;
            if resolved || self.spread.is_none() {
                self.spread = Some(
                    self.spread
                        .map_or(cv, |s| if cv > s { cv } else { s + (cv - s) * TAIL_GAIN }),
                );
            }
            self.tail = Some(
                self.tail
                    .map_or(longest, |tail| tail + (longest - tail) * TAIL_GAIN),
            );
        }
        // Demand filled the limit: the limit, not the callers, set the concurrency the window
        // ran at.
        let filled = concurrency >= self.limit * FILLED;
        if filled && t <= target + noise {
            self.knee = Some(concurrency);
        }
        // A slower window that did not fill the limit, at a concurrency the service was seen
        // to serve without a queue, is not a queue of ours: a slower host (a noisy neighbour,
        // a late timer) is slower at every concurrency, and cutting for it would refuse the
        // callers' next burst, which the service carries. A queue after all grows (demand
        // above capacity) until it fills the limit, and that window cuts. Any concurrency
        // below the knee counts: a queue's latency grows with concurrency, so a window slower
        // at fewer requests in flight than one that met the target is not a queue's (with a
        // margin of a fifth below the knee, one stall after a 4x overload, at 0.83 of the
        // knee, halved the limit and the noisy-host recovery took seconds).
        let host = !filled && self.knee.is_some_and(|k| concurrency < k);
        // A window read as a queue, and the concurrency its successor probes at when the rise
        // is more than a queue at the knee explains.
        let mut queued = false;
        let mut test = None;
        let gradient = if first {
            1.0
        } else if t > target + noise && host {
            self.growing = 0;
            1.0
        } else if t > target + noise {
            queued = true;
            // Clearly above the target: under a queue, latency grows in proportion to
            // concurrency, so the concurrency that meets the target is the window's own times
            // target / latency. At most half the limit in one window.
            self.growing = 0;
            if self.previous.is_none() {
                self.previous = Some((concurrency, t));
            }
            let cut = ((concurrency / self.limit).min(1.0) * target / t).max(MAX_CUT);
            // Before any window filled the limit at the target, the highest concurrency a
            // request was seen to meet it at stands for the knee: the first window of an
            // overload after light demand starts from a limit above it, and its mean (a few
            // costly requests more than usual) cut 11 -> 7 on 8 slots in the bench's `mixed`.
            let knee = self
                .knee
                .or_else(|| (self.served > 0).then(|| f64::from(self.served)));
            match knee {
                // From above the concurrency the service last met the target at, by a rise
                // a queue of that excess explains (within half again: the mean of a few
                // costly requests swings that much), cut to it, not below: with heavy-tailed
                // costs a queue a request or two deep reads as a large rise, and a cut below
                // the knee leaves slots idle for the windows growth takes to give it back.
                // A larger rise is a slower service: cut freely. If the knee moved, the next
                // window shows a queue from there and cuts freely too.
                Some(k)
                    if self.limit > k + 0.5
                        && self.limit * cut < k
                        && t <= target * (concurrency / k).max(1.0) * KNEE_RISE =>
                {
                    k / self.limit
                }
                // A larger rise at no more than about the knee's concurrency is not our queue
                // (a queue of a request or two above the knee reads within 1.5 targets): the
                // service got slower, or lost slots. Cut, and probe next at three quarters of
                // the concurrency it served without a queue (the knee's, less the tolerance
                // it allows), unless that is no lower than the window ran at by a fifth: the
                // probe path tells the two apart (`PROBE_CUT`, `QUEUE_ELASTICITY`) and gives
                // the cut back to a slower service. Before, the cut alone (to half) tested it,
                // or a probe due then ran at three quarters of the half: 3 of 8 slots for a
                // window, then up to 41 samples at the cut limit (`capacity-halves`).
                Some(k) => {
                    let at = k * PROBE_SHARE / (1.0 + tolerance);
                    if t > target * KNEE_RISE
                        && concurrency <= k * (1.0 + tolerance) + 1.0
                        && at <= concurrency * PROBE_CUT
                    {
                        test = Some(at);
                    }
                    cut
                }
                None => cut,
            }
        } else if window.binding {
            // Nothing queues and demand wants more: grow, faster with each window in a row
            // that grew at no more than the target latency (at most doubling). A window above
            // the target, within its noise, grows by the first step and starts the streak over:
            // its latency may hide a change (one that straddled capacity coming back, half its
            // samples at the slow service's latency, half at twice the concurrency on the
            // fast one, read about as slow as the stale baseline with a wide spread). Growing
            // faster on such windows took the limit from 9 to 28 on 8 slots in four windows
            // after `capacity-halves` restored the service, the admitted p99 2.9 times the
            // unloaded in 2 runs of 23 (1.47-1.82 in 10 runs with this rule).
            if t > target {
                self.growing = 1;
            } else {
                self.growing += 1;
            }
            self.previous = None;
            let by = (1.0 + tolerance * f64::from(1u32 << self.growing.min(4).saturating_sub(1)))
                .min(2.0);
            // At least half a request: a small limit otherwise takes windows of many service
            // times each to add one (1 -> 2 took four windows of 3 s on 2 slots of 200 ms).
            by.max((self.limit + 0.5) / self.limit)
        } else {
            self.growing = 0;
            if t <= target {
                self.previous = None;
            }
            1.0
        };
        // The window that lowered the baseline reads as nothing queueing (its mean is the new
        // baseline): it does not grow the limit before the probe has looked below it.
        let gradient = if self.recheck.is_some() {
            self.growing = 0;
            gradient.min(1.0)
        } else {
            gradient
        };
        let min = f64::from(self.config.min);
        let max = f64::from(self.config.max);
        self.limit = (self.limit * gradient).clamp(min, max);
        if !filled && self.served > 0 {
            // Demand did not fill the limit: above what the service was seen to serve, it is
            // untested, and stays within a tolerance (and one request) of it (see `served`).
            // Growing it past that takes windows that fill it. Brought down here, the limit is
            // no longer the initial guess the first binding window probes below (that probe
            // cost the CPU-bound simulator backend 3 points of goodput at 1x): the probe
            // cadence starts over.
            let untested = f64::from(self.served) * (1.0 + tolerance) + UNTESTED_HEADROOM;
            if untested < self.limit {
                self.since_low = 0;
            }
            self.limit = self.limit.min(untested.clamp(min, max));
        }
        if let Some(at) = test.map(|at| at.clamp(min, max)) {
            // The test of a slower service (above), against this window: the streak of cuts
            // starts here whatever came before (a streak begun at a queue before the change
            // compares a service that no longer exists: 50 ms at 10 on 8 slots, then 50 ms at
            // 5 on the 4 left, read as a slower service). It runs as a probe when the cut
            // limit is lower, else at the cut limit; after it, the cut stands or is given
            // back. A probe due now waits: it would run below the test.
            self.previous = Some((concurrency, t));
            if at.round() > self.limit.round() {
                self.probing = Some(self.limit);
                self.limit = at;
            }
            self.recheck = None;
        } else if window.binding
            && !queued
            && self.since_low >= PROBE_EVERY
            && self.limit >= 2.0 * min
        {
            // Demand has kept the limit full for a long time: probe below it for one window,
            // by a request at least (a limit of 2 probes at 1: on a service of one slot, a
            // limit of 2 and a baseline learnt with one request queued behind the other would
            // otherwise stay so). Not in a window that cut: it waits for the next binding
            // one, so that one window takes the limit down by half at most. A probe below a
            // cut drains both at once (at a gRPC cold start at 3x, the first window cut 16 ->
            // 8 on 8 slots and probed at 6: nothing was admitted until 16 in flight fell
            // below 7, and critical calls that filled the wait queue meanwhile were refused
            // in 3-4 of 20 starts; none in 20 with the probe a window later).
            let at = match self.recheck.take() {
                Some(at) => at.min(self.limit),
                None => (self.limit * PROBE_SHARE).min(self.limit.round() - 1.0),
            }
            .max(min);
            // A probe set below a concurrency (after a faster window or probe) that would
            // not lower the limit tests nothing.
            if at.round() < self.limit.round() {
                self.probing = Some(self.limit);
                self.limit = at;
            } else {
                self.since_low = 0;
            }
        }
        let slower = before
            .zip(self.baseline)
            .is_some_and(|(b0, b1)| b1 > b0 * (1.0 + tolerance));
        if let Some(spread) = self.spread
            && (slower || queued)
            && cv > SPREAD_CHANGE * spread
        {
            // A window that changed within it (read as a queue or a slower service, its
            // latencies spread more than twice as wide as the service's own) asks its
            // successor for the samples the service's own spread needs, not its own: one that
            // straddled a slowdown (half its samples at 40 ms, half at 80) read a cv of 0.3 and
            // asked for 41 samples, ~0.6 s of a window at the cut limit with a third of the
            // slots idle (or at a limit grown on a baseline half-way to the slower one,
            // queueing). Its successor decides between a queue and a slower service, which
            // differ by far more than the tolerance.
            self.needed = self.needed.min(self.samples_for(spread));
        }
        // A probe set for this window starts now or not at all.
        self.recheck = None;
        self.limit()
    }

    /// The limit for requests of `priority`: critical requests may go over the limit by a
    /// tenth of it (at least one), so that a critical request finds a slot at once even when
    /// the limit was just cut, and the limit settles with that reserve counted in; a probe
    /// window leaves them three quarters of the limit, however deep it goes.
    ///
    /// This is the limit of a priority when no priority above it is *pressured*. While one
    /// is (a request of it was refused — at once, at its deadline or evicted — in this window
    /// or the last), the limiter lets a new request of a lower priority take a slot only while
    /// fewer than its [share](SHARES) of the limit are in flight, and keeps the rest for the
    /// pressured priority's arrivals for a short hold (a tenth of the queue target), after
    /// which a waiter held to its share takes the free slot ([`Law::limits_under`]).
    ///
    /// ```
    /// # use degrade_core::limit::{Law, LimitConfig};
    /// # use degrade_core::Priority;
    /// let law = Law::new(LimitConfig::default());
    /// assert_eq!(law.limit_for(Priority::Normal), 16);
    /// assert_eq!(law.limit_for(Priority::Critical), 18);
    /// ```
    pub fn limit_for(&self, priority: crate::Priority) -> u32 {
        let limit = self.limit();
        if priority == crate::Priority::Critical {
            // A probe window leaves critical requests three quarters of the limit, as it does
            // the others: halving theirs would refuse some whenever they alone need more than
            // half the capacity, and leaving theirs whole lets waiting critical requests fill
            // the probe when callers re-send at once (closed loop), so that the probe never
            // runs below the knee and the baseline is learnt inside a queue (admitted p99 up
            // to 155 ms instead of 130 on a 6-slot, 30 ms backend behind 64 connections).
            let full = self
                .probing
                .map_or(limit, |restore| (restore * PROBE_SHARE).round() as u32)
                .max(limit);
            full + (full.div_ceil(10)).max(1)
        } else {
            limit
        }
    }

    /// The limit of each priority (indexed by [`Priority::index`](crate::Priority::index))
    /// while the priorities whose bits are set in `pressured` (bit `1 << index`) are
    /// pressured: [`limit_for`](Self::limit_for) for every priority with no pressured one
    /// above it, and its [share](SHARES) of the limit for the others ([`shares`]).
    ///
    /// ```
    /// # use degrade_core::limit::{Law, LimitConfig};
    /// # use degrade_core::Priority;
    /// let law = Law::new(LimitConfig::default()); // a limit of 16
    /// assert_eq!(law.limits_under(0), [16, 16, 16, 16, 18]);
    /// // Normal requests had to wait: background and low keep 60 % and 70 % of the limit.
    /// let normal = 1 << Priority::Normal.index();
    /// assert_eq!(law.limits_under(normal), [9, 11, 16, 16, 18]);
    /// ```
    pub fn limits_under(&self, pressured: u8) -> [u32; 5] {
        shares(
            self.limit(),
            self.limit_for(crate::Priority::Critical),
            pressured,
        )
    }

    /// Requests in flight at or below which an admitted request counts as a low-concurrency
    /// sample (see [`Window::low_samples`]): an eighth of the limit, at least one.
    ///
    /// ```
    /// # use degrade_core::limit::{Law, LimitConfig};
    /// assert_eq!(Law::new(LimitConfig::default()).low_concurrency(), 2);
    /// ```
    pub fn low_concurrency(&self) -> u32 {
        (self.limit() / 8).max(1)
    }

    /// Requests in flight at or below which an admitted request counts as a half-limit
    /// sample (see [`Window::half_samples`]): half the limit, at least one, until a baseline
    /// is known; none after.
    ///
    /// The first window teaches the first baseline, and its limit is the configured guess:
    /// callers that all send at once (a closed loop of 64 connections) fill it at once, few
    /// requests find the service nearly empty, and the window's mean is a queue's when the
    /// guess is above the service's knee (60 ms on an 8-slot, 40 ms backend behind an initial
    /// limit of 16). The first half of the guess queues less (on any service with that many
    /// slots or more, not at all): a first window with too few low-concurrency samples learns
    /// from its half-limit ones and judges the rest against them. One with enough learns from
    /// the low-concurrency samples and leaves the limit alone, as before: on a service whose
    /// latency grows with any concurrency (a CPU-bound one), half the limit is already a
    /// queue.
    ///
    /// ```
    /// # use degrade_core::limit::{Law, LimitConfig, Window};
    /// # use std::time::Duration;
    /// let mut law = Law::new(LimitConfig::default());
    /// assert_eq!((law.low_concurrency(), law.half_concurrency()), (2, 8));
    /// let mut w = Window::default();
    /// for n in 1..=16 {
    ///     // Eight slots of 40 ms: the first eight requests are served at once, the next wait.
    ///     let latency = Duration::from_millis(if n <= 8 { 40 } else { 80 });
    ///     w.record(latency, n, n <= law.low_concurrency());
    ///     if n <= law.half_concurrency() {
    ///         w.record_half(latency, None);
    ///     }
    /// }
    /// law.observe(&w, tokio::time::Instant::now());
    /// assert_eq!(law.baseline(), Some(Duration::from_millis(40)));
    /// // The rest of the window queued behind them: the limit is cut (by half at most).
    /// assert_eq!(law.limit(), 8);
    /// assert_eq!(law.half_concurrency(), 0);
    /// ```
    pub fn half_concurrency(&self) -> u32 {
        if self.baseline.is_none() {
            (self.limit() / 2).max(1)
        } else {
            0
        }
    }

    /// Whether the current window is a probe (below the limit).
    #[cfg(test)]
    pub(crate) fn probing(&self) -> bool {
        self.probing.is_some()
    }

    /// When the law last took a window.
    ///
    /// ```
    /// # use degrade_core::limit::{Law, LimitConfig};
    /// assert_eq!(Law::new(LimitConfig::default()).last_update(), None);
    /// ```
    pub fn last_update(&self) -> Option<Instant> {
        self.last_update
    }
}

/// The share of the limit a priority may fill while a priority above it is pressured, in
/// tenths, by [`Priority::index`](crate::Priority::index) (critical has none: it is never
/// below another).
///
/// Why shares of *arrivals*: the wait queue serves the best waiter first, but a slot that
/// frees while nobody waits goes to whoever comes first, so at a small limit a low request
/// takes the slot a normal one arriving a millisecond later needed, and the lower classes
/// live on the luck of their arrival times. Reserving the top of the limit for the pressured
/// classes makes the order hold for arrivals too; gating it by pressure keeps the whole limit
/// for a class that is alone, or whose betters are served at once.
///
/// Rounded down, and at least one slot: at a limit of 2 a class below a pressured one gets
/// one slot and the pressured class both, at 10 background, low, normal and high get 6, 7, 8
/// and 9. Pressure means refusals, not waits: a priority whose requests wait and are served
/// loses nothing, and reserving slots for it cost the simulator's overload table up to 0.4
/// points of goodput (`SIM_SEEDS=61-120`, `limit::sim`'s `seeds`); with refusals, 0.3 at
/// most.
///
/// ```
/// use degrade_core::limit::SHARES;
/// assert_eq!(SHARES, [6, 7, 8, 9]);
/// ```
pub const SHARES: [u32; 4] = [6, 7, 8, 9];

/// Each priority's limit when the limit is `limit`, the critical one `critical`, and the
/// priorities in `pressured` (bit `1 << index`) are pressured: the whole limit for a priority
/// with no pressured priority above it, its [share](SHARES) of it otherwise (rounded down, at
/// least one); critical always `critical`.
///
/// ```
/// use degrade_core::limit::shares;
/// // Only high is pressured: the classes below it keep their shares, high all of it.
/// assert_eq!(shares(2, 3, 1 << 3), [1, 1, 1, 2, 3]);
/// assert_eq!(shares(10, 11, 1 << 3), [6, 7, 8, 10, 11]);
/// // Critical pressured reserves for critical alone; nothing pressured, no share.
/// assert_eq!(shares(10, 11, 1 << 4), [6, 7, 8, 9, 11]);
/// assert_eq!(shares(10, 11, 0), [10, 10, 10, 10, 11]);
/// ```
pub fn shares(limit: u32, critical: u32, pressured: u8) -> [u32; 5] {
    std::array::from_fn(|p| {
        if p == 4 {
            critical
        } else if u32::from(pressured) >> (p + 1) == 0 {
            limit
        } else {
            let share = u64::from(limit) * u64::from(SHARES[p]) / 10;
            u32::try_from(share).unwrap_or(limit).clamp(1, limit.max(1))
        }
    })
}
