//! Behaviour of the breaker's state machine that the other tests left unpinned, found by
//! mutation testing (`cargo xtask mutants --scope breaker`, see `docs/mutants.md`). The machine
//! is pure: each test feeds it events at made-up instants.

use degrade_breaker::state::{BreakerEvent, BreakerMachine};
use degrade_breaker::{BreakerConfig, BreakerTransition, Reason, State, WindowConfig};
use degrade_core::Outcome;
use degrade_core::window::WindowSnapshot;
use std::time::Duration;
use tokio::time::Instant;

const S: Duration = Duration::from_secs(1);

fn config() -> BreakerConfig {
    let mut c = BreakerConfig::default();
    c.window = WindowConfig::Count { size: 10 };
    c.minimum_calls = 4;
    c.wait = 10 * S;
    c
}

/// A window that trips any breaker of [`config`]: four calls, all failed.
fn tripping() -> BreakerEvent {
    BreakerEvent::Window {
        snapshot: WindowSnapshot {
            calls: 4,
            failures: 4,
            slow: 0,
        },
        consecutive: 4,
    }
}

#[test]
fn only_open_half_open_and_forced_open_reject() {
    let rejecting = [State::Open, State::HalfOpen, State::ForcedOpen];
    for state in [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::ForcedOpen,
        State::Disabled,
        State::MetricsOnly,
    ] {
        assert_eq!(state.rejects(), rejecting.contains(&state), "{state:?}");
    }
}

#[test]
fn states_reasons_and_transitions_display_as_documented() {
    let names = [
        (State::Closed, "closed"),
        (State::Open, "open"),
        (State::HalfOpen, "half-open"),
        (State::ForcedOpen, "forced-open"),
        (State::Disabled, "disabled"),
        (State::MetricsOnly, "metrics-only"),
    ];
    for (state, name) in names {
        assert_eq!(state.as_str(), name);
        assert_eq!(state.to_string(), name);
    }
    let reasons = [
        (
            Reason::FailureRate {
                rate: 0.6,
                threshold: 0.5,
            },
            "failure rate 0.6 reached threshold 0.5",
        ),
        (
            Reason::SlowRate {
                rate: 0.9,
                threshold: 0.8,
            },
            "slow-call rate 0.9 reached threshold 0.8",
        ),
        (Reason::ConsecutiveFailures(5), "5 failures in a row"),
        (Reason::WaitElapsed, "open wait elapsed"),
        (Reason::ProbesSucceeded, "probes succeeded"),
        (Reason::ProbeFailed, "probe failed"),
        (Reason::HalfOpenTimeout, "half-open for too long"),
        (Reason::Manual, "manual"),
    ];
    for (reason, text) in reasons {
        assert_eq!(reason.to_string(), text);
    }
    let t = BreakerTransition::new(
        State::Open,
        State::HalfOpen,
        Reason::WaitElapsed,
        Instant::now(),
    );
    assert_eq!(t.to_string(), "open -> half-open (open wait elapsed)");
    let mut m = BreakerMachine::new(config(), 0).unwrap();
    m.on_event(BreakerEvent::MetricsOnly, Instant::now());
    let shadow = m.on_event(tripping(), Instant::now()).unwrap();
    assert_eq!(
        shadow.to_string(),
        "shadow closed -> open (failure rate 1 reached threshold 0.5)"
    );
}

#[test]
fn config_is_the_one_the_machine_was_built_with() {
    let m = BreakerMachine::new(config(), 0).unwrap();
    assert_eq!(m.config(), &config());
}

#[test]
fn disabled_and_forced_open_breakers_ignore_a_tripping_window() {
    let t0 = Instant::now();
    for (event, state) in [
        (BreakerEvent::Disable, State::Disabled),
        (BreakerEvent::ForceOpen, State::ForcedOpen),
    ] {
        let mut m = BreakerMachine::new(config(), 0).unwrap();
        m.on_event(event, t0);
        let epoch = m.epoch();
        assert_eq!(m.on_event(tripping(), t0), None);
        assert_eq!((m.state(), m.epoch(), m.openings()), (state, epoch, 0));
        // Back to normal, it is closed: the window did not open it in the meantime.
        m.on_event(BreakerEvent::ForceClose, t0);
        assert_eq!(m.state(), State::Closed);
        assert_eq!(m.deadline(), None);
    }
}

#[test]
fn a_probe_outcome_outside_half_open_changes_nothing() {
    let t0 = Instant::now();
    let mut m = BreakerMachine::new(config(), 0).unwrap();
    assert_eq!(m.on_event(BreakerEvent::Probe(Outcome::Failure), t0), None);
    assert_eq!((m.state(), m.epoch(), m.openings()), (State::Closed, 0, 0));
    m.on_event(BreakerEvent::Disable, t0);
    assert_eq!(m.on_event(BreakerEvent::Probe(Outcome::Failure), t0), None);
    assert_eq!(m.state(), State::Disabled);
}

#[test]
fn closing_an_open_breaker_by_hand_reports_the_transition() {
    let t0 = Instant::now();
    for event in [BreakerEvent::ForceClose, BreakerEvent::Reset] {
        let mut m = BreakerMachine::new(config(), 0).unwrap();
        m.on_event(tripping(), t0).unwrap();
        let t = m.on_event(event, t0 + S).unwrap();
        assert_eq!(
            (t.from, t.to, t.reason),
            (State::Open, State::Closed, Reason::Manual)
        );
    }
}

#[test]
fn metrics_only_again_closes_the_shadow_phase_without_a_transition() {
    let t0 = Instant::now();
    let mut m = BreakerMachine::new(config(), 0).unwrap();
    m.on_event(BreakerEvent::MetricsOnly, t0);
    let shadow = m.on_event(tripping(), t0).unwrap();
    assert!(shadow.shadow);
    assert_eq!(m.shadow_state(), Some(State::Open));
    // The state a caller sees does not change, so nothing is reported; the shadow starts over.
    assert_eq!(m.on_event(BreakerEvent::MetricsOnly, t0 + S), None);
    assert_eq!(m.state(), State::MetricsOnly);
    assert_eq!(m.shadow_state(), Some(State::Closed));
}

/// SplitMix64 (Steele, Lea and Flood), written out here as the reference.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The jitter is predictable, as `BackoffConfig` documents: the wait of an opening is shortened
/// by `jitter · u`, where `u` in [0, 1) is the top 53 bits of
/// `SplitMix64(seed ^ SplitMix64(nonce))`.
#[test]
fn the_jitter_is_a_fixed_hash_of_the_seed_and_the_opening() {
    assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf, "the reference itself");
    let mut c = config();
    c.backoff.jitter = 0.5;
    for seed in [0, 7, u64::MAX] {
        let m = BreakerMachine::new(c.clone(), seed).unwrap();
        let mut distinct = std::collections::BTreeSet::new();
        for nonce in [0, 1, 2, 3, 42, u64::MAX] {
            let unit = (splitmix64(seed ^ splitmix64(nonce)) >> 11) as f64 / (1u64 << 53) as f64;
            let expected = Duration::from_secs_f64(10.0 * (1.0 - 0.5 * unit));
            let wait = m.wait_for(1, nonce);
            assert_eq!(wait, expected, "seed {seed}, nonce {nonce}");
            assert!(wait > 5 * S && wait <= 10 * S);
            distinct.insert(wait);
        }
        assert!(
            distinct.len() > 1,
            "seed {seed}: the jitter spreads the waits"
        );
    }
}
