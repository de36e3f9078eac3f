//! Behaviour of degrade-core's recycled objects (`recycle`) and the limiter's per-thread
//! leases (`limit/lease.rs`, through the layer) that the other tests left unpinned, found by
//! mutation testing (`cargo xtask mutants --scope cells`, see `docs/mutants.md`).

use degrade_core::limit::LimitConfig;
use degrade_core::recycle::{Held, Pool, Recycle};
use degrade_core::{BoxError, Controller, DegradeLayer};
use futures_util::FutureExt;
use std::convert::Infallible;
use std::future::ready;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use tower::{Layer, Service, ServiceExt};

#[derive(Default)]
struct InFlight(AtomicU64);

impl Recycle for InFlight {
    fn is_idle(&self) -> bool {
        self.0.load(Ordering::Acquire) == 0
    }
    fn reset(&self) {}
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct ZeroSized;

#[test]
fn a_zero_sized_value_is_held_as_a_static_reference_its_clones_share() {
    let held = Held::new(ZeroSized);
    assert!(held.is_static());
    let clone = held.clone();
    assert!(clone.is_static());
    assert_eq!(*clone, ZeroSized);
    let sized = Held::new(7u32);
    assert!(!sized.is_static());
    assert_eq!(*sized.clone(), 7);
}

#[test]
fn pools_holds_and_held_values_debug_as_their_kind() {
    static POOL: Pool<InFlight> = Pool::new();
    assert_eq!(format!("{POOL:?}"), "Pool { .. }");
    let owned = POOL.take(InFlight::default);
    assert_eq!(format!("{owned:?}"), "Pooled { .. }");
    assert_eq!(format!("{:?}", Held::new(7u32)), "Held(7)");
    assert_eq!(format!("{:?}", Held::new(ZeroSized)), "Held(ZeroSized)");
}

#[test]
fn a_hold_reads_the_object_its_pool_made_and_keeps_it_once_dropped() {
    static POOL: Pool<InFlight> = Pool::new();
    let owned = POOL.take(|| InFlight(AtomicU64::new(3)));
    assert_eq!(owned.0.load(Ordering::Relaxed), 3, "through Deref");
    let object = owned.get();
    assert!(std::ptr::eq(object, &*owned));
    drop(owned);
    assert_eq!(POOL.counts(), (1, 0, 1), "parked with calls in flight");
    object.0.store(0, Ordering::Release);
    let next = POOL.take(InFlight::default);
    assert!(std::ptr::eq(next.get(), object), "recycled once idle");
    assert_eq!(POOL.counts(), (1, 0, 0));
}

/// A layer whose limit is fixed at `limit`, without a queue.
fn fixed(limit: u32) -> DegradeLayer {
    let c = Controller::new(Default::default()).unwrap();
    DegradeLayer::builder(c.handle())
        .limit(LimitConfig {
            initial: limit,
            min: limit,
            max: limit,
            queue_size: 0.0,
            ..LimitConfig::default()
        })
        .build()
        .unwrap()
}

/// The slots kept by `idle` threads, each of which made `at_once` calls together (answered
/// at once) and then stays alive without calling again, and the requests that `limit` then
/// admits on this thread beside them.
fn kept_and_admitted_beside_idle_threads(limit: u32, idle: usize, at_once: usize) -> (u32, usize) {
    let layer = fixed(limit);
    let quick = layer.layer(tower::service_fn(|n: u8| ready(Ok::<_, Infallible>(n))));
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let done_rx = Arc::new(Mutex::new(done_rx));
    let (called_tx, called_rx) = mpsc::channel::<bool>();
    let threads: Vec<_> = (0..idle)
        .map(|_| {
            let mut svc = quick.clone();
            let (called, done) = (called_tx.clone(), done_rx.clone());
            thread::spawn(move || {
                // Every call admitted (its slot taken) before the first is answered.
                let calls: Vec<_> = (0..at_once)
                    .map(|_| {
                        svc.ready().now_or_never().unwrap().unwrap();
                        svc.call(1)
                    })
                    .collect();
                let ok = calls
                    .into_iter()
                    .all(|call| call.now_or_never().unwrap().is_ok());
                called.send(ok).unwrap();
                // Idle, alive: whatever it keeps stays kept until the test is done.
                let _ = done.lock().unwrap().recv();
            })
        })
        .collect();
    for _ in 0..idle {
        assert!(called_rx.recv().unwrap(), "an idle thread's one call");
    }
    let kept = layer.snapshot().limit.expect("an adaptive limit").kept;
    let mut held = Vec::new();
    let mut svc = layer.layer(tower::service_fn(|n: u8| async move {
        std::future::pending::<()>().await;
        Ok::<_, Infallible>(n)
    }));
    loop {
        svc.ready().now_or_never().unwrap().unwrap();
        let mut fut = Box::pin(svc.call(1));
        if fut.as_mut().now_or_never().is_some() {
            break; // refused
        }
        held.push(fut);
    }
    let admitted = admitted_now(&layer);
    drop(done_tx);
    for t in threads {
        t.join().unwrap();
    }
    (kept, admitted)
}

/// Requests in the inner service now (slots kept by threads not counted): a call that
/// waits in the queue — there is one once the law has learnt a baseline, which takes as
/// long as the machine is slow — is pending like an admitted one, but not counted here.
fn admitted_now(layer: &DegradeLayer) -> usize {
    layer.snapshot().limit.expect("an adaptive limit").in_flight as usize
}

#[test]
fn idle_threads_keep_one_slot_under_thirty_two_and_two_from_there() {
    // Each idle thread keeps what its calls gave back up to the stated bound — one slot each
    // under 32 (all of a limit of 2 for two threads), two from 32 (at most half the limit for
    // eight threads) — until it touches the layer. Whatever they keep, this thread gets the
    // whole limit: filling it revokes the leases, and slots kept under revoked leases count
    // as free.
    assert_eq!(kept_and_admitted_beside_idle_threads(2, 2, 1), (2, 2));
    assert_eq!(kept_and_admitted_beside_idle_threads(3, 2, 1), (2, 3));
    assert_eq!(kept_and_admitted_beside_idle_threads(15, 2, 2), (2, 15));
    assert_eq!(kept_and_admitted_beside_idle_threads(16, 2, 2), (2, 16));
    assert_eq!(kept_and_admitted_beside_idle_threads(16, 2, 1), (2, 16));
    assert_eq!(kept_and_admitted_beside_idle_threads(31, 2, 2), (2, 31));
    assert_eq!(kept_and_admitted_beside_idle_threads(32, 2, 2), (4, 32));
    assert_eq!(kept_and_admitted_beside_idle_threads(32, 2, 1), (2, 32));
}

/// A thread that runs the steps it is sent, one at a time, and stays alive between them.
struct Stepper {
    steps: Option<mpsc::Sender<Box<dyn FnOnce() + Send>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Stepper {
    fn new() -> Self {
        let (tx, rx) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let thread = thread::spawn(move || {
            for step in rx {
                step();
            }
        });
        Self {
            steps: Some(tx),
            thread: Some(thread),
        }
    }

    fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::sync_channel(1);
        let step: Box<dyn FnOnce() + Send> = Box::new(move || tx.send(f()).unwrap());
        self.steps.as_ref().unwrap().send(step).unwrap();
        rx.recv().unwrap()
    }
}

impl Drop for Stepper {
    fn drop(&mut self) {
        drop(self.steps.take());
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// One call, answered at once: `true` when admitted.
fn call_once<S: Service<u8, Error = BoxError>>(svc: &mut S) -> bool {
    svc.ready().now_or_never().unwrap().unwrap();
    svc.call(1).now_or_never().unwrap().is_ok()
}

#[test]
fn leases_end_at_half_the_limit_in_flight_and_come_back_under_a_quarter() {
    let layer = fixed(32);
    let quick = layer.layer(tower::service_fn(|n: u8| ready(Ok::<_, Infallible>(n))));
    let a = Stepper::new();
    let mut s = quick.clone();
    assert!(a.run(move || call_once(&mut s))); // `a` keeps the slot its call gave back
    let mut hold = layer.layer(tower::service_fn(|n: u8| async move {
        std::future::pending::<()>().await;
        Ok::<_, Infallible>(n)
    }));
    let mut held = Vec::new();
    let mut take = |held: &mut Vec<_>| {
        hold.ready().now_or_never().unwrap().unwrap();
        let mut fut = Box::pin(hold.call(1));
        let refused = fut.as_mut().now_or_never().is_some();
        if !refused {
            held.push(fut);
        }
        !refused
    };
    // Half the limit in flight through the word (with `a`'s kept slot): the leases end.
    while held.len() < 15 {
        assert!(take(&mut held));
    }
    // `a` calls again: its lease has ended, so it gives its slot back and keeps nothing.
    let mut s = quick.clone();
    assert!(a.run(move || call_once(&mut s)));
    while take(&mut held) {}
    assert_eq!(
        admitted_now(&layer),
        32,
        "the whole limit: nothing kept by the idle thread"
    );
    assert_eq!(layer.snapshot().limit.unwrap().kept, 0);
    // Quiet again: an admit through the word under a quarter of the limit allows leases, and
    // `a` keeps the slot of its next call while it idles.
    held.clear();
    assert!(take(&mut held));
    let mut s = quick.clone();
    assert!(a.run(move || call_once(&mut s)));
    let kept = layer.snapshot().limit.unwrap().kept;
    assert_eq!(kept, 1, "the idle thread keeps the slot of its call");
    while take(&mut held) {}
    assert_eq!(
        admitted_now(&layer),
        32,
        "the whole limit: the slot the idle thread keeps counts as free"
    );
}
