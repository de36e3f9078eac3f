//! The [`Canary`] router service and its builder.

use crate::arm::{Arm, FULL_BP, Weight};
use crate::future::{Guard, Inner, ResponseFuture};
use crate::key::{ForceArm, Global, NoOverride, StickyKey};
use crate::stats::{CanarySnapshot, GROUPS, Stats, UNGROUPED};
use degrade_core::counter::{ShardedCounter, TimingSampler};
use degrade_core::recycle::{Held, Pooled};
use degrade_core::{BoxError, Classifier, Clock, ConfigError, DefaultClassifier, FastClock};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_service::Service;

/// How a response records the arm that served it.
///
/// ```
/// use degrade_canary::{Arm, service::{Plain, TagArm}};
/// let mut res = 5u32;
/// <Plain as TagArm<u32>>::tag(&mut res, Arm::Canary); // Plain leaves responses alone
/// assert_eq!(res, 5);
/// ```
pub trait TagArm<Res>: Send + Sync + 'static {
    /// Records `arm` on `response`.
    fn tag(response: &mut Res, arm: Arm);
}

/// Responses are left as they are (the arm is still counted in the statistics).
#[derive(Debug, Clone, Copy, Default)]
pub struct Plain;

impl<Res> TagArm<Res> for Plain {
    #[inline]
    fn tag(_: &mut Res, _: Arm) {}
}

/// (feature `http`) The arm is inserted as an [`Arm`] extension of every `http::Response`.
///
/// ```
/// use degrade_canary::{Arm, service::{Extension, TagArm}};
/// let mut res = http::Response::new(());
/// Extension::tag(&mut res, Arm::Stable);
/// assert_eq!(res.extensions().get::<Arm>(), Some(&Arm::Stable));
/// ```
#[cfg(feature = "http")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Extension;

#[cfg(feature = "http")]
impl<B> TagArm<http::Response<B>> for Extension {
    #[inline]
    fn tag(response: &mut http::Response<B>, arm: Arm) {
        response.extensions_mut().insert(arm);
    }
}

/// The routing state every clone shares.
pub(crate) struct Shared<K, O> {
    weight: Weight,
    /// Each thread's sequence of unkeyed decisions, for the deterministic stride: a slot of
    /// its own per thread (plain load and store), not one word every thread increments.
    seq: ShardedCounter<1>,
    key: K,
    force: O,
}

impl<K, O> Shared<K, O> {
    /// The routing decision: override (if allowed), else the sticky bucket, else the stride.
    /// Returns the arm, whether it was forced, and the request's key group (`UNGROUPED`
    /// without a key).
    #[inline]
    fn pick<R>(&self, req: &R) -> (Arm, bool, u8)
    where
        K: StickyKey<R>,
        O: ForceArm<R>,
    {
        if let Some(arm) = self.force.forced(req) {
            return (arm, true, UNGROUPED);
        }
        let w = self.weight.get();
        let bucket = self.key.bucket(req);
        let canary = match bucket {
            // Monotone: a bucket below the weight stays below as the weight rises.
            Some(b) => u32::from(b) < w,
            None if w == 0 => false,
            None if w >= FULL_BP => true,
            None => {
                // Request n goes to the canary when ⌊(n+1)·w⌋ > ⌊n·w⌋ (in basis points): the
                // pattern repeats every 10 000 decisions, so reduce first and nothing overflows.
                // `n < 10 000` and `w < 10 000`: every product fits a `u32`.
                let n = (self.seq.add_then_slot(0, 1) % u64::from(FULL_BP)) as u32;
                (n + 1) * w / FULL_BP != n * w / FULL_BP
            }
        };
        let group = bucket.map_or(UNGROUPED, |b| (usize::from(b) % GROUPS) as u8);
        (if canary { Arm::Canary } else { Arm::Stable }, false, group)
    }
}

/// The statistics and their timing, shared by every clone and handle of one router.
pub(crate) struct Book {
    /// Leased: response futures hold a `&'static` to them, no reference count.
    stats: Pooled<Stats>,
    /// Which calls are timed: each thread times 1 in `every` of its own calls *of each arm*
    /// (the arm's `ROUTED` slot is the sequence), the same `every` for both arms, set by the
    /// controller from the judge's windows ([`CanaryHandle::window_saw`]); every call from the
    /// controller's construction until then, and each thread's first 65,536 calls of each arm
    /// and 1 in 16 after them while no controller reads. Every count stays exact whatever it
    /// says.
    timing: TimingSampler,
}

/// A cheap, cloneable view of a router for whoever moves its weight and reads its statistics
/// (the [`CanaryController`](crate::CanaryController), a dashboard, a test).
///
/// ```
/// use degrade_canary::Canary;
/// let canary = Canary::new(
///     tower::service_fn(|x: u32| async move { Ok::<_, std::convert::Infallible>(x) }),
///     tower::service_fn(|x: u32| async move { Ok::<_, std::convert::Infallible>(x) }),
/// );
/// let handle = canary.handle();
/// handle.weight().set(500).unwrap();
/// assert_eq!(handle.snapshot().canary.routed, 0);
/// ```
#[derive(Clone)]
pub struct CanaryHandle {
    weight: Weight,
    book: Arc<Book>,
}

impl CanaryHandle {
    /// The live weight.
    ///
    /// ```
    /// # use degrade_canary::Canary;
    /// # let c = Canary::new(tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }), tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
    /// assert_eq!(c.handle().weight().get(), 0);
    /// ```
    pub fn weight(&self) -> &Weight {
        &self.weight
    }

    /// Both arms' cumulative statistics.
    ///
    /// ```
    /// # use degrade_canary::Canary;
    /// # let c = Canary::new(tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }), tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
    /// assert_eq!(c.handle().snapshot().stable.samples(), 0);
    /// ```
    pub fn snapshot(&self) -> CanarySnapshot {
        let mut snap = self.book.stats.snapshot();
        snap.weight_bp = Some(self.weight.get());
        snap
    }

    /// The judge of a rollout (`reader`, an id from `TimingSampler::new_reader`) read a
    /// window whose smaller arm had `calls` judged calls and needs `timed` timed calls per
    /// arm: both arms time 1 call in the largest power of two `n ≤ 16` that keeps them.
    pub(crate) fn window_saw(&self, reader: u64, calls: u64, timed: u64) {
        self.book.timing.window_saw(reader, calls, timed);
    }
}

impl fmt::Debug for CanaryHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CanaryHandle")
            .field("weight", &self.weight)
            .finish_non_exhaustive()
    }
}

/// Routes each request to `stable` or `candidate`, decided in `call` from the live [`Weight`],
/// a sticky key, and an allow-listed override; records the arm taken and the outcome.
///
/// `poll_ready` waits for both arms (as `tower::steer::Steer` does), so the arm is chosen per
/// request from the weight and never from which backend happens to be ready.
///
/// Clones (axum clones per connection) share the weight, the stride and the statistics.
///
/// ```
/// use degrade_canary::{Arm, Canary, Weight};
/// use tower::{Service, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let weight = Weight::new(2_500).unwrap(); // 25 %
/// let mut svc = Canary::builder(
///     service_fn(|_: ()| async { Ok::<_, std::convert::Infallible>("v1") }),
///     service_fn(|_: ()| async { Ok::<_, std::convert::Infallible>("v2") }),
/// ).weight(weight.clone()).build().unwrap();
/// let mut v2 = 0;
/// for _ in 0..100 {
///     if svc.ready().await.unwrap().call(()).await.unwrap() == "v2" { v2 += 1; }
/// }
/// assert_eq!(v2, 25); // the unkeyed split is deterministic
/// assert_eq!(svc.snapshot().canary.routed, 25);
/// # }
/// ```
pub struct Canary<
    S,
    C,
    K = Global,
    O = NoOverride,
    Cl: 'static = DefaultClassifier,
    M = Plain,
    Clk = FastClock,
> {
    stable: S,
    candidate: C,
    shared: Arc<Shared<K, O>>,
    book: Arc<Book>,
    /// Held as a `&'static` when zero-sized (the default classifiers), else in an `Arc`.
    classifier: Held<Cl>,
    /// Cloned into the response futures of timed calls only.
    clock: Clk,
    _mode: PhantomData<fn() -> M>,
}

impl<S, C> Canary<S, C> {
    /// A router over `stable` and `candidate` with the defaults: weight 0 (everything on
    /// stable), unkeyed, no override, the default classifier, no response tag, the default
    /// clock ([`CanaryBuilder::clock`]). The defaults are valid, so this cannot fail; [`builder`](Self::builder) sets
    /// the rest.
    ///
    /// ```
    /// use degrade_canary::Canary;
    /// let svc = Canary::new(
    ///     tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }),
    ///     tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }),
    /// );
    /// assert_eq!(svc.weight().get(), 0);
    /// ```
    pub fn new(stable: S, candidate: C) -> Self {
        Self::builder(stable, candidate)
            .build()
            .expect("the default settings are valid")
    }

    /// A builder over `stable` and `candidate`, to set the weight, the sticky key, the
    /// override, the classifier, the response tag and the clock.
    pub fn builder(stable: S, candidate: C) -> CanaryBuilder<S, C> {
        CanaryBuilder {
            stable,
            candidate,
            weight: None,
            key: Global,
            force: NoOverride,
            classifier: DefaultClassifier,
            clock: FastClock::unless_pausable(),
            fixed_timing: None,
            _mode: PhantomData,
        }
    }
}

impl<S, C, K, O, Cl, M, Clk> Canary<S, C, K, O, Cl, M, Clk> {
    /// The weight, statistics view shared by every clone.
    pub fn handle(&self) -> CanaryHandle {
        CanaryHandle {
            weight: self.shared.weight.clone(),
            book: self.book.clone(),
        }
    }

    /// Both arms' cumulative statistics.
    ///
    /// ```
    /// # use degrade_canary::Canary;
    /// # let c = Canary::new(tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }), tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
    /// assert_eq!(c.snapshot().canary.failures, 0);
    /// ```
    pub fn snapshot(&self) -> CanarySnapshot {
        let mut snap = self.book.stats.snapshot();
        snap.weight_bp = Some(self.shared.weight.get());
        snap
    }

    /// The live weight.
    ///
    /// ```
    /// # use degrade_canary::Canary;
    /// # let c = Canary::new(tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }), tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }));
    /// c.weight().set(100).unwrap();
    /// assert_eq!(c.handle().weight().get(), 100); // every clone and handle sees it
    /// ```
    pub fn weight(&self) -> &Weight {
        &self.shared.weight
    }

    degrade_core::inner_service_accessors!((S, C), (stable, candidate));
}

impl<S: Clone, C: Clone, K, O, Cl, M, Clk: Clone> Clone for Canary<S, C, K, O, Cl, M, Clk> {
    fn clone(&self) -> Self {
        Self {
            stable: self.stable.clone(),
            candidate: self.candidate.clone(),
            shared: self.shared.clone(),
            book: self.book.clone(),
            classifier: self.classifier.clone(),
            clock: self.clock.clone(),
            _mode: PhantomData,
        }
    }
}

impl<S: fmt::Debug, C: fmt::Debug, K, O, Cl, M, Clk> fmt::Debug for Canary<S, C, K, O, Cl, M, Clk> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Canary")
            .field("stable", &self.stable)
            .field("candidate", &self.candidate)
            .field("weight", &self.shared.weight)
            .finish_non_exhaustive()
    }
}

impl<R, S, C, K, O, Cl, M, Clk> Service<R> for Canary<S, C, K, O, Cl, M, Clk>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
    C: Service<R, Response = S::Response>,
    C::Error: Into<BoxError>,
    K: StickyKey<R>,
    O: ForceArm<R>,
    Cl: Classifier<S::Response, BoxError>,
    M: TagArm<S::Response>,
    Clk: Clock,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C::Future, Cl, M, Clk>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let stable = self.stable.poll_ready(cx).map_err(Into::into)?;
        let candidate = self.candidate.poll_ready(cx).map_err(Into::into)?;
        if stable.is_ready() && candidate.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    #[inline(always)]
    fn call(&mut self, req: R) -> Self::Future {
        // Every layer further in shares this call's start instant.
        let _scope = degrade_core::clock::CallScope::enter();
        let (arm, forced, group) = self.shared.pick(&req);
        // A call that is not timed reads no clock, here or when it completes.
        let stats = self.book.stats.get();
        let start = stats
            .routed(arm, forced)
            .is_some_and(|seq| self.book.timing.is_timed(seq))
            .then(|| (self.clock.epoch(), self.clock.clone()));
        let guard = Guard::new(
            stats,
            self.classifier.clone(),
            arm,
            group,
            forced,
            start.is_some(),
        );
        let inner = match arm {
            Arm::Stable => Inner::Stable {
                fut: self.stable.call(req),
            },
            Arm::Canary => Inner::Canary {
                fut: self.candidate.call(req),
            },
        };
        ResponseFuture::new(inner, start, guard)
    }
}

/// Builds a [`Canary`]. Obtained from [`Canary::builder`].
///
/// ```
/// use degrade_canary::{Canary, Weight, key::from_fn};
/// let svc = Canary::builder(
///     tower::service_fn(|u: u64| async move { Ok::<_, std::convert::Infallible>(u) }),
///     tower::service_fn(|u: u64| async move { Ok::<_, std::convert::Infallible>(u) }),
/// )
/// .weight(Weight::new(100).unwrap())
/// .key(from_fn(|user: &u64| Some(*user)))
/// .build()
/// .unwrap();
/// assert_eq!(svc.weight().get(), 100);
/// ```
pub struct CanaryBuilder<
    S,
    C,
    K = Global,
    O = NoOverride,
    Cl = DefaultClassifier,
    M = Plain,
    Clk = FastClock,
> {
    stable: S,
    candidate: C,
    weight: Option<Weight>,
    key: K,
    force: O,
    classifier: Cl,
    clock: Clk,
    /// Time 1 call in this many whatever the judge reads (simulations only).
    fixed_timing: Option<u64>,
    _mode: PhantomData<fn() -> M>,
}

impl<S, C, K, O, Cl, M, Clk> fmt::Debug for CanaryBuilder<S, C, K, O, Cl, M, Clk> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CanaryBuilder")
            .field("weight", &self.weight)
            .finish_non_exhaustive()
    }
}

impl<S, C, K, O, Cl, M, Clk> CanaryBuilder<S, C, K, O, Cl, M, Clk> {
    /// Uses `weight` (shared with whoever holds a clone) instead of a fresh weight of 0.
    #[must_use]
    pub fn weight(mut self, weight: Weight) -> Self {
        self.weight = Some(weight);
        self
    }

    /// Routes by a sticky key (see [`crate::key`]).
    pub fn key<K2>(self, key: K2) -> CanaryBuilder<S, C, K2, O, Cl, M, Clk> {
        CanaryBuilder {
            stable: self.stable,
            candidate: self.candidate,
            weight: self.weight,
            key,
            force: self.force,
            classifier: self.classifier,
            clock: self.clock,
            fixed_timing: self.fixed_timing,
            _mode: PhantomData,
        }
    }

    /// Lets `force` pin requests to an arm (see [`crate::key::ForceArm`]).
    pub fn force<O2>(self, force: O2) -> CanaryBuilder<S, C, K, O2, Cl, M, Clk> {
        CanaryBuilder {
            stable: self.stable,
            candidate: self.candidate,
            weight: self.weight,
            key: self.key,
            force,
            classifier: self.classifier,
            clock: self.clock,
            fixed_timing: self.fixed_timing,
            _mode: PhantomData,
        }
    }

    /// Judges outcomes with `classifier` (e.g. `degrade_core::HttpClassifier`: 5xx fail).
    pub fn classifier<Cl2>(self, classifier: Cl2) -> CanaryBuilder<S, C, K, O, Cl2, M, Clk> {
        CanaryBuilder {
            stable: self.stable,
            candidate: self.candidate,
            weight: self.weight,
            key: self.key,
            force: self.force,
            classifier,
            clock: self.clock,
            fixed_timing: self.fixed_timing,
            _mode: PhantomData,
        }
    }

    /// Measures latency with `clock`. The default is
    /// [`FastClock::unless_pausable`](degrade_core::FastClock::unless_pausable), chosen when
    /// the builder is made: the CPU's counter outside any runtime and on a multi-thread
    /// runtime, `TokioClock` inside a current-thread runtime (where tokio's time can be
    /// paused, so paused-time tests keep working). It is the rate limiter's default too: in a
    /// stack of degrade's layers the first counter read of a request is the start of every
    /// other layer's (see `degrade_core::clock::CallScope`). A clock given here is never
    /// replaced; give `TokioClock` or a `ManualClock` to a router built outside the runtime
    /// whose paused time a test drives.
    ///
    /// ```
    /// use degrade_canary::Canary;
    /// use degrade_core::ManualClock;
    /// use std::time::Duration;
    /// use tower::{Service, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let clock = ManualClock::new();
    /// let tick = clock.clone();
    /// let slow = tower::service_fn(move |_: ()| {
    ///     tick.advance(Duration::from_millis(40)); // the call "takes" 40 ms
    ///     async { Ok::<_, std::convert::Infallible>(()) }
    /// });
    /// let mut svc = Canary::builder(slow.clone(), slow).clock(clock).build().unwrap();
    /// svc.ready().await.unwrap().call(()).await.unwrap();
    /// let stable = svc.snapshot().stable;
    /// assert_eq!(stable.latency.count(), 1);
    /// assert!(stable.latency.quantile(0.5).unwrap() >= Duration::from_millis(38));
    /// # }
    /// ```
    pub fn clock<Clk2: Clock>(self, clock: Clk2) -> CanaryBuilder<S, C, K, O, Cl, M, Clk2> {
        CanaryBuilder {
            stable: self.stable,
            candidate: self.candidate,
            weight: self.weight,
            key: self.key,
            force: self.force,
            classifier: self.classifier,
            clock,
            fixed_timing: self.fixed_timing,
            _mode: PhantomData,
        }
    }

    /// Times 1 call in `every` (a power of two ≤ 16) of each thread's calls of each arm,
    /// whatever the judge reads: the sampled path at any traffic, for the simulator.
    #[cfg(feature = "sim")]
    #[must_use]
    pub(crate) fn fixed_timing(mut self, every: u64) -> Self {
        self.fixed_timing = Some(every);
        self
    }

    /// (feature `http`) Inserts the [`Arm`] as an extension of every response.
    #[cfg(feature = "http")]
    pub fn http(self) -> CanaryBuilder<S, C, K, O, Cl, Extension, Clk> {
        CanaryBuilder {
            stable: self.stable,
            candidate: self.candidate,
            weight: self.weight,
            key: self.key,
            force: self.force,
            classifier: self.classifier,
            clock: self.clock,
            fixed_timing: self.fixed_timing,
            _mode: PhantomData,
        }
    }

    /// Builds the router. All state is created here, once.
    ///
    /// # Errors
    ///
    /// None with the settings this builder has today (each part — [`Weight`], the override's
    /// allow-list — is validated when it is made); the `Result` keeps the shape every builder
    /// in the family has, so a setting that needs checking can be added without breaking
    /// callers.
    ///
    /// ```
    /// # use degrade_canary::{Canary, Weight};
    /// let svc = Canary::builder(
    ///     tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }),
    ///     tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }),
    /// )
    /// .weight(Weight::new(2_500)?)
    /// .build()?;
    /// assert_eq!(svc.weight().get(), 2_500);
    /// # Ok::<(), degrade_core::ConfigError>(())
    /// ```
    #[allow(
        clippy::type_complexity,
        reason = "the router's own type; an alias would only rename it"
    )]
    pub fn build(self) -> Result<Canary<S, C, K, O, Cl, M, Clk>, ConfigError> {
        let weight = match self.weight {
            Some(w) => w,
            None => Weight::new(0)?,
        };
        Ok(Canary {
            stable: self.stable,
            candidate: self.candidate,
            shared: Arc::new(Shared {
                weight,
                seq: ShardedCounter::new(),
                key: self.key,
                force: self.force,
            }),
            book: Arc::new(Book {
                stats: Stats::take(),
                timing: self
                    .fixed_timing
                    .map_or_else(TimingSampler::warm, TimingSampler::fixed),
            }),
            classifier: Held::new(self.classifier),
            clock: self.clock,
            _mode: PhantomData,
        })
    }
}
