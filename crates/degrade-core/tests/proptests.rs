//! Property tests of the ladder under random, noisy pressure.

use degrade_core::Level;
use degrade_core::ladder::{Ladder, LadderConfig, LevelCause, LevelTransition, Reading};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use std::time::Duration;
use tokio::time::Instant;

/// One sample: time since the previous sample, and the pressure (None = unknown).
type Sample = (u64, Option<f64>);

fn samples(max: usize) -> impl Strategy<Value = Vec<Sample>> {
    prop::collection::vec(
        (
            1u64..3_000,
            prop_oneof![1 => Just(None), 9 => (0.0f64..=1.0).prop_map(Some)],
        ),
        1..max,
    )
}

/// Pressure that hovers around the thresholds: the hardest case for hysteresis.
fn noisy_samples(max: usize) -> impl Strategy<Value = Vec<Sample>> {
    (0.55f64..0.97, 0.0f64..0.25).prop_flat_map(move |(mean, noise)| {
        prop::collection::vec(
            (
                1u64..2_000,
                (-1.0f64..1.0).prop_map(move |u| Some(mean + u * noise)),
            ),
            1..max,
        )
    })
}

fn config() -> impl Strategy<Value = LadderConfig> {
    (1u32..5, 1u32..5, 1u64..20, any::<bool>()).prop_map(|(up, down, dwell, jump)| LadderConfig {
        escalate_after: up,
        recover_after: down,
        dwell: Duration::from_secs(dwell),
        jump,
        ..Default::default()
    })
}

fn enter(cfg: &LadderConfig, level: Level) -> f64 {
    cfg.thresholds
        .band(level)
        .map_or(f64::INFINITY, |b| b.enter)
}

/// Runs the samples; returns the transitions.
fn run(ladder: &mut Ladder, t: &mut Instant, samples: &[Sample]) -> Vec<LevelTransition> {
    let mut out = Vec::new();
    for (dt, p) in samples {
        *t += Duration::from_millis(*dt);
        let r = [Reading {
            signal: "s",
            pressure: *p,
        }];
        out.extend(ladder.observe(&r, *t));
    }
    out
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
    fn never_steps_down_before_the_dwell_and_only_one_level_at_a_time(
        cfg in config(), s in samples(400)
    ) {
        let t0 = Instant::now();
        let mut ladder = Ladder::new(cfg.clone(), t0).unwrap();
        let mut t = t0;
        for tr in run(&mut ladder, &mut t, &s) {
            if tr.to < tr.from {
                prop_assert_eq!(tr.cause, LevelCause::Recovered);
                prop_assert_eq!(tr.to, tr.from.down());
                prop_assert!(tr.time_at_previous >= cfg.dwell, "{:?}", tr);
            } else {
                prop_assert_eq!(tr.cause, LevelCause::Escalated);
            }
        }
    }

    #[test]
    fn no_two_transitions_closer_than_the_dwell_when_escalation_also_waits(
        cfg in config(), s in noisy_samples(400)
    ) {
        let cfg = LadderConfig { escalate_cooldown: cfg.dwell, ..cfg };
        let t0 = Instant::now();
        let mut ladder = Ladder::new(cfg.clone(), t0).unwrap();
        let mut t = t0;
        let trs = run(&mut ladder, &mut t, &s);
        for w in trs.windows(2) {
            prop_assert!(w[1].at - w[0].at >= cfg.dwell, "{:?} then {:?}", w[0], w[1]);
        }
    }

    #[test]
    fn no_flip_flop_under_noise_with_default_cooldown(cfg in config(), s in noisy_samples(400)) {
        // Without an escalation cooldown an escalation may follow a recovery quickly (a new
        // overload), but a step down never follows any transition within the dwell.
        let t0 = Instant::now();
        let mut ladder = Ladder::new(cfg.clone(), t0).unwrap();
        let mut t = t0;
        let trs = run(&mut ladder, &mut t, &s);
        for w in trs.windows(2) {
            if w[1].to < w[1].from {
                prop_assert!(w[1].at - w[0].at >= cfg.dwell);
            }
        }
    }

    #[test]
    fn escalates_exactly_on_the_configured_sample_count(cfg in config(), s in samples(400)) {
        // A reference count of consecutive known samples at or above the next level's enter
        // threshold since the last transition: the ladder escalates exactly when it reaches
        // `escalate_after`, never before.
        let t0 = Instant::now();
        let mut ladder = Ladder::new(cfg.clone(), t0).unwrap();
        let mut t = t0;
        let mut run_len = 0u32;
        for (dt, p) in &s {
            t += Duration::from_millis(*dt);
            let level = ladder.level();
            let over = level < Level::Emergency
                && p.is_some_and(|p| p >= enter(&cfg, level.up()));
            run_len = if over { run_len + 1 } else { 0 };
            let tr = ladder.observe(&[Reading { signal: "s", pressure: *p }], t);
            let escalated = tr.as_ref().is_some_and(|tr| tr.to > tr.from);
            prop_assert_eq!(escalated, run_len >= cfg.escalate_after, "run {} tr {:?}", run_len, tr);
            if let Some(tr) = tr {
                run_len = 0;
                if escalated && !cfg.jump {
                    prop_assert_eq!(tr.to, tr.from.up());
                }
            }
        }
    }

    #[test]
    fn reaches_normal_stepwise_after_pressure_falls(cfg in config(), s in samples(200)) {
        let t0 = Instant::now();
        let mut ladder = Ladder::new(cfg.clone(), t0).unwrap();
        let mut t = t0;
        run(&mut ladder, &mut t, &s);
        let start = ladder.level();
        // Calm: one sample a second, long enough for every step's dwell and sample count.
        // The dwell may have been stretched by premature recoveries, up to the max.
        let per_step = cfg.effective_max_dwell().as_secs() + u64::from(cfg.recover_after) + 1;
        let calm: Vec<Sample> = (0..(per_step * 4)).map(|_| (1_000, Some(0.05))).collect();
        let trs = run(&mut ladder, &mut t, &calm);
        prop_assert_eq!(ladder.level(), Level::Normal);
        prop_assert_eq!(trs.len(), start.index());
        for tr in &trs {
            prop_assert_eq!(tr.to, tr.from.down());
            prop_assert!(tr.time_at_previous >= cfg.dwell);
        }
    }

    #[test]
    fn the_dwell_stays_between_its_base_and_its_max(cfg in config(), s in noisy_samples(400)) {
        let t0 = Instant::now();
        let mut ladder = Ladder::new(cfg.clone(), t0).unwrap();
        let mut t = t0;
        for (dt, p) in &s {
            t += Duration::from_millis(*dt);
            ladder.observe(&[Reading { signal: "s", pressure: *p }], t);
            prop_assert!(ladder.current_dwell() >= cfg.dwell);
            prop_assert!(ladder.current_dwell() <= cfg.effective_max_dwell());
        }
    }

    #[test]
    fn a_reload_mid_run_moves_nothing_and_the_new_config_rules_what_follows(
        cfg in config(), next in config(), shift in -0.5f64..0.04,
        before in samples(200), after in noisy_samples(300)
    ) {
        let mut next = next;
        for level in &Level::ALL[1..] {
            let band = match level {
                Level::Light => &mut next.thresholds.light,
                Level::Moderate => &mut next.thresholds.moderate,
                Level::Heavy => &mut next.thresholds.heavy,
                _ => &mut next.thresholds.emergency,
            };
            band.enter += shift;
            band.exit += shift;
        }
        let t0 = Instant::now();
        let mut ladder = Ladder::new(cfg, t0).unwrap();
        let mut t = t0;
        run(&mut ladder, &mut t, &before);
        let (level, pinned) = (ladder.level(), ladder.pinned());
        ladder.reconfigure(next.clone(), t).unwrap();
        prop_assert_eq!((ladder.level(), ladder.pinned()), (level, pinned));
        prop_assert_eq!(ladder.config(), &next);
        for (dt, p) in &after {
            t += Duration::from_millis(*dt);
            let tr = ladder.observe(&[Reading { signal: "s", pressure: *p }], t);
            prop_assert!(ladder.current_dwell() >= next.dwell);
            prop_assert!(ladder.current_dwell() <= next.effective_max_dwell());
            let Some(tr) = tr else { continue };
            if tr.to < tr.from {
                prop_assert_eq!(tr.to, tr.from.down());
                prop_assert!(tr.time_at_previous >= next.dwell, "{:?}", tr);
                let exit = next.thresholds.band(tr.from).unwrap().exit;
                prop_assert_eq!(tr.threshold, Some(exit));
            } else {
                prop_assert_eq!(tr.threshold, Some(enter(&next, tr.to)));
            }
        }
    }

    #[test]
    fn a_pin_holds_until_unpinned(
        cfg in config(), before in samples(100), during in samples(200), level in 0usize..5
    ) {
        let pinned = Level::from_index(level).unwrap();
        let t0 = Instant::now();
        let mut ladder = Ladder::new(cfg, t0).unwrap();
        let mut t = t0;
        run(&mut ladder, &mut t, &before);
        ladder.pin(pinned, t);
        for (dt, p) in &during {
            t += Duration::from_millis(*dt);
            let r = [Reading { signal: "s", pressure: *p }];
            prop_assert!(ladder.observe(&r, t).is_none());
            prop_assert_eq!(ladder.level(), pinned);
        }
        ladder.unpin(t);
        prop_assert_eq!(ladder.level(), pinned);
        prop_assert_eq!(ladder.pinned(), None);
    }
}
