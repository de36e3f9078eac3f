//! Response futures of the [`Degrade`](super::Degrade) service.
//!
//! Every answer mode shares one state machine ([`Core`]): the inner call holding its slot of
//! the limit (given back when the response completes, or when the future is dropped: a
//! cancellation), a wait for a slot (with the ready inner service and the request held until
//! then, and at the latest until the wait's deadline), or a rejection.

use super::{Gate, Permit};
use crate::limit::{Completion, Fate, Ticket};
use crate::outcome::{Classifier, DefaultClassifier, Outcome};
use crate::priority::Priority;
use crate::rejection::Shed;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::time::{Instant, Sleep};
use tower_service::Service;

/// A request waiting for a slot. Boxed: only requests that find the limit full get one.
pub(crate) struct Wait<S, R> {
    gate: Arc<Gate>,
    ticket: Ticket,
    /// The latest it waits, on the limiter's clock: past it the request leaves the queue and
    /// is refused, even when no arrival or freed slot runs the queue's expiry pass (a hung
    /// backend and no new requests).
    deadline: Instant,
    /// When a request held to its priority's share may take a free slot (see the limiter's
    /// hold): the timer wakes it then first, and is re-armed once for the deadline.
    hold: Option<Instant>,
    /// Wakes the future at `deadline` (at `hold` first, if any): armed at the first poll that
    /// finds the request still waiting (boxed, as the wait is: the overload path may allocate,
    /// the admit path may not). It is re-armed once at most (from the hold to the deadline),
    /// so it cannot spin: once it has fired for the deadline, the deadline counts as
    /// passed (the limiter's clock, the timeline of `deadline`, is tokio's in a current-thread
    /// runtime and otherwise the counter timeline kept within about a microsecond of the OS
    /// clock tokio's timer follows). Outside a tokio runtime no timer is armed and the wait is
    /// bounded by the expiry pass of the next arrival or freed slot, as before.
    timer: Option<Pin<Box<Sleep>>>,
    priority: Priority,
    svc: Option<S>,
    req: Option<R>,
    /// Its fate is read (granted, expired or evicted): nothing to withdraw on drop.
    settled: bool,
}

/// Whether a request waiting until `deadline` is past it at `now`; if not, `timer` is armed
/// (once) to wake `cx` at the deadline.
fn due(
    timer: &mut Option<Pin<Box<Sleep>>>,
    deadline: Instant,
    now: Instant,
    cx: &mut Context<'_>,
) -> bool {
    if now >= deadline {
        return true;
    }
    let timer = match timer {
        Some(timer) => timer,
        None => {
            // `sleep_until` needs a runtime (with its time driver, as every tokio server
            // has); outside one, the queue's own expiry pass bounds the wait.
            if tokio::runtime::Handle::try_current().is_err() {
                return false;
            }
            timer.insert(Box::pin(tokio::time::sleep_until(deadline)))
        }
    };
    // Fired: the deadline has come (on tokio's timer; the limiter's clock may read it a
    // microsecond short, which does not keep the request waiting).
    timer.as_mut().poll(cx).is_ready()
}

impl<S, R> Drop for Wait<S, R> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // The caller gave up while the request waited.
        self.gate.abandoned(self.priority);
        if let Some(limiter) = &self.gate.limiter
            && limiter.withdraw(self.ticket, None) == Some(Fate::Granted)
        {
            // A slot was handed over meanwhile and will never be used.
            limiter.release();
        }
    }
}

pin_project! {
    /// The states every answer mode shares.
    #[project = CoreProj]
    pub(crate) enum Core<F, S, R> {
        Called { #[pin] fut: F },
        Waiting { wait: Box<Wait<S, R>> },
        Rejected { shed: Option<Shed> },
    }
}

impl<F, S, R> Core<F, S, R> {
    #[inline]
    pub(crate) fn called(fut: F) -> Self {
        Core::Called { fut }
    }

    pub(crate) fn waiting(
        gate: Arc<Gate>,
        ticket: Ticket,
        (deadline, hold): (Instant, Option<Instant>),
        priority: Priority,
        svc: S,
        req: R,
    ) -> Self {
        Core::Waiting {
            wait: Box::new(Wait {
                gate,
                ticket,
                deadline,
                hold,
                timer: None,
                priority,
                svc: Some(svc),
                req: Some(req),
                settled: false,
            }),
        }
    }

    pub(crate) fn rejected(shed: Shed) -> Self {
        Core::Rejected { shed: Some(shed) }
    }
}

impl<F, S, R, T, E> Core<F, S, R>
where
    S: Service<R, Future = F, Response = T, Error = E>,
    F: Future<Output = Result<T, E>>,
{
    /// Polls to the inner answer, handed to `answer` with the slot it held (which `answer`
    /// gives back with what the answer says), or to a rejection, handed to `reject`.
    #[inline(always)]
    fn poll_core<O>(
        mut self: Pin<&mut Self>,
        permit: &mut Permit,
        cx: &mut Context<'_>,
        answer: impl FnOnce(Result<T, E>, &mut Permit) -> O,
        reject: impl FnOnce(Shed) -> O,
    ) -> Poll<O> {
        // The admit path, kept small enough to inline into the caller; waits and rejections
        // are out of line.
        loop {
            if let CoreProj::Called { fut } = self.as_mut().project() {
                let out = ready!(fut.poll(cx));
                return Poll::Ready(answer(out, permit));
            }
            if let Some(shed) = ready!(self.as_mut().poll_other(permit, cx)) {
                return Poll::Ready(reject(shed));
            }
            // Now called: the state is `Called`.
        }
    }

    /// Moves a waiting request on: `Ready(None)` once it is called, `Ready(Some(shed))` when
    /// refused.
    #[inline(never)]
    fn poll_other(
        mut self: Pin<&mut Self>,
        permit: &mut Permit,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Shed>> {
        let fut = match self.as_mut().project() {
            CoreProj::Called { .. } => return Poll::Ready(None),
            CoreProj::Rejected { shed } => {
                return match shed.take() {
                    Some(shed) => Poll::Ready(Some(shed)),
                    None => panic!("degrade future polled after completion"),
                };
            }
            CoreProj::Waiting { wait } => {
                let Some(limiter) = &wait.gate.limiter else {
                    panic!("a degrade future waits without a limiter");
                };
                if !wait.settled {
                    let fate = loop {
                        if let Some(fate) = limiter.poll_ticket(wait.ticket, cx.waker()) {
                            break fate;
                        }
                        if let Some(hold) = wait.hold {
                            if !due(&mut wait.timer, hold, limiter.now(), cx) {
                                return Poll::Pending;
                            }
                            // The hold ended: a free slot may go to this priority now. The
                            // timer is re-armed once, for the deadline.
                            wait.hold = None;
                            if let Some(timer) = wait.timer.as_mut() {
                                timer.as_mut().reset(wait.deadline);
                            }
                            limiter.hold_ended();
                            continue;
                        }
                        if !due(&mut wait.timer, wait.deadline, limiter.now(), cx) {
                            return Poll::Pending;
                        }
                        // Past its deadline: it leaves the queue, counted expired there (once:
                        // by `withdraw`, or by the expiry pass that decided its fate first),
                        // unless a slot was handed to it meanwhile, which it then uses.
                        break limiter
                            .withdraw(wait.ticket, Some(wait.priority))
                            .unwrap_or(Fate::Expired);
                    };
                    match fate {
                        Fate::Granted => wait.settled = true,
                        Fate::Expired | Fate::Evicted => {
                            wait.settled = true;
                            let shed = wait.gate.limited(wait.priority);
                            self.set(Core::Rejected { shed: None });
                            return Poll::Ready(Some(shed));
                        }
                    }
                }
                // Granted: the slot is ours; the inner service was ready when `call` ran, and
                // is asked again before the call, as readiness may have lapsed meanwhile.
                let Some(svc) = wait.svc.as_mut() else {
                    panic!("degrade future polled after completion");
                };
                if ready!(svc.poll_ready(cx)).is_err() {
                    // The service failed while the request waited: its error is for the
                    // call to report, so call it anyway (tower services answer a call made
                    // after a failed `poll_ready` with that error, or serve it).
                }
                let (Some(mut svc), Some(req)) = (wait.svc.take(), wait.req.take()) else {
                    panic!("degrade future polled after completion");
                };
                wait.gate.admitted(wait.priority);
                let fut = svc.call(req);
                *permit = limiter.granted_permit();
                fut
            }
        };
        self.set(Core::Called { fut });
        Poll::Ready(None)
    }
}

/// Gives the slot back with what the answer says about the service.
#[inline(always)]
fn finish(permit: &mut Permit, outcome: impl FnOnce() -> Outcome) {
    if permit.holds() {
        give_back(permit, completion(outcome()));
    }
}

/// The slot's way back, out of line: the closure that passes the answer on stays small
/// enough to inline into the future's `poll`, so the answer reaches the caller in registers.
/// Out of line with the slot's way back in it, the closure wrote a 16-byte answer to memory
/// in two 8-byte halves that the caller read back whole — a store-forwarding stall (`perf
/// annotate` of `call_now`; criterion `admission/degrade/admit` 15.6 → 14.3 ns).
#[inline(never)]
fn give_back(permit: &mut Permit, completion: Completion) {
    permit.finish(completion);
}

/// A failed answer, out of line (see [`give_back`]): judged once a `BoxError`, so that a
/// rejection by another degrade layer further in is recognised and ignored, as the
/// `DefaultClassifier` does.
#[cold]
#[inline(never)]
fn failed(e: crate::BoxError, permit: &mut Permit) -> crate::BoxError {
    finish(permit, || {
        Classifier::<(), crate::BoxError>::classify_error(&DefaultClassifier, &e)
    });
    e
}

fn completion(outcome: Outcome) -> Completion {
    match outcome {
        Outcome::Success | Outcome::Slow => Completion::Success,
        Outcome::Failure => Completion::Failure,
        Outcome::Ignored => Completion::Ignored,
    }
}

pin_project! {
    /// Future of a [`Degrade`](super::Degrade) service in [`Errors`](super::Errors) mode: the
    /// inner call (perhaps after a short wait for a slot), or a [`Shed`] error.
    ///
    /// ```
    /// use degrade_core::degrade::Admission;
    /// use degrade_core::{Controller, DegradeLayer, Level};
    /// use tower::{Layer, Service};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let c = Controller::new(Default::default()).unwrap();
    /// c.pin(Level::Heavy); // Normal priority is shed at Heavy
    /// let mut svc = DegradeLayer::builder(c.handle())
    ///     .admission(Admission::LevelShares)
    ///     .build()
    ///     .unwrap()
    ///     .layer(tower::service_fn(|()| async { Ok::<_, std::convert::Infallible>(()) }));
    /// let fut: degrade_core::degrade::ResponseFuture<_, _, _> = svc.call(());
    /// assert!(fut.await.unwrap_err().is::<degrade_core::Shed>());
    /// # }
    /// ```
    pub struct ResponseFuture<F, S, R> {
        #[pin]
        core: Core<F, S, R>,
        // Beside the state, not in its `Called` variant: the inner service's future is then
        // written where it stays (see `Degrade::call`). Nothing held until admitted.
        permit: Permit,
    }
}

impl<F, S, R> ResponseFuture<F, S, R> {
    #[inline]
    pub(super) fn new(core: Core<F, S, R>, permit: Permit) -> Self {
        Self { core, permit }
    }
}

impl<F, S, R, T, E> Future for ResponseFuture<F, S, R>
where
    S: Service<R, Future = F, Response = T, Error = E>,
    F: Future<Output = Result<T, E>>,
    E: Into<crate::BoxError>,
{
    type Output = Result<T, crate::BoxError>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        this.core.poll_core(
            this.permit,
            cx,
            |answer, permit| match answer {
                Ok(t) => {
                    finish(permit, || Outcome::Success);
                    Ok(t)
                }
                Err(e) => Err(failed(e.into(), permit)),
            },
            |shed| Err(Box::new(shed) as crate::BoxError),
        )
    }
}

impl<F, S, R> std::fmt::Debug for ResponseFuture<F, S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

#[cfg(feature = "http")]
pin_project! {
    /// Future of a [`Degrade`](super::Degrade) service that answers rejections itself (HTTP or
    /// gRPC mode `M`): the inner call, or a rejection response. The error type is the inner
    /// service's, so `Infallible` services stay infallible.
    ///
    /// ```
    /// # #[cfg(feature = "http")] {
    /// use degrade_core::degrade::Admission;
    /// use degrade_core::{Controller, DegradeLayer, Level};
    /// use tower::{Layer, Service};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let c = Controller::new(Default::default()).unwrap();
    /// c.pin(Level::Heavy);
    /// let mut svc = DegradeLayer::builder(c.handle())
    ///     .admission(Admission::LevelShares)
    ///     .build()
    ///     .unwrap()
    ///     .http()
    ///     .layer(tower::service_fn(|_: http::Request<()>| async {
    ///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    ///     }));
    /// let res = svc.call(http::Request::new(())).await.unwrap();
    /// assert_eq!(res.status(), 503);
    /// # }
    /// # }
    /// ```
    pub struct RespondFuture<F, B, S, R, M> {
        #[pin]
        core: Core<F, S, R>,
        permit: Permit,
        _mode: std::marker::PhantomData<fn() -> (B, M)>,
    }
}

#[cfg(feature = "http")]
impl<F, B, S, R, M> RespondFuture<F, B, S, R, M> {
    #[inline]
    pub(super) fn new(core: Core<F, S, R>, permit: Permit) -> Self {
        Self {
            core,
            permit,
            _mode: std::marker::PhantomData,
        }
    }
}

#[cfg(feature = "http")]
impl<F, B, S, R, M, E> Future for RespondFuture<F, B, S, R, M>
where
    S: Service<R, Future = F, Response = http::Response<B>, Error = E>,
    F: Future<Output = Result<http::Response<B>, E>>,
    M: super::Respond,
    B: Default,
{
    type Output = Result<http::Response<B>, E>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        this.core.poll_core(
            this.permit,
            cx,
            |answer, permit| {
                finish(permit, || match &answer {
                    Ok(res) => M::outcome(res),
                    Err(_) => Outcome::Failure,
                });
                answer
            },
            |shed| Ok(M::respond(&shed)),
        )
    }
}

#[cfg(feature = "http")]
impl<F, B, S, R, M> std::fmt::Debug for RespondFuture<F, B, S, R, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RespondFuture").finish_non_exhaustive()
    }
}
