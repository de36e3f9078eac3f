//! Per-thread leases of in-flight slots, through the `DegradeLayer`: threads keep the slots
//! their requests give back while the limit has headroom, and the limit stays exact once the
//! leases are revoked. Each test drives real threads one step at a time (a step is a closure
//! the thread runs while the test waits), so every count is deterministic.

use degrade_core::limit::LimitConfig;
use degrade_core::{BoxError, Controller, DegradeLayer};
use futures_util::FutureExt;
use std::convert::Infallible;
use std::future::ready;
use std::pin::Pin;
use std::sync::mpsc;
use std::thread;
use tower::{Layer, Service, ServiceExt};

/// A thread that runs the steps it is sent, one at a time.
struct Worker {
    steps: Option<mpsc::Sender<Box<dyn FnOnce() + Send>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Worker {
    fn new() -> Self {
        Self::spawn(None)
    }

    /// A worker whose steps see the runtime's (paused) clock.
    fn in_runtime() -> Self {
        Self::spawn(Some(tokio::runtime::Handle::current()))
    }

    fn spawn(runtime: Option<tokio::runtime::Handle>) -> Self {
        let (tx, rx) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let thread = thread::spawn(move || {
            let _entered = runtime.as_ref().map(tokio::runtime::Handle::enter);
            for step in rx {
                step();
            }
        });
        Worker {
            steps: Some(tx),
            thread: Some(thread),
        }
    }

    /// Runs `f` on the worker and waits for its answer.
    fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::sync_channel(1);
        let step = Box::new(move || tx.send(f()).expect("the test waits"));
        self.steps
            .as_ref()
            .unwrap()
            .send(step)
            .expect("worker alive");
        rx.recv().expect("the step ran")
    }

    /// The thread exits (giving back what it keeps).
    fn exit(mut self) {
        drop(self.steps.take());
        self.thread
            .take()
            .unwrap()
            .join()
            .expect("worker ran clean");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.steps.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn echo() -> impl Service<
    u8,
    Response = u8,
    Error = Infallible,
    Future = std::future::Ready<Result<u8, Infallible>>,
> + Clone
+ Send {
    tower::service_fn(|n: u8| ready(Ok::<_, Infallible>(n)))
}

fn fixed(limit: u32) -> DegradeLayer {
    let c = Controller::new(Default::default()).unwrap();
    DegradeLayer::builder(c.handle())
        .limit(LimitConfig {
            initial: limit,
            min: limit,
            max: limit,
            queue_size: 0.0,
            // Refused at once over the limit, never queued: the calls here are answered at
            // once (a queue would leave `call_once` pending).
            queue_delay: 0.0,
            ..LimitConfig::default()
        })
        .build()
        .unwrap()
}

fn in_flight(layer: &DegradeLayer) -> u32 {
    layer.snapshot().limit.unwrap().in_flight
}

/// One call, answered at once: `true` when admitted.
fn call_once<S: Service<u8, Error = BoxError>>(svc: &mut S) -> bool {
    svc.ready().now_or_never().unwrap().unwrap();
    svc.call(1).now_or_never().unwrap().is_ok()
}

/// Takes slots until the limit is full: the futures that hold them. A call that the limit
/// refuses, or that waits for a slot (once a queueing target is learnt), ends it.
fn hold_all<S: Service<u8, Error = BoxError>>(
    svc: &mut S,
    layer: &DegradeLayer,
) -> Vec<Pin<Box<S::Future>>> {
    let mut held = Vec::new();
    loop {
        svc.ready().now_or_never().unwrap().unwrap();
        let mut fut = Box::pin(svc.call(1));
        match fut.as_mut().now_or_never() {
            Some(Err(_)) => return held,
            Some(Ok(_)) => unreachable!("an admitted call waits on its inner service forever"),
            None if layer.snapshot().limit.unwrap().waiting > 0 => return held,
            None => held.push(fut),
        }
    }
}

/// Two threads keep the slot of their last request (the limit has headroom); the limit
/// then fills on a third thread, which revokes the leases: the slots the two idle threads
/// still keep count as free on the overload path, so it gets the whole limit while they stay
/// idle; when they touch the layer again they give their slots back and are refused (the
/// limit is full), and the word counts exactly the limit, never more.
#[test]
fn the_limit_holds_exactly_once_kept_slots_are_given_back() {
    let layer = fixed(32);
    let svc = layer.layer(tower::service_fn(|n: u8| async move {
        std::future::pending::<()>().await;
        Ok::<_, Infallible>(n)
    }));
    let quick = layer.layer(echo());
    let (a, b) = (Worker::new(), Worker::new());
    for w in [&a, &b] {
        let mut s = quick.clone();
        assert!(w.run(move || call_once(&mut s)));
    }
    assert_eq!(in_flight(&layer), 0, "kept slots are not in flight");

    let mut main = svc.clone();
    let held = hold_all(&mut main, &layer);
    assert_eq!(
        held.len(),
        32,
        "the whole limit while the two idle threads keep a slot each"
    );
    assert_eq!(in_flight(&layer), 32);

    for w in [&a, &b] {
        let mut s = quick.clone();
        assert!(
            !w.run(move || call_once(&mut s)),
            "its kept slot given back, and nothing over the limit"
        );
    }
    assert_eq!(
        in_flight(&layer),
        32,
        "exactly the limit once every kept slot is back"
    );
    assert!(
        hold_all(&mut main, &layer).is_empty(),
        "the given-back slots were already counted free"
    );
    drop(held);
    assert_eq!(in_flight(&layer), 0);
    assert_eq!(
        hold_all(&mut main, &layer).len(),
        32,
        "every slot came back"
    );
    let snap = layer.snapshot();
    assert_eq!(snap.offered(), snap.admitted() + snap.rejected());
    a.exit();
    b.exit();
}

/// Under a small limit (a service of a few slots) a thread keeps one slot too, and what idle
/// threads keep never takes from the limit: two threads that called once and went idle keep
/// a slot each, and the limit is whole for everybody else (filling it revokes the leases and
/// counts their slots as free).
#[test]
fn a_small_limit_stays_whole_beside_idle_threads_that_keep_a_slot() {
    let layer = fixed(8);
    let quick = layer.layer(echo());
    let (a, b) = (Worker::new(), Worker::new());
    for w in [&a, &b] {
        let mut s = quick.clone();
        assert!(w.run(move || call_once(&mut s)));
    }
    let snapshot = layer.snapshot().limit.expect("an adaptive limit");
    assert_eq!(
        snapshot.kept, 2,
        "each idle thread keeps the slot of its call"
    );
    assert_eq!(snapshot.in_flight, 0);
    let svc = layer.layer(tower::service_fn(|n: u8| async move {
        std::future::pending::<()>().await;
        Ok::<_, Infallible>(n)
    }));
    let mut main = svc.clone();
    assert_eq!(
        hold_all(&mut main, &layer).len(),
        8,
        "the whole limit, with two idle threads that called before"
    );
    a.exit();
    b.exit();
}

/// A request admitted on one thread and answered on another: its slot goes to the answering
/// thread's lease (or the word), and nothing is lost or made: the limit is whole afterwards.
#[test]
fn a_request_answered_on_another_thread_gives_its_slot_back_once() {
    let layer = fixed(32);
    let quick = layer.layer(echo());
    let a = Worker::new();
    let mut main = quick.clone();
    for _ in 0..4 {
        main.ready().now_or_never().unwrap().unwrap();
        let fut = main.call(7);
        assert_eq!(in_flight(&layer), 1);
        assert_eq!(a.run(move || fut.now_or_never().unwrap().unwrap()), 7);
        assert_eq!(in_flight(&layer), 0);
    }
    let mut s = quick.clone();
    assert!(
        a.run(move || call_once(&mut s)),
        "the answering thread admits from its lease"
    );
    let svc = layer.layer(tower::service_fn(|n: u8| async move {
        std::future::pending::<()>().await;
        Ok::<_, Infallible>(n)
    }));
    a.exit(); // gives its kept slots back
    let mut main = svc.clone();
    assert_eq!(hold_all(&mut main, &layer).len(), 32, "the limit is whole");
}

/// A layer dropped while threads keep slots of it: its word is recycled only once they gave
/// them back (at their next call through any layer, or their exit), and new layers, on a
/// recycled word or a fresh one, start empty and admit exactly their limit.
#[test]
fn a_layer_dropped_with_kept_slots_never_leaks_them_into_a_new_layer() {
    let (a, b) = (Worker::new(), Worker::new());
    {
        let old = fixed(32);
        let quick = old.layer(echo());
        for w in [&a, &b] {
            let mut s = quick.clone();
            assert!(w.run(move || call_once(&mut s)));
        }
    } // dropped: a and b still keep a slot each of its word

    let check_new = || {
        let layer = fixed(8);
        assert_eq!(in_flight(&layer), 0, "a new layer starts empty");
        let mut svc = layer.layer(tower::service_fn(|n: u8| async move {
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(n)
        }));
        assert_eq!(hold_all(&mut svc, &layer).len(), 8, "exactly its limit");
        layer
    };
    let live = check_new();
    // a's next call (through another layer) ends its lease of the dropped one.
    let quick = live.layer(echo());
    let mut s = quick.clone();
    assert!(a.run(move || call_once(&mut s)));
    for _ in 0..4 {
        check_new();
    }
    b.exit(); // the last kept slot of the old word: idle now, recycled by the next take
    for _ in 0..4 {
        check_new();
    }
    drop(live);
    a.exit();
}

/// On paused tokio time: requests fill the limit while an idle thread keeps a slot (the
/// overload path revokes the leases and counts the kept slot as free), and the next one waits.
/// The keeper's next call, even through another layer, gives its slot back without handing it
/// to the waiter (the limit is full: the slot was already counted free); a slot a request
/// frees reaches the waiter at once (time does not move).
#[tokio::test(start_paused = true)]
async fn a_waiter_gets_the_slot_an_idle_thread_kept_at_its_next_call() {
    let layer = {
        let c = Controller::new(Default::default()).unwrap();
        DegradeLayer::builder(c.handle())
            .limit(LimitConfig {
                initial: 32,
                min: 32,
                max: 32,
                ..LimitConfig::default()
            })
            .build()
            .unwrap()
    };
    let mut slow = layer.layer(tower::service_fn(|n: u8| async move {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        Ok::<_, Infallible>(n)
    }));
    // One at a time: the limiter learns the 10 ms baseline, and with it a queueing target.
    for n in 0..40 {
        assert_eq!(slow.ready().await.unwrap().call(n).await.unwrap(), n);
    }
    let snapshot = || layer.snapshot().limit.unwrap();
    assert!(snapshot().queue_target.is_some(), "{:?}", snapshot());

    let keeper = Worker::in_runtime();
    let mut quick = layer.layer(echo());
    assert!(
        keeper.run(move || call_once(&mut quick)),
        "kept by the keeper"
    );
    assert_eq!(snapshot().in_flight, 0);

    let mut pending = layer.layer(tower::service_fn(|n: u8| async move {
        std::future::pending::<()>().await;
        Ok::<_, Infallible>(n)
    }));
    let mut held = hold_all(&mut pending, &layer);
    assert_eq!(
        held.len(),
        32,
        "the whole limit, the keeper's slot counted free"
    );
    let mut waiter = Box::pin(pending.ready().await.unwrap().call(9));
    assert!(waiter.as_mut().now_or_never().is_none(), "waits");
    assert_eq!((snapshot().in_flight, snapshot().waiting), (32, 1));

    // The keeper calls again, through another layer: its lease of this one ends and its
    // slot goes back to the word, which now counts exactly the limit: nothing to hand on.
    let other = fixed(4);
    let mut elsewhere = other.layer(echo());
    assert!(keeper.run(move || call_once(&mut elsewhere)));
    assert_eq!((snapshot().in_flight, snapshot().waiting), (32, 1));
    assert!(waiter.as_mut().now_or_never().is_none(), "still waits");

    // A request ends: its slot goes to the waiter.
    drop(held.pop());
    assert_eq!(
        (snapshot().in_flight, snapshot().waiting),
        (32, 0),
        "handed on"
    );
    assert!(
        waiter.as_mut().now_or_never().is_none(),
        "admitted: in the inner service"
    );
    assert_eq!(snapshot().expired, 0);
    drop((held, waiter));
    assert_eq!(snapshot().in_flight, 0);
    keeper.exit();
}
