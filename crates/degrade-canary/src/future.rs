//! The response future of [`Canary`](crate::Canary).

use crate::arm::Arm;
use crate::service::TagArm;
use crate::stats::{Stats, grouped};
use degrade_core::clock::Epoch;
use degrade_core::recycle::Held;
use degrade_core::{BoxError, Classifier, Clock, Outcome};
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

pin_project! {
    #[project = InnerProj]
    pub(crate) enum Inner<SF, CF> {
        Stable { #[pin] fut: SF },
        Canary { #[pin] fut: CF },
    }
}

/// Records the call as cancelled if the future is dropped before it completes (a caller's
/// timeout, a client gone): a hung arm must show up in its statistics, not vanish from them.
/// Forced calls are never judged, so they record nothing.
///
/// The statistics are reached through a `&'static` (degrade-core's `recycle`): no reference
/// count is written per call. Recording the outcome or the cancellation ends the call, and
/// the guard touches the statistics no more after it (they may be reused by a new router).
/// It exists before the arm's `call` runs, so an arm whose `call` panics ends the call too
/// (as cancelled) and cannot keep the statistics from being reused.
pub(crate) struct Guard<Cl: 'static> {
    stats: &'static Stats,
    /// A `&'static` when zero-sized (the default classifiers), else an `Arc`.
    classifier: Held<Cl>,
    arm: Arm,
    group: u8,
    /// What is left to record, decided once in `call`: one byte for `poll` to test.
    end: End,
}

/// What a call's end records.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The outcome count only: a call of no key group that was not timed (most calls under
    /// heavy traffic), recorded inline.
    Count,
    /// The outcome count, and the latency of a timed call and the counts of a keyed one's
    /// group: recorded out of line.
    Record,
    /// Nothing: the call completed already, or it was forced (never judged).
    Done,
}

impl<Cl> Guard<Cl> {
    /// A started call (counted in `routed`); `forced` calls record nothing.
    #[inline]
    pub(crate) fn new(
        stats: &'static Stats,
        classifier: Held<Cl>,
        arm: Arm,
        group: u8,
        forced: bool,
        timed: bool,
    ) -> Self {
        let end = if forced {
            End::Done
        } else if timed || grouped(group) {
            End::Record
        } else {
            End::Count
        };
        Self {
            stats,
            classifier,
            arm,
            group,
            end,
        }
    }
}

impl<Cl> Drop for Guard<Cl> {
    fn drop(&mut self) {
        if self.end != End::Done {
            self.stats.cancelled(self.arm, self.group);
        }
    }
}

pin_project! {
    /// The response future of [`Canary`](crate::Canary): the arm's own future, then the outcome
    /// recorded in the arm's statistics, and the latency if the call was timed (every call
    /// unless heavy traffic lets the router time 1 in `n`). A future dropped before it completes is a
    /// cancelled call: counted as such, and judged a failure of its arm by default (see
    /// [`JudgeConfig::cancelled_is_failure`](crate::JudgeConfig::cancelled_is_failure)). A
    /// request forced by the override is served but never judged.
    pub struct ResponseFuture<SF, CF, Cl: 'static, M, Clk> {
        #[pin]
        inner: Inner<SF, CF>,
        // The start reading of a timed call and the clock to read its end; `None` for a call
        // only counted (no clock cloned).
        start: Option<(Epoch, Clk)>,
        guard: Guard<Cl>,
        _mode: PhantomData<fn() -> M>,
    }
}

impl<SF, CF, Cl, M, Clk> ResponseFuture<SF, CF, Cl, M, Clk> {
    pub(crate) fn new(inner: Inner<SF, CF>, start: Option<(Epoch, Clk)>, guard: Guard<Cl>) -> Self {
        Self {
            inner,
            start,
            guard,
            _mode: PhantomData,
        }
    }

    /// The arm this request took.
    ///
    /// ```
    /// use degrade_canary::{Arm, Canary};
    /// use tower::Service;
    /// let mut svc = Canary::new(
    ///     tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }),
    ///     tower::service_fn(|x: u8| async move { Ok::<_, std::convert::Infallible>(x) }),
    /// );
    /// assert_eq!(svc.call(1).arm(), Arm::Stable);
    /// ```
    pub fn arm(&self) -> Arm {
        self.guard.arm
    }
}

impl<SF, CF, Cl, M, Clk> fmt::Debug for ResponseFuture<SF, CF, Cl, M, Clk> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("arm", &self.guard.arm)
            .finish_non_exhaustive()
    }
}

impl<SF, CF, Res, SE, CE, Cl, M, Clk> Future for ResponseFuture<SF, CF, Cl, M, Clk>
where
    SF: Future<Output = Result<Res, SE>>,
    CF: Future<Output = Result<Res, CE>>,
    SE: Into<BoxError>,
    CE: Into<BoxError>,
    Cl: Classifier<Res, BoxError>,
    M: TagArm<Res>,
    Clk: Clock,
{
    type Output = Result<Res, BoxError>;

    // Small (what is recorded out of line is in `finish_recorded`), so that a caller can
    // inline it: a caller that cannot reads the output back from memory.
    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.inner.project() {
            InnerProj::Stable { fut } => ready!(fut.poll(cx)).map_err(Into::into),
            InnerProj::Canary { fut } => ready!(fut.poll(cx)).map_err(Into::into),
        };
        let guard = this.guard;
        let end = std::mem::replace(&mut guard.end, End::Done);
        if end != End::Done {
            let outcome = match &result {
                Ok(res) => guard.classifier.classify_response(res),
                Err(err) => guard.classifier.classify_error(err),
            };
            if end == End::Count {
                guard.stats.ended(guard.arm, outcome);
            } else {
                finish_recorded(guard, outcome, this.start.as_ref());
            }
        }
        let arm = guard.arm;
        Poll::Ready(result.map(|mut res| {
            M::tag(&mut res, arm);
            res
        }))
    }
}

/// A call that was timed or has a key group: the histograms and the group's counts, out of
/// line, so that the `poll` of the other calls (most under heavy traffic) stays small enough
/// to inline.
#[inline(never)]
fn finish_recorded<Cl, Clk: Clock>(
    guard: &Guard<Cl>,
    outcome: Outcome,
    start: Option<&(Epoch, Clk)>,
) {
    let latency = start.map(|(start, clock)| Duration::from_nanos(clock.nanos_since(start)));
    guard
        .stats
        .finished(guard.arm, guard.group, outcome, latency);
}
