//! Keyed breakers called from several threads at once: known keys are looked up with no lock,
//! so these check what the lock used to guarantee — every call's outcome counted exactly once
//! by its key's breaker, and evictions racing lookups keeping the bound and the open breakers.

use degrade_breaker::{BreakerConfig, CircuitOpen, KeyedBreakerLayer, State, WindowConfig};
use degrade_core::key::from_fn;
use degrade_core::{BoxError, ManualClock};
use futures_util::FutureExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tower::{Layer, Service};

/// Requests are `(key, ok)`; key `KEYLESS` has no key.
type Req = (u32, bool);
const KEYLESS: u32 = 16;

/// A small deterministic generator per thread (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn upstream(
    calls: Arc<AtomicU64>,
) -> impl Service<Req, Response = u32, Error = BoxError, Future: Send> + Clone + Send {
    tower::service_fn(move |(key, ok): Req| {
        calls.fetch_add(1, Ordering::Relaxed);
        async move {
            if ok {
                Ok(key)
            } else {
                Err::<_, BoxError>("down".into())
            }
        }
    })
}

/// What the callers saw, per key: offered, succeeded, failed (inner error), rejected by an
/// open breaker, cancelled (future dropped unpolled).
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
struct Tally {
    offered: u64,
    ok: u64,
    failed: u64,
    rejected: u64,
    cancelled: u64,
}

#[test]
fn every_keyed_call_is_counted_once_across_threads() {
    const THREADS: u64 = 4;
    const CALLS: u64 = 25_000;
    // Keys 0..4 always fail (their breakers open and reject from then on: the clock never
    // moves); the others fail one call in ten, never enough to open a count window at 50 %.
    let mut config = BreakerConfig::default();
    config.window = WindowConfig::Count { size: 20 };
    config.minimum_calls = 20;
    let layer =
        KeyedBreakerLayer::builder(config, from_fn(|r: &Req| (r.0 != KEYLESS).then_some(r.0)))
            .max_keys(64)
            .clock(ManualClock::new())
            .build()
            .unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let svc = layer.layer(upstream(Arc::clone(&calls)));

    let tallies: Vec<[Tally; 17]> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let mut svc = svc.clone();
                scope.spawn(move || {
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t + 1));
                    let mut tally = [Tally::default(); 17];
                    for _ in 0..CALLS {
                        let r = rng.next();
                        let key = (r % 17) as u32;
                        let ok = key >= 4 && !(r >> 8).is_multiple_of(10);
                        let cancel = (r >> 16).is_multiple_of(16);
                        let k = &mut tally[key as usize];
                        k.offered += 1;
                        let fut = svc.call((key, ok));
                        if cancel {
                            // Dropped unpolled: cancelled if admitted, else already rejected.
                            drop(fut);
                            k.cancelled += 1;
                            continue;
                        }
                        match fut.now_or_never().expect("ready inner service") {
                            Ok(_) => k.ok += 1,
                            Err(e) if e.is::<CircuitOpen>() => k.rejected += 1,
                            Err(_) => k.failed += 1,
                        }
                    }
                    tally
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });

    let mut admitted = 0;
    for key in 0..=KEYLESS {
        let mut seen = Tally::default();
        for t in &tallies {
            let k = t[key as usize];
            seen.offered += k.offered;
            seen.ok += k.ok;
            seen.failed += k.failed;
            seen.rejected += k.rejected;
            seen.cancelled += k.cancelled;
        }
        let h = if key == KEYLESS {
            layer.keyless()
        } else {
            layer.handle(&key)
        }
        .expect("every key was called");
        let b = h.snapshot();
        assert_eq!(b.offered(), seen.offered, "key {key}: {b:?} vs {seen:?}");
        assert_eq!(b.successes, seen.ok, "key {key}: {b:?} vs {seen:?}");
        assert_eq!(b.failures, seen.failed, "key {key}: {b:?} vs {seen:?}");
        // A dropped future was either admitted (then cancelled) or rejected in `call`.
        assert_eq!(
            b.cancelled + (b.rejected - seen.rejected),
            seen.cancelled,
            "key {key}: {b:?} vs {seen:?}"
        );
        assert_eq!(
            b.admitted,
            b.successes + b.failures + b.cancelled,
            "key {key}"
        );
        if key < 4 {
            assert_eq!(b.state, State::Open, "key {key} always fails");
            assert!(seen.rejected > 0);
        } else {
            assert_eq!(b.state, State::Closed, "key {key}");
        }
        admitted += b.admitted;
    }
    assert_eq!(calls.load(Ordering::Relaxed), admitted, "upstream calls");
    let s = layer.snapshot();
    assert_eq!(
        (s.keys, s.inserted, s.evicted, s.overflowed),
        (17, 17, 0, 0)
    );
}

/// Threads hammer three known keys while another inserts new keys one after the other at a
/// cap of 8, so every new key evicts a breaker that the others may be looking up. A breaker
/// forced open is never evicted (each of its calls is rejected, none reaches a fresh
/// breaker), the map never holds more than its cap, and every other call is admitted by some
/// closed breaker and reaches the upstream exactly once.
#[test]
fn evictions_racing_lookups_keep_the_bound_and_the_open_breaker() {
    const CHURN: u32 = 20_000;
    let mut config = BreakerConfig::default();
    config.window = WindowConfig::Consecutive { failures: 1 };
    let layer = KeyedBreakerLayer::builder(config, from_fn(|r: &Req| Some(r.0)))
        .max_keys(8)
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let mut svc = layer.layer(upstream(Arc::clone(&calls)));
    svc.call((0, true)).now_or_never().unwrap().unwrap();
    // Forced open, and no handle kept: only its state keeps it in the map.
    layer.handle(&0).unwrap().force_open();
    let done = AtomicBool::new(false);

    let (hot_ok, open_rejected, churn_ok) = std::thread::scope(|scope| {
        let hot: Vec<_> = (0..2u32)
            .map(|t| {
                let mut svc = svc.clone();
                let done = &done;
                scope.spawn(move || {
                    let (mut ok, mut rejected, mut i) = (0u64, 0u64, 0u32);
                    while !done.load(Ordering::Relaxed) {
                        i = i.wrapping_add(1);
                        // Key 0 one call in eight; keys 1..=3 the rest.
                        let key = if i % 8 == t { 0 } else { 1 + i % 3 };
                        match svc.call((key, true)).now_or_never().unwrap() {
                            Ok(k) => {
                                assert_ne!(k, 0, "the open breaker was forgotten");
                                ok += 1;
                            }
                            Err(e) => {
                                assert!(e.is::<CircuitOpen>(), "{e}");
                                assert_eq!(key, 0, "a closed breaker rejected");
                                rejected += 1;
                            }
                        }
                    }
                    (ok, rejected)
                })
            })
            .collect();
        let churn = {
            let mut svc = svc.clone();
            let (layer, done) = (&layer, &done);
            scope.spawn(move || {
                let mut ok = 0u64;
                for key in 100..100 + CHURN {
                    assert_eq!(svc.call((key, true)).now_or_never().unwrap().unwrap(), key);
                    ok += 1;
                    if key % 64 == 0 {
                        assert!(layer.len() <= 8, "{} keys", layer.len());
                    }
                }
                done.store(true, Ordering::Relaxed);
                ok
            })
        };
        let churn_ok = churn.join().unwrap();
        let (mut ok, mut rejected) = (0, 0);
        for h in hot {
            let (o, r) = h.join().unwrap();
            ok += o;
            rejected += r;
        }
        (ok, rejected, churn_ok)
    });

    // Every admitted call reached the upstream once; nothing else did.
    assert_eq!(calls.load(Ordering::Relaxed), 1 + hot_ok + churn_ok);
    let open = layer.handle(&0).expect("an open breaker is never evicted");
    assert_eq!(open.state(), State::ForcedOpen);
    assert_eq!(open.snapshot().rejected, open_rejected);
    let s = layer.snapshot();
    assert!(s.keys <= 8, "{s:?}");
    assert_eq!(s.inserted - s.evicted, s.keys as u64, "{s:?}");
    assert!(s.evicted >= u64::from(CHURN) - 8 - s.overflowed, "{s:?}");
    assert!(open_rejected > 0 && hot_ok > 0);
}
