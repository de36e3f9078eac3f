//! One simulated rollout: users, the two simulated backends, the event loop that drives the
//! real router and controller in simulated time.

use super::{Effects, Rng, Scenario, SimConfig};
use crate::arm::Arm;
use crate::key::{KeyFn, NoOverride, from_fn};
use crate::machine::CanaryPhase;
use crate::service::{Canary, Plain};
use crate::{CanaryController, future::ResponseFuture};
use degrade_core::{Clock, DefaultClassifier, ManualClock};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::time::Instant;
use tower_service::Service;

/// How a run ended (its simulated end time is returned beside it).
pub(super) enum RunEnd {
    RolledBack {
        canary_samples: u64,
        within_min: bool,
    },
    Promoted,
    Stuck,
}

/// One user of a run.
struct User {
    key: u64,
    /// Error-rate multiplier, or a fixed rate (a broken client).
    error_mult: f64,
    bad_rate: Option<f64>,
    /// Latency multiplier.
    latency_mult: f64,
}

/// A request: its user's key and what each arm would do with it (common random numbers).
#[derive(Debug, Clone, Copy)]
struct SimReq {
    key: u64,
    /// (failed, latency) on stable, then on the canary.
    arms: [(bool, Duration); 2],
}

/// The error of a failed simulated call.
#[derive(Debug)]
struct Failed;

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("simulated failure")
    }
}

impl std::error::Error for Failed {}

/// One arm of the simulated backend.
#[derive(Clone)]
struct Backend {
    arm: Arm,
    clock: ManualClock,
}

impl Service<SimReq> for Backend {
    type Response = ();
    type Error = Failed;
    type Future = Call;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Failed>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: SimReq) -> Call {
        let (failed, latency) = req.arms[self.arm.index()];
        Call {
            done_at: self.clock.now() + latency,
            failed,
            clock: self.clock.clone(),
        }
    }
}

/// A call that completes when the simulated clock reaches `done_at`.
struct Call {
    done_at: Instant,
    failed: bool,
    clock: ManualClock,
}

impl Future for Call {
    type Output = Result<(), Failed>;
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        if self.clock.now() >= self.done_at {
            Poll::Ready(if self.failed { Err(Failed) } else { Ok(()) })
        } else {
            Poll::Pending
        }
    }
}

type Key = KeyFn<fn(&SimReq) -> Option<u64>, u64>;
type Router = Canary<Backend, Backend, Key, NoOverride, DefaultClassifier, Plain, ManualClock>;
type Pending = ResponseFuture<Call, Call, DefaultClassifier, Plain, ManualClock>;

fn user_key(req: &SimReq) -> Option<u64> {
    Some(req.key)
}

/// A call in flight, ordered by completion time.
struct InFlight {
    done_ns: u64,
    seq: u64,
    fut: Pending,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.done_ns, self.seq) == (other.done_ns, other.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.done_ns, self.seq).cmp(&(other.done_ns, other.seq))
    }
}

/// Polls a future that the simulation knows to be ready (no timer, no I/O inside).
fn poll_now<F: Future + Unpin>(fut: &mut F) -> Option<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(fut).poll(&mut cx) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// Walker's alias table: O(1) draws from a discrete distribution.
struct Alias {
    prob: Vec<f64>,
    alias: Vec<usize>,
}

impl Alias {
    fn new(weights: &[f64]) -> Self {
        let n = weights.len();
        let total: f64 = weights.iter().sum();
        let mut scaled: Vec<f64> = weights.iter().map(|w| w * n as f64 / total).collect();
        let mut prob = vec![1.0; n];
        let mut alias: Vec<usize> = (0..n).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| scaled[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            prob[s] = scaled[s];
            alias[s] = l;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        Self { prob, alias }
    }

    fn draw(&self, rng: &mut Rng) -> usize {
        let n = self.prob.len();
        let i = ((rng.uniform() * n as f64) as usize).min(n - 1);
        if rng.uniform() < self.prob[i] {
            i
        } else {
            self.alias[i]
        }
    }
}

fn lognormal_mean_one(rng: &mut Rng, sigma: f64) -> f64 {
    (sigma * rng.normal() - sigma * sigma / 2.0).exp()
}

fn make_users(cfg: &SimConfig, fx: &Effects, rng: &mut Rng) -> (Vec<User>, Alias) {
    let mut users = Vec::with_capacity(cfg.users);
    let mut activity = Vec::with_capacity(cfg.users);
    for _ in 0..cfg.users {
        let key = rng.next_u64();
        let (error_mult, bad_rate) = match fx.error_users {
            Some(e) if rng.bernoulli(e.bad_share) => (1.0, Some(e.bad_rate)),
            Some(e) => (lognormal_mean_one(rng, e.sigma), None),
            None => (1.0, None),
        };
        let latency_mult = match fx.latency_users {
            Some(l) => {
                let slow = if rng.bernoulli(l.slow_share) {
                    l.slow_factor
                } else {
                    1.0
                };
                slow * (l.sigma * rng.normal()).exp()
            }
            None => 1.0,
        };
        users.push(User {
            key,
            error_mult,
            bad_rate,
            latency_mult,
        });
        activity.push(match fx.heavy_users {
            Some(h) => lognormal_mean_one(rng, h.activity_sigma),
            None => 1.0,
        });
    }
    if let Some(h) = fx.heavy_users {
        let count = h.count.min(users.len());
        let heavy_total = (count as f64 * h.share).min(0.9);
        let ordinary: f64 = activity[count..].iter().sum();
        let each = if count > 0 {
            heavy_total / (1.0 - heavy_total) * ordinary / count as f64
        } else {
            0.0
        };
        for a in &mut activity[..count] {
            *a = each;
        }
    }
    let alias = Alias::new(&activity);
    (users, alias)
}

pub(super) fn one_run(cfg: &SimConfig, scenario: &Scenario, rng: &mut Rng) -> (RunEnd, u64, f64) {
    let fx = &scenario.effects;
    let reg = &scenario.regression;
    let (users, alias) = make_users(cfg, fx, rng);
    let clock = ManualClock::new();
    let backend = |arm| Backend {
        arm,
        clock: clock.clone(),
    };
    let mut builder = Canary::builder(backend(Arm::Stable), backend(Arm::Canary))
        .key(from_fn(user_key as fn(&SimReq) -> Option<u64>))
        .clock(clock.clone());
    if let Some(every) = cfg.timing_every {
        builder = builder.fixed_timing(every);
    }
    let mut router: Router = builder.build().unwrap();
    let mut controller = CanaryController::builder(cfg.rollout.clone(), router.handle())
        .clock(clock.clone())
        .build()
        .expect("valid rollout config");
    let min = cfg.rollout.judge.min_samples;
    let mut min_reached = false;

    // Outages: start times over the horizon, in nanoseconds.
    let horizon = cfg.max_time.as_secs_f64();
    let mut outages = Vec::new();
    if let Some(o) = fx.outages {
        let mut t = 0.0;
        loop {
            t += -(1.0 - rng.uniform()).ln() * 3_600.0 / o.per_hour.max(1e-9);
            if t > horizon {
                break;
            }
            outages.push((t, t + o.duration.as_secs_f64()));
        }
    }
    let phase = rng.uniform() * std::f64::consts::TAU;
    let load = |t: f64| match fx.cycle {
        Some(c) => {
            1.0 + c.amplitude * (std::f64::consts::TAU * t / c.period.as_secs_f64() + phase).sin()
        }
        None => 1.0,
    };
    let max_load = 1.0 + fx.cycle.map_or(0.0, |c| c.amplitude.abs());

    let interval = cfg.rollout.analysis_interval.as_secs_f64();
    let mut now: f64; // seconds since the start
    let mut clock_ns: u64 = 0;
    let advance_to = |t: f64, clock_ns: &mut u64| {
        let target = (t * 1e9) as u64;
        if target > *clock_ns {
            clock.advance(Duration::from_nanos(target - *clock_ns));
            *clock_ns = target;
        }
    };
    let mut heap: BinaryHeap<Reverse<InFlight>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut requests = 0u64;
    let mut next_look = interval;
    let mut next_arrival = 0.0;
    let mut outage_idx = 0;
    loop {
        // Arrivals by thinning a Poisson process at the peak rate.
        if next_arrival <= next_look
            && heap
                .peek()
                .is_none_or(|Reverse(f)| next_arrival * 1e9 <= f.done_ns as f64)
        {
            now = next_arrival;
            next_arrival += -(1.0 - rng.uniform()).ln() / (cfg.rate * max_load);
            let m = load(now);
            if !rng.bernoulli(m / max_load) {
                continue;
            }
            advance_to(now, &mut clock_ns);
            while outage_idx < outages.len() && outages[outage_idx].1 < now {
                outage_idx += 1;
            }
            let outage = fx
                .outages
                .filter(|_| outages.get(outage_idx).is_some_and(|o| o.0 <= now));
            let user = &users[alias.draw(rng)];
            let (load_err, load_lat) = match fx.cycle {
                Some(c) => (
                    (1.0 + c.load_errors * (m - 1.0)).max(0.0),
                    (1.0 + c.load_latency * (m - 1.0)).max(0.1),
                ),
                None => (1.0, 1.0),
            };
            let base_err = match user.bad_rate {
                Some(r) => r,
                None => (cfg.error_rate * user.error_mult).min(1.0),
            } * load_err;
            let u_err = rng.uniform();
            let mut latency = cfg.median.as_secs_f64()
                * user.latency_mult
                * load_lat
                * (cfg.sigma * rng.normal()).exp();
            if let Some(tail) = fx.heavy_tail
                && rng.bernoulli(tail.share)
            {
                latency *= (1.0 - rng.uniform()).powf(-1.0 / tail.alpha);
            }
            let mut outage_fail = false;
            if let Some(o) = outage {
                outage_fail = rng.bernoulli(o.error_rate);
                latency *= o.latency_factor;
            }
            let latency = latency.min(600.0);
            let stable = (outage_fail || u_err < base_err, latency);
            let canary = (
                outage_fail || u_err < base_err + reg.extra_errors,
                latency * reg.latency_factor,
            );
            let req = SimReq {
                key: user.key,
                arms: [
                    (stable.0, Duration::from_secs_f64(stable.1)),
                    (canary.0, Duration::from_secs_f64(canary.1)),
                ],
            };
            requests += 1;
            let fut = router.call(req);
            let (_, latency) = req.arms[fut.arm().index()];
            seq += 1;
            heap.push(Reverse(InFlight {
                done_ns: clock_ns + u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX),
                seq,
                fut,
            }));
        } else if heap
            .peek()
            .is_some_and(|Reverse(f)| (f.done_ns as f64) <= next_look * 1e9)
        {
            let Some(Reverse(mut f)) = heap.pop() else {
                continue;
            };
            if f.done_ns > clock_ns {
                clock.advance(Duration::from_nanos(f.done_ns - clock_ns));
                clock_ns = f.done_ns;
            }
            let _ = poll_now(&mut f.fut).expect("a simulated call completes at its time");
        } else {
            now = next_look;
            next_look += interval;
            advance_to(now, &mut clock_ns);
            let mut tick = Box::pin(controller.tick());
            let judgement = match poll_now(&mut tick) {
                Some(Ok(j)) => j,
                _ => return (RunEnd::Stuck, requests, now),
            };
            drop(tick);
            let within_min = !min_reached;
            min_reached |= judgement.samples.1 >= min;
            match controller.state().phase {
                CanaryPhase::RolledBack => {
                    return (
                        RunEnd::RolledBack {
                            canary_samples: judgement.samples.1,
                            within_min,
                        },
                        requests,
                        now,
                    );
                }
                CanaryPhase::Promoted => return (RunEnd::Promoted, requests, now),
                CanaryPhase::Paused(_) => return (RunEnd::Stuck, requests, now),
                CanaryPhase::Progressing => {}
            }
            if now >= horizon {
                return (RunEnd::Stuck, requests, now);
            }
        }
    }
}
