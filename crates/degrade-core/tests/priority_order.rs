//! Priority order inside a small adaptive limit, through the public `DegradeLayer` API on
//! paused tokio time (every run is the same run): mixed priorities offered faster than the
//! service can answer are shed lowest priority first, critical requests are served, and the
//! service stays busy.
//!
//! The scenario is the `axum-gateway` example's overload phase: a service of four slots × 20
//! ms (200 requests/s), 24 paced clients at 20 requests/s each (six per priority, critical
//! included: 480 requests/s, 120 of them critical), each sending one request at a time.
//!
//! What decides the order: a request that finds the limit full waits in a queue served highest
//! priority first, and no request takes a free slot while anybody waits. Below that, a free
//! slot goes to whoever comes first. So when each class of clients is phase-locked in its own
//! part of a common period (the example's clients once were: six low, then six normal, six
//! high, six critical, over one 50 ms period), which class finds the slots that free up is the
//! phase, not the priority: a lower class that arrives as slots free takes them, a higher one
//! that comes after it waits past its target and is refused
//! ([`phase_locked_classes_are_served_by_phase`] prints the table). With clients whose phases
//! are not grouped by class, the order holds at every limit from 2 to 8.

use degrade_core::limit::LimitConfig;
use degrade_core::snapshot::Accounting;
use degrade_core::{Controller, DegradeLayer, Priority};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::{Instant, MissedTickBehavior};
use tower::{Layer, Service, ServiceExt};

const SLOTS: usize = 4;
const PERIOD: Duration = Duration::from_millis(50);
const RUN: Duration = Duration::from_secs(4);
const CLASSES: [Priority; 4] = [
    Priority::Low,
    Priority::Normal,
    Priority::High,
    Priority::Critical,
];

/// When the 24 clients send.
#[derive(Clone, Copy, Debug)]
enum Arrivals {
    /// Every `PERIOD`, each request at a seeded random point of the period (its first 90 %);
    /// the classes take turns over the clients.
    Jittered(u64),
    /// Every `PERIOD` exactly, client `n` at `(n + 1) / 24` of it, in blocks of six clients per
    /// class in the order given (indices into [`CLASSES`]).
    PhaseLocked([usize; 4]),
}

/// A 64-bit LCG step (Knuth's constants): enough to spread arrivals, and reproducible.
fn lcg(x: u64) -> u64 {
    x.wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407)
}

/// What the layer did with each class over [`RUN`] of overload at a fixed `limit`, the
/// service taking `work`: (offered, refused) by class, and the requests the service
/// completed.
async fn overload(limit: u32, work: Duration, arrivals: Arrivals) -> ([(u64, u64); 4], u64) {
    let c = Controller::new(Default::default()).unwrap();
    let layer = DegradeLayer::builder(c.handle())
        .prioritize(|p: &Priority| *p)
        .limit(LimitConfig {
            initial: limit,
            min: limit,
            max: limit,
            ..LimitConfig::default()
        })
        .build()
        .unwrap();
    let slots = Arc::new(Semaphore::new(SLOTS));
    let served = Arc::new(AtomicU64::new(0));
    let svc = {
        let (slots, served) = (Arc::clone(&slots), Arc::clone(&served));
        layer.layer(tower::service_fn(move |_: Priority| {
            let (slots, served) = (Arc::clone(&slots), Arc::clone(&served));
            async move {
                let _slot = slots.acquire().await.unwrap();
                tokio::time::sleep(work).await;
                served.fetch_add(1, Ordering::Relaxed);
                Ok::<_, Infallible>(())
            }
        }))
    };
    // One request at a time first: the layer learns the baseline, and with it a queue target.
    let mut warm = svc.clone();
    for _ in 0..200 {
        if layer.snapshot().limit.unwrap().queue_target.is_some() {
            break;
        }
        warm.ready()
            .await
            .unwrap()
            .call(Priority::Normal)
            .await
            .unwrap();
    }
    assert!(layer.snapshot().limit.unwrap().queue_target.is_some());

    let before = layer.snapshot();
    let served_before = served.load(Ordering::Relaxed);
    let start = Instant::now();
    let until = start + RUN;
    let mut clients = Vec::new();
    for n in 0..24u32 {
        let (class, seed) = match arrivals {
            Arrivals::Jittered(seed) => (n as usize % 4, Some(lcg(seed ^ u64::from(n) << 32))),
            Arrivals::PhaseLocked(order) => (order[n as usize / 6], None),
        };
        let priority = CLASSES[class];
        let offset = PERIOD.mul_f64(f64::from(n + 1) / 24.0);
        let mut svc = svc.clone();
        clients.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(start + offset, PERIOD);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut rng = seed.unwrap_or(0);
            loop {
                tick.tick().await;
                if seed.is_some() {
                    rng = lcg(rng);
                    let at = (rng >> 11) as f64 / (1u64 << 53) as f64;
                    tokio::time::sleep(PERIOD.mul_f64(0.9 * at)).await;
                }
                if Instant::now() >= until {
                    break;
                }
                let _ = svc.ready().await.unwrap().call(priority).await;
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    let after = layer.snapshot();
    assert!(after.balanced(), "{after:?}");
    let by_class = CLASSES.map(|p| {
        (
            after.offered_by(p) - before.offered_by(p),
            after.rejected_by(p) - before.rejected_by(p),
        )
    });
    (by_class, served.load(Ordering::Relaxed) - served_before)
}

fn shed_shares(by_class: &[(u64, u64); 4]) -> [f64; 4] {
    by_class.map(|(offered, refused)| refused as f64 / offered.max(1) as f64)
}

/// Asserts the priority order of one run: the shed share falls and the admitted count grows
/// with the priority (each class is offered alike); and with at least as many slots in the
/// limit as in the service, critical requests are all but never refused and the service stays
/// 95 % busy.
async fn check_order(limit: u32, work: Duration, arrivals: Arrivals) {
    let (by_class, served) = overload(limit, work, arrivals).await;
    let shed = shed_shares(&by_class);
    let context = format!(
        "limit {limit}, {work:?}, {arrivals:?}: (offered, refused) by class {by_class:?}, served {served}"
    );
    for pair in shed.windows(2) {
        assert!(
            pair[0] >= pair[1],
            "shed shares {shed:?} out of order; {context}"
        );
    }
    let admitted = by_class.map(|(offered, refused)| offered - refused);
    for pair in admitted.windows(2) {
        assert!(
            pair[0] <= pair[1],
            "admitted {admitted:?} out of order; {context}"
        );
    }
    if limit as usize >= SLOTS {
        // Critical requests may go a tenth over the limit (at least one): five slots for 120
        // of them a second. (Below four, the limit leaves them three slots or fewer, and
        // their random arrivals sometimes find those busy past twice the queue target.)
        assert!(shed[3] < 0.01, "critical refused: {shed:?}; {context}");
        let capacity = RUN.as_secs_f64() * SLOTS as f64 / work.as_secs_f64();
        assert!(
            served as f64 >= 0.95 * capacity,
            "served {served} of {capacity}; {context}"
        );
    }
}

/// The example's overload at the limit it learns (4): low is shed the most, then normal, then
/// high; critical is served; the service stays busy.
#[tokio::test(start_paused = true)]
async fn a_limit_of_four_sheds_the_lowest_priorities_first() {
    for seed in 1..=5 {
        check_order(4, Duration::from_millis(20), Arrivals::Jittered(seed)).await;
    }
}

/// The same at every small limit and a slower service (fewer slots free up per period).
#[tokio::test(start_paused = true)]
async fn every_small_limit_sheds_the_lowest_priorities_first() {
    for limit in 2..=8 {
        for work in [20, 22, 25] {
            for seed in 1..=3 {
                let work = Duration::from_millis(work);
                check_order(limit, work, Arrivals::Jittered(seed)).await;
            }
        }
    }
}

/// Exploration: each class phase-locked in its own quarter of the period, in several orders.
/// The shed shares follow the phases, not the priorities, at every limit (rows marked `!!`):
/// `cargo test -p degrade-core --test priority_order -- --ignored --nocapture`.
#[tokio::test(start_paused = true)]
#[ignore = "exploration: prints a table"]
async fn phase_locked_classes_are_served_by_phase() {
    let orders = [[0, 1, 2, 3], [1, 0, 2, 3], [0, 2, 1, 3], [3, 0, 1, 2]];
    for limit in [2, 3, 4, 6] {
        for order in orders {
            for work in [20, 22, 25] {
                let work = Duration::from_millis(work);
                let (by_class, served) = overload(limit, work, Arrivals::PhaseLocked(order)).await;
                let shed = shed_shares(&by_class);
                let inverted = shed.windows(2).any(|p| p[0] < p[1]);
                println!(
                    "{} limit {limit} order {order:?} {work:?}: shed % {:?}, served {served}",
                    if inverted { "!!" } else { "  " },
                    shed.map(|s| (s * 1000.0).round() / 10.0)
                );
            }
        }
    }
}

/// What [`arrivals`] saw: per low request admitted at once (not after a wait), the requests in
/// flight then (itself included) and whether normal was pressured; the most low requests in
/// the service at once; and the layer's counts of the phase.
#[derive(Debug, Default)]
struct Arrivals2 {
    at_once_pressured: Vec<u32>,
    at_once_free: Vec<u32>,
    most_low: u64,
}

/// Low requests from `low` closed-loop clients (each sends again as soon as it is answered,
/// or a millisecond after a refusal), and, if `normal_bursts`, fourteen normal requests at
/// once every 100 ms, for a second, through a layer of a fixed limit of 10 over a service of
/// 20 ms with no limit of its own.
async fn arrivals(low: u32, normal_bursts: bool) -> (Arrivals2, [(u64, u64, u64); 2]) {
    type Req = (Priority, Instant);
    let c = Controller::new(Default::default()).unwrap();
    let layer = DegradeLayer::builder(c.handle())
        .prioritize(|r: &Req| r.0)
        .limit(LimitConfig {
            initial: 10,
            min: 10,
            max: 10,
            ..LimitConfig::default()
        })
        .build()
        .unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Arrivals2::default()));
    let low_now = Arc::new(AtomicU64::new(0));
    let svc = {
        let (layer, seen, low_now) = (layer.clone(), Arc::clone(&seen), Arc::clone(&low_now));
        layer
            .clone()
            .layer(tower::service_fn(move |(priority, sent): Req| {
                // Called from `call` at once when admitted on arrival (paused time: no time
                // passed), later when granted after a wait.
                if priority == Priority::Low {
                    let snap = layer.snapshot().limit.unwrap();
                    let mut seen = seen.lock().unwrap();
                    if Instant::now() == sent {
                        if snap.pressured[Priority::Normal.index()] {
                            seen.at_once_pressured.push(snap.in_flight);
                        } else {
                            seen.at_once_free.push(snap.in_flight);
                        }
                    }
                    let n = low_now.fetch_add(1, Ordering::Relaxed) + 1;
                    seen.most_low = seen.most_low.max(n);
                }
                let low_now = Arc::clone(&low_now);
                async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if priority == Priority::Low {
                        low_now.fetch_sub(1, Ordering::Relaxed);
                    }
                    Ok::<_, Infallible>(())
                }
            }))
    };
    // One request at a time first: the layer learns the baseline, and with it a queue target.
    let mut warm = svc.clone();
    for _ in 0..200 {
        if layer.snapshot().limit.unwrap().queue_target.is_some() {
            break;
        }
        let req = (Priority::Normal, Instant::now());
        warm.ready().await.unwrap().call(req).await.unwrap();
    }
    assert!(layer.snapshot().limit.unwrap().queue_target.is_some());
    *seen.lock().unwrap() = Arrivals2::default();
    let before = layer.snapshot();
    let until = Instant::now() + Duration::from_secs(1);
    let mut clients = Vec::new();
    for n in 0..low {
        let mut svc = svc.clone();
        clients.push(tokio::spawn(async move {
            // Spread over the first 10 ms.
            tokio::time::sleep(Duration::from_micros(u64::from(n) * 500)).await;
            while Instant::now() < until {
                let req = (Priority::Low, Instant::now());
                if svc.ready().await.unwrap().call(req).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }));
    }
    if normal_bursts {
        let svc = svc.clone();
        clients.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut burst = Vec::new();
            loop {
                tick.tick().await;
                if Instant::now() >= until {
                    break;
                }
                for _ in 0..14 {
                    let mut svc = svc.clone();
                    burst.push(tokio::spawn(async move {
                        let req = (Priority::Normal, Instant::now());
                        let _ = svc.ready().await.unwrap().call(req).await;
                    }));
                }
            }
            for b in burst {
                b.await.unwrap();
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    let after = layer.snapshot();
    assert!(after.balanced(), "{after:?}");
    let counts = [Priority::Low, Priority::Normal].map(|p| {
        (
            after.offered_by(p) - before.offered_by(p),
            after.admitted_by(p) - before.admitted_by(p),
            after.rejected_by(p) - before.rejected_by(p),
        )
    });
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    (seen, counts)
}

/// Arrival order: while normal requests are refused (normal is pressured), a low request
/// takes a slot on arrival only while fewer than its share of the limit are in flight (7 of
/// 10), keeping the top of the limit for the normal ones; with only low traffic, low fills
/// the whole limit. Every request is counted once (offered = admitted + refused).
#[tokio::test(start_paused = true)]
async fn arrivals_below_a_pressured_priority_keep_to_its_share() {
    let share =
        degrade_core::limit::shares(10, 11, 1 << Priority::Normal.index())[Priority::Low.index()];
    assert_eq!(share, 7);

    // Low alone: the whole limit, and never a share (nothing above it is pressured).
    let (seen, [low, normal]) = arrivals(20, false).await;
    assert_eq!(seen.most_low, 10, "{seen:?}");
    assert!(seen.at_once_pressured.is_empty(), "{seen:?}");
    assert_eq!(seen.at_once_free.iter().max(), Some(&10), "{seen:?}");
    assert_eq!(normal, (0, 0, 0));
    assert_eq!(low.0, low.1 + low.2, "{low:?}");
    assert!(
        low.1 >= 450,
        "low alone keeps 10 slots of 20 ms busy: {low:?}"
    );

    // Normal bursts, refused in part: low arrivals keep to their share meanwhile. (Nine low
    // clients: low alone would not fill the limit, so low requests often arrive with nobody
    // waiting, where the share decides.)
    let (seen, [low, normal]) = arrivals(9, true).await;
    assert!(normal.2 > 0, "normal is pressured: {normal:?}");
    assert!(seen.at_once_pressured.len() >= 20, "{seen:?}");
    let most = seen.at_once_pressured.iter().max().copied();
    assert_eq!(most, Some(share), "{seen:?}");
    // Low still gets the slots normal leaves (after the hold when above its share).
    assert!(low.1 >= 200, "{low:?}");
    assert_eq!(low.0, low.1 + low.2, "{low:?}");
    assert_eq!(normal.0, normal.1 + normal.2, "{normal:?}");
    assert_eq!(normal.0, 14 * 10, "{normal:?}");
}
