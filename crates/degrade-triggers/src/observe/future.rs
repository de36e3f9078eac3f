//! The response future of the [`Observe`](super::Observe) service.

use super::Inner;
use crate::observe::histogram::{CANCELLED, FAILURES, SLOW, TIMEOUTS, Tally};
use degrade_core::recycle::Held;
use degrade_core::{Classifier, Clock, Outcome};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::Instant;

/// Records the end of one call exactly once: when the response completes, or on drop (a
/// dropped future is a cancelled call, counted apart and not as a latency).
///
/// The tally is reached through a `&'static` (degrade-core's `recycle`): no reference count
/// is written per call. The end of the call is the guard's last write to it.
pub(crate) struct Guard<K: 'static, C> {
    tally: &'static Tally,
    /// A `&'static` when zero-sized (the default classifiers), else an `Arc`.
    classifier: Held<K>,
    slow: Option<Duration>,
    /// The start instant of a timed call and the clock to read its end; `None` for a call
    /// only counted (no clock cloned).
    start: Option<(Instant, C)>,
    done: bool,
}

impl<K, C: Clock> Guard<K, C> {
    #[inline]
    pub(crate) fn new(inner: &Inner<K, C>) -> Self {
        let (tally, timed) = inner.hist.start();
        let start = timed.then(|| (inner.clock.now(), inner.clock.clone()));
        Self {
            tally,
            classifier: inner.classifier.clone(),
            slow: inner.slow,
            start,
            done: false,
        }
    }
}

impl<K, C: Clock> Guard<K, C> {
    #[inline]
    fn finish(&mut self, outcome: Outcome, timed_out: bool) {
        self.done = true;
        let latency = self
            .start
            .as_ref()
            .map(|(start, clock)| clock.now().saturating_duration_since(*start));
        let outcome = match (self.slow, latency) {
            (Some(threshold), Some(latency)) => outcome.slow_if(latency, threshold),
            _ => outcome,
        };
        let counter = match outcome {
            Outcome::Ignored => return self.tally.end_ignored(),
            Outcome::Failure if timed_out => TIMEOUTS,
            Outcome::Failure => FAILURES,
            Outcome::Slow => SLOW,
            Outcome::Success => usize::MAX,
        };
        self.tally.end(latency, counter);
    }
}

impl<K, C> Drop for Guard<K, C> {
    fn drop(&mut self) {
        if !self.done {
            self.tally.end(None, CANCELLED);
        }
    }
}

pin_project! {
    /// Future of an [`Observe`](super::Observe) service: the inner future, whose result is
    /// classified and recorded when it completes. The output is the inner service's, unchanged.
    ///
    /// ```
    /// use degrade_triggers::ObserveLayer;
    /// use tower::{Layer, Service};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let layer = ObserveLayer::new();
    /// let mut svc = layer.layer(tower::service_fn(|()| async { Ok::<_, std::convert::Infallible>(()) }));
    /// let fut: degrade_triggers::observe::ResponseFuture<_, _, _> = svc.call(());
    /// fut.await.unwrap();
    /// assert_eq!(layer.snapshot().calls, 1);
    /// # }
    /// ```
    pub struct ResponseFuture<F, K: 'static, C> {
        #[pin]
        fut: F,
        guard: Guard<K, C>,
    }
}

impl<F, K, C> ResponseFuture<F, K, C> {
    #[inline]
    pub(crate) fn new(fut: F, guard: Guard<K, C>) -> Self {
        Self { fut, guard }
    }
}

impl<F, K, C, T, E> Future for ResponseFuture<F, K, C>
where
    F: Future<Output = Result<T, E>>,
    K: Classifier<T, E>,
    C: Clock,
    E: 'static,
{
    type Output = Result<T, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.fut.poll(cx));
        if !this.guard.done {
            match &out {
                Ok(res) => {
                    let o = this.guard.classifier.classify_response(res);
                    this.guard.finish(o, false);
                }
                Err(err) => {
                    let o = this.guard.classifier.classify_error(err);
                    this.guard.finish(o, is_timeout(err));
                }
            }
        }
        Poll::Ready(out)
    }
}

impl<F, K, C> std::fmt::Debug for ResponseFuture<F, K, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// Whether an error is a timeout: tower's or tokio's `Elapsed`, directly or boxed.
fn is_timeout<E: 'static>(err: &E) -> bool {
    use tower::timeout::error::Elapsed as TowerElapsed;
    let any: &dyn std::any::Any = err;
    if any.is::<TowerElapsed>() || any.is::<tokio::time::error::Elapsed>() {
        return true;
    }
    any.downcast_ref::<degrade_core::BoxError>()
        .is_some_and(|b| b.is::<TowerElapsed>() || b.is::<tokio::time::error::Elapsed>())
}
