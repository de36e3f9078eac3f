//! Behaviour of the ladder that the other tests left unpinned, found by mutation testing
//! (`cargo xtask mutants --scope ladder-windows`, see `docs/mutants.md`). Each test drives the
//! pure state machine with made-up instants.

use degrade_core::Level;
use degrade_core::ladder::{Ladder, LadderConfig, LevelCause, Reading, UnknownPolicy};
use std::time::Duration;
use tokio::time::Instant;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Moves on the first sample (escalate_after = recover_after = 1), 10 s dwell, backoff 2x.
fn quick() -> LadderConfig {
    LadderConfig {
        escalate_after: 1,
        recover_after: 1,
        dwell: secs(10),
        ..Default::default()
    }
}

/// A ladder and the instant it was created at.
fn ladder(config: LadderConfig) -> (Ladder, Instant) {
    let t0 = Instant::now();
    (Ladder::new(config, t0).unwrap(), t0)
}

fn sample(ladder: &mut Ladder, t0: Instant, at: u64, pressure: f64) -> Option<Level> {
    ladder
        .observe(&[Reading::new("cpu", pressure)], t0 + secs(at))
        .map(|t| t.to)
}

const HOT: f64 = 0.92; // Heavy with `jump`
const CALM: f64 = 0.1;

#[test]
fn max_dwell_equal_to_dwell_is_valid() {
    let config = LadderConfig {
        dwell: secs(10),
        max_dwell: Some(secs(10)),
        ..Default::default()
    };
    config.validate().unwrap();
    let shorter = LadderConfig {
        max_dwell: Some(secs(9)),
        ..config
    };
    assert_eq!(shorter.validate().unwrap_err().field(), "max_dwell");
}

#[test]
fn a_history_of_one_million_is_the_largest_accepted() {
    let mut config = LadderConfig {
        history: 1_000_000,
        ..Default::default()
    };
    config.validate().unwrap();
    config.history = 1_000_001;
    assert_eq!(config.validate().unwrap_err().field(), "history");
}

#[test]
fn causes_display_as_their_lowercase_names() {
    assert_eq!(LevelCause::Escalated.to_string(), "escalated");
    assert_eq!(LevelCause::Recovered.to_string(), "recovered");
    assert_eq!(LevelCause::Pinned.to_string(), "pinned");
}

#[test]
fn pinned_reports_the_pin_until_unpinned() {
    let (mut l, t0) = ladder(LadderConfig::default());
    assert_eq!(l.pinned(), None);
    l.pin(Level::Moderate, t0);
    assert_eq!(l.pinned(), Some(Level::Moderate));
    l.unpin(t0 + secs(1));
    assert_eq!(l.pinned(), None);
}

#[test]
fn config_is_the_one_the_ladder_was_built_with() {
    let config = LadderConfig {
        escalate_after: 7,
        dwell: secs(42),
        ..Default::default()
    };
    let (l, _) = ladder(config.clone());
    assert_eq!(l.config(), &config);
}

#[test]
fn of_two_signals_at_the_same_pressure_the_first_is_named() {
    let (mut l, t0) = ladder(quick());
    let readings = [Reading::new("cpu", 0.97), Reading::new("memory", 0.97)];
    let t = l.observe(&readings, t0 + secs(1)).unwrap();
    assert_eq!(t.signal.as_deref(), Some("cpu"));
}

#[test]
fn an_escalation_run_names_the_signal_that_first_set_its_lowest_pressure() {
    let (mut l, t0) = ladder(LadderConfig {
        escalate_after: 2,
        ..quick()
    });
    assert!(
        l.observe(&[Reading::new("cpu", 0.91)], t0 + secs(1))
            .is_none()
    );
    // Same pressure from another signal: the run's lowest is still the first one's.
    let t = l
        .observe(&[Reading::new("latency", 0.91)], t0 + secs(2))
        .unwrap();
    assert_eq!((t.to, t.value), (Level::Heavy, Some(0.91)));
    assert_eq!(t.signal.as_deref(), Some("cpu"));
}

#[test]
fn the_hold_policy_recovers_when_every_signal_is_known() {
    let (mut l, t0) = ladder(LadderConfig {
        unknown: UnknownPolicy::Hold,
        ..quick()
    });
    assert_eq!(sample(&mut l, t0, 1, HOT), Some(Level::Heavy));
    assert_eq!(sample(&mut l, t0, 11, CALM), Some(Level::Moderate));
}

#[test]
fn the_ignore_policy_recovers_on_the_known_signals_while_another_is_unknown() {
    let (mut l, t0) = ladder(quick());
    assert_eq!(sample(&mut l, t0, 1, HOT), Some(Level::Heavy));
    let readings = [Reading::new("cpu", CALM), Reading::unknown("psi")];
    let t = l.observe(&readings, t0 + secs(11)).unwrap();
    assert_eq!((t.to, t.cause), (Level::Moderate, LevelCause::Recovered));
}

#[test]
fn a_pressure_exactly_at_the_exit_threshold_does_not_recover() {
    let (mut l, t0) = ladder(quick());
    // 0.75 enters Light (0.70) only.
    assert_eq!(sample(&mut l, t0, 1, 0.75), Some(Level::Light));
    assert_eq!(sample(&mut l, t0, 20, 0.60), None, "Light's exit is 0.60");
    assert_eq!(sample(&mut l, t0, 21, 0.59), Some(Level::Normal));
}

/// Escalates to Heavy at 1 s, steps down at 11 s, escalates again at `again` s: premature when
/// that is within 10 s (the dwell) of the step down.
fn down_then_up_again(again: u64) -> (Ladder, Instant) {
    let (mut l, t0) = ladder(quick());
    assert_eq!(sample(&mut l, t0, 1, HOT), Some(Level::Heavy));
    assert_eq!(sample(&mut l, t0, 11, CALM), Some(Level::Moderate));
    assert_eq!(sample(&mut l, t0, again, HOT), Some(Level::Heavy));
    (l, t0)
}

#[test]
fn an_escalation_a_full_dwell_after_a_step_down_does_not_stretch_the_dwell() {
    let (mut l, t0) = down_then_up_again(21);
    assert_eq!(l.current_dwell(), secs(10));
    assert_eq!(sample(&mut l, t0, 31, CALM), Some(Level::Moderate));
}

#[test]
fn an_escalation_later_than_a_dwell_after_a_step_down_does_not_stretch_the_dwell() {
    let (mut l, t0) = down_then_up_again(26);
    assert_eq!(l.current_dwell(), secs(10));
    assert_eq!(sample(&mut l, t0, 36, CALM), Some(Level::Moderate));
}

#[test]
fn a_step_down_that_holds_restores_the_base_dwell_for_later_escalations() {
    // Premature: the dwell doubles to 20 s.
    let (mut l, t0) = down_then_up_again(12);
    assert_eq!(l.current_dwell(), secs(20));
    assert_eq!(sample(&mut l, t0, 32, CALM), Some(Level::Moderate));
    // A second step down, a plain dwell later: the first one held, the dwell is 10 s again.
    assert_eq!(sample(&mut l, t0, 42, CALM), Some(Level::Light));
    // 15 s later the pressure returns: more than the base dwell after the step down, so not
    // premature, and recovery from it waits the base dwell.
    assert_eq!(sample(&mut l, t0, 57, HOT), Some(Level::Heavy));
    assert_eq!(l.current_dwell(), secs(10));
    assert_eq!(sample(&mut l, t0, 67, CALM), Some(Level::Moderate));
}

#[test]
fn a_pin_restores_the_base_dwell() {
    let (mut l, t0) = down_then_up_again(12);
    assert_eq!(l.current_dwell(), secs(20));
    l.pin(Level::Emergency, t0 + secs(13));
    assert_eq!(l.current_dwell(), secs(10));
    l.unpin(t0 + secs(14));
    assert_eq!(sample(&mut l, t0, 24, CALM), Some(Level::Heavy));
}

/// At Emergency there is no level further up: pressure that stays above Emergency's enter
/// threshold sample after sample changes nothing (no Emergency → Emergency transition, no
/// change of dwell).
#[test]
fn pressure_above_emergency_at_emergency_makes_no_transition() {
    let (mut l, t0) = ladder(quick());
    let mut at = 0;
    for _ in 0..10 {
        if l.level() == Level::Emergency {
            break;
        }
        at += 60;
        sample(&mut l, t0, at, 1.0);
    }
    assert_eq!(l.level(), Level::Emergency);
    for _ in 0..20 {
        at += 60;
        assert_eq!(sample(&mut l, t0, at, 1.0), None);
    }
    assert_eq!(l.level(), Level::Emergency);
}
