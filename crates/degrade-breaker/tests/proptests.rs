//! Model-based property test: random sequences of successes, failures, slow calls, cancelled
//! calls, calls held in flight, time advances and resets, applied both to the real breaker
//! (through `BreakerHandle::try_acquire`, on a `ManualClock`) and to a small reference model
//! written here from the specification, must give the same admit decisions and the same
//! states at every step.

use degrade_breaker::{BreakerConfig, BreakerHandle, Permit, State, WindowConfig};
use degrade_core::{DefaultClassifier, ManualClock, Outcome};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use std::collections::VecDeque;
use std::time::Duration;

const WINDOW: usize = 5;
const MINIMUM: usize = 3;
const SLOW: Duration = Duration::from_millis(100);
const WAIT: Duration = Duration::from_secs(1);
const MAX_WAIT: Duration = Duration::from_secs(4);
const PERMITS: u32 = 2;
const SUCCESSES: u32 = 2;

fn config() -> BreakerConfig {
    let mut c = BreakerConfig::default();
    c.window = WindowConfig::Count {
        size: WINDOW as u32,
    };
    c.minimum_calls = MINIMUM as u32;
    c.failure_rate = 0.5;
    c.slow_call_duration = Some(SLOW);
    c.slow_call_rate = 0.5;
    c.wait = WAIT;
    c.backoff.multiplier = 2.0;
    c.backoff.max_wait = MAX_WAIT;
    c.half_open.permits = PERMITS;
    c.half_open.successes = SUCCESSES;
    c.half_open.failures = 1;
    c
}

#[derive(Debug, Clone)]
enum Op {
    Success,
    Failure,
    /// A call that succeeds after the slow-call duration.
    Slow,
    /// A call whose caller gives up (the permit is dropped).
    Cancel,
    /// A call left in flight.
    Hold,
    /// Finish the held call at this index (modulo) with this outcome.
    Finish(usize, bool),
    /// Drop the held call at this index (modulo).
    Abandon(usize),
    Advance(u64),
    Reset,
    /// A live change of the failure rate, the wait and the probes that close it
    /// (`BreakerHandle::reconfigure`): indexes into `RATES` and `WAITS`, and a success count.
    Reconfigure(usize, usize, u32),
}

const RATES: [f64; 3] = [0.5, 0.25, 0.75];
const WAITS: [Duration; 3] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

fn reconfigured(rate: f64, wait: Duration, successes: u32) -> BreakerConfig {
    let mut c = config();
    c.failure_rate = rate;
    c.wait = wait;
    c.half_open.successes = successes;
    c
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Success),
        4 => Just(Op::Failure),
        2 => Just(Op::Slow),
        1 => Just(Op::Cancel),
        2 => Just(Op::Hold),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(i, ok)| Op::Finish(i, ok)),
        1 => any::<usize>().prop_map(Op::Abandon),
        3 => (0u64..1500).prop_map(Op::Advance),
        1 => Just(Op::Reset),
        1 => (0usize..3, 0usize..3, 1u32..4).prop_map(|(r, w, s)| Op::Reconfigure(r, w, s)),
    ]
}

// ------------------------------------------------------------------------------------------
// The reference model: the specification, written as plainly as possible.
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Window,
    Probe,
}

#[derive(Debug, Clone, Copy)]
struct Ticket {
    kind: Kind,
    epoch: u64,
    start: Duration,
}

#[derive(Debug)]
struct Model {
    now: Duration,
    state: State,
    epoch: u64,
    window: VecDeque<Outcome>,
    open_until: Duration,
    openings: u32,
    probe_epoch: u64,
    probes: u32,
    successes: u32,
    /// The configuration in force (changed by `Reconfigure`).
    rate: f64,
    wait: Duration,
    needed: u32,
}

impl Model {
    fn new() -> Self {
        Self {
            now: Duration::ZERO,
            state: State::Closed,
            epoch: 0,
            window: VecDeque::new(),
            open_until: Duration::ZERO,
            openings: 0,
            probe_epoch: u64::MAX,
            probes: 0,
            successes: 0,
            rate: 0.5,
            wait: WAIT,
            needed: SUCCESSES,
        }
    }

    fn tick(&mut self) {
        if self.state == State::Open && self.now >= self.open_until {
            self.state = State::HalfOpen;
            self.epoch += 1;
            self.probe_epoch = self.epoch;
            self.probes = 0;
            self.successes = 0;
        }
    }

    fn open(&mut self) {
        self.openings += 1;
        let wait = (self.wait * 2u32.pow(self.openings - 1).min(1 << 20)).min(MAX_WAIT);
        self.state = State::Open;
        self.open_until = self.now + wait;
        self.epoch += 1;
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.window.clear();
        self.epoch += 1;
    }

    fn admit(&mut self) -> Option<Ticket> {
        self.tick();
        let kind = match self.state {
            State::Closed => Kind::Window,
            State::HalfOpen if self.probes < PERMITS => {
                self.probes += 1;
                Kind::Probe
            }
            _ => return None,
        };
        Some(Ticket {
            kind,
            epoch: self.epoch,
            start: self.now,
        })
    }

    fn complete(&mut self, t: Ticket, ok: bool, cancelled: bool) {
        let outcome = match (cancelled, ok) {
            (true, _) => Outcome::Ignored,
            (false, false) => Outcome::Failure,
            (false, true) if self.now - t.start >= SLOW => Outcome::Slow,
            (false, true) => Outcome::Success,
        };
        match t.kind {
            Kind::Window => {
                if outcome == Outcome::Ignored || t.epoch != self.epoch {
                    return;
                }
                if self.window.len() == WINDOW {
                    self.window.pop_front();
                }
                self.window.push_back(outcome);
                let calls = self.window.len();
                let count = |o| self.window.iter().filter(|x| **x == o).count();
                let failed = count(Outcome::Failure) as f64 / calls as f64;
                if calls >= MINIMUM && (failed >= self.rate || count(Outcome::Slow) * 2 >= calls) {
                    self.open();
                }
            }
            Kind::Probe => {
                if t.epoch == self.epoch && self.state == State::HalfOpen {
                    match outcome {
                        Outcome::Failure | Outcome::Slow => self.open(),
                        Outcome::Success => {
                            self.successes += 1;
                            if self.successes >= self.needed {
                                self.openings = 0;
                                self.close();
                            }
                        }
                        Outcome::Ignored => {}
                    }
                }
                if t.epoch == self.probe_epoch && self.probes > 0 {
                    self.probes -= 1;
                }
            }
        }
    }

    fn reset(&mut self) {
        self.openings = 0;
        self.close();
    }

    fn state(&mut self) -> State {
        self.tick();
        self.state
    }
}

// ------------------------------------------------------------------------------------------

type Real = BreakerHandle<DefaultClassifier, ManualClock>;

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let clock = ManualClock::new();
    let real: Real = degrade_breaker::BreakerLayer::builder(config())
        .clock(clock.clone())
        .build()
        .unwrap()
        .handle();
    let mut model = Model::new();
    let mut held: Vec<(Permit<DefaultClassifier, ManualClock>, Ticket)> = Vec::new();
    let (mut offered, mut admitted) = (0u64, 0u64);

    let mut admit = |real: &Real, model: &mut Model, step: usize| {
        offered += 1;
        let r = real.try_acquire();
        let m = model.admit();
        assert_eq!(r.is_ok(), m.is_some(), "admit at step {step}");
        if let (Ok(p), Some(t)) = (&r, &m) {
            assert_eq!(p.is_probe(), t.kind == Kind::Probe, "probe at step {step}");
            admitted += 1;
        }
        r.ok().zip(m)
    };

    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Success | Op::Failure => {
                if let Some((p, t)) = admit(&real, &mut model, step) {
                    let ok = matches!(op, Op::Success);
                    p.record(if ok {
                        Outcome::Success
                    } else {
                        Outcome::Failure
                    });
                    model.complete(t, ok, false);
                }
            }
            Op::Slow => {
                if let Some((p, t)) = admit(&real, &mut model, step) {
                    clock.advance(SLOW);
                    model.now += SLOW;
                    p.record(Outcome::Success);
                    model.complete(t, true, false);
                }
            }
            Op::Cancel => {
                if let Some((p, t)) = admit(&real, &mut model, step) {
                    drop(p);
                    model.complete(t, true, true);
                }
            }
            Op::Hold => {
                if let Some(pair) = admit(&real, &mut model, step) {
                    held.push(pair);
                }
            }
            Op::Finish(i, ok) => {
                if !held.is_empty() {
                    let (p, t) = held.remove(i % held.len());
                    p.record(if *ok {
                        Outcome::Success
                    } else {
                        Outcome::Failure
                    });
                    model.complete(t, *ok, false);
                }
            }
            Op::Abandon(i) => {
                if !held.is_empty() {
                    let (p, t) = held.remove(i % held.len());
                    drop(p);
                    model.complete(t, true, true);
                }
            }
            Op::Advance(ms) => {
                clock.advance(Duration::from_millis(*ms));
                model.now += Duration::from_millis(*ms);
            }
            Op::Reset => {
                real.reset();
                model.reset();
            }
            Op::Reconfigure(r, w, n) => {
                real.reconfigure(reconfigured(RATES[*r], WAITS[*w], *n))
                    .unwrap();
                // The specification: nothing moves; the next judgement uses the new values.
                model.rate = RATES[*r];
                model.wait = WAITS[*w];
                model.needed = *n;
            }
        }
        prop_assert_eq!(
            real.state(),
            model.state(),
            "state after step {} ({:?})",
            step,
            op
        );
    }
    let s = real.snapshot();
    prop_assert_eq!(s.offered(), offered);
    prop_assert_eq!(s.admitted, admitted);
    prop_assert_eq!(s.in_flight(), held.len() as u64);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        // Integration tests have no lib.rs beside them for proptest's default lookup.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/proptests.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn breaker_matches_the_reference_model(ops in proptest::collection::vec(op(), 1..200)) {
        run(&ops)?;
    }
}

/// A fixed scenario through every phase, so the model itself is checked against known states.
#[test]
fn model_walks_every_phase() {
    use Op::*;
    let ops = [
        Failure,
        Failure,
        Success, // 2 of 3 failed: open
        Success, // rejected
        Advance(1000),
        Hold,
        Hold,
        Success, // two probes held, third rejected
        Finish(0, true),
        Finish(0, true), // closed
        Failure,
        Slow,
        Slow, // 2 slow of 3: open again (openings 1)
        Advance(1000),
        Failure, // the probe fails: open for 2 s
        Advance(1999),
        Success,
        Advance(1),
        Success,
        Success,
    ];
    run(&ops).unwrap();
}
