//! Property tests of the adaptive limit's control law ([`Law`]), a pure function of (state,
//! window, now): it never leaves `[min, max]`, it settles at the knee of a service of fixed
//! capacity whatever that capacity and latency, and it follows a step change of capacity.
//!
//! The model service has `k` slots and a service time `s`: at concurrency `n` its mean latency
//! is `s * max(1, n / k)` (beyond `k`, requests queue in it), with a few percent of noise. Demand
//! always exceeds the limit (every window is binding), as under overload.

use degrade_core::limit::{Law, LimitConfig, Window};
use degrade_core::{Controller, DegradeLayer, Priority};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Waker};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, Service};

/// Samples per window: what a busy service completes in one.
const SAMPLES: u32 = 32;

/// One window of the model service at the law's current limit: `SAMPLES` completions at the
/// concurrency the limit allows, latencies spread by `jitter` (a deterministic sequence from
/// `seed`, so a failure replays exactly).
fn window(law: &Law, k: f64, s: f64, jitter: f64, seed: &mut u64) -> Window {
    let n = law.limit();
    let mean = s * (f64::from(n) / k).max(1.0);
    let mut w = Window::default();
    for _ in 0..SAMPLES {
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let u = (*seed >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
        let latency = Duration::from_secs_f64(mean * (1.0 + jitter * (2.0 * u - 1.0)));
        w.record(latency, n, n <= law.low_concurrency());
        // As the limiter does: a sample that met the target was served without a queue.
        if law.target_latency().is_some_and(|t| latency <= t) {
            w.record_served(n);
        }
    }
    w.binding = true;
    w.elapsed = Duration::from_secs_f64(mean * 4.0);
    w
}

/// The next number in `[0, 1)` of a deterministic sequence.
fn uniform(seed: &mut u64) -> f64 {
    *seed = seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    (*seed >> 11) as f64 / (1u64 << 53) as f64
}

/// Runs `windows` windows against a service of `k` slots, returning every limit.
fn drive(
    law: &mut Law,
    t: &mut Instant,
    k: f64,
    s: f64,
    windows: usize,
    seed: &mut u64,
) -> Vec<u32> {
    (0..windows)
        .map(|_| {
            let w = window(law, k, s, 0.03, seed);
            *t += w.elapsed;
            law.observe(&w, *t)
        })
        .collect()
}

/// Runs `check` on a law settled on `k` slots of `s` (300 windows), then advanced by each
/// offset of the probe cadence (0 to 39 windows): a change that falls anywhere in it.
fn at_every_offset(k: f64, s: f64, mut check: impl FnMut(usize, &mut Law, &mut Instant, &mut u64)) {
    let mut seed = 7;
    let mut law = Law::new(LimitConfig::default());
    let mut t = Instant::now();
    drive(&mut law, &mut t, k, s, 300, &mut seed);
    for offset in 0..40 {
        let mut law = law.clone();
        let (mut t, mut seed) = (t, seed);
        drive(&mut law, &mut t, k, s, offset, &mut seed);
        check(offset, &mut law, &mut t, &mut seed);
    }
}

/// A service that got twice as slow, at a moment that falls anywhere in the law's probe
/// cadence (one window in 32 runs at three quarters of the limit). The law learns the slower
/// service's own latency within three slower windows wherever the slowdown falls, and the
/// slots are all in use again by then; before a probe could show it, the next window at the
/// cut limit had to (the overload benchmark's `capacity-halves` ran its slowed backend at two
/// to five of its eight slots for most of a second). A probe that was itself the first slower
/// window is slower than the window before it at more concurrency: the service changed between
/// the two, and they cannot tell a slower service from one that lost slots (see
/// `a_service_that_loses_half_its_slots_is_not_taken_for_a_slower_one`), so the next window,
/// at the limit, and its probe decide — a window more than when the probe alone was read as a
/// slowdown.
#[test]
fn a_slowdown_that_meets_a_probe_is_learnt_from_the_probe() {
    let (k, s) = (8.0, 0.040);
    at_every_offset(k, s, |offset, law, t, seed| {
        let first = drive(law, t, k, 2.0 * s, 3, seed);
        let baseline = law.baseline().unwrap().as_secs_f64();
        assert!(
            baseline > 1.5 * s,
            "slowdown {offset} windows on: limits {first:?}, baseline {baseline}"
        );
        let limits = drive(law, t, k, 2.0 * s, 2, seed);
        // The slots are all in use again (unless a probe fell on this window).
        assert!(
            first.iter().chain(&limits).any(|&l| f64::from(l) >= k),
            "slowdown {offset} windows on: limits {first:?} {limits:?}"
        );
    });
}

/// A service that got twice as slow while the limit sat at its knee: the first slower window
/// cuts, and the next runs as a probe at three quarters of the concurrency the service served
/// without a queue, not at the cut limit (half) or at three quarters of that; the probe is about
/// as slow, so the law learns the slower latency and gives the cut back. Wherever the slowdown
/// falls in the probe cadence, no window of the slowdown runs below 5 of the 8 slots (before:
/// 4, and 3 when a regular probe fell due on the cut; `capacity-halves` ran its slowed backend
/// at 4 of 8 slots for up to 0.7 s).
#[test]
fn a_slowdown_at_the_knee_is_probed_at_three_quarters_of_it() {
    let (k, s) = (8.0, 0.040);
    at_every_offset(k, s, |offset, law, t, seed| {
        let before = law.limit();
        let limits = drive(law, t, k, 2.0 * s, 4, seed);
        let baseline = law.baseline().unwrap().as_secs_f64();
        assert!(
            baseline > 1.5 * s,
            "slowdown {offset} windows on: limits {before} {limits:?}, baseline {baseline}"
        );
        assert!(
            limits.iter().all(|&l| l >= 5),
            "slowdown {offset} windows on: limits {before} {limits:?}"
        );
        assert!(
            limits[2..].iter().any(|&l| f64::from(l) >= k),
            "slowdown {offset} windows on: limits {before} {limits:?}"
        );
    });
}

/// The same rise for the other reason: the service lost half its slots and is as fast as before.
/// The probe at three quarters of the knee is still slow in proportion to its concurrency (a
/// queue), so the cut stands and the baseline stays the service's own latency: the limit comes
/// down to the four slots left.
#[test]
fn a_service_that_loses_half_its_slots_is_not_taken_for_a_slower_one() {
    let s = 0.040;
    at_every_offset(8.0, s, |offset, law, t, seed| {
        let limits = drive(law, t, 4.0, s, 12, seed);
        let baseline = law.baseline().unwrap().as_secs_f64();
        assert!(
            baseline < 1.2 * s,
            "{offset} windows on: limits {limits:?}, baseline {baseline}"
        );
        let m = median(limits[4..].to_vec());
        assert!(
            (4.0..=5.0).contains(&m),
            "{offset} windows on: limits {limits:?}"
        );
    });
}

/// Capacity comes back: a service that ran twice as slow (the baseline learnt at its latency)
/// is as fast as before again. A window clearly faster than the baseline is the service's own
/// latency now, and the baseline follows it in that window: before, it came down half the way
/// per window, and while it stayed above the service's latency the limit grew past the knee
/// and queued requests in the service (the overload benchmark's `capacity-halves`, restored:
/// an admitted p99 over twice the unloaded one; the simulator's `halves_bench`, seeds 61–120:
/// restored p99 over the unloaded one 2.50 → 2.01× on 8 slots, 2.77 → 1.69× on a CPU-bound
/// service).
#[test]
fn a_faster_service_is_learnt_in_one_window_and_the_limit_does_not_run_away() {
    for (k, s) in [(8.0, 0.040), (6.0, 0.030), (16.0, 0.020), (32.0, 0.005)] {
        let mut seed = 11;
        let mut law = Law::new(LimitConfig::default());
        let mut t = Instant::now();
        drive(&mut law, &mut t, k, 2.0 * s, 300, &mut seed);
        assert!(
            law.baseline().unwrap().as_secs_f64() > 1.5 * s,
            "k {k}: slow baseline"
        );
        let first = drive(&mut law, &mut t, k, s, 1, &mut seed);
        let baseline = law.baseline().unwrap().as_secs_f64();
        assert!(
            baseline < 1.2 * s,
            "k {k}, s {s}: baseline {baseline} after the first faster window ({first:?})"
        );
        // The next windows' limits (their median: a probe window runs at half the limit)
        // fill the slots and do not run away above them. A limit that stood above the knee
        // when capacity came back teaches a baseline with that queue in it (32 slots: limits
        // 41–46 for a while, until a probe finds the service's own latency); before, the
        // baseline came down over several windows while the limit grew (16 slots: 26–32).
        for chunk in 0..3 {
            let limits = drive(&mut law, &mut t, k, s, 10, &mut seed);
            let m = median(limits.clone());
            assert!(
                m >= k.floor() && m <= 1.5 * k,
                "k {k}, s {s}: windows {}..{}: limits {limits:?}",
                chunk * 10,
                chunk * 10 + 10
            );
        }
    }
}

/// One window of the model service in which it gets `from / to` times faster: the first
/// `switch` of its samples at the old service time, the rest at the new (the requests that
/// started before the change finish in it).
fn straddling_window(law: &Law, k: f64, from: f64, to: f64, switch: u32) -> Window {
    let n = law.limit();
    let queue = (f64::from(n) / k).max(1.0);
    let mut w = Window::default();
    for i in 0..SAMPLES {
        let s = if i < switch { from } else { to };
        w.record(
            Duration::from_secs_f64(s * queue),
            n,
            n <= law.low_concurrency(),
        );
    }
    w.binding = true;
    w.elapsed = Duration::from_secs_f64(from * queue * 4.0);
    w
}

/// Capacity comes back (the service gets twice as fast again) in the middle of a window,
/// wherever in it: the windows that follow must not run the limit above the knee on a
/// baseline learnt with a queue in it. A window at the limit's concurrency that is faster
/// than the slow phase's baseline may still hold a queue (at 9 in flight on 8 slots of 40 ms,
/// 45 ms): the law re-checks it a quarter below that concurrency, and again while that
/// finds the service faster. Before, the limit settled at 10-11 on 8 slots (a baseline of 45
/// ms against 40) and, after a window that straddled the change read as no queue against
/// the old baseline, grew to 28 (`capacity-halves`' restored phase: p99 2.1-3.1 times the
/// unloaded).
#[test]
fn capacity_that_comes_back_is_not_read_against_a_baseline_with_a_queue_in_it() {
    for (k, s) in [(8.0, 0.040), (6.0, 0.030), (16.0, 0.020), (4.0, 0.100)] {
        for switch in [4, 12, 20, 28] {
            let mut seed = 5;
            let mut law = Law::new(LimitConfig::default());
            let mut t = Instant::now();
            drive(&mut law, &mut t, k, 2.0 * s, 300, &mut seed);
            let w = straddling_window(&law, k, 2.0 * s, s, switch);
            t += w.elapsed;
            let mut limits = vec![law.observe(&w, t)];
            limits.extend(drive(&mut law, &mut t, k, s, 40, &mut seed));
            let knee = (k * (1.0 + LimitConfig::default().tolerance)).ceil() + 1.0;
            let settled = median(limits[10..].to_vec());
            assert!(
                settled >= k.floor() && settled <= knee,
                "k {k}, s {s}, switch {switch}: settled at {settled}: {limits:?}"
            );
            let top = limits.iter().copied().max().unwrap_or(0);
            assert!(
                f64::from(top) <= 1.5 * k,
                "k {k}, s {s}, switch {switch}: ran up to {top}: {limits:?}"
            );
            let baseline = law.baseline().unwrap().as_secs_f64();
            assert!(
                baseline < 1.06 * s,
                "k {k}, s {s}, switch {switch}: baseline {baseline}: {limits:?}"
            );
        }
    }
}

/// One window of a service of `k` slots that also costs its host a little per request in
/// flight (half a percent each, as a shared CPU or allocator does): below the knee the latency
/// still falls, slightly, with concurrency. Latencies spread by 3 % (deterministic from
/// `seed`).
fn host_window(law: &Law, k: f64, s: f64, seed: &mut u64) -> Window {
    let n = law.limit();
    let mean = s * (1.0 + 0.005 * f64::from(n)) * (f64::from(n) / k).max(1.0);
    let mut w = Window::default();
    for _ in 0..SAMPLES {
        let latency = Duration::from_secs_f64(mean * (1.0 + 0.03 * (2.0 * uniform(seed) - 1.0)));
        w.record(latency, n, n <= law.low_concurrency());
        if law.target_latency().is_some_and(|t| latency <= t) {
            w.record_served(n);
        }
    }
    w.binding = true;
    w.elapsed = Duration::from_secs_f64(mean * 4.0);
    w
}

/// After capacity comes back, the law re-checks a quarter below the concurrency it saw the
/// faster service at, and again while that finds the service faster — but only while it finds
/// it faster by half the tolerance or more. A probe that found it only slightly faster (a
/// host's cost per request in flight) found no queue: another, a quarter lower again, only
/// leaves slots idle. Before, any difference beyond the window's noise called for the next
/// probe: on 8 slots the chain ran at 8, 6, 5 and 4 (`capacity-halves`' restored phase lost
/// a point or two of goodput to it).
#[test]
fn the_rechecks_after_capacity_comes_back_stop_once_a_probe_finds_no_queue() {
    for (k, s) in [(8.0, 0.040), (16.0, 0.020), (32.0, 0.005)] {
        let mut seed = 7;
        let mut law = Law::new(LimitConfig::default());
        let mut t = Instant::now();
        for _ in 0..300 {
            let w = host_window(&law, k, 2.0 * s, &mut seed);
            t += w.elapsed;
            law.observe(&w, t);
        }
        let slow = law.limit();
        let limits: Vec<u32> = (0..40)
            .map(|_| {
                let w = host_window(&law, k, s, &mut seed);
                t += w.elapsed;
                law.observe(&w, t)
            })
            .collect();
        // The first re-check runs at three quarters of the concurrency the faster service
        // was seen at (the slow phase's limit), the second a quarter below that at most.
        let lowest = limits.iter().copied().min().unwrap_or(0);
        let floor = (f64::from(slow) * 0.75 * 0.75).floor() as u32;
        assert!(
            lowest >= floor,
            "k {k}: from {slow}, down to {lowest} (< {floor}): {limits:?}"
        );
        let settled = median(limits[20..].to_vec());
        assert!(
            at_the_knee(settled, k, LimitConfig::default().tolerance),
            "k {k}: settled at {settled}: {limits:?}"
        );
    }
}

/// A limit of one or two grows by a request a window while nothing queues: its windows last
/// many service times (16 samples at a limit of 1 on a 200 ms service: over 3 s), and growth
/// by the tolerance alone (10 %) took four of them to add one request.
#[test]
fn a_small_limit_grows_by_a_request_a_window() {
    let mut law = Law::new(LimitConfig {
        initial: 1,
        ..LimitConfig::default()
    });
    let mut t = Instant::now();
    let mut seed = 3;
    let limits = drive(&mut law, &mut t, 4.0, 0.200, 10, &mut seed);
    // The first window teaches the baseline, the next adds a request (the third probes
    // below the initial limit, a guess); the limit reaches the four slots by the sixth and
    // never runs past the knee and one (before: [1, 1, 1, 2, 2, 3, 6, 4, 5, 4]).
    assert_eq!(limits[1], 2, "{limits:?}");
    assert!(limits[5] >= 4, "{limits:?}");
    assert!(limits.iter().all(|&l| l <= 5), "{limits:?}");
}

/// A binding window of `SAMPLES` completions at `concurrency`, each taking `latency`.
fn flat_window(concurrency: u32, latency: Duration) -> Window {
    let mut w = Window::default();
    for _ in 0..SAMPLES {
        w.record(latency, concurrency, false);
    }
    w.binding = true;
    w.elapsed = latency * 4;
    w
}

/// A cut from above the concurrency the service last met the target at stops there when the
/// rise is one a queue of the excess explains (with heavy-tailed costs a queue of a request
/// or two swings the window's mean by a third and more: the overload bench's `mixed` at 1.5x
/// lost 5 points of goodput to cuts below the knee, 91.8 -> 95.3 % with the rule); a larger
/// rise is a slower service, and the cut goes below.
#[test]
fn a_cut_from_above_the_knee_stops_at_it_unless_the_service_got_slower() {
    let mut seed = 9;
    let mut law = Law::new(LimitConfig::default());
    let mut t = Instant::now();
    drive(&mut law, &mut t, 8.0, 0.040, 300, &mut seed);
    // Not in a probe window (one in 32 runs at half the limit).
    for _ in 0..4 {
        if law.limit() >= 8 {
            break;
        }
        drive(&mut law, &mut t, 8.0, 0.040, 1, &mut seed);
    }
    let baseline = law.baseline().unwrap();
    // A window at the limit that meets the target: the knee is there, and the limit grows.
    let knee = law.limit();
    let w = flat_window(knee, baseline);
    t += w.elapsed;
    let above = law.observe(&w, t);
    assert!(above > knee, "{knee} -> {above}");
    let target = law.target_latency().unwrap();
    for (rise, floor) in [(1.3, Some(knee)), (1.45, Some(knee)), (2.0, None)] {
        let mut law = law.clone();
        let w = flat_window(above, target.mul_f64(rise));
        let cut = law.observe(&w, t + w.elapsed);
        let free = (f64::from(above) / rise).round() as u32;
        match floor {
            Some(k) => assert_eq!(cut, k, "rise {rise}: {knee} {above} -> {cut}"),
            None => assert_eq!(cut, free, "rise {rise}: {above} -> {cut}"),
        }
    }
}

/// One window of light demand on the model service: `SAMPLES` completions at concurrencies
/// spread over `1..=peak` (never above the limit), no request waiting for a slot.
fn light_window(law: &Law, k: f64, s: f64, peak: u32, seed: &mut u64) -> Window {
    let mut w = Window::default();
    for _ in 0..SAMPLES {
        let n = (1 + (uniform(seed) * f64::from(peak)) as u32)
            .min(peak)
            .min(law.limit());
        let latency = Duration::from_secs_f64(s * (f64::from(n) / k).max(1.0));
        w.record(latency, n, n <= law.low_concurrency());
        if law.target_latency().is_some_and(|t| latency <= t) {
            w.record_served(n);
        }
    }
    w.elapsed = Duration::from_secs_f64(s * 4.0);
    w
}

/// A step from light load to overload, the overload benchmark's `critical-only` (a 0.5x
/// warm-up, then 1.5x): the initial limit (16) is a guess nothing tested while demand was
/// light, and the first overloaded window used to admit all of it at once, so every request
/// beyond the service's slots queued inside it (p99 1.90x the unloaded one at the onset of
/// 1.5x on the bench's 8-slot backend). A window that does not fill the limit now brings it
/// down to what the service was seen to serve (`Law::served`) and a tolerance above: the
/// overload starts near the service's slots, and the limit still grows to fill them. Light
/// demand that reaches the slots keeps them (no refusal while the service has room).
#[test]
fn an_untested_limit_comes_down_to_what_light_demand_was_served_at() {
    for (k, s) in [(8.0, 0.040), (4.0, 0.100), (2.0, 0.200), (6.0, 0.030)] {
        let mut seed = 5;
        let mut law = Law::new(LimitConfig::default());
        let mut t = Instant::now();
        // Light demand, up to the slots at its peaks.
        for _ in 0..20 {
            let w = light_window(&law, k, s, k as u32, &mut seed);
            t += w.elapsed;
            law.observe(&w, t);
        }
        assert_eq!(f64::from(law.served()), k, "k {k}");
        let ceiling = (k * 1.1 + 0.5).round();
        assert!(
            f64::from(law.limit()) <= ceiling && f64::from(law.limit()) >= k,
            "k {k}: limit {} after light demand",
            law.limit()
        );
        // Overload: the first window runs at that limit, not at 16, and the next ones fill
        // the slots without running away.
        let limits = drive(&mut law, &mut t, k, s, 30, &mut seed);
        assert!(
            f64::from(limits[0]) <= ceiling,
            "k {k}: first overloaded limits {limits:?}"
        );
        let m = median(limits[10..].to_vec());
        assert!(m >= k && m <= 1.5 * k, "k {k}: limits {limits:?}");
    }
    // Light demand that never reaches the slots: the limit follows it, one tolerance and half a
    // request above its peak, and grows from there under overload.
    let (k, s) = (32.0, 0.005);
    let mut seed = 9;
    let mut law = Law::new(LimitConfig::default());
    let mut t = Instant::now();
    for _ in 0..20 {
        let w = light_window(&law, k, s, 6, &mut seed);
        t += w.elapsed;
        law.observe(&w, t);
    }
    assert_eq!((law.served(), law.limit()), (6, 7));
    let limits = drive(&mut law, &mut t, k, s, 40, &mut seed);
    let m = median(limits[20..].to_vec());
    assert!(m >= k && m <= 1.5 * k, "limits {limits:?}");
}

/// The first overloaded window after light demand: no window has filled the limit yet, so
/// no knee is known, but light demand was seen served at the target up to `served`. A rise a
/// queue of the excess explains (a few costly requests more than usual in the window) cuts to
/// `served`, not below it; a larger rise (a slower service) cuts freely. Before, the cut
/// went by the window's mean alone: 11 -> 7 on the overload bench's 8 slots in `mixed`.
#[test]
fn a_first_overloaded_window_cuts_to_what_light_demand_was_served_at() {
    let mut seed = 5;
    let mut law = Law::new(LimitConfig::default());
    let mut t = Instant::now();
    for _ in 0..20 {
        let w = light_window(&law, 8.0, 0.040, 8, &mut seed);
        t += w.elapsed;
        law.observe(&w, t);
    }
    let (served, limit) = (law.served(), law.limit());
    assert_eq!((served, limit), (8, 9));
    let target = law.target_latency().unwrap();
    for (rise, expected) in [(1.45, served), (2.4, 5)] {
        let mut law = law.clone();
        let w = flat_window(limit, target.mul_f64(rise));
        let cut = law.observe(&w, t + w.elapsed);
        // Free, the cut is to limit / rise: 9 / 1.45 = 6.2 (below the 8 served), 9 / 2.4 = 3.75
        // (at most half: 4.5, rounded to 5).
        assert_eq!(cut, expected, "rise {rise}: {limit} -> {cut}");
    }
}

/// The median of the limits (probe windows, at half the limit for one window in 32, do not
/// move it).
fn median(mut limits: Vec<u32>) -> f64 {
    limits.sort_unstable();
    f64::from(limits[limits.len() / 2])
}

/// Whether a limit serves a service of `k` slots at capacity without a standing queue in it:
/// at least `k` (every slot busy) and at most the knee the tolerance allows, plus one.
fn at_the_knee(limit: f64, k: f64, tolerance: f64) -> bool {
    limit >= k.floor() && limit <= (k * (1.0 + tolerance) * 1.15).ceil() + 1.0
}

fn any_window() -> impl Strategy<Value = (u32, u64, u32, bool, u64)> {
    (
        0u32..200,            // samples
        0u64..5_000_000_000,  // mean latency, ns (up to 5 s)
        0u32..100_000,        // concurrency
        any::<bool>(),        // binding
        0u64..10_000_000_000, // elapsed, ns
    )
}

/// The window [`any_window`] drew, for `law`: `samples` latencies around the mean, some far
/// from it, each at `concurrency` (low when `law` says so).
fn any_window_for(
    law: &Law,
    (samples, latency_ns, concurrency, binding, elapsed_ns): (u32, u64, u32, bool, u64),
) -> Window {
    let mut w = Window::default();
    for i in 0..samples {
        let l = latency_ns.saturating_mul(u64::from(i % 7 + 1)) / 4;
        w.record(
            Duration::from_nanos(l),
            concurrency,
            concurrency <= law.low_concurrency(),
        );
    }
    w.binding = binding;
    w.elapsed = Duration::from_nanos(elapsed_ns);
    w
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/limit_law.txt",
        ))),
        ..ProptestConfig::default()
    })]

    /// Whatever the windows (empty, huge, zero latency, absurd concurrency), the limit stays
    /// within `[min, max]`, never 0, and critical requests never get less than the others.
    #[test]
    fn the_limit_never_leaves_its_bounds(
        min in 1u32..50,
        span in 0u32..500,
        start in 0.0f64..=1.0,
        tolerance in 0.01f64..=1.0,
        windows in prop::collection::vec(any_window(), 1..200),
    ) {
        let max = min + span;
        let config = LimitConfig {
            min,
            max,
            initial: min + (f64::from(span) * start) as u32,
            tolerance,
            ..LimitConfig::default()
        };
        config.validate().unwrap();
        let mut law = Law::new(config);
        let mut t = Instant::now();
        for drawn in windows {
            let w = any_window_for(&law, drawn);
            t += w.elapsed;
            let limit = law.observe(&w, t);
            prop_assert!((min..=max).contains(&limit), "{limit} outside [{min}, {max}]");
            prop_assert!(limit >= 1);
            prop_assert_eq!(limit, law.limit());
            prop_assert!(law.limit_for(degrade_core::Priority::Critical) >= limit);
        }
    }

    /// Whatever the windows and however many requests each says were refused, the share
    /// refused stays a share (in `[0, 1]`, never NaN), and the wait for a slot is at most half
    /// again the longest it may be otherwise (`queue_delay` times four baselines).
    #[test]
    fn the_rejected_share_stays_a_share(
        windows in prop::collection::vec((any_window(), any::<u32>()), 1..200),
    ) {
        let mut law = Law::new(LimitConfig::default());
        let mut t = Instant::now();
        for (drawn, rejected) in windows {
            let mut w = any_window_for(&law, drawn);
            w.rejected = rejected;
            t += w.elapsed;
            law.observe(&w, t);
            let share = law.rejected_share();
            prop_assert!((0.0..=1.0).contains(&share), "{share}");
            if let (Some(wait), Some(b)) = (law.queue_target(), law.baseline()) {
                let most = b.mul_f64(4.0 * LimitConfig::default().queue_delay * 1.5);
                prop_assert!(wait <= most + Duration::from_nanos(1), "{wait:?} > {most:?}");
            }
        }
    }

    /// A service of `k` slots and service time `s`, over a range neither the law nor its
    /// defaults know: the limit settles at the knee (every slot busy, no standing queue).
    #[test]
    fn the_limit_converges_on_a_fixed_capacity(
        k in 1u32..300,
        s_ms in 1u64..2_000,
        seed in any::<u64>(),
    ) {
        let (k, s) = (f64::from(k), s_ms as f64 / 1e3);
        let config = LimitConfig::default();
        let tolerance = config.tolerance;
        let mut law = Law::new(config);
        let mut t = Instant::now();
        let mut seed = seed;
        let limits = drive(&mut law, &mut t, k, s, 400, &mut seed);
        let settled = median(limits[300..].to_vec());
        prop_assert!(at_the_knee(settled, k, tolerance), "k {k}, s {s}: settled at {settled}");
    }

    /// Capacity halves or doubles (or more) after the limit settled: within 150 windows the
    /// limit sits at the new knee.
    #[test]
    fn the_limit_follows_a_step_change_of_capacity(
        k in 2u32..200,
        factor in prop_oneof![Just(0.5), Just(2.0), Just(0.25), Just(3.0)],
        s_ms in 5u64..500,
        seed in any::<u64>(),
    ) {
        let (k, s) = (f64::from(k), s_ms as f64 / 1e3);
        let config = LimitConfig::default();
        let tolerance = config.tolerance;
        let mut law = Law::new(config);
        let mut t = Instant::now();
        let mut seed = seed;
        drive(&mut law, &mut t, k, s, 300, &mut seed);
        let k2 = (k * factor).max(1.0).round();
        let limits = drive(&mut law, &mut t, k2, s, 250, &mut seed);
        let settled = median(limits[150..].to_vec());
        prop_assert!(
            at_the_knee(settled, k2, tolerance),
            "k {k} -> {k2}, s {s}: settled at {settled}"
        );
    }

    /// The service gets slower (its slots stay, each request takes 2x-4x as long): the law
    /// first reads the slower latency as a queue and cuts, then sees that the cuts did not
    /// help, learns the new baseline and gives the cuts back, so the limit is at the knee
    /// again within a few windows instead of growing back from the bottom.
    #[test]
    fn a_slower_service_gets_its_limit_back_within_a_few_windows(
        k in 8u32..200,
        slower in prop_oneof![Just(2.0), Just(3.0), Just(4.0)],
        s_ms in 5u64..500,
        seed in any::<u64>(),
    ) {
        let (k, s) = (f64::from(k), s_ms as f64 / 1e3);
        let mut law = Law::new(LimitConfig::default());
        let mut t = Instant::now();
        let mut seed = seed;
        drive(&mut law, &mut t, k, s, 300, &mut seed);
        let limits = drive(&mut law, &mut t, k, s * slower, 40, &mut seed);
        let back = limits.iter().position(|&l| f64::from(l) >= k.floor());
        prop_assert!(
            back.is_some_and(|i| i <= 2),
            "k {k}, s {s} x{slower}: limits {limits:?}"
        );
    }

    /// A service of well under a microsecond whose latency does not grow with concurrency:
    /// `callers` callers, each window a little slower or faster as a whole (the host: cache
    /// misses, frequency, a neighbour) and single samples far slower now and then (a caller
    /// preempted for a time slice or more while it held its slot). Latency differences of that size are the host's
    /// timing noise, not a queue: the limit never falls below what the callers use, so none
    /// of them ever has to wait.
    #[test]
    fn a_sub_microsecond_service_never_drives_the_limit_below_the_callers_concurrency(
        callers in 1u32..=16,
        service_ns in 20.0f64..1_000.0,
        window_noise in 0.0f64..1.0,
        preempted in 0.0f64..1e-5,
        seed in any::<u64>(),
    ) {
        if let Err(e) = sub_microsecond(callers, service_ns, window_noise, preempted, seed) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// The body of `a_sub_microsecond_service_never_drives_the_limit_below_the_callers_concurrency`:
/// 400 windows; the first window whose limit falls below `callers`, as an error.
fn sub_microsecond(
    callers: u32,
    service_ns: f64,
    window_noise: f64,
    preempted: f64,
    seed: u64,
) -> Result<(), String> {
    let mut law = Law::new(LimitConfig::default());
    let mut t = Instant::now();
    let mut seed = seed;
    for i in 0..400 {
        // The whole window runs up to `1 + window_noise` times slower than the service.
        let host = 1.0 + window_noise * uniform(&mut seed);
        let mut w = Window::default();
        let samples = 16 + (uniform(&mut seed) * 2_000.0) as u32;
        for _ in 0..samples {
            let n = 1 + (uniform(&mut seed) * f64::from(callers)) as u32;
            let mut latency = service_ns * host * (0.8 + 0.4 * uniform(&mut seed));
            // Preempted with a chance in proportion to how long it holds its slot (up to
            // once every 100 µs of run time: a badly overloaded host).
            if uniform(&mut seed) < preempted * latency {
                latency += 1e6 + 1e7 * uniform(&mut seed); // a time slice or several
            }
            let latency = Duration::from_nanos(latency as u64);
            let cap = law.sample_cap();
            w.record_capped(latency, cap, n.min(law.limit()), n <= law.low_concurrency());
        }
        // Callers find the limit full only once it is below their concurrency.
        w.binding = law.limit() < callers;
        w.elapsed = Duration::from_millis(10);
        t += w.elapsed;
        let limit = law.observe(&w, t);
        if limit < callers {
            return Err(format!(
                "window {i}: limit {limit} below {callers} callers (baseline {:?}, window mean {:?}, samples {samples})",
                law.baseline(),
                w.mean_latency(),
            ));
        }
    }
    Ok(())
}

/// An input the property test met (a rare one: its fixed seed in `cargo xtask test` does not
/// reach it): nine callers on a 0.9 µs service, about one sample in a hundred preempted for 1–11
/// ms. The first window (40 samples, one preempted for 7.8 ms) left a tentative baseline of
/// 195 µs and a sample cap of 431 µs; the next replaced the baseline with its low-concurrency
/// mean (3.6 µs), and its mean (9.7 µs, fifteen samples capped at 431 µs) judged against that
/// cut the limit to 8 below the nine callers. Its capped samples are now read at the new
/// baseline's cap.
///
/// With it, two more inputs the property test met while the baseline's fall when a service
/// gets clearly faster was being changed: the second through that path (a window that lowered
/// the baseline judged with samples capped at the old one's cap, before the correction covered
/// every path), the third with no preempted sample at all, by a variant not kept that scaled a
/// faster window's latency down to the old knee (a baseline of 350 ns on a 0.9 µs service).
#[test]
fn a_first_window_dominated_by_preempted_samples_does_not_cut_below_the_callers() {
    for (callers, service_ns, window_noise, preempted, seed) in [
        (
            9,
            912.248_508_704_365_8,
            0.401_914_062_851_880_25,
            9.661_313_600_207_849e-6,
            741_696_953_796_011_944,
        ),
        (
            9,
            959.129_262_916_517_6,
            0.955_990_666_541_075,
            8.765_507_922_122_848e-6,
            15_039_600_624_188_431_202,
        ),
        (
            5,
            912.071_284_005_767_1,
            0.992_339_856_248_489_2,
            0.0,
            4_985_557_127_120_669_099,
        ),
    ] {
        sub_microsecond(callers, service_ns, window_noise, preempted, seed).unwrap();
    }
}

/// The same on a real host: two threads call one `DegradeLayer` over a service that answers
/// at once (the `full_stack` benchmark's `2-threads` case), each polling every response once.
/// The law sees latencies of tens of nanoseconds, spread by the clock, cache traffic between
/// the threads and preemption; it must never cut the limit below the two requests the threads
/// hold at most, so no request ever waits (a response future that is not ready at once).
#[test]
fn two_threads_on_an_instant_service_never_wait_for_a_slot() {
    let controller = Controller::new(Default::default()).unwrap();
    let layer = DegradeLayer::builder(controller.handle())
        .prioritize(|_: &u64| Priority::Normal)
        .build()
        .unwrap();
    let svc = layer.layer(tower::service_fn(|r: u64| {
        std::future::ready(Ok::<_, std::convert::Infallible>(r))
    }));
    let waited: u64 = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let mut svc = svc.clone();
                let layer = &layer;
                scope.spawn(move || {
                    let mut cx = Context::from_waker(Waker::noop());
                    let mut waited = 0u64;
                    // At least 400,000 calls, and until the law has taken a window (its
                    // shortest lasts 10 ms: an optimised build makes 400,000 calls in less),
                    // at most 40 times as many.
                    for round in 0..40u64 {
                        for i in 0..400_000u64 {
                            assert!(svc.poll_ready(&mut cx).is_ready());
                            if pin!(svc.call(round * 400_000 + i))
                                .poll(&mut cx)
                                .is_pending()
                            {
                                waited += 1;
                            }
                        }
                        let learnt = layer.snapshot().limit.is_some_and(|l| l.baseline.is_some());
                        if learnt {
                            break;
                        }
                    }
                    waited
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).sum()
    });
    let limit = layer.snapshot().limit.unwrap();
    assert_eq!(waited, 0, "requests waited for a slot: {limit:?}");
    assert!(limit.limit >= 2, "{limit:?}");
    assert!(
        limit.baseline.is_some(),
        "the law learnt the service: {limit:?}"
    );
}

/// A probe window runs the other priorities at three quarters of the limit and leaves
/// critical requests as much (plus their reserve), never less: halving theirs refused some
/// whenever they alone needed more than half the capacity; with all of it, critical requests
/// that callers re-send at once fill the probe, which then never runs below the knee, and the
/// baseline is learnt inside a queue.
#[test]
fn a_probe_leaves_critical_requests_three_quarters_of_the_limit() {
    let mut law = Law::new(LimitConfig::default());
    assert_eq!(law.limit(), 16);
    // The first full window probes below the initial limit (a guess).
    let mut w = Window::default();
    for _ in 0..32 {
        w.record(Duration::from_millis(10), 16, false);
    }
    w.binding = true;
    w.elapsed = Duration::from_millis(40);
    law.observe(&w, Instant::now());
    assert_eq!(
        law.limit_for(Priority::Normal),
        12,
        "the probe runs at three quarters of the limit"
    );
    // 16 x 3/4 = 12, and the critical reserve of a tenth, at least one: 2.
    assert_eq!(law.limit_for(Priority::Critical), 14);
}

/// A first window in which enough requests found a CPU-bound service (latency growing with any
/// concurrency) nearly empty learns its baseline from them and leaves the configured limit
/// alone: the requests at more concurrency were slower because they shared the cores, not
/// because a queue formed behind the limit, and judging them cut the limit of a 2-core
/// service towards a single request (simulator, worst of six seeds: 79.5 % goodput, 87.2 %
/// without the cut).
#[test]
fn a_first_window_that_found_the_service_nearly_empty_leaves_the_limit_alone() {
    let mut law = Law::new(LimitConfig::default());
    let (low, half) = (law.low_concurrency(), law.half_concurrency());
    let mut w = Window::default();
    for i in 0..64u32 {
        // Two cores of 20 ms: alone or in pairs, 20 ms; six at once share them, 50 ms.
        let (n, ms) = if i % 4 == 3 { (6, 50) } else { (1 + i % 2, 20) };
        let latency = Duration::from_millis(ms);
        w.record(latency, n, n <= low);
        if n <= half {
            w.record_half(latency, None);
        }
    }
    let before = law.limit();
    law.observe(&w, Instant::now());
    assert_eq!(law.baseline(), Some(Duration::from_millis(20)));
    assert_eq!(law.limit(), before);
}

/// A window that cuts does not also probe: one window takes the limit down by half at most.
/// At a cold start at 3x (gRPC callers that all send at once to 8 slots of 40 ms behind the
/// initial limit of 16), the first window learns the baseline from its half-limit samples and
/// reads the rest as a queue: a cut to 8. The probe the first binding window owes the initial
/// guess ran in the same window, at three quarters of the cut (6): nothing was admitted until
/// 16 in flight fell below 7, critical calls filled the wait queue for that drain, and 3-4 of
/// 20 cold starts refused a batch of them. The probe runs in the next binding window instead.
#[test]
fn a_window_that_cuts_leaves_its_probe_to_the_next_one() {
    let mut law = Law::new(LimitConfig::default());
    let (low, half) = (law.low_concurrency(), law.half_concurrency());
    let initial = law.limit();
    assert_eq!((initial, half), (16, 8));
    let mut w = Window::default();
    for n in 1..=initial {
        // The first 8 found a slot free (40 ms); the next 8 queued behind them (80 ms).
        let latency = Duration::from_millis(if n <= 8 { 40 } else { 80 });
        w.record(latency, n, n <= low);
        if n <= half {
            w.record_half(latency, None);
        }
    }
    w.binding = true;
    w.elapsed = Duration::from_millis(80);
    let mut t = Instant::now() + w.elapsed;
    assert_eq!(law.observe(&w, t), 8, "cut by half, no probe below it");
    assert_eq!(law.baseline(), Some(Duration::from_millis(40)));
    // The next window, at the cut limit and the baseline's latency, grows the limit (8 -> 9)
    // and runs the probe the initial guess is owed at three quarters of it (7); the one after
    // gives the limit back.
    let w = flat_window(8, Duration::from_millis(40));
    t += w.elapsed;
    assert_eq!(law.observe(&w, t), 7, "the probe");
    let w = flat_window(7, Duration::from_millis(40));
    t += w.elapsed;
    assert_eq!(law.observe(&w, t), 9, "back from the probe");
}

/// Growth speeds up only over windows that met the target: one above it, within its noise,
/// grows by the first step and starts the streak over. A window that straddled capacity
/// coming back (half its samples at the slow service's latency, half at twice the concurrency
/// on the fast one) reads about as slow as the stale baseline with a wide spread; growing
/// faster on such windows took the limit from 9 to 28 on 8 slots in four windows.
#[test]
fn growth_speeds_up_only_over_windows_that_met_the_target() {
    let ms = Duration::from_millis;
    let learnt = || {
        let mut law = Law::new(LimitConfig::default());
        let w = flat_window(4, ms(40));
        law.observe(&w, Instant::now());
        assert_eq!(law.baseline(), Some(ms(40)));
        law
    };
    // A window at the limit whose samples alternate around `mean` by `spread`.
    let spread_window = |limit: u32, mean: f64, spread: f64| {
        let mut w = Window::default();
        for i in 0..SAMPLES {
            let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
            w.record(Duration::from_secs_f64(mean + sign * spread), limit, false);
        }
        w.binding = true;
        w.elapsed = Duration::from_secs_f64(mean * 4.0);
        w
    };
    let grow = |law: &mut Law, mean: f64, spread: f64| {
        let mut t = Instant::now();
        (0..4)
            .map(|_| {
                let w = spread_window(law.limit(), mean, spread);
                t += w.elapsed;
                law.observe(&w, t)
            })
            .collect::<Vec<u32>>()
    };
    // At the baseline: each window grows more than the one before.
    let clean = grow(&mut learnt(), 0.040, 0.002);
    assert_eq!(clean, [18, 21, 30, 53]);
    // 46 ms against a 44 ms target, within the noise of a wide spread: the first step only.
    let mut law = learnt();
    let above = grow(&mut law, 0.046, 0.020);
    assert_eq!(above, [18, 19, 21, 23]);
}
