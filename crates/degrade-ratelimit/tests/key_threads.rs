//! The keyed store from several threads at once: known keys are decided with no lock, so
//! this checks what the shard mutex used to guarantee — a key admits exactly its budget,
//! whatever the threads and the sweeps that drop recovered keys under them do.

use degrade_core::ManualClock;
use degrade_ratelimit::error::Cause;
use degrade_ratelimit::{KeysConfig, RateLimitConfig, RateLimitLayer, RateLimited, key};
use futures_util::FutureExt;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

const KEYS: u32 = 16;
const BURST: u64 = 5;
const ROUNDS: usize = 200;
const THREADS: usize = 3;
/// Calls per key, per thread and round: more than the burst, so every key runs out.
const TRIES: u32 = 4;

/// The clock stands still within a round, and moves 10 s (twice a full recovery) between
/// rounds, so each round starts with every key's budget full: each key must admit exactly
/// `BURST` calls per round, however the threads interleave. Meanwhile a thread drops
/// recovered keys (`evict_idle`) in a loop: at each round's start every key is recovered, so
/// its cell is killed while requests race for it. An admission lost with a killed cell would
/// show as more than `BURST` admissions; a request decided against a dead cell, as fewer.
/// (The narrowest interleavings, a request between a sweep's read and its kill, are the loom
/// models' in `store.rs`: here they are rare.)
#[test]
fn a_key_admits_exactly_its_budget_while_sweeps_race_the_requests() {
    let clock = ManualClock::new();
    let layer =
        RateLimitLayer::builder(RateLimitConfig::per(1, Duration::from_secs(1)).burst(BURST))
            .clock(clock.clone())
            .keyed(
                key::from_fn(|k: &u32| Some(*k)),
                KeysConfig { max_keys: 64 },
            )
            .build()
            .unwrap();
    let svc = layer.layer(tower::service_fn(|k: u32| {
        std::future::ready(Ok::<_, Infallible>(k))
    }));
    let start = Barrier::new(THREADS + 1);
    let end = Barrier::new(THREADS + 1);
    let admitted = Mutex::new(vec![[0u64; KEYS as usize]; ROUNDS]);
    let stop = AtomicBool::new(false);
    let swept = std::thread::scope(|scope| {
        let sweeper = {
            let (layer, stop) = (&layer, &stop);
            scope.spawn(move || {
                let mut dropped = 0;
                while !stop.load(Ordering::Relaxed) {
                    dropped += layer.evict_idle();
                    std::thread::yield_now();
                }
                dropped
            })
        };
        for t in 0..THREADS {
            let mut svc = svc.clone();
            let (start, end, admitted) = (&start, &end, &admitted);
            scope.spawn(move || {
                for round in 0..ROUNDS {
                    start.wait();
                    let mut mine = [0u64; KEYS as usize];
                    for i in 0..KEYS * TRIES {
                        // Each thread walks the keys from its own offset.
                        let k = (i + t as u32 * 5) % KEYS;
                        let out = svc
                            .ready()
                            .now_or_never()
                            .unwrap()
                            .unwrap()
                            .call(k)
                            .now_or_never()
                            .expect("decided at once");
                        match out {
                            Ok(_) => mine[k as usize] += 1,
                            Err(e) => {
                                let r = e.downcast_ref::<RateLimited>().unwrap();
                                assert_eq!(r.cause, Cause::OverQuota, "{r:?}");
                            }
                        }
                    }
                    let mut all = admitted.lock().unwrap();
                    for (total, n) in all[round].iter_mut().zip(mine) {
                        *total += n;
                    }
                    drop(all);
                    end.wait();
                }
            });
        }
        for _ in 0..ROUNDS {
            start.wait();
            end.wait();
            clock.advance(Duration::from_secs(10));
        }
        stop.store(true, Ordering::Relaxed);
        sweeper.join().unwrap()
    });
    let admitted = admitted.into_inner().unwrap();
    for (round, keys) in admitted.iter().enumerate() {
        assert_eq!(keys, &[BURST; KEYS as usize], "round {round}");
    }
    let s = layer.snapshot();
    let total = ROUNDS as u64 * u64::from(KEYS) * BURST;
    assert_eq!(
        s.offered(),
        ROUNDS as u64 * THREADS as u64 * u64::from(KEYS * TRIES)
    );
    assert_eq!(s.offered() - s.rejected_by(Cause::OverQuota), total);
    assert!(s.keys <= KEYS as usize);
    // The race was there to lose: recovered keys were dropped between and during rounds.
    assert!(swept > 0, "the sweeper never dropped a key");
}
