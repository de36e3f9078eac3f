//! Shared harness of the degrade benchmarks.
//!
//! The benchmarks themselves live in `benches/` (one `[[bench]]` per family, see the crate's
//! `README.md`); this library holds what every family measures the same way, so that a peer and
//! degrade always go through the identical harness:
//!
//! * [`call_now`]: one `poll_ready` + `call` + poll of the response future to completion, on
//!   a no-op waker, without any runtime;
//! * [`inner`]: the trivial inner service every stack wraps (an immediately ready echo);
//! * [`NeverReady`]: an inner service that is never ready, to drive peers such as tower's
//!   `LoadShed` down their reject path;
//! * [`contended`]: `n` threads calling clones of one service, for `iter_custom`;
//! * [`FrozenClock`]: a clock that never moves, to show a timing layer's cost without the
//!   clock's;
//! * [`min_ns_per_call`]: the fastest of several timed repetitions, for the `min_of_reps`-style
//!   examples that compare binaries on a shared machine.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::sync::Barrier;
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};
use tower::Service;

/// The request type of the admission benchmarks: small, `Copy`, and opaque to the optimiser
/// once passed through [`black_box`].
pub type Req = u64;

/// The inner service of every admission benchmark: answers its request at once
/// (`tower::service_fn(|r| std::future::ready(Ok(r)))`).
///
/// ```
/// let mut svc = degrade_benches::inner();
/// assert_eq!(degrade_benches::call_now(&mut svc, 7), Ok(7));
/// ```
pub fn inner()
-> impl Service<Req, Response = Req, Error = Infallible, Future = Ready<Result<Req, Infallible>>>
+ Clone
+ Send
+ Sync
+ 'static {
    tower::service_fn(|r: Req| ready(Ok::<_, Infallible>(r)))
}

/// The fastest of `repetitions` runs of `calls` calls of `f`, in nanoseconds per call: the
/// figure the `min_of_reps`-style examples report (on a shared machine the minimum is the run
/// least disturbed by others; a mean or median would measure the neighbours).
///
/// ```
/// let mut svc = degrade_benches::inner();
/// let ns = degrade_benches::min_ns_per_call(1_000, 3, || {
///     let _ = degrade_benches::call_now(&mut svc, 1);
/// });
/// assert!(ns.is_finite() && ns >= 0.0);
/// ```
pub fn min_ns_per_call(calls: u32, repetitions: u32, mut f: impl FnMut()) -> f64 {
    (0..repetitions)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..calls {
                f();
            }
            start.elapsed().as_secs_f64() * 1e9 / f64::from(calls)
        })
        .fold(f64::INFINITY, f64::min)
}

/// One request through `svc`: `poll_ready`, `call`, and a poll of the response future, all on
/// a no-op waker and without a runtime. This is one iteration of every admission benchmark.
///
/// # Panics
///
/// If the service is not ready at once or its future does not complete on the first poll:
/// every service measured here must be synchronous.
///
/// Always inlined, so that every member is measured inlined into the loop, as the baseline
/// and tower's `LoadShed` always were: left to the compiler, the larger members got an
/// out-of-line `call_now` whose 16-byte answer, written in two 8-byte halves, criterion's
/// `black_box` read back in one load right after — a store-forwarding stall of ~3.4 ns
/// charged to the member, not to its layer (stop 33, `perf annotate` of `Bencher::iter`).
///
/// ```
/// let mut svc = degrade_benches::inner();
/// assert_eq!(degrade_benches::call_now(&mut svc, 1), Ok(1));
/// ```
#[inline(always)]
pub fn call_now<S: Service<R>, R>(svc: &mut S, req: R) -> Result<S::Response, S::Error> {
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(e)) => return Err(e),
        Poll::Pending => panic!("benchmarked service was not ready at once"),
    }
    let fut = pin!(svc.call(req));
    match fut.poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("benchmarked response future did not complete on first poll"),
    }
}

/// An inner service that is never ready, so that a peer which sheds on `poll_ready` (tower's
/// `LoadShed`) takes its reject path.
///
/// ```
/// use tower::load_shed::LoadShed;
/// let mut svc = LoadShed::new(degrade_benches::NeverReady);
/// assert!(degrade_benches::call_now(&mut svc, 1).is_err());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct NeverReady;

impl Service<Req> for NeverReady {
    type Response = Req;
    type Error = Infallible;
    type Future = Ready<Result<Req, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Pending
    }

    fn call(&mut self, _: Req) -> Self::Future {
        unreachable!("NeverReady is never ready, so it is never called")
    }
}

/// Wall time for `threads` threads together making `iters` calls (split as evenly as
/// possible), each thread through its own clone of `svc`. Divided by `iters` (as
/// `iter_custom` does) it is the time per call at that throughput.
///
/// Threads are spawned and parked on a barrier before the clock starts, and released by a
/// second barrier after it started, so thread creation is not measured and no call is missed;
/// the clock stops when the last thread is joined. Each call's result is passed
/// through [`black_box`] and dropped.
///
/// ```
/// let t = degrade_benches::contended(&degrade_benches::inner(), 2, 1_000);
/// assert!(t > std::time::Duration::ZERO);
/// ```
pub fn contended<S>(svc: &S, threads: usize, iters: u64) -> Duration
where
    S: Service<Req> + Clone + Send,
{
    assert!(threads > 0, "at least one thread");
    let n = threads as u64;
    // Two barriers: every worker is parked (`ready`) before the clock starts, and the clock
    // starts before they are let go (`go`). Read after the release, the clock would miss
    // whatever the workers did before this thread was scheduled again (on a busy machine,
    // all of it).
    let ready = Barrier::new(threads + 1);
    let go = Barrier::new(threads + 1);
    thread::scope(|scope| {
        let workers: Vec<_> = (0..n)
            .map(|i| {
                let calls = iters / n + u64::from(i < iters % n);
                let mut svc = svc.clone();
                let (ready, go) = (&ready, &go);
                scope.spawn(move || {
                    ready.wait();
                    go.wait();
                    for _ in 0..calls {
                        let _ = black_box(call_now(&mut svc, black_box(i)));
                    }
                })
            })
            .collect();
        ready.wait();
        let start = Instant::now();
        go.wait();
        for w in workers {
            w.join().expect("benchmark thread panicked");
        }
        start.elapsed()
    })
}

/// A `degrade_core::Clock` that always answers the same instant: reading it costs a copy, so a
/// layer that times requests shows its own cost without the OS clock's. Not for production use
/// (every latency reads as zero).
///
/// ```
/// use degrade_benches::FrozenClock;
/// use degrade_core::Clock;
/// let c = FrozenClock::now_frozen();
/// assert_eq!(c.now(), c.now());
/// ```
#[derive(Debug, Clone, Copy)]
pub struct FrozenClock(pub tokio::time::Instant);

impl FrozenClock {
    /// A clock frozen at the current instant.
    pub fn now_frozen() -> Self {
        Self(tokio::time::Instant::now())
    }
}

impl degrade_core::Clock for FrozenClock {
    fn now(&self) -> tokio::time::Instant {
        self.0
    }
}
