//! Property tests of the judge's invariants: identical arms never fail; one key group, however
//! extreme, cannot force a failure; no Pass below the minimum samples; group labels do not
//! matter; every figure is finite.

use degrade_canary::stats::{CanarySnapshot, GROUP_LAYOUT, GROUPS, GroupSnapshot};
use degrade_canary::{Judge, JudgeConfig, Verdict};
use degrade_core::histogram::Histogram;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

/// One group's window: calls, failures, and the latency bucket range (of `GROUP_LAYOUT`, from
/// about 33 µs to 1 s) its calls spread over.
type Cell = (u64, u64, usize, usize);

fn cell() -> impl Strategy<Value = Cell> {
    (0u64..400, 0u64..40, 10usize..40, 0usize..20)
        .prop_map(|(n, f, lo, spread)| (n, f.min(n), lo, spread))
}

fn group(c: Cell) -> GroupSnapshot {
    let (n, f, lo, spread) = c;
    let mut g = GroupSnapshot::default();
    for i in 0..n {
        g.latency.add(lo + (i as usize * 7) % (spread + 1), 1);
    }
    g.failures = f;
    g
}

/// Sums a snapshot's arms from their groups (totals are what the router keeps besides).
fn fill(snap: &mut CanarySnapshot) {
    for arm in [&mut snap.stable, &mut snap.canary] {
        arm.failures = arm.groups.iter().map(|g| g.failures).sum();
        arm.successes = arm.groups.iter().map(GroupSnapshot::samples).sum::<u64>() - arm.failures;
        arm.latency = Histogram::new(GROUP_LAYOUT);
        for g in &arm.groups {
            assert!(arm.latency.merge(&g.latency));
        }
    }
}

/// Adds window `w` (per group, per arm) to the cumulative snapshot `snap`.
fn add(snap: &mut CanarySnapshot, stable: &[Cell], canary: &[Cell]) {
    for (arm, cells) in [(&mut snap.stable, stable), (&mut snap.canary, canary)] {
        arm.groups.resize(GROUPS, GroupSnapshot::default());
        for (g, &c) in arm.groups.iter_mut().zip(cells) {
            let w = group(c);
            g.failures += w.failures;
            for (b, &n) in w.latency.buckets().iter().enumerate() {
                g.latency.add(b, n);
            }
        }
    }
    fill(snap);
}

fn judge(min: u64) -> Judge {
    Judge::new(JudgeConfig {
        min_samples: min,
        ..JudgeConfig::default()
    })
    .unwrap()
}

fn windows() -> impl Strategy<Value = Vec<Vec<Cell>>> {
    prop::collection::vec(prop::collection::vec(cell(), GROUPS), 1..6)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/judge_props.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn identical_arms_never_fail(ws in windows()) {
        let mut j = judge(100);
        let mut snap = CanarySnapshot::default();
        for w in &ws {
            add(&mut snap, w, w);
            let v = j.look(&snap);
            prop_assert_ne!(v.verdict, Verdict::Fail, "{:?}", v);
            prop_assert!(v.error_z.abs() < 1e-6 && v.latency_z.abs() < 1e-6, "{:?}", v);
        }
    }

    #[test]
    fn one_key_group_cannot_force_a_fail(
        ws in windows(),
        heavy in 0..GROUPS,
        extra in 1u64..1_000_000,
        slow in 61usize..66,
    ) {
        // Both arms alike except one canary group, which adds any number of calls that all
        // fail and are slower than anything else.
        let mut j = judge(100);
        let mut snap = CanarySnapshot::default();
        for w in &ws {
            let mut canary = w.clone();
            canary[heavy] = (0, 0, 0, 0);
            add(&mut snap, w, &canary);
            let g = &mut snap.canary.groups[heavy];
            g.failures += extra;
            g.latency.add(slow, extra);
            fill(&mut snap);
            let v = j.look(&snap);
            prop_assert_ne!(v.verdict, Verdict::Fail, "{:?}", v);
        }
    }

    #[test]
    fn no_pass_below_the_minimum_samples(ws in windows(), min in 1u64..50_000) {
        let mut j = judge(min);
        let mut snap = CanarySnapshot::default();
        for w in &ws {
            add(&mut snap, w, w);
            let v = j.look(&snap);
            if v.verdict == Verdict::Pass {
                prop_assert!(v.samples.0 >= min && v.samples.1 >= min, "{:?}", v);
            }
        }
    }

    #[test]
    fn group_labels_do_not_matter(
        stable in windows(),
        canary in windows(),
        shift in 1..GROUPS,
    ) {
        let (mut j1, mut j2) = (judge(100), judge(100));
        let (mut s1, mut s2) = (CanarySnapshot::default(), CanarySnapshot::default());
        for (ws, wc) in stable.iter().zip(&canary) {
            add(&mut s1, ws, wc);
            let rot = |v: &Vec<Cell>| {
                let mut v = v.clone();
                v.rotate_left(shift);
                v
            };
            add(&mut s2, &rot(ws), &rot(wc));
            let (a, b) = (j1.look(&s1), j2.look(&s2));
            prop_assert_eq!(a.verdict, b.verdict);
            prop_assert!((a.error_z - b.error_z).abs() < 1e-6, "{} {}", a.error_z, b.error_z);
            prop_assert!((a.latency_z - b.latency_z).abs() < 1e-6);
            for x in [a.error_z, a.latency_z, a.error_llr, a.latency_llr] {
                prop_assert!(x.is_finite(), "{:?}", a);
            }
        }
    }
}
