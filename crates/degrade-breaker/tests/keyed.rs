//! Keyed breakers: one breaker per key, a bounded map, and its behaviour at the cap.

use degrade_breaker::{BreakerConfig, CircuitOpen, KeyedBreakerLayer, State, WindowConfig};
use degrade_core::key::from_fn;
use degrade_core::{BoxError, ManualClock};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

fn config() -> BreakerConfig {
    let mut c = BreakerConfig::default();
    c.window = WindowConfig::Consecutive { failures: 2 };
    c.wait = Duration::from_secs(10);
    c
}

/// Requests are `(host, ok)`.
fn upstream() -> impl Service<(u32, bool), Response = u32, Error = BoxError, Future: Send> + Clone {
    tower::service_fn(|(host, ok): (u32, bool)| async move {
        if ok {
            Ok(host)
        } else {
            Err::<_, BoxError>("down".into())
        }
    })
}

async fn call<S>(svc: &mut S, host: u32, ok: bool) -> Result<u32, BoxError>
where
    S: Service<(u32, bool), Response = u32, Error = BoxError>,
{
    svc.ready().await?.call((host, ok)).await
}

#[tokio::test]
async fn one_failing_key_does_not_open_the_others() {
    let layer = KeyedBreakerLayer::new(config(), from_fn(|r: &(u32, bool)| Some(r.0))).unwrap();
    let mut svc = layer.layer(upstream());
    for _ in 0..2 {
        let _ = call(&mut svc, 1, false).await;
    }
    assert!(
        call(&mut svc, 1, true)
            .await
            .unwrap_err()
            .is::<CircuitOpen>()
    );
    assert_eq!(call(&mut svc, 2, true).await.unwrap(), 2);
    assert_eq!(layer.handle(&1).unwrap().state(), State::Open);
    assert_eq!(layer.handle(&2).unwrap().state(), State::Closed);
    let mut keys = layer.keys();
    keys.sort();
    assert_eq!(keys, [1, 2]);
}

#[tokio::test]
async fn the_map_never_exceeds_its_cap_and_keeps_open_breakers() {
    let clock = ManualClock::new();
    let layer = KeyedBreakerLayer::builder(config(), from_fn(|r: &(u32, bool)| Some(r.0)))
        .max_keys(3)
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut svc = layer.layer(upstream());
    // Key 1 opens; keys 2 and 3 are closed and idle.
    for _ in 0..2 {
        let _ = call(&mut svc, 1, false).await;
    }
    call(&mut svc, 2, true).await.unwrap();
    call(&mut svc, 3, true).await.unwrap();
    // Keys 4..100 each evict the least recently used closed breaker, never key 1.
    for host in 4..100 {
        call(&mut svc, host, true).await.unwrap();
        assert!(layer.len() <= 3);
        assert_eq!(
            layer.handle(&1).unwrap().state(),
            State::Open,
            "host {host}"
        );
    }
    assert!(
        call(&mut svc, 1, true)
            .await
            .unwrap_err()
            .is::<CircuitOpen>()
    );
    // A recently used key survives an insertion; the least recently used one goes.
    call(&mut svc, 98, true).await.unwrap();
    call(&mut svc, 100, true).await.unwrap();
    let mut keys = layer.keys();
    keys.sort();
    assert_eq!(keys, [1, 98, 100]);
}

#[tokio::test]
async fn keys_beyond_a_cap_of_busy_breakers_share_the_overflow_breaker() {
    let layer = KeyedBreakerLayer::builder(config(), from_fn(|r: &(u32, bool)| Some(r.0)))
        .max_keys(2)
        .build()
        .unwrap();
    let mut svc = layer.layer(upstream());
    for host in [1, 2] {
        for _ in 0..2 {
            let _ = call(&mut svc, host, false).await;
        }
    }
    // Both breakers are open, so neither may be forgotten: keys 3 and 4 share the overflow.
    let _ = call(&mut svc, 3, false).await;
    let _ = call(&mut svc, 4, false).await;
    assert_eq!(layer.len(), 2);
    assert!(layer.handle(&3).is_none());
    let overflow = layer.overflow();
    assert_eq!(overflow.state(), State::Open);
    assert_eq!(overflow.snapshot().failures, 2);
    // A held handle also pins a closed breaker in the map.
    let layer = KeyedBreakerLayer::builder(config(), from_fn(|r: &(u32, bool)| Some(r.0)))
        .max_keys(1)
        .build()
        .unwrap();
    let mut svc = layer.layer(upstream());
    call(&mut svc, 1, true).await.unwrap();
    let pinned = layer.handle(&1).unwrap();
    call(&mut svc, 2, true).await.unwrap();
    assert_eq!(layer.keys(), [1]);
    assert_eq!(layer.overflow().snapshot().admitted, 1);
    drop(pinned);
    call(&mut svc, 3, true).await.unwrap();
    assert_eq!(layer.keys(), [3]);
}

/// Calls every host in `hosts` once with `ok`.
async fn sweep<S>(svc: &mut S, hosts: std::ops::Range<u32>, ok: bool)
where
    S: Service<(u32, bool), Response = u32, Error = BoxError>,
{
    for host in hosts {
        let _ = call(svc, host, ok).await;
    }
}

#[tokio::test]
async fn new_keys_at_the_cap_cost_constant_work_each() {
    // Issue 14: at the cap every new key used to scan the whole map under the write lock, so
    // N attacker-chosen keys cost N × max_keys. Now each costs O(1) amortised.
    const CAP: u32 = 1_000;
    const NEW: u32 = 10_000;
    let layer = KeyedBreakerLayer::builder(config(), from_fn(|r: &(u32, bool)| Some(r.0)))
        .max_keys(CAP as usize)
        .build()
        .unwrap();
    let mut svc = layer.layer(upstream());
    sweep(&mut svc, 0..CAP, true).await;
    // Every key used again: every slot is marked, the worst case for the clock hand.
    sweep(&mut svc, 0..CAP, true).await;
    assert_eq!(layer.snapshot().scanned, 0);

    sweep(&mut svc, CAP..CAP + NEW, true).await;
    let s = layer.snapshot();
    assert_eq!(
        (s.keys, s.inserted, s.evicted, s.overflowed),
        (CAP as usize, u64::from(CAP + NEW), u64::from(NEW), 0)
    );
    // One visit per mark the lookups set, plus one per eviction.
    assert!(
        s.scanned <= u64::from(CAP + NEW),
        "scanned {} slots for {NEW} new keys",
        s.scanned
    );
}

#[tokio::test]
async fn new_keys_at_a_cap_of_open_breakers_cost_a_bounded_scan_each() {
    const CAP: u32 = 1_000;
    const NEW: u32 = 2_000;
    let mut c = config();
    c.window = WindowConfig::Consecutive { failures: 1 };
    let layer = KeyedBreakerLayer::builder(c, from_fn(|r: &(u32, bool)| Some(r.0)))
        .max_keys(CAP as usize)
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let mut svc = layer.layer(upstream());
    sweep(&mut svc, 0..CAP, false).await; // every breaker opens: none may be evicted
    sweep(&mut svc, CAP..CAP + NEW, true).await;
    let s = layer.snapshot();
    assert_eq!(
        (s.keys, s.evicted, s.overflowed),
        (CAP as usize, 0, u64::from(NEW))
    );
    assert_eq!(
        s.scanned,
        u64::from(NEW) * u64::from(degrade_breaker::keyed::MAX_EVICTION_SKIPS)
    );
}

#[tokio::test]
async fn the_eviction_hand_resumes_where_it_stopped_and_finds_the_one_closed_breaker() {
    const CAP: u32 = 1_000;
    let skips = degrade_breaker::keyed::MAX_EVICTION_SKIPS;
    let mut c = config();
    c.window = WindowConfig::Consecutive { failures: 1 };
    let layer = KeyedBreakerLayer::builder(c, from_fn(|r: &(u32, bool)| Some(r.0)))
        .max_keys(CAP as usize)
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let mut svc = layer.layer(upstream());
    sweep(&mut svc, 0..CAP - 1, false).await; // 999 open breakers
    call(&mut svc, CAP - 1, true).await.unwrap(); // and one closed, idle, in the last slot
    let mut tries = 0;
    while layer.snapshot().evicted == 0 {
        tries += 1;
        call(&mut svc, CAP + tries, true).await.unwrap();
    }
    // Each try moves the hand `skips` slots further; it reaches the last slot in time.
    assert_eq!(tries, CAP.div_ceil(skips));
    assert!(layer.handle(&(CAP - 1)).is_none());
    assert!(layer.handle(&(CAP + tries)).is_some());
}

/// A call in flight keeps its breaker in the map: its response future holds no `Arc` of the
/// breaker (it reaches it through a `&'static`), so the map asks the breaker's counts instead.
/// Evicted, the breaker would take the call's outcome with it.
#[tokio::test]
async fn a_breaker_with_a_call_in_flight_is_never_evicted() {
    type Req = (u32, Option<tokio::sync::oneshot::Receiver<bool>>);
    let layer = KeyedBreakerLayer::builder(config(), from_fn(|r: &Req| Some(r.0)))
        .max_keys(1)
        .build()
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(|(host, wait): Req| async move {
        let ok = match wait {
            Some(rx) => rx.await.unwrap_or(false),
            None => true,
        };
        if ok {
            Ok(host)
        } else {
            Err::<u32, BoxError>("down".into())
        }
    }));
    let (answer, rx) = tokio::sync::oneshot::channel();
    let in_flight = svc.ready().await.unwrap().call((1, Some(rx)));
    // Key 2 finds the map full and key 1 busy: it goes to the overflow breaker.
    assert_eq!(svc.ready().await.unwrap().call((2, None)).await.unwrap(), 2);
    let s = layer.snapshot();
    assert_eq!((s.keys, s.evicted, s.overflowed), (1, 0, 1));
    answer.send(false).unwrap();
    assert!(in_flight.await.is_err());
    assert_eq!(layer.handle(&1).unwrap().snapshot().failures, 1);
    // Idle now: the next new key evicts it.
    assert_eq!(svc.ready().await.unwrap().call((3, None)).await.unwrap(), 3);
    assert_eq!(layer.snapshot().evicted, 1);
    assert!(layer.handle(&1).is_none());
}
